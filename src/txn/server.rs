//! The server transaction (RFC 3261 §17.2, figures 7 and 8, with RFC
//! 6026's Accepted): the caller's request, what was answered, and the
//! state machine that events move and that answers with actions.

use crate::sip::Peer;

use super::timers::{ServerTimer, ServerTimers};
use super::wheel::TimerId;
use super::{Millis, Slot, Target, TimerConfig};

/// Server transaction states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerState {
    /// No final response yet (Proceeding for INVITE; Trying or Proceeding
    /// for the rest: which one only changes what a retransmission gets).
    Proceeding,
    /// A 2xx went upstream; retransmitted INVITEs are absorbed, 2xx
    /// retransmissions pass through (Timer L).
    Accepted,
    /// A non-2xx final went upstream: retransmitted with Timer G (INVITE)
    /// until the ACK or Timer H; non-INVITE waits out Timer J.
    Completed,
    /// The ACK came: absorb more ACKs for Timer I.
    Confirmed,
}

/// One server transaction: the caller's request and what was answered.
#[derive(Debug)]
pub struct ServerTxn {
    pub key: u64,
    pub invite: bool,
    pub state: ServerState,
    /// The request as received, for local responses and new tries; let go
    /// once a final response has gone upstream.
    pub request: Vec<u8>,
    pub source: Peer,
    /// Where every response goes (RFC 3261 §18.2.2, RFC 3581).
    pub reply_to: Peer,
    /// The last response sent upstream, for retransmitted requests and
    /// Timer G; let go in Accepted and Confirmed, which send nothing.
    pub response: Vec<u8>,
    pub target: Target,
    /// Goes to the pool by Call-ID hash whatever the algorithm: an
    /// in-dialog request without our Route must reach the backend that
    /// holds its dialog.
    pub sticky: bool,
    /// The client transaction of the current try.
    pub client: Option<Slot>,
    pub tries: u32,
    pub cancelled: bool,
    /// The best final response of a failed try so far (§16.7 step 6),
    /// as it would go upstream.
    pub best: Option<(u16, Vec<u8>)>,
    /// Timer G's current interval.
    pub interval_ms: u32,
    pub timers: ServerTimers,
    /// When the request arrived: its final response gives the
    /// transaction's duration (the metrics' histogram).
    pub started_ms: Millis,
}

/// What an ACK with the INVITE's branch does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerAck {
    /// It acknowledges our non-2xx final: Confirmed, let go after Timer I.
    Confirm { linger_ms: u32 },
    /// A retransmitted ACK in Confirmed: absorbed.
    Absorb,
    /// Not ours to absorb (an ACK for a 2xx goes on to the UAS).
    NotOurs,
}

/// The timer changes of a final response sent upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerFinal {
    /// Cancel these.
    pub stop: [Option<TimerId>; 2],
    /// Then arm these, each after its milliseconds.
    pub start: [Option<(ServerTimer, u32)>; 2],
}

/// What a server transaction's timer asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerTimerAction {
    /// Nothing (the state moved on since it was armed).
    Nothing,
    /// Timer G: send the final response again, and again after `after_ms`.
    Resend { after_ms: u32 },
    /// Timer H, I, J or L: remove the transaction; `unacknowledged` when
    /// Timer H found our non-2xx final never ACKed.
    Release { unacknowledged: bool },
}

impl ServerTxn {
    /// Whether another try may start: no final response went upstream
    /// and the caller did not cancel.
    #[inline]
    pub fn may_try(&self) -> bool {
        self.state == ServerState::Proceeding && !self.cancelled
    }

    /// A request that matches this transaction came again (§17.2.1,
    /// §17.2.2): whether the last response goes out again (else it is
    /// taken in silently).
    #[inline]
    pub fn on_retransmission(&self) -> bool {
        match self.state {
            ServerState::Proceeding | ServerState::Completed => !self.response.is_empty(),
            ServerState::Accepted | ServerState::Confirmed => false,
        }
    }

    /// An ACK with the INVITE's branch came.
    pub fn on_ack(&mut self, timers: &TimerConfig) -> ServerAck {
        match self.state {
            ServerState::Completed => {
                self.state = ServerState::Confirmed;
                self.response = Vec::new();
                ServerAck::Confirm {
                    linger_ms: timers.t4_ms,
                }
            }
            ServerState::Confirmed => ServerAck::Absorb,
            ServerState::Proceeding | ServerState::Accepted => ServerAck::NotOurs,
        }
    }

    /// A final response `code` went upstream: the state after it and its
    /// timers; `None` when one had gone already.
    pub fn on_final(&mut self, code: u16, timers: &TimerConfig) -> Option<ServerFinal> {
        if self.state != ServerState::Proceeding {
            return None;
        }
        let (state, first, second) = match (self.invite, code) {
            (true, 200..=299) => (
                ServerState::Accepted,
                (ServerTimer::Linger, timers.timeout_ms()),
                None,
            ),
            (true, _) => (
                ServerState::Completed,
                (ServerTimer::Retransmit, timers.t1_ms),
                Some((ServerTimer::Timeout, timers.timeout_ms())),
            ),
            (false, _) => (
                ServerState::Completed,
                (ServerTimer::Linger, timers.timeout_ms()),
                None,
            ),
        };
        self.state = state;
        self.interval_ms = timers.t1_ms;
        // Only Completed still sends anything: its final response.
        self.request = Vec::new();
        if state == ServerState::Accepted {
            self.response = Vec::new();
        }
        Some(ServerFinal {
            stop: self.timers.take_all(),
            start: [Some(first), second],
        })
    }

