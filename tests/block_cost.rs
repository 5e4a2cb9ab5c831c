//! Issue 12 item 3: what one request reads from the shared block state does not grow with the
//! number of blocked origins. 5,000 origins of other domains are blocked the way Envoy's
//! traffic blocks them (a connect failure each, through the request flow), then requests for
//! a domain with three origins are counted: shared-data reads and bytes copied into the VM.
//! `make profile` measures the instructions (examples/hot_path.rs, `blocked` argument).

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use origin_pull::bucket::BucketStats;
use origin_pull::config::parse;
use origin_pull::exchange::{Exchange, RequestInfo};
use origin_pull::failover::flags;
use origin_pull::health::BlockTable;
use origin_pull::host::{Host, LogLevel, MetricKind, SharedSetError};

/// Shared data as Envoy keeps it (every read copies the value), with counters.
#[derive(Default)]
struct CountingHost {
    now_ms: u64,
    rng: u64,
    shared: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
    reads: Cell<u64>,
    copied: Cell<u64>,
}

impl Host for CountingHost {
    fn now_ms(&self) -> u64 {
        self.now_ms
    }
    fn random_u64(&mut self) -> u64 {
        let mut x = self.rng | 1;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.reads.set(self.reads.get() + 1);
        match self.shared.get(key) {
            Some((value, cas)) => {
                self.copied.set(self.copied.get() + value.len() as u64);
                (Some(value.clone()), Some(*cas))
            }
            None => (None, None),
        }
    }
    fn shared_set(
        &mut self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), SharedSetError> {
        if let (Some(cas), Some((_, current))) = (cas, self.shared.get(key)) {
            if cas != *current {
                return Err(SharedSetError::CasMismatch);
            }
        }
        self.next_cas += 1;
        self.shared
            .insert(key.to_string(), (value.to_vec(), self.next_cas));
        Ok(())
    }
    fn dispatch(
        &mut self,
        _cluster: &str,
        _headers: &[(&str, &str)],
        _body: Option<&[u8]>,
        _timeout: Duration,
    ) -> Result<u32, String> {
        Err("no callouts in this test".into())
    }
    fn callout_response_headers(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    fn callout_response_body(&self, _size: usize) -> Option<Vec<u8>> {
        None
    }
    fn send_local_reply(&mut self, _: u32, _: &str, _: &[(&str, &str)], _: &[u8]) {}
    fn set_filter_state(&mut self, _key: &str, _value: &str) {}
    fn log(&self, _level: LogLevel, _message: &str) {}
    fn log_enabled(&self, _level: LogLevel) -> bool {
        false
    }
    fn define_metric(&mut self, _kind: MetricKind, _name: &str) -> Option<u32> {
        None
    }
    fn increment_metric(&mut self, _id: u32, _delta: i64) {}
    fn record_metric(&mut self, _id: u32, _value: u64) {}
}

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
    host: &mut CountingHost,
    blocks: &mut BlockTable,
) -> (f64, f64) {
    let (reads0, copied0) = (host.reads.get(), host.copied.get());
    let n = 200;
    for _ in 0..n {
        let exchange = Exchange::start(config, blocks, host, &request("www.test.com"));
        assert!(exchange.is_some(), "www.test.com is configured");
        if let Some(mut exchange) = exchange {
            exchange.on_response_headers(host, blocks, 200, 0);
        }
    }
    (
        (host.reads.get() - reads0) as f64 / f64::from(n),
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
    let mut host = CountingHost {
        now_ms: 1_700_000_000_000,
        rng: 7,
        ..CountingHost::default()
    };
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
    let stored: usize = host.shared.values().map(|(v, _)| v.len()).sum();
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
    let mut host = CountingHost {
        now_ms: 1_700_000_000_000,
        rng: 7,
        ..CountingHost::default()
    };
    let mut blocks = BlockTable::default();
    let exchange = Exchange::start(&config, &mut blocks, &mut host, &request("www.test.com"));
    assert!(
        exchange.is_some_and(|e| e.routes_chain()),
        "failover planned"
    );
    assert_eq!(host.reads.get(), 1, "shared-data reads for one request");
}
