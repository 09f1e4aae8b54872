//! Memory per transaction, measured with a counting allocator: the bytes
//! the proxy core holds per call in flight at each stage of an INVITE, and
//! what a shard allocates up front for its bounds. The figures are printed
//! (`cargo test --release --test txn_memory -- --nocapture`) and bounded, so
//! that a change that makes a call much heavier fails here.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use sipshard::balance::{Algorithm, Routing, RoutingSpec};
use sipshard::proxy::{Outcome, Proxy};
use sipshard::sip::{Limits, LocalAddress, Scanner};
use sipshard::testkit::Outbox;
use sipshard::txn::TxnConfig;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const CALLS: usize = 10_000;
const CALLER: &str = "198.51.100.7:5070";
const BACKEND: &str = "10.0.0.1:5080";

/// A typical INVITE with SDP (the bench message), one Call-ID and branch
/// per call.
fn invite(i: usize) -> Vec<u8> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/benches/messages/invite.sip"
    ))
    .unwrap();
    let call_id = text
        .lines()
        .find_map(|l| l.strip_prefix("Call-ID: "))
        .unwrap()
        .to_string();
    let branch = text
        .lines()
        .find_map(|l| l.split(";branch=").nth(1))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    text.replace(&call_id, &format!("{i}-{call_id}"))
        .replace(&branch, &format!("{branch}-{i}"))
        .into_bytes()
}

/// The backend's answer to a forwarded request: its head with `code`.
fn answer(forwarded: &[u8], code: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(forwarded);
    let head = text.split("\r\n\r\n").next().unwrap();
    let mut out = format!("SIP/2.0 {code}\r\n");
    for line in head.split("\r\n").skip(1) {
        if ["Via:", "From:", "Call-ID:", "CSeq:", "Record-Route:"]
            .iter()
            .any(|k| line.starts_with(k))
        {
            out.push_str(line);
            out.push_str("\r\n");
        } else if line.starts_with("To:") {
            out.push_str(line);
            out.push_str(";tag=b\r\n");
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out.into_bytes()
}

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

#[test]
fn bytes_per_transaction_and_per_call_in_flight() {
    let before_proxy = live();
    let config = TxnConfig::default();
    let max = config.max_transactions;
    let spec = RoutingSpec::one_set(
        Algorithm::RoundRobin,
        &[BACKEND.parse::<std::net::SocketAddr>().unwrap()],
    );
    let mut proxy = Proxy::with_routing(
        Scanner::new(Limits::default()),
        LocalAddress::new("192.0.2.250", 5060),
        Routing::build(&spec, None).ok().map(std::sync::Arc::new),
        config,
        0,
        1,
    );
    let fixed = live() - before_proxy;
    let invites: Vec<Vec<u8>> = (0..CALLS).map(invite).collect();
    let mut outbox = Outbox::default();
    // Warm the outbox's buffer so it is not counted per call.
    proxy.handle(0, CALLER.parse().unwrap(), &invite(usize::MAX), &mut outbox);
    let mut forwarded = Vec::with_capacity(CALLS);

    let start = live();
    for datagram in &invites {
        outbox.sent.clear();
        let outcome = proxy.handle(1, CALLER.parse().unwrap(), datagram, &mut outbox);
        assert_eq!(outcome, Outcome::Forwarded);
        forwarded.push(outbox.sent.pop().unwrap().1);
    }
    outbox.sent.clear();
    let forwarded_bytes: isize = forwarded
        .iter()
        .map(|f| f.capacity() as isize)
        .sum::<isize>()
        + (forwarded.capacity() * std::mem::size_of::<Vec<u8>>()) as isize;
    let calling = (live() - start - forwarded_bytes) / CALLS as isize;
    assert_eq!(proxy.transactions(), (CALLS + 1, CALLS + 1));

    let ringing: Vec<Vec<u8>> = forwarded.iter().map(|f| answer(f, "180 Ringing")).collect();
    let start = live();
    for response in &ringing {
        proxy.handle(2, BACKEND.parse().unwrap(), response, &mut outbox);
        outbox.sent.clear();
    }
    let ringing_delta = (live() - start) / CALLS as isize;

    let answered: Vec<Vec<u8>> = forwarded.iter().map(|f| answer(f, "200 OK")).collect();
    let start = live();
    for response in &answered {
        proxy.handle(3, BACKEND.parse().unwrap(), response, &mut outbox);
        outbox.sent.clear();
    }
    let answered_delta = (live() - start) / CALLS as isize;
    let ringing_total = calling + ringing_delta;
    let accepted_total = ringing_total + answered_delta;

    println!(
        "sizes: Server {} B, Client {} B; fixed per shard for {max} transactions: {:.1} MiB",
        std::mem::size_of::<sipshard::txn::ServerTxn>(),
        std::mem::size_of::<sipshard::txn::ClientTxn>(),
        fixed as f64 / (1 << 20) as f64
    );
    println!(
        "heap per INVITE call in flight: {calling} B after the forward (server + client \
         transaction), {ringing_total} B ringing, {accepted_total} B answered (Accepted, \
         lingering for Timer L/M)"
    );
    // Bounds: a ringing call holds the caller's INVITE, the forwarded
    // INVITE and the last provisional, about 3 kB with this 961-byte INVITE.
    assert!(calling > 0 && calling < 4_096, "{calling}");
    assert!(ringing_total < 6_144, "{ringing_total}");
    assert!(
        accepted_total < ringing_total,
        "an answered call lets go of its bytes"
    );
    // Every transaction ends, and gives back what it held.
    let mut now = 3;
    while let Some(deadline) = proxy.next_deadline() {
        now = now.max(deadline);
        proxy.on_timers(now, &mut outbox);
        outbox.sent.clear();
    }
    assert_eq!(proxy.transactions(), (0, 0));
}
