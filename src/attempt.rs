//! One attempt of a routed failover, seen by the module's upstream instance (an upstream HTTP
//! filter on the composite cluster, run once per attempt; see `chain`). The downstream filter
//! cannot see the attempts Envoy's router discards, so this is where each one is counted
//! against its origin and where an origin that did not answer is blocked for every worker
//! (same `vm_id`, same shared block table).

use std::rc::Rc;

use crate::chain::read_plan;
use crate::config::{OriginKind, PluginConfig, Scheme};
use crate::exchange::slot_of;
use crate::exchange::Role;
use crate::failover::{failure_kind, Answer};
use crate::health::{passive_block_line, BlockOutcome, BlockTable};
use crate::host::{Host, LogLevel};
use crate::metrics::{BlockSource, Metrics};
use crate::verdict::Failure;

/// An attempt that never got a connection for this long failed to connect (a connect timeout);
/// ended sooner, it was cancelled (e.g. by a client that went away at once), which must not
/// block a healthy origin.
pub const CONNECT_VERDICT_MS: u64 = 200;

pub struct AttemptObserver {
    config: Rc<PluginConfig>,
    metrics: Rc<Metrics>,
    domain: usize,
    role: Role,
    target: usize,
    scheme: Scheme,
    label: String,
    /// The request's random id (from the plan): strikes count distinct requests.
    request: u64,
    /// Envoy's attempt number (1-based).
    attempt: usize,
    judged: bool,
    started_ms: u64,
    first_byte_timeout_ms: Option<u64>,
    /// A later attempt is planned: an answer the domain fails over on is marked for a retry.
    retry_possible: bool,
}

/// What the upstream instance does to the attempt's request headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptStart {
    /// `Host` for this attempt when it differs from the request's.
    pub authority: Option<String>,
    /// For an IP origin after the first attempt: its `IP:PORT`, for the origin to see in
    /// `x-envoy-original-dst-host` (attempt 1's cluster, the only one reading it, is done).
    pub own_address: Option<String>,
    /// The last planned attempt: no later attempt reads the plan or the addresses.
    pub last: bool,
}

impl AttemptObserver {
    /// An attempt starts: `plan` is the downstream filter's plan header, `attempt` Envoy's
    /// attempt count (1-based). `None` when the request carries no plan of this configuration
    /// (e.g. the plan was written by another configuration during a reload): then nothing is
    /// counted for it.
    pub fn start(
        config: &Rc<PluginConfig>,
        metrics: &Rc<Metrics>,
        host: &mut impl Host,
        plan: &str,
        attempt: usize,
        first_byte_timeout_ms: Option<u64>,
    ) -> Option<(AttemptObserver, AttemptStart)> {
        let now = host.now_ms();
        Self::start_at(
            config,
            metrics,
            host,
            plan,
            attempt,
            first_byte_timeout_ms,
            now,
        )
    }

    /// [`AttemptObserver::start`] with the attempt's start time known (the glue gives attempt
    /// 1 the downstream filter's clock reading of the same request: no clock hostcall).
    pub fn start_at(
        config: &Rc<PluginConfig>,
        metrics: &Rc<Metrics>,
        host: &mut impl Host,
        plan: &str,
        attempt: usize,
        first_byte_timeout_ms: Option<u64>,
        started_ms: u64,
    ) -> Option<(AttemptObserver, AttemptStart)> {
        let (domain_name, request, planned) = read_plan(plan, attempt)?;
        // A domain's name is also a host it answers for (`*.x.com`, `*` included): one lookup,
        // whatever the number of domains; the name must match (a reload may have changed it).
        let domain = config.domain_index(domain_name)?;
        let d = config
            .domains
            .get(domain)
            .filter(|d| d.name == domain_name)?;
        let (role, set) = if planned.slave {
            (Role::Slave, d.slave.as_ref()?)
        } else {
            (Role::Master, &d.master)
        };
        // The plan names the target by index and label; trust the label (a reload may have
        // reordered the targets since the plan was written).
        let matches = |i: usize| {
            set.targets.get(i).and_then(|t| {
                t.routes
                    .iter()
                    .position(|r| r.label == planned.label)
                    .map(|s| (i, if s == 0 { Scheme::Http } else { Scheme::Https }))
            })
        };
        let (target, scheme) =
            matches(planned.target).or_else(|| (0..set.targets.len()).find_map(matches))?;
        let observer = AttemptObserver {
            config: config.clone(),
            metrics: metrics.clone(),
            domain,
            role,
            target,
            scheme,
            label: planned.label.to_string(),
            request,
            attempt,
            judged: false,
            started_ms,
            first_byte_timeout_ms,
            retry_possible: read_plan(plan, attempt + 1).is_some(),
        };
        if let Some(m) = metrics.origin(domain, role, target, scheme) {
            m.request(host);
        }
        let start = AttemptStart {
            authority: planned.host.map(str::to_string),
            own_address: (attempt > 1 && set.kind == OriginKind::Ips)
                .then(|| planned.label.to_string()),
            last: read_plan(plan, attempt + 1).is_none(),
        };
        Some((observer, start))
    }

