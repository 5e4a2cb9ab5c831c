//! `render --istio`: the Istio objects that run origin-pull on a gateway.
//!
//! - `WasmPlugin`: the filter with the plugin configuration, last before the router
//!   (`UNSPECIFIED_PHASE`, lowest priority) and `FAIL_CLOSE`: without the filter, the route's
//!   cluster header would come from the client, so a missing filter must deny, not pass.
//! - `EnvoyFilter`: the filter's clusters (the same specs as the native render) and the route's
//!   `cluster_header`, which Istio's APIs cannot express.
//! - `Gateway` + `VirtualService`: the accelerated hosts, routed to a nominal `ServiceEntry` with
//!   no endpoints — if the EnvoyFilter is missing, requests fail (503) instead of going anywhere.
//! - `ServiceEntry`/`DestinationRule`: the origins declared to the mesh registry (IP origins as
//!   one static entry, each domain origin as a DNS entry; TLS origination for HTTPS ones).

use serde_json::Value;

use super::envoy::{cluster, route_action};
use super::yaml::{list, map, to_yaml, Node};
use super::Options;
use crate::config::{OriginKind, PluginConfig, Scheme};

pub const NOMINAL_HOST: &str = "origin-pull.internal";
pub const ROUTE_NAME: &str = "origin-pull";
pub const IP_ORIGINS_HOST: &str = "ip-origins.origin-pull.internal";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IstioOptions {
    pub namespace: String,
    /// Workload label the WasmPlugin and EnvoyFilter select (`istio=ingressgateway`).
    pub selector: (String, String),
    /// Where the proxies fetch the module: `oci://…`, `https://…` or `file://…`.
    pub wasm_url: String,
    /// sha256 of the module (checked by the proxy when given).
    pub sha256: Option<String>,
}

impl Default for IstioOptions {
    fn default() -> Self {
        IstioOptions {
            namespace: "istio-system".into(),
            selector: ("istio".into(), "ingressgateway".into()),
            wasm_url: String::new(),
            sha256: None,
        }
    }
}

fn meta(name: &str, ns: &str) -> Node {
    map([("name", name.into()), ("namespace", ns.into())])
}

fn labels(istio: &IstioOptions) -> Node {
    Node::Map(vec![(
        istio.selector.0.clone(),
        Node::from(&istio.selector.1),
    )])
}

/// `a.example.com` → `a-example-com` (a Kubernetes object name).
fn object_name(prefix: &str, host: &str) -> String {
    let mut name: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    name = name.trim_matches('-').to_string();
    let full = format!("{prefix}-{name}");
    full.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches('-')
        .to_string()
}

fn port_entry(port: u16, tls: bool) -> Node {
    let (proto, name) = if tls {
        ("TLS", "tls")
    } else {
        ("HTTP", "http")
    };
    map([
        ("number", port.into()),
        ("name", format!("{name}-{port}").into()),
        ("protocol", proto.into()),
    ])
}

