//! What happens to a request, with no proxy-wasm in sight: the listener's [`exchange`] (one
//! request's state machine, callout failover, buckets, mirror), the router failover's
//! [`chain`] (the planned attempts) and [`attempt`] (the per-attempt observer), [`select`]
//! (weighted polling), [`blocks`] (the shared block table), [`classify`] (which answers fail
//! over) and [`verdict`] (when failures block), [`prober`] (active health checks),
//! [`copyback`] (mirror copy-back jobs) and [`metrics`].

pub mod attempt;
pub mod blocks;
pub mod chain;
pub mod classify;
pub mod copyback;
pub mod exchange;
pub mod metrics;
pub mod prober;
pub mod select;
pub mod verdict;
