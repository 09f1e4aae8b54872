//! Forwards and answers whatever the scanner accepts, and checks that what
//! the proxy writes scans again.
//!
//! The first `common::EDIT_OPTIONS` bytes of the input choose how, the rest
//! is the datagram:
//!
//! | byte | meaning                                                        |
//! |------|----------------------------------------------------------------|
//! | 0    | bit 0: IPv6 source; bit 1: insert Record-Route; bit 2: the source is the top Via's own address when it is an IP literal |
//! | 1-2  | source port, big-endian                                        |
//! | 3-6  | source address (IPv4, or the low 32 bits of 2001:db8::/96)     |
//! | 7    | branch key length (mod 24); the key is token characters        |
//!
//! What is asserted holds for any accepted input: the input and everything
//! written from it pass `common::check_accessors`, the output buffer is
//! large enough, the forwarded request scans (allowing for what a hop adds
//! to the limits, and for `Max-Forwards: 1` becoming 0, which the next
//! proxy answers with 483), its body, its unowned headers and the Vias
//! below ours are byte for byte the input's, and the 100 and 503 the
//! proxy would send scan with the request's Vias, Call-ID and CSeq. The
//! checks are `common::edit_target`, which `tests/proptest_scan.rs` replays
//! on stable.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| common::edit_target(data));
