//! Test doubles for the [`Host`] seam: [`FakeHost`] (fixed clock, seeded RNG, shared data that
//! several fake workers race on, recorded callouts/replies/logs, hostcalls and copies counted).
//! Compiled for the unit tests (`cfg(test)`) and, through the `testing` cargo feature, for the
//! integration tests under tests/ and the bench/ harnesses: the crate's dev-dependency on itself
//! turns the feature on for those targets only, so the .wasm and the CLI never contain it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Duration;

use crate::host::{log_text, xorshift64star, Host, LogLevel, MetricKind, SharedSetError};

thread_local! {
    /// Lines the `log` facade emitted on this thread (cargo runs tests on parallel threads,
    /// so each test sees its own), as Envoy would print them.
    static LOGS: RefCell<Vec<(LogLevel, String)>> = const { RefCell::new(Vec::new()) };
    /// Lowest level kept on this thread ([`FakeHost::set_log_level`]).
    static LOG_LEVEL: Cell<LogLevel> = const { Cell::new(LogLevel::Debug) };
    /// Whether this thread keeps log lines at all ([`FakeHost::set_recording`]).
    static LOG_RECORDING: Cell<bool> = const { Cell::new(true) };
}

/// The test logger: what a `log::…!` macro or `Host::log` emits goes to this thread's buffer.
struct CaptureLogger;

static CAPTURE: CaptureLogger = CaptureLogger;

fn level_of(level: log::Level) -> LogLevel {
    match level {
        log::Level::Error => LogLevel::Error,
        log::Level::Warn => LogLevel::Warn,
        log::Level::Info => LogLevel::Info,
        log::Level::Debug | log::Level::Trace => LogLevel::Debug,
    }
}

impl log::Log for CaptureLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        level_of(metadata.level()) >= LOG_LEVEL.with(Cell::get)
    }

    fn log(&self, record: &log::Record) {
        if LOG_RECORDING.with(Cell::get) && self.enabled(record.metadata()) {
            let line = (level_of(record.level()), log_text(record));
            LOGS.with(|logs| logs.borrow_mut().push(line));
        }
    }

    fn flush(&self) {}
}

