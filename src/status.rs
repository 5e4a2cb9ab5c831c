//! `origin-pull status --admin IP:PORT`: which origins are blocked right now, read from a running
//! Envoy's admin interface. Native only. Two admin reads, over a minimal HTTP/1.1 GET (no client
//! library): `/config_dump` for the plugin configuration (domains, origins and their roles) and
//! `/stats?filter=…` for the filter's own stats (counters, the blocked gauges).
//!
//! Stats may be missing: a series the filter never created (e.g. failures of an origin that
//! never failed, or per-origin requests when they are not enabled) reads as "nothing recorded",
//! shown as 0 for failures and blocks and as `-` for requests.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};

use crate::config::PluginConfig;

const TIMEOUT: Duration = Duration::from_secs(5);
/// The filter's stats in `/stats` (regex, URL-encoded `^wasmcustom\.origin_pull_`).
const STATS_PATH: &str = "/stats?filter=%5Ewasmcustom%5C.origin_pull_";
const CONFIG_DUMP_PATH: &str = "/config_dump";
const WASM_TYPE_SUFFIX: &str = "envoy.extensions.filters.http.wasm.v3.Wasm";
pub const FAILURE_KINDS: [&str; 5] = ["connect", "timeout", "4xx", "5xx", "other"];

/// Why `status` could not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusError {
    /// Nothing answering HTTP at the address (exit 2).
    Unreachable(String),
    /// Envoy answered but runs no origin-pull filter (exit 3).
    NotLoaded(String),
}

impl std::fmt::Display for StatusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatusError::Unreachable(m) | StatusError::NotLoaded(m) => f.write_str(m),
        }
    }
}

/// `GET path` on `addr` with HTTP/1.1 and `Connection: close`; returns (status, body).
pub fn http_get(addr: &SocketAddr, path: &str) -> Result<(u16, Vec<u8>), String> {
    let mut stream = TcpStream::connect_timeout(addr, TIMEOUT).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: origin-pull-status\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    parse_response(&raw)
}

/// Status and body of a whole HTTP/1.1 response (`Content-Length`, chunked or until close).
pub fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("not an HTTP response (no end of headers)")?;
    let head = String::from_utf8_lossy(raw.get(..end).unwrap_or_default());
    let body = raw.get(end + 4..).unwrap_or_default();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1."))
        .and_then(|l| l.get(2..5))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("not an HTTP response (bad status line)")?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let mut out = Vec::with_capacity(body.len());
    let mut rest = body;
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunked body")?;
        let size_text = String::from_utf8_lossy(rest.get(..line_end).unwrap_or_default());
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        rest = rest.get(line_end + 2..).unwrap_or_default();
        if size == 0 {
            return Ok((status, out));
        }
        out.extend_from_slice(rest.get(..size).ok_or("truncated chunk")?);
        rest = rest.get(size + 2..).unwrap_or_default();
    }
}

/// One stat of the filter: base name, `;tag=value` pairs, value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub name: String,
    pub tags: BTreeMap<String, String>,
    pub value: u64,
}

/// The filter's stats out of `/stats` text (`wasmcustom.origin_pull_x;domain=d;origin=o: 3`).
pub fn parse_stats(text: &str) -> Vec<Stat> {
    text.lines()
        .filter_map(|line| {
            let (full, value) = line.rsplit_once(": ")?;
            let full = full.strip_prefix("wasmcustom.")?;
            let value = value.trim().parse::<u64>().ok()?;
            let mut parts = full.split(';');
            let name = parts.next()?.to_string();
            let tags = parts
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Some(Stat { name, tags, value })
        })
        .collect()
}

