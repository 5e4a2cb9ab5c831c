//! Envoy resources for a plugin configuration: the clusters of [`ClusterSpec`]s, the listener
//! (route with `cluster_header`, the wasm filter, an access log with origin-pull's filter state)
//! and the bootstrap around them — either fully static or watching `lds.yaml`/`cds.yaml`.

use super::clusters::{ClusterKind, ClusterSpec};
use super::yaml::{list, map, to_yaml, Node};
use super::{ecds, provided_clusters, Delivery, Options, RemoteWasm, WASM_FETCH_CLUSTER};
use crate::config::PluginConfig;
use crate::engine::chain::{AttemptClusterSpec, ChainSpec, UPSTREAM_ROOT_ID};

pub const LISTENER_NAME: &str = "origin_pull";
const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const HCM_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const HTTP_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
const TLS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

/// One line per request: what the client asked, what it got, and which origin served it.
/// `upstream=` is Envoy's own view (for a callout failover the FIRST origin: Envoy does not
/// attribute a callout); `details=` names replies made by the filter
/// (`origin_pull_failed_over_to_slave`…). `origin=`, `role=`, `attempts=` and `failed_over=`
/// come from filter state the filter writes only where the log cannot tell by itself
/// (`Exchange::record_attribution`; nothing on the happy path, a hostcall saved per write):
/// without it, an answer Envoy relayed from an origin (`via_upstream`) was the first master's,
/// at `%UPSTREAM_HOST%`, after 1 attempt. `-` when no origin answered and the filter wrote
/// nothing (e.g. unknown host). `failed_over` is `true` exactly when attempts were written
/// (more than 1).
pub const ACCESS_LOG_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(:AUTHORITY)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%\" \
%RESPONSE_CODE% %RESPONSE_FLAGS% details=%RESPONSE_CODE_DETAILS% upstream=%UPSTREAM_HOST% \
origin=%CEL('wasm.origin_pull.origin' in filter_state ? filter_state['wasm.origin_pull.origin'] : \
(response.code_details == 'via_upstream' ? upstream.address : '-'))% \
role=%CEL('wasm.origin_pull.role' in filter_state ? filter_state['wasm.origin_pull.role'] : \
('wasm.origin_pull.origin' in filter_state || response.code_details == 'via_upstream' ? 'master' : '-'))% \
attempts=%CEL('wasm.origin_pull.attempts' in filter_state ? filter_state['wasm.origin_pull.attempts'] : \
('wasm.origin_pull.origin' in filter_state || response.code_details == 'via_upstream' ? '1' : '-'))% \
failed_over=%CEL('wasm.origin_pull.attempts' in filter_state ? 'true' : \
('wasm.origin_pull.origin' in filter_state || response.code_details == 'via_upstream' ? 'false' : '-'))% \
%DURATION%ms\n";

/// Room for an edge: Envoy's default of 1024 concurrent requests per cluster would cap every
/// IP origin together, since they share one ORIGINAL_DST cluster.
const CIRCUIT_BREAKER_LIMIT: u32 = 100_000;

fn typed(type_url: &str, rest: Vec<(String, Node)>) -> Node {
    let mut entries = vec![("@type".to_string(), Node::from(type_url))];
    entries.extend(rest);
    Node::Map(entries)
}

fn entries(node: Node) -> Vec<(String, Node)> {
    match node {
        Node::Map(e) => e,
        _ => Vec::new(),
    }
}

fn socket(ip: &str, port: u16) -> Node {
    map([(
        "socket_address",
        map([("address", ip.into()), ("port_value", port.into())]),
    )])
}

