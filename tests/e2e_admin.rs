//! End to end: the admin API of the real binary. `/metrics` is scraped
//! while SIPp calls go through the gateway and again after, parsed with a
//! Prometheus text-format parser, and its counts must agree with what
//! SIPp itself did. Its own ports (16xxx), apart from e2e_sipp's.

mod support;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{
    http, scenario, screen_count, sipp_screen, tempdir, value, wait_for_listener, Running,
};

const GATEWAY: &str = "127.0.0.1:16060";
const ADMIN: &str = "127.0.0.1:16090";
const BACKENDS: [&str; 2] = ["127.0.0.1:16080", "127.0.0.1:16081"];
const CALLS: u64 = 600;

fn get(path: &str) -> (u16, String) {
    http(ADMIN, "GET", path, "")
}

fn scrape() -> HashMap<String, f64> {
    support::scrape(ADMIN)
}

#[test]
fn metrics_agree_with_sipp_and_bad_paths_get_404() {
    let dir = tempdir("admin");
    let _backends: Vec<Running> = BACKENDS
        .iter()
        .map(|address| {
            let (ip, port) = address.split_once(':').unwrap();
            Running(
                Command::new("sipp")
                    .args(["-sf", scenario("uas.xml").to_str().unwrap()])
                    .args(["-i", ip, "-p", port, "-nostdin"])
                    .current_dir(&dir)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("sipp is installed (Debian package sip-tester)"),
            )
        })
        .collect();
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_sipshard"));
    gateway.args(["--listen", GATEWAY, "--shards", "2", "--admin", ADMIN]);
    for backend in BACKENDS {
        gateway.args(["--backend", &format!("sip:{backend}")]);
    }
    let _gateway = Running(
        gateway
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the sipshard binary"),
    );
    wait_for_listener(ADMIN);

    assert_eq!(get("/healthz"), (200, "ok\n".to_string()));
    assert_eq!(get("/no-such-page").0, 404);

    let (ip, _) = GATEWAY.split_once(':').unwrap();
    let mut caller = Command::new("sipp")
        .arg(GATEWAY)
        .args(["-sf", scenario("uac.xml").to_str().unwrap()])
        .args(["-i", ip, "-p", "16070", "-m", &CALLS.to_string()])
        .args(["-r", "200", "-l", "1000", "-timeout", "60", "-nostdin"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sipp runs");
    // A scrape in the middle of the run parses too, and counts no more
    // than the run will.
    std::thread::sleep(Duration::from_millis(1500));
    let during = scrape();
    assert!(value(&during, "sipshard_requests_received_total{method=INVITE}") <= CALLS);
    assert!(
        value(&during, "sipshard_dialogs_active") > 0,
        "calls are in progress mid-run"
    );

    let (screen, ok) = sipp_screen(&mut caller);
    assert!(ok, "{screen}");
    let count = |label: &str| -> u64 { screen_count(&screen, label) };
    assert_eq!(count("Successful call"), CALLS, "{screen}");
    assert_eq!(count("Failed call"), 0, "{screen}");

    // A busy shard publishes every 5 ms, an idle one every 250 ms.
    std::thread::sleep(Duration::from_millis(600));
    let after = scrape();
    let v = |key: &str| value(&after, key);
    // What the caller sent, and what the gateway passed to the backends.
    for method in ["INVITE", "ACK", "BYE"] {
        assert_eq!(
            v(&format!(
                "sipshard_requests_received_total{{method={method}}}"
            )),
            CALLS,
            "{method} received"
        );
        assert_eq!(
            v(&format!("sipshard_requests_sent_total{{method={method}}}")),
            CALLS,
            "{method} forwarded"
        );
    }
    // 180 and 200 for each INVITE, 200 for each BYE, from the backends;
    // the same back to the caller, plus our own 100 Trying per INVITE.
    assert_eq!(v("sipshard_responses_received_total{class=1xx}"), CALLS);
    assert_eq!(v("sipshard_responses_received_total{class=2xx}"), 2 * CALLS);
    assert_eq!(v("sipshard_responses_sent_total{class=1xx}"), 2 * CALLS);
    assert_eq!(v("sipshard_responses_sent_total{class=2xx}"), 2 * CALLS);
    assert_eq!(v("sipshard_datagrams_received_total"), 6 * CALLS);
    assert_eq!(v("sipshard_datagrams_sent_total"), 7 * CALLS);
    assert_eq!(v("sipshard_local_replies_total"), 0, "nothing was rejected");
    assert_eq!(v("sipshard_transactions_started_total"), 2 * CALLS);
    for reason in [
        "malformed",
        "response_not_ours",
        "handoff_queue_full",
        "send_failed",
        "no_backend",
    ] {
        assert_eq!(
            v(&format!("sipshard_dropped_total{{reason={reason}}}")),
            0,
            "{reason}"
        );
    }
    assert_eq!(v("sipshard_failovers_total"), 0);
    // Every call ended with its BYE: no dialog is left counted.
    assert_eq!(v("sipshard_dialogs_active"), 0);
    for backend in BACKENDS {
        assert_eq!(
            v(&format!("sipshard_backend_up{{backend=sip:{backend}}}")),
            1
        );
        assert_eq!(
            v(&format!(
                "sipshard_backend_active_calls{{backend=sip:{backend}}}"
            )),
            0
        );
        assert!(
            after.contains_key(&format!(
                "sipshard_backend_latency_seconds{{backend=sip:{backend}}}"
            )),
            "round trips to {backend} were measured"
        );
    }
    assert!(v("sipshard_loop_iterations_total") > 0);
    // The latency histogram is copied out about once a second.
    std::thread::sleep(Duration::from_millis(1200));
    let later = scrape();
    assert_eq!(
        value(&later, "sipshard_forward_latency_seconds+Inf"),
        7 * CALLS,
        "one latency sample per datagram sent"
    );
    assert_eq!(
        value(&later, "sipshard_transaction_rtt_seconds+Inf"),
        2 * CALLS,
        "one round trip per INVITE and per BYE forwarded"
    );
    assert_eq!(
        value(&later, "sipshard_transaction_duration_seconds+Inf"),
        2 * CALLS,
        "every INVITE and BYE transaction got its final response"
    );
}
