use super::*;
use crate::config::parse;
use crate::engine::classify::flags;
use crate::engine::metrics::Metrics;
use crate::testing::FakeHost;

const UF: u64 = flags::UPSTREAM_CONNECTION_FAILURE;
const UT: u64 = flags::UPSTREAM_REQUEST_TIMEOUT;

/// Whether `label` is blocked for `domain`, as any worker sees it.
fn blocked(host: &FakeHost, domain: &str, label: &str) -> bool {
    let table = BlockTable::default();
    table.domain_has_blocks(host, domain, host.now_ms)
        && table.is_blocked(host, domain, label, host.now_ms)
}

/// The failover flow by callout (`envoy.failover: callout`), which most tests here drive;
/// the router-carried flow has its own tests below (`router_*`).
fn config(text: &str) -> Rc<PluginConfig> {
    let mut value: serde_json::Value = serde_json::from_str(text).unwrap();
    if value.get("envoy").is_none() {
        value["envoy"] = serde_json::json!({"failover": "callout"});
    }
    Rc::new(parse(value.to_string().as_bytes()).unwrap())
}

fn router_config(text: &str) -> Rc<PluginConfig> {
    Rc::new(parse(text.as_bytes()).unwrap())
}

fn header<'a>(headers: &'a [(String, Option<String>)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.as_deref())
}

#[test]
fn router_plans_master_then_slave_and_names_the_server() {
    let config = router_config(
        r#"{"debug_headers":true,"domains":[{"domain":"www.test.com",
            "master":{"ips":["127.0.0.2:80"]},"slave":{"domain":"backup.example.com","host":"backup.example.com"}}]}"#,
    );
    let mut host = FakeHost::new(1);
    let mut blocks = BlockTable::default();
    let metrics = Rc::new(Metrics::new(config.clone(), Rc::default()));
    let mut info = get("www.test.com");
    info.metrics = Some(&metrics);
    let mut ex = Exchange::start(&config, &mut blocks, &mut host, &info).unwrap();
    assert!(ex.routes_chain());
    let headers = ex.chain_headers();
    assert_eq!(
        header(&headers, "x-origin-pull-cluster"),
        Some("origin_pull_chain(origin_pull_ip_http)(origin_pull|http|backup.example.com|80)")
    );
    assert_eq!(
        header(&headers, "x-envoy-original-dst-host"),
        Some("127.0.0.2:80")
    );
    // The slave is a DNS cluster: no address header for attempt 2 (a client's copy is removed).
    assert!(headers
        .iter()
        .any(|(k, v)| k == "x-origin-pull-dst-2" && v.is_none()));
    assert_eq!(header(&headers, "x-envoy-max-retries"), Some("1"));
    assert_eq!(
        header(&headers, "x-envoy-retry-on"),
        Some("connect-failure,refused-stream,reset,retriable-status-codes")
    );
    // The plan's id is the request's random id (strikes count distinct requests); the plan
    // itself names each attempt's origin by index, and the Host only where it changes.
    let plan = ex.chain_plan().unwrap();
    assert_eq!(
        header(&headers, "x-origin-pull-plan"),
        Some(format!("{:x}", plan.request).as_str())
    );
    assert_eq!(plan.sent_ms, host.now_ms);
    let steps: Vec<(bool, usize, Option<&str>)> = plan
        .steps
        .iter()
        .map(|s| (s.slave, s.target, s.authority.as_deref()))
        .collect();
    assert_eq!(
        steps,
        [(false, 0, None), (true, 0, Some("backup.example.com"))]
    );
    assert_eq!(plan.step(2).unwrap().2.label, "backup.example.com:80");
    // The request itself is counted per attempt by the upstream instance, not here.
    assert_eq!(
        host.metric("origin_pull_origin_requests_total;domain=www.test.com;origin=127.0.0.2:80")
            .unwrap_or(0),
        0
    );
    // The slave's answer, marked attempt 2 by the upstream instance.
    assert_eq!(
        ex.on_chain_response(&mut host, 200, 0, Some(2)),
        ResponseStep::Continue
    );
    assert!(host.replies.is_empty() && host.callouts.is_empty());
    assert_eq!(host.filter_state["origin_pull.role"], "slave");
    assert_eq!(
        host.filter_state["origin_pull.origin"],
        "backup.example.com:80"
    );
    assert_eq!(host.filter_state["origin_pull.attempts"], "2");
    assert_eq!(
        host.filter_state.len(),
        3,
        "failed_over is the log's, from attempts"
    );
    let debug = ex.debug_headers();
    assert_eq!(debug[0].1, "slave=backup.example.com:80");
    assert_eq!(
        host.metric("origin_pull_failovers_total;domain=www.test.com;outcome=served"),
        Some(1)
    );
}

#[test]
fn router_every_attempt_unanswered_is_a_clear_502() {
    let config = router_config(
        r#"{"domains":[{"domain":"www.test.com","master":{"ips":["127.0.0.2:80"]},"slave":{"ips":["127.0.0.3:80"]}}]}"#,
    );
    let mut host = FakeHost::new(2);
    let mut blocks = BlockTable::default();
    let mut ex = Exchange::start(&config, &mut blocks, &mut host, &get("www.test.com")).unwrap();
    assert_eq!(
        ex.on_chain_response(&mut host, 503, UF, None),
        ResponseStep::Pause
    );
    let reply = host.replies.last().unwrap();
    assert_eq!(reply.status, 502);
    assert!(reply
        .headers
        .iter()
        .any(|(k, v)| k == "x-origin-pull-error" && v == "origin-unreachable"));
    assert_eq!(host.filter_state["origin_pull.attempts"], "2");
}

