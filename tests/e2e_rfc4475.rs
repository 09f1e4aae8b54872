//! RFC 4475 over the wire: every torture message is sent by UDP to the real
//! `sipshard` binary from a client socket, with a plain UDP socket as the
//! only backend, and must get the verdict `INDEX.md` names: forwarded to the
//! backend (and nothing back to the client), answered with that status code
//! (and nothing to the backend), or dropped (nothing anywhere).

mod support;

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::Running;

use sipshard::sip::{Limits, Scanner};

const GATEWAY: &str = "127.0.0.1:15160";
const BACKEND: &str = "127.0.0.1:15180";
const CLIENT: &str = "127.0.0.1:15170";

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/rfc4475")
}

/// (file stem, verdict word) for every row of INDEX.md.
fn index() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(dir().join("INDEX.md")).unwrap();
    text.lines()
        .filter(|l| l.starts_with("| ") && l.contains(".sip |"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            let stem = cells[0].trim_end_matches(".sip").to_string();
            let verdict = cells[3].split([' ', ';']).next().unwrap().to_string();
            (stem, verdict)
        })
        .collect()
}

fn receive(socket: &UdpSocket, wait: Duration) -> Option<Vec<u8>> {
    socket.set_read_timeout(Some(wait)).unwrap();
    let mut buf = vec![0u8; 70_000];
    match socket.recv_from(&mut buf) {
        Ok((n, _)) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

#[test]
fn every_torture_message_gets_its_verdict_over_udp() {
    let backend = UdpSocket::bind(BACKEND).unwrap();
    let client = UdpSocket::bind(CLIENT).unwrap();
    let _gateway = Running(
        Command::new(env!("CARGO_BIN_EXE_sipshard"))
            .args([
                "--listen",
                GATEWAY,
                "--shards",
                "2",
                "--backend",
                &format!("sip:{BACKEND}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(400));
    let rows = index();
    assert_eq!(rows.len(), 49);
    let quiet = Duration::from_millis(150);
    let mut failures = Vec::new();
    for (stem, verdict) in rows {
        let datagram = std::fs::read(dir().join(format!("{stem}.sip"))).unwrap();
        client.send_to(&datagram, GATEWAY).unwrap();
        let outcome = match verdict.as_str() {
            // "either" cases are forwarded (README); "parse" rows are dropped responses.
            "forward" | "either" => match receive(&backend, Duration::from_secs(2)) {
                Some(forwarded) => {
                    let mut scanner = Scanner::new(Limits::default());
                    match scanner.scan(&forwarded) {
                        Ok(m)
                            if m.top_via().host == b"127.0.0.1"
                                && m.top_via().port == Some(15160) =>
                        {
                            receive(&client, quiet)
                                .map(|_| "the client also got an answer".to_string())
                        }
                        other => Some(format!("forwarded something odd: {other:?}")),
                    }
                }
                None => Some("nothing reached the backend".to_string()),
            },
            "drop" | "parse" => {
                let mut problem =
                    receive(&backend, quiet).map(|_| "reached the backend".to_string());
                if receive(&client, quiet).is_some() {
                    problem = Some("the client got an answer".to_string());
                }
                problem
            }
            code => match receive(&client, Duration::from_secs(2)) {
                Some(reply) if reply.starts_with(format!("SIP/2.0 {code} ").as_bytes()) => {
                    receive(&backend, quiet).map(|_| "it also reached the backend".to_string())
                }
                Some(reply) => Some(format!(
                    "answered {:?}",
                    String::from_utf8_lossy(&reply[..reply.len().min(40)])
                )),
                None => Some(format!("no {code} came back")),
            },
        };
        if let Some(problem) = outcome {
            failures.push(format!("{stem} ({verdict}): {problem}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
