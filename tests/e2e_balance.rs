//! End to end: balancing and operations with the real binary, SIPp and
//! the admin API. A killed backend goes down by the probes and comes back
//! up after it restarts while calls go on; a drained backend takes no new
//! calls while its calls in progress finish; a reload adds and removes
//! backends during a run; bad API requests get 400. Own ports (17xxx).

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::{http, scenario, screen_count, sipp_screen, tempdir, wait_for_listener, Running};

static SERIAL: Mutex<()> = Mutex::new(());

const GATEWAY: &str = "127.0.0.1:17060";
const ADMIN: &str = "127.0.0.1:17090";
const A: &str = "127.0.0.1:17080";
const B: &str = "127.0.0.1:17081";

/// A SIPp backend that also answers OPTIONS (`-aa`), and writes its
/// counters to `stats` once a second when given.
fn backend(address: &str, dir: &Path, stats: Option<&Path>) -> Running {
    let (ip, port) = address.split_once(':').unwrap();
    let mut command = Command::new("sipp");
    command
        .args(["-sf", scenario("uas.xml").to_str().unwrap()])
        .args(["-i", ip, "-p", port, "-aa", "-nostdin"]);
    if let Some(stats) = stats {
        command.args(["-trace_stat", "-fd", "1", "-stf"]).arg(stats);
    }
    Running(
        command
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sipp is installed (Debian package sip-tester)"),
    )
}

fn gateway(config: &Path) -> Running {
    Running(
        Command::new(env!("CARGO_BIN_EXE_sipshard"))
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the sipshard binary"),
    )
}

fn config(members: &[&str], probes: bool) -> String {
    let members: Vec<String> = members.iter().map(|m| format!("\"sip:{m}\"")).collect();
    format!(
        "listen = \"{GATEWAY}\"\nshards = 2\nadmin = \"{ADMIN}\"\n\
         [probes]\nenabled = {probes}\ninterval_ms = 500\ntimeout_ms = 300\nfailures = 2\nsuccesses = 2\n\
         [backends]\nmembers = [{}]\n",
        members.join(", ")
    )
}

