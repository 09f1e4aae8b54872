//! Per-source token buckets for one shard: a fixed, set-associative table
//! allocated at start-up that never grows.
//!
//! **The spread.** The shards steer by Call-ID hash, so one source's
//! requests reach all N shards in about equal shares, and each shard sees
//! only its share. Each shard's bucket for a source therefore refills at
//! `requests_per_second / N` and holds `burst / N`: together the N
//! buckets allow the configured rate and burst. The assumption is an even
//! spread; over a few requests the hash is uneven, which the burst absorbs
//! (so set it well above a legitimate peer's peaks).
//!
//! **Units.** Tokens are counted in units of 1 / (1000 × N) of a request,
//! so that every quantity is an exact integer: a millisecond refills
//! `requests_per_second` units, a request costs `1000 × N`, and a bucket
//! holds `burst × 1000`.
//!
//! **Bounded.** `sources_max` slots (a power of two), in sets of
//! [`WAYS`]. A source takes a free slot of its set, else the one seen
//! longest ago (ties: the lowest slot). An evicted source starts again with
//! a full bucket, so eviction can only forgive a source, never ban one.

use super::Key;

/// Slots per set: a source lives in one of these, found by a short scan.
pub const WAYS: usize = 8;

/// The least `sources_max`: one set.
pub const SOURCES_MIN: u32 = WAYS as u32;

/// The most `sources_max`: 16 Mi slots of 32 bytes (512 MiB per shard) is
/// already past any sensible table.
pub const SOURCES_MAX: u32 = 1 << 24;

/// Flood protection's settings, as the configuration gives them (for all
/// shards together).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FloodConfig {
    /// Off by default: a carrier's upstream SBC sends every call from one
    /// address, and a ban that catches it loses calls. Turn it on with
    /// thresholds above the busiest legitimate peer.
    pub enabled: bool,
    /// A source's sustained request rate, all shards together.
    pub requests_per_second: u32,
    /// The requests a source may send at once above the rate.
    pub burst: u32,
    /// How long a source over its rate is banned.
    pub ban_s: u32,
    /// Sources each shard tracks (rounded up to a power of two).
    pub sources_max: u32,
}

impl Default for FloodConfig {
    fn default() -> Self {
        FloodConfig {
            enabled: false,
            requests_per_second: 1000,
            burst: 2000,
            ban_s: 60,
            sources_max: 65_536,
        }
    }
}

/// One source's bucket. 32 bytes; `key == 0` (`::`, never a source) is a
/// free slot.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    key: Key,
    /// In units (see the module's doc).
    tokens: u64,
    /// When the bucket was last refilled (ms): also its age for eviction.
    seen_ms: u64,
}

/// A shard's buckets.
pub struct Buckets {
    slots: Box<[Slot]>,
    /// `sets - 1`: sets are a power of two.
    set_mask: usize,
    seed: u64,
    /// Units a millisecond adds (`requests_per_second`).
    refill_per_ms: u64,
    /// Units a request takes (`1000 × shards`).
    cost: u64,
    /// Units a bucket holds (`burst × 1000`, at least one request).
    capacity: u64,
    /// Slots in use.
    sources: u64,
    /// Sources that lost their slot to another.
    evictions: u64,
}

/// What [`Buckets::take`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// The source had a request's worth of tokens: it is taken.
    Taken,
    /// The source's bucket is empty.
    Empty,
}

impl Buckets {
    /// A table for one of `shards` shards, all its slots written now.
    pub fn new(config: &FloodConfig, shards: usize, seed: u64) -> Buckets {
        let slots =
            (config.sources_max.clamp(SOURCES_MIN, SOURCES_MAX) as usize).next_power_of_two();
        let cost = 1000 * shards.max(1) as u64;
        Buckets {
            slots: vec![Slot::default(); slots].into_boxed_slice(),
            set_mask: slots / WAYS - 1,
            seed,
            refill_per_ms: u64::from(config.requests_per_second),
            cost,
            // A share smaller than one request would refuse every request:
            // with more shards than `burst`, each still holds one.
            capacity: (u64::from(config.burst) * 1000).max(cost),
            sources: 0,
            evictions: 0,
        }
    }

