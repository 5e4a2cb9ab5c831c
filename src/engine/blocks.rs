//! Origin block state shared by every worker VM of the Envoy process.
//!
//! A block belongs to one origin address *as used by one domain* (see README "Origin detection
//! and blocking"): domains never skip an address because another domain blocked it, and a
//! domain with `block_seconds: 0` never writes or reads a block.
//!
//! Shared-data layout, every write a compare-and-swap (a conflict is re-read and retried):
//! - `origin_pull.block|<domain>|<origin>` → blocked-until (ms, u64 LE), one key per origin;
//! - `origin_pull.blocked|<domain>` → the latest blocked-until of any origin of the domain,
//!   raised before an origin key is written: one 8-byte read per request tells whether any
//!   origin of the domain can be blocked; only then are the keys of the origins the pick draws
//!   read. So a request's cost does not depend on how many origins are blocked elsewhere;
//! - `origin_pull.strikes|<domain>|<origin>` → recent strikes ([`crate::engine::verdict`]), written
//!   only when an origin fails.
//!
//! Every read goes to shared data (no per-worker cache), so a block applies to every worker as
//! soon as [`BlockTable::block`] returns. This worker also remembers which origins answered
//! recently ([`BlockTable::note_answer`]): that evidence excuses a strike.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use crate::types::FastHasher;

use crate::engine::verdict::{self, Failure, Rule, Strike, Verdict};
use crate::host::{Host, SharedSetError};

pub const BLOCK_KEY_PREFIX: &str = "origin_pull.block|";
pub const DOMAIN_KEY_PREFIX: &str = "origin_pull.blocked|";
pub const STRIKES_KEY_PREFIX: &str = "origin_pull.strikes|";
const MAX_CAS_ATTEMPTS: usize = 32;
/// Envoy's CAS tokens count up from 1 across all keys and never reach this, so a write with
/// it fails with `CasMismatch` whenever the key exists: a create-if-absent.
pub(crate) const CREATE_ONLY_CAS: u32 = u32::MAX;

/// Shared-data key of `label`'s block as used by `domain`.
pub fn block_key(domain: &str, label: &str) -> String {
    format!("{BLOCK_KEY_PREFIX}{domain}|{label}")
}

/// Shared-data key of the latest block of any origin of `domain`.
pub fn domain_key(domain: &str) -> String {
    format!("{DOMAIN_KEY_PREFIX}{domain}")
}

pub fn strikes_key(domain: &str, label: &str) -> String {
    format!("{STRIKES_KEY_PREFIX}{domain}|{label}")
}

