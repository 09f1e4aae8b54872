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
use std::time::Instant;

use hdrhistogram::Histogram;

use super::overload::KernelShed;
use super::Shard;
use crate::guard::GuardCounters;
use crate::proxy::Counters;
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

// The shard's side: the counters it keeps on its own thread, how often it
// publishes them, and the same numbers in its log on SIGUSR1.

/// How often a busy shard publishes its counters for `/metrics` (an idle
/// one still turns, and publishes, every `IDLE_WAIT`).
pub(super) const PUBLISH_EVERY: std::time::Duration = std::time::Duration::from_millis(5);

/// How often a shard copies its latency histogram out for `/metrics`.
const LATENCY_OFFER_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Counters of one shard, beside the proxy core's own.
#[derive(Clone, Debug, Default)]
pub(super) struct ShardCounters {
    pub(super) received: u64,
    /// Turns of the event loop: each one a wake-up.
    pub(super) turns: u64,
    /// Turns that ran due timers.
    pub(super) timer_turns: u64,
    pub(super) handed_off: u64,
    pub(super) handoff_dropped: u64,
    pub(super) truncated: u64,
    /// Time spent working, from wake-up to the end of each turn.
    pub(super) busy_ns: u64,
    /// Datagrams received, by method and status class.
    pub(super) messages: MessageCounts,
}

impl Shard {
    /// Stores this shard's counters where the control thread reads them
    /// (relaxed stores, one writer each); the latency histogram about once
    /// a second.
    pub(super) fn publish(&mut self, now: Instant) {
        let stats = &self.shared.stats[self.index];
        let c = &self.output.counters;
        let w = &self.output.wire;
        let p: &Counters = self.output.proxy.counters();
        let (servers, clients) = self.output.proxy.transactions();
        for (stat, value) in [
            (Stat::Received, c.received),
            (Stat::Sent, w.sent),
            (Stat::HandedOff, c.handed_off),
            (Stat::Turns, c.turns),
            (Stat::TimerTurns, c.timer_turns),
            (Stat::BusyNs, c.busy_ns),
            (Stat::RequestsForwarded, p.requests_forwarded),
            (Stat::ResponsesForwarded, p.responses_forwarded),
            (Stat::Replies, p.replies),
            (Stat::RequestsGenerated, p.requests_sent),
            (Stat::TransactionsStarted, p.transactions_started),
            (Stat::RetransmissionsAbsorbed, p.retransmissions_absorbed),
            (Stat::RetransmissionsSent, p.retransmissions_sent),
            (Stat::Cancels, p.cancels),
            (Stat::Failovers, p.failovers),
            (Stat::Timeouts, p.timeouts),
            (Stat::TryTimeouts, p.try_timeouts),
            (Stat::TimerC, p.timer_c_fired),
            (Stat::AckTimeouts, p.ack_timeouts),
            (Stat::Unreachable, p.unreachable),
            (Stat::OverloadRejected, p.overload_rejected),
            (Stat::UnavailableRejected, p.unavailable_rejected),
            (Stat::LoopsDetected, p.loops_detected),
            (Stat::ServerTransactions, servers as u64),
            (Stat::ClientTransactions, clients as u64),
            (Stat::Dialogs, self.output.proxy.dialogs() as u64),
            (Stat::DroppedHandoffQueueFull, c.handoff_dropped),
            (Stat::DroppedSendFailed, w.send_failed),
            (Stat::DroppedTruncated, c.truncated),
            (Stat::DroppedMalformed, p.dropped_malformed),
            (Stat::DroppedUnanswerable, p.dropped_unanswerable),
            (Stat::DroppedResponseNotOurs, p.dropped_response_not_ours),
            (Stat::DroppedResponseForUs, p.dropped_response_for_us),
            (Stat::DroppedUnresolved, p.dropped_unresolved),
            (Stat::DroppedBufferFull, p.dropped_buffer_full),
            (Stat::DroppedNoBackend, p.dropped_no_backend),
            (Stat::Overloaded, u64::from(self.overload.overloaded())),
            (Stat::OverloadEntered, self.overload.entered),
            (Stat::ShedRejected, p.shed_rejected),
            (Stat::ShedDropped, p.shed_dropped),
            (
                Stat::ShedInKernel,
                self.kernel_shed.as_ref().map_or(0, KernelShed::shed),
            ),
            (Stat::LocalAcksAbsorbed, p.local_acks_absorbed),
        ] {
            stats.set(stat, value);
        }
        let s = &w.streams.counters;
        let f = |fault: crate::sip::StreamFault| s.faults[fault.index()];
        use crate::sip::StreamFault as F;
        for (stat, value) in [
            (Stat::ConnectionsOpen, w.streams.open() as u64),
            (Stat::ConnectionsAccepted, s.accepted),
            (Stat::ConnectionsConnected, s.connected),
            (Stat::ConnectionsClosedPeer, s.closed_by_peer),
            (Stat::ConnectionsClosedIdle, s.closed_idle),
            (Stat::ConnectionsClosedSlow, s.closed_slow),
            (Stat::ConnectionsClosedBacklog, s.closed_backlog),
            (Stat::ConnectionsClosedBudget, s.closed_budget),
            (Stat::ConnectionsRefused, s.refused),
            (Stat::ConnectionsConnectFailed, s.connect_failed),
            (
                Stat::ConnectionsClosedHandshakeTimeout,
                s.closed_handshake_timeout,
            ),
            (Stat::ConnectionsClosedTls, s.closed_tls),
            (Stat::TlsHandshakesOk, s.tls_handshakes_ok),
            (Stat::TlsHandshakesFailed, s.tls_handshakes_failed),
            (Stat::WsUpgraded, s.ws_upgraded),
            (Stat::WsRefused, s.ws_refused),
            (Stat::ConnectionsClosedWs, s.closed_ws),
            (Stat::StreamFaultNoContentLength, f(F::NoContentLength)),
            (Stat::StreamFaultBadContentLength, f(F::BadContentLength)),
            (Stat::StreamFaultHeadersTooLong, f(F::HeadersTooLong)),
            (Stat::StreamFaultMessageTooLarge, f(F::MessageTooLarge)),
            (Stat::StreamFaultBufferFull, f(F::BufferFull)),
            (Stat::StreamPings, s.pings),
            (Stat::StreamSendFailed, s.send_failed),
            (Stat::MovedToTcp, p.moved_to_tcp),
        ] {
            stats.set(stat, value);
        }
        for limit in crate::proxy::Limit::ALL {
            stats.set(Stat::of_limit(limit), p.limits.get(limit));
        }
        stats.set_messages(&c.messages, &w.sent_messages);
        if let Some(gate) = &mut self.output.gate {
            gate.publish(stats, now);
        }
        if now.saturating_duration_since(self.latency_offered) >= LATENCY_OFFER_EVERY {
            self.latency_offered = now;
            stats.offer_latency(&w.latency_ns);
            stats.offer_rtt(self.output.proxy.transaction_rtt());
            stats.offer_duration(self.output.proxy.transaction_duration());
        }
    }

