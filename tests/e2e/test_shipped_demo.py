"""The shipped envoy/envoy.yaml + lds.yaml + cds.yaml + ecds.json, run exactly as `make run` runs
them (demo.py --no-wait: fixed ports 9901/10000/8081, relative paths from the repo root), and the
live-switch commands the demo prints."""

import json
import shutil
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


def test_the_printed_switch_commands_flip_and_restore_the_shipped_configuration(tmp_path):
    import demo
    (tmp_path / "envoy").mkdir()
    shutil.copy(REPO / "envoy" / "ecds.json", tmp_path / "envoy" / "ecds.json")
    original = (tmp_path / "envoy" / "ecds.json").read_bytes()

    def plugin():
        doc = json.loads((tmp_path / "envoy" / "ecds.json").read_text())
        return json.loads(doc["resources"][0]["typed_config"]["config"]["configuration"]["value"])

    assert "master_slave_switch" not in plugin()["domains"][0]
    subprocess.run(["bash", "-c", demo.SWITCH_ON], cwd=tmp_path, check=True, timeout=10)
    assert plugin()["domains"][0]["master_slave_switch"] is True
    assert plugin()["domains"][0]["domain"] == "www.test.com"
    subprocess.run(["bash", "-c", demo.SWITCH_OFF], cwd=tmp_path, check=True, timeout=10)
    assert (tmp_path / "envoy" / "ecds.json").read_bytes() == original
    # docs/deploy.md shows the same command.
    assert demo.SWITCH_ON in (REPO / "docs" / "deploy.md").read_text()
