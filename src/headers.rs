//! A header map as Envoy hands it to the VM (proxy-wasm's encoding), read in place.
//!
//! Encoding: `count: u32`, then `(name length: u32, value length: u32)` per header, then each
//! `name \0 value \0` (little-endian). The glue keeps the one buffer Envoy copied in: reading a
//! request's host, scheme and method allocates nothing (the SDK's decoder allocates a `Vec`
//! and two `String`s per header), and a value that is not UTF-8 — HTTP allows bytes
//! 0x80–0xff, Envoy passes them — is skipped or replaced instead of panicking (the SDK's
//! decoder unwraps `String::from_utf8`: one such request would abort the VM).

use std::borrow::Cow;

/// One header map in proxy-wasm's encoding, checked once when built: every read is in bounds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderMap {
    bytes: Vec<u8>,
    count: usize,
}

impl HeaderMap {
    /// The map Envoy wrote. A buffer that does not follow the encoding is an empty map.
    pub fn from_wire(bytes: Vec<u8>) -> HeaderMap {
        match checked_count(&bytes) {
            Some(count) => HeaderMap { bytes, count },
            None => HeaderMap::default(),
        }
    }

    /// Encodes `pairs` (tests, the native harness, local replies).
    pub fn from_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> HeaderMap {
        let size = 4 + pairs
            .iter()
            .map(|(k, v)| k.as_ref().len() + v.as_ref().len() + 10)
            .sum::<usize>();
        let mut bytes = Vec::with_capacity(size);
        bytes.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
        for (name, value) in pairs {
            bytes.extend_from_slice(&(name.as_ref().len() as u32).to_le_bytes());
            bytes.extend_from_slice(&(value.as_ref().len() as u32).to_le_bytes());
        }
        for (name, value) in pairs {
            bytes.extend_from_slice(name.as_ref());
            bytes.push(0);
            bytes.extend_from_slice(value.as_ref());
            bytes.push(0);
        }
        HeaderMap {
            count: pairs.len(),
            bytes,
        }
    }

    /// The encoded bytes (what a hostcall that takes a map is given).
    pub fn as_wire(&self) -> &[u8] {
        &self.bytes
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Every header as bytes, in Envoy's order.
    pub fn iter_bytes(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let mut data = 4 + self.count * 8;
        (0..self.count).map_while(move |i| {
            let lengths = 4 + i * 8;
            let name_len = read_u32(&self.bytes, lengths)?;
            let value_len = read_u32(&self.bytes, lengths + 4)?;
            let name = self.bytes.get(data..data + name_len)?;
            let value_start = data + name_len + 1;
            let value = self.bytes.get(value_start..value_start + value_len)?;
            data = value_start + value_len + 1;
            Some((name, value))
        })
    }

    /// Every header whose name and value are UTF-8 (the others are skipped).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.iter_bytes().filter_map(|(name, value)| {
            Some((
                std::str::from_utf8(name).ok()?,
                std::str::from_utf8(value).ok()?,
            ))
        })
    }

    /// The first value of `name` (Envoy's names are lowercase; any case matches), when UTF-8.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter_bytes()
            .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// An owned copy, for a replay: a byte that is not UTF-8 becomes U+FFFD (the callout
    /// hostcall takes text).
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        self.iter_bytes()
            .map(|(name, value)| (lossy(name), lossy(value)))
            .collect()
    }
}

/// A header value that is a decimal number (`:status`, a timeout in ms): ASCII digits only, no
/// sign or spaces, at most 19 of them (so it cannot overflow); anything else is `None`.
pub fn decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

fn lossy(bytes: &[u8]) -> String {
    match String::from_utf8_lossy(bytes) {
        Cow::Borrowed(text) => text.to_owned(),
        Cow::Owned(text) => text,
    }
}

fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let word = bytes.get(at..at + 4)?;
    let word: [u8; 4] = word.try_into().ok()?;
    Some(u32::from_le_bytes(word) as usize)
}

/// The number of headers when `bytes` is a complete map whose lengths stay inside it.
fn checked_count(bytes: &[u8]) -> Option<usize> {
    if bytes.is_empty() {
        return Some(0);
    }
    let count = read_u32(bytes, 0)?;
    let mut data = count.checked_mul(8)?.checked_add(4)?;
    for i in 0..count {
        let name = read_u32(bytes, 4 + i * 8)?;
        let value = read_u32(bytes, 8 + i * 8)?;
        data = data.checked_add(name)?.checked_add(value)?.checked_add(2)?;
    }
    (data <= bytes.len()).then_some(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_it_encodes_in_order() {
        let map = HeaderMap::from_pairs(&[(":authority", "a.test"), ("x-b", ""), ("X-C", "3")]);
        assert_eq!(map.len(), 3);
        let pairs: Vec<_> = map.iter().collect();
        assert_eq!(pairs, [(":authority", "a.test"), ("x-b", ""), ("X-C", "3")]);
        assert_eq!(map.get("x-c"), Some("3"));
        assert_eq!(map.get(":path"), None);
        assert_eq!(HeaderMap::from_wire(map.as_wire().to_vec()), map);
    }

    #[test]
    fn bytes_that_are_not_utf8_are_skipped_or_replaced_never_a_panic() {
        let map = HeaderMap::from_pairs(&[
            (b":authority".as_slice(), b"a.test".as_slice()),
            (b"x-obs", b"caf\xe9 \xff"),
            (b"x-after", b"1"),
        ]);
        assert_eq!(map.get("x-obs"), None);
        assert_eq!(map.get("x-after"), Some("1"));
        assert_eq!(map.iter().count(), 2);
        assert_eq!(
            map.to_pairs()[1],
            ("x-obs".into(), "caf\u{fffd} \u{fffd}".into())
        );
        assert_eq!(
            map.iter_bytes().nth(1),
            Some((&b"x-obs"[..], &b"caf\xe9 \xff"[..]))
        );
    }

    #[test]
    fn decimal_values_are_digits_only() {
        for (value, expected) in [
            (&b"200"[..], Some(200)),
            (b"2000", Some(2000)),
            (b"0", Some(0)),
            (b"9999999999999999999", Some(9_999_999_999_999_999_999)),
            (b"99999999999999999999", None), // 20 digits: could overflow
            (b"", None),
            (b"+1", None),
            (b" 1", None),
            (b"1 ", None),
            (b"-1", None),
            (b"12a", None),
            (b"\xff", None),
        ] {
            assert_eq!(decimal(value), expected, "{value:?}");
        }
    }

    #[test]
    fn a_buffer_off_the_encoding_is_an_empty_map() {
        let good = HeaderMap::from_pairs(&[("x-a", "1")]).as_wire().to_vec();
        for bad in [
            vec![1u8],                       // no count
            good[..good.len() - 1].to_vec(), // cut short
            vec![0xff, 0xff, 0xff, 0xff],    // a count the buffer cannot hold
            [
                &[1, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0][..],
                b"\0\0",
            ]
            .concat(),
        ] {
            assert!(HeaderMap::from_wire(bad.clone()).is_empty(), "{bad:?}");
        }
        assert!(HeaderMap::from_wire(Vec::new()).is_empty());
    }
}
