//! The Pingora `ServerApp` behind every client port: sniff the first byte, drive the SOCKS or
//! HTTP codec, and hand the request to the session. Absolute-form HTTP requests go to the wrapped
//! pingora-proxy forwarder; CONNECT and SOCKS become tunnels here.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::config::{ListenerSection, Protocol};
use crate::dial::{Connected, FailKind};
use crate::forward::Forwarder;
use crate::metrics;
use crate::protocol::{http, socks4, socks5, Target};
use crate::session::{OpenError, Proxy};
use crate::tunnel;

/// One client-facing port: its protocols, the shared proxy state and the HTTP forwarder.
pub struct Listener {
    proxy: Arc<Proxy>,
    http: bool,
    socks: bool,
    forwarder: Arc<HttpProxy<Forwarder>>,
}

impl Listener {
    /// A listener for `section`, forwarding plain HTTP through `forwarder`.
    pub fn new(
        proxy: Arc<Proxy>,
        section: &ListenerSection,
        forwarder: Arc<HttpProxy<Forwarder>>,
    ) -> Self {
        Self {
            proxy,
            http: section.accepts(Protocol::Http),
            socks: section.accepts(Protocol::Socks),
            forwarder,
        }
    }
}

/// The client closed, timed out or the socket failed: nothing can be answered.
struct Gone;

/// Reads more bytes into `buf` before `deadline`.
async fn read_more(stream: &mut Stream, buf: &mut BytesMut, deadline: Instant) -> Result<(), Gone> {
    let mut chunk = [0u8; 4096];
    match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => Err(Gone),
        Ok(Ok(n)) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
    }
}

/// Feeds `parse` more bytes until it yields a value, an error, or the client goes away.
async fn read_until<T, E>(
    stream: &mut Stream,
    buf: &mut BytesMut,
    deadline: Instant,
    parse: impl Fn(&[u8]) -> Result<Option<(T, usize)>, E>,
) -> Result<Result<(T, usize), E>, Gone> {
    loop {
        match parse(buf) {
            Ok(Some(done)) => return Ok(Ok(done)),
            Ok(None) => read_more(stream, buf, deadline).await?,
            Err(e) => return Ok(Err(e)),
        }
    }
}

async fn write_reply(stream: &mut Stream, bytes: &[u8]) {
    let _ = stream.write_all(bytes).await;
    let _ = stream.flush().await;
}

fn peer_ip(stream: &Stream) -> Option<IpAddr> {
    let digest = stream.get_socket_digest()?;
    let addr = digest.peer_addr()?;
    addr.as_inet().map(|a| a.ip())
}

#[async_trait]
impl ServerApp for Listener {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let client = peer_ip(&stream);
        let handshake = self.proxy.config.server.handshake_timeout();
        let mut first_request = true;
        loop {
            // Keep-alive connections get the HTTP keep-alive time to send their next request.
            let wait = if first_request {
                handshake
            } else {
                Duration::from_secs(60)
            };
            let mut first = [0u8; 1];
            match tokio::time::timeout(wait, stream.try_peek(&mut first)).await {
                Ok(Ok(true)) => {}
                _ => return None,
            }
            let deadline = Instant::now() + handshake;
            match first[0] {
                0x04 | 0x05 if first_request && self.socks => {
                    self.socks(stream, client, first[0], deadline).await;
                    return None;
                }
                0x04 | 0x05 => return None,
                _ if !self.http => {
                    let body = "this port speaks SOCKS only";
                    write_reply(&mut stream, &http::response(400, "Bad Request", body)).await;
                    return None;
                }
                _ => {}
            }
            let mut method = [0u8; 8];
            match tokio::time::timeout_at(deadline, stream.try_peek(&mut method)).await {
                Ok(Ok(true)) => {}
                _ => return None,
            }
            if &method == b"CONNECT " {
                self.connect(stream, client, deadline).await;
                return None;
            }
            // Plain HTTP: one request through pingora-proxy, then come back here so a CONNECT
            // may follow on the same connection.
            let mut session = ServerSession::new_http1(stream);
            session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
            let reused = self.forwarder.process_new_http(session, shutdown).await?;
            let (next, _settings) = reused.consume();
            stream = next;
            first_request = false;
        }
    }

    async fn cleanup(&self) {
        self.forwarder.http_cleanup().await;
    }
}

