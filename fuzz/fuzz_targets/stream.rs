//! Frames arbitrary bytes as a TCP stream, whole and in pieces the first
//! byte picks: the same frames either way, each within the bound, each the
//! stream's own bytes in order, a fault final. The checks are
//! `common::stream_target`, which `tests/proptest_stream.rs` replays on
//! stable.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| common::stream_target(data));
