#!/usr/bin/env python3
"""What the access log's attribution fields cost Envoy per request, side by side in one run.

Envoy --concurrency 1 on CPU 0; an nginx origin and wrk -t1 -c32 on CPU 1; 1 KiB object; the
access log to /dev/null (stdout logger). Filter state is written by Envoy's native
set_filter_state filter, so the rows differ only in the log format (and (5) in the writes).
Usage: .venv/bin/python bench/access_log_cost.py OUTDIR [REPS] [DURATION]   (results.md in OUTDIR)
Every process started is stopped by PID; every loop is bounded."""

import json
import os
import statistics
import sys
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import configs as cf  # noqa: E402  (the nginx origin of `make bench`)
import run as br  # noqa: E402  (process, wrk and CPU helpers of `make bench`)

OUT = Path(sys.argv[1])
REPS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
DUR = int(sys.argv[3]) if len(sys.argv) > 3 else 3
ORIGIN = ("127.0.0.61", 18081)
LISTEN = "127.0.0.62"
ENVOY = os.environ.get("ENVOY", str(BENCH.parent / ".venv" / "bin" / "envoy"))
OPTIONS = {"client_cpu": "1"}
PROXY_CPU = 0
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


def shipped_format():
    """The access-log format `origin-pull render` writes (envoy/lds.yaml): one value, one %FILTER_STATE%."""
    doc = yaml.safe_load((BENCH.parent / "envoy" / "lds.yaml").read_text())
    hcm = doc["resources"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm["access_log"][0]["typed_config"]["log_format"]["text_format_source"]["inline_string"]


ONE_FMT = shipped_format()
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


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    docroot = OUT / "www"
    docroot.mkdir(exist_ok=True)
    (docroot / "1k").write_bytes(b"x" * 1024)
    topo = cf.Topology([ORIGIN + (1,)], ORIGIN, LISTEN, {})
    (OUT / "origin.conf").write_text(cf.origin_nginx_conf(topo, OUT, docroot))
    load_before = os.getloadavg()
    origin = br.spawn(
        ["nginx", "-p", OUT, "-c", OUT / "origin.conf", "-e", OUT / "origin.error.log"],
        OUT / "origin.log",
        OPTIONS["client_cpu"],
    )
    br.wait_http(*ORIGIN, origin)
    envoys = {}
    for i, (name, (fmt, fs)) in enumerate(SYSTEMS.items()):
        port, admin = 18100 + i, 18200 + i
        cfg = OUT / f"envoy-{i}.json"
        cfg.write_text(json.dumps(envoy_cfg(name, port, admin, fmt, fs)))
        # stdout (the access log) goes to the process log, which this bench never reads.
        proc = br.spawn(
            [ENVOY, "-c", cfg, "--concurrency", "1", "--disable-hot-restart", "-l", "warn", "--base-id", 700 + i],
            "/dev/null",
            PROXY_CPU,
        )
        br.wait_http(LISTEN, port, proc)
        br.run_wrk(OPTIONS, f"http://{LISTEN}:{port}/1k", 1, 32)  # warm-up
        envoys[name] = (proc, f"http://{LISTEN}:{port}/1k")
    runs = {s: [] for s in SYSTEMS}
    names = list(SYSTEMS)
    for rep in range(REPS):
        for s in names[rep % len(names) :] + names[: rep % len(names)]:
            proc, url = envoys[s]
            c0 = br.cpu_seconds(proc.pid)
            r, text = br.run_wrk(OPTIONS, url, DUR, 32)
            c1 = br.cpu_seconds(proc.pid)
            (OUT / f"wrk-{names.index(s) + 1}-{rep}.txt").write_text(text)
            runs[s].append({"rps": r["rps"], "non2xx": r["non2xx"], "cpu_us": (c1 - c0) / r["requests"] * 1e6})
            br.log(f"rep {rep} {s:40s} rps {r['rps']:9.0f} cpu/req {runs[s][-1]['cpu_us']:6.2f} us")
    br.stop_all()
    load_after = os.getloadavg()
    med = {
        s: {"rps": statistics.median(r["rps"] for r in runs[s]), "cpu": statistics.median(r["cpu_us"] for r in runs[s])}
        for s in SYSTEMS
    }
    base = med[names[0]]["cpu"]
    lines = [
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; {REPS} reps x {DUR} s",
        "",
        "| system | rps | CPU/req | Δ vs (1) |",
        "|---|---:|---:|---:|",
    ]
    for s in SYSTEMS:
        m = med[s]
        lines.append(f"| {s} | {m['rps']:.0f} | {m['cpu']:.2f} µs | {m['cpu'] - base:+.2f} µs |")
    (OUT / "results.md").write_text("\n".join(lines) + "\n")
    (OUT / "results.json").write_text(json.dumps({"runs": runs, "median": med}))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
