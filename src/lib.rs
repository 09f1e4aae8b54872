//! sipshard: a SIP load balancer for carriers.
//!
//! `sip`, `txn` and `proxy` are the sans-I/O core: they take datagrams and
//! time (milliseconds) and give back views, decisions and bytes to send,
//! and never open a socket or read a clock. `shard` is the per-core runtime
//! around them (sockets, io_uring or epoll, Call-ID handoff, the clock);
//! `config` reads the configuration file, off the packet path. `balance`
//! is the sans-I/O core of destination sets: routing rules, member health
//! and the balancing algorithms. `guard` is the sans-I/O access control and
//! flood protection the shards consult before the core sees a datagram.
//! `tls` builds the rustls configurations the shards' connections use.
//!
//! ```text
//!   datagram ──► proxy::Proxy::handle(now, source, datagram, tx: impl Transmit)
//!                  │ sip::Scanner::scan ──► Message (ranges into the datagram)
//!                  │   Err(ScanError) ──► answer(): 400/416/420/483/505 ──► sip::write_rejection
//!                  ▼
//!                txn::Transactions: server and client transactions, timer wheel
//!                sip::Editor::forward_request / forward_response ──► bytes for the next hop
//!                sip::write_response (100, 408, 482, 487, 503, ...)  ──► bytes for the sender
//!   time ──────► proxy::Proxy::on_timers(now, tx): retransmissions, timeouts, failover
//! ```
#![deny(unsafe_code)]

pub mod balance;
pub mod config;
pub mod control;
pub mod guard;
pub mod proxy;
pub mod shard;
pub mod sip;
#[doc(hidden)]
pub mod testkit;
pub mod tls;
pub mod txn;
/// Batched UDP I/O, a leaf shared with the load tools in `loadtest/`.
pub mod udp;
