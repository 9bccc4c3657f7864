//! The end every tunnel protocol shares: open the target, answer in the protocol's own words,
//! then carry the bytes and write the access line.

use bytes::BytesMut;
use pingora::protocols::Stream;

use super::io::write_reply;
use super::{Listener, Request};
use crate::access_log::Entry;
use crate::config::OnMemberDown;
use crate::dial::Connected;
use crate::metrics;
use crate::outcome::Outcome;
use crate::protocol::Target;
use crate::reply::Answer;
use crate::session::OpenError;
use crate::tunnel;

/// What the open decided, for the tunnel's access line: the rule that allowed it and the status
/// (or reply code) the client was sent.
struct Sent {
    rule: String,
    status: u16,
}

impl Listener {
    /// Opens `target` for `req` and answers with `ok` / `fail` (which build the protocol's
    /// reply); on success the tunnel runs until either side closes. `early` are bytes the client
    /// sent after its request, before the reply: they go upstream first.
    pub(super) async fn open_and_tunnel(
        &self,
        req: Request,
        mut stream: Stream,
        target: &Target,
        early: BytesMut,
        ok: impl FnOnce(&Connected) -> Answer,
        fail: impl FnOnce(&OpenError) -> Answer,
    ) {
        match self.proxy.open(&req.who, target).await {
            Ok((up, rule)) => {
                // (Counted when it ends, with the outcome the access line gives it.)
                let answer = ok(&up);
                write_reply(&mut stream, &answer.bytes).await;
                // What a parent proxy passed on with its answer belongs to the client.
                if !up.from_parent.is_empty() {
                    write_reply(&mut stream, &up.from_parent).await;
                }
                let sent = Sent {
                    rule,
                    status: answer.status,
                };
                self.tunnel(req, stream, up, sent, &early, target).await;
            }
            Err(e) => {
                tracing::info!(%target, error = %e, protocol = req.protocol.as_str(), "request failed");
                metrics::request(req.protocol, e.outcome());
                let answer = fail(&e);
                let (cluster, attempts) = match &e {
                    OpenError::Dial(d) => (d.cluster.clone(), d.attempts),
                    _ => (String::new(), 0),
                };
                self.proxy.log(&Entry {
                    client: req.who.client,
                    user: req.who.user.clone(),
                    protocol: req.protocol,
                    target: target.to_string(),
                    cluster,
                    attempts,
                    outcome: e.outcome(),
                    error: e.to_string(),
                    duration: req.started.elapsed(),
                    status: answer.status,
                    ..Default::default()
                });
                write_reply(&mut stream, &answer.bytes).await;
            }
        }
    }

    async fn tunnel(
        &self,
        req: Request,
        mut client: Stream,
        mut up: Connected,
        sent: Sent,
        early: &[u8],
        target: &Target,
    ) {
        let Sent { rule, status } = sent;
        let m = metrics::metrics();
        let _member = up.member.as_ref().map(|mb| mb.open_connection());
        let active = m.active_tunnels.with_label_values(&[req.protocol.as_str()]);
        active.inc();
        let opts = self.proxy.tunnel_options(&up.cluster);
        // A member marked down closes its tunnels when its cluster says so.
        let mut down = up
            .member
            .as_ref()
            .filter(|_| {
                self.proxy
                    .clusters
                    .load()
                    .get(&up.cluster)
                    .is_some_and(|c| c.cfg.on_member_down == OnMemberDown::CloseTunnels)
            })
            .map(|m| m.watch_down());
        // The tunnel ends on its own, or from outside: its member marked down (when the cluster
        // says so) or the shutdown's deadline. Either way its bytes are counted and its line
        // says why.
        let member_down = async {
            match down.as_mut() {
                Some(rx) => {
                    let _ = rx.wait_for(|d| *d).await;
                }
                None => std::future::pending().await,
            }
        };
        let shutdown = self.shutdown_deadline(&req);
        let stopped_by = std::sync::Mutex::new(None);
        let stop = async {
            let why = tokio::select! {
                _ = member_down => Outcome::MemberDown,
                _ = shutdown => Outcome::Shutdown,
            };
            *stopped_by.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        };
        let stats = match (tunnel::tcp_of(&client), up.stream.plain()) {
            (Some(raw), Some(upstream)) => {
                // The duplicate is all the tunnel needs: closing Pingora's descriptor keeps the
                // tunnel at two descriptors (client and upstream).
                drop(client);
                tunnel::run_tcp(&raw, upstream, early, opts, stop).await
            }
            _ => tunnel::run(&mut client, &mut up.stream, early, opts.idle, stop).await,
        };
        let stopped_by = *stopped_by.lock().unwrap_or_else(|e| e.into_inner());
        let outcome = match (stats.stopped, stopped_by) {
            (true, Some(why)) => why,
            _ if stats.idled_out => Outcome::IdleTimeout,
            _ => Outcome::Ok,
        };
        if outcome == Outcome::MemberDown {
            m.tunnels_closed_member_down
                .with_label_values(&[&up.cluster])
                .inc();
        }
        active.dec();
        m.tunnel_up.inc_by(stats.up);
        m.tunnel_down.inc_by(stats.down);
        metrics::request(req.protocol, outcome);
        self.proxy.log(&Entry {
            client: req.who.client,
            user: req.who.user.clone(),
            protocol: req.protocol,
            target: target.to_string(),
            cluster: up.cluster.clone(),
            member: Some(up.addr),
            attempts: up.attempts,
            outcome,
            rule,
            error: match outcome {
                Outcome::MemberDown => {
                    "member marked down: tunnel closed (on_member_down = close_tunnels)".into()
                }
                Outcome::Shutdown => "closed by the shutdown: still open at its timeout".into(),
                _ => String::new(),
            },
            bytes_up: stats.up,
            bytes_down: stats.down,
            duration: req.started.elapsed(),
            status,
        });
    }
}
