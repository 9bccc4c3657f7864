//! In-process authoritative-ish DNS server for integration tests.
//!
//! A custom [`RequestHandler`] answers from a mutable in-memory table; it is
//! served by `hickory_server::Server` over UDP and TCP on the same
//! `127.0.0.1:<ephemeral>` port.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};

/// How the server reacts to queries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsMode {
    /// Answer from the record table.
    Normal,
    /// Answer every query with SERVFAIL.
    ServFail,
    /// Never answer (the query is counted, then ignored).
    Drop,
}

/// One SRV target: (priority, weight, port, target).
pub type Srv<'a> = (u16, u16, u16, &'a str);

type OwnedSrv = (u16, u16, u16, String);

#[derive(Default, Clone)]
struct Entry {
    a: Option<(Vec<Ipv4Addr>, u32)>,
    aaaa: Option<(Vec<Ipv6Addr>, u32)>,
    srv: Option<(Vec<OwnedSrv>, u32)>,
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.a.is_none() && self.aaaa.is_none() && self.srv.is_none()
    }
}

struct State {
    records: HashMap<String, Entry>,
    mode: DnsMode,
    delay: Duration,
    negative_ttl: u32,
    per_name: HashMap<String, u64>,
    per_type: HashMap<(String, RecordType), u64>,
    refuse_aaaa: bool,
}

struct Shared {
    state: Mutex<State>,
    queries: AtomicU64,
    stopped: AtomicBool,
}

/// Normalise a DNS name to the table key: lowercase, no trailing dot.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn fqdn(name: &str) -> Name {
    let mut n = Name::from_ascii(name).unwrap_or_else(|e| panic!("bad DNS name {name:?}: {e}"));
    n.set_fqdn(true);
    n
}

struct Handler {
    shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let shared = &self.shared;
        shared.queries.fetch_add(1, Ordering::SeqCst);
        let query = request.queries.queries().first();
        let (mode, delay, negative_ttl, entry, refuse_aaaa) = {
            let mut st = shared.state.lock().unwrap();
            let entry = query.and_then(|q| {
                let k = key(&q.name().to_string());
                *st.per_name.entry(k.clone()).or_insert(0) += 1;
                *st.per_type.entry((k.clone(), q.query_type())).or_insert(0) += 1;
                st.records.get(&k).cloned()
            });
            (st.mode, st.delay, st.negative_ttl, entry, st.refuse_aaaa)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let no_response = || {
            ResponseInfo::from(Header {
                metadata: Metadata::response_from_request(&request.metadata),
                counts: HeaderCounts::default(),
            })
        };
        if mode == DnsMode::Drop || shared.stopped.load(Ordering::SeqCst) {
            return no_response();
        }

        // Mirror the request's EDNS (as hickory's Catalog does).
        let resp_edns = request.edns.as_ref().map(|req| {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().max(512));
            e.set_version(0);
            e
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(e) = resp_edns.as_ref() {
            builder.edns(e);
        }

        let error_code = match (mode, query) {
            (DnsMode::ServFail, _) => Some(ResponseCode::ServFail),
            (_, Some(q)) if refuse_aaaa && q.query_type() == RecordType::AAAA => {
                Some(ResponseCode::Refused)
            }
            (_, None) => Some(ResponseCode::FormErr),
            _ if request.metadata.op_code != OpCode::Query
                || request.metadata.message_type != MessageType::Query =>
            {
                Some(ResponseCode::NotImp)
            }
            _ => None,
        };
        if let Some(code) = error_code {
            let resp = builder.error_msg(&request.metadata, code);
            return response_handle
                .send_response(resp)
                .await
                .unwrap_or_else(|_| no_response());
        }
        let query = query.expect("checked above");
        let owner: Name = query.original().name().clone();
        let qtype = query.query_type();
        let want = |t: RecordType| qtype == t || qtype == RecordType::ANY;

        let mut answers: Vec<Record> = Vec::new();
        if let Some(entry) = entry.as_ref() {
            if let (true, Some((ips, ttl))) = (want(RecordType::A), entry.a.as_ref()) {
                for ip in ips {
                    answers.push(Record::from_rdata(owner.clone(), *ttl, RData::A(A(*ip))));
                }
            }
            if let (true, Some((ips, ttl))) = (want(RecordType::AAAA), entry.aaaa.as_ref()) {
                for ip in ips {
                    answers.push(Record::from_rdata(
                        owner.clone(),
                        *ttl,
                        RData::AAAA(AAAA(*ip)),
                    ));
                }
            }
            if let (true, Some((srvs, ttl))) = (want(RecordType::SRV), entry.srv.as_ref()) {
                for (prio, weight, port, target) in srvs {
                    answers.push(Record::from_rdata(
                        owner.clone(),
                        *ttl,
                        RData::SRV(SRV::new(*prio, *weight, *port, fqdn(target))),
                    ));
                }
            }
        }

        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.recursion_available = true;
        let mut soa: Vec<Record> = Vec::new();
        if answers.is_empty() {
            metadata.response_code = if entry.is_some() {
                ResponseCode::NoError // NODATA
            } else {
                ResponseCode::NXDomain
            };
            let zone = if owner.num_labels() > 1 {
                owner.base_name()
            } else {
                Name::root()
            };
            soa.push(Record::from_rdata(
                zone.clone(),
                negative_ttl,
                RData::SOA(SOA::new(
                    fqdn("ns.test."),
                    fqdn("hostmaster.test."),
                    1,
                    3600,
                    600,
                    86400,
                    negative_ttl,
                )),
            ));
        }
        let resp = builder.build(metadata, answers.iter(), [].iter(), soa.iter(), [].iter());
        response_handle
            .send_response(resp)
            .await
            .unwrap_or_else(|_| no_response())
    }
}

/// A real DNS server (hickory-server) on `127.0.0.1:<port>`, UDP and TCP.
pub struct DnsServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Mutex<Option<Server<Handler>>>,
    tcp_ctl: Mutex<Option<socket2::Socket>>,
}

