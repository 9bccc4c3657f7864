//! The DNS responder's query handling on arbitrary packets, as its socket loops call it
//! (`Responder::answer`), against a fixed zone, over UDP and TCP. Asserted: nothing panics; every
//! answer decodes, carries the query's id, one of the codes the responder uses, never recursion,
//! fits its transport (512 bytes without EDNS, 1232 with); a NOERROR answer is authoritative, and
//! one to A/AAAA for a published name is never empty (unless truncated); SRV answers keep to
//! `max_answers`.
#![no_main]

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use carousel::dns::responder::{Answer, Lookup, Responder, Settings, SrvAnswer, Transport, Zone};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use libfuzzer_sys::fuzz_target;

struct Fixed;

impl Zone for Fixed {
    fn lookup(&self, name: &str) -> Lookup {
        let a = |s: &str| s.parse::<IpAddr>().expect("literal");
        match name {
            "chat.fuzz.test" | "_chat._tcp.fuzz.test" => Lookup::Found(Answer {
                cluster: "chat.fuzz.test".into(),
                addrs: vec![a("127.0.0.11"), a("127.0.0.12"), a("::1")],
                srv: (1..=20u8)
                    .map(|i| SrvAnswer {
                        priority: 0,
                        weight: 10,
                        port: 5222,
                        target: format!("127-0-0-{i}.chat.fuzz.test"),
                        addr: IpAddr::from([127, 0, 0, i]),
                    })
                    .collect(),
                degraded: true,
                all_down: false,
            }),
            "new.fuzz.test" => Lookup::NotReady,
            _ => Lookup::NotOurs,
        }
    }
}

const MAX_ANSWERS: usize = 8;

fn responder() -> &'static Responder {
    static R: OnceLock<Responder> = OnceLock::new();
    R.get_or_init(|| {
        Responder::new(
            Arc::new(Fixed),
            Settings {
                ttl: 2,
                max_answers: MAX_ANSWERS,
                allow_clients: vec!["127.0.0.0/8".parse().expect("literal")],
                rate: u32::MAX / 4,
            },
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let src: IpAddr = "127.0.0.1".parse().expect("literal");
    let mut out = Vec::new();
    for transport in [Transport::Udp, Transport::Tcp] {
        if !responder().answer(data, src, transport, &mut out) {
            continue;
        }
        let msg = Message::from_vec(&out).expect("the answer decodes");
        assert_eq!(out[..2], data[..2], "the query's id");
        let request = Message::from_vec(data).ok();
        if transport == Transport::Udp {
            let limit = match request.as_ref().and_then(|r| r.edns.as_ref()) {
                Some(_) => 1232,
                None => 512,
            };
            assert!(out.len() <= limit, "{} bytes over UDP", out.len());
        }
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
        if code != ResponseCode::NoError {
            continue;
        }
        assert!(msg.metadata.authoritative);
        let srv = msg
            .answers
            .iter()
            .filter(|r| r.record_type() == RecordType::SRV)
            .count();
        assert!(srv <= MAX_ANSWERS, "{srv} SRV records");
        if let Some(q) = request.as_ref().and_then(|r| r.queries.first()) {
            let name = q.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
            let t = q.query_type();
            if name == "chat.fuzz.test" && (t == RecordType::A || t == RecordType::AAAA) {
                assert!(!msg.answers.is_empty() || msg.metadata.truncation, "empty answer");
            }
        }
    }
});
