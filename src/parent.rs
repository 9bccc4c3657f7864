//! Parent proxies: once the dial has connected to a parent (a member of a cluster with
//! `[cluster.parent]`, picked, checked, ejected and raced like any member), carousel asks it for
//! the destination: by name and unresolved, so the parent resolves it, or as the address
//! carousel picked when the rule says `resolve_destination`. HTTPS parents get the same
//! requests inside a verified TLS session. (Plain HTTP requests go to HTTP parents in absolute
//! form, through pingora: `forward`.)
//!
//! A parent that answers and says no (a 4xx such as 407 for bad parent credentials or 403, a
//! SOCKS5 "not allowed") is told apart from a dead one: its refusal is passed on to the client
//! (through `reply`) and never counts against the parent. Only a failure to answer (a 5xx,
//! garbage, a close, a failed TLS handshake, no answer in time) counts, as a failed connect
//! does.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use pingora::utils::tls::WrappedX509;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::ParentProtocol;
use crate::protocol::{Target, TargetHost};
use crate::tunnel::Upstream;

/// Largest answer head read from a parent.
const MAX_HEAD: usize = 16 * 1024;

/// What carousel authenticates to its parents with (from `credentials_file`). Its `Debug`
/// shows the user only: the password never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    user: String,
    password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <password>)", self.user)
    }
}

impl Credentials {
    /// Reads `user:password` from the first line of `path`.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
        match line.split_once(':') {
            Some((user, password))
                if !user.is_empty() && user.len() <= 255 && password.len() <= 255 =>
            {
                Ok(Self {
                    user: user.to_string(),
                    password: password.to_string(),
                })
            }
            _ => Err(format!(
                "{}: the first line must be user:password (each at most 255 bytes)",
                path.display()
            )),
        }
    }

    /// The `Proxy-Authorization` value an HTTP parent is sent (Basic).
    pub fn basic(&self) -> String {
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.user, self.password));
        format!("Basic {token}")
    }
}

/// How carousel reaches one cluster of parents: what it authenticates with and, for HTTPS
/// parents, the TLS client that verifies them. Read with the configuration's files, swapped by
/// a reload.
#[derive(Debug, Clone, Default)]
pub struct Link {
    /// Sent to every parent of the cluster; never a client's.
    pub credentials: Option<Credentials>,
    /// For `protocol = "https"`.
    pub tls: Option<Arc<Tls>>,
}

/// The TLS side of an HTTPS parent: verified against the configured CAs (or the system's) for
/// one server name, by carousel's own handshake for tunnels and by pingora's for forwarded
/// requests.
pub struct Tls {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    /// The name the parents' certificate must be valid for, sent as SNI.
    pub sni: String,
    /// The configured CAs in the form pingora's per-peer store takes (`None`: the system's).
    pub ca: Option<Arc<[WrappedX509]>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("sni", &self.sni)
            .field("own_ca", &self.ca.is_some())
            .finish()
    }
}

impl Tls {
    /// A client for parents named `sni` whose certificates chain to the CAs of `ca_file` (a
    /// PEM file), or to the system's roots without one.
    pub fn load(ca_file: Option<&Path>, sni: &str) -> Result<Self, String> {
        let name = ServerName::try_from(sni.to_string())
            .map_err(|e| format!("server name {sni:?}: {e}"))?;
        let (roots, certs) = crate::tls::client_roots(ca_file)?;
        let ca = match (ca_file, certs) {
            (Some(path), certs) => {
                let shown = path.display();
                let mut wrapped = Vec::new();
                for c in certs {
                    // pingora's wrapper panics on what its X.509 parser refuses: refused here,
                    // at load, instead.
                    let der = c.to_vec();
                    let w = std::panic::catch_unwind(|| {
                        WrappedX509::new(der, pingora::utils::tls::parse_x509)
                    })
                    .map_err(|_| format!("{shown}: a certificate does not parse as X.509"))?;
                    wrapped.push(w);
                }
                Some(Arc::from(wrapped))
            }
            (None, _) => None,
        };
        Ok(Self {
            config: crate::tls::client_config(roots)?,
            name,
            sni: sni.to_string(),
            ca,
        })
    }

    /// The TLS session to a parent over a plain connection to it.
    async fn connect(&self, stream: Upstream) -> std::io::Result<Upstream> {
        let tcp = match stream {
            Upstream::Tcp(s) => s,
            tls @ Upstream::Tls(_) => return Ok(tls),
        };
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let s = connector.connect(self.name.clone(), tcp).await?;
        Ok(Upstream::Tls(Box::new(s)))
    }
}

/// How asking a parent for the destination failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ParentError {
    /// The parent answered and said no: its answer, not its health.
    #[error("parent {parent} refused: {reason}")]
    Refused {
        /// The parent.
        parent: SocketAddr,
        /// Its answer (status line, or SOCKS5 reply).
        reason: String,
    },
    /// The parent did not answer as a proxy (5xx, garbage, closed, too slow): counted against
    /// it like a failed connect.
    #[error("parent {parent} failed: {reason}")]
    Failed {
        /// The parent.
        parent: SocketAddr,
        /// What went wrong.
        reason: String,
    },
}

