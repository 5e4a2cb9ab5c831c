"""Scenario g: invalid plugin configurations are rejected with a message naming the domain, the
field and the value — by `origin-pull check`, by Envoy at bootstrap (validate mode runs the
filter's on_configure), and under LDS reload (the old configuration keeps serving).
Origins use 127.0.0.40-127.0.0.49.
"""

import json
import subprocess

import pytest

import envoy_config as ec
from harness import free_port

CLI = ec.REPO / "target" / "release" / "origin-pull"
D = "www.test.com"


def one(master=None, **domain):
    entry = {"domain": domain.pop("domain", D), "master": master or {"ips": ["10.0.0.1"]}, **domain}
    return {"domains": [entry]}


# (id, configuration (dict or raw text), expected message substring)
CASES = [
    ("single-ip-weight", one({"ips": ["10.0.0.1:8080:5"]}),
     f'domain "{D}": field master.ips[0] value "10.0.0.1:8080:5": a single origin IP may not carry a weight'),
    ("mixed-weights", one({"ips": ["10.0.0.1:80:1", "10.0.0.2"]}),
     'field master.ips[1] value "10.0.0.2": either every IP has a weight or none does'),
    ("weight-over-1000", one({"ips": ["10.0.0.1::1001", "10.0.0.2::1"]}),
     'field master.ips[0] value "10.0.0.1::1001": weight 1001 is out of range 0..=1000'),
    ("all-weights-zero", one({"ips": ["10.0.0.1::0", "10.0.0.2::0"]}),
     'field master.ips value "10.0.0.1::0,10.0.0.2::0": every weight is 0'),
    ("port-zero", one({"ips": ["10.0.0.1:0"]}),
     'field master.ips[0] value "10.0.0.1:0": port 0 is not allowed: ports are 1..=65535'),
    ("port-65536", one({"ips": ["10.0.0.1:65536"]}),
     'value "10.0.0.1:65536": port 65536 is out of range 1..=65535'),
    ("ipv6-weight", one({"ips": ["[2001:db8::1]:80:5", "10.0.0.1:80:5"]}),
     'field master.ips[0] value "[2001:db8::1]:80:5": IPv6 addresses may not carry a weight'),
    ("domain-weight", one({"domain": "origin.example.com:80:5"}),
     'field master.domain value "origin.example.com:80:5": a domain origin may not carry a weight'),
    ("domain-port-zero", one({"domain": "origin.example.com:0"}),
     'field master.domain value "origin.example.com:0": port 0 is not allowed'),
    ("domain-loop", one({"domain": "www.test.com"}),
     'field master.domain value "www.test.com": is the accelerated domain'),
    ("domain-loop-case-dot", one({"domain": "WWW.Test.com."}),
     'field master.domain value "WWW.Test.com.": is the accelerated domain'),
    ("domain-loop-wildcard", one({"domain": "img.test.com"}, domain="*.test.com"),
     'domain "*.test.com": field master.domain value "img.test.com": is the accelerated domain'),
    ("slave-domain-loop", one(slave={"domain": "www.test.com:8080"}),
     'field slave.domain value "www.test.com:8080": is the accelerated domain'),
    ("ip-in-domain", one({"domain": "10.0.0.1"}),
     'field master.domain value "10.0.0.1": is an IP address'),
    ("domain-in-ips", one({"ips": ["origin.example.com"]}),
     'field master.ips[0] value "origin.example.com": is a domain name'),
    ("ips-and-domain", one({"ips": ["10.0.0.1"], "domain": "a.example.com"}),
     'field master value "2 of ips/domain/clusters/bucket": set exactly one of'),
    ("no-origin", one({"protocol": "http"}),
     'field master value "0 of ips/domain/clusters/bucket": set exactly one of'),
    ("empty-ips", one({"ips": []}), 'field master.ips value "[]": the list is empty'),
    ("duplicate-ip", one({"ips": ["10.0.0.1", "10.0.0.1:80"]}),
     'field master.ips[1] value "10.0.0.1:80": is listed twice'),
    ("bad-protocol", one({"ips": ["10.0.0.1"], "protocol": "ftp"}),
     'field master.protocol value "ftp": must be one of'),
    ("protocol-on-clusters", one({"clusters": [{"name": "c"}], "protocol": "https"}),
     'field master.protocol value "https": is decided by the cluster'),
    ("single-cluster-weight", one({"clusters": [{"name": "c", "weight": 2}]}),
     'field master.clusters[0].weight value "2": a single origin cluster may not carry a weight'),
    ("host-crlf", one({"ips": ["10.0.0.1"], "host": "a.com\r\nx-evil: 1"}),
     'field master.host value "a.com\\r\\nx-evil: 1": contains whitespace or control characters'),
    ("host-space", one({"ips": ["10.0.0.1"], "host": "a .com"}),
     'field master.host value "a .com": contains whitespace'),
    ("duplicate-domain", {"domains": [one()["domains"][0], one(domain="WWW.TEST.COM")["domains"][0]]},
     f'domain "{D}": field domain value "{D}": appears more than once'),
    ("switch-without-slave", one(master_slave_switch=True),
     'field master_slave_switch value "true": there is no slave origin'),
    ("unknown-field", one({"ips": ["10.0.0.1"], "weight": 3}),
     f'domain "{D}": field master.weight: unknown field `weight`'),
    ("wrong-type", one({"ips": "10.0.0.1"}),
     'field master.ips: invalid type: string "10.0.0.1", expected a sequence'),
    ("malformed-json", '{"domains": [', "field (document): not valid JSON"),
    ("empty-domains", {"domains": []}, 'field domains value "[]": the list is empty'),
    ("bad-failover-class", one(failover={"on": ["4xx", "404"]}),
     'field failover.on[1] value "404": must be one of'),
    ("status-out-of-range", one(failover={"status_codes": [200]}),
     'field failover.status_codes[0] value "200": must be a status code 300..=599'),
    ("block-too-long", one(detection={"block_seconds": 86401}),
     'field detection.block_seconds value "86401": must be 0..=86400'),
    ("response-limit", one(failover={"max_response_body_bytes": 99999999999}),
     'field failover.max_response_body_bytes value "99999999999": must be 1..=33554432'),
    ("bucket-name", one({"bucket": {"endpoint": "s3.test", "bucket": "My_Bucket", "region": "r"}}),
     'field master.bucket.bucket value "My_Bucket": must be 3-63 characters of a-z, 0-9, '
     "'.' and '-', starting and ending with a letter or digit"),
    ("bucket-secret-env-unset", one({"bucket": {
        "endpoint": "s3.test", "bucket": "bkt", "region": "r",
        "credentials": {"access_key_id": "AKID",
                        "secret_access_key_env": "ORIGIN_PULL_TEST_NEVER_SET"}}}),
     'field master.bucket.credentials.secret_access_key_env value "ORIGIN_PULL_TEST_NEVER_SET": '
     "is not set in the VM's environment; pass it with vm_config.environment_variables"),
    ("bucket-host", one({"bucket": {"endpoint": "s3.test", "bucket": "bkt", "region": "r"},
                         "host": "cdn.test"}),
     'field master.host value "cdn.test": is the bucket\'s own host name for `bucket` origins'),
    ("mirror-not-bucket", one(mirror={"source": {"domain": "src.test"}}),
     'field mirror value "master is ips": mirror back-to-origin needs a `bucket` master'),
    ("mirror-redirect-ips", one({"bucket": {"endpoint": "s3.test", "bucket": "bkt", "region": "r"}},
                                mirror={"source": {"ips": ["10.0.0.9"]}, "mode": "redirect"}),
     'field mirror.mode value "redirect": redirect mode needs a `domain` source'),
]


