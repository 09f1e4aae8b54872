//! What the gateway knows about each backend right now: its state, its
//! active dialogs and its latency. Shared by every shard (which read it on
//! each pick and count dialogs) and the control thread (probes and the
//! admin API write the state), so every field is a relaxed atomic: a pick
//! that sees a change one message late is harmless, and no lock is taken.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;

/// A backend's state. Probes move it between `Up`, `Probing` and `Down`;
/// only the admin sets and clears `Draining`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Answering; takes every request.
    Up = 0,
    /// Answering probes again after `Down`, but not yet enough of them in
    /// a row to be trusted with new calls. It may still hold dialogs from
    /// before it went down, so requests that are not new dialogs go there.
    Probing = 1,
    /// Not answering; takes nothing.
    Down = 2,
    /// Being emptied by the admin: no new dialogs, but requests of the
    /// dialogs it already holds keep flowing until they end.
    Draining = 3,
}

impl State {
    /// Whether a member in this state may take a request that starts a new
    /// dialog (`new_dialog`) or one that does not.
    pub fn takes(self, new_dialog: bool) -> bool {
        match self {
            State::Up => true,
            State::Probing | State::Draining => !new_dialog,
            State::Down => false,
        }
    }

    fn from_u8(value: u8) -> State {
        match value {
            0 => State::Up,
            1 => State::Probing,
            3 => State::Draining,
            // Only `set_state` writes the byte; anything else would be a
            // bug, and taking no traffic is the safe reading of it.
            _ => State::Down,
        }
    }
}

/// One backend's live numbers. Aligned to a cache line so that shards
/// counting dialogs on one backend do not slow the reads of its neighbours.
#[derive(Debug)]
#[repr(align(64))]
pub struct MemberHealth {
    state: AtomicU8,
    active_dialogs: AtomicU32,
    /// Microseconds; 0 means no sample yet.
    latency_ewma_us: AtomicU32,
}

/// Each new round trip moves the average by 1/8 of its difference, as
/// TCP's smoothed RTT does (RFC 6298): a slow answer shows within a few
/// calls, one outlier does not dominate.
const LATENCY_EWMA_SHIFT: u32 = 3;

impl Default for MemberHealth {
    fn default() -> Self {
        MemberHealth::new()
    }
}

impl MemberHealth {
    /// A backend starts `Up`: until probes run, a configured member is
    /// trusted, as the `[backends]` pool always was.
    pub fn new() -> Self {
        MemberHealth {
            state: AtomicU8::new(State::Up as u8),
            active_dialogs: AtomicU32::new(0),
            latency_ewma_us: AtomicU32::new(0),
        }
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Relaxed))
    }

    pub fn set_state(&self, state: State) {
        self.state.store(state as u8, Relaxed);
    }

    pub fn active_dialogs(&self) -> u32 {
        self.active_dialogs.load(Relaxed)
    }

    /// Counts a dialog established on this backend until the returned
    /// guard is dropped (when the dialog ends, or its record is freed), so
    /// a count cannot leak and survives a reload that keeps the backend.
    pub fn dialog_started(self: &Arc<Self>) -> ActiveDialog {
        self.active_dialogs.fetch_add(1, Relaxed);
        ActiveDialog(Arc::clone(self))
    }

    /// The smoothed round trip in microseconds, `None` before the first
    /// sample.
    pub fn latency_ewma_us(&self) -> Option<u32> {
        match self.latency_ewma_us.load(Relaxed) {
            0 => None,
            us => Some(us),
        }
    }

    /// Adds a round trip (a probe's, or a request's to its first response).
    pub fn observe(&self, rtt_us: u64) {
        // 0 is the "no sample" mark; a sub-microsecond trip counts as 1.
        let sample = rtt_us.clamp(1, u64::from(u32::MAX)) as i64;
        // A compare-exchange loop rather than load + store: shards observe
        // the same backend at once, and a lost sample costs more to
        // explain than the retry costs to run.
        let _ = self.latency_ewma_us.fetch_update(Relaxed, Relaxed, |old| {
            let next = if old == 0 {
                sample
            } else {
                let old = i64::from(old);
                old + ((sample - old) >> LATENCY_EWMA_SHIFT)
            };
            Some(next.clamp(1, i64::from(u32::MAX)) as u32)
        });
    }
}

/// One dialog counted on a backend; dropping it uncounts it.
#[derive(Debug)]
pub struct ActiveDialog(Arc<MemberHealth>);

impl Drop for ActiveDialog {
    fn drop(&mut self) {
        let before = self.0.active_dialogs.fetch_sub(1, Relaxed);
        debug_assert!(before > 0, "a dialog was uncounted twice");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_say_what_they_take() {
        let health = MemberHealth::new();
        assert_eq!(health.state(), State::Up);
        for state in [State::Up, State::Probing, State::Down, State::Draining] {
            health.set_state(state);
            assert_eq!(health.state(), state);
        }
        let takes: Vec<(bool, bool)> = [State::Up, State::Probing, State::Down, State::Draining]
            .iter()
            .map(|s| (s.takes(true), s.takes(false)))
            .collect();
        assert_eq!(
            takes,
            [(true, true), (false, true), (false, false), (false, true)]
        );
    }

    #[test]
    fn dialogs_are_counted_until_their_guard_drops() {
        let health = Arc::new(MemberHealth::new());
        let first = health.dialog_started();
        let second = health.dialog_started();
        assert_eq!(health.active_dialogs(), 2);
        drop(first);
        assert_eq!(health.active_dialogs(), 1);
        drop(second);
        assert_eq!(health.active_dialogs(), 0);
    }

    #[test]
    fn latency_starts_at_the_first_sample_then_moves_an_eighth() {
        let health = MemberHealth::new();
        assert_eq!(health.latency_ewma_us(), None);
        health.observe(8_000);
        assert_eq!(health.latency_ewma_us(), Some(8_000));
        health.observe(16_000);
        assert_eq!(health.latency_ewma_us(), Some(9_000));
        health.observe(1_000);
        assert_eq!(health.latency_ewma_us(), Some(8_000));
        // A zero round trip is still a sample, not "none".
        let fast = MemberHealth::new();
        fast.observe(0);
        assert_eq!(fast.latency_ewma_us(), Some(1));
        fast.observe(u64::MAX);
        assert!(fast.latency_ewma_us().is_some_and(|us| us > 1));
    }
}
