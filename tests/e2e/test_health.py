"""Origin health (issue 3): active probes run by one VM through a shared-data lease, per-origin
metrics at /stats/prometheus, access-log attribution. Real Envoy at --concurrency 2.
Origins use 127.0.3.x.
"""

import re
import time

import pytest

from harness import wait_for

DOMAIN = "www.test.com"


def probe(path="/healthz", interval_ms=300, timeout_ms=250, unhealthy=2, healthy=2, **extra):
    return {"path": path, "interval_ms": interval_ms, "timeout_ms": timeout_ms,
            "unhealthy_threshold": unhealthy, "healthy_threshold": healthy, **extra}


def prometheus(env):
    """{(name, frozenset(labels.items())): value} of the filter's metrics at /stats/prometheus."""
    status, text = env.admin("/stats/prometheus")
    assert status == 200
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(origin_pull_\w+)(?:\{(.*)\})? (\S+)$", line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            out[(m.group(1), frozenset(labels.items()))] = float(m.group(3))
    return out


def metric(values, name, **labels):
    key = (name, frozenset(labels.items()))
    assert key in values, f"{name}{labels} missing; have {sorted(k for k in values if k[0] == name)}"
    return values[key]


def blocked_gauge(env, origin):
    return env.stat(f"wasmcustom.origin_pull_origin_blocked;domain={DOMAIN};origin={origin}")


def probe_paths(origin, path="/healthz"):
    return sum(1 for r in origin.requests() if r["path"] == path)


def test_probes_block_a_dead_ip_that_no_client_request_ever_reaches(env):
    live = env.start_origin("live", ip="127.0.3.1")
    # Alive for clients, but its health check fails: only the prober can tell.
    sick = env.start_origin("sick", ip="127.0.3.2", routes={"/healthz": 503})
    env.start({"debug_headers": True, "domains": [{"domain": DOMAIN,
               "master": {"ips": [live.addr, sick.addr]},
               "detection": {"block_seconds": 120, "probe": probe()}}]})
    wait_for(lambda: blocked_gauge(env, sick.addr) == 1, 20, what="the probe blocks the sick IP")
    workers = set()
    for i in range(60):
        r = env.request(DOMAIN, f"/obj{i}")
        assert (r.status, r.headers["x-served-by"], r.headers["x-origin-pull-attempts"]) == \
            (200, "live", "1"), r
        workers.add(r.headers["x-origin-pull-worker"])
    # The sick origin's own log: probes only, never a client path.
    paths = {r["path"] for r in sick.requests()}
    assert paths == {"/healthz"}, paths
    assert all(r["host"] == DOMAIN for r in sick.requests())
    assert len(workers) == 2, f"requests did not reach both workers: {workers}"
    # Envoy flushes its log file every 100 ms (harness): wait for the line, do not race it.
    wait_for(lambda: any("probe of master origin " + sick.addr
                         + " failed 2 time(s) in a row (status 503)" in l
                         for l in env.wasm_log_lines()), 5, what="the probe's block log line")
    # Probes keep counting their failures: wait for the other counters to be flushed.
    env.counters_flushed(keep=lambda name: "origin_pull_probes_total" not in name)
    values = prometheus(env)
    assert metric(values, "origin_pull_origin_blocks_total", domain=DOMAIN, origin=sick.addr,
                  source="probe") == 1
    # Per-origin request series are opt-in (metrics.per_origin); the domain's counts every request.
    assert metric(values, "origin_pull_requests_total", domain=DOMAIN) == 60
    assert not any(name == "origin_pull_origin_requests_total" for name, _ in values)


