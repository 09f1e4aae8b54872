//! Scans arbitrary bytes with the default limits and with tiny ones. An
//! accepted message has every accessor called and checked; a rejected one
//! that asks for a reply gets one written, which must be well formed. The
//! checks are `common::scan_target`, which `tests/proptest_scan.rs` replays
//! on stable.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| common::scan_target(data));
