//! What a shard does with a datagram: the guard's screen, the owner by
//! Call-ID, the handoff or the proxy core; and the wire the core writes
//! to, whose batch goes out at the end of the turn.

use std::os::fd::AsRawFd;
use std::time::Instant;

use hdrhistogram::Histogram;
use socket2::Socket;

use super::inbox::Handoff;
use super::stats::{self, MessageCounts, ShardCounters};
use super::streams::Streams;
use super::sys::{self, SendBatch};
use super::{gate, Shared};
use crate::proxy::{Outcome, Proxy, Transmit};
use crate::sip::lex::fnv1a;
use crate::sip::{find_call_id, Peer};
use crate::txn::Millis;

/// The latency histogram's range, in nanoseconds: anything past 10 s is a
/// stall and is clamped to the top.
pub(super) const LATENCY_NS_MAX: u64 = 10_000_000_000;

/// Everything that turns a datagram into bytes on the wire: the proxy
/// core and the wire it writes to. Apart from the receive batch so that a
/// received datagram can be handled in place.
pub(super) struct Output {
    pub(super) proxy: Proxy,
    pub(super) wire: Wire,
    /// Shards whose inbox got datagrams during this turn.
    pub(super) to_ring: Vec<bool>,
    /// Access control and flood protection; `None` when off.
    pub(super) gate: Option<gate::Gate>,
    pub(super) counters: ShardCounters,
    /// The shard's clock for the proxy core: milliseconds since start.
    pub(super) epoch: Instant,
    /// When this turn began (read once a turn): the time of its datagrams
    /// and of its timers.
    pub(super) clock: Instant,
}

/// The socket and the batch of datagrams waiting to go out on it: what
/// the proxy core transmits into.
pub(super) struct Wire {
    /// The listen socket: requests arrive on it, responses leave from it
    /// (RFC 3581: from where the request came in).
    pub(super) socket: Socket,
    /// The shard's own socket: the requests we send leave from it, and
    /// their responses come back to it.
    pub(super) own_socket: Socket,
    pub(super) send: SendBatch,
    /// When the datagram being handled was received; what it causes is
    /// measured from there.
    pub(super) received_at: Instant,
    /// Receive times of the datagrams whose output sits in `send`.
    pub(super) in_flight: Vec<Instant>,
    /// Gateway latency per datagram sent, from the batch that received it
    /// to the `sendmmsg` that sent what it caused.
    pub(super) latency_ns: Histogram<u64>,
    pub(super) sent: u64,
    /// Datagrams sent, by method and status class.
    pub(super) sent_messages: MessageCounts,
    pub(super) send_failed: u64,
    /// A `sendmmsg` reported an ICMP error: read the error queue.
    pub(super) icmp_pending: bool,
    /// The shard's connections (TCP): sends to a stream peer go here.
    pub(super) streams: Streams,
    /// Stream sends for connections other shards own, to hand over.
    pub(super) handoffs: Vec<(usize, Handoff)>,
}

impl Output {
    pub(super) fn new(proxy: Proxy, wire: Wire, shards: usize, gate: Option<gate::Gate>) -> Output {
        Output {
            proxy,
            wire,
            to_ring: vec![false; shards],
            gate,
            counters: ShardCounters::default(),
            epoch: Instant::now(),
            clock: Instant::now(),
        }
    }

    /// Counts a received datagram by method or status class, and handles
    /// it here when this shard owns its call, else hands it to the owner's
    /// inbox and marks the owner to be rung. The guard screens it first,
    /// before any scanning (ACL, bans).
    pub(super) fn dispatch(
        &mut self,
        index: usize,
        shared: &Shared,
        source: Peer,
        datagram: &[u8],
        received_at: Instant,
    ) {
        if let Some(gate) = &mut self.gate {
            if !gate.screen(self.clock, source.addr) {
                return;
            }
        }
        self.counters.messages.count(stats::classify(datagram));
        let shards = shared.inboxes.len() as u64;
        // One shard owns every call: no Call-ID to look for.
        let owner = match shards {
            1 => index,
            _ => find_call_id(datagram).map_or(index, |id| (fnv1a(&[id]) % shards) as usize),
        };
        if owner == index {
            self.handle(source, datagram, received_at);
            return;
        }
        let handoff = Handoff::Datagram {
            source,
            datagram: datagram.to_vec(),
            received_at,
        };
        match shared.inboxes[owner].push(handoff) {
            Ok(()) => {
                self.counters.handed_off += 1;
                self.to_ring[owner] = true;
            }
            Err(_) => self.counters.handoff_dropped += 1,
        }
    }

