//! The PROXY protocol header (HAProxy's v1 text and v2 binary forms) that a TCP load balancer
//! puts in front of a client's bytes to say who the client is. Parsed with the `ppp` crate: a
//! pure parser over the bytes read so far (complete, need more, or malformed), like carousel's
//! other codecs, with partial-input results and v2 TLVs (parsed, then ignored).

use std::net::SocketAddr;

/// Which header versions a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Text headers only (`PROXY TCP4 …\r\n`).
    V1,
    /// Binary headers only.
    V2,
    /// Either, told apart by the first byte.
    Any,
}

/// What the balancer said about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A proxied client at this address.
    Proxied(SocketAddr),
    /// The balancer's own connection (a v2 `LOCAL` health check): the peer is the client.
    Local,
    /// An address family carousel cannot use (`UNKNOWN`, UNIX sockets): the peer is the client.
    Unknown,
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The bytes are no PROXY header of an accepted version.
    #[error("not a PROXY protocol {0} header")]
    Malformed(&'static str),
    /// A header of a version this listener does not accept.
    #[error("a PROXY protocol {0} header on a listener that accepts {1}")]
    WrongVersion(&'static str, &'static str),
}

const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

fn accepted(a: Accept) -> &'static str {
    match a {
        Accept::V1 => "v1",
        Accept::V2 => "v2",
        Accept::Any => "v1 or v2",
    }
}