#[derive(Debug, Default)]
pub struct BlockTable {
    /// Reused buffer for key names (the request path formats keys without allocating).
    key: RefCell<String>,
    /// When the latest request each origin answered on this worker was sent, by
    /// (configuration, origin slot); see [`BlockTable::note_answer`].
    answered: HashMap<u64, u64, BuildHasherDefault<FastHasher>>,
    answered_config: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockOutcome {
    /// The origin was not blocked (or its block had expired) and now is.
    Blocked,
    /// Another worker had already blocked it for at least as long.
    AlreadyBlocked,
    /// Blocking is disabled (`block_seconds: 0`).
    Disabled,
    /// Shared data kept changing under us or refused the write; logged.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnblockOutcome {
    /// The origin was blocked and no longer is.
    Unblocked,
    /// It was not blocked (never, expired, or lifted by someone else).
    NotBlocked,
    /// Shared data kept changing under us or refused the write; logged.
    Failed,
}

fn read_u64(bytes: Option<&[u8]>) -> Option<u64> {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
}

impl BlockTable {
    /// Reads a u64 key named `prefix` + `parts` joined by `|`, without allocating a name.
    fn read(&self, host: &impl Host, prefix: &str, parts: &[&str]) -> (Option<u64>, Option<u32>) {
        let mut key = self.key.borrow_mut();
        key.clear();
        key.push_str(prefix);
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                key.push('|');
            }
            key.push_str(part);
        }
        let (data, cas) = host.shared_get(&key);
        (read_u64(data.as_deref()), cas)
    }

    /// One 8-byte read: whether some origin of `domain` may be blocked at `now`. When false,
    /// no origin of the domain is blocked and nothing else needs reading.
    pub fn domain_has_blocks(&self, host: &impl Host, domain: &str, now_ms: u64) -> bool {
        self.read(host, DOMAIN_KEY_PREFIX, &[domain])
            .0
            .is_some_and(|until| until > now_ms)
    }

    pub fn is_blocked(&self, host: &impl Host, domain: &str, label: &str, now_ms: u64) -> bool {
        self.blocked_until(host, domain, label)
            .is_some_and(|until| until > now_ms)
    }

    pub fn blocked_until(&self, host: &impl Host, domain: &str, label: &str) -> Option<u64> {
        self.read(host, BLOCK_KEY_PREFIX, &[domain, label])
            .0
            .filter(|&until| until > 0)
    }

    /// Blocks `label` for `domain` until `now + duration_ms` with compare-and-swap, retrying
    /// on conflicts. The domain's key is raised first, so once the origin's key is written
    /// every reader sees the block.
    pub fn block(
        &mut self,
        host: &mut impl Host,
        domain: &str,
        label: &str,
        duration_ms: u64,
    ) -> BlockOutcome {
        if duration_ms == 0 {
            return BlockOutcome::Disabled;
        }
        let key = block_key(domain, label);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let now = host.now_ms();
            let until = now.saturating_add(duration_ms);
            let (data, cas) = host.shared_get(&key);
            let current = read_u64(data.as_deref()).filter(|&u| u > now);
            if current.is_some_and(|u| u >= until.saturating_sub(1_000)) {
                // Blocked by someone else within the last second: keep their window.
                return BlockOutcome::AlreadyBlocked;
            }
            if !self.raise_domain(host, domain, until) {
                break;
            }
            match host.shared_set(
                &key,
                &until.to_le_bytes(),
                Some(cas.unwrap_or(CREATE_ONLY_CAS)),
            ) {
                Ok(()) => return BlockOutcome::Blocked,
                Err(SharedSetError::CasMismatch) => continue,
                Err(SharedSetError::Other) => break,
            }
        }
        log::error!("{domain}: could not record the block of origin {label} in shared data");
        BlockOutcome::Failed
    }

    /// Raises the domain's latest blocked-until to at least `until`.
    fn raise_domain(&mut self, host: &mut impl Host, domain: &str, until: u64) -> bool {
        let key = domain_key(domain);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (data, cas) = host.shared_get(&key);
            if read_u64(data.as_deref()).is_some_and(|u| u >= until) {
                return true;
            }
            match host.shared_set(
                &key,
                &until.to_le_bytes(),
                Some(cas.unwrap_or(CREATE_ONLY_CAS)),
            ) {
                Ok(()) => return true,
                Err(SharedSetError::CasMismatch) => continue,
                Err(SharedSetError::Other) => return false,
            }
        }
        false
    }

    /// Lifts the block of `label` for `domain` early (an active probe saw it recover), with
    /// the same compare-and-swap retries as [`BlockTable::block`].
    pub fn unblock(&mut self, host: &mut impl Host, domain: &str, label: &str) -> UnblockOutcome {
        let key = block_key(domain, label);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let now = host.now_ms();
            let (data, cas) = host.shared_get(&key);
            let (Some(until), Some(cas)) = (read_u64(data.as_deref()), cas) else {
                return UnblockOutcome::NotBlocked;
            };
            if until <= now {
                return UnblockOutcome::NotBlocked;
            }
            match host.shared_set(&key, &0u64.to_le_bytes(), Some(cas)) {
                Ok(()) => return UnblockOutcome::Unblocked,
                Err(SharedSetError::CasMismatch) => continue,
                Err(SharedSetError::Other) => break,
            }
        }
        log::error!("{domain}: could not record the unblock of origin {label} in shared data");
        UnblockOutcome::Failed
    }

    /// Records a failure of `label` as used by `domain` and applies the verdict of
    /// [`verdict::judge`]: strikes are kept in shared data (compare-and-swap, so the count is
    /// per origin, not per worker); `Verdict::Block` blocks it for `rule.block_ms`. When shared
    /// data keeps refusing the strike (logged), the failure is not counted:
    /// `(Verdict::Excused, BlockOutcome::Failed)`.
    pub fn record_failure(
        &mut self,
        host: &mut impl Host,
        domain: &str,
        label: &str,
        rule: &Rule,
        failure: &Failure,
    ) -> (Verdict, BlockOutcome) {
        if rule.block_ms == 0 {
            return (Verdict::Disabled, BlockOutcome::Disabled);
        }
        if failure.kind.blocks_at_once() || verdict::excused(failure) || rule.threshold <= 1 {
            // Nothing to count in shared data.
            let verdict = verdict::judge(rule, &mut Vec::new(), failure);
            return match verdict {
                Verdict::Block => (verdict, self.block(host, domain, label, rule.block_ms)),
                other => (other, BlockOutcome::Disabled),
            };
        }
        let key = strikes_key(domain, label);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (data, cas) = host.shared_get(&key);
            let mut strikes: Vec<Strike> = data
                .as_deref()
                .and_then(verdict::decode_strikes)
                .unwrap_or_default();
            let verdict = verdict::judge(rule, &mut strikes, failure);
            let written = host.shared_set(
                &key,
                &verdict::encode_strikes(&strikes),
                Some(cas.unwrap_or(CREATE_ONLY_CAS)),
            );
            match written {
                Ok(()) if verdict == Verdict::Block => {
                    return (verdict, self.block(host, domain, label, rule.block_ms));
                }
                Ok(()) => return (verdict, BlockOutcome::Disabled),
                Err(SharedSetError::CasMismatch) => continue,
                Err(SharedSetError::Other) => break,
            }
        }
        log::error!("{domain}: could not record a failure of origin {label} in shared data");
        (Verdict::Excused, BlockOutcome::Failed)
    }

    /// This worker saw origin `slot` of configuration `config` answer a request sent at
    /// `sent_ms` (evidence that it is serving; see [`crate::engine::verdict`]). No shared data.
    pub fn note_answer(&mut self, config: usize, slot: u64, sent_ms: u64) {
        if self.answered_config != config {
            // Slots are numbered per configuration.
            self.answered.clear();
            self.answered_config = config;
        }
        let latest = self.answered.entry(slot).or_insert(sent_ms);
        if *latest < sent_ms {
            *latest = sent_ms;
        }
    }

    /// When the latest request that origin `slot` answered on this worker was sent.
    pub fn last_answer(&self, config: usize, slot: u64) -> Option<u64> {
        if self.answered_config != config {
            return None;
        }
        self.answered.get(&slot).copied()
    }
}