    /// Refills the source's bucket to `now_ms` and takes one request from
    /// it, if it holds one. A source not in the table starts full.
    pub fn take(&mut self, key: Key, now_ms: u64) -> Take {
        let (refill_per_ms, capacity, cost) = (self.refill_per_ms, self.capacity, self.cost);
        let slot = self.find_or_insert(key, now_ms);
        let elapsed = now_ms.saturating_sub(slot.seen_ms);
        slot.tokens = slot
            .tokens
            .saturating_add(elapsed.saturating_mul(refill_per_ms))
            .min(capacity);
        slot.seen_ms = slot.seen_ms.max(now_ms);
        match slot.tokens.checked_sub(cost) {
            Some(left) => {
                slot.tokens = left;
                Take::Taken
            }
            None => Take::Empty,
        }
    }

    /// Sources in the table now.
    pub fn sources(&self) -> u64 {
        self.sources
    }

    /// Sources evicted so far to make room for others.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Slots the table holds (`sources_max` rounded up).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    fn find_or_insert(&mut self, key: Key, now_ms: u64) -> &mut Slot {
        let set = (super::hash(key, self.seed) as usize & self.set_mask) * WAYS;
        let ways = &self.slots[set..set + WAYS];
        let found = ways.iter().position(|s| s.key == key);
        let index = match found {
            Some(way) => way,
            None => {
                // A free way, else the one seen longest ago (the first of
                // equals): deterministic, and a source just seen stays.
                let free = ways.iter().position(|s| s.key == 0);
                let way = free.unwrap_or_else(|| {
                    (0..WAYS).min_by_key(|&w| (ways[w].seen_ms, w)).unwrap_or(0)
                });
                match free {
                    Some(_) => self.sources += 1,
                    None => self.evictions += 1,
                }
                self.slots[set + way] = Slot {
                    key,
                    tokens: self.capacity,
                    seen_ms: now_ms,
                };
                way
            }
        };
        &mut self.slots[set + index]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(rate: u32, burst: u32, sources_max: u32) -> FloodConfig {
        FloodConfig {
            enabled: true,
            requests_per_second: rate,
            burst,
            ban_s: 60,
            sources_max,
        }
    }

    /// Requests taken from a fresh bucket at one instant until it is empty.
    fn drain(buckets: &mut Buckets, key: Key, now_ms: u64) -> u32 {
        let mut taken = 0;
        while buckets.take(key, now_ms) == Take::Taken {
            taken += 1;
            assert!(taken < 1_000_000, "the bucket never empties");
        }
        taken
    }

    #[test]
    fn a_fresh_source_gets_the_burst_then_the_rate() {
        let mut b = Buckets::new(&config(100, 20, 64), 1, 7);
        assert_eq!(drain(&mut b, 1, 1_000), 20, "the burst at once");
        // 100 per second is one request per 10 ms.
        assert_eq!(b.take(1, 1_009), Take::Empty, "9 ms: not yet a token");
        assert_eq!(b.take(1, 1_010), Take::Taken, "10 ms: one");
        assert_eq!(b.take(1, 1_010), Take::Empty);
        let taken = (1_011..=1_510)
            .filter(|&ms| b.take(1, ms) == Take::Taken)
            .count();
        assert_eq!(taken, 50, "half a second, asked every ms: 50");
        // A long quiet spell refills to the burst, not past it.
        assert_eq!(drain(&mut b, 1, 600_000), 20);
    }

