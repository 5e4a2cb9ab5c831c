//! The thin proxy-wasm glue: turns Envoy's callbacks into [`Exchange`] events and implements
//! [`Host`] over hostcalls. No origin-pull decision is made here:
//! the engine decides (also which request headers are set) through [`Host`].
//!
//! `root` (configuration, ticks, probes, copy-backs), `listener` (the client's stream: one
//! [`Exchange`] per request), `upstream` (one instance per attempt of a routed failover).
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
use crate::engine::blocks::BlockTable;
use crate::engine::chain::{
    read_plan_id, ChainProgress, Plan, BROKEN_STATUS_HEADER, EXPECTED_TIMEOUT_HEADER,
    FAILOVER_STATUS, LOGGER_ROOT_ID, PLAN_HEADER, UPSTREAM_ROOT_ID,
};
use crate::engine::copyback::{CopyBack, CopyJob};
use crate::engine::exchange::{ClientRequest, Exchange, ResponseStep};
use crate::engine::metrics::{Metrics, PendingCounters, Registry};
use crate::engine::prober::Prober;
use crate::headers::HeaderMap;
use crate::host::{Host, MetricKind, SharedSetError, RAW_LOG_TARGET};
use crate::s3::bucket::{BucketEvent, BucketStats};
use crate::types::FastHasher;

mod listener;
mod root;
mod upstream;

use listener::OriginPullStream;
use root::{OriginPullRoot, RootState};
use upstream::OriginPullAttempt;

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
    /// answered; for a logged chain the module as the router's upstream logger does the same
    /// for each failed attempt. So no attempt parses a plan or looks a domain up, reads
    /// Envoy's attempt count or marks the answer in a header. Without an entry (an observer
    /// in another VM: not what render writes) the attempt is not observed.
    static CHAINS: RefCell<HashMap<u64, ChainLink, BuildHasherDefault<FastHasher>>> =
        RefCell::new(HashMap::default());
    /// The router's per-try (first-byte) timeout of attempt 1 (`EXPECTED_TIMEOUT_HEADER`) as
    /// last read, and when (ms): one route config carries it, so attempt 1 reads it again only
    /// once it is a second old (a route change applies within a second); later attempts,
    /// whose timeout can be shortened by the route's overall timeout, always read it.
    static FIRST_BYTE: Cell<Option<(Option<u64>, u64)>> = const { Cell::new(None) };
    /// The state of this VM's latest configured downstream root context: the upstream logger
    /// judges a logged chain's attempts in the same block table the listener's filter notes
    /// answers in (an answer meanwhile excuses a strike).
    static DOWNSTREAM: RefCell<std::rc::Weak<RootState>> = const { RefCell::new(std::rc::Weak::new()) };
}

/// One routed failover in flight (see `CHAINS`).
#[derive(Debug)]
struct ChainLink {
    plan: Rc<Plan>,
    progress: ChainProgress,
}

/// `f` on the in-flight link of a logged chain `id`. The upstream log of a chain's last
/// attempt comes before the listener's stream is deleted (checked in this Envoy); an attempt
/// the route's own timeout cuts is not logged at all (the listener's filter judges it).
fn with_link<T>(id: u64, f: impl FnOnce(&mut ChainLink) -> T) -> Option<T> {
    CHAINS.with(|c| {
        c.borrow_mut()
            .get_mut(&id)
            .filter(|link| !link.plan.observed)
            .map(f)
    })
}

