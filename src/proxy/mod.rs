//! The proxy core of one shard, transaction-stateful (RFC 3261 §16, §17):
//! datagrams, timer expiries and ICMP errors in, datagrams out through a
//! [`Transmit`].
//!
//! A request opens a server transaction (an INVITE gets 100 at once) and
//! a client transaction towards its next hop: the pool for an initial
//! request, the Route set or Request-URI for an in-dialog one. Responses
//! come back through the client transaction, and failures (timeout, ICMP,
//! a failover code) move on to the next backend not tried yet (serial
//! forking, §16.7). ACK for 2xx, CANCEL with no INVITE here, and
//! responses with no transaction pass statelessly (§16.7 step 3, §16.10).
//! Nothing here touches a socket or a clock: time is given in
//! milliseconds, so every path is tested with a fake clock.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use std::sync::Arc;

use hdrhistogram::Histogram;

use crate::balance::{ActiveDialog, Routing, Selector};
use crate::sip::{
    write_rejection, write_response, Answer, Editor, LocalAddress, LocalResponse, Message, Peer,
    Scanner,
};
use crate::txn::{ClientState, KeyHasher, Millis, Slot, Transactions, TxnConfig};

mod branch;
mod cancel;
mod failover;
mod hop;
mod limit;
mod outcome;
pub mod overload;
mod request;
mod response;
pub mod shed;
mod timers;

pub use hop::{reply_address, response_address};
pub use limit::{Limit, LimitCounts};
pub use outcome::{Counters, DropReason, Outcome};

use overload::{OverloadConfig, RejectBudget};

/// Where the proxy core writes what it sends: a buffer for the next
/// datagram, then its length and destination. The shard's send batch is
/// one; tests collect into a vector.
pub trait Transmit {
    /// Room for one datagram: [`UDP_PAYLOAD_MAX`] bytes in the shard, so
    /// that nothing is written that the kernel would refuse to send.
    fn buffer(&mut self) -> &mut [u8];
    /// Sends the first `len` bytes of the last [`Transmit::buffer`].
    fn send(&mut self, to: Peer, len: usize);
}

/// The proxy core of one shard: its scanner (header slots) and the rest.
#[derive(Debug)]
pub struct Proxy {
    scanner: Scanner,
    core: Core,
}

/// Everything but the scanner, so that a scanned message (which borrows
/// the scanner) and the state can be used at once.
#[derive(Debug)]
struct Core {
    /// Scans requests stored in transactions (local answers, new tries,
    /// CANCEL and ACK), with room for what forwarding added to them.
    rescanner: Scanner,
    /// The share of new INVITEs and REGISTERs the shard admits (1.0 unless
    /// overloaded), and the admissions it has earned toward the next one.
    admit: f64,
    admit_credit: f64,
    reject_budget: RejectBudget,
    editor: Editor,
    /// Destination sets and rules; `None`: no backend at all.
    routing: Option<Arc<Routing>>,
    /// This shard's picking state (round-robin cursors and the like).
    selector: Selector,
    /// Dialogs set up through a pool member, by Call-ID hash: each holds
    /// one count of its member's active calls (least-calls) until its BYE.
    dialogs: HashMap<u64, Dialog, BuildHasherDefault<KeyHasher>>,
    next_dialog_sweep: Millis,
    /// Round trips to the backends: each try's request to its first
    /// answer, in microseconds (millisecond resolution).
    rtt_us: Histogram<u64>,
    /// Server transactions from the request to the final response sent,
    /// in microseconds (millisecond resolution).
    duration_us: Histogram<u64>,
    txns: Transactions,
    counters: Counters,
}

/// A dialog counted on its backend.
#[derive(Debug)]
struct Dialog {
    _active: ActiveDialog,
    started_ms: Millis,
}

/// A dialog whose BYE never came (lost, or a caller that vanished) stops
/// counting against its backend after this long.
const DIALOG_MAX_AGE_MS: Millis = 6 * 3600 * 1000;
/// Round trips above this are recorded as this.
const RTT_US_MAX: u64 = 600_000_000;

/// How often dialogs are checked for that age.
const DIALOG_SWEEP_MS: Millis = 60_000;

impl Proxy {
    /// A proxy that routes by `routing`'s sets and rules (`None`: no
    /// backend at all). `seed` keys the transaction hashes (pick it at
    /// random); `now` is the shell's clock at start.
    pub fn with_routing(
        scanner: Scanner,
        local: LocalAddress,
        routing: Option<Arc<Routing>>,
        txn: TxnConfig,
        now: Millis,
        seed: u64,
    ) -> Proxy {
        Proxy {
            core: Core {
                rescanner: Scanner::for_sent(scanner.limits()),
                editor: Editor::new(local),
                routing: routing.as_ref().map(private),
                selector: Selector::new(),
                // Room for as many dialogs as transactions (the bound
                // `dialog_started` keeps), so the map never grows on the
                // packet path.
                dialogs: HashMap::with_capacity_and_hasher(
                    txn.max_transactions,
                    BuildHasherDefault::default(),
                ),
                next_dialog_sweep: now + DIALOG_SWEEP_MS,
                admit: 1.0,
                admit_credit: 0.0,
                reject_budget: RejectBudget::new(OverloadConfig::default().reject_per_s, now),
                rtt_us: Histogram::new_with_bounds(1, RTT_US_MAX, 2)
                    .expect("constant histogram bounds are valid"),
                duration_us: Histogram::new_with_bounds(1, RTT_US_MAX, 2)
                    .expect("constant histogram bounds are valid"),
                txns: Transactions::new(txn, now, seed),
                counters: Counters::default(),
            },
            scanner,
        }
    }

