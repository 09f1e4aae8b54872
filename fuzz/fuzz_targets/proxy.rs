//! Drives a sequence of records (datagrams from several peers, time steps,
//! backends' answers, ICMP errors, the caller's CANCEL and ACK) through one
//! sans-I/O `sipshard::proxy::Proxy` (backends 10.0.0.1:5080 and
//! 10.0.0.2:5080, itself 192.0.2.250:5060) and checks every action it
//! takes.
//!
//! One option byte, then records until fewer than 3 bytes are left:
//!
//! | option bit | meaning                                                 |
//! |------------|---------------------------------------------------------|
//! | 0          | `Algorithm::CallIdHash`, else `RoundRobin`               |
//! | 1          | timed mode, else isolated mode                           |
//! | 2-3        | timed mode's `max_transactions`: 64, 16, 4, 1            |
//!
//! Each record is 2 bytes (`word`, big-endian), a kind byte, and for a
//! datagram its bytes:
//!
//! | kind      | record                                                     |
//! |-----------|------------------------------------------------------------|
//! | 0x00-0x7f | a datagram of `word` bytes (`ffff` or past the end: the rest) from peer `kind % 4`: client 198.51.100.7:5070, backend A, backend B, client [2001:db8::7]:5070 |
//! | 0x80-0x9f | time step of `word` × 1, 10, 100 or 1000 ms (`kind & 3`); timers run at each deadline, or with bit 2 once at the end (a busy shard) |
//! | 0xa0-0xbf | ICMP unreachable for the destination of the `kind & 0x1f`-th latest request sent |
//! | 0xc0-0xdf | that request answered `100 + word % 600` by its destination |
//! | 0xe0-0xef | the sender of the `kind & 0xf`-th latest INVITE received cancels it |
//! | 0xf0-0xff | ... or ACKs it (To of the latest response sent for it) |
//!
//! Isolated mode (the original format): only datagrams count, each an hour
//! after the last, so each meets an empty table and is checked against a
//! full oracle: `find_call_id` agrees with the scanner when the Call-ID is
//! on one line; what the proxy writes lies in the buffer and scans (a
//! forwarded request with our Via on top, sent to a backend or to the
//! address its Route or Request-URI names; a forwarded response with one
//! Via fewer, sent to the next Via's address; a reply is a response); the
//! counters never decrease and each datagram adds one to exactly the
//! counter of its outcome. A request forwarded to a backend is fed back
//! from that backend and, when it scans, must be answered 482.
//!
//! Timed mode: transactions live across records and the clock moves only
//! by steps. After every record: no panic; at most `max_transactions`
//! server and twice that client transactions, dialogs within the bound,
//! and no more timers than those transactions hold (two per server, three
//! per client); a 503 for a full table only when it was full; counters
//! never decrease; everything sent (timer retransmissions, failover, 408,
//! CANCEL and ACK included) is not empty and scans with a fresh scanner,
//! a request with our Via and branch on top; a datagram that does not
//! scan changes no transaction and gets at most its rejection, at its
//! source.
//!
//! Both modes end with two 10-minute steps, after which no transaction
//! and no timer may be left: never a stuck transaction. The checks are
//! `common::proxy_target`, which `tests/proptest_scan.rs` replays on
//! stable.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| common::proxy_target(data));
