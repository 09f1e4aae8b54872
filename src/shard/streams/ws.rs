//! SIP over WebSocket (RFC 7118) on a connection: tungstenite's handshake
//! and frame codec, driven from the shard's loop without owning the
//! socket. Bytes read from the connection (after TLS for `wss:`) go into
//! a [`Pipe`]; tungstenite reads them from it and writes what it sends
//! (the handshake's response, frames, pongs, the close) into it, and the
//! connection takes those out for the socket or the TLS session.
//!
//! One SIP message per WebSocket message, text or binary. The upgrade must
//! ask for the `sip` subprotocol (else 400) and, when origins are
//! configured, come from one of them (else 403). Client frames must be
//! masked; frames and messages are bounded ([`WsConfig`]).

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use tungstenite::handshake::server::{ErrorResponse, Request, Response, ServerHandshake};
use tungstenite::handshake::{HandshakeError, MidHandshake};
use tungstenite::protocol::{WebSocket, WebSocketConfig};
use tungstenite::Message;

/// The `[websocket]` settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WsConfig {
    /// `Origin` values an upgrade may carry; empty: any.
    pub origins: Arc<[String]>,
    /// One SIP message, reassembled from its fragments.
    pub message_bytes_max: usize,
    /// One frame.
    pub frame_bytes_max: usize,
}

impl Default for WsConfig {
    fn default() -> WsConfig {
        WsConfig {
            origins: Arc::from([]),
            message_bytes_max: 65_536,
            frame_bytes_max: 65_536,
        }
    }
}

/// The bytes between the connection and tungstenite: what came in, not
/// read yet, and what tungstenite wrote, not sent yet.
#[derive(Debug, Default)]
pub(super) struct Pipe {
    input: VecDeque<u8>,
    output: Vec<u8>,
}

impl io::Read for Pipe {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        io::Read::read(&mut self.input, out)
    }
}

impl io::Write for Pipe {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Checks an upgrade: the `sip` subprotocol, an allowed origin. A refusal
/// leaves its status in `refused` (tungstenite drops its own answer with
/// the handshake, so the session writes one).
struct Upgrade {
    origins: Arc<[String]>,
    refused: Arc<AtomicU16>,
}

impl tungstenite::handshake::server::Callback for Upgrade {
    fn on_request(
        self,
        request: &Request,
        mut response: Response,
    ) -> Result<Response, ErrorResponse> {
        let headers = request.headers();
        let sip = headers
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim().eq_ignore_ascii_case("sip"));
        if !sip {
            self.refused.store(400, Ordering::Relaxed);
            return Err(refusal(400));
        }
        let origin = headers.get("origin").and_then(|v| v.to_str().ok());
        if !self.origins.is_empty() && !origin.is_some_and(|o| self.origins.iter().any(|a| a == o))
        {
            self.refused.store(403, Ordering::Relaxed);
            return Err(refusal(403));
        }
        response.headers_mut().insert(
            "sec-websocket-protocol",
            tungstenite::http::HeaderValue::from_static("sip"),
        );
        Ok(response)
    }
}

fn refusal(code: u16) -> ErrorResponse {
    let mut response = ErrorResponse::new(None);
    *response.status_mut() = tungstenite::http::StatusCode::from_u16(code)
        .unwrap_or(tungstenite::http::StatusCode::BAD_REQUEST);
    response
}

/// The answer to a refused upgrade: 403 for an origin not allowed, else
/// 400 (no `sip` subprotocol, not a WebSocket upgrade at all).
fn refusal_text(code: u16) -> &'static [u8] {
    match code {
        403 => b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        _ => b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    }
}

enum State {
    Handshaking(MidHandshake<ServerHandshake<Pipe, Upgrade>>),
    Open(WebSocket<Pipe>),
    /// Between states, or after a failure.
    Gone,
}

/// What a WebSocket connection gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum WsEnd {
    /// The upgrade was refused (its HTTP answer is in the output).
    Refused,
    /// A protocol error (unmasked, oversize, bad frames) or a close.
    Closed,
}

/// A connection's WebSocket session.
pub(super) struct WsSession {
    state: State,
    refused: Arc<AtomicU16>,
    /// The answer to a refused upgrade, until taken.
    refusal: &'static [u8],
    /// Bytes taken in since the last whole message or control frame: a
    /// message begun and not finished (fragments that never end), which
    /// the connection's message deadline bounds.
    partial: usize,
}

