//! Two workers racing on the shared block table: no block is lost, whatever the interleaving
//! and the CAS conflicts.

use std::collections::HashSet;

use proptest::prelude::*;

use origin_pull::engine::blocks::{block_key, domain_key, BlockOutcome, BlockTable};
use origin_pull::host::Host;
use origin_pull::testing::FakeHost;

// ------------------------------------------------------------------ shared block state

/// One step of two workers racing on the block table: worker `worker` blocks `label`; when
/// `race` is set, the other worker blocks `race` between this worker's read and its write
/// (as a real read-modify-write would); `mismatches` more CAS conflicts are injected.
#[derive(Debug, Clone)]
pub(crate) struct BlockStep {
    worker: usize,
    label: u8,
    race: Option<u8>,
    mismatches: u32,
}

pub(crate) fn block_step() -> impl Strategy<Value = BlockStep> {
    (
        0usize..2,
        0u8..12,
        prop::option::of(0u8..12),
        prop_oneof![4 => Just(0u32), 1 => 1u32..8],
    )
        .prop_map(|(worker, label, race, mismatches)| BlockStep {
            worker,
            label,
            race,
            mismatches,
        })
}

fn label(n: u8) -> String {
    format!("127.0.5.{n}:80")
}

const DOMAIN: &str = "www.test.com";

pub(crate) fn no_block_is_lost(steps: &[BlockStep]) -> Result<(), TestCaseError> {
    let first = FakeHost::new(3);
    let mut hosts = [first.sibling(5), first.sibling(9)];
    let mut tables = [BlockTable::default(), BlockTable::default()];
    let mut expected: HashSet<String> = HashSet::new();
    for step in steps {
        let host = &mut hosts[step.worker];
        let mut theirs = None;
        if let Some(other) = step.race {
            // The other worker's block: it raises the domain key (the write both workers
            // race on) between this worker's read and write, then writes its origin's key.
            let until = (host.now_ms + 60_000).to_le_bytes().to_vec();
            let raced = if other == step.label {
                block_key(DOMAIN, &label(other))
            } else {
                theirs = Some((block_key(DOMAIN, &label(other)), until.clone()));
                domain_key(DOMAIN)
            };
            host.shared.borrow_mut().interleaved_write = Some((raced, until));
            expected.insert(label(other));
        }
        host.shared.borrow_mut().inject_cas_mismatches = step.mismatches;
        let outcome = tables[step.worker].block(host, DOMAIN, &label(step.label), 60_000);
        prop_assert_ne!(outcome, BlockOutcome::Failed);
        expected.insert(label(step.label));
        // This worker did not write (already blocked): the other worker's write lands anyway.
        let pending = host.shared.borrow_mut().interleaved_write.take();
        for (key, value) in pending.into_iter().chain(theirs) {
            let _ = host.shared_set(&key, &value, None);
        }
    }
    for (host, table) in hosts.iter().zip(tables.iter()) {
        prop_assert!(table.domain_has_blocks(host, DOMAIN, host.now_ms));
        for l in &expected {
            prop_assert!(
                table.is_blocked(host, DOMAIN, l, host.now_ms),
                "block of {} lost",
                l
            );
        }
    }
    Ok(())
}
