//! Properties of stream framing (`sip::Deframer`): any split of a stream
//! gives the same frames; what comes out is the stream's bytes in order,
//! within its bounds; a stream that cannot be framed faults and stays
//! faulted, never panics and never desynchronises into a message made of
//! another's bytes. Also replays the `stream` fuzz target's seeds.

use proptest::prelude::*;
use sipshard::sip::{StreamFault, StreamLimits};

// The checks the `stream` fuzz target makes (`stream_target`, `deframe`).
#[path = "../fuzz/fuzz_targets/common.rs"]
mod common;

use common::{deframe, stream_target};

const LIMITS: StreamLimits = StreamLimits {
    message_bytes_max: 2048,
    buffer_bytes_max: 4096,
};

/// One well-formed message with a body of `body` bytes, or a keep-alive:
/// a ping, or a pong (only before a message: a lone CRLF before a ping, or
/// at the end, is not one).
#[derive(Clone, Debug)]
enum Item {
    Message {
        method: &'static str,
        body: Vec<u8>,
        compact: bool,
    },
    Ping,
    Pong,
}

impl Item {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Item::Ping => b"\r\n\r\n".to_vec(),
            Item::Pong => b"\r\n".to_vec(),
            Item::Message {
                method,
                body,
                compact,
            } => {
                let name = if *compact { "l" } else { "Content-Length" };
                let mut out = format!(
                    "{method} sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.1;branch=z9hG4bKp\r\nCall-ID: p@x\r\nCSeq: 1 {method}\r\n{name}: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                out.extend_from_slice(body);
                out
            }
        }
    }
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        1 => Just(Item::Ping),
        1 => Just(Item::Pong),
        4 => (
            prop::sample::select(vec!["INVITE", "ACK", "BYE", "OPTIONS", "MESSAGE"]),
            prop::collection::vec(any::<u8>(), 0..600),
            any::<bool>()
        )
            .prop_map(|(method, body, compact)| Item::Message { method, body, compact }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_split_gives_the_same_frames(
        items in prop::collection::vec(item(), 1..12),
        splits in prop::collection::vec(1usize..700, 1..8),
    ) {
        let items = pongs_before_messages(items);
        let stream: Vec<u8> = items.iter().flat_map(Item::bytes).collect();
        let want: Vec<Vec<u8>> = items.iter().map(Item::bytes).collect();
        let (frames, fault) = deframe(&stream, LIMITS, &splits);
        prop_assert_eq!(fault, None);
        prop_assert_eq!(frames, want);
    }

    #[test]
    fn garbage_never_panics_and_stays_in_bounds(
        stream in prop::collection::vec(any::<u8>(), 0..6000),
        seed in any::<u8>(),
    ) {
        let mut data = vec![seed];
        data.extend_from_slice(&stream);
        stream_target(&data);
    }

    /// A Content-Length shorter than the body: the message is cut where it
    /// says, and the rest is not a message of its own (no header section
    /// that starts a message can be made of body bytes without a fault or
    /// a frame that starts where the body's leftover does).
    #[test]
    fn a_lying_length_ends_in_a_fault_or_frames_of_the_streams_own_bytes(
        body in prop::collection::vec(any::<u8>(), 1..400),
        short_by in 1usize..400,
        next in item(),
        splits in prop::collection::vec(1usize..300, 1..5),
    ) {
        let shown = body.len().saturating_sub(short_by);
        let mut stream = format!("MESSAGE sip:a SIP/2.0\r\nContent-Length: {shown}\r\n\r\n").into_bytes();
        let head = stream.len();
        stream.extend_from_slice(&body);
        stream.extend_from_slice(&next.bytes());
        let (frames, _) = deframe(&stream, LIMITS, &splits);
        prop_assert_eq!(&frames[0][..], &stream[..head + shown]);
        let joined: Vec<u8> = frames.concat();
        prop_assert!(stream.starts_with(&joined));
    }

    #[test]
    fn a_message_without_content_length_faults(
        headers in prop::collection::vec("[A-Za-z-]{1,12}: [a-z0-9]{0,20}", 0..6),
        splits in prop::collection::vec(1usize..100, 1..5),
    ) {
        let headers: Vec<String> = headers
            .into_iter()
            .filter(|h| !h.to_ascii_lowercase().starts_with("content-length:") && !h.to_ascii_lowercase().starts_with("l:"))
            .collect();
        let text = format!("OPTIONS sip:a SIP/2.0\r\n{}\r\n\r\nINVITE", headers.join("\r\n"));
        let text = text.replace("SIP/2.0\r\n\r\n\r\n", "SIP/2.0\r\n\r\n");
        let (frames, fault) = deframe(text.as_bytes(), LIMITS, &splits);
        prop_assert!(frames.is_empty());
        prop_assert_eq!(fault, Some(StreamFault::NoContentLength));
    }
}

/// `items` without the pongs that a message does not follow.
fn pongs_before_messages(items: Vec<Item>) -> Vec<Item> {
    let mut kept: Vec<Item> = Vec::with_capacity(items.len());
    for item in items.into_iter().rev() {
        let next_is_message = matches!(kept.last(), Some(Item::Message { .. }));
        if !matches!(item, Item::Pong) || next_is_message {
            kept.push(item);
        }
    }
    kept.reverse();
    kept
}

/// The committed seeds of the `stream` fuzz target pass its checks.
#[test]
fn stream_fuzz_seeds_replay() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/stream");
    let mut count = 0;
    for entry in std::fs::read_dir(dir).expect("the stream seeds are committed") {
        stream_target(&std::fs::read(entry.unwrap().path()).unwrap());
        count += 1;
    }
    assert!(count >= 5);
}
