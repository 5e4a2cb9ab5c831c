//! AWS Signature Version 4 (header form) for S3-style requests: the scheme S3 and the
//! S3-compatible APIs of OSS, COS, MinIO, Ceph and R2 accept. Built on RustCrypto's `sha2` and
//! `hmac` (see README "Bucket origins" for why not the `aws-sigv4` crate). S3 paths are never
//! normalized: the canonical URI is the request path exactly as sent.
//!
//! The secret only ever lives in [`Secret`], whose `Debug` prints nothing of it, and in the
//! derived signing key cache.

use std::cell::RefCell;
use std::fmt;
use std::fmt::Write as _;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// Hex SHA-256 of the empty payload (GET, HEAD).
pub const EMPTY_PAYLOAD_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// A secret access key. Never printed: `Debug` and `Display` show `(redacted)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: String) -> Secret {
        Secret(text)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(redacted)")
    }
}

/// Access key id, secret, region and service: everything that signs, plus the signing key of
/// the current day (four HMACs saved per request).
#[derive(Clone)]
pub struct Signer {
    pub access_key_id: String,
    secret: Secret,
    pub region: String,
    pub service: String,
    day_key: RefCell<Option<(String, [u8; 32])>>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("access_key_id", &self.access_key_id)
            .field("secret", &self.secret)
            .field("region", &self.region)
            .field("service", &self.service)
            .finish()
    }
}

/// One request to sign. `canonical_uri` is the path as sent (already percent-encoded, see
/// [`encode_path`]); `query` the raw query string (decoded and re-encoded here); `headers` the
/// headers to sign, `host`, `x-amz-date` and `x-amz-content-sha256` included.
pub struct Request<'a> {
    pub method: &'a str,
    pub canonical_uri: &'a str,
    pub query: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub payload_sha256: &'a str,
}

impl Signer {
    pub fn new(access_key_id: String, secret: Secret, region: String, service: String) -> Signer {
        Signer {
            access_key_id,
            secret,
            region,
            service,
            day_key: RefCell::new(None),
        }
    }

    /// The `Authorization` header value for `request` at `amz_date` (`YYYYMMDDTHHMMSSZ`).
    pub fn authorization(&self, request: &Request, amz_date: &str) -> String {
        let (canonical, signed_headers) = canonical_request(request);
        let day = amz_date.get(..8).unwrap_or(amz_date);
        let scope = format!("{day}/{}/{}/aws4_request", self.region, self.service);
        let string_to_sign = format!(
            "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
            hex(&Sha256::digest(canonical.as_bytes()))
        );
        let key = self.day_key(day);
        let signature = hex(&hmac(&key, string_to_sign.as_bytes()));
        format!(
            "{ALGORITHM} Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            self.access_key_id
        )
    }

    fn day_key(&self, day: &str) -> [u8; 32] {
        if let Some((cached_day, key)) = self.day_key.borrow().as_ref() {
            if cached_day == day {
                return *key;
            }
        }
        let mut secret = String::with_capacity(4 + self.secret.0.len());
        secret.push_str("AWS4");
        secret.push_str(&self.secret.0);
        let k = hmac(secret.as_bytes(), day.as_bytes());
        let k = hmac(&k, self.region.as_bytes());
        let k = hmac(&k, self.service.as_bytes());
        let k = hmac(&k, b"aws4_request");
        *self.day_key.borrow_mut() = Some((day.to_string(), k));
        k
    }
}

/// The canonical request and the `SignedHeaders` list.
pub fn canonical_request(request: &Request) -> (String, String) {
    let mut headers: Vec<(String, String)> = Vec::with_capacity(request.headers.len());
    for (name, value) in request.headers {
        let name = name.to_ascii_lowercase();
        let value = collapse_spaces(value);
        match headers.iter_mut().find(|(n, _)| *n == name) {
            // Repeated headers: values joined with ',' in the order given.
            Some((_, joined)) => {
                joined.push(',');
                joined.push_str(&value);
            }
            None => headers.push((name, value)),
        }
    }
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    let mut canonical = String::with_capacity(256);
    canonical.push_str(request.method);
    canonical.push('\n');
    canonical.push_str(request.canonical_uri);
    canonical.push('\n');
    canonical.push_str(&canonical_query(request.query));
    canonical.push('\n');
    for (name, value) in &headers {
        canonical.push_str(name);
        canonical.push(':');
        canonical.push_str(value);
        canonical.push('\n');
    }
    canonical.push('\n');
    let signed: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    let signed = signed.join(";");
    canonical.push_str(&signed);
    canonical.push('\n');
    canonical.push_str(request.payload_sha256);
    (canonical, signed)
}

/// Trims and collapses runs of white space to one space, as AWS canonical header values do.
fn collapse_spaces(value: &str) -> String {
    value.split_ascii_whitespace().collect::<Vec<_>>().join(" ")
}

/// `a=1&b&c=%41` → sorted `name=value` pairs, each decoded then encoded the AWS way.
pub fn canonical_query(raw: &str) -> String {
    if raw.is_empty() {
        return String::new();
    }
    let mut pairs: Vec<(String, String)> = raw
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (
                encode(&percent_decode(name), true),
                encode(&percent_decode(value), true),
            )
        })
        .collect();
    pairs.sort();
    let mut out = String::with_capacity(raw.len() + 8);
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(name);
        out.push('=');
        out.push_str(value);
    }
    out
}

/// An object key (raw bytes) as an S3 request path segment sequence: every byte but the
/// unreserved ones and '/' percent-encoded (upper-case hex). Used both on the wire and as the
/// canonical URI, so the two never differ.
pub fn encode_path(raw: &[u8]) -> String {
    encode(raw, false)
}

fn encode(raw: &[u8], encode_slash: bool) -> String {
    let mut out = String::with_capacity(raw.len() + 8);
    for &b in raw {
        let keep = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (b == b'/' && !encode_slash);
        if keep {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `%XX` → byte; anything else (a stray '%' included) is kept as is.
pub fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes.get(i).copied().unwrap_or(0);
        if b == b'%' {
            let hi = bytes.get(i + 1).and_then(|c| char::from(*c).to_digit(16));
            let lo = bytes.get(i + 2).and_then(|c| char::from(*c).to_digit(16));
            if let (Some(hi), Some(lo)) = (hi, lo) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length; the error branch cannot happen.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return [0; 32];
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// `x-amz-date` for a Unix time in milliseconds: `YYYYMMDDTHHMMSSZ` (UTC).
pub fn amz_date(now_ms: u64) -> String {
    let secs = now_ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil: proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests;
