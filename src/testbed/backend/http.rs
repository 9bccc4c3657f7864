//! The HTTP/1.1 side of a test backend: routes, bodies (Content-Length or chunked), keep-alive.

use std::io;
use std::sync::atomic::Ordering;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;

use super::blob_byte;

use super::{Inner, MAX_HEAD, MAX_LINE};

pub(super) fn is_http_request_line(line: &str) -> bool {
    let mut parts = line.split(' ');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(m), Some(t), Some(v), None)
            if !m.is_empty() && !t.is_empty() && v.starts_with("HTTP/1.")
    )
}

/// Read one line (with its terminator), bounded; Ok(None) on clean EOF.
pub(super) async fn read_line<R: AsyncBufRead + Unpin>(rd: &mut R) -> io::Result<Option<String>> {
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

pub(super) async fn serve_http<R: AsyncBufRead + Unpin>(
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
