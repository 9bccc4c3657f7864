//! The DNS responder's fast path against its general path, on arbitrary packets: two
//! responders over one zone, one answering as the socket loops do (`answer`, fast path first),
//! one through hickory's codec only (`answer_general`). Asserted: both drop or both answer, and
//! the answers decode to the same message (records, order, TTLs, flags, EDNS), so a query the
//! fast path takes is answered exactly as before it existed.
#![no_main]

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use carousel::dns::responder::{Answer, Lookup, Responder, Settings, Transport, Zone};
use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;

struct Fixed;

impl Zone for Fixed {
    fn lookup(&self, name: &str) -> Lookup {
        let a = |s: &str| s.parse::<IpAddr>().expect("literal");
        match name {
            "chat.fuzz.test" => Lookup::Found(Answer {
                cluster: "chat.fuzz.test".into(),
                addrs: vec![a("127.0.0.11"), a("127.0.0.12"), a("127.0.0.13"), a("::1")],
                degraded: true,
                ..Answer::default()
            }),
            "v4.fuzz.test" => Lookup::Found(Answer {
                cluster: "v4.fuzz.test".into(),
                addrs: (1..=40u8).map(|i| IpAddr::from([127, 0, 1, i])).collect(),
                ..Answer::default()
            }),
            "new.fuzz.test" => Lookup::NotReady,
            _ => Lookup::NotOurs,
        }
    }
}

fn responders() -> &'static (Responder, Responder) {
    static R: OnceLock<(Responder, Responder)> = OnceLock::new();
    R.get_or_init(|| {
        let one = || {
            Responder::new(
                Arc::new(Fixed),
                Settings {
                    ttl: 2,
                    max_answers: 30,
                    allow_clients: vec!["127.0.0.0/8".parse().expect("literal")],
                    rate: u32::MAX / 4,
                },
            )
        };
        (one(), one())
    })
}

fuzz_target!(|data: &[u8]| {
    let (fast, general) = responders();
    let src: IpAddr = "127.0.0.1".parse().expect("literal");
    for transport in [Transport::Udp, Transport::Tcp] {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let answered = fast.answer(data, src, transport, &mut a);
        assert_eq!(answered, general.answer_general(data, src, transport, &mut b));
        if !answered {
            continue;
        }
        let (ma, mb) = (Message::from_vec(&a), Message::from_vec(&b));
        assert_eq!(format!("{ma:?}"), format!("{mb:?}"), "fast {a:?} general {b:?}");
    }
});