#[test]
fn router_slave_4xx_is_relayed_and_a_master_answer_is_attempt_one() {
    let config = router_config(
        r#"{"domains":[{"domain":"www.test.com","master":{"ips":["127.0.0.2:80"]},"slave":{"ips":["127.0.0.3:80"]}}]}"#,
    );
    let mut host = FakeHost::new(3);
    let mut blocks = BlockTable::default();
    let mut ex = Exchange::start(&config, &mut blocks, &mut host, &get("www.test.com")).unwrap();
    assert_eq!(
        ex.on_chain_response(&mut host, 200, 0, Some(1)),
        ResponseStep::Continue
    );
    // The first master's answer, relayed: the access log's %UPSTREAM_HOST% names it.
    assert!(host.filter_state.is_empty(), "{:?}", host.filter_state);
    let mut ex = Exchange::start(&config, &mut blocks, &mut host, &get("www.test.com")).unwrap();
    assert_eq!(
        ex.on_chain_response(&mut host, 404, 0, Some(2)),
        ResponseStep::Continue
    );
    assert!(host.replies.is_empty());
    // The slave's answer, relayed by the router: %UPSTREAM_HOST% is the slave's IP:PORT.
    assert_eq!(host.filter_state["origin_pull.role"], "slave");
    assert_eq!(host.filter_state["origin_pull.attempts"], "2");
    assert!(!host.filter_state.contains_key("origin_pull.origin"));
}

#[test]
fn router_without_slave_plans_other_unblocked_masters_and_retries_no_status() {
    let config = router_config(
        r#"{"domains":[{"domain":"www.test.com","master":{"ips":["127.0.0.2:80","127.0.0.3:80","127.0.0.4:80"]},
            "failover":{"master_retries":1}}]}"#,
    );
    let mut host = FakeHost::new(4);
    let mut blocks = BlockTable::default();
    let ex = Exchange::start(&config, &mut blocks, &mut host, &get("www.test.com")).unwrap();
    let headers = ex.chain_headers();
    assert_eq!(
        header(&headers, "x-origin-pull-cluster"),
        Some("origin_pull_chain(origin_pull_ip_http)(origin_pull_ip_http_2)")
    );
    let first = header(&headers, "x-envoy-original-dst-host").unwrap();
    let second = header(&headers, "x-origin-pull-dst-2").unwrap();
    assert_ne!(first, second);
    assert_eq!(
        header(&headers, "x-envoy-retry-on"),
        Some("connect-failure,refused-stream,reset")
    );
    // Two of three blocked: nothing to retry on, so no chain.
    blocks.block(&mut host, "www.test.com", "127.0.0.2:80", 60_000);
    blocks.block(&mut host, "www.test.com", "127.0.0.3:80", 60_000);
    let ex = Exchange::start(&config, &mut blocks, &mut host, &get("www.test.com")).unwrap();
    assert!(!ex.routes_chain());
}

#[test]
fn router_is_not_used_for_buckets_other_methods_or_two_tls_names() {
    let config = router_config(
        r#"{"domains":[{"domain":"www.test.com","master":{"ips":["127.0.0.2:443"],"protocol":"https","host":"a.example.com"},
            "slave":{"ips":["127.0.0.3:443"],"protocol":"https","host":"b.example.com"}},
            {"domain":"p.test.com","master":{"ips":["127.0.0.2:80"]},"slave":{"ips":["127.0.0.3:80"]}}]}"#,
    );
    let mut host = FakeHost::new(5);
    let mut blocks = BlockTable::default();
    let ex = Exchange::start(&config, &mut blocks, &mut host, &get("www.test.com")).unwrap();
    assert!(!ex.routes_chain());
    let mut post = get("p.test.com");
    post.method = "POST";
    let ex = Exchange::start(&config, &mut blocks, &mut host, &post).unwrap();
    assert!(!ex.routes_chain());
    let ex = Exchange::start(&config, &mut blocks, &mut host, &get("p.test.com")).unwrap();
    assert!(ex.routes_chain());
}

/// The seeds' example: master 1.1.1.1, slave 2.2.2.2, for www.test.com.
fn seeds_config(extra: &str) -> Rc<PluginConfig> {
    config(&format!(
        r#"{{"debug_headers":true,"domains":[{{"domain":"www.test.com",
            "master":{{"ips":["1.1.1.1"]}},"slave":{{"ips":["2.2.2.2"]}}{extra}}}]}}"#
    ))
}

fn get(authority: &str) -> RequestInfo<'_> {
    RequestInfo {
        authority,
        scheme: "http",
        method: "GET",
        path: "/1.jpg",
        has_body: false,
        worker: "w1",
        stats: crate::s3::bucket::BucketStats::default(),
        metrics: None,
    }
}

fn client_headers(host: &mut FakeHost, method: &str, path: &str) {
    host.request_headers = vec![
        (":method".into(), method.into()),
        (":path".into(), path.into()),
        (":authority".into(), "www.test.com".into()),
        (":scheme".into(), "http".into()),
        ("x-origin-pull-cluster".into(), "origin_pull_ip_http".into()),
        ("x-envoy-original-dst-host".into(), "1.1.1.1:80".into()),
        ("x-envoy-expected-rq-timeout-ms".into(), "5000".into()),
        ("connection".into(), "keep-alive, x-client-hop".into()),
        ("x-client-hop".into(), "1".into()),
        ("accept".into(), "image/*".into()),
    ];
}

fn start(
    cfg: &Rc<PluginConfig>,
    host: &mut FakeHost,
    blocks: &mut BlockTable,
    req: &RequestInfo,
) -> Exchange {
    let mut ex = Exchange::start(cfg, blocks, host, req).expect("a configured host");
    ex.keep_request_headers(host.request_headers.clone());
    ex
}

#[test]
fn unknown_host_gets_a_clear_local_reply_and_no_origin() {
    let cfg = seeds_config("");
    let mut host = FakeHost::new(1);
    let mut blocks = BlockTable::default();
    assert!(Exchange::start(&cfg, &mut blocks, &mut host, &get("evil.example.com")).is_none());
    let reply = &host.replies[0];
    assert_eq!(reply.status, 404);
    assert_eq!(reply.header(ERROR_HEADER), Some("unknown-host"));
    assert!(String::from_utf8_lossy(&reply.body)
        .contains("no origin is configured for host 'evil.example.com'"));
    assert!(host.callouts.is_empty());
}

