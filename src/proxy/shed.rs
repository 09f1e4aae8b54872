//! In-kernel shedding's policy: what share of new INVITEs and REGISTERs
//! the steering program lets reach an overloaded shard, window by window.
//!
//! The shard's core admits a share of new requests ([`super::overload`]),
//! answers 503 to some of the rest and drops the others; each window the
//! kernel takes over what the core dropped: the share that reaches the
//! shard is cut by the fraction the core dropped, and grows by a tenth
//! when it dropped none, so that the shard reads about what it admits or
//! answers. A receive buffer past its high mark, or one the kernel dropped
//! at, halves the share: those drops hit admitted calls too. Out of
//! overload the share comes back by a quarter a window, not at once, so
//! that the backlog of retransmissions does not overflow the buffer at the
//! next window.
//!
//! No I/O here: the shard reads the socket and sets the program's map.

/// The listen socket's receive buffer over a window.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Buffer {
    /// A stale window: the shard slept, nothing loads it.
    Idle,
    /// Under its high mark, and nothing dropped at it.
    Fine,
    /// Past its high mark, or the kernel dropped at it.
    Full,
}

impl Buffer {
    /// The buffer at the end of a window: `None` for a stale one, else its
    /// fill (0.0 to 1.0) and whether the kernel dropped at it in the
    /// window; `high` is the overload queue's high mark.
    pub fn at_window_end(window: Option<(f64, bool)>, high: f64) -> Buffer {
        match window {
            None => Buffer::Idle,
            Some((fill, dropped)) if dropped || fill > high => Buffer::Full,
            Some(_) => Buffer::Fine,
        }
    }
}

/// The least share of new requests the kernel passes to an overloaded
/// shard.
pub const KERNEL_PASS_MIN: f64 = 0.02;

/// The share to pass in the next window, from the share `passed` in the
/// window that ended, whether the shard is `overloaded`, the new requests
/// the core saw and dropped in it, and the listen socket's `buffer`.
pub fn next_pass_share(
    passed: f64,
    overloaded: bool,
    seen: u64,
    dropped: u64,
    buffer: Buffer,
) -> f64 {
    let passed = match buffer {
        Buffer::Idle => 1.0,
        Buffer::Full => passed * 0.5,
        Buffer::Fine if !overloaded => passed * 1.25,
        Buffer::Fine if seen == 0 => passed,
        Buffer::Fine if dropped == 0 => passed * 1.1,
        Buffer::Fine => passed * (1.0 - dropped.min(seen) as f64 / seen as f64),
    };
    // Always pass a few, so that the core sees the demand and answers
    // some of it with 503.
    passed.clamp(KERNEL_PASS_MIN, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_takes_over_what_the_core_dropped() {
        // The core dropped 3 in 4 of what reached it: a quarter passes.
        let share = next_pass_share(1.0, true, 400, 300, Buffer::Fine);
        assert!((share - 0.25).abs() < 1e-9, "{share}");
        // Then it drops none: the share grows a tenth a window.
        let grown = next_pass_share(share, true, 100, 0, Buffer::Fine);
        assert!((grown - 0.275).abs() < 1e-9, "{grown}");
        // Nothing seen: unchanged.
        assert_eq!(next_pass_share(0.5, true, 0, 0, Buffer::Fine), 0.5);
        // Never below the floor, even when the core dropped everything.
        assert_eq!(
            next_pass_share(0.03, true, 100, 100, Buffer::Fine),
            KERNEL_PASS_MIN
        );
    }

    #[test]
    fn a_full_buffer_halves_and_recovery_is_gradual() {
        assert_eq!(next_pass_share(0.8, true, 100, 0, Buffer::Full), 0.4);
        assert_eq!(next_pass_share(0.8, false, 0, 0, Buffer::Full), 0.4);
        // Out of overload: a quarter more a window, up to all of it.
        assert_eq!(next_pass_share(0.4, false, 100, 0, Buffer::Fine), 0.5);
        assert_eq!(next_pass_share(0.9, false, 100, 0, Buffer::Fine), 1.0);
        let mut share = KERNEL_PASS_MIN;
        let mut windows = 0;
        while share < 1.0 {
            share = next_pass_share(share, false, 0, 0, Buffer::Fine);
            windows += 1;
        }
        assert!((15..=20).contains(&windows), "{windows}");
        // Idle: everything passes at once.
        assert_eq!(next_pass_share(0.1, true, 0, 0, Buffer::Idle), 1.0);
    }

    #[test]
    fn the_buffer_is_full_past_its_mark_or_when_the_kernel_dropped() {
        assert_eq!(Buffer::at_window_end(None, 0.7), Buffer::Idle);
        assert_eq!(Buffer::at_window_end(Some((0.5, false)), 0.7), Buffer::Fine);
        assert_eq!(Buffer::at_window_end(Some((0.7, false)), 0.7), Buffer::Fine);
        assert_eq!(
            Buffer::at_window_end(Some((0.71, false)), 0.7),
            Buffer::Full
        );
        assert_eq!(Buffer::at_window_end(Some((0.1, true)), 0.7), Buffer::Full);
    }
}
