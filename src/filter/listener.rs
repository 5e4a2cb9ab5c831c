//! The listener's stream: the client's request and response, one [`Exchange`] each.

use super::*;

pub(super) struct OriginPullStream {
    pub(super) state: Rc<RootState>,
    pub(super) exchange: Option<Exchange>,
    /// The request id of this stream's routed failover, registered in `CHAINS`.
    pub(super) chain_id: Option<u64>,
}

impl Drop for OriginPullStream {
    fn drop(&mut self) {
        if let Some(id) = self.chain_id.take() {
            CHAINS.with(|c| c.borrow_mut().remove(&id));
        }
    }
}

impl Context for OriginPullStream {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if let Some(exchange) = self.exchange.as_mut() {
            {
                let mut blocks = self.state.blocks.borrow_mut();
                exchange.on_callout_response(
                    &mut EnvoyHost,
                    &mut blocks,
                    token_id,
                    num_headers,
                    body_size,
                );
            }
            if let Some(job) = exchange.take_copy_job() {
                self.state.submit_copy(job);
            }
        }
    }
}

impl HttpContext for OriginPullStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let config = self.state.config.borrow().clone();
        // One hostcall for everything: the host, scheme and method, and the copy a callout
        // failover replays (Envoy hides the request headers once the response is under way).
        let headers = if config.is_none() {
            HeaderMap::default() // not configured: answered locally, nothing read
        } else if cfg!(feature = "ablate-header-map") {
            let pairs: Vec<(&[u8], Vec<u8>)> = [":authority", ":scheme", ":method", ":path"]
                .iter()
                .filter_map(|name| {
                    read_header_value(MapType::HttpRequestHeaders, name)
                        .map(|v| (name.as_bytes(), v))
                })
                .collect();
            HeaderMap::from_pairs(&pairs)
        } else {
            read_header_map(MapType::HttpRequestHeaders)
        };
        let metrics = self.state.metrics.borrow();
        let client = ClientRequest {
            headers: &headers,
            has_body: !end_of_stream,
            worker: &self.state.worker,
            stats: self.state.stats.get(),
            metrics: Some(&*metrics),
        };
        let exchange = {
            let mut blocks = self.state.blocks.borrow_mut();
            Exchange::on_request_headers(config.as_ref(), &mut blocks, &mut EnvoyHost, client)
        };
        let Some(exchange) = exchange else {
            return Action::Pause; // answered locally
        };
        if let Some(plan) = exchange.chain_plan() {
            let id = plan.request;
            let progress = ChainProgress::new(&plan);
            CHAINS.with(|c| {
                c.borrow_mut().insert(
                    id,
                    ChainLink {
                        plan: Rc::new(plan),
                        progress,
                    },
                )
            });
            self.chain_id = Some(id);
        }
        self.exchange = Some(exchange);
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if let Some(exchange) = self.exchange.as_mut() {
            if exchange.wants_request_body() {
                let chunk = read_buffer(BufferType::HttpRequestBody, body_size).unwrap_or_default();
                exchange.on_request_body(&chunk, end_of_stream);
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(exchange) = self.exchange.as_mut() else {
            return Action::Continue;
        };
        let status = if cfg!(feature = "ablate-status") {
            200
        } else {
            read_header_number(MapType::HttpResponseHeaders, ":status")
                .and_then(|s| u32::try_from(s).ok())
                .unwrap_or(0)
        };
        // Envoy's failure replies (connect error, timeout, no cluster...) are all 4xx/5xx:
        // a 2xx/3xx needs no flags, which saves a hostcall on the happy path.
        let response_flags = if (200..400).contains(&status) {
            0
        } else {
            read_property_number(&["response", "flags"])
        };
        // The attempt whose origin answered (`CHAINS`); none on Envoy's own replies.
        let link = self.chain_id.and_then(|id| {
            CHAINS.with(|c| c.borrow().get(&id).map(|l| (l.plan.clone(), l.progress)))
        });
        // A logged chain's origin sent an invalid status: the drain filter made it a 502.
        let broken = status == 502
            && link.is_some()
            && read_header_value(MapType::HttpResponseHeaders, BROKEN_STATUS_HEADER).is_some();
        if broken {
            EnvoyHost.set_response_header(BROKEN_STATUS_HEADER, None);
        }
        let answered = link
            .as_ref()
            .and_then(|(plan, progress)| progress.relayed(plan, status, response_flags, broken));
        let step = {
            let mut blocks = self.state.blocks.borrow_mut();
            let step = exchange.on_routed_response(
                &mut EnvoyHost,
                &mut blocks,
                status,
                response_flags,
                answered,
            );
            // What the upstream log never reports of a logged chain.
            if let (Some(id), Some((plan, mut progress))) = (self.chain_id, link) {
                if let Some(report) = progress.unlogged(&plan, answered, response_flags) {
                    judge_logged(id, &plan, &mut progress, &mut blocks, report);
                }
            }
            step
        };
        if let Some(job) = exchange.take_copy_job() {
            self.state.submit_copy(job);
        }
        match step {
            ResponseStep::Pause => Action::Pause,
            ResponseStep::Continue => Action::Continue,
        }
    }
}
