"""Failover to the slave origin (scenarios a and d), against the real Envoy at --concurrency 2.

Every test checks which origin served, from the origin's own answer (x-served-by) and request log.
Origins use 127.0.0.2-127.0.0.39.
"""

import time

import pytest
from test_health import metric, prometheus

from harness import wait_for


def logged(env, text, timeout=5):
    """Envoy writes its log asynchronously: wait (bounded) for a wasm log line containing text."""
    return wait_for(lambda: any(text in l for l in env.wasm_log_lines()), timeout, what=repr(text))


def domain(master, slave=None, mechanism=None, **extra):
    """One domain; mechanism "callout" selects the callout failover (default: render's router)."""
    d = {"domain": "www.test.com", "master": master, **extra}
    if slave is not None:
        d["slave"] = slave
    config = {"domains": [d], "debug_headers": True}
    if mechanism:
        config["envoy"] = {"failover": mechanism}
    return config


def test_seeds_example_master_404_slave_200(env):
    """The vendor's worked example: 1.1.1.1 has no /1.jpg (404), 2.2.2.2 has it (200)."""
    master = env.start_origin("master", ip="127.0.0.2", routes={"/1.jpg": 404})
    slave = env.start_origin("slave", ip="127.0.0.3")
    env.start(domain({"ips": [master.addr]}, {"ips": [slave.addr]}))

    r = env.request("www.test.com", "/1.jpg?v=2", headers={"accept": "image/*"})
    assert r.status == 200, r
    assert r.headers["x-served-by"] == "slave"
    assert r.body == b"served-by=slave path=/1.jpg?v=2\n"
    assert r.headers["x-origin-pull-origin"] == f"slave={slave.addr}"
    assert r.headers["x-origin-pull-attempts"] == "2"
    assert r.headers["x-seen-host"] == "www.test.com"
    assert master.requests() == [{"method": "GET", "path": "/1.jpg?v=2", "host": "www.test.com"}]
    assert slave.requests() == [{"method": "GET", "path": "/1.jpg?v=2", "host": "www.test.com"}]

    # A path the master has is served by the master, without touching the slave.
    r = env.request("www.test.com", "/2.jpg")
    assert (r.status, r.headers["x-served-by"]) == (200, "master")
    assert slave.count() == 1


def test_without_slave_the_404_reaches_the_client(env):
    master = env.start_origin("master", ip="127.0.0.2", routes={"/1.jpg": 404})
    env.start(domain({"ips": [master.addr]}))
    r = env.request("www.test.com", "/1.jpg")
    assert (r.status, r.headers["x-served-by"]) == (404, "master")


def test_master_5xx_goes_to_slave_and_is_not_blocked_by_default(env):
    master = env.start_origin("master", ip="127.0.0.2", status=500)
    slave = env.start_origin("slave", ip="127.0.0.3")
    env.start(domain({"ips": [master.addr]}, {"ips": [slave.addr]}))
    for _ in range(3):
        r = env.request("www.test.com", "/x")
        assert (r.status, r.headers["x-served-by"]) == (200, "slave"), r
    # 5xx does not block unless block_on_5xx: the master keeps being asked first.
    assert master.count() == 3


def test_master_connection_error_goes_to_slave_and_is_blocked(env):
    dead = env.dead_addr("127.0.0.4")
    slave = env.start_origin("slave", ip="127.0.0.3")
    env.start(domain({"ips": [dead]}, {"ips": [slave.addr]}))
    for i in range(6):
        r = env.request("www.test.com", f"/x{i}")
        assert (r.status, r.headers["x-served-by"]) == (200, "slave"), r
    # First request: routed to the dead master, failed over (2 attempts). Afterwards the master
    # is blocked and requests go straight to the slave.
    assert env.stat("cluster.origin_pull_ip_http.upstream_cx_connect_fail") == 1
    assert r.headers["x-origin-pull-attempts"] == "1"
    assert slave.count() == 6
    assert logged(env, "failed (connect_error); blocked for 60 s")


