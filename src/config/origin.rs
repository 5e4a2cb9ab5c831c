//! Origin sets: the kind dispatch, and the `ips`, `domain` and `clusters` kinds (buckets are in
//! `bucket`). Every target gets one precomputed [`Route`] per client scheme.

use std::collections::HashSet;
use std::rc::Rc;

use super::bucket::compile_bucket;
use super::error::Ctx;
use super::names::{check_cluster_name, dns_routes, effective_scheme};
use super::raw::{RawCluster, RawOrigin};
use super::types::{HostPort, OriginSource};
use super::{
    ConfigError, EnvLookup, EnvoyNames, OriginKind, OriginSet, Protocol, Route, Scheme, Target,
};
use crate::config::address::{
    parse_domain_entry, parse_ip_entry, validate_host_header, MAX_WEIGHT,
};

pub(super) fn compile_origin(
    raw: RawOrigin<'_>,
    accelerated: &str,
    envoy: &EnvoyNames,
    env: EnvLookup,
    ctx: &Ctx,
) -> Result<OriginSet, ConfigError> {
    let given = [
        raw.ips.is_some(),
        raw.domain.is_some(),
        raw.clusters.is_some(),
        raw.bucket.is_some(),
    ]
    .iter()
    .filter(|g| **g)
    .count();
    if given != 1 {
        return Err(ctx.err(
            "",
            Some(format!("{given} of ips/domain/clusters/bucket")),
            "set exactly one of `ips` (several IPs), `domain` (one domain name), `clusters` (Envoy clusters) or `bucket` (object storage)",
        ));
    }
    let protocol = match raw.protocol.as_deref() {
        None | Some("http") => Protocol::Http,
        Some("https") => Protocol::Https,
        Some("follow") => Protocol::Follow,
        Some(other) => {
            return Err(ctx.err(
                "protocol",
                Some(other.into()),
                "must be one of \"http\", \"https\", \"follow\" (same as the client)",
            ))
        }
    };
    if let Some(host) = &raw.host {
        validate_host_header(host).map_err(|r| ctx.err("host", Some(host.clone()), r))?;
    }
    let host = raw.host.map(|h| h.to_ascii_lowercase());
    let mut bucket = None;
    let (kind, targets, source) = if let Some(raw_bucket) = raw.bucket {
        if let Some(h) = &host {
            return Err(ctx.err(
                "host",
                Some(h.clone()),
                "is the bucket's own host name for `bucket` origins (it is signed); remove it",
            ));
        }
        let (compiled, routes, source) =
            compile_bucket(*raw_bucket, protocol, env, &ctx.nested("bucket"))?;
        bucket = Some(Box::new(compiled));
        (
            OriginKind::Bucket,
            vec![Target { weight: 1, routes }],
            source,
        )
    } else if let Some(ips) = raw.ips {
        let targets = compile_ips(&ips, protocol, envoy, ctx)?;
        (OriginKind::Ips, targets, OriginSource::Ips)
    } else if let Some(domain) = raw.domain {
        let entry =
            parse_domain_entry(&domain).map_err(|r| ctx.err("domain", Some(domain.clone()), r))?;
        if domain_loops(&entry.name, accelerated) {
            return Err(ctx.err(
                "domain",
                Some(domain.clone()),
                format!(
                    "is the accelerated domain '{accelerated}' itself (or matches it); requests would loop back into this edge"
                ),
            ));
        }
        let routes = dns_routes(protocol, &entry.name, entry.port, |port| {
            format!("{}:{port}", entry.name)
        });
        let source = OriginSource::Domain(HostPort {
            name: entry.name,
            port: entry.port,
        });
        (
            OriginKind::Domain,
            vec![Target { weight: 1, routes }],
            source,
        )
    } else {
        let clusters = raw.clusters.unwrap_or_default();
        if raw.protocol.is_some() {
            return Err(ctx.err(
                "protocol",
                raw.protocol.clone(),
                "is decided by the cluster's own transport socket for `clusters` origins; remove it",
            ));
        }
        let targets = compile_clusters(&clusters, ctx)?;
        (OriginKind::Clusters, targets, OriginSource::Clusters)
    };
    let mut cumulative_weights = Vec::with_capacity(targets.len());
    let mut sum = 0u64;
    for target in &targets {
        sum += u64::from(target.weight);
        cumulative_weights.push(sum);
    }
    Ok(OriginSet {
        kind,
        protocol,
        host,
        targets,
        probe: None,
        cumulative_weights,
        bucket,
        source,
        own_probe: false,
    })
}

fn domain_loops(origin: &str, accelerated: &str) -> bool {
    if accelerated == "*" {
        return false;
    }
    match accelerated.strip_prefix('*') {
        Some(suffix) => origin.ends_with(suffix),
        None => origin == accelerated,
    }
}

