"""Which failures block an origin, for which domain, and what the client gets when no origin
answers (issue 13 items 4, 7 and 10), against the real Envoy at --concurrency 2.

- One hostile request (a URL the origin answers slower than the timeouts, or resets) blocks
  nothing, on any master or the slave; a dead origin (refused, or SYNs dropped: connect
  timeout) is still blocked after its first connect failure.
- One or two dead masters and no slave: every request gets the documented
  `502 x-origin-pull-error: origin-unreachable`, blocked or not.
- A block belongs to the domain that wrote it; `block_seconds: 0` never skips an address.

Origins use 127.0.7.x.
"""

import time

import pytest

import chaos
from harness import wait_for

CONNECT_FAILS = "cluster.origin_pull_ip_http.upstream_cx_connect_fail"


def block_lines(env):
    return [line for line in env.wasm_log_lines() if "; blocked for" in line]


def trio_config(m1, m2, s, mechanism="callout", **detection):
    """mechanism: envoy.failover. "callout" asks the other master, then the slave (and each
    failure is judged by the listener's filter); "router" (render's default) asks the slave
    after the first master (each attempt judged by the upstream instance)."""
    return {"debug_headers": True, "envoy": {"failover": mechanism}, "domains": [{
        "domain": "www.test.com", "master": {"ips": [m1.addr, m2.addr]},
        "slave": {"ips": [s.addr]},
        # Short failover callouts keep the test quick (the routed request has the route's).
        "failover": {"timeout_ms": 1000},
        "detection": detection}]}


def assert_asked_once(mechanism, m1, m2, s):
    if mechanism == "callout":
        assert m1.count() == m2.count() == s.count() == 1, "each origin was asked once"
    else:
        assert (m1.count() + m2.count(), s.count()) == (1, 1), "one master, then the slave"


def healthy_trio(env, base):
    return (env.start_origin("m1", ip=f"127.0.7.{base}"),
            env.start_origin("m2", ip=f"127.0.7.{base + 1}"),
            env.start_origin("s", ip=f"127.0.7.{base + 2}"))


def assert_everyone_still_serves(env, m1, m2, s):
    """No origin was blocked: both masters share the traffic and the slave is not asked."""
    served = {"m1": 0, "m2": 0, "s": 0}
    for i in range(40):
        r = env.request("www.test.com", f"/after{i}")
        assert r.status == 200, r
        assert r.headers["x-origin-pull-attempts"] == "1", r.headers
        served[r.headers["x-served-by"]] += 1
    assert served["m1"] > 0 and served["m2"] > 0 and served["s"] == 0, served
    assert s.count() == 1, "the slave got more than the hostile request"


@pytest.mark.parametrize("mechanism", ["callout", "router"])
def test_one_slow_request_blocks_no_origin(make_env, mechanism):
    env = make_env(first_byte_timeout="1s")
    m1, m2, s = healthy_trio(env, 10)
    env.start(trio_config(m1, m2, s, mechanism))
    # Every origin answers this URL after 2.5 s: the routed request times out (1 s), the
    # other master and the slave time out too (failover callouts / attempts, 1 s).
    r = env.request("www.test.com", "/__sleep/2500/hostile")
    assert r.status == 502 and r.headers["x-origin-pull-error"] == "origin-unreachable", r
    assert_asked_once(mechanism, m1, m2, s)
    time.sleep(0.5)  # Envoy's log is asynchronous
    assert block_lines(env) == []
    assert_everyone_still_serves(env, m1, m2, s)


@pytest.mark.parametrize("mechanism", ["callout", "router"])
def test_one_resetting_request_blocks_no_origin(env, mechanism):
    m1, m2, s = healthy_trio(env, 20)
    env.start(trio_config(m1, m2, s, mechanism))
    r = env.request("www.test.com", "/__reset/hostile")
    assert r.status == 502 and r.headers["x-origin-pull-error"] == "origin-unreachable", r
    assert_asked_once(mechanism, m1, m2, s)
    if mechanism == "callout":
        # The router path gives no verdict on a reset at all (docs/behaviour.md "Failover mechanism").
        assert wait_for(lambda: sum("failed (reset)" in l for l in env.wasm_log_lines()) >= 3, 5)
    assert block_lines(env) == []
    assert_everyone_still_serves(env, m1, m2, s)


def test_hostile_requests_mixed_with_traffic_block_nothing(env):
    """Ten resetting requests in a row, each after normal traffic: the origins keep
    answering the others, so no failure counts against them (default threshold 3)."""
    m1, m2, s = healthy_trio(env, 25)
    env.start(trio_config(m1, m2, s))
    # Normal traffic first: both workers (a new connection per request picks either) have
    # seen both masters answer.
    for i in range(20):
        assert env.request("www.test.com", f"/warm{i}").status == 200
    for i in range(10):
        for j in range(4):
            assert env.request("www.test.com", f"/ok{i}-{j}").status == 200
        assert env.request("www.test.com", f"/__reset/{i}").status == 502
    time.sleep(0.5)
    assert block_lines(env) == []
    assert any("not counted: it answered other requests meanwhile" in l
               for l in env.wasm_log_lines())


