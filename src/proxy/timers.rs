use super::{emit, Core, Transmit};
use crate::txn::{ClientState, Millis, ServerState, Target, Timer};

impl Core {
    pub(super) fn on_timer(&mut self, now: Millis, timer: Timer, tx: &mut impl Transmit) {
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
