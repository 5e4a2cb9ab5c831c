//! The one seam between the logic and Envoy. `filter.rs` implements it over proxy-wasm
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

    /// Filter state readable by Envoy's access log (`%FILTER_STATE(wasm.<key>:PLAIN)%`).
    fn set_filter_state(&mut self, key: &str, value: &str);

    fn log(&self, level: LogLevel, message: &str);
    /// Whether Envoy would print a message of this level now: check before formatting one on
    /// a path that can run per request (debug lines are dropped by default).
    fn log_enabled(&self, level: LogLevel) -> bool;

    /// Defines (or finds) an Envoy stat; the id stays valid for the VM's life. Define stats
    /// when a configuration is applied, not per request. `None` if Envoy refused it.
    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Option<u32>;
    /// Adds `delta` to a counter. In Envoy the glue keeps it in the VM and adds it to the stat
    /// on the next tick ([`crate::engine::metrics::PendingCounters`]): no hostcall per event.
    fn increment_metric(&mut self, id: u32, delta: i64);
    /// Sets a gauge.
    fn record_metric(&mut self, id: u32, value: u64);
}
