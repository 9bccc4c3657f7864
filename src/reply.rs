//! What a client is told when its request cannot be served: one map from the cause
//! ([`OpenError`]) to an HTTP status and reason, a SOCKS5 reply code or a SOCKS4 code. The
//! listener (CONNECT, SOCKS) and the forwarder (absolute-form HTTP) both answer from here, so the
//! same failure reads the same in every protocol (the README's "Errors clients see" table).

use crate::dial::FailKind;
use crate::dns::ResolveError;
use crate::protocol::{http, socks4, socks5};
use crate::session::OpenError;

/// The HTTP status for a failed open: 403 denied, 407 credentials needed, 503 overloaded,
/// 504 when time ran out, 502 otherwise.
pub fn http_status(e: &OpenError) -> u16 {
    match e {
        OpenError::Denied(_) => 403,
        OpenError::AuthRequired => 407,
        OpenError::BadRequest(_) => 400,
        OpenError::ResponseTimeout(_) => 504,
        OpenError::BadResponse(_) => 502,
        OpenError::Overloaded(_) | OpenError::Dns(ResolveError::Overloaded) => 503,
        OpenError::Dns(_) | OpenError::NoMembers { .. } => 502,
        OpenError::Dial(d) if d.kind == FailKind::Timeout => 504,
        OpenError::Dial(d) if d.kind == FailKind::Exhausted => 503,
        OpenError::Dial(_) => 502,
        // The parent's answer, whatever it was, is a bad gateway for our client: its 407 is
        // about carousel's credentials, not the client's.
        OpenError::Parent(_) => 502,
    }
}

/// The reason phrase for the statuses carousel sends itself.
pub fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        407 => "Proxy Authentication Required",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// A complete HTTP error response that closes the connection, with `line` as its body.
pub fn http_error(status: u16, line: &str) -> Vec<u8> {
    http::response(status, reason(status), line)
}

/// The HTTP answer to a failed open: a 407 challenge when credentials would help, otherwise the
/// mapped status with the error as its one-line body. `challenge` is the 407's
/// `Proxy-Authenticate` lines (see `identity::negotiate::challenge`).
pub fn http_open_failure(e: &OpenError, challenge: &str) -> Vec<u8> {
    match e {
        OpenError::AuthRequired => proxy_auth_required(challenge),
        e => http_error(http_status(e), &e.to_string()),
    }
}