/// Every Istio object as one multi-document YAML stream.
pub fn manifests(
    config: &PluginConfig,
    plugin_config: &Value,
    opts: &Options,
    istio: &IstioOptions,
) -> Result<String, String> {
    if istio.wasm_url.is_empty() {
        return Err("--wasm-url is required with --istio (oci://registry/origin-pull:TAG or https://host/origin_pull.wasm)".into());
    }
    let ns = istio.namespace.as_str();
    let mut docs = Vec::new();
    // A WasmPlugin cannot install the module's upstream instance on a cluster (the module is
    // fetched by the proxy, the EnvoyFilter cannot name its local copy), so failovers under
    // Istio are callouts.
    let explicit = plugin_config
        .get("envoy")
        .and_then(|e| e.get("failover"))
        .and_then(Value::as_str);
    if explicit == Some("router") {
        return Err("envoy.failover \"router\" is not available with --istio (the upstream instance cannot be installed by a WasmPlugin); remove it or set \"callout\"".into());
    }
    let mut plugin_config = plugin_config.clone();
    if explicit.is_none() {
        if let Some(top) = plugin_config.as_object_mut() {
            let envoy = top
                .entry("envoy")
                .or_insert_with(|| Value::Object(Default::default()));
            if let Some(envoy) = envoy.as_object_mut() {
                envoy.insert("failover".into(), Value::from("callout"));
            }
        }
    }
    let plugin_config = &plugin_config;

    let mut spec = vec![
        (
            "selector".to_string(),
            map([("matchLabels", labels(istio))]),
        ),
        ("url".to_string(), Node::from(&istio.wasm_url)),
    ];
    if let Some(sha) = &istio.sha256 {
        spec.push(("sha256".into(), Node::from(sha)));
    }
    spec.extend([
        ("imagePullPolicy".to_string(), Node::from("IfNotPresent")),
        ("phase".to_string(), Node::from("UNSPECIFIED_PHASE")),
        ("priority".to_string(), Node::Int(-1000)),
        ("failStrategy".to_string(), Node::from("FAIL_CLOSE")),
        ("type".to_string(), Node::from("HTTP")),
        ("pluginConfig".to_string(), Node::from_json(plugin_config)),
    ]);
    if !opts.env_keys.is_empty() {
        // `*_env` credentials: read from the gateway container's environment (set them from a
        // Secret in the gateway Deployment); never in the WasmPlugin itself.
        let env = opts
            .env_keys
            .iter()
            .map(|k| map([("name", k.into()), ("valueFrom", "HOST".into())]));
        spec.push(("vmConfig".into(), map([("env", list(env))])));
    }
    docs.push(map([
        ("apiVersion", "extensions.istio.io/v1alpha1".into()),
        ("kind", "WasmPlugin".into()),
        ("metadata", meta("origin-pull", ns)),
        ("spec", Node::Map(spec)),
    ]));

    let gateway_match = || map([("context", "GATEWAY".into())]);
    let mut patches: Vec<Node> = config
        .cluster_specs()
        .iter()
        .filter_map(|s| cluster(s, opts))
        .map(|c| {
            map([
                ("applyTo", "CLUSTER".into()),
                ("match", gateway_match()),
                ("patch", map([("operation", "ADD".into()), ("value", c)])),
            ])
        })
        .collect();
    patches.push(map([
        ("applyTo", "HTTP_ROUTE".into()),
        (
            "match",
            map([
                ("context", "GATEWAY".into()),
                (
                    "routeConfiguration",
                    map([(
                        "vhost",
                        map([("route", map([("name", ROUTE_NAME.into())]))]),
                    )]),
                ),
            ]),
        ),
        (
            "patch",
            map([
                ("operation", "MERGE".into()),
                ("value", map([("route", route_action(config, opts))])),
            ]),
        ),
    ]));
    docs.push(map([
        ("apiVersion", "networking.istio.io/v1alpha3".into()),
        ("kind", "EnvoyFilter".into()),
        ("metadata", meta("origin-pull-routing", ns)),
        (
            "spec",
            map([
                ("workloadSelector", map([("labels", labels(istio))])),
                ("configPatches", Node::List(patches)),
            ]),
        ),
    ]));

    let hosts: Vec<Node> = config.domains.iter().map(|d| Node::from(&d.name)).collect();
    docs.push(map([
        ("apiVersion", "networking.istio.io/v1".into()),
        ("kind", "Gateway".into()),
        ("metadata", meta("origin-pull", ns)),
        (
            "spec",
            map([
                ("selector", labels(istio)),
                (
                    "servers",
                    list([map([
                        (
                            "port",
                            map([
                                ("number", 80u16.into()),
                                ("name", "http".into()),
                                ("protocol", "HTTP".into()),
                            ]),
                        ),
                        ("hosts", Node::List(hosts.clone())),
                    ])]),
                ),
            ]),
        ),
    ]));
    docs.push(map([
        ("apiVersion", "networking.istio.io/v1".into()),
        ("kind", "VirtualService".into()),
        ("metadata", meta("origin-pull", ns)),
        (
            "spec",
            map([
                ("hosts", Node::List(hosts)),
                ("gateways", list(["origin-pull".into()])),
                (
                    "http",
                    list([map([
                        ("name", ROUTE_NAME.into()),
                        (
                            "route",
                            list([map([(
                                "destination",
                                map([
                                    ("host", NOMINAL_HOST.into()),
                                    ("port", map([("number", 80u16.into())])),
                                ]),
                            )])]),
                        ),
                    ])]),
                ),
            ]),
        ),
    ]));
    docs.push(service_entry(
        "origin-pull-route",
        ns,
        NOMINAL_HOST,
        &[(80, false)],
        "STATIC",
        Vec::new(),
    ));

    // The origins, declared to the registry.
    let mut ip_ports: Vec<(u16, bool)> = Vec::new();
    let mut ip_addrs: Vec<String> = Vec::new();
    let mut dns: Vec<(String, Vec<(u16, bool)>)> = Vec::new();
    for origin in config.origin_sets() {
        for route in origin.targets.iter().flat_map(|t| t.routes.iter()) {
            let tls = route.scheme == Some(Scheme::Https);
            match origin.kind {
                OriginKind::Ips => {
                    let Some(dst) = &route.original_dst else {
                        continue;
                    };
                    let Ok(addr) = dst.parse::<std::net::SocketAddr>() else {
                        continue;
                    };
                    push_unique(&mut ip_ports, (addr.port(), tls));
                    push_unique(&mut ip_addrs, addr.ip().to_string());
                }
                OriginKind::Domain | OriginKind::Bucket => {
                    let Some((_, host, port)) =
                        crate::config::parse_dns_cluster_name(&route.cluster)
                    else {
                        continue;
                    };
                    match dns.iter_mut().find(|(h, _)| h == host) {
                        Some((_, ports)) => push_unique(ports, (port, tls)),
                        None => dns.push((host.to_string(), vec![(port, tls)])),
                    }
                }
                OriginKind::Clusters => {} // already in the mesh
            }
        }
    }
    if !ip_addrs.is_empty() {
        ip_ports.sort();
        // A port number appears once in a ServiceEntry (plain first when both are used).
        ip_ports.dedup_by_key(|(port, _)| *port);
        ip_addrs.sort();
        docs.push(service_entry(
            "origin-pull-ip-origins",
            ns,
            IP_ORIGINS_HOST,
            &ip_ports,
            "STATIC",
            ip_addrs
                .iter()
                .map(|a| map([("address", a.as_str().into())]))
                .collect(),
        ));
    }
    dns.sort();
    for (host, mut ports) in dns {
        ports.sort();
        let tls_ports: Vec<u16> = ports
            .iter()
            .filter(|(_, tls)| *tls)
            .map(|(p, _)| *p)
            .collect();
        ports.dedup_by_key(|(port, _)| *port);
        let name = object_name("origin-pull", &host);
        docs.push(service_entry(&name, ns, &host, &ports, "DNS", Vec::new()));
        let tls_ports: Vec<Node> = tls_ports
            .iter()
            .map(|port| {
                map([
                    ("port", map([("number", (*port).into())])),
                    ("tls", map([("mode", "SIMPLE".into())])),
                ])
            })
            .collect();
        if !tls_ports.is_empty() {
            docs.push(map([
                ("apiVersion", "networking.istio.io/v1".into()),
                ("kind", "DestinationRule".into()),
                ("metadata", meta(&name, ns)),
                (
                    "spec",
                    map([
                        ("host", host.as_str().into()),
                        (
                            "trafficPolicy",
                            map([("portLevelSettings", Node::List(tls_ports))]),
                        ),
                    ]),
                ),
            ]));
        }
    }

    let mut out = String::from(
        "# origin-pull on an Istio ingress gateway, rendered by `origin-pull render --istio`.\n\
         # WasmPlugin: the filter (FAIL_CLOSE: without it the route would obey client-sent routing\n\
         # headers, so Istio must deny rather than skip it). EnvoyFilter: the filter's clusters and the\n\
         # route's cluster_header. Gateway/VirtualService: the accelerated hosts. ServiceEntry and\n\
         # DestinationRule: the origins, declared to the mesh.\n",
    );
    let provided = super::provided_clusters(config);
    if !provided.is_empty() {
        out.push_str("# Named clusters (cluster origins; Istio makes outbound|PORT||HOST for mesh services): ");
        out.push_str(&provided.join(", "));
        out.push('\n');
    }
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&to_yaml(&doc));
    }
    Ok(out)
}

fn push_unique<T: PartialEq>(items: &mut Vec<T>, item: T) {
    if !items.contains(&item) {
        items.push(item);
    }
}

fn service_entry(
    name: &str,
    ns: &str,
    host: &str,
    ports: &[(u16, bool)],
    resolution: &str,
    endpoints: Vec<Node>,
) -> Node {
    let mut spec = vec![
        ("hosts".to_string(), list([host.into()])),
        ("location".to_string(), Node::from("MESH_EXTERNAL")),
        (
            "ports".to_string(),
            Node::List(ports.iter().map(|(p, tls)| port_entry(*p, *tls)).collect()),
        ),
        ("resolution".to_string(), Node::from(resolution)),
    ];
    if !endpoints.is_empty() {
        spec.push(("endpoints".into(), Node::List(endpoints)));
    }
    map([
        ("apiVersion", "networking.istio.io/v1".into()),
        ("kind", "ServiceEntry".into()),
        ("metadata", meta(name, ns)),
        ("spec", Node::Map(spec)),
    ])
}
