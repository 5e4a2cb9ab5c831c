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
//! Drives [`Exchange`] exactly as the glue (src/filter/) does for each request: the request
//! headers arrive as one copied map (one `get_map` hostcall), the exchange picks the origin,
//! the response is judged, a failover is dispatched and its answer relayed. The host (the tests'
//! `FakeHost`, recording nothing) mimics what each hostcall costs the VM: every call is
//! counted, and every value Envoy hands to the VM is a fresh allocation and copy, as in Envoy.
//! Counters are kept in the VM as the glue keeps them and flushed once per simulated second
//! (one hostcall per counter that changed). It prints hostcalls and copied bytes per request;
//! instructions come from callgrind (two request counts, the difference).

use std::rc::Rc;

use origin_pull::config::parse;
use origin_pull::engine::attempt::AttemptObserver;
use origin_pull::engine::blocks::BlockTable;
use origin_pull::engine::chain::{plan_id_text, read_plan_id, ChainProgress, Plan};
use origin_pull::engine::classify::flags;
use origin_pull::engine::exchange::{ClientRequest, Exchange, RequestInfo, ResponseStep};
use origin_pull::engine::metrics::{Metrics, PendingCounters, FLUSH_INTERVAL_MS};
use origin_pull::headers::HeaderMap;
use origin_pull::host::{Host, LogLevel};
use origin_pull::s3::bucket::BucketStats;
use origin_pull::testing::FakeHost;

/// The client's request as the glue hands it to the engine.
fn client<'a>(headers: &'a HeaderMap, metrics: &'a Rc<Metrics>) -> ClientRequest<'a> {
    ClientRequest {
        headers,
        has_body: false,
        worker: "w1",
        stats: BucketStats::default(),
        metrics: Some(metrics),
    }
}

