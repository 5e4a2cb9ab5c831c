"""Scenarios h (the master/slave switch, also on a keep-alive connection) and i (reloads under a
bounded load, zero failed requests). Origins use 127.0.0.50-127.0.0.59.
"""

import http.client
import threading
import time

import pytest

D = "www.test.com"


def config(m, s, switch=False, weights=None):
    ips = [m] if weights is None else [f"{m}:{weights[0]}", f"{weights[2]}:{weights[1]}"]
    return {"domains": [{"domain": D, "master": {"ips": ips}, "slave": {"ips": [s]},
                         "master_slave_switch": switch}], "debug_headers": True}


def served_by(env, path):
    r = env.request(D, path)
    assert r.status == 200, r
    return r.headers["x-served-by"]


def test_switch_flips_which_origin_serves(env):
    m = env.start_origin("m", ip="127.0.0.50", routes={"/only-on-s": 404})
    s = env.start_origin("s", ip="127.0.0.51", routes={"/only-on-m": 404})
    env.start(config(m.addr, s.addr))
    assert {served_by(env, f"/a{i}") for i in range(5)} == {"m"}
    assert served_by(env, "/only-on-s") == "s"          # master 404 -> slave

    env.reload(config(m.addr, s.addr, switch=True), expect="success")
    assert {served_by(env, f"/b{i}") for i in range(5)} == {"s"}
    assert served_by(env, "/only-on-m") == "m"          # the old master is now the slave
    assert s.count("/only-on-m") == 1

    env.reload(config(m.addr, s.addr, switch=False), expect="success")
    assert {served_by(env, f"/c{i}") for i in range(5)} == {"m"}


def test_reloads_under_load_lose_no_request(make_env):
    env = make_env(drain_time_s=1)
    a = env.start_origin("a", ip="127.0.0.52")
    b = env.start_origin("b", ip="127.0.0.53")
    s = env.start_origin("s", ip="127.0.0.54")
    names = {"a", "b", "s"}
    env.start(config(a.addr, s.addr, weights=(1, 1, b.addr)))

    duration, max_requests, threads = 20.0, 100_000, 4
    stop = threading.Event()
    results = []  # (status, served_by, sent, done) per request
    lock = threading.Lock()

    def client(k):
        n = 0
        while not stop.is_set() and n < max_requests // threads:
            sent = time.monotonic()
            try:
                r = env.request(D, f"/load/{k}/{n}", timeout=10)
                outcome = (r.status, r.headers.get("x-served-by"))
            except Exception as e:  # a connection error is a failed request too
                outcome = ("error", repr(e))
            with lock:
                results.append((*outcome, sent, time.monotonic()))
            n += 1

    workers = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(threads)]
    ok0 = env.reloads_applied()
    started = time.monotonic()
    for w in workers:
        w.start()
    reloads = 0
    applied = [(started, started, False)]  # (reload started, in effect, switch) per config
    try:
        while time.monotonic() - started < duration:
            time.sleep(2.0)
            reloads += 1
            weights = (reloads % 3 + 1, 3 - reloads % 3, b.addr)
            t = time.monotonic()
            env.reload(config(a.addr, s.addr, switch=reloads % 2 == 1, weights=weights),
                       expect="success")
            applied.append((t, time.monotonic(), reloads % 2 == 1))
        time.sleep(1.0)  # the last configuration serves for a while too
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=15)
    elapsed = time.monotonic() - started

    failed = [r for r in results if r[0] != 200 or r[1] not in names]
    print(f"reload under load: {len(results)} requests, {reloads} reloads in {elapsed:.1f}s, "
          f"{len(failed)} failed")
    assert reloads >= 8
    assert env.reloads_applied() - ok0 == reloads
    assert len(results) >= 500
    assert failed == [], failed[:10]
    # The switch took effect EACH time: every request sent (on its own new connection) after a
    # reload was in effect and answered before the next one started was served by the role
    # that configuration names (with the switch on the slave `s`, off the masters `a`/`b`).
    for k, (_, in_effect, switch) in enumerate(applied):
        next_start = applied[k + 1][0] if k + 1 < len(applied) else float("inf")
        window = [r[1] for r in results if r[2] > in_effect and r[3] < next_start]
        want = {"s"} if switch else {"a", "b"}
        assert window and set(window) <= want, (k, switch, window[:20])


def keep_alive_run(env, m, s, switch_after, total):
    """Requests on ONE keep-alive connection; the switch is delivered after `switch_after` of
    them. Returns [(index, status, served_by)] and the connection's local port at each."""
    conn = http.client.HTTPConnection(env.listener_ip, env.listener_port, timeout=10)
    seen = []
    try:
        for i in range(total):
            if i == switch_after:
                env.reload(config(m.addr, s.addr, switch=True), expect="success")
            conn.request("GET", f"/ka/{i}", headers={"Host": D})
            r = conn.getresponse()
            r.read()
            assert not r.will_close, f"request {i}: Envoy closes the connection"
            seen.append((i, r.status, r.headers.get("x-served-by"), conn.sock.getsockname()[1]))
    finally:
        conn.close()
    return seen


@pytest.mark.parametrize("delivery", ["ecds", "lds"])
def test_switch_reaches_an_open_keep_alive_connection(make_env, delivery):
    """ECDS (render's default): every request after the switch, on the SAME connection, is served
    by the new role, with no error and no reconnect. LDS: that connection keeps the old
    listener's configuration (why ECDS is the default), still without errors."""
    env = make_env(delivery=delivery, drain_time_s=30)
    m = env.start_origin("m", ip="127.0.0.55")
    s = env.start_origin("s", ip="127.0.0.56")
    env.start(config(m.addr, s.addr))
    seen = keep_alive_run(env, m, s, switch_after=10, total=30)
    assert [x[1] for x in seen] == [200] * 30, seen
    assert len({x[3] for x in seen}) == 1, "one connection throughout"
    before = {x[2] for x in seen[:10]}
    after = {x[2] for x in seen[10:]}
    assert before == {"m"}, seen
    if delivery == "ecds":
        assert after == {"s"}, seen
    else:
        assert after == {"m"}, seen  # the old listener's filter until the connection closes
    # A new connection sees the switch either way.
    assert served_by(env, "/fresh") == "s"
