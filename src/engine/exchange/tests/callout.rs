//! The request flow with failover by callout: answers relayed, retried, refused.

use super::*;

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
    assert_eq!(&*route.cluster, "origin_pull_ip_http");
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
    assert_eq!(
        host.filter_state[ATTRIBUTION_KEY],
        "origin=2.2.2.2:80 role=slave attempts=2 failed_over=true"
    );
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
    assert_eq!(
        host.filter_state[ATTRIBUTION_KEY],
        "origin=1.1.1.1:80 role=master attempts=1 failed_over=false"
    );
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
    assert_eq!(&*route.cluster, "origin_pull_ip_https");
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