def test_repeated_timeouts_from_distinct_requests_block(make_env):
    """The threshold is reachable: a master that times out for three distinct requests in a
    row (nothing answered in between) is blocked; the default window is 10 s."""
    env = make_env(route_timeout="1s")
    m1 = env.start_origin("m1", ip="127.0.7.30", extra_args=["--delay-ms", "2500"])
    m2 = env.start_origin("m2", ip="127.0.7.31")
    env.start({"domains": [{"domain": "www.test.com", "master": {"ips": [m1.addr, m2.addr]},
                            "failover": {"timeout_ms": 1000}}], "debug_headers": True})
    for i in range(200):
        env.request("www.test.com", f"/r{i}")
        if block_lines(env):
            break
    assert wait_for(lambda: block_lines(env), 5)
    line = block_lines(env)[0]
    assert "failed (timeout); blocked for 60 s (until " in line, line
    assert line.endswith(" ms) (3 failed requests within 10 s)"), line
    assert m1.count() == 3, m1.count()


def test_dead_origin_is_blocked_after_its_first_connect_failure(env):
    live = env.start_origin("live", ip="127.0.7.40")
    dead = env.dead_addr("127.0.7.41")
    env.start({"debug_headers": True, "domains": [{"domain": "www.test.com",
               "master": {"ips": [live.addr, dead]}}]})
    for i in range(200):
        r = env.request("www.test.com", f"/d{i}")
        assert (r.status, r.headers["x-served-by"]) == (200, "live"), r
        if env.stat(CONNECT_FAILS) >= 1:
            break
    assert env.stat(CONNECT_FAILS) == 1
    assert wait_for(lambda: any(f"origin {dead} failed (connect_error); blocked for 60 s" in l
                                for l in block_lines(env)), 5)
    for i in range(40):
        r = env.request("www.test.com", f"/e{i}")
        assert r.headers["x-origin-pull-attempts"] == "1", "the dead origin was tried again"
    assert env.stat(CONNECT_FAILS) == 1


def test_syn_dropping_origin_is_blocked_after_its_first_connect_timeout(make_env):
    env = make_env(connect_timeout="0.5s")
    live = env.start_origin("live", ip="127.0.7.42")
    port = chaos.harness.free_port("127.0.7.43")
    syn = chaos.SynDrop("127.0.7.43", port)
    try:
        assert syn.drops_syns, "this kernel accepted the probe SYN"
        addr = f"127.0.7.43:{port}"
        env.start({"debug_headers": True, "domains": [{"domain": "www.test.com",
                   "master": {"ips": [live.addr, addr]}}]})
        for i in range(200):
            r = env.request("www.test.com", f"/d{i}")
            assert (r.status, r.headers["x-served-by"]) == (200, "live"), r
            if r.headers["x-origin-pull-attempts"] == "2":
                break
        assert r.headers["x-origin-pull-attempts"] == "2", "the SYN-dropping origin never picked"
        assert wait_for(lambda: any(f"origin {addr} failed (connect_error); blocked" in l
                                    for l in block_lines(env)), 5)
        for i in range(30):
            r = env.request("www.test.com", f"/e{i}")
            assert r.headers["x-origin-pull-attempts"] == "1"
    finally:
        syn.close()


def test_dead_masters_without_slave_get_the_documented_502(env):
    """Issue 13 item 7: the first and the following requests (the masters blocked by then)."""
    one = env.dead_addr("127.0.7.50")
    two = [env.dead_addr("127.0.7.51"), env.dead_addr("127.0.7.52")]
    env.start({"domains": [
        {"domain": "one.test", "master": {"ips": [one]}},
        {"domain": "two.test", "master": {"ips": two}}]})
    for host in ("one.test", "two.test"):
        for i in range(4):
            r = env.request(host, f"/x{i}")
            assert r.status == 502, (host, i, r)
            assert r.headers.get("x-origin-pull-error") == "origin-unreachable", (host, i, r)
            assert r.text.startswith("origin-pull: no origin could be reached"), r.text


def test_a_block_belongs_to_its_domain_and_zero_seconds_never_skips(env):
    """Issue 13 item 10: a.test blocks a dead address; b.test (block_seconds 0) keeps trying
    it (each try retried on the live master: no client error); c.test blocks it only after
    its own first failure."""
    live = env.start_origin("live", ip="127.0.7.60")
    dead = env.dead_addr("127.0.7.61")
    master = {"ips": [live.addr, dead]}
    env.start({"debug_headers": True, "domains": [
        {"domain": "a.test", "master": master},
        {"domain": "b.test", "master": master, "detection": {"block_seconds": 0}},
        {"domain": "c.test", "master": master}]})

    def until_dead_tried(host, fails):
        for i in range(200):
            r = env.request(host, f"/{host}/{i}")
            assert (r.status, r.headers["x-served-by"]) == (200, "live"), r
            if env.stat(CONNECT_FAILS) >= fails:
                return
        raise AssertionError(f"{host} never tried {dead}")

    until_dead_tried("a.test", 1)
    assert wait_for(lambda: any("a.test: master origin" in l for l in block_lines(env)), 5)
    # b.test: never skips it, however often it fails; never logs a block.
    until_dead_tried("b.test", 2)
    until_dead_tried("b.test", 3)
    # c.test: one failure of its own, then blocked for c.test too.
    until_dead_tried("c.test", 4)
    for i in range(40):
        r = env.request("c.test", f"/c-after{i}")
        assert r.headers["x-origin-pull-attempts"] == "1"
    assert env.stat(CONNECT_FAILS) == 4
    time.sleep(0.3)
    assert not any("b.test:" in l for l in block_lines(env))
