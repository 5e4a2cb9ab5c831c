//! Plugin configuration: parse (serde, unknown fields rejected) → validate → compile into an
//! immutable [`PluginConfig`] whose per-request lookups need no parsing or formatting.
//! Every error names the domain, the field and the offending value.
//!
//! - `raw`: the document → raw serde structs (fast path, and a tracked path for errors);
//! - `validate`: `parse`, and raw → compiled: top level, domains, failover, detection;
//! - `origin` (`ips`, `domain`, `clusters`), `bucket`, `mirror`, `probe`: one module per part;
//! - `names`: cluster-name checks, the DNS cluster naming scheme and routes to those clusters;
//! - `types`: the compiled structs (plain data, `Mirror` and credential sources included), and
//!   the per-request host lookup;
//! - `show`: `check`'s output, derived from the compiled structs;
//! - `error`: [`ConfigError`] and the context that names domain and field;
//! - `strict_json`: duplicate-key detection on the input.
//!
//! Each module imports only ones before it in: `error`, `address`, `strict_json`, `probe`,
//! `types`, `names`, `raw`, `bucket`, `origin`, `mirror`, `validate`, `show`
//! (`tools/check_imports.py` refuses any cycle).

pub mod address;
mod bucket;
mod error;
mod mirror;
mod names;
mod origin;
mod probe;
mod raw;
mod show;
mod strict_json;
mod types;
mod validate;

pub use error::ConfigError;
pub use mirror::{
    DEFAULT_MAX_COPY_BACKS_PER_MINUTE, DEFAULT_MAX_COPY_BYTES, DEFAULT_MIRROR_ON_STATUS,
    MAX_COPY_BACKS_PER_MINUTE,
};
pub use names::{dns_cluster_name, parse_dns_cluster_name};
pub use probe::Probe;
pub use types::{
    Detection, Domain, EnvoyNames, FailoverMechanism, FailoverPolicy, MetricsSettings, Mirror,
    MirrorMode, OnSourceFailure, OriginKind, OriginSet, PluginConfig, Protocol, Route, Scheme,
    Target,
};
pub use validate::{parse, parse_with_env};

/// Reads a variable of the VM's environment (`vm_config.environment_variables`).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;
/// Shown instead of a secret in `check` output and in error messages.
pub const REDACTED: &str = "(redacted)";

pub const DEFAULT_BLOCK_SECONDS: u64 = 60;
pub const MAX_BLOCK_SECONDS: u64 = 86_400;
/// Timeouts, resets after connect (and 5xx with `block_on_5xx`) from this many distinct
/// requests within the window block an origin (see `verdict`).
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
/// Largest accepted `detection.failure_threshold`: strike lists never hold more entries.
pub const MAX_FAILURE_THRESHOLD: u32 = 100;
pub const DEFAULT_FAILURE_WINDOW_SECONDS: u64 = 10;
pub const MAX_FAILURE_WINDOW_SECONDS: u64 = 3_600;
/// Default of `metrics.max_origin_series`.
pub const DEFAULT_MAX_ORIGIN_SERIES: u32 = 10_000;
/// Largest accepted `metrics.max_origin_series`.
pub const MAX_ORIGIN_SERIES: u32 = 1_000_000;
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 1 << 20;
pub const DEFAULT_MAX_RESPONSE_BODY: u64 = 8 << 20;
/// Envoy's default async-client buffer limit (`http.async_response_buffer_limit`): a larger
/// callout response never reaches the filter, so a larger limit could not be honoured.
pub const MAX_RESPONSE_BODY: u64 = 32 << 20;
pub const MAX_REQUEST_BODY: u64 = 16 << 20;
pub const DEFAULT_MASTER_RETRIES: u32 = 2;
pub const MAX_MASTER_RETRIES: u32 = 10;
pub const DEFAULT_CALLOUT_TIMEOUT_MS: u64 = 10_000;
pub const MIN_CALLOUT_TIMEOUT_MS: u64 = 100;
pub const MAX_CALLOUT_TIMEOUT_MS: u64 = 300_000;
/// Status of the answer to a host no domain entry matches.
pub const DEFAULT_UNKNOWN_HOST_STATUS: u32 = 404;
pub const DEFAULT_CLUSTER_HEADER: &str = "x-origin-pull-cluster";
pub const DEFAULT_IP_CLUSTER_HTTP: &str = "origin_pull_ip_http";
pub const DEFAULT_IP_CLUSTER_HTTPS: &str = "origin_pull_ip_https";

#[cfg(test)]
mod tests;