    /// The origin answered this attempt with `status` (one outside 100..=599 is shown to the
    /// router as 502). True when the domain fails over on this answer and a later attempt is
    /// planned: the glue marks it so that the router retries.
    pub fn on_response(
        &mut self,
        host: &mut impl Host,
        blocks: &mut BlockTable,
        status: u32,
    ) -> bool {
        let valid = (100..=599).contains(&status);
        let answer = if valid {
            Answer::Status(status)
        } else {
            Answer::ConnectError
        };
        self.judge(host, blocks, answer);
        let seen = if valid { status } else { 502 };
        self.retry_possible
            && self
                .config
                .domains
                .get(self.domain)
                .is_some_and(|d| d.retries_status(seen) || (!valid && d.failover.on_connect_error))
    }

    /// Whether the attempt still needs a verdict when it ends (no answer was seen).
    pub fn pending(&self) -> bool {
        !self.judged
    }

    /// The attempt ended. Without an answer it failed before the response. Envoy gives an
    /// attempt's stream no response flags; what it does give: a transport failure reason when
    /// the connection was refused (`refused`), a local address once a connection is
    /// established (`connected`), and the attempt's duration. So: refused → connection failure;
    /// never connected after [`CONNECT_VERDICT_MS`] → connection failure (connect timeout);
    /// connected but silent until the first-byte timeout → timeout. Anything else (the client
    /// went away early, the origin reset the connection) is no verdict on the origin.
    pub fn on_done(
        &mut self,
        host: &mut impl Host,
        blocks: &mut BlockTable,
        refused: bool,
        connected: bool,
    ) {
        if self.judged {
            return;
        }
        let elapsed = host.now_ms().saturating_sub(self.started_ms);
        // Timers fire a little early or late; 95 % of the timeout is its end, not a cancellation.
        let timed_out = self
            .first_byte_timeout_ms
            .is_some_and(|t| t > 0 && elapsed * 20 >= t * 19);
        let answer = if refused || (!connected && elapsed >= CONNECT_VERDICT_MS) {
            Answer::ConnectError
        } else if connected && timed_out {
            Answer::Timeout
        } else {
            self.judged = true;
            return;
        };
        self.judge(host, blocks, answer);
    }

    fn judge(&mut self, host: &mut impl Host, blocks: &mut BlockTable, answer: Answer) {
        self.judged = true;
        let config = self.config.clone();
        let Some(domain) = config.domains.get(self.domain) else {
            return;
        };
        let origin = self
            .metrics
            .origin(self.domain, self.role, self.target, self.scheme);
        if let Some(m) = origin {
            m.failure(host, answer);
        }
        let detection = domain.detection;
        let config_id = Rc::as_ptr(&self.config) as usize;
        let slot = slot_of(
            self.domain,
            self.target,
            self.role == Role::Slave,
            self.scheme == Scheme::Https,
        );
        let Some(kind) = failure_kind(answer, &detection) else {
            if detection.block_ms > 0 && matches!(answer, Answer::Status(_)) {
                // The origin answered: evidence (for this worker) that it is serving.
                blocks.note_answer(config_id, slot, self.started_ms);
            }
            return;
        };
        let failure = Failure {
            kind,
            at_ms: host.now_ms(),
            started_ms: self.started_ms,
            request: self.request,
            last_answer_ms: blocks.last_answer(config_id, slot),
            // A request's later attempts never add strikes (the same rule as callouts: a URL
            // that breaks every origin accuses the URL); connect failures still block at once.
            failed_elsewhere: self.attempt > 1,
        };
        let rule = detection.rule();
        let (_, outcome) = blocks.record_failure(host, &domain.name, &self.label, &rule, &failure);
        if outcome != BlockOutcome::Blocked {
            return;
        }
        let until = blocks.blocked_until(host, &domain.name, &self.label);
        if let Some(m) = origin {
            m.blocked(host, BlockSource::Passive, until);
        }
        self.metrics
            .refresh_masters_available(host, blocks, self.domain);
        host.log(
            LogLevel::Warn,
            &passive_block_line(
                &domain.name,
                self.role.as_str(),
                &self.label,
                answer.kind(),
                detection.block_ms,
                until.unwrap_or_default(),
                (!kind.blocks_at_once()).then_some(&rule),
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::push_plan_token;
    use crate::config::parse;
    use crate::host::fake::FakeHost;

    fn setup() -> (Rc<PluginConfig>, Rc<Metrics>, FakeHost) {
        let config = Rc::new(
            parse(
                br#"{"metrics":{"per_origin":true},"domains":[{"domain":"www.test.com","master":{"ips":["127.0.0.2:80","127.0.0.3:80"]},
                "slave":{"ips":["127.0.0.5:80"],"host":"backup.test"},"detection":{"failure_threshold":1}}]}"#,
            )
            .unwrap(),
        );
        let host = FakeHost::new(7);
        let metrics = Rc::new(Metrics::new(config.clone(), Rc::default()));
        (config, metrics, host)
    }

