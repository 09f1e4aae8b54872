//! Responses (RFC 3261 §16.7): each finds its client transaction by our
//! branch, moves it, and goes upstream, fails over, or is absorbed.

use super::branch::{our_branch_id, CANCEL_KEY};
use super::failover::better;
use super::hop::{member_health, route_response};
use super::outcome::{Action, DropReason, Outcome};
use super::{emit, Core, Dialog, Transmit, RTT_US_MAX};
use crate::sip::lex::key_hash;
use crate::sip::{HopMethod, Message, Method};
use crate::txn::{
    ClientResponse, ClientState, ClientTimer, Millis, Provisional, ServerState, Slot,
};

impl Core {
    pub(super) fn on_response(
        &mut self,
        now: Millis,
        message: &Message<'_>,
        tx: &mut impl Transmit,
    ) -> Outcome {
        let Some(slot) = self.client_of(message) else {
            // No transaction (a 2xx retransmitted after ours ended, or an
            // answer to a stateless forward): §16.7 forwards it as it is.
            return self.stateless_response(message, tx);
        };
        let code = message.status_code().unwrap_or(0);
        let timers = self.txns.config.timers;
        self.observe_round_trip(now, slot);
        let Some(client) = self.txns.clients.get_mut(slot) else {
            return Outcome::Absorbed;
        };
        match client.on_response(code, &timers) {
            ClientResponse::Absorb => Outcome::Absorbed,
            ClientResponse::CancelDone { linger_ms } => {
                self.txns.linger_client(now, slot, linger_ms);
                Outcome::Absorbed
            }
            ClientResponse::Retransmission { resend_ack } => {
                if resend_ack {
                    emit(tx, client.to, &client.ack, &mut self.counters);
                }
                self.counters.retransmissions_absorbed += 1;
                Outcome::Absorbed
            }
            ClientResponse::PassUpstream => self.forward_upstream(slot, message, tx),
            ClientResponse::Provisional(provisional) => {
                self.provisional(now, slot, provisional, message, tx)
            }
            ClientResponse::Success { linger_ms } => {
                self.client_success(now, slot, linger_ms, message, tx)
            }
            ClientResponse::Failure { linger_ms } => {
                self.client_final(now, slot, linger_ms, message, tx)
            }
        }
    }

    /// The client transaction a response answers: the id in our branch on
    /// its top Via, kept apart for an answer to our CANCEL.
    fn client_of(&self, message: &Message<'_>) -> Option<Slot> {
        let id = our_branch_id(self.editor.local(), message)?;
        let key = match message.cseq().method {
            Method::Cancel => id ^ CANCEL_KEY,
            _ => id,
        };
        self.txns.client_keys.get(&key).copied()
    }

    /// A try's first answer: its round trip, for the histogram and the
    /// member's health.
    fn observe_round_trip(&mut self, now: Millis, slot: Slot) {
        let Some(client) = self.txns.clients.get(slot) else {
            return;
        };
        if client.state != ClientState::Calling || client.is_cancel {
            return;
        }
        let rtt_ms = now.saturating_sub(client.sent_ms);
        self.rtt_us
            .saturating_record((rtt_ms * 1000).clamp(1, RTT_US_MAX));
        if let Some(health) = member_health(&self.txns.servers, client.server, client.backend) {
            health.observe(rtt_ms * 1000);
        }
    }

    /// The first 2xx on a live try: the call (or request) is answered.
    fn client_success(
        &mut self,
        now: Millis,
        slot: Slot,
        linger_ms: u32,
        message: &Message<'_>,
        tx: &mut impl Transmit,
    ) -> Outcome {
        let Some(client) = self.txns.clients.get(slot) else {
            return Outcome::Absorbed;
        };
        let (invite, server, backend) = (client.invite, client.server, client.backend);
        if invite {
            self.dialog_started(now, server, backend, message);
        }
        self.txns.linger_client(now, slot, linger_ms);
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
        let code = message.status_code().unwrap_or(0);
        self.server_final(now, server, code);
        outcome
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
        provisional: Provisional,
        message: &Message<'_>,
        tx: &mut impl Transmit,
    ) -> Outcome {
        if let Some(after_ms) = provisional.timer_c_ms {
            self.txns.arm_client(now, slot, ClientTimer::C, after_ms);
        }
        let mut stop = provisional.stop;
        self.txns.disarm(&mut stop);
        let Some(client) = self.txns.clients.get(slot) else {
            return Outcome::Absorbed;
        };
        let server = client.server;
        if provisional.send_cancel {
            self.cancel_client(now, slot, tx);
        }
        // §16.7 step 5: provisionals go upstream only until a final has.
        let answered = self
            .txns
            .servers
            .get(server)
            .is_none_or(|s| s.state != ServerState::Proceeding);
        if !provisional.forward || answered {
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
        linger_ms: u32,
        message: &Message<'_>,
        tx: &mut impl Transmit,
    ) -> Outcome {
        let Some(client) = self.txns.clients.get(slot) else {
            return Outcome::Absorbed;
        };
        let (invite, server_slot) = (client.invite, client.server);
        let code = message.status_code().unwrap_or(0);
        self.txns.linger_client(now, slot, linger_ms);
        if invite {
            self.send_ack(slot, message, tx);
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

    /// §17.1.1.3: the ACK for a non-2xx final is ours to send; it is kept
    /// for the final's retransmissions.
    fn send_ack(&mut self, slot: Slot, response: &Message<'_>, tx: &mut impl Transmit) {
        let Some(len) = self.write_ack(slot, response, tx) else {
            return;
        };
        let Some(client) = self.txns.clients.get_mut(slot) else {
            return;
        };
        client.ack = tx.buffer()[..len].to_vec();
        tx.send(client.to, len);
        self.counters.requests_sent += 1;
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
                client.branch_key.as_bytes(),
                client.to.transport,
                tx.buffer(),
            )
            .ok()
    }

    /// Moves a server transaction to its state after a final response
    /// `code` went upstream, with that state's timers.
    pub(super) fn server_final(&mut self, now: Millis, slot: Slot, code: u16) {
        let timers = self.txns.config.timers;
        let Some(server) = self.txns.servers.get_mut(slot) else {
            return;
        };
        let started_ms = server.started_ms;
        let Some(last) = server.on_final(code, &timers) else {
            return;
        };
        let took_us = now.saturating_sub(started_ms) * 1000;
        self.duration_us
            .saturating_record(took_us.clamp(1, RTT_US_MAX));
        let mut stop = last.stop;
        self.txns.disarm(&mut stop);
        for (kind, after_ms) in last.start.into_iter().flatten() {
            self.txns.arm_server(now, slot, kind, after_ms);
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
