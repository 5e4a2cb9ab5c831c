//! Configuration streams: `config_value()` (invalid-leaning, for the parser's error shape) and
//! `valid_config()` (every rule satisfied, so every case reaches the request flow), and the
//! parser's property (`check_parse`).

use proptest::prelude::*;
use serde_json::{json, Value};

use origin_pull::config::{parse, PluginConfig};

// ------------------------------------------------------------------ configurations

const HOSTS: &[&str] = &[
    "www.test.com",
    "*.test.com",
    "*",
    "img.example.org",
    "WWW.TEST.COM.",
    "a.b",
    "",
    "bad host",
    "x\r\ny",
];
const IPS: &[&str] = &[
    "127.0.5.1",
    "127.0.5.2",
    "127.0.6.9",
    "[::1]",
    "999.1.1.1",
    "a.b",
];
const ORIGIN_DOMAINS: &[&str] = &[
    "origin.example.com",
    "origin.example.com:8443",
    "www.test.com",
    "img.test.com",
    "127.0.5.1",
    "x:0",
];

fn ip_entry() -> impl Strategy<Value = String> {
    (
        prop::sample::select(IPS),
        prop::option::of(prop_oneof![Just(0u32), 1u32..70_000]),
        prop::option::of(prop_oneof![Just(0u32), 1u32..4, 999u32..1_002]),
    )
        .prop_map(|(ip, port, weight)| match (port, weight) {
            (None, None) => ip.to_string(),
            (Some(p), None) => format!("{ip}:{p}"),
            (None, Some(w)) => format!("{ip}::{w}"),
            (Some(p), Some(w)) => format!("{ip}:{p}:{w}"),
        })
}

fn origin(valid_leaning: bool) -> impl Strategy<Value = Value> {
    let ips = if valid_leaning {
        // Distinct valid IPs, all weighted (one non-zero) or none: mostly accepted.
        (1usize..4, any::<bool>(), prop::collection::vec(0u32..3, 3))
            .prop_map(|(n, weighted, w)| {
                let ips: Vec<String> = (0..n)
                    .map(|i| {
                        let addr = format!("127.0.5.{}:80", i + 1);
                        let weight = if i == 0 { 1 } else { w[i] };
                        if weighted && n > 1 {
                            format!("{addr}:{weight}")
                        } else {
                            addr
                        }
                    })
                    .collect();
                json!({ "ips": ips })
            })
            .boxed()
    } else {
        prop::collection::vec(ip_entry(), 0..4)
            .prop_map(|ips| json!({ "ips": ips }))
            .boxed()
    };
    let domain = prop::sample::select(ORIGIN_DOMAINS).prop_map(|d| json!({ "domain": d }));
    let bucket = prop::sample::select(&["s3.test", "s3.test:9000", "www.test.com"][..]).prop_map(
        |endpoint| json!({ "bucket": { "endpoint": endpoint, "bucket": "bkt", "region": "r" } }),
    );
    let clusters = prop::collection::vec(
        (
            prop::sample::select(&["c1", "c2", "", "outbound|80||o.svc"][..]),
            prop::option::of(0u32..3),
        ),
        1..3,
    )
    .prop_map(|cs| {
        let list: Vec<Value> = cs
            .into_iter()
            .map(|(name, w)| match w {
                Some(w) => json!({ "name": name, "weight": w }),
                None => json!({ "name": name }),
            })
            .collect();
        json!({ "clusters": list })
    });
    (
        prop_oneof![4 => ips, 1 => domain, 1 => clusters, 1 => bucket],
        prop::option::of(prop::sample::select(
            &["http", "https", "follow", "ftp"][..],
        )),
        prop::option::of(prop::sample::select(
            &["h.example", "a b", "o.test:8080", ""][..],
        )),
    )
        .prop_map(move |(mut o, protocol, host)| {
            if let Some(map) = o.as_object_mut() {
                let is_clusters = map.contains_key("clusters") || map.contains_key("bucket");
                if let Some(p) = protocol.filter(|_| !(valid_leaning && is_clusters)) {
                    map.insert("protocol".into(), json!(p));
                }
                if let Some(h) =
                    host.filter(|h| !valid_leaning || !h.is_empty() && !h.contains(' '))
                {
                    map.insert("host".into(), json!(h));
                }
            }
            o
        })
}

