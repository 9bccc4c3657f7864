//! The TLS ("HTTPS proxy") listener: carousel terminates TLS itself with rustls so the certificate
//! can be swapped on SIGHUP without dropping connections, and wraps the decrypted stream so the
//! rest of carousel (sniffing, CONNECT, pingora-proxy forwarding) sees an ordinary Pingora stream.

use std::fmt::Debug;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::config::TlsSection;

/// Reads a PEM certificate chain and key into a rustls signing key; the error is one line.
pub fn load_certified_key(t: &TlsSection) -> Result<Arc<CertifiedKey>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    for p in [&t.cert, &t.key] {
        // A FIFO or device would block the reload; only regular files are read.
        if !p.is_file() {
            return Err(format!("{}: not a regular file", p.display()));
        }
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&t.cert)
        .map_err(|e| format!("{}: {e}", t.cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", t.cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", t.cert.display()));
    }
    let key =
        PrivateKeyDer::from_pem_file(&t.key).map_err(|e| format!("{}: {e}", t.key.display()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("{}: {e}", t.key.display()))?;
    Ok(Arc::new(CertifiedKey::new(certs, signer)))
}

/// Hands rustls whatever certificate is current.
#[derive(Debug)]
struct Current(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// A TLS acceptor whose certificate can be replaced while it runs.
pub struct Acceptor {
    current: Arc<Current>,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl Acceptor {
    /// Builds an acceptor serving `key` (see [`load_certified_key`]).
    pub fn new(key: Arc<CertifiedKey>) -> Result<Self, String> {
        let current = Arc::new(Current(ArcSwap::new(key)));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            current,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(cfg)),
        })
    }

    /// Serves `key` from the next handshake on (SIGHUP with a renewed certificate).
    pub fn install(&self, key: Arc<CertifiedKey>) {
        self.current.0.store(key);
    }

    /// Completes the TLS handshake on `stream` and returns the decrypted stream.
    pub async fn accept(&self, stream: Stream) -> std::io::Result<Stream> {
        let digest = stream.get_socket_digest();
        let id = stream.id();
        let tls = self.acceptor.accept(stream).await?;
        Ok(Box::new(TlsClient {
            inner: tls,
            digest,
            id,
            rewind: Vec::new(),
        }))
    }
}

/// Puts bytes back in front of a TLS client stream (`any` came from `Stream::into_any`);
/// `None` if it is not one.
pub fn unread(any: Box<dyn std::any::Any>, bytes: &[u8]) -> Option<Stream> {
    let mut tls = any.downcast::<TlsClient>().ok()?;
    let mut front = bytes.to_vec();
    front.extend_from_slice(&tls.rewind);
    tls.rewind = front;
    Some(tls)
}

/// A client's decrypted TLS stream, presented as a Pingora stream.
struct TlsClient {
    inner: tokio_rustls::server::TlsStream<Stream>,
    digest: Option<Arc<SocketDigest>>,
    id: UniqueIDType,
    /// Bytes peeked and not yet read.
    rewind: Vec<u8>,
}

impl Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient").field("id", &self.id).finish()
    }
}

impl AsyncRead for TlsClient {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.rewind.is_empty() {
            let n = self.rewind.len().min(buf.remaining());
            buf.put_slice(&self.rewind[..n]);
            self.rewind.drain(..n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsClient {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for TlsClient {
    async fn shutdown(&mut self) {
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.inner).await;
    }
}

impl UniqueID for TlsClient {
    fn id(&self) -> UniqueIDType {
        self.id
    }
}

impl Ssl for TlsClient {}

impl GetTimingDigest for TlsClient {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        Vec::new()
    }
}

impl GetProxyDigest for TlsClient {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for TlsClient {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.digest.clone()
    }
}

#[async_trait]
impl Peek for TlsClient {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        while self.rewind.len() < buf.len() {
            let mut chunk = vec![0u8; buf.len() - self.rewind.len()];
            let n = self.inner.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.rewind.extend_from_slice(&chunk[..n]);
        }
        buf.copy_from_slice(&self.rewind[..buf.len()]);
        Ok(true)
    }
}

/// The CA roots a TLS client trusts: the PEM certificates of `ca_file` (returned too, for
/// callers that wrap them), or the system's roots without one.
pub fn client_roots(
    ca_file: Option<&std::path::Path>,
) -> Result<
    (
        rustls::RootCertStore,
        Vec<rustls::pki_types::CertificateDer<'static>>,
    ),
    String,
> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let Some(path) = ca_file else {
        let found = rustls_native_certs::load_native_certs()
            .map_err(|e| format!("the system's CA certificates: {e}"))?;
        for c in found {
            let _ = roots.add(c);
        }
        return Ok((roots, Vec::new()));
    };
    let shown = path.display();
    let certs: Vec<rustls::pki_types::CertificateDer<'static>> =
        rustls::pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("{shown}: {e}"))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{shown}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{shown}: no PEM certificate in it"));
    }
    for c in &certs {
        roots
            .add(c.clone())
            .map_err(|e| format!("{shown}: a certificate is not a usable CA: {e}"))?;
    }
    Ok((roots, certs))
}

/// A TLS client configuration (ring, TLS 1.2 and 1.3) trusting `roots`: parents, the directory.
pub fn client_config(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
