//! Proxy authentication: users from an htpasswd file with bcrypt hashes (what Squid's
//! basic_ncsa_auth users already have), verified off the async runtime, cached briefly so bcrypt's
//! deliberate slowness is paid once per user and minute, and failed attempts slowed per client.
//! Passwords are never logged, stored in clear or echoed.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine;
use dashmap::DashMap;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::metrics::metrics;

/// Why a users file was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The path.
        file: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The path is not a regular file of acceptable size.
    #[error("{file}: {reason}")]
    Unusable {
        /// The path.
        file: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A line is not `user:bcrypt-hash`.
    #[error("{file}:{line}: user `{user}`: {reason}")]
    Line {
        /// The path.
        file: String,
        /// 1-based line number.
        line: usize,
        /// The user on that line (never the hash).
        user: String,
        /// What is wrong.
        reason: String,
    },
}

/// Largest users file accepted (a million users is about 70 MB; this is for sanity, not scale).
const MAX_USERS_FILE: u64 = 64 * 1024 * 1024;

/// The users of an htpasswd file.
#[derive(Default)]
pub struct Users {
    hashes: HashMap<String, String>,
}

impl std::fmt::Debug for Users {
    /// User names only: hashes stay out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users")
            .field("names", &self.hashes.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Users {
    /// Loads `path`; every entry must be a bcrypt hash (`$2a$`, `$2b$`, `$2y$`).
    pub fn load(path: &Path) -> Result<Users, AuthError> {
        let file = path.display().to_string();
        // Only a regular file of sane size: a FIFO or a device would block or never end.
        let meta = std::fs::metadata(path).map_err(|source| AuthError::Read {
            file: file.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(AuthError::Unusable {
                file,
                reason: "not a regular file".into(),
            });
        }
        if meta.len() > MAX_USERS_FILE {
            return Err(AuthError::Unusable {
                file,
                reason: format!("larger than {MAX_USERS_FILE} bytes"),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse(&text, &file)
    }

    /// Parses htpasswd text; `file` labels errors.
    pub fn parse(text: &str, file: &str) -> Result<Users, AuthError> {
        let mut hashes = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |user: &str, reason: &str| AuthError::Line {
                file: file.to_string(),
                line: i + 1,
                user: user.to_string(),
                reason: reason.to_string(),
            };
            let Some((user, hash)) = line.split_once(':') else {
                return Err(err("?", "expected `user:hash`"));
            };
            let kind = if hash.starts_with("$apr1$") || hash.starts_with("$1$") {
                Some("MD5")
            } else if hash.starts_with("{SHA}") {
                Some("SHA-1")
            } else if hash.starts_with("$5$") || hash.starts_with("$6$") {
                Some("SHA-crypt")
            } else if !hash.starts_with('$') {
                Some("crypt or plain text")
            } else {
                None
            };
            if let Some(kind) = kind {
                return Err(err(
                    user,
                    &format!(
                        "{kind} hashes are not accepted; only bcrypt (create with `htpasswd -B`)"
                    ),
                ));
            }
            let bcrypt_prefix = ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p));
            if !bcrypt_prefix || hash.len() != 60 {
                return Err(err(
                    user,
                    "not a bcrypt hash ($2a$/$2b$/$2y$, 60 characters); create with `htpasswd -B`",
                ));
            }
            if user.is_empty() {
                return Err(err(user, "empty user name"));
            }
            hashes.insert(user.to_string(), hash.to_string());
        }
        Ok(Users { hashes })
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }
}

/// Verifies credentials for every protocol.
pub struct Authenticator {
    users: ArcSwap<Users>,
    cache: DashMap<String, (u64, Instant)>,
    cache_for: Duration,
    key: RandomState,
    failures: DashMap<IpAddr, (u32, Instant)>,
    bcrypt_slots: Semaphore,
}

impl Authenticator {
    /// An authenticator over `users`, remembering good credentials for `cache_for`.
    pub fn new(users: Users, cache_for: Duration) -> Self {
        Self {
            users: ArcSwap::from_pointee(users),
            cache: DashMap::new(),
            cache_for,
            key: RandomState::new(),
            failures: DashMap::new(),
            bcrypt_slots: Semaphore::new(4),
        }
    }

    /// Replaces the users (SIGHUP); cached verifications are dropped.
    pub fn replace(&self, users: Users) {
        self.users.store(Arc::new(users));
        self.cache.clear();
    }

    /// Whether any users are configured; without them, credentials a client sends are ignored.
    pub fn enabled(&self) -> bool {
        !self.users.load().is_empty()
    }

    fn fingerprint(&self, user: &str, pass: &str) -> u64 {
        self.key.hash_one((user, pass))
    }

    /// Whether `user`/`pass` is valid. bcrypt runs on the blocking pool, a few at a time.
    pub async fn verify(&self, user: &str, pass: &str) -> bool {
        let fp = self.fingerprint(user, pass);
        if let Some(hit) = self.cache.get(user) {
            if hit.0 == fp && Instant::now() < hit.1 {
                return true;
            }
        }
        let Some(hash) = self.users.load().hashes.get(user).cloned() else {
            return false;
        };
        let Ok(_slot) = self.bcrypt_slots.acquire().await else {
            return false;
        };
        let pass = pass.to_string();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(pass, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        if ok {
            self.cache
                .insert(user.to_string(), (fp, Instant::now() + self.cache_for));
        }
        ok
    }

    /// Counts a failed attempt from `client` and waits a little longer each time, so guessing
    /// passwords is slow; the count fades after a minute without failures.
    pub async fn failed(&self, client: Option<IpAddr>) {
        metrics().auth_failures.inc();
        let Some(ip) = client else { return };
        let now = Instant::now();
        let n = {
            let mut e = self.failures.entry(ip).or_insert((0, now));
            if now.duration_since(e.1) > Duration::from_secs(60) {
                e.0 = 0;
            }
            e.0 = e.0.saturating_add(1);
            e.1 = now;
            e.0
        };
        if self.failures.len() > 100_000 {
            self.failures
                .retain(|_, v| now.duration_since(v.1) < Duration::from_secs(60));
        }
        let delay = Duration::from_millis(200 * u64::from(n.min(10)));
        tokio::time::sleep(delay).await;
    }
}

/// Decodes `Basic base64(user:pass)`; `None` if it is not that.
pub fn parse_basic(value: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (u, p) = raw.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bcrypt_is_accepted() {
        let h = bcrypt::hash("pw", 4).unwrap();
        let users = Users::parse(&format!("# comment\nalice:{h}\n"), "f").unwrap();
        assert_eq!(users.len(), 1);
        for (line, kind) in [
            ("bob:$apr1$abc$def", "MD5"),
            ("bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "SHA-1"),
            ("bob:plaintext", "crypt or plain text"),
        ] {
            let e = Users::parse(line, "f").unwrap_err().to_string();
            assert!(
                e.starts_with("f:1: user `bob`: ") && e.contains(kind),
                "{e}"
            );
            assert!(
                !e.contains("W6ph5") && !e.contains("def"),
                "the hash leaked: {e}"
            );
        }
    }

    #[tokio::test]
    async fn verify_and_cache() {
        let h = bcrypt::hash("s3cret", 4).unwrap();
        let a = Authenticator::new(
            Users::parse(&format!("alice:{h}"), "f").unwrap(),
            Duration::from_secs(60),
        );
        assert!(a.verify("alice", "s3cret").await);
        assert!(a.verify("alice", "s3cret").await, "cached");
        assert!(!a.verify("alice", "wrong").await);
        assert!(!a.verify("mallory", "s3cret").await);
    }

    #[test]
    fn basic_header() {
        assert_eq!(
            parse_basic(b"Basic YWxpY2U6czNjcmV0"),
            Some(("alice".into(), "s3cret".into()))
        );
        assert_eq!(parse_basic(b"Bearer x"), None);
        assert_eq!(parse_basic(b"Basic !!!"), None);
    }
}
