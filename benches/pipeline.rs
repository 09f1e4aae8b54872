//! The whole per-message pipeline of one shard, bytes in to bytes out,
//! through the sans-I/O `proxy::Proxy` (scan, match or open transactions,
//! route, edit, write, store; no sockets, a fake clock).
//!
//! Every bench runs the same calls: a caller's INVITE with SDP (the
//! message `scan.rs` uses), the proxy's 100 Trying, a backend's 180 and
//! 200 with SDP, the caller's ACK and BYE (loose-routed by our
//! Record-Route to the backend's Contact), the backend's 200 to the BYE:
//! 6 datagrams in, 7 out. Each call has its own Call-ID, caller branches
//! and tags (a counter written into fixed-width places of pre-built
//! datagrams, before the timed part); the backends' answers carry the
//! branch the proxy wrote. Two backends, round robin, default timers and
//! table bound. Calls run 64 at a time, step by step (64 INVITEs, then
//! their 180s, ...), and the clock moves 2 ms per call (500 calls per
//! second), running the timers that are due, so that completed
//! transactions linger (Timers L, M, J, K) and are reaped as in
//! production: after a warm-up of 40 simulated seconds the table is at its
//! steady state (printed at start). `Wire` stands for the shard's send
//! batch: each datagram is written into the free space of one arena, with
//! no copy and no allocation.
//!
//! - `pipeline/invite_in_forward_out`: only the INVITE step is timed: the
//!   INVITE in, the 100 Trying to the caller and the INVITE to a backend
//!   out (a new server and client transaction). One element = one INVITE.
//! - `pipeline/response_relay`: only the 180 step is timed: a backend's
//!   first 180 matched to its client transaction (Timers A, B and the
//!   per-try timer stop, Timer C starts) and relayed to the caller. One
//!   element = one 180.
//! - `pipeline/call`: every step is timed, the timers too. The time is per
//!   call; one element = one datagram in (6 per call), so criterion's
//!   throughput is messages per second.
//!
//! Compare with `scan/invite_sdp/sipshard` (the scanner alone on the same
//! INVITE) for what the rest of the pipeline costs.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sipshard::balance::Algorithm;
use sipshard::proxy::{Outcome, Proxy, Transmit};
use sipshard::sip::Peer;
use sipshard::testkit::{clock, message, Setup};
use sipshard::txn::Millis;

/// The binary's allocator: the transactions' copies are allocated as they
/// are in production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const INVITE: &str = include_str!("messages/invite.sip");
const RINGING: &str = include_str!("messages/ringing.sip");
const OK: &str = include_str!("messages/ok.sip");
const BYE: &str = include_str!("messages/bye.sip");

/// The proxy, as the messages name it (Record-Route, Route).
const PROXY_HOST: &str = "203.0.113.5";
const PROXY_PORT: u16 = 5060;
const CALLER: &str = "198.51.100.20:5060";
/// The first is the one the messages name (Contact, Request-URI).
const BACKENDS: [&str; 2] = ["192.0.2.40:5060", "192.0.2.41:5060"];

/// Calls in flight at once, step by step.
const CHUNK: usize = 64;
const CALL_SPACING_MS: Millis = 2;
const WARM_UP_CALLS: u64 = 20_000;

/// Where each call's number goes (Call-ID, caller branches, tags): 16
/// hex digits. The probe call runs with this number, so the pre-built
/// datagrams keep the mark where the number goes.
const MARK: &str = "feedfacecafebeef";
const PROBE_CALL: u64 = 0xfeed_face_cafe_beef;
/// What precedes our branch key on our Via.
const OUR_BRANCH: &[u8] = b"branch=z9hG4bK";

fn hex16(n: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, digit) in out.iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

/// The shard's send batch in miniature: datagrams are written one after
/// the other into one arena.
struct Wire {
    arena: Vec<u8>,
    used: usize,
    /// Destination, offset and length of each datagram sent.
    sent: Vec<(SocketAddr, usize, usize)>,
}

const DATAGRAM_BYTES_MAX: usize = 65_536;

impl Wire {
    fn new() -> Wire {
        Wire {
            arena: vec![0; 4 * DATAGRAM_BYTES_MAX],
            used: 0,
            sent: Vec::with_capacity(16),
        }
    }

    fn datagram(&self, index: usize) -> (SocketAddr, &[u8]) {
        let (to, at, len) = self.sent[index];
        (to, &self.arena[at..at + len])
    }

    fn clear(&mut self) {
        self.used = 0;
        self.sent.clear();
    }
}

impl Transmit for Wire {
    fn buffer(&mut self) -> &mut [u8] {
        if self.arena.len() - self.used < DATAGRAM_BYTES_MAX {
            self.clear();
        }
        &mut self.arena[self.used..self.used + DATAGRAM_BYTES_MAX]
    }

