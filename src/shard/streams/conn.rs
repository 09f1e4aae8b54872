//! One connection: its socket, and its session: the framing, the TLS
//! state when it has one, and the bytes queued toward it.
//!
//! Bytes come in from the socket (epoll: `read`) or from a buffer the ring
//! filled (io_uring: `received`); both go through one [`Session::take_in`].
//! Bytes go out by `write` (epoll: [`Conn::flush`]) or by a `Send` the ring
//! runs from `inflight`, which nothing touches until it completes
//! ([`Conn::ring_send`], [`Conn::ring_sent`]).

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

pub(super) use super::ws::WsEnd;
use super::ws::WsSession;
use super::StreamConfig;
use crate::sip::{Deframer, Frame, Peer, StreamFault, Transport};

/// What became of a connection after it was serviced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Read {
    Open,
    /// The peer closed it or reset it.
    Closed,
    /// Its byte stream cannot be framed: it must close.
    Fault(StreamFault),
    /// An outgoing connection that never came up.
    Refused,
    /// The TLS handshake failed: a certificate not trusted, no common
    /// version or cipher, a client without the certificate mutual TLS asks.
    HandshakeFailed,
    /// A TLS error once the handshake was done (a bad record, an alert).
    TlsBroken,
    /// The WebSocket upgrade was refused, or the WebSocket closed.
    Ws(WsEnd),
}

/// What the framing gave.
pub(super) enum Arrival<'a> {
    Message(&'a [u8]),
    /// A keep-alive ping, already answered with a pong.
    Ping,
    /// The TLS handshake completed.
    Secured,
    /// The WebSocket upgrade completed.
    Upgraded,
}

/// Why a connection is past its time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Expiry {
    Idle,
    SlowMessage,
    Connect,
    /// A TLS handshake not done within `handshake_timeout`.
    Handshake,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SendError {
    /// More than the queue bound waits for a slow reader.
    Backlog,
    Broken,
}

/// A pong (RFC 5626 §4.4.1).
const PONG: &[u8] = b"\r\n";
/// An idle connection's framing buffer goes back after this long.
const RELEASE_AFTER: Duration = Duration::from_secs(1);
/// A send queue keeps up to this much room between turns.
const KEEP_QUEUE_BYTES: usize = 64 << 10;

pub(super) struct Conn {
    stream: TcpStream,
    pub(super) remote: SocketAddr,
    pub(super) transport: Transport,
    /// We opened it (to a backend), rather than accepted it.
    pub(super) outgoing: bool,
    connecting: bool,
    session: Session,
    opened: Instant,
    last_active: Instant,
    /// When the message now being read began.
    message_since: Option<Instant>,
    /// io_uring: a multishot receive is armed on the socket.
    pub(super) receiving: bool,
}

/// Everything between the socket and the messages: framing, TLS, queues.
struct Session {
    /// The TLS session of a `tls:` connection: the socket carries its
    /// records, the deframer its plaintext.
    tls: Option<Box<rustls::Connection>>,
    /// The WebSocket of a `ws:` or `wss:` connection: it takes the bytes
    /// (TLS's plaintext for `wss:`) and gives one SIP message a message;
    /// the deframer is not used.
    ws: Option<Box<WsSession>>,
    deframer: Deframer,
    /// Bytes for the socket not written yet, from `queued_from` on (TLS:
    /// records rustls made, under io_uring; rustls holds them under epoll).
    queue: Vec<u8>,
    queued_from: usize,
    /// io_uring: the bytes a `Send` in flight reads, from `inflight_from`;
    /// `Some` while it is in flight.
    inflight: Option<Vec<u8>>,
    inflight_from: usize,
}

/// A buffer the ring filled, read like a socket that would block at its end.
struct Filled<'a>(&'a [u8]);

