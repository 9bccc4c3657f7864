//! HTTP/1.x request-head parsing (via `httparse`) for the CONNECT front-end,
//! plus the few canned responses the proxy sends itself.

use super::Target;

/// Largest request head (request line + headers + blank line) we buffer.
/// Bounds memory per connection and stops slow-loris style header floods.
pub const MAX_HEAD: usize = 16 * 1024;

/// Most headers accepted in one request head; more is treated as abuse.
pub const MAX_HEADERS: usize = 100;

/// Why an HTTP request head or CONNECT target was rejected.
///
/// Use [`Error::status`] for the status code of the error response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No complete head within [`MAX_HEAD`] bytes.
    #[error("HTTP request head larger than {MAX_HEAD} bytes")]
    TooLarge,
    /// More than [`MAX_HEADERS`] headers.
    #[error("more than {MAX_HEADERS} HTTP headers")]
    TooManyHeaders,
    /// Syntactically invalid request head.
    #[error("malformed HTTP request head: {0}")]
    Malformed(httparse::Error),
    /// CONNECT authority was not `host:port` with a valid host and port.
    #[error("invalid CONNECT target")]
    BadTarget,
    /// The head parsed but breaks a rule that keeps requests unambiguous (smuggling guards,
    /// Host rules, an absolute-form target a proxy can forward).
    #[error("bad request: {0}")]
    Refused(&'static str),
}

impl Error {
    /// The HTTP status to answer with: 431 for oversize heads or too many
    /// headers, 400 for malformed heads and bad targets.
    pub fn status(&self) -> u16 {
        match self {
            Error::TooLarge | Error::TooManyHeaders => 431,
            Error::Malformed(_) | Error::BadTarget | Error::Refused(_) => 400,
        }
    }
}

/// A parsed HTTP/1.x request head, owned so it can outlive the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Request method as sent (case preserved, e.g. `CONNECT`).
    pub method: String,
    /// Request target as sent (authority for CONNECT, path or URI otherwise).
    pub target: String,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// Headers in order; names as sent, values as raw bytes.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Head {
    /// Value of the first header called `name` (ASCII case-insensitive), so
    /// callers need not care how the client spelled it.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// Parses a request head from the start of `buf`.
///
/// Returns `Ok(None)` while the head is incomplete and shorter than
/// [`MAX_HEAD`]; the head and its length (including the final blank line)
/// once complete; [`Error::TooLarge`] if no complete head fits in
/// [`MAX_HEAD`] bytes. Bytes after the head (e.g. early tunnel data) are not
/// consumed.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, Error> {
    let window = buf.get(..MAX_HEAD).unwrap_or(buf);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(window) {
        Ok(httparse::Status::Complete(len)) => {
            let head = Head {
                method: req.method.unwrap_or_default().to_owned(),
                target: req.path.unwrap_or_default().to_owned(),
                version: req.version.unwrap_or_default(),
                headers: req
                    .headers
                    .iter()
                    .map(|h| (h.name.to_owned(), h.value.to_vec()))
                    .collect(),
            };
            Ok(Some((head, len)))
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => Err(Error::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(Error::TooManyHeaders),
        Err(e) => Err(Error::Malformed(e)),
    }
}

/// Parses a CONNECT request target (`host:port`, `[v6]:port`,
/// `1.2.3.4:port`) into a [`Target`].
///
/// The port is mandatory and must be 1..=65535 written as plain digits;
/// the host goes through [`Target::from_host_port`]. Unbracketed IPv6,
/// userinfo, paths and schemes are rejected.
pub fn connect_target(authority: &str) -> Result<Target, Error> {
    let (host, port) = authority.rsplit_once(':').ok_or(Error::BadTarget)?;
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::BadTarget);
    }
    let port: u16 = port.parse().map_err(|_| Error::BadTarget)?;
    if port == 0 {
        return Err(Error::BadTarget);
    }
    // An unbracketed IPv6 literal would make the port ambiguous.
    if host.contains(':') && !host.starts_with('[') {
        return Err(Error::BadTarget);
    }
    Target::from_host_port(host, port).ok_or(Error::BadTarget)
}

/// Builds a complete, self-describing plain-text response that closes the
/// connection; used for every error (and any other status) the proxy itself
/// returns. CR/LF and other control characters in `reason` are replaced by
/// spaces so it cannot inject headers.
pub fn response(status: u16, reason: &str, body_line: &str) -> Vec<u8> {
    let reason: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let body_len = body_line.len() + 1;
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {body_len}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    out.extend_from_slice(body_line.as_bytes());
    out.push(b'\n');
    out
}

