"""`origin-pull render --istio`: every object validates against Istio's own schemas (the
`cloudcoil-models-istio` package from PyPI: pydantic models generated from Istio's CRDs), with no
field silently dropped, and the objects agree with the native render (same clusters, same
route header, same plugin configuration). No Kubernetes cluster is needed."""

import json
import subprocess

import pydantic
import pytest
import yaml
from cloudcoil.models.istio.extensions.v1alpha1 import WasmPlugin
from cloudcoil.models.istio.networking import v1, v1alpha3

import envoy_config as ec

EXAMPLES = sorted((ec.REPO / "envoy" / "examples").glob("*.json"))
URL = "oci://registry.example.com/origin-pull:0.1.0"
SHA = "a" * 64
MODELS = {
    ("extensions.istio.io/v1alpha1", "WasmPlugin"): WasmPlugin,
    ("networking.istio.io/v1alpha3", "EnvoyFilter"): v1alpha3.EnvoyFilter,
    ("networking.istio.io/v1", "ServiceEntry"): v1.ServiceEntry,
    ("networking.istio.io/v1", "DestinationRule"): v1.DestinationRule,
    ("networking.istio.io/v1", "Gateway"): v1.Gateway,
    ("networking.istio.io/v1", "VirtualService"): v1.VirtualService,
}


