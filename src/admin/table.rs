//! `carousel status`: the status page as an aligned terminal table (coloured on a terminal),
//! rendered from the same `/status` document.

use super::status::{Health, Status};

/// ANSI colours, or none.
struct Paint(bool);

impl Paint {
    fn state(&self, s: &str, health: Health) -> String {
        if !self.0 {
            return s.to_string();
        }
        let code = match health {
            Health::Healthy => "32",
            Health::Down => "1;31",
            Health::Draining => "2",
            Health::Ejected | Health::Halfopen => "33",
        };
        format!("\x1b[{code}m{s}\x1b[0m")
    }
    fn bold(&self, s: &str) -> String {
        if self.0 {
            format!("\x1b[1m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
}

/// The table for `status`; `colour` adds ANSI colours (only for a terminal).
pub fn render(status: &Status, colour: bool) -> String {
    let paint = Paint(colour);
    let mut out = String::new();
    out.push_str(&paint.bold(&format!(
        "carousel {}  config {}  last load: {}{}\n",
        status.version,
        status.config,
        status.reload.result,
        if status.draining { "  DRAINING" } else { "" }
    )));
    for c in &status.clusters {
        let dns = c
            .dns_answer
            .as_ref()
            .map(|a| a.addresses.join(","))
            .unwrap_or_else(|| "-".into());
        let ports: Vec<String> = c.ports.iter().map(|p| p.to_string()).collect();
        out.push_str(&format!(
            "\n{}  ({}, ports [{}], DNS answer {})\n",
            paint.bold(&c.name),
            c.selection.as_str(),
            ports.join(","),
            dns
        ));
        let header = [
            "MEMBER",
            "STATE",
            "CHECK",
            "ACTIVE",
            "REQ/S",
            "FAIL/S",
            "REQUESTS",
            "FAILURES",
            "EJECTIONS",
        ];
        let mut rows: Vec<(Health, [String; 9])> = Vec::new();
        for m in &c.members {
            let check = match (m.checked, m.last_check_ok) {
                (false, _) => "-",
                (true, true) => "pass",
                (true, false) => "fail",
            };
            rows.push((
                m.health,
                [
                    format!("{}:{}", m.address, m.port),
                    m.health.as_str().to_string(),
                    check.into(),
                    m.active_connections.to_string(),
                    m.requests_per_second.to_string(),
                    m.failures_per_second.to_string(),
                    m.requests.to_string(),
                    m.connect_failures.to_string(),
                    m.ejections.to_string(),
                ],
            ));
        }
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for (_, r) in &rows {
            for (w, v) in widths.iter_mut().zip(r) {
                *w = (*w).max(v.len());
            }
        }
        let line = |cells: Vec<String>, raw: &[String]| -> String {
            let mut s = String::from("  ");
            for (i, (c, r)) in cells.iter().zip(raw).enumerate() {
                s.push_str(c);
                s.push_str(&" ".repeat(widths[i] - r.len() + 2));
            }
            s.trim_end().to_string() + "\n"
        };
        let h: Vec<String> = header.iter().map(|s| s.to_string()).collect();
        out.push_str(&line(h.clone(), &h));
        for (health, r) in rows {
            let mut cells = r.to_vec();
            cells[1] = paint.state(&r[1], health);
            out.push_str(&line(cells, &r));
        }
    }
    out.push_str("\nlisteners:");
    for l in &status.listeners {
        out.push_str(&format!(" {} ({} open)", l.address, l.open_connections));
    }
    out.push_str(&format!(
        "\ndns: {} cluster names, {} other names cached\n",
        status.dns.cluster_names, status.dns.plain_names_cached
    ));
    out
}
