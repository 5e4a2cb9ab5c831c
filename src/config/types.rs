//! The compiled configuration: typed, immutable structs whose per-request lookups need no
//! parsing or formatting. Nothing here holds the document it came from.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::rc::Rc;

use super::probe::Probe;
use super::{DEFAULT_BLOCK_SECONDS, DEFAULT_FAILURE_THRESHOLD, DEFAULT_FAILURE_WINDOW_SECONDS};
use crate::s3::bucket::Bucket;
use crate::types::FastHasher;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Https,
    Follow,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
            Protocol::Follow => "follow",
        }
    }
}

pub use crate::types::Scheme;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginKind {
    Ips,
    Domain,
    Clusters,
    Bucket,
}

impl OriginKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OriginKind::Ips => "ips",
            OriginKind::Domain => "domain",
            OriginKind::Clusters => "clusters",
            OriginKind::Bucket => "bucket",
        }
    }
}

/// Everything Envoy needs to send one request to one origin, precomputed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The cluster-selection header to send. Shared (`Rc`): every IP origin of a configuration
    /// names one of two clusters, and an IP's address is its label too, for both client
    /// schemes, so a domain of 4 IPs holds 4 address strings instead of 24 strings.
    pub cluster: Rc<str>,
    /// `IP:PORT` for `x-envoy-original-dst-host`; `None` removes the header.
    pub original_dst: Option<Rc<str>>,
    /// Key in the shared block table and the name shown in logs, debug headers, filter state.
    pub label: Rc<str>,
    /// Scheme towards the origin; `None` for cluster origins, whose transport socket decides.
    pub scheme: Option<Scheme>,
}

#[derive(Debug, Clone)]
pub struct Target {
    pub weight: u32,
    /// Indexed by [`Scheme`] of the client request (only differs for `follow`).
    pub routes: [Route; 2],
}

impl Target {
    pub fn route(&self, scheme: Scheme) -> &Route {
        scheme.pick(&self.routes)
    }
}

#[derive(Debug, Clone)]
pub struct OriginSet {
    pub kind: OriginKind,
    pub protocol: Protocol,
    pub host: Option<String>,
    pub targets: Vec<Target>,
    /// Active health probe of every target (`None`: passive detection only). Boxed: most
    /// domains have none, and every domain holds two sets (96 bytes each unboxed).
    pub probe: Option<Box<Probe>>,
    /// Running sums of the weights, for weighted picks by binary search.
    pub cumulative_weights: Vec<u64>,
    /// Set for `bucket` origins (one target). Boxed: rare, and large to move around.
    pub bucket: Option<Box<Bucket>>,
    /// What the targets do not keep of the origin as written (for `check`'s output).
    pub(super) source: OriginSource,
    /// `probe` was given on this origin set (not inherited from `detection.probe`).
    pub(super) own_probe: bool,
}

/// The parts of an origin set as written that its compiled targets cannot give back.
#[derive(Debug, Clone)]
pub(crate) enum OriginSource {
    Ips,
    Domain(HostPort),
    Clusters,
    Bucket {
        endpoint: HostPort,
        credentials: Option<CredentialSources>,
    },
}

/// A host name with the port as written (`None`: the scheme's default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostPort {
    pub name: String,
    pub port: Option<u16>,
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

