//! The byte pipe between client and upstream once a tunnel is open: copies both ways until either
//! side closes or the tunnel idles out, and counts bytes each way.
//!
//! Plain-TCP clients take the fast path: both ends as tokio `TcpStream`s, each direction waiting
//! for readiness *without* holding a buffer. On Linux the bytes then move with splice(2) through a
//! 1 MiB pipe borrowed from a shared, budgeted pool (zero-copy: they never enter user space);
//! elsewhere, or past the budget, through a pooled 64 KiB buffer. An idle tunnel holds neither a pipe nor a buffer, so thousands
//! of idle chat connections cost little, and a busy one makes few, large syscalls. TLS clients
//! (the HTTPS-proxy listener) and TLS upstreams (HTTPS parents: `upstream`) use the generic copy
//! over their decrypting stream.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

mod copy;
mod upstream;
use copy::{pump, write_all};
#[cfg(target_os = "linux")]
use splice::{pump_splice, Unsupported, SPLICE_WORKS};
pub use upstream::Upstream;
#[cfg(target_os = "linux")]
mod pipes;
#[cfg(target_os = "linux")]
mod splice;

/// Bytes moved by a tunnel, and how it ended.
#[derive(Debug, Clone, Copy, Default)]
pub struct TunnelStats {
    /// Client to upstream.
    pub up: u64,
    /// Upstream to client.
    pub down: u64,
    /// True if the idle timeout closed it.
    pub idled_out: bool,
    /// True if the caller's stop signal closed it (its member went down, or the shutdown's
    /// deadline came): the bytes are still counted.
    pub stopped: bool,
}

/// How a tunnel moves bytes, from `[tunnel]`; read when the tunnel opens, so a reload applies to
/// new tunnels only.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// No bytes either way for this long closes the tunnel.
    pub idle: Duration,
    /// Capacity asked for each splice pipe (0: the kernel's default). Bigger pipes move more per
    /// syscall and wake-up.
    pub pipe_size: usize,
    /// Pipes the whole process may hold (pooled or busy); past it a direction copies through user
    /// space, so the kernel's per-user pipe budget is never exhausted. 0 turns splice off.
    pub max_pipes: usize,
}

impl Options {
    /// The options `[tunnel]` asks for; an unset `max_pipes` becomes the automatic budget.
    pub fn from_config(t: &crate::config::TunnelSection) -> Self {
        Self {
            idle: t.idle_timeout,
            pipe_size: t.pipe_size_bytes,
            max_pipes: t
                .max_pipes
                .unwrap_or_else(|| auto_max_pipes(t.pipe_size_bytes, user_pipe_pages())),
        }
    }
}

/// The kernel's soft budget of pipe pages per user (`fs.pipe-user-pages-soft`; 0 = none).
/// A user past it gets two-page pipes and may not grow them, so carousel stays well inside it.
fn user_pipe_pages() -> usize {
    std::fs::read_to_string("/proc/sys/fs/pipe-user-pages-soft")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(16_384)
}

/// Pipes of `pipe_size` bytes that fit in half of a per-user budget of `pages` 4 KiB pages (the
/// other half is left to everything else the user runs); at least 4, at most 4,096.
pub fn auto_max_pipes(pipe_size: usize, pages: usize) -> usize {
    const MOST: usize = 4096;
    if pages == 0 {
        return MOST;
    }
    let per_pipe = (if pipe_size == 0 { 64 * 1024 } else { pipe_size }).div_ceil(4096);
    (pages / 2 / per_pipe).clamp(4, MOST)
}

/// The idle clock both directions stamp.
struct Clock {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Clock {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }
    fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    /// Resolves once nothing moved for `idle`.
    async fn idle(&self, idle: Duration) {
        loop {
            let seen = self.last_ms.load(Ordering::Relaxed);
            tokio::time::sleep_until(self.epoch + Duration::from_millis(seen) + idle).await;
            if self.last_ms.load(Ordering::Relaxed) == seen {
                return;
            }
        }
    }
}