/// The Envoy cluster for one spec; `None` for clusters the operator provides.
pub fn cluster(spec: &ClusterSpec, opts: &Options) -> Option<Node> {
    let mut c = vec![("name".to_string(), Node::from(&spec.name))];
    let mut push = |k: &str, v: Node| c.push((k.to_string(), v));
    match &spec.kind {
        ClusterKind::Provided => return None,
        ClusterKind::OriginalDst => {
            // The filter always sets or removes x-envoy-original-dst-host, so a client can
            // never pick the address.
            push("type", "ORIGINAL_DST".into());
            push("lb_policy", "CLUSTER_PROVIDED".into());
            push("connect_timeout", opts.connect_timeout.as_str().into());
            push(
                "original_dst_lb_config",
                map([("use_http_header", true.into())]),
            );
        }
        ClusterKind::Dns { host, port } => {
            push("type", "STRICT_DNS".into());
            push("lb_policy", "ROUND_ROBIN".into());
            push("connect_timeout", opts.connect_timeout.as_str().into());
            push("dns_lookup_family", "V4_PREFERRED".into());
            push(
                "load_assignment",
                map([
                    ("cluster_name", spec.name.as_str().into()),
                    (
                        "endpoints",
                        list([map([(
                            "lb_endpoints",
                            list([map([("endpoint", map([("address", socket(host, *port))]))])]),
                        )])]),
                    ),
                ]),
            );
        }
    }
    let limit = Node::from(CIRCUIT_BREAKER_LIMIT);
    push(
        "circuit_breakers",
        map([(
            "thresholds",
            list([map([
                ("max_connections", limit.clone()),
                ("max_pending_requests", limit.clone()),
                ("max_requests", limit),
            ])]),
        )]),
    );
    if spec.tls {
        // SNI and the certificate's name are the Host sent to the origin (the origin's `host`,
        // else the client's host).
        push(
            "typed_extension_protocol_options",
            map([(
                HTTP_OPTIONS,
                typed(
                    &format!("type.googleapis.com/{HTTP_OPTIONS}"),
                    entries(map([
                        (
                            "upstream_http_protocol_options",
                            map([
                                ("auto_sni", true.into()),
                                ("auto_san_validation", true.into()),
                            ]),
                        ),
                        (
                            "explicit_http_config",
                            map([("http_protocol_options", map([]))]),
                        ),
                    ])),
                ),
            )]),
        );
        push(
            "transport_socket",
            map([
                ("name", "envoy.transport_sockets.tls".into()),
                (
                    "typed_config",
                    typed(
                        TLS_TYPE,
                        entries(map([(
                            "common_tls_context",
                            map([(
                                "validation_context",
                                map([(
                                    "trusted_ca",
                                    map([("filename", opts.ca_file.as_str().into())]),
                                )]),
                            )]),
                        )])),
                    ),
                ),
            ]),
        );
    }
    Some(Node::Map(c))
}

/// Every cluster render writes (operator-provided ones are left out): the origins' clusters,
/// then, for failovers carried by Envoy's router, the `ORIGINAL_DST` clusters of attempt
/// positions 2.. and the composite clusters (see `chain`).
pub fn clusters(config: &PluginConfig, opts: &Options) -> Vec<Node> {
    let mut out: Vec<Node> = config
        .cluster_specs()
        .iter()
        .filter_map(|s| cluster(s, opts))
        .collect();
    out.extend(
        config
            .attempt_cluster_specs()
            .iter()
            .filter_map(|s| attempt_cluster(s, opts)),
    );
    out.extend(config.chain_specs().iter().map(|c| chain_cluster(c, opts)));
    out
}

/// An IP cluster for attempt position k ≥ 2: the same as the first one but reading its own
/// header, so the router's retry reaches the address the filter planned for that attempt.
fn attempt_cluster(spec: &AttemptClusterSpec, opts: &Options) -> Option<Node> {
    let base = ClusterSpec {
        name: spec.name.clone(),
        kind: ClusterKind::OriginalDst,
        tls: spec.tls,
    };
    let mut node = entries(cluster(&base, opts)?);
    for (k, v) in node.iter_mut() {
        if k == "original_dst_lb_config" {
            *v = map([
                ("use_http_header", true.into()),
                ("http_header_name", spec.header.into()),
            ]);
        }
    }
    Some(Node::Map(node))
}

/// Failed answers up to this size are read to their end before the router retries (see
/// [`drain_filter`]).
pub const DRAIN_MAX_BYTES: u32 = 65_536;

