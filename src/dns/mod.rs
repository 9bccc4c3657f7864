//! DNS, in one home: `client` asks the nameservers (hickory-resolver), `resolver` keeps what
//! carousel knows of each name (rotation, refresh while in use, serve-stale, bounds), and
//! `responder` answers for the clusters and `serve` runs its sockets, for clients that resolve
//! themselves.

pub mod batch;
pub mod client;
pub mod resolver;
pub mod responder;
pub mod serve;
pub mod wire;

pub use client::{ResolveError, SrvTarget};
pub use resolver::{Resolved, Resolver};
