//! One client request's journey: pick the origin, judge its answer, block it if it failed,
//! retry on another master IP or fail over to the slave with a callout, and finally hand the
//! client one honest answer. Driven by the glue's events; side effects go through [`Host`].

use std::rc::Rc;
use std::time::Duration;

use crate::config::{Domain, OriginSet, PluginConfig, Route, Scheme};
use crate::engine::blocks::{passive_block_line, BlockOutcome, BlockTable};
use crate::engine::chain::{
    attempt_cluster, chain_name, dst_header, plan_id_text, Plan, PlannedStep, MAX_RETRIES_HEADER,
    PLAN_HEADER, RETRY_ON_HEADER,
};
use crate::engine::classify::{
    classify_routed, connection_options, failure_kind, is_hop_by_hop, read_callout, Answer,
};
use crate::engine::copyback::{CopyJob, MirrorMode, OnSourceFailure, SourceFetch};
use crate::engine::metrics::{BlockSource, Metrics, OriginMetrics};
use crate::engine::select;
use crate::engine::verdict::{Failure, Verdict};
use crate::host::{Host, LogLevel};
use crate::s3::bucket::{
    is_client_header_dropped, Bucket, BucketError, BucketEvent, BucketStats, ObjectRequest,
};
use crate::s3::sigv4::EMPTY_PAYLOAD_SHA256;

pub const ORIGINAL_DST_HEADER: &str = "x-envoy-original-dst-host";
pub const DEBUG_ORIGIN_HEADER: &str = "x-origin-pull-origin";
pub const DEBUG_ATTEMPTS_HEADER: &str = "x-origin-pull-attempts";
pub const DEBUG_WORKER_HEADER: &str = "x-origin-pull-worker";
pub const ERROR_HEADER: &str = "x-origin-pull-error";
pub const MIRROR_HEADER: &str = "x-origin-pull-mirror";

pub use crate::types::Role;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Attempt {
    role: Role,
    target: usize,
    /// When it was sent (ms): a strike is excused by an answer to a later request.
    sent_ms: u64,
}

pub struct RequestInfo<'a> {
    pub authority: &'a str,
    pub scheme: &'a str,
    pub method: &'a str,
    /// The client's `:path` (with its query string); only read when the configuration
    /// `uses_buckets`.
    pub path: &'a str,
    pub has_body: bool,
    /// Shown in the debug header, to tell workers apart.
    pub worker: &'a str,
    pub stats: BucketStats,
    /// This VM's stats for the configuration in use (`None`: not counted).
    pub metrics: Option<&'a Rc<Metrics>>,
}

/// Where a mirror back-to-origin stands for this request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MirrorState {
    Idle,
    /// The bucket missed with this status; the source was asked.
    Fetching {
        miss: u32,
        source: String,
    },
    /// The source's answer went to the client.
    Served {
        source: String,
    },
}

/// What the glue does after the routed response's headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseStep {
    /// Let the origin's response through (the glue adds debug headers).
    Continue,
    /// A callout is under way or a local reply was sent.
    Pause,
}

enum Next {
    Accept,
    Dispatched,
    Unreachable,
}

pub struct Exchange {
    config: Rc<PluginConfig>,
    domain: usize,
    scheme: Scheme,
    method: String,
    client_authority: String,
    worker: Option<String>,
    has_body: bool,
    body: Vec<u8>,
    body_complete: bool,
    body_overflow: bool,
    tried: Vec<Attempt>,
    attempts_in_role: u32,
    pending_callout: Option<u32>,
    request_headers: Option<Vec<(String, String)>>,
    refusal_logged: bool,
    path: String,
    stats: BucketStats,
    /// Path and signing headers of the routed request when it goes to a bucket.
    routed_bucket: Option<ObjectRequest>,
    mirror: MirrorState,
    copy_job: Option<CopyJob>,
    metrics: Option<Rc<Metrics>>,
    /// Random id, drawn at the first failure: strikes count distinct requests.
    request_id: Option<u64>,
    /// This request already timed out, was reset or got a counted 5xx on some origin.
    failed_softly: bool,
    /// Planned attempts of a failover carried by Envoy's router (`chain`); empty when the
    /// request is routed to one origin (failovers, if any, by callout).
    chain: Vec<Attempt>,
    /// The last answer judged (to say why no origin's answer can be relayed).
    last_answer: Option<Answer>,
    /// The domain's block key said a block may be active when the request arrived (only then
    /// are the drawn origins' own keys read, also when planning a routed failover).
    blocks_possible: bool,
}

impl Exchange {
    /// Picks the first origin, or answers locally (and returns `None`) for an unknown host.
    pub fn start(
        config: &Rc<PluginConfig>,
        blocks: &mut BlockTable,
        host: &mut impl Host,
        request: &RequestInfo,
    ) -> Option<Exchange> {
        let Some(domain_index) = config.domain_index(request.authority) else {
            let body = format!(
                "origin-pull: no origin is configured for host '{}'\n",
                printable(request.authority)
            );
            host.send_local_reply(
                config.unknown_host_status,
                "origin_pull_unknown_host",
                &[
                    ("content-type", "text/plain"),
                    (ERROR_HEADER, "unknown-host"),
                ],
                body.as_bytes(),
            );
            return None;
        };
        let mut exchange = Exchange {
            config: config.clone(),
            domain: domain_index,
            scheme: Scheme::from_request(request.scheme),
            method: request.method.to_string(),
            client_authority: request.authority.to_string(),
            worker: config.debug_headers.then(|| request.worker.to_string()),
            has_body: request.has_body,
            body: Vec::new(),
            body_complete: !request.has_body,
            body_overflow: false,
            tried: Vec::with_capacity(2),
            attempts_in_role: 1,
            pending_callout: None,
            request_headers: None,
            refusal_logged: false,
            path: request.path.to_string(),
            stats: request.stats,
            routed_bucket: None,
            mirror: MirrorState::Idle,
            copy_job: None,
            metrics: request.metrics.cloned(),
            request_id: None,
            failed_softly: false,
            chain: Vec::new(),
            last_answer: None,
            blocks_possible: false,
        };
        let Some(first) = exchange.first_attempt(blocks, host) else {
            // Unreachable with a validated configuration (some weight is non-zero); never route blind.
            host.send_local_reply(
                503,
                "origin_pull_no_origin",
                &[(ERROR_HEADER, "no-origin")],
                b"origin-pull: no origin could be picked\n",
            );
            return None;
        };
        exchange.tried.push(first);
        if let Some(set) = exchange.set(first.role) {
            if let Some(bucket) = &set.bucket {
                match exchange.object_request(host, bucket) {
                    Ok(request) => exchange.routed_bucket = Some(request),
                    Err(reply) => {
                        reply.send(host, &exchange.stats);
                        return None;
                    }
                }
            }
        }
        exchange.plan_chain(blocks, host);
        if let Some(metrics) = &exchange.metrics {
            metrics.request(host, exchange.domain);
        }
        // A chain's attempts are counted by the upstream instance, one per attempt.
        if exchange.chain.is_empty() {
            if let Some(m) = exchange.origin_metrics(first) {
                m.request(host);
            }
        }
        Some(exchange)
    }

