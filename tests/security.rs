//! The open-proxy suite: carousel lets through exactly what the configuration names. Clients
//! outside the allowed networks, disallowed and protected destinations, the proxy's own ports,
//! names resolving to protected addresses, missing and wrong credentials, SOCKS4 where a user is
//! required, limits, the TLS listener and request hygiene. Every refusal is checked for its exact
//! answer, and no password may appear in any log line.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use base64::Engine;
use support::proxy::Carousel;
use support::{curl, Backend, DnsServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

const PASSWORD: &str = "Tr0ub4dor&3-horse";
const NAME: &str = "chat.cluster.test";

fn ip4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

struct Fixture {
    _dns: DnsServer,
    port: u16,
    _backends: Vec<Backend>,
    proxy: Carousel,
}

/// A users file with alice/PASSWORD (bcrypt, cost 4 to keep tests quick).
fn users_file(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("htpasswd");
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    std::fs::write(&path, format!("alice:{hash}\n")).unwrap();
    path
}

async fn fixture(access: impl FnOnce(u16) -> String) -> Fixture {
    let dns = DnsServer::start().await;
    dns.set_a(NAME, &[ip4(11)], 30);
    dns.set_a(
        "meta.cluster.test",
        &[Ipv4Addr::new(169, 254, 169, 254)],
        30,
    );
    dns.set_a("other.test", &[ip4(11)], 30);
    let (port, backends) = Backend::start_set(&[IpAddr::V4(ip4(11))], &["b11"]).await;
    let proxy = Carousel::start_with_access(dns.addr(), &access(port), "").await;
    Fixture {
        _dns: dns,
        port,
        _backends: backends,
        proxy,
    }
}

async fn connect_from(src: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(IpAddr::V4(src), 0)).unwrap();
    s.connect(to).await.unwrap()
}

