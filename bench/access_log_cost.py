#!/usr/bin/env python3
"""What the access log's attribution fields cost Envoy per request, side by side in one run.

Envoy --concurrency 1 on CPU 0; an nginx origin and wrk -t1 -c32 on CPU 1; 1 KiB object; the
access log to /dev/null (stdout logger). Filter state is written by Envoy's native
set_filter_state filter, so the rows differ only in the log format (and (5) in the writes).
Usage: python3 bench/access_log_cost.py OUTDIR [REPS] [DURATION]   (results.md in OUTDIR)
Every process started is stopped by PID; every loop is bounded."""

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ENVOY = os.environ.get("ENVOY", str(Path(__file__).resolve().parent.parent / ".venv/bin/envoy"))
OUT = Path(sys.argv[1])
REPS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
DUR = int(sys.argv[3]) if len(sys.argv) > 3 else 3
OUT.mkdir(parents=True, exist_ok=True)
ORIGIN = ("127.0.0.61", 18081)
LISTEN = "127.0.0.62"
PROXY_CPU, CLIENT_CPU = "0", "1"
HEAD = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(:AUTHORITY)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% details=%RESPONSE_CODE_DETAILS% upstream=%UPSTREAM_HOST% "
)


# The format of main a9b2d9f: the filter wrote nothing on the happy path, four %CEL% filled in.
def _cel(field, key, fallback, present="'wasm.origin_pull.origin' in filter_state || "):
    """One field of that format: the filter-state value if written, else what Envoy knows."""
    return (
        f"{field}=%CEL('wasm.origin_pull.{key}' in filter_state ? {fallback[0]} : "
        f"({present}response.code_details == 'via_upstream' ? {fallback[1]} : '-'))% "
    )


CEL_FMT = (
    HEAD
    + _cel("origin", "origin", ("filter_state['wasm.origin_pull.origin']", "upstream.address"), present="")
    + _cel("role", "role", ("filter_state['wasm.origin_pull.role']", "'master'"))
    + _cel("attempts", "attempts", ("filter_state['wasm.origin_pull.attempts']", "'1'"))
    + _cel("failed_over", "attempts", ("'true'", "'false'"))
    + "%DURATION%ms\n"
)
# Before that: four values written per request, four %FILTER_STATE% fields.
FOUR_FMT = (
    HEAD
    + " ".join(f"{k}=%FILTER_STATE(wasm.origin_pull.{k}:PLAIN)%" for k in ("origin", "role", "attempts", "failed_over"))
    + " %DURATION%ms\n"
)
FOUR = {"origin": "127.0.0.61:18081", "role": "master", "attempts": "1", "failed_over": "false"}
# Now (render's ACCESS_LOG_FORMAT): one value, one %FILTER_STATE%.
ONE_FMT = HEAD + "%FILTER_STATE(wasm.origin_pull.served:PLAIN)% %DURATION%ms\n"
ONE = {"served": "origin=127.0.0.61:18081 role=master attempts=1 failed_over=false"}

# system -> (access log format or None, filter-state values written per request)
SYSTEMS = {
    "1-plain, no log": (None, {}),
    "2-four %CEL%, nothing written": (CEL_FMT, {}),
    "3-four %FILTER_STATE%, four written": (FOUR_FMT, FOUR),
    "4-one %FILTER_STATE%, one written": (ONE_FMT, ONE),
    "5-no log, one written": (None, ONE),
}

SLOG = OUT / "pids.txt"


