//! One attempt of a routed failover, seen by the module's upstream instance (an upstream HTTP
//! filter on the composite cluster, run once per attempt; see `chain`). The downstream filter
//! cannot see the attempts Envoy's router discards, so this is where each one is counted
//! against its origin and where an origin that did not answer is blocked for every worker
//! (same `vm_id`, same shared block table).

use std::rc::Rc;

use crate::config::{OriginKind, Scheme};
use crate::engine::blocks::{passive_block_line, BlockOutcome, BlockTable};
use crate::engine::chain::{ChainProgress, Plan};
use crate::engine::classify::{classify_routed, failure_kind, Answer};
use crate::engine::exchange::slot_of;
use crate::engine::exchange::Role;
use crate::engine::metrics::{BlockSource, OriginMetrics};
use crate::engine::verdict::Failure;
use crate::host::{Host, RAW_LOG_TARGET};

/// An attempt that never got a connection for this long failed to connect (a connect timeout);
/// ended sooner, it was cancelled (e.g. by a client that went away at once), which must not
/// block a healthy origin.
pub const CONNECT_VERDICT_MS: u64 = 200;

pub struct AttemptObserver {
    plan: Rc<Plan>,
    role: Role,
    target: usize,
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
pub struct AttemptStart<'a> {
    /// `Host` for this attempt when it differs from the one the request carries.
    pub authority: Option<&'a str>,
    /// For an IP origin after the first attempt: its `IP:PORT`, for the origin to see in
    /// `x-envoy-original-dst-host` (attempt 1's cluster, the only one reading it, is done).
    pub own_address: Option<&'a str>,
    /// The last planned attempt: no later attempt reads the plan or the addresses.
    pub last: bool,
}

impl AttemptObserver {
    /// Attempt `attempt` (1-based, counted by the glue) of `plan` starts at `started_ms` (the
    /// glue gives attempt 1 the listener's clock reading of the same request: no clock
    /// hostcall). `None` when the plan has no such attempt: then nothing is counted for it.
    pub fn start(
        plan: &Rc<Plan>,
        host: &mut impl Host,
        attempt: usize,
        first_byte_timeout_ms: Option<u64>,
        started_ms: u64,
    ) -> Option<AttemptObserver> {
        let (step, _, _) = plan.step(attempt)?;
        let role = if step.slave {
            Role::Slave
        } else {
            Role::Master
        };
        let observer = AttemptObserver {
            plan: plan.clone(),
            role,
            target: step.target,
            attempt,
            judged: false,
            started_ms,
            first_byte_timeout_ms,
            retry_possible: attempt < plan.steps.len(),
        };
        if let Some(m) = observer.origin() {
            m.request(host);
        }
        Some(observer)
    }

    /// What this attempt changes in the request headers (borrowed from the plan).
    /// Attempt `attempt` of a logged chain (no upstream instance): reported by the router's
    /// upstream log (a failed attempt, `status` 0 when none came) or seen answering by the
    /// listener's filter (`flags` 0). Its request is counted once, by whichever sees it first
    /// (`progress`).
    pub fn observe_logged(
        plan: &Rc<Plan>,
        progress: &mut ChainProgress,
        host: &mut impl Host,
        blocks: &mut BlockTable,
        attempt: usize,
        status: u32,
        flags: u64,
    ) {
        // Attempt 1 began with the listener's pick; a later one just before it failed (the
        // log comes at its end), which only widens the evidence window.
        let started_ms = if attempt == 1 {
            plan.sent_ms
        } else {
            host.now_ms()
        };
        let Some((step, _, _)) = plan.step(attempt) else {
            return;
        };
        let mut observer = AttemptObserver {
            plan: plan.clone(),
            role: if step.slave {
                Role::Slave
            } else {
                Role::Master
            },
            target: step.target,
            attempt,
            judged: false,
            started_ms,
            first_byte_timeout_ms: None,
            retry_possible: false,
        };
        if attempt > progress.started {
            progress.started = attempt;
            if let Some(m) = observer.origin() {
                m.request(host);
            }
        }
        if attempt <= progress.judged {
            return;
        }
        progress.judged = attempt;
        if let Some(answer) = logged_answer(status, flags) {
            observer.judge(host, blocks, answer);
        }
    }