    fn plan() -> String {
        let mut plan = crate::chain::plan_head("www.test.com", 0x42);
        push_plan_token(&mut plan, false, 1, None, "127.0.0.3:80");
        push_plan_token(&mut plan, true, 0, Some("backup.test"), "127.0.0.5:80");
        plan
    }

    #[test]
    fn a_master_404_counts_and_never_blocks() {
        let (config, metrics, mut host) = setup();
        let mut blocks = BlockTable::default();
        let (mut a, start) =
            AttemptObserver::start(&config, &metrics, &mut host, &plan(), 1, Some(10_000)).unwrap();
        assert_eq!(start.authority, None);
        assert!(
            a.on_response(&mut host, &mut blocks, 404),
            "marked for the retry to the slave"
        );
        host.now_ms += 20_000;
        a.on_done(&mut host, &mut blocks, false, true);
        assert!(!blocks.is_blocked(&host, "www.test.com", "127.0.0.3:80", host.now_ms()));
        let m = metrics.origin(0, Role::Master, 1, Scheme::Http).unwrap();
        assert_eq!(m.label, "127.0.0.3:80");
        assert_eq!(
            host.metric(
                "origin_pull_origin_requests_total;domain=www.test.com;origin=127.0.0.3:80"
            )
            .unwrap_or(0),
            1
        );
        assert_eq!(host.metric("origin_pull_origin_failures_total;domain=www.test.com;origin=127.0.0.3:80;kind=4xx").unwrap_or(0), 1);
    }

    #[test]
    fn no_answer_blocks_by_kind_and_a_cancelled_attempt_blocks_nothing() {
        let (config, metrics, mut host) = setup();
        let mut blocks = BlockTable::default();
        let (mut a, _) =
            AttemptObserver::start(&config, &metrics, &mut host, &plan(), 1, Some(10_000)).unwrap();
        a.on_done(&mut host, &mut blocks, true, false);
        assert!(blocks.is_blocked(&host, "www.test.com", "127.0.0.3:80", host.now_ms()));

        // Cancelled after 3 s of a 10 s first-byte timeout: the client went away.
        let (mut b, start) =
            AttemptObserver::start(&config, &metrics, &mut host, &plan(), 2, Some(10_000)).unwrap();
        assert_eq!(start.authority.as_deref(), Some("backup.test"));
        assert_eq!(start.own_address.as_deref(), Some("127.0.0.5:80"));
        assert!(start.last);
        host.now_ms += 3_000;
        b.on_done(&mut host, &mut blocks, false, true);
        assert!(!blocks.is_blocked(&host, "www.test.com", "127.0.0.5:80", host.now_ms()));

        // Silent until the first-byte timeout, on the slave (attempt 2): a request's later
        // attempts never add strikes.
        let (mut c, _) =
            AttemptObserver::start(&config, &metrics, &mut host, &plan(), 2, Some(10_000)).unwrap();
        host.now_ms += 9_990;
        c.on_done(&mut host, &mut blocks, false, true);
        assert!(!blocks.is_blocked(&host, "www.test.com", "127.0.0.5:80", host.now_ms()));
        assert_eq!(host.metric("origin_pull_origin_failures_total;domain=www.test.com;origin=127.0.0.5:80;kind=timeout").unwrap_or(0), 1);
        // On the first attempt (failure_threshold 1 here): blocked.
        let (mut d, _) = AttemptObserver::start(
            &config,
            &metrics,
            &mut host,
            "www.test.com 7 m,0,-,127.0.0.2:80 s,0,-,127.0.0.5:80",
            1,
            Some(10_000),
        )
        .unwrap();
        host.now_ms += 10_000;
        d.on_done(&mut host, &mut blocks, false, true);
        assert!(blocks.is_blocked(&host, "www.test.com", "127.0.0.2:80", host.now_ms()));
    }

