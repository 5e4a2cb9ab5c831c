//! Envoy stats of the filter, defined once per configuration and VM so that the request path
//! only adds to precomputed ids (no formatting, no allocation, no lookup by name).
//!
//! Names follow Prometheus conventions (`origin_pull_` prefix, counters end in `_total`).
//! Labels travel inside the stat name as `;tag=value` pairs, which the `stats_config.stats_tags`
//! regexes of the shipped bootstrap (envoy/envoy.yaml) turn into Prometheus labels:
//! `origin_pull_origin_requests_total;domain=www.test.com;origin=10.0.0.1:80` is shown as
//! `origin_pull_origin_requests_total{domain="www.test.com",origin="10.0.0.1:80"}` at
//! `/stats/prometheus` and as `wasmcustom.<full name>` at `/stats`.

use crate::config::{PluginConfig, Scheme};
use crate::exchange::Role;
use crate::failover::Answer;
use crate::host::{Host, MetricKind};

/// The tags the shipped bootstrap extracts, in the order they appear in a name.
pub const TAGS: [&str; 6] = ["domain", "origin", "kind", "source", "result", "outcome"];

/// Stats of one origin (block-table label) as seen from one domain.
#[derive(Debug, Default, Clone)]
pub struct OriginMetrics {
    pub label: String,
    requests: Option<u32>,
    /// connect, timeout, 4xx, 5xx, other (missing cluster, callout without response).
    failures: [Option<u32>; 5],
    blocks_passive: Option<u32>,
    blocks_probe: Option<u32>,
    unblocks: Option<u32>,
    probe_success: Option<u32>,
    probe_failure: Option<u32>,
    blocked: Option<u32>,
    /// Unix time (s) the block ends, 0 when not blocked: `origin-pull status` shows it.
    blocked_until: Option<u32>,
}

#[derive(Debug, Default, Clone)]
struct DomainMetrics {
    origins: Vec<OriginMetrics>,
    /// `[role][target][scheme]` → index in `origins` (labels repeat across roles and schemes).
    slots: [Vec<[usize; 2]>; 2],
    failover_served: Option<u32>,
    failover_failed: Option<u32>,
    /// Master addresses (labels) not blocked: 0 = every master blocked (refreshed each second).
    masters_available: Option<u32>,
}

/// Every stat id of one configuration in one VM.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    domains: Vec<DomainMetrics>,
}

/// Who blocked an origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

fn define(
    host: &mut impl Host,
    kind: MetricKind,
    name: &str,
    tags: &[(&str, &str)],
) -> Option<u32> {
    let mut full = String::with_capacity(name.len() + 64);
    full.push_str(name);
    for (tag, value) in tags {
        full.push(';');
        full.push_str(tag);
        full.push('=');
        full.push_str(&tag_value(value));
    }
    host.define_metric(kind, &full)
}

impl OriginMetrics {
    fn define(host: &mut impl Host, domain: &str, label: &str) -> OriginMetrics {
        use MetricKind::{Counter, Gauge};
        let tags = [("domain", domain), ("origin", label)];
        let with = |extra: (&'static str, &'static str)| [tags[0], tags[1], extra];
        let mut failures = [None; 5];
        for (slot, kind) in failures.iter_mut().zip(FAILURE_KINDS) {
            *slot = define(
                host,
                Counter,
                "origin_pull_origin_failures_total",
                &with(("kind", kind)),
            );
        }
        OriginMetrics {
            label: label.to_string(),
            requests: define(host, Counter, "origin_pull_origin_requests_total", &tags),
            failures,
            blocks_passive: define(
                host,
                Counter,
                "origin_pull_origin_blocks_total",
                &with(("source", "passive")),
            ),
            blocks_probe: define(
                host,
                Counter,
                "origin_pull_origin_blocks_total",
                &with(("source", "probe")),
            ),
            unblocks: define(host, Counter, "origin_pull_origin_unblocks_total", &tags),
            probe_success: define(
                host,
                Counter,
                "origin_pull_probes_total",
                &with(("result", "success")),
            ),
            probe_failure: define(
                host,
                Counter,
                "origin_pull_probes_total",
                &with(("result", "failure")),
            ),
            blocked: define(host, Gauge, "origin_pull_origin_blocked", &tags),
            blocked_until: define(
                host,
                Gauge,
                "origin_pull_origin_blocked_until_seconds",
                &tags,
            ),
        }
    }

