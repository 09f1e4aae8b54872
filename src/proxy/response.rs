use super::branch::{our_branch_id, CANCEL_KEY};
use super::failover::better;
use super::hop::{member_health, route_response};
use super::outcome::{Action, DropReason, Outcome};
use super::{emit, Core, Dialog, Transmit, RTT_US_MAX};
use crate::sip::lex::key_hash;
use crate::sip::{HopMethod, Message, Method};
use crate::txn::{CancelState, ClientState, Millis, ServerState, Slot, Timer, Transactions};

impl Core {
    pub(super) fn on_response(
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
    pub(super) fn dialog_started(
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
    pub(super) fn provisional(
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
    pub(super) fn client_final(
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
    pub(super) fn write_ack(
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

    /// Moves a server transaction to its state after a final response
    /// went upstream, with that state's timers.
    pub(super) fn server_final(
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
    pub(super) fn forward_upstream(
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

    pub(super) fn stateless_response(
        &mut self,
        message: &Message<'_>,
        tx: &mut impl Transmit,
    ) -> Outcome {
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
}
