use std::rc::Rc;

use super::*;
use crate::config::parse;
use crate::testing::FakeHost;

fn config(probe: &str) -> PluginConfig {
    parse(
        format!(
            r#"{{"domains":[{{"domain":"www.test.com","master":{{"ips":["10.0.0.1:8080","10.0.0.2:8080"]}},
                "slave":{{"ips":["10.0.0.9"]}},
                "detection":{{"block_seconds":60{probe}}}}}]}}"#
        )
        .as_bytes(),
    )
    .unwrap()
}

const PROBE: &str = r#","probe":{"path":"/health","interval_ms":1000,"timeout_ms":500,
    "unhealthy_threshold":2,"healthy_threshold":2}"#;

struct Vm {
    host: FakeHost,
    prober: Prober,
    blocks: BlockTable,
    metrics: Metrics,
    domain: String,
}

impl Vm {
    fn new(cfg: &PluginConfig, host: FakeHost, holder: u64) -> Vm {
        let metrics = Metrics::new(Rc::new(cfg.clone()), Rc::default());
        Vm {
            host,
            prober: Prober::new(cfg, holder),
            blocks: BlockTable::default(),
            metrics,
            domain: cfg.domains[0].name.clone(),
        }
    }
    fn tick(&mut self) {
        self.prober
            .on_tick(&mut self.host, &mut self.blocks, &self.metrics);
    }
    /// Answers every probe in flight with `status` (an origin's answer) or, with `None`,
    /// with Envoy's made-up connect-failure reply.
    fn answer_all(&mut self, status: Option<u32>, only: Option<&str>) {
        let pending: Vec<_> = std::mem::take(&mut self.host.callouts);
        for callout in pending {
            if only.is_some_and(|dst| callout.header(ORIGINAL_DST_HEADER) != Some(dst)) {
                self.host.callouts.push(callout);
                continue;
            }
            match status {
                Some(s) => self
                    .host
                    .respond(s, &[("x-envoy-upstream-service-time", "1")], b"ok"),
                None => self
                    .host
                    .respond(503, &[], b"upstream connect error or disconnect/reset before headers. reset reason: connection failure"),
            }
            let body = self.host.response_body.len();
            let headers = self.host.response_headers.len();
            assert!(self.prober.on_response(
                &mut self.host,
                &mut self.blocks,
                &self.metrics,
                callout.token,
                headers,
                body
            ));
        }
    }
    fn advance(&mut self, ms: u64) {
        self.host.now_ms += ms;
    }
    fn blocked(&mut self, label: &str) -> bool {
        let domain = self.domain.clone();
        self.blocks
            .is_blocked(&self.host, &domain, label, self.host.now_ms)
    }
}

#[test]
fn passive_only_configs_have_no_probes_and_tick_slowly() {
    let prober = Prober::new(&config(""), 1);
    assert!(!prober.has_probes());
    assert_eq!(prober.tick_period(), Duration::from_millis(1_000));
    assert_eq!(
        Prober::new(&config(PROBE), 1).tick_period(),
        Duration::from_millis(500)
    );
}

#[test]
fn probes_carry_path_host_and_destination() {
    let cfg = config(PROBE);
    let mut vm = Vm::new(&cfg, FakeHost::new(1), 1);
    vm.tick();
    // The domain's probe covers both masters and the slave.
    assert_eq!(vm.host.callouts.len(), 3);
    let c = &vm.host.callouts[0];
    assert_eq!(c.cluster, "origin_pull_ip_http");
    assert_eq!(c.header(":path"), Some("/health"));
    assert_eq!(c.header(":authority"), Some("www.test.com"));
    assert_eq!(c.header(":method"), Some("GET"));
    assert_eq!(c.header(ORIGINAL_DST_HEADER), Some("10.0.0.1:8080"));
    assert_eq!(c.timeout, Duration::from_millis(500));
}

