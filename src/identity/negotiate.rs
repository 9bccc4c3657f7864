//! RFC 4559 `Negotiate` on the wire: the token a client puts in `Proxy-Authorization`, and the
//! challenges a 407 offers. Parsing only; the token is judged by [`super::kerberos`].

use base64::Engine;

use crate::config::Scheme;

/// Largest token accepted, decoded. An Active Directory ticket with a large PAC (a user in many
/// groups) runs to ~48 KiB; the request head limit bounds it first anyway.
pub const MAX_TOKEN: usize = 64 * 1024;

/// What a `Proxy-Authorization` value says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `Basic`: user and password.
    Basic(String, String),
    /// `Negotiate`: the decoded GSSAPI token.
    Negotiate(Vec<u8>),
}

/// Why a `Proxy-Authorization` value was refused (worded for the log; never the token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// Neither Basic nor Negotiate.
    #[error("credentials are neither Basic nor Negotiate")]
    Scheme,
    /// Basic, but not base64 of `user:password`.
    #[error("credentials are not Basic user:password")]
    Basic,
    /// Negotiate, but no valid base64 token, or an empty or oversized one.
    #[error("the Negotiate token is not base64, empty or too large")]
    Token,
}

/// Decodes `Basic base64(user:pass)`; `None` if it is not that.
pub fn parse_basic(value: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (u, p) = raw.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// Parses a `Proxy-Authorization` value (scheme names are case-insensitive, RFC 9110 §11.1).
pub fn parse(value: &[u8]) -> Result<Credentials, Malformed> {
    let text = std::str::from_utf8(value)
        .map_err(|_| Malformed::Scheme)?
        .trim();
    let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return parse_basic(value)
            .map(|(u, p)| Credentials::Basic(u, p))
            .ok_or(Malformed::Basic);
    }
    if !scheme.eq_ignore_ascii_case("negotiate") {
        return Err(Malformed::Scheme);
    }
    let b64 = rest.trim();
    if b64.is_empty() || b64.len() > MAX_TOKEN / 3 * 4 + 4 {
        return Err(Malformed::Token);
    }
    let token = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| Malformed::Token)?;
    if token.is_empty() || token.len() > MAX_TOKEN {
        return Err(Malformed::Token);
    }
    Ok(Credentials::Negotiate(token))
}

/// The `Proxy-Authenticate` header lines of a 407, one per scheme in `schemes`' order; the realm
/// cannot break out of its quotes.
pub fn challenge(schemes: &[Scheme], realm: &str) -> String {
    let realm = realm.replace(['"', '\r', '\n', '\\'], "");
    let mut out = String::new();
    for s in schemes {
        match s {
            Scheme::Negotiate => out.push_str("Proxy-Authenticate: Negotiate\r\n"),
            Scheme::Basic => {
                out.push_str(&format!("Proxy-Authenticate: Basic realm=\"{realm}\"\r\n"))
            }
        }
    }
    out
}

/// The header a 2xx carries back to the client for mutual authentication (RFC 4559 §5).
pub fn mutual(token: &[u8]) -> String {
    format!(
        "Proxy-Authenticate: Negotiate {}\r\n",
        base64::engine::general_purpose::STANDARD.encode(token)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_schemes_and_refuses_the_rest() {
        assert_eq!(
            parse(b"negotiate YWJj"),
            Ok(Credentials::Negotiate(b"abc".to_vec()))
        );
        assert_eq!(
            parse(b"Basic YTpi"),
            Ok(Credentials::Basic("a".into(), "b".into()))
        );
        assert_eq!(parse(b"Negotiate"), Err(Malformed::Token));
        assert_eq!(parse(b"Negotiate !!!"), Err(Malformed::Token));
        assert_eq!(parse(b"NTLM TlRMTVNTUAAB"), Err(Malformed::Scheme));
        assert_eq!(parse(b"Basic !!"), Err(Malformed::Basic));
        let big = base64::engine::general_purpose::STANDARD.encode(vec![1u8; MAX_TOKEN + 1]);
        assert_eq!(
            parse(format!("Negotiate {big}").as_bytes()),
            Err(Malformed::Token)
        );
    }

    #[test]
    fn challenges_come_in_the_configured_order() {
        let c = challenge(&[Scheme::Basic, Scheme::Negotiate], "co\"rp");
        assert_eq!(
            c,
            "Proxy-Authenticate: Basic realm=\"corp\"\r\nProxy-Authenticate: Negotiate\r\n"
        );
    }
}
