#!/usr/bin/env python3
"""Detection and recovery figures for docs/health.md, passive-only vs active probes, measured
against the real Envoy (--concurrency 2) with local origins on 127.0.3.x. Bounded: about 2-3 minutes.

    make health-figures          (or: .venv/bin/python tests/e2e/health_figures.py)

Per mode: two master IPs ("steady", "victim"), a client sending one request every
--period seconds on fresh connections. After a warm-up the victim process is killed; later it is
started again on the same port. Measured:
  death -> block         until origin_pull_origin_blocked{victim} reads 1 (polled every 50 ms)
  death -> last hit      send time of the last client request whose first attempt went to the
                         dead victim (x-origin-pull-attempts >= 2: it was retried on "steady")
  client requests hit    how many client requests paid a connection failure + retry
  recovery -> unblock    restart -> origin_pull_origin_blocked{victim} reads 0 (for passive-only:
                         the block expiring; the gauge is refreshed every second)
  recovery -> served     restart -> first client response served by the victim again (adds the
                         wait for the client's next pick of the victim)
  probe traffic          probe requests per origin per minute, from the origin's own log
"""

import argparse
import os
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from harness import Env, wait_for  # noqa: E402

DOMAIN = "www.test.com"


def run(mode, workdir, period, block_seconds, probe, rounds_wanted):
    detection = {"block_seconds": block_seconds}
    if mode == "probes":
        detection["probe"] = probe
    with Env(workdir / mode) as env:
        steady = env.start_origin("steady", ip="127.0.3.20")
        victim = env.start_origin("victim", ip="127.0.3.21")
        env.start({"debug_headers": True, "domains": [{"domain": DOMAIN,
                   "master": {"ips": [steady.addr, victim.addr]}, "detection": detection}]})
        gauge = f"wasmcustom.origin_pull_origin_blocked;domain={DOMAIN};origin={victim.addr}"
        log = []
        stop = threading.Event()

        def client():
            i = 0
            while not stop.is_set() and i < 10_000:
                sent = time.monotonic()
                try:
                    r = env.request(DOMAIN, f"/f{i}", timeout=5)
                    log.append((sent, r.status, r.headers.get("x-served-by"),
                                int(r.headers.get("x-origin-pull-attempts", "0"))))
                except OSError as e:
                    log.append((sent, 0, repr(e), 0))
                i += 1
                stop.wait(max(0.0, period - (time.monotonic() - sent)))

        started = time.monotonic()
        probes_before = steady.count("/healthz")
        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        rounds = []
        try:
            time.sleep(3)
            for _ in range(rounds_wanted):
                t_death = time.monotonic()
                victim.stop()
                wait_for(lambda: env.stat(gauge) == 1, 60, interval=0.05, what="victim blocked")
                t_block = time.monotonic()
                time.sleep(3)
                t_restart = time.monotonic()
                victim.start()
                wait_for(lambda: env.stat(gauge) == 0, block_seconds + 20, interval=0.05,
                         what="victim unblocked")
                t_unblock = time.monotonic()
                wait_for(lambda: any(s >= t_restart and who == "victim" for s, _, who, _ in log),  # noqa: B023 (called at once)
                         block_seconds + 20, interval=0.05, what="victim serving again")
                t_back = min(s for s, _, who, _ in log if s >= t_restart and who == "victim")
                hits = [s for s, _, _, att in log if t_death <= s < t_restart and att >= 2]
                rounds.append({
                    "death_to_block_s": t_block - t_death,
                    "death_to_last_hit_s": (max(hits) - t_death) if hits else None,
                    "client_requests_hit": len(hits),
                    "recovery_to_unblock_s": t_unblock - t_restart,
                    "recovery_to_served_s": t_back - t_restart,
                })
                time.sleep(2)
        finally:
            stop.set()
            thread.join(10)
        duration_min = (time.monotonic() - started) / 60
        out = {"mode": mode, "requests": len(log),
               "client_errors": sum(1 for e in log if e[1] != 200),
               "probes_per_origin_per_min": (steady.count("/healthz") - probes_before) / duration_min}
        for key in rounds[0]:
            values = [r[key] for r in rounds]
            out[key] = values
        return out