#[test]
fn origin_probe_overrides_the_domains_and_follow_probes_both_ports() {
    let cfg = parse(
        br#"{"domains":[{"domain":"*.test.com","master":{"ips":["10.0.0.1"],"protocol":"follow",
            "probe":{"path":"/m","host":"probe.test.com"}},
            "slave":{"ips":["10.0.0.9"]},"detection":{"probe":{"path":"/d"}}}]}"#,
    )
    .unwrap();
    let mut vm = Vm::new(&cfg, FakeHost::new(1), 1);
    vm.tick();
    let seen: Vec<String> = vm
        .host
        .callouts
        .iter()
        .map(|c| {
            [":path", ":authority", ":scheme", ORIGINAL_DST_HEADER]
                .map(|h| c.header(h).unwrap_or("-"))
                .join(" ")
        })
        .collect();
    assert_eq!(
        seen,
        [
            "/m probe.test.com http 10.0.0.1:80",
            "/m probe.test.com https 10.0.0.1:443",
            // Wildcard domain, no host: the origin's own address.
            "/d 10.0.0.9:80 http 10.0.0.9:80",
        ]
    );
}

#[test]
fn one_holder_at_a_time_and_takeover_when_it_stops() {
    let cfg = config(PROBE);
    let a_host = FakeHost::new(1);
    let b_host = a_host.sibling(2);
    let mut a = Vm::new(&cfg, a_host, 0xA);
    let mut b = Vm::new(&cfg, b_host, 0xB);
    for _ in 0..10 {
        a.tick();
        b.tick();
        assert!(
            a.prober.is_holder() != b.prober.is_holder(),
            "exactly one holder"
        );
        a.answer_all(Some(200), None);
        b.answer_all(Some(200), None);
        a.advance(500);
        b.advance(500);
    }
    assert!(a.prober.is_holder());
    assert_eq!(
        a.metrics
            .origin(0, Role::Master, 0, Scheme::Http)
            .map(|_| ()),
        Some(())
    );
    // A stops ticking: B takes over once the lease (4 ticks of 500 ms) has expired, not before.
    b.advance(1_000);
    b.tick();
    assert!(!b.prober.is_holder());
    b.advance(1_500);
    b.tick();
    assert!(b.prober.is_holder());
    assert!(!b.host.callouts.is_empty(), "the new holder probes at once");
    // A comes back: it sees B's live lease and stands down.
    a.advance(3_000);
    a.tick();
    assert!(!a.prober.is_holder());
    // Releasing hands over without waiting for expiry.
    b.prober.release(&mut b.host);
    a.advance(1);
    a.tick();
    assert!(a.prober.is_holder());
}

#[test]
fn racing_first_takers_cannot_both_win() {
    let cfg = config(PROBE);
    let a_host = FakeHost::new(1);
    let b_host = a_host.sibling(2);
    let mut a = Vm::new(&cfg, a_host, 0xA);
    let mut b = Vm::new(&cfg, b_host, 0xB);
    // Both read "no lease"; A writes first; B's create-only write must fail.
    a.tick();
    let taken = b.host.shared_set(
        LEASE_KEY,
        &encode_lease(0xB, u64::MAX),
        Some(CREATE_ONLY_CAS),
    );
    assert!(taken.is_err());
    b.tick();
    assert!(a.prober.is_holder() && !b.prober.is_holder());
}

