//! `[access]` (the client gate, users, ordered rules and their destinations) and `[limits]`.

use std::time::Duration;

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

use super::{invalid, Invalid};

/// Access control: a coarse client gate, then ordered rules. What no rule allows is denied.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessSection {
    /// Client networks allowed to connect at all.
    pub allow_clients: Vec<IpNet>,
    /// htpasswd file with bcrypt hashes (`user:$2y$...`), for rules that name users.
    pub users_file: Option<std::path::PathBuf>,
    /// Realm sent in `Proxy-Authenticate`.
    pub realm: String,
    /// Seconds a verified username/password pair is remembered (bcrypt is slow on purpose).
    #[serde(rename = "auth_cache_seconds", with = "super::duration::seconds")]
    pub auth_cache: Duration,
    /// Failed authentications one client address may make per minute, across all its
    /// connections (a burst of this many, refilled evenly); past it the client is refused at once.
    pub max_auth_failures_per_minute: u32,
    /// Where Basic credentials are checked: the `users_file` or an LDAP bind.
    pub basic: super::BasicSource,
    /// The schemes a 407 offers, in this order; empty: Negotiate (with `[access.kerberos]`)
    /// then Basic (with a users file or `basic = "ldap"`).
    pub schemes: Vec<super::Scheme>,
    /// Kerberos single sign-on.
    pub kerberos: Option<super::KerberosSection>,
    /// The directory for `groups` in rules and for `basic = "ldap"`.
    pub ldap: Option<super::LdapSection>,
    /// Ordered rules; the first that matches decides.
    #[serde(rename = "rule")]
    pub rules: Vec<RuleSection>,
}

impl Default for AccessSection {
    fn default() -> Self {
        Self {
            allow_clients: vec![
                "127.0.0.0/8".parse().expect("literal CIDR"),
                "::1/128".parse().expect("literal CIDR"),
            ],
            users_file: None,
            realm: "carousel".into(),
            auth_cache: Duration::from_secs(60),
            max_auth_failures_per_minute: 10,
            basic: super::BasicSource::File,
            schemes: Vec::new(),
            kerberos: None,
            ldap: None,
            rules: Vec::new(),
        }
    }
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let the request through.
    Allow,
    /// Refuse it.
    Deny,
}

/// A port or an inclusive range (`443` or `"1000-2000"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub from: u16,
    /// Last port.
    pub to: u16,
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(u16),
            Range(String),
        }
        match Raw::deserialize(d)? {
            Raw::One(p) => Ok(PortRange { from: p, to: p }),
            Raw::Range(s) => {
                let (a, b) = s.split_once('-').unwrap_or((&s, &s));
                let from = a.trim().parse().map_err(serde::de::Error::custom)?;
                let to = b.trim().parse().map_err(serde::de::Error::custom)?;
                if from > to {
                    return Err(serde::de::Error::custom("port range runs backwards"));
                }
                Ok(PortRange { from, to })
            }
        }
    }
}

/// One access rule. Empty lists match anything, except `destinations`, which must be given.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSection {
    /// A label for the access log.
    #[serde(default)]
    pub name: Option<String>,
    /// What a match does.
    pub action: Action,
    /// Client networks.
    #[serde(default)]
    pub clients: Vec<IpNet>,
    /// Users (`"*"`: any authenticated user). Naming users makes the rule require authentication.
    #[serde(default)]
    pub users: Vec<String>,
    /// Directory groups (`[access.ldap]`); an authenticated user in any of them matches. Naming
    /// groups makes the rule require authentication; with `users` too, either matches.
    #[serde(default)]
    pub groups: Vec<String>,
    /// `"*"`, host names, domain suffixes (`.example.com`), cluster names, CIDRs or addresses;
    /// each parsed when the file is read.
    pub destinations: Vec<Destination>,
    /// Destination ports.
    #[serde(default)]
    pub ports: Vec<PortRange>,
    /// Send what this rule allows through the parent proxies of this cluster (a `[[cluster]]`
    /// with a `[cluster.parent]`), destination name unresolved; unset: carousel connects itself.
    #[serde(default)]
    pub via: Option<String>,
    /// With `via`: carousel resolves the destination and hands the parent an address, a new one
    /// per request in rotation (a cluster's usable members, or a name's addresses), so the
    /// destination's load is spread even when the parent's own DNS cache would pin it.
    #[serde(default)]
    pub resolve_destination: bool,
}

/// Limits that keep one client, or a flood, from taking the proxy down.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Open client connections in all.
    pub max_connections: usize,
    /// Open client connections from one client address; 0: no cap (the default: an office behind
    /// one NAT address or a terminal-server farm is one address for hundreds of users).
    pub max_connections_per_client: usize,
    /// Connections from one client address still in their handshake (no complete request yet):
    /// the slowloris guard that does not hurt many users behind one address.
    pub max_handshakes_per_client: usize,
    /// DNS lookups in flight for new names.
    pub max_concurrent_dns_lookups: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_connections: 20_000,
            max_connections_per_client: 0,
            max_handshakes_per_client: 4096,
            max_concurrent_dns_lookups: 256,
        }
    }
}