    /// Services the shard's connections: what they read is dispatched
    /// like datagrams (by Call-ID owner), connections we opened that
    /// failed fail their tries over, and sends for other shards'
    /// connections are handed to them.
    pub(super) fn streams(&mut self, index: usize, shared: &Shared) -> std::io::Result<()> {
        let received_at = self.clock;
        self.wire.streams.poll(received_at)?;
        self.dispatch_arrivals(index, shared, received_at);
        Ok(())
    }

    /// Screens the connections accepted this turn, dispatches the
    /// messages read, and fails over the tries of connections that failed.
    fn dispatch_arrivals(&mut self, index: usize, shared: &Shared, received_at: Instant) {
        if let Some(gate) = &mut self.gate {
            let streams = &mut self.wire.streams;
            streams.screen_accepted(|source| gate.screen(received_at, source));
        }
        let arrivals = std::mem::take(&mut self.wire.streams.arrivals);
        let frames = std::mem::take(&mut self.wire.streams.frames);
        for (peer, range) in &frames {
            self.counters.received += 1;
            if let Some(message) = arrivals.get(range.clone()) {
                self.dispatch(index, shared, *peer, message, received_at);
            }
        }
        self.wire.streams.arrivals = arrivals;
        self.wire.streams.frames = frames;
        self.wire.streams.clear_arrivals();
        self.stream_failures();
    }

    /// The streams under io_uring: the ring's completions framed into
    /// messages, dispatched as [`Output::streams`] does.
    pub(super) fn streams_ring(
        &mut self,
        index: usize,
        shared: &Shared,
        uring: &super::uring::Uring,
        done: &mut [super::streams::RingDone],
    ) {
        let received_at = self.clock;
        let streams = &mut self.wire.streams;
        streams.ring_done(received_at, done, |bid, len| uring.stream_buffer(bid, len));
        self.dispatch_arrivals(index, shared, received_at);
    }

    /// Whether the streams' deadlines are due to be checked, with nothing
    /// ready on them (an idle shard still closes idle connections).
    pub(super) fn streams_due(&self) -> bool {
        self.wire.streams.sweep_due(self.clock)
    }

    /// Tries waiting on a connection we opened that failed go on to the
    /// next backend, as after an ICMP error.
    pub(super) fn stream_failures(&mut self) {
        while let Some(peer) = self.wire.streams.failed.pop() {
            self.unreachable(peer);
        }
    }

    /// Rings the doorbell of every shard handed datagrams since the last call.
    pub(super) fn ring_owners(&mut self, shared: &Shared) {
        for (owner, handoff) in self.wire.handoffs.drain(..) {
            match shared.inboxes[owner].push(handoff) {
                Ok(()) => self.to_ring[owner] = true,
                Err(_) => self.counters.handoff_dropped += 1,
            }
        }
        for (owner, ring) in self.to_ring.iter_mut().enumerate() {
            if std::mem::take(ring) {
                shared.doorbells[owner].ring();
            }
        }
    }

    /// The ring reports the last batch sent: count it, reuse the batch.
    pub(super) fn ring_sent(&mut self, flushed: sys::Flushed) {
        let wire = &mut self.wire;
        wire.sent += flushed.sent;
        wire.send_failed += flushed.failed;
        if !wire.in_flight.is_empty() {
            wire.record_latency(Instant::now());
        }
        wire.send.clear();
    }

    /// Reads the clock for this turn.
    pub(super) fn tick(&mut self) -> Instant {
        self.clock = Instant::now();
        self.clock
    }

    /// The proxy core's time: milliseconds since the shard started, as of
    /// this turn's [`Output::tick`].
    pub(super) fn now(&self) -> Millis {
        self.clock.saturating_duration_since(self.epoch).as_millis() as Millis
    }

    /// Reads the ICMP errors the socket queued; every shard (this one
    /// and, through their inboxes, the others) fails over each try still
    /// waiting on a destination they name.
    pub(super) fn icmp_errors(&mut self, index: usize, shared: &Shared) {
        let mut unreachable = Vec::new();
        sys::read_icmp_errors(self.wire.socket.as_raw_fd(), &mut unreachable);
        sys::read_icmp_errors(self.wire.own_socket.as_raw_fd(), &mut unreachable);
        for to in unreachable {
            tracing::debug!(%to, "ICMP: destination unreachable");
            self.unreachable(Peer::udp(to));
            for (other, inbox) in shared.inboxes.iter().enumerate() {
                if other != index && inbox.push(Handoff::Unreachable(to)).is_ok() {
                    self.to_ring[other] = true;
                }
            }
        }
        self.ring_owners(shared);
    }

    pub(super) fn unreachable(&mut self, to: Peer) {
        let now = self.now();
        self.wire.received_at = self.clock;
        self.proxy.on_unreachable(now, to, &mut self.wire);
    }

