//! The health-aware DNS responder: authoritative answers for carousel's cluster names, for the
//! clients that resolve a cluster name themselves (direct connections, SOCKS "resolve locally",
//! browsers without a proxy), so a dead member disappears from their DNS as it does from the
//! proxy's rotation.
//!
//! Each answer reads the cluster state the proxy path uses, through a [`Zone`], at the moment it
//! is asked: nothing is copied into zone records on a timer. The rules, from the anchors:
//! - only usable members, rotated per answer, at most `max_answers` (Route 53 multivalue);
//! - never an empty answer: with no member usable, every member with TTL 1 (gdnsd, Route 53; an
//!   empty answer would be cached by clients and strand them), and the TTL halved while any
//!   member is down (gdnsd);
//! - authoritative only (AA=1, RA=0): names outside the clusters and clients outside
//!   `allow_clients` get REFUSED, a client past its rate is dropped, ANY gets a minimal answer
//!   (RFC 8482), so the responder is neither a resolver nor a reflector;
//! - EDNS payloads of at most 1232 bytes, TC=1 when an answer does not fit, TCP served.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, HINFO, SOA, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use ipnet::IpNet;

use super::wire;
use crate::bucket::TokenBucket;
use crate::metrics::metrics;
use crate::recent::Recent;

/// Largest UDP payload carousel answers with (the DNS flag day 2020 value).
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// One SRV target as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvAnswer {
    /// SRV priority.
    pub priority: u16,
    /// SRV weight.
    pub weight: u16,
    /// The member's port.
    pub port: u16,
    /// The target name (answered with `addr`).
    pub target: String,
    /// The member's address.
    pub addr: IpAddr,
}

/// What a name publishes right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// The cluster it belongs to (for metrics).
    pub cluster: String,
    /// The addresses to answer A/AAAA with.
    pub addrs: Vec<IpAddr>,
    /// The SRV records to answer SRV with.
    pub srv: Vec<SrvAnswer>,
    /// Some member is not usable (the TTL is halved).
    pub degraded: bool,
    /// No member is usable: every member is published, with TTL 1.
    pub all_down: bool,
}

/// Whether and what a name publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Not a name of ours: REFUSED.
    NotOurs,
    /// Ours, but its members are not discovered yet: SERVFAIL.
    NotReady,
    /// Ours: answer from this.
    Found(Answer),
}

/// Where the answers come from: the cluster state. A trait so the responder knows nothing of
/// clusters, and tests can hand it a fixed zone.
pub trait Zone: Send + Sync + 'static {
    /// What `name` (lowercase, no trailing dot) publishes now.
    fn lookup(&self, name: &str) -> Lookup;
}

/// The responder's settings, from `[responder]`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// TTL of positive answers.
    pub ttl: u32,
    /// Most records (A/AAAA, or SRV with their addresses) in one answer.
    pub max_answers: usize,
    /// Who may query.
    pub allow_clients: Vec<IpNet>,
    /// Queries per second per client address (burst: twice this).
    pub rate: u32,
}

/// How a query arrived: what an answer may weigh, and what may be asked, depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A datagram: answers within the EDNS payload (512 bytes without EDNS), TC=1 beyond.
    Udp,
    /// A TCP connection: answers up to 64 KiB.
    Tcp,
}

/// Client addresses whose query budgets are remembered (a flood from spoofed sources costs at
/// most twice this many small entries; see [`Recent`]).
const MAX_BUCKETS: usize = 65_536;

/// Answers the queries for carousel's cluster names (see the module doc). It decides from the
/// bytes alone, synchronously, so the socket loops that call it need no task per query.
pub struct Responder {
    zone: Arc<dyn Zone>,
    settings: Settings,
    turn: AtomicUsize,
    buckets: Recent<IpAddr, TokenBucket>,
    /// `carousel_dns_queries_total{qtype="A"|"AAAA",rcode="NOERROR"}`, looked up once: the
    /// fast path's answers count without a label lookup each.
    answered: [prometheus::IntCounter; 2],
}