/// A Lua upstream filter, before the module's upstream instance (so it sees the answer after
/// the instance marked it with [`crate::engine::chain::FAILOVER_STATUS`]): a marked answer with a body
/// of at most [`DRAIN_MAX_BYTES`] is read to its end before the router sees its headers.
/// Envoy's router resets an attempt it retries while the answer's body is still to come, which
/// closes an HTTP/1.1 connection; a complete answer leaves the connection in the pool. Without
/// this, every failover on a status opened a new connection to the failed origin for its next
/// request (`make bench` scenario f: 100-165 µs of Envoy CPU per failover, and as much
/// latency). A failed answer whose body stalls is still bounded by the per-try timeout (the
/// router has not seen its headers yet).
fn drain_filter() -> Node {
    let script = format!(
        "-- origin-pull: read a failed answer's short body, so the router's retry keeps the connection.\n\
         function envoy_on_response(handle)\n\
         \x20 local headers = handle:headers()\n\
         \x20 if headers:get(\":status\") ~= \"{mark}\" then return end\n\
         \x20 local length = tonumber(headers:get(\"content-length\") or \"\")\n\
         \x20 if length ~= nil and length > 0 and length <= {max} then handle:body() end\n\
         end\n",
        mark = crate::engine::chain::FAILOVER_STATUS,
        max = DRAIN_MAX_BYTES,
    );
    map([
        ("name", "envoy.filters.http.lua".into()),
        (
            "typed_config",
            typed(
                "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                entries(map([(
                    "default_source_code",
                    map([("inline_string", Node::Text(script))]),
                )])),
            ),
        ),
    ])
}

/// A composite cluster: attempt k goes to sub-cluster k. Carries the module's upstream
/// instance (once per attempt: counts, blocks, sets the attempt's Host), the filter that
/// drains a failed answer's short body ([`drain_filter`]) and, when an attempt is TLS, auto
/// SNI / SAN validation (the router reads them from the cluster the route names).
fn chain_cluster(spec: &ChainSpec, opts: &Options) -> Node {
    let limit = Node::from(CIRCUIT_BREAKER_LIMIT);
    let mut options = Vec::new();
    if spec.tls {
        options.push((
            "upstream_http_protocol_options".to_string(),
            map([
                ("auto_sni", true.into()),
                ("auto_san_validation", true.into()),
            ]),
        ));
    }
    options.push((
        "explicit_http_config".to_string(),
        map([("http_protocol_options", map([]))]),
    ));
    options.push((
        "http_filters".to_string(),
        list([
            drain_filter(),
            upstream_wasm_filter(opts),
            map([
                ("name", "envoy.filters.http.upstream_codec".into()),
                (
                    "typed_config",
                    typed(
                        "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec",
                        vec![],
                    ),
                ),
            ]),
        ]),
    ));
    map([
        ("name", spec.name.as_str().into()),
        ("connect_timeout", opts.connect_timeout.as_str().into()),
        ("lb_policy", "CLUSTER_PROVIDED".into()),
        (
            "cluster_type",
            map([
                ("name", "envoy.clusters.composite".into()),
                (
                    "typed_config",
                    typed(
                        "type.googleapis.com/envoy.extensions.clusters.composite.v3.ClusterConfig",
                        entries(map([(
                            "clusters",
                            Node::List(
                                spec.subs
                                    .iter()
                                    .map(|s| map([("name", s.as_str().into())]))
                                    .collect(),
                            ),
                        )])),
                    ),
                ),
            ]),
        ),
        (
            "circuit_breakers",
            map([(
                "thresholds",
                list([map([
                    ("max_connections", limit.clone()),
                    ("max_pending_requests", limit.clone()),
                    ("max_requests", limit.clone()),
                    // Envoy's default allows 3 concurrent retries per cluster: every failover
                    // beyond them would get the first origin's failure.
                    ("max_retries", limit),
                ])]),
            )]),
        ),
        (
            "typed_extension_protocol_options",
            map([(
                HTTP_OPTIONS,
                typed(&format!("type.googleapis.com/{HTTP_OPTIONS}"), options),
            )]),
        ),
    ])
}

/// The module's upstream instance: same VM (`vm_id`, code) as the listener's filter, whose
/// configuration it uses, so it carries none itself.
fn upstream_wasm_filter(opts: &Options) -> Node {
    wasm_filter_entry(UPSTREAM_ROOT_ID, None, opts)
}

