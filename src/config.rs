//! Plugin configuration: parse (serde, unknown fields rejected) → validate → compile into an
//! immutable [`PluginConfig`] whose per-request lookups need no parsing or formatting.
//! Every error names the domain, the field and the offending value.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::Deserialize;
use serde_json::{json, Value};

mod probe;
mod strict_json;
pub use probe::Probe;
use probe::{compile_probe, RawProbe};

use crate::address::{
    normalize_host_name, parse_domain_entry, parse_ip_entry, validate_host_header,
    validate_host_name, MAX_WEIGHT,
};
use crate::bucket::{Addressing, Bucket};
use crate::mirror::{
    Mirror, MirrorMode, OnSourceFailure, DEFAULT_MAX_COPY_BACKS_PER_MINUTE,
    MAX_COPY_BACKS_PER_MINUTE,
};
use crate::sigv4::{Secret, Signer};

/// Reads a variable of the VM's environment (`vm_config.environment_variables`).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;
pub const DEFAULT_MAX_COPY_BYTES: u64 = 8 << 20;
/// Shown instead of a secret in `check` output and in error messages.
pub const REDACTED: &str = "(redacted)";

pub const DEFAULT_BLOCK_SECONDS: u64 = 60;
pub const MAX_BLOCK_SECONDS: u64 = 86_400;
/// Timeouts, resets after connect (and 5xx with `block_on_5xx`) from this many distinct
/// requests within the window block an origin (see `verdict`).
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
pub const DEFAULT_FAILURE_WINDOW_SECONDS: u64 = 10;
pub const MAX_FAILURE_WINDOW_SECONDS: u64 = 3_600;
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 1 << 20;
pub const DEFAULT_MAX_RESPONSE_BODY: u64 = 8 << 20;
/// Envoy's default async-client buffer limit (`http.async_response_buffer_limit`): a larger
/// callout response never reaches the filter, so a larger limit could not be honoured.
pub const MAX_RESPONSE_BODY: u64 = 32 << 20;
pub const MAX_REQUEST_BODY: u64 = 16 << 20;
pub const DEFAULT_MASTER_RETRIES: u32 = 2;
pub const MAX_MASTER_RETRIES: u32 = 10;
pub const DEFAULT_CALLOUT_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_CLUSTER_HEADER: &str = "x-origin-pull-cluster";
pub const DEFAULT_IP_CLUSTER_HTTP: &str = "origin_pull_ip_http";
pub const DEFAULT_IP_CLUSTER_HTTPS: &str = "origin_pull_ip_https";

// ---------------------------------------------------------------- errors

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub domain: Option<String>,
    pub field: String,
    pub value: Option<String>,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid origin-pull configuration: ")?;
        if let Some(domain) = &self.domain {
            write!(f, "domain {:?}: ", shorten(domain))?;
        }
        write!(f, "field {}", self.field)?;
        if let Some(value) = &self.value {
            write!(f, " value {:?}", shorten(value))?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Control characters escaped (no log injection) and the length bounded.
fn one_line(text: &str) -> String {
    const LIMIT: usize = 400;
    let mut out = String::with_capacity(text.len().min(LIMIT));
    for c in text.chars().take(LIMIT) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if text.chars().count() > LIMIT {
        out.push('…');
    }
    out
}

/// Long values are cut so one hostile field cannot flood the log.
fn shorten(text: &str) -> String {
    const LIMIT: usize = 96;
    if text.chars().count() <= LIMIT {
        return text.to_string();
    }
    let cut: String = text.chars().take(LIMIT).collect();
    format!("{cut}…")
}

struct Ctx<'a> {
    domain: Option<&'a str>,
    prefix: String,
}

impl Ctx<'_> {
    fn err(&self, field: &str, value: Option<String>, reason: impl Into<String>) -> ConfigError {
        let field = match (self.prefix.is_empty(), field.is_empty()) {
            (true, _) => field.to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}.{field}", self.prefix),
        };
        ConfigError {
            domain: self.domain.map(str::to_string),
            field,
            value,
            reason: reason.into(),
        }
    }
    fn nested(&self, prefix: &str) -> Ctx<'_> {
        Ctx {
            domain: self.domain,
            prefix: if self.prefix.is_empty() {
                prefix.to_string()
            } else {
                format!("{}.{prefix}", self.prefix)
            },
        }
    }
}

// ---------------------------------------------------------------- raw (serde) form

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPluginConfig<'a> {
    #[serde(borrow)]
    domains: Vec<RawDomain<'a>>,
    #[serde(default)]
    unknown_host_status: Option<u32>,
    #[serde(default)]
    debug_headers: bool,
    #[serde(default)]
    envoy: Option<RawEnvoy>,
    #[serde(default)]
    metrics: Option<RawMetrics>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    per_origin: Option<bool>,
    max_origin_series: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvoy {
    cluster_header: Option<String>,
    ip_cluster_http: Option<String>,
    ip_cluster_https: Option<String>,
    failover: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
/// Rare and large parts are boxed: the list of raw domains is the parse's peak memory (a wasm
/// VM keeps its high-water mark), 1,792 bytes per domain unboxed, a few hundred boxed.
struct RawDomain<'a> {
    /// Borrowed like `RawOrigin::ips`.
    domain: &'a str,
    #[serde(borrow)]
    master: RawOrigin<'a>,
    #[serde(default, borrow)]
    slave: Option<RawOrigin<'a>>,
    #[serde(default)]
    master_slave_switch: bool,
    #[serde(default)]
    failover: Option<Box<RawFailover>>,
    #[serde(default)]
    detection: Option<Box<RawDetection>>,
    #[serde(default, borrow)]
    mirror: Option<Box<RawMirror<'a>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMirror<'a> {
    #[serde(borrow)]
    source: RawOrigin<'a>,
    mode: Option<String>,
    pass_query_string: Option<bool>,
    key_prefixes: Option<Vec<String>>,
    on_status: Option<Vec<u32>>,
    copy_back: Option<bool>,
    max_copy_backs_per_minute: Option<u32>,
    max_copy_bytes: Option<u64>,
    on_source_failure: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBucket {
    endpoint: String,
    bucket: String,
    region: String,
    key_prefix: Option<String>,
    addressing: Option<String>,
    credentials: Option<RawCredentials>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredentials {
    access_key_id: Option<String>,
    access_key_id_env: Option<String>,
    secret_access_key: Option<String>,
    secret_access_key_env: Option<String>,
}

impl fmt::Debug for RawCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RawCredentials(redacted)")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOrigin<'a> {
    /// Borrowed from the document (no allocation per IP). A string with JSON escapes cannot be
    /// borrowed from the bytes: that document takes the tracked path, which borrows from its
    /// JSON tree instead.
    #[serde(borrow)]
    ips: Option<Vec<&'a str>>,
    domain: Option<String>,
    clusters: Option<Vec<RawCluster>>,
    bucket: Option<Box<RawBucket>>,
    protocol: Option<String>,
    host: Option<String>,
    /// Overrides `detection.probe` for this origin set.
    #[serde(default)]
    probe: Option<Box<RawProbe>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: String,
    weight: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFailover {
    on: Option<Vec<String>>,
    status_codes: Option<Vec<u32>>,
    methods: Option<Vec<String>>,
    max_request_body_bytes: Option<u64>,
    max_response_body_bytes: Option<u64>,
    master_retries: Option<u32>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDetection {
    block_seconds: Option<u64>,
    block_on_5xx: Option<bool>,
    failure_threshold: Option<u32>,
    failure_window_seconds: Option<u64>,
    #[serde(default)]
    probe: Option<Box<RawProbe>>,
}

// ---------------------------------------------------------------- compiled form

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Https,
    Follow,
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

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
            Protocol::Follow => "follow",
        }
    }
}

/// The scheme actually used towards an origin for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http = 0,
    Https = 1,
}

impl Scheme {
    pub fn from_request(scheme: &str) -> Scheme {
        if scheme.eq_ignore_ascii_case("https") {
            Scheme::Https
        } else {
            Scheme::Http
        }
    }
    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginKind {
    Ips,
    Domain,
    Clusters,
    Bucket,
}

/// Everything Envoy needs to send one request to one origin, precomputed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Value of the cluster-selection header.
    pub cluster: String,
    /// `IP:PORT` for `x-envoy-original-dst-host`; `None` removes the header.
    pub original_dst: Option<String>,
    /// Key in the shared block table and the name shown in logs, debug headers, filter state.
    pub label: String,
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
        match scheme {
            Scheme::Http => &self.routes[0],
            Scheme::Https => &self.routes[1],
        }
    }
}

#[derive(Debug, Clone)]
pub struct OriginSet {
    pub kind: OriginKind,
    pub protocol: Protocol,
    pub host: Option<String>,
    pub targets: Vec<Target>,
    /// Active health probe of every target (`None`: passive detection only).
    pub probe: Option<Probe>,
    /// Running sums of the weights, for weighted picks by binary search.
    pub cumulative_weights: Vec<u64>,
    /// Set for `bucket` origins (one target). Boxed: rare, and large to move around.
    pub bucket: Option<Box<Bucket>>,
    /// How `check` shows the origin itself; built only when asked (a Value per origin made a
    /// 10,000-domain configuration slow to apply).
    shown: Shown,
    /// `probe` was given on this origin set (not inherited from `detection.probe`).
    own_probe: bool,
}

/// What the normalized form of an origin set cannot rebuild from the compiled targets.
#[derive(Debug, Clone)]
enum Shown {
    Ips,
    Domain(String),
    Clusters,
    Bucket(Value),
}

impl OriginSet {
    pub fn total_weight(&self) -> u64 {
        self.cumulative_weights.last().copied().unwrap_or(0)
    }

