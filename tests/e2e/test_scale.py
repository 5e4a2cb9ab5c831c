"""10,000 accelerated domains in one configuration: Envoy starts with it, and a reload of it under
load (delivered by ECDS, render's default) loses no request; the p99 latency during the reload
is printed next to the p99 before it. Origins use 127.0.7.x; the other 9,999 domains point at
loopback addresses where nothing listens (127.10.x.y), which no request here reaches.
"""

import http.client
import threading
import time

from harness import wait_for

N = 10_000
LIVE = f"d{N - 1}.scale.test"


def dead_ip(j):
    a, z = divmod(j, 250)
    x, y = divmod(a, 250)
    return f"127.{10 + x}.{y}.{z + 1}"


def scale_config(live_masters, live_slave, weights=(1, 2), switch_every=0):
    """N domains; the last is served by the live origins. switch_every=k flips the switch of
    every k-th dead domain (a reload that changes many domains at once)."""
    domains = []
    for i in range(N - 1):
        d = {"domain": f"d{i}.scale.test",
             "master": {"ips": [f"{dead_ip(4 * i + k)}:8081:{k + 1}" for k in range(3)]},
             "slave": {"ips": [f"{dead_ip(4 * i + 3)}:8081"]}}
        if switch_every and i % switch_every == 0:
            d["master_slave_switch"] = True
        domains.append(d)
    domains.append({"domain": LIVE,
                    "master": {"ips": [f"{m}:{w}" for m, w in zip(live_masters, weights)]},
                    "slave": {"ips": [live_slave]}})
    return {"domains": domains, "debug_headers": True}


def p99(latencies):
    xs = sorted(latencies)
    return xs[min(len(xs) - 1, int(len(xs) * 0.99))] if xs else None


def test_reload_of_10000_domains_under_load_loses_nothing(make_env):
    env = make_env(drain_time_s=2)
    a = env.start_origin("a", ip="127.0.7.1")
    b = env.start_origin("b", ip="127.0.7.2")
    s = env.start_origin("s", ip="127.0.7.3")
    env.start(scale_config([a.addr, b.addr], s.addr), timeout=90)
    # The filter logs its configure time (Envoy flushes its log file about once a second).
    wait_for(lambda: any("configured 10000 domain(s) in" in line
                         for line in env.wasm_log_lines()), 10, what="the configure log line")

    stop = threading.Event()
    samples = []  # (start time, latency s, status or error)
    lock = threading.Lock()
    deadline = time.monotonic() + 60  # bounded whatever happens

    def client(k):
        conn = http.client.HTTPConnection(env.listener_ip, env.listener_port, timeout=10)
        n = 0
        while not stop.is_set() and n < 20_000 and time.monotonic() < deadline:
            t0 = time.monotonic()
            try:
                conn.request("GET", f"/load/{k}/{n}", headers={"Host": LIVE})
                r = conn.getresponse()
                r.read()
                outcome = r.status if r.headers.get("x-served-by") in ("a", "b", "s") else "who?"
            except Exception as e:  # noqa: BLE001 - a failed request is a result
                outcome = repr(e)
                conn.close()
                conn = http.client.HTTPConnection(env.listener_ip, env.listener_port, timeout=10)
            with lock:
                samples.append((t0, time.monotonic() - t0, outcome))
            n += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(4)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    windows = []
    for r in range(2):
        t0 = time.monotonic()
        env.reload(scale_config([a.addr, b.addr], s.addr, weights=(2 + r, 1), switch_every=2 + r),
                   expect="success", timeout=60)
        windows.append((t0, time.monotonic()))
        time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join(timeout=20)

    errors = [x for x in samples if x[2] != 200]
    during = [lat for t, lat, _ in samples if any(w0 <= t <= w1 for w0, w1 in windows)]
    before = [lat for t, lat, _ in samples if t < windows[0][0]]
    reload_s = [w1 - w0 for w0, w1 in windows]
    print(f"\n10,000-domain reload under load: {len(samples)} requests, {len(errors)} errors; "
          f"reload applied in {', '.join(f'{x:.2f}' for x in reload_s)} s; p99 before "
          f"{p99(before) * 1000:.1f} ms ({len(before)} requests), p99 during the reloads "
          f"{p99(during) * 1000:.1f} ms ({len(during)} requests), max during "
          f"{max(during) * 1000:.1f} ms")
    for line in env.wasm_log_lines():
        if "configured 10000 domain(s)" in line:
            print("  " + line.split("wasm log ")[-1])
    assert errors == [], errors[:10]
    assert len(during) >= 20, "requests were sent while the reloads were applied"
    assert env.reloads_applied() >= 3  # the initial configuration and the two reloads
    # The new configuration serves: its weights changed nothing visible, but the switch did
    # apply to a dead domain (its old slave is the master now: still nothing listens there).
    assert env.request(LIVE, "/after").status == 200