/// The response that tells a CONNECT client its tunnel is open; bytes after
/// it belong to the tunnelled stream.
pub fn connect_established() -> &'static [u8] {
    b"HTTP/1.1 200 Connection established\r\n\r\n"
}

/// Request smuggling and header injection guards, for every request head carousel accepts
/// (forwarded or CONNECT), checked on the head as the client sent it: one clear Content-Length or
/// chunked, never both, never ambiguous; chunked only on HTTP/1.1; no control characters in
/// values. A head that passes is read the same way by carousel, by Pingora and by the upstream.
pub fn hygiene(head: &Head) -> Result<(), Error> {
    let mut cls = head
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.as_slice());
    let (cl, second_cl) = (cls.next(), cls.next());
    let mut tes = head
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"))
        .map(|(_, v)| v.as_slice());
    let (te, second_te) = (tes.next(), tes.next());
    if te.is_some() && cl.is_some() {
        return Err(Error::Refused("both Content-Length and Transfer-Encoding"));
    }
    if second_cl.is_some() {
        return Err(Error::Refused("more than one Content-Length"));
    }
    if let Some(cl) = cl {
        let cl = cl.trim_ascii();
        if cl.is_empty() || !cl.iter().all(u8::is_ascii_digit) || cl.len() > 18 {
            return Err(Error::Refused("invalid Content-Length"));
        }
    }
    if let Some(te) = te {
        if second_te.is_some() || !te.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            return Err(Error::Refused("Transfer-Encoding other than one `chunked`"));
        }
        if head.version == 0 {
            return Err(Error::Refused("Transfer-Encoding in an HTTP/1.0 request"));
        }
    }
    for (_, v) in &head.headers {
        if v.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(Error::Refused("control character in a header value"));
        }
    }
    Ok(())
}

/// Where an absolute-form request (`GET http://host:port/path HTTP/1.1`) goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardTarget {
    /// The destination.
    pub target: Target,
    /// The authority exactly as written in the request target: the `Host` sent upstream.
    pub authority: String,
    /// The origin-form path and query to send upstream (at least `/`).
    pub path: String,
    /// Whether the client's `Host` header must be dropped before the head is parsed again: it
    /// differs in spelling from the authority, which replaces it (RFC 9112 §3.2.2).
    pub replace_host: bool,
}

/// The destination of a request a forward proxy serves, with the Host rules of RFC 9112 §3.2:
/// the target must be an `http://` absolute URL without userinfo; at most one `Host`, without
/// userinfo; a `Host` that differs from the target's authority (say, only in case) is replaced by
/// it, as §3.2.2 tells a proxy to do.
pub fn forward_target(head: &Head) -> Result<ForwardTarget, Error> {
    use pingora::http::authority::{raw_target_authority, RawTargetAuthority};
    // A fragment is the client's business: it is never sent (RFC 9110 §4.2.4), and Pingora's
    // parser drops it too, so both read the same target.
    let target = head.target.split('#').next().unwrap_or_default();
    // The characters httparse lets through but a URI may not carry (a backtick, say): Pingora
    // parses the target as a URI and would refuse it unseen (fuzz finding F4).
    if ::http::Uri::try_from(head.target.as_str()).is_err() {
        return Err(Error::Refused("the request target is not a valid URI"));
    }
    let (scheme, authority, path) = match raw_target_authority(target.as_bytes()) {
        RawTargetAuthority::Absolute {
            scheme,
            authority,
            path_and_query,
        } => (scheme, authority, path_and_query),
        RawTargetAuthority::AmbiguousAuthority => {
            return Err(Error::Refused("ambiguous request target"))
        }
        RawTargetAuthority::None => {
            return Err(Error::Refused(
                "carousel is a proxy: send an absolute URL (http://host/path) or CONNECT",
            ))
        }
    };
    if !scheme.eq_ignore_ascii_case(b"http") {
        return Err(Error::Refused(
            "only http:// URLs are forwarded; use CONNECT for https",
        ));
    }
    if authority.contains(&b'@') {
        return Err(Error::Refused("userinfo in the request target"));
    }
    let authority = std::str::from_utf8(authority).map_err(|_| Error::BadTarget)?;
    if ::http::uri::Authority::try_from(authority).is_err() {
        return Err(Error::BadTarget);
    }
    let target = host_port(authority, 80).ok_or(Error::BadTarget)?;
    let mut hosts = head
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.as_slice());
    let (host, second) = (hosts.next(), hosts.next());
    if second.is_some() {
        return Err(Error::Refused("more than one Host header"));
    }
    if host.is_some_and(|h| h.contains(&b'@')) {
        return Err(Error::Refused("userinfo in the Host header"));
    }
    let path = std::str::from_utf8(path).map_err(|_| Error::BadTarget)?;
    let path = match path.chars().next() {
        None => "/".to_string(),
        Some('/') => path.to_string(),
        Some(_) => format!("/{path}"),
    };
    Ok(ForwardTarget {
        target,
        replace_host: host.is_some_and(|h| h != authority.as_bytes()),
        authority: authority.to_string(),
        path,
    })
}

