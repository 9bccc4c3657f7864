//! Why a request, or the proxy itself, could not be set up.

use crate::dial::{DialFailure, FailKind};
use crate::dns::ResolveError;
use crate::outcome::Outcome;

/// Why the shared state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The resolver could not be built from `[dns]`.
    #[error("{0}")]
    Resolver(#[from] ResolveError),
    /// A TLS listener's certificate could not be used.
    #[error("TLS listener: {0}")]
    Tls(String),
    /// The access log could not be opened.
    #[error("access log {0}: {1}")]
    AccessLog(String, std::io::Error),
}

/// Why a request could not be given an upstream connection.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpenError {
    /// The policy refused the request.
    #[error("denied: {0}")]
    Denied(String),
    /// A rule would allow it for an authenticated user, and the client gave no valid credentials.
    #[error("proxy authentication required")]
    AuthRequired,
    /// The target name has no usable addresses.
    #[error("DNS: {0}")]
    Dns(#[from] ResolveError),
    /// A configured cluster has no members to offer.
    #[error("cluster {0}: no members available")]
    NoMembers(String),
    /// A limit refused the request (too many lookups in flight).
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// Every candidate failed to connect.
    #[error("connect failed: {0}")]
    Dial(#[from] DialFailure),
}

impl OpenError {
    /// How a request that met this error ended, for the metrics and the access log.
    pub fn outcome(&self) -> Outcome {
        match self {
            OpenError::Denied(_) => Outcome::Denied,
            OpenError::AuthRequired => Outcome::AuthFailed,
            OpenError::Dns(ResolveError::Overloaded) | OpenError::Overloaded(_) => {
                Outcome::Overload
            }
            OpenError::Dns(_) | OpenError::NoMembers(_) => Outcome::DnsError,
            OpenError::Dial(d) if d.kind == FailKind::Timeout => Outcome::Timeout,
            OpenError::Dial(d) if d.kind == FailKind::Exhausted => Outcome::Overload,
            OpenError::Dial(_) => Outcome::ConnectError,
        }
    }
}