def as_text(config):
    return config if isinstance(config, str) else json.dumps(config)


@pytest.mark.parametrize("config,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_check_rejects_with_the_message(tmp_path, config, expected):
    path = tmp_path / "config.json"
    path.write_text(as_text(config))
    p = subprocess.run([str(CLI), "check", str(path)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1, p.stdout
    assert p.stdout == ""
    assert p.stderr.startswith("invalid origin-pull configuration: "), p.stderr
    assert expected in p.stderr, p.stderr


def test_table_covers_enough_cases():
    assert len(CASES) >= 20


BOOTSTRAP_CASES = ["port-zero", "single-ip-weight", "domain-loop", "host-crlf", "malformed-json",
                   "unknown-field", "bucket-secret-env-unset", "mirror-not-bucket"]


@pytest.mark.parametrize("case", BOOTSTRAP_CASES)
def test_envoy_refuses_it_at_bootstrap(tmp_path, envoy_bin, case):
    _, config, expected = next(c for c in CASES if c[0] == case)
    boot = ec.bootstrap(free_port(), tmp_path / "lds" / "lds.json")
    static = ec.static_bootstrap(boot, [ec.listener(free_port(), as_text(config))])
    path = tmp_path / "bootstrap.json"
    ec.write_json(path, static)
    p = subprocess.run([envoy_bin, "--mode", "validate", "-c", str(path), "-l", "info",
                        "--disable-hot-restart"],
                       cwd=ec.REPO, capture_output=True, text=True, timeout=120)
    out = p.stdout + p.stderr
    assert p.returncode != 0, out[-2000:]
    # The filter logs the same message `check` prints.
    assert expected in out, out[-3000:]


def test_lds_reload_keeps_the_previous_configuration(env):
    good = env.start_origin("good", ip="127.0.0.40")
    env.start({"domains": [{"domain": D, "master": {"ips": [good.addr]}}]})
    rejected = 0
    for case in ["port-zero", "mixed-weights", "domain-loop", "host-crlf", "switch-without-slave",
                 "unknown-field", "malformed-json", "empty-domains", "bucket-secret-env-unset"]:
        _, config, expected = next(c for c in CASES if c[0] == case)
        raw = as_text(config)
        assert env.reload(raw) == "rejected", case
        rejected += 1
        r = env.request(D, f"/after-{case}")
        assert (r.status, r.headers["x-served-by"]) == (200, "good"), (case, r)
    assert env.stat("listener_manager.lds.update_rejected") >= rejected
    assert good.count() == rejected
