//! Active health checks: one loop per member, spread with jitter, checked at once when the member
//! is discovered. Kinds: TCP connect, send/expect, TLS handshake.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Cluster, Member};
use crate::config::{HealthKind, HealthSection};

/// Starts the check loop of `member`; it ends when the member or the cluster is retired.
pub fn spawn(cluster: Arc<Cluster>, member: Arc<Member>) {
    tokio::spawn(async move {
        let h = cluster.cfg.health.clone();
        let interval = h.interval;
        let server_name = if h.tls_server_name.is_empty() {
            cluster.name.clone()
        } else {
            h.tls_server_name.clone()
        };
        loop {
            if member.is_retired() || cluster.is_retired() {
                return;
            }
            // A check holds a descriptor of the checks' share, which nothing else may take: a
            // flood of clients cannot make the checks fail and mark healthy members down. A
            // round the share (or the process) has no descriptor for says nothing of the member
            // and is skipped.
            match crate::descriptors::budget().checks.try_take() {
                Some(_fd) => match check(&h, member.addr, &server_name).await {
                    Ok(()) => cluster.report_check(&member, true, ""),
                    Err(Failed::Member(e)) => cluster.report_check(&member, false, &e),
                    Err(Failed::Local(e)) => {
                        tracing::warn!(cluster = %cluster.name, member = %member.addr, error = %e, "health check skipped: no descriptor");
                    }
                },
                None => {
                    tracing::warn!(cluster = %cluster.name, member = %member.addr, "health check skipped: the checks' descriptor share is spent");
                }
            }
            let spread = f64::from(h.jitter_percent) / 100.0;
            let factor = 1.0 - spread + fastrand::f64() * 2.0 * spread;
            tokio::time::sleep(interval.mul_f64(factor.max(0.05))).await;
        }
    });
}

/// Why a check did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failed {
    /// The member failed it: a one-line reason.
    Member(String),
    /// carousel could not run it (out of descriptors or memory): says nothing of the member.
    Local(String),
}

/// Whether a connect error is this process's shortage rather than the member's answer.
fn is_local(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// One check of `addr`.
pub async fn check(h: &HealthSection, addr: SocketAddr, server_name: &str) -> Result<(), Failed> {
    let timeout = h.timeout;
    let work = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| {
            if is_local(&e) {
                Failed::Local(format!("connect: {e}"))
            } else {
                Failed::Member(format!("connect: {e}"))
            }
        })?;
        match h.kind {
            HealthKind::Tcp => Ok(()),
            HealthKind::SendExpect => {
                if !h.send.is_empty() {
                    stream
                        .write_all(h.send.as_bytes())
                        .await
                        .map_err(|e| Failed::Member(format!("send: {e}")))?;
                }
                let want = h.expect.as_bytes();
                let mut got = vec![0u8; want.len()];
                stream
                    .read_exact(&mut got)
                    .await
                    .map_err(|e| Failed::Member(format!("read: {e}")))?;
                if got == want {
                    Ok(())
                } else {
                    Err(Failed::Member(format!(
                        "unexpected reply {:?}",
                        String::from_utf8_lossy(&got)
                    )))
                }
            }
            HealthKind::Tls => tls_handshake(stream, server_name)
                .await
                .map_err(Failed::Member),
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(Failed::Member(format!("timed out after {timeout:?}"))),
    }
}

async fn tls_handshake(stream: TcpStream, server_name: &str) -> Result<(), String> {
    use rustls::pki_types::ServerName;
    let config = tls_client_config();
    let name =
        ServerName::try_from(server_name.to_string()).map_err(|e| format!("server name: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    connector
        .connect(name, stream)
        .await
        .map(|_| ())
        .map_err(|e| format!("tls: {e}"))
}

/// A TLS client for health checks: the handshake is what is checked, not the certificate chain
/// (members often present certificates for the cluster name or self-signed ones).
fn tls_client_config() -> Arc<rustls::ClientConfig> {
    use std::sync::LazyLock;
    static CONFIG: LazyLock<Arc<rustls::ClientConfig>> = LazyLock::new(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("default TLS versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth();
        Arc::new(cfg)
    });
    CONFIG.clone()
}

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testbed::backend::Backend;

    fn section(kind: HealthKind, send: &str, expect: &str) -> HealthSection {
        HealthSection {
            kind,
            send: send.into(),
            expect: expect.into(),
            timeout: std::time::Duration::from_millis(1000),
            ..HealthSection::default()
        }
    }

    #[tokio::test]
    async fn tcp_and_send_expect_checks() {
        let b = Backend::start("127.0.0.1".parse().unwrap(), 0, "member-1")
            .await
            .unwrap();
        let tcp = section(HealthKind::Tcp, "", "");
        assert_eq!(check(&tcp, b.addr(), "x").await, Ok(()));
        let good = section(HealthKind::SendExpect, "WHO\n", "member-1");
        assert_eq!(check(&good, b.addr(), "x").await, Ok(()));
        let bad = section(HealthKind::SendExpect, "WHO\n", "member-2");
        assert!(matches!(check(&bad, b.addr(), "x").await,
            Err(Failed::Member(e)) if e.contains("unexpected reply")));
        b.stop();
        assert!(matches!(check(&tcp, b.addr(), "x").await,
            Err(Failed::Member(e)) if e.starts_with("connect:")));
    }

    #[tokio::test]
    async fn tls_check_completes_a_handshake() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["chat.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (s, _) = listener.accept().await.unwrap();
                let _ = acceptor.accept(s).await;
            }
        });
        let tls = section(HealthKind::Tls, "", "");
        assert_eq!(check(&tls, addr, "chat.test").await, Ok(()));
        // A plain TCP server that never speaks TLS fails the check.
        let plain = Backend::start("127.0.0.1".parse().unwrap(), 0, "plain")
            .await
            .unwrap();
        let short = HealthSection {
            timeout: std::time::Duration::from_millis(300),
            ..tls
        };
        assert!(check(&short, plain.addr(), "chat.test").await.is_err());
        server.abort();
    }
}
