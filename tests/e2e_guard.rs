//! End to end: access control and flood protection in the real binary, on
//! real loopback sockets. All of 127/8 is loopback, so each role has an
//! address of its own and the gateway tells them apart:
//!
//! | address | role |
//! |---|---|
//! | 127.0.0.1 | the gateway (listen, admin API) and a SIPp caller |
//! | 127.0.0.2 | a flooder (plain UDP) |
//! | 127.0.0.3, .4 | senders the SIP ACL refuses |
//! | 127.0.0.5 | the SIPp backend (a pool member) |
//! | 127.0.0.6 | a sink: a pool member that counts the INVITEs it gets (a route sends .2, .3 and .4 there) |
//! | 127.0.0.9, .10 | admin API clients |
//!
//! Ports 20000-20999 only (the gateway's own shard ports and SIPp's
//! control and media ports included). Needs `sipp`. The runs go one at a
//! time: each starts SIPp and a gateway.

mod support;

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::{http, scenario, screen_count, sipp_screen, tempdir, wait_for_listener, Running};

static SERIAL: Mutex<()> = Mutex::new(());

/// A backend that counts the distinct INVITEs (by Call-ID) it receives and
/// answers nothing.
struct Sink {
    call_ids: Arc<Mutex<HashSet<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    fn start(address: &str) -> Sink {
        let socket = UdpSocket::bind(address).expect("the sink's address is free");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("a timeout");
        let call_ids = Arc::new(Mutex::new(HashSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (call_ids, stop) = (call_ids.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buffer = [0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(len) = socket.recv(&mut buffer) else {
                        continue;
                    };
                    let text = String::from_utf8_lossy(&buffer[..len]);
                    if !text.starts_with("INVITE ") {
                        continue;
                    }
                    if let Some(id) = text.lines().find_map(|l| l.strip_prefix("Call-ID: ")) {
                        call_ids.lock().unwrap().insert(id.trim().to_string());
                    }
                }
            })
        };
        Sink {
            call_ids,
            stop,
            thread: Some(thread),
        }
    }

    fn count_with(&self, prefix: &str) -> usize {
        self.call_ids
            .lock()
            .unwrap()
            .iter()
            .filter(|id| id.starts_with(prefix))
            .count()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A UDP sender on one loopback address (any port).
struct Sender {
    socket: UdpSocket,
    ip: String,
    port: u16,
}

impl Sender {
    fn bind(ip: &str) -> Sender {
        let socket = UdpSocket::bind((ip, 0)).expect("any port on a loopback address");
        let port = socket.local_addr().expect("bound").port();
        Sender {
            socket,
            ip: ip.to_string(),
            port,
        }
    }

    /// An INVITE with the Call-ID `call_id`, sent to `gateway`.
    fn invite(&self, gateway: &str, call_id: &str) {
        let Sender { ip, port, .. } = self;
        let message = format!(
            "INVITE sip:sink@{gateway} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {ip}:{port};branch=z9hG4bK-{call_id}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:guard-test@{ip}>;tag=t-{call_id}\r\n\
             To: <sip:sink@{gateway}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: 1 INVITE\r\n\
             Contact: <sip:guard-test@{ip}:{port}>\r\n\
             Content-Length: 0\r\n\r\n"
        );
        // A full socket buffer would be the test's own loss, not the
        // gateway's: the pacing below keeps it from happening.
        self.socket
            .send_to(message.as_bytes(), gateway)
            .expect("a loopback send");
    }

    /// `count` INVITEs, `rate` per second, in batches every 10 ms.
    fn invites(&self, gateway: &str, prefix: &str, count: usize, rate: usize) -> Duration {
        let started = Instant::now();
        let per_batch = (rate / 100).max(1);
        for i in 0..count {
            if i % per_batch == 0 {
                let due = started + Duration::from_millis((i / per_batch) as u64 * 10);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            self.invite(gateway, &format!("{prefix}-{i}"));
        }
        started.elapsed()
    }
}

/// The gateway on a configuration file; its log goes to `dir/sipshard.log`.
fn start_gateway(dir: &Path, config: &str) -> Running {
    let file = dir.join("sipshard.toml");
    std::fs::write(&file, config).expect("the configuration is written");
    let check = Command::new(env!("CARGO_BIN_EXE_sipshard"))
        .arg("--check-config")
        .arg(&file)
        .output()
        .expect("the sipshard binary");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let log = std::fs::File::create(dir.join("sipshard.log")).expect("a log file");
    Running(
        Command::new(env!("CARGO_BIN_EXE_sipshard"))
            .arg("--config")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log)
            .spawn()
            .expect("the sipshard binary"),
    )
}

fn gateway_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("sipshard.log")).unwrap_or_default()
}

