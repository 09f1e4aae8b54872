//! A shard's SIP connections (RFC 3261 §18 over TCP and TLS): the ones it
//! accepted on its own `SO_REUSEPORT` listeners and the ones it opened to
//! backends.
//! A connection belongs to this shard alone; no other thread touches it.
//!
//! Every connection sits in one edge-triggered epoll set, which the shard's
//! loop waits on beside its datagram sockets (nested in the epoll loop,
//! polled by the ring in the io_uring loop). Reading frames messages by
//! Content-Length (`sip::Deframer`) into an arena the shard then dispatches
//! like datagrams, by Call-ID owner. Writing goes straight to the socket;
//! what the kernel does not take waits in a bounded per-connection queue.
//! A TLS connection runs rustls's sans-I/O session between the socket and
//! the same framing; rustls holds its send queue, under the same bound.
//!
//! Bounds, each configurable ([`StreamConfig`]): connections per shard and
//! per source address, bytes queued toward a slow reader, time to finish a
//! message once begun (slow senders), idle time, time to connect and to
//! finish a TLS handshake.

mod conn;
mod ring;
mod ws;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use super::sys::Poller;
use crate::sip::{FlowId, Peer, StreamFault, StreamLimits, Transport};
use crate::tls::ShardTls;
use conn::{Conn, Read};
pub(crate) use ring::{OpKind, RingDone, RingOp};
pub use ws::WsConfig;

/// The stream side's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamConfig {
    /// Open connections a shard holds, accepted and opened together.
    pub connections_max: usize,
    /// Connections one source address may hold on one shard.
    pub connections_per_source_max: usize,
    /// A connection with no traffic this long is closed.
    pub idle_timeout: Duration,
    /// A message begun must be whole within this (slow senders).
    pub message_timeout: Duration,
    /// An outgoing connection must be up within this.
    pub connect_timeout: Duration,
    /// A TLS handshake must be done within this (after the connect).
    pub handshake_timeout: Duration,
    /// Bytes queued toward one connection whose reader is slow; past it
    /// the connection is closed (and counted), never grown.
    pub send_queue_bytes_max: usize,
    /// Bytes all of a shard's connections may hold in read buffers and
    /// send queues together; a connection that grows past it is closed.
    pub buffered_bytes_max: usize,
    /// Message and buffer bounds of each connection's framing.
    pub framing: StreamLimits,
    /// WebSocket connections: origins and bounds.
    pub websocket: WsConfig,
}

impl Default for StreamConfig {
    fn default() -> StreamConfig {
        StreamConfig {
            connections_max: 32_768,
            connections_per_source_max: 4_096,
            idle_timeout: Duration::from_secs(180),
            message_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(5),
            send_queue_bytes_max: 1 << 20,
            buffered_bytes_max: 256 << 20,
            framing: StreamLimits::default(),
            websocket: WsConfig::default(),
        }
    }
}

/// What the stream side counted, published with the shard's counters.
#[derive(Clone, Debug, Default)]
pub struct StreamCounters {
    pub accepted: u64,
    pub connected: u64,
    /// Connections refused at accept: the shard's or the source's bound.
    pub refused: u64,
    pub connect_failed: u64,
    pub closed_by_peer: u64,
    pub closed_idle: u64,
    /// A message begun and not finished in time.
    pub closed_slow: u64,
    /// A reader that let `send_queue_bytes_max` pile up.
    pub closed_backlog: u64,
    /// A connection whose buffers grew past the shard's `buffered_bytes_max`.
    pub closed_budget: u64,
    /// A TLS handshake not done within `handshake_timeout`.
    pub closed_handshake_timeout: u64,
    /// A TLS error after the handshake.
    pub closed_tls: u64,
    pub ws_upgraded: u64,
    /// Upgrades refused: no `sip` subprotocol, an origin not allowed, not
    /// a WebSocket upgrade.
    pub ws_refused: u64,
    /// WebSocket connections closed on a protocol error (an unmasked or
    /// oversize frame, a message past the bound) or a close frame.
    pub closed_ws: u64,
    pub tls_handshakes_ok: u64,
    pub tls_handshakes_failed: u64,
    pub faults: [u64; StreamFault::ALL.len()],
    pub pings: u64,
    /// Sends with no connection and none to be had.
    pub send_failed: u64,
    pub messages_received: u64,
}

