use super::limit::LimitCounts;
use super::Core;
use crate::sip::Fault;
use crate::sip::Peer;

/// What the stateless path does with a datagram; bytes are in the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Action {
    /// Send `out[..len]` to `to` (a request to the next hop, or a response
    /// back along its Via).
    Forward { to: Peer, len: usize },
    /// Send `out[..len]`, a response the proxy wrote itself, to `to`.
    Reply { to: Peer, len: usize },
    /// Send nothing; count the reason.
    Drop(DropReason),
}

/// Why a datagram was not sent on. Each has a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A malformed response or ACK (never answered), keep-alive or
    /// oversize datagram.
    Malformed(Fault),
    /// A malformed request whose answer could not be addressed (no Via).
    Unanswerable,
    /// A response whose top Via is not ours.
    ResponseNotOurs,
    /// A response to a request the proxy itself sent.
    ResponseForUs,
    /// The next hop is a host name: name resolution belongs to the shell.
    UnresolvedNextHop,
    /// The output buffer was too small.
    BufferFull,
    /// No backend is configured.
    NoBackend,
    /// A new INVITE or REGISTER while overloaded, past the 503 budget.
    Overloaded,
}

/// Counters by outcome, read by the shard for its statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub requests_forwarded: u64,
    pub responses_forwarded: u64,
    pub replies: u64,
    pub loops_detected: u64,
    /// Requests the proxy made itself: CANCEL, ACK for non-2xx.
    pub requests_sent: u64,
    pub transactions_started: u64,
    pub retransmissions_absorbed: u64,
    pub retransmissions_sent: u64,
    pub absorbed: u64,
    pub cancels: u64,
    pub failovers: u64,
    /// Timers B and F.
    pub timeouts: u64,
    /// Per-try timers that moved an INVITE on.
    pub try_timeouts: u64,
    pub timer_c_fired: u64,
    /// Timer H: our non-2xx final was never ACKed.
    pub ack_timeouts: u64,
    /// ICMP errors that failed a try.
    pub unreachable: u64,
    /// New requests answered 503 because the table was full.
    pub overload_rejected: u64,
    pub dropped_malformed: u64,
    pub dropped_unanswerable: u64,
    pub dropped_response_not_ours: u64,
    pub dropped_response_for_us: u64,
    pub dropped_unresolved: u64,
    pub dropped_buffer_full: u64,
    pub dropped_no_backend: u64,
    /// New requests answered 503 because no member of their set may take
    /// them (all down, draining or probing).
    pub unavailable_rejected: u64,
    /// New INVITEs and REGISTERs answered 503 while the shard was
    /// overloaded, and those dropped past the 503 budget.
    pub shed_rejected: u64,
    pub shed_dropped: u64,
    /// New INVITEs and REGISTERs that met admission while the shard
    /// admitted only a share: what the shard's in-kernel shedding
    /// measures its share against.
    pub admission_checked: u64,
    /// ACKs for the proxy's own final answers, absorbed.
    pub local_acks_absorbed: u64,
    /// Requests too large for a datagram sent over TCP instead (§18.1.1).
    pub moved_to_tcp: u64,
    /// Messages and requests that ran into each limit.
    pub limits: LimitCounts,
}

/// What became of one datagram, for counting and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Sent on: a request to its next hop, a response upstream.
    Forwarded,
    /// Answered by the proxy itself (100 aside: an INVITE that got 100 and
    /// went on is `Forwarded`).
    Replied,
    /// A retransmission or ACK a transaction took in.
    Absorbed,
    /// Nothing sent; the reason is counted.
    Dropped(DropReason),
}

impl Core {
    pub(super) fn count(&mut self, outcome: Outcome) {
        let c = &mut self.counters;
        match outcome {
            Outcome::Forwarded => {}
            Outcome::Replied => c.replies += 1,
            Outcome::Absorbed => c.absorbed += 1,
            Outcome::Dropped(reason) => {
                *match reason {
                    DropReason::Malformed(_) => &mut c.dropped_malformed,
                    DropReason::Unanswerable => &mut c.dropped_unanswerable,
                    DropReason::ResponseNotOurs => &mut c.dropped_response_not_ours,
                    DropReason::ResponseForUs => &mut c.dropped_response_for_us,
                    DropReason::UnresolvedNextHop => &mut c.dropped_unresolved,
                    DropReason::BufferFull => &mut c.dropped_buffer_full,
                    DropReason::NoBackend => &mut c.dropped_no_backend,
                    DropReason::Overloaded => &mut c.shed_dropped,
                } += 1;
            }
        }
    }
}
