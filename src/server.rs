//! Builds the Pingora `Server` from carousel's configuration: one listening service per
//! configured port, all sharing one proxy state and one HTTP forwarder.

use std::sync::Arc;

use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::listening::Service;

use crate::config::Config;
use crate::forward::Forwarder;
use crate::listener::Listener;
use crate::resolve::ResolveError;
use crate::session::Proxy;

/// Pingora's own settings, all taken from carousel's config so none of Pingora's defaults (such as
/// its 300 s grace period) leak through.
pub fn server_conf(config: &Config) -> ServerConf {
    let s = &config.server;
    ServerConf {
        threads: s.threads,
        grace_period_seconds: Some(s.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout_seconds),
        pid_file: s.pid_file.clone(),
        upgrade_sock: s.upgrade_sock.clone(),
        ..ServerConf::default()
    }
}

/// A ready-to-run Pingora server for `config`; `upgrade` takes the listening sockets over from a
/// running carousel (graceful upgrade).
pub fn build(config: Arc<Config>, upgrade: bool) -> Result<Server, ResolveError> {
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
        service.add_tcp(&section.address.to_string());
        server.add_service(service);
    }
    Ok(server)
}
