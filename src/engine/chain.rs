//! Streaming failover through Envoy's router (`envoy.failover: router`).
//!
//! The filter plans the whole failover when the request arrives: the first origin, then the
//! slave (or, without a slave, other master IPs). It routes the request to a *composite*
//! cluster whose sub-cluster is chosen by Envoy's retry attempt (attempt 1 → the first, …),
//! names each attempt's `IP:PORT` in its own header (one `ORIGINAL_DST` cluster per attempt
//! position reads it) and sets Envoy's per-request retry headers from the domain's failover
//! rules. The router then re-sends the request itself and streams whichever answer it keeps:
//! nothing is buffered, whatever the size.
//!
//! Who observes the attempts depends on whether a later attempt needs another `Host`:
//! - *Logged* chains (every attempt sends the same `Host`, the usual case): no module runs per
//!   attempt. The composite cluster carries no wasm filter, the route retries the statuses
//!   themselves, and the router's upstream log calls the module (root id [`LOGGER_ROOT_ID`],
//!   an access logger behind a native filter that passes only 4xx/5xx and flagged attempts)
//!   for each failed attempt: it counts the failure and blocks the origin. An attempt that
//!   succeeds costs nothing beyond the listener's own filter.
//! - *Observed* chains (the slave's `Host` differs from the master's): the same module runs as an
//!   upstream HTTP filter on the composite cluster, once per attempt (root id
//!   [`UPSTREAM_ROOT_ID`]): it sets the attempt's `Host`, counts the attempt against its origin,
//!   blocks an origin that did not answer, and marks an answer to fail over on with
//!   [`FAILOVER_STATUS`].
//!
//! Both find the request's [`Plan`] (kept by the downstream filter of the same worker) by the
//! id in [`PLAN_HEADER`].

use std::rc::Rc;

use crate::config::{
    Domain, FailoverMechanism, OriginKind, OriginSet, PluginConfig, Route, Scheme,
};
use crate::engine::metrics::Metrics;

/// Root id of the upstream (per-attempt) instance of the module (observed chains).
pub const UPSTREAM_ROOT_ID: &str = "origin_pull_upstream";
/// Root id of the module as the router's upstream access logger (logged chains).
pub const LOGGER_ROOT_ID: &str = "origin_pull_attempts";
/// Composite cluster names start with one of these, which also picks the route's retry policy
/// (the route matches the cluster header's prefix, so the filter sets no header for it):
/// - [`CHAIN_PREFIX`]: a logged chain with the usual failover rules ([`Domain::usual_retry`]);
///   its route retries once, on a connect failure, a reset or first-byte timeout and every
///   4xx/5xx status ([`USUAL_RETRY_STATUSES`]), with no per-request retry headers;
/// - [`CHAIN_PREFIX_RULES`]: a logged chain with other rules: the default route, which retries
///   what the filter's per-request headers say ([`RETRIABLE_CODES_HEADER`] & co.);
/// - [`CHAIN_PREFIX_OBSERVED`]: an observed chain: the route retries [`FAILOVER_STATUS`], the
///   upstream instance's mark.
pub const CHAIN_PREFIX: &str = "origin_pull_chain";
pub const CHAIN_PREFIX_RULES: &str = "origin_pull_chain_rules";
pub const CHAIN_PREFIX_OBSERVED: &str = "origin_pull_chain_observed";
/// Statuses a logged chain with other failover rules retries (Envoy adds them to the route's).
pub const RETRIABLE_CODES_HEADER: &str = "x-envoy-retriable-status-codes";
/// Set by a logged chain's drain filter on an answer whose status was not a valid HTTP status
/// ("2000"): the router saw a 502 instead (retried like one); the listener's filter reads it on
/// a relayed 502 only, and removes it.
pub const BROKEN_STATUS_HEADER: &str = "x-origin-pull-broken-status";