/// Tokens of the streams' epoll set: the listeners (TCP, TLS, WS, WSS), then one
/// per slot.
const TOKEN_SLOT: u64 = 4;
/// Connections accepted per turn at most, so that a flood of them cannot
/// starve the datagram path; the listener stays ready for the next turn.
const ACCEPTS_PER_TURN: usize = 256;
/// How often connections are checked for their deadlines.
const SWEEP_EVERY: Duration = Duration::from_millis(500);

/// A shard's connections.
pub(super) struct Streams {
    shard: usize,
    config: StreamConfig,
    poller: Poller,
    /// The TCP and TLS listeners, at most one of each; a listener's token
    /// is its index.
    listeners: Vec<(TcpListener, Transport)>,
    /// What TLS connections start from; `None` with no TLS configured.
    tls: Option<ShardTls>,
    /// Where outgoing connections are bound from (the listen address's IP).
    local_ip: IpAddr,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Slots with bytes queued this turn, for [`Streams::flush`].
    dirty: Vec<u32>,
    by_peer: HashMap<(Transport, SocketAddr), u32>,
    per_source: HashMap<IpAddr, u32>,
    open: usize,
    /// Bytes the connections hold in read buffers and send queues.
    buffered: usize,
    next_sweep: Instant,
    /// Messages read this turn, back to back, and who sent each.
    pub(super) arrivals: Vec<u8>,
    pub(super) frames: Vec<(Peer, Range<usize>)>,
    /// Peers whose outgoing connection failed this turn: their tries fail over.
    pub(super) failed: Vec<Peer>,
    /// Connections accepted this turn, for the guard's screen.
    accepted_now: Vec<(u32, SocketAddr)>,
    /// Driven by the shard's ring (`ring.rs`) rather than the epoll set.
    ring: bool,
    /// Operations for the ring, taken each turn.
    ring_ops: Vec<RingOp>,
    /// Buffers of sends in flight on connections since closed, by the
    /// send's user data, until their completions.
    orphans: HashMap<u64, Vec<u8>>,
    pub(super) counters: StreamCounters,
}

struct Slot {
    generation: u32,
    conn: Option<Conn>,
}

impl Streams {
    /// The shard's streams, listening on each of `listen` (TCP or TLS,
    /// bound with `SO_REUSEPORT`, beside the other shards' listeners).
    pub(super) fn new(
        shard: usize,
        config: StreamConfig,
        listen: &[(Transport, SocketAddr)],
        local_ip: IpAddr,
        tls: Option<ShardTls>,
    ) -> io::Result<Streams> {
        let poller = Poller::with_capacity(256)?;
        let mut listeners = Vec::new();
        for (token, &(transport, addr)) in listen.iter().enumerate().take(TOKEN_SLOT as usize) {
            let listener = bind_listener(addr)?;
            poller.add(listener.as_raw_fd(), token as u64)?;
            listeners.push((listener, transport));
        }
        Ok(Streams {
            shard,
            config,
            poller,
            listeners,
            tls,
            local_ip,
            slots: Vec::new(),
            free: Vec::new(),
            dirty: Vec::new(),
            by_peer: HashMap::new(),
            per_source: HashMap::new(),
            open: 0,
            buffered: 0,
            next_sweep: Instant::now() + SWEEP_EVERY,
            arrivals: Vec::new(),
            frames: Vec::new(),
            failed: Vec::new(),
            accepted_now: Vec::new(),
            ring: false,
            ring_ops: Vec::new(),
            orphans: HashMap::new(),
            counters: StreamCounters::default(),
        })
    }

    /// The epoll set the shard's loop waits on for all of its streams.
    pub(super) fn fd(&self) -> std::os::fd::RawFd {
        self.poller.raw()
    }

    /// Connections open now.
    pub(super) fn open(&self) -> usize {
        self.open
    }

    /// Where the first listener is bound (tests bind port 0).
    #[cfg(test)]
    fn listen_addr(&self) -> Option<SocketAddr> {
        self.listeners.first()?.0.local_addr().ok()
    }

    /// New TLS connections start from `tls` (a certificate reloaded);
    /// established ones keep the session they have.
    pub(super) fn set_tls(&mut self, tls: ShardTls) {
        self.tls = Some(tls);
    }

