//! Absolute-form HTTP requests (`GET http://host/path`): the head is read and judged here, under
//! the same deadline, size and header-count limits and the same hygiene as a CONNECT head, with
//! the Host rules of RFC 9112 §3.2, authentication and the policy. Only an admitted request goes
//! on to pingora-proxy, which forwards it with keep-alive on both sides; the connection comes
//! back here for its next request. Anything refused is answered, logged and counted here, so no
//! request leaves without a trace, including one Pingora's own parser would refuse.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use pingora::apps::HttpServerApp;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

use super::io::{unread, write_reply};
use super::{Listener, Request, KEEPALIVE};
use crate::forward::Admitted;
use crate::outcome::Outcome;
use crate::protocol::http;
use crate::reply::Answer;

impl Listener {
    /// Serves one forwarded request; returns the connection for the next one, if it stays open.
    pub(super) async fn http(
        &self,
        mut stream: Stream,
        mut buf: BytesMut,
        mut req: Request,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let refusal = |e: &http::Error| Some(Answer::http(e.status(), &e.to_string()));
        let (forward, used) = self
            .read_message(&mut stream, &mut buf, &req, http::parse_forward, refusal)
            .await?;
        let http::Forward {
            head,
            target: forward,
        } = forward;
        req.handshake_done();
        let target = forward.target.clone();
        if let Err(why) = self.authenticate(&head, &mut req).await {
            let answer = Answer::auth_required(&self.realm());
            self.finish_refused(&req, Some(&target), Outcome::AuthFailed, why, 407);
            write_reply(&mut stream, &answer.bytes).await;
            return None;
        }
        let plan = match self.proxy.plan(&req.who, &target).await {
            Ok(plan) => plan,
            Err(e) => {
                tracing::info!(%target, error = %e, "forward refused");
                let answer = Answer::http_open(&e, &self.realm());
                self.refuse(&mut stream, &req, Some(&target), &e, answer)
                    .await;
                return None;
            }
        };
        let bytes = http::forward_bytes(&buf, used, &forward);
        let seen = Arc::new(AtomicBool::new(false));
        let admitted = Admitted {
            who: req.who.clone(),
            target: target.clone(),
            authority: forward.authority,
            path: forward.path,
            started: req.started,
            plan,
            seen: seen.clone(),
        };
        let mut session = ServerSession::new_http1(unread(stream, &bytes)?);
        session.set_keepalive(if *shutdown.borrow() {
            None
        } else {
            Some(KEEPALIVE.as_secs())
        });
        session.set_connection_user_context(Some(Box::new(admitted)));
        // A request still in flight at the shutdown's deadline is ended here, with its line
        // (pingora would drop it unlogged a second later).
        let deadline = self.shutdown_deadline(&req);
        let reused = tokio::select! {
            reused = self.forwarder.process_new_http(session, shutdown) => reused,
            _ = deadline => {
                let why = "closed by the shutdown: still in flight at its timeout".to_string();
                self.finish_refused(&req, Some(&target), Outcome::Shutdown, why, 0);
                return None;
            }
        };
        if !seen.load(Ordering::Acquire) {
            // Pingora refused the head before any hook ran: the checks above missed a rule of
            // its parser. Still one line and one count.
            let why = "refused by the HTTP/1 parser".to_string();
            self.finish_refused(&req, Some(&target), Outcome::BadRequest, why, 0);
        }
        let (next, _settings) = reused?.consume();
        Some(next)
    }
}
