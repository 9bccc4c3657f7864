//! The Kerberos acceptor: the proxy's service keys from a keytab, and the security contexts that
//! turn a client's token into a principal. MIT's GSSAPI does the cryptography, the replay cache
//! and the clock-skew check, exactly as for Squid's `negotiate_kerberos_auth`; this module only
//! loads the keys (per credential, from the configured keytab: no process-wide `KRB5_KTNAME`
//! needed) and words the outcomes.
//!
//! GSSAPI calls can touch files (keytab, replay cache): callers run them on the blocking pool.

use std::ffi::CString;
use std::path::Path;
use std::ptr;

use libgssapi::context::{SecurityContext, ServerCtx};
use libgssapi::credential::Cred;
use libgssapi_sys as sys;

use crate::config::KerberosSection;

/// Why the keys could not be loaded, or a token was not accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KerberosError {
    /// The keytab is missing, unreadable or holds no usable key.
    #[error("keytab {file}: {reason}")]
    Keytab {
        /// The path.
        file: String,
        /// What GSSAPI or the file system said.
        reason: String,
    },
    /// The client's token was refused (garbage, truncated, replayed, for another service, clock
    /// skew...). The reason is GSSAPI's, never the token.
    #[error("token refused: {0}")]
    Rejected(String),
    /// The exchange needs more legs than carousel supports on this protocol.
    #[error("the exchange needs another leg (only single-leg Kerberos is supported here)")]
    Incomplete,
}

/// The proxy's acceptor credential.
pub struct Acceptor {
    cred: Cred,
    strip_realm: bool,
    /// What it was loaded from, for logs.
    pub keytab: String,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor")
            .field("keytab", &self.keytab)
            .finish()
    }
}

/// The Kerberos 5 principal name type, 1.2.840.113554.1.2.2.1 (`GSS_KRB5_NT_PRINCIPAL_NAME`).
const KRB5_PRINCIPAL_OID: &[u8] = b"\x2a\x86\x48\x86\xf7\x12\x01\x02\x02\x01";

impl Acceptor {
    /// Loads the keys of `section.keytab` (only `service_principal`'s, when set). A missing or
    /// empty keytab, or one without that principal, is an error here, at `check` and at start,
    /// not at the first client.
    pub fn load(section: &KerberosSection) -> Result<Acceptor, KerberosError> {
        let file = section.keytab.display().to_string();
        let fail = |reason: String| KerberosError::Keytab {
            file: file.clone(),
            reason,
        };
        check_file(&section.keytab).map_err(&fail)?;
        let cred = acquire(&file, &section.service_principal).map_err(fail)?;
        Ok(Acceptor {
            cred,
            strip_realm: section.strip_realm,
            keytab: file,
        })
    }

    /// A fresh security context for one client's exchange.
    pub fn context(&self) -> Context {
        Context {
            ctx: ServerCtx::new(Some(self.cred.clone())),
            strip_realm: self.strip_realm,
        }
    }

    /// Accepts a single-leg token (HTTP Negotiate with Kerberos): the principal, and the token to
    /// return for mutual authentication, if any. Blocking.
    pub fn accept(&self, token: &[u8]) -> Result<(String, Option<Vec<u8>>), KerberosError> {
        let mut ctx = self.context();
        match ctx.step(token)? {
            Step::Done { principal, reply } => Ok((principal, reply)),
            Step::Continue(_) => Err(KerberosError::Incomplete),
        }
    }
}

/// Where an exchange stands after a token.
#[derive(Debug)]
pub enum Step {
    /// Authenticated: the principal, and a last token for the client if GSSAPI made one.
    Done {
        /// `user@REALM` (or `user` with `strip_realm`).
        principal: String,
        /// The token to send back (mutual authentication).
        reply: Option<Vec<u8>>,
    },
    /// Send this token and wait for the client's next one.
    Continue(Vec<u8>),
}

/// One client's security context (SOCKS5 GSSAPI keeps it for the protection-level message).
pub struct Context {
    ctx: ServerCtx,
    strip_realm: bool,
}