    pub(super) fn report_if_asked(&mut self) {
        let report = self.shared.report.load(Ordering::Relaxed);
        if report != self.reported {
            self.reported = report;
            self.log_counters();
        }
    }

    pub(super) fn log_counters(&self) {
        let c = &self.output.counters;
        let p: &Counters = self.output.proxy.counters();
        tracing::info!(
            shard = self.index,
            received = c.received,
            turns = c.turns,
            timer_turns = c.timer_turns,
            sent = self.output.wire.sent,
            handed_off = c.handed_off,
            requests_forwarded = p.requests_forwarded,
            responses_forwarded = p.responses_forwarded,
            replies = p.replies,
            dropped_handoff_queue_full = c.handoff_dropped,
            dropped_send_failed = self.output.wire.send_failed,
            dropped_truncated = c.truncated,
            dropped_malformed = p.dropped_malformed,
            dropped_unanswerable = p.dropped_unanswerable,
            dropped_response_not_ours = p.dropped_response_not_ours,
            dropped_response_for_us = p.dropped_response_for_us,
            dropped_unresolved = p.dropped_unresolved,
            dropped_buffer_full = p.dropped_buffer_full,
            dropped_no_backend = p.dropped_no_backend,
            loops_detected = p.loops_detected,
            "shard counters"
        );
        let (servers, clients) = self.output.proxy.transactions();
        tracing::info!(
            shard = self.index,
            server_transactions = servers,
            client_transactions = clients,
            transactions_started = p.transactions_started,
            requests_sent = p.requests_sent,
            retransmissions_absorbed = p.retransmissions_absorbed,
            retransmissions_sent = p.retransmissions_sent,
            cancels = p.cancels,
            failovers = p.failovers,
            timeouts = p.timeouts,
            try_timeouts = p.try_timeouts,
            timer_c_fired = p.timer_c_fired,
            ack_timeouts = p.ack_timeouts,
            unreachable = p.unreachable,
            overload_rejected = p.overload_rejected,
            "shard transactions"
        );
        if let Some(gate) = &self.output.gate {
            gate.log_counters();
        }
        let h = &self.output.wire.latency_ns;
        if !h.is_empty() {
            let us = |ns: u64| ns as f64 / 1000.0;
            tracing::info!(
                shard = self.index,
                datagrams = h.len(),
                p50_us = us(h.value_at_quantile(0.50)),
                p90_us = us(h.value_at_quantile(0.90)),
                p99_us = us(h.value_at_quantile(0.99)),
                max_us = us(h.max()),
                "shard latency, receive to send"
            );
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
