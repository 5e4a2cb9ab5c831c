//! Origin block state shared by every worker VM of the Envoy process.
//!
//! One shared-data key holds the whole table (origin label → blocked-until), so a request
//! costs one read however many origins are configured, and an update is one compare-and-swap.
//! Each VM keeps the decoded table and only re-decodes when the CAS token changed.
//!
//! The request path reads the key on every request that has an alternative origin, although
//! each read copies the value into the VM (a hostcall plus a call back into the VM to allocate):
//! proxy-wasm has no read of the CAS token alone, so skipping reads would mean a window in which
//! a block written by another worker is not yet honoured here — and a block must apply to every
//! worker at once (a dead origin gets exactly one failed request). The key is absent, and the
//! read copies nothing, until the first block.

use crate::host::{Host, LogLevel, SharedSetError};

pub const BLOCKS_KEY: &str = "origin_pull.blocks";
const FORMAT_VERSION: u8 = 1;
const MAX_CAS_ATTEMPTS: usize = 32;
/// Envoy's CAS tokens count up from 1 across all keys and never reach this, so a write with
/// it fails with `CasMismatch` whenever the key exists: a create-if-absent.
pub(crate) const CREATE_ONLY_CAS: u32 = u32::MAX;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockEntry {
    pub label: String,
    pub until_ms: u64,
}

#[derive(Debug, Default)]
pub struct BlockTable {
    cas: Option<u32>,
    entries: Vec<BlockEntry>,
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

impl BlockTable {
    /// Re-reads the shared table now; decodes only when it changed since the last read.
    pub fn refresh(&mut self, host: &impl Host) {
        let (data, cas) = host.shared_get(BLOCKS_KEY);
        if cas.is_some() && cas == self.cas {
            return;
        }
        self.cas = cas;
        self.entries = match data {
            Some(bytes) => decode(&bytes).unwrap_or_else(|| {
                host.log(LogLevel::Warn, "origin-pull: shared block table is unreadable; treating every origin as unblocked");
                Vec::new()
            }),
            None => Vec::new(),
        };
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn is_blocked(&self, label: &str, now_ms: u64) -> bool {
        self.entries
            .iter()
            .any(|e| e.until_ms > now_ms && e.label == label)
    }

    pub fn blocked_until(&self, label: &str) -> Option<u64> {
        self.entries
            .iter()
            .find(|e| e.label == label)
            .map(|e| e.until_ms)
    }

    /// Blocks `label` until `now + duration_ms` with compare-and-swap, retrying on conflicts,
    /// and drops expired entries while it is at it.
    pub fn block(&mut self, host: &mut impl Host, label: &str, duration_ms: u64) -> BlockOutcome {
        if duration_ms == 0 {
            return BlockOutcome::Disabled;
        }
        for _ in 0..MAX_CAS_ATTEMPTS {
            let now = host.now_ms();
            let until = now.saturating_add(duration_ms);
            let (data, cas) = host.shared_get(BLOCKS_KEY);
            let mut entries = match data.as_deref().map(decode) {
                Some(Some(entries)) => entries,
                Some(None) => {
                    host.log(
                        LogLevel::Warn,
                        "origin-pull: shared block table is unreadable; rewriting it",
                    );
                    Vec::new()
                }
                None => Vec::new(),
            };
            entries.retain(|e| e.until_ms > now);
            match entries.iter_mut().find(|e| e.label == label) {
                Some(existing) if existing.until_ms >= until.saturating_sub(1_000) => {
                    // Blocked by someone else within the last second: keep their window.
                    self.cas = cas;
                    self.entries = entries;
                    return BlockOutcome::AlreadyBlocked;
                }
                Some(existing) => existing.until_ms = until,
                None => entries.push(BlockEntry {
                    label: label.to_string(),
                    until_ms: until,
                }),
            }
            let bytes = encode(&entries);
            match host.shared_set(BLOCKS_KEY, &bytes, Some(cas.unwrap_or(CREATE_ONLY_CAS))) {
                Ok(()) => {
                    // Our own write changed the token; the next refresh re-reads it.
                    self.cas = None;
                    self.entries = entries;
                    return BlockOutcome::Blocked;
                }
                Err(SharedSetError::CasMismatch) => continue,
                Err(SharedSetError::Other) => break,
            }
        }
        host.log(
            LogLevel::Error,
            &format!("origin-pull: could not record the block of origin {label} in shared data"),
        );
        BlockOutcome::Failed
    }

    /// Lifts the block of `label` early (an active probe saw it recover), with the same
    /// compare-and-swap retries as [`BlockTable::block`].
    pub fn unblock(&mut self, host: &mut impl Host, label: &str) -> UnblockOutcome {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let now = host.now_ms();
            let (data, cas) = host.shared_get(BLOCKS_KEY);
            let (Some(data), Some(cas)) = (data, cas) else {
                return UnblockOutcome::NotBlocked;
            };
            let Some(mut entries) = decode(&data) else {
                // Unreadable: `block` rewrites it; nothing of ours to lift.
                return UnblockOutcome::NotBlocked;
            };
            let was_blocked = entries.iter().any(|e| e.label == label && e.until_ms > now);
            entries.retain(|e| e.until_ms > now && e.label != label);
            if !was_blocked {
                return UnblockOutcome::NotBlocked;
            }
            match host.shared_set(BLOCKS_KEY, &encode(&entries), Some(cas)) {
                Ok(()) => {
                    self.cas = None;
                    self.entries = entries;
                    return UnblockOutcome::Unblocked;
                }
                Err(SharedSetError::CasMismatch) => continue,
                Err(SharedSetError::Other) => break,
            }
        }
        host.log(
            LogLevel::Error,
            &format!("origin-pull: could not record the unblock of origin {label} in shared data"),
        );
        UnblockOutcome::Failed
    }

