#!/usr/bin/env python3
"""`make run`: the origin-pull demo with the SHIPPED envoy/envoy.yaml, lds.yaml, cds.yaml and ecds.json
(`origin-pull render envoy/examples/demo.json --out-dir envoy`; docker-compose.yml runs the same).

Starts demo origins, then Envoy (from the repo root, --concurrency 2), shows with curl which
origin serves each request and a failover to the slave, then keeps running (access log
followed on screen) until Ctrl-C, and tears everything down.

  masters  m1 127.0.0.2:8081 (weight 1), m2 127.0.0.3:8081 (weight 3): answer 404 for /1.jpg
           127.0.0.4:8081 (weight 1): nothing listens there (a dead master)
  slave    s1 127.0.0.5:8081: answers 200 for everything
  domains  www.test.com (the masters above, slave s1), dead.test.com (only the dead master,
           slave s1); plugin configuration: envoy/examples/demo.json (in envoy/ecds.json)
  Envoy    listener 127.0.0.1:10000, admin 127.0.0.1:9901

Options: --envoy PATH (default .venv/bin/envoy), --no-wait (exit after the demo requests;
exit status 1 if the demo did not behave as described).
"""

import argparse
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The plugin configuration is a JSON string inside envoy/ecds.json (its quotes escaped).
SWITCH_ON = ("sed 's/\\\\\"domain\\\\\": \\\\\"www.test.com\\\\\",/& \\\\\"master_slave_switch\\\\\": true,/' "
             "envoy/ecds.json > envoy/.ecds.new && mv envoy/.ecds.new envoy/ecds.json")
SWITCH_OFF = ("sed 's/ \\\\\"master_slave_switch\\\\\": true,//' envoy/ecds.json > envoy/.ecds.new "
              "&& mv envoy/.ecds.new envoy/ecds.json")
sys.path.insert(0, str(HERE))
from harness import REPO, _spawn, _stop_proc, port_open, wait_for  # noqa: E402

LISTENER = ("127.0.0.1", 10000)
ADMIN = ("127.0.0.1", 9901)
ORIGINS = [  # name, ip, extra args
    ("m1", "127.0.0.2", ["--route", "/1.jpg=404"]),
    ("m2", "127.0.0.3", ["--route", "/1.jpg=404"]),
    ("s1", "127.0.0.5", []),
]
DEAD = ("127.0.0.4", 8081)
PORT = 8081
RUN_DIR = HERE / ".tmp" / "demo"

BOLD = "\033[1m" if sys.stdout.isatty() else ""
RESET = "\033[0m" if sys.stdout.isatty() else ""


def say(text=""):
    print(text, flush=True)


def curl(host, path, method="GET"):
    """Run curl as a user would; return (status, headers dict, body)."""
    url = f"http://{LISTENER[0]}:{LISTENER[1]}{path}"
    cmd = ["curl", "-sS", "-D", "-", "-H", f"Host: {host}", url]
    if method == "HEAD":
        cmd.insert(1, "-I")
    shown = " ".join(c if " " not in c else f"'{c}'" for c in cmd)
    say(f"{BOLD}$ {shown}{RESET}")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        say(f"  curl failed: {p.stderr.strip()}")
        return 0, {}, ""
    head, _, body = p.stdout.replace("\r\n", "\n").partition("\n\n")
    lines = head.splitlines()
    status = int(lines[0].split()[1]) if lines else 0
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


