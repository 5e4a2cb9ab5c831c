//! The failover Envoy's router carries (`envoy.failover: router`): the plan of attempts, the
//! request headers that carry it, and the answer the router relays.

use std::borrow::Cow;

use super::*;

/// A request header a routed failover sets (`Some`) or removes (`None`).
pub type ChainHeader<'a> = (&'a str, Option<Cow<'a, str>>);

impl Exchange {
    /// Plans the failover Envoy's router will carry out, when this domain uses it: the slave
    /// after the first master (or a master after a first slave), or, without a slave, other
    /// unblocked master IPs. Every condition then fails over to the next planned origin.
    pub(super) fn plan_chain(&mut self, blocks: &BlockTable, host: &mut impl Host) {
        let Some(domain) = self.domain() else {
            return;
        };
        // A request body is replayed by callout, within `max_request_body_bytes` and only when
        // complete, exactly as before (the router would replay up to its own buffer limit).
        if !domain.router_failover(self.config.envoy.failover, self.scheme)
            || domain.retry_on.is_none()
            || !domain.failover.method_allowed(&self.method)
            || self.body.exists()
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
            let id = host.random_u64();
            self.request_id = Some(id);
            self.plan_id = Some(PlanIdText::new(id));
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
            observed: self.domain()?.attempts_set_host(),
        })
    }

    /// The Host attempt `a` sends: its set's `host`, else the client's.
    pub(super) fn desired_authority(&self, a: Attempt) -> &str {
        self.set(a.role)
            .and_then(|s| s.host.as_deref())
            .unwrap_or(&self.client_authority)
    }

    /// The Host the listener's filter gives a routed failover: the router names the TLS server
    /// once per request, from the Host of the chain's first HTTPS attempt, else attempt 1's.
    pub(super) fn router_authority(&self) -> &str {
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
    /// composite cluster (whose name also selects the route's retry policy), each attempt's
    /// `IP:PORT`, Envoy's per-request retry headers unless that route has the whole policy, the
    /// `Host` the router
    /// takes its TLS server name from, and the plan's id the attempts' observer reads.
    pub fn chain_headers(&self) -> Vec<ChainHeader<'_>> {
        let Some(domain) = self.domain() else {
            return Vec::new();
        };
        let Some(retry_on) = &domain.retry_on else {
            return Vec::new();
        };
        let prefix = domain.chain_prefix();
        // Built without `format!` or a list of sub-cluster names: this runs on every request.
        let mut cluster = String::with_capacity(96);
        cluster.push_str(prefix);
        let mut headers: Vec<ChainHeader<'_>> = Vec::with_capacity(self.chain.len() + 6);
        for (i, attempt) in self.chain.iter().enumerate() {
            let k = i + 1;
            let Some(route) = self.route_of(*attempt) else {
                return Vec::new();
            };
            push_attempt_cluster(&mut cluster, route, k);
            headers.push((
                dst_header(k),
                route.original_dst.as_deref().map(Cow::Borrowed),
            ));
        }
        headers.push((self.cluster_header(), Some(Cow::Owned(cluster))));
        let router_authority = self.router_authority();
        if router_authority != self.client_authority {
            headers.push((":authority", Some(Cow::Borrowed(router_authority))));
        }
        // The usual rules: the route the cluster's name selects carries the whole policy.
        if prefix != CHAIN_PREFIX {
            headers.push((RETRY_ON_HEADER, Some(Cow::Borrowed(*retry_on))));
            headers.push((
                MAX_RETRIES_HEADER,
                Some(Cow::Owned((self.chain.len() - 1).to_string())),
            ));
            if prefix == CHAIN_PREFIX_RULES {
                // The statuses themselves: no upstream instance marks the answers.
                if let Some(codes) = &domain.retriable_codes {
                    headers.push((RETRIABLE_CODES_HEADER, Some(Cow::Borrowed(codes.as_str()))));
                }
            }
        }
        headers.push((
            PLAN_HEADER,
            Some(Cow::Borrowed(
                self.plan_id.as_ref().map_or("0", PlanIdText::as_str),
            )),
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
        // Refilled in place (its capacity holds a usual chain: no allocation).
        self.tried.clear();
        self.tried.extend(self.chain.iter().take(n).copied());
        if answer == Answer::NoCluster {
            let cluster = self.chain_headers().into_iter().find_map(|(k, v)| {
                (k == self.config.envoy.cluster_header)
                    .then(|| v.map(Cow::into_owned))
                    .flatten()
            });
            log::error!("Envoy has no cluster named '{}'; render the Envoy configuration with `origin-pull render`", cluster.unwrap_or_default());
        }
        if answer.is_unreachable() && n > 1 {
            self.reply_unreachable(host);
            return ResponseStep::Pause;
        }
        self.record_attribution(host);
        let served = self.domain().is_some_and(|d| !d.failover.triggers(answer));
        self.count_failover(host, served);
        ResponseStep::Continue
    }
}
