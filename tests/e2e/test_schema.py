"""The shipped JSON Schema agrees with the filter: every example and every normalized
configuration `origin-pull check` prints (all defaults filled in) validate against it, and
shapes the filter rejects are rejected by the schema too."""

import json
import os
import subprocess

import jsonschema
import pytest

import envoy_config as ec

SCHEMA = json.loads((ec.REPO / "schema" / "origin-pull.schema.json").read_text())
CLI = ec.REPO / "target" / "release" / "origin-pull"
EXAMPLES = sorted((ec.REPO / "envoy" / "examples").glob("*.json"))
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def test_schema_is_valid():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_and_its_normalized_form_match_the_schema(path):
    VALIDATOR.validate(json.loads(path.read_text()))
    p = subprocess.run([str(CLI), "check", str(path)], capture_output=True, text=True, timeout=30,
                       env={**os.environ, **ec.EXAMPLE_ENV})
    assert p.returncode == 0, p.stderr
    normalized = json.loads(p.stdout)
    assert normalized.pop("required_envoy_clusters")
    VALIDATOR.validate(without_nulls(normalized))


def without_nulls(value):
    """Unset optional fields are printed as null; the schema describes them as absent."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


@pytest.mark.parametrize("config", [
    {"domains": [{"domain": "a.com", "master": {"ips": ["1.1.1.1"]}, "extra": 1}]},
    {"domains": [{"domain": "a.com", "master": {"ips": ["1.1.1.1"], "protocol": "ftp"}}]},
    {"domains": [{"domain": "a.com", "master": {"ips": ["1.1.1.1"], "domain": "b.com"}}]},
    {"domains": [{"domain": "a.com", "master": {"clusters": [{"name": "c", "weight": 1001}]}}]},
    {"domains": []},
    {"domains": [{"domain": "a.com", "master": {"bucket": {"endpoint": "s3.test", "bucket": "B_b",
                                                           "region": "r"}}}]},
    {"domains": [{"domain": "a.com", "master": {"bucket": {
        "endpoint": "s3.test", "bucket": "bkt", "region": "r",
        "credentials": {"access_key_id": "A", "secret_access_key": "S",
                        "secret_access_key_env": "S3_SECRET"}}}}]},
    {"domains": [{"domain": "a.com", "master": {"bucket": {"endpoint": "s3.test", "bucket": "bkt",
                                                           "region": "r"}},
                  "mirror": {"source": {"domain": "s.test"}, "mode": "copy"}}]},
    {"domains": [{"domain": "a.com", "master": {"ips": ["1.1.1.1"]},
                  "detection": {"probe": {"interval_ms": 99}}}]},
    {"domains": [{"domain": "a.com", "master": {"ips": ["1.1.1.1"], "probe": {"path": "x"}}}]},
    {"domains": [{"domain": "a.com", "master": {"ips": ["1.1.1.1"]},
                  "detection": {"probe": {"expected_statuses": ["6xx"]}}}]},
], ids=["unknown-field", "protocol", "two-kinds", "weight", "empty", "bucket-name",
        "secret-twice", "mirror-mode", "probe-interval", "probe-path", "probe-status"])
def test_schema_rejects_what_the_filter_rejects(tmp_path, config):
    assert not VALIDATOR.is_valid(config)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    p = subprocess.run([str(CLI), "check", str(path)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1, p.stdout
