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

/// The hasher of the request path's maps: origin slots, stat ids, chain ids and the domain
/// names of a configuration. Their keys are either made by the filter or looked up in a table
/// fixed at configure time (a client's `Host` cannot add keys, so cannot flood a bucket): a
/// multiply per word is hash enough (SipHash was a twentieth of a request's instructions).
#[derive(Debug, Default)]
pub struct FastHasher(u64);

const FAST_HASH_K: u64 = 0x9E37_79B9_7F4A_7C15;

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        // The high bits (where a multiply puts its mixing) folded into the low ones, which
        // pick the bucket.
        self.0 ^ (self.0 >> 32)
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            self.write_u64(u64::from_le_bytes(w));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w.iter_mut().zip(rest).for_each(|(d, s)| *d = *s);
            self.write_u64(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(FAST_HASH_K);
    }
}

#[cfg(test)]
mod fast_hasher_tests {
    use super::FastHasher;
    use std::hash::{BuildHasher, BuildHasherDefault};

    fn hash<T: std::hash::Hash + ?Sized>(value: &T) -> u64 {
        BuildHasherDefault::<FastHasher>::default().hash_one(value)
    }

    #[test]
    fn equal_keys_hash_equal_and_near_keys_apart() {
        assert_eq!(hash("www.test.com"), hash(&"www.test.com".to_string()));
        let names = [
            "a",
            "a\0",
            "b",
            "",
            "www.test.com",
            "www.test.con",
            "xwww.test.com",
        ];
        let mut hashes: Vec<u64> = names.iter().map(|n| hash(*n)).collect();
        hashes.sort_unstable();
        hashes.dedup();
        assert_eq!(hashes.len(), names.len());
        // Slots of one target in different domains do not share their low (bucket) bits.
        let low: std::collections::HashSet<u64> =
            (0..64u64).map(|d| hash(&(d << 32 | 4)) & 0xff).collect();
        assert!(low.len() > 32, "{low:?}");
    }
}