    pub fn request(&self, host: &mut impl Host) {
        bump(host, self.requests);
    }

    pub fn failure(&self, host: &mut impl Host, answer: Answer) {
        if let Some(i) = failure_index(answer) {
            bump(host, self.failures.get(i).copied().flatten());
        }
    }

    /// A block was written until `until_ms` (the gauges follow at once; the tick clears them
    /// when it expires).
    pub fn blocked(&self, host: &mut impl Host, source: BlockSource, until_ms: Option<u64>) {
        bump(
            host,
            match source {
                BlockSource::Passive => self.blocks_passive,
                BlockSource::Probe => self.blocks_probe,
            },
        );
        self.set_blocked(host, Some(until_ms.unwrap_or(1)));
    }

    pub fn unblocked(&self, host: &mut impl Host) {
        bump(host, self.unblocks);
        self.set_blocked(host, None);
    }

    pub fn probe(&self, host: &mut impl Host, healthy: bool) {
        bump(
            host,
            if healthy {
                self.probe_success
            } else {
                self.probe_failure
            },
        );
    }

    /// `Some(until_ms)` while blocked (an unknown end may be given as any non-zero value).
    pub fn set_blocked(&self, host: &mut impl Host, until_ms: Option<u64>) {
        if let Some(id) = self.blocked {
            host.record_metric(id, u64::from(until_ms.is_some()));
        }
        if let Some(id) = self.blocked_until {
            // Rounded up: the origin is blocked up to and including that second.
            host.record_metric(id, until_ms.map_or(0, |ms| ms.div_ceil(1000)));
        }
    }
}

fn bump(host: &mut impl Host, id: Option<u32>) {
    if let Some(id) = id {
        host.increment_metric(id, 1);
    }
}

impl Metrics {
    /// Defines every stat of `config` (call from `on_configure`; Envoy returns the existing
    /// stat when a name is defined again, e.g. after a reload).
    pub fn define(config: &PluginConfig, host: &mut impl Host) -> Metrics {
        let mut domains = Vec::with_capacity(config.domains.len());
        for domain in &config.domains {
            let mut metrics = DomainMetrics {
                failover_served: define(
                    host,
                    MetricKind::Counter,
                    "origin_pull_failovers_total",
                    &[("domain", &domain.name), ("outcome", "served")],
                ),
                failover_failed: define(
                    host,
                    MetricKind::Counter,
                    "origin_pull_failovers_total",
                    &[("domain", &domain.name), ("outcome", "failed")],
                ),
                masters_available: define(
                    host,
                    MetricKind::Gauge,
                    "origin_pull_masters_available",
                    &[("domain", &domain.name)],
                ),
                ..DomainMetrics::default()
            };
            for (role, set) in [(0, Some(&domain.master)), (1, domain.slave.as_ref())] {
                let Some(set) = set else { continue };
                let mut slots = Vec::with_capacity(set.targets.len());
                for target in &set.targets {
                    let mut pair = [0usize; 2];
                    for (slot, route) in pair.iter_mut().zip(&target.routes) {
                        *slot = match metrics.origins.iter().position(|o| o.label == route.label) {
                            Some(i) => i,
                            None => {
                                metrics.origins.push(OriginMetrics::define(
                                    host,
                                    &domain.name,
                                    &route.label,
                                ));
                                metrics.origins.len() - 1
                            }
                        };
                    }
                    slots.push(pair);
                }
                if let Some(s) = metrics.slots.get_mut(role) {
                    *s = slots;
                }
            }
            domains.push(metrics);
        }
        Metrics { domains }
    }

