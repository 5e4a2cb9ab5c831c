#!/usr/bin/env python3
"""`make scale`: origin-pull with 1, 1,000 and 10,000 accelerated domains, in one run.

For each size, a plugin configuration of N domains (3 weighted master IPs + 1 slave IP each, as a
CDN console would hold them; every address a loopback one, 127.10.x.y, where nothing listens) is
rendered with `origin-pull render --out-dir` (render's defaults: ECDS delivery) and Envoy
(`--concurrency 2`) is started from it. Measured:

  ready      seconds from starting Envoy until /ready says LIVE
  RSS        Envoy's resident memory 1 s after that
  /stats     lines at /stats after the warm-up requests (the filter defines stats lazily)
  configure  the filter's own `on_configure` time per VM (its "configured N domain(s) in X ms"
             log line; 4 VMs: two on the main thread, one per worker)
  rps        requests/s through Envoy (wrk -t1 -c32, 1 KiB object from nginx) to ONE domain — the
             last one of the list, whose masters and slave are the live nginx on 127.12.0.x —
             median of SCALE_REPS runs; at 1 and 10,000 domains, the Envoys running side by
             side and measured in turn
  blocked    10,000 domains again, after SCALE_BLOCKED origins were blocked by client requests
             to domains whose origins are dead (in batches until the filter counted that many);
             the blocks counted from the filter's "blocked for" log lines; then rps as above.

Writes bench/results/scale.md (and scale.json). Options (environment): SCALE_SIZES (1,1000,10000),
SCALE_DURATION (wrk seconds, 4), SCALE_REPS (5), SCALE_BLOCKED (5000; 0 skips),
SCALE_CALLGRIND (1: also instructions per request with bench/hot_path.rs under callgrind,
about 2 minutes; 0 skips), SCALE_OUT.
Every number depends on the machine and its load: the report states the load averages.
"""

import concurrent.futures
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
import run as br  # noqa: E402  (process, wrk and machine helpers of `make bench`)

CLI = REPO / "target" / "release" / "origin-pull"
WASM = REPO / "target" / "wasm32-wasip1" / "release" / "origin_pull.wasm"
LISTEN_IP = "127.12.0.100"
LIVE_MASTERS = ("127.12.0.1", "127.12.0.2", "127.12.0.3")
LIVE_SLAVE = "127.12.0.4"
CONFIGURED = re.compile(r"configured (\d+) domain\(s\) in ([\d.]+) ms \(parse ([\d.]+) ms")


def options():
    env = os.environ
    return {
        "sizes": [int(x) for x in env.get("SCALE_SIZES", "1,1000,10000").split(",")],
        "duration": float(env.get("SCALE_DURATION", "4")),
        "reps": int(env.get("SCALE_REPS", "5")),
        "blocked": int(env.get("SCALE_BLOCKED", "5000")),
        "instructions": env.get("SCALE_CALLGRIND", "1") not in ("", "0"),
        "connections": 32,
        "out": Path(env.get("SCALE_OUT", str(REPO / "bench" / "results"))),
        "envoy": env.get("ENVOY", str(REPO / ".venv" / "bin" / "envoy")),
    }


def dead_ip(j):
    """The j-th dead origin address: 127.10.0.1 upwards, never .0 or .255 in the last octet."""
    a, z = divmod(j, 250)
    x, y = divmod(a, 250)
    return f"127.{10 + x}.{y}.{z + 1}"


def plugin_config(n, origin_port):
    """N domains d0.scale.test .. d{N-1}.scale.test; the last one is served by the live nginx."""
    domains = []
    for i in range(n):
        if i == n - 1:
            masters = [f"{ip}:{origin_port}:{w}" for ip, w in zip(LIVE_MASTERS, (1, 2, 3))]
            slave = f"{LIVE_SLAVE}:{origin_port}"
        else:
            masters = [f"{dead_ip(4 * i + k)}:8081:{k + 1}" for k in range(3)]
            slave = f"{dead_ip(4 * i + 3)}:8081"
        domains.append({"domain": f"d{i}.scale.test", "master": {"ips": masters},
                        "slave": {"ips": [slave]}})
    return {"domains": domains}


def nginx_conf(run_dir, docroot, port):
    listens = "\n".join(f"        listen {ip}:{port};" for ip in (*LIVE_MASTERS, LIVE_SLAVE))
    (run_dir / "origin.tmp").mkdir(parents=True, exist_ok=True)
    return f"""worker_processes 1;
daemon off;
pid {run_dir}/origin.pid;
error_log {run_dir}/origin.error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    client_body_temp_path {run_dir}/origin.tmp/body;
    proxy_temp_path {run_dir}/origin.tmp/proxy;
    fastcgi_temp_path {run_dir}/origin.tmp/fastcgi;
    uwsgi_temp_path {run_dir}/origin.tmp/uwsgi;
    scgi_temp_path {run_dir}/origin.tmp/scgi;
    server {{
{listens}
        root {docroot};
    }}
}}
"""


