//! `origin-pull check`'s output: the configuration with every default filled in, derived from
//! the compiled form (nothing else is kept of the document). It is itself a valid configuration.
//! The views borrow the compiled structs; serde_json's map orders the keys by name.

use serde::Serialize;
use serde_json::Value;

use super::types::OriginSource;
use super::types::{CredentialSource, CredentialSources};
use super::{Domain, Mirror, OriginKind, OriginSet, PluginConfig, Probe, Scheme, Target, REDACTED};

impl PluginConfig {
    /// The configuration with every default filled in, as `check` prints it.
    pub fn normalized(&self) -> Value {
        // Serializing borrowed strings and numbers into a map cannot fail.
        serde_json::to_value(ConfigView::from(self)).unwrap_or(Value::Null)
    }

    /// `origin-pull check`'s document: the normalized configuration and every cluster the
    /// Envoy configuration must define for it.
    pub fn check_document(&self) -> Value {
        let mut out = self.normalized();
        if let Some(map) = out.as_object_mut() {
            map.insert(
                "required_envoy_clusters".into(),
                self.required_clusters().into(),
            );
        }
        out
    }
}

#[derive(Serialize)]
struct ConfigView<'a> {
    domains: Vec<DomainView<'a>>,
    unknown_host_status: u32,
    debug_headers: bool,
    envoy: EnvoyView<'a>,
    metrics: MetricsView,
}

#[derive(Serialize)]
struct EnvoyView<'a> {
    cluster_header: &'a str,
    ip_cluster_http: &'a str,
    ip_cluster_https: &'a str,
    failover: &'static str,
}

#[derive(Serialize)]
struct MetricsView {
    per_origin: bool,
    max_origin_series: u32,
}

#[derive(Serialize)]
struct DomainView<'a> {
    domain: &'a str,
    master: OriginView<'a>,
    slave: Option<OriginView<'a>>,
    master_slave_switch: bool,
    failover: FailoverView<'a>,
    detection: DetectionView,
    mirror: Option<MirrorView<'a>>,
}

#[derive(Serialize)]
struct FailoverView<'a> {
    on: Vec<&'static str>,
    status_codes: &'a [u32],
    methods: &'a [String],
    max_request_body_bytes: u64,
    max_response_body_bytes: u64,
    master_retries: u32,
    timeout_ms: u64,
}

#[derive(Serialize)]
struct DetectionView {
    block_seconds: u64,
    block_on_5xx: bool,
    failure_threshold: u32,
    failure_window_seconds: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    probe: Option<ProbeView>,
}

/// Exactly one of `ips`, `domain`, `clusters` and `bucket` is set, as in the document.
#[derive(Serialize)]
struct OriginView<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    ips: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    domain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    clusters: Option<Vec<ClusterView<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bucket: Option<BucketView<'a>>,
    /// Left out for `clusters`, whose transport socket decides.
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<&'static str>,
    host: Option<&'a str>,
    /// Only a probe given on this origin set (an inherited one shows under `detection`).
    #[serde(skip_serializing_if = "Option::is_none")]
    probe: Option<ProbeView>,
}

#[derive(Serialize)]
struct ClusterView<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    weight: Option<u32>,
}

#[derive(Serialize)]
struct BucketView<'a> {
    endpoint: String,
    bucket: &'a str,
    region: &'a str,
    key_prefix: &'a str,
    addressing: &'static str,
    credentials: Option<CredentialsView<'a>>,
}

/// Each credential under the field it was given in; a secret given inline is never shown.
#[derive(Serialize)]
struct CredentialsView<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    access_key_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    access_key_id_env: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_access_key: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_access_key_env: Option<&'a str>,
}

#[derive(Serialize)]
struct ProbeView {
    path: String,
    interval_ms: u64,
    timeout_ms: u64,
    expected_statuses: Vec<ExpectedView>,
    host: Option<String>,
    unhealthy_threshold: u32,
    healthy_threshold: u32,
}

