//! Stats and the access log's attribution.

use super::*;

/// Runs the seeds' flow with stats: master answers `master`, the slave (if asked) `slave`.
fn counted(master: (u32, u64), slave: Option<u32>) -> (FakeHost, Rc<Metrics>) {
    counted_with(master, slave, true)
}

/// [`counted`] with per-origin request series on or off (`metrics.per_origin`).
fn counted_with(
    master: (u32, u64),
    slave: Option<u32>,
    per_origin: bool,
) -> (FakeHost, Rc<Metrics>) {
    let cfg = config(&format!(
        r#"{{"metrics":{{"per_origin":{per_origin}}},"domains":[{{"domain":"www.test.com",
            "master":{{"ips":["1.1.1.1"]}},"slave":{{"ips":["2.2.2.2"]}}}}]}}"#
    ));
    let mut host = FakeHost::new(1);
    let metrics = Rc::new(Metrics::new(cfg.clone(), Rc::default()));
    let mut blocks = BlockTable::default();
    client_headers(&mut host, "GET", "/1.jpg");
    let req = RequestInfo {
        metrics: Some(&metrics),
        ..get("www.test.com")
    };
    let mut ex = start(&cfg, &mut host, &mut blocks, &req);
    let step = ex.on_response_headers(&mut host, &mut blocks, master.0, master.1);
    if let Some(status) = slave {
        assert_eq!(step, ResponseStep::Pause);
        let token = host.callouts[0].token;
        host.respond(status, &[("x-envoy-upstream-service-time", "1")], b"x");
        ex.on_callout_response(&mut host, &mut blocks, token, 2, 1);
    }
    (host, metrics)
}

const MASTER: &str = ";domain=www.test.com;origin=1.1.1.1:80";
const SLAVE: &str = ";domain=www.test.com;origin=2.2.2.2:80";

#[test]
fn stats_count_requests_failures_and_failover_outcomes() {
    let (host, _) = counted((404, 0), Some(200));
    // A series that never counted anything is not defined: read it as 0.
    let get = |name: &str| host.metric(name).unwrap_or(0);
    assert_eq!(get("origin_pull_requests_total;domain=www.test.com"), 1);
    assert_eq!(
        get(&format!("origin_pull_origin_requests_total{MASTER}")),
        1
    );
    assert_eq!(get(&format!("origin_pull_origin_requests_total{SLAVE}")), 1);
    assert_eq!(
        get(&format!(
            "origin_pull_origin_failures_total{MASTER};kind=4xx"
        )),
        1
    );
    assert_eq!(
        get(&format!(
            "origin_pull_origin_failures_total{SLAVE};kind=4xx"
        )),
        0
    );
    assert_eq!(
        get("origin_pull_failovers_total;domain=www.test.com;outcome=served"),
        1
    );
    assert_eq!(
        get("origin_pull_failovers_total;domain=www.test.com;outcome=failed"),
        0
    );

    let (host, _) = counted((0, UF), Some(503));
    let get = |name: &str| host.metric(name).unwrap_or(0);
    assert_eq!(
        get(&format!(
            "origin_pull_origin_failures_total{MASTER};kind=connect"
        )),
        1
    );
    assert_eq!(
        get(&format!(
            "origin_pull_origin_blocks_total{MASTER};source=passive"
        )),
        1
    );
    assert_eq!(get(&format!("origin_pull_origin_blocked{MASTER}")), 1);
    assert_eq!(
        get(&format!(
            "origin_pull_origin_failures_total{SLAVE};kind=5xx"
        )),
        1
    );
    assert_eq!(
        get("origin_pull_failovers_total;domain=www.test.com;outcome=failed"),
        1
    );

    let (host, _) = counted((200, 0), None);
    let total: i64 = host.metrics.iter().map(|(_, _, v)| v).sum();
    assert_eq!(
        total, 2,
        "a plain 2xx only counts the request (domain and origin)"
    );

    // By default a plain 2xx defines and counts the domain's series only.
    let (host, _) = counted_with((200, 0), None, false);
    assert_eq!(host.metrics.len(), 1);
    assert_eq!(
        host.metric("origin_pull_requests_total;domain=www.test.com"),
        Some(1)
    );
    // A failover defines the failed origin's series, not the healthy slave's.
    let (host, _) = counted_with((404, 0), Some(200), false);
    let mut names: Vec<&str> = host.metrics.iter().map(|(_, n, _)| n.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "origin_pull_failovers_total;domain=www.test.com;outcome=served",
            "origin_pull_origin_failures_total;domain=www.test.com;origin=1.1.1.1:80;kind=4xx",
            "origin_pull_requests_total;domain=www.test.com",
        ]
    );
}