#[test]
fn seeds_example_master_404_slave_200() {
    let cfg = seeds_config("");
    let mut host = FakeHost::new(1);
    let mut blocks = BlockTable::default();
    client_headers(&mut host, "GET", "/1.jpg");
    let mut ex = start(&cfg, &mut host, &mut blocks, &get("www.test.com"));
    let (route, host_override) = ex.route().unwrap();
    assert_eq!(route.cluster, "origin_pull_ip_http");
    assert_eq!(route.original_dst.as_deref(), Some("1.1.1.1:80"));
    assert_eq!(host_override, None);
    // the filter rewrites the routing headers after start; the copy must not change
    host.request_headers.clear();

    assert_eq!(
        ex.on_response_headers(&mut host, &mut blocks, 404, 0),
        ResponseStep::Pause
    );
    let call = host.callouts[0].clone();
    assert_eq!(call.cluster, "origin_pull_ip_http");
    assert_eq!(call.header(":path"), Some("/1.jpg"));
    assert_eq!(call.header(":authority"), Some("www.test.com"));
    assert_eq!(call.header(ORIGINAL_DST_HEADER), Some("2.2.2.2:80"));
    assert_eq!(call.header("accept"), Some("image/*"));
    assert_eq!(call.header("connection"), None);
    assert_eq!(call.header("x-client-hop"), None); // named by the client's Connection
    assert_eq!(call.header("x-origin-pull-cluster"), None);
    assert_eq!(call.header("x-envoy-expected-rq-timeout-ms"), None);
    assert_eq!(
        call.headers
            .iter()
            .filter(|(k, _)| k == ORIGINAL_DST_HEADER)
            .count(),
        1
    );
    assert_eq!(call.body, None);

    host.respond(
        200,
        &[
            ("content-type", "image/jpeg"),
            ("transfer-encoding", "chunked"),
            ("connection", "x-slave-hop"),
            ("x-slave-hop", "secret"),
            ("x-envoy-upstream-service-time", "2"),
        ],
        b"JPEG",
    );
    ex.on_callout_response(&mut host, &mut blocks, call.token, 6, 4);
    let reply = &host.replies[0];
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, b"JPEG");
    assert_eq!(reply.header("content-type"), Some("image/jpeg"));
    assert_eq!(reply.header("transfer-encoding"), None);
    assert_eq!(reply.header("x-slave-hop"), None); // named by the slave's Connection
    assert_eq!(reply.header(DEBUG_ORIGIN_HEADER), Some("slave=2.2.2.2:80"));
    assert_eq!(reply.header(DEBUG_ATTEMPTS_HEADER), Some("2"));
    assert_eq!(host.filter_state["origin_pull.origin"], "2.2.2.2:80");
    assert_eq!(host.filter_state["origin_pull.role"], "slave");
    // A 404 does not block the master.
    assert!(!blocks.domain_has_blocks(&host, "www.test.com", host.now_ms));
}

#[test]
fn master_200_passes_through() {
    let cfg = seeds_config("");
    let mut host = FakeHost::new(1);
    let mut blocks = BlockTable::default();
    let mut ex = start(&cfg, &mut host, &mut blocks, &get("www.test.com"));
    assert_eq!(
        ex.on_response_headers(&mut host, &mut blocks, 200, 0),
        ResponseStep::Continue
    );
    assert!(host.callouts.is_empty() && host.replies.is_empty());
    assert_eq!(ex.debug_headers()[0].1, "master=1.1.1.1:80");
    // Nothing for the access log to be told: %UPSTREAM_HOST%, master, 1 attempt.
    assert!(host.filter_state.is_empty(), "{:?}", host.filter_state);
}

#[test]
fn no_slave_means_the_masters_answer_stands() {
    let cfg = config(r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]}}]}"#);
    let mut host = FakeHost::new(1);
    let mut blocks = BlockTable::default();
    let mut ex = start(&cfg, &mut host, &mut blocks, &get("a.com"));
    assert_eq!(
        ex.on_response_headers(&mut host, &mut blocks, 404, 0),
        ResponseStep::Continue
    );
    assert!(host.callouts.is_empty());
    assert!(
        ex.debug_headers().is_empty(),
        "debug headers are off by default"
    );
}

#[test]
fn connect_error_blocks_and_retries_another_master_then_the_slave() {
    let cfg = config(
        r#"{"domains":[{"domain":"a.com","master":{"ips":["10.0.0.1","10.0.0.2","10.0.0.3","10.0.0.4"]},
            "slave":{"domain":"backup.example.com"},"failover":{"master_retries":2}}]}"#,
    );
    let mut host = FakeHost::new(7);
    let mut blocks = BlockTable::default();
    client_headers(&mut host, "GET", "/x");
    let mut ex = start(&cfg, &mut host, &mut blocks, &get("a.com"));
    let first = ex.current_origin().unwrap().1.to_string();
    assert_eq!(
        ex.on_response_headers(&mut host, &mut blocks, 503, UF),
        ResponseStep::Pause
    );
    // two more masters, each dead, then the slave
    let mut seen = vec![first.clone()];
    for i in 0..2 {
        let call = host.callouts[i].clone();
        assert_eq!(call.cluster, "origin_pull_ip_http");
        let dst = call.header(ORIGINAL_DST_HEADER).unwrap().to_string();
        assert!(!seen.contains(&dst), "{dst} retried twice");
        seen.push(dst);
        let body = b"upstream connect error or disconnect/reset before headers. reset reason: connection failure";
        host.respond(503, &[], body);
        ex.on_callout_response(&mut host, &mut blocks, call.token, 1, body.len());
    }
    let call = host.callouts[2].clone();
    assert_eq!(call.cluster, "origin_pull|http|backup.example.com|80");
    assert_eq!(call.header(ORIGINAL_DST_HEADER), None);
    host.respond(200, &[("x-envoy-upstream-service-time", "1")], b"ok");
    ex.on_callout_response(&mut host, &mut blocks, call.token, 2, 2);
    assert_eq!(host.replies[0].status, 200);
    // every dead master is blocked for every worker
    let other_worker = host.sibling(99);
    for label in &seen {
        assert!(
            blocked(&other_worker, "a.com", label),
            "{label} not blocked"
        );
    }
    // The line names the block's exact end, from the clock the block table uses.
    let until = host.now_ms + 60_000;
    assert!(host.logged(&format!(
        "failed (connect_error); blocked for 60 s (until {until} ms)"
    )));
}

