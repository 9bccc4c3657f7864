//! `GET /`: the status page. One self-contained HTML document (inline CSS, a few lines of
//! vanilla JavaScript, no external assets: the proxy host has no internet), rendered on the
//! server from the `/status` document, so it works without JavaScript too (a meta refresh);
//! with JavaScript it refreshes every two seconds in place. Each cluster member is a coloured
//! row with its state, last check, connections, a one-minute sparkline of requests and failures
//! per second, and its ejections.

use std::fmt::Write;

use super::sampler::key;
use super::status::{Health, MemberStatus, Status};
use crate::history::{History, SAMPLES};

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A list for the page: escaped, comma-separated.
fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| esc(&i.to_string()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An inline SVG sparkline of `req` (green) and `fail` (red), both on the same scale.
fn sparkline(req: &[f32], fail: &[f32]) -> String {
    let (w, h) = (120.0f32, 24.0f32);
    let top = req.iter().chain(fail).copied().fold(1.0f32, f32::max);
    let line = |vals: &[f32], colour: &str| {
        if vals.is_empty() {
            return String::new();
        }
        let step = w / (SAMPLES as f32 - 1.0);
        let offset = SAMPLES - vals.len();
        let pts: Vec<String> = vals
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let x = (offset + i) as f32 * step;
                let y = h - 1.0 - (v / top) * (h - 2.0);
                format!("{x:.1},{y:.1}")
            })
            .collect();
        format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>",
            pts.join(" ")
        )
    };
    format!(
        "<svg class=\"spark\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"requests and failures per second, last minute\">{}{}</svg>",
        line(req, "#2e7d32"),
        line(fail, "#c62828")
    )
}

/// A human age for a Unix time (`12 s ago`), or `never`.
fn age(unix: u64, now: u64) -> String {
    if unix == 0 {
        return "never".into();
    }
    let d = now.saturating_sub(unix);
    if d < 120 {
        format!("{d} s ago")
    } else if d < 7200 {
        format!("{} min ago", d / 60)
    } else {
        format!("{} h ago", d / 3600)
    }
}

/// How long a healthy member's last error stays on the page (faded) after it was seen.
pub const ERROR_FADES_AFTER_SECONDS: u64 = 600;

/// A member's last error as the page shows it: with its age, faded (`true`) once the member is
/// healthy again, and gone when it is older than [`ERROR_FADES_AFTER_SECONDS`] on a healthy
/// member, so an old error does not read as current.
pub fn last_error(m: &MemberStatus, now: u64) -> Option<(String, bool)> {
    if m.last_error.is_empty() {
        return None;
    }
    let healthy = m.health == Health::Healthy;
    if healthy && now.saturating_sub(m.last_error_unix) > ERROR_FADES_AFTER_SECONDS {
        return None;
    }
    Some((
        format!("{} ({})", m.last_error, age(m.last_error_unix, now)),
        healthy,
    ))
}

/// The member state as the page says it: `healthy`, `down`, `ejected until …`, `half-open`,
/// `draining`.
fn state(m: &MemberStatus, now_ms: u64) -> (String, &'static str) {
    match m.health {
        Health::Healthy => ("healthy".into(), "ok"),
        Health::Down => ("down".into(), "down"),
        Health::Halfopen => ("half-open".into(), "warn"),
        Health::Draining => ("draining".into(), "drain"),
        Health::Ejected => {
            let until = m.ejected_until_unix_ms.unwrap_or(0);
            let left = until.saturating_sub(now_ms) / 1000;
            (format!("ejected, {left} s left"), "warn")
        }
    }
}