/// CONNECT from a client bound to `src`; returns the whole answer head (and body when the proxy
/// closes).
async fn connect_on(
    src: Ipv4Addr,
    proxy: SocketAddr,
    target: &str,
    auth: Option<(&str, &str)>,
) -> String {
    let mut s = connect_from(src, proxy).await;
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some((u, p)) = auth {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        head.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if out.starts_with(b"HTTP/1.1 200") && out.ends_with(b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

/// SOCKS5 CONNECT from a client bound to `src` (optionally with username/password); returns the
/// reply code, or 0xF0 + status when authentication itself failed, or 0xFF when no method was
/// acceptable.
async fn socks5_on(
    src: Ipv4Addr,
    proxy: SocketAddr,
    host: &str,
    port: u16,
    auth: Option<(&str, &str)>,
) -> u8 {
    let mut s = connect_from(src, proxy).await;
    let methods: &[u8] = if auth.is_some() {
        &[5, 2, 0, 2]
    } else {
        &[5, 1, 0]
    };
    s.write_all(methods).await.unwrap();
    let mut m = [0u8; 2];
    if s.read_exact(&mut m).await.is_err() {
        return 0xEE;
    }
    if m[1] == 0xFF {
        return 0xFF;
    }
    if m[1] == 2 {
        let (u, p) = auth.expect("server asked for credentials");
        let mut req = vec![1, u.len() as u8];
        req.extend_from_slice(u.as_bytes());
        req.push(p.len() as u8);
        req.extend_from_slice(p.as_bytes());
        s.write_all(&req).await.unwrap();
        let mut r = [0u8; 2];
        s.read_exact(&mut r).await.unwrap();
        if r[1] != 0 {
            return 0xF0 | (r[1] & 0x0F);
        }
    }
    let req = support::socks5_connect(host, port);
    s.write_all(&req).await.unwrap();
    let mut r = [0u8; 10];
    match timeout(Duration::from_secs(5), s.read_exact(&mut r)).await {
        Ok(Ok(_)) => r[1],
        _ => 0xEE,
    }
}

/// SOCKS4a CONNECT from a client bound to `src`; returns the reply code.
async fn socks4a_on(src: Ipv4Addr, proxy: SocketAddr, host: &str, port: u16) -> u8 {
    let mut s = connect_from(src, proxy).await;
    s.write_all(&support::socks4a_connect(host, port))
        .await
        .unwrap();
    let mut r = [0u8; 8];
    match timeout(Duration::from_secs(5), s.read_exact(&mut r)).await {
        Ok(Ok(_)) => r[1],
        _ => 0xEE,
    }
}

fn assert_no_password(proxy: &Carousel) {
    let log = proxy.log_text();
    assert!(!log.is_empty());
    assert!(!log.contains(PASSWORD), "a password appeared in the log");
    assert!(
        !log.contains("wrong-password"),
        "a password appeared in the log"
    );
    let token = base64::engine::general_purpose::STANDARD.encode(format!("alice:{PASSWORD}"));
    assert!(!log.contains(&token), "credentials appeared in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_outside_the_allowed_networks_are_refused() {
    let f = fixture(|_| {
        "[access]\nallow_clients = [\"127.0.0.1/32\"]\n[[access.rule]]\naction = \"allow\"\ndestinations = [\"127.0.0.0/8\"]\n".into()
    })
    .await;
    let outsider = ip4(2);
    let r = connect_on(
        outsider,
        f.proxy.http,
        &format!("127.0.0.11:{}", f.port),
        None,
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert_eq!(
        socks5_on(outsider, f.proxy.socks, "127.0.0.11", f.port, None).await,
        0x02
    );
    assert_eq!(
        socks4a_on(outsider, f.proxy.socks, NAME, f.port).await,
        0x5B
    );
    let out = curl(&[
        "--interface",
        "127.0.0.2",
        "-x",
        &format!("http://{}", f.proxy.http),
        "-w",
        "%{http_code}",
        &format!("http://127.0.0.11:{}/", f.port),
    ])
    .await;
    assert!(out.stdout_str().ends_with("403"), "{}", out.stdout_str());
    // The allowed client is served.
    let r = connect_on(
        ip4(1),
        f.proxy.http,
        &format!("127.0.0.11:{}", f.port),
        None,
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_listed_destinations_pass_and_protected_ones_need_explicit_rules() {
    let f = fixture(|port| {
        format!(
            "[access]\n[[access.rule]]\nname = \"block-other\"\naction = \"deny\"\ndestinations = [\"other.test\"]\n\
             [[access.rule]]\nname = \"cluster\"\naction = \"allow\"\ndestinations = [\".cluster.test\", \"127.0.0.11/32\"]\nports = [{port}]\n\
             [[access.rule]]\nname = \"anything-else\"\naction = \"allow\"\ndestinations = [\"*\"]\n"
        )
    })
    .await;
    let me = ip4(1);
    let ok = connect_on(me, f.proxy.http, &format!("{NAME}:{}", f.port), None).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    // A disallowed destination, by rule.
    let r = connect_on(me, f.proxy.http, &format!("other.test:{}", f.port), None).await;
    assert!(
        r.starts_with("HTTP/1.1 403") && r.contains("block-other"),
        "{r}"
    );
    assert_eq!(
        socks5_on(me, f.proxy.socks, "other.test", f.port, None).await,
        0x02
    );
    assert_eq!(
        socks4a_on(me, f.proxy.socks, "other.test", f.port).await,
        0x5B
    );
    // The right name on another port: not listed.
    let other_port = f.port.wrapping_add(1).max(1);
    let r = connect_on(me, f.proxy.http, &format!("127.0.0.11:{other_port}"), None).await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    // The metadata address, the admin port and carousel's own listener: "*" does not reach them.
    for target in [
        "169.254.169.254:80".to_string(),
        f.proxy.admin.to_string(),
        f.proxy.http.to_string(),
        "[::1]:80".into(),
    ] {
        let r = connect_on(me, f.proxy.http, &target, None).await;
        assert!(r.starts_with("HTTP/1.1 403"), "{target}: {r}");
    }
    assert_eq!(
        socks5_on(me, f.proxy.socks, "169.254.169.254", 80, None).await,
        0x02
    );
    assert_eq!(
        socks5_on(me, f.proxy.socks, "127.0.0.1", f.proxy.admin.port(), None).await,
        0x02
    );
    // A name that resolves to a protected address is refused after resolution.
    let r = connect_on(me, f.proxy.http, "meta.cluster.test:80", None).await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert_eq!(
        socks5_on(me, f.proxy.socks, "meta.cluster.test", 80, None).await,
        0x02
    );
    let out = curl(&[
        "-x",
        &format!("http://{}", f.proxy.http),
        "-w",
        "%{http_code}",
        "http://meta.cluster.test/latest/meta-data/",
    ])
    .await;
    assert!(out.stdout_str().ends_with("403"), "{}", out.stdout_str());
    // The access log says which rule decided, and what the client was sent (issue 21: a denied
    // CONNECT was logged `status=0` while the client got 403).
    for needle in [
        "denied by rule 0 (block-other)",
        "rule=\"rule 1 (cluster)\"",
        &format!(
            "connect other.test:{} cluster=- member=- attempts=0 outcome=denied status=403",
            f.port
        ),
        &format!(
            "socks5 other.test:{} cluster=- member=- attempts=0 outcome=denied status=2",
            f.port
        ),
        &format!(
            "socks4 other.test:{} cluster=- member=- attempts=0 outcome=denied status=91",
            f.port
        ),
        "outcome=denied status=403 up=0 down=0 ms=",
        "error=\"denied: no allowed address for meta.cluster.test\"",
    ] {
        assert!(
            f.proxy.wait_log(needle).await,
            "{needle} not logged:\n{}",
            f.proxy.log_text()
        );
    }
}

fn auth_access(users: &std::path::Path) -> String {
    format!(
        "[access]\nusers_file = \"{}\"\n[[access.rule]]\nname = \"staff\"\naction = \"allow\"\nusers = [\"alice\"]\ndestinations = [\"*\", \"127.0.0.0/8\"]\n",
        users.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_required_checked_and_never_logged() {
    let dir = std::env::temp_dir().join(format!("carousel-sec-{}", std::process::id()));
    let users = users_file(&dir);
    let f = fixture(|_| auth_access(&users)).await;
    let me = ip4(1);
    let target = format!("{NAME}:{}", f.port);
    // No credentials: 407 with a challenge; SOCKS5 without user/pass: not allowed; SOCKS4: rejected.
    let r = connect_on(me, f.proxy.http, &target, None).await;
    assert!(
        r.starts_with("HTTP/1.1 407") && r.contains("Proxy-Authenticate: Basic realm=\"carousel\""),
        "{r}"
    );
    let out = curl(&[
        "-x",
        &format!("http://{}", f.proxy.http),
        "-w",
        "%{http_code}",
        &format!("http://{target}/"),
    ])
    .await;
    assert!(out.stdout_str().ends_with("407"), "{}", out.stdout_str());
    assert_eq!(socks5_on(me, f.proxy.socks, NAME, f.port, None).await, 0x02);
    assert_eq!(socks4a_on(me, f.proxy.socks, NAME, f.port).await, 0x5B);
    // Wrong credentials: 407 again, SOCKS5 authentication failure.
    let r = connect_on(me, f.proxy.http, &target, Some(("alice", "wrong-password"))).await;
    assert!(r.starts_with("HTTP/1.1 407"), "{r}");
    assert_eq!(
        socks5_on(
            me,
            f.proxy.socks,
            NAME,
            f.port,
            Some(("alice", "wrong-password"))
        )
        .await
            & 0xF0,
        0xF0
    );
    // Right credentials: every protocol that can carry them is served.
    let r = connect_on(me, f.proxy.http, &target, Some(("alice", PASSWORD))).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(
        socks5_on(me, f.proxy.socks, NAME, f.port, Some(("alice", PASSWORD))).await,
        0
    );
    let with_user = format!(
        "http://alice:{}@{}",
        PASSWORD.replace('&', "%26"),
        f.proxy.http
    );
    let out = curl(&["-x", &with_user, &format!("http://{target}/")]).await;
    assert_eq!(out.stdout_str(), "b11\n", "{}", out.stderr);
    let out = curl(&["-p", "-x", &with_user, &format!("http://{target}/")]).await;
    assert_eq!(out.stdout_str(), "b11\n", "{}", out.stderr);
    let socks_user = format!(
        "socks5h://alice:{}@{}",
        PASSWORD.replace('&', "%26"),
        f.proxy.socks
    );
    let out = curl(&["-x", &socks_user, &format!("http://{target}/")]).await;
    assert_eq!(out.stdout_str(), "b11\n", "{}", out.stderr);
    let mut s = tokio_socks::tcp::Socks5Stream::connect_with_password(
        f.proxy.socks,
        (NAME, f.port),
        "alice",
        PASSWORD,
    )
    .await
    .unwrap();
    s.write_all(b"WHO\n").await.unwrap();
    let mut who = String::new();
    s.read_to_string(&mut who).await.unwrap();
    assert_eq!(who.trim(), "b11");
    assert!(f.proxy.metric("carousel_auth_failures_total").await >= 2.0);
    assert!(
        f.proxy.wait_log(" alice connect ").await,
        "the access log names the user"
    );
    assert_no_password(&f.proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_answer_fast_and_spare_open_tunnels() {
    let f = fixture(|_| {
        format!(
            "{}\n[limits]\nmax_connections = 100\nmax_connections_per_client = 2\n",
            support::proxy::DEFAULT_ACCESS
        )
    })
    .await;
    // An address of its own: the harness's readiness probes come from 127.0.0.1, and one still
    // being closed counts against 127.0.0.1's allowance for a moment (CI saw the second tunnel
    // refused so).
    let me = ip4(201);
    let target = format!("127.0.0.11:{}", f.port);
    // Two open tunnels use the client's allowance.
    let mut tunnels = Vec::new();
    for _ in 0..2 {
        let mut s = connect_from(me, f.proxy.http).await;
        s.write_all(format!("CONNECT {target} HTTP/1.1\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut head = [0u8; 39];
        s.read_exact(&mut head).await.unwrap();
        assert!(
            head.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        tunnels.push(s);
    }
    let r = connect_on(me, f.proxy.http, &target, None).await;
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    assert_eq!(
        socks5_on(me, f.proxy.socks, "127.0.0.11", f.port, None).await,
        0x01
    );
    assert_eq!(socks4a_on(me, f.proxy.socks, NAME, f.port).await, 0x5B);
    // Another client address has its own allowance.
    let r = connect_on(ip4(3), f.proxy.http, &target, None).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // The tunnels already open still work.
    for s in &mut tunnels {
        s.write_all(b"WHO\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert_eq!(out.trim(), "b11");
    }
    assert!(
        f.proxy
            .metric("carousel_overload_rejections_total{limit=\"per_client\"}")
            .await
            >= 3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_rejects_smuggling_shapes() {
    let f = fixture(|_| support::proxy::DEFAULT_ACCESS.to_string()).await;
    let p = f.port;
    for bad in [
        format!("POST http://127.0.0.11:{p}/echo HTTP/1.1\r\nHost: 127.0.0.11:{p}\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        format!("POST http://127.0.0.11:{p}/echo HTTP/1.1\r\nHost: 127.0.0.11:{p}\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
        format!("POST http://127.0.0.11:{p}/echo HTTP/1.1\r\nHost: 127.0.0.11:{p}\r\nContent-Length: 3x\r\n\r\nabc"),
    ] {
        let mut s = TcpStream::connect(f.proxy.http).await.unwrap();
        s.write_all(bad.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 400"), "{bad:?} → {text}");
    }
}

/// A CA and a server certificate for `localhost` / 127.0.0.1 signed by it.
fn make_ca(
    dir: &std::path::Path,
    tag: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("carousel test CA {tag}"));
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(ip4(1))));
    let cert = params.signed_by(&key, &issuer).unwrap();
    let ca_path = dir.join(format!("ca-{tag}.pem"));
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (ca_path, cert_path, key_path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_proxy_listener_serves_and_reloads_its_certificate() {
    let dir = std::env::temp_dir().join(format!("carousel-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca1, cert, key) = make_ca(&dir, "one");
    let tls_port = support::proxy::free_port();
    let dns = DnsServer::start().await;
    dns.set_a(NAME, &[ip4(11)], 30);
    let (port, _b) = Backend::start_set(&[IpAddr::V4(ip4(11))], &["b11"]).await;
    let extra = format!(
        "[[listener]]\naddress = \"127.0.0.1:{tls_port}\"\nprotocols = [\"http\"]\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
        cert.display(),
        key.display()
    );
    let proxy = Carousel::start(dns.addr(), &extra).await;
    proxy
        .wait_listening(format!("127.0.0.1:{tls_port}").parse().unwrap())
        .await;
    let https_proxy = format!("https://localhost:{tls_port}");
    let url = format!("http://{NAME}:{port}/");
    for mode in [&[][..], &["-p"][..]] {
        let mut args: Vec<&str> = mode.to_vec();
        args.extend([
            "--proxy",
            &https_proxy,
            "--proxy-cacert",
            ca1.to_str().unwrap(),
            &url,
        ]);
        let out = curl(&args).await;
        assert_eq!(out.stdout_str(), "b11\n", "{mode:?}: {}", out.stderr);
    }
    // A new certificate from another CA, picked up on SIGHUP without a restart.
    let (ca2, _, _) = make_ca(&dir, "two");
    proxy.signal("HUP");
    let reloaded = async {
        for _ in 0..100 {
            if proxy
                .metric("carousel_config_reloads_total{result=\"ok\"}")
                .await
                >= 1.0
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no reload seen");
    };
    reloaded.await;
    let out = curl(&[
        "--proxy",
        &https_proxy,
        "--proxy-cacert",
        ca2.to_str().unwrap(),
        &url,
    ])
    .await;
    assert_eq!(out.stdout_str(), "b11\n", "new CA: {}", out.stderr);
    let out = curl(&[
        "--proxy",
        &https_proxy,
        "--proxy-cacert",
        ca1.to_str().unwrap(),
        &url,
    ])
    .await;
    assert_ne!(out.status, 0, "the old certificate is still served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_file_is_reloaded_on_sighup() {
    let dir = std::env::temp_dir().join(format!("carousel-sec-reload-{}", std::process::id()));
    let users = users_file(&dir);
    let f = fixture(|_| auth_access(&users)).await;
    let target = format!("{NAME}:{}", f.port);
    let me = ip4(1);
    let r = connect_on(me, f.proxy.http, &target, Some(("alice", PASSWORD))).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // The password changes in the file; after SIGHUP only the new one works.
    let hash = bcrypt::hash("n3w-secret", 4).unwrap();
    std::fs::write(&users, format!("alice:{hash}\n")).unwrap();
    f.proxy.signal("HUP");
    for _ in 0..100 {
        if f.proxy
            .metric("carousel_config_reloads_total{result=\"ok\"}")
            .await
            >= 1.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = connect_on(me, f.proxy.http, &target, Some(("alice", PASSWORD))).await;
    assert!(
        r.starts_with("HTTP/1.1 407"),
        "old password still accepted: {r}"
    );
    let r = connect_on(me, f.proxy.http, &target, Some(("alice", "n3w-secret"))).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // Control characters in a header value are refused on the forwarding path.
    let mut s = TcpStream::connect(f.proxy.http).await.unwrap();
    s.write_all(
        format!("GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\nX-Evil: a\x01b\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
}