#[test]
fn blocked_masters_are_skipped_on_the_next_requests_and_return_after_the_block() {
    let cfg = config(
        r#"{"domains":[{"domain":"a.com","master":{"ips":["10.0.0.1","10.0.0.2"]},"detection":{"block_seconds":2}}]}"#,
    );
    let mut host = FakeHost::new(3);
    let mut blocks = BlockTable::default();
    let mut dead = None;
    while dead.is_none() {
        let mut ex = start(&cfg, &mut host, &mut blocks, &get("a.com"));
        if ex.current_origin().unwrap().1 == "10.0.0.1:80" {
            ex.on_response_headers(&mut host, &mut blocks, 503, UF);
            dead = Some(());
        }
    }
    let mut worker2 = host.sibling(11);
    let mut blocks2 = BlockTable::default();
    for _ in 0..200 {
        let ex = start(&cfg, &mut worker2, &mut blocks2, &get("a.com"));
        assert_eq!(ex.current_origin().unwrap().1, "10.0.0.2:80");
    }
    worker2.now_ms += 2_001;
    let picked_again = (0..200).any(|_| {
        start(&cfg, &mut worker2, &mut blocks2, &get("a.com"))
            .current_origin()
            .unwrap()
            .1
            == "10.0.0.1:80"
    });
    assert!(picked_again, "the block never expired");
}

#[test]
fn every_master_blocked_goes_straight_to_the_slave() {
    let cfg = seeds_config("");
    let mut host = FakeHost::new(1);
    let mut blocks = BlockTable::default();
    blocks.block(&mut host, "www.test.com", "1.1.1.1:80", 60_000);
    let ex = start(&cfg, &mut host, &mut blocks, &get("www.test.com"));
    assert_eq!(ex.current_origin(), Some((Role::Slave, "2.2.2.2:80")));
}

#[test]
fn every_origin_blocked_without_slave_still_tries_the_master() {
    let cfg =
        config(r#"{"domains":[{"domain":"a.com","master":{"ips":["10.0.0.1","10.0.0.2"]}}]}"#);
    let mut host = FakeHost::new(1);
    let mut blocks = BlockTable::default();
    blocks.block(&mut host, "a.com", "10.0.0.1:80", 60_000);
    blocks.block(&mut host, "a.com", "10.0.0.2:80", 60_000);
    let ex = start(&cfg, &mut host, &mut blocks, &get("a.com"));
    assert_eq!(ex.current_origin().unwrap().0, Role::Master);
}

#[test]
fn slave_chosen_because_masters_are_blocked_and_unreachable_falls_back_to_a_master() {
    // Found by chaos (all origins killed under load): Envoy's bare 503 reached the client.
    let cfg = seeds_config("");
    let mut host = FakeHost::new(1);
    let mut blocks = BlockTable::default();
    blocks.block(&mut host, "www.test.com", "1.1.1.1:80", 60_000);
    client_headers(&mut host, "GET", "/x");
    let mut ex = start(&cfg, &mut host, &mut blocks, &get("www.test.com"));
    assert_eq!(ex.current_origin(), Some((Role::Slave, "2.2.2.2:80")));
    assert_eq!(
        ex.on_response_headers(&mut host, &mut blocks, 503, UF),
        ResponseStep::Pause
    );
    // A blocked master is a better bet than a certain error.
    assert_eq!(host.callouts.len(), 1);
    assert_eq!(
        host.callouts[0].header(ORIGINAL_DST_HEADER),
        Some("1.1.1.1:80")
    );
    let token = host.callouts[0].token;
    host.respond(
        503,
        &[],
        b"upstream connect error or disconnect/reset before headers",
    );
    ex.on_callout_response(&mut host, &mut blocks, token, 1, 57);
    assert_eq!(host.callouts.len(), 1);
    let reply = &host.replies[0];
    assert_eq!(reply.status, 502);
    assert_eq!(reply.header(ERROR_HEADER), Some("origin-unreachable"));
}

#[test]
fn slave_answer_with_an_invalid_status_is_never_relayed() {
    // Found by the hostile set: Envoy's codec passed "HTTP/1.1 2000" on to the filter.
    for status in ["2000", "99", "abc"] {
        let cfg = seeds_config("");
        let mut host = FakeHost::new(1);
        let mut blocks = BlockTable::default();
        client_headers(&mut host, "GET", "/x");
        let mut ex = start(&cfg, &mut host, &mut blocks, &get("www.test.com"));
        ex.on_response_headers(&mut host, &mut blocks, 404, 0);
        let token = host.callouts[0].token;
        host.response_headers = vec![(":status".into(), status.into())];
        host.response_body = b"ok".to_vec();
        ex.on_callout_response(&mut host, &mut blocks, token, 1, 2);
        let reply = &host.replies[0];
        assert_eq!(
            (reply.status, reply.header(ERROR_HEADER)),
            (502, Some("origin-unreachable"))
        );
    }
}

#[test]
fn slave_unreachable_gives_a_clear_502() {
    let cfg = seeds_config("");
    let mut host = FakeHost::new(1);
    let mut blocks = BlockTable::default();
    client_headers(&mut host, "GET", "/x");
    let mut ex = start(&cfg, &mut host, &mut blocks, &get("www.test.com"));
    ex.on_response_headers(&mut host, &mut blocks, 503, UF);
    let token = host.callouts[0].token;
    host.respond(503, &[("content-type", "text/plain")], b"upstream connect error or disconnect/reset before headers. reset reason: connection failure");
    ex.on_callout_response(&mut host, &mut blocks, token, 2, 90);
    let reply = &host.replies[0];
    assert_eq!(reply.status, 502);
    assert_eq!(reply.header(ERROR_HEADER), Some("origin-unreachable"));
    assert!(
        String::from_utf8_lossy(&reply.body).contains("tried master 1.1.1.1:80, slave 2.2.2.2:80")
    );
}

#[test]
fn failing_slave_answer_is_what_the_client_gets() {
    let cfg = seeds_config("");
    let mut host = FakeHost::new(1);
    let mut blocks = BlockTable::default();
    client_headers(&mut host, "GET", "/x");
    let mut ex = start(&cfg, &mut host, &mut blocks, &get("www.test.com"));
    ex.on_response_headers(&mut host, &mut blocks, 500, 0);
    let token = host.callouts[0].token;
    host.respond(
        503,
        &[("x-envoy-upstream-service-time", "1"), ("retry-after", "5")],
        b"slave busy",
    );
    ex.on_callout_response(&mut host, &mut blocks, token, 3, 10);
    assert_eq!(host.replies[0].status, 503);
    assert_eq!(host.replies[0].body, b"slave busy");
    assert_eq!(host.replies[0].header("retry-after"), Some("5"));
}

#[test]
fn timeouts_of_three_requests_block_one_does_not() {
    let cfg = seeds_config("");
    let mut host = FakeHost::new(1);
    let mut blocks = BlockTable::default();
    client_headers(&mut host, "GET", "/x");
    for n in 1..=3 {
        let mut ex = start(&cfg, &mut host, &mut blocks, &get("www.test.com"));
        host.now_ms += 1_000; // the route timeout
        assert_eq!(
            ex.on_response_headers(&mut host, &mut blocks, 504, UT),
            ResponseStep::Pause
        );
        assert_eq!(blocked(&host, "www.test.com", "1.1.1.1:80"), n == 3, "{n}");
    }
    let until = host.now_ms + 60_000;
    assert!(host.logged(&format!(
        "failed (timeout); blocked for 60 s (until {until} ms) (3 failed requests within 10 s)"
    )));
}

/// Issue 13 item 4: one client-chosen URL (slow, or reset by the origin) must not block a
/// healthy origin for everyone, on a master or on the slave; a dead one is blocked at once.
#[test]
fn a_hostile_request_blocks_nothing_a_dead_origin_is_blocked_at_once() {
    let cfg = config(
        r#"{"domains":[{"domain":"a.com","master":{"ips":["10.0.0.1","10.0.0.2"]},
            "slave":{"ips":["10.0.0.9"]}}]}"#,
    );
    for (flags, body) in [
        (UT, &b"upstream request timeout"[..]),
        (
            flags::UPSTREAM_REMOTE_RESET,
            b"upstream connect error or disconnect/reset before headers. reset reason: remote reset",
        ),
    ] {
        let mut host = FakeHost::new(5);
        let mut blocks = BlockTable::default();
        client_headers(&mut host, "GET", "/hostile");
        let mut ex = start(&cfg, &mut host, &mut blocks, &get("a.com"));
        assert_eq!(
            ex.on_response_headers(&mut host, &mut blocks, 504, flags),
            ResponseStep::Pause
        );
        // The other master and then the slave fail the same way.
        let status = if flags == UT { 504 } else { 503 };
        for _ in 0..2 {
            let call = host.callouts.last().unwrap().clone();
            host.respond(status, &[], body);
            ex.on_callout_response(&mut host, &mut blocks, call.token, 1, body.len());
        }
        assert_eq!(host.callouts.len(), 2);
        assert_eq!(host.replies[0].status, 502);
        for label in ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.9:80"] {
            assert!(!blocked(&host, "a.com", label), "{label} blocked by one request");
        }
    }
    // A refused connection blocks at once.
    let mut host = FakeHost::new(5);
    let mut blocks = BlockTable::default();
    let mut ex = start(&cfg, &mut host, &mut blocks, &get("a.com"));
    let (_, first) = ex.current_origin().unwrap();
    let first = first.to_string();
    ex.on_response_headers(&mut host, &mut blocks, 503, UF);
    assert!(blocked(&host, "a.com", &first));
}

