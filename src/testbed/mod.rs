//! A small, real test bed on loopback: an in-process DNS server (hickory-server) whose records
//! change at run time, and backends that answer with their own name. `carousel demo` runs on it,
//! and so do the integration tests, so what the demo shows is what the tests check.

pub mod backend;
pub mod blackhole;
pub mod client;
pub mod dns;

/// Byte `i` of the deterministic `/blob/<n>` payload the backends serve.
pub fn blob_byte(i: usize) -> u8 {
    ((i as u64 * 31 + 7) % 251) as u8
}