    fn send(&mut self, to: Peer, len: usize) {
        self.sent.push((to.addr, self.used, len));
        self.used += len;
    }
}

/// A pre-built datagram and the places each call writes into it.
#[derive(Clone)]
struct Template {
    bytes: Vec<u8>,
    /// Offsets of the call's number.
    marks: Vec<usize>,
    /// Offset of our branch key (33 bytes), in a backend's answer.
    branch: Option<usize>,
}

impl Template {
    fn new(text: &str) -> Template {
        assert!(!text.contains('\n') || text.contains("\r\n"), "CRLF lines");
        let bytes = text.as_bytes().to_vec();
        let marks = memchr::memmem::find_iter(&bytes, MARK).collect();
        Template {
            bytes,
            marks,
            branch: None,
        }
    }

    /// A backend's answer: our branch is on its top Via.
    fn answer(text: &str) -> Template {
        let mut template = Template::new(text);
        template.branch = Some(find(&template.bytes, OUR_BRANCH).unwrap() + OUR_BRANCH.len());
        template
    }

    /// Writes this call's datagram into `out`.
    fn stamp(&self, number: u64, branch: &[u8; 33], out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.bytes);
        let number = hex16(number);
        for &at in &self.marks {
            out[at..at + 16].copy_from_slice(&number);
        }
        if let Some(at) = self.branch {
            out[at..at + 33].copy_from_slice(branch);
        }
    }
}

/// The datagrams of a call, from the caller and from backend `i`.
struct Templates {
    invite: Template,
    ringing: [Template; 2],
    ok: [Template; 2],
    ack: [Template; 2],
    bye: [Template; 2],
    bye_ok: Template,
}

/// One step of a call: a datagram in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Invite,
    Ringing,
    Ok,
    Ack,
    Bye,
    ByeOk,
}

const STEPS: [Step; 6] = [
    Step::Invite,
    Step::Ringing,
    Step::Ok,
    Step::Ack,
    Step::Bye,
    Step::ByeOk,
];

/// A call in flight: what the next datagrams need of the last ones.
struct Call {
    number: u64,
    backend: usize,
    /// Our branch keys on the INVITE and the BYE we forwarded.
    invite_branch: [u8; 33],
    bye_branch: [u8; 33],
    /// The next datagram in.
    datagram: Vec<u8>,
}

struct Bench {
    proxy: Proxy,
    wire: Wire,
    now: Millis,
    caller: SocketAddr,
    backends: [SocketAddr; 2],
    templates: Templates,
    /// Where our branch key is in the INVITE and BYE we forward (the same
    /// for every call: every field a call changes has a fixed width).
    invite_branch_at: usize,
    bye_branch_at: usize,
    next_call: u64,
    calls: Vec<Call>,
}

/// The caller's in-dialog request `method` to `backend`, made from the
/// BYE message: the call's Call-ID, tags and CSeq, its own branch (`-n-`
/// tells the ACK's and the BYE's apart from the INVITE's `-1-`).
fn in_dialog(method: &str, cseq: u32, branch_n: u32, backend: &str) -> String {
    let host = backend.split(':').next().unwrap();
    BYE.replacen("BYE sip:", &format!("{method} sip:"), 1)
        .replace("192.0.2.40", host)
        .replace("c0ffee1234567890", MARK)
        .replace(
            "z9hG4bK-524287-1---",
            &format!("z9hG4bK-524287-{branch_n}---"),
        )
        .replace("as1f0e2d3c", MARK)
        .replace("4f8c2a1b", MARK)
        .replace("3c26700b9b1f4a8e", MARK)
        .replace("2 BYE", &format!("{cseq} {method}"))
}

/// What follows the CSeq line of a message (the rest of its headers and
/// its body), for `backend` (the messages name the first one).
fn after_cseq(message: &str, backend: &str) -> String {
    let rest = &message[message.find("\r\nCSeq:").unwrap() + 2..];
    let rest = &rest[rest.find("\r\n").unwrap() + 2..];
    rest.replace("192.0.2.40", backend.split(':').next().unwrap())
}

/// A backend's answer to `forwarded`: the status line, its Vias,
/// Record-Route, From, To (with the backend's tag when it has none yet),
/// Call-ID and CSeq (`testkit::message::response_head`), the backend's
/// Contact when given, then `rest`.
fn answer(forwarded: &[u8], code: u16, backend: Option<&str>, rest: &str) -> Template {
    let forwarded = std::str::from_utf8(forwarded).unwrap();
    let mut out = message::response_head(forwarded, code, Some(MARK));
    if let Some(backend) = backend {
        out.push_str(&format!("Contact: <sip:+15551230001@{backend}>\r\n"));
    }
    out.push_str(rest);
    Template::answer(&out)
}

