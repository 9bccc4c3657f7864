//! The access log: one line per request or tunnel, as text or JSON, to stdout or a file, for the
//! people who answer "who went where, through which member, and what happened". Credentials never
//! reach it: only the authenticated user name.
//!
//! The proxy's workers never write it themselves: a line is formatted and handed to a bounded
//! queue, and one thread of its own writes the queue out (buffered, flushed whenever the queue
//! runs dry, and at shutdown). A disk that stalls costs lines, counted in
//! `carousel_access_log_dropped_total`, never a stalled proxy thread.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, SystemTime};

use serde_json::json;

use crate::config::{AccessFormat, LogSection};
use crate::outcome::{ClientProtocol, Outcome};

/// One finished request.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    /// Client address.
    pub client: Option<IpAddr>,
    /// Authenticated user.
    pub user: Option<String>,
    /// What the client spoke.
    pub protocol: ClientProtocol,
    /// `host:port` as asked.
    pub target: String,
    /// The cluster that served it ("" if none).
    pub cluster: String,
    /// The address connected to.
    pub member: Option<SocketAddr>,
    /// Connect attempts.
    pub attempts: u32,
    /// How it ended.
    pub outcome: Outcome,
    /// The rule that allowed it ("" when none did).
    pub rule: String,
    /// Why it failed or was refused ("" when it was served).
    pub error: String,
    /// Bytes client → server.
    pub bytes_up: u64,
    /// Bytes server → client.
    pub bytes_down: u64,
    /// From request to end.
    pub duration: Duration,
    /// HTTP status for forwarded requests (0 for tunnels).
    pub status: u16,
}

/// Lines waiting for the writer at most; past it they are dropped (counted).
pub const QUEUE: usize = 65_536;

enum Msg {
    Line(String),
    /// Write everything before this, then say so.
    Flush(std::sync::mpsc::Sender<()>),
}

enum Sink {
    Off,
    Queue(SyncSender<Msg>),
}

/// Where access lines go.
pub struct AccessLog {
    sink: Sink,
    format: AccessFormat,
}

/// How long the writer sleeps when it found nothing to write: the most a line waits before it
/// is written (and a `flush` before it is answered).
const IDLE_NAP: Duration = Duration::from_millis(50);

/// How long it sleeps after writing: short, so a busy proxy's lines go out in batches.
const BUSY_NAP: Duration = Duration::from_millis(5);

