//! Who may go where. Ordered rules over client address, authenticated user, destination and port;
//! the first matching rule decides and what no rule allows is denied. Loopback, link-local and
//! metadata addresses and carousel's own listeners are denied unless a rule names them explicitly,
//! and a host name is checked again against every address it resolves to.

use std::net::{IpAddr, SocketAddr};
use std::sync::LazyLock;

use ipnet::IpNet;

use crate::address;
use crate::config::{Action, Config, Destination, PortRange};
use crate::identity::Membership;
use crate::protocol::TargetHost;

struct Rule {
    label: String,
    via: Option<String>,
    resolve_destination: bool,
    action: Action,
    clients: Vec<IpNet>,
    users: Vec<String>,
    groups: Vec<String>,
    destinations: Vec<Destination>,
    ports: Vec<PortRange>,
}

/// Who asks: the authenticated user and, where rules name groups, the user's groups.
#[derive(Debug, Clone, Copy, Default)]
pub struct Who<'a> {
    /// The authenticated user.
    pub user: Option<&'a str>,
    /// The user's directory groups (`None`: not looked up).
    pub groups: Option<&'a Membership>,
}

impl<'a> From<Option<&'a str>> for Who<'a> {
    fn from(user: Option<&'a str>) -> Self {
        Who { user, groups: None }
    }
}

/// How a rule's users and groups match who asks.
enum UserMatch {
    /// They match (or the rule names neither).
    Yes,
    /// The rule names users or groups and nobody authenticated.
    NeedsUser,
    /// Someone else.
    No,
    /// The rule needs a group and the user's groups are unknown (the directory is down past the
    /// stale time): the request is denied, not passed to later rules.
    Unknown(String),
}

impl Rule {
    fn matches_client(&self, ip: IpAddr) -> bool {
        self.clients.is_empty() || self.clients.iter().any(|n| n.contains(&ip))
    }
    fn matches_port(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.iter().any(|r| r.from <= port && port <= r.to)
    }
    fn port_named(&self, port: u16) -> bool {
        self.ports.iter().any(|r| r.from <= port && port <= r.to)
    }
    fn matches_who(&self, who: Who<'_>) -> UserMatch {
        if self.users.is_empty() && self.groups.is_empty() {
            return UserMatch::Yes;
        }
        let Some(u) = who.user else {
            return UserMatch::NeedsUser;
        };
        if self.users.iter().any(|x| x == "*" || x == u) {
            return UserMatch::Yes;
        }
        if self.groups.is_empty() {
            return UserMatch::No;
        }
        match who.groups.map(|m| m.in_any(&self.groups)) {
            Some(Ok(true)) => UserMatch::Yes,
            Some(Ok(false)) | None => UserMatch::No,
            Some(Err(why)) => UserMatch::Unknown(why.to_string()),
        }
    }
}

/// Why the policy (or the client gate) refuses a request: one typed cause per kind, worded only
/// where it is shown (the reply's body, the access log's `error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A deny rule matched.
    #[error("denied by {0}")]
    ByRule(String),
    /// No rule allows it.
    #[error("no rule allows it")]
    NoRule,
    /// `0.0.0.0/8` or `::`, which Linux connects to this host.
    #[error("{0} means this host, never a destination")]
    ThisHost(SocketAddr),
    /// A guarded address (loopback, link-local, carousel's own ports) the allowing rule does not
    /// name explicitly.
    #[error("{addr} is {what}; {rule} does not name it explicitly")]
    Guarded {
        /// The address.
        addr: SocketAddr,
        /// What it is.
        what: &'static str,
        /// The rule that would have allowed it.
        rule: String,
    },
    /// Every address the name resolved to was refused.
    #[error("no allowed address for {0}")]
    NoAllowedAddress(String),
    /// The client is outside `access.allow_clients`.
    #[error("client {0} is not allowed")]
    Client(IpAddr),
    /// The client's address is not known (no peer address).
    #[error("client address unknown")]
    UnknownClient,
    /// Port 0 is never a destination.
    #[error("port 0")]
    PortZero,
    /// A rule needs the user's groups and the directory cannot tell them.
    #[error("{0}")]
    Directory(String),
}

