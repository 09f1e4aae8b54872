use super::branch::{branch_key, is_loop};
use super::hop::{next_hop, pick_set, reply_address, route_request, Hop};
use super::limit::Limit;
use super::outcome::{Action, DropReason, Outcome};
use super::{emit, reply, Core, Transmit};
use crate::sip::lex::key_hash;
use crate::sip::{local_to_tag, write_response, LocalResponse, Message, Method, Peer};
use crate::txn::{Millis, ServerAck, ServerState, ServerTimers, ServerTxn, Slot, Target};

impl Core {
    /// The §17.2.3 key of the server transaction a request belongs to.
    /// ACK and CANCEL find their INVITE's with `as_invite`.
    pub(super) fn server_key(&self, message: &Message<'_>, as_invite: bool) -> u64 {
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

    pub(super) fn on_request(
        &mut self,
        now: Millis,
        source: Peer,
        message: &Message<'_>,
        tx: &mut impl Transmit,
    ) -> Outcome {
        let method = message.method().unwrap_or(Method::Other);
        let invite_key = self.server_key(message, true);
        match method {
            Method::Ack => return self.on_ack(now, invite_key, message, source, tx),
            Method::Cancel => return self.on_cancel(now, invite_key, message, source, tx),
            Method::Bye => {
                self.dialogs
                    .remove(&key_hash(&[&self.txns.seed, message.call_id()]));
            }
            _ => {}
        }
        let key = match method {
            Method::Invite => invite_key,
            _ => self.server_key(message, false),
        };
        if let Some(&slot) = self.txns.server_keys.get(&key) {
            return self.retransmitted_request(slot, tx);
        }
        if !self.admitted(method, message) {
            return self.shed(now, message, source, tx);
        }
        let branch_key = branch_key(message);
        if is_loop(self.editor.local(), message, branch_key.loop_part()) {
            self.counters.loops_detected += 1;
            return reply(message, source, &LocalResponse::LOOP_DETECTED, tx);
        }
        let target = match self.new_target(message, source, tx) {
            Ok(target) => target,
            Err(outcome) => return outcome,
        };
        // A full client table (failed tries linger for Timer D) is as full
        // as a full server table: no try could start.
        if self.txns.servers.is_full() || self.txns.clients.is_full() {
            self.counters.overload_rejected += 1;
            self.counters.limits.hit(Limit::Transactions);
            let busy = LocalResponse::service_unavailable(self.txns.config.retry_after_s);
            return reply(message, source, &busy, tx);
        }
        let opened = self.open_server(now, key, target, message, source, tx);
        let Some(slot) = opened else {
            return Outcome::Dropped(DropReason::BufferFull);
        };
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

    /// An ACK: ours to absorb when it acknowledges our non-2xx final or a
    /// final answer of our own; else it goes on as it is.
    fn on_ack(
        &mut self,
        now: Millis,
        invite_key: u64,
        message: &Message<'_>,
        source: Peer,
        tx: &mut impl Transmit,
    ) -> Outcome {
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
        self.stateless(message, source, tx)
    }

    /// Whether a new request may open a transaction while the shard admits
    /// only a share of new INVITEs and REGISTERs.
    fn admitted(&mut self, method: Method, message: &Message<'_>) -> bool {
        if self.admit >= 1.0
            || !matches!(method, Method::Invite | Method::Register)
            || message.to().tag.is_some()
        {
            return true;
        }
        // Admit an even `admit` share: each new request earns that
        // much credit, and a whole credit buys an admission.
        self.counters.admission_checked += 1;
        self.admit_credit += self.admit;
        if self.admit_credit >= 1.0 {
            self.admit_credit -= 1.0;
            return true;
        }
        false
    }

    /// Where a new request's tries may go, or what became of it when
    /// nowhere (a next hop by name, no backend, no member up: 503).
    fn new_target(
        &mut self,
        message: &Message<'_>,
        source: Peer,
        tx: &mut impl Transmit,
    ) -> Result<Target, Outcome> {
        let new_dialog = message.to().tag.is_none();
        let routing = match next_hop(&self.editor, message) {
            Hop::Uri(Some(addr)) => return Ok(Target::Fixed(addr)),
            Hop::Uri(None) => return Err(Outcome::Dropped(DropReason::UnresolvedNextHop)),
            Hop::Backend => match &self.routing {
                Some(routing) => routing,
                None => return Err(Outcome::Dropped(DropReason::NoBackend)),
            },
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
            return Err(reply(message, source, &busy, tx));
        }
        Ok(Target::Pool {
            routing: routing.clone(),
            set,
            tried: 0,
        })
    }

    /// Opens the server transaction of a new request under `key` (an
    /// INVITE's 100 Trying goes at once); `None` when the table is full.
    fn open_server(
        &mut self,
        now: Millis,
        key: u64,
        target: Target,
        message: &Message<'_>,
        source: Peer,
        tx: &mut impl Transmit,
    ) -> Option<Slot> {
        let invite = message.method() == Some(Method::Invite);
        let reply_to = reply_address(message.top_via(), source);
        let mut response = Vec::new();
        if invite {
            // §16.2: an INVITE gets 100 at once, so the caller stops
            // retransmitting while the backend thinks.
            if let Ok(len) =
                write_response(message, source.addr, &LocalResponse::TRYING, tx.buffer())
            {
                response.extend_from_slice(&tx.buffer()[..len]);
                tx.send(reply_to, len);
            }
        }
        let server = ServerTxn {
            key,
            invite,
            state: ServerState::Proceeding,
            // The datagram as received, as the scanner was handed it.
            request: message.datagram().to_vec(),
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
            timers: ServerTimers::default(),
            started_ms: now,
        };
        let slot = self.txns.servers.insert(server)?;
        self.txns.server_keys.insert(key, slot);
        self.counters.transactions_started += 1;
        Some(slot)
    }

    /// A new INVITE or REGISTER while the shard is overloaded: 503 with
    /// Retry-After while this second's budget of them lasts, else dropped
    /// (see [`overload`]).
    pub(super) fn shed(
        &mut self,
        now: Millis,
        message: &Message<'_>,
        source: Peer,
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
    pub(super) fn stateless(
        &mut self,
        message: &Message<'_>,
        source: Peer,
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
        if let Some(server) = self.txns.servers.get(slot) {
            if server.on_retransmission() {
                emit(tx, server.reply_to, &server.response, &mut self.counters);
            }
        }
        self.counters.retransmissions_absorbed += 1;
        Outcome::Absorbed
    }

    /// An ACK with the INVITE's branch: it acknowledges our non-2xx final.
    /// Returns false when it is not ours to absorb.
    fn server_ack(&mut self, now: Millis, slot: Slot) -> bool {
        let timers = self.txns.config.timers;
        let Some(server) = self.txns.servers.get_mut(slot) else {
            return false;
        };
        match server.on_ack(&timers) {
            ServerAck::Confirm { linger_ms } => {
                self.txns.linger_server(now, slot, linger_ms);
                true
            }
            ServerAck::Absorb => true,
            ServerAck::NotOurs => false,
        }
    }
}