#[test]
fn an_origin_that_answers_other_requests_is_never_blocked_by_one_url() {
    // A client asks again and again for a slow URL; the origin keeps answering the other
    // requests, sent after each slow one: no strike counts, the origin stays unblocked.
    let cfg = seeds_config("");
    let mut host = FakeHost::new(5);
    let mut blocks = BlockTable::default();
    client_headers(&mut host, "GET", "/x");
    for _ in 0..10 {
        let mut slow = start(&cfg, &mut host, &mut blocks, &get("www.test.com"));
        host.now_ms += 10;
        let mut other = start(&cfg, &mut host, &mut blocks, &get("www.test.com"));
        assert_eq!(other.current_origin(), Some((Role::Master, "1.1.1.1:80")));
        other.on_response_headers(&mut host, &mut blocks, 200, 0);
        host.now_ms += 1_000;
        slow.on_response_headers(&mut host, &mut blocks, 504, UT);
    }
    assert!(!blocked(&host, "www.test.com", "1.1.1.1:80"));
    assert!(host.logged("not counted: it answered other requests meanwhile"));
    // The same timeouts with no answer in between (a hung origin) block it.
    for _ in 0..3 {
        let mut slow = start(&cfg, &mut host, &mut blocks, &get("www.test.com"));
        host.now_ms += 1_000;
        slow.on_response_headers(&mut host, &mut blocks, 504, UT);
    }
    assert!(blocked(&host, "www.test.com", "1.1.1.1:80"));
}

#[test]
fn five_xx_blocks_only_when_configured() {
    for (block_on_5xx, blocked) in [(false, false), (true, true)] {
        let cfg = seeds_config(&format!(
            r#","detection":{{"block_on_5xx":{block_on_5xx},"failure_threshold":1}}"#
        ));
        let mut host = FakeHost::new(1);
        let mut blocks = BlockTable::default();
        client_headers(&mut host, "GET", "/x");
        let mut ex = start(&cfg, &mut host, &mut blocks, &get("www.test.com"));
        ex.on_response_headers(&mut host, &mut blocks, 502, 0);
        assert_eq!(
            super::tests::blocked(&host, "www.test.com", "1.1.1.1:80"),
            blocked
        );
    }
}