impl OriginSet {
    pub fn total_weight(&self) -> u64 {
        self.cumulative_weights.last().copied().unwrap_or(0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverPolicy {
    pub on_4xx: bool,
    pub on_5xx: bool,
    pub on_connect_error: bool,
    pub on_timeout: bool,
    pub status_codes: Vec<u32>,
    /// Shared (`Rc`): most domains use the default list.
    pub methods: Rc<[String]>,
    pub max_request_body_bytes: u64,
    pub max_response_body_bytes: u64,
    pub master_retries: u32,
    pub timeout_ms: u64,
}

impl FailoverPolicy {
    pub fn status_triggers(&self, status: u32) -> bool {
        (self.on_4xx && (400..500).contains(&status))
            || (self.on_5xx && (500..600).contains(&status))
            || self.status_codes.contains(&status)
    }
    /// Whether any status fails over: `status_codes` are validated to lie in 300..=599, so
    /// this is what `status_triggers` says of some status there, without asking 300 of them.
    pub fn triggers_some_status(&self) -> bool {
        self.on_4xx || self.on_5xx || !self.status_codes.is_empty()
    }
    pub fn method_allowed(&self, method: &str) -> bool {
        self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detection {
    /// 0 disables blocking.
    pub block_ms: u64,
    pub block_on_5xx: bool,
    /// Strikes (timeouts, resets after connect, 5xx with `block_on_5xx`) from distinct
    /// requests within `failure_window_ms` that block; connect failures block at once.
    pub failure_threshold: u32,
    pub failure_window_ms: u64,
}

impl Default for Detection {
    fn default() -> Detection {
        Detection {
            block_ms: DEFAULT_BLOCK_SECONDS * 1000,
            block_on_5xx: false,
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            failure_window_ms: DEFAULT_FAILURE_WINDOW_SECONDS * 1000,
        }
    }
}

impl Detection {
    /// The blocking rule in the form `verdict` judges by.
    pub fn rule(&self) -> crate::types::Rule {
        crate::types::Rule {
            block_ms: self.block_ms,
            threshold: self.failure_threshold,
            window_ms: self.failure_window_ms,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Domain {
    pub name: String,
    /// Already swapped when `master_slave_switch` is set.
    pub master: OriginSet,
    pub slave: Option<OriginSet>,
    pub switched: bool,
    pub failover: FailoverPolicy,
    pub detection: Detection,
    /// Mirror back-to-origin of the (bucket) master. Boxed: rare, and large to move around.
    pub mirror: Option<Box<Mirror>>,
    /// `x-envoy-retry-on` for a routed failover (`None`: no condition fails over). See `chain`.
    pub retry_on: Option<&'static str>,
    /// `x-envoy-retriable-status-codes` for a logged chain with other than the usual rules
    /// (`None`: no status). See `chain`.
    pub retriable_codes: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoyNames {
    pub cluster_header: String,
    pub ip_cluster_http: Rc<str>,
    pub ip_cluster_https: Rc<str>,
    /// How a request reaches the slave (or another master): see [`FailoverMechanism`].
    pub failover: FailoverMechanism,
}

/// `envoy.failover`: who re-sends a failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailoverMechanism {
    /// Envoy's router retries the request on a composite cluster (one sub-cluster per attempt):
    /// every answer streams, whatever its size. Buckets and mirrors still use callouts.
    Router,
    /// The filter re-sends the request with an HTTP callout and relays the buffered answer
    /// (at most `max_response_body_bytes`).
    Callout,
}

impl FailoverMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            FailoverMechanism::Router => "router",
            FailoverMechanism::Callout => "callout",
        }
    }
}

/// Which stat series the filter defines (see `src/engine/metrics.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsSettings {
    /// Also count requests (and probe successes) per origin, not only per domain.
    pub per_origin: bool,
    /// Cap on per-origin series per VM.
    pub max_origin_series: u32,
}

#[derive(Debug, Clone)]
pub struct PluginConfig {
    pub domains: Vec<Domain>,
    pub(super) exact: HashMap<String, usize, BuildHasherDefault<FastHasher>>,
    /// Keyed by the suffix including its leading dot (`.example.com`).
    pub(super) wildcards: HashMap<String, usize, BuildHasherDefault<FastHasher>>,
    pub(super) default: Option<usize>,
    pub unknown_host_status: u32,
    pub debug_headers: bool,
    pub envoy: EnvoyNames,
    pub metrics: MetricsSettings,
    /// Some origin is a bucket (or a mirror is configured): the glue then reads `:path`.
    pub uses_buckets: bool,
}

// ---------------------------------------------------------------- lookups

impl PluginConfig {
    /// The settings for a request's host (`:authority`): exact name, then the longest
    /// `*.suffix`, then the `*` default. Port, case and one trailing dot are ignored.
    pub fn domain_for_host(&self, authority: &str) -> Option<&Domain> {
        self.domain_index(authority)
            .and_then(|i| self.domains.get(i))
    }

    /// Index into `domains` of the settings for `authority` (see [`Self::domain_for_host`]).
    pub fn domain_index(&self, authority: &str) -> Option<usize> {
        let host = strip_port(authority);
        let host = host.strip_suffix('.').unwrap_or(host);
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        let index = self.exact.get(host).copied().or_else(|| {
            if self.wildcards.is_empty() {
                return None;
            }
            host.match_indices('.')
                .find_map(|(dot, _)| host.get(dot..).and_then(|s| self.wildcards.get(s)).copied())
        });
        index.or(self.default)
    }

    /// Every cluster name the Envoy configuration must define for this plugin configuration.
    pub fn required_clusters(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .domains
            .iter()
            .flat_map(|d| {
                std::iter::once(&d.master)
                    .chain(d.slave.as_ref())
                    .chain(d.mirror.as_ref().map(|m| &m.source))
            })
            .flat_map(|o| o.targets.iter())
            .flat_map(|t| t.routes.iter().map(|r| r.cluster.to_string()))
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`; a bare IPv6 literal is kept whole.
pub(super) fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => authority.get(..=end).unwrap_or(authority),
            None => authority,
        };
    }
    match authority.rfind(':') {
        Some(colon) if !authority[..colon].contains(':') => &authority[..colon],
        _ => authority,
    }
}

/// Where a credential was read from. The value itself is in the bucket's signer only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CredentialSource {
    /// Written in the configuration.
    Inline,
    /// Read from the VM environment variable of this name.
    Env(String),
}

/// Where each of a bucket's two credentials came from (for `check`'s output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CredentialSources {
    pub access_key_id: CredentialSource,
    pub secret_access_key: CredentialSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorMode {
    Fetch,
    Redirect,
}

impl MirrorMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MirrorMode::Fetch => "fetch",
            MirrorMode::Redirect => "redirect",
        }
    }
}

/// What the client gets when the bucket missed and the source failed too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnSourceFailure {
    /// The bucket's miss (404 by default).
    NotFound,
    /// The source's own answer.
    Source,
    /// Fail over to the slave as for any master error.
    Slave,
}

impl OnSourceFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            OnSourceFailure::NotFound => "not_found",
            OnSourceFailure::Source => "source",
            OnSourceFailure::Slave => "slave",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Mirror {
    pub source: OriginSet,
    pub mode: MirrorMode,
    pub pass_query_string: bool,
    /// Object keys (client path without the leading '/') that are mirrored; empty = all.
    pub key_prefixes: Vec<String>,
    /// Bucket statuses that count as a miss.
    pub on_status: Vec<u32>,
    pub copy_back: bool,
    /// Copy-backs accepted per domain and worker in one minute; past it objects are served but
    /// not stored, so clients cannot grow the bucket faster than this.
    pub max_copy_backs_per_minute: u32,
    pub max_copy_bytes: u64,
    pub on_source_failure: OnSourceFailure,
    /// `scheme://host[:port]` of the source for redirects, by client scheme.
    pub redirect_base: [String; 2],
}
