#!/usr/bin/env python3
"""`make bench`: origin-pull against Envoy-native and nginx doing the same job, in ONE run.

Systems (bench/configs.py): direct, plain, floor, native, originpull (router failover),
opcallout (callout failover, scenarios b/c/f), nginx; in b and f also composite (the router
failover's mechanism, no wasm) and compwasm (the same with the trivial wasm filter on the
listener and per attempt); in f also plain404 and plain404new (the master's 404 as a request of
its own: with the slave's request, the two-request reference of a failover).
Scenarios (each with the object sizes in BENCH_SIZES, 1 KiB and 1 MiB by default):
    a   happy path, 3 weighted master IPs (1:3:1), slave idle
    b   10 % of paths answer 404 on the masters and 200 on the slave
    c   one of the three masters is dead (nothing listens) from the start
    f   failover latency: every path is 404 on the masters, ONE connection (no queueing);
        `direct` and Envoy plain/floor ask the slave directly (the reference of the target)
    d1, d10, d100, d1000   1..1000 master IPs (origin-pull; Envoy's plain route over as many
                           endpoints and its ORIGINAL_DST route over them, no wasm; 1 KiB)

Envoy runs with --concurrency 1 pinned to BENCH_PROXY_CPU (nginx proxy: one worker, same CPU);
wrk (-t1) and the origin nginx are pinned to BENCH_CLIENT_CPU. Every system of a scenario runs
side by side; repetitions are interleaved (the order rotates) and the median is reported.

Options (environment):
    BENCH_DURATION=3     seconds per wrk run        BENCH_REPS=3         repetitions (median)
    BENCH_CONNECTIONS=32 wrk connections            BENCH_QUICK=1        1 s, 1 rep, 1 KiB, a/b/c/f/d1/d1000
    BENCH_SCENARIOS=a,b,c,f,d1,d10,d100,d1000       BENCH_SIZES=1k,1m (1m runs a, b and c)
    BENCH_SCENARIOS=ablation (`make bench-ablation`, which builds the variants): scenario a with
        plain, floor, origin-pull, its callout failover and every target/ablation/*.wasm;
        writes BENCH_OUT/ablation.md and ablation.json only; BENCH_BASELINE_WASM=<module> adds
        another build of the module (e.g. main's) as one more row
    BENCH_PROXY_CPU=0    BENCH_CLIENT_CPU=1         BENCH_OUT=bench/results
    BENCH_SYSTEMS=plain,composite,...   only these systems (default: every system of a scenario)
Writes BENCH_OUT/results.md, results.json, results.png and raw/ (every wrk output the medians
come from: raw/<scenario>-<size>/wrk-<system>-<rep>.txt). Installs wrk, nginx and gnuplot with
apt-get when they are missing. Every process it starts is stopped by PID.
"""

import atexit
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import configs as cf  # noqa: E402

REPO = cf.REPO
OBJECT_BYTES = {"1k": 1024, "1m": 1024 * 1024}
LISTEN_IP = "127.5.0.1"
SLAVE_IP = "127.5.0.2"
DEAD_IP = "127.5.9.9"
DST_HEADER = "x-envoy-original-dst-host"  # what origin-pull sets for the ORIGINAL_DST cluster
SIZE_SCENARIOS = {"1k": ("a", "b", "c", "f", "d1", "d10", "d100", "d1000", "ablation"),
                  "1m": ("a", "b", "c")}
SYSTEM_LABEL = {
    "direct": "direct to origin",
    "plain": "Envoy plain route",
    "plain404": "Envoy plain route, master's 404 (no failover)",
    "plain404new": "Envoy plain route, master's 404, new upstream connection per request",
    "floor": "Envoy + trivial wasm (floor)",
    "floorhc": "Envoy + trivial wasm making the 9 happy-path hostcalls of origin-pull, no logic",
    "odst": "Envoy ORIGINAL_DST route (no wasm)",
    "native": "Envoy native (retry + outlier)",
    "composite": "Envoy composite-cluster retry, no wasm (mechanism floor)",
    "compnodrain": "composite retry, no wasm, without the drain filter (mechanism before)",
    "compwasm": "composite retry + trivial wasm, listener and upstream (wasm floor of an observed chain)",
    "complean": "composite retry + trivial wasm on the listener (wasm floor of the default mechanism)",
    "ovhost": "override-host retry over a STATIC cluster, no wasm (alternative mechanism floor)",
    "ovlean": "override-host retry + trivial wasm on the listener (wasm floor of the alternative)",
    "originpull": "Envoy + origin-pull",
    "opnodrain": "Envoy + origin-pull without the drain filter (before)",
    "opcallout": "Envoy + origin-pull, callout failover",
    "nginx": "nginx (upstream backup)",
}
ABLATION_LABEL = {
    "filter-state": "no access-log filter-state write (one per request)",
    "metrics": "no counter adds in the VM (nothing to flush)",
    "block-read": "no per-domain block-key read",
    "header-map": "no header-map copy (3 headers read one by one)",
    "status": "no response :status read",
    "upstream": "upstream (per-attempt) instance does nothing",
    "all": "all of the above off",
    "baseline": "baseline module (BENCH_BASELINE_WASM), nothing off",
}
for _name, _what in ABLATION_LABEL.items():
    SYSTEM_LABEL[f"ab-{_name}"] = (f"origin-pull − {_what}" if _name != "baseline"
                                   else f"origin-pull {_what}")
