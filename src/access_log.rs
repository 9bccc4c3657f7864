//! The access log: one line per request or tunnel, as text or JSON, to stdout or a file, for the
//! people who answer "who went where, through which member, and what happened". Credentials never
//! reach it: only the authenticated user name.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
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

enum Sink {
    Off,
    Stdout,
    File(Mutex<std::io::LineWriter<std::fs::File>>),
}

/// Where access lines go.
pub struct AccessLog {
    sink: Sink,
    format: AccessFormat,
}

impl AccessLog {
    /// Opens the configured destination.
    pub fn new(cfg: &LogSection) -> std::io::Result<Self> {
        let sink = match cfg.access.as_str() {
            "off" => Sink::Off,
            "stdout" => Sink::Stdout,
            path => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?;
                Sink::File(Mutex::new(std::io::LineWriter::new(f)))
            }
        };
        Ok(Self {
            sink,
            format: cfg.access_format,
        })
    }

    /// A log that writes nothing.
    pub fn off() -> Self {
        Self {
            sink: Sink::Off,
            format: AccessFormat::Text,
        }
    }

    /// Writes one entry.
    pub fn write(&self, e: &Entry) {
        if matches!(self.sink, Sink::Off) {
            return;
        }
        let line = self.format_line(e);
        match &self.sink {
            Sink::Off => {}
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
            }
            Sink::File(f) => {
                if let Ok(mut f) = f.lock() {
                    let _ = writeln!(f, "{line}");
                }
            }
        }
    }

    fn format_line(&self, e: &Entry) -> String {
        let time = humantime_rfc3339(SystemTime::now());
        let client = e
            .client
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into());
        let member = e
            .member
            .map(|m| m.to_string())
            .unwrap_or_else(|| "-".into());
        match self.format {
            AccessFormat::Json => json!({
                "time": time,
                "client": client,
                "user": e.user,
                "protocol": e.protocol.as_str(),
                "target": e.target,
                "cluster": e.cluster,
                "member": member,
                "attempts": e.attempts,
                "outcome": e.outcome.as_str(),
                "status": e.status,
                "rule": e.rule,
                "error": e.error,
                "bytes_up": e.bytes_up,
                "bytes_down": e.bytes_down,
                "duration_ms": e.duration.as_secs_f64() * 1000.0,
            })
            .to_string(),
            AccessFormat::Text => format!(
                "{time} {client} {user} {proto} {target} cluster={cluster} member={member} attempts={att} outcome={out} status={status} up={up} down={down} ms={ms:.1} rule={rule:?} error={error:?}",
                user = e.user.as_deref().unwrap_or("-"),
                proto = e.protocol.as_str(),
                target = if e.target.is_empty() { "-" } else { &e.target },
                cluster = if e.cluster.is_empty() { "-" } else { &e.cluster },
                att = e.attempts,
                out = e.outcome.as_str(),
                status = e.status,
                up = e.bytes_up,
                down = e.bytes_down,
                ms = e.duration.as_secs_f64() * 1000.0,
                rule = e.rule,
                error = e.error,
            ),
        }
    }
}

/// RFC 3339 UTC time with milliseconds, without a date crate.
fn humantime_rfc3339(t: SystemTime) -> String {
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
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_format() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(humantime_rfc3339(t), "2026-11-18T11:06:40.123Z");
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