/// A single code, or a whole class (`"2xx"`) as it may be written.
#[derive(Serialize)]
#[serde(untagged)]
enum ExpectedView {
    Code(u32),
    Class(String),
}

#[derive(Serialize)]
struct MirrorView<'a> {
    source: OriginView<'a>,
    mode: &'static str,
    pass_query_string: bool,
    key_prefixes: &'a [String],
    on_status: &'a [u32],
    copy_back: bool,
    max_copy_backs_per_minute: u32,
    max_copy_bytes: u64,
    on_source_failure: &'static str,
}

impl<'a> From<&'a PluginConfig> for ConfigView<'a> {
    fn from(config: &'a PluginConfig) -> Self {
        ConfigView {
            domains: config.domains.iter().map(DomainView::from).collect(),
            unknown_host_status: config.unknown_host_status,
            debug_headers: config.debug_headers,
            envoy: EnvoyView {
                cluster_header: &config.envoy.cluster_header,
                ip_cluster_http: &config.envoy.ip_cluster_http,
                ip_cluster_https: &config.envoy.ip_cluster_https,
                failover: config.envoy.failover.as_str(),
            },
            metrics: MetricsView {
                per_origin: config.metrics.per_origin,
                max_origin_series: config.metrics.max_origin_series,
            },
        }
    }
}

impl<'a> From<&'a Domain> for DomainView<'a> {
    fn from(d: &'a Domain) -> Self {
        // Shown as written: the compiled domain has its roles swapped already.
        let (master, slave) = match (d.switched, &d.slave) {
            (true, Some(original_master)) => (original_master, Some(&d.master)),
            _ => (&d.master, d.slave.as_ref()),
        };
        let f = &d.failover;
        let on = [
            (f.on_4xx, "4xx"),
            (f.on_5xx, "5xx"),
            (f.on_connect_error, "connect_error"),
            (f.on_timeout, "timeout"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        DomainView {
            domain: &d.name,
            master: OriginView::from(master),
            slave: slave.map(OriginView::from),
            master_slave_switch: d.switched,
            failover: FailoverView {
                on,
                status_codes: &f.status_codes,
                methods: &f.methods,
                max_request_body_bytes: f.max_request_body_bytes,
                max_response_body_bytes: f.max_response_body_bytes,
                master_retries: f.master_retries,
                timeout_ms: f.timeout_ms,
            },
            detection: DetectionView {
                block_seconds: d.detection.block_ms / 1000,
                block_on_5xx: d.detection.block_on_5xx,
                failure_threshold: d.detection.failure_threshold,
                failure_window_seconds: d.detection.failure_window_ms / 1000,
                probe: domain_probe(d).map(ProbeView::from),
            },
            mirror: d.mirror.as_deref().map(MirrorView::from),
        }
    }
}

/// The domain-level probe as configured (`detection.probe`): the one an origin set inherited.
fn domain_probe(d: &Domain) -> Option<&Probe> {
    [Some(&d.master), d.slave.as_ref()]
        .into_iter()
        .flatten()
        .find(|set| !set.own_probe)
        .and_then(|set| set.probe.as_deref())
}

impl<'a> From<&'a OriginSet> for OriginView<'a> {
    fn from(set: &'a OriginSet) -> Self {
        let mut view = OriginView {
            ips: None,
            domain: None,
            clusters: None,
            bucket: None,
            protocol: (set.kind != OriginKind::Clusters).then(|| set.protocol.as_str()),
            host: set.host.as_deref(),
            probe: set
                .probe
                .as_deref()
                .filter(|_| set.own_probe)
                .map(ProbeView::from),
        };
        match &set.source {
            OriginSource::Ips => view.ips = Some(targets_as_text(&set.targets)),
            OriginSource::Domain(entry) => view.domain = Some(entry.to_string()),
            OriginSource::Clusters => {
                // A single cluster may not carry a weight: print it the way it may be written.
                let weighted = set.targets.len() > 1;
                let clusters = set.targets.iter().map(|t| ClusterView {
                    name: &t.route(Scheme::Http).cluster,
                    weight: weighted.then_some(t.weight),
                });
                view.clusters = Some(clusters.collect());
            }
            OriginSource::Bucket {
                endpoint,
                credentials,
            } => {
                view.bucket = set.bucket.as_deref().map(|b| BucketView {
                    endpoint: endpoint.to_string(),
                    bucket: &b.name,
                    region: &b.region,
                    key_prefix: &b.key_prefix,
                    addressing: b.addressing.as_str(),
                    credentials: credentials.as_ref().map(|sources| {
                        let key_id = b.signer.as_ref().map_or("", |s| &s.access_key_id);
                        CredentialsView::new(sources, key_id)
                    }),
                })
            }
        }
        view
    }
}

