//! The three SOCKS5 parsers (greeting, RFC 1929 user/pass, request) on the same
//! input: none panics, and each complete message is self-delimiting:
//! `used <= len`, `input[..used]` alone parses the same, and every shorter
//! prefix is still "need more" (`Ok(None)`).
#![no_main]

use carousel::protocol::socks5::{parse_greeting, parse_request, parse_user_pass, Error};
use libfuzzer_sys::fuzz_target;
use std::fmt::Debug;

/// Checks the prefix invariants for one parser's result on `data`.
fn check<T: Clone + PartialEq + Debug>(
    data: &[u8],
    parse: impl Fn(&[u8]) -> Result<Option<(T, usize)>, Error>,
) {
    if let Ok(Some((value, used))) = parse(data) {
        assert!(used <= data.len(), "used {used} > len {}", data.len());
        assert!(used > 0, "a complete message used 0 bytes");
        let again = parse(&data[..used]);
        assert_eq!(again, Ok(Some((value, used))));
        for k in 0..used {
            assert_eq!(parse(&data[..k]), Ok(None), "prefix {k} of {used}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data, parse_greeting);
    check(data, parse_user_pass);
    check(data, parse_request);
    // Every request error maps to a reply or to "just close", without panicking.
    if let Err(e) = parse_request(data) {
        let _ = e.reply();
    }
});