def admin_get(port, path, timeout=5):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    finally:
        c.close()


def get(port, host, path, timeout=10):
    c = http.client.HTTPConnection(LISTEN_IP, port, timeout=timeout)
    try:
        c.request("GET", path, headers={"Host": host})
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def start_envoy(o, set_dir, admin_port, log_path):
    """Envoy from the rendered set; returns (process, seconds until /ready says LIVE)."""
    t0 = time.monotonic()
    proc = subprocess.Popen([o["envoy"], "-c", str(set_dir / "envoy.yaml"), "--concurrency", "2",
                             "-l", "warning", "--component-log-level", "wasm:info",
                             "--disable-hot-restart", "--log-path", str(log_path)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    br._PROCS.append(proc)
    deadline = t0 + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Envoy exited ({proc.returncode}); see {log_path}")
        try:
            status, body = admin_get(admin_port, "/ready", timeout=1)
            if status == 200 and body.strip() == "LIVE":
                return proc, time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"Envoy not ready after 120 s; see {log_path}")


def configure_times(log_path):
    """(domains, total ms, parse ms) of every "configured" line the filter logged."""
    text = Path(log_path).read_text(errors="replace")
    return [(int(d), float(t), float(p)) for d, t, p in CONFIGURED.findall(text)]


def wrk_once(o, port, host):
    args = ["wrk", "-t1", f"-c{o['connections']}", f"-d{max(1, round(o['duration']))}s",
            "--latency", "--timeout", "5s", "-H", f"Host: {host}",
            f"http://{LISTEN_IP}:{port}/1k"]
    p = subprocess.run(args, capture_output=True, text=True, timeout=o["duration"] + 60)
    r = br.parse_wrk(p.stdout)
    if p.returncode != 0 or r["non2xx"] or r["socket_errors"] or not r["requests"]:
        raise RuntimeError(f"wrk to {host}: errors\n{p.stdout}{p.stderr}")
    return r


def interleaved_rps(o, sets):
    """wrk against every set in turn, SCALE_REPS rounds (A B C A B C ...): a slow period of the
    machine hits every set alike. Stores the median rps and p99 in each set's result."""
    runs = {id(x): [] for x in sets}
    for _ in range(o["reps"]):
        for x in sets:
            runs[id(x)].append(wrk_once(o, x["port"], x["live"]))
    for x in sets:
        rs = runs[id(x)]
        x["result"].update({
            "rps": statistics.median(r["rps"] for r in rs),
            "p99_us": statistics.median(r["p99_us"] for r in rs if r["p99_us"] is not None),
            "runs": [round(r["rps"]) for r in rs]})


def blocks_counted(admin):
    """Blocks the filter counted so far (origin_pull_origin_blocks_total, all origins)."""
    status, text = admin_get(admin, "/stats")
    total = 0
    for line in text.splitlines():
        if line.startswith("wasmcustom.origin_pull_origin_blocks_total"):
            total += int(line.rsplit(": ", 1)[1])
    return total


def block_origins(o, port, admin, want, n):
    """Blocks about `want` origins with requests to dead domains (each request blocks the
    origins it tries: a master and the slave, or more), in batches until the filter has counted
    `want` blocks. Returns the statuses (all 502)."""
    statuses, i = [], 0

    def one(k):
        return get(port, f"d{k}.scale.test", f"/block/{k}")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        while i < n - 1 and blocks_counted(admin) < want:
            batch = range(i, min(i + 250, n - 1))
            statuses += list(pool.map(one, batch))
            i = batch.stop
            # The filter flushes its counters on each VM's tick (1 s): read them once flushed.
            time.sleep(1.2)
    return statuses


def blocks_logged(log_path):
    """Blocks the filter logged (read once Envoy stopped: its log file is flushed then)."""
    return len(re.findall(r"blocked for \d+ s", Path(log_path).read_text(errors="replace")))


def start_set(o, run_dir, n, origin_port, *, block=0):
    """Renders N domains, starts Envoy on them (time to ready, RSS), blocks `block` origins."""
    label = f"{n}" + (f"-blocked{block}" if block else "")
    set_dir = run_dir / f"set-{label}"
    src = run_dir / f"plugin-{label}.json"
    src.write_text(json.dumps(plugin_config(n, origin_port)))
    port, admin = br.free_port(LISTEN_IP), br.free_port("127.0.0.1")
    p = subprocess.run([str(CLI), "render", str(src), "--out-dir", str(set_dir),
                        "--listen", f"{LISTEN_IP}:{port}", "--admin", f"127.0.0.1:{admin}",
                        "--wasm", str(WASM)], capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"render failed: {p.stderr}")
    log_path = run_dir / f"envoy-{label}.log"
    proc, ready_s = start_envoy(o, set_dir, admin, log_path)
    time.sleep(1.0)
    rss = br.rss_kb(proc.pid).get("VmRSS", 0) / 1024
    live = f"d{n - 1}.scale.test"
    first = get(port, live, "/1k")
    assert first == 200, f"{live}: {first}; see {log_path}"
    if block:
        statuses = block_origins(o, port, admin, block, n)
        assert all(s == 502 for s in statuses), set(statuses)
    return {"proc": proc, "port": port, "admin": admin, "log": log_path, "live": live,
            "block": block,
            "result": {"domains": n, "ready_s": ready_s, "rss_mb": rss, "blocked": None,
                       "config_bytes": src.stat().st_size}}


def finish_set(x):
    """/stats of a set, then stops its Envoy and reads its log (flushed on exit)."""
    result = x["result"]
    try:
        status, text = admin_get(x["admin"], "/stats")
        result["stats_lines"] = len(text.splitlines())
        result["filter_stats"] = sum(1 for line in text.splitlines()
                                     if line.startswith("wasmcustom.origin_pull_"))
    finally:
        br.stop(x["proc"])
    result["configure"] = configure_times(x["log"])
    if x["block"]:
        result["blocked"] = blocks_logged(x["log"])
    return result


HOT_PATH = REPO / "target" / "release" / "examples" / "hot_path"


def instructions_per_request(domains, blocked, low, high):
    """The filter's logic per request natively under callgrind (bench/hot_path.rs, happy
    path, 3 weighted masters + slave): with `domains - 1` other domains configured, or — when
    `blocked` — that many other domains whose origin is blocked (a region outage).
    (I(high) - I(low)) / (high - low), so the parse and start-up cancel out. Independent of the
    machine's load, unlike rps."""
    extra = [str(blocked)] if blocked else [str(domains - 1), "unblocked"]
    counts = []
    for n in (low, high):
        with tempfile.NamedTemporaryFile(prefix="scale-callgrind-") as out:
            p = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out.name}",
                                str(HOT_PATH), "happy", "3", str(n), *extra],
                               capture_output=True, text=True, timeout=900)
            if p.returncode != 0:
                raise RuntimeError(f"callgrind failed: {p.stderr[-2000:]}")
            m = re.search(r"^summary:\s+(\d+)", Path(out.name).read_text(), re.M)
            counts.append(int(m.group(1)))
            copied = re.search(r"copied_bytes/request=([\d.]+)", p.stdout)
    return {"instructions": (counts[1] - counts[0]) / (high - low),
            "copied": float(copied.group(1)) if copied else None}


