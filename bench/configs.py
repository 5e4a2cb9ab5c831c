"""Configurations of the systems `make bench` compares, all doing origin pull for one host in
front of the same nginx origins (see bench/run.py for the scenarios):

    direct    the client asks the origin itself (no proxy: the ceiling of this machine)
    plain     Envoy, HTTP connection manager + router to a weighted cluster (no wasm)
    floor     plain + a trivial one-header wasm filter (bench/floor): the cost of any wasm filter
    native    Envoy doing the origin-pull job with its own features: weighted endpoints in
              priority 0, the slave in priority 1, outlier detection, retries on connect failure
              and retriable status codes to the other priority (previous_priorities)
    floorhc   (diagnostic, scenario a) the trivial module making origin-pull's 9 happy-path
              hostcalls with no logic between them (bench/floor, configuration "hostcalls")
    odst      (diagnostic, scenarios a and d) plain route to the shipped ORIGINAL_DST cluster, the
              client sending x-envoy-original-dst-host itself (d: a master drawn at random per request):
              origin-pull's routing without the wasm
    originpull  the SHIPPED envoy/envoy.yaml + envoy/lds.yaml listener (tests/e2e/envoy_config.py)
              with a bench plugin configuration and the clusters render writes for it: failover
              by Envoy's router (composite cluster, `envoy.failover: router`, the default)
    opnodrain   (b, f) originpull without the drain filter (before/after in one run)
    opcallout   the same with `envoy.failover: callout` (the failover mechanism before issue 11:
              an HTTP callout, the answer buffered), side by side in scenarios b, c and f
    nginx     nginx doing the same job: upstream weights, `backup`, proxy_next_upstream

Where the failover time goes (scenarios b and f; issue 11):
    composite   the router failover's MECHANISM without the module: the rendered composite
              cluster and sub-clusters, the rendered route (timeouts, back-off, attempt count)
              naming that cluster, the master's and the slave's addresses added by the route
              (request_headers_to_add) and the retry conditions in its retry_policy; no wasm
    compnodrain composite without the rendered Lua filter that reads a failed answer's short body
              before the retry (src/render/envoy/upstream.rs drain_filter): the mechanism before it
    complean    composite + the trivial wasm filter (bench/floor) on the listener: the wasm floor
              of the mechanism origin-pull uses by default (a logged chain; also in scenario a)
    compwasm    complean + the trivial wasm filter as the composite cluster's upstream filter
              too (once per attempt): the wasm floor of an observed chain
    ovhost      the alternative mechanism, not shipped: one STATIC cluster of the origins whose
              override-host load balancer takes each attempt's host, in order, from one header
              (`IP:PORT,IP:PORT`, added by the route), with the composite's drain filter and the
              same retry route; no wasm
    ovlean      ovhost + the trivial wasm filter on the listener (also in scenario a): the wasm
              floor of that alternative, next to complean
    plain404    (f only) plain route to the masters, asking the path they answer 404: the first
              half of a failover as a request of its own (the upstream connection kept alive)
    plain404new (f only) the same, one upstream connection per request
              (max_requests_per_connection 1): the router closes the master's connection when
              it retries on an answer that has a body, so every failover connects to the master

Every Envoy system is the shipped bootstrap and the shipped listener's HTTP connection manager
with only the filter chain and route changed, so they differ in exactly what is measured. The
shipped listener's stdout access log is removed from every Envoy system (a log line per request
would dominate all the ratios); `debug_headers` is off.
"""

import copy
import json
import os
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))
import envoy_config as ec  # noqa: E402

FLOOR_WASM = REPO / "target" / "bench-floor" / "wasm32-wasip1" / "release" / "bench_floor.wasm"
# `make bench-ablation`: the module built with one bench-only `ablate-*` feature each (Cargo.toml),
# system `ab-<name>` = the shipped setup with target/ablation/origin_pull-<name>.wasm.
ABLATION_DIR = REPO / "target" / "ablation"
ABLATIONS = ("filter-state", "metrics", "block-read", "header-map", "status", "upstream", "all",
             "baseline")


