//! SOCKS5 (RFC 1928) and username/password sub-negotiation (RFC 1929).
//!
//! The conversation is: greeting → [`method_reply`] → optional
//! [`parse_user_pass`] → [`user_pass_reply`] → [`parse_request`] → [`reply`].

use super::{Target, TargetHost};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// SOCKS protocol version byte carried by every SOCKS5 message.
const VERSION: u8 = 5;
/// RFC 1929 sub-negotiation version byte.
const AUTH_VERSION: u8 = 1;

/// Method code for "no authentication required".
pub const NO_AUTH: u8 = 0;
/// Method code for RFC 1929 username/password authentication.
pub const USER_PASS: u8 = 2;
/// Method reply meaning "none of your methods is acceptable"; the client
/// must then close the connection.
pub const NO_ACCEPTABLE: u8 = 0xFF;

/// Address type: IPv4 (4 bytes).
const ATYP_IPV4: u8 = 1;
/// Address type: domain name (length byte + bytes).
const ATYP_DOMAIN: u8 = 3;
/// Address type: IPv6 (16 bytes).
const ATYP_IPV6: u8 = 4;

/// Everything that can be wrong with a SOCKS5 message.
///
/// Use [`Error::reply`] to find out whether (and which) reply a failed
/// *request* deserves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Greeting or request did not start with version 5.
    #[error("unsupported SOCKS version {0} (expected 5)")]
    BadVersion(u8),
    /// Greeting offered zero authentication methods.
    #[error("SOCKS5 greeting offers no authentication methods")]
    NoMethods,
    /// Username/password message did not start with sub-negotiation version 1.
    #[error("unsupported SOCKS5 auth sub-negotiation version {0} (expected 1)")]
    BadAuthVersion(u8),
    /// ULEN or PLEN was zero.
    #[error("empty SOCKS5 username or password")]
    EmptyCredential,
    /// Username or password was not valid UTF-8.
    #[error("SOCKS5 username or password is not valid UTF-8")]
    CredentialNotUtf8,
    /// CMD was not CONNECT, BIND or UDP ASSOCIATE.
    #[error("unsupported SOCKS5 command {0}")]
    CommandNotSupported(u8),
    /// ATYP was not 1 (IPv4), 3 (domain) or 4 (IPv6).
    #[error("unsupported SOCKS5 address type {0}")]
    AddressTypeNotSupported(u8),
    /// Domain name was empty or not a valid hostname.
    #[error("invalid SOCKS5 domain name")]
    BadDomain,
}

impl Error {
    /// The reply to send before closing when [`parse_request`] fails.
    ///
    /// A request with a wrong version byte comes from a client that already
    /// greeted in SOCKS5, so it gets "general failure" (RFC 1928 has no
    /// better code). `None` means the error belongs to the greeting or the
    /// authentication, which are answered with [`method_reply`]`(NO_ACCEPTABLE)`
    /// or [`user_pass_reply`]`(false)` instead.
    pub fn reply(&self) -> Option<Reply> {
        match self {
            Error::CommandNotSupported(_) => Some(Reply::CommandNotSupported),
            Error::AddressTypeNotSupported(_) => Some(Reply::AddressTypeNotSupported),
            Error::BadDomain => Some(Reply::HostUnreachable),
            Error::BadVersion(_) => Some(Reply::GeneralFailure),
            Error::NoMethods
            | Error::BadAuthVersion(_)
            | Error::EmptyCredential
            | Error::CredentialNotUtf8 => None,
        }
    }
}