    /// Accepts, reads and writes whatever is ready, then closes what is
    /// past a deadline. Messages read land in `arrivals`/`frames`.
    pub(super) fn poll(&mut self, now: Instant) -> io::Result<()> {
        self.accepted_now.clear();
        let mut accepts = ACCEPTS_PER_TURN;
        loop {
            let ready: Vec<(u64, u32)> = self.poller.wait_events(0)?.collect();
            for &(token, events) in &ready {
                match token {
                    token if token < TOKEN_SLOT => accepts = self.accept(token, now, accepts),
                    token => self.service((token - TOKEN_SLOT) as u32, Edge::of(events), now),
                }
            }
            if ready.len() < self.poller.capacity() {
                break;
            }
        }
        self.sweep_if_due(now);
        Ok(())
    }

    /// Closes what is past a deadline, every `SWEEP_EVERY`.
    fn sweep_if_due(&mut self, now: Instant) {
        if now >= self.next_sweep {
            self.next_sweep = now + SWEEP_EVERY;
            self.sweep(now);
        }
    }

    /// Whether the deadline sweep is due.
    pub(super) fn sweep_due(&self, now: Instant) -> bool {
        now >= self.next_sweep
    }

    /// The messages read since the last call, and who sent each.
    pub(super) fn clear_arrivals(&mut self) {
        self.arrivals.clear();
        self.frames.clear();
    }

    /// Closes the connections accepted this turn whose source `admit`
    /// refuses (the SIP ACL, a flood ban), counted as refused: a denied
    /// source holds no connection, as it gets no datagram through.
    pub(super) fn screen_accepted(&mut self, mut admit: impl FnMut(SocketAddr) -> bool) {
        let accepted = std::mem::take(&mut self.accepted_now);
        for &(slot, remote) in &accepted {
            let live = self.conn(slot).is_some_and(|c| c.remote == remote);
            if live && !admit(remote) {
                self.counters.refused += 1;
                self.counters.accepted -= 1;
                self.close(slot);
            }
        }
        self.accepted_now = accepted;
    }

