//! The upstream end of a connection: plain TCP (a destination, a plain parent proxy) or TLS to
//! an HTTPS parent. One type, so the dial, the parent handshake and the tunnel take either; the
//! tunnel's zero-copy path applies to plain TCP only (TLS bytes are decrypted in user space).

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// An open upstream connection.
#[derive(Debug)]
pub enum Upstream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP (an HTTPS parent proxy).
    Tls(Box<TlsStream<TcpStream>>),
}

impl Upstream {
    /// The TCP socket underneath, for the zero-copy tunnel: only when nothing is layered on it.
    pub fn plain(&self) -> Option<&TcpStream> {
        match self {
            Upstream::Tcp(s) => Some(s),
            Upstream::Tls(_) => None,
        }
    }

    /// The local address of the TCP socket (SOCKS5 replies carry it).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Upstream::Tcp(s) => s.local_addr(),
            Upstream::Tls(s) => s.get_ref().0.local_addr(),
        }
    }
}

impl AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Upstream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Upstream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Upstream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Upstream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
