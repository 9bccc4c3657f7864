//! The two servers the benchmark needs besides the proxies: an authoritative DNS server for the
//! bench zone (hickory-server, UDP and TCP) and the loopback backends (sink, source, echo).

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, SOA};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// Largest chunk the source writes and the sink reads at once.
const CHUNK: usize = 256 * 1024;

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The A records of one name (or of every name under a wildcard), with an optional TTL of their
/// own (the server's `--ttl` otherwise).
#[derive(Clone, Debug)]
pub struct RecordSet {
    pub ips: Vec<Ipv4Addr>,
    pub ttl: Option<u32>,
}

struct Zone {
    records: HashMap<String, RecordSet>,
    /// `(".suffix", set)` for every `*.suffix` record: answers any name ending in `.suffix`.
    wildcards: Vec<(String, RecordSet)>,
    ttl: u32,
    queries: AtomicU64,
    /// Queries answered from a wildcard record.
    wildcard_queries: AtomicU64,
    /// Every other query by `name TYPE` (at most 64 keys; the rest under `other`).
    by_name: std::sync::Mutex<HashMap<String, u64>>,
}

impl Zone {
    /// The records of `name`, counting the query (wildcard answers apart, the rest by name).
    fn lookup(&self, name: &str, qtype: RecordType) -> Option<&RecordSet> {
        let k = key(name);
        if let Some(set) = self.records.get(&k) {
            self.count_name(&k, qtype);
            return Some(set);
        }
        let wild = self
            .wildcards
            .iter()
            .find(|(suffix, _)| k.len() > suffix.len() && k.ends_with(suffix.as_str()));
        match wild {
            Some((_, set)) => {
                self.wildcard_queries.fetch_add(1, Ordering::Relaxed);
                Some(set)
            }
            None => {
                self.count_name(&k, qtype);
                None
            }
        }
    }

    /// Counts a query that no wildcard answered, by name and type.
    fn count_name(&self, name: &str, qtype: RecordType) {
        if let Ok(mut m) = self.by_name.lock() {
            let k = format!("{name} {qtype}");
            let k = if m.len() >= 64 && !m.contains_key(&k) {
                "other".to_string()
            } else {
                k
            };
            *m.entry(k).or_default() += 1;
        }
    }

    fn stats(&self) -> String {
        let by_name = self.by_name.lock().map(|m| m.clone()).unwrap_or_default();
        serde_json::json!({
            "queries": self.queries.load(Ordering::Relaxed),
            "wildcard_queries": self.wildcard_queries.load(Ordering::Relaxed),
            "by_name": by_name,
        })
        .to_string()
    }
}

struct Handler(Arc<Zone>);

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let zone = &self.0;
        zone.queries.fetch_add(1, Ordering::Relaxed);
        let failed = || {
            ResponseInfo::from(Header {
                metadata: Metadata::response_from_request(&request.metadata),
                counts: HeaderCounts::default(),
            })
        };
        let edns = request.edns.as_ref().map(|req| {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().max(512));
            e.set_version(0);
            e
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(e) = edns.as_ref() {
            builder.edns(e);
        }
        let Some(query) = request.queries.queries().first() else {
            let resp = builder.error_msg(&request.metadata, ResponseCode::FormErr);
            return response_handle
                .send_response(resp)
                .await
                .unwrap_or_else(|_| failed());
        };
        let owner: Name = query.original().name().clone();
        let entry = zone.lookup(&owner.to_string(), query.query_type());
        let ttl = entry.and_then(|e| e.ttl).unwrap_or(zone.ttl);
        let mut answers = Vec::new();
        if let Some(set) = entry {
            if matches!(query.query_type(), RecordType::A | RecordType::ANY) {
                for ip in &set.ips {
                    answers.push(Record::from_rdata(owner.clone(), ttl, RData::A(A(*ip))));
                }
            }
        }
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.recursion_available = true;
        let mut soa = Vec::new();
        if answers.is_empty() {
            // NODATA for a known name (AAAA), NXDOMAIN otherwise; both with an SOA for the
            // negative TTL so every resolver may cache the answer.
            metadata.response_code = if entry.is_some() {
                ResponseCode::NoError
            } else {
                ResponseCode::NXDomain
            };
            let mut mname = Name::from_ascii("ns.bench.test.").unwrap_or_else(|_| Name::root());
            mname.set_fqdn(true);
            let mut rname =
                Name::from_ascii("hostmaster.bench.test.").unwrap_or_else(|_| Name::root());
            rname.set_fqdn(true);
            let apex = if owner.num_labels() > 1 {
                owner.base_name()
            } else {
                Name::root()
            };
            soa.push(Record::from_rdata(
                apex,
                ttl,
                RData::SOA(SOA::new(mname, rname, 1, 3600, 600, 86400, ttl)),
            ));
        }
        let resp = builder.build(metadata, answers.iter(), [].iter(), soa.iter(), [].iter());
        response_handle
            .send_response(resp)
            .await
            .unwrap_or_else(|_| failed())
    }
}

