//! The DNS responder's sockets: a fixed number of receive loops per UDP socket and one accept
//! loop per TCP listener, with the work of every query bounded before anything is allocated for
//! it.
//!
//! A datagram is read into the loop's own buffer, checked (rate, `allow_clients`) and answered or
//! dropped in place: no task per packet, so a flood costs CPU, never memory (hickory-server's
//! `Server` spawns a task per datagram before any check, which a flood of 226k packets/s took to
//! 4 GiB). An answer the socket cannot take at once is dropped, like a packet lost on the way.
//! TCP connections are capped in all and per client, checked against `allow_clients` at accept
//! and closed after an idle timeout; each holds one descriptor of the responder's share.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

use super::batch::Batch;
use super::responder::{Responder, Transport};
use crate::descriptors::Share;
use crate::metrics::metrics;

/// Receive loops per UDP socket: one per core of a small machine; each loop answers from its
/// own buffer, so they run in parallel without sharing anything but the socket.
pub const UDP_LOOPS: usize = 2;

/// The responder's TCP bounds, from `[responder]`.
#[derive(Debug, Clone)]
pub struct TcpLimits {
    /// Open connections per client address.
    pub per_client: usize,
    /// How long a connection may wait for its next query (or take to send one).
    pub idle: Duration,
    /// Who may connect at all (checked at accept).
    pub allow_clients: Vec<IpNet>,
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
    // A deeper receive queue rides out bursts; the loops drain it faster than it fills.
    let _ = udp.set_recv_buffer_size(4 << 20);
    udp.bind(&addr.into())?;
    let tcp = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    tcp.set_reuse_address(true)?;
    tcp.set_reuse_port(true)?;
    tcp.set_nonblocking(true)?;
    tcp.bind(&addr.into())?;
    tcp.listen(256)?;
    Ok((udp.into(), tcp.into()))
}

/// Serves `responder` on the bound sockets; the loops stop when the returned set is dropped.
/// Call inside a tokio runtime.
pub fn serve(
    responder: Arc<Responder>,
    sockets: Vec<(std::net::UdpSocket, std::net::TcpListener)>,
    limits: TcpLimits,
    share: Arc<Share>,
) -> std::io::Result<JoinSet<()>> {
    let mut tasks = JoinSet::new();
    let limits = Arc::new(limits);
    for (udp, tcp) in sockets {
        let udp = Arc::new(UdpSocket::from_std(udp)?);
        for _ in 0..UDP_LOOPS {
            tasks.spawn(udp_loop(udp.clone(), responder.clone()));
        }
        tasks.spawn(tcp_accept(
            TcpListener::from_std(tcp)?,
            responder.clone(),
            limits.clone(),
            share.clone(),
        ));
    }
    Ok(tasks)
}

async fn udp_loop(sock: Arc<UdpSocket>, responder: Arc<Responder>) {
    use std::os::fd::AsRawFd;
    let fd = sock.as_raw_fd();
    let mut batch = Batch::new();
    loop {
        // Waits for readiness, then takes what is queued, up to a batch, in one call.
        let n = match sock
            .async_io(tokio::io::Interest::READABLE, || batch.recv(fd))
            .await
        {
            Ok(n) => n,
            // ICMP errors surfacing on the socket, or a transient shortage: keep serving.
            Err(_) => continue,
        };
        for i in 0..n {
            batch.answer_with(i, |packet, src, out| {
                responder.answer(packet, src, Transport::Udp, out)
            });
        }
        // Never wait for the socket: answers it cannot take now are dropped.
        let dropped = batch.send(fd);
        if dropped > 0 {
            metrics().dns_send_dropped.inc_by(dropped as u64);
        }
    }
}

/// Open TCP connections per client address (entries leave at zero, so it holds at most as many
/// keys as connections are open).
#[derive(Default)]
struct PerClient(Mutex<HashMap<IpAddr, usize>>);

impl PerClient {
    fn take(self: &Arc<Self>, ip: IpAddr, most: usize) -> Option<ClientSlot> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= most {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            table: self.clone(),
            ip,
        })
    }
}

struct ClientSlot {
    table: Arc<PerClient>,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut m = self.table.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

async fn tcp_accept(
    listener: TcpListener,
    responder: Arc<Responder>,
    limits: Arc<TcpLimits>,
    share: Arc<Share>,
) {
    let per_client = Arc::new(PerClient::default());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(got) => got,
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning on the error.
                tracing::warn!(error = %e, "DNS responder: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let client = crate::address::client(peer.ip());
        let refuse = |reason: &str| {
            metrics().dns_tcp_refused.with_label_values(&[reason]).inc();
        };
        if !limits.allow_clients.iter().any(|n| n.contains(&client)) {
            refuse("client");
            continue;
        }
        let Some(fd) = share.try_take() else {
            refuse("total");
            continue;
        };
        let Some(slot) = per_client.take(client, limits.per_client) else {
            refuse("per_client");
            continue;
        };
        let responder = responder.clone();
        let idle = limits.idle;
        tokio::spawn(async move {
            let _held = (fd, slot);
            serve_tcp(stream, peer.ip(), &responder, idle).await;
        });
    }
}

/// One TCP connection: length-prefixed queries (RFC 1035 §4.2.2, RFC 7766) until the client
/// closes, sends garbage, or is idle for `idle`.
async fn serve_tcp(mut stream: TcpStream, src: IpAddr, responder: &Responder, idle: Duration) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    loop {
        let mut len = [0u8; 2];
        let read = async {
            stream.read_exact(&mut len).await?;
            buf.resize(usize::from(u16::from_be_bytes(len)), 0);
            stream.read_exact(&mut buf).await
        };
        match tokio::time::timeout(idle, read).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        if !responder.answer(&buf, src, Transport::Tcp, &mut out) {
            // Dropped (rate, garbage): on TCP that ends the connection.
            return;
        }
        let Ok(n) = u16::try_from(out.len()) else {
            return;
        };
        let write = async {
            stream.write_all(&n.to_be_bytes()).await?;
            stream.write_all(&out).await
        };
        if !matches!(tokio::time::timeout(idle, write).await, Ok(Ok(()))) {
            return;
        }
    }
}