    #[test]
    fn a_connection_never_established_is_a_connect_failure_unless_cancelled_at_once() {
        let (config, metrics, mut host) = setup();
        let mut blocks = BlockTable::default();
        // A client that goes away 50 ms into the connect: no verdict.
        let (mut a, _) =
            AttemptObserver::start(&config, &metrics, &mut host, &plan(), 1, Some(10_000)).unwrap();
        host.now_ms += 50;
        a.on_done(&mut host, &mut blocks, false, false);
        assert!(!blocks.is_blocked(&host, "www.test.com", "127.0.0.3:80", host.now_ms()));
        // The connect timeout (0.5 s, SYNs dropped): blocked.
        let (mut b, _) =
            AttemptObserver::start(&config, &metrics, &mut host, &plan(), 1, Some(10_000)).unwrap();
        host.now_ms += 500;
        b.on_done(&mut host, &mut blocks, false, false);
        assert!(blocks.is_blocked(&host, "www.test.com", "127.0.0.3:80", host.now_ms()));
        assert_eq!(
            host.metric("origin_pull_origin_failures_total;domain=www.test.com;origin=127.0.0.3:80;kind=connect"),
            Some(1)
        );
    }

    #[test]
    fn wildcard_and_default_domains_are_found_by_name() {
        let config = Rc::new(
            parse(
                br#"{"domains":[{"domain":"*.test.com","master":{"ips":["127.0.0.2:80"]},"slave":{"ips":["127.0.0.5:80"]}},
                {"domain":"*","master":{"ips":["127.0.0.3:80"]},"slave":{"ips":["127.0.0.5:80"]}},
                {"domain":"a.test.com","master":{"ips":["127.0.0.4:80"]},"slave":{"ips":["127.0.0.5:80"]}}]}"#,
            )
            .unwrap(),
        );
        let mut host = FakeHost::new(9);
        let metrics = Rc::new(Metrics::new(config.clone(), Rc::default()));
        for (plan, domain) in [
            ("*.test.com 1 m,0,-,127.0.0.2:80 s,0,-,127.0.0.5:80", 0),
            ("* 2 m,0,-,127.0.0.3:80 s,0,-,127.0.0.5:80", 1),
            ("a.test.com 3 m,0,-,127.0.0.4:80 s,0,-,127.0.0.5:80", 2),
        ] {
            let (a, _) =
                AttemptObserver::start(&config, &metrics, &mut host, plan, 1, None).unwrap();
            assert_eq!(a.domain, domain, "{plan}");
        }
        // A host name that is not a configured domain's name is no plan of this configuration.
        assert!(AttemptObserver::start(
            &config,
            &metrics,
            &mut host,
            "b.test.com 4 m,0,-,127.0.0.2:80",
            1,
            None
        )
        .is_none());
    }

    #[test]
    fn foreign_or_broken_plans_are_ignored() {
        let (config, metrics, mut host) = setup();
        assert!(AttemptObserver::start(
            &config,
            &metrics,
            &mut host,
            "other.com 5 m,0,-,127.0.0.2:80",
            1,
            None
        )
        .is_none());
        assert!(AttemptObserver::start(
            &config,
            &metrics,
            &mut host,
            "www.test.com 6 m,0,-,127.9.9.9:80",
            1,
            None
        )
        .is_none());
        assert!(AttemptObserver::start(&config, &metrics, &mut host, &plan(), 3, None).is_none());
        // A stale index is found again by its label.
        let (a, _) = AttemptObserver::start(
            &config,
            &metrics,
            &mut host,
            "www.test.com 8 m,0,-,127.0.0.3:80",
            1,
            None,
        )
        .unwrap();
        assert_eq!(a.target, 1);
    }
}
