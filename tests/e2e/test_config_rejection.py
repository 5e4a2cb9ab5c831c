"""Invalid plugin configurations (the corpus in tests/corpus/invalid, see corpus.py) are rejected
with a message naming the domain, the field and the value — by `origin-pull check`, by Envoy at
bootstrap (validate mode runs the filter's on_configure), and under LDS reload, where Envoy keeps
serving the previous good configuration for EVERY case (one Envoy for all reloads).
Origins use 127.0.6.40-127.0.6.49.
"""

import subprocess

import pytest

import envoy_config as ec
from corpus import CASES, CORPUS, case
from harness import free_port, wait_for

CLI = ec.REPO / "target" / "release" / "origin-pull"
D = "www.test.com"


@pytest.mark.parametrize("c", CASES, ids=[c.name for c in CASES])
def test_check_rejects_with_the_message(c):
    p = subprocess.run([str(CLI), "check", str(CORPUS / f"{c.name}.json")],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1, p.stdout
    assert p.stdout == ""
    assert p.stderr.startswith("invalid origin-pull configuration: "), p.stderr
    assert c.expected in p.stderr, p.stderr
    # One line however hostile the input (CRLF, huge values): no log injection, bounded size.
    assert p.stderr.count("\n") == 1 and len(p.stderr) < 600, p.stderr


def test_corpus_is_complete():
    names = {c.name for c in CASES}
    assert len(CASES) >= 40
    files = {p.stem for p in CORPUS.glob("*.json")}
    assert files == names, files ^ names  # every file has an expectation and vice versa
    assert all("field " in c.expected for c in CASES), [c.name for c in CASES
                                                       if "field " not in c.expected]


BOOTSTRAP_CASES = ["port-zero", "single-ip-weight", "domain-loop", "host-crlf", "malformed-json",
                   "unknown-field", "bucket-secret-env-unset", "mirror-not-bucket"]


@pytest.mark.parametrize("name", BOOTSTRAP_CASES)
def test_envoy_refuses_it_at_bootstrap(tmp_path, envoy_bin, name):
    c = case(name)
    boot = ec.bootstrap(free_port(), tmp_path / "lds" / "lds.json")
    static = ec.static_bootstrap(boot, [ec.listener(free_port(), c.text)])
    path = tmp_path / "bootstrap.json"
    ec.write_json(path, static)
    p = subprocess.run([envoy_bin, "--mode", "validate", "-c", str(path), "-l", "info",
                        "--disable-hot-restart"],
                       cwd=ec.REPO, capture_output=True, text=True, timeout=120)
    out = p.stdout + p.stderr
    assert p.returncode != 0, out[-2000:]
    # The filter logs the same message `check` prints.
    assert c.expected in out, out[-3000:]


# Issue 13 item 5: a secret pasted into the wrong credential field.
MISPLACED_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzEXAMPLEKEY"
MISPLACED_SECRET_CASES = ["bucket-secret-in-secret-env", "bucket-secret-in-key-id-env",
                          "bucket-secret-in-key-id"]


@pytest.mark.parametrize("name", MISPLACED_SECRET_CASES)
def test_a_misplaced_secret_is_never_printed(tmp_path, envoy_bin, name):
    """Neither `check` nor Envoy (which logs the filter's configuration error once before
    exiting) prints the value of a credential field; both still name the domain and field."""
    c = case(name)
    assert MISPLACED_SECRET in c.text
    p = subprocess.run([str(CLI), "check", str(CORPUS / f"{name}.json")],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and c.expected in p.stderr, p.stderr
    boot = ec.bootstrap(free_port(), tmp_path / "lds" / "lds.json")
    path = tmp_path / "bootstrap.json"
    ec.write_json(path, ec.static_bootstrap(boot, [ec.listener(free_port(), c.text)]))
    e = subprocess.run([envoy_bin, "--mode", "validate", "-c", str(path), "-l", "info",
                        "--disable-hot-restart"],
                       cwd=ec.REPO, capture_output=True, text=True, timeout=120)
    out = e.stdout + e.stderr
    assert e.returncode != 0 and c.expected in out, out[-3000:]
    # (At debug level Envoy itself prints the listener's configuration, plugin JSON included:
    # that is Envoy's config dump, the reason docs/buckets.md prefers `*_env` credentials.)
    for where, text in [("check", p.stdout + p.stderr), ("envoy log", out)]:
        assert MISPLACED_SECRET not in text, f"the secret appears in the {where}"
        assert MISPLACED_SECRET[:12] not in text, f"part of the secret appears in the {where}"


def test_lds_reload_keeps_the_previous_configuration_for_every_case(env):
    good = env.start_origin("good", ip="127.0.6.40")
    env.start({"domains": [{"domain": D, "master": {"ips": [good.addr]}}]})
    outcomes = {}
    for c in CASES:
        valid_utf8 = c.text == c.data.decode("utf-8", "replace")
        log_before = len(env.envoy_log())
        result = env.reload(c.text)
        outcomes[c.name] = result
        r = env.request(D, f"/after-{c.name}")
        assert (r.status, r.headers["x-served-by"]) == (200, "good"), (c.name, r)
        if valid_utf8:
            # The filter refused it (on_configure false) and said why, naming the field: in
            # what Envoy logged for THIS reload (an earlier case's message does not count).
            assert result == "rejected", (c.name, result)
            wait_for(lambda: c.expected in env.envoy_log()[log_before:], 5,  # noqa: B023 (called at once)
                     what=f"{c.name}: {c.expected!r} logged for this reload")
        else:
            # A protobuf string cannot carry invalid UTF-8: Envoy refuses the file itself.
            assert result in ("rejected", "failure"), (c.name, result)
    assert good.count() == len(CASES)
    # Still the original listener: a good reload afterwards works too.
    env.reload({"domains": [{"domain": D, "master": {"ips": [good.addr]}}],
                "debug_headers": True}, expect="success")
    assert env.request(D, "/final").headers["x-origin-pull-origin"] == f"master={good.addr}"