def ablation_wasm(system):
    if system == "ab-baseline":
        # BENCH_BASELINE_WASM: another build of the module (e.g. main's) for a before/after.
        return Path(os.environ.get("BENCH_BASELINE_WASM", "/nonexistent")).resolve()
    return ABLATION_DIR / f"origin_pull-{system[3:]}.wasm"
HOST = "www.test.com"
ENVOY_SYSTEMS = ("plain", "plain404", "plain404new", "floor", "floorhc", "odst", "native", "composite",
                 "compnodrain", "compwasm", "complean", "ovhost", "ovlean", "originpull", "opnodrain",
                 "opcallout")
SYSTEMS = ("direct", "plain", "plain404", "plain404new", "floor", "floorhc", "odst", "native", "composite",
           "compnodrain", "compwasm", "complean", "ovhost", "ovlean", "originpull", "opnodrain",
           "opcallout", "nginx")
# Systems that isolate the failover mechanism (scenarios b and f) and the two-request reference (f).
# ovhost/ovlean: the alternative to the composite cluster that issue 14 left unmeasured: one
# STATIC cluster of the origins with Envoy's override-host load balancer, whose header lists
# the attempts' addresses in order (ENVOY-NOTES "ordered hosts"); the same retry route.
MECHANISM_SYSTEMS = ("composite", "compnodrain", "compwasm", "complean", "ovhost", "ovlean",
                     "opnodrain")
TWO_REQUEST_SYSTEMS = ("plain404", "plain404new")
# Statuses every system fails over on: the issue's nginx list (404 included, scenario b).
RETRY_STATUSES = (404, 500, 502, 503, 504)
ROUTE_TIMEOUT = "5s"  # the whole response; the objects here are at most 1 MiB
CONNECT_TIMEOUT = "1s"


class Topology:
    """Origins of one scenario: masters (ip, port, weight), dead ones among them, the slave."""

    def __init__(self, masters, slave, listen_ip, ports, dead=()):
        self.masters = list(masters)  # [(ip, port, weight)]
        self.dead = set(dead)  # master IPs where nothing listens (scenario c)
        self.slave = slave  # (ip, port)
        self.listen_ip = listen_ip
        self.ports = dict(ports)  # system -> listener port, plus "admin:<system>"


# --------------------------------------------------------------------------- Envoy


def _hcm(listener):
    for f in listener["filter_chains"][0]["filters"]:
        if f["name"] == "envoy.filters.network.http_connection_manager":
            return f["typed_config"]
    raise KeyError("no http_connection_manager")


def _endpoint(ip, port, weight=None):
    ep = {"endpoint": {"address": {"socket_address": {"address": ip, "port_value": int(port)}}}}
    if weight is not None:
        ep["load_balancing_weight"] = int(weight)
    return ep


def plugin_config(topo, mechanism=None):
    """origin-pull's configuration for the scenario: the masters by weight, the slave, and the
    defaults for failover (4xx, 5xx, connect errors, timeouts; GET/HEAD) and blocking (60 s)."""
    weighted = len(topo.masters) > 1
    ips = [f"{ip}:{port}:{w}" if weighted else f"{ip}:{port}" for ip, port, w in topo.masters]
    config = {
        "domains": [{
            "domain": HOST,
            "master": {"ips": ips},
            "slave": {"ips": [f"{topo.slave[0]}:{topo.slave[1]}"]},
        }],
        "debug_headers": False,
    }
    if mechanism:
        config["envoy"] = {"failover": mechanism}
    return config


def _shipped_listener(topo, system, plugin):
    lst = ec.listener(topo.ports[system], plugin, ip=topo.listen_ip, route_timeout=ROUTE_TIMEOUT,
                      name=f"bench_{system}")
    _hcm(lst).pop("access_log", None)
    return lst


def _router_filter(listener):
    return [f for f in _hcm(listener)["http_filters"] if f["name"] == "envoy.filters.http.router"]


def _wasm_filter(listener):
    return [f for f in _hcm(listener)["http_filters"] if f["name"] == "envoy.filters.http.wasm"]


