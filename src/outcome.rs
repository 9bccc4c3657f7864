//! The words carousel uses for what happened to a request, shared by the metrics and the access
//! log so the two can be joined: one vocabulary, spelled in one place.

/// The protocol a client spoke to carousel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ClientProtocol {
    /// An absolute-form HTTP request (`GET http://host/path`), forwarded.
    #[default]
    Http,
    /// An HTTP `CONNECT` tunnel.
    Connect,
    /// SOCKS4 or SOCKS4a.
    Socks4,
    /// SOCKS5.
    Socks5,
}

impl ClientProtocol {
    /// Every protocol, for metrics initialised at zero.
    pub const ALL: [ClientProtocol; 4] = [Self::Http, Self::Connect, Self::Socks4, Self::Socks5];

    /// The `protocol` label and access-log word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Connect => "connect",
            Self::Socks4 => "socks4",
            Self::Socks5 => "socks5",
        }
    }
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Outcome {
    /// Served: the tunnel opened or the response was relayed.
    Ok,
    /// A tunnel closed by the idle timeout (it was served until then).
    IdleTimeout,
    /// A tunnel closed because the active checks marked its member down (`close_tunnels`).
    MemberDown,
    /// Closed by the shutdown: still open when the shutdown timeout after SIGTERM (or a
    /// graceful upgrade) ran out.
    Shutdown,
    /// Refused by the access policy or the client gate.
    Denied,
    /// Credentials missing, wrong, or the client's failure budget spent.
    AuthFailed,
    /// The name did not resolve, or a cluster had no members.
    DnsError,
    /// Every candidate refused or was unreachable.
    ConnectError,
    /// Connect attempts, or the upstream's response, ran out of time.
    Timeout,
    /// The request was malformed or not allowed by the protocol rules.
    BadRequest,
    /// A limit refused it.
    Overload,
    /// Anything else (an upstream that broke mid-response).
    #[default]
    Error,
}

impl Outcome {
    /// Every outcome, for metrics initialised at zero.
    pub const ALL: [Outcome; 12] = [
        Self::Ok,
        Self::IdleTimeout,
        Self::MemberDown,
        Self::Shutdown,
        Self::Denied,
        Self::AuthFailed,
        Self::DnsError,
        Self::ConnectError,
        Self::Timeout,
        Self::BadRequest,
        Self::Overload,
        Self::Error,
    ];

    /// The `outcome` label and access-log word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::IdleTimeout => "idle_timeout",
            Self::MemberDown => "member_down",
            Self::Shutdown => "shutdown",
            Self::Denied => "denied",
            Self::AuthFailed => "auth_failed",
            Self::DnsError => "dns_error",
            Self::ConnectError => "connect_error",
            Self::Timeout => "timeout",
            Self::BadRequest => "bad_request",
            Self::Overload => "overload",
            Self::Error => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for o in Outcome::ALL {
            assert!(seen.insert(o.as_str()), "{o:?}");
        }
        for p in ClientProtocol::ALL {
            assert!(seen.insert(p.as_str()), "{p:?}");
        }
    }
}
