//! Micro-benchmarks of the pure protocol parsers on typical client input: `cargo bench --bench
//! protocol`. (`cargo test --all-targets` runs each benchmark once as a smoke test.)

use std::hint::black_box;

use carousel::protocol::{http, socks4, socks5};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// SOCKS5 CONNECT with a domain-name address (remote resolution, the common case for carousel).
fn socks5_domain(name: &str, port: u16) -> Vec<u8> {
    let mut v = vec![5, 1, 0, 3, name.len() as u8];
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&port.to_be_bytes());
    v
}

fn bench_socks5(c: &mut Criterion) {
    let inputs: [(&str, Vec<u8>); 4] = [
        ("domain", socks5_domain("chat.example.com", 443)),
        (
            "domain_long",
            socks5_domain("sametime-community-cluster-01.internal.example.com", 1533),
        ),
        ("ipv4", vec![5, 1, 0, 1, 192, 0, 2, 10, 0x01, 0xbb]),
        ("ipv6", {
            let mut v = vec![5, 1, 0, 4];
            v.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            v.extend_from_slice(&443u16.to_be_bytes());
            v
        }),
    ];
    let mut g = c.benchmark_group("socks5::parse_request");
    for (name, input) in &inputs {
        assert!(
            matches!(socks5::parse_request(input), Ok(Some(_))),
            "{name}"
        );
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_function(*name, |b| {
            b.iter(|| socks5::parse_request(black_box(input)))
        });
    }
    // A request cut short: the parser must answer "need more" cheaply.
    let partial = socks5_domain("chat.example.com", 443);
    let partial = &partial[..partial.len() - 3];
    g.bench_function("partial", |b| {
        b.iter(|| socks5::parse_request(black_box(partial)))
    });
    g.finish();
}

fn bench_socks4(c: &mut Criterion) {
    let mut socks4a = vec![4, 1, 0x01, 0xbb, 0, 0, 0, 1];
    socks4a.extend_from_slice(b"alice\0chat.example.com\0");
    let mut socks4 = vec![4, 1, 0x00, 0x50, 192, 0, 2, 10];
    socks4.extend_from_slice(b"alice\0");
    let inputs: [(&str, Vec<u8>); 2] = [("socks4a_domain", socks4a), ("socks4_ipv4", socks4)];
    let mut g = c.benchmark_group("socks4::parse_request");
    for (name, input) in &inputs {
        assert!(
            matches!(socks4::parse_request(input), Ok(Some(_))),
            "{name}"
        );
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_function(*name, |b| {
            b.iter(|| socks4::parse_request(black_box(input)))
        });
    }
    g.finish();
}

fn bench_http(c: &mut Criterion) {
    let connect: &[u8] = b"CONNECT chat.example.com:443 HTTP/1.1\r\n\
        Host: chat.example.com:443\r\n\
        User-Agent: curl/8.5.0\r\n\
        Proxy-Connection: Keep-Alive\r\n\r\n";
    let get: &[u8] = b"GET http://chat.example.com/stwebclient/index.jsp?lang=en HTTP/1.1\r\n\
        Host: chat.example.com\r\n\
        User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
        Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n\
        Accept-Language: en-US,en;q=0.5\r\n\
        Accept-Encoding: gzip, deflate\r\n\
        Cookie: JSESSIONID=0000aBcDeFgHiJkLmNoPqRsTuVw:1a2b3c4d5e; LtpaToken=AAECAzY1\r\n\
        Proxy-Connection: keep-alive\r\n\
        Upgrade-Insecure-Requests: 1\r\n\r\n";
    // CONNECT head followed by early tunnel bytes (a TLS ClientHello start): not consumed.
    let mut connect_early = connect.to_vec();
    connect_early.extend_from_slice(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc]);
    let inputs: [(&str, &[u8]); 3] = [
        ("connect", connect),
        ("connect_with_early_data", &connect_early),
        ("get_absolute_form", get),
    ];
    let mut g = c.benchmark_group("http::parse_head");
    for (name, input) in inputs {
        assert!(matches!(http::parse_head(input), Ok(Some(_))), "{name}");
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_function(name, |b| b.iter(|| http::parse_head(black_box(input))));
    }
    // Head still arriving: everything but the final blank line.
    let partial = &get[..get.len() - 2];
    g.bench_function("partial", |b| {
        b.iter(|| http::parse_head(black_box(partial)))
    });
    g.finish();
}

criterion_group!(benches, bench_socks5, bench_socks4, bench_http);
criterion_main!(benches);