    pub fn start_headers(&self) -> AttemptStart<'_> {
        let step = self.plan.step(self.attempt);
        AttemptStart {
            authority: step.and_then(|(s, _, _)| s.authority.as_deref()),
            own_address: step
                .filter(|(_, set, _)| self.attempt > 1 && set.kind == OriginKind::Ips)
                .map(|(_, _, route)| &*route.label),
            last: !self.retry_possible,
        }
    }

    fn label(&self) -> &str {
        self.plan
            .step(self.attempt)
            .map_or("", |(_, _, route)| &*route.label)
    }

    fn origin(&self) -> Option<OriginMetrics<'_>> {
        self.plan.metrics.as_ref()?.origin(
            self.plan.domain,
            self.role,
            self.target,
            self.plan.scheme,
        )
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
                .plan
                .config
                .domains
                .get(self.plan.domain)
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
        let plan = self.plan.clone();
        let Some(domain) = plan.config.domains.get(plan.domain) else {
            return;
        };
        let label = self.label();
        let origin = self.origin();
        if let Some(m) = &origin {
            m.failure(host, answer);
        }
        let detection = domain.detection;
        let config_id = Rc::as_ptr(&plan.config) as usize;
        let slot = slot_of(
            plan.domain,
            self.target,
            self.role == Role::Slave,
            plan.scheme == Scheme::Https,
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
            request: plan.request,
            last_answer_ms: blocks.last_answer(config_id, slot),
            // A request's later attempts never add strikes (the same rule as callouts: a URL
            // that breaks every origin accuses the URL); connect failures still block at once.
            failed_elsewhere: self.attempt > 1,
        };
        let rule = detection.rule();
        let (_, outcome) = blocks.record_failure(host, &domain.name, label, &rule, &failure);
        if outcome != BlockOutcome::Blocked {
            return;
        }
        let until = blocks.blocked_until(host, &domain.name, label);
        if let Some(m) = &origin {
            m.blocked(host, BlockSource::Passive, until);
        }
        if let Some(metrics) = &plan.metrics {
            metrics.refresh_masters_available(host, blocks, plan.domain);
        }
        log::warn!(target: RAW_LOG_TARGET, "{}", passive_block_line(
            &domain.name,
            self.role.as_str(),
            label,
            answer.kind(),
            detection.block_ms,
            until.unwrap_or_default(),
            (!kind.blocks_at_once()).then_some(&rule),
        ));
    }
}

