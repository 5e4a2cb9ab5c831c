//! One client request's journey: pick the origin, judge its answer, block it if it failed,
//! retry on another master IP or fail over to the slave with a callout, and finally hand the
//! client one honest answer. Driven by the glue's events; side effects go through [`Host`].

mod bucket;
mod callout;
mod mirror;
mod pick;
mod reply;
mod request;
mod response;
mod router;
pub use router::ChainHeader;

pub use request::ClientRequest;

use std::rc::Rc;
use std::time::Duration;

use crate::config::{Domain, OriginSet, PluginConfig, Route, Scheme, DEFAULT_CALLOUT_TIMEOUT_MS};
use crate::engine::blocks::{passive_block_line, BlockOutcome, BlockTable};
use crate::engine::chain::{
    dst_header, push_attempt_cluster, Plan, PlanIdText, PlannedStep, CHAIN_PREFIX,
    CHAIN_PREFIX_RULES, FAILOVER_STATUS, MAX_RETRIES_HEADER, PLAN_HEADER, RETRIABLE_CODES_HEADER,
    RETRY_ON_HEADER,
};
use crate::engine::classify::{
    classify_routed, connection_options, failure_kind, is_hop_by_hop, read_callout, Answer,
};
use crate::engine::copyback::{CopyJob, MirrorMode, OnSourceFailure, SourceFetch};
use crate::engine::metrics::{BlockSource, Metrics, OriginMetrics};
use crate::engine::select;
use crate::engine::verdict::{Failure, Verdict};
use crate::headers::HeaderMap;
use crate::host::{Host, RAW_LOG_TARGET};
// Host values and paths go into logs and replies: the one sanitiser keeps them to one short line.
use crate::s3::bucket::{
    is_client_header_dropped, Bucket, BucketError, BucketEvent, BucketStats, ObjectRequest,
};
use crate::s3::sigv4::EMPTY_PAYLOAD_SHA256;
use crate::types::printable;

pub const ORIGINAL_DST_HEADER: &str = "x-envoy-original-dst-host";
pub const DEBUG_ORIGIN_HEADER: &str = "x-origin-pull-origin";
pub const DEBUG_ATTEMPTS_HEADER: &str = "x-origin-pull-attempts";
pub const DEBUG_WORKER_HEADER: &str = "x-origin-pull-worker";
pub const ERROR_HEADER: &str = "x-origin-pull-error";
pub const MIRROR_HEADER: &str = "x-origin-pull-mirror";
/// The filter-state key (Envoy: `wasm.origin_pull.served`) the access log prints whole.
pub const ATTRIBUTION_KEY: &str = "origin_pull.served";
/// Its value when no origin served (a reply made before any origin was chosen).
pub const NO_ORIGIN_ATTRIBUTION: &str = "origin=- role=- attempts=- failed_over=-";

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

/// Where the request stands between the glue's events.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// An origin's answer is awaited or judged: the routed request's, or a failover callout's
    /// once it arrived. The mirror source has not been asked.
    Origin,
    /// A failover callout (another master, or the slave) is under way.
    FailingOver { token: u32 },
    /// The bucket master missed with status `miss`; the mirror source `source` was asked.
    FetchingSource {
        token: u32,
        miss: u32,
        source: String,
    },
    /// The mirror source's answer went to the client.
    SourceServed { source: String },
}

impl State {
    /// The callout whose answer this state waits for.
    fn awaited_callout(&self) -> Option<u32> {
        match self {
            State::FailingOver { token } | State::FetchingSource { token, .. } => Some(*token),
            State::Origin | State::SourceServed { .. } => None,
        }
    }
}

/// The client's request body, kept for a failover replay.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Body {
    /// The request has none.
    Empty,
    /// Chunks are arriving (kept while within `failover.max_request_body_bytes`).
    Receiving(Vec<u8>),
    /// Received in full: a failover callout replays it.
    Complete(Vec<u8>),
    /// Over `failover.max_request_body_bytes`: dropped; the request cannot be failed over.
    Overflow,
}

impl Body {
    fn exists(&self) -> bool {
        !matches!(self, Body::Empty)
    }
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
    /// A common method is a static name (no allocation per request).
    method: std::borrow::Cow<'static, str>,
    client_authority: String,
    worker: Option<String>,
    body: Body,
    tried: Vec<Attempt>,
    attempts_in_role: u32,
    request_headers: Option<HeaderMap>,
    refusal_logged: bool,
    path: String,
    stats: BucketStats,
    /// Path and signing headers of the routed request when it goes to a bucket.
    routed_bucket: Option<ObjectRequest>,
    state: State,
    /// Boxed: rare, and the exchange is moved and dropped on every request.
    copy_job: Option<Box<CopyJob>>,
    metrics: Option<Rc<Metrics>>,
    /// Random id, drawn at the first failure: strikes count distinct requests.
    request_id: Option<u64>,
    /// `request_id` as the routed failover's plan header carries it (set with the plan).
    plan_id: Option<PlanIdText>,
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
            method: method_name(request.method),
            client_authority: request.authority.to_string(),
            worker: config.debug_headers.then(|| request.worker.to_string()),
            body: if request.has_body {
                Body::Receiving(Vec::new())
            } else {
                Body::Empty
            },
            tried: Vec::with_capacity(2),
            attempts_in_role: 1,
            request_headers: None,
            refusal_logged: false,
            path: request.path.to_string(),
            stats: request.stats,
            routed_bucket: None,
            state: State::Origin,
            copy_job: None,
            metrics: request.metrics.cloned(),
            request_id: None,
            plan_id: None,
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
        // An observed chain's attempts are counted by the upstream instance, one per attempt;
        // a logged chain's attempt 1 here, the others by whoever sees them first.
        if exchange.chain.is_empty() || !exchange.domain().is_some_and(Domain::attempts_set_host) {
            if let Some(m) = exchange.origin_metrics(first) {
                m.request(host);
            }
        }
        Some(exchange)
    }

    fn domain(&self) -> Option<&Domain> {
        self.config.domains.get(self.domain)
    }

    fn set(&self, role: Role) -> Option<&OriginSet> {
        role_set(self.domain()?, role)
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

    /// Label and role of the origin asked last (tests and logs).
    pub fn current_origin(&self) -> Option<(Role, &str)> {
        let current = self.current();
        self.route_of(current).map(|r| (current.role, &*r.label))
    }
}

/// The evidence slot of an origin of a configuration (see `health::BlockTable::note_answer`):
/// domain, target, role and scheme.
pub fn slot_of(domain: usize, target: usize, slave: bool, https: bool) -> u64 {
    ((domain as u64) << 32) | ((target as u64) << 2) | (u64::from(slave) << 1) | u64::from(https)
}

/// `method` as a static name when it is a common one.
fn method_name(method: &str) -> std::borrow::Cow<'static, str> {
    const COMMON: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"];
    match COMMON.iter().find(|m| **m == method) {
        Some(name) => std::borrow::Cow::Borrowed(name),
        None => std::borrow::Cow::Owned(method.to_string()),
    }
}

/// A domain's origin set for `role` (`None`: no slave).
fn role_set(domain: &Domain, role: Role) -> Option<&OriginSet> {
    match role {
        Role::Master => Some(&domain.master),
        Role::Slave => domain.slave.as_ref(),
    }
}

/// The value of header `name` (Envoy's header maps hold lowercase names; any case matches).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests;
