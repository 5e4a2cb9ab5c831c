//! origin-pull: CDN origin-pull behaviour as a proxy-wasm HTTP filter.
//!
//! Everything but `filter` (the proxy-wasm glue) is plain Rust that never touches proxy-wasm:
//! `config` (raw → validated → compiled, immutable), `engine` (what happens to a request:
//! selection, the block table, verdicts, the exchange state machine, the per-attempt observer,
//! probes, copy-back, metrics) and `s3` (SigV4, bucket object requests), all behind the
//! [`host::Host`] trait so they are unit-tested natively with a fake host (`testing`: tests and
//! bench harnesses only). `render` and `status` are the native CLI's.

pub mod config;
pub mod engine;
pub mod headers;
pub mod host;
#[cfg(not(target_arch = "wasm32"))]
pub mod render;
pub mod s3;
#[cfg(not(target_arch = "wasm32"))]
pub mod status;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod types;

#[cfg(target_arch = "wasm32")]
mod filter;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Git revision the build came from (`unknown` outside a git checkout; see build.rs).
pub const GIT_REVISION: &str = env!("ORIGIN_PULL_GIT_REVISION");
/// `0.1.0 (rev 1234abcd5678)`: what the filter logs at start and `--version` prints.
pub const BUILD: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (rev ",
    env!("ORIGIN_PULL_GIT_REVISION"),
    ")"
);
