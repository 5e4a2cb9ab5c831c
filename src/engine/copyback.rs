//! Mirror back-to-origin for bucket masters (OSS/COS "mirror"/"back-to-origin" rules): when the
//! bucket misses, fetch the object from a source and serve it (or redirect the client there),
//! then copy it into the bucket with a signed PUT.
//!
//! The copy-back runs in the root context, not the client's stream: a callout dispatched from a
//! stream that has already answered is never delivered back (ENVOY-NOTES), so its outcome could
//! not be confirmed or counted. The stream hands a [`CopyJob`] to [`CopyBack::submit`] and wakes
//! the root context (a shared queue whose name is unique to that root context); the root context
//! calls [`CopyBack::run`] and, for each answer, [`CopyBack::on_response`].

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

pub use crate::config::{
    Mirror, MirrorMode, OnSourceFailure, DEFAULT_MAX_COPY_BACKS_PER_MINUTE,
    MAX_COPY_BACKS_PER_MINUTE,
};
use crate::config::{PluginConfig, Scheme};
use crate::host::Host;
use crate::s3::bucket::{self, BucketEvent, BucketStats};
use crate::s3::sigv4;
use crate::types::printable;

/// Memory held by copy-backs of one VM (queued and in flight); past it new copies are skipped.
pub const MAX_COPY_BACK_BYTES: u64 = 64 << 20;
const COPY_BACK_WINDOW_MS: u64 = 60_000;

impl Mirror {
    /// Whether a bucket answer `status` to `method client_path` is a miss to mirror.
    pub fn triggers(&self, status: u32, method: &str, client_path: &str) -> bool {
        (method == "GET" || method == "HEAD")
            && self.on_status.contains(&status)
            && self.key_matches(client_path)
    }

    /// The prefixes are compared with the normalized key ([`bucket::client_key`]), the key the
    /// source is asked for and the copy is stored under; an unsafe key never matches.
    fn key_matches(&self, client_path: &str) -> bool {
        let Ok(key) = bucket::client_key(client_path) else {
            return false;
        };
        self.key_prefixes.is_empty()
            || self
                .key_prefixes
                .iter()
                .any(|p| key.starts_with(p.as_bytes()))
    }

    /// The client's query string when it is passed to the source (`None` when empty).
    fn passed_query<'a>(&self, client_path: &'a str) -> Option<&'a str> {
        let path = client_path.split('#').next().unwrap_or("");
        let (_, query) = path.split_once('?')?;
        (self.pass_query_string && !query.is_empty()).then_some(query)
    }

    /// The path asked of the source: the normalized key, re-encoded, then the query string when
    /// passed. `None` for a key that is refused ([`bucket::client_key`]).
    pub fn source_path(&self, client_path: &str) -> Option<String> {
        let key = bucket::client_key(client_path).ok()?;
        let mut path = String::with_capacity(key.len() + 16);
        path.push('/');
        path.push_str(&sigv4::encode_path(&key));
        if let Some(query) = self.passed_query(client_path) {
            path.push('?');
            path.push_str(query);
        }
        Some(path)
    }

    pub fn redirect_location(&self, scheme: Scheme, client_path: &str) -> Option<String> {
        let base = scheme.pick(&self.redirect_base);
        Some(format!("{base}{}", self.source_path(client_path)?))
    }

    /// Whether an object the source serves for this client path may be stored in the bucket.
    /// Never when it was fetched with the client's query string: it would be stored under the
    /// query-less key and served to every later client (bucket poisoning).
    pub fn copies_back(&self, client_path: &str) -> bool {
        self.copy_back && self.passed_query(client_path).is_none()
    }
}

/// An object to write into the master bucket: fetched from the source already (fetch mode), or
/// to be fetched by the root context first (redirect mode, as COS does: the client is sent to
/// the source and the bucket copies the object meanwhile).
pub struct CopyJob {
    pub config: Rc<PluginConfig>,
    pub domain: usize,
    /// The client's scheme (decides the bucket route for `follow`).
    pub scheme: Scheme,
    pub key: Vec<u8>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    pub fetch: Option<SourceFetch>,
}

/// The GET the root context sends to the mirror source before the PUT.
pub struct SourceFetch {
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub label: String,
}

struct InFlight {
    token: u32,
    key: Vec<u8>,
    what: String,
    bytes: u64,
    /// Set while this callout is the source GET of a redirect-mode copy.
    fetching: Option<CopyJob>,
}

#[derive(Default)]
pub struct CopyBack {
    queue: VecDeque<CopyJob>,
    in_flight: Vec<InFlight>,
    bytes: u64,
    /// Copy-backs accepted per domain in the current minute.
    windows: Vec<RateWindow>,
}

struct RateWindow {
    domain: String,
    start_ms: u64,
    accepted: u32,
    /// One log line per window when the limit is hit, not one per refused copy.
    logged: bool,
}