def _route_to(listener, cluster, retry_policy=None):
    route = {"cluster": cluster, "timeout": ROUTE_TIMEOUT}
    if retry_policy:
        route["retry_policy"] = retry_policy
    vh = _hcm(listener)["route_config"]["virtual_hosts"][0]
    vh["routes"] = [{"match": {"prefix": "/"}, "route": route}]


def _masters_cluster(topo, name="masters"):
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": CONNECT_TIMEOUT,
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {"cluster_name": name, "endpoints": [
            {"lb_endpoints": [_endpoint(ip, port, w) for ip, port, w in topo.masters]}]},
    }


def _native_cluster(topo):
    c = _masters_cluster(topo, "masters_with_backup")
    c["load_assignment"]["endpoints"].append(
        {"priority": 1, "lb_endpoints": [_endpoint(*topo.slave)]})
    # Block a failed origin like origin-pull does: one connect failure or five 5xx eject it.
    c["circuit_breakers"] = NATIVE_CIRCUIT_BREAKERS
    c["outlier_detection"] = {
        "split_external_local_origin_errors": True,
        "consecutive_local_origin_failure": 1,
        "enforcing_consecutive_local_origin_failure": 100,
        "consecutive_5xx": 5,
        "interval": "1s",
        "base_ejection_time": "60s",
        "max_ejection_percent": 100,
    }
    return c


def native_retry_policy():
    return {
        "retry_on": "connect-failure,reset,retriable-status-codes",
        "retriable_status_codes": list(RETRY_STATUSES),
        "num_retries": 2,
        "per_try_timeout": ROUTE_TIMEOUT,
        # The shortest back-off Envoy allows; its 25 ms default would dominate failover latency.
        "retry_back_off": {"base_interval": "0.001s", "max_interval": "0.002s"},
        # Every retry goes to the other priority (the slave), never to the same host.
        "retry_priority": {
            "name": "envoy.retry_priorities.previous_priorities",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",  # noqa: E501
                "update_frequency": 1,
            },
        },
        "retry_host_predicate": [{
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
            },
        }],
        "host_selection_retry_max_attempts": 3,
    }


# Envoy allows 3 concurrent retries per cluster by default; under load the rest would hand the
# master's 404 to the client. origin-pull and nginx have no such limit.
NATIVE_CIRCUIT_BREAKERS = {"thresholds": [{"priority": "DEFAULT", "max_retries": 100000}]}