/// Parses a header at the start of `buf`: `Ok(None)` while more bytes are needed, the header and
/// its length once complete, or why it is refused.
pub fn parse(buf: &[u8], accept: Accept) -> Result<Option<(Header, usize)>, Error> {
    use ppp::PartialResult;
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let v2 = first == b'\r';
    match (accept, v2) {
        (Accept::V1, true) => return Err(Error::WrongVersion("v2", accepted(accept))),
        (Accept::V2, false) if first == b'P' => {
            return Err(Error::WrongVersion("v1", accepted(accept)))
        }
        _ => {}
    }
    if v2 {
        let prefix = buf.len().min(V2_SIGNATURE.len());
        if buf.get(..prefix) != V2_SIGNATURE.get(..prefix) {
            return Err(Error::Malformed("v2"));
        }
        let parsed = ppp::v2::Header::try_from(buf);
        if parsed.is_incomplete() {
            return Ok(None);
        }
        let h = parsed.map_err(|_| Error::Malformed("v2"))?;
        let header = match (h.command, h.addresses) {
            (ppp::v2::Command::Local, _) => Header::Local,
            (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(a)) => {
                Header::Proxied(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(a)) => {
                Header::Proxied(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            _ => Header::Unknown,
        };
        // TLVs are parsed (a malformed one refuses the header) and ignored.
        if h.tlvs().any(|t| t.is_err()) {
            return Err(Error::Malformed("v2"));
        }
        return Ok(Some((header, h.len())));
    }
    // v1: at most 107 bytes, ending in CRLF.
    let window = buf.get(..buf.len().min(107)).unwrap_or(buf);
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= 107 || !is_v1_prefix(window) {
            Err(Error::Malformed("v1"))
        } else {
            Ok(None)
        };
    };
    let line = window.get(..end + 2).ok_or(Error::Malformed("v1"))?;
    // Printable text only, as the partial-input check demands (fuzz finding F6: `ppp` accepts
    // any bytes after `UNKNOWN`, so a complete header was taken that its own prefixes refused).
    if !is_v1_prefix(line.get(..end).unwrap_or_default()) {
        return Err(Error::Malformed("v1"));
    }
    let h = ppp::v1::Header::try_from(line).map_err(|_| Error::Malformed("v1"))?;
    let header = match h.addresses {
        ppp::v1::Addresses::Tcp4(a) => {
            Header::Proxied(SocketAddr::new(a.source_address.into(), a.source_port))
        }
        ppp::v1::Addresses::Tcp6(a) => {
            Header::Proxied(SocketAddr::new(a.source_address.into(), a.source_port))
        }
        ppp::v1::Addresses::Unknown => Header::Unknown,
    };
    Ok(Some((header, line.len())))
}

/// Whether `b` can still become a v1 header (`PROXY ` and printable text, a CR at the end).
fn is_v1_prefix(b: &[u8]) -> bool {
    let p = b"PROXY ";
    let n = b.len().min(p.len());
    let body = b.strip_suffix(b"\r").unwrap_or(b);
    b.get(..n) == p.get(..n) && body.iter().all(|c| (0x20..0x7f).contains(c))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn v2(command: u8, family: u8, addr: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&((addr.len() + tlvs.len()) as u16).to_be_bytes());
        h.extend_from_slice(addr);
        h.extend_from_slice(tlvs);
        h
    }

    #[test]
    fn v1_and_v2_headers() {
        let line = b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 3128\r\nGET";
        let (h, n) = parse(line, Accept::V1).unwrap().unwrap();
        assert_eq!(h, Header::Proxied("127.0.0.2:40000".parse().unwrap()));
        assert_eq!(&line[n..], b"GET");
        let six = b"PROXY TCP6 ::2 ::1 40000 3128\r\n";
        assert_eq!(
            parse(six, Accept::Any).unwrap().unwrap().0,
            Header::Proxied("[::2]:40000".parse().unwrap())
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n", Accept::V1).unwrap().unwrap().0,
            Header::Unknown
        );
        let addr = [127, 0, 0, 2, 127, 0, 0, 1, 0x9c, 0x40, 0x0c, 0x38];
        let mut b = v2(1, 0x11, &addr, &[0x04, 0x00, 0x01, 0x2a]);
        let len = b.len();
        b.extend_from_slice(b"\x05\x01\x00");
        let (h, n) = parse(&b, Accept::V2).unwrap().unwrap();
        assert_eq!(h, Header::Proxied("127.0.0.2:40000".parse().unwrap()));
        assert_eq!(n, len);
        assert_eq!(
            parse(&v2(0, 0, &[], &[]), Accept::Any).unwrap().unwrap().0,
            Header::Local
        );
    }

    #[test]
    fn partial_headers_need_more_and_every_prefix_says_so() {
        let line = b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 3128\r\n";
        for k in 0..line.len() {
            assert_eq!(parse(&line[..k], Accept::Any), Ok(None), "prefix {k}");
        }
        let addr = [127, 0, 0, 2, 127, 0, 0, 1, 0x9c, 0x40, 0x0c, 0x38];
        let b = v2(1, 0x11, &addr, &[]);
        for k in 0..b.len() {
            assert_eq!(parse(&b[..k], Accept::Any), Ok(None), "prefix {k}");
        }
    }

    #[test]
    fn refusals() {
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n", Accept::V1),
            Err(Error::Malformed(_))
        ));
        assert!(matches!(
            parse(b"\x05\x01\x00", Accept::Any),
            Err(Error::Malformed(_))
        ));
        let addr = [127, 0, 0, 2, 127, 0, 0, 1, 0x9c, 0x40, 0x0c, 0x38];
        assert!(matches!(
            parse(&v2(1, 0x11, &addr, &[]), Accept::V1),
            Err(Error::WrongVersion("v2", _))
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", Accept::V2),
            Err(Error::WrongVersion("v1", _))
        ));
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(matches!(parse(&long, Accept::V1), Err(Error::Malformed(_))));
        assert!(matches!(
            parse(b"PROXY TCP4 999.0.0.1 1.2.3.4 1 2\r\n", Accept::V1),
            Err(Error::Malformed(_))
        ));
        // Fuzz finding F6: control bytes after UNKNOWN, refused whole as in part.
        let f6 = b"PROXY UNKNOWN ]\0\0\0UNKNOW\r\n";
        assert!(matches!(parse(f6, Accept::V1), Err(Error::Malformed(_))));
        assert!(matches!(
            parse(&f6[..16], Accept::V1),
            Err(Error::Malformed(_))
        ));
    }
}