impl CopyBack {
    /// Accepts a job unless the same key is already being copied by this VM or the memory
    /// budget is spent. Counts and logs a refusal.
    pub fn submit(&mut self, host: &mut impl Host, stats: &BucketStats, job: CopyJob) -> bool {
        let size = job.body.len() as u64;
        let duplicate = self.queue.iter().any(|j| j.key == job.key)
            || self.in_flight.iter().any(|f| f.key == job.key);
        let reason = if duplicate {
            Some("a copy of the same key is already under way")
        } else if self.bytes + size > MAX_COPY_BACK_BYTES {
            Some("the copy-back memory budget (64 MiB per worker) is spent")
        } else {
            None
        };
        if reason.is_none() && !self.within_rate(host, &job) {
            stats.count(host, BucketEvent::CopyBackSkipped);
            return false;
        }
        if let Some(reason) = reason {
            stats.count(host, BucketEvent::CopyBackSkipped);
            log::info!("not copying {} back: {reason}", printable_key(&job.key));
            return false;
        }
        self.bytes += size;
        self.queue.push_back(job);
        true
    }

    /// Takes one copy-back of the job's domain from this minute's allowance
    /// (`mirror.max_copy_backs_per_minute`); logs once per minute when it is spent.
    fn within_rate(&mut self, host: &mut impl Host, job: &CopyJob) -> bool {
        let Some(domain) = job.config.domains.get(job.domain) else {
            return false;
        };
        let limit = domain
            .mirror
            .as_ref()
            .map_or(DEFAULT_MAX_COPY_BACKS_PER_MINUTE, |m| {
                m.max_copy_backs_per_minute
            });
        let now = host.now_ms();
        let index = match self.windows.iter().position(|w| w.domain == domain.name) {
            Some(index) => index,
            None => {
                self.windows.push(RateWindow {
                    domain: domain.name.clone(),
                    start_ms: now,
                    accepted: 0,
                    logged: false,
                });
                self.windows.len() - 1
            }
        };
        let Some(window) = self.windows.get_mut(index) else {
            return false;
        };
        if now.saturating_sub(window.start_ms) >= COPY_BACK_WINDOW_MS || now < window.start_ms {
            window.start_ms = now;
            window.accepted = 0;
            window.logged = false;
        }
        if window.accepted < limit {
            window.accepted += 1;
            return true;
        }
        if !window.logged {
            window.logged = true;
            log::warn!(
                    "{}: {limit} objects were copied back in the last minute (mirror.max_copy_backs_per_minute); further objects are served but not copied back until the minute is over",
                    domain.name
                );
        }
        false
    }

    /// Signs and dispatches every queued PUT, or first the source GET (root context).
    pub fn run(&mut self, host: &mut impl Host, stats: &BucketStats) {
        while let Some(job) = self.queue.pop_front() {
            match &job.fetch {
                Some(fetch) => self.start_fetch(host, stats, job.domain_timeout(), fetch, &job),
                None => self.start_put(host, stats, job),
            }
        }
    }

    fn start_fetch(
        &mut self,
        host: &mut impl Host,
        stats: &BucketStats,
        timeout: Duration,
        fetch: &SourceFetch,
        job: &CopyJob,
    ) {
        let headers: Vec<(&str, &str)> = fetch
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        match host.dispatch(&fetch.cluster, &headers, None, timeout) {
            Ok(token) => self.in_flight.push(InFlight {
                token,
                key: job.key.clone(),
                what: format!("{} from {}", printable_key(&job.key), fetch.label),
                bytes: 0,
                fetching: None,
            }),
            Err(status) => {
                self.fail(
                    host,
                    stats,
                    &job.key,
                    &format!(
                        "the source GET via cluster '{}' could not start: {status}",
                        fetch.cluster
                    ),
                );
                return;
            }
        }
        // The job waits in its in-flight entry for the source's answer.
        if let Some(entry) = self.in_flight.last_mut() {
            entry.fetching = Some(CopyJob {
                config: job.config.clone(),
                domain: job.domain,
                scheme: job.scheme,
                key: job.key.clone(),
                content_type: None,
                body: Vec::new(),
                fetch: None,
            });
        }
    }

    fn start_put(&mut self, host: &mut impl Host, stats: &BucketStats, job: CopyJob) {
        let size = job.body.len() as u64;
        match dispatch_put(host, &job) {
            Ok((token, what)) => self.in_flight.push(InFlight {
                token,
                key: job.key,
                what,
                bytes: size,
                fetching: None,
            }),
            Err(reason) => {
                self.bytes = self.bytes.saturating_sub(size);
                self.fail(host, stats, &job.key, &format!("not started: {reason}"));
            }
        }
    }

    fn fail(&self, host: &mut impl Host, stats: &BucketStats, key: &[u8], reason: &str) {
        stats.count(host, BucketEvent::CopyBackFailed);
        log::warn!("copy-back of {} {reason}", printable_key(key));
    }