def envoy_config(system, topo, *, origin_pull_wasm=None, floor_wasm=None):
    """A static Envoy bootstrap (dict) for one Envoy system of the scenario."""
    if system.startswith("ab-") and system[3:] in ABLATIONS:
        # An ablation variant: the shipped setup, only the module differs.
        origin_pull_wasm = origin_pull_wasm or ablation_wasm(system)
        system_ports = dict(topo.ports)
        system_ports["originpull"] = topo.ports[system]
        system_ports["admin:originpull"] = topo.ports[f"admin:{system}"]
        topo = Topology(topo.masters, topo.slave, topo.listen_ip, system_ports, dead=topo.dead)
        return envoy_config("originpull", topo, origin_pull_wasm=origin_pull_wasm)
    if system not in ENVOY_SYSTEMS:
        raise ValueError(system)
    admin_port = topo.ports[f"admin:{system}"]
    boot = ec.bootstrap(admin_port, REPO / "envoy" / "lds.yaml", admin_ip=topo.listen_ip,
                        node_id=f"origin-pull-bench-{system}")
    mechanism = "callout" if system == "opcallout" else None
    plugin = plugin_config(topo, mechanism)
    lst = _shipped_listener(topo, system, plugin)
    hcm = _hcm(lst)
    if system in ("originpull", "opcallout", "opnodrain"):
        # The clusters render writes for this configuration (composite clusters of the router
        # failover, with the module's upstream instance).
        have = {c["name"] for c in boot["static_resources"]["clusters"]}
        rendered = ec.render_set(plugin, route_timeout=ROUTE_TIMEOUT).clusters
        boot["static_resources"]["clusters"].extend(
            ec._untyped(c) for c in rendered if c["name"] not in have)
        if system == "opnodrain":
            for c in boot["static_resources"]["clusters"]:
                _drop_drain(c)
        if origin_pull_wasm:
            wasm_path = str(Path(origin_pull_wasm).resolve())
            _wasm_filter(lst)[0]["typed_config"]["config"]["vm_config"]["code"]["local"][
                "filename"] = wasm_path
            for c in boot["static_resources"]["clusters"]:
                for f in ec.upstream_filters(c):
                    if f["name"] == "envoy.filters.http.wasm":
                        f["typed_config"]["config"]["vm_config"]["code"]["local"][
                            "filename"] = wasm_path
        return ec.static_bootstrap(boot, [lst])
    router = _router_filter(lst)
    shipped_wasm = _wasm_filter(lst)[0]
    extra = []
    if system in ("ovhost", "ovlean"):
        floor = _floor_filter(shipped_wasm, floor_wasm) if system == "ovlean" else None
        extra.append(_override_cluster(topo, plugin))
        _mechanism_route(lst, topo, override=True)
        hcm["http_filters"] = ([floor] if floor else []) + router
    elif system in MECHANISM_SYSTEMS:
        floor = _floor_filter(shipped_wasm, floor_wasm) if system in ("compwasm", "complean") else None
        extra.extend(_mechanism_clusters(topo, plugin, floor if system == "compwasm" else None,
                                         drain=system != "compnodrain"))
        _mechanism_route(lst, topo)
        hcm["http_filters"] = ([floor] if floor else []) + router
    elif system in ("plain", "floor", "floorhc", "plain404", "plain404new"):
        masters = _masters_cluster(topo)
        if system == "plain404new":
            masters["typed_extension_protocol_options"] = _http1_options(
                common_http_protocol_options={"max_requests_per_connection": 1})
        extra.append(masters)
        _route_to(lst, "masters")
        hcm["http_filters"] = router
        if system == "floor":
            hcm["http_filters"] = [_floor_filter(shipped_wasm, floor_wasm)] + router
        if system == "floorhc":
            hcm["http_filters"] = [_floor_filter(shipped_wasm, floor_wasm, "hostcalls")] + router
    elif system == "odst":
        _route_to(lst, ec.IP_CLUSTER_HTTP)
        hcm["http_filters"] = router
    else:  # native
        extra.append(_native_cluster(topo))
        _route_to(lst, "masters_with_backup", native_retry_policy())
        hcm["http_filters"] = router
    boot["static_resources"]["clusters"].extend(extra)
    return ec.static_bootstrap(boot, [lst])


def _floor_filter(shipped_wasm, floor_wasm=None, mode=None):
    """The shipped wasm filter entry with the trivial module (bench/floor) instead; `mode`
    "hostcalls": it makes origin-pull's happy-path hostcalls with no logic (bench/floor)."""
    wasm = copy.deepcopy(shipped_wasm)
    cfg = wasm["typed_config"]["config"]
    cfg["name"] = cfg["root_id"] = cfg["vm_config"]["vm_id"] = "bench_floor"
    cfg["vm_config"]["code"]["local"]["filename"] = str(Path(floor_wasm or FLOOR_WASM).resolve())
    cfg.pop("configuration", None)
    if mode:
        cfg["configuration"] = {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                "value": mode}
    return wasm


HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _http1_options(**fields):
    return {HTTP_OPTIONS: {"@type": f"type.googleapis.com/{HTTP_OPTIONS}",
                           "explicit_http_config": {"http_protocol_options": {}}, **fields}}


# The rendered drain filter (src/render/envoy/upstream.rs drain_filter): Lua behind Envoy's matcher,
# run on the answers a logged chain's route retries (any status but 1xx-3xx).
DRAIN = "origin_pull_drain"


def _drop_drain(cluster):
    opts = cluster.get("typed_extension_protocol_options", {}).get(HTTP_OPTIONS, {})
    if "http_filters" in opts:
        opts["http_filters"] = [f for f in opts["http_filters"] if f["name"] != DRAIN]


