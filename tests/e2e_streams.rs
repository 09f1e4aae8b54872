//! End to end over TCP: the real `sipshard` binary between real SIPp
//! processes on 127.0.0.1, listening on UDP and TCP. Callers over TCP with
//! one connection for all calls (`-t t1`) and one per call (`-t tn`), to
//! backends over TCP and over UDP, and UDP callers to TCP backends; a
//! REGISTER flow over TCP; and a backend whose TCP port refuses the
//! connection, which must fail over at once (as an ICMP error does on
//! UDP), not after a timer. Every call must succeed, on both I/O loops.
//!
//! Needs `sipp` (Debian `sip-tester`), which `.ci/run` installs. The runs
//! share ports, so they take a lock and go one at a time.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use support::{scenario, scrape, screen_count, tempdir, value, wait_for_listener, Running};

static SERIAL: Mutex<()> = Mutex::new(());

const GATEWAY: &str = "127.0.0.1:16060";
const ADMIN: &str = "127.0.0.1:16090";
const BACKENDS: [&str; 2] = ["127.0.0.1:16080", "127.0.0.1:16081"];
const CALLER_PORT: &str = "16070";
const CALLS: u32 = 400;
const RATE: u32 = 100;

/// SIPp's `-t`: UDP, TCP on one connection, TCP with one per call.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Udp,
    Tcp1,
    TcpPerCall,
}

impl Mode {
    fn flag(self) -> &'static str {
        match self {
            Mode::Udp => "u1",
            Mode::Tcp1 => "t1",
            Mode::TcpPerCall => "tn",
        }
    }

    /// How the gateway's `--backend` names a backend of this mode.
    fn backend_uri(self, address: &str) -> String {
        match self {
            Mode::Udp => format!("sip:{address}"),
            _ => format!("sip:{address};transport=tcp"),
        }
    }
}

fn sipp() -> Command {
    let mut command = Command::new("sipp");
    command.stdin(Stdio::null());
    command
}

