//! The clusters `render` writes: the origins' clusters from their specs, the composite
//! (router failover) clusters with their drain filter and per-attempt wasm filter.

use super::*;

/// Room for an edge: Envoy's default of 1024 concurrent requests per cluster would cap every
/// IP origin together, since they share one ORIGINAL_DST cluster.
pub(super) const CIRCUIT_BREAKER_LIMIT: u32 = 100_000;

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
    push("circuit_breakers", circuit_breakers(false));
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

/// Limits raised to [`CIRCUIT_BREAKER_LIMIT`]; `retries` too for a composite cluster (Envoy's
/// default allows 3 concurrent retries per cluster: every failover beyond them would get the
/// first origin's failure).
fn circuit_breakers(retries: bool) -> Node {
    let limit = Node::from(CIRCUIT_BREAKER_LIMIT);
    let mut thresholds = vec![
        ("max_connections".to_string(), limit.clone()),
        ("max_pending_requests".to_string(), limit.clone()),
        ("max_requests".to_string(), limit.clone()),
    ];
    if retries {
        thresholds.push(("max_retries".to_string(), limit));
    }
    map([("thresholds", list([Node::Map(thresholds)]))])
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
pub(super) fn attempt_cluster(spec: &AttemptClusterSpec, opts: &Options) -> Option<Node> {
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

/// A Lua upstream filter, before the module's upstream instance if any: an answer to fail over
/// on with a body of at most [`DRAIN_MAX_BYTES`] is read to its end before the router sees its
/// headers. Envoy's router resets an attempt it retries while the answer's body is still to
/// come, which closes an HTTP/1.1 connection; a complete answer leaves the connection in the
/// pool. Without this, every failover on a status opened a new connection to the failed origin
/// for its next request (`make bench` scenario f: 100-165 µs of Envoy CPU per failover, and as
/// much latency). A failed answer whose body stalls is still bounded by the per-try timeout
/// (the router has not seen its headers yet).
///
/// Envoy's matcher skips the Lua filter for every other answer (a Lua filter entered on every
/// request cost about three times as much CPU as one skipped by the matcher). Which answers
/// it runs on: an observed chain's marked by the upstream instance
/// ([`crate::engine::chain::FAILOVER_STATUS`]); a logged chain's any status but 1xx-3xx, which
/// the route may retry; a broken status ("2000") becomes a 502 there, so the router fails it
/// over like any 5xx. An origin's own copy of the header that says so is removed first: only
/// the drain filter's reaches the listener's filter.
pub(super) fn drain_filter(observed: bool) -> Node {
    let (test, run_on) = if observed {
        let mark = crate::engine::chain::FAILOVER_STATUS.to_string();
        (
            format!("if headers:get(\":status\") ~= \"{mark}\" then return end"),
            map([(
                "not_matcher",
                status_predicate(map([("exact", mark.as_str().into())])),
            )]),
        )
    } else {
        (
            format!(
                "local status = tonumber(headers:get(\":status\") or \"\") or 0\n\
             \x20 headers:remove(\"{broken}\")\n\
             \x20 if status < 100 or status > 599 then\n\
             \x20   headers:add(\"{broken}\", headers:get(\":status\") or \"\")\n\
             \x20   headers:replace(\":status\", \"502\")\n\
             \x20 end",
                broken = crate::engine::chain::BROKEN_STATUS_HEADER
            ),
            status_predicate(map([(
                "safe_regex",
                map([("google_re2", map([])), ("regex", "[1-3][0-9][0-9]".into())]),
            )])),
        )
    };
    let script = format!(
        "-- origin-pull: read a failed answer's short body, so the router's retry keeps the connection.\n\
         function envoy_on_response(handle)\n\
         \x20 local headers = handle:headers()\n\
         \x20 {test}\n\
         \x20 local length = tonumber(headers:get(\"content-length\") or \"\")\n\
         \x20 if length ~= nil and length > 0 and length <= {max} then handle:body() end\n\
         end\n",
        max = DRAIN_MAX_BYTES,
    );
    let lua = map([
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
    ]);
    map([
        ("name", "origin_pull_drain".into()),
        (
            "typed_config",
            typed(
                "type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher",
                entries(map([
                    ("extension_config", lua),
                    (
                        "xds_matcher",
                        map([(
                            "matcher_list",
                            map([(
                                "matchers",
                                list([map([
                                    ("predicate", run_on),
                                    (
                                        "on_match",
                                        map([(
                                            "action",
                                            map([
                                                ("name", "skip".into()),
                                                (
                                                    "typed_config",
                                                    typed(
                                                        "type.googleapis.com/envoy.extensions.filters.common.matcher.action.v3.SkipFilter",
                                                        vec![],
                                                    ),
                                                ),
                                            ]),
                                        )]),
                                    ),
                                ])]),
                            )]),
                        )]),
                    ),
                ])),
            ),
        ),
    ])
}

/// A matcher predicate on the answer's `:status` with `value_match`.
fn status_predicate(value_match: Node) -> Node {
    map([(
        "single_predicate",
        map([
            (
                "input",
                map([
                    ("name", "status".into()),
                    (
                        "typed_config",
                        typed(
                            "type.googleapis.com/envoy.type.matcher.v3.HttpResponseHeaderMatchInput",
                            entries(map([("header_name", ":status".into())])),
                        ),
                    ),
                ]),
            ),
            ("value_match", value_match),
        ]),
    )])
}

/// A composite cluster: attempt k goes to sub-cluster k. An observed one carries the module's
/// upstream instance (once per attempt: counts, blocks, sets the attempt's Host); each the filter that
/// drains a failed answer's short body ([`drain_filter`]) and, when an attempt is TLS, auto
/// SNI / SAN validation (the router reads them from the cluster the route names).
pub(super) fn chain_cluster(spec: &ChainSpec, opts: &Options) -> Node {
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
    let mut filters = vec![drain_filter(spec.observed)];
    if spec.observed {
        filters.push(upstream_wasm_filter(opts));
    }
    filters.push(map([
        ("name", "envoy.filters.http.upstream_codec".into()),
        (
            "typed_config",
            typed(
                "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec",
                vec![],
            ),
        ),
    ]));
    options.push(("http_filters".to_string(), Node::List(filters)));
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
        ("circuit_breakers", circuit_breakers(true)),
        (
            "typed_extension_protocol_options",
            map([(
                HTTP_OPTIONS,
                typed(&format!("type.googleapis.com/{HTTP_OPTIONS}"), options),
            )]),
        ),
    ])
}

/// The clusters of the Envoy configuration: the filter's, plus the module's download cluster.
pub(super) fn envoy_clusters(config: &PluginConfig, opts: &Options) -> Vec<Node> {
    let mut all = clusters(config, opts);
    if let Some(remote) = &opts.remote_wasm {
        all.push(wasm_fetch_cluster(remote, opts));
    }
    all
}