/// An `envoy.filters.http.wasm` entry of the origin-pull module with `root_id`, and the plugin
/// configuration text when it carries one. A broken VM must never let a request through
/// unrouted: `fail_open` is false.
fn wasm_filter_entry(root_id: &str, plugin_config_text: Option<&str>, opts: &Options) -> Node {
    let mut config = vec![
        ("name".into(), "origin_pull".into()),
        ("root_id".into(), root_id.into()),
        ("fail_open".into(), false.into()),
        ("vm_config".into(), vm_config(opts)),
    ];
    if let Some(text) = plugin_config_text {
        config.push((
            "configuration".into(),
            typed(
                "type.googleapis.com/google.protobuf.StringValue",
                vec![("value".into(), Node::Text(text.into()))],
            ),
        ));
    }
    map([
        ("name", "envoy.filters.http.wasm".into()),
        (
            "typed_config",
            typed(
                "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                entries(map([("config", Node::Map(config))])),
            ),
        ),
    ])
}

/// The route: the filter has already chosen the origin (cluster header, and original-dst header
/// for IP origins). No request_headers_to_remove for x-envoy-original-dst-host here: route-level
/// removal happens before host selection and would break routing.
///
/// Timeouts: `timeout` bounds the whole response, body included (default none);
/// `retry_policy.per_try_timeout` bounds each attempt until its response headers (the
/// first-byte timeout: a silent origin fails over); `idle_timeout` ends a stream with no byte
/// either way for that long (a stalled body). The retry policy itself retries nothing: the
/// filter sets `x-envoy-retry-on` & co. per request from the domain's failover rules.
pub fn route_action(config: &PluginConfig, opts: &Options) -> Node {
    let route = vec![
        (
            "cluster_header".to_string(),
            Node::from(config.envoy.cluster_header.as_str()),
        ),
        ("timeout".to_string(), opts.route_timeout.as_str().into()),
        (
            "idle_timeout".to_string(),
            opts.idle_timeout.as_str().into(),
        ),
        (
            "retry_policy".to_string(),
            map([
                ("per_try_timeout", opts.first_byte_timeout.as_str().into()),
                (
                    // Answers the module's upstream instance marked for a failover (the filter
                    // enables `retriable-status-codes` per request).
                    "retriable_status_codes",
                    list([crate::engine::chain::FAILOVER_STATUS.into()]),
                ),
                (
                    // Envoy's default (25 ms, growing) would add tens of ms to every failover.
                    "retry_back_off",
                    map([
                        ("base_interval", "0.001s".into()),
                        ("max_interval", "0.01s".into()),
                    ]),
                ),
            ]),
        ),
    ];
    Node::Map(route)
}

/// The one route: everything goes where the filter decided.
fn route_entry(config: &PluginConfig, opts: &Options) -> Node {
    let body_limit = config
        .domains
        .iter()
        .map(|d| d.failover.max_request_body_bytes)
        .max()
        .unwrap_or(0);
    let mut entry = entries(map([
        ("match", map([("prefix", "/".into())])),
        ("route", route_action(config, opts)),
    ]));
    if body_limit > 0 {
        // Request bodies the router keeps for a retry (a larger one is not retried).
        entry.push((
            "request_body_buffer_limit".to_string(),
            Node::from(u32::try_from(body_limit).unwrap_or(u32::MAX)),
        ));
    }
    Node::Map(entry)
}

/// `vm_config.code`: the local file, or the URL Envoy downloads (through
/// [`WASM_FETCH_CLUSTER`]) and checks against the sha256 before loading it.
fn code_source(opts: &Options) -> Node {
    match &opts.remote_wasm {
        None => map([("local", map([("filename", opts.wasm.as_str().into())]))]),
        Some(remote) => map([(
            "remote",
            map([
                (
                    "http_uri",
                    map([
                        ("uri", remote.url.as_str().into()),
                        ("cluster", WASM_FETCH_CLUSTER.into()),
                        ("timeout", "30s".into()),
                    ]),
                ),
                ("sha256", remote.sha256.as_str().into()),
                // A registry or file server restarting must not leave the listener without
                // its filter: Envoy retries the download with backoff.
                (
                    "retry_policy",
                    map([
                        (
                            "retry_back_off",
                            map([
                                ("base_interval", "1s".into()),
                                ("max_interval", "10s".into()),
                            ]),
                        ),
                        ("num_retries", remote.retries.into()),
                    ]),
                ),
            ]),
        )]),
    }
}

