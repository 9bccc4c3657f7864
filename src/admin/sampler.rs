//! Once a second, each cluster member's requests and connect failures per second go into the
//! in-process history the status page draws its sparklines from. Bounded by the history.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::history::History;
use crate::session::Proxy;

/// The history series of `what` ("req", "fail") for a member.
pub fn key(what: &str, cluster: &str, member: SocketAddr) -> String {
    format!("{what}:{cluster}/{member}")
}

/// The last sample of `series` (0 before the first).
pub fn last(history: &History, series: &str) -> f32 {
    history.read(series).last().copied().unwrap_or(0.0)
}

/// Samples until the process ends.
pub async fn run(proxy: Arc<Proxy>) {
    let mut before: HashMap<String, (u64, u64)> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let mut seen = HashMap::new();
        for c in proxy.clusters.load().iter() {
            for m in &c.snapshot().members {
                let (req, fail) = m.totals();
                let id = format!("{}/{}", c.name, m.addr);
                if let Some(&(r0, f0)) = before.get(&id) {
                    proxy
                        .history
                        .push(&key("req", &c.name, m.addr), req.saturating_sub(r0) as f32);
                    proxy.history.push(
                        &key("fail", &c.name, m.addr),
                        fail.saturating_sub(f0) as f32,
                    );
                }
                seen.insert(id, (req, fail));
            }
        }
        proxy.history.retain(|k| {
            k.split_once(':')
                .is_some_and(|(_, id)| seen.contains_key(id))
        });
        before = seen;
    }
}
