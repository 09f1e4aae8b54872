//! The virtual clock: a test's time is a [`Millis`] that moves only when
//! the test says, the way a shard's loop moves: it sleeps until the next
//! timer deadline, runs the timers due, and sleeps again. The core never
//! reads a clock, so this is all a test needs to be deterministic.
//!
//! ```ignore
//! let end = now + ms;
//! while let Some(at) = clock::step_toward(&mut now, end, proxy.next_deadline()) {
//!     proxy.on_timers(at, &mut outbox);
//! }
//! // now == end
//! ```

use crate::txn::Millis;

/// One move of the clock `now` toward `end`: to `deadline` when that
/// comes first, returning the time to run the timers at (never earlier
/// than `now`: a deadline already past runs now); else to `end`, with
/// `None`: nothing more is due on the way.
#[inline]
pub fn step_toward(now: &mut Millis, end: Millis, deadline: Option<Millis>) -> Option<Millis> {
    match deadline.filter(|&d| d <= end) {
        Some(deadline) => {
            *now = (*now).max(deadline);
            Some(*now)
        }
        None => {
            *now = end;
            None
        }
    }
}
