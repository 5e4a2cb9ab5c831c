#!/usr/bin/env python3
"""`make validate`: every rendered Envoy configuration passes `envoy --mode validate`.

1. the shipped envoy/envoy.yaml, lds.yaml, cds.yaml and ecds.json are byte for byte what
   `origin-pull render envoy/examples/demo.json --out-dir envoy` writes (no drift);
2. `envoy --mode validate -c envoy/envoy.yaml` (from the repo root, as users run it);
3. the shipped listener (its ECDS resource inlined) and clusters inlined into a static copy of
   the bootstrap (validate mode does not read file-based LDS/CDS/ECDS) — this loads the wasm and
   runs the filter's on_configure;
4. every envoy/examples/*.json passes `origin-pull check`, and both of its renderings — the static
   bootstrap (`render -o`) as written, and the file-watched set (`render --out-dir`, ECDS) inlined
   — pass Envoy's validate mode (the same parser, now through the real filter); the demo also
   with `--delivery lds`;
5. a deliberately invalid plugin configuration is REJECTED by Envoy's validate mode (proves
   steps 3/4 really exercise the filter).
Exit status 0 only if everything passed.
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import envoy_config as ec  # noqa: E402

REPO = ec.REPO


# The examples' private-bucket credentials come from the VM environment: dummy values here, as
# operators set the real ones where Envoy runs (render lists them as host_env_keys).
ENV = {**os.environ, **ec.EXAMPLE_ENV}


def envoy_validate(envoy, config_path):
    p = subprocess.run([envoy, "--mode", "validate", "-c", str(config_path), "-l", "warn"],
                       cwd=REPO, capture_output=True, text=True, timeout=120, env=ENV)
    out = (p.stdout + p.stderr).strip()
    # A deprecated field works today and breaks on a later Envoy: treat it as a failure.
    return p.returncode == 0 and "Deprecated field" not in out, out


def inlined(out_dir):
    """The file-watched set in out_dir as one static bootstrap (an ECDS resource, when there is
    one, inlined into the listener: validate mode does not read it)."""
    boot = ec._load_yaml(out_dir / "envoy.yaml")
    listeners = ec._load_yaml(out_dir / "lds.yaml")["resources"]
    if (out_dir / "ecds.json").exists():
        resources = ec.json.loads((out_dir / "ecds.json").read_text(encoding="utf-8"))
        listeners = ec.inline_ecds(listeners, resources["resources"])
    return ec.static_bootstrap(boot, listeners, ec._load_yaml(out_dir / "cds.yaml")["resources"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--envoy", default=str(REPO / ".venv" / "bin" / "envoy"))
    ap.add_argument("--cli", default=str(ec.CLI))
    args = ap.parse_args()
    failures = []

    def report(ok, what, detail=""):
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            failures.append(what)
            if detail:
                print("     " + detail[-3000:].replace("\n", "\n     "))

    for need in (ec.WASM, Path(args.cli)):
        if not need.exists():
            print(f"FAIL {need} is missing: run `make build` first")
            return 1

    def render(*extra):
        return subprocess.run([args.cli, "render", *extra], cwd=REPO, capture_output=True,
                              text=True, timeout=60, env=ENV)

    with tempfile.TemporaryDirectory(prefix="origin-pull-validate-") as tmp:
        tmp = Path(tmp)

        # 1. no drift between the shipped files and render
        p = render("envoy/examples/demo.json", "--out-dir", str(tmp / "shipped"),
                   "--config-dir", "envoy")
        report(p.returncode == 0, "origin-pull render envoy/examples/demo.json --out-dir", p.stderr)
        for name in ("envoy.yaml", "lds.yaml", "cds.yaml", "ecds.json"):
            same = (tmp / "shipped" / name).read_bytes() == (ec.SHIPPED_DIR / name).read_bytes()
            report(same, f"envoy/{name} == render output (else run `make envoy-config`)")

        # 2. every bootstrap under envoy/ as users run it
        for path in sorted(ec.SHIPPED_DIR.glob("*.yaml")):
            if "resources" in ec._load_yaml(path):
                continue  # an LDS/CDS file, checked below
            ok, out = envoy_validate(args.envoy, path.relative_to(REPO))
            report(ok, f"envoy validate {path.relative_to(REPO)}", out)

        # 3. the shipped listener + clusters inside the shipped bootstrap
        p = ec.write_json(tmp / "shipped-static.json", inlined(ec.SHIPPED_DIR))
        ok, out = envoy_validate(args.envoy, p)
        report(ok, "envoy validate envoy/envoy.yaml + lds.yaml + cds.yaml + ecds.json (inlined)",
               out)

        # 4. every example: check, then both renderings through Envoy and the filter
        for ex in sorted((REPO / "envoy" / "examples").glob("*.json")):
            rel = ex.relative_to(REPO)
            c = subprocess.run([args.cli, "check", str(ex)], capture_output=True, text=True,
                               timeout=60, env=ENV)
            report(c.returncode == 0, f"origin-pull check {rel}", c.stderr)
            static = tmp / f"{ex.stem}-static.yaml"
            p = render(str(rel), "-o", str(static), "--wasm", str(ec.WASM))
            report(p.returncode == 0, f"origin-pull render {rel}", p.stderr)
            ok, out = envoy_validate(args.envoy, static)
            report(ok, f"envoy validate static bootstrap rendered from {rel}", out)
            out_dir = tmp / ex.stem
            p = render(str(rel), "--out-dir", str(out_dir), "--wasm", str(ec.WASM))
            report(p.returncode == 0, f"origin-pull render {rel} --out-dir", p.stderr)
            ok, out = envoy_validate(args.envoy, ec.write_json(tmp / f"{ex.stem}.json",
                                                               inlined(out_dir)))
            report(ok, f"envoy validate file-watched set rendered from {rel} (inlined)", out)
            if ex.stem == "demo":
                lds_dir = tmp / "demo-lds"
                p = render(str(rel), "--out-dir", str(lds_dir), "--delivery", "lds",
                           "--wasm", str(ec.WASM))
                report(p.returncode == 0 and not (lds_dir / "ecds.json").exists(),
                       f"origin-pull render {rel} --out-dir --delivery lds", p.stderr)
                ok, out = envoy_validate(args.envoy, ec.write_json(tmp / "demo-lds.json",
                                                                   inlined(lds_dir)))
                report(ok, f"envoy validate file-watched LDS set rendered from {rel} (inlined)",
                       out)

        # 5. an invalid configuration must be rejected by the filter inside Envoy
        bad = {"domains": [{"domain": "www.test.com", "master": {"ips": ["127.0.0.2:0"]}}]}
        boot = ec.bootstrap(9901, tmp / "lds.json")
        p = ec.write_json(tmp / "invalid.json",
                          ec.static_bootstrap(boot, [ec.listener(10000, bad)]))
        ok, out = envoy_validate(args.envoy, p)
        report(not ok, "envoy validate rejects an invalid plugin configuration (port 0)",
               "Envoy accepted it:\n" + out)

    print(f"\n{'all configurations valid' if not failures else f'{len(failures)} check(s) failed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
