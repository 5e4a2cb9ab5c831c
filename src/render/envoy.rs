//! Envoy resources for a plugin configuration: the clusters of [`ClusterSpec`]s, the listener
//! (route with `cluster_header`, the wasm filter, an access log with origin-pull's filter state)
//! and the bootstrap around them — either fully static or watching `lds.yaml`/`cds.yaml`.

use super::clusters::{ClusterKind, ClusterSpec};
use super::yaml::{list, map, to_yaml, Node};
use super::{ecds, provided_clusters, Delivery, Options, RemoteWasm, WASM_FETCH_CLUSTER};
use crate::config::PluginConfig;
use crate::engine::chain::{AttemptClusterSpec, ChainSpec, UPSTREAM_ROOT_ID};

mod listener;
mod upstream;
mod wasm;

pub use listener::{listener, listener_with_filter, route_action};
use upstream::*;
pub use upstream::{cluster, clusters, DRAIN_MAX_BYTES};
pub use wasm::wasm_filter;
use wasm::*;

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
/// (`origin_pull_failed_over_to_slave`…). `origin= role= attempts= failed_over=` is ONE
/// filter-state value the filter writes for every request it handles
/// (`Exchange::record_attribution`): one `%FILTER_STATE%` here and one hostcall there cost
/// Envoy less than `%CEL(…)%` fields computing it (bench/results/access-log.md).
/// `origin=- role=- attempts=- failed_over=-` when the filter answered before choosing an
/// origin (e.g. an unknown host); a bare `-` when the filter never saw the request.
pub const ACCESS_LOG_FORMAT: &str =
    "[%START_TIME%] \"%REQ(:METHOD)% %REQ(:AUTHORITY)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%\" \
%RESPONSE_CODE% %RESPONSE_FLAGS% details=%RESPONSE_CODE_DETAILS% upstream=%UPSTREAM_HOST% \
%FILTER_STATE(wasm.origin_pull.served:PLAIN)% %DURATION%ms\n";

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
