//! Mirror back-to-origin settings of a bucket master (`mirror`): the source to fetch a missed
//! object from, and whether and how much to copy back. `crate::engine::copyback` runs them.

use super::error::Ctx;
use super::names::effective_scheme;
use super::origin::compile_origin;
use super::raw::RawMirror;
use super::types::{Mirror, MirrorMode, OnSourceFailure};
use super::{ConfigError, EnvLookup, EnvoyNames, OriginKind, Scheme, MAX_RESPONSE_BODY};
use crate::config::address::parse_domain_entry;

/// Default of `mirror.max_copy_backs_per_minute` (per domain and worker).
pub const DEFAULT_MAX_COPY_BACKS_PER_MINUTE: u32 = 600;
pub const MAX_COPY_BACKS_PER_MINUTE: u32 = 1_000_000;
pub const DEFAULT_MAX_COPY_BYTES: u64 = 8 << 20;
/// Default of `mirror.on_status`: the bucket's answer for a missing object.
pub const DEFAULT_MIRROR_ON_STATUS: u32 = 404;

pub(super) fn compile_mirror(
    raw: RawMirror<'_>,
    accelerated: &str,
    has_slave: bool,
    envoy: &EnvoyNames,
    env: EnvLookup,
    ctx: &Ctx,
) -> Result<Mirror, ConfigError> {
    let source_domain = raw.source.domain.clone();
    let source = compile_origin(raw.source, accelerated, envoy, env, &ctx.nested("source"))?;
    if source.kind == OriginKind::Bucket {
        return Err(ctx.err(
            "source",
            Some("bucket".into()),
            "the mirror source must be `ips`, `domain` or `clusters`, not another bucket",
        ));
    }
    let mode = match raw.mode.as_deref() {
        None | Some("fetch") => MirrorMode::Fetch,
        Some("redirect") => MirrorMode::Redirect,
        Some(other) => {
            return Err(ctx.err(
                "mode",
                Some(other.into()),
                "must be \"fetch\" (serve from the source and copy back) or \"redirect\" (answer 302 to the source)",
            ))
        }
    };
    // Redirect URLs name the source as the client will reach it: its Host, else its domain.
    let mut redirect_base = [String::new(), String::new()];
    if mode == MirrorMode::Redirect {
        let Some(domain) = source_domain else {
            return Err(ctx.err(
                "mode",
                Some("redirect".into()),
                "redirect mode needs a `domain` source: clients are sent to it by name",
            ));
        };
        let entry = parse_domain_entry(&domain)
            .map_err(|r| ctx.err("source.domain", Some(domain.clone()), r))?;
        for (slot, client) in redirect_base.iter_mut().zip(Scheme::ALL) {
            let scheme = effective_scheme(source.protocol, client);
            let host = source.host.clone().unwrap_or_else(|| match entry.port {
                Some(port) if port != scheme.default_port() => format!("{}:{port}", entry.name),
                _ => entry.name.clone(),
            });
            *slot = format!("{}://{host}", scheme.as_str());
        }
    }
    let mut key_prefixes = raw.key_prefixes.unwrap_or_default();
    for (i, prefix) in key_prefixes.iter_mut().enumerate() {
        if prefix.is_empty() || prefix.starts_with('/') || prefix.chars().any(char::is_control) {
            return Err(ctx.err(
                &format!("key_prefixes[{i}]"),
                Some(prefix.clone()),
                "must be a non-empty object key prefix without a leading '/' (e.g. \"images/\")",
            ));
        }
    }
    let on_status = raw
        .on_status
        .unwrap_or_else(|| vec![DEFAULT_MIRROR_ON_STATUS]);
    if on_status.is_empty() {
        return Err(ctx.err(
            "on_status",
            Some("[]".into()),
            format!("the list is empty; the default is [{DEFAULT_MIRROR_ON_STATUS}]"),
        ));
    }
    for (i, status) in on_status.iter().enumerate() {
        if !(400..=599).contains(status) {
            return Err(ctx.err(
                &format!("on_status[{i}]"),
                Some(status.to_string()),
                "must be an error status 400..=599 (404 for a missing object; 403 where the bucket hides missing keys)",
            ));
        }
    }
    let max_copy_bytes = raw.max_copy_bytes.unwrap_or(DEFAULT_MAX_COPY_BYTES);
    if !(1..=MAX_RESPONSE_BODY).contains(&max_copy_bytes) {
        return Err(ctx.err(
            "max_copy_bytes",
            Some(max_copy_bytes.to_string()),
            format!("must be 1..={MAX_RESPONSE_BODY} (Envoy's 32 MiB async response buffer limit)"),
        ));
    }
    let on_source_failure = match raw.on_source_failure.as_deref() {
        None | Some("not_found") => OnSourceFailure::NotFound,
        Some("source") => OnSourceFailure::Source,
        Some("slave") if has_slave => OnSourceFailure::Slave,
        Some("slave") => {
            return Err(ctx.err(
                "on_source_failure",
                Some("slave".into()),
                "there is no slave origin; add `slave` or choose \"not_found\" or \"source\"",
            ))
        }
        Some(other) => {
            return Err(ctx.err(
                "on_source_failure",
                Some(other.into()),
                "must be \"not_found\" (the bucket's answer), \"source\" (the source's answer) or \"slave\" (fail over)",
            ))
        }
    };
    let pass_query_string = raw.pass_query_string.unwrap_or(false);
    let copy_back = raw.copy_back.unwrap_or(true);
    let max_copy_backs_per_minute = raw
        .max_copy_backs_per_minute
        .unwrap_or(DEFAULT_MAX_COPY_BACKS_PER_MINUTE);
    if !(1..=MAX_COPY_BACKS_PER_MINUTE).contains(&max_copy_backs_per_minute) {
        return Err(ctx.err(
            "max_copy_backs_per_minute",
            Some(max_copy_backs_per_minute.to_string()),
            format!("must be 1..={MAX_COPY_BACKS_PER_MINUTE} (copy-backs per domain and Envoy worker per minute; `copy_back: false` turns copying off)"),
        ));
    }
    Ok(Mirror {
        source,
        mode,
        pass_query_string,
        key_prefixes,
        on_status,
        copy_back,
        max_copy_backs_per_minute,
        max_copy_bytes,
        on_source_failure,
        redirect_base,
    })
}
