//! Pure, allocation-light codecs for the client-facing proxy protocols.
//!
//! Nothing in here touches sockets, timers or DNS: every parser takes the
//! bytes received so far and answers "need more", "here is the message and
//! how many bytes it used", or "this is malformed". That keeps the protocol
//! rules testable in isolation (including with property tests) and lets the
//! async front-ends stay thin.
//!
//! The parsers must never panic on attacker-controlled input, so indexing,
//! slicing and unwrapping are denied for this module tree outside tests.
#![forbid(unsafe_code)]
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::todo,
    clippy::unimplemented
)]

pub mod http;
pub mod proxy_header;
pub mod socks4;
pub mod socks5;
pub mod socks5_gssapi;

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// Where a client asked to go, before any resolution.
///
/// Kept distinct from a socket address so that names can be resolved (and
/// rotated) by the proxy rather than by the client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetHost {
    /// A validated, lowercased DNS name without a trailing dot.
    Name(String),
    /// A literal IP address supplied by the client.
    Ip(IpAddr),
}

/// A destination host plus port, as requested by a client in any protocol.
///
/// All front-ends (HTTP CONNECT, SOCKS4/4a, SOCKS5) normalise into this one
/// type so policy, resolution and metrics code only deal with one shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Host part (name or literal address).
    pub host: TargetHost,
    /// Destination TCP port.
    pub port: u16,
}

impl fmt::Display for Target {
    /// Renders `host:port`, bracketing IPv6 literals (`[::1]:443`) so the
    /// output is unambiguous and usable as an authority in logs and headers.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            TargetHost::Name(name) => write!(f, "{}:{}", name, self.port),
            TargetHost::Ip(IpAddr::V4(ip)) => write!(f, "{}:{}", ip, self.port),
            TargetHost::Ip(IpAddr::V6(ip)) => write!(f, "[{}]:{}", ip, self.port),
        }
    }
}

impl Target {
    /// Builds a target from a host string as found on the wire (HTTP
    /// authority host, SOCKS4a hostname, SOCKS5 domain) and a port.
    ///
    /// IP literals (IPv4, IPv6 with or without brackets) become
    /// [`TargetHost::Ip`]; valid hostnames become a lowercased
    /// [`TargetHost::Name`] with a single trailing dot removed. Returns `None`
    /// for anything else.
    ///
    /// Names whose last label "looks like a number" (all digits, or `0x` plus
    /// hex digits, e.g. `127.1`, `2130706433`, `0x7f.1`) are rejected even
    /// though [`validate_hostname`] accepts their characters: some resolvers
    /// (`inet_aton`-style) turn them into IPv4 addresses, which would let a
    /// client dodge IP-based destination policy. This mirrors the WHATWG URL
    /// "ends in a number" rule.
    pub fn from_host_port(host: &str, port: u16) -> Option<Target> {
        let ip = if let Some(inner) = host.strip_prefix('[') {
            // Brackets are only meaningful around IPv6 literals.
            let inner = inner.strip_suffix(']')?;
            Some(IpAddr::V6(inner.parse::<Ipv6Addr>().ok()?))
        } else {
            host.parse::<IpAddr>().ok()
        };
        if let Some(ip) = ip {
            return Some(Target {
                host: TargetHost::Ip(ip),
                port,
            });
        }
        if !validate_hostname(host) {
            return None;
        }
        let name = host.strip_suffix('.').unwrap_or(host);
        if ends_in_number(name) {
            return None;
        }
        Some(Target {
            host: TargetHost::Name(name.to_ascii_lowercase()),
            port,
        })
    }
}

