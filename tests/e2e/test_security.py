"""Scenario f: a client can never steer the request to an origin outside the configuration.
A live "secret" origin that no configuration names must receive zero requests whatever the client
sends. Origins use 127.0.0.70-127.0.0.79 and 127.0.0.1 (localhost).
"""

import pytest

import envoy_config as ec
from harness import free_port

D = "www.test.com"


def spoofing(secret):
    return [("x-envoy-original-dst-host", secret.addr),
            ("x-origin-pull-cluster", "origin_pull_ip_http")]


@pytest.fixture
def secret(env):
    return env.start_origin("secret", ip="127.0.0.79")


def test_spoofed_routing_headers_on_a_configured_host(env, secret):
    good = env.start_origin("good", ip="127.0.0.70")
    env.start({"domains": [{"domain": D, "master": {"ips": [good.addr]}}]})
    variants = [
        spoofing(secret),
        [("X-Envoy-Original-Dst-Host", secret.addr), ("X-Origin-Pull-Cluster", "origin_pull_ip_http")],
        spoofing(secret) + spoofing(secret),  # duplicated headers
        [("x-envoy-original-dst-host", secret.addr)],
        [("x-origin-pull-cluster", "origin_pull_ip_https")],
    ]
    for headers in variants:
        r = env.request(D, "/p", headers=headers)
        assert (r.status, r.headers["x-served-by"]) == (200, "good"), (headers, r)
        assert r.headers["x-seen-dst"] == good.addr
    assert secret.count() == 0


def test_spoofed_headers_on_an_unconfigured_host(env, secret):
    good = env.start_origin("good", ip="127.0.0.71")
    env.start({"domains": [{"domain": D, "master": {"ips": [good.addr]}}]})
    # Every unknown host, an empty one included, gets the filter's own local reply
    # (unknown_host_status, 404), never Envoy's or an origin's.
    for host in ["evil.example", "", "x" * 4000]:
        r = env.request(host, "/p", headers=spoofing(secret))
        assert (r.status, r.headers.get("x-origin-pull-error")) == (404, "unknown-host"), \
            (host[:20], r)
        assert "x-served-by" not in r.headers
    assert (secret.count(), good.count()) == (0, 0)


def test_domain_origin_removes_a_spoofed_original_dst(make_env):
    port = free_port("127.0.0.1")
    env = make_env(extra_clusters=[ec.strict_dns_cluster(f"origin_pull|http|localhost|{port}",
                                                         "localhost", port)])
    secret = env.start_origin("secret", ip="127.0.0.78")
    _origin = env.start_origin("origin", ip="127.0.0.1", port=port)
    env.start({"domains": [{"domain": D, "master": {"domain": f"localhost:{port}"}}]})
    r = env.request(D, "/p", headers=spoofing(secret))
    assert (r.status, r.headers["x-served-by"], r.headers["x-seen-dst"]) == (200, "origin", "-")
    assert secret.count() == 0


def test_host_variants_match_the_configured_domain(env, secret):
    good = env.start_origin("good", ip="127.0.0.72")
    env.start({"domains": [{"domain": D, "master": {"ips": [good.addr]}}]})
    for host in ["WWW.TEST.COM", "www.test.com.", "www.test.com:10000", "Www.Test.Com.:80"]:
        r = env.request(host, "/v", headers=spoofing(secret))
        assert (r.status, r.headers["x-served-by"]) == (200, "good"), (host, r)
    assert secret.count() == 0


def test_failover_callout_ignores_spoofed_headers(env, secret):
    master = env.start_origin("master", ip="127.0.0.73", status=404)
    slave = env.start_origin("slave", ip="127.0.0.74")
    env.start({"domains": [{"domain": D, "master": {"ips": [master.addr]},
                            "slave": {"ips": [slave.addr]}}]})
    r = env.request(D, "/f", headers=spoofing(secret))
    # The address header is the filter's, never the client's: in a logged chain every attempt
    # carries attempt 1's (the master's), the slave's own is in x-origin-pull-dst-2.
    assert (r.status, r.headers["x-served-by"], r.headers["x-seen-dst"]) == \
        (200, "slave", master.addr)
    assert secret.count() == 0
