//! End to end: hostile input against the real binary, from several source
//! addresses (all of 127/8 is loopback), with a backend that records every
//! datagram it gets and answers like a stateless UAS (200 to every request
//! but ACK). In turn: garbage and an oversize datagram, every scanner
//! limit, bad Content-Length, control characters, messages cut short,
//! responses that match no transaction, a flood of 50,000 INVITEs from one
//! address, and then a normal SIPp call flow.
//!
//! After each step the answers the senders got, and the counters of
//! `/metrics`, must be what RFC 3261 and the README say; at the end the
//! gateway still runs, its RSS stayed bounded, the backend got nothing
//! malformed and nothing marked hostile, and SIPp's calls all succeed.
//!
//! Runs with the default configuration (flood protection, when there is
//! one, off) but for: one backend, `max_per_shard` = 1,000 (so that the
//! flood fills the table and memory stays small), `t1_ms` = 100 (Timers H,
//! L and M are 64 × T1: the flood's transactions are gone in about 7 s,
//! not 32) and the shards' own ports, so that every port is in 21000-21999.

mod support;

use std::collections::HashMap;
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sipshard::sip::{Limits, Scanner, UDP_PAYLOAD_MAX};
use support::{
    scenario, scrape, screen_count, sipp_screen, tempdir, value, wait_for_listener, Lcg, Running,
};

const GATEWAY: &str = "127.0.0.1:21060";
const ADMIN: &str = "127.0.0.1:21090";
const BACKEND: &str = "127.0.0.1:21080";
/// The shards' own ports: 21062 and 21063.
const SHARD_PORT_BASE: u16 = 21062;
const CALLER_PORT: &str = "21070";
const SHARDS: u64 = 2;
const MAX_PER_SHARD: u64 = 1_000;
const FLOOD: usize = 50_000;
const CALLS: u64 = 300;
/// Every hostile request carries this (in its Request-URI and Call-ID);
/// the backend must never see it.
const MARK: &str = "hostile";

type Sums = HashMap<String, f64>;

/// A stateless UAS that keeps every datagram it receives.
struct Backend {
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Its socket, to send from the backend's address.
    socket: UdpSocket,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    fn start() -> Backend {
        let socket = UdpSocket::bind(BACKEND).expect("the backend's port is free");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("a timeout");
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (socket, received, stop) = (
                socket.try_clone().expect("a second handle"),
                received.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    let datagram = buf[..n].to_vec();
                    if let Some(answer) = uas_answer(&datagram) {
                        let _ = socket.send_to(&answer, from);
                    }
                    received.lock().expect("not poisoned").push(datagram);
                }
            })
        };
        Backend {
            received,
            socket,
            stop,
            thread: Some(thread),
        }
    }

    fn count(&self) -> usize {
        self.received.lock().expect("not poisoned").len()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// 200 to any request but ACK, copying Via, From, To (with a tag),
/// Call-ID, CSeq and Record-Route, as RFC 3261 §8.2.6.2 asks.
fn uas_answer(request: &[u8]) -> Option<Vec<u8>> {
    let text = String::from_utf8_lossy(request);
    if text.starts_with("SIP/2.0 ") || text.starts_with("ACK ") {
        return None;
    }
    let head = text.split("\r\n\r\n").next()?;
    let mut out = String::from("SIP/2.0 200 OK\r\n");
    for line in head.split("\r\n").skip(1) {
        let name = line
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match name.as_str() {
            "via" | "v" | "from" | "f" | "call-id" | "i" | "cseq" | "record-route" => {
                out.push_str(line);
            }
            "to" | "t" if !line.contains(";tag=") => {
                out.push_str(line);
                out.push_str(";tag=uas");
            }
            "to" | "t" => out.push_str(line),
            _ => continue,
        }
        out.push_str("\r\n");
    }
    out.push_str(&format!(
        "Contact: <sip:uas@{BACKEND}>\r\nContent-Length: 0\r\n\r\n"
    ));
    Some(out.into_bytes())
}

/// A client socket on its own loopback address and a port of ours.
fn client(address: &str) -> UdpSocket {
    let socket = UdpSocket::bind(address).expect("a loopback address of 127/8");
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .expect("a timeout");
    socket
}

/// What arrives: at least `expected` datagrams (waiting up to 10 s, for a
/// loaded machine), then anything more until nothing has for `quiet`.
fn collect(socket: &UdpSocket, expected: usize, quiet: Duration) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65_536];
    let started = Instant::now();
    let mut last = Instant::now();
    while out.len() < expected && started.elapsed() < Duration::from_secs(10)
        || last.elapsed() < quiet
    {
        if let Ok(n) = socket.recv(&mut buf) {
            out.push(buf[..n].to_vec());
            last = Instant::now();
        }
    }
    out
}

