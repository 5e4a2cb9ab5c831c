//! Parsing of the origin address strings operators type into the console:
//! `IP`, `IP:PORT`, `IP:PORT:WEIGHT`, `IP::WEIGHT`, `[IPv6]:PORT`, `domain[:PORT]`.
//! Each function returns the reason only; the caller adds domain/field/value.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const MAX_WEIGHT: u32 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpEntry {
    pub ip: IpAddr,
    pub port: Option<u16>,
    pub weight: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainEntry {
    pub name: String,
    pub port: Option<u16>,
}

pub fn parse_ip_entry(text: &str) -> Result<IpEntry, String> {
    reject_blank_or_space(text)?;
    if let Some(rest) = text.strip_prefix('[') {
        return parse_bracketed_v6(rest);
    }
    let mut parts = text.split(':');
    let first = parts.next().unwrap_or_default();
    if let Ok(v4) = first.parse::<Ipv4Addr>() {
        let port_text = parts.next();
        let weight_text = parts.next();
        if parts.next().is_some() {
            return Err(
                "too many ':' separators; the forms are IP, IP:PORT, IP:PORT:WEIGHT and IP::WEIGHT"
                    .into(),
            );
        }
        let port = match (port_text, weight_text) {
            (Some(""), Some(_)) => None, // IP::WEIGHT
            (Some(p), _) => Some(parse_port(p)?),
            (None, _) => None,
        };
        let weight = weight_text.map(parse_weight).transpose()?;
        return Ok(IpEntry {
            ip: IpAddr::V4(v4),
            port,
            weight,
        });
    }
    if let Ok(v6) = text.parse::<Ipv6Addr>() {
        return Ok(IpEntry {
            ip: IpAddr::V6(v6),
            port: None,
            weight: None,
        });
    }
    if looks_like_domain(first) {
        return Err(
            "is a domain name, not an IP address; a domain origin goes in `domain` (one name only)"
                .into(),
        );
    }
    Err("is not an IP address (forms: IP, IP:PORT, IP:PORT:WEIGHT, IP::WEIGHT, [IPv6]:PORT)".into())
}

fn parse_bracketed_v6(rest: &str) -> Result<IpEntry, String> {
    let Some((addr, after)) = rest.split_once(']') else {
        return Err("has '[' without a closing ']'".into());
    };
    let v6: Ipv6Addr = addr
        .parse()
        .map_err(|_| format!("'{addr}' is not an IPv6 address"))?;
    let port = match after {
        "" => None,
        _ => {
            let Some(port_and_weight) = after.strip_prefix(':') else {
                return Err("expected ':PORT' after ']'".into());
            };
            if port_and_weight.contains(':') {
                return Err("IPv6 addresses may not carry a weight".into());
            }
            Some(parse_port(port_and_weight)?)
        }
    };
    Ok(IpEntry {
        ip: IpAddr::V6(v6),
        port,
        weight: None,
    })
}

pub fn parse_domain_entry(text: &str) -> Result<DomainEntry, String> {
    reject_blank_or_space(text)?;
    if text.contains("://") {
        return Err("must not contain a scheme such as 'http://'; set `protocol` instead".into());
    }
    let mut parts = text.split(':');
    let name = parts.next().unwrap_or_default();
    let port = parts.next().map(parse_port).transpose()?;
    if parts.next().is_some() {
        return Err("a domain origin may not carry a weight (only IP origins have weights)".into());
    }
    if name.parse::<IpAddr>().is_ok() || text.parse::<IpAddr>().is_ok() || text.starts_with('[') {
        return Err("is an IP address; IP origins go in `ips`".into());
    }
    let name = normalize_host_name(name);
    validate_host_name(&name)?;
    Ok(DomainEntry { name, port })
}

pub fn parse_port(text: &str) -> Result<u16, String> {
    if text.is_empty() {
        return Err("has an empty port".into());
    }
    let port: u64 = text
        .parse()
        .map_err(|_| format!("port '{text}' is not a number"))?;
    match port {
        0 => Err("port 0 is not allowed: ports are 1..=65535".into()),
        1..=65535 => Ok(port as u16),
        _ => Err(format!("port {port} is out of range 1..=65535")),
    }
}

fn parse_weight(text: &str) -> Result<u32, String> {
    if text.is_empty() {
        return Err("has an empty weight".into());
    }
    let weight: u64 = text
        .parse()
        .map_err(|_| format!("weight '{text}' is not a number"))?;
    if weight > u64::from(MAX_WEIGHT) {
        return Err(format!("weight {weight} is out of range 0..={MAX_WEIGHT}"));
    }
    Ok(weight as u32)
}

/// Lowercase and drop one trailing dot: `WWW.Example.COM.` names the same host as `www.example.com`.
pub fn normalize_host_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

pub fn validate_host_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > 253 {
        return Err(format!(
            "is {} characters long; a host name has at most 253",
            name.len()
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("has an empty label ('..' or a leading dot)".into());
        }
        if label.len() > 63 {
            return Err("has a label longer than 63 characters".into());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label '{label}' starts or ends with '-'"));
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "contains the character {bad:?}, not allowed in a host name"
            ));
        }
    }
    Ok(())
}

fn looks_like_domain(text: &str) -> bool {
    text.contains('.') && text.chars().any(|c| c.is_ascii_alphabetic())
}

fn reject_blank_or_space(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("is empty".into());
    }
    // ASCII text (nearly every value) is checked byte by byte; the rest char by char.
    let bad = if text.is_ascii() {
        text.bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    } else {
        text.chars().any(|c| c.is_whitespace() || c.is_control())
    };
    if bad {
        return Err("contains whitespace or control characters".into());
    }
    Ok(())
}