/// The cluster the module is downloaded through (DNS for a name, also fine for an IP; TLS with
/// SNI and certificate name = the URL's host, checked against `--ca-file`).
fn wasm_fetch_cluster(remote: &RemoteWasm, opts: &Options) -> Node {
    let mut c = entries(map([
        ("name", WASM_FETCH_CLUSTER.into()),
        ("type", "STRICT_DNS".into()),
        ("connect_timeout", opts.connect_timeout.as_str().into()),
        ("dns_lookup_family", "V4_PREFERRED".into()),
        (
            "load_assignment",
            map([
                ("cluster_name", WASM_FETCH_CLUSTER.into()),
                (
                    "endpoints",
                    list([map([(
                        "lb_endpoints",
                        list([map([(
                            "endpoint",
                            map([("address", socket(&remote.host, remote.port))]),
                        )])]),
                    )])]),
                ),
            ]),
        ),
    ]));
    if remote.tls {
        c.push((
            "transport_socket".into(),
            map([
                ("name", "envoy.transport_sockets.tls".into()),
                (
                    "typed_config",
                    typed(
                        TLS_TYPE,
                        entries(map([
                            ("sni", remote.host.as_str().into()),
                            (
                                "common_tls_context",
                                map([(
                                    "validation_context",
                                    map([
                                        (
                                            "trusted_ca",
                                            map([("filename", opts.ca_file.as_str().into())]),
                                        ),
                                        (
                                            "match_typed_subject_alt_names",
                                            list([map([
                                                (
                                                    "san_type",
                                                    if remote
                                                        .host
                                                        .parse::<std::net::IpAddr>()
                                                        .is_ok()
                                                    {
                                                        "IP_ADDRESS"
                                                    } else {
                                                        "DNS"
                                                    }
                                                    .into(),
                                                ),
                                                (
                                                    "matcher",
                                                    map([("exact", remote.host.as_str().into())]),
                                                ),
                                            ])]),
                                        ),
                                    ]),
                                )]),
                            ),
                        ])),
                    ),
                ),
            ]),
        ));
    }
    Node::Map(c)
}

/// The clusters of the Envoy configuration: the filter's, plus the module's download cluster.
fn envoy_clusters(config: &PluginConfig, opts: &Options) -> Vec<Node> {
    let mut all = clusters(config, opts);
    if let Some(remote) = &opts.remote_wasm {
        all.push(wasm_fetch_cluster(remote, opts));
    }
    all
}

fn vm_config(opts: &Options) -> Node {
    let mut vm = entries(map([
        ("vm_id", "origin_pull".into()),
        ("runtime", "envoy.wasm.runtime.v8".into()),
        ("code", code_source(opts)),
    ]));
    if !opts.env_keys.is_empty() {
        // Credentials named by `*_env` fields: copied from Envoy's own environment, so the
        // secrets stay out of every configuration file (and out of /config_dump).
        vm.push((
            "environment_variables".into(),
            map([(
                "host_env_keys",
                Node::List(opts.env_keys.iter().map(Node::from).collect()),
            )]),
        ));
    }
    Node::Map(vm)
}

/// `stats_config`: the filter carries its stats' labels in their names
/// (`origin_pull_<stat>;domain=D;origin=O;…`); these tags make them Prometheus labels.
fn stats_config() -> Node {
    let tags = crate::engine::metrics::TAGS.iter().map(|tag| {
        let before = match *tag {
            "domain" => "",
            "origin" => "(?:;domain=[^;]*)?",
            _ => "(?:;[a-z]+=[^;]*)*?",
        };
        map([
            ("tag_name", (*tag).into()),
            (
                "regex",
                format!(r"^wasmcustom\.origin_pull_\w+{before}(;{tag}=([^;]*))").into(),
            ),
        ])
    });
    map([("stats_tags", list(tags))])
}

/// The wasm HTTP filter carrying the plugin configuration text as written.
pub fn wasm_filter(plugin_config_text: &str, opts: &Options) -> Node {
    wasm_filter_entry("origin_pull", Some(plugin_config_text), opts)
}

/// The listener (without `@type`) with the wasm filter and its configuration inline.
pub fn listener(config: &PluginConfig, plugin_config_text: &str, opts: &Options) -> Node {
    listener_with_filter(config, wasm_filter(plugin_config_text, opts), opts)
}

