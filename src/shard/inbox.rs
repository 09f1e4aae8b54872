//! A shard's inbox: the bounded queue other shards hand it datagrams
//! (and ICMP news) through.

use std::net::SocketAddr;

use crate::sip::Peer;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crossbeam_queue::ArrayQueue;

/// What one shard hands another.
pub(super) enum Handoff {
    /// A datagram on its way to the shard that owns its call.
    Datagram {
        source: Peer,
        datagram: Vec<u8>,
        /// When the receiving shard got it, so the owner's latency
        /// includes the time in the queue.
        received_at: Instant,
    },
    /// ICMP said this destination is unreachable. The kernel gives the
    /// error to one socket of the `SO_REUSEPORT` group, not always the
    /// sender's, so the shard that reads it tells the others.
    Unreachable(SocketAddr),
    /// A message for a connection this shard owns, from the shard that
    /// owns its call.
    Send { to: Peer, bytes: Vec<u8> },
}

/// A shard's inbox: what other shards hand it, bounded in slots and in
/// datagram bytes. Slots alone would let a flood of 64 KiB datagrams hold
/// `slots` × 64 KiB while the owner stalls.
pub(super) struct Inbox {
    queue: ArrayQueue<Handoff>,
    /// Datagram bytes in the queue, reserved before a push.
    pub(super) bytes: AtomicUsize,
    bytes_max: usize,
}

impl Inbox {
    pub(super) fn new(slots: usize, bytes_max: usize) -> Inbox {
        Inbox {
            queue: ArrayQueue::new(slots.max(1)),
            bytes: AtomicUsize::new(0),
            bytes_max,
        }
    }

    /// Queues a handoff, or gives it back when a slot or the bytes for it
    /// are missing. Senders reserve the bytes first, so that two of them
    /// cannot pass the bound together.
    pub(super) fn push(&self, handoff: Handoff) -> Result<(), Handoff> {
        let len = handoff.bytes();
        if self.bytes.fetch_add(len, Ordering::Relaxed) + len > self.bytes_max {
            self.bytes.fetch_sub(len, Ordering::Relaxed);
            return Err(handoff);
        }
        self.queue.push(handoff).inspect_err(|_| {
            self.bytes.fetch_sub(len, Ordering::Relaxed);
        })
    }

    pub(super) fn pop(&self) -> Option<Handoff> {
        let handoff = self.queue.pop()?;
        self.bytes.fetch_sub(handoff.bytes(), Ordering::Relaxed);
        Some(handoff)
    }

    /// How full it is, 0.0 to 1.0: the fuller of slots and bytes.
    pub(super) fn fill(&self) -> f64 {
        let slots = self.queue.len() as f64 / self.queue.capacity() as f64;
        let bytes = self.bytes.load(Ordering::Relaxed) as f64 / self.bytes_max.max(1) as f64;
        slots.max(bytes)
    }
}

impl Handoff {
    /// What it holds against the inbox's byte bound.
    fn bytes(&self) -> usize {
        match self {
            Handoff::Datagram { datagram, .. } => datagram.len(),
            Handoff::Unreachable(_) => 0,
            Handoff::Send { bytes, .. } => bytes.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(len: usize) -> Handoff {
        Handoff::Datagram {
            source: "192.0.2.1:5060".parse().unwrap(),
            datagram: vec![b'x'; len],
            received_at: Instant::now(),
        }
    }

    #[test]
    fn the_inbox_holds_no_more_bytes_than_its_bound() {
        let inbox = Inbox::new(8, 100_000);
        assert!(inbox.push(datagram(60_000)).is_ok());
        // A second 60 KB datagram would pass the bound; a slot is free.
        assert!(inbox.push(datagram(60_000)).is_err());
        assert!(inbox.push(datagram(40_000)).is_ok(), "exactly the bound");
        assert!(inbox.push(datagram(1)).is_err());
        assert!((inbox.fill() - 1.0).abs() < 1e-9);
        // ICMP news takes a slot, no bytes: it still gets in.
        assert!(inbox
            .push(Handoff::Unreachable("192.0.2.2:5060".parse().unwrap()))
            .is_ok());
        // What is taken out frees its bytes, and nothing is left counted.
        while inbox.pop().is_some() {}
        assert_eq!(inbox.bytes.load(Ordering::Relaxed), 0);
        assert!(inbox.push(datagram(100_000)).is_ok());
    }

    #[test]
    fn a_full_inbox_gives_the_bytes_back() {
        let inbox = Inbox::new(1, 100_000);
        assert!(inbox.push(datagram(10)).is_ok());
        assert!(inbox.push(datagram(10)).is_err(), "no slot");
        assert_eq!(inbox.bytes.load(Ordering::Relaxed), 10);
        assert!((inbox.fill() - 1.0).abs() < 1e-9, "slots full");
    }
}
