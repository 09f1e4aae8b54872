//! A real browser through sipshard's WebSocket listener (RFC 7118, issue
//! #20): JsSIP, the WebRTC SIP library from the npm registry, in Debian's
//! headless Chromium, driven by `tests/browser/driver.js` (puppeteer-core).
//! The browser registers through the gateway to a SIPp registrar (which
//! sees and echoes the Path), places a call to a SIPp UAS and hangs up,
//! then takes a call that a SIPp UAC sends to the registered Contact with
//! the Path as its Route, which the gateway must carry back to the
//! browser's WebSocket; last it unregisters. Only signalling is checked
//! (media is fake): each step's outcome and the SIP messages on the
//! browser's socket, in order. Why: the WebSocket tests of `e2e_ws.rs`
//! speak for a browser; this one is a browser, with a client library's own
//! Via, Contact (`.invalid`) and framing.
//!
//! The test installs what it needs (`tests/browser/install.sh`: Debian's
//! chromium, nodejs, npm, sip-tester, then `npm ci`) and leaves the page's
//! screenshot, the SIP trace and the logs in its temporary directory, whose
//! path it prints. Ports 29000-29999 only; the runs take a lock.
//!
//! The `ws:` listener is in, but the gateway adds no Path yet (issue #20:
//! flow tokens), so the call into the browser cannot work and the
//! gateway's test stays ignored; register, call out and unregister pass
//! through it (`driver.js --expect-path no --steps register,call,unregister`).
//! The same driver runs against Kamailio as a stand-in edge
//! (`tests/browser/kamailio-ws.cfg`) to show that the harness works:
//! `cargo test --release --test e2e_browser -- --ignored kamailio`.

mod support;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use support::{tempdir, wait_for_listener, Running};

static SERIAL: Mutex<()> = Mutex::new(());

/// The browser's whole run ends by then or is killed: Chromium's start,
/// the steps (each within `STEP_TIMEOUT_MS`, plus 3 s for its last
/// messages; the first to fail ends the run) and the screenshot. A run
/// that passes takes some 3 s.
const DRIVER_DEADLINE: Duration = Duration::from_secs(60);
const STEP_TIMEOUT_MS: &str = "10000";

/// Where each part listens: the edge toward the backend (UDP) and toward
/// the browser (WebSocket), the registrar, the UAC that calls the browser.
struct Ports {
    edge_udp: u16,
    edge_ws: u16,
    registrar: u16,
    uac: u16,
}

const GATEWAY_PORTS: Ports = Ports {
    edge_udp: 29160,
    edge_ws: 29180,
    registrar: 29200,
    uac: 29210,
};
const GATEWAY_ADMIN: &str = "127.0.0.1:29190";

const KAMAILIO_PORTS: Ports = Ports {
    edge_udp: 29060,
    edge_ws: 29080,
    registrar: 29100,
    uac: 29110,
};

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Runs `tests/browser/install.sh` (with `--kamailio` for the stand-in)
/// once per test process; its output goes to `dir/install.log`.
fn install(kamailio: bool, dir: &Path) {
    static DONE: OnceLock<()> = OnceLock::new();
    static DONE_KAMAILIO: OnceLock<()> = OnceLock::new();
    let once = if kamailio { &DONE_KAMAILIO } else { &DONE };
    once.get_or_init(|| {
        let log = dir.join("install.log");
        let mut command = Command::new("bash");
        command.arg(browser_dir().join("install.sh"));
        if kamailio {
            command.arg("--kamailio");
        }
        let status = command
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("install.log"))
            .stderr(std::fs::File::create(dir.join("install.err")).expect("install.err"))
            .status()
            .expect("bash runs");
        let errors = std::fs::read_to_string(dir.join("install.err")).unwrap_or_default();
        assert!(
            status.success(),
            "tests/browser/install.sh failed:\n{errors}"
        );
    });
}

