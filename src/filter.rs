//! The thin proxy-wasm glue: turns Envoy's callbacks into [`Exchange`] events and implements
//! [`Host`] over hostcalls. No origin-pull decision is made here.
#![allow(unsafe_code)] // `proxy_wasm::main!` expands to an exported `#[no_mangle]` entry point.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{
    Action, BufferType, ContextType, LogLevel as WasmLogLevel, MapType, MetricType, Status,
};

use crate::config::{self, PluginConfig};
use crate::engine::attempt::AttemptObserver;
use crate::engine::blocks::{BlockTable, SlotHasher};
use crate::engine::chain::{
    read_plan_id, Plan, EXPECTED_TIMEOUT_HEADER, FAILOVER_STATUS, PLAN_HEADER, UPSTREAM_ROOT_ID,
};
use crate::engine::copyback::{CopyBack, CopyJob};
use crate::engine::exchange::{ClientRequest, Exchange, ResponseStep};
use crate::engine::metrics::{Metrics, PendingCounters, Registry};
use crate::engine::prober::Prober;
use crate::host::{Host, LogLevel, MetricKind, SharedSetError};
use crate::s3::bucket::{BucketEvent, BucketStats};

proxy_wasm::main! {{
    install_logger();
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(OriginPullRoot::new()) });
}}

thread_local! {
    /// xorshift state of this VM, seeded once from the host's entropy.
    static RNG: Cell<u64> = Cell::new(seed());
    /// Stat ids this VM defined, by name: outlives root contexts (a reload reuses the VM), so a
    /// name is defined once per VM whatever the reloads (Envoy gives a new id per definition).
    static REGISTRY: Rc<RefCell<Registry>> = Rc::new(RefCell::new(Registry::default()));
    /// Counter increments of this VM (its streams, upstream instance and root contexts) not yet
    /// in Envoy's stats: the downstream root context flushes them on every tick.
    static PENDING: RefCell<PendingCounters> = RefCell::new(PendingCounters::default());
    /// Routed failovers in flight on this worker, by the request id `PLAN_HEADER` carries.
    /// The downstream filter registers each with its compiled plan (the configuration it uses,
    /// the attempts' origins by index); the upstream instance (same `vm_id` and module: the
    /// same VM, same thread) finds it there, counts its attempts and notes which one was
    /// answered. So no attempt parses a plan or looks a domain up, reads Envoy's attempt count
    /// or marks the answer in a header. Without an entry (an upstream instance in another VM:
    /// not what render writes) the attempt is not observed.
    static CHAINS: RefCell<HashMap<u64, ChainLink, BuildHasherDefault<SlotHasher>>> =
        RefCell::new(HashMap::default());
    /// The router's per-try (first-byte) timeout of attempt 1 (`EXPECTED_TIMEOUT_HEADER`) as
    /// last read, and when (ms): one route config carries it, so attempt 1 reads it again only
    /// once it is a second old (a route change applies within a second); later attempts,
    /// whose timeout can be shortened by the route's overall timeout, always read it.
    static FIRST_BYTE: Cell<Option<(Option<u64>, u64)>> = const { Cell::new(None) };
}

/// How long attempt 1 reuses the per-try timeout read by an earlier request (ms).
const FIRST_BYTE_REREAD_MS: u64 = 1_000;

/// One routed failover in flight (see `CHAINS`).
#[derive(Debug)]
struct ChainLink {
    plan: Rc<Plan>,
    /// Attempts whose upstream instance has started (Envoy's attempt count of the latest).
    started: usize,
    /// The attempt whose origin answered, and the origin's status (0: outside 100..=599,
    /// shown to the router as 502); reset when a later attempt starts.
    answered: Option<(usize, u32)>,
}

/// Microseconds on the wall clock (WASI), for the configure-time log line.
fn micros_now() -> u128 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