/// Checks that `name` is a syntactically acceptable DNS hostname.
///
/// Exists so every protocol applies the same rule before a client-supplied
/// name reaches the resolver or the logs: 1..=253 bytes, dot-separated labels
/// of 1..=63 ASCII letters, digits, `-` or `_`. One trailing dot is accepted
/// (callers strip it); any other empty label is rejected. Case is not
/// checked.
pub fn validate_hostname(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// True if the last label of `name` would be read as a number by an
/// `inet_aton`-style parser (WHATWG URL "ends in a number").
fn ends_in_number(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    let hex = last.strip_prefix("0x").or_else(|| last.strip_prefix("0X"));
    matches!(hex, Some(h) if h.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::net::Ipv4Addr;

    fn name(n: &str, port: u16) -> Target {
        Target {
            host: TargetHost::Name(n.to_string()),
            port,
        }
    }

    fn ip(ip: IpAddr, port: u16) -> Target {
        Target {
            host: TargetHost::Ip(ip),
            port,
        }
    }

    #[test]
    fn display() {
        assert_eq!(name("example.com", 80).to_string(), "example.com:80");
        assert_eq!(
            ip(IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4)), 8080).to_string(),
            "1.2.3.4:8080"
        );
        assert_eq!(
            ip(IpAddr::V6(Ipv6Addr::LOCALHOST), 443).to_string(),
            "[::1]:443"
        );
    }

    #[test]
    fn hostname_validation() {
        assert!(validate_hostname("example.com"));
        assert!(validate_hostname("example.com."));
        assert!(validate_hostname("Ex-am_ple.COM"));
        assert!(validate_hostname("a"));
        assert!(!validate_hostname(""));
        assert!(!validate_hostname("."));
        assert!(!validate_hostname(".."));
        assert!(!validate_hostname("example.com.."));
        assert!(!validate_hostname(".example.com"));
        assert!(!validate_hostname("a..b"));
        assert!(!validate_hostname("a b"));
        assert!(!validate_hostname("a@b"));
        assert!(!validate_hostname("a:b"));
        assert!(!validate_hostname("ex\u{e4}mple.com"));
        assert!(validate_hostname(&"a".repeat(63)));
        assert!(!validate_hostname(&"a".repeat(64)));
        // 4 * 63 + 3 dots = 255 > 253
        let long = [
            "a".repeat(63),
            "a".repeat(63),
            "a".repeat(63),
            "a".repeat(63),
        ]
        .join(".");
        assert!(!validate_hostname(&long));
        // 3 * 63 + 61 + 3 dots = 253, with and without trailing dot
        let max = [
            "a".repeat(63),
            "a".repeat(63),
            "a".repeat(63),
            "a".repeat(61),
        ]
        .join(".");
        assert_eq!(max.len(), 253);
        assert!(validate_hostname(&max));
        assert!(validate_hostname(&format!("{max}.")));
        assert!(!validate_hostname(&format!("{max}a")));
    }

    #[test]
    fn from_host_port() {
        assert_eq!(
            Target::from_host_port("Example.COM.", 443),
            Some(name("example.com", 443))
        );
        assert_eq!(
            Target::from_host_port("1.2.3.4", 1),
            Some(ip(IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4)), 1))
        );
        assert_eq!(
            Target::from_host_port("::1", 2),
            Some(ip(IpAddr::V6(Ipv6Addr::LOCALHOST), 2))
        );
        assert_eq!(
            Target::from_host_port("[::1]", 3),
            Some(ip(IpAddr::V6(Ipv6Addr::LOCALHOST), 3))
        );
        assert_eq!(
            Target::from_host_port("[2001:DB8::1]", 3),
            Some(ip("2001:db8::1".parse().unwrap(), 3))
        );
        assert_eq!(Target::from_host_port("[1.2.3.4]", 3), None);
        assert_eq!(Target::from_host_port("[::1", 3), None);
        assert_eq!(Target::from_host_port("::1]", 3), None);
        assert_eq!(Target::from_host_port("fe80::1%eth0", 3), None);
        assert_eq!(Target::from_host_port("", 3), None);
        assert_eq!(Target::from_host_port(".", 3), None);
        assert_eq!(Target::from_host_port("a..b", 3), None);
        assert_eq!(Target::from_host_port("a b", 3), None);
    }

    #[test]
    fn numeric_looking_names_rejected() {
        for bad in [
            "127.1",
            "2130706433",
            "0x7f.1",
            "foo.0x1F",
            "a.0x",
            "a.123.",
        ] {
            assert_eq!(Target::from_host_port(bad, 80), None, "{bad}");
        }
        for good in ["1.example", "0xfoo.com", "123abc", "a.b1", "x0x1"] {
            assert!(Target::from_host_port(good, 80).is_some(), "{good}");
        }
    }
}
