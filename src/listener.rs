//! The Pingora `ServerApp` behind every client port: admit the connection, terminate TLS on an
//! HTTPS-proxy port, sniff the first byte, drive the SOCKS or HTTP codec (with authentication), and
//! hand the request to the session. Absolute-form HTTP goes to the wrapped pingora-proxy
//! forwarder; CONNECT and SOCKS become tunnels here.

use std::net::{IpAddr, SocketAddr};
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

use crate::access_log::Entry;
use crate::auth::parse_basic;
use crate::config::{ListenerSection, Protocol};
use crate::dial::{Connected, FailKind};
use crate::forward::Forwarder;
use crate::metrics;
use crate::protocol::{http, socks4, socks5, Target};
use crate::session::{OpenError, Proxy, Requester};
use crate::tunnel;

/// One client-facing port: its protocols, the shared proxy state and the HTTP forwarder.
pub struct Listener {
    proxy: Arc<Proxy>,
    address: SocketAddr,
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
            address: section.address,
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

/// Puts bytes already read back in front of the stream, for pingora-proxy to read again.
/// `None` (the connection is dropped) for a stream type that cannot take them back.
fn unread(stream: Stream, bytes: &[u8]) -> Option<Stream> {
    let any = stream.into_any();
    match any.downcast::<pingora::protocols::l4::stream::Stream>() {
        Ok(mut l4) => {
            l4.rewind(bytes);
            Some(l4)
        }
        Err(any) => crate::tls::unread(any, bytes),
    }
}

fn peer_ip(stream: &Stream) -> Option<IpAddr> {
    let digest = stream.get_socket_digest()?;
    let addr = digest.peer_addr()?;
    addr.as_inet().map(|a| crate::policy::canonical(a.ip()))
}

/// The 407 answer asking for Basic credentials.
pub fn proxy_auth_required(realm: &str) -> Vec<u8> {
    let body = "proxy authentication required\n";
    format!(
        "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"{}\"\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        realm.replace(['"', '\r', '\n'], ""),
        body.len()
    )
    .into_bytes()
}

#[async_trait]
impl ServerApp for Listener {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let client = peer_ip(&stream);
        let handshake = self.proxy.runtime().config.server.handshake_timeout();
        let admitted = self.proxy.limits.admit(client);
        let mut stream = match self.proxy.tls.get(&self.address) {
            Some(acceptor) => {
                match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(client = ?client, error = %e, "TLS handshake failed");
                        return None;
                    }
                    Err(_) => return None,
                }
            }
            None => stream,
        };
        let _admitted = match admitted {
            Ok(a) => a,
            Err(limit) => {
                self.overloaded(stream, limit, handshake).await;
                return None;
            }
        };
        if let Err(e) = self.proxy.check_client(client) {
            self.refuse_client(stream, &e, handshake).await;
            return None;
        }
        let mut first_request = true;
        loop {
            // Keep-alive connections get the HTTP keep-alive time to send their next request.
            let wait = if first_request {
                handshake
            } else {
                Duration::from_secs(60)
            };
            // One read decides the protocol; the bytes are handed on, never read twice.
            let mut buf = BytesMut::with_capacity(2048);
            if read_more(&mut stream, &mut buf, Instant::now() + wait)
                .await
                .is_err()
            {
                return None;
            }
            let deadline = Instant::now() + handshake;
            match buf[0] {
                0x04 | 0x05 if first_request && self.socks => {
                    if buf[0] == 4 {
                        self.socks4(stream, buf, client, deadline).await;
                    } else {
                        self.socks5(stream, buf, client, deadline).await;
                    }
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
            const CONNECT: &[u8] = b"CONNECT ";
            while buf.len() < CONNECT.len() && CONNECT.starts_with(&buf) {
                if read_more(&mut stream, &mut buf, deadline).await.is_err() {
                    return None;
                }
            }
            if buf.starts_with(CONNECT) {
                self.connect(stream, buf, client, deadline).await;
                return None;
            }
            // Plain HTTP: one request through pingora-proxy, then come back here so a CONNECT
            // may follow on the same connection.
            let mut session = ServerSession::new_http1(unread(stream, &buf)?);
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
    /// Answers a client refused before any request (over a limit, or not an allowed client) in
    /// its own protocol, quickly, and closes. Returns the protocol it spoke, if it spoke at all.
    async fn refuse_early(
        &self,
        stream: &mut Stream,
        handshake: Duration,
        socks5_code: socks5::Reply,
        http_status: u16,
        why: &str,
    ) -> Option<&'static str> {
        let deadline = Instant::now() + handshake.min(Duration::from_secs(2));
        let mut first = [0u8; 1];
        if !matches!(
            tokio::time::timeout_at(deadline, stream.try_peek(&mut first)).await,
            Ok(Ok(true))
        ) {
            return None;
        }
        match first[0] {
            4 => {
                write_reply(stream, &socks4::reply(false)).await;
                Some("socks4")
            }
            5 => {
                let mut buf = BytesMut::new();
                if let Ok(Ok(_)) =
                    read_until(stream, &mut buf, deadline, socks5::parse_greeting).await
                {
                    buf.clear();
                    write_reply(stream, &socks5::method_reply(socks5::NO_AUTH)).await;
                    let _ = read_until(stream, &mut buf, deadline, socks5::parse_request).await;
                    write_reply(stream, &socks5::reply(socks5_code, None)).await;
                }
                Some("socks5")
            }
            _ => {
                write_reply(
                    stream,
                    &http::response(http_status, reason(http_status), why),
                )
                .await;
                Some("http")
            }
        }
    }

    /// A client over a connection limit: HTTP 503, SOCKS5 0x01, SOCKS4 0x5B.
    async fn overloaded(&self, mut stream: Stream, limit: &str, handshake: Duration) {
        tracing::warn!(limit, "connection limit reached");
        let why = format!("overloaded: {limit} connection limit reached");
        if let Some(protocol) = self
            .refuse_early(
                &mut stream,
                handshake,
                socks5::Reply::GeneralFailure,
                503,
                &why,
            )
            .await
        {
            metrics::request(protocol, "overload");
        }
    }

    /// A client outside `allow_clients`: HTTP 403, SOCKS5 0x02, SOCKS4 0x5B; logged.
    async fn refuse_client(&self, mut stream: Stream, e: &OpenError, handshake: Duration) {
        let why = e.to_string();
        let Some(protocol) = self
            .refuse_early(&mut stream, handshake, socks5::Reply::NotAllowed, 403, &why)
            .await
        else {
            return;
        };
        let who = Requester {
            client: peer_ip(&stream),
            user: None,
        };
        self.finish_refused(protocol, &who, None, "denied", why, Instant::now());
    }

    /// Logs and counts a request that ended before a tunnel opened.
    fn finish_refused(
        &self,
        protocol: &'static str,
        who: &Requester,
        target: Option<&Target>,
        outcome: &'static str,
        why: String,
        started: Instant,
    ) {
        metrics::request(protocol, outcome);
        self.proxy.log(&Entry {
            client: who.client,
            user: who.user.clone(),
            protocol,
            target: target.map(|t| t.to_string()).unwrap_or_default(),
            outcome,
            rule: why,
            duration: started.elapsed(),
            ..Default::default()
        });
    }

    async fn connect(
        &self,
        mut stream: Stream,
        mut buf: BytesMut,
        client: Option<IpAddr>,
        deadline: Instant,
    ) {
        let started = Instant::now();
        let mut who = Requester { client, user: None };
        let Ok(parsed) = read_until(&mut stream, &mut buf, deadline, http::parse_head).await else {
            return;
        };
        let (head, used) = match parsed {
            Ok(done) => done,
            Err(e) => {
                self.finish_refused("connect", &who, None, "bad_request", e.to_string(), started);
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
                self.finish_refused("connect", &who, None, "bad_request", e.to_string(), started);
                write_reply(
                    &mut stream,
                    &http::response(400, "Bad Request", &e.to_string()),
                )
                .await;
                return;
            }
        };
        if let Some(value) = head
            .header("proxy-authorization")
            .filter(|_| self.proxy.auth.enabled())
        {
            match parse_basic(value) {
                Some((user, pass)) if self.proxy.auth.verify(&user, &pass).await => {
                    who.user = Some(user)
                }
                _ => {
                    self.proxy.auth.failed(client).await;
                    self.finish_refused(
                        "connect",
                        &who,
                        Some(&target),
                        "auth_failed",
                        "invalid credentials".into(),
                        started,
                    );
                    write_reply(
                        &mut stream,
                        &proxy_auth_required(&self.proxy.runtime().config.access.realm),
                    )
                    .await;
                    return;
                }
            }
        }
        let realm = self.proxy.runtime().config.access.realm.clone();
        self.open_and_tunnel(
            "connect",
            &who,
            stream,
            &target,
            &early,
            started,
            |_| http::connect_established().to_vec(),
            |e| {
                if matches!(e, OpenError::AuthRequired) {
                    return proxy_auth_required(&realm);
                }
                let status = http_status(e);
                http::response(status, reason(status), &e.to_string())
            },
        )
        .await;
    }

    async fn socks4(
        &self,
        mut stream: Stream,
        mut buf: BytesMut,
        client: Option<IpAddr>,
        deadline: Instant,
    ) {
        let started = Instant::now();
        let who = Requester { client, user: None };
        let Ok(parsed) = read_until(&mut stream, &mut buf, deadline, socks4::parse_request).await
        else {
            return;
        };
        let (req, used) = match parsed {
            Ok(done) => done,
            Err(e) => {
                self.finish_refused("socks4", &who, None, "bad_request", e.to_string(), started);
                write_reply(&mut stream, &socks4::reply(false)).await;
                return;
            }
        };
        let early = buf.split_off(used);
        if req.command != socks4::CONNECT {
            self.finish_refused(
                "socks4",
                &who,
                Some(&req.target),
                "bad_request",
                "only CONNECT is supported".into(),
                started,
            );
            write_reply(&mut stream, &socks4::reply(false)).await;
            return;
        }
        // SOCKS4's user id is not a credential: a rule that needs a user refuses it.
        self.open_and_tunnel(
            "socks4",
            &who,
            stream,
            &req.target,
            &early,
            started,
            |_| socks4::reply(true).to_vec(),
            |_| socks4::reply(false).to_vec(),
        )
        .await;
    }

    async fn socks5(
        &self,
        mut stream: Stream,
        mut buf: BytesMut,
        client: Option<IpAddr>,
        deadline: Instant,
    ) {
        let started = Instant::now();
        let mut who = Requester { client, user: None };
        let Ok(Ok((methods, used))) =
            read_until(&mut stream, &mut buf, deadline, socks5::parse_greeting).await
        else {
            return;
        };
        let _ = buf.split_to(used);
        let method = if self.proxy.wants_users() && methods.contains(&socks5::USER_PASS) {
            socks5::USER_PASS
        } else if methods.contains(&socks5::NO_AUTH) {
            socks5::NO_AUTH
        } else {
            self.finish_refused(
                "socks5",
                &who,
                None,
                "bad_request",
                "no acceptable authentication method".into(),
                started,
            );
            write_reply(&mut stream, &socks5::method_reply(socks5::NO_ACCEPTABLE)).await;
            return;
        };
        write_reply(&mut stream, &socks5::method_reply(method)).await;
        if method == socks5::USER_PASS {
            let Ok(parsed) =
                read_until(&mut stream, &mut buf, deadline, socks5::parse_user_pass).await
            else {
                return;
            };
            let ok = match parsed {
                Ok((creds, used)) => {
                    let _ = buf.split_to(used);
                    let ok = self
                        .proxy
                        .auth
                        .verify(&creds.username, &creds.password)
                        .await;
                    if ok {
                        who.user = Some(creds.username);
                    }
                    ok
                }
                Err(_) => false,
            };
            if !ok {
                self.proxy.auth.failed(client).await;
                self.finish_refused(
                    "socks5",
                    &who,
                    None,
                    "auth_failed",
                    "invalid credentials".into(),
                    started,
                );
                write_reply(&mut stream, &socks5::user_pass_reply(false)).await;
                return;
            }
            write_reply(&mut stream, &socks5::user_pass_reply(true)).await;
        }
        let Ok(parsed) = read_until(&mut stream, &mut buf, deadline, socks5::parse_request).await
        else {
            return;
        };
        let (req, used) = match parsed {
            Ok(done) => done,
            Err(e) => {
                self.finish_refused("socks5", &who, None, "bad_request", e.to_string(), started);
                if let Some(code) = e.reply() {
                    write_reply(&mut stream, &socks5::reply(code, None)).await;
                }
                return;
            }
        };
        let early = buf.split_off(used);
        if req.command != socks5::Command::Connect {
            self.finish_refused(
                "socks5",
                &who,
                Some(&req.target),
                "bad_request",
                "only CONNECT is supported".into(),
                started,
            );
            write_reply(
                &mut stream,
                &socks5::reply(socks5::Reply::CommandNotSupported, None),
            )
            .await;
            return;
        }
        self.open_and_tunnel(
            "socks5",
            &who,
            stream,
            &req.target,
            &early,
            started,
            |up| socks5::reply(socks5::Reply::Succeeded, up.stream.local_addr().ok()),
            |e| socks5::reply(socks5_reply(e), None),
        )
        .await;
    }

    /// The end every tunnel protocol shares: open the target, answer in the protocol's own words
    /// (`ok` / `fail` build the reply), then carry the bytes.
    #[allow(clippy::too_many_arguments)]
    async fn open_and_tunnel(
        &self,
        protocol: &'static str,
        who: &Requester,
        mut stream: Stream,
        target: &Target,
        early: &[u8],
        started: Instant,
        ok: impl FnOnce(&Connected) -> Vec<u8>,
        fail: impl FnOnce(&OpenError) -> Vec<u8>,
    ) {
        match self.proxy.open(who, target).await {
            Ok((up, rule)) => {
                metrics::request(protocol, "ok");
                write_reply(&mut stream, &ok(&up)).await;
                self.tunnel(protocol, who, stream, up, rule, early, target, started)
                    .await;
            }
            Err(e) => {
                tracing::info!(%target, error = %e, protocol, "request failed");
                self.finish_refused(
                    protocol,
                    who,
                    Some(target),
                    e.outcome(),
                    e.to_string(),
                    started,
                );
                write_reply(&mut stream, &fail(&e)).await;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn tunnel(
        &self,
        protocol: &'static str,
        who: &Requester,
        mut client: Stream,
        mut up: Connected,
        rule: String,
        early: &[u8],
        target: &Target,
        started: Instant,
    ) {
        let m = metrics::metrics();
        let _member = up.member.as_ref().map(|mb| mb.open_connection());
        let active = m.active_tunnels.with_label_values(&[protocol]);
        active.inc();
        let opts = self.proxy.tunnel_options();
        let stats = match tunnel::tcp_of(&client) {
            Some(raw) => {
                // The duplicate is all the tunnel needs: closing Pingora's descriptor keeps
                // the tunnel at two descriptors (client and upstream).
                drop(client);
                tunnel::run_tcp(&raw, &up.stream, early, opts).await
            }
            None => tunnel::run(&mut client, &mut up.stream, early, opts.idle).await,
        };
        active.dec();
        m.tunnel_up.inc_by(stats.up);
        m.tunnel_down.inc_by(stats.down);
        self.proxy.log(&Entry {
            client: who.client,
            user: who.user.clone(),
            protocol,
            target: target.to_string(),
            cluster: up.cluster.clone(),
            member: Some(up.addr),
            attempts: up.attempts,
            outcome: if stats.idled_out {
                "idle_timeout"
            } else {
                "ok"
            },
            rule,
            bytes_up: stats.up,
            bytes_down: stats.down,
            duration: started.elapsed(),
            status: 0,
        });
    }
}

/// The HTTP status for a failed open: 403 denied, 407 credentials needed, 503 overloaded,
/// 504 when time ran out, 502 otherwise.
pub fn http_status(e: &OpenError) -> u16 {
    match e {
        OpenError::Denied(_) => 403,
        OpenError::AuthRequired => 407,
        OpenError::Overloaded(_) | OpenError::Dns(crate::resolve::ResolveError::Overloaded) => 503,
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
        OpenError::Denied(_) | OpenError::AuthRequired => Reply::NotAllowed,
        OpenError::Overloaded(_) | OpenError::Dns(crate::resolve::ResolveError::Overloaded) => {
            Reply::GeneralFailure
        }
        OpenError::Dns(_) | OpenError::NoMembers(_) => Reply::HostUnreachable,
        OpenError::Dial(d) => match d.kind {
            FailKind::Refused => Reply::ConnectionRefused,
            FailKind::Unreachable => Reply::HostUnreachable,
            FailKind::Timeout => Reply::TtlExpired,
            FailKind::Other => Reply::GeneralFailure,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dial::DialFailure;
    use crate::resolve::ResolveError;

    fn dial(kind: FailKind) -> OpenError {
        OpenError::Dial(DialFailure {
            kind,
            attempts: 3,
            detail: String::new(),
        })
    }

    #[test]
    fn failures_map_to_the_documented_replies() {
        use socks5::Reply;
        let cases = [
            (dial(FailKind::Refused), 502, Reply::ConnectionRefused),
            (dial(FailKind::Unreachable), 502, Reply::HostUnreachable),
            (dial(FailKind::Timeout), 504, Reply::TtlExpired),
            (dial(FailKind::Other), 502, Reply::GeneralFailure),
            (
                OpenError::Dns(ResolveError::NotFound("x".into())),
                502,
                Reply::HostUnreachable,
            ),
            (
                OpenError::NoMembers("c".into()),
                502,
                Reply::HostUnreachable,
            ),
            (OpenError::Denied("r".into()), 403, Reply::NotAllowed),
            (OpenError::AuthRequired, 407, Reply::NotAllowed),
            (
                OpenError::Dns(ResolveError::Overloaded),
                503,
                Reply::GeneralFailure,
            ),
        ];
        for (e, status, reply) in cases {
            assert_eq!(http_status(&e), status, "{e}");
            assert_eq!(socks5_reply(&e), reply, "{e}");
        }
        assert!(String::from_utf8(proxy_auth_required("r\"x"))
            .unwrap()
            .contains("Basic realm=\"rx\""));
    }
}
