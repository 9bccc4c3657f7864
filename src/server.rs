//! Builds the Pingora `Server` from carousel's configuration: one listening service per
//! configured port, all sharing one proxy state and one HTTP forwarder; a background service for
//! cluster discovery and health checks; the admin listener.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::listeners::{L4BufferSettings, ListenerConfig, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::admin::Admin;
use crate::cluster::discovery;
use crate::config::Config;
use crate::forward::Forwarder;
use crate::listener::Listener;
use crate::reload;
use crate::resolve::ResolveError;
use crate::session::Proxy;

/// Pingora's own settings, all taken from carousel's config so none of Pingora's defaults (such as
/// its 300 s grace period) leak through.
pub fn server_conf(config: &Config) -> ServerConf {
    let s = &config.server;
    ServerConf {
        threads: s.threads,
        work_stealing: s.work_stealing,
        grace_period_seconds: Some(s.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout_seconds),
        pid_file: s.pid_file.clone(),
        upgrade_sock: s.upgrade_sock.clone(),
        ..ServerConf::default()
    }
}

/// Runs cluster discovery (which starts health checks) for every configured cluster, and
/// reloads the configuration on SIGHUP.
struct Background {
    proxy: Arc<Proxy>,
    path: Option<PathBuf>,
}

#[async_trait]
impl BackgroundService for Background {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let dns = self.proxy.config().dns.clone();
        for cluster in self.proxy.clusters.load().iter() {
            tokio::spawn(discovery::run(
                cluster.clone(),
                self.proxy.resolver.clone(),
                dns.clone(),
            ));
        }
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGHUP; hot reload disabled");
                let _ = shutdown.changed().await;
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading configuration");
                    let _ = reload::reload(&self.proxy, self.path.as_deref());
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// A ready-to-run Pingora server for `config`; `upgrade` takes the listening sockets over from a
/// running carousel (graceful upgrade).
pub fn build(
    config: Arc<Config>,
    path: Option<PathBuf>,
    upgrade: bool,
) -> Result<Server, ResolveError> {
    let conf = server_conf(&config);
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    let proxy = Proxy::new(config.clone())?;
    let forwarder = Arc::new(pingora_proxy::http_proxy(
        &server.configuration,
        Forwarder::new(proxy.clone()),
    ));
    for section in &config.listeners {
        let app = Listener::new(proxy.clone(), section, forwarder.clone());
        let mut service = Service::new(format!("carousel {}", section.address), app);
        // No read buffer: tunnels take the socket over after the handshake, so no client bytes
        // may wait in a Pingora read buffer (and idle tunnels hold no 64 KiB buffer each).
        // Writes stay buffered (replies are flushed before a tunnel starts).
        service.add_listener(
            ListenerConfig::tcp(section.address.to_string())
                .l4_buffer(L4BufferSettings::new(0, DEFAULT_L4_WRITE_BUFFER_SIZE)),
        );
        server.add_service(service);
    }
    reload::mark_success();
    server.add_service(background_service(
        "carousel clusters and reload",
        Background {
            proxy: proxy.clone(),
            path,
        },
    ));
    if config.admin.enabled {
        let mut admin = Service::new("carousel admin".to_string(), Admin::new(proxy.clone()));
        admin.add_tcp(&config.admin.address.to_string());
        server.add_service(admin);
    }
    Ok(server)
}