/// Parses the client greeting `VER NMETHODS METHODS...`.
///
/// Returns the offered method codes so the caller can pick one (e.g.
/// [`USER_PASS`] when auth is configured), plus the bytes consumed.
pub fn parse_greeting(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, Error> {
    let Some(&version) = buf.first() else {
        return Ok(None);
    };
    if version != VERSION {
        return Err(Error::BadVersion(version));
    }
    let Some(&nmethods) = buf.get(1) else {
        return Ok(None);
    };
    if nmethods == 0 {
        return Err(Error::NoMethods);
    }
    let end = 2 + usize::from(nmethods);
    match buf.get(2..end) {
        Some(methods) => Ok(Some((methods.to_vec(), end))),
        None => Ok(None),
    }
}

/// Encodes the server's method selection `VER METHOD`.
pub fn method_reply(method: u8) -> [u8; 2] {
    [VERSION, method]
}

/// Username and password from RFC 1929 sub-negotiation.
///
/// `Debug` is implemented by hand so the password never ends up in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The username (1..=255 bytes of UTF-8).
    pub username: String,
    /// The password (1..=255 bytes of UTF-8). Never printed by `Debug`.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// Parses the RFC 1929 request `VER=1 ULEN UNAME PLEN PASSWD`.
///
/// Exists so authentication can be checked before any request is accepted.
/// Empty or non-UTF-8 fields are errors (answer with
/// [`user_pass_reply`]`(false)` and close).
pub fn parse_user_pass(buf: &[u8]) -> Result<Option<(Credentials, usize)>, Error> {
    let Some(&version) = buf.first() else {
        return Ok(None);
    };
    if version != AUTH_VERSION {
        return Err(Error::BadAuthVersion(version));
    }
    let Some((username, pos)) = length_prefixed(buf, 1)? else {
        return Ok(None);
    };
    let Some((password, end)) = length_prefixed(buf, pos)? else {
        return Ok(None);
    };
    let username = std::str::from_utf8(username).map_err(|_| Error::CredentialNotUtf8)?;
    let password = std::str::from_utf8(password).map_err(|_| Error::CredentialNotUtf8)?;
    Ok(Some((
        Credentials {
            username: username.to_owned(),
            password: password.to_owned(),
        },
        end,
    )))
}

/// Reads a 1..=255-byte field preceded by its length at `buf[pos]`.
/// Returns the field and the index just past it.
fn length_prefixed(buf: &[u8], pos: usize) -> Result<Option<(&[u8], usize)>, Error> {
    let Some(&len) = buf.get(pos) else {
        return Ok(None);
    };
    if len == 0 {
        return Err(Error::EmptyCredential);
    }
    let start = pos + 1;
    let end = start + usize::from(len);
    Ok(buf.get(start..end).map(|field| (field, end)))
}

/// Encodes the RFC 1929 status reply: `VER=1`, `STATUS=0` for success and
/// non-zero (1) for failure, after which the server closes.
pub fn user_pass_reply(ok: bool) -> [u8; 2] {
    [AUTH_VERSION, if ok { 0 } else { 1 }]
}

/// SOCKS5 request command.
///
/// Parsed into an enum so the caller can match exhaustively and reject
/// BIND / UDP ASSOCIATE explicitly with [`Reply::CommandNotSupported`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// CMD 1: open a TCP connection to the target.
    Connect,
    /// CMD 2: accept an inbound TCP connection.
    Bind,
    /// CMD 3: relay UDP datagrams.
    UdpAssociate,
}

impl Command {
    /// The wire code of this command, e.g. for logs and metrics labels.
    pub fn code(self) -> u8 {
        match self {
            Command::Connect => 1,
            Command::Bind => 2,
            Command::UdpAssociate => 3,
        }
    }

    /// Decodes a wire command code; `None` for unknown codes.
    pub fn from_code(code: u8) -> Option<Command> {
        match code {
            1 => Some(Command::Connect),
            2 => Some(Command::Bind),
            3 => Some(Command::UdpAssociate),
            _ => None,
        }
    }
}

/// A complete SOCKS5 request `VER CMD RSV ATYP DST.ADDR DST.PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What the client wants done.
    pub command: Command,
    /// Where the client wants to go. Domain names that are IP literals are
    /// normalised to [`TargetHost::Ip`].
    pub target: Target,
}

/// Parses a SOCKS5 request.
///
/// The reserved byte is ignored (lenient, as many clients are sloppy with
/// it). Errors are reported as soon as they are detectable; use
/// [`Error::reply`] to pick the reply to send.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, Error> {
    let Some(&version) = buf.first() else {
        return Ok(None);
    };
    if version != VERSION {
        return Err(Error::BadVersion(version));
    }
    let Some(&cmd) = buf.get(1) else {
        return Ok(None);
    };
    let command = Command::from_code(cmd).ok_or(Error::CommandNotSupported(cmd))?;
    // buf[2] is RSV: ignored.
    let Some(&atyp) = buf.get(3) else {
        return Ok(None);
    };
    let (host, port_at) = match atyp {
        ATYP_IPV4 => match buf.get(4..8).and_then(|b| <[u8; 4]>::try_from(b).ok()) {
            Some(octets) => (Some(IpAddr::V4(Ipv4Addr::from(octets))), 8),
            None => return Ok(None),
        },
        ATYP_IPV6 => match buf.get(4..20).and_then(|b| <[u8; 16]>::try_from(b).ok()) {
            Some(octets) => (Some(IpAddr::V6(Ipv6Addr::from(octets))), 20),
            None => return Ok(None),
        },
        ATYP_DOMAIN => {
            let Some(&len) = buf.get(4) else {
                return Ok(None);
            };
            if len == 0 {
                return Err(Error::BadDomain);
            }
            (None, 5 + usize::from(len))
        }
        other => return Err(Error::AddressTypeNotSupported(other)),
    };
    let end = port_at + 2;
    let Some(&[p0, p1]) = buf.get(port_at..end) else {
        return Ok(None);
    };
    let port = u16::from_be_bytes([p0, p1]);
    let target = match host {
        Some(ip) => Target {
            host: TargetHost::Ip(ip),
            port,
        },
        None => {
            let name = buf.get(5..port_at).ok_or(Error::BadDomain)?;
            let name = std::str::from_utf8(name).map_err(|_| Error::BadDomain)?;
            Target::from_host_port(name, port).ok_or(Error::BadDomain)?
        }
    };
    Ok(Some((Request { command, target }, end)))
}