def test_response_timeout_blocks_the_master_and_fails_over(make_env):
    env = make_env(first_byte_timeout="1s")
    master = env.start_origin("master", ip="127.0.0.2", extra_args=["--delay-ms", "3000"])
    slave = env.start_origin("slave", ip="127.0.0.3")
    # failure_threshold 1: the first timeout blocks (the default needs 3 distinct requests,
    # see test_block_verdicts.py).
    env.start(domain({"ips": [master.addr]}, {"ips": [slave.addr]},
                     detection={"failure_threshold": 1}))
    r = env.request("www.test.com", "/slow")
    assert (r.status, r.headers["x-served-by"]) == (200, "slave"), r
    r = env.request("www.test.com", "/fast")
    assert (r.status, r.headers["x-served-by"]) == (200, "slave"), "the slow master is blocked"
    assert logged(env, "failed (timeout)")


def test_failing_slave_answer_is_what_the_client_gets(env):
    master = env.start_origin("master", ip="127.0.0.2", status=500)
    slave = env.start_origin("slave", ip="127.0.0.3", status=503)
    env.start(domain({"ips": [master.addr]}, {"ips": [slave.addr]}))
    r = env.request("www.test.com", "/x")
    assert (r.status, r.headers["x-served-by"]) == (503, "slave"), r
    assert r.body == b"served-by=slave path=/x\n"


@pytest.mark.parametrize("master_kind", ["404", "dead"])
def test_unreachable_slave_gives_a_clear_502(env, master_kind):
    if master_kind == "404":
        master = env.start_origin("master", ip="127.0.0.2", status=404).addr
    else:
        master = env.dead_addr("127.0.0.4")
    dead_slave = env.dead_addr("127.0.0.5")
    env.start(domain({"ips": [master]}, {"ips": [dead_slave]}))
    r = env.request("www.test.com", "/x")
    assert r.status == 502, r
    assert r.headers["x-origin-pull-error"] == "origin-unreachable"
    assert f"slave {dead_slave}" in r.text and f"master {master}" in r.text


def test_callout_connection_error_is_retried_on_another_master_before_the_slave(env):
    """envoy.failover "callout": the seed's order, another master first, then the slave."""
    dead = [env.dead_addr(f"127.0.0.{i}") for i in (10, 11, 12)]
    live = env.start_origin("live", ip="127.0.0.13")
    slave = env.start_origin("slave", ip="127.0.0.14")
    # The live master has a tiny weight: most requests start on a dead one.
    ips = [f"{a}:100" for a in dead] + [f"{live.addr}:1"]
    env.start(domain({"ips": ips}, {"ips": [slave.addr]}, mechanism="callout",
                     failover={"master_retries": 3}))
    served = [env.request("www.test.com", f"/r{i}") for i in range(8)]
    assert all(r.status == 200 for r in served), served
    # With 3 retries every dead master is tried before the slave, so the live master serves.
    assert {r.headers["x-served-by"] for r in served} == {"live"}
    assert slave.count() == 0
    assert env.stat("cluster.origin_pull_ip_http.upstream_cx_connect_fail") <= 3


def test_router_connection_error_goes_to_the_slave_and_blocks_the_dead_masters(env):
    """envoy.failover "router" (default) with a slave: a connect error fails over to the slave
    at once (documented change: no other master first); each dead master is blocked on its
    first failure, so the live master serves every later request."""
    dead = [env.dead_addr(f"127.0.0.{i}") for i in (10, 11, 12)]
    live = env.start_origin("live", ip="127.0.0.13")
    slave = env.start_origin("slave", ip="127.0.0.14")
    ips = [f"{a}:100" for a in dead] + [f"{live.addr}:1"]
    env.start(domain({"ips": ips}, {"ips": [slave.addr]}))
    served = [env.request("www.test.com", f"/r{i}") for i in range(12)]
    assert all(r.status == 200 for r in served), served
    fails = env.stat("cluster.origin_pull_ip_http.upstream_cx_connect_fail")
    assert 1 <= fails <= 3
    assert slave.count() == fails, "one slave answer per dead master met"
    assert [r.headers["x-served-by"] for r in served[-4:]] == ["live"] * 4
    for r in served:
        if r.headers["x-served-by"] == "slave":
            assert r.headers["x-origin-pull-attempts"] == "2"
            assert r.headers["x-origin-pull-origin"] == f"slave={slave.addr}"


