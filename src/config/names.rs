//! Envoy cluster names: the checks a configured name must pass, and the DNS cluster naming
//! scheme `render` creates and the routes to those clusters (used by several origin kinds).

use super::types::{Protocol, Route, Scheme};

/// A cluster name Envoy accepts: not empty, at most 255 characters, no whitespace.
pub(super) fn check_cluster_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > 255 {
        return Err("is longer than 255 characters".into());
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or control characters".into());
    }
    Ok(())
}

/// The route per client scheme to a host Envoy resolves by name (a DNS cluster per scheme and
/// port); `label` names the origin for a port.
pub(super) fn dns_routes(
    protocol: Protocol,
    host: &str,
    port: Option<u16>,
    label: impl Fn(u16) -> String,
) -> [Route; 2] {
    Scheme::ALL.map(|client| {
        let scheme = effective_scheme(protocol, client);
        let port = port.unwrap_or(scheme.default_port());
        Route {
            cluster: dns_cluster_name(scheme, host, port).into(),
            original_dst: None,
            label: label(port).into(),
            scheme: Some(scheme),
        }
    })
}

pub(super) fn effective_scheme(protocol: Protocol, client: Scheme) -> Scheme {
    match protocol {
        Protocol::Http => Scheme::Http,
        Protocol::Https => Scheme::Https,
        Protocol::Follow => client,
    }
}

/// Name of the Envoy DNS cluster a domain origin is routed through (`render` creates it).
pub fn dns_cluster_name(scheme: Scheme, name: &str, port: u16) -> String {
    format!("origin_pull|{}|{name}|{port}", scheme.as_str())
}

/// The parts of a [`dns_cluster_name`]: scheme, origin name, port.
pub fn parse_dns_cluster_name(cluster: &str) -> Option<(Scheme, &str, u16)> {
    let mut parts = cluster.split('|');
    let (prefix, scheme, name, port) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if prefix != "origin_pull" || parts.next().is_some() || name.is_empty() {
        return None;
    }
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return None,
    };
    Some((scheme, name, port.parse().ok()?))
}
