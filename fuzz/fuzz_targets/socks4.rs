//! SOCKS4/4a request parser: never panics, and a complete request is
//! self-delimiting: `used <= len`, `input[..used]` alone parses the same, and
//! every shorter prefix is still "need more" (`Ok(None)`), as a reader that
//! feeds the parser byte by byte relies on.
#![no_main]

use carousel::protocol::socks4::parse_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let result = parse_request(data);
    if let Ok(Some((request, used))) = &result {
        let used = *used;
        assert!(used <= data.len(), "used {used} > len {}", data.len());
        assert!(
            used >= 9,
            "a SOCKS4 request is at least 9 bytes, used {used}"
        );
        let again = parse_request(&data[..used]);
        assert_eq!(again, Ok(Some((request.clone(), used))));
        for k in 0..used {
            assert_eq!(parse_request(&data[..k]), Ok(None), "prefix {k} of {used}");
        }
    }
});
