//! Hot reload on SIGHUP: read the file again, validate, and swap it in. Rules, users, limits, TLS
//! certificates, the access log and clusters change without a restart; members that stay keep
//! their health; tunnels in flight are untouched. An invalid file keeps the running configuration,
//! logs file, key and line, and counts the failure. Changes that need new sockets are logged as
//! needing a restart.

use std::path::Path;
use std::sync::Arc;

use crate::access_log::AccessLog;
use crate::cluster::{discovery, health, Cluster, ClusterTable};
use crate::config::Config;
use crate::metrics::metrics;
use crate::resources::Resources;
use crate::session::{Proxy, Runtime};

/// The last (re)load: Unix time and "ok" or the error.
static LAST: std::sync::Mutex<(u64, String)> = std::sync::Mutex::new((0, String::new()));

/// The configuration file in use (`None`: the embedded default).
static PATH: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn record(result: String) {
    if let Ok(mut l) = LAST.lock() {
        *l = (unix_now(), result);
    }
}

/// Marks the configuration as (re)loaded successfully now.
pub fn mark_success() {
    metrics().last_reload_success.set(unix_now() as i64);
    record("ok".into());
}

/// Records which file the configuration comes from (for the status page).
pub fn set_path(path: Option<&Path>) {
    let _ = PATH.set(path.map(Path::to_path_buf));
}

/// The configuration file in use, `<embedded>` for the built-in default.
pub fn config_path() -> String {
    match PATH.get() {
        Some(Some(p)) => p.display().to_string(),
        _ => "<embedded>".into(),
    }
}

/// The last (re)load: Unix time and "ok" or its error.
pub fn last() -> (u64, String) {
    LAST.lock().map(|l| l.clone()).unwrap_or_default()
}

/// Reloads from `path` (`None`: the embedded default). Returns a one-line error on failure.
pub fn reload(proxy: &Arc<Proxy>, path: Option<&Path>) -> Result<(), String> {
    let result = match path {
        Some(p) => Config::load(p),
        None => Config::parse(crate::config::DEFAULT_TOML, "<embedded>"),
    };
    let new = match result {
        Ok(c) => c,
        Err(e) => return Err(fail(e.to_string())),
    };
    let old = proxy.config();
    let restart_needed = |what: &str| {
        tracing::warn!(
            "reload: {what} changed; this needs a restart (or a graceful upgrade) to take effect"
        )
    };
    if listeners_signature(&old) != listeners_signature(&new) {
        restart_needed("[[listener]] addresses, protocols or TLS");
    }
    if format!("{:?}", old.dns) != format!("{:?}", new.dns) {
        restart_needed("[dns]");
    }
    if format!("{:?}", old.server) != format!("{:?}", new.server) {
        restart_needed("[server]");
    }
    if format!("{:?}", old.admin) != format!("{:?}", new.admin) {
        restart_needed("[admin]");
    }
    if format!("{:?}", old.responder) != format!("{:?}", new.responder) {
        restart_needed("[responder]");
    }
    // Files first, so a bad users file, certificate or log path fails the reload before
    // anything is swapped.
    let resources = Resources::load(&new).map_err(|e| fail(e.to_string()))?;
    let log = if format!("{:?}", old.log) != format!("{:?}", new.log) {
        Some(
            AccessLog::new(&new.log)
                .map_err(|e| fail(format!("access log {}: {e}", new.log.access)))?,
        )
    } else {
        None
    };
    for (addr, acceptor) in &proxy.tls {
        if let Some(key) = resources.certs.get(addr) {
            acceptor.install(key.clone());
        }
    }
    proxy.auth.replace(resources.users);
    proxy.parents.store(Arc::new(resources.parents));
    proxy.auth.set_directory(
        (new.access.basic == crate::config::BasicSource::Ldap)
            .then(|| resources.identity.directory.clone())
            .flatten(),
    );
    proxy.identity.store(Arc::new(resources.identity));
    proxy
        .auth
        .set_failures_per_minute(new.access.max_auth_failures_per_minute);
    if let Some(log) = log {
        proxy.access_log.store(Arc::new(log));
    }
    reconcile_clusters(proxy, &new);
    let summary = new.summary();
    proxy.set_runtime(Runtime::new(Arc::new(new)));
    metrics().reloads.with_label_values(&["ok"]).inc();
    mark_success();
    tracing::info!("reloaded: {summary}");
    Ok(())
}

/// Logs a failed reload, then counts it (so the line exists once the counter says so).
fn fail(msg: String) -> String {
    tracing::error!(error = %msg, "reload failed; keeping the running configuration");
    record(format!("error: {msg}"));
    metrics().reloads.with_label_values(&["error"]).inc();
    msg
}

fn listeners_signature(c: &Config) -> String {
    format!("{:?}", c.listeners)
}

/// Keeps clusters whose settings did not change, replaces changed ones (adopting their members
/// and health), starts new ones and retires removed ones.
fn reconcile_clusters(proxy: &Arc<Proxy>, new: &Config) {
    let current = proxy.clusters.load_full();
    let mut next = Vec::new();
    for section in &new.clusters {
        let name = &section.name;
        match current.get(name) {
            Some(old) if format!("{:?}", old.cfg) == format!("{:?}", section) => {
                next.push(old.clone())
            }
            Some(old) => {
                let cluster = Cluster::new(section.clone());
                let members = cluster.adopt(old);
                old.retire_keeping_members();
                for m in members {
                    health::spawn(cluster.clone(), m);
                }
                start_discovery(proxy, &cluster, new);
                tracing::info!(cluster = %name, "cluster settings changed; members and health kept");
                next.push(cluster);
            }
            None => {
                let cluster = Cluster::new(section.clone());
                start_discovery(proxy, &cluster, new);
                tracing::info!(cluster = %name, "cluster added");
                next.push(cluster);
            }
        }
    }
    for old in current.iter() {
        if !next.iter().any(|c| Arc::ptr_eq(c, old)) && !next.iter().any(|c| c.name == old.name) {
            tracing::info!(cluster = %old.name, "cluster removed");
            old.retire();
        }
    }
    proxy.clusters.store(Arc::new(ClusterTable::new(next)));
}

fn start_discovery(proxy: &Arc<Proxy>, cluster: &Arc<Cluster>, config: &Config) {
    tokio::spawn(discovery::run(
        cluster.clone(),
        proxy.resolver.clone(),
        config.dns.clone(),
    ));
}