def fmt(v):
    if isinstance(v, list):
        return ", ".join(fmt(x) for x in v)
    if v is None:
        return "none"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


ROWS = [  # (key, label in docs/health.md)
    ("requests", "client requests sent"),
    ("client_errors", "client requests that failed"),
    ("death_to_block_s", "death → victim blocked (s)"),
    ("death_to_last_hit_s", "death → last client request that reached it (s)"),
    ("client_requests_hit", "client requests that hit the dead origin (each paid a connect "
                            "failure + retry)"),
    ("recovery_to_unblock_s", "recovery → unblocked (s)"),
    ("recovery_to_served_s", "recovery → first client request served by it (s)"),
    ("probes_per_origin_per_min", "probe requests per origin per minute"),
]
BEGIN = "<!-- health-figures:begin (written by `make health-figures`; do not edit) -->"
END = "<!-- health-figures:end -->"


def table(results, args, probe):
    modes = {"passive": "passive only", "probes": "with probes"}
    lines = [f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
             f"`make health-figures` (`tests/e2e/health_figures.py --period {args.period:g} "
             f"--block-seconds {args.block_seconds} --interval-ms {args.interval_ms} --rounds "
             f"{args.rounds}`), one value per round; load average before the run "
             f"{args.load_before}:", "",
             "| measure | " + " | ".join(modes[r["mode"]] for r in results) + " |",
             "|---|" + "---|" * len(results)]
    for key, label in ROWS:
        lines.append(f"| {label} | " + " | ".join(
            ("none reached it" if key == "death_to_last_hit_s" and all(
                v is None for v in r[key]) else fmt(r[key])) for r in results) + " |")
    return "\n".join(lines)


def write_doc(path, text):
    """Replace what is between the markers in `path` with `text`."""
    doc = Path(path).read_text(encoding="utf-8")
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{path}: markers {BEGIN!r} / {END!r} not found")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    Path(path).write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}", encoding="utf-8")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--period", type=float, default=2.0, help="seconds between client requests")
    p.add_argument("--rounds", type=int, default=3, help="deaths and recoveries per mode")
    p.add_argument("--block-seconds", type=int, default=15)
    p.add_argument("--interval-ms", type=int, default=1000)
    p.add_argument("--workdir", default=str(HERE / ".tmp" / "health-figures"))
    p.add_argument("--doc", help="write the table into this file (docs/health.md) between "
                   "its health-figures markers")
    args = p.parse_args()
    args.load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    probe = {"path": "/healthz", "interval_ms": args.interval_ms, "timeout_ms": min(500, args.interval_ms),
             "unhealthy_threshold": 2, "healthy_threshold": 2}
    workdir = Path(args.workdir)
    results = [run(mode, workdir, args.period, args.block_seconds, probe, args.rounds)
               for mode in ("passive", "probes")]
    keys = ["requests", "client_errors", "death_to_block_s", "death_to_last_hit_s",
            "client_requests_hit", "recovery_to_unblock_s", "recovery_to_served_s",
            "probes_per_origin_per_min"]
    print(f"client: 1 request / {args.period} s; block_seconds {args.block_seconds}; "
          f"{args.rounds} rounds (one value per round); probe {probe}")
    print("| measure | " + " | ".join(r["mode"] for r in results) + " |")
    print("|---|" + "---|" * len(results))
    for k in keys:
        print(f"| {k} | " + " | ".join(fmt(r[k]) for r in results) + " |")
    text = table(results, args, probe)
    print(text)
    if args.doc:
        write_doc(args.doc, text)
        print(f"wrote the table into {args.doc}")
    if any(r["client_errors"] for r in results):
        print("client errors seen: a dead origin leaked to a client", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