/// The bench-only switches this module was built with (Cargo.toml `ablate-*`; empty in every
/// real build): logged at start, so an ablation module can never pass unnoticed.
const ABLATED: &[(&str, bool)] = &[
    ("filter-state", cfg!(feature = "ablate-filter-state")),
    ("metrics", cfg!(feature = "ablate-metrics")),
    ("block-read", cfg!(feature = "ablate-block-read")),
    ("header-map", cfg!(feature = "ablate-header-map")),
    ("status", cfg!(feature = "ablate-status")),
    ("upstream", cfg!(feature = "ablate-upstream")),
];

fn ablated() -> String {
    ABLATED
        .iter()
        .filter(|(_, on)| *on)
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(",")
}

fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::getrandom(&mut bytes).is_err() {
        // Still distinct per VM and start: better than a constant.
        let nanos = hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0x9E37_79B9, |d| d.as_nanos() as u64);
        bytes = nanos.to_le_bytes();
    }
    u64::from_le_bytes(bytes) | 1
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> Status;
}

/// proxy-wasm's header map encoding: count, (name length, value length)*, (name\0 value\0)*.
fn serialize_map(map: &[(&str, &str)]) -> Vec<u8> {
    let size = 4 + map
        .iter()
        .map(|(k, v)| k.len() + v.len() + 10)
        .sum::<usize>();
    let mut bytes = Vec::with_capacity(size);
    bytes.extend_from_slice(&(map.len() as u32).to_le_bytes());
    for (name, value) in map {
        bytes.extend_from_slice(&(name.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (name, value) in map {
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(value.as_bytes());
        bytes.push(0);
    }
    bytes
}

/// The `log` facade's logger: each record goes to Envoy's log hostcall, with the prefix
/// [`crate::host::log_text`] gives it.
struct EnvoyLogger;

static LOGGER: EnvoyLogger = EnvoyLogger;

impl log::Log for EnvoyLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        let level = match record.level() {
            log::Level::Error => WasmLogLevel::Error,
            log::Level::Warn => WasmLogLevel::Warn,
            log::Level::Info => WasmLogLevel::Info,
            log::Level::Debug => WasmLogLevel::Debug,
            log::Level::Trace => WasmLogLevel::Trace,
        };
        let _ = hostcalls::log(level, &crate::host::log_text(record));
    }

    fn flush(&self) {}
}

/// Once per VM (its start): the logger, everything enabled until the first configure reads
/// Envoy's level, and panics reported to Envoy's log (what proxy-wasm's own logger did).
fn install_logger() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
        std::panic::set_hook(Box::new(|info| {
            let _ = hostcalls::log(WasmLogLevel::Critical, &info.to_string());
        }));
    }
}

/// The facade's max level follows Envoy's wasm log level: read at configure and on each tick
/// (so a `/logging` change applies within a tick), and a disabled line costs one compare.
fn refresh_log_level() {
    let filter = match hostcalls::get_log_level() {
        Ok(WasmLogLevel::Trace) | Err(_) => log::LevelFilter::Trace,
        Ok(WasmLogLevel::Debug) => log::LevelFilter::Debug,
        Ok(WasmLogLevel::Info) => log::LevelFilter::Info,
        Ok(WasmLogLevel::Warn) => log::LevelFilter::Warn,
        Ok(WasmLogLevel::Error) => log::LevelFilter::Error,
        Ok(WasmLogLevel::Critical) => log::LevelFilter::Off,
    };
    log::set_max_level(filter);
}

/// [`Host`] over proxy-wasm hostcalls. Every `Status` is handled; none panics.
struct EnvoyHost;

