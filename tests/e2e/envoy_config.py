"""Envoy configuration for the tests, produced by `origin-pull render` (the native command users
run), so every end-to-end scenario exercises the rendered clusters, route, filter and access log.
The tests only choose addresses, ports, file locations, the CA bundle, timeouts and the plugin
configuration; extra clusters (e.g. cluster origins) are added next to the rendered ones.

    render_set(plugin_config, listen=(ip, port), admin=(ip, port), ...)  -> RenderedSet
    bootstrap(admin_port, lds_path, ca_file=..., extra_clusters=[...])  -> dict (clusters static)
    listener(port, plugin_config, ...)                                  -> dict
    lds_document([listener, ...]) / cds_document([cluster, ...])        -> dict
    static_bootstrap(bootstrap, [listener, ...], [cluster, ...])        -> dict (for --mode validate)
    strict_dns_cluster(name, host, port, tls=False, ca_file=None)       -> dict

A plugin configuration that render refuses (the tests of rejected configurations) is placed
verbatim into a listener rendered from a valid placeholder configuration, so that Envoy and the
filter — not render — get to refuse it.
"""

import copy
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[2]
SHIPPED_DIR = REPO / "envoy"
SHIPPED_BOOTSTRAP = SHIPPED_DIR / "envoy.yaml"
SHIPPED_LDS = SHIPPED_DIR / "lds.yaml"
SHIPPED_CDS = SHIPPED_DIR / "cds.yaml"
SHIPPED_ECDS = SHIPPED_DIR / "ecds.json"
# The origin-pull HTTP filter's name in the listener = its ECDS resource's name.
FILTER_NAME = "origin_pull"
WASM = REPO / "target" / "wasm32-wasip1" / "release" / "origin_pull.wasm"
CLI = Path(os.environ.get("ORIGIN_PULL_CLI") or REPO / "target" / "release" / "origin-pull")
IP_CLUSTER_HTTP = "origin_pull_ip_http"
IP_CLUSTER_HTTPS = "origin_pull_ip_https"
CLUSTER_HEADER = "x-origin-pull-cluster"
# The VM environment the shipped examples name for private-bucket credentials, with dummy
# values: `check` and Envoy's validate mode need them set (as operators set the real ones).
EXAMPLE_ENV = {"ORIGIN_PULL_S3_ACCESS_KEY_ID": "AKIAEXAMPLEVALIDATE",
               "ORIGIN_PULL_S3_SECRET_ACCESS_KEY": "example-secret-for-validation-only"}
# Valid and routes nowhere useful: stands in for configurations render refuses.
PLACEHOLDER_CONFIG = {"domains": [{"domain": "placeholder.invalid",
                                   "master": {"ips": ["127.0.0.1:9"]}}]}


def _load_yaml(path):
    import yaml  # pyyaml: installed in .venv by `make venv`

    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


class RenderRefused(Exception):
    """render exited 1: the plugin configuration is invalid (message = the filter's error)."""


class RenderedSet(NamedTuple):
    bootstrap: dict     # envoy.yaml (admin + file-watched LDS/CDS)
    listeners: list     # lds.yaml resources (with "@type")
    clusters: list      # cds.yaml resources (with "@type")
    checked: bool       # False: the plugin configuration was placed unchecked (render refused it)
    ecds: list = None   # ecds.json resources (TypedExtensionConfig) with delivery="ecds"


def config_text(plugin_config):
    return plugin_config if isinstance(plugin_config, str) else json.dumps(plugin_config, indent=2)


