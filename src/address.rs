//! What an IP address really reaches, for the access policy.
//!
//! An IPv6 spelling can carry an IPv4 address: `::ffff:127.0.0.1` (IPv4-mapped) is 127.0.0.1 to
//! a dual-stack socket, `::127.0.0.1` (IPv4-compatible) is routed as IPv4 by some stacks, and on a
//! NAT64 network `64:ff9b::7f00:1` is translated to 127.0.0.1 of the translator. And `::` (like
//! `0.0.0.0`) is "this host": a connect to it on Linux lands on loopback. Deciding a rule on the
//! spelling would let a client walk around the loopback and metadata guards, so every destination
//! is decided on its canonical form here. Pure functions: unit-tested and fuzzed alone.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The address a destination is judged as: the IPv4 address an IPv6 spelling embeds (IPv4-mapped
/// `::ffff:0:0/96`, IPv4-translated `::ffff:0:0:0/96`, IPv4-compatible `::/96`, NAT64 well-known `64:ff9b::/96`, NAT64 local-use
/// `64:ff9b:1::/48`), otherwise the address itself. `::` and `::1` stay as they are (they are
/// IPv6's own unspecified and loopback addresses, not embeddings of 0.0.0.0 and 0.0.0.1).
pub fn destination(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4).unwrap_or(ip),
    }
}

/// The address a client is identified by: an IPv4-mapped IPv6 peer (`::ffff:a.b.c.d`, as a
/// dual-stack socket reports IPv4 clients) is that IPv4 address, so client rules written for IPv4
/// apply. Nothing else is translated: a client's address is what the kernel says it is.
pub fn client(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Whether `ip` (in canonical form) means "this host" rather than a destination: `0.0.0.0/8` or
/// `::`. Such an address is never a destination, whatever a rule says.
pub fn is_unspecified(ip: IpAddr) -> bool {
    match destination(ip) {
        IpAddr::V4(v4) => v4.octets()[0] == 0,
        IpAddr::V6(v6) => v6.is_unspecified(),
    }
}

/// The IPv4 address carried by an IPv6 spelling, if it is one of the embeddings above.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let o = v6.octets();
    let seg = v6.segments();
    let last = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    // IPv4-mapped ::ffff:a.b.c.d
    if seg[..5] == [0; 5] && seg[5] == 0xffff {
        return Some(last);
    }
    // IPv4-translated ::ffff:0:a.b.c.d (SIIT, RFC 2765).
    if seg[..4] == [0; 4] && seg[4] == 0xffff && seg[5] == 0 {
        return Some(last);
    }
    // IPv4-compatible ::a.b.c.d (deprecated, still routed as IPv4 by some stacks); `::` and `::1`
    // are IPv6's own.
    if seg[..6] == [0; 6] {
        return (v6 != Ipv6Addr::UNSPECIFIED && v6 != Ipv6Addr::LOCALHOST).then_some(last);
    }
    // NAT64 well-known prefix 64:ff9b::/96 (RFC 6052).
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(last);
    }
    // NAT64 local-use prefix 64:ff9b:1::/48 (RFC 8215). Operators carve a /48../96 out of it; the
    // usual /96 puts the address last, a /48 puts it around the "u" octet (RFC 6052 §2.2).
    if seg[..3] == [0x64, 0xff9b, 0x0001] {
        if o[6..12] == [0; 6] {
            return Some(last);
        }
        return Some(Ipv4Addr::new(o[6], o[7], o[9], o[10]));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> String {
        destination(s.parse().unwrap()).to_string()
    }

    #[test]
    fn every_embedding_is_judged_as_its_ipv4_address() {
        for (spelling, canonical) in [
            ("::ffff:127.0.0.1", "127.0.0.1"),
            ("::ffff:0:7f00:1", "127.0.0.1"),
            ("::ffff:169.254.169.254", "169.254.169.254"),
            ("::127.0.0.1", "127.0.0.1"),
            ("::169.254.169.254", "169.254.169.254"),
            ("64:ff9b::7f00:1", "127.0.0.1"),
            ("64:ff9b::a9fe:a9fe", "169.254.169.254"),
            ("64:ff9b::c000:201", "192.0.2.1"),
            ("64:ff9b:1::7f00:1", "127.0.0.1"),
            ("64:ff9b:1:7f00:0:100::", "127.0.0.1"),
            ("64:ff9b:1:a9fe:a9:fe00::", "169.254.169.254"),
            ("::1", "::1"),
            ("::", "::"),
            ("2001:db8::1", "2001:db8::1"),
            ("127.0.0.1", "127.0.0.1"),
        ] {
            assert_eq!(d(spelling), canonical, "{spelling}");
        }
    }

    #[test]
    fn unspecified_in_every_spelling() {
        for s in [
            "0.0.0.0",
            "0.1.2.3",
            "::",
            "::ffff:0.0.0.0",
            "::0.0.0.5",
            "64:ff9b::",
            "64:ff9b:1::",
        ] {
            assert!(is_unspecified(s.parse().unwrap()), "{s}");
        }
        for s in ["::1", "127.0.0.1", "1.0.0.0", "2001:db8::"] {
            assert!(!is_unspecified(s.parse().unwrap()), "{s}");
        }
    }

    #[test]
    fn clients_are_only_unmapped() {
        let c = |s: &str| client(s.parse().unwrap()).to_string();
        assert_eq!(c("::ffff:10.0.0.1"), "10.0.0.1");
        assert_eq!(c("64:ff9b::a00:1"), "64:ff9b::a00:1");
        assert_eq!(c("::1"), "::1");
    }
}
