//! Directory groups and Basic-by-bind over LDAP (OpenLDAP, Active Directory).
//!
//! Memberships are cached per user for `ttl_seconds`, and a user's groups are fetched by one
//! request at a time (the others wait for that answer instead of asking too), so a burst of a
//! user's connections costs the directory one search. While the directory cannot be reached,
//! cached groups serve for `stale_seconds` past their TTL; after that the user's membership is
//! unknown and a rule that needs a group denies, with a log line and
//! `carousel_directory_lookups_total{result="unavailable"}`. The cache holds at most
//! `max_cached_users` users: an attacker cycling user names cannot grow it.
//!
//! Each lookup opens its own connection (bind as the service account, find the user's entry,
//! search its groups, unbind): with the cache in front, the directory sees one short session per
//! user and TTL, and no pooled connection can go stale behind a firewall.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use tokio::time::Instant;

use crate::config::LdapSection;
use crate::metrics::metrics;

/// A user's groups as the policy sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    /// The groups (by `group_attribute`), fresh or served stale.
    Known(Arc<BTreeSet<String>>),
    /// Not known: the directory could not be asked and nothing cached is recent enough. The
    /// reason goes to the log line of a request this denies.
    Unavailable(Arc<str>),
}

impl Membership {
    /// Whether the user is in any of `groups`; `Err` with the reason when that cannot be known.
    pub fn in_any(&self, groups: &[String]) -> Result<bool, &str> {
        match self {
            Membership::Known(set) => Ok(groups.iter().any(|g| set.contains(g))),
            Membership::Unavailable(why) => Err(why),
        }
    }
}

/// What a Basic bind at the directory found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bind {
    /// The password is the user's.
    Valid,
    /// Unknown user or wrong password.
    Invalid,
    /// The directory could not answer (the reason is logged; the client gets 407).
    Unavailable(String),
}

/// Why a directory configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The bind password file.
    #[error("{file}: {reason}")]
    Password {
        /// The path.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The CA file for ldaps/StartTLS.
    #[error("{0}")]
    Tls(String),
}

/// One user's cached groups.
struct Cached {
    groups: Arc<BTreeSet<String>>,
    fetched: Instant,
}

/// The directory and the memberships it answered.
pub struct Directory {
    settings: LdapSection,
    password: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Per user: the lock one lookup holds while it asks, and what it found.
    cache: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Cached>>>>>,
}

impl std::fmt::Debug for Directory {
    /// The URL and bind DN only: the password stays out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("url", &self.settings.url)
            .field("bind_dn", &self.settings.bind_dn)
            .finish()
    }
}

/// A bind password file larger than this is not a password file.
const MAX_PASSWORD_FILE: u64 = 4096;

