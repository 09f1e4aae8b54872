//! The floor binary end to end on loopback: a caller socket and two backend
//! sockets around a running `udp-floor`. Ports come from 18000–18099 so as
//! to stay off the ports other load tests use; each test has its own half.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_udp-floor");

/// A socket bound to the first free port of `ports` on 127.0.0.1.
fn bind_in(ports: std::ops::Range<u16>) -> UdpSocket {
    for port in ports.clone() {
        if let Ok(socket) = UdpSocket::bind(("127.0.0.1", port)) {
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("read timeout");
            return socket;
        }
    }
    panic!("no free UDP port in {ports:?}");
}

fn receive(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buffer = vec![0; 65_536];
    let (len, from) = socket.recv_from(&mut buffer).expect("a datagram");
    buffer.truncate(len);
    (buffer, from)
}

fn wait(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("udp-floor did not exit within {timeout:?}");
        }
        sleep(Duration::from_millis(20));
    }
}

/// Starts the relay on a free port of `ports` in front of `backends` and
/// waits for its start-up line; tries the next port if one is taken
/// between our check and its bind. The stderr reader comes back too, so
/// that the pipe stays open while the relay runs.
fn start(ports: std::ops::Range<u16>, backends: &[SocketAddr]) -> (Child, SocketAddr, impl Read) {
    for port in ports {
        if UdpSocket::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        let listen: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut command = Command::new(BIN);
        command.arg("--listen").arg(listen.to_string());
        for backend in backends {
            command.arg("--backend").arg(backend.to_string());
        }
        let mut child = command
            .args(["--batch", "8"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start udp-floor");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let mut line = String::new();
        stderr.read_line(&mut line).expect("read stderr");
        if line.contains("listening on 127.0.0.1:") {
            return (child, listen, stderr);
        }
        let status = wait(&mut child, Duration::from_secs(5));
        assert!(
            line.contains("address in use"),
            "udp-floor failed to start ({status}): {line}"
        );
    }
    panic!("no port for udp-floor");
}

#[test]
fn relays_both_ways_and_counts_on_sigterm() {
    let backend_a = bind_in(18000..18050);
    let backend_b = bind_in(18000..18050);
    let backends = [
        backend_a.local_addr().expect("addr"),
        backend_b.local_addr().expect("addr"),
    ];
    let caller = UdpSocket::bind("127.0.0.1:0").expect("caller socket");
    caller
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let (mut child, relay, _stderr) = start(18000..18050, &backends);

    // A reply before any caller has spoken has nowhere to go: dropped.
    backend_a.send_to(b"early reply", relay).expect("send");
    sleep(Duration::from_millis(100));

    // Caller to relay: the backends in turn, bytes untouched, from the relay.
    let invite = b"INVITE sip:bob@example.com SIP/2.0\r\nCall-ID: 1\r\n\r\n";
    caller.send_to(invite, relay).expect("send");
    assert_eq!(receive(&backend_a), (invite.to_vec(), relay));
    let bye = b"BYE sip:bob@example.com SIP/2.0\r\nCall-ID: 2\r\n\r\n";
    caller.send_to(bye, relay).expect("send");
    assert_eq!(receive(&backend_b), (bye.to_vec(), relay));
    // The largest UDP payload goes through whole.
    let large: Vec<u8> = (0..65_507).map(|i| (i % 251) as u8).collect();
    caller.send_to(&large, relay).expect("send");
    assert_eq!(receive(&backend_a), (large, relay));

    // Backends to relay: back to the caller, from the relay.
    let ok = b"SIP/2.0 200 OK\r\nCall-ID: 2\r\n\r\n";
    backend_b.send_to(ok, relay).expect("send");
    assert_eq!(receive(&caller), (ok.to_vec(), relay));
    let trying = b"SIP/2.0 100 Trying\r\nCall-ID: 1\r\n\r\n";
    backend_a.send_to(trying, relay).expect("send");
    assert_eq!(receive(&caller), (trying.to_vec(), relay));

    // SAFETY: kill only sends a signal to the child we started.
    #[allow(unsafe_code)]
    let killed = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(killed, 0, "kill failed");
    let status = wait(&mut child, Duration::from_secs(5));
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("read stdout");
    assert!(status.success(), "exit status {status}, stdout {stdout:?}");
    assert_eq!(stdout, "udp-floor: received=6 sent=5 dropped=1\n");
}

#[test]
fn refuses_an_address_in_use_and_a_bad_address() {
    let taken = bind_in(18050..18100);
    let taken = taken.local_addr().expect("addr");
    let output = Command::new(BIN)
        .args(["--listen", &taken.to_string()])
        .args(["--backend", "127.0.0.1:18099"])
        .output()
        .expect("run udp-floor");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!("cannot listen on {taken}: address in use")),
        "stderr: {stderr}"
    );

    let output = Command::new(BIN)
        .args(["--listen", "127.0.0.1:18098", "--backend", "localhost:5080"])
        .output()
        .expect("run udp-floor");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("`localhost:5080` is not an IP:PORT address"),
        "stderr: {stderr}"
    );
}
