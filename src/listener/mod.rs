//! The Pingora `ServerApp` behind every client port: admit the connection (limits, client gate),
//! terminate TLS on an HTTPS-proxy port, sniff the first byte, and hand the bytes to the handler
//! of the protocol they start: `socks4`, `socks5`, `connect` (HTTP CONNECT) or `http`
//! (absolute-form requests, forwarded through pingora-proxy). Every request head is read here,
//! under one deadline and one set of limits, whichever protocol carries it; `relay` is the end the
//! tunnel protocols share.

mod connect;
mod http;
mod io;
mod relay;
mod socks4;
mod socks5;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::Stream;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::time::Instant;

use crate::access_log::Entry;
use crate::auth::Check;
use crate::config::{ListenerSection, Protocol, ProxyProtocol};
use crate::forward::Forwarder;
use crate::identity::negotiate;
use crate::limits::Handshake;
use crate::metrics;
use crate::outcome::{ClientProtocol, Outcome};
use crate::protocol::{self, proxy_header, Target};
use crate::reply::Answer;
use crate::session::{OpenError, Proxy, Requester};
use io::{read_more, write_reply};

/// How long a keep-alive HTTP connection may wait for its next request.
const KEEPALIVE: Duration = Duration::from_secs(60);

/// One client-facing port: its protocols, the shared proxy state and the HTTP forwarder.
pub struct Listener {
    proxy: Arc<Proxy>,
    address: SocketAddr,
    http: bool,
    socks: bool,
    /// The PROXY protocol versions expected, and from whom.
    proxy_protocol: Option<(proxy_header::Accept, Vec<ipnet::IpNet>)>,
    /// Its open connections (`carousel_listener_connections`).
    open: prometheus::IntGauge,
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
            proxy_protocol: match section.proxy_protocol {
                ProxyProtocol::Off => None,
                ProxyProtocol::V1 => Some(proxy_header::Accept::V1),
                ProxyProtocol::V2 => Some(proxy_header::Accept::V2),
                ProxyProtocol::Any => Some(proxy_header::Accept::Any),
            }
            .map(|a| (a, section.trusted_proxies.clone())),
            open: metrics::metrics()
                .listener_connections
                .with_label_values(&[&section.address.to_string()]),
            forwarder,
        }
    }
}

/// One request while the listener reads and answers it.
struct Request {
    protocol: ClientProtocol,
    who: Requester,
    started: Instant,
    /// When the request head (or SOCKS handshake) must be complete.
    deadline: Instant,
    /// Its place among the client's connections still in their handshake, until the request is
    /// read.
    handshake: Option<Handshake>,
    /// Pingora's shutdown signal: set when the listeners stop (SIGTERM after the grace period,
    /// or a graceful upgrade).
    shutdown: ShutdownWatch,
    /// The principal this connection authenticated as with Negotiate: later requests on it
    /// without credentials are that user (RFC 4559 is connection-based in practice).
    signed_on: Arc<std::sync::Mutex<Option<String>>>,
}

impl Request {
    /// The request is read: the connection no longer counts as one in its handshake.
    fn handshake_done(&mut self) {
        drop(self.handshake.take());
    }
}