/// The SIPp registrar and UAS (`tests/browser/registrar_uas.xml`) on UDP
/// (`transport` `u1`) or TCP (`t1`).
fn start_registrar(port: u16, transport: &str, dir: &Path) -> Running {
    let scenario = browser_dir().join("registrar_uas.xml");
    let child = Command::new("sipp")
        .args(["-sf", scenario.to_str().unwrap()])
        .args(["-i", "127.0.0.1", "-p", &port.to_string(), "-t", transport])
        .args(["-nostdin", "-trace_err", "-trace_logs", "-trace_msg"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sipp is installed (Debian package sip-tester)");
    Running(child)
}

/// A process started in a group of its own, ended with SIGTERM to the
/// group (Kamailio's main process ends its children on it), then SIGKILL.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let group = -(self.0.id() as i32);
        unsafe { libc::kill(group, libc::SIGTERM) };
        let started = Instant::now();
        while self.0.try_wait().ok().flatten().is_none()
            && started.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// `child`'s exit status, or `None` if it runs on after `limit`.
fn wait_for(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Some(status) = child.try_wait().expect("a child's status") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Kamailio as the WebSocket edge (`tests/browser/kamailio-ws.cfg`), in
/// the foreground, logging to `dir/kamailio.log`.
fn start_kamailio(ports: &Ports, dir: &Path) -> Group {
    let config = browser_dir().join("kamailio-ws.cfg");
    let child = Command::new("kamailio")
        .args([
            "-f",
            config.to_str().unwrap(),
            "-DD",
            "-E",
            "-m",
            "64",
            "-M",
            "8",
        ])
        .args(["-A", &format!("UDP_PORT={}", ports.edge_udp)])
        .args(["-A", &format!("WS_PORT={}", ports.edge_ws)])
        .args([
            "-A",
            &format!("BACKEND=\"sip:127.0.0.1:{}\"", ports.registrar),
        ])
        .current_dir(dir)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("kamailio.log")).expect("kamailio.log"))
        .spawn()
        .expect("kamailio is installed");
    let kamailio = Group(child);
    wait_for_listener(&format!("127.0.0.1:{}", ports.edge_ws));
    kamailio
}

/// The gateway with a UDP listener (toward the registrar, and where the
/// Path sends the UAC) and a `ws:` listener for the browser. And a `tcp:`
/// listener: a browser's INVITE (a WebRTC offer, some 2 kB) is larger than
/// `udp_request_bytes_max` (1300), so the gateway sends it to the UDP
/// backend over TCP (RFC 3261 §18.1.1), which it does only when it listens
/// on TCP; the registrar listens on both.
fn start_gateway(ports: &Ports, dir: &Path) -> Running {
    let udp = format!("127.0.0.1:{}", ports.edge_udp);
    let ws = format!("127.0.0.1:{}", ports.edge_ws);
    let child = Command::new(env!("CARGO_BIN_EXE_sipshard"))
        .args(["--listen", &udp, "--listen", &format!("tcp:{udp}")])
        .args(["--listen", &format!("ws:{ws}")])
        .args(["--backend", &format!("sip:127.0.0.1:{}", ports.registrar)])
        .args(["--admin", GATEWAY_ADMIN])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("sipshard.log")).expect("sipshard.log"))
        .spawn()
        .expect("the sipshard binary");
    let gateway = Running(child);
    wait_for_listener(GATEWAY_ADMIN);
    wait_for_listener(&ws);
    gateway
}

/// Runs the browser driver against `ws://127.0.0.1:<edge_ws>` with its
/// artefacts in `dir/browser`, killed at `DRIVER_DEADLINE`: whether it
/// passed, and its `RESULT` line (or all its output if it has none).
fn run_driver(ports: &Ports, dir: &Path, extra: &[&str]) -> (bool, String) {
    let out = dir.join("browser");
    let output = dir.join("driver.out");
    let mut child = Command::new("node")
        .arg(browser_dir().join("driver.js"))
        .args(["--ws-url", &format!("ws://127.0.0.1:{}", ports.edge_ws)])
        .args(["--uac-local", &format!("127.0.0.1:{}", ports.uac)])
        .args(["--step-timeout", STEP_TIMEOUT_MS])
        .args(["--out", out.to_str().unwrap()])
        .args(extra)
        .current_dir(browser_dir())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&output).expect("driver.out"))
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("driver.err")).expect("driver.err"),
        ))
        .spawn()
        .expect("node is installed");
    let status = wait_for(&mut child, DRIVER_DEADLINE);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stdout = std::fs::read_to_string(&output).unwrap_or_default();
    let result = stdout
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .map_or(stdout.clone(), str::to_string);
    (status.is_some_and(|s| s.success()), result)
}

