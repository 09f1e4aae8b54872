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

use hdrhistogram::Histogram;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::sip::host_ip;

use crate::balance::{
    self, ActiveDialog, Keys, MemberHealth, Routing, RoutingSpec, Selection, Selector, SetId,
};
use crate::sip::lex::{hex16, key_hash};

pub mod overload;
use crate::sip::{
    local_to_tag, write_rejection, write_response, Answer, EditError, Editor, Fault, Forward,
    HopMethod, LocalAddress, LocalResponse, Message, Method, Scanner, StartLine, Via, MAGIC_COOKIE,
    UDP_PAYLOAD_MAX,
};
mod limit;
pub use limit::{Limit, LimitCounts};

use crate::txn::{
    CancelState, Client, ClientState, KeyHasher, Millis, Server, ServerState, Slot, Target, Timer,
    Transactions, TxnConfig,
};
use overload::{OverloadConfig, RejectBudget};

/// How an initial request picks its backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// Each new request to the next backend in turn.
    RoundRobin,
    /// Every request of a call to the same backend: hash of Call-ID.
    CallIdHash,
}

impl From<Algorithm> for balance::Algorithm {
    fn from(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::RoundRobin => balance::Algorithm::RoundRobin,
            Algorithm::CallIdHash => balance::Algorithm::CallIdHash,
        }
    }
}

/// What the stateless path does with a datagram; bytes are in the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// Send `out[..len]` to `to` (a request to the next hop, or a response
    /// back along its Via).
    Forward { to: SocketAddr, len: usize },
    /// Send `out[..len]`, a response the proxy wrote itself, to `to`.
    Reply { to: SocketAddr, len: usize },
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
    /// Messages and requests that ran into each limit.
    pub limits: LimitCounts,
}

/// Where the proxy core writes what it sends: a buffer for the next
/// datagram, then its length and destination. The shard's send batch is
/// one; tests collect into a vector.
pub trait Transmit {
    /// Room for one datagram: [`UDP_PAYLOAD_MAX`] bytes in the shard, so
    /// that nothing is written that the kernel would refuse to send.
    fn buffer(&mut self) -> &mut [u8];
    /// Sends the first `len` bytes of the last [`Transmit::buffer`].
    fn send(&mut self, to: SocketAddr, len: usize);
}

/// A [`Transmit`] that keeps what is sent, for tests, fuzzing and
/// benches.
#[derive(Debug, Default)]
pub struct Outbox {
    buffer: Vec<u8>,
    pub sent: Vec<(SocketAddr, Vec<u8>)>,
}

impl Transmit for Outbox {
    fn buffer(&mut self) -> &mut [u8] {
        self.buffer.resize(UDP_PAYLOAD_MAX, 0);
        &mut self.buffer
    }

    fn send(&mut self, to: SocketAddr, len: usize) {
        self.sent.push((to, self.buffer[..len].to_vec()));
    }
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

/// Marks the key of a CANCEL we sent apart from the key of the INVITE
/// it cancels: both carry the same branch.
const CANCEL_KEY: u64 = 0x9e37_79b9_7f4a_7c15;

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

/// Pool members a transaction can tell apart when failing over.
pub const BACKENDS_MAX: usize = 64;

impl Proxy {
    /// `seed` keys the transaction hashes (pick it at random); `now` is the
    /// shell's clock at start. One destination set of `backends`, each at
    /// weight 1, picked by `algorithm`.
    pub fn new(
        scanner: Scanner,
        local: LocalAddress,
        backends: Vec<SocketAddr>,
        algorithm: Algorithm,
        txn: TxnConfig,
        now: Millis,
        seed: u64,
    ) -> Proxy {
        let mut backends = backends;
        backends.truncate(BACKENDS_MAX);
        let spec = RoutingSpec::one_set(algorithm.into(), &backends);
        let routing = Routing::build(&spec, None).ok().map(Arc::new);
        Proxy::with_routing(scanner, local, routing, txn, now, seed)
    }

    /// A proxy that routes by `routing`'s sets and rules.
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

