"""Smoke test: Envoy loads the origin-pull filter and routes to a single master IP."""


def test_routes_to_single_master_and_rejects_unknown_host(env):
    m1 = env.start_origin("m1", ip="127.0.0.2")
    env.start({"domains": [{"domain": "www.test.com", "master": {"ips": [m1.addr]}}]})

    r = env.request("www.test.com", "/hello?x=1")
    assert r.status == 200, r
    assert r.headers["x-served-by"] == "m1"
    assert r.body == b"served-by=m1 path=/hello?x=1\n"
    assert r.headers["x-seen-host"] == "www.test.com"  # default Host: the client's
    assert m1.requests()[-1] == {"method": "GET", "path": "/hello?x=1", "host": "www.test.com"}

    r = env.request("unknown.example", "/hello")
    assert r.status == 404, r
    assert r.headers.get("x-origin-pull-error") == "unknown-host"
    assert b"no origin is configured for host 'unknown.example'" in r.body
    assert "x-served-by" not in r.headers
    assert m1.count() == 1  # the unknown host never reached an origin
    # The module under test is a real build: a bench-only `ablate-*` build says so at start.
    # Envoy flushes its log file every 100 ms (harness): wait for the line, do not race it.
    from harness import wait_for
    wait_for(lambda: any("configured 1 domain(s)" in l for l in env.wasm_log_lines()), 5,
             what="the filter's configure log line")
    lines = env.wasm_log_lines()
    assert not any("BENCH-ONLY" in l for l in lines), lines


def test_access_log_names_the_origin(env):
    m1 = env.start_origin("m1", ip="127.0.0.2")
    env.start({"domains": [{"domain": "www.test.com", "master": {"ips": [m1.addr]}}]})
    assert env.request("www.test.com", "/logged").status == 200
    # The access log (Envoy's stdout) is written when the stream ends; poll briefly.
    from harness import wait_for
    line = wait_for(lambda: next((l for l in env.access_log() if "/logged" in l), None),
                    timeout=5, what="access log line")
    assert f"upstream={m1.addr}" in line
    # The happy path writes no filter state: the log names the origin from Envoy's upstream.
    assert f"origin={m1.addr} role=master attempts=1 failed_over=false" in line, line


def test_access_log_attribution_of_callout_failovers_and_local_replies(env):
    """The filter writes only what the access log cannot tell; the rendered format fills in the
    rest. A callout failover is a local reply Envoy attributes to the FIRST origin."""
    m1 = env.start_origin("m1", ip="127.0.0.2", routes={"/miss": 404})
    s1 = env.start_origin("s1", ip="127.0.0.3")
    env.start({"envoy": {"failover": "callout"}, "domains": [
        {"domain": "www.test.com", "master": {"ips": [m1.addr]}, "slave": {"ips": [s1.addr]}},
        {"domain": "dead.test.com", "master": {"ips": [env.dead_addr("127.0.0.9")]}}]})
    assert env.request("www.test.com", "/ok").status == 200
    r = env.request("www.test.com", "/miss")
    assert (r.status, r.headers["x-served-by"]) == (200, "s1"), r
    assert env.request("dead.test.com", "/dead").status == 502
    assert env.request("unknown.example", "/unknown").status == 404
    from harness import wait_for

    def line(path):
        return next((l for l in env.access_log() if f" {path}\" " in l), None)

    wait_for(lambda: line("/unknown"), 5, what="access log lines")
    assert f"upstream={m1.addr} origin={m1.addr} role=master attempts=1 failed_over=false" \
        in line("/ok"), line("/ok")
    miss = line("/miss")
    assert "details=origin_pull_failed_over_to_slave" in miss, miss
    assert f"upstream={m1.addr} origin={s1.addr} role=slave attempts=2 failed_over=true" in miss
    # Envoy's own reply (connect failure, nothing to fail over to): the filter names the origin.
    dead = line("/dead")
    assert "origin=127.0.0.9:" in dead and "role=master attempts=1 failed_over=false" in dead, dead
    assert "origin=- role=- attempts=- failed_over=-" in line("/unknown"), line("/unknown")
