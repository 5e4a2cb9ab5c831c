//! The wasm filter's pieces: where Envoy gets the module (file or remote fetch), the VM
//! configuration, the stats tags, the listener's and the attempts' filter entries.

use super::*;

/// The module's upstream instance: same VM (`vm_id`, code) as the listener's filter, whose
/// configuration it uses, so it carries none itself.
pub(super) fn upstream_wasm_filter(opts: &Options) -> Node {
    wasm_filter_entry(UPSTREAM_ROOT_ID, None, opts)
}

/// The router's upstream log entry that calls the module (root id
/// [`crate::engine::chain::LOGGER_ROOT_ID`], the same VM as the listener's filter) for each
/// failed attempt of a logged chain. Envoy's own filter passes only 4xx/5xx answers and
/// attempts with a response flag (connect failure, timeout, reset): an attempt that succeeds
/// never enters the VM.
pub(super) fn attempt_logger(opts: &Options) -> Node {
    map([
        ("name", "envoy.access_loggers.wasm".into()),
        (
            "filter",
            map([(
                "or_filter",
                map([(
                    "filters",
                    list([
                        map([(
                            "status_code_filter",
                            map([(
                                "comparison",
                                map([
                                    ("op", "GE".into()),
                                    (
                                        "value",
                                        map([
                                            ("default_value", 400u32.into()),
                                            (
                                                "runtime_key",
                                                "origin_pull.attempt_log_status".into(),
                                            ),
                                        ]),
                                    ),
                                ]),
                            )]),
                        )]),
                        map([("response_flag_filter", map([]))]),
                    ]),
                )]),
            )]),
        ),
        (
            "typed_config",
            typed(
                "type.googleapis.com/envoy.extensions.access_loggers.wasm.v3.WasmAccessLog",
                entries(map([(
                    "config",
                    map([
                        ("name", "origin_pull".into()),
                        ("root_id", crate::engine::chain::LOGGER_ROOT_ID.into()),
                        ("vm_config", vm_config(opts)),
                    ]),
                )])),
            ),
        ),
    ])
}

/// An `envoy.filters.http.wasm` entry of the origin-pull module with `root_id`, and the plugin
/// configuration text when it carries one. A broken VM must never let a request through
/// unrouted: `fail_open` is false.
pub(super) fn wasm_filter_entry(
    root_id: &str,
    plugin_config_text: Option<&str>,
    opts: &Options,
) -> Node {
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

/// `vm_config.code`: the local file, or the URL Envoy downloads (through
/// [`WASM_FETCH_CLUSTER`]) and checks against the sha256 before loading it.
pub(super) fn code_source(opts: &Options) -> Node {
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
pub(super) fn wasm_fetch_cluster(remote: &RemoteWasm, opts: &Options) -> Node {
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

pub(super) fn vm_config(opts: &Options) -> Node {
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
pub(super) fn stats_config() -> Node {
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