def envoy_cfg(name, port, admin, fmt, fs):
    filters = []
    if fs:
        filters.append(
            {
                "name": "envoy.filters.http.set_filter_state",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config",
                    "on_request_headers": [
                        {
                            "object_key": f"wasm.origin_pull.{k}",
                            "factory_key": "envoy.string",
                            "format_string": {"text_format_source": {"inline_string": v}},
                        }
                        for k, v in fs.items()
                    ],
                },
            }
        )
    filters.append(
        {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }
    )
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
        "HttpConnectionManager",
        "stat_prefix": "b",
        "http_filters": filters,
        "route_config": {
            "virtual_hosts": [
                {"name": "a", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "origin"}}]}
            ]
        },
    }
    if fmt:
        hcm["access_log"] = [
            {
                "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                    "log_format": {"text_format_source": {"inline_string": fmt}},
                },
            }
        ]
    return {
        "admin": {"address": {"socket_address": {"address": LISTEN, "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "l",
                    "address": {"socket_address": {"address": LISTEN, "port_value": port}},
                    "filter_chains": [
                        {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "origin",
                    "connect_timeout": "1s",
                    "type": "STATIC",
                    "load_assignment": {
                        "cluster_name": "origin",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {"address": ORIGIN[0], "port_value": ORIGIN[1]}
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }


NGINX = f"""daemon off; master_process off; worker_processes 1; pid {OUT}/origin.pid;
error_log {OUT}/origin.error.log warn;
events {{ worker_connections 16384; }}
http {{ access_log off; default_type application/octet-stream; sendfile on; tcp_nodelay on;
 keepalive_timeout 300s; keepalive_requests 10000000;
 client_body_temp_path {OUT}/tmp/body; proxy_temp_path {OUT}/tmp/proxy; fastcgi_temp_path {OUT}/tmp/f;
 uwsgi_temp_path {OUT}/tmp/u; scgi_temp_path {OUT}/tmp/s;
 server {{ listen {ORIGIN[0]}:{ORIGIN[1]}; root {OUT}/docroot; }} }}
"""
PROCS = []


def spawn(args, cpu, out):
    p = subprocess.Popen(
        ["taskset", "-c", cpu, *map(str, args)], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    PROCS.append(p)
    SLOG.open("a").write(f"{p.pid} {args[0]}\n")
    return p


def cpu_s(pid):
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def wait_http(url, deadline=30):
    t = time.time() + deadline
    while time.time() < t:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except Exception:
            time.sleep(0.2)
    raise RuntimeError(f"{url} not answering")


def wrk(url, dur):
    p = subprocess.run(
        ["taskset", "-c", CLIENT_CPU, "wrk", "-t1", "-c32", f"-d{dur}s", "--timeout", "5s", url],
        capture_output=True,
        text=True,
        timeout=dur + 60,
    )
    m = re.search(r"(\d+) requests in", p.stdout)
    n = int(m.group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", p.stdout).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", p.stdout)
    return n, rps, int(non2xx.group(1)) if non2xx else 0, p.stdout


def main():
    (OUT / "docroot").mkdir(exist_ok=True)
    (OUT / "tmp").mkdir(exist_ok=True)
    (OUT / "docroot" / "1k").write_bytes(b"x" * 1024)
    (OUT / "origin.conf").write_text(NGINX)
    load_before = os.getloadavg()
    spawn(
        ["nginx", "-p", OUT, "-c", OUT / "origin.conf", "-e", OUT / "origin.error.log"], CLIENT_CPU, subprocess.DEVNULL
    )
    envoys = {}
    for i, (name, (fmt, fs)) in enumerate(SYSTEMS.items()):
        port, admin = 18100 + i, 18200 + i
        cfg = OUT / f"envoy-{name}.json"
        cfg.write_text(json.dumps(envoy_cfg(name, port, admin, fmt, fs)))
        # stdout (the access log) goes to /dev/null
        envoys[name] = (
            spawn(
                [
                    ENVOY,
                    "-c",
                    cfg,
                    "--concurrency",
                    "1",
                    "--disable-hot-restart",
                    "-l",
                    "warn",
                    "--log-path",
                    OUT / f"envoy-{name}.log",
                    "--base-id",
                    str(700 + i),
                ],
                PROXY_CPU,
                subprocess.DEVNULL,
            ),
            f"http://{LISTEN}:{port}/1k",
        )
    try:
        wait_http(f"http://{ORIGIN[0]}:{ORIGIN[1]}/1k")
        for _process, url in envoys.values():
            wait_http(url)
            wrk(url, 1)  # warm-up
        runs = {s: [] for s in SYSTEMS}
        names = list(SYSTEMS)
        for rep in range(REPS):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for s in order:
                p, url = envoys[s]
                c0 = cpu_s(p.pid)
                n, rps, bad, txt = wrk(url, DUR)
                c1 = cpu_s(p.pid)
                (OUT / f"wrk-{s}-{rep}.txt").write_text(txt)
                runs[s].append({"n": n, "rps": rps, "non2xx": bad, "cpu_us": (c1 - c0) / n * 1e6})
                print(
                    f"rep {rep} {s:22s} rps {rps:9.0f} cpu/req {(c1 - c0) / n * 1e6:6.2f} us non2xx {bad}", flush=True
                )
    finally:
        for p in PROCS:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)
    load_after = os.getloadavg()
    med = {
        s: {
            "rps": statistics.median(r["rps"] for r in runs[s]),
            "cpu": statistics.median(r["cpu_us"] for r in runs[s]),
            "cpu_all": [round(r["cpu_us"], 2) for r in runs[s]],
        }
        for s in SYSTEMS
    }
    base = med["1-plain, no log"]["cpu"]
    lines = [
        f"load before {load_before} after {load_after}; reps {REPS} x {DUR}s",
        "",
        "| system | rps | CPU/req | Δ vs (1) | CPU/req each rep |",
        "|---|---:|---:|---:|---|",
    ]
    for s in SYSTEMS:
        m = med[s]
        lines.append(f"| {s} | {m['rps']:.0f} | {m['cpu']:.2f} µs | {m['cpu'] - base:+.2f} µs | {m['cpu_all']} |")
    (OUT / "results.md").write_text("\n".join(lines) + "\n")
    (OUT / "results.json").write_text(json.dumps({"runs": runs, "med": med}))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