#[test]
fn dead_origin_is_blocked_after_the_unhealthy_threshold_for_every_worker() {
    let cfg = config(PROBE);
    let host = FakeHost::new(1);
    let worker = host.sibling(7);
    let mut vm = Vm::new(&cfg, host, 1);
    vm.tick();
    vm.answer_all(Some(200), Some("10.0.0.1:8080"));
    vm.answer_all(None, None); // 10.0.0.2 and the slave refuse connections
    assert!(
        !vm.blocked("10.0.0.2:8080"),
        "one failure is below the threshold of 2"
    );
    vm.advance(1_000);
    vm.tick();
    vm.answer_all(Some(200), Some("10.0.0.1:8080"));
    vm.answer_all(None, None);
    assert!(vm.blocked("10.0.0.2:8080"));
    assert!(vm.blocked("10.0.0.9:80"));
    assert!(!vm.blocked("10.0.0.1:8080"));
    let other = BlockTable::default();
    assert!(other.domain_has_blocks(&worker, "www.test.com", worker.now_ms));
    assert!(other.is_blocked(&worker, "www.test.com", "10.0.0.2:8080", worker.now_ms));
    assert!(vm.host.logged("probe of master origin 10.0.0.2:8080 failed 2 time(s) in a row (connect_error); blocked for 60 s"));
    let tags = ";domain=www.test.com;origin=10.0.0.2:8080";
    assert_eq!(
        vm.host
            .metric(&format!("origin_pull_probes_total{tags};result=failure")),
        Some(2)
    );
    assert_eq!(
        vm.host.metric(&format!(
            "origin_pull_origin_blocks_total{tags};source=probe"
        )),
        Some(1)
    );
    assert_eq!(
        vm.host.metric(&format!("origin_pull_origin_blocked{tags}")),
        Some(1)
    );
    // The domain's availability gauge is defined by the probe's block: 1 of 2 masters left.
    assert_eq!(
        vm.host
            .metric("origin_pull_masters_available;domain=www.test.com"),
        Some(1)
    );
    // A healthy origin's probe successes are per-origin traffic: counted only with
    // `metrics.per_origin`, so no series exists for it here.
    assert_eq!(
        vm.host.metric(
            "origin_pull_probes_total;domain=www.test.com;origin=10.0.0.1:8080;result=success"
        ),
        None
    );
    // Still dead 50 s later: the block is extended rather than allowed to lapse.
    for _ in 0..70 {
        vm.advance(1_000);
        vm.tick();
        vm.answer_all(None, None);
    }
    assert!(vm.blocked("10.0.0.2:8080"));
    assert_eq!(
        vm.host.metric(&format!(
            "origin_pull_origin_blocks_total{tags};source=probe"
        )),
        Some(1)
    );
}

#[test]
fn recovered_origin_is_unblocked_after_the_healthy_threshold() {
    let cfg = config(PROBE);
    let mut vm = Vm::new(&cfg, FakeHost::new(1), 1);
    // A client request blocked it passively (the prober never saw it fail).
    vm.blocks
        .block(&mut vm.host, "www.test.com", "10.0.0.1:8080", 60_000);
    vm.tick();
    vm.answer_all(Some(200), None);
    assert!(
        vm.blocked("10.0.0.1:8080"),
        "one success is below the threshold of 2"
    );
    vm.advance(1_000);
    vm.tick();
    vm.answer_all(Some(503), None);
    vm.advance(1_000);
    vm.tick();
    vm.answer_all(Some(204), None);
    assert!(vm.blocked("10.0.0.1:8080"), "a failure restarts the streak");
    vm.advance(1_000);
    vm.tick();
    vm.answer_all(Some(200), None);
    assert!(
        !vm.blocked("10.0.0.1:8080"),
        "unblocked long before the 60 s block ends"
    );
    assert!(vm
        .host
        .logged("probe of master origin 10.0.0.1:8080 passed 2 time(s) in a row; unblocked"));
    let tags = ";domain=www.test.com;origin=10.0.0.1:8080";
    assert_eq!(
        vm.host
            .metric(&format!("origin_pull_origin_unblocks_total{tags}")),
        Some(1)
    );
    assert_eq!(
        vm.host.metric(&format!("origin_pull_origin_blocked{tags}")),
        Some(0)
    );
}

#[test]
fn unexpected_statuses_count_as_failures() {
    let cfg = parse(
        br#"{"domains":[{"domain":"a.com","master":{"ips":["10.0.0.1","10.0.0.2"],
            "probe":{"expected_statuses":[204,"3xx"],"unhealthy_threshold":1}}}]}"#,
    )
    .unwrap();
    let mut vm = Vm::new(&cfg, FakeHost::new(1), 1);
    vm.tick();
    vm.answer_all(Some(200), Some("10.0.0.1:80"));
    vm.answer_all(Some(302), None);
    assert!(vm.blocked("10.0.0.1:80"));
    assert!(!vm.blocked("10.0.0.2:80"));
}

