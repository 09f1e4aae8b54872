//! End to end over TLS: the real `sipshard` binary with a `tls:` listener
//! and TLS backends, between real SIPp processes on 127.0.0.1. Debian's
//! SIPp has no TLS, so stunnel speaks it for SIPp: a caller's SIPp talks
//! TCP (`-t t1`, one connection) to a stunnel client, which connects to
//! the gateway over TLS; a TLS backend is a stunnel server in front of a
//! SIPp over TCP, whose scenario (`uas-tls.xml`) puts the stunnel's port
//! in its Contact so that the ACK and BYE come back through it. The
//! certificates are made here with rcgen: a CA, two server certificates
//! for IP 127.0.0.1 (the gateway's, also the backends' stunnels'; a second
//! for the reload) and a client certificate.
//!
//! Tested, on both I/O loops where cheap: TLS callers to TCP backends
//! (certificate from `--tls-cert`/`--tls-key`), UDP callers to TLS
//! backends and TLS callers to TLS backends (from the `[tls]` table, the
//! only place for `backend_ca`), TLS callers to UDP backends; every call succeeds and handshakes are
//! counted. Mutual TLS (`client_ca`): a caller presenting the client
//! certificate gets its calls through, one presenting none gets nothing
//! through and its handshake counts as failed. SIGHUP while a caller's one
//! TLS connection carries calls: new connections are served the new
//! certificate, the established one carries on and no call fails. A
//! connection that never begins its handshake is closed at the deadline
//! (`[streams] handshake_timeout_ms`). And `--check-config` (or a start)
//! refuses a `tls:` listener without a certificate, an unreadable or
//! non-PEM certificate, and a key that is not the certificate's, naming
//! the fix.
//!
//! The callers run the bundled `uac.xml`, whose Via says TCP (what SIPp
//! speaks) though the gateway gets it over TLS: the gateway answers over
//! the connection a request came on, whatever its Via says.
//!
//! Needs `sipp` (Debian `sip-tester`) and `stunnel` (Debian `stunnel4`),
//! which `.ci/run` installs. The runs go one at a time (a lock); each has
//! its own hundred of ports in 27000-27999.

mod support;

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::tls::{served_leaf, stunnel, Identity, Pki, Side};
use support::{scenario, scrape, screen_count, sipp_screen, tempdir, value, Running};

static SERIAL: Mutex<()> = Mutex::new(());

const CALLS: u32 = 400;
const RATE: u32 = 100;
const HANDSHAKES_OK: &str = "sipshard_tls_handshakes_total{result=ok}";
const HANDSHAKES_FAILED: &str = "sipshard_tls_handshakes_total{result=failed}";
const ACCEPTED: &str = "sipshard_connections_opened_total{how=accepted}";
const INVITES: &str = "sipshard_requests_received_total{method=INVITE}";

/// One test's ports: its own hundred from `base`.
#[derive(Clone, Copy)]
struct Ports {
    base: u16,
}

impl Ports {
    /// The gateway's UDP and TCP listeners.
    fn gateway(self) -> String {
        local(self.base + 60)
    }

    fn gateway_tls(self) -> String {
        local(self.gateway_tls_port())
    }

    fn gateway_tls_port(self) -> u16 {
        self.base + 61
    }

    fn admin(self) -> String {
        local(self.base + 90)
    }

    /// Caller `i`'s stunnel client (TLS callers only).
    fn caller_front(self, i: u16) -> u16 {
        self.base + 65 + i
    }

    /// Caller `i`'s SIPp.
    fn caller(self, i: u16) -> u16 {
        self.base + 70 + i
    }

    /// Backend `i` as the gateway reaches it: SIPp, or its stunnel.
    fn backend(self, i: u16) -> u16 {
        self.base + 80 + i
    }

    /// The SIPp behind backend `i`'s stunnel.
    fn backend_sipp(self, i: u16) -> u16 {
        self.base + 84 + i
    }

    /// SIPp number `n`'s control port (UDP) and media ports (4 from it).
    fn sipp_aux(self, n: u16) -> (u16, u16) {
        (self.base + 10 + n, self.base + 20 + 4 * n)
    }
}

