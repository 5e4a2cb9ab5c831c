//! The listener: its HTTP connection manager, the origin-pull route and its action.

use super::*;

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
    route_action_with(config, opts, RetryRoute::Default)
}

/// Which retry policy a route carries (selected by the prefix of the composite cluster's name,
/// see [`crate::engine::chain::CHAIN_PREFIX`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RetryRoute {
    /// Only what the filter sets per request.
    Default,
    /// A logged chain with the usual failover rules: the whole policy.
    Usual,
    /// An observed chain: the upstream instance's mark.
    Observed,
}

/// The route action with the retry policy `retry` (see [`RetryRoute`]).
fn route_action_with(config: &PluginConfig, opts: &Options, retry: RetryRoute) -> Node {
    let retry_policy = if retry == RetryRoute::Usual {
        map([
            (
                "retry_on",
                "connect-failure,refused-stream,reset,retriable-status-codes".into(),
            ),
            ("num_retries", 1u32.into()),
            ("per_try_timeout", opts.first_byte_timeout.as_str().into()),
            (
                "retriable_status_codes",
                Node::List(
                    crate::engine::chain::USUAL_RETRY_STATUSES
                        .map(Node::from)
                        .collect(),
                ),
            ),
            ("retry_back_off", retry_back_off()),
        ])
    } else if retry == RetryRoute::Observed {
        map([
            ("per_try_timeout", opts.first_byte_timeout.as_str().into()),
            (
                // Answers the module's upstream instance marked for a failover (the filter
                // enables `retriable-status-codes` per request).
                "retriable_status_codes",
                list([crate::engine::chain::FAILOVER_STATUS.into()]),
            ),
            ("retry_back_off", retry_back_off()),
        ])
    } else {
        // The filter sets the retry conditions per request (`x-envoy-retry-on` & co.).
        map([
            ("per_try_timeout", opts.first_byte_timeout.as_str().into()),
            ("retry_back_off", retry_back_off()),
        ])
    };
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
        ("retry_policy".to_string(), retry_policy),
    ];
    Node::Map(route)
}

/// Envoy's default (25 ms, growing) would add tens of ms to every failover.
fn retry_back_off() -> Node {
    map([
        ("base_interval", "0.001s".into()),
        ("max_interval", "0.01s".into()),
    ])
}

/// The routes: everything goes where the filter decided; a logged chain with the usual
/// failover rules and an observed chain each take their own (see [`RetryRoute`]).
pub(super) fn route_entries(config: &PluginConfig, opts: &Options) -> Node {
    use crate::engine::chain::{CHAIN_PREFIX, CHAIN_PREFIX_OBSERVED};
    let named = |prefix: &str, retry: RetryRoute| {
        let mut entry = entries(route_entry(config, opts));
        for (k, v) in entry.iter_mut() {
            match k.as_str() {
                "match" => {
                    *v = map([
                        ("prefix", "/".into()),
                        (
                            "headers",
                            list([map([
                                ("name", config.envoy.cluster_header.as_str().into()),
                                (
                                    "string_match",
                                    map([("prefix", format!("{prefix}(").as_str().into())]),
                                ),
                            ])]),
                        ),
                    ])
                }
                "route" => *v = route_action_with(config, opts, retry),
                _ => {}
            }
        }
        Node::Map(entry)
    };
    list([
        named(CHAIN_PREFIX, RetryRoute::Usual),
        named(CHAIN_PREFIX_OBSERVED, RetryRoute::Observed),
        route_entry(config, opts),
    ])
}

/// The route every request takes unless it names another (see [`route_entries`]).
pub(super) fn route_entry(config: &PluginConfig, opts: &Options) -> Node {
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
                            ("routes", route_entries(config, opts)),
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
                                entries(map([(
                                    "upstream_log",
                                    list([attempt_logger(opts)]),
                                )])),
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
