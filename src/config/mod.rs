//! The TOML configuration: schema, defaults, validation and error locations. One file per
//! section, each with its own checks; `locate` finds the line of a key.
//!
//! Every error names the file, the key and the line, so an operator can fix a typo without
//! guessing; unknown keys are errors because a misspelt key silently ignored is a security hole
//! in a proxy's access rules.

mod access;
mod admin;
mod cluster;
mod dial;
mod dns;
mod duration;
mod identity;
mod locate;
mod responder;
mod server;

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

pub use access::*;
pub use admin::*;
pub use cluster::*;
pub use dial::*;
pub use dns::*;
pub use identity::*;
use locate::{first_line, line_of_key, locate_span};
pub use responder::*;
pub use server::*;

/// The configuration carousel runs on when no file is given: the same text as
/// `conf/carousel.toml`, so the documented file and the built-in behaviour never drift apart.
pub const DEFAULT_TOML: &str = include_str!("../../conf/carousel.toml");

/// Why a configuration was refused, with where in the file the problem is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The path that was asked for.
        file: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The text is not TOML: where, and what was expected.
    #[error("{file}:{line}:{column}: TOML syntax: {message}")]
    Syntax {
        /// The path of the file (or `<embedded>`).
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column (in characters).
        column: usize,
        /// What the parser found and expected.
        message: String,
    },
    /// The file was read but a key is wrong: type, unknown key or invalid value.
    #[error("{file}:{line}: key `{key}`: {message}")]
    Invalid {
        /// The path of the file (or `<embedded>`).
        file: String,
        /// The dotted key path, for example `listener[1].address`.
        key: String,
        /// 1-based line of the key, or 0 if unknown.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// Top-level configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Pingora server settings carousel controls.
    #[serde(default)]
    pub server: ServerSection,
    /// Client-facing listeners.
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerSection>,
    /// Name resolution.
    #[serde(default)]
    pub dns: DnsSection,
    /// Upstream connect behaviour.
    #[serde(default)]
    pub dial: DialSection,
    /// Established tunnels.
    #[serde(default)]
    pub tunnel: TunnelSection,
    /// Forwarded (absolute-form) HTTP requests.
    #[serde(default)]
    pub forward: ForwardSection,
    /// Who may use the proxy.
    #[serde(default)]
    pub access: AccessSection,
    /// Diagnostics and the access log.
    #[serde(default)]
    pub log: LogSection,
    /// Connection and lookup limits.
    #[serde(default)]
    pub limits: LimitsSection,
    /// The admin HTTP listener (metrics, health, status, PAC).
    #[serde(default)]
    pub admin: AdminSection,
    /// What the generated PAC file (`/proxy.pac`, `/wpad.dat`) tells browsers and clients.
    #[serde(default)]
    pub pac: PacSection,
    /// Health-aware DNS answers for the clusters (off unless it listens).
    #[serde(default)]
    pub responder: ResponderSection,
    /// Configured clusters: names watched closely (health checks, ejection, serve-stale).
    #[serde(default, rename = "cluster")]
    pub clusters: Vec<ClusterSection>,
    /// The file name and text it was read from, so later stages (the files it names, see
    /// `resources`) can report file, key and line too.
    #[serde(skip)]
    source: Option<Arc<(String, String)>>,
}

/// A failed semantic check: the dotted key path and the reason.
pub(crate) type Invalid = (String, String);

/// The failed check for `key`.
pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Result<(), Invalid> {
    Err((key.into(), reason.into()))
}

impl Config {
    /// Loads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The embedded default configuration.
    pub fn embedded() -> Config {
        Self::parse(DEFAULT_TOML, "<embedded>").expect("the embedded default config is valid")
    }