impl Bench {
    fn new() -> Bench {
        let backends = BACKENDS.map(|b| b.parse().unwrap());
        let proxy = Setup {
            host: PROXY_HOST,
            port: PROXY_PORT,
            backends: backends.iter().map(|&b| Peer::udp(b)).collect(),
            algorithm: Algorithm::RoundRobin,
            seed: 0x5eed,
            ..Setup::default()
        }
        .proxy();
        let invite = INVITE
            .replace("8f2a3c7d9e1b4a60", MARK)
            .replace("4f8c2a1b", MARK)
            .replace("3c26700b9b1f4a8e", MARK);
        let placeholder = Template::new("");
        let templates = Templates {
            invite: Template::new(&invite),
            ringing: [placeholder.clone(), placeholder.clone()],
            ok: [placeholder.clone(), placeholder.clone()],
            ack: BACKENDS.map(|b| Template::new(&in_dialog("ACK", 1, 2, b))),
            bye: BACKENDS.map(|b| Template::new(&in_dialog("BYE", 2, 3, b))),
            bye_ok: placeholder,
        };
        let mut bench = Bench {
            proxy,
            wire: Wire::new(),
            now: 0,
            caller: CALLER.parse().unwrap(),
            backends,
            templates,
            invite_branch_at: 0,
            bye_branch_at: 0,
            next_call: 1,
            calls: Vec::new(),
        };
        bench.probe();
        bench.calls = (0..CHUNK)
            .map(|_| Call {
                number: 0,
                backend: 0,
                invite_branch: [0; 33],
                bye_branch: [0; 33],
                datagram: Vec::with_capacity(2_048),
            })
            .collect();
        bench
    }

    /// One call with the mark for its number, to learn what the proxy
    /// writes: the backends' answers are built from the requests it
    /// forwards, and the places of our branch keys in them.
    fn probe(&mut self) {
        let mut call = Call {
            number: PROBE_CALL,
            backend: 0,
            invite_branch: [0; 33],
            bye_branch: [0; 33],
            datagram: Vec::new(),
        };
        self.prepare(Step::Invite, &mut call);
        assert_eq!(self.handle(self.caller, &call.datagram), Outcome::Forwarded);
        let (_, forwarded) = self.wire.datagram(1);
        self.invite_branch_at = find(forwarded, OUR_BRANCH).unwrap() + OUR_BRANCH.len();
        for (i, backend) in BACKENDS.into_iter().enumerate() {
            self.templates.ringing[i] =
                answer(forwarded, 180, Some(backend), &after_cseq(RINGING, backend));
            self.templates.ok[i] = answer(forwarded, 200, Some(backend), &after_cseq(OK, backend));
        }
        self.record_invite(&mut call);
        for step in [Step::Ringing, Step::Ok, Step::Ack] {
            self.prepare(step, &mut call);
            self.deliver(step, &mut call);
        }
        self.prepare(Step::Bye, &mut call);
        assert_eq!(self.handle(self.caller, &call.datagram), Outcome::Forwarded);
        let (_, forwarded) = self.wire.datagram(0);
        self.bye_branch_at = find(forwarded, OUR_BRANCH).unwrap() + OUR_BRANCH.len();
        let rest = "Server: ExampleSwitch/9.1\r\nContent-Length: 0\r\n\r\n";
        self.templates.bye_ok = answer(forwarded, 200, None, rest);
        self.record_bye(&mut call);
        self.prepare(Step::ByeOk, &mut call);
        self.deliver(Step::ByeOk, &mut call);
        // Everything it opened lingers, then goes.
        assert_ne!(self.proxy.transactions(), (0, 0));
        self.tick(40_000);
        assert_eq!(self.proxy.transactions(), (0, 0));
        self.check();
    }

    fn handle(&mut self, from: SocketAddr, datagram: &[u8]) -> Outcome {
        self.wire.clear();
        self.proxy
            .handle(self.now, Peer::udp(from), datagram, &mut self.wire)
    }

    /// The INVITE we forwarded: which backend, and our branch key on it.
    fn record_invite(&mut self, call: &mut Call) {
        let (to, forwarded) = self.wire.datagram(1);
        let at = self.invite_branch_at;
        call.invite_branch.copy_from_slice(&forwarded[at..at + 33]);
        call.backend = usize::from(to == self.backends[1]);
    }

    fn record_bye(&mut self, call: &mut Call) {
        let (_, forwarded) = self.wire.datagram(0);
        let at = self.bye_branch_at;
        call.bye_branch.copy_from_slice(&forwarded[at..at + 33]);
    }