/// Asks the parent on `stream` for `target` within `limit` (for an HTTPS parent, inside the
/// TLS session it first sets up). On success returns the stream to the destination and the
/// bytes the parent sent after its answer (the destination's first, for the client).
pub async fn open(
    stream: Upstream,
    parent: SocketAddr,
    protocol: ParentProtocol,
    target: &Target,
    link: &Link,
    limit: Duration,
) -> Result<(Upstream, Vec<u8>), ParentError> {
    let failed = |reason: String| ParentError::Failed { parent, reason };
    let credentials = link.credentials.as_ref();
    let work = async move {
        let mut stream = match (&link.tls, protocol) {
            (Some(tls), ParentProtocol::Https) => tls
                .connect(stream)
                .await
                .map_err(|e| failed(format!("TLS: {e}")))?,
            (None, ParentProtocol::Https) => {
                return Err(failed("no TLS client for an https parent".into()))
            }
            _ => stream,
        };
        let early = match protocol {
            ParentProtocol::Http | ParentProtocol::Https => {
                http_connect(&mut stream, parent, target, credentials).await?
            }
            ParentProtocol::Socks5 => {
                socks5_connect(&mut stream, parent, target, credentials).await?
            }
        };
        Ok((stream, early))
    };
    match tokio::time::timeout(limit, work).await {
        Ok(r) => r,
        Err(_) => Err(failed(format!("no answer within {limit:?}"))),
    }
}

/// `CONNECT host:port` to an HTTP parent.
async fn http_connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    parent: SocketAddr,
    target: &Target,
    credentials: Option<&Credentials>,
) -> Result<Vec<u8>, ParentError> {
    let failed = |reason: String| ParentError::Failed { parent, reason };
    let authority = target.to_string();
    let mut head = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(c) = credentials {
        head.push_str(&format!("Proxy-Authorization: {}\r\n", c.basic()));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| failed(e.to_string()))?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| failed(e.to_string()))?;
        if n == 0 {
            return Err(failed("closed before answering".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(used)) => {
                let code = resp.code.unwrap_or(0);
                let reason = format!("{code} {}", resp.reason.unwrap_or("").trim());
                return match code {
                    200..=299 => Ok(buf[used..].to_vec()),
                    400..=499 => Err(ParentError::Refused { parent, reason }),
                    _ => Err(failed(reason)),
                };
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => return Err(failed("answer head too large".into())),
            Err(e) => return Err(failed(format!("not an HTTP answer: {e}"))),
        }
    }
}

/// SOCKS5 CONNECT by name (or address) to a SOCKS5 parent (RFC 1928, RFC 1929).
async fn socks5_connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    parent: SocketAddr,
    target: &Target,
    credentials: Option<&Credentials>,
) -> Result<Vec<u8>, ParentError> {
    let failed = |reason: String| ParentError::Failed { parent, reason };
    let refused = |reason: String| ParentError::Refused { parent, reason };
    let io = |e: std::io::Error| ParentError::Failed {
        parent,
        reason: e.to_string(),
    };
    let method = if credentials.is_some() { 2 } else { 0 };
    stream.write_all(&[5, 1, method]).await.map_err(io)?;
    let mut two = [0u8; 2];
    stream.read_exact(&mut two).await.map_err(io)?;
    if two[0] != 5 {
        return Err(failed("not a SOCKS5 answer".into()));
    }
    if two[1] != method {
        return Err(refused(format!("no acceptable method (offered {method})")));
    }
    if let Some(c) = credentials {
        let mut auth = vec![1, c.user.len() as u8];
        auth.extend_from_slice(c.user.as_bytes());
        auth.push(c.password.len() as u8);
        auth.extend_from_slice(c.password.as_bytes());
        stream.write_all(&auth).await.map_err(io)?;
        stream.read_exact(&mut two).await.map_err(io)?;
        if two[1] != 0 {
            return Err(refused("username/password refused".into()));
        }
    }
    let mut req = vec![5, 1, 0];
    match &target.host {
        TargetHost::Name(n) => {
            req.push(3);
            req.push(n.len() as u8);
            req.extend_from_slice(n.as_bytes());
        }
        TargetHost::Ip(std::net::IpAddr::V4(v4)) => {
            req.push(1);
            req.extend_from_slice(&v4.octets());
        }
        TargetHost::Ip(std::net::IpAddr::V6(v6)) => {
            req.push(4);
            req.extend_from_slice(&v6.octets());
        }
    }
    req.extend_from_slice(&target.port.to_be_bytes());
    stream.write_all(&req).await.map_err(io)?;
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await.map_err(io)?;
    if head[0] != 5 {
        return Err(failed("not a SOCKS5 answer".into()));
    }
    // The bound address that follows: skipped.
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut l = [0u8; 1];
            stream.read_exact(&mut l).await.map_err(io)?;
            usize::from(l[0]) + 2
        }
        t => return Err(failed(format!("address type {t} in the answer"))),
    };
    let mut skip = vec![0u8; rest];
    stream.read_exact(&mut skip).await.map_err(io)?;
    match head[1] {
        0 => Ok(Vec::new()),
        // General failure and TTL expired say the parent could not do it; the others are its
        // verdict on the destination or on us.
        1 | 6 => Err(failed(format!("SOCKS5 reply {:#04x}", head[1]))),
        code => Err(refused(format!("SOCKS5 reply {code:#04x}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show_their_password() {
        let dir = std::env::temp_dir().join(format!("carousel-parent-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("creds");
        std::fs::write(&f, "branch:s3cret\n").unwrap();
        let c = Credentials::load(&f).unwrap();
        assert_eq!(format!("{c:?}"), "Credentials(branch, <password>)");
        std::fs::write(&f, "no colon\n").unwrap();
        assert!(Credentials::load(&f).unwrap_err().contains("user:password"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
