//! Scanner and editor benches, with the `rsip` parser on the same messages
//! in the same groups as the baseline.
//!
//! "Scan" means what the proxy needs before it can route: the start line,
//! every header framed, and the routing fields typed (top Via with branch,
//! Call-ID, CSeq, Max-Forwards, From and To tags). For rsip that is
//! `SipMessage::try_from` plus the typed accessors for the same fields.

use std::hint::black_box;

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use rsip::prelude::*;
use sipshard::sip::{
    Deframer, Editor, Forward, Frame, Limits, LocalAddress, Scanner, StreamLimits, Transport,
};

const INVITE: &[u8] = include_bytes!("messages/invite.sip");
const RINGING: &[u8] = include_bytes!("messages/ringing.sip");
const OK: &[u8] = include_bytes!("messages/ok.sip");
const BYE: &[u8] = include_bytes!("messages/bye.sip");

fn sipshard_scan(scanner: &mut Scanner, datagram: &[u8]) -> usize {
    match scanner.scan(datagram) {
        Ok(m) => {
            let via = m.top_via();
            black_box((
                via.branch,
                m.call_id(),
                m.cseq().number,
                m.max_forwards(),
                m.from().tag,
                m.to().tag,
            ));
            m.body().len()
        }
        Err(e) => {
            black_box(e);
            0
        }
    }
}

/// rsip parses the message and then types the same routing fields.
fn rsip_scan(datagram: &[u8]) -> usize {
    let Ok(message) = rsip::SipMessage::try_from(datagram) else {
        return 0;
    };
    let branch = message
        .via_header()
        .ok()
        .and_then(|v| v.typed().ok())
        .map(|v| v.branch().cloned());
    let call_id = message.call_id_header().ok().map(|c| c.value().len());
    let cseq = message.cseq_header().ok().and_then(|c| c.seq().ok());
    let max_forwards = message
        .max_forwards_header()
        .ok()
        .and_then(|m| m.num().ok());
    let from_tag = message
        .from_header()
        .ok()
        .and_then(|f| f.tag().ok().flatten());
    let to_tag = message
        .to_header()
        .ok()
        .and_then(|t| t.tag().ok().flatten());
    black_box((branch, call_id, cseq, max_forwards, from_tag, to_tag));
    message.body().len()
}

fn torture_set() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rfc4475");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sip"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect()
}

fn scan(c: &mut Criterion) {
    for (name, datagram) in [
        ("invite_sdp", INVITE),
        ("180_ringing", RINGING),
        ("200_ok_sdp", OK),
        ("bye", BYE),
    ] {
        let mut group = c.benchmark_group(format!("scan/{name}"));
        group.throughput(Throughput::Bytes(datagram.len() as u64));
        let mut scanner = Scanner::new(Limits::default());
        group.bench_function("sipshard", |b| {
            b.iter(|| sipshard_scan(&mut scanner, black_box(datagram)))
        });
        group.bench_function("rsip", |b| b.iter(|| rsip_scan(black_box(datagram))));
        // Framing alone (start line, header ranges, names): the floor under
        // the full scan, to show where its time goes.
        group.bench_function("sipshard_frame_only", |b| {
            b.iter(|| scanner.frame_only(black_box(datagram)))
        });
        group.finish();
    }

    let set = torture_set();
    let mut group = c.benchmark_group("scan/rfc4475_set");
    group.throughput(Throughput::Elements(set.len() as u64));
    let mut scanner = Scanner::new(Limits::default());
    group.bench_function("sipshard", |b| {
        b.iter(|| {
            set.iter()
                .map(|d| sipshard_scan(&mut scanner, black_box(d)))
                .sum::<usize>()
        })
    });
    group.bench_function("rsip", |b| {
        b.iter(|| set.iter().map(|d| rsip_scan(black_box(d))).sum::<usize>())
    });
    group.finish();
}