impl Directory {
    /// Reads the bind password and the TLS roots `section` names.
    pub fn load(section: &LdapSection) -> Result<Directory, DirectoryError> {
        let file = section.bind_password_file.display().to_string();
        let fail = |reason: String| DirectoryError::Password {
            file: file.clone(),
            reason,
        };
        let meta = std::fs::metadata(&section.bind_password_file)
            .map_err(|e| fail(format!("cannot read: {e}")))?;
        if !meta.is_file() || meta.len() > MAX_PASSWORD_FILE {
            return Err(fail("not a small regular file".into()));
        }
        let text = std::fs::read_to_string(&section.bind_password_file)
            .map_err(|e| fail(format!("cannot read: {e}")))?;
        let password = text.lines().next().unwrap_or("").to_string();
        if password.is_empty() {
            // An empty password makes a simple bind anonymous: never what was meant.
            return Err(fail("the first line (the password) is empty".into()));
        }
        let url = section.url.to_ascii_lowercase();
        let tls = if url.starts_with("ldaps://") || section.start_tls {
            let fail = |e: String| DirectoryError::Tls(format!("access.ldap.ca_file: {e}"));
            let (roots, _) = crate::tls::client_roots(section.ca_file.as_deref()).map_err(fail)?;
            Some(crate::tls::client_config(roots).map_err(fail)?)
        } else {
            None
        };
        Ok(Directory {
            settings: section.clone(),
            password,
            tls,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// `user`'s groups: from the cache while fresh, else asked (one request per user at a
    /// time), else the stale ones within `stale_seconds`, else unavailable.
    pub async fn groups(&self, user: &str) -> Membership {
        let slot = self.slot(user);
        let mut held = slot.lock().await;
        let now = Instant::now();
        if let Some(c) = held.as_ref() {
            if now.duration_since(c.fetched) < self.settings.ttl {
                metrics()
                    .directory_lookups
                    .with_label_values(&["cached"])
                    .inc();
                return Membership::Known(c.groups.clone());
            }
        }
        match self.lookup(user).await {
            Ok(groups) => {
                metrics().directory_lookups.with_label_values(&["ok"]).inc();
                let groups = Arc::new(groups);
                *held = Some(Cached {
                    groups: groups.clone(),
                    fetched: Instant::now(),
                });
                Membership::Known(groups)
            }
            Err(why) => match held.as_ref() {
                Some(c)
                    if now.duration_since(c.fetched) < self.settings.ttl + self.settings.stale =>
                {
                    metrics()
                        .directory_lookups
                        .with_label_values(&["stale"])
                        .inc();
                    tracing::warn!(user, error = %why, age_s = now.duration_since(c.fetched).as_secs(), "directory unreachable: serving the user's cached groups");
                    Membership::Known(c.groups.clone())
                }
                _ => {
                    metrics()
                        .directory_lookups
                        .with_label_values(&["unavailable"])
                        .inc();
                    let why =
                        format!("directory unavailable and no recent groups for {user}: {why}");
                    tracing::error!(user, error = %why, "rules that need a group deny this user");
                    Membership::Unavailable(why.into())
                }
            },
        }
    }

    /// The cache slot of `user`, made room for if need be (expired entries first, then any).
    fn slot(&self, user: &str) -> Arc<tokio::sync::Mutex<Option<Cached>>> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = cache.get(user) {
            return s.clone();
        }
        if cache.len() >= self.settings.max_cached_users {
            let keep = self.settings.ttl + self.settings.stale;
            let now = Instant::now();
            cache.retain(|_, s| match s.try_lock() {
                Ok(c) => c
                    .as_ref()
                    .is_some_and(|c| now.duration_since(c.fetched) < keep),
                Err(_) => true,
            });
            while cache.len() >= self.settings.max_cached_users {
                let Some(k) = cache.keys().next().cloned() else {
                    break;
                };
                cache.remove(&k);
            }
        }
        let s = Arc::new(tokio::sync::Mutex::new(None));
        cache.insert(user.to_string(), s.clone());
        s
    }

    /// Users whose groups are cached now.
    pub fn cached_users(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Checks `user`'s password by binding as the user's entry (Squid's `basic_ldap_auth`).
    pub async fn bind(&self, user: &str, password: &str) -> Bind {
        if password.is_empty() {
            // RFC 4513 §5.1.2: an empty password is an unauthenticated bind that succeeds.
            return Bind::Invalid;
        }
        let attempt = async {
            let mut ldap = self.session().await?;
            let Some(dn) = self.user_dn(&mut ldap, user).await? else {
                let _ = ldap.unbind().await;
                return Ok(Bind::Invalid);
            };
            let verdict = match ldap.simple_bind(&dn, password).await {
                Ok(r) if r.rc == 0 => Bind::Valid,
                // 49: invalidCredentials.
                Ok(r) if r.rc == 49 => Bind::Invalid,
                Ok(r) => Bind::Unavailable(format!("bind as the user: {r}")),
                Err(e) => Bind::Unavailable(e.to_string()),
            };
            let _ = ldap.unbind().await;
            Ok::<_, String>(verdict)
        };
        match tokio::time::timeout(self.settings.timeout * 4, attempt).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => Bind::Unavailable(e),
            Err(_) => Bind::Unavailable("timed out".into()),
        }
    }

    /// A connection bound as the service account.
    async fn session(&self) -> Result<ldap3::Ldap, String> {
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(self.settings.timeout)
            .set_starttls(self.settings.start_tls);
        if let Some(tls) = &self.tls {
            settings = settings.set_config(tls.clone());
        }
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.settings.url)
            .await
            .map_err(|e| format!("connect to {}: {e}", self.settings.url))?;
        ldap3::drive!(conn);
        ldap.with_timeout(self.settings.timeout);
        ldap.simple_bind(&self.settings.bind_dn, &self.password)
            .await
            .and_then(|r| r.success())
            .map_err(|e| format!("bind as {}: {e}", self.settings.bind_dn))?;
        Ok(ldap)
    }

    /// The DN of `user`'s entry, if exactly one matches.
    async fn user_dn(&self, ldap: &mut ldap3::Ldap, user: &str) -> Result<Option<String>, String> {
        let filter = user_filter(&self.settings.user_filter, user);
        ldap.with_timeout(self.settings.timeout);
        let (entries, _) = ldap
            .search(&self.settings.base_dn, Scope::Subtree, &filter, vec!["1.1"])
            .await
            .and_then(|r| r.success())
            .map_err(|e| format!("search {filter}: {e}"))?;
        if entries.len() != 1 {
            return Ok(None);
        }
        let entry = entries.into_iter().next().map(SearchEntry::construct);
        Ok(entry.map(|e| e.dn))
    }

    /// Asks the directory for `user`'s groups (none for an unknown user).
    async fn lookup(&self, user: &str) -> Result<BTreeSet<String>, String> {
        let attempt = async {
            let mut ldap = self.session().await?;
            let Some(dn) = self.user_dn(&mut ldap, user).await? else {
                let _ = ldap.unbind().await;
                return Ok(BTreeSet::new());
            };
            let filter = group_filter(
                &self.settings.group_filter,
                &dn,
                self.settings.nested_groups,
            );
            let attr = self.settings.group_attribute.as_str();
            ldap.with_timeout(self.settings.timeout);
            let (entries, _) = ldap
                .search(&self.settings.base_dn, Scope::Subtree, &filter, vec![attr])
                .await
                .and_then(|r| r.success())
                .map_err(|e| format!("search {filter}: {e}"))?;
            let _ = ldap.unbind().await;
            let mut groups = BTreeSet::new();
            for e in entries {
                let e = SearchEntry::construct(e);
                let found = e
                    .attrs
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(attr))
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                groups.extend(found);
            }
            Ok(groups)
        };
        match tokio::time::timeout(self.settings.timeout * 4, attempt).await {
            Ok(r) => r,
            Err(_) => Err("timed out".into()),
        }
    }

    /// How long a lookup may take at most (connect, bind, two searches).
    pub fn deadline(&self) -> Duration {
        self.settings.timeout * 4
    }
}

/// The user filter with `{user}` and `{name}` (before `@`) filled in, escaped (RFC 4515), so a
/// user name cannot widen the search.
pub fn user_filter(template: &str, user: &str) -> String {
    let name = user.split('@').next().unwrap_or(user);
    template
        .replace("{user}", &ldap3::ldap_escape(user))
        .replace("{name}", &ldap3::ldap_escape(name))
}

/// The group filter for the entry `dn`, escaped; with `nested`, AD's in-chain matching rule.
pub fn group_filter(template: &str, dn: &str, nested: bool) -> String {
    let t = if nested {
        template.replace("(member={dn})", "(member:1.2.840.113556.1.4.1941:={dn})")
    } else {
        template.to_string()
    };
    t.replace("{dn}", &ldap3::ldap_escape(dn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_escape_what_users_type() {
        assert_eq!(user_filter("(uid={name})", "alice@EX.COM"), "(uid=alice)");
        assert_eq!(
            user_filter("(userPrincipalName={user})", "a*)(uid=*"),
            "(userPrincipalName=a\\2a\\29\\28uid=\\2a)"
        );
        let f = group_filter("(&(objectClass=group)(member={dn}))", "cn=a,dc=x", true);
        assert_eq!(
            f,
            "(&(objectClass=group)(member:1.2.840.113556.1.4.1941:=cn=a,dc=x))"
        );
    }

    #[test]
    fn unavailable_membership_is_an_error_not_a_no() {
        let m = Membership::Unavailable("down".into());
        assert_eq!(m.in_any(&["g".into()]), Err("down"));
        let m = Membership::Known(Arc::new(["g".to_string()].into()));
        assert_eq!(m.in_any(&["g".into()]), Ok(true));
        assert_eq!(m.in_any(&["h".into()]), Ok(false));
    }
}
