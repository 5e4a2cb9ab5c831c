use super::*;
use crate::config::parse;
use crate::testing::FakeHost;

fn config(extra: &str) -> Rc<PluginConfig> {
    Rc::new(
        parse(
            format!(
                r#"{{"domains":[{{"domain":"www.test.com","master":{{"ips":["10.0.0.1","10.0.0.2"],"protocol":"follow"}},
                "slave":{{"ips":["10.0.0.1"]}}}},
                {{"domain":"b.test.com","master":{{"ips":["10.0.0.7"]}}}}]{extra}}}"#
            )
            .as_bytes(),
        )
        .unwrap(),
    )
}

fn names(host: &FakeHost) -> Vec<&str> {
    host.metrics.iter().map(|(_, n, _)| n.as_str()).collect()
}

#[test]
fn nothing_is_defined_until_counted() {
    let mut host = FakeHost::new(1);
    let metrics = Metrics::new(config(""), Rc::default());
    assert!(host.metrics.is_empty(), "a configuration defines no stat");
    let m = metrics.origin(0, Role::Master, 1, Scheme::Https).unwrap();
    assert_eq!(m.label, "10.0.0.2:443");
    m.request(&mut host); // not per origin by default
    metrics.request(&mut host, 0);
    metrics.request(&mut host, 0);
    assert_eq!(
        names(&host),
        ["origin_pull_requests_total;domain=www.test.com"]
    );
    assert_eq!(
        host.metric("origin_pull_requests_total;domain=www.test.com"),
        Some(2)
    );
    assert!(metrics.origin(0, Role::Master, 2, Scheme::Http).is_none());
    assert!(metrics.origin(0, Role::Slave, 1, Scheme::Http).is_none());
    assert!(metrics.origin(1, Role::Slave, 0, Scheme::Http).is_none());
    assert!(metrics.origin(2, Role::Master, 0, Scheme::Http).is_none());
}

#[test]
fn failures_and_blocks_define_only_their_own_series() {
    let mut host = FakeHost::new(1);
    let metrics = Metrics::new(config(""), Rc::default());
    let m = metrics.origin(0, Role::Master, 1, Scheme::Http).unwrap();
    m.failure(&mut host, Answer::Status(503));
    m.failure(&mut host, Answer::Status(200)); // not a failure
    m.failure(&mut host, Answer::ConnectError);
    m.blocked(&mut host, BlockSource::Passive, Some(1_700_000_060_001));
    metrics.failover(&mut host, 0, true);
    let base = ";domain=www.test.com;origin=10.0.0.2:80";
    let mut got = names(&host);
    got.sort_unstable();
    let mut want = vec![
        format!("origin_pull_origin_failures_total{base};kind=5xx"),
        format!("origin_pull_origin_failures_total{base};kind=connect"),
        format!("origin_pull_origin_blocks_total{base};source=passive"),
        format!("origin_pull_origin_blocked{base}"),
        format!("origin_pull_origin_blocked_until_seconds{base}"),
        "origin_pull_failovers_total;domain=www.test.com;outcome=served".to_string(),
    ];
    want.sort_unstable();
    assert_eq!(got, want);
    assert_eq!(
        host.metric(&format!("origin_pull_origin_blocked{base}")),
        Some(1)
    );
    assert_eq!(
        host.metric(&format!("origin_pull_origin_blocked_until_seconds{base}")),
        Some(1_700_000_061)
    );
    m.unblocked(&mut host);
    assert_eq!(
        host.metric(&format!("origin_pull_origin_blocked{base}")),
        Some(0)
    );
    assert_eq!(
        host.metric(&format!("origin_pull_origin_blocked_until_seconds{base}")),
        Some(0)
    );
    assert_eq!(
        host.metric(&format!("origin_pull_origin_unblocks_total{base}")),
        Some(1)
    );
    // Probe successes are per-origin traffic (opt-in); failures are always counted.
    m.probe(&mut host, true);
    m.probe(&mut host, false);
    assert_eq!(
        host.metric(&format!("origin_pull_probes_total{base};result=failure")),
        Some(1)
    );
    assert_eq!(
        host.metric(&format!("origin_pull_probes_total{base};result=success")),
        None
    );
    let total: i64 = host.metrics.iter().map(|(_, _, v)| v).sum();
    assert_eq!(total, 6); // 5xx, connect, block, failover, unblock, probe failure; gauge back to 0
                          // Counters end in `_total`; the gauges are exactly these.
    let gauges = [
        "origin_pull_origin_blocked",
        "origin_pull_origin_blocked_until_seconds",
        "origin_pull_masters_available",
    ];
    for (kind, name, _) in &host.metrics {
        let base = name.split(';').next().unwrap();
        assert_eq!(*kind == MetricKind::Gauge, gauges.contains(&base), "{name}");
        assert!(
            *kind == MetricKind::Gauge || base.ends_with("_total"),
            "{name}"
        );
    }
}