#[test]
fn configured_conditions_only() {
    let cfg = seeds_config(r#","failover":{"on":["connect_error"],"status_codes":[404]}"#);
    let mut host = FakeHost::new(1);
    let mut blocks = BlockTable::default();
    client_headers(&mut host, "GET", "/x");
    let mut ex = start(&cfg, &mut host, &mut blocks, &get("www.test.com"));
    assert_eq!(
        ex.on_response_headers(&mut host, &mut blocks, 500, 0),
        ResponseStep::Continue
    );
    let mut ex = start(&cfg, &mut host, &mut blocks, &get("www.test.com"));
    assert_eq!(
        ex.on_response_headers(&mut host, &mut blocks, 403, 0),
        ResponseStep::Continue
    );
    let mut ex = start(&cfg, &mut host, &mut blocks, &get("www.test.com"));
    assert_eq!(
        ex.on_response_headers(&mut host, &mut blocks, 404, 0),
        ResponseStep::Pause
    );
}

#[test]
fn post_is_not_failed_over_by_default() {
    let cfg = seeds_config("");
    let mut host = FakeHost::new(1);
    let mut blocks = BlockTable::default();
    let req = RequestInfo {
        method: "POST",
        has_body: true,
        ..get("www.test.com")
    };
    let mut ex = start(&cfg, &mut host, &mut blocks, &req);
    assert!(!ex.wants_request_body());
    assert_eq!(
        ex.on_response_headers(&mut host, &mut blocks, 500, 0),
        ResponseStep::Continue
    );
    assert!(host.callouts.is_empty());
    assert!(host.logged(
        "not failing over POST after 5xx from 1.1.1.1:80: method POST is not in failover.methods"
    ));
}

#[test]
fn opted_in_post_replays_the_whole_body() {
    let cfg = seeds_config(r#","failover":{"methods":["GET","POST"],"max_request_body_bytes":10}"#);
    let mut host = FakeHost::new(1);
    let mut blocks = BlockTable::default();
    client_headers(&mut host, "POST", "/upload");
    host.request_headers
        .push(("content-length".into(), "8".into()));
    let req = RequestInfo {
        method: "POST",
        has_body: true,
        ..get("www.test.com")
    };
    let mut ex = start(&cfg, &mut host, &mut blocks, &req);
    assert!(ex.wants_request_body());
    ex.on_request_body(b"abcd", false);
    ex.on_request_body(b"efgh", true);
    ex.on_response_headers(&mut host, &mut blocks, 500, 0);
    assert_eq!(host.callouts[0].body.as_deref(), Some(&b"abcdefgh"[..]));
    assert_eq!(host.callouts[0].header("content-length"), Some("8"));
}

#[test]
fn a_body_that_cannot_be_replayed_in_full_refuses_failover() {
    let cfg = seeds_config(r#","failover":{"methods":["POST"],"max_request_body_bytes":4}"#);
    // over the limit
    let mut host = FakeHost::new(1);
    let mut blocks = BlockTable::default();
    let req = RequestInfo {
        method: "POST",
        has_body: true,
        ..get("www.test.com")
    };
    let mut ex = start(&cfg, &mut host, &mut blocks, &req);
    ex.on_request_body(b"abcdef", true);
    assert!(!ex.wants_request_body());
    assert_eq!(
        ex.on_response_headers(&mut host, &mut blocks, 500, 0),
        ResponseStep::Continue
    );
    assert!(host.callouts.is_empty());
    assert!(host.logged("larger than failover.max_request_body_bytes (4)"));
    // not fully received when the master answered
    let mut host = FakeHost::new(1);
    let mut ex = start(&cfg, &mut host, &mut blocks, &req);
    ex.on_request_body(b"ab", false);
    assert_eq!(
        ex.on_response_headers(&mut host, &mut blocks, 500, 0),
        ResponseStep::Continue
    );
    assert!(host.logged("not been fully received"));
}

#[test]
fn oversized_failover_response_is_refused_with_502() {
    let cfg = seeds_config(r#","failover":{"max_response_body_bytes":1000}"#);
    let mut host = FakeHost::new(1);
    let mut blocks = BlockTable::default();
    client_headers(&mut host, "GET", "/big");
    let mut ex = start(&cfg, &mut host, &mut blocks, &get("www.test.com"));
    ex.on_response_headers(&mut host, &mut blocks, 404, 0);
    let token = host.callouts[0].token;
    host.respond(200, &[("x-envoy-upstream-service-time", "1")], &[]);
    host.response_body = vec![b'x'; 1001];
    ex.on_callout_response(&mut host, &mut blocks, token, 2, 1001);
    let reply = &host.replies[0];
    assert_eq!(reply.status, 502);
    assert_eq!(
        reply.header(ERROR_HEADER),
        Some("failover-response-too-large")
    );
}

#[test]
fn callout_without_headers_is_treated_as_unreachable() {
    let cfg = seeds_config("");
    let mut host = FakeHost::new(1);
    let mut blocks = BlockTable::default();
    client_headers(&mut host, "GET", "/x");
    let mut ex = start(&cfg, &mut host, &mut blocks, &get("www.test.com"));
    ex.on_response_headers(&mut host, &mut blocks, 404, 0);
    let token = host.callouts[0].token;
    ex.on_callout_response(&mut host, &mut blocks, token, 0, 0);
    assert_eq!(host.replies[0].status, 502);
    // the slave may just have sent something too big for Envoy's buffer: it is not blocked
    assert!(!blocked(&host, "www.test.com", "2.2.2.2:80"));
    // and a stale token is ignored
    ex.on_callout_response(&mut host, &mut blocks, token, 0, 0);
    assert_eq!(host.replies.len(), 1);
}

#[test]
fn failed_dispatch_falls_back_to_the_masters_answer() {
    let cfg = seeds_config("");
    let mut host = FakeHost::new(1);
    host.fail_dispatch = true;
    let mut blocks = BlockTable::default();
    client_headers(&mut host, "GET", "/x");
    let mut ex = start(&cfg, &mut host, &mut blocks, &get("www.test.com"));
    assert_eq!(
        ex.on_response_headers(&mut host, &mut blocks, 404, 0),
        ResponseStep::Continue
    );
    assert!(host.logged("could not start the failover request"));
}

#[test]
fn switch_makes_the_slave_serve_first() {
    let cfg = seeds_config(r#","master_slave_switch":true"#);
    let mut host = FakeHost::new(1);
    let mut blocks = BlockTable::default();
    let ex = start(&cfg, &mut host, &mut blocks, &get("www.test.com"));
    assert_eq!(ex.current_origin(), Some((Role::Master, "2.2.2.2:80")));
}

#[test]
fn host_override_and_follow_protocol() {
    let cfg = config(
        r#"{"domains":[{"domain":"www.test.com","master":{"ips":["10.0.0.1"],"protocol":"follow","host":"origin.test"},
            "slave":{"ips":["10.0.0.2:8443"],"protocol":"https"}}]}"#,
    );
    let mut host = FakeHost::new(1);
    let mut blocks = BlockTable::default();
    let req = RequestInfo {
        scheme: "https",
        ..get("www.test.com")
    };
    let mut ex = start(&cfg, &mut host, &mut blocks, &req);
    let (route, host_override) = ex.route().unwrap();
    assert_eq!(route.cluster, "origin_pull_ip_https");
    assert_eq!(route.original_dst.as_deref(), Some("10.0.0.1:443"));
    assert_eq!(host_override, Some("origin.test"));
    client_headers(&mut host, "GET", "/x");
    ex.on_response_headers(&mut host, &mut blocks, 404, 0);
    let call = &host.callouts[0];
    assert_eq!(call.cluster, "origin_pull_ip_https");
    // the slave has no override: it gets the client's host
    assert_eq!(call.header(":authority"), Some("www.test.com"));
    assert_eq!(call.header(":scheme"), Some("https"));
    let http = start(&cfg, &mut host, &mut blocks, &get("www.test.com"));
    assert_eq!(
        http.route().unwrap().0.original_dst.as_deref(),
        Some("10.0.0.1:80")
    );
}

#[test]
fn missing_envoy_cluster_is_logged_as_a_deployment_error() {
    let cfg = config(r#"{"domains":[{"domain":"a.com","master":{"clusters":[{"name":"nope"}]}}]}"#);
    let mut host = FakeHost::new(1);
    let mut blocks = BlockTable::default();
    let mut ex = start(&cfg, &mut host, &mut blocks, &get("a.com"));
    assert_eq!(
        ex.on_response_headers(&mut host, &mut blocks, 503, flags::NO_CLUSTER_FOUND),
        ResponseStep::Continue
    );
    assert!(host.logged("Envoy has no cluster named 'nope'"));
}

#[test]
fn weighted_polling_through_the_exchange() {
    let cfg = config(
        r#"{"domains":[{"domain":"a.com","master":{"ips":["10.0.0.1::1","10.0.0.2::3","10.0.0.3::0"]}}]}"#,
    );
    let mut host = FakeHost::new(5);
    let mut blocks = BlockTable::default();
    let mut counts = std::collections::HashMap::new();
    for _ in 0..4000 {
        let ex = start(&cfg, &mut host, &mut blocks, &get("a.com"));
        *counts
            .entry(ex.current_origin().unwrap().1.to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(counts.get("10.0.0.3:80"), None);
    let share = f64::from(counts["10.0.0.2:80"]) / 4000.0;
    assert!((share - 0.75).abs() < 0.03, "{counts:?}");
}

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
    assert_eq!(host.filter_state["origin_pull.origin"], "2.2.2.2:80");
    assert_eq!(host.filter_state["origin_pull.attempts"], "2");
    assert_eq!(host.filter_state["origin_pull.role"], "slave");
    assert_eq!(host.filter_state.len(), 3);
    assert_eq!(host.replies[0].details, "origin_pull_failed_over_to_slave");

    let (host, _) = counted((200, 0), None);
    assert!(host.filter_state.is_empty(), "{:?}", host.filter_state);
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
    // A local reply: the origin is written (Envoy's upstream is the first master); the role
    // is the log's default.
    assert!(host.filter_state["origin_pull.origin"].starts_with("10.0.0."));
    assert_eq!(host.filter_state["origin_pull.attempts"], "2");
    assert!(!host.filter_state.contains_key("origin_pull.role"));
}

/// The access log falls back to %UPSTREAM_HOST%, `master` and `1` (render's format): the filter
/// writes only what differs, nothing on the happy path.
#[test]
fn access_log_filter_state_only_where_the_log_cannot_tell() {
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
    let one_ip = r#"{"domains":[{"domain":"a.com","master":{"ips":["10.0.0.1"]}}]}"#;
    assert_eq!(written(one_ip, 200, 0), []);
    assert_eq!(written(one_ip, 404, 0), [], "the origin's own 404, relayed");
    // Envoy's own reply (connect failure, nothing to fail over to): not `via_upstream`.
    assert_eq!(
        written(one_ip, 503, UF),
        [("origin_pull.origin".to_string(), "10.0.0.1:80".to_string())]
    );
    // A domain origin: %UPSTREAM_HOST% shows the address it resolved to, not the label.
    let named = r#"{"domains":[{"domain":"a.com","master":{"domain":"origin.example.com"}}]}"#;
    assert_eq!(
        written(named, 200, 0),
        [(
            "origin_pull.origin".to_string(),
            "origin.example.com:80".to_string()
        )]
    );
}

/// Issue 13 item 7: one dead master and no slave: the documented 502, first and following
/// requests (Envoy's raw 503 never reaches the client); two dead masters likewise.
#[test]
fn dead_masters_without_slave_get_the_documented_502_every_time() {
    for ips in [r#"["10.0.0.1"]"#, r#"["10.0.0.1","10.0.0.2"]"#] {
        let cfg = config(&format!(
            r#"{{"domains":[{{"domain":"a.com","master":{{"ips":{ips}}}}}]}}"#
        ));
        let mut host = FakeHost::new(1);
        let mut blocks = BlockTable::default();
        client_headers(&mut host, "GET", "/x");
        for n in 0..4 {
            let mut ex = start(&cfg, &mut host, &mut blocks, &get("a.com"));
            let replies = host.replies.len();
            assert_eq!(
                ex.on_response_headers(&mut host, &mut blocks, 503, UF),
                ResponseStep::Pause,
                "{ips} request {n}"
            );
            while host.replies.len() == replies {
                let call = host.callouts.last().unwrap().clone();
                let body = b"upstream connect error or disconnect/reset before headers. reset reason: connection failure";
                host.respond(503, &[], body);
                ex.on_callout_response(&mut host, &mut blocks, call.token, 1, body.len());
            }
            let reply = host.replies.last().unwrap();
            assert_eq!(reply.status, 502, "{ips} request {n}");
            assert_eq!(reply.header(ERROR_HEADER), Some("origin-unreachable"));
            assert_eq!(reply.details, "origin_pull_no_origin_reachable");
        }
    }
}

/// Issue 13 item 10: a block belongs to the domain that wrote it; `block_seconds: 0` never
/// skips an address another domain blocked, and never blocks one.
#[test]
fn blocks_belong_to_their_domain_and_zero_seconds_never_skips() {
    let cfg = config(
        r#"{"domains":[
            {"domain":"a.com","master":{"ips":["10.0.0.1","10.0.0.2"]}},
            {"domain":"b.com","master":{"ips":["10.0.0.1","10.0.0.2"]},"detection":{"block_seconds":0}},
            {"domain":"c.com","master":{"ips":["10.0.0.1","10.0.0.2"]}}]}"#,
    );
    let mut host = FakeHost::new(9);
    let mut blocks = BlockTable::default();
    // a.com's request finds 10.0.0.1 dead: blocked for a.com.
    loop {
        let mut ex = start(&cfg, &mut host, &mut blocks, &get("a.com"));
        if ex.current_origin().unwrap().1 == "10.0.0.1:80" {
            ex.on_response_headers(&mut host, &mut blocks, 503, UF);
            break;
        }
    }
    assert!(blocked(&host, "a.com", "10.0.0.1:80"));
    let picks = |host: &mut FakeHost, blocks: &mut BlockTable, domain: &str| {
        (0..200)
            .filter(|_| {
                start(&cfg, host, blocks, &get(domain))
                    .current_origin()
                    .unwrap()
                    .1
                    == "10.0.0.1:80"
            })
            .count()
    };
    assert_eq!(picks(&mut host, &mut blocks, "a.com"), 0);
    assert!(picks(&mut host, &mut blocks, "b.com") > 50);
    assert!(picks(&mut host, &mut blocks, "c.com") > 50);
    // b.com's own failures never write a block.
    let mut ex = start(&cfg, &mut host, &mut blocks, &get("b.com"));
    let label = ex.current_origin().unwrap().1.to_string();
    ex.on_response_headers(&mut host, &mut blocks, 503, UF);
    assert!(!blocked(&host, "b.com", &label));
    assert!(!blocks.domain_has_blocks(&host, "b.com", host.now_ms));
}

/// Issue 12 item 3: the block state a request reads does not grow with the number of
/// blocked origins: one 8-byte read without blocks in its domain, and only the drawn
/// origins' keys with some.
#[test]
fn request_cost_does_not_grow_with_blocked_origins() {
    let cfg = config(
        r#"{"domains":[{"domain":"a.com","master":{"ips":["10.0.0.1","10.0.0.2"]},
            "slave":{"ips":["10.0.0.9"]}}]}"#,
    );
    let reads_per_request = |host: &mut FakeHost| {
        let mut blocks = BlockTable::default();
        let before = host.shared.borrow().reads.get();
        for _ in 0..100 {
            start(&cfg, host, &mut blocks, &get("a.com"));
        }
        let reads = host.shared.borrow().reads.get() - before;
        reads as f64 / 100.0
    };
    let mut host = FakeHost::new(3);
    assert_eq!(reads_per_request(&mut host), 1.0);
    let mut table = BlockTable::default();
    for i in 0..5_000 {
        let domain = format!("d{i}.example");
        table.block(&mut host, &domain, "10.0.0.1:80", 60_000);
    }
    assert_eq!(reads_per_request(&mut host), 1.0, "other domains' blocks");
    // Blocks in its own domain: the domain key plus the drawn origins' keys.
    table.block(&mut host, "a.com", "10.0.0.1:80", 60_000);
    let with_one = reads_per_request(&mut host);
    assert!((2.0..=3.5).contains(&with_one), "{with_one}");
}