    /// Handles one datagram from `source` at `now`.
    pub fn handle(
        &mut self,
        now: Millis,
        source: SocketAddr,
        datagram: &[u8],
        tx: &mut impl Transmit,
    ) -> Outcome {
        let scanned = self.scanner.scan(datagram);
        if let Some(limit) = scanned.as_ref().err().and_then(|e| Limit::of(e.fault)) {
            self.core.counters.limits.hit(limit);
        }
        let outcome = match scanned {
            Ok(message) if message.is_request() => {
                self.core.on_request(now, source, &message, datagram, tx)
            }
            Ok(message) => self.core.on_response(now, &message, tx),
            Err(error) => match error.answer() {
                Answer::Drop => Outcome::Dropped(DropReason::Malformed(error.fault)),
                // A malformed request's Via cannot be trusted: the answer
                // goes back to where the packet came from.
                Answer::Reply { .. } => {
                    match write_rejection(&mut self.scanner, datagram, &error, source, tx.buffer())
                    {
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
    /// unreachable): every try still waiting on it fails over now.
    pub fn on_unreachable(&mut self, now: Millis, to: SocketAddr, tx: &mut impl Transmit) {
        let waiting: Vec<Slot> = self
            .core
            .txns
            .clients
            .iter()
            .filter(|(_, c)| c.to == to && c.state == ClientState::Calling && !c.abandoned)
            .map(|(slot, _)| slot)
            .collect();
        for slot in waiting {
            self.core.counters.unreachable += 1;
            self.core.try_failed(now, slot, tx);
        }
    }
}

impl Core {
    fn count(&mut self, outcome: Outcome) {
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

    /// The §17.2.3 key of the server transaction a request belongs to.
    /// ACK and CANCEL find their INVITE's with `as_invite`.
    fn server_key(&self, message: &Message<'_>, as_invite: bool) -> u64 {
        let via = message.top_via();
        let port = via.port.unwrap_or(5060).to_be_bytes();
        let method: &[u8] = if as_invite {
            b"INVITE"
        } else {
            message.cseq().method_text
        };
        match via.branch.filter(|_| via.has_magic_cookie()) {
            Some(branch) => key_hash(&[&self.txns.seed, branch, via.host, &port, method]),
            // RFC 2543 matching: the ACK's To tag is the response's, so
            // it stays out of an INVITE-class key.
            None => key_hash(&[
                &self.txns.seed,
                message.request_uri().map_or(&[][..], |u| u.opaque),
                if as_invite {
                    &[][..]
                } else {
                    message.to().tag.unwrap_or_default()
                },
                message.from().tag.unwrap_or_default(),
                message.call_id(),
                &message.cseq().number.to_be_bytes(),
                via.value,
                method,
            ]),
        }
    }

    fn on_request(
        &mut self,
        now: Millis,
        source: SocketAddr,
        message: &Message<'_>,
        datagram: &[u8],
        tx: &mut impl Transmit,
    ) -> Outcome {
        let method = message.method().unwrap_or(Method::Other);
        let invite_key = self.server_key(message, true);
        match method {
            Method::Ack => {
                if let Some(&slot) = self.txns.server_keys.get(&invite_key) {
                    if self.server_ack(now, slot) {
                        return Outcome::Absorbed;
                    }
                }
                // The ACK for a final answer of our own (a 503 while
                // overloaded, a 483, ...): no one downstream knows it.
                let from_tag = message.from().tag.unwrap_or_default();
                let ours = local_to_tag(message.call_id(), from_tag);
                if message.to().tag == Some(&ours[..]) {
                    self.counters.local_acks_absorbed += 1;
                    return Outcome::Absorbed;
                }
                return self.stateless(message, source, tx);
            }
            Method::Cancel => {
                if let Some(&slot) = self.txns.server_keys.get(&invite_key) {
                    return self.caller_cancel(now, slot, message, source, tx);
                }
                // §16.10: no transaction to cancel: forward it statelessly.
                // Where it can go nowhere (no member up, a next hop by
                // name), the answer a UAS would give (§9.2): 481, so the
                // caller does not retransmit it for 64·T1 into silence.
                return match self.stateless(message, source, tx) {
                    Outcome::Dropped(DropReason::NoBackend | DropReason::UnresolvedNextHop) => {
                        reply(
                            message,
                            source,
                            &LocalResponse::new(481, "Call/Transaction Does Not Exist"),
                            tx,
                        )
                    }
                    outcome => outcome,
                };
            }
            _ => {}
        }
        if method == Method::Bye {
            self.dialogs
                .remove(&key_hash(&[&self.txns.seed, message.call_id()]));
        }
        let key = match method {
            Method::Invite => invite_key,
            _ => self.server_key(message, false),
        };
        if let Some(&slot) = self.txns.server_keys.get(&key) {
            return self.retransmitted_request(slot, tx);
        }
        if self.admit < 1.0
            && matches!(method, Method::Invite | Method::Register)
            && message.to().tag.is_none()
        {
            // Admit an even `admit` share: each new request earns that
            // much credit, and a whole credit buys an admission.
            self.counters.admission_checked += 1;
            self.admit_credit += self.admit;
            if self.admit_credit >= 1.0 {
                self.admit_credit -= 1.0;
            } else {
                return self.shed(now, message, source, tx);
            }
        }
        let branch_key = branch_key(message);
        if is_loop(self.editor.local(), message, &branch_key[17..]) {
            self.counters.loops_detected += 1;
            return reply(message, source, &LocalResponse::LOOP_DETECTED, tx);
        }
        let new_dialog = message.to().tag.is_none();
        let target = match next_hop(&self.editor, message) {
            Hop::Uri(Some(addr)) => Target::Fixed(addr),
            Hop::Uri(None) => return Outcome::Dropped(DropReason::UnresolvedNextHop),
            Hop::Backend => {
                let Some(routing) = &self.routing else {
                    return Outcome::Dropped(DropReason::NoBackend);
                };
                let set = pick_set(routing, message, source);
                // A set with no member that may take this request answers
                // at once: waiting for timers would only delay the 503.
                if !routing
                    .set(set)
                    .members
                    .iter()
                    .any(|m| m.eligible(new_dialog))
                {
                    self.counters.unavailable_rejected += 1;
                    let busy = LocalResponse::service_unavailable(self.txns.config.retry_after_s);
                    return reply(message, source, &busy, tx);
                }
                Target::Pool {
                    routing: routing.clone(),
                    set,
                    tried: 0,
                }
            }
        };
        // A full client table (failed tries linger for Timer D) is as full
        // as a full server table: no try could start.
        if self.txns.servers.is_full() || self.txns.clients.is_full() {
            self.counters.overload_rejected += 1;
            self.counters.limits.hit(Limit::Transactions);
            let busy = LocalResponse::service_unavailable(self.txns.config.retry_after_s);
            return reply(message, source, &busy, tx);
        }
        let invite = method == Method::Invite;
        let reply_to = reply_address(message.top_via(), source);
        let mut response = Vec::new();
        if invite {
            // §16.2: an INVITE gets 100 at once, so the caller stops
            // retransmitting while the backend thinks.
            if let Ok(len) = write_response(message, source, &LocalResponse::TRYING, tx.buffer()) {
                response.extend_from_slice(&tx.buffer()[..len]);
                tx.send(reply_to, len);
            }
        }
        let server = Server {
            key,
            invite,
            state: ServerState::Proceeding,
            request: datagram.to_vec(),
            source,
            reply_to,
            response,
            target,
            sticky: message.to().tag.is_some(),
            client: None,
            tries: 0,
            cancelled: false,
            best: None,
            interval_ms: self.txns.config.timers.t1_ms,
            timers: [None; 2],
            started_ms: now,
        };
        let Some(slot) = self.txns.servers.insert(server) else {
            return Outcome::Dropped(DropReason::BufferFull);
        };
        self.txns.server_keys.insert(key, slot);
        self.counters.transactions_started += 1;
        if self.try_next(now, slot, Some((message, &branch_key)), tx) {
            Outcome::Forwarded
        } else {
            // Not even a first try could go (the forwarded request would
            // not fit in a datagram): the caller, who may have our 100
            // already, gets its final answer (513) from the transaction,
            // which then absorbs retransmissions and the ACK as any other.
            self.answer_final(now, slot, tx);
            Outcome::Replied
        }
    }

    /// A new INVITE or REGISTER while the shard is overloaded: 503 with
    /// Retry-After while this second's budget of them lasts, else dropped
    /// (see [`overload`]).
    fn shed(
        &mut self,
        now: Millis,
        message: &Message<'_>,
        source: SocketAddr,
        tx: &mut impl Transmit,
    ) -> Outcome {
        if self.reject_budget.take(now) {
            self.counters.shed_rejected += 1;
            let busy = LocalResponse::service_unavailable(self.txns.config.retry_after_s);
            reply(message, source, &busy, tx)
        } else {
            Outcome::Dropped(DropReason::Overloaded)
        }
    }

    /// A request the pre-transaction layer passes on as it is: an ACK for
    /// a 2xx, a CANCEL with no INVITE here.
    fn stateless(
        &mut self,
        message: &Message<'_>,
        source: SocketAddr,
        tx: &mut impl Transmit,
    ) -> Outcome {
        let action = route_request(
            &self.editor,
            self.routing.as_deref(),
            &mut self.selector,
            message,
            source,
            tx.buffer(),
        );
        match action {
            Action::Forward { to, len } => {
                tx.send(to, len);
                self.counters.requests_forwarded += 1;
                Outcome::Forwarded
            }
            Action::Reply { to, len } => {
                tx.send(to, len);
                self.counters.loops_detected += 1;
                Outcome::Replied
            }
            Action::Drop(reason) => Outcome::Dropped(reason),
        }
    }

    /// A request whose server transaction exists: send its last response
    /// again, or take it in silently (§17.2.1, §17.2.2).
    fn retransmitted_request(&mut self, slot: Slot, tx: &mut impl Transmit) -> Outcome {
        let Some(server) = self.txns.servers.get(slot) else {
            return Outcome::Absorbed;
        };
        let resend = match server.state {
            ServerState::Proceeding | ServerState::Completed => !server.response.is_empty(),
            ServerState::Accepted | ServerState::Confirmed => false,
        };
        if resend {
            emit(tx, server.reply_to, &server.response, &mut self.counters);
        }
        self.counters.retransmissions_absorbed += 1;
        Outcome::Absorbed
    }

    /// An ACK with the INVITE's branch: it acknowledges our non-2xx final.
    /// Returns false when it is not ours to absorb.
    fn server_ack(&mut self, now: Millis, slot: Slot) -> bool {
        let t4 = self.txns.config.timers.t4_ms;
        let Some(server) = self.txns.servers.get_mut(slot) else {
            return false;
        };
        match server.state {
            ServerState::Completed => {
                server.state = ServerState::Confirmed;
                server.response = Vec::new();
                self.txns.linger_server(now, slot, t4);
                true
            }
            ServerState::Confirmed => true,
            ServerState::Proceeding | ServerState::Accepted => false,
        }
    }

    /// §16.10: answer the CANCEL with 200 and cancel the pending try.
    fn caller_cancel(
        &mut self,
        now: Millis,
        slot: Slot,
        message: &Message<'_>,
        source: SocketAddr,
        tx: &mut impl Transmit,
    ) -> Outcome {
        reply(message, source, &LocalResponse::new(200, "OK"), tx);
        self.counters.cancels += 1;
        let Some(server) = self.txns.servers.get_mut(slot) else {
            return Outcome::Replied;
        };
        if server.state != ServerState::Proceeding || server.cancelled {
            return Outcome::Replied;
        }
        server.cancelled = true;
        if let Some(client) = server.client {
            self.cancel_client(now, client, tx);
        }
        Outcome::Replied
    }

    /// Sends a CANCEL for a client transaction, or marks it owed when no
    /// provisional has come yet (§9.1).
    fn cancel_client(&mut self, now: Millis, slot: Slot, tx: &mut impl Transmit) {
        let Some(client) = self.txns.clients.get_mut(slot) else {
            return;
        };
        match (client.state, client.cancel) {
            (ClientState::Proceeding, CancelState::None | CancelState::Pending) => {}
            (ClientState::Calling, CancelState::None) => {
                client.cancel = CancelState::Pending;
                return;
            }
            _ => return,
        }
        client.cancel = CancelState::Sent;
        let (server, to, branch_key, key) =
            (client.server, client.to, client.branch_key, client.key);
        // Written from the request as this try sent it: same Request-URI,
        // Route set, From, To, Call-ID and CSeq number (§9.1).
        let request = std::mem::take(&mut client.request);
        let written = match self.rescanner.scan(&request) {
            Ok(sent) => self
                .editor
                .write_hop_request(
                    &sent,
                    HopMethod::Cancel,
                    sent.to().value,
                    &branch_key,
                    tx.buffer(),
                )
                .ok(),
            Err(_) => None,
        };
        if let Some(client) = self.txns.clients.get_mut(slot) {
            client.request = request;
        }
        // §9.1: with no final 64·T1 after the CANCEL, the INVITE is over.
        // Armed even when no CANCEL could be written (the request as sent
        // does not scan again, e.g. Max-Forwards 1 sent on as 0): Timer C
        // has fired or the try is Proceeding without Timer B, so without it
        // nothing would ever end the try.
        let timeout = self.txns.config.timers.timeout_ms();
        let id = self.txns.arm(now, timeout, Timer::ClientTimeout(slot));
        if let Some(client) = self.txns.clients.get_mut(slot) {
            if let Some(old) = std::mem::replace(&mut client.timers[1], id) {
                self.txns.wheel.cancel(old);
            }
        }
        let Some(len) = written else { return };
        let cancel = Client {
            key: key ^ CANCEL_KEY,
            server,
            invite: false,
            is_cancel: true,
            state: ClientState::Calling,
            to,
            backend: None,
            request: tx.buffer()[..len].to_vec(),
            ack: Vec::new(),
            branch_key,
            provisional: false,
            cancel: CancelState::None,
            abandoned: false,
            interval_ms: self.txns.config.timers.t1_ms,
            timers: [None; 3],
            sent_ms: now,
        };
        tx.send(to, len);
        self.counters.requests_sent += 1;
        if let Some(cancel_slot) = self.txns.clients.insert(cancel) {
            self.txns.client_keys.insert(key ^ CANCEL_KEY, cancel_slot);
            self.arm_client_request_timers(now, cancel_slot);
        }
    }

    /// Starts the next try of a server transaction: picks a destination
    /// not tried yet, forwards the request there with a new branch, arms
    /// the client timers. False when nothing is left to try.
    ///
    /// `first` is the request as it arrived, with its branch key, on the
    /// first try: the stored copy is scanned again only for a failover.
    fn try_next(
        &mut self,
        now: Millis,
        slot: Slot,
        first: Option<(&Message<'_>, &[u8; 33])>,
        tx: &mut impl Transmit,
    ) -> bool {
        let Some(server) = self.txns.servers.get_mut(slot) else {
            return false;
        };
        if server.cancelled
            || server.state != ServerState::Proceeding
            || self.txns.clients.is_full()
        {
            return false;
        }
        let sticky = server.sticky;
        // The stored copy is taken out while it is read, so that the
        // transaction table stays free to borrow; it goes back below.
        let request = match first {
            Some(_) => Vec::new(),
            None => std::mem::take(&mut server.request),
        };
        let rescan;
        let (original, first_branch_key) = match first {
            Some((message, key)) => (message, Some(key)),
            None => match self.rescanner.scan(&request) {
                Ok(message) => {
                    rescan = message;
                    (&rescan, None)
                }
                Err(_) => {
                    server.request = request;
                    return false;
                }
            },
        };
        let chosen = match &mut server.target {
            Target::Fixed(addr) if server.tries == 0 => Some((*addr, None)),
            Target::Pool {
                routing,
                set,
                tried,
            } => {
                let selection = if sticky {
                    // In a dialog, without our Route: where the Call-ID
                    // hashes, as every other request of the call.
                    match *tried {
                        0 => self
                            .selector
                            .select_by_call_id(routing, *set, original.call_id()),
                        _ => Selection::Exhausted,
                    }
                } else {
                    let keys = Keys {
                        call_id: original.call_id(),
                        from_user: original.from().uri().ok().and_then(|u| u.user),
                        ruri_user: original.request_uri().and_then(|u| u.user),
                    };
                    self.selector.select(routing, *set, &keys, *tried, true)
                };
                match selection {
                    Selection::Member(index) => {
                        *tried |= 1 << index;
                        Some((routing.set(*set).members[index].address, Some(index)))
                    }
                    Selection::AllDown | Selection::Exhausted => None,
                }
            }
            Target::Fixed(_) => None,
        };
        let Some((to, backend)) = chosen else {
            if first.is_none() {
                server.request = request;
            }
            return false;
        };
        server.tries += 1;
        let tries = server.tries;
        let invite = server.invite;
        let source = server.source;
        self.txns.next_id = self.txns.next_id.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let id = self.txns.next_id;
        let written = {
            let mut branch_key = first_branch_key
                .copied()
                .unwrap_or_else(|| branch_key(original));
            branch_key[..16].copy_from_slice(&hex16(id));
            let method = original.method().unwrap_or(Method::Other);
            let forward = Forward {
                source,
                branch_key: &branch_key,
                record_route: original.to().tag.is_none() && method.creates_dialog(),
            };
            self.editor
                .forward_request(original, &forward, tx.buffer())
                .ok()
                .map(|len| (len, branch_key))
        };
        // The forwarded request would not fit in one UDP datagram (the
        // buffer holds the largest there is): RFC 3261 §21.5.14's 513 is
        // the answer, unless another try did better.
        let too_large = match written {
            Some(_) => None,
            None => {
                self.counters.limits.hit(Limit::UdpPayload);
                let local = LocalResponse::MESSAGE_TOO_LARGE;
                let len = write_response(original, source, &local, tx.buffer()).ok();
                len.map(|len| (local.code, tx.buffer()[..len].to_vec()))
            }
        };
        if let Some(server) = self.txns.servers.get_mut(slot) {
            if first.is_none() {
                server.request = request;
            }
            if let Some((code, bytes)) = too_large {
                if better(code, server.best.as_ref().map(|(c, _)| *c)) {
                    server.best = Some((code, bytes));
                }
            }
        }
        let Some((len, branch_key)) = written else {
            return false;
        };
        let client = Client {
            key: id,
            server: slot,
            invite,
            is_cancel: false,
            state: ClientState::Calling,
            to,
            backend,
            request: tx.buffer()[..len].to_vec(),
            ack: Vec::new(),
            branch_key,
            provisional: false,
            cancel: CancelState::None,
            abandoned: false,
            interval_ms: self.txns.config.timers.t1_ms,
            timers: [None; 3],
            sent_ms: now,
        };
        tx.send(to, len);
        self.counters.requests_forwarded += 1;
        if tries > 1 {
            self.counters.failovers += 1;
        }
        let Some(client_slot) = self.txns.clients.insert(client) else {
            return false;
        };
        self.txns.client_keys.insert(id, client_slot);
        if let Some(server) = self.txns.servers.get_mut(slot) {
            server.client = Some(client_slot);
        }
        self.arm_client_request_timers(now, client_slot);
        if invite {
            let try_ms = self.txns.config.timers.try_ms;
            let id = self.txns.arm(now, try_ms, Timer::ClientTry(client_slot));
            if let Some(client) = self.txns.clients.get_mut(client_slot) {
                client.timers[2] = id;
            }
        }
        true
    }

    /// Timer A or E, and Timer B or F.
    fn arm_client_request_timers(&mut self, now: Millis, slot: Slot) {
        let timers = self.txns.config.timers;
        let first = self
            .txns
            .arm(now, timers.t1_ms, Timer::ClientRetransmit(slot));
        let timeout = self
            .txns
            .arm(now, timers.timeout_ms(), Timer::ClientTimeout(slot));
        if let Some(client) = self.txns.clients.get_mut(slot) {
            client.timers[0] = first;
            client.timers[1] = timeout;
        }
    }

    fn on_response(
        &mut self,
        now: Millis,
        message: &Message<'_>,
        tx: &mut impl Transmit,
    ) -> Outcome {
        let Some(id) = our_branch_id(self.editor.local(), message) else {
            return self.stateless_response(message, tx);
        };
        let key = match message.cseq().method {
            Method::Cancel => id ^ CANCEL_KEY,
            _ => id,
        };
        let Some(&slot) = self.txns.client_keys.get(&key) else {
            // No transaction (a 2xx retransmitted after ours ended, or an
            // answer to a stateless forward): §16.7 forwards it as it is.
            return self.stateless_response(message, tx);
        };
        let code = message.status_code().unwrap_or(0);
        let timers = self.txns.config.timers;
        let Some(client) = self.txns.clients.get_mut(slot) else {
            return Outcome::Absorbed;
        };
        if client.state == ClientState::Calling && !client.is_cancel {
            let rtt_ms = now.saturating_sub(client.sent_ms);
            self.rtt_us
                .saturating_record((rtt_ms * 1000).clamp(1, RTT_US_MAX));
            if let Some(health) = member_health(&self.txns.servers, client.server, client.backend) {
                health.observe(rtt_ms * 1000);
            }
        }
        let Some(client) = self.txns.clients.get_mut(slot) else {
            return Outcome::Absorbed;
        };
        if client.is_cancel {
            if code >= 200 {
                client.state = ClientState::Completed;
                self.txns.linger_client(now, slot, timers.t4_ms);
            }
            return Outcome::Absorbed;
        }
        match (client.state, code) {
            (ClientState::Completed, _) => {
                // No ACK when none could be written (the request as sent
                // does not scan again): an empty datagram is not one.
                if client.invite && code >= 300 && !client.ack.is_empty() {
                    let (to, ack) = (client.to, client.ack.clone());
                    emit(tx, to, &ack, &mut self.counters);
                }
                self.counters.retransmissions_absorbed += 1;
                Outcome::Absorbed
            }
            (ClientState::Accepted, 200..=299) => self.forward_upstream(slot, message, tx),
            (ClientState::Accepted, _) => Outcome::Absorbed,
            (ClientState::Calling | ClientState::Proceeding, 100..=199) => {
                self.provisional(now, slot, code, message, tx)
            }
            (ClientState::Calling | ClientState::Proceeding, 200..=299) => {
                let invite = client.invite;
                let (state, linger) = match invite {
                    true => (ClientState::Accepted, timers.timeout_ms()),
                    false => (ClientState::Completed, timers.t4_ms),
                };
                client.state = state;
                client.request = Vec::new();
                let server = client.server;
                let backend = client.backend;
                if invite {
                    self.dialog_started(now, server, backend, message);
                }
                self.txns.linger_client(now, slot, linger);
                let outcome = self.forward_upstream(slot, message, tx);
                // §16.7 step 10: the call is answered; a try still pending
                // elsewhere (a 2xx on a try given up on) is cancelled.
                let pending = self.txns.servers.get(server).and_then(|s| s.client);
                if let Some(other) = pending.filter(|&c| c != slot) {
                    if let Some(server) = self.txns.servers.get_mut(server) {
                        server.cancelled = true;
                    }
                    self.cancel_client(now, other, tx);
                }
                self.server_final(now, server, code, invite, tx);
                outcome
            }
            (ClientState::Calling | ClientState::Proceeding, _) => {
                self.client_final(now, slot, code, message, tx)
            }
        }
    }

    /// A 2xx to an initial INVITE from a pool member: the dialog counts on
    /// that member until its BYE (bounded like the transaction table).
    fn dialog_started(
        &mut self,
        now: Millis,
        server: Slot,
        backend: Option<usize>,
        message: &Message<'_>,
    ) {
        if self.dialogs.len() >= self.txns.config.max_transactions {
            return;
        }
        let initial = self.txns.servers.get(server).is_some_and(|s| !s.sticky);
        if !initial {
            return;
        }
        if let Some(health) = member_health(&self.txns.servers, server, backend) {
            let active = health.clone().dialog_started();
            self.dialogs.insert(
                key_hash(&[&self.txns.seed, message.call_id()]),
                Dialog {
                    _active: active,
                    started_ms: now,
                },
            );
        }
    }

    /// A 1xx on a live try.
    fn provisional(
        &mut self,
        now: Millis,
        slot: Slot,
        code: u16,
        message: &Message<'_>,
        tx: &mut impl Transmit,
    ) -> Outcome {
        let timers = self.txns.config.timers;
        let Some(client) = self.txns.clients.get_mut(slot) else {
            return Outcome::Absorbed;
        };
        let first = client.state == ClientState::Calling;
        client.state = ClientState::Proceeding;
        let invite = client.invite;
        let mut stop = [None; 2];
        if invite {
            // Timer A stops; Timer B and the per-try timer give way to C.
            // Once our CANCEL is sent, the second timer is its 64·T1 wait
            // (§9.1), the only one left to end the try: it stays.
            let wait = client.cancel == CancelState::Sent;
            let timer_b = if wait { None } else { client.timers[1].take() };
            stop = [client.timers[0].take(), timer_b];
            // Timer C starts with the first provisional, even a 100 that
            // comes after the per-try timer fired with nothing else to try:
            // with Timer B stopped it is all that ends the try. After that
            // only a provisional above 100 restarts it (§16.7 step 2), so a
            // backend repeating 100 cannot keep a try alive for ever.
            if first || code > 100 {
                if let Some(id) = client.timers[2].take() {
                    self.txns.wheel.cancel(id);
                }
                let c = self.txns.arm(now, timers.timer_c_ms, Timer::ClientC(slot));
                if let Some(client) = self.txns.clients.get_mut(slot) {
                    client.timers[2] = c;
                }
            }
        } else {
            // Timer E goes on at T2 (figure 6).
            client.interval_ms = timers.t2_ms;
        }
        self.txns.disarm(&mut stop);
        let Some(client) = self.txns.clients.get_mut(slot) else {
            return Outcome::Absorbed;
        };
        if code > 100 {
            client.provisional = true;
        }
        let cancel_owed = client.cancel == CancelState::Pending || client.abandoned;
        let abandoned = client.abandoned;
        let server = client.server;
        if cancel_owed && client.cancel != CancelState::Sent {
            self.cancel_client(now, slot, tx);
        }
        // §16.7 step 5: provisionals go upstream only until a final has.
        let answered = self
            .txns
            .servers
            .get(server)
            .map_or(true, |s| s.state != ServerState::Proceeding);
        if abandoned || answered || code == 100 {
            // §16.7 step 3: a 100 is not forwarded; a try given up on
            // speaks no more to the caller.
            return Outcome::Absorbed;
        }
        self.forward_upstream(slot, message, tx)
    }

    /// A final response of 300 or more on a live try: ACK it (INVITE),
    /// then fail over or answer the caller.
    fn client_final(
        &mut self,
        now: Millis,
        slot: Slot,
        code: u16,
        message: &Message<'_>,
        tx: &mut impl Transmit,
    ) -> Outcome {
        let timers = self.txns.config.timers;
        let Some(client) = self.txns.clients.get_mut(slot) else {
            return Outcome::Absorbed;
        };
        client.state = ClientState::Completed;
        let (invite, server_slot, to) = (client.invite, client.server, client.to);
        let linger = if invite {
            timers.timer_d_ms
        } else {
            timers.t4_ms
        };
        self.txns.linger_client(now, slot, linger);
        if invite {
            // §17.1.1.3: the ACK for a non-2xx final is ours to send.
            let ack = self.write_ack(slot, message, tx);
            if let Some(len) = ack {
                let bytes = tx.buffer()[..len].to_vec();
                tx.send(to, len);
                self.counters.requests_sent += 1;
                if let Some(client) = self.txns.clients.get_mut(slot) {
                    client.ack = bytes;
                }
            }
        }
        let Some(client) = self.txns.clients.get_mut(slot) else {
            return Outcome::Absorbed;
        };
        // Completed: nothing will be sent again but the ACK.
        client.request = Vec::new();
        let (abandoned, provisional) = (client.abandoned, client.provisional);
        let edited = match self.editor.forward_response(message, tx.buffer()) {
            Ok(len) => Some(tx.buffer()[..len].to_vec()),
            Err(_) => None,
        };
        let failover_code = self.txns.config.failover_codes.contains(&code)
            && (!provisional || self.txns.config.failover_after_provisional);
        let Some(server) = self
            .txns
            .servers
            .get_mut(server_slot)
            .filter(|s| s.state == ServerState::Proceeding)
        else {
            return Outcome::Absorbed;
        };
        // §16.7 step 6: the best final is chosen from every try's answer,
        // a try given up on (per-try timer, ICMP) included.
        if let Some(bytes) = edited {
            if better(code, server.best.as_ref().map(|b| b.0)) {
                server.best = Some((code, bytes));
            }
        }
        if abandoned {
            // §16.7 step 5: a 6xx ends the search even from a try given up
            // on. The try in progress is cancelled, and its answer (a 487)
            // loses to the 6xx when the caller is answered.
            if (600..=699).contains(&code) {
                server.cancelled = true;
                if let Some(current) = server.client.filter(|&c| c != slot) {
                    self.cancel_client(now, current, tx);
                }
            }
            return Outcome::Absorbed;
        }
        if failover_code && self.try_next(now, server_slot, None, tx) {
            return Outcome::Absorbed;
        }
        self.answer_final(now, server_slot, tx);
        Outcome::Forwarded
    }

    /// Writes the ACK for `response` to client transaction `slot`'s
    /// request into the transmit buffer.
    fn write_ack(
        &mut self,
        slot: Slot,
        response: &Message<'_>,
        tx: &mut impl Transmit,
    ) -> Option<usize> {
        let client = self.txns.clients.get(slot)?;
        let sent = self.rescanner.scan(&client.request).ok()?;
        self.editor
            .write_hop_request(
                &sent,
                HopMethod::Ack,
                response.to().value,
                &client.branch_key,
                tx.buffer(),
            )
            .ok()
    }

    /// This try failed without a final response (timeout, ICMP, per-try
    /// timer): stop it and try the next, or answer the caller.
    fn try_failed(&mut self, now: Millis, slot: Slot, tx: &mut impl Transmit) {
        let Some(client) = self.txns.clients.get_mut(slot) else {
            return;
        };
        client.abandoned = true;
        // Stop retransmitting; Timer B stays to bound the entry's life.
        let retransmit = client.timers[0].take();
        let server = client.server;
        let cancelled = client.cancel == CancelState::Sent;
        self.txns.disarm(&mut [retransmit]);
        let live = self
            .txns
            .servers
            .get(server)
            .is_some_and(|s| s.state == ServerState::Proceeding && s.client == Some(slot));
        if !live {
            return;
        }
        // A try we cancelled (Timer C) is not a backend failure.
        if cancelled || !self.try_next(now, server, None, tx) {
            self.answer_final(now, server, tx);
        }
    }

    /// Sends the caller the final answer of a server transaction whose
    /// tries are over (§16.7 step 6: the best final, else 487 after a
    /// CANCEL, else 408), and starts its wait.
    fn answer_final(&mut self, now: Millis, slot: Slot, tx: &mut impl Transmit) {
        let Some(server) = self.txns.servers.get_mut(slot) else {
            return;
        };
        if server.state != ServerState::Proceeding {
            return;
        }
        let (code, bytes) = match server.best.take() {
            Some(best) if best.0 != 503 => best,
            best => {
                let local = match (best, server.cancelled) {
                    // §16.7 step 6: a backend's 503 says that it cannot
                    // serve; passed on (with its Retry-After), it would tell
                    // the caller that this proxy cannot. Our own 503s
                    // (overload) are sent before any try, not from here.
                    (Some(_), _) => LocalResponse::new(500, "Server Internal Error"),
                    (None, true) => LocalResponse::new(487, "Request Terminated"),
                    (None, false) => LocalResponse::REQUEST_TIMEOUT,
                };
                let request = std::mem::take(&mut server.request);
                let source = server.source;
                let written = match self.rescanner.scan(&request) {
                    Ok(original) => write_response(&original, source, &local, tx.buffer()).ok(),
                    Err(_) => None,
                };
                let bytes = written.map_or_else(Vec::new, |len| tx.buffer()[..len].to_vec());
                if let Some(server) = self.txns.servers.get_mut(slot) {
                    server.request = request;
                }
                (local.code, bytes)
            }
        };
        let Some(server) = self.txns.servers.get_mut(slot) else {
            return;
        };
        if !bytes.is_empty() {
            emit(tx, server.reply_to, &bytes, &mut self.counters);
            self.counters.responses_forwarded += 1;
        }
        server.response = bytes;
        let invite = server.invite;
        self.server_final(now, slot, code, invite, tx);
    }

    /// Moves a server transaction to its state after a final response
    /// went upstream, with that state's timers.
    fn server_final(
        &mut self,
        now: Millis,
        slot: Slot,
        code: u16,
        invite: bool,
        _tx: &mut impl Transmit,
    ) {
        let timers = self.txns.config.timers;
        let Some(server) = self.txns.servers.get_mut(slot) else {
            return;
        };
        if server.state != ServerState::Proceeding {
            return;
        }
        let took_us = now.saturating_sub(server.started_ms) * 1000;
        self.duration_us
            .saturating_record(took_us.clamp(1, RTT_US_MAX));
        let Some(server) = self.txns.servers.get_mut(slot) else {
            return;
        };
        let mut ids = std::mem::take(&mut server.timers);
        let (state, first, second) = match (invite, code) {
            (true, 200..=299) => (
                ServerState::Accepted,
                Some((timers.timeout_ms(), Timer::ServerLinger(slot))),
                None,
            ),
            (true, _) => (
                ServerState::Completed,
                Some((timers.t1_ms, Timer::ServerRetransmit(slot))),
                Some((timers.timeout_ms(), Timer::ServerTimeout(slot))),
            ),
            (false, _) => (
                ServerState::Completed,
                Some((timers.timeout_ms(), Timer::ServerLinger(slot))),
                None,
            ),
        };
        server.state = state;
        server.interval_ms = timers.t1_ms;
        // Only Completed still sends anything: its final response.
        server.request = Vec::new();
        if state == ServerState::Accepted {
            server.response = Vec::new();
        }
        self.txns.disarm(&mut ids);
        let arm = |txns: &mut Transactions, (after, timer)| match timer {
            Timer::ServerLinger(_) => txns.arm_linger(now, after, timer),
            _ => txns.arm(now, after, timer),
        };
        let first = first.and_then(|t| arm(&mut self.txns, t));
        let second = second.and_then(|t| arm(&mut self.txns, t));
        if let Some(server) = self.txns.servers.get_mut(slot) {
            server.timers = [first, second];
        }
    }

    /// Sends a response of a client transaction upstream, to its server
    /// transaction's caller (or along the Via when that is gone), and
    /// keeps it for retransmitted requests.
    fn forward_upstream(
        &mut self,
        slot: Slot,
        message: &Message<'_>,
        tx: &mut impl Transmit,
    ) -> Outcome {
        let server = self.txns.clients.get(slot).map(|c| c.server);
        let server = server.and_then(|s| self.txns.servers.get_mut(s));
        let Some(server) = server else {
            return self.stateless_response(message, tx);
        };
        let len = match self.editor.forward_response(message, tx.buffer()) {
            Ok(len) => len,
            Err(_) => return Outcome::Dropped(DropReason::BufferFull),
        };
        // An INVITE's 2xx is not kept: the transaction moves to Accepted,
        // which answers nothing itself (RFC 6026); the backend retransmits
        // its 2xx, and each copy passes through.
        let accepted = server.invite
            && message
                .status_code()
                .is_some_and(|c| (200..300).contains(&c));
        if !accepted {
            let bytes = &tx.buffer()[..len];
            if server.response.capacity() < len {
                // A fresh buffer: growing the old one would copy the
                // 100 Trying (or the 1xx) it held, only to overwrite it.
                server.response = bytes.to_vec();
            } else {
                server.response.clear();
                server.response.extend_from_slice(bytes);
            }
        }
        tx.send(server.reply_to, len);
        self.counters.responses_forwarded += 1;
        Outcome::Forwarded
    }

    fn stateless_response(&mut self, message: &Message<'_>, tx: &mut impl Transmit) -> Outcome {
        match route_response(&self.editor, message, tx.buffer()) {
            Action::Forward { to, len } => {
                tx.send(to, len);
                self.counters.responses_forwarded += 1;
                Outcome::Forwarded
            }
            Action::Reply { to, len } => {
                tx.send(to, len);
                Outcome::Replied
            }
            Action::Drop(reason) => Outcome::Dropped(reason),
        }
    }

    fn on_timer(&mut self, now: Millis, timer: Timer, tx: &mut impl Transmit) {
        let timers = self.txns.config.timers;
        match timer {
            Timer::ClientRetransmit(slot) => {
                let Some(client) = self.txns.clients.get_mut(slot) else {
                    return;
                };
                client.timers[0] = None;
                let retransmit = match client.state {
                    ClientState::Calling => true,
                    ClientState::Proceeding => !client.invite,
                    _ => false,
                };
                if !retransmit || client.abandoned {
                    return;
                }
                let interval = match (client.invite, client.state) {
                    (true, _) => client.interval_ms.saturating_mul(2),
                    (false, ClientState::Proceeding) => timers.t2_ms,
                    (false, _) => client.interval_ms.saturating_mul(2).min(timers.t2_ms),
                };
                client.interval_ms = interval;
                emit(tx, client.to, &client.request, &mut self.counters);
                self.counters.retransmissions_sent += 1;
                let id = self.txns.arm(now, interval, Timer::ClientRetransmit(slot));
                if let Some(client) = self.txns.clients.get_mut(slot) {
                    client.timers[0] = id;
                }
            }
            Timer::ClientTimeout(slot) => {
                let Some(client) = self.txns.clients.get_mut(slot) else {
                    return;
                };
                client.timers[1] = None;
                let pending =
                    matches!(client.state, ClientState::Calling | ClientState::Proceeding);
                let abandoned = client.abandoned;
                if pending && !abandoned && !client.is_cancel {
                    self.counters.timeouts += 1;
                    self.try_failed(now, slot, tx);
                }
                self.txns.remove_client(slot);
            }
            Timer::ClientTry(slot) => {
                let Some(client) = self.txns.clients.get_mut(slot) else {
                    return;
                };
                client.timers[2] = None;
                if client.state != ClientState::Calling || client.abandoned {
                    return;
                }
                let server = client.server;
                // An in-dialog request without our Route has one place to
                // go (where its Call-ID hashes): no other member may take
                // it, so the per-try timer leaves it to Timer B.
                let untried = self.txns.servers.get(server).is_some_and(|s| {
                    !s.cancelled
                        && !s.sticky
                        && match &s.target {
                            // Another member could still take it.
                            Target::Pool {
                                routing,
                                set,
                                tried,
                            } => routing
                                .set(*set)
                                .members
                                .iter()
                                .enumerate()
                                .any(|(i, m)| tried & (1 << i) == 0 && m.eligible(!s.sticky)),
                            Target::Fixed(_) => false,
                        }
                });
                // With the client table full no next try could start:
                // giving this one up would only answer 408 at once, where
                // Timer B still leaves a slow backend time to answer.
                if untried && !self.txns.clients.is_full() {
                    self.counters.try_timeouts += 1;
                    self.try_failed(now, slot, tx);
                }
            }
            Timer::ClientC(slot) => {
                let Some(client) = self.txns.clients.get_mut(slot) else {
                    return;
                };
                client.timers[2] = None;
                if client.state != ClientState::Proceeding {
                    return;
                }
                self.counters.timer_c_fired += 1;
                // §16.8: a branch that rang is cancelled; its 487 answers.
                self.cancel_client(now, slot, tx);
            }
            Timer::ClientLinger(slot) => {
                self.txns.remove_client(slot);
            }
            Timer::ServerRetransmit(slot) => {
                let Some(server) = self.txns.servers.get_mut(slot) else {
                    return;
                };
                server.timers[0] = None;
                if server.state != ServerState::Completed {
                    return;
                }
                server.interval_ms = server.interval_ms.saturating_mul(2).min(timers.t2_ms);
                let interval = server.interval_ms;
                emit(tx, server.reply_to, &server.response, &mut self.counters);
                self.counters.retransmissions_sent += 1;
                let id = self.txns.arm(now, interval, Timer::ServerRetransmit(slot));
                if let Some(server) = self.txns.servers.get_mut(slot) {
                    server.timers[0] = id;
                }
            }
            Timer::ServerTimeout(slot) => {
                if self
                    .txns
                    .servers
                    .get(slot)
                    .is_some_and(|s| s.state == ServerState::Completed)
                {
                    self.counters.ack_timeouts += 1;
                }
                self.txns.remove_server(slot);
            }
            Timer::ServerLinger(slot) => {
                self.txns.remove_server(slot);
            }
        }
    }
}

/// Copies stored bytes into the transmit buffer and sends them.
fn emit(tx: &mut impl Transmit, to: SocketAddr, bytes: &[u8], counters: &mut Counters) {
    let buffer = tx.buffer();
    match buffer.get_mut(..bytes.len()) {
        Some(room) => {
            room.copy_from_slice(bytes);
            tx.send(to, bytes.len());
        }
        None => counters.dropped_buffer_full += 1,
    }
}

/// Whether a final response `code` is better for the caller than `than`
/// (§16.7 step 6: 6xx first, then the lowest class; the earliest wins a
/// tie).
fn better(code: u16, than: Option<u16>) -> bool {
    let rank = |c: u16| if c >= 600 { 0 } else { c / 100 };
    than.map_or(true, |than| rank(code) < rank(than))
}

/// The client transaction id in our branch on a response's top Via:
/// `z9hG4bK<16 hex id>.<16 hex loop>`.
fn our_branch_id(local: &LocalAddress, message: &Message<'_>) -> Option<u64> {
    let via = message.top_via();
    if !local.is_local(via.host, via.port.unwrap_or(5060)) {
        return None;
    }
    let key = via.branch?.strip_prefix(MAGIC_COOKIE)?;
    if key.len() != 33 || key[16] != b'.' {
        return None;
    }
    key[..16].iter().try_fold(0u64, |n, &b| {
        let digit = (b as char).to_digit(16)?;
        Some(n << 4 | u64::from(digit))
    })
}

fn reply(
    message: &Message<'_>,
    source: SocketAddr,
    response: &LocalResponse<'_>,
    tx: &mut impl Transmit,
) -> Outcome {
    match write_response(message, source, response, tx.buffer()) {
        Ok(len) => {
            tx.send(reply_address(message.top_via(), source), len);
            Outcome::Replied
        }
        Err(_) => Outcome::Dropped(DropReason::BufferFull),
    }
}

/// The branch key of our Via for this request: `<transaction>.<loop>`, 16
/// hex digits each (RFC 3261 §16.6 step 8).
///
/// The transaction half is the same for every retransmission and for the
/// CANCEL and non-2xx ACK of an INVITE (§16.11), because it hashes the
/// client's own transaction id (for RFC 2543 clients, without the magic
/// cookie, the fields §17.2.3 matches on instead). The loop half hashes
/// what a request keeps when it comes back to us unchanged (Request-URI,
/// tags, Call-ID, CSeq number), so [`is_loop`] can tell a loop from a
/// spiral.
fn branch_key(message: &Message<'_>) -> [u8; 33] {
    let via = message.top_via();
    let port = via.port.unwrap_or(5060).to_be_bytes();
    let transaction = match via.branch.filter(|_| via.has_magic_cookie()) {
        Some(branch) => key_hash(&[branch, via.host, &port]),
        None => key_hash(&[
            message.request_uri().map_or(&[][..], |u| u.opaque),
            message.to().tag.unwrap_or_default(),
            message.from().tag.unwrap_or_default(),
            message.call_id(),
            &message.cseq().number.to_be_bytes(),
            via.value,
        ]),
    };
    let mut key = [b'.'; 33];
    key[..16].copy_from_slice(&hex16(transaction));
    key[17..].copy_from_slice(&loop_hash(message));
    key
}

fn loop_hash(message: &Message<'_>) -> [u8; 16] {
    hex16(key_hash(&[
        message.request_uri().map_or(&[][..], |u| u.opaque),
        message.to().tag.unwrap_or_default(),
        message.from().tag.unwrap_or_default(),
        message.call_id(),
        &message.cseq().number.to_be_bytes(),
    ]))
}

/// RFC 3261 §16.3 step 4: a Via of ours whose branch ends with this
/// request's loop hash means the request came back unchanged: a loop. Our
/// Via with another loop hash is a spiral (the Request-URI changed).
fn is_loop(local: &LocalAddress, message: &Message<'_>, loop_part: &[u8]) -> bool {
    message.vias().any(|via| {
        local.is_local(via.host, via.port.unwrap_or(5060))
            && via
                .branch
                .and_then(|b| b.strip_prefix(MAGIC_COOKIE))
                .and_then(|b| b.split_last_chunk::<17>())
                .is_some_and(|(_, tail)| tail[0] == b'.' && tail[1..] == *loop_part)
    })
}

fn route_request(
    editor: &Editor,
    routing: Option<&Routing>,
    selector: &mut Selector,
    message: &Message<'_>,
    source: SocketAddr,
    out: &mut [u8],
) -> Action {
    let key = branch_key(message);
    if is_loop(editor.local(), message, &key[17..]) {
        return match write_response(message, source, &LocalResponse::LOOP_DETECTED, out) {
            Ok(len) => Action::Reply {
                to: reply_address(message.top_via(), source),
                len,
            },
            Err(_) => Action::Drop(DropReason::BufferFull),
        };
    }
    let method = message.method().unwrap_or(Method::Other);
    let in_dialog = message.to().tag.is_some();
    let destination = match next_hop(editor, message) {
        Hop::Uri(target) => match target {
            Some(addr) => addr,
            None => return Action::Drop(DropReason::UnresolvedNextHop),
        },
        Hop::Backend => {
            let Some(routing) = routing else {
                return Action::Drop(DropReason::NoBackend);
            };
            // Without transaction state, a CANCEL or ACK must reach the
            // backend its INVITE reached: only the Call-ID hash promises that.
            let set = pick_set(routing, message, source);
            match selector.select_by_call_id(routing, set, message.call_id()) {
                Selection::Member(index) => routing.set(set).members[index].address,
                Selection::AllDown | Selection::Exhausted => {
                    return Action::Drop(DropReason::NoBackend)
                }
            }
        }
    };
    let forward = Forward {
        source,
        branch_key: &key,
        record_route: !in_dialog && method.creates_dialog(),
    };
    match editor.forward_request(message, &forward, out) {
        Ok(len) => Action::Forward {
            to: destination,
            len,
        },
        Err(_) => Action::Drop(DropReason::BufferFull),
    }
}

/// A copy of the routing for this proxy (one shard) alone: every server
/// transaction clones its `Arc`, and a count shared by all shards would
/// bounce its cache line between cores on every call.
fn private(routing: &Arc<Routing>) -> Arc<Routing> {
    Arc::new(Routing::clone(routing))
}

/// The health of the pool member a try went to.
fn member_health(
    servers: &crate::txn::Slab<Server>,
    server: Slot,
    backend: Option<usize>,
) -> Option<&Arc<MemberHealth>> {
    match &servers.get(server)?.target {
        Target::Pool { routing, set, .. } => Some(&routing.set(*set).members.get(backend?)?.health),
        Target::Fixed(_) => None,
    }
}

/// The destination set a new request goes to, by the routing rules.
fn pick_set(routing: &Routing, message: &Message<'_>, source: SocketAddr) -> SetId {
    routing.pick_set(
        method_token(message),
        message.request_uri().and_then(|u| u.user),
        message.request_uri().map_or(&[][..], |u| u.host),
        source.ip(),
    )
}

/// A request's method as written (extension methods too).
fn method_token<'m>(message: &Message<'m>) -> &'m [u8] {
    match message.start_line() {
        StartLine::Request { method_text, .. } => method_text,
        StartLine::Response { .. } => &[],
    }
}

/// Where a request goes after our Route is popped.
enum Hop {
    /// A URI's address (`None` when its host is a name).
    Uri(Option<SocketAddr>),
    /// The backend set.
    Backend,
}

/// RFC 3261 §16.4 and §16.5 as a load balancer applies them: a request that
/// carries our Route is loose-routed (to the next Route, else to its
/// Request-URI); any other request is for the pool behind us.
fn next_hop(editor: &Editor, message: &Message<'_>) -> Hop {
    let mut routes = message.routes();
    let ours = match routes.next() {
        Some(Ok(top)) => editor.local().is_named_by(&top),
        _ => false,
    };
    if !ours {
        return Hop::Backend;
    }
    match routes.next() {
        Some(Ok(next)) => Hop::Uri(next.uri().ok().and_then(|u| uri_address(&u))),
        Some(Err(_)) => Hop::Uri(None),
        None => Hop::Uri(message.request_uri().and_then(uri_address)),
    }
}

/// A URI's socket address when its host is an IP literal (maddr wins).
fn uri_address(uri: &crate::sip::Uri<'_>) -> Option<SocketAddr> {
    let host = uri.maddr().unwrap_or(uri.host);
    Some(SocketAddr::new(host_ip(host)?, uri.port_or_default()))
}

/// Where a response to a request received over UDP goes (RFC 3261 §18.2.2
/// with §18.2.1, RFC 3581 §4): the packet's source address, since that is
/// what `received` holds; its source port when the client asked with
/// `rport`, else the sent-by port.
pub fn reply_address(via: &Via<'_>, source: SocketAddr) -> SocketAddr {
    if via.rport.is_some() {
        return source;
    }
    SocketAddr::new(source.ip(), via.port.unwrap_or(5060))
}

/// Where a response we forward goes: the Via below ours, as the previous
/// hop's server transport filled it in (`received`, `rport`), else its
/// sent-by when that is an IP address.
pub fn response_address(via: &Via<'_>) -> Option<SocketAddr> {
    let ip = match via.received {
        Some(received) => host_ip(received)?,
        None => host_ip(via.host)?,
    };
    let port = match via.rport {
        Some(Some(port)) => port,
        _ => via.port.unwrap_or(5060),
    };
    Some(SocketAddr::new(ip, port))
}

fn route_response(editor: &Editor, message: &Message<'_>, out: &mut [u8]) -> Action {
    match editor.forward_response(message, out) {
        Ok(len) => match message.vias().nth(1).as_ref().and_then(response_address) {
            Some(to) => Action::Forward { to, len },
            None => Action::Drop(DropReason::UnresolvedNextHop),
        },
        Err(EditError::ViaNotOurs) => Action::Drop(DropReason::ResponseNotOurs),
        Err(EditError::ViaOnlyOurs) => Action::Drop(DropReason::ResponseForUs),
        Err(EditError::BufferFull | EditError::WrongKind) => Action::Drop(DropReason::BufferFull),
    }
}

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod tests;