fn compile_ips(
    ips: &[&str],
    protocol: Protocol,
    envoy: &EnvoyNames,
    ctx: &Ctx,
) -> Result<Vec<Target>, ConfigError> {
    if ips.is_empty() {
        return Err(ctx.err(
            "ips",
            Some("[]".into()),
            "the list is empty; give at least one IP",
        ));
    }
    let mut entries = Vec::with_capacity(ips.len());
    for (i, text) in ips.iter().enumerate() {
        let entry = parse_ip_entry(text)
            .map_err(|r| ctx.err(&format!("ips[{i}]"), Some(text.to_string()), r))?;
        entries.push(entry);
    }
    let weighted = entries.iter().filter(|e| e.weight.is_some()).count();
    if entries.len() == 1 && weighted == 1 {
        return Err(ctx.err(
            "ips[0]",
            ips.first().map(|t| t.to_string()),
            "a single origin IP may not carry a weight",
        ));
    }
    if weighted != 0 && weighted != entries.len() {
        let (i, text) = ips
            .iter()
            .enumerate()
            .zip(&entries)
            .find(|(_, e)| e.weight.is_none())
            .map(|((i, t), _)| (i, t.to_string()))
            .unwrap_or((0, String::new()));
        let reason = if entries.iter().any(|e| e.ip.is_ipv6()) {
            "either every IP has a weight or none does; IPv6 addresses cannot carry one, so do not weight a list that contains IPv6"
        } else {
            "either every IP has a weight or none does"
        };
        return Err(ctx.err(&format!("ips[{i}]"), Some(text), reason));
    }
    if weighted != 0 && entries.iter().all(|e| e.weight == Some(0)) {
        return Err(ctx.err(
            "ips",
            Some(ips.join(",")),
            "every weight is 0, so no IP could ever be picked",
        ));
    }
    // Origin sets are small: a linear scan beats hashing (a set per domain, 10,000 domains).
    let mut seen: Vec<std::net::SocketAddr> = Vec::with_capacity(entries.len());
    let mut targets = Vec::with_capacity(entries.len());
    let route = |entry: &crate::config::address::IpEntry, client: Scheme| {
        let scheme = effective_scheme(protocol, client);
        let port = entry.port.unwrap_or(scheme.default_port());
        let address: Rc<str> = crate::config::address::socket_text(entry.ip, port).into();
        Route {
            cluster: match scheme {
                Scheme::Http => envoy.ip_cluster_http.clone(),
                Scheme::Https => envoy.ip_cluster_https.clone(),
            },
            original_dst: Some(address.clone()),
            label: address,
            scheme: Some(scheme),
        }
    };
    for (i, entry) in entries.iter().enumerate() {
        let http = route(entry, Scheme::Http);
        // Only `follow` routes the two client schemes differently: format the address once.
        let https = match protocol {
            Protocol::Follow => route(entry, Scheme::Https),
            _ => http.clone(),
        };
        let routes = [http, https];
        let http_port = entry
            .port
            .unwrap_or(effective_scheme(protocol, Scheme::Http).default_port());
        let addr = std::net::SocketAddr::new(entry.ip, http_port);
        if seen.contains(&addr) {
            return Err(ctx.err(
                &format!("ips[{i}]"),
                ips.get(i).map(|t| t.to_string()),
                "is listed twice; list each IP:PORT once and use weights instead",
            ));
        }
        seen.push(addr);
        targets.push(Target {
            weight: entry.weight.unwrap_or(1),
            routes,
        });
    }
    Ok(targets)
}

fn compile_clusters(clusters: &[RawCluster], ctx: &Ctx) -> Result<Vec<Target>, ConfigError> {
    if clusters.is_empty() {
        return Err(ctx.err(
            "clusters",
            Some("[]".into()),
            "the list is empty; give at least one cluster",
        ));
    }
    let weighted = clusters.iter().filter(|c| c.weight.is_some()).count();
    if clusters.len() == 1 && weighted == 1 {
        return Err(ctx.err(
            "clusters[0].weight",
            clusters
                .first()
                .and_then(|c| c.weight)
                .map(|w| w.to_string()),
            "a single origin cluster may not carry a weight",
        ));
    }
    if weighted != 0 && weighted != clusters.len() {
        return Err(ctx.err(
            "clusters",
            None,
            "either every cluster has a weight or none does",
        ));
    }
    let mut seen = HashSet::new();
    let mut targets = Vec::with_capacity(clusters.len());
    for (i, cluster) in clusters.iter().enumerate() {
        check_cluster_name(&cluster.name).map_err(|r| {
            ctx.err(
                &format!("clusters[{i}].name"),
                Some(cluster.name.clone()),
                r,
            )
        })?;
        if !seen.insert(cluster.name.as_str()) {
            return Err(ctx.err(
                &format!("clusters[{i}].name"),
                Some(cluster.name.clone()),
                "is listed twice",
            ));
        }
        let weight = cluster.weight.unwrap_or(1);
        if weight > MAX_WEIGHT {
            return Err(ctx.err(
                &format!("clusters[{i}].weight"),
                Some(weight.to_string()),
                format!("is out of range 0..={MAX_WEIGHT}"),
            ));
        }
        let name: Rc<str> = cluster.name.as_str().into();
        let route = Route {
            cluster: name.clone(),
            original_dst: None,
            label: name,
            scheme: None,
        };
        targets.push(Target {
            weight,
            routes: [route.clone(), route],
        });
    }
    if targets.iter().all(|t| t.weight == 0) {
        return Err(ctx.err(
            "clusters",
            None,
            "every weight is 0, so no cluster could ever be picked",
        ));
    }
    Ok(targets)
}
