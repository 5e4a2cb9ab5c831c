//! Failover by callout: the request body kept for a replay, the judgement of each answer and
//! the next attempt.

use super::*;

impl Exchange {
    /// Keeps the client's request headers for a failover replay. Envoy hides them once the
    /// response is under way, so the glue reads them all in the request phase (one hostcall,
    /// which also yields the host, scheme and method) and hands them over here; they are
    /// copied only when a callout could ever replay them (a failover Envoy's router carries
    /// replays the request itself): one buffer, decoded only when a callout is made.
    pub fn keep_request_headers(&mut self, headers: &HeaderMap) {
        if !self.routes_chain() && self.failover_possible() && self.method_allowed() {
            self.request_headers = Some(headers.clone());
        }
    }

    /// Whether the glue should copy request body chunks (so a failover can replay them).
    pub fn wants_request_body(&self) -> bool {
        matches!(self.body, Body::Receiving(_) | Body::Complete(_))
            && self.failover_possible()
            && self.method_allowed()
    }

    pub fn on_request_body(&mut self, chunk: &[u8], end_of_stream: bool) {
        let limit = self
            .domain()
            .map_or(0, |d| d.failover.max_request_body_bytes);
        let (Body::Receiving(mut body) | Body::Complete(mut body)) =
            std::mem::replace(&mut self.body, Body::Overflow)
        else {
            return; // no body, or already over the limit (it stays so)
        };
        if body.len() as u64 + chunk.len() as u64 > limit {
            return;
        }
        body.extend_from_slice(chunk);
        self.body = if end_of_stream {
            Body::Complete(body)
        } else {
            Body::Receiving(body)
        };
    }

    pub(super) fn failover_possible(&self) -> bool {
        self.domain()
            .is_some_and(|d| d.slave.is_some() || d.master.targets.len() > 1 || d.mirror.is_some())
    }

    pub(super) fn method_allowed(&self) -> bool {
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
                self.record_attribution(host);
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
        if self.state.awaited_callout() != Some(token) {
            log::debug!("ignoring stale callout response {token}");
            return;
        }
        let state = std::mem::replace(&mut self.state, State::Origin);
        let (answer, headers) = read_callout(host, num_headers, body_size);
        if let State::FetchingSource { miss, source, .. } = state {
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

    pub(super) fn next_step(
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
                log::warn!(
                    target: RAW_LOG_TARGET,
                    "{}",
                    passive_block_line(
                        &domain_name,
                        current.role.as_str(),
                        &label,
                        answer.kind(),
                        detection.block_ms,
                        until.unwrap_or_default(),
                        (!kind.blocks_at_once()).then_some(&rule),
                    )
                );
            } else if log::log_enabled!(log::Level::Debug) {
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
                log::debug!(
                    "{domain_name}: {} origin {label} failed ({}); {what}",
                    current.role.as_str(),
                    answer.kind()
                );
            }
        }
        if answer == Answer::NoCluster {
            let cluster = self
                .route_of(current)
                .map(|r| r.cluster.clone())
                .unwrap_or_default();
            log::error!("{domain_name}: Envoy has no cluster named '{cluster}' for origin {label}; add it to the Envoy configuration (`origin-pull check` lists the clusters needed)");
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
                log::info!(
                    "{domain_name}: not failing over {} after {} from {label}: {reason}",
                    self.method,
                    answer.kind()
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

    pub(super) fn refusal_reason(&self) -> Option<String> {
        let domain = self.domain()?;
        if !domain.failover.method_allowed(&self.method) {
            return Some(format!(
                "method {} is not in failover.methods {:?}",
                self.method, domain.failover.methods
            ));
        }
        if self.body == Body::Overflow {
            return Some(format!(
                "the request body is larger than failover.max_request_body_bytes ({}) and cannot be replayed",
                domain.failover.max_request_body_bytes
            ));
        }
        if matches!(self.body, Body::Receiving(_)) {
            return Some(
                "the request body had not been fully received, so it cannot be replayed in full"
                    .into(),
            );
        }
        None
    }

    pub(super) fn dispatch(&mut self, host: &mut impl Host, attempt: Attempt) -> bool {
        let config = self.config.clone();
        let Some(set) = config
            .domains
            .get(self.domain)
            .and_then(|d| role_set(d, attempt.role))
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
                log::debug!(
                    "failing over to {} origin {}",
                    attempt.role.as_str(),
                    route.label
                );
                self.state = State::FailingOver { token };
                self.tried.push(attempt);
                if let Some(m) = self.origin_metrics(attempt) {
                    m.request(host);
                }
                true
            }
            // Logged and counted where the bucket refused.
            Err(CalloutError::BucketRefused) => false,
            Err(CalloutError::Host(status)) => {
                log::error!("could not start the failover request to {} origin {} via cluster '{}': {status}", attempt.role.as_str(), route.label, route.cluster);
                false
            }
        }
    }

    /// Sends a callout to `route` of `set` with the client's request (replayed body included);
    /// `path` replaces the client's path (mirror source). Bucket origins get their own path,
    /// `Host` and signature, and never the client's credentials.
    pub(super) fn send_callout(
        &self,
        host: &mut impl Host,
        set: &OriginSet,
        route: &Route,
        path: Option<&str>,
    ) -> Result<u32, CalloutError> {
        let timeout = Duration::from_millis(
            self.domain()
                .map_or(DEFAULT_CALLOUT_TIMEOUT_MS, |d| d.failover.timeout_ms),
        );
        let bucket_request = match &set.bucket {
            None => None,
            Some(bucket) => match self.object_request(host, bucket) {
                Ok(request) => Some((bucket.authority.as_str(), request)),
                Err(refusal) => {
                    refusal.log(host, &self.stats, &route.label);
                    return Err(CalloutError::BucketRefused);
                }
            },
        };
        let authority = match &bucket_request {
            Some((authority, _)) => authority,
            None => set.host.as_deref().unwrap_or(&self.client_authority),
        };
        // Decoded here, not per request: only a failover replays them.
        let request_headers = self
            .request_headers
            .as_ref()
            .map(HeaderMap::to_pairs)
            .unwrap_or_default();
        let cluster_header = self.config.envoy.cluster_header.as_str();
        let scheme = route.scheme.unwrap_or(self.scheme).as_str();
        let replay_body = matches!(self.body, Body::Complete(_));
        let mut headers: Vec<(&str, &str)> = Vec::with_capacity(request_headers.len() + 5);
        let replace_path = bucket_request.is_some() || path.is_some();
        let options = connection_options(&request_headers);
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
        let body = match &self.body {
            Body::Complete(body) => Some(body.as_slice()),
            _ => None,
        };
        host.dispatch(&route.cluster, &headers, body, timeout)
            .map_err(CalloutError::Host)
    }
}

/// Why a failover callout was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CalloutError {
    /// The request cannot go to a bucket origin (logged and counted by [`BucketRefusal::log`]).
    BucketRefused,
    /// Envoy refused the callout (its status).
    Host(String),
}

impl std::fmt::Display for CalloutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CalloutError::BucketRefused => f.write_str("the bucket request was refused"),
            CalloutError::Host(status) => f.write_str(status),
        }
    }
}
