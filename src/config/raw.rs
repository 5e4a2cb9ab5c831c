//! The document → raw structs (serde, unknown fields rejected). A fast path straight from the
//! bytes; any refusal is decided again on a tracked path whose error names the domain and field.

use std::fmt;

use serde::Deserialize;
use serde_json::Value;

use super::probe::RawProbe;
use super::{strict_json, ConfigError, REDACTED};
use crate::types::printable;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPluginConfig<'a> {
    #[serde(borrow)]
    pub(super) domains: Vec<RawDomain<'a>>,
    #[serde(default)]
    pub(super) unknown_host_status: Option<u32>,
    #[serde(default)]
    pub(super) debug_headers: bool,
    #[serde(default)]
    pub(super) envoy: Option<RawEnvoy>,
    #[serde(default)]
    pub(super) metrics: Option<RawMetrics>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) per_origin: Option<bool>,
    pub(super) max_origin_series: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnvoy {
    pub(super) cluster_header: Option<String>,
    pub(super) ip_cluster_http: Option<String>,
    pub(super) ip_cluster_https: Option<String>,
    pub(super) failover: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
/// Rare and large parts are boxed: the list of raw domains is the parse's peak memory (a wasm
/// VM keeps its high-water mark), 1,792 bytes per domain unboxed, a few hundred boxed.
pub(super) struct RawDomain<'a> {
    /// Borrowed like `RawOrigin::ips`.
    pub(super) domain: &'a str,
    #[serde(borrow)]
    pub(super) master: RawOrigin<'a>,
    #[serde(default, borrow)]
    pub(super) slave: Option<RawOrigin<'a>>,
    #[serde(default)]
    pub(super) master_slave_switch: bool,
    #[serde(default)]
    pub(super) failover: Option<Box<RawFailover>>,
    #[serde(default)]
    pub(super) detection: Option<Box<RawDetection>>,
    #[serde(default, borrow)]
    pub(super) mirror: Option<Box<RawMirror<'a>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMirror<'a> {
    #[serde(borrow)]
    pub(super) source: RawOrigin<'a>,
    pub(super) mode: Option<String>,
    pub(super) pass_query_string: Option<bool>,
    pub(super) key_prefixes: Option<Vec<String>>,
    pub(super) on_status: Option<Vec<u32>>,
    pub(super) copy_back: Option<bool>,
    pub(super) max_copy_backs_per_minute: Option<u32>,
    pub(super) max_copy_bytes: Option<u64>,
    pub(super) on_source_failure: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBucket {
    pub(super) endpoint: String,
    pub(super) bucket: String,
    pub(super) region: String,
    pub(super) key_prefix: Option<String>,
    pub(super) addressing: Option<String>,
    pub(super) credentials: Option<RawCredentials>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCredentials {
    pub(super) access_key_id: Option<String>,
    pub(super) access_key_id_env: Option<String>,
    pub(super) secret_access_key: Option<String>,
    pub(super) secret_access_key_env: Option<String>,
}

impl fmt::Debug for RawCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RawCredentials(redacted)")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOrigin<'a> {
    /// Borrowed from the document (no allocation per IP). A string with JSON escapes cannot be
    /// borrowed from the bytes: that document takes the tracked path, which borrows from its
    /// JSON tree instead.
    #[serde(borrow)]
    pub(super) ips: Option<Vec<&'a str>>,
    pub(super) domain: Option<String>,
    pub(super) clusters: Option<Vec<RawCluster>>,
    pub(super) bucket: Option<Box<RawBucket>>,
    pub(super) protocol: Option<String>,
    pub(super) host: Option<String>,
    /// Overrides `detection.probe` for this origin set.
    #[serde(default)]
    pub(super) probe: Option<Box<RawProbe>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) name: String,
    pub(super) weight: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFailover {
    pub(super) on: Option<Vec<String>>,
    pub(super) status_codes: Option<Vec<u32>>,
    pub(super) methods: Option<Vec<String>>,
    pub(super) max_request_body_bytes: Option<u64>,
    pub(super) max_response_body_bytes: Option<u64>,
    pub(super) master_retries: Option<u32>,
    pub(super) timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDetection {
    pub(super) block_seconds: Option<u64>,
    pub(super) block_on_5xx: Option<bool>,
    pub(super) failure_threshold: Option<u32>,
    pub(super) failure_window_seconds: Option<u64>,
    #[serde(default)]
    pub(super) probe: Option<Box<RawProbe>>,
}

// ---------------------------------------------------------------- the document → raw

/// Reads the document into the raw structs and hands them to `compile` (they borrow from the
/// bytes, or from the JSON tree of the tracked path, so they cannot be returned).
pub(super) fn with_raw<T>(
    bytes: &[u8],
    compile: impl FnOnce(RawPluginConfig<'_>) -> Result<T, ConfigError>,
) -> Result<T, ConfigError> {
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
            return compile(raw);
        }
    }
    with_raw_tracked(bytes, compile)
}

/// The JSON tree + `serde_path_to_error` path: the error names the domain and the field.
fn with_raw_tracked<T>(
    bytes: &[u8],
    compile: impl FnOnce(RawPluginConfig<'_>) -> Result<T, ConfigError>,
) -> Result<T, ConfigError> {
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
            field: printable(&field),
            value: None,
            reason: printable(&reason),
        }
    })?;
    compile(raw)
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
        field: printable(&field),
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
