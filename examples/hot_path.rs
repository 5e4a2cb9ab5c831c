//! Per-request cost of the filter's logic, natively, for `make profile` (callgrind counts its
//! instructions; wall time on a shared machine is too noisy to compare small changes).
//!
//!     hot_path <happy|miss10|dead> <master IPs> <requests> [other domains] [unblocked]
//!     hot_path <router-happy|router-404|router-connect> <master IPs> <requests>
//!
//! The `router-*` cases follow a request of a domain with a slave through the router failover
//! (`envoy.failover: router`, the default) as the glue does it in Envoy: the listener's filter
//! AND the upstream instance, once per attempt (happy: attempt 1 answers 200; 404: the master
//! answers 404, the slave 200; connect: the master refuses the connection — `block_seconds: 0`
//! so that every request fails over — the slave answers 200).
//!
//! `other domains`: that many more domains, each with one origin that a connect failure has
//! blocked before the measured requests (a region outage); default 0. With `unblocked` they
//! are configured but nothing is blocked (what the configuration's size alone costs).
//! Drives [`Exchange`] exactly as the glue (src/filter.rs) does for each request: the request
//! headers arrive as one copied map (one `get_map` hostcall), the exchange picks the origin,
//! the response is judged, a failover is dispatched and its answer relayed. The host mimics
//! what each hostcall costs the VM: every call is counted, and every value Envoy hands to the
//! VM is a fresh allocation and copy, as in Envoy. It prints hostcalls and copied bytes per
//! request; instructions come from callgrind (two request counts, the difference).

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use origin_pull::attempt::AttemptObserver;
use origin_pull::bucket::BucketStats;
use origin_pull::chain::{read_plan_id, PLAN_HEADER};
use origin_pull::config::parse;
use origin_pull::exchange::{Exchange, RequestInfo, ResponseStep};
use origin_pull::failover::flags;
use origin_pull::health::BlockTable;
use origin_pull::host::{Host, LogLevel, MetricKind, SharedSetError};
use origin_pull::metrics::Metrics;

#[derive(Default)]
struct CostHost {
    now_ms: u64,
    rng: u64,
    shared: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
    next_token: u32,
    callout_headers: Vec<(String, String)>,
}

impl CostHost {
    fn call(&self) {
        // Interior counter: Host's read methods take &self.
        HOSTCALLS.with(|c| c.set(c.get() + 1));
    }
    fn copy(&self, bytes: usize) {
        COPIED.with(|c| c.set(c.get() + bytes as u64));
    }
}

/// Counts heap allocations, to show what the logic allocates per request.
struct CountingAlloc;

static ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[allow(unsafe_code)] // a GlobalAlloc is unsafe by definition; it only forwards to System.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