/// Plugin configuration texts of every Envoy wasm filter in a config dump (deduplicated, in
/// dump order), whatever listener, filter chain or ECDS resource holds them.
pub fn wasm_configurations(dump: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                let is_wasm = map
                    .get("@type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.ends_with(WASM_TYPE_SUFFIX));
                if is_wasm {
                    let text = map
                        .get("config")
                        .and_then(|c| c.get("configuration"))
                        .and_then(|c| c.get("value"))
                        .and_then(Value::as_str);
                    if let Some(text) = text {
                        if !out.iter().any(|t| t == text) {
                            out.push(text.to_string());
                        }
                    }
                }
                map.values().for_each(|x| walk(x, out));
            }
            Value::Array(items) => items.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dump, &mut out);
    out
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginStatus {
    pub label: String,
    /// `master`, `slave` (both when one address serves both roles); empty when only stats name it.
    pub roles: Vec<&'static str>,
    pub blocked: bool,
    /// Unix seconds the block ends (when the filter reported it).
    pub blocked_until: Option<u64>,
    /// `None` when the filter does not count requests per origin.
    pub requests: Option<u64>,
    pub failures: [u64; 5],
    pub blocks_passive: u64,
    pub blocks_probe: u64,
    pub probes_success: u64,
    pub probes_failure: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainStatus {
    pub name: String,
    /// `master_slave_switch` is on (roles shown are the effective ones).
    pub switched: bool,
    pub failovers_served: u64,
    pub failovers_failed: u64,
    /// Master addresses not blocked (`None` before the filter reported it).
    pub masters_available: Option<u64>,
    pub origins: Vec<OriginStatus>,
}

fn origin_entry<'a>(domain: &'a mut DomainStatus, label: &str) -> Option<&'a mut OriginStatus> {
    if !domain.origins.iter().any(|o| o.label == label) {
        domain.origins.push(OriginStatus {
            label: label.to_string(),
            ..OriginStatus::default()
        });
    }
    domain.origins.iter_mut().find(|o| o.label == label)
}

/// Domains and origins of the configurations, in configuration order, filled in from the stats
/// (series the filter never created count as zero). Origins and domains that only the stats
/// name (e.g. of a configuration being replaced) are appended.
pub fn build(configs: &[PluginConfig], stats: &[Stat], now_s: u64) -> Vec<DomainStatus> {
    let mut domains: Vec<DomainStatus> = Vec::new();
    for config in configs {
        for d in &config.domains {
            if domains.iter().any(|x| x.name == d.name) {
                continue;
            }
            let mut status = DomainStatus {
                name: d.name.clone(),
                switched: d.switched,
                ..DomainStatus::default()
            };
            for (role, set) in [("master", Some(&d.master)), ("slave", d.slave.as_ref())] {
                let Some(set) = set else { continue };
                for target in &set.targets {
                    for route in &target.routes {
                        let Some(o) = origin_entry(&mut status, &route.label) else {
                            continue;
                        };
                        if !o.roles.contains(&role) {
                            o.roles.push(role);
                        }
                    }
                }
            }
            domains.push(status);
        }
    }
    for stat in stats {
        let Some(domain_name) = stat.tags.get("domain") else {
            continue;
        };
        let index = match domains.iter().position(|d| &d.name == domain_name) {
            Some(i) => i,
            None => {
                domains.push(DomainStatus {
                    name: domain_name.clone(),
                    ..DomainStatus::default()
                });
                domains.len() - 1
            }
        };
        let Some(domain) = domains.get_mut(index) else {
            continue;
        };
        let tag = |k: &str| stat.tags.get(k).map(String::as_str);
        if stat.name == "origin_pull_masters_available" {
            domain.masters_available = Some(stat.value);
            continue;
        }
        if stat.name == "origin_pull_failovers_total" {
            match tag("outcome") {
                Some("served") => domain.failovers_served += stat.value,
                Some("failed") => domain.failovers_failed += stat.value,
                _ => {}
            }
            continue;
        }
        let Some(label) = tag("origin") else { continue };
        let Some(o) = origin_entry(domain, label) else {
            continue;
        };
        match stat.name.as_str() {
            "origin_pull_origin_requests_total" => {
                *o.requests.get_or_insert(0) += stat.value;
            }
            "origin_pull_origin_failures_total" => {
                if let Some(i) = FAILURE_KINDS.iter().position(|k| Some(*k) == tag("kind")) {
                    if let Some(slot) = o.failures.get_mut(i) {
                        *slot += stat.value;
                    }
                }
            }
            "origin_pull_origin_blocks_total" => match tag("source") {
                Some("passive") => o.blocks_passive += stat.value,
                Some("probe") => o.blocks_probe += stat.value,
                _ => {}
            },
            "origin_pull_probes_total" => match tag("result") {
                Some("success") => o.probes_success += stat.value,
                Some("failure") => o.probes_failure += stat.value,
                _ => {}
            },
            "origin_pull_origin_blocked" => o.blocked |= stat.value > 0,
            "origin_pull_origin_blocked_until_seconds" if stat.value > 0 => {
                o.blocked_until = Some(stat.value);
            }
            _ => {}
        }
    }
    // The gauges are refreshed every second: a block whose end has passed is over.
    for o in domains.iter_mut().flat_map(|d| d.origins.iter_mut()) {
        if o.blocked_until.is_some_and(|until| until <= now_s) {
            o.blocked = false;
        }
        if !o.blocked {
            o.blocked_until = None;
        }
    }
    // A block belongs to its domain (src/engine/blocks.rs): another domain listing the same address
    // is not steered by it, so each domain's own gauges are the truth.
    for d in &mut domains {
        // Known roles: count the unblocked masters now rather than trust a gauge up to a
        // second old.
        if d.origins.iter().any(|o| !o.roles.is_empty()) {
            let available = d
                .origins
                .iter()
                .filter(|o| o.roles.contains(&"master") && !o.blocked)
                .count();
            d.masters_available = Some(available as u64);
        }
    }
    domains
}