SCENARIO_LABEL = {
    "a": "(a) happy path, 3 weighted masters",
    "b": "(b) 10 % of paths 404 on master, 200 on slave",
    "c": "(c) one of 3 masters dead",
    "f": "(f) failover latency, 1 connection, every path 404 on master",
    "d1": "(d) 1 master IP", "d10": "(d) 10 master IPs",
    "d100": "(d) 100 master IPs", "d1000": "(d) 1000 master IPs",
    "ablation": "ablation: happy path (a), the module with one piece switched off at a time",
}

_PROCS = []


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def options():
    env = os.environ
    quick = env.get("BENCH_QUICK", "") not in ("", "0")
    o = {
        "duration": float(env.get("BENCH_DURATION", "1" if quick else "3")),
        "reps": int(env.get("BENCH_REPS", "1" if quick else "3")),
        "connections": int(env.get("BENCH_CONNECTIONS", "32")),
        "sizes": env.get("BENCH_SIZES", "1k" if quick else "1k,1m").split(","),
        "scenarios": env.get("BENCH_SCENARIOS",
                             "a,b,c,f,d1,d1000" if quick else "a,b,c,f,d1,d10,d100,d1000").split(","),
        "proxy_cpu": env.get("BENCH_PROXY_CPU", "0"),
        "client_cpu": env.get("BENCH_CLIENT_CPU", "1"),
        "out": Path(env.get("BENCH_OUT", str(REPO / "bench" / "results"))),
        "envoy": env.get("ENVOY", str(REPO / ".venv" / "bin" / "envoy")),
        "quick": quick,
        "systems": [s for s in env.get("BENCH_SYSTEMS", "").split(",") if s],
    }
    if not Path(o["envoy"]).is_absolute():
        o["envoy"] = str(REPO / o["envoy"])
    return o


# --------------------------------------------------------------------------- tools


def ensure_tools():
    """wrk, nginx and gnuplot from Debian, installed when missing."""
    need = {"wrk": "wrk", "nginx": "nginx", "gnuplot": "gnuplot-nox", "taskset": "util-linux"}
    missing = [pkg for tool, pkg in need.items() if not _which(tool)]
    if not missing:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    log(f"installing {' '.join(missing)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                   check=True, env=env)
    still = [t for t in need if not _which(t)]
    if still:
        sys.exit(f"bench: still missing after apt-get: {still}")


def _which(tool):
    return shutil.which(tool) or (Path("/usr/sbin") / tool).exists() and str(Path("/usr/sbin") / tool)


def tool_version(args):
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=30)
        return (p.stdout + p.stderr).strip().splitlines()[0]
    except Exception as e:  # noqa: BLE001 - only for the report
        return f"unknown ({e})"


# --------------------------------------------------------------------------- processes


