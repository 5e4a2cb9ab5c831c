//! When does a failure block an origin? The rule, as pure functions over plain data: no host,
//! no shared data, no configuration types. Callers (the request flow today, an Envoy-retry
//! observer tomorrow) record a failure of kind K for origin O at time T and get a verdict;
//! `health` stores strikes and blocks in shared data with compare-and-swap.
//!
//! The rule (README "Origin detection and blocking"):
//! - a connect-level failure (connection refused, connect timeout, DNS failure, no healthy
//!   upstream) blocks at once: it says nothing about the URL, everything about the address;
//! - a response timeout, a reset after the connection was made, or (with `block_on_5xx`) a 5xx
//!   may be caused by the URL a client chose (a slow or crashing page). It is a *strike*; the
//!   origin is blocked when `threshold` strikes from distinct requests fall within `window_ms`
//!   (shared by every worker, so the count is per origin, not per worker);
//! - a strike is excused (not counted) when this worker saw the same origin answer a request
//!   that started after the failing attempt did, or less than [`EVIDENCE_MS`] before the
//!   failure: the origin is demonstrably serving, only this request failed;
//! - and when the same request already failed that way (timeout, reset, 5xx) on another
//!   origin: a URL that breaks every origin it is sent to accuses the URL. Only its first such
//!   failure counts, so a failover (another master, the slave) never adds strikes.

/// A success this recent (ms before the failure, or after the failed attempt started) shows the
/// origin is serving: the failure is the URL's, not the origin's.
pub const EVIDENCE_MS: u64 = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Refused, connect timeout, DNS failure, no healthy upstream: blocks at once.
    Connect,
    /// Connected, then reset / closed / broke the protocol before the response headers.
    Reset,
    /// Connected and sent the request; no response headers within the timeout.
    Timeout,
    /// Answered 5xx (only counted with `block_on_5xx`).
    ServerError,
}

impl FailureKind {
    /// Whether one failure of this kind is enough evidence on its own.
    pub fn blocks_at_once(self) -> bool {
        self == FailureKind::Connect
    }
}

pub use crate::types::Rule;

/// One counted failure of a request on an origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strike {
    pub at_ms: u64,
    /// Random id of the request (several attempts of one request count once).
    pub request: u64,
}

/// One failure to judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    /// When the failure was seen.
    pub at_ms: u64,
    /// When the failed attempt was sent.
    pub started_ms: u64,
    pub request: u64,
    /// When the latest request that this worker saw the origin answer was sent, if any.
    pub last_answer_ms: Option<u64>,
    /// The same request already timed out, was reset or got a counted 5xx on another origin.
    pub failed_elsewhere: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Blocking is disabled for this domain (`block_seconds: 0`).
    Disabled,
    /// The origin answered other requests meanwhile: this failure is the URL's.
    Excused,
    /// Counted; `count` strikes within the window, fewer than the threshold.
    Strike { count: u32 },
    /// Block the origin now (and forget its strikes).
    Block,
}

/// Whether the origin demonstrably served around the failure (see the module docs).
pub fn excused(failure: &Failure) -> bool {
    if failure.kind.blocks_at_once() {
        return false;
    }
    if failure.failed_elsewhere {
        return true;
    }
    let since = failure
        .started_ms
        .min(failure.at_ms.saturating_sub(EVIDENCE_MS));
    failure
        .last_answer_ms
        .is_some_and(|answered| answered >= since)
}

