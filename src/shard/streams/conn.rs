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
}

/// What the framing gave.
pub(super) enum Arrival<'a> {
    Message(&'a [u8]),
    /// A keep-alive ping, already answered with a pong.
    Ping,
}

/// Why a connection is past its time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Expiry {
    Idle,
    SlowMessage,
    Connect,
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
    pub(super) fn accepted(
        stream: TcpStream,
        remote: SocketAddr,
        config: &StreamConfig,
        now: Instant,
    ) -> Conn {
        // Accepted sockets do not inherit O_NONBLOCK; a failure here
        // would only make reads block, so it is not expected.
        let _ = stream.set_nonblocking(true);
        let _ = stream.set_nodelay(true);
        Conn::new(stream, remote, config, now, false)
    }

    pub(super) fn outgoing(
        stream: TcpStream,
        to: Peer,
        config: &StreamConfig,
        now: Instant,
    ) -> Conn {
        let mut conn = Conn::new(stream, to.addr, config, now, true);
        conn.connecting = true;
        conn
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
        let result = loop {
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
                    if let Some(fault) = self.frames(&mut arrive) {
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
        };
        self.message_since = match self.deframer.partial() {
            0 => None,
            _ => Some(self.message_since.unwrap_or(now)),
        };
        result
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
            // Pongs are bounded by the pings read, which the read buffer bounds.
            let _ = self.queue(PONG, usize::MAX);
        }
        None
    }

    /// Queues `bytes` for the end of the turn's [`Conn::flush`], so that a
    /// turn's messages to one connection go in one write.
    pub(super) fn queue(&mut self, bytes: &[u8], queue_max: usize) -> Result<(), SendError> {
        if self.queue.len() - self.queued_from + bytes.len() > queue_max {
            return Err(SendError::Backlog);
        }
        self.queue.extend_from_slice(bytes);
        Ok(())
    }

    /// Heap bytes this connection holds: its read buffer and send queue.
    pub(super) fn held_bytes(&self) -> usize {
        self.deframer.buffer_bytes() + self.queue.capacity()
    }

    /// Whether bytes wait to be written.
    pub(super) fn has_queued(&self) -> bool {
        self.queued_from < self.queue.len()
    }

    /// Writes the queue out as far as the kernel takes it; what it does
    /// not take goes when the socket is writable again (its edge).
    pub(super) fn flush(&mut self) -> Result<(), SendError> {
        if !self.has_queued() || self.connecting {
            return Ok(());
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

    /// Whether a deadline has passed; frees an idle connection's framing
    /// buffer on the way, so idle connections cost little memory.
    pub(super) fn expired(&mut self, now: Instant, config: &StreamConfig) -> Option<Expiry> {
        let idle = now.saturating_duration_since(self.last_active);
        if self.connecting && now.saturating_duration_since(self.opened) > config.connect_timeout {
            return Some(Expiry::Connect);
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
