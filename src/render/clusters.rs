//! The Envoy clusters a compiled configuration routes to, as data: `render` turns them into
//! Envoy and Istio resources. A new origin kind adds one match arm.
//!
//! Under render (native only): only render reads these specs; the filter routes by the cluster
//! names `config` builds (`Route::cluster`), so the .wasm needs none of this.

use crate::config::{parse_dns_cluster_name, OriginKind, OriginSet, PluginConfig, Scheme};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterKind {
    /// `ORIGINAL_DST`: the filter names the origin `IP:PORT` in `x-envoy-original-dst-host`.
    OriginalDst,
    /// A DNS-resolved origin name and port.
    Dns { host: String, port: u16 },
    /// A cluster the operator defines (cluster origins, e.g. Istio's `outbound|80||svc`).
    Provided,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    pub name: String,
    pub kind: ClusterKind,
    /// TLS towards the origin (SNI and certificate check use the origin's Host header).
    pub tls: bool,
}

impl PluginConfig {
    /// Every origin set requests may go to: masters, slaves and mirror sources.
    pub fn origin_sets(&self) -> impl Iterator<Item = &OriginSet> {
        self.domains.iter().flat_map(|d| {
            std::iter::once(&d.master)
                .chain(d.slave.as_ref())
                .chain(d.mirror.as_ref().map(|m| &m.source))
        })
    }

    /// Every cluster the filter may route to: the two `ORIGINAL_DST` clusters for IP origins
    /// (always, so a reload that adds IP origins needs no new cluster), then one per domain
    /// origin, bucket host and scheme, then the operator's named clusters; each name once.
    pub fn cluster_specs(&self) -> Vec<ClusterSpec> {
        let mut specs = vec![
            ClusterSpec {
                name: self.envoy.ip_cluster_http.to_string(),
                kind: ClusterKind::OriginalDst,
                tls: false,
            },
            ClusterSpec {
                name: self.envoy.ip_cluster_https.to_string(),
                kind: ClusterKind::OriginalDst,
                tls: true,
            },
        ];
        let mut more = Vec::new();
        for origin in self.origin_sets() {
            for route in origin.targets.iter().flat_map(|t| t.routes.iter()) {
                let spec = match origin.kind {
                    OriginKind::Ips => continue, // the ORIGINAL_DST clusters above
                    // Buckets are reached by their endpoint host like domain origins.
                    OriginKind::Domain | OriginKind::Bucket => {
                        match parse_dns_cluster_name(&route.cluster) {
                            Some((scheme, host, port)) => ClusterSpec {
                                name: route.cluster.to_string(),
                                kind: ClusterKind::Dns {
                                    host: host.to_string(),
                                    port,
                                },
                                tls: scheme == Scheme::Https,
                            },
                            None => continue, // unreachable: config builds the name
                        }
                    }
                    OriginKind::Clusters => ClusterSpec {
                        name: route.cluster.to_string(),
                        kind: ClusterKind::Provided,
                        tls: false,
                    },
                };
                more.push(spec);
            }
        }
        more.sort_by(|a, b| a.name.cmp(&b.name));
        for spec in more {
            if !specs.iter().any(|s| s.name == spec.name) {
                specs.push(spec);
            }
        }
        specs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn specs(json: &str) -> Vec<ClusterSpec> {
        match parse(json.as_bytes()) {
            Ok(config) => config.cluster_specs(),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn ip_origins_use_the_two_original_dst_clusters() {
        let s = specs(
            r#"{"domains":[{"domain":"a.com","master":{"ips":["10.0.0.1:80"],"protocol":"https"}}]}"#,
        );
        let names: Vec<_> = s.iter().map(|c| (c.name.as_str(), c.tls)).collect();
        assert_eq!(
            names,
            [
                ("origin_pull_ip_http", false),
                ("origin_pull_ip_https", true)
            ]
        );
        assert!(s.iter().all(|c| c.kind == ClusterKind::OriginalDst));
    }

    #[test]
    fn renamed_ip_clusters_are_honoured() {
        let s = specs(
            r#"{"domains":[{"domain":"a.com","master":{"ips":["10.0.0.1"]}}],
                "envoy":{"ip_cluster_http":"plain","ip_cluster_https":"secure"}}"#,
        );
        assert_eq!(s[0].name, "plain");
        assert_eq!(s[1].name, "secure");
    }

    #[test]
    fn follow_domain_origin_needs_both_schemes_and_names_are_unique() {
        let s = specs(
            r#"{"domains":[
                {"domain":"a.com","master":{"domain":"o.example.net","protocol":"follow"},
                 "slave":{"domain":"b.example.org:8080"}},
                {"domain":"b.com","master":{"domain":"o.example.net","protocol":"https"}}]}"#,
        );
        let dns: Vec<_> = s
            .iter()
            .filter_map(|c| match &c.kind {
                ClusterKind::Dns { host, port } => {
                    Some((c.name.as_str(), host.as_str(), *port, c.tls))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            dns,
            [
                (
                    "origin_pull|https|o.example.net|443",
                    "o.example.net",
                    443,
                    true
                ),
                (
                    "origin_pull|http|b.example.org|8080",
                    "b.example.org",
                    8080,
                    false
                ),
                (
                    "origin_pull|http|o.example.net|80",
                    "o.example.net",
                    80,
                    false
                ),
            ]
        );
    }

    #[test]
    fn named_clusters_are_provided_by_the_operator() {
        let s = specs(
            r#"{"domains":[{"domain":"a.com","master":{"clusters":[{"name":"outbound|80||x.svc","weight":1},{"name":"b","weight":2}]}}]}"#,
        );
        let provided: Vec<_> = s
            .iter()
            .filter(|c| c.kind == ClusterKind::Provided)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(provided, ["b", "outbound|80||x.svc"]);
    }

    #[test]
    fn buckets_and_mirror_sources_get_dns_clusters() {
        let s = specs(
            r#"{"domains":[{"domain":"a.com",
                "master":{"bucket":{"endpoint":"s3.example.com","bucket":"bkt","region":"r"},"protocol":"https"},
                "mirror":{"source":{"domain":"old.example.net"},"copy_back":false}}]}"#,
        );
        let dns: Vec<_> = s
            .iter()
            .filter(|c| matches!(c.kind, ClusterKind::Dns { .. }))
            .map(|c| (c.name.as_str(), c.tls))
            .collect();
        assert_eq!(
            dns,
            [
                ("origin_pull|https|bkt.s3.example.com|443", true),
                ("origin_pull|http|old.example.net|80", false),
            ]
        );
    }

    #[test]
    fn dns_cluster_names_round_trip() {
        use crate::config::dns_cluster_name;
        let name = dns_cluster_name(Scheme::Https, "o.example.net", 8443);
        assert_eq!(
            parse_dns_cluster_name(&name),
            Some((Scheme::Https, "o.example.net", 8443))
        );
        for bad in [
            "x|http|a|80",
            "origin_pull|ftp|a|80",
            "origin_pull|http||80",
            "origin_pull|http|a|x",
            "origin_pull|http|a|80|9",
        ] {
            assert_eq!(parse_dns_cluster_name(bad), None, "{bad}");
        }
    }
}
