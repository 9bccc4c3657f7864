//! Enterprise identity (issue 22): Kerberos single sign-on with a real MIT KDC (realm
//! CAROUSEL.TEST on 127.0.0.1, principals and keytabs made by the test), and directory groups
//! with a real OpenLDAP slapd (users, groups, members changed at run time, the server stopped).
//! Clients: curl `--proxy-negotiate` (forward, CONNECT, the TLS listener), a python-gssapi
//! SOCKS5 client (RFC 1961), raw sockets replaying curl's own tokens.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::proxy::{free_port, Carousel};
use support::{curl, Backend, DnsServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/identity");
const PROXY_NAME: &str = "proxy.carousel.test";

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("carousel-identity-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run_script(script: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new("bash")
        .arg(format!("{FIXTURES}/{script}"))
        .args(args)
        .output()
        .expect("bash runs")
}

/// Kills the process whose pid is in `file`.
fn kill_pid_file(file: &Path) {
    if let Ok(pid) = std::fs::read_to_string(file) {
        let _ = std::process::Command::new("kill").arg(pid.trim()).status();
    }
}

/// An MIT KDC for CAROUSEL.TEST (`tests/identity/start-kdc.sh`).
struct Kdc {
    dir: PathBuf,
}

impl Kdc {
    fn start(tag: &str) -> Kdc {
        let dir = scratch(&format!("kdc-{tag}"));
        let port = free_port().to_string();
        let out = run_script("start-kdc.sh", &[&dir.display().to_string(), &port]);
        assert!(
            out.status.success(),
            "KDC: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Kdc { dir }
    }

    /// A ticket cache for `user` (password `<user>-pw`).
    fn kinit(&self, user: &str) -> PathBuf {
        let cc = self.dir.join(format!("{user}.ccache"));
        let out = run_script(
            "kinit.sh",
            &[
                &self.dir.display().to_string(),
                user,
                &format!("{user}-pw"),
                &cc.display().to_string(),
            ],
        );
        assert!(out.status.success(), "kinit {user}: {out:?}");
        cc
    }

    fn krb5_conf(&self) -> String {
        self.dir.join("krb5.conf").display().to_string()
    }

    /// What carousel needs from the environment: where the realm is, a replay cache of its own.
    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("KRB5_CONFIG".into(), self.krb5_conf()),
            ("KRB5RCACHEDIR".into(), self.dir.display().to_string()),
        ]
    }

    fn keytab(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Kdc {
    fn drop(&mut self) {
        kill_pid_file(&self.dir.join("kdc.pid"));
    }
}

/// An OpenLDAP slapd with users alice, bob, carol, dave and groups chat-users (alice, dave) and
/// staff (bob) (`tests/identity/start-slapd.sh`).
struct Slapd {
    dir: PathBuf,
    port: u16,
    ldaps: u16,
}

impl Slapd {
    fn start(tag: &str) -> Slapd {
        let s = Slapd {
            dir: scratch(&format!("ldap-{tag}")),
            port: free_port(),
            ldaps: free_port(),
        };
        s.run();
        s
    }

    fn run(&self) {
        let out = run_script(
            "start-slapd.sh",
            &[
                &self.dir.display().to_string(),
                &self.port.to_string(),
                &self.ldaps.to_string(),
            ],
        );
        assert!(
            out.status.success(),
            "slapd: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn stop(&self) {
        kill_pid_file(&self.dir.join("slapd.pid"));
    }

    fn add_member(&self, group: &str, user: &str) {
        let out = run_script(
            "ldap-add-member.sh",
            &[
                &self.dir.display().to_string(),
                &self.port.to_string(),
                group,
                user,
            ],
        );
        assert!(out.status.success(), "add {user} to {group}: {out:?}");
    }

    /// `[access.ldap]` over `tls`: "starttls" (ldap:// upgraded), "ldaps", or anything else for
    /// plain LDAP; the CA is the one slapd's certificate chains to.
    fn section(&self, ttl: u64, stale: u64, tls: &str) -> String {
        let (url, extra) = match tls {
            "starttls" => (
                format!("ldap://127.0.0.1:{}", self.port),
                "start_tls = true\n",
            ),
            "ldaps" => (format!("ldaps://127.0.0.1:{}", self.ldaps), ""),
            _ => (format!("ldap://127.0.0.1:{}", self.port), ""),
        };
        let ca = if extra.is_empty() && tls != "ldaps" {
            String::new()
        } else {
            format!("ca_file = \"{}/ca.pem\"\n", self.dir.display())
        };
        format!(
            "[access.ldap]\nurl = \"{url}\"\n{extra}{ca}\
             bind_dn = \"cn=carousel,dc=carousel,dc=test\"\n\
             bind_password_file = \"{dir}/bind.pw\"\n\
             base_dn = \"dc=carousel,dc=test\"\n\
             ttl_seconds = {ttl}\nstale_seconds = {stale}\ntimeout_ms = 1000\n",
            dir = self.dir.display()
        )
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// curl with Kerberos from `ccache` (no ticket: a cache that does not exist).
async fn krb_curl(kdc: &Kdc, ccache: &Path, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-q", "-sS", "--max-time", "20", "-o", "/dev/stdout"])
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .env("KRB5_CONFIG", kdc.krb5_conf())
        .env("KRB5CCNAME", format!("FILE:{}", ccache.display()))
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("all_proxy")
        .output()
        .await
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        out.status.code().unwrap_or(-1),
        body.trim().to_string(),
        format!("{code} {}", String::from_utf8_lossy(&out.stderr)),
    )
}

fn resolve(port: u16) -> String {
    format!("{PROXY_NAME}:{port}:127.0.0.1")
}

fn ip4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A certificate for `PROXY_NAME` signed by a fresh CA: (CA, cert, key) files.
fn make_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "carousel identity CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![PROXY_NAME.to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

fn kerberos_access(kdc: &Kdc, users: &str) -> String {
    format!(
        "[access]\nallow_clients = [\"127.0.0.0/8\"]\n\
         [access.kerberos]\nkeytab = \"{}\"\n\
         [[access.rule]]\naction = \"allow\"\nusers = [{users}]\ndestinations = [\"127.0.0.0/8\"]\n",
        kdc.keytab("proxy.keytab")
    )
}

/// Negotiate on forward, CONNECT and the TLS listener with curl, GSS-API on SOCKS5 (wrapped and
/// NEC-style): all served as alice@CAROUSEL.TEST, which the access log and the metrics say.
/// Without a ticket: 407 offering Negotiate; a ticket for another service: 407; a principal no
/// rule names: 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kerberos_signs_on_over_forward_connect_tls_and_socks5() {
    let kdc = Kdc::start("sso");
    let alice = kdc.kinit("alice");
    let bob = kdc.kinit("bob");
    let dir = scratch("sso-tls");
    let (ca, cert, key) = make_cert(&dir);
    let dns = DnsServer::start().await;
    let (port, _b) = Backend::start_set(&[ip4(1)], &["b1"]).await;
    let tls_port = free_port();
    let extra = format!(
        "[[listener]]\naddress = \"127.0.0.1:{tls_port}\"\nprotocols = [\"http\"]\n\
         tls = {{ cert = \"{}\", key = \"{}\" }}\n",
        cert.display(),
        key.display()
    );
    let proxy = Carousel::start_env(
        dns.addr(),
        &kerberos_access(&kdc, "\"alice@CAROUSEL.TEST\""),
        "",
        &extra,
        None,
        &kdc.env(),
    )
    .await;
    proxy
        .wait_listening(format!("127.0.0.1:{tls_port}").parse().unwrap())
        .await;
    let url = format!("http://127.0.0.1:{port}/");
    let http = format!("http://{PROXY_NAME}:{}", proxy.http.port());
    let https = format!("https://{PROXY_NAME}:{tls_port}");
    let r_http = resolve(proxy.http.port());
    let r_tls = resolve(tls_port);
    let ca = ca.display().to_string();
    let modes: Vec<(&str, Vec<&str>)> = vec![
        ("forward", vec!["-x", &http, "--resolve", &r_http]),
        ("connect", vec!["-p", "-x", &http, "--resolve", &r_http]),
        (
            "tls forward",
            vec!["-x", &https, "--proxy-cacert", &ca, "--resolve", &r_tls],
        ),
        (
            "tls connect",
            vec![
                "-p",
                "-x",
                &https,
                "--proxy-cacert",
                &ca,
                "--resolve",
                &r_tls,
            ],
        ),
    ];
    for (mode, args) in &modes {
        let mut a = vec!["--proxy-negotiate", "-U", ":"];
        a.extend(args.iter().copied());
        a.push(&url);
        let (rc, body, code) = krb_curl(&kdc, &alice, &a).await;
        assert_eq!(
            (rc, body.as_str()),
            (0, "b1"),
            "{mode}: {code}\n{}",
            proxy.log_text()
        );
        // No ticket: the 407 offers Negotiate.
        let none = kdc.dir.join("none.ccache");
        let mut a = vec!["-i", "--proxy-negotiate", "-U", ":"];
        a.extend(args.iter().copied());
        a.push(&url);
        let (_, body, code) = krb_curl(&kdc, &none, &a).await;
        assert!(
            code.starts_with("407") || body.contains(" 407 "),
            "{mode} without a ticket: {code} {body}"
        );
        assert!(
            body.contains("Proxy-Authenticate: Negotiate"),
            "{mode}: {body}"
        );
        // Bob has a valid ticket but no rule names him.
        let mut a = vec!["--proxy-negotiate", "-U", ":"];
        a.extend(args.iter().copied());
        a.push(&url);
        let (_, _, code) = krb_curl(&kdc, &bob, &a).await;
        assert!(
            code.starts_with("403") || code.contains("response 403"),
            "{mode} as bob: {code}"
        );
    }
    // A ticket for another service (HTTP/other.carousel.test, not in carousel's keytab).
    let other = format!("http://other.carousel.test:{}", proxy.http.port());
    let r_other = format!("other.carousel.test:{}:127.0.0.1", proxy.http.port());
    let (_, _, code) = krb_curl(
        &kdc,
        &alice,
        &[
            "--proxy-negotiate",
            "-U",
            ":",
            "-x",
            &other,
            "--resolve",
            &r_other,
            &url,
        ],
    )
    .await;
    assert!(code.starts_with("407"), "another service's ticket: {code}");
    // SOCKS5 with GSS-API, the protection message wrapped (RFC 1961) and bare (NEC).
    for style in ["rfc1961", "nec"] {
        let out = tokio::process::Command::new("/usr/bin/python3")
            .arg(format!("{FIXTURES}/socks5-gssapi-client.py"))
            .args([
                "127.0.0.1",
                &proxy.socks.port().to_string(),
                &format!("rcmd@{PROXY_NAME}"),
                "127.0.0.1",
                &port.to_string(),
                style,
            ])
            .env("KRB5_CONFIG", kdc.krb5_conf())
            .env("KRB5CCNAME", format!("FILE:{}", alice.display()))
            .output()
            .await
            .expect("python3-gssapi");
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("b1"),
            "socks5 gssapi {style}: {out:?}\n{}",
            proxy.log_text()
        );
    }
    // Without a ticket the SOCKS5 client is refused (the server's abort, exit 2).
    let out = tokio::process::Command::new("/usr/bin/python3")
        .arg(format!("{FIXTURES}/socks5-gssapi-client.py"))
        .args([
            "127.0.0.1",
            &proxy.socks.port().to_string(),
            "HTTP@other.carousel.test",
            "127.0.0.1",
            &port.to_string(),
        ])
        .env("KRB5_CONFIG", kdc.krb5_conf())
        .env("KRB5CCNAME", format!("FILE:{}", alice.display()))
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let log = proxy.wait_log_lines("alice@CAROUSEL.TEST", 6).await;
    for protocol in ["http ", "connect ", "socks5 "] {
        assert!(
            log.lines().any(|l| l.contains("alice@CAROUSEL.TEST")
                && l.contains(protocol)
                && l.contains("outcome=ok")),
            "no {protocol} line for alice\n{log}"
        );
    }
    let ok = proxy
        .metric("carousel_auth_total{result=\"ok\",scheme=\"negotiate\"}")
        .await;
    assert!(ok >= 4.0, "negotiate ok {ok}");
    let gss = proxy
        .metric("carousel_auth_total{result=\"ok\",scheme=\"socks5-gssapi\"}")
        .await;
    assert_eq!(gss, 2.0);
    assert!(
        !log.contains("YII"),
        "a token (base64 of an ASN.1 SPNEGO blob) reached the log"
    );
}

/// Reads one HTTP response head (and the body by Content-Length) from `s`.
async fn read_response(s: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .expect("response in time")
            .unwrap();
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
    }
    String::from_utf8_lossy(&buf).to_string()
}

/// A real Negotiate token for `HTTP/proxy.carousel.test`, never sent to carousel: curl talks to
/// a listener of the test's that answers 407 Negotiate and keeps what the retry carries.
async fn fresh_token(kdc: &Kdc, ccache: &Path) -> String {
    let grabber = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = grabber.local_addr().unwrap().port();
    let catch = tokio::spawn(async move {
        for _ in 0..2 {
            let (mut s, _) = grabber.accept().await.unwrap();
            let mut buf = vec![0u8; 65536];
            let n = s.read(&mut buf).await.unwrap();
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            if let Some(v) = head
                .lines()
                .find_map(|l| l.strip_prefix("Proxy-Authorization: "))
            {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
                return v.trim().to_string();
            }
            let _ = s
                .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Negotiate\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await;
        }
        panic!("curl never sent a token");
    });
    let proxy = format!("http://{PROXY_NAME}:{port}");
    let _ = krb_curl(
        kdc,
        ccache,
        &[
            "--proxy-negotiate",
            "-U",
            ":",
            "-x",
            &proxy,
            "--resolve",
            &resolve(port),
            "http://127.0.0.1:9/",
        ],
    )
    .await;
    tokio::time::timeout(Duration::from_secs(10), catch)
        .await
        .expect("token in time")
        .unwrap()
}

/// One handshake signs a keep-alive connection on: its later requests need no token, another
/// connection does. A replayed token, a truncated one, garbage: 407, counted, never logged; past
/// the failure budget the client is throttled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_signs_on_once_and_replayed_or_broken_tokens_get_407() {
    let kdc = Kdc::start("conn");
    let alice = kdc.kinit("alice");
    let dns = DnsServer::start().await;
    let (port, _b) = Backend::start_set(&[ip4(1)], &["b1"]).await;
    let access = kerberos_access(&kdc, "\"*\"").replace(
        "[access.kerberos]",
        "max_auth_failures_per_minute = 4\n[access.kerberos]",
    );
    let proxy = Carousel::start_env(dns.addr(), &access, "", "", None, &kdc.env()).await;
    let token = fresh_token(&kdc, &alice).await;
    assert!(token.starts_with("Negotiate "), "{token}");
    let get = |auth: Option<&str>| {
        let auth = auth
            .map(|a| format!("Proxy-Authorization: {a}\r\n"))
            .unwrap_or_default();
        format!("GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}\r\n")
    };
    let mut s = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    s.write_all(get(Some(&token)).as_bytes()).await.unwrap();
    let first = read_response(&mut s).await;
    assert!(
        first.starts_with("HTTP/1.1 200"),
        "{first}\n{}",
        proxy.log_text()
    );
    for i in 0..3 {
        s.write_all(get(None).as_bytes()).await.unwrap();
        let next = read_response(&mut s).await;
        assert!(
            next.starts_with("HTTP/1.1 200"),
            "request {i} on the signed-on connection: {next}"
        );
    }
    // A new connection is not signed on.
    let mut t = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    t.write_all(get(None).as_bytes()).await.unwrap();
    let r = read_response(&mut t).await;
    assert!(r.starts_with("HTTP/1.1 407"), "{r}");
    assert!(r.contains("Proxy-Authenticate: Negotiate\r\n"), "{r}");
    // The same token again: MIT's replay cache refuses it.
    let mut t = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    t.write_all(get(Some(&token)).as_bytes()).await.unwrap();
    let r = read_response(&mut t).await;
    assert!(r.starts_with("HTTP/1.1 407"), "replayed: {r}");
    assert!(
        proxy.wait_log("a replayed token").await,
        "{}",
        proxy.log_text()
    );
    // Truncated and garbage tokens.
    let truncated = &token[..token.len() / 2];
    for bad in [truncated, "Negotiate !!notbase64", "Negotiate AAAA"] {
        let mut t = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
        t.write_all(get(Some(bad)).as_bytes()).await.unwrap();
        let r = read_response(&mut t).await;
        assert!(r.starts_with("HTTP/1.1 407"), "{bad}: {r}");
    }
    // Four failures spent the budget: even a fresh, valid token is refused unchecked now.
    let valid = fresh_token(&kdc, &alice).await;
    let mut t = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    t.write_all(get(Some(&valid)).as_bytes()).await.unwrap();
    let r = read_response(&mut t).await;
    assert!(r.starts_with("HTTP/1.1 407"), "over budget: {r}");
    assert!(proxy.wait_log("too many failed logins").await);
    let invalid = proxy
        .metric("carousel_auth_total{result=\"invalid\",scheme=\"negotiate\"}")
        .await
        + proxy
            .metric("carousel_auth_total{result=\"malformed\",scheme=\"negotiate\"}")
            .await;
    assert!(invalid >= 4.0, "{invalid}");
    let log = proxy.log_text();
    let b64 = token.trim_start_matches("Negotiate ");
    assert!(!log.contains(&b64[..40]), "a token reached the log");
}