#[test]
fn masters_available_is_defined_for_a_domain_once_it_is_set() {
    let mut host = FakeHost::new(1);
    let registry = Rc::new(RefCell::new(Registry::default()));
    let metrics = Metrics::new(config(""), registry.clone());
    let name = "origin_pull_masters_available;domain=www.test.com";
    assert_eq!(host.metric(name), None, "not defined by a configuration");
    // Masters: 10.0.0.1 and 10.0.0.2 on :80 and :443 (follow).
    metrics.set_masters_available(&mut host, 0, |_| false);
    assert_eq!(host.metric(name), Some(4));
    metrics.set_masters_available(&mut host, 0, |l| l.starts_with("10.0.0.1:"));
    assert_eq!(host.metric(name), Some(2));
    metrics.set_masters_available(&mut host, 0, |_| true);
    assert_eq!(host.metric(name), Some(0));
    metrics.set_masters_available(&mut host, 7, |_| true); // no such domain: no-op
    assert_eq!(host.metrics.len(), 1);
    // A later configuration of the VM refreshes it too (by the domain's name).
    let next = Metrics::new(config(""), registry);
    assert_eq!(next.availability_domains(), vec![0]);
    assert_eq!(host.defined, 1);
}

#[test]
fn per_origin_requests_are_opt_in_and_shared_by_roles() {
    let mut host = FakeHost::new(1);
    let metrics = Metrics::new(config(r#","metrics":{"per_origin":true}"#), Rc::default());
    // Master 10.0.0.1 and slave 10.0.0.1 over http are one origin: one series.
    let master = metrics.origin(0, Role::Master, 0, Scheme::Http).unwrap();
    let slave = metrics.origin(0, Role::Slave, 0, Scheme::Http).unwrap();
    master.request(&mut host);
    slave.request(&mut host);
    slave.probe(&mut host, true);
    assert_eq!(
        host.metric("origin_pull_origin_requests_total;domain=www.test.com;origin=10.0.0.1:80"),
        Some(2)
    );
    assert_eq!(
        host.metric(
            "origin_pull_probes_total;domain=www.test.com;origin=10.0.0.1:80;result=success"
        ),
        Some(1)
    );
    assert_eq!(host.metrics.len(), 2);
}

#[test]
fn a_name_is_defined_once_per_vm_across_configurations() {
    // Envoy returns a new id for every definition of a name: the VM's registry keeps one.
    let mut host = FakeHost::new(1);
    let registry = Rc::new(RefCell::new(Registry::default()));
    for _ in 0..3 {
        let metrics = Metrics::new(config(""), registry.clone());
        metrics.request(&mut host, 1);
        let m = metrics.origin(1, Role::Master, 0, Scheme::Http).unwrap();
        m.failure(&mut host, Answer::Timeout);
    }
    assert_eq!(host.defined, 2, "two names, each defined once");
    assert_eq!(
        host.metric(
            "origin_pull_origin_failures_total;domain=b.test.com;origin=10.0.0.7:80;kind=timeout"
        ),
        Some(3)
    );
    assert_eq!(registry.borrow().origin_series(), 1);
}

#[test]
fn per_origin_series_stop_at_the_cap_with_one_warning() {
    let mut host = FakeHost::new(1);
    let registry = Rc::new(RefCell::new(Registry::default()));
    let metrics = Metrics::new(
        config(r#","metrics":{"per_origin":true,"max_origin_series":3}"#),
        registry.clone(),
    );
    for target in 0..2 {
        for scheme in [Scheme::Http, Scheme::Https] {
            let m = metrics.origin(0, Role::Master, target, scheme).unwrap();
            m.request(&mut host);
            m.failure(&mut host, Answer::ConnectError);
        }
    }
    // Per-domain series are not capped.
    metrics.request(&mut host, 0);
    metrics.failover(&mut host, 1, false);
    let per_origin = names(&host)
        .into_iter()
        .filter(|n| n.contains(";origin="))
        .count();
    assert_eq!(per_origin, 3);
    assert_eq!(host.metrics.len(), 5);
    let warnings: Vec<_> = host
        .logs()
        .iter()
        .filter(|(_, m)| m.contains("the cap (metrics.max_origin_series)"))
        .cloned()
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0]
        .1
        .starts_with("origin-pull: 3 per-origin stat series defined"));
}

#[test]
fn gauges_defined_by_the_vm_follow_the_block_table() {
    let mut host = FakeHost::new(1);
    let registry = Rc::new(RefCell::new(Registry::default()));
    let metrics = Metrics::new(config(""), registry.clone());
    metrics
        .origin(1, Role::Master, 0, Scheme::Http)
        .unwrap()
        .blocked(&mut host, BlockSource::Probe, Some(1_700_000_002_000));
    let gauge = "origin_pull_origin_blocked;domain=b.test.com;origin=10.0.0.7:80";
    let until = "origin_pull_origin_blocked_until_seconds;domain=b.test.com;origin=10.0.0.7:80";
    assert_eq!(host.metric(gauge), Some(1));
    assert_eq!(host.metric(until), Some(1_700_000_002));
    let listed = registry.borrow().block_gauges();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].domain.as_str(), listed[0].label.as_str()),
        ("b.test.com", "10.0.0.7:80")
    );
    listed[0].record(&mut host, None);
    assert_eq!((host.metric(gauge), host.metric(until)), (Some(0), Some(0)));
    listed[0].record(&mut host, Some(1_700_000_009_500));
    assert_eq!(
        (host.metric(gauge), host.metric(until)),
        (Some(1), Some(1_700_000_010))
    );
    // Blocked again in a new configuration: listed once.
    let next = Metrics::new(config(""), registry.clone());
    next.origin(1, Role::Master, 0, Scheme::Http)
        .unwrap()
        .blocked(&mut host, BlockSource::Passive, None);
    assert_eq!(registry.borrow().block_gauges().len(), 1);
}

