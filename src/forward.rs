//! Absolute-form HTTP forwarding (`GET http://host:port/path`) on pingora-proxy.
//!
//! pingora-proxy brings keep-alive on both sides, upstream connection reuse and hop-by-hop
//! header handling; carousel supplies authentication, request hygiene, the target (from the
//! absolute-form request line), the rotated candidate list, and try-next through
//! `fail_to_connect` + retry.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::prelude::*;
use pingora::upstreams::peer::HttpPeer;
use pingora_http::authority::{raw_target_authority, RawTargetAuthority};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use tokio::time::Instant;

use crate::access_log::Entry;
use crate::auth::parse_basic;
use crate::cluster::member::ActiveGuard;
use crate::dial::{DialSettings, FailKind};
use crate::listener::http_status;
use crate::protocol::Target;
use crate::session::{Candidate, OpenError, Plan, Proxy, Requester};

/// The pingora-proxy application for plain HTTP.
pub struct Forwarder {
    proxy: Arc<Proxy>,
}

impl Forwarder {
    /// A forwarder over the shared proxy state.
    pub fn new(proxy: Arc<Proxy>) -> Self {
        Self { proxy }
    }
}

/// Per-request state across pingora-proxy's callbacks.
pub struct Ctx {
    started: Instant,
    who: Requester,
    target: Option<Target>,
    /// Origin-form path to send upstream.
    path: Vec<u8>,
    plan: Option<Plan>,
    dial: Option<DialSettings>,
    current: Option<Candidate>,
    connected: Option<Candidate>,
    attempt_started: Option<Instant>,
    attempts: u32,
    deadline: Option<Instant>,
    failure: Option<(FailKind, String)>,
    outcome: Option<&'static str>,
    why: String,
    _active: Option<ActiveGuard>,
}

async fn reply(session: &mut Session, status: u16, line: &str) {
    let mut resp = match ResponseHeader::build(status, Some(4)) {
        Ok(r) => r,
        Err(_) => return,
    };
    let body = Bytes::from(format!("{line}\n"));
    let _ = resp.insert_header("Content-Type", "text/plain");
    let _ = resp.insert_header("Content-Length", body.len().to_string());
    let _ = resp.insert_header("Connection", "close");
    session.set_keepalive(None);
    let _ = session.write_response_header(Box::new(resp), false).await;
    let _ = session.write_response_body(Some(body), true).await;
}

/// Request smuggling and header injection guards, on the head as the client sent it (pingora
/// reconciles Content-Length and Transfer-Encoding before filters run): one clear Content-Length
/// or chunked, never both; no control characters in values.
fn hygiene(raw_head: &[u8]) -> Result<(), &'static str> {
    let head = match crate::protocol::http::parse_head(raw_head) {
        Ok(Some((head, _))) => head,
        // The head parsed once already (pingora read it); a mismatch here is not a hygiene issue.
        _ => return Ok(()),
    };
    let cls: Vec<&[u8]> = head
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.as_slice())
        .collect();
    let te = head
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"));
    if te && !cls.is_empty() {
        return Err("both Content-Length and Transfer-Encoding");
    }
    if cls.len() > 1 {
        return Err("more than one Content-Length");
    }
    if let Some(cl) = cls.first() {
        let cl = cl.trim_ascii();
        if cl.is_empty() || !cl.iter().all(u8::is_ascii_digit) || cl.len() > 18 {
            return Err("invalid Content-Length");
        }
    }
    for (_, v) in &head.headers {
        if v.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err("control character in a header value");
        }
    }
    Ok(())
}

impl Forwarder {
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        status: u16,
        outcome: &'static str,
        line: &str,
    ) -> Result<bool> {
        ctx.outcome = Some(outcome);
        ctx.why = line.to_string();
        reply(session, status, line).await;
        Ok(true)
    }
}

