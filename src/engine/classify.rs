//! What an origin's answer means: a status to judge by the failover rules, or a failure to
//! reach the origin at all; and which failures count against the origin's health
//! ([`failure_kind`], judged by [`crate::engine::verdict`]).

use crate::config::{Detection, FailoverPolicy};
use crate::engine::verdict::FailureKind;
use crate::host::Host;

/// Bits of Envoy's `response.flags` property (`StreamInfo::CoreResponseFlag`).
pub mod flags {
    pub const NO_HEALTHY_UPSTREAM: u64 = 1 << 1; // UH
    pub const UPSTREAM_REQUEST_TIMEOUT: u64 = 1 << 2; // UT
    pub const UPSTREAM_REMOTE_RESET: u64 = 1 << 4; // UR
    pub const UPSTREAM_CONNECTION_FAILURE: u64 = 1 << 5; // UF
    pub const UPSTREAM_CONNECTION_TERMINATION: u64 = 1 << 6; // UC
    pub const UPSTREAM_OVERFLOW: u64 = 1 << 7; // UO
    pub const UPSTREAM_RETRY_LIMIT_EXCEEDED: u64 = 1 << 15; // URX
    pub const UPSTREAM_PROTOCOL_ERROR: u64 = 1 << 23; // UPE
    pub const NO_CLUSTER_FOUND: u64 = 1 << 24; // NC
    pub const DNS_RESOLUTION_FAILURE: u64 = 1 << 26; // DF
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The origin answered with this status.
    Status(u32),
    /// TCP connect error or connect timeout, DNS failure, no healthy upstream: the address
    /// cannot be reached.
    ConnectError,
    /// Connected, then reset, closed or broke the protocol before the response headers: may be
    /// the URL's doing (failed over like a connect error, but blocks only on repeated evidence).
    Reset,
    /// The origin accepted the request but did not answer in time.
    Timeout,
    /// Envoy has no cluster of the name the filter routed to: a deployment error.
    NoCluster,
    /// A callout ended without response headers: reset mid-way, or larger than Envoy's async
    /// response buffer. The origin may be healthy, so this never blocks it.
    NoResponse,
}

impl Answer {
    pub fn is_unreachable(self) -> bool {
        !matches!(self, Answer::Status(_))
    }

    pub fn kind(self) -> &'static str {
        match self {
            Answer::Status(s) if (400..500).contains(&s) => "4xx",
            Answer::Status(s) if (500..600).contains(&s) => "5xx",
            Answer::Status(_) => "status",
            Answer::ConnectError => "connect_error",
            Answer::Reset => "reset",
            Answer::Timeout => "timeout",
            Answer::NoCluster => "no_cluster",
            Answer::NoResponse => "no_response",
        }
    }
}

/// Judges a routed response from its status and Envoy's response flags.
pub fn classify_routed(status: u32, response_flags: u64) -> Answer {
    use flags::*;
    if response_flags & NO_CLUSTER_FOUND != 0 {
        Answer::NoCluster
    } else if response_flags & UPSTREAM_REQUEST_TIMEOUT != 0 {
        Answer::Timeout
    } else if response_flags
        & (NO_HEALTHY_UPSTREAM
            | UPSTREAM_CONNECTION_FAILURE
            | UPSTREAM_RETRY_LIMIT_EXCEEDED
            | DNS_RESOLUTION_FAILURE)
        != 0
    {
        // UF covers refused connections and connect timeouts.
        Answer::ConnectError
    } else if response_flags
        & (UPSTREAM_REMOTE_RESET
            | UPSTREAM_CONNECTION_TERMINATION
            | UPSTREAM_OVERFLOW
            | UPSTREAM_PROTOCOL_ERROR)
        != 0
        || !(100..=599).contains(&status)
    {
        // Envoy's codec lets e.g. "HTTP/1.1 2000" through: a broken answer, never relayed
        // (it came over a working connection, so it is judged like a reset).
        Answer::Reset
    } else {
        Answer::Status(status)
    }
}

/// Envoy's own failure replies are short; only bodies this small are peeked at.
const PEEK_LIMIT: usize = 512;

