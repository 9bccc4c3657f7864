//! The byte pipe between client and upstream once a tunnel is open: copies both ways until either
//! side closes or the tunnel idles out, and counts bytes each way.
//!
//! Plain-TCP clients take the fast path: both ends as tokio `TcpStream`s, each direction waiting
//! for readiness *without* holding a buffer. On Linux the bytes then move with splice(2) through a
//! pipe borrowed from a small per-thread pool (zero-copy: they never enter user space); elsewhere
//! through a pooled 64 KiB buffer. An idle tunnel holds neither a pipe nor a buffer, so thousands
//! of idle chat connections cost little, and a busy one makes few, large syscalls. TLS clients
//! (the HTTPS-proxy listener) use the generic copy over their decrypting stream.

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Bytes moved by a tunnel, and how it ended.
#[derive(Debug, Clone, Copy, Default)]
pub struct TunnelStats {
    /// Client to upstream.
    pub up: u64,
    /// Upstream to client.
    pub down: u64,
    /// True if the idle timeout closed it.
    pub idled_out: bool,
}

/// Size of one copy chunk.
const CHUNK: usize = 64 * 1024;
/// Buffers a worker thread keeps for reuse.
const POOL: usize = 16;

thread_local! {
    static BUFFERS: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A copy buffer borrowed from the thread's pool, returned on drop.
struct Chunk(Option<Box<[u8]>>);

impl Chunk {
    fn take() -> Self {
        let buf = BUFFERS
            .with(|b| b.borrow_mut().pop())
            .unwrap_or_else(|| vec![0u8; CHUNK].into_boxed_slice());
        Chunk(Some(buf))
    }
    fn buf(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().unwrap_or(&mut [])
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if let Some(buf) = self.0.take() {
            BUFFERS.with(|b| {
                let mut b = b.borrow_mut();
                if b.len() < POOL {
                    b.push(buf);
                }
            });
        }
    }
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

async fn write_all(to: &TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One direction (portable): wait until `from` is readable, borrow a chunk, move everything available,
/// give the chunk back; on end of stream, half-close `to`.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    clock: &Clock,
    bytes: &AtomicU64,
) -> std::io::Result<()> {
    loop {
        from.readable().await?;
        let mut chunk = Chunk::take();
        loop {
            match from.try_read(chunk.buf()) {
                Ok(0) => {
                    let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
                    return Ok(());
                }
                Ok(n) => {
                    write_all(to, &chunk.buf()[..n]).await?;
                    bytes.fetch_add(n as u64, Ordering::Relaxed);
                    clock.touch();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
}

/// splice(2) plumbing: a pipe pool and the two moves (socket → pipe, pipe → socket).
#[cfg(target_os = "linux")]
mod splice {
    use std::cell::RefCell;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use tokio::io::Interest;
    use tokio::net::TcpStream;

    /// Pipes a worker thread keeps for reuse (each is two descriptors).
    const POOL: usize = 16;
    /// Most bytes one splice call moves (the default pipe capacity).
    const MAX: usize = 64 * 1024;

    /// A pipe with nothing in it (only empty pipes go back to the pool).
    pub struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
    }

    thread_local! {
        static PIPES: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
    }

    impl Pipe {
        pub fn take() -> std::io::Result<Pipe> {
            if let Some(p) = PIPES.with(|p| p.borrow_mut().pop()) {
                return Ok(p);
            }
            let mut fds = [0; 2];
            // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
            Ok(unsafe {
                Pipe {
                    read: OwnedFd::from_raw_fd(fds[0]),
                    write: OwnedFd::from_raw_fd(fds[1]),
                }
            })
        }

        /// Returns an empty pipe to the pool.
        pub fn give(self) {
            PIPES.with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < POOL {
                    p.push(self);
                }
            });
        }
    }

    fn splice(from: i32, to: i32, len: usize) -> std::io::Result<usize> {
        let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
        // SAFETY: plain descriptors, null offsets (both are streams); errors come back as -1.
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                flags,
            )
        };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Moves what `from` has (up to one pipe's worth) into the pipe; 0 means end of stream.
    pub fn fill(from: &TcpStream, pipe: &Pipe) -> std::io::Result<usize> {
        from.try_io(Interest::READABLE, || {
            splice(from.as_raw_fd(), pipe.write.as_raw_fd(), MAX)
        })
    }

    /// Moves up to `len` bytes from the pipe into `to`.
    pub fn drain(pipe: &Pipe, to: &TcpStream, len: usize) -> std::io::Result<usize> {
        to.try_io(Interest::WRITABLE, || {
            splice(pipe.read.as_raw_fd(), to.as_raw_fd(), len)
        })
    }
}

/// The kernel does not splice these descriptors (nothing was moved yet).
#[cfg(target_os = "linux")]
struct Unsupported;

/// One direction with splice(2): wait until `from` is readable, borrow an empty pipe, move
/// everything available through it, give it back empty; on end of stream, half-close `to`.
#[cfg(target_os = "linux")]
async fn pump_splice(
    from: &TcpStream,
    to: &TcpStream,
    clock: &Clock,
    bytes: &AtomicU64,
) -> Result<std::io::Result<()>, Unsupported> {
    use std::io::ErrorKind::WouldBlock;
    let mut moved = false;
    loop {
        if let Err(e) = from.readable().await {
            return Ok(Err(e));
        }
        let pipe = match splice::Pipe::take() {
            Ok(p) => p,
            Err(_) if !moved => return Err(Unsupported),
            Err(e) => return Ok(Err(e)),
        };
        loop {
            let n = match splice::fill(from, &pipe) {
                Ok(0) => {
                    pipe.give();
                    let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
                    return Ok(Ok(()));
                }
                Ok(n) => n,
                Err(e) if e.kind() == WouldBlock => break,
                Err(e)
                    if !moved
                        && matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) =>
                {
                    return Err(Unsupported)
                }
                Err(e) => return Ok(Err(e)),
            };
            moved = true;
            let mut left = n;
            while left > 0 {
                match splice::drain(&pipe, to, left) {
                    Ok(m) => left -= m,
                    Err(e) if e.kind() == WouldBlock => {
                        if let Err(e) = to.writable().await {
                            return Ok(Err(e));
                        }
                    }
                    // The pipe may still hold bytes: it is dropped, never pooled.
                    Err(e) => return Ok(Err(e)),
                }
            }
            bytes.fetch_add(n as u64, Ordering::Relaxed);
            clock.touch();
        }
        pipe.give();
    }
}

/// Whether splice(2) works here; cleared the first time the kernel refuses it.
#[cfg(target_os = "linux")]
static SPLICE_WORKS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// One direction: splice(2) where it works, the pooled-buffer copy otherwise.
async fn pump_any(
    from: &TcpStream,
    to: &TcpStream,
    clock: &Clock,
    bytes: &AtomicU64,
) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    if SPLICE_WORKS.load(Ordering::Relaxed) {
        match pump_splice(from, to, clock, bytes).await {
            Err(Unsupported) => {
                tracing::warn!("splice(2) refused by the kernel; tunnels copy through user space");
                SPLICE_WORKS.store(false, Ordering::Relaxed);
            }
            Ok(r) => return r,
        }
    }
    pump(from, to, clock, bytes).await
}

/// The fast path: both ends plain TCP. `early` (bytes the client sent before the tunnel opened)
/// goes to the upstream first.
pub async fn run_tcp(
    client: &TcpStream,
    upstream: &TcpStream,
    early: &[u8],
    idle: Duration,
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
        let a = pump_any(client, upstream, &clock, &up);
        let b = pump_any(upstream, client, &clock, &down);
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
        _ = clock.idle(idle) => stats.idled_out = true,
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

/// The generic path for any stream (TLS clients): `copy_bidirectional` with the idle watchdog.
pub async fn run<C, U>(
    client: &mut C,
    upstream: &mut U,
    early: &[u8],
    idle: Duration,
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
    let std = std::net::TcpStream::from(owned);
    std.set_nonblocking(true).ok()?;
    TcpStream::from_std(std).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

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
                Duration::from_secs(5),
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

    #[tokio::test]
    async fn idle_tunnels_close() {
        let (_client, client_side) = pair().await;
        let (upstream_side, _server) = pair().await;
        let stats = run_tcp(
            &client_side,
            &upstream_side,
            b"",
            Duration::from_millis(100),
        )
        .await;
        assert!(stats.idled_out);
    }
}
