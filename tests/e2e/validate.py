#!/usr/bin/env python3
"""`make validate`: check every shipped Envoy configuration and example plugin configuration.

1. `envoy --mode validate -c envoy/envoy.yaml` (from the repo root, as users run it);
2. the listener(s) of envoy/lds.yaml inlined into a static copy of the bootstrap (validate mode
   does not read file-based LDS) — this loads the wasm and runs the filter's on_configure;
3. the plugin configuration inlined in envoy/lds.yaml equals envoy/examples/demo.json;
4. every envoy/examples/*.json passes `origin-pull check`, and validates inside the shipped
   listener in Envoy too (the same parser, but now through the real filter);
5. a deliberately invalid plugin configuration is REJECTED by Envoy's validate mode (proves
   step 2/4 really exercise the filter).
Exit status 0 only if everything passed.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import envoy_config as ec  # noqa: E402

REPO = ec.REPO


def envoy_validate(envoy, config_path):
    p = subprocess.run([envoy, "--mode", "validate", "-c", str(config_path), "-l", "warn"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    return p.returncode == 0, (p.stdout + p.stderr).strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--envoy", default=str(REPO / ".venv" / "bin" / "envoy"))
    ap.add_argument("--cli", default=str(REPO / "target" / "release" / "origin-pull"))
    args = ap.parse_args()
    failures = []

    def report(ok, what, detail=""):
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            failures.append(what)
            if detail:
                print("     " + detail[-3000:].replace("\n", "\n     "))

    if not ec.WASM.exists():
        print(f"FAIL {ec.WASM.relative_to(REPO)} is missing: run `make wasm` first")
        return 1

    # 1. every bootstrap under envoy/ as users run it
    for path in sorted((REPO / "envoy").glob("*.yaml")):
        doc = ec._load_yaml(path)
        if "resources" in doc:
            continue  # an LDS file, checked below
        ok, out = envoy_validate(args.envoy, path.relative_to(REPO))
        report(ok, f"envoy validate {path.relative_to(REPO)}", out)

    boot = ec.load_shipped_bootstrap()
    shipped = ec.load_shipped_listeners()
    with tempfile.TemporaryDirectory(prefix="origin-pull-validate-") as tmp:
        tmp = Path(tmp)

        # 2. the shipped listener inside the shipped bootstrap
        p = ec.write_json(tmp / "lds-static.json", ec.static_bootstrap(boot, shipped))
        ok, out = envoy_validate(args.envoy, p)
        report(ok, "envoy validate envoy/envoy.yaml + envoy/lds.yaml (listener inlined)", out)

        # 3. lds.yaml's inline plugin config is the demo example
        demo = json.loads((REPO / "envoy" / "examples" / "demo.json").read_text())
        same = ec.plugin_config_of(shipped[0]) == demo
        report(same, "envoy/lds.yaml plugin configuration == envoy/examples/demo.json")

        # 4. every example: CLI check + Envoy validate through the filter
        for ex in sorted((REPO / "envoy" / "examples").glob("*.json")):
            rel = ex.relative_to(REPO)
            if Path(args.cli).exists():
                c = subprocess.run([args.cli, "check", str(ex)], capture_output=True, text=True,
                                   timeout=60, env={**os.environ, **ec.EXAMPLE_ENV})
                report(c.returncode == 0, f"origin-pull check {rel}", c.stderr)
            cfg = json.loads(ex.read_text())
            lst = ec.listener(10000, cfg, vm_env={"key_values": ec.EXAMPLE_ENV})
            p = ec.write_json(tmp / f"{ex.stem}.json", ec.static_bootstrap(boot, [lst]))
            ok, out = envoy_validate(args.envoy, p)
            report(ok, f"envoy validate listener with {rel}", out)

        # 5. an invalid configuration must be rejected by the filter inside Envoy
        bad = {"domains": [{"domain": "www.test.com", "master": {"ips": ["127.0.0.2:0"]}}]}
        p = ec.write_json(tmp / "invalid.json",
                          ec.static_bootstrap(boot, [ec.listener(10000, bad)]))
        ok, out = envoy_validate(args.envoy, p)
        report(not ok, "envoy validate rejects an invalid plugin configuration (port 0)",
               "Envoy accepted it:\n" + out)

    print(f"\n{'all configurations valid' if not failures else f'{len(failures)} check(s) failed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