/// Rules by directory group: a member is allowed, others denied; a member added at run time is
/// allowed after the TTL; with slapd stopped, users looked up before keep their groups for the
/// stale time, new ones are denied with the reason logged and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_groups_decide_and_outlive_an_outage() {
    let ldap = Slapd::start("groups");
    let dir = scratch("groups-users");
    let users = dir.join("htpasswd");
    let mut text = String::new();
    for u in ["alice", "bob", "carol", "dave"] {
        text.push_str(&format!(
            "{u}:{}\n",
            bcrypt::hash(format!("{u}-pw"), 4).unwrap()
        ));
    }
    std::fs::write(&users, text).unwrap();
    let access = format!(
        "[access]\nallow_clients = [\"127.0.0.0/8\"]\nusers_file = \"{}\"\n{}\
         [[access.rule]]\nname = \"chat\"\naction = \"allow\"\ngroups = [\"chat-users\"]\ndestinations = [\"127.0.0.0/8\"]\n",
        users.display(),
        ldap.section(1, 60, "starttls")
    );
    let dns = DnsServer::start().await;
    let (port, _b) = Backend::start_set(&[ip4(1)], &["b1"]).await;
    let proxy = Carousel::start_with_access(dns.addr(), &access, "").await;
    let url = format!("http://127.0.0.1:{port}/");
    let http = format!("http://{}", proxy.http);
    let socks = format!("socks5h://{}", proxy.socks);
    let fetch = |user: &'static str, via: &str| {
        let via = via.to_string();
        let url = url.clone();
        async move {
            let creds = format!("{user}:{user}-pw");
            let out = curl(&[
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-x",
                &via,
                "-U",
                &creds,
                &url,
            ])
            .await;
            (out.status, out.stdout_str())
        }
    };
    assert_eq!(
        fetch("alice", &http).await,
        (0, "200".into()),
        "{}",
        proxy.log_text()
    );
    assert_eq!(fetch("alice", &socks).await.0, 0, "{}", proxy.log_text());
    assert_eq!(fetch("bob", &http).await.1, "403");
    assert_ne!(fetch("bob", &socks).await.0, 0);
    assert_eq!(fetch("carol", &http).await.1, "403");
    // carol joins chat-users: allowed once her cached groups are older than the TTL (1 s).
    ldap.add_member("chat-users", "carol");
    let start = Instant::now();
    loop {
        let code = fetch("carol", &http).await.1;
        if code == "200" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "carol never allowed: {code}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(start.elapsed() < Duration::from_secs(5));
    // The directory goes away. alice and carol were looked up: served stale. dave never was.
    ldap.stop();
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the 1 s TTL, on purpose
    assert_eq!(fetch("alice", &http).await.1, "200", "{}", proxy.log_text());
    assert_eq!(fetch("carol", &http).await.1, "200");
    assert_eq!(fetch("dave", &http).await.1, "403");
    assert!(
        proxy
            .wait_log("directory unavailable and no recent groups for dave")
            .await,
        "{}",
        proxy.log_text()
    );
    assert!(
        proxy
            .metric("carousel_directory_lookups_total{result=\"stale\"}")
            .await
            >= 2.0
    );
    assert!(
        proxy
            .metric("carousel_directory_lookups_total{result=\"unavailable\"}")
            .await
            >= 1.0
    );
    // Back up: dave is a member and is allowed.
    ldap.run();
    assert_eq!(fetch("dave", &http).await.1, "200", "{}", proxy.log_text());
    // One lookup per user and TTL: ten requests of alice's within it cost at most one search.
    let asked = proxy
        .metric("carousel_directory_lookups_total{result=\"ok\"}")
        .await;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..10 {
        set.spawn(fetch("alice", &http));
    }
    while let Some(r) = set.join_next().await {
        assert_eq!(r.unwrap().1, "200");
    }
    let after = proxy
        .metric("carousel_directory_lookups_total{result=\"ok\"}")
        .await;
    assert!(after - asked <= 1.0, "{asked} -> {after}");
}

