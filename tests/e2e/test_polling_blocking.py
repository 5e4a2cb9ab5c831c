"""Weighted polling (scenario b) and dead-IP detection and blocking (scenario c), real Envoy at
--concurrency 2. Origins use 127.0.0.20-127.0.0.39.
"""

import math
import time

from harness import wait_for

CONNECT_FAILS = "cluster.origin_pull_ip_http.upstream_cx_connect_fail"


def test_weights_one_to_three_and_zero_is_never_served(env):
    a = env.start_origin("a", ip="127.0.0.20")
    b = env.start_origin("b", ip="127.0.0.21")
    drained = env.start_origin("drained", ip="127.0.0.22")
    env.start({"domains": [{"domain": "www.test.com", "master": {
        "ips": [f"{a.addr}:1", f"{b.addr}:3", f"{drained.addr}:0"]}}]})
    n = 600
    served = {"a": 0, "b": 0, "drained": 0}
    for i in range(n):
        r = env.request("www.test.com", f"/w{i}")
        assert r.status == 200, r
        served[r.headers["x-served-by"]] += 1
    # The origins' own logs agree with what the client saw.
    assert (a.count(), b.count(), drained.count()) == (served["a"], served["b"], 0)
    # Binomial(600, 0.75): sd = 10.6; allow 5 sd (a false alarm about once in 3.5 million runs).
    expected, sd = n * 0.75, math.sqrt(n * 0.75 * 0.25)
    assert abs(served["b"] - expected) <= 5 * sd, served
    print(f"weights 1:3:0 over {n} requests -> {served}")


def test_dead_ip_is_blocked_for_every_worker_then_tried_again(env):
    live = env.start_origin("live", ip="127.0.0.23")
    dead = env.dead_addr("127.0.0.24")
    block_seconds = 3
    env.start({"debug_headers": True, "domains": [{"domain": "www.test.com",
               "master": {"ips": [live.addr, dead]},
               "detection": {"block_seconds": block_seconds}}]})

    # Until the dead IP is first picked, requests are split; the one that hits it is retried on
    # the live master: no client error.
    for i in range(200):
        r = env.request("www.test.com", f"/before{i}")
        assert (r.status, r.headers["x-served-by"]) == (200, "live"), r
        if env.stat(CONNECT_FAILS) >= 1:
            break
    assert env.stat(CONNECT_FAILS) == 1, "the dead IP was never picked in 200 requests"
    blocked_at = time.monotonic()
    assert wait_for(lambda: any("blocked for 3 s" in l for l in env.wasm_log_lines()), 5)

    # While blocked: both workers skip it. A fresh connection per request spreads the requests
    # over both workers (SO_REUSEPORT); the debug header tells them apart.
    workers = set()
    for i in range(60):
        r = env.request("www.test.com", f"/during{i}")
        assert (r.status, r.headers["x-served-by"]) == (200, "live"), r
        assert r.headers["x-origin-pull-attempts"] == "1", "a blocked IP was tried"
        workers.add(r.headers["x-origin-pull-worker"])
        if time.monotonic() - blocked_at > block_seconds - 0.5:
            break
    assert len(workers) == 2, f"requests reached only workers {workers}"
    assert env.stat(CONNECT_FAILS) == 1, "a worker sent a request to the blocked IP"

    # After the block it is tried again (and blocked again), still without a client error.
    time.sleep(max(0.0, block_seconds - (time.monotonic() - blocked_at)) + 0.2)
    for i in range(200):
        r = env.request("www.test.com", f"/after{i}")
        assert (r.status, r.headers["x-served-by"]) == (200, "live"), r
        if env.stat(CONNECT_FAILS) >= 2:
            break
    assert env.stat(CONNECT_FAILS) == 2, "the IP was not tried again after its block"
    assert live.count(path=None) >= 3


def test_every_master_blocked_goes_straight_to_the_slave(env):
    slave = env.start_origin("slave", ip="127.0.0.25")
    dead = [env.dead_addr("127.0.0.26"), env.dead_addr("127.0.0.27")]
    env.start({"debug_headers": True, "domains": [{"domain": "www.test.com",
               "master": {"ips": dead}, "slave": {"ips": [slave.addr]}}]})
    for i in range(20):
        r = env.request("www.test.com", f"/s{i}")
        assert (r.status, r.headers["x-served-by"]) == (200, "slave"), r
    # Each dead master failed once (first request tries both), then none is asked any more.
    assert env.stat(CONNECT_FAILS) == 2
    assert r.headers["x-origin-pull-attempts"] == "1"


def test_every_master_blocked_without_slave_still_tries_a_master(env):
    """Documented choice: a blocked origin is a better bet than a certain error."""
    origin = env.start_origin("origin", ip="127.0.0.28", status=503)
    env.start({"domains": [{"domain": "www.test.com",
               "master": {"ips": [origin.addr]},
               "detection": {"block_on_5xx": True}}]})
    for _ in range(3):
        assert env.request("www.test.com", "/x").status == 503
    assert origin.count() == 3


def test_block_on_5xx_when_configured(env):
    bad = env.start_origin("bad", ip="127.0.0.29", status=500)
    good = env.start_origin("good", ip="127.0.0.30")
    env.start({"debug_headers": True, "domains": [{"domain": "www.test.com",
               "master": {"ips": [bad.addr, good.addr]},
               "failover": {"on": ["connect_error", "timeout"]},
               # The first 5xx blocks (the default counts 3 from distinct requests).
               "detection": {"block_on_5xx": True, "failure_threshold": 1}}]})
    statuses = []
    for i in range(40):
        r = env.request("www.test.com", f"/b{i}")
        statuses.append((r.status, r.headers["x-served-by"]))
    # 5xx is not a failover condition here, so the first hit of `bad` reaches the client, but it
    # blocks `bad`: at most one such answer (per race between workers), then only `good`.
    assert statuses.count((500, "bad")) <= 2, statuses
    assert bad.count() <= 2
    assert statuses[-10:] == [(200, "good")] * 10