    /// Stats of the origin a request goes to (`None` when stats could not be defined).
    pub fn origin(
        &self,
        domain: usize,
        role: Role,
        target: usize,
        scheme: Scheme,
    ) -> Option<&OriginMetrics> {
        let d = self.domains.get(domain)?;
        let role = match role {
            Role::Master => 0,
            Role::Slave => 1,
        };
        let scheme = match scheme {
            Scheme::Http => 0,
            Scheme::Https => 1,
        };
        let index = *d.slots.get(role)?.get(target)?.get(scheme)?;
        d.origins.get(index)
    }

    /// Every origin of a domain, e.g. to refresh the blocked gauges.
    pub fn origins(&self, domain: usize) -> &[OriginMetrics] {
        self.domains
            .get(domain)
            .map_or(&[], |d| d.origins.as_slice())
    }

    /// Sets a domain's count of master addresses that `is_blocked` says are not blocked.
    pub fn set_masters_available(
        &self,
        host: &mut impl Host,
        domain: usize,
        is_blocked: impl Fn(&str) -> bool,
    ) {
        let Some(d) = self.domains.get(domain) else {
            return;
        };
        let Some(id) = d.masters_available else {
            return;
        };
        let mut masters: Vec<usize> = d
            .slots
            .first()
            .map(|s| s.iter().flatten().copied().collect())
            .unwrap_or_default();
        masters.sort_unstable();
        masters.dedup();
        let available = masters
            .iter()
            .filter_map(|&i| d.origins.get(i))
            .filter(|o| !is_blocked(&o.label))
            .count();
        host.record_metric(id, available as u64);
    }

    pub fn domain_count(&self) -> usize {
        self.domains.len()
    }