/// The status code and reason phrase of a response.
fn status(response: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(response);
    let line = text.lines().next().unwrap_or_default();
    let mut parts = line.splitn(3, ' ');
    let _version = parts.next();
    let code = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, parts.next().unwrap_or_default().to_string())
}

/// The branch of a message's first Via.
fn branch(message: &[u8]) -> String {
    let text = String::from_utf8_lossy(message);
    text.split("branch=")
        .nth(1)
        .unwrap_or_default()
        .split([';', '\r', ',', ' '])
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A request from `from` with a branch and Call-ID made of `tag`, marked
/// hostile; `extra` header lines go before Content-Length.
fn hostile(method: &str, from: &str, tag: &str, extra: &str, body: &str) -> String {
    format!(
        "{method} sip:{MARK}-{tag}@{GATEWAY} SIP/2.0\r\n\
Via: SIP/2.0/UDP {from};branch=z9hG4bK-{tag};rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:{MARK}@{GATEWAY}>\r\n\
From: <sip:h@{from}>;tag=f-{tag}\r\n\
Call-ID: {MARK}-{tag}\r\n\
CSeq: 1 {method}\r\n\
Contact: <sip:h@{from}>\r\n\
{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The gateway's resident set, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the gateway runs");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}

/// Datagrams the kernel dropped at the gateway's listen sockets (their
/// receive buffers were full): the `drops` column of /proc/net/udp.
fn listen_drops() -> u64 {
    let port = GATEWAY
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok());
    let local = format!("0100007F:{:04X}", port.expect("a port"));
    let table = std::fs::read_to_string("/proc/net/udp").expect("/proc/net/udp");
    table
        .lines()
        .skip(1)
        .filter(|l| l.split_whitespace().nth(1) == Some(local.as_str()))
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

/// Packets the kernel dropped before any socket (a full per-CPU backlog):
/// column 2 of /proc/net/softnet_stat, summed over the CPUs.
fn backlog_drops() -> u64 {
    let table = std::fs::read_to_string("/proc/net/softnet_stat").unwrap_or_default();
    table
        .lines()
        .filter_map(|l| u64::from_str_radix(l.split_whitespace().nth(1)?, 16).ok())
        .sum()
}

/// `/metrics` once `until` holds (the gateway got what was sent; up to
/// 15 s, for a loaded machine) and the shards are idle: scraped until two
/// scrapes 300 ms apart agree on every counter (an idle shard publishes
/// every 250 ms).
fn settled(until: impl Fn(&Sums) -> bool) -> Sums {
    let started = Instant::now();
    let mut last = scrape(ADMIN);
    while !until(&last) {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the gateway did not take what was sent ({} datagrams dropped by the \
             kernel at its sockets so far: a machine too loaded?): {last:?}",
            listen_drops()
        );
        std::thread::sleep(Duration::from_millis(100));
        last = scrape(ADMIN);
    }
    let stable = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = scrape(ADMIN);
        // Loop turns and busy time move while idle.
        let moving = ["loop_iterations", "timer_iterations", "busy_seconds"];
        let same = now
            .iter()
            .filter(|(k, _)| k.ends_with("_total") || k.contains("_total{"))
            .filter(|(k, _)| !moving.iter().any(|m| k.contains(m)))
            .all(|(k, v)| last.get(k) == Some(v));
        if same || stable.elapsed() > Duration::from_secs(5) {
            return now;
        }
        last = now;
    }
}

