//! `carousel status`: the status page as an aligned terminal table (coloured on a terminal),
//! rendered from the same `/status` document.

use serde_json::Value;

/// ANSI colours, or none.
struct Paint(bool);

impl Paint {
    fn state(&self, s: &str, health: &str) -> String {
        if !self.0 {
            return s.to_string();
        }
        let code = match health {
            "healthy" => "32",
            "down" => "1;31",
            "draining" => "2",
            _ => "33",
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

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// The table for `status`; `colour` adds ANSI colours (only for a terminal).
pub fn render(status: &Value, colour: bool) -> String {
    let paint = Paint(colour);
    let mut out = String::new();
    out.push_str(&paint.bold(&format!(
        "carousel {}  config {}  last load: {}{}\n",
        cell(&status["version"]),
        cell(&status["config"]),
        cell(&status["reload"]["result"]),
        if status["draining"].as_bool() == Some(true) {
            "  DRAINING"
        } else {
            ""
        }
    )));
    for c in status["clusters"].as_array().into_iter().flatten() {
        let dns = c["dns_answer"]["addresses"]
            .as_array()
            .map(|a| a.iter().map(cell).collect::<Vec<_>>().join(","))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "\n{}  ({}, ports {}, DNS answer {})\n",
            paint.bold(&cell(&c["name"])),
            cell(&c["selection"]),
            cell(&c["ports"]),
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
        let mut rows: Vec<(String, [String; 9])> = Vec::new();
        for m in c["members"].as_array().into_iter().flatten() {
            let health = m["health"].as_str().unwrap_or("").to_string();
            let check = if m["checked"].as_bool() == Some(true) {
                if m["last_check_ok"].as_bool() == Some(true) {
                    "pass"
                } else {
                    "fail"
                }
            } else {
                "-"
            };
            rows.push((
                health.clone(),
                [
                    format!("{}:{}", cell(&m["address"]), cell(&m["port"])),
                    health,
                    check.into(),
                    cell(&m["active_connections"]),
                    cell(&m["requests_per_second"]),
                    cell(&m["failures_per_second"]),
                    cell(&m["requests"]),
                    cell(&m["connect_failures"]),
                    cell(&m["ejections"]),
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
            cells[1] = paint.state(&r[1], &health);
            out.push_str(&line(cells, &r));
        }
    }
    out.push_str("\nlisteners:");
    for l in status["listeners"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            " {} ({} open)",
            cell(&l["address"]),
            cell(&l["open_connections"])
        ));
    }
    out.push_str(&format!(
        "\ndns: {} cluster names, {} other names cached\n",
        cell(&status["dns"]["cluster_names"]),
        cell(&status["dns"]["plain_names_cached"])
    ));
    out
}
