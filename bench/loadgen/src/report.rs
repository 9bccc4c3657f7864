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
        // Load scenarios have their own section (`attacks` below), and so have the DNS
        // responder and PROXY protocol steps (`responder_and_proxy_protocol`).
        if test == "attack"
            || test == "dns_load"
            || test == "step_load"
            || label.starts_with(PP_PREFIX)
        {
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
        // Only load scenarios or the DNS / PROXY protocol steps ran: no comparison tables.
        out.push_str(&attacks(text));
        out.push_str(&responder_and_proxy_protocol(text));
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
    out.push_str(&responder_and_proxy_protocol(text));
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

// ---------------------------------------------------------------------------------------------
// Steps `dns` and `proxyproto`: two contestants measured alternately in rounds; the i-th result
// of each label belongs to round i. Ratios are per round, then the median of the rounds.

/// Labels of the PROXY protocol step's rate results (kept out of the comparison tables).
const PP_PREFIX: &str = "haproxy-";

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn list(v: &[Option<f64>], digits: usize) -> String {
    v.iter()
        .map(|x| opt(*x, digits))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// Results of `test`, grouped by label (first appearance first), each in round order.
fn by_label(results: &[Value], keep: impl Fn(&Value) -> bool) -> Vec<(String, Vec<&Value>)> {
    let mut out: Vec<(String, Vec<&Value>)> = Vec::new();
    for v in results.iter().filter(|v| keep(v)) {
        let label = v.get("label").and_then(Value::as_str).unwrap_or("?");
        match out.iter_mut().find(|(l, _)| l == label) {
            Some((_, vs)) => vs.push(v),
            None => out.push((label.to_string(), vec![v])),
        }
    }
    out
}

fn col(vs: &[&Value], k: &str) -> Vec<Option<f64>> {
    vs.iter().map(|v| f(v, k)).collect()
}

fn med(vs: &[&Value], k: &str) -> Option<f64> {
    median(col(vs, k).into_iter().flatten().collect())
}

/// Per-round a/b and their median.
fn round_ratios(a: &[&Value], b: &[&Value], k: &str) -> (Vec<Option<f64>>, Option<f64>) {
    let r: Vec<Option<f64>> = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| ratio(f(x, k), f(y, k)))
        .collect();
    let m = median(r.iter().flatten().copied().collect());
    (r, m)
}

fn sum_u(vs: &[&Value], k: &str) -> u64 {
    vs.iter().map(|v| u(v, k)).sum()
}

fn rcodes(vs: &[&Value]) -> String {
    let mut m: BTreeMap<String, u64> = BTreeMap::new();
    for v in vs {
        if let Some(o) = v.get("rcodes").and_then(Value::as_object) {
            for (k, n) in o {
                *m.entry(k.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
        }
    }
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, n)| format!("{k}×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The "DNS responder and PROXY protocol" tables (steps `dns` and `proxyproto`).
fn responder_and_proxy_protocol(text: &str) -> String {
    let results: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect();
    let mut out = String::new();
    let w = &mut out;
    let step_load = |step: &str| -> String {
        results
            .iter()
            .find(|v| {
                v.get("test").and_then(Value::as_str) == Some("step_load")
                    && v.get("label").and_then(Value::as_str) == Some(step)
            })
            .map(|v| {
                format!(
                    "Load average (1 min) at the start of the step: {}; TIME_WAIT sockets: {}.\n",
                    opt(f(v, "load1"), 2),
                    opt(f(v, "time_wait"), 0)
                )
            })
            .unwrap_or_default()
    };

    let dns = by_label(&results, |v| {
        v.get("test").and_then(Value::as_str) == Some("dns_load")
    });
    if !dns.is_empty() {
        let _ = writeln!(w, "\n### DNS responder: UDP answers per second\n");
        let _ = writeln!(
            w,
            "`carousel-loadgen dns-load`: A queries for one name kept in flight over UDP; an \
             answer is a NOERROR response with at least one A record. Rounds alternate the \
             contestants; medians of the rounds. CPU is the server process's utime+stime over \
             the measured window.\n"
        );
        let _ = writeln!(w, "{}", step_load("dns"));
        let _ = writeln!(
            w,
            "| server | in flight | answers/s per round | answers/s (median) | A records per answer | \
             response codes (all rounds) | timeouts | p50 / p99 µs (median) | server CPU s per 100k answers \
             (median) | load generator CPU s (median) | machine busy % (median) |"
        );
        let _ = writeln!(w, "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|");
        for (label, vs) in &dns {
            let recs = format!(
                "{}–{}",
                vs.iter()
                    .filter_map(|v| v.get("answer_records_min").and_then(Value::as_u64))
                    .min()
                    .map(|x| x.to_string())
                    .unwrap_or_else(|| "–".into()),
                vs.iter()
                    .filter_map(|v| v.get("answer_records_max").and_then(Value::as_u64))
                    .max()
                    .map(|x| x.to_string())
                    .unwrap_or_else(|| "–".into()),
            );
            let _ = writeln!(
                w,
                "| {label} | {} | {} | {} | {recs} | {} | {} | {} / {} | {} | {} | {} |",
                opt(med(vs, "concurrency"), 0),
                list(&col(vs, "answers_per_s"), 0),
                opt(med(vs, "answers_per_s"), 0),
                rcodes(vs),
                sum_u(vs, "timeouts"),
                opt(med(vs, "p50_us"), 0),
                opt(med(vs, "p99_us"), 0),
                opt(med(vs, "server_cpu_s_per_100k_answers"), 3),
                opt(med(vs, "loadgen_cpu_s"), 2),
                opt(med(vs, "machine_busy_pct"), 0),
            );
        }
        let num = dns.iter().find(|(l, _)| l.starts_with("carousel"));
        let den = dns.iter().find(|(l, _)| !l.starts_with("carousel"));
        if let (Some((ln, a)), Some((ld, b))) = (num, den) {
            let (qr, qm) = round_ratios(a, b, "answers_per_s");
            let (cr, cm) = round_ratios(a, b, "server_cpu_s_per_100k_answers");
            let _ = writeln!(w, "\n| ratio {ln} ÷ {ld} | per round | median of rounds |");
            let _ = writeln!(w, "|---|---:|---:|");
            let _ = writeln!(
                w,
                "| answers/s (higher: {ln} faster) | {} | **{}** |",
                list(&qr, 2),
                opt(qm, 2)
            );
            let _ = writeln!(
                w,
                "| CPU s per 100k answers (higher: {ln} costlier) | {} | **{}** |",
                list(&cr, 2),
                opt(cm, 2)
            );
        }
    }

    let pp = by_label(&results, |v| {
        v.get("test").and_then(Value::as_str) == Some("rate")
            && v.get("label")
                .and_then(Value::as_str)
                .is_some_and(|l| l.starts_with(PP_PREFIX))
    });
    if !pp.is_empty() {
        let _ = writeln!(
            w,
            "\n### PROXY protocol v2: connection rate through HAProxy\n"
        );
        let _ = writeln!(
            w,
            "`carousel-loadgen rate` through HAProxy (mode tcp) into carousel: CONNECT, 32-byte \
             echo with the one-shot backend, backend closes. `{PP_PREFIX}pp2`: HAProxy sends a \
             PROXY v2 header (`send-proxy-v2`) to a carousel listener with `proxy_protocol = \
             \"v2\"`; `{PP_PREFIX}plain`: the same without. Rounds alternate the contestants; \
             medians of the rounds. CPU µs per connection: utime+stime of the process over the \
             step ÷ connections.\n"
        );
        let _ = writeln!(w, "{}", step_load("proxyproto"));
        let _ = writeln!(
            w,
            "| path | concurrency | conn/s per round | conn/s (median) | errors | conn p50 / p99 µs \
             (median) | carousel CPU µs/conn (median) | HAProxy CPU µs/conn (median) |"
        );
        let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|");
        // Split each label by concurrency.
        let mut groups: Vec<(String, u64, Vec<&Value>)> = Vec::new();
        for (label, vs) in &pp {
            for v in vs {
                let c = v.get("concurrency").and_then(Value::as_u64).unwrap_or(1);
                match groups.iter_mut().find(|(l, k, _)| l == label && *k == c) {
                    Some((_, _, g)) => g.push(v),
                    None => groups.push((label.clone(), c, vec![v])),
                }
            }
        }
        groups.sort_by_key(|g| g.1);
        for (label, c, vs) in &groups {
            let _ = writeln!(
                w,
                "| {label} | {c} | {} | {} | {} | {} / {} | {} | {} |",
                list(&col(vs, "per_s"), 0),
                opt(med(vs, "per_s"), 0),
                sum_u(vs, "errors"),
                opt(med(vs, "p50_us"), 0),
                opt(med(vs, "p99_us"), 0),
                opt(med(vs, "proxy_cpu_us_per_conn"), 0),
                opt(med(vs, "front_cpu_us_per_conn"), 0),
            );
        }
        let mut cs: Vec<u64> = groups.iter().map(|g| g.1).collect();
        cs.dedup();
        let _ = writeln!(
            w,
            "\n| concurrency | conn/s ratio pp2 ÷ plain per round | median of rounds | cost of the \
             header (1 − ratio) | target: cost < 5% | carousel CPU µs/conn pp2 − plain (median) |"
        );
        let _ = writeln!(w, "|---:|---:|---:|---:|---|---:|");
        for c in cs {
            let get = |suffix: &str| {
                groups
                    .iter()
                    .find(|(l, k, _)| *k == c && l == &format!("{PP_PREFIX}{suffix}"))
                    .map(|g| g.2.clone())
            };
            let (Some(a), Some(b)) = (get("pp2"), get("plain")) else {
                continue;
            };
            let (r, m) = round_ratios(&a, &b, "per_s");
            let cost = m.map(|m| 1.0 - m);
            let met = match cost {
                Some(x) if x < 0.05 => "met",
                Some(_) => "**not met**",
                None => "–",
            };
            let dcpu = match (
                med(&a, "proxy_cpu_us_per_conn"),
                med(&b, "proxy_cpu_us_per_conn"),
            ) {
                (Some(x), Some(y)) => Some(x - y),
                _ => None,
            };
            let _ = writeln!(
                w,
                "| {c} | {} | **{}** | {} | {met} | {} |",
                list(&r, 3),
                opt(m, 3),
                cost.map(|x| format!("{:.1}%", x * 100.0))
                    .unwrap_or_else(|| "–".into()),
                opt(dcpu, 1),
            );
        }
    }

    let paired: Vec<&Value> = results
        .iter()
        .filter(|v| v.get("test").and_then(Value::as_str) == Some("rate_paired"))
        .collect();
    if !paired.is_empty() {
        let _ = writeln!(
            w,
            "\n#### Paired runs (both paths interleaved cycle by cycle)\n"
        );
        let _ = writeln!(
            w,
            "`carousel-loadgen rate-paired`: one run alternates its cycles between the two \
             frontends, so whatever else the machine does hits both paths alike. A path's conn/s \
             = its cycles × concurrency ÷ the time its cycles took. The control run has the plain \
             frontend on both sides: its ratio is the method's own noise.\n"
        );
        let _ = writeln!(
            w,
            "| concurrency | run | conn/s pp2 | conn/s plain | ratio pp2 ÷ plain | errors |"
        );
        let _ = writeln!(w, "|---:|---|---:|---:|---:|---:|");
        let mut cs: Vec<u64> = paired
            .iter()
            .map(|v| v.get("concurrency").and_then(Value::as_u64).unwrap_or(1))
            .collect();
        cs.sort_unstable();
        cs.dedup();
        let mut summary = Vec::new();
        for c in cs {
            let mut ratios = Vec::new();
            let mut control = None;
            for v in paired
                .iter()
                .filter(|v| v.get("concurrency").and_then(Value::as_u64).unwrap_or(1) == c)
            {
                let side = |k: &str| v.get(k).cloned().unwrap_or(Value::Null);
                let (a, b) = (side("a"), side("b"));
                let la = a.get("label").and_then(Value::as_str).unwrap_or("");
                let lb = b.get("label").and_then(Value::as_str).unwrap_or("");
                let errs = u(&a, "errors") + u(&b, "errors");
                let (pp, plain, run) = if la.ends_with("pp2") {
                    (f(&a, "per_s"), f(&b, "per_s"), "pp2 first")
                } else if lb.ends_with("pp2") {
                    (f(&b, "per_s"), f(&a, "per_s"), "plain first")
                } else {
                    // The control: plain against plain.
                    let r = ratio(f(&b, "per_s"), f(&a, "per_s"));
                    control = r;
                    let _ = writeln!(
                        w,
                        "| {c} | control: plain ÷ plain | {} (2nd) | {} | {} | {errs} |",
                        opt(f(&b, "per_s"), 0),
                        opt(f(&a, "per_s"), 0),
                        opt(r, 3),
                    );
                    continue;
                };
                let r = ratio(pp, plain);
                if let Some(r) = r {
                    ratios.push(r);
                }
                let _ = writeln!(
                    w,
                    "| {c} | {run} | {} | {} | {} | {errs} |",
                    opt(pp, 0),
                    opt(plain, 0),
                    opt(r, 3)
                );
            }
            summary.push((c, median(ratios), control));
        }
        let _ = writeln!(
            w,
            "\n| concurrency | paired ratio pp2 ÷ plain (median) | cost of the header | target: cost < 5% | control ratio |"
        );
        let _ = writeln!(w, "|---:|---:|---:|---|---:|");
        for (c, m, control) in summary {
            let cost = m.map(|m| 1.0 - m);
            let met = match cost {
                Some(x) if x < 0.05 => "met",
                Some(_) => "**not met**",
                None => "–",
            };
            let _ = writeln!(
                w,
                "| {c} | **{}** | {} | {met} | {} |",
                opt(m, 3),
                cost.map(|x| format!("{:.1}%", x * 100.0))
                    .unwrap_or_else(|| "–".into()),
                opt(control, 3),
            );
        }
    }
    out
}
