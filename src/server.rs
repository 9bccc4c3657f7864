//! Builds the Pingora `Server` from carousel's configuration: one listening service per
//! configured port, all sharing one proxy state and one HTTP forwarder; a background service for
//! cluster discovery and health checks; the admin listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::{L4BufferSettings, ListenerConfig, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::admin::Admin;
use crate::cluster::discovery;
use crate::config::Config;
use crate::forward::Forwarder;
use crate::listener::Listener;
use crate::reload;
use crate::session::Proxy;

/// Why carousel could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A listening address is taken (another carousel, or another program).
    #[error("{what} {address}: address already in use (is another carousel running?)")]
    AddressInUse {
        /// Which listener.
        what: &'static str,
        /// Its address.
        address: SocketAddr,
    },
    /// A listening address cannot be bound for another reason.
    #[error("{what} {address}: cannot listen: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Its address.
        address: SocketAddr,
        /// What the system said.
        source: std::io::Error,
    },
    /// A file the configuration names is unusable (users file, certificate).
    #[error("{0}")]
    Files(#[from] crate::config::ConfigError),
    /// The shared state could not be built (resolver, TLS, access log).
    #[error("{0}")]
    Setup(#[from] crate::session::SetupError),
}

/// Pingora's own settings, all taken from carousel's config so none of Pingora's defaults (such as
/// its 300 s grace period) leak through. Pingora's grace period is carousel's shutdown timeout
/// and one second: carousel keeps accepting through its own grace period before it tells Pingora
/// to stop (see `Drain`), then ends what is still in flight itself at its shutdown timeout, with
/// an access-log line each (outcome `shutdown`), and Pingora's runtime shutdown, a second later,
/// finds nothing left to drop.
pub fn server_conf(config: &Config) -> ServerConf {
    let s = &config.server;
    ServerConf {
        threads: s.threads,
        work_stealing: s.work_stealing,
        grace_period_seconds: Some(s.graceful_shutdown_timeout.as_secs() + 1),
        graceful_shutdown_timeout_seconds: Some(1),
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
        tokio::spawn(crate::admin::sampler::run(self.proxy.clone()));
        tokio::spawn(give_memory_back(self.proxy.clone()));
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

/// The shutdown signals as carousel means them. SIGTERM: `/readyz` answers 503 at once (a
/// balancer stops sending new clients), the listeners keep accepting for
/// `server.grace_period_seconds` (clients that still arrive are served), then stop; Pingora then
/// gives work in flight, long-lived tunnels among it, `graceful_shutdown_timeout_seconds` more.
/// SIGQUIT hands the sockets to a new process (`run -u`) at once; SIGINT stops at once.
struct Drain {
    proxy: Arc<Proxy>,
    grace: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Drain {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut quit), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::quit()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot watch shutdown signals; waiting for SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {
                self.proxy.set_draining();
                tracing::info!(grace = ?self.grace, "SIGTERM: draining (/readyz 503), still accepting for the grace period");
                tokio::select! {
                    _ = tokio::time::sleep(self.grace) => {}
                    _ = int.recv() => return ShutdownSignal::FastShutdown,
                }
                if self.proxy.limits.open() == 0 {
                    // Nothing in flight: no reason to wait out the shutdown timeout.
                    tracing::info!("grace period over, nothing in flight: stopping");
                    return ShutdownSignal::FastShutdown;
                }
                tracing::info!("grace period over: listeners stop, work in flight gets the shutdown timeout");
                ShutdownSignal::GracefulTerminate
            }
            _ = quit.recv() => {
                self.proxy.set_draining();
                ShutdownSignal::GracefulUpgrade
            }
            _ = int.recv() => ShutdownSignal::FastShutdown,
        }
    }
}

/// The DNS responder (`[responder]`), on sockets bound at start-up, served until shutdown.
struct DnsResponder {
    proxy: Arc<Proxy>,
    sockets: std::sync::Mutex<Vec<(std::net::UdpSocket, std::net::TcpListener)>>,
}

#[async_trait]
impl BackgroundService for DnsResponder {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use crate::dns::responder::{Responder, Settings};
        use crate::dns::serve::{serve, TcpLimits};
        let config = self.proxy.config();
        let r = &config.responder;
        let allow_clients = r
            .allow_clients
            .clone()
            .unwrap_or_else(|| config.access.allow_clients.clone());
        let settings = Settings {
            ttl: r.ttl_seconds,
            max_answers: r.max_answers,
            allow_clients: allow_clients.clone(),
            rate: r.rate_limit_per_second,
        };
        let limits = TcpLimits {
            per_client: r.max_tcp_connections_per_client,
            idle: r.tcp_idle_timeout,
            allow_clients,
        };
        let sockets = std::mem::take(&mut *self.sockets.lock().unwrap_or_else(|e| e.into_inner()));
        let zone: Arc<dyn crate::dns::responder::Zone> = self.proxy.clusters.clone();
        let responder = Arc::new(Responder::new(zone, settings));
        let share = crate::descriptors::budget().responder.clone();
        let _loops = match serve(responder, sockets, limits, share) {
            Ok(loops) => loops,
            Err(e) => {
                tracing::error!(error = %e, "DNS responder could not start");
                return;
            }
        };
        tracing::info!(listen = ?r.listen, "DNS responder answering for the clusters");
        let _ = shutdown.changed().await;
    }
}