/// The id of a routed failover's [`Plan`] (the request's random id, hex), read by the upstream
/// instance.
pub const PLAN_HEADER: &str = "x-origin-pull-plan";
/// Envoy's per-request retry headers (honoured by the router when a filter sets them; Envoy
/// removes a client's copies of `x-envoy-*` headers from external requests).
pub const RETRY_ON_HEADER: &str = "x-envoy-retry-on";
/// The status the upstream instance gives an answer the domain fails over on (with a slave,
/// when a later attempt exists): the route's `retriable_status_codes` lists only it, so the
/// router retries exactly the statuses the domain's rules name (no per-request list of codes),
/// and an answer that is relayed — every 2xx/3xx — needs nothing written. An origin's own
/// answer with this status is shown to the router as 502 unless the domain fails over on it.
/// Unassigned by HTTP; the listener's filter restores the origin's status if the router ever
/// relays it (no retry left, retry overflow).
pub const FAILOVER_STATUS: u32 = 590;
pub const MAX_RETRIES_HEADER: &str = "x-envoy-max-retries";
/// Set by Envoy's router on each attempt: the time it gives the attempt (the route's
/// `per_try_timeout`, the first-byte timeout) in ms.
pub const EXPECTED_TIMEOUT_HEADER: &str = "x-envoy-expected-rq-timeout-ms";
/// Longest chain: the first origin plus `failover.master_retries` (at most 10).
pub const MAX_ATTEMPTS: usize = 11;

/// Header naming the `IP:PORT` of attempt `k` (1-based): attempt 1 keeps Envoy's usual
/// `x-envoy-original-dst-host`.
pub fn dst_header(k: usize) -> &'static str {
    const NAMES: [&str; MAX_ATTEMPTS] = [
        "x-envoy-original-dst-host",
        "x-origin-pull-dst-2",
        "x-origin-pull-dst-3",
        "x-origin-pull-dst-4",
        "x-origin-pull-dst-5",
        "x-origin-pull-dst-6",
        "x-origin-pull-dst-7",
        "x-origin-pull-dst-8",
        "x-origin-pull-dst-9",
        "x-origin-pull-dst-10",
        "x-origin-pull-dst-11",
    ];
    NAMES
        .get(k.saturating_sub(1))
        .copied()
        .unwrap_or(NAMES[MAX_ATTEMPTS - 1])
}

/// The cluster attempt `k` of a chain uses to reach `route`: IP origins need the
/// `ORIGINAL_DST` cluster of that position (it reads [`dst_header`]`(k)`); others are
/// reached through their own cluster at any position.
pub fn attempt_cluster(route: &Route, k: usize) -> String {
    if route.original_dst.is_some() && k > 1 {
        format!("{}_{k}", route.cluster)
    } else {
        route.cluster.to_string()
    }
}

/// Name of the composite cluster over `subs` (attempt order), starting with `prefix` (see
/// [`CHAIN_PREFIX`]).
pub fn chain_name(subs: &[String], prefix: &str) -> String {
    let mut name = String::from(prefix);
    for sub in subs {
        name.push('(');
        name.push_str(sub);
        name.push(')');
    }
    name
}

/// Appends `(<attempt_cluster(route, k)>)` to a composite cluster's name, as [`chain_name`]
/// writes it.
pub fn push_attempt_cluster(name: &mut String, route: &Route, k: usize) {
    name.push('(');
    name.push_str(&route.cluster);
    if route.original_dst.is_some() && k > 1 {
        name.push('_');
        push_decimal(name, k as u64);
    }
    name.push(')');
}

fn push_decimal(out: &mut String, n: u64) {
    let mut div = 1;
    while n / div >= 10 {
        div *= 10;
    }
    loop {
        out.push(char::from(b'0' + ((n / div) % 10) as u8));
        if div == 1 {
            break;
        }
        div /= 10;
    }
}

/// Whether a set is reached over TLS for a client request of `scheme` (cluster origins:
/// their own transport socket decides, origin-pull sets no SNI for them).
fn tls(set: &OriginSet, scheme: Scheme) -> bool {
    set.kind != OriginKind::Clusters
        && set
            .targets
            .first()
            .and_then(|t| t.route(scheme).scheme)
            .is_some_and(|s| s == Scheme::Https)
}