fn domain_entry(valid_leaning: bool) -> impl Strategy<Value = Value> {
    (
        prop::sample::select(HOSTS),
        origin(valid_leaning),
        prop::option::of(origin(valid_leaning)),
        any::<bool>(),
        prop::option::of((
            prop::sample::subsequence(&["4xx", "5xx", "connect_error", "timeout"][..], 0..=4),
            prop::collection::vec(prop_oneof![300u32..600, 0u32..1_000], 0..3),
            0u32..12,
            prop::option::of(prop_oneof![Just(0u64), 1u64..100, Just(1u64 << 40)]),
        )),
        prop::option::of((0u64..100_000, any::<bool>())),
    )
        .prop_map(move |(name, master, slave, switch, failover, detection)| {
            let mut d = json!({ "domain": name, "master": master });
            if let Some(s) = slave {
                d["slave"] = s;
            }
            if switch {
                d["master_slave_switch"] = json!(true);
            }
            if let Some(f) = failover {
                d["failover"] = failover_json(f);
            }
            if let Some((secs, on_5xx)) = detection {
                let secs = if valid_leaning { secs % 120 } else { secs };
                d["detection"] = json!({ "block_seconds": secs, "block_on_5xx": on_5xx });
            }
            d
        })
}

pub(crate) fn config_value(valid_leaning: bool) -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(domain_entry(valid_leaning), 0..4),
        any::<bool>(),
        prop::option::of(prop_oneof![400u32..600, 0u32..1_000]),
    )
        .prop_map(|(domains, debug, status)| {
            let mut c = json!({ "domains": domains, "debug_headers": debug });
            if let Some(s) = status {
                c["unknown_host_status"] = json!(s);
            }
            c
        })
}

// ------------------------------------------------------------------ valid configurations
//
// Built to satisfy every rule of the configuration reference (distinct domains and IP:PORTs,
// weights on all IPs of a list or none with one non-zero, no weight on IPv6 or a single IP, an
// origin domain that does not loop into its accelerated domain, no protocol on clusters, no
// host on buckets, a switch only with a slave, values within their ranges), so that every case
// reaches the request-flow property (`valid_configurations_reach_the_request_flow`).

const VALID_DOMAINS: &[&str] = &["www.test.com", "*.test.com", "*", "img.example.org"];
const VALID_V4: &[&str] = &["127.0.5.1", "127.0.5.2", "127.0.5.3", "127.0.6.9"];
const VALID_PORTS: &[Option<u32>] = &[None, Some(80), Some(443), Some(8080), Some(65535)];

fn valid_ips() -> impl Strategy<Value = Value> {
    prop_oneof![
        // Weighted: 2..=4 distinct IPv4s, every one with a port and a weight, one non-zero.
        (
            prop::sample::subsequence(VALID_V4, 2..=4),
            prop::collection::vec((prop::sample::select(VALID_PORTS), 0u32..=1_000), 4),
            any::<prop::sample::Index>(),
        )
            .prop_map(|(ips, extra, nonzero)| {
                let keep = nonzero.index(ips.len());
                let list: Vec<String> = ips
                    .iter()
                    .zip(extra)
                    .enumerate()
                    .map(|(i, (ip, (port, w)))| {
                        let w = if i == keep { w.max(1) } else { w };
                        match port {
                            Some(p) => format!("{ip}:{p}:{w}"),
                            None => format!("{ip}::{w}"),
                        }
                    })
                    .collect();
                json!({ "ips": list })
            }),
        // Unweighted: 1..=4 distinct addresses, IPv6 allowed.
        (
            prop::sample::subsequence(VALID_V4, 1..=3),
            any::<bool>(),
            prop::sample::select(VALID_PORTS),
        )
            .prop_map(|(ips, v6, port)| {
                let mut list: Vec<String> = ips
                    .iter()
                    .map(|ip| match port {
                        Some(p) => format!("{ip}:{p}"),
                        None => ip.to_string(),
                    })
                    .collect();
                if v6 {
                    list.push("[::1]:8443".into());
                }
                json!({ "ips": list })
            }),
    ]
}

fn valid_clusters() -> impl Strategy<Value = Value> {
    (
        prop::sample::subsequence(&["c1", "c2", "outbound|80||o.svc.cluster.local"][..], 1..=3),
        any::<bool>(),
        prop::collection::vec(0u32..=3, 3),
    )
        .prop_map(|(names, weighted, w)| {
            let weighted = weighted && names.len() > 1;
            let list: Vec<Value> = names
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    if weighted {
                        json!({ "name": name, "weight": if i == 0 { w[i].max(1) } else { w[i] } })
                    } else {
                        json!({ "name": name })
                    }
                })
                .collect();
            json!({ "clusters": list })
        })
}

