//! Proxy authentication: users from an htpasswd file with bcrypt hashes (what Squid's
//! basic_ncsa_auth users already have), verified off the async runtime, cached briefly so bcrypt's
//! deliberate slowness is paid once per user and minute.
//!
//! Guessing is bounded across all of a client's connections by two budgets of failed attempts
//! (token buckets): one per client address and user name, and a larger one per address. Once
//! either is spent the attempt is refused at once, without a bcrypt comparison, so one guesser
//! neither gets more tries by opening connections in parallel nor takes the bcrypt workers from
//! everyone else; and a guesser of one user name behind an office NAT does not lock out the
//! colleagues behind the same address (only a guesser spraying many names spends the address's
//! budget). Every check costs at least one comparison at the file's highest bcrypt cost, known
//! user or not, so timing tells no user names even when the file mixes costs. Passwords are
//! never logged, stored in clear or echoed.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use tokio::sync::Semaphore;

use crate::recent::Recent;
use tokio::time::Instant;

use crate::bucket::TokenBucket;
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
    /// A bcrypt hash of a random password at the users' highest cost, made on first need: an
    /// unknown user is checked against it so that it costs what a known one does.
    dummy: std::sync::OnceLock<String>,
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
        Ok(Users {
            hashes,
            dummy: std::sync::OnceLock::new(),
        })
    }

    /// The highest bcrypt cost in the file.
    pub fn highest_cost(&self) -> u32 {
        self.hashes
            .values()
            .filter_map(|h| cost_of(h))
            .max()
            .unwrap_or(bcrypt::DEFAULT_COST)
    }

    /// The bcrypt costs the file uses, when there is more than one (a user with a cheaper hash
    /// costs an extra comparison per check, which `carousel check` suggests avoiding).
    pub fn mixed_costs(&self) -> Option<(u32, u32)> {
        let costs = self.hashes.values().filter_map(|h| cost_of(h));
        let (lo, hi) = costs.fold((u32::MAX, 0), |(lo, hi), c| (lo.min(c), hi.max(c)));
        (lo < hi).then_some((lo, hi))
    }

    /// The hash unknown users, and users with a cheaper hash, are also compared against: a
    /// random password at the file's highest cost, made on first need.
    fn dummy_hash(&self) -> &str {
        self.dummy.get_or_init(|| {
            let secret = format!("{:x}{:x}", fastrand::u64(..), fastrand::u64(..));
            bcrypt::hash(secret, self.highest_cost().clamp(4, 31)).unwrap_or_default()
        })
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

/// A bcrypt hash's cost (`$2b$10$...` is 10).
fn cost_of(hash: &str) -> Option<u32> {
    hash.get(4..6)?.parse().ok()
}

/// What a credential check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The user and password are valid.
    Valid,
    /// They are not (unknown user or wrong password): one failed attempt spent.
    Invalid,
    /// The client spent its budget of failed attempts (for this user name, or for its address
    /// in all): refused at once, nothing was verified.
    Throttled,
    /// The directory that checks passwords (`basic = "ldap"`) could not answer; no attempt was
    /// spent (the client did nothing wrong).
    Unavailable,
}

/// How many failed attempts an address may make over all user names, as a multiple of the
/// per-user budget: enough for a whole office behind one NAT mistyping, not for spraying.
pub const ADDRESS_BUDGET_FACTOR: u32 = 10;

/// Verifies credentials for every protocol.
pub struct Authenticator {
    users: ArcSwap<Users>,
    cache: DashMap<String, (u64, Instant)>,
    cache_for: Duration,
    key: RandomState,
    /// Failed-attempt budgets by client address and user name (hashed), shared by all of a
    /// client's connections.
    user_budgets: Recent<(IpAddr, u64), TokenBucket>,
    /// Failed-attempt budgets by client address, over all user names.
    address_budgets: Recent<IpAddr, TokenBucket>,
    failures_per_minute: std::sync::atomic::AtomicU32,
    bcrypt_slots: Semaphore,
    bcrypt_runs: std::sync::atomic::AtomicU64,
    /// With `basic = "ldap"`: passwords are checked by a bind there instead of the file.
    directory: arc_swap::ArcSwapOption<crate::identity::Directory>,
}

