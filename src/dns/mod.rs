//! DNS, in one home: `client` asks the nameservers (hickory-resolver), `resolver` keeps what
//! carousel knows of each name (rotation, refresh while in use, serve-stale, bounds).

pub mod client;
pub mod resolver;

pub use client::{ResolveError, SrvTarget};
pub use resolver::{Resolved, Resolver};