/// Judges `(attempt, status, flags)` of the logged chain `id` (the upstream log's report or
/// the listener's) and keeps the chain's progress.
fn judge_logged(
    id: u64,
    plan: &Rc<Plan>,
    progress: &mut ChainProgress,
    blocks: &mut BlockTable,
    (attempt, status, flags): (usize, u32, u64),
) {
    AttemptObserver::observe_logged(
        plan,
        progress,
        &mut EnvoyHost,
        blocks,
        attempt,
        status,
        flags,
    );
    let progress = *progress;
    with_link(id, |link| link.progress = progress);
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
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
    fn proxy_get_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> Status;
    fn proxy_replace_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> Status;
    fn proxy_remove_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
    ) -> Status;
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> Status;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> Status;
    fn proxy_get_buffer_bytes(
        buffer_type: BufferType,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> Status;
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

/// The bytes a hostcall hands back: `call` gets the two out-parameters; Envoy fills them with
/// a buffer it got from this module's allocator (`proxy_on_memory_allocate`: exactly `size`
/// bytes) or leaves the pointer null. `None` on any status but `Ok` or no buffer. The SDK's own
/// readers panic on statuses they do not expect, and some unwrap the value's UTF-8: nothing a
/// client, an origin or Envoy sends can abort the VM through these.
fn returned_bytes(call: impl FnOnce(*mut *mut u8, *mut usize) -> Status) -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    if call(&mut data, &mut size) != Status::Ok || data.is_null() {
        return None;
    }
    // SAFETY: see above: allocated by this module's allocator with capacity `size`, handed over
    // once.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// A header map in one hostcall, kept as Envoy encoded it ([`HeaderMap`]): no allocation per
/// header, and a value that is not UTF-8 is kept as bytes. Any failure reads as an empty map.
fn read_header_map(map_type: MapType) -> HeaderMap {
    // SAFETY: the out-parameters are live for the call.
    returned_bytes(|data, size| unsafe { proxy_get_header_map_pairs(map_type, data, size) })
        .map(HeaderMap::from_wire)
        .unwrap_or_default()
}

/// One header's value as Envoy holds it; `None` when absent or on any failure.
fn read_header_value(map_type: MapType, name: &str) -> Option<Vec<u8>> {
    // SAFETY: the name and the out-parameters are live for the call.
    returned_bytes(|data, size| unsafe {
        proxy_get_header_map_value(map_type, name.as_ptr(), name.len(), data, size)
    })
}

/// A property of the stream (`path` parts joined by NUL, as Envoy reads them); `None` when
/// absent or on any failure.
fn read_property(path: &[&str]) -> Option<Vec<u8>> {
    let joined = path.join("\0");
    // SAFETY: the path and the out-parameters are live for the call.
    returned_bytes(|data, size| unsafe {
        proxy_get_property(joined.as_ptr(), joined.len(), data, size)
    })
}

/// A property Envoy encodes as a little-endian 64-bit integer (`response.code`,
/// `response.flags`); 0 when absent or of another size.
fn read_property_number(path: &[&str]) -> u64 {
    read_property(path)
        .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok())
        .map_or(0, u64::from_le_bytes)
}

/// Up to `max` bytes of a body buffer from its start; `None` when there is none or on any
/// failure.
fn read_buffer(buffer_type: BufferType, max: usize) -> Option<Vec<u8>> {
    // SAFETY: the out-parameters are live for the call.
    returned_bytes(|data, size| unsafe { proxy_get_buffer_bytes(buffer_type, 0, max, data, size) })
}

/// Sets (`Some`) or removes (`None`) a header. The SDK's `set_map_value` panics on any status
/// but `Ok` (Envoy answers `BadArgument` when the map is not available, e.g. request headers
/// once the response is under way); this returns the status instead.
fn write_header(map_type: MapType, name: &str, value: Option<&str>) -> Status {
    // SAFETY: every pointer/length pair describes a live buffer for the whole call.
    unsafe {
        match value {
            Some(value) => proxy_replace_header_map_value(
                map_type,
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            ),
            None => proxy_remove_header_map_value(map_type, name.as_ptr(), name.len()),
        }
    }
}

/// A header whose value is a decimal number (`:status`, Envoy's expected timeout); `None` when
/// absent or not a number.
fn read_header_number(map_type: MapType, name: &str) -> Option<u64> {
    crate::headers::decimal(&read_header_value(map_type, name)?)
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
        // An origin's header bytes that are not UTF-8 become U+FFFD, never a panic.
        read_header_map(MapType::HttpCallResponseHeaders).to_pairs()
    }

    fn callout_response_body(&self, size: usize) -> Option<Vec<u8>> {
        read_buffer(BufferType::HttpCallResponseBody, size)
    }

    fn send_local_reply(
        &mut self,
        status: u32,
        details: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) {
        // The SDK's send_http_response passes no details (and panics on a failed status).
        let headers = HeaderMap::from_pairs(headers);
        // SAFETY: every pointer/length pair describes a live buffer for the whole call.
        let status_code = unsafe {
            proxy_send_local_response(
                status,
                details.as_ptr(),
                details.len(),
                body.as_ptr(),
                body.len(),
                headers.as_wire().as_ptr(),
                headers.as_wire().len(),
                -1,
            )
        };
        if status_code != Status::Ok {
            log::error!("could not send the local reply: {status_code:?}");
        }
    }

    fn set_request_header(&mut self, name: &str, value: Option<&str>) {
        let status = write_header(MapType::HttpRequestHeaders, name, value);
        if status != Status::Ok {
            log::debug!("request header {name} not written: {status:?}");
        }
    }

    fn set_response_header(&mut self, name: &str, value: Option<&str>) {
        let status = write_header(MapType::HttpResponseHeaders, name, value);
        if status != Status::Ok {
            log::debug!("response header {name} not written: {status:?}");
        }
    }

    fn set_filter_state(&mut self, key: &str, value: &str) {
        if cfg!(feature = "ablate-filter-state") {
            return;
        }
        // A one-part property path is the key itself (the SDK's `set_property` would build it
        // in two allocations, and panics on any status but `Ok`). Failure only loses the
        // access log's attribution; the request itself is unaffected.
        // SAFETY: every pointer/length pair describes a live buffer for the whole call.
        let status =
            unsafe { proxy_set_property(key.as_ptr(), key.len(), value.as_ptr(), value.len()) };
        if status != Status::Ok {
            log::debug!("filter state {key} not written: {status:?}");
        }
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
