//! A shard's loops: io_uring or epoll, turn by turn until the stop, and
//! the way out.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::inbox::Handoff;
use super::start::{uring_required, LoopWord};
use super::stats::PUBLISH_EVERY;
use super::sys::{self, Poller};
use super::uring::{self, Uring};
use super::{Io, Loop, Shard};
use crate::sip::Peer;

const TOKEN_SOCKET: u64 = 0;
const TOKEN_DOORBELL: u64 = 1;
const TOKEN_OWN_SOCKET: u64 = 2;
/// The streams' epoll set, nested: ready while any connection is.
const TOKEN_STREAMS: u64 = 3;

/// How long a stopping shard waits for the others to pass their last
/// receive (a shard that failed never does).
const STOP_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// How long a shard sleeps with nothing to do before it looks at the stop
/// and report flags again (the doorbell wakes it sooner).
const IDLE_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

impl Shard {
    /// Sets up the shard's loop, tells `started` which (io_uring: true)
    /// or why none could be, and runs it until the stop. A ring that
    /// fails here, after the start-up probe succeeded, is an error when
    /// io_uring was asked for and a logged fallback to epoll otherwise.
    pub(super) fn run(
        &mut self,
        use_uring: bool,
        io: Io,
        started: std::sync::mpsc::Sender<LoopWord>,
    ) -> io::Result<()> {
        let ready = match use_uring {
            false => self.epoll_poller().map(Loop::Epoll),
            true => match Uring::new(
                self.output.wire.socket.as_raw_fd(),
                self.output.wire.own_socket.as_raw_fd(),
                self.shared.doorbells[self.index].raw(),
            ) {
                Ok(uring) => self
                    .output
                    .wire
                    .streams
                    .use_ring()
                    .map(|()| Loop::Uring(Box::new(uring))),
                Err(error) if io == Io::Uring => Err(uring_required(error)),
                Err(error) => {
                    tracing::warn!(shard = self.index, %error, "io_uring set-up failed; this shard uses epoll");
                    self.epoll_poller().map(Loop::Epoll)
                }
            },
        };
        let (word, ready) = match ready {
            Ok(ready) => (Ok(matches!(ready, Loop::Uring(_))), Some(ready)),
            Err(error) => (Err(error), None),
        };
        // Sent, and the sender dropped, before the loop runs: start-up
        // waits for every shard's word or for all senders to be gone.
        let _ = started.send((self.index, word));
        drop(started);
        match ready {
            Some(Loop::Uring(uring)) => self.run_uring(*uring),
            Some(Loop::Epoll(poller)) => self.run_epoll(poller),
            None => Ok(()),
        }
    }

    /// An epoll set of the shard's sockets and doorbell.
    pub(super) fn epoll_poller(&self) -> io::Result<Poller> {
        let poller = Poller::new()?;
        poller.add(self.output.wire.socket.as_raw_fd(), TOKEN_SOCKET)?;
        poller.add(self.output.wire.own_socket.as_raw_fd(), TOKEN_OWN_SOCKET)?;
        poller.add(self.shared.doorbells[self.index].raw(), TOKEN_DOORBELL)?;
        poller.add(self.output.wire.streams.fd(), TOKEN_STREAMS)?;
        Ok(poller)
    }

    pub(super) fn run_epoll(&mut self, mut poller: Poller) -> io::Result<()> {
        while !self.shared.stop.load(Ordering::Relaxed) {
            let mut socket_ready = false;
            let mut own_ready = false;
            let mut streams_ready = false;
            let wait = self.output.wait_for(IDLE_WAIT);
            self.output.counters.turns += 1;
            for token in poller.wait(wait.as_millis() as i32)? {
                match token {
                    TOKEN_SOCKET => socket_ready = true,
                    TOKEN_OWN_SOCKET => own_ready = true,
                    TOKEN_STREAMS => streams_ready = true,
                    _ => self.shared.doorbells[self.index].clear(),
                }
            }
            self.output.tick();
            if socket_ready {
                self.receive(self.output.wire.socket.as_raw_fd())?;
            }
            if own_ready {
                self.receive(self.output.wire.own_socket.as_raw_fd())?;
            }
            if streams_ready || self.output.streams_due() {
                self.output.streams(self.index, &self.shared)?;
            }
            self.drain_inbox();
            if std::mem::take(&mut self.recv.icmp_pending)
                | std::mem::take(&mut self.output.wire.icmp_pending)
            {
                self.output.icmp_errors(self.index, &self.shared);
            }
            self.output.timers();
            self.output.stream_failures();
            self.output.ring_owners(&self.shared);
            self.output.flush();
            self.end_turn(Instant::now());
        }
        self.finish();
        Ok(())
    }