def spawn(args, log_path, cpu):
    out = open(log_path, "ab")
    proc = subprocess.Popen(["taskset", "-c", str(cpu), *map(str, args)], stdout=out,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    out.close()
    _PROCS.append(proc)
    return proc


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    if proc in _PROCS:
        _PROCS.remove(proc)


def stop_all():
    for proc in list(_PROCS):
        stop(proc)


atexit.register(stop_all)


_HANDED_OUT = set()


def free_port(ip):
    """A port free on `ip` now and never handed out before by this process: the systems of a
    scenario get their ports before any of them starts, and the kernel may offer a port it
    just offered again (two Envoys then race for it and one exits with "Address already in
    use")."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind((ip, 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError(f"no fresh free port on {ip}")


def port_free_on_all(ips, port):
    for ip in ips:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((ip, port))
            except OSError:
                return False
    return True


def wait_http(ip, port, proc, timeout=60.0, path="/1k"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {ip}:{port}")
        try:
            c = http.client.HTTPConnection(ip, port, timeout=2)
            c.request("GET", path, headers={"Host": cf.HOST})
            r = c.getresponse()
            r.read()
            c.close()
            return r.status
        except OSError as e:
            last = e
            time.sleep(0.1)
    raise RuntimeError(f"{ip}:{port} not answering after {timeout}s: {last}")


def cpu_seconds(pid):
    """User + system CPU time of a process (all its threads) so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def rss_kb(pid):
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    except OSError:
        pass
    return out


# --------------------------------------------------------------------------- wrk

_UNIT_US = {"us": 1.0, "ms": 1000.0, "s": 1e6, "m": 60e6}


def _latency_us(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * _UNIT_US[m.group(2)] if m else None


def parse_wrk(out):
    r = {"rps": 0.0, "p50_us": None, "p99_us": None, "requests": 0, "non2xx": 0, "socket_errors": 0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        r["rps"] = float(m.group(1))
    for pct, key in (("50", "p50_us"), ("99", "p99_us")):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        if m:
            r[key] = _latency_us(m.group(1))
    m = re.search(r"(\d+) requests in", out)
    if m:
        r["requests"] = int(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if m:
        r["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        r["socket_errors"] = sum(int(x) for x in m.groups())
    return r


def run_wrk(o, url, duration, connections, script=None, headers=()):
    args = ["taskset", "-c", o["client_cpu"], "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s",
            "--latency", "--timeout", "5s", "-H", f"Host: {cf.HOST}"]
    for h in headers:
        args += ["-H", h]
    if script:
        args += ["-s", str(script)]
    args.append(url)
    p = subprocess.run(args, capture_output=True, text=True, timeout=round(duration) + 60)
    if p.returncode != 0:
        raise RuntimeError(f"wrk failed ({p.returncode}): {p.stderr.strip()}")
    return parse_wrk(p.stdout), p.stdout


MISS_SCRIPT = """\
-- 1 request in 10 asks a path the masters answer 404 (the slave has it)
local n = 0
request = function()
  n = n + 1
  if n %% 10 == 0 then return wrk.format(nil, "/miss/%(obj)s") end
  return wrk.format(nil, "/%(obj)s")
end
"""

# Scenario (d)'s ORIGINAL_DST route without wasm: the client names each request's master,
# drawn at random with equal weights as origin-pull's pick does (the plain route's LB rotates).
RANDOM_DST_SCRIPT = """\
local dsts = {%(dsts)s}
math.randomseed(14)
request = function()
  wrk.headers["%(header)s"] = dsts[math.random(#dsts)]
  return wrk.format(nil, "/%(obj)s")
end
"""


# --------------------------------------------------------------------------- scenarios


def master_ips(count):
    """127.5.10.1 .. 127.5.13.250 for up to 1000 masters."""
    return [f"127.5.{10 + i // 250}.{1 + i % 250}" for i in range(count)]


def topology(scenario, origin_port, ports):
    if scenario.startswith("d"):
        n = int(scenario[1:])
        masters = [(ip, origin_port, 1) for ip in master_ips(n)]
        return cf.Topology(masters, (SLAVE_IP, origin_port), LISTEN_IP, ports)
    ips = master_ips(3)  # (a) and the ablation
    dead = ()
    if scenario == "c":
        ips[0] = DEAD_IP
        dead = (DEAD_IP,)
    masters = [(ip, origin_port, w) for ip, w in zip(ips, (1, 3, 1))]
    return cf.Topology(masters, (SLAVE_IP, origin_port), LISTEN_IP, ports, dead=dead)


def systems_of(scenario):
    if scenario == "ablation":
        variants = tuple(f"ab-{a}" for a in cf.ABLATIONS if cf.ablation_wasm(f"ab-{a}").exists())
        return ("plain", "floor", "originpull", "opcallout") + variants
    if scenario.startswith("d"):
        # Envoy's own cost of that many upstream hosts: a plain route round-robin over them,
        # and an ORIGINAL_DST route the client names each request's master for (at random).
        return ("plain", "odst", "originpull")
    if scenario == "f":
        return tuple(s for s in cf.SYSTEMS if s not in ("odst", "floorhc"))
    if scenario == "b":
        return tuple(s for s in cf.SYSTEMS
                     if s not in ("odst", "floorhc") and s not in cf.TWO_REQUEST_SYSTEMS)
    skip = cf.MECHANISM_SYSTEMS + cf.TWO_REQUEST_SYSTEMS  # they measure failover only (b, f)
    if scenario == "c":
        return tuple(s for s in cf.SYSTEMS if s not in ("odst", "floorhc") and s not in skip)
    # (a) keeps opnodrain (what the drain filter costs a request that does not fail over),
    # complean (the mechanism's own wasm floor) and ovlean (the alternative mechanism's).
    return tuple(s for s in cf.SYSTEMS
                 if s != "opcallout" and (s not in skip or s in ("opnodrain", "complean", "ovlean")))


def run_group(o, run_dir, docroot, scenario, size, floor_wasm):
    """Start every system of one scenario, measure them interleaved, stop them."""
    systems = systems_of(scenario)
    if o["systems"]:
        systems = tuple(s for s in systems if s in o["systems"])
    gdir = run_dir / f"{scenario}-{size}"
    gdir.mkdir(parents=True, exist_ok=True)
    all_ips = master_ips(int(scenario[1:]) if scenario.startswith("d") else 3) + [SLAVE_IP]
    origin_port = free_port(SLAVE_IP)
    while not port_free_on_all(all_ips, origin_port):
        origin_port = free_port(SLAVE_IP)
    ports = {}
    for s in systems:
        ports[s] = free_port(LISTEN_IP)
        ports[f"admin:{s}"] = free_port(LISTEN_IP)
    topo = topology(scenario, origin_port, ports)
    # Scenario f compares failover with asking the slave: plain/floor/direct ask the slave.
    slave_topo = cf.Topology([(SLAVE_IP, origin_port, 1)], topo.slave, LISTEN_IP, ports)

    origin_conf = gdir / "origin.conf"
    origin_conf.write_text(cf.origin_nginx_conf(topo, gdir, docroot))
    procs = {"origin": spawn(["nginx", "-p", gdir, "-c", origin_conf, "-e", gdir / "origin.error.log"],
                             gdir / "origin.out", o["client_cpu"])}
    envoys = {}
    for s in systems:
        if s == "direct":
            continue
        t = slave_topo if (scenario == "f" and s in ("plain", "floor")) else topo
        if s == "nginx":
            conf = gdir / "nginx.conf"
            conf.write_text(cf.proxy_nginx_conf(t, gdir))
            procs[s] = spawn(["nginx", "-p", gdir, "-c", conf, "-e", gdir / "nginx.error.log"],
                             gdir / "nginx.out", o["proxy_cpu"])
            continue
        cfg = cf.write_json(gdir / f"envoy-{s}.json",
                            cf.envoy_config(s, t, floor_wasm=floor_wasm))
        procs[s] = spawn([o["envoy"], "-c", cfg, "--concurrency", "1", "--disable-hot-restart",
                          "-l", "warn", "--log-path", gdir / f"envoy-{s}.log"],
                         gdir / f"envoy-{s}.out", o["proxy_cpu"])
        envoys[s] = procs[s]
    obj = size
    targets = {}
    for s in systems:
        if s == "direct":
            ip = SLAVE_IP if scenario == "f" else master_ips(3)[1]
            targets[s] = (ip, origin_port)
        else:
            targets[s] = (LISTEN_IP, ports[s])
    try:
        wait_http(SLAVE_IP, origin_port, procs["origin"], path=f"/{obj}")
        for s in systems:
            wait_http(*targets[s], procs.get(s, procs["origin"]), path=f"/{obj}")
        script = None
        path = f"/{obj}"
        connections = o["connections"]
        if scenario == "b":
            script = gdir / "miss10.lua"
            script.write_text(MISS_SCRIPT % {"obj": obj})
        if scenario == "f":
            path = f"/miss/{obj}"
            connections = 1
        urls = {s: f"http://{targets[s][0]}:{targets[s][1]}{path}" for s in systems}
        extra = {s: () for s in systems}
        scripts = {s: script for s in systems}
        if "odst" in systems and scenario.startswith("d"):
            scripts["odst"] = gdir / "random-dst.lua"
            dsts = ", ".join(f'"{ip}:{port}"' for ip, port, _ in topo.masters)
            scripts["odst"].write_text(RANDOM_DST_SCRIPT % {"dsts": dsts, "header": DST_HEADER,
                                                            "obj": obj})
        elif "odst" in systems:
            extra["odst"] = (f"{DST_HEADER}: {master_ips(3)[1]}:{origin_port}",)
        # Warm-up: connection pools, the wasm VMs, the dead IP's first failure (blocked after it).
        for s in systems:
            run_wrk(o, urls[s], 1, connections, scripts[s], extra[s])
        runs = {s: [] for s in systems}
        for rep in range(o["reps"]):
            order = list(systems[rep % len(systems):]) + list(systems[:rep % len(systems)])
            for s in order:
                proxy = procs.get(s)
                before = cpu_seconds(proxy.pid) if proxy else None
                r, raw = run_wrk(o, urls[s], o["duration"], connections, scripts[s], extra[s])
                after = cpu_seconds(proxy.pid) if proxy else None
                if before is not None and after is not None and r["requests"]:
                    r["cpu_us"] = (after - before) * 1e6 / r["requests"]
                (gdir / f"wrk-{s}-{rep}.txt").write_text(raw)
                runs[s].append(r)
        rss = {s: rss_kb(p.pid) for s, p in envoys.items()}
        if "nginx" in procs:
            rss["nginx"] = rss_kb(procs["nginx"].pid)
    finally:
        for p in procs.values():
            stop(p)
    out = {}
    for s in systems:
        rs = runs[s]
        out[s] = {
            "rps": statistics.median(r["rps"] for r in rs),
            "p50_us": _median([r["p50_us"] for r in rs]),
            "p99_us": _median([r["p99_us"] for r in rs]),
            "cpu_us": _median([r.get("cpu_us") for r in rs]),
            "requests": sum(r["requests"] for r in rs),
            "non2xx": sum(r["non2xx"] for r in rs),
            "socket_errors": sum(r["socket_errors"] for r in rs),
            "rss_kb": rss.get(s, {}).get("VmRSS"),
            "hwm_kb": rss.get(s, {}).get("VmHWM"),
            "reps": [r["rps"] for r in rs],
        }
    return out


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# --------------------------------------------------------------------------- report


def machine():
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.1f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} CPU ({cpu}){mem}, Linux {platform.release()}"


def fmt_us(us):
    if us is None:
        return "–"
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"


def ratio(x, ref):
    return f"{x / ref:.2f}" if x and ref else "–"


def write_report(o, results, meta):
    out = o["out"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    lines = [
        "# origin-pull benchmark",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}  ",
        f"Machine: {meta['machine']}  ",
        f"Load average before / after: {meta['load_before']} / {meta['load_after']}  ",
        f"Note: {meta['note']}  ",
        f"Tools: {meta['envoy']}; {meta['nginx']}; {meta['wrk']}  ",
        f"Settings: wrk -t1 -c{o['connections']} (scenario f: -c1), {o['duration']:g} s per run, "
        f"{o['reps']} repetitions interleaved, median shown; Envoy --concurrency 1 on CPU "
        f"{o['proxy_cpu']}, wrk and the origin nginx on CPU {o['client_cpu']}; nginx proxy: one "
        "worker on the proxy CPU.  ",
        f"origin-pull.wasm: {meta['wasm_bytes']} bytes; floor wasm: {meta['floor_bytes']} bytes.",
        "",
        "Columns: rps = requests/s (median); ×plain / ×floor = rps relative to Envoy plain route / "
        "the trivial wasm filter in the same scenario and run; +p99 = p99 added over plain route; "
        "non-2xx and socket errors are totals over all repetitions as seen by wrk; RSS = resident "
        "memory of the proxy after the runs (peak in brackets); CPU/req = the proxy process's CPU "
        "time per request (user + system, all threads; less sensitive to a shared machine than rps).",
        "",
    ]
    for size in o["sizes"]:
        for sc in [s for s in o["scenarios"] if s in SIZE_SCENARIOS.get(size, ())]:
            key = f"{sc}-{size}"
            if key not in results:
                continue
            res = results[key]
            ref = results.get(f"a-{size}") if sc.startswith("d") else res
            plain = (ref or {}).get("plain", {})
            floor = (ref or {}).get("floor", {})
            lines += [f"### {SCENARIO_LABEL[sc]} — {size} object", "",
                      "| system | rps | ×plain | ×floor | p50 | p99 | +p99 | CPU/req | non-2xx | socket errors | RSS MiB |",  # noqa: E501
                      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for s, r in res.items():
                add = (r["p99_us"] - plain["p99_us"]) if (r.get("p99_us") and plain.get("p99_us")) else None
                rss = (f"{r['rss_kb'] / 1024:.0f} ({r['hwm_kb'] / 1024:.0f})" if r.get("rss_kb") else "–")
                lines.append(
                    f"| {SYSTEM_LABEL[s]} | {r['rps']:.0f} | {ratio(r['rps'], plain.get('rps'))} | "
                    f"{ratio(r['rps'], floor.get('rps'))} | {fmt_us(r['p50_us'])} | {fmt_us(r['p99_us'])} | "
                    f"{'–' if add is None else ('+' if add >= 0 else '−') + fmt_us(abs(add))} | "
                    f"{fmt_us(r.get('cpu_us'))} | "
                    f"{r['non2xx']} / {r['requests']} | {r['socket_errors']} | {rss} |")
            lines.append("")
    lines += failover_section(results)
    lines += targets_section(results, o)
    (out / "results.md").write_text("\n".join(lines) + "\n")
    chart(o, results)


def write_ablation_report(o, results, meta):
    """ablation.md: what each piece of the module costs, as the gap it leaves when switched off."""
    out = o["out"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    res = results.get("ablation-1k", {})
    floor, op = res.get("floor", {}), res.get("originpull", {})
    lines = [
        "# origin-pull ablation (what each per-request piece costs in Envoy)", "",
        f"Command: `make bench-ablation`{meta['command'][len('make bench'):]}  ",
        f"Date: {meta['date']}  ",
        f"Machine: {meta['machine']}  ",
        f"Load average before / after: {meta['load_before']} / {meta['load_after']}  ",
        f"Note: {meta['note']}  ",
        f"Tools: {meta['envoy']}; {meta['wrk']}  ",
        f"Settings: scenario (a) — 3 weighted masters + slave, 1 KiB — wrk -t1 -c{o['connections']}, "
        f"{o['duration']:g} s per run, {o['reps']} repetitions interleaved, median; Envoy "
        f"--concurrency 1 on CPU {o['proxy_cpu']}, wrk and the origin nginx on CPU {o['client_cpu']}.", "",
        "Each `origin-pull − …` row is the shipped setup with a module built with one bench-only "
        "`ablate-*` cargo feature (Cargo.toml; never in a release module): that piece switched off. "
        "Its price is the CPU per request it saves against `Envoy + origin-pull` of the same run "
        "(Δ CPU). `callout failover` is the same module with `envoy.failover: callout`: no composite "
        "cluster, no routing headers for the attempts and no upstream instance on the happy path.", "",
        "| system | rps | ×floor | p50 | p99 | +p99 over floor | CPU/req | Δ CPU vs origin-pull | over floor |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s, r in res.items():
        add = (r["p99_us"] - floor["p99_us"]) if (r.get("p99_us") and floor.get("p99_us")) else None
        cpu, cop, cfl = r.get("cpu_us"), op.get("cpu_us"), floor.get("cpu_us")
        delta = f"{cpu - cop:+.1f} µs" if cpu and cop and s not in ("originpull", "plain", "floor") else "–"
        over = f"{cpu - cfl:+.1f} µs" if cpu and cfl else "–"
        lines.append(
            f"| {SYSTEM_LABEL[s]} | {r['rps']:.0f} | {ratio(r['rps'], floor.get('rps'))} | "
            f"{fmt_us(r['p50_us'])} | {fmt_us(r['p99_us'])} | "
            f"{'–' if add is None else ('+' if add >= 0 else '−') + fmt_us(abs(add))} | "
            f"{fmt_us(cpu)} | {delta} | {over} |")
    lines.append("")
    (out / "ablation.md").write_text("\n".join(lines) + "\n")


FAILOVER_ROWS = ("plain", "plain404", "plain404new", "compnodrain", "composite", "complean", "compwasm",
                 "ovhost", "ovlean", "opnodrain", "originpull", "opcallout", "native", "nginx")


def failover_section(results, size="1k"):
    """Scenarios f and b side by side: the failover's cost from the mechanism (Envoy's router
    retry through the composite cluster, no wasm) to the wasm floor of that mechanism to the
    module, with the references (Envoy's native retry, the callout, nginx) and the two-request
    reference (the master's 404 and the slave's 200 as two requests through Envoy)."""
    f, b = results.get(f"f-{size}", {}), results.get(f"b-{size}", {})
    if "composite" not in f:
        return []
    pf, pb = f.get("plain", {}), b.get("plain", {})

    def p50_ratio(r):
        return f"{r['p50_us'] / pf['p50_us']:.2f}×" if r.get("p50_us") and pf.get("p50_us") else "–"

    lines = [f"## Failover: where the time goes ({size}, scenarios f and b of this run)", "",
             "f: 1 connection, every request fails over (plain route: asks the slave; the two "
             "`404` rows ask the masters, answered 404, no failover). b: 32 connections, 1 request "
             "in 10 fails over. ×plain p50 is the failover target's measure (≤ 1.3×); b rps ×plain "
             "the throughput target's (≥ 0.5×).", "",
             "| system | f p50 | f p50 ×plain | f CPU/req | b rps ×plain | b CPU/req |",
             "|---|---:|---:|---:|---:|---:|"]
    for s in FAILOVER_ROWS:
        r = f.get(s)
        if not r:
            continue
        rb = b.get(s, {})
        lines.append(f"| {SYSTEM_LABEL[s]} | {fmt_us(r['p50_us'])} | {p50_ratio(r)} | "
                     f"{fmt_us(r.get('cpu_us'))} | {ratio(rb.get('rps'), pb.get('rps'))} | "
                     f"{fmt_us(rb.get('cpu_us'))} |")
    two = [(f.get(a, {}), f.get("plain", {})) for a in ("plain404", "plain404new")]
    for (m, sl), how in zip(two, ("kept-alive master connection", "new master connection")):
        if m.get("p50_us") and sl.get("p50_us"):
            tot = m["p50_us"] + sl["p50_us"]
            cpu = (m.get("cpu_us") or 0) + (sl.get("cpu_us") or 0)
            lines.append(f"| two requests (master's 404, {how}; then the slave's 200): sum | "
                         f"{fmt_us(tot)} | {tot / pf['p50_us']:.2f}× | {fmt_us(cpu)} | – | – |")
    return lines + [""]


def targets_section(results, o):
    """The issue's targets, judged on this run's medians (1 KiB objects)."""
    lines = ["## Targets (issue 5), 1 KiB objects", "",
             "Judged on the medians of this run (requests/s); the CPU-per-request figure in brackets "
             "is the steadier estimate on a shared machine.", "",
             "| target | measured | met |", "|---|---|---|"]

    def get(sc, s, k):
        return results.get(f"{sc}-1k", {}).get(s, {}).get(k)

    def row(name, measured, ok):
        lines.append(f"| {name} | {measured} | {'yes' if ok else ('no' if ok is False else '–')} |")

    op, fl, pl = get("a", "originpull", "rps"), get("a", "floor", "rps"), get("a", "plain", "rps")
    cop, cfl, cpl = (get("a", s, "cpu_us") for s in ("originpull", "floor", "plain"))

    def cpu_note(ref):
        # On a dedicated proxy core throughput is the inverse of CPU time per request.
        return f" (by CPU/req: {ref / cop:.2f}×)" if ref and cop else ""

    if op and fl and pl:
        row("happy path ≥ 0.95× wasm floor", f"{op / fl:.2f}×{cpu_note(cfl)}", op / fl >= 0.95)
        row("happy path ≥ 0.85× plain route", f"{op / pl:.2f}×{cpu_note(cpl)}", op / pl >= 0.85)
    if cop and cfl:
        row("(issue 14) happy path CPU per request within 5 % of the wasm floor's",
            f"{cop:.0f} µs vs {cfl:.0f} µs = {cop / cfl - 1:+.0%}", cop <= cfl * 1.05)
    p99o, p99p = get("a", "originpull", "p99_us"), get("a", "plain", "p99_us")
    p99f = get("a", "floor", "p99_us")
    if p99o and p99f:
        row("(issue 14) p99 added over the wasm floor ≤ 100 µs", f"{p99o - p99f:+.0f} µs",
            p99o - p99f <= 100)
    if p99o and p99p:
        row("p99 added over plain route ≤ 100 µs", f"{p99o - p99p:+.0f} µs", p99o - p99p <= 100)
    fo, fs, fd = get("f", "originpull", "p50_us"), get("f", "plain", "p50_us"), get("f", "direct", "p50_us")
    if fo and fs:
        row("failover latency ≤ 1.3× asking the slave (through Envoy)",
            f"p50 {fmt_us(fo)} vs {fmt_us(fs)} = {fo / fs:.2f}×", fo / fs <= 1.3)
    if fo and fd:
        row("failover latency ≤ 1.3× asking the slave directly (no proxy)",
            f"p50 {fmt_us(fo)} vs {fmt_us(fd)} = {fo / fd:.2f}×", fo / fd <= 1.3)
    fc = get("f", "opcallout", "p50_us")
    if fc and fs:
        row("(issue 11, for comparison) callout failover latency, same target",
            f"p50 {fmt_us(fc)} vs {fmt_us(fs)} = {fc / fs:.2f}×", fc / fs <= 1.3)
    fm = get("f", "composite", "p50_us")
    if fm and fs:
        row("(issue 11) the mechanism alone (composite retry, no wasm), same target",
            f"p50 {fmt_us(fm)} vs {fmt_us(fs)} = {fm / fs:.2f}×", fm / fs <= 1.3)
    bo, bc, bp = (get("b", s, "rps") for s in ("originpull", "opcallout", "plain"))
    if bo and bp:
        cbo, cbp = get("b", "originpull", "cpu_us"), get("b", "plain", "cpu_us")
        notes = ([f"by CPU/req: {cbp / cbo:.2f}×"] if cbo and cbp else []) + \
            ([f"callout failover: {bc / bp:.2f}×"] if bc else [])
        row("(issue 11) 10 % failovers (b), 32 connections ≥ 0.5× plain route",
            f"{bo / bp:.2f}×" + (f" ({'; '.join(notes)})" if notes else ""), bo / bp >= 0.5)
    # The default chain is logged (no upstream instance): its mechanism's wasm floor is the
    # trivial module on the listener only.
    fw = get("f", "complean", "p50_us")
    if fo and fw:
        row("(issue 11, for comparison) failover p50 ≤ 1.3× the wasm floor of its mechanism "
            "(composite retry + trivial wasm on the listener)",
            f"p50 {fmt_us(fo)} vs {fmt_us(fw)} = {fo / fw:.2f}×", fo / fw <= 1.3)
    ce = results.get("c-1k", {}).get("originpull")
    if ce:
        errs = ce["non2xx"] + ce["socket_errors"]
        row("dead IP (c): zero client errors", f"{errs} non-2xx + socket errors", errs == 0)
    def cpu_ratio(num, den, system="originpull"):
        a, b = get(num, system, "cpu_us"), get(den, system, "cpu_us")
        return f" (by CPU/req: {b / a:.2f}×)" if a and b else ""

    co, ao = get("c", "originpull", "rps"), get("a", "originpull", "rps")
    if co and ao:
        row("dead IP (c): throughput within 10 % of (a)", f"{co / ao:.2f}×{cpu_ratio('c', 'a')}",
            co / ao >= 0.90)
    d1, d1000 = get("d1", "originpull", "rps"), get("d1000", "originpull", "rps")
    if d1 and d1000:
        row("1000 master IPs within 5 % of 1 IP", f"{d1000 / d1:.2f}×{cpu_ratio('d1000', 'd1')}",
            d1000 / d1 >= 0.95)
    for system, what in (("plain", "Envoy plain route round-robin over 1000 vs 1 endpoints"),
                         ("odst", "Envoy ORIGINAL_DST route, 1000 vs 1 masters drawn at random by the client")):
        e1, e1000 = get("d1", system, "rps"), get("d1000", system, "rps")
        if e1 and e1000:
            row(f"(for comparison, no wasm) {what}",
                f"{e1000 / e1:.2f}×{cpu_ratio('d1000', 'd1', system)}", e1000 / e1 >= 0.95)
    wasm = (REPO / "target" / "wasm32-wasip1" / "release" / "origin_pull.wasm")
    if wasm.exists():
        size = wasm.stat().st_size
        row(".wasm ≤ 200 KB", f"{size} bytes ({size / 1000:.0f} KB)", size <= 200_000)
    return lines + [""]


def chart(o, results):
    """results.png: rps relative to Envoy plain route per scenario, and the scaling scenario."""
    out = o["out"]
    groups = [(f"{sc}-{size}", f"{sc} {size}") for size in o["sizes"]
              for sc in ("a", "b", "c", "f") if f"{sc}-{size}" in results]
    # `direct` (the machine's ceiling, several times any proxy) would flatten every other bar.
    shown = [s for s in cf.SYSTEMS if s != "direct" and s not in cf.TWO_REQUEST_SYSTEMS]
    dat = out / "chart-systems.dat"
    with open(dat, "w") as f:
        for key, label in groups:
            res = results[key]
            ref = res.get("plain", {}).get("rps")
            vals = [f"{res[s]['rps'] / ref:.3f}" if s in res and ref else "0" for s in shown]
            f.write(f'"{label}" ' + " ".join(vals) + "\n")
    scal = [(sc, results[f"{sc}-1k"]["originpull"]) for sc in ("d1", "d10", "d100", "d1000")
            if f"{sc}-1k" in results]
    sdat = out / "chart-scaling.dat"
    with open(sdat, "w") as f:
        for sc, r in scal:
            f.write(f"{sc[1:]} {r['rps']:.0f} {r.get('cpu_us') or 0:.1f}\n")
    titles = " ".join(f'"{SYSTEM_LABEL[s]}"' for s in shown)
    script = f"""
set terminal pngcairo size 1400,600 font ",10" noenhanced
set output "{out / 'results.png'}"
set multiplot layout 1,2 title "origin-pull benchmark (Envoy --concurrency 1; median of {o['reps']} runs)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set yrange [0:*]
set grid ytics
set key top right font ",8"
set ylabel "requests/s relative to Envoy plain route"
set title "systems per scenario (direct to origin left out: see results.md; f: 1 connection, every path fails over)"
titles = '{titles}'
plot for [i=2:{len(shown) + 1}] "{dat}" using i:xtic(1) title word(titles, i-1)
{{scaling_plot}}
unset multiplot
"""
    scaling_plot = f"""
set style data linespoints
set logscale x
set yrange [0:*]
set xlabel "master IPs in the configuration"
set ylabel "requests/s (Envoy + origin-pull, 1 KiB)"
set y2label "Envoy CPU per request (µs)"
set y2range [0:*]
set y2tics
set title "scaling (d)"
set xrange [0.5:2000]
plot "{sdat}" using 1:2 with linespoints lw 2 pt 7 title "requests/s", \\
     "{sdat}" using 1:3 axes x1y2 with linespoints lw 2 pt 5 title "CPU/request (right axis)"
""" if scal else ""
    script = script.replace("{scaling_plot}", scaling_plot)
    sfile = out / "chart.gp"
    sfile.write_text(script)
    gnuplot = shutil.which("gnuplot")
    if not gnuplot:
        # --report-only may run where `make bench` never installed it: the tables still render.
        log(f"gnuplot not found (Debian package gnuplot-nox): {out / 'results.png'} not redrawn; "
            f"the chart script is {sfile}")
        return
    p = subprocess.run([gnuplot, str(sfile)], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        log(f"gnuplot failed: {p.stderr.strip()}")


def keep_raw(run_dir, raw_dir):
    """Every wrk output of the run (BENCH_OUT/raw/<scenario>-<size>/wrk-<system>-<rep>.txt) next
    to results.json, which is computed from them: the medians can be audited and re-parsed."""
    shutil.rmtree(raw_dir, ignore_errors=True)
    kept = 0
    for src in sorted(run_dir.glob("*/wrk-*.txt")):
        dst = raw_dir / src.parent.name / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        kept += 1
    log(f"kept {kept} raw wrk outputs in {raw_dir}")
    return kept


# --------------------------------------------------------------------------- main


def main():
    o = options()
    if "--report-only" in sys.argv:
        # Re-render results.md and the chart from results.json (e.g. after changing the report).
        data = json.loads((o["out"] / "results.json").read_text())
        write_report(o, data["results"], data["meta"])
        return 0
    ensure_tools()
    wasm = REPO / "target" / "wasm32-wasip1" / "release" / "origin_pull.wasm"
    for path in (wasm, cf.FLOOR_WASM, Path(o["envoy"])):
        if not path.exists():
            sys.exit(f"bench: {path} is missing (run through `make bench`)")
    meta = {
        "command": "make bench" + "".join(f" {k}={os.environ[k]}" for k in sorted(os.environ)
                                          if k.startswith("BENCH_") and k != "BENCH_NOTE"),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "note": os.environ.get("BENCH_NOTE", "absolute numbers depend on the machine and its load; "
                                             "compare the ratios measured side by side"),
        "envoy": tool_version([o["envoy"], "--version"]).replace("envoy  version: ", "Envoy "),
        "nginx": tool_version(["nginx", "-v"]),
        "wrk": tool_version(["wrk", "-v"]).split(" Copyright")[0],
        "wasm_bytes": wasm.stat().st_size,
        "floor_bytes": cf.FLOOR_WASM.stat().st_size,
    }
    run_dir = Path(tempfile.mkdtemp(prefix="origin-pull-bench-"))
    docroot = run_dir / "www"
    docroot.mkdir()
    for name, n in OBJECT_BYTES.items():
        (docroot / name).write_bytes(os.urandom(n))
    log(f"run directory {run_dir}; {o}")
    results = {}
    t0 = time.monotonic()
    try:
        for size in o["sizes"]:
            for sc in o["scenarios"]:
                if sc not in SIZE_SCENARIOS.get(size, ()):
                    continue
                chosen = [s for s in systems_of(sc) if not o["systems"] or s in o["systems"]]
                log(f"scenario {sc} {size}: {', '.join(chosen)}")
                results[f"{sc}-{size}"] = run_group(o, run_dir, docroot, sc, size, cf.FLOOR_WASM)
                for s, r in results[f"{sc}-{size}"].items():
                    log(f"  {s:10} {r['rps']:9.0f} rps  p50 {fmt_us(r['p50_us']):>9}  p99 "
                        f"{fmt_us(r['p99_us']):>9}  cpu/req {fmt_us(r['cpu_us']):>8}  "
                        f"non-2xx {r['non2xx']}  sockerr {r['socket_errors']}")
    finally:
        stop_all()
    meta["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    meta["seconds"] = round(time.monotonic() - t0)
    if o["scenarios"] == ["ablation"]:
        # Its own file: the committed results.md of `make bench` stays as it was.
        write_ablation_report(o, results, meta)
        shutil.rmtree(run_dir, ignore_errors=True)
        log(f"done in {meta['seconds']} s: {o['out'] / 'ablation.md'}")
        return 0
    write_report(o, results, meta)
    keep_raw(run_dir, o["out"] / "raw")
    shutil.rmtree(run_dir, ignore_errors=True)
    log(f"done in {meta['seconds']} s: {o['out'] / 'results.md'}, {o['out'] / 'results.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
