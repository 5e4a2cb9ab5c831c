//! Active health probes, run by exactly one VM of the Envoy process.
//!
//! Every worker VM (and the main-thread VM) ticks; the one holding the lease in shared data
//! (`origin_pull.probe_lease`: holder id + expiry, written with compare-and-swap) probes every
//! configured origin and writes the verdicts into the shared block table that passive
//! detection uses, so all workers see them. A holder that stops renewing (VM gone, config
//! replaced) loses the lease when it expires and another VM takes over; its streaks start
//! again from zero. Every VM also refreshes the `origin_pull_origin_blocked` gauges it defined,
//! which is why the tick runs even without probes.

use std::time::Duration;

use crate::config::{Domain, OriginSet, PluginConfig, Probe, Route, Scheme};
use crate::engine::blocks::{BlockOutcome, BlockTable, UnblockOutcome, CREATE_ONLY_CAS};
use crate::engine::classify::{read_callout, Answer};
use crate::engine::exchange::ORIGINAL_DST_HEADER;
use crate::engine::metrics::{BlockSource, Metrics, OriginMetrics};
use crate::host::Host;
use crate::types::Role;

pub const LEASE_KEY: &str = "origin_pull.probe_lease";
/// Tick period without probes (the blocked gauges need refreshing, the counters flushing).
const IDLE_TICK_MS: u64 = crate::engine::metrics::FLUSH_INTERVAL_MS;
const MIN_TICK_MS: u64 = 50;
/// A holder that misses this many ticks loses the lease.
const LEASE_TICKS: u64 = 4;
const MIN_LEASE_MS: u64 = 1_000;
const GAUGE_REFRESH_MS: u64 = 1_000;
/// Envoy answers every callout (its timeout included); this only frees a slot if it did not.
const LOST_RESPONSE_GRACE_MS: u64 = 5_000;

/// One origin address probed for one origin set of one domain.
#[derive(Debug)]
struct Target {
    domain: usize,
    domain_name: String,
    role: Role,
    index: usize,
    scheme: Scheme,
    label: String,
    cluster: String,
    headers: Vec<(String, String)>,
    probe: Probe,
    block_ms: u64,
    // Run state (this VM, while it holds the lease).
    next_due_ms: u64,
    in_flight: Option<(u32, u64)>,
    successes: u32,
    failures: u32,
    /// The table showed this origin blocked at the previous verdict: successes count from then.
    saw_blocked: bool,
    dispatch_error_logged: bool,
}

impl Target {
    #[allow(clippy::too_many_arguments)] // one probed address: where it sits in the config
    fn new(
        d: usize,
        domain: &Domain,
        role: Role,
        set: &OriginSet,
        probe: &Probe,
        index: usize,
        scheme: Scheme,
        route: &Route,
    ) -> Target {
        let authority = probe
            .host
            .clone()
            .or_else(|| set.host.clone())
            .unwrap_or_else(|| {
                if domain.name.starts_with('*') {
                    route.label.to_string()
                } else {
                    domain.name.clone()
                }
            });
        let scheme_text = route.scheme.unwrap_or(scheme).as_str();
        let mut headers = vec![
            (":method".to_string(), "GET".to_string()),
            (":path".to_string(), probe.path.clone()),
            (":authority".to_string(), authority),
            (":scheme".to_string(), scheme_text.to_string()),
            (
                "user-agent".to_string(),
                format!("origin-pull-probe/{}", crate::VERSION),
            ),
        ];
        if let Some(dst) = &route.original_dst {
            headers.push((ORIGINAL_DST_HEADER.to_string(), dst.to_string()));
        }
        Target {
            domain: d,
            domain_name: domain.name.clone(),
            role,
            index,
            scheme,
            label: route.label.to_string(),
            cluster: route.cluster.to_string(),
            headers,
            probe: probe.clone(),
            block_ms: domain.detection.block_ms,
            next_due_ms: 0,
            in_flight: None,
            successes: 0,
            failures: 0,
            saw_blocked: false,
            dispatch_error_logged: false,
        }
    }

    fn reset(&mut self) {
        self.next_due_ms = 0;
        self.in_flight = None;
        self.successes = 0;
        self.failures = 0;
        self.saw_blocked = false;
    }
}

pub struct Prober {
    holder: u64,
    targets: Vec<Target>,
    tick_ms: u64,
    lease_ms: u64,
    holding: bool,
    next_gauge_ms: u64,
}