#[async_trait]
impl ServerApp for Listener {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let _open = OpenGuard::new(&self.open);
        let peer = io::peer_ip(&stream);
        let handshake = self.proxy.runtime().config.server.handshake_timeout;
        // The client's identity, computed once: the PROXY header's source when a trusted
        // balancer sent one, otherwise the peer. Everything after takes it from here.
        let (stream, client) = match &self.proxy_protocol {
            None => (stream, peer),
            Some((accept, trusted)) => {
                self.read_proxy_header(stream, peer, *accept, trusted, handshake)
                    .await?
            }
        };
        let admitted = self.proxy.limits.admit(client);
        let in_handshake = self.proxy.limits.handshake(client);
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
        let who = Requester {
            client,
            ..Default::default()
        };
        let (_admitted, mut first_handshake) = match (admitted, in_handshake) {
            (Ok(a), Ok(h)) => (a, h),
            (Err(limit), _) | (_, Err(limit)) => {
                self.refuse_early(stream, who, OpenError::Overloaded(limit), handshake)
                    .await;
                return None;
            }
        };
        if let Err(e) = self.proxy.check_client(client) {
            self.refuse_early(stream, who, e, handshake).await;
            return None;
        }
        let mut wait = handshake;
        let mut first_request = true;
        let signed_on = Arc::new(std::sync::Mutex::new(None));
        loop {
            // One read decides the protocol; the bytes are handed on, never read twice.
            let mut buf = BytesMut::with_capacity(2048);
            read_more(&mut stream, &mut buf, Instant::now() + wait)
                .await
                .ok()?;
            let started = Instant::now();
            let handshake_place = match first_handshake.take() {
                Some(h) => Some(h),
                None => match self.proxy.limits.handshake(client) {
                    Ok(h) => h,
                    Err(_) => return None,
                },
            };
            let mut req = Request {
                protocol: ClientProtocol::Http,
                who: who.clone(),
                started,
                deadline: started + handshake,
                handshake: handshake_place,
                shutdown: shutdown.clone(),
                signed_on: signed_on.clone(),
            };
            match buf[0] {
                0x04 if first_request && self.socks => {
                    req.protocol = ClientProtocol::Socks4;
                    self.socks4(stream, buf, req).await;
                    return None;
                }
                0x05 if first_request && self.socks => {
                    req.protocol = ClientProtocol::Socks5;
                    self.socks5(stream, buf, req).await;
                    return None;
                }
                0x04 | 0x05 => return None,
                _ if !self.http => {
                    let e = OpenError::BadRequest("this port speaks SOCKS only".into());
                    let answer = Answer::http_open(&e, &self.realm());
                    self.refuse(&mut stream, &req, None, &e, answer).await;
                    return None;
                }
                _ => {}
            }
            if is_connect(&mut stream, &mut buf, req.deadline).await? {
                req.protocol = ClientProtocol::Connect;
                self.connect(stream, buf, req).await;
                return None;
            }
            // Plain HTTP: one request through pingora-proxy, then come back here so the next
            // request (or a CONNECT) on the same connection is read under the same rules.
            stream = self.http(stream, buf, req, shutdown).await?;
            first_request = false;
            wait = KEEPALIVE;
        }
    }

    async fn cleanup(&self) {
        self.forwarder.http_cleanup().await;
    }
}

/// Counts a connection open on its listener while it lives.
struct OpenGuard<'a>(&'a prometheus::IntGauge);

