//! Object-storage bucket origins (S3 and the S3-compatible APIs of OSS, COS, MinIO, Ceph, R2):
//! how a client path becomes an object key, what a GET/HEAD/PUT to the bucket looks like on the
//! wire, and its SigV4 signature for private buckets. No proxy-wasm here; the clock is the
//! caller's (`Host::now_ms`).

use super::sigv4::{self, Signer};
use crate::host::{Host, MetricKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    /// `bucket.endpoint/key`: the default of S3, OSS and COS.
    VirtualHosted,
    /// `endpoint/bucket/key`: MinIO, Ceph and IP endpoints.
    Path,
}

impl Addressing {
    pub fn as_str(self) -> &'static str {
        match self {
            Addressing::VirtualHosted => "virtual-hosted",
            Addressing::Path => "path",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Bucket {
    pub name: String,
    pub region: String,
    pub key_prefix: String,
    pub addressing: Addressing,
    /// The `Host` the bucket is addressed by (and signed with).
    pub authority: String,
    /// `None`: a public bucket, requests go unsigned.
    pub signer: Option<Signer>,
}

/// One request to the bucket: the path to send and the headers to set on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRequest {
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
}

/// Why no request could be made for a client path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketError {
    /// `/` (or only the query string): S3 would list the bucket.
    EmptyKey,
    /// The host's clock said 0: a signature would be dated 1970 and refused.
    NoClock,
    /// The decoded key is not one a bucket and a web source agree on; refused, never rewritten.
    UnsafeKey(KeyFault),
}

/// What makes a decoded object key unsafe. Storage and web servers that resolve these after the
/// edge checked the key (or its signature) would read another key than the one checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFault {
    /// A `.` or `..` segment (`/a/../b`, `%2e%2e/`, `..%2f`).
    DotSegment,
    /// An empty segment other than a trailing `/` (`a//b`, `//a`): servers merge slashes.
    EmptySegment,
    /// A backslash (`\`, `%5C`): some servers treat it as `/`.
    Backslash,
}

impl BucketError {
    pub fn as_str(self) -> &'static str {
        match self {
            BucketError::EmptyKey => "the request names no object (empty key)",
            BucketError::NoClock => "the clock is unavailable, so the request cannot be signed",
            BucketError::UnsafeKey(KeyFault::DotSegment) => {
                "the object key has a '.' or '..' segment once decoded (refused, not normalized)"
            }
            BucketError::UnsafeKey(KeyFault::EmptySegment) => {
                "the object key has an empty segment ('//') once decoded (refused, not normalized)"
            }
            BucketError::UnsafeKey(KeyFault::Backslash) => {
                "the object key has a backslash once decoded (refused, not normalized)"
            }
        }
    }
}

/// The key a client `:path` names, before any `key_prefix`: query and fragment dropped,
/// percent-decoded (every `%XX`, once), the leading '/' removed. A key with a `.`/`..` segment,
/// an empty segment (a trailing '/' aside) or a backslash is refused: the bucket read, the mirror
/// source's path, the `key_prefixes` check and the copy-back all use this one key, so none of
/// them may be a different object than the others.
pub fn client_key(client_path: &str) -> Result<Vec<u8>, BucketError> {
    let path = client_path.split(['?', '#']).next().unwrap_or("");
    let mut key = sigv4::percent_decode(path);
    if key.first() == Some(&b'/') {
        key.remove(0);
    }
    if key.is_empty() {
        return Err(BucketError::EmptyKey);
    }
    if key.contains(&b'\\') {
        return Err(BucketError::UnsafeKey(KeyFault::Backslash));
    }
    let segments = key.split(|b| *b == b'/').count();
    for (index, segment) in key.split(|b| *b == b'/').enumerate() {
        if segment == b"." || segment == b".." {
            return Err(BucketError::UnsafeKey(KeyFault::DotSegment));
        }
        if segment.is_empty() && index + 1 < segments {
            return Err(BucketError::UnsafeKey(KeyFault::EmptySegment));
        }
    }
    Ok(key)
}

impl Bucket {
    /// The object key for a client `:path`: [`client_key`] behind the key prefix.
    pub fn object_key(&self, client_path: &str) -> Result<Vec<u8>, BucketError> {
        let key = client_key(client_path)?;
        let mut full = Vec::with_capacity(self.key_prefix.len() + key.len());
        full.extend_from_slice(self.key_prefix.as_bytes());
        full.extend_from_slice(&key);
        Ok(full)
    }

