//! The byte pipe between client and upstream once a tunnel is open: copies both ways until either
//! side closes or the tunnel idles out, and counts bytes each way.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
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

/// Marks the time of the last byte read on a stream, so one watchdog can close idle tunnels
/// without a timer per read.
struct Activity<'a, S> {
    inner: &'a mut S,
    last: Arc<AtomicU64>,
    epoch: Instant,
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
            let now = self.epoch.elapsed().as_millis() as u64;
            self.last.store(now, Ordering::Relaxed);
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

/// Copies `early` (bytes the client sent before the tunnel opened) to the upstream, then both
/// directions until either side is done or nothing moved for `idle`.
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
    let epoch = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut c = Activity {
        inner: client,
        last: last.clone(),
        epoch,
        bytes: 0,
    };
    let mut u = Activity {
        inner: upstream,
        last: last.clone(),
        epoch,
        bytes: 0,
    };
    let watchdog = async {
        loop {
            let seen = last.load(Ordering::Relaxed);
            let wake = epoch + Duration::from_millis(seen) + idle;
            tokio::time::sleep_until(wake).await;
            if last.load(Ordering::Relaxed) == seen {
                return;
            }
        }
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut c, &mut u) => {}
        _ = watchdog => { stats.idled_out = true; }
    }
    stats.up += c.bytes;
    stats.down += u.bytes;
    stats
}
