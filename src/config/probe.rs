//! Active health probes: the `probe` settings of a domain's `detection` or of one origin set.
//! Parsed here, compiled into [`Probe`]; `crate::engine::prober` runs them.

use serde::Deserialize;
use serde_json::Value;

use super::error::Ctx;
use super::ConfigError;
use crate::config::address::validate_host_header;

pub const DEFAULT_PROBE_PATH: &str = "/";
pub const DEFAULT_PROBE_INTERVAL_MS: u64 = 5_000;
pub const MIN_PROBE_INTERVAL_MS: u64 = 100;
pub const MAX_PROBE_INTERVAL_MS: u64 = 3_600_000;
pub const DEFAULT_PROBE_TIMEOUT_MS: u64 = 1_000;
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
pub const MAX_THRESHOLD: u32 = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProbe {
    path: Option<String>,
    interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
    expected_statuses: Option<Vec<Value>>,
    host: Option<String>,
    unhealthy_threshold: Option<u32>,
    healthy_threshold: Option<u32>,
}

/// One probe schedule, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub path: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Inclusive status ranges that count as healthy.
    pub expected: Vec<(u32, u32)>,
    /// `Host` sent with the probe; `None`: the origin set's `host`, else the accelerated
    /// domain (the origin's address for wildcard domains).
    pub host: Option<String>,
    /// Consecutive failures that block the origin.
    pub unhealthy_threshold: u32,
    /// Consecutive successes that unblock it.
    pub healthy_threshold: u32,
}

impl Probe {
    pub fn expects(&self, status: u32) -> bool {
        self.expected
            .iter()
            .any(|(low, high)| (*low..=*high).contains(&status))
    }
}

pub(super) fn compile_probe(raw: RawProbe, block_ms: u64, ctx: &Ctx) -> Result<Probe, ConfigError> {
    if block_ms == 0 {
        return Err(ctx.err(
            "",
            Some("detection.block_seconds = 0".into()),
            "probes block and unblock origins, but blocking is disabled; set detection.block_seconds > 0 or remove the probe",
        ));
    }
    let path = raw.path.unwrap_or_else(|| DEFAULT_PROBE_PATH.to_string());
    if !path.starts_with('/')
        || path.len() > 1024
        || path.chars().any(|c| c.is_control() || c == ' ' || c == '#')
    {
        return Err(ctx.err(
            "path",
            Some(path),
            "must start with '/', be at most 1024 characters and contain no spaces, control characters or '#'",
        ));
    }
    let interval_ms = raw.interval_ms.unwrap_or(DEFAULT_PROBE_INTERVAL_MS);
    if !(MIN_PROBE_INTERVAL_MS..=MAX_PROBE_INTERVAL_MS).contains(&interval_ms) {
        return Err(ctx.err(
            "interval_ms",
            Some(interval_ms.to_string()),
            format!("must be {MIN_PROBE_INTERVAL_MS}..={MAX_PROBE_INTERVAL_MS}"),
        ));
    }
    let timeout_ms = raw
        .timeout_ms
        .unwrap_or(DEFAULT_PROBE_TIMEOUT_MS.min(interval_ms));
    if timeout_ms == 0 || timeout_ms > interval_ms {
        return Err(ctx.err(
            "timeout_ms",
            Some(timeout_ms.to_string()),
            format!(
                "must be 1..=interval_ms ({interval_ms}) so probes of one origin never overlap"
            ),
        ));
    }
    let expected = match raw.expected_statuses {
        None => vec![(200, 399)],
        Some(list) if list.is_empty() => {
            return Err(ctx.err(
                "expected_statuses",
                Some("[]".into()),
                "the list is empty; give status codes (200) or classes (\"2xx\")",
            ))
        }
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for (i, item) in list.iter().enumerate() {
                let range = status_range(item).ok_or_else(|| {
                    ctx.err(
                        &format!("expected_statuses[{i}]"),
                        Some(describe(item)),
                        "must be a status code 100..=599 or a class \"1xx\"..\"5xx\"",
                    )
                })?;
                out.push(range);
            }
            out
        }
    };
    if let Some(host) = &raw.host {
        validate_host_header(host).map_err(|r| ctx.err("host", Some(host.clone()), r))?;
    }
    let threshold = |field: &str, value: Option<u32>, default: u32| {
        let value = value.unwrap_or(default);
        if (1..=MAX_THRESHOLD).contains(&value) {
            Ok(value)
        } else {
            Err(ctx.err(
                field,
                Some(value.to_string()),
                format!("must be 1..={MAX_THRESHOLD}"),
            ))
        }
    };
    Ok(Probe {
        path,
        interval_ms,
        timeout_ms,
        expected,
        host: raw.host.map(|h| h.to_ascii_lowercase()),
        unhealthy_threshold: threshold(
            "unhealthy_threshold",
            raw.unhealthy_threshold,
            DEFAULT_UNHEALTHY_THRESHOLD,
        )?,
        healthy_threshold: threshold(
            "healthy_threshold",
            raw.healthy_threshold,
            DEFAULT_HEALTHY_THRESHOLD,
        )?,
    })
}

