"""`make release` artifacts, and the build identity: the native command and the filter (in its
start-up log line) name the same version and git revision."""

import hashlib
import re
import subprocess

import envoy_config as ec
from harness import wait_for

DIST = ec.REPO / "dist"


def test_make_release_produces_the_artifacts():
    p = subprocess.run(["make", "-s", "release"], cwd=ec.REPO, capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    wasm = (DIST / "origin_pull.wasm").read_bytes()
    assert wasm[:4] == b"\0asm" and wasm == ec.WASM.read_bytes()
    for name in ("origin_pull.wasm", "origin-pull"):
        digest, file = (DIST / f"{name}.sha256").read_text().split()
        assert (digest, file) == (hashlib.sha256((DIST / name).read_bytes()).hexdigest(), name)
    version = (DIST / "VERSION").read_text().strip()
    out = subprocess.run([str(DIST / "origin-pull"), "--version"], capture_output=True,
                         text=True, timeout=30).stdout.strip()
    assert out == version
    m = re.fullmatch(r"origin-pull (\d+\.\d+\.\d+) \(rev ([0-9a-f]{12}|unknown)\)", version)
    assert m, version
    cargo_version = re.search(r'^version = "([^"]+)"', (ec.REPO / "Cargo.toml").read_text(), re.M)
    assert m.group(1) == cargo_version.group(1)
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ec.REPO,
                          capture_output=True, text=True).stdout.strip()
    if head:  # a git checkout (a source tarball builds as "unknown")
        assert m.group(2) == head
    # The release checks and renders like the development build.
    demo = ec.REPO / "envoy" / "examples" / "demo.json"
    assert subprocess.run([str(DIST / "origin-pull"), "check", str(demo)],
                          capture_output=True, timeout=30).returncode == 0


def test_filter_logs_its_build_at_start(env):
    build = subprocess.run([str(ec.CLI), "--version"], capture_output=True, text=True,
                           timeout=30).stdout.strip()
    m = env.start_origin("m", ip="127.0.7.5")
    env.start({"domains": [{"domain": "www.test.com", "master": {"ips": [m.addr]}}]})
    line = wait_for(lambda: next((l for l in env.wasm_log_lines() if "configured" in l), None),
                    10, what="start-up log line")
    assert f"{build} (worker " in line, (build, line)
