//! The client transaction (RFC 3261 §17.1, figures 5 and 6, with RFC
//! 6026's Accepted and §16's Timer C and CANCEL): one try of a request
//! towards one next hop, or a CANCEL of one, and the state machine that
//! events move and that answers with actions.

use crate::sip::Peer;

use super::timers::{ClientTimer, ClientTimers};
use super::wheel::TimerId;
use super::{Millis, Slot, TimerConfig};

/// Client transaction states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientState {
    /// Sent, no response yet (Calling / Trying): retransmit with A or E.
    Calling,
    /// A provisional came.
    Proceeding,
    /// A 2xx came to an INVITE: more 2xx pass through (Timer M).
    Accepted,
    /// A final came (INVITE non-2xx: ACKed, Timer D; others: Timer K).
    Completed,
}

/// Whether a CANCEL is owed to a client transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelState {
    None,
    /// Asked for before any provisional: sent when one comes (§9.1).
    Pending,
    Sent,
}

/// The branch parameter of our Via after the magic cookie:
/// `<transaction>.<loop>`, 16 hex digits each (RFC 3261 §16.6 step 8).
/// The transaction half names the client transaction; the loop half
/// tells a loop from a spiral (§16.3 step 4).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct BranchKey([u8; BranchKey::LEN]);

impl BranchKey {
    /// Bytes in a key: two halves of 16 hex digits and the dot.
    pub const LEN: usize = 33;

    /// The key of `transaction` and `loop_part`, each 16 hex digits.
    pub fn new(transaction: &[u8; 16], loop_part: &[u8; 16]) -> BranchKey {
        let mut key = [b'.'; BranchKey::LEN];
        key[..16].copy_from_slice(transaction);
        key[17..].copy_from_slice(loop_part);
        BranchKey(key)
    }

    /// The same loop half with another transaction half.
    pub fn with_transaction(self, transaction: &[u8; 16]) -> BranchKey {
        let mut key = self.0;
        key[..16].copy_from_slice(transaction);
        BranchKey(key)
    }

    pub fn as_bytes(&self) -> &[u8; BranchKey::LEN] {
        &self.0
    }

    /// The loop half.
    pub fn loop_part(&self) -> &[u8] {
        &self.0[17..]
    }

    /// The transaction id in a branch key of ours (what follows the magic
    /// cookie), or `None` when `key` is not one.
    pub fn parse_id(key: &[u8]) -> Option<u64> {
        if key.len() != BranchKey::LEN || key[16] != b'.' {
            return None;
        }
        key[..16].iter().try_fold(0u64, |n, &b| {
            let digit = (b as char).to_digit(16)?;
            Some(n << 4 | u64::from(digit))
        })
    }
}

impl std::fmt::Debug for BranchKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BranchKey({})", String::from_utf8_lossy(&self.0))
    }
}

/// One client transaction: one try of a request towards one next hop, or
/// a CANCEL of one.
#[derive(Debug)]
pub struct ClientTxn {
    pub key: u64,
    pub server: Slot,
    pub invite: bool,
    /// A CANCEL we made: its answers are absorbed.
    pub is_cancel: bool,
    pub state: ClientState,
    pub to: Peer,
    /// Pool index of `to`, when it came from the pool.
    pub backend: Option<usize>,
    /// The request as sent: retransmissions, and the CANCEL and ACK
    /// written from it. Let go once a final response has come.
    pub request: Vec<u8>,
    /// The ACK sent for a non-2xx final, sent again for its retransmissions.
    pub ack: Vec<u8>,
    pub branch_key: BranchKey,
    pub provisional: bool,
    pub cancel: CancelState,
    /// Given up on by its server transaction (failover moved on): late
    /// answers are cancelled or absorbed, 2xx still pass.
    pub abandoned: bool,
    pub interval_ms: u32,
    pub timers: ClientTimers,
    /// When the request first went out: its first answer gives the
    /// backend's round trip (the lowest-latency algorithm's EWMA).
    pub sent_ms: Millis,
}

