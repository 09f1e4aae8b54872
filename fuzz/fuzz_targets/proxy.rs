//! Drives a sequence of datagrams through one `sipshard::proxy::Proxy`
//! (backends 10.0.0.1:5080 and 10.0.0.2:5080, itself 192.0.2.250:5060) and
//! checks every action it takes.
//!
//! One option byte (bit 0: `Algorithm::CallIdHash`, else `RoundRobin`),
//! then datagrams until fewer than 3 bytes are left, each as
//!
//! | byte | meaning                                                       |
//! |------|---------------------------------------------------------------|
//! | 0-1  | length, big-endian; `ffff` or past the end: the rest          |
//! | 2    | source, mod 4: client 198.51.100.7:5070, backend A, backend B, client [2001:db8::7]:5070 |
//! | 3-   | the datagram                                                  |
//!
//! For each datagram: `find_call_id` agrees with the scanner when the
//! Call-ID is on one line; what the proxy writes lies in the buffer and
//! scans (a forwarded request with our Via on top, sent to a backend or to
//! the address its Route or Request-URI names; a forwarded response with
//! one Via fewer, sent to the next Via's address; a reply is a response);
//! the counters never decrease and each datagram adds one to exactly the
//! counter of its outcome. A request forwarded to a backend is fed back
//! from that backend and, when it scans, must be answered 482. The checks
//! are `common::proxy_target`, which `tests/proptest_scan.rs` replays on
//! stable.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| common::proxy_target(data));
