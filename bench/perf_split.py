#!/usr/bin/env python3
"""`make bench-split`: where a proxy's CPU per request goes, by code object, for the systems of
scenario (a) (3 weighted masters + slave, 1 KiB): Envoy's own C++, the wasm code V8 compiled
(perf's `[JIT]`), the kernel (sockets) and the C library.

Each system runs alone under the same load as `make bench` (Envoy `--concurrency 1` on CPU 0,
wrk -t1 -c32 and the origin nginx on CPU 1) while `perf record` samples the Envoy process; the
CPU per request (user + system, from /proc) is split by the share of samples in each object.
The Envoy binary is stripped, so it is one row: what the filter costs Envoy (hostcalls, header
maps, the composite cluster) shows as that row's growth over the floor, what it costs inside
the VM as the `[JIT]` row. perf adds its own overhead (a few %), the same for every system.

Writes bench/results/perf-split.md. Options: BENCH_SPLIT_SYSTEMS (default
floor,complean,originpull), BENCH_SPLIT_SCENARIOS (default a; e.g. d1,d1000 with
BENCH_SPLIT_SYSTEMS=odst,originpull splits scenario (d)'s cost of 1,000 master IPs: then each
system's d1000 row is also compared with its own d1 row), BENCH_DURATION (s per system,
default 6), BENCH_REPS (default 2; the median share per object).
"""

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import configs as cf  # noqa: E402
import run as bench  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FLOOR_WASM = REPO / "target" / "bench-floor" / "wasm32-wasip1" / "release" / "bench_floor.wasm"
OBJECTS = (("envoy", "Envoy (C++)"), ("[JIT]", "wasm code (V8 JIT)"),
           ("[kernel.kallsyms]", "kernel"), ("libc.so.6", "C library"))


def ensure_perf():
    if shutil.which("perf"):
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run(sudo + ["apt-get", "install", "-y", "-q", "linux-perf"], check=True, env=env)


def shares(perf_data):
    """Share of samples (%) per object, from `perf report --sort dso`."""
    out = subprocess.run(["perf", "report", "-i", str(perf_data), "--sort", "dso", "--stdio"],
                         capture_output=True, text=True, check=True).stdout
    got = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(.+?)\s*$", line)
        if not m:
            continue
        name = m.group(2)
        key = "[JIT]" if name.startswith("[JIT]") else name
        got[key] = got.get(key, 0.0) + float(m.group(1))
    return got


