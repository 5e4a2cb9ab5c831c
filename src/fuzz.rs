//! Property-based fuzzing (proptest, stable Rust) of the configuration parser and of the
//! per-request decisions. `make test` runs a bounded number of cases; `make fuzz` runs many
//! more (`PROPTEST_CASES`). The properties: nothing panics, every error names a field on one
//! line, and whatever the client, the origins and shared data do, a request only ever goes to
//! an origin of its own domain's configuration.
//!
//! Two configuration streams: `valid_config()` builds configurations every rule accepts, so
//! every case reaches the request-flow property (asserted: `request_flow_property` fails when
//! fewer cases than the minimum reached it); `config_value()` leans towards invalid ones (about
//! 5 % accepted) for the parser's error shape. Each check has a test with a planted fault.

use std::collections::HashSet;
use std::rc::Rc;

use proptest::prelude::*;
use serde_json::{json, Value};

use crate::config::{parse, PluginConfig, Scheme};
use crate::exchange::{Exchange, RequestInfo, ORIGINAL_DST_HEADER};
use crate::failover::flags;
use crate::health::{block_key, domain_key, BlockOutcome, BlockTable};
use crate::host::Host;
use crate::metrics::Metrics;
use crate::testing::FakeHost;

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
    "10.0.0.1",
    "10.0.0.2",
    "127.0.6.9",
    "[2001:db8::1]",
    "999.1.1.1",
    "a.b",
];
const ORIGIN_DOMAINS: &[&str] = &[
    "origin.example.com",
    "origin.example.com:8443",
    "www.test.com",
    "img.test.com",
    "10.0.0.1",
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
                        let addr = format!("10.0.0.{}:80", i + 1);
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
            if let Some((on, codes, retries, limit)) = failover {
                let mut f = json!({ "on": on, "status_codes": codes, "master_retries": retries });
                if let Some(limit) = limit {
                    f["max_response_body_bytes"] = json!(limit);
                }
                d["failover"] = f;
            }
            if let Some((secs, on_5xx)) = detection {
                let secs = if valid_leaning { secs % 120 } else { secs };
                d["detection"] = json!({ "block_seconds": secs, "block_on_5xx": on_5xx });
            }
            d
        })
}

fn config_value(valid_leaning: bool) -> impl Strategy<Value = Value> {
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
const VALID_V4: &[&str] = &["10.0.0.1", "10.0.0.2", "10.0.0.3", "127.0.6.9"];
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
                    list.push("[2001:db8::1]:8443".into());
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
            if let Some((on, codes, retries, limit)) = failover {
                let mut f = json!({ "on": on, "status_codes": codes, "master_retries": retries });
                if let Some(limit) = limit {
                    f["max_response_body_bytes"] = json!(limit);
                }
                d["failover"] = f;
            }
            if let Some((secs, on_5xx)) = detection {
                d["detection"] = json!({ "block_seconds": secs, "block_on_5xx": on_5xx });
            }
            d
        })
}