    /// The request for `key`, signed when the bucket is private. The query string is never sent
    /// to a bucket: `?acl`, `?list-type=2` and friends would address other resources with the
    /// edge's credentials.
    pub fn request(
        &self,
        method: &str,
        key: &[u8],
        payload_sha256: &str,
        now_ms: u64,
    ) -> Result<ObjectRequest, BucketError> {
        let mut path = String::with_capacity(key.len() + self.name.len() + 8);
        path.push('/');
        if self.addressing == Addressing::Path {
            path.push_str(&self.name);
            path.push('/');
        }
        path.push_str(&sigv4::encode_path(key));
        let Some(signer) = &self.signer else {
            return Ok(ObjectRequest {
                path,
                headers: Vec::new(),
            });
        };
        if now_ms == 0 {
            return Err(BucketError::NoClock);
        }
        let amz_date = sigv4::amz_date(now_ms);
        let authorization = signer.authorization(
            &sigv4::Request {
                method,
                canonical_uri: &path,
                query: "",
                headers: &[
                    ("host", &self.authority),
                    ("x-amz-content-sha256", payload_sha256),
                    ("x-amz-date", &amz_date),
                ],
                payload_sha256,
            },
            &amz_date,
        );
        Ok(ObjectRequest {
            path,
            headers: vec![
                ("x-amz-date", amz_date),
                ("x-amz-content-sha256", payload_sha256.to_string()),
                ("authorization", authorization),
            ],
        })
    }
}

/// Client headers never forwarded to a bucket: the client's own credentials, and `x-amz-*`
/// headers, which S3 requires to be signed (and which could change what the request does).
pub fn is_client_header_dropped(name: &str) -> bool {
    name.eq_ignore_ascii_case("authorization")
        || name
            .get(..6)
            .is_some_and(|p| p.eq_ignore_ascii_case("x-amz-"))
}

/// Counters for bucket origins and mirror back-to-origin, in Envoy's stats (`wasmcustom.<name>`
/// in `/stats`, `<name>` in `/stats/prometheus`). Ids are defined once per configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct BucketStats {
    ids: [Option<u32>; BucketEvent::ALL.len()],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketEvent {
    SignFailure,
    Denied,
    MirrorFetch,
    MirrorRedirect,
    MirrorSourceFailure,
    CopyBackDone,
    CopyBackFailed,
    CopyBackSkipped,
}

impl BucketEvent {
    pub const ALL: [BucketEvent; 8] = [
        BucketEvent::SignFailure,
        BucketEvent::Denied,
        BucketEvent::MirrorFetch,
        BucketEvent::MirrorRedirect,
        BucketEvent::MirrorSourceFailure,
        BucketEvent::CopyBackDone,
        BucketEvent::CopyBackFailed,
        BucketEvent::CopyBackSkipped,
    ];

    pub fn metric_name(self) -> &'static str {
        match self {
            BucketEvent::SignFailure => "origin_pull_bucket_sign_failures_total",
            BucketEvent::Denied => "origin_pull_bucket_denied_total",
            BucketEvent::MirrorFetch => "origin_pull_mirror_fetches_total",
            BucketEvent::MirrorRedirect => "origin_pull_mirror_redirects_total",
            BucketEvent::MirrorSourceFailure => "origin_pull_mirror_source_failures_total",
            BucketEvent::CopyBackDone => "origin_pull_mirror_copy_back_done_total",
            BucketEvent::CopyBackFailed => "origin_pull_mirror_copy_back_failed_total",
            BucketEvent::CopyBackSkipped => "origin_pull_mirror_copy_back_skipped_total",
        }
    }
}

impl BucketStats {
    pub fn define(host: &mut impl Host) -> BucketStats {
        let mut stats = BucketStats::default();
        for (slot, event) in stats.ids.iter_mut().zip(BucketEvent::ALL) {
            *slot = host.define_metric(MetricKind::Counter, event.metric_name());
        }
        stats
    }