impl Domain {
    /// Whether Envoy's router carries this domain's failovers for requests of `scheme`.
    /// Buckets (each request signed for its own bucket) and mirrors keep callouts; so does a
    /// master/slave pair that would need two different TLS server names on one request (the
    /// router takes the SNI from the request once, before the first attempt).
    pub fn router_failover(&self, mechanism: FailoverMechanism, scheme: Scheme) -> bool {
        if mechanism != FailoverMechanism::Router || self.mirror.is_some() {
            return false;
        }
        let Some(slave) = &self.slave else {
            return self.master.bucket.is_none();
        };
        if self.master.bucket.is_some() || slave.bucket.is_some() {
            return false;
        }
        !(tls(&self.master, scheme) && tls(slave, scheme) && self.master.host != slave.host)
    }

    /// How many attempts a chain of this domain may have (1: no chain).
    pub fn max_chain(&self) -> usize {
        match &self.slave {
            Some(_) => 2,
            None if self.master.kind == OriginKind::Ips => {
                let others = self.master.targets.len().saturating_sub(1);
                1 + others.min(self.failover.master_retries as usize)
            }
            // Domain origins have one target; named clusters would need a composite cluster
            // per ordered pick: without a slave they get no retry through the router.
            None => 1,
        }
    }

    /// `x-envoy-retry-on` for this domain's failover conditions (`None`: never retried).
    /// With a slave every condition fails over; without one only connection failures and
    /// timeouts are retried on another master (a 4xx/5xx from a master is relayed).
    pub fn retry_on(&self) -> Option<&'static str> {
        let policy = &self.failover;
        // A per-try (first-byte) timeout and a reset before the response are one condition for
        // Envoy's router (`reset`): the origin did not answer. A connection failure implies it.
        let connect = policy.on_connect_error;
        let reset = policy.on_timeout || policy.on_connect_error;
        // Statuses: only with a slave (the answers to retry are marked or listed per route).
        let statuses = self.slave.is_some() && self.failover.triggers_some_status();
        // One of six constant texts: a domain keeps no string of its own.
        match (connect, reset, statuses) {
            (true, _, true) => Some("connect-failure,refused-stream,reset,retriable-status-codes"),
            (true, _, false) => Some("connect-failure,refused-stream,reset"),
            (false, true, true) => Some("reset,retriable-status-codes"),
            (false, true, false) => Some("reset"),
            (false, false, true) => Some("retriable-status-codes"),
            (false, false, false) => None,
        }
    }

    /// Whether the upstream instance marks an answer with `status` for a retry.
    pub fn retries_status(&self, status: u32) -> bool {
        self.slave.is_some() && self.failover.status_triggers(status)
    }

    /// The prefix of this domain's composite clusters (see [`CHAIN_PREFIX`]).
    pub fn chain_prefix(&self) -> &'static str {
        if self.attempts_set_host() {
            CHAIN_PREFIX_OBSERVED
        } else if self.usual_retry() {
            CHAIN_PREFIX
        } else {
            CHAIN_PREFIX_RULES
        }
    }

    /// Whether a later attempt of this domain's chains sends another `Host` than the first:
    /// only the module's upstream instance can set it, once per attempt (an *observed*
    /// chain); otherwise the chain is *logged*.
    pub fn attempts_set_host(&self) -> bool {
        self.slave
            .as_ref()
            .is_some_and(|slave| slave.host != self.master.host)
    }

    /// A slave and the usual failover rules (every 4xx and 5xx, connect errors, timeouts, no
    /// other statuses): a logged chain takes the route that carries the whole retry policy (no
    /// per-request retry headers; see [`CHAIN_PREFIX`]).
    pub fn usual_retry(&self) -> bool {
        let f = &self.failover;
        self.slave.is_some()
            && f.on_4xx
            && f.on_5xx
            && f.on_connect_error
            && f.on_timeout
            && f.status_codes.iter().all(|c| (400..600).contains(c))
    }

    /// The statuses a logged chain retries, as [`RETRIABLE_CODES_HEADER`] lists them, computed
    /// once into `Domain::retriable_codes`; `None` when there are none or when no request of
    /// the domain sends the header (only [`CHAIN_PREFIX_RULES`] chains do). Kept for those
    /// only: with the usual rules the list is 400-599, 799 bytes per domain per VM that
    /// nothing read (10,000 domains: +32 MB of Envoy's RSS, +80 ms per VM to configure).
    pub fn retriable_codes(&self) -> Option<String> {
        if self.chain_prefix() != CHAIN_PREFIX_RULES {
            return None;
        }
        let mut codes = String::new();
        for code in (300..600u32).filter(|c| self.retries_status(*c)) {
            if !codes.is_empty() {
                codes.push(',');
            }
            push_decimal(&mut codes, u64::from(code));
        }
        codes.shrink_to_fit();
        (!codes.is_empty()).then_some(codes)
    }
}