/// Reads and judges the callout response being delivered; also returns its headers
/// (empty when it ended without any: reset, or over Envoy's async response buffer).
pub fn read_callout(
    host: &impl Host,
    num_headers: usize,
    body_size: usize,
) -> (Answer, Vec<(String, String)>) {
    if num_headers == 0 {
        return (Answer::NoResponse, Vec::new());
    }
    let headers = host.callout_response_headers();
    let status = headers
        .iter()
        .find(|(k, _)| k == ":status")
        .and_then(|(_, v)| v.parse::<u32>().ok())
        .unwrap_or(0);
    if !(100..=599).contains(&status) {
        // Envoy's codec lets e.g. "HTTP/1.1 2000" through: never relay it. A broken origin, as
        // for a routed answer (counted and blocked like a connection failure).
        return (Answer::ConnectError, Vec::new());
    }
    let peek = if matches!(status, 502..=504) && body_size <= PEEK_LIMIT {
        host.callout_response_body(body_size).unwrap_or_default()
    } else {
        Vec::new()
    };
    (classify_callout(status, &headers, &peek), headers)
}

/// Judges a callout response. Callouts carry no response flags: Envoy's own failure replies
/// are recognised by the router's `x-envoy-upstream-service-time`, which only responses that
/// came from an origin carry, and by the text of Envoy's local reply.
pub fn classify_callout(status: u32, headers: &[(String, String)], body_start: &[u8]) -> Answer {
    let from_origin = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("x-envoy-upstream-service-time"));
    if from_origin {
        return Answer::Status(status);
    }
    let starts = |prefix: &[u8]| body_start.starts_with(prefix);
    match status {
        504 if starts(b"upstream request timeout") => Answer::Timeout,
        503 | 502 if starts(b"no healthy upstream") => Answer::ConnectError,
        503 | 502
            if starts(b"upstream connect error")
                || starts(b"upstream reset")
                || starts(b"upstream connection") =>
        {
            // "upstream connect error or disconnect/reset before headers. reset reason:
            // connection failure|connection timeout|remote reset|connection termination|...":
            // only the first two are connect-level.
            if contains(body_start, b"reset reason: connection failure")
                || contains(body_start, b"reset reason: connection timeout")
                || contains(body_start, b"reset reason: remote connection failure")
                || contains(body_start, b"reset reason: local connection failure")
            {
                Answer::ConnectError
            } else {
                Answer::Reset
            }
        }
        _ => Answer::Status(status),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

impl FailoverPolicy {
    pub fn triggers(&self, answer: Answer) -> bool {
        match answer {
            Answer::Status(status) => self.status_triggers(status),
            Answer::ConnectError | Answer::Reset | Answer::NoCluster | Answer::NoResponse => {
                self.on_connect_error
            }
            Answer::Timeout => self.on_timeout,
        }
    }
}

/// Whether this answer counts against the origin's health, and how ([`crate::engine::verdict`]
/// decides whether it blocks).
pub fn failure_kind(answer: Answer, detection: &Detection) -> Option<FailureKind> {
    match answer {
        Answer::ConnectError => Some(FailureKind::Connect),
        Answer::Reset => Some(FailureKind::Reset),
        Answer::Timeout => Some(FailureKind::Timeout),
        Answer::Status(status) if detection.block_on_5xx && (500..600).contains(&status) => {
            Some(FailureKind::ServerError)
        }
        Answer::Status(_) => None,
        // A missing cluster is a deployment error that blocking cannot fix; a missing
        // response may be the object's size, not the origin's health.
        Answer::NoCluster | Answer::NoResponse => None,
    }
}

/// Hop-by-hop and framing headers that must not be copied between connections.
pub fn is_hop_by_hop(name: &str) -> bool {
    const HOP: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
        "trailer",
        "content-length",
        "proxy-authenticate",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// The header names a message's `Connection` headers list: hop-by-hop for that message too
/// (RFC 9110 §7.6.1), so never copied to the next connection. Lower-cased.
pub fn connection_options(headers: &[(String, String)]) -> Vec<String> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_options_are_the_listed_names() {
        let headers = vec![
            ("connection".to_string(), "Keep-Alive, X-Hop ,".to_string()),
            ("Connection".to_string(), "x-other".to_string()),
            ("x-hop".to_string(), "secret".to_string()),
        ];
        assert_eq!(
            connection_options(&headers),
            ["keep-alive", "x-hop", "x-other"]
        );
        assert!(connection_options(&[]).is_empty());
    }

    #[test]
    fn routed_answers() {
        assert_eq!(classify_routed(200, 0), Answer::Status(200));
        assert_eq!(classify_routed(404, 0), Answer::Status(404));
        assert_eq!(classify_routed(503, 0x20), Answer::ConnectError);
        assert_eq!(classify_routed(504, 0x4), Answer::Timeout);
        assert_eq!(classify_routed(503, 1 << 24), Answer::NoCluster);
        assert_eq!(classify_routed(503, 0), Answer::Status(503));
        // An origin's broken status line ("HTTP/1.1 2000") is a failure, never relayed.
        assert_eq!(classify_routed(2000, 0), Answer::Reset);
        assert_eq!(classify_routed(99, 0), Answer::Reset);
    }

    #[test]
    fn callout_answers() {
        let origin = vec![
            (":status".to_string(), "503".to_string()),
            ("x-envoy-upstream-service-time".to_string(), "3".to_string()),
        ];
        assert_eq!(
            classify_callout(503, &origin, b"upstream connect error"),
            Answer::Status(503)
        );
        let local = vec![(":status".to_string(), "503".to_string())];
        assert_eq!(
            classify_callout(
                503,
                &local,
                b"upstream connect error or disconnect/reset before headers. reset reason: connection failure"
            ),
            Answer::ConnectError
        );
        assert_eq!(
            classify_callout(504, &local, b"upstream request timeout"),
            Answer::Timeout
        );
        assert_eq!(classify_callout(404, &local, b""), Answer::Status(404));
    }

    #[test]
    fn failure_kinds() {
        let d = Detection {
            block_on_5xx: false,
            ..Detection::default()
        };
        assert_eq!(
            failure_kind(Answer::ConnectError, &d),
            Some(FailureKind::Connect)
        );
        assert_eq!(failure_kind(Answer::Reset, &d), Some(FailureKind::Reset));
        assert_eq!(
            failure_kind(Answer::Timeout, &d),
            Some(FailureKind::Timeout)
        );
        assert_eq!(failure_kind(Answer::Status(503), &d), None);
        assert_eq!(failure_kind(Answer::NoCluster, &d), None);
        assert_eq!(failure_kind(Answer::NoResponse, &d), None);
        let d = Detection {
            block_on_5xx: true,
            ..Detection::default()
        };
        assert_eq!(
            failure_kind(Answer::Status(503), &d),
            Some(FailureKind::ServerError)
        );
        assert_eq!(failure_kind(Answer::Status(404), &d), None);
    }

    #[test]
    fn resets_after_connect_are_told_from_connect_failures() {
        assert_eq!(
            classify_routed(503, flags::UPSTREAM_REMOTE_RESET),
            Answer::Reset
        );
        assert_eq!(
            classify_routed(503, flags::UPSTREAM_CONNECTION_TERMINATION),
            Answer::Reset
        );
        assert_eq!(
            classify_routed(503, flags::UPSTREAM_CONNECTION_FAILURE),
            Answer::ConnectError
        );
        let local = vec![(":status".to_string(), "503".to_string())];
        for (body, answer) in [
            (&b"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure, transport failure reason: delayed connect error: Connection refused"[..], Answer::ConnectError),
            (b"upstream connect error or disconnect/reset before headers. reset reason: connection timeout", Answer::ConnectError),
            (b"upstream connect error or disconnect/reset before headers. reset reason: connection termination", Answer::Reset),
            (b"upstream connect error or disconnect/reset before headers. reset reason: remote reset", Answer::Reset),
            (b"no healthy upstream", Answer::ConnectError),
        ] {
            assert_eq!(classify_callout(503, &local, body), answer, "{}", String::from_utf8_lossy(body));
        }
    }
}
