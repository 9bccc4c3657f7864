//! `/status`: everything an operator asks about, as JSON, in the configuration's own words.
//! The status page and `carousel status` render this same document.

use std::sync::Arc;

use serde_json::json;

use super::Admin;
use crate::cluster::now_ms;

impl Admin {
    /// The status document (fields documented in the README).
    pub(super) fn status(&self) -> serde_json::Value {
        let now = now_ms();
        let unix_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let mut clusters = Vec::new();
        for c in self.proxy.clusters.load().iter() {
            let snap = c.snapshot();
            let member = |m: &Arc<crate::cluster::Member>, draining: bool| {
                let rec = m.record();
                let (requests, failures) = m.totals();
                let until = m.ejected_until_ms();
                json!({
                    "address": m.addr.ip().to_string(),
                    "port": m.addr.port(),
                    "weight": m.weight,
                    "priority": m.priority,
                    "health": if draining { "draining".to_string() } else { format!("{:?}", m.availability(now)).to_lowercase() },
                    "checked": m.was_checked(),
                    "last_check_ok": rec.ok,
                    "last_check_unix": rec.at_unix,
                    "last_error": rec.last_error,
                    "last_error_unix": rec.last_error_unix,
                    "ejected_until_unix_ms": if until > now { Some(unix_now + (until - now)) } else { None },
                    "ejections": m.ejections(),
                    "active_connections": m.active(),
                    "requests": requests,
                    "connect_failures": failures,
                    "requests_per_second": super::sampler::last(&self.proxy.history, &super::sampler::key("req", &c.name, m.addr)),
                    "failures_per_second": super::sampler::last(&self.proxy.history, &super::sampler::key("fail", &c.name, m.addr)),
                })
            };
            let members: Vec<_> = snap
                .members
                .iter()
                .map(|m| member(m, false))
                .chain(snap.draining.iter().map(|m| member(m, true)))
                .collect();
            let dns_answer = match self.proxy.clusters.load().publish(&c.name) {
                crate::dns::responder::Lookup::Found(a) => json!({
                    "addresses": a.addrs.iter().map(|ip| ip.to_string()).collect::<Vec<_>>(),
                    "all_down": a.all_down,
                    "degraded": a.degraded,
                }),
                _ => serde_json::Value::Null,
            };
            clusters.push(json!({
                "name": c.name,
                "dns_answer": dns_answer,
                "ports": c.cfg.ports,
                "srv": c.cfg.srv,
                "selection": c.cfg.selection,
                "on_member_down": c.cfg.on_member_down,
                "ready": c.is_ready(),
                "dns_stale": c.is_stale(),
                "dns_error": snap.dns_error,
                "members": members,
            }));
        }
        let config = self.proxy.config();
        let m = crate::metrics::metrics();
        let listeners: Vec<_> = config
            .listeners
            .iter()
            .map(|l| {
                json!({
                    "address": l.address.to_string(),
                    "protocols": l.protocols.iter().map(|p| match p {
                        crate::config::Protocol::Http => "http",
                        crate::config::Protocol::Socks => "socks",
                    }).collect::<Vec<_>>(),
                    "tls": l.tls.is_some(),
                    "proxy_protocol": format!("{:?}", l.proxy_protocol).to_lowercase(),
                    "open_connections": m.listener_connections.with_label_values(&[&l.address.to_string()]).get(),
                })
            })
            .collect();
        let mut requests = serde_json::Map::new();
        for (p, o, n) in crate::metrics::request_counts() {
            let e = requests.entry(p.as_str()).or_insert_with(|| json!({}));
            if let Some(obj) = e.as_object_mut() {
                obj.insert(o.as_str().to_string(), json!(n));
            }
        }
        let (reload_unix, reload_result) = crate::reload::last();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "draining": self.proxy.is_draining(),
            "config": crate::reload::config_path(),
            "reload": {"last_unix": reload_unix, "result": reload_result},
            "listeners": listeners,
            "requests": requests,
            "dns": {
                "plain_names_cached": self.proxy.resolver.names(),
                "cluster_names": self.proxy.clusters.load().iter().count(),
                "lookups_in_flight": m.dns_in_flight.get(),
                "responder": config.responder.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            },
            "clusters": clusters,
        })
    }
}
