//! carousel: an egress proxy (HTTP forward, CONNECT, SOCKS4/4a/5) on Pingora that resolves names
//! itself, rotates every request across all of a name's addresses, and moves on to the next address
//! when a connect fails, so clients behind it never notice a dead server.
#![warn(missing_docs)]

pub mod access_log;
pub mod address;
pub mod admin;
pub mod auth;
pub mod bucket;
pub mod cluster;
pub mod config;
#[cfg(feature = "testbed")]
pub mod demo;
pub mod descriptors;
pub mod dial;
pub mod dns;
pub mod forward;
pub mod history;
pub mod identity;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod outcome;
pub mod parent;
#[cfg(feature = "pingora-lb")]
pub mod plugin;
pub mod policy;
pub mod protocol;
pub mod recent;
pub mod reload;
pub mod reply;

pub mod resources;
pub mod server;
pub mod session;
#[cfg(any(test, feature = "testbed"))]
pub mod testbed;
pub mod tls;
pub mod tunnel;
