//! Socket plumbing the protocol handlers share: bounded reads into a growing buffer, flushed
//! replies, and handing bytes already read back to a stream (for pingora-proxy to read again).

use std::net::IpAddr;

use bytes::BytesMut;
use pingora::protocols::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// The client closed, timed out or the socket failed: nothing can be answered.
pub(super) struct Gone;

/// Reads more bytes into `buf` before `deadline`.
pub(super) async fn read_more(
    stream: &mut Stream,
    buf: &mut BytesMut,
    deadline: Instant,
) -> Result<(), Gone> {
    let mut chunk = [0u8; 4096];
    match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => Err(Gone),
        Ok(Ok(n)) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
    }
}

/// Feeds `parse` more bytes until it yields a value, an error, or the client goes away. The
/// deadline bounds the whole message, not each read: a client sending one byte at a time is cut
/// when it runs out, however steadily it trickles.
pub(super) async fn read_until<T, E>(
    stream: &mut Stream,
    buf: &mut BytesMut,
    deadline: Instant,
    parse: impl Fn(&[u8]) -> Result<Option<(T, usize)>, E>,
) -> Result<Result<(T, usize), E>, Gone> {
    loop {
        match parse(buf) {
            Ok(Some(done)) => return Ok(Ok(done)),
            Ok(None) => read_more(stream, buf, deadline).await?,
            Err(e) => return Ok(Err(e)),
        }
    }
}

/// Writes a reply and flushes it (Pingora buffers writes).
pub(super) async fn write_reply(stream: &mut Stream, bytes: &[u8]) {
    let _ = stream.write_all(bytes).await;
    let _ = stream.flush().await;
}

/// Puts bytes already read back in front of the stream, for pingora-proxy to read again.
/// `None` (the connection is dropped) for a stream type that cannot take them back.
pub(super) fn unread(stream: Stream, bytes: &[u8]) -> Option<Stream> {
    let any = stream.into_any();
    match any.downcast::<pingora::protocols::l4::stream::Stream>() {
        Ok(mut l4) => {
            l4.rewind(bytes);
            Some(l4)
        }
        Err(any) => crate::tls::unread(any, bytes),
    }
}

/// The client's address as the socket reports it (IPv4-mapped peers as IPv4).
pub(super) fn peer_ip(stream: &Stream) -> Option<IpAddr> {
    let digest = stream.get_socket_digest()?;
    let addr = digest.peer_addr()?;
    addr.as_inet().map(|a| crate::address::client(a.ip()))
}