/// `IP:PORT` as `SocketAddr`'s Display writes it (`[v6]:port` for IPv6), without the
/// formatting machinery for IPv4 (a configuration of 10,000 domains formats 40,000 of them).
pub fn socket_text(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => {
            // "255.255.255.255:65535" is 21 bytes.
            let mut buf = [0u8; 21];
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    n = put(&mut buf, n, b'.');
                }
                n = put_decimal(&mut buf, n, u32::from(octet));
            }
            n = put(&mut buf, n, b':');
            n = put_decimal(&mut buf, n, u32::from(port));
            buf.get(..n)
                .and_then(|b| std::str::from_utf8(b).ok())
                .map_or_else(
                    || std::net::SocketAddr::new(ip, port).to_string(),
                    str::to_string,
                )
        }
        IpAddr::V6(_) => std::net::SocketAddr::new(ip, port).to_string(),
    }
}

fn put(buf: &mut [u8], at: usize, byte: u8) -> usize {
    if let Some(slot) = buf.get_mut(at) {
        *slot = byte;
    }
    at + 1
}

fn put_decimal(buf: &mut [u8], at: usize, value: u32) -> usize {
    let mut digits = [0u8; 10];
    let (mut v, mut len) = (value, 0);
    loop {
        if let Some(d) = digits.get_mut(len) {
            *d = b'0' + (v % 10) as u8;
        }
        len += 1;
        v /= 10;
        if v == 0 || len == digits.len() {
            break;
        }
    }
    let mut at = at;
    for d in digits.iter().take(len).rev() {
        at = put(buf, at, *d);
    }
    at
}

/// A Host header value: host name, IPv4 or `[IPv6]`, optionally `:PORT`. Never CR/LF/space.
pub fn validate_host_header(text: &str) -> Result<(), String> {
    reject_blank_or_space(text)?;
    if text.len() > 255 {
        return Err(format!("is {} characters long; at most 255", text.len()));
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return Err("has '[' without a closing ']'".into());
        };
        addr.parse::<Ipv6Addr>()
            .map_err(|_| format!("'{addr}' is not an IPv6 address"))?;
        (None, after.strip_prefix(':'))
    } else {
        match text.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(text), None),
        }
    };
    if let Some(port) = port {
        parse_port(port)?;
    }
    if let Some(host) = host {
        if host.parse::<Ipv4Addr>().is_err() {
            validate_host_name(&normalize_host_name(host))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_text_is_socket_addr_display() {
        for (ip, port) in [
            ("127.0.0.1", 80u16),
            ("0.0.0.0", 1),
            ("255.255.255.255", 65535),
            ("10.20.3.100", 8081),
            ("2001:db8::1", 443),
            ("::ffff:1.2.3.4", 8443),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(
                socket_text(ip, port),
                std::net::SocketAddr::new(ip, port).to_string()
            );
        }
    }

    #[test]
    fn ip_forms() {
        let e = parse_ip_entry("1.1.1.1").unwrap();
        assert_eq!((e.port, e.weight), (None, None));
        let e = parse_ip_entry("1.1.1.1:8080").unwrap();
        assert_eq!((e.port, e.weight), (Some(8080), None));
        let e = parse_ip_entry("1.1.1.1:8080:30").unwrap();
        assert_eq!((e.port, e.weight), (Some(8080), Some(30)));
        let e = parse_ip_entry("1.1.1.1::0").unwrap();
        assert_eq!((e.port, e.weight), (None, Some(0)));
        let e = parse_ip_entry("[::1]:8443").unwrap();
        assert_eq!((e.port, e.weight), (Some(8443), None));
        let e = parse_ip_entry("2001:db8::1").unwrap();
        assert_eq!(e.ip, "2001:db8::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn ip_errors() {
        let cases = [
            ("1.1.1.1:0", "port 0 is not allowed"),
            ("1.1.1.1:65536", "port 65536 is out of range 1..=65535"),
            ("1.1.1.1:80:1001", "weight 1001 is out of range 0..=1000"),
            ("1.1.1.1:80:x", "weight 'x' is not a number"),
            ("1.1.1.1:http", "port 'http' is not a number"),
            ("1.1.1.1:80:1:2", "too many ':'"),
            ("[::1]:80:5", "IPv6 addresses may not carry a weight"),
            ("origin.example.com", "is a domain name"),
            ("1.1.1", "is not an IP address"),
            (" 1.1.1.1", "whitespace"),
            ("", "is empty"),
        ];
        for (text, want) in cases {
            let err = parse_ip_entry(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn domain_forms_and_errors() {
        assert_eq!(
            parse_domain_entry("Origin.Example.com.:8080").unwrap(),
            DomainEntry {
                name: "origin.example.com".into(),
                port: Some(8080)
            }
        );
        let cases = [
            ("a.com:80:5", "may not carry a weight"),
            ("a.com:0", "port 0"),
            ("1.2.3.4", "is an IP address"),
            ("http://a.com", "scheme"),
            ("a..com", "empty label"),
            ("a/b.com", "'/'"),
        ];
        for (text, want) in cases {
            let err = parse_domain_entry(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn host_header() {
        for ok in ["a.example.com", "a.example.com:8080", "1.2.3.4", "[::1]:80"] {
            validate_host_header(ok).unwrap();
        }
        for bad in ["a.com\r\nx: y", "a b", "", "a.com:0"] {
            assert!(validate_host_header(bad).is_err(), "{bad:?}");
        }
    }
}
