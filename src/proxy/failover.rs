//! Failover (RFC 3261 §16.6, §16.7, serial forking): each try of a
//! server transaction goes to a destination not tried yet; when tries run
//! out, the caller gets the best final answer.

use super::branch::branch_key;
use super::limit::Limit;
use super::outcome::Counters;
use super::{emit, Core, Transmit};
use crate::balance::{Keys, Selection, Selector};
use crate::sip::lex::hex16;
use crate::sip::{
    write_response, Editor, Forward, LocalResponse, Message, Method, Peer, Transport,
};
use crate::txn::{
    BranchKey, CancelState, ClientTimer, ClientTxn, Millis, ServerState, ServerTxn, Slot, Target,
};

/// Whether a final response `code` is better for the caller than `than`
/// (§16.7 step 6: 6xx first, then the lowest class; the earliest wins a
/// tie).
pub(super) fn better(code: u16, than: Option<u16>) -> bool {
    let rank = |c: u16| if c >= 600 { 0 } else { c / 100 };
    than.is_none_or(|than| rank(code) < rank(than))
}

/// Where the next try goes: its address, its pool index and its branch.
struct NextTry {
    id: u64,
    to: Peer,
    backend: Option<usize>,
    branch_key: BranchKey,
}

impl Core {
    /// Starts the next try of a server transaction: picks a destination
    /// not tried yet, forwards the request there with a new branch, arms
    /// the client timers. False when nothing is left to try.
    ///
    /// `first` is the request as it arrived, with its branch key, on the
    /// first try: the stored copy is scanned again only for a failover.
    pub(super) fn try_next(
        &mut self,
        now: Millis,
        slot: Slot,
        first: Option<(&Message<'_>, &BranchKey)>,
        tx: &mut impl Transmit,
    ) -> bool {
        let Some(server) = self.txns.servers.get_mut(slot) else {
            return false;
        };
        if !server.may_try() || self.txns.clients.is_full() {
            return false;
        }
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
        let udp_max = self.txns.config.udp_request_bytes_max;
        let Some(mut hop) = choose(&mut self.selector, server, original, udp_max) else {
            if first.is_none() {
                server.request = request;
            }
            return false;
        };
        server.tries += 1;
        // Each try a new branch: its id names its client transaction.
        self.txns.next_id = self.txns.next_id.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let branch_key = first_branch_key
            .copied()
            .unwrap_or_else(|| branch_key(original))
            .with_transaction(&hex16(self.txns.next_id));
        let (editor, counters) = (&self.editor, &mut self.counters);
        let written = forward_try(
            editor,
            counters,
            original,
            server,
            &branch_key,
            &mut hop,
            tx,
        );
        if first.is_none() {
            server.request = request;
        }
        let Some(len) = written else {
            return false;
        };
        let next = NextTry {
            id: self.txns.next_id,
            to: hop.to,
            backend: hop.backend,
            branch_key,
        };
        self.start_try(now, slot, next, len, tx)
    }

    /// Sends the try's request (`len` bytes in the transmit buffer) and
    /// opens its client transaction with its timers.
    fn start_try(
        &mut self,
        now: Millis,
        slot: Slot,
        next: NextTry,
        len: usize,
        tx: &mut impl Transmit,
    ) -> bool {
        let Some(server) = self.txns.servers.get(slot) else {
            return false;
        };
        let (invite, tries) = (server.invite, server.tries);
        let client = ClientTxn {
            invite,
            backend: next.backend,
            ..ClientTxn::sent(
                next.id,
                slot,
                next.to,
                tx.buffer()[..len].to_vec(),
                next.branch_key,
                self.txns.config.timers.t1_ms,
                now,
            )
        };
        tx.send(next.to, len);
        self.counters.requests_forwarded += 1;
        if tries > 1 {
            self.counters.failovers += 1;
        }
        let Some(client_slot) = self.txns.clients.insert(client) else {
            return false;
        };
        self.txns.client_keys.insert(next.id, client_slot);
        if let Some(server) = self.txns.servers.get_mut(slot) {
            server.client = Some(client_slot);
        }
        self.arm_client_request_timers(now, client_slot);
        if invite {
            let try_ms = self.txns.config.timers.try_ms;
            self.txns
                .arm_client(now, client_slot, ClientTimer::Try, try_ms);
        }
        true
    }

    /// Timer A or E, and Timer B or F.
    pub(super) fn arm_client_request_timers(&mut self, now: Millis, slot: Slot) {
        let timers = self.txns.config.timers;
        self.txns
            .arm_client(now, slot, ClientTimer::Retransmit, timers.t1_ms);
        self.txns
            .arm_client(now, slot, ClientTimer::Timeout, timers.timeout_ms());
    }

    /// This try failed without a final response (timeout, ICMP, per-try
    /// timer): stop it and try the next, or answer the caller.
    pub(super) fn try_failed(&mut self, now: Millis, slot: Slot, tx: &mut impl Transmit) {
        let Some(client) = self.txns.clients.get_mut(slot) else {
            return;
        };
        // Stop retransmitting; Timer B stays to bound the entry's life.
        let retransmit = client.abandon();
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
    pub(super) fn answer_final(&mut self, now: Millis, slot: Slot, tx: &mut impl Transmit) {
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
                    Ok(original) => {
                        write_response(&original, source.addr, &local, tx.buffer()).ok()
                    }
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
        self.server_final(now, slot, code);
    }
}

/// Where a try goes, and what it may do when its request is too large for
/// a datagram.
struct Hop {
    to: Peer,
    /// The pool member's index; `None` for a fixed next hop.
    backend: Option<usize>,
    /// A UDP member that takes TCP too (see `Member::also_tcp`).
    also_tcp: bool,
    /// Past this, a request does not go to a pool member over UDP.
    udp_max: usize,
}

/// The destination of a server transaction's next try, marked tried:
/// `None` when none is left (a fixed next hop is tried once).
fn choose(
    selector: &mut Selector,
    server: &mut ServerTxn,
    original: &Message<'_>,
    udp_max: usize,
) -> Option<Hop> {
    let fixed = |to: Peer| Hop {
        to,
        backend: None,
        also_tcp: false,
        udp_max,
    };
    let sticky = server.sticky;
    let (routing, set, tried) = match &mut server.target {
        Target::Fixed(addr) if server.tries == 0 => return Some(fixed(*addr)),
        Target::Fixed(_) => return None,
        Target::Pool {
            routing,
            set,
            tried,
        } => (routing, *set, tried),
    };
    let selection = if sticky {
        // In a dialog, without our Route: where the Call-ID
        // hashes, as every other request of the call.
        match *tried {
            0 => selector.select_by_call_id(routing, set, original.call_id()),
            _ => Selection::Exhausted,
        }
    } else {
        let keys = Keys {
            call_id: original.call_id(),
            from_user: original.from().uri().ok().and_then(|u| u.user),
            ruri_user: original.request_uri().and_then(|u| u.user),
        };
        selector.select(routing, set, &keys, *tried, true)
    };
    match selection {
        Selection::Member(index) => {
            *tried |= 1 << index;
            let member = &routing.set(set).members[index];
            Some(Hop {
                to: member.peer(),
                backend: Some(index),
                also_tcp: member.also_tcp,
                udp_max,
            })
        }
        Selection::AllDown | Selection::Exhausted => None,
    }
}

/// Writes a try's request for `hop`, moving it to TCP (§18.1.1) when it
/// is too large for a datagram to a pool member that takes TCP while we
/// listen on TCP; 513 when no way is left.
fn forward_try(
    editor: &Editor,
    counters: &mut Counters,
    original: &Message<'_>,
    server: &mut ServerTxn,
    branch_key: &BranchKey,
    hop: &mut Hop,
    tx: &mut impl Transmit,
) -> Option<usize> {
    let len = write_try(
        editor,
        counters,
        original,
        server,
        branch_key,
        hop.to.transport,
        tx,
    )?;
    if len <= hop.udp_max || hop.to.transport != Transport::Udp || hop.backend.is_none() {
        return Some(len);
    }
    if !(hop.also_tcp && editor.local().serves(Transport::Tcp)) {
        return too_large(counters, original, server, tx);
    }
    hop.to.transport = Transport::Tcp;
    counters.moved_to_tcp += 1;
    write_try(
        editor,
        counters,
        original,
        server,
        branch_key,
        Transport::Tcp,
        tx,
    )
}

/// Writes a try's request into the transmit buffer and returns its
/// length. When it would not fit in one UDP datagram (the buffer holds
/// the largest there is), RFC 3261 §21.5.14's 513 is the server
/// transaction's answer, unless another try did better.
fn write_try(
    editor: &Editor,
    counters: &mut Counters,
    original: &Message<'_>,
    server: &mut ServerTxn,
    branch_key: &BranchKey,
    outbound: Transport,
    tx: &mut impl Transmit,
) -> Option<usize> {
    let method = original.method().unwrap_or(Method::Other);
    let forward = Forward {
        source: server.source.addr,
        branch_key: branch_key.as_bytes(),
        record_route: original.to().tag.is_none() && method.creates_dialog(),
        inbound: server.source.transport,
        outbound,
    };
    if let Ok(len) = editor.forward_request(original, &forward, tx.buffer()) {
        return Some(len);
    }
    too_large(counters, original, server, tx)
}

/// A try whose request is too large for where it would go: 513 (§21.5.14)
/// is the server transaction's answer, unless another try did better.
fn too_large(
    counters: &mut Counters,
    original: &Message<'_>,
    server: &mut ServerTxn,
    tx: &mut impl Transmit,
) -> Option<usize> {
    counters.limits.hit(Limit::UdpPayload);
    let local = LocalResponse::MESSAGE_TOO_LARGE;
    if let Ok(len) = write_response(original, server.source.addr, &local, tx.buffer()) {
        if better(local.code, server.best.as_ref().map(|(c, _)| *c)) {
            server.best = Some((local.code, tx.buffer()[..len].to_vec()));
        }
    }
    None
}
