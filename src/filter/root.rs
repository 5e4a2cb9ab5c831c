//! The root context: configuration, ticks (counters, probes) and mirror copy-backs, and the
//! state it shares with the streams of its VM.

use super::*;

/// State shared by the root context and its streams (one Envoy worker VM, one thread).
pub(super) struct RootState {
    pub(super) config: RefCell<Option<Rc<PluginConfig>>>,
    pub(super) metrics: RefCell<Rc<Metrics>>,
    pub(super) blocks: RefCell<BlockTable>,
    pub(super) worker: String,
    pub(super) stats: Cell<BucketStats>,
    /// Mirror copy-backs, run by the root context so their outcome is seen and counted.
    pub(super) copy_back: RefCell<CopyBack>,
    /// This root context's wake-up queue: only the last registrant of a queue name is called
    /// back, so the name carries the worker id.
    pub(super) copy_queue: Cell<Option<u32>>,
    /// This root context is the upstream (per-attempt) instance on a composite cluster.
    pub(super) upstream: Cell<bool>,
    /// This root context is the router's upstream logger (logged chains' failed attempts).
    pub(super) logger: Cell<bool>,
}

impl RootState {
    /// From a stream: queue the copy and wake the root context.
    pub(super) fn submit_copy(&self, job: CopyJob) {
        let stats = self.stats.get();
        let Some(queue) = self.copy_queue.get() else {
            stats.count(&mut EnvoyHost, BucketEvent::CopyBackFailed);
            log::error!("no copy-back queue is registered; object not copied back");
            return;
        };
        if !self
            .copy_back
            .borrow_mut()
            .submit(&mut EnvoyHost, &stats, job)
        {
            return;
        }
        if let Err(status) = hostcalls::enqueue_shared_queue(queue, Some(b"copy")) {
            log::error!("could not wake the copy-back worker: {status:?}");
        }
    }
}

pub(super) struct OriginPullRoot {
    pub(super) state: Rc<RootState>,
    /// Probes and the lease (runs only in the VM that holds it); `None` until configured.
    pub(super) prober: Option<Prober>,
    pub(super) holder: u64,
}

impl OriginPullRoot {
    pub(super) fn new() -> OriginPullRoot {
        let holder = EnvoyHost.random_u64();
        let worker = format!("{:08x}", holder as u32);
        OriginPullRoot {
            state: Rc::new(RootState {
                config: RefCell::new(None),
                metrics: RefCell::new(Rc::new(Metrics::default())),
                blocks: RefCell::new(BlockTable::default()),
                worker,
                stats: Cell::new(BucketStats::default()),
                copy_back: RefCell::new(CopyBack::default()),
                copy_queue: Cell::new(None),
                upstream: Cell::new(false),
                logger: Cell::new(false),
            }),
            prober: None,
            holder,
        }
    }
}

impl Context for OriginPullRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        // Root callouts are probes (this VM holds the probe lease) or bucket copy-backs; a
        // fetched object's PUT is sent from here.
        if let Some(prober) = self.prober.as_mut() {
            let metrics = self.state.metrics.borrow().clone();
            let mut blocks = self.state.blocks.borrow_mut();
            if prober.on_response(
                &mut EnvoyHost,
                &mut blocks,
                &metrics,
                token_id,
                num_headers,
                body_size,
            ) {
                return;
            }
        }
        let stats = self.state.stats.get();
        self.state.copy_back.borrow_mut().on_response(
            &mut EnvoyHost,
            &stats,
            token_id,
            num_headers,
            body_size,
        );
    }

    fn on_done(&mut self) -> bool {
        if let Some(prober) = self.prober.as_mut() {
            prober.release(&mut EnvoyHost);
        }
        flush_counters();
        true
    }
}