    /// Plans the failover Envoy's router will carry out, when this domain uses it: the slave
    /// after the first master (or a master after a first slave), or, without a slave, other
    /// unblocked master IPs. Every condition then fails over to the next planned origin.
    fn plan_chain(&mut self, blocks: &BlockTable, host: &mut impl Host) {
        let Some(domain) = self.domain() else {
            return;
        };
        // A request body is replayed by callout, within `max_request_body_bytes` and only when
        // complete, exactly as before (the router would replay up to its own buffer limit).
        if !domain.router_failover(self.config.envoy.failover, self.scheme)
            || domain.retry_on.is_none()
            || !domain.failover.method_allowed(&self.method)
            || self.has_body
        {
            return;
        }
        let max = domain.max_chain();
        let has_slave = domain.slave.is_some();
        let first = self.current();
        // The same instant as the first pick (one clock read per request); origins' block keys
        // only when the domain's key said a block may be active (it is raised before them).
        let now = first.sent_ms;
        let respect = self.blocks_possible;
        let next = match (first.role, has_slave) {
            (Role::Master, true) => self
                .choose(Role::Slave, blocks, host, respect, now)
                .or_else(|| self.choose(Role::Slave, blocks, host, false, now))
                .map(|target| Attempt {
                    role: Role::Slave,
                    target,
                    sent_ms: now,
                }),
            // Every master was blocked: a blocked master is a better bet than an error.
            (Role::Slave, _) => self
                .choose(Role::Master, blocks, host, false, now)
                .map(|target| Attempt {
                    role: Role::Master,
                    target,
                    sent_ms: now,
                }),
            (Role::Master, false) => None,
        };
        if let Some(next) = next {
            self.tried.push(next);
        } else if first.role == Role::Master && !has_slave {
            while self.tried.len() < max {
                match self.choose(Role::Master, blocks, host, respect, now) {
                    Some(target) => self.tried.push(Attempt {
                        role: Role::Master,
                        target,
                        sent_ms: now,
                    }),
                    None => break,
                }
            }
        }
        if self.tried.len() > 1 {
            self.chain = self.tried.clone();
            // The upstream instance counts strikes per request: it gets the id in the plan.
            self.request_id = Some(host.random_u64());
        }
        self.tried.truncate(1);
    }

    /// Whether Envoy's router carries this request's failover (see [`Exchange::chain_headers`]).
    pub fn routes_chain(&self) -> bool {
        !self.chain.is_empty()
    }

    /// The plan of this request's routed failover, for the upstream instance of the same worker
    /// (the glue keeps it under [`Plan::request`], the id [`PLAN_HEADER`] carries): each
    /// attempt's origin by index and the `Host` it sets, when it must.
    pub fn chain_plan(&self) -> Option<Plan> {
        let first = self.chain.first()?;
        let router_authority = self.router_authority();
        // The router reuses one header map for every attempt: an attempt's Host stays for the
        // next, so an attempt sets one only when it differs from what the map holds.
        let mut current = router_authority;
        let mut steps = Vec::with_capacity(self.chain.len());
        for attempt in &self.chain {
            let desired = self.desired_authority(*attempt);
            let authority = (desired != current).then(|| desired.to_string());
            current = desired;
            steps.push(PlannedStep {
                slave: attempt.role == Role::Slave,
                target: attempt.target,
                authority,
            });
        }
        Some(Plan {
            config: self.config.clone(),
            metrics: self.metrics.clone(),
            domain: self.domain,
            scheme: self.scheme,
            request: self.request_id?,
            sent_ms: first.sent_ms,
            steps,
        })
    }

    /// The Host attempt `a` sends: its set's `host`, else the client's.
    fn desired_authority(&self, a: Attempt) -> &str {
        self.set(a.role)
            .and_then(|s| s.host.as_deref())
            .unwrap_or(&self.client_authority)
    }

    /// The Host the listener's filter gives a routed failover: the router names the TLS server
    /// once per request, from the Host of the chain's first HTTPS attempt, else attempt 1's.
    fn router_authority(&self) -> &str {
        self.chain
            .iter()
            .find(|a| {
                self.route_of(**a)
                    .and_then(|r| r.scheme)
                    .is_some_and(|s| s == Scheme::Https)
            })
            .or(self.chain.first())
            .map_or(self.client_authority.as_str(), |a| {
                self.desired_authority(*a)
            })
    }

    /// The request headers a routed failover needs, to set (`Some`) or remove (`None`): the
    /// composite cluster, each attempt's `IP:PORT`, Envoy's retry headers, the `Host` the
    /// router takes its TLS server name from, and the plan's id the upstream instance reads.
    pub fn chain_headers(&self) -> Vec<(String, Option<String>)> {
        let Some(domain) = self.domain() else {
            return Vec::new();
        };
        let Some(retry_on) = &domain.retry_on else {
            return Vec::new();
        };
        let mut subs = Vec::with_capacity(self.chain.len());
        let mut headers: Vec<(String, Option<String>)> = Vec::with_capacity(self.chain.len() + 6);
        for (i, attempt) in self.chain.iter().enumerate() {
            let k = i + 1;
            let Some(route) = self.route_of(*attempt) else {
                return Vec::new();
            };
            subs.push(attempt_cluster(route, k));
            headers.push((dst_header(k).to_string(), route.original_dst.clone()));
        }
        headers.push((self.cluster_header().to_string(), Some(chain_name(&subs))));
        let router_authority = self.router_authority();
        if router_authority != self.client_authority {
            headers.push((":authority".into(), Some(router_authority.to_string())));
        }
        headers.push((RETRY_ON_HEADER.into(), Some(retry_on.clone())));
        headers.push((
            MAX_RETRIES_HEADER.into(),
            Some((self.chain.len() - 1).to_string()),
        ));
        headers.push((
            PLAN_HEADER.into(),
            Some(plan_id_text(self.request_id.unwrap_or(0))),
        ));
        headers
    }