def render_istio(example, *extra):
    p = subprocess.run([str(ec.CLI), "render", str(example), "--istio", "--wasm-url", URL,
                        "--sha256", SHA, *extra], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return [d for d in yaml.safe_load_all(p.stdout) if d]


def dropped(given, kept, path="spec"):
    """Paths present in the manifest but missing or different after the model's round trip
    (pydantic ignores unknown fields, so a typo would otherwise pass)."""
    if isinstance(given, dict):
        if not isinstance(kept, dict):
            return [path]
        return [p for k, v in given.items()
                for p in (dropped(v, kept[k], f"{path}.{k}") if k in kept else [f"{path}.{k}"])]
    if isinstance(given, list):
        if not isinstance(kept, list) or len(kept) != len(given):
            return [path]
        return [p for i, (a, b) in enumerate(zip(given, kept)) for p in dropped(a, b, f"{path}[{i}]")]
    return [] if given == kept else [f"{path}: {given!r} != {kept!r}"]


def check_schema(doc):
    model = MODELS[(doc["apiVersion"], doc["kind"])]
    obj = model.model_validate(doc)  # raises on a wrong type or enum value
    kept = obj.model_dump(by_alias=True, exclude_none=True, mode="json")
    return dropped(doc["spec"], kept.get("spec", {}))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_every_object_matches_istios_schema(example):
    docs = render_istio(example)
    kinds = [d["kind"] for d in docs]
    assert kinds[:5] == ["WasmPlugin", "EnvoyFilter", "Gateway", "VirtualService", "ServiceEntry"]
    for doc in docs:
        assert check_schema(doc) == [], (doc["kind"], doc["metadata"]["name"])


def test_the_schema_check_can_fail():
    doc = render_istio(EXAMPLES[0])[0]
    typo = json.loads(json.dumps(doc))
    typo["spec"]["failStrategy"] = "FAIL_SOMETIMES"
    with pytest.raises(pydantic.ValidationError):
        check_schema(typo)
    unknown = json.loads(json.dumps(doc))
    unknown["spec"]["pluginConfg"] = {}
    assert check_schema(unknown) == ["spec.pluginConfg"]


def test_wasm_plugin_settings_are_deliberate():
    demo = ec.REPO / "envoy" / "examples" / "demo.json"
    wasm = render_istio(demo, "--namespace", "edge", "--selector", "app=cdn-gw")[0]
    spec = wasm["spec"]
    assert wasm["metadata"]["namespace"] == "edge"
    assert spec["selector"] == {"matchLabels": {"app": "cdn-gw"}}
    assert (spec["url"], spec["sha256"]) == (URL, SHA)
    # Never route blind: without the filter, client-sent routing headers would pick the origin.
    assert spec["failStrategy"] == "FAIL_CLOSE"
    # Last before the router, after authn/authz/stats and after other plugins of the phase.
    assert (spec["phase"], spec["priority"], spec["type"]) == ("UNSPECIFIED_PHASE", -1000, "HTTP")
    # Istio gets callout failovers (a WasmPlugin cannot install the upstream instance).
    assert spec["pluginConfig"] == {**json.loads(demo.read_text()),
                                    "envoy": {"failover": "callout"}}


def test_envoy_filter_carries_the_native_clusters_and_route(tmp_path):
    example = ec.REPO / "envoy" / "examples" / "domain-origin.json"
    docs = render_istio(example)
    ef = next(d for d in docs if d["kind"] == "EnvoyFilter")
    patches = ef["spec"]["configPatches"]
    clusters = [p["patch"]["value"] for p in patches if p["applyTo"] == "CLUSTER"]
    native = ec.render_set(json.loads(example.read_text()),
                           ca_file="/etc/ssl/certs/ca-certificates.crt",
                           wasm=ec.WASM).clusters
    # The native render's origin clusters; its router-failover clusters (composite, attempt
    # positions) are not used under Istio (callout failovers).
    native = [c for c in native if not c["name"].startswith("origin_pull_chain(")
              and not ec.upstream_filters(c)
              and c["name"] not in (f"{ec.IP_CLUSTER_HTTP}_2", f"{ec.IP_CLUSTER_HTTPS}_2")]
    assert clusters == [{k: v for k, v in c.items() if k != "@type"} for c in native]
    route = next(p for p in patches if p["applyTo"] == "HTTP_ROUTE")
    assert route["match"]["routeConfiguration"]["vhost"]["route"]["name"] == "origin-pull"
    value = route["patch"]["value"]["route"]
    assert route["patch"]["operation"] == "MERGE"
    assert (value["cluster_header"], value["timeout"], value["idle_timeout"],
            value["retry_policy"]["per_try_timeout"]) == (ec.CLUSTER_HEADER, "0s", "30s", "10s")
    vs = next(d for d in docs if d["kind"] == "VirtualService")
    assert vs["spec"]["http"][0]["name"] == "origin-pull"
    assert vs["spec"]["hosts"] == ["www.example.com"]
    entries = {d["spec"]["hosts"][0]: d["spec"] for d in docs if d["kind"] == "ServiceEntry"}
    assert entries["origin.example.net"]["resolution"] == "DNS"
    assert [p["number"] for p in entries["origin.example.net"]["ports"]] == [80, 443]
    dr = next(d for d in docs if d["kind"] == "DestinationRule")
    assert dr["spec"]["host"] == "origin.example.net"
    assert dr["spec"]["trafficPolicy"]["portLevelSettings"] == [
        {"port": {"number": 443}, "tls": {"mode": "SIMPLE"}}]


def test_bucket_credentials_come_from_the_gateways_environment():
    docs = render_istio(ec.REPO / "envoy" / "examples" / "private-bucket.json")
    wasm = docs[0]["spec"]
    assert wasm["vmConfig"] == {"env": [{"name": k, "valueFrom": "HOST"}
                                        for k in sorted(ec.EXAMPLE_ENV)]}
    hosts = {d["spec"]["hosts"][0] for d in docs if d["kind"] == "ServiceEntry"}
    assert "media-origin.s3.us-east-1.amazonaws.com" in hosts


def test_ip_origins_are_one_static_service_entry():
    docs = render_istio(ec.REPO / "envoy" / "examples" / "weighted-ips.json")
    se = next(d for d in docs if d["kind"] == "ServiceEntry"
              and d["metadata"]["name"] == "origin-pull-ip-origins")
    assert se["spec"]["resolution"] == "STATIC"
    addrs = [e["address"] for e in se["spec"]["endpoints"]]
    assert "192.0.2.12" in addrs and len(addrs) == len(set(addrs)) == 7
    assert sorted(p["number"] for p in se["spec"]["ports"]) == [80, 8080]
