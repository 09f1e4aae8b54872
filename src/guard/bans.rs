//! The ban table every shard shares: when one shard bans a source, the
//! others drop it from their next datagram on.
//!
//! Fixed size, lock-free, written rarely (a ban, its sweep) and read per
//! datagram: one 64-byte line of [`WAYS`] `AtomicU64`s per lookup, loaded
//! relaxed. Each word is a whole ban, so a reader never sees half of one:
//!
//! ```text
//!   63                     24 23              0
//!   ┌────────────────────────┬────────────────┐
//!   │ tag: 40 bits of hash   │ until (s) mod 2^24 │   0 = free
//!   └────────────────────────┴────────────────┘
//! ```
//!
//! The line comes from the low bits of a keyed hash of the address, the
//! tag from 40 others (its lowest bit forced to 1, so a ban is never 0);
//! two addresses collide only if 52 bits of a hash keyed at start-up
//! agree. `until` wraps every 194 days, so a ban is active while
//! `until - now` (mod 2^24) lies in `1..=BAN_S_MAX + 1`, and the sweep
//! clears ended bans long before a wrap could revive them.
//!
//! A full line takes a new ban in place of the one that ends first: that
//! ban is cut short, and its source, still over its rate, is banned again
//! by its next requests.

use std::sync::atomic::{AtomicU64, Ordering};

use super::Key;

/// Bans one line holds: 8 × 8 bytes, one cache line.
pub const WAYS: usize = 8;

/// Bans the table holds (8,192 lines, 512 KiB).
pub const SLOTS: usize = 65_536;

/// The longest ban: far below the 2^23 s the wrapping expiry can tell
/// apart from an ended one.
pub const BAN_S_MAX: u32 = 86_400;

const UNTIL_BITS: u32 = 24;
const UNTIL_MASK: u64 = (1 << UNTIL_BITS) - 1;

#[repr(align(64))]
#[derive(Default)]
struct Line([AtomicU64; WAYS]);

/// What [`BanTable::ban`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ban {
    /// The source is banned now, by this call.
    Started,
    /// Another shard banned it first.
    AlreadyBanned,
    /// Another shard wrote the chosen slot at the same moment; the
    /// source's next request over its rate tries again.
    Raced,
}

/// The shared bans.
pub struct BanTable {
    lines: Box<[Line]>,
    seed: u64,
}

impl BanTable {
    /// An empty table of [`SLOTS`] bans; `seed` keys its hash.
    pub fn new(seed: u64) -> BanTable {
        BanTable::with_slots(SLOTS, seed)
    }

    fn with_slots(slots: usize, seed: u64) -> BanTable {
        let lines = (slots / WAYS).max(1).next_power_of_two();
        BanTable {
            lines: (0..lines).map(|_| Line::default()).collect(),
            seed,
        }
    }

    /// The source's line and the tag its bans carry.
    fn place(&self, key: Key) -> (&Line, u64) {
        let hash = super::hash(key, self.seed);
        let line = &self.lines[hash as usize & (self.lines.len() - 1)];
        let tag = (hash >> 24) | 1;
        (line, tag)
    }

    /// Whether the source is banned at `now_s`. One relaxed load per way of
    /// one line: the per-datagram cost when flood protection is on.
    pub fn is_banned(&self, key: Key, now_s: u32) -> bool {
        let (line, tag) = self.place(key);
        line.0.iter().any(|word| {
            let word = word.load(Ordering::Relaxed);
            word >> UNTIL_BITS == tag && active(word, now_s)
        })
    }

    /// Bans the source from `now_s` for `ban_s` seconds: until the start
    /// of second `now_s + ban_s + 1`, so a ban lasts between `ban_s` and
    /// `ban_s + 1` seconds whatever the fraction of `now_s` it began at.
    pub fn ban(&self, key: Key, now_s: u32, ban_s: u32) -> Ban {
        debug_assert!((1..=BAN_S_MAX).contains(&ban_s));
        let ban_s = ban_s.clamp(1, BAN_S_MAX);
        let (line, tag) = self.place(key);
        let until = (u64::from(now_s) + u64::from(ban_s) + 1) & UNTIL_MASK;
        let words: [u64; WAYS] = std::array::from_fn(|w| line.0[w].load(Ordering::Relaxed));
        if words
            .iter()
            .any(|&w| w >> UNTIL_BITS == tag && active(w, now_s))
        {
            return Ban::AlreadyBanned;
        }
        // A free or ended way, else the ban that ends first (the first of
        // equals): deterministic.
        let way = words
            .iter()
            .position(|&w| !active(w, now_s))
            .unwrap_or_else(|| {
                (0..WAYS)
                    .min_by_key(|&w| (remaining(words[w], now_s), w))
                    .unwrap_or(0)
            });
        match line.0[way].compare_exchange(
            words[way],
            tag << UNTIL_BITS | until,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => Ban::Started,
            Err(_) => Ban::Raced,
        }
    }

    /// Clears every ban that has ended; returns how many. Run about once a
    /// second by one shard, it keeps ended bans from lingering until the
    /// expiry wraps.
    pub fn sweep(&self, now_s: u32) -> usize {
        let mut cleared = 0;
        for word in self.lines.iter().flat_map(|l| l.0.iter()) {
            let value = word.load(Ordering::Relaxed);
            if value != 0
                && !active(value, now_s)
                && word
                    .compare_exchange(value, 0, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                cleared += 1;
            }
        }
        cleared
    }