/// The whole page for `status`.
pub fn render(status: &Status, history: &History) -> String {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let now = now_ms / 1000;
    let mut body = String::new();
    let _ = write!(
        body,
        "<header><h1>carousel {}</h1><p class=\"meta\">config <code>{}</code> · last load {} ({}){}</p></header>",
        esc(&status.version),
        esc(&status.config),
        age(status.reload.last_unix, now),
        esc(&status.reload.result),
        if status.draining {
            " · <strong class=\"down\">draining</strong>"
        } else {
            ""
        }
    );
    for c in &status.clusters {
        let dns = match &c.dns_answer {
            Some(a) => list(&a.addresses),
            None => "-".into(),
        };
        let _ = write!(
            body,
            "<section class=\"cluster\"><h2>{}</h2><p class=\"meta\">{} · ports {} · DNS {}{}{}</p>\
             <table><thead><tr><th>member</th><th>state</th><th>last check</th><th>active</th>\
             <th>req/s · fail/s (1 min)</th><th>requests</th><th>failures</th><th>ejections</th><th>last error</th></tr></thead><tbody>",
            esc(&c.name),
            c.selection.as_str(),
            list(&c.ports),
            dns,
            if c.dns_stale {
                " · <span class=\"warn\">stale</span>"
            } else {
                ""
            },
            match &c.dns_error {
                Some(e) => format!(" · <span class=\"down\">{}</span>", esc(e)),
                None => String::new(),
            }
        );
        for m in &c.members {
            let Ok(ip) = m.address.parse::<std::net::IpAddr>() else {
                continue;
            };
            let addr = std::net::SocketAddr::new(ip, m.port);
            let (st, class) = state(m, now_ms);
            let (err, err_class) = match last_error(m, now) {
                Some((e, true)) => (e, "err faded"),
                Some((e, false)) => (e, "err"),
                None => (String::new(), "err"),
            };
            let check = if m.checked {
                format!(
                    "{} · {}",
                    if m.last_check_ok { "pass" } else { "fail" },
                    age(m.last_check_unix, now)
                )
            } else {
                "not yet".into()
            };
            let _ = write!(
                body,
                "<tr class=\"{class}\" data-member=\"{addr}\" data-state=\"{}\"><td><code>{addr}</code></td><td class=\"state\">{st}</td>\
                 <td>{check}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{err_class}\">{}</td></tr>",
                m.health.as_str(),
                m.active_connections,
                sparkline(
                    &history.read(&key("req", &c.name, addr)),
                    &history.read(&key("fail", &c.name, addr))
                ),
                m.requests,
                m.connect_failures,
                m.ejections,
                esc(&err),
            );
        }
        body.push_str("</tbody></table></section>");
    }
    body.push_str("<section><h2>Listeners</h2><table><thead><tr><th>address</th><th>protocols</th><th>open</th></tr></thead><tbody>");
    for l in &status.listeners {
        let _ = write!(
            body,
            "<tr><td><code>{}</code></td><td>{}{}</td><td>{}</td></tr>",
            esc(&l.address),
            list(&l.protocols),
            if l.tls { " (TLS)" } else { "" },
            l.open_connections
        );
    }
    body.push_str("</tbody></table><h2>Requests by outcome</h2><table><thead><tr><th>protocol</th><th>outcomes</th></tr></thead><tbody>");
    for (proto, outcomes) in &status.requests {
        let mut parts: Vec<String> = outcomes
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(o, n)| format!("{} {}", esc(o), n))
            .collect();
        if parts.is_empty() {
            parts.push("none yet".into());
        }
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td></tr>",
            esc(proto),
            parts.join(" · ")
        );
    }
    let _ = write!(
        body,
        "</tbody></table><h2>DNS</h2><p>{} cluster names · {} other names cached · {} lookups in flight · responder {}</p></section>",
        status.dns.cluster_names,
        status.dns.plain_names_cached,
        status.dns.lookups_in_flight,
        if status.dns.responder.is_empty() {
            "off".into()
        } else {
            list(&status.dns.responder)
        }
    );
    body.push_str("<footer>This page, like the whole admin port, has no authentication: keep it on loopback or a management network. Raw data: <a href=\"/status\">/status</a> · <a href=\"/metrics\">/metrics</a></footer>");
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
         <title>carousel status</title><style>{CSS}</style></head><body>{body}<script>{JS}</script></body></html>"
    )
}