def test_router_without_slave_retries_other_masters(env):
    dead = [env.dead_addr(f"127.0.0.{i}") for i in (15, 16, 17)]
    live = env.start_origin("live", ip="127.0.0.18")
    ips = [f"{a}:100" for a in dead] + [f"{live.addr}:1"]
    env.start(domain({"ips": ips}, failover={"master_retries": 3}))
    served = [env.request("www.test.com", f"/r{i}") for i in range(8)]
    assert all((r.status, r.headers["x-served-by"]) == (200, "live") for r in served), served
    assert env.stat("cluster.origin_pull_ip_http.upstream_cx_connect_fail") \
        + env.stat("cluster.origin_pull_ip_http_2.upstream_cx_connect_fail") \
        + env.stat("cluster.origin_pull_ip_http_3.upstream_cx_connect_fail") <= 3
    assert logged(env, "failed (connect_error); blocked for 60 s")


def test_router_an_origin_cannot_ask_for_a_failover_itself(env):
    """The upstream instance marks an answer for a retry with the status the route retries
    (590). An origin's own 590 on a domain that fails over on 404 only is shown as a 502 and
    never retried; the 404 still fails over; a 200 passes untouched."""
    master = env.start_origin("master", ip="127.0.0.19", routes={"/own": 590, "/gone": 404})
    slave = env.start_origin("slave", ip="127.0.0.20")
    env.start(domain({"ips": [master.addr]}, {"ips": [slave.addr]},
                     failover={"on": ["connect_error"], "status_codes": [404]}))
    r = env.request("www.test.com", "/own")
    assert (r.status, r.headers["x-served-by"]) == (502, "master"), r
    assert slave.count() == 0
    r = env.request("www.test.com", "/gone")
    assert (r.status, r.headers["x-served-by"]) == (200, "slave"), r
    assert r.headers["x-origin-pull-attempts"] == "2"
    r = env.request("www.test.com", "/ok")
    assert (r.status, r.headers["x-served-by"]) == (200, "master"), r
    assert r.headers["x-origin-pull-attempts"] == "1"
    assert slave.count() == 1


def test_post_is_not_failed_over_by_default(env):
    master = env.start_origin("master", ip="127.0.0.2", status=500)
    slave = env.start_origin("slave", ip="127.0.0.3")
    env.start(domain({"ips": [master.addr]}, {"ips": [slave.addr]}))
    r = env.request("www.test.com", "/form", method="POST", body=b"a=1")
    assert (r.status, r.headers["x-served-by"]) == (500, "master")
    assert slave.count() == 0
    assert logged(env, "not failing over POST")


def test_opted_in_post_replays_the_whole_body(env):
    master = env.start_origin("master", ip="127.0.0.2", status=502)
    slave = env.start_origin("slave", ip="127.0.0.3")
    env.start(domain({"ips": [master.addr]}, {"ips": [slave.addr]},
                     failover={"methods": ["GET", "POST"], "max_request_body_bytes": 4 << 20}))
    body = bytes(range(256)) * 8192  # 2 MiB: more than Envoy's 1 MiB buffer, streamed through
    r = env.request("www.test.com", "/upload", method="POST", body=body)
    assert (r.status, r.headers["x-served-by"]) == (200, "slave"), r
    assert r.headers["x-seen-body-bytes"] == str(len(body))


def test_body_over_the_replay_limit_refuses_failover(env):
    master = env.start_origin("master", ip="127.0.0.2", status=502)
    slave = env.start_origin("slave", ip="127.0.0.3")
    env.start(domain({"ips": [master.addr]}, {"ips": [slave.addr]},
                     failover={"methods": ["POST"], "max_request_body_bytes": 1000}))
    r = env.request("www.test.com", "/upload", method="POST", body=b"x" * 5000)
    assert (r.status, r.headers["x-served-by"]) == (502, "master")
    assert slave.count() == 0
    assert logged(env, "larger than failover.max_request_body_bytes (1000)")