def test_recovered_ip_is_back_after_the_healthy_threshold_not_the_block_time(env):
    live = env.start_origin("live", ip="127.0.3.3")
    flaky = env.start_origin("flaky", ip="127.0.3.4")
    env.start({"debug_headers": True, "domains": [{"domain": DOMAIN,
               "master": {"ips": [live.addr, flaky.addr]},
               "detection": {"block_seconds": 300, "probe": probe(healthy=3)}}]})
    wait_for(lambda: probe_paths(flaky) >= 1, 20, what="first probe")
    flaky.stop()
    wait_for(lambda: blocked_gauge(env, flaky.addr) == 1, 20, what="the probe blocks the dead IP")
    before = probe_paths(flaky)
    flaky.start()
    restarted = time.monotonic()
    wait_for(lambda: blocked_gauge(env, flaky.addr) == 0, 30, what="the probe unblocks it")
    took = time.monotonic() - restarted
    # Unblocked by 3 consecutive successful probes, far sooner than the 300 s block.
    assert probe_paths(flaky) - before >= 3
    assert took < 60, took
    served = {env.request(DOMAIN, f"/back{i}").headers["x-served-by"] for i in range(40)}
    assert served == {"live", "flaky"}, served
    # Envoy flushes its log file every 100 ms (harness): wait for the line, do not race it.
    wait_for(lambda: any(f"probe of master origin {flaky.addr} passed 3 time(s) in a row; unblocked"
                         in l for l in env.wasm_log_lines()), 5, what="the probe's unblock log line")
    env.counters_flushed(keep=lambda name: "origin_pull_probes_total" not in name)
    values = prometheus(env)
    assert metric(values, "origin_pull_origin_unblocks_total", domain=DOMAIN,
                  origin=flaky.addr) == 1
    print(f"recovery: unblocked {took:.2f} s after the origin came back")


def test_only_one_vm_probes_with_two_workers_and_after_a_reload(env):
    a = env.start_origin("a", ip="127.0.3.5")
    b = env.start_origin("b", ip="127.0.3.6")
    interval = 0.2

    def config(path):
        return {"domains": [{"domain": DOMAIN, "master": {"ips": [a.addr, b.addr]},
                             "detection": {"probe": probe(path=path, interval_ms=int(interval * 1000),
                                                          timeout_ms=150)}}]}

    env.start(config("/healthz"))
    assert env.concurrency == 2

    def rate_over(window, path):
        wait_for(lambda: probe_paths(a, path) >= 2, 20, what=f"probes of {path}")
        start = probe_paths(a, path)
        time.sleep(window)
        return probe_paths(a, path) - start

    window = 4.0
    one = window / interval  # 20 probes if exactly one VM probes; 60 if all three VMs did
    count = rate_over(window, "/healthz")
    print(f"one prober: {count} probes of one origin in {window} s (expected {one:.0f})")
    assert 0.4 * one <= count <= 1.25 * one + 2, f"{count} probes in {window} s (one prober: {one})"
    # Both origins are probed, by the same single VM.
    assert abs(probe_paths(b) - probe_paths(a)) <= 3
    # A reload replaces the root contexts: the lease is handed over, still one prober.
    env.reload(config("/healthz2"), expect="success")
    count = rate_over(window, "/healthz2")
    assert 0.4 * one <= count <= 1.25 * one + 2, f"after reload: {count} probes in {window} s"
    time.sleep(1)
    old = probe_paths(a, "/healthz")
    time.sleep(2)
    assert probe_paths(a, "/healthz") == old, "the old configuration still probes"


def absent_or_zero(values, name, **labels):
    return values.get((name, frozenset(labels.items())), 0) == 0