/// The listener (without `@type`) around `filter`, the origin-pull HTTP filter entry (inline,
/// or ECDS-discovered).
pub fn listener_with_filter(config: &PluginConfig, filter: Node, opts: &Options) -> Node {
    let hcm = typed(
        HCM_TYPE,
        entries(map([
            ("stat_prefix", "origin_pull".into()),
            (
                "access_log",
                list([map([
                    ("name", "envoy.access_loggers.stdout".into()),
                    (
                        "typed_config",
                        typed(
                            "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                            entries(map([(
                                "log_format",
                                map([(
                                    "text_format_source",
                                    map([("inline_string", ACCESS_LOG_FORMAT.into())]),
                                )]),
                            )])),
                        ),
                    ),
                ])]),
            ),
            (
                "route_config",
                map([
                    ("name", "origin_pull".into()),
                    (
                        "virtual_hosts",
                        list([map([
                            ("name", "origin_pull".into()),
                            ("domains", list(["*".into()])),
                            // The upstream instance learns which attempt it sees from it.
                            ("include_request_attempt_count", true.into()),
                            (
                                "routes",
                                list([route_entry(config, opts)]),
                            ),
                        ])]),
                    ),
                ]),
            ),
            (
                "http_filters",
                list([
                    filter,
                    map([
                        ("name", "envoy.filters.http.router".into()),
                        (
                            "typed_config",
                            typed(
                                "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                                vec![],
                            ),
                        ),
                    ]),
                ]),
            ),
        ])),
    );
    map([
        ("name", LISTENER_NAME.into()),
        ("address", socket(&opts.listen_ip, opts.listen_port)),
        (
            "filter_chains",
            list([map([(
                "filters",
                list([map([
                    (
                        "name",
                        "envoy.filters.network.http_connection_manager".into(),
                    ),
                    ("typed_config", hcm),
                ])]),
            )])]),
        ),
    ])
}

fn node_and_admin(opts: &Options) -> Vec<(String, Node)> {
    entries(map([
        (
            "node",
            map([
                ("id", opts.node_id.as_str().into()),
                ("cluster", "origin-pull".into()),
            ]),
        ),
        (
            "admin",
            map([("address", socket(&opts.admin_ip, opts.admin_port))]),
        ),
        ("stats_config", stats_config()),
    ]))
}

fn header(what: &str, config: &PluginConfig, opts: &Options) -> String {
    let mut h = format!(
        "# {what}\n# Rendered by `origin-pull render` from {} — do not edit by hand: change the plugin\n\
         # configuration and render again (`origin-pull render --help`).\n",
        opts.source
    );
    let provided = provided_clusters(config);
    if !provided.is_empty() {
        h.push_str(
            "# Clusters origin-pull routes to that you must define yourself (cluster origins):\n",
        );
        for name in provided {
            h.push_str(&format!("#   {name}\n"));
        }
    }
    h
}

fn with_type(type_url: &str, node: Node) -> Node {
    typed(type_url, entries(node))
}

/// One self-contained bootstrap: listener and clusters static (restart Envoy to change them).
pub fn static_bootstrap(config: &PluginConfig, plugin_config_text: &str, opts: &Options) -> String {
    let mut doc = node_and_admin(opts);
    doc.push((
        "static_resources".into(),
        map([
            (
                "listeners",
                list([listener(config, plugin_config_text, opts)]),
            ),
            ("clusters", Node::List(envoy_clusters(config, opts))),
        ]),
    ));
    let head = header(
        "Envoy bootstrap for origin-pull (static: restart Envoy after a change). stats_config turns the\n# filter's per-origin stat names into Prometheus labels: keep it in a bootstrap of your own.",
        config,
        opts,
    );
    format!("{head}\n{}", to_yaml(&Node::Map(doc)))
}

/// A file-watched config source for `file` in `dir` (as Envoy sees it).
pub fn path_source(dir: &str, file: &str) -> Node {
    let path = if dir.is_empty() || dir == "." {
        file.to_string()
    } else {
        format!("{}/{file}", dir.trim_end_matches('/'))
    };
    let watched = if dir.is_empty() { "." } else { dir };
    map([
        ("resource_api_version", "V3".into()),
        (
            "path_config_source",
            map([
                ("path", path.into()),
                ("watched_directory", map([("path", watched.into())])),
            ]),
        ),
    ])
}