impl WsSession {
    pub(super) fn new(config: &WsConfig) -> WsSession {
        let mut ws = WebSocketConfig::default();
        ws.read_buffer_size = 4096;
        ws.write_buffer_size = 0;
        ws.max_write_buffer_size = config.message_bytes_max * 4;
        ws.max_message_size = Some(config.message_bytes_max);
        ws.max_frame_size = Some(config.frame_bytes_max);
        ws.accept_unmasked_frames = false;
        let refused = Arc::new(AtomicU16::new(0));
        let upgrade = Upgrade {
            origins: config.origins.clone(),
            refused: refused.clone(),
        };
        let state = match tungstenite::accept_hdr_with_config(Pipe::default(), upgrade, Some(ws)) {
            Err(HandshakeError::Interrupted(mid)) => State::Handshaking(mid),
            Ok(open) => State::Open(open),
            Err(HandshakeError::Failure(_)) => State::Gone,
        };
        WsSession {
            state,
            refused,
            refusal: b"",
            partial: 0,
        }
    }

    /// Bytes of a message begun and not finished (0 between messages).
    pub(super) fn partial(&self) -> usize {
        match self.state {
            State::Open(_) => self.partial,
            _ => 0,
        }
    }

    /// Whether the upgrade is still under way.
    pub(super) fn is_handshaking(&self) -> bool {
        matches!(self.state, State::Handshaking(_))
    }

    fn pipe(&mut self) -> Option<&mut Pipe> {
        match &mut self.state {
            State::Handshaking(mid) => Some(mid.get_mut().get_mut()),
            State::Open(ws) => Some(ws.get_mut()),
            State::Gone => None,
        }
    }

    /// Takes bytes from the connection and hands each SIP message they
    /// complete to `message`; `Err` when the connection must close.
    pub(super) fn take_in(
        &mut self,
        bytes: &[u8],
        mut message: impl FnMut(&[u8]),
    ) -> Result<(), WsEnd> {
        if let Some(pipe) = self.pipe() {
            pipe.input.extend(bytes);
        }
        self.partial = self.partial.saturating_add(bytes.len());
        if let State::Handshaking(_) = self.state {
            self.state = match std::mem::replace(&mut self.state, State::Gone) {
                State::Handshaking(mid) => match mid.handshake() {
                    Ok(open) => {
                        // The upgrade's bytes are no message begun.
                        self.partial = 0;
                        State::Open(open)
                    }
                    Err(HandshakeError::Interrupted(mid)) => State::Handshaking(mid),
                    Err(HandshakeError::Failure(error)) => {
                        tracing::debug!(%error, "WebSocket upgrade refused");
                        self.refusal = refusal_text(self.refused.load(Ordering::Relaxed));
                        return Err(WsEnd::Refused);
                    }
                },
                other => other,
            };
        }
        let State::Open(ws) = &mut self.state else {
            return Ok(());
        };
        loop {
            let read = ws.read();
            if read.is_ok() {
                self.partial = 0;
            }
            match read {
                Ok(Message::Text(text)) => message(text.as_bytes()),
                Ok(Message::Binary(bytes)) => message(&bytes),
                // tungstenite queues the pong itself; a pong or a frame
                // needs nothing from us.
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Ok(Message::Close(_)) => return Err(WsEnd::Closed),
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(())
                }
                Err(error) => {
                    tracing::debug!(%error, "WebSocket closed");
                    return Err(WsEnd::Closed);
                }
            }
        }
    }

    /// Sends one SIP message as one WebSocket message: text when it is
    /// UTF-8 (as SIP usually is), else binary.
    pub(super) fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let State::Open(ws) = &mut self.state else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let message = match std::str::from_utf8(bytes) {
            Ok(text) => Message::text(text),
            Err(_) => Message::binary(bytes.to_vec()),
        };
        ws.send(message).map_err(io::Error::other)
    }

    /// What tungstenite wrote for the peer since the last call (the
    /// upgrade's answer, frames, pongs): for the socket or TLS.
    pub(super) fn take_output(&mut self, into: &mut Vec<u8>) {
        if let State::Open(ws) = &mut self.state {
            // Queued control frames (pongs) go out with a flush.
            let _ = ws.flush();
        }
        if let Some(pipe) = self.pipe() {
            into.append(&mut pipe.output);
        }
        into.extend_from_slice(std::mem::take(&mut self.refusal));
    }
}

#[cfg(test)]
mod tests;
