"""Envoy configuration for the tests, derived from the SHIPPED files envoy/envoy.yaml and
envoy/lds.yaml, so that the end-to-end tests exercise exactly the clusters, route and filter
that users run. Only addresses, ports, file paths, the CA bundle and the plugin configuration
are substituted.

    bootstrap(admin_port, lds_path, ca_file=..., extra_clusters=[...])  -> dict
    listener(port, plugin_config, ...)                                  -> dict
    lds_document([listener, ...])                                       -> dict
    static_bootstrap(bootstrap, [listener, ...])                        -> dict (for --mode validate)
    strict_dns_cluster(name, host, port, tls=False, ca_file=None)       -> dict
"""

import copy
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHIPPED_BOOTSTRAP = REPO / "envoy" / "envoy.yaml"
SHIPPED_LDS = REPO / "envoy" / "lds.yaml"
WASM = REPO / "target" / "wasm32-wasip1" / "release" / "origin_pull.wasm"
IP_CLUSTER_HTTP = "origin_pull_ip_http"
IP_CLUSTER_HTTPS = "origin_pull_ip_https"
CLUSTER_HEADER = "x-origin-pull-cluster"
# The VM environment the shipped examples name for private-bucket credentials, with dummy
# values: `check` and Envoy's validate mode need them set (as operators set the real ones).
EXAMPLE_ENV = {"ORIGIN_PULL_S3_ACCESS_KEY_ID": "AKIAEXAMPLEVALIDATE",
               "ORIGIN_PULL_S3_SECRET_ACCESS_KEY": "example-secret-for-validation-only"}


def _load_yaml(path):
    import yaml  # pyyaml: installed in .venv by `make venv`

    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_shipped_bootstrap():
    return _load_yaml(SHIPPED_BOOTSTRAP)


def load_shipped_listeners():
    return _load_yaml(SHIPPED_LDS)["resources"]


def _hcm(listener):
    for f in listener["filter_chains"][0]["filters"]:
        if f["name"] == "envoy.filters.network.http_connection_manager":
            return f["typed_config"]
    raise KeyError("no http_connection_manager in listener")


def _wasm_config(listener):
    for f in _hcm(listener)["http_filters"]:
        if f["name"] == "envoy.filters.http.wasm":
            return f["typed_config"]["config"]
    raise KeyError("no envoy.filters.http.wasm in listener")


def plugin_config_of(listener):
    """The plugin configuration (parsed JSON) inside a listener."""
    return json.loads(_wasm_config(listener)["configuration"]["value"])


def shipped_cluster(name):
    for c in load_shipped_bootstrap()["static_resources"]["clusters"]:
        if c["name"] == name:
            return c
    raise KeyError(name)


def bootstrap(admin_port, lds_path, *, ca_file=None, extra_clusters=(), admin_ip="127.0.0.1",
              connect_timeout=None, node_id="origin-pull-e2e"):
    """The shipped bootstrap with the admin port, the LDS file (watched in its own directory),
    optionally another CA bundle for the https IP cluster, and extra clusters appended."""
    b = load_shipped_bootstrap()
    b["node"]["id"] = node_id
    b["admin"]["address"]["socket_address"] = {"address": admin_ip, "port_value": int(admin_port)}
    lds_path = Path(lds_path).resolve()
    src = b["dynamic_resources"]["lds_config"]["path_config_source"]
    src["path"] = str(lds_path)
    src["watched_directory"] = {"path": str(lds_path.parent)}
    for c in b["static_resources"]["clusters"]:
        if connect_timeout:
            c["connect_timeout"] = connect_timeout
        if ca_file and c["name"] == IP_CLUSTER_HTTPS:
            ctx = c["transport_socket"]["typed_config"]["common_tls_context"]
            ctx["validation_context"]["trusted_ca"] = {"filename": str(ca_file)}
    b["static_resources"]["clusters"].extend(copy.deepcopy(list(extra_clusters)))
    return b


def listener(port, plugin_config, *, ip="127.0.0.1", wasm_path=None, route_timeout=None,
             name="origin_pull", fail_open=None, vm_env=None):
    """The shipped listener with another address and plugin configuration (a dict, or a string
    passed through verbatim, e.g. deliberately invalid JSON) and an absolute wasm path."""
    lst = copy.deepcopy(load_shipped_listeners()[0])
    lst["name"] = name
    lst["address"]["socket_address"] = {"address": ip, "port_value": int(port)}
    wasm = _wasm_config(lst)
    value = plugin_config if isinstance(plugin_config, str) else json.dumps(plugin_config)
    wasm["configuration"]["value"] = value
    wasm["vm_config"]["code"]["local"]["filename"] = str(Path(wasm_path or WASM).resolve())
    if fail_open is not None:
        wasm["fail_open"] = bool(fail_open)
    if vm_env:
        wasm["vm_config"]["environment_variables"] = copy.deepcopy(vm_env)
    if route_timeout:
        for vh in _hcm(lst)["route_config"]["virtual_hosts"]:
            for r in vh["routes"]:
                r["route"]["timeout"] = route_timeout
    return lst


def lds_document(listeners):
    return {"resources": [copy.deepcopy(lst) for lst in listeners]}


def static_bootstrap(boot, listeners):
    """A bootstrap with the listeners inlined (Envoy's validate mode does not read LDS files)."""
    b = copy.deepcopy(boot)
    b.pop("dynamic_resources", None)
    statics = b.setdefault("static_resources", {})
    statics["listeners"] = [
        {k: v for k, v in lst.items() if k != "@type"} for lst in copy.deepcopy(listeners)
    ]
    return b


def strict_dns_cluster(name, host, port, *, tls=False, ca_file=None, sni=None,
                       connect_timeout="1s"):
    """A cluster of the shape design.md names origin_pull|<scheme>|<domain>|<port> (any name
    allowed here, e.g. for cluster origins)."""
    c = {
        "name": name,
        "type": "STRICT_DNS",
        "lb_policy": "ROUND_ROBIN",
        "connect_timeout": connect_timeout,
        "dns_lookup_family": "V4_ONLY",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": host, "port_value": int(port)}}}}]}],
        },
    }
    if tls:
        c["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "upstream_http_protocol_options": {"auto_sni": True, "auto_san_validation": True},
                "explicit_http_config": {"http_protocol_options": {}},
            }
        }
        tls_ctx = {"common_tls_context": {"validation_context": {"trusted_ca": {
            "filename": str(ca_file or "/etc/ssl/certs/ca-certificates.crt")}}}}
        if sni:
            tls_ctx["sni"] = sni
        c["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                **tls_ctx,
            },
        }
    return c


def write_json(path, doc):
    """Write atomically (temp file + rename) so a watcher never sees half a file."""
    path = Path(path)
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    tmp.replace(path)
    return path
