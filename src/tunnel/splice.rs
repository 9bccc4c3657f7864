//! One direction with splice(2): zero-copy through a pipe borrowed from the shared pool.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::net::TcpStream;

use super::copy::copy_available;
use super::pipes;
use super::{Clock, Options};

/// The kernel does not splice these descriptors (nothing was moved yet).
pub(super) struct Unsupported;

/// One direction with splice(2): wait until `from` is readable, borrow an empty pipe, then keep
/// both sockets flowing (fill the pipe while there is room and data, drain it while `to` takes
/// bytes, wait only when neither can move); give the pipe back once it is empty and `from` has
/// nothing more; on end of stream, half-close `to`.
pub(super) async fn pump_splice(
    from: &TcpStream,
    to: &TcpStream,
    clock: &Clock,
    bytes: &AtomicU64,
    opts: &Options,
) -> Result<std::io::Result<()>, Unsupported> {
    use std::io::ErrorKind::WouldBlock;
    let mut moved = false;
    loop {
        if let Err(e) = from.readable().await {
            return Ok(Err(e));
        }
        let pipe = match pipes::Pipe::take(opts.pipe_size, opts.max_pipes) {
            Ok(Some(p)) => p,
            // Every pipe the budget allows is busy: this round copies instead.
            Ok(None) => {
                crate::metrics::metrics().tunnel_pipe_budget_spent.inc();
                match copy_available(from, to, clock, bytes).await {
                    Ok(true) => return Ok(Ok(())),
                    Ok(false) => continue,
                    Err(e) => return Ok(Err(e)),
                }
            }
            Err(_) if !moved => return Err(Unsupported),
            Err(e) => return Ok(Err(e)),
        };
        // Bytes in the pipe, and whether `from` has ended.
        let (mut held, mut eof) = (0usize, false);
        loop {
            let mut progressed = false;
            if !eof && held < pipe.capacity {
                match pipes::fill(from, &pipe, pipe.capacity - held) {
                    Ok(0) => {
                        eof = true;
                        progressed = true;
                    }
                    Ok(n) => {
                        held += n;
                        moved = true;
                        progressed = true;
                        clock.touch();
                    }
                    Err(e) if e.kind() == WouldBlock => {}
                    Err(e)
                        if !moved
                            && matches!(
                                e.raw_os_error(),
                                Some(libc::EINVAL) | Some(libc::ENOSYS)
                            ) =>
                    {
                        return Err(Unsupported)
                    }
                    // The pipe may still hold bytes: it is dropped, never pooled.
                    Err(e) => return Ok(Err(e)),
                }
            }
            if held > 0 {
                match pipes::drain(&pipe, to, held) {
                    Ok(m) => {
                        held -= m;
                        bytes.fetch_add(m as u64, Ordering::Relaxed);
                        progressed = true;
                    }
                    Err(e) if e.kind() == WouldBlock => {}
                    Err(e) => return Ok(Err(e)),
                }
            }
            if held == 0 && eof {
                pipe.give();
                let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
                return Ok(Ok(()));
            }
            if progressed {
                continue;
            }
            if held == 0 {
                // Nothing to move: an idle direction holds no pipe.
                break;
            }
            let waited = if eof || held == pipe.capacity {
                to.writable().await
            } else {
                tokio::select! {
                    r = to.writable() => r,
                    r = from.readable() => r,
                }
            };
            if let Err(e) = waited {
                return Ok(Err(e));
            }
        }
        pipe.give();
    }
}

/// Whether splice(2) works here; cleared the first time the kernel refuses it.
pub(super) static SPLICE_WORKS: AtomicBool = AtomicBool::new(true);
