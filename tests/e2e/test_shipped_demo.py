"""The shipped envoy/envoy.yaml + envoy/lds.yaml, run exactly as `make run` runs them
(demo.py --no-wait: fixed ports 9901/10000/8081, relative paths from the repo root)."""

import subprocess
import sys

import pytest

from harness import HERE, REPO, port_open

PORTS = [("127.0.0.1", 9901), ("127.0.0.1", 10000), ("127.0.0.2", 8081), ("127.0.0.3", 8081),
         ("127.0.0.4", 8081), ("127.0.0.5", 8081)]


def test_make_run_demo_behaves_as_described(envoy_bin):
    busy = [f"{ip}:{port}" for ip, port in PORTS if port_open(ip, port)]
    if busy:
        pytest.fail(f"demo ports in use: {busy}: stop `make run` (or whatever holds them) first")
    p = subprocess.run([sys.executable, str(HERE / "demo.py"), "--no-wait", "--envoy", envoy_bin],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "x-served-by: s1  x-origin-pull-origin: slave=" in out, out  # /1.jpg failed over
    assert not any(port_open(ip, port) for ip, port in PORTS), "demo left something running"