#[test]
fn timeouts_and_missing_responses_fail_but_a_dispatch_error_blocks_nothing() {
    let cfg = parse(
        br#"{"domains":[{"domain":"a.com","master":{"ips":["10.0.0.1","10.0.0.2"],
            "probe":{"unhealthy_threshold":1}}}]}"#,
    )
    .unwrap();
    let mut vm = Vm::new(&cfg, FakeHost::new(1), 1);
    vm.tick();
    let callouts = std::mem::take(&mut vm.host.callouts);
    vm.host.respond(504, &[], b"upstream request timeout");
    let n = vm.host.response_headers.len();
    let size = vm.host.response_body.len();
    assert!(vm.prober.on_response(
        &mut vm.host,
        &mut vm.blocks,
        &vm.metrics,
        callouts[0].token,
        n,
        size
    ));
    assert!(vm.prober.on_response(
        &mut vm.host,
        &mut vm.blocks,
        &vm.metrics,
        callouts[1].token,
        0,
        0
    ));
    assert!(!vm
        .prober
        .on_response(&mut vm.host, &mut vm.blocks, &vm.metrics, 999, 0, 0));
    assert!(vm.blocked("10.0.0.1:80") && vm.blocked("10.0.0.2:80"));
    assert!(vm.host.logged("(timeout)"));

    let mut broken = Vm::new(&cfg, FakeHost::new(2), 2);
    broken.host.fail_dispatch = true;
    for _ in 0..3 {
        broken.tick();
        broken.advance(5_000);
    }
    let errors = broken
        .host
        .logs()
        .iter()
        .filter(|(_, m)| m.contains("could not start the probe of master origin 10.0.0.1:80"))
        .count();
    assert_eq!(errors, 1, "logged once per origin, not every interval");
    assert!(!broken.blocked("10.0.0.1:80"));
}

#[test]
fn probes_are_spaced_by_the_interval_and_never_overlap() {
    let cfg = config(PROBE);
    let mut vm = Vm::new(&cfg, FakeHost::new(1), 1);
    let mut sent = 0;
    for _ in 0..20 {
        vm.tick();
        sent += vm.host.callouts.len();
        // Answers arrive only every other tick: nothing is sent while one is in flight.
        vm.answer_all(Some(200), None);
        vm.advance(250);
    }
    // 5 s at one probe per second per origin (3 origins), the first at t=0.
    assert_eq!(sent, 3 * 5);
}

#[test]
fn late_ticks_do_not_stretch_the_interval() {
    let cfg = config(PROBE);
    let mut vm = Vm::new(&cfg, FakeHost::new(1), 1);
    let mut sent = 0;
    // Ticks every 300 ms (not a divisor of the 1 s interval) for 30 s: still 30 probes each.
    for _ in 0..100 {
        vm.tick();
        sent += vm.host.callouts.len();
        vm.answer_all(Some(200), None);
        vm.advance(300);
    }
    assert_eq!(sent, 3 * 30);
}

#[test]
fn every_vm_refreshes_the_blocked_gauges_it_defined_when_blocks_expire() {
    let cfg = config("");
    let mut vm = Vm::new(&cfg, FakeHost::new(1), 1);
    // Another VM holds the lease: the refresh does not depend on holding it.
    let mut other = Vm::new(&cfg, vm.host.sibling(2), 2);
    other.tick();
    assert!(other.prober.is_holder());
    vm.blocks
        .block(&mut vm.host, "www.test.com", "10.0.0.2:8080", 2_000);
    let until = vm
        .blocks
        .blocked_until(&vm.host, "www.test.com", "10.0.0.2:8080");
    vm.metrics
        .origin(0, Role::Master, 1, Scheme::Http)
        .unwrap()
        .blocked(&mut vm.host, BlockSource::Passive, until);
    let gauge = "origin_pull_origin_blocked;domain=www.test.com;origin=10.0.0.2:8080";
    assert_eq!(vm.host.metric(gauge), Some(1));
    vm.advance(1_000);
    vm.tick();
    assert!(!vm.prober.is_holder());
    assert_eq!(vm.host.metric(gauge), Some(1), "still blocked");
    vm.advance(1_500);
    vm.tick();
    assert_eq!(vm.host.metric(gauge), Some(0));
    // Gauges nobody blocked are never defined.
    assert_eq!(
        vm.host
            .metric("origin_pull_origin_blocked;domain=www.test.com;origin=10.0.0.1:8080"),
        None
    );
    assert!(
        vm.host.callouts.is_empty(),
        "passive-only: no probe traffic"
    );
}
