//! One connection: its socket, its framing and the bytes queued toward it.

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

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
}

/// What the framing gave.
pub(super) enum Arrival<'a> {
    Message(&'a [u8]),
    /// A keep-alive ping, already answered with a pong.
    Ping,
    /// The TLS handshake completed.
    Secured,
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
    /// The TLS session of a `tls:` connection: the socket carries its
    /// records, the deframer its plaintext, and it holds the send queue.
    tls: Option<Box<rustls::Connection>>,
    deframer: Deframer,
    /// Bytes the kernel did not take yet, from `queued_from` on.
    queue: Vec<u8>,
    queued_from: usize,
    opened: Instant,
    last_active: Instant,
    /// When the message now being read began.
    message_since: Option<Instant>,
}

impl Conn {
    /// `tls`: the session of a connection accepted on a `tls:` listener.
    pub(super) fn accepted(
        stream: TcpStream,
        remote: SocketAddr,
        tls: Option<rustls::Connection>,
        config: &StreamConfig,
        now: Instant,
    ) -> Conn {
        // Accepted sockets do not inherit O_NONBLOCK; a failure here
        // would only make reads block, so it is not expected.
        let _ = stream.set_nonblocking(true);
        let _ = stream.set_nodelay(true);
        Conn::new(stream, remote, config, now, false).secured(tls, config)
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
            self.tls = Some(Box::new(tls));
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
            tls: None,
            deframer: Deframer::new(config.framing),
            queue: Vec::new(),
            queued_from: 0,
            opened: now,
            last_active: now,
            message_since: None,
        }
    }

    #[cfg(test)]
    pub(super) fn is_connecting(&self) -> bool {
        self.connecting
    }

    #[cfg(test)]
    pub(super) fn partial(&self) -> usize {
        self.deframer.partial()
    }

    pub(super) fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    pub(super) fn peer(&self) -> Peer {
        Peer::new(self.transport, self.remote)
    }

    /// The socket is ready: finish a connect, write what waits.
    pub(super) fn on_ready(&mut self, now: Instant) -> Read {
        if let Ok(Some(_)) | Err(_) = self.stream.take_error() {
            return match self.connecting {
                true => Read::Refused,
                false => Read::Closed,
            };
        }
        if self.connecting {
            match self.stream.peer_addr() {
                Ok(_) => self.connecting = false,
                // Not up yet: a later edge tells.
                Err(_) => return Read::Open,
            }
            self.last_active = now;
        }
        match self.flush() {
            Ok(()) => Read::Open,
            Err(_) => Read::Closed,
        }
    }

    /// Reads until the socket has nothing more, handing each framed
    /// message to `arrive`.
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
        let result = match self.tls.is_some() {
            true => self.read_tls(now, &mut arrive),
            false => self.read_plain(now, hung_up, &mut arrive),
        };
        self.message_since = match self.deframer.partial() {
            0 => None,
            _ => Some(self.message_since.unwrap_or(now)),
        };
        result
    }

    fn read_plain(
        &mut self,
        now: Instant,
        hung_up: bool,
        arrive: &mut impl FnMut(Arrival<'_>),
    ) -> Read {
        loop {
            let space = self.deframer.space();
            let room = space.len();
            if room == 0 {
                break Read::Fault(self.deframer.fault().unwrap_or(StreamFault::BufferFull));
            }
            match self.stream.read(space) {
                Ok(0) => break Read::Closed,
                Ok(n) => {
                    self.deframer.filled(n);
                    self.last_active = now;
                    if let Some(fault) = self.frames(arrive) {
                        break Read::Fault(fault);
                    }
                    if n < room && !hung_up {
                        break Read::Open;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Read::Open,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break Read::Closed,
            }
        }
    }

    /// Reads TLS records until the socket has no more, and frames the
    /// plaintext they carry. Always read to the socket's end: a record
    /// read in part gives no plaintext, so a short read says nothing.
    fn read_tls(&mut self, now: Instant, arrive: &mut impl FnMut(Arrival<'_>)) -> Read {
        loop {
            let Some(tls) = self.tls.as_deref_mut() else {
                return Read::Closed;
            };
            let handshaking = tls.is_handshaking();
            match tls.read_tls(&mut self.stream) {
                Ok(0) => return Read::Closed,
                Ok(_) => self.last_active = now,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Read::Open,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Read::Closed,
            }
            let state = match tls.process_new_packets() {
                Ok(state) => state,
                Err(error) => {
                    tracing::debug!(%error, remote = %self.remote, "TLS failed");
                    // The alert rustls queued tells the peer why.
                    let _ = tls.write_tls(&mut self.stream);
                    return match handshaking {
                        true => Read::HandshakeFailed,
                        false => Read::TlsBroken,
                    };
                }
            };
            if handshaking && !tls.is_handshaking() {
                arrive(Arrival::Secured);
            }
            let closed = state.peer_has_closed();
            if let Some(read) = self.plaintext(arrive) {
                return read;
            }
            if closed {
                return Read::Closed;
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

    /// Queues `bytes` for the end of the turn's [`Conn::flush`], so that a
    /// turn's messages to one connection go in one write.
    pub(super) fn queue(&mut self, bytes: &[u8], queue_max: usize) -> Result<(), SendError> {
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

    /// Heap bytes this connection holds: its read buffer and send queue.
    /// Over TLS rustls holds the send queue, bounded by its buffer limit,
    /// and one record being read; they are not counted here.
    pub(super) fn held_bytes(&self) -> usize {
        self.deframer.buffer_bytes() + self.queue.capacity()
    }

    /// Whether bytes wait to be written.
    pub(super) fn has_queued(&self) -> bool {
        match &self.tls {
            Some(tls) => tls.wants_write(),
            None => self.queued_from < self.queue.len(),
        }
    }

    /// Writes the queue out as far as the kernel takes it; what it does
    /// not take goes when the socket is writable again (its edge).
    pub(super) fn flush(&mut self) -> Result<(), SendError> {
        if !self.has_queued() || self.connecting {
            return Ok(());
        }
        if let Some(tls) = self.tls.as_deref_mut() {
            return write_tls(tls, &mut self.stream);
        }
        let written = write_some(&mut self.stream, &self.queue[self.queued_from..])
            .map_err(|_| SendError::Broken)?;
        self.queued_from += written;
        if self.queued_from == self.queue.len() {
            self.queue.clear();
            self.queued_from = 0;
            if self.queue.capacity() > KEEP_QUEUE_BYTES {
                self.queue = Vec::new();
            }
        }
        Ok(())
    }

    /// Tells a TLS peer the connection ends (close_notify), so that it
    /// can tell a close from a truncation; best effort, never waits.
    pub(super) fn shut(&mut self) {
        if let Some(tls) = self.tls.as_deref_mut() {
            tls.send_close_notify();
            let _ = tls.write_tls(&mut self.stream);
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
        let handshaking = self.tls.as_ref().is_some_and(|t| t.is_handshaking());
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
        if idle > RELEASE_AFTER && self.deframer.partial() == 0 {
            self.deframer.release();
            if !self.has_queued() {
                self.queue = Vec::new();
            }
        }
        None
    }
}

/// Writes the TLS records waiting, as far as the socket takes them now.
fn write_tls(tls: &mut rustls::Connection, stream: &mut TcpStream) -> Result<(), SendError> {
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
fn write_some(stream: &mut TcpStream, bytes: &[u8]) -> io::Result<usize> {
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
