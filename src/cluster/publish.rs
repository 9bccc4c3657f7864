//! What the DNS responder publishes for a cluster: the members the proxy path would use now.
//! The cluster name answers A/AAAA with its usable members' addresses; a cluster discovered from
//! SRV also answers its SRV name, with one target name per member (`<address>.<cluster name>`,
//! dots and colons as dashes) that itself answers with the member's address.

use std::net::IpAddr;

use super::{now_ms, Cluster, ClusterTable, Member};
use crate::dns::responder::{Answer, Lookup, SrvAnswer};

/// The target name of `m` in `cluster`'s SRV answers.
fn target_name(m: &Member, cluster: &str) -> String {
    let label: String = m
        .addr
        .ip()
        .to_string()
        .chars()
        .map(|c| if c == '.' || c == ':' { '-' } else { c })
        .collect();
    format!("{label}.{cluster}")
}

/// The responder's zone: the cluster table in force, read at each query (a reload swaps it).
impl crate::dns::responder::Zone for arc_swap::ArcSwap<ClusterTable> {
    fn lookup(&self, name: &str) -> Lookup {
        self.load().publish(name)
    }
}

impl ClusterTable {
    /// What `name` (lowercase, no trailing dot) publishes now, if it is a cluster's.
    pub fn publish(&self, name: &str) -> Lookup {
        for c in self.iter() {
            if name == c.name {
                return c.published(false);
            }
            if c.cfg.srv.as_deref() == Some(name) {
                return c.published(true);
            }
            if let Some(member) = name
                .strip_suffix(c.name.as_str())
                .and_then(|l| l.strip_suffix('.'))
            {
                let snap = c.snapshot();
                if let Some(m) = snap
                    .members
                    .iter()
                    .find(|m| target_name(m, &c.name) == name)
                {
                    let _ = member;
                    return Lookup::Found(Answer {
                        cluster: c.name.clone(),
                        addrs: vec![m.addr.ip()],
                        ..Answer::default()
                    });
                }
            }
        }
        Lookup::NotOurs
    }
}

impl Cluster {
    /// This cluster's answer: its usable members, or every member when none is usable.
    fn published(&self, srv: bool) -> Lookup {
        if !self.is_discovered() {
            return Lookup::NotReady;
        }
        let snap = self.snapshot();
        if snap.members.is_empty() {
            return Lookup::NotReady;
        }
        let now = now_ms();
        let live: Vec<&std::sync::Arc<Member>> =
            snap.members.iter().filter(|m| !m.is_retired()).collect();
        let usable: Vec<&std::sync::Arc<Member>> =
            live.iter().copied().filter(|m| m.usable(now)).collect();
        let all_down = usable.is_empty();
        let chosen = if all_down { &live } else { &usable };
        let mut addrs: Vec<IpAddr> = Vec::new();
        for m in chosen {
            if !addrs.contains(&m.addr.ip()) {
                addrs.push(m.addr.ip());
            }
        }
        let srv = if srv {
            chosen
                .iter()
                .map(|m| SrvAnswer {
                    priority: m.priority,
                    weight: m.weight.min(u32::from(u16::MAX)) as u16,
                    port: m.addr.port(),
                    target: target_name(m, &self.name),
                    addr: m.addr.ip(),
                })
                .collect()
        } else {
            Vec::new()
        };
        Lookup::Found(Answer {
            cluster: self.name.clone(),
            addrs,
            srv,
            degraded: usable.len() < live.len(),
            all_down,
        })
    }
}