/// What the router's upstream log says of an attempt: the origin's answer when it answered
/// (Envoy's "retry limit exceeded" flag only says no retry was left), else what failed; `None`
/// for an attempt cancelled by the client or the router (a reset on the downstream side), which
/// says nothing about the origin.
pub fn logged_answer(status: u32, flags: u64) -> Option<Answer> {
    use crate::engine::classify::flags::*;
    let origin_flags = flags & !UPSTREAM_RETRY_LIMIT_EXCEEDED;
    if origin_flags == 0 && status != 0 {
        // An invalid status ("HTTP/1.1 2000") is a broken origin: judged like a reset.
        return Some(classify_routed(status, 0));
    }
    const ORIGIN_FAILURES: u64 = NO_HEALTHY_UPSTREAM
        | UPSTREAM_REQUEST_TIMEOUT
        | UPSTREAM_REMOTE_RESET
        | UPSTREAM_CONNECTION_FAILURE
        | UPSTREAM_CONNECTION_TERMINATION
        | UPSTREAM_PROTOCOL_ERROR
        | DNS_RESOLUTION_FAILURE;
    (origin_flags & ORIGIN_FAILURES != 0).then(|| classify_routed(status, origin_flags))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, PluginConfig};
    use crate::engine::chain::PlannedStep;
    use crate::engine::metrics::Metrics;
    use crate::testing::FakeHost;

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

    /// Master `master` (index), then the slave with its own Host.
    fn plan_of(config: &Rc<PluginConfig>, metrics: &Rc<Metrics>, master: usize) -> Rc<Plan> {
        Rc::new(Plan {
            config: config.clone(),
            metrics: Some(metrics.clone()),
            domain: 0,
            scheme: Scheme::Http,
            request: 0x42 + master as u64,
            sent_ms: 0,
            steps: vec![
                PlannedStep {
                    slave: false,
                    target: master,
                    authority: None,
                },
                PlannedStep {
                    slave: true,
                    target: 0,
                    authority: Some("backup.test".into()),
                },
            ],
            observed: true,
        })
    }

    fn start(plan: &Rc<Plan>, host: &mut FakeHost, attempt: usize) -> AttemptObserver {
        let now = host.now_ms;
        AttemptObserver::start(plan, host, attempt, Some(10_000), now).unwrap()
    }

    #[test]
    fn a_master_404_counts_and_never_blocks() {
        let (config, metrics, mut host) = setup();
        let plan = plan_of(&config, &metrics, 1);
        let mut blocks = BlockTable::default();
        let mut a = start(&plan, &mut host, 1);
        let headers = a.start_headers();
        assert_eq!(
            headers.authority, None,
            "attempt 1's Host is the listener's"
        );
        assert_eq!(headers.own_address, None);
        assert!(!headers.last);
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
        // The slave's 404 is the last planned attempt: relayed, never marked.
        let mut b = start(&plan, &mut host, 2);
        assert!(!b.on_response(&mut host, &mut blocks, 404));
    }

    #[test]
    fn no_answer_blocks_by_kind_and_a_cancelled_attempt_blocks_nothing() {
        let (config, metrics, mut host) = setup();
        let plan = plan_of(&config, &metrics, 1);
        let mut blocks = BlockTable::default();
        let mut a = start(&plan, &mut host, 1);
        a.on_done(&mut host, &mut blocks, true, false);
        assert!(blocks.is_blocked(&host, "www.test.com", "127.0.0.3:80", host.now_ms()));

        // Cancelled after 3 s of a 10 s first-byte timeout: the client went away.
        let mut b = start(&plan, &mut host, 2);
        let headers = b.start_headers();
        assert_eq!(headers.authority, Some("backup.test"));
        assert_eq!(headers.own_address, Some("127.0.0.5:80"));
        assert!(headers.last);
        host.now_ms += 3_000;
        b.on_done(&mut host, &mut blocks, false, true);
        assert!(!blocks.is_blocked(&host, "www.test.com", "127.0.0.5:80", host.now_ms()));

        // Silent until the first-byte timeout, on the slave (attempt 2): a request's later
        // attempts never add strikes.
        let mut c = start(&plan, &mut host, 2);
        host.now_ms += 9_990;
        c.on_done(&mut host, &mut blocks, false, true);
        assert!(!blocks.is_blocked(&host, "www.test.com", "127.0.0.5:80", host.now_ms()));
        assert_eq!(host.metric("origin_pull_origin_failures_total;domain=www.test.com;origin=127.0.0.5:80;kind=timeout").unwrap_or(0), 1);
        // On the first attempt (failure_threshold 1 here): blocked.
        let mut d = start(&plan_of(&config, &metrics, 0), &mut host, 1);
        host.now_ms += 10_000;
        d.on_done(&mut host, &mut blocks, false, true);
        assert!(blocks.is_blocked(&host, "www.test.com", "127.0.0.2:80", host.now_ms()));
    }

    #[test]
    fn a_connection_never_established_is_a_connect_failure_unless_cancelled_at_once() {
        let (config, metrics, mut host) = setup();
        let plan = plan_of(&config, &metrics, 1);
        let mut blocks = BlockTable::default();
        // A client that goes away 50 ms into the connect: no verdict.
        let mut a = start(&plan, &mut host, 1);
        host.now_ms += 50;
        a.on_done(&mut host, &mut blocks, false, false);
        assert!(!blocks.is_blocked(&host, "www.test.com", "127.0.0.3:80", host.now_ms()));
        // The connect timeout (0.5 s, SYNs dropped): blocked.
        let mut b = start(&plan, &mut host, 1);
        host.now_ms += 500;
        b.on_done(&mut host, &mut blocks, false, false);
        assert!(blocks.is_blocked(&host, "www.test.com", "127.0.0.3:80", host.now_ms()));
        assert_eq!(
            host.metric("origin_pull_origin_failures_total;domain=www.test.com;origin=127.0.0.3:80;kind=connect"),
            Some(1)
        );
    }

    #[test]
    fn an_attempt_outside_the_plan_is_not_observed() {
        let (config, metrics, mut host) = setup();
        let plan = plan_of(&config, &metrics, 1);
        assert!(AttemptObserver::start(&plan, &mut host, 0, None, 0).is_none());
        assert!(AttemptObserver::start(&plan, &mut host, 3, None, 0).is_none());
        // A plan whose indices name no origin of its configuration.
        let broken = Rc::new(Plan {
            steps: vec![PlannedStep {
                slave: false,
                target: 7,
                authority: None,
            }],
            config: config.clone(),
            metrics: Some(metrics.clone()),
            domain: 0,
            scheme: Scheme::Http,
            request: 1,
            sent_ms: 0,
            observed: true,
        });
        assert!(AttemptObserver::start(&broken, &mut host, 1, None, 0).is_none());
        assert_eq!(
            host.metric(
                "origin_pull_origin_requests_total;domain=www.test.com;origin=127.0.0.3:80"
            )
            .unwrap_or(0),
            0
        );
    }

    #[test]
    fn the_upstream_log_names_what_failed_and_ignores_cancelled_attempts() {
        use crate::engine::classify::flags::*;
        assert_eq!(logged_answer(404, 0), Some(Answer::Status(404)));
        assert_eq!(
            logged_answer(503, UPSTREAM_RETRY_LIMIT_EXCEEDED),
            Some(Answer::Status(503)),
            "no retry left: still the origin's answer"
        );
        assert_eq!(logged_answer(2000, 0), Some(Answer::Reset));
        assert_eq!(
            logged_answer(0, UPSTREAM_CONNECTION_FAILURE),
            Some(Answer::ConnectError)
        );
        assert_eq!(
            logged_answer(0, UPSTREAM_REQUEST_TIMEOUT),
            Some(Answer::Timeout)
        );
        assert_eq!(logged_answer(0, UPSTREAM_REMOTE_RESET), Some(Answer::Reset));
        // Cut by the client (downstream termination, 1 << 14) or no information at all.
        assert_eq!(logged_answer(0, 1 << 14), None);
        assert_eq!(logged_answer(0, 0), None);
    }

    /// A logged chain (same Host on every attempt): master 127.0.0.3, then the slave.
    fn logged_plan(config: &Rc<PluginConfig>, metrics: &Rc<Metrics>) -> Rc<Plan> {
        let plan = plan_of(config, metrics, 1);
        Rc::new(Plan {
            config: plan.config.clone(),
            metrics: plan.metrics.clone(),
            steps: plan.steps.clone(),
            observed: false,
            ..*plan
        })
    }

    #[test]
    fn a_logged_chain_counts_each_attempt_once_and_blocks_a_refusing_master() {
        use crate::engine::classify::flags::*;
        let (config, metrics, mut host) = setup();
        let plan = logged_plan(&config, &metrics);
        let mut progress = ChainProgress::new(&plan);
        assert_eq!(progress.started, 1, "attempt 1 is counted with the pick");
        let mut blocks = BlockTable::default();
        // The upstream log reports attempt 1 refused, then the listener sees the slave's 200.
        progress.logged += 1;
        AttemptObserver::observe_logged(
            &plan,
            &mut progress,
            &mut host,
            &mut blocks,
            1,
            0,
            UPSTREAM_CONNECTION_FAILURE,
        );
        assert!(blocks.is_blocked(&host, "www.test.com", "127.0.0.3:80", host.now_ms()));
        assert_eq!(
            progress.relayed(&plan, 200, 0, false),
            Some((2, 200)),
            "the answer after one logged failure is attempt 2's"
        );
        assert_eq!(
            progress.relayed(&plan, 503, UPSTREAM_CONNECTION_FAILURE, false),
            None
        );
        assert_eq!(progress.relayed(&plan, 502, 0, true), Some((2, 0)));
        // The listener judges a relayed answer below 400 and a route timeout's attempt; a
        // 4xx/5xx is the upstream log's.
        assert_eq!(
            progress.unlogged(&plan, Some((2, 200)), 0),
            Some((2, 200, 0))
        );
        assert_eq!(progress.unlogged(&plan, Some((2, 404)), 0), None);
        assert_eq!(
            progress.unlogged(&plan, None, UPSTREAM_REQUEST_TIMEOUT),
            Some((2, 0, UPSTREAM_REQUEST_TIMEOUT))
        );
        assert_eq!(
            progress.unlogged(&plan, None, UPSTREAM_CONNECTION_FAILURE),
            None
        );
        assert_eq!(
            progress.unlogged(&plan_of(&config, &metrics, 1), Some((1, 200)), 0),
            None,
            "an observed chain's upstream instance judges every attempt"
        );
        for _ in 0..2 {
            // The listener judges the 200; a second report of the same attempt changes nothing.
            AttemptObserver::observe_logged(
                &plan,
                &mut progress,
                &mut host,
                &mut blocks,
                2,
                200,
                0,
            );
        }
        assert_eq!(
            host.metric(
                "origin_pull_origin_requests_total;domain=www.test.com;origin=127.0.0.5:80"
            )
            .unwrap_or(0),
            1,
            "the slave's attempt is counted once"
        );
        assert_eq!(
            host.metric(
                "origin_pull_origin_requests_total;domain=www.test.com;origin=127.0.0.3:80"
            )
            .unwrap_or(0),
            0,
            "attempt 1 is the listener's to count"
        );
        assert_eq!(
            host.metric("origin_pull_origin_failures_total;domain=www.test.com;origin=127.0.0.3:80;kind=connect")
                .unwrap_or(0),
            1
        );
        // Judged once even when the listener and the log both report an attempt.
        let before = progress;
        AttemptObserver::observe_logged(
            &plan,
            &mut progress,
            &mut host,
            &mut blocks,
            1,
            0,
            UPSTREAM_CONNECTION_FAILURE,
        );
        assert_eq!(progress, before);
        assert_eq!(
            host.metric("origin_pull_origin_failures_total;domain=www.test.com;origin=127.0.0.3:80;kind=connect")
                .unwrap_or(0),
            1
        );
    }
}
