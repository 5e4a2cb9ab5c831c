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

use serde_json::Value;

use crate::bucket::{BucketEvent, BucketStats};
use crate::config::{OriginSet, PluginConfig, Scheme};
use crate::host::{Host, LogLevel};
use crate::sigv4;

/// Memory held by copy-backs of one VM (queued and in flight); past it new copies are skipped.
pub const MAX_COPY_BACK_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorMode {
    Fetch,
    Redirect,
}

impl MirrorMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MirrorMode::Fetch => "fetch",
            MirrorMode::Redirect => "redirect",
        }
    }
}

/// What the client gets when the bucket missed and the source failed too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnSourceFailure {
    /// The bucket's miss (404 by default).
    NotFound,
    /// The source's own answer.
    Source,
    /// Fail over to the slave as for any master error.
    Slave,
}

impl OnSourceFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            OnSourceFailure::NotFound => "not_found",
            OnSourceFailure::Source => "source",
            OnSourceFailure::Slave => "slave",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Mirror {
    pub source: OriginSet,
    pub mode: MirrorMode,
    pub pass_query_string: bool,
    /// Object keys (client path without the leading '/') that are mirrored; empty = all.
    pub key_prefixes: Vec<String>,
    /// Bucket statuses that count as a miss.
    pub on_status: Vec<u32>,
    pub copy_back: bool,
    pub max_copy_bytes: u64,
    pub on_source_failure: OnSourceFailure,
    /// `scheme://host[:port]` of the source for redirects, by client scheme.
    pub redirect_base: [String; 2],
    pub normalized: Value,
}

impl Mirror {
    /// Whether a bucket answer `status` to `method client_path` is a miss to mirror.
    pub fn triggers(&self, status: u32, method: &str, client_path: &str) -> bool {
        (method == "GET" || method == "HEAD")
            && self.on_status.contains(&status)
            && self.key_matches(client_path)
    }

    fn key_matches(&self, client_path: &str) -> bool {
        if self.key_prefixes.is_empty() {
            return true;
        }
        let path = client_path.split(['?', '#']).next().unwrap_or("");
        let key = sigv4::percent_decode(path.strip_prefix('/').unwrap_or(path));
        self.key_prefixes
            .iter()
            .any(|p| key.starts_with(p.as_bytes()))
    }

    /// The path (and query string, when passed) asked of the source.
    pub fn source_path<'a>(&self, client_path: &'a str) -> &'a str {
        if self.pass_query_string {
            client_path
        } else {
            client_path.split('?').next().unwrap_or(client_path)
        }
    }

    pub fn redirect_location(&self, scheme: Scheme, client_path: &str) -> String {
        let base = match scheme {
            Scheme::Http => &self.redirect_base[0],
            Scheme::Https => &self.redirect_base[1],
        };
        format!("{base}{}", self.source_path(client_path))
    }
}

/// An object fetched from the mirror source, to be written into the master bucket.
pub struct CopyJob {
    pub config: Rc<PluginConfig>,
    pub domain: usize,
    /// The client's scheme (decides the bucket route for `follow`).
    pub scheme: Scheme,
    pub key: Vec<u8>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

struct InFlight {
    token: u32,
    key: Vec<u8>,
    what: String,
    bytes: u64,
}

#[derive(Default)]
pub struct CopyBack {
    queue: VecDeque<CopyJob>,
    in_flight: Vec<InFlight>,
    bytes: u64,
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
        if let Some(reason) = reason {
            stats.count(host, BucketEvent::CopyBackSkipped);
            host.log(
                LogLevel::Info,
                &format!(
                    "origin-pull: not copying {} back: {reason}",
                    printable_key(&job.key)
                ),
            );
            return false;
        }
        self.bytes += size;
        self.queue.push_back(job);
        true
    }

    /// Signs and dispatches every queued PUT (root context).
    pub fn run(&mut self, host: &mut impl Host, stats: &BucketStats) {
        while let Some(job) = self.queue.pop_front() {
            let size = job.body.len() as u64;
            match dispatch_put(host, &job) {
                Ok((token, what)) => self.in_flight.push(InFlight {
                    token,
                    key: job.key,
                    what,
                    bytes: size,
                }),
                Err(reason) => {
                    self.bytes = self.bytes.saturating_sub(size);
                    stats.count(host, BucketEvent::CopyBackFailed);
                    host.log(
                        LogLevel::Warn,
                        &format!(
                            "origin-pull: copy-back of {} not started: {reason}",
                            printable_key(&job.key)
                        ),
                    );
                }
            }
        }
    }

    /// A PUT answered (root context). Returns false for a token that is not a copy-back.
    pub fn on_response(
        &mut self,
        host: &mut impl Host,
        stats: &BucketStats,
        token: u32,
        num_headers: usize,
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
        match status {
            Some(200..=299) => {
                stats.count(host, BucketEvent::CopyBackDone);
                host.log(
                    LogLevel::Debug,
                    &format!("origin-pull: copied {} back", done.what),
                );
            }
            other => {
                if other == Some(403) {
                    stats.count(host, BucketEvent::Denied);
                }
                stats.count(host, BucketEvent::CopyBackFailed);
                let status = other.map_or("no response".to_string(), |s| format!("status {s}"));
                host.log(
                    LogLevel::Warn,
                    &format!("origin-pull: copy-back of {} failed: {status}", done.what),
                );
            }
        }
        true
    }

    pub fn pending(&self) -> usize {
        self.queue.len() + self.in_flight.len()
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

/// Keys go into logs: bounded, without control characters.
pub fn printable_key(key: &[u8]) -> String {
    let text = String::from_utf8_lossy(key);
    let shown: String = text
        .chars()
        .take(200)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    format!("'{shown}'")
}

#[cfg(test)]
mod tests;