/// The `qtype` label: a bounded set.
fn qtype_label(t: RecordType) -> &'static str {
    match t {
        RecordType::A => "A",
        RecordType::AAAA => "AAAA",
        RecordType::SRV => "SRV",
        RecordType::SOA => "SOA",
        RecordType::ANY => "ANY",
        _ => "other",
    }
}

fn rcode_label(c: ResponseCode) -> &'static str {
    match c {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::NotImp => "NOTIMP",
        _ => "other",
    }
}

fn count(qtype: RecordType, rcode: &'static str) {
    metrics()
        .dns_queries
        .with_label_values(&[qtype_label(qtype), rcode])
        .inc();
}

fn name_of(s: &str) -> Option<Name> {
    let mut n = Name::from_ascii(s).ok()?;
    n.set_fqdn(true);
    Some(n)
}

fn address_record(owner: Name, ttl: u32, addr: IpAddr) -> Record {
    let rdata = match addr {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(owner, ttl, rdata)
}

/// The SOA a cluster name's answers carry: carousel is the zone's only server, and its minimum
/// (the negative TTL) is the positive TTL, so NODATA is not cached longer than an answer.
fn soa(owner: &Name, ttl: u32) -> Record {
    let rname = owner
        .prepend_label("hostmaster")
        .unwrap_or_else(|_| owner.clone());
    Record::from_rdata(
        owner.clone(),
        ttl,
        RData::SOA(SOA::new(owner.clone(), rname, 1, 3600, 600, 86400, ttl)),
    )
}

/// FORMERR for a packet whose header is readable but whose body is not: the header alone, the
/// query's id and opcode kept (RFC 1035 §4.1.1).
fn formerr_header(packet: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&packet[..2]);
    // QR=1, the opcode and RD as asked; RCODE 1.
    out.push(0x80 | (packet[2] & 0x79));
    out.push(1);
    out.extend_from_slice(&[0; 8]);
}

impl Responder {
    /// A responder answering from `zone`.
    pub fn new(zone: Arc<dyn Zone>, settings: Settings) -> Self {
        Self {
            zone,
            settings,
            turn: AtomicUsize::new(0),
            buckets: Recent::new(MAX_BUCKETS),
            answered: ["A", "AAAA"]
                .map(|t| metrics().dns_queries.with_label_values(&[t, "NOERROR"])),
        }
    }

    /// Whether `client` may ask one more query now.
    fn within_rate(&self, client: IpAddr) -> bool {
        let rate = f64::from(self.settings.rate);
        self.buckets.with(
            &client,
            || TokenBucket::full(2.0 * rate),
            |b| b.take(rate, 2.0 * rate),
        )
    }

