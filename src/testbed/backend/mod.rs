//! Loopback TCP/HTTP backends that identify themselves.
//!
//! Per connection the first line decides the protocol:
//! * `WHO` → writes `<name>\n` and closes;
//! * `ECHO` → echoes every further byte until EOF;
//! * an HTTP/1.x request line → HTTP/1.1 with keep-alive (see [`Backend`]).

use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::blob_byte;

mod http;
use http::{is_http_request_line, read_line, serve_http};

const MAX_LINE: u64 = 64 * 1024;
const MAX_HEAD: usize = 256 * 1024;

struct Inner {
    addr: SocketAddr,
    name: String,
    hits: AtomicU64,
    last_head: Mutex<String>,
    /// The listener lives here (not in the accept task) so `stop()` can close
    /// it synchronously.
    listener: Mutex<Option<TcpListener>>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
    /// Bumped to make every open connection close.
    kill: watch::Sender<u64>,
}

/// A TCP server on a loopback address that identifies itself by name.
///
/// HTTP routes (every response carries `X-Backend: <name>`):
/// * `GET /` → `<name>\n`
/// * `GET /blob/<n>` → n bytes, byte i = `(i * 31 + 7) % 251`
/// * `POST /echo` → the request body (Content-Length or chunked)
/// * `GET /status/<code>` → that status, body `<name>\n`
/// * anything else → 404.
///
/// `HEAD` is accepted for all routes. `Connection: close` (or HTTP/1.0
/// without keep-alive) closes after the response.
pub struct Backend {
    inner: Arc<Inner>,
}

fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    assert!(
        addr.ip().is_loopback(),
        "test backends may only bind loopback addresses, got {addr}"
    );
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(1024)
}

impl Backend {
    /// Start a backend on `ip:port` (port 0 = ephemeral).
    pub async fn start(ip: IpAddr, port: u16, name: &str) -> io::Result<Backend> {
        Self::with_listener(bind_listener(SocketAddr::new(ip, port))?, name)
    }

    /// Serve on a listener that already exists (a blackhole that starts accepting, say).
    pub fn serve(listener: std::net::TcpListener, name: &str) -> io::Result<Backend> {
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        assert!(
            listener.local_addr()?.ip().is_loopback(),
            "test backends may only serve loopback"
        );
        Self::with_listener(listener, name)
    }

    fn with_listener(listener: TcpListener, name: &str) -> io::Result<Backend> {
        let addr = listener.local_addr()?;
        let (kill, _) = watch::channel(0u64);
        let inner = Arc::new(Inner {
            addr,
            name: name.to_string(),
            hits: AtomicU64::new(0),
            last_head: Mutex::new(String::new()),
            listener: Mutex::new(Some(listener)),
            accept_task: Mutex::new(None),
            kill,
        });
        spawn_accept(&inner);
        Ok(Backend { inner })
    }