/// One direction: splice(2) where it works, the pooled-buffer copy otherwise.
async fn pump_any(
    from: &TcpStream,
    to: &TcpStream,
    clock: &Clock,
    bytes: &AtomicU64,
    opts: &Options,
) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    if opts.max_pipes > 0 && SPLICE_WORKS.load(Ordering::Relaxed) {
        match pump_splice(from, to, clock, bytes, opts).await {
            Err(Unsupported) => {
                tracing::warn!("splice(2) refused by the kernel; tunnels copy through user space");
                SPLICE_WORKS.store(false, Ordering::Relaxed);
            }
            Ok(r) => return r,
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = opts;
    pump(from, to, clock, bytes).await
}

/// The fast path: both ends plain TCP. `early` (bytes the client sent before the tunnel opened)
/// goes to the upstream first. The tunnel ends when both directions are done, when it idles out,
/// or when `stop` resolves.
pub async fn run_tcp(
    client: &TcpStream,
    upstream: &TcpStream,
    early: &[u8],
    opts: Options,
    stop: impl std::future::Future<Output = ()>,
) -> TunnelStats {
    let mut stats = TunnelStats::default();
    if !early.is_empty() {
        if write_all(upstream, early).await.is_err() {
            return stats;
        }
        stats.up += early.len() as u64;
    }
    let clock = Clock::new();
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let both = async {
        // A clean end of stream half-closes and waits for the other direction; an error ends both.
        let a = pump_any(client, upstream, &clock, &up, &opts);
        let b = pump_any(upstream, client, &clock, &down, &opts);
        tokio::pin!(a, b);
        let (mut a_done, mut b_done) = (false, false);
        while !(a_done && b_done) {
            tokio::select! {
                r = &mut a, if !a_done => { a_done = true; if r.is_err() { break; } }
                r = &mut b, if !b_done => { b_done = true; if r.is_err() { break; } }
            }
        }
    };
    tokio::select! {
        _ = both => {}
        _ = clock.idle(opts.idle) => stats.idled_out = true,
        _ = stop => stats.stopped = true,
    }
    stats.up += up.load(Ordering::Relaxed);
    stats.down += down.load(Ordering::Relaxed);
    stats
}

/// Marks the time of the last byte read on a stream for the generic path.
struct Activity<'a, S> {
    inner: &'a mut S,
    clock: &'a Clock,
    bytes: u64,
}

impl<S: AsyncRead + Unpin> AsyncRead for Activity<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut *self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.bytes += n as u64;
            self.clock.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Activity<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

/// The generic path for any stream (TLS clients): `copy_bidirectional` with the idle watchdog
/// and the caller's `stop`.
pub async fn run<C, U>(
    client: &mut C,
    upstream: &mut U,
    early: &[u8],
    idle: Duration,
    stop: impl std::future::Future<Output = ()>,
) -> TunnelStats
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut stats = TunnelStats::default();
    if !early.is_empty() {
        if upstream.write_all(early).await.is_err() {
            return stats;
        }
        stats.up += early.len() as u64;
    }
    let clock = Clock::new();
    let mut c = Activity {
        inner: client,
        clock: &clock,
        bytes: 0,
    };
    let mut u = Activity {
        inner: upstream,
        clock: &clock,
        bytes: 0,
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut c, &mut u) => {}
        _ = clock.idle(idle) => stats.idled_out = true,
        _ = stop => stats.stopped = true,
    }
    stats.up += c.bytes;
    stats.down += u.bytes;
    stats
}

