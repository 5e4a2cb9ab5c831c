//! Envoy stats of the filter, defined LAZILY: a series is defined the first time it has
//! something to count, so a configuration of 10,000 domains applies without defining a stat, and
//! `/stats` only grows with what actually happens (traffic, failures, blocks).
//!
//! - Per domain (always, bounded by the number of domains): `origin_pull_requests_total`
//!   (client requests routed for the domain), `origin_pull_failovers_total{outcome}`, and the
//!   gauge `origin_pull_masters_available` once one of the domain's master addresses was blocked
//!   (until then every master is available; the gauge is refreshed every second from then on).
//! - Per origin, for an origin that fails, is blocked or unblocked, or fails a probe:
//!   `origin_pull_origin_failures_total{kind}`, `origin_pull_origin_blocks_total{source}`,
//!   `origin_pull_origin_unblocks_total`, the gauges `origin_pull_origin_blocked` and
//!   `origin_pull_origin_blocked_until_seconds`, `origin_pull_probes_total{result="failure"}`.
//! - Per origin, only with `"metrics": {"per_origin": true}`: `origin_pull_origin_requests_total`
//!   and `origin_pull_probes_total{result="success"}` (one series for every origin that sees
//!   traffic or probes).
//!
//! Per-origin series are capped (`metrics.max_origin_series`, counted per VM over its lifetime:
//! Envoy keeps a stat once it exists); at the cap a warning is logged once and further per-origin
//! series are not defined (their counts are lost; the access log and the logs still name origins).
//!
//! Envoy hands out a NEW id (and keeps another entry) each time a name is defined, even a name
//! it already has (checked in Envoy 1.40), so ids are cached per VM by name in a [`Registry`]
//! that outlives configurations: after a reload the same names reuse their ids.
//!
//! Counters are kept in the VM: the glue's `increment_metric` adds to a [`PendingCounters`] of
//! its VM (no hostcall per request), and every root context adds what it holds to Envoy's stats
//! on its tick ([`PendingCounters::flush`]: one hostcall per counter that changed), so Envoy's
//! stats trail the traffic by at most one tick — [`FLUSH_INTERVAL_MS`], shorter with active
//! probes. Gauges are set at once (they change rarely).
//!
//! Names follow Prometheus conventions (`origin_pull_` prefix, counters end in `_total`).
//! Labels travel inside the stat name as `;tag=value` pairs, which the `stats_config.stats_tags`
//! regexes of the shipped bootstrap (envoy/envoy.yaml) turn into Prometheus labels:
//! `origin_pull_origin_failures_total;domain=www.test.com;origin=10.0.0.1:80;kind=connect` is
//! shown as `origin_pull_origin_failures_total{domain="www.test.com",origin="10.0.0.1:80",kind="connect"}`
//! at `/stats/prometheus` and as `wasmcustom.<full name>` at `/stats`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::rc::Rc;

use crate::config::{PluginConfig, Scheme};
use crate::engine::blocks::BlockTable;
use crate::engine::classify::Answer;
use crate::host::{Host, MetricKind};
use crate::types::FastHasher;
use crate::types::Role;

/// The tags the shipped bootstrap extracts, in the order they appear in a name.
pub const TAGS: [&str; 6] = ["domain", "origin", "kind", "source", "result", "outcome"];

/// Who blocked an origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockSource {
    Passive,
    Probe,
}

const FAILURE_KINDS: [&str; 5] = ["connect", "timeout", "4xx", "5xx", "other"];

fn failure_index(answer: Answer) -> Option<usize> {
    match answer {
        // A reset after connect is counted with connect failures (same series as before).
        Answer::ConnectError | Answer::Reset => Some(0),
        Answer::Timeout => Some(1),
        Answer::Status(s) if (400..500).contains(&s) => Some(2),
        Answer::Status(s) if (500..600).contains(&s) => Some(3),
        Answer::Status(_) => None,
        Answer::NoCluster | Answer::NoResponse => Some(4),
    }
}

