//! `dns-load`: UDP DNS queries per second against one server. `--workers` OS threads, each with
//! its own UDP socket (connected to the server, bound to 127.0.0.1), keep `--concurrency` A
//! queries for one name in flight between them: every answer (matched by its random id) or
//! timeout is replaced at once by a new query. Counted over `--seconds` after a `--warmup`:
//! responses by response code, NOERROR answers with at least one record, timeouts, stray or
//! malformed responses, latency, and the server's CPU time from /proc/PID/stat.
//!
//! Bounded: each worker stops at its deadline (warm-up + seconds), every query has a timeout, and
//! only loopback servers are queried.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::client::{check_loopback, other, pct};
use crate::procfs;

/// What `dns-load` was asked to do.
pub struct Opts {
    pub server: SocketAddr,
    pub name: String,
    pub label: String,
    pub concurrency: usize,
    pub workers: usize,
    pub seconds: f64,
    pub warmup: f64,
    pub timeout: Duration,
    pub pid: Option<i32>,
}

/// A standard query (RD=0: every server here is authoritative) without EDNS, id zeroed.
fn query_packet(name: &str) -> io::Result<Vec<u8>> {
    let mut p = vec![0, 0, 0x00, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(other(format!("bad name {name:?}")));
        }
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.push(0);
    p.extend_from_slice(&[0, 1, 0, 1]); // A, IN
    Ok(p)
}

fn rcode_name(c: u8) -> String {
    match c {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        n => format!("RCODE{n}"),
    }
}

/// One worker's counts over the measured window.
#[derive(Default)]
struct Counts {
    sent: u64,
    responses: u64,
    answers: u64,
    answer_records: u64,
    min_records: Option<u16>,
    max_records: u16,
    rcodes: [u64; 16],
    truncated: u64,
    timeouts: u64,
    /// Responses whose id matched nothing in flight (late after a timeout, or duplicates).
    unmatched: u64,
    /// Too short, not a response, or a different question.
    malformed: u64,
    send_errors: u64,
    last_error: String,
    lat_us: Vec<u32>,
    in_flight_at_end: usize,
}

/// xorshift64*: ids need to be unpredictable enough to match responses, not secure.
struct Rng(u64);
impl Rng {
    fn next16(&mut self) -> u16 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 48) as u16
    }
}

fn same_question(q: &[u8], r: &[u8]) -> bool {
    r.len() >= q.len() && r[12..q.len()].eq_ignore_ascii_case(&q[12..])
}

/// Most latency samples one worker keeps (a bound on memory, not a limit on the test).
const MAX_SAMPLES: usize = 20_000_000;

/// One worker's state: its socket, the query template and what is in flight.
struct Worker {
    sock: UdpSocket,
    q: Vec<u8>,
    rng: Rng,
    /// `slot[id]` = (sequence number, sent at) while that id is in flight.
    slot: Vec<Option<(u64, Instant)>>,
    /// Sends in order, for the timeouts: (id, sequence number).
    order: VecDeque<(u16, u64)>,
    seq: u64,
    pending: usize,
    measure_from: Instant,
    c: Counts,
}

impl Worker {
    fn send_one(&mut self) {
        // A free id: in-flight ids are at most a few thousand of 65536, so this ends quickly.
        let mut id = self.rng.next16();
        for _ in 0..65536 {
            if self.slot[id as usize].is_none() {
                break;
            }
            id = self.rng.next16();
        }
        if self.slot[id as usize].is_some() {
            return;
        }
        self.q[0..2].copy_from_slice(&id.to_be_bytes());
        self.seq += 1;
        let now = Instant::now();
        match self.sock.send(&self.q) {
            Ok(_) => {
                self.slot[id as usize] = Some((self.seq, now));
                self.order.push_back((id, self.seq));
                self.pending += 1;
                if now >= self.measure_from {
                    self.c.sent += 1;
                }
            }
            Err(e) => {
                self.c.send_errors += 1;
                self.c.last_error = e.to_string();
            }
        }
    }
}

fn worker(
    o: &Opts,
    in_flight: usize,
    seed: u64,
    measure_from: Instant,
    end: Instant,
) -> io::Result<Counts> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.connect(o.server)?;
    sock.set_read_timeout(Some(Duration::from_millis(5)))?;
    let mut w = Worker {
        sock,
        q: query_packet(&o.name)?,
        rng: Rng(seed | 1),
        slot: vec![None; 65536],
        order: VecDeque::with_capacity(in_flight * 4),
        seq: 0,
        pending: 0,
        measure_from,
        c: Counts::default(),
    };
    let mut buf = [0u8; 4096];
    for _ in 0..in_flight {
        w.send_one();
    }
    // Bounded by the deadline; the iteration cap only guards against a clock that stops.
    for _ in 0..u64::MAX / 2 {
        let now = Instant::now();
        if now >= end {
            break;
        }
        // Expire the oldest queries first.
        while let Some(&(id, s)) = w.order.front() {
            match w.slot[id as usize] {
                Some((s2, t)) if s2 == s => {
                    if now.duration_since(t) < o.timeout {
                        break;
                    }
                    w.slot[id as usize] = None;
                    w.pending -= 1;
                    w.order.pop_front();
                    if now >= measure_from {
                        w.c.timeouts += 1;
                    }
                    w.send_one();
                }
                _ => {
                    w.order.pop_front();
                }
            }
        }
        if w.pending < in_flight {
            // A send failed earlier: top up.
            w.send_one();
        }
        let n = match w.sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                continue
            }
            Err(e) => {
                // ICMP port unreachable surfaces here as ECONNREFUSED: the server is not there.
                w.c.last_error = e.to_string();
                w.c.send_errors += 1;
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
        };
        let got = Instant::now();
        let counting = got >= measure_from && got < end;
        let r = &buf[..n];
        if n < 12 || r[2] & 0x80 == 0 || !same_question(&w.q, r) {
            if counting {
                w.c.malformed += 1;
            }
            continue;
        }
        let id = u16::from_be_bytes([r[0], r[1]]);
        let Some((_, sent)) = w.slot[id as usize].take() else {
            if counting {
                w.c.unmatched += 1;
            }
            continue;
        };
        w.pending -= 1;
        if counting {
            let c = &mut w.c;
            let rcode = r[3] & 0x0f;
            let ancount = u16::from_be_bytes([r[6], r[7]]);
            c.responses += 1;
            c.rcodes[rcode as usize] += 1;
            if r[2] & 0x02 != 0 {
                c.truncated += 1;
            }
            if rcode == 0 && ancount > 0 {
                c.answers += 1;
                c.answer_records += u64::from(ancount);
                c.min_records = Some(c.min_records.map_or(ancount, |m| m.min(ancount)));
                c.max_records = c.max_records.max(ancount);
            }
            if c.lat_us.len() < MAX_SAMPLES {
                let us = got.duration_since(sent).as_micros().min(u32::MAX as u128) as u32;
                c.lat_us.push(us);
            }
        }
        w.send_one();
    }
    w.c.in_flight_at_end = w.pending;
    Ok(w.c)
}

