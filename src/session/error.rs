//! Why a request, or the proxy itself, could not be set up.

use std::time::Duration;

use crate::dial::{DialFailure, FailKind};
use crate::dns::ResolveError;
use crate::limits::Limit;
use crate::outcome::Outcome;
use crate::policy::Refusal;

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
    /// The policy (or the client gate) refused the request.
    #[error("denied: {0}")]
    Denied(Refusal),
    /// A rule would allow it for an authenticated user, and the client gave no valid credentials.
    #[error("proxy authentication required")]
    AuthRequired,
    /// The target name has no usable addresses.
    #[error("DNS: {0}")]
    Dns(#[from] ResolveError),
    /// A configured cluster has no members to offer.
    #[error("cluster {cluster}: no members available{}", dns.as_ref().map(|e| format!(" (DNS: {e})")).unwrap_or_default())]
    NoMembers {
        /// The cluster.
        cluster: String,
        /// Why discovery found none, if it failed.
        dns: Option<String>,
    },
    /// A connection limit refused the client.
    #[error("{0}")]
    Overloaded(#[from] Limit),
    /// Every candidate failed to connect.
    #[error("connect failed: {0}")]
    Dial(#[from] DialFailure),
    /// The request did not follow the protocol's rules (the port speaks another protocol, or
    /// pingora's parser refused the head).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The upstream accepted a forwarded request and sent no response head in time.
    #[error("upstream sent no response within {0:?}")]
    ResponseTimeout(Duration),
    /// The upstream's response broke the forward path's bounds (too many 1xx, a head too
    /// large) or the upstream failed mid-response.
    #[error("{0}")]
    BadResponse(String),
    /// A parent proxy refused the destination or failed to answer for it.
    #[error("{0}")]
    Parent(#[from] crate::parent::ParentError),
}

impl OpenError {
    /// How a request that met this error ended, for the metrics and the access log.
    pub fn outcome(&self) -> Outcome {
        match self {
            OpenError::Denied(_) => Outcome::Denied,
            OpenError::BadRequest(_) => Outcome::BadRequest,
            OpenError::ResponseTimeout(_) => Outcome::Timeout,
            OpenError::BadResponse(_) => Outcome::Error,
            OpenError::AuthRequired => Outcome::AuthFailed,
            OpenError::Dns(ResolveError::Overloaded) | OpenError::Overloaded(_) => {
                Outcome::Overload
            }
            OpenError::Dns(_) | OpenError::NoMembers { .. } => Outcome::DnsError,
            OpenError::Dial(d) if d.kind == FailKind::Timeout => Outcome::Timeout,
            OpenError::Dial(d) if d.kind == FailKind::Exhausted => Outcome::Overload,
            OpenError::Dial(_) => Outcome::ConnectError,
            OpenError::Parent(crate::parent::ParentError::Refused { .. }) => Outcome::Denied,
            OpenError::Parent(_) => Outcome::ConnectError,
        }
    }
}