/// The writer thread: every nap, writes out what the queue holds and flushes. It never blocks
/// on the queue, so a worker's `try_send` never has to wake it (a futex wake and a context
/// switch per line cost 10% of the connection rate on two cores: bench/relay.sh).
fn write_out(rx: Receiver<Msg>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    loop {
        let mut wrote = false;
        loop {
            match rx.try_recv() {
                Ok(Msg::Line(line)) => {
                    let _ = out.write_all(line.as_bytes());
                    wrote = true;
                }
                Ok(Msg::Flush(ack)) => {
                    let _ = out.flush();
                    let _ = ack.send(());
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        let _ = out.flush();
        std::thread::sleep(if wrote { BUSY_NAP } else { IDLE_NAP });
    }
}

impl AccessLog {
    /// Opens the configured destination.
    pub fn new(cfg: &LogSection) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = match cfg.access.as_str() {
            "off" => return Ok(Self::off()),
            "stdout" => Box::new(std::io::stdout()),
            path => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        Self::to_writer(out, QUEUE, cfg.access_format)
    }

    /// A log written to `out` by a thread of its own, with a queue of `queue` lines.
    pub fn to_writer(
        out: Box<dyn Write + Send>,
        queue: usize,
        format: AccessFormat,
    ) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel(queue);
        std::thread::Builder::new()
            .name("carousel access log".into())
            .spawn(move || write_out(rx, out))?;
        Ok(Self {
            sink: Sink::Queue(tx),
            format,
        })
    }

    /// A log that writes nothing.
    pub fn off() -> Self {
        Self {
            sink: Sink::Off,
            format: AccessFormat::Text,
        }
    }

    /// Queues one entry for the writer; never waits (a full queue drops it, counted).
    pub fn write(&self, e: &Entry) {
        let Sink::Queue(tx) = &self.sink else { return };
        let line = self.format_line(e);
        if let Err(TrySendError::Full(_)) = tx.try_send(Msg::Line(line)) {
            crate::metrics::metrics().access_log_dropped.inc();
        }
    }

    /// Waits (at most `limit`) until every line queued so far is written and flushed: at
    /// shutdown, and before a reloaded log replaces this one.
    pub fn flush(&self, limit: Duration) -> bool {
        let Sink::Queue(tx) = &self.sink else {
            return true;
        };
        let (ack, done) = std::sync::mpsc::channel();
        // A full queue: wait for room (this is no proxy thread).
        if tx.send(Msg::Flush(ack)).is_err() {
            return false;
        }
        done.recv_timeout(limit).is_ok()
    }

    /// The entry as one line, newline included, in one allocation for text.
    fn format_line(&self, e: &Entry) -> String {
        use std::fmt::Write as _;
        let now = SystemTime::now();
        match self.format {
            AccessFormat::Json => {
                let mut line = json!({
                    "time": humantime_rfc3339(now),
                    "client": e.client.map_or_else(|| "-".into(), |c| c.to_string()),
                    "user": e.user,
                    "protocol": e.protocol.as_str(),
                    "target": e.target,
                    "cluster": e.cluster,
                    "member": e.member.map_or_else(|| "-".into(), |m| m.to_string()),
                    "attempts": e.attempts,
                    "outcome": e.outcome.as_str(),
                    "status": e.status,
                    "rule": e.rule,
                    "error": e.error,
                    "bytes_up": e.bytes_up,
                    "bytes_down": e.bytes_down,
                    "duration_ms": e.duration.as_secs_f64() * 1000.0,
                })
                .to_string();
                line.push('\n');
                line
            }
            AccessFormat::Text => {
                let mut line = String::with_capacity(256);
                write_rfc3339(&mut line, now);
                let _ = match e.client {
                    Some(c) => write!(line, " {c}"),
                    None => write!(line, " -"),
                };
                let _ = write!(
                    line,
                    " {user} {proto} {target} cluster={cluster} member=",
                    user = e.user.as_deref().unwrap_or("-"),
                    proto = e.protocol.as_str(),
                    target = if e.target.is_empty() { "-" } else { &e.target },
                    cluster = if e.cluster.is_empty() {
                        "-"
                    } else {
                        &e.cluster
                    },
                );
                let _ = match e.member {
                    Some(m) => write!(line, "{m}"),
                    None => write!(line, "-"),
                };
                let _ = writeln!(
                    line,
                    " attempts={att} outcome={out} status={status} up={up} down={down} ms={ms:.1} rule={rule:?} error={error:?}",
                    att = e.attempts,
                    out = e.outcome.as_str(),
                    status = e.status,
                    up = e.bytes_up,
                    down = e.bytes_down,
                    ms = e.duration.as_secs_f64() * 1000.0,
                    rule = e.rule,
                    error = e.error,
                );
                line
            }
        }
    }
}

/// RFC 3339 UTC time with milliseconds, without a date crate.
fn humantime_rfc3339(t: SystemTime) -> String {
    let mut s = String::with_capacity(24);
    write_rfc3339(&mut s, t);
    s
}

/// Appends `t` as RFC 3339 UTC with milliseconds to `out`.
fn write_rfc3339(out: &mut String, t: SystemTime) {
    use std::fmt::Write as _;
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn time_format() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(humantime_rfc3339(t), "2026-11-18T11:06:40.123Z");
    }

    /// A writer that says when it is in a write and blocks there until told to go on, like a
    /// stalled disk.
    struct Stalled {
        entered: std::sync::mpsc::Sender<()>,
        go: std::sync::mpsc::Receiver<()>,
        got: std::sync::Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.entered.send(());
            let _ = self.go.recv();
            self.got.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Issue 21: the log was written with blocking writes on the proxy's threads. Now a stalled
    /// writer costs lines (counted), never a caller's wait, and a flush writes what was queued.
    #[test]
    fn a_stalled_writer_drops_lines_counted_and_never_blocks_the_caller() {
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel();
        let got = std::sync::Arc::new(Mutex::new(Vec::new()));
        let out = Stalled {
            entered: entered_tx,
            go: go_rx,
            got: got.clone(),
        };
        let log = AccessLog::to_writer(Box::new(out), 4, AccessFormat::Text).unwrap();
        let dropped = || crate::metrics::metrics().access_log_dropped.get();
        let e = Entry {
            target: "a:1".into(),
            ..Default::default()
        };
        // One line, and the writer is stuck writing it.
        log.write(&e);
        entered.recv_timeout(Duration::from_secs(10)).unwrap();
        let before = dropped();
        let started = std::time::Instant::now();
        for _ in 0..100 {
            log.write(&e);
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the caller waited"
        );
        // The queue holds four; the other 96 are dropped and counted.
        assert_eq!(dropped() - before, 96);
        // Let it write: a flush returns once everything queued is out.
        std::thread::spawn(move || while go.send(()).is_ok() {});
        assert!(log.flush(Duration::from_secs(10)));
        let text = String::from_utf8(got.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 5);
    }

    #[test]
    fn json_lines_carry_every_field() {
        let log = AccessLog {
            sink: Sink::Off,
            format: AccessFormat::Json,
        };
        let e = Entry {
            protocol: ClientProtocol::Socks5,
            target: "a:1".into(),
            outcome: Outcome::Ok,
            user: Some("alice".into()),
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::from_str(&log.format_line(&e)).unwrap();
        assert_eq!(v["protocol"], "socks5");
        assert_eq!(v["user"], "alice");
        assert_eq!(v["outcome"], "ok");
    }
}