/// A second handle on a plain-TCP Pingora client stream, for the fast path: the Pingora stream
/// must not be read or written afterwards (it stays alive only to be dropped with the tunnel).
/// `None` for TLS and other non-TCP streams. Listeners are unbuffered, so no bytes hide in
/// Pingora's buffers once the handshake has been read.
pub fn tcp_of(stream: &pingora::protocols::Stream) -> Option<TcpStream> {
    use std::os::fd::{AsRawFd, BorrowedFd};
    let l4 = stream
        .as_any()
        .downcast_ref::<pingora::protocols::l4::stream::Stream>()?;
    let fd = l4.as_raw_fd();
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` belongs to `l4`, which `stream` keeps open for the whole of this call; the
    // borrow is only used to duplicate it into a descriptor we own.
    let owned = unsafe { BorrowedFd::borrow_raw(fd) }
        .try_clone_to_owned()
        .ok()?;
    // The duplicate shares the open file description, and with it O_NONBLOCK (tokio set it on
    // the original), so no further system call is needed before handing it to tokio.
    TcpStream::from_std(std::net::TcpStream::from(owned)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// The default pipe size, a budget no test exhausts, and `idle`.
    fn opts_with_idle(idle: Duration) -> Options {
        Options {
            idle,
            pipe_size: crate::config::DEFAULT_PIPE_SIZE,
            max_pipes: 64,
        }
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn fast_path_is_byte_exact_both_ways_and_half_closes() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut server) = pair().await;
        let tunnel = tokio::spawn(async move {
            run_tcp(
                &client_side,
                &upstream_side,
                b"early ",
                opts_with_idle(Duration::from_secs(5)),
                std::future::pending(),
            )
            .await
        });
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let p = payload.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&p).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(&got[..6], b"early ");
        assert_eq!(&got[6..], &payload[..]);
        server.write_all(b"reply").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"reply");
        let stats = tunnel.await.unwrap();
        assert_eq!(stats.up, 6 + payload.len() as u64);
        assert_eq!(stats.down, 5);
        assert!(!stats.idled_out);
    }

    #[test]
    fn pipe_budget_stays_inside_half_the_user_allowance() {
        // Linux default: 16,384 pages per user.
        assert_eq!(auto_max_pipes(1 << 20, 16_384), 32);
        assert_eq!(auto_max_pipes(0, 16_384), 512);
        assert_eq!(auto_max_pipes(256 << 10, 16_384), 128);
        assert_eq!(auto_max_pipes(1 << 20, 100), 4);
        assert_eq!(auto_max_pipes(4096, 0), 4096);
    }

    /// A pipe gets the asked capacity where the kernel allows it (up to fs.pipe-max-size for an
    /// unprivileged process), and a pooled pipe of another size is not handed out again.
    #[cfg(target_os = "linux")]
    #[test]
    fn pipes_get_the_asked_capacity() {
        let limit: usize = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20);
        let big = pipes::Pipe::take(1 << 20, usize::MAX).unwrap().unwrap();
        assert!(big.capacity >= (1 << 20).min(limit), "{}", big.capacity);
        big.give();
        let small = pipes::Pipe::take(64 << 10, usize::MAX).unwrap().unwrap();
        assert_eq!(small.capacity, 64 << 10);
    }

    /// With the pipe budget spent, a splice direction still moves every byte (by copying), and
    /// the copy rounds are counted.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_spent_pipe_budget_falls_back_to_copying() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut server) = pair().await;
        // A size no other test asks for, so no pooled pipe can serve it: the budget of 0 decides.
        let opts = Options {
            max_pipes: 0,
            pipe_size: 3 * 4096,
            ..opts_with_idle(Duration::from_secs(5))
        };
        let spent = || crate::metrics::metrics().tunnel_pipe_budget_spent.get();
        let before = spent();
        let moved = tokio::spawn(async move {
            let (clock, bytes) = (Clock::new(), AtomicU64::new(0));
            let r = pump_splice(&client_side, &upstream_side, &clock, &bytes, &opts).await;
            (r.is_ok_and(|r| r.is_ok()), bytes.load(Ordering::Relaxed))
        });
        let payload: Vec<u8> = (0..500_000u32).map(|i| (i % 253) as u8).collect();
        client.write_all(&payload).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, payload);
        assert_eq!(moved.await.unwrap(), (true, payload.len() as u64));
        assert!(spent() > before, "no copy round was counted");
    }

    #[tokio::test]
    async fn idle_tunnels_close() {
        let (_client, client_side) = pair().await;
        let (upstream_side, _server) = pair().await;
        let stats = run_tcp(
            &client_side,
            &upstream_side,
            b"",
            opts_with_idle(Duration::from_millis(100)),
            std::future::pending(),
        )
        .await;
        assert!(stats.idled_out);
    }

    /// Hardening (issue 26, item 11): a tunnel closed from outside (its member marked down) was
    /// logged with 0 bytes each way whatever it had carried.
    #[tokio::test]
    async fn a_stopped_tunnel_keeps_its_byte_counts() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut server) = pair().await;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let tunnel = tokio::spawn(async move {
            run_tcp(
                &client_side,
                &upstream_side,
                b"",
                opts_with_idle(Duration::from_secs(30)),
                async {
                    let _ = stop_rx.await;
                },
            )
            .await
        });
        client.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.unwrap();
        server.write_all(&[7u8; 27]).await.unwrap();
        let mut back = [0u8; 27];
        client.read_exact(&mut back).await.unwrap();
        stop_tx.send(()).unwrap();
        let stats = tunnel.await.unwrap();
        assert!(stats.stopped && !stats.idled_out);
        assert_eq!((stats.up, stats.down), (5, 27));
    }
}