    /// The answer of a routed failover arrived: from the origin of attempt `attempt` (what the
    /// upstream instance marked it with), or, `None`, Envoy's own reply when no attempt was
    /// answered. The upstream instance already counted and judged each attempt; this names
    /// who served and says clearly when no origin answered.
    pub fn on_chain_response(
        &mut self,
        host: &mut impl Host,
        status: u32,
        response_flags: u64,
        attempt: Option<usize>,
    ) -> ResponseStep {
        // An origin's answer (marked by the upstream instance) is that origin's status, even
        // when Envoy flags it "retry limit exceeded" (the slave's own 503, say).
        let answer = match attempt {
            Some(_) if (100..=599).contains(&status) => Answer::Status(status),
            // An invalid status (the glue passes 0) is a broken origin, never relayed.
            Some(_) => Answer::ConnectError,
            None => classify_routed(status, response_flags),
        };
        // Envoy's reply after the last failure: every planned attempt was made when the
        // failure is one the domain fails over on.
        let retried = self.domain().is_some_and(|d| match answer {
            // `reset` (retried with connect errors) also covers the first-byte timeout.
            Answer::Timeout => d.failover.on_timeout || d.failover.on_connect_error,
            _ => d.failover.triggers(answer),
        });
        let n = attempt
            .unwrap_or(if retried { self.chain.len() } else { 1 })
            .clamp(1, self.chain.len().max(1));
        self.tried = self.chain.iter().take(n).copied().collect();
        if answer == Answer::NoCluster {
            let cluster = self.chain_headers().into_iter().find_map(|(k, v)| {
                (k == self.config.envoy.cluster_header)
                    .then_some(v)
                    .flatten()
            });
            host.log(
                LogLevel::Error,
                &format!(
                    "origin-pull: Envoy has no cluster named '{}'; render the Envoy configuration with `origin-pull render`",
                    cluster.unwrap_or_default()
                ),
            );
        }
        if answer.is_unreachable() && n > 1 {
            self.reply_unreachable(host);
            return ResponseStep::Pause;
        }
        // An attempt's own answer is relayed by the router (%UPSTREAM_HOST% names its origin).
        self.record_attribution(host, attempt.is_some());
        let served = self.domain().is_some_and(|d| !d.failover.triggers(answer));
        self.count_failover(host, served);
        ResponseStep::Continue
    }

    /// The request to a bucket origin for this client request, signed when private.
    fn object_request(
        &self,
        host: &mut impl Host,
        bucket: &Bucket,
    ) -> Result<ObjectRequest, BucketRefusal> {
        if self.method != "GET" && self.method != "HEAD" {
            return Err(BucketRefusal::Method);
        }
        let key = bucket
            .object_key(&self.path)
            .map_err(BucketRefusal::Bucket)?;
        bucket
            .request(&self.method, &key, EMPTY_PAYLOAD_SHA256, host.now_ms())
            .map_err(BucketRefusal::Bucket)
    }

    /// The bucket's `Host` and the path and headers to set on the routed request, when it goes
    /// to a bucket. The glue also drops the client's `authorization` and `x-amz-*` headers.
    pub fn bucket_request(&self) -> Option<(&str, &ObjectRequest)> {
        let request = self.routed_bucket.as_ref()?;
        let bucket = self.set(self.current().role)?.bucket.as_ref()?;
        Some((bucket.authority.as_str(), request))
    }

    /// An object fetched from the mirror source, to copy into the bucket from the root context.
    pub fn take_copy_job(&mut self) -> Option<CopyJob> {
        self.copy_job.take()
    }

    /// Keeps the client's request headers for a failover replay. Envoy hides them once the
    /// response is under way, so the glue reads them all in the request phase (one hostcall,
    /// which also yields the host, scheme and method) and hands them over here; they are
    /// kept only when this request could ever be failed over.
    pub fn keep_request_headers(&mut self, headers: Vec<(String, String)>) {
        if self.failover_possible() && self.method_allowed() {
            self.request_headers = Some(headers);
        }
    }

    fn domain(&self) -> Option<&Domain> {
        self.config.domains.get(self.domain)
    }

    fn set(&self, role: Role) -> Option<&OriginSet> {
        let domain = self.domain()?;
        match role {
            Role::Master => Some(&domain.master),
            Role::Slave => domain.slave.as_ref(),
        }
    }

    fn first_attempt(&mut self, blocks: &mut BlockTable, host: &mut impl Host) -> Option<Attempt> {
        let now = host.now_ms();
        let domain = self.domain()?;
        // Block state only changes the outcome when there is an alternative to go to, and a
        // domain with `block_seconds: 0` never skips an origin. One 8-byte read tells whether
        // any origin of the domain is blocked; only then are origins' own keys read.
        let health_matters = (domain.master.targets.len() > 1 || domain.slave.is_some())
            && domain.detection.block_ms > 0
            && blocks.domain_has_blocks(host, &domain.name, now);
        self.blocks_possible = health_matters;
        let domain = self.domain()?;
        if let Some(target) = self.choose(Role::Master, blocks, host, health_matters, now) {
            return Some(Attempt {
                role: Role::Master,
                target,
                sent_ms: now,
            });
        }
        // Every master is blocked: straight to the slave when there is one; otherwise a
        // blocked master is a better bet than a certain error.
        if domain.slave.is_some() {
            if let Some(target) = self.choose(Role::Slave, blocks, host, true, now) {
                if host.log_enabled(LogLevel::Debug) {
                    host.log(
                        LogLevel::Debug,
                        &format!(
                            "origin-pull: {}: every master origin is blocked; going to the slave",
                            domain.name
                        ),
                    );
                }
                return Some(Attempt {
                    role: Role::Slave,
                    target,
                    sent_ms: now,
                });
            }
        }
        if host.log_enabled(LogLevel::Debug) {
            host.log(
                LogLevel::Debug,
                &format!(
                    "origin-pull: {}: every origin is blocked; trying a master anyway",
                    domain.name
                ),
            );
        }
        self.choose(Role::Master, blocks, host, false, now)
            .map(|target| Attempt {
                role: Role::Master,
                target,
                sent_ms: now,
            })
    }

    /// Weighted pick in `role`'s set, skipping origins already tried for this request and,
    /// when `respect_blocks`, blocked ones.
    /// Only the origins the pick draws have their block read (one shared-data read each,
    /// remembered for this pick), so the cost does not grow with the number blocked.
    fn choose(
        &self,
        role: Role,
        blocks: &BlockTable,
        host: &mut impl Host,
        respect_blocks: bool,
        now: u64,
    ) -> Option<usize> {
        let set = self.set(role)?;
        let domain = self.domain()?;
        let scheme = self.scheme;
        let tried = &self.tried;
        let respect_blocks = respect_blocks && domain.detection.block_ms > 0;
        let any_excluded = respect_blocks || tried.iter().any(|a| a.role == role);
        // One draw from the host; further draws (only when something is excluded) from a
        // generator seeded by it, so the block reads below can borrow the host.
        let mut state = host.random_u64();
        let mut draws = 0u32;
        let mut random = || {
            draws += 1;
            if draws > 1 {
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
            }
            state.wrapping_mul(if draws > 1 { 0x2545_F491_4F6C_DD1D } else { 1 })
        };
        if !any_excluded {
            return select::pick(set, &mut random, false, &|_| false);
        }
        let host = &*host;
        // 0 = not read yet, 1 = not blocked, 2 = blocked.
        let seen = std::cell::RefCell::new(if respect_blocks {
            vec![0u8; set.targets.len()]
        } else {
            Vec::new()
        });
        let excluded = |i: usize| {
            if tried.iter().any(|a| a.role == role && a.target == i) {
                return true;
            }
            if !respect_blocks {
                return false;
            }
            let mut seen = seen.borrow_mut();
            match seen.get(i).copied() {
                Some(1) | None => false,
                Some(2) => true,
                Some(_) => {
                    let blocked = set.targets.get(i).is_some_and(|t| {
                        blocks.is_blocked(host, &domain.name, &t.route(scheme).label, now)
                    });
                    if let Some(slot) = seen.get_mut(i) {
                        *slot = if blocked { 2 } else { 1 };
                    }
                    blocked
                }
            }
        };
        select::pick(set, &mut random, true, &excluded)
    }