fn local(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// How callers or backends speak to the gateway.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Transport {
    Udp,
    Tcp,
    /// TCP to a stunnel, which speaks TLS.
    Tls,
}

fn sipp(dir: &Path, aux: (u16, u16)) -> Command {
    let mut command = Command::new("sipp");
    command
        .args(["-cp", &aux.0.to_string(), "-mp", &aux.1.to_string()])
        .args(["-nostdin", "-max_socket", "2000"])
        .current_dir(dir)
        .stdin(Stdio::null());
    command
}

/// Backend `i`: SIPp on its port (UDP or TCP), or behind a stunnel server there
/// (TLS) with its Contact naming the stunnel.
fn start_backend(dir: &Path, ports: Ports, i: u16, mode: Transport, pki: &Pki) -> Vec<Running> {
    let port = ports.backend(i);
    let (sipp_port, file) = match mode {
        Transport::Tls => (ports.backend_sipp(i), "uas-tls.xml"),
        _ => (port, "uas.xml"),
    };
    let child = sipp(dir, ports.sipp_aux(4 + i))
        .args(["-sf", scenario(file).to_str().unwrap()])
        .args(["-i", "127.0.0.1", "-p", &sipp_port.to_string()])
        .args(["-t", if mode == Transport::Udp { "u1" } else { "t1" }])
        // What uas-tls.xml puts in its Contact; uas.xml ignores it.
        .args(["-key", "tls_port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sipp is installed (Debian package sip-tester)");
    let mut running = vec![Running(child)];
    if mode == Transport::Tls {
        let side = Side::Server {
            identity: &pki.server,
        };
        let name = format!("backend-{i}");
        running.push(stunnel(dir, &name, port, sipp_port, side));
    }
    running
}

fn backend_uris(ports: Ports, mode: Transport, count: u16) -> Vec<String> {
    (0..count)
        .map(|i| match (mode, i) {
            (Transport::Udp, _) => format!("sip:{}", local(ports.backend(i))),
            (Transport::Tcp, _) => format!("sip:{};transport=tcp", local(ports.backend(i))),
            // One of each spelling of a TLS backend.
            (Transport::Tls, 0) => format!("sip:{};transport=tls", local(ports.backend(i))),
            (Transport::Tls, _) => format!("sips:{}", local(ports.backend(i))),
        })
        .collect()
}

/// The gateway's three listeners, for `--listen` and `listen =`.
fn listeners(ports: Ports) -> [String; 3] {
    [
        ports.gateway(),
        format!("tcp:{}", ports.gateway()),
        format!("tls:{}", ports.gateway_tls()),
    ]
}

/// The gateway's flags for `backends`, its certificate from flags.
fn flags(ports: Ports, identity: &Identity, backends: &[String]) -> Vec<String> {
    let mut args: Vec<String> = listeners(ports)
        .into_iter()
        .flat_map(|l| ["--listen".to_string(), l])
        .collect();
    for backend in backends {
        args.extend(["--backend".to_string(), backend.clone()]);
    }
    let paths = [
        ("--tls-cert", &identity.chain),
        ("--tls-key", &identity.key),
    ];
    for (flag, path) in paths {
        args.extend([flag.to_string(), path.display().to_string()]);
    }
    args.extend(["--shards".to_string(), "2".to_string()]);
    args.extend(["--admin".to_string(), ports.admin()]);
    args
}

/// A configuration file for `backends` with this `[tls]` table (key,
/// path) and `extra` (tables) at its end; returns the flag that names it.
fn config_file(
    dir: &Path,
    ports: Ports,
    tls: &[(&str, &Path)],
    backends: &[String],
    extra: &str,
) -> Vec<String> {
    let file = dir.join("sipshard.toml");
    let listen: Vec<String> = listeners(ports).iter().map(|l| format!("{l:?}")).collect();
    let members: Vec<String> = backends.iter().map(|b| format!("{b:?}")).collect();
    let mut text = format!(
        "listen = [{}]\nshards = 2\nadmin = \"{}\"\n[tls]\n",
        listen.join(", "),
        ports.admin()
    );
    for (key, path) in tls {
        text += &format!("{key} = \"{}\"\n", path.display());
    }
    text += &format!("[backends]\nmembers = [{}]\n", members.join(", "));
    text += extra;
    std::fs::write(&file, text).expect("the configuration is written");
    vec!["--config".to_string(), file.display().to_string()]
}

/// The gateway on `io` with `args`, its output in gateway.log; returns
/// once its admin API answers (it binds its listeners before).
fn start_gateway(dir: &Path, io: &str, ports: Ports, args: &[String]) -> Running {
    let log = std::fs::File::create(dir.join("gateway.log")).expect("a log file");
    let child = Command::new(env!("CARGO_BIN_EXE_sipshard"))
        .args(args)
        .args(["--io", io])
        .stdout(log.try_clone().expect("a second handle"))
        .stderr(log)
        .spawn()
        .expect("the sipshard binary");
    let gateway = Running(child);
    support::wait_for_listener(&ports.admin());
    gateway
}

/// Caller `i`'s stunnel client to the gateway's TLS listener, presenting
/// `identity` when given.
fn caller_front(
    dir: &Path,
    ports: Ports,
    i: u16,
    pki: &Pki,
    identity: Option<&Identity>,
) -> Running {
    let side = Side::Client {
        ca: &pki.ca,
        identity,
    };
    let (name, accept) = (format!("caller-{i}"), ports.caller_front(i));
    stunnel(dir, &name, accept, ports.gateway_tls_port(), side)
}

/// SIPp caller `i` (`uac.xml`, `calls` at `RATE`): to the gateway over
/// UDP or TCP, or over TCP to its stunnel (TLS).
fn spawn_caller(dir: &Path, ports: Ports, i: u16, mode: Transport, calls: u32) -> Child {
    let (target, flag) = match mode {
        Transport::Udp => (ports.gateway(), "u1"),
        Transport::Tcp => (ports.gateway(), "t1"),
        Transport::Tls => (local(ports.caller_front(i)), "t1"),
    };
    sipp(dir, ports.sipp_aux(i))
        .arg(&target)
        .args(["-sf", scenario("uac.xml").to_str().unwrap()])
        .args(["-i", "127.0.0.1", "-p", &ports.caller(i).to_string()])
        .args([
            "-t",
            flag,
            "-m",
            &calls.to_string(),
            "-r",
            &RATE.to_string(),
        ])
        .args(["-l", "1000", "-timeout", "60", "-timeout_error"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sipp runs")
}

/// How a SIPp caller ended.
struct Outcome {
    ok: u32,
    failed: u32,
    exit_ok: bool,
    screen: String,
}

impl Outcome {
    fn of(mut caller: Child) -> Outcome {
        let (screen, exit_ok) = sipp_screen(&mut caller);
        Outcome {
            ok: screen_count(&screen, "Successful call"),
            failed: screen_count(&screen, "Failed call"),
            exit_ok,
            screen,
        }
    }

    fn all_succeeded(&self, calls: u32) -> bool {
        self.exit_ok && self.ok == calls && self.failed == 0
    }
}

/// One run: two backends over `backend`, the gateway on `io`, a caller
/// over `caller`; every call must succeed and the gateway count its TLS
/// handshakes.
fn calls_succeed(io: &str, base: u16, caller: Transport, backend: Transport) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ports = Ports { base };
    let dir = tempdir(&format!("tls-{io}-{caller:?}-{backend:?}"));
    let pki = Pki::make(&dir);
    let _backends: Vec<Running> = (0..2)
        .flat_map(|i| start_backend(&dir, ports, i, backend, &pki))
        .collect();
    let uris = backend_uris(ports, backend, 2);
    let args = match backend {
        Transport::Tls => {
            let tls = [
                ("cert", pki.server.chain.as_path()),
                ("key", pki.server.key.as_path()),
                ("backend_ca", pki.ca.as_path()),
            ];
            config_file(&dir, ports, &tls, &uris, "")
        }
        _ => flags(ports, &pki.server, &uris),
    };
    let _gateway = start_gateway(&dir, io, ports, &args);
    let _front = (caller == Transport::Tls).then(|| caller_front(&dir, ports, 0, &pki, None));
    let outcome = Outcome::of(spawn_caller(&dir, ports, 0, caller, CALLS));
    let sums = scrape(&ports.admin());
    assert!(
        outcome.all_succeeded(CALLS),
        "{io}, caller {caller:?}, backends {backend:?}: {} of {CALLS} calls succeeded; see {}\n{}",
        outcome.ok,
        dir.display(),
        outcome.screen
    );
    let tls_sides = u64::from(caller == Transport::Tls) + 2 * u64::from(backend == Transport::Tls);
    let ok = value(&sums, HANDSHAKES_OK);
    assert!(ok >= tls_sides, "{ok} handshakes, {tls_sides} TLS peers");
    assert_eq!(value(&sums, HANDSHAKES_FAILED), 0, "failed handshakes");
}

#[test]
fn tls_callers_to_tcp_backends() {
    calls_succeed("auto", 27000, Transport::Tls, Transport::Tcp);
}

#[test]
fn tls_callers_to_tcp_backends_on_epoll() {
    calls_succeed("epoll", 27100, Transport::Tls, Transport::Tcp);
}

#[test]
fn udp_callers_to_tls_backends() {
    calls_succeed("auto", 27200, Transport::Udp, Transport::Tls);
}

#[test]
fn tls_callers_to_tls_backends_on_epoll() {
    calls_succeed("epoll", 27300, Transport::Tls, Transport::Tls);
}

#[test]
fn tls_callers_to_tls_backends() {
    calls_succeed("auto", 27400, Transport::Tls, Transport::Tls);
}

#[test]
fn tls_callers_to_udp_backends() {
    calls_succeed("auto", 27800, Transport::Tls, Transport::Udp);
}

/// Polls the gateway's metrics until `key` has risen past `from` (the
/// shards publish their counters as they go); its last value.
fn until_risen(admin: &str, key: &str, from: u64) -> u64 {
    let started = Instant::now();
    loop {
        let now = value(&scrape(admin), key);
        if now > from || started.elapsed() > Duration::from_secs(3) {
            return now;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `client_ca` set: caller 0 presents the client certificate and its calls
/// go through; caller 1 presents none, its handshake fails and no INVITE
/// reaches the gateway's proxy.
#[test]
fn mutual_tls_lets_in_only_callers_with_a_client_certificate() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ports = Ports { base: 27500 };
    let dir = tempdir("tls-mutual");
    let pki = Pki::make(&dir);
    let _backend = start_backend(&dir, ports, 0, Transport::Tcp, &pki);
    let tls = [
        ("cert", pki.server.chain.as_path()),
        ("key", pki.server.key.as_path()),
        ("client_ca", pki.ca.as_path()),
    ];
    let uris = backend_uris(ports, Transport::Tcp, 1);
    let args = config_file(&dir, ports, &tls, &uris, "");
    let _gateway = start_gateway(&dir, "auto", ports, &args);
    let _with = caller_front(&dir, ports, 0, &pki, Some(&pki.client));
    let _without = caller_front(&dir, ports, 1, &pki, None);

    let calls = 200;
    let outcome = Outcome::of(spawn_caller(&dir, ports, 0, Transport::Tls, calls));
    assert!(
        outcome.all_succeeded(calls),
        "with a client certificate: {} of {calls}\n{}",
        outcome.ok,
        outcome.screen
    );
    let before = scrape(&ports.admin());
    let outcome = Outcome::of(spawn_caller(&dir, ports, 1, Transport::Tls, 20));
    let failed = until_risen(
        &ports.admin(),
        HANDSHAKES_FAILED,
        value(&before, HANDSHAKES_FAILED),
    );
    let after = scrape(&ports.admin());
    assert_eq!(outcome.ok, 0, "without a certificate\n{}", outcome.screen);
    assert!(
        failed > value(&before, HANDSHAKES_FAILED),
        "the refused handshake is counted as failed: {failed}"
    );
    assert_eq!(
        value(&after, INVITES),
        value(&before, INVITES),
        "an INVITE got through without a client certificate"
    );
}

/// How long `stream` stays open, reading what comes, up to `limit`;
/// `None` when it is still open then.
fn open_for(mut stream: TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 512];
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("a timeout");
    while started.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

/// A connection to the TLS listener that never begins its handshake is
/// closed at `handshake_timeout_ms` (1 s here), under `handshake_timeout`.
#[test]
fn a_silent_tls_connection_is_closed_at_the_handshake_deadline() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ports = Ports { base: 27700 };
    let dir = tempdir("tls-deadline");
    let pki = Pki::make(&dir);
    let tls = [
        ("cert", pki.server.chain.as_path()),
        ("key", pki.server.key.as_path()),
    ];
    let uris = backend_uris(ports, Transport::Udp, 1);
    let streams = "[streams]\nhandshake_timeout_ms = 1000\n";
    let args = config_file(&dir, ports, &tls, &uris, streams);
    let _gateway = start_gateway(&dir, "auto", ports, &args);
    let silent = TcpStream::connect(ports.gateway_tls()).expect("the TLS listener accepts");
    let open = open_for(silent, Duration::from_secs(6));
    assert!(
        open.is_some_and(|d| d >= Duration::from_millis(900) && d < Duration::from_secs(4)),
        "a silent connection was closed after {open:?}, not at about 1 s"
    );
    let key = "sipshard_connections_closed_total{reason=handshake_timeout}";
    assert_eq!(until_risen(&ports.admin(), key, 0), 1, "{key}");
}

/// Puts `identity` where the gateway's `[tls]` table points, each file
/// replaced whole (written beside it, then renamed over it) as a
/// certificate renewal does.
fn install(identity: &Identity, chain: &Path, key: &Path) {
    for (from, to) in [(&identity.chain, chain), (&identity.key, key)] {
        let next = to.with_extension("next");
        std::fs::copy(from, &next).expect("a copy");
        std::fs::rename(&next, to).expect("a rename");
    }
}

/// The certificate new connections are served, within 5 s, is `wanted`;
/// returns how many connections it took to see it.
fn until_served(address: &str, pki: &Pki, wanted: &Identity) -> u64 {
    let started = Instant::now();
    let mut connections = 0;
    loop {
        connections += 1;
        if served_leaf(address, &pki.ca_der) == wanted.der {
            return connections;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "new connections are still served the old certificate"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sighup(gateway: &Running) {
    let pid = i32::try_from(gateway.0.id()).expect("a pid");
    // SAFETY: kill sends a signal to our own child; it reads no memory.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0, "SIGHUP");
}

/// A caller's one TLS connection carries calls (15 s at `RATE`) while the
/// certificate files are replaced and the gateway gets SIGHUP: new TLS
/// connections are served the new certificate, the caller's connection
/// stays up (no second one from it) and every call succeeds.
#[test]
fn sighup_serves_a_new_certificate_and_keeps_established_connections() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ports = Ports { base: 27600 };
    let dir = tempdir("tls-sighup");
    let pki = Pki::make(&dir);
    let (chain, key) = (dir.join("gateway-chain.pem"), dir.join("gateway-key.pem"));
    install(&pki.server, &chain, &key);
    let _backend = start_backend(&dir, ports, 0, Transport::Tcp, &pki);
    let tls = [("cert", chain.as_path()), ("key", key.as_path())];
    let uris = backend_uris(ports, Transport::Tcp, 1);
    let args = config_file(&dir, ports, &tls, &uris, "");
    let gateway = start_gateway(&dir, "auto", ports, &args);
    let _front = caller_front(&dir, ports, 0, &pki, None);

    let calls = 15 * RATE;
    let caller = spawn_caller(&dir, ports, 0, Transport::Tls, calls);
    std::thread::sleep(Duration::from_secs(4));
    let mut probes = until_served(&ports.gateway_tls(), &pki, &pki.server);
    install(&pki.server_two, &chain, &key);
    sighup(&gateway);
    probes += until_served(&ports.gateway_tls(), &pki, &pki.server_two);

    let outcome = Outcome::of(caller);
    assert!(
        outcome.all_succeeded(calls),
        "across the reload: {} of {calls} calls succeeded\n{}",
        outcome.ok,
        outcome.screen
    );
    let sums = scrape(&ports.admin());
    assert_eq!(
        value(&sums, ACCEPTED),
        1 + probes,
        "connections accepted: the caller's one and {probes} probes"
    );
}

/// `sipshard --check-config` on a file with `listen` (a `tls:` listener)
/// and `tls` as its `[tls]` table: exit status and stderr.
fn check_config(dir: &Path, name: &str, tls: &str) -> (bool, String) {
    let file = dir.join(format!("{name}.toml"));
    let text = format!(
        "listen = [\"127.0.0.1:27960\", \"tls:127.0.0.1:27961\"]\n{tls}\
         [backends]\nmembers = [\"sip:127.0.0.1:27980\"]\n"
    );
    std::fs::write(&file, text).expect("the configuration is written");
    let output = Command::new(env!("CARGO_BIN_EXE_sipshard"))
        .arg("--check-config")
        .arg(&file)
        .output()
        .expect("the sipshard binary");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.success(), stderr)
}

fn tls_table(cert: &Path, key: &Path) -> String {
    format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

/// Each file is refused with a message naming `names` (case aside) and
/// its fix; the right certificate and key pass.
#[test]
fn check_config_refuses_what_tls_cannot_use() {
    let dir = tempdir("tls-check");
    let pki = Pki::make(&dir);
    let (ok, stderr) = check_config(
        &dir,
        "valid",
        &tls_table(&pki.server.chain, &pki.server.key),
    );
    assert!(ok, "a valid file is refused: {stderr}");

    let missing = dir.join("missing.pem");
    let not_pem = dir.join("not-pem.pem");
    std::fs::write(&not_pem, "not a certificate\n").expect("a file");
    let cases: [(&str, String, String); 4] = [
        ("no-certificate", String::new(), "cert".into()),
        (
            "unreadable",
            tls_table(&missing, &pki.server.key),
            missing.display().to_string(),
        ),
        (
            "not-pem",
            tls_table(&not_pem, &pki.server.key),
            not_pem.display().to_string(),
        ),
        (
            "wrong-key",
            tls_table(&pki.server.chain, &pki.server_two.key),
            "key".into(),
        ),
    ];
    for (name, table, names) in cases {
        let (ok, stderr) = check_config(&dir, name, &table);
        assert!(!ok, "{name}: accepted");
        let lower = stderr.to_lowercase();
        assert!(
            lower.contains(&names.to_lowercase()) && lower.contains("fix"),
            "{name}: the message names neither {names:?} nor a fix: {stderr}"
        );
    }
}

/// Waits up to 10 s for `child` to exit and returns its status; kills it
/// and fails if it runs on.
fn exits_within(child: Child, what: &str) -> ExitStatus {
    let mut child = Running(child);
    let started = Instant::now();
    loop {
        if let Some(status) = child.0.try_wait().expect("a status") {
            return status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: still running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// On the command line too: `--listen tls:` without `--tls-cert` does not
/// start, and says which flags to give.
#[test]
fn a_tls_listener_without_a_certificate_does_not_start() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let log = tempdir("tls-no-certificate").join("gateway.log");
    let child = Command::new(env!("CARGO_BIN_EXE_sipshard"))
        .args([
            "--listen",
            "127.0.0.1:27860",
            "--listen",
            "tls:127.0.0.1:27861",
        ])
        .args(["--backend", "sip:127.0.0.1:27880", "--shards", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("a log file"))
        .spawn()
        .expect("the sipshard binary");
    let status = exits_within(child, "a tls: listener with no certificate");
    let stderr = std::fs::read_to_string(&log).expect("the log");
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("--tls-cert"), "{stderr}");
}