/// The budget key of credentials without a user name (Kerberos tokens): they share one
/// per-address budget, and the address's budget over all.
const TOKEN_KEY: u64 = 0x6b72_6235_746f_6b6e;

/// Budgets remembered (client-chosen state stays bounded; see [`Recent`]).
const MAX_BUDGETS: usize = 65_536;

impl Authenticator {
    /// An authenticator over `users`, remembering good credentials for `cache_for`, allowing each
    /// client `failures_per_minute` failed attempts a minute (as a burst, refilled evenly).
    pub fn new(users: Users, cache_for: Duration, failures_per_minute: u32) -> Self {
        Self {
            users: ArcSwap::from_pointee(users),
            cache: DashMap::new(),
            cache_for,
            key: RandomState::new(),
            user_budgets: Recent::new(MAX_BUDGETS),
            address_budgets: Recent::new(MAX_BUDGETS),
            failures_per_minute: failures_per_minute.max(1).into(),
            bcrypt_slots: Semaphore::new(4),
            bcrypt_runs: 0.into(),
            directory: arc_swap::ArcSwapOption::empty(),
        }
    }

    /// Checks Basic passwords by binding at `dir` (`basic = "ldap"`), or at the users file
    /// again with `None`; cached verifications are dropped.
    pub fn set_directory(&self, dir: Option<Arc<crate::identity::Directory>>) {
        self.directory.store(dir);
        self.cache.clear();
    }

    /// Takes one attempt from `client`'s failure budgets for a credential without a user name
    /// (a Kerberos token); `false` when the budget is spent.
    pub fn take_token_attempt(&self, client: Option<IpAddr>) -> bool {
        let ok = self.take_attempt(client, TOKEN_KEY);
        if !ok {
            metrics().auth_throttled.inc();
        }
        ok
    }

    /// Gives back the attempt a token that proved valid took.
    pub fn token_valid(&self, client: Option<IpAddr>) {
        self.give_back(client, TOKEN_KEY);
    }

    /// Replaces the users (SIGHUP); cached verifications are dropped.
    pub fn replace(&self, users: Users) {
        self.users.store(Arc::new(users));
        self.cache.clear();
    }

