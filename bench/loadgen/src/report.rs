//! Turns the JSON lines of one run into the markdown tables of docs/BENCHMARKS.md: raw numbers,
//! every proxy against the direct baseline, carousel against each peer, and the targets.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;

use serde_json::Value;

#[derive(Default, Debug, Clone)]
struct Row {
    mode: String,
    down: Option<f64>,
    up: Option<f64>,
    cpu_per_gib: Option<f64>,
    busy: Option<f64>,
    rate: Option<f64>,
    rate_p50: Option<f64>,
    rate_errors: u64,
    rate_cpu_us: Option<f64>,
    lat_p50: Option<f64>,
    lat_p99: Option<f64>,
    lat_errors: u64,
    lat_c: Option<u64>,
    idle_opened: Option<u64>,
    idle_requested: Option<u64>,
    idle_rss: Option<f64>,
    idle_pss: Option<f64>,
    idle_procs: Option<u64>,
    load1: Option<f64>,
    time_wait: Option<f64>,
}

fn f(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(Value::as_f64)
}
fn u(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn opt(x: Option<f64>, digits: usize) -> String {
    match x {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        _ => "–".into(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a > 0.0 => Some(a / b),
        _ => None,
    }
}

fn kib(x: Option<f64>) -> String {
    opt(x.map(|b| b / 1024.0), 1)
}

/// Order: direct, carousel rows, then peers, each by mode.
fn order(label: &str) -> (u8, String) {
    let rank = if label == "direct" {
        0
    } else if label.starts_with("carousel") {
        1
    } else {
        2
    };
    (rank, label.to_string())
}

pub fn report(text: &str, idle_target: u64) -> io::Result<String> {
    let mut rows: BTreeMap<(u8, String), Row> = BTreeMap::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let (Some(test), Some(label)) = (
            v.get("test").and_then(Value::as_str),
            v.get("label").and_then(Value::as_str),
        ) else {
            continue;
        };
        let r = rows.entry(order(label)).or_default();
        if let Some(m) = v.get("mode").and_then(Value::as_str) {
            r.mode = m.to_string();
        }
        match test {
            "throughput" => {
                r.down = f(&v, "down_median_mib_s").filter(|x| *x > 0.0);
                r.up = f(&v, "up_median_mib_s").filter(|x| *x > 0.0);
                r.cpu_per_gib = f(&v, "proxy_cpu_s_per_gib");
                r.busy = f(&v, "machine_busy_pct");
            }
            "rate" => {
                r.rate = f(&v, "per_s").filter(|x| *x > 0.0);
                r.rate_p50 = f(&v, "p50_us");
                r.rate_errors = u(&v, "errors");
                r.rate_cpu_us = f(&v, "proxy_cpu_us_per_conn");
            }
            "latency" => {
                r.lat_p50 = f(&v, "p50_us").filter(|x| *x > 0.0);
                r.lat_p99 = f(&v, "p99_us").filter(|x| *x > 0.0);
                r.lat_errors = u(&v, "errors");
                r.lat_c = v.get("concurrency").and_then(Value::as_u64);
            }
            "load" => {
                r.load1 = f(&v, "load1");
                r.time_wait = f(&v, "time_wait");
            }
            "idle" => {
                r.idle_opened = Some(u(&v, "opened"));
                r.idle_requested = Some(u(&v, "requested"));
                r.idle_rss = f(&v, "rss_per_tunnel_b");
                r.idle_pss = f(&v, "pss_per_tunnel_b");
                r.idle_procs = Some(u(&v, "procs_after"));
            }
            _ => {}
        }
    }
    let direct = rows.get(&order("direct")).cloned().unwrap_or_default();
    let mut out = String::new();
    let w = &mut out;

    let _ = writeln!(w, "### Raw results\n");
    let _ = writeln!(
        w,
        "| run | mode | throughput down MiB/s | throughput up MiB/s | proxy CPU s/GiB | machine CPU busy % (throughput) | \
         conn/s (sequential) | proxy CPU µs/conn | conn p50 µs (C=1) | latency p50 µs (C) | latency p99 µs (C) | \
         idle tunnels opened | KiB/idle tunnel (RSS) | KiB/idle tunnel (PSS) | processes | \
         load avg at start | TIME_WAIT sockets at start |"
    );
    let _ = writeln!(
        w,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for ((_, label), r) in &rows {
        let errs = if r.rate_errors + r.lat_errors > 0 {
            format!(" ({} errors)", r.rate_errors + r.lat_errors)
        } else {
            String::new()
        };
        let opened = match (r.idle_opened, r.idle_requested) {
            (Some(o), Some(q)) => format!("{o}/{q}"),
            _ => "–".into(),
        };
        let _ = writeln!(
            w,
            "| {label}{errs} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.mode,
            opt(r.down, 0),
            opt(r.up, 0),
            opt(r.cpu_per_gib, 2),
            opt(r.busy, 0),
            opt(r.rate, 0),
            opt(r.rate_cpu_us, 0),
            opt(r.rate_p50, 0),
            opt(r.lat_p50, 0),
            opt(r.lat_p99, 0),
            opened,
            kib(r.idle_rss),
            kib(r.idle_pss),
            r.idle_procs
                .map(|p| p.to_string())
                .unwrap_or_else(|| "–".into()),
            opt(r.load1, 2),
            opt(r.time_wait, 0),
        );
    }

    let _ = writeln!(w, "\n### Each proxy against the direct connection\n");
    let _ = writeln!(
        w,
        "Throughput and connection rate as a fraction of direct (higher is better, 1.00 = as fast \
         as no proxy); latency as microseconds added to direct's p50 / p99 (lower is better): C=1 from the \
         sequential connection-rate test, C from the concurrent latency test.\n"
    );
    let _ = writeln!(
        w,
        "| proxy | mode | throughput down ×direct | throughput up ×direct | conn/s ×direct | \
         added p50 µs (C=1) | added p50 µs (C) | added p99 µs (C) |"
    );
    let _ = writeln!(w, "|---|---|---:|---:|---:|---:|---:|---:|");
    let sub = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => Some(a - b),
        _ => None,
    };
    for ((_, label), r) in rows.iter().filter(|((_, l), _)| l != "direct") {
        let _ = writeln!(
            w,
            "| {label} | {} | {} | {} | {} | {} | {} | {} |",
            r.mode,
            opt(ratio(r.down, direct.down), 2),
            opt(ratio(r.up, direct.up), 2),
            opt(ratio(r.rate, direct.rate), 2),
            opt(sub(r.rate_p50, direct.rate_p50), 0),
            opt(sub(r.lat_p50, direct.lat_p50), 0),
            opt(sub(r.lat_p99, direct.lat_p99), 0),
        );
    }

    let _ = writeln!(w, "\n### carousel against each peer\n");
    let _ = writeln!(
        w,
        "Every number is carousel's advantage: > 1.00 means carousel is better. For throughput \
         and conn/s that is carousel ÷ peer; for latency, CPU per GiB, CPU per connection and \
         memory per idle tunnel (lower is better) it is peer ÷ carousel.\n"
    );
    let _ = writeln!(
        w,
        "| carousel vs | mode | throughput down | throughput up | conn/s | latency p50 | \
         latency p99 | CPU/GiB | CPU/conn | memory/idle tunnel (RSS) | memory/idle tunnel (PSS) | \
         better in |"
    );
    let _ = writeln!(
        w,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut ahead_all = true;
    for ((rank, label), peer) in &rows {
        if *rank != 2 {
            continue;
        }
        let Some(c) = rows.get(&order(&format!("carousel-{}", peer.mode))) else {
            continue;
        };
        let cells = [
            ratio(c.down, peer.down),
            ratio(c.up, peer.up),
            ratio(c.rate, peer.rate),
            ratio(peer.lat_p50, c.lat_p50),
            ratio(peer.lat_p99, c.lat_p99),
            ratio(peer.cpu_per_gib, c.cpu_per_gib),
            ratio(peer.rate_cpu_us, c.rate_cpu_us),
            ratio(peer.idle_rss, c.idle_rss),
            ratio(peer.idle_pss, c.idle_pss),
        ];
        let known: Vec<f64> = cells.iter().flatten().copied().collect();
        let better = known.iter().filter(|x| **x > 1.0).count();
        if better * 2 <= known.len() {
            ahead_all = false;
        }
        let _ = write!(w, "| {label} | {} |", peer.mode);
        for x in cells {
            let _ = write!(w, " {} |", opt(x, 2));
        }
        let _ = writeln!(w, " {better}/{} |", known.len());
    }

    let _ = writeln!(w, "\n### Targets\n");
    let _ = writeln!(w, "| target | measured | met |");
    let _ = writeln!(w, "|---|---|---|");
    let mark = |ok: Option<bool>| match ok {
        Some(true) => "met",
        Some(false) => "**not met**",
        None => "not measured",
    };
    for mode in ["connect", "socks5"] {
        let c = rows
            .get(&order(&format!("carousel-{mode}")))
            .cloned()
            .unwrap_or_default();
        let d = ratio(c.down, direct.down);
        let u = ratio(c.up, direct.up);
        let ok = match (d, u) {
            (Some(d), Some(u)) => Some(d >= 0.9 && u >= 0.9),
            _ => None,
        };
        let _ = writeln!(
            w,
            "| tunnel throughput ≥ 0.9× direct ({mode}) | down {}×, up {}× | {} |",
            opt(d, 2),
            opt(u, 2),
            mark(ok)
        );
    }
    let cc = rows
        .get(&order("carousel-connect"))
        .cloned()
        .unwrap_or_default();
    let squid = rows
        .get(&order("squid-connect"))
        .cloned()
        .unwrap_or_default();
    let rs = ratio(cc.rate, squid.rate);
    let _ = writeln!(
        w,
        "| connection rate ≥ 2× Squid's (CONNECT) | {}× ({} vs {} conn/s) | {} |",
        opt(rs, 2),
        opt(cc.rate, 0),
        opt(squid.rate, 0),
        mark(rs.map(|x| x >= 2.0))
    );
    for mode in ["connect", "socks5"] {
        let c = rows
            .get(&order(&format!("carousel-{mode}")))
            .cloned()
            .unwrap_or_default();
        let r = ratio(c.rate, direct.rate);
        let _ = writeln!(
            w,
            "| connection rate ≥ 0.8× direct ({mode}) | {}× ({} vs {} conn/s) | {} |",
            opt(r, 2),
            opt(c.rate, 0),
            opt(direct.rate, 0),
            mark(r.map(|x| x >= 0.8))
        );
    }
    for mode in ["connect", "socks5"] {
        let c = rows
            .get(&order(&format!("carousel-{mode}")))
            .cloned()
            .unwrap_or_default();
        let all = c.idle_opened.is_some() && c.idle_opened == c.idle_requested;
        let ok = c.idle_rss.map(|b| all && b <= 32.0 * 1024.0);
        let _ = writeln!(
            w,
            "| {idle_target} idle tunnels at ≤ 32 KiB each ({mode}) | {} KiB/tunnel RSS, {} of {} opened | {} |",
            kib(c.idle_rss),
            c.idle_opened.map(|o| o.to_string()).unwrap_or_else(|| "–".into()),
            c.idle_requested.map(|o| o.to_string()).unwrap_or_else(|| "–".into()),
            mark(ok)
        );
    }
    for mode in ["connect", "socks5"] {
        let c = rows
            .get(&order(&format!("carousel-{mode}")))
            .cloned()
            .unwrap_or_default();
        let added = sub(c.lat_p50, direct.lat_p50);
        let cc = c.lat_c.map(|x| x.to_string()).unwrap_or_else(|| "?".into());
        let _ = writeln!(
            w,
            "| added latency p50 ≤ 100 µs over direct ({mode}, C={cc}) | {} µs ({} vs {} µs) | {} |",
            opt(added, 0),
            opt(c.lat_p50, 0),
            opt(direct.lat_p50, 0),
            mark(added.map(|a| a <= 100.0))
        );
        let added1 = sub(c.rate_p50, direct.rate_p50);
        let _ = writeln!(
            w,
            "| added latency p50 ≤ 100 µs over direct ({mode}, C=1) | {} µs ({} vs {} µs) | {} |",
            opt(added1, 0),
            opt(c.rate_p50, 0),
            opt(direct.rate_p50, 0),
            mark(added1.map(|a| a <= 100.0))
        );
    }
    let _ = writeln!(
        w,
        "| ahead of every peer (better in most measured columns) | see the table above | {} |",
        mark(Some(ahead_all))
    );
    Ok(out)
}
