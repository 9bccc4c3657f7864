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
        // Load scenarios have their own section (`attacks` below).
        if test == "attack" {
            continue;
        }
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
    if rows.is_empty() {
        // Only load scenarios ran (`--steps attacks`): no comparison tables.
        out.push_str(&attacks(text));
        return Ok(out);
    }
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
    out.push_str(&attacks(text));
    Ok(out)
}

/// A JSON value at a `/`-separated path.
fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('/').try_fold(v, |v, k| v.get(k))
}
fn atf(v: &Value, path: &str) -> Option<f64> {
    at(v, path).and_then(Value::as_f64)
}
fn atu(v: &Value, path: &str) -> String {
    at(v, path)
        .and_then(Value::as_u64)
        .map(|x| x.to_string())
        .unwrap_or_else(|| "–".into())
}
fn mib(kib: Option<f64>) -> String {
    opt(kib.map(|k| k / 1024.0), 1)
}

/// The carousel process during a scenario: RSS before → peak → after, descriptors, CPU.
fn proxy_cell(v: &Value) -> String {
    format!(
        "RSS {} → peak {} → {} MiB; fds {} → peak {} → {}; CPU {} s",
        mib(atf(v, "proxy/rss_before_kib")),
        mib(atf(v, "proxy/rss_peak_kib")),
        mib(atf(v, "proxy/rss_after_kib")),
        atu(v, "proxy/fds_before"),
        atu(v, "proxy/fds_peak"),
        atu(v, "proxy/fds_after"),
        opt(atf(v, "proxy/cpu_s_attack"), 2),
    )
}

fn normal_cell(v: &Value) -> String {
    let failed = at(v, "normal/failed").and_then(Value::as_u64).unwrap_or(0);
    let ok = atu(v, "normal/ok");
    let bold = if failed > 0 { "**" } else { "" };
    let mut during: Vec<String> = Vec::new();
    for phase in ["attack", "idle"] {
        if at(v, &format!("normal/by_phase/{phase}")).is_some() {
            during.push(format!(
                "{phase}: {}/{}",
                atu(v, &format!("normal/by_phase/{phase}/ok")),
                atu(v, &format!("normal/by_phase/{phase}/failed"))
            ));
        }
    }
    let mut cell = format!(
        "{bold}{ok} / {failed}{bold} ({}); p50 {} ms, p99 {} ms, max {} ms",
        during.join(", "),
        opt(atf(v, "normal/p50_ms"), 1),
        opt(atf(v, "normal/p99_ms"), 1),
        opt(atf(v, "normal/max_ms"), 0),
    );
    if failed > 0 {
        if let Some(e) = at(v, "normal/last_error").and_then(Value::as_str) {
            let _ = write!(cell, "; last error: {e}");
        }
    }
    cell
}

fn statuses(v: &Value) -> String {
    match at(v, "conns/statuses").and_then(Value::as_object) {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, n)| format!("{k}×{n}"))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "none".into(),
    }
}

/// The "Load scenarios (hardening)" section: one row per `attack` result.
fn attacks(text: &str) -> String {
    let results: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("test").and_then(Value::as_str) == Some("attack"))
        .collect();
    if results.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "
