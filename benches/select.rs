//! Cost of one member pick: 3 vs 1,000 members, with none and a third of them down.
//! Target (issue: clusters): ≤ 100 ns per pick, within 1.2× between 3 and 1,000 members.

use std::hint::black_box;
use std::sync::Arc;

use carousel::cluster::{Member, Pool};
use carousel::config::Selection;
use criterion::{criterion_group, criterion_main, Criterion};

fn pool(n: usize, down_every: Option<usize>) -> Arc<Pool> {
    let members: Vec<Arc<Member>> = (0..n)
        .map(|i| {
            let addr = format!("127.{}.{}.{}:80", (i >> 16) & 255, (i >> 8) & 255, i & 255)
                .parse()
                .unwrap();
            Arc::new(Member::new("bench", addr, 1, 0))
        })
        .collect();
    if let Some(k) = down_every {
        for (i, m) in members.iter().enumerate() {
            if i % k == 0 {
                m.report_check(false, "down", 1, 1, 0);
            }
        }
    }
    Arc::new(Pool::new(members, 0))
}

fn picks(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick");
    for n in [3usize, 1000] {
        for (label, down) in [("0pct_down", None), ("33pct_down", Some(3))] {
            let p = pool(n, down);
            for mode in [
                Selection::RoundRobin,
                Selection::LeastConnections,
                Selection::RandomTwo,
            ] {
                g.bench_function(format!("{mode:?}/{n}_members/{label}"), |b| {
                    b.iter(|| black_box(p.select(mode, 0).next()))
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, picks);
criterion_main!(benches);