    /// Timer `kind` of this transaction fired.
    pub fn on_timer(&mut self, kind: ServerTimer, timers: &TimerConfig) -> ServerTimerAction {
        match kind {
            ServerTimer::Retransmit => {
                self.timers.take(kind);
                if self.state != ServerState::Completed {
                    return ServerTimerAction::Nothing;
                }
                self.interval_ms = self.interval_ms.saturating_mul(2).min(timers.t2_ms);
                ServerTimerAction::Resend {
                    after_ms: self.interval_ms,
                }
            }
            ServerTimer::Timeout => ServerTimerAction::Release {
                unacknowledged: self.state == ServerState::Completed,
            },
            ServerTimer::Linger => ServerTimerAction::Release {
                unacknowledged: false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(invite: bool) -> ServerTxn {
        let caller = Peer::udp("198.51.100.1:5060".parse().unwrap());
        ServerTxn {
            key: 1,
            invite,
            state: ServerState::Proceeding,
            request: b"INVITE".to_vec(),
            source: caller,
            reply_to: caller,
            response: b"SIP/2.0 100 Trying".to_vec(),
            target: Target::Fixed(caller),
            sticky: false,
            client: None,
            tries: 1,
            cancelled: false,
            best: None,
            interval_ms: 500,
            timers: ServerTimers::default(),
            started_ms: 0,
        }
    }

    #[test]
    fn invite_rejected_retransmits_with_g_until_h_then_confirms_on_ack() {
        let timers = TimerConfig::default();
        let mut server = txn(true);
        assert!(server.on_retransmission(), "Proceeding resends its 100");
        assert!(server.may_try());
        server.cancelled = true;
        assert!(!server.may_try(), "a cancelled call tries no further");
        server.cancelled = false;
        let last = server.on_final(486, &timers).unwrap();
        assert_eq!(server.state, ServerState::Completed);
        assert!(server.request.is_empty());
        assert_eq!(
            last.start,
            [
                Some((ServerTimer::Retransmit, 500)),
                Some((ServerTimer::Timeout, 32_000))
            ]
        );
        assert_eq!(server.on_final(500, &timers), None, "one final only");
        assert!(!server.may_try());
        server.response = b"SIP/2.0 486 Busy Here".to_vec();
        let resends: Vec<_> = (0..5)
            .map(|_| server.on_timer(ServerTimer::Retransmit, &timers))
            .collect();
        let after = |after_ms| ServerTimerAction::Resend { after_ms };
        assert_eq!(
            resends,
            [
                after(1_000),
                after(2_000),
                after(4_000),
                after(4_000),
                after(4_000)
            ],
            "Timer G doubles up to T2"
        );
        assert_eq!(
            server.on_ack(&timers),
            ServerAck::Confirm { linger_ms: 5_000 }
        );
        assert!(server.response.is_empty());
        assert!(!server.on_retransmission(), "Confirmed sends nothing");
        assert_eq!(server.on_ack(&timers), ServerAck::Absorb);
        assert_eq!(
            server.on_timer(ServerTimer::Retransmit, &timers),
            ServerTimerAction::Nothing
        );
        assert_eq!(
            server.on_timer(ServerTimer::Linger, &timers),
            ServerTimerAction::Release {
                unacknowledged: false
            }
        );
    }

    #[test]
    fn timer_h_reports_a_final_never_acked() {
        let timers = TimerConfig::default();
        let mut server = txn(true);
        server.on_final(603, &timers);
        assert_eq!(
            server.on_timer(ServerTimer::Timeout, &timers),
            ServerTimerAction::Release {
                unacknowledged: true
            }
        );
    }

    #[test]
    fn invite_answered_2xx_is_accepted_and_lets_its_bytes_go() {
        let timers = TimerConfig::default();
        let mut server = txn(true);
        assert_eq!(server.on_ack(&timers), ServerAck::NotOurs);
        let last = server.on_final(200, &timers).unwrap();
        assert_eq!(server.state, ServerState::Accepted);
        assert!(server.response.is_empty() && server.request.is_empty());
        assert_eq!(last.start, [Some((ServerTimer::Linger, 32_000)), None]);
        assert!(!server.on_retransmission(), "Accepted absorbs silently");
        assert_eq!(
            server.on_ack(&timers),
            ServerAck::NotOurs,
            "an ACK for a 2xx is the UAS's"
        );
    }

    #[test]
    fn non_invite_final_waits_out_timer_j() {
        let timers = TimerConfig::default();
        let mut server = txn(false);
        let last = server.on_final(200, &timers).unwrap();
        assert_eq!(server.state, ServerState::Completed);
        assert_eq!(last.start, [Some((ServerTimer::Linger, 32_000)), None]);
        server.response = b"SIP/2.0 200 OK".to_vec();
        assert!(server.on_retransmission(), "Completed resends its final");
    }
}