#[async_trait]
impl ProxyHttp for Forwarder {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Instant::now(),
            who: Requester::default(),
            target: None,
            path: Vec::new(),
            plan: None,
            dial: None,
            current: None,
            connected: None,
            attempt_started: None,
            attempts: 0,
            deadline: None,
            failure: None,
            outcome: None,
            why: String::new(),
            _active: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.who.client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| crate::policy::canonical(a.ip()));
        if let Err(e) = self.proxy.check_client(ctx.who.client) {
            return self
                .refuse(session, ctx, 403, "denied", &e.to_string())
                .await;
        }
        let raw_head = session
            .as_downstream()
            .as_http1()
            .map(|h| h.get_headers_raw_bytes())
            .unwrap_or_default();
        if let Err(why) = hygiene(&raw_head) {
            return self
                .refuse(
                    session,
                    ctx,
                    400,
                    "bad_request",
                    &format!("bad request: {why}"),
                )
                .await;
        }
        let raw = session.req_header().raw_path().to_vec();
        let (scheme, authority, path) = match raw_target_authority(&raw) {
            RawTargetAuthority::Absolute {
                scheme,
                authority,
                path_and_query,
            } => (
                scheme.to_ascii_lowercase(),
                authority.to_vec(),
                path_and_query.to_vec(),
            ),
            _ => {
                let line =
                    "carousel is a proxy: send an absolute URL (http://host/path) or CONNECT";
                return self.refuse(session, ctx, 400, "bad_request", line).await;
            }
        };
        if scheme != b"http" {
            return self
                .refuse(
                    session,
                    ctx,
                    400,
                    "bad_request",
                    "only http:// URLs are forwarded; use CONNECT for https",
                )
                .await;
        }
        let authority = String::from_utf8_lossy(&authority).into_owned();
        // Userinfo in the URL is never forwarded nor logged.
        let hostport = authority.rsplit('@').next().unwrap_or_default();
        let Some(target) = split_host_port(hostport, 80) else {
            return self
                .refuse(
                    session,
                    ctx,
                    400,
                    "bad_request",
                    &format!("invalid target authority {hostport:?}"),
                )
                .await;
        };
        ctx.target = Some(target.clone());
        let credentials = session
            .req_header()
            .headers
            .get("proxy-authorization")
            .map(|v| v.as_bytes().to_vec());
        if let Some(value) = credentials.filter(|_| self.proxy.auth.enabled()) {
            match parse_basic(&value) {
                Some((user, pass)) if self.proxy.auth.verify(&user, &pass).await => {
                    ctx.who.user = Some(user)
                }
                _ => {
                    self.proxy.auth.failed(ctx.who.client).await;
                    return self
                        .ask_credentials(session, ctx, "invalid credentials")
                        .await;
                }
            }
        }
        ctx.path = if path.is_empty() { b"/".to_vec() } else { path };
        let plan = match self.proxy.plan(&ctx.who, &target).await {
            Ok(p) => p,
            Err(OpenError::AuthRequired) => {
                return self
                    .ask_credentials(session, ctx, "credentials required")
                    .await
            }
            Err(e) => {
                tracing::info!(%target, error = %e, "forward refused");
                return self
                    .refuse(session, ctx, http_status(&e), e.outcome(), &e.to_string())
                    .await;
            }
        };
        let dial = self.proxy.runtime().dial;
        ctx.deadline = Some(Instant::now() + dial.deadline);
        ctx.dial = Some(dial);
        ctx.plan = Some(plan);
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let now = Instant::now();
        let deadline = ctx.deadline.unwrap_or(now);
        let dial = ctx.dial.unwrap_or_else(|| self.proxy.runtime().dial);
        if now >= deadline {
            ctx.failure = Some((
                FailKind::Timeout,
                format!("deadline of {:?} reached", dial.deadline),
            ));
            return Err(Error::explain(ErrorType::ConnectError, "deadline reached"));
        }
        let next = if (ctx.attempts as usize) < dial.max_attempts {
            ctx.plan.as_mut().and_then(Plan::next_candidate)
        } else {
            None
        };
        let Some(candidate) = next else {
            if ctx.attempts == 0 {
                ctx.failure = Some((FailKind::Other, "no allowed address".into()));
                ctx.outcome = Some("denied");
            }
            return Err(Error::explain(
                ErrorType::ConnectError,
                "no candidates left",
            ));
        };
        ctx.attempts += 1;
        let mut peer = HttpPeer::new(candidate.addr, false, String::new());
        peer.options.connection_timeout = Some(dial.per_attempt.min(deadline - now));
        ctx.current = Some(candidate);
        ctx.attempt_started = Some(now);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let kind = match e.etype() {
            ErrorType::ConnectTimedout => FailKind::Timeout,
            ErrorType::ConnectRefused => FailKind::Refused,
            ErrorType::ConnectNoRoute => FailKind::Unreachable,
            _ => FailKind::Other,
        };
        let detail = format!("connect to {}: {}", peer._address, e.etype().as_str());
        if let (Some(plan), Some(c)) = (&ctx.plan, ctx.current.take()) {
            plan.report_failure(&self.proxy, &c, kind, &detail);
        }
        ctx.failure = Some((kind, detail));
        let max = ctx.dial.map_or(1, |d| d.max_attempts);
        let in_time = ctx.deadline.is_some_and(|d| Instant::now() < d);
        e.set_retry((ctx.attempts as usize) < max && in_time);
        e
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let (Some(plan), Some(c)) = (&ctx.plan, ctx.current.take()) {
            let took = ctx.attempt_started.map(|t| t.elapsed()).unwrap_or_default();
            if reused {
                self.proxy.failures.mark_ok(c.addr);
            } else {
                plan.report_success(&self.proxy, &c, took);
            }
            ctx._active = c.member.as_ref().map(|m| m.open_connection());
            ctx.connected = Some(c);
        }
        ctx.outcome = Some("ok");
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        req.set_raw_path(&ctx.path)?;
        let proxy_headers: Vec<String> = req
            .headers
            .keys()
            .map(|k| k.as_str().to_string())
            .filter(|k| k.starts_with("proxy-"))
            .collect();
        for name in proxy_headers {
            req.remove_header(&name);
        }
        if req.headers.get("host").is_none() {
            if let Some(t) = &ctx.target {
                req.insert_header("Host", t.to_string())?;
            }
        }
        let version = match session.req_header().version {
            http::Version::HTTP_10 => "1.0",
            _ => "1.1",
        };
        req.append_header("Via", format!("{version} carousel"))?;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        resp.append_header("Via", "1.1 carousel")?;
        Ok(())
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let outcome = ctx.outcome.unwrap_or("error");
        crate::metrics::request("http", outcome);
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        self.proxy.log(&Entry {
            client: ctx.who.client,
            user: ctx.who.user.clone(),
            protocol: "http",
            target: ctx
                .target
                .as_ref()
                .map(|t| t.to_string())
                .unwrap_or_default(),
            cluster: ctx
                .plan
                .as_ref()
                .map(|p| p.cluster_name().to_string())
                .unwrap_or_default(),
            member: ctx.connected.as_ref().map(|c| c.addr),
            attempts: ctx.attempts,
            outcome,
            rule: if ctx.why.is_empty() {
                ctx.plan
                    .as_ref()
                    .map(|p| p.rule.clone())
                    .unwrap_or_default()
            } else {
                ctx.why.clone()
            },
            bytes_up: session.body_bytes_read() as u64,
            bytes_down: session.body_bytes_sent() as u64,
            duration: ctx.started.elapsed(),
            status,
        });
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        if matches!(
            e.etype(),
            ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed
        ) && e.esource() == &ErrorSource::Downstream
        {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let (status, line) = match (&ctx.failure, e.esource()) {
            (Some((FailKind::Other, detail)), _) if ctx.attempts == 0 => (
                403,
                format!(
                    "denied: {detail} for {}",
                    ctx.target
                        .as_ref()
                        .map(|t| t.to_string())
                        .unwrap_or_default()
                ),
            ),
            (Some((kind, detail)), _) => {
                let err = OpenError::Dial(crate::dial::DialFailure {
                    kind: *kind,
                    attempts: ctx.attempts,
                    detail: detail.clone(),
                });
                ctx.outcome = Some(err.outcome());
                (http_status(&err), err.to_string())
            }
            (None, ErrorSource::Downstream) => {
                (400, format!("bad request: {}", e.etype().as_str()))
            }
            (None, _) => (502, format!("upstream error: {}", e.etype().as_str())),
        };
        tracing::info!(target = ?ctx.target.as_ref().map(|t| t.to_string()), status, error = %line, "forward failed");
        if ctx.outcome.is_none() || ctx.outcome == Some("ok") {
            ctx.outcome = Some(if status == 400 {
                "bad_request"
            } else {
                "connect_error"
            });
        }
        ctx.why = line.clone();
        reply(session, status, &line).await;
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }
}

impl Forwarder {
    async fn ask_credentials(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        why: &str,
    ) -> Result<bool> {
        ctx.outcome = Some("auth_failed");
        ctx.why = why.to_string();
        let realm = self.proxy.runtime().config.access.realm.clone();
        let mut resp = ResponseHeader::build(407, Some(4))?;
        resp.insert_header(
            "Proxy-Authenticate",
            format!("Basic realm=\"{}\"", realm.replace(['"', '\r', '\n'], "")),
        )?;
        let body = Bytes::from_static(b"proxy authentication required\n");
        resp.insert_header("Content-Type", "text/plain")?;
        resp.insert_header("Content-Length", body.len().to_string())?;
        resp.insert_header("Connection", "close")?;
        session.set_keepalive(None);
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await?;
        Ok(true)
    }
}

/// Splits `host[:port]` / `[v6][:port]` with a default port.
fn split_host_port(s: &str, default_port: u16) -> Option<Target> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Target::from_host_port(host, port);
    }
    match s.rsplit_once(':') {
        Some((h, p)) => Target::from_host_port(h, p.parse().ok()?),
        None => Target::from_host_port(s, default_port),
    }
}