    /// Applies a reloaded failure budget; budgets already spent stay spent.
    pub fn set_failures_per_minute(&self, n: u32) {
        self.failures_per_minute
            .store(n.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether Basic credentials can be checked (users in the file, or a directory); without,
    /// Basic credentials a client sends are ignored.
    pub fn enabled(&self) -> bool {
        !self.users.load().is_empty() || self.directory.load().is_some()
    }

    /// bcrypt comparisons run so far: every uncached check costs exactly one, known user or not,
    /// so timing does not tell which user names exist.
    pub fn bcrypt_runs(&self) -> u64 {
        self.bcrypt_runs.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn fingerprint(&self, user: &str, pass: &str) -> u64 {
        self.key.hash_one((user, pass))
    }

    /// Checks `user`/`pass` for `client`. The client must have a failed attempt left in its
    /// budgets for this user name and for its address (one is taken from each now and given back
    /// if the pair is valid). A remembered good pair then answers at once; otherwise bcrypt runs
    /// on the blocking pool, a few at a time: against the user's hash, and against a dummy hash
    /// at the file's highest cost for an unknown user or a user whose hash is cheaper.
    pub async fn check(&self, client: Option<IpAddr>, user: &str, pass: &str) -> Check {
        // The budgets come first: a client that spent one may not even test guesses against the
        // cache of good pairs.
        let user_key = self.key.hash_one(user);
        if !self.take_attempt(client, user_key) {
            metrics().auth_throttled.inc();
            return Check::Throttled;
        }
        let fp = self.fingerprint(user, pass);
        if let Some(hit) = self.cache.get(user) {
            if hit.0 == fp && Instant::now() < hit.1 {
                drop(hit);
                self.give_back(client, user_key);
                return Check::Valid;
            }
        }
        if let Some(dir) = self.directory.load_full() {
            return match dir.bind(user, pass).await {
                crate::identity::Bind::Valid => {
                    self.give_back(client, user_key);
                    self.cache
                        .insert(user.to_string(), (fp, Instant::now() + self.cache_for));
                    Check::Valid
                }
                crate::identity::Bind::Invalid => {
                    metrics().auth_failures.inc();
                    Check::Invalid
                }
                crate::identity::Bind::Unavailable(why) => {
                    tracing::warn!(user, error = %why, "the directory cannot check a Basic password");
                    self.give_back(client, user_key);
                    Check::Unavailable
                }
            };
        }
        let users = self.users.load_full();
        let known = users.hashes.get(user).cloned();
        let ok = match self.bcrypt_slots.acquire().await {
            Ok(_slot) => {
                self.bcrypt_runs
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let highest = users.highest_cost();
                let own = known.clone().filter(|h| cost_of(h) >= Some(highest));
                // An unknown user, or one whose hash is cheaper than the file's dearest, also
                // pays a comparison at the highest cost: every check then takes at least that.
                let pad = own.is_none().then(|| users.dummy_hash().to_string());
                let pass = pass.to_string();
                let check_known = known.clone();
                let same = tokio::task::spawn_blocking(move || {
                    let same = check_known
                        .as_deref()
                        .is_some_and(|h| bcrypt::verify(&pass, h).unwrap_or(false));
                    if let Some(pad) = pad {
                        let _ = bcrypt::verify(&pass, &pad);
                    }
                    same
                })
                .await
                .unwrap_or(false);
                same && known.is_some()
            }
            Err(_) => false,
        };
        if ok {
            self.give_back(client, user_key);
            self.cache
                .insert(user.to_string(), (fp, Instant::now() + self.cache_for));
            Check::Valid
        } else {
            metrics().auth_failures.inc();
            Check::Invalid
        }
    }

    fn per_minute(&self) -> f64 {
        f64::from(
            self.failures_per_minute
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Takes one attempt from `client`'s budget for `user` and from its address's; false (and
    /// neither spent) when one of them is spent.
    fn take_attempt(&self, client: Option<IpAddr>, user: u64) -> bool {
        let Some(ip) = client else { return true };
        let per_user = self.per_minute();
        let per_address = per_user * f64::from(ADDRESS_BUDGET_FACTOR);
        let take = |b: &mut TokenBucket, cap: f64| b.take(cap / 60.0, cap);
        if !self.user_budgets.with(
            &(ip, user),
            || TokenBucket::full(per_user),
            |b| take(b, per_user),
        ) {
            return false;
        }
        if !self.address_budgets.with(
            &ip,
            || TokenBucket::full(per_address),
            |b| take(b, per_address),
        ) {
            self.user_budgets
                .with_existing(&(ip, user), |b| b.give_back(per_user));
            return false;
        }
        true
    }

    /// Returns the attempts a valid login took: only failures spend the budgets.
    fn give_back(&self, client: Option<IpAddr>, user: u64) {
        let Some(ip) = client else { return };
        let per_user = self.per_minute();
        self.user_budgets
            .with_existing(&(ip, user), |b| b.give_back(per_user));
        self.address_budgets.with_existing(&ip, |b| {
            b.give_back(per_user * f64::from(ADDRESS_BUDGET_FACTOR))
        });
    }
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

    fn alice(per_minute: u32) -> Authenticator {
        let h = bcrypt::hash("s3cret", 4).unwrap();
        Authenticator::new(
            Users::parse(&format!("alice:{h}"), "f").unwrap(),
            Duration::from_secs(60),
            per_minute,
        )
    }

    #[tokio::test]
    async fn check_and_cache() {
        let a = alice(10);
        let c = Some("127.0.0.1".parse().unwrap());
        assert_eq!(a.check(c, "alice", "s3cret").await, Check::Valid);
        assert_eq!(a.bcrypt_runs(), 1);
        assert_eq!(a.check(c, "alice", "s3cret").await, Check::Valid, "cached");
        assert_eq!(a.bcrypt_runs(), 1, "a cached pair costs no bcrypt");
        assert_eq!(a.check(c, "alice", "wrong").await, Check::Invalid);
        assert_eq!(a.check(c, "mallory", "s3cret").await, Check::Invalid);
        assert_eq!(
            a.bcrypt_runs(),
            3,
            "an unknown user costs one bcrypt comparison, like a known one"
        );
    }

    #[tokio::test]
    async fn a_spent_budget_refuses_without_bcrypt_and_spares_other_clients() {
        let a = alice(3);
        let guesser = Some("127.0.0.2".parse().unwrap());
        let other = Some("127.0.0.3".parse().unwrap());
        let mut got = Vec::new();
        for _ in 0..6 {
            got.push(a.check(guesser, "alice", "guess").await);
        }
        assert_eq!(&got[..3], &[Check::Invalid; 3]);
        assert_eq!(&got[3..], &[Check::Throttled; 3]);
        assert_eq!(a.bcrypt_runs(), 3, "throttled attempts run no bcrypt");
        // Even the right password waits for the budget to refill: it is a guess like any other.
        assert_eq!(a.check(guesser, "alice", "s3cret").await, Check::Throttled);
        assert_eq!(a.check(other, "alice", "s3cret").await, Check::Valid);
        // Successful logins do not spend the budget.
        for _ in 0..5 {
            assert_eq!(a.check(other, "alice", "s3cret").await, Check::Valid);
        }
    }

    /// Hardening (issue 26, item 5): one guesser behind a shared address spent the budget of
    /// everyone behind it; now only the guessed user name's budget from that address is spent.
    #[tokio::test]
    async fn a_guesser_spends_its_user_names_budget_not_its_colleagues() {
        let hash = |p: &str| bcrypt::hash(p, 4).unwrap();
        let text = format!("alice:{}\nbob:{}\n", hash("a-pw"), hash("b-pw"));
        let a = Authenticator::new(
            Users::parse(&text, "f").unwrap(),
            Duration::from_secs(60),
            3,
        );
        let nat = Some("127.0.0.2".parse().unwrap());
        for _ in 0..20 {
            a.check(nat, "alice", "guess").await;
        }
        assert_eq!(a.check(nat, "alice", "a-pw").await, Check::Throttled);
        assert_eq!(a.check(nat, "bob", "b-pw").await, Check::Valid);
        // A guesser spraying user names spends the address's budget (10 × 3) and is stopped.
        let mut outcomes = Vec::new();
        for i in 0..40 {
            outcomes.push(a.check(nat, &format!("user{i}"), "x").await);
        }
        let checked = outcomes.iter().filter(|c| **c == Check::Invalid).count();
        // 3 failures for alice came first; the rest of the address's 30 went to the spray.
        assert_eq!(checked, 27, "{outcomes:?}");
        assert_eq!(a.check(nat, "bob", "b-pw").await, Check::Throttled);
    }

    /// Hardening (issue 26, item 6): a user with a cheap hash answered in 3 ms where an unknown
    /// name took 100 ms. Every check now costs at least a comparison at the file's highest cost.
    #[tokio::test]
    async fn timing_tells_no_user_names_when_the_file_mixes_costs() {
        let text = format!(
            "cheap:{}\ndear:{}\n",
            bcrypt::hash("pw", 4).unwrap(),
            bcrypt::hash("pw", 9).unwrap()
        );
        let users = Users::parse(&text, "f").unwrap();
        assert_eq!(users.mixed_costs(), Some((4, 9)));
        let a = Authenticator::new(users, Duration::from_secs(60), 1000);
        let c = Some("127.0.0.1".parse().unwrap());
        // The dummy hash is made on first need: made here, outside the timings.
        a.check(c, "warm-up", "x").await;
        let time = |user: &'static str| {
            let a = &a;
            async move {
                let t = std::time::Instant::now();
                assert_eq!(a.check(c, user, "wrong").await, Check::Invalid);
                t.elapsed()
            }
        };
        let unknown = time("nobody").await;
        let cheap = time("cheap").await;
        let dear = time("dear").await;
        // Cost 9 is 32 times cost 4: without the padding `cheap` took about 1/32 of the others.
        assert!(cheap * 2 > unknown, "cheap {cheap:?}, unknown {unknown:?}");
        assert!(dear * 2 > unknown, "dear {dear:?}, unknown {unknown:?}");
    }

    #[test]
    fn basic_header() {
        assert_eq!(
            crate::identity::negotiate::parse_basic(b"Basic YWxpY2U6czNjcmV0"),
            Some(("alice".into(), "s3cret".into()))
        );
        assert_eq!(crate::identity::negotiate::parse_basic(b"Bearer x"), None);
        assert_eq!(crate::identity::negotiate::parse_basic(b"Basic !!!"), None);
    }
}