impl Listener {
    async fn connect(&self, mut stream: Stream, client: Option<IpAddr>, deadline: Instant) {
        let mut buf = BytesMut::with_capacity(1024);
        let Ok(parsed) = read_until(&mut stream, &mut buf, deadline, http::parse_head).await else {
            return;
        };
        let (head, used) = match parsed {
            Ok(done) => done,
            Err(e) => {
                metrics::request("connect", "bad_request");
                let status = e.status();
                write_reply(
                    &mut stream,
                    &http::response(status, reason(status), &e.to_string()),
                )
                .await;
                return;
            }
        };
        let early = buf.split_off(used);
        let target = match http::connect_target(&head.target) {
            Ok(t) => t,
            Err(e) => {
                metrics::request("connect", "bad_request");
                write_reply(
                    &mut stream,
                    &http::response(400, "Bad Request", &e.to_string()),
                )
                .await;
                return;
            }
        };
        if let Err(e) = self.proxy.check_client(client) {
            metrics::request("connect", "denied");
            write_reply(
                &mut stream,
                &http::response(403, "Forbidden", &e.to_string()),
            )
            .await;
            return;
        }
        match self.proxy.open(&target).await {
            Ok(up) => {
                metrics::request("connect", "ok");
                write_reply(&mut stream, http::connect_established()).await;
                self.tunnel("connect", &mut stream, up, &early, &target)
                    .await;
            }
            Err(e) => {
                metrics::request("connect", e.outcome());
                let status = http_status(&e);
                tracing::info!(%target, error = %e, "CONNECT failed");
                write_reply(
                    &mut stream,
                    &http::response(status, reason(status), &e.to_string()),
                )
                .await;
            }
        }
    }

    async fn socks(&self, stream: Stream, client: Option<IpAddr>, version: u8, deadline: Instant) {
        if version == 4 {
            self.socks4(stream, client, deadline).await;
        } else {
            self.socks5(stream, client, deadline).await;
        }
    }

    async fn socks4(&self, mut stream: Stream, client: Option<IpAddr>, deadline: Instant) {
        let mut buf = BytesMut::with_capacity(512);
        let Ok(parsed) = read_until(&mut stream, &mut buf, deadline, socks4::parse_request).await
        else {
            return;
        };
        let (req, used) = match parsed {
            Ok(done) => done,
            Err(e) => {
                metrics::request("socks4", "bad_request");
                tracing::debug!(error = %e, "bad SOCKS4 request");
                write_reply(&mut stream, &socks4::reply(false)).await;
                return;
            }
        };
        let early = buf.split_off(used);
        if req.command != socks4::CONNECT {
            metrics::request("socks4", "bad_request");
            write_reply(&mut stream, &socks4::reply(false)).await;
            return;
        }
        if self.proxy.check_client(client).is_err() {
            metrics::request("socks4", "denied");
            write_reply(&mut stream, &socks4::reply(false)).await;
            return;
        }
        match self.proxy.open(&req.target).await {
            Ok(up) => {
                metrics::request("socks4", "ok");
                write_reply(&mut stream, &socks4::reply(true)).await;
                self.tunnel("socks4", &mut stream, up, &early, &req.target)
                    .await;
            }
            Err(e) => {
                metrics::request("socks4", e.outcome());
                tracing::info!(target = %req.target, error = %e, "SOCKS4 connect failed");
                write_reply(&mut stream, &socks4::reply(false)).await;
            }
        }
    }

