//! End to end: the real `sipshard` binary between real SIPp processes on
//! 127.0.0.1. Two SIPp backends answer behind the gateway; one SIPp caller
//! (one 4-tuple, so the gateway's shards must share its calls by Call-ID)
//! drives 2,000 calls at 200 per second. Every call must succeed, on both
//! I/O paths (io_uring and epoll) and with 1 and 2 shards.
//!
//! Needs `sipp` (Debian `sip-tester`), which `.ci/run` installs. The runs
//! share ports, so they take a lock and go one at a time.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::Running;

static SERIAL: Mutex<()> = Mutex::new(());

const GATEWAY: &str = "127.0.0.1:15060";
const BACKENDS: [&str; 2] = ["127.0.0.1:15080", "127.0.0.1:15081"];
const CALLER_PORT: &str = "15070";
const CALLS: u32 = 2000;
const RATE: u32 = 200;

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("loadtest/scenarios")
        .join(name)
}

fn sipp() -> Command {
    let mut command = Command::new("sipp");
    command.stdin(Stdio::null());
    command
}

fn start_backend(address: &str, scenario_file: &str, dir: &Path) -> Running {
    let (ip, port) = address.split_once(':').unwrap();
    let child = sipp()
        .args([
            "-sf",
            scenario(scenario_file).to_str().unwrap(),
            "-i",
            ip,
            "-p",
            port,
            "-nostdin",
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sipp is installed (Debian package sip-tester)");
    Running(child)
}

fn start_gateway(shards: usize, io: &str) -> Running {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sipshard"));
    command.args([
        "--listen",
        GATEWAY,
        "--shards",
        &shards.to_string(),
        "--io",
        io,
    ]);
    for backend in BACKENDS {
        command.args(["--backend", &format!("sip:{backend}")]);
    }
    Running(
        command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the sipshard binary"),
    )
}

/// SIPp's final counts, read from its summary screen.
#[derive(Debug)]
struct Outcome {
    successful: u32,
    failed: u32,
    exit_ok: bool,
}

fn run_caller(scenario_file: &str, dir: &Path) -> Outcome {
    let (ip, _) = GATEWAY.split_once(':').unwrap();
    let output = sipp()
        .args([
            GATEWAY,
            "-sf",
            scenario(scenario_file).to_str().unwrap(),
            "-i",
            ip,
            "-p",
            CALLER_PORT,
            "-m",
            &CALLS.to_string(),
            "-r",
            &RATE.to_string(),
            "-l",
            "1000",
            "-timeout",
            "60",
            "-timeout_error",
            "-nostdin",
        ])
        .current_dir(dir)
        .output()
        .expect("sipp runs");
    let screen = String::from_utf8_lossy(&output.stdout);
    let count = |label: &str| -> u32 {
        screen
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .and_then(|l| l.split('|').nth(2))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no '{label}' in SIPp's output:\n{screen}"))
    };
    Outcome {
        successful: count("Successful call"),
        failed: count("Failed call"),
        exit_ok: output.status.success(),
    }
}

fn calls_through_gateway(io: &str, shards: usize, caller: &str, backend: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir(&format!("{caller}-{io}-{shards}"));
    let _backends: Vec<Running> = BACKENDS
        .iter()
        .map(|b| start_backend(b, backend, &dir))
        .collect();
    let _gateway = start_gateway(shards, io);
    // Give the processes time to bind before the first INVITE.
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let outcome = run_caller(caller, &dir);
    assert_eq!(outcome.failed, 0, "{outcome:?}");
    assert_eq!(outcome.successful, CALLS, "{outcome:?}");
    assert!(outcome.exit_ok, "{outcome:?}");
    // At 200 calls per second, 2,000 calls take about ten seconds; far
    // longer would mean retransmissions were carrying the run.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sipshard-e2e-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// Each I/O path (forced with --io) with 1 and 2 shards.

#[test]
fn invite_ack_bye_io_uring() {
    calls_through_gateway("uring", 1, "uac.xml", "uas.xml");
    calls_through_gateway("uring", 2, "uac.xml", "uas.xml");
}

#[test]
fn invite_ack_bye_epoll() {
    calls_through_gateway("epoll", 1, "uac.xml", "uas.xml");
    calls_through_gateway("epoll", 2, "uac.xml", "uas.xml");
}

#[test]
fn register_io_uring() {
    calls_through_gateway("uring", 1, "register_uac.xml", "register_uas.xml");
    calls_through_gateway("uring", 2, "register_uac.xml", "register_uas.xml");
}

#[test]
fn register_epoll() {
    calls_through_gateway("epoll", 1, "register_uac.xml", "register_uas.xml");
    calls_through_gateway("epoll", 2, "register_uac.xml", "register_uas.xml");
}