def show(status, headers, body):
    keep = ["x-served-by", "x-origin-pull-origin", "x-origin-pull-attempts", "x-origin-pull-error"]
    extra = "  ".join(f"{k}: {headers[k]}" for k in keep if k in headers)
    say(f"  -> {status}  {extra}")
    if body.strip():
        say(f"     body: {body.strip()[:200]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envoy", default=".venv/bin/envoy")
    ap.add_argument("--no-wait", action="store_true", help="exit after the demo requests")
    args = ap.parse_args()
    envoy = Path(args.envoy)
    envoy = str(envoy if envoy.is_absolute() else REPO / envoy)
    for tool in ("curl",):
        if not shutil.which(tool):
            sys.exit(f"demo: `{tool}` is needed (apt-get install {tool})")
    wasm = REPO / "target" / "wasm32-wasip1" / "release" / "origin_pull.wasm"
    if not wasm.exists():
        sys.exit(f"demo: {wasm.relative_to(REPO)} is missing: run `make build` first")
    busy = [f"{ip}:{port}" for ip, port in
            [LISTENER, ADMIN, DEAD] + [(ip, PORT) for _, ip, _ in ORIGINS] if port_open(ip, port)]
    if busy:
        sys.exit(f"demo: already in use: {', '.join(busy)} (another `make run`?)")

    RUN_DIR.mkdir(parents=True, exist_ok=True)
    procs = []

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    ok = True
    try:
        for name, ip, extra in ORIGINS:
            log = open(RUN_DIR / f"origin-{name}.out", "wb")
            procs.append(_spawn([sys.executable, str(HERE / "origin.py"), "--listen",
                                 f"{ip}:{PORT}", "--name", name,
                                 "--log", str(RUN_DIR / f"origin-{name}.log"), *extra],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True))
            log.close()
        for name, ip, _ in ORIGINS:
            wait_for(lambda ip=ip: port_open(ip, PORT), 10, what=f"origin {name}")
        say(f"origins: m1 127.0.0.2:{PORT} (w1), m2 127.0.0.3:{PORT} (w3), "
            f"dead 127.0.0.4:{PORT} (w1, nothing listens), slave s1 127.0.0.5:{PORT}")

        access = RUN_DIR / "access.log"
        access.write_text("")
        out = open(access, "ab")
        envoy_log = RUN_DIR / "envoy.log"
        cmd = [envoy, "-c", "envoy/envoy.yaml", "--concurrency", "2", "-l", "info",
               "--component-log-level", "wasm:debug", "--log-path", str(envoy_log),
               "--disable-hot-restart", "--file-flush-interval-msec", "100"]
        say(f"envoy:   (cd {REPO} && {' '.join(cmd)})")
        eproc = _spawn(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                       stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        procs.append(eproc)

        def ready():
            if eproc.poll() is not None:
                raise SystemExit(f"demo: Envoy exited ({eproc.returncode}); see {envoy_log}")
            p = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                f"http://{ADMIN[0]}:{ADMIN[1]}/ready"],
                               capture_output=True, text=True, timeout=5)
            return p.stdout == "200" and port_open(*LISTENER)
        wait_for(ready, 30, interval=0.2, what="Envoy /ready")
        say(f"Envoy is ready: listener http://127.0.0.1:{LISTENER[1]}, admin "
            f"http://127.0.0.1:{ADMIN[1]}, logs in {RUN_DIR.relative_to(REPO)}/\n")

        say(f"{BOLD}1. Weighted polling over the masters (m1:m2 = 1:3; the dead master is "
            f"blocked after its first connection error, its request retried on another "
            f"master){RESET}")
        served = {}
        for i in range(8):
            status, headers, body = curl("www.test.com", f"/index.html?n={i}")
            show(status, headers, body)
            ok &= status == 200
            served[headers.get("x-served-by", "?")] = served.get(headers.get("x-served-by"), 0) + 1
        say(f"  served: {served}\n")

        say(f"{BOLD}2. Failover: the masters answer 404 for /1.jpg, the slave 200 "
            f"(the seeds' example){RESET}")
        status, headers, body = curl("www.test.com", "/1.jpg")
        show(status, headers, body)
        ok &= status == 200 and headers.get("x-served-by") == "s1"
        say()

        say(f"{BOLD}3. A domain whose only master is dead: connection error -> slave{RESET}")
        status, headers, body = curl("dead.test.com", "/video.mp4")
        show(status, headers, body)
        ok &= status == 200 and headers.get("x-served-by") == "s1"
        say()

        say(f"{BOLD}4. A host with no origin settings gets a local reply, never an origin{RESET}")
        status, headers, body = curl("unknown.example", "/")
        show(status, headers, body)
        ok &= status == 404
        say()

        time.sleep(0.3)  # the access log is written when each stream ends
        say(f"{BOLD}Access log (origin = the origin that served; docs/observability.md#access-log):{RESET}")
        for line in access.read_text(errors="replace").splitlines()[-11:]:
            say("  " + line)
        say()
        if not ok:
            say("demo: some requests did not behave as described above")
        if args.no_wait:
            return 0 if ok else 1

        say(f"{BOLD}Still running. Try:{RESET}\n"
            f"  curl -si -H 'Host: www.test.com' http://127.0.0.1:{LISTENER[1]}/1.jpg\n"
            f"  target/release/origin-pull status --admin 127.0.0.1:{ADMIN[1]}\n"
            f"  curl -s http://127.0.0.1:{ADMIN[1]}/stats/prometheus | grep '^origin_pull_'\n"
            f"  switch master/slave live (www.test.com is then served by s1 directly, also on open\n"
            f"  keep-alive connections: the configuration is an ECDS resource):\n"
            f"    {SWITCH_ON}\n"
            f"    undo: {SWITCH_OFF}\n"
            f"Following the access log; Ctrl-C stops Envoy and the origins.\n")
        with open(access, errors="replace") as f:
            f.seek(0, 2)
            while eproc.poll() is None:  # bounded by Envoy's life and Ctrl-C
                line = f.readline()
                if line:
                    say("  " + line.rstrip("\n"))
                else:
                    time.sleep(0.2)
            say(f"demo: Envoy exited ({eproc.returncode}); see {envoy_log}")
            return 1
    except KeyboardInterrupt:
        say("\nstopping ...")
        return 0 if ok else 1
    finally:
        for p in reversed(procs):
            _stop_proc(p, 10)


if __name__ == "__main__":
    sys.exit(main())