impl RootContext for OriginPullRoot {
    /// The router's upstream log: one failed attempt of some request (see `chain`).
    fn on_log(&mut self) {
        if self.state.logger.get() {
            log_attempt(&self.state);
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        // The items are only wake-ups; the jobs wait in `copy_back`.
        while let Ok(Some(_)) = hostcalls::dequeue_shared_queue(queue_id) {}
        let stats = self.state.stats.get();
        self.state
            .copy_back
            .borrow_mut()
            .run(&mut EnvoyHost, &stats);
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        refresh_log_level();
        let started = micros_now();
        let root_id = self
            .get_property(vec!["plugin_root_id"])
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
        let upstream = root_id == UPSTREAM_ROOT_ID;
        self.state.upstream.set(upstream);
        if root_id == LOGGER_ROOT_ID {
            // It judges the failed attempts of the plans the downstream instance of its VM made.
            self.state.logger.set(true);
            log::info!(
                target: RAW_LOG_TARGET,
                "origin-pull {} (worker {}): upstream logger ready",
                crate::BUILD,
                self.state.worker
            );
            return true;
        }
        let ablated = ablated();
        if !ablated.is_empty() {
            log::warn!("BENCH-ONLY ablation build, not for use: {ablated} off");
        }
        if upstream {
            // It observes each attempt with the plan (and configuration) the downstream instance
            // of its VM made for the request (see CHAINS).
            log::info!(
                target: RAW_LOG_TARGET,
                "origin-pull {} (worker {}): upstream instance ready",
                crate::BUILD,
                self.state.worker
            );
            return true;
        }
        self.state.stats.set(BucketStats::define(&mut EnvoyHost));
        if self.state.copy_queue.get().is_none() && !upstream {
            let name = format!("origin_pull.copy_back.{}", self.state.worker);
            match hostcalls::register_shared_queue(&name) {
                Ok(id) => self.state.copy_queue.set(Some(id)),
                Err(status) => log::error!("cannot register the copy-back queue: {status:?}"),
            }
        }
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let parsed_at = micros_now();
        match config::parse(&bytes) {
            Ok(parsed) => {
                let parse_us = micros_now().saturating_sub(parsed_at);
                let domains = parsed.domains.len();
                let parsed = Rc::new(parsed);
                // The probe plan is built here; stats are defined on first use (metrics.rs).
                let metrics = Metrics::new(parsed.clone(), REGISTRY.with(Rc::clone));
                if let Some(old) = self.prober.as_mut() {
                    old.release(&mut EnvoyHost);
                }
                // The downstream instance probes; the upstream one only observes attempts.
                if !upstream {
                    let prober = Prober::new(&parsed, self.holder);
                    self.set_tick_period(prober.tick_period());
                    self.prober = Some(prober);
                }
                let metrics = Rc::new(metrics);
                DOWNSTREAM.with(|d| *d.borrow_mut() = Rc::downgrade(&self.state));
                let old_metrics = std::mem::replace(&mut *self.state.metrics.borrow_mut(), metrics);
                let old_config = self.state.config.borrow_mut().replace(parsed);
                // Freeing the previous configuration is part of the cost of a reload.
                drop((old_metrics, old_config));
                let total_us = micros_now().saturating_sub(started);
                log::info!(
                    target: RAW_LOG_TARGET,
                    "origin-pull {} (worker {}): configured {domains} domain(s) in {}.{:03} ms (parse {}.{:03} ms, {} bytes)",
                    crate::BUILD,
                    self.state.worker,
                    total_us / 1000,
                    total_us % 1000,
                    parse_us / 1000,
                    parse_us % 1000,
                    bytes.len(),
                );
                true
            }
            Err(error) => {
                // Envoy rejects the configuration: at bootstrap it exits, under LDS it keeps the old one.
                log::error!(target: RAW_LOG_TARGET, "{error}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        refresh_log_level();
        flush_counters();
        if let Some(prober) = self.prober.as_mut() {
            let metrics = self.state.metrics.borrow().clone();
            let mut blocks = self.state.blocks.borrow_mut();
            prober.on_tick(&mut EnvoyHost, &mut blocks, &metrics);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        if self.state.upstream.get() {
            return Some(Box::new(OriginPullAttempt {
                state: self.state.clone(),
                observer: None,
                attempt: 0,
                link: None,
            }));
        }
        Some(Box::new(OriginPullStream {
            state: self.state.clone(),
            exchange: None,
            chain_id: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// A failed attempt the router's upstream log reports: judged against the plan of its request,
/// when that is a logged chain of this worker.
fn log_attempt(own: &Rc<RootState>) {
    let Some(id) = read_header_value(MapType::HttpRequestHeaders, PLAN_HEADER)
        .as_deref()
        .and_then(|text| std::str::from_utf8(text).ok())
        .and_then(read_plan_id)
    else {
        return;
    };
    let Some((plan, mut progress)) = with_link(id, |link| {
        link.progress.logged += 1;
        (link.plan.clone(), link.progress)
    }) else {
        return;
    };
    let status = u32::try_from(read_property_number(&["response", "code"])).unwrap_or(0);
    let flags = read_property_number(&["response", "flags"]);
    log::debug!(
        "upstream log: plan {id:x} attempt {} status {status} flags {flags:#x}",
        progress.logged
    );
    let state = DOWNSTREAM
        .with(|d| d.borrow().upgrade())
        .unwrap_or_else(|| own.clone());
    let attempt = progress.logged;
    let mut blocks = state.blocks.borrow_mut();
    judge_logged(
        id,
        &plan,
        &mut progress,
        &mut blocks,
        (attempt, status, flags),
    );
}
