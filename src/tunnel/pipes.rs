//! splice(2) plumbing: a bounded pool of kernel pipes and the two moves (socket → pipe,
//! pipe → socket).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Empty pipes kept for reuse (each is two descriptors).
const POOL: usize = 64;

/// Pipes that exist in the process (pooled or busy), held against `Options::max_pipes`.
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// Empty pipes, shared by all worker threads so an idle pipe on one thread never counts
/// against the budget while another thread has to copy. Held only for a push or a pop.
static IDLE: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

fn idle() -> std::sync::MutexGuard<'static, Vec<Pipe>> {
    // A panic while holding the lock cannot leave the Vec inconsistent: use it anyway.
    IDLE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A pipe with nothing in it (only empty pipes go back to the pool).
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// The capacity that was asked for (pooled pipes of another size are not reused).
    asked: usize,
    /// The capacity the kernel granted: the most one splice call moves.
    pub capacity: usize,
}

impl Drop for Pipe {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
        crate::metrics::metrics().tunnel_pipes.dec();
    }
}

impl Pipe {
    /// A pipe of `size` bytes from the pool or new; `None` when `max` pipes already exist.
    pub fn take(size: usize, max: usize) -> std::io::Result<Option<Pipe>> {
        loop {
            let pooled = idle().pop();
            match pooled {
                Some(p) if p.asked == size => return Ok(Some(p)),
                Some(_) => {} // another size (before a reload): closed
                None => break,
            }
        }
        if OPEN.fetch_add(1, Ordering::Relaxed) >= max {
            OPEN.fetch_sub(1, Ordering::Relaxed);
            return Ok(None);
        }
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            OPEN.fetch_sub(1, Ordering::Relaxed);
            return Err(std::io::Error::last_os_error());
        }
        crate::metrics::metrics().tunnel_pipes.inc();
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        if size > 0 {
            // Refused past fs.pipe-max-size or the user's pipe budget: the pipe keeps the
            // kernel's default size, which works, only with more calls per byte.
            // SAFETY: F_SETPIPE_SZ on a pipe descriptor we own; failure is a -1 return.
            let _ =
                unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
        }
        // SAFETY: F_GETPIPE_SZ on a pipe descriptor we own.
        let granted = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
        Ok(Some(Pipe {
            read,
            write,
            asked: size,
            capacity: if granted > 0 {
                granted as usize
            } else {
                64 * 1024
            },
        }))
    }

    /// Returns an empty pipe to the pool (or closes it when the pool is full).
    pub fn give(self) {
        let mut idle = idle();
        if idle.len() < POOL {
            idle.push(self);
        }
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

/// Moves what `from` has (up to `room` bytes) into the pipe; 0 means end of stream.
pub fn fill(from: &TcpStream, pipe: &Pipe, room: usize) -> std::io::Result<usize> {
    from.try_io(Interest::READABLE, || {
        splice(from.as_raw_fd(), pipe.write.as_raw_fd(), room)
    })
}

/// Moves up to `len` bytes from the pipe into `to`.
pub fn drain(pipe: &Pipe, to: &TcpStream, len: usize) -> std::io::Result<usize> {
    to.try_io(Interest::WRITABLE, || {
        splice(pipe.read.as_raw_fd(), to.as_raw_fd(), len)
    })
}
