//! Mirror back-to-origin: a bucket master missed; the source is asked (or the client redirected)
//! and the object is copied back into the bucket.

use super::*;

impl Exchange {
    /// An object fetched from the mirror source, to copy into the bucket from the root context.
    pub fn take_copy_job(&mut self) -> Option<CopyJob> {
        self.copy_job.take().map(|job| *job)
    }

    /// A bucket master missed: redirect to the mirror source, or ask it. True when the request
    /// is now the mirror's (a local reply was sent or a callout is under way).
    pub(super) fn start_mirror(&mut self, host: &mut impl Host, answer: Answer) -> bool {
        let Answer::Status(status) = answer else {
            return false;
        };
        if self.state != State::Origin
            || self.current().role != Role::Master
            || !self.domain().is_some_and(|d| d.mirror.is_some())
        {
            return false;
        }
        let config = self.config.clone();
        let Some(domain) = config.domains.get(self.domain) else {
            return false;
        };
        let Some(mirror) = &domain.mirror else {
            return false;
        };
        if !mirror.triggers(status, &self.method, &self.path) {
            return false;
        }
        let source_set = &mirror.source;
        let mut random = || host.random_u64();
        let Some(target) = select::pick(source_set, &mut random, false, &|_| false) else {
            return false;
        };
        let Some(route) = source_set.targets.get(target).map(|t| t.route(self.scheme)) else {
            return false;
        };
        // The normalized key, re-encoded: the same key the bucket missed and a copy is stored
        // under (an unsafe key was refused before the bucket was asked).
        let Some(path) = mirror.source_path(&self.path) else {
            return false;
        };
        let path = path.as_str();
        if mirror.mode == MirrorMode::Redirect {
            let Some(location) = mirror.redirect_location(self.scheme, &self.path) else {
                return false;
            };
            self.stats.count(host, BucketEvent::MirrorRedirect);
            self.record_outcome(host);
            let body = format!("origin-pull: the object is at {location}\n");
            let mut headers = vec![
                ("location", location.as_str()),
                ("content-type", "text/plain"),
                (MIRROR_HEADER, "redirect"),
            ];
            let debug = self.debug_headers();
            headers.extend(debug.iter().map(|(k, v)| (*k, v.as_str())));
            host.send_local_reply(
                302,
                "origin_pull_mirror_redirect",
                &headers,
                body.as_bytes(),
            );
            // Meanwhile the bucket copies the object from the source (root context).
            let key = domain
                .master
                .bucket
                .as_ref()
                .and_then(|b| b.object_key(&self.path).ok());
            let copy = mirror.copy_back && self.method == "GET";
            if copy && !mirror.copies_back(&self.path) {
                self.skip_query_copy(host, &domain.name);
            }
            if let (true, Some(key)) = (copy && mirror.copies_back(&self.path), key) {
                let scheme = route.scheme.unwrap_or(self.scheme).as_str();
                let authority = source_set.host.as_deref().unwrap_or(&self.client_authority);
                let mut headers: Vec<(String, String)> = vec![
                    (":method".into(), "GET".into()),
                    (":path".into(), path.into()),
                    (":authority".into(), authority.into()),
                    (":scheme".into(), scheme.into()),
                ];
                if let Some(dst) = &route.original_dst {
                    headers.push((ORIGINAL_DST_HEADER.into(), dst.to_string()));
                }
                self.copy_job = Some(Box::new(CopyJob {
                    config: config.clone(),
                    domain: self.domain,
                    scheme: self.scheme,
                    key,
                    content_type: None,
                    body: Vec::new(),
                    fetch: Some(SourceFetch {
                        cluster: route.cluster.to_string(),
                        headers,
                        label: route.label.to_string(),
                    }),
                }));
            }
            return true;
        }
        match self.send_callout(host, source_set, route, Some(path)) {
            Ok(token) => {
                self.stats.count(host, BucketEvent::MirrorFetch);
                log::debug!(
                    "{}: bucket answered {status} for {}; fetching it from the mirror source {}",
                    domain.name,
                    printable(&self.path),
                    route.label
                );
                self.state = State::FetchingSource {
                    token,
                    miss: status,
                    source: route.label.to_string(),
                };
                true
            }
            Err(status) => {
                self.stats.count(host, BucketEvent::MirrorSourceFailure);
                log::error!(
                    "{}: could not ask the mirror source {} via cluster '{}': {status}",
                    domain.name,
                    route.label,
                    route.cluster
                );
                false
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_source_response(
        &mut self,
        host: &mut impl Host,
        blocks: &mut BlockTable,
        answer: Answer,
        headers: &[(String, String)],
        body_size: usize,
        miss: u32,
        source: String,
    ) {
        let config = self.config.clone();
        let Some(domain) = config.domains.get(self.domain) else {
            return;
        };
        let Some(mirror) = &domain.mirror else {
            return;
        };
        if let Answer::Status(200..=299) = answer {
            self.state = State::SourceServed { source };
            let Some(body) = self.forward_callout_response(host, answer, headers, body_size) else {
                return;
            };
            let copy = mirror.copy_back && answer == Answer::Status(200) && self.method == "GET";
            if !copy {
                return;
            }
            if !mirror.copies_back(&self.path) {
                self.skip_query_copy(host, &domain.name);
                return;
            }
            if body.len() as u64 > mirror.max_copy_bytes {
                self.stats.count(host, BucketEvent::CopyBackSkipped);
                log::info!(
                    "{}: not copying {} back: {} bytes is over mirror.max_copy_bytes ({})",
                    domain.name,
                    printable(&self.path),
                    body.len(),
                    mirror.max_copy_bytes
                );
                return;
            }
            let Some(key) = domain
                .master
                .bucket
                .as_ref()
                .and_then(|b| b.object_key(&self.path).ok())
            else {
                return;
            };
            let content_type = header(headers, "content-type").map(str::to_string);
            self.copy_job = Some(Box::new(CopyJob {
                config: config.clone(),
                domain: self.domain,
                scheme: self.scheme,
                key,
                content_type,
                body,
                fetch: None,
            }));
            return;
        }
        self.stats.count(host, BucketEvent::MirrorSourceFailure);
        log::warn!("{}: the bucket answered {miss} for {} and the mirror source {source} failed too ({}); answering per mirror.on_source_failure = {}", domain.name, printable(&self.path), answer.kind(), mirror.on_source_failure.as_str());
        self.state = State::Origin;
        match mirror.on_source_failure {
            OnSourceFailure::Source => {
                self.state = State::SourceServed { source };
                self.forward_callout_response(host, answer, headers, body_size);
            }
            OnSourceFailure::NotFound => self.reply_miss(host, miss),
            OnSourceFailure::Slave => {
                // The slave's answer is never mirrored (only a master's miss is).
                match self.next_step(host, blocks, Answer::Status(miss), false) {
                    Next::Dispatched => {}
                    Next::Unreachable => self.reply_unreachable(host),
                    Next::Accept => self.reply_miss(host, miss),
                }
            }
        }
    }

    /// An object fetched with the client's query string is served, never stored under the
    /// query-less key (issue 13: bucket poisoning).
    pub(super) fn skip_query_copy(&self, host: &mut impl Host, domain: &str) {
        self.stats.count(host, BucketEvent::CopyBackSkipped);
        log::debug!(
            "{domain}: not copying {} back: it was fetched with the client's query string",
            printable(&self.path)
        );
    }

    /// The bucket's miss, told by the filter (the bucket's own body is gone by now).
    pub(super) fn reply_miss(&mut self, host: &mut impl Host, status: u32) {
        self.state = State::Origin;
        self.record_outcome(host);
        let mut headers: Vec<(&str, String)> = vec![
            ("content-type", "text/plain".into()),
            (ERROR_HEADER, "mirror-source-failed".into()),
        ];
        headers.extend(self.debug_headers());
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        host.send_local_reply(
            status,
            "origin_pull_mirror_source_failed",
            &headers,
            b"origin-pull: the object is neither in the bucket nor at the mirror source\n",
        );
    }
}
