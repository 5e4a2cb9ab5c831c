//! One client request's journey: pick the origin, judge its answer, block it if it failed,
//! retry on another master IP or fail over to the slave with a callout, and finally hand the
//! client one honest answer. Driven by the glue's events; side effects go through [`Host`].

use std::rc::Rc;
use std::time::Duration;

use crate::config::{Domain, OriginSet, PluginConfig, Route, Scheme};
use crate::failover::{blocks_origin, classify_callout, classify_routed, is_hop_by_hop, Answer};
use crate::health::{BlockOutcome, BlockTable};
use crate::host::{Host, LogLevel};
use crate::select;

pub const ORIGINAL_DST_HEADER: &str = "x-envoy-original-dst-host";
pub const DEBUG_ORIGIN_HEADER: &str = "x-origin-pull-origin";
pub const DEBUG_ATTEMPTS_HEADER: &str = "x-origin-pull-attempts";
pub const DEBUG_WORKER_HEADER: &str = "x-origin-pull-worker";
pub const ERROR_HEADER: &str = "x-origin-pull-error";
/// Envoy's local failure replies are short; only bodies this small are peeked at.
const PEEK_LIMIT: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Master,
    Slave,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Slave => "slave",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Attempt {
    role: Role,
    target: usize,
}

pub struct RequestInfo<'a> {
    pub authority: &'a str,
    pub scheme: &'a str,
    pub method: &'a str,
    pub has_body: bool,
    /// Shown in the debug header, to tell workers apart.
    pub worker: &'a str,
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
        };
        // Envoy no longer exposes the request headers once the response is under way, so
        // keep a copy now, but only when this request could ever be failed over.
        if exchange.failover_possible() && exchange.method_allowed() {
            exchange.request_headers = Some(host.request_headers());
        }
        let Some(first) = exchange.first_attempt(blocks, host) else {
            // Unreachable with a validated configuration (some weight is non-zero); never route blind.
            host.send_local_reply(
                503,
                &[(ERROR_HEADER, "no-origin")],
                b"origin-pull: no origin could be picked\n",
            );
            return None;
        };
        exchange.tried.push(first);
        Some(exchange)
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

    fn first_attempt(&self, blocks: &mut BlockTable, host: &mut impl Host) -> Option<Attempt> {
        let domain = self.domain()?;
        // Block state only changes the outcome when there is an alternative to go to.
        let health_matters = domain.master.targets.len() > 1 || domain.slave.is_some();
        if health_matters {
            blocks.refresh(host);
        }
        if let Some(target) = self.choose(Role::Master, blocks, host, health_matters) {
            return Some(Attempt {
                role: Role::Master,
                target,
            });
        }
        // Every master is blocked: straight to the slave when there is one; otherwise a
        // blocked master is a better bet than a certain error.
        if domain.slave.is_some() {
            if let Some(target) = self.choose(Role::Slave, blocks, host, true) {
                host.log(
                    LogLevel::Debug,
                    &format!(
                        "origin-pull: {}: every master origin is blocked; going to the slave",
                        domain.name
                    ),
                );
                return Some(Attempt {
                    role: Role::Slave,
                    target,
                });
            }
        }
        host.log(
            LogLevel::Debug,
            &format!(
                "origin-pull: {}: every origin is blocked; trying a master anyway",
                domain.name
            ),
        );
        self.choose(Role::Master, blocks, host, false)
            .map(|target| Attempt {
                role: Role::Master,
                target,
            })
    }

    /// Weighted pick in `role`'s set, skipping origins already tried for this request and,
    /// when `respect_blocks`, blocked ones.
    fn choose(
        &self,
        role: Role,
        blocks: &BlockTable,
        host: &mut impl Host,
        respect_blocks: bool,
    ) -> Option<usize> {
        let set = self.set(role)?;
        let now = host.now_ms();
        let scheme = self.scheme;
        let tried = &self.tried;
        let respect_blocks = respect_blocks && !blocks.is_empty();
        let excluded = |i: usize| {
            tried.iter().any(|a| a.role == role && a.target == i)
                || (respect_blocks
                    && set
                        .targets
                        .get(i)
                        .is_some_and(|t| blocks.is_blocked(&t.route(scheme).label, now)))
        };
        let any_excluded = respect_blocks || tried.iter().any(|a| a.role == role);
        let mut random = || host.random_u64();
        select::pick(set, &mut random, any_excluded, &excluded)
    }

    fn current(&self) -> Attempt {
        self.tried.last().copied().unwrap_or(Attempt {
            role: Role::Master,
            target: 0,
        })
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
            .is_some_and(|d| d.slave.is_some() || d.master.targets.len() > 1)
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
        match self.next_step(host, blocks, answer, false) {
            Next::Accept => {
                self.record_outcome(host);
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
            host.log(
                LogLevel::Debug,
                &format!("origin-pull: ignoring stale callout response {token}"),
            );
            return;
        }
        self.pending_callout = None;
        let (answer, headers) = if num_headers == 0 {
            // Reset, or larger than Envoy's async response buffer (32 MiB by default).
            (Answer::NoResponse, Vec::new())
        } else {
            let headers = host.callout_response_headers();
            let status = headers
                .iter()
                .find(|(k, _)| k == ":status")
                .and_then(|(_, v)| v.parse::<u32>().ok())
                .unwrap_or(502);
            let peek = if matches!(status, 502..=504) && body_size <= PEEK_LIMIT {
                host.callout_response_body(body_size).unwrap_or_default()
            } else {
                Vec::new()
            };
            (classify_callout(status, &headers, &peek), headers)
        };
        match self.next_step(host, blocks, answer, true) {
            Next::Dispatched => {}
            Next::Unreachable => self.reply_unreachable(host),
            Next::Accept => self.forward_callout_response(host, answer, &headers, body_size),
        }
    }

    fn next_step(
        &mut self,
        host: &mut impl Host,
        blocks: &mut BlockTable,
        answer: Answer,
        from_callout: bool,
    ) -> Next {
        let Some(domain) = self.domain() else {
            return Next::Accept;
        };
        let policy = &domain.failover;
        let detection = domain.detection;
        let triggers = policy.triggers(answer);
        let unreachable_end = answer.is_unreachable() && (from_callout || self.tried.len() > 1);
        // The common case (a 2xx, or any answer nobody acts on) allocates nothing.
        if !triggers && !blocks_origin(answer, &detection) && answer != Answer::NoCluster {
            return if unreachable_end {
                Next::Unreachable
            } else {
                Next::Accept
            };
        }
        let domain_name = domain.name.clone();
        let retries = policy.master_retries;
        let current = self.current();
        let label = self
            .route_of(current)
            .map(|r| r.label.clone())
            .unwrap_or_default();

        if blocks_origin(answer, &detection) {
            if let BlockOutcome::Blocked = blocks.block(host, &label, detection.block_ms) {
                host.log(
                    LogLevel::Warn,
                    &format!(
                        "origin-pull: {domain_name}: {} origin {label} failed ({}); blocked for {} s",
                        current.role.as_str(),
                        answer.kind(),
                        detection.block_ms / 1000
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
            if let Some(target) = self.choose(current.role, blocks, host, true) {
                if self.dispatch(
                    host,
                    Attempt {
                        role: current.role,
                        target,
                    },
                ) {
                    self.attempts_in_role += 1;
                    return Next::Dispatched;
                }
            }
        }
        if current.role == Role::Master && self.set(Role::Slave).is_some() {
            let target = self
                .choose(Role::Slave, blocks, host, true)
                .or_else(|| self.choose(Role::Slave, blocks, host, false));
            if let Some(target) = target {
                if self.dispatch(
                    host,
                    Attempt {
                        role: Role::Slave,
                        target,
                    },
                ) {
                    self.attempts_in_role = 1;
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
        let Some(set) = self.set(attempt.role) else {
            return false;
        };
        let Some(route) = self.route_of(attempt) else {
            return false;
        };
        let timeout =
            Duration::from_millis(self.domain().map_or(10_000, |d| d.failover.timeout_ms));
        let authority = set.host.as_deref().unwrap_or(&self.client_authority);
        let request_headers = self.request_headers.as_deref().unwrap_or_default();
        let cluster_header = self.config.envoy.cluster_header.as_str();
        let scheme = route.scheme.unwrap_or(self.scheme).as_str();
        let replay_body = self.has_body && !self.body_overflow && self.body_complete;
        let mut headers: Vec<(&str, &str)> = Vec::with_capacity(request_headers.len() + 2);
        for (name, value) in request_headers.iter() {
            let name = name.as_str();
            if name == ":authority"
                || name == ":scheme"
                || name == cluster_header
                || name.starts_with("x-envoy-")
                || (is_hop_by_hop(name) && !(replay_body && name == "content-length"))
            {
                continue;
            }
            headers.push((name, value.as_str()));
        }
        headers.push((":authority", authority));
        headers.push((":scheme", scheme));
        if let Some(dst) = &route.original_dst {
            headers.push((ORIGINAL_DST_HEADER, dst));
        }
        let body = replay_body.then_some(self.body.as_slice());
        match host.dispatch(&route.cluster, &headers, body, timeout) {
            Ok(token) => {
                host.log(
                    LogLevel::Debug,
                    &format!(
                        "origin-pull: failing over to {} origin {}",
                        attempt.role.as_str(),
                        route.label
                    ),
                );
                self.pending_callout = Some(token);
                self.tried.push(attempt);
                true
            }
            Err(status) => {
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

    fn forward_callout_response(
        &mut self,
        host: &mut impl Host,
        answer: Answer,
        headers: &[(String, String)],
        body_size: usize,
    ) {
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
            let body =
                format!("origin-pull: the failover origin's response exceeds {limit} bytes\n");
            host.send_local_reply(
                502,
                &[
                    ("content-type", "text/plain"),
                    (ERROR_HEADER, "failover-response-too-large"),
                ],
                body.as_bytes(),
            );
            return;
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
        let mut reply: Vec<(&str, &str)> = headers
            .iter()
            .filter(|(k, _)| !k.starts_with(':') && !is_hop_by_hop(k))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        reply.extend(debug.iter().map(|(k, v)| (*k, v.as_str())));
        self.record_outcome(host);
        host.send_local_reply(status, &reply, &body);
    }

    fn reply_unreachable(&mut self, host: &mut impl Host) {
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
        host.send_local_reply(502, &headers, body.as_bytes());
    }

    /// Response headers naming the origin that served, when `debug_headers` is on.
    pub fn debug_headers(&self) -> Vec<(&'static str, String)> {
        let Some(worker) = &self.worker else {
            return Vec::new();
        };
        let current = self.current();
        let label = self
            .route_of(current)
            .map(|r| r.label.as_str())
            .unwrap_or("");
        vec![
            (
                DEBUG_ORIGIN_HEADER,
                format!("{}={label}", current.role.as_str()),
            ),
            (DEBUG_ATTEMPTS_HEADER, self.tried.len().to_string()),
            (DEBUG_WORKER_HEADER, worker.clone()),
        ]
    }

    /// Filter state for the access log: who served, after how many attempts.
    pub fn record_outcome(&self, host: &mut impl Host) {
        let current = self.current();
        if let Some(route) = self.route_of(current) {
            host.set_filter_state("origin_pull.origin", &route.label);
        }
        host.set_filter_state("origin_pull.role", current.role.as_str());
        host.set_filter_state("origin_pull.attempts", &self.tried.len().to_string());
    }

    /// Label and role of the origin asked last (tests and logs).
    pub fn current_origin(&self) -> Option<(Role, &str)> {
        let current = self.current();
        self.route_of(current)
            .map(|r| (current.role, r.label.as_str()))
    }
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
