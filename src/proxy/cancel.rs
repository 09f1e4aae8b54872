use super::branch::CANCEL_KEY;
use super::outcome::Outcome;
use super::{reply, Core, Transmit};
use crate::sip::{HopMethod, LocalResponse, Message};
use crate::txn::{CancelState, Client, ClientState, Millis, ServerState, Slot, Timer};
use std::net::SocketAddr;

impl Core {
    /// §16.10: answer the CANCEL with 200 and cancel the pending try.
    pub(super) fn caller_cancel(
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
    pub(super) fn cancel_client(&mut self, now: Millis, slot: Slot, tx: &mut impl Transmit) {
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
}