thread_local! {
    static HOSTCALLS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    static COPIED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

impl Host for CostHost {
    fn now_ms(&self) -> u64 {
        self.call();
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
        self.call();
        match self.shared.get(key) {
            Some((v, cas)) => {
                self.copy(v.len());
                (Some(v.clone()), Some(*cas))
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
        self.call();
        // As Envoy: a token is only checked against an existing key.
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
        headers: &[(&str, &str)],
        _body: Option<&[u8]>,
        _timeout: Duration,
    ) -> Result<u32, String> {
        self.call();
        // Envoy serializes the headers: one pass over them.
        let bytes: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        std::hint::black_box(bytes);
        self.next_token += 1;
        Ok(self.next_token)
    }
    fn callout_response_headers(&self) -> Vec<(String, String)> {
        self.call();
        let copy = self.callout_headers.clone();
        self.copy(copy.iter().map(|(k, v)| k.len() + v.len()).sum());
        copy
    }
    fn callout_response_body(&self, size: usize) -> Option<Vec<u8>> {
        self.call();
        self.copy(size);
        Some(vec![b'x'; size])
    }
    fn send_local_reply(
        &mut self,
        _status: u32,
        _details: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) {
        self.call();
        std::hint::black_box((headers.len(), body.len()));
    }
    fn set_filter_state(&mut self, key: &str, value: &str) {
        self.call();
        std::hint::black_box((key.len(), value.len()));
    }
    fn log(&self, _level: LogLevel, message: &str) {
        self.call();
        std::hint::black_box(message.len());
    }
    fn log_enabled(&self, level: LogLevel) -> bool {
        self.call();
        level != LogLevel::Debug // Envoy's default level is info
    }
    fn define_metric(&mut self, _kind: MetricKind, _name: &str) -> Option<u32> {
        self.call();
        Some(1)
    }
    fn increment_metric(&mut self, _id: u32, _delta: i64) {
        self.call();
    }
    fn record_metric(&mut self, _id: u32, _value: u64) {
        self.call();
    }
}

/// One request through the router failover: the glue's hostcalls are counted here (`host.call()`
/// where the glue calls Envoy), the logic's by `CostHost`. `first_byte_read` is the worker's
/// cached per-try timeout reading (src/filter.rs `FIRST_BYTE`): when it was last read.
fn router_request(
    host: &mut CostHost,
    blocks: &mut BlockTable,
    config: &Rc<origin_pull::config::PluginConfig>,
    metrics: &Rc<Metrics>,
    headers: &[(String, String)],
    scenario: &str,
    first_byte_read: &mut Option<u64>,
) {
    // Listener filter, request phase: one get_map.
    host.call();
    host.copy(headers.iter().map(|(k, v)| k.len() + v.len()).sum());
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    };
    let request = RequestInfo {
        authority: find(":authority"),
        scheme: find(":scheme"),
        method: find(":method"),
        path: "",
        has_body: false,
        worker: "w1",
        stats: BucketStats::default(),
        metrics: Some(metrics),
    };
    let Some(mut exchange) = Exchange::start(config, blocks, host, &request) else {
        return;
    };
    exchange.keep_request_headers(headers.to_vec());
    assert!(
        exchange.routes_chain(),
        "the bench domain fails over through the router"
    );
    let chain = exchange.chain_headers();
    for _ in &chain {
        host.call(); // set_header / remove
    }
    let plan_id = chain
        .iter()
        .find(|(k, _)| k == PLAN_HEADER)
        .and_then(|(_, v)| v.clone())
        .unwrap_or_default();
    // Kept in the worker's in-flight map (no hostcall).
    let Some(plan) = exchange.chain_plan().map(Rc::new) else {
        return;
    };
    // The attempts, each seen by the upstream instance.
    let outcomes: &[Option<u32>] = match scenario {
        "router-404" => &[Some(404), Some(200)],
        "router-connect" => &[None, Some(200)],
        _ => &[Some(200)],
    };
    let mut answered = None;
    for (i, outcome) in outcomes.iter().enumerate() {
        let k = i + 1;
        host.call(); // the plan's id
        host.copy(plan_id.len());
        let Some(id) = read_plan_id(&plan_id) else {
            continue;
        };
        std::hint::black_box(id);
        let started = if k > 1 {
            host.now_ms() // the clock (counted by CostHost)
        } else {
            plan.sent_ms // the listener filter's reading, from the worker's in-flight entry
        };
        let fresh = first_byte_read.is_some_and(|at| started >= at && started - at < 1000);
        if k > 1 || !fresh {
            host.call(); // x-envoy-expected-rq-timeout-ms
            host.copy(4);
            if k == 1 {
                *first_byte_read = Some(started);
            }
        }
        let Some(mut observer) = AttemptObserver::start(&plan, host, k, Some(5000), started) else {
            continue;
        };
        let start = observer.start_headers();
        for _ in start.authority.iter().chain(start.own_address.iter()) {
            host.call();
        }
        if start.last {
            host.call(); // the plan removed
            for _ in 2..=k {
                host.call(); // the other attempts' addresses removed
            }
        }
        match outcome {
            Some(status) => {
                host.call(); // :status
                host.copy(3);
                if observer.on_response(host, blocks, *status) {
                    host.call(); // :status set to FAILOVER_STATUS (the router retries it)
                }
                answered = Some(k);
            }
            None => {
                // Refused: on_done reads the transport failure reason and the local address.
                host.call();
                host.copy(40);
                host.call();
                observer.on_done(host, blocks, true, false);
            }
        }
    }
    // Listener filter, response phase: :status; the answered attempt from the in-flight entry.
    host.call();
    host.copy(3);
    if answered.is_some_and(|a| a > 1) {
        for _ in 0..6 {
            host.call(); // hop-by-hop headers removed from a failed-over answer
        }
    }
    exchange.on_chain_response(host, 200, 0, answered);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let scenario = args.get(1).map_or("happy", String::as_str).to_string();
    let router = scenario.starts_with("router-");
    let ips: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let requests: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let blocked: usize = if router {
        0
    } else {
        args.get(4).and_then(|a| a.parse().ok()).unwrap_or(0)
    };
    let block_them = args.get(5).map(String::as_str) != Some("unblocked");

    let weighted = ips > 1;
    let master: Vec<String> = (0..ips)
        .map(|i| {
            let ip = format!("127.2.{}.{}", i / 250, i % 250 + 1);
            if weighted {
                format!("\"{ip}:80:{}\"", 1 + i % 3)
            } else {
                format!("\"{ip}:80\"")
            }
        })
        .collect();
    let others: String = (0..blocked)
        .map(|i| {
            format!(
                r#",{{"domain":"d{i}.example","master":{{"ips":["127.3.{}.{}"]}}}}"#,
                i / 250,
                i % 250 + 1
            )
        })
        .collect();
    // The happy/miss10/dead cases model the callout glue (`envoy.failover: callout`); the
    // router cases the default.
    let mechanism = if router { "router" } else { "callout" };
    // A refused master is never blocked here, so that every request fails over.
    let detection = if scenario == "router-connect" {
        r#","detection":{"block_seconds":0}"#
    } else {
        ""
    };
    let text = format!(
        r#"{{"envoy":{{"failover":"{mechanism}"}},"domains":[{{"domain":"www.test.com","master":{{"ips":[{}]}},"slave":{{"ips":["127.255.0.1:80"]}}{detection}}}{others}]}}"#,
        master.join(",")
    );
    let Ok(config) = parse(text.as_bytes()) else {
        eprintln!("invalid configuration");
        std::process::exit(2);
    };
    let config = Rc::new(config);
    let mut host = CostHost {
        now_ms: 1_700_000_000_000,
        rng: 0x1234_5678,
        ..CostHost::default()
    };
    host.callout_headers = vec![
        (":status".into(), "200".into()),
        ("content-type".into(), "application/octet-stream".into()),
        ("content-length".into(), "1024".into()),
    ];
    // Envoy's shared data is never empty while the filter runs (the probe lease is taken within
    // a second of start): keep the fake's map non-empty too, or an empty map's lookups would
    // skip hashing the key and make the first block look like a cost of the filter.
    host.shared
        .insert("origin_pull.probe_lease".into(), (vec![0; 16], 1));
    let mut blocks = BlockTable::default();
    // Stats as the glue makes them in on_configure (each series defined on first use).
    let metrics = Rc::new(Metrics::new(config.clone(), Rc::default()));
    // What wrk sends, plus what Envoy's connection manager adds before the filter runs.
    let client_headers: Vec<(String, String)> = [
        (":authority", "www.test.com"),
        (":path", "/1k"),
        (":method", "GET"),
        (":scheme", "http"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "9f1c5a52-8a53-4d1e-9a3e-2f4b0c0d1e2f"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    // The outage: each other domain's origin refuses a connection once and is blocked.
    for i in (0..blocked).filter(|_| block_them) {
        let authority = format!("d{i}.example");
        let request = RequestInfo {
            authority: &authority,
            scheme: "http",
            method: "GET",
            path: "",
            has_body: false,
            worker: "w1",
            stats: BucketStats::default(),
            metrics: Some(&metrics),
        };
        if let Some(mut exchange) = Exchange::start(&config, &mut blocks, &mut host, &request) {
            exchange.on_response_headers(
                &mut host,
                &mut blocks,
                503,
                flags::UPSTREAM_CONNECTION_FAILURE,
            );
        }
    }
    let (mut calls0, mut copied0, mut allocs0) = (0, 0, 0);
    let mut first_byte_read = None;
    for i in 0..requests {
        // 5 requests per millisecond (5k rps on this worker).
        if i % 5 == 0 {
            host.now_ms += 1;
        }
        if i == 0 {
            calls0 = HOSTCALLS.with(|c| c.get());
            copied0 = COPIED.with(|c| c.get());
            allocs0 = ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed);
        }
        if router {
            router_request(
                &mut host,
                &mut blocks,
                &config,
                &metrics,
                &client_headers,
                &scenario,
                &mut first_byte_read,
            );
            continue;
        }
        // The glue's request phase: one get_map, two set_header.
        host.call();
        let headers = client_headers.clone();
        host.copy(headers.iter().map(|(k, v)| k.len() + v.len()).sum());
        let find = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map_or("", |(_, v)| v.as_str())
        };
        let request = RequestInfo {
            authority: find(":authority"),
            scheme: find(":scheme"),
            method: find(":method"),
            path: "",
            has_body: false,
            worker: "w1",
            stats: BucketStats::default(),
            metrics: Some(&metrics),
        };
        let Some(mut exchange) = Exchange::start(&config, &mut blocks, &mut host, &request) else {
            continue;
        };
        exchange.keep_request_headers(headers);
        if let Some((route, _)) = exchange.route() {
            std::hint::black_box(route);
            host.call();
            host.call();
        }
        // The glue's response phase: :status (a copy), flags only on failures.
        host.call();
        host.copy(3);
        let (status, response_flags) = match scenario.as_str() {
            "miss10" if i % 10 == 0 => (404, 0),
            "dead"
                if exchange
                    .current_origin()
                    .is_some_and(|(_, l)| l == "127.2.0.1:80") =>
            {
                (503, flags::UPSTREAM_CONNECTION_FAILURE)
            }
            _ => (200, 0),
        };
        if status >= 400 {
            host.call();
            host.copy(8);
        }
        if exchange.on_response_headers(&mut host, &mut blocks, status, response_flags)
            == ResponseStep::Pause
        {
            let token = host.next_token;
            exchange.on_callout_response(&mut host, &mut blocks, token, 4, 1024);
        }
    }
    let calls = HOSTCALLS.with(|c| c.get()) - calls0;
    let copied = COPIED.with(|c| c.get()) - copied0;
    let allocations = ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed) - allocs0;
    let n = requests.max(1) as f64;
    println!(
        "scenario={scenario} ips={ips} other_domains={blocked} blocked={block_them} requests={requests} hostcalls/request={:.2} copied_bytes/request={:.1} allocations/request={:.2}",
        calls as f64 / n,
        copied as f64 / n,
        allocations as f64 / n
    );
}
