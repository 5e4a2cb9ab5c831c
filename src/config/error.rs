//! Configuration errors: every one names the domain, the field and the offending value, on one
//! line whatever the input holds.

use std::fmt;

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
            write!(f, "domain {:?}: ", shorten(domain))?;
        }
        write!(f, "field {}", self.field)?;
        if let Some(value) = &self.value {
            write!(f, " value {:?}", shorten(value))?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Control characters escaped (no log injection) and the length bounded.
pub(super) fn one_line(text: &str) -> String {
    const LIMIT: usize = 400;
    let mut out = String::with_capacity(text.len().min(LIMIT));
    for c in text.chars().take(LIMIT) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if text.chars().count() > LIMIT {
        out.push('…');
    }
    out
}

/// Long values are cut so one hostile field cannot flood the log.
pub(super) fn shorten(text: &str) -> String {
    const LIMIT: usize = 96;
    if text.chars().count() <= LIMIT {
        return text.to_string();
    }
    let cut: String = text.chars().take(LIMIT).collect();
    format!("{cut}…")
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
