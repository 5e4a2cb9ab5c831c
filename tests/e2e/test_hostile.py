"""Hostile requests through the real Envoy: spoofed routing headers, absent or odd Host /
:authority, huge headers, non-idempotent methods with bodies, slave responses over the size
limit, with hop-by-hop or malformed headers. Each gets a defined answer (asserted), a live
"secret" origin that no configuration names receives nothing, and the wasm VM never fails
(Envoy's wasm failure stats stay 0, the filter keeps serving). One Envoy for the whole set.
Origins use 127.0.6.200-127.0.6.250.
"""

import socket

import pytest

from chaos import vm_failures
from harness import Env, wait_for

D = "www.test.com"
BAD = "bad.test.com"  # its master sends broken responses; its slave is `master` (/ok = 200)
LIMIT = 100_000  # failover.max_response_body_bytes


@pytest.fixture(scope="module")
def world(tmp_path_factory, envoy_bin):
    env = Env(tmp_path_factory.mktemp("hostile"), envoy=envoy_bin)
    with env:
        secret = env.start_origin("secret", ip="127.0.6.250")
        master = env.start_origin("master", ip="127.0.6.200", status=404,
                                  routes={"/ok": 200})
        slave = env.start_origin("slave", ip="127.0.6.201", extra_args=["--hostile"])
        bad_master = env.start_origin("bad-master", ip="127.0.6.202", extra_args=["--hostile"])
        env.start({"domains": [{"domain": D, "master": {"ips": [master.addr]},
                                "slave": {"ips": [slave.addr]},
                                "failover": {"max_response_body_bytes": LIMIT}},
                               {"domain": BAD, "master": {"ips": [bad_master.addr]},
                                "slave": {"ips": [master.addr]},
                                "detection": {"block_seconds": 0}}],
                   "debug_headers": True})
        vms_created = env.stat("wasm.envoy.wasm.runtime.v8.created")
        yield env, secret, master, slave
        # After everything: the VM never failed (no VM was re-created) and still serves.
        assert vm_failures(env) == []
        assert env.stat("wasm.envoy.wasm.runtime.v8.created") == vms_created
        r = env.request(D, "/ok")
        assert (r.status, r.headers["x-served-by"]) == (200, "master")
        assert secret.count() == 0, secret.requests()


def spoof(secret):
    return [("x-envoy-original-dst-host", secret.addr),
            ("x-origin-pull-cluster", "origin_pull_ip_http"),
            ("X-Envoy-Original-Dst-Host", secret.addr)]


def raw(env, data, timeout=10):
    """Send raw bytes on a fresh connection; the status line's code (0 if closed first)."""
    with socket.create_connection((env.listener_ip, env.listener_port), timeout=timeout) as s:
        s.sendall(data)
        buf = b""
        while b"\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    line = buf.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) > 1 and line[1].isdigit() else 0


@pytest.mark.parametrize("host,status,served_by", [
    ("WWW.TEST.COM", 200, "master"),
    ("www.test.com.", 200, "master"),
    ("www.test.com:8080", 200, "master"),
    ("Www.Test.Com.:80", 200, "master"),
    ("[::1]", 404, None),
    ("[::1]:80", 404, None),
    ("127.0.6.250", 404, None),             # the secret origin's own IP as Host
    ("127.0.6.250:1", 404, None),
    ("www.test.com..", 404, None),
    ("evil.example", 404, None),
    ("www.test.com.evil.example", 404, None),
    ("x" * 8000, 404, None),                # very long
    ("a." * 2000 + "com", 404, None),
])
def test_odd_hosts_get_a_defined_answer(world, host, status, served_by):
    env, secret, _, _ = world
    r = env.request(host, "/ok", headers=spoof(secret))
    assert r.status == status, (host[:60], r)
    assert r.headers.get("x-served-by") == served_by
    if status == 404:
        assert r.headers["x-origin-pull-error"] == "unknown-host"
        assert len(r.body) < 300  # the host is echoed shortened