/// A configuration every rule accepts: 1..=4 distinct domains, each valid.
fn valid_config() -> impl Strategy<Value = Value> {
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
fn check_parse(bytes: &[u8]) -> Result<Option<PluginConfig>, TestCaseError> {
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

// ------------------------------------------------------------------ requests

#[derive(Debug, Clone)]
struct Req {
    worker: usize,
    host: &'static str,
    path: &'static str,
    https: bool,
    method: &'static str,
    body: Option<(usize, bool)>,
    routed_status: u32,
    routed_flags: u64,
    callouts: Vec<CalloutResult>,
    advance_ms: u64,
    cas_mismatches: u32,
}

#[derive(Debug, Clone)]
struct CalloutResult {
    stale: bool,
    no_headers: bool,
    status: &'static str,
    extra: Vec<(&'static str, &'static str)>,
    body_size: usize,
}

const REQUEST_HOSTS: &[&str] = &[
    "www.test.com",
    "WWW.TEST.COM.",
    "www.test.com:8080",
    "img.test.com",
    "evil.example",
    "",
    "[::1]:80",
    "a.b",
    "img.example.org",
    "x\u{0}y",
];
const FLAGS: &[u64] = &[
    0,
    flags::UPSTREAM_CONNECTION_FAILURE,
    flags::UPSTREAM_REQUEST_TIMEOUT,
    flags::NO_CLUSTER_FOUND,
    flags::UPSTREAM_REMOTE_RESET,
    flags::DNS_RESOLUTION_FAILURE,
    u64::MAX,
];

fn callout_result() -> impl Strategy<Value = CalloutResult> {
    (
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.15),
        prop::sample::select(&["200", "404", "502", "503", "504", "999", "abc", ""][..]),
        prop::collection::vec(
            prop::sample::select(
                &[
                    ("connection", "close"),
                    ("transfer-encoding", "chunked"),
                    ("x-envoy-original-dst-host", "6.6.6.6:80"),
                    ("content-length", "7"),
                    (":path", "/evil"),
                    ("x-ok", "1"),
                ][..],
            ),
            0..3,
        ),
        prop_oneof![0usize..600, Just(9 << 20), Just(usize::MAX / 2)],
    )
        .prop_map(
            |(stale, no_headers, status, extra, body_size)| CalloutResult {
                stale,
                no_headers,
                status,
                extra,
                body_size,
            },
        )
}

fn request() -> impl Strategy<Value = Req> {
    (
        (
            0usize..2,
            prop::sample::select(REQUEST_HOSTS),
            any::<bool>(),
            prop::sample::select(&["GET", "HEAD", "POST", "PUT", "get"][..]),
            prop::option::of((prop_oneof![0usize..64, Just(2 << 20)], any::<bool>())),
        ),
        prop_oneof![200u32..=200, 400u32..600, 0u32..1_000],
        (
            prop::sample::select(FLAGS),
            prop::sample::select(&["/1.jpg", "/", "/a%2Fb?x=1&y", "//..//x", "*", ""][..]),
        ),
        prop::collection::vec(callout_result(), 0..6),
        prop_oneof![Just(0u64), 0u64..2_000, Just(3_600_000)],
        prop_oneof![3 => Just(0u32), 1 => 1u32..40],
    )
        .prop_map(
            |(
                (worker, host, https, method, body),
                status,
                (flags, path),
                callouts,
                advance,
                cas,
            )| Req {
                worker,
                host,
                path,
                https,
                method,
                body,
                routed_status: status,
                routed_flags: flags,
                callouts,
                advance_ms: advance,
                cas_mismatches: cas,
            },
        )
}

/// Every (cluster, original destination) any target of any domain could be routed to.
fn configured_routes(config: &PluginConfig) -> HashSet<(String, Option<String>)> {
    let mut out = HashSet::new();
    for d in &config.domains {
        for set in std::iter::once(&d.master).chain(d.slave.as_ref()) {
            for t in &set.targets {
                for scheme in [Scheme::Http, Scheme::Https] {
                    let r = t.route(scheme);
                    out.insert((r.cluster.clone(), r.original_dst.clone()));
                }
            }
        }
    }
    out
}

fn spoofing_headers(host: &mut FakeHost, method: &str, authority: &str) {
    host.request_headers = vec![
        (":method".into(), method.into()),
        (":path".into(), "/p?q=1".into()),
        (":authority".into(), authority.into()),
        (":scheme".into(), "http".into()),
        ("x-origin-pull-cluster".into(), "evil_cluster".into()),
        (ORIGINAL_DST_HEADER.into(), "6.6.6.6:80".into()),
        // Envoy hands header names over lower-cased; a duplicate is the spoofing variant left.
        (ORIGINAL_DST_HEADER.into(), "6.6.6.6:81".into()),
        ("connection".into(), "keep-alive, x-foo".into()),
        ("content-length".into(), "3".into()),
    ];
}

/// A fault planted in the system under test to show that the property catches it.
type Fault = fn(&mut FakeHost);

fn drive(
    config: &Rc<PluginConfig>,
    requests: &[Req],
    fault: Option<Fault>,
) -> Result<(), TestCaseError> {
    let allowed = configured_routes(config);
    let mut first = FakeHost::new(7);
    let second = first.sibling(11);
    let mut hosts = [std::mem::replace(&mut first, FakeHost::new(1)), second];
    let mut tables = [BlockTable::default(), BlockTable::default()];
    let metrics = [
        Rc::new(Metrics::new(config.clone(), Rc::default())),
        Rc::new(Metrics::new(config.clone(), Rc::default())),
    ];
    for req in requests {
        let w = req.worker;
        let host = &mut hosts[w];
        let blocks = &mut tables[w];
        host.now_ms += req.advance_ms;
        host.shared.borrow_mut().inject_cas_mismatches = req.cas_mismatches;
        spoofing_headers(host, req.method, req.host);
        let (replies0, callouts0) = (host.replies.len(), host.callouts.len());
        let info = RequestInfo {
            authority: req.host,
            scheme: if req.https { "https" } else { "http" },
            method: req.method,
            path: req.path,
            has_body: req.body.is_some(),
            worker: "w",
            stats: crate::bucket::BucketStats::default(),
            metrics: Some(&metrics[w]),
        };
        let Some(mut ex) = Exchange::start(config, blocks, host, &info) else {
            prop_assert_eq!(
                host.replies.len(),
                replies0 + 1,
                "no answer for {}",
                req.host
            );
            prop_assert_eq!(host.callouts.len(), callouts0);
            continue;
        };
        prop_assert!(config.domain_index(req.host).is_some());
        let (route, _) = ex.route().ok_or_else(|| TestCaseError::fail("no route"))?;
        prop_assert!(
            allowed.contains(&(route.cluster.clone(), route.original_dst.clone())),
            "routed to {:?}",
            route
        );
        if let Some((len, eos)) = req.body {
            if ex.wants_request_body() {
                ex.on_request_body(&vec![b'b'; len], eos);
            }
        }
        if ex.routes_chain() {
            // Envoy's router carries the failover: every attempt's address is a configured
            // origin's, and the client gets at most one answer.
            let dsts: Vec<Option<String>> = allowed.iter().map(|(_, d)| d.clone()).collect();
            for (name, value) in ex.chain_headers() {
                if name == ORIGINAL_DST_HEADER || name.starts_with("x-origin-pull-dst-") {
                    prop_assert!(dsts.contains(&value), "{} {:?}", name, value);
                }
            }
            let attempt = Some(req.routed_status as usize % 3).filter(|a| *a > 0);
            ex.on_chain_response(host, req.routed_status, req.routed_flags, attempt);
            prop_assert!(host.callouts.len() == callouts0);
            prop_assert!(host.replies.len() <= replies0 + 1);
            continue;
        }
        ex.on_response_headers(host, blocks, req.routed_status, req.routed_flags);
        for result in &req.callouts {
            let Some(pending) = host.callouts.last().map(|c| c.token) else {
                break;
            };
            if host.replies.len() > replies0 {
                break;
            }
            let extra: Vec<(&str, &str)> = std::iter::once((":status", result.status))
                .chain(result.extra.iter().copied())
                .collect();
            host.respond(0, &[], &[]);
            host.response_headers = extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            host.response_body = vec![b's'; result.body_size.min(600)];
            let token = if result.stale {
                pending + 1_000
            } else {
                pending
            };
            let headers = if result.no_headers { 0 } else { extra.len() };
            ex.on_callout_response(host, blocks, token, headers, result.body_size);
        }
        if let Some(fault) = fault {
            fault(host);
        }
        // At most one answer to the client, and a bounded number of attempts.
        prop_assert!(host.replies.len() <= replies0 + 1);
        let retries = config
            .domains
            .iter()
            .map(|d| d.failover.master_retries)
            .max();
        let made = host.callouts.len() - callouts0;
        // Bounded: up to `master_retries` others per role, the slave, and (when the slave was
        // asked first because every master was blocked) one master.
        prop_assert!(
            made as u32 <= 2 * retries.unwrap_or(0) + 2,
            "{} callouts",
            made
        );
        for callout in &host.callouts[callouts0..] {
            let dsts: Vec<&str> = callout
                .headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(ORIGINAL_DST_HEADER))
                .map(|(_, v)| v.as_str())
                .collect();
            prop_assert!(dsts.len() <= 1, "{:?}", callout.headers);
            let dst = dsts.first().map(|d| d.to_string());
            prop_assert!(
                allowed.contains(&(callout.cluster.clone(), dst.clone())),
                "callout to {} {:?}",
                callout.cluster,
                dst
            );
            prop_assert!(callout.header(&config.envoy.cluster_header).is_none());
        }
        for reply in &host.replies[replies0..] {
            prop_assert!(
                (100..=599).contains(&reply.status),
                "status {}",
                reply.status
            );
            prop_assert!(reply.headers.iter().all(|(k, _)| !k.starts_with(':')
                && !k.eq_ignore_ascii_case("connection")
                && !k.eq_ignore_ascii_case("transfer-encoding")));
        }
    }
    // A domain with `block_seconds: 0` never blocked anything, whatever its failures; every
    // block of another domain is announced by its domain key (what the request path reads).
    let reader = hosts[0].sibling(3);
    let table = BlockTable::default();
    for domain in &config.domains {
        for set in [Some(&domain.master), domain.slave.as_ref()]
            .into_iter()
            .flatten()
        {
            for target in &set.targets {
                for route in &target.routes {
                    let blocked =
                        table.is_blocked(&reader, &domain.name, &route.label, reader.now_ms);
                    if domain.detection.block_ms == 0 {
                        prop_assert!(!blocked, "{} blocked with block_seconds 0", route.label);
                    } else if blocked {
                        prop_assert!(table.domain_has_blocks(&reader, &domain.name, reader.now_ms));
                    }
                }
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ shared block state

/// One step of two workers racing on the block table: worker `worker` blocks `label`; when
/// `race` is set, the other worker blocks `race` between this worker's read and its write
/// (as a real read-modify-write would); `mismatches` more CAS conflicts are injected.
#[derive(Debug, Clone)]
struct BlockStep {
    worker: usize,
    label: u8,
    race: Option<u8>,
    mismatches: u32,
}

fn block_step() -> impl Strategy<Value = BlockStep> {
    (
        0usize..2,
        0u8..12,
        prop::option::of(0u8..12),
        prop_oneof![4 => Just(0u32), 1 => 1u32..8],
    )
        .prop_map(|(worker, label, race, mismatches)| BlockStep {
            worker,
            label,
            race,
            mismatches,
        })
}

fn label(n: u8) -> String {
    format!("10.0.0.{n}:80")
}

const DOMAIN: &str = "www.test.com";

fn no_block_is_lost(steps: &[BlockStep]) -> Result<(), TestCaseError> {
    let first = FakeHost::new(3);
    let mut hosts = [first.sibling(5), first.sibling(9)];
    let mut tables = [BlockTable::default(), BlockTable::default()];
    let mut expected: HashSet<String> = HashSet::new();
    for step in steps {
        let host = &mut hosts[step.worker];
        let mut theirs = None;
        if let Some(other) = step.race {
            // The other worker's block: it raises the domain key (the write both workers
            // race on) between this worker's read and write, then writes its origin's key.
            let until = (host.now_ms + 60_000).to_le_bytes().to_vec();
            let raced = if other == step.label {
                block_key(DOMAIN, &label(other))
            } else {
                theirs = Some((block_key(DOMAIN, &label(other)), until.clone()));
                domain_key(DOMAIN)
            };
            host.shared.borrow_mut().interleaved_write = Some((raced, until));
            expected.insert(label(other));
        }
        host.shared.borrow_mut().inject_cas_mismatches = step.mismatches;
        let outcome = tables[step.worker].block(host, DOMAIN, &label(step.label), 60_000);
        prop_assert_ne!(outcome, BlockOutcome::Failed);
        expected.insert(label(step.label));
        // This worker did not write (already blocked): the other worker's write lands anyway.
        let pending = host.shared.borrow_mut().interleaved_write.take();
        for (key, value) in pending.into_iter().chain(theirs) {
            let _ = host.shared_set(&key, &value, None);
        }
    }
    for (host, table) in hosts.iter().zip(tables.iter()) {
        prop_assert!(table.domain_has_blocks(host, DOMAIN, host.now_ms));
        for l in &expected {
            prop_assert!(
                table.is_blocked(host, DOMAIN, l, host.now_ms),
                "block of {} lost",
                l
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn two_racing_workers_lose_no_block(steps in prop::collection::vec(block_step(), 1..30)) {
        no_block_is_lost(&steps)?;
    }

    #[test]
    fn parser_survives_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_parse(&bytes)?;
    }

    #[test]
    fn parser_survives_mutated_examples(
        example in prop::sample::select(&[
            include_str!("../envoy/examples/demo.json"),
            include_str!("../envoy/examples/weighted-ips.json"),
        ][..]),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut bytes = example.as_bytes().to_vec();
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        check_parse(&bytes)?;
    }

    #[test]
    fn parser_judges_random_configurations(config in config_value(false)) {
        check_parse(&serde_json::to_vec(&config).unwrap_or_default())?;
    }

    /// The separate invalid-leaning stream: the few configurations it gets accepted also go
    /// through the request flow.
    #[test]
    fn random_configurations_are_judged_and_served(
        config in config_value(true),
        requests in prop::collection::vec(request(), 1..8),
    ) {
        let bytes = serde_json::to_vec(&config).unwrap_or_default();
        if let Some(parsed) = check_parse(&bytes)? {
            // Both failover mechanisms: router-carried chains and callouts.
            let mut by_callout = parsed.clone();
            by_callout.envoy.failover = crate::config::FailoverMechanism::Callout;
            drive(&Rc::new(parsed), &requests, None)?;
            drive(&Rc::new(by_callout), &requests, None)?;
        }
    }
}

// ------------------------------------------------------------------ the request-flow property

/// Runs the request-flow property over `cases` configurations from `configs` (each with up to
/// 8 requests) and counts the cases that reached it (their configuration was accepted). Fails
/// when the property fails, or when fewer than `min_reached` cases reached it.
fn request_flow_property(
    configs: impl Strategy<Value = Value>,
    cases: u32,
    min_reached: usize,
    fault: Option<Fault>,
) -> Result<usize, String> {
    use proptest::test_runner::{Config, TestRunner};
    use std::sync::atomic::{AtomicUsize, Ordering};

    let reached = AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(
            &(configs, prop::collection::vec(request(), 1..8)),
            |(config, requests)| {
                let bytes = serde_json::to_vec(&config).unwrap_or_default();
                if let Some(parsed) = check_parse(&bytes)? {
                    reached.fetch_add(1, Ordering::Relaxed);
                    // Both failover mechanisms: router-carried chains and callouts.
                    let mut by_callout = parsed.clone();
                    by_callout.envoy.failover = crate::config::FailoverMechanism::Callout;
                    drive(&Rc::new(parsed), &requests, fault)?;
                    drive(&Rc::new(by_callout), &requests, fault)?;
                }
                Ok(())
            },
        )
        .map_err(|e| e.to_string())?;
    let reached = reached.into_inner();
    if reached < min_reached {
        return Err(format!(
            "only {reached} of {cases} cases reached the request-flow property (minimum {min_reached})"
        ));
    }
    Ok(reached)
}

/// `PROPTEST_CASES` (`make test`: 256, `make fuzz`: FUZZ_CASES), like the `proptest!` tests.
fn cases() -> u32 {
    proptest::test_runner::Config::default().cases
}

#[test]
fn valid_configurations_reach_the_request_flow() {
    // Valid by construction: every configuration is accepted (check_parse asserts the rest),
    // so every case reaches the property.
    let cases = cases();
    let strategy = valid_config().prop_map(|config| {
        let bytes = serde_json::to_vec(&config).unwrap_or_default();
        if let Err(e) = parse(&bytes) {
            panic!("the valid generator made a rejected configuration: {e}\n{config}");
        }
        config
    });
    let reached = request_flow_property(strategy, cases, cases as usize, None);
    assert_eq!(reached, Ok(cases as usize));
}

#[test]
fn the_minimum_of_reached_cases_catches_a_generator_of_rejected_configurations() {
    // PLANTED FAULT: the old invalid-leaning generator (about 5 % accepted) in place of the
    // valid one: the count falls below the minimum and the run fails.
    let result = request_flow_property(config_value(true), 64, 64, None);
    let err = result.expect_err("the minimum did not notice rejected configurations");
    assert!(
        err.contains("cases reached the request-flow property"),
        "{err}"
    );
}

#[test]
fn the_request_flow_property_catches_a_callout_to_an_unconfigured_origin() {
    // PLANTED FAULT: the filter's callouts are redirected to an origin no configuration names
    // (what a routing bug would do): the property fails on the first case that made a callout.
    fn redirect_callouts(host: &mut FakeHost) {
        for callout in &mut host.callouts {
            for (name, value) in &mut callout.headers {
                if name.eq_ignore_ascii_case(ORIGINAL_DST_HEADER) {
                    *value = "6.6.6.6:80".into();
                }
            }
            callout.cluster = "evil_cluster".into();
        }
    }
    let result = request_flow_property(valid_config(), 256, 0, Some(redirect_callouts));
    let err = result.expect_err("a callout to an unconfigured origin went unnoticed");
    assert!(err.contains("callout to"), "{err}");
}