    /// Writes the call's datagram for `step`.
    fn prepare(&self, step: Step, call: &mut Call) {
        let t = &self.templates;
        let b = call.backend;
        let (template, branch) = match step {
            Step::Invite => (&t.invite, &call.invite_branch),
            Step::Ringing => (&t.ringing[b], &call.invite_branch),
            Step::Ok => (&t.ok[b], &call.invite_branch),
            Step::Ack => (&t.ack[b], &call.invite_branch),
            Step::Bye => (&t.bye[b], &call.invite_branch),
            Step::ByeOk => (&t.bye_ok, &call.bye_branch),
        };
        template.stamp(call.number, branch, &mut call.datagram);
    }

    /// Hands the proxy the call's datagram for `step`; checks what came
    /// out (how many datagrams, to whom) and keeps what later steps need.
    fn deliver(&mut self, step: Step, call: &mut Call) {
        let backend = self.backends[call.backend];
        let (from, sent, to) = match step {
            Step::Invite => (self.caller, 2, self.caller),
            Step::Ringing | Step::Ok | Step::ByeOk => (backend, 1, self.caller),
            Step::Ack | Step::Bye => (self.caller, 1, backend),
        };
        self.wire.clear();
        let outcome = self
            .proxy
            .handle(self.now, Peer::udp(from), &call.datagram, &mut self.wire);
        if outcome != Outcome::Forwarded
            || self.wire.sent.len() != sent
            || self.wire.sent[0].0 != to
        {
            panic!("{step:?}: {outcome:?}, sent {:?}", self.wire.sent);
        }
        match step {
            Step::Invite => self.record_invite(call),
            Step::Bye => self.record_bye(call),
            _ => {}
        }
    }

    /// Moves the clock on by `ms`, running every timer due on the way.
    fn tick(&mut self, ms: Millis) {
        let end = self.now + ms;
        while let Some(at) = clock::step_toward(&mut self.now, end, self.proxy.next_deadline()) {
            self.wire.clear();
            self.proxy.on_timers(at, &mut self.wire);
        }
        self.wire.clear();
    }

    /// Runs `count` calls, `CHUNK` at a time; returns the time spent in
    /// the `timed` steps (and in the timers, with `timers`).
    fn run(&mut self, count: u64, timed: &[Step], timers: bool) -> Duration {
        let mut calls = std::mem::take(&mut self.calls);
        let mut took = Duration::ZERO;
        let mut left = count;
        while left > 0 {
            let chunk = &mut calls[..left.min(CHUNK as u64) as usize];
            left -= chunk.len() as u64;
            for call in chunk.iter_mut() {
                call.number = self.next_call;
                self.next_call += 1;
            }
            for step in STEPS {
                for call in chunk.iter_mut() {
                    self.prepare(step, call);
                }
                let start = Instant::now();
                for call in chunk.iter_mut() {
                    self.deliver(step, call);
                }
                if timed.contains(&step) {
                    took += start.elapsed();
                }
            }
            let start = Instant::now();
            self.tick(CALL_SPACING_MS * chunk.len() as u64);
            if timers {
                took += start.elapsed();
            }
        }
        self.calls = calls;
        black_box(&self.wire.sent);
        took
    }

    /// Every call went through its transactions: nothing timed out, was
    /// retransmitted, dropped or rejected.
    fn check(&self) {
        let c = self.proxy.counters();
        let bad = c.timeouts
            + c.try_timeouts
            + c.retransmissions_sent
            + c.retransmissions_absorbed
            + c.ack_timeouts
            + c.overload_rejected
            + c.unavailable_rejected
            + c.dropped_malformed
            + c.dropped_response_not_ours
            + c.dropped_response_for_us
            + c.dropped_unresolved
            + c.dropped_buffer_full
            + c.dropped_no_backend;
        assert_eq!(bad, 0, "{c:#?}");
        // Stateless: the ACKs only (responses all matched a transaction).
        assert_eq!(c.transactions_started, 2 * (self.next_call - 1) + 2);
    }
}

fn pipeline(c: &mut Criterion) {
    let mut bench = Bench::new();
    bench.run(WARM_UP_CALLS, &[], false);
    let (servers, clients) = bench.proxy.transactions();
    eprintln!(
        "pipeline: steady state {servers} server and {clients} client transactions, \
         {} dialogs, at {} calls per simulated second",
        bench.proxy.dialogs(),
        1_000 / CALL_SPACING_MS
    );
    bench.check();

    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(1));
    group.bench_function("invite_in_forward_out", |b| {
        b.iter_custom(|iters| bench.run(iters, &[Step::Invite], false))
    });
    group.bench_function("response_relay", |b| {
        b.iter_custom(|iters| bench.run(iters, &[Step::Ringing], false))
    });
    group.throughput(Throughput::Elements(STEPS.len() as u64));
    group.bench_function("call", |b| {
        b.iter_custom(|iters| bench.run(iters, &STEPS, true))
    });
    group.finish();
    bench.check();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
