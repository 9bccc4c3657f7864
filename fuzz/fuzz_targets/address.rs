//! The destination canonicaliser and the guard built on it: for any IPv4 or IPv6 address, the
//! canonical form is stable (canonicalising twice changes nothing), and a rule allowing `*` never
//! lets through an address whose canonical form is loopback, link-local, or "this host".
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;

use carousel::address::{destination, is_unspecified};
use carousel::config::Config;
use carousel::policy::{Policy, Verdict};
use libfuzzer_sys::fuzz_target;

fn star() -> &'static Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    P.get_or_init(|| {
        let text = "[[listener]]\naddress = \"127.0.0.1:3128\"\nprotocols = [\"http\"]\n\
                    [[access.rule]]\naction = \"allow\"\ndestinations = [\"*\"]\n";
        Policy::new(&Config::parse(text, "fuzz").expect("config"))
    })
}

fn guarded(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local() || v4.octets()[0] == 0,
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let ip = match data.len() {
        4 => IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3])),
        n if n >= 16 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&data[..16]);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return,
    };
    let canonical = destination(ip);
    assert_eq!(destination(canonical), canonical, "{ip} -> {canonical}");
    assert_eq!(is_unspecified(ip), is_unspecified(canonical));
    let port = 8080;
    let verdict = star().check_address(
        "127.0.0.1".parse().expect("literal"),
        None,
        None,
        SocketAddr::new(ip, port),
    );
    if guarded(canonical) {
        assert!(
            matches!(verdict, Verdict::Deny(_)),
            "{ip} (canonical {canonical}) passed a * rule: {verdict:?}"
        );
    }
});