def render_files(plugin_config, out_dir, *, listen=("127.0.0.1", 10000), admin=("127.0.0.1", 9901),
                 wasm=None, ca_file=None, connect_timeout=None, route_timeout=None, node_id=None,
                 config_dir=None, cli=None, first_byte_timeout=None, idle_timeout=None,
                 delivery=None):
    """Run `origin-pull render <config> --out-dir out_dir ...`; returns out_dir (a Path).
    Raises RenderRefused for an invalid plugin configuration."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    src = out_dir / "plugin-config.json"
    # surrogateescape: a test's deliberately invalid UTF-8 reaches render as the same bytes.
    src.write_bytes(config_text(plugin_config).encode("utf-8", "surrogateescape"))
    args = [str(cli or CLI), "render", str(src), "--out-dir", str(out_dir),
            "--listen", f"{listen[0]}:{int(listen[1])}", "--admin", f"{admin[0]}:{int(admin[1])}",
            "--wasm", str(Path(wasm or WASM).resolve())]
    for flag, value in (("--ca-file", ca_file), ("--connect-timeout", connect_timeout),
                        ("--route-timeout", route_timeout), ("--node-id", node_id),
                        ("--first-byte-timeout", first_byte_timeout),
                        ("--idle-timeout", idle_timeout),
                        ("--config-dir", config_dir), ("--delivery", delivery)):
        if value:
            args += [flag, str(value)]
    if not Path(args[0]).exists():
        raise RuntimeError(f"{args[0]} is missing: run `make cli` (make e2e does)")
    p = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if p.returncode == 1:
        raise RenderRefused(p.stderr.strip())
    if p.returncode != 0:
        raise RuntimeError(f"origin-pull render failed ({p.returncode}): {p.stderr.strip()}")
    return out_dir


def render_set(plugin_config, *, vm_env=None, delivery="lds", **kw):
    """The rendered bootstrap, listeners and clusters for a plugin configuration (a dict, or a
    string passed verbatim, e.g. deliberately invalid JSON). `vm_env` (a test's own
    vm_config.environment_variables) replaces what render derived from the `*_env` fields.
    delivery="lds" (default here: helpers want a listener carrying its configuration) or "ecds"
    (render's own default: the configuration is in `ecds`, the listener discovers it)."""
    with tempfile.TemporaryDirectory(prefix="origin-pull-render-") as tmp:
        checked = True
        try:
            out = render_files(plugin_config, tmp, delivery=delivery, **kw)
        except RenderRefused:
            checked = False
            out = render_files(PLACEHOLDER_CONFIG, tmp, delivery=delivery, **kw)
        ecds = None
        if (out / "ecds.json").exists():
            ecds = json.loads((out / "ecds.json").read_text(encoding="utf-8"))["resources"]
        rendered = RenderedSet(_load_yaml(out / "envoy.yaml"),
                               _load_yaml(out / "lds.yaml")["resources"],
                               _load_yaml(out / "cds.yaml")["resources"], checked, ecds)
    configs = ([r["typed_config"]["config"] for r in rendered.ecds] if rendered.ecds is not None
               else [_wasm_config(lst) for lst in rendered.listeners])
    for wasm in configs:
        if not checked:
            wasm["configuration"]["value"] = config_text(plugin_config)
        if vm_env:
            wasm["vm_config"]["environment_variables"] = copy.deepcopy(vm_env)
    if vm_env:
        # The upstream instance on composite clusters must share the listener's VM.
        for c in rendered.clusters:
            for f in upstream_filters(c):
                if f["name"] == "envoy.filters.http.wasm":
                    f["typed_config"]["config"]["vm_config"]["environment_variables"] = \
                        copy.deepcopy(vm_env)
    return rendered


def upstream_filters(cluster):
    """The upstream HTTP filters of a rendered cluster (composite clusters carry the module)."""
    opts = cluster.get("typed_extension_protocol_options", {}).get(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions", {})
    return opts.get("http_filters", [])


def load_shipped_bootstrap():
    return _load_yaml(SHIPPED_BOOTSTRAP)


def load_shipped_listeners():
    """The shipped listeners with the shipped ECDS resource (envoy/ecds.json) inlined, i.e. what
    Envoy runs: each carries its wasm filter's configuration."""
    listeners = _load_yaml(SHIPPED_LDS)["resources"]
    if SHIPPED_ECDS.exists():
        resources = json.loads(SHIPPED_ECDS.read_text(encoding="utf-8"))["resources"]
        listeners = inline_ecds(listeners, resources)
    return listeners


def inline_ecds(listeners, resources):
    """Listeners whose ECDS-discovered HTTP filters are replaced by the resources' configuration
    (as `render --delivery lds` would have written them)."""
    by_name = {r["name"]: r for r in resources}
    out = copy.deepcopy(listeners)
    for lst in out:
        filters = _hcm(lst)["http_filters"]
        for i, f in enumerate(filters):
            if "config_discovery" in f and f["name"] in by_name:
                filters[i] = {"name": "envoy.filters.http.wasm",
                              "typed_config": copy.deepcopy(by_name[f["name"]]["typed_config"])}
    return out


def discovered_filter(listener):
    """The listener's ECDS-discovered origin-pull filter entry (config_discovery)."""
    for f in _hcm(listener)["http_filters"]:
        if f["name"] == FILTER_NAME and "config_discovery" in f:
            return f
    raise KeyError("no ECDS-discovered origin_pull filter in listener")


def load_shipped_clusters():
    return _load_yaml(SHIPPED_CDS)["resources"]


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
    for c in load_shipped_clusters():
        if c["name"] == name:
            return c
    raise KeyError(name)


def _untyped(resource):
    return {k: v for k, v in copy.deepcopy(resource).items() if k != "@type"}


def watch(path):
    """A file-watched config source for `path` (Envoy reloads when a file is moved into its
    directory)."""
    path = Path(path).resolve()
    return {"resource_api_version": "V3",
            "path_config_source": {"path": str(path), "watched_directory": {"path": str(path.parent)}}}


def bootstrap(admin_port, lds_path, *, ca_file=None, extra_clusters=(), admin_ip="127.0.0.1",
              connect_timeout=None, node_id="origin-pull-e2e"):
    """The rendered bootstrap with the admin address, LDS from `lds_path` (watched in its own
    directory) and the rendered IP clusters inlined as static clusters, plus extra clusters."""
    r = render_set(PLACEHOLDER_CONFIG, admin=(admin_ip, admin_port), ca_file=ca_file,
                   connect_timeout=connect_timeout, node_id=node_id)
    b = r.bootstrap
    b["dynamic_resources"] = {"lds_config": watch(lds_path)}
    extra = copy.deepcopy(list(extra_clusters))
    names = {c["name"] for c in extra}
    b["static_resources"] = {"clusters": [_untyped(c) for c in r.clusters if c["name"] not in names]
                             + extra}
    return b


def listener(port, plugin_config, *, ip="127.0.0.1", wasm_path=None, route_timeout=None,
             name="origin_pull", fail_open=None, vm_env=None, first_byte_timeout=None):
    """The rendered listener for `plugin_config` (a dict, or a string passed through verbatim,
    e.g. deliberately invalid JSON) on ip:port with an absolute wasm path; `vm_env` replaces the
    VM's environment_variables."""
    lst = render_set(plugin_config, listen=(ip, port), wasm=wasm_path,
                     route_timeout=route_timeout, first_byte_timeout=first_byte_timeout,
                     vm_env=vm_env).listeners[0]
    lst["name"] = name
    if fail_open is not None:
        _wasm_config(lst)["fail_open"] = bool(fail_open)
    return lst


def lds_document(listeners):
    return {"resources": [copy.deepcopy(lst) for lst in listeners]}


def cds_document(clusters):
    type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    return {"resources": [{"@type": type_url, **_untyped(c)} for c in clusters]}


def static_bootstrap(boot, listeners, clusters=()):
    """A bootstrap with the listeners (and clusters) inlined (Envoy's validate mode does not read
    LDS/CDS files)."""
    b = copy.deepcopy(boot)
    b.pop("dynamic_resources", None)
    statics = b.setdefault("static_resources", {})
    statics["listeners"] = [_untyped(lst) for lst in listeners]
    if clusters:
        statics["clusters"] = statics.get("clusters", []) + [_untyped(c) for c in clusters]
    return b


def strict_dns_cluster(name, host, port, *, tls=False, ca_file=None, sni=None,
                       connect_timeout="1s"):
    """A cluster of the shape design.md names origin_pull|<scheme>|<domain>|<port> (any name
    allowed here, e.g. for cluster origins). render makes these itself for domain origins; tests
    pass them as extra clusters to control the resolver's view (same name: theirs wins)."""
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    tmp.replace(path)
    return path