#[test]
fn separators_in_values_cannot_forge_tags() {
    assert_eq!(tag_value("a;kind=x y"), "a_kind_x_y");
}

/// Drives `requests` client requests of a callout domain (3 masters, a slave) through one
/// fake worker: every 7th master answers 404 (failover to the slave), every 11th refuses the
/// connection (a block, then the others), the rest 200; a tick (flush) every 13 requests when
/// the host keeps counters in the VM. Returns the host after a final tick.
fn drive_worker(mut host: FakeHost, metrics: &Rc<Metrics>, requests: u32) -> FakeHost {
    use crate::engine::classify::flags;
    use crate::engine::exchange::{Exchange, RequestInfo, ResponseStep};
    let config = metrics.config.clone().unwrap();
    let mut blocks = BlockTable::default();
    for i in 0..requests {
        host.now_ms += 3;
        let request = RequestInfo {
            authority: "www.test.com",
            scheme: "http",
            method: "GET",
            path: "/1.jpg",
            has_body: false,
            worker: "w",
            stats: crate::s3::bucket::BucketStats::default(),
            metrics: Some(metrics),
        };
        let mut ex = Exchange::start(&config, &mut blocks, &mut host, &request).unwrap();
        ex.keep_request_headers(&crate::headers::HeaderMap::from_pairs(&[(
            ":method", "GET",
        )]));
        let (status, flag) = match i {
            i if i % 11 == 0 => (503, flags::UPSTREAM_CONNECTION_FAILURE),
            i if i % 7 == 0 => (404, 0),
            _ => (200, 0),
        };
        if ex.on_response_headers(&mut host, &mut blocks, status, flag) == ResponseStep::Pause {
            if let Some(token) = host.callouts.last().map(|c| c.token) {
                host.respond(200, &[], b"x");
                ex.on_callout_response(&mut host, &mut blocks, token, 1, 1);
            }
        }
        if i % 13 == 12 {
            host.flush_counters();
        }
    }
    host.flush_counters();
    host
}

