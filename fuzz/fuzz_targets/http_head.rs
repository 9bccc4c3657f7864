//! HTTP request-head parser and CONNECT target parser: neither panics, a
//! complete head is self-delimiting (`used <= len`, `used <= MAX_HEAD`,
//! `input[..used]` alone parses the same, and shorter prefixes are still
//! "need more"), and a parsed CONNECT target round-trips through its
//! `Display` form.
#![no_main]

use carousel::protocol::http::{connect_target, parse_head, MAX_HEAD};
use carousel::protocol::Target;
use libfuzzer_sys::fuzz_target;

/// `connect_target` must not panic; when it accepts, the port is non-zero
/// and the canonical `host:port` rendering parses back to the same target.
fn check_target(authority: &str) {
    if let Ok(target) = connect_target(authority) {
        assert_ne!(target.port, 0, "{authority:?} gave port 0");
        let rendered = target.to_string();
        let again: Result<Target, _> = connect_target(&rendered);
        assert_eq!(again, Ok(target), "{authority:?} -> {rendered:?}");
    }
}

/// The prefix lengths below `used` to re-parse: all of them for short heads,
/// otherwise the last 64 and 64 evenly spaced ones (a head can be 16 KiB, and
/// each parse is linear, so checking every prefix would be quadratic).
fn prefixes(used: usize) -> impl Iterator<Item = usize> {
    let step = (used / 64).max(1);
    let tail_from = used.saturating_sub(64);
    (0..tail_from).step_by(step).chain(tail_from..used)
}

fuzz_target!(|data: &[u8]| {
    let result = parse_head(data);
    if let Ok(Some((head, used))) = &result {
        let used = *used;
        assert!(used <= data.len(), "used {used} > len {}", data.len());
        assert!(used <= MAX_HEAD, "used {used} > MAX_HEAD");
        let again = parse_head(&data[..used]);
        assert_eq!(again, Ok(Some((head.clone(), used))));
        for k in prefixes(used) {
            assert_eq!(parse_head(&data[..k]), Ok(None), "prefix {k} of {used}");
        }
        if head.method.eq_ignore_ascii_case("CONNECT") {
            check_target(&head.target);
        }
    }
    if let Err(e) = &result {
        let status = e.status();
        assert!(status == 400 || status == 431, "status {status}");
    }
    if let Ok(s) = std::str::from_utf8(data) {
        check_target(s);
    }
});
