//! Scans arbitrary bytes with the default limits and with tiny ones. An
//! accepted message has every accessor called and checked; a rejected one
//! that asks for a reply gets one written, which must be well formed.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use sipshard::sip::{write_rejection, Answer, Limits, ResponseError, Scanner};

fuzz_target!(|data: &[u8]| {
    let source = "198.51.100.9:5070".parse().unwrap();
    let mut out = vec![0u8; common::OUT_BYTES];
    let scanners = [
        Scanner::new(Limits::default()),
        Scanner::new(common::tiny()).with_proxy_require_supported(["timer", "100rel"]),
    ];
    for mut scanner in scanners {
        let error = match scanner.scan(data) {
            Ok(message) => {
                common::check_accessors(&message);
                continue;
            }
            Err(error) => error,
        };
        let _ = error.to_string();
        match (
            error.answer(),
            write_rejection(&mut scanner, data, &error, source, &mut out),
        ) {
            (Answer::Reply { code, .. }, Ok(n)) => {
                let reply = &out[..n];
                assert!(reply.starts_with(format!("SIP/2.0 {code} ").as_bytes()));
                assert!(reply.ends_with(b"Content-Length: 0\r\n\r\n"));
            }
            (Answer::Reply { .. }, Err(ResponseError::Unanswerable)) => {}
            (Answer::Drop, Err(ResponseError::NoAnswer)) => {}
            (answer, result) => panic!("{error}: answer {answer:?} but wrote {result:?}"),
        }
    }
});