/// Longest time a counted event waits in the VM before it is in Envoy's stats: every root
/// context (each worker's and the main thread's) flushes on its tick, which is 1 s, or half
/// the shortest probe interval (at least 50 ms) when probes are configured (probe.rs).
pub const FLUSH_INTERVAL_MS: u64 = 1_000;

/// Counter increments of one VM not yet added to Envoy's stats, by stat id. Adding is a hash
/// update in the VM; [`PendingCounters::flush`] makes one hostcall per counter that changed
/// since the previous flush, so a flush never costs more hostcalls than counting each event
/// did, and totals are exact once flushed.
#[derive(Debug, Default)]
pub struct PendingCounters {
    deltas: HashMap<u32, i64, BuildHasherDefault<FastHasher>>,
}

impl PendingCounters {
    pub fn add(&mut self, id: u32, delta: i64) {
        *self.deltas.entry(id).or_insert(0) += delta;
    }

    pub fn is_empty(&self) -> bool {
        self.deltas.is_empty()
    }

    /// Hands every pending delta to `send` (the hostcall that adds to Envoy's stat) and
    /// forgets it; returns how many stats were sent. The map keeps its capacity.
    pub fn flush(&mut self, mut send: impl FnMut(u32, i64)) -> usize {
        let mut sent = 0;
        for (id, delta) in self.deltas.drain() {
            if delta != 0 {
                send(id, delta);
                sent += 1;
            }
        }
        sent
    }
}

/// Characters that would break the `;tag=value` encoding are replaced.
fn tag_value(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c == ';' || c == '=' || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

fn full_name(name: &str, tags: &[(&str, &str)]) -> String {
    let mut full = String::with_capacity(name.len() + 64);
    full.push_str(name);
    for (tag, value) in tags {
        full.push(';');
        full.push_str(tag);
        full.push('=');
        full.push_str(&tag_value(value));
    }
    full
}

/// A cached stat id of this configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Slot {
    #[default]
    Unset,
    Id(u32),
    /// Could not be defined (host refused, or the cap): not tried again for this configuration.
    Unavailable,
}

/// Which series a definition is: per-origin ones count against the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Domain,
    Origin,
}

/// The block gauges of one (domain, origin label).
#[derive(Debug, Clone)]
pub struct BlockGauges {
    pub domain: String,
    pub label: String,
    blocked: Option<u32>,
    until: Option<u32>,
}

impl BlockGauges {
    /// `Some(until_ms)` while blocked, `None` when not.
    pub fn record(&self, host: &mut impl Host, until_ms: Option<u64>) {
        record_block(host, self.blocked, self.until, until_ms);
    }
}

/// Stat ids defined in this VM, by full name; lives as long as the VM (across reloads).
#[derive(Debug)]
pub struct Registry {
    ids: HashMap<String, u32>,
    origin_series: u32,
    max_origin_series: u32,
    cap_warned: bool,
    /// Block gauges this VM defined: (domain, origin label, `origin_pull_origin_blocked` id,
    /// `origin_pull_origin_blocked_until_seconds` id). This VM keeps them current (a block
    /// expires without anyone writing).
    gauges: Vec<BlockGauges>,
    /// Ids in `gauges` (a name is listed once, whatever the configurations).
    gauge_ids: std::collections::HashSet<(Option<u32>, Option<u32>)>,
    /// `origin_pull_masters_available` gauges this VM defined: (domain name, id).
    availability: Vec<(String, u32)>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            ids: HashMap::new(),
            origin_series: 0,
            max_origin_series: crate::config::DEFAULT_MAX_ORIGIN_SERIES,
            cap_warned: false,
            gauges: Vec::new(),
            gauge_ids: std::collections::HashSet::new(),
            availability: Vec::new(),
        }
    }
}

