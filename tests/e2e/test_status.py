"""`origin-pull status --admin …` against a running Envoy with a blocked origin, and its clear
answers when the admin endpoint is unreachable or runs no origin-pull filter."""

import json
import subprocess
import time

import toolbox
from harness import _spawn, _stop_proc, free_port, wait_for
from toolbox import DOMAIN, run_cli


def test_status_shows_the_blocked_origin_roles_and_counts(env):
    toolbox.start_origins(env)
    env.start(toolbox.config(env))
    expected = toolbox.drive(env)
    m1, s1, dead = env.addr("m1"), env.addr("s1"), env.dead
    admin = f"127.0.0.1:{env.admin_port}"

    p = run_cli("status", "--admin", admin, "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    now = time.time()
    assert [d["domain"] for d in doc["domains"]] == [DOMAIN]
    d = doc["domains"][0]
    assert d["switched"] is False
    assert d["masters_available"] == 1  # of m1 and the dead one
    assert d["failovers"] == {"served": expected["failovers_served"], "failed": 0}
    origins = {o["origin"]: o for o in d["origins"]}
    assert list(origins) == [m1, dead, s1]  # configuration order
    assert [origins[a]["roles"] for a in (m1, dead, s1)] == [["master"], ["master"], ["slave"]]
    assert {a for a, o in origins.items() if o["blocked"]} == expected["blocked"]
    assert now + 100 < origins[dead]["blocked_until"] <= now + 121
    assert origins[m1]["blocked_until"] is None
    for addr, count in expected["requests"].items():
        assert origins[addr]["requests"] == count, addr
    for addr, o in origins.items():
        for kind, n in o["failures"].items():
            assert n == expected["failures"].get((addr, kind), 0), (addr, kind)
    assert origins[dead]["blocks"] == {"passive": 1, "probe": 0}

    p = run_cli("status", "--admin", admin)
    assert p.returncode == 0, p.stderr
    print(p.stdout)
    lines = p.stdout.splitlines()
    assert lines[0] == (f"{DOMAIN}  masters available: 1  "
                        f"failovers: {expected['failovers_served']} served, 0 failed")
    assert lines[1].split() == ["ORIGIN", "ROLE", "STATE", "REQUESTS", "CONNECT", "TIMEOUT",
                                "4XX", "5XX", "OTHER", "BLOCKS"]
    row = {l.split()[0]: l.split() for l in lines[2:] if l.strip()}
    assert row[dead][1:4] == ["master", "BLOCKED", "until"]
    assert row[dead][-7:] == ["1", "1", "0", "0", "0", "0", "1"]
    assert row[m1][1:3] == ["master", "ok"]
    assert row[m1][3:] == [str(expected["requests"][m1]), "0", "0",
                           str(expected["failures"][(m1, "4xx")]), "0", "0", "0"]
    assert row[s1][1:3] == ["slave", "ok"]


def test_status_says_when_the_admin_endpoint_is_unreachable():
    port = free_port("127.0.0.1")
    p = run_cli("status", "--admin", f"127.0.0.1:{port}")
    assert p.returncode == 2
    assert p.stdout == ""
    assert f"cannot read Envoy's admin interface at 127.0.0.1:{port}" in p.stderr
    assert "Connection refused" in p.stderr
    p = run_cli("status", "--admin", "localhost")
    assert p.returncode == 2 and "expected IP:PORT" in p.stderr


def test_status_says_when_envoy_runs_no_origin_pull_filter(tmp_path, envoy_bin):
    port = free_port("127.0.0.1")
    boot = tmp_path / "bare.yaml"
    boot.write_text(f"admin:\n  address:\n    socket_address: {{address: 127.0.0.1, port_value: {port}}}\n")
    proc = _spawn([envoy_bin, "-c", str(boot), "--disable-hot-restart", "-l", "warning"],
                  stdout=subprocess.DEVNULL, stderr=open(tmp_path / "envoy.log", "wb"),
                  stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: run_cli("status", "--admin", f"127.0.0.1:{port}").returncode != 2, 20,
                 what="bare Envoy's admin")
        p = run_cli("status", "--admin", f"127.0.0.1:{port}")
        assert p.returncode == 3, p
        assert "runs no origin-pull filter" in p.stderr
    finally:
        _stop_proc(proc)