    async fn socks5(&self, mut stream: Stream, client: Option<IpAddr>, deadline: Instant) {
        let mut buf = BytesMut::with_capacity(512);
        let Ok(Ok((methods, used))) =
            read_until(&mut stream, &mut buf, deadline, socks5::parse_greeting).await
        else {
            return;
        };
        let _ = buf.split_to(used);
        if !methods.contains(&socks5::NO_AUTH) {
            metrics::request("socks5", "bad_request");
            write_reply(&mut stream, &socks5::method_reply(socks5::NO_ACCEPTABLE)).await;
            return;
        }
        write_reply(&mut stream, &socks5::method_reply(socks5::NO_AUTH)).await;
        let Ok(parsed) = read_until(&mut stream, &mut buf, deadline, socks5::parse_request).await
        else {
            return;
        };
        let (req, used) = match parsed {
            Ok(done) => done,
            Err(e) => {
                metrics::request("socks5", "bad_request");
                if let Some(code) = e.reply() {
                    write_reply(&mut stream, &socks5::reply(code, None)).await;
                }
                return;
            }
        };
        let early = buf.split_off(used);
        if req.command != socks5::Command::Connect {
            metrics::request("socks5", "bad_request");
            write_reply(
                &mut stream,
                &socks5::reply(socks5::Reply::CommandNotSupported, None),
            )
            .await;
            return;
        }
        if self.proxy.check_client(client).is_err() {
            metrics::request("socks5", "denied");
            write_reply(&mut stream, &socks5::reply(socks5::Reply::NotAllowed, None)).await;
            return;
        }
        match self.proxy.open(&req.target).await {
            Ok(up) => {
                metrics::request("socks5", "ok");
                let bound = up.stream.local_addr().ok();
                write_reply(&mut stream, &socks5::reply(socks5::Reply::Succeeded, bound)).await;
                self.tunnel("socks5", &mut stream, up, &early, &req.target)
                    .await;
            }
            Err(e) => {
                metrics::request("socks5", e.outcome());
                tracing::info!(target = %req.target, error = %e, "SOCKS5 connect failed");
                write_reply(&mut stream, &socks5::reply(socks5_reply(&e), None)).await;
            }
        }
    }

    async fn tunnel(
        &self,
        protocol: &str,
        client: &mut Stream,
        mut up: Connected,
        early: &[u8],
        target: &Target,
    ) {
        let m = metrics::metrics();
        let _member = up.member.as_ref().map(|mb| mb.open_connection());
        let active = m.active_tunnels.with_label_values(&[protocol]);
        active.inc();
        let stats = tunnel::run(client, &mut up.stream, early, self.proxy.tunnel_idle()).await;
        active.dec();
        m.tunnel_bytes.with_label_values(&["up"]).inc_by(stats.up);
        m.tunnel_bytes
            .with_label_values(&["down"])
            .inc_by(stats.down);
        tracing::debug!(%target, member = %up.addr, cluster = %up.cluster, attempts = up.attempts,
            up = stats.up, down = stats.down, idled_out = stats.idled_out, "tunnel closed");
    }
}

/// The HTTP status for a failed open: 403 denied, 504 when time ran out, 502 otherwise.
pub fn http_status(e: &OpenError) -> u16 {
    match e {
        OpenError::Denied(_) => 403,
        OpenError::Dns(_) | OpenError::NoMembers(_) => 502,
        OpenError::Dial(d) if d.kind == FailKind::Timeout => 504,
        OpenError::Dial(_) => 502,
    }
}

/// The reason phrase for the statuses carousel sends itself.
pub fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        407 => "Proxy Authentication Required",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// The SOCKS5 reply code for a failed open.
pub fn socks5_reply(e: &OpenError) -> socks5::Reply {
    use socks5::Reply;
    match e {
        OpenError::Denied(_) => Reply::NotAllowed,
        OpenError::Dns(_) | OpenError::NoMembers(_) => Reply::HostUnreachable,
        OpenError::Dial(d) => match d.kind {
            FailKind::Refused => Reply::ConnectionRefused,
            FailKind::Unreachable => Reply::HostUnreachable,
            FailKind::Timeout => Reply::TtlExpired,
            FailKind::Other => Reply::GeneralFailure,
        },
    }
}