impl Registry {
    /// The id of `name`, defining it on first use; `None` at the per-origin cap or when the
    /// host refuses.
    fn id(
        &mut self,
        host: &mut impl Host,
        kind: MetricKind,
        name: String,
        scope: Scope,
    ) -> Option<u32> {
        if let Some(id) = self.ids.get(&name) {
            return Some(*id);
        }
        if scope == Scope::Origin {
            if self.origin_series >= self.max_origin_series {
                if !self.cap_warned {
                    self.cap_warned = true;
                    log::warn!(
                            "{} per-origin stat series defined in this VM, the cap (metrics.max_origin_series); further per-origin series are not defined (first one dropped: {name})",
                            self.origin_series
                        );
                }
                return None;
            }
            self.origin_series += 1;
        }
        let id = host.define_metric(kind, &name)?;
        self.ids.insert(name, id);
        Some(id)
    }

    /// How many per-origin series this VM has defined.
    pub fn origin_series(&self) -> u32 {
        self.origin_series
    }

    /// Every stat name this VM has defined.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.ids.keys().map(String::as_str)
    }

    /// The block gauges this VM defined (to refresh them every second).
    pub fn block_gauges(&self) -> Vec<BlockGauges> {
        self.gauges.clone()
    }

    pub fn has_gauges(&self) -> bool {
        !self.gauges.is_empty() || !self.availability.is_empty()
    }
}

/// The two block gauges of an origin: blocked (0/1) and the block's end (Unix s, 0 = none).
fn record_block(host: &mut impl Host, blocked: Option<u32>, until: Option<u32>, to: Option<u64>) {
    if let Some(id) = blocked {
        host.record_metric(id, u64::from(to.is_some()));
    }
    if let Some(id) = until {
        // Rounded up: the origin is blocked up to and including that second.
        host.record_metric(id, to.map_or(0, |ms| ms.div_ceil(1000)));
    }
}

/// Cached ids of one domain's own series.
#[derive(Debug, Default)]
struct DomainSlots {
    requests: Cell<Slot>,
    failover_served: Cell<Slot>,
    failover_failed: Cell<Slot>,
    masters_available: Cell<Slot>,
}

/// A per-origin series of one (domain, origin label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum OriginStat {
    Requests,
    Failure(u8),
    Blocks(BlockSource),
    Unblocks,
    Probe(bool),
    Blocked,
    BlockedUntil,
}

/// Where an origin sits in the configuration: domain, role, target, client scheme.
type OriginKey = (u32, u8, u32, u8);

/// Stats of one configuration in one VM: ids are defined on first use (see the module doc).
#[derive(Debug, Default)]
pub struct Metrics {
    config: Option<Rc<PluginConfig>>,
    registry: Rc<RefCell<Registry>>,
    per_origin: bool,
    domains: Vec<DomainSlots>,
    /// Per-origin ids already resolved for this configuration.
    origins: RefCell<HashMap<(OriginKey, OriginStat), Slot>>,
    /// Domain name -> index; built on the first availability refresh.
    by_name: RefCell<Option<HashMap<String, usize>>>,
}

/// Stats of the origin a request (or probe) goes to, as seen from one domain.
#[derive(Debug, Clone, Copy)]
pub struct OriginMetrics<'a> {
    metrics: &'a Metrics,
    key: OriginKey,
    domain: &'a str,
    pub label: &'a str,
}

impl Metrics {
    /// The stats of `config`; nothing is defined yet. `registry` is the VM's (shared by every
    /// configuration the VM runs), which also takes the configuration's cap.
    pub fn new(config: Rc<PluginConfig>, registry: Rc<RefCell<Registry>>) -> Metrics {
        {
            let mut r = registry.borrow_mut();
            if r.max_origin_series != config.metrics.max_origin_series {
                r.max_origin_series = config.metrics.max_origin_series;
                r.cap_warned = false;
            }
        }
        let mut domains = Vec::new();
        domains.resize_with(config.domains.len(), DomainSlots::default);
        Metrics {
            per_origin: config.metrics.per_origin,
            config: Some(config),
            registry,
            domains,
            origins: RefCell::new(HashMap::new()),
            by_name: RefCell::new(None),
        }
    }

