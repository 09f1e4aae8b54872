//! End to end over WebSocket (RFC 7118): the real `sipshard` binary with a
//! `ws:` listener between a WebSocket SIP client (tungstenite, as a browser
//! library would speak it: the `sip` subprotocol, masked text frames) and
//! SIPp backends over UDP. Calls go through: INVITE, 180 and 200 back over
//! the client's WebSocket, then ACK and BYE along the Record-Route, on both
//! I/O loops and two shards (the connection lands on one shard, half the
//! calls belong to the other), and over a secure WebSocket (`wss:`, the
//! TLS certificate of `--tls-cert`). Upgrades without the `sip`
//! subprotocol get 400 and are counted.
//!
//! Needs `sipp` (Debian `sip-tester`), which `.ci/run` installs. Ports
//! 31000-31099 only; the runs take a lock and go one at a time.

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use support::{scenario, scrape, tempdir, value, wait_for_listener, Running};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

static SERIAL: Mutex<()> = Mutex::new(());

const GATEWAY: &str = "127.0.0.1:31000";
const WS: &str = "127.0.0.1:31001";
const WSS: &str = "127.0.0.1:31002";
const ADMIN: &str = "127.0.0.1:31090";
const BACKENDS: [&str; 2] = ["127.0.0.1:31080", "127.0.0.1:31081"];
const CALLS: usize = 40;

fn start_backend(address: &str, dir: &Path) -> Running {
    let (ip, port) = address.split_once(':').unwrap();
    let child = Command::new("sipp")
        .args(["-sf", scenario("uas.xml").to_str().unwrap()])
        .args(["-i", ip, "-p", port, "-t", "u1", "-nostdin"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sipp is installed (Debian package sip-tester)");
    Running(child)
}

fn start_gateway(io: &str, tls: Option<&support::tls::Pki>) -> Running {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sipshard"));
    command.args(["--listen", GATEWAY, "--listen", &format!("ws:{WS}")]);
    if let Some(pki) = tls {
        command.args(["--listen", &format!("wss:{WSS}")]);
        command.arg("--tls-cert").arg(&pki.server.chain);
        command.arg("--tls-key").arg(&pki.server.key);
    }
    command.args(["--shards", "2", "--io", io, "--admin", ADMIN]);
    for backend in BACKENDS {
        command.args(["--backend", &format!("sip:{backend}")]);
    }
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the sipshard binary");
    let gateway = Running(child);
    wait_for_listener(ADMIN);
    wait_for_listener(WS);
    gateway
}

/// A WebSocket to the gateway asking for `protocol`.
fn connect(protocol: Option<&str>) -> Result<WebSocket<TcpStream>, tungstenite::Error> {
    let mut request = format!("ws://{WS}/").into_client_request()?;
    if let Some(p) = protocol {
        request
            .headers_mut()
            .insert("sec-websocket-protocol", p.parse().unwrap());
    }
    let stream = TcpStream::connect(WS)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    tungstenite::client(request, stream)
        .map(|(ws, _)| ws)
        .map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => tungstenite::Error::ConnectionClosed,
        })
}

/// A request of call `call`; in the dialog (`dialog`: the remote target,
/// the route set and the To tag) or out of it.
fn request(method: &str, call: usize, cseq: u32, dialog: Option<&Dialog>) -> String {
    let (target, route, to_tag) = match dialog {
        Some(d) => (
            d.target.clone(),
            d.routes.iter().map(|r| format!("Route: {r}\r\n")).collect(),
            d.to_tag.clone(),
        ),
        None => (
            format!("sip:service@{GATEWAY}"),
            String::new(),
            String::new(),
        ),
    };
    format!(
        "{method} {target} SIP/2.0\r\n\
Via: SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bK-{call}-{cseq}\r\n\
{route}Max-Forwards: 70\r\n\
From: <sip:alice@example.com>;tag=a{call}\r\n\
To: <sip:service@{GATEWAY}>{to_tag}\r\n\
Call-ID: ws-call-{call}@example.com\r\n\
CSeq: {cseq} {method}\r\n\
Contact: <sip:alice@df7jal23ls0d.invalid;transport=ws>\r\n\
Content-Length: 0\r\n\r\n"
    )
}

/// The next SIP message the gateway sends down the WebSocket.
fn next<S: Read + Write>(ws: &mut WebSocket<S>) -> String {
    loop {
        match ws.read().expect("a message from the gateway") {
            Message::Text(text) => return text.as_str().to_string(),
            Message::Binary(bytes) => return String::from_utf8_lossy(&bytes).into_owned(),
            _ => continue,
        }
    }
}