    fn current(&self) -> Attempt {
        self.tried.last().copied().unwrap_or(Attempt {
            role: Role::Master,
            target: 0,
            sent_ms: 0,
        })
    }

    /// This origin's number within the configuration (worker-local evidence is kept by it).
    fn slot(&self, attempt: Attempt) -> u64 {
        slot_of(
            self.domain,
            attempt.target,
            attempt.role == Role::Slave,
            self.scheme == Scheme::Https,
        )
    }

    fn route_of(&self, attempt: Attempt) -> Option<&Route> {
        self.set(attempt.role)?
            .targets
            .get(attempt.target)
            .map(|t| t.route(self.scheme))
    }

    /// Where the routed request goes: Envoy cluster, original destination, Host override.
    pub fn route(&self) -> Option<(&Route, Option<&str>)> {
        let attempt = self.current();
        let host_override = self.set(attempt.role)?.host.as_deref();
        Some((self.route_of(attempt)?, host_override))
    }

    pub fn cluster_header(&self) -> &str {
        &self.config.envoy.cluster_header
    }

    /// Whether the glue should copy request body chunks (so a failover can replay them).
    pub fn wants_request_body(&self) -> bool {
        self.has_body && !self.body_overflow && self.failover_possible() && self.method_allowed()
    }

    pub fn on_request_body(&mut self, chunk: &[u8], end_of_stream: bool) {
        let limit = self
            .domain()
            .map_or(0, |d| d.failover.max_request_body_bytes);
        if self.body.len() as u64 + chunk.len() as u64 > limit {
            self.body_overflow = true;
            self.body = Vec::new();
            return;
        }
        self.body.extend_from_slice(chunk);
        self.body_complete = end_of_stream;
    }

    fn failover_possible(&self) -> bool {
        self.domain()
            .is_some_and(|d| d.slave.is_some() || d.master.targets.len() > 1 || d.mirror.is_some())
    }

    fn method_allowed(&self) -> bool {
        self.domain()
            .is_some_and(|d| d.failover.method_allowed(&self.method))
    }

    /// The routed origin answered (or Envoy answered for it).
    pub fn on_response_headers(
        &mut self,
        host: &mut impl Host,
        blocks: &mut BlockTable,
        status: u32,
        response_flags: u64,
    ) -> ResponseStep {
        let answer = classify_routed(status, response_flags);
        self.note_bucket_answer(host, answer);
        if self.start_mirror(host, answer) {
            return ResponseStep::Pause;
        }
        match self.next_step(host, blocks, answer, false) {
            Next::Accept => {
                // The origin's own answer (no Envoy flag) is relayed: %UPSTREAM_HOST% names it.
                let relayed = response_flags == 0 && matches!(answer, Answer::Status(_));
                self.record_attribution(host, relayed);
                ResponseStep::Continue
            }
            Next::Dispatched => ResponseStep::Pause,
            Next::Unreachable => {
                self.reply_unreachable(host);
                ResponseStep::Pause
            }
        }
    }

    /// A failover callout came back. Ends with a local reply or another callout.
    pub fn on_callout_response(
        &mut self,
        host: &mut impl Host,
        blocks: &mut BlockTable,
        token: u32,
        num_headers: usize,
        body_size: usize,
    ) {
        if self.pending_callout != Some(token) {
            if host.log_enabled(LogLevel::Debug) {
                host.log(
                    LogLevel::Debug,
                    &format!("origin-pull: ignoring stale callout response {token}"),
                );
            }
            return;
        }
        self.pending_callout = None;
        let (answer, headers) = read_callout(host, num_headers, body_size);
        if let MirrorState::Fetching { miss, source } = &self.mirror {
            let (miss, source) = (*miss, source.clone());
            self.on_source_response(host, blocks, answer, &headers, body_size, miss, source);
            return;
        }
        self.note_bucket_answer(host, answer);
        if self.start_mirror(host, answer) {
            return;
        }
        match self.next_step(host, blocks, answer, true) {
            Next::Dispatched => {}
            Next::Unreachable => self.reply_unreachable(host),
            Next::Accept => {
                self.forward_callout_response(host, answer, &headers, body_size);
            }
        }
    }

    /// A private bucket refusing our signature is worth its own counter.
    fn note_bucket_answer(&self, host: &mut impl Host, answer: Answer) {
        let is_bucket = self
            .set(self.current().role)
            .is_some_and(|s| s.bucket.is_some());
        if is_bucket && answer == Answer::Status(403) {
            self.stats.count(host, BucketEvent::Denied);
        }
    }