/// Everything `status` prints, read from the admin interface at `addr`.
pub fn fetch(addr: &SocketAddr, now_s: u64) -> Result<Vec<DomainStatus>, StatusError> {
    let unreachable = |e: String| {
        StatusError::Unreachable(format!(
            "cannot read Envoy's admin interface at {addr}: {e} (is Envoy running, and is this \
             its admin address? `origin-pull render` puts it at 127.0.0.1:9901 by default)"
        ))
    };
    let (code, dump) = http_get(addr, CONFIG_DUMP_PATH).map_err(unreachable)?;
    if code != 200 {
        return Err(unreachable(format!(
            "GET {CONFIG_DUMP_PATH} answered {code}, not Envoy's admin interface?"
        )));
    }
    let dump: Value = serde_json::from_slice(&dump).map_err(|e| {
        unreachable(format!(
            "GET {CONFIG_DUMP_PATH} is not JSON ({e}), not Envoy's admin interface?"
        ))
    })?;
    let texts = wasm_configurations(&dump);
    let configs: Vec<PluginConfig> = texts
        .iter()
        .filter_map(|t| crate::render::parse(t.as_bytes()).ok().map(|(c, _)| c))
        .collect();
    let (code, stats) = http_get(addr, STATS_PATH).map_err(unreachable)?;
    if code != 200 {
        return Err(unreachable(format!("GET /stats answered {code}")));
    }
    let stats = parse_stats(&String::from_utf8_lossy(&stats));
    if configs.is_empty() && stats.is_empty() {
        return Err(StatusError::NotLoaded(format!(
            "Envoy at {addr} runs no origin-pull filter: no wasm filter with a valid origin-pull \
             configuration in /config_dump ({} wasm filter(s) found) and no origin_pull_ stats",
            texts.len()
        )));
    }
    Ok(build(&configs, &stats, now_s))
}

/// `HH:MM:SS` (UTC) of a Unix time.
pub fn utc_clock(unix_s: u64) -> String {
    let day = unix_s % 86_400;
    format!("{:02}:{:02}:{:02}", day / 3600, (day % 3600) / 60, day % 60)
}

fn state_text(o: &OriginStatus, now_s: u64) -> String {
    match (o.blocked, o.blocked_until) {
        (false, _) => "ok".into(),
        (true, Some(until)) => format!(
            "BLOCKED until {} UTC ({} s)",
            utc_clock(until),
            until.saturating_sub(now_s)
        ),
        (true, None) => "BLOCKED".into(),
    }
}