impl Prober {
    /// Compiles the probe plan of `config`; `holder` identifies this VM's root context.
    pub fn new(config: &PluginConfig, holder: u64) -> Prober {
        let mut targets = Vec::new();
        for (d, domain) in config.domains.iter().enumerate() {
            for (role, set) in [
                (Role::Master, Some(&domain.master)),
                (Role::Slave, domain.slave.as_ref()),
            ] {
                let Some(set) = set else { continue };
                let Some(probe) = &set.probe else { continue };
                for (index, target) in set.targets.iter().enumerate() {
                    for (scheme, route) in Scheme::ALL.into_iter().zip(&target.routes) {
                        // `follow` has two addresses per target; other protocols one, twice.
                        if scheme == Scheme::Https
                            && target
                                .routes
                                .first()
                                .is_some_and(|r| r.label == route.label)
                        {
                            continue;
                        }
                        targets.push(Target::new(
                            d, domain, role, set, probe, index, scheme, route,
                        ));
                    }
                }
            }
        }
        let tick_ms = targets
            .iter()
            .map(|t| t.probe.interval_ms / 2)
            .min()
            .unwrap_or(IDLE_TICK_MS)
            .clamp(MIN_TICK_MS, IDLE_TICK_MS);
        Prober {
            holder,
            targets,
            tick_ms,
            lease_ms: (tick_ms * LEASE_TICKS).max(MIN_LEASE_MS),
            holding: false,
            next_gauge_ms: 0,
        }
    }

    /// How often the glue should call [`Prober::on_tick`].
    pub fn tick_period(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }

    pub fn has_probes(&self) -> bool {
        !self.targets.is_empty()
    }

    pub fn is_holder(&self) -> bool {
        self.holding
    }

    pub fn on_tick(&mut self, host: &mut impl Host, blocks: &mut BlockTable, metrics: &Metrics) {
        let now = host.now_ms();
        let holding = self.hold_lease(host, now);
        if holding != self.holding {
            self.holding = holding;
            log::debug!(
                "prober {:016x} {} the probe lease",
                self.holder,
                if holding { "took" } else { "lost" }
            );
            self.targets.iter_mut().for_each(Target::reset);
        }
        // Every VM keeps the blocked gauges IT defined current (they are defined lazily, on a
        // block, so no VM knows them all); a block that simply expires is written by nobody.
        if now >= self.next_gauge_ms {
            self.next_gauge_ms = now + GAUGE_REFRESH_MS;
            // The block gauges this VM defined (on a block: they are lazy, so no VM knows them
            // all) and its availability gauges follow the per-domain block table.
            for g in metrics.registry().borrow().block_gauges() {
                let until = blocks
                    .blocked_until(host, &g.domain, &g.label)
                    .filter(|&until| until > now);
                g.record(host, until);
            }
            for d in metrics.availability_domains() {
                metrics.refresh_masters_available(host, blocks, d);
            }
        }
        if !holding {
            return;
        }
        for target in &mut self.targets {
            if let Some((_, sent)) = target.in_flight {
                if now < sent + target.probe.timeout_ms + LOST_RESPONSE_GRACE_MS {
                    continue;
                }
                target.in_flight = None;
            }
            if now < target.next_due_ms {
                continue;
            }
            // Keep the cadence (ticks are not aligned with it) unless a whole interval slipped.
            let interval = target.probe.interval_ms;
            target.next_due_ms = if target.next_due_ms == 0 || now >= target.next_due_ms + interval
            {
                now + interval
            } else {
                target.next_due_ms + interval
            };
            let headers: Vec<(&str, &str)> = target
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            match host.dispatch(
                &target.cluster,
                &headers,
                None,
                Duration::from_millis(target.probe.timeout_ms),
            ) {
                Ok(token) => target.in_flight = Some((token, now)),
                Err(status) => {
                    // A deployment problem (e.g. a missing cluster), not the origin's health.
                    if !target.dispatch_error_logged {
                        target.dispatch_error_logged = true;
                        log::error!(
                                "{}: could not start the probe of {} origin {} via cluster '{}': {status}",
                                target.domain_name,
                                target.role.as_str(),
                                target.label,
                                target.cluster
                            );
                    }
                }
            }
        }
    }

    /// A callout answered; returns false when it was not one of ours.
    pub fn on_response(
        &mut self,
        host: &mut impl Host,
        blocks: &mut BlockTable,
        metrics: &Metrics,
        token: u32,
        num_headers: usize,
        body_size: usize,
    ) -> bool {
        let Some(target) = self
            .targets
            .iter_mut()
            .find(|t| t.in_flight.is_some_and(|(tok, _)| tok == token))
        else {
            return false;
        };
        target.in_flight = None;
        let (answer, _) = read_callout(host, num_headers, body_size);
        let healthy = matches!(answer, Answer::Status(s) if target.probe.expects(s));
        let origin = metrics.origin(target.domain, target.role, target.index, target.scheme);
        if let Some(m) = origin {
            m.probe(host, healthy);
        }
        judge(host, blocks, target, origin, answer, healthy);
        true
    }

