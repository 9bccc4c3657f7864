//! `[log]`, `[admin]` and `[pac]`: what carousel tells the people and browsers around it.

use std::net::SocketAddr;

use serde::Deserialize;

/// Access log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccessFormat {
    /// One human-readable line.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// Diagnostic level (`error`, `warn`, `info`, `debug`, `trace`, or a tracing filter);
    /// `RUST_LOG` overrides it.
    pub level: String,
    /// Access log destination: `stdout`, `off`, or a file path.
    pub access: String,
    /// Access log format.
    pub access_format: AccessFormat,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            level: "info".into(),
            access: "stdout".into(),
            access_format: AccessFormat::Text,
        }
    }
}

/// The admin listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Whether to run it.
    pub enabled: bool,
    /// Where it listens. Keep it on loopback or a management network: it is unauthenticated.
    pub address: SocketAddr,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            enabled: true,
            address: "127.0.0.1:9090".parse().expect("literal address"),
        }
    }
}

/// Inputs of the generated PAC file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PacSection {
    /// `host:port` clients use for the HTTP proxy, one or a list in order of preference (for
    /// client-side failover between replicas or sites); default: the first HTTP listener.
    #[serde(deserialize_with = "one_or_many")]
    pub http_proxy: Vec<String>,
    /// `host:port` clients use for SOCKS, one or a list; default: the first SOCKS listener.
    #[serde(deserialize_with = "one_or_many")]
    pub socks_proxy: Vec<String>,
    /// Domain suffixes (`.example.com`) or host names sent through carousel besides the clusters.
    pub domains: Vec<String>,
    /// What everything else gets, for example `DIRECT` or `PROXY other:8080`.
    pub default: String,
}

impl Default for PacSection {
    fn default() -> Self {
        Self {
            http_proxy: Vec::new(),
            socks_proxy: Vec::new(),
            domains: Vec::new(),
            default: "DIRECT".into(),
        }
    }
}

/// A string or a list of strings.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::One(s) => vec![s],
        Raw::Many(v) => v,
    })
}
