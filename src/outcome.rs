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

/// Why one connect attempt (or a whole request's attempts) failed, in the categories a client
/// reply can express.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    /// The peer answered with a reset: nothing listens there.
    Refused,
    /// No route to the host or network.
    Unreachable,
    /// The attempt (or the whole deadline) ran out of time.
    Timeout,
    /// Anything else (invalid address, an error the categories above do not name).
    Other,
    /// carousel had no descriptor left for the attempt (the dial share of the open-file budget
    /// was spent): nothing was tried, and nothing counts against the member.
    Exhausted,
}

impl FailKind {
    /// Classifies an I/O error from `connect`.
    pub fn of(e: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::ConnectionRefused | K::ConnectionReset => FailKind::Refused,
            K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable => {
                FailKind::Unreachable
            }
            K::TimedOut => FailKind::Timeout,
            _ => FailKind::Other,
        }
    }
}

/// What one upstream connect attempt came to: the `result` label of
/// `carousel_connect_attempts_total`, one word per case, used from the dial to the member's
/// counters and the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Connected (and won the race, if there was one).
    Ok,
    /// Refused.
    Refused,
    /// Timed out.
    Timeout,
    /// No route.
    Unreachable,
    /// Any other failure.
    Error,
    /// Lost a race and was closed unfinished (the watch was full): neither success nor failure.
    Abandoned,
    /// Lost a race, was watched and timed out at its own connect timeout: a failure.
    AbandonedTimeout,
    /// Lost a race, was watched and connected later: closed, a success (slow, not dead).
    AbandonedLate,
}

impl Attempt {
    /// Every result, for metric series made at zero.
    pub const ALL: [Attempt; 8] = [
        Self::Ok,
        Self::Refused,
        Self::Timeout,
        Self::Unreachable,
        Self::Error,
        Self::Abandoned,
        Self::AbandonedTimeout,
        Self::AbandonedLate,
    ];

    /// The `result` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Refused => "refused",
            Self::Timeout => "timeout",
            Self::Unreachable => "unreachable",
            Self::Error => "error",
            Self::Abandoned => "abandoned",
            Self::AbandonedTimeout => "abandoned_timeout",
            Self::AbandonedLate => "abandoned_late",
        }
    }

    /// The result of a failed attempt of `kind`; `late`: one a race left behind, watched.
    pub fn failed(kind: FailKind, late: bool) -> Self {
        match kind {
            FailKind::Timeout if late => Self::AbandonedTimeout,
            FailKind::Refused => Self::Refused,
            FailKind::Timeout => Self::Timeout,
            FailKind::Unreachable => Self::Unreachable,
            FailKind::Other | FailKind::Exhausted => Self::Error,
        }
    }

    /// Its place in [`Attempt::ALL`].
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|a| *a == self).unwrap_or(0)
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