    /// A reloaded configuration's routing: new requests use it at once;
    /// transactions already under way keep the snapshot they began with.
    pub fn set_routing(&mut self, routing: Arc<Routing>) {
        self.core.routing = Some(private(&routing));
    }

    pub fn counters(&self) -> &Counters {
        &self.core.counters
    }

    /// Server and client transactions alive now.
    pub fn transactions(&self) -> (usize, usize) {
        (self.core.txns.servers.len(), self.core.txns.clients.len())
    }

    /// Timers armed now: at most two per server transaction and three per
    /// client transaction (the fuzz target checks that none leaks).
    pub fn timers(&self) -> usize {
        self.core.txns.wheel.len()
    }

    /// When [`Proxy::on_timers`] next has work: the I/O loop sleeps until then.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.core.txns.wheel.next_deadline()
    }

    /// Handles one message from `source` at `now`: a datagram, or one
    /// framed off a stream.
    pub fn handle(
        &mut self,
        now: Millis,
        source: Peer,
        datagram: &[u8],
        tx: &mut impl Transmit,
    ) -> Outcome {
        let scanned = self.scanner.scan(datagram);
        if let Some(limit) = scanned.as_ref().err().and_then(|e| Limit::of(e.fault)) {
            self.core.counters.limits.hit(limit);
        }
        let outcome = match scanned {
            Ok(message) if message.is_request() => self.core.on_request(now, source, &message, tx),
            Ok(message) => self.core.on_response(now, &message, tx),
            Err(error) => match error.answer() {
                Answer::Drop => Outcome::Dropped(DropReason::Malformed(error.fault)),
                // A malformed request's Via cannot be trusted: the answer
                // goes back to where the packet came from.
                Answer::Reply { .. } => {
                    match write_rejection(
                        &mut self.scanner,
                        datagram,
                        &error,
                        source.addr,
                        tx.buffer(),
                    ) {
                        Ok(len) => {
                            tx.send(source, len);
                            Outcome::Replied
                        }
                        Err(_) => Outcome::Dropped(DropReason::Unanswerable),
                    }
                }
            },
        };
        self.core.count(outcome);
        outcome
    }

    /// Runs every timer due at `now`.
    pub fn on_timers(&mut self, now: Millis, tx: &mut impl Transmit) {
        while let Some((_, timer)) = self.core.txns.wheel.expire(now) {
            self.core.on_timer(now, timer, tx);
        }
        let core = &mut self.core;
        if now >= core.next_dialog_sweep {
            core.next_dialog_sweep = now + DIALOG_SWEEP_MS;
            core.dialogs
                .retain(|_, d| now.saturating_sub(d.started_ms) < DIALOG_MAX_AGE_MS);
        }
    }

    /// Round trips to the backends (request to first answer), in µs.
    pub fn transaction_rtt(&self) -> &Histogram<u64> {
        &self.core.rtt_us
    }

    /// Server transactions' durations (request to final response), in µs.
    pub fn transaction_duration(&self) -> &Histogram<u64> {
        &self.core.duration_us
    }

    /// The routing new requests use.
    pub fn routing(&self) -> Option<&Arc<Routing>> {
        self.core.routing.as_ref()
    }

    /// The share of new INVITEs and REGISTERs to admit, from the shard's
    /// [`overload::Detector`]: below 1.0, those not admitted get at most
    /// `reject_per_s` 503s a second and are dropped past them.
    pub fn set_admission(&mut self, admit: f64, reject_per_s: u32, now: Millis) {
        if admit < 1.0 && self.core.admit >= 1.0 {
            self.core.reject_budget = RejectBudget::new(reject_per_s, now);
        }
        self.core.admit = admit.clamp(0.0, 1.0);
    }

    /// Dialogs counted on their backends now.
    pub fn dialogs(&self) -> usize {
        self.core.dialogs.len()
    }

    /// The network said `to` cannot be reached (ICMP port or host
    /// unreachable, a refused or broken connection): every try still
    /// waiting on it fails over now.
    pub fn on_unreachable(&mut self, now: Millis, to: Peer, tx: &mut impl Transmit) {
        let waiting: Vec<Slot> = self
            .core
            .txns
            .clients
            .iter()
            .filter(|(_, c)| c.to.same_hop(&to) && c.state == ClientState::Calling && !c.abandoned)
            .map(|(slot, _)| slot)
            .collect();
        for slot in waiting {
            self.core.counters.unreachable += 1;
            self.core.try_failed(now, slot, tx);
        }
    }
}

/// Copies stored bytes into the transmit buffer and sends them.
fn emit(tx: &mut impl Transmit, to: Peer, bytes: &[u8], counters: &mut Counters) {
    let buffer = tx.buffer();
    match buffer.get_mut(..bytes.len()) {
        Some(room) => {
            room.copy_from_slice(bytes);
            tx.send(to, bytes.len());
        }
        None => counters.dropped_buffer_full += 1,
    }
}

fn reply(
    message: &Message<'_>,
    source: Peer,
    response: &LocalResponse<'_>,
    tx: &mut impl Transmit,
) -> Outcome {
    match write_response(message, source.addr, response, tx.buffer()) {
        Ok(len) => {
            tx.send(reply_address(message.top_via(), source), len);
            Outcome::Replied
        }
        Err(_) => Outcome::Dropped(DropReason::BufferFull),
    }
}

/// A copy of the routing for this proxy (one shard) alone: every server
/// transaction clones its `Arc`, and a count shared by all shards would
/// bounce its cache line between cores on every call.
fn private(routing: &Arc<Routing>) -> Arc<Routing> {
    Arc::new(Routing::clone(routing))
}

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod stream_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod txn_tests;
