//! The upstream instance: one context per attempt of a routed failover.

use super::*;

/// How long attempt 1 reuses the per-try timeout read by an earlier request (ms).
const FIRST_BYTE_REREAD_MS: u64 = 1_000;

/// The upstream instance: one context per attempt of a routed failover (see `chain`).
pub(super) struct OriginPullAttempt {
    pub(super) state: Rc<RootState>,
    pub(super) observer: Option<AttemptObserver>,
    pub(super) attempt: usize,
    /// The request's entry in `CHAINS` (its request id).
    pub(super) link: Option<u64>,
}

impl Context for OriginPullAttempt {
    fn on_done(&mut self) -> bool {
        if let Some(observer) = self.observer.as_mut().filter(|o| o.pending()) {
            // This attempt's own stream info: a transport failure reason when the connection
            // was refused; no local address when it was never established (connect timeout).
            let refused = read_property(&["upstream", "transport_failure_reason"])
                .is_some_and(|reason| !reason.is_empty());
            let connected = read_property(&["upstream", "local_address"])
                .is_some_and(|address| !address.is_empty());
            let mut blocks = self.state.blocks.borrow_mut();
            observer.on_done(&mut EnvoyHost, &mut blocks, refused, connected);
        }
        true
    }
}

impl OriginPullAttempt {
    /// The router's per-try (first-byte) timeout for attempt `attempt` (see `FIRST_BYTE`).
    fn first_byte_ms(&self, attempt: usize, now_ms: u64) -> Option<u64> {
        if attempt == 1 {
            if let Some((value, read_ms)) = FIRST_BYTE.get() {
                if now_ms >= read_ms && now_ms - read_ms < FIRST_BYTE_REREAD_MS {
                    return value;
                }
            }
        }
        let value = read_header_number(MapType::HttpRequestHeaders, EXPECTED_TIMEOUT_HEADER);
        if attempt == 1 {
            FIRST_BYTE.set(Some((value, now_ms)));
        }
        value
    }
}

impl HttpContext for OriginPullAttempt {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if cfg!(feature = "ablate-upstream") {
            return Action::Continue;
        }
        // The plan's id: the only header an attempt reads; the rest is in this VM.
        let Some(id) = read_header_value(MapType::HttpRequestHeaders, PLAN_HEADER)
            .as_deref()
            .and_then(|text| std::str::from_utf8(text).ok())
            .and_then(read_plan_id)
        else {
            return Action::Continue;
        };
        let Some((plan, attempt)) = CHAINS.with(|c| {
            let mut chains = c.borrow_mut();
            let link = chains.get_mut(&id)?;
            link.progress.started += 1;
            link.progress.answered = None;
            Some((link.plan.clone(), link.progress.started))
        }) else {
            return Action::Continue;
        };
        self.link = Some(id);
        self.attempt = attempt;
        // Attempt 1 starts at the listener's clock reading of the same request (no clock read).
        let started_ms = if attempt == 1 {
            plan.sent_ms
        } else {
            EnvoyHost.now_ms()
        };
        let first_byte_ms = self.first_byte_ms(attempt, started_ms);
        let Some(observer) =
            AttemptObserver::start(&plan, &mut EnvoyHost, attempt, first_byte_ms, started_ms)
        else {
            return Action::Continue;
        };
        let start = observer.start_headers();
        if let Some(authority) = start.authority {
            EnvoyHost.set_request_header(":authority", Some(authority));
        }
        // This map is the router's own, reused by later attempts: an attempt only changes what
        // no later attempt reads. Each origin sees its own address in the usual header; the
        // last attempt drops the plan and the other attempts' addresses.
        if let Some(dst) = start.own_address {
            EnvoyHost.set_request_header(crate::engine::exchange::ORIGINAL_DST_HEADER, Some(dst));
        }
        if start.last {
            EnvoyHost.set_request_header(PLAN_HEADER, None);
            for k in 2..=attempt {
                EnvoyHost.set_request_header(crate::engine::chain::dst_header(k), None);
            }
        }
        self.observer = Some(observer);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if cfg!(feature = "ablate-upstream") {
            return Action::Continue;
        }
        // The only hostcall of an answer that is relayed (every 2xx/3xx): its status.
        let status = read_header_number(MapType::HttpResponseHeaders, ":status")
            .and_then(|s| u32::try_from(s).ok())
            .unwrap_or(0);
        // Envoy's codec lets e.g. "HTTP/1.1 2000" through: judged as a broken origin.
        let invalid = !(100..=599).contains(&status);
        // The listener's filter finds the answered attempt here (Envoy's own replies to the
        // client have none).
        if let Some(id) = self.link {
            CHAINS.with(|c| {
                if let Some(link) = c.borrow_mut().get_mut(&id) {
                    link.progress.answered = Some((self.attempt, if invalid { 0 } else { status }));
                }
            });
        }
        let retry = self.observer.as_mut().is_some_and(|observer| {
            let mut blocks = self.state.blocks.borrow_mut();
            observer.on_response(&mut EnvoyHost, &mut blocks, status)
        });
        if retry {
            // The route retries exactly this status (`retriable_status_codes`).
            EnvoyHost.set_response_header(":status", Some(&FAILOVER_STATUS.to_string()));
        } else if invalid || status == FAILOVER_STATUS {
            // Never relayed as such, and an origin cannot ask for a retry itself: a 502, which
            // fails over like any 5xx when the domain says so (then `retry` above).
            EnvoyHost.set_response_header(":status", Some("502"));
        }
        Action::Continue
    }
}