    /// The VM's registry (names defined, gauges to refresh).
    pub fn registry(&self) -> &Rc<RefCell<Registry>> {
        &self.registry
    }

    pub fn domain_name(&self, domain: usize) -> Option<&str> {
        Some(self.config.as_ref()?.domains.get(domain)?.name.as_str())
    }

    fn resolve_domain(
        &self,
        host: &mut impl Host,
        slot: &Cell<Slot>,
        domain: usize,
        name: &str,
        extra: Option<(&str, &str)>,
    ) -> Option<u32> {
        match slot.get() {
            Slot::Id(id) => return Some(id),
            Slot::Unavailable => return None,
            Slot::Unset => {}
        }
        let domain_name = self.domain_name(domain)?;
        let full = match extra {
            Some(tag) => full_name(name, &[("domain", domain_name), tag]),
            None => full_name(name, &[("domain", domain_name)]),
        };
        let id = self
            .registry
            .borrow_mut()
            .id(host, MetricKind::Counter, full, Scope::Domain);
        slot.set(id.map_or(Slot::Unavailable, Slot::Id));
        id
    }

    /// A client request of `domain` was routed to an origin.
    pub fn request(&self, host: &mut impl Host, domain: usize) {
        let Some(slots) = self.domains.get(domain) else {
            return;
        };
        if let Some(id) = self.resolve_domain(
            host,
            &slots.requests,
            domain,
            "origin_pull_requests_total",
            None,
        ) {
            host.increment_metric(id, 1);
        }
    }

    /// A request was failed over; `served` when the client got a good answer from it.
    pub fn failover(&self, host: &mut impl Host, domain: usize, served: bool) {
        let Some(slots) = self.domains.get(domain) else {
            return;
        };
        let (slot, outcome) = if served {
            (&slots.failover_served, "served")
        } else {
            (&slots.failover_failed, "failed")
        };
        if let Some(id) = self.resolve_domain(
            host,
            slot,
            domain,
            "origin_pull_failovers_total",
            Some(("outcome", outcome)),
        ) {
            host.increment_metric(id, 1);
        }
    }