    pub fn count(&self, host: &mut impl Host, event: BucketEvent) {
        let index = BucketEvent::ALL
            .iter()
            .position(|e| *e == event)
            .unwrap_or(0);
        if let Some(Some(id)) = self.ids.get(index) {
            host.increment_metric(*id, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::sigv4::Secret;
    use crate::testing::FakeHost;

    fn bucket(addressing: Addressing, private: bool) -> Bucket {
        Bucket {
            name: "examplebucket".into(),
            region: "us-east-1".into(),
            key_prefix: "media/".into(),
            addressing,
            authority: match addressing {
                Addressing::VirtualHosted => "examplebucket.s3.amazonaws.com".into(),
                Addressing::Path => "s3.amazonaws.com".into(),
            },
            signer: private.then(|| {
                Signer::new(
                    "AKIAIOSFODNN7EXAMPLE".into(),
                    Secret::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into()),
                    "us-east-1".into(),
                    "s3".into(),
                )
            }),
        }
    }

    #[test]
    fn keys_from_client_paths() {
        let b = bucket(Addressing::VirtualHosted, false);
        assert_eq!(b.object_key("/a%20b.jpg?x=1").unwrap(), b"media/a b.jpg");
        assert_eq!(b.object_key("/dir/").unwrap(), b"media/dir/");
        assert_eq!(b.object_key("/"), Err(BucketError::EmptyKey));
        assert_eq!(b.object_key("/?list-type=2"), Err(BucketError::EmptyKey));
        assert_eq!(b.object_key("/a%2Fb").unwrap(), b"media/a/b");
        assert_eq!(b.object_key("/..x/y..").unwrap(), b"media/..x/y..");
        assert_eq!(b.object_key("/%252e%252e/x").unwrap(), b"media/%2e%2e/x");
    }

    /// Issue 13: keys that storage or a web source could resolve to another object are refused
    /// (never signed, never sent), however they are spelled.
    #[test]
    fn unsafe_keys_are_refused_not_rewritten() {
        let b = bucket(Addressing::Path, true);
        let dot = Err(BucketError::UnsafeKey(KeyFault::DotSegment));
        for path in [
            "/../../other-bkt/key.txt",
            "/images/../private/a.txt",
            "/images/%2e%2e/private/a.txt",
            "/images/%2E%2E%2Fprivate/a.txt",
            "/images/..%2fprivate/a.txt",
            "/images/.%2E/a.txt",
            "/images/./a.txt",
            "/..",
            "/a/.",
            "/%2e",
            "/a/..?x=/b",
        ] {
            assert_eq!(b.object_key(path), dot, "{path}");
        }
        let empty = Err(BucketError::UnsafeKey(KeyFault::EmptySegment));
        for path in ["//etc/passwd", "/a//b", "/a/%2F/b", "/a%2F%2Fb"] {
            assert_eq!(b.object_key(path), empty, "{path}");
        }
        let backslash = Err(BucketError::UnsafeKey(KeyFault::Backslash));
        for path in ["/a\\..\\b", "/images/..%5Cprivate", "/a%5cb"] {
            assert_eq!(b.object_key(path), backslash, "{path}");
        }
    }

    #[test]
    fn public_requests_are_plain_and_drop_the_query() {
        let b = bucket(Addressing::Path, false);
        let key = b.object_key("/x y.jpg?acl").unwrap();
        let r = b
            .request("GET", &key, sigv4::EMPTY_PAYLOAD_SHA256, 1)
            .unwrap();
        assert_eq!(r.path, "/examplebucket/media/x%20y.jpg");
        assert!(r.headers.is_empty());
    }

    /// The AWS "GET Object" example without its Range header, and the same through path style.
    #[test]
    fn private_requests_are_signed() {
        let mut b = bucket(Addressing::VirtualHosted, true);
        b.key_prefix.clear();
        let key = b.object_key("/test.txt").unwrap();
        let r = b
            .request("GET", &key, sigv4::EMPTY_PAYLOAD_SHA256, 1_369_353_600_000)
            .unwrap();
        assert_eq!(r.path, "/test.txt");
        assert_eq!(r.headers[0], ("x-amz-date", "20130524T000000Z".into()));
        let authz = &r.headers[2].1;
        assert!(authz.starts_with("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature="), "{authz}");
        assert!(!authz.contains("wJalrXUtnFEMI"));
        assert_eq!(
            b.request("GET", &key, sigv4::EMPTY_PAYLOAD_SHA256, 0),
            Err(BucketError::NoClock)
        );
    }

    #[test]
    fn dropped_client_headers() {
        assert!(is_client_header_dropped("Authorization"));
        assert!(is_client_header_dropped("x-amz-security-token"));
        assert!(is_client_header_dropped("X-Amz-Date"));
        assert!(!is_client_header_dropped("range"));
        assert!(!is_client_header_dropped("x-am"));
    }

    #[test]
    fn stats_are_defined_once_and_counted() {
        let mut host = FakeHost::new(1);
        let stats = BucketStats::define(&mut host);
        stats.count(&mut host, BucketEvent::CopyBackDone);
        stats.count(&mut host, BucketEvent::CopyBackDone);
        assert_eq!(
            host.metric("origin_pull_mirror_copy_back_done_total"),
            Some(2)
        );
        assert_eq!(
            host.metric("origin_pull_bucket_sign_failures_total"),
            Some(0)
        );
    }
}