impl Host for EnvoyHost {
    fn now_ms(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64)
    }

    fn random_u64(&mut self) -> u64 {
        RNG.with(|state| {
            let mut x = state.get();
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            state.set(x);
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        })
    }

    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        if cfg!(feature = "ablate-block-read")
            && key.starts_with(crate::engine::blocks::DOMAIN_KEY_PREFIX)
        {
            return (None, None);
        }
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn shared_set(
        &mut self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), SharedSetError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(SharedSetError::CasMismatch),
            Err(_) => Err(SharedSetError::Other),
        }
    }

    fn dispatch(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, String> {
        hostcalls::dispatch_http_call(cluster, headers.to_vec(), body, Vec::new(), timeout)
            .map_err(|status| format!("{status:?}"))
    }

    fn callout_response_headers(&self) -> Vec<(String, String)> {
        hostcalls::get_map(MapType::HttpCallResponseHeaders).unwrap_or_default()
    }

    fn callout_response_body(&self, size: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size)
            .ok()
            .flatten()
    }

    fn send_local_reply(
        &mut self,
        status: u32,
        details: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) {
        // The SDK's send_http_response passes no details (and panics on a failed status).
        let headers = serialize_map(headers);
        // SAFETY: every pointer/length pair describes a live buffer for the whole call.
        let status_code = unsafe {
            proxy_send_local_response(
                status,
                details.as_ptr(),
                details.len(),
                body.as_ptr(),
                body.len(),
                headers.as_ptr(),
                headers.len(),
                -1,
            )
        };
        if status_code != Status::Ok {
            self.log(
                LogLevel::Error,
                &format!("origin-pull: could not send the local reply: {status_code:?}"),
            );
        }
    }

    fn set_request_header(&mut self, name: &str, value: Option<&str>) {
        // The SDK's `set_http_request_header` panics on a failed status; this never does.
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value);
    }

    fn set_filter_state(&mut self, key: &str, value: &str) {
        if cfg!(feature = "ablate-filter-state") {
            return;
        }
        // Failure only loses access-log attribution; the request itself is unaffected.
        let _ = hostcalls::set_property(vec![key], Some(value.as_bytes()));
    }

    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Option<u32> {
        let kind = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
        };
        hostcalls::define_metric(kind, name).ok()
    }

    fn increment_metric(&mut self, id: u32, delta: i64) {
        if cfg!(feature = "ablate-metrics") {
            return;
        }
        // Kept in the VM; `flush_counters` adds it to Envoy's stat on the next tick.
        PENDING.with(|p| p.borrow_mut().add(id, delta));
    }

    fn record_metric(&mut self, id: u32, value: u64) {
        let _ = hostcalls::record_metric(id, value);
    }
}

/// Adds the counters this VM kept since the last flush to Envoy's stats (one hostcall per
/// counter that changed).
fn flush_counters() {
    PENDING.with(|p| {
        // A lost increment only skews a stat; the requests themselves are unaffected.
        p.borrow_mut().flush(|id, delta| {
            let _ = hostcalls::increment_metric(id, delta);
        })
    });
}

/// State shared by the root context and its streams (one Envoy worker VM, one thread).
struct RootState {
    config: RefCell<Option<Rc<PluginConfig>>>,
    metrics: RefCell<Rc<Metrics>>,
    blocks: RefCell<BlockTable>,
    worker: String,
    stats: Cell<BucketStats>,
    /// Mirror copy-backs, run by the root context so their outcome is seen and counted.
    copy_back: RefCell<CopyBack>,
    /// This root context's wake-up queue: only the last registrant of a queue name is called
    /// back, so the name carries the worker id.
    copy_queue: Cell<Option<u32>>,
    /// This root context is the upstream (per-attempt) instance on a composite cluster.
    upstream: Cell<bool>,
}

impl RootState {
    /// From a stream: queue the copy and wake the root context.
    fn submit_copy(&self, job: CopyJob) {
        let stats = self.stats.get();
        let Some(queue) = self.copy_queue.get() else {
            stats.count(&mut EnvoyHost, BucketEvent::CopyBackFailed);
            EnvoyHost.log(
                LogLevel::Error,
                "origin-pull: no copy-back queue is registered; object not copied back",
            );
            return;
        };
        if !self
            .copy_back
            .borrow_mut()
            .submit(&mut EnvoyHost, &stats, job)
        {
            return;
        }
        if let Err(status) = hostcalls::enqueue_shared_queue(queue, Some(b"copy")) {
            EnvoyHost.log(
                LogLevel::Error,
                &format!("origin-pull: could not wake the copy-back worker: {status:?}"),
            );
        }
    }
}

struct OriginPullRoot {
    state: Rc<RootState>,
    /// Probes and the lease (runs only in the VM that holds it); `None` until configured.
    prober: Option<Prober>,
    holder: u64,
}

