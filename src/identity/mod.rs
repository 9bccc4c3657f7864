//! Who a client is, beyond its address: Kerberos single sign-on (the keytab's acceptor, the
//! `Negotiate` header) and the directory that answers group memberships and Basic binds. The
//! listeners ask these; the policy only sees the resulting user and [`Membership`].

pub mod directory;
pub mod kerberos;
pub mod negotiate;

pub use directory::{Bind, Directory, Membership};
pub use kerberos::{Acceptor, KerberosError};

use std::sync::Arc;

/// The identity sources of one configuration (swapped whole by a reload).
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// The keytab's acceptor, with `[access.kerberos]`.
    pub kerberos: Option<Arc<Acceptor>>,
    /// The directory, with `[access.ldap]`.
    pub directory: Option<Arc<Directory>>,
}
