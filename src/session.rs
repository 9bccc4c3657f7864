//! One request's journey, top to bottom: policy → route → candidates → dial. The listener (for
//! tunnels) and the forwarder (for absolute-form HTTP) both come here, so every protocol rotates
//! and fails over the same way.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::dial::{self, Connected, DialFailure, DialSettings, FailureMemory};
use crate::policy::Policy;
use crate::protocol::{Target, TargetHost};
use crate::resolve::{ResolveError, Resolver};

/// Why a request could not be given an upstream connection.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpenError {
    /// The policy refused the request.
    #[error("denied: {0}")]
    Denied(String),
    /// The target name has no usable addresses.
    #[error("DNS: {0}")]
    Dns(#[from] ResolveError),
    /// Every candidate failed to connect.
    #[error("connect failed: {0}")]
    Dial(#[from] DialFailure),
}

/// Everything requests share: configuration, resolver, failure memory. One per process.
pub struct Proxy {
    /// The configuration in force.
    pub config: Arc<Config>,
    /// The access rules.
    pub policy: Policy,
    /// The shared resolver.
    pub resolver: Arc<Resolver>,
    /// Recently failed upstream addresses.
    pub failures: FailureMemory,
    /// Connect bounds.
    pub dial: DialSettings,
}

impl Proxy {
    /// Builds the shared state from a validated configuration.
    pub fn new(config: Arc<Config>) -> Result<Arc<Self>, ResolveError> {
        let resolver = Resolver::new(&config.dns)?;
        Ok(Arc::new(Self {
            policy: Policy::new(&config.access),
            failures: FailureMemory::new(Duration::from_secs(config.dial.failure_memory_seconds)),
            dial: DialSettings::from(&config.dial),
            resolver,
            config,
        }))
    }

    /// How long a tunnel may idle.
    pub fn tunnel_idle(&self) -> Duration {
        Duration::from_secs(self.config.tunnel.idle_timeout_seconds)
    }

    /// Whether `client` may use the proxy.
    pub fn check_client(&self, client: Option<IpAddr>) -> Result<(), OpenError> {
        match client {
            Some(ip) if self.policy.allows_client(ip) => Ok(()),
            Some(ip) => Err(OpenError::Denied(format!("client {ip} is not allowed"))),
            None => Err(OpenError::Denied("client address unknown".into())),
        }
    }

    /// The addresses to try for `target`, in this request's order: rotated one step per request,
    /// recently failed addresses last.
    pub async fn candidates(&self, target: &Target) -> Result<Vec<SocketAddr>, OpenError> {
        let mut out: Vec<SocketAddr> = match &target.host {
            TargetHost::Ip(ip) => vec![SocketAddr::new(*ip, target.port)],
            TargetHost::Name(name) => {
                let resolved = self.resolver.resolve(name).await?;
                resolved
                    .rotated()
                    .map(|ip| SocketAddr::new(ip, target.port))
                    .collect()
            }
        };
        self.failures.order(&mut out);
        Ok(out)
    }

    /// Opens a connection to `target` for a tunnel: candidates, then ordered attempts.
    pub async fn open(&self, target: &Target) -> Result<Connected, OpenError> {
        let candidates = self.candidates(target).await?;
        Ok(dial::dial(&candidates, self.dial, &self.failures).await?)
    }
}
