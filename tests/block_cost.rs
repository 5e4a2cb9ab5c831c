//! Issue 12 item 3: what one request reads from the shared block state does not grow with the
//! number of blocked origins. 5,000 origins of other domains are blocked the way Envoy's
//! traffic blocks them (a connect failure each, through the request flow), then requests for
//! a domain with three origins are counted: shared-data reads and bytes copied into the VM.
//! `make profile` measures the instructions (bench/hot_path.rs, `blocked` argument).

use std::rc::Rc;

use origin_pull::config::parse;
use origin_pull::engine::blocks::BlockTable;
use origin_pull::engine::classify::flags;
use origin_pull::engine::exchange::{Exchange, RequestInfo};
use origin_pull::s3::bucket::BucketStats;
use origin_pull::testing::FakeHost;

fn request(authority: &str) -> RequestInfo<'_> {
    RequestInfo {
        authority,
        scheme: "http",
        method: "GET",
        path: "",
        has_body: false,
        worker: "w",
        stats: BucketStats::default(),
        metrics: None,
    }
}

/// (shared-data reads, bytes copied) per request for www.test.com.
fn cost(
    config: &Rc<origin_pull::config::PluginConfig>,
    host: &mut FakeHost,
    blocks: &mut BlockTable,
) -> (f64, f64) {
    let reads = |host: &FakeHost| host.shared.borrow().reads.get();
    let (reads0, copied0) = (reads(host), host.copied.get());
    let n = 200;
    for _ in 0..n {
        let exchange = Exchange::start(config, blocks, host, &request("www.test.com"));
        assert!(exchange.is_some(), "www.test.com is configured");
        if let Some(mut exchange) = exchange {
            exchange.on_response_headers(host, blocks, 200, 0);
        }
    }
    (
        (reads(host) - reads0) as f64 / f64::from(n),
        (host.copied.get() - copied0) as f64 / f64::from(n),
    )
}

#[test]
fn request_cost_does_not_grow_with_blocked_origins() {
    const BLOCKED: usize = 5_000;
    let mut domains = vec![r#"{"domain":"www.test.com","master":{"ips":["127.0.0.2","127.0.0.3"]},"slave":{"ips":["127.0.0.4"]}}"#.to_string()];
    for i in 0..BLOCKED {
        domains.push(format!(
            r#"{{"domain":"d{i}.example","master":{{"ips":["127.1.{}.{}"]}}}}"#,
            i / 250,
            i % 250 + 1
        ));
    }
    let text = format!(r#"{{"domains":[{}]}}"#, domains.join(","));
    let config = Rc::new(parse(text.as_bytes()).expect("valid configuration"));
    let mut host = FakeHost::new(7);
    let mut blocks = BlockTable::default();
    let (reads_before, copied_before) = cost(&config, &mut host, &mut blocks);

    // Every other domain's only origin refuses a connection once: blocked.
    for i in 0..BLOCKED {
        let authority = format!("d{i}.example");
        if let Some(mut exchange) =
            Exchange::start(&config, &mut blocks, &mut host, &request(&authority))
        {
            exchange.on_response_headers(
                &mut host,
                &mut blocks,
                503,
                flags::UPSTREAM_CONNECTION_FAILURE,
            );
        }
    }
    // At least a blocked-until time per blocked origin was stored (whatever the layout).
    let stored = host.shared.borrow().stored_bytes();
    assert!(stored >= BLOCKED * 8, "only {stored} bytes of block state");

    let (reads_after, copied_after) = cost(&config, &mut host, &mut blocks);
    println!(
        "per request: {reads_before} reads, {copied_before} bytes copied with 0 blocked; \
         {reads_after} reads, {copied_after} bytes copied with {BLOCKED} blocked"
    );
    assert!(
        reads_after <= reads_before,
        "{reads_after} > {reads_before}"
    );
    assert!(
        copied_after <= copied_before + 8.0,
        "{copied_after} bytes copied per request with {BLOCKED} origins blocked elsewhere, \
         {copied_before} with none"
    );
}

/// Issue 14: with nothing blocked, a request of a domain with a slave (its failover planned for
/// Envoy's router, the default) reads ONE shared key, its domain's — not also the planned
/// slave's (the domain key is raised before any origin's, so it alone says "nothing blocked").
#[test]
fn a_planned_failover_with_nothing_blocked_reads_only_the_domain_key() {
    let text = r#"{"domains":[{"domain":"www.test.com","master":{"ips":["127.0.0.2","127.0.0.3"]},"slave":{"ips":["127.0.0.4"]}}]}"#;
    let config = Rc::new(parse(text.as_bytes()).expect("valid configuration"));
    let mut host = FakeHost::new(7);
    let mut blocks = BlockTable::default();
    let exchange = Exchange::start(&config, &mut blocks, &mut host, &request("www.test.com"));
    assert!(
        exchange.is_some_and(|e| e.routes_chain()),
        "failover planned"
    );
    assert_eq!(
        host.shared.borrow().reads.get(),
        1,
        "shared-data reads for one request"
    );
}