const RECEIVED: &str = "sipshard_datagrams_received_total";

/// The gateway has received `n` more datagrams than at `before`.
fn received(before: &Sums, n: u64) -> impl Fn(&Sums) -> bool {
    let floor = value(before, RECEIVED) + n;
    move |now| value(now, RECEIVED) >= floor
}

/// How much a counter moved between two scrapes.
fn delta(before: &Sums, after: &Sums, key: &str) -> u64 {
    value(after, key) - value(before, key)
}

fn limit(name: &str) -> String {
    format!("sipshard_limit_exceeded_total{{limit={name}}}")
}

fn dropped(reason: &str) -> String {
    format!("sipshard_dropped_total{{reason={reason}}}")
}

/// The answers to the request whose branch is `z9hG4bK-{tag}`.
fn answers_to<'a>(
    answers: &'a HashMap<String, Vec<(u16, String)>>,
    tag: &str,
) -> &'a [(u16, String)] {
    answers
        .get(&format!("z9hG4bK-{tag}"))
        .unwrap_or_else(|| panic!("no answer to {tag}: {answers:?}"))
}

/// Answers by the branch of the request they answer, as (code, reason).
fn by_branch(answers: &[Vec<u8>]) -> HashMap<String, Vec<(u16, String)>> {
    let mut map: HashMap<String, Vec<(u16, String)>> = HashMap::new();
    for answer in answers {
        map.entry(branch(answer)).or_default().push(status(answer));
    }
    map
}