/// SOCKS5 reply codes (RFC 1928 §6), so callers can name the outcome of a
/// request instead of using magic numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Reply {
    /// X'00' succeeded.
    Succeeded = 0,
    /// X'01' general SOCKS server failure.
    GeneralFailure = 1,
    /// X'02' connection not allowed by ruleset.
    NotAllowed = 2,
    /// X'03' network unreachable.
    NetworkUnreachable = 3,
    /// X'04' host unreachable (also used for unresolvable / invalid names).
    HostUnreachable = 4,
    /// X'05' connection refused.
    ConnectionRefused = 5,
    /// X'06' TTL expired (used for connect timeouts).
    TtlExpired = 6,
    /// X'07' command not supported.
    CommandNotSupported = 7,
    /// X'08' address type not supported.
    AddressTypeNotSupported = 8,
}

/// Encodes a SOCKS5 reply `VER REP RSV ATYP BND.ADDR BND.PORT`.
///
/// `bound` is the local address of the outgoing connection when known;
/// `None` encodes `0.0.0.0:0`, which is what failures (and servers that
/// prefer not to disclose addresses) send.
pub fn reply(code: Reply, bound: Option<SocketAddr>) -> Vec<u8> {
    let bound = bound.unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    let mut out = Vec::with_capacity(22);
    out.extend_from_slice(&[VERSION, code as u8, 0]);
    match bound.ip() {
        IpAddr::V4(ip) => {
            out.push(ATYP_IPV4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(ATYP_IPV6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&bound.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

    use super::*;
    use proptest::prelude::*;

    /// Test-only encoder for greetings.
    fn encode_greeting(methods: &[u8]) -> Vec<u8> {
        let mut v = vec![VERSION, u8::try_from(methods.len()).unwrap()];
        v.extend_from_slice(methods);
        v
    }

    /// Test-only encoder for RFC 1929 requests (raw bytes allowed).
    fn encode_user_pass(user: &[u8], pass: &[u8]) -> Vec<u8> {
        let mut v = vec![AUTH_VERSION, u8::try_from(user.len()).unwrap()];
        v.extend_from_slice(user);
        v.push(u8::try_from(pass.len()).unwrap());
        v.extend_from_slice(pass);
        v
    }

    /// Test-only encoder for requests; `TargetHost::Name` uses ATYP 3.
    fn encode_request(cmd: u8, target: &Target) -> Vec<u8> {
        let mut v = vec![VERSION, cmd, 0];
        match &target.host {
            TargetHost::Ip(IpAddr::V4(ip)) => {
                v.push(ATYP_IPV4);
                v.extend_from_slice(&ip.octets());
            }
            TargetHost::Ip(IpAddr::V6(ip)) => {
                v.push(ATYP_IPV6);
                v.extend_from_slice(&ip.octets());
            }
            TargetHost::Name(name) => {
                v.push(ATYP_DOMAIN);
                v.push(u8::try_from(name.len()).unwrap());
                v.extend_from_slice(name.as_bytes());
            }
        }
        v.extend_from_slice(&target.port.to_be_bytes());
        v
    }

    fn raw_domain_request(domain: &[u8], port: u16) -> Vec<u8> {
        let mut v = vec![
            VERSION,
            1,
            0,
            ATYP_DOMAIN,
            u8::try_from(domain.len()).unwrap(),
        ];
        v.extend_from_slice(domain);
        v.extend_from_slice(&port.to_be_bytes());
        v
    }

    fn incremental<T: PartialEq + fmt::Debug>(
        bytes: &[u8],
        parse: impl Fn(&[u8]) -> Result<Option<(T, usize)>, Error>,
    ) -> T {
        for i in 0..bytes.len() {
            assert_eq!(parse(&bytes[..i]), Ok(None), "prefix {i}");
        }
        let (v, n) = parse(bytes).unwrap().unwrap();
        assert_eq!(n, bytes.len());
        v
    }

    #[test]
    fn greeting() {
        let bytes = encode_greeting(&[NO_AUTH, USER_PASS]);
        assert_eq!(
            incremental(&bytes, parse_greeting),
            vec![NO_AUTH, USER_PASS]
        );
        let mut more = bytes.clone();
        more.push(0xAA);
        assert_eq!(
            parse_greeting(&more),
            Ok(Some((vec![NO_AUTH, USER_PASS], bytes.len())))
        );
        let all: Vec<u8> = (0..=254).collect();
        assert_eq!(incremental(&encode_greeting(&all), parse_greeting), all);
    }

    #[test]
    fn greeting_errors() {
        assert_eq!(parse_greeting(&[4]), Err(Error::BadVersion(4)));
        assert_eq!(parse_greeting(&[5, 0]), Err(Error::NoMethods));
        assert_eq!(Error::BadVersion(4).reply(), Some(Reply::GeneralFailure));
        assert_eq!(Error::NoMethods.reply(), None);
    }

    #[test]
    fn method_replies() {
        assert_eq!(method_reply(NO_AUTH), [5, 0]);
        assert_eq!(method_reply(USER_PASS), [5, 2]);
        assert_eq!(method_reply(NO_ACCEPTABLE), [5, 0xFF]);
    }

    #[test]
    fn user_pass() {
        let bytes = encode_user_pass(b"alice", "p\u{e4}ss".as_bytes());
        let creds = incremental(&bytes, parse_user_pass);
        assert_eq!(creds.username, "alice");
        assert_eq!(creds.password, "p\u{e4}ss");

        let max = "x".repeat(255);
        let bytes = encode_user_pass(max.as_bytes(), max.as_bytes());
        let creds = incremental(&bytes, parse_user_pass);
        assert_eq!(creds.username.len(), 255);
        assert_eq!(creds.password.len(), 255);
    }

    #[test]
    fn user_pass_errors() {
        assert_eq!(parse_user_pass(&[5]), Err(Error::BadAuthVersion(5)));
        assert_eq!(parse_user_pass(&[1, 0]), Err(Error::EmptyCredential));
        assert_eq!(
            parse_user_pass(&encode_user_pass(b"u", b"")),
            Err(Error::EmptyCredential)
        );
        assert_eq!(
            parse_user_pass(&encode_user_pass(b"\xff", b"p")),
            Err(Error::CredentialNotUtf8)
        );
        assert_eq!(
            parse_user_pass(&encode_user_pass(b"u", b"\xc3")),
            Err(Error::CredentialNotUtf8)
        );
        for e in [
            Error::BadAuthVersion(5),
            Error::EmptyCredential,
            Error::CredentialNotUtf8,
        ] {
            assert_eq!(e.reply(), None);
        }
    }

    #[test]
    fn credentials_debug_hides_password() {
        let c = Credentials {
            username: "alice".into(),
            password: "hunter2".into(),
        };
        let s = format!("{c:?}");
        assert!(s.contains("alice"));
        assert!(s.contains("***"));
        assert!(!s.contains("hunter2"));
        let s = format!("{c:#?}");
        assert!(!s.contains("hunter2"));
    }

    #[test]
    fn user_pass_replies() {
        assert_eq!(user_pass_reply(true), [1, 0]);
        assert_eq!(user_pass_reply(false), [1, 1]);
    }

    #[test]
    fn request_ipv4() {
        let t = Target {
            host: TargetHost::Ip("192.0.2.7".parse().unwrap()),
            port: 443,
        };
        let bytes = encode_request(1, &t);
        let req = incremental(&bytes, parse_request);
        assert_eq!(
            req,
            Request {
                command: Command::Connect,
                target: t
            }
        );
    }

    #[test]
    fn request_ipv6() {
        let t = Target {
            host: TargetHost::Ip("2001:db8::1".parse().unwrap()),
            port: 8443,
        };
        let bytes = encode_request(1, &t);
        assert_eq!(bytes.len(), 22);
        let req = incremental(&bytes, parse_request);
        assert_eq!(req.target, t);
        assert_eq!(req.target.to_string(), "[2001:db8::1]:8443");
    }

    #[test]
    fn request_domain() {
        let bytes = raw_domain_request(b"WWW.Example.com.", 80);
        let req = incremental(&bytes, parse_request);
        assert_eq!(
            req.target,
            Target {
                host: TargetHost::Name("www.example.com".into()),
                port: 80
            }
        );
    }

    #[test]
    fn request_domain_ip_literal_normalised() {
        let req = parse_request(&raw_domain_request(b"::1", 1))
            .unwrap()
            .unwrap()
            .0;
        assert_eq!(req.target.host, TargetHost::Ip("::1".parse().unwrap()));
        let req = parse_request(&raw_domain_request(b"10.0.0.1", 1))
            .unwrap()
            .unwrap()
            .0;
        assert_eq!(req.target.host, TargetHost::Ip("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn request_commands_and_rsv() {
        let t = Target {
            host: TargetHost::Ip("1.2.3.4".parse().unwrap()),
            port: 1,
        };
        for (code, cmd) in [
            (1, Command::Connect),
            (2, Command::Bind),
            (3, Command::UdpAssociate),
        ] {
            let mut bytes = encode_request(code, &t);
            bytes[2] = 0x55; // RSV is ignored
            let (req, _) = parse_request(&bytes).unwrap().unwrap();
            assert_eq!(req.command, cmd);
            assert_eq!(cmd.code(), code);
        }
    }

    #[test]
    fn request_errors() {
        assert_eq!(parse_request(&[4]), Err(Error::BadVersion(4)));
        assert_eq!(parse_request(&[5, 0]), Err(Error::CommandNotSupported(0)));
        assert_eq!(parse_request(&[5, 9]), Err(Error::CommandNotSupported(9)));
        assert_eq!(
            parse_request(&[5, 1, 0, 2]),
            Err(Error::AddressTypeNotSupported(2))
        );
        assert_eq!(parse_request(&[5, 1, 0, 3, 0]), Err(Error::BadDomain));
        for bad in [
            &b"a b"[..],
            b"a..b",
            b"\xff",
            b"127.1",
            b"[1.2.3.4]",
            b"a@b",
        ] {
            assert_eq!(
                parse_request(&raw_domain_request(bad, 80)),
                Err(Error::BadDomain),
                "{bad:?}"
            );
        }
        assert_eq!(
            Error::CommandNotSupported(9).reply(),
            Some(Reply::CommandNotSupported)
        );
        assert_eq!(
            Error::AddressTypeNotSupported(2).reply(),
            Some(Reply::AddressTypeNotSupported)
        );
        assert_eq!(Error::BadDomain.reply(), Some(Reply::HostUnreachable));
        assert_eq!(Error::BadVersion(4).reply(), Some(Reply::GeneralFailure));
    }

    #[test]
    fn domain_length_limit() {
        // Max on the wire is 255 bytes; that is longer than a valid hostname.
        let label = "a".repeat(63);
        let h253 = [label.as_str(), &label, &label, &"b".repeat(61)].join(".");
        let req = parse_request(&raw_domain_request(h253.as_bytes(), 1));
        assert!(req.unwrap().is_some());
        let h255 = format!("{h253}bb");
        assert_eq!(
            parse_request(&raw_domain_request(h255.as_bytes(), 1)),
            Err(Error::BadDomain)
        );
    }

    #[test]
    fn replies() {
        assert_eq!(
            reply(Reply::Succeeded, None),
            [5, 0, 0, 1, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            reply(
                Reply::HostUnreachable,
                Some("10.1.2.3:258".parse().unwrap())
            ),
            [5, 4, 0, 1, 10, 1, 2, 3, 1, 2]
        );
        let v6 = reply(Reply::Succeeded, Some("[::1]:80".parse().unwrap()));
        let mut expected = vec![5, 0, 0, 4];
        expected.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        expected.extend_from_slice(&[0, 80]);
        assert_eq!(v6, expected);
        let codes = [
            (Reply::Succeeded, 0),
            (Reply::GeneralFailure, 1),
            (Reply::NotAllowed, 2),
            (Reply::NetworkUnreachable, 3),
            (Reply::HostUnreachable, 4),
            (Reply::ConnectionRefused, 5),
            (Reply::TtlExpired, 6),
            (Reply::CommandNotSupported, 7),
            (Reply::AddressTypeNotSupported, 8),
        ];
        for (r, c) in codes {
            assert_eq!(reply(r, None)[1], c);
        }
    }

    /// Reply parser used only to check `reply` round-trips.
    fn parse_reply(b: &[u8]) -> (u8, SocketAddr) {
        assert_eq!(b[0], 5);
        assert_eq!(b[2], 0);
        let (ip, rest): (IpAddr, &[u8]) = match b[3] {
            1 => (<[u8; 4]>::try_from(&b[4..8]).unwrap().into(), &b[8..]),
            4 => (<[u8; 16]>::try_from(&b[4..20]).unwrap().into(), &b[20..]),
            _ => panic!("bad atyp"),
        };
        assert_eq!(rest.len(), 2);
        (
            b[1],
            SocketAddr::new(ip, u16::from_be_bytes([rest[0], rest[1]])),
        )
    }

    fn hostname() -> impl Strategy<Value = String> {
        "([a-z0-9_-]{1,12}\\.){0,4}[a-z][a-z0-9-]{0,12}"
    }

    fn target() -> impl Strategy<Value = Target> {
        let host = prop_oneof![
            any::<[u8; 4]>().prop_map(|o| TargetHost::Ip(Ipv4Addr::from(o).into())),
            any::<[u8; 16]>().prop_map(|o| TargetHost::Ip(Ipv6Addr::from(o).into())),
            hostname().prop_map(TargetHost::Name),
        ];
        (host, any::<u16>()).prop_map(|(host, port)| Target { host, port })
    }

    fn command() -> impl Strategy<Value = Command> {
        prop_oneof![
            Just(Command::Connect),
            Just(Command::Bind),
            Just(Command::UdpAssociate)
        ]
    }

    proptest! {
        #[test]
        fn roundtrip_greeting(methods in proptest::collection::vec(any::<u8>(), 1..=255)) {
            let bytes = encode_greeting(&methods);
            prop_assert_eq!(parse_greeting(&bytes), Ok(Some((methods, bytes.len()))));
        }

        #[test]
        fn roundtrip_user_pass(user in "\\PC{1,60}", pass in "\\PC{1,60}") {
            prop_assume!(user.len() <= 255 && pass.len() <= 255);
            let bytes = encode_user_pass(user.as_bytes(), pass.as_bytes());
            let (c, n) = parse_user_pass(&bytes).unwrap().unwrap();
            prop_assert_eq!(n, bytes.len());
            prop_assert_eq!(c, Credentials { username: user, password: pass });
        }

        #[test]
        fn roundtrip_request(cmd in command(), target in target()) {
            let bytes = encode_request(cmd.code(), &target);
            let (req, n) = parse_request(&bytes).unwrap().unwrap();
            prop_assert_eq!(n, bytes.len());
            prop_assert_eq!(req, Request { command: cmd, target });
        }

        #[test]
        fn roundtrip_reply(code in 0u8..=8, addr in any::<Option<SocketAddr>>()) {
            let r = match code {
                0 => Reply::Succeeded,
                1 => Reply::GeneralFailure,
                2 => Reply::NotAllowed,
                3 => Reply::NetworkUnreachable,
                4 => Reply::HostUnreachable,
                5 => Reply::ConnectionRefused,
                6 => Reply::TtlExpired,
                7 => Reply::CommandNotSupported,
                _ => Reply::AddressTypeNotSupported,
            };
            let bytes = reply(r, addr);
            let (c, a) = parse_reply(&bytes);
            prop_assert_eq!(c, code);
            // SocketAddr equality includes flowinfo/scope, which are not on the wire.
            let expected = addr.unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
            prop_assert_eq!((a.ip(), a.port()), (expected.ip(), expected.port()));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            for r in [
                parse_greeting(&bytes).map(|o| o.map(|(_, n)| n)),
                parse_user_pass(&bytes).map(|o| o.map(|(_, n)| n)),
                parse_request(&bytes).map(|o| o.map(|(_, n)| n)),
            ] {
                if let Ok(Some(n)) = r {
                    prop_assert!(n <= bytes.len());
                }
            }
        }

        #[test]
        fn arbitrary_after_version_never_panic(
            tail in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            // Force the right version bytes so the deeper paths are explored.
            let mut b5 = vec![VERSION];
            b5.extend_from_slice(&tail);
            let mut b1 = vec![AUTH_VERSION];
            b1.extend_from_slice(&tail);
            let mut req = vec![VERSION, 1, 0];
            req.extend_from_slice(&tail);
            let _ = parse_greeting(&b5);
            let _ = parse_request(&b5);
            let _ = parse_request(&req);
            let _ = parse_user_pass(&b1);
        }
    }
}