const CSS: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}h1{font-size:1.4em;margin:0}\
h2{font-size:1.1em;margin:1.2em 0 .3em}.meta{color:#555;margin:.2em 0}table{border-collapse:collapse;width:100%}\
th,td{text-align:left;padding:.25em .6em;border-bottom:1px solid #ddd;vertical-align:middle}th{background:#f4f4f4}\
tr.ok td.state{background:#c8e6c9}tr.down td.state{background:#ffcdd2;font-weight:bold}\
tr.warn td.state{background:#fff3c4}tr.drain td.state{background:#e0e0e0}.down{color:#c62828}.warn{color:#a06000}\
td.err{color:#b00;max-width:24em;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}td.faded{color:#999;font-style:italic}footer{margin-top:2em;color:#666}";

/// Refreshes the page in place every two seconds (the meta refresh covers browsers without
/// JavaScript).
const JS: &str = "setInterval(function(){fetch('/',{cache:'no-store'}).then(function(r){return r.text()})\
.then(function(t){var d=new DOMParser().parseFromString(t,'text/html');document.body.innerHTML=d.body.innerHTML;})\
.catch(function(){});},2000);";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Hardening (issue 26, item 11): a healthy member kept showing an old error as if current.
    #[test]
    fn a_last_error_shows_its_age_and_fades_once_the_member_is_healthy() {
        let now = 1_000_000;
        let m = |health: &str, age: u64| -> MemberStatus {
            serde_json::from_value(
                json!({"health": health, "last_error": "connect: refused", "last_error_unix": now - age}),
            )
            .unwrap()
        };
        assert_eq!(
            last_error(&m("down", 5), now),
            Some(("connect: refused (5 s ago)".into(), false))
        );
        assert_eq!(
            last_error(&m("healthy", 5), now),
            Some(("connect: refused (5 s ago)".into(), true)),
            "faded"
        );
        assert_eq!(
            last_error(&m("healthy", ERROR_FADES_AFTER_SECONDS + 1), now),
            None
        );
        assert!(last_error(&m("down", ERROR_FADES_AFTER_SECONDS + 1), now).is_some());
        let clean: MemberStatus =
            serde_json::from_value(json!({"health": "down", "last_error": ""})).unwrap();
        assert_eq!(last_error(&clean, now), None);
    }

    #[test]
    fn rows_say_the_state_and_nothing_is_unescaped() {
        let status = json!({
            "version": "0.1.0", "config": "<embedded>", "reload": {"last_unix": 0, "result": "ok"},
            "clusters": [{"name": "chat<x>", "selection": "round_robin", "ports": [5222],
                "dns_answer": {"addresses": ["127.0.0.11"]},
                "members": [
                    {"address": "127.0.0.11", "port": 5222, "health": "healthy", "checked": true, "last_check_ok": true},
                    {"address": "127.0.0.12", "port": 5222, "health": "down", "last_error": "<script>"}
                ]}],
            "listeners": [], "requests": {}, "dns": {}
        });
        let h = History::default();
        h.push(
            &key("req", "chat<x>", "127.0.0.11:5222".parse().unwrap()),
            3.0,
        );
        let status: Status = serde_json::from_value(status).unwrap();
        let page = render(&status, &h);
        assert!(
            page.contains("data-member=\"127.0.0.12:5222\" data-state=\"down\""),
            "{page}"
        );
        assert!(page.contains("data-state=\"healthy\""));
        assert!(page.contains("<polyline"));
        assert!(page.contains("&lt;script&gt;"), "error text escaped");
        assert!(page.contains("chat&lt;x&gt;"));
        assert!(
            !page.contains("http://") && !page.contains("https://"),
            "no external asset"
        );
    }
}