fn edit(c: &mut Criterion) {
    let editor = Editor::new(LocalAddress::new("203.0.113.5", 5060));
    let mut out = vec![0u8; 65_536];
    let forward = Forward {
        source: "198.51.100.20:5060".parse().unwrap(),
        branch_key: b"0123456789abcdef",
        record_route: true,
        inbound: Transport::Udp,
        outbound: Transport::Udp,
    };

    let mut group = c.benchmark_group("edit");
    let mut scanner = Scanner::new(Limits::default());
    let invite = scanner.scan(INVITE).unwrap();
    group.bench_function(BenchmarkId::new("forward_request", "invite_sdp"), |b| {
        b.iter(|| {
            editor
                .forward_request(black_box(&invite), &forward, &mut out)
                .unwrap()
        })
    });
    let mut scanner = Scanner::new(Limits::default());
    let ok = scanner.scan(OK).unwrap();
    group.bench_function(BenchmarkId::new("forward_response", "200_ok_sdp"), |b| {
        b.iter(|| editor.forward_response(black_box(&ok), &mut out).unwrap())
    });
    // Bytes in, bytes out: what one forwarded INVITE costs the core.
    let mut scanner = Scanner::new(Limits::default());
    group.bench_function(BenchmarkId::new("scan_and_forward", "invite_sdp"), |b| {
        b.iter(|| {
            let m = scanner.scan(black_box(INVITE)).unwrap();
            editor.forward_request(&m, &forward, &mut out).unwrap()
        })
    });
    group.finish();
}

/// Framing a TCP stream: 100 INVITEs back to back, pushed in 1,400-byte
/// segments (a typical MSS), so that most pushes end inside a message.
/// One `Deframer` for the whole run, as one connection has.
fn stream(c: &mut Criterion) {
    const SEGMENT_BYTES: usize = 1_400;
    let bytes: Vec<u8> = INVITE.repeat(100);
    let mut group = c.benchmark_group("stream");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    let mut deframer = Deframer::new(StreamLimits::default());
    group.bench_function(BenchmarkId::new("deframe", "100_invites_1400"), |b| {
        b.iter(|| {
            let mut messages = 0usize;
            for segment in black_box(&bytes).chunks(SEGMENT_BYTES) {
                deframer.push(segment).unwrap();
                while let Some(frame) = deframer.next_frame() {
                    if let Ok(Frame::Message(m)) = frame {
                        messages += m.len();
                    }
                }
            }
            assert_eq!(messages, bytes.len());
            messages
        })
    });
    group.finish();
}

criterion_group!(benches, scan, edit, stream);

/// `SCAN_LOOP=<message>,<n> target/release/deps/scan-*` scans one message
/// `n` times with the bench's accessors and exits, before criterion: run
/// under `valgrind --tool=callgrind` with two counts, the difference over
/// the difference in counts is the instructions per scan, which do not
/// move with the machine's load. `<message>`: `invite`, `ringing`, `ok`,
/// `bye` or `rfc4475` (one round of the set), with `-frame` for framing
/// alone (`invite-frame`).
fn scan_loop(spec: &str) {
    let (name, n) = spec.split_once(',').expect("SCAN_LOOP=<message>,<n>");
    let n: usize = n.parse().expect("a count");
    let (name, frame_only) = match name.strip_suffix("-frame") {
        Some(name) => (name, true),
        None => (name, false),
    };
    let set = match name {
        "invite" => vec![INVITE.to_vec()],
        "ringing" => vec![RINGING.to_vec()],
        "ok" => vec![OK.to_vec()],
        "bye" => vec![BYE.to_vec()],
        "rfc4475" => torture_set(),
        _ => panic!("unknown message {name}"),
    };
    let mut scanner = Scanner::new(Limits::default());
    let mut sum = 0usize;
    for _ in 0..n {
        for d in &set {
            sum += if frame_only {
                usize::from(scanner.frame_only(black_box(d)))
            } else {
                sipshard_scan(&mut scanner, black_box(d))
            };
        }
    }
    black_box(sum);
}

fn main() {
    if let Ok(spec) = std::env::var("SCAN_LOOP") {
        scan_loop(&spec);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