/// The caller: `calls` calls at `rate` per second, each held `hold_ms`.
fn caller(calls: u32, rate: u32, hold_ms: u32, dir: &Path) -> Child {
    let (ip, _) = GATEWAY.split_once(':').unwrap();
    Command::new("sipp")
        .arg(GATEWAY)
        .args(["-sf", scenario("uac_hold.xml").to_str().unwrap()])
        .args(["-i", ip, "-p", "17070", "-m", &calls.to_string()])
        .args(["-r", &rate.to_string(), "-d", &hold_ms.to_string()])
        .args(["-l", "2000", "-timeout", "90", "-nostdin"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sipp runs")
}

/// Waits for the caller; returns (successful, failed) from its screen.
fn finish(mut caller: Child) -> (u32, u32) {
    let (screen, _) = sipp_screen(&mut caller);
    (
        screen_count(&screen, "Successful call"),
        screen_count(&screen, "Failed call"),
    )
}

fn api(method: &str, path: &str, body: &str) -> (u16, String) {
    http(ADMIN, method, path, body)
}

/// A member's state as `GET /api/v1/sets` gives it.
fn state(uri: &str) -> Option<String> {
    let (status, body) = api("GET", "/api/v1/sets", "");
    assert_eq!(status, 200, "{body}");
    let sets: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    sets["sets"]
        .as_array()?
        .iter()
        .flat_map(|s| s["members"].as_array().cloned().unwrap_or_default())
        .find(|m| m["uri"] == uri)
        .and_then(|m| m["state"].as_str().map(str::to_string))
}

/// Polls until `uri` is in `wanted` state; returns how long it took.
fn until_state(uri: &str, wanted: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if state(uri).as_deref() == Some(wanted) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{uri} not {wanted} after {limit:?} (it is {:?})",
            state(uri)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIPp's cumulative count of incoming calls, from its `-trace_stat` file.
fn incoming_calls(stats: &Path) -> u64 {
    let text = std::fs::read_to_string(stats).unwrap_or_default();
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return 0;
    };
    let column = header
        .split(';')
        .position(|c| c == "IncomingCall(C)")
        .expect("an IncomingCall(C) column");
    lines
        .last()
        .and_then(|l| l.split(';').nth(column))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_killed_backend_goes_down_and_comes_back_up_while_calls_go_on() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir("balance-probes");
    let file = dir.join("sipshard.toml");
    std::fs::write(&file, config(&[A, B], true)).unwrap();
    let _a = backend(A, &dir, None);
    let b = backend(B, &dir, None);
    let _gateway = gateway(&file);
    wait_for_listener(ADMIN);
    // Two probe rounds, so that both backends have answered.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(state(&format!("sip:{B}")).as_deref(), Some("up"));

    let calls = caller(1200, 100, 100, &dir);
    std::thread::sleep(Duration::from_secs(2));
    drop(b);
    // Down within interval × failures plus one timeout: the probe due
    // next fails at most 500 + 300 ms after the kill, the second 500 ms
    // later (1.3 s); 250 ms more for polling and a busy machine.
    let down = until_state(&format!("sip:{B}"), "down", Duration::from_millis(3000));
    assert!(down <= Duration::from_millis(1550), "down after {down:?}");
    std::thread::sleep(Duration::from_secs(2));
    let _b = backend(B, &dir, None);
    let up = until_state(&format!("sip:{B}"), "up", Duration::from_millis(3000));
    assert!(up <= Duration::from_millis(2300), "up after {up:?}");
    let (ok, failed) = finish(calls);
    // Only calls the killed backend held when it died can fail (their BYE
    // has nowhere to go); new calls go to the other backend, or fail over
    // to it at once on the ICMP error.
    assert!(failed <= 20, "{failed} failed calls");
    assert_eq!(ok + failed, 1200);
}

#[test]
fn a_drained_backend_takes_no_new_calls_and_a_reload_changes_members_mid_run() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir("balance-drain");
    let file = dir.join("sipshard.toml");
    std::fs::write(&file, config(&[A], false)).unwrap();
    let stats_a = dir.join("a.csv");
    let _a = backend(A, &dir, Some(&stats_a));
    let _b = backend(B, &dir, None);
    let _gateway = gateway(&file);
    wait_for_listener(ADMIN);

    // Calls held 1 s, so some are always in progress.
    let calls = caller(1400, 100, 1000, &dir);
    std::thread::sleep(Duration::from_secs(3));
    // A reload adds B.
    std::fs::write(&file, config(&[A, B], false)).unwrap();
    let (status, body) = api("POST", "/api/v1/reload", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(state(&format!("sip:{B}")).as_deref(), Some("up"));
    // A broken file is refused; the running routing stays.
    std::fs::write(&file, "listen = \n").unwrap();
    let (status, body) = api("POST", "/api/v1/reload", "");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"field\":\"config\""), "{body}");
    assert_eq!(state(&format!("sip:{B}")).as_deref(), Some("up"));
    std::fs::write(&file, config(&[A, B], false)).unwrap();

    std::thread::sleep(Duration::from_secs(2));
    let (status, body) = api(
        "PUT",
        &format!("/api/v1/sets/default/members/sip:{A}"),
        r#"{"state": "draining"}"#,
    );
    assert_eq!(status, 200, "{body}");
    // INVITEs already on their way may still land; then nothing new.
    std::thread::sleep(Duration::from_millis(1500));
    let at_drain = incoming_calls(&stats_a);
    assert!(at_drain > 0, "A took calls before it was drained");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        incoming_calls(&stats_a),
        at_drain,
        "a draining backend took new calls"
    );
    // A reload removes A; its calls in progress still end (their BYE
    // follows the Route, not the pool).
    std::fs::write(&file, config(&[B], false)).unwrap();
    let (status, body) = api("POST", "/api/v1/reload", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(state(&format!("sip:{A}")), None, "A is gone");
    let (ok, failed) = finish(calls);
    assert_eq!((ok, failed), (1400, 0));
}

#[test]
fn bad_admin_requests_get_400_naming_the_field() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir("balance-api");
    let file = dir.join("sipshard.toml");
    std::fs::write(&file, config(&[A, B], false)).unwrap();
    let _gateway = gateway(&file);
    wait_for_listener(ADMIN);
    let member = format!("/api/v1/sets/default/members/sip:{A}");
    for (body, field) in [
        (r#"{"state": "sleeping"}"#, "state"),
        (r#"{"stat": "up"}"#, "stat"),
        (r#"{"state": 1}"#, "state"),
        ("not json", "state"),
        ("", "state"),
    ] {
        let (status, answer) = api("PUT", &member, body);
        assert_eq!(status, 400, "{body}: {answer}");
        let answer: serde_json::Value = serde_json::from_str(&answer).expect("a JSON error");
        assert_eq!(answer["field"], field, "{body}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    assert_eq!(
        state(&format!("sip:{A}")).as_deref(),
        Some("up"),
        "nothing changed"
    );
    let (status, _) = api("PUT", "/api/v1/sets/nope/members/0", r#"{"state": "up"}"#);
    assert_eq!(status, 404);
    let (status, _) = api(
        "PUT",
        "/api/v1/sets/default/members/7",
        r#"{"state": "up"}"#,
    );
    assert_eq!(status, 404);
    let (status, body) = api(
        "PUT",
        "/api/v1/sets/default/members/1",
        r#"{"state": "down"}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(state(&format!("sip:{B}")).as_deref(), Some("down"));
}