/// The 407 answer offering the schemes of `challenge` (complete `Proxy-Authenticate` lines, each
/// ending in CRLF, built where the realm is sanitised).
pub fn proxy_auth_required(challenge: &str) -> Vec<u8> {
    let body = "proxy authentication required\n";
    format!(
        "HTTP/1.1 407 Proxy Authentication Required\r\n{challenge}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The SOCKS5 reply code for a failed open.
pub fn socks5_reply(e: &OpenError) -> socks5::Reply {
    use socks5::Reply;
    match e {
        OpenError::Denied(_) | OpenError::AuthRequired => Reply::NotAllowed,
        OpenError::Overloaded(_)
        | OpenError::Dns(ResolveError::Overloaded)
        | OpenError::BadRequest(_)
        | OpenError::ResponseTimeout(_)
        | OpenError::BadResponse(_)
        | OpenError::Parent(_) => Reply::GeneralFailure,
        OpenError::Dns(_) | OpenError::NoMembers { .. } => Reply::HostUnreachable,
        OpenError::Dial(d) => match d.kind {
            FailKind::Refused => Reply::ConnectionRefused,
            FailKind::Unreachable => Reply::HostUnreachable,
            FailKind::Timeout => Reply::TtlExpired,
            FailKind::Other | FailKind::Exhausted => Reply::GeneralFailure,
        },
    }
}

/// The SOCKS4 answer to any failure: SOCKS4 has one code for "rejected or failed" (0x5B).
pub fn socks4_failure() -> [u8; 8] {
    socks4::reply(false)
}

/// What a client is sent, and the code the access log records for it: the HTTP status, the
/// SOCKS5 reply code (0-8) or the SOCKS4 one (90-91).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The bytes written to the client.
    pub bytes: Vec<u8>,
    /// The status or reply code they carry.
    pub status: u16,
}

impl Answer {
    /// An HTTP error that closes the connection, `line` its body.
    pub fn http(status: u16, line: &str) -> Self {
        Self {
            bytes: http_error(status, line),
            status,
        }
    }

    /// The HTTP answer to a failed open (see [`http_open_failure`]).
    pub fn http_open(e: &OpenError, challenge: &str) -> Self {
        Self {
            bytes: http_open_failure(e, challenge),
            status: http_status(e),
        }
    }

    /// 407 offering the schemes of `challenge`.
    pub fn auth_required(challenge: &str) -> Self {
        Self {
            bytes: proxy_auth_required(challenge),
            status: 407,
        }
    }

    /// A CONNECT tunnel established.
    pub fn connect_established() -> Self {
        Self {
            bytes: http::connect_established().to_vec(),
            status: 200,
        }
    }

    /// A SOCKS5 reply with `code` (and the bound address on success).
    pub fn socks5(code: socks5::Reply, bound: Option<std::net::SocketAddr>) -> Self {
        Self {
            bytes: socks5::reply(code, bound).to_vec(),
            status: code as u16,
        }
    }

    /// The SOCKS5 answer to a failed open.
    pub fn socks5_open(e: &OpenError) -> Self {
        Self::socks5(socks5_reply(e), None)
    }

    /// A SOCKS4 grant (0x5A) or refusal (0x5B).
    pub fn socks4(granted: bool) -> Self {
        Self {
            bytes: socks4::reply(granted).to_vec(),
            status: if granted { 0x5A } else { 0x5B },
        }
    }

    /// Protocol bytes that are not a final answer with a code (a SOCKS5 method or
    /// authentication reply that refuses): logged with status 0.
    pub fn raw(bytes: Vec<u8>) -> Self {
        Self { bytes, status: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dial::DialFailure;

    fn dial(kind: FailKind) -> OpenError {
        OpenError::Dial(DialFailure {
            kind,
            attempts: 3,
            detail: String::new(),
            cluster: String::new(),
        })
    }

    #[test]
    fn failures_map_to_the_documented_replies() {
        use socks5::Reply;
        let cases = [
            (dial(FailKind::Refused), 502, Reply::ConnectionRefused),
            (dial(FailKind::Unreachable), 502, Reply::HostUnreachable),
            (dial(FailKind::Timeout), 504, Reply::TtlExpired),
            (dial(FailKind::Other), 502, Reply::GeneralFailure),
            (
                OpenError::Dns(ResolveError::NotFound("x".into())),
                502,
                Reply::HostUnreachable,
            ),
            (
                OpenError::NoMembers {
                    cluster: "c".into(),
                    dns: None,
                },
                502,
                Reply::HostUnreachable,
            ),
            (
                OpenError::Denied(crate::policy::Refusal::NoRule),
                403,
                Reply::NotAllowed,
            ),
            (OpenError::AuthRequired, 407, Reply::NotAllowed),
            (
                OpenError::Dns(ResolveError::Overloaded),
                503,
                Reply::GeneralFailure,
            ),
        ];
        for (e, status, reply) in cases {
            assert_eq!(http_status(&e), status, "{e}");
            assert_eq!(socks5_reply(&e), reply, "{e}");
        }
        let c = "Proxy-Authenticate: Negotiate\r\nProxy-Authenticate: Basic realm=\"r\"\r\n";
        let text = String::from_utf8(proxy_auth_required(c)).unwrap();
        assert!(text.contains(c), "{text}");
        assert!(
            text.ends_with("\r\n\r\nproxy authentication required\n"),
            "{text}"
        );
        let auth = String::from_utf8(http_open_failure(&OpenError::AuthRequired, "r")).unwrap();
        assert!(auth.starts_with("HTTP/1.1 407 "), "{auth}");
        assert_eq!(socks4_failure()[1], 0x5B);
    }
}
