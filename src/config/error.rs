//! Configuration errors: every one names the domain, the field and the offending value, on one
//! line whatever the input holds.

use std::fmt;

use crate::types::printable;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub domain: Option<String>,
    pub field: String,
    pub value: Option<String>,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid origin-pull configuration: ")?;
        if let Some(domain) = &self.domain {
            write!(f, "domain {}: ", quoted(domain))?;
        }
        write!(f, "field {}", self.field)?;
        if let Some(value) = &self.value {
            write!(f, " value {}", quoted(value))?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// In double quotes as Rust's `{:?}` writes a string (quotes and backslashes escaped), then
/// [`printable`].
fn quoted(text: &str) -> String {
    let escaped = text.replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{}\"", printable(&escaped))
}

pub(super) struct Ctx<'a> {
    pub(super) domain: Option<&'a str>,
    pub(super) prefix: String,
}

impl Ctx<'_> {
    pub(super) fn err(
        &self,
        field: &str,
        value: Option<String>,
        reason: impl Into<String>,
    ) -> ConfigError {
        let field = match (self.prefix.is_empty(), field.is_empty()) {
            (true, _) => field.to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}.{field}", self.prefix),
        };
        ConfigError {
            domain: self.domain.map(str::to_string),
            field,
            value,
            reason: reason.into(),
        }
    }
    pub(super) fn nested(&self, prefix: &str) -> Ctx<'_> {
        Ctx {
            domain: self.domain,
            prefix: if self.prefix.is_empty() {
                prefix.to_string()
            } else {
                format!("{}.{prefix}", self.prefix)
            },
        }
    }
}