/// `basic = "ldap"`: a Basic password is checked by a bind as the user; a wrong one gets 407
/// and, past the failure budget, the client is throttled even with the right one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_checked_by_an_ldap_bind_and_wrong_passwords_are_throttled() {
    let ldap = Slapd::start("bind");
    let access = format!(
        "[access]\nallow_clients = [\"127.0.0.0/8\"]\nbasic = \"ldap\"\nmax_auth_failures_per_minute = 3\n{}\
         [[access.rule]]\naction = \"allow\"\nusers = [\"*\"]\ndestinations = [\"127.0.0.0/8\"]\n",
        ldap.section(60, 60, "ldaps")
    );
    let dns = DnsServer::start().await;
    let (port, _b) = Backend::start_set(&[ip4(1)], &["b1"]).await;
    let proxy = Carousel::start_with_access(dns.addr(), &access, "").await;
    let url = format!("http://127.0.0.1:{port}/");
    let http = format!("http://{}", proxy.http);
    let code = |creds: &'static str| {
        let (url, http) = (url.clone(), http.clone());
        async move {
            curl(&[
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-x",
                &http,
                "-U",
                creds,
                &url,
            ])
            .await
            .stdout_str()
        }
    };
    assert_eq!(code("bob:bob-pw").await, "200", "{}", proxy.log_text());
    assert_eq!(code("nobody:x").await, "407");
    assert_eq!(
        code("bob:").await,
        "407",
        "an empty password must not bind anonymously"
    );
    for _ in 0..3 {
        assert_eq!(code("alice:wrong").await, "407");
    }
    assert_eq!(code("alice:alice-pw").await, "407", "throttled");
    assert!(proxy.wait_log("too many failed logins").await);
    assert!(
        !proxy.log_text().contains("alice-pw"),
        "a password reached the log"
    );
    assert!(!proxy.log_text().contains("svc-pw"));
}