### Load scenarios (hardening)
"
    );
    let _ = writeln!(
        w,
        "Each scenario runs against a freshly started carousel (HTTP listener) while a *normal \
         client* keeps using it: one CONNECT tunnel to the echo backend and one 32-byte echo \
         every 50 ms, each bounded by 5 s, from 2 s before the attack until 2 s after it. \
         Attack connections come from other loopback addresses than the normal client. \
         \"normal client\" is ok / failed cycles over the whole scenario (and during the attack).\n"
    );
    let _ = writeln!(
        w,
        "| scenario | attack | what carousel did | carousel process | normal client ok / failed |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|");
    for v in &results {
        let kind = v.get("kind").and_then(Value::as_str).unwrap_or("?");
        let count = atu(v, "count");
        let srcs = at(v, "sources")
            .and_then(Value::as_array)
            .map(|a| a.len())
            .unwrap_or(0);
        let conn_errs = at(v, "conns/connect_errors")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let conn_errs = if conn_errs > 0 {
            format!(" ({conn_errs} could not connect)")
        } else {
            String::new()
        };
        let still = at(v, "conns/still_open")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let still = if still > 0 {
            format!(
                "; **{still} still open** after {} s",
                opt(atf(v, "hold_s"), 0)
            )
        } else {
            String::new()
        };
        let (attack, did, process) = match kind {
            "slowloris-get" => (
                format!(
                    "{count} connections from {srcs} loopback addresses{conn_errs}: an absolute-form \
                     GET request line, then header bytes one per {} s, never finished",
                    opt(atf(v, "trickle_s"), 1)
                ),
                format!(
                    "closed {}/{} after median {} s / max {} s (answers: {}){still}",
                    atu(v, "conns/closed"),
                    atu(v, "conns/connected"),
                    opt(atf(v, "conns/closed_median_s"), 1),
                    opt(atf(v, "conns/closed_max_s"), 1),
                    statuses(v),
                ),
                proxy_cell(v),
            ),
            "big-head" => {
                let got = at(v, "conns/statuses/431")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                (
                    format!(
                        "{count} connections at once from {srcs} loopback addresses{conn_errs}, \
                         each an unfinished {} KiB request head; {} such waves in {} s",
                        opt(atf(v, "head_bytes").map(|b| b / 1024.0), 0),
                        atu(v, "waves"),
                        opt(atf(v, "attack_s"), 1),
                    ),
                    format!(
                        "431 to {got}; closed {}/{} after median {} s / max {} s (answers: {}; \
                         client had written a median {} KiB when it saw the close){still}",
                        atu(v, "conns/closed"),
                        atu(v, "conns/connected"),
                        opt(atf(v, "conns/closed_median_s"), 2),
                        opt(atf(v, "conns/closed_max_s"), 2),
                        statuses(v),
                        opt(atf(v, "conns/sent_median_bytes").map(|b| b / 1024.0), 0),
                    ),
                    proxy_cell(v),
                )
            }
            "name-flood" => {
                let failed = at(v, "names_failed").and_then(Value::as_u64).unwrap_or(0);
                let failed = if failed > 0 {
                    format!(", **{failed} failed**")
                } else {
                    String::new()
                };
                (
                    format!(
                        "{count} distinct names (`nK.wild.bench.test`, one wildcard A record) \
                         through CONNECT in {} s ({} ok{failed}), then {} s without attack traffic",
                        opt(atf(v, "flood_s"), 1),
                        atu(v, "names_ok"),
                        opt(atf(v, "idle_window/idle_s"), 0),
                    ),
                    format!(
                        "names cached {} (evicted {}); {} DNS queries for the flood; while idle: \
                         {} refreshes, {} DNS queries ({} for flood names), {} lookups in flight at the end",
                        opt(atf(v, "idle_window/metrics_end/names"), 0),
                        opt(atf(v, "idle_window/metrics_end/names_evicted_total"), 0),
                        atu(v, "dns_flood/wildcard_queries"),
                        opt(atf(v, "idle_window/refreshes"), 0),
                        atu(v, "idle_window/dns/queries"),
                        atu(v, "idle_window/dns/wildcard_queries"),
                        opt(atf(v, "idle_window/metrics_end/lookups_in_flight"), 0),
                    ),
                    format!(
                        "while idle: fds {} → {}, CPU {} s, RSS {} → {} MiB; whole scenario: {}",
                        atu(v, "idle_window/proxy_fds_start"),
                        atu(v, "idle_window/proxy_fds_end"),
                        opt(atf(v, "idle_window/proxy_cpu_s"), 2),
                        mib(atf(v, "idle_window/proxy_rss_start_kib")),
                        mib(atf(v, "idle_window/proxy_rss_end_kib")),
                        proxy_cell(v),
                    ),
                )
            }
            _ => ("?".into(), "?".into(), proxy_cell(v)),
        };
        let _ = writeln!(
            w,
            "| {kind} | {attack} | {did} | {process} | {} |",
            normal_cell(v)
        );
    }
    out
}
