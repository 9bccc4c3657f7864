//! The PROXY protocol header parser on arbitrary bytes, for every accepted version: it never
//! panics; a complete header is self-delimiting (its length is within the input, the prefix of
//! that length alone parses the same, and every shorter prefix is "need more" or, past a v1
//! header's 107 bytes, refused); an `Any` listener accepts what `V1` or `V2` accepts.
#![no_main]

use carousel::protocol::proxy_header::{parse, Accept};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for accept in [Accept::V1, Accept::V2, Accept::Any] {
        let r = parse(data, accept);
        if let Ok(Some((header, used))) = &r {
            let used = *used;
            assert!(used > 0 && used <= data.len());
            assert_eq!(parse(&data[..used], accept), Ok(Some((*header, used))));
            for k in 0..used.min(256) {
                assert!(
                    matches!(parse(&data[..k], accept), Ok(None)),
                    "prefix {k} of {used}"
                );
            }
            if accept != Accept::Any {
                assert_eq!(parse(data, Accept::Any), Ok(Some((*header, used))));
            }
        }
    }
});