    /// The origin set as `check` prints it (every default filled in).
    fn normalized(&self) -> Value {
        let mut map = serde_json::Map::new();
        match &self.shown {
            Shown::Bucket(shown) => {
                map.insert("bucket".into(), shown.clone());
            }
            Shown::Ips => {
                map.insert("ips".into(), json!(targets_as_text(&self.targets)));
            }
            Shown::Domain(text) => {
                map.insert("domain".into(), json!(text));
            }
            Shown::Clusters => {
                // A single cluster may not carry a weight: print it the way it may be written.
                let weighted = self.targets.len() > 1;
                map.insert(
                    "clusters".into(),
                    json!(self
                        .targets
                        .iter()
                        .map(|t| match weighted {
                            true => json!({"name": t.routes[0].cluster, "weight": t.weight}),
                            false => json!({"name": t.routes[0].cluster}),
                        })
                        .collect::<Vec<_>>()),
                );
            }
        }
        if self.kind != OriginKind::Clusters {
            map.insert("protocol".into(), json!(self.protocol.as_str()));
        }
        map.insert("host".into(), json!(self.host));
        if self.own_probe {
            if let Some(probe) = &self.probe {
                map.insert("probe".into(), probe.normalized());
            }
        }
        Value::Object(map)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverPolicy {
    pub on_4xx: bool,
    pub on_5xx: bool,
    pub on_connect_error: bool,
    pub on_timeout: bool,
    pub status_codes: Vec<u32>,
    pub methods: Vec<String>,
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
    pub fn rule(&self) -> crate::verdict::Rule {
        crate::verdict::Rule {
            block_ms: self.block_ms,
            threshold: self.failure_threshold,
            window_ms: self.failure_window_ms,
        }
    }
}

impl Domain {
    /// The domain-level probe as configured (`detection.probe`), for `check`'s output.
    fn domain_probe(&self) -> Option<&Probe> {
        let own = |set: &OriginSet| !set.own_probe;
        [Some(&self.master), self.slave.as_ref()]
            .into_iter()
            .flatten()
            .find(|s| own(s))
            .and_then(|s| s.probe.as_ref())
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
    pub retry_on: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoyNames {
    pub cluster_header: String,
    pub ip_cluster_http: String,
    pub ip_cluster_https: String,
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

/// Which stat series the filter defines (see `src/metrics.rs`).
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
    exact: HashMap<String, usize>,
    /// Keyed by the suffix including its leading dot (`.example.com`).
    wildcards: HashMap<String, usize>,
    default: Option<usize>,
    pub unknown_host_status: u32,
    pub debug_headers: bool,
    pub envoy: EnvoyNames,
    pub metrics: MetricsSettings,
    /// Some origin is a bucket (or a mirror is configured): the glue then reads `:path`.
    pub uses_buckets: bool,
}

// ---------------------------------------------------------------- parse + validate

/// Parses with the process environment (the VM's `vm_config.environment_variables` in Envoy).
pub fn parse(bytes: &[u8]) -> Result<PluginConfig, ConfigError> {
    parse_with_env(bytes, &|name| std::env::var(name).ok())
}

pub fn parse_with_env(bytes: &[u8], env: EnvLookup) -> Result<PluginConfig, ConfigError> {
    // Fast path: straight from the bytes into the raw structs, no JSON tree and no path
    // tracking (10,000 domains: several times faster). Any refusal, or a document that is not
    // an object (serde would take a list as a struct), goes through the tracked path below,
    // which decides exactly as before and names the failing field.
    let is_object = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    if is_object {
        if let Ok(raw) = serde_json::from_slice::<RawPluginConfig>(bytes) {
            return compile(raw, env);
        }
    }
    parse_tracked(bytes, env)
}

/// The JSON tree + `serde_path_to_error` path: the error names the domain and the field.
fn parse_tracked(bytes: &[u8], env: EnvLookup) -> Result<PluginConfig, ConfigError> {
    let tree: Value = strict_json::from_slice(bytes).map_err(|e| match e {
        strict_json::StrictJsonError::Syntax(e) => ConfigError {
            domain: None,
            field: "(document)".into(),
            value: None,
            reason: format!("not valid JSON: {e}"),
        },
        strict_json::StrictJsonError::DuplicateKey { path, key } => {
            duplicate_key(bytes, &path, &key)
        }
    })?;
    if !tree.is_object() {
        return Err(ConfigError {
            domain: None,
            field: "(document)".into(),
            value: None,
            reason: "must be a JSON object with a `domains` list".into(),
        });
    }
    let raw: RawPluginConfig = serde_path_to_error::deserialize(&tree).map_err(|e| {
        let path = e.path().to_string();
        let (domain, field) = split_domain_path(&tree, &path);
        // serde quotes offending values; a misplaced secret must not reach the log. Both may
        // quote a key of the input (an unknown field): keep the message one line.
        let mut reason = e.into_inner().to_string();
        let mut field = field;
        for secret in secrets_in(&tree) {
            reason = reason.replace(&secret, REDACTED);
            field = field.replace(&secret, REDACTED);
        }
        ConfigError {
            domain,
            field: one_line(&field),
            value: None,
            reason: one_line(&reason),
        }
    })?;
    compile(raw, env)
}

/// An object of the document names `key` twice. Only now is the document read again (the
/// lenient way, last key wins) to name the domain the object belongs to.
fn duplicate_key(bytes: &[u8], path: &str, key: &str) -> ConfigError {
    let tree: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let full = if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    };
    let (domain, mut field) = split_domain_path(&tree, &full);
    for secret in secrets_in(&tree) {
        field = field.replace(&secret, REDACTED);
    }
    ConfigError {
        domain,
        field: one_line(&field),
        value: None,
        reason: "is given twice in the same object (duplicate key); JSON parsers would silently keep only one of them, so the configuration is refused".into(),
    }
}

/// Every value under a `credentials` key (strings and numbers, the names of environment
/// variables and the access key id included: a secret pasted into the wrong field is the likely
/// mistake), and every key there that is not a credential field and not spelled like one
/// (lower case, digits, '_': a misspelled field name stays readable).
fn secrets_in(tree: &Value) -> Vec<String> {
    const FIELDS: [&str; 4] = [
        "access_key_id",
        "access_key_id_env",
        "secret_access_key",
        "secret_access_key_env",
    ];
    fn strings(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::String(s) if !s.is_empty() => out.push(s.clone()),
            Value::Number(n) => out.push(n.to_string()),
            Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
            Value::Object(map) => {
                for (k, v) in map {
                    let field_like = k
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                    if !k.is_empty() && !field_like && !FIELDS.contains(&k.as_str()) {
                        out.push(k.clone());
                    }
                    strings(v, out);
                }
            }
            _ => {}
        }
    }
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            Value::Object(map) => {
                for (k, v) in map {
                    if k == "credentials" {
                        strings(v, out);
                    } else {
                        walk(v, out);
                    }
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(tree, &mut out);
    out
}

/// `domains[2].master.ips[0]` → (name of domains[2], `master.ips[0]`).
fn split_domain_path(tree: &Value, path: &str) -> (Option<String>, String) {
    let Some(rest) = path.strip_prefix("domains[") else {
        return (None, path.to_string());
    };
    let Some((index, field)) = rest.split_once(']') else {
        return (None, path.to_string());
    };
    let name = index
        .parse::<usize>()
        .ok()
        .and_then(|i| tree.get("domains")?.get(i)?.get("domain")?.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| format!("#{index}"));
    let field = field.strip_prefix('.').unwrap_or(field);
    (
        Some(name),
        if field.is_empty() {
            "(domain entry)".into()
        } else {
            field.into()
        },
    )
}

fn compile(raw: RawPluginConfig<'_>, env: EnvLookup) -> Result<PluginConfig, ConfigError> {
    let top = Ctx {
        domain: None,
        prefix: String::new(),
    };
    let envoy = compile_envoy(raw.envoy, &top)?;
    let metrics = compile_metrics(raw.metrics, &top)?;
    if raw.domains.is_empty() {
        return Err(top.err(
            "domains",
            Some("[]".into()),
            "the list is empty; configure at least one accelerated domain",
        ));
    }
    let unknown_host_status = raw.unknown_host_status.unwrap_or(404);
    if !(400..=599).contains(&unknown_host_status) {
        return Err(top.err(
            "unknown_host_status",
            Some(unknown_host_status.to_string()),
            "must be an error status 400..=599",
        ));
    }
    let mut config = PluginConfig {
        domains: Vec::with_capacity(raw.domains.len()),
        exact: HashMap::new(),
        wildcards: HashMap::new(),
        default: None,
        unknown_host_status,
        debug_headers: raw.debug_headers,
        envoy,
        metrics,
        uses_buckets: false,
    };
    for raw_domain in raw.domains {
        let index = config.domains.len();
        let domain = compile_domain(raw_domain, &config.envoy, env)?;
        let ctx = Ctx {
            domain: Some(&domain.name),
            prefix: String::new(),
        };
        let duplicate = if domain.name == "*" {
            config.default.replace(index).is_some()
        } else if let Some(suffix) = domain.name.strip_prefix('*') {
            config.wildcards.insert(suffix.to_string(), index).is_some()
        } else {
            config.exact.insert(domain.name.clone(), index).is_some()
        };
        if duplicate {
            return Err(ctx.err(
                "domain",
                Some(domain.name.clone()),
                "appears more than once; each accelerated domain may be configured once",
            ));
        }
        config.uses_buckets |= domain.master.bucket.is_some()
            || domain.slave.as_ref().is_some_and(|s| s.bucket.is_some())
            || domain.mirror.is_some();
        config.domains.push(domain);
    }
    Ok(config)
}

fn compile_envoy(raw: Option<RawEnvoy>, top: &Ctx) -> Result<EnvoyNames, ConfigError> {
    let raw = raw.unwrap_or(RawEnvoy {
        cluster_header: None,
        ip_cluster_http: None,
        ip_cluster_https: None,
        failover: None,
    });
    let failover = match raw.failover.as_deref() {
        None | Some("router") => FailoverMechanism::Router,
        Some("callout") => FailoverMechanism::Callout,
        Some(other) => {
            return Err(top.err(
                "envoy.failover",
                Some(other.to_string()),
                "must be \"router\" (Envoy's router streams the failover) or \"callout\" (buffered HTTP callouts)",
            ))
        }
    };
    let cluster_header = raw
        .cluster_header
        .unwrap_or_else(|| DEFAULT_CLUSTER_HEADER.into());
    let header_ok = !cluster_header.is_empty()
        && cluster_header
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !cluster_header.starts_with(':');
    if !header_ok {
        return Err(top.err(
            "envoy.cluster_header",
            Some(cluster_header),
            "must be a lowercase HTTP header name (a-z, 0-9, '-', '_')",
        ));
    }
    let ip_cluster_http = raw
        .ip_cluster_http
        .unwrap_or_else(|| DEFAULT_IP_CLUSTER_HTTP.into());
    check_cluster_name(&ip_cluster_http)
        .map_err(|r| top.err("envoy.ip_cluster_http", Some(ip_cluster_http.clone()), r))?;
    let ip_cluster_https = raw
        .ip_cluster_https
        .unwrap_or_else(|| DEFAULT_IP_CLUSTER_HTTPS.into());
    check_cluster_name(&ip_cluster_https)
        .map_err(|r| top.err("envoy.ip_cluster_https", Some(ip_cluster_https.clone()), r))?;
    Ok(EnvoyNames {
        cluster_header,
        ip_cluster_http,
        ip_cluster_https,
        failover,
    })
}

fn compile_metrics(raw: Option<RawMetrics>, top: &Ctx) -> Result<MetricsSettings, ConfigError> {
    let max = crate::metrics::MAX_ORIGIN_SERIES;
    let max_origin_series = raw
        .as_ref()
        .and_then(|m| m.max_origin_series)
        .unwrap_or(crate::metrics::DEFAULT_MAX_ORIGIN_SERIES);
    if max_origin_series > max {
        return Err(top.err(
            "metrics.max_origin_series",
            Some(max_origin_series.to_string()),
            format!("must be 0..={max} (stat series per Envoy worker)"),
        ));
    }
    Ok(MetricsSettings {
        per_origin: raw.and_then(|m| m.per_origin).unwrap_or(false),
        max_origin_series,
    })
}

fn check_cluster_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > 255 {
        return Err("is longer than 255 characters".into());
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or control characters".into());
    }
    Ok(())
}

fn normalize_accelerated_domain(name: &str) -> Result<String, String> {
    if name == "*" {
        return Ok(name.to_string());
    }
    let normalized = normalize_host_name(name);
    let check = normalized.strip_prefix("*.").unwrap_or(&normalized);
    if check.contains('*') {
        return Err(
            "a wildcard is only allowed as a leading '*.' label, or '*' alone for the default"
                .into(),
        );
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or control characters".into());
    }
    if name.contains(':') {
        return Err("must be a host name without a port".into());
    }
    validate_host_name(check)?;
    Ok(normalized)
}

fn compile_domain(
    raw: RawDomain<'_>,
    envoy: &EnvoyNames,
    env: EnvLookup,
) -> Result<Domain, ConfigError> {
    let top = Ctx {
        domain: Some(raw.domain),
        prefix: String::new(),
    };
    let name = normalize_accelerated_domain(raw.domain)
        .map_err(|r| top.err("domain", Some(raw.domain.to_string()), r))?;
    let ctx = Ctx {
        domain: Some(&name),
        prefix: String::new(),
    };
    let mut raw_detection = raw.detection;
    let raw_probe = raw_detection.as_mut().and_then(|d| d.probe.take());
    let detection = compile_detection(raw_detection.map(|d| *d), &ctx.nested("detection"))?;
    let domain_probe = raw_probe
        .map(|p| compile_probe(*p, detection.block_ms, &ctx.nested("detection.probe")))
        .transpose()?;
    let with_probe = |mut raw: RawOrigin<'_>, role: &str| {
        let ctx = ctx.nested(role);
        let own = raw
            .probe
            .take()
            .map(|p| compile_probe(*p, detection.block_ms, &ctx.nested("probe")))
            .transpose()?;
        let mut set = compile_origin(raw, &name, envoy, env, &ctx)?;
        if set.kind == OriginKind::Bucket {
            // A bucket answers an unsigned GET with 403: it would look dead.
            if own.is_some() {
                return Err(ctx.err(
                    "probe",
                    Some("bucket origin".into()),
                    "bucket origins are not probed (a probe is an unsigned GET); remove the probe",
                ));
            }
            return Ok(set);
        }
        set.own_probe = own.is_some();
        set.probe = own.or_else(|| domain_probe.clone());
        Ok::<OriginSet, ConfigError>(set)
    };
    let master = with_probe(raw.master, "master")?;
    let slave = raw.slave.map(|s| with_probe(s, "slave")).transpose()?;
    let mirror = match raw.mirror {
        None => None,
        Some(m) => {
            if master.kind != OriginKind::Bucket {
                return Err(ctx.err(
                    "mirror",
                    Some(format!("master is {}", master.kind.as_str())),
                    "mirror back-to-origin needs a `bucket` master",
                ));
            }
            if raw.master_slave_switch {
                return Err(ctx.err(
                    "mirror",
                    Some("master_slave_switch: true".into()),
                    "the switch would make the mirrored bucket the slave; remove `mirror` or the switch",
                ));
            }
            let mirror = compile_mirror(
                *m,
                &name,
                slave.is_some(),
                envoy,
                env,
                &ctx.nested("mirror"),
            )?;
            let signed = master.bucket.as_ref().is_some_and(|b| b.signer.is_some());
            if mirror.copy_back && !signed {
                return Err(ctx.err(
                    "mirror.copy_back",
                    Some("true".into()),
                    "copying objects back writes to the bucket and needs `credentials` on the master bucket; add them or set copy_back to false",
                ));
            }
            Some(Box::new(mirror))
        }
    };
    let failover = compile_failover(raw.failover.map(|f| *f), &ctx.nested("failover"))?;
    let (master, slave) = match (raw.master_slave_switch, slave) {
        (false, slave) => (master, slave),
        (true, Some(slave)) => (slave, Some(master)),
        (true, None) => {
            return Err(ctx.err(
                "master_slave_switch",
                Some("true".into()),
                "there is no slave origin to switch to; add `slave` or set the switch to false",
            ))
        }
    };
    let mut domain = Domain {
        name,
        master,
        slave,
        switched: raw.master_slave_switch,
        failover,
        detection,
        mirror,
        retry_on: None,
    };
    // The per-request value of Envoy's retry header, computed once.
    domain.retry_on = domain.retry_on();
    Ok(domain)
}

fn compile_origin(
    raw: RawOrigin<'_>,
    accelerated: &str,
    envoy: &EnvoyNames,
    env: EnvLookup,
    ctx: &Ctx,
) -> Result<OriginSet, ConfigError> {
    let given = [
        raw.ips.is_some(),
        raw.domain.is_some(),
        raw.clusters.is_some(),
        raw.bucket.is_some(),
    ]
    .iter()
    .filter(|g| **g)
    .count();
    if given != 1 {
        return Err(ctx.err(
            "",
            Some(format!("{given} of ips/domain/clusters/bucket")),
            "set exactly one of `ips` (several IPs), `domain` (one domain name), `clusters` (Envoy clusters) or `bucket` (object storage)",
        ));
    }
    let protocol = match raw.protocol.as_deref() {
        None | Some("http") => Protocol::Http,
        Some("https") => Protocol::Https,
        Some("follow") => Protocol::Follow,
        Some(other) => {
            return Err(ctx.err(
                "protocol",
                Some(other.into()),
                "must be one of \"http\", \"https\", \"follow\" (same as the client)",
            ))
        }
    };
    if let Some(host) = &raw.host {
        validate_host_header(host).map_err(|r| ctx.err("host", Some(host.clone()), r))?;
    }
    let host = raw.host.map(|h| h.to_ascii_lowercase());
    let mut bucket = None;
    let (kind, targets, shown) = if let Some(raw_bucket) = raw.bucket {
        if let Some(h) = &host {
            return Err(ctx.err(
                "host",
                Some(h.clone()),
                "is the bucket's own host name for `bucket` origins (it is signed); remove it",
            ));
        }
        let (compiled, routes, shown) =
            compile_bucket(*raw_bucket, protocol, env, &ctx.nested("bucket"))?;
        bucket = Some(Box::new(compiled));
        (
            OriginKind::Bucket,
            vec![Target { weight: 1, routes }],
            Shown::Bucket(shown),
        )
    } else if let Some(ips) = raw.ips {
        let targets = compile_ips(&ips, protocol, envoy, ctx)?;
        (OriginKind::Ips, targets, Shown::Ips)
    } else if let Some(domain) = raw.domain {
        let entry =
            parse_domain_entry(&domain).map_err(|r| ctx.err("domain", Some(domain.clone()), r))?;
        if domain_loops(&entry.name, accelerated) {
            return Err(ctx.err(
                "domain",
                Some(domain.clone()),
                format!(
                    "is the accelerated domain '{accelerated}' itself (or matches it); requests would loop back into this edge"
                ),
            ));
        }
        let routes = [Scheme::Http, Scheme::Https].map(|client| {
            let scheme = effective_scheme(protocol, client);
            let port = entry.port.unwrap_or(scheme.default_port());
            Route {
                cluster: dns_cluster_name(scheme, &entry.name, port),
                original_dst: None,
                label: format!("{}:{port}", entry.name),
                scheme: Some(scheme),
            }
        });
        let shown = Shown::Domain(match entry.port {
            Some(p) => format!("{}:{p}", entry.name),
            None => entry.name.clone(),
        });
        (
            OriginKind::Domain,
            vec![Target { weight: 1, routes }],
            shown,
        )
    } else {
        let clusters = raw.clusters.unwrap_or_default();
        if raw.protocol.is_some() {
            return Err(ctx.err(
                "protocol",
                raw.protocol.clone(),
                "is decided by the cluster's own transport socket for `clusters` origins; remove it",
            ));
        }
        let targets = compile_clusters(&clusters, ctx)?;
        (OriginKind::Clusters, targets, Shown::Clusters)
    };
    let mut cumulative_weights = Vec::with_capacity(targets.len());
    let mut sum = 0u64;
    for target in &targets {
        sum += u64::from(target.weight);
        cumulative_weights.push(sum);
    }
    Ok(OriginSet {
        kind,
        protocol,
        host,
        targets,
        probe: None,
        cumulative_weights,
        bucket,
        shown,
        own_probe: false,
    })
}

fn compile_bucket(
    raw: RawBucket,
    protocol: Protocol,
    env: EnvLookup,
    ctx: &Ctx,
) -> Result<(Bucket, [Route; 2], Value), ConfigError> {
    if raw.endpoint.contains("://") {
        return Err(ctx.err(
            "endpoint",
            Some(raw.endpoint.clone()),
            "give the host name without a scheme (set `protocol` for https)",
        ));
    }
    let entry = parse_domain_entry(&raw.endpoint)
        .map_err(|r| ctx.err("endpoint", Some(raw.endpoint.clone()), r))?;
    let name = raw.bucket.as_str();
    let name_ok = (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !name_ok {
        return Err(ctx.err(
            "bucket",
            Some(raw.bucket.clone()),
            "must be 3-63 characters of a-z, 0-9, '.' and '-', starting and ending with a letter or digit",
        ));
    }
    let region_ok = !raw.region.is_empty()
        && raw.region.len() <= 64
        && raw
            .region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !region_ok {
        return Err(ctx.err(
            "region",
            Some(raw.region.clone()),
            "must be a region name such as \"us-east-1\" (letters, digits, '-', '_')",
        ));
    }
    let key_prefix = raw.key_prefix.unwrap_or_default();
    if key_prefix.starts_with('/') || key_prefix.chars().any(char::is_control) {
        return Err(ctx.err(
            "key_prefix",
            Some(key_prefix),
            "must not start with '/' or contain control characters (e.g. \"media/\")",
        ));
    }
    let addressing = match raw.addressing.as_deref() {
        None | Some("virtual-hosted") => Addressing::VirtualHosted,
        Some("path") => Addressing::Path,
        Some(other) => return Err(ctx.err(
            "addressing",
            Some(other.into()),
            "must be \"virtual-hosted\" (bucket.endpoint/key) or \"path\" (endpoint/bucket/key)",
        )),
    };
    let host = match addressing {
        Addressing::VirtualHosted => format!("{name}.{}", entry.name),
        Addressing::Path => entry.name.clone(),
    };
    let authority = match entry.port {
        Some(port) => format!("{host}:{port}"),
        None => host.clone(),
    };
    let routes = [Scheme::Http, Scheme::Https].map(|client| {
        let scheme = effective_scheme(protocol, client);
        let port = entry.port.unwrap_or(scheme.default_port());
        Route {
            cluster: dns_cluster_name(scheme, &host, port),
            original_dst: None,
            label: match addressing {
                Addressing::VirtualHosted => format!("{host}:{port}"),
                Addressing::Path => format!("{host}:{port}/{name}"),
            },
            scheme: Some(scheme),
        }
    });
    let (signer, shown_credentials) = match raw.credentials {
        None => (None, Value::Null),
        Some(c) => {
            let ctx = ctx.nested("credentials");
            let (key_id, key_id_shown) = credential(
                c.access_key_id,
                c.access_key_id_env,
                "access_key_id",
                false,
                env,
                &ctx,
            )?;
            let (secret, secret_shown) = credential(
                c.secret_access_key,
                c.secret_access_key_env,
                "secret_access_key",
                true,
                env,
                &ctx,
            )?;
            let mut shown = serde_json::Map::new();
            shown.extend([key_id_shown, secret_shown]);
            let signer = Signer::new(key_id, Secret::new(secret), raw.region.clone(), "s3".into());
            (Some(signer), Value::Object(shown))
        }
    };
    let shown = json!({
        "endpoint": match entry.port {
            Some(p) => format!("{}:{p}", entry.name),
            None => entry.name.clone(),
        },
        "bucket": name,
        "region": raw.region,
        "key_prefix": key_prefix,
        "addressing": addressing.as_str(),
        "credentials": shown_credentials,
    });
    let bucket = Bucket {
        name: raw.bucket,
        region: raw.region,
        key_prefix,
        addressing,
        authority,
        signer,
    };
    Ok((bucket, routes, shown))
}

/// One credential, given inline (`field`) or by the name of a VM environment variable
/// (`field_env`). Returns the value and how `check` shows it (a secret never in clear).
fn credential(
    inline: Option<String>,
    from_env: Option<String>,
    field: &str,
    secret: bool,
    env: EnvLookup,
    ctx: &Ctx,
) -> Result<(String, (String, Value)), ConfigError> {
    let env_field = format!("{field}_env");
    let (value, shown) = match (inline, from_env) {
        (Some(value), None) => {
            let shown = if secret {
                json!(REDACTED)
            } else {
                json!(value)
            };
            (value, (field.to_string(), shown))
        }
        (None, Some(name)) => {
            let valid_name = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_');
            // The value is redacted even here: a secret pasted into the `_env` field is the
            // likely mistake, and an alphanumeric secret (OSS) is also a valid variable name.
            if !valid_name {
                return Err(ctx.err(
                    &env_field,
                    Some(REDACTED.to_string()),
                    "must be an environment variable name (A-Z, a-z, 0-9, '_'); is a credential in the `_env` field instead of a variable's name?",
                ));
            }
            let Some(value) = env(&name) else {
                return Err(ctx.err(
                    &env_field,
                    Some(REDACTED.to_string()),
                    "the variable it names is not set in the VM's environment; pass it with vm_config.environment_variables (host_env_keys or key_values)",
                ));
            };
            (value, (env_field.clone(), json!(name)))
        }
        (Some(_), Some(_)) => {
            return Err(ctx.err(
                field,
                Some(REDACTED.to_string()),
                format!("set either `{field}` or `{env_field}`, not both"),
            ))
        }
        (None, None) => {
            return Err(ctx.err(
                field,
                None,
                format!("is missing: set `{field}` or `{env_field}` (leave out `credentials` for a public bucket)"),
            ))
        }
    };
    let bad = value.is_empty()
        || value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || (!secret && (c == '/' || c == ',')));
    if bad {
        // Never the value: an access key id with '/' is likely the secret in the wrong field.
        return Err(ctx.err(
            &shown.0,
            Some(REDACTED.to_string()),
            "is empty or contains characters a credential cannot hold (white space, control characters)",
        ));
    }
    Ok((value, shown))
}

fn compile_mirror(
    raw: RawMirror<'_>,
    accelerated: &str,
    has_slave: bool,
    envoy: &EnvoyNames,
    env: EnvLookup,
    ctx: &Ctx,
) -> Result<Mirror, ConfigError> {
    let source_domain = raw.source.domain.clone();
    let source = compile_origin(raw.source, accelerated, envoy, env, &ctx.nested("source"))?;
    if source.kind == OriginKind::Bucket {
        return Err(ctx.err(
            "source",
            Some("bucket".into()),
            "the mirror source must be `ips`, `domain` or `clusters`, not another bucket",
        ));
    }
    let mode = match raw.mode.as_deref() {
        None | Some("fetch") => MirrorMode::Fetch,
        Some("redirect") => MirrorMode::Redirect,
        Some(other) => {
            return Err(ctx.err(
                "mode",
                Some(other.into()),
                "must be \"fetch\" (serve from the source and copy back) or \"redirect\" (answer 302 to the source)",
            ))
        }
    };
    // Redirect URLs name the source as the client will reach it: its Host, else its domain.
    let mut redirect_base = [String::new(), String::new()];
    if mode == MirrorMode::Redirect {
        let Some(domain) = source_domain else {
            return Err(ctx.err(
                "mode",
                Some("redirect".into()),
                "redirect mode needs a `domain` source: clients are sent to it by name",
            ));
        };
        let entry = parse_domain_entry(&domain)
            .map_err(|r| ctx.err("source.domain", Some(domain.clone()), r))?;
        for (slot, client) in redirect_base.iter_mut().zip([Scheme::Http, Scheme::Https]) {
            let scheme = effective_scheme(source.protocol, client);
            let host = source.host.clone().unwrap_or_else(|| match entry.port {
                Some(port) if port != scheme.default_port() => format!("{}:{port}", entry.name),
                _ => entry.name.clone(),
            });
            *slot = format!("{}://{host}", scheme.as_str());
        }
    }
    let mut key_prefixes = raw.key_prefixes.unwrap_or_default();
    for (i, prefix) in key_prefixes.iter_mut().enumerate() {
        if prefix.is_empty() || prefix.starts_with('/') || prefix.chars().any(char::is_control) {
            return Err(ctx.err(
                &format!("key_prefixes[{i}]"),
                Some(prefix.clone()),
                "must be a non-empty object key prefix without a leading '/' (e.g. \"images/\")",
            ));
        }
    }
    let on_status = raw.on_status.unwrap_or_else(|| vec![404]);
    if on_status.is_empty() {
        return Err(ctx.err(
            "on_status",
            Some("[]".into()),
            "the list is empty; the default is [404]",
        ));
    }
    for (i, status) in on_status.iter().enumerate() {
        if !(400..=599).contains(status) {
            return Err(ctx.err(
                &format!("on_status[{i}]"),
                Some(status.to_string()),
                "must be an error status 400..=599 (404 for a missing object; 403 where the bucket hides missing keys)",
            ));
        }
    }
    let max_copy_bytes = raw.max_copy_bytes.unwrap_or(DEFAULT_MAX_COPY_BYTES);
    if !(1..=MAX_RESPONSE_BODY).contains(&max_copy_bytes) {
        return Err(ctx.err(
            "max_copy_bytes",
            Some(max_copy_bytes.to_string()),
            format!("must be 1..={MAX_RESPONSE_BODY} (Envoy's 32 MiB async response buffer limit)"),
        ));
    }
    let on_source_failure = match raw.on_source_failure.as_deref() {
        None | Some("not_found") => OnSourceFailure::NotFound,
        Some("source") => OnSourceFailure::Source,
        Some("slave") if has_slave => OnSourceFailure::Slave,
        Some("slave") => {
            return Err(ctx.err(
                "on_source_failure",
                Some("slave".into()),
                "there is no slave origin; add `slave` or choose \"not_found\" or \"source\"",
            ))
        }
        Some(other) => {
            return Err(ctx.err(
                "on_source_failure",
                Some(other.into()),
                "must be \"not_found\" (the bucket's answer), \"source\" (the source's answer) or \"slave\" (fail over)",
            ))
        }
    };
    let pass_query_string = raw.pass_query_string.unwrap_or(false);
    let copy_back = raw.copy_back.unwrap_or(true);
    let max_copy_backs_per_minute = raw
        .max_copy_backs_per_minute
        .unwrap_or(DEFAULT_MAX_COPY_BACKS_PER_MINUTE);
    if !(1..=MAX_COPY_BACKS_PER_MINUTE).contains(&max_copy_backs_per_minute) {
        return Err(ctx.err(
            "max_copy_backs_per_minute",
            Some(max_copy_backs_per_minute.to_string()),
            format!("must be 1..={MAX_COPY_BACKS_PER_MINUTE} (copy-backs per domain and Envoy worker per minute; `copy_back: false` turns copying off)"),
        ));
    }
    let normalized = json!({
        "source": source.normalized(),
        "mode": mode.as_str(),
        "pass_query_string": pass_query_string,
        "key_prefixes": key_prefixes,
        "on_status": on_status,
        "copy_back": copy_back,
        "max_copy_backs_per_minute": max_copy_backs_per_minute,
        "max_copy_bytes": max_copy_bytes,
        "on_source_failure": on_source_failure.as_str(),
    });
    Ok(Mirror {
        source,
        mode,
        pass_query_string,
        key_prefixes,
        on_status,
        copy_back,
        max_copy_backs_per_minute,
        max_copy_bytes,
        on_source_failure,
        redirect_base,
        normalized,
    })
}

/// IP targets as entries `parse_ip_entry` accepts again: no weight on a single IP or on a list
/// with IPv6 (the rules forbid it; all weights are then 1), and no port where `follow` left it
/// to the client's scheme.
fn targets_as_text(targets: &[Target]) -> Vec<String> {
    let addrs = |t: &Target| {
        t.routes
            .each_ref()
            .map(|r| r.label.parse::<std::net::SocketAddr>().ok())
    };
    let weighted = targets.len() > 1
        && targets
            .iter()
            .all(|t| addrs(t)[0].is_some_and(|a| a.is_ipv4()));
    targets
        .iter()
        .map(|t| {
            let label = &t.routes[0].label;
            let text = match addrs(t) {
                [Some(http), Some(https)] if http.port() != https.port() => http.ip().to_string(),
                _ => label.clone(),
            };
            match (weighted, text.contains(':')) {
                (false, _) => text,
                (true, true) => format!("{text}:{}", t.weight),
                (true, false) => format!("{text}::{}", t.weight),
            }
        })
        .collect()
}

fn effective_scheme(protocol: Protocol, client: Scheme) -> Scheme {
    match protocol {
        Protocol::Http => Scheme::Http,
        Protocol::Https => Scheme::Https,
        Protocol::Follow => client,
    }
}

/// Name of the Envoy DNS cluster a domain origin is routed through (`render` creates it).
pub fn dns_cluster_name(scheme: Scheme, name: &str, port: u16) -> String {
    format!("origin_pull|{}|{name}|{port}", scheme.as_str())
}

/// The parts of a [`dns_cluster_name`]: scheme, origin name, port.
pub fn parse_dns_cluster_name(cluster: &str) -> Option<(Scheme, &str, u16)> {
    let mut parts = cluster.split('|');
    let (prefix, scheme, name, port) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if prefix != "origin_pull" || parts.next().is_some() || name.is_empty() {
        return None;
    }
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return None,
    };
    Some((scheme, name, port.parse().ok()?))
}

fn domain_loops(origin: &str, accelerated: &str) -> bool {
    if accelerated == "*" {
        return false;
    }
    match accelerated.strip_prefix('*') {
        Some(suffix) => origin.ends_with(suffix),
        None => origin == accelerated,
    }
}

fn compile_ips(
    ips: &[&str],
    protocol: Protocol,
    envoy: &EnvoyNames,
    ctx: &Ctx,
) -> Result<Vec<Target>, ConfigError> {
    if ips.is_empty() {
        return Err(ctx.err(
            "ips",
            Some("[]".into()),
            "the list is empty; give at least one IP",
        ));
    }
    let mut entries = Vec::with_capacity(ips.len());
    for (i, text) in ips.iter().enumerate() {
        let entry = parse_ip_entry(text)
            .map_err(|r| ctx.err(&format!("ips[{i}]"), Some(text.to_string()), r))?;
        entries.push(entry);
    }
    let weighted = entries.iter().filter(|e| e.weight.is_some()).count();
    if entries.len() == 1 && weighted == 1 {
        return Err(ctx.err(
            "ips[0]",
            ips.first().map(|t| t.to_string()),
            "a single origin IP may not carry a weight",
        ));
    }
    if weighted != 0 && weighted != entries.len() {
        let (i, text) = ips
            .iter()
            .enumerate()
            .zip(&entries)
            .find(|(_, e)| e.weight.is_none())
            .map(|((i, t), _)| (i, t.to_string()))
            .unwrap_or((0, String::new()));
        let reason = if entries.iter().any(|e| e.ip.is_ipv6()) {
            "either every IP has a weight or none does; IPv6 addresses cannot carry one, so do not weight a list that contains IPv6"
        } else {
            "either every IP has a weight or none does"
        };
        return Err(ctx.err(&format!("ips[{i}]"), Some(text), reason));
    }
    if weighted != 0 && entries.iter().all(|e| e.weight == Some(0)) {
        return Err(ctx.err(
            "ips",
            Some(ips.join(",")),
            "every weight is 0, so no IP could ever be picked",
        ));
    }
    // Origin sets are small: a linear scan beats hashing (a set per domain, 10,000 domains).
    let mut seen: Vec<std::net::SocketAddr> = Vec::with_capacity(entries.len());
    let mut targets = Vec::with_capacity(entries.len());
    let route = |entry: &crate::address::IpEntry, client: Scheme| {
        let scheme = effective_scheme(protocol, client);
        let port = entry.port.unwrap_or(scheme.default_port());
        let address = crate::address::socket_text(entry.ip, port);
        Route {
            cluster: match scheme {
                Scheme::Http => envoy.ip_cluster_http.clone(),
                Scheme::Https => envoy.ip_cluster_https.clone(),
            },
            original_dst: Some(address.clone()),
            label: address,
            scheme: Some(scheme),
        }
    };
    for (i, entry) in entries.iter().enumerate() {
        let http = route(entry, Scheme::Http);
        // Only `follow` routes the two client schemes differently: format the address once.
        let https = match protocol {
            Protocol::Follow => route(entry, Scheme::Https),
            _ => http.clone(),
        };
        let routes = [http, https];
        let http_port = entry
            .port
            .unwrap_or(effective_scheme(protocol, Scheme::Http).default_port());
        let addr = std::net::SocketAddr::new(entry.ip, http_port);
        if seen.contains(&addr) {
            return Err(ctx.err(
                &format!("ips[{i}]"),
                ips.get(i).map(|t| t.to_string()),
                "is listed twice; list each IP:PORT once and use weights instead",
            ));
        }
        seen.push(addr);
        targets.push(Target {
            weight: entry.weight.unwrap_or(1),
            routes,
        });
    }
    Ok(targets)
}

fn compile_clusters(clusters: &[RawCluster], ctx: &Ctx) -> Result<Vec<Target>, ConfigError> {
    if clusters.is_empty() {
        return Err(ctx.err(
            "clusters",
            Some("[]".into()),
            "the list is empty; give at least one cluster",
        ));
    }
    let weighted = clusters.iter().filter(|c| c.weight.is_some()).count();
    if clusters.len() == 1 && weighted == 1 {
        return Err(ctx.err(
            "clusters[0].weight",
            clusters
                .first()
                .and_then(|c| c.weight)
                .map(|w| w.to_string()),
            "a single origin cluster may not carry a weight",
        ));
    }
    if weighted != 0 && weighted != clusters.len() {
        return Err(ctx.err(
            "clusters",
            None,
            "either every cluster has a weight or none does",
        ));
    }
    let mut seen = HashSet::new();
    let mut targets = Vec::with_capacity(clusters.len());
    for (i, cluster) in clusters.iter().enumerate() {
        check_cluster_name(&cluster.name).map_err(|r| {
            ctx.err(
                &format!("clusters[{i}].name"),
                Some(cluster.name.clone()),
                r,
            )
        })?;
        if !seen.insert(cluster.name.as_str()) {
            return Err(ctx.err(
                &format!("clusters[{i}].name"),
                Some(cluster.name.clone()),
                "is listed twice",
            ));
        }
        let weight = cluster.weight.unwrap_or(1);
        if weight > MAX_WEIGHT {
            return Err(ctx.err(
                &format!("clusters[{i}].weight"),
                Some(weight.to_string()),
                format!("is out of range 0..={MAX_WEIGHT}"),
            ));
        }
        let route = Route {
            cluster: cluster.name.clone(),
            original_dst: None,
            label: cluster.name.clone(),
            scheme: None,
        };
        targets.push(Target {
            weight,
            routes: [route.clone(), route],
        });
    }
    if targets.iter().all(|t| t.weight == 0) {
        return Err(ctx.err(
            "clusters",
            None,
            "every weight is 0, so no cluster could ever be picked",
        ));
    }
    Ok(targets)
}

fn compile_failover(raw: Option<RawFailover>, ctx: &Ctx) -> Result<FailoverPolicy, ConfigError> {
    let raw = raw.unwrap_or(RawFailover {
        on: None,
        status_codes: None,
        methods: None,
        max_request_body_bytes: None,
        max_response_body_bytes: None,
        master_retries: None,
        timeout_ms: None,
    });
    let mut policy = FailoverPolicy {
        on_4xx: true,
        on_5xx: true,
        on_connect_error: true,
        on_timeout: true,
        status_codes: Vec::new(),
        methods: vec!["GET".into(), "HEAD".into()],
        max_request_body_bytes: DEFAULT_MAX_REQUEST_BODY,
        max_response_body_bytes: DEFAULT_MAX_RESPONSE_BODY,
        master_retries: DEFAULT_MASTER_RETRIES,
        timeout_ms: DEFAULT_CALLOUT_TIMEOUT_MS,
    };
    if let Some(on) = raw.on {
        policy.on_4xx = false;
        policy.on_5xx = false;
        policy.on_connect_error = false;
        policy.on_timeout = false;
        for (i, class) in on.iter().enumerate() {
            match class.as_str() {
                "4xx" => policy.on_4xx = true,
                "5xx" => policy.on_5xx = true,
                "connect_error" => policy.on_connect_error = true,
                "timeout" => policy.on_timeout = true,
                other => {
                    return Err(ctx.err(
                        &format!("on[{i}]"),
                        Some(other.into()),
                        "must be one of \"4xx\", \"5xx\", \"connect_error\", \"timeout\" (explicit codes go in `status_codes`)",
                    ))
                }
            }
        }
    }
    if let Some(codes) = raw.status_codes {
        for (i, code) in codes.iter().enumerate() {
            if !(300..=599).contains(code) {
                return Err(ctx.err(
                    &format!("status_codes[{i}]"),
                    Some(code.to_string()),
                    "must be a status code 300..=599",
                ));
            }
        }
        policy.status_codes = codes;
    }
    if let Some(methods) = raw.methods {
        let mut normalized = Vec::with_capacity(methods.len());
        for (i, method) in methods.iter().enumerate() {
            let upper = method.to_ascii_uppercase();
            if upper.is_empty()
                || !upper
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
            {
                return Err(ctx.err(
                    &format!("methods[{i}]"),
                    Some(method.clone()),
                    "is not an HTTP method name",
                ));
            }
            if upper == "CONNECT" {
                return Err(ctx.err(
                    &format!("methods[{i}]"),
                    Some(method.clone()),
                    "CONNECT tunnels cannot be failed over",
                ));
            }
            normalized.push(upper);
        }
        policy.methods = normalized;
    }
    if let Some(bytes) = raw.max_request_body_bytes {
        if bytes > MAX_REQUEST_BODY {
            return Err(ctx.err(
                "max_request_body_bytes",
                Some(bytes.to_string()),
                format!("must be at most {MAX_REQUEST_BODY} (16 MiB)"),
            ));
        }
        policy.max_request_body_bytes = bytes;
    }
    if let Some(bytes) = raw.max_response_body_bytes {
        if !(1..=MAX_RESPONSE_BODY).contains(&bytes) {
            return Err(ctx.err(
                "max_response_body_bytes",
                Some(bytes.to_string()),
                format!(
                    "must be 1..={MAX_RESPONSE_BODY} (Envoy's 32 MiB async response buffer limit)"
                ),
            ));
        }
        policy.max_response_body_bytes = bytes;
    }
    if let Some(retries) = raw.master_retries {
        if retries > MAX_MASTER_RETRIES {
            return Err(ctx.err(
                "master_retries",
                Some(retries.to_string()),
                format!("must be 0..={MAX_MASTER_RETRIES}"),
            ));
        }
        policy.master_retries = retries;
    }
    if let Some(ms) = raw.timeout_ms {
        if !(100..=300_000).contains(&ms) {
            return Err(ctx.err(
                "timeout_ms",
                Some(ms.to_string()),
                "must be 100..=300000 milliseconds",
            ));
        }
        policy.timeout_ms = ms;
    }
    Ok(policy)
}

fn compile_detection(raw: Option<RawDetection>, ctx: &Ctx) -> Result<Detection, ConfigError> {
    let seconds = raw
        .as_ref()
        .and_then(|d| d.block_seconds)
        .unwrap_or(DEFAULT_BLOCK_SECONDS);
    if seconds > MAX_BLOCK_SECONDS {
        return Err(ctx.err(
            "block_seconds",
            Some(seconds.to_string()),
            format!("must be 0..={MAX_BLOCK_SECONDS} (0 disables blocking)"),
        ));
    }
    let threshold = raw
        .as_ref()
        .and_then(|d| d.failure_threshold)
        .unwrap_or(DEFAULT_FAILURE_THRESHOLD);
    let max_threshold = crate::verdict::MAX_THRESHOLD;
    if !(1..=max_threshold).contains(&threshold) {
        return Err(ctx.err(
            "failure_threshold",
            Some(threshold.to_string()),
            format!("must be 1..={max_threshold} (1 blocks on the first timeout or reset)"),
        ));
    }
    let window = raw
        .as_ref()
        .and_then(|d| d.failure_window_seconds)
        .unwrap_or(DEFAULT_FAILURE_WINDOW_SECONDS);
    if !(1..=MAX_FAILURE_WINDOW_SECONDS).contains(&window) {
        return Err(ctx.err(
            "failure_window_seconds",
            Some(window.to_string()),
            format!("must be 1..={MAX_FAILURE_WINDOW_SECONDS}"),
        ));
    }
    Ok(Detection {
        block_ms: seconds * 1000,
        block_on_5xx: raw.and_then(|d| d.block_on_5xx).unwrap_or(false),
        failure_threshold: threshold,
        failure_window_ms: window * 1000,
    })
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
            .flat_map(|t| t.routes.iter().map(|r| r.cluster.clone()))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The configuration with every default filled in, as `check` prints it.
    pub fn normalized(&self) -> Value {
        let domains: Vec<Value> = self
            .domains
            .iter()
            .map(|d| {
                let (master, slave) = match (d.switched, &d.slave) {
                    (true, Some(original_master)) => (original_master, Some(&d.master)),
                    _ => (&d.master, d.slave.as_ref()),
                };
                let f = &d.failover;
                let mut on = Vec::new();
                for (set, name) in [
                    (f.on_4xx, "4xx"),
                    (f.on_5xx, "5xx"),
                    (f.on_connect_error, "connect_error"),
                    (f.on_timeout, "timeout"),
                ] {
                    if set {
                        on.push(name);
                    }
                }
                let mut detection = json!({
                    "block_seconds": d.detection.block_ms / 1000,
                    "block_on_5xx": d.detection.block_on_5xx,
                    "failure_threshold": d.detection.failure_threshold,
                    "failure_window_seconds": d.detection.failure_window_ms / 1000,
                });
                if let Some(probe) = d.domain_probe() {
                    if let Some(map) = detection.as_object_mut() {
                        map.insert("probe".into(), probe.normalized());
                    }
                }
                json!({
                    "domain": d.name,
                    "master": master.normalized(),
                    "slave": slave.map(OriginSet::normalized),
                    "master_slave_switch": d.switched,
                    "failover": {
                        "on": on,
                        "status_codes": f.status_codes,
                        "methods": f.methods,
                        "max_request_body_bytes": f.max_request_body_bytes,
                        "max_response_body_bytes": f.max_response_body_bytes,
                        "master_retries": f.master_retries,
                        "timeout_ms": f.timeout_ms,
                    },
                    "detection": detection,
                    "mirror": d.mirror.as_ref().map(|m| &m.normalized),
                })
            })
            .collect();
        json!({
            "domains": domains,
            "unknown_host_status": self.unknown_host_status,
            "debug_headers": self.debug_headers,
            "envoy": {
                "cluster_header": self.envoy.cluster_header,
                "ip_cluster_http": self.envoy.ip_cluster_http,
                "ip_cluster_https": self.envoy.ip_cluster_https,
                "failover": self.envoy.failover.as_str(),
            },
            "metrics": {
                "per_origin": self.metrics.per_origin,
                "max_origin_series": self.metrics.max_origin_series,
            },
        })
    }
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`; a bare IPv6 literal is kept whole.
fn strip_port(authority: &str) -> &str {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<PluginConfig, ConfigError> {
        parse(text.as_bytes())
    }

    #[test]
    fn escaped_strings_parse_like_plain_ones() {
        // The fast path borrows strings from the bytes; escapes take the tracked path.
        let plain = parse_str(
            r#"{"domains":[{"domain":"www.test.com","master":{"ips":["127.0.0.2:80:1","127.0.0.3:80:2"]}}]}"#,
        )
        .unwrap();
        let escaped = parse_str(
            r#"{"domains":[{"domain":"www.test.com","master":{"ips":["127.0.0.2:80:1","127.0.0.3:80:2"]}}]}"#,
        )
        .unwrap();
        assert_eq!(plain.normalized(), escaped.normalized());
        let err = parse_str(
            r#"{"domains":[{"domain":"www.test.com","master":{"ips":["127.0.0.2:0"]}}]}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid origin-pull configuration: domain \"www.test.com\": field master.ips[0] value \"127.0.0.2:0\": port 0 is not allowed: ports are 1..=65535"
        );
    }

    #[test]
    fn defaults_are_the_vendors() {
        let cfg =
            parse_str(r#"{"domains":[{"domain":"www.test.com","master":{"ips":["1.1.1.1"]}}]}"#)
                .unwrap();
        let d = cfg.domain_for_host("www.test.com").unwrap();
        assert!(d.failover.on_4xx && d.failover.on_5xx && d.failover.on_connect_error);
        assert_eq!(d.failover.methods, vec!["GET", "HEAD"]);
        assert_eq!(d.detection.block_ms, 60_000);
        assert!(!d.detection.block_on_5xx);
        assert_eq!(d.detection.failure_threshold, 3);
        assert_eq!(d.detection.failure_window_ms, 10_000);
        let route = d.master.targets[0].route(Scheme::Http);
        assert_eq!(route.cluster, "origin_pull_ip_http");
        assert_eq!(route.original_dst.as_deref(), Some("1.1.1.1:80"));
        assert_eq!(cfg.unknown_host_status, 404);
        assert!(!cfg.uses_buckets);
    }

    #[test]
    fn host_lookup_exact_wildcard_default() {
        let cfg = parse_str(
            r#"{"domains":[
              {"domain":"www.test.com","master":{"ips":["1.1.1.1"]}},
              {"domain":"*.test.com","master":{"ips":["2.2.2.2"]}},
              {"domain":"*.img.test.com","master":{"ips":["3.3.3.3"]}},
              {"domain":"*","master":{"ips":["4.4.4.4"]}}
            ]}"#,
        )
        .unwrap();
        let name = |h: &str| cfg.domain_for_host(h).map(|d| d.name.clone());
        assert_eq!(name("WWW.Test.com.:8080").as_deref(), Some("www.test.com"));
        assert_eq!(name("a.test.com").as_deref(), Some("*.test.com"));
        assert_eq!(name("a.b.test.com").as_deref(), Some("*.test.com"));
        assert_eq!(name("x.img.test.com").as_deref(), Some("*.img.test.com"));
        assert_eq!(name("test.com").as_deref(), Some("*"));
        assert_eq!(name("[::1]:80").as_deref(), Some("*"));
        let no_default =
            parse_str(r#"{"domains":[{"domain":"www.test.com","master":{"ips":["1.1.1.1"]}}]}"#)
                .unwrap();
        assert!(no_default.domain_for_host("other.com").is_none());
        assert!(no_default.domain_for_host("").is_none());
    }

    #[test]
    fn follow_and_ports() {
        let cfg = parse_str(
            r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1","2.2.2.2:8443"],"protocol":"follow"},
                "slave":{"domain":"b.com","protocol":"follow"}}]}"#,
        )
        .unwrap();
        let d = cfg.domain_for_host("a.com").unwrap();
        let t = &d.master.targets[0];
        assert_eq!(
            t.route(Scheme::Http).original_dst.as_deref(),
            Some("1.1.1.1:80")
        );
        assert_eq!(
            t.route(Scheme::Https).original_dst.as_deref(),
            Some("1.1.1.1:443")
        );
        assert_eq!(t.route(Scheme::Https).cluster, "origin_pull_ip_https");
        let t = &d.master.targets[1];
        assert_eq!(
            t.route(Scheme::Http).original_dst.as_deref(),
            Some("2.2.2.2:8443")
        );
        let s = &d.slave.as_ref().unwrap().targets[0];
        assert_eq!(s.route(Scheme::Http).cluster, "origin_pull|http|b.com|80");
        assert_eq!(
            s.route(Scheme::Https).cluster,
            "origin_pull|https|b.com|443"
        );
        assert_eq!(s.route(Scheme::Https).original_dst, None);
    }

    #[test]
    fn quoted_input_keys_cannot_break_the_log_line() {
        // Found by the fuzzer: a key with an escaped newline was printed raw.
        let key = format!("unkno\\n{}", "w".repeat(5_000));
        let text = format!(r#"{{"domains":[],"{key}":1}}"#);
        let message = parse_str(&text).unwrap_err().to_string();
        assert!(!message.contains('\n'), "{message}");
        assert!(message.contains(r"unkno\n"), "{message}");
        assert!(message.len() < 1_000, "{} bytes", message.len());
    }

    #[test]
    fn normalized_configurations_are_accepted_again() {
        // Found by the fuzzer: `check` printed weights on single IPs/clusters and IPv6 lists.
        for (origin, expected) in [
            (r#"{"ips":["1.1.1.1"]}"#, json!(["1.1.1.1:80"])),
            (
                r#"{"ips":["1.1.1.1","2.2.2.2:81"]}"#,
                json!(["1.1.1.1:80:1", "2.2.2.2:81:1"]),
            ),
            (
                r#"{"ips":["2001:db8::1","1.1.1.1"]}"#,
                json!(["[2001:db8::1]:80", "1.1.1.1:80"]),
            ),
            (
                r#"{"ips":["1.1.1.1::1","2.2.2.2::3"],"protocol":"follow"}"#,
                json!(["1.1.1.1::1", "2.2.2.2::3"]),
            ),
            (
                r#"{"ips":["1.1.1.1"],"protocol":"follow"}"#,
                json!(["1.1.1.1"]),
            ),
            (r#"{"clusters":[{"name":"c"}]}"#, json!([{"name": "c"}])),
        ] {
            let text = format!(r#"{{"domains":[{{"domain":"a.com","master":{origin}}}]}}"#);
            let n = parse_str(&text).unwrap().normalized();
            let master = &n["domains"][0]["master"];
            assert_eq!(
                master.get("ips").or(master.get("clusters")),
                Some(&expected),
                "{origin}"
            );
            let again = parse(&serde_json::to_vec(&n).unwrap());
            assert!(again.is_ok(), "{origin}: {again:?}");
        }
    }

    #[test]
    fn switch_swaps_roles() {
        let cfg = parse_str(
            r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]},"slave":{"ips":["2.2.2.2"]},
                "master_slave_switch":true}]}"#,
        )
        .unwrap();
        let d = cfg.domain_for_host("a.com").unwrap();
        assert_eq!(d.master.targets[0].routes[0].label, "2.2.2.2:80");
        assert_eq!(
            d.slave.as_ref().unwrap().targets[0].routes[0].label,
            "1.1.1.1:80"
        );
        // normalized output shows the configuration as written, not swapped
        let n = cfg.normalized();
        assert_eq!(n["domains"][0]["master"]["ips"][0], "1.1.1.1:80");
    }

    #[test]
    fn cluster_origins() {
        let cfg = parse_str(
            r#"{"domains":[{"domain":"a.com","master":{"clusters":[{"name":"outbound|80||a.svc","weight":1},{"name":"b","weight":3}]}}]}"#,
        )
        .unwrap();
        let d = cfg.domain_for_host("a.com").unwrap();
        assert_eq!(d.master.cumulative_weights, vec![1, 4]);
        assert_eq!(cfg.required_clusters(), vec!["b", "outbound|80||a.svc"]);
    }

    /// Every SPEC rule, and the shape of the message: domain, field, value, reason.
    #[test]
    fn invalid_configurations_name_domain_field_value() {
        let d = |origin: &str| {
            format!(r#"{{"domains":[{{"domain":"www.test.com","master":{origin}}}]}}"#)
        };
        let cases: Vec<(String, &str)> = vec![
            ("{".into(), "field (document): not valid JSON"),
            ("[]".into(), "field (document)"),
            (r#"{"domains":[]}"#.into(), "field domains value \"[]\": the list is empty"),
            (r#"{"domains":[],"x":1}"#.into(), "field x: unknown field `x`"),
            (d(r#"{"ips":["1.1.1.1:8080:5"]}"#), "domain \"www.test.com\": field master.ips[0] value \"1.1.1.1:8080:5\": a single origin IP may not carry a weight"),
            (d(r#"{"ips":["1.1.1.1:80:1","2.2.2.2"]}"#), "field master.ips[1] value \"2.2.2.2\": either every IP has a weight or none does"),
            (d(r#"{"ips":["1.1.1.1::1001","2.2.2.2::1"]}"#), "field master.ips[0] value \"1.1.1.1::1001\": weight 1001 is out of range 0..=1000"),
            (d(r#"{"ips":["1.1.1.1:0"]}"#), "field master.ips[0] value \"1.1.1.1:0\": port 0 is not allowed: ports are 1..=65535"),
            (d(r#"{"ips":["1.1.1.1:70000"]}"#), "port 70000 is out of range 1..=65535"),
            (d(r#"{"ips":["[2001:db8::1]:80:5","1.1.1.1:80:5"]}"#), "field master.ips[0] value \"[2001:db8::1]:80:5\": IPv6 addresses may not carry a weight"),
            (d(r#"{"ips":["2001:db8::1","1.1.1.1::5"]}"#), "field master.ips[0] value \"2001:db8::1\": either every IP has a weight or none does; IPv6"),
            (d(r#"{"ips":["1.1.1.1::0","2.2.2.2::0"]}"#), "field master.ips value \"1.1.1.1::0,2.2.2.2::0\": every weight is 0"),
            (d(r#"{"ips":[]}"#), "field master.ips value \"[]\": the list is empty"),
            (d(r#"{"ips":["1.1.1.1","1.1.1.1:80"]}"#), "field master.ips[1] value \"1.1.1.1:80\": is listed twice"),
            (d(r#"{"ips":["origin.example.com"]}"#), "field master.ips[0] value \"origin.example.com\": is a domain name"),
            (d(r#"{"domain":"origin.example.com:80:5"}"#), "field master.domain value \"origin.example.com:80:5\": a domain origin may not carry a weight"),
            (d(r#"{"domain":"origin.example.com:0"}"#), "field master.domain value \"origin.example.com:0\": port 0 is not allowed"),
            (d(r#"{"domain":"WWW.test.com"}"#), "field master.domain value \"WWW.test.com\": is the accelerated domain 'www.test.com' itself"),
            (d(r#"{"domain":"1.2.3.4"}"#), "field master.domain value \"1.2.3.4\": is an IP address"),
            (d(r#"{"ips":["1.1.1.1"],"domain":"a.com"}"#), "field master value \"2 of ips/domain/clusters/bucket\": set exactly one of"),
            (d(r#"{}"#), "field master value \"0 of ips/domain/clusters/bucket\""),
            (d(r#"{"ips":["1.1.1.1"],"protocol":"ftp"}"#), "field master.protocol value \"ftp\": must be one of"),
            (d(r#"{"ips":["1.1.1.1"],"host":"a.com\r\nx: y"}"#), "field master.host value \"a.com\\r\\nx: y\": contains whitespace or control characters"),
            (d(r#"{"ips":["1.1.1.1"],"host":"a .com"}"#), "field master.host value \"a .com\": contains whitespace"),
            (d(r#"{"ips":["1.1.1.1"],"weight":3}"#), "field master.weight: unknown field `weight`"),
            (d(r#"{"ips":"1.1.1.1"}"#), "field master.ips: invalid type: string \"1.1.1.1\", expected a sequence"),
            (d(r#"{"clusters":[{"name":"a","weight":2}]}"#), "field master.clusters[0].weight value \"2\": a single origin cluster may not carry a weight"),
            (d(r#"{"clusters":[{"name":"a"}],"protocol":"https"}"#), "field master.protocol value \"https\": is decided by the cluster"),
            (d(r#"{"clusters":[{"name":""}]}"#), "field master.clusters[0].name value \"\": is empty"),
            (r#"{"domains":[{"domain":"*.test.com","master":{"domain":"o.test.com"}}]}"#.into(), "domain \"*.test.com\": field master.domain value \"o.test.com\": is the accelerated domain"),
            (r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]}},{"domain":"A.com","master":{"ips":["1.1.1.1"]}}]}"#.into(), "domain \"a.com\": field domain value \"a.com\": appears more than once"),
            (r#"{"domains":[{"domain":"a.*.com","master":{"ips":["1.1.1.1"]}}]}"#.into(), "domain \"a.*.com\": field domain value \"a.*.com\": a wildcard is only allowed"),
            (r#"{"domains":[{"domain":"a.com:80","master":{"ips":["1.1.1.1"]}}]}"#.into(), "must be a host name without a port"),
            (r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]},"master_slave_switch":true}]}"#.into(), "domain \"a.com\": field master_slave_switch value \"true\": there is no slave origin"),
            (r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]},"failover":{"on":["4xx","404"]}}]}"#.into(), "field failover.on[1] value \"404\": must be one of"),
            (r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]},"failover":{"status_codes":[200]}}]}"#.into(), "field failover.status_codes[0] value \"200\": must be a status code 300..=599"),
            (r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]},"failover":{"max_response_body_bytes":99999999999}}]}"#.into(), "field failover.max_response_body_bytes value \"99999999999\": must be 1..=33554432"),
            (r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]},"failover":{"methods":["GET","PO ST"]}}]}"#.into(), "field failover.methods[1] value \"PO ST\": is not an HTTP method name"),
            (r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]},"detection":{"block_seconds":86401}}]}"#.into(), "field detection.block_seconds value \"86401\": must be 0..=86400"),
            (r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]},"detection":{"block_seconds":-1}}]}"#.into(), "field detection.block_seconds: invalid value: integer `-1`"),
            (r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]},"detection":{"failure_threshold":0}}]}"#.into(), "domain \"a.com\": field detection.failure_threshold value \"0\": must be 1..=100"),
            (r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]},"detection":{"failure_threshold":101}}]}"#.into(), "field detection.failure_threshold value \"101\": must be 1..=100"),
            (r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]},"detection":{"failure_window_seconds":0}}]}"#.into(), "field detection.failure_window_seconds value \"0\": must be 1..=3600"),
            (r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]},"detection":{"failure_window_seconds":3601}}]}"#.into(), "field detection.failure_window_seconds value \"3601\": must be 1..=3600"),
            (r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]}}],"unknown_host_status":200}"#.into(), "field unknown_host_status value \"200\": must be an error status"),
            (r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]}}],"envoy":{"cluster_header":"X-Bad Header"}}"#.into(), "field envoy.cluster_header value \"X-Bad Header\""),
            (r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]},"slave":{"ips":["1.1.1.1:0"]}}]}"#.into(), "domain \"a.com\": field slave.ips[0] value \"1.1.1.1:0\": port 0"),
        ];
        for (text, want) in &cases {
            let err = parse_str(text).map(|_| ()).unwrap_err().to_string();
            assert!(!err.contains("SECRET-VALUE"), "{err}");
            assert!(
                err.starts_with("invalid origin-pull configuration: "),
                "{err}"
            );
            assert!(
                err.contains(want),
                "config {text}\n got: {err}\nwant: {want}"
            );
        }
        assert!(cases.len() >= 40);
    }

    const BUCKET: &str =
        r#"{"endpoint":"s3.example.com","bucket":"media-bkt","region":"us-east-1"}"#;

    fn bucket_config(bucket: &str, rest: &str) -> String {
        format!(
            r#"{{"domains":[{{"domain":"www.test.com","master":{{"bucket":{bucket}{rest}}}}}]}}"#
        )
    }

    fn with_env(text: &str) -> Result<PluginConfig, ConfigError> {
        parse_with_env(text.as_bytes(), &|name| match name {
            "S3_KEY_ID" => Some("AKIDFROMENV".into()),
            "S3_SECRET" => Some("SECRET-VALUE-FROM-ENV".into()),
            "S3_EMPTY" => Some(String::new()),
            _ => None,
        })
    }

    #[test]
    fn bucket_origins_compile_to_dns_routes() {
        let cfg = parse_str(&bucket_config(BUCKET, r#","protocol":"follow""#)).unwrap();
        assert!(cfg.uses_buckets);
        let d = cfg.domain_for_host("www.test.com").unwrap();
        let b = d.master.bucket.as_ref().unwrap();
        assert_eq!(b.authority, "media-bkt.s3.example.com");
        assert!(b.signer.is_none());
        let t = &d.master.targets[0];
        assert_eq!(
            t.route(Scheme::Http).cluster,
            "origin_pull|http|media-bkt.s3.example.com|80"
        );
        assert_eq!(
            t.route(Scheme::Https).cluster,
            "origin_pull|https|media-bkt.s3.example.com|443"
        );
        let path = bucket_config(
            r#"{"endpoint":"minio.internal:9000","bucket":"b01","region":"r","addressing":"path","key_prefix":"cdn/"}"#,
            "",
        );
        let cfg = parse_str(&path).unwrap();
        let d = cfg.domain_for_host("www.test.com").unwrap();
        assert_eq!(
            d.master.bucket.as_ref().unwrap().authority,
            "minio.internal:9000"
        );
        assert_eq!(
            cfg.required_clusters(),
            vec!["origin_pull|http|minio.internal|9000"]
        );
        assert_eq!(
            d.master.targets[0].routes[0].label,
            "minio.internal:9000/b01"
        );
    }

    #[test]
    fn credentials_from_the_vm_environment_and_never_shown() {
        let text = bucket_config(
            r#"{"endpoint":"s3.example.com","bucket":"media-bkt","region":"us-east-1","credentials":{"access_key_id_env":"S3_KEY_ID","secret_access_key_env":"S3_SECRET"}}"#,
            "",
        );
        let cfg = with_env(&text).unwrap();
        let signer = cfg.domains[0]
            .master
            .bucket
            .as_ref()
            .unwrap()
            .signer
            .as_ref()
            .unwrap();
        assert_eq!(signer.access_key_id, "AKIDFROMENV");
        let shown = cfg.normalized().to_string();
        assert!(
            shown.contains(r#""secret_access_key_env":"S3_SECRET""#),
            "{shown}"
        );
        assert!(!shown.contains("SECRET-VALUE"), "{shown}");
        assert!(!format!("{cfg:?}").contains("SECRET-VALUE"));
        let inline = bucket_config(
            r#"{"endpoint":"s3.example.com","bucket":"media-bkt","region":"us-east-1","credentials":{"access_key_id":"AKID","secret_access_key":"SECRET-VALUE-INLINE"}}"#,
            "",
        );
        let cfg = with_env(&inline).unwrap();
        let shown = cfg.normalized().to_string();
        assert!(
            shown.contains(r#""secret_access_key":"(redacted)""#),
            "{shown}"
        );
        assert!(!shown.contains("SECRET-VALUE") && !format!("{cfg:?}").contains("SECRET-VALUE"));
    }

    #[test]
    fn mirror_configuration() {
        let text = r#"{"domains":[{"domain":"www.test.com",
            "master":{"bucket":{"endpoint":"s3.example.com","bucket":"media-bkt","region":"us-east-1"}},
            "mirror":{"source":{"domain":"src.example.com:8080"},"mode":"redirect","pass_query_string":true,"key_prefixes":["img/"],"copy_back":false}}]}"#;
        let cfg = parse_str(text).unwrap();
        let m = cfg.domains[0].mirror.as_ref().unwrap();
        assert_eq!(m.redirect_base[0], "http://src.example.com:8080");
        assert_eq!(
            m.redirect_location(Scheme::Http, "/img/a.jpg?x=1")
                .as_deref(),
            Some("http://src.example.com:8080/img/a.jpg?x=1")
        );
        // Issue 13: the source is asked for the normalized key, re-encoded the S3 way.
        assert_eq!(
            m.redirect_location(Scheme::Http, "/img/%61%20b.jpg?")
                .as_deref(),
            Some("http://src.example.com:8080/img/a%20b.jpg")
        );
        assert_eq!(m.redirect_location(Scheme::Http, "/img/../a.jpg"), None);
        assert_eq!(m.max_copy_backs_per_minute, 600);
        assert!(m.triggers(404, "GET", "/img/a.jpg"));
        assert!(!m.triggers(404, "GET", "/doc/a.jpg"));
        assert!(!m.triggers(403, "GET", "/img/a.jpg"));
        assert!(!m.triggers(404, "POST", "/img/a.jpg"));
        assert!(cfg
            .required_clusters()
            .contains(&"origin_pull|http|src.example.com|8080".to_string()));
        let n = cfg.normalized();
        assert_eq!(n["domains"][0]["mirror"]["mode"], "redirect");
        assert_eq!(n["domains"][0]["mirror"]["max_copy_bytes"], 8 << 20);
        assert_eq!(n["domains"][0]["mirror"]["on_source_failure"], "not_found");
    }

    /// Bucket and mirror rules, with the exact error texts; a secret never appears.
    #[test]
    fn invalid_bucket_and_mirror_configurations() {
        let b = |bucket: &str| bucket_config(bucket, "");
        let m = |mirror: &str, slave: &str| {
            format!(
                r#"{{"domains":[{{"domain":"www.test.com","master":{{"bucket":{BUCKET}}}{slave},"mirror":{mirror}}}]}}"#
            )
        };
        let cases: Vec<(String, &str)> = vec![
            (b(r#"{"endpoint":"https://s3.example.com","bucket":"bkt","region":"r"}"#),
             "invalid origin-pull configuration: domain \"www.test.com\": field master.bucket.endpoint value \"https://s3.example.com\": give the host name without a scheme (set `protocol` for https)"),
            (b(r#"{"endpoint":"s3.example.com","bucket":"Bad_Bucket","region":"r"}"#),
             "invalid origin-pull configuration: domain \"www.test.com\": field master.bucket.bucket value \"Bad_Bucket\": must be 3-63 characters of a-z, 0-9, '.' and '-', starting and ending with a letter or digit"),
            (b(r#"{"endpoint":"s3.example.com","bucket":"bkt","region":"us east"}"#),
             "invalid origin-pull configuration: domain \"www.test.com\": field master.bucket.region value \"us east\": must be a region name such as \"us-east-1\" (letters, digits, '-', '_')"),
            (b(r#"{"endpoint":"s3.example.com","bucket":"bkt","region":"r","key_prefix":"/media/"}"#),
             "invalid origin-pull configuration: domain \"www.test.com\": field master.bucket.key_prefix value \"/media/\": must not start with '/' or contain control characters (e.g. \"media/\")"),
            (b(r#"{"endpoint":"s3.example.com","bucket":"bkt","region":"r","addressing":"vhost"}"#),
             "invalid origin-pull configuration: domain \"www.test.com\": field master.bucket.addressing value \"vhost\": must be \"virtual-hosted\" (bucket.endpoint/key) or \"path\" (endpoint/bucket/key)"),
            (b(r#"{"endpoint":"s3.example.com:0","bucket":"bkt","region":"r"}"#),
             "invalid origin-pull configuration: domain \"www.test.com\": field master.bucket.endpoint value \"s3.example.com:0\": port 0 is not allowed"),
            (b(r#"{"endpoint":"s3.example.com","bucket":"bkt","region":"r","credentials":{"access_key_id":"AKID"}}"#),
             "invalid origin-pull configuration: domain \"www.test.com\": field master.bucket.credentials.secret_access_key: is missing: set `secret_access_key` or `secret_access_key_env` (leave out `credentials` for a public bucket)"),
            (b(r#"{"endpoint":"s3.example.com","bucket":"bkt","region":"r","credentials":{"access_key_id":"AKID","secret_access_key":"SECRET-VALUE","secret_access_key_env":"S3_SECRET"}}"#),
             "invalid origin-pull configuration: domain \"www.test.com\": field master.bucket.credentials.secret_access_key value \"(redacted)\": set either `secret_access_key` or `secret_access_key_env`, not both"),
            (b(r#"{"endpoint":"s3.example.com","bucket":"bkt","region":"r","credentials":{"access_key_id":"AKID","secret_access_key_env":"NOT_SET_ANYWHERE"}}"#),
             "invalid origin-pull configuration: domain \"www.test.com\": field master.bucket.credentials.secret_access_key_env value \"(redacted)\": the variable it names is not set in the VM's environment; pass it with vm_config.environment_variables (host_env_keys or key_values)"),
            (b(r#"{"endpoint":"s3.example.com","bucket":"bkt","region":"r","credentials":{"access_key_id":"AKID","secret_access_key_env":"S3_EMPTY"}}"#),
             "invalid origin-pull configuration: domain \"www.test.com\": field master.bucket.credentials.secret_access_key_env value \"(redacted)\": is empty or contains characters a credential cannot hold (white space, control characters)"),
            (b(r#"{"endpoint":"s3.example.com","bucket":"bkt","region":"r","credentials":{"access_key_id":"AKID","secret_access_key":"SECRET-VALUE with space"}}"#),
             "invalid origin-pull configuration: domain \"www.test.com\": field master.bucket.credentials.secret_access_key value \"(redacted)\": is empty or contains characters"),
            (b(r#"{"endpoint":"s3.example.com","bucket":"bkt","region":"r","credentials":{"access_key_id":"AKID","secret_key":"SECRET-VALUE"}}"#),
             "invalid origin-pull configuration: domain \"www.test.com\": field master.bucket.credentials.secret_key: unknown field `secret_key`"),
            (b(r#"{"endpoint":"s3.example.com","bucket":"bkt","region":"r","credentials":{"access_key_id":"AKID","secret_access_key":["SECRET-VALUE"]}}"#),
             "invalid origin-pull configuration: domain \"www.test.com\": field master.bucket.credentials.secret_access_key: invalid type: sequence, expected a string"),
            (b(r#"{"endpoint":"s3.example.com","bucket":"bkt","region":"r","credentials":"SECRET-VALUE"}"#),
             "invalid origin-pull configuration: domain \"www.test.com\": field master.bucket.credentials: invalid type: string \"(redacted)\", expected struct RawCredentials"),
            (bucket_config(BUCKET, r#","host":"cdn.example.com""#),
             "invalid origin-pull configuration: domain \"www.test.com\": field master.host value \"cdn.example.com\": is the bucket's own host name for `bucket` origins (it is signed); remove it"),
            (r#"{"domains":[{"domain":"www.test.com","master":{"ips":["1.1.1.1"]},"mirror":{"source":{"domain":"s.example.com"}}}]}"#.to_string(),
             "invalid origin-pull configuration: domain \"www.test.com\": field mirror value \"master is ips\": mirror back-to-origin needs a `bucket` master"),
            (format!(r#"{{"domains":[{{"domain":"www.test.com","master":{{"bucket":{BUCKET}}},"slave":{{"ips":["1.1.1.1"]}},"master_slave_switch":true,"mirror":{{"source":{{"domain":"s.example.com"}}}}}}]}}"#),
             "invalid origin-pull configuration: domain \"www.test.com\": field mirror value \"master_slave_switch: true\": the switch would make the mirrored bucket the slave; remove `mirror` or the switch"),
            (m(&format!(r#"{{"source":{{"bucket":{BUCKET}}}}}"#), ""),
             "invalid origin-pull configuration: domain \"www.test.com\": field mirror.source value \"bucket\": the mirror source must be `ips`, `domain` or `clusters`, not another bucket"),
            (m(r#"{"source":{"domain":"s.example.com"},"mode":"copy"}"#, ""),
             "invalid origin-pull configuration: domain \"www.test.com\": field mirror.mode value \"copy\": must be \"fetch\" (serve from the source and copy back) or \"redirect\" (answer 302 to the source)"),
            (m(r#"{"source":{"ips":["1.1.1.1"]},"mode":"redirect"}"#, ""),
             "invalid origin-pull configuration: domain \"www.test.com\": field mirror.mode value \"redirect\": redirect mode needs a `domain` source: clients are sent to it by name"),
            (m(r#"{"source":{"domain":"s.example.com"},"key_prefixes":["/img/"]}"#, ""),
             "invalid origin-pull configuration: domain \"www.test.com\": field mirror.key_prefixes[0] value \"/img/\": must be a non-empty object key prefix without a leading '/' (e.g. \"images/\")"),
            (m(r#"{"source":{"domain":"s.example.com"},"on_status":[200]}"#, ""),
             "invalid origin-pull configuration: domain \"www.test.com\": field mirror.on_status[0] value \"200\": must be an error status 400..=599 (404 for a missing object; 403 where the bucket hides missing keys)"),
            (m(r#"{"source":{"domain":"s.example.com"},"on_status":[]}"#, ""),
             "invalid origin-pull configuration: domain \"www.test.com\": field mirror.on_status value \"[]\": the list is empty; the default is [404]"),
            (m(r#"{"source":{"domain":"s.example.com"},"max_copy_bytes":0}"#, ""),
             "invalid origin-pull configuration: domain \"www.test.com\": field mirror.max_copy_bytes value \"0\": must be 1..=33554432 (Envoy's 32 MiB async response buffer limit)"),
            (m(r#"{"source":{"domain":"s.example.com"},"on_source_failure":"slave"}"#, ""),
             "invalid origin-pull configuration: domain \"www.test.com\": field mirror.on_source_failure value \"slave\": there is no slave origin; add `slave` or choose \"not_found\" or \"source\""),
            (m(r#"{"source":{"domain":"s.example.com"},"on_source_failure":"retry"}"#, r#","slave":{"ips":["1.1.1.1"]}"#),
             "invalid origin-pull configuration: domain \"www.test.com\": field mirror.on_source_failure value \"retry\": must be \"not_found\" (the bucket's answer), \"source\" (the source's answer) or \"slave\" (fail over)"),
            (m(r#"{"source":{"domain":"www.test.com"}}"#, ""),
             "invalid origin-pull configuration: domain \"www.test.com\": field mirror.source.domain value \"www.test.com\": is the accelerated domain"),
            (m(r#"{"source":{"domain":"s.example.com"}}"#, ""),
             "invalid origin-pull configuration: domain \"www.test.com\": field mirror.copy_back value \"true\": copying objects back writes to the bucket and needs `credentials` on the master bucket; add them or set copy_back to false"),
            (m(r#"{"source":{"domain":"s.example.com"},"max_copy_backs_per_minute":0}"#, ""),
             "invalid origin-pull configuration: domain \"www.test.com\": field mirror.max_copy_backs_per_minute value \"0\": must be 1..=1000000"),
            (m(r#"{"source":{"domain":"s.example.com"},"copy":true}"#, ""),
             "invalid origin-pull configuration: domain \"www.test.com\": field mirror.copy: unknown field `copy`"),
        ];
        for (text, want) in &cases {
            let err = with_env(text).map(|_| ()).unwrap_err().to_string();
            assert!(!err.contains("SECRET-VALUE"), "secret leaked: {err}");
            assert!(
                err.starts_with(want),
                "config {text}\n got: {err}\nwant: {want}"
            );
        }
    }

    /// Issue 13, item 5: a credential in the wrong field (or a malformed one) is never printed,
    /// whatever the field; `check` and the filter's log line both use this text.
    #[test]
    fn credential_errors_never_show_the_value() {
        const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzEXAMPLEKEY";
        const ALNUM: &str = "Wq7Lq0ZbXyAlnumOnlySecret9Kx3Pm";
        let creds = |body: &str| {
            format!(
                r#"{{"domains":[{{"domain":"www.test.com","master":{{"bucket":{{"endpoint":"s3.example.com","bucket":"bkt","region":"r","credentials":{{{body}}}}}}}}}]}}"#
            )
        };
        let cases = [
            (
                format!(r#""access_key_id":"AKID","secret_access_key_env":"{SECRET}""#),
                SECRET,
                "secret_access_key_env",
            ),
            (
                format!(r#""access_key_id_env":"{SECRET}","secret_access_key":"x""#),
                SECRET,
                "access_key_id_env",
            ),
            (
                format!(r#""access_key_id":"{SECRET}","secret_access_key":"x""#),
                SECRET,
                "access_key_id",
            ),
            (
                r#""access_key_id":"AKID/x+y","secret_access_key":"x""#.to_string(),
                "AKID/x+y",
                "access_key_id",
            ),
            (
                format!(r#""access_key_id":"AKID","secret_access_key_env":"{ALNUM}""#),
                ALNUM,
                "secret_access_key_env",
            ),
            (
                format!(r#""access_key_id_env":"{ALNUM}","secret_access_key":"x""#),
                ALNUM,
                "access_key_id_env",
            ),
            (
                format!(
                    r#""access_key_id":"{ALNUM}","access_key_id_env":"S3_KEY_ID","secret_access_key":"x""#
                ),
                ALNUM,
                "access_key_id",
            ),
            (
                format!(r#""access_key_id":"AKID","secret_access_key":"{SECRET}","{SECRET}":1"#),
                SECRET,
                "credentials",
            ),
            (
                format!(r#""access_key_id":"AKID","secret_access_key_env":["{SECRET}"]"#),
                SECRET,
                "secret_access_key_env",
            ),
            (
                r#""access_key_id":"AKID","secret_access_key":735120966431"#.to_string(),
                "735120966431",
                "secret_access_key",
            ),
        ];
        for (body, secret, field) in &cases {
            let text = creds(body);
            let err = with_env(&text).map(|_| ()).unwrap_err();
            let shown = err.to_string();
            assert!(!shown.contains(secret), "value shown: {shown}");
            assert!(shown.contains(field), "field not named: {shown}");
            assert!(
                err.value.is_none() || err.value.as_deref() == Some(REDACTED),
                "{shown}"
            );
            assert!(
                shown.contains("domain \"www.test.com\""),
                "domain not named: {shown}"
            );
        }
    }

    /// Issue 13, item 9: a key given twice is refused, naming the domain and the key, instead of
    /// the last one silently winning.
    #[test]
    fn duplicate_keys_are_refused() {
        let cases = [
            (r#"{"domains":[{"domain":"www.test.com","master":{"ips":["1.1.1.1"]},"slave":{"ips":["2.2.2.2"]},"master_slave_switch":true,"master_slave_switch":false}]}"#,
             "invalid origin-pull configuration: domain \"www.test.com\": field master_slave_switch: is given twice in the same object (duplicate key); JSON parsers would silently keep only one of them, so the configuration is refused"),
            (r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]}},{"domain":"www.test.com","master":{"ips":["1.1.1.1"]},"failover":{"on":["5xx"],"timeout_ms":100,"timeout_ms":200}}]}"#,
             "invalid origin-pull configuration: domain \"www.test.com\": field failover.timeout_ms: is given twice"),
            (r#"{"debug_headers":true,"domains":[],"debug_headers":false}"#,
             "invalid origin-pull configuration: field debug_headers: is given twice"),
            (r#"{"domains":[{"domain":"www.test.com","master":{"ips":["1.1.1.1","2.2.2.2"]},"master":{"ips":["3.3.3.3"]}}]}"#,
             "invalid origin-pull configuration: domain \"www.test.com\": field master: is given twice"),
        ];
        for (text, want) in cases {
            let err = parse_str(text).map(|_| ()).unwrap_err().to_string();
            assert!(
                err.starts_with(want),
                "config {text}\n got: {err}\nwant: {want}"
            );
        }
    }

    #[test]
    fn long_values_are_shortened_in_errors() {
        let long = "a".repeat(5000);
        let text = format!(
            r#"{{"domains":[{{"domain":"a.com","master":{{"ips":["1.1.1.1"],"protocol":"{long}"}}}}]}}"#
        );
        let err = parse_str(&text).unwrap_err().to_string();
        assert!(err.len() < 400, "{}", err.len());
    }

    #[test]
    fn strip_port_forms() {
        assert_eq!(strip_port("a.com:80"), "a.com");
        assert_eq!(strip_port("a.com"), "a.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("::1"), "::1");
    }
}