    /// Accepts up to `budget` connections on listener `token`; returns
    /// what is left of the budget.
    fn accept(&mut self, token: u64, now: Instant, mut budget: usize) -> usize {
        while budget > 0 {
            budget -= 1;
            let Some((listener, transport)) = self.listeners.get(token as usize) else {
                return 0;
            };
            let transport = *transport;
            let (stream, remote) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return budget,
                Err(error) => {
                    // EMFILE and the like: the listener stays ready, the
                    // next turn tries again.
                    tracing::debug!(%error, "accept failed");
                    return 0;
                }
            };
            self.admit(stream, remote, transport, now);
        }
        0
    }

    /// Takes an accepted connection in, unless a bound refuses it.
    fn admit(&mut self, stream: TcpStream, remote: SocketAddr, transport: Transport, now: Instant) {
        let source_count = self.per_source.get(&remote.ip()).copied().unwrap_or(0);
        if self.open >= self.config.connections_max
            || source_count as usize >= self.config.connections_per_source_max
        {
            self.counters.refused += 1;
            tracing::debug!(%remote, "connection refused: a connection bound is reached");
            return;
        }
        let tls = match transport {
            Transport::Tls | Transport::Wss => match self.server_session() {
                Some(session) => Some(session),
                None => return,
            },
            _ => None,
        };
        self.counters.accepted += 1;
        let conn = Conn::accepted(stream, (remote, transport), tls, &self.config, now);
        if let Some(slot) = self.insert(conn) {
            self.accepted_now.push((slot, remote));
        }
    }

    /// A server session for a connection on the TLS listener.
    fn server_session(&mut self) -> Option<rustls::Connection> {
        let config = self.tls.as_ref()?.server.clone()?;
        match rustls::ServerConnection::new(config) {
            Ok(session) => Some(session.into()),
            Err(error) => {
                self.counters.tls_handshakes_failed += 1;
                tracing::debug!(%error, "no TLS session could be started");
                None
            }
        }
    }

    /// A client session toward a TLS backend, for its IP address (its
    /// certificate must name it).
    fn client_session(&mut self, to: SocketAddr) -> Option<rustls::Connection> {
        let config = self.tls.as_ref()?.client.clone();
        let name = rustls::pki_types::ServerName::IpAddress(to.ip().into());
        match rustls::ClientConnection::new(config, name) {
            Ok(session) => Some(session.into()),
            Err(error) => {
                self.counters.tls_handshakes_failed += 1;
                tracing::debug!(%error, "no TLS session could be started");
                None
            }
        }
    }

    /// Puts a connection in a slot, the epoll set and the lookups.
    fn insert(&mut self, conn: Conn) -> Option<u32> {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    conn: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let watched = match self.ring {
            true => Ok(()),
            false => self
                .poller
                .add_stream(conn.fd(), TOKEN_SLOT + u64::from(slot)),
        };
        if let Err(error) = watched {
            tracing::debug!(%error, "a connection could not be watched; closed");
            self.free.push(slot);
            return None;
        }
        *self.per_source.entry(conn.remote.ip()).or_insert(0) += 1;
        self.by_peer.insert((conn.transport, conn.remote), slot);
        self.open += 1;
        self.slots[slot as usize].conn = Some(conn);
        if self.ring {
            self.ring_arm(slot);
        }
        Some(slot)
    }

    /// Reads and writes one ready connection, closing it when it ended
    /// or broke.
    fn service(&mut self, slot: u32, edge: Edge, now: Instant) {
        let flow = self.flow(slot);
        let Some(conn) = self
            .slots
            .get_mut(slot as usize)
            .and_then(|s| s.conn.as_mut())
        else {
            return;
        };
        let before = conn.held_bytes();
        let (arrivals, frames, counters) =
            (&mut self.arrivals, &mut self.frames, &mut self.counters);
        let mut result = conn.on_ready(now);
        // Writable alone (an accepted socket's first edge, a drained send
        // queue): nothing to read, and no read buffer to allocate.
        if result == Read::Open && edge != Edge::Writable {
            let hung_up = edge == Edge::HungUp;
            let peer = conn.peer().on(flow);
            result = conn.read(now, hung_up, |frame| {
                arrive(frame, peer, arrivals, frames, counters)
            });
        }
        self.after_read(slot, result, before);
    }

    /// Counts what a read did, and closes the connection when it ended,
    /// broke or grew past the shard's budget.
    fn after_read(&mut self, slot: u32, result: Read, before: usize) {
        let queued = self.conn(slot).is_some_and(Conn::has_queued);
        let over = self.account(slot, before);
        match result {
            Read::Open if over => self.close_over_budget(slot),
            Read::Open if queued => self.dirty.push(slot),
            Read::Open => {}
            Read::Closed => {
                self.counters.closed_by_peer += 1;
                self.close(slot);
            }
            Read::Fault(fault) => {
                self.counters.faults[fault.index()] += 1;
                tracing::debug!(fault = fault.name(), "stream closed on a framing fault");
                self.close(slot);
            }
            Read::Refused => {
                self.counters.connect_failed += 1;
                self.close(slot);
            }
            Read::HandshakeFailed => {
                self.counters.tls_handshakes_failed += 1;
                self.close(slot);
            }
            Read::TlsBroken => {
                self.counters.closed_tls += 1;
                self.close(slot);
            }
            Read::Ws(conn::WsEnd::Refused) => {
                self.counters.ws_refused += 1;
                self.close(slot);
            }
            Read::Ws(conn::WsEnd::Closed) => {
                self.counters.closed_ws += 1;
                self.close(slot);
            }
        }
    }

    fn conn(&self, slot: u32) -> Option<&Conn> {
        self.slots.get(slot as usize)?.conn.as_ref()
    }

    /// Brings the shard's buffered bytes up to date after `slot`'s
    /// connection held `before`; true when it grew past the budget.
    fn account(&mut self, slot: u32, before: usize) -> bool {
        let Some(after) = self.conn(slot).map(Conn::held_bytes) else {
            return false;
        };
        self.buffered = (self.buffered + after).saturating_sub(before);
        after > before && self.buffered > self.config.buffered_bytes_max
    }

    fn close_over_budget(&mut self, slot: u32) {
        self.counters.closed_budget += 1;
        tracing::debug!("a connection closed: the shard's buffered_bytes_max is reached");
        self.close(slot);
    }

    fn conn_mut(&mut self, slot: u32) -> Option<&mut Conn> {
        self.slots.get_mut(slot as usize)?.conn.as_mut()
    }

    /// The flow id of a slot's current connection.
    fn flow(&self, slot: u32) -> FlowId {
        let generation = self.slots.get(slot as usize).map_or(0, |s| s.generation);
        pack(self.shard, slot, generation)
    }

    /// Closes a slot's connection; a connection we opened that still had
    /// work waiting on it reports its peer as failed (failover).
    fn close(&mut self, slot: u32) {
        let Some(entry) = self.slots.get_mut(slot as usize) else {
            return;
        };
        let Some(mut conn) = entry.conn.take() else {
            return;
        };
        conn.shut();
        if self.ring {
            let generation = entry.generation;
            self.ring_closing(slot, generation, &mut conn);
        }
        let Some(entry) = self.slots.get_mut(slot as usize) else {
            return;
        };
        entry.generation = entry.generation.wrapping_add(1);
        self.free.push(slot);
        self.open -= 1;
        self.buffered = self.buffered.saturating_sub(conn.held_bytes());
        if let Some(count) = self.per_source.get_mut(&conn.remote.ip()) {
            *count -= 1;
            if *count == 0 {
                self.per_source.remove(&conn.remote.ip());
            }
        }
        let key = (conn.transport, conn.remote);
        if self.by_peer.get(&key) == Some(&slot) {
            self.by_peer.remove(&key);
        }
        if conn.outgoing {
            self.failed.push(conn.peer());
        }
        // Dropping the stream closes it, which also takes it out of the
        // epoll set.
    }

    /// Closes connections past a deadline: idle, slow to send a message,
    /// slow to connect.
    fn sweep(&mut self, now: Instant) {
        let mut expired = Vec::new();
        for (slot, entry) in self.slots.iter_mut().enumerate() {
            if let Some(conn) = &mut entry.conn {
                let before = conn.held_bytes();
                let why = conn.expired(now, &self.config);
                self.buffered = (self.buffered + conn.held_bytes()).saturating_sub(before);
                if let Some(why) = why {
                    expired.push((slot as u32, why));
                }
            }
        }
        for (slot, why) in expired {
            match why {
                conn::Expiry::Idle => self.counters.closed_idle += 1,
                conn::Expiry::SlowMessage => self.counters.closed_slow += 1,
                conn::Expiry::Connect => self.counters.connect_failed += 1,
                conn::Expiry::Handshake => self.counters.closed_handshake_timeout += 1,
            }
            self.close(slot);
        }
    }

    /// Sends one message to `to`: over its flow when that is ours and
    /// open, else over our connection to its address, else over a new
    /// one (RFC 3261 §18.2.2: a response whose connection closed goes
    /// over a new one to the same address). `Err(bytes)` hands it back
    /// when the flow belongs to another shard.
    pub(super) fn send(&mut self, to: Peer, bytes: &[u8], now: Instant) -> Result<(), usize> {
        if let Some(flow) = to.flow {
            let (shard, slot, generation) = unpack(flow);
            if shard != self.shard {
                return Err(shard);
            }
            let live = self
                .slots
                .get(slot as usize)
                .is_some_and(|s| s.generation == generation && s.conn.is_some());
            if live {
                self.write(slot, bytes);
                return Ok(());
            }
        }
        let slot = match self.by_peer.get(&(to.transport, to.addr)) {
            Some(&slot) => Some(slot),
            None => self.connect(to, now),
        };
        match slot {
            Some(slot) => self.write(slot, bytes),
            None => self.counters.send_failed += 1,
        }
        Ok(())
    }

    /// Writes every connection with bytes queued this turn: one write
    /// each, however many messages went to it.
    pub(super) fn flush(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &slot in &dirty {
            if self.ring {
                self.ring_flush(slot);
                continue;
            }
            let Some(conn) = self.conn_mut(slot) else {
                continue;
            };
            let (before, flushed) = (conn.held_bytes(), conn.flush());
            self.account(slot, before);
            if flushed.is_err() {
                self.counters.closed_by_peer += 1;
                self.close(slot);
            }
        }
        dirty.clear();
        self.dirty = dirty;
    }

    fn write(&mut self, slot: u32, bytes: &[u8]) {
        let max = self.config.send_queue_bytes_max;
        let Some(conn) = self.conn_mut(slot) else {
            return;
        };
        let (was_queued, before) = (conn.has_queued(), conn.held_bytes());
        let queued = conn.queue(bytes, max);
        let over = self.account(slot, before);
        match queued {
            Ok(()) if over => self.close_over_budget(slot),
            Ok(()) if !was_queued => self.dirty.push(slot),
            Ok(()) => {}
            Err(error) => self.close_on_send_error(slot, error),
        }
    }

    /// Closes a connection a send could not go on: a reader too slow for
    /// the send queue's bound, or a broken socket.
    fn close_on_send_error(&mut self, slot: u32, error: conn::SendError) {
        match error {
            conn::SendError::Backlog => self.counters.closed_backlog += 1,
            conn::SendError::Broken => self.counters.closed_by_peer += 1,
        }
        self.close(slot);
    }

    /// Opens a connection to `to` (TCP or TLS), bound to our listen address.
    fn connect(&mut self, to: Peer, now: Instant) -> Option<u32> {
        if !to.transport.is_stream() || self.open >= self.config.connections_max {
            return None;
        }
        let tls = match to.transport {
            Transport::Tls => match self.client_session(to.addr) {
                Some(session) => Some(session),
                None => {
                    self.failed.push(Peer::new(to.transport, to.addr));
                    return None;
                }
            },
            _ => None,
        };
        match connect(self.local_ip, to.addr) {
            Ok(stream) => {
                self.counters.connected += 1;
                let conn = Conn::outgoing(stream, to, tls, &self.config, now);
                self.insert(conn)
            }
            Err(error) => {
                tracing::debug!(%error, peer = %to, "connect failed");
                self.counters.connect_failed += 1;
                self.failed.push(Peer::new(to.transport, to.addr));
                None
            }
        }
    }
}