/// What a response does to a client transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientResponse {
    /// Taken in: nothing to send.
    Absorb,
    /// The final answer to our CANCEL: taken in, and the CANCEL
    /// transaction waits `linger_ms` (Timer K).
    CancelDone { linger_ms: u32 },
    /// A final again after ours came: taken in; the ACK we sent goes
    /// again when `resend_ack`.
    Retransmission { resend_ack: bool },
    /// A 2xx again in Accepted: it passes upstream (RFC 6026).
    PassUpstream,
    /// A 1xx on a live try.
    Provisional(Provisional),
    /// The first 2xx: Accepted (INVITE) or Completed; the transaction
    /// waits `linger_ms` (Timer M or K).
    Success { linger_ms: u32 },
    /// A final of 300 or more on a live try: Completed; an INVITE owes
    /// its ACK; the transaction waits `linger_ms` (Timer D or K).
    Failure { linger_ms: u32 },
}

/// What a provisional response asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Provisional {
    /// Cancel these: Timer A, and Timer B unless our CANCEL's wait runs
    /// in its place.
    pub stop: [Option<TimerId>; 2],
    /// (Re)start Timer C after this long: on the first provisional, or
    /// one above 100 (§16.7 step 2).
    pub timer_c_ms: Option<u32>,
    /// A CANCEL is owed now (asked for before, or the try was given up).
    pub send_cancel: bool,
    /// It may go upstream: not a 100, not from a try given up on.
    pub forward: bool,
}

/// What a client transaction's timer asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientTimerAction {
    /// Nothing (the state moved on since it was armed).
    Nothing,
    /// Timer A or E: send the request again, and again after `after_ms`.
    Resend { after_ms: u32 },
    /// Timer B or F: remove the transaction; `failed` when the try got no
    /// final and is still the caller's (a backend failure).
    Expire { failed: bool },
    /// The per-try timer: no response at all yet; the next member may be
    /// tried.
    TryExpired,
    /// Timer C: the try rang too long; cancel it (§16.8).
    TimerC,
    /// D, K or M: remove the transaction.
    Release,
}

impl ClientTxn {
    /// A request just sent to `to`: Calling, nothing answered, nothing
    /// given up; the caller sets `invite`, `is_cancel` and `backend` and
    /// arms its timers. One place for a new try's and a CANCEL's start.
    pub fn sent(
        key: u64,
        server: Slot,
        to: Peer,
        request: Vec<u8>,
        branch_key: BranchKey,
        interval_ms: u32,
        sent_ms: Millis,
    ) -> ClientTxn {
        ClientTxn {
            key,
            server,
            invite: false,
            is_cancel: false,
            state: ClientState::Calling,
            to,
            backend: None,
            request,
            ack: Vec::new(),
            branch_key,
            provisional: false,
            cancel: CancelState::None,
            abandoned: false,
            interval_ms,
            timers: ClientTimers::default(),
            sent_ms,
        }
    }

    /// A response with status `code` came.
    pub fn on_response(&mut self, code: u16, timers: &TimerConfig) -> ClientResponse {
        if self.is_cancel {
            if code < 200 {
                return ClientResponse::Absorb;
            }
            self.state = ClientState::Completed;
            return ClientResponse::CancelDone {
                linger_ms: timers.t4_ms,
            };
        }
        match (self.state, code) {
            (ClientState::Completed, _) => ClientResponse::Retransmission {
                // No ACK when none could be written (the request as sent
                // does not scan again): an empty datagram is not one.
                resend_ack: self.invite && code >= 300 && !self.ack.is_empty(),
            },
            (ClientState::Accepted, 200..=299) => ClientResponse::PassUpstream,
            (ClientState::Accepted, _) => ClientResponse::Absorb,
            (ClientState::Calling | ClientState::Proceeding, 100..=199) => {
                ClientResponse::Provisional(self.on_provisional(code, timers))
            }
            (ClientState::Calling | ClientState::Proceeding, 200..=299) => {
                let (state, linger_ms) = match self.invite {
                    true => (ClientState::Accepted, timers.timeout_ms()),
                    false => (ClientState::Completed, timers.t4_ms),
                };
                self.state = state;
                self.request = Vec::new();
                ClientResponse::Success { linger_ms }
            }
            (ClientState::Calling | ClientState::Proceeding, _) => {
                self.state = ClientState::Completed;
                let linger_ms = match self.invite {
                    true => timers.timer_d_ms,
                    false => timers.t4_ms,
                };
                ClientResponse::Failure { linger_ms }
            }
        }
    }