    /// Number of origins blocked at `now_ms` (for logs and gauges).
    pub fn blocked_count(&self, now_ms: u64) -> usize {
        self.entries.iter().filter(|e| e.until_ms > now_ms).count()
    }
}

pub(crate) fn encode(entries: &[BlockEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + entries.len() * 32);
    out.push(FORMAT_VERSION);
    for entry in entries {
        let label = entry.label.as_bytes();
        let len = u16::try_from(label.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&entry.until_ms.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(label.get(..usize::from(len)).unwrap_or(label));
    }
    out
}

pub(crate) fn decode(bytes: &[u8]) -> Option<Vec<BlockEntry>> {
    let (&version, mut rest) = bytes.split_first()?;
    if version != FORMAT_VERSION {
        return None;
    }
    let mut entries = Vec::new();
    while !rest.is_empty() {
        let until = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
        let len = usize::from(u16::from_le_bytes(rest.get(8..10)?.try_into().ok()?));
        let label = std::str::from_utf8(rest.get(10..10 + len)?).ok()?;
        entries.push(BlockEntry {
            label: label.to_string(),
            until_ms: until,
        });
        rest = rest.get(10 + len..)?;
    }
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;

    #[test]
    fn block_is_seen_by_other_workers_and_expires() {
        let mut a = FakeHost::new(1);
        let mut b = a.sibling(2);
        let mut table_a = BlockTable::default();
        let mut table_b = BlockTable::default();
        assert_eq!(
            table_a.block(&mut a, "10.0.0.1:80", 60_000),
            BlockOutcome::Blocked
        );
        table_b.refresh(&b);
        assert!(table_b.is_blocked("10.0.0.1:80", b.now_ms));
        assert!(!table_b.is_blocked("10.0.0.2:80", b.now_ms));
        b.now_ms += 60_000;
        assert!(!table_b.is_blocked("10.0.0.1:80", b.now_ms));
        // An expired entry is dropped by the next write.
        assert_eq!(
            table_b.block(&mut b, "10.0.0.2:80", 60_000),
            BlockOutcome::Blocked
        );
        table_a.refresh(&a);
        assert_eq!(table_a.blocked_until("10.0.0.1:80"), None);
        assert_eq!(table_a.blocked_count(b.now_ms), 1);
    }

    #[test]
    fn cas_conflicts_are_retried_and_no_block_is_lost() {
        let mut a = FakeHost::new(1);
        let mut b = a.sibling(2);
        let mut table = BlockTable::default();
        table.block(&mut a, "x:1", 60_000);
        a.shared.borrow_mut().inject_cas_mismatches = 5;
        assert_eq!(table.block(&mut a, "y:1", 60_000), BlockOutcome::Blocked);
        assert_eq!(
            BlockTable::default().block(&mut b, "z:1", 60_000),
            BlockOutcome::Blocked
        );
        let mut check = BlockTable::default();
        check.refresh(&b);
        for label in ["x:1", "y:1", "z:1"] {
            assert!(check.is_blocked(label, b.now_ms), "{label} lost");
        }
    }

    #[test]
    fn endless_conflicts_give_up_with_a_log_line() {
        let mut a = FakeHost::new(1);
        let mut table = BlockTable::default();
        table.block(&mut a, "x:1", 60_000);
        a.shared.borrow_mut().inject_cas_mismatches = 1_000;
        assert_eq!(table.block(&mut a, "y:1", 60_000), BlockOutcome::Failed);
        assert!(a.logged("could not record the block of origin y:1"));
    }

    #[test]
    fn first_creation_cannot_overwrite_an_existing_table() {
        let mut a = FakeHost::new(1);
        let mut b = a.sibling(2);
        // b read "missing" earlier; a creates the key in between; b's create-only write must fail.
        BlockTable::default().block(&mut a, "x:1", 60_000);
        let create = b.shared_set(BLOCKS_KEY, &encode(&[]), Some(CREATE_ONLY_CAS));
        assert_eq!(create, Err(SharedSetError::CasMismatch));
    }

    fn entry(label: &str, until_ms: u64) -> BlockEntry {
        BlockEntry {
            label: label.into(),
            until_ms,
        }
    }

    #[test]
    fn racing_first_creation_of_the_key_keeps_both_blocks() {
        // Both workers saw no key; b creates it between a's read and a's create-only write.
        let mut a = FakeHost::new(1);
        let b = a.sibling(2);
        let theirs = encode(&[entry("y:1", a.now_ms + 60_000)]);
        a.shared.borrow_mut().interleaved_write = Some((BLOCKS_KEY.into(), theirs));
        assert_eq!(
            BlockTable::default().block(&mut a, "x:1", 60_000),
            BlockOutcome::Blocked
        );
        let mut check = BlockTable::default();
        check.refresh(&b);
        assert!(check.is_blocked("x:1", b.now_ms) && check.is_blocked("y:1", b.now_ms));
    }

    #[test]
    fn racing_update_keeps_the_other_workers_block() {
        let mut a = FakeHost::new(1);
        let b = a.sibling(2);
        let mut table = BlockTable::default();
        table.block(&mut a, "z:1", 60_000);
        let until = a.now_ms + 60_000;
        let theirs = encode(&[entry("z:1", until), entry("y:1", until)]);
        a.shared.borrow_mut().interleaved_write = Some((BLOCKS_KEY.into(), theirs));
        assert_eq!(table.block(&mut a, "x:1", 60_000), BlockOutcome::Blocked);
        let mut check = BlockTable::default();
        check.refresh(&b);
        for label in ["x:1", "y:1", "z:1"] {
            assert!(check.is_blocked(label, b.now_ms), "{label} lost");
        }
    }

    #[test]
    fn repeated_blocks_within_a_second_keep_the_first_window() {
        let mut a = FakeHost::new(1);
        let mut table = BlockTable::default();
        assert_eq!(table.block(&mut a, "x:1", 60_000), BlockOutcome::Blocked);
        a.now_ms += 500;
        assert_eq!(
            table.block(&mut a, "x:1", 60_000),
            BlockOutcome::AlreadyBlocked
        );
        assert_eq!(table.block(&mut a, "x:1", 0), BlockOutcome::Disabled);
    }

    #[test]
    fn garbage_in_shared_data_is_survived() {
        let mut a = FakeHost::new(1);
        a.shared_set(BLOCKS_KEY, &[1, 2, 3], None).unwrap();
        let mut table = BlockTable::default();
        table.refresh(&a);
        assert!(table.is_empty());
        assert_eq!(table.block(&mut a, "x:1", 1_000), BlockOutcome::Blocked);
        table.refresh(&a);
        assert!(table.is_blocked("x:1", a.now_ms));
    }

    #[test]
    fn unblock_lifts_one_block_for_every_worker() {
        let mut a = FakeHost::new(1);
        let mut b = a.sibling(2);
        let mut table_a = BlockTable::default();
        let mut table_b = BlockTable::default();
        table_a.block(&mut a, "x:1", 60_000);
        table_a.block(&mut a, "y:1", 60_000);
        assert_eq!(table_b.unblock(&mut b, "x:1"), UnblockOutcome::Unblocked);
        assert_eq!(table_b.unblock(&mut b, "x:1"), UnblockOutcome::NotBlocked);
        assert_eq!(table_b.unblock(&mut b, "z:1"), UnblockOutcome::NotBlocked);
        table_a.refresh(&a);
        assert!(!table_a.is_blocked("x:1", a.now_ms));
        assert!(table_a.is_blocked("y:1", a.now_ms));
        // Nothing stored yet: nothing to lift, and no key is created.
        let mut c = FakeHost::new(3);
        assert_eq!(
            BlockTable::default().unblock(&mut c, "x:1"),
            UnblockOutcome::NotBlocked
        );
        assert_eq!(c.shared_get(BLOCKS_KEY), (None, None));
    }

    #[test]
    fn unblock_retries_cas_conflicts_and_gives_up_loudly() {
        let mut a = FakeHost::new(1);
        let mut table = BlockTable::default();
        table.block(&mut a, "x:1", 60_000);
        a.shared.borrow_mut().inject_cas_mismatches = 5;
        assert_eq!(table.unblock(&mut a, "x:1"), UnblockOutcome::Unblocked);
        table.block(&mut a, "x:1", 60_000);
        a.shared.borrow_mut().inject_cas_mismatches = 1_000;
        assert_eq!(table.unblock(&mut a, "x:1"), UnblockOutcome::Failed);
        assert!(a.logged("could not record the unblock of origin x:1"));
    }

    #[test]
    fn encoding_round_trips() {
        let entries = vec![
            BlockEntry {
                label: "1.2.3.4:80".into(),
                until_ms: 5,
            },
            BlockEntry {
                label: "[::1]:443".into(),
                until_ms: u64::MAX,
            },
        ];
        assert_eq!(decode(&encode(&entries)).unwrap(), entries);
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[9]), None);
    }
}
