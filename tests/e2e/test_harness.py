"""Checks of the harness itself and of the shipped Envoy wiring it reuses: file-watched ECDS
and LDS reloads (accepted and rejected) and HTTPS IP origins through the ORIGINAL_DST TLS
cluster."""

import json

import pytest

from harness import Env


def cfg(ips, **origin):
    return {"domains": [{"domain": "www.test.com", "master": {"ips": ips, **origin}}],
            "debug_headers": True}


@pytest.mark.parametrize("delivery", ["ecds", "lds"])
def test_reload_switches_origin_and_rejects_invalid_config(make_env, delivery):
    env = make_env(delivery=delivery)
    a = env.start_origin("a", ip="127.0.0.2")
    b = env.start_origin("b", ip="127.0.0.3")
    env.start(cfg([a.addr]))
    assert env.request("www.test.com", "/").headers["x-served-by"] == "a"

    assert env.reload(cfg([b.addr])) == "success"
    assert all(env.request("www.test.com", f"/{i}").headers["x-served-by"] == "b"
               for i in range(6))

    # Invalid (port 0): Envoy rejects the update and keeps serving the previous configuration.
    assert env.reload(cfg([a.addr.split(":")[0] + ":0"])) == "rejected"
    assert env.request("www.test.com", "/after").headers["x-served-by"] == "b"
    if delivery == "ecds":
        assert env.ecds_stat("config_fail") >= 1
        assert env.stat("listener_manager.lds.update_rejected") == 0
    else:
        assert env.stat("listener_manager.lds.update_rejected") >= 1
    assert any("wasm log" in line for line in env.envoy_log().splitlines())


def test_https_ip_origin_with_san_validation(env):
    t = env.start_origin("t", ip="127.0.0.6", tls=True)
    env.start(cfg([t.addr], protocol="https", host="tls-origin.test"))
    r = env.request("www.test.com", "/secure")
    assert r.status == 200, r
    assert r.headers["x-served-by"] == "t"
    assert r.headers["x-seen-host"] == "tls-origin.test"


def test_env_as_context_manager_with_callable_config(tmp_path, envoy_bin):
    origins = [dict(name="m1", ip="127.0.0.2"), dict(name="m2", ip="127.0.0.3")]
    with Env(tmp_path, lambda e: cfg([e.addr("m1") + ":1", e.addr("m2") + ":0"]),
             origins=origins, envoy=envoy_bin) as env:
        served = {env.request("www.test.com", f"/{i}").headers["x-served-by"] for i in range(8)}
        assert served == {"m1"}  # weight 0 is never picked
        assert json.loads(json.dumps(env.plugin_config(env)))["domains"]