/// Splits `host[:port]` / `[v6][:port]` with a default port.
pub fn host_port(s: &str, default_port: u16) -> Option<Target> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => port_number(p)?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Target::from_host_port(host, port);
    }
    match s.rsplit_once(':') {
        Some((h, p)) => Target::from_host_port(h, port_number(p)?),
        None => Target::from_host_port(s, default_port),
    }
}

/// A port written as 1 to 5 digits, not 0.
fn port_number(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse().ok().filter(|&n| n != 0)
}

/// The head `raw` with every `Host` line removed (for a head whose Host is replaced by the
/// target's authority). `raw` must be a complete head that [`parse_head`] accepted.
pub fn without_host(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut first = true;
    for line in raw.split_inclusive(|&b| b == b'\n') {
        let name = line.split(|&b| b == b':').next().unwrap_or_default();
        if !first && line.contains(&b':') && name.trim_ascii().eq_ignore_ascii_case(b"host") {
            continue;
        }
        first = false;
        out.extend_from_slice(line);
    }
    out
}

/// A forwardable request head: the head and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The head as parsed.
    pub head: Head,
    /// Its destination and the Host rule applied to it.
    pub target: ForwardTarget,
}

/// Parses and judges an absolute-form request head at the start of `buf`, with every rule a
/// forwarded request must pass: the limits of [`parse_head`], [`hygiene`], [`forward_target`],
/// and no bytes past the request's declared body (a pipelined next request, which is refused
/// rather than dropped). `Ok(None)` while the head is incomplete, as [`parse_head`].
pub fn parse_forward(buf: &[u8]) -> Result<Option<(Forward, usize)>, Error> {
    let Some((head, used)) = parse_head(buf)? else {
        return Ok(None);
    };
    hygiene(&head)?;
    let target = forward_target(&head)?;
    let extra = buf.len().saturating_sub(used) as u64;
    if declared_body(&head).is_some_and(|body| extra > body) {
        return Err(Error::Refused(
            "pipelined requests are not served: send the next request after the response",
        ));
    }
    Ok(Some((Forward { head, target }, used)))
}

/// The bytes to hand on for a head [`parse_forward`] accepted in `buf` (`used` long): the same
/// bytes, or, when its `Host` is replaced, the head without it followed by the rest.
pub fn forward_bytes(buf: &[u8], used: usize, target: &ForwardTarget) -> Vec<u8> {
    let (head, rest) = buf.split_at(used.min(buf.len()));
    let mut out = if target.replace_host {
        without_host(head)
    } else {
        head.to_vec()
    };
    out.extend_from_slice(rest);
    out
}