pub const BOOTSTRAP_FILE: &str = "envoy.yaml";
pub const LDS_FILE: &str = "lds.yaml";
pub const CDS_FILE: &str = "cds.yaml";

/// Bootstrap + `lds.yaml` + `cds.yaml` (+ `ecds.json` with ECDS delivery, the default):
/// Envoy watches `opts.config_dir` and applies a new plugin configuration, listener or cluster
/// set when a file is moved over the old one.
pub fn dynamic_files(
    config: &PluginConfig,
    plugin_config_text: &str,
    opts: &Options,
) -> Vec<(&'static str, String)> {
    let dir = if opts.config_dir.is_empty() {
        "."
    } else {
        opts.config_dir.as_str()
    };
    let reload = match opts.delivery {
        Delivery::Ecds => format!(
            "# To apply a new plugin configuration without a restart, render into another directory and\n\
             # `mv` {CDS_FILE} then {ecds} over these (the plugin configuration is in {ecds}, an ECDS\n\
             # resource: the next request on every connection uses it, keep-alive ones included; {LDS_FILE}\n\
             # only changes with render's listener options). Envoy reacts to files MOVED into {dir}/\n\
             # (mv, sed -i, a Kubernetes ConfigMap's atomic swap), not to in-place writes. A configuration the\n\
             # filter rejects shows as extension_config_discovery.http_filter.{name}.config_fail; the old one\n\
             # keeps serving.\n",
            ecds = ecds::ECDS_FILE,
            name = ecds::FILTER_NAME,
        ),
        Delivery::Lds => format!(
            "# To apply a new plugin configuration without a restart, render into another directory and\n\
             # `mv` {CDS_FILE} then {LDS_FILE} over these: Envoy reacts to files MOVED into {dir}/\n\
             # (mv, sed -i, a Kubernetes ConfigMap's atomic swap), not to in-place writes. A configuration\n\
             # the filter rejects shows as listener_manager.lds.update_rejected; the old one keeps serving.\n"
        ),
    };
    let mut boot = node_and_admin(opts);
    boot.push((
        "dynamic_resources".into(),
        map([
            ("lds_config", path_source(&opts.config_dir, LDS_FILE)),
            ("cds_config", path_source(&opts.config_dir, CDS_FILE)),
        ]),
    ));
    let filter = match opts.delivery {
        Delivery::Ecds => ecds::discovered_filter(opts),
        Delivery::Lds => wasm_filter(plugin_config_text, opts),
    };
    let lds = map([(
        "resources",
        list([with_type(
            LISTENER_TYPE,
            listener_with_filter(config, filter, opts),
        )]),
    )]);
    let cds = map([(
        "resources",
        Node::List(
            envoy_clusters(config, opts)
                .into_iter()
                .map(|c| with_type(CLUSTER_TYPE, c))
                .collect(),
        ),
    )]);
    let listener_what = match opts.delivery {
        Delivery::Ecds => "origin-pull listener: route by cluster header, the wasm filter (its configuration comes from\n# ecds.json), access log.",
        Delivery::Lds => "origin-pull listener: route by cluster header, the wasm filter with its plugin configuration, access log.",
    };
    let mut files = vec![
        (
            BOOTSTRAP_FILE,
            format!(
                "{}{reload}\n{}",
                header(
                    &format!("Envoy bootstrap for origin-pull: admin, stats_config (the filter's per-origin stat names as\n# Prometheus labels: keep it in a bootstrap of your own), the listener/clusters from {LDS_FILE}/{CDS_FILE}."),
                    config,
                    opts
                ),
                to_yaml(&Node::Map(boot))
            ),
        ),
        (
            LDS_FILE,
            format!(
                "{}{reload}\n{}",
                header(listener_what, config, opts),
                to_yaml(&lds)
            ),
        ),
        (
            CDS_FILE,
            format!(
                "{}{reload}\n{}",
                header(
                    "Clusters origin-pull routes to: ORIGINAL_DST for IP origins (plain, TLS), DNS for domain origins.",
                    config,
                    opts
                ),
                to_yaml(&cds)
            ),
        ),
    ];
    if opts.delivery == Delivery::Ecds {
        files.push((
            ecds::ECDS_FILE,
            ecds::resource_file(plugin_config_text, opts),
        ));
    }
    files
}
