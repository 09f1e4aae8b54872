//! RFC 4475 over the wire: every torture message is sent by UDP to the real
//! `sipshard` binary from a client socket, with one backend that listens on
//! UDP and TCP (as every SIP element does, RFC 3261 §18), and must get the
//! verdict `INDEX.md` names: forwarded to the backend (which answers 404,
//! ending the transaction, so nothing is retransmitted), answered with that
//! status code (and nothing to the backend), or dropped (nothing anywhere).
//! The two over 1,300 bytes (`longreq`, `mpart01`) reach the backend over
//! TCP (§18.1.1), and its 404 goes back on that connection.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;
use std::time::Instant;

use support::Running;

use sipshard::sip::{HeaderName, Limits, Scanner};

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

/// The backend: a UDP socket and a TCP listener on one port, and the
/// connections the gateway opened to it.
struct Backend {
    udp: UdpSocket,
    tcp: TcpListener,
    connections: Vec<TcpStream>,
    /// The connection the last message came over; `None`: UDP.
    last: Option<usize>,
}

impl Backend {
    fn bind() -> Backend {
        let tcp = TcpListener::bind(BACKEND).unwrap();
        tcp.set_nonblocking(true).unwrap();
        let udp = UdpSocket::bind(BACKEND).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(10)))
            .unwrap();
        Backend {
            udp,
            tcp,
            connections: Vec::new(),
            last: None,
        }
    }

    /// The next message over either transport (one read is one message:
    /// the gateway writes each whole, and these are far apart).
    fn receive(&mut self, wait: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + wait;
        let mut buf = vec![0u8; 70_000];
        while Instant::now() < deadline {
            if let Ok((stream, _)) = self.tcp.accept() {
                stream
                    .set_read_timeout(Some(Duration::from_millis(10)))
                    .unwrap();
                self.connections.push(stream);
            }
            for (i, stream) in self.connections.iter_mut().enumerate() {
                if let Ok(n @ 1..) = stream.read(&mut buf) {
                    self.last = Some(i);
                    return Some(buf[..n].to_vec());
                }
            }
            if let Ok((n, _)) = self.udp.recv_from(&mut buf) {
                self.last = None;
                return Some(buf[..n].to_vec());
            }
        }
        None
    }

    /// Answers over the transport the last message came over.
    fn reply(&mut self, bytes: &[u8]) {
        match self.last {
            Some(i) => self.connections[i].write_all(bytes).unwrap(),
            None => {
                self.udp.send_to(bytes, GATEWAY).unwrap();
            }
        }
    }
}

/// The next message that is not the gateway's ACK for a 404 (hop by hop).
fn backend_receive(backend: &mut Backend, wait: Duration) -> Option<Vec<u8>> {
    loop {
        let message = backend.receive(wait)?;
        if !message.starts_with(b"ACK ") {
            return Some(message);
        }
    }
}

/// The next datagram that is not a 100 Trying.
fn client_receive(socket: &UdpSocket, wait: Duration) -> Option<Vec<u8>> {
    loop {
        let datagram = receive(socket, wait)?;
        if !datagram.starts_with(b"SIP/2.0 100 ") {
            return Some(datagram);
        }
    }
}

/// The backend's answer to a forwarded request: 404, with the Vias, From,
/// To (tagged), Call-ID and CSeq copied, so that the transaction ends.
fn not_found(request: &sipshard::sip::Message<'_>) -> Vec<u8> {
    let mut out = b"SIP/2.0 404 Not Found\r\n".to_vec();
    for header in request.headers() {
        let name: &[u8] = match header.name {
            HeaderName::Via => b"Via",
            HeaderName::From => b"From",
            HeaderName::To => b"To",
            HeaderName::CallId => b"Call-ID",
            HeaderName::CSeq => b"CSeq",
            _ => continue,
        };
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(header.value);
        if header.name == HeaderName::To && request.to().tag.is_none() {
            out.extend_from_slice(b";tag=nf");
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    out
}

#[test]
fn every_torture_message_gets_its_verdict_over_udp() {
    let mut backend = Backend::bind();
    let client = UdpSocket::bind(CLIENT).unwrap();
    let _gateway = Running(
        Command::new(env!("CARGO_BIN_EXE_sipshard"))
            .args([
                "--listen",
                GATEWAY,
                "--listen",
                &format!("tcp:{GATEWAY}"),
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
            "forward" | "either" => match backend_receive(&mut backend, Duration::from_secs(2)) {
                Some(forwarded) => {
                    let mut scanner = Scanner::new(Limits::default());
                    match scanner.scan(&forwarded) {
                        // Our Via names the gateway's host and the port of
                        // the shard that sent it (its own socket).
                        Ok(m)
                            if m.top_via().host == b"127.0.0.1"
                                && m.top_via().branch.is_some_and(|b| b.len() == 40) =>
                        {
                            backend.reply(&not_found(&m));
                            // Its answers go where its Via says (RFC 3261
                            // §18.2.2): this socket hears at most the 404
                            // (when the Via asks for rport), never another.
                            client_receive(&client, quiet)
                                .filter(|answer| !answer.starts_with(b"SIP/2.0 404 "))
                                .map(|_| "the client socket got another answer".to_string())
                        }
                        other => Some(format!("forwarded something odd: {other:?}")),
                    }
                }
                None => Some("nothing reached the backend".to_string()),
            },
            "drop" | "parse" => {
                let mut problem =
                    backend_receive(&mut backend, quiet).map(|_| "reached the backend".to_string());
                if client_receive(&client, quiet).is_some() {
                    problem = Some("the client got an answer".to_string());
                }
                problem
            }
            code => match client_receive(&client, Duration::from_secs(2)) {
                Some(reply) if reply.starts_with(format!("SIP/2.0 {code} ").as_bytes()) => {
                    backend_receive(&mut backend, quiet)
                        .map(|_| "it also reached the backend".to_string())
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