/// One destination pattern of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Any destination (but never a guarded address).
    Any,
    /// This host or cluster name exactly.
    Name(String),
    /// Any name ending in this suffix (stored with its leading dot), and the bare domain.
    Suffix(String),
    /// Addresses in this network.
    Net(IpNet),
}

impl Destination {
    /// Parses a configured destination; `None` if it is not one.
    pub fn parse(s: &str) -> Option<Destination> {
        let s = s.trim().to_ascii_lowercase();
        if s == "*" {
            return Some(Destination::Any);
        }
        if let Ok(net) = s.parse::<IpNet>() {
            return Some(Destination::Net(net.trunc()));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Some(Destination::Net(IpNet::from(ip)));
        }
        if let Some(rest) = s.strip_prefix('.') {
            return crate::protocol::validate_hostname(rest)
                .then(|| Destination::Suffix(format!(".{rest}")));
        }
        let name = s.trim_end_matches('.');
        crate::protocol::validate_hostname(name).then(|| Destination::Name(name.to_string()))
    }

    /// Whether a host or cluster name matches this pattern.
    pub fn matches_name(&self, name: &str) -> bool {
        match self {
            Destination::Any => true,
            Destination::Name(n) => n == name,
            Destination::Suffix(s) => name.ends_with(s.as_str()) || name == &s[1..],
            Destination::Net(_) => false,
        }
    }
}

impl<'de> Deserialize<'de> for Destination {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Destination::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{s:?} is not \"*\", a host name, a .suffix, an address or a CIDR"
            ))
        })
    }
}

impl AccessSection {
    /// Checks the values serde cannot.
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        for (i, r) in self.rules.iter().enumerate() {
            let k = |f: &str| format!("access.rule[{i}].{f}");
            if r.destinations.is_empty() {
                return invalid(
                    k("destinations"),
                    "name at least one destination (\"*\" for any)",
                );
            }
            if !r.users.is_empty() && !self.authenticates() {
                return invalid(
                    k("users"),
                    "rules naming users need access.users_file, basic = \"ldap\" or [access.kerberos]",
                );
            }
            if !r.groups.is_empty() && self.ldap.is_none() {
                return invalid(k("groups"), "rules naming groups need [access.ldap]");
            }
            if !r.groups.is_empty() && !self.authenticates() {
                return invalid(
                    k("groups"),
                    "rules naming groups need a way to authenticate (users_file, basic = \"ldap\" or [access.kerberos])",
                );
            }
        }
        if self.basic == super::BasicSource::Ldap && self.ldap.is_none() {
            return invalid("access.basic", "basic = \"ldap\" needs [access.ldap]");
        }
        if self.basic == super::BasicSource::Ldap && self.users_file.is_some() {
            return invalid(
                "access.basic",
                "basic = \"ldap\" checks passwords in the directory: drop access.users_file",
            );
        }
        for (i, s) in self.schemes.iter().enumerate() {
            let key = format!("access.schemes[{i}]");
            match s {
                super::Scheme::Negotiate if self.kerberos.is_none() => {
                    return invalid(key, "negotiate needs [access.kerberos]");
                }
                super::Scheme::Basic if !self.has_basic() => {
                    return invalid(key, "basic needs access.users_file or basic = \"ldap\"");
                }
                _ => {}
            }
            if self.schemes[..i].contains(s) {
                return invalid(key, "named twice");
            }
        }
        if let Some(k) = &self.kerberos {
            k.validate()?;
        }
        if let Some(l) = &self.ldap {
            l.validate()?;
        }
        if self.max_auth_failures_per_minute == 0 {
            return invalid("access.max_auth_failures_per_minute", "must be at least 1");
        }
        Ok(())
    }
}

impl AccessSection {
    /// Whether Basic credentials can be checked (a users file, or binds at the directory).
    pub fn has_basic(&self) -> bool {
        self.users_file.is_some() || self.basic == super::BasicSource::Ldap
    }

    /// Whether any way to authenticate is configured.
    pub fn authenticates(&self) -> bool {
        self.has_basic() || self.kerberos.is_some()
    }

    /// The schemes a 407 offers, in order: as configured, or Negotiate then Basic.
    pub fn offered_schemes(&self) -> Vec<super::Scheme> {
        if !self.schemes.is_empty() {
            return self.schemes.clone();
        }
        let mut v = Vec::new();
        if self.kerberos.is_some() {
            v.push(super::Scheme::Negotiate);
        }
        if self.has_basic() || v.is_empty() {
            v.push(super::Scheme::Basic);
        }
        v
    }
}

impl LimitsSection {
    /// Checks the values serde cannot.
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if self.max_connections == 0 {
            return invalid("limits.max_connections", "must be at least 1");
        }
        if self.max_handshakes_per_client == 0 {
            return invalid("limits.max_handshakes_per_client", "must be at least 1");
        }
        if self.max_concurrent_dns_lookups == 0 {
            return invalid("limits.max_concurrent_dns_lookups", "must be at least 1");
        }
        Ok(())
    }
}