/// Serves `records` (name → IPv4 addresses; a name `*.suffix` answers every name under
/// `suffix`) on `listen` (UDP and TCP) until `limit` passes or SIGTERM/SIGINT arrives; then prints
/// the number of queries answered as one JSON line. With `stats_file`, the query counts are also
/// written there (as one JSON object, replaced atomically) every 100 ms, so another process can
/// read how many queries arrived in a window.
pub async fn dns(
    listen: SocketAddr,
    records: HashMap<String, RecordSet>,
    ttl: u32,
    stats_file: Option<PathBuf>,
    limit: Duration,
) -> io::Result<()> {
    let mut exact = HashMap::new();
    let mut wildcards = Vec::new();
    for (name, set) in records {
        let name = key(&name);
        match name.strip_prefix("*.") {
            Some(suffix) => wildcards.push((format!(".{suffix}"), set)),
            None => {
                exact.insert(name, set);
            }
        }
    }
    let zone = Arc::new(Zone {
        records: exact,
        wildcards,
        ttl,
        queries: AtomicU64::new(0),
        wildcard_queries: AtomicU64::new(0),
        by_name: Default::default(),
    });
    let writer = stats_file.map(|path| {
        let zone = zone.clone();
        tokio::spawn(async move {
            let tmp = path.with_extension("tmp");
            let mut last = String::new();
            // Ends when the server stops (the task is aborted); one small write per change.
            loop {
                let now = zone.stats();
                if now != last && std::fs::write(&tmp, &now).is_ok() {
                    let _ = std::fs::rename(&tmp, &path);
                    last = now;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });
    let udp = UdpSocket::bind(listen).await?;
    let tcp = TcpListener::bind(listen).await?;
    let mut server = Server::new(Handler(zone.clone()));
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(10), 64);
    println!(r#"{{"event":"dns_ready","listen":"{listen}"}}"#);
    wait_for_stop(limit).await;
    server.shutdown_token().cancel();
    if let Some(w) = writer {
        w.abort();
    }
    let mut stopped: serde_json::Value = serde_json::from_str(&zone.stats()).unwrap_or_default();
    stopped["event"] = "dns_stopped".into();
    println!("{stopped}");
    Ok(())
}

/// Waits for SIGTERM, SIGINT or the time limit, whichever comes first.
pub async fn wait_for_stop(limit: Duration) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    tokio::select! {
        _ = tokio::time::sleep(limit) => {}
        _ = async { match term.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
        _ = async { match int.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
    }
}

/// Size of the request/response message of the `oneshot` role (the client's ping).
pub const ONESHOT_LEN: usize = 32;

/// What a backend port does with a connection.
///
/// Every role except `Echo` closes its side *first*, so TIME_WAIT sockets stay on the backend's
/// (and the proxy listener's) side. Proxies that bind their outgoing socket before connecting
/// (Dante) would otherwise run out of ephemeral ports after tens of thousands of short tunnels.
#[derive(Clone, Copy, Debug)]
pub enum Role {
    /// Reads a u64 length (big-endian), then that many bytes, answers with the byte count and
    /// closes.
    Sink,
    /// Reads a u64 length (big-endian), writes that many bytes, closes.
    Source,
    /// Echoes every byte back until the client closes (readiness probes).
    Echo,
    /// Reads exactly [`ONESHOT_LEN`] bytes, sends them back, closes.
    OneShot,
    /// Echoes single bytes until it receives `Q`, then closes (idle tunnels).
    Hold,
}

fn listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    // Many tunnels are opened at once in the idle test; keep the accept queue deep.
    sock.listen(4096)?;
    TcpListener::from_std(sock.into())
}

async fn serve_conn(mut s: TcpStream, role: Role) -> io::Result<()> {
    let _ = s.set_nodelay(true);
    match role {
        Role::Echo => {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                s.write_all(&buf[..n]).await?;
            }
        }
        Role::Sink => {
            // Length-prefixed rather than "until EOF": several proxies close the whole tunnel
            // when the client half-closes, so the count could never come back.
            let mut len = [0u8; 8];
            s.read_exact(&mut len).await?;
            let want = u64::from_be_bytes(len);
            let mut buf = vec![0u8; CHUNK];
            let mut total = 0u64;
            while total < want {
                let room = (want - total).min(CHUNK as u64) as usize;
                let n = s.read(&mut buf[..room]).await?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            s.write_all(&total.to_be_bytes()).await?;
            s.shutdown().await
        }
        Role::Source => {
            let mut len = [0u8; 8];
            s.read_exact(&mut len).await?;
            let mut left = u64::from_be_bytes(len);
            let buf = vec![0x5au8; CHUNK];
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                s.write_all(&buf[..n]).await?;
                left -= n as u64;
            }
            s.shutdown().await
        }
        Role::OneShot => {
            let mut msg = [0u8; ONESHOT_LEN];
            s.read_exact(&mut msg).await?;
            s.write_all(&msg).await?;
            s.shutdown().await
        }
        Role::Hold => {
            let mut b = [0u8; 1];
            loop {
                if s.read(&mut b).await? == 0 || b[0] == b'Q' {
                    return s.shutdown().await;
                }
                s.write_all(&b).await?;
            }
        }
    }
}

/// Runs one listener per (address, role) until the time limit or a signal.
pub async fn backend(binds: Vec<(SocketAddr, Role)>, limit: Duration) -> io::Result<()> {
    let mut tasks = Vec::new();
    for (addr, role) in binds {
        let l = listener(addr)?;
        tasks.push(tokio::spawn(async move {
            loop {
                match l.accept().await {
                    Ok((s, _)) => {
                        tokio::spawn(async move {
                            let _ = serve_conn(s, role).await;
                        });
                    }
                    // Out of file descriptors and the like: back off briefly, keep serving.
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        }));
    }
    println!(r#"{{"event":"backend_ready","listeners":{}}}"#, tasks.len());
    wait_for_stop(limit).await;
    for t in tasks {
        t.abort();
    }
    Ok(())
}
