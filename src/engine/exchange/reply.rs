//! What the client gets when the filter answers itself, the debug headers, and the access
//! log's attribution and failover counts.

use super::*;

impl Exchange {
    /// Relays a callout's answer to the client; returns the body when it was sent.
    pub(super) fn forward_callout_response(
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
            log::warn!("failover response from {label} is {body_size} bytes, over failover.max_response_body_bytes ({limit})");
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
        if matches!(self.state, State::SourceServed { .. }) {
            reply.push((MIRROR_HEADER, "source"));
        }
        self.record_outcome(host);
        let served = self.domain().is_some_and(|d| !d.failover.triggers(answer));
        self.count_failover(host, served);
        // Honest in the access log: this status came from a failover origin, not the first.
        let details = match (&self.state, self.current().role) {
            (State::SourceServed { .. }, _) => "origin_pull_mirror_source",
            (_, Role::Master) => "origin_pull_retried_on_another_master",
            (_, Role::Slave) => "origin_pull_failed_over_to_slave",
        };
        host.send_local_reply(status, details, &reply, &body);
        Some(body)
    }

    pub(super) fn reply_unreachable(&mut self, host: &mut impl Host) {
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
        log::warn!(
            "{domain}: no origin could be reached (tried {})",
            tried.join(", ")
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
    pub(super) fn reply_no_response(&mut self, host: &mut impl Host) {
        let label = self
            .route_of(self.current())
            .map(|r| r.label.clone())
            .unwrap_or_default();
        let domain = self.domain().map(|d| d.name.clone()).unwrap_or_default();
        log::warn!("{domain}: the failover request to {label} ended without a response to relay (connection reset, or an answer larger than Envoy's async response buffer)");
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
        self.record_attribution(host);
    }

    /// Filter state for the access log: who served, as what, after how many attempts — ONE
    /// value, the `origin=… role=… attempts=… failed_over=…` part of the line, which
    /// `render::envoy::ACCESS_LOG_FORMAT` prints with one `%FILTER_STATE%`. One hostcall per
    /// request: in Envoy that costs less than the four `%CEL(…)%` fields that filled in the
    /// happy path from `%UPSTREAM_HOST%` without any write (+2 µs of CPU per request with the
    /// rendered access log on; `bench/results/access-log.md`).
    pub(super) fn record_attribution(&self, host: &mut impl Host) {
        let (role, label) = self.served_by();
        if label.is_empty() {
            host.set_filter_state(ATTRIBUTION_KEY, NO_ORIGIN_ATTRIBUTION);
            return;
        }
        // Built with push_str, not format!: this runs on every request.
        let attempts = self.tried.len();
        let mut value = String::with_capacity(label.len() + 56);
        for part in ["origin=", label, " role=", role, " attempts="] {
            value.push_str(part);
        }
        match attempts {
            0..=9 => value.push(char::from(b'0' + attempts as u8)),
            _ => value.push_str(&attempts.to_string()),
        }
        value.push_str(if attempts > 1 {
            " failed_over=true"
        } else {
            " failed_over=false"
        });
        host.set_filter_state(ATTRIBUTION_KEY, &value);
    }

    /// Counts a request that was failed over (retried or sent to the slave), once.
    pub(super) fn count_failover(&self, host: &mut impl Host, served: bool) {
        if self.tried.len() > 1 {
            if let Some(metrics) = &self.metrics {
                metrics.failover(host, self.domain, served);
            }
        }
    }

    /// Stats of the origin an attempt goes to.
    pub(super) fn origin_metrics(&self, attempt: Attempt) -> Option<OriginMetrics<'_>> {
        let scheme = self.scheme;
        self.metrics
            .as_deref()?
            .origin(self.domain, attempt.role, attempt.target, scheme)
    }

    /// Role and label of the origin whose answer the client gets: the mirror source once it
    /// served, else the origin asked last.
    pub(super) fn served_by(&self) -> (&'static str, &str) {
        if let State::SourceServed { source } = &self.state {
            return ("mirror", source);
        }
        let current = self.current();
        let label = self.route_of(current).map(|r| &*r.label).unwrap_or("");
        (current.role.as_str(), label)
    }
}
