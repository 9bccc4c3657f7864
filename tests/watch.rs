//! The watch over connect attempts a race leaves behind (issue 20), in a process of its own so
//! the process-wide bound is this test's alone: 1,025 races at once whose first candidate is a
//! blackhole and whose second connects; every blackholed attempt is left behind, 1,024 are
//! watched (the default `dial.max_watched_attempts`) and the 1,025th is refused and counted.
//! Real sockets on loopback (a listener with a full accept queue for the blackhole).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use carousel::dial::{dial, Attempts, Candidate, DialSettings, FailKind, Watch};
use carousel::testbed::blackhole::Blackhole;

#[derive(Default)]
struct Seen {
    abandoned: AtomicUsize,
    late: AtomicUsize,
}

impl Watch for Seen {
    fn late_failure(&self, _c: &Candidate, _kind: FailKind, _detail: &str) {
        self.late.fetch_add(1, Ordering::Relaxed);
    }
    fn late_success(&self, _c: &Candidate, _took: Duration) {
        self.late.fetch_add(1, Ordering::Relaxed);
    }
}

/// The blackhole first, then the live server.
struct TwoCandidates {
    next: Vec<SocketAddr>,
    seen: Arc<Seen>,
}

impl Attempts for TwoCandidates {
    fn next_candidate(&mut self) -> Option<Candidate> {
        (!self.next.is_empty()).then(|| Candidate {
            addr: self.next.remove(0),
            member: None,
        })
    }
    fn report_failure(&self, _c: &Candidate, _kind: FailKind, _detail: &str) {}
    fn report_success(&self, _c: &Candidate, _took: Duration) {}
    fn report_abandoned(&self, _c: &Candidate) {
        self.seen.abandoned.fetch_add(1, Ordering::Relaxed);
    }
    fn report_late_success(&self, _c: &Candidate, _took: Duration) {}
    fn watcher(&self) -> Option<Arc<dyn Watch>> {
        Some(self.seen.clone())
    }
    fn cluster_name(&self) -> &str {
        ""
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_1025th_attempt_left_behind_is_refused_a_watch_and_counted() {
    let hole_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 61)), 4061);
    let _hole = Blackhole::new(hole_addr).unwrap();
    let live = tokio::net::TcpListener::bind("127.0.0.62:0").await.unwrap();
    let live_addr = live.local_addr().unwrap();
    let acceptor = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = live.accept().await {
            held.push(s);
        }
    });
    let settings = DialSettings {
        per_attempt: Duration::from_secs(30),
        deadline: Duration::from_secs(30),
        max_attempts: 2,
        attempt_delay: Duration::from_millis(10),
        max_watched: 1024,
    };
    let seen = Arc::new(Seen::default());
    let m = carousel::metrics::metrics();
    let mut races = tokio::task::JoinSet::new();
    for _ in 0..1025 {
        let seen = seen.clone();
        races.spawn(async move {
            let mut plan = TwoCandidates {
                next: vec![hole_addr, live_addr],
                seen,
            };
            dial(&mut plan, settings).await.map(|c| c.addr)
        });
    }
    let mut won = 0;
    while let Some(r) = races.join_next().await {
        assert_eq!(r.unwrap().expect("every race is won"), live_addr);
        won += 1;
    }
    assert_eq!(won, 1025);
    assert_eq!(carousel::dial::watched_attempts(), 1024);
    assert_eq!(m.dial_watched.get(), 1024);
    assert_eq!(m.dial_watch_full.get(), 1, "the 1,025th was not counted");
    assert_eq!(seen.abandoned.load(Ordering::Relaxed), 1);
    // None has ended yet: the blackhole keeps them for their 30 s.
    assert_eq!(seen.late.load(Ordering::Relaxed), 0);
    acceptor.abort();
}
