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

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::rdata::{A, AAAA, HINFO, SOA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use ipnet::IpNet;
use tokio::time::Instant;

use crate::metrics::metrics;

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
    /// Most A/AAAA records in one answer.
    pub max_answers: usize,
    /// Who may query.
    pub allow_clients: Vec<IpNet>,
    /// Queries per second per client address (burst: twice this).
    pub rate: u32,
}

/// Budgets kept before the refilled ones are swept.
const MAX_BUCKETS: usize = 100_000;

/// The request handler hickory-server calls for every query.
pub struct Responder {
    zone: Arc<dyn Zone>,
    settings: Settings,
    turn: AtomicUsize,
    buckets: DashMap<IpAddr, crate::bucket::TokenBucket>,
}

impl Responder {
    /// A responder answering from `zone`.
    pub fn new(zone: Arc<dyn Zone>, settings: Settings) -> Self {
        Self {
            zone,
            settings,
            turn: AtomicUsize::new(0),
            buckets: DashMap::new(),
        }
    }

    /// Whether `client` may ask one more query now.
    fn within_rate(&self, client: IpAddr) -> bool {
        let rate = f64::from(self.settings.rate);
        if self.buckets.len() >= MAX_BUCKETS {
            let now = Instant::now();
            self.buckets
                .retain(|_, b| now.duration_since(b.last_used()) < Duration::from_secs(2));
        }
        self.buckets
            .entry(client)
            .or_insert_with(|| crate::bucket::TokenBucket::full(2.0 * rate))
            .take(rate, 2.0 * rate)
    }
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

fn name_of(s: &str) -> Option<Name> {
    let mut n = Name::from_ascii(s).ok()?;
    n.set_fqdn(true);
    Some(n)
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

#[async_trait::async_trait]
impl RequestHandler for Responder {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let dropped = || {
            ResponseInfo::from(Header {
                metadata: Metadata::response_from_request(&request.metadata),
                counts: HeaderCounts::default(),
            })
        };
        let client = crate::address::client(request.src().ip());
        if !self.within_rate(client) {
            metrics().dns_rate_limited.inc();
            return dropped();
        }
        let resp_edns = request.edns.as_ref().map(|req| {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            e.set_version(0);
            e
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(e) = resp_edns.as_ref() {
            builder.edns(e);
        }
        let query = request.queries.queries().first();
        let qtype = query.map_or(RecordType::Unknown(0), |q| q.query_type());
        // A name that is no host name (binary labels, escapes) is never one of ours, and echoing
        // it back can make an answer no resolver decodes (fuzz finding F5): dropped.
        if request.queries.queries().iter().any(|q| {
            let name = q.original().name().to_ascii();
            !crate::protocol::validate_hostname(name.trim_end_matches('.')) && name != "."
        }) {
            metrics()
                .dns_queries
                .with_label_values(&[qtype_label(qtype), "DROPPED"])
                .inc();
            return dropped();
        }
        let count = |code: ResponseCode| {
            metrics()
                .dns_queries
                .with_label_values(&[qtype_label(qtype), rcode_label(code)])
                .inc();
        };
        let refuse = if !self
            .settings
            .allow_clients
            .iter()
            .any(|n| n.contains(&client))
        {
            // REFUSED, not a drop: as small as the query (nothing to amplify), and it tells a
            // misconfigured client why instead of making it time out.
            Some(ResponseCode::Refused)
        } else if request.metadata.op_code != OpCode::Query
            || request.metadata.message_type != MessageType::Query
        {
            Some(ResponseCode::NotImp)
        } else if request.queries.queries().len() != 1 {
            Some(ResponseCode::FormErr)
        } else {
            None
        };
        let found = match (refuse, query) {
            (Some(code), _) => Err(code),
            (None, None) => Err(ResponseCode::FormErr),
            (None, Some(q)) => {
                let owner: Name = q.original().name().clone();
                let key = owner.to_ascii().trim_end_matches('.').to_ascii_lowercase();
                match self.zone.lookup(&key) {
                    Lookup::NotOurs => Err(ResponseCode::Refused),
                    Lookup::NotReady => Err(ResponseCode::ServFail),
                    Lookup::Found(a) => Ok((owner, a)),
                }
            }
        };
        let (owner, answer) = match found {
            Ok(found) => found,
            Err(code) => {
                count(code);
                let resp = builder.error_msg(&request.metadata, code);
                return response_handle
                    .send_response(resp)
                    .await
                    .unwrap_or_else(|_| dropped());
            }
        };
        let ttl = if answer.all_down {
            1
        } else if answer.degraded {
            (self.settings.ttl / 2).max(1)
        } else {
            self.settings.ttl
        };
        if answer.all_down {
            metrics()
                .dns_all_down
                .with_label_values(&[&answer.cluster])
                .inc();
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let mut answers: Vec<Record> = Vec::new();
        let mut additionals: Vec<Record> = Vec::new();
        match qtype {
            RecordType::A | RecordType::AAAA => {
                let want_v4 = qtype == RecordType::A;
                let fam: Vec<IpAddr> = answer
                    .addrs
                    .iter()
                    .copied()
                    .filter(|a| a.is_ipv4() == want_v4)
                    .collect();
                let n = fam.len();
                for i in 0..n.min(self.settings.max_answers) {
                    let rdata = match fam[(turn + i) % n] {
                        IpAddr::V4(v4) => RData::A(A(v4)),
                        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
                    };
                    answers.push(Record::from_rdata(owner.clone(), ttl, rdata));
                }
            }
            RecordType::SRV => {
                let n = answer.srv.len();
                for i in 0..n {
                    let s = &answer.srv[(turn + i) % n];
                    let Some(target) = name_of(&s.target) else {
                        continue;
                    };
                    answers.push(Record::from_rdata(
                        owner.clone(),
                        ttl,
                        RData::SRV(SRV::new(s.priority, s.weight, s.port, target.clone())),
                    ));
                    let rdata = match s.addr {
                        IpAddr::V4(v4) => RData::A(A(v4)),
                        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
                    };
                    additionals.push(Record::from_rdata(target, ttl, rdata));
                }
            }
            RecordType::SOA => answers.push(soa(&owner, self.settings.ttl)),
            RecordType::ANY => {
                // RFC 8482: a minimal answer to ANY, nothing worth amplifying.
                answers.push(Record::from_rdata(
                    owner.clone(),
                    self.settings.ttl,
                    RData::HINFO(HINFO::new("RFC8482".into(), String::new())),
                ));
            }
            _ => {}
        }
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.recursion_available = false;
        metadata.response_code = ResponseCode::NoError;
        count(ResponseCode::NoError);
        metrics().dns_answer_records.observe(answers.len() as f64);
        // NODATA carries the SOA, whose minimum bounds how long it is cached.
        let authority: Vec<Record> = if answers.is_empty() {
            vec![soa(&owner, self.settings.ttl)]
        } else {
            Vec::new()
        };
        let resp = builder.build(
            metadata,
            answers.iter(),
            [].iter(),
            authority.iter(),
            additionals.iter(),
        );
        response_handle
            .send_response(resp)
            .await
            .unwrap_or_else(|_| dropped())
    }
}

/// Binds UDP and TCP on `addr` for the responder, with `SO_REUSEPORT` so a graceful upgrade's new
/// process can bind beside the old one.
pub fn bind(addr: SocketAddr) -> std::io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let udp = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    udp.set_reuse_address(true)?;
    udp.set_reuse_port(true)?;
    udp.set_nonblocking(true)?;
    udp.bind(&addr.into())?;
    let tcp = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    tcp.set_reuse_address(true)?;
    tcp.set_reuse_port(true)?;
    tcp.set_nonblocking(true)?;
    tcp.bind(&addr.into())?;
    tcp.listen(256)?;
    Ok((udp.into(), tcp.into()))
}

/// Serves `responder` on the bound sockets until the process ends; call inside a tokio runtime.
pub fn serve(
    responder: Responder,
    sockets: Vec<(std::net::UdpSocket, std::net::TcpListener)>,
) -> std::io::Result<hickory_server::Server<Responder>> {
    let mut server = hickory_server::Server::new(responder);
    for (udp, tcp) in sockets {
        server.register_socket(tokio::net::UdpSocket::from_std(udp)?);
        server.register_listener(
            tokio::net::TcpListener::from_std(tcp)?,
            Duration::from_secs(5),
            64,
        );
    }
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_server::net::runtime::TokioTime;
    use hickory_server::net::xfer::Protocol;
    use hickory_server::net::NetError;
    use hickory_server::proto::op::Message;
    use hickory_server::proto::serialize::binary::BinEncoder;
    use hickory_server::zone_handler::MessageResponse;
    use std::sync::Mutex;

    struct Fixed;

    impl Zone for Fixed {
        fn lookup(&self, name: &str) -> Lookup {
            match name {
                "chat.t" => Lookup::Found(Answer {
                    cluster: "chat.t".into(),
                    addrs: vec!["127.0.0.11".parse().unwrap(), "127.0.0.12".parse().unwrap()],
                    ..Answer::default()
                }),
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
            let info = response.destructive_emit(&mut enc)?;
            *self.0.lock().unwrap() = Some(buf);
            Ok(info)
        }
    }

    async fn ask(packet: &[u8]) -> Option<Message> {
        let r = Responder::new(
            Arc::new(Fixed),
            Settings {
                ttl: 2,
                max_answers: 8,
                allow_clients: vec!["127.0.0.0/8".parse().unwrap()],
                rate: 1000,
            },
        );
        let req = Request::from_bytes(
            packet.to_vec(),
            "127.0.0.1:53".parse().unwrap(),
            Protocol::Udp,
        )
        .ok()?;
        let c = Capture(Arc::new(Mutex::new(None)));
        r.handle_request::<_, TokioTime>(&req, c.clone()).await;
        let bytes = c.0.lock().unwrap().take()?;
        Some(Message::from_vec(&bytes).expect("every answer decodes"))
    }

    fn query(name: &[u8], qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(name);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        q
    }

    #[tokio::test]
    async fn answers_refusals_and_nodata() {
        let m = ask(&query(b"\x04chat\x01t\x00", 1)).await.unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative && !m.metadata.recursion_available);
        assert_eq!(m.answers.len(), 2);
        let m = ask(&query(b"\x05other\x01t\x00", 1)).await.unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        let m = ask(&query(b"\x04chat\x01t\x00", 15)).await.unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        assert_eq!(m.authorities.len(), 1, "NODATA carries the SOA");
    }

    /// Fuzz finding F5: a query for a name with binary labels got an answer echoing it that no
    /// decoder reads; such queries are dropped now.
    #[tokio::test]
    async fn a_name_that_is_no_host_name_is_dropped() {
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
        assert!(Request::from_bytes(
            crash.to_vec(),
            "127.0.0.1:53".parse().unwrap(),
            Protocol::Udp
        )
        .is_ok());
        assert!(ask(&crash).await.is_none());
        assert!(ask(&query(b"\x03a\xffb\x01t\x00", 1)).await.is_none());
        // The same for any of several questions (the second crash of the run).
        let mut two = query(b"\x04chat\x01t\x00", 1);
        two[5] = 2;
        two.extend_from_slice(b"\x03a\xffb\x00\x00\x01\x00\x01");
        assert!(ask(&two).await.is_none());
    }
}