    /// Start one backend per ip, all on the same (ephemeral) port.
    /// Panics if no common free port is found within 20 tries.
    pub async fn start_set(ips: &[IpAddr], names: &[&str]) -> (u16, Vec<Backend>) {
        assert!(!ips.is_empty(), "start_set needs at least one ip");
        assert_eq!(ips.len(), names.len(), "start_set: one name per ip");
        let mut last_err = None;
        'tries: for _ in 0..20 {
            let first = match Backend::start(ips[0], 0, names[0]).await {
                Ok(b) => b,
                Err(e) => panic!("start_set: cannot bind {}: {e}", ips[0]),
            };
            let port = first.addr().port();
            let mut set = vec![first];
            for (ip, name) in ips.iter().zip(names).skip(1) {
                match Backend::start(*ip, port, name).await {
                    Ok(b) => set.push(b),
                    Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                        last_err = Some(e);
                        continue 'tries; // drops (closes) `set`
                    }
                    Err(e) => panic!("start_set: cannot bind {ip}:{port}: {e}"),
                }
            }
            return (port, set);
        }
        panic!("start_set: no common free port after 20 tries: {last_err:?}");
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The name it answers with.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// HTTP requests served plus raw (`WHO`/`ECHO`) sessions.
    pub fn hits(&self) -> u64 {
        self.inner.hits.load(Ordering::SeqCst)
    }

    /// Request line and headers (CRLF-separated, without the final empty
    /// line) of the last HTTP request received.
    pub fn last_request_head(&self) -> String {
        self.inner.last_head.lock().unwrap().clone()
    }

    /// Close the listener: when this returns, new connects are refused.
    /// Established connections are left alone.
    pub fn stop(&self) {
        if let Some(listener) = self.inner.listener.lock().unwrap().take() {
            // A concurrently forked, not yet exec'd child (any test spawning
            // `curl`) holds a copy of every fd, which would keep the listener
            // alive past `close`. shutdown() acts on the socket itself: on
            // Linux SHUT_RD takes a listener out of LISTEN state at once.
            let _ = socket2::SockRef::from(&listener).shutdown(Shutdown::Read);
            drop(listener);
        }
        if let Some(task) = self.inner.accept_task.lock().unwrap().take() {
            task.abort();
        }
    }

    /// Re-bind the same address after `stop()` (no-op when running).
    pub fn restart(&self) -> io::Result<()> {
        let mut guard = self.inner.listener.lock().unwrap();
        if guard.is_some() {
            return Ok(());
        }
        *guard = Some(bind_listener(self.inner.addr)?);
        drop(guard);
        spawn_accept(&self.inner);
        Ok(())
    }

    /// Whether the listener is open.
    pub fn is_running(&self) -> bool {
        self.inner.listener.lock().unwrap().is_some()
    }

    /// Close every established connection (the listener stays as it is).
    pub fn drop_connections(&self) {
        self.inner.kill.send_modify(|g| *g += 1);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
        self.drop_connections();
    }
}

fn spawn_accept(inner: &Arc<Inner>) {
    let task_inner = inner.clone();
    let task = tokio::spawn(async move {
        loop {
            let accepted = poll_fn(|cx| {
                let guard = task_inner.listener.lock().unwrap();
                match guard.as_ref() {
                    None => Poll::Ready(None),
                    Some(l) => l.poll_accept(cx).map(Some),
                }
            })
            .await;
            match accepted {
                None => return, // stopped
                Some(Ok((stream, _peer))) => {
                    let conn_inner = task_inner.clone();
                    let mut kill = task_inner.kill.subscribe();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = handle_conn(&conn_inner, stream) => {}
                            _ = kill.changed() => {}
                        }
                    });
                }
                // e.g. EMFILE or an aborted handshake: back off, keep serving.
                Some(Err(_)) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    });
    if let Some(old) = inner.accept_task.lock().unwrap().replace(task) {
        old.abort();
    }
}

async fn handle_conn(inner: &Inner, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let Ok(Some(first)) = read_line(&mut rd).await else {
        return;
    };
    let line = first.trim_end_matches(['\r', '\n']);
    match line {
        "WHO" => {
            inner.hits.fetch_add(1, Ordering::SeqCst);
            let _ = wr.write_all(format!("{}\n", inner.name).as_bytes()).await;
            close_gracefully(rd, wr).await;
        }
        "ECHO" => {
            inner.hits.fetch_add(1, Ordering::SeqCst);
            let _ = tokio::io::copy_buf(&mut rd, &mut wr).await;
            let _ = wr.shutdown().await;
        }
        _ if is_http_request_line(line) => {
            let _ = serve_http(inner, line.to_string(), &mut rd, &mut wr).await;
            close_gracefully(rd, wr).await;
        }
        _ => {}
    }
}

/// Half-close, then drain the peer (bounded) so the close is a FIN, not a
/// RST that could destroy data the peer has not read yet.
async fn close_gracefully<R: AsyncBufRead + Unpin>(mut rd: R, mut wr: OwnedWriteHalf) {
    let _ = wr.shutdown().await;
    let mut sink = [0u8; 8192];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(n) = rd.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}