fn roles_text(o: &OriginStatus) -> String {
    if o.roles.is_empty() {
        "-".into()
    } else {
        o.roles.join("+")
    }
}

/// The table printed for people.
pub fn table(domains: &[DomainStatus], now_s: u64) -> String {
    let mut out = String::new();
    for d in domains {
        out.push_str(&format!(
            "{}{}  masters available: {}  failovers: {} served, {} failed\n",
            d.name,
            if d.switched {
                " (master/slave switched)"
            } else {
                ""
            },
            d.masters_available.map_or("-".into(), |n| n.to_string()),
            d.failovers_served,
            d.failovers_failed
        ));
        let header = [
            "ORIGIN", "ROLE", "STATE", "REQUESTS", "CONNECT", "TIMEOUT", "4XX", "5XX", "OTHER",
            "BLOCKS",
        ];
        let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
        for o in &d.origins {
            let mut row = vec![
                o.label.clone(),
                roles_text(o),
                state_text(o, now_s),
                o.requests.map_or("-".into(), |r| r.to_string()),
            ];
            row.extend(o.failures.iter().map(u64::to_string));
            row.push((o.blocks_passive + o.blocks_probe).to_string());
            rows.push(row);
        }
        let widths: Vec<usize> = (0..header.len())
            .map(|i| {
                rows.iter()
                    .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in rows {
            let mut line = String::new();
            for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
                // Text columns left-aligned, counts right-aligned.
                if i < 3 {
                    line.push_str(&format!("  {cell:<width$}"));
                } else {
                    line.push_str(&format!("  {cell:>width$}"));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

/// The `--json` document.
pub fn to_json(addr: &SocketAddr, domains: &[DomainStatus], now_s: u64) -> Value {
    let origins = |d: &DomainStatus| -> Vec<Value> {
        d.origins
            .iter()
            .map(|o| {
                let failures: serde_json::Map<String, Value> = FAILURE_KINDS
                    .iter()
                    .zip(o.failures)
                    .map(|(k, v)| ((*k).to_string(), v.into()))
                    .collect();
                json!({
                    "origin": o.label,
                    "roles": o.roles,
                    "blocked": o.blocked,
                    "blocked_until": o.blocked_until,
                    "requests": o.requests,
                    "failures": failures,
                    "blocks": {"passive": o.blocks_passive, "probe": o.blocks_probe},
                    "probes": {"success": o.probes_success, "failure": o.probes_failure},
                })
            })
            .collect()
    };
    json!({
        "admin": addr.to_string(),
        "time": now_s,
        "domains": domains.iter().map(|d| json!({
            "domain": d.name,
            "switched": d.switched,
            "masters_available": d.masters_available,
            "failovers": {"served": d.failovers_served, "failed": d.failovers_failed},
            "origins": origins(d),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATS: &str = "\
wasmcustom.origin_pull_failovers_total;domain=www.test.com;outcome=failed: 0
wasmcustom.origin_pull_masters_available;domain=www.test.com: 1
wasmcustom.origin_pull_failovers_total;domain=www.test.com;outcome=served: 3
wasmcustom.origin_pull_origin_blocked;domain=www.test.com;origin=127.0.0.4:8081: 1
wasmcustom.origin_pull_origin_blocked_until_seconds;domain=www.test.com;origin=127.0.0.4:8081: 1700000060
wasmcustom.origin_pull_origin_failures_total;domain=www.test.com;origin=127.0.0.4:8081;kind=connect: 2
wasmcustom.origin_pull_origin_blocks_total;domain=www.test.com;origin=127.0.0.4:8081;source=passive: 1
wasmcustom.origin_pull_origin_requests_total;domain=www.test.com;origin=127.0.0.2:8081: 7
wasmcustom.origin_pull_origin_failures_total;domain=www.test.com;origin=127.0.0.2:8081;kind=4xx: 1
";

    fn config() -> PluginConfig {
        crate::config::parse(
            br#"{"domains":[{"domain":"www.test.com","master":{"ips":["127.0.0.2:8081","127.0.0.4:8081"]},
                "slave":{"ips":["127.0.0.5:8081"]}}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn stats_lines_become_names_and_tags() {
        let stats = parse_stats(STATS);
        assert_eq!(stats.len(), 9);
        assert_eq!(stats[5].name, "origin_pull_origin_failures_total");
        assert_eq!(stats[5].tags["kind"], "connect");
        assert_eq!(stats[5].tags["origin"], "127.0.0.4:8081");
        assert_eq!(stats[5].value, 2);
        assert!(parse_stats("cluster.x.upstream_rq: 3\nwasmcustom.bad: x\n").is_empty());
    }

    #[test]
    fn roles_from_the_configuration_counts_from_the_stats() {
        let now = 1_700_000_000;
        let domains = build(&[config()], &parse_stats(STATS), now);
        assert_eq!(domains.len(), 1);
        let d = &domains[0];
        assert_eq!((d.failovers_served, d.failovers_failed), (3, 0));
        assert_eq!(d.masters_available, Some(1));
        let labels: Vec<&str> = d.origins.iter().map(|o| o.label.as_str()).collect();
        assert_eq!(
            labels,
            ["127.0.0.2:8081", "127.0.0.4:8081", "127.0.0.5:8081"]
        );
        let dead = &d.origins[1];
        assert_eq!(dead.roles, ["master"]);
        assert!(dead.blocked);
        assert_eq!(dead.blocked_until, Some(1_700_000_060));
        assert_eq!(dead.failures, [2, 0, 0, 0, 0]);
        assert_eq!(
            dead.requests, None,
            "no requests series: not counted, not zero"
        );
        assert_eq!(d.origins[0].requests, Some(7));
        // The slave has no series at all: nothing recorded.
        let slave = &d.origins[2];
        assert_eq!(slave.roles, ["slave"]);
        assert!(!slave.blocked);
        assert_eq!(slave.failures, [0; 5]);
        let text = table(&domains, now);
        assert!(
            text.contains("127.0.0.4:8081  master  BLOCKED until 22:14:20 UTC (60 s)"),
            "{text}"
        );
        assert!(
            text.starts_with("www.test.com  masters available: 1  failovers: 3 served, 0 failed\n"),
            "{text}"
        );
        // A block belongs to its domain: another domain using the address is not blocked by it.
        let two = crate::config::parse(
            br#"{"domains":[{"domain":"www.test.com","master":{"ips":["127.0.0.2:8081","127.0.0.4:8081"]}},
                {"domain":"dead.test.com","master":{"ips":["127.0.0.4:8081"]}}]}"#,
        )
        .unwrap();
        let both = build(&[two], &parse_stats(STATS), now);
        assert_eq!(both[1].name, "dead.test.com");
        assert!(!both[1].origins[0].blocked);
        assert_eq!(both[1].origins[0].blocked_until, None);
        assert_eq!(both[1].masters_available, Some(1));
        assert_eq!(both[0].masters_available, Some(1));
        // A block whose end has passed is shown as over, even before the gauge is refreshed.
        let later = build(&[config()], &parse_stats(STATS), 1_700_000_060);
        assert!(!later[0].origins[1].blocked);
        assert_eq!(later[0].origins[1].blocked_until, None);
    }

    #[test]
    fn chunked_and_plain_responses() {
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).unwrap(),
            (200, b"hello world".to_vec())
        );
        let plain = b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\nno";
        assert_eq!(parse_response(plain).unwrap(), (404, b"no".to_vec()));
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n").is_err());
    }

    #[test]
    fn wasm_configurations_are_found_anywhere_in_a_dump() {
        let dump = json!({"configs": [{"dynamic_listeners": [{"active_state": {"listener": {
            "filter_chains": [{"filters": [{"typed_config": {"http_filters": [{"typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {"configuration": {"value": "{\"domains\":[]}"}}}}]}}]}]}}}]}]});
        assert_eq!(wasm_configurations(&dump), ["{\"domains\":[]}"]);
        assert!(wasm_configurations(&json!({"configs": []})).is_empty());
    }
}
