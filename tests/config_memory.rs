//! The compiled configuration's heap per domain stays within a budget (issue 12: 10,000 domains
//! in at most 200 MB of Envoy RSS, which holds one compiled copy per VM: 2 on the main thread,
//! one per worker). `make scale` measures the RSS in Envoy; this catches the cause on the host
//! in a second: a per-domain field that grew by a few hundred bytes cost 32 MB of RSS at
//! 10,000 domains before `make scale` was next run (the retriable-status list kept for every
//! domain, 2d9b4c0).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use origin_pull::config::parse;

/// Counts the bytes live on the heap (this test binary runs one test: no other thread allocates).
struct LiveBytes;

static LIVE: AtomicIsize = AtomicIsize::new(0);

fn live() -> isize {
    LIVE.load(Ordering::SeqCst)
}

#[allow(unsafe_code)] // a GlobalAlloc is unsafe by definition; it only forwards to System.
unsafe impl GlobalAlloc for LiveBytes {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::SeqCst);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::SeqCst);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: LiveBytes = LiveBytes;

/// Heap bytes one compiled domain may hold on this (64-bit) host; the wasm32 module's are
/// smaller (4-byte pointers and lengths). Measured 2026-11-30 for the scale domain below:
/// 3,085 bytes with the retriable-status list every domain used to keep, 2,061 without it,
/// 1,347 once the routes shared their strings, `retry_on` was a constant and the probe boxed,
/// 1,284 with the default `failover.methods` shared.
const BUDGET_PER_DOMAIN: usize = 1_600;

/// `make scale`'s domains: 3 weighted master IPs and 1 slave IP each, the default rules.
fn scale_config(n: usize) -> Vec<u8> {
    let ip = |j: usize| {
        format!(
            "127.{}.{}.{}",
            10 + j / 62_500,
            (j / 250) % 250,
            j % 250 + 1
        )
    };
    let domains: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"domain":"d{i}.scale.test","master":{{"ips":["{}:8081:1","{}:8081:2","{}:8081:3"]}},"slave":{{"ips":["{}:8081"]}}}}"#,
                ip(4 * i),
                ip(4 * i + 1),
                ip(4 * i + 2),
                ip(4 * i + 3)
            )
        })
        .collect();
    format!(r#"{{"domains":[{}]}}"#, domains.join(",")).into_bytes()
}

#[test]
fn a_compiled_domain_stays_within_its_heap_budget() {
    let n = 10_000;
    let json = scale_config(n);
    let before = live();
    let config = parse(&json).expect("the scale configuration is valid");
    let held = live() - before;
    assert_eq!(config.domains.len(), n);
    let per_domain = usize::try_from(held).unwrap_or(0) / n;
    println!("compiled configuration: {held} bytes for {n} domains, {per_domain} per domain");
    assert!(
        per_domain <= BUDGET_PER_DOMAIN,
        "a compiled domain holds {per_domain} bytes of heap (budget {BUDGET_PER_DOMAIN}): \
         at 10,000 domains and 4 VMs that is {} MB of Envoy's RSS",
        per_domain * n * 4 / 1_000_000
    );
    drop(config);
}
