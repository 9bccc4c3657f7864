//! SOCKS4 and SOCKS4a request parsing and reply encoding.
//!
//! Request layout: `VN(1)=4 CD(1) DSTPORT(2) DSTIP(4) USERID NUL`, and for
//! SOCKS4a (DSTIP = `0.0.0.x`, x != 0) additionally `HOSTNAME NUL`.

use super::Target;
use std::net::{IpAddr, Ipv4Addr};

/// SOCKS4 command code for CONNECT, the only command the proxy serves.
pub const CONNECT: u8 = 1;
/// SOCKS4 command code for BIND, exposed so callers can name what they reject.
pub const BIND: u8 = 2;

/// Longest accepted USERID (without its NUL), so a client cannot make us
/// buffer forever while waiting for a terminator.
pub const MAX_USER_ID: usize = 255;
/// Longest accepted SOCKS4a HOSTNAME (without its NUL), for the same reason.
pub const MAX_HOSTNAME: usize = 255;

/// Length of the fixed part: VN, CD, DSTPORT, DSTIP.
const FIXED_LEN: usize = 8;

/// A complete SOCKS4/4a request.
///
/// The command is kept as the raw byte so the caller decides (and logs)
/// what to do with BIND or unknown commands; the parser accepts any value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Raw command code: [`CONNECT`], [`BIND`] or anything else.
    pub command: u8,
    /// Destination; a hostname for SOCKS4a, an IPv4 address otherwise.
    pub target: Target,
    /// USERID bytes (not NUL-terminated, not necessarily UTF-8).
    pub user_id: Vec<u8>,
}

/// Reasons a SOCKS4 request cannot be accepted.
///
/// None of these has a meaningful protocol reply beyond a generic rejection
/// ([`reply`]`(false)`), after which the caller closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// First byte was not 4.
    #[error("unsupported SOCKS version {0} (expected 4)")]
    BadVersion(u8),
    /// USERID or HOSTNAME exceeded 255 bytes without a NUL terminator.
    #[error("SOCKS4 user id or hostname longer than 255 bytes")]
    TooLong,
    /// SOCKS4a hostname was empty, not valid UTF-8, or not a valid hostname.
    #[error("invalid SOCKS4a hostname")]
    BadHostname,
}

/// Parses a SOCKS4/4a request from the start of `buf`.
///
/// Returns `Ok(None)` while more bytes are needed, or the request and the
/// number of bytes it occupied. Errors are reported as soon as they are
/// detectable (e.g. a wrong version byte is rejected from the first byte).
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, Error> {
    let Some(&version) = buf.first() else {
        return Ok(None);
    };
    if version != 4 {
        return Err(Error::BadVersion(version));
    }
    let Some(fixed) = buf.get(..FIXED_LEN) else {
        return Ok(None);
    };
    let &[_, command, p0, p1, a, b, c, d] = fixed else {
        return Ok(None);
    };
    let port = u16::from_be_bytes([p0, p1]);
    let rest = buf.get(FIXED_LEN..).unwrap_or_default();

    let Some((user_id, after_user)) = take_nul_terminated(rest, MAX_USER_ID)? else {
        return Ok(None);
    };
    let mut consumed = FIXED_LEN + user_id.len() + 1;

    let target = if a == 0 && b == 0 && c == 0 && d != 0 {
        // SOCKS4a: the real destination is a hostname after the USERID.
        let Some((host, _)) = take_nul_terminated(after_user, MAX_HOSTNAME)? else {
            return Ok(None);
        };
        consumed += host.len() + 1;
        let host = std::str::from_utf8(host).map_err(|_| Error::BadHostname)?;
        Target::from_host_port(host, port).ok_or(Error::BadHostname)?
    } else {
        Target {
            host: super::TargetHost::Ip(IpAddr::V4(Ipv4Addr::new(a, b, c, d))),
            port,
        }
    };

    Ok(Some((
        Request {
            command,
            target,
            user_id: user_id.to_vec(),
        },
        consumed,
    )))
}

/// A NUL-terminated field (without the NUL) and the bytes after the NUL.
type FieldAndRest<'a> = (&'a [u8], &'a [u8]);

/// Splits `buf` at the first NUL within `max + 1` bytes.
///
/// Returns the field (without NUL) and the bytes after the NUL, `None` if
/// more bytes could still bring a NUL in time, or `TooLong` if they cannot.
fn take_nul_terminated(buf: &[u8], max: usize) -> Result<Option<FieldAndRest<'_>>, Error> {
    let window = buf.get(..=max).unwrap_or(buf);
    match window.iter().position(|&b| b == 0) {
        Some(nul) => {
            let (field, tail) = buf.split_at(nul);
            Ok(Some((field, tail.get(1..).unwrap_or_default())))
        }
        None if buf.len() > max => Err(Error::TooLong),
        None => Ok(None),
    }
}

