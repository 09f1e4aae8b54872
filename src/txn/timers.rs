//! The timers a transaction holds, in a table indexed by their kind: the
//! wheel owns the deadlines, the table the ids to cancel them by.

use std::marker::PhantomData;

use super::wheel::TimerId;
use super::Slot;

/// A kind of timer, and the table entry it lives in. Kinds that never run
/// at once share an entry (a retransmission timer and the wait that
/// follows the final response).
pub trait TimerKind: Copy {
    /// The entry of this kind in its transaction's table.
    fn index(self) -> usize;
}

/// A server transaction's timers (RFC 3261 figures 7 and 8, RFC 6026).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerTimer {
    /// G: retransmit the final response.
    Retransmit,
    /// H: no ACK came.
    Timeout,
    /// I, J or L: the wait is over; shares G's entry.
    Linger,
}

impl TimerKind for ServerTimer {
    #[inline]
    fn index(self) -> usize {
        match self {
            ServerTimer::Retransmit | ServerTimer::Linger => 0,
            ServerTimer::Timeout => 1,
        }
    }
}

/// A client transaction's timers (RFC 3261 figures 5 and 6, §16.6 step
/// 11, RFC 6026).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientTimer {
    /// A or E: retransmit the request.
    Retransmit,
    /// B or F: no final response; after our CANCEL, its 64·T1 wait.
    Timeout,
    /// The per-try timer of an INVITE: no response at all yet.
    Try,
    /// Timer C: no final after the last provisional; shares the per-try
    /// timer's entry.
    C,
    /// D, K or M: the wait after a final response is over; shares the
    /// retransmission timer's entry.
    Linger,
}

impl TimerKind for ClientTimer {
    #[inline]
    fn index(self) -> usize {
        match self {
            ClientTimer::Retransmit | ClientTimer::Linger => 0,
            ClientTimer::Timeout => 1,
            ClientTimer::Try | ClientTimer::C => 2,
        }
    }
}

impl ServerTimer {
    /// What the wheel holds for this timer of server transaction `slot`.
    pub fn of(self, slot: Slot) -> Timer {
        match self {
            ServerTimer::Retransmit => Timer::ServerRetransmit(slot),
            ServerTimer::Timeout => Timer::ServerTimeout(slot),
            ServerTimer::Linger => Timer::ServerLinger(slot),
        }
    }
}

impl ClientTimer {
    /// What the wheel holds for this timer of client transaction `slot`.
    pub fn of(self, slot: Slot) -> Timer {
        match self {
            ClientTimer::Retransmit => Timer::ClientRetransmit(slot),
            ClientTimer::Timeout => Timer::ClientTimeout(slot),
            ClientTimer::Try => Timer::ClientTry(slot),
            ClientTimer::C => Timer::ClientC(slot),
            ClientTimer::Linger => Timer::ClientLinger(slot),
        }
    }
}

/// Which timer fired, and for whom: what the wheel holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// A or E: retransmit the request.
    ClientRetransmit(Slot),
    /// B or F: no final response.
    ClientTimeout(Slot),
    /// The per-try timer of an INVITE: no response at all yet.
    ClientTry(Slot),
    /// Timer C.
    ClientC(Slot),
    /// D, K or M: the wait after a final response is over.
    ClientLinger(Slot),
    /// G: retransmit the final response.
    ServerRetransmit(Slot),
    /// H: no ACK came.
    ServerTimeout(Slot),
    /// I, J or L: the wait is over.
    ServerLinger(Slot),
}

/// The ids of the timers one transaction has armed, one entry per kind
/// (kinds that never run at once share one).
#[derive(Debug)]
pub struct TimerTable<K, const N: usize> {
    ids: [Option<TimerId>; N],
    kind: PhantomData<K>,
}

impl<K, const N: usize> Default for TimerTable<K, N> {
    fn default() -> Self {
        TimerTable {
            ids: [None; N],
            kind: PhantomData,
        }
    }
}

impl<K: TimerKind, const N: usize> TimerTable<K, N> {
    /// Forgets the timer of `kind` (it fired, or is about to be
    /// cancelled), returning its id.
    #[inline]
    pub fn take(&mut self, kind: K) -> Option<TimerId> {
        self.ids[kind.index()].take()
    }

    /// Records `id` as the timer of `kind`, returning the one it replaces.
    #[inline]
    pub fn replace(&mut self, kind: K, id: Option<TimerId>) -> Option<TimerId> {
        std::mem::replace(&mut self.ids[kind.index()], id)
    }

    /// Whether a timer of `kind` (or of a kind sharing its entry) is armed.
    pub fn is_armed(&self, kind: K) -> bool {
        self.ids[kind.index()].is_some()
    }

    /// Forgets every timer, returning their ids to cancel.
    #[inline]
    pub fn take_all(&mut self) -> [Option<TimerId>; N] {
        std::mem::replace(&mut self.ids, [None; N])
    }
}

/// Timers a server transaction holds at most (G and H).
pub const SERVER_TIMERS: usize = 2;
/// Timers a client transaction holds at most (A, B and the per-try timer).
pub const CLIENT_TIMERS: usize = 3;

/// A server transaction's table.
pub type ServerTimers = TimerTable<ServerTimer, SERVER_TIMERS>;
/// A client transaction's table.
pub type ClientTimers = TimerTable<ClientTimer, CLIENT_TIMERS>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::wheel::Wheel;

    #[test]
    fn kinds_that_never_run_at_once_share_an_entry() {
        let mut wheel = Wheel::with_capacity(0, 4);
        let slot = Slot {
            index: 0,
            generation: 1,
        };
        let mut table = ClientTimers::default();
        let a = wheel.insert(500, ClientTimer::Retransmit.of(slot)).ok();
        let t = wheel.insert(2_000, ClientTimer::Try.of(slot)).ok();
        assert_eq!(table.replace(ClientTimer::Retransmit, a), None);
        assert_eq!(table.replace(ClientTimer::Try, t), None);
        assert!(table.is_armed(ClientTimer::Linger), "D waits where A ran");
        assert!(table.is_armed(ClientTimer::C), "C runs where the try ran");
        assert!(!table.is_armed(ClientTimer::Timeout));
        assert_eq!(table.take(ClientTimer::C), t);
        assert_eq!(table.take_all(), [a, None, None]);
        assert_eq!(table.take_all(), [None; 3]);
    }

    #[test]
    fn each_kind_names_its_wheel_entry() {
        let slot = Slot {
            index: 3,
            generation: 9,
        };
        assert_eq!(ClientTimer::C.of(slot), Timer::ClientC(slot));
        assert_eq!(ClientTimer::Linger.of(slot), Timer::ClientLinger(slot));
        assert_eq!(ServerTimer::Timeout.of(slot), Timer::ServerTimeout(slot));
        assert_eq!(ServerTimer::Linger.index(), ServerTimer::Retransmit.index());
        assert_ne!(
            ServerTimer::Timeout.index(),
            ServerTimer::Retransmit.index()
        );
    }
}