def test_head_fails_over(env):
    master = env.start_origin("master", ip="127.0.0.2", status=404)
    slave = env.start_origin("slave", ip="127.0.0.3")
    env.start(domain({"ips": [master.addr]}, {"ips": [slave.addr]}))
    r = env.request("www.test.com", "/x", method="HEAD")
    assert (r.status, r.headers["x-served-by"], r.body) == (200, "slave", b"")


def test_router_failover_response_has_no_size_limit(env):
    """The router streams the slave's answer: larger than Envoy's 32 MiB async buffer and than
    max_response_body_bytes, complete."""
    master = env.start_origin("master", ip="127.0.0.2", status=404)
    slave = env.start_origin("slave", ip="127.0.0.3")
    env.start(domain({"ips": [master.addr]}, {"ips": [slave.addr]},
                     failover={"max_response_body_bytes": 1_000_000}))
    r = env.request("www.test.com", "/__size/40000000/huge", timeout=60)
    assert (r.status, r.headers["x-served-by"], len(r.body)) == (200, "slave", 40_000_000), r.status
    assert "x-origin-pull-error" not in r.headers


def test_callout_failover_response_size_is_bounded(env):
    master = env.start_origin("master", ip="127.0.0.2", status=404)
    slave = env.start_origin("slave", ip="127.0.0.3")
    env.start(domain({"ips": [master.addr]}, {"ips": [slave.addr]}, mechanism="callout",
                     failover={"max_response_body_bytes": 1_000_000}))
    r = env.request("www.test.com", "/__size/999999/ok")
    assert (r.status, r.headers["x-served-by"], len(r.body)) == (200, "slave", 999_999)
    r = env.request("www.test.com", "/__size/1000001/big")
    assert r.status == 502, r
    assert r.headers["x-origin-pull-error"] == "failover-response-too-large"
    # Larger than Envoy's 32 MiB async buffer: never reaches the VM, still a clear 502 that
    # does not call an origin that answered "unreachable" (issue 13.8).
    r = env.request("www.test.com", "/__size/40000000/huge", timeout=60)
    assert r.status == 502, r
    assert r.headers["x-origin-pull-error"] == "failover-no-response", r.headers
    assert b"larger than Envoy's async response buffer" in r.body
    # The VM survived: the next request is served normally.
    r = env.request("www.test.com", "/__size/10/after")
    assert (r.status, r.headers["x-served-by"]) == (200, "slave")


def test_failover_drops_hop_by_hop_and_keeps_end_to_end_headers(env):
    master = env.start_origin("master", ip="127.0.0.2", status=404)
    slave = env.start_origin("slave", ip="127.0.0.3")
    env.start(domain({"ips": [master.addr]}, {"ips": [slave.addr]}))
    r = env.request("www.test.com", "/x")
    assert r.status == 200
    assert r.headers["content-type"] == "text/plain"
    # A logged chain (no upstream instance) sends every attempt the same routing headers:
    # x-envoy-original-dst-host names attempt 1's address (the slave's is in
    # x-origin-pull-dst-2). An observed chain rewrites it per attempt (the test below).
    assert r.headers["x-seen-dst"] == master.addr
    assert "transfer-encoding" not in r.headers
    assert r.headers["content-length"] == str(len(r.body))


def test_an_observed_chain_gives_the_slave_its_own_address_and_host(env):
    """A slave with its own `host` makes the chain observed: the module's upstream instance runs
    per attempt, sets the slave's Host and its own address; the failover still happens."""
    master = env.start_origin("master", ip="127.0.0.2", status=404)
    slave = env.start_origin("slave", ip="127.0.0.3")
    env.start(domain({"ips": [master.addr]}, {"ips": [slave.addr], "host": "backup.test.com"}))
    r = env.request("www.test.com", "/x")
    assert (r.status, r.headers["x-served-by"], r.headers["x-origin-pull-attempts"]) == \
        (200, "slave", "2"), r
    assert r.headers["x-seen-dst"] == slave.addr
    assert [q["host"] for q in slave.requests()] == ["backup.test.com"], slave.requests()
    assert [q["host"] for q in master.requests()] == ["www.test.com"], master.requests()