/// The statuses the route of [`CHAIN_PREFIX`] clusters retries (render writes them into its
/// policy).
pub const USUAL_RETRY_STATUSES: std::ops::Range<u32> = 400..600;

/// A composite cluster render writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSpec {
    pub name: String,
    /// Sub-clusters in attempt order.
    pub subs: Vec<String>,
    /// Some attempt goes over TLS: the composite carries `auto_sni`/`auto_san_validation`
    /// (the router reads them from the cluster the route names).
    pub tls: bool,
    /// It carries the module's upstream instance (see the module's documentation).
    pub observed: bool,
}

/// An `ORIGINAL_DST` cluster for attempt positions 2.. of IP origins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptClusterSpec {
    pub name: String,
    pub header: &'static str,
    pub tls: bool,
}

impl PluginConfig {
    /// Every composite cluster the filter may route a chain to, each once, sorted.
    pub fn chain_specs(&self) -> Vec<ChainSpec> {
        let mut out: Vec<ChainSpec> = Vec::new();
        let mut add = |subs: Vec<String>, tls: bool, prefix: &str| {
            let name = chain_name(&subs, prefix);
            let observed = prefix == CHAIN_PREFIX_OBSERVED;
            if !out.iter().any(|c| c.name == name) {
                out.push(ChainSpec {
                    name,
                    subs,
                    tls,
                    observed,
                });
            }
        };
        for domain in &self.domains {
            for scheme in Scheme::ALL {
                if !domain.router_failover(self.envoy.failover, scheme) || domain.max_chain() < 2 {
                    continue;
                }
                let master = &domain.master;
                let prefix = domain.chain_prefix();
                match &domain.slave {
                    Some(slave) => {
                        let any_tls = tls(master, scheme) || tls(slave, scheme);
                        for m in &master.targets {
                            for s in &slave.targets {
                                let (m, s) = (m.route(scheme), s.route(scheme));
                                add(
                                    vec![attempt_cluster(m, 1), attempt_cluster(s, 2)],
                                    any_tls,
                                    prefix,
                                );
                                add(
                                    vec![attempt_cluster(s, 1), attempt_cluster(m, 2)],
                                    any_tls,
                                    prefix,
                                );
                            }
                        }
                    }
                    None => {
                        let Some(first) = master.targets.first() else {
                            continue;
                        };
                        let route = first.route(scheme);
                        for len in 2..=domain.max_chain() {
                            let subs = (1..=len).map(|k| attempt_cluster(route, k)).collect();
                            add(subs, tls(master, scheme), prefix);
                        }
                    }
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The `ORIGINAL_DST` clusters of attempt positions 2.. that the chains use.
    pub fn attempt_cluster_specs(&self) -> Vec<AttemptClusterSpec> {
        let mut out: Vec<AttemptClusterSpec> = Vec::new();
        for chain in self.chain_specs() {
            for (i, sub) in chain.subs.iter().enumerate() {
                let k = i + 1;
                if k < 2 {
                    continue;
                }
                for (base, tls) in [
                    (&self.envoy.ip_cluster_http, false),
                    (&self.envoy.ip_cluster_https, true),
                ] {
                    if *sub == format!("{base}_{k}") && !out.iter().any(|c| c.name == *sub) {
                        out.push(AttemptClusterSpec {
                            name: sub.clone(),
                            header: dst_header(k),
                            tls,
                        });
                    }
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// One planned attempt of a routed failover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedStep {
    pub slave: bool,
    /// Index of the origin in its set's `targets`.
    pub target: usize,
    /// `Host` this attempt sets; `None` when the request already carries the right one (the
    /// listener's filter set attempt 1's, and each attempt leaves its own for the next).
    pub authority: Option<String>,
}

/// A routed failover as the listener's filter planned it, by indices into the configuration the
/// request uses: the upstream instance of the same worker (same VM, same thread) finds it by the
/// request id that [`PLAN_HEADER`] carries, so an attempt parses no text and looks up no
/// domain by name, and a reload in between cannot make it pick another origin.
#[derive(Debug)]
pub struct Plan {
    pub config: Rc<PluginConfig>,
    pub metrics: Option<Rc<Metrics>>,
    pub domain: usize,
    pub scheme: Scheme,
    /// The request's random id: strikes count distinct requests.
    pub request: u64,
    /// When the listener's filter picked the first origin (attempt 1's start).
    pub sent_ms: u64,
    /// In attempt order.
    pub steps: Vec<PlannedStep>,
    /// The module's upstream instance observes each attempt; otherwise the router's upstream
    /// log reports the failed ones (see the module's documentation).
    pub observed: bool,
}

/// How far a routed failover has come, as the listener's filter and the attempts' observers
/// of the same worker see it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ChainProgress {
    /// Attempts counted against their origin so far (Envoy starts them in order).
    pub started: usize,
    /// Attempts the router's upstream log reported (a logged chain's failed attempts).
    pub logged: usize,
    /// A logged chain's attempts judged so far (by the upstream log or the listener's filter,
    /// whichever saw the attempt first).
    pub judged: usize,
    /// The attempt whose origin answered, and the origin's status (0: outside 100..=599,
    /// shown to the router as 502); reset when a later attempt starts.
    pub answered: Option<(usize, u32)>,
}

impl ChainProgress {
    /// A new chain: a logged chain's attempt 1 was counted by the listener's filter with its
    /// pick; an observed chain's upstream instance counts every attempt.
    pub fn new(plan: &Plan) -> ChainProgress {
        ChainProgress {
            started: usize::from(!plan.observed),
            ..ChainProgress::default()
        }
    }

    /// The attempt whose origin gave the response the router relays (`status`, Envoy's
    /// `response_flags`) and its status; `None` for Envoy's own reply (no origin answered).
    /// A logged chain's failed attempts were reported before the relayed one began.
    /// `broken`: the drain filter replaced the origin's invalid status ([`BROKEN_STATUS_HEADER`]),
    /// reported as 0.
    pub fn relayed(
        &self,
        plan: &Plan,
        status: u32,
        response_flags: u64,
        broken: bool,
    ) -> Option<(usize, u32)> {
        if plan.observed {
            return self.answered;
        }
        let origin_flags =
            response_flags & !crate::engine::classify::flags::UPSTREAM_RETRY_LIMIT_EXCEEDED;
        (origin_flags == 0 && status != 0)
            .then_some((self.logged + 1, if broken { 0 } else { status }))
    }

    /// What the listener's filter judges of a logged chain, as (attempt, status, flags) for
    /// `AttemptObserver::observe_logged`: what the upstream log never reports — the relayed
    /// answer below 400 (`answered`, from [`ChainProgress::relayed`]), and the attempt the
    /// route's own timeout cut (Envoy's 504 with UT: that attempt carries no flag of its own).
    pub fn unlogged(
        &self,
        plan: &Plan,
        answered: Option<(usize, u32)>,
        response_flags: u64,
    ) -> Option<(usize, u32, u64)> {
        if plan.observed {
            return None;
        }
        match answered {
            Some((attempt, status)) if status < 400 => Some((attempt, status, 0)),
            None if response_flags & crate::engine::classify::flags::UPSTREAM_REQUEST_TIMEOUT
                != 0 =>
            {
                Some((self.logged + 1, 0, response_flags))
            }
            _ => None,
        }
    }
}

impl Plan {
    /// Step `k` (1-based) and its origin's route.
    pub fn step(&self, k: usize) -> Option<(&PlannedStep, &OriginSet, &Route)> {
        let step = self.steps.get(k.checked_sub(1)?)?;
        let domain = self.config.domains.get(self.domain)?;
        let set = if step.slave {
            domain.slave.as_ref()?
        } else {
            &domain.master
        };
        let route = set.targets.get(step.target)?.route(self.scheme);
        Some((step, set, route))
    }
}

/// The [`PLAN_HEADER`] value of a request id (lowercase hex, no leading zeros), held on the
/// stack: a routed request sets it on every request, borrowed, with no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanIdText {
    digits: [u8; 16],
    start: usize,
}

impl PlanIdText {
    pub fn new(request: u64) -> PlanIdText {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut digits = [b'0'; 16];
        let mut rest = request;
        for slot in digits.iter_mut().rev() {
            *slot = HEX.get((rest & 0xf) as usize).copied().unwrap_or(b'0');
            rest >>= 4;
        }
        PlanIdText {
            digits,
            // Leading zeros dropped (at least one digit kept).
            start: ((request.leading_zeros() / 4) as usize).min(15),
        }
    }

    pub fn as_str(&self) -> &str {
        self.digits
            .get(self.start..)
            .and_then(|t| std::str::from_utf8(t).ok())
            .unwrap_or("0")
    }
}

/// [`PlanIdText`] as an owned string (tests and the profiling harness).
pub fn plan_id_text(request: u64) -> String {
    PlanIdText::new(request).as_str().to_owned()
}

/// The request id a [`PLAN_HEADER`] value carries.
pub fn read_plan_id(text: &str) -> Option<u64> {
    u64::from_str_radix(text, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    #[test]
    fn plan_id_text_is_lowercase_hex() {
        for n in [0u64, 1, 0xf, 0x10, 0xbeef, 0x0123_4567_89ab_cdef, u64::MAX] {
            assert_eq!(plan_id_text(n), format!("{n:x}"));
        }
    }

    #[test]
    fn a_chain_name_built_in_place_is_the_rendered_one() {
        let config = parse(
            br#"{"domains":[{"domain":"a.com","master":{"ips":["127.0.0.2:80"]},"slave":{"domain":"b.example.com"}}]}"#,
        )
        .unwrap();
        let domain = &config.domains[0];
        let ip = domain.master.targets[0].route(Scheme::Http);
        let dns = domain.slave.as_ref().unwrap().targets[0].route(Scheme::Http);
        for k in [1, 2, 9, 10, 11] {
            for route in [ip, dns] {
                let mut built = String::from(CHAIN_PREFIX);
                push_attempt_cluster(&mut built, route, k);
                assert_eq!(
                    built,
                    chain_name(&[attempt_cluster(route, k)], CHAIN_PREFIX)
                );
            }
        }
    }

    #[test]
    fn plan_id_round_trip() {
        assert_eq!(read_plan_id(&plan_id_text(0xbeef)), Some(0xbeef));
        assert_eq!(read_plan_id(&plan_id_text(u64::MAX)), Some(u64::MAX));
        assert_eq!(read_plan_id("www.test.com beef"), None);
        assert_eq!(read_plan_id(""), None);
    }

    #[test]
    fn chains_for_ip_domain_and_no_slave_sets() {
        let config = parse(
            br#"{"domains":[
              {"domain":"a.com","master":{"ips":["127.0.0.2:80","127.0.0.3:80"]},"slave":{"domain":"b.example.com","protocol":"https"}},
              {"domain":"c.com","master":{"ips":["127.0.0.2:80","127.0.0.3:80","127.0.0.4:80"]},"failover":{"master_retries":1}},
              {"domain":"d.com","master":{"ips":["127.0.0.2:80"]}},
              {"domain":"e.com","master":{"ips":["127.0.0.2:443"],"protocol":"https","host":"x.example.com"},"slave":{"ips":["127.0.0.3:443"],"protocol":"https"}}
            ]}"#,
        )
        .unwrap();
        let names: Vec<String> = config.chain_specs().into_iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            vec![
                "origin_pull_chain(origin_pull_ip_http)(origin_pull|https|b.example.com|443)",
                "origin_pull_chain(origin_pull|https|b.example.com|443)(origin_pull_ip_http_2)",
                // c.com: no slave, so not the usual rules (connect errors and timeouts only).
                "origin_pull_chain_rules(origin_pull_ip_http)(origin_pull_ip_http_2)",
            ]
        );
        let tls: Vec<bool> = config.chain_specs().into_iter().map(|c| c.tls).collect();
        assert_eq!(tls, vec![true, true, false]);
        let attempts: Vec<(String, &str)> = config
            .attempt_cluster_specs()
            .into_iter()
            .map(|c| (c.name, c.header))
            .collect();
        assert_eq!(
            attempts,
            vec![("origin_pull_ip_http_2".to_string(), "x-origin-pull-dst-2")]
        );
        // Two TLS server names on one request: callouts.
        assert!(!config.domains[3].router_failover(FailoverMechanism::Router, Scheme::Http));
        assert!(config.domains[0].router_failover(FailoverMechanism::Router, Scheme::Http));
        assert!(!config.domains[0].router_failover(FailoverMechanism::Callout, Scheme::Http));
        assert_eq!(config.domains[1].max_chain(), 2);
        assert_eq!(config.domains[2].max_chain(), 1);
    }

    #[test]
    fn retry_headers_follow_the_failover_rules() {
        let config = parse(
            br#"{"domains":[
              {"domain":"a.com","master":{"ips":["127.0.0.2"]},"slave":{"ips":["127.0.0.3"]}},
              {"domain":"b.com","master":{"ips":["127.0.0.2"]},"slave":{"ips":["127.0.0.3"]},"failover":{"on":["connect_error"],"status_codes":[404,502]}},
              {"domain":"c.com","master":{"ips":["127.0.0.2","127.0.0.3"]}},
              {"domain":"d.com","master":{"ips":["127.0.0.2"]},"slave":{"ips":["127.0.0.3"]},"failover":{"on":["4xx"]}}
            ]}"#,
        )
        .unwrap();
        let d = &config.domains;
        assert_eq!(
            d[0].retry_on(),
            Some("connect-failure,refused-stream,reset,retriable-status-codes")
        );
        assert!(d[0].retries_status(404) && d[0].retries_status(503) && !d[0].retries_status(200));
        assert!(d[1].retries_status(404) && d[1].retries_status(502) && !d[1].retries_status(403));
        assert!(!d[1].retries_status(500));
        assert_eq!(
            d[2].retry_on(),
            Some("connect-failure,refused-stream,reset")
        );
        assert!(
            !d[2].retries_status(404),
            "no slave: a master's status is relayed"
        );
        assert_eq!(d[3].retry_on(), Some("retriable-status-codes"));
        assert!(d[3].retries_status(400) && !d[3].retries_status(500));
        // The status list is kept only where a request sends it (the rules' route): the usual
        // rules' route carries 400-599 itself, and a domain without a slave retries no status.
        let kept: Vec<_> = d.iter().map(|d| d.retriable_codes.as_deref()).collect();
        let four_xx = (400..500)
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(kept, [None, Some("404,502"), None, Some(four_xx.as_str())]);
        assert_eq!(d[0].chain_prefix(), CHAIN_PREFIX);
    }
}