/// The end of a log in `dir`, for a failure's message.
fn tail(dir: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Runs the driver, prints where its screenshot is, and fails with the
/// driver's result and the logs unless every step passed.
fn browser_steps_pass(ports: &Ports, dir: &Path, edge_log: &str, extra: &[&str]) {
    let (passed, result) = run_driver(ports, dir, extra);
    let screenshot = dir.join("browser/screenshot.png");
    println!("screenshot: {}", screenshot.display());
    println!(
        "artefacts (SIP trace, console, SIPp logs): {}",
        dir.display()
    );
    println!("{result}");
    assert!(
        passed,
        "the browser's steps failed: {result}\n--- driver.err\n{}\n--- {edge_log}\n{}",
        tail(dir, "driver.err"),
        tail(dir, edge_log)
    );
    assert!(
        screenshot.exists(),
        "no screenshot at {}",
        screenshot.display()
    );
}

// Needs sipshard's `ws:` listener (issue #20) whole: remove the `ignore`
// when it lands. The gateway must add a Path to the browser's REGISTER that
// names its UDP listener (the UAC sends its INVITE to the Path's address;
// give the driver `--uac-dest` otherwise), route a request with that Path
// as its Route to the browser's WebSocket, and Record-Route the dialogs.
// When this was written, the listener carried the REGISTER, the call and the
// un-REGISTER (driver steps register,call,unregister with --expect-path no)
// but added no Path, so the registrar could not reach the browser.
#[test]
#[ignore = "needs Path and flow tokens toward WebSocket clients (issue #20)"]
fn a_browser_registers_calls_and_is_called_through_the_gateway() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir("browser-sipshard");
    install(false, &dir);
    let ports = &GATEWAY_PORTS;
    let _registrar = start_registrar(ports.registrar, "u1", &dir);
    let _registrar_tcp = start_registrar(ports.registrar, "t1", &dir);
    let _gateway = start_gateway(ports, &dir);
    browser_steps_pass(ports, &dir, "sipshard.log", &[]);
}

/// What the gateway carries for a browser today: its REGISTER and the
/// 200, a call it places (INVITE over the WebSocket, on to the registrar
/// over TCP as it is past 1,300 bytes; 180, 200, ACK, BYE), and its
/// un-REGISTER. The registrar sees no Path yet, so that is not required.
#[test]
fn a_browser_registers_and_calls_out_through_the_gateway() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir("browser-sipshard-out");
    install(false, &dir);
    let ports = &GATEWAY_PORTS;
    let _registrar = start_registrar(ports.registrar, "u1", &dir);
    let _registrar_tcp = start_registrar(ports.registrar, "t1", &dir);
    let _gateway = start_gateway(ports, &dir);
    let steps = ["--expect-path", "no", "--steps", "register,call,unregister"];
    browser_steps_pass(ports, &dir, "sipshard.log", &steps);
}

/// The same driver and scenarios with Kamailio as the WebSocket edge: shows
/// the harness itself works while sipshard has no `ws:` listener. A
/// development check, not a test of sipshard, so not run by default.
#[test]
#[ignore = "the harness against Kamailio as a stand-in edge; run with --ignored"]
fn the_harness_works_with_kamailio_as_the_edge() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir("browser-kamailio");
    install(true, &dir);
    let ports = &KAMAILIO_PORTS;
    let _registrar = start_registrar(ports.registrar, "u1", &dir);
    let _kamailio = start_kamailio(ports, &dir);
    browser_steps_pass(ports, &dir, "kamailio.log", &[]);
}
