//! The one seam between the logic and Envoy. `src/filter/` implements it over proxy-wasm
//! hostcalls; `crate::testing::FakeHost` implements it for tests (fixed clock, seeded RNG).

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedSetError {
    /// Somebody else wrote the key since we read it: re-read and retry.
    CasMismatch,
    Other,
}

/// Kind of an Envoy stat defined by the filter (`wasmcustom.<name>` in `/stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
}

/// Ordered by severity (`Debug < Info < Warn < Error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl From<LogLevel> for log::Level {
    fn from(level: LogLevel) -> log::Level {
        match level {
            LogLevel::Debug => log::Level::Debug,
            LogLevel::Info => log::Level::Info,
            LogLevel::Warn => log::Level::Warn,
            LogLevel::Error => log::Level::Error,
        }
    }
}

/// Prefix the loggers put before each line of a `log::…!` macro, so Envoy's log can be
/// grepped for the filter's lines.
pub const LOG_PREFIX: &str = "origin-pull: ";
/// Target of a record whose text is already complete (`Host::log` callers write their own
/// prefix, and a few lines, like the start-up line, have another): no prefix added.
pub const RAW_LOG_TARGET: &str = "origin-pull";

/// The text a logger hands to Envoy (or a test's capture) for a record.
pub fn log_text(record: &log::Record) -> String {
    if record.target() == RAW_LOG_TARGET {
        record.args().to_string()
    } else {
        format!("{LOG_PREFIX}{}", record.args())
    }
}

/// xorshift64*: one step of the generator behind [`Host::random_u64`] (a nonzero `state`
/// stays nonzero). Not cryptographic: it only spreads requests over weighted origins.
pub fn xorshift64star(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

pub trait Host {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    fn random_u64(&mut self) -> u64;

    /// Value and compare-and-swap token of a shared-data key; `(None, None)` when missing.
    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// `cas: None` writes unconditionally.
    fn shared_set(
        &mut self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), SharedSetError>;

    /// Starts an HTTP callout; the answer arrives later as a callout response event.
    fn dispatch(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, String>;
    /// Headers of the callout response being delivered.
    fn callout_response_headers(&self) -> Vec<(String, String)>;
    /// Body of the callout response being delivered (call only after checking its size).
    fn callout_response_body(&self, size: usize) -> Option<Vec<u8>>;

    /// Replaces the response to the client. `details` is what the access log shows as
    /// `%RESPONSE_CODE_DETAILS%` (one token, no spaces).
    fn send_local_reply(
        &mut self,
        status: u32,
        details: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    );

    /// Sets (`Some`) or removes (`None`) a header of the client's request before Envoy routes it
    /// (request phase only). Replaces every copy the client sent.
    fn set_request_header(&mut self, name: &str, value: Option<&str>);

    /// Sets (`Some`) or removes (`None`) a header of the response to the client (response
    /// headers phase only).
    fn set_response_header(&mut self, name: &str, value: Option<&str>);

    /// Filter state readable by Envoy's access log (`%FILTER_STATE(wasm.<key>:PLAIN)%`).
    fn set_filter_state(&mut self, key: &str, value: &str);

    /// Defines (or finds) an Envoy stat; the id stays valid for the VM's life. Define stats
    /// when a configuration is applied, not per request. `None` if Envoy refused it.
    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Option<u32>;
    /// Adds `delta` to a counter. In Envoy the glue keeps it in the VM and adds it to the stat
    /// on the next tick ([`crate::engine::metrics::PendingCounters`]): no hostcall per event.
    fn increment_metric(&mut self, id: u32, delta: i64);
    /// Sets a gauge.
    fn record_metric(&mut self, id: u32, value: u64);
}