#[test]
fn hostile_input_is_answered_counted_and_kept_from_the_backend() {
    let dir = tempdir("hostile");
    let config = dir.join("hostile.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{GATEWAY}\"\nshards = {SHARDS}\nadmin = \"{ADMIN}\"\n\
             [socket]\nshard_port_base = {SHARD_PORT_BASE}\n\
             [backends]\nalgorithm = \"round-robin\"\nmembers = [\"sip:{BACKEND}\"]\n\
             [transactions]\nt1_ms = 100\nmax_per_shard = {MAX_PER_SHARD}\n"
        ),
    )
    .expect("the config is written");
    let backend = Backend::start();
    let mut gateway = Running(
        Command::new(env!("CARGO_BIN_EXE_sipshard"))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the sipshard binary"),
    );
    let pid = gateway.0.id();
    wait_for_listener(ADMIN);
    let mut before = settled(|_| true);
    let rss_start = rss_kib(pid);
    let mut rss_max = rss_start;
    let check_rss = |max: &mut u64| {
        let rss = rss_kib(pid);
        *max = (*max).max(rss);
        rss
    };

    // ---- garbage, and datagrams as large as UDP carries ----
    let garbage = client("127.0.0.2:21102");
    let mut rng = Lcg(0x5eed);
    let mut datagrams: Vec<Vec<u8>> = (0..200)
        .map(|_| {
            let len = 1 + rng.next() as usize % 1500;
            rng.bytes(len)
        })
        .collect();
    datagrams.push(Vec::new());
    datagrams.push(b"\r\n".to_vec());
    datagrams.push(b"\r\n\r\n".to_vec());
    datagrams.push((0..=255u8).cycle().take(1024).collect());
    datagrams.push(rng.bytes(UDP_PAYLOAD_MAX));
    let garbage_count = datagrams.len() as u64;
    for datagram in &datagrams {
        garbage.send_to(datagram, GATEWAY).expect("sent");
        std::thread::sleep(Duration::from_millis(1));
    }
    // A well-formed INVITE of 65,507 bytes: UDP carries it to us, but not
    // on once our Via and Record-Route are added. 100, then 513.
    let head = hostile("INVITE", "127.0.0.2:21102", "big", "", "").len();
    let body = "v".repeat(UDP_PAYLOAD_MAX - head - 4);
    let big = hostile("INVITE", "127.0.0.2:21102", "big", "", &body);
    assert_eq!(big.len(), UDP_PAYLOAD_MAX);
    garbage.send_to(big.as_bytes(), GATEWAY).expect("sent");
    let answers = collect(&garbage, 2, Duration::from_millis(400));
    let codes: Vec<u16> = answers.iter().map(|a| status(a).0).collect();
    assert_eq!(codes.first(), Some(&100), "{codes:?}");
    assert!(codes[1..].iter().all(|&c| c == 513), "{codes:?}");
    assert!(codes.len() >= 2, "513 Message Too Large: {codes:?}");
    assert!(
        answers.iter().all(|a| branch(a) == "z9hG4bK-big"),
        "no garbage was answered"
    );
    // Its ACK goes to the transaction, not to the backend.
    let to = String::from_utf8_lossy(&answers[1])
        .lines()
        .find_map(|l| l.strip_prefix("To: ").map(str::to_string))
        .expect("a To header");
    let ack = hostile("ACK", "127.0.0.2:21102", "big", "", "")
        .replace(&format!("To: <sip:{MARK}@{GATEWAY}>"), &format!("To: {to}"));
    garbage.send_to(ack.as_bytes(), GATEWAY).expect("sent");
    let after = settled(received(&before, garbage_count + 2));
    let d = |key: &str| delta(&before, &after, key);
    assert_eq!(d("sipshard_datagrams_received_total"), garbage_count + 2);
    assert_eq!(
        d(&dropped("malformed")) + d(&dropped("unanswerable")),
        garbage_count,
        "every garbage datagram is dropped and counted"
    );
    assert_eq!(d(&limit("udp_payload")), 1);
    assert_eq!(d("sipshard_transactions_started_total"), 1);
    assert_eq!(d("sipshard_requests_sent_total{method=INVITE}"), 0);
    assert_eq!(d("sipshard_retransmissions_absorbed_total"), 0);
    eprintln!(
        "garbage: {garbage_count} datagrams, RSS {} KiB",
        check_rss(&mut rss_max)
    );
    before = after;

    // ---- every scanner limit: 400 with the reason, and its counter ----
    let limits = client("127.0.0.3:21103");
    let from = "127.0.0.3:21103";
    let headers: String = (0..1000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let line = format!("X-Long: {}\r\n", "a".repeat(60_000));
    let one_via = format!("Via: {}\r\n", vec!["SIP/2.0/UDP h"; 500].join(","));
    let vias = |n| -> String {
        (0..n)
            .map(|i| format!("Via: SIP/2.0/UDP h{i}\r\n"))
            .collect()
    };
    let cases = [
        ("headers", headers, 400, "Too Many Headers", "headers"),
        ("line", line, 400, "Header Too Long", "header_line_bytes"),
        ("onevia", one_via, 400, "Too Many Via", "via_values"),
        ("vias500", vias(500), 400, "Too Many Headers", "headers"),
        ("vias100", vias(100), 400, "Too Many Via", "via_values"),
    ];
    for (tag, extra, ..) in &cases {
        let text = hostile("INVITE", from, tag, extra, "");
        limits.send_to(text.as_bytes(), GATEWAY).expect("sent");
        std::thread::sleep(Duration::from_millis(2));
    }
    let answers = by_branch(&collect(&limits, cases.len(), Duration::from_millis(300)));
    for (tag, _, code, reason, _) in &cases {
        let got = answers_to(&answers, tag);
        assert_eq!(got.len(), 1, "{tag}: {got:?}");
        assert_eq!(got[0].0, *code, "{tag}: {got:?}");
        assert!(got[0].1.ends_with(reason), "{tag}: {got:?}");
    }
    let after = settled(received(&before, cases.len() as u64));
    let d = |key: &str| delta(&before, &after, key);
    for name in ["headers", "header_line_bytes", "via_values"] {
        let expected = cases.iter().filter(|c| c.4 == name).count() as u64;
        assert_eq!(d(&limit(name)), expected, "{name}");
    }
    assert_eq!(d("sipshard_local_replies_total"), cases.len() as u64);
    assert_eq!(d("sipshard_transactions_started_total"), 0);
    before = after;

    // ---- Content-Length: past the body, negative, past 64 bits ----
    let lengths = client("127.0.0.4:21104");
    let from = "127.0.0.4:21104";
    let body = "v=0\r\n";
    let cases = [
        (
            "cllong",
            "Content-Length: 5",
            "Content-Length: 500",
            "Content-Length Exceeds Message",
        ),
        (
            "clneg",
            "Content-Length: 5",
            "Content-Length: -5",
            "Malformed Content-Length",
        ),
        (
            "clhuge",
            "Content-Length: 5",
            "Content-Length: 99999999999999999999999",
            "Malformed Content-Length",
        ),
    ];
    for (tag, good, bad, _) in &cases {
        let text = hostile("INVITE", from, tag, "", body).replace(good, bad);
        assert_ne!(text, hostile("INVITE", from, tag, "", body));
        lengths.send_to(text.as_bytes(), GATEWAY).expect("sent");
    }
    let answers = by_branch(&collect(&lengths, cases.len(), Duration::from_millis(300)));
    for (tag, _, _, reason) in &cases {
        let got = answers_to(&answers, tag);
        assert_eq!(got.len(), 1, "{tag}: {got:?}");
        assert_eq!(got[0].0, 400, "{tag}: {got:?}");
        assert!(got[0].1.ends_with(reason), "{tag}: {got:?}");
    }

    // ---- control characters: a NUL in a header and in the start line,
    // a lone CR that would start a header of its own behind us ----
    let controls = client("127.0.0.5:21105");
    let from = "127.0.0.5:21105";
    let cases = [
        hostile("INVITE", from, "nulhdr", "X-Note: a\0b\r\n", ""),
        hostile("INVITE", from, "nulstart", "", "").replacen("@127", "\0@127", 1),
        hostile(
            "INVITE",
            from,
            "lonecr",
            "X-Note: a\rVia: SIP/2.0/UDP 203.0.113.66;branch=z9hG4bKsmuggled\r\n",
            "",
        ),
    ];
    for text in &cases {
        controls.send_to(text.as_bytes(), GATEWAY).expect("sent");
    }
    // A malformed response: dropped, never answered.
    let response = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.5:21105;branch=z9hG4bK-nulresp\r\n\
                    From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\0y\r\nCSeq: 1 INVITE\r\n\r\n";
    controls
        .send_to(response.as_bytes(), GATEWAY)
        .expect("sent");
    let answers = by_branch(&collect(&controls, cases.len(), Duration::from_millis(300)));
    for tag in ["nulhdr", "nulstart", "lonecr"] {
        let got = answers_to(&answers, tag);
        assert_eq!(
            got,
            &[(400, "Bad Request - Control Character".into())],
            "{tag}"
        );
    }
    assert!(!answers.contains_key("z9hG4bK-nulresp"), "{answers:?}");
    assert_eq!(answers.len(), 3, "{answers:?}");
    let after = settled(received(&before, 7));
    let d = |key: &str| delta(&before, &after, key);
    assert_eq!(d("sipshard_local_replies_total"), 6);
    assert_eq!(d("sipshard_responses_sent_total{class=4xx}"), 6);
    assert_eq!(d(&dropped("malformed")), 1, "the malformed response");
    before = after;

    // ---- messages cut short at random points: 400 when the Via line
    // arrived whole (so there is someone to answer), silence before ----
    let cuts = client("127.0.0.6:21106");
    let from = "127.0.0.6:21106";
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.6\r\ns=-\r\nc=IN IP4 127.0.0.6\r\nt=0 0\r\n";
    let mut answered_expected = 0u64;
    let mut cut_count = 0u64;
    for i in 0..60 {
        let full = hostile(
            "INVITE",
            from,
            &format!("cut{i}"),
            "Content-Type: application/sdp\r\n",
            sdp,
        );
        let via_end = full
            .find("\r\n")
            .and_then(|s| full[s + 2..].find('\n').map(|n| s + 2 + n));
        let via_end = via_end.expect("a Via line");
        let cut = 1 + rng.next() as usize % (full.len() - 1);
        answered_expected += u64::from(cut > via_end);
        cut_count += 1;
        cuts.send_to(&full.as_bytes()[..cut], GATEWAY)
            .expect("sent");
        std::thread::sleep(Duration::from_millis(1));
    }
    let answers = collect(
        &cuts,
        answered_expected as usize,
        Duration::from_millis(300),
    );
    assert!(answered_expected > 0 && answered_expected < cut_count);
    assert_eq!(answers.len() as u64, answered_expected);
    assert!(answers.iter().all(|a| status(a).0 == 400), "{answers:?}");
    let after = settled(received(&before, cut_count));
    let d = |key: &str| delta(&before, &after, key);
    assert_eq!(d("sipshard_local_replies_total"), answered_expected);
    assert_eq!(
        d(&dropped("malformed")) + d(&dropped("unanswerable")),
        cut_count - answered_expected
    );
    assert_eq!(d("sipshard_transactions_started_total"), 0);
    eprintln!("cut short: {cut_count} messages, {answered_expected} answered 400");
    before = after;

    // ---- responses that match no transaction, from the backend's
    // address and from a stranger: with our Via and one below it, on
    // statelessly along the Via (RFC 3261 §16.7); ours alone, or not
    // ours on top: dropped ----
    let stranger = client("127.0.0.7:21107");
    let victim = client("127.0.0.8:21108");
    let response = |top: &str, below: &str, tag: &str| {
        format!(
            "SIP/2.0 200 OK\r\n{top}{below}From: <sip:a@127.0.0.8>;tag=1\r\n\
             To: <sip:b@127.0.0.8>;tag=2\r\nCall-ID: {MARK}-{tag}\r\nCSeq: 1 INVITE\r\n\
             Content-Length: 0\r\n\r\n"
        )
    };
    let ours =
        format!("Via: SIP/2.0/UDP {GATEWAY};branch=z9hG4bK0123456789abcdef.0123456789abcdef\r\n");
    let below = "Via: SIP/2.0/UDP 127.0.0.8:21108;branch=z9hG4bK-victim\r\n";
    let not_ours = "Via: SIP/2.0/UDP 198.51.100.9:5060;branch=z9hG4bK-elsewhere\r\n";
    for (tag, sender) in [
        ("frombackend", &backend.socket),
        ("fromstranger", &stranger),
    ] {
        for text in [
            response(&ours, below, tag),
            response(&ours, "", tag),
            response(not_ours, below, tag),
        ] {
            sender.send_to(text.as_bytes(), GATEWAY).expect("sent");
        }
    }
    let at_victim = collect(&victim, 2, Duration::from_millis(300));
    assert_eq!(at_victim.len(), 2, "the two with a Via below ours");
    assert!(at_victim.iter().all(|r| branch(r) == "z9hG4bK-victim"));
    assert!(collect(&stranger, 0, Duration::from_millis(100)).is_empty());
    let after = settled(received(&before, 6));
    let d = |key: &str| delta(&before, &after, key);
    assert_eq!(d(&dropped("response_for_us")), 2);
    assert_eq!(d(&dropped("response_not_ours")), 2);
    assert_eq!(d("sipshard_responses_forwarded_total"), 2);
    eprintln!(
        "malformed and stray input: RSS {} KiB",
        check_rss(&mut rss_max)
    );
    before = after;

    // ---- a flood: 50,000 INVITEs as fast as one socket sends them ----
    let flood = client("127.0.0.9:21109");
    let responses = Arc::new([(); 7].map(|_| AtomicU64::new(0)));
    let reading = Arc::new(AtomicBool::new(true));
    let reader = {
        let (socket, responses, reading) = (
            flood.try_clone().expect("a second handle"),
            responses.clone(),
            reading.clone(),
        );
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while reading.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    let class = usize::from(status(&buf[..n]).0 / 100);
                    responses[class.min(6)].fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let (listen_before, backlog_before) = (listen_drops(), backlog_drops());
    let flood_start = Instant::now();
    let mut text = String::with_capacity(1024);
    for i in 0..FLOOD {
        use std::fmt::Write as _;
        text.clear();
        let _ = write!(
            text,
            "INVITE sip:flood{i}@{GATEWAY} SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.9:21109;branch=z9hG4bK-flood-{i};rport\r\n\
Max-Forwards: 70\r\nTo: <sip:flood{i}@{GATEWAY}>\r\n\
From: <sip:flooder@127.0.0.9:21109>;tag=fl{i}\r\nCall-ID: flood-{i}@127.0.0.9\r\n\
CSeq: 1 INVITE\r\nContact: <sip:flooder@127.0.0.9:21109>\r\nContent-Length: 0\r\n\r\n"
        );
        flood.send_to(text.as_bytes(), GATEWAY).expect("sent");
    }
    let flood_took = flood_start.elapsed();
    let invites = value(&before, "sipshard_requests_received_total{method=INVITE}");
    let after = settled(|now| {
        let taken = value(now, "sipshard_requests_received_total{method=INVITE}") - invites;
        let dropped = listen_drops() - listen_before + backlog_drops() - backlog_before;
        taken + dropped >= FLOOD as u64
    });
    let flood_rss = check_rss(&mut rss_max);
    let d = |key: &str| delta(&before, &after, key);
    let received = d("sipshard_requests_received_total{method=INVITE}");
    let kernel = listen_drops() - listen_before;
    let backlog = backlog_drops() - backlog_before;
    let started = d("sipshard_transactions_started_total");
    let rejected = d(&limit("transactions"));
    let handoff = d(&dropped("handoff_queue_full"));
    // Overload control may shed some (503 or dropped) once the flood
    // fills the shard's queues.
    let shed = d("sipshard_shed_total{action=503}") + d("sipshard_shed_total{action=dropped}");
    // And, past its 503 budget, have the steering program shed some in
    // the kernel, into the sink socket, whose drops count with the
    // listen sockets'.
    let kernel_shed = d("sipshard_shed_total{action=kernel}");
    eprintln!(
        "flood: {FLOOD} INVITEs sent in {flood_took:?}; gateway received {received}, \
         kernel dropped {kernel} at its sockets and {backlog} before them; \
         {started} transactions, {rejected} answered 503 (table full), {shed} shed, \
         {kernel_shed} shed in the kernel; RSS {flood_rss} KiB"
    );
    assert!(kernel_shed <= kernel, "{kernel_shed} > {kernel}");
    // Every INVITE sent was received or dropped by the kernel, and every
    // one received started a transaction, got 503, or was shed.
    assert!(received + kernel <= FLOOD as u64);
    assert!(FLOOD as u64 <= received + kernel + backlog);
    assert_eq!(received, started + rejected + handoff + shed);
    assert_eq!(rejected, d("sipshard_overload_rejected_total"));
    assert!(started <= SHARDS * MAX_PER_SHARD, "{started}");
    if received > SHARDS * MAX_PER_SHARD {
        assert!(rejected > 0, "the table filled: 503 for the rest");
    }
    assert!(d("sipshard_requests_sent_total{method=INVITE}") >= started);
    // The transactions end (Timer L, 64 × T1 = 6.4 s), so that calls can
    // start again; the table never held more than its bound.
    let drained = Instant::now();
    loop {
        let now = scrape(ADMIN);
        let active = value(&now, "sipshard_transactions_active{kind=server}");
        assert!(active <= SHARDS * MAX_PER_SHARD, "{active}");
        check_rss(&mut rss_max);
        if active == 0 {
            break;
        }
        assert!(
            drained.elapsed() < Duration::from_secs(20),
            "{active} server transactions left"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    reading.store(false, Ordering::Relaxed);
    reader.join().expect("the flood reader");
    let by_class: Vec<u64> = responses
        .iter()
        .map(|n| n.load(Ordering::Relaxed))
        .collect();
    eprintln!(
        "flood: the flooder got {} 100s, {} 2xx, {} 5xx; drained in {:?}",
        by_class[1],
        by_class[2],
        by_class[5],
        drained.elapsed()
    );
    if rejected > 0 {
        assert!(by_class[5] > 0, "some 503 reached the flooder");
    }
    before = settled(|_| true);

    // ---- and a normal call flow still works ----
    let (ip, _) = GATEWAY.split_once(':').expect("an address");
    let mut caller = Command::new("sipp")
        .arg(GATEWAY)
        .args(["-sf", scenario("uac.xml").to_str().expect("a path")])
        .args(["-i", ip, "-p", CALLER_PORT, "-mp", "21400", "-cp", "21401"])
        .args(["-m", &CALLS.to_string(), "-r", "300", "-l", "1000"])
        .args(["-timeout", "30", "-nostdin"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sipp is installed (Debian package sip-tester)");
    let (screen, ok) = sipp_screen(&mut caller);
    assert!(ok, "{screen}");
    assert_eq!(
        screen_count::<u64>(&screen, "Successful call"),
        CALLS,
        "{screen}"
    );
    assert_eq!(screen_count::<u64>(&screen, "Failed call"), 0, "{screen}");
    let byes = value(&before, "sipshard_requests_sent_total{method=BYE}");
    let after =
        settled(|now| value(now, "sipshard_requests_sent_total{method=BYE}") >= byes + CALLS);
    let d = |key: &str| delta(&before, &after, key);
    for method in ["INVITE", "ACK", "BYE"] {
        let key = format!("sipshard_requests_sent_total{{method={method}}}");
        assert_eq!(d(&key), CALLS, "{method} forwarded");
    }

    // ---- afterwards ----
    assert!(
        gateway.0.try_wait().expect("a status").is_none(),
        "the gateway is still running"
    );
    let rss_end = check_rss(&mut rss_max);
    eprintln!("RSS: {rss_start} KiB at start, {rss_max} KiB at most, {rss_end} KiB at the end");
    // Bound: the tables are written at start-up. What may grow is the
    // receive and send buffers the kernel and the shards touch for the
    // first time (per shard 64 × 64 KiB io_uring buffers or 32 × 64 KiB
    // recvmmsg slots, and a 2 MiB send batch: about 6 MiB a shard), the
    // requests held by up to 2,000 transactions at once (about 2.4 kB
    // each: 5 MiB) and the allocator's slack: 32 MiB in all.
    assert!(
        rss_max < rss_start + 32 * 1024,
        "RSS grew from {rss_start} KiB to {rss_max} KiB"
    );
    // The backend got only well-formed requests (and none marked
    // hostile): what the scanner accepts, no NUL anywhere.
    let received = backend.received.lock().expect("not poisoned").clone();
    assert!(received.len() as u64 >= 3 * CALLS, "{}", received.len());
    let mut scanner = Scanner::new(Limits::default());
    for datagram in &received {
        let text = String::from_utf8_lossy(datagram);
        let scanned = scanner.scan(datagram);
        assert!(
            scanned.as_ref().is_ok_and(|m| m.is_request()),
            "{scanned:?}: {text:?}"
        );
        assert!(!text.contains(MARK), "{text:?}");
        assert!(!datagram.contains(&0), "{text:?}");
        assert!(!text.contains("smuggled"), "{text:?}");
    }
    eprintln!("backend: {} datagrams, all well-formed", backend.count());
}