    /// Stats of the origin a request goes to (`None` outside the configuration).
    pub fn origin(
        &self,
        domain: usize,
        role: Role,
        target: usize,
        scheme: Scheme,
    ) -> Option<OriginMetrics<'_>> {
        let d = self.config.as_ref()?.domains.get(domain)?;
        let set = match role {
            Role::Master => &d.master,
            Role::Slave => d.slave.as_ref()?,
        };
        let label = set.targets.get(target)?.route(scheme).label.as_ref();
        let key = (
            u32::try_from(domain).ok()?,
            role.index() as u8,
            u32::try_from(target).ok()?,
            scheme.index() as u8,
        );
        Some(OriginMetrics {
            metrics: self,
            key,
            domain: d.name.as_str(),
            label,
        })
    }

    pub fn domain_count(&self) -> usize {
        self.domains.len()
    }

    /// Distinct master address labels of a domain (both client schemes).
    pub fn master_labels(&self, domain: usize) -> Vec<&str> {
        let Some(d) = self.config.as_ref().and_then(|c| c.domains.get(domain)) else {
            return Vec::new();
        };
        let mut labels: Vec<&str> = d
            .master
            .targets
            .iter()
            .flat_map(|t| t.routes.iter().map(|r| &*r.label))
            .collect();
        labels.sort_unstable();
        labels.dedup();
        labels
    }

    /// Sets domain `d`'s `origin_pull_masters_available` from the block table: its master
    /// addresses not blocked now (one place for the exchange, the attempt observer and probes).
    pub fn refresh_masters_available(&self, host: &mut impl Host, blocks: &BlockTable, d: usize) {
        let Some(domain) = self.domain_name(d) else {
            return;
        };
        let now = host.now_ms();
        let any = blocks.domain_has_blocks(host, domain, now);
        let blocked: Vec<&str> = self
            .master_labels(d)
            .into_iter()
            .filter(|l| any && blocks.is_blocked(host, domain, l, now))
            .collect();
        self.set_masters_available(host, d, |l| blocked.contains(&l));
    }

    /// Sets a domain's `origin_pull_masters_available` (master addresses not blocked),
    /// defining it on first use.
    pub fn set_masters_available(
        &self,
        host: &mut impl Host,
        domain: usize,
        is_blocked: impl Fn(&str) -> bool,
    ) {
        let Some(slots) = self.domains.get(domain) else {
            return;
        };
        let id = match slots.masters_available.get() {
            Slot::Id(id) => id,
            Slot::Unavailable => return,
            Slot::Unset => {
                let Some(name) = self.domain_name(domain) else {
                    return;
                };
                let full = full_name("origin_pull_masters_available", &[("domain", name)]);
                let mut registry = self.registry.borrow_mut();
                let known = registry.ids.contains_key(&full);
                let id = registry.id(host, MetricKind::Gauge, full, Scope::Domain);
                slots
                    .masters_available
                    .set(id.map_or(Slot::Unavailable, Slot::Id));
                let Some(id) = id else { return };
                if !known {
                    registry.availability.push((name.to_string(), id));
                }
                id
            }
        };
        let available = self
            .master_labels(domain)
            .into_iter()
            .filter(|l| !is_blocked(l))
            .count();
        host.record_metric(id, available as u64);
    }

    /// Indexes (in this configuration) of the domains whose availability gauge this VM
    /// defined, in this configuration or a previous one: refreshed every second.
    pub fn availability_domains(&self) -> Vec<usize> {
        let names: Vec<String> = self
            .registry
            .borrow()
            .availability
            .iter()
            .map(|(name, _)| name.clone())
            .collect();
        if names.is_empty() {
            return Vec::new();
        }
        let mut by_name = self.by_name.borrow_mut();
        let by_name = by_name.get_or_insert_with(|| {
            self.config.as_ref().map_or_else(HashMap::new, |c| {
                c.domains
                    .iter()
                    .enumerate()
                    .map(|(i, d)| (d.name.clone(), i))
                    .collect()
            })
        });
        names
            .iter()
            .filter_map(|n| by_name.get(n).copied())
            .collect()
    }
}