/// The offending entry for an error message, without `Value`'s Display (which would pull
/// float formatting into the wasm).
fn describe(item: &Value) -> String {
    match item {
        Value::String(text) => format!("{text:?}"),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.to_string(),
            (_, Some(u)) => u.to_string(),
            _ => "a fractional number".into(),
        },
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn status_range(item: &Value) -> Option<(u32, u32)> {
    if let Some(code) = item.as_u64() {
        let code = u32::try_from(code).ok()?;
        return (100..=599).contains(&code).then_some((code, code));
    }
    let text = item.as_str()?;
    match text.as_bytes() {
        [d @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => {
            let low = u32::from(d - b'0') * 100;
            Some((low, low + 99))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{parse, Probe};

    fn domain(detection: &str, master_extra: &str) -> String {
        format!(
            r#"{{"domains":[{{"domain":"a.com","master":{{"ips":["1.1.1.1"]{master_extra}}},
                "slave":{{"ips":["2.2.2.2"]}},"detection":{detection}}}]}}"#
        )
    }

    #[test]
    fn passive_only_is_the_default_and_defaults_fill_in() {
        let cfg = parse(domain("{}", "").as_bytes()).unwrap();
        assert!(cfg.domains[0].master.probe.is_none());
        let cfg = parse(domain(r#"{"probe":{}}"#, "").as_bytes()).unwrap();
        let probe = cfg.domains[0].master.probe.clone().unwrap();
        assert_eq!(
            *probe,
            Probe {
                path: "/".into(),
                interval_ms: 5_000,
                timeout_ms: 1_000,
                expected: vec![(200, 399)],
                host: None,
                unhealthy_threshold: 3,
                healthy_threshold: 2,
            }
        );
        assert!(probe.expects(302) && !probe.expects(404));
        assert_eq!(cfg.domains[0].slave.as_ref().unwrap().probe, Some(probe));
        let shown = cfg.normalized();
        assert_eq!(
            shown["domains"][0]["detection"]["probe"]["expected_statuses"][0],
            "2xx"
        );
    }

    #[test]
    fn an_origin_probe_overrides_the_domain_probe_for_that_set_only() {
        let text = domain(
            r#"{"probe":{"path":"/d"}}"#,
            r#","probe":{"path":"/m","expected_statuses":[204,"3XX"],"host":"Probe.A.com","interval_ms":100,"timeout_ms":100}"#,
        );
        let cfg = parse(text.as_bytes()).unwrap();
        let master = cfg.domains[0].master.probe.clone().unwrap();
        assert_eq!(master.path, "/m");
        assert_eq!(master.expected, vec![(204, 204), (300, 399)]);
        assert_eq!(master.host.as_deref(), Some("probe.a.com"));
        assert_eq!(master.timeout_ms, 100);
        let slave = cfg.domains[0]
            .slave
            .as_ref()
            .unwrap()
            .probe
            .clone()
            .unwrap();
        assert_eq!(slave.path, "/d");
        let shown = cfg.normalized();
        assert_eq!(shown["domains"][0]["master"]["probe"]["path"], "/m");
        assert_eq!(shown["domains"][0]["detection"]["probe"]["path"], "/d");
    }

    #[test]
    fn a_domain_probe_skips_bucket_origins() {
        let cfg = parse(
            br#"{"domains":[{"domain":"a.com","master":{"bucket":{"endpoint":"s3.test","bucket":"bkt","region":"r"}},
                "slave":{"ips":["2.2.2.2"]},"detection":{"probe":{}}}]}"#,
        )
        .unwrap();
        assert!(cfg.domains[0].master.probe.is_none());
        assert!(cfg.domains[0].slave.as_ref().unwrap().probe.is_some());
    }

    #[test]
    fn invalid_probes_name_domain_field_value() {
        let cases: Vec<(String, &str)> = vec![
            (domain(r#"{"probe":{"path":"health"}}"#, ""), "field detection.probe.path value \"health\": must start with '/'"),
            (domain(r#"{"probe":{"path":"/a b"}}"#, ""), "field detection.probe.path value \"/a b\""),
            (domain(r#"{"probe":{"interval_ms":99}}"#, ""), "field detection.probe.interval_ms value \"99\": must be 100..=3600000"),
            (domain(r#"{"probe":{"interval_ms":500,"timeout_ms":501}}"#, ""), "field detection.probe.timeout_ms value \"501\": must be 1..=interval_ms (500)"),
            (domain(r#"{"probe":{"timeout_ms":0}}"#, ""), "field detection.probe.timeout_ms value \"0\""),
            (domain(r#"{"probe":{"expected_statuses":[]}}"#, ""), "field detection.probe.expected_statuses value \"[]\": the list is empty"),
            (domain(r#"{"probe":{"expected_statuses":[200,"6xx"]}}"#, ""), "field detection.probe.expected_statuses[1] value \"\\\"6xx\\\"\": must be a status code"),
            (domain(r#"{"probe":{"expected_statuses":[99]}}"#, ""), "field detection.probe.expected_statuses[0] value \"99\""),
            (domain(r#"{"probe":{"expected_statuses":[200.5]}}"#, ""), "field detection.probe.expected_statuses[0] value \"a fractional number\""),
            (domain(r#"{"probe":{"host":"a b"}}"#, ""), "field detection.probe.host value \"a b\""),
            (domain(r#"{"probe":{"unhealthy_threshold":0}}"#, ""), "field detection.probe.unhealthy_threshold value \"0\": must be 1..=100"),
            (domain(r#"{"probe":{"healthy_threshold":101}}"#, ""), "field detection.probe.healthy_threshold value \"101\": must be 1..=100"),
            (domain(r#"{"probe":{"port":80}}"#, ""), "unknown field `port`"),
            (domain(r#"{"block_seconds":0,"probe":{}}"#, ""), "field detection.probe value \"detection.block_seconds = 0\": probes block and unblock origins"),
            (domain("{}", r#","probe":{"path":"x"}"#), "domain \"a.com\": field master.probe.path value \"x\""),
            (r#"{"domains":[{"domain":"a.com","master":{"bucket":{"endpoint":"s3.test","bucket":"bkt","region":"r"},"probe":{}}}]}"#.into(), "field master.probe value \"bucket origin\": bucket origins are not probed"),
        ];
        for (text, want) in &cases {
            let err = parse(text.as_bytes()).map(|_| ()).unwrap_err().to_string();
            assert!(
                err.contains(want),
                "config {text}\n got: {err}\nwant: {want}"
            );
        }
    }
}