    fn on_provisional(&mut self, code: u16, timers: &TimerConfig) -> Provisional {
        let first = self.state == ClientState::Calling;
        self.state = ClientState::Proceeding;
        let mut stop = [None; 2];
        let mut timer_c_ms = None;
        if self.invite {
            // Timer A stops; Timer B and the per-try timer give way to C.
            // Once our CANCEL is sent, the second timer is its 64·T1 wait
            // (§9.1), the only one left to end the try: it stays.
            let wait = self.cancel == CancelState::Sent;
            let timer_b = match wait {
                true => None,
                false => self.timers.take(ClientTimer::Timeout),
            };
            stop = [self.timers.take(ClientTimer::Retransmit), timer_b];
            // Timer C starts with the first provisional, even a 100 that
            // comes after the per-try timer fired with nothing else to try:
            // with Timer B stopped it is all that ends the try. After that
            // only a provisional above 100 restarts it (§16.7 step 2), so a
            // backend repeating 100 cannot keep a try alive for ever.
            if first || code > 100 {
                timer_c_ms = Some(timers.timer_c_ms);
            }
        } else {
            // Timer E goes on at T2 (figure 6).
            self.interval_ms = timers.t2_ms;
        }
        if code > 100 {
            self.provisional = true;
        }
        let cancel_owed = self.cancel == CancelState::Pending || self.abandoned;
        Provisional {
            stop,
            timer_c_ms,
            send_cancel: cancel_owed && self.cancel != CancelState::Sent,
            // §16.7 step 3: a 100 is not forwarded; a try given up on
            // speaks no more to the caller.
            forward: !self.abandoned && code != 100,
        }
    }

    /// Timer `kind` of this transaction fired.
    pub fn on_timer(&mut self, kind: ClientTimer, timers: &TimerConfig) -> ClientTimerAction {
        if kind != ClientTimer::Linger {
            self.timers.take(kind);
        }
        match kind {
            ClientTimer::Retransmit => self.retransmit(timers),
            ClientTimer::Timeout => {
                let pending = matches!(self.state, ClientState::Calling | ClientState::Proceeding);
                ClientTimerAction::Expire {
                    failed: pending && !self.abandoned && !self.is_cancel,
                }
            }
            ClientTimer::Try if self.state == ClientState::Calling && !self.abandoned => {
                ClientTimerAction::TryExpired
            }
            ClientTimer::C if self.state == ClientState::Proceeding => ClientTimerAction::TimerC,
            ClientTimer::Try | ClientTimer::C => ClientTimerAction::Nothing,
            ClientTimer::Linger => ClientTimerAction::Release,
        }
    }

    /// Timer A (doubling) or E (doubling up to T2; T2 once Proceeding).
    fn retransmit(&mut self, timers: &TimerConfig) -> ClientTimerAction {
        let retransmit = match self.state {
            ClientState::Calling => true,
            ClientState::Proceeding => !self.invite,
            _ => false,
        };
        if !retransmit || self.abandoned {
            return ClientTimerAction::Nothing;
        }
        self.interval_ms = match (self.invite, self.state) {
            (true, _) => self.interval_ms.saturating_mul(2),
            (false, ClientState::Proceeding) => timers.t2_ms,
            (false, _) => self.interval_ms.saturating_mul(2).min(timers.t2_ms),
        };
        ClientTimerAction::Resend {
            after_ms: self.interval_ms,
        }
    }

    /// Asked to cancel this try (§9.1, §16.10): true when a CANCEL goes
    /// now; before any provisional it is only marked owed.
    pub fn on_cancel(&mut self) -> bool {
        match (self.state, self.cancel) {
            (ClientState::Proceeding, CancelState::None | CancelState::Pending) => {
                self.cancel = CancelState::Sent;
                true
            }
            (ClientState::Calling, CancelState::None) => {
                self.cancel = CancelState::Pending;
                false
            }
            _ => false,
        }
    }

