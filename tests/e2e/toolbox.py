"""Shared by the operators'-toolbox tests (Prometheus, `origin-pull status`): one domain with a
live master, a dead master and a slave, driven so that every count is known exactly.

    expected = drive(env)   # after env.start(config(env))
"""

import os
import shutil
import subprocess
from pathlib import Path

from harness import REPO, _spawn, _stop_proc, free_port, wait_for

DOMAIN = "www.test.com"
CLI = Path(os.environ.get("ORIGIN_PULL_CLI") or REPO / "target" / "release" / "origin-pull")


def start_origins(env):
    """m1 serves everything but /missing (404), `dead` refuses connections, s1 is the slave."""
    env.start_origin("m1", ip="127.0.0.61", routes={"/missing": 404})
    env.start_origin("s1", ip="127.0.0.62")
    env.dead = env.dead_addr("127.0.0.63")


def config(env, block_seconds=120, per_origin=True):
    # Per-origin request counts (what status and the dashboard's per-origin panel show) need
    # metrics.per_origin; the filter's default counts requests per domain only.
    return {"debug_headers": True, "metrics": {"per_origin": per_origin}, "domains": [{
        "domain": DOMAIN,
        "master": {"ips": [env.addr("m1"), env.dead]},
        "slave": {"ips": [env.addr("s1")]},
        "detection": {"block_seconds": block_seconds}}]}


def drive(env, missing=5, after=7):
    """Until the dead master is picked once (connect error -> failed over to the slave by
    Envoy's router, and blocked), then `missing` requests m1 answers 404 (failed over to the
    slave), then `after` plain ones. Returns what the filter must have counted."""
    m1, s1, dead = env.addr("m1"), env.addr("s1"), env.dead
    before = 0
    for i in range(200):
        r = env.request(DOMAIN, f"/before{i}")
        before += 1
        if r.headers.get("x-origin-pull-attempts") == "2":
            assert (r.status, r.headers["x-served-by"]) == (200, "s1"), r
            break
        assert (r.status, r.headers["x-served-by"]) == (200, "m1"), r
    else:
        raise AssertionError("the dead master was never picked in 200 requests")
    wait_for(lambda: any(f"origin {dead} failed" in l for l in env.wasm_log_lines()), 5,
             what="the block of the dead master in the filter log")
    for _ in range(missing):
        r = env.request(DOMAIN, "/missing")
        assert (r.status, r.headers["x-served-by"]) == (200, "s1"), r
        assert r.headers["x-origin-pull-attempts"] == "2", "the blocked master was tried"
    for i in range(after):
        r = env.request(DOMAIN, f"/after{i}")
        assert (r.status, r.headers["x-served-by"]) == (200, "m1"), r
        assert r.headers["x-origin-pull-attempts"] == "1", "the blocked master was tried"
    # Each VM adds its counters to Envoy's stats on its tick: read them once they are in.
    env.counters_flushed()
    return {
        "client_requests": before + missing + after,
        # m1: every routed request but the one to `dead`, which the slave served.
        "requests": {m1: before - 1 + missing + after, dead: 1, s1: missing + 1},
        "failures": {(dead, "connect"): 1, (m1, "4xx"): missing},
        "failovers_served": 1 + missing,
        "blocked": {dead},
    }


DIST = REPO / "dist"


def release():
    """dist/ of `make release`, made here if missing or not from the current build."""
    import envoy_config as ec
    wasm = DIST / "origin_pull.wasm"
    if (not wasm.exists() or not (DIST / "oci" / "index.json").exists()
            or wasm.read_bytes() != ec.WASM.read_bytes()):
        p = subprocess.run(["make", "-s", "release"], cwd=REPO, capture_output=True,
                           text=True, timeout=900)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return DIST


def run_cli(*args, timeout=30):
    if not CLI.exists():
        raise RuntimeError(f"{CLI} is missing: run `make cli`")
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=timeout)


class Prometheus:
    """Prometheus (Debian package `prometheus`) on 127.0.0.1, scraping Envoy's admin
    /stats/prometheus every `interval`; storage in `directory`. Stopped by PID on exit."""

    def __init__(self, directory, admin_port, interval="500ms"):
        self.binary = shutil.which("prometheus")
        if not self.binary:
            raise RuntimeError("prometheus is not installed (Debian package `prometheus`; "
                               ".ci/run installs it)")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port("127.0.0.1")
        self.config = self.dir / "prometheus.yml"
        self.config.write_text(
            "global:\n"
            f"  scrape_interval: {interval}\n"
            f"  evaluation_interval: {interval}\n"
            "scrape_configs:\n"
            "  - job_name: envoy\n"
            "    metrics_path: /stats/prometheus\n"
            "    static_configs:\n"
            f"      - targets: ['127.0.0.1:{admin_port}']\n")
        self.log = self.dir / "prometheus.log"
        self.proc = None

    def __enter__(self):
        out = open(self.log, "ab")
        self.proc = _spawn([self.binary, f"--config.file={self.config}",
                            f"--storage.tsdb.path={self.dir / 'data'}",
                            f"--web.listen-address=127.0.0.1:{self.port}",
                            "--storage.tsdb.retention.time=1h"],
                           stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        wait_for(lambda: self._ready(), 30, interval=0.2, what="Prometheus /-/ready")
        return self

    def _ready(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited:\n{self.log.read_text()[-3000:]}")
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
            return r.status == 200

    def __exit__(self, *exc):
        _stop_proc(self.proc, 10)
        return False

    def query(self, promql):
        """Instant query: [(labels, float value), ...]."""
        import json
        import urllib.parse
        import urllib.request
        url = (f"http://127.0.0.1:{self.port}/api/v1/query?"
               + urllib.parse.urlencode({"query": promql}))
        with urllib.request.urlopen(url, timeout=5) as r:
            doc = json.load(r)
        assert doc["status"] == "success", doc
        data = doc["data"]
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(s["metric"], float(s["value"][1])) for s in data["result"]]

    def wait_scraped_after(self, t, timeout=20):
        """Wait until a scrape that started after Unix time `t` succeeded."""
        def fresh():
            rows = self.query('timestamp(up{job="envoy"} == 1)')
            return rows and rows[0][1] > t
        wait_for(fresh, timeout, interval=0.2, what=f"a Prometheus scrape after {t}")