@pytest.mark.parametrize("per_origin", [True, False])
def test_prometheus_metrics_and_access_log_match_the_requests_made(env, per_origin):
    master = env.start_origin("master", ip="127.0.3.7", routes={"/miss": 404, "/gone": 404})
    slave = env.start_origin("slave", ip="127.0.3.8", routes={"/gone": 404})
    dead = env.dead_addr("127.0.3.9")
    backup = env.start_origin("backup", ip="127.0.3.10")
    env.start({"metrics": {"per_origin": per_origin}, "domains": [
        {"domain": DOMAIN, "master": {"ips": [master.addr]}, "slave": {"ips": [slave.addr]}},
        {"domain": "dead.test.com", "master": {"ips": [dead]}, "slave": {"ips": [backup.addr]}},
    ]})
    for i in range(10):
        assert env.request(DOMAIN, f"/ok{i}").status == 200
    for _ in range(4):
        r = env.request(DOMAIN, "/miss")
        assert (r.status, r.headers["x-served-by"]) == (200, "slave")
    for _ in range(2):
        assert env.request(DOMAIN, "/gone").status == 404
    for i in range(3):
        r = env.request("dead.test.com", f"/d{i}")
        assert (r.status, r.headers["x-served-by"]) == (200, "backup")

    env.counters_flushed()
    values = prometheus(env)
    m = lambda name, **labels: metric(values, name, **labels)  # noqa: E731
    if per_origin:
        assert m("origin_pull_origin_requests_total", domain=DOMAIN, origin=master.addr) == 16
        assert m("origin_pull_origin_requests_total", domain=DOMAIN, origin=slave.addr) == 6
    else:
        assert not any(name == "origin_pull_origin_requests_total" for name, _ in values)
    assert m("origin_pull_requests_total", domain=DOMAIN) == 16
    assert m("origin_pull_requests_total", domain="dead.test.com") == 3
    assert m("origin_pull_origin_failures_total", domain=DOMAIN, origin=master.addr, kind="4xx") == 6
    assert m("origin_pull_origin_failures_total", domain=DOMAIN, origin=slave.addr, kind="4xx") == 2
    for kind in ("connect", "timeout", "5xx"):  # never happened: no series (or 0)
        assert absent_or_zero(values, "origin_pull_origin_failures_total", domain=DOMAIN,
                              origin=master.addr, kind=kind)
    # Healthy origins that never failed have no failure, block or gauge series at all.
    assert not any(dict(labels).get("origin") == backup.addr for name, labels in values
                   if name != "origin_pull_origin_requests_total")
    assert m("origin_pull_failovers_total", domain=DOMAIN, outcome="served") == 4
    assert m("origin_pull_failovers_total", domain=DOMAIN, outcome="failed") == 2
    # The dead master: one connect failure, blocked, then the slave is asked directly.
    d = "dead.test.com"
    if per_origin:
        assert m("origin_pull_origin_requests_total", domain=d, origin=dead) == 1
    assert m("origin_pull_origin_failures_total", domain=d, origin=dead, kind="connect") == 1
    assert m("origin_pull_origin_blocks_total", domain=d, origin=dead, source="passive") == 1
    assert m("origin_pull_origin_blocked", domain=d, origin=dead) == 1
    if per_origin:
        assert m("origin_pull_origin_requests_total", domain=d, origin=backup.addr) == 3
    assert m("origin_pull_failovers_total", domain=d, outcome="served") == 1
    # Passive-only: no probe ever sent.
    assert all(v == 0 for (name, _), v in values.items() if name == "origin_pull_probes_total")
    assert master.count() == 16 and slave.count() == 6 and backup.count() == 3

    def lines(path):
        return [l for l in env.access_log() if f" {path}\" " in l]

    wait_for(lambda: len(lines("/d2")) == 1, 10, what="access log flushed")
    ok = lines("/ok0")[0]
    assert "details=via_upstream" in ok and f"origin={master.addr} role=master attempts=1 failed_over=false" in ok, ok
    for line in lines("/miss"):
        # Envoy's router re-sent the request: its own view names the slave too.
        assert f"upstream={slave.addr}" in line, line
        assert f"origin={slave.addr} role=slave attempts=2 failed_over=true" in line, line
        assert "details=via_upstream" in line, line
        assert line.split('" ')[1].startswith("200 "), line
    first, *direct = lines("/d0") + lines("/d1") + lines("/d2")
    assert f"origin={backup.addr} role=slave attempts=2 failed_over=true" in first, first
    for line in direct:  # master blocked: straight to the slave, no failover
        assert f"origin={backup.addr} role=slave attempts=1 failed_over=false" in line, line