/// How many bytes of body follow a head (Content-Length), `None` for chunked or unknown: what
/// lets the listener tell a pipelined next request from this request's body.
pub fn declared_body(head: &Head) -> Option<u64> {
    if head
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"))
    {
        return None;
    }
    match head.header("content-length") {
        Some(v) => std::str::from_utf8(v).ok()?.trim().parse().ok(),
        None => Some(0),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

    use super::*;
    use crate::protocol::TargetHost;
    use proptest::prelude::*;
    use std::net::IpAddr;

    const CONNECT: &[u8] =
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\n\r\n";

    #[test]
    fn forward_targets_and_host_rules() {
        let head = |target: &str, headers: &[(&str, &str)]| Head {
            method: "GET".into(),
            target: target.into(),
            version: 1,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
        };
        let ok = forward_target(&head(
            "http://B1.test:8080/a?b",
            &[("Host", "b1.TEST:8080")],
        ))
        .unwrap();
        assert_eq!(ok.target.to_string(), "b1.test:8080");
        assert_eq!(
            (ok.authority.as_str(), ok.path.as_str()),
            ("B1.test:8080", "/a?b")
        );
        assert!(ok.replace_host, "a Host spelt differently is replaced");
        let same = forward_target(&head("http://x.test/", &[("Host", "x.test")])).unwrap();
        assert!(!same.replace_host);
        assert_eq!(same.target.port, 80);
        // Fuzz finding F3: the fragment is dropped, as Pingora's parser drops it.
        let frag = forward_target(&head("http://te0#/a?b", &[])).unwrap();
        assert_eq!((frag.authority.as_str(), frag.path.as_str()), ("te0", "/"));
        for (target, headers, why) in [
            ("/path", &[][..], "origin-form"),
            ("https://x.test/", &[][..], "https"),
            ("http://u:p@x.test/", &[][..], "userinfo"),
            (
                "http://x.test/",
                &[("Host", "a"), ("host", "b")][..],
                "two Hosts",
            ),
            (
                "http://x.test/",
                &[("Host", "u@x.test")][..],
                "userinfo in Host",
            ),
            ("http://x.test:0/", &[][..], "port 0"),
            ("http://x.test:99999/", &[][..], "port range"),
            ("://x.test/", &[][..], "ambiguous"),
            // Fuzz finding F4: httparse accepts a backtick, a URI does not.
            ("http://D/B`1.test:8?b", &[][..], "not a URI"),
        ] {
            assert!(
                forward_target(&head(target, headers)).is_err(),
                "{why}: {target}"
            );
        }
    }

    #[test]
    fn hygiene_table() {
        let head = |version: u8, headers: &[(&str, &[u8])]| Head {
            method: "POST".into(),
            target: "http://x.test/".into(),
            version,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect(),
        };
        type Headers<'a> = &'a [(&'a str, &'a [u8])];
        let cases: [(Headers, u8, bool); 10] = [
            (&[("Content-Length", b"3")], 1, true),
            (&[("Transfer-Encoding", b"chunked")], 1, true),
            (&[("Transfer-Encoding", b" Chunked ")], 1, true),
            (
                &[("Content-Length", b"3"), ("content-length", b"3")],
                1,
                false,
            ),
            (
                &[("Content-Length", b"3"), ("Transfer-Encoding", b"chunked")],
                1,
                false,
            ),
            (&[("Content-Length", b"-1")], 1, false),
            (&[("Transfer-Encoding", b"gzip, chunked")], 1, false),
            (
                &[
                    ("Transfer-Encoding", b"chunked"),
                    ("Transfer-Encoding", b"chunked"),
                ],
                1,
                false,
            ),
            (&[("Transfer-Encoding", b"chunked")], 0, false),
            (&[("X-A", b"a\x01b")], 1, false),
        ];
        for (headers, version, ok) in cases {
            assert_eq!(
                hygiene(&head(version, headers)).is_ok(),
                ok,
                "{headers:?} HTTP/1.{version}"
            );
        }
    }

    #[test]
    fn pipelined_requests_are_refused_and_bodies_are_not_mistaken_for_them() {
        let get = b"GET http://x.test/ HTTP/1.1\r\n\r\n";
        let mut two = get.to_vec();
        two.extend_from_slice(get);
        assert!(matches!(parse_forward(&two), Err(Error::Refused(_))));
        let post = b"POST http://x.test/ HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        assert!(parse_forward(post).unwrap().is_some());
        let host = b"GET http://X.test/ HTTP/1.1\r\nhost: x.test\r\nA: 1\r\n\r\n";
        let (f, used) = parse_forward(host).unwrap().unwrap();
        assert_eq!(
            forward_bytes(host, used, &f.target),
            b"GET http://X.test/ HTTP/1.1\r\nA: 1\r\n\r\n".to_vec()
        );
    }

    #[test]
    fn complete_head() {
        let (head, n) = parse_head(CONNECT).unwrap().unwrap();
        assert_eq!(n, CONNECT.len());
        assert_eq!(head.method, "CONNECT");
        assert_eq!(head.target, "example.com:443");
        assert_eq!(head.version, 1);
        assert_eq!(head.headers.len(), 2);
        assert_eq!(head.header("host"), Some(&b"example.com:443"[..]));
        assert_eq!(
            head.header("PROXY-AUTHORIZATION"),
            Some(&b"Basic Zm9vOmJhcg=="[..])
        );
        assert_eq!(head.header("x-missing"), None);
    }

    #[test]
    fn http10_and_trailing_data() {
        let mut buf = b"CONNECT [::1]:22 HTTP/1.0\r\n\r\n".to_vec();
        let len = buf.len();
        buf.extend_from_slice(b"SSH-2.0-OpenSSH\r\n");
        let (head, n) = parse_head(&buf).unwrap().unwrap();
        assert_eq!(n, len);
        assert_eq!(head.version, 0);
        assert!(head.headers.is_empty());
    }

    #[test]
    fn header_first_match_and_raw_bytes() {
        let buf = b"GET / HTTP/1.1\r\nX-A: 1\r\nx-a: 2\r\nX-B: \xff\xfe\r\n\r\n";
        let (head, _) = parse_head(buf).unwrap().unwrap();
        assert_eq!(head.header("x-A"), Some(&b"1"[..]));
        assert_eq!(head.header("x-b"), Some(&b"\xff\xfe"[..]));
    }

    #[test]
    fn incremental() {
        for i in 0..CONNECT.len() {
            assert_eq!(parse_head(&CONNECT[..i]), Ok(None), "prefix {i}");
        }
    }

    #[test]
    fn too_large() {
        let mut buf = b"CONNECT a:1 HTTP/1.1\r\nX: ".to_vec();
        buf.resize(MAX_HEAD - 1, b'a');
        assert_eq!(parse_head(&buf), Ok(None));
        buf.push(b'a');
        assert_eq!(parse_head(&buf), Err(Error::TooLarge));
        buf.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_head(&buf), Err(Error::TooLarge));
        assert_eq!(Error::TooLarge.status(), 431);
    }

    #[test]
    fn head_of_exactly_max_size_is_accepted() {
        let mut buf = b"CONNECT a:1 HTTP/1.1\r\nX: ".to_vec();
        buf.resize(MAX_HEAD - 4, b'a');
        buf.extend_from_slice(b"\r\n\r\n");
        assert_eq!(buf.len(), MAX_HEAD);
        let (_, n) = parse_head(&buf).unwrap().unwrap();
        assert_eq!(n, MAX_HEAD);
    }

    fn with_headers(n: usize) -> Vec<u8> {
        let mut buf = b"CONNECT a:1 HTTP/1.1\r\n".to_vec();
        for i in 0..n {
            buf.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        buf.extend_from_slice(b"\r\n");
        buf
    }

    #[test]
    fn header_count_limit() {
        let (head, _) = parse_head(&with_headers(100)).unwrap().unwrap();
        assert_eq!(head.headers.len(), 100);
        let err = parse_head(&with_headers(101)).unwrap_err();
        assert_eq!(err, Error::TooManyHeaders);
        assert_eq!(err.status(), 431);
    }

    #[test]
    fn malformed() {
        for bad in [
            &b"CONNECT\x01 a:1 HTTP/1.1\r\n\r\n"[..],
            b"CONNECT a:1 HTTP/2.0\r\n\r\n",
            b"CONNECT a:1 HTTP/1.1\r\nBad Header\r\n\r\n",
            b"\x16\x03\x01\x02\x00",
        ] {
            let err = parse_head(bad).unwrap_err();
            assert!(matches!(err, Error::Malformed(_)), "{bad:?}: {err:?}");
            assert_eq!(err.status(), 400);
        }
    }

    #[test]
    fn connect_targets() {
        assert_eq!(
            connect_target("Example.com:443"),
            Ok(Target {
                host: TargetHost::Name("example.com".into()),
                port: 443
            })
        );
        assert_eq!(
            connect_target("1.2.3.4:65535"),
            Ok(Target {
                host: TargetHost::Ip("1.2.3.4".parse().unwrap()),
                port: 65535
            })
        );
        let v6 = connect_target("[2001:db8::1]:8443").unwrap();
        assert_eq!(
            v6.host,
            TargetHost::Ip("2001:db8::1".parse::<IpAddr>().unwrap())
        );
        assert_eq!(v6.to_string(), "[2001:db8::1]:8443");
        assert_eq!(
            connect_target("a.example.:1").unwrap().to_string(),
            "a.example:1"
        );
    }

    #[test]
    fn bad_connect_targets() {
        for bad in [
            "",
            "example.com",
            "example.com:",
            "example.com:0",
            "example.com:65536",
            "example.com:99999",
            "example.com:+443",
            "example.com:-1",
            "example.com: 443",
            "example.com:0443x",
            ":443",
            "::1:443",
            "[::1]",
            "[::1]:",
            "[1.2.3.4]:80",
            "[::1:80",
            "user@example.com:443",
            "http://example.com:443",
            "example.com/x:443",
            "a..b:1",
            "127.1:80",
        ] {
            let err = connect_target(bad).unwrap_err();
            assert_eq!(err, Error::BadTarget, "{bad}");
            assert_eq!(err.status(), 400);
        }
        // Leading zeros are plain digits and allowed.
        assert_eq!(connect_target("a.b:00443").unwrap().port, 443);
    }

    #[test]
    fn responses() {
        let r = response(403, "Forbidden", "denied by policy");
        assert_eq!(
            r,
            b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 17\r\nConnection: close\r\n\r\ndenied by policy\n"
        );
        let r = response(502, "Bad\r\nX-Evil: 1", "");
        assert!(r.starts_with(b"HTTP/1.1 502 Bad  X-Evil: 1\r\n"));
        assert!(r.ends_with(b"Content-Length: 1\r\nConnection: close\r\n\r\n\n"));
        assert_eq!(
            connect_established(),
            b"HTTP/1.1 200 Connection established\r\n\r\n"
        );
    }

    #[test]
    fn responses_parse_back() {
        let r = response(431, "Request Header Fields Too Large", "too big");
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(&r).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("partial"),
        };
        assert_eq!(resp.code, Some(431));
        assert_eq!(&r[n..], b"too big\n");
    }

    /// Test-only encoder for request heads.
    fn encode_head(h: &Head) -> Vec<u8> {
        let mut v = format!("{} {} HTTP/1.{}\r\n", h.method, h.target, h.version).into_bytes();
        for (name, value) in &h.headers {
            v.extend_from_slice(name.as_bytes());
            v.extend_from_slice(b": ");
            v.extend_from_slice(value);
            v.extend_from_slice(b"\r\n");
        }
        v.extend_from_slice(b"\r\n");
        v
    }

    fn head() -> impl Strategy<Value = Head> {
        (
            "[A-Z]{1,10}",
            "[a-z0-9.:/\\[\\]?=&%-]{1,60}",
            0u8..=1,
            proptest::collection::vec(
                // Values: visible ASCII / obs-text, no leading/trailing space.
                (
                    "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}",
                    "([!-~\\x80-\\xff]([ -~]{0,30}[!-~])?)?",
                ),
                0..=MAX_HEADERS,
            ),
        )
            .prop_map(|(method, target, version, headers)| Head {
                method,
                target,
                version,
                headers: headers
                    .into_iter()
                    .map(|(n, v): (String, String)| {
                        (n, v.chars().map(|c| c as u32 as u8).collect())
                    })
                    .collect(),
            })
    }

    fn authority() -> impl Strategy<Value = (String, Target)> {
        let host = prop_oneof![
            any::<std::net::Ipv4Addr>().prop_map(|ip| (ip.to_string(), TargetHost::Ip(ip.into()))),
            any::<std::net::Ipv6Addr>()
                .prop_map(|ip| (format!("[{ip}]"), TargetHost::Ip(ip.into()))),
            "([a-z0-9_-]{1,12}\\.){0,4}[a-z][a-z0-9-]{0,12}"
                .prop_map(|n| (n.clone(), TargetHost::Name(n))),
        ];
        (host, 1u16..=65535)
            .prop_map(|((s, host), port)| (format!("{s}:{port}"), Target { host, port }))
    }

    proptest! {
        #[test]
        fn roundtrip_head(h in head()) {
            let bytes = encode_head(&h);
            prop_assume!(bytes.len() <= MAX_HEAD);
            let (parsed, n) = parse_head(&bytes).unwrap().unwrap();
            prop_assert_eq!(n, bytes.len());
            prop_assert_eq!(parsed, h);
        }

        #[test]
        fn roundtrip_connect_target((s, t) in authority()) {
            prop_assert_eq!(connect_target(&s), Ok(t.clone()));
            prop_assert_eq!(t.to_string(), s);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            if let Ok(Some((_, n))) = parse_head(&bytes) {
                prop_assert!(n <= bytes.len() && n <= MAX_HEAD);
            }
        }

        #[test]
        fn arbitrary_head_like_never_panic(s in "[A-Z]{1,8} [ -~]{0,40} HTTP/1\\.[01]\r\n([ -~]{0,40}\r\n){0,5}\r\n") {
            let _ = parse_head(s.as_bytes());
        }

        #[test]
        fn arbitrary_authority_never_panics(s in "\\PC{0,80}") {
            if let Ok(t) = connect_target(&s) {
                prop_assert!(t.port != 0);
            }
        }
    }
}