impl Context {
    /// Feeds the client's next token. Blocking.
    pub fn step(&mut self, token: &[u8]) -> Result<Step, KerberosError> {
        let out = self
            .ctx
            .step(token, None)
            .map_err(|e| KerberosError::Rejected(reason(&e)))?;
        let out = out.map(|b| b.to_vec());
        if !self.ctx.is_complete() {
            return Ok(Step::Continue(out.unwrap_or_default()));
        }
        let name = self
            .ctx
            .source_name()
            .map_err(|e| KerberosError::Rejected(reason(&e)))?
            .to_string();
        let principal = match (self.strip_realm, name.rsplit_once('@')) {
            (true, Some((user, _realm))) => user.to_string(),
            _ => name,
        };
        Ok(Step::Done {
            principal,
            reply: out,
        })
    }

    /// Unwraps a per-message token (integrity-checked; RFC 1961's protection-level message).
    pub fn unwrap(&mut self, msg: &[u8]) -> Result<Vec<u8>, KerberosError> {
        self.ctx
            .unwrap(msg)
            .map(|b| b.to_vec())
            .map_err(|e| KerberosError::Rejected(reason(&e)))
    }

    /// Wraps a message with integrity, without confidentiality.
    pub fn wrap(&mut self, msg: &[u8]) -> Result<Vec<u8>, KerberosError> {
        self.ctx
            .wrap(false, msg)
            .map(|b| b.to_vec())
            .map_err(|e| KerberosError::Rejected(reason(&e)))
    }
}

/// GSSAPI's words for a failure, with a hint where the cause is a classic.
fn reason(e: &libgssapi::error::Error) -> String {
    let text = e.to_string();
    let lower = text.to_ascii_lowercase();
    if lower.contains("skew") {
        format!("{text} (clock skew: is NTP running on the proxy and the clients?)")
    } else if lower.contains("replay") {
        format!("{text} (a replayed token)")
    } else {
        text
    }
}

/// A keytab must be a readable regular file (GSSAPI's own message for a missing one is vague).
fn check_file(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    Ok(())
}

/// `gss_acquire_cred_from` with the keytab as the credential store: the keys of one
/// configuration, without touching the process environment.
fn acquire(keytab: &str, principal: &str) -> Result<Cred, String> {
    let key = CString::new("keytab").expect("literal");
    let value = CString::new(keytab).map_err(|_| "the path holds a NUL byte".to_string())?;
    let mut element = sys::gss_key_value_element_desc {
        key: key.as_ptr(),
        value: value.as_ptr(),
    };
    let store = sys::gss_key_value_set_desc {
        count: 1,
        elements: &mut element,
    };
    let mut minor: sys::OM_uint32 = 0;
    let mut name: sys::gss_name_t = ptr::null_mut();
    if !principal.is_empty() {
        let mut oid = sys::gss_OID_desc {
            length: KRB5_PRINCIPAL_OID.len() as u32,
            elements: KRB5_PRINCIPAL_OID.as_ptr() as *mut _,
        };
        let mut buf = sys::gss_buffer_desc {
            length: principal.len(),
            value: principal.as_ptr() as *mut _,
        };
        // SAFETY: the buffer and OID point at live bytes for the call; GSSAPI copies them into
        // the name it allocates, which is released below.
        let major = unsafe { sys::gss_import_name(&mut minor, &mut buf, &mut oid, &mut name) };
        if major != 0 {
            return Err(format!(
                "service principal {principal:?}: {}",
                status(major, minor)
            ));
        }
    }
    let mut cred: sys::gss_cred_id_t = ptr::null_mut();
    // SAFETY: every pointer is valid for the call (the store's strings outlive it); on success
    // GSSAPI hands over a credential that `Cred::from_c` takes sole ownership of.
    let major = unsafe {
        sys::gss_acquire_cred_from(
            &mut minor,
            name,
            sys::_GSS_C_INDEFINITE,
            ptr::null_mut(),
            sys::GSS_C_ACCEPT as sys::gss_cred_usage_t,
            &store,
            &mut cred,
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    if !name.is_null() {
        let mut m = 0;
        // SAFETY: `name` came from gss_import_name and is released once.
        unsafe { sys::gss_release_name(&mut m, &mut name) };
    }
    if major != 0 {
        let what = if principal.is_empty() {
            "no usable key".to_string()
        } else {
            format!("no key for {principal:?}")
        };
        return Err(format!("{what}: {}", status(major, minor)));
    }
    // SAFETY: a credential GSSAPI just created, owned by nothing else.
    Ok(unsafe { Cred::from_c(cred) })
}

/// GSSAPI's text for a status pair.
fn status(major: u32, minor: u32) -> String {
    libgssapi::error::Error {
        major: libgssapi::error::MajorFlags::from_bits_retain(major),
        minor,
    }
    .to_string()
}