/// A missing keytab, a keytab without the named principal, an unreadable bind password: clear
/// errors from `carousel check`, naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_files_are_checked_at_check_time() {
    let kdc = Kdc::start("check");
    let dir = scratch("check");
    let cases = [
        (
            "[access.kerberos]\nkeytab = \"/nonexistent/proxy.keytab\"\n".to_string(),
            "access.kerberos.keytab",
        ),
        (
            format!(
                "[access.kerberos]\nkeytab = \"{}\"\nservice_principal = \"HTTP/proxy.carousel.test\"\n",
                kdc.keytab("other.keytab")
            ),
            "access.kerberos.service_principal",
        ),
        (
            "[access.ldap]\nurl = \"ldap://127.0.0.1:1\"\nbind_dn = \"cn=x\"\nbind_password_file = \"/nonexistent\"\nbase_dn = \"dc=x\"\n".to_string(),
            "access.ldap.bind_password_file",
        ),
    ];
    for (section, key) in cases {
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            format!("[[listener]]\naddress = \"127.0.0.1:{}\"\nprotocols = [\"http\"]\n[access]\n{section}", free_port()),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_carousel"))
            .args(["check", "-c"])
            .arg(&file)
            .env("KRB5_CONFIG", kdc.krb5_conf())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{section}: {text}");
        assert!(text.contains(key), "{key} not named: {text}");
    }
    // The same keytab with the right principal passes.
    let file = dir.join("ok.toml");
    std::fs::write(
        &file,
        format!(
            "[[listener]]\naddress = \"127.0.0.1:{}\"\nprotocols = [\"http\"]\n[access]\n[access.kerberos]\nkeytab = \"{}\"\nservice_principal = \"HTTP/proxy.carousel.test\"\n",
            free_port(),
            kdc.keytab("proxy.keytab")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_carousel"))
        .args(["check", "-c"])
        .arg(&file)
        .env("KRB5_CONFIG", kdc.krb5_conf())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let _ = SocketAddr::from(([127, 0, 0, 1], 0));
}
