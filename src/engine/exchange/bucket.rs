//! Bucket origins: the signed object request, and the replies when a request cannot go to one.

use super::*;

impl Exchange {
    /// The request to a bucket origin for this client request, signed when private.
    pub(super) fn object_request(
        &self,
        host: &mut impl Host,
        bucket: &Bucket,
    ) -> Result<ObjectRequest, BucketRefusal> {
        if self.method != "GET" && self.method != "HEAD" {
            return Err(BucketRefusal::Method);
        }
        let key = bucket
            .object_key(&self.path)
            .map_err(BucketRefusal::Bucket)?;
        bucket
            .request(&self.method, &key, EMPTY_PAYLOAD_SHA256, host.now_ms())
            .map_err(BucketRefusal::Bucket)
    }

    /// The bucket's `Host` and the path and headers to set on the routed request, when it goes
    /// to a bucket. The glue also drops the client's `authorization` and `x-amz-*` headers.
    pub fn bucket_request(&self) -> Option<(&str, &ObjectRequest)> {
        let request = self.routed_bucket.as_ref()?;
        let bucket = self.set(self.current().role)?.bucket.as_ref()?;
        Some((bucket.authority.as_str(), request))
    }

    /// A private bucket refusing our signature is worth its own counter.
    pub(super) fn note_bucket_answer(&self, host: &mut impl Host, answer: Answer) {
        let is_bucket = self
            .set(self.current().role)
            .is_some_and(|s| s.bucket.is_some());
        if is_bucket && answer == Answer::Status(403) {
            self.stats.count(host, BucketEvent::Denied);
        }
    }
}

/// Why a request cannot go to a bucket origin.
#[derive(Debug, Clone, Copy)]
pub(super) enum BucketRefusal {
    /// Only GET and HEAD are sent to a bucket with the edge's credentials.
    Method,
    Bucket(BucketError),
}

impl BucketRefusal {
    pub(super) fn log(self, host: &mut impl Host, stats: &BucketStats, label: &str) {
        if let BucketRefusal::Bucket(BucketError::NoClock) = self {
            stats.count(host, BucketEvent::SignFailure);
        }
        log::warn!(
            "not sending the request to bucket {label}: {}",
            self.reason()
        );
    }

    pub(super) fn reason(self) -> &'static str {
        match self {
            BucketRefusal::Method => "bucket origins serve GET and HEAD only",
            BucketRefusal::Bucket(e) => e.as_str(),
        }
    }

    /// The local reply when the routed request cannot go to its bucket.
    pub(super) fn send(self, host: &mut impl Host, stats: &BucketStats) {
        type Reply<'a> = (u32, &'a str, &'a str, Option<(&'a str, &'a str)>);
        let (status, code, details, extra): Reply = match self {
            BucketRefusal::Method => (
                405,
                "bucket-method",
                "origin_pull_bucket_method",
                Some(("allow", "GET, HEAD")),
            ),
            BucketRefusal::Bucket(BucketError::EmptyKey) => {
                (404, "bucket-no-key", "origin_pull_bucket_no_key", None)
            }
            BucketRefusal::Bucket(BucketError::UnsafeKey(_)) => {
                (400, "bucket-bad-key", "origin_pull_bucket_bad_key", None)
            }
            BucketRefusal::Bucket(BucketError::NoClock) => {
                stats.count(host, BucketEvent::SignFailure);
                (
                    502,
                    "bucket-sign-failed",
                    "origin_pull_bucket_sign_failed",
                    None,
                )
            }
        };
        let mut headers = vec![("content-type", "text/plain"), (ERROR_HEADER, code)];
        headers.extend(extra);
        let body = format!("origin-pull: {}\n", self.reason());
        host.send_local_reply(status, details, &headers, body.as_bytes());
    }
}
