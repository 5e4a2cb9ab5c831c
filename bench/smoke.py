#!/usr/bin/env python3
"""`make bench-smoke` (part of `make test`): the benchmark cannot rot silently.

Generates the configuration of every benchmarked system for the scenarios with distinct
topologies (a: 3 weighted masters, c: one dead, d1000: 1000 masters) exactly as `make bench`
does, then checks each Envoy bootstrap with `envoy --mode validate` (this loads both wasm
modules and runs origin-pull's on_configure) and each nginx configuration with `nginx -t`
(skipped, with a notice, when nginx is not installed: `make bench` installs it), and runs the
wrk output parser on a recorded sample. Exit status 0 only if everything passed.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import configs as cf  # noqa: E402
import run  # noqa: E402

WRK_SAMPLE = """\
Running 3s test @ http://127.5.0.1:40000/1k
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.10ms    1.02ms  30.11ms   90.00%
    Req/Sec    15.20k     1.10k   16.90k    70.00%
  Latency Distribution
     50%  812.00us
     75%    2.10ms
     90%    3.00ms
     99%    1.20s
  45123 requests in 3.00s, 52.10MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 17
Requests/sec:  15040.12
Transfer/sec:     17.37MB
"""


def report_only_checks(tmp, report):
    """`run.py --report-only` re-renders results.md from the committed results.json on a machine
    without gnuplot; `keep_raw` keeps every wrk output of a run beside results.json."""
    out = tmp / "report-only"
    out.mkdir()
    shutil.copyfile(cf.REPO / "bench" / "results" / "results.json", out / "results.json")
    nognuplot = tmp / "bin"  # PATH with python but no gnuplot
    nognuplot.mkdir()
    (nognuplot / "python3").symlink_to(sys.executable)
    env = dict(os.environ, BENCH_OUT=str(out), PATH=str(nognuplot))
    p = subprocess.run([sys.executable, str(Path(run.__file__)), "--report-only"], env=env,
                       capture_output=True, text=True, timeout=120)
    md = out / "results.md"
    report(p.returncode == 0 and md.exists() and "| Envoy + origin-pull |" in md.read_text()
           and "gnuplot not found" in p.stdout,
           "run.py --report-only without gnuplot renders results.md", p.stdout + p.stderr)
    fake_run = tmp / "fake-run"
    (fake_run / "a-1k").mkdir(parents=True)
    (fake_run / "a-1k" / "wrk-plain-0.txt").write_text(WRK_SAMPLE)
    (fake_run / "a-1k" / "origin.conf").write_text("not a wrk output")
    kept = run.keep_raw(fake_run, out / "raw")
    raw = out / "raw" / "a-1k" / "wrk-plain-0.txt"
    report(kept == 1 and raw.exists() and run.parse_wrk(raw.read_text())["requests"] == 45123,
           "keep_raw keeps the wrk outputs (and only them) beside results.json")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--envoy", default=str(cf.REPO / ".venv" / "bin" / "envoy"))
    args = ap.parse_args()
    failures = []

    def report(ok, what, detail=""):
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            failures.append(what)
            if detail:
                print("     " + detail[-3000:].replace("\n", "\n     "))

    parsed = run.parse_wrk(WRK_SAMPLE)
    expected = {"rps": 15040.12, "p50_us": 812.0, "p99_us": 1.2e6, "requests": 45123,
                "non2xx": 17, "socket_errors": 3}
    report(parsed == expected, "wrk output parser", f"{parsed} != {expected}")

    for wasm in (cf.FLOOR_WASM, cf.ec.WASM):
        if not wasm.exists():
            report(False, f"{wasm} exists (run `make wasm bench-floor`)")
            return 1
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if not nginx:
        # CI installs nginx (.ci/run), so there the check must run, never be skipped.
        if os.environ.get("CI") == "true":
            report(False, "nginx installed (CI=true: .ci/run installs it)")
            return 1
        print("note: nginx is not installed; the nginx configurations are not checked here")

    with tempfile.TemporaryDirectory(prefix="origin-pull-bench-smoke-") as tmp:
        tmp = Path(tmp)
        topos = {}
        for scenario in ("a", "c", "d1000"):
            systems = run.systems_of(scenario)
            ports = {}
            for i, s in enumerate(systems):
                ports[s] = 20000 + 2 * i
                ports[f"admin:{s}"] = 20001 + 2 * i
            topo = run.topology(scenario, 18080, ports)
            topos[scenario] = topo
            sdir = tmp / scenario
            sdir.mkdir()
            if nginx:
                www = sdir / "www"
                www.mkdir()
                confs = {"origin": cf.origin_nginx_conf(topo, sdir, www)}
                if "nginx" in systems:
                    confs["nginx"] = cf.proxy_nginx_conf(topo, sdir)
                for name, text in confs.items():
                    conf = sdir / f"{name}.conf"
                    conf.write_text(text)
                    p = subprocess.run([nginx, "-t", "-q", "-p", str(sdir), "-c", str(conf),
                                        "-e", str(sdir / f"{name}.error.log")],
                                       capture_output=True, text=True, timeout=60)
                    report(p.returncode == 0, f"nginx -t {scenario}/{name}", p.stdout + p.stderr)
            for s in systems:
                if s not in cf.ENVOY_SYSTEMS:
                    continue
                path = cf.write_json(sdir / f"envoy-{s}.json", cf.envoy_config(s, topo))
                p = subprocess.run([args.envoy, "--mode", "validate", "-c", str(path), "-l", "error"],
                                   capture_output=True, text=True, timeout=120, cwd=cf.REPO)
                report(p.returncode == 0, f"envoy --mode validate {scenario}/{s}", p.stdout + p.stderr)
        # The checks above can fail: a floor filter whose module is missing is rejected.
        broken = cf.envoy_config("floor", topos["a"], floor_wasm=tmp / "missing.wasm")
        path = cf.write_json(tmp / "envoy-broken.json", broken)
        p = subprocess.run([args.envoy, "--mode", "validate", "-c", str(path), "-l", "error"],
                           capture_output=True, text=True, timeout=120, cwd=cf.REPO)
        report(p.returncode != 0, "envoy --mode validate rejects a missing wasm module",
               p.stdout + p.stderr)
        report_only_checks(tmp, report)
    print(f"bench smoke: {'FAILED: ' + ', '.join(failures) if failures else 'all passed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