    /// A bucket master missed: redirect to the mirror source, or ask it. True when the request
    /// is now the mirror's (a local reply was sent or a callout is under way).
    fn start_mirror(&mut self, host: &mut impl Host, answer: Answer) -> bool {
        let Answer::Status(status) = answer else {
            return false;
        };
        if self.mirror != MirrorState::Idle
            || self.current().role != Role::Master
            || !self.domain().is_some_and(|d| d.mirror.is_some())
        {
            return false;
        }
        let config = self.config.clone();
        let Some(domain) = config.domains.get(self.domain) else {
            return false;
        };
        let Some(mirror) = &domain.mirror else {
            return false;
        };
        if !mirror.triggers(status, &self.method, &self.path) {
            return false;
        }
        let source_set = &mirror.source;
        let mut random = || host.random_u64();
        let Some(target) = select::pick(source_set, &mut random, false, &|_| false) else {
            return false;
        };
        let Some(route) = source_set.targets.get(target).map(|t| t.route(self.scheme)) else {
            return false;
        };
        // The normalized key, re-encoded: the same key the bucket missed and a copy is stored
        // under (an unsafe key was refused before the bucket was asked).
        let Some(path) = mirror.source_path(&self.path) else {
            return false;
        };
        let path = path.as_str();
        if mirror.mode == MirrorMode::Redirect {
            let Some(location) = mirror.redirect_location(self.scheme, &self.path) else {
                return false;
            };
            self.stats.count(host, BucketEvent::MirrorRedirect);
            self.record_outcome(host);
            let body = format!("origin-pull: the object is at {location}\n");
            let mut headers = vec![
                ("location", location.as_str()),
                ("content-type", "text/plain"),
                (MIRROR_HEADER, "redirect"),
            ];
            let debug = self.debug_headers();
            headers.extend(debug.iter().map(|(k, v)| (*k, v.as_str())));
            host.send_local_reply(
                302,
                "origin_pull_mirror_redirect",
                &headers,
                body.as_bytes(),
            );
            // Meanwhile the bucket copies the object from the source (root context).
            let key = domain
                .master
                .bucket
                .as_ref()
                .and_then(|b| b.object_key(&self.path).ok());
            let copy = mirror.copy_back && self.method == "GET";
            if copy && !mirror.copies_back(&self.path) {
                self.skip_query_copy(host, &domain.name);
            }
            if let (true, Some(key)) = (copy && mirror.copies_back(&self.path), key) {
                let scheme = route.scheme.unwrap_or(self.scheme).as_str();
                let authority = source_set.host.as_deref().unwrap_or(&self.client_authority);
                let mut headers: Vec<(String, String)> = vec![
                    (":method".into(), "GET".into()),
                    (":path".into(), path.into()),
                    (":authority".into(), authority.into()),
                    (":scheme".into(), scheme.into()),
                ];
                if let Some(dst) = &route.original_dst {
                    headers.push((ORIGINAL_DST_HEADER.into(), dst.clone()));
                }
                self.copy_job = Some(CopyJob {
                    config: config.clone(),
                    domain: self.domain,
                    scheme: self.scheme,
                    key,
                    content_type: None,
                    body: Vec::new(),
                    fetch: Some(SourceFetch {
                        cluster: route.cluster.clone(),
                        headers,
                        label: route.label.clone(),
                    }),
                });
            }
            return true;
        }
        match self.send_callout(host, source_set, route, Some(path)) {
            Ok(token) => {
                self.stats.count(host, BucketEvent::MirrorFetch);
                host.log(
                    LogLevel::Debug,
                    &format!(
                        "origin-pull: {}: bucket answered {status} for {}; fetching it from the mirror source {}",
                        domain.name,
                        printable(&self.path),
                        route.label
                    ),
                );
                self.pending_callout = Some(token);
                self.mirror = MirrorState::Fetching {
                    miss: status,
                    source: route.label.clone(),
                };
                true
            }
            Err(status) => {
                self.stats.count(host, BucketEvent::MirrorSourceFailure);
                host.log(
                    LogLevel::Error,
                    &format!(
                        "origin-pull: {}: could not ask the mirror source {} via cluster '{}': {status}",
                        domain.name, route.label, route.cluster
                    ),
                );
                false
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_source_response(
        &mut self,
        host: &mut impl Host,
        blocks: &mut BlockTable,
        answer: Answer,
        headers: &[(String, String)],
        body_size: usize,
        miss: u32,
        source: String,
    ) {
        let config = self.config.clone();
        let Some(domain) = config.domains.get(self.domain) else {
            return;
        };
        let Some(mirror) = &domain.mirror else {
            return;
        };
        if let Answer::Status(200..=299) = answer {
            self.mirror = MirrorState::Served { source };
            let Some(body) = self.forward_callout_response(host, answer, headers, body_size) else {
                return;
            };
            let copy = mirror.copy_back && answer == Answer::Status(200) && self.method == "GET";
            if !copy {
                return;
            }
            if !mirror.copies_back(&self.path) {
                self.skip_query_copy(host, &domain.name);
                return;
            }
            if body.len() as u64 > mirror.max_copy_bytes {
                self.stats.count(host, BucketEvent::CopyBackSkipped);
                host.log(
                    LogLevel::Info,
                    &format!(
                        "origin-pull: {}: not copying {} back: {} bytes is over mirror.max_copy_bytes ({})",
                        domain.name,
                        printable(&self.path),
                        body.len(),
                        mirror.max_copy_bytes
                    ),
                );
                return;
            }
            let Some(key) = domain
                .master
                .bucket
                .as_ref()
                .and_then(|b| b.object_key(&self.path).ok())
            else {
                return;
            };
            let content_type = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.clone());
            self.copy_job = Some(CopyJob {
                config: config.clone(),
                domain: self.domain,
                scheme: self.scheme,
                key,
                content_type,
                body,
                fetch: None,
            });
            return;
        }
        self.stats.count(host, BucketEvent::MirrorSourceFailure);
        host.log(
            LogLevel::Warn,
            &format!(
                "origin-pull: {}: the bucket answered {miss} for {} and the mirror source {source} failed too ({}); answering per mirror.on_source_failure = {}",
                domain.name,
                printable(&self.path),
                answer.kind(),
                mirror.on_source_failure.as_str()
            ),
        );
        self.mirror = MirrorState::Idle;
        match mirror.on_source_failure {
            OnSourceFailure::Source => {
                self.mirror = MirrorState::Served { source };
                self.forward_callout_response(host, answer, headers, body_size);
            }
            OnSourceFailure::NotFound => self.reply_miss(host, miss),
            OnSourceFailure::Slave => {
                // Mark the mirror as used so the slave's own answer is not mirrored again.
                self.mirror = MirrorState::Served {
                    source: String::new(),
                };
                match self.next_step(host, blocks, Answer::Status(miss), false) {
                    Next::Dispatched => self.mirror = MirrorState::Idle,
                    Next::Unreachable => self.reply_unreachable(host),
                    Next::Accept => self.reply_miss(host, miss),
                }
            }
        }
    }

    /// An object fetched with the client's query string is served, never stored under the
    /// query-less key (issue 13: bucket poisoning).
    fn skip_query_copy(&self, host: &mut impl Host, domain: &str) {
        self.stats.count(host, BucketEvent::CopyBackSkipped);
        host.log(
            LogLevel::Debug,
            &format!(
                "origin-pull: {domain}: not copying {} back: it was fetched with the client's query string",
                printable(&self.path)
            ),
        );
    }

    /// The bucket's miss, told by the filter (the bucket's own body is gone by now).
    fn reply_miss(&mut self, host: &mut impl Host, status: u32) {
        self.mirror = MirrorState::Idle;
        self.record_outcome(host);
        let mut headers: Vec<(&str, String)> = vec![
            ("content-type", "text/plain".into()),
            (ERROR_HEADER, "mirror-source-failed".into()),
        ];
        headers.extend(self.debug_headers());
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        host.send_local_reply(
            status,
            "origin_pull_mirror_source_failed",
            &headers,
            b"origin-pull: the object is neither in the bucket nor at the mirror source\n",
        );
    }

    fn next_step(
        &mut self,
        host: &mut impl Host,
        blocks: &mut BlockTable,
        answer: Answer,
        from_callout: bool,
    ) -> Next {
        self.last_answer = Some(answer);
        if let Some(m) = self.origin_metrics(self.current()) {
            m.failure(host, answer);
        }
        let Some(domain) = self.domain() else {
            return Next::Accept;
        };
        let policy = &domain.failover;
        let detection = domain.detection;
        let triggers = policy.triggers(answer);
        // No origin answered and nothing else will be tried: the documented 502, also when the
        // only origin was asked by the routed request (Envoy's own 503/504 never reaches the
        // client). A missing cluster stays Envoy's answer: a deployment error, logged below.
        let unreachable_end = answer.is_unreachable()
            && (from_callout || self.tried.len() > 1 || answer != Answer::NoCluster);
        let failure = failure_kind(answer, &detection);
        let current = self.current();
        if failure.is_none() && detection.block_ms > 0 && matches!(answer, Answer::Status(_)) {
            // The origin answered: evidence (for this worker) that it is serving.
            let config = Rc::as_ptr(&self.config) as usize;
            blocks.note_answer(config, self.slot(current), current.sent_ms);
        }
        // The common case (a 2xx, or any answer nobody acts on) allocates nothing.
        if !triggers && failure.is_none() && answer != Answer::NoCluster {
            return if unreachable_end {
                Next::Unreachable
            } else {
                Next::Accept
            };
        }
        let domain_name = domain.name.clone();
        let retries = policy.master_retries;
        let label = self
            .route_of(current)
            .map(|r| r.label.clone())
            .unwrap_or_default();

        if let Some(kind) = failure {
            let now = host.now_ms();
            let request = match self.request_id {
                Some(id) => id,
                None => *self.request_id.insert(host.random_u64()),
            };
            let config = Rc::as_ptr(&self.config) as usize;
            let failure = Failure {
                kind,
                at_ms: now,
                started_ms: current.sent_ms,
                request,
                last_answer_ms: blocks.last_answer(config, self.slot(current)),
                failed_elsewhere: self.failed_softly,
            };
            self.failed_softly |= !kind.blocks_at_once();
            let rule = detection.rule();
            let (verdict, outcome) =
                blocks.record_failure(host, &domain_name, &label, &rule, &failure);
            if outcome == BlockOutcome::Blocked {
                let until = blocks.blocked_until(host, &domain_name, &label);
                if let Some(m) = self.origin_metrics(current) {
                    m.blocked(host, BlockSource::Passive, until);
                }
                if let Some(metrics) = &self.metrics {
                    metrics.refresh_masters_available(host, blocks, self.domain);
                }
                host.log(
                    LogLevel::Warn,
                    &passive_block_line(
                        &domain_name,
                        current.role.as_str(),
                        &label,
                        answer.kind(),
                        detection.block_ms,
                        until.unwrap_or_default(),
                        (!kind.blocks_at_once()).then_some(&rule),
                    ),
                );
            } else if host.log_enabled(LogLevel::Debug) {
                let what = match verdict {
                    Verdict::Excused if failure.failed_elsewhere => {
                        "not counted: this request failed on another origin too".to_string()
                    }
                    Verdict::Excused => {
                        "not counted: it answered other requests meanwhile".to_string()
                    }
                    Verdict::Strike { count } => {
                        format!("failure {count} of {} needed to block it", rule.threshold)
                    }
                    Verdict::Disabled | Verdict::Block => "not blocked".to_string(),
                };
                host.log(
                    LogLevel::Debug,
                    &format!(
                        "origin-pull: {domain_name}: {} origin {label} failed ({}); {what}",
                        current.role.as_str(),
                        answer.kind()
                    ),
                );
            }
        }
        if answer == Answer::NoCluster {
            let cluster = self
                .route_of(current)
                .map(|r| r.cluster.clone())
                .unwrap_or_default();
            host.log(
                LogLevel::Error,
                &format!("origin-pull: {domain_name}: Envoy has no cluster named '{cluster}' for origin {label}; add it to the Envoy configuration (`origin-pull check` lists the clusters needed)"),
            );
        }
        // Nothing else to try: relay the answer, or say clearly that no origin was reachable.
        let finish = || {
            if unreachable_end {
                Next::Unreachable
            } else {
                Next::Accept
            }
        };
        if !triggers {
            return finish();
        }
        if let Some(reason) = self.refusal_reason() {
            if !self.refusal_logged {
                self.refusal_logged = true;
                host.log(
                    LogLevel::Info,
                    &format!(
                        "origin-pull: {domain_name}: not failing over {} after {} from {label}: {reason}",
                        self.method,
                        answer.kind()
                    ),
                );
            }
            return finish();
        }
        // A connection failure is first retried on another origin of the same role.
        if answer.is_unreachable() && self.attempts_in_role <= retries {
            let now = host.now_ms();
            if let Some(target) = self.choose(current.role, blocks, host, true, now) {
                if self.dispatch(
                    host,
                    Attempt {
                        role: current.role,
                        target,
                        sent_ms: now,
                    },
                ) {
                    self.attempts_in_role += 1;
                    return Next::Dispatched;
                }
            }
        }
        if current.role == Role::Master && self.set(Role::Slave).is_some() {
            let now = host.now_ms();
            let target = self
                .choose(Role::Slave, blocks, host, true, now)
                .or_else(|| self.choose(Role::Slave, blocks, host, false, now));
            if let Some(target) = target {
                if self.dispatch(
                    host,
                    Attempt {
                        role: Role::Slave,
                        target,
                        sent_ms: now,
                    },
                ) {
                    self.attempts_in_role = 1;
                    return Next::Dispatched;
                }
            }
        }
        // Straight to the slave because every master was blocked, and the slave cannot be
        // reached either: a blocked master is a better bet than a certain error.
        if current.role == Role::Slave
            && answer.is_unreachable()
            && !self.tried.iter().any(|a| a.role == Role::Master)
        {
            let now = host.now_ms();
            if let Some(target) = self.choose(Role::Master, blocks, host, false, now) {
                let attempt = Attempt {
                    role: Role::Master,
                    target,
                    sent_ms: now,
                };
                if self.dispatch(host, attempt) {
                    return Next::Dispatched;
                }
            }
        }
        finish()
    }

    fn refusal_reason(&self) -> Option<String> {
        let domain = self.domain()?;
        if !domain.failover.method_allowed(&self.method) {
            return Some(format!(
                "method {} is not in failover.methods {:?}",
                self.method, domain.failover.methods
            ));
        }
        if self.has_body && self.body_overflow {
            return Some(format!(
                "the request body is larger than failover.max_request_body_bytes ({}) and cannot be replayed",
                domain.failover.max_request_body_bytes
            ));
        }
        if self.has_body && !self.body_complete {
            return Some(
                "the request body had not been fully received, so it cannot be replayed in full"
                    .into(),
            );
        }
        None
    }

    fn dispatch(&mut self, host: &mut impl Host, attempt: Attempt) -> bool {
        let config = self.config.clone();
        let Some(set) = config
            .domains
            .get(self.domain)
            .and_then(|d| match attempt.role {
                Role::Master => Some(&d.master),
                Role::Slave => d.slave.as_ref(),
            })
        else {
            return false;
        };
        let Some(route) = set
            .targets
            .get(attempt.target)
            .map(|t| t.route(self.scheme))
        else {
            return false;
        };
        match self.send_callout(host, set, route, None) {
            Ok(token) => {
                if host.log_enabled(LogLevel::Debug) {
                    host.log(
                        LogLevel::Debug,
                        &format!(
                            "origin-pull: failing over to {} origin {}",
                            attempt.role.as_str(),
                            route.label
                        ),
                    );
                }
                self.pending_callout = Some(token);
                self.tried.push(attempt);
                if let Some(m) = self.origin_metrics(attempt) {
                    m.request(host);
                }
                true
            }
            Err(status) => {
                if status == "unsigned" {
                    return false;
                }
                host.log(
                    LogLevel::Error,
                    &format!(
                        "origin-pull: could not start the failover request to {} origin {} via cluster '{}': {status}",
                        attempt.role.as_str(),
                        route.label,
                        route.cluster
                    ),
                );
                false
            }
        }
    }

    /// Sends a callout to `route` of `set` with the client's request (replayed body included);
    /// `path` replaces the client's path (mirror source). Bucket origins get their own path,
    /// `Host` and signature, and never the client's credentials.
    fn send_callout(
        &self,
        host: &mut impl Host,
        set: &OriginSet,
        route: &Route,
        path: Option<&str>,
    ) -> Result<u32, String> {
        let timeout =
            Duration::from_millis(self.domain().map_or(10_000, |d| d.failover.timeout_ms));
        let bucket_request = match &set.bucket {
            None => None,
            Some(bucket) => match self.object_request(host, bucket) {
                Ok(request) => Some((bucket.authority.as_str(), request)),
                Err(refusal) => {
                    refusal.log(host, &self.stats, &route.label);
                    return Err("unsigned".into());
                }
            },
        };
        let authority = match &bucket_request {
            Some((authority, _)) => authority,
            None => set.host.as_deref().unwrap_or(&self.client_authority),
        };
        let request_headers = self.request_headers.as_deref().unwrap_or_default();
        let cluster_header = self.config.envoy.cluster_header.as_str();
        let scheme = route.scheme.unwrap_or(self.scheme).as_str();
        let replay_body = self.has_body && !self.body_overflow && self.body_complete;
        let mut headers: Vec<(&str, &str)> = Vec::with_capacity(request_headers.len() + 5);
        let replace_path = bucket_request.is_some() || path.is_some();
        let options = connection_options(request_headers);
        for (name, value) in request_headers.iter() {
            let name = name.as_str();
            let hop = is_hop_by_hop(name) || options.iter().any(|o| o == name);
            if name == ":authority"
                || name == ":scheme"
                || name == cluster_header
                || name.starts_with("x-envoy-")
                || (replace_path && name == ":path")
                || (bucket_request.is_some() && is_client_header_dropped(name))
                || (hop && !(replay_body && name == "content-length"))
            {
                continue;
            }
            headers.push((name, value.as_str()));
        }
        headers.push((":authority", authority));
        headers.push((":scheme", scheme));
        if let Some((_, request)) = &bucket_request {
            headers.push((":path", &request.path));
            headers.extend(request.headers.iter().map(|(k, v)| (*k, v.as_str())));
        } else if let Some(path) = path {
            headers.push((":path", path));
        }
        if let Some(dst) = &route.original_dst {
            headers.push((ORIGINAL_DST_HEADER, dst));
        }
        let body = replay_body.then_some(self.body.as_slice());
        host.dispatch(&route.cluster, &headers, body, timeout)
    }

    /// Relays a callout's answer to the client; returns the body when it was sent.
    fn forward_callout_response(
        &mut self,
        host: &mut impl Host,
        answer: Answer,
        headers: &[(String, String)],
        body_size: usize,
    ) -> Option<Vec<u8>> {
        let limit = self
            .domain()
            .map_or(0, |d| d.failover.max_response_body_bytes);
        if body_size as u64 > limit {
            let label = self
                .route_of(self.current())
                .map(|r| r.label.clone())
                .unwrap_or_default();
            host.log(
                LogLevel::Warn,
                &format!("origin-pull: failover response from {label} is {body_size} bytes, over failover.max_response_body_bytes ({limit})"),
            );
            self.record_outcome(host);
            self.count_failover(host, false);
            let body =
                format!("origin-pull: the failover origin's response exceeds {limit} bytes\n");
            host.send_local_reply(
                502,
                "origin_pull_failover_response_too_large",
                &[
                    ("content-type", "text/plain"),
                    (ERROR_HEADER, "failover-response-too-large"),
                ],
                body.as_bytes(),
            );
            return None;
        }
        let body = if body_size > 0 {
            host.callout_response_body(body_size).unwrap_or_default()
        } else {
            Vec::new()
        };
        let status = match answer {
            Answer::Status(status) => status,
            _ => 502,
        };
        let debug = self.debug_headers();
        let options = connection_options(headers);
        let mut reply: Vec<(&str, &str)> = headers
            .iter()
            .filter(|(k, _)| {
                !k.starts_with(':')
                    && !is_hop_by_hop(k)
                    && !options.iter().any(|o| o.eq_ignore_ascii_case(k))
            })
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        reply.extend(debug.iter().map(|(k, v)| (*k, v.as_str())));
        if matches!(self.mirror, MirrorState::Served { .. }) {
            reply.push((MIRROR_HEADER, "source"));
        }
        self.record_outcome(host);
        let served = self.domain().is_some_and(|d| !d.failover.triggers(answer));
        self.count_failover(host, served);
        // Honest in the access log: this status came from a failover origin, not the first.
        let details = match (&self.mirror, self.current().role) {
            (MirrorState::Served { .. }, _) => "origin_pull_mirror_source",
            (_, Role::Master) => "origin_pull_retried_on_another_master",
            (_, Role::Slave) => "origin_pull_failed_over_to_slave",
        };
        host.send_local_reply(status, details, &reply, &body);
        Some(body)
    }

    fn reply_unreachable(&mut self, host: &mut impl Host) {
        if self.last_answer == Some(Answer::NoResponse) {
            self.reply_no_response(host);
            return;
        }
        let tried: Vec<String> = self
            .tried
            .iter()
            .filter_map(|a| {
                self.route_of(*a)
                    .map(|r| format!("{} {}", a.role.as_str(), r.label))
            })
            .collect();
        let domain = self.domain().map(|d| d.name.clone()).unwrap_or_default();
        host.log(
            LogLevel::Warn,
            &format!(
                "origin-pull: {domain}: no origin could be reached (tried {})",
                tried.join(", ")
            ),
        );
        self.record_outcome(host);
        self.count_failover(host, false);
        let body = format!(
            "origin-pull: no origin could be reached (tried {})\n",
            tried.join(", ")
        );
        let mut headers: Vec<(&str, String)> = vec![
            ("content-type", "text/plain".into()),
            (ERROR_HEADER, "origin-unreachable".into()),
        ];
        headers.extend(self.debug_headers());
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        host.send_local_reply(
            502,
            "origin_pull_no_origin_reachable",
            &headers,
            body.as_bytes(),
        );
    }

    /// A failover callout ended without an answer to relay: the origin may well have answered
    /// (e.g. more than Envoy's async response buffer holds), so this is not "unreachable".
    fn reply_no_response(&mut self, host: &mut impl Host) {
        let label = self
            .route_of(self.current())
            .map(|r| r.label.clone())
            .unwrap_or_default();
        let domain = self.domain().map(|d| d.name.clone()).unwrap_or_default();
        host.log(
            LogLevel::Warn,
            &format!(
                "origin-pull: {domain}: the failover request to {label} ended without a response to relay (connection reset, or an answer larger than Envoy's async response buffer)"
            ),
        );
        self.record_outcome(host);
        self.count_failover(host, false);
        let body = format!(
            "origin-pull: the failover origin {label} sent no answer that can be relayed: the connection was reset, or its answer is larger than Envoy's async response buffer (32 MiB by default); envoy.failover \"router\" streams answers of any size\n"
        );
        let mut headers: Vec<(&str, String)> = vec![
            ("content-type", "text/plain".into()),
            (ERROR_HEADER, "failover-no-response".into()),
        ];
        headers.extend(self.debug_headers());
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        host.send_local_reply(
            502,
            "origin_pull_failover_no_response",
            &headers,
            body.as_bytes(),
        );
    }

    /// Response headers naming the origin that served, when `debug_headers` is on.
    pub fn debug_headers(&self) -> Vec<(&'static str, String)> {
        let Some(worker) = &self.worker else {
            return Vec::new();
        };
        let (role, label) = self.served_by();
        vec![
            (DEBUG_ORIGIN_HEADER, format!("{role}={label}")),
            (DEBUG_ATTEMPTS_HEADER, self.tried.len().to_string()),
            (DEBUG_WORKER_HEADER, worker.clone()),
        ]
    }

    /// Filter state for the access log when the filter answers itself (a local reply): who
    /// served, after how many attempts (see [`Exchange::record_attribution`]).
    pub fn record_outcome(&self, host: &mut impl Host) {
        self.record_attribution(host, false);
    }

    /// Filter state for the access log: who served, after how many attempts. Each write is a
    /// hostcall that creates an Envoy filter-state object, so only what the access log cannot
    /// tell by itself is written (its format, `render::envoy::ACCESS_LOG_FORMAT`, falls back
    /// to `%UPSTREAM_HOST%`, `master` and `1`): the origin when `%UPSTREAM_HOST%` does not
    /// name it (`relayed`: Envoy's router relayed this origin's own answer, and its label is
    /// the `IP:PORT` Envoy shows), the role when it is not `master`, the attempts when not 1.
    /// The happy path (the first master answered) writes nothing.
    fn record_attribution(&self, host: &mut impl Host, relayed: bool) {
        let (role, label) = self.served_by();
        let shown_by_envoy = relayed
            && self
                .route_of(self.current())
                .is_some_and(|r| r.original_dst.as_deref() == Some(label));
        if !shown_by_envoy && !label.is_empty() {
            host.set_filter_state("origin_pull.origin", label);
        }
        if role != Role::Master.as_str() {
            host.set_filter_state("origin_pull.role", role);
        }
        if self.tried.len() != 1 {
            host.set_filter_state("origin_pull.attempts", attempts_text(self.tried.len()));
        }
    }

    /// Counts a request that was failed over (retried or sent to the slave), once.
    fn count_failover(&self, host: &mut impl Host, served: bool) {
        if self.tried.len() > 1 {
            if let Some(metrics) = &self.metrics {
                metrics.failover(host, self.domain, served);
            }
        }
    }

    /// Stats of the origin an attempt goes to.
    fn origin_metrics(&self, attempt: Attempt) -> Option<OriginMetrics<'_>> {
        let scheme = self.scheme;
        self.metrics
            .as_deref()?
            .origin(self.domain, attempt.role, attempt.target, scheme)
    }

    /// Role and label of the origin whose answer the client gets: the mirror source once it
    /// served, else the origin asked last.
    fn served_by(&self) -> (&'static str, &str) {
        if let MirrorState::Served { source } = &self.mirror {
            if !source.is_empty() {
                return ("mirror", source);
            }
        }
        let current = self.current();
        let label = self
            .route_of(current)
            .map(|r| r.label.as_str())
            .unwrap_or("");
        (current.role.as_str(), label)
    }

    /// Label and role of the origin asked last (tests and logs).
    pub fn current_origin(&self) -> Option<(Role, &str)> {
        let current = self.current();
        self.route_of(current)
            .map(|r| (current.role, r.label.as_str()))
    }
}

/// Why a request cannot go to a bucket origin.
#[derive(Debug, Clone, Copy)]
enum BucketRefusal {
    /// Only GET and HEAD are sent to a bucket with the edge's credentials.
    Method,
    Bucket(BucketError),
}

impl BucketRefusal {
    fn log(self, host: &mut impl Host, stats: &BucketStats, label: &str) {
        if let BucketRefusal::Bucket(BucketError::NoClock) = self {
            stats.count(host, BucketEvent::SignFailure);
        }
        host.log(
            LogLevel::Warn,
            &format!(
                "origin-pull: not sending the request to bucket {label}: {}",
                self.reason()
            ),
        );
    }

