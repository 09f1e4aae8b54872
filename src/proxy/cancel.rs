//! CANCEL policy (RFC 3261 §9, §16.10): a caller's CANCEL is answered here
//! and cancels the pending try; the proxy's own CANCEL goes to a try that
//! rang (Timer C, a 2xx elsewhere, a 6xx, a try given up on).

use super::branch::CANCEL_KEY;
use super::outcome::{DropReason, Outcome};
use super::{reply, Core, Transmit};
use crate::sip::{HopMethod, LocalResponse, Message, Peer};
use crate::txn::{ClientTimer, ClientTxn, Millis, ServerState, Slot};

impl Core {
    /// A CANCEL from the caller: for the INVITE transaction here under
    /// `invite_key`, or with none, on as it is.
    pub(super) fn on_cancel(
        &mut self,
        now: Millis,
        invite_key: u64,
        message: &Message<'_>,
        source: Peer,
        tx: &mut impl Transmit,
    ) -> Outcome {
        if let Some(&slot) = self.txns.server_keys.get(&invite_key) {
            return self.caller_cancel(now, slot, message, source, tx);
        }
        // §16.10: no transaction to cancel: forward it statelessly.
        // Where it can go nowhere (no member up, a next hop by
        // name), the answer a UAS would give (§9.2): 481, so the
        // caller does not retransmit it for 64·T1 into silence.
        match self.stateless(message, source, tx) {
            Outcome::Dropped(DropReason::NoBackend | DropReason::UnresolvedNextHop) => reply(
                message,
                source,
                &LocalResponse::new(481, "Call/Transaction Does Not Exist"),
                tx,
            ),
            outcome => outcome,
        }
    }

    /// §16.10: answer the CANCEL with 200 and cancel the pending try.
    fn caller_cancel(
        &mut self,
        now: Millis,
        slot: Slot,
        message: &Message<'_>,
        source: Peer,
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
        if !client.on_cancel() {
            return;
        }
        let written = self.write_cancel(slot, tx);
        // §9.1: with no final 64·T1 after the CANCEL, the INVITE is over.
        // Armed even when no CANCEL could be written (the request as sent
        // does not scan again, e.g. Max-Forwards 1 sent on as 0): Timer C
        // has fired or the try is Proceeding without Timer B, so without it
        // nothing would ever end the try.
        let timeout = self.txns.config.timers.timeout_ms();
        self.txns
            .arm_client(now, slot, ClientTimer::Timeout, timeout);
        let (Some(len), Some(client)) = (written, self.txns.clients.get(slot)) else {
            return;
        };
        let (to, key) = (client.to, client.key ^ CANCEL_KEY);
        let cancel = ClientTxn {
            is_cancel: true,
            ..ClientTxn::sent(
                key,
                client.server,
                to,
                tx.buffer()[..len].to_vec(),
                client.branch_key,
                self.txns.config.timers.t1_ms,
                now,
            )
        };
        tx.send(to, len);
        self.counters.requests_sent += 1;
        if let Some(cancel_slot) = self.txns.clients.insert(cancel) {
            self.txns.client_keys.insert(key, cancel_slot);
            self.arm_client_request_timers(now, cancel_slot);
        }
    }

    /// Writes the CANCEL of client transaction `slot` into the transmit
    /// buffer, from the request as this try sent it: same Request-URI,
    /// Route set, From, To, Call-ID and CSeq number (§9.1).
    fn write_cancel(&mut self, slot: Slot, tx: &mut impl Transmit) -> Option<usize> {
        let client = self.txns.clients.get(slot)?;
        let sent = self.rescanner.scan(&client.request).ok()?;
        self.editor
            .write_hop_request(
                &sent,
                HopMethod::Cancel,
                sent.to().value,
                client.branch_key.as_bytes(),
                client.to.transport,
                tx.buffer(),
            )
            .ok()
    }
}
