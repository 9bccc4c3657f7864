//! Reading a proxy's CPU time and memory from /proc, summed over its process tree (Squid, Dante and
//! friends fork children; threads are already included in a process's own numbers).

use std::collections::HashMap;
use std::fs;

/// Fields of /proc/PID/stat after the command name: (ppid, utime+stime+cutime+cstime in ticks).
fn stat(pid: i32) -> Option<(i32, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state), so field N is f[N - 3].
    let ppid = f.get(1)?.parse().ok()?;
    let mut ticks = 0u64;
    for i in 11..=14 {
        ticks += f.get(i)?.parse::<u64>().ok()?;
    }
    Some((ppid, ticks))
}

/// `root` and all of its live descendants.
pub fn tree(root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            if let Some((ppid, _)) = stat(pid) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    // Bounded: every pid is visited at most once (a pid has one parent).
    while i < out.len() && out.len() < 1_000_000 {
        if let Some(kids) = children.get(&out[i]) {
            out.extend(kids.iter().copied());
        }
        i += 1;
    }
    out
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU seconds (user + system, including waited-for children) of the whole tree.
pub fn cpu_seconds(root: i32) -> f64 {
    let ticks: u64 = tree(root)
        .iter()
        .filter_map(|&p| stat(p))
        .map(|(_, t)| t)
        .sum();
    ticks as f64 / clock_ticks()
}

/// The whole machine's CPU ticks from /proc/stat: (busy, total), busy being everything but idle
/// and iowait. Two readings give how busy both cores were over a step.
pub fn machine_ticks() -> (u64, u64) {
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// Busy share of the machine between two `machine_ticks` readings, in percent.
pub fn busy_percent(before: (u64, u64), after: (u64, u64)) -> Option<f64> {
    let total = after.1.checked_sub(before.1)?;
    let busy = after.0.checked_sub(before.0)?;
    (total > 0).then(|| 100.0 * busy as f64 / total as f64)
}

/// Memory of the tree.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mem {
    /// Sum of VmRSS, KiB (counts shared pages once per process).
    pub rss_kib: u64,
    /// Sum of Pss from smaps_rollup, KiB (shared pages split between their users).
    pub pss_kib: u64,
    /// Processes in the tree.
    pub procs: usize,
}

fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Memory of `root` and its descendants.
pub fn memory(root: i32) -> Mem {
    let mut m = Mem::default();
    for pid in tree(root) {
        let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        m.procs += 1;
        m.rss_kib += kib_field(&status, "VmRSS:").unwrap_or(0);
        if let Ok(rollup) = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
            m.pss_kib += kib_field(&rollup, "Pss:").unwrap_or(0);
        }
    }
    m
}

/// VmRSS of one process (not its tree), KiB; `None` once it is gone.
pub fn rss_kib(pid: i32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kib_field(&status, "VmRSS:")
}

/// Open file descriptors of one process (entries of /proc/PID/fd); `None` once it is gone.
pub fn fd_count(pid: i32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}
