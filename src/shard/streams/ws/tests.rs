//! The WebSocket session against tungstenite's client, in memory: the
//! upgrade, its refusals, messages both ways, and the bounds.

use std::sync::Arc;

use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::WebSocket;
use tungstenite::Message;

use super::{Pipe, WsConfig, WsEnd, WsSession};

const OPTIONS: &str = "OPTIONS sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/WS x.invalid;branch=z9hG4bK1\r\nContent-Length: 0\r\n\r\n";

/// Moves the client's bytes to the session and back until neither has more.
fn exchange(
    client: &mut Pipe,
    server: &mut WsSession,
    got: &mut Vec<Vec<u8>>,
) -> Result<(), WsEnd> {
    let bytes: Vec<u8> = std::mem::take(&mut client.output);
    let result = server.take_in(&bytes, |m| got.push(m.to_vec()));
    let mut back = Vec::new();
    server.take_output(&mut back);
    client.input.extend(back);
    result
}

/// An upgrade request with `protocol` and `origin`, as a browser sends it.
fn request(
    protocol: Option<&str>,
    origin: Option<&str>,
) -> tungstenite::handshake::client::Request {
    let mut request = "ws://127.0.0.1:8080/".into_client_request().unwrap();
    if let Some(p) = protocol {
        request
            .headers_mut()
            .insert("sec-websocket-protocol", p.parse().unwrap());
    }
    if let Some(o) = origin {
        request.headers_mut().insert("origin", o.parse().unwrap());
    }
    request
}

/// A client upgraded against `server`, or the session's refusal and the
/// bytes it answered with.
fn upgrade(
    server: &mut WsSession,
    protocol: Option<&str>,
    origin: Option<&str>,
) -> Result<WebSocket<Pipe>, (WsEnd, Vec<u8>)> {
    let mut got = Vec::new();
    let mut mid = match tungstenite::client::client(request(protocol, origin), Pipe::default()) {
        Err(HandshakeError::Interrupted(mid)) => mid,
        other => panic!("the client wants an answer first: {:?}", other.is_ok()),
    };
    if let Err(end) = exchange(mid.get_mut().get_mut(), server, &mut got) {
        let answer: Vec<u8> = mid.get_mut().get_mut().input.drain(..).collect();
        return Err((end, answer));
    }
    match mid.handshake() {
        Ok((ws, _)) => Ok(ws),
        Err(e) => panic!(
            "the client saw no upgrade: {}",
            matches!(e, HandshakeError::Failure(_))
        ),
    }
}

#[test]
fn a_sip_upgrade_carries_one_message_a_message_both_ways() {
    let mut server = WsSession::new(&WsConfig::default());
    let mut client = upgrade(&mut server, Some("sip"), None).unwrap();
    assert!(!server.is_handshaking());
    client.send(Message::text(OPTIONS)).unwrap();
    client
        .send(Message::binary(OPTIONS.as_bytes().to_vec()))
        .unwrap();
    let mut got = Vec::new();
    exchange(client.get_mut(), &mut server, &mut got).unwrap();
    assert_eq!(got, vec![OPTIONS.as_bytes().to_vec(); 2]);
    server
        .send(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    exchange(client.get_mut(), &mut server, &mut got).unwrap();
    match client.read().unwrap() {
        Message::Text(text) => assert!(text.as_str().starts_with("SIP/2.0 200 OK")),
        other => panic!("{other:?}"),
    }
    // A ping gets its pong; a close ends the connection.
    client.send(Message::Ping(b"p".to_vec().into())).unwrap();
    exchange(client.get_mut(), &mut server, &mut got).unwrap();
    assert!(matches!(client.read().unwrap(), Message::Pong(_)));
    client.close(None).unwrap();
    assert_eq!(
        exchange(client.get_mut(), &mut server, &mut got),
        Err(WsEnd::Closed)
    );
}

#[test]
fn an_upgrade_without_the_sip_subprotocol_gets_400() {
    let mut server = WsSession::new(&WsConfig::default());
    let (end, answer) = upgrade(&mut server, None, None).err().unwrap();
    assert_eq!(end, WsEnd::Refused);
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let mut server = WsSession::new(&WsConfig::default());
    let (_, answer) = upgrade(&mut server, Some("chat"), None).err().unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 400"));
}

#[test]
fn origins_when_listed_are_enforced() {
    let config = WsConfig {
        origins: Arc::from(["https://phone.example.com".to_string()]),
        ..WsConfig::default()
    };
    let mut server = WsSession::new(&config);
    let (end, answer) = upgrade(&mut server, Some("sip"), Some("https://evil.example"))
        .err()
        .unwrap();
    assert_eq!(end, WsEnd::Refused);
    assert!(answer.starts_with(b"HTTP/1.1 403"));
    let mut server = WsSession::new(&config);
    assert!(upgrade(&mut server, Some("sip"), Some("https://phone.example.com")).is_ok());
}

#[test]
fn unmasked_and_oversize_frames_close_the_connection() {
    let config = WsConfig {
        message_bytes_max: 1024,
        frame_bytes_max: 1024,
        ..WsConfig::default()
    };
    let mut server = WsSession::new(&config);
    let mut client = upgrade(&mut server, Some("sip"), None).unwrap();
    client.send(Message::text("x".repeat(4096))).unwrap();
    let mut got = Vec::new();
    assert_eq!(
        exchange(client.get_mut(), &mut server, &mut got),
        Err(WsEnd::Closed)
    );
    assert!(got.is_empty());
    // An unmasked text frame (what only a server may send), "hi".
    let mut server = WsSession::new(&config);
    let mut client = upgrade(&mut server, Some("sip"), None).unwrap();
    client
        .get_mut()
        .output
        .extend_from_slice(&[0x81, 0x02, b'h', b'i']);
    assert_eq!(
        exchange(client.get_mut(), &mut server, &mut got),
        Err(WsEnd::Closed)
    );
    assert!(got.is_empty());
}

#[test]
fn a_message_begun_counts_as_partial_until_it_ends() {
    let mut server = WsSession::new(&WsConfig::default());
    let mut client = upgrade(&mut server, Some("sip"), None).unwrap();
    assert_eq!(server.partial(), 0);
    // A first fragment (FIN clear, text, masked, 2 bytes "ab"), and no more.
    client
        .get_mut()
        .output
        .extend_from_slice(&[0x01, 0x82, 0, 0, 0, 0, b'a', b'b']);
    let mut got = Vec::new();
    exchange(client.get_mut(), &mut server, &mut got).unwrap();
    assert!(got.is_empty());
    assert!(
        server.partial() > 0,
        "fragments that never end are a message begun"
    );
    // Its last fragment (FIN, continuation, "c") ends it.
    client
        .get_mut()
        .output
        .extend_from_slice(&[0x80, 0x81, 0, 0, 0, 0, b'c']);
    exchange(client.get_mut(), &mut server, &mut got).unwrap();
    assert_eq!(got, vec![b"abc".to_vec()]);
    assert_eq!(server.partial(), 0);
}

#[test]
fn a_message_split_anyhow_arrives_whole() {
    let mut server = WsSession::new(&WsConfig::default());
    let mut client = upgrade(&mut server, Some("sip"), None).unwrap();
    client.send(Message::text(OPTIONS)).unwrap();
    let bytes: Vec<u8> = std::mem::take(&mut client.get_mut().output);
    let mut got = Vec::new();
    for byte in bytes.chunks(3) {
        server.take_in(byte, |m| got.push(m.to_vec())).unwrap();
    }
    assert_eq!(got, vec![OPTIONS.as_bytes().to_vec()]);
}
