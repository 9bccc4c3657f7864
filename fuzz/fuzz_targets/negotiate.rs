//! The `Proxy-Authorization` parser (Basic and RFC 4559 Negotiate) and the RFC 1961 SOCKS5
//! GSS-API framing on the same input: none panics; a Negotiate token is never empty or larger
//! than `MAX_TOKEN`; a complete GSS-API message is self-delimiting (`used <= len`, the prefix
//! alone parses the same, every shorter prefix is "need more") and re-encodes to its bytes.
#![no_main]

use carousel::identity::negotiate::{parse, Credentials, MAX_TOKEN};
use carousel::protocol::socks5_gssapi as gss;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Credentials::Negotiate(token)) = parse(data) {
        assert!(!token.is_empty() && token.len() <= MAX_TOKEN);
    }
    for kind in [gss::AUTHENTICATION, gss::PROTECTION] {
        if let Ok(Some((msg, used))) = gss::parse(data, kind) {
            assert!(used <= data.len() && used > 4);
            assert_eq!(gss::parse(&data[..used], kind), Ok(Some((msg.clone(), used))));
            for k in 0..used {
                assert_eq!(gss::parse(&data[..k], kind), Ok(None), "prefix {k}");
            }
            assert_eq!(gss::encode(msg.kind, &msg.token).as_deref(), Some(&data[..used]));
        }
    }
});