/// What the policy says about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed by the named rule.
    Allow(String),
    /// A name that only address rules can allow: decided for each address it resolves to,
    /// which then names its rule.
    ByAddress,
    /// Refused.
    Deny(Refusal),
    /// Refused, but a rule would allow it for an authenticated user: ask for credentials.
    AuthRequired,
}

/// The rules in force.
pub struct Policy {
    allow_clients: Vec<IpNet>,
    rules: Vec<Rule>,
    /// Whether any rule has a `via`.
    any_via: bool,
    /// carousel's own listening addresses (listeners and admin): never a destination by accident.
    own: Vec<SocketAddr>,
    /// Whether any rule names users or groups (SOCKS5 then offers authentication).
    pub wants_users: bool,
    /// Whether any rule names groups (requests of authenticated users then look them up).
    pub wants_groups: bool,
}

/// Ranges denied unless a rule names them explicitly. Parsed once: every destination check
/// reads them, and parsing them per connection showed up in the connection-rate profile.
static GUARDED_RANGES: LazyLock<[IpNet; 4]> = LazyLock::new(|| {
    [
        "127.0.0.0/8".parse().expect("literal"),
        "::1/128".parse().expect("literal"),
        "169.254.0.0/16".parse().expect("literal"),
        "fe80::/10".parse().expect("literal"),
    ]
});

