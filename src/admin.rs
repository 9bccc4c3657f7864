//! The admin HTTP listener: `/metrics` for Prometheus, `/healthz` and `/readyz` for orchestrators,
//! `/status` (JSON) for people, and `/proxy.pac` / `/wpad.dat` generated from the configuration.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::cluster::now_ms;
use crate::config::{Config, Protocol};
use crate::metrics::metrics;
use crate::session::Proxy;

/// The admin application.
pub struct Admin {
    proxy: Arc<Proxy>,
}

impl Admin {
    /// Serves the state of `proxy`.
    pub fn new(proxy: Arc<Proxy>) -> Self {
        Self { proxy }
    }
}

fn respond(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response<Vec<u8>> {
    let body = body.into();
    Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .header("Content-Length", body.len())
        .header("Cache-Control", "no-store")
        .body(body)
        .unwrap_or_default()
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        match path.as_str() {
            "/metrics" => respond(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics().render(),
            ),
            "/healthz" => respond(200, "text/plain", "ok\n"),
            "/readyz" => match self.ready().await {
                Ok(()) => respond(200, "text/plain", "ready\n"),
                Err(why) => respond(503, "text/plain", format!("not ready: {why}\n")),
            },
            "/status" => respond(200, "application/json", self.status().to_string()),
            "/proxy.pac" | "/wpad.dat" => respond(
                200,
                "application/x-ns-proxy-autoconfig",
                pac(&self.proxy.config(), self.cluster_names()),
            ),
            _ => respond(
                404,
                "text/plain",
                "not found: try /metrics, /healthz, /readyz, /status, /proxy.pac\n",
            ),
        }
    }
}

impl Admin {
    fn cluster_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .proxy
            .clusters
            .load()
            .iter()
            .map(|c| c.name.clone())
            .collect();
        v.sort();
        v
    }

    /// Ready when every listener accepts connections and every cluster finished its first
    /// discovery, and not once shutdown has begun.
    async fn ready(&self) -> Result<(), String> {
        if self.proxy.is_draining() {
            return Err("draining: shutting down".into());
        }
        for l in &self.proxy.config().listeners {
            let mut addr = l.address;
            if addr.ip().is_unspecified() {
                addr.set_ip(if addr.is_ipv4() {
                    [127, 0, 0, 1].into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            let ok =
                tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
                    .await;
            if !matches!(ok, Ok(Ok(_))) {
                return Err(format!("listener {} not accepting", l.address));
            }
        }
        for c in self.proxy.clusters.load().iter() {
            if !c.is_ready() {
                return Err(format!("cluster {} not discovered yet", c.name));
            }
        }
        Ok(())
    }

    fn status(&self) -> serde_json::Value {
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
                    "ejected_until_unix_ms": if until > now { Some(unix_now + (until - now)) } else { None },
                    "ejections": m.ejections(),
                    "active_connections": m.active(),
                    "requests": requests,
                    "connect_failures": failures,
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
                "selection": format!("{:?}", c.cfg.selection),
                "ready": c.is_ready(),
                "dns_stale": c.is_stale(),
                "dns_error": snap.dns_error,
                "members": members,
            }));
        }
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "listeners": self.proxy.config().listeners.iter().map(|l| l.address.to_string()).collect::<Vec<_>>(),
            "names_cached": self.proxy.resolver.names(),
            "clusters": clusters,
        })
    }
}

/// The PAC file: cluster names and configured domains through carousel, the rest as configured.
pub fn pac(config: &Config, clusters: Vec<String>) -> String {
    let first = |p: Protocol| {
        config
            .listeners
            .iter()
            .find(|l| l.accepts(p))
            .map(|l| l.address.to_string())
    };
    let or_first = |list: &Vec<String>, p: Protocol| -> Vec<String> {
        if list.is_empty() {
            first(p).into_iter().collect()
        } else {
            list.clone()
        }
    };
    let http = or_first(&config.pac.http_proxy, Protocol::Http);
    let socks = or_first(&config.pac.socks_proxy, Protocol::Socks);
    // Every entry in order: the browser moves on to the next when one does not answer. No SOCKS
    // (v4) entry: the PAC routes names, and SOCKS4 cannot carry one.
    let mut route: Vec<String> = http.iter().map(|h| format!("PROXY {h}")).collect();
    route.extend(socks.iter().map(|s| format!("SOCKS5 {s}")));
    let route = if route.is_empty() {
        "DIRECT".to_string()
    } else {
        route.join("; ")
    };
    let default = config
        .pac
        .default
        .clone()
        .unwrap_or_else(|| "DIRECT".into());
    let mut conds: Vec<String> = clusters
        .iter()
        .map(|n| format!("host == {}", js(n)))
        .collect();
    for d in &config.pac.domains {
        let d = d.to_ascii_lowercase();
        if let Some(suffix) = d.strip_prefix('.') {
            conds.push(format!(
                "dnsDomainIs(host, {}) || host == {}",
                js(&format!(".{suffix}")),
                js(suffix)
            ));
        } else {
            conds.push(format!("host == {}", js(&d)));
        }
    }
    let cond = if conds.is_empty() {
        "false".to_string()
    } else {
        conds.join(" ||\n      ")
    };
    format!(
        "// Generated by carousel {}: cluster names and configured domains go through carousel.\n\
         function FindProxyForURL(url, host) {{\n  host = host.toLowerCase();\n  if (host.charAt(host.length - 1) == \".\")\n    host = host.substring(0, host.length - 1);\n  if ({cond})\n    return {};\n  return {};\n}}\n",
        env!("CARGO_PKG_VERSION"),
        js(&route),
        js(&default)
    )
}

/// A JavaScript string literal (JSON escaping is valid JavaScript).
fn js(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pac_routes_clusters_and_domains_through_the_proxy() {
        let mut c = Config::embedded();
        c.pac.domains = vec![".corp.test".into(), "exact.test".into()];
        let p = pac(&c, vec!["chat.cluster.test".into()]);
        assert!(p.contains(r#"host == "chat.cluster.test""#), "{p}");
        assert!(
            p.contains(r#"dnsDomainIs(host, ".corp.test") || host == "corp.test""#),
            "{p}"
        );
        assert!(
            p.contains(r#"return "PROXY 127.0.0.1:3128; SOCKS5 127.0.0.1:1080";"#),
            "{p}"
        );
        assert!(p.contains(r#"return "DIRECT";"#), "{p}");
        // A trailing dot is the same host.
        assert!(
            p.contains(r#"host = host.substring(0, host.length - 1);"#),
            "{p}"
        );
        // Replicas: every proxy in order.
        c.pac.http_proxy = vec!["a.example:3128".into(), "b.example:3128".into()];
        let p = pac(&c, vec![]);
        assert!(
            p.contains(r#""PROXY a.example:3128; PROXY b.example:3128; SOCKS5 127.0.0.1:1080""#),
            "{p}"
        );
    }
}
