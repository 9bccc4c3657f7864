//! Absolute-form HTTP forwarding (`GET http://host:port/path`) on pingora-proxy.
//!
//! A request arrives here already admitted by the listener (head limits and hygiene, Host rules,
//! authentication, policy and its planned candidates: see `listener/http.rs`), handed over as an
//! [`Admitted`] in the session's user context. pingora-proxy brings keep-alive on both sides,
//! upstream connection reuse and hop-by-hop header handling; this module supplies the candidates
//! (the plan's first pick names pingora's peer, so a pooled connection to it is reused), the
//! connect itself when none is pooled (`race`: the tunnels' racing dial, one budget for every
//! attempt), the origin-form rewrite, `Via`, the bound on the wait for the upstream's response,
//! and the access line.
//!
//! Why each head is parsed twice and the request enters through `on_connection_reuse`: pingora
//! 0.9's only public entry into `HttpProxy` is `HttpServerApp::process_new_http`, which reads
//! and parses the head itself (`handle_new_request`); `process_request`, which takes a parsed
//! session, is private, and no hook runs before pingora's parser. The listener has to judge the
//! head first (limits, hygiene, authentication, policy: a refusal must never reach an upstream
//! and must be logged, even one pingora's parser would also refuse), so it parses with
//! `httparse`, replays the bytes to pingora, and hands the verdict over through the one channel
//! pingora carries from the caller to the hooks: the session's connection user context, which it
//! gives to `on_connection_reuse` before any other hook. The second parse costs a few hundred
//! nanoseconds per head (bench: `cargo bench --bench protocol`); the day pingora exposes an entry
//! with a parsed head, both go.

mod race;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use tokio::time::Instant;

use crate::access_log::Entry;
use crate::cluster::member::ActiveGuard;
use crate::dial::{Attempts, DialFailure, DialSettings, FailKind};
use crate::outcome::{ClientProtocol, Outcome};
use crate::protocol::Target;
use crate::reply::http_status;
use crate::session::{Candidate, OpenError, Plan, Proxy, Requester};
use race::{Ended, Race};

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

/// A request the listener admitted, with everything it decided, handed to pingora-proxy in the
/// session's connection user context.
pub struct Admitted {
    /// Who asks (client and authenticated user).
    pub who: Requester,
    /// Where to.
    pub target: Target,
    /// The request target's authority as written: the `Host` sent upstream.
    pub authority: String,
    /// Origin-form path and query.
    pub path: String,
    /// When the request began (its first byte).
    pub started: Instant,
    /// Its candidates, in this request's order.
    pub plan: Plan,
    /// Set once pingora-proxy handed the request to this module: unset afterwards means Pingora's
    /// own parser refused the head, which the listener then logs.
    pub seen: Arc<AtomicBool>,
}

/// Per-request state across pingora-proxy's callbacks.
#[derive(Default)]
pub struct Ctx {
    started: Option<Instant>,
    who: Requester,
    target: Option<Target>,
    authority: String,
    /// Origin-form path to send upstream.
    path: String,
    plan: Option<Plan>,
    dial: Option<DialSettings>,
    response_timeout: Duration,
    /// The connect in progress, holding the plan while pingora runs it.
    race: Option<Arc<Race>>,
    connected: Option<Candidate>,
    /// The connection went to another candidate than the peer pingora pools it under (the first
    /// one lost the race): used for this request only, so that no later request for the first
    /// candidate is sent to it from the pool.
    single_use: bool,
    attempts: u32,
    deadline: Option<Instant>,
    /// Why the request failed, as far as this module knows: what the client is answered
    /// through `reply`, and the outcome.
    error: Option<OpenError>,
    outcome: Option<Outcome>,
    why: String,
    /// Informational (1xx) responses relayed so far, and their heads' bytes.
    informational: (usize, usize),
    _active: Option<ActiveGuard>,
}

/// Most 1xx responses relayed before the final one: an upstream that streams them for ever
/// would otherwise hold the client (and the response timeout never fires: each one is a read).
pub const MAX_INFORMATIONAL: usize = 16;