impl Policy {
    /// Builds the rules from the configuration.
    pub fn new(config: &Config) -> Self {
        let rules: Vec<Rule> = config
            .access
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| Rule {
                label: match &r.name {
                    Some(n) => format!("rule {i} ({n})"),
                    None => format!("rule {i}"),
                },
                action: r.action,
                via: r.via.as_deref().map(crate::config::normalize_name),
                resolve_destination: r.resolve_destination,
                clients: r.clients.clone(),
                users: r.users.clone(),
                groups: r.groups.clone(),
                destinations: r.destinations.clone(),
                ports: r.ports.clone(),
            })
            .collect();
        let mut own: Vec<SocketAddr> = config.listeners.iter().map(|l| l.address).collect();
        if config.admin.enabled {
            own.push(config.admin.address);
        }
        Self {
            allow_clients: config.access.allow_clients.clone(),
            wants_users: rules
                .iter()
                .any(|r| !r.users.is_empty() || !r.groups.is_empty()),
            wants_groups: rules.iter().any(|r| !r.groups.is_empty()),
            any_via: rules.iter().any(|r| r.via.is_some()),
            rules,
            own,
        }
    }

    /// Whether a client connecting from `ip` may use the proxy at all.
    pub fn allows_client(&self, ip: IpAddr) -> bool {
        let ip = address::client(ip);
        self.allow_clients.iter().any(|n| n.contains(&ip))
    }

    fn is_own(&self, addr: SocketAddr) -> bool {
        let ip = address::destination(addr.ip());
        self.own.iter().any(|o| {
            o.port() == addr.port()
                && (address::destination(o.ip()) == ip
                    || (o.ip().is_unspecified() && ip.is_loopback()))
        })
    }

    /// The cluster of parent proxies the rule labelled `rule` sends its traffic through, if it
    /// names one (`via`), and whether carousel resolves the destination for them
    /// (`resolve_destination`).
    pub fn via(&self, rule: &str) -> Option<(&str, bool)> {
        // Most configurations have no `via`: no scan on their request path.
        if !self.any_via {
            return None;
        }
        self.rules
            .iter()
            .find(|r| r.label == rule)
            .and_then(|r| Some((r.via.as_deref()?, r.resolve_destination)))
    }

    /// Before resolution: may `client` (as `user`) go to `host:port` at all? A name that only
    /// CIDR rules could allow passes here and is decided per resolved address.
    pub fn check_target<'a>(
        &self,
        client: IpAddr,
        who: impl Into<Who<'a>>,
        host: &TargetHost,
        port: u16,
    ) -> Verdict {
        let who = who.into();
        let user = who.user;
        match host {
            TargetHost::Ip(ip) => self.check_address(client, who, None, SocketAddr::new(*ip, port)),
            TargetHost::Name(name) => {
                let client = address::client(client);
                let mut auth_would_help = false;
                let mut pending_cidr = false;
                for r in &self.rules {
                    if !r.matches_client(client) || !r.matches_port(port) {
                        continue;
                    }
                    let by_name = r.destinations.iter().any(|d| d.matches_name(name));
                    let has_cidr = r
                        .destinations
                        .iter()
                        .any(|d| matches!(d, Destination::Net(_)));
                    match r.matches_who(who) {
                        UserMatch::Yes if by_name => {
                            return match r.action {
                                Action::Allow => Verdict::Allow(r.label.clone()),
                                Action::Deny => Verdict::Deny(Refusal::ByRule(r.label.clone())),
                            };
                        }
                        UserMatch::Yes if has_cidr => pending_cidr = true,
                        UserMatch::NeedsUser
                            if (by_name || has_cidr) && r.action == Action::Allow =>
                        {
                            auth_would_help = true
                        }
                        UserMatch::Unknown(why) if by_name || has_cidr => {
                            return Verdict::Deny(Refusal::Directory(why));
                        }
                        _ => {}
                    }
                }
                if pending_cidr {
                    Verdict::ByAddress
                } else if auth_would_help && user.is_none() {
                    Verdict::AuthRequired
                } else {
                    Verdict::Deny(Refusal::NoRule)
                }
            }
        }
    }

    /// For one address (literal, or resolved from `name`): the first matching rule decides; a
    /// guarded address needs an allow rule that names it explicitly, and "this host" (`0.0.0.0/8`,
    /// `::`) is never a destination. Every rule sees the address's canonical form
    /// ([`address::destination`]), so no IPv6 spelling of an IPv4 address walks around a guard.
    pub fn check_address<'a>(
        &self,
        client: IpAddr,
        who: impl Into<Who<'a>>,
        name: Option<&str>,
        addr: SocketAddr,
    ) -> Verdict {
        let who = who.into();
        let user = who.user;
        let client = address::client(client);
        if address::is_unspecified(addr.ip()) {
            return Verdict::Deny(Refusal::ThisHost(addr));
        }
        let ip = address::destination(addr.ip());
        let addr = SocketAddr::new(ip, addr.port());
        let own = self.is_own(addr);
        let guarded = own || GUARDED_RANGES.iter().any(|g| g.contains(&ip));
        let mut auth_would_help = false;
        for r in &self.rules {
            if !r.matches_client(client) || !r.matches_port(addr.port()) {
                continue;
            }
            let mut nets = r.destinations.iter().filter_map(|d| match d {
                Destination::Net(n) if n.contains(&ip) => Some(*n),
                _ => None,
            });
            let by_net = nets.clone().next().is_some();
            let by_name = name.is_some_and(|n| r.destinations.iter().any(|d| d.matches_name(n)))
                || (name.is_none() && r.destinations.contains(&Destination::Any));
            if !by_net && !by_name {
                continue;
            }
            match r.matches_who(who) {
                UserMatch::Yes => {}
                UserMatch::NeedsUser => {
                    auth_would_help |= r.action == Action::Allow;
                    continue;
                }
                UserMatch::No => continue,
                UserMatch::Unknown(why) => return Verdict::Deny(Refusal::Directory(why)),
            }
            if r.action == Action::Deny {
                return Verdict::Deny(Refusal::ByRule(r.label.clone()));
            }
            if guarded {
                // Any of the rule's networks that names the guarded range (or this very
                // listener) explicitly opens it.
                let explicit = nets.any(|n| {
                    if own {
                        n.prefix_len() == n.max_prefix_len() && r.port_named(addr.port())
                    } else {
                        GUARDED_RANGES
                            .iter()
                            .any(|g| g.contains(&n.network()) && n.prefix_len() >= g.prefix_len())
                    }
                });
                if !explicit {
                    let what = if own {
                        "carousel's own listener"
                    } else {
                        "a protected address"
                    };
                    return Verdict::Deny(Refusal::Guarded {
                        addr,
                        what,
                        rule: r.label.clone(),
                    });
                }
            }
            return Verdict::Allow(r.label.clone());
        }
        if auth_would_help && user.is_none() {
            Verdict::AuthRequired
        } else {
            Verdict::Deny(Refusal::NoRule)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &str) -> Policy {
        let text = format!(
            "[[listener]]\naddress = \"127.0.0.1:3128\"\nprotocols = [\"http\"]\n[admin]\naddress = \"127.0.0.1:9090\"\n{rules}"
        );
        Policy::new(&Config::parse(&text, "t").unwrap())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_default_allows_loopback_clients_only() {
        let p = policy("");
        assert!(p.allows_client(ip("127.0.0.1")));
        assert!(p.allows_client(ip("::1")));
        assert!(p.allows_client(ip("::ffff:127.0.0.5")));
        assert!(!p.allows_client(ip("10.0.0.1")));
        assert!(!p.allows_client(ip("::ffff:10.0.0.1")));
    }

    #[test]
    fn nothing_is_allowed_without_a_rule() {
        let p = policy("");
        let v = p.check_target(
            ip("127.0.0.1"),
            None,
            &TargetHost::Name("example.com".into()),
            443,
        );
        assert_eq!(v, Verdict::Deny(Refusal::NoRule));
    }

    #[test]
    fn star_does_not_open_guarded_addresses() {
        let p = policy("[[access.rule]]\naction = \"allow\"\ndestinations = [\"*\"]\n");
        let c = ip("127.0.0.1");
        assert!(matches!(
            p.check_address(c, None, None, sa("192.0.2.1:80")),
            Verdict::Allow(_)
        ));
        for bad in [
            "169.254.169.254:80",
            "127.0.0.1:80",
            "[::1]:80",
            "[fe80::1]:80",
            "127.0.0.1:3128",
            "127.0.0.1:9090",
        ] {
            assert!(
                matches!(p.check_address(c, None, None, sa(bad)), Verdict::Deny(_)),
                "{bad}"
            );
        }
        // A name resolving to a metadata address is denied on the address check.
        assert!(matches!(
            p.check_address(c, None, Some("evil.test"), sa("169.254.169.254:80")),
            Verdict::Deny(_)
        ));
    }

    #[test]
    fn no_spelling_of_loopback_metadata_or_this_host_passes_a_star_rule() {
        let p = policy("[[access.rule]]\naction = \"allow\"\ndestinations = [\"*\"]\n");
        let c = ip("127.0.0.1");
        for bad in [
            "[::]:8080",
            "0.0.0.0:8080",
            "[::127.0.0.1]:8080",
            "[::169.254.169.254]:80",
            "[64:ff9b::7f00:1]:8080",
            "[64:ff9b::a9fe:a9fe]:80",
            "[::ffff:0:7f00:1]:8080",
            "[::ffff:127.0.0.1]:8080",
            "[64:ff9b:1::7f00:1]:8080",
            "[::ffff:127.0.0.1]:3128",
            "[64:ff9b::7f00:1]:9090",
        ] {
            let v = p.check_address(c, None, None, sa(bad));
            assert!(matches!(v, Verdict::Deny(_)), "{bad}: {v:?}");
            // The same address reached through a name.
            let v = p.check_address(c, None, Some("evil.test"), sa(bad));
            assert!(matches!(v, Verdict::Deny(_)), "{bad} by name: {v:?}");
        }
        for good in ["[64:ff9b::c000:201]:80", "[2001:db8::1]:80", "192.0.2.1:80"] {
            let v = p.check_address(c, None, None, sa(good));
            assert!(matches!(v, Verdict::Allow(_)), "{good}: {v:?}");
        }
    }

    #[test]
    fn this_host_is_never_a_destination_even_when_named() {
        let p = policy(
            "[[access.rule]]\naction = \"allow\"\ndestinations = [\"0.0.0.0/8\", \"::/128\", \"::/0\", \"127.0.0.0/8\", \"::1/128\"]\n",
        );
        let c = ip("127.0.0.1");
        for bad in [
            "0.0.0.0:80",
            "[::]:80",
            "[::ffff:0.0.0.0]:80",
            "[64:ff9b::]:80",
        ] {
            let v = p.check_address(c, None, None, sa(bad));
            assert!(matches!(v, Verdict::Deny(_)), "{bad}: {v:?}");
        }
        // Named explicitly, loopback in any spelling is what the rule allows.
        for ok in ["127.0.0.1:80", "[::1]:80", "[::ffff:127.0.0.1]:80"] {
            let v = p.check_address(c, None, None, sa(ok));
            assert!(matches!(v, Verdict::Allow(_)), "{ok}: {v:?}");
        }
    }

    #[test]
    fn explicit_rules_open_guarded_ranges_but_not_own_listeners() {
        let p = policy("[[access.rule]]\naction = \"allow\"\ndestinations = [\"127.0.0.0/8\"]\n");
        let c = ip("127.0.0.1");
        assert!(matches!(
            p.check_address(c, None, None, sa("127.0.0.11:80")),
            Verdict::Allow(_)
        ));
        assert!(matches!(
            p.check_address(c, None, None, sa("127.0.0.1:3128")),
            Verdict::Deny(_)
        ));
        let p = policy("[[access.rule]]\naction = \"allow\"\ndestinations = [\"127.0.0.1/32\"]\nports = [3128]\n");
        assert!(matches!(
            p.check_address(c, None, None, sa("127.0.0.1:3128")),
            Verdict::Allow(_)
        ));
    }

    #[test]
    fn first_match_decides_and_ports_and_suffixes_apply() {
        let p = policy(
            "[[access.rule]]\naction = \"deny\"\ndestinations = [\"bad.example.com\"]\n\
             [[access.rule]]\naction = \"allow\"\ndestinations = [\".example.com\"]\nports = [443, \"8000-8100\"]\n",
        );
        let c = ip("127.0.0.1");
        let name = |n: &str| TargetHost::Name(n.into());
        assert!(matches!(
            p.check_target(c, None, &name("bad.example.com"), 443),
            Verdict::Deny(_)
        ));
        assert!(matches!(
            p.check_target(c, None, &name("www.example.com"), 443),
            Verdict::Allow(_)
        ));
        assert!(matches!(
            p.check_target(c, None, &name("example.com"), 8050),
            Verdict::Allow(_)
        ));
        assert!(matches!(
            p.check_target(c, None, &name("www.example.com"), 80),
            Verdict::Deny(_)
        ));
        assert!(matches!(
            p.check_target(c, None, &name("example.org"), 443),
            Verdict::Deny(_)
        ));
    }

    #[test]
    fn user_rules_ask_for_credentials() {
        let dir = std::env::temp_dir().join(format!("carousel-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let users = dir.join("htpasswd");
        std::fs::write(
            &users,
            "alice:$2y$04$abcdefghijklmnopqrstuu5Bk7WXKZ6vT9MJU7S6mAbYbqNGeBkqu\n",
        )
        .unwrap();
        let p = policy(&format!(
            "[access]\nusers_file = \"{}\"\n[[access.rule]]\naction = \"allow\"\nusers = [\"alice\"]\ndestinations = [\"*\"]\n",
            users.display()
        ));
        let c = ip("127.0.0.1");
        let t = TargetHost::Name("example.com".into());
        assert_eq!(p.check_target(c, None, &t, 80), Verdict::AuthRequired);
        assert!(matches!(
            p.check_target(c, Some("alice"), &t, 80),
            Verdict::Allow(_)
        ));
        assert!(matches!(
            p.check_target(c, Some("bob"), &t, 80),
            Verdict::Deny(_)
        ));
        assert!(p.wants_users);
    }
}