# src/render/envoy.rs DRAIN_MAX_BYTES: a failed answer's body up to this size is read before the
# router retries.
DRAIN_MAX_BYTES = 65_536


def test_router_failover_on_a_status_keeps_the_failed_origins_connection(make_env):
    """The router resets an attempt it retries while the answer's body is still to come, which
    closes the HTTP/1.1 connection: every failover on a status then connected to the master
    again (100-165 µs of Envoy CPU each, `make bench` scenario f). The rendered drain filter
    reads a marked answer's short body first, so the connection stays in the pool; a body over
    the limit is not read (the old behaviour: one new connection). Each failover is also quick:
    an answer held until the per-try (first-byte) timeout would keep the connection too, so the
    time is what tells a drain from a hang (docs/design.md: a wasm `Pause` on the headers
    holds the answer that way). A HEAD answer (content-length, no body: its headers end the
    stream) is relayed at once and keeps the connection as well."""
    origins = [{"name": "master", "ip": "127.0.0.2", "status": 404},
               {"name": "slave", "ip": "127.0.0.3"}]
    env = make_env(lambda e: domain({"ips": [e.addr("master")]}, {"ips": [e.addr("slave")]}),
                   origins=origins, concurrency=1)
    master_cx = "cluster.origin_pull_ip_http.upstream_cx_total"
    for i in range(20):
        began = time.monotonic()
        r = env.request("www.test.com", f"/__size/{DRAIN_MAX_BYTES}/miss-{i}", timeout=30)
        assert (r.status, r.headers["x-served-by"], r.headers["x-origin-pull-attempts"]) == \
            (200, "slave", "2"), r
        assert len(r.body) == DRAIN_MAX_BYTES
        # The default first-byte timeout is 10 s: far above a failover on a loaded machine.
        assert time.monotonic() - began < 2.0, "the failed answer was held, not drained"
    assert env.stat("cluster.origin_pull_ip_http.upstream_rq_total") == 20
    assert env.stat(master_cx) == 1
    for i in range(3):
        began = time.monotonic()
        r = env.request("www.test.com", f"/head-{i}", method="HEAD", timeout=30)
        assert (r.status, r.headers["x-served-by"], r.body) == (200, "slave", b""), r
        assert time.monotonic() - began < 2.0, "the HEAD answer was held"
    assert env.stat(master_cx) == 1
    # One byte more: not drained, the router resets the attempt and closes the connection.
    for i in range(2):
        r = env.request("www.test.com", f"/__size/{DRAIN_MAX_BYTES + 1}/big-{i}")
        assert (r.status, r.headers["x-served-by"]) == (200, "slave"), r
    assert env.stat(master_cx) == 2


def test_router_failover_on_a_status_whose_body_stalls_fails_over_at_the_first_byte_timeout(make_env):
    """The drain filter holds a failed answer until its announced short body arrives; a body
    that never comes is bounded by the router's per-try (first-byte) timeout, which still runs
    because the router has not seen the headers: the request fails over to the slave then, it
    does not hang. The router never got that answer: the attempt is judged as a timeout, one
    strike of the default three (a lone stalled URL does not block the master)."""
    env = make_env(first_byte_timeout="1s")
    master = env.start_origin("master", ip="127.0.0.2", status=404)
    slave = env.start_origin("slave", ip="127.0.0.3")
    env.start(domain({"ips": [master.addr]}, {"ips": [slave.addr]}))
    began = time.monotonic()
    r = env.request("www.test.com", "/__stall/1000/x", timeout=30)
    took = time.monotonic() - began
    assert (r.status, r.headers["x-served-by"], r.headers["x-origin-pull-attempts"]) == \
        (200, "slave", "2"), r
    assert 0.9 <= took < 5, took
    r = env.request("www.test.com", "/after")
    assert (r.status, r.headers["x-served-by"]) == (200, "slave"), r
    assert master.count("/after") == 1, "one stalled answer does not block the master"
    env.counters_flushed()
    values = prometheus(env)
    assert metric(values, "origin_pull_origin_failures_total", domain="www.test.com",
                  origin=master.addr, kind="timeout") == 1
