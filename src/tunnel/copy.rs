//! The portable way to move a tunnel's bytes: readiness first, then everything available through
//! a 64 KiB chunk borrowed from the worker thread's pool, so an idle tunnel holds no buffer.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpStream;

use super::Clock;

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

pub(super) async fn write_all(to: &TcpStream, mut data: &[u8]) -> std::io::Result<()> {
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

/// Moves everything `from` has right now to `to` through a pooled chunk. `Ok(true)` at end of
/// stream (after half-closing `to`).
pub(super) async fn copy_available(
    from: &TcpStream,
    to: &TcpStream,
    clock: &Clock,
    bytes: &AtomicU64,
) -> std::io::Result<bool> {
    let mut chunk = Chunk::take();
    loop {
        match from.try_read(chunk.buf()) {
            Ok(0) => {
                let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
                return Ok(true);
            }
            Ok(n) => {
                write_all(to, &chunk.buf()[..n]).await?;
                bytes.fetch_add(n as u64, Ordering::Relaxed);
                clock.touch();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

/// One direction (portable): wait until `from` is readable, borrow a chunk, move everything
/// available, give the chunk back; on end of stream, half-close `to`.
pub(super) async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    clock: &Clock,
    bytes: &AtomicU64,
) -> std::io::Result<()> {
    loop {
        from.readable().await?;
        if copy_available(from, to, clock, bytes).await? {
            return Ok(());
        }
    }
}