impl OriginPullRoot {
    fn new() -> OriginPullRoot {
        let holder = EnvoyHost.random_u64();
        let worker = format!("{:08x}", holder as u32);
        OriginPullRoot {
            state: Rc::new(RootState {
                config: RefCell::new(None),
                metrics: RefCell::new(Rc::new(Metrics::default())),
                blocks: RefCell::new(BlockTable::default()),
                worker,
                stats: Cell::new(BucketStats::default()),
                copy_back: RefCell::new(CopyBack::default()),
                copy_queue: Cell::new(None),
                upstream: Cell::new(false),
            }),
            prober: None,
            holder,
        }
    }
}

impl Context for OriginPullRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        // Root callouts are probes (this VM holds the probe lease) or bucket copy-backs; a
        // fetched object's PUT is sent from here.
        if let Some(prober) = self.prober.as_mut() {
            let metrics = self.state.metrics.borrow().clone();
            let mut blocks = self.state.blocks.borrow_mut();
            if prober.on_response(
                &mut EnvoyHost,
                &mut blocks,
                &metrics,
                token_id,
                num_headers,
                body_size,
            ) {
                return;
            }
        }
        let stats = self.state.stats.get();
        self.state.copy_back.borrow_mut().on_response(
            &mut EnvoyHost,
            &stats,
            token_id,
            num_headers,
            body_size,
        );
    }

    fn on_done(&mut self) -> bool {
        if let Some(prober) = self.prober.as_mut() {
            prober.release(&mut EnvoyHost);
        }
        flush_counters();
        true
    }
}

impl RootContext for OriginPullRoot {
    fn on_queue_ready(&mut self, queue_id: u32) {
        // The items are only wake-ups; the jobs wait in `copy_back`.
        while let Ok(Some(_)) = hostcalls::dequeue_shared_queue(queue_id) {}
        let stats = self.state.stats.get();
        self.state
            .copy_back
            .borrow_mut()
            .run(&mut EnvoyHost, &stats);
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        refresh_log_level();
        let started = micros_now();
        let root_id = self
            .get_property(vec!["plugin_root_id"])
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
        let upstream = root_id == UPSTREAM_ROOT_ID;
        self.state.upstream.set(upstream);
        let ablated = ablated();
        if !ablated.is_empty() {
            EnvoyHost.log(
                LogLevel::Warn,
                &format!("origin-pull: BENCH-ONLY ablation build, not for use: {ablated} off"),
            );
        }
        if upstream {
            // It observes each attempt with the plan (and configuration) the downstream instance
            // of its VM made for the request (see CHAINS).
            EnvoyHost.log(
                LogLevel::Info,
                &format!(
                    "origin-pull {} (worker {}): upstream instance ready",
                    crate::BUILD,
                    self.state.worker
                ),
            );
            return true;
        }
        self.state.stats.set(BucketStats::define(&mut EnvoyHost));
        if self.state.copy_queue.get().is_none() && !upstream {
            let name = format!("origin_pull.copy_back.{}", self.state.worker);
            match hostcalls::register_shared_queue(&name) {
                Ok(id) => self.state.copy_queue.set(Some(id)),
                Err(status) => EnvoyHost.log(
                    LogLevel::Error,
                    &format!("origin-pull: cannot register the copy-back queue: {status:?}"),
                ),
            }
        }
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let parsed_at = micros_now();
        match config::parse(&bytes) {
            Ok(parsed) => {
                let parse_us = micros_now().saturating_sub(parsed_at);
                let domains = parsed.domains.len();
                let parsed = Rc::new(parsed);
                // The probe plan is built here; stats are defined on first use (metrics.rs).
                let metrics = Metrics::new(parsed.clone(), REGISTRY.with(Rc::clone));
                if let Some(old) = self.prober.as_mut() {
                    old.release(&mut EnvoyHost);
                }
                // The downstream instance probes; the upstream one only observes attempts.
                if !upstream {
                    let prober = Prober::new(&parsed, self.holder);
                    self.set_tick_period(prober.tick_period());
                    self.prober = Some(prober);
                }
                let metrics = Rc::new(metrics);
                let old_metrics = std::mem::replace(&mut *self.state.metrics.borrow_mut(), metrics);
                let old_config = self.state.config.borrow_mut().replace(parsed);
                // Freeing the previous configuration is part of the cost of a reload.
                drop((old_metrics, old_config));
                let total_us = micros_now().saturating_sub(started);
                EnvoyHost.log(
                    LogLevel::Info,
                    &format!(
                        "origin-pull {} (worker {}): configured {domains} domain(s) in {}.{:03} ms (parse {}.{:03} ms, {} bytes)",
                        crate::BUILD,
                        self.state.worker,
                        total_us / 1000,
                        total_us % 1000,
                        parse_us / 1000,
                        parse_us % 1000,
                        bytes.len(),
                    ),
                );
                true
            }
            Err(error) => {
                // Envoy rejects the configuration: at bootstrap it exits, under LDS it keeps the old one.
                EnvoyHost.log(LogLevel::Error, &error.to_string());
                false
            }
        }
    }

