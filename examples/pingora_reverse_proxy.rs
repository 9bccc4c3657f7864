//! A complete Pingora reverse proxy whose upstream is a DNS name served by carousel's plugin
//! (`cargo run --features pingora-lb --example pingora_reverse_proxy -- LISTEN METRICS NAME PORT
//! [NAMESERVER]`): it rotates per request over the usable members, retries the next one on a
//! refused or timed-out connect (which also counts toward that member's passive ejection), and
//! exports carousel's per-member metrics on METRICS (`/metrics`).

use std::sync::Arc;

use async_trait::async_trait;
use carousel::plugin::{Candidates, Outcome, Upstream, UpstreamConfig};
use pingora::apps::http_app::ServeHttp;
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora::services::background::{background_service, BackgroundService};

struct Proxy(Arc<Upstream>);

struct Ctx {
    picks: Option<Candidates>,
    tries: usize,
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;
    fn new_ctx(&self) -> Ctx {
        Ctx {
            picks: None,
            tries: 0,
        }
    }

    async fn upstream_peer(&self, _s: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let picks = ctx.picks.get_or_insert_with(|| self.0.select());
        let addr = picks
            .next()
            .ok_or_else(|| Error::explain(ErrorType::ConnectNoRoute, "no usable member"))?;
        ctx.tries += 1;
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(std::time::Duration::from_millis(500));
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _s: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let outcome = match e.etype() {
            ErrorType::ConnectRefused => Outcome::Refused,
            ErrorType::ConnectTimedout => Outcome::TimedOut,
            ErrorType::ConnectNoRoute => Outcome::Unreachable,
            _ => Outcome::Failed,
        };
        if let Some(addr) = peer._address.as_inet() {
            self.0.report(*addr, outcome);
        }
        e.set_retry(ctx.tries < 4);
        e
    }

    async fn connected_to_upstream(
        &self,
        _s: &mut Session,
        reused: bool,
        peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        _d: Option<&pingora::protocols::Digest>,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        match peer._address.as_inet() {
            Some(addr) if !reused => self.0.report(*addr, Outcome::Connected),
            _ => {}
        }
        Ok(())
    }
}

/// Starts the upstream's discovery and health checks in Pingora's runtime.
struct Discovery(Arc<Upstream>);

#[async_trait]
impl BackgroundService for Discovery {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.0.start();
        let _ = shutdown.changed().await;
    }
}

/// `/metrics`: carousel's registry.
struct Metrics;

#[async_trait]
impl ServeHttp for Metrics {
    async fn response(&self, _s: &mut ServerSession) -> http::Response<Vec<u8>> {
        let body = Upstream::metrics_text().into_bytes();
        http::Response::builder()
            .header("Content-Type", "text/plain; version=0.0.4")
            .header("Content-Length", body.len())
            .body(body)
            .unwrap_or_default()
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (listen, metrics, name, port) = (&a[1], &a[2], &a[3], a[4].parse().expect("port"));
    let mut cfg = UpstreamConfig::new(name.as_str(), port)
        .check_interval(std::time::Duration::from_millis(500));
    if let Some(ns) = a.get(5) {
        cfg = cfg.nameservers(vec![ns.parse().expect("nameserver ip:port")]);
    }
    let upstream = Arc::new(Upstream::new(cfg).expect("upstream"));
    let mut server = Server::new(None).expect("server");
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, Proxy(upstream.clone()));
    proxy.add_tcp(listen);
    let mut m = pingora::services::listening::Service::new("metrics".into(), Metrics);
    m.add_tcp(metrics);
    server.add_service(background_service("discovery", Discovery(upstream)));
    server.add_service(proxy);
    server.add_service(m);
    server.run_forever();
}