def _mechanism_clusters(topo, plugin, floor=None, drain=True):
    """The clusters render writes for the scenario's configuration (ORIGINAL_DST sub-clusters,
    the composite cluster of a logged chain: no upstream instance), with the trivial filter
    (`floor`) as an upstream filter after the drain filter, or the drain filter removed."""
    out = []
    for c in ec.render_set(plugin, route_timeout=ROUTE_TIMEOUT).clusters:
        c = ec._untyped(copy.deepcopy(c))
        if c.get("cluster_type", {}).get("name") == "envoy.clusters.composite":
            c["name"] = MECHANISM_CLUSTER
            opts = c["typed_extension_protocol_options"][HTTP_OPTIONS]
            filters = opts["http_filters"]
            if any(f["name"] == "envoy.filters.http.wasm" for f in filters):
                raise ValueError("bench: the rendered chain is observed (upstream instance); "
                                 "the mechanism systems expect a logged chain")
            if not drain:
                filters = [f for f in filters if f["name"] != DRAIN]
            at = 1 if filters and filters[0]["name"] == DRAIN else 0
            opts["http_filters"] = filters[:at] + ([floor] if floor else []) + filters[at:]
        elif c["name"] in (ec.IP_CLUSTER_HTTP, ec.IP_CLUSTER_HTTPS):
            continue  # already in the bootstrap
        out.append(c)
    return out


MECHANISM_CLUSTER = "mechanism_chain"
OVERRIDE_CLUSTER = "mechanism_hosts"
OVERRIDE_HEADER = "x-origin-pull-hosts"


def _override_cluster(topo, plugin):
    """A STATIC cluster of the scenario's origins (masters and slave) whose load balancer takes
    the host from OVERRIDE_HEADER (`IP:PORT,IP:PORT`: one per attempt, in order), with the
    rendered composite cluster's protocol options (drain filter, codec) and circuit breakers."""
    composite = next(ec._untyped(copy.deepcopy(c))
                     for c in ec.render_set(plugin, route_timeout=ROUTE_TIMEOUT).clusters
                     if c.get("cluster_type", {}).get("name") == "envoy.clusters.composite")
    hosts = [(ip, port, 1) for ip, port, _ in topo.masters] + [(*topo.slave, 1)]
    lb = "envoy.extensions.load_balancing_policies"
    return {
        "name": OVERRIDE_CLUSTER,
        "type": "STATIC",
        "connect_timeout": CONNECT_TIMEOUT,
        "load_assignment": {"cluster_name": OVERRIDE_CLUSTER, "endpoints": [
            {"lb_endpoints": [_endpoint(ip, port, w) for ip, port, w in hosts]}]},
        "load_balancing_policy": {"policies": [{"typed_extension_config": {
            "name": "envoy.load_balancing_policies.override_host",
            "typed_config": {
                "@type": f"type.googleapis.com/{lb}.override_host.v3.OverrideHost",
                "override_host_sources": [{"header": OVERRIDE_HEADER}],
                "fallback_policy": {"policies": [{"typed_extension_config": {
                    "name": "envoy.load_balancing_policies.round_robin",
                    "typed_config": {
                        "@type": f"type.googleapis.com/{lb}.round_robin.v3.RoundRobin"}}}]},
            }}}]},
        "circuit_breakers": composite["circuit_breakers"],
        "typed_extension_protocol_options": composite["typed_extension_protocol_options"],
    }


# What origin-pull's filter sets per request for a master/slave pair (src/engine/chain.rs), written in
# the route instead: the heaviest master, the slave, the retry conditions.
ATTEMPT_2_HEADER = "x-origin-pull-dst-2"


