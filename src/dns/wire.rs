//! The responder's fast path on the wire: the query nearly every client sends (one A or AAAA
//! question, class IN, with or without a plain EDNS record) is read from its bytes and answered
//! by writing the answer's bytes, with no decoded message, no allocation and no name objects.
//!
//! Anything else (other types, several questions, EDNS options the general path would treat
//! differently, a name that needs a check the general path makes) is not read here: `read`
//! returns `None` and the responder answers through hickory's codec as before, so the fast path
//! only ever answers what the general path would answer the same way.

use std::net::IpAddr;

/// Query type A.
pub const TYPE_A: u16 = 1;
/// Query type AAAA.
pub const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;

/// A question the fast path answers: its parts as they appear in the query.
#[derive(Debug)]
pub struct Simple<'a> {
    /// The query's ID.
    pub id: [u8; 2],
    /// RD, as asked (copied into the answer).
    pub recursion_desired: bool,
    /// CD, as asked (copied into the answer).
    pub checking_disabled: bool,
    /// The question section as sent (name in the client's case, type, class): echoed as is,
    /// which keeps a resolver's 0x20 case randomisation intact.
    pub question: &'a [u8],
    /// The name, lowercase, without the trailing dot.
    pub name: &'a str,
    /// A or AAAA.
    pub qtype: u16,
    /// The EDNS payload the client offered, if it sent an OPT record.
    pub edns_payload: Option<u16>,
}

fn u16_at(p: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(i)?, *p.get(i + 1)?]))
}

/// Reads `packet` if it is a simple query (see the module doc), writing the lowercased name into
/// `name_buf`; `None` sends it down the general path.
pub fn read<'a>(packet: &'a [u8], name_buf: &'a mut [u8; 256]) -> Option<Simple<'a>> {
    if packet.len() < 12 {
        return None;
    }
    let (b2, b3) = (packet[2], packet[3]);
    // A query (QR 0) with opcode QUERY; the counts: one question, nothing else but an OPT.
    if b2 & 0x80 != 0 || (b2 >> 3) & 0x0f != 0 {
        return None;
    }
    if u16_at(packet, 4)? != 1 || u16_at(packet, 6)? != 0 || u16_at(packet, 8)? != 0 {
        return None;
    }
    let additional = u16_at(packet, 10)?;
    if additional > 1 {
        return None;
    }
    // The name: plain labels only (no compression in a question), lowercased into `name_buf`.
    let mut i = 12;
    let mut len = 0usize;
    loop {
        let l = usize::from(*packet.get(i)?);
        i += 1;
        if l == 0 {
            break;
        }
        if l > 63 {
            return None;
        }
        let label = packet.get(i..i + l)?;
        if len > 0 {
            *name_buf.get_mut(len)? = b'.';
            len += 1;
        }
        for &b in label {
            // The general path drops names that are no host names: left to it.
            if !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return None;
            }
            *name_buf.get_mut(len)? = b.to_ascii_lowercase();
            len += 1;
        }
        i += l;
    }
    if len == 0 || len > 253 {
        return None;
    }
    let qtype = u16_at(packet, i)?;
    if !(qtype == TYPE_A || qtype == TYPE_AAAA) || u16_at(packet, i + 2)? != CLASS_IN {
        return None;
    }
    let question = &packet[12..i + 4];
    i += 4;
    let edns_payload = if additional == 1 {
        // The OPT record: root owner, type 41, payload in the class, version 0; its options are
        // not answered by either path.
        if packet.get(i) != Some(&0) || u16_at(packet, i + 1)? != TYPE_OPT {
            return None;
        }
        let payload = u16_at(packet, i + 3)?;
        let version = *packet.get(i + 6)?;
        let rdlen = usize::from(u16_at(packet, i + 9)?);
        if version != 0 || !plain_options(packet.get(i + 11..i + 11 + rdlen)?) {
            return None;
        }
        i += 11 + rdlen;
        Some(payload)
    } else {
        None
    };
    if i != packet.len() {
        return None;
    }
    let name_buf: &'a [u8] = name_buf;
    let name = std::str::from_utf8(&name_buf[..len]).ok()?;
    Some(Simple {
        id: [packet[0], packet[1]],
        recursion_desired: b2 & 0x01 != 0,
        checking_disabled: b3 & 0x10 != 0,
        question,
        name,
        qtype,
        edns_payload,
    })
}

/// Whether an OPT record's data is a well-formed list of options (code, length, data) that
/// hickory's decoder would read without judging their contents: client subnet (8) and DAU (5)
/// are decoded there and may be refused as malformed, so a query carrying them is left to it
/// (fuzz finding F7: a truncated option answered NOERROR here, FORMERR there).
fn plain_options(mut data: &[u8]) -> bool {
    while !data.is_empty() {
        let (Some(code), Some(len)) = (u16_at(data, 0), u16_at(data, 2)) else {
            return false;
        };
        let len = usize::from(len);
        if code == 5 || code == 8 || data.len() < 4 + len {
            return false;
        }
        data = &data[4 + len..];
    }
    true
}

/// The size of the answer `write` makes with `records` address records.
pub fn answer_len(q: &Simple<'_>, records: usize) -> usize {
    let rr = if q.qtype == TYPE_A { 16 } else { 28 };
    let opt = if q.edns_payload.is_some() { 11 } else { 0 };
    12 + q.question.len() + records * rr + opt
}

/// Writes the authoritative NOERROR answer to `q`: the question echoed, then one record per
/// address (owner: a pointer to the question's name), then OPT with `payload` if the query had
/// one. The caller has checked that every address is of the question's family.
pub fn write(
    q: &Simple<'_>,
    ttl: u32,
    addrs: impl ExactSizeIterator<Item = IpAddr>,
    payload: u16,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(&q.id);
    // QR, opcode QUERY, AA, RD as asked; RA 0, CD as asked, RCODE NOERROR.
    out.push(0x84 | u8::from(q.recursion_desired));
    out.push(if q.checking_disabled { 0x10 } else { 0 });
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&u16::from(q.edns_payload.is_some()).to_be_bytes());
    out.extend_from_slice(q.question);
    for a in addrs {
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&q.qtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        match a {
            IpAddr::V4(v4) => {
                out.extend_from_slice(&4u16.to_be_bytes());
                out.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                out.extend_from_slice(&16u16.to_be_bytes());
                out.extend_from_slice(&v6.octets());
            }
        }
    }
    if q.edns_payload.is_some() {
        // Root owner, OPT, our payload; extended RCODE 0, version 0, no flags, no options.
        out.push(0);
        out.extend_from_slice(&TYPE_OPT.to_be_bytes());
        out.extend_from_slice(&payload.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
}
