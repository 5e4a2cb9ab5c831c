//! Client requests, origin answers and callout results, and `drive`: the request-flow property
//! (a request only ever goes to an origin of its own domain's configuration, the client gets
//! at most one answer, attempts are bounded, blocks respect `block_seconds`).

use std::collections::HashSet;
use std::rc::Rc;

use proptest::prelude::*;

use origin_pull::config::{PluginConfig, Scheme};
use origin_pull::engine::blocks::BlockTable;
use origin_pull::engine::classify::flags;
use origin_pull::engine::exchange::{header, ClientRequest, Exchange, ORIGINAL_DST_HEADER};
use origin_pull::engine::metrics::Metrics;
use origin_pull::headers::HeaderMap;
use origin_pull::testing::FakeHost;

// ------------------------------------------------------------------ requests

#[derive(Debug, Clone)]
pub(crate) struct Req {
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
                    ("x-envoy-original-dst-host", "127.66.66.66:80"),
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

pub(crate) fn request() -> impl Strategy<Value = Req> {
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
                    out.insert((
                        r.cluster.to_string(),
                        r.original_dst.as_deref().map(str::to_owned),
                    ));
                }
            }
        }
    }
    out
}

fn spoofing_headers(host: &mut FakeHost, req: &Req) {
    host.request_headers = vec![
        (":method".into(), req.method.into()),
        (":path".into(), req.path.into()),
        (":authority".into(), req.host.into()),
        (
            ":scheme".into(),
            if req.https { "https" } else { "http" }.into(),
        ),
        ("x-origin-pull-cluster".into(), "evil_cluster".into()),
        (ORIGINAL_DST_HEADER.into(), "127.66.66.66:80".into()),
        // Envoy hands header names over lower-cased; a duplicate is the spoofing variant left.
        (ORIGINAL_DST_HEADER.into(), "127.66.66.66:81".into()),
        ("connection".into(), "keep-alive, x-foo".into()),
        ("content-length".into(), "3".into()),
    ];
}

/// A fault planted in the system under test to show that the property catches it.
pub(crate) type Fault = fn(&mut FakeHost);

pub(crate) fn drive(
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
        spoofing_headers(host, req);
        let (replies0, callouts0) = (host.replies.len(), host.callouts.len());
        // The glue's request phase: the engine reads the client's headers and sets the routed
        // request's (`host.request_headers` plays Envoy's header map).
        let headers = HeaderMap::from_pairs(&host.request_headers);
        let client = ClientRequest {
            headers: &headers,
            has_body: req.body.is_some(),
            worker: "w",
            stats: origin_pull::s3::bucket::BucketStats::default(),
            metrics: Some(&metrics[w]),
        };
        let Some(mut ex) = Exchange::on_request_headers(Some(config), blocks, host, client) else {
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
            allowed.contains(&(
                route.cluster.to_string(),
                route.original_dst.as_deref().map(str::to_owned)
            )),
            "routed to {:?}",
            route
        );
        // Whatever the client sent, the routed request carries the engine's routing headers,
        // once each.
        let dsts: Vec<&String> = host
            .request_headers
            .iter()
            .filter(|(k, _)| k == ORIGINAL_DST_HEADER)
            .map(|(_, v)| v)
            .collect();
        prop_assert!(dsts.len() <= 1, "{:?}", host.request_headers);
        let cluster = header(&host.request_headers, &config.envoy.cluster_header);
        if ex.routes_chain() {
            prop_assert!(cluster.is_some_and(|c| c.starts_with("origin_pull_chain")));
        } else {
            prop_assert_eq!(cluster, Some(route.cluster.as_ref()));
            prop_assert_eq!(
                dsts.first().map(|d| d.as_str()),
                route.original_dst.as_deref()
            );
        }
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
                    let value = value.map(std::borrow::Cow::into_owned);
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