impl io::Read for Filled<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.0.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.0.len().min(out.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

impl Conn {
    /// `tls`: the session of a connection accepted on a `tls:` or `wss:`
    /// listener; `transport` the listener's.
    pub(super) fn accepted(
        stream: TcpStream,
        (remote, transport): (SocketAddr, Transport),
        tls: Option<rustls::Connection>,
        config: &StreamConfig,
        now: Instant,
    ) -> Conn {
        // Accepted sockets do not inherit O_NONBLOCK; a failure here
        // would only make reads block, so it is not expected.
        let _ = stream.set_nonblocking(true);
        let _ = stream.set_nodelay(true);
        let mut conn = Conn::new(stream, remote, config, now, false).secured(tls, config);
        if matches!(transport, Transport::Ws | Transport::Wss) {
            conn.session.ws = Some(Box::new(WsSession::new(&config.websocket)));
        }
        conn.transport = transport;
        conn
    }

    /// `tls`: the client session toward a TLS backend.
    pub(super) fn outgoing(
        stream: TcpStream,
        to: Peer,
        tls: Option<rustls::Connection>,
        config: &StreamConfig,
        now: Instant,
    ) -> Conn {
        let mut conn = Conn::new(stream, to.addr, config, now, true).secured(tls, config);
        conn.connecting = true;
        conn
    }

    /// Runs the connection over TLS; rustls's send buffer then takes the
    /// send queue's bound.
    fn secured(mut self, tls: Option<rustls::Connection>, config: &StreamConfig) -> Conn {
        if let Some(mut tls) = tls {
            tls.set_buffer_limit(Some(config.send_queue_bytes_max));
            self.transport = Transport::Tls;
            self.session.tls = Some(Box::new(tls));
        }
        self
    }

    fn new(
        stream: TcpStream,
        remote: SocketAddr,
        config: &StreamConfig,
        now: Instant,
        outgoing: bool,
    ) -> Conn {
        Conn {
            stream,
            remote,
            transport: Transport::Tcp,
            outgoing,
            connecting: false,
            session: Session {
                tls: None,
                ws: None,
                deframer: Deframer::new(config.framing),
                queue: Vec::new(),
                queued_from: 0,
                inflight: None,
                inflight_from: 0,
            },
            opened: now,
            last_active: now,
            message_since: None,
            receiving: false,
        }
    }

    pub(super) fn is_connecting(&self) -> bool {
        self.connecting
    }

    #[cfg(test)]
    pub(super) fn partial(&self) -> usize {
        self.session.deframer.partial()
    }

    pub(super) fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    pub(super) fn peer(&self) -> Peer {
        Peer::new(self.transport, self.remote)
    }

    /// The socket is writable (epoll): finish a connect, write what waits.
    pub(super) fn on_ready(&mut self, now: Instant) -> Read {
        match self.connected(now) {
            Read::Open => {}
            other => return other,
        }
        match self.flush() {
            Ok(()) => Read::Open,
            Err(_) => Read::Closed,
        }
    }

    /// Whether a connect finished (`Open`), failed, or is still under way
    /// (`Open`, still connecting).
    pub(super) fn connected(&mut self, now: Instant) -> Read {
        if let Ok(Some(_)) | Err(_) = self.stream.take_error() {
            return match self.connecting {
                true => Read::Refused,
                false => Read::Closed,
            };
        }
        if self.connecting && self.stream.peer_addr().is_ok() {
            self.connecting = false;
            self.last_active = now;
        }
        Read::Open
    }

    /// Reads the socket (epoll), handing each framed message to `arrive`.
    /// `hung_up`: the peer closed its side (EPOLLRDHUP), so the socket is
    /// read to its end; otherwise a short read ends the turn (the next
    /// bytes raise a new edge), which saves a read that would block.
    pub(super) fn read(
        &mut self,
        now: Instant,
        hung_up: bool,
        mut arrive: impl FnMut(Arrival<'_>),
    ) -> Read {
        if self.connecting {
            return Read::Open;
        }
        let mut stream = &self.stream;
        let (result, got) = self.session.take_in(&mut stream, hung_up, &mut arrive);
        self.after_read(now, got);
        result
    }

    /// Takes bytes the ring received (io_uring), as [`Conn::read`] does.
    pub(super) fn received(
        &mut self,
        now: Instant,
        bytes: &[u8],
        mut arrive: impl FnMut(Arrival<'_>),
    ) -> Read {
        let (result, got) = self.session.take_in(&mut Filled(bytes), false, &mut arrive);
        self.after_read(now, got);
        result
    }

    fn after_read(&mut self, now: Instant, got: bool) {
        if got {
            self.last_active = now;
        }
        let ws = self.session.ws.as_ref().map_or(0, |w| w.partial());
        self.message_since = match self.session.deframer.partial() + ws {
            0 => None,
            _ => Some(self.message_since.unwrap_or(now)),
        };
    }

    /// Queues `bytes` for the end of the turn's [`Conn::flush`] (or
    /// [`Conn::ring_send`]), so that a turn's messages to one connection
    /// go in one write.
    pub(super) fn queue(&mut self, bytes: &[u8], queue_max: usize) -> Result<(), SendError> {
        self.session.queue(bytes, queue_max)
    }

    /// Heap bytes this connection holds: its read buffer and send queues.
    /// Under epoll rustls holds a TLS connection's send queue, bounded by
    /// its buffer limit; that and the record being read are not counted.
    pub(super) fn held_bytes(&self) -> usize {
        let s = &self.session;
        s.deframer.buffer_bytes()
            + s.queue.capacity()
            + s.inflight.as_ref().map_or(0, Vec::capacity)
    }

    /// Whether bytes wait to be written.
    pub(super) fn has_queued(&self) -> bool {
        let s = &self.session;
        s.queued_from < s.queue.len() || s.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Writes the queue out (epoll) as far as the kernel takes it; what it
    /// does not take goes when the socket is writable again (its edge).
    pub(super) fn flush(&mut self) -> Result<(), SendError> {
        if !self.has_queued() || self.connecting {
            return Ok(());
        }
        let mut stream = &self.stream;
        if let Some(tls) = self.session.tls.as_deref_mut() {
            return write_tls(tls, &mut stream);
        }
        let s = &mut self.session;
        let written =
            write_some(&mut stream, &s.queue[s.queued_from..]).map_err(|_| SendError::Broken)?;
        s.queued_from += written;
        s.compact_queue();
        Ok(())
    }

    /// io_uring: moves what is queued into the in-flight buffer and
    /// returns it for a `Send`; `None` when a send is in flight already,
    /// or nothing waits. `queue_max` bounds what waits behind a send.
    pub(super) fn ring_send(&mut self, queue_max: usize) -> Result<Option<&[u8]>, SendError> {
        if self.connecting {
            return Ok(None);
        }
        let s = &mut self.session;
        if let Some(tls) = s.tls.as_deref_mut() {
            while tls.wants_write() {
                tls.write_tls(&mut s.queue).map_err(|_| SendError::Broken)?;
            }
        }
        if s.inflight.is_some() {
            let waiting = s.queue.len() - s.queued_from;
            return match waiting > queue_max {
                true => Err(SendError::Backlog),
                false => Ok(None),
            };
        }
        if s.queued_from == s.queue.len() {
            return Ok(None);
        }
        let mut bytes = std::mem::take(&mut s.queue);
        bytes.drain(..s.queued_from);
        s.queued_from = 0;
        s.inflight_from = 0;
        Ok(Some(s.inflight.insert(bytes).as_slice()))
    }

    /// io_uring: a `Send` took `sent` bytes; returns the rest of the
    /// in-flight buffer to send again, if any.
    pub(super) fn ring_sent(&mut self, sent: usize) -> Option<&[u8]> {
        let s = &mut self.session;
        let inflight = s.inflight.as_mut()?;
        s.inflight_from = (s.inflight_from + sent).min(inflight.len());
        if s.inflight_from < inflight.len() {
            return s.inflight.as_deref().map(|b| &b[s.inflight_from..]);
        }
        // Done: the buffer becomes the queue's again when that is empty,
        // so its room is reused.
        let mut done = s.inflight.take()?;
        if s.queue.is_empty() && done.capacity() <= KEEP_QUEUE_BYTES {
            done.clear();
            s.queue = done;
        }
        None
    }

    /// io_uring: the buffer of a send still in flight, which must outlive
    /// the connection until its completion.
    pub(super) fn take_inflight(&mut self) -> Option<Vec<u8>> {
        self.session.inflight.take()
    }

    /// Tells a TLS peer the connection ends (close_notify), so that it
    /// can tell a close from a truncation; best effort, never waits.
    pub(super) fn shut(&mut self) {
        let mut stream = &self.stream;
        let s = &mut self.session;
        if let Some(tls) = s.tls.as_deref_mut() {
            tls.send_close_notify();
            let _ = tls.write_tls(&mut stream);
        } else if s.inflight.is_none() && s.queued_from < s.queue.len() {
            // What waits (a refused upgrade's answer): best effort.
            let _ = write_some(&mut stream, &s.queue[s.queued_from..]);
        }
    }

    /// Whether a deadline has passed; frees an idle connection's framing
    /// buffer on the way, so idle connections cost little memory.
    pub(super) fn expired(&mut self, now: Instant, config: &StreamConfig) -> Option<Expiry> {
        let idle = now.saturating_duration_since(self.last_active);
        let age = now.saturating_duration_since(self.opened);
        if self.connecting && age > config.connect_timeout {
            return Some(Expiry::Connect);
        }
        let s = &self.session;
        let handshaking = s.tls.as_ref().is_some_and(|t| t.is_handshaking())
            || s.ws.as_ref().is_some_and(|w| w.is_handshaking());
        let connect = match self.outgoing {
            true => config.connect_timeout,
            false => Duration::ZERO,
        };
        if handshaking && age > connect + config.handshake_timeout {
            return Some(Expiry::Handshake);
        }
        if let Some(since) = self.message_since {
            if now.saturating_duration_since(since) > config.message_timeout {
                return Some(Expiry::SlowMessage);
            }
        }
        if idle > config.idle_timeout {
            return Some(Expiry::Idle);
        }
        if idle > RELEASE_AFTER {
            self.session.release();
        }
        None
    }
}

impl Session {
    /// Reads `source` until it would block (or, for plain TCP, a short
    /// read), framing what it gives; true with it when bytes came.
    fn take_in(
        &mut self,
        source: &mut impl io::Read,
        hung_up: bool,
        arrive: &mut impl FnMut(Arrival<'_>),
    ) -> (Read, bool) {
        match (self.tls.is_some(), self.ws.is_some()) {
            (true, _) => self.take_in_tls(source, arrive),
            (false, true) => self.take_in_ws(source, arrive),
            (false, false) => self.take_in_plain(source, hung_up, arrive),
        }
    }

    /// Reads a plain WebSocket connection until it would block.
    fn take_in_ws(
        &mut self,
        source: &mut impl io::Read,
        arrive: &mut impl FnMut(Arrival<'_>),
    ) -> (Read, bool) {
        let mut chunk = [0u8; 8192];
        let mut got = false;
        loop {
            let n = match source.read(&mut chunk) {
                Ok(0) => return (Read::Closed, got),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (Read::Open, got),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return (Read::Closed, got),
            };
            got = true;
            if let Some(read) = self.upgrade_and_frame(&chunk[..n], arrive) {
                return (read, got);
            }
        }
    }

    /// Hands bytes to the WebSocket, its messages to `arrive`, and what
    /// it answers to the queue (or to TLS); `Some` when it must close.
    fn upgrade_and_frame(
        &mut self,
        bytes: &[u8],
        arrive: &mut impl FnMut(Arrival<'_>),
    ) -> Option<Read> {
        let ws = self.ws.as_deref_mut()?;
        let was_handshaking = ws.is_handshaking();
        let result = ws.take_in(bytes, |message| arrive(Arrival::Message(message)));
        if was_handshaking && !ws.is_handshaking() && result.is_ok() {
            arrive(Arrival::Upgraded);
        }
        let mut out = Vec::new();
        ws.take_output(&mut out);
        match self.tls.as_deref_mut() {
            Some(tls) => {
                let _ = tls.writer().write_all(&out);
            }
            None => self.queue.extend_from_slice(&out),
        }
        result.err().map(Read::Ws)
    }

    fn take_in_plain(
        &mut self,
        source: &mut impl io::Read,
        hung_up: bool,
        arrive: &mut impl FnMut(Arrival<'_>),
    ) -> (Read, bool) {
        let mut got = false;
        loop {
            let space = self.deframer.space();
            let room = space.len();
            if room == 0 {
                let fault = self.deframer.fault().unwrap_or(StreamFault::BufferFull);
                return (Read::Fault(fault), got);
            }
            match source.read(space) {
                Ok(0) => return (Read::Closed, got),
                Ok(n) => {
                    got = true;
                    self.deframer.filled(n);
                    if let Some(fault) = self.frames(arrive) {
                        return (Read::Fault(fault), got);
                    }
                    if n < room && !hung_up {
                        return (Read::Open, got);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (Read::Open, got),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return (Read::Closed, got),
            }
        }
    }

    /// Reads TLS records until the source has no more, and frames the
    /// plaintext they carry. Always read to the end: a record read in
    /// part gives no plaintext, so a short read says nothing.
    fn take_in_tls(
        &mut self,
        source: &mut impl io::Read,
        arrive: &mut impl FnMut(Arrival<'_>),
    ) -> (Read, bool) {
        let mut got = false;
        loop {
            let Some(tls) = self.tls.as_deref_mut() else {
                return (Read::Closed, got);
            };
            let handshaking = tls.is_handshaking();
            match tls.read_tls(source) {
                Ok(0) => return (Read::Closed, got),
                Ok(_) => got = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (Read::Open, got),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return (Read::Closed, got),
            }
            let state = match tls.process_new_packets() {
                Ok(state) => state,
                Err(error) => {
                    tracing::debug!(%error, "TLS failed");
                    // The alert rustls queued goes out with the close.
                    return match handshaking {
                        true => (Read::HandshakeFailed, got),
                        false => (Read::TlsBroken, got),
                    };
                }
            };
            if handshaking && !tls.is_handshaking() {
                arrive(Arrival::Secured);
            }
            let closed = state.peer_has_closed();
            if let Some(read) = self.plaintext(arrive) {
                return (read, got);
            }
            if closed {
                return (Read::Closed, got);
            }
        }
    }

    /// Moves the plaintext rustls decrypted into the deframer and frames
    /// it; `Some` when the connection must close.
    fn plaintext(&mut self, arrive: &mut impl FnMut(Arrival<'_>)) -> Option<Read> {
        loop {
            let tls = self.tls.as_deref_mut()?;
            let space = self.deframer.space();
            if space.is_empty() {
                let fault = self.deframer.fault().unwrap_or(StreamFault::BufferFull);
                return Some(Read::Fault(fault));
            }
            if self.ws.is_some() {
                let mut chunk = [0u8; 8192];
                match tls.reader().read(&mut chunk) {
                    Ok(0) => return Some(Read::Closed),
                    Ok(n) => match self.upgrade_and_frame(&chunk[..n], arrive) {
                        Some(read) => return Some(read),
                        None => continue,
                    },
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                    Err(_) => return Some(Read::Closed),
                }
            }
            match tls.reader().read(space) {
                Ok(0) => return Some(Read::Closed),
                Ok(n) => self.deframer.filled(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(_) => return Some(Read::Closed),
            }
            if let Some(fault) = self.frames(arrive) {
                return Some(Read::Fault(fault));
            }
        }
    }

    /// Takes every whole frame out of the buffer; a fault ends the stream.
    fn frames(&mut self, arrive: &mut impl FnMut(Arrival<'_>)) -> Option<StreamFault> {
        let mut pings = 0;
        while let Some(frame) = self.deframer.next_frame() {
            match frame {
                Ok(Frame::Message(bytes)) => arrive(Arrival::Message(bytes)),
                Ok(Frame::Ping) => pings += 1,
                Ok(Frame::Pong) => {}
                Err(fault) => return Some(fault),
            }
        }
        for _ in 0..pings {
            arrive(Arrival::Ping);
            // Pongs are bounded by the pings read, which the read buffer
            // bounds (over TLS, by rustls's send buffer too).
            let _ = self.queue(PONG, usize::MAX);
        }
        None
    }

    fn queue(&mut self, bytes: &[u8], queue_max: usize) -> Result<(), SendError> {
        if let Some(ws) = self.ws.as_deref_mut() {
            // One SIP message, one WebSocket message; its frame goes on
            // to TLS or the queue below.
            ws.send(bytes).map_err(|_| SendError::Broken)?;
            let mut frame = Vec::new();
            ws.take_output(&mut frame);
            return self.queue_raw(&frame, queue_max);
        }
        self.queue_raw(bytes, queue_max)
    }

    /// Queues bytes for the socket (or for TLS to encrypt).
    fn queue_raw(&mut self, bytes: &[u8], queue_max: usize) -> Result<(), SendError> {
        if let Some(tls) = self.tls.as_deref_mut() {
            // rustls encrypts it now (holds it in plain text until the
            // handshake is done), within its buffer limit.
            let taken = tls.writer().write(bytes).map_err(|_| SendError::Broken)?;
            return match taken == bytes.len() {
                true => Ok(()),
                false => Err(SendError::Backlog),
            };
        }
        if self.queue.len() - self.queued_from + bytes.len() > queue_max {
            return Err(SendError::Backlog);
        }
        self.queue.extend_from_slice(bytes);
        Ok(())
    }

    /// Forgets what was written; gives back a large queue's room.
    fn compact_queue(&mut self) {
        if self.queued_from == self.queue.len() {
            self.queue.clear();
            self.queued_from = 0;
            if self.queue.capacity() > KEEP_QUEUE_BYTES {
                self.queue = Vec::new();
            }
        }
    }

    /// Gives back an idle connection's buffers.
    fn release(&mut self) {
        if self.deframer.partial() == 0 {
            self.deframer.release();
        }
        if self.queued_from == self.queue.len() {
            self.queue = Vec::new();
            self.queued_from = 0;
        }
    }
}

/// Writes the TLS records waiting, as far as the socket takes them now.
fn write_tls(tls: &mut rustls::Connection, stream: &mut &TcpStream) -> Result<(), SendError> {
    while tls.wants_write() {
        match tls.write_tls(stream) {
            Ok(0) => return Err(SendError::Broken),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(SendError::Broken),
        }
    }
    Ok(())
}

/// Writes as much of `bytes` as the socket takes now.
fn write_some(stream: &mut &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < bytes.len() {
        match stream.write(&bytes[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}