@pytest.mark.parametrize("request_bytes,status", [
    (b"GET /ok HTTP/1.1\r\n\r\n", 400),                            # no Host: Envoy refuses
    (b"GET /ok HTTP/1.0\r\n\r\n", 426),                            # HTTP/1.0: Envoy wants 1.1
    (b"GET /ok HTTP/1.1\r\nHost: \r\n\r\n", 404),                  # empty Host: no settings
    (b"GET /ok HTTP/1.1\r\nHost: a b\r\n\r\n", 400),               # space: Envoy refuses
    # Two Hosts are joined ("www.test.com,evil"): no settings for that.
    (b"GET /ok HTTP/1.1\r\nHost: www.test.com\r\nHost: evil\r\n\r\n", 404),
    # An absolute URI's authority wins over Host: the secret's IP has no settings.
    (b"GET http://127.0.6.250/ok HTTP/1.1\r\nHost: www.test.com\r\n\r\n", 404),
    (b"GET /ok HTTP/1.1\r\nHost: www.test.com\r\nContent-Length: 3\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),          # smuggling shape
    (b"GET /ok HTTP/1.1\r\nHost: www.test.com\r\nX-Bad\x00: 1\r\n\r\n", 400),
])
def test_malformed_requests_are_refused_or_answered(world, request_bytes, status):
    env, secret, _, _ = world
    assert raw(env, request_bytes) == status


@pytest.mark.parametrize("failover", [False, True])
def test_header_bytes_that_are_not_utf8_are_served(world, failover):
    """HTTP lets a header value carry obs-text (bytes 0x80-0xff) and Envoy passes it on: the
    filter reads such a map without failing (the SDK's own decoder panics on it: Envoy then
    answers 503 wasm_fail_stream to that request and every later one) and routes the request,
    failed over or not."""
    env, secret, master, slave = world
    path = "/missing-obs" if failover else "/ok"
    before = (master.count(), slave.count())
    request = (f"GET {path} HTTP/1.1\r\nHost: {D}\r\n".encode()
               + b"x-obs: caf\xe9 \xff\r\nx-ok: 1\r\nConnection: close\r\n\r\n")
    assert raw(env, request) == 200
    # Master 404 on every other path: the slave answered the failover.
    assert (master.count(), slave.count()) == (before[0] + 1, before[1] + int(failover))
    assert (env.request(D, "/ok").status, vm_failures(env)) == (200, [])


@pytest.mark.parametrize("kind", ["brokenmark", "brokenobs"])
def test_an_origin_cannot_send_the_drain_filters_broken_status_mark(world, kind):
    """The drain filter marks an origin's invalid status ("2000" -> 502) with a header the
    listener's filter reads. A 502 whose origin sent that header itself (here the slave, after
    the master's 404) is relayed as the origin's 502: the mark is removed before the filter
    reads it, so neither its value (bytes that are not UTF-8 included) nor its presence reaches
    the filter, and the client never sees it."""
    env, secret, master, slave = world
    before = slave.count()
    r = env.request(D, f"/__malformed/{kind}", headers=spoof(secret))
    assert (r.status, r.body, slave.count()) == (502, b"ok", before + 1), r
    assert "x-origin-pull-broken-status" not in r.headers
    assert r.headers["x-origin-pull-origin"] == f"slave={slave.addr}"
    assert vm_failures(env) == []


def test_absolute_uri_cannot_reach_the_secret(world):
    env, secret, _, _ = world
    raw(env, f"GET http://{secret.addr}/abs HTTP/1.1\r\nHost: {secret.addr}\r\n\r\n".encode())
    raw(env, f"GET http://{secret.addr}/abs HTTP/1.1\r\nHost: {D}\r\n\r\n".encode())
    assert secret.count() == 0


def test_huge_headers(world):
    env, secret, _, _ = world
    r = env.request(D, "/ok", headers=[("x-big", "v" * 40_000)] + spoof(secret))
    assert (r.status, r.headers["x-served-by"]) == (200, "master")
    # Over Envoy's 60 KiB header limit: refused before the filter runs.
    assert raw(env, b"GET /ok HTTP/1.1\r\nHost: www.test.com\r\nx-big: "
               + b"v" * 70_000 + b"\r\n\r\n") == 431
    many = [(f"x-h{i}", "v") for i in range(90)] + spoof(secret)
    r = env.request(D, "/ok", headers=many)
    assert r.status == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_non_idempotent_methods_with_bodies_are_not_failed_over(world, method):
    env, secret, master, slave = world
    before = slave.count()
    r = env.request(D, f"/write-{method}", method=method, body=b"b" * 300_000,
                    headers=spoof(secret))
    # The master's own 404 reaches the client; the body was not replayed anywhere.
    assert (r.status, r.headers["x-served-by"]) == (404, "master"), r
    assert r.headers["x-seen-body-bytes"] == "300000"
    assert slave.count() == before
    wait_for(lambda: any(f"not failing over {method} " in line for line in env.wasm_log_lines()),
             what="the refusal log line")


def test_slave_response_over_the_callout_size_limit_streams(world):
    """max_response_body_bytes bounds callout failovers only: the router (default) streams the
    slave's answer whatever its size (the callout limits: test_failover.py)."""
    env, secret, _, _ = world
    r = env.request(D, f"/__size/{LIMIT * 3}/big", headers=spoof(secret))
    assert (r.status, len(r.body), r.headers["x-served-by"]) == (200, LIMIT * 3, "slave")
    r = env.request(D, f"/__size/{LIMIT}/fits")
    assert (r.status, len(r.body)) == (200, LIMIT)


def test_slave_hop_by_hop_headers_are_not_relayed(world):
    env, secret, _, _ = world
    r = env.request(D, "/__hop/x", headers=spoof(secret))
    assert (r.status, r.headers["x-served-by"]) == (200, "slave")
    for name in ("keep-alive", "proxy-connection", "upgrade", "te", "trailer",
                 "proxy-authenticate", "transfer-encoding"):
        assert name not in r.headers, (name, r.headers)
    assert r.headers.get("connection", "keep-alive").lower() in ("keep-alive", "close")
    assert r.headers["x-end-to-end"] == "kept"
    # NOT asserted here: with the router failover (the default) Envoy relays `x-hop`, which the
    # slave's `Connection: x-hop` makes hop-by-hop (a known gap, see docs/behaviour.md); the callout
    # failover drops it (next test).


def test_callout_failover_drops_headers_the_connection_header_names(make_env):
    m = {"name": "m", "ip": "127.0.6.203", "status": 404}
    s = {"name": "s", "ip": "127.0.6.204", "extra_args": ["--hostile"]}
    env = make_env(lambda e: {"envoy": {"failover": "callout"}, "debug_headers": True,
                              "domains": [{"domain": D, "master": {"ips": [e.addr("m")]},
                                           "slave": {"ips": [e.addr("s")]}}]},
                   origins=[m, s])
    r = env.request(D, "/__hop/x", headers=[("connection", "keep-alive, x-client-hop"),
                                            ("x-client-hop", "1")])
    assert (r.status, r.headers["x-served-by"]) == (200, "s"), r
    assert "x-hop" not in r.headers and r.headers["x-end-to-end"] == "kept", r.headers
    # Nor is the client's Connection-named header re-sent to the slave (its log would show it
    # only as a header count, so check with the master's 404 path: not relayed either way).
    assert "x-client-hop" not in r.headers


def test_router_failover_does_not_forward_headers_the_clients_connection_header_names(make_env):
    """Under the router failover (the default) neither attempt carries a header the client's
    `Connection` names (RFC 9110 §7.6.1): Envoy's HTTP/1 codec removes them before any filter
    runs (`Http::Utility::sanitizeConnectionHeader`), and both attempts share that header map.
    The origins echo the request header names they received (x-seen-headers)."""
    m = {"name": "m", "ip": "127.0.6.205", "routes": {"/__hop/miss": 404},
         "extra_args": ["--hostile"]}
    s = {"name": "s", "ip": "127.0.6.206", "extra_args": ["--hostile"]}
    env = make_env(lambda e: {"debug_headers": True,
                              "domains": [{"domain": D, "master": {"ips": [e.addr("m")]},
                                           "slave": {"ips": [e.addr("s")]}}]},
                   origins=[m, s])
    sent = [("connection", "keep-alive, X-Client-Hop"), ("x-client-hop", "1"),
            ("x-not-named", "1")]
    for path, served, attempts in (("/__hop/hit", "m", "1"), ("/__hop/miss", "s", "2")):
        r = env.request(D, path, headers=sent)
        assert (r.status, r.headers["x-served-by"]) == (200, served), r
        assert r.headers["x-origin-pull-attempts"] == attempts, r.headers
        seen = r.headers["x-seen-headers"].split(",")
        # The header the client did not name arrives (the echo works), the named one does not.
        assert "x-not-named" in seen and "x-client-hop" not in seen, (path, seen)


@pytest.mark.parametrize("kind", ["nocolon", "spacecolon", "twocl", "status", "nul"])
def test_slave_malformed_response_gets_a_defined_answer(world, kind):
    env, secret, _, _ = world
    r = env.request(D, f"/__malformed/{kind}", headers=spoof(secret))
    # Envoy's codec refuses the slave's answer: the client gets the filter's 502, never a
    # half-parsed response.
    assert r.status == 502, (kind, r)
    assert r.headers["x-origin-pull-error"] == "origin-unreachable", r.headers


@pytest.mark.parametrize("kind", ["nocolon", "spacecolon", "twocl", "status", "nul"])
def test_master_malformed_response_fails_over(world, kind):
    env, secret, master, _ = world
    # Served by the slave whatever the master's broken answer was (block_seconds 0: every
    # request goes to the broken master first).
    r = env.request(BAD, f"/__malformed/{kind}", headers=spoof(secret))
    assert r.status == 404 and r.headers["x-served-by"] == "master", (kind, r)
    assert r.headers["x-origin-pull-origin"] == f"slave={master.addr}"
    assert r.headers["x-origin-pull-attempts"] == "2"