pub fn run(o: Opts) -> io::Result<()> {
    check_loopback(&o.server)?;
    query_packet(&o.name)?;
    let workers = o.workers.clamp(1, 64);
    let concurrency = o.concurrency.clamp(workers, 60_000);
    if !(o.seconds > 0.0 && o.seconds <= 3600.0 && o.warmup >= 0.0 && o.warmup <= 60.0) {
        return Err(other("--seconds must be in (0, 3600], --warmup in [0, 60]"));
    }
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(o.warmup);
    let end = measure_from + Duration::from_secs_f64(o.seconds);
    let seed0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9e37_79b9)
        ^ u64::from(std::process::id()) << 32;

    let me = std::process::id() as i32;
    let (results, cpu, self_cpu, busy) = std::thread::scope(|s| {
        let o = &o;
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                // Spread the in-flight queries evenly over the workers.
                let share = concurrency / workers + usize::from(w < concurrency % workers);
                let seed = seed0.wrapping_add((w as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                s.spawn(move || worker(o, share, seed, measure_from, end))
            })
            .collect();
        // The server's and this process's CPU over exactly the measured window.
        std::thread::sleep(measure_from.saturating_duration_since(Instant::now()));
        let cpu0 = o.pid.map(procfs::cpu_seconds);
        let self0 = procfs::cpu_seconds(me);
        let m0 = procfs::machine_ticks();
        std::thread::sleep(end.saturating_duration_since(Instant::now()));
        let cpu = match (o.pid, cpu0) {
            (Some(p), Some(c0)) => Some(procfs::cpu_seconds(p) - c0),
            _ => None,
        };
        let self_cpu = procfs::cpu_seconds(me) - self0;
        let busy = procfs::busy_percent(m0, procfs::machine_ticks());
        let results: Vec<io::Result<Counts>> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(other("worker panicked"))))
            .collect();
        (results, cpu, self_cpu, busy)
    });

    let mut t = Counts::default();
    let mut lat: Vec<u32> = Vec::new();
    for r in results {
        let c = r?;
        t.sent += c.sent;
        t.responses += c.responses;
        t.answers += c.answers;
        t.answer_records += c.answer_records;
        t.min_records = match (t.min_records, c.min_records) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        t.max_records = t.max_records.max(c.max_records);
        for (i, n) in c.rcodes.iter().enumerate() {
            t.rcodes[i] += n;
        }
        t.truncated += c.truncated;
        t.timeouts += c.timeouts;
        t.unmatched += c.unmatched;
        t.malformed += c.malformed;
        t.send_errors += c.send_errors;
        if !c.last_error.is_empty() {
            t.last_error = c.last_error;
        }
        t.in_flight_at_end += c.in_flight_at_end;
        lat.extend(c.lat_us);
    }
    lat.sort_unstable();
    let lat: Vec<u64> = lat.into_iter().map(u64::from).collect();
    let rcodes: BTreeMap<String, u64> = t
        .rcodes
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| (rcode_name(i as u8), *n))
        .collect();
    let secs = o.seconds;
    println!(
        "{}",
        json!({
            "test": "dns_load", "label": o.label, "server": o.server.to_string(), "name": o.name,
            "concurrency": concurrency, "workers": workers, "seconds": secs, "warmup_s": o.warmup,
            "timeout_ms": o.timeout.as_millis() as u64,
            "sent": t.sent, "responses": t.responses, "answers": t.answers,
            "responses_per_s": t.responses as f64 / secs,
            "answers_per_s": t.answers as f64 / secs,
            "answer_records_min": t.min_records, "answer_records_max": t.max_records,
            "answer_records_mean": if t.answers > 0 { t.answer_records as f64 / t.answers as f64 } else { 0.0 },
            "rcodes": rcodes, "truncated": t.truncated, "timeouts": t.timeouts,
            "unmatched": t.unmatched, "malformed": t.malformed, "errors": t.send_errors,
            "last_error": t.last_error, "in_flight_at_end": t.in_flight_at_end,
            "p50_us": pct(&lat, 0.50), "p99_us": pct(&lat, 0.99),
            "server_cpu_s": cpu,
            "server_cpu_s_per_100k_answers": cpu.filter(|_| t.answers > 0).map(|c| c * 1e5 / t.answers as f64),
            "loadgen_cpu_s": self_cpu,
            "machine_busy_pct": busy,
        })
    );
    Ok(())
}
