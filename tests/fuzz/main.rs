//! Property-based fuzzing (proptest, stable Rust) of the configuration parser and of the
//! per-request decisions. `make unit` runs a bounded number of cases; `make fuzz` runs many
//! more (`PROPTEST_CASES`). The properties: nothing panics, every error names a field on one
//! line, and whatever the client, the origins and shared data do, a request only ever goes to
//! an origin of its own domain's configuration.
//!
//! Two configuration streams: `valid_config()` builds configurations every rule accepts, so
//! every case reaches the request-flow property (asserted: `request_flow_property` fails when
//! fewer cases than the minimum reached it); `config_value()` leans towards invalid ones (about
//! 5 % accepted) for the parser's error shape. Each check has a test with a planted fault.

//! Through the public API with the shared `FakeHost` (`origin_pull::testing`): `configs`
//! (the generators and the parser's property), `requests` (the request-flow property),
//! `block_race` (racing block-table writers).

// Test code (as clippy.toml allows in `#[cfg(test)]`): an out-of-range index is a failed case.
#![allow(clippy::indexing_slicing)]

mod block_race;
mod configs;
mod requests;

use std::rc::Rc;

use proptest::prelude::*;
use serde_json::Value;

use origin_pull::config::{parse, FailoverMechanism};
use origin_pull::engine::exchange::ORIGINAL_DST_HEADER;
use origin_pull::headers::HeaderMap;
use origin_pull::testing::FakeHost;

use block_race::{block_step, no_block_is_lost};
use configs::{check_parse, config_value, valid_config};
use requests::{drive, request, Fault};

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn two_racing_workers_lose_no_block(steps in prop::collection::vec(block_step(), 1..30)) {
        no_block_is_lost(&steps)?;
    }

    #[test]
    fn parser_survives_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_parse(&bytes)?;
    }

    #[test]
    fn header_maps_from_any_bytes_are_read_in_bounds(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        pairs in prop::collection::vec(
            (prop::collection::vec(any::<u8>(), 0..12), prop::collection::vec(any::<u8>(), 0..12)),
            0..8,
        ),
    ) {
        // Whatever Envoy (or a corrupted buffer) hands over: no panic, no read out of bounds.
        let map = HeaderMap::from_wire(bytes);
        prop_assert!(map.iter_bytes().count() == map.len());
        let _ = (map.get(":authority"), map.to_pairs());
        // Any bytes, UTF-8 or not, come back as they went in.
        let encoded = HeaderMap::from_pairs(&pairs);
        let decoded = HeaderMap::from_wire(encoded.as_wire().to_vec());
        let read: Vec<(Vec<u8>, Vec<u8>)> =
            decoded.iter_bytes().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        prop_assert_eq!(read, pairs);
    }

    #[test]
    fn parser_survives_mutated_examples(
        example in prop::sample::select(&[
            include_str!("../../envoy/examples/demo.json"),
            include_str!("../../envoy/examples/weighted-ips.json"),
        ][..]),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut bytes = example.as_bytes().to_vec();
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        check_parse(&bytes)?;
    }

    #[test]
    fn parser_judges_random_configurations(config in config_value(false)) {
        check_parse(&serde_json::to_vec(&config).unwrap_or_default())?;
    }

    /// The separate invalid-leaning stream: the few configurations it gets accepted also go
    /// through the request flow.
    #[test]
    fn random_configurations_are_judged_and_served(
        config in config_value(true),
        requests in prop::collection::vec(request(), 1..8),
    ) {
        let bytes = serde_json::to_vec(&config).unwrap_or_default();
        if let Some(parsed) = check_parse(&bytes)? {
            // Both failover mechanisms: router-carried chains and callouts.
            let mut by_callout = parsed.clone();
            by_callout.envoy.failover = FailoverMechanism::Callout;
            drive(&Rc::new(parsed), &requests, None)?;
            drive(&Rc::new(by_callout), &requests, None)?;
        }
    }
}

// ------------------------------------------------------------------ the request-flow property

/// Runs the request-flow property over `cases` configurations from `configs` (each with up to
/// 8 requests) and counts the cases that reached it (their configuration was accepted). Fails
/// when the property fails, or when fewer than `min_reached` cases reached it.
fn request_flow_property(
    configs: impl Strategy<Value = Value>,
    cases: u32,
    min_reached: usize,
    fault: Option<Fault>,
) -> Result<usize, String> {
    use proptest::test_runner::{Config, TestRunner};
    use std::sync::atomic::{AtomicUsize, Ordering};

    let reached = AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(
            &(configs, prop::collection::vec(request(), 1..8)),
            |(config, requests)| {
                let bytes = serde_json::to_vec(&config).unwrap_or_default();
                if let Some(parsed) = check_parse(&bytes)? {
                    reached.fetch_add(1, Ordering::Relaxed);
                    // Both failover mechanisms: router-carried chains and callouts.
                    let mut by_callout = parsed.clone();
                    by_callout.envoy.failover = FailoverMechanism::Callout;
                    drive(&Rc::new(parsed), &requests, fault)?;
                    drive(&Rc::new(by_callout), &requests, fault)?;
                }
                Ok(())
            },
        )
        .map_err(|e| e.to_string())?;
    let reached = reached.into_inner();
    if reached < min_reached {
        return Err(format!(
            "only {reached} of {cases} cases reached the request-flow property (minimum {min_reached})"
        ));
    }
    Ok(reached)
}

/// `PROPTEST_CASES` (`make test`: 256, `make fuzz`: FUZZ_CASES), like the `proptest!` tests.
fn cases() -> u32 {
    proptest::test_runner::Config::default().cases
}

#[test]
fn valid_configurations_reach_the_request_flow() {
    // Valid by construction: every configuration is accepted (check_parse asserts the rest),
    // so every case reaches the property.
    let cases = cases();
    let strategy = valid_config().prop_map(|config| {
        let bytes = serde_json::to_vec(&config).unwrap_or_default();
        if let Err(e) = parse(&bytes) {
            panic!("the valid generator made a rejected configuration: {e}\n{config}");
        }
        config
    });
    let reached = request_flow_property(strategy, cases, cases as usize, None);
    assert_eq!(reached, Ok(cases as usize));
}

#[test]
fn the_minimum_of_reached_cases_catches_a_generator_of_rejected_configurations() {
    // PLANTED FAULT: the old invalid-leaning generator (about 5 % accepted) in place of the
    // valid one: the count falls below the minimum and the run fails.
    let result = request_flow_property(config_value(true), 64, 64, None);
    let err = result.expect_err("the minimum did not notice rejected configurations");
    assert!(
        err.contains("cases reached the request-flow property"),
        "{err}"
    );
}

#[test]
fn the_request_flow_property_catches_a_callout_to_an_unconfigured_origin() {
    // PLANTED FAULT: the filter's callouts are redirected to an origin no configuration names
    // (what a routing bug would do): the property fails on the first case that made a callout.
    fn redirect_callouts(host: &mut FakeHost) {
        for callout in &mut host.callouts {
            for (name, value) in &mut callout.headers {
                if name.eq_ignore_ascii_case(ORIGINAL_DST_HEADER) {
                    *value = "127.66.66.66:80".into();
                }
            }
            callout.cluster = "evil_cluster".into();
        }
    }
    let result = request_flow_property(valid_config(), 256, 0, Some(redirect_callouts));
    let err = result.expect_err("a callout to an unconfigured origin went unnoticed");
    assert!(err.contains("callout to"), "{err}");
}