    /// Bans in force at `now_s` (for the `flood_bans_active` gauge).
    pub fn active(&self, now_s: u32) -> usize {
        self.lines
            .iter()
            .flat_map(|l| l.0.iter())
            .filter(|w| active(w.load(Ordering::Relaxed), now_s))
            .count()
    }
}

/// Seconds left of a ban (mod 2^24); 0 for a free word.
fn remaining(word: u64, now_s: u32) -> u64 {
    match word {
        0 => 0,
        _ => (word & UNTIL_MASK).wrapping_sub(u64::from(now_s)) & UNTIL_MASK,
    }
}

fn active(word: u64, now_s: u32) -> bool {
    (1..=u64::from(BAN_S_MAX) + 1).contains(&remaining(word, now_s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const A: Key = 0xffff_0a00_0001;
    const B: Key = 0xffff_0a00_0002;

    #[test]
    fn a_ban_lasts_ban_s_to_ban_s_plus_one_seconds() {
        let bans = BanTable::new(1);
        assert!(!bans.is_banned(A, 100));
        assert_eq!(bans.ban(A, 100, 2), Ban::Started);
        assert!(bans.is_banned(A, 100));
        assert!(bans.is_banned(A, 102), "still in its third second");
        assert!(!bans.is_banned(A, 103), "over at the start of second 103");
        assert!(!bans.is_banned(B, 100), "only that source");
    }

    #[test]
    fn a_second_ban_of_a_banned_source_is_not_a_new_one() {
        let bans = BanTable::new(1);
        assert_eq!(bans.ban(A, 10, 60), Ban::Started);
        assert_eq!(bans.ban(A, 11, 60), Ban::AlreadyBanned);
        assert_eq!(bans.active(11), 1);
        assert_eq!(bans.ban(A, 71, 60), Ban::Started, "after it ended");
        assert_eq!(bans.active(71), 1, "in the ended one's place");
    }

    #[test]
    fn the_sweep_clears_ended_bans_and_counts_active_ones() {
        let bans = BanTable::new(3);
        for i in 0..100u128 {
            assert_eq!(bans.ban(A + (i << 32), 0, 1 + (i % 2) as u32), Ban::Started);
        }
        assert_eq!(bans.active(0), 100);
        assert_eq!(bans.sweep(1), 0, "none has ended");
        assert_eq!(bans.sweep(2), 50, "the 1 s bans end at 2");
        assert_eq!(bans.active(2), 50);
        assert_eq!(bans.sweep(3), 50);
        assert_eq!(bans.active(3), 0);
        assert_eq!(bans.sweep(3), 0);
    }

    #[test]
    fn the_expiry_wraps_without_reviving_old_bans() {
        let bans = BanTable::new(5);
        let near_wrap = (1 << UNTIL_BITS) - 2;
        assert_eq!(bans.ban(A, near_wrap, 10), Ban::Started);
        assert!(bans.is_banned(A, near_wrap + 5), "across the wrap");
        assert!(!bans.is_banned(A, near_wrap + 11));
        // Long after (more than 2^23 s), an unswept word reads as ended.
        assert!(!bans.is_banned(A, near_wrap + (1 << 23)));
        assert_eq!(bans.sweep(near_wrap + 11), 1);
    }

    #[test]
    fn a_full_line_cuts_short_the_ban_that_ends_first() {
        // One line: every source shares it.
        let bans = BanTable::with_slots(WAYS, 9);
        for i in 0..WAYS as u128 {
            let ban_s = 10 + i as u32;
            assert_eq!(bans.ban(A + (i << 40), 0, ban_s), Ban::Started);
        }
        assert_eq!(bans.active(0), WAYS);
        assert_eq!(bans.ban(B, 0, 100), Ban::Started);
        assert_eq!(bans.active(0), WAYS, "bounded");
        assert!(bans.is_banned(B, 50));
        assert!(!bans.is_banned(A, 0), "the 10 s ban, first to end, is gone");
        assert!(bans.is_banned(A + (1 << 40), 0), "the 11 s one stays");
    }

    #[test]
    fn shards_on_threads_see_each_others_bans() {
        let bans = Arc::new(BanTable::new(11));
        let writers: Vec<_> = (0..4u128)
            .map(|t| {
                let bans = bans.clone();
                std::thread::spawn(move || {
                    (0..1000u128)
                        .filter(|i| bans.ban(A + (t * 1000 + i) * 256, 5, 60) == Ban::Started)
                        .count()
                })
            })
            .collect();
        let started: usize = writers.into_iter().map(|w| w.join().unwrap()).sum();
        // Distinct sources: each ban started once (Raced only if two
        // threads took one slot at once, then retried by the caller).
        assert_eq!(bans.active(5), started);
        assert!(started > 3900, "{started}");
        let seen = (0..4000u128)
            .filter(|i| bans.is_banned(A + i * 256, 6))
            .count();
        assert_eq!(seen, started);
        // All threads banning one source: exactly one ban starts.
        let racers: Vec<_> = (0..4)
            .map(|_| {
                let bans = bans.clone();
                std::thread::spawn(move || bans.ban(B, 5, 60))
            })
            .collect();
        let outcomes: Vec<Ban> = racers.into_iter().map(|r| r.join().unwrap()).collect();
        // One compare-and-swap wins; the others find it or lose the race.
        assert_eq!(
            outcomes.iter().filter(|&&o| o == Ban::Started).count(),
            1,
            "{outcomes:?}"
        );
        assert!(bans.is_banned(B, 5));
    }
}
