//! The admin HTTP listener: `/` (a status page for people), `/status` (the same as JSON),
//! `/metrics` for Prometheus, `/healthz` and `/readyz` for orchestrators, and `/proxy.pac` /
//! `/wpad.dat` generated from the configuration. Unauthenticated: keep it on loopback or a
//! management network.

mod pac;
mod page;
pub mod sampler;
pub mod status;
pub mod table;

pub use pac::pac;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

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
            "/" | "/index.html" => respond(
                200,
                "text/html; charset=utf-8",
                page::render(&self.status(), &self.proxy.history),
            ),
            "/status" => respond(
                200,
                "application/json",
                serde_json::to_string(&self.status()).unwrap_or_default(),
            ),
            "/proxy.pac" | "/wpad.dat" => respond(
                200,
                "application/x-ns-proxy-autoconfig",
                pac(&self.proxy.config(), self.cluster_names()),
            ),
            _ => respond(
                404,
                "text/plain",
                "not found: try /, /status, /metrics, /healthz, /readyz, /proxy.pac\n",
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
            if !c.is_discovered() {
                return Err(format!("cluster {} not discovered yet", c.name));
            }
            if !c.is_ready() && !c.had_members() {
                let why = c.snapshot().dns_error.clone().unwrap_or_default();
                return Err(format!("cluster {} has no members: {why}", c.name));
            }
        }
        Ok(())
    }
}
