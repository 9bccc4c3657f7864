//! `[access.kerberos]` and `[access.ldap]`: where single sign-on keys and directory groups come
//! from. A Windows shop replaces Squid's `negotiate_kerberos_auth` and
//! `ext_kerberos_ldap_group_acl` with these two sections.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, Invalid};

/// Kerberos single sign-on (Negotiate on HTTP, GSSAPI on SOCKS5) from a keytab.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KerberosSection {
    /// The keytab holding the proxy's service keys (`HTTP/proxy.example.com`, and
    /// `rcmd/proxy.example.com` for SOCKS5 clients such as curl).
    pub keytab: PathBuf,
    /// The one principal tickets must be for; empty: any key in the keytab (the usual choice when
    /// the proxy is reached under several names).
    #[serde(default)]
    pub service_principal: String,
    /// Drop `@REALM` from authenticated principals, so rules, the access log and metrics say
    /// `alice` instead of `alice@EXAMPLE.COM` (single-realm shops).
    #[serde(default)]
    pub strip_realm: bool,
}

/// Where a Basic user name and password are checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BasicSource {
    /// The htpasswd `users_file`.
    #[default]
    File,
    /// A simple bind as the user at `[access.ldap]` (Squid's `basic_ldap_auth`).
    Ldap,
}

/// A scheme a 407 offers, in the order configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// RFC 4559 SPNEGO (needs `[access.kerberos]`).
    Negotiate,
    /// RFC 7617 user and password (needs `users_file` or `basic = "ldap"`).
    Basic,
}

/// The directory that answers group memberships (and Basic binds with `basic = "ldap"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapSection {
    /// `ldap://host:port` or `ldaps://host:port`.
    pub url: String,
    /// Upgrade an `ldap://` connection with StartTLS before binding.
    #[serde(default)]
    pub start_tls: bool,
    /// PEM CA bundle for ldaps/StartTLS; unset: the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The service account carousel binds as to search.
    pub bind_dn: String,
    /// A file holding that account's password (first line), readable by carousel only.
    pub bind_password_file: PathBuf,
    /// Where users and groups are searched.
    pub base_dn: String,
    /// Finds a user's entry; `{user}` is the name as authenticated, `{name}` the part before
    /// `@`. AD: `(sAMAccountName={name})`.
    #[serde(default = "default_user_filter")]
    pub user_filter: String,
    /// Finds the groups of a user; `{dn}` is the user's entry. Default: `groupOfNames` with a
    /// `member` attribute (OpenLDAP); AD: `(&(objectClass=group)(member={dn}))`.
    #[serde(default = "default_group_filter")]
    pub group_filter: String,
    /// AD only: follow nested groups with `LDAP_MATCHING_RULE_IN_CHAIN`
    /// (`member:1.2.840.113556.1.4.1941:=`) in the group filter.
    #[serde(default)]
    pub nested_groups: bool,
    /// The attribute of a group entry that rules name (`cn`).
    #[serde(default = "default_group_attribute")]
    pub group_attribute: String,
    /// How long a user's groups are trusted before the directory is asked again.
    #[serde(
        rename = "ttl_seconds",
        default = "default_ttl",
        with = "super::duration::seconds"
    )]
    pub ttl: Duration,
    /// How long past the TTL cached groups still serve while the directory cannot be reached;
    /// past that a rule that needs a group denies.
    #[serde(
        rename = "stale_seconds",
        default = "default_stale",
        with = "super::duration::seconds"
    )]
    pub stale: Duration,
    /// Users whose groups are remembered at once.
    #[serde(default = "default_max_users")]
    pub max_cached_users: usize,
    /// How long one directory operation (connect, bind, search) may take.
    #[serde(
        rename = "timeout_ms",
        default = "default_timeout",
        with = "super::duration::millis"
    )]
    pub timeout: Duration,
}

fn default_user_filter() -> String {
    "(uid={name})".into()
}
fn default_group_filter() -> String {
    "(&(objectClass=groupOfNames)(member={dn}))".into()
}
fn default_group_attribute() -> String {
    "cn".into()
}
fn default_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_stale() -> Duration {
    Duration::from_secs(3600)
}
fn default_max_users() -> usize {
    10_000
}
fn default_timeout() -> Duration {
    Duration::from_secs(3)
}

impl KerberosSection {
    /// Checks the values serde cannot.
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if self.keytab.as_os_str().is_empty() {
            return invalid("access.kerberos.keytab", "name the keytab file");
        }
        Ok(())
    }
}

impl LdapSection {
    /// Checks the values serde cannot.
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        let url = self.url.to_ascii_lowercase();
        let tls = url.starts_with("ldaps://");
        if !tls && !url.starts_with("ldap://") {
            return invalid("access.ldap.url", "must start with ldap:// or ldaps://");
        }
        if tls && self.start_tls {
            return invalid("access.ldap.start_tls", "ldaps:// is TLS already");
        }
        if !self.group_filter.contains("{dn}") {
            return invalid("access.ldap.group_filter", "must contain {dn}");
        }
        if !self.user_filter.contains("{name}") && !self.user_filter.contains("{user}") {
            return invalid("access.ldap.user_filter", "must contain {name} or {user}");
        }
        if self.max_cached_users == 0 {
            return invalid("access.ldap.max_cached_users", "must be at least 1");
        }
        if self.timeout.is_zero() {
            return invalid("access.ldap.timeout_ms", "must be at least 1");
        }
        Ok(())
    }
}