#[test]
fn counters_kept_in_the_vm_are_exact_after_a_flush() {
    let text = r#"{"envoy":{"failover":"callout"},"metrics":{"per_origin":true},"domains":[
        {"domain":"www.test.com","master":{"ips":["10.0.0.1","10.0.0.2","10.0.0.3"]},
         "slave":{"ips":["10.0.0.9"]},"detection":{"block_seconds":1}}]}"#;
    let config = Rc::new(parse(text.as_bytes()).unwrap());
    let requests_total = "origin_pull_requests_total;domain=www.test.com";
    // Two workers of one Envoy (shared block table), counting at once or kept in their VMs.
    let run = |buffered: bool| {
        let first = FakeHost::new(7);
        let second = first.sibling(8);
        let totals: Vec<FakeHost> = [first, second]
            .into_iter()
            .map(|mut host| {
                if buffered {
                    host.pending = Some(PendingCounters::default());
                }
                let metrics = Rc::new(Metrics::new(config.clone(), Rc::default()));
                drive_worker(host, &metrics, 500)
            })
            .collect();
        totals
    };
    let at_once = run(false);
    let kept = run(true);
    for (direct, flushed) in at_once.iter().zip(&kept) {
        assert_eq!(direct.metric(requests_total), Some(500));
        let mut want: Vec<_> = direct.metrics.iter().map(|(_, n, v)| (n, v)).collect();
        let mut got: Vec<_> = flushed.metrics.iter().map(|(_, n, v)| (n, v)).collect();
        want.sort();
        got.sort();
        assert_eq!(got, want, "every series, every total, after the last flush");
        assert!(
            direct
                .metrics
                .iter()
                .filter(|(k, _, _)| *k == MetricKind::Counter)
                .count()
                > 5,
            "requests, failovers, per-origin requests, failures and blocks are all counted"
        );
    }

    // Before a tick, nothing counted reaches Envoy (no hostcall per event): only after.
    let mut host = FakeHost::new(3);
    host.pending = Some(PendingCounters::default());
    let metrics = Metrics::new(config.clone(), Rc::default());
    for _ in 0..4 {
        metrics.request(&mut host, 0);
    }
    metrics.failover(&mut host, 0, true);
    assert_eq!(
        host.metric(requests_total),
        Some(0),
        "defined, not yet added"
    );
    assert_eq!(
        host.flush_counters(),
        2,
        "one hostcall per counter that changed"
    );
    assert_eq!(host.metric(requests_total), Some(4));
    assert_eq!(host.flush_counters(), 0, "nothing twice");
    metrics.request(&mut host, 0);
    host.flush_counters();
    assert_eq!(host.metric(requests_total), Some(5));
}

#[test]
fn pending_counters_sum_per_id_and_skip_zero_deltas() {
    let mut pending = PendingCounters::default();
    pending.add(4, 1);
    pending.add(8, 2);
    pending.add(4, 3);
    pending.add(12, 0);
    let mut sent = Vec::new();
    assert_eq!(pending.flush(|id, delta| sent.push((id, delta))), 2);
    sent.sort_unstable();
    assert_eq!(sent, [(4, 4), (8, 2)]);
    assert!(pending.is_empty());
}
