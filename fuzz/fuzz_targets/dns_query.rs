//! The DNS responder's query handling on arbitrary packets: hickory's decoder, then carousel's
//! handler against a fixed zone. Asserted: nothing panics; every response decodes, answers the
//! query's id, carries one of the codes the responder uses, is authoritative without recursion,
//! and a NOERROR answer to A/AAAA for a published name is never empty.
#![no_main]

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};

use carousel::dns::responder::{Answer, Lookup, Responder, Settings, SrvAnswer, Zone};
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::net::NetError;
use hickory_server::proto::op::{Message, ResponseCode};
use hickory_server::proto::rr::{Record, RecordType};
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use libfuzzer_sys::fuzz_target;

struct Fixed;

impl Zone for Fixed {
    fn lookup(&self, name: &str) -> Lookup {
        let a = |s: &str| s.parse::<IpAddr>().expect("literal");
        match name {
            "chat.fuzz.test" | "_chat._tcp.fuzz.test" => Lookup::Found(Answer {
                cluster: "chat.fuzz.test".into(),
                addrs: vec![a("127.0.0.11"), a("127.0.0.12"), a("::1")],
                srv: vec![SrvAnswer {
                    priority: 0,
                    weight: 10,
                    port: 5222,
                    target: "127-0-0-11.chat.fuzz.test".into(),
                    addr: a("127.0.0.11"),
                }],
                degraded: true,
                all_down: false,
            }),
            "new.fuzz.test" => Lookup::NotReady,
            _ => Lookup::NotOurs,
        }
    }
}

#[derive(Clone)]
struct Capture(Arc<Mutex<Option<Vec<u8>>>>);

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let mut buf = Vec::new();
        let mut enc = BinEncoder::new(&mut buf);
        enc.set_max_size(1232);
        let info = response.destructive_emit(&mut enc)?;
        *self.0.lock().expect("lock") = Some(buf);
        Ok(info)
    }
}

fn fixture() -> &'static (tokio::runtime::Runtime, Responder) {
    static F: OnceLock<(tokio::runtime::Runtime, Responder)> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let responder = Responder::new(
            Arc::new(Fixed),
            Settings {
                ttl: 2,
                max_answers: 8,
                allow_clients: vec!["127.0.0.0/8".parse().expect("literal")],
                rate: u32::MAX / 4,
            },
        );
        (rt, responder)
    })
}

fuzz_target!(|data: &[u8]| {
    let (rt, responder) = fixture();
    let src: SocketAddr = "127.0.0.1:5353".parse().expect("literal");
    let Ok(request) = Request::from_bytes(data.to_vec(), src, Protocol::Udp) else {
        return;
    };
    let capture = Capture(Arc::new(Mutex::new(None)));
    rt.block_on(responder.handle_request::<_, TokioTime>(&request, capture.clone()));
    let Some(bytes) = capture.0.lock().expect("lock").take() else {
        return;
    };
    let msg = Message::from_vec(&bytes).expect("the response decodes");
    assert_eq!(msg.metadata.id, request.metadata.id);
    let code = msg.metadata.response_code;
    assert!(
        matches!(
            code,
            ResponseCode::NoError
                | ResponseCode::Refused
                | ResponseCode::ServFail
                | ResponseCode::FormErr
                | ResponseCode::NotImp
        ),
        "{code:?}"
    );
    assert!(!msg.metadata.recursion_available);
    if code == ResponseCode::NoError {
        assert!(msg.metadata.authoritative);
        if let Some(q) = request.queries.queries().first() {
            let name = q.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
            let t = q.query_type();
            if name == "chat.fuzz.test" && (t == RecordType::A || t == RecordType::AAAA) {
                assert!(!msg.answers.is_empty() || msg.metadata.truncation, "empty answer");
            }
        }
    }
});
