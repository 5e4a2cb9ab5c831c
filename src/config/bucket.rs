//! `bucket` origins (S3-compatible object storage): endpoint, addressing style, key prefix and
//! the signing credentials, given inline or by the name of a VM environment variable.

use super::error::Ctx;
use super::names::dns_routes;
use super::raw::RawBucket;
use super::types::{CredentialSource, CredentialSources, HostPort, OriginSource};
use super::{ConfigError, EnvLookup, Protocol, Route, REDACTED};
use crate::config::address::parse_domain_entry;
use crate::s3::bucket::{Addressing, Bucket};
use crate::s3::sigv4::{Secret, Signer};

pub(super) fn compile_bucket(
    raw: RawBucket,
    protocol: Protocol,
    env: EnvLookup,
    ctx: &Ctx,
) -> Result<(Bucket, [Route; 2], OriginSource), ConfigError> {
    if raw.endpoint.contains("://") {
        return Err(ctx.err(
            "endpoint",
            Some(raw.endpoint.clone()),
            "give the host name without a scheme (set `protocol` for https)",
        ));
    }
    let entry = parse_domain_entry(&raw.endpoint)
        .map_err(|r| ctx.err("endpoint", Some(raw.endpoint.clone()), r))?;
    let name = raw.bucket.as_str();
    let name_ok = (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !name_ok {
        return Err(ctx.err(
            "bucket",
            Some(raw.bucket.clone()),
            "must be 3-63 characters of a-z, 0-9, '.' and '-', starting and ending with a letter or digit",
        ));
    }
    let region_ok = !raw.region.is_empty()
        && raw.region.len() <= 64
        && raw
            .region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !region_ok {
        return Err(ctx.err(
            "region",
            Some(raw.region.clone()),
            "must be a region name such as \"us-east-1\" (letters, digits, '-', '_')",
        ));
    }
    let key_prefix = raw.key_prefix.unwrap_or_default();
    if key_prefix.starts_with('/') || key_prefix.chars().any(char::is_control) {
        return Err(ctx.err(
            "key_prefix",
            Some(key_prefix),
            "must not start with '/' or contain control characters (e.g. \"media/\")",
        ));
    }
    let addressing = match raw.addressing.as_deref() {
        None | Some("virtual-hosted") => Addressing::VirtualHosted,
        Some("path") => Addressing::Path,
        Some(other) => return Err(ctx.err(
            "addressing",
            Some(other.into()),
            "must be \"virtual-hosted\" (bucket.endpoint/key) or \"path\" (endpoint/bucket/key)",
        )),
    };
    let host = match addressing {
        Addressing::VirtualHosted => format!("{name}.{}", entry.name),
        Addressing::Path => entry.name.clone(),
    };
    let authority = match entry.port {
        Some(port) => format!("{host}:{port}"),
        None => host.clone(),
    };
    let routes = dns_routes(protocol, &host, entry.port, |port| match addressing {
        Addressing::VirtualHosted => format!("{host}:{port}"),
        Addressing::Path => format!("{host}:{port}/{name}"),
    });
    let (signer, credentials) = match raw.credentials {
        None => (None, None),
        Some(c) => {
            let ctx = ctx.nested("credentials");
            let (key_id, access_key_id) = credential(
                c.access_key_id,
                c.access_key_id_env,
                "access_key_id",
                false,
                env,
                &ctx,
            )?;
            let (secret, secret_access_key) = credential(
                c.secret_access_key,
                c.secret_access_key_env,
                "secret_access_key",
                true,
                env,
                &ctx,
            )?;
            let signer = Signer::new(key_id, Secret::new(secret), raw.region.clone(), "s3".into());
            let sources = CredentialSources {
                access_key_id,
                secret_access_key,
            };
            (Some(signer), Some(sources))
        }
    };
    let source = OriginSource::Bucket {
        endpoint: HostPort {
            name: entry.name,
            port: entry.port,
        },
        credentials,
    };
    let bucket = Bucket {
        name: raw.bucket,
        region: raw.region,
        key_prefix,
        addressing,
        authority,
        signer,
    };
    Ok((bucket, routes, source))
}

/// One credential, given inline (`field`) or by the name of a VM environment variable
/// (`field_env`). Returns the value and where it came from (`check` never shows a secret).
fn credential(
    inline: Option<String>,
    from_env: Option<String>,
    field: &str,
    secret: bool,
    env: EnvLookup,
    ctx: &Ctx,
) -> Result<(String, CredentialSource), ConfigError> {
    let env_field = format!("{field}_env");
    let (value, source) = match (inline, from_env) {
        (Some(value), None) => (value, CredentialSource::Inline),
        (None, Some(name)) => {
            let valid_name = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_');
            // The value is redacted even here: a secret pasted into the `_env` field is the
            // likely mistake, and an alphanumeric secret (OSS) is also a valid variable name.
            if !valid_name {
                return Err(ctx.err(
                    &env_field,
                    Some(REDACTED.to_string()),
                    "must be an environment variable name (A-Z, a-z, 0-9, '_'); is a credential in the `_env` field instead of a variable's name?",
                ));
            }
            let Some(value) = env(&name) else {
                return Err(ctx.err(
                    &env_field,
                    Some(REDACTED.to_string()),
                    "the variable it names is not set in the VM's environment; pass it with vm_config.environment_variables (host_env_keys or key_values)",
                ));
            };
            (value, CredentialSource::Env(name))
        }
        (Some(_), Some(_)) => {
            return Err(ctx.err(
                field,
                Some(REDACTED.to_string()),
                format!("set either `{field}` or `{env_field}`, not both"),
            ))
        }
        (None, None) => {
            return Err(ctx.err(
                field,
                None,
                format!("is missing: set `{field}` or `{env_field}` (leave out `credentials` for a public bucket)"),
            ))
        }
    };
    let bad = value.is_empty()
        || value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || (!secret && (c == '/' || c == ',')));
    if bad {
        // Never the value: an access key id with '/' is likely the secret in the wrong field.
        let named = match source {
            CredentialSource::Inline => field,
            CredentialSource::Env(_) => &env_field,
        };
        return Err(ctx.err(
            named,
            Some(REDACTED.to_string()),
            "is empty or contains characters a credential cannot hold (white space, control characters)",
        ));
    }
    Ok((value, source))
}