/// Judges `failure` against `strikes` (the origin's strikes as stored, any order), updating
/// them: expired strikes are dropped, a counted one is added, and all are cleared on `Block`.
pub fn judge(rule: &Rule, strikes: &mut Vec<Strike>, failure: &Failure) -> Verdict {
    if rule.block_ms == 0 {
        return Verdict::Disabled;
    }
    if failure.kind.blocks_at_once() {
        strikes.clear();
        return Verdict::Block;
    }
    if excused(failure) {
        return Verdict::Excused;
    }
    let oldest = failure.at_ms.saturating_sub(rule.window_ms);
    strikes.retain(|s| s.at_ms > oldest && s.at_ms <= failure.at_ms);
    if !strikes.iter().any(|s| s.request == failure.request) {
        strikes.push(Strike {
            at_ms: failure.at_ms,
            request: failure.request,
        });
    }
    let count = u32::try_from(strikes.len()).unwrap_or(u32::MAX);
    if count >= rule.threshold.max(1) {
        strikes.clear();
        return Verdict::Block;
    }
    // Bounded whatever the stored value said: only the newest matter.
    let keep = usize::try_from(crate::config::MAX_FAILURE_THRESHOLD).unwrap_or(usize::MAX);
    if strikes.len() > keep {
        strikes.sort_by_key(|s| s.at_ms);
        let extra = strikes.len() - keep;
        strikes.drain(..extra);
    }
    Verdict::Strike { count }
}

const STRIKES_VERSION: u8 = 1;

pub fn encode_strikes(strikes: &[Strike]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + strikes.len() * 16);
    out.push(STRIKES_VERSION);
    for s in strikes {
        out.extend_from_slice(&s.at_ms.to_le_bytes());
        out.extend_from_slice(&s.request.to_le_bytes());
    }
    out
}