impl<'a> OpenGuard<'a> {
    fn new(g: &'a prometheus::IntGauge) -> Self {
        g.inc();
        Self(g)
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Reads until the head can be told a CONNECT or not; `None` when the client went away.
async fn is_connect(stream: &mut Stream, buf: &mut BytesMut, deadline: Instant) -> Option<bool> {
    const CONNECT: &[u8] = b"CONNECT ";
    while buf.len() < CONNECT.len() && CONNECT.starts_with(buf) {
        read_more(stream, buf, deadline).await.ok()?;
    }
    Some(buf.starts_with(CONNECT))
}

impl Listener {
    /// Answers a client refused before any request (over a limit, or not an allowed client) in
    /// its own protocol, quickly, then logs and counts it under that protocol.
    async fn refuse_early(
        &self,
        mut stream: Stream,
        who: Requester,
        err: OpenError,
        handshake: Duration,
    ) {
        tracing::debug!(client = ?who.client, error = %err, "connection refused early");
        // A refusal holds its descriptor while it answers: past the refusals' share, or past a
        // few in progress for this client, the connection is closed without an answer, so
        // refusing never exhausts the budget either. (Counted by the limit that refused it; no
        // line is logged for it, or a flood would be one line per connection.)
        let Some(_refusal) = self.proxy.limits.refusal(who.client) else {
            return;
        };
        let started = Instant::now();
        let deadline = started + handshake.min(Duration::from_secs(2));
        let mut buf = BytesMut::new();
        if read_more(&mut stream, &mut buf, deadline).await.is_err() {
            return;
        }
        let (protocol, answer) = match buf[0] {
            4 => (ClientProtocol::Socks4, Answer::socks4(false)),
            5 => {
                // Answer the greeting, then the request (which an optimistic client may have sent
                // in the same write), with the refusal code.
                if let Ok(Ok((_, used))) = io::read_until(
                    &mut stream,
                    &mut buf,
                    deadline,
                    protocol::socks5::parse_greeting,
                )
                .await
                {
                    let _ = buf.split_to(used);
                    write_reply(
                        &mut stream,
                        &protocol::socks5::method_reply(protocol::socks5::NO_AUTH),
                    )
                    .await;
                    let _ = io::read_until(
                        &mut stream,
                        &mut buf,
                        deadline,
                        protocol::socks5::parse_request,
                    )
                    .await;
                }
                (ClientProtocol::Socks5, Answer::socks5_open(&err))
            }
            _ => {
                let connect = is_connect(&mut stream, &mut buf, deadline).await == Some(true);
                let protocol = if connect {
                    ClientProtocol::Connect
                } else {
                    ClientProtocol::Http
                };
                (protocol, Answer::http_open(&err, &self.realm()))
            }
        };
        let req = Request {
            protocol,
            who,
            started,
            deadline,
            handshake: None,
            shutdown: tokio::sync::watch::channel(false).1,
            signed_on: Default::default(),
        };
        self.refuse(&mut stream, &req, None, &err, answer).await;
    }

    /// Answers a refused request with `answer`, then logs and counts it with what was sent.
    async fn refuse(
        &self,
        stream: &mut Stream,
        req: &Request,
        target: Option<&Target>,
        err: &OpenError,
        answer: Answer,
    ) {
        self.finish_refused(req, target, err.outcome(), err.to_string(), answer.status);
        write_reply(stream, &answer.bytes).await;
    }

    /// Reads one protocol message with `parse` under the request's deadline. A malformed one is
    /// logged and counted as a bad request and answered with `refusal` (when the protocol has an
    /// answer for it); `None` then, or when the client went away.
    async fn read_message<T, E: std::fmt::Display>(
        &self,
        stream: &mut Stream,
        buf: &mut BytesMut,
        req: &Request,
        parse: impl Fn(&[u8]) -> Result<Option<(T, usize)>, E>,
        refusal: impl FnOnce(&E) -> Option<Answer>,
    ) -> Option<(T, usize)> {
        match io::read_until(stream, buf, req.deadline, parse)
            .await
            .ok()?
        {
            Ok(done) => Some(done),
            Err(e) => {
                let answer = refusal(&e);
                let status = answer.as_ref().map_or(0, |a| a.status);
                self.finish_refused(req, None, Outcome::BadRequest, e.to_string(), status);
                if let Some(a) = answer {
                    write_reply(stream, &a.bytes).await;
                }
                None
            }
        }
    }

    /// Reads the PROXY protocol header a trusted balancer puts in front of the connection and
    /// returns the stream (bytes after the header put back) and the client it names. A peer
    /// outside `trusted`, a malformed or wrong-version header, or one not complete within the
    /// handshake timeout closes the connection without a reply, counted by reason.
    async fn read_proxy_header(
        &self,
        mut stream: Stream,
        peer: Option<std::net::IpAddr>,
        accept: proxy_header::Accept,
        trusted: &[ipnet::IpNet],
        handshake: Duration,
    ) -> Option<(Stream, Option<std::net::IpAddr>)> {
        let reject = |reason: &str| {
            metrics::metrics()
                .proxy_protocol_rejected
                .with_label_values(&[reason])
                .inc();
            tracing::debug!(peer = ?peer, reason, "PROXY protocol header refused");
        };
        if !peer.is_some_and(|p| trusted.iter().any(|n| n.contains(&p))) {
            reject("untrusted");
            return None;
        }
        let mut buf = BytesMut::with_capacity(256);
        let deadline = Instant::now() + handshake;
        let parse = |b: &[u8]| proxy_header::parse(b, accept);
        let (header, used) = match io::read_until(&mut stream, &mut buf, deadline, parse).await {
            Ok(Ok(done)) => done,
            Ok(Err(proxy_header::Error::WrongVersion(..))) => {
                reject("version");
                return None;
            }
            Ok(Err(_)) => {
                reject("malformed");
                return None;
            }
            Err(_) => {
                reject("timeout");
                return None;
            }
        };
        let client = match header {
            proxy_header::Header::Proxied(src) => Some(crate::address::client(src.ip())),
            proxy_header::Header::Local | proxy_header::Header::Unknown => peer,
        };
        let stream = io::unread(stream, &buf[used..])?;
        Some((stream, client))
    }

    /// Resolves when work in flight must end: `server.graceful_shutdown_timeout_seconds` after the
    /// listeners stopped. Pingora waits a second longer before it drops what is left (see
    /// `server::server_conf`), so everything this ends is logged with outcome `shutdown`.
    fn shutdown_deadline(&self, req: &Request) -> impl std::future::Future<Output = ()> + use<> {
        let mut watch = req.shutdown.clone();
        let timeout = self.proxy.runtime().config.server.graceful_shutdown_timeout;
        async move {
            if watch.wait_for(|stopping| *stopping).await.is_err() {
                return std::future::pending().await;
            }
            tokio::time::sleep(timeout).await;
        }
    }

    /// Logs and counts a request that ended before a tunnel opened or a request was forwarded;
    /// `status` is what the client was sent (HTTP status, SOCKS reply code; 0: nothing).
    fn finish_refused(
        &self,
        req: &Request,
        target: Option<&Target>,
        outcome: Outcome,
        why: String,
        status: u16,
    ) {
        metrics::request(req.protocol, outcome);
        self.proxy.log(&Entry {
            client: req.who.client,
            user: req.who.user.clone(),
            protocol: req.protocol,
            target: target.map(|t| t.to_string()).unwrap_or_default(),
            outcome,
            error: why,
            duration: req.started.elapsed(),
            status,
            ..Default::default()
        });
    }

    /// Checks an HTTP head's `Proxy-Authorization` (Basic against the users file or the
    /// directory, Negotiate against the keytab) and records the user; `Err` carries the refusal
    /// to log. Without the header the request goes on as the user this connection already
    /// authenticated as with Negotiate (browsers send the token once per connection), or as
    /// anonymous: the policy asks for credentials if a rule needs them.
    async fn authenticate(
        &self,
        head: &protocol::http::Head,
        req: &mut Request,
    ) -> Result<(), String> {
        let who = &mut req.who;
        let Some(value) = head.header("proxy-authorization") else {
            who.user = req.signed_on.lock().ok().and_then(|u| u.clone());
            return Ok(());
        };
        let identity = self.proxy.identity.load_full();
        if !self.proxy.auth.enabled() && identity.kerberos.is_none() {
            // Nothing to check credentials against: they are ignored (the policy decides).
            return Ok(());
        }
        let parsed = negotiate::parse(value);
        let count = |scheme: &str, result: &str| {
            metrics::metrics()
                .auth
                .with_label_values(&[scheme, result])
                .inc();
        };
        match parsed {
            Ok(negotiate::Credentials::Basic(user, pass)) if self.proxy.auth.enabled() => {
                match self.proxy.auth.check(who.client, &user, &pass).await {
                    Check::Valid => {
                        count("basic", "ok");
                        who.user = Some(user);
                        Ok(())
                    }
                    Check::Invalid => {
                        count("basic", "invalid");
                        Err("invalid credentials".into())
                    }
                    Check::Throttled => {
                        count("basic", "throttled");
                        Err("too many failed logins from this client; try again later".into())
                    }
                    Check::Unavailable => {
                        count("basic", "unavailable");
                        Err("the directory cannot check passwords now".into())
                    }
                }
            }
            Ok(negotiate::Credentials::Negotiate(token)) => {
                let Some(acceptor) = identity.kerberos.clone() else {
                    count("negotiate", "malformed");
                    return Err("Negotiate is not configured here".into());
                };
                if !self.proxy.auth.take_token_attempt(who.client) {
                    count("negotiate", "throttled");
                    return Err("too many failed logins from this client; try again later".into());
                }
                let accepted = tokio::task::spawn_blocking(move || acceptor.accept(&token))
                    .await
                    .unwrap_or(Err(crate::identity::KerberosError::Incomplete));
                match accepted {
                    Ok((principal, _mutual)) => {
                        count("negotiate", "ok");
                        self.proxy.auth.token_valid(who.client);
                        if let Ok(mut s) = req.signed_on.lock() {
                            *s = Some(principal.clone());
                        }
                        who.user = Some(principal);
                        Ok(())
                    }
                    Err(e) => {
                        count("negotiate", "invalid");
                        metrics::metrics().auth_failures.inc();
                        Err(e.to_string())
                    }
                }
            }
            // Basic without any way to check it: ignored, as before (the policy decides).
            Ok(negotiate::Credentials::Basic(..)) => Ok(()),
            Err(e) => {
                let scheme = if matches!(e, negotiate::Malformed::Token) {
                    "negotiate"
                } else {
                    "basic"
                };
                count(scheme, "malformed");
                metrics::metrics().auth_failures.inc();
                // Garbage is a failed attempt too: it spends the budget like a wrong password.
                if !self.proxy.auth.take_token_attempt(who.client) {
                    return Err("too many failed logins from this client; try again later".into());
                }
                Err(e.to_string())
            }
        }
    }

    /// The `Proxy-Authenticate` lines of 407 answers: the configured schemes, in order.
    fn realm(&self) -> String {
        let config = self.proxy.config();
        negotiate::challenge(&config.access.offered_schemes(), &config.access.realm)
    }
}