/// Reads until a final response; it, with the Record-Route values it carries.
fn final_response<S: Read + Write>(ws: &mut WebSocket<S>) -> (u16, String) {
    loop {
        let message = next(ws);
        let code: u16 = message[8..11].parse().expect("a response");
        if code >= 200 {
            return (code, message);
        }
    }
}

fn header_values(message: &str, name: &str) -> Vec<String> {
    message
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(',').map(|s| s.trim().to_string()))
        .collect()
}

/// What the caller keeps of a dialog (RFC 3261 §12.1.2).
struct Dialog {
    /// The 200's Contact.
    target: String,
    /// Its Record-Route, as the caller's route set (the order it came in).
    routes: Vec<String>,
    to_tag: String,
}

impl Dialog {
    fn of(ok: &str) -> Dialog {
        let contact = header_values(ok, "Contact");
        let target = contact
            .first()
            .and_then(|c| c.split_once('<'))
            .and_then(|(_, rest)| rest.split_once('>'))
            .map(|(uri, _)| uri.to_string())
            .expect("a Contact");
        let to_tag = header_values(ok, "To")
            .first()
            .and_then(|t| t.split_once(";tag=").map(|(_, tag)| format!(";tag={tag}")))
            .expect("a To tag");
        Dialog {
            target,
            routes: header_values(ok, "Record-Route"),
            to_tag,
        }
    }
}

/// One call over the WebSocket: INVITE, its 200, ACK and BYE to the
/// Contact along the Record-Route, the BYE's 200.
fn call<S: Read + Write>(ws: &mut WebSocket<S>, n: usize) {
    ws.send(Message::text(request("INVITE", n, 1, None)))
        .unwrap();
    let (code, ok) = final_response(ws);
    assert_eq!(code, 200, "{ok}");
    let dialog = Dialog::of(&ok);
    assert!(
        dialog.routes.iter().any(|r| r.contains("transport=ws")),
        "our WebSocket side is recorded: {ok}"
    );
    ws.send(Message::text(request("ACK", n, 1, Some(&dialog))))
        .unwrap();
    ws.send(Message::text(request("BYE", n, 2, Some(&dialog))))
        .unwrap();
    let (code, bye) = final_response(ws);
    assert_eq!(code, 200, "{bye}");
}

fn calls_succeed(io: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir(&format!("ws-{io}"));
    let _backends: Vec<Running> = BACKENDS.iter().map(|b| start_backend(b, &dir)).collect();
    let _gateway = start_gateway(io, None);
    let mut ws = connect(Some("sip")).expect("the upgrade succeeds");
    for n in 0..CALLS {
        call(&mut ws, n);
    }
    let refused = connect(None);
    assert!(
        matches!(&refused, Err(tungstenite::Error::Http(r)) if r.status() == 400),
        "{refused:?}"
    );
    // The shards publish their counters as they go: wait for the refusal's.
    let refused_key = "sipshard_ws_upgrades_total{result=refused}";
    let mut sums = scrape(ADMIN);
    for _ in 0..40 {
        if value(&sums, refused_key) > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        sums = scrape(ADMIN);
    }
    assert_eq!(value(&sums, "sipshard_ws_upgrades_total{result=ok}"), 1);
    assert_eq!(value(&sums, refused_key), 1);
}

/// A secure WebSocket to the gateway's wss: listener, trusting `pki`'s CA.
fn connect_secure(
    pki: &support::tls::Pki,
) -> WebSocket<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(pki.ca_der.clone()))
        .unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::from(std::net::IpAddr::from(Ipv4Addr::LOCALHOST));
    let session = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let socket = TcpStream::connect(WSS).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let stream = rustls::StreamOwned::new(session, socket);
    let mut request = format!("wss://{WSS}/").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "sip".parse().unwrap());
    match tungstenite::client(request, stream) {
        Ok((ws, _)) => ws,
        Err(_) => panic!("the wss: upgrade failed"),
    }
}

#[test]
fn calls_over_a_secure_websocket() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir("wss");
    let pki = support::tls::Pki::make(&dir);
    let _backends: Vec<Running> = BACKENDS.iter().map(|b| start_backend(b, &dir)).collect();
    let _gateway = start_gateway("auto", Some(&pki));
    wait_for_listener(WSS);
    let mut ws = connect_secure(&pki);
    for n in 0..CALLS {
        call(&mut ws, 1000 + n);
    }
}

#[test]
fn calls_over_a_websocket_on_the_ring() {
    calls_succeed("auto");
}

#[test]
fn calls_over_a_websocket_on_epoll() {
    calls_succeed("epoll");
}
