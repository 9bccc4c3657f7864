//! Regression tests for bugs found while fuzzing (see docs/FUZZING.md, "Findings").
//!
//! A test that fails until its bug is fixed is `#[ignore]`d with the reason; the owner of the
//! code removes the `#[ignore]` with the fix.

use std::sync::mpsc;
use std::time::Duration;

use carousel::config::ConfigError;
use carousel::resources::Resources;

/// Finding F1 (2026-11-25): checking a configuration (then `Config::parse`, now
/// `Resources::check`, what `carousel check`, start-up and reload run) read the file named by `access.users_file` with
/// `read_to_string` and no `is_file()` check (unlike `listener.tls.cert`/`key`), so a FIFO, a
/// terminal or `/dev/stdin` blocks config parsing (`carousel check`, startup, SIGHUP reload)
/// forever, and `/dev/zero` reads until memory runs out. Expected: an error at
/// `access.users_file`, promptly.
#[cfg(unix)]
#[test]
fn config_parse_does_not_block_on_a_fifo_users_file() {
    let fifo = std::env::temp_dir().join(format!(
        "carousel-fuzz-regression-{}.fifo",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&fifo);
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success(), "mkfifo {} failed", fifo.display());

    let text = format!(
        "[[listener]]\naddress = \"127.0.0.1:1\"\nprotocols = [\"http\"]\n\n[access]\nusers_file = '{}'\n",
        fifo.display()
    );
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(Resources::check(&text, "regression.toml").map(|(c, _)| c));
    });
    let outcome = rx.recv_timeout(Duration::from_secs(5));
    if outcome.is_err() {
        // Release the blocked reader: open the write end and close it at once, so it sees EOF.
        let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
    }
    let _ = worker.join();
    let _ = std::fs::remove_file(&fifo);

    match outcome.expect("Config::parse blocked on a FIFO named by access.users_file") {
        Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "access.users_file"),
        other => panic!("expected an error at access.users_file, got {other:?}"),
    }
}
