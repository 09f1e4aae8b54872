//! sipshard: a transaction-stateful SIP load balancer for carriers.
//!
//! This crate is the sans-I/O core: it takes datagrams (and, later, time)
//! and gives back views and bytes to send. It never opens a socket or reads
//! a clock; the per-core shard runtime around it does that.
//!
//! ```text
//!   datagram ──► sip::Scanner::scan ──► Message (ranges into the datagram)
//!                    │ Err(ScanError) ──► answer(): Reply(400/416/420/483/505) | Drop
//!                    ▼
//!            sip::Editor::forward_request / forward_response ──► bytes for the next hop
//!            sip::write_response / write_rejection            ──► bytes for the sender
//! ```
#![deny(unsafe_code)]

pub mod config;
pub mod proxy;
pub mod shard;
pub mod sip;