    /// Parses and validates `text`; `file` only labels errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let (key, line) = locate_span(text, span.start);
            if toml::de::DeTable::parse(text).is_err() {
                // Not TOML at all: no key to name, but a place and what was expected.
                let start = span.start.min(text.len());
                let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
                return ConfigError::Syntax {
                    file: file.to_string(),
                    line,
                    column: text[line_start..start].chars().count() + 1,
                    message: e
                        .message()
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .collect::<Vec<_>>()
                        .join("; "),
                };
            }
            ConfigError::Invalid {
                file: file.to_string(),
                key,
                line,
                message: first_line(e.message()),
            }
        })?;
        let mut cfg = cfg;
        cfg.source = Some(Arc::new((file.to_string(), text.to_string())));
        cfg.validate()
            .map_err(|(key, message)| cfg.invalid(&key, message))?;
        Ok(cfg)
    }

    /// The error for `key` of this configuration, with its file and line.
    pub fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let (file, line) = match &self.source {
            Some(src) => (src.0.clone(), line_of_key(&src.1, key)),
            None => ("<built>".to_string(), 0),
        };
        ConfigError::Invalid {
            file,
            key: key.to_string(),
            line,
            message: message.into(),
        }
    }

    /// Semantic checks serde cannot express, section by section; returns the key path and the
    /// reason. Nothing here reads a file: `resources` loads the files a configuration
    /// names.
    fn validate(&self) -> Result<(), Invalid> {
        self.server.validate()?;
        if self.listeners.is_empty() {
            return invalid("listener", "at least one [[listener]] is required");
        }
        for (i, l) in self.listeners.iter().enumerate() {
            l.validate(i)?;
            if self.listeners[..i].iter().any(|o| o.address == l.address) {
                return invalid(
                    format!("listener[{i}].address"),
                    "address used by another listener",
                );
            }
        }
        // A PAC naming 0.0.0.0 would send browsers nowhere: such a listener needs the address
        // clients reach it at.
        if self.pac.http_proxy.is_empty() {
            if let Some(i) = self
                .listeners
                .iter()
                .position(|l| l.address.ip().is_unspecified() && l.accepts(Protocol::Http))
            {
                return invalid(
                    "pac.http_proxy",
                    format!(
                        "listener[{i}] listens on {}: name the address clients use",
                        self.listeners[i].address
                    ),
                );
            }
        }
        if self.admin.enabled {
            if let Some(i) = self
                .listeners
                .iter()
                .position(|l| l.address == self.admin.address)
            {
                return invalid("admin.address", format!("address used by listener[{i}]"));
            }
        }
        self.responder.validate()?;
        for (i, a) in self.responder.listen.iter().enumerate() {
            // The responder speaks TCP too: no clash with a listener or the admin port.
            if let Some(j) = self.listeners.iter().position(|l| l.address == *a) {
                return invalid(
                    format!("responder.listen[{i}]"),
                    format!("address used by listener[{j}]"),
                );
            }
            if self.admin.enabled && self.admin.address == *a {
                return invalid(format!("responder.listen[{i}]"), "address used by admin");
            }
        }
        self.dns.validate()?;
        self.dial.validate()?;
        self.forward.validate()?;
        self.tunnel.validate()?;
        self.access.validate()?;
        self.limits.validate()?;
        for (i, c) in self.clusters.iter().enumerate() {
            c.validate(i)?;
            if self.clusters[..i].iter().any(|o| o.name == c.name) {
                return invalid(
                    format!("cluster[{i}].name"),
                    "another cluster has this name",
                );
            }
            if let Some(p) = c
                .parent
                .as_ref()
                .filter(|p| p.protocol != ParentProtocol::Https)
            {
                for (key, set) in [
                    ("ca_file", p.ca_file.is_some()),
                    ("tls_server_name", p.tls_server_name.is_some()),
                ] {
                    if set {
                        return invalid(
                            format!("cluster[{i}].parent.{key}"),
                            "only an https parent is reached over TLS",
                        );
                    }
                }
            }
            if c.parent.is_some() && c.ports.is_empty() {
                return invalid(
                    format!("cluster[{i}].ports"),
                    "a cluster of parent proxies needs the parents' port",
                );
            }
        }
        for (i, r) in self.access.rules.iter().enumerate() {
            let Some(via) = &r.via else {
                if r.resolve_destination {
                    return invalid(
                        format!("access.rule[{i}].resolve_destination"),
                        "only a rule with `via` hands its parents a resolved destination",
                    );
                }
                continue;
            };
            let key = format!("access.rule[{i}].via");
            if r.action != Action::Allow {
                return invalid(key, "only an allow rule sends traffic via parents");
            }
            let via = normalize_name(via);
            match self.clusters.iter().find(|c| c.name == via) {
                Some(c) if c.parent.is_some() => {}
                Some(_) => {
                    return invalid(key, format!("cluster {via} has no [cluster.parent]"));
                }
                None => return invalid(key, format!("no [[cluster]] is named {via}")),
            }
        }
        Ok(())
    }

    /// What is almost always a mistake but not invalid, for `carousel check` to warn about.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for c in &self.clusters {
            let name = &c.name;
            if name.parse::<std::net::IpAddr>().is_ok() {
                out.push(format!(
                    "cluster {name}: the name is an IP address; clients asking for a name never match it"
                ));
            }
            for &port in &c.ports {
                let allowed = self.access.rules.iter().any(|r| {
                    r.action == Action::Allow
                        && (r.ports.is_empty()
                            || r.ports.iter().any(|p| p.from <= port && port <= p.to))
                });
                if !allowed {
                    out.push(format!(
                        "cluster {name}: no access rule allows port {port}, so every request for it is denied"
                    ));
                }
            }
        }
        let everyone = self
            .access
            .allow_clients
            .iter()
            .any(|n| n.prefix_len() == 0);
        if everyone {
            for l in self
                .listeners
                .iter()
                .filter(|l| l.address.ip().is_unspecified())
            {
                out.push(format!(
                    "listener {} listens on every address and access.allow_clients includes everyone: anyone who reaches this host may use the proxy",
                    l.address
                ));
            }
        }
        out
    }

    /// A one-line summary for `carousel check`.
    pub fn summary(&self) -> String {
        let listeners: Vec<String> = self
            .listeners
            .iter()
            .map(|l| {
                let p: Vec<&str> = l
                    .protocols
                    .iter()
                    .map(|p| match p {
                        Protocol::Http => "http",
                        Protocol::Socks => "socks",
                    })
                    .collect();
                format!("{} ({})", l.address, p.join("+"))
            })
            .collect();
        let dns = if self.dns.nameservers.is_empty() {
            "system resolver".to_string()
        } else {
            format!("{} nameserver(s)", self.dns.nameservers.len())
        };
        format!(
            "ok: {} listener(s): {}; dns: {}; {} cluster(s); {} client network(s) allowed",
            self.listeners.len(),
            listeners.join(", "),
            dns,
            self.clusters.len(),
            self.access.allow_clients.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid_and_safe() {
        let c = Config::embedded();
        assert_eq!(c.listeners.len(), 2);
        assert!(c.listeners.iter().all(|l| l.address.ip().is_loopback()));
        assert!(c
            .access
            .allow_clients
            .iter()
            .all(|n| n.addr().is_loopback()));
        assert_eq!(c.server.grace_period, std::time::Duration::from_secs(5));
    }

    /// Issue 21: the units live in the key names only. What the program reads is a `Duration`,
    /// a parsed member and a name in the one form lookups compare, whatever the file wrote.
    #[test]
    fn durations_members_and_names_are_typed_as_the_file_is_read() {
        use std::time::Duration;
        let c = Config::parse(
            "[[listener]]\naddress = \"127.0.0.1:3128\"\nprotocols = [\"http\"]\n\
             [dial]\nconnect_timeout_ms = 1500\nfailure_memory_seconds = 7\n\
             [[cluster]]\nname = \"Chat.Example.COM.\"\nports = [80]\nsrv = \"_x._tcp.Example.COM.\"\n\
             static_members = [\"127.0.0.1\", \"127.0.0.2:81\"]\n\
             tunnel_idle_timeout_seconds = 2\nresponse_timeout_ms = 250\n\
             [cluster.health]\ninterval_ms = 300\n",
            "typed.toml",
        )
        .unwrap();
        assert_eq!(c.dial.connect_timeout, Duration::from_millis(1500));
        assert_eq!(c.dial.failure_memory, Duration::from_secs(7));
        let cl = &c.clusters[0];
        assert_eq!(cl.name, "chat.example.com");
        assert_eq!(cl.srv.as_deref(), Some("_x._tcp.example.com"));
        assert_eq!(
            cl.static_members,
            [
                StaticMember {
                    ip: "127.0.0.1".parse().unwrap(),
                    port: None
                },
                StaticMember {
                    ip: "127.0.0.2".parse().unwrap(),
                    port: Some(81)
                },
            ]
        );
        assert_eq!(cl.tunnel_idle_timeout, Some(Duration::from_secs(2)));
        assert_eq!(cl.response_timeout, Some(Duration::from_millis(250)));
        assert_eq!(cl.health.interval, Duration::from_millis(300));
        // Two spellings of one name are one cluster.
        let dup = Config::parse(
            "[[listener]]\naddress = \"127.0.0.1:3128\"\nprotocols = [\"http\"]\n\
             [[cluster]]\nname = \"chat.example.com\"\nports = [80]\n\
             [[cluster]]\nname = \"CHAT.example.com.\"\nports = [81]\n",
            "dup.toml",
        );
        assert!(dup.unwrap_err().to_string().contains("cluster[1].name"));
        // A member that is no address: the file, the line and the key.
        let bad = Config::parse(
            "[[listener]]\naddress = \"127.0.0.1:3128\"\nprotocols = [\"http\"]\n\
             [[cluster]]\nname = \"c.test\"\nports = [80]\nstatic_members = [\"bogus\"]\n",
            "bad.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            bad.starts_with("bad.toml:7: key `cluster[0].static_members`"),
            "{bad}"
        );
    }

    /// A rule's `via` must name a cluster of parents; an error names the rule's key.
    #[test]
    fn via_names_a_cluster_of_parents() {
        let base = "[[listener]]\naddress = \"127.0.0.1:3128\"\nprotocols = [\"http\"]\n\
             [[cluster]]\nname = \"hq.test\"\nports = [3128]\n";
        let rule = |via: &str, action: &str| {
            format!(
                "[[access.rule]]\naction = \"{action}\"\ndestinations = [\"*\"]\nvia = \"{via}\"\n"
            )
        };
        let parent = "[cluster.parent]\nprotocol = \"http\"\n";
        let ok = Config::parse(&format!("{base}{parent}{}", rule("HQ.test.", "allow")), "t");
        assert!(ok.is_ok(), "{ok:?}");
        let err = |text: String| Config::parse(&text, "t").unwrap_err().to_string();
        let e = err(format!("{base}{}", rule("hq.test", "allow")));
        assert!(
            e.contains("access.rule[0].via") && e.contains("no [cluster.parent]"),
            "{e}"
        );
        let e = err(format!("{base}{parent}{}", rule("other.test", "allow")));
        assert!(e.contains("no [[cluster]] is named other.test"), "{e}");
        let e = err(format!("{base}{parent}{}", rule("hq.test", "deny")));
        assert!(e.contains("only an allow rule"), "{e}");
        // TLS keys belong to https parents only; resolve_destination to rules with via.
        let e = err(format!("{base}{parent}ca_file = \"/x.pem\"\n"));
        assert!(
            e.contains("cluster[0].parent.ca_file") && e.contains("only an https parent"),
            "{e}"
        );
        let https = parent.replace("\"http\"", "\"https\"");
        let ok = Config::parse(
            &format!("{base}{https}ca_file = \"/x.pem\"\ntls_server_name = \"hq.test\"\n"),
            "t",
        );
        assert!(ok.is_ok(), "{ok:?}");
        let e = err(format!(
            "{base}[[access.rule]]\naction = \"allow\"\ndestinations = [\"*\"]\nresolve_destination = true\n"
        ));
        assert!(
            e.contains("access.rule[0].resolve_destination") && e.contains("with `via`"),
            "{e}"
        );
    }

    /// Issue 21: defaults in one place. Every section the embedded file writes out equals what
    /// a file that leaves the section out gets (the file shows the defaults; it must not
    /// become a second, drifting copy of them). Listeners and rules are the exception the
    /// file exists for: it adds them.
    #[test]
    fn an_empty_config_has_the_embedded_files_values() {
        let embedded = Config::embedded();
        let empty = Config::parse(
            "[[listener]]\naddress = \"127.0.0.1:3128\"\nprotocols = [\"http\"]\n",
            "empty.toml",
        )
        .unwrap();
        // Each section of both, in its Debug form (every field, nested ones included).
        let sections = |c: &Config| {
            [
                ("server", format!("{:?}", c.server)),
                ("dns", format!("{:?}", c.dns)),
                ("dial", format!("{:?}", c.dial)),
                ("forward", format!("{:?}", c.forward)),
                ("tunnel", format!("{:?}", c.tunnel)),
                ("limits", format!("{:?}", c.limits)),
                ("log", format!("{:?}", c.log)),
                ("admin", format!("{:?}", c.admin)),
                ("pac", format!("{:?}", c.pac)),
                ("responder", format!("{:?}", c.responder)),
            ]
        };
        for ((what, a), (_, b)) in sections(&embedded).into_iter().zip(sections(&empty)) {
            assert_eq!(a, b, "[{what}] differs");
        }
        let mut access = embedded.access.clone();
        access.rules.clear();
        assert_eq!(
            format!("{access:?}"),
            format!("{:?}", empty.access),
            "[access] differs"
        );
    }

    #[test]
    fn unknown_key_is_reported_with_key_and_line() {
        let text = "[server]\nthreads = 2\n\n[dial]\nconect_timeout_ms = 5\n";
        let e = Config::parse(text, "x.toml").unwrap_err().to_string();
        assert!(e.starts_with("x.toml:5: key `dial"), "{e}");
        assert!(e.contains("conect_timeout_ms"), "{e}");
    }

    #[test]
    fn semantic_error_points_at_the_key_line() {
        let text = "[[listener]]\naddress = \"127.0.0.1:1\"\nprotocols = [\"http\"]\n\n[[listener]]\naddress = \"127.0.0.1:2\"\nprotocols = []\n";
        let e = Config::parse(text, "f").unwrap_err();
        match e {
            ConfigError::Invalid { key, line, .. } => {
                assert_eq!(key, "listener[1].protocols");
                assert_eq!(line, 7);
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn type_error_names_the_key() {
        let text = "[dns]\ntimeout_ms = \"soon\"\n";
        let e = Config::parse(text, "f").unwrap_err().to_string();
        assert!(e.contains("f:2: key `dns.timeout_ms`"), "{e}");
    }

    #[test]
    fn ttl_clamp_order_is_checked() {
        let text = "[[listener]]\naddress = \"127.0.0.1:1\"\nprotocols = [\"http\"]\n[dns]\nmin_ttl_seconds = 10\nmax_ttl_seconds = 5\n";
        let e = Config::parse(text, "f").unwrap_err().to_string();
        assert!(
            e.contains("dns.max_ttl_seconds") && e.contains("f:6"),
            "{e}"
        );
    }

    #[test]
    fn pipe_size_is_bounded_and_zero_means_kernel_default() {
        let base = "[[listener]]\naddress = \"127.0.0.1:1\"\nprotocols = [\"http\"]\n[tunnel]\n";
        let e = Config::parse(&format!("{base}pipe_size_bytes = 100\n"), "f")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("f:5") && e.contains("tunnel.pipe_size_bytes"),
            "{e}"
        );
        let c = Config::parse(&format!("{base}pipe_size_bytes = 0\nmax_pipes = 0\n"), "f").unwrap();
        assert_eq!((c.tunnel.pipe_size_bytes, c.tunnel.max_pipes), (0, Some(0)));
        assert_eq!(Config::embedded().tunnel.pipe_size_bytes, DEFAULT_PIPE_SIZE);
    }
}
