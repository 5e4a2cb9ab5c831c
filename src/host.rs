//! The one seam between the logic and Envoy. `filter.rs` implements it over proxy-wasm
//! hostcalls; [`fake::FakeHost`] implements it for unit tests (fixed clock, seeded RNG).

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
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
    /// Adds `delta` to a counter or gauge (negative only for gauges).
    fn increment_metric(&mut self, id: u32, delta: i64);
    /// Sets a gauge.
    fn record_metric(&mut self, id: u32, value: u64);
}

#[cfg(test)]
pub mod fake {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

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
        pub reads: std::cell::Cell<u64>,
    }

    pub struct FakeHost {
        pub now_ms: u64,
        rng_state: u64,
        pub shared: std::rc::Rc<RefCell<SharedStore>>,
        pub callouts: Vec<Callout>,
        pub replies: Vec<LocalReply>,
        pub logs: RefCell<Vec<(LogLevel, String)>>,
        pub fail_dispatch: bool,
        pub filter_state: HashMap<String, String>,
        /// The client's request headers; tests hand them to `Exchange::keep_request_headers`.
        pub request_headers: Vec<(String, String)>,
        /// What the next callout response delivers.
        pub response_headers: Vec<(String, String)>,
        pub response_body: Vec<u8>,
        next_token: u32,
        /// Defined stats, by id - 1: (kind, name, value).
        pub metrics: Vec<(MetricKind, String, i64)>,
        /// Calls of `define_metric` (Envoy keeps an entry per call, even for a known name).
        pub defined: u32,
    }

    impl FakeHost {
        pub fn new(seed: u64) -> FakeHost {
            FakeHost {
                now_ms: 1_700_000_000_000,
                rng_state: seed | 1,
                shared: Default::default(),
                callouts: Vec::new(),
                replies: Vec::new(),
                logs: RefCell::new(Vec::new()),
                fail_dispatch: false,
                filter_state: HashMap::new(),
                request_headers: Vec::new(),
                response_headers: Vec::new(),
                response_body: Vec::new(),
                next_token: 1,
                metrics: Vec::new(),
                defined: 0,
            }
        }

        /// A second worker: same shared data, its own RNG, callouts and replies.
        pub fn sibling(&self, seed: u64) -> FakeHost {
            let mut other = FakeHost::new(seed);
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
            self.logs.borrow().iter().any(|(_, m)| m.contains(needle))
        }
    }

    impl Host for FakeHost {
        fn now_ms(&self) -> u64 {
            self.now_ms
        }
        fn random_u64(&mut self) -> u64 {
            // xorshift64*: deterministic for a seed, good enough for weight statistics.
            let mut x = self.rng_state;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.rng_state = x;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
            let store = self.shared.borrow();
            store.reads.set(store.reads.get() + 1);
            match store.entries.get(key) {
                Some((value, cas)) => (Some(value.clone()), Some(*cas)),
                None => (None, None),
            }
        }
        fn shared_set(
            &mut self,
            key: &str,
            value: &[u8],
            cas: Option<u32>,
        ) -> Result<(), SharedSetError> {
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
            if self.fail_dispatch {
                return Err("InternalFailure".into());
            }
            let token = self.next_token;
            self.next_token += 1;
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
            self.response_headers.clone()
        }
        fn callout_response_body(&self, size: usize) -> Option<Vec<u8>> {
            Some(self.response_body.iter().copied().take(size).collect())
        }
        fn send_local_reply(
            &mut self,
            status: u32,
            details: &str,
            headers: &[(&str, &str)],
            body: &[u8],
        ) {
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
            self.filter_state.insert(key.to_string(), value.to_string());
        }
        fn log(&self, level: LogLevel, message: &str) {
            self.logs.borrow_mut().push((level, message.to_string()));
        }
        fn log_enabled(&self, _level: LogLevel) -> bool {
            true
        }
        fn define_metric(&mut self, kind: MetricKind, name: &str) -> Option<u32> {
            self.defined += 1;
            if let Some(i) = self.metrics.iter().position(|(_, n, _)| n == name) {
                return u32::try_from(i + 1).ok();
            }
            self.metrics.push((kind, name.to_string(), 0));
            u32::try_from(self.metrics.len()).ok()
        }
        fn increment_metric(&mut self, id: u32, delta: i64) {
            if let Some(m) = (id as usize)
                .checked_sub(1)
                .and_then(|i| self.metrics.get_mut(i))
            {
                m.2 += delta;
            }
        }
        fn record_metric(&mut self, id: u32, value: u64) {
            if let Some(m) = (id as usize)
                .checked_sub(1)
                .and_then(|i| self.metrics.get_mut(i))
            {
                m.2 = value as i64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeHost;
    use super::{Host, MetricKind};

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
}
