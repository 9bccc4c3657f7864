//! Runs the real `carousel` binary on ephemeral loopback ports with a generated configuration.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// Loopback clients may go anywhere on loopback (test backends live on 127.0.0.x and ::1).
pub const DEFAULT_ACCESS: &str = r#"
[access]
allow_clients = ["127.0.0.0/8", "::1/128"]

[[access.rule]]
name = "tests"
action = "allow"
destinations = ["*", "127.0.0.0/8", "::1/128"]
"#;

/// A free loopback TCP port (bound then released), never one this process handed out before: the
/// kernel may give a released port to the next bind at once, and two listeners of one test then
/// collided ("address used by another listener").
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    for _ in 0..1000 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no port left that was not handed out before");
}

type Log = Arc<Mutex<Vec<String>>>;

/// A running carousel process; killed on drop.
pub struct Carousel {
    child: Child,
    /// HTTP (forward + CONNECT) listener.
    pub http: SocketAddr,
    /// SOCKS listener.
    pub socks: SocketAddr,
    /// Listener with both protocols, told apart by the first byte.
    pub mixed: SocketAddr,
    /// Admin listener (metrics, status, PAC).
    pub admin: SocketAddr,
    /// The DNS server it uses.
    pub dns: SocketAddr,
    /// The open-file limit the process was started with (soft and hard), if not inherited.
    pub nofile: Option<u64>,
    /// Scratch directory with the config file and Pingora's pid/upgrade files.
    pub dir: PathBuf,
    /// The configuration file.
    pub config: PathBuf,
    /// Captured log lines (stdout and stderr), collected in the background.
    pub log: Log,
    /// Keys added to every `[[listener]]` (for example the PROXY protocol).
    pub listener_keys: String,
    /// Environment variables the process gets on top of the test's (e.g. `KRB5_CONFIG`).
    pub env: Vec<(String, String)>,
}

fn spawn(
    config: &Path,
    extra_args: &[&str],
    log: &Log,
    nofile: Option<u64>,
    env: &[(String, String)],
) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_carousel"));
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    if let Some(n) = nofile {
        // SAFETY: setrlimit is async-signal-safe and touches only the struct passed to it.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd
        .args(["run", "-c"])
        .arg(config)
        .args(extra_args)
        .env("RUST_LOG", "info,carousel=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn carousel");
    let stderr = child.stderr.take().expect("stderr");
    let stdout = child.stdout.take().expect("stdout");
    let sink = log.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });
    let sink = log.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });
    child
}

impl Carousel {
    /// The configuration text the harness uses: its listeners, `access`, then `extra`.
    pub fn config_text(&self, access: &str, extra: &str) -> String {
        let dir = self.dir.display();
        format!(
            r#"
[server]
threads = 2
grace_period_seconds = 1
graceful_shutdown_timeout_seconds = 1
handshake_timeout_ms = 1000
pid_file = "{dir}/carousel.pid"
upgrade_sock = "{dir}/upgrade.sock"

[[listener]]
address = "{http}"
protocols = ["http"]
{keys}

[[listener]]
address = "{socks}"
protocols = ["socks"]
{keys}

[[listener]]
address = "{mixed}"
protocols = ["http", "socks"]
{keys}

[dns]
nameservers = ["{dns}"]
timeout_ms = 500
attempts = 1
min_ttl_seconds = 1
max_ttl_seconds = 60
negative_ttl_seconds = 1
stale_seconds = 5
ip_strategy = "ipv4_and_ipv6"

[dial]
connect_timeout_ms = 300
deadline_ms = 3000
max_attempts = 8
failure_memory_seconds = 30

[tunnel]
idle_timeout_seconds = 30

[admin]
address = "{admin}"

{access}

{extra}
"#,
            http = self.http,
            socks = self.socks,
            mixed = self.mixed,
            dns = self.dns,
            admin = self.admin,
            keys = self.listener_keys,
        )
    }

    /// Starts carousel against the DNS server at `dns` with access open to loopback clients and
    /// destinations (what the functional tests need), waiting until every listener accepts.
    pub async fn start(dns: SocketAddr, extra: &str) -> Carousel {
        Self::start_with_access(dns, DEFAULT_ACCESS, extra).await
    }

    /// Like `start`, with `access` replacing the `[access]` section and its rules.
    pub async fn start_with_access(dns: SocketAddr, access: &str, extra: &str) -> Carousel {
        Self::start_custom(dns, access, "", extra).await
    }