impl OriginMetrics<'_> {
    fn id(&self, host: &mut impl Host, stat: OriginStat) -> Option<u32> {
        let cache_key = (self.key, stat);
        match self.metrics.origins.borrow().get(&cache_key) {
            Some(Slot::Id(id)) => return Some(*id),
            Some(Slot::Unavailable) => return None,
            _ => {}
        }
        let tags = [("domain", self.domain), ("origin", self.label)];
        let (kind, name) = match stat {
            OriginStat::Requests => (
                MetricKind::Counter,
                full_name("origin_pull_origin_requests_total", &tags),
            ),
            OriginStat::Failure(i) => (
                MetricKind::Counter,
                full_name(
                    "origin_pull_origin_failures_total",
                    &[
                        tags[0],
                        tags[1],
                        (
                            "kind",
                            FAILURE_KINDS
                                .get(usize::from(i))
                                .copied()
                                .unwrap_or("other"),
                        ),
                    ],
                ),
            ),
            OriginStat::Blocks(source) => (
                MetricKind::Counter,
                full_name(
                    "origin_pull_origin_blocks_total",
                    &[
                        tags[0],
                        tags[1],
                        (
                            "source",
                            match source {
                                BlockSource::Passive => "passive",
                                BlockSource::Probe => "probe",
                            },
                        ),
                    ],
                ),
            ),
            OriginStat::Unblocks => (
                MetricKind::Counter,
                full_name("origin_pull_origin_unblocks_total", &tags),
            ),
            OriginStat::Probe(healthy) => (
                MetricKind::Counter,
                full_name(
                    "origin_pull_probes_total",
                    &[
                        tags[0],
                        tags[1],
                        ("result", if healthy { "success" } else { "failure" }),
                    ],
                ),
            ),
            OriginStat::Blocked => (
                MetricKind::Gauge,
                full_name("origin_pull_origin_blocked", &tags),
            ),
            OriginStat::BlockedUntil => (
                MetricKind::Gauge,
                full_name("origin_pull_origin_blocked_until_seconds", &tags),
            ),
        };
        let id = self
            .metrics
            .registry
            .borrow_mut()
            .id(host, kind, name, Scope::Origin);
        self.metrics
            .origins
            .borrow_mut()
            .insert(cache_key, id.map_or(Slot::Unavailable, Slot::Id));
        id
    }

    fn bump(&self, host: &mut impl Host, stat: OriginStat) {
        if let Some(id) = self.id(host, stat) {
            host.increment_metric(id, 1);
        }
    }

    /// A request (routed or callout) was sent to this origin: counted per origin only with
    /// `metrics.per_origin`.
    pub fn request(&self, host: &mut impl Host) {
        if self.metrics.per_origin {
            self.bump(host, OriginStat::Requests);
        }
    }

    pub fn failure(&self, host: &mut impl Host, answer: Answer) {
        if let Some(i) = failure_index(answer) {
            self.bump(host, OriginStat::Failure(i as u8));
        }
    }

    /// A block was written until `until_ms` (the gauges follow at once; ticks clear them when
    /// it expires).
    pub fn blocked(&self, host: &mut impl Host, source: BlockSource, until_ms: Option<u64>) {
        self.bump(host, OriginStat::Blocks(source));
        self.set_blocked(host, Some(until_ms.unwrap_or(1)));
    }

    pub fn unblocked(&self, host: &mut impl Host) {
        self.bump(host, OriginStat::Unblocks);
        self.set_blocked(host, None);
    }

    /// A probe verdict: failures always counted, successes only with `metrics.per_origin`.
    pub fn probe(&self, host: &mut impl Host, healthy: bool) {
        if !healthy || self.metrics.per_origin {
            self.bump(host, OriginStat::Probe(healthy));
        }
    }

    /// Sets this origin's domain's `origin_pull_masters_available` from the block table (see
    /// [`Metrics::refresh_masters_available`]); after a probe blocked or unblocked the origin it
    /// is defined, if it was not, and every VM keeps it current from then on.
    pub fn refresh_masters_available(&self, host: &mut impl Host, blocks: &BlockTable) {
        self.metrics
            .refresh_masters_available(host, blocks, self.key.0 as usize);
    }

    /// `Some(until_ms)` while blocked (an unknown end may be given as any non-zero value).
    /// Defines the two block gauges on first use; this VM then keeps them current.
    pub fn set_blocked(&self, host: &mut impl Host, until_ms: Option<u64>) {
        let known = self
            .metrics
            .origins
            .borrow()
            .contains_key(&(self.key, OriginStat::Blocked));
        let blocked = self.id(host, OriginStat::Blocked);
        let until = self.id(host, OriginStat::BlockedUntil);
        if !known {
            let mut registry = self.metrics.registry.borrow_mut();
            if (blocked.is_some() || until.is_some()) && registry.gauge_ids.insert((blocked, until))
            {
                registry.gauges.push(BlockGauges {
                    domain: self.domain.to_string(),
                    label: self.label.to_string(),
                    blocked,
                    until,
                });
            }
        }
        record_block(host, blocked, until, until_ms);
    }
}

#[cfg(test)]
mod tests;
