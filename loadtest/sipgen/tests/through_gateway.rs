//! sipgen against real processes on loopback: through the sipshard binary,
//! straight at its own backends, and at an address where nothing answers
//! (so the tests can see a failure, not only successes).
//!
//! The sipshard binary comes from the same `cargo test --release --all`
//! build (it sits beside sipgen's).

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn sipgen() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sipgen"))
}

fn sipshard_path() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_sipgen"));
    let path = dir.with_file_name("sipshard");
    assert!(
        path.exists(),
        "{} is missing: run the workspace's tests (cargo test --release --all), which build it",
        path.display()
    );
    path
}

struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts sipshard on `listen` with two backends and waits until it
/// answers an OPTIONS (sipgen's own, one at a time).
fn gateway(listen: u16, backends: [u16; 2]) -> Gateway {
    let child = Command::new(sipshard_path())
        .args(["--listen", &format!("127.0.0.1:{listen}"), "--shards", "2"])
        .args(["--backend", &format!("sip:127.0.0.1:{}", backends[0])])
        .args(["--backend", &format!("sip:127.0.0.1:{}", backends[1])])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sipshard");
    let gateway = Gateway(child);
    // Ready means answering: OPTIONS through it to the backends, until a
    // round of them all complete without a retransmission.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = sipgen()
            .args([
                "--target",
                &format!("127.0.0.1:{listen}"),
                "--scenario",
                "options",
            ])
            .args(["--backend", &format!("127.0.0.1:{}", backends[0])])
            .args(["--backend", &format!("127.0.0.1:{}", backends[1])])
            .args([
                "--rate",
                "20",
                "--duration",
                "0.5",
                "--call-timeout",
                "1",
                "--quiet",
            ])
            .output()
            .expect("run sipgen");
        if output.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sipshard on {listen} never answered"
        );
    }
    gateway
}

/// The `key=value` fields of sipgen's RESULT line.
fn result(output: &Output) -> std::collections::HashMap<String, f64> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("RESULT"))
        .unwrap_or_else(|| {
            panic!(
                "no RESULT line in:\n{stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().expect("a number")))
        .collect()
}

fn run(args: &[&str]) -> (Output, std::collections::HashMap<String, f64>) {
    let output = sipgen()
        .args(args)
        .arg("--quiet")
        .output()
        .expect("run sipgen");
    let fields = result(&output);
    (output, fields)
}

#[test]
fn calls_through_sipshard_all_complete_and_are_timed() {
    let _gateway = gateway(18100, [18101, 18102]);
    let (output, r) = run(&[
        "--target",
        "127.0.0.1:18100",
        "--backend",
        "127.0.0.1:18101",
        "--backend",
        "127.0.0.1:18102",
        "--rate",
        "1000",
        "--duration",
        "2",
        "--sources",
        "4",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert_eq!(r["started"], 2000.0);
    assert_eq!(r["completed"], 2000.0);
    assert_eq!(r["failed"], 0.0);
    // Both legs went through the gateway and were timed.
    assert!(r["added_p50_us"] > 0.0 && r["setup_p50_us"] >= r["added_p50_us"]);
}

#[test]
fn registers_and_options_through_sipshard_complete() {
    let _gateway = gateway(18110, [18111, 18112]);
    for scenario in ["register", "options"] {
        let (output, r) = run(&[
            "--target",
            "127.0.0.1:18110",
            "--backend",
            "127.0.0.1:18111",
            "--backend",
            "127.0.0.1:18112",
            "--scenario",
            scenario,
            "--rate",
            "500",
            "--duration",
            "1",
        ]);
        assert!(
            output.status.success(),
            "{scenario}: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        assert_eq!(r["completed"], 500.0, "{scenario}");
    }
}

#[test]
fn straight_at_its_own_backend_with_two_workers() {
    let (output, r) = run(&[
        "--target",
        "127.0.0.1:18120",
        "--backend",
        "127.0.0.1:18120",
        "--rate",
        "2000",
        "--duration",
        "1",
        "--workers",
        "2",
        "--sources",
        "2",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert_eq!(r["completed"], 2000.0);
}

#[test]
fn calls_to_nobody_fail_after_their_timeout_and_the_exit_status_says_so() {
    let started = Instant::now();
    let (output, r) = run(&[
        "--target",
        "127.0.0.1:18130",
        "--no-backends",
        "--rate",
        "100",
        "--duration",
        "1",
        "--call-timeout",
        "1",
        "--t1-ms",
        "100",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(r["completed"], 0.0);
    assert_eq!(r["failed"], r["started"]);
    assert!(r["started"] >= 99.0);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_search_finds_a_rate_and_reports_it() {
    let (output, r) = run(&[
        "--target",
        "127.0.0.1:18140",
        "--backend",
        "127.0.0.1:18140",
        "--search",
        "--rate",
        "500",
        "--max-rate",
        "2000",
        "--duration",
        "0.5",
        "--settle",
        "0.1",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    // Doubling from 500 stops at the 2,000 ceiling given.
    assert_eq!(r["rate"], 2000.0);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.matches(" pass ").count(), 3, "{stdout}");
}