    /// The try failed without a final response (timeout, ICMP, per-try
    /// timer) and its server transaction moves on: it stops
    /// retransmitting (the returned timer, to cancel); Timer B stays to
    /// bound its life.
    pub fn abandon(&mut self) -> Option<TimerId> {
        self.abandoned = true;
        self.timers.take(ClientTimer::Retransmit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(invite: bool) -> ClientTxn {
        ClientTxn {
            key: 7,
            server: Slot {
                index: 0,
                generation: 1,
            },
            invite,
            is_cancel: false,
            state: ClientState::Calling,
            to: Peer::udp("192.0.2.40:5060".parse().unwrap()),
            backend: Some(0),
            request: b"INVITE".to_vec(),
            ack: Vec::new(),
            branch_key: BranchKey::new(b"0123456789abcdef", b"fedcba9876543210"),
            provisional: false,
            cancel: CancelState::None,
            abandoned: false,
            interval_ms: 500,
            timers: ClientTimers::default(),
            sent_ms: 0,
        }
    }

    fn resends(client: &mut ClientTxn, count: usize) -> Vec<u32> {
        let timers = TimerConfig::default();
        (0..count)
            .map(
                |_| match client.on_timer(ClientTimer::Retransmit, &timers) {
                    ClientTimerAction::Resend { after_ms } => after_ms,
                    other => panic!("{other:?}"),
                },
            )
            .collect()
    }

    #[test]
    fn branch_key_halves_and_parse() {
        let key = BranchKey::new(b"00000000000000ff", b"0123456789abcdef");
        assert_eq!(key.as_bytes(), b"00000000000000ff.0123456789abcdef");
        assert_eq!(key.loop_part(), b"0123456789abcdef");
        assert_eq!(BranchKey::parse_id(key.as_bytes()), Some(255));
        let next = key.with_transaction(b"0000000000000100");
        assert_eq!(BranchKey::parse_id(next.as_bytes()), Some(256));
        assert_eq!(next.loop_part(), key.loop_part());
        assert_eq!(BranchKey::parse_id(b"00000000000000ff"), None);
        assert_eq!(
            BranchKey::parse_id(b"00000000000000ffx0123456789abcdef"),
            None
        );
        assert_eq!(
            BranchKey::parse_id(b"0000000000000zff.0123456789abcdef"),
            None
        );
    }

    #[test]
    fn timer_a_doubles_and_e_stops_at_t2() {
        assert_eq!(
            resends(&mut txn(true), 5),
            [1_000, 2_000, 4_000, 8_000, 16_000]
        );
        assert_eq!(
            resends(&mut txn(false), 5),
            [1_000, 2_000, 4_000, 4_000, 4_000]
        );
    }

    #[test]
    fn invite_provisional_stops_a_and_b_and_starts_c_once_per_ringing() {
        let timers = TimerConfig::default();
        let mut client = txn(true);
        let ClientResponse::Provisional(trying) = client.on_response(100, &timers) else {
            panic!()
        };
        assert_eq!(client.state, ClientState::Proceeding);
        assert_eq!(trying.timer_c_ms, Some(180_000), "the first, even a 100");
        assert!(!trying.forward && !trying.send_cancel);
        let ClientResponse::Provisional(again) = client.on_response(100, &timers) else {
            panic!()
        };
        assert_eq!(again.timer_c_ms, None, "a repeated 100 does not restart C");
        let ClientResponse::Provisional(ringing) = client.on_response(180, &timers) else {
            panic!()
        };
        assert_eq!(ringing.timer_c_ms, Some(180_000));
        assert!(ringing.forward && client.provisional);
        assert_eq!(
            client.on_timer(ClientTimer::Retransmit, &timers),
            ClientTimerAction::Nothing,
            "an INVITE stops retransmitting once Proceeding"
        );
        assert_eq!(
            client.on_timer(ClientTimer::C, &timers),
            ClientTimerAction::TimerC
        );
    }

    #[test]
    fn non_invite_provisional_moves_e_to_t2() {
        let timers = TimerConfig::default();
        let mut client = txn(false);
        let ClientResponse::Provisional(ringing) = client.on_response(180, &timers) else {
            panic!()
        };
        assert_eq!(ringing.timer_c_ms, None);
        assert_eq!(resends(&mut client, 2), [4_000, 4_000]);
    }

    #[test]
    fn finals_complete_or_accept_and_their_retransmissions_are_absorbed() {
        let timers = TimerConfig::default();
        let mut rejected = txn(true);
        assert_eq!(
            rejected.on_response(486, &timers),
            ClientResponse::Failure { linger_ms: 32_000 }
        );
        assert_eq!(rejected.state, ClientState::Completed);
        assert_eq!(
            rejected.on_response(486, &timers),
            ClientResponse::Retransmission { resend_ack: false },
            "no ACK written, none resent"
        );
        rejected.ack = b"ACK".to_vec();
        assert_eq!(
            rejected.on_response(486, &timers),
            ClientResponse::Retransmission { resend_ack: true }
        );
        let mut accepted = txn(true);
        assert_eq!(
            accepted.on_response(200, &timers),
            ClientResponse::Success { linger_ms: 32_000 }
        );
        assert!(accepted.request.is_empty());
        assert_eq!(
            accepted.on_response(200, &timers),
            ClientResponse::PassUpstream
        );
        assert_eq!(accepted.on_response(180, &timers), ClientResponse::Absorb);
        let mut register = txn(false);
        assert_eq!(
            register.on_response(200, &timers),
            ClientResponse::Success { linger_ms: 5_000 }
        );
        assert_eq!(register.state, ClientState::Completed);
    }

    #[test]
    fn cancel_before_a_provisional_is_owed_until_one_comes() {
        let timers = TimerConfig::default();
        let mut client = txn(true);
        assert!(!client.on_cancel());
        assert_eq!(client.cancel, CancelState::Pending);
        let ClientResponse::Provisional(ringing) = client.on_response(180, &timers) else {
            panic!()
        };
        assert!(ringing.send_cancel);
        assert!(client.on_cancel());
        assert_eq!(client.cancel, CancelState::Sent);
        assert!(!client.on_cancel(), "one CANCEL per try");
    }

    #[test]
    fn a_cancel_absorbs_its_answers_and_lingers_after_the_final() {
        let timers = TimerConfig::default();
        let mut cancel = txn(false);
        cancel.is_cancel = true;
        assert_eq!(cancel.on_response(100, &timers), ClientResponse::Absorb);
        assert_eq!(
            cancel.on_response(200, &timers),
            ClientResponse::CancelDone { linger_ms: 5_000 }
        );
        assert_eq!(
            cancel.on_timer(ClientTimer::Timeout, &timers),
            ClientTimerAction::Expire { failed: false },
            "a CANCEL's timeout is no backend failure"
        );
    }

    #[test]
    fn timeouts_and_the_per_try_timer_fail_only_a_live_try() {
        let timers = TimerConfig::default();
        let mut client = txn(true);
        assert_eq!(
            client.on_timer(ClientTimer::Try, &timers),
            ClientTimerAction::TryExpired
        );
        assert_eq!(
            client.on_timer(ClientTimer::Timeout, &timers),
            ClientTimerAction::Expire { failed: true }
        );
        assert_eq!(client.abandon(), None);
        assert!(client.abandoned);
        assert_eq!(
            client.on_timer(ClientTimer::Try, &timers),
            ClientTimerAction::Nothing
        );
        assert_eq!(
            client.on_timer(ClientTimer::Retransmit, &timers),
            ClientTimerAction::Nothing
        );
        assert_eq!(
            client.on_timer(ClientTimer::Timeout, &timers),
            ClientTimerAction::Expire { failed: false }
        );
        let ClientResponse::Provisional(late) = client.on_response(180, &timers) else {
            panic!()
        };
        assert!(
            late.send_cancel && !late.forward,
            "a late ring is cancelled"
        );
        assert_eq!(
            client.on_timer(ClientTimer::Linger, &timers),
            ClientTimerAction::Release
        );
    }
}
