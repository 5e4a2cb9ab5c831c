//! The request phase (`Exchange::on_request_headers`): which requests the filter handles and the
//! request headers it sets. `FakeHost::request_headers` plays Envoy's header map: what is left
//! in it is what the routed request carries.

use super::*;
use crate::engine::exchange::header as find_header;

/// Runs the request phase on `host.request_headers` (the client's request) as the glue does.
fn request_phase(
    config: Option<&Rc<PluginConfig>>,
    host: &mut FakeHost,
    blocks: &mut BlockTable,
) -> Option<Exchange> {
    let headers = HeaderMap::from_pairs(&host.request_headers);
    let request = ClientRequest {
        headers: &headers,
        has_body: false,
        worker: "w1",
        stats: crate::s3::bucket::BucketStats::default(),
        metrics: None,
    };
    Exchange::on_request_headers(config, blocks, host, request)
}

fn spoofed(authority: &str, path: &str) -> Vec<(String, String)> {
    [
        (":method", "GET"),
        (":path", path),
        (":authority", authority),
        (":scheme", "http"),
        // A client's copies of every routing header the filter sets.
        ("x-origin-pull-cluster", "evil_cluster"),
        ("x-envoy-original-dst-host", "127.66.6.6:80"),
        ("x-origin-pull-dst-2", "127.66.6.7:80"),
        ("x-envoy-retry-on", "5xx"),
        ("x-envoy-max-retries", "9"),
        ("x-origin-pull-plan", "ffffffffffffffff"),
        ("x-envoy-retriable-status-codes", "200"),
        ("accept", "image/*"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn value<'a>(host: &'a FakeHost, name: &str) -> Option<&'a str> {
    find_header(&host.request_headers, name)
}

#[test]
fn a_client_routing_header_is_overwritten_with_the_chosen_origin() {
    let cfg =
        config(r#"{"domains":[{"domain":"www.test.com","master":{"ips":["127.0.0.2:80"]}}]}"#);
    let (mut host, mut blocks) = (FakeHost::new(1), BlockTable::default());
    host.request_headers = spoofed("www.test.com", "/a.jpg");
    let ex = request_phase(Some(&cfg), &mut host, &mut blocks).expect("routed");
    assert!(!ex.routes_chain());
    assert_eq!(
        value(&host, "x-origin-pull-cluster"),
        Some("origin_pull_ip_http")
    );
    assert_eq!(
        value(&host, "x-envoy-original-dst-host"),
        Some("127.0.0.2:80")
    );
    // One copy of each, and the client's other headers untouched.
    let count = |name: &str| {
        host.request_headers
            .iter()
            .filter(|(k, _)| k == name)
            .count()
    };
    assert_eq!(count("x-origin-pull-cluster"), 1);
    assert_eq!(count("x-envoy-original-dst-host"), 1);
    // No retry statuses a client picks.
    assert_eq!(value(&host, "x-envoy-retriable-status-codes"), None);
    assert_eq!(value(&host, ":authority"), Some("www.test.com"));
    assert_eq!(value(&host, "accept"), Some("image/*"));
    assert!(host.replies.is_empty());
}

#[test]
fn a_client_address_header_is_removed_when_the_origin_is_a_dns_cluster() {
    let cfg = config(
        r#"{"domains":[{"domain":"www.test.com","master":{"domain":"origin.test.com","host":"origin.test.com"}}]}"#,
    );
    let (mut host, mut blocks) = (FakeHost::new(1), BlockTable::default());
    host.request_headers = spoofed("www.test.com", "/a.jpg");
    request_phase(Some(&cfg), &mut host, &mut blocks).expect("routed");
    assert_eq!(value(&host, "x-envoy-original-dst-host"), None);
    assert_eq!(
        value(&host, "x-origin-pull-cluster"),
        Some("origin_pull|http|origin.test.com|80")
    );
    assert_eq!(value(&host, ":authority"), Some("origin.test.com"));
}

#[test]
fn a_routed_failover_overwrites_every_plan_header_a_client_sent() {
    let cfg = router_config(
        r#"{"domains":[{"domain":"www.test.com",
            "master":{"ips":["127.0.0.2:80"]},"slave":{"domain":"backup.test.com","host":"backup.test.com"}}]}"#,
    );
    let (mut host, mut blocks) = (FakeHost::new(1), BlockTable::default());
    host.request_headers = spoofed("www.test.com", "/a.jpg");
    let ex = request_phase(Some(&cfg), &mut host, &mut blocks).expect("routed");
    assert!(ex.routes_chain());
    for (name, expected) in ex.chain_headers() {
        assert_eq!(value(&host, name), expected.as_deref(), "{name}");
    }
    assert_eq!(
        value(&host, "x-envoy-original-dst-host"),
        Some("127.0.0.2:80")
    );
    // The slave is a DNS cluster: the client's address for attempt 2 is gone.
    assert_eq!(value(&host, "x-origin-pull-dst-2"), None);
    assert_eq!(value(&host, "x-envoy-max-retries"), Some("1"));
    assert_ne!(value(&host, "x-origin-pull-plan"), Some("ffffffffffffffff"));
    assert_ne!(value(&host, "x-origin-pull-cluster"), Some("evil_cluster"));
}