/// Largest response head relayed (and largest sum of 1xx heads), as Squid's
/// `reply_header_max_size`: 64 KiB. Request heads stop at 16 KiB; responses carry more (cookies,
/// security policies).
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// A response head's size on the wire, near enough: status line and every header line.
fn head_size(resp: &ResponseHeader) -> usize {
    16 + resp
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
}

/// Writes the answer `reply` chose (`status`, `line` as its body) through pingora's session: the
/// same status, reason and body the listener writes as raw bytes (`reply::http_error`), in the
/// form pingora's response writer takes.
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

    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        ctx: &mut Ctx,
        prev: Box<dyn std::any::Any + Send + Sync>,
    ) {
        let Ok(a) = prev.downcast::<Admitted>() else {
            return;
        };
        let a = *a;
        a.seen.store(true, Ordering::Release);
        let rt = self.proxy.runtime();
        let response_timeout = a
            .plan
            .cluster
            .as_ref()
            .and_then(|c| c.cfg.response_timeout)
            .unwrap_or(rt.config.forward.response_timeout);
        ctx.started = Some(a.started);
        ctx.who = a.who;
        ctx.target = Some(a.target);
        ctx.authority = a.authority;
        ctx.path = a.path;
        let mut plan = a.plan;
        // Plain HTTP goes to HTTP(S) parents as it came, in absolute form (a CONNECT to port
        // 80 is what a parent's default rules refuse: Squid's `deny CONNECT !SSL_ports`).
        plan.send_absolute();
        ctx.plan = Some(plan);
        ctx.deadline = Some(Instant::now() + rt.dial.deadline);
        ctx.dial = Some(rt.dial);
        ctx.response_timeout = response_timeout;
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if ctx.plan.is_none() {
            // Every request reaches pingora-proxy through the listener, which admits it first.
            let err = OpenError::BadRequest("request was not admitted".into());
            ctx.outcome = Some(err.outcome());
            ctx.why = err.to_string();
            reply(session, http_status(&err), &ctx.why).await;
            return Ok(true);
        }
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let now = Instant::now();
        let deadline = ctx.deadline.unwrap_or(now);
        let dial = ctx.dial.unwrap_or_else(|| self.proxy.runtime().dial);
        if now >= deadline {
            ctx.error = Some(OpenError::Dial(DialFailure {
                kind: FailKind::Timeout,
                attempts: ctx.attempts,
                detail: format!("deadline of {:?} reached", dial.deadline),
                cluster: String::new(),
            }));
            return Err(Error::explain(ErrorType::ConnectError, "deadline reached"));
        }
        let Some(mut plan) = ctx.plan.take() else {
            return Err(Error::explain(ErrorType::ConnectError, "no plan"));
        };
        let next = if (ctx.attempts as usize) < dial.max_attempts {
            plan.next_candidate()
        } else {
            None
        };
        let Some(first) = next else {
            if let Some(r) = plan.refusal() {
                ctx.error = Some(OpenError::Denied(r));
            }
            ctx.plan = Some(plan);
            return Err(Error::explain(
                ErrorType::ConnectError,
                "no candidates left",
            ));
        };
        let mut peer = match &plan.via {
            // Absolute form to an HTTP(S) parent: a connection to it serves any destination, so
            // it is pooled per parent; an HTTPS parent's certificate is verified for its name.
            Some(v) if v.absolute => {
                let tls = v.link.tls.as_ref();
                let mut peer = HttpPeer::new(
                    first.addr,
                    tls.is_some(),
                    tls.map(|t| t.sni.clone()).unwrap_or_default(),
                );
                peer.options.ca = tls.and_then(|t| t.ca.clone());
                peer
            }
            // Tunnelled through a SOCKS5 parent, a connection is to one destination: the
            // destination is part of the peer's pooling key (its SNI, unused without TLS), so a
            // pooled connection opened to one destination is never reused for another.
            Some(v) => HttpPeer::new(first.addr, false, v.target.to_string()),
            None => HttpPeer::new(first.addr, false, String::new()),
        };
        // The race bounds each attempt (`per_attempt`) and all of them (what is left of the
        // request's deadline, for a retry after a stale pooled connection too).
        let settings = DialSettings {
            deadline: deadline - now,
            max_attempts: dial.max_attempts - ctx.attempts as usize,
            ..dial
        };
        let race = Race::new(plan, first, settings);
        ctx.single_use = false;
        peer.options.custom_l4 = Some(race.clone());
        // Bounds the wait for the response head (and each later read): a silent upstream is
        // answered 504 instead of holding the client for as long as it waits.
        peer.options.read_timeout = Some(ctx.response_timeout);
        ctx.race = Some(race);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let (plan, ended) = ctx.race.take().map_or((None, None), |r| r.finish());
        if plan.is_some() {
            ctx.plan = plan;
        }
        let failure = match ended {
            Some(Ended::Failed(f)) => {
                ctx.attempts += f.attempts;
                f
            }
            Some(Ended::Parent(_, attempts, err)) => {
                ctx.attempts += attempts;
                ctx.error = Some(err);
                e.set_retry(false);
                return e;
            }
            // Connected, then pingora's TLS handshake with an HTTPS parent failed: the parent's
            // failure, as a failed connect would be.
            Some(Ended::Won(c, attempts)) => {
                ctx.attempts += attempts;
                let detail = format!("TLS to parent {}: {e}", c.addr);
                if let Some(plan) = &ctx.plan {
                    plan.report_failure(&c, FailKind::Other, &detail);
                }
                DialFailure {
                    kind: FailKind::Other,
                    attempts,
                    detail,
                    cluster: String::new(),
                }
            }
            // pingora failed before or after the connector (not a connect of ours): say so.
            _ => {
                ctx.attempts += 1;
                DialFailure {
                    kind: race::fail_kind(e.etype()),
                    attempts: 1,
                    detail: format!("connect to {}: {}", peer._address, e.etype().as_str()),
                    cluster: String::new(),
                }
            }
        };
        ctx.error = Some(OpenError::Dial(DialFailure {
            attempts: ctx.attempts,
            ..failure
        }));
        // The race already tried every candidate it could within the budget.
        e.set_retry(false);
        e
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let (plan, ended) = ctx.race.take().map_or((None, None), |r| r.finish());
        if plan.is_some() {
            ctx.plan = plan;
        }
        let connected = match ended {
            Some(Ended::Won(c, attempts)) => {
                ctx.attempts += attempts;
                ctx.single_use = Some(c.addr) != peer._address.as_inet().copied();
                Some(c)
            }
            Some(Ended::Unused(c)) if reused => {
                // A pooled connection to the first candidate: it answered before.
                ctx.attempts += 1;
                self.proxy.failures.mark_ok(c.addr);
                Some(c)
            }
            _ => None,
        };
        if let Some(c) = connected {
            ctx._active = c.member.as_ref().map(|m| m.open_connection());
            ctx.connected = Some(c);
        }
        ctx.outcome = Some(Outcome::Ok);
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let absolute = ctx
            .plan
            .as_ref()
            .and_then(|p| p.via.as_ref())
            .filter(|v| v.absolute);
        match absolute {
            // To an HTTP(S) parent: the destination in the request line (the address carousel
            // picked, with `resolve_destination`; `Host` keeps the name).
            Some(v) => req.set_raw_path(format!("http://{}{}", v.target, ctx.path).as_bytes())?,
            None => req.set_raw_path(ctx.path.as_bytes())?,
        }
        let parent_auth = absolute.and_then(|v| v.link.credentials.as_ref().map(|c| c.basic()));
        let proxy_headers: Vec<String> = req
            .headers
            .keys()
            .map(|k| k.as_str().to_string())
            .filter(|k| k.starts_with("proxy-"))
            .collect();
        for name in proxy_headers {
            req.remove_header(&name);
        }
        // carousel's own credentials for the parent, never the client's.
        if let Some(auth) = parent_auth {
            req.insert_header("Proxy-Authorization", auth)?;
        }
        if req.headers.get("host").is_none() && !ctx.authority.is_empty() {
            // Absent, or replaced by the target's authority (RFC 9112 §3.2.2).
            req.insert_header("Host", ctx.authority.as_str())?;
        }
        let version = match session.req_header().version {
            http::Version::HTTP_10 => "1.0",
            _ => "1.1",
        };
        req.append_header("Via", format!("{version} carousel"))?;
        // (Not for an upgrade: its `Connection: Upgrade` must stay, and it is never pooled.)
        if ctx.single_use && !session.is_upgrade_req() {
            req.insert_header("Connection", "close")?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // An HTTP parent's 407 is about carousel's credentials: the client, who could not
        // answer it, gets 502 with the parent's reason (and the parent is not held to it).
        if resp.status.as_u16() == 407 {
            if let (Some(c), true) = (
                &ctx.connected,
                ctx.plan
                    .as_ref()
                    .and_then(|p| p.via.as_ref())
                    .is_some_and(|v| v.absolute),
            ) {
                let e = crate::parent::ParentError::Refused {
                    parent: c.addr,
                    reason: format!(
                        "407 {}",
                        resp.status
                            .canonical_reason()
                            .unwrap_or("Proxy Authentication Required")
                    ),
                };
                let line = e.to_string();
                ctx.error = Some(OpenError::Parent(e));
                return Err(Error::explain(ErrorType::HTTPStatus(502), line));
            }
        }
        let size = head_size(resp);
        if resp.status.is_informational() && resp.status.as_u16() != 101 {
            ctx.informational.0 += 1;
            ctx.informational.1 += size;
            if ctx.informational.0 > MAX_INFORMATIONAL || ctx.informational.1 > MAX_RESPONSE_HEAD {
                let line = format!(
                    "upstream sent more than {MAX_INFORMATIONAL} informational (1xx) responses or {MAX_RESPONSE_HEAD} bytes of them"
                );
                ctx.error = Some(OpenError::BadResponse(line.clone()));
                return Err(Error::explain(ErrorType::InvalidHTTPHeader, line));
            }
        } else if size > MAX_RESPONSE_HEAD {
            let line = format!("upstream response head larger than {MAX_RESPONSE_HEAD} bytes");
            ctx.error = Some(OpenError::BadResponse(line.clone()));
            return Err(Error::explain(ErrorType::InvalidHTTPHeader, line));
        }
        resp.append_header("Via", "1.1 carousel")?;
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if let (Some(e), Some(Outcome::Ok)) = (e, ctx.outcome) {
            // Served in part: the response broke off (an upstream that closed mid-body, a client
            // that went away). Not `ok`.
            ctx.outcome = Some(Outcome::Error);
            if ctx.why.is_empty() {
                ctx.why = format!("response cut short: {e}");
            }
        }
        let outcome = ctx.outcome.unwrap_or(Outcome::Error);
        crate::metrics::request(ClientProtocol::Http, outcome);
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        self.proxy.log(&Entry {
            client: ctx.who.client,
            user: ctx.who.user.clone(),
            protocol: ClientProtocol::Http,
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
            rule: ctx
                .plan
                .as_ref()
                .map(|p| p.rule.clone())
                .unwrap_or_default(),
            error: ctx.why.clone(),
            bytes_up: session.body_bytes_read() as u64,
            bytes_down: session.body_bytes_sent() as u64,
            duration: ctx.started.map(|t| t.elapsed()).unwrap_or_default(),
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
        // The cause, as this module recorded it, or as pingora's error says.
        let err = ctx.error.take().unwrap_or_else(|| match e.esource() {
            ErrorSource::Upstream if e.etype() == &ErrorType::ReadTimedout => {
                OpenError::ResponseTimeout(ctx.response_timeout)
            }
            ErrorSource::Downstream => OpenError::BadRequest(e.etype().as_str().to_string()),
            _ => OpenError::BadResponse(format!("upstream error: {}", e.etype().as_str())),
        });
        let status = http_status(&err);
        let line = err.to_string();
        ctx.outcome = Some(err.outcome());
        tracing::info!(target = ?ctx.target.as_ref().map(|t| t.to_string()), status, error = %line, "forward failed");
        ctx.why = line.clone();
        if let Some(sent) = session
            .response_written()
            .filter(|r| !r.status.is_informational())
        {
            // The response had begun (a body cut short): the client has its status already and
            // only sees the connection close.
            return FailToProxy {
                error_code: sent.status.as_u16(),
                can_reuse_downstream: false,
            };
        }
        reply(session, status, &line).await;
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }
}