fn start_backend(address: &str, scenario_file: &str, mode: Mode, dir: &Path) -> Running {
    let (ip, port) = address.split_once(':').unwrap();
    let child = sipp()
        .args(["-sf", scenario(scenario_file).to_str().unwrap()])
        .args(["-i", ip, "-p", port, "-t", mode.flag(), "-nostdin"])
        .args(["-max_socket", "2000"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sipp is installed (Debian package sip-tester)");
    Running(child)
}

fn start_gateway(io: &str, backends: &[String]) -> Running {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sipshard"));
    command.args(["--listen", GATEWAY, "--listen", &format!("tcp:{GATEWAY}")]);
    command.args(["--shards", "2", "--io", io, "--admin", ADMIN]);
    for backend in backends {
        command.args(["--backend", backend]);
    }
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the sipshard binary");
    let gateway = Running(child);
    wait_for_listener(ADMIN);
    wait_for_listener(GATEWAY);
    gateway
}

/// Runs a SIPp caller to the end: its successful and failed counts, its
/// exit status, and its screen to tell what failed.
fn run_caller(scenario_file: &str, mode: Mode, calls: u32, dir: &Path) -> (u32, u32, bool, String) {
    let (ip, _) = GATEWAY.split_once(':').unwrap();
    let output = sipp()
        .args([GATEWAY, "-sf", scenario(scenario_file).to_str().unwrap()])
        .args(["-i", ip, "-p", CALLER_PORT, "-t", mode.flag()])
        .args([
            "-m",
            &calls.to_string(),
            "-r",
            &RATE.to_string(),
            "-l",
            "1000",
        ])
        .args([
            "-timeout",
            "60",
            "-timeout_error",
            "-nostdin",
            "-max_socket",
            "2000",
        ])
        .current_dir(dir)
        .output()
        .expect("sipp runs");
    let screen = String::from_utf8_lossy(&output.stdout).into_owned();
    let successful = screen_count(&screen, "Successful call");
    let failed = screen_count(&screen, "Failed call");
    (successful, failed, output.status.success(), screen)
}

/// One run: backends of `backend_mode` (scenario `uas.xml`), the gateway
/// on `io`, and a caller of `caller_mode`; every call must succeed.
fn calls_succeed(io: &str, caller_mode: Mode, backend_mode: Mode) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir(&format!("streams-{io}-{caller_mode:?}-{backend_mode:?}"));
    let _backends: Vec<Running> = BACKENDS
        .iter()
        .map(|b| start_backend(b, "uas.xml", backend_mode, &dir))
        .collect();
    let uris: Vec<String> = BACKENDS
        .iter()
        .map(|b| backend_mode.backend_uri(b))
        .collect();
    let _gateway = start_gateway(io, &uris);
    let (ok, failed, exit_ok, screen) = run_caller("uac.xml", caller_mode, CALLS, &dir);
    let sums = scrape(ADMIN);
    assert!(
        exit_ok && ok == CALLS && failed == 0,
        "{io}, caller {caller_mode:?}, backends {backend_mode:?}: {ok} of {CALLS} calls succeeded\n{screen}"
    );
    let opened = value(&sums, "sipshard_connections_opened_total{how=accepted}")
        + value(&sums, "sipshard_connections_opened_total{how=connected}");
    let tcp_sides = u64::from(caller_mode != Mode::Udp) + u64::from(backend_mode != Mode::Udp);
    assert!(opened >= tcp_sides, "connections opened: {opened}");
}

#[test]
fn tcp_callers_on_one_connection_to_tcp_backends() {
    calls_succeed("auto", Mode::Tcp1, Mode::Tcp1);
}

#[test]
fn tcp_callers_with_a_connection_per_call_to_tcp_backends_on_epoll() {
    calls_succeed("epoll", Mode::TcpPerCall, Mode::Tcp1);
}

#[test]
fn tcp_callers_to_udp_backends() {
    calls_succeed("auto", Mode::TcpPerCall, Mode::Udp);
}

#[test]
fn udp_callers_to_tcp_backends() {
    calls_succeed("auto", Mode::Udp, Mode::Tcp1);
}

#[test]
fn register_over_tcp() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir("streams-register");
    let _backend = start_backend(BACKENDS[0], "register_uas.xml", Mode::Tcp1, &dir);
    let _gateway = start_gateway("auto", &[Mode::Tcp1.backend_uri(BACKENDS[0])]);
    let (ok, failed, exit_ok, screen) = run_caller("register_uac.xml", Mode::TcpPerCall, 200, &dir);
    assert!(
        exit_ok && ok == 200 && failed == 0,
        "{ok} of 200 registrations\n{screen}"
    );
}

/// Backend A's TCP port refuses connections (nothing listens there): each
/// call tried there moves to B when the connect is refused, long before
/// the try timer, and every call succeeds.
#[test]
fn a_refused_connection_fails_over_at_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir("streams-refused");
    let _backend = start_backend(BACKENDS[1], "uas.xml", Mode::Tcp1, &dir);
    let uris: Vec<String> = BACKENDS.iter().map(|b| Mode::Tcp1.backend_uri(b)).collect();
    let _gateway = start_gateway("auto", &uris);
    let (ok, failed, exit_ok, screen) = run_caller("uac.xml", Mode::TcpPerCall, 200, &dir);
    let sums = scrape(ADMIN);
    assert!(
        exit_ok && ok == 200 && failed == 0,
        "{ok} of 200 calls\n{screen}"
    );
    let refused = value(
        &sums,
        "sipshard_connections_closed_total{reason=connect_failed}",
    );
    let unreachable = value(&sums, "sipshard_icmp_unreachable_total");
    let try_timeouts = value(&sums, "sipshard_try_timeouts_total");
    assert!(
        refused > 0 && unreachable > 0,
        "refused {refused}, failed over {unreachable}"
    );
    assert_eq!(try_timeouts, 0, "no try waited for its timer");
}
