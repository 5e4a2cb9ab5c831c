//! Raw structs → compiled configuration: the entry points (`parse`), the top level, each
//! domain, its failover policy and its detection settings. Origins are compiled by kind in
//! `origin`, `bucket` and `mirror`; `raw` reads the document.

use std::collections::HashMap;
use std::rc::Rc;

use super::error::Ctx;
use super::mirror::compile_mirror;
use super::names::check_cluster_name;
use super::origin::compile_origin;
use super::probe::compile_probe;
use super::raw::{
    with_raw, RawDetection, RawDomain, RawEnvoy, RawFailover, RawMetrics, RawOrigin,
    RawPluginConfig,
};
use super::{
    ConfigError, Detection, Domain, EnvLookup, EnvoyNames, FailoverMechanism, FailoverPolicy,
    MetricsSettings, OriginKind, OriginSet, PluginConfig, DEFAULT_BLOCK_SECONDS,
    DEFAULT_CALLOUT_TIMEOUT_MS, DEFAULT_CLUSTER_HEADER, DEFAULT_FAILURE_THRESHOLD,
    DEFAULT_FAILURE_WINDOW_SECONDS, DEFAULT_IP_CLUSTER_HTTP, DEFAULT_IP_CLUSTER_HTTPS,
    DEFAULT_MASTER_RETRIES, DEFAULT_MAX_REQUEST_BODY, DEFAULT_MAX_RESPONSE_BODY,
    DEFAULT_UNKNOWN_HOST_STATUS, MAX_BLOCK_SECONDS, MAX_CALLOUT_TIMEOUT_MS,
    MAX_FAILURE_WINDOW_SECONDS, MAX_MASTER_RETRIES, MAX_REQUEST_BODY, MAX_RESPONSE_BODY,
    MIN_CALLOUT_TIMEOUT_MS,
};
use crate::config::address::{normalize_host_name, validate_host_name};

/// Parses with the process environment (the VM's `vm_config.environment_variables` in Envoy).
pub fn parse(bytes: &[u8]) -> Result<PluginConfig, ConfigError> {
    parse_with_env(bytes, &|name| std::env::var(name).ok())
}

pub fn parse_with_env(bytes: &[u8], env: EnvLookup) -> Result<PluginConfig, ConfigError> {
    with_raw(bytes, |raw| compile(raw, env))
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
    let unknown_host_status = raw
        .unknown_host_status
        .unwrap_or(DEFAULT_UNKNOWN_HOST_STATUS);
    if !(400..=599).contains(&unknown_host_status) {
        return Err(top.err(
            "unknown_host_status",
            Some(unknown_host_status.to_string()),
            "must be an error status 400..=599",
        ));
    }
    let mut config = PluginConfig {
        domains: Vec::with_capacity(raw.domains.len()),
        exact: HashMap::default(),
        wildcards: HashMap::default(),
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
        ip_cluster_http: ip_cluster_http.into(),
        ip_cluster_https: ip_cluster_https.into(),
        failover,
    })
}

fn compile_metrics(raw: Option<RawMetrics>, top: &Ctx) -> Result<MetricsSettings, ConfigError> {
    let max = super::MAX_ORIGIN_SERIES;
    let max_origin_series = raw
        .as_ref()
        .and_then(|m| m.max_origin_series)
        .unwrap_or(super::DEFAULT_MAX_ORIGIN_SERIES);
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
        set.probe = own.or_else(|| domain_probe.clone()).map(Box::new);
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
        retriable_codes: None,
    };
    // The per-request values of Envoy's retry headers, computed once.
    domain.retry_on = domain.retry_on();
    domain.retriable_codes = domain.retriable_codes();
    Ok(domain)
}

thread_local! {
    /// `failover.methods` when a domain names none: one list for every such domain (10,000
    /// domains would otherwise hold 30,000 small allocations).
    static DEFAULT_METHODS: Rc<[String]> = Rc::from(["GET".to_string(), "HEAD".to_string()]);
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
        methods: DEFAULT_METHODS.with(Rc::clone),
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
        policy.methods = normalized.into();
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
        if !(MIN_CALLOUT_TIMEOUT_MS..=MAX_CALLOUT_TIMEOUT_MS).contains(&ms) {
            return Err(ctx.err(
                "timeout_ms",
                Some(ms.to_string()),
                format!("must be {MIN_CALLOUT_TIMEOUT_MS}..={MAX_CALLOUT_TIMEOUT_MS} milliseconds"),
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
    let max_threshold = super::MAX_FAILURE_THRESHOLD;
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