/// `None` for bytes this version did not write.
pub fn decode_strikes(bytes: &[u8]) -> Option<Vec<Strike>> {
    let (&version, rest) = bytes.split_first()?;
    if version != STRIKES_VERSION || rest.len() % 16 != 0 {
        return None;
    }
    rest.chunks_exact(16)
        .map(|chunk| {
            let at_ms = u64::from_le_bytes(chunk.get(..8)?.try_into().ok()?);
            let request = u64::from_le_bytes(chunk.get(8..)?.try_into().ok()?);
            Some(Strike { at_ms, request })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: Rule = Rule {
        block_ms: 60_000,
        threshold: 3,
        window_ms: 10_000,
    };

    fn failure(kind: FailureKind, at_ms: u64, request: u64) -> Failure {
        Failure {
            kind,
            at_ms,
            started_ms: at_ms.saturating_sub(5),
            request,
            last_answer_ms: None,
            failed_elsewhere: false,
        }
    }

    #[test]
    fn connect_failures_block_at_once() {
        let mut strikes = vec![];
        let f = failure(FailureKind::Connect, 100_000, 1);
        assert_eq!(judge(&RULE, &mut strikes, &f), Verdict::Block);
        // Even when the origin answered a moment ago: a refused connection is the address's.
        let f = Failure {
            last_answer_ms: Some(100_000),
            ..f
        };
        assert_eq!(judge(&RULE, &mut strikes, &f), Verdict::Block);
    }

    #[test]
    fn one_timeout_reset_or_5xx_is_only_a_strike() {
        for kind in [
            FailureKind::Timeout,
            FailureKind::Reset,
            FailureKind::ServerError,
        ] {
            let mut strikes = vec![];
            let f = failure(kind, 100_000, 1);
            assert_eq!(
                judge(&RULE, &mut strikes, &f),
                Verdict::Strike { count: 1 },
                "{kind:?}"
            );
            // The same request failing again (another attempt) counts once.
            assert_eq!(judge(&RULE, &mut strikes, &f), Verdict::Strike { count: 1 });
        }
    }

    #[test]
    fn threshold_strikes_from_distinct_requests_within_the_window_block() {
        let mut strikes = vec![];
        let t = 100_000;
        assert_eq!(
            judge(&RULE, &mut strikes, &failure(FailureKind::Timeout, t, 1)),
            Verdict::Strike { count: 1 }
        );
        assert_eq!(
            judge(&RULE, &mut strikes, &failure(FailureKind::Reset, t + 1, 2)),
            Verdict::Strike { count: 2 }
        );
        assert_eq!(
            judge(
                &RULE,
                &mut strikes,
                &failure(FailureKind::Timeout, t + 2, 3)
            ),
            Verdict::Block
        );
        assert!(strikes.is_empty(), "a block starts the count again");
    }

    #[test]
    fn strikes_older_than_the_window_expire() {
        let mut strikes = vec![];
        let t = 100_000;
        judge(&RULE, &mut strikes, &failure(FailureKind::Timeout, t, 1));
        judge(
            &RULE,
            &mut strikes,
            &failure(FailureKind::Timeout, t + 1, 2),
        );
        // t is a whole window before: gone; t + 1 still counts.
        let late = failure(FailureKind::Timeout, t + RULE.window_ms, 3);
        assert_eq!(
            judge(&RULE, &mut strikes, &late),
            Verdict::Strike { count: 2 }
        );
    }

    #[test]
    fn a_recent_answer_of_the_origin_excuses_a_strike() {
        let mut strikes = vec![];
        // A slow URL: sent at t, timed out 1 s later; another request sent after t answered.
        let slow = Failure {
            kind: FailureKind::Timeout,
            at_ms: 101_000,
            started_ms: 100_000,
            request: 1,
            last_answer_ms: Some(100_400),
            failed_elsewhere: false,
        };
        assert_eq!(judge(&RULE, &mut strikes, &slow), Verdict::Excused);
        // A resetting URL: fails in 2 ms; the origin answered a request sent 300 ms earlier.
        let reset = Failure {
            kind: FailureKind::Reset,
            at_ms: 100_002,
            started_ms: 100_000,
            request: 2,
            last_answer_ms: Some(99_700),
            failed_elsewhere: false,
        };
        assert_eq!(judge(&RULE, &mut strikes, &reset), Verdict::Excused);
        assert!(strikes.is_empty());
        // A hung origin: the last request it answered was sent before this one.
        let hung = Failure {
            last_answer_ms: Some(99_000),
            ..slow
        };
        assert_eq!(
            judge(&RULE, &mut strikes, &hung),
            Verdict::Strike { count: 1 }
        );
    }

    #[test]
    fn only_a_requests_first_failure_counts() {
        // The hostile URL failed on the first master; the other master and the slave fail it
        // too: the URL is to blame, not them.
        let mut strikes = vec![];
        let retry = Failure {
            failed_elsewhere: true,
            ..failure(FailureKind::Reset, 100_000, 1)
        };
        assert_eq!(judge(&RULE, &mut strikes, &retry), Verdict::Excused);
        let timeout = Failure {
            kind: FailureKind::Timeout,
            ..retry
        };
        assert_eq!(judge(&RULE, &mut strikes, &timeout), Verdict::Excused);
        // A refused connection still blocks: it is about the address.
        let refused = Failure {
            kind: FailureKind::Connect,
            ..retry
        };
        assert_eq!(judge(&RULE, &mut strikes, &refused), Verdict::Block);
    }

    #[test]
    fn threshold_one_blocks_on_the_first_strike_and_zero_seconds_never() {
        let one = Rule {
            threshold: 1,
            ..RULE
        };
        let mut strikes = vec![];
        let f = failure(FailureKind::Timeout, 100_000, 1);
        assert_eq!(judge(&one, &mut strikes, &f), Verdict::Block);
        let off = Rule {
            block_ms: 0,
            ..RULE
        };
        let c = failure(FailureKind::Connect, 100_000, 1);
        assert_eq!(judge(&off, &mut strikes, &c), Verdict::Disabled);
    }

    #[test]
    fn strikes_round_trip_and_garbage_is_refused() {
        let strikes = vec![
            Strike {
                at_ms: 5,
                request: 7,
            },
            Strike {
                at_ms: u64::MAX,
                request: 0,
            },
        ];
        assert_eq!(decode_strikes(&encode_strikes(&strikes)), Some(strikes));
        assert_eq!(decode_strikes(&encode_strikes(&[])), Some(vec![]));
        assert_eq!(decode_strikes(&[]), None);
        assert_eq!(decode_strikes(&[1, 2, 3]), None);
        assert_eq!(decode_strikes(&[9]), None);
    }
}
