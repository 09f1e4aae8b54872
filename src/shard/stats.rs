//! What each shard publishes for the control thread: the values of
//! [`Stat`], the messages by method and status class, and copies of its
//! histograms.
//!
//! A shard counts in plain integers on its own thread and, at the end of a
//! loop turn at most every 5 ms (and at least every 250 ms, when idle),
//! stores them into its [`ShardStats`] with relaxed atomic stores: one
//! writer per value, so no read-modify-write and no lock on the packet
//! path. The control thread reads them whenever it is scraped
//! (`control::metrics` renders them); a value may be a few milliseconds
//! old, never torn.

mod meta;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;

use crate::guard::GuardCounters;
use crate::sip::Method;

pub use meta::{Kind, Meta, Stat};

/// Status classes 1xx to 6xx.
pub const CLASSES: usize = 6;
const METHODS: usize = Method::ALL.len();

/// What one datagram is, for the by-method and by-class counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniffed {
    Request(Method),
    /// The status class, 1 to 6.
    Response(u8),
    /// Neither: garbage, or cut short.
    Unknown,
}

/// Classifies a datagram by its first bytes only (the full scan is the
/// proxy core's): a response by its class digit, a request by its method.
pub fn classify(datagram: &[u8]) -> Sniffed {
    if let Some(rest) = datagram.strip_prefix(b"SIP/2.0 ") {
        return match rest.first() {
            Some(&digit @ b'1'..=b'6') => Sniffed::Response(digit - b'0'),
            _ => Sniffed::Unknown,
        };
    }
    let head = &datagram[..datagram.len().min(12)];
    match memchr::memchr(b' ', head) {
        Some(end) if end > 0 => Sniffed::Request(Method::from_token(&head[..end])),
        _ => Sniffed::Unknown,
    }
}

/// Plain per-shard counts of messages by method and class, kept on the
/// shard's thread and published with the rest.
#[derive(Clone, Debug, Default)]
pub struct MessageCounts {
    pub requests: [u64; METHODS],
    pub responses: [u64; CLASSES],
}

impl MessageCounts {
    pub fn count(&mut self, kind: Sniffed) {
        match kind {
            Sniffed::Request(method) => self.requests[method as usize] += 1,
            Sniffed::Response(class) => {
                if let Some(n) = self.responses.get_mut(usize::from(class).wrapping_sub(1)) {
                    *n += 1;
                }
            }
            Sniffed::Unknown => {}
        }
    }
}

/// Message counts as a shard publishes them (one writer, relaxed), read
/// by `control::metrics`.
pub(crate) struct PublishedCounts {
    pub(crate) requests: [AtomicU64; METHODS],
    pub(crate) responses: [AtomicU64; CLASSES],
}

impl PublishedCounts {
    fn new() -> PublishedCounts {
        PublishedCounts {
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            responses: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn store(&self, counts: &MessageCounts) {
        for (to, from) in self.requests.iter().zip(&counts.requests) {
            to.store(*from, Ordering::Relaxed);
        }
        for (to, from) in self.responses.iter().zip(&counts.responses) {
            to.store(*from, Ordering::Relaxed);
        }
    }
}

/// One shard's published values.
pub struct ShardStats {
    values: [AtomicU64; Stat::ALL.len()],
    pub(crate) received: PublishedCounts,
    pub(crate) sent: PublishedCounts,
    /// The shard's receive-to-send latency (ns) and its backends' round
    /// trips (µs), copied in about once a second (the shard only ever
    /// `try_lock`s them).
    pub(crate) latency_ns: Mutex<Option<Histogram<u64>>>,
    pub(crate) rtt_us: Mutex<Option<Histogram<u64>>>,
    pub(crate) duration_us: Mutex<Option<Histogram<u64>>>,
    /// The shard's guard counts, by [`GuardCounters`] field (see
    /// `control::metrics::render_guard`).
    guard: [AtomicU64; GUARD_VALUES],
}

impl Default for ShardStats {
    fn default() -> Self {
        ShardStats {
            values: std::array::from_fn(|_| AtomicU64::new(0)),
            received: PublishedCounts::new(),
            sent: PublishedCounts::new(),
            latency_ns: Mutex::new(None),
            rtt_us: Mutex::new(None),
            duration_us: Mutex::new(None),
            guard: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl ShardStats {
    pub fn set(&self, stat: Stat, value: u64) {
        self.values[stat as usize].store(value, Ordering::Relaxed);
    }

    pub fn get(&self, stat: Stat) -> u64 {
        self.values[stat as usize].load(Ordering::Relaxed)
    }

    pub fn set_messages(&self, received: &MessageCounts, sent: &MessageCounts) {
        self.received.store(received);
        self.sent.store(sent);
    }

    /// Copies the shard's latency histogram in, unless the control thread
    /// holds the lock right now (then the next second's copy will do).
    pub fn offer_latency(&self, histogram: &Histogram<u64>) {
        offer(&self.latency_ns, histogram);
    }

    /// As [`ShardStats::offer_latency`], for the backends' round trips.
    pub fn offer_rtt(&self, histogram: &Histogram<u64>) {
        offer(&self.rtt_us, histogram);
    }

    /// As [`ShardStats::offer_latency`], for server transactions' durations.
    pub fn offer_duration(&self, histogram: &Histogram<u64>) {
        offer(&self.duration_us, histogram);
    }

    /// Stores the shard's guard counts (relaxed, one writer).
    pub fn set_guard(&self, counters: &GuardCounters) {
        for (to, from) in self.guard.iter().zip(guard_values(counters)) {
            to.store(from, Ordering::Relaxed);
        }
    }

    pub fn guard(&self) -> GuardCounters {
        let [acl_denied, banned, bans_started, sources, evictions] =
            std::array::from_fn(|i| self.guard[i].load(Ordering::Relaxed));
        GuardCounters {
            acl_denied,
            banned,
            bans_started,
            sources,
            evictions,
        }
    }
}

const GUARD_VALUES: usize = 5;

fn guard_values(c: &GuardCounters) -> [u64; GUARD_VALUES] {
    [
        c.acl_denied,
        c.banned,
        c.bans_started,
        c.sources,
        c.evictions,
    ]
}

fn offer(slot: &Mutex<Option<Histogram<u64>>>, histogram: &Histogram<u64>) {
    if let Ok(mut shared) = slot.try_lock() {
        match shared.as_mut() {
            Some(copy) => {
                copy.reset();
                // Same bounds, so adding cannot fail; if it did, the copy
                // would just be empty until the next offer.
                let _ = copy.add(histogram);
            }
            None => *shared = Some(histogram.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_reads_the_class_digit_and_the_method() {
        assert_eq!(classify(b"SIP/2.0 180 Ringing\r\n"), Sniffed::Response(1));
        assert_eq!(classify(b"SIP/2.0 503 Busy\r\n"), Sniffed::Response(5));
        assert_eq!(classify(b"SIP/2.0 703 No\r\n"), Sniffed::Unknown);
        assert_eq!(
            classify(b"INVITE sip:a@b SIP/2.0\r\n"),
            Sniffed::Request(Method::Invite)
        );
        assert_eq!(
            classify(b"REGISTER sip:b SIP/2.0\r\n"),
            Sniffed::Request(Method::Register)
        );
        assert_eq!(
            classify(b"FOO sip:b SIP/2.0\r\n"),
            Sniffed::Request(Method::Other)
        );
        assert_eq!(classify(b""), Sniffed::Unknown);
        assert_eq!(classify(b" INVITE"), Sniffed::Unknown);
        assert_eq!(classify(b"\x00\x01\x02"), Sniffed::Unknown);
    }
}
