//! RFC 1961, GSS-API authentication for SOCKS5 (method 0x01): the framing of its messages.
//! Every message is `version (1) | type | length (2, big-endian) | token`; a `0xFF` type is an
//! abort and carries no length. The exchange itself lives in the SOCKS5 listener.

/// The method code a client offers for GSS-API.
pub const METHOD: u8 = 0x01;
/// The sub-negotiation's version.
pub const VERSION: u8 = 0x01;
/// Message type: a context-establishment token.
pub const AUTHENTICATION: u8 = 0x01;
/// Message type: the protection-level sub-negotiation.
pub const PROTECTION: u8 = 0x02;
/// Message type: abort; the sender closes the connection.
pub const ABORT: u8 = 0xFF;
/// The protection level carousel grants: none (no per-message protection after the
/// sub-negotiation; Dante's "clear", what curl and Dante understand as "no data protection").
pub const LEVEL_NONE: u8 = 0x00;

/// What a client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `AUTHENTICATION` or `PROTECTION`.
    pub kind: u8,
    /// The token.
    pub token: Vec<u8>,
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not sub-negotiation version 1.
    #[error("GSS-API sub-negotiation version {0} (expected 1)")]
    Version(u8),
    /// The client aborted.
    #[error("the client aborted the GSS-API exchange")]
    Aborted,
    /// A message type other than the one expected now.
    #[error("unexpected GSS-API message type {0:#04x}")]
    Kind(u8),
    /// An empty token.
    #[error("empty GSS-API token")]
    Empty,
}

/// Parses one message of type `expected`; `Ok(None)` until it is complete.
pub fn parse(buf: &[u8], expected: u8) -> Result<Option<(Message, usize)>, Error> {
    let Some(&version) = buf.first() else {
        return Ok(None);
    };
    if version != VERSION {
        return Err(Error::Version(version));
    }
    let Some(&kind) = buf.get(1) else {
        return Ok(None);
    };
    if kind == ABORT {
        return Err(Error::Aborted);
    }
    if kind != expected {
        return Err(Error::Kind(kind));
    }
    let (Some(&hi), Some(&lo)) = (buf.get(2), buf.get(3)) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len == 0 {
        return Err(Error::Empty);
    }
    let Some(token) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    Ok(Some((
        Message {
            kind,
            token: token.to_vec(),
        },
        4 + len,
    )))
}

/// Encodes a message; `None` if the token does not fit the 16-bit length.
pub fn encode(kind: u8, token: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(token.len()).ok()?;
    let mut out = Vec::with_capacity(4 + token.len());
    out.extend_from_slice(&[VERSION, kind]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(token);
    Some(out)
}

/// The abort message: the exchange failed.
pub fn abort() -> [u8; 2] {
    [VERSION, ABORT]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_ones_are_named() {
        let m = encode(AUTHENTICATION, b"tok").unwrap();
        assert_eq!(m, [1, 1, 0, 3, b't', b'o', b'k']);
        for cut in 0..m.len() {
            assert_eq!(parse(&m[..cut], AUTHENTICATION), Ok(None), "cut {cut}");
        }
        let (msg, used) = parse(&m, AUTHENTICATION).unwrap().unwrap();
        assert_eq!((msg.token.as_slice(), used), (&b"tok"[..], 7));
        assert_eq!(parse(&m, PROTECTION), Err(Error::Kind(1)));
        assert_eq!(parse(&[2, 1], AUTHENTICATION), Err(Error::Version(2)));
        assert_eq!(parse(&[1, 0xff], AUTHENTICATION), Err(Error::Aborted));
        assert_eq!(parse(&[1, 1, 0, 0], AUTHENTICATION), Err(Error::Empty));
        assert!(encode(1, &vec![0; 70_000]).is_none());
    }
}