    #[test]
    fn each_of_n_shards_holds_its_share() {
        // 3 shards: each holds burst / 3 and refills at rate / 3; the
        // three together allow the configured rate and burst.
        let (rate, burst, shards) = (300, 90, 3);
        let mut total_burst = 0;
        let mut total_second = 0;
        for shard in 0..shards {
            let mut b = Buckets::new(&config(rate, burst, 64), shards, shard as u64);
            total_burst += drain(&mut b, 42, 0);
            total_second += (1..=1_000)
                .filter(|&ms| b.take(42, ms) == Take::Taken)
                .count();
        }
        assert_eq!(total_burst, burst);
        assert_eq!(total_second, rate as usize);
    }

    #[test]
    fn fractional_refills_are_not_lost() {
        // 1 request per second over 2 shards: half a request per second
        // each, which a millisecond adds as 1 unit of 2000.
        let mut b = Buckets::new(&config(1, 2, 64), 2, 0);
        assert_eq!(drain(&mut b, 9, 0), 1);
        let mut taken = 0;
        for ms in 1..=10_000 {
            if b.take(9, ms) == Take::Taken {
                taken += 1;
            }
        }
        assert_eq!(taken, 5, "ten seconds at half a request per second");
    }

    #[test]
    fn a_share_below_one_request_still_admits_one() {
        let mut b = Buckets::new(&config(1000, 1, 64), 4, 0);
        assert_eq!(drain(&mut b, 5, 0), 1);
    }

    #[test]
    fn time_going_backwards_refills_nothing() {
        let mut b = Buckets::new(&config(1000, 1, 64), 1, 0);
        assert_eq!(drain(&mut b, 5, 10_000), 1);
        assert_eq!(b.take(5, 9_000), Take::Empty);
        assert_eq!(
            b.take(5, 10_000),
            Take::Empty,
            "the stamp did not move back"
        );
        assert_eq!(b.take(5, 10_001), Take::Taken);
    }

    #[test]
    fn the_table_is_bounded_and_evicts_the_oldest() {
        // 8 slots: one set. Sources 1..=8 fill it, each at its own time.
        let mut b = Buckets::new(&config(1, 1, 8), 1, 0);
        assert_eq!(b.capacity(), 8);
        for key in 1..=8 {
            assert_eq!(b.take(key, key as u64), Take::Taken);
        }
        assert_eq!(b.sources(), 8);
        assert_eq!(b.evictions(), 0);
        // Source 1 comes back (and stays the youngest); source 9 then
        // takes the slot of the one seen longest ago: source 2.
        assert_eq!(b.take(1, 100), Take::Empty, "still tracked: no burst again");
        assert_eq!(b.take(9, 101), Take::Taken);
        assert_eq!((b.sources(), b.evictions()), (8, 1));
        assert_eq!(b.take(1, 102), Take::Empty, "source 1 kept its slot");
        // Source 2 was evicted: it starts again with a full bucket.
        assert_eq!(b.take(2, 103), Take::Taken);
        assert_eq!((b.sources(), b.evictions()), (8, 2));
        assert_eq!(b.capacity(), 8, "never grows");
    }

    #[test]
    fn sources_max_is_rounded_to_a_power_of_two_within_bounds() {
        assert_eq!(Buckets::new(&config(1, 1, 1000), 1, 0).capacity(), 1024);
        assert_eq!(Buckets::new(&config(1, 1, 1), 1, 0).capacity(), WAYS);
        assert_eq!(Buckets::new(&config(1, 1, 65_536), 1, 0).capacity(), 65_536);
    }

    #[test]
    fn many_sources_spread_over_the_sets() {
        // 2048 sources in a 4096-slot table (4 a set on average): the
        // hash spreads them, so only the few of overfull sets are evicted.
        let mut b = Buckets::new(&config(1, 1, 4096), 1, 0x5eed);
        for key in 1..=2048u128 {
            assert_eq!(b.take(key << 64 | 0xffff_0a00_0000, 0), Take::Taken);
        }
        assert!(b.sources() > 2000, "{} sources held", b.sources());
        assert_eq!(b.sources() + b.evictions(), 2048);
    }
}
