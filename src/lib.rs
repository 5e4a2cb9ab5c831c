//! origin-pull: CDN origin-pull behaviour as a proxy-wasm HTTP filter.
//!
//! Everything but `filter` is plain Rust that never touches proxy-wasm: `config` (parse,
//! validate, compile), `address` (origin strings), `select` (weighted polling), `health`
//! (shared block table), `failover` (judging answers), `exchange` (one request's flow) and
//! `s3` (SigV4, bucket object requests), all behind the [`host::Host`] trait so they are
//! unit-tested natively with a fake host (`testing`: tests and bench harnesses only).

pub mod address;
pub mod attempt;
pub mod chain;
pub mod config;
pub mod exchange;
pub mod failover;
pub mod health;
pub mod host;
pub mod metrics;
pub mod mirror;
pub mod probe;
#[cfg(not(target_arch = "wasm32"))]
pub mod render;
pub mod s3;
pub mod select;
#[cfg(not(target_arch = "wasm32"))]
pub mod status;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod verdict;

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