/// A carousel ready to run: the Pingora server and the state its shutdown watch drains.
pub struct Carousel {
    server: Server,
    proxy: Arc<Proxy>,
    grace: Duration,
}

impl Carousel {
    /// Runs until a shutdown signal has been fully handled (see `Drain`), then writes out the
    /// access lines still queued.
    pub fn run(self) {
        let proxy = self.proxy.clone();
        let shutdown_signal = Box::new(Drain {
            proxy: self.proxy,
            grace: self.grace,
        });
        self.server.run(RunArgs { shutdown_signal });
        proxy.access_log.load().flush(Duration::from_secs(2));
    }
}

/// Refuses to start when a listening address is taken: Pingora would retry for half a minute,
/// then leave the process running without that listener, which a supervisor takes for healthy.
fn check_addresses_free(config: &Config) -> Result<(), StartupError> {
    let mut all: Vec<(&'static str, SocketAddr)> = config
        .listeners
        .iter()
        .map(|l| ("listener", l.address))
        .collect();
    if config.admin.enabled {
        all.push(("admin listener", config.admin.address));
    }
    for (what, address) in all {
        if let Err(source) = std::net::TcpListener::bind(address) {
            return Err(if source.kind() == std::io::ErrorKind::AddrInUse {
                StartupError::AddressInUse { what, address }
            } else {
                StartupError::Bind {
                    what,
                    address,
                    source,
                }
            });
        }
    }
    Ok(())
}

/// After a burst of connections closes, glibc keeps the freed memory in its free lists (4,000
/// idle connections: RSS 29 → 106 → 75 MiB after they closed, 30 MiB after `malloc_trim`, so
/// nothing is held by carousel itself). Every 10 s, when the open connections fell below half of
/// their peak since the last trim, the memory goes back to the system.
async fn give_memory_back(proxy: Arc<Proxy>) {
    let mut peak = 0usize;
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        let open = proxy.limits.open();
        peak = peak.max(open);
        if peak >= 256 && open < peak / 2 {
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            // SAFETY: malloc_trim only releases free memory of the allocator; it takes no pointers.
            unsafe {
                libc::malloc_trim(0);
            }
            peak = open;
        }
    }
}

/// A ready-to-run carousel for `config`; `upgrade` takes the listening sockets over from a
/// running carousel (graceful upgrade).
pub fn build(
    config: Arc<Config>,
    path: Option<PathBuf>,
    upgrade: bool,
) -> Result<Carousel, StartupError> {
    if !upgrade {
        check_addresses_free(&config)?;
    }
    let sizes =
        crate::descriptors::Sizes::plan(crate::descriptors::raise_open_file_limit(), &config);
    crate::descriptors::install(&sizes);
    tracing::info!(
        open_file_limit = sizes.limit,
        client_connections = sizes
            .client_connections()
            .min(config.limits.max_connections),
        dial = sizes.dial,
        checks = sizes.checks,
        responder = sizes.responder,
        refusals = sizes.refusals,
        reserved = sizes.reserved,
        "descriptor budget"
    );
    for w in sizes.warnings(&config) {
        tracing::info!("{w}");
    }
    let conf = server_conf(&config);
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    let resources = crate::resources::Resources::load(&config)?;
    let proxy = Proxy::new(config.clone(), resources)?;
    let forwarder = Arc::new(pingora::proxy::http_proxy(
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
    reload::set_path(path.as_deref());
    reload::mark_success();
    server.add_service(background_service(
        "carousel clusters and reload",
        Background {
            proxy: proxy.clone(),
            path,
        },
    ));
    if !config.responder.listen.is_empty() {
        let mut sockets = Vec::new();
        for &address in &config.responder.listen {
            let bound = crate::dns::serve::bind(address).map_err(|source| {
                if source.kind() == std::io::ErrorKind::AddrInUse {
                    StartupError::AddressInUse {
                        what: "DNS responder",
                        address,
                    }
                } else {
                    StartupError::Bind {
                        what: "DNS responder",
                        address,
                        source,
                    }
                }
            })?;
            sockets.push(bound);
        }
        server.add_service(background_service(
            "carousel DNS responder",
            DnsResponder {
                proxy: proxy.clone(),
                sockets: std::sync::Mutex::new(sockets),
            },
        ));
    }
    if config.admin.enabled {
        let mut admin = Service::new("carousel admin".to_string(), Admin::new(proxy.clone()));
        admin.add_tcp(&config.admin.address.to_string());
        server.add_service(admin);
    }
    Ok(Carousel {
        server,
        proxy,
        grace: config.server.grace_period,
    })
}