    /// The io_uring loop: one `submit_with_args` per turn submits the last
    /// turn's sends and sleeps until a datagram, a doorbell or the idle
    /// timeout.
    pub(super) fn run_uring(&mut self, mut uring: Uring) -> io::Result<()> {
        let mut ready = Vec::with_capacity(sys::BATCH);
        let mut stream_done = Vec::new();
        let mut stream_ops = Vec::new();
        while !self.shared.stop.load(Ordering::Relaxed) {
            let flushed = uring.wait(self.output.wait_for(IDLE_WAIT), &mut ready)?;
            self.output.counters.turns += 1;
            let icmp = flushed.icmp_pending;
            self.output.ring_sent(flushed);
            self.handle_ready(&mut uring, &ready);
            uring.take_stream_done(&mut stream_done);
            if !stream_done.is_empty() || self.output.streams_due() {
                self.output
                    .streams_ring(self.index, &self.shared, &uring, &mut stream_done);
                uring.recycle_stream(&stream_done);
                stream_done.clear();
            }
            self.output.ring_owners(&self.shared);
            self.drain_inbox();
            if icmp | std::mem::take(&mut self.output.wire.icmp_pending) {
                self.output.icmp_errors(self.index, &self.shared);
            }
            self.output.timers();
            self.output.stream_failures();
            self.output.ring_owners(&self.shared);
            self.output.wire.streams.flush();
            self.output.wire.streams.take_ring_ops(&mut stream_ops);
            uring.queue_stream_ops(&mut stream_ops)?;
            let done = Instant::now();
            if !self.output.wire.send.is_empty() {
                uring.queue_sends(&self.output.wire.send)?;
                self.output.wire.record_latency(done);
            }
            self.end_turn(done);
        }
        // Stop: the queued sends go out with this last wait, and what it
        // received is handled like any turn's (its answers leave with the
        // flush in `finish`).
        let flushed = uring.wait(std::time::Duration::ZERO, &mut ready)?;
        self.output.ring_sent(flushed);
        self.handle_ready(&mut uring, &ready);
        self.output.ring_owners(&self.shared);
        self.finish();
        Ok(())
    }

    /// Dispatches the datagrams a wait collected and gives their buffers
    /// back to the ring.
    pub(super) fn handle_ready(&mut self, uring: &mut Uring, ready: &[uring::Ready]) {
        let received_at = self.output.tick();
        for &r in ready {
            self.output.counters.received += 1;
            match uring.datagram(r) {
                Some((source, datagram)) => self.output.dispatch(
                    self.index,
                    &self.shared,
                    Peer::udp(source),
                    datagram,
                    received_at,
                ),
                None => self.output.counters.truncated += 1,
            }
        }
        uring.recycle(ready);
    }

    /// Reads a socket dry, batch by batch.
    pub(super) fn receive(&mut self, fd: std::os::fd::RawFd) -> io::Result<()> {
        loop {
            let count = self.recv.recv(fd)?;
            let received_at = self.output.tick();
            for i in 0..count {
                self.output.counters.received += 1;
                let Some((source, datagram)) = self.recv.datagram(i) else {
                    self.output.counters.truncated += 1;
                    continue;
                };
                self.output.dispatch(
                    self.index,
                    &self.shared,
                    Peer::udp(source),
                    datagram,
                    received_at,
                );
            }
            self.output.ring_owners(&self.shared);
            if count < sys::BATCH {
                return Ok(());
            }
        }
    }

    pub(super) fn drain_inbox(&mut self) {
        while let Some(handoff) = self.shared.inboxes[self.index].pop() {
            match handoff {
                Handoff::Datagram {
                    source,
                    datagram,
                    received_at,
                } => self.output.handle(source, &datagram, received_at),
                Handoff::Unreachable(to) => self.output.unreachable(Peer::udp(to)),
                Handoff::Send { to, bytes } => {
                    let at = self.output.clock;
                    if self.output.wire.streams.send(to, &bytes, at).is_err() {
                        self.output.wire.send_failed += 1;
                    }
                }
            }
        }
    }

    /// The way out, after the last receive: wait (at most `STOP_WAIT`)
    /// until every shard is past its own, so that nothing can be handed to
    /// this one after its inbox is taken for the last time; then send what
    /// it holds.
    pub(super) fn finish(&mut self) {
        let shards = self.shared.inboxes.len();
        self.shared.stopped.fetch_add(1, Ordering::AcqRel);
        let deadline = Instant::now() + STOP_WAIT;
        while self.shared.stopped.load(Ordering::Acquire) < shards && Instant::now() < deadline {
            self.drain_inbox();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        self.drain_inbox();
        self.output.flush();
        self.log_counters();
    }

    /// Counts the turn's work, publishes the counters, and logs them if
    /// SIGUSR1 asked.
    pub(super) fn end_turn(&mut self, done: Instant) {
        let generation = self.shared.routing_generation.load(Ordering::Acquire);
        if generation != self.routing_generation {
            self.routing_generation = generation;
            let routing = self.shared.routing.load_full();
            if let Some(gate) = &mut self.output.gate {
                gate.set_routing(&routing);
            }
            self.output.proxy.set_routing(routing);
        }
        let generation = self.shared.tls_generation.load(Ordering::Acquire);
        if generation != self.tls_generation {
            self.tls_generation = generation;
            if let Some(tls) = self.shared.tls.load_full() {
                self.output.wire.streams.set_tls(tls.for_shard());
            }
        }
        let c = &mut self.output.counters;
        c.busy_ns += done.saturating_duration_since(self.output.clock).as_nanos() as u64;
        self.check_overload(done);
        if done.saturating_duration_since(self.published) >= PUBLISH_EVERY {
            self.published = done;
            self.publish(done);
        }
        self.report_if_asked();
    }
}