/// A SIPp UAS on `ip:port`, bound to that address so its answers come from
/// it (`-bind_local`); `control_port` and `media_port` keep SIPp's own
/// sockets in our port range.
fn start_backend(dir: &Path, ip: &str, port: u16, control_port: u16, media_port: u16) -> Running {
    Running(
        Command::new("sipp")
            .args(["-sf", scenario("uas.xml").to_str().unwrap()])
            .args(["-i", ip, "-p", &port.to_string(), "-bind_local"])
            .args(["-cp", &control_port.to_string()])
            .args(["-mp", &media_port.to_string(), "-nostdin"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sipp is installed (Debian package sip-tester)"),
    )
}

/// A SIPp caller from 127.0.0.1:`port`: `calls` INVITE/ACK/BYE calls at
/// `rate` per second, started now; [`Caller::finish`] waits for it.
struct Caller(Child);

impl Caller {
    fn start(
        dir: &Path,
        gateway: &str,
        port: u16,
        ports: (u16, u16),
        calls: u32,
        rate: u32,
    ) -> Caller {
        Caller(
            Command::new("sipp")
                .arg(gateway)
                .args(["-sf", scenario("uac.xml").to_str().unwrap()])
                .args(["-i", "127.0.0.1", "-p", &port.to_string(), "-bind_local"])
                .args(["-cp", &ports.0.to_string(), "-mp", &ports.1.to_string()])
                .args(["-m", &calls.to_string(), "-r", &rate.to_string()])
                .args(["-l", "1000", "-timeout", "60", "-timeout_error", "-nostdin"])
                .current_dir(dir)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("sipp runs"),
        )
    }

    /// (successful, failed) calls, and SIPp's screen.
    fn finish(mut self) -> (u32, u32, String) {
        let (screen, _) = sipp_screen(&mut self.0);
        (
            screen_count(&screen, "Successful call"),
            screen_count(&screen, "Failed call"),
            screen,
        )
    }
}

/// The sum of every sample of `family` whose labels include all of
/// `labels` (e.g. `reason="banned"`), over the shards.
fn metric(body: &str, family: &str, labels: &[&str]) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn scrape(admin: &str) -> String {
    let (status, body) = http(admin, "GET", "/metrics", "");
    assert_eq!(status, 200, "{body}");
    body
}

/// An HTTP/1.1 GET from `source` (a loopback address) to `address`:
/// status and body.
fn get_from(source: &str, address: &str, path: &str) -> (u16, String) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a socket");
    let from: SocketAddr = format!("{source}:0").parse().expect("an address");
    socket.bind(&from.into()).expect("a loopback source");
    let to: SocketAddr = address.parse().expect("an address");
    socket.connect(&to.into()).expect("the admin API listens");
    support::http_on(socket.into(), address, "GET", path, "")
}

/// Waits up to `within` for `done`; true if it came.
fn eventually(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    loop {
        if done() {
            return true;
        }
        if started.elapsed() > within {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

const RATE: f64 = 500.0;
const BURST: f64 = 1000.0;
const BAN_S: u64 = 2;

/// (a) 5,000 INVITEs from 127.0.0.2 at 4,000 a second get it banned: the
/// sink behind the gateway sees no more than burst + rate × time of them,
/// the ban is in `/metrics`, logged once, and over after about `ban_s`,
/// when the source gets through again; (b) meanwhile a SIPp caller on
/// 127.0.0.1 completes every call.
#[test]
fn a_flood_is_banned_and_let_in_again_while_calls_go_on() {
    flood_run(true, 20100);
}

/// As above without in-kernel steering: one 4-tuple lands on one socket,
/// that shard screens every datagram and hands half of them over, and the
/// owners meter them: the same bound holds.
#[test]
fn a_flood_is_banned_without_steering_too() {
    flood_run(false, 20400);
}

/// One flood run on ports `base`..`base + 99`: its own, because a
/// gateway's fixed shard ports may stay taken for a moment after it exits
/// (its io_uring holds them until the kernel tears the ring down).
fn flood_run(steering: bool, base: u16) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir(&format!("guard-flood-{steering}"));
    let gateway = format!("127.0.0.1:{}", base + 60);
    let admin = format!("127.0.0.1:{}", base + 90);
    let (gateway, admin) = (gateway.as_str(), admin.as_str());
    let (backend_port, sink_port) = (base + 80, base + 81);
    const CALLS: u32 = 400;
    let sink = Sink::start(&format!("127.0.0.6:{sink_port}"));
    let _backend = start_backend(&dir, "127.0.0.5", backend_port, base + 50, base + 40);
    let config = format!(
        r#"listen = "{gateway}"
shards = 2
admin = "{admin}"
[socket]
shard_port_base = {shard_port_base}
steering = {steering}
[backends]
members = ["sip:127.0.0.5:{backend_port}"]
[[sets]]
name = "sink"
members = [{{ uri = "sip:127.0.0.6:{sink_port}" }}]
[[routes]]
source = ["127.0.0.2/32"]
set = "sink"
[flood]
enabled = true
requests_per_second = {RATE}
burst = {BURST}
ban_s = {BAN_S}
"#,
        shard_port_base = base + 62,
    );
    let _gateway = start_gateway(&dir, &config);
    wait_for_listener(admin);
    std::thread::sleep(Duration::from_millis(300));

    // 400 calls at 40 a second: 120 requests a second, under the rate.
    let caller = Caller::start(&dir, gateway, base + 70, (base + 51, base + 44), CALLS, 40);
    std::thread::sleep(Duration::from_secs(1));

    let flooder = Sender::bind("127.0.0.2");
    let flood_started = Instant::now();
    let took = flooder.invites(gateway, "flood", 5000, 4000);
    // The ban (from about 0.3 s) outlasts the flood (1.25 s): what comes
    // now is dropped too.
    flooder.invites(gateway, "after", 20, 1000);
    std::thread::sleep(Duration::from_millis(300));
    let passed = sink.count_with("flood-");
    let bound = BURST + RATE * took.as_secs_f64();
    assert!(
        (passed as f64) <= bound * 1.02 + 10.0,
        "{passed} flood INVITEs reached the backend in {took:?}; burst + rate x time is {bound}"
    );
    assert!(
        passed as f64 >= BURST / 2.0,
        "only {passed} got through before the ban: the limit bit too early"
    );
    assert_eq!(
        sink.count_with("after-"),
        0,
        "the banned source got through"
    );
    let during = scrape(admin);
    assert!(
        metric(&during, "sipshard_flood_bans_total", &[]) >= 1.0,
        "{during}"
    );
    assert!(
        metric(&during, "sipshard_flood_bans_active", &[]) >= 1.0,
        "{during}"
    );
    let dropped = metric(
        &during,
        "sipshard_guard_dropped_total",
        &["reason=\"banned\""],
    );
    eprintln!(
        "flood (steering {steering}): {passed} passed, {dropped} dropped, sent in {took:?} (bound {bound})"
    );
    assert!(
        dropped as usize + passed >= 5000 + 20 - 50,
        "{dropped} dropped and {passed} passed of 5,020: the rest were lost elsewhere"
    );
    assert!(
        metric(&during, "sipshard_flood_sources", &[]) >= 2.0,
        "the caller and the flooder are tracked"
    );

    // The ban ends between ban_s and ban_s + 1 seconds after it began
    // (and /metrics counts it out at once).
    assert!(
        eventually(Duration::from_secs(BAN_S + 3), || {
            metric(&scrape(admin), "sipshard_flood_bans_active", &[]) == 0.0
        }),
        "the ban never ended"
    );
    let ended = flood_started.elapsed();
    assert!(
        ended >= Duration::from_secs(BAN_S),
        "the ban ended after {ended:?}, before ban_s"
    );
    let again = Sender::bind("127.0.0.2");
    again.invites(gateway, "again", 20, 100);
    assert!(
        eventually(Duration::from_secs(2), || sink.count_with("again-") == 20),
        "after the ban only {} of 20 got through",
        sink.count_with("again-")
    );

    let (successful, failed, screen) = caller.finish();
    assert_eq!((successful, failed), (CALLS, 0), "{screen}");
    assert_eq!(sink.count_with("flood-"), passed, "late flood INVITEs");
    // Logged once per ban, not per datagram; the end too (within a second).
    assert!(
        eventually(Duration::from_secs(2), || gateway_log(&dir)
            .contains("flood: ban ended")),
        "{}",
        gateway_log(&dir)
    );
    let log = gateway_log(&dir);
    let bans_logged = log
        .matches("flood: source over its request rate is banned")
        .count();
    let bans = metric(&scrape(admin), "sipshard_flood_bans_total", &[]) as usize;
    assert_eq!(bans_logged, bans, "{log}");
    assert!((1..=2).contains(&bans), "{bans} bans for one flood: {log}");
}

/// (c) `sip_deny` drops what 127.0.0.3 sends and `sip_allow` what
/// 127.0.0.4 sends, before the core sees it (nothing reaches the sink, the
/// counter moves by exactly as much), while 127.0.0.1 calls through a
/// backend the allow list leaves out (pool members are exempt).
#[test]
fn the_sip_acl_drops_denied_and_unlisted_sources() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir("guard-acl");
    const GATEWAY: &str = "127.0.0.1:20260";
    const ADMIN: &str = "127.0.0.1:20290";
    const CALLS: u32 = 200;
    let sink = Sink::start("127.0.0.6:20281");
    let _backend = start_backend(&dir, "127.0.0.5", 20280, 20250, 20240);
    let config = format!(
        r#"listen = "{GATEWAY}"
shards = 2
admin = "{ADMIN}"
[socket]
shard_port_base = 20262
[backends]
members = ["sip:127.0.0.5:20280"]
[[sets]]
name = "sink"
members = [{{ uri = "sip:127.0.0.6:20281" }}]
[[routes]]
source = ["127.0.0.3/32", "127.0.0.4/32", "127.0.0.1/32"]
user_prefix = "sink"
set = "sink"
[acl]
sip_allow = ["127.0.0.1/32", "127.0.0.3/32"]
sip_deny = ["127.0.0.3/32"]
"#
    );
    let _gateway = start_gateway(&dir, &config);
    wait_for_listener(ADMIN);
    std::thread::sleep(Duration::from_millis(300));
    let before = metric(
        &scrape(ADMIN),
        "sipshard_guard_dropped_total",
        &["reason=\"acl_denied\""],
    );
    assert_eq!(before, 0.0);

    let caller = Caller::start(&dir, GATEWAY, 20270, (20251, 20244), CALLS, 50);
    Sender::bind("127.0.0.3").invites(GATEWAY, "denied", 50, 500);
    Sender::bind("127.0.0.4").invites(GATEWAY, "unlisted", 30, 500);
    // The control: the same INVITEs from an allowed source reach the sink.
    Sender::bind("127.0.0.1").invites(GATEWAY, "allowed", 10, 500);
    let (successful, failed, screen) = caller.finish();
    assert_eq!((successful, failed), (CALLS, 0), "{screen}");
    assert!(
        eventually(Duration::from_secs(2), || sink.count_with("allowed-") == 10),
        "the allowed source's INVITEs did not all reach the sink"
    );
    assert_eq!(
        sink.count_with("denied-"),
        0,
        "sip_deny let 127.0.0.3 through"
    );
    assert_eq!(
        sink.count_with("unlisted-"),
        0,
        "sip_allow let 127.0.0.4 through"
    );
    assert!(
        eventually(Duration::from_secs(1), || {
            metric(
                &scrape(ADMIN),
                "sipshard_guard_dropped_total",
                &["reason=\"acl_denied\""],
            ) == 80.0
        }),
        "acl_denied counted {} of 80",
        metric(
            &scrape(ADMIN),
            "sipshard_guard_dropped_total",
            &["reason=\"acl_denied\""]
        )
    );
    let after = scrape(ADMIN);
    assert_eq!(
        metric(
            &after,
            "sipshard_requests_received_total",
            &["method=\"INVITE\""]
        ),
        f64::from(CALLS + 10),
        "denied datagrams are dropped before they are even classified"
    );
    assert_eq!(
        metric(&after, "sipshard_flood_bans_active", &[]),
        0.0,
        "flood protection is off"
    );
}

/// (d) The admin ACL: a peer outside `admin_allow`, or inside it and in
/// `admin_deny`, gets 403 on every path; an allowed one is served, and its
/// `/metrics` counts the refusals.
#[test]
fn the_admin_acl_answers_403() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir("guard-admin");
    const ADMIN: &str = "127.0.0.1:20390";
    let config = format!(
        r#"listen = "127.0.0.1:20360"
shards = 1
admin = "{ADMIN}"
[socket]
shard_port_base = 20362
[backends]
members = ["sip:127.0.0.5:20380"]
[acl]
admin_allow = ["127.0.0.8/29"]
admin_deny = ["127.0.0.10/32"]
"#
    );
    let _gateway = start_gateway(&dir, &config);
    wait_for_listener(ADMIN);
    let (status, body) = http(ADMIN, "GET", "/metrics", "");
    assert_eq!(status, 403, "127.0.0.1 is outside admin_allow: {body}");
    assert!(body.contains("admin ACL"), "{body}");
    assert_eq!(http(ADMIN, "POST", "/api/v1/reload", "").0, 403);
    assert_eq!(
        get_from("127.0.0.1", ADMIN, "/no-such-page").0,
        403,
        "before routing"
    );
    assert_eq!(
        get_from("127.0.0.10", ADMIN, "/healthz").0,
        403,
        "deny wins"
    );
    assert_eq!(
        get_from("127.0.0.9", ADMIN, "/healthz"),
        (200, "ok\n".to_string())
    );
    assert_eq!(get_from("127.0.0.9", ADMIN, "/no-such-page").0, 404);
    let (status, body) = get_from("127.0.0.9", ADMIN, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        metric(&body, "sipshard_admin_denied_total", &[]),
        4.0,
        "{body}"
    );
    assert_eq!(
        metric(&body, "sipshard_guard_dropped_total", &[]),
        0.0,
        "the SIP side has no ACL"
    );
}