/// Installs the capture logger (once per process; the level filter is per thread).
fn install_capture_logger() {
    if log::set_logger(&CAPTURE).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callout {
    pub token: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout: Duration,
}

impl Callout {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub details: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl LocalReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Shared data lives behind an `Rc` so several fake "workers" can share it.
#[derive(Debug, Default)]
pub struct SharedStore {
    entries: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
    /// Number of upcoming CAS writes to fail, to exercise retry paths.
    pub inject_cas_mismatches: u32,
    /// Another worker's write (key, value) that lands between this worker's read and its
    /// next write: the real race, creation of the key included.
    pub interleaved_write: Option<(String, Vec<u8>)>,
    /// Number of `shared_get` calls (what a request costs in shared-data reads).
    pub reads: Cell<u64>,
}

impl SharedStore {
    /// Bytes of every stored value (what the block state takes, whatever its layout).
    pub fn stored_bytes(&self) -> usize {
        self.entries.values().map(|(value, _)| value.len()).sum()
    }
}

pub struct FakeHost {
    pub now_ms: u64,
    rng_state: u64,
    pub shared: std::rc::Rc<RefCell<SharedStore>>,
    pub callouts: Vec<Callout>,
    pub replies: Vec<LocalReply>,
    pub fail_dispatch: bool,
    pub filter_state: HashMap<String, String>,
    /// The client's request headers: what `Exchange::on_request_headers` reads, changed by
    /// `set_request_header` as Envoy's header map is (tests hand them to
    /// `Exchange::keep_request_headers` when they start an exchange themselves).
    pub request_headers: Vec<(String, String)>,
    /// `set_response_header` calls on the client's response, in order (name, `None`: removed).
    pub response_header_changes: Vec<(String, Option<String>)>,
    /// What the next callout response delivers.
    pub response_headers: Vec<(String, String)>,
    pub response_body: Vec<u8>,
    next_token: u32,
    /// Defined stats, by id - 1: (kind, name, value).
    pub metrics: Vec<(MetricKind, String, i64)>,
    /// Calls of `define_metric` (Envoy keeps an entry per call, even for a known name).
    pub defined: u32,
    /// Keep what the logic hands over (callouts, replies, log lines, filter state, stat
    /// values). The profiling harness turns it off: Envoy does that work outside the VM, so it
    /// belongs in neither the allocations nor the instructions the harness counts.
    recording: bool,
    /// Hostcalls made: every `Host` method but `random_u64` (the VM's own generator), plus
    /// what a harness adds for the glue with [`FakeHost::count_hostcall`].
    pub hostcalls: Cell<u64>,
    /// Bytes Envoy copies into the VM: shared-data values, callout response headers and body.
    pub copied: Cell<u64>,
    /// `Some`: counters are kept here, as the glue keeps them in the VM (no hostcall), until
    /// [`FakeHost::flush_counters`] (a tick); `None` (default): added at once.
    pub pending: Option<crate::engine::metrics::PendingCounters>,
}

impl FakeHost {
    /// A fresh fake; this thread's log capture starts empty, at Debug, recording.
    pub fn new(seed: u64) -> FakeHost {
        install_capture_logger();
        LOGS.with(|logs| logs.borrow_mut().clear());
        LOG_LEVEL.with(|level| level.set(LogLevel::Debug));
        LOG_RECORDING.with(|on| on.set(true));
        FakeHost::unlogged(seed)
    }

    /// A fake that leaves this thread's log capture as it is.
    fn unlogged(seed: u64) -> FakeHost {
        FakeHost {
            now_ms: 1_700_000_000_000,
            rng_state: seed | 1,
            shared: Default::default(),
            callouts: Vec::new(),
            replies: Vec::new(),
            fail_dispatch: false,
            filter_state: HashMap::new(),
            request_headers: Vec::new(),
            response_header_changes: Vec::new(),
            response_headers: Vec::new(),
            response_body: Vec::new(),
            next_token: 1,
            metrics: Vec::new(),
            defined: 0,
            recording: true,
            hostcalls: Cell::new(0),
            copied: Cell::new(0),
            pending: None,
        }
    }

    /// What the glue does on a tick: the counters kept in the VM go to the stats, one hostcall
    /// per counter that changed. Returns how many were sent.
    pub fn flush_counters(&mut self) -> usize {
        let Some(mut pending) = self.pending.take() else {
            return 0;
        };
        let mut sent = Vec::new();
        let n = pending.flush(|id, delta| sent.push((id, delta)));
        for (id, delta) in sent {
            self.count_hostcall();
            self.add_to_metric(id, delta);
        }
        self.pending = Some(pending);
        n
    }

    fn add_to_metric(&mut self, id: u32, delta: i64) {
        if !self.recording {
            return;
        }
        if let Some(m) = (id as usize)
            .checked_sub(1)
            .and_then(|i| self.metrics.get_mut(i))
        {
            m.2 += delta;
        }
    }

    /// Lowest level Envoy would print (`log_enabled`); lower lines are not kept. Envoy's
    /// default is Info; tests see every line (Debug). Applies to this thread's log capture.
    pub fn set_log_level(&self, level: LogLevel) {
        LOG_LEVEL.with(|current| current.set(level));
    }

    /// Keep what the logic hands over (see `recording`), log lines of this thread included.
    pub fn set_recording(&mut self, on: bool) {
        self.recording = on;
        LOG_RECORDING.with(|current| current.set(on));
    }

    /// The lines the facade emitted on this thread since `FakeHost::new` (every fake of the
    /// thread, siblings included, shares them: one Envoy log).
    pub fn logs(&self) -> Vec<(LogLevel, String)> {
        LOGS.with(|logs| logs.borrow().clone())
    }

    /// A second worker: same shared data, its own RNG, callouts and replies.
    pub fn sibling(&self, seed: u64) -> FakeHost {
        let mut other = FakeHost::unlogged(seed);
        other.shared = self.shared.clone();
        other.now_ms = self.now_ms;
        other
    }

    pub fn respond(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        self.response_headers = std::iter::once((":status".to_string(), status.to_string()))
            .chain(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .collect();
        self.response_body = body.to_vec();
    }

    /// Value of a defined stat, by name (`None` if never defined).
    pub fn metric(&self, name: &str) -> Option<i64> {
        self.metrics
            .iter()
            .find(|(_, n, _)| n == name)
            .map(|(_, _, v)| *v)
    }

    pub fn logged(&self, needle: &str) -> bool {
        LOGS.with(|logs| logs.borrow().iter().any(|(_, m)| m.contains(needle)))
    }

    /// The token of the latest callout dispatched (`None` before the first).
    pub fn last_token(&self) -> Option<u32> {
        self.next_token.checked_sub(1).filter(|t| *t > 0)
    }

    /// One hostcall more (a harness counting what the glue calls besides the logic).
    pub fn count_hostcall(&self) {
        self.hostcalls.set(self.hostcalls.get() + 1);
    }

    /// `bytes` more copied into the VM (a harness counting what the glue reads).
    pub fn count_copied(&self, bytes: usize) {
        self.copied.set(self.copied.get() + bytes as u64);
    }
}

impl Host for FakeHost {
    fn now_ms(&self) -> u64 {
        self.count_hostcall();
        self.now_ms
    }
    fn random_u64(&mut self) -> u64 {
        // Deterministic for a seed, good enough for weight statistics.
        xorshift64star(&mut self.rng_state)
    }
    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.count_hostcall();
        let store = self.shared.borrow();
        store.reads.set(store.reads.get() + 1);
        match store.entries.get(key) {
            Some((value, cas)) => {
                self.count_copied(value.len());
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
        self.count_hostcall();
        let mut store = self.shared.borrow_mut();
        if let Some((other_key, other_value)) = store.interleaved_write.take() {
            store.next_cas += 1;
            let next = store.next_cas;
            store.entries.insert(other_key, (other_value, next));
        }
        if cas.is_some() && store.inject_cas_mismatches > 0 {
            store.inject_cas_mismatches -= 1;
            store.next_cas += 1;
            let next = store.next_cas;
            if let Some(entry) = store.entries.get_mut(key) {
                entry.1 = next; // as if another worker had written
            }
            return Err(SharedSetError::CasMismatch);
        }
        if let (Some(cas), Some((_, current))) = (cas, store.entries.get(key)) {
            if cas != *current {
                return Err(SharedSetError::CasMismatch);
            }
        }
        store.next_cas += 1;
        let next = store.next_cas;
        store
            .entries
            .insert(key.to_string(), (value.to_vec(), next));
        Ok(())
    }
    fn dispatch(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, String> {
        self.count_hostcall();
        if self.fail_dispatch {
            return Err("InternalFailure".into());
        }
        let token = self.next_token;
        self.next_token += 1;
        if !self.recording {
            return Ok(token);
        }
        self.callouts.push(Callout {
            token,
            cluster: cluster.to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.map(<[u8]>::to_vec),
            timeout,
        });
        Ok(token)
    }
    fn callout_response_headers(&self) -> Vec<(String, String)> {
        self.count_hostcall();
        let headers = self.response_headers.clone();
        self.count_copied(headers.iter().map(|(k, v)| k.len() + v.len()).sum());
        headers
    }
    fn callout_response_body(&self, size: usize) -> Option<Vec<u8>> {
        self.count_hostcall();
        let n = size.min(self.response_body.len());
        let body = self.response_body.get(..n).unwrap_or_default().to_vec();
        self.count_copied(body.len());
        Some(body)
    }
    fn send_local_reply(
        &mut self,
        status: u32,
        details: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) {
        self.count_hostcall();
        if !self.recording {
            return;
        }
        self.replies.push(LocalReply {
            status,
            details: details.to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.to_vec(),
        });
    }
    fn set_filter_state(&mut self, key: &str, value: &str) {
        self.count_hostcall();
        if self.recording {
            self.filter_state.insert(key.to_string(), value.to_string());
        }
    }
    fn set_request_header(&mut self, name: &str, value: Option<&str>) {
        self.count_hostcall();
        if !self.recording {
            return;
        }
        // Envoy's replace: the first copy takes the value, the others go.
        let mut kept = false;
        self.request_headers.retain_mut(|(k, v)| match value {
            _ if k != name => true,
            Some(value) if !kept => {
                *v = value.to_string();
                kept = true;
                true
            }
            _ => false,
        });
        if let (Some(value), false) = (value, kept) {
            self.request_headers
                .push((name.to_string(), value.to_string()));
        }
    }

    fn set_response_header(&mut self, name: &str, value: Option<&str>) {
        self.count_hostcall();
        if self.recording {
            self.response_header_changes
                .push((name.to_string(), value.map(str::to_string)));
        }
    }

    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Option<u32> {
        self.count_hostcall();
        self.defined += 1;
        if let Some(i) = self.metrics.iter().position(|(_, n, _)| n == name) {
            return u32::try_from(i + 1).ok();
        }
        self.metrics.push((kind, name.to_string(), 0));
        u32::try_from(self.metrics.len()).ok()
    }
    fn increment_metric(&mut self, id: u32, delta: i64) {
        if let Some(pending) = self.pending.as_mut() {
            pending.add(id, delta); // in the VM: no hostcall
            return;
        }
        self.count_hostcall();
        self.add_to_metric(id, delta);
    }
    fn record_metric(&mut self, id: u32, value: u64) {
        self.count_hostcall();
        if !self.recording {
            return;
        }
        if let Some(m) = (id as usize)
            .checked_sub(1)
            .and_then(|i| self.metrics.get_mut(i))
        {
            m.2 = value as i64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FakeHost;
    use crate::host::{Host, LogLevel, MetricKind, RAW_LOG_TARGET};

    #[test]
    fn fake_metrics_are_defined_once_and_counted() {
        let mut host = FakeHost::new(1);
        let requests = host.define_metric(MetricKind::Counter, "requests");
        assert_eq!(
            requests,
            host.define_metric(MetricKind::Counter, "requests")
        );
        let blocked = host.define_metric(MetricKind::Gauge, "blocked");
        let (Some(requests), Some(blocked)) = (requests, blocked) else {
            panic!("metrics not defined");
        };
        host.increment_metric(requests, 2);
        host.record_metric(blocked, 7);
        host.increment_metric(0, 1); // unknown id: ignored
        assert_eq!(host.metric("requests"), Some(2));
        assert_eq!(host.metric("blocked"), Some(7));
        assert_eq!(host.metric("missing"), None);
    }

    #[test]
    fn log_lines_are_captured_per_thread_with_the_prefix_envoy_sees() {
        let host = FakeHost::new(1);
        log::warn!("{} is down", "origin a");
        log::error!(target: RAW_LOG_TARGET, "origin-pull 1.0 (worker 0): a complete line");
        host.set_log_level(LogLevel::Info);
        log::debug!("dropped below the level");
        assert!(!log::log_enabled!(log::Level::Debug) && log::log_enabled!(log::Level::Info));
        assert_eq!(
            host.logs(),
            vec![
                (LogLevel::Warn, "origin-pull: origin a is down".to_string()),
                (
                    LogLevel::Error,
                    "origin-pull 1.0 (worker 0): a complete line".to_string()
                ),
            ]
        );
        // Another test thread has its own capture and level.
        let other = std::thread::spawn(|| {
            let host = FakeHost::new(2);
            log::debug!("other thread");
            host.logs()
        })
        .join()
        .unwrap_or_default();
        assert_eq!(
            other,
            vec![(LogLevel::Debug, "origin-pull: other thread".to_string())]
        );
        assert!(!host.logged("other thread") && host.logged("origin a is down"));
    }

    #[test]
    fn hostcalls_and_copies_are_counted_and_a_quiet_fake_keeps_nothing() {
        let mut host = FakeHost::new(1);
        let _ = host.shared_set("k", b"12345", None);
        let _ = host.shared_get("k");
        let _ = host.shared_get("missing");
        host.respond(200, &[("a", "bc")], b"body");
        let _ = host.callout_response_headers();
        let _ = host.callout_response_body(2);
        let _ = host.random_u64(); // the VM's own generator: no hostcall
        assert_eq!(host.hostcalls.get(), 5);
        // 5 (value) + ":status" "200" (10) + "a" "bc" (3) + 2 body bytes
        assert_eq!(host.copied.get(), 20);
        assert_eq!(host.shared.borrow().reads.get(), 2);

        host.set_recording(false);
        host.set_log_level(LogLevel::Info);
        // Logging goes through the facade: no hostcall.
        assert!(!log::log_enabled!(log::Level::Debug) && log::log_enabled!(log::Level::Warn));
        log::warn!("kept only when recording");
        host.set_filter_state("key", "value");
        host.send_local_reply(503, "x", &[], b"");
        let token = host.dispatch("c", &[], None, std::time::Duration::from_secs(1));
        assert_eq!(token.ok(), host.last_token());
        let id = host.define_metric(MetricKind::Counter, "requests");
        if let Some(id) = id {
            host.increment_metric(id, 1);
        }
        assert!(host.logs().is_empty() && host.filter_state.is_empty());
        assert!(host.replies.is_empty() && host.callouts.is_empty());
        assert_eq!(host.metric("requests"), Some(0));
        assert_eq!(host.hostcalls.get(), 5 + 5);
    }
}
