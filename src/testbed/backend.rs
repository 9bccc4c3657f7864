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

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::blob_byte;

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
        let listener = bind_listener(SocketAddr::new(ip, port))?;
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

fn is_http_request_line(line: &str) -> bool {
    let mut parts = line.split(' ');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(m), Some(t), Some(v), None)
            if !m.is_empty() && !t.is_empty() && v.starts_with("HTTP/1.")
    )
}

/// Read one line (with its terminator), bounded; Ok(None) on clean EOF.
async fn read_line<R: AsyncBufRead + Unpin>(rd: &mut R) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = rd.take(MAX_LINE).read_until(b'\n', &mut buf).await?;
    if n == 0 {
        return Ok(None);
    }
    if !buf.ends_with(b"\n") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "line too long or truncated",
        ));
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

struct Head {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

async fn serve_http<R: AsyncBufRead + Unpin>(
    inner: &Inner,
    mut request_line: String,
    rd: &mut R,
    wr: &mut OwnedWriteHalf,
) -> io::Result<()> {
    // Bounded by the peer: each iteration consumes one request.
    loop {
        let mut raw_head = request_line.clone();
        let mut headers = Vec::new();
        loop {
            let line = read_line(rd).await?.ok_or_else(|| bad("eof in head"))?;
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                break;
            }
            raw_head.push_str("\r\n");
            raw_head.push_str(line);
            if raw_head.len() > MAX_HEAD {
                return Err(bad("head too large"));
            }
            let (k, v) = line.split_once(':').ok_or_else(|| bad("bad header"))?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let mut parts = request_line.split(' ');
        let head = Head {
            method: parts.next().unwrap_or_default().to_string(),
            target: parts.next().unwrap_or_default().to_string(),
            version: parts.next().unwrap_or_default().to_string(),
            headers,
        };

        if head.header_has_token("expect", "100-continue") {
            wr.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let body = read_body(&head, rd).await?;

        let keep_alive = if head.version == "HTTP/1.0" {
            head.header_has_token("connection", "keep-alive")
        } else {
            !head.header_has_token("connection", "close")
        };

        *inner.last_head.lock().unwrap() = raw_head;
        inner.hits.fetch_add(1, Ordering::SeqCst);

        respond(inner, &head, body, keep_alive, wr).await?;
        if !keep_alive {
            return Ok(());
        }
        match read_line(rd).await? {
            None => return Ok(()),
            Some(l) => {
                let l = l.trim_end_matches(['\r', '\n']).to_string();
                if !is_http_request_line(&l) {
                    return Err(bad("not an HTTP request line"));
                }
                request_line = l;
            }
        }
    }
}

async fn read_body<R: AsyncBufRead + Unpin>(head: &Head, rd: &mut R) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if head.header_has_token("transfer-encoding", "chunked") {
        loop {
            let size_line = read_line(rd)
                .await?
                .ok_or_else(|| bad("eof in chunk size"))?;
            let size_str = size_line.trim().split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_str, 16).map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                // Trailers until the empty line (bounded by MAX_HEAD).
                let mut total = 0usize;
                loop {
                    let l = read_line(rd).await?.ok_or_else(|| bad("eof in trailers"))?;
                    total += l.len();
                    if l.trim_end_matches(['\r', '\n']).is_empty() || total > MAX_HEAD {
                        break;
                    }
                }
                return Ok(body);
            }
            let start = body.len();
            body.resize(start + size, 0);
            rd.read_exact(&mut body[start..]).await?;
            let crlf = read_line(rd).await?.ok_or_else(|| bad("eof after chunk"))?;
            if !crlf.trim_end_matches(['\r', '\n']).is_empty() {
                return Err(bad("missing CRLF after chunk"));
            }
        }
    } else if let Some(cl) = head.header("content-length") {
        let n: usize = cl.parse().map_err(|_| bad("bad content-length"))?;
        body.resize(n, 0);
        rd.read_exact(&mut body).await?;
    }
    Ok(body)
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

enum Body {
    Bytes(Vec<u8>),
    Blob(usize),
}

async fn respond(
    inner: &Inner,
    head: &Head,
    req_body: Vec<u8>,
    keep_alive: bool,
    wr: &mut OwnedWriteHalf,
) -> io::Result<()> {
    let path = head.target.split('?').next().unwrap_or("");
    let name_body = || Body::Bytes(format!("{}\n", inner.name).into_bytes());
    let (code, body) = if path == "/" {
        (200, name_body())
    } else if let Some(n) = path.strip_prefix("/blob/") {
        match n.parse::<usize>() {
            Ok(n) => (200, Body::Blob(n)),
            Err(_) => (400, Body::Bytes(b"bad blob size\n".to_vec())),
        }
    } else if path == "/echo" {
        (200, Body::Bytes(req_body))
    } else if let Some(c) = path.strip_prefix("/status/") {
        match c.parse::<u16>() {
            Ok(c) if (200..=599).contains(&c) => (c, name_body()),
            _ => (400, Body::Bytes(b"bad status\n".to_vec())),
        }
    } else {
        (404, Body::Bytes(b"not found\n".to_vec()))
    };
    let len = match &body {
        Body::Bytes(b) => b.len(),
        Body::Blob(n) => *n,
    };
    let mut out = format!(
        "HTTP/1.1 {code} {}\r\nX-Backend: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n",
        reason(code),
        inner.name
    );
    if !keep_alive {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    wr.write_all(out.as_bytes()).await?;
    if head.method == "HEAD" {
        return wr.flush().await;
    }
    match body {
        Body::Bytes(b) => wr.write_all(&b).await?,
        Body::Blob(n) => {
            let mut buf = Vec::with_capacity(64 * 1024);
            let mut i = 0usize;
            while i < n {
                buf.clear();
                let end = n.min(i + 64 * 1024);
                buf.extend((i..end).map(blob_byte));
                wr.write_all(&buf).await?;
                i = end;
            }
        }
    }
    wr.flush().await
}