    /// Answers one query from `src` that arrived over `transport`: the answer is written to
    /// `out` and `true` returned, or `false` when the packet is dropped (not a query, a client
    /// past its rate, a name that is no host name). The rate is checked before anything is
    /// decoded, and nothing is kept for a query after it is answered.
    pub fn answer(
        &self,
        packet: &[u8],
        src: IpAddr,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> bool {
        self.respond(packet, src, transport, out, true)
    }

    /// Answers as [`Responder::answer`] would if it had no fast path: what the differential fuzz
    /// target (`fuzz/fuzz_targets/dns_fast_path.rs`) holds the fast path to.
    pub fn answer_general(
        &self,
        packet: &[u8],
        src: IpAddr,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> bool {
        self.respond(packet, src, transport, out, false)
    }

    fn respond(
        &self,
        packet: &[u8],
        src: IpAddr,
        transport: Transport,
        out: &mut Vec<u8>,
        fast: bool,
    ) -> bool {
        out.clear();
        // Shorter than a header, or a response (answering those could loop two servers).
        if packet.len() < 12 || packet[2] & 0x80 != 0 {
            count(RecordType::Unknown(0), "DROPPED");
            return false;
        }
        let client = crate::address::client(src);
        if !self.within_rate(client) {
            metrics().dns_rate_limited.inc();
            return false;
        }
        let mut name = [0u8; 256];
        if let Some(q) = fast.then(|| wire::read(packet, &mut name)).flatten() {
            if self.fast(&q, client, transport, out) {
                return true;
            }
        }
        self.general(packet, client, transport, out)
    }

    /// Whether `client` may query at all (outside `allow_clients`: REFUSED).
    fn allowed(&self, client: IpAddr) -> bool {
        self.settings
            .allow_clients
            .iter()
            .any(|n| n.contains(&client))
    }

    /// The TTL an answer from `answer` carries: halved while a member is down, 1 when none is
    /// usable (so clients come back soon for a better answer).
    fn ttl_for(&self, answer: &Answer) -> u32 {
        if answer.all_down {
            1
        } else if answer.degraded {
            (self.settings.ttl / 2).max(1)
        } else {
            self.settings.ttl
        }
    }

    /// Answers a simple A/AAAA query straight into wire bytes, if it is one of ours with an
    /// address of its family that fits the transport; `false` leaves it to the general path,
    /// which then answers it as it always has (REFUSED, NODATA, TC=1, ...).
    fn fast(
        &self,
        q: &wire::Simple<'_>,
        client: IpAddr,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> bool {
        if !self.allowed(client) {
            return false;
        }
        let Lookup::Found(mut answer) = self.zone.lookup(q.name) else {
            return false;
        };
        let want_v4 = q.qtype == wire::TYPE_A;
        answer.addrs.retain(|a| a.is_ipv4() == want_v4);
        let addrs = &answer.addrs;
        let n = addrs.len();
        if n == 0 {
            return false;
        }
        let k = n.min(self.settings.max_answers);
        let payload = q.edns_payload.map(|p| p.clamp(512, MAX_UDP_PAYLOAD));
        let limit = match (transport, payload) {
            (Transport::Tcp, _) => usize::from(u16::MAX),
            (Transport::Udp, Some(p)) => usize::from(p),
            (Transport::Udp, None) => 512,
        };
        if wire::answer_len(q, k) > limit {
            return false;
        }
        if answer.all_down {
            metrics()
                .dns_all_down
                .with_label_values(&[&answer.cluster])
                .inc();
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let records = (0..k).map(|i| addrs[(turn + i) % n]);
        wire::write(q, self.ttl_for(&answer), records, payload.unwrap_or(0), out);
        self.answered[usize::from(!want_v4)].inc();
        metrics().dns_answer_records.observe(k as f64);
        true
    }

    /// Every query the fast path does not take: decoded with hickory, answered by the rules.
    fn general(
        &self,
        packet: &[u8],
        client: IpAddr,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> bool {
        let request = match Message::from_vec(packet) {
            Ok(m) => m,
            Err(_) => {
                count(RecordType::Unknown(0), "FORMERR");
                formerr_header(packet, out);
                return true;
            }
        };
        let qtype = request
            .queries
            .first()
            .map_or(RecordType::Unknown(0), |q| q.query_type());
        // A name that is no host name (binary labels, escapes) is never one of ours, and echoing
        // it back can make an answer no resolver decodes (fuzz finding F5): dropped.
        if request.queries.iter().any(|q| {
            let name = q.name().to_ascii();
            !crate::protocol::validate_hostname(name.trim_end_matches('.')) && name != "."
        }) {
            count(qtype, "DROPPED");
            return false;
        }
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.checking_disabled = request.metadata.checking_disabled;
        // The question is echoed when there is one: more than one is FORMERR (RFC 9619), and
        // echoing a hundred of them made an UPDATE's NOTIMP 517 bytes over UDP (fuzz finding F8).
        if let [q] = request.queries.as_slice() {
            response.add_query(q.clone());
        }
        let limit = match (transport, &request.edns) {
            (Transport::Tcp, _) => usize::from(u16::MAX),
            (Transport::Udp, Some(e)) => usize::from(e.max_payload().clamp(512, MAX_UDP_PAYLOAD)),
            (Transport::Udp, None) => 512,
        };
        if let Some(req) = &request.edns {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            e.set_version(0);
            response.set_edns(e);
        }
        let code = self.fill(&request, client, transport, &mut response);
        count(qtype, rcode_label(code));
        response.metadata.response_code = code;
        if code == ResponseCode::NoError {
            metrics()
                .dns_answer_records
                .observe(response.answers.len() as f64);
        }
        encode(&response, limit, out)
    }

    /// Decides the answer to `request` and puts its records into `response`; returns its code.
    fn fill(
        &self,
        request: &Message,
        client: IpAddr,
        transport: Transport,
        response: &mut Message,
    ) -> ResponseCode {
        // REFUSED, not a drop, for a client outside `allow_clients`: as small as the query
        // (nothing to amplify), and it tells a misconfigured client why instead of making it
        // time out.
        if !self.allowed(client) {
            return ResponseCode::Refused;
        }
        if request.metadata.op_code != OpCode::Query
            || request.metadata.message_type != MessageType::Query
        {
            return ResponseCode::NotImp;
        }
        let [q] = request.queries.as_slice() else {
            return ResponseCode::FormErr;
        };
        // Only the Internet class is served (CH, HS, ANY: refused, as an authoritative server
        // without zones of those classes does). Zone transfers: not over UDP at all (NOTIMP), and
        // never to anyone over TCP (REFUSED): the members are published one answer at a time.
        if q.query_class() != DNSClass::IN {
            return ResponseCode::Refused;
        }
        if matches!(q.query_type(), RecordType::AXFR | RecordType::IXFR) {
            return match transport {
                Transport::Udp => ResponseCode::NotImp,
                Transport::Tcp => ResponseCode::Refused,
            };
        }
        let owner: Name = q.name().clone();
        let key = owner.to_ascii().trim_end_matches('.').to_ascii_lowercase();
        let answer = match self.zone.lookup(&key) {
            Lookup::NotOurs => return ResponseCode::Refused,
            Lookup::NotReady => return ResponseCode::ServFail,
            Lookup::Found(a) => a,
        };
        response.metadata.authoritative = true;
        response.metadata.recursion_available = false;
        self.records(q, owner, &answer, response);
        ResponseCode::NoError
    }

    /// The records of a NOERROR answer to `q` from `answer`.
    fn records(&self, q: &Query, owner: Name, answer: &Answer, response: &mut Message) {
        let ttl = self.ttl_for(answer);
        if answer.all_down {
            metrics()
                .dns_all_down
                .with_label_values(&[&answer.cluster])
                .inc();
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let most = self.settings.max_answers;
        match q.query_type() {
            t @ (RecordType::A | RecordType::AAAA) => {
                let want_v4 = t == RecordType::A;
                let fam: Vec<IpAddr> = answer
                    .addrs
                    .iter()
                    .copied()
                    .filter(|a| a.is_ipv4() == want_v4)
                    .collect();
                let n = fam.len();
                for i in 0..n.min(most) {
                    response.add_answer(address_record(owner.clone(), ttl, fam[(turn + i) % n]));
                }
            }
            RecordType::SRV => {
                // At most `max_answers` targets, each with its address: a small query never
                // reflects a large answer.
                let n = answer.srv.len();
                for i in 0..n.min(most) {
                    let s = &answer.srv[(turn + i) % n];
                    let Some(target) = name_of(&s.target) else {
                        continue;
                    };
                    response.add_answer(Record::from_rdata(
                        owner.clone(),
                        ttl,
                        RData::SRV(SRV::new(s.priority, s.weight, s.port, target.clone())),
                    ));
                    response.add_additional(address_record(target, ttl, s.addr));
                }
            }
            RecordType::SOA => {
                response.add_answer(soa(&owner, self.settings.ttl));
            }
            RecordType::ANY => {
                // RFC 8482: a minimal answer to ANY, nothing worth amplifying.
                response.add_answer(Record::from_rdata(
                    owner.clone(),
                    self.settings.ttl,
                    RData::HINFO(HINFO::new("RFC8482".into(), String::new())),
                ));
            }
            _ => {}
        }
        // NODATA carries the SOA, whose minimum bounds how long it is cached.
        if response.answers.is_empty() {
            response.add_authority(soa(&owner, self.settings.ttl));
        }
    }
}

/// Encodes `response` into `out`; an answer larger than `limit` goes out truncated (TC=1, the
/// question only), which tells the client to ask again over TCP. `false` if it cannot be encoded.
fn encode(response: &Message, limit: usize, out: &mut Vec<u8>) -> bool {
    match response.to_vec() {
        Ok(bytes) if bytes.len() <= limit => {
            *out = bytes;
            true
        }
        Ok(_) => match response.truncate().to_vec() {
            Ok(bytes) => {
                *out = bytes;
                true
            }
            Err(_) => false,
        },
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;

    impl Zone for Fixed {
        fn lookup(&self, name: &str) -> Lookup {
            let srv = |i: u8| SrvAnswer {
                priority: 0,
                weight: 1,
                port: 5222,
                target: format!("127-0-0-{i}.chat.t"),
                addr: IpAddr::from([127, 0, 0, i]),
            };
            match name {
                "chat.t" | "_chat._tcp.chat.t" => Lookup::Found(Answer {
                    cluster: "chat.t".into(),
                    addrs: vec!["127.0.0.11".parse().unwrap(), "127.0.0.12".parse().unwrap()],
                    srv: (1..=40).map(srv).collect(),
                    ..Answer::default()
                }),
                _ => Lookup::NotOurs,
            }
        }
    }

    fn responder(max_answers: usize) -> Responder {
        Responder::new(
            Arc::new(Fixed),
            Settings {
                ttl: 2,
                max_answers,
                allow_clients: vec!["127.0.0.0/8".parse().unwrap()],
                rate: 1000,
            },
        )
    }

    fn ask_with(r: &Responder, packet: &[u8], transport: Transport) -> Option<Message> {
        let mut out = Vec::new();
        if !r.answer(packet, "127.0.0.1".parse().unwrap(), transport, &mut out) {
            return None;
        }
        Some(Message::from_vec(&out).expect("every answer decodes"))
    }

    fn ask(packet: &[u8]) -> Option<Message> {
        ask_with(&responder(8), packet, Transport::Udp)
    }

    fn query_class(name: &[u8], qtype: u16, class: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(name);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&class.to_be_bytes());
        q
    }

    fn query(name: &[u8], qtype: u16) -> Vec<u8> {
        query_class(name, qtype, 1)
    }

    const CHAT: &[u8] = b"\x04chat\x01t\x00";

    #[test]
    fn answers_refusals_and_nodata() {
        let m = ask(&query(CHAT, 1)).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative && !m.metadata.recursion_available);
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.answers.len(), 2);
        let m = ask(&query(b"\x05other\x01t\x00", 1)).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        let m = ask(&query(CHAT, 15)).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        assert_eq!(m.authorities.len(), 1, "NODATA carries the SOA");
    }

    /// Hardening (issue 26, item 9): CH, HS and ANY classes got IN answers, AXFR over UDP an
    /// empty NOERROR.
    #[test]
    fn other_classes_are_refused_and_zone_transfers_are_not_served() {
        for class in [3u16, 4, 255, 254] {
            let m = ask(&query_class(CHAT, 1, class)).unwrap();
            assert_eq!(
                m.metadata.response_code,
                ResponseCode::Refused,
                "class {class}"
            );
            assert!(m.answers.is_empty());
        }
        let r = responder(8);
        for qtype in [252u16, 251] {
            let udp = ask_with(&r, &query(CHAT, qtype), Transport::Udp).unwrap();
            assert_eq!(udp.metadata.response_code, ResponseCode::NotImp);
            let tcp = ask_with(&r, &query(CHAT, qtype), Transport::Tcp).unwrap();
            assert_eq!(tcp.metadata.response_code, ResponseCode::Refused);
            assert!(udp.answers.is_empty() && tcp.answers.is_empty());
        }
    }

    /// Hardening (issue 26, item 7): an SRV answer carried every target (40 here), whatever
    /// `max_answers` said.
    #[test]
    fn srv_answers_stay_within_max_answers() {
        let q = query(b"\x05_chat\x04_tcp\x04chat\x01t\x00", 33);
        for most in [1usize, 3, 8] {
            let m = ask_with(&responder(most), &q, Transport::Udp).unwrap();
            assert_eq!(m.answers.len(), most);
            assert_eq!(m.additionals.len(), most);
            let bytes = {
                let mut out = Vec::new();
                responder(most).answer(&q, "127.0.0.1".parse().unwrap(), Transport::Udp, &mut out);
                out.len()
            };
            assert!(bytes <= 512, "{most} targets: {bytes} bytes");
        }
        // Over TCP too: the bound is the answer's, not the transport's.
        let m = ask_with(&responder(8), &q, Transport::Tcp).unwrap();
        assert_eq!(m.answers.len(), 8);
    }

    #[test]
    fn short_garbage_and_responses_are_dropped_and_bad_bodies_get_formerr() {
        assert!(ask(b"").is_none());
        assert!(ask(&[0x12, 0x34, 1]).is_none());
        let mut response = query(CHAT, 1);
        response[2] |= 0x80;
        assert!(ask(&response).is_none(), "a response is never answered");
        // A header that says one question, and no question.
        let mut out = Vec::new();
        let header = [0x56, 0x78, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        assert!(responder(8).answer(
            &header,
            "127.0.0.1".parse().unwrap(),
            Transport::Udp,
            &mut out
        ));
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(m.metadata.id, 0x5678);
    }

    #[test]
    fn a_client_past_its_rate_is_dropped_before_decoding() {
        let r = Responder::new(
            Arc::new(Fixed),
            Settings {
                ttl: 2,
                max_answers: 8,
                allow_clients: vec!["127.0.0.0/8".parse().unwrap()],
                rate: 5,
            },
        );
        let q = query(CHAT, 1);
        let answered = (0..30)
            .filter(|_| ask_with(&r, &q, Transport::Udp).is_some())
            .count();
        // The burst is twice the rate; the test runs in far less than the 200 ms a refill takes.
        assert_eq!(answered, 10);
    }

    /// Fuzz finding F5: a query for a name with binary labels got an answer echoing it that no
    /// decoder reads; such queries are dropped now.
    #[test]
    fn a_name_that_is_no_host_name_is_dropped() {
        let crash = [
            0x01, 0x34, 0x00, 0x12, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x24, 0x04,
            0xba, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x12, 0x31, 0x7f, 0x7f, 0x24, 0x7f, 0x7f, 0x7f, 0x7f, 0x12, 0x21,
            0x01, 0x00, 0x00, 0x29, 0x00, 0xc0, 0xc0, 0xc0, 0x00, 0x12, 0x00, 0x00, 0x00, 0x00,
            0x31, 0xa6, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x7f, 0x7f, 0x00, 0x05, 0x00, 0x00,
            0x00, 0x00, 0x74, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00,
        ];
        // It is a query hickory decodes (the case is the answer, not the parse).
        assert!(Message::from_vec(&crash).is_ok());
        assert!(ask(&crash).is_none());
        assert!(ask(&query(b"\x03a\xffb\x01t\x00", 1)).is_none());
        // The same for any of several questions (the second crash of the run).
        let mut two = query(CHAT, 1);
        two[5] = 2;
        two.extend_from_slice(b"\x03a\xffb\x00\x00\x01\x00\x01");
        assert!(ask(&two).is_none());
    }
}

#[cfg(test)]
mod fast_path_tests {
    use super::*;

    /// A zone of one cluster name whose state the test sets.
    struct Named(&'static str, Answer);

    impl Zone for Named {
        fn lookup(&self, name: &str) -> Lookup {
            if name == self.0 {
                Lookup::Found(self.1.clone())
            } else {
                Lookup::NotOurs
            }
        }
    }

    fn responder_for(name: &'static str, answer: &Answer, max_answers: usize) -> Responder {
        Responder::new(
            Arc::new(Named(name, answer.clone())),
            Settings {
                ttl: 4,
                max_answers,
                allow_clients: vec!["127.0.0.0/8".parse().unwrap()],
                rate: 1_000_000,
            },
        )
    }

    fn responder(answer: &Answer, max_answers: usize) -> Responder {
        responder_for("dual.t", answer, max_answers)
    }

    fn query(name: &[u8], qtype: u16, flags: u8, edns: Option<(u16, &[u8])>) -> Vec<u8> {
        // `flags`: 0x01 RD, 0x40 CD (which lives in the next byte).
        let cd = if flags & 0x40 != 0 { 0x10 } else { 0 };
        let additional = u8::from(edns.is_some());
        let mut q = vec![
            0xab,
            0xcd,
            flags & 0x01,
            cd,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            additional,
        ];
        q.extend_from_slice(name);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        if let Some((payload, options)) = edns {
            q.push(0);
            q.extend_from_slice(&41u16.to_be_bytes());
            q.extend_from_slice(&payload.to_be_bytes());
            q.extend_from_slice(&[0, 0, 0x80, 0]); // DO set: neither path echoes it
            q.extend_from_slice(&(options.len() as u16).to_be_bytes());
            q.extend_from_slice(options);
        }
        q
    }

    /// Issue 24: the fast path answers exactly what the general path answers, query by query
    /// (the same rotation turn, so the same records in the same order), for every variant a
    /// client sends; and it does take them (or the comparison would prove nothing).
    #[test]
    fn the_fast_path_answers_what_the_general_path_answers() {
        let v4: Vec<IpAddr> = (11..=14).map(|i| IpAddr::from([127, 0, 0, i])).collect();
        let v6: Vec<IpAddr> = ["::1", "fd00::2"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let healthy = Answer {
            cluster: "dual.t".into(),
            addrs: v4.iter().chain(&v6).copied().collect(),
            ..Answer::default()
        };
        let degraded = Answer {
            degraded: true,
            ..healthy.clone()
        };
        let all_down = Answer {
            all_down: true,
            ..healthy.clone()
        };
        let cookie: &[u8] = &[0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8];
        let names: [&[u8]; 2] = [b"\x04dual\x01t\x00", b"\x04DuAl\x01T\x00"];
        let mut compared = 0;
        for answer in [&healthy, &degraded, &all_down] {
            for max in [8, 3, 1] {
                for name in names {
                    for qtype in [wire::TYPE_A, wire::TYPE_AAAA] {
                        for flags in [0x01, 0x00, 0x41] {
                            for edns in [None, Some((4096, &[][..])), Some((100, cookie))] {
                                for transport in [Transport::Udp, Transport::Tcp] {
                                    let q = query(name, qtype, flags, edns);
                                    let (fast, general) =
                                        (responder(answer, max), responder(answer, max));
                                    // Both at the same turn: one answer each first.
                                    let client = "127.0.0.1".parse().unwrap();
                                    let mut a = Vec::new();
                                    let mut b = Vec::new();
                                    let mut buf = [0u8; 256];
                                    let simple = wire::read(&q, &mut buf).expect("a simple query");
                                    assert!(fast.fast(&simple, client, transport, &mut a));
                                    assert!(general.general(&q, client, transport, &mut b));
                                    let (ma, mb) = (
                                        Message::from_vec(&a).unwrap(),
                                        Message::from_vec(&b).unwrap(),
                                    );
                                    assert_eq!(format!("{ma:?}"), format!("{mb:?}"), "{q:?}");
                                    compared += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(compared, 3 * 3 * 2 * 2 * 3 * 3 * 2);
    }

    /// Fuzz findings of `dns_fast_path`, answered alike by both paths since.
    #[test]
    fn fuzz_findings_are_answered_as_the_general_path_answers() {
        // F7: an OPT record whose data is a truncated option (FORMERR, not NOERROR).
        let f7: &[u8] =
            b"\x12\x34\x01\x3a\x00\x01\x00\x00\x00\x00\x00\x01\x04chat\x04fuzz\x04test\x00\
            \x00\x1c\x00\x01\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x01\x00";
        let zone = Answer {
            cluster: "chat.fuzz.test".into(),
            addrs: vec!["::1".parse().unwrap()],
            ..Answer::default()
        };
        let fast = responder_for("chat.fuzz.test", &zone, 8);
        let general = responder_for("chat.fuzz.test", &zone, 8);
        let src = "127.0.0.1".parse().unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        assert_eq!(
            fast.answer(f7, src, Transport::Udp, &mut a),
            general.answer_general(f7, src, Transport::Udp, &mut b)
        );
        assert_eq!(a, b);
    }

    /// F8 (`dns_query`): an UPDATE with 101 root questions got a NOTIMP echoing all of them,
    /// 517 bytes over UDP. Only a single question is echoed.
    #[test]
    fn many_questions_are_not_echoed() {
        let mut q = vec![0x12, 0x34, 0x28, 0, 0, 101, 0, 0, 0, 0, 0, 0];
        for _ in 0..101 {
            q.extend_from_slice(&[0, 0, 0, 0, 0]);
        }
        let r = responder_for("chat.t", &Answer::default(), 8);
        let mut out = Vec::new();
        assert!(r.answer(&q, "127.0.0.1".parse().unwrap(), Transport::Udp, &mut out));
        assert!(out.len() <= 512, "{} bytes", out.len());
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
        assert!(m.queries.is_empty());
    }

    /// What the fast path leaves to the general path: every other shape of query.
    #[test]
    fn the_fast_path_reads_only_simple_queries() {
        let mut buf = [0u8; 256];
        let plain = query(b"\x04dual\x01t\x00", 1, 1, None);
        assert!(wire::read(&plain, &mut buf).is_some());
        let mut other = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut q = plain.clone();
            edit(&mut q);
            wire::read(&q, &mut buf).is_none()
        };
        assert!(other(&|q| q[2] |= 0x80), "a response");
        assert!(other(&|q| q[2] |= 0x10), "opcode 2");
        assert!(other(&|q| q[5] = 2), "two questions");
        assert!(other(&|q| q[7] = 1), "an answer count");
        assert!(
            other(&|q| q[11] = 1),
            "an additional record that is missing"
        );
        assert!(other(&|q| q.push(0)), "trailing bytes");
        assert!(other(&|q| q.truncate(q.len() - 1)), "truncated");
        assert!(
            other(&|q| {
                let n = q.len();
                q[n - 3] = 16; // TXT
            }),
            "another type"
        );
        assert!(
            other(&|q| {
                let n = q.len();
                q[n - 1] = 3; // CH
            }),
            "another class"
        );
        assert!(other(&|q| q[13] = b' '), "a name that is no host name");
        assert!(other(&|q| q[12] = 0xc0), "a compression pointer");
        let root = query(b"\x00", 1, 1, None);
        assert!(wire::read(&root, &mut buf).is_none(), "the root");
        let v1 = {
            let mut q = query(b"\x04dual\x01t\x00", 1, 1, Some((1232, &[])));
            let n = q.len();
            q[n - 5] = 1; // EDNS version 1
            q
        };
        assert!(wire::read(&v1, &mut buf).is_none(), "EDNS version 1");
    }
}
