//! Absolute-form HTTP forwarding (`GET http://host:port/path`) on pingora-proxy.
//!
//! pingora-proxy brings keep-alive on both sides, upstream connection reuse and hop-by-hop
//! header handling; carousel supplies the target (from the absolute-form request line), the
//! rotated candidate list, and try-next through `fail_to_connect` + retry.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::prelude::*;
use pingora::upstreams::peer::HttpPeer;
use pingora_http::authority::{raw_target_authority, RawTargetAuthority};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use tokio::time::Instant;

use crate::cluster::member::ActiveGuard;
use crate::dial::FailKind;
use crate::listener::http_status;
use crate::protocol::Target;
use crate::session::{Candidate, OpenError, Plan, Proxy};

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
#[derive(Default)]
pub struct Ctx {
    target: Option<Target>,
    /// Origin-form path to send upstream.
    path: Vec<u8>,
    plan: Option<Plan>,
    current: Option<Candidate>,
    attempt_started: Option<Instant>,
    attempts: u32,
    deadline: Option<Instant>,
    failure: Option<(FailKind, String)>,
    outcome: Option<&'static str>,
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

#[async_trait]
impl ProxyHttp for Forwarder {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        if let Err(e) = self.proxy.check_client(client) {
            ctx.outcome = Some("denied");
            reply(session, 403, &e.to_string()).await;
            return Ok(true);
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
                reply(
                    session,
                    400,
                    "carousel is a proxy: send an absolute URL (http://host/path) or CONNECT",
                )
                .await;
                return Ok(true);
            }
        };
        if scheme != b"http" {
            ctx.outcome = Some("bad_request");
            reply(
                session,
                400,
                "only http:// URLs are forwarded; use CONNECT for https",
            )
            .await;
            return Ok(true);
        }
        let authority = String::from_utf8_lossy(&authority).into_owned();
        // Userinfo in the URL is never forwarded nor logged.
        let hostport = authority.rsplit('@').next().unwrap_or_default();
        let target = match split_host_port(hostport, 80) {
            Some(t) => t,
            None => {
                reply(
                    session,
                    400,
                    &format!("invalid target authority {hostport:?}"),
                )
                .await;
                return Ok(true);
            }
        };
        ctx.path = if path.is_empty() { b"/".to_vec() } else { path };
        ctx.deadline = Some(Instant::now() + self.proxy.dial.deadline);
        match self.proxy.plan(&target).await {
            Ok(p) => ctx.plan = Some(p),
            Err(e) => {
                let status = http_status(&e);
                ctx.outcome = Some(e.outcome());
                tracing::info!(%target, error = %e, "forward failed");
                reply(session, status, &e.to_string()).await;
                return Ok(true);
            }
        }
        ctx.target = Some(target);
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let now = Instant::now();
        let deadline = ctx.deadline.unwrap_or(now);
        if now >= deadline {
            ctx.failure = Some((
                FailKind::Timeout,
                format!("deadline of {:?} reached", self.proxy.dial.deadline),
            ));
            return Err(Error::explain(ErrorType::ConnectError, "deadline reached"));
        }
        let next = if (ctx.attempts as usize) < self.proxy.dial.max_attempts {
            ctx.plan.as_mut().and_then(Plan::next_candidate)
        } else {
            None
        };
        let Some(candidate) = next else {
            return Err(Error::explain(
                ErrorType::ConnectError,
                "no candidates left",
            ));
        };
        ctx.attempts += 1;
        let mut peer = HttpPeer::new(candidate.addr, false, String::new());
        peer.options.connection_timeout = Some(self.proxy.dial.per_attempt.min(deadline - now));
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
        let more = (ctx.attempts as usize) < self.proxy.dial.max_attempts;
        let in_time = ctx.deadline.is_some_and(|d| Instant::now() < d);
        e.set_retry(more && in_time);
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
        for name in [
            "proxy-authorization",
            "proxy-connection",
            "proxy-authenticate",
        ] {
            req.remove_header(name);
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

    async fn logging(&self, _session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        crate::metrics::request("http", ctx.outcome.unwrap_or("error"));
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let (status, line) = match (&ctx.failure, e.esource()) {
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
        tracing::info!(target = ?ctx.target.as_ref().map(|t| t.to_string()), status, error = %line, "forward failed");
        if ctx.outcome.is_none() {
            ctx.outcome = Some(if status == 400 {
                "bad_request"
            } else {
                "connect_error"
            });
        }
        reply(session, status, &line).await;
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
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