    /// A request was failed over; `served` when the client got a good answer from it.
    pub fn failover(&self, host: &mut impl Host, domain: usize, served: bool) {
        if let Some(d) = self.domains.get(domain) {
            bump(
                host,
                if served {
                    d.failover_served
                } else {
                    d.failover_failed
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use crate::host::fake::FakeHost;

    fn config() -> PluginConfig {
        parse(
            br#"{"domains":[{"domain":"www.test.com","master":{"ips":["10.0.0.1","10.0.0.2"],"protocol":"follow"},
                "slave":{"ips":["10.0.0.1"]}}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn names_carry_their_labels_and_are_defined_once_per_origin() {
        let mut host = FakeHost::new(1);
        let metrics = Metrics::define(&config(), &mut host);
        let names: Vec<&str> = host.metrics.iter().map(|(_, n, _)| n.as_str()).collect();
        assert!(names
            .contains(&"origin_pull_origin_requests_total;domain=www.test.com;origin=10.0.0.1:80"));
        assert!(names.contains(&"origin_pull_origin_failures_total;domain=www.test.com;origin=10.0.0.2:443;kind=timeout"));
        assert!(names.contains(
            &"origin_pull_origin_blocks_total;domain=www.test.com;origin=10.0.0.1:80;source=probe"
        ));
        assert!(names.contains(
            &"origin_pull_probes_total;domain=www.test.com;origin=10.0.0.1:443;result=failure"
        ));
        assert!(names.contains(&"origin_pull_failovers_total;domain=www.test.com;outcome=served"));
        assert!(names.iter().all(|n| n.starts_with("origin_pull_")));
        // Counters end in `_total`; the gauges are exactly these.
        let gauges = [
            "origin_pull_origin_blocked",
            "origin_pull_origin_blocked_until_seconds",
            "origin_pull_masters_available",
        ];
        for (kind, name) in host.metrics.iter().map(|(k, n, _)| (k, n)) {
            let base = name.split(';').next().unwrap();
            assert_eq!(*kind == MetricKind::Gauge, gauges.contains(&base), "{name}");
            assert!(
                *kind == MetricKind::Gauge || base.ends_with("_total"),
                "{name}"
            );
        }
        // Master 10.0.0.1 and slave 10.0.0.1 over http share one set of stats.
        let a = metrics.origin(0, Role::Master, 0, Scheme::Http).unwrap();
        let b = metrics.origin(0, Role::Slave, 0, Scheme::Http).unwrap();
        assert_eq!(a.label, b.label);
        assert_eq!(
            metrics
                .origin(0, Role::Master, 1, Scheme::Https)
                .unwrap()
                .label,
            "10.0.0.2:443"
        );
        assert!(metrics.origin(0, Role::Master, 2, Scheme::Http).is_none());
        assert!(metrics.origin(1, Role::Master, 0, Scheme::Http).is_none());
        // 4 labels (10.0.0.1:80, 10.0.0.1:443, 10.0.0.2:80, 10.0.0.2:443) × 13 stats + 3.
        assert_eq!(metrics.origins(0).len(), 4);
        assert_eq!(host.metrics.len(), 4 * 13 + 3);
    }

    #[test]
    fn counting_touches_only_the_right_stat() {
        let mut host = FakeHost::new(1);
        let metrics = Metrics::define(&config(), &mut host);
        let m = metrics
            .origin(0, Role::Master, 1, Scheme::Http)
            .unwrap()
            .clone();
        m.request(&mut host);
        m.failure(&mut host, Answer::Status(503));
        m.failure(&mut host, Answer::Status(200)); // not a failure
        m.failure(&mut host, Answer::ConnectError);
        m.blocked(&mut host, BlockSource::Passive, Some(1_700_000_060_001));
        metrics.failover(&mut host, 0, true);
        let base = ";domain=www.test.com;origin=10.0.0.2:80";
        let get = |name: &str| host.metric(name).unwrap();
        assert_eq!(get(&format!("origin_pull_origin_requests_total{base}")), 1);
        assert_eq!(
            get(&format!("origin_pull_origin_failures_total{base};kind=5xx")),
            1
        );
        assert_eq!(
            get(&format!(
                "origin_pull_origin_failures_total{base};kind=connect"
            )),
            1
        );
        assert_eq!(
            get(&format!("origin_pull_origin_failures_total{base};kind=4xx")),
            0
        );
        assert_eq!(
            get(&format!(
                "origin_pull_origin_blocks_total{base};source=passive"
            )),
            1
        );
        assert_eq!(get(&format!("origin_pull_origin_blocked{base}")), 1);
        assert_eq!(
            get(&format!("origin_pull_origin_blocked_until_seconds{base}")),
            1_700_000_061
        );
        assert_eq!(
            get("origin_pull_failovers_total;domain=www.test.com;outcome=served"),
            1
        );
        m.unblocked(&mut host);
        let get = |name: &str| host.metric(name).unwrap();
        assert_eq!(get(&format!("origin_pull_origin_blocked{base}")), 0);
        assert_eq!(
            get(&format!("origin_pull_origin_blocked_until_seconds{base}")),
            0
        );
        assert_eq!(get(&format!("origin_pull_origin_unblocks_total{base}")), 1);
        let total: i64 = host.metrics.iter().map(|(_, _, v)| v).sum();
        assert_eq!(total, 6); // request, 5xx, connect, block, failover, unblock; gauge back to 0
    }

    #[test]
    fn masters_available_counts_unblocked_master_addresses_only() {
        let mut host = FakeHost::new(1);
        let metrics = Metrics::define(&config(), &mut host);
        let name = "origin_pull_masters_available;domain=www.test.com";
        // Masters: 10.0.0.1 and 10.0.0.2 on :80 and :443 (follow); the slave 10.0.0.1:80 is
        // also a master address here.
        metrics.set_masters_available(&mut host, 0, |_| false);
        assert_eq!(host.metric(name), Some(4));
        metrics.set_masters_available(&mut host, 0, |l| l.starts_with("10.0.0.1:"));
        assert_eq!(host.metric(name), Some(2));
        metrics.set_masters_available(&mut host, 0, |_| true);
        assert_eq!(host.metric(name), Some(0));
        metrics.set_masters_available(&mut host, 7, |_| true); // no such domain: no-op
    }

    #[test]
    fn separators_in_values_cannot_forge_tags() {
        assert_eq!(tag_value("a;kind=x y"), "a_kind_x_y");
    }
}