    fn on_tick(&mut self) {
        refresh_log_level();
        flush_counters();
        if let Some(prober) = self.prober.as_mut() {
            let metrics = self.state.metrics.borrow().clone();
            let mut blocks = self.state.blocks.borrow_mut();
            prober.on_tick(&mut EnvoyHost, &mut blocks, &metrics);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        if self.state.upstream.get() {
            return Some(Box::new(OriginPullAttempt {
                state: self.state.clone(),
                observer: None,
                attempt: 0,
                link: None,
            }));
        }
        Some(Box::new(OriginPullStream {
            state: self.state.clone(),
            exchange: None,
            chain_id: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct OriginPullStream {
    state: Rc<RootState>,
    exchange: Option<Exchange>,
    /// The request id of this stream's routed failover, registered in `CHAINS`.
    chain_id: Option<u64>,
}

impl Drop for OriginPullStream {
    fn drop(&mut self) {
        if let Some(id) = self.chain_id.take() {
            CHAINS.with(|c| c.borrow_mut().remove(&id));
        }
    }
}

impl Context for OriginPullStream {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if let Some(exchange) = self.exchange.as_mut() {
            {
                let mut blocks = self.state.blocks.borrow_mut();
                exchange.on_callout_response(
                    &mut EnvoyHost,
                    &mut blocks,
                    token_id,
                    num_headers,
                    body_size,
                );
            }
            if let Some(job) = exchange.take_copy_job() {
                self.state.submit_copy(job);
            }
        }
    }
}

impl HttpContext for OriginPullStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let config = self.state.config.borrow().clone();
        // One hostcall for everything: the host, scheme and method, and the copy a failover
        // replays (Envoy hides the request headers once the response is under way).
        let headers = if config.is_none() {
            Vec::new() // not configured: answered locally, nothing read
        } else if cfg!(feature = "ablate-header-map") {
            [":authority", ":scheme", ":method", ":path"]
                .iter()
                .filter_map(|name| {
                    hostcalls::get_map_value(MapType::HttpRequestHeaders, name)
                        .ok()
                        .flatten()
                        .map(|v| (name.to_string(), v))
                })
                .collect()
        } else {
            hostcalls::get_map(MapType::HttpRequestHeaders).unwrap_or_default()
        };
        let metrics = self.state.metrics.borrow();
        let client = ClientRequest {
            headers,
            has_body: !end_of_stream,
            worker: &self.state.worker,
            stats: self.state.stats.get(),
            metrics: Some(&*metrics),
        };
        let exchange = {
            let mut blocks = self.state.blocks.borrow_mut();
            Exchange::on_request_headers(config.as_ref(), &mut blocks, &mut EnvoyHost, client)
        };
        let Some(exchange) = exchange else {
            return Action::Pause; // answered locally
        };
        if let Some(plan) = exchange.chain_plan() {
            let id = plan.request;
            CHAINS.with(|c| {
                c.borrow_mut().insert(
                    id,
                    ChainLink {
                        plan: Rc::new(plan),
                        started: 0,
                        answered: None,
                    },
                )
            });
            self.chain_id = Some(id);
        }
        self.exchange = Some(exchange);
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if let Some(exchange) = self.exchange.as_mut() {
            if exchange.wants_request_body() {
                let chunk = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                exchange.on_request_body(&chunk, end_of_stream);
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(exchange) = self.exchange.as_mut() else {
            return Action::Continue;
        };
        let status = if cfg!(feature = "ablate-status") {
            200
        } else {
            hostcalls::get_map_value(MapType::HttpResponseHeaders, ":status")
                .ok()
                .flatten()
                .and_then(|s| s.parse::<u32>().ok())
                .unwrap_or(0)
        };
        // Envoy's failure replies (connect error, timeout, no cluster...) are all 4xx/5xx:
        // a 2xx/3xx needs no flags, which saves a hostcall on the happy path.
        let response_flags = if (200..400).contains(&status) {
            0
        } else {
            hostcalls::get_property(vec!["response", "flags"])
                .ok()
                .flatten()
                .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok())
                .map_or(0, u64::from_le_bytes)
        };
        let step = if exchange.routes_chain() {
            // Noted in `CHAINS` by the upstream instance when an origin answered; absent on
            // Envoy's own replies.
            let answered = self
                .chain_id
                .and_then(|id| CHAINS.with(|c| c.borrow().get(&id).and_then(|l| l.answered)));
            if status == FAILOVER_STATUS {
                if let Some((_, origin)) = answered.filter(|(_, o)| *o != FAILOVER_STATUS) {
                    // An answer marked for a failover that the router relayed (no retry left):
                    // the client gets the origin's own status, never the marker.
                    let shown = if origin == 0 { 502 } else { origin };
                    let _ = hostcalls::set_map_value(
                        MapType::HttpResponseHeaders,
                        ":status",
                        Some(&shown.to_string()),
                    );
                }
            }
            let (attempt, status) = match answered {
                Some((attempt, 0)) => (Some(attempt), 0), // the origin's status was invalid
                Some((attempt, origin)) if status == FAILOVER_STATUS => (Some(attempt), origin),
                Some((attempt, _)) => (Some(attempt), status),
                None => (None, status),
            };
            if attempt.is_some_and(|a| a > 1) {
                // A failed-over answer carries no hop-by-hop header Envoy's codec lets through
                // (as the callout path guarantees).
                for name in [
                    "te",
                    "trailer",
                    "proxy-authenticate",
                    "keep-alive",
                    "proxy-connection",
                    "upgrade",
                ] {
                    let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, None);
                }
            }
            exchange.on_chain_response(&mut EnvoyHost, status, response_flags, attempt)
        } else {
            let mut blocks = self.state.blocks.borrow_mut();
            exchange.on_response_headers(&mut EnvoyHost, &mut blocks, status, response_flags)
        };
        if let Some(job) = exchange.take_copy_job() {
            self.state.submit_copy(job);
        }
        match step {
            ResponseStep::Pause => Action::Pause,
            ResponseStep::Continue => {
                for (name, value) in exchange.debug_headers() {
                    let _ =
                        hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(&value));
                }
                Action::Continue
            }
        }
    }
}

/// The upstream instance: one context per attempt of a routed failover (see `chain`).
struct OriginPullAttempt {
    state: Rc<RootState>,
    observer: Option<AttemptObserver>,
    attempt: usize,
    /// The request's entry in `CHAINS` (its request id).
    link: Option<u64>,
}

impl Context for OriginPullAttempt {
    fn on_done(&mut self) -> bool {
        if let Some(observer) = self.observer.as_mut().filter(|o| o.pending()) {
            // This attempt's own stream info: a transport failure reason when the connection
            // was refused; no local address when it was never established (connect timeout).
            let refused = hostcalls::get_property(vec!["upstream", "transport_failure_reason"])
                .ok()
                .flatten()
                .is_some_and(|reason| !reason.is_empty());
            let connected = hostcalls::get_property(vec!["upstream", "local_address"])
                .ok()
                .flatten()
                .is_some_and(|address| !address.is_empty());
            let mut blocks = self.state.blocks.borrow_mut();
            observer.on_done(&mut EnvoyHost, &mut blocks, refused, connected);
        }
        true
    }
}

impl OriginPullAttempt {
    /// The router's per-try (first-byte) timeout for attempt `attempt` (see `FIRST_BYTE`).
    fn first_byte_ms(&self, attempt: usize, now_ms: u64) -> Option<u64> {
        if attempt == 1 {
            if let Some((value, read_ms)) = FIRST_BYTE.get() {
                if now_ms >= read_ms && now_ms - read_ms < FIRST_BYTE_REREAD_MS {
                    return value;
                }
            }
        }
        let value = self
            .get_http_request_header(EXPECTED_TIMEOUT_HEADER)
            .and_then(|v| v.parse::<u64>().ok());
        if attempt == 1 {
            FIRST_BYTE.set(Some((value, now_ms)));
        }
        value
    }
}

impl HttpContext for OriginPullAttempt {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if cfg!(feature = "ablate-upstream") {
            return Action::Continue;
        }
        // The plan's id: the only header an attempt reads; the rest is in this VM.
        let Some(id) = self
            .get_http_request_header(PLAN_HEADER)
            .as_deref()
            .and_then(read_plan_id)
        else {
            return Action::Continue;
        };
        let Some((plan, attempt)) = CHAINS.with(|c| {
            let mut chains = c.borrow_mut();
            let link = chains.get_mut(&id)?;
            link.started += 1;
            link.answered = None;
            Some((link.plan.clone(), link.started))
        }) else {
            return Action::Continue;
        };
        self.link = Some(id);
        self.attempt = attempt;
        // Attempt 1 starts at the listener's clock reading of the same request (no clock read).
        let started_ms = if attempt == 1 {
            plan.sent_ms
        } else {
            EnvoyHost.now_ms()
        };
        let first_byte_ms = self.first_byte_ms(attempt, started_ms);
        let Some(observer) =
            AttemptObserver::start(&plan, &mut EnvoyHost, attempt, first_byte_ms, started_ms)
        else {
            return Action::Continue;
        };
        let start = observer.start_headers();
        if let Some(authority) = start.authority {
            self.set_http_request_header(":authority", Some(authority));
        }
        // This map is the router's own, reused by later attempts: an attempt only changes what
        // no later attempt reads. Each origin sees its own address in the usual header; the
        // last attempt drops the plan and the other attempts' addresses.
        if let Some(dst) = start.own_address {
            self.set_http_request_header(crate::engine::exchange::ORIGINAL_DST_HEADER, Some(dst));
        }
        if start.last {
            self.set_http_request_header(PLAN_HEADER, None);
            for k in 2..=attempt {
                self.set_http_request_header(crate::engine::chain::dst_header(k), None);
            }
        }
        self.observer = Some(observer);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if cfg!(feature = "ablate-upstream") {
            return Action::Continue;
        }
        // The only hostcall of an answer that is relayed (every 2xx/3xx): its status.
        let status = self
            .get_http_response_header(":status")
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(0);
        // Envoy's codec lets e.g. "HTTP/1.1 2000" through: judged as a broken origin.
        let invalid = !(100..=599).contains(&status);
        // The listener's filter finds the answered attempt here (Envoy's own replies to the
        // client have none).
        if let Some(id) = self.link {
            CHAINS.with(|c| {
                if let Some(link) = c.borrow_mut().get_mut(&id) {
                    link.answered = Some((self.attempt, if invalid { 0 } else { status }));
                }
            });
        }
        let retry = self.observer.as_mut().is_some_and(|observer| {
            let mut blocks = self.state.blocks.borrow_mut();
            observer.on_response(&mut EnvoyHost, &mut blocks, status)
        });
        if retry {
            // The route retries exactly this status (`retriable_status_codes`).
            self.set_http_response_header(":status", Some(&FAILOVER_STATUS.to_string()));
        } else if invalid || status == FAILOVER_STATUS {
            // Never relayed as such, and an origin cannot ask for a retry itself: a 502, which
            // fails over like any 5xx when the domain says so (then `retry` above).
            self.set_http_response_header(":status", Some("502"));
        }
        Action::Continue
    }
}