def measure(o, system, run_dir, duration, scenario="a"):
    """One run of `system` in `scenario`: (CPU µs per request, {object: share %})."""
    docroot = run_dir / "docroot"
    docroot.mkdir(exist_ok=True)
    (docroot / "1k").write_bytes(b"x" * 1024)
    origin_port = bench.free_port(bench.SLAVE_IP)
    ports = {system: bench.free_port(bench.LISTEN_IP),
             f"admin:{system}": bench.free_port(bench.LISTEN_IP)}
    topo = bench.topology(scenario, origin_port, ports)
    (run_dir / "origin.conf").write_text(cf.origin_nginx_conf(topo, run_dir, docroot))
    origin = bench.spawn(["nginx", "-p", run_dir, "-c", run_dir / "origin.conf",
                          "-e", run_dir / "origin.error.log"], run_dir / "origin.out",
                         o["client_cpu"])
    cfg = cf.write_json(run_dir / f"envoy-{system}.json",
                        cf.envoy_config(system, topo, floor_wasm=FLOOR_WASM))
    envoy = bench.spawn([o["envoy"], "-c", cfg, "--concurrency", "1", "--disable-hot-restart",
                         "-l", "warn", "--log-path", run_dir / "envoy.log"],
                        run_dir / "envoy.out", o["proxy_cpu"])
    try:
        bench.wait_http(bench.SLAVE_IP, origin_port, origin)
        bench.wait_http(bench.LISTEN_IP, ports[system], envoy)
        url = f"http://{bench.LISTEN_IP}:{ports[system]}/1k"
        script, headers = None, ()
        if system == "odst" and scenario.startswith("d"):
            # As `make bench`: the client names each request's master, drawn at random.
            script = run_dir / "random-dst.lua"
            dsts = ", ".join(f'"{ip}:{port}"' for ip, port, _ in topo.masters)
            script.write_text(bench.RANDOM_DST_SCRIPT % {"dsts": dsts, "header": bench.DST_HEADER,
                                                         "obj": "1k"})
        elif system == "odst":
            headers = (f"{bench.DST_HEADER}: {bench.master_ips(3)[1]}:{origin_port}",)
        bench.run_wrk(o, url, 1, o["connections"], script, headers)  # warm-up
        perf_data = run_dir / "perf.data"
        perf = subprocess.Popen(["perf", "record", "-q", "-F", "2999", "-o", str(perf_data),
                                 "-p", str(envoy.pid), "--", "sleep", str(duration)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)  # perf attached
        before = bench.cpu_seconds(envoy.pid)
        r, _ = bench.run_wrk(o, url, duration - 0.6, o["connections"], script, headers)
        after = bench.cpu_seconds(envoy.pid)
        perf.wait(timeout=duration + 30)
        cpu_us = (after - before) * 1e6 / r["requests"]
        return cpu_us, shares(perf_data)
    finally:
        bench.stop(envoy)
        bench.stop(origin)


def split_row(label, runs, base=None):
    """A table row: the median CPU per request of `runs`, split by object; with `base` (a
    previous row's (cpu, split)), each object's difference to it in brackets."""
    cpu = statistics.median(c for c, _ in runs)
    split = {key: statistics.median(g.get(key, 0.0) for _, g in runs) * cpu / 100
             for key, _ in OBJECTS}
    other = cpu - sum(split.values())
    if base is None:
        cells = [f"{split[key]:.1f} µs" for key, _ in OBJECTS]
    else:
        cells = [f"{split[key]:.1f} µs ({split[key] - base[1][key]:+.1f})" for key, _ in OBJECTS]
    return f"| {label} | {cpu:.1f} µs | " + " | ".join(cells) + f" | {other:.1f} µs |", (cpu, split)


def main():
    ensure_perf()
    o = bench.options()
    systems = os.environ.get("BENCH_SPLIT_SYSTEMS", "floor,complean,originpull").split(",")
    scenarios = os.environ.get("BENCH_SPLIT_SCENARIOS", "a").split(",")
    duration = float(os.environ.get("BENCH_DURATION", "6"))
    reps = int(os.environ.get("BENCH_REPS", "2"))
    results = {(sc, s): [] for sc in scenarios for s in systems}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="perf-split-") as tmp:
        for rep in range(reps):
            for sc in scenarios:
                for s in systems:
                    run_dir = Path(tmp) / f"{sc}-{s}-{rep}"
                    run_dir.mkdir()
                    cpu_us, got = measure(o, s, run_dir, duration, sc)
                    bench.log(f"{s} ({sc}) rep {rep}: {cpu_us:.1f} µs/request")
                    results[(sc, s)].append((cpu_us, got))
    load_after = os.getloadavg()
    names = {s: bench.SYSTEM_LABEL.get(s, s) for s in systems}
    head = "| system | CPU/req | " + " | ".join(label for _, label in OBJECTS) + " | other |"
    rule = "|---|---:|" + "---:|" * (len(OBJECTS) + 1)
    tables = []
    for sc in scenarios:
        rows, base = [head, rule], None
        for s in systems:
            row, measured = split_row(names[s], results[(sc, s)], base)
            base = base or measured
            rows.append(row)
        tables += [f"### {bench.SCENARIO_LABEL.get(sc, sc)}", "", "In brackets: the difference to the first row.",
                   "", *rows, ""]
    # Each system's cost of many masters: its last (d) scenario against its first.
    d = [sc for sc in scenarios if sc.startswith("d")]
    if len(d) > 1:
        rows = [head, rule]
        for s in systems:
            _, first = split_row(names[s], results[(d[0], s)])
            row, _ = split_row(f"{names[s]}: {d[-1]} (vs {d[0]})", results[(d[-1], s)], first)
            rows.append(row)
        tables += [f"### {d[-1]} against {d[0]}, per system", "",
                   f"In brackets: the difference to the same system's {d[0]} run.", "", *rows, ""]
    text = "\n".join([
        "# Where the CPU per request goes (perf, by code object)",
        "",
        f"Command: `make bench-split` BENCH_SPLIT_SYSTEMS={','.join(systems)} "
        f"BENCH_SPLIT_SCENARIOS={','.join(scenarios)} BENCH_DURATION={duration:g} "
        f"BENCH_REPS={reps}  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
        f"Load average before / after: {' '.join(f'{x:.2f}' for x in load_before)} / "
        f"{' '.join(f'{x:.2f}' for x in load_after)}  ",
        "1 KiB, wrk -t1 -c32; Envoy --concurrency 1 on CPU 0. CPU/req from /proc (user + "
        "system), split by perf's share of samples per object (median of the repetitions).",
        "",
        *tables,
    ])
    name = "perf-split.md" if scenarios == ["a"] else f"perf-split-{'-'.join(scenarios)}.md"
    o["out"].mkdir(parents=True, exist_ok=True)
    out = o["out"] / name
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