    fn reason(self) -> &'static str {
        match self {
            BucketRefusal::Method => "bucket origins serve GET and HEAD only",
            BucketRefusal::Bucket(e) => e.as_str(),
        }
    }

    /// The local reply when the routed request cannot go to its bucket.
    fn send(self, host: &mut impl Host, stats: &BucketStats) {
        type Reply<'a> = (u32, &'a str, &'a str, Option<(&'a str, &'a str)>);
        let (status, code, details, extra): Reply = match self {
            BucketRefusal::Method => (
                405,
                "bucket-method",
                "origin_pull_bucket_method",
                Some(("allow", "GET, HEAD")),
            ),
            BucketRefusal::Bucket(BucketError::EmptyKey) => {
                (404, "bucket-no-key", "origin_pull_bucket_no_key", None)
            }
            BucketRefusal::Bucket(BucketError::UnsafeKey(_)) => {
                (400, "bucket-bad-key", "origin_pull_bucket_bad_key", None)
            }
            BucketRefusal::Bucket(BucketError::NoClock) => {
                stats.count(host, BucketEvent::SignFailure);
                (
                    502,
                    "bucket-sign-failed",
                    "origin_pull_bucket_sign_failed",
                    None,
                )
            }
        };
        let mut headers = vec![("content-type", "text/plain"), (ERROR_HEADER, code)];
        headers.extend(extra);
        let body = format!("origin-pull: {}\n", self.reason());
        host.send_local_reply(status, details, &headers, body.as_bytes());
    }
}

/// The evidence slot of an origin of a configuration (see `health::BlockTable::note_answer`):
/// domain, target, role and scheme.
pub fn slot_of(domain: usize, target: usize, slave: bool, https: bool) -> u64 {
    ((domain as u64) << 32) | ((target as u64) << 2) | (u64::from(slave) << 1) | u64::from(https)
}

/// Attempt counts as text without formatting (failovers are bounded far below 10).
fn attempts_text(n: usize) -> &'static str {
    const TEXT: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    TEXT.get(n).copied().unwrap_or("10+")
}

/// Host values go into logs and replies: keep them short and free of control characters.
fn printable(text: &str) -> String {
    text.chars()
        .take(128)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests;