    /// Like `start_with_access`, with `listener_keys` added to every `[[listener]]`.
    pub async fn start_custom(
        dns: SocketAddr,
        access: &str,
        listener_keys: &str,
        extra: &str,
    ) -> Carousel {
        Self::start_full(dns, access, listener_keys, extra, None).await
    }

    /// Like `start`, in a process whose open-file limit (soft and hard) is `nofile`.
    pub async fn start_with_nofile(dns: SocketAddr, extra: &str, nofile: u64) -> Carousel {
        Self::start_full(dns, DEFAULT_ACCESS, "", extra, Some(nofile)).await
    }

    /// The general form of the `start` functions.
    pub async fn start_full(
        dns: SocketAddr,
        access: &str,
        listener_keys: &str,
        extra: &str,
        nofile: Option<u64>,
    ) -> Carousel {
        Self::start_env(dns, access, listener_keys, extra, nofile, &[]).await
    }

    /// Like `start_full`, with `env` set for the process.
    pub async fn start_env(
        dns: SocketAddr,
        access: &str,
        listener_keys: &str,
        extra: &str,
        nofile: Option<u64>,
        env: &[(String, String)],
    ) -> Carousel {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("carousel-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let addr = || -> SocketAddr { format!("127.0.0.1:{}", free_port()).parse().unwrap() };
        let log: Log = Arc::new(Mutex::new(Vec::new()));
        let config = dir.join("carousel.toml");
        let mut c = Carousel {
            child: Command::new("true").spawn().expect("placeholder"),
            http: addr(),
            socks: addr(),
            mixed: addr(),
            admin: addr(),
            dns,
            dir,
            config,
            log,
            listener_keys: listener_keys.to_string(),
            nofile,
            env: env.to_vec(),
        };
        std::fs::write(&c.config, c.config_text(access, extra)).expect("write config");
        c.child = spawn(&c.config, &[], &c.log, c.nofile, &c.env);
        for addr in [c.http, c.socks, c.mixed, c.admin] {
            c.wait_listening(addr).await;
        }
        c
    }

    /// Replaces the configuration file (for reload tests).
    pub fn rewrite(&self, text: &str) {
        std::fs::write(&self.config, text).expect("rewrite config");
    }

    /// Starts a second process that takes the listeners over (`carousel run -u`), sharing this
    /// one's log; returns once it waits on the upgrade socket.
    pub async fn spawn_upgrade(&self) -> Child {
        let sock = self.dir.join("upgrade.sock");
        let _ = std::fs::remove_file(&sock);
        let child = spawn(&self.config, &["-u"], &self.log, self.nofile, &self.env);
        for _ in 0..200 {
            if sock.exists() {
                return child;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "the new process never opened {}:\n{}",
            sock.display(),
            self.log_text()
        );
    }

    /// Waits (bounded) for the process to exit; returns its exit status code if it did.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(status)) => Some(status.code().unwrap_or(-1)),
            _ => None,
        }
    }

    /// Waits (bounded: 10 s) until `addr` accepts connections: the readiness signal of a listener.
    pub async fn wait_listening(&self, addr: SocketAddr) {
        for _ in 0..400 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "carousel did not listen on {addr}; log:\n{}",
            self.log_text()
        );
    }

    /// Waits (bounded: 5 s) until the captured log contains `needle`; log lines arrive through a
    /// pipe read in the background, so a line may trail the event that caused it.
    pub async fn wait_log(&self, needle: &str) -> bool {
        for _ in 0..100 {
            if self.log_text().contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Waits (bounded: 5 s) until at least `n` captured lines contain `needle` (access lines are
    /// written by a thread of their own, in batches), then returns the whole log.
    pub async fn wait_log_lines(&self, needle: &str, n: usize) -> String {
        for _ in 0..100 {
            let log = self.log_text();
            if log.lines().filter(|l| l.contains(needle)).count() >= n {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.log_text()
    }

    /// Everything carousel logged so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// GET `path` on the admin listener; returns (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.admin)
            .await
            .expect("admin connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("admin write");
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("admin timeout")
            .expect("admin read");
        let text = String::from_utf8_lossy(&out).to_string();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// The value of the metric series `series` (exact text before the value), or 0 if absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.admin_get("/metrics").await;
        super::metric_in(&body, series)
    }

    /// Sends `signal` (e.g. "HUP") to the process.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Its resident memory now, in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }

    /// Its open descriptors now.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Carousel {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