#[test]
fn router_plan_sets_a_host_only_where_the_header_map_holds_another() {
    // The router names the TLS server from the request's Host before attempt 1: the HTTPS
    // master's. An attempt sets its own Host only when the map holds another one.
    let config = router_config(
        r#"{"domains":[{"domain":"www.test.com","master":{"ips":["127.0.0.2:443"],"protocol":"https","host":"a.example.com"},
            "slave":{"ips":["127.0.0.3:80"],"host":"b.example.com"}}]}"#,
    );
    let mut host = FakeHost::new(6);
    let mut blocks = BlockTable::default();
    let hosts = |ex: &Exchange| -> Vec<Option<String>> {
        ex.chain_plan()
            .unwrap()
            .steps
            .into_iter()
            .map(|s| s.authority)
            .collect()
    };
    let ex = Exchange::start(&config, &mut blocks, &mut host, &get("www.test.com")).unwrap();
    assert_eq!(
        header(&ex.chain_headers(), ":authority"),
        Some("a.example.com")
    );
    assert_eq!(hosts(&ex), [None, Some("b.example.com".to_string())]);
    // Every master blocked: the slave first, then the master; the map holds the master's Host.
    blocks.block(&mut host, "www.test.com", "127.0.0.2:443", 60_000);
    let ex = Exchange::start(&config, &mut blocks, &mut host, &get("www.test.com")).unwrap();
    assert_eq!(
        header(&ex.chain_headers(), ":authority"),
        Some("a.example.com")
    );
    assert_eq!(
        hosts(&ex),
        [
            Some("b.example.com".to_string()),
            Some("a.example.com".to_string())
        ]
    );
}
