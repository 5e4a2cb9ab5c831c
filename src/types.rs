//! Small types shared by `config` and `engine` (and the glue), kept here so that neither has
//! to import the other's internals: the import graph stays acyclic (tools/check_imports.py).

/// Which origin set of a domain an attempt goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Master = 0,
    Slave = 1,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Slave => "slave",
        }
    }

    /// Its slot in per-role tables and keys (the one mapping of roles to numbers).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The scheme actually used towards an origin for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http = 0,
    Https = 1,
}

impl Scheme {
    /// Every scheme, in [`Scheme::index`] order: per-scheme tables are built over it.
    pub const ALL: [Scheme; 2] = [Scheme::Http, Scheme::Https];

    pub fn from_request(scheme: &str) -> Scheme {
        if scheme.eq_ignore_ascii_case("https") {
            Scheme::Https
        } else {
            Scheme::Http
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// Its slot in per-scheme tables and keys (the one mapping of schemes to numbers).
    pub fn index(self) -> usize {
        self as usize
    }

    /// This scheme's entry of a per-scheme table built over [`Scheme::ALL`].
    pub fn pick<T>(self, table: &[T; 2]) -> &T {
        let [http, https] = table;
        match self {
            Scheme::Http => http,
            Scheme::Https => https,
        }
    }
}

/// A domain's blocking rule (from `detection.*`), in the form `engine::verdict` judges by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// 0: never block (and never skip a block).
    pub block_ms: u64,
    /// Strikes from distinct requests within `window_ms` that block (1 = the first one).
    pub threshold: u32,
    pub window_ms: u64,
}

/// How many characters of a text from outside (a client's host or path, an object key, a
/// configuration value or a parser's message quoting one) a log line or an error shows.
pub const MAX_SHOWN_CHARS: usize = 200;

/// Text from outside as it may go into a log line or an error: one line (control characters
/// escaped as Rust writes them: `\n`, `\u{1b}`), at most [`MAX_SHOWN_CHARS`] characters of it,
/// then `…` if it was longer. So no client, origin or configuration can forge or flood a line.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_SHOWN_CHARS));
    let mut chars = text.chars();
    for c in chars.by_ref().take(MAX_SHOWN_CHARS) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{printable, Role, Scheme, MAX_SHOWN_CHARS};

    #[test]
    fn printable_text_is_one_bounded_line() {
        assert_eq!(
            printable("a.com\r\nx: \u{1b}[31m"),
            "a.com\\r\\nx: \\u{1b}[31m"
        );
        assert_eq!(printable("plain \"quoted\" é"), "plain \"quoted\" é");
        let long = "é".repeat(MAX_SHOWN_CHARS + 1);
        let shown = printable(&long);
        assert_eq!(shown.chars().count(), MAX_SHOWN_CHARS + 1);
        assert!(shown.ends_with("é…"));
        assert_eq!(
            printable(&long[..2 * MAX_SHOWN_CHARS]),
            long[..2 * MAX_SHOWN_CHARS]
        );
    }

    #[test]
    fn indexes_follow_the_tables() {
        assert_eq!(Scheme::ALL.map(Scheme::index), [0, 1]);
        assert_eq!(Scheme::Https.pick(&["a", "b"]), &"b");
        assert_eq!(Scheme::Http.pick(&["a", "b"]), &"a");
        assert_eq!([Role::Master.index(), Role::Slave.index()], [0, 1]);
    }
}