impl DnsServer {
    /// Bind UDP and TCP on the same ephemeral loopback port and start serving.
    pub async fn start() -> DnsServer {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                records: HashMap::new(),
                mode: DnsMode::Normal,
                delay: Duration::ZERO,
                negative_ttl: 1,
                per_name: HashMap::new(),
                per_type: HashMap::new(),
                refuse_aaaa: false,
            }),
            queries: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        });
        let mut last_err = None;
        for _ in 0..20 {
            let udp = match UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await {
                Ok(s) => s,
                Err(e) => {
                    last_err = Some(e);
                    continue;
                }
            };
            let addr = udp.local_addr().expect("udp local_addr");
            let tcp = match TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    last_err = Some(e);
                    continue;
                }
            };
            // Duplicate of the TCP listener fd, used by `stop()` to shut the
            // socket down even while hickory's task still owns it.
            let tcp_ctl = match socket2::SockRef::from(&tcp).try_clone() {
                Ok(s) => s,
                Err(e) => {
                    last_err = Some(e);
                    continue;
                }
            };
            let mut server = Server::new(Handler {
                shared: shared.clone(),
            });
            server.register_socket(udp);
            server.register_listener(tcp, Duration::from_secs(10), 64);
            return DnsServer {
                addr,
                shared,
                server: Mutex::new(Some(server)),
                tcp_ctl: Mutex::new(Some(tcp_ctl)),
            };
        }
        panic!("DnsServer: could not bind UDP+TCP on one port: {last_err:?}");
    }

    /// Address (UDP and TCP) the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut Entry)) {
        let k = key(name);
        let mut st = self.shared.state.lock().unwrap();
        let entry = st.records.entry(k.clone()).or_default();
        f(entry);
        if entry.is_empty() {
            st.records.remove(&k);
        }
    }

    /// Replace the A records of `name` (an empty slice removes them).
    pub fn set_a(&self, name: &str, ips: &[Ipv4Addr], ttl: u32) {
        let v = (!ips.is_empty()).then(|| (ips.to_vec(), ttl));
        self.update(name, |e| e.a = v);
    }

    /// Replace the AAAA records of `name` (an empty slice removes them).
    pub fn set_aaaa(&self, name: &str, ips: &[Ipv6Addr], ttl: u32) {
        let v = (!ips.is_empty()).then(|| (ips.to_vec(), ttl));
        self.update(name, |e| e.aaaa = v);
    }

    /// Replace the SRV records of `name`: `(priority, weight, port, target)`.
    pub fn set_srv(&self, name: &str, records: &[Srv<'_>], ttl: u32) {
        // Validate target names now rather than inside the server task.
        for (_, _, _, t) in records {
            fqdn(t);
        }
        let v = (!records.is_empty()).then(|| {
            let recs = records
                .iter()
                .map(|&(p, w, port, t)| (p, w, port, t.to_string()))
                .collect();
            (recs, ttl)
        });
        self.update(name, |e| e.srv = v);
    }

    /// Remove every record of `name` (queries for it then get NXDOMAIN).
    pub fn remove(&self, name: &str) {
        self.shared.state.lock().unwrap().records.remove(&key(name));
    }

    /// Switch between normal answers, SERVFAIL and never answering.
    pub fn set_mode(&self, mode: DnsMode) {
        self.shared.state.lock().unwrap().mode = mode;
    }

    /// Delay every answer by `delay` (zero = no delay).
    pub fn set_delay(&self, delay: Duration) {
        self.shared.state.lock().unwrap().delay = delay;
    }

    /// TTL of the SOA sent with NXDOMAIN/NODATA answers (default 1 s).
    pub fn set_negative_ttl(&self, ttl: u32) {
        self.shared.state.lock().unwrap().negative_ttl = ttl;
    }

    /// Total number of DNS queries received (all modes, UDP and TCP).
    pub fn queries(&self) -> u64 {
        self.shared.queries.load(Ordering::SeqCst)
    }

    /// Answer every AAAA query with REFUSED (a server that does not do IPv6).
    pub fn set_refuse_aaaa(&self, refuse: bool) {
        self.shared.state.lock().unwrap().refuse_aaaa = refuse;
    }

    /// Queries of type `qtype` received for `name`.
    pub fn queries_of_type(&self, name: &str, qtype: RecordType) -> u64 {
        let st = self.shared.state.lock().unwrap();
        st.per_type.get(&(key(name), qtype)).copied().unwrap_or(0)
    }

    /// Number of queries received for `name` (any type).
    pub fn queries_for(&self, name: &str) -> u64 {
        let st = self.shared.state.lock().unwrap();
        st.per_name.get(&key(name)).copied().unwrap_or(0)
    }

    /// Stop serving: when this returns no answer is sent any more and TCP
    /// connects are refused; the UDP socket is closed as soon as the runtime
    /// drops the aborted server task.
    pub fn stop(&self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        if let Some(server) = self.server.lock().unwrap().take() {
            server.shutdown_token().cancel();
            drop(server); // JoinSet drop aborts the UDP/TCP tasks
        }
        if let Some(tcp) = self.tcp_ctl.lock().unwrap().take() {
            // Stop listening now, even if a forked child still holds the fd.
            let _ = tcp.shutdown(std::net::Shutdown::Read);
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