#[test]
fn access_log_attribution_and_honest_response_code_details() {
    let (host, _) = counted((404, 0), Some(200));
    assert_eq!(
        host.filter_state[ATTRIBUTION_KEY],
        "origin=2.2.2.2:80 role=slave attempts=2 failed_over=true"
    );
    assert_eq!(host.filter_state.len(), 1);
    assert_eq!(host.replies[0].details, "origin_pull_failed_over_to_slave");

    let (host, _) = counted((200, 0), None);
    assert_eq!(
        host.filter_state[ATTRIBUTION_KEY],
        "origin=1.1.1.1:80 role=master attempts=1 failed_over=false"
    );
    assert!(
        host.replies.is_empty(),
        "the origin's own reply keeps Envoy's details"
    );

    // Master timed out, the slave's callout ended without headers (reset, or an answer over
    // Envoy's async buffer): said as such, never "unreachable" (issue 13.8).
    let cfg = seeds_config("");
    let mut host = FakeHost::new(1);
    let mut blocks = BlockTable::default();
    let mut ex = start(&cfg, &mut host, &mut blocks, &get("www.test.com"));
    ex.on_response_headers(&mut host, &mut blocks, 0, UT);
    let token = host.callouts[0].token;
    ex.on_callout_response(&mut host, &mut blocks, token, 0, 0);
    assert_eq!(host.replies[0].status, 502);
    assert_eq!(host.replies[0].details, "origin_pull_failover_no_response");
    assert_eq!(
        host.replies[0].header(ERROR_HEADER),
        Some("failover-no-response")
    );

    Exchange::start(&cfg, &mut blocks, &mut host, &get("nope.example.com"));
    assert_eq!(host.replies[1].details, "origin_pull_unknown_host");
}

#[test]
fn retry_on_another_master_says_so_in_the_details() {
    let cfg =
        config(r#"{"domains":[{"domain":"a.com","master":{"ips":["10.0.0.1","10.0.0.2"]}}]}"#);
    let mut host = FakeHost::new(1);
    let mut blocks = BlockTable::default();
    let mut ex = start(&cfg, &mut host, &mut blocks, &get("a.com"));
    ex.on_response_headers(&mut host, &mut blocks, 0, UF);
    let token = host.callouts[0].token;
    host.respond(200, &[("x-envoy-upstream-service-time", "1")], b"x");
    ex.on_callout_response(&mut host, &mut blocks, token, 2, 1);
    assert_eq!(
        host.replies[0].details,
        "origin_pull_retried_on_another_master"
    );
    // A local reply: the origin that answered (Envoy's upstream is the first master).
    let served = &host.filter_state[ATTRIBUTION_KEY];
    assert!(
        served.starts_with("origin=10.0.0.")
            && served.ends_with(":80 role=master attempts=2 failed_over=true"),
        "{served}"
    );
}

/// One filter-state value per request, the whole attribution part of the access log line
/// (render's format prints it with one %FILTER_STATE%), whoever answered.
#[test]
fn access_log_attribution_is_one_value_for_every_answer() {
    let written = |text: &str, status: u32, flags: u64| {
        let cfg = config(text);
        let mut host = FakeHost::new(1);
        let mut blocks = BlockTable::default();
        let mut ex = start(&cfg, &mut host, &mut blocks, &get("a.com"));
        ex.on_response_headers(&mut host, &mut blocks, status, flags);
        let mut state: Vec<(String, String)> = host.filter_state.into_iter().collect();
        state.sort();
        state
    };
    let served = |text: &str| vec![(ATTRIBUTION_KEY.to_string(), text.to_string())];
    let one_ip = r#"{"domains":[{"domain":"a.com","master":{"ips":["10.0.0.1"]}}]}"#;
    let first_master = "origin=10.0.0.1:80 role=master attempts=1 failed_over=false";
    assert_eq!(written(one_ip, 200, 0), served(first_master));
    assert_eq!(
        written(one_ip, 404, 0),
        served(first_master),
        "the origin's own 404, relayed"
    );
    // Envoy's own reply (connect failure, nothing to fail over to): the origin it tried.
    assert_eq!(written(one_ip, 503, UF), served(first_master));
    // A domain origin: named by its label, not the address Envoy resolved it to.
    let named = r#"{"domains":[{"domain":"a.com","master":{"domain":"origin.example.com"}}]}"#;
    assert_eq!(
        written(named, 200, 0),
        served("origin=origin.example.com:80 role=master attempts=1 failed_over=false")
    );
}
