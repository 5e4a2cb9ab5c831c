"""Scenario e: the Host header (default and override), https and follow origins against a TLS
origin on loopback (the harness makes a self-signed CA), and domain origins through the STRICT_DNS
clusters `origin-pull render` writes (HTTP and HTTPS, resolving `localhost`). Origins use
127.0.0.60-127.0.0.69 and 127.0.0.1 (localhost).

`follow` towards https is covered by unit tests (exchange::tests::host_override_and_follow_protocol):
the test listener is plain HTTP, so here `follow` is checked for plain clients.
"""

from harness import TLS_NAME, free_port

D = "www.test.com"


def cfg(master, slave=None):
    d = {"domain": D, "master": master}
    if slave:
        d["slave"] = slave
    return {"domains": [d], "debug_headers": True}


def test_host_header_default_and_override(env):
    plain = env.start_origin("plain", ip="127.0.0.60", routes={"/miss": 404})
    slave = env.start_origin("slave", ip="127.0.0.61")
    env.start(cfg({"ips": [plain.addr], "host": "origin.internal"}, {"ips": [slave.addr]}))
    r = env.request(D, "/hit")
    assert (r.headers["x-served-by"], r.headers["x-seen-host"]) == ("plain", "origin.internal")
    # The slave has no override: it gets the client's host, not the master's override.
    r = env.request(D, "/miss")
    assert (r.headers["x-served-by"], r.headers["x-seen-host"]) == ("slave", D)

    env.reload(cfg({"ips": [plain.addr]}, {"ips": [slave.addr], "host": "backup.internal"}),
               expect="success")
    r = env.request(D, "/hit")
    assert (r.headers["x-served-by"], r.headers["x-seen-host"]) == ("plain", D)
    r = env.request(D, "/miss")
    assert (r.headers["x-served-by"], r.headers["x-seen-host"]) == ("slave", "backup.internal")


def test_https_master_and_https_slave_reached_by_failover(env):
    tls = env.start_origin("tls", ip="127.0.0.62", tls=True)
    plain = env.start_origin("plain", ip="127.0.0.63", status=404)
    env.start(cfg({"ips": [tls.addr], "protocol": "https", "host": TLS_NAME}))
    r = env.request(D, "/secure")
    assert (r.status, r.headers["x-served-by"], r.headers["x-seen-host"]) == (200, "tls", TLS_NAME)

    # The vendor cannot fail over to an HTTPS slave; we can.
    env.reload(cfg({"ips": [plain.addr]}, {"ips": [tls.addr], "protocol": "https", "host": TLS_NAME}),
               expect="success")
    r = env.request(D, "/img.jpg")
    assert (r.status, r.headers["x-served-by"]) == (200, "tls"), r
    assert r.headers["x-origin-pull-origin"] == f"slave={tls.addr}"
    assert tls.requests()[-1] == {"method": "GET", "path": "/img.jpg", "host": TLS_NAME}


def test_https_with_a_name_the_certificate_does_not_have_fails_over(env):
    """SAN validation is on: a wrong Host (= SNI and checked name) is a connection failure."""
    tls = env.start_origin("tls", ip="127.0.0.64", tls=True)
    slave = env.start_origin("slave", ip="127.0.0.65")
    env.start(cfg({"ips": [tls.addr], "protocol": "https", "host": "other.test"},
                  {"ips": [slave.addr]}))
    r = env.request(D, "/x")
    assert (r.status, r.headers["x-served-by"]) == (200, "slave"), r
    assert tls.count() == 0


def test_follow_uses_the_clients_plain_scheme(env):
    plain = env.start_origin("plain", ip="127.0.0.66")
    env.start(cfg({"ips": [plain.addr], "protocol": "follow"}))
    r = env.request(D, "/f")
    assert (r.status, r.headers["x-served-by"]) == (200, "plain")
    assert env.stat("cluster.origin_pull_ip_http.upstream_rq_total") == 1
    assert env.stat("cluster.origin_pull_ip_https.upstream_rq_total") == 0


def test_domain_master_and_domain_slave(make_env):
    # The STRICT_DNS clusters are render's own (`localhost` resolves here): no test cluster.
    port_m, port_s = free_port("127.0.0.1"), free_port("127.0.0.1")
    env = make_env()
    _m = env.start_origin("m", ip="127.0.0.1", port=port_m, routes={"/miss": 404})
    _s = env.start_origin("s", ip="127.0.0.1", port=port_s)
    env.start(cfg({"domain": f"localhost:{port_m}"}, {"domain": f"localhost:{port_s}"}))
    r = env.request(D, "/hit")
    assert (r.status, r.headers["x-served-by"], r.headers["x-seen-host"]) == (200, "m", D)
    assert r.headers["x-seen-dst"] == "-"  # no original-dst header towards a domain origin
    r = env.request(D, "/miss")
    assert (r.status, r.headers["x-served-by"]) == (200, "s")
    assert r.headers["x-origin-pull-origin"] == f"slave=localhost:{port_s}"
    # /hit and /miss through the master's rendered cluster, the failover through the slave's.
    for p, n in ((port_m, 2), (port_s, 1)):
        assert env.stat(f"cluster.origin_pull|http|localhost|{p}.upstream_rq_total") == n


def test_https_domain_origin_through_the_rendered_dns_cluster(env):
    """Render's HTTPS STRICT_DNS cluster end to end: DNS (`localhost`), TLS with SNI and the
    certificate checked against the origin's `host` (auto_sni / auto_san_validation), the
    harness CA passed to render's --ca-file. A wrong `host` fails the certificate check."""
    port = free_port("127.0.0.1")
    tls = env.start_origin("tls", ip="127.0.0.1", port=port, tls=True)
    slave = env.start_origin("slave", ip="127.0.0.67")
    master = {"domain": f"localhost:{port}", "protocol": "https", "host": TLS_NAME}
    env.start(cfg(master))
    assert env.extra_clusters == []
    cluster = f"cluster.origin_pull|https|localhost|{port}"
    r = env.request(D, "/secure")
    assert (r.status, r.headers["x-served-by"], r.headers["x-seen-host"]) == \
        (200, "tls", TLS_NAME), r
    assert r.headers["x-origin-pull-origin"] == f"master=localhost:{port}"
    assert env.stat(f"{cluster}.upstream_rq_total") == 1
    assert env.stat(f"{cluster}.ssl.handshake") >= 1
    # The name in the certificate must match the Host sent: another host fails the TLS
    # handshake (a connect error) and the slave serves.
    env.reload(cfg(dict(master, host="other.test"), {"ips": [slave.addr]}), expect="success")
    r = env.request(D, "/secure2")
    assert (r.status, r.headers["x-served-by"]) == (200, "slave"), r
    assert env.stat(f"{cluster}.ssl.fail_verify_san") >= 1
    assert tls.count() == 1