    /// Gives the lease up at once (the root context is going away), so another VM need not
    /// wait for it to expire.
    pub fn release(&mut self, host: &mut impl Host) {
        if !self.holding {
            return;
        }
        self.holding = false;
        let (data, cas) = host.shared_get(LEASE_KEY);
        if let (Some((holder, _)), Some(cas)) = (data.as_deref().and_then(decode_lease), cas) {
            if holder == self.holder {
                let _ = host.shared_set(LEASE_KEY, &encode_lease(self.holder, 0), Some(cas));
            }
        }
    }

    /// Holds (takes, keeps or renews) the lease; false when another live VM holds it.
    fn hold_lease(&mut self, host: &mut impl Host, now: u64) -> bool {
        let (data, cas) = host.shared_get(LEASE_KEY);
        let current = data.as_deref().and_then(decode_lease);
        let ours = encode_lease(self.holder, now + self.lease_ms);
        match (current, cas) {
            (Some((holder, until)), Some(cas)) if holder == self.holder && until > now => {
                // Renew once half of it is gone; a failed renewal is retried next tick.
                if until - now < self.lease_ms / 2 {
                    let _ = host.shared_set(LEASE_KEY, &ours, Some(cas));
                }
                true
            }
            (Some((_, until)), Some(_)) if until > now => false,
            // Missing, unreadable or expired: take it. Of several VMs racing, CAS lets one win.
            (_, cas) => host
                .shared_set(LEASE_KEY, &ours, Some(cas.unwrap_or(CREATE_ONLY_CAS)))
                .is_ok(),
        }
    }
}

/// Turns one probe verdict into block-table changes.
fn judge(
    host: &mut impl Host,
    blocks: &mut BlockTable,
    target: &mut Target,
    origin: Option<OriginMetrics>,
    answer: Answer,
    healthy: bool,
) {
    let now = host.now_ms();
    let blocked = blocks.is_blocked(host, &target.domain_name, &target.label, now);
    if blocked && !target.saw_blocked {
        // Blocked since the last verdict (passively, or by us): recovery counts from here.
        target.successes = 0;
    }
    target.saw_blocked = blocked;
    if healthy {
        target.successes = target.successes.saturating_add(1);
        target.failures = 0;
    } else {
        target.failures = target.failures.saturating_add(1);
        target.successes = 0;
    }
    let what = format!(
        "{}: probe of {} origin {}",
        target.domain_name,
        target.role.as_str(),
        target.label
    );
    if !healthy && target.failures >= target.probe.unhealthy_threshold {
        // While it stays dead the block is renewed once half of it has run out (a renewal
        // within a second of the last write would be ignored as a duplicate).
        let remaining = blocks
            .blocked_until(host, &target.domain_name, &target.label)
            .map_or(0, |until| until.saturating_sub(now));
        if blocked && remaining >= target.block_ms / 2 {
            target.saw_blocked = true;
            return;
        }
        let outcome = blocks.block(host, &target.domain_name, &target.label, target.block_ms);
        if outcome == BlockOutcome::Blocked && !blocked {
            log::warn!(
                "{what} failed {} time(s) in a row ({}); blocked for {} s",
                target.failures,
                answer_text(answer),
                target.block_ms / 1000
            );
            if let Some(m) = origin {
                let until = blocks.blocked_until(host, &target.domain_name, &target.label);
                m.blocked(host, BlockSource::Probe, until);
                m.refresh_masters_available(host, blocks);
            }
        }
        target.saw_blocked = true;
    } else if healthy && blocked && target.successes >= target.probe.healthy_threshold {
        if blocks.unblock(host, &target.domain_name, &target.label) == UnblockOutcome::Unblocked {
            log::info!(
                "{what} passed {} time(s) in a row; unblocked",
                target.successes
            );
            if let Some(m) = origin {
                m.unblocked(host);
                m.refresh_masters_available(host, blocks);
            }
        }
        target.saw_blocked = false;
    }
}

fn answer_text(answer: Answer) -> String {
    match answer {
        Answer::Status(s) => format!("status {s}"),
        other => other.kind().to_string(),
    }
}

fn encode_lease(holder: u64, until_ms: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    let (a, b) = out.split_at_mut(8);
    a.copy_from_slice(&holder.to_le_bytes());
    b.copy_from_slice(&until_ms.to_le_bytes());
    out
}

fn decode_lease(bytes: &[u8]) -> Option<(u64, u64)> {
    let holder = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let until = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    Some((holder, until))
}

#[cfg(test)]
mod tests;