def fmt_ms(values):
    return " / ".join(f"{v:.0f}" for v in values) if values else "—"


def write_report(o, results, meta):
    o["out"].mkdir(parents=True, exist_ok=True)
    (o["out"] / "scale.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    base = next((r for r in results if r["domains"] == 1 and not r.get("blocked")), None)
    lines = [
        "# origin-pull at scale: 1, 1,000 and 10,000 domains",
        "",
        f"`{meta['command']}` on {meta['date']}: {meta['machine']}; {meta['envoy']}; load average "
        f"before {meta['load_before']}, after {meta['load_after']} (other work on the machine "
        "shows there: the times and rps below are only as steady as the machine was).",
        "",
        "Each domain has 3 weighted master IPs and 1 slave IP (loopback addresses). Envoy "
        "`--concurrency 2`, configuration by `origin-pull render --out-dir` (ECDS). *configure* is "
        "the filter's own `on_configure` time per VM (main thread ×2, then the two workers) from "
        "its log line; *rps*: wrk -t1 -c32, 1 KiB object, one domain (the last of the list), "
        f"median of {o['reps']} × {o['duration']:.0f} s, the sets measured in turn (A B C A B C …) so that a "
        "slow moment of the machine hits them alike.",
        "",
        "| domains | blocked origins | config | ready (s) | RSS (MB) | /stats lines (origin-pull's) "
        "| configure per VM (ms) | rps | vs 1 domain | p99 | instructions / request | vs 1 domain "
        "| bytes copied into the VM / request |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    base_instr = base.get("instructions") if base else None
    for r in results:
        times = [t for _, t, _ in r["configure"]]
        ratio = (f"{r['rps'] / base['rps']:.2f}×" if base and r.get("rps") and base.get("rps")
                 else "—")
        instr = r.get("instructions")
        lines.append(
            f"| {r['domains']:,} | {r['blocked'] or 0:,} | {r['config_bytes'] / 1e6:.2f} MB | "
            f"{r['ready_s']:.2f} | {r['rss_mb']:.0f} | {r['stats_lines']:,} ({r['filter_stats']}) "
            f"| {fmt_ms(times)} | "
            + (f"{r['rps']:,.0f} | {ratio} | {br.fmt_us(r['p99_us'])} | " if r.get("rps")
               else "— | — | — | ")
            + (f"{instr:,.0f} | {instr / base_instr:.3f}× | {r['copied']:,.0f} |"
               if instr and base_instr else "— | — | — |"))
    lines += [
        "",
        "Targets (issue 12): ready ≤ 2 s (goal 1 s) and RSS ≤ 200 MB at 10,000 domains; "
        "`on_configure` ≤ 100 ms per VM; rps at 10,000 domains and with 5,000 blocked origins "
        "within 5 % of 1 domain. The blocked row counts the blocks the filter logged (requests "
        "to dead domains until it had counted that many; each request blocks the origins it "
        "tries). *instructions / request*: "
        "the filter's logic natively under callgrind (`bench/hot_path.rs`, happy path, 3 "
        "weighted masters and a slave; next to 9,999 other domains, or — blocked row — 5,000 "
        "other domains whose origin is blocked), load-independent: the rps columns move with "
        "whatever else the machine runs.",
        "",
    ]
    (o["out"] / "scale.md").write_text("\n".join(lines))


def main():
    o = options()
    for path in (CLI, WASM, Path(o["envoy"])):
        if not path.exists():
            sys.exit(f"scale: {path} is missing (run through `make scale`)")
    if not br._which("wrk") or not br._which("nginx"):
        br.ensure_tools()
    meta = {
        "command": "make scale" + "".join(f" {k}={os.environ[k]}" for k in sorted(os.environ)
                                          if k.startswith("SCALE_")),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": br.machine(),
        "envoy": br.tool_version([o["envoy"], "--version"]).replace("envoy  version: ", "Envoy "),
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    run_dir = Path(tempfile.mkdtemp(prefix="origin-pull-scale-"))
    run_dir.chmod(0o755)  # nginx's worker (nobody when run as root) reads the docroot
    docroot = run_dir / "www"
    docroot.mkdir()
    (docroot / "1k").write_bytes(os.urandom(1024))
    (docroot / "1k").chmod(0o644)
    origin_port = br.free_port(LIVE_MASTERS[0])
    conf = run_dir / "origin.conf"
    conf.write_text(nginx_conf(run_dir, docroot, origin_port))
    nginx = br._which("nginx")
    results = []
    try:
        origin = subprocess.Popen([nginx, "-c", str(conf), "-p", str(run_dir)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        br._PROCS.append(origin)
        br.wait_http(LIVE_MASTERS[0], origin_port, origin, path="/1k")
        sets, timed = [], []
        for n in o["sizes"]:
            x = start_set(o, run_dir, n, origin_port)
            sets.append(x)
            if n in (1, max(o["sizes"])):
                timed.append(x)
            else:
                finish_set(x)  # ready, RSS, stats and configure only
        if o["blocked"]:
            x = start_set(o, run_dir, max(o["sizes"]), origin_port, block=o["blocked"])
            sets.append(x)
            timed.append(x)
        interleaved_rps(o, timed)
        if o["instructions"]:
            for x in timed:
                r = x["result"]
                big = r["domains"] > 1
                low, high = (2000, 6000)
                r.update(instructions_per_request(r["domains"], x["block"], low, high))
                br.log(f"{r['domains']} domains, {x['block']} blocked: "
                       f"{r['instructions']:.0f} instructions/request"
                       + (" (the parse cancels out)" if big else ""))
        for x in sets:
            r = x["result"] if "stats_lines" in x["result"] else finish_set(x)
            br.log(f"{r['domains']} domains: ready {r['ready_s']:.2f} s, RSS {r['rss_mb']:.0f} MB, "
                   f"/stats {r['stats_lines']} lines, configure "
                   f"{fmt_ms([t for _, t, _ in r['configure']])} ms"
                   + (f", {r['blocked']} blocked" if r.get("blocked") else "")
                   + (f", {r['rps']:.0f} rps {r['runs']}" if r.get("rps") else ""))
            results.append(r)
    finally:
        br.stop_all()
    meta["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    write_report(o, results, meta)
    br.log(f"wrote {o['out'] / 'scale.md'}")
    print((o["out"] / "scale.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
