//! The files a configuration names (the users file, TLS certificates and keys), read once per
//! load: by `carousel check` to validate them, at start-up to run with them, and on SIGHUP to
//! swap them in. Kept apart from `config`, which only parses text, so the configuration knows
//! nothing of bcrypt or rustls; errors still name file, key and line.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::sign::CertifiedKey;

use crate::auth::Users;
use crate::config::{Config, ConfigError};

/// What the files of one configuration hold.
pub struct Resources {
    /// The users of `access.users_file` (none without one).
    pub users: Users,
    /// The certificate and key of each TLS listener, by listener address.
    pub certs: HashMap<SocketAddr, Arc<CertifiedKey>>,
    /// How carousel reaches each cluster of parents (credentials, TLS), by cluster name.
    pub parents: HashMap<String, Arc<crate::parent::Link>>,
    /// Kerberos and the directory.
    pub identity: crate::identity::Sources,
}

impl Resources {
    /// Reads every file `config` names; the error points at the key that names the bad file.
    pub fn load(config: &Config) -> Result<Resources, ConfigError> {
        let mut certs = HashMap::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let Some(t) = &l.tls else { continue };
            for (k, p) in [("cert", &t.cert), ("key", &t.key)] {
                if !p.is_file() {
                    return Err(config.invalid(
                        &format!("listener[{i}].tls.{k}"),
                        format!("{} is not a readable file", p.display()),
                    ));
                }
            }
            let key = crate::tls::load_certified_key(t)
                .map_err(|e| config.invalid(&format!("listener[{i}].tls"), e))?;
            certs.insert(l.address, key);
        }
        let users = match &config.access.users_file {
            Some(path) => {
                Users::load(path).map_err(|e| config.invalid("access.users_file", e.to_string()))?
            }
            None => Users::default(),
        };
        let mut parents = HashMap::new();
        for (i, c) in config.clusters.iter().enumerate() {
            let Some(p) = &c.parent else { continue };
            let mut link = crate::parent::Link::default();
            if let Some(path) = &p.credentials_file {
                link.credentials = Some(crate::parent::Credentials::load(path).map_err(|e| {
                    config.invalid(&format!("cluster[{i}].parent.credentials_file"), e)
                })?);
            }
            if p.protocol == crate::config::ParentProtocol::Https {
                let sni = p.tls_server_name.as_deref().unwrap_or(&c.name);
                let key = if p.ca_file.is_some() {
                    "ca_file"
                } else {
                    "protocol"
                };
                let tls = crate::parent::Tls::load(p.ca_file.as_deref(), sni)
                    .map_err(|e| config.invalid(&format!("cluster[{i}].parent.{key}"), e))?;
                link.tls = Some(Arc::new(tls));
            }
            parents.insert(c.name.clone(), Arc::new(link));
        }
        let mut identity = crate::identity::Sources::default();
        if let Some(k) = &config.access.kerberos {
            let acceptor = crate::identity::Acceptor::load(k).map_err(|e| {
                let key = if k.service_principal.is_empty() {
                    "access.kerberos.keytab"
                } else {
                    "access.kerberos.service_principal"
                };
                config.invalid(key, e.to_string())
            })?;
            identity.kerberos = Some(Arc::new(acceptor));
        }
        if let Some(l) = &config.access.ldap {
            let dir = crate::identity::Directory::load(l).map_err(|e| {
                let key = match e {
                    crate::identity::directory::DirectoryError::Password { .. } => {
                        "access.ldap.bind_password_file"
                    }
                    crate::identity::directory::DirectoryError::Tls(_) => "access.ldap.ca_file",
                };
                config.invalid(key, e.to_string())
            })?;
            identity.directory = Some(Arc::new(dir));
        }
        Ok(Resources {
            users,
            certs,
            parents,
            identity,
        })
    }

    /// Parses `text` and reads the files it names: everything `carousel check` verifies.
    pub fn check(text: &str, file: &str) -> Result<(Config, Resources), ConfigError> {
        let config = Config::parse(text, file)?;
        let resources = Resources::load(&config)?;
        Ok((config, resources))
    }
}