/// Encodes the 8-byte SOCKS4 reply: `VN=0`, `CD=0x5A` (granted) or `0x5B`
/// (rejected), with zero port and address, which clients ignore for CONNECT.
pub fn reply(granted: bool) -> [u8; 8] {
    let cd = if granted { 0x5A } else { 0x5B };
    [0, cd, 0, 0, 0, 0, 0, 0]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

    use super::*;
    use crate::protocol::TargetHost;
    use proptest::prelude::*;

    /// Test-only encoder for SOCKS4 (IPv4) requests.
    fn encode_v4(command: u8, ip: Ipv4Addr, port: u16, user_id: &[u8]) -> Vec<u8> {
        let mut v = vec![4, command];
        v.extend_from_slice(&port.to_be_bytes());
        v.extend_from_slice(&ip.octets());
        v.extend_from_slice(user_id);
        v.push(0);
        v
    }

    /// Test-only encoder for SOCKS4a (hostname) requests.
    fn encode_v4a(command: u8, x: u8, port: u16, user_id: &[u8], host: &[u8]) -> Vec<u8> {
        let mut v = encode_v4(command, Ipv4Addr::new(0, 0, 0, x), port, user_id);
        v.extend_from_slice(host);
        v.push(0);
        v
    }

    fn assert_incremental(bytes: &[u8]) -> (Request, usize) {
        for i in 0..bytes.len() {
            assert_eq!(parse_request(&bytes[..i]), Ok(None), "prefix {i}");
        }
        parse_request(bytes).unwrap().unwrap()
    }

    #[test]
    fn socks4_connect() {
        let bytes = encode_v4(CONNECT, Ipv4Addr::new(10, 1, 2, 3), 443, b"alice");
        let (req, n) = assert_incremental(&bytes);
        assert_eq!(n, bytes.len());
        assert_eq!(req.command, CONNECT);
        assert_eq!(req.user_id, b"alice");
        assert_eq!(
            req.target,
            Target {
                host: TargetHost::Ip(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))),
                port: 443
            }
        );
    }

    #[test]
    fn trailing_bytes_not_consumed() {
        let mut bytes = encode_v4(CONNECT, Ipv4Addr::new(1, 1, 1, 1), 80, b"");
        let len = bytes.len();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let (req, n) = parse_request(&bytes).unwrap().unwrap();
        assert_eq!(n, len);
        assert!(req.user_id.is_empty());
    }

    #[test]
    fn socks4a_hostname() {
        let bytes = encode_v4a(CONNECT, 1, 8080, b"bob", b"Example.COM.");
        let (req, n) = assert_incremental(&bytes);
        assert_eq!(n, bytes.len());
        assert_eq!(req.target.host, TargetHost::Name("example.com".into()));
        assert_eq!(req.target.port, 8080);
        assert_eq!(req.user_id, b"bob");
    }

    #[test]
    fn socks4a_any_nonzero_last_octet() {
        let bytes = encode_v4a(CONNECT, 255, 1, b"", b"a.b");
        let (req, _) = parse_request(&bytes).unwrap().unwrap();
        assert_eq!(req.target.host, TargetHost::Name("a.b".into()));
    }

    #[test]
    fn zero_ip_is_plain_socks4() {
        // 0.0.0.0 is not the SOCKS4a marker (x must be non-zero).
        let bytes = encode_v4(CONNECT, Ipv4Addr::UNSPECIFIED, 1, b"");
        let (req, n) = parse_request(&bytes).unwrap().unwrap();
        assert_eq!(n, bytes.len());
        assert_eq!(
            req.target.host,
            TargetHost::Ip(Ipv4Addr::UNSPECIFIED.into())
        );
    }

    #[test]
    fn socks4a_ip_literal_hostname() {
        let bytes = encode_v4a(CONNECT, 1, 1, b"", b"192.0.2.1");
        let (req, _) = parse_request(&bytes).unwrap().unwrap();
        assert_eq!(
            req.target.host,
            TargetHost::Ip("192.0.2.1".parse().unwrap())
        );
    }

    #[test]
    fn bind_and_unknown_commands_are_exposed() {
        for cmd in [BIND, 0, 3, 0xFF] {
            let bytes = encode_v4(cmd, Ipv4Addr::new(1, 2, 3, 4), 21, b"");
            let (req, _) = parse_request(&bytes).unwrap().unwrap();
            assert_eq!(req.command, cmd);
        }
    }

    #[test]
    fn bad_version() {
        assert_eq!(parse_request(&[5]), Err(Error::BadVersion(5)));
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\n"),
            Err(Error::BadVersion(b'G'))
        );
    }

    #[test]
    fn user_id_limits() {
        let ok = encode_v4(CONNECT, Ipv4Addr::new(1, 2, 3, 4), 1, &[b'u'; 255]);
        let (req, n) = parse_request(&ok).unwrap().unwrap();
        assert_eq!(req.user_id.len(), 255);
        assert_eq!(n, ok.len());

        let too_long = encode_v4(CONNECT, Ipv4Addr::new(1, 2, 3, 4), 1, &[b'u'; 256]);
        assert_eq!(parse_request(&too_long), Err(Error::TooLong));
        // Detected without waiting for a NUL that never comes.
        assert_eq!(parse_request(&too_long[..8 + 256]), Err(Error::TooLong));
        assert_eq!(parse_request(&too_long[..8 + 255]), Ok(None));
    }

    #[test]
    fn hostname_limits() {
        // 255-byte hostname: passes the length limit, but is not a valid
        // hostname (> 253 bytes), so it is BadHostname rather than TooLong.
        let label = "a".repeat(63);
        let h253 = [label.as_str(), &label, &label, &"b".repeat(61)].join(".");
        assert_eq!(h253.len(), 253);
        let ok = encode_v4a(CONNECT, 1, 1, b"", h253.as_bytes());
        assert!(parse_request(&ok).unwrap().is_some());

        let h255 = format!("{h253}bb");
        let bad = encode_v4a(CONNECT, 1, 1, b"", h255.as_bytes());
        assert_eq!(parse_request(&bad), Err(Error::BadHostname));

        let h256 = format!("{h255}b");
        let too_long = encode_v4a(CONNECT, 1, 1, b"", h256.as_bytes());
        assert_eq!(parse_request(&too_long), Err(Error::TooLong));
        let user_end = 8 + 1;
        assert_eq!(
            parse_request(&too_long[..user_end + 256]),
            Err(Error::TooLong)
        );
        assert_eq!(parse_request(&too_long[..user_end + 255]), Ok(None));
    }

    #[test]
    fn bad_hostnames() {
        for host in [
            &b""[..],
            b".",
            b"a..b",
            b"a b",
            b"\xff\xfe",
            b"127.1",
            b"[::1",
        ] {
            let bytes = encode_v4a(CONNECT, 1, 1, b"", host);
            assert_eq!(parse_request(&bytes), Err(Error::BadHostname), "{host:?}");
        }
    }

    #[test]
    fn replies() {
        assert_eq!(reply(true), [0, 0x5A, 0, 0, 0, 0, 0, 0]);
        assert_eq!(reply(false), [0, 0x5B, 0, 0, 0, 0, 0, 0]);
    }

    fn hostname() -> impl Strategy<Value = String> {
        "([a-z0-9_-]{1,12}\\.){0,4}[a-z][a-z0-9-]{0,12}"
    }

    proptest! {
        #[test]
        fn roundtrip_socks4(
            command: u8,
            ip in any::<[u8; 4]>().prop_filter("not 4a marker", |o| !(o[0] == 0 && o[1] == 0 && o[2] == 0 && o[3] != 0)),
            port: u16,
            user_id in proptest::collection::vec(1u8..=255, 0..=255),
        ) {
            let ip = Ipv4Addr::from(ip);
            let bytes = encode_v4(command, ip, port, &user_id);
            let (req, n) = parse_request(&bytes).unwrap().unwrap();
            prop_assert_eq!(n, bytes.len());
            prop_assert_eq!(req, Request {
                command,
                target: Target { host: TargetHost::Ip(IpAddr::V4(ip)), port },
                user_id,
            });
        }

        #[test]
        fn roundtrip_socks4a(
            command: u8,
            x in 1u8..=255,
            port: u16,
            user_id in proptest::collection::vec(1u8..=255, 0..=255),
            host in hostname(),
        ) {
            let bytes = encode_v4a(command, x, port, &user_id, host.as_bytes());
            let (req, n) = parse_request(&bytes).unwrap().unwrap();
            prop_assert_eq!(n, bytes.len());
            prop_assert_eq!(req, Request {
                command,
                target: Target { host: TargetHost::Name(host), port },
                user_id,
            });
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(Some((_, n))) = parse_request(&bytes) {
                prop_assert!(n <= bytes.len());
            }
        }

        #[test]
        fn arbitrary_after_header_never_panic(
            fixed in any::<[u8; 7]>(),
            tail in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let mut bytes = vec![4];
            bytes.extend_from_slice(&fixed);
            bytes.extend_from_slice(&tail);
            if let Ok(Some((_, n))) = parse_request(&bytes) {
                prop_assert!(n <= bytes.len());
            }
        }
    }
}