const BUCKET: &str = r#"{"domains":[{"domain":"www.test.com","master":{"bucket":{"endpoint":"s3.test.com","bucket":"b01","region":"r","credentials":{"access_key_id":"AKID","secret_access_key":"SECRET"}}}}]}"#;

#[test]
fn a_bucket_never_sees_the_client_credentials() {
    let cfg = config(BUCKET);
    let (mut host, mut blocks) = (FakeHost::new(1), BlockTable::default());
    host.request_headers = spoofed("www.test.com", "/img/a.jpg");
    host.request_headers.extend(
        [
            ("authorization", "Bearer client-token"),
            ("X-Amz-Security-Token", "client-session"),
            ("x-amz-content-sha256", "client-hash"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let ex = request_phase(Some(&cfg), &mut host, &mut blocks).expect("routed");
    let (authority, object) = ex.bucket_request().expect("a bucket request");
    assert_eq!(value(&host, ":authority"), Some(authority));
    assert_eq!(value(&host, ":path"), Some(object.path.as_str()));
    // Our signature replaces the client's; its session token is gone.
    let ours = find_header(
        &object
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect::<Vec<_>>(),
        "authorization",
    )
    .map(str::to_string);
    assert!(ours.as_deref().is_some_and(|a| a.contains("AKID")));
    assert_eq!(value(&host, "authorization"), ours.as_deref());
    assert_eq!(value(&host, "x-amz-security-token"), None);
    assert_ne!(value(&host, "x-amz-content-sha256"), Some("client-hash"));
    assert!(host
        .request_headers
        .iter()
        .all(|(k, v)| !v.contains("client-token")
            && !v.contains("client-session")
            && k != "X-Amz-Security-Token"));
    assert_eq!(value(&host, "accept"), Some("image/*"));
}

#[test]
fn a_bucket_refuses_other_methods_and_sets_nothing() {
    let cfg = config(BUCKET);
    let (mut host, mut blocks) = (FakeHost::new(1), BlockTable::default());
    host.request_headers = spoofed("www.test.com", "/img/a.jpg");
    host.request_headers[0].1 = "DELETE".into();
    let before = host.request_headers.clone();
    assert!(request_phase(Some(&cfg), &mut host, &mut blocks).is_none());
    assert_eq!(host.replies.len(), 1);
    assert_eq!(host.replies[0].status, 405);
    assert_eq!(host.request_headers, before);
}

#[test]
fn unconfigured_or_unknown_hosts_are_answered_and_never_routed() {
    let (mut host, mut blocks) = (FakeHost::new(1), BlockTable::default());
    host.request_headers = spoofed("www.test.com", "/a.jpg");
    let before = host.request_headers.clone();
    assert!(request_phase(None, &mut host, &mut blocks).is_none());
    assert_eq!(host.replies[0].status, 503);
    assert_eq!(host.replies[0].header(ERROR_HEADER), Some("not-configured"));
    // The access log says no origin served.
    assert_eq!(host.filter_state[ATTRIBUTION_KEY], NO_ORIGIN_ATTRIBUTION);
    host.filter_state.clear();
    let cfg =
        config(r#"{"domains":[{"domain":"www.test.com","master":{"ips":["127.0.0.2:80"]}}]}"#);
    host.request_headers = spoofed("evil.test.com", "/a.jpg");
    assert!(request_phase(Some(&cfg), &mut host, &mut blocks).is_none());
    assert_eq!(host.replies[1].header(ERROR_HEADER), Some("unknown-host"));
    assert_eq!(host.filter_state[ATTRIBUTION_KEY], NO_ORIGIN_ATTRIBUTION);
    // Nothing the client sent was turned into a route.
    assert_eq!(host.request_headers, {
        let mut b = before;
        b[2].1 = "evil.test.com".into();
        b
    });
}

#[test]
fn an_unknown_host_is_shown_through_the_one_sanitiser() {
    let cfg =
        config(r#"{"domains":[{"domain":"www.test.com","master":{"ips":["127.0.0.2:80"]}}]}"#);
    let (mut host, mut blocks) = (FakeHost::new(1), BlockTable::default());
    let long = format!("evil\n{}.test.com", "a".repeat(300));
    host.request_headers = spoofed(&long, "/a.jpg");
    assert!(request_phase(Some(&cfg), &mut host, &mut blocks).is_none());
    let body = String::from_utf8_lossy(&host.replies[0].body).to_string();
    assert!(
        body.contains(&format!("'{}'", crate::types::printable(&long))),
        "{body}"
    );
    assert!(body.contains("evil\\n") && body.contains('…'), "{body}");
    assert_eq!(body.matches('\n').count(), 1, "one line: {body}");
}