    /// A copy-back callout answered (root context): the source GET of a redirect-mode copy
    /// (then the PUT is sent) or a PUT. Returns false for a token that is not a copy-back.
    pub fn on_response(
        &mut self,
        host: &mut impl Host,
        stats: &BucketStats,
        token: u32,
        num_headers: usize,
        body_size: usize,
    ) -> bool {
        let Some(index) = self.in_flight.iter().position(|f| f.token == token) else {
            return false;
        };
        let done = self.in_flight.swap_remove(index);
        self.bytes = self.bytes.saturating_sub(done.bytes);
        let status = if num_headers == 0 {
            None
        } else {
            host.callout_response_headers()
                .iter()
                .find(|(k, _)| k == ":status")
                .and_then(|(_, v)| v.parse::<u32>().ok())
        };
        if let Some(job) = done.fetching {
            self.on_fetched(host, stats, job, status, body_size, &done.what);
            return true;
        }
        match status {
            Some(200..=299) => {
                stats.count(host, BucketEvent::CopyBackDone);
                log::debug!("copied {} back", done.what);
            }
            other => {
                if other == Some(403) {
                    stats.count(host, BucketEvent::Denied);
                }
                stats.count(host, BucketEvent::CopyBackFailed);
                let status = other.map_or("no response".to_string(), |s| format!("status {s}"));
                log::warn!("copy-back of {} failed: {status}", done.what);
            }
        }
        true
    }

    fn on_fetched(
        &mut self,
        host: &mut impl Host,
        stats: &BucketStats,
        mut job: CopyJob,
        status: Option<u32>,
        body_size: usize,
        what: &str,
    ) {
        if status != Some(200) {
            stats.count(host, BucketEvent::MirrorSourceFailure);
            let status = status.map_or("no response".to_string(), |s| format!("status {s}"));
            self.fail(
                host,
                stats,
                &job.key,
                &format!("failed: the source answered {status} ({what})"),
            );
            return;
        }
        let limit = job
            .config
            .domains
            .get(job.domain)
            .and_then(|d| d.mirror.as_ref())
            .map_or(0, |m| m.max_copy_bytes);
        let size = body_size as u64;
        if size > limit || self.bytes + size > MAX_COPY_BACK_BYTES {
            stats.count(host, BucketEvent::CopyBackSkipped);
            log::info!("not copying {what} back: {size} bytes is over mirror.max_copy_bytes ({limit}) or the copy-back memory budget");
            return;
        }
        job.body = host.callout_response_body(body_size).unwrap_or_default();
        job.content_type = host
            .callout_response_headers()
            .into_iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v);
        self.bytes += job.body.len() as u64;
        self.start_put(host, stats, job);
    }

    pub fn pending(&self) -> usize {
        self.queue.len() + self.in_flight.len()
    }
}

impl CopyJob {
    fn domain_timeout(&self) -> Duration {
        Duration::from_millis(
            self.config
                .domains
                .get(self.domain)
                .map_or(crate::config::DEFAULT_CALLOUT_TIMEOUT_MS, |d| {
                    d.failover.timeout_ms
                }),
        )
    }
}

fn dispatch_put(host: &mut impl Host, job: &CopyJob) -> Result<(u32, String), String> {
    let domain = job
        .config
        .domains
        .get(job.domain)
        .ok_or("the configuration changed")?;
    let set = &domain.master;
    let bucket = set.bucket.as_ref().ok_or("the master is not a bucket")?;
    let route = set
        .targets
        .first()
        .map(|t| t.route(job.scheme))
        .ok_or("the bucket has no route")?;
    let what = format!(
        "{} to bucket {} ({})",
        printable_key(&job.key),
        bucket.name,
        domain.name
    );
    let payload = sigv4::sha256_hex(&job.body);
    let request = bucket
        .request("PUT", &job.key, &payload, host.now_ms())
        .map_err(|e| e.as_str().to_string())?;
    let length = job.body.len().to_string();
    let scheme = route.scheme.unwrap_or(job.scheme).as_str();
    let mut headers: Vec<(&str, &str)> = vec![
        (":method", "PUT"),
        (":path", &request.path),
        (":authority", &bucket.authority),
        (":scheme", scheme),
        ("content-length", &length),
    ];
    if let Some(content_type) = &job.content_type {
        headers.push(("content-type", content_type));
    }
    headers.extend(request.headers.iter().map(|(k, v)| (*k, v.as_str())));
    let timeout = Duration::from_millis(domain.failover.timeout_ms);
    host.dispatch(&route.cluster, &headers, Some(&job.body), timeout)
        .map(|token| (token, what))
        .map_err(|status| {
            format!(
                "could not start the PUT via cluster '{}': {status}",
                route.cluster
            )
        })
}

/// Keys go into logs: quoted, [`printable`].
pub fn printable_key(key: &[u8]) -> String {
    format!("'{}'", printable(&String::from_utf8_lossy(key)))
}

#[cfg(test)]
mod tests;