/// The request headers as the glue gets them: Envoy copies the encoded map into one buffer
/// the VM allocates.
fn copy_into_vm(headers: &HeaderMap) -> HeaderMap {
    HeaderMap::from_wire(headers.as_wire().to_vec())
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

/// One request through the router failover: the glue's hostcalls are counted here
/// (`count_hostcall` where the glue calls Envoy), the logic's by `FakeHost`. `first_byte_read`
/// is the worker's cached per-try timeout reading (src/filter/mod.rs `FIRST_BYTE`): when it was
/// last read.
fn router_request(
    host: &mut FakeHost,
    blocks: &mut BlockTable,
    config: &Rc<origin_pull::config::PluginConfig>,
    metrics: &Rc<Metrics>,
    headers: &HeaderMap,
    scenario: &str,
    first_byte_read: &mut Option<u64>,
) {
    // Listener filter, request phase: one get_map; the engine sets the routing headers (a
    // hostcall each, counted by the host).
    host.count_hostcall();
    host.count_copied(headers.as_wire().len());
    let copy = copy_into_vm(headers);
    let Some(mut exchange) =
        Exchange::on_request_headers(Some(config), blocks, host, client(&copy, metrics))
    else {
        return;
    };
    assert!(
        exchange.routes_chain(),
        "the bench domain fails over through the router"
    );
    // Kept in the worker's in-flight map (no hostcall).
    let Some(plan) = exchange.chain_plan().map(Rc::new) else {
        return;
    };
    // What the upstream instance reads from the header the engine set.
    let plan_id = plan_id_text(plan.request);
    // The attempts, each seen by the upstream instance.
    let outcomes: &[Option<u32>] = match scenario {
        "router-404" => &[Some(404), Some(200)],
        "router-connect" => &[None, Some(200)],
        _ => &[Some(200)],
    };
    if !plan.observed {
        logged_attempts(host, blocks, &plan, outcomes, &plan_id);
        return finish_logged(host, blocks, &mut exchange, &plan);
    }
    let mut answered = None;
    for (i, outcome) in outcomes.iter().enumerate() {
        let k = i + 1;
        host.count_hostcall(); // the plan's id
        host.count_copied(plan_id.len());
        let Some(id) = read_plan_id(&plan_id) else {
            continue;
        };
        std::hint::black_box(id);
        let started = if k > 1 {
            host.now_ms() // the clock (a counted hostcall)
        } else {
            plan.sent_ms // the listener filter's reading, from the worker's in-flight entry
        };
        let fresh = first_byte_read.is_some_and(|at| started >= at && started - at < 1000);
        if k > 1 || !fresh {
            host.count_hostcall(); // x-envoy-expected-rq-timeout-ms
            host.count_copied(4);
            if k == 1 {
                *first_byte_read = Some(started);
            }
        }
        let Some(mut observer) = AttemptObserver::start(&plan, host, k, Some(5000), started) else {
            continue;
        };
        let start = observer.start_headers();
        for _ in start.authority.iter().chain(start.own_address.iter()) {
            host.count_hostcall();
        }
        if start.last {
            host.count_hostcall(); // the plan removed
            for _ in 2..=k {
                host.count_hostcall(); // the other attempts' addresses removed
            }
        }
        match outcome {
            Some(status) => {
                host.count_hostcall(); // :status
                host.count_copied(3);
                if observer.on_response(host, blocks, *status) {
                    host.count_hostcall(); // :status set to FAILOVER_STATUS (the router retries it)
                }
                answered = Some(k);
            }
            None => {
                // Refused: on_done reads the transport failure reason and the local address.
                host.count_hostcall();
                host.count_copied(40);
                host.count_hostcall();
                observer.on_done(host, blocks, true, false);
            }
        }
    }
    // Listener filter, response phase: :status; the answered attempt from the in-flight entry;
    // the engine removes a failed-over answer's hop-by-hop headers (hostcalls the host counts).
    host.count_hostcall();
    host.count_copied(3);
    exchange.on_routed_response(host, blocks, 200, 0, answered.map(|k| (k, 200)));
}

thread_local! {
    /// The worker's in-flight entry of the request being followed (src/filter/mod.rs `CHAINS`).
    static PROGRESS: std::cell::Cell<ChainProgress> = std::cell::Cell::new(ChainProgress::default());
}

/// A logged chain's attempts: no module runs per attempt; the router's upstream log calls the
/// module for each failed one (the plan's id, `response.code`, `response.flags`).
fn logged_attempts(
    host: &mut FakeHost,
    blocks: &mut BlockTable,
    plan: &Rc<Plan>,
    outcomes: &[Option<u32>],
    plan_id: &str,
) {
    let mut progress = ChainProgress::new(plan);
    for (i, outcome) in outcomes.iter().enumerate() {
        let k = i + 1;
        if outcome.is_some_and(|status| status < 400) {
            break; // relayed: the listener's filter judges it
        }
        host.count_hostcall();
        host.count_copied(plan_id.len());
        host.count_hostcall();
        host.count_copied(8);
        host.count_hostcall();
        host.count_copied(8);
        progress.logged += 1;
        let (status, flags) = match outcome {
            Some(status) => (*status, 0),
            None => (0, flags::UPSTREAM_CONNECTION_FAILURE),
        };
        AttemptObserver::observe_logged(plan, &mut progress, host, blocks, k, status, flags);
    }
    PROGRESS.with(|p| p.set(progress));
}

/// The listener's response phase of a logged chain: `:status`, the relayed attempt from the
/// in-flight entry, judged there (below 400).
fn finish_logged(
    host: &mut FakeHost,
    blocks: &mut BlockTable,
    exchange: &mut Exchange,
    plan: &Rc<Plan>,
) {
    host.count_hostcall();
    host.count_copied(3);
    let mut progress = PROGRESS.with(|p| p.get());
    let answered = progress.relayed(plan, 200, 0, false);
    exchange.on_routed_response(host, blocks, 200, 0, answered);
    if let Some((k, status)) = answered {
        AttemptObserver::observe_logged(plan, &mut progress, host, blocks, k, status, 0);
    }
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
    // Envoy's cost model: nothing the logic hands over is kept in the VM, debug lines are
    // not formatted (Envoy's default level is info), every hostcall and copy is counted.
    let mut host = FakeHost::new(0x1234_5678);
    host.set_recording(false);
    // The glue keeps counters in the VM; the root context's tick flushes them (below).
    host.pending = Some(PendingCounters::default());
    host.set_log_level(LogLevel::Info);
    host.respond(
        200,
        &[
            ("content-type", "application/octet-stream"),
            ("content-length", "1024"),
        ],
        &[b'x'; 1024],
    );
    // Envoy's shared data is never empty while the filter runs (the probe lease is taken within
    // a second of start): keep the fake's map non-empty too, or an empty map's lookups would
    // skip hashing the key and make the first block look like a cost of the filter.
    let _ = host.shared_set("origin_pull.probe_lease", &[0; 16], None);
    let mut blocks = BlockTable::default();
    // Stats as the glue makes them in on_configure (each series defined on first use).
    let metrics = Rc::new(Metrics::new(config.clone(), Rc::default()));
    // What wrk sends, plus what Envoy's connection manager adds before the filter runs.
    let client_headers = HeaderMap::from_pairs(&[
        (":authority", "www.test.com"),
        (":path", "/1k"),
        (":method", "GET"),
        (":scheme", "http"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "9f1c5a52-8a53-4d1e-9a3e-2f4b0c0d1e2f"),
    ]);
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
    // What the outage counted reaches the stats before the measured requests (a tick).
    host.flush_counters();
    let (mut calls0, mut copied0, mut allocs0) = (0, 0, 0);
    let mut first_byte_read = None;
    for i in 0..requests {
        // 5 requests per millisecond (5k rps on this worker).
        if i % 5 == 0 {
            host.now_ms += 1;
            // The root context's tick: one hostcall per counter that changed since the last.
            if host.now_ms % FLUSH_INTERVAL_MS == 0 {
                host.flush_counters();
            }
        }
        if i == 0 {
            calls0 = host.hostcalls.get();
            copied0 = host.copied.get();
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
        // The glue's request phase: one get_map (here); the engine's two set_header are counted
        // by the host.
        host.count_hostcall();
        host.count_copied(client_headers.as_wire().len());
        let copy = copy_into_vm(&client_headers);
        let client = client(&copy, &metrics);
        let Some(mut exchange) =
            Exchange::on_request_headers(Some(&config), &mut blocks, &mut host, client)
        else {
            continue;
        };
        // The glue's response phase: :status (a copy), flags only on failures.
        host.count_hostcall();
        host.count_copied(3);
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
            host.count_hostcall();
            host.count_copied(8);
        }
        if exchange.on_response_headers(&mut host, &mut blocks, status, response_flags)
            == ResponseStep::Pause
        {
            let token = host.last_token().unwrap_or_default();
            exchange.on_callout_response(&mut host, &mut blocks, token, 4, 1024);
        }
    }
    let calls = host.hostcalls.get() - calls0;
    let copied = host.copied.get() - copied0;
    let allocations = ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed) - allocs0;
    let n = requests.max(1) as f64;
    println!(
        "scenario={scenario} ips={ips} other_domains={blocked} blocked={block_them} requests={requests} hostcalls/request={:.2} copied_bytes/request={:.1} allocations/request={:.2}",
        calls as f64 / n,
        copied as f64 / n,
        allocations as f64 / n
    );
}