/// The warning logged when a passive failure blocks an origin. "failed (KIND); blocked for N s"
/// is what operators and chaos.py grep for; the exact end (ms since the epoch, the block table's
/// clock) follows, then, for a block by `strike_rule` (not at once), its threshold.
pub fn passive_block_line(
    domain: &str,
    role: &str,
    label: &str,
    answer: &str,
    block_ms: u64,
    until_ms: u64,
    strike_rule: Option<&Rule>,
) -> String {
    let why = strike_rule.map_or(String::new(), |rule| {
        format!(
            " ({} failed requests within {} s)",
            rule.threshold,
            rule.window_ms / 1000
        )
    });
    format!(
        "origin-pull: {domain}: {role} origin {label} failed ({answer}); blocked for {} s (until {until_ms} ms){why}",
        block_ms / 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::verdict::FailureKind;
    use crate::testing::FakeHost;

    const D: &str = "www.test.com";

    fn blocked(host: &FakeHost, label: &str) -> bool {
        let table = BlockTable::default();
        table.domain_has_blocks(host, D, host.now_ms)
            && table.is_blocked(host, D, label, host.now_ms)
    }

    #[test]
    fn block_is_seen_by_other_workers_and_expires() {
        let mut a = FakeHost::new(1);
        let mut b = a.sibling(2);
        let mut table_a = BlockTable::default();
        let table_b = BlockTable::default();
        assert!(!table_b.domain_has_blocks(&b, D, b.now_ms));
        assert_eq!(
            table_a.block(&mut a, D, "10.0.0.1:80", 60_000),
            BlockOutcome::Blocked
        );
        assert!(table_b.domain_has_blocks(&b, D, b.now_ms));
        assert!(table_b.is_blocked(&b, D, "10.0.0.1:80", b.now_ms));
        assert!(!table_b.is_blocked(&b, D, "10.0.0.2:80", b.now_ms));
        b.now_ms += 60_000;
        assert!(!table_b.domain_has_blocks(&b, D, b.now_ms));
        assert!(!table_b.is_blocked(&b, D, "10.0.0.1:80", b.now_ms));
    }

    #[test]
    fn a_block_belongs_to_the_domain_that_wrote_it() {
        let mut a = FakeHost::new(1);
        let mut table = BlockTable::default();
        table.block(&mut a, "a.com", "10.0.0.1:80", 60_000);
        assert!(table.is_blocked(&a, "a.com", "10.0.0.1:80", a.now_ms));
        assert!(!table.domain_has_blocks(&a, "b.com", a.now_ms));
        assert!(!table.is_blocked(&a, "b.com", "10.0.0.1:80", a.now_ms));
    }

    #[test]
    fn nothing_blocked_costs_one_read_of_nothing() {
        let a = FakeHost::new(1);
        let table = BlockTable::default();
        let reads = a.shared.borrow().reads.get();
        assert!(!table.domain_has_blocks(&a, D, a.now_ms));
        assert_eq!(a.shared.borrow().reads.get(), reads + 1);
    }

    #[test]
    fn cas_conflicts_are_retried_and_no_block_is_lost() {
        let mut a = FakeHost::new(1);
        let mut b = a.sibling(2);
        let mut table = BlockTable::default();
        table.block(&mut a, D, "x:1", 60_000);
        a.shared.borrow_mut().inject_cas_mismatches = 5;
        assert_eq!(table.block(&mut a, D, "y:1", 60_000), BlockOutcome::Blocked);
        assert_eq!(
            BlockTable::default().block(&mut b, D, "z:1", 60_000),
            BlockOutcome::Blocked
        );
        for label in ["x:1", "y:1", "z:1"] {
            assert!(blocked(&b, label), "{label} lost");
        }
    }

    #[test]
    fn endless_conflicts_give_up_with_a_log_line() {
        let mut a = FakeHost::new(1);
        let mut table = BlockTable::default();
        table.block(&mut a, D, "x:1", 60_000);
        a.shared.borrow_mut().inject_cas_mismatches = 1_000;
        assert_eq!(table.block(&mut a, D, "y:1", 60_000), BlockOutcome::Failed);
        assert!(a.logged("could not record the block of origin y:1"));
    }

    #[test]
    fn first_creation_cannot_overwrite_an_existing_key() {
        let mut a = FakeHost::new(1);
        let mut b = a.sibling(2);
        // b read "missing" earlier; a creates the key in between; b's create-only write must fail.
        BlockTable::default().block(&mut a, D, "x:1", 60_000);
        let create = b.shared_set(&block_key(D, "x:1"), &[0; 8], Some(CREATE_ONLY_CAS));
        assert_eq!(create, Err(SharedSetError::CasMismatch));
    }

    #[test]
    fn racing_writers_of_the_domain_key_keep_the_latest_block() {
        // b raises the domain key (its own, longer block) between a's read and a's write.
        let mut a = FakeHost::new(1);
        let b = a.sibling(2);
        let theirs = (a.now_ms + 120_000).to_le_bytes().to_vec();
        a.shared.borrow_mut().interleaved_write = Some((domain_key(D), theirs));
        assert_eq!(
            BlockTable::default().block(&mut a, D, "x:1", 60_000),
            BlockOutcome::Blocked
        );
        let (value, _) = b.shared_get(&domain_key(D));
        assert_eq!(read_u64(value.as_deref()), Some(a.now_ms + 120_000));
        assert!(blocked(&b, "x:1"));
    }

    #[test]
    fn racing_block_of_the_same_origin_keeps_one_window() {
        let mut a = FakeHost::new(1);
        let b = a.sibling(2);
        let theirs = (a.now_ms + 60_000).to_le_bytes().to_vec();
        a.shared.borrow_mut().interleaved_write = Some((block_key(D, "x:1"), theirs));
        let outcome = BlockTable::default().block(&mut a, D, "x:1", 60_000);
        assert_eq!(outcome, BlockOutcome::AlreadyBlocked);
        assert!(blocked(&b, "x:1"));
    }

    #[test]
    fn repeated_blocks_within_a_second_keep_the_first_window() {
        let mut a = FakeHost::new(1);
        let mut table = BlockTable::default();
        assert_eq!(table.block(&mut a, D, "x:1", 60_000), BlockOutcome::Blocked);
        a.now_ms += 500;
        assert_eq!(
            table.block(&mut a, D, "x:1", 60_000),
            BlockOutcome::AlreadyBlocked
        );
        assert_eq!(table.block(&mut a, D, "x:1", 0), BlockOutcome::Disabled);
    }

    #[test]
    fn garbage_in_shared_data_is_survived() {
        let mut a = FakeHost::new(1);
        a.shared_set(&block_key(D, "x:1"), &[1, 2, 3], None)
            .unwrap();
        a.shared_set(&domain_key(D), &[1, 2, 3], None).unwrap();
        a.shared_set(&strikes_key(D, "x:1"), &[7, 7], None).unwrap();
        let mut table = BlockTable::default();
        assert!(!table.domain_has_blocks(&a, D, a.now_ms));
        assert!(!table.is_blocked(&a, D, "x:1", a.now_ms));
        assert_eq!(table.block(&mut a, D, "x:1", 1_000), BlockOutcome::Blocked);
        assert!(blocked(&a, "x:1"));
        let failure = Failure {
            kind: FailureKind::Timeout,
            at_ms: a.now_ms,
            started_ms: a.now_ms,
            request: 1,
            last_answer_ms: None,
            failed_elsewhere: false,
        };
        let rule = Rule {
            block_ms: 1_000,
            threshold: 2,
            window_ms: 10_000,
        };
        let (verdict, _) = table.record_failure(&mut a, D, "x:1", &rule, &failure);
        assert_eq!(verdict, Verdict::Strike { count: 1 });
    }

    #[test]
    fn unblock_lifts_one_block_for_every_worker() {
        let mut a = FakeHost::new(1);
        let mut b = a.sibling(2);
        let mut table_a = BlockTable::default();
        let mut table_b = BlockTable::default();
        table_a.block(&mut a, D, "x:1", 60_000);
        table_a.block(&mut a, D, "y:1", 60_000);
        assert_eq!(table_b.unblock(&mut b, D, "x:1"), UnblockOutcome::Unblocked);
        assert_eq!(
            table_b.unblock(&mut b, D, "x:1"),
            UnblockOutcome::NotBlocked
        );
        assert_eq!(
            table_b.unblock(&mut b, D, "z:1"),
            UnblockOutcome::NotBlocked
        );
        assert!(!blocked(&a, "x:1"));
        assert!(blocked(&a, "y:1"));
        // Nothing stored yet: nothing to lift, and no key is created.
        let mut c = FakeHost::new(3);
        assert_eq!(
            BlockTable::default().unblock(&mut c, D, "x:1"),
            UnblockOutcome::NotBlocked
        );
        assert_eq!(c.shared_get(&block_key(D, "x:1")), (None, None));
    }

    #[test]
    fn unblock_retries_cas_conflicts_and_gives_up_loudly() {
        let mut a = FakeHost::new(1);
        let mut table = BlockTable::default();
        table.block(&mut a, D, "x:1", 60_000);
        a.shared.borrow_mut().inject_cas_mismatches = 5;
        assert_eq!(table.unblock(&mut a, D, "x:1"), UnblockOutcome::Unblocked);
        table.block(&mut a, D, "x:1", 60_000);
        a.shared.borrow_mut().inject_cas_mismatches = 1_000;
        assert_eq!(table.unblock(&mut a, D, "x:1"), UnblockOutcome::Failed);
        assert!(a.logged("could not record the unblock of origin x:1"));
    }

    fn timeout(host: &FakeHost, request: u64) -> Failure {
        Failure {
            kind: FailureKind::Timeout,
            at_ms: host.now_ms,
            started_ms: host.now_ms - 1_000,
            request,
            last_answer_ms: None,
            failed_elsewhere: false,
        }
    }

    const RULE: Rule = Rule {
        block_ms: 60_000,
        threshold: 3,
        window_ms: 10_000,
    };

    #[test]
    fn strikes_are_counted_per_origin_across_workers() {
        let mut a = FakeHost::new(1);
        let mut b = a.sibling(2);
        let (mut ta, mut tb) = (BlockTable::default(), BlockTable::default());
        let f = timeout(&a, 1);
        assert_eq!(
            ta.record_failure(&mut a, D, "x:1", &RULE, &f).0,
            Verdict::Strike { count: 1 }
        );
        // Conflicts on the strikes key are retried, not lost.
        b.shared.borrow_mut().inject_cas_mismatches = 3;
        let f = timeout(&b, 2);
        assert_eq!(
            tb.record_failure(&mut b, D, "x:1", &RULE, &f).0,
            Verdict::Strike { count: 2 }
        );
        assert!(!blocked(&a, "x:1"));
        // Another domain's strikes are its own.
        let f = timeout(&a, 3);
        assert_eq!(
            ta.record_failure(&mut a, "other.com", "x:1", &RULE, &f).0,
            Verdict::Strike { count: 1 }
        );
        let f = timeout(&a, 4);
        assert_eq!(
            ta.record_failure(&mut a, D, "x:1", &RULE, &f),
            (Verdict::Block, BlockOutcome::Blocked)
        );
        assert!(blocked(&b, "x:1"));
    }

    #[test]
    fn a_connect_failure_blocks_at_once_and_zero_seconds_never() {
        let mut a = FakeHost::new(1);
        let mut t = BlockTable::default();
        let f = Failure {
            kind: FailureKind::Connect,
            ..timeout(&a, 1)
        };
        assert_eq!(
            t.record_failure(&mut a, D, "x:1", &RULE, &f),
            (Verdict::Block, BlockOutcome::Blocked)
        );
        let off = Rule {
            block_ms: 0,
            ..RULE
        };
        assert_eq!(
            t.record_failure(&mut a, D, "y:1", &off, &f),
            (Verdict::Disabled, BlockOutcome::Disabled)
        );
        assert!(!blocked(&a, "y:1"));
    }

    #[test]
    fn answers_seen_by_this_worker_are_evidence_per_configuration() {
        let mut t = BlockTable::default();
        t.note_answer(1, 7, 100);
        t.note_answer(1, 7, 90);
        assert_eq!(t.last_answer(1, 7), Some(100));
        assert_eq!(t.last_answer(1, 8), None);
        assert_eq!(t.last_answer(2, 7), None);
        t.note_answer(2, 8, 5);
        assert_eq!(t.last_answer(1, 7), None, "another configuration's slots");
    }
}
