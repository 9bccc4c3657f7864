//! The forward path's upstream connect, plugged into pingora as its L4 connector: the same racing
//! dial the tunnels use ([`dial::dial`]), so that an absolute-form request's attempts share one
//! budget with everything else, and a stalled candidate is raced by the next one after the
//! attempt delay instead of costing the whole per-attempt timeout.
//!
//! pingora calls the connector only when it has no pooled connection for the peer it was given
//! (the rotation's first pick). The connector then owns the request's plan for the length of the
//! race and hands it back, with what happened, to the callbacks that follow.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::connectors::L4Connect;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::l4::stream::Stream;
use pingora::{Error, ErrorType, Result};

use crate::dial::{self, Attempts, Candidate, DialFailure, DialSettings, FailKind};
use crate::session::{OpenError, Plan};
use crate::tunnel::Upstream;

/// How one request's connect ended, for the callbacks after it.
pub enum Ended {
    /// The race ran and this candidate connected, after this many attempts.
    Won(Candidate, u32),
    /// The race ran and every attempt failed.
    Failed(DialFailure),
    /// pingora reused a pooled connection to the first candidate: no race ran.
    Unused(Candidate),
    /// This parent was connected (after this many attempts) and then failed or refused to open
    /// the destination: its outcome is already reported, and the error is the client's answer.
    Parent(Candidate, u32, OpenError),
}

struct State {
    plan: Option<Plan>,
    first: Option<Candidate>,
    ended: Option<Ended>,
}

/// One request's connect: the plan and first candidate going in, the outcome coming out.
pub struct Race {
    state: Mutex<State>,
    settings: DialSettings,
}

impl std::fmt::Debug for Race {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Race")
            .field("settings", &self.settings)
            .finish()
    }
}

/// The first candidate (already taken from the plan to name pingora's peer), then the plan's.
struct FirstThen<'a> {
    first: Option<Candidate>,
    plan: &'a mut Plan,
}

impl Attempts for FirstThen<'_> {
    fn next_candidate(&mut self) -> Option<Candidate> {
        self.first.take().or_else(|| self.plan.next_candidate())
    }
    fn report_failure(&self, c: &Candidate, kind: FailKind, detail: &str) {
        self.plan.report_failure(c, kind, detail)
    }
    fn report_success(&self, c: &Candidate, took: Duration) {
        self.plan.report_success(c, took)
    }
    fn report_abandoned(&self, c: &Candidate) {
        self.plan.report_abandoned(c)
    }
    fn report_late_success(&self, c: &Candidate, took: Duration) {
        self.plan.report_late_success(c, took)
    }
    fn watcher(&self) -> Option<Arc<dyn dial::Watch>> {
        self.plan.watcher()
    }
    fn cluster_name(&self) -> &str {
        self.plan.cluster_name()
    }
}

impl Race {
    /// A race over `first`, then the rest of `plan`, within `settings` (its deadline is what is
    /// left of the request's).
    pub fn new(plan: Plan, first: Candidate, settings: DialSettings) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                plan: Some(plan),
                first: Some(first),
                ended: None,
            }),
            settings,
        })
    }

    /// Takes the plan back, with how the connect ended. `None` for the plan only if the connect
    /// was cancelled mid-race (the client went away).
    pub fn finish(&self) -> (Option<Plan>, Option<Ended>) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let ended = s.ended.take().or_else(|| s.first.take().map(Ended::Unused));
        (s.plan.take(), ended)
    }
}

/// The failure kind of a connect error pingora raised itself (not one of the race's), the
/// inverse of [`error_type`]: the two maps live together so they cannot drift apart.
pub fn fail_kind(e: &ErrorType) -> FailKind {
    match e {
        ErrorType::ConnectTimedout => FailKind::Timeout,
        ErrorType::ConnectRefused => FailKind::Refused,
        ErrorType::ConnectNoRoute => FailKind::Unreachable,
        _ => FailKind::Other,
    }
}

/// The pingora error type a failed race is reported as.
fn error_type(kind: FailKind) -> ErrorType {
    match kind {
        FailKind::Refused => ErrorType::ConnectRefused,
        FailKind::Timeout => ErrorType::ConnectTimedout,
        FailKind::Unreachable => ErrorType::ConnectNoRoute,
        FailKind::Other | FailKind::Exhausted => ErrorType::ConnectError,
    }
}

#[async_trait]
impl L4Connect for Race {
    async fn connect(&self, _addr: &PeerAddr) -> Result<Stream> {
        let (plan, first) = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            (s.plan.take(), s.first.take())
        };
        let Some(mut plan) = plan else {
            return Err(Error::explain(
                ErrorType::ConnectError,
                "the request's connect already ran",
            ));
        };
        let result = dial::dial(
            &mut FirstThen {
                first,
                plan: &mut plan,
            },
            self.settings,
        )
        .await;
        // Through a SOCKS5 parent (or to a resolved destination): the destination asked for
        // first; pingora then speaks HTTP to it. (Otherwise HTTP(S) parents take the request
        // itself, in absolute form.)
        let result = match (result, plan.via.clone().filter(|v| !v.absolute)) {
            (Ok(c), Some(via)) => {
                let won = Candidate {
                    addr: c.addr,
                    member: c.member.clone(),
                };
                let attempts = c.attempts;
                match plan.through_parent(&via, c).await {
                    Ok(c) if c.from_parent.is_empty() => Ok(c),
                    Ok(_) => Err(Ended::Parent(
                        won,
                        attempts,
                        OpenError::BadResponse("the parent sent bytes before the request".into()),
                    )),
                    Err(e) => Err(Ended::Parent(won, attempts, e)),
                }
            }
            (Ok(c), None) => Ok(c),
            (Err(f), _) => Err(Ended::Failed(f)),
        };
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.plan = Some(plan);
        match result {
            Ok(c) => {
                let won = Candidate {
                    addr: c.addr,
                    member: c.member,
                };
                s.ended = Some(Ended::Won(won, c.attempts));
                match c.stream {
                    Upstream::Tcp(tcp) => Ok(Stream::from(tcp)),
                    // pingora's connector takes plain TCP: an HTTPS parent carries tunnels, and
                    // serves plain HTTP only in absolute form (not to resolved destinations).
                    Upstream::Tls(_) => Err(Error::explain(
                        ErrorType::ConnectProxyFailure,
                        "plain HTTP to a resolved destination cannot go through an https parent",
                    )),
                }
            }
            Err(Ended::Parent(won, attempts, e)) => {
                let err = Error::explain(ErrorType::ConnectProxyFailure, e.to_string());
                s.ended = Some(Ended::Parent(won, attempts, e));
                Err(err)
            }
            Err(Ended::Failed(f)) => {
                let e = Error::explain(error_type(f.kind), f.to_string());
                s.ended = Some(Ended::Failed(f));
                Err(e)
            }
            Err(other) => {
                s.ended = Some(other);
                Err(Error::explain(ErrorType::ConnectError, "connect failed"))
            }
        }
    }
}
