//! The forward head path end to end: carousel's admission of an absolute-form request
//! (`protocol::http::parse_forward`: limits, hygiene, Host rules, pipelining) and then the parser
//! pingora-proxy runs on the bytes carousel hands it (Pingora's HTTP/1 `read_request`, which also
//! validates authority and framing). Asserted: nothing panics, and every head carousel admits is
//! accepted by Pingora with the same method and target, so no request can be refused by Pingora
//! unseen (its refusals reach no hook carousel could log from).
#![no_main]

use std::io::Cursor;

use carousel::protocol::http::{forward_bytes, parse_forward};
use libfuzzer_sys::fuzz_target;
use pingora_core::protocols::http::v1::server::HttpSession;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(Some((forward, used))) = parse_forward(data) else {
        return;
    };
    assert!(used <= data.len());
    let bytes = forward_bytes(data, used, &forward.target);
    let mut session = HttpSession::new(Box::new(Cursor::new(bytes)));
    let read = runtime().block_on(session.read_request());
    match read {
        Ok(Some(_)) => {}
        other => panic!(
            "carousel admitted a head Pingora refuses: {other:?}\n{:?}",
            String::from_utf8_lossy(&data[..used])
        ),
    }
    let req = session.req_header();
    assert_eq!(req.method.as_str(), forward.head.method);
    // Pingora drops a fragment from the target; carousel does the same (finding F3).
    let target = forward.head.target.split('#').next().unwrap_or_default();
    assert_eq!(req.raw_path(), target.as_bytes());
});
