use super::*;

fn message(body: &str) -> String {
    format!(
        "MESSAGE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TCP h:5060;branch=z9hG4bK1\r\n\
Call-ID: c1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Every frame `bytes` gives when pushed in pieces of `step` bytes, as text.
fn frames(bytes: &[u8], step: usize) -> Vec<Result<String, StreamFault>> {
    let mut deframer = Deframer::new(StreamLimits::default());
    let mut out = Vec::new();
    for piece in bytes.chunks(step.max(1)) {
        if deframer.push(piece).is_err() {
            out.push(Err(StreamFault::BufferFull));
            return out;
        }
        while let Some(frame) = deframer.next_frame() {
            match frame {
                Ok(Frame::Message(m)) => out.push(Ok(String::from_utf8_lossy(m).into_owned())),
                Ok(Frame::Ping) => out.push(Ok("ping".into())),
                Ok(Frame::Pong) => out.push(Ok("pong".into())),
                Err(fault) => {
                    out.push(Err(fault));
                    return out;
                }
            }
        }
    }
    out
}

#[test]
fn messages_come_out_whole_however_the_stream_is_cut() {
    let (a, b) = (message("hello"), message(""));
    let stream = format!("{a}\r\n\r\n{b}\r\n");
    let want = vec![Ok(a.clone()), Ok("ping".to_string()), Ok(b.clone())];
    for step in 1..=stream.len() {
        let got = frames(stream.as_bytes(), step);
        // The trailing lone CRLF waits: it may be the start of a ping.
        assert_eq!(got, want, "pieces of {step}");
    }
}

#[test]
fn a_lone_crlf_before_a_message_is_a_pong() {
    let stream = format!("\r\n{}", message("x"));
    assert_eq!(
        frames(stream.as_bytes(), 64),
        vec![Ok("pong".into()), Ok(message("x"))]
    );
}

#[test]
fn a_body_is_taken_by_its_length_not_by_what_it_holds() {
    let body = "v=0\r\n\r\nINVITE sip:x SIP/2.0\r\n";
    let stream = format!("{}{}", message(body), message("next"));
    assert_eq!(
        frames(stream.as_bytes(), 7),
        vec![Ok(message(body)), Ok(message("next"))]
    );
}

#[test]
fn content_length_in_any_case_and_compact_form() {
    for header in [
        "content-length:  3",
        "CONTENT-LENGTH:3",
        "l: 3",
        "Content-Length : 3",
        "Content-Length:\t0003 ",
    ] {
        let text = format!("OPTIONS sip:a SIP/2.0\r\n{header}\r\n\r\nabcOPTIONS");
        let got = frames(text.as_bytes(), 100);
        assert_eq!(got[0].as_deref(), Ok(&text[..text.len() - 7]), "{header}");
    }
}

#[test]
fn streams_that_cannot_be_framed_fault_for_good() {
    let cases = [
        (
            "OPTIONS sip:a SIP/2.0\r\nVia: x\r\n\r\n",
            StreamFault::NoContentLength,
        ),
        (
            "OPTIONS sip:a SIP/2.0\r\nContent-Length: x1\r\n\r\n",
            StreamFault::BadContentLength,
        ),
        (
            "OPTIONS sip:a SIP/2.0\r\nContent-Length: -1\r\n\r\n",
            StreamFault::BadContentLength,
        ),
        (
            "OPTIONS sip:a SIP/2.0\r\nContent-Length:\r\n\r\n",
            StreamFault::BadContentLength,
        ),
        (
            "OPTIONS sip:a SIP/2.0\r\nl: 1\r\nContent-Length: 2\r\n\r\nab",
            StreamFault::BadContentLength,
        ),
        (
            "OPTIONS sip:a SIP/2.0\r\nContent-Length: 99999999999\r\n\r\n",
            StreamFault::BadContentLength,
        ),
        (
            "OPTIONS sip:a SIP/2.0\r\nContent-Length: 70000\r\n\r\n",
            StreamFault::MessageTooLarge,
        ),
        (
            "OPTIONS sip:a SIP/2.0\r\nContent-Length: 4294967295\r\n\r\n",
            StreamFault::MessageTooLarge,
        ),
        (
            "OPTIONS sip:a SIP/2.0\r\nContent-Length: 4294967296\r\n\r\n",
            StreamFault::BadContentLength,
        ),
        (
            "OPTIONS sip:a SIP/2.0\r\nContent-Length: 1 2\r\n\r\n",
            StreamFault::BadContentLength,
        ),
        ("\rX", StreamFault::NoContentLength),
    ];
    for (text, fault) in cases {
        let got = frames(text.as_bytes(), 5);
        assert_eq!(got.last(), Some(&Err(fault)), "{text:?}");
        let mut deframer = Deframer::new(StreamLimits::default());
        deframer.push(text.as_bytes()).unwrap();
        while let Some(Ok(_)) = deframer.next_frame() {}
        assert_eq!(deframer.fault(), Some(fault));
        assert_eq!(deframer.next_frame(), Some(Err(fault)), "it stays faulted");
    }
}

#[test]
fn equal_duplicate_lengths_frame() {
    let text = "OPTIONS sip:a SIP/2.0\r\nl: 2\r\nContent-Length: 2\r\n\r\nab";
    assert_eq!(frames(text.as_bytes(), 3), vec![Ok(text.to_string())]);
}

#[test]
fn headers_without_an_end_fault_at_the_bound() {
    let limits = StreamLimits {
        message_bytes_max: 1024,
        buffer_bytes_max: 2048,
    };
    let mut deframer = Deframer::new(limits);
    // Bare-LF line ends never end the section.
    let line = b"X-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n\n";
    let mut faulted = None;
    for _ in 0..40 {
        if deframer.push(line).is_err() {
            break;
        }
        if let Some(Err(fault)) = deframer.next_frame() {
            faulted = Some(fault);
            break;
        }
    }
    assert_eq!(faulted, Some(StreamFault::HeadersTooLong));
}

#[test]
fn a_message_larger_than_the_bound_faults_before_its_body_arrives() {
    let limits = StreamLimits {
        message_bytes_max: 1024,
        buffer_bytes_max: 2048,
    };
    let mut deframer = Deframer::new(limits);
    deframer
        .push(b"MESSAGE sip:a SIP/2.0\r\nContent-Length: 1000\r\n\r\n")
        .unwrap();
    assert_eq!(
        deframer.next_frame(),
        Some(Err(StreamFault::MessageTooLarge))
    );
}

#[test]
fn reading_in_place_and_idle_release() {
    let mut deframer = Deframer::new(StreamLimits::default());
    assert_eq!(deframer.partial(), 0);
    let text = message("abc");
    let space = deframer.space();
    space[..text.len()].copy_from_slice(text.as_bytes());
    deframer.filled(text.len());
    assert_eq!(deframer.partial(), text.len());
    assert_eq!(
        deframer.next_frame(),
        Some(Ok(Frame::Message(text.as_bytes())))
    );
    assert_eq!(deframer.next_frame(), None);
    assert_eq!(deframer.partial(), 0);
    deframer.release();
    assert!(
        deframer.buffer.is_empty(),
        "an idle connection holds no buffer"
    );
    // Half a message is kept through a release.
    deframer.push(&text.as_bytes()[..10]).unwrap();
    deframer.release();
    assert_eq!(deframer.partial(), 10);
    deframer.push(&text.as_bytes()[10..]).unwrap();
    assert_eq!(
        deframer.next_frame(),
        Some(Ok(Frame::Message(text.as_bytes())))
    );
}

#[test]
fn a_full_buffer_refuses_more() {
    let limits = StreamLimits {
        message_bytes_max: 1024,
        buffer_bytes_max: 1024,
    };
    let mut deframer = Deframer::new(limits);
    assert_eq!(deframer.push(&[b'a'; 1025]), Err(StreamFault::BufferFull));
    deframer.push(&[b'a'; 1024]).unwrap();
    assert!(deframer.space().is_empty());
    assert_eq!(
        deframer.next_frame(),
        Some(Err(StreamFault::HeadersTooLong))
    );
}

#[test]
fn fault_names_are_distinct() {
    let names: std::collections::HashSet<_> = StreamFault::ALL.iter().map(|f| f.name()).collect();
    assert_eq!(names.len(), StreamFault::ALL.len());
    for (i, fault) in StreamFault::ALL.iter().enumerate() {
        assert_eq!(fault.index(), i);
    }
}

#[test]
fn a_header_section_ending_past_the_bound_is_too_long_however_it_arrives() {
    let limits = StreamLimits {
        message_bytes_max: 2048,
        buffer_bytes_max: 4096,
    };
    // No Content-Length either: it must not be read, or the fault would
    // depend on whether the end of the section came in the same read.
    let text = format!("OPTIONS sip:a SIP/2.0\r\nX: {}\r\n\r\n", "a".repeat(3000));
    for step in [1, 17, 2048, text.len()] {
        let mut deframer = Deframer::new(limits);
        let mut got = None;
        for piece in text.as_bytes().chunks(step) {
            deframer.push(piece).unwrap();
            if let Some(frame) = deframer.next_frame() {
                got = Some(frame.map(|_| ()));
                break;
            }
        }
        assert_eq!(
            got,
            Some(Err(StreamFault::HeadersTooLong)),
            "pieces of {step}"
        );
    }
}

/// A lone CRLF at the end waits for the next byte (in one read with it,
/// a following CRLF would make a ping), but is held outside the buffer:
/// the connection counts as idle and may give its buffer back.
#[test]
fn a_lone_crlf_at_the_end_waits_without_holding_the_buffer() {
    let text = message("x");
    let ping_then_text = format!("\r\n\r\n{text}");
    let cases: [(&[u8], Vec<Frame<'_>>); 3] = [
        (b"\r\n", vec![Frame::Ping]),
        (
            text.as_bytes(),
            vec![Frame::Pong, Frame::Message(text.as_bytes())],
        ),
        (
            ping_then_text.as_bytes(),
            vec![Frame::Ping, Frame::Pong, Frame::Message(text.as_bytes())],
        ),
    ];
    for (then, want) in cases {
        let mut deframer = Deframer::new(StreamLimits::default());
        deframer.push(b"\r\n").unwrap();
        assert_eq!(deframer.next_frame(), None);
        assert_eq!(
            deframer.partial(),
            0,
            "a keep-alive's start is not a message"
        );
        deframer.release();
        assert!(deframer.buffer.is_empty());
        // The held `\r\n` and the next bytes decide together, even one
        // byte at a time.
        let mut got = Vec::new();
        for byte in then {
            deframer.push(std::slice::from_ref(byte)).unwrap();
            while let Some(frame) = deframer.next_frame() {
                got.push(match frame.unwrap() {
                    Frame::Message(m) => m.to_vec(),
                    Frame::Ping => b"ping".to_vec(),
                    Frame::Pong => b"pong".to_vec(),
                });
            }
        }
        let want: Vec<Vec<u8>> = want
            .iter()
            .map(|frame| match frame {
                Frame::Message(m) => m.to_vec(),
                Frame::Ping => b"ping".to_vec(),
                Frame::Pong => b"pong".to_vec(),
            })
            .collect();
        assert_eq!(got, want, "then {:?}", String::from_utf8_lossy(then));
    }
}

#[test]
fn a_cr_that_does_not_start_a_crlf_faults_even_when_held() {
    let mut deframer = Deframer::new(StreamLimits::default());
    deframer.push(b"\r\n\r").unwrap();
    assert_eq!(deframer.next_frame(), None);
    assert_eq!(deframer.partial(), 0);
    deframer.push(b"X").unwrap();
    // `\r\n` then a CR not followed by LF: a pong, then a stray CR.
    assert_eq!(deframer.next_frame(), Some(Ok(Frame::Pong)));
    assert_eq!(
        deframer.next_frame(),
        Some(Err(StreamFault::NoContentLength))
    );
}

#[test]
fn what_is_kept_moves_to_the_front_only_when_room_runs_short() {
    let limits = StreamLimits {
        message_bytes_max: 256,
        buffer_bytes_max: 512,
    };
    let text = message("abc");
    let stream = text.repeat(8);
    let mut deframer = Deframer::new(limits);
    let mut framed = 0;
    let mut moved = 0;
    for piece in stream.as_bytes().chunks(100) {
        let start = deframer.start + deframer.consumed;
        deframer.push(piece).unwrap();
        if deframer.start == 0 && start > 0 && deframer.partial() > piece.len() {
            moved += 1;
        }
        while let Some(frame) = deframer.next_frame() {
            assert_eq!(frame, Ok(Frame::Message(text.as_bytes())));
            framed += 1;
        }
    }
    assert_eq!(framed, 8);
    // 100-byte pieces through 512 bytes: a move every few pieces, not one
    // after every piece that ends inside a message.
    assert!((1..=4).contains(&moved), "moved {moved} times");
}
