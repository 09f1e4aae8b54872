//! Timers (RFC 3261 §17, §16.6 step 11, §16.7): each fired timer goes to
//! its transaction's state machine, and the proxy carries out what it
//! asks for: send again, fail over, cancel, let go.

use super::{emit, Core, Transmit};
use crate::txn::{ClientTimer, ClientTimerAction, Millis, ServerTimer, ServerTimerAction, Slot};
use crate::txn::{Target, Timer};

impl Core {
    pub(super) fn on_timer(&mut self, now: Millis, timer: Timer, tx: &mut impl Transmit) {
        match timer {
            Timer::ClientRetransmit(slot) => {
                self.client_timer(now, slot, ClientTimer::Retransmit, tx)
            }
            Timer::ClientTimeout(slot) => self.client_timer(now, slot, ClientTimer::Timeout, tx),
            Timer::ClientTry(slot) => self.client_timer(now, slot, ClientTimer::Try, tx),
            Timer::ClientC(slot) => self.client_timer(now, slot, ClientTimer::C, tx),
            Timer::ClientLinger(slot) => self.client_timer(now, slot, ClientTimer::Linger, tx),
            Timer::ServerRetransmit(slot) => {
                self.server_timer(now, slot, ServerTimer::Retransmit, tx)
            }
            Timer::ServerTimeout(slot) => self.server_timer(now, slot, ServerTimer::Timeout, tx),
            Timer::ServerLinger(slot) => self.server_timer(now, slot, ServerTimer::Linger, tx),
        }
    }

    fn client_timer(&mut self, now: Millis, slot: Slot, kind: ClientTimer, tx: &mut impl Transmit) {
        let timers = self.txns.config.timers;
        let Some(client) = self.txns.clients.get_mut(slot) else {
            return;
        };
        match client.on_timer(kind, &timers) {
            ClientTimerAction::Nothing => {}
            ClientTimerAction::Resend { after_ms } => {
                emit(tx, client.to, &client.request, &mut self.counters);
                self.counters.retransmissions_sent += 1;
                self.txns
                    .arm_client(now, slot, ClientTimer::Retransmit, after_ms);
            }
            ClientTimerAction::Expire { failed } => {
                if failed {
                    self.counters.timeouts += 1;
                    self.try_failed(now, slot, tx);
                }
                self.txns.remove_client(slot);
            }
            ClientTimerAction::TryExpired => self.try_expired(now, slot, tx),
            ClientTimerAction::TimerC => {
                self.counters.timer_c_fired += 1;
                // §16.8: a branch that rang is cancelled; its 487 answers.
                self.cancel_client(now, slot, tx);
            }
            ClientTimerAction::Release => {
                self.txns.remove_client(slot);
            }
        }
    }

    /// The per-try timer of an INVITE that has had no answer: the next
    /// member takes over while one may.
    fn try_expired(&mut self, now: Millis, slot: Slot, tx: &mut impl Transmit) {
        let Some(client) = self.txns.clients.get(slot) else {
            return;
        };
        // An in-dialog request without our Route has one place to
        // go (where its Call-ID hashes): no other member may take
        // it, so the per-try timer leaves it to Timer B.
        let untried = self.txns.servers.get(client.server).is_some_and(|s| {
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

    fn server_timer(&mut self, now: Millis, slot: Slot, kind: ServerTimer, tx: &mut impl Transmit) {
        let timers = self.txns.config.timers;
        let Some(server) = self.txns.servers.get_mut(slot) else {
            return;
        };
        match server.on_timer(kind, &timers) {
            ServerTimerAction::Nothing => {}
            ServerTimerAction::Resend { after_ms } => {
                emit(tx, server.reply_to, &server.response, &mut self.counters);
                self.counters.retransmissions_sent += 1;
                self.txns
                    .arm_server(now, slot, ServerTimer::Retransmit, after_ms);
            }
            ServerTimerAction::Release { unacknowledged } => {
                if unacknowledged {
                    self.counters.ack_timeouts += 1;
                }
                self.txns.remove_server(slot);
            }
        }
    }
}