impl<'a> CredentialsView<'a> {
    fn new(sources: &'a CredentialSources, key_id: &'a str) -> Self {
        let mut view = CredentialsView {
            access_key_id: None,
            access_key_id_env: None,
            secret_access_key: None,
            secret_access_key_env: None,
        };
        match &sources.access_key_id {
            CredentialSource::Inline => view.access_key_id = Some(key_id),
            CredentialSource::Env(name) => view.access_key_id_env = Some(name),
        }
        match &sources.secret_access_key {
            CredentialSource::Inline => view.secret_access_key = Some(REDACTED),
            CredentialSource::Env(name) => view.secret_access_key_env = Some(name),
        }
        view
    }
}

impl From<&Probe> for ProbeView {
    fn from(probe: &Probe) -> Self {
        let expected_statuses = probe
            .expected
            .iter()
            .map(|&(low, high)| match low == high {
                true => ExpectedView::Code(low),
                false => ExpectedView::Class(format!("{}xx", low / 100)),
            })
            .collect();
        ProbeView {
            path: probe.path.clone(),
            interval_ms: probe.interval_ms,
            timeout_ms: probe.timeout_ms,
            expected_statuses,
            host: probe.host.clone(),
            unhealthy_threshold: probe.unhealthy_threshold,
            healthy_threshold: probe.healthy_threshold,
        }
    }
}

impl<'a> From<&'a Mirror> for MirrorView<'a> {
    fn from(m: &'a Mirror) -> Self {
        MirrorView {
            source: OriginView::from(&m.source),
            mode: m.mode.as_str(),
            pass_query_string: m.pass_query_string,
            key_prefixes: &m.key_prefixes,
            on_status: &m.on_status,
            copy_back: m.copy_back,
            max_copy_backs_per_minute: m.max_copy_backs_per_minute,
            max_copy_bytes: m.max_copy_bytes,
            on_source_failure: m.on_source_failure.as_str(),
        }
    }
}

/// IP targets as entries `parse_ip_entry` accepts again: no weight on a single IP or on a list
/// with IPv6 (the rules forbid it; all weights are then 1), and no port where `follow` left it
/// to the client's scheme.
fn targets_as_text(targets: &[Target]) -> Vec<String> {
    let addrs = |t: &Target| {
        t.routes
            .each_ref()
            .map(|r| r.label.parse::<std::net::SocketAddr>().ok())
    };
    let weighted = targets.len() > 1
        && targets
            .iter()
            .all(|t| addrs(t)[0].is_some_and(|a| a.is_ipv4()));
    targets
        .iter()
        .map(|t| {
            let label = &t.route(Scheme::Http).label;
            let text = match addrs(t) {
                [Some(http), Some(https)] if http.port() != https.port() => http.ip().to_string(),
                _ => label.to_string(),
            };
            match (weighted, text.contains(':')) {
                (false, _) => text,
                (true, true) => format!("{text}:{}", t.weight),
                (true, false) => format!("{text}::{}", t.weight),
            }
        })
        .collect()
}