/// Puts what the framing gave where the shard takes it from.
fn arrive(
    frame: conn::Arrival<'_>,
    peer: Peer,
    arrivals: &mut Vec<u8>,
    frames: &mut Vec<(Peer, Range<usize>)>,
    counters: &mut StreamCounters,
) {
    match frame {
        conn::Arrival::Message(bytes) => {
            let start = arrivals.len();
            arrivals.extend_from_slice(bytes);
            frames.push((peer, start..arrivals.len()));
            counters.messages_received += 1;
        }
        conn::Arrival::Ping => counters.pings += 1,
        conn::Arrival::Secured => counters.tls_handshakes_ok += 1,
        conn::Arrival::Upgraded => counters.ws_upgraded += 1,
    }
}

/// What an epoll edge says about a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Edge {
    Readable,
    /// The peer closed its side (or the socket failed): read to the end.
    HungUp,
    Writable,
}

impl Edge {
    fn of(events: u32) -> Edge {
        let hung_up = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
        match events {
            e if e & hung_up != 0 => Edge::HungUp,
            e if e & libc::EPOLLIN as u32 != 0 => Edge::Readable,
            _ => Edge::Writable,
        }
    }
}

/// A flow id: the shard in the top byte, then the slot's generation, then
/// the slot, so a closed connection's id never names its successor.
fn pack(shard: usize, slot: u32, generation: u32) -> FlowId {
    FlowId(
        ((shard as u64 & 0xff) << 56) | (u64::from(generation & 0xff_ffff) << 32) | u64::from(slot),
    )
}

fn unpack(flow: FlowId) -> (usize, u32, u32) {
    let shard = (flow.0 >> 56) as usize;
    let generation = ((flow.0 >> 32) & 0xff_ffff) as u32;
    (shard, flow.0 as u32, generation)
}

/// A listener of the shard group: `SO_REUSEPORT`, so every shard has its
/// own and the kernel spreads new connections over them.
fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// A non-blocking connect from `local_ip`: up when the socket becomes
/// writable, refused when it reports an error.
fn connect(local_ip: IpAddr, to: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    if local_ip.is_ipv4() == to.is_ipv4() && !local_ip.is_unspecified() {
        socket.bind(&SocketAddr::new(local_ip, 0).into())?;
    }
    match socket.connect(&to.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(socket.into())
}

#[cfg(test)]
mod tests;