/// A valid origin for accelerated domain `accelerated` (a domain origin never loops into it).
fn valid_origin(accelerated: &'static str) -> impl Strategy<Value = Value> {
    let names: &'static [&'static str] = if accelerated.ends_with("test.com") {
        &["origin.example.com", "origin.example.com:8443"]
    } else {
        &["origin.test.com", "origin.example.com:8443"]
    };
    let domain = prop::sample::select(names).prop_map(|d| json!({ "domain": d }));
    let bucket = prop::sample::select(&["s3.test", "s3.test:9000"][..]).prop_map(
        |endpoint| json!({ "bucket": { "endpoint": endpoint, "bucket": "bkt", "region": "r" } }),
    );
    (
        prop_oneof![4 => valid_ips(), 1 => domain, 1 => valid_clusters(), 1 => bucket],
        prop::option::of(prop::sample::select(&["http", "https", "follow"][..])),
        prop::option::of(prop::sample::select(&["h.example", "o.test:8080"][..])),
    )
        .prop_map(|(mut o, protocol, host)| {
            if let Some(map) = o.as_object_mut() {
                if let Some(p) = protocol.filter(|_| !map.contains_key("clusters")) {
                    map.insert("protocol".into(), json!(p));
                }
                if let Some(h) = host.filter(|_| !map.contains_key("bucket")) {
                    map.insert("host".into(), json!(h));
                }
            }
            o
        })
}

fn valid_domain(name: &'static str) -> impl Strategy<Value = Value> {
    (
        valid_origin(name),
        prop::option::of(valid_origin(name)),
        any::<bool>(),
        prop::option::of((
            prop::sample::subsequence(&["4xx", "5xx", "connect_error", "timeout"][..], 0..=4),
            prop::collection::btree_set(300u32..=599, 0..3),
            0u32..=10,
            prop::option::of(prop::sample::select(&[1u64, 600, 8 << 20, 32 << 20][..])),
        )),
        prop::option::of((0u64..=86_400, any::<bool>())),
    )
        .prop_map(move |(master, slave, switch, failover, detection)| {
            let mut d = json!({ "domain": name, "master": master });
            if let Some(s) = slave {
                d["slave"] = s;
                d["master_slave_switch"] = json!(switch);
            }
            if let Some(f) = failover {
                d["failover"] = failover_json(f);
            }
            if let Some((secs, on_5xx)) = detection {
                d["detection"] = json!({ "block_seconds": secs, "block_on_5xx": on_5xx });
            }
            d
        })
}

/// A configuration every rule accepts: 1..=4 distinct domains, each valid.
pub(crate) fn valid_config() -> impl Strategy<Value = Value> {
    (
        prop::sample::subsequence(VALID_DOMAINS, 1..=4).prop_flat_map(|names| {
            names
                .into_iter()
                .map(|n| valid_domain(n).boxed())
                .collect::<Vec<_>>()
        }),
        any::<bool>(),
        prop::option::of(400u32..=599),
    )
        .prop_map(|(domains, debug, status)| {
            let mut c = json!({ "domains": domains, "debug_headers": debug });
            if let Some(s) = status {
                c["unknown_host_status"] = json!(s);
            }
            c
        })
}

/// Every configured value is fine; an error must be the documented one-line shape.
pub(crate) fn check_parse(bytes: &[u8]) -> Result<Option<PluginConfig>, TestCaseError> {
    match parse(bytes) {
        Ok(config) => {
            // The normalized form is itself a valid configuration (what `check` prints).
            let normalized = serde_json::to_vec(&config.normalized())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(parse(&normalized).is_ok(), "normalized form rejected");
            for d in &config.domains {
                prop_assert!(d.master.total_weight() > 0);
            }
            Ok(Some(config))
        }
        Err(e) => {
            let text = e.to_string();
            prop_assert!(text.starts_with("invalid origin-pull configuration: "));
            prop_assert!(text.contains("field "), "{}", text);
            prop_assert!(!text.contains('\n') && !text.contains('\r'), "{:?}", text);
            prop_assert!(text.len() < 1_000, "{} bytes", text.len());
            Ok(None)
        }
    }
}

/// A domain's `failover` block from its generated parts (both generators build it alike).
fn failover_json<
    O: serde::Serialize,
    C: serde::Serialize,
    R: serde::Serialize,
    L: serde::Serialize,
>(
    (on, codes, retries, limit): (O, C, R, Option<L>),
) -> Value {
    let mut f = json!({ "on": on, "status_codes": codes, "master_retries": retries });
    if let Some(limit) = limit {
        f["max_response_body_bytes"] = json!(limit);
    }
    f
}
