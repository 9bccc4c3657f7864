//! Who may use the proxy. The default denies every client not in `access.allow_clients`, so a
//! fresh install is never an open relay.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::AccessSection;

/// The access rules in force.
#[derive(Debug, Clone)]
pub struct Policy {
    allow_clients: Vec<IpNet>,
}

impl Policy {
    /// Builds the rules from `[access]`.
    pub fn new(access: &AccessSection) -> Self {
        Self {
            allow_clients: access.allow_clients.clone(),
        }
    }

    /// Whether a client connecting from `ip` may use the proxy at all.
    pub fn allows_client(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.allow_clients.iter().any(|n| n.contains(&ip))
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, as dual-stack sockets report IPv4 peers) is
/// treated as the IPv4 address it carries, so rules written for IPv4 apply.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_default_allows_loopback_only() {
        let p = Policy::new(&AccessSection::default());
        assert!(p.allows_client("127.0.0.1".parse().unwrap()));
        assert!(p.allows_client("::1".parse().unwrap()));
        assert!(p.allows_client("::ffff:127.0.0.5".parse().unwrap()));
        assert!(!p.allows_client("10.0.0.1".parse().unwrap()));
        assert!(!p.allows_client("::ffff:10.0.0.1".parse().unwrap()));
    }
}