def _mechanism_route(listener, topo, override=False):
    vh = _hcm(listener)["route_config"]["virtual_hosts"][0]
    # The rendered route of a logged chain with the usual rules (its composite cluster's name
    # starts with "origin_pull_chain("), taken by every request: its policy retries once on
    # connect failures, resets, timeouts and every 4xx/5xx.
    usual = vh["routes"][0]
    if usual["match"].get("headers", [{}])[0].get("string_match", {}).get(
            "prefix") != "origin_pull_chain(":
        raise ValueError("bench: the rendered routes changed; update configs.py")
    usual["match"] = {"prefix": "/"}
    vh["routes"] = [usual]
    route = usual["route"]
    route.pop("cluster_header")
    route["cluster"] = OVERRIDE_CLUSTER if override else MECHANISM_CLUSTER
    ip, port, _ = max(topo.masters, key=lambda m: m[2])
    if override:
        vh["request_headers_to_add"] = [
            {"header": {"key": OVERRIDE_HEADER,
                        "value": f"{ip}:{port},{topo.slave[0]}:{topo.slave[1]}"},
             "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]
        return
    vh["request_headers_to_add"] = [
        {"header": {"key": "x-envoy-original-dst-host", "value": f"{ip}:{port}"},
         "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
        {"header": {"key": ATTEMPT_2_HEADER, "value": f"{topo.slave[0]}:{topo.slave[1]}"},
         "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
    ]


# --------------------------------------------------------------------------- nginx

_NGINX_HEAD = """\
# generated by bench/configs.py
daemon off;
master_process off;
worker_processes 1;
pid {dir}/{name}.pid;
error_log {dir}/{name}.error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nodelay on;
    keepalive_timeout 300s;
    keepalive_requests 10000000;
    client_body_temp_path {dir}/{name}.tmp/body;
    proxy_temp_path {dir}/{name}.tmp/proxy;
    fastcgi_temp_path {dir}/{name}.tmp/fastcgi;
    uwsgi_temp_path {dir}/{name}.tmp/uwsgi;
    scgi_temp_path {dir}/{name}.tmp/scgi;
"""


def origin_nginx_conf(topo, run_dir, docroot):
    """One nginx (one worker) serving every origin of the scenario. Masters answer 404 under
    /miss/, the slave serves the same objects there (scenario b: master 404, slave 200)."""
    run_dir = Path(run_dir)
    (run_dir / "origin.tmp").mkdir(parents=True, exist_ok=True)
    listens = sorted({(ip, port) for ip, port, _ in topo.masters if ip not in topo.dead})
    master_listen = "\n".join(f"        listen {ip}:{port};" for ip, port in listens)
    return (_NGINX_HEAD.format(dir=run_dir, name="origin") + f"""
    server {{
{master_listen}
        root {docroot};
        location /miss/ {{ return 404; }}
    }}
    server {{
        listen {topo.slave[0]}:{topo.slave[1]};
        root {docroot};
        location /miss/ {{ alias {docroot}/; }}
    }}
}}
""")


def proxy_nginx_conf(topo, run_dir):
    """nginx doing origin pull: weighted masters, the slave as `backup`, the next upstream on
    errors, timeouts and the issue's status list; a failed master is skipped for 60 s."""
    run_dir = Path(run_dir)
    (run_dir / "nginx.tmp").mkdir(parents=True, exist_ok=True)
    servers = "\n".join(
        f"        server {ip}:{port} weight={w} max_fails=1 fail_timeout=60s;"
        for ip, port, w in topo.masters)
    return (_NGINX_HEAD.format(dir=run_dir, name="nginx") + f"""
    upstream origin {{
{servers}
        server {topo.slave[0]}:{topo.slave[1]} backup;
        keepalive 256;
        keepalive_requests 10000000;
    }}
    server {{
        listen {topo.listen_ip}:{topo.ports['nginx']};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_next_upstream error timeout http_404 http_500 http_502 http_503 http_504;
            # No limit: nginx tries every other master before the backup (it has no way to
            # go straight to the backup on a 404).
            proxy_next_upstream_tries 0;
            proxy_connect_timeout {CONNECT_TIMEOUT};
            proxy_read_timeout {ROUTE_TIMEOUT};
            # Stream large objects instead of spooling them to temp files.
            proxy_buffers 32 64k;
            proxy_max_temp_file_size 0;
        }}
    }}
}}
""")


def write_json(path, doc):
    Path(path).write_text(json.dumps(doc, indent=1), encoding="utf-8")
    return Path(path)
