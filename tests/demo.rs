//! `carousel demo` runs end to end: four acts, a member killed and one blackholed, no failed
//! request, and failovers counted.

#[test]
fn demo_runs_without_failed_requests() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_carousel"))
        .args(["demo", "--seconds", "3"])
        .output()
        .expect("run carousel demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for act in ["act 1", "act 2", "act 3", "act 4"] {
        assert!(stdout.contains(act), "{stdout}");
    }
    assert!(stdout.contains(", 0 failed,"), "{stdout}");
    assert!(
        stdout.contains("down") || stdout.contains("ejected"),
        "the demo never showed a member out: {stdout}"
    );
    let failovers: u64 = stdout
        .split(" failed, ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("summary line");
    assert!(failovers >= 1, "{stdout}");
}