    /// Runs the proxy core's due timers (retransmissions, timeouts).
    pub(super) fn timers(&mut self) {
        let now = self.now();
        if self.proxy.next_deadline().is_some_and(|d| d <= now) {
            self.counters.timer_turns += 1;
            self.wire.received_at = self.clock;
            self.proxy.on_timers(now, &mut self.wire);
        }
    }

    /// How long the loop may sleep: until the next timer, at most `idle`.
    pub(super) fn wait_for(&self, idle: std::time::Duration) -> std::time::Duration {
        match self.proxy.next_deadline() {
            Some(deadline) => {
                // A fresh reading: the turn's own is as old as its work.
                let now = self.epoch.elapsed().as_millis() as Millis;
                let ms = deadline.saturating_sub(now);
                idle.min(std::time::Duration::from_millis(ms))
            }
            None => idle,
        }
    }

    /// Runs one datagram through the proxy core; what it sends is queued.
    /// The guard meters requests here, on the owner shard, so that a
    /// source's requests spread over the shards by Call-ID whether the
    /// kernel steered them or a shard handed them over.
    pub(super) fn handle(&mut self, source: Peer, datagram: &[u8], received_at: Instant) {
        if let Some(gate) = &mut self.gate {
            if !gate.meter(self.clock, source.addr, datagram) {
                return;
            }
        }
        self.wire.received_at = received_at;
        let now = self.now();
        let outcome = self.proxy.handle(now, source, datagram, &mut self.wire);
        if let Outcome::Dropped(reason) = outcome {
            if !matches!(
                reason,
                crate::proxy::DropReason::Malformed(crate::sip::Fault::Empty)
            ) {
                tracing::debug!(%source, ?reason, "dropped a datagram");
            }
        }
    }

    /// Sends the turn's datagrams and writes its stream messages.
    pub(super) fn flush(&mut self) {
        self.wire.flush();
        self.wire.streams.flush();
    }
}

impl Wire {
    pub(super) fn new(socket: Socket, own_socket: Socket, streams: Streams) -> Wire {
        Wire {
            streams,
            handoffs: Vec::new(),
            socket,
            own_socket,
            send: SendBatch::new(),
            received_at: Instant::now(),
            in_flight: Vec::with_capacity(sys::BATCH),
            latency_ns: Histogram::new_with_bounds(100, LATENCY_NS_MAX, 3)
                .expect("constant histogram bounds are valid"),
            sent: 0,
            sent_messages: MessageCounts::default(),
            send_failed: 0,
            icmp_pending: false,
        }
    }

    pub(super) fn record_latency(&mut self, now: Instant) {
        for received_at in self.in_flight.drain(..) {
            let ns = (now - received_at)
                .as_nanos()
                .min(u128::from(LATENCY_NS_MAX)) as u64;
            self.latency_ns.saturating_record(ns);
        }
    }

    pub(super) fn flush(&mut self) {
        if self.send.is_empty() {
            return;
        }
        let flushed = self
            .send
            .flush(self.socket.as_raw_fd(), self.own_socket.as_raw_fd());
        self.icmp_pending |= flushed.icmp_pending;
        self.sent += flushed.sent;
        self.send_failed += flushed.failed;
        self.record_latency(Instant::now());
    }
}

impl Transmit for Wire {
    fn buffer(&mut self) -> &mut [u8] {
        if !self.send.has_room() {
            self.flush();
        }
        self.send.space()
    }

    /// Requests leave from the shard's own socket, responses from the
    /// listen socket; the proxy core writes whole messages, so the first
    /// bytes tell which.
    fn send(&mut self, to: Peer, len: usize) {
        if to.transport.is_stream() {
            self.send_stream(to, len);
            return;
        }
        let to = to.addr;
        let message = self.send.space();
        let response = message.starts_with(b"SIP/2.0 ");
        self.sent_messages
            .count(stats::classify(&message[..len.min(message.len())]));
        self.send.push(to, len, !response);
        self.in_flight.push(self.received_at);
    }
}

impl Wire {
    /// A message for a connection: written to it now when this shard
    /// owns it (or can open one), else handed to the shard that does.
    fn send_stream(&mut self, to: Peer, len: usize) {
        let message = &self.send.space()[..len];
        self.sent_messages.count(stats::classify(message));
        match self.streams.send(to, message, self.received_at) {
            Ok(()) => self.sent += 1,
            Err(owner) => {
                let handoff = Handoff::Send {
                    to,
                    bytes: message.to_vec(),
                };
                self.handoffs.push((owner, handoff));
            }
        }
    }
}
