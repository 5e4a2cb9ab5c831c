//! The failover Envoy's router carries (`envoy.failover: router`).

use super::*;

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
        Some("origin_pull_chain_observed(origin_pull_ip_http)(origin_pull|http|backup.example.com|80)")
    );
    // The slave's Host differs: the upstream instance marks answers for the route that
    // observed clusters' names select.
    assert_eq!(header(&headers, "x-envoy-retriable-status-codes"), None);
    assert_eq!(
        header(&headers, "x-envoy-original-dst-host"),
        Some("127.0.0.2:80")
    );
    // The slave is a DNS cluster: no address header for attempt 2 (a client's copy is removed).
    assert!(headers
        .iter()
        .any(|(k, v)| *k == "x-origin-pull-dst-2" && v.is_none()));
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
    assert_eq!(&*plan.step(2).unwrap().2.label, "backup.example.com:80");
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
    assert_eq!(
        host.filter_state[ATTRIBUTION_KEY],
        "origin=backup.example.com:80 role=slave attempts=2 failed_over=true"
    );
    assert_eq!(host.filter_state.len(), 1);
    let debug = ex.debug_headers();
    assert_eq!(debug[0].1, "slave=backup.example.com:80");
    assert_eq!(
        host.metric("origin_pull_failovers_total;domain=www.test.com;outcome=served"),
        Some(1)
    );
}

#[test]
fn a_logged_chain_cluster_selects_its_retry_route_or_it_sends_its_statuses() {
    // Same Host on both attempts: no upstream instance. The usual rules take the route that
    // carries the whole policy; others get Envoy's per-request headers with the statuses.
    let config = router_config(
        r#"{"metrics":{"per_origin":true},"domains":[{"domain":"www.test.com","master":{"ips":["127.0.0.2:80"]},"slave":{"ips":["127.0.0.3:80"]}},
            {"domain":"b.test.com","master":{"ips":["127.0.0.2:80"]},"slave":{"ips":["127.0.0.3:80"]},
             "failover":{"on":["connect_error"],"status_codes":[404,502]}}]}"#,
    );
    let mut host = FakeHost::new(1);
    let mut blocks = BlockTable::default();
    let metrics = Rc::new(Metrics::new(config.clone(), Rc::default()));
    let mut info = get("www.test.com");
    info.metrics = Some(&metrics);
    let ex = Exchange::start(&config, &mut blocks, &mut host, &info).unwrap();
    let headers = ex.chain_headers();
    assert_eq!(
        header(&headers, "x-origin-pull-cluster"),
        Some("origin_pull_chain(origin_pull_ip_http)(origin_pull_ip_http_2)")
    );
    // The cluster's name selects the route with the whole policy.
    for absent in [
        "x-envoy-retry-on",
        "x-envoy-max-retries",
        "x-envoy-retriable-status-codes",
    ] {
        assert!(
            !headers.iter().any(|(k, _)| *k == absent),
            "{absent}: {headers:?}"
        );
    }
    assert!(!ex.chain_plan().unwrap().observed);
    // Attempt 1 is counted with the pick (no upstream instance counts it).
    assert_eq!(
        host.metric("origin_pull_origin_requests_total;domain=www.test.com;origin=127.0.0.2:80")
            .unwrap_or(0),
        1
    );

    let ex = Exchange::start(&config, &mut blocks, &mut host, &get("b.test.com")).unwrap();
    let headers = ex.chain_headers();
    assert_eq!(
        header(&headers, "x-origin-pull-cluster"),
        Some("origin_pull_chain_rules(origin_pull_ip_http)(origin_pull_ip_http_2)")
    );
    assert_eq!(
        header(&headers, "x-envoy-retriable-status-codes"),
        Some("404,502")
    );
    assert_eq!(header(&headers, "x-envoy-max-retries"), Some("1"));
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
    assert!(host.filter_state[ATTRIBUTION_KEY].ends_with(" attempts=2 failed_over=true"));
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
    // The first master's answer, relayed.
    assert_eq!(
        host.filter_state[ATTRIBUTION_KEY],
        "origin=127.0.0.2:80 role=master attempts=1 failed_over=false"
    );
    let mut ex = Exchange::start(&config, &mut blocks, &mut host, &get("www.test.com")).unwrap();
    assert_eq!(
        ex.on_chain_response(&mut host, 404, 0, Some(2)),
        ResponseStep::Continue
    );
    assert!(host.replies.is_empty());
    // The slave's answer, relayed by the router.
    assert_eq!(
        host.filter_state[ATTRIBUTION_KEY],
        "origin=127.0.0.3:80 role=slave attempts=2 failed_over=true"
    );
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
        Some("origin_pull_chain_rules(origin_pull_ip_http)(origin_pull_ip_http_2)")
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
