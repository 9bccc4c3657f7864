//! Minimal proxy clients (HTTP forward, CONNECT, SOCKS4a, SOCKS5 with a remote name) that ask a
//! test-bed backend who it is. Used by `carousel demo`; each call is bounded by a timeout.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The client modes a chat client can be configured with that leave resolution to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// HTTP proxy, absolute-form GET.
    Http,
    /// HTTPS-proxy style CONNECT tunnel.
    Connect,
    /// SOCKS4a (proxy resolves).
    Socks4a,
    /// SOCKS5 with a domain name (proxy resolves).
    Socks5,
}

impl Mode {
    /// Every mode, in the order the demo cycles through them.
    pub const ALL: [Mode; 4] = [Mode::Http, Mode::Connect, Mode::Socks4a, Mode::Socks5];
}

async fn read_all(s: &mut TcpStream) -> std::io::Result<String> {
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Asks `host:port` through the proxy (`http` for HTTP modes, `socks` for SOCKS modes) who it is.
pub async fn who(
    mode: Mode,
    http: SocketAddr,
    socks: SocketAddr,
    host: &str,
    port: u16,
) -> Result<String, String> {
    let work = async {
        let io = |e: std::io::Error| e.to_string();
        match mode {
            Mode::Http => {
                let mut s = TcpStream::connect(http).await.map_err(io)?;
                let req = format!("GET http://{host}:{port}/ HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n");
                s.write_all(req.as_bytes()).await.map_err(io)?;
                let text = read_all(&mut s).await.map_err(io)?;
                let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
                if head.starts_with("HTTP/1.1 200") {
                    Ok(body.trim().to_string())
                } else {
                    Err(format!(
                        "{} {}",
                        head.lines().next().unwrap_or(""),
                        body.trim()
                    ))
                }
            }
            Mode::Connect => {
                let mut s = TcpStream::connect(http).await.map_err(io)?;
                let req =
                    format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\nWHO\n");
                s.write_all(req.as_bytes()).await.map_err(io)?;
                let text = read_all(&mut s).await.map_err(io)?;
                match text.split_once("\r\n\r\n") {
                    Some((head, body)) if head.starts_with("HTTP/1.1 200") => {
                        Ok(body.trim().to_string())
                    }
                    _ => Err(text.lines().next().unwrap_or("closed").to_string()),
                }
            }
            Mode::Socks4a => {
                let mut s = TcpStream::connect(socks).await.map_err(io)?;
                let mut req = vec![4, 1];
                req.extend_from_slice(&port.to_be_bytes());
                req.extend_from_slice(&[0, 0, 0, 1, 0]);
                req.extend_from_slice(host.as_bytes());
                req.push(0);
                s.write_all(&req).await.map_err(io)?;
                let mut r = [0u8; 8];
                s.read_exact(&mut r).await.map_err(io)?;
                if r[1] != 0x5A {
                    return Err(format!("SOCKS4 reply {:#04x}", r[1]));
                }
                s.write_all(b"WHO\n").await.map_err(io)?;
                Ok(read_all(&mut s).await.map_err(io)?.trim().to_string())
            }
            Mode::Socks5 => {
                let mut s = TcpStream::connect(socks).await.map_err(io)?;
                s.write_all(&[5, 1, 0]).await.map_err(io)?;
                let mut m = [0u8; 2];
                s.read_exact(&mut m).await.map_err(io)?;
                let mut req = vec![5, 1, 0, 3, host.len() as u8];
                req.extend_from_slice(host.as_bytes());
                req.extend_from_slice(&port.to_be_bytes());
                s.write_all(&req).await.map_err(io)?;
                let mut r = [0u8; 10];
                s.read_exact(&mut r).await.map_err(io)?;
                if r[1] != 0 {
                    return Err(format!("SOCKS5 reply {:#04x}", r[1]));
                }
                s.write_all(b"WHO\n").await.map_err(io)?;
                Ok(read_all(&mut s).await.map_err(io)?.trim().to_string())
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .unwrap_or_else(|_| Err("client timeout".into()))
}
