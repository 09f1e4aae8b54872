//! Picking a member of a set: each algorithm over a bitmask of the members
//! that may take the request. Shard-local state (round-robin cursors,
//! smooth weighted round-robin weights) lives in [`Selector`]; everything
//! shared is read from the [`Routing`] snapshot and its health atomics.

use super::routing::{DestinationSet, Routing, SetId};
use super::Algorithm;
use crate::sip::lex::fnv1a;

/// What a request carries that the hash algorithms hash.
#[derive(Clone, Copy, Debug, Default)]
pub struct Keys<'a> {
    pub call_id: &'a [u8],
    /// The From URI's user; without one, `from-user-hash` hashes the Call-ID.
    pub from_user: Option<&'a [u8]>,
    /// The Request-URI's user; without one, `ruri-user-hash` hashes the
    /// Call-ID.
    pub ruri_user: Option<&'a [u8]>,
}

/// The outcome of a pick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Send to this member of the set (an index into `members`; the
    /// caller marks `1 << index` in its tried mask).
    Member(usize),
    /// No member may take the request at all (down, draining, probing or
    /// weight 0): answer 503 with Retry-After at once.
    AllDown,
    /// Members may take it, but this transaction has tried them all.
    Exhausted,
}

/// One shard's picking state. Not shared: each shard keeps its own, so
/// round robin is fair per shard and picking takes no atomic writes.
#[derive(Debug, Default)]
pub struct Selector {
    /// The snapshot `sets` was sized for; 0 is never issued.
    generation: u64,
    sets: Vec<SetState>,
}

#[derive(Debug)]
struct SetState {
    /// The member index round robin starts looking from.
    cursor: u32,
    /// Smooth weighted round robin's current weights, one per member.
    current: Box<[i64]>,
}

impl Selector {
    pub fn new() -> Self {
        Selector::default()
    }

    /// Picks a member of `set` for a request. `tried` has bit `i` set for
    /// each member this transaction already sent to; `new_dialog` says the
    /// request would start a dialog (or is otherwise new work), so
    /// draining, probing and weight-0 members do not take it.
    ///
    /// Members with weight 0 take a request that is not a new dialog only
    /// when no member with a weight can, and then count as weight 1.
    pub fn select(
        &mut self,
        routing: &Routing,
        set: SetId,
        keys: &Keys<'_>,
        tried: u64,
        new_dialog: bool,
    ) -> Selection {
        let algorithm = routing.set(set).algorithm;
        self.pick(routing, set, keys, tried, new_dialog, algorithm)
    }

    /// Picks the member a request that is not a new dialog, and that has
    /// no transaction or Route to go by, must reach: an ACK or CANCEL
    /// passed on statelessly, an in-dialog request without our Route. Only
    /// a hash of the Call-ID sends it where the rest of its call went,
    /// whatever the set's own algorithm.
    pub fn select_by_call_id(
        &mut self,
        routing: &Routing,
        set: SetId,
        call_id: &[u8],
    ) -> Selection {
        let keys = Keys {
            call_id,
            ..Keys::default()
        };
        self.pick(routing, set, &keys, 0, false, Algorithm::CallIdHash)
    }

    fn pick(
        &mut self,
        routing: &Routing,
        set: SetId,
        keys: &Keys<'_>,
        tried: u64,
        new_dialog: bool,
        algorithm: Algorithm,
    ) -> Selection {
        if self.generation != routing.generation {
            self.refresh(routing);
        }
        let destination = routing.set(set);
        let eligible = eligible_mask(destination, new_dialog);
        if eligible == 0 {
            return Selection::AllDown;
        }
        let untried = eligible & !tried;
        if untried == 0 {
            return Selection::Exhausted;
        }
        let weighted = untried & destination.positive_weights;
        let (candidates, unit_weights) = if weighted == 0 {
            (untried, true)
        } else {
            (weighted, false)
        };
        let weights = Weights {
            set: destination,
            unit: unit_weights,
        };
        let state = &mut self.sets[set.index()];
        let index = match algorithm {
            Algorithm::CallIdHash => rendezvous(weights, candidates, keys.call_id),
            Algorithm::FromUserHash => {
                rendezvous(weights, candidates, keys.from_user.unwrap_or(keys.call_id))
            }
            Algorithm::RuriUserHash => {
                rendezvous(weights, candidates, keys.ruri_user.unwrap_or(keys.call_id))
            }
            // A failover takes the next member without moving the cursor:
            // new requests keep their turn order whatever fails.
            Algorithm::RoundRobin if tried != 0 => {
                round_robin(candidates, &mut state.cursor.clone())
            }
            Algorithm::RoundRobin => round_robin(candidates, &mut state.cursor),
            Algorithm::WeightedRoundRobin => {
                smooth_weighted(weights, candidates, &mut state.current)
            }
            Algorithm::Priority => {
                let best = lowest(destination, candidates, |i| {
                    u64::from(destination.members[i].priority)
                });
                smooth_weighted(weights, best, &mut state.current)
            }
            Algorithm::LeastCalls => least_calls(weights, candidates, &mut state.cursor),
            Algorithm::LowestLatency => lowest_latency(destination, candidates, &mut state.cursor),
        };
        debug_assert!(
            candidates & (1 << index) != 0,
            "picked a member that was not a candidate"
        );
        Selection::Member(index)
    }

    /// Sizes the state for a new snapshot (the only allocation, once per
    /// reload per shard). Cursors and weights start over: a reload may
    /// have reordered or replaced any set.
    fn refresh(&mut self, routing: &Routing) {
        self.sets = routing
            .sets()
            .iter()
            .map(|set| SetState {
                cursor: 0,
                current: vec![0; set.members.len()].into(),
            })
            .collect();
        self.generation = routing.generation;
    }
}

fn eligible_mask(set: &DestinationSet, new_dialog: bool) -> u64 {
    set.members
        .iter()
        .enumerate()
        .filter(|(_, member)| member.eligible(new_dialog))
        .fold(0, |mask, (i, _)| mask | 1 << i)
}

/// The indices of the bits set in a mask, lowest first.
fn bits(mut mask: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        let index = mask.trailing_zeros() as usize;
        mask &= mask.wrapping_sub(1);
        (index < 64).then_some(index)
    })
}

/// Each member's weight for this pick: its own, or 1 each when only
/// weight-0 members are left.
#[derive(Clone, Copy)]
struct Weights<'a> {
    set: &'a DestinationSet,
    unit: bool,
}

impl Weights<'_> {
    fn of(self, index: usize) -> u32 {
        if self.unit {
            1
        } else {
            self.set.members[index].weight
        }
    }

    fn all_equal(self) -> bool {
        self.unit || self.set.weights_equal
    }
}

/// The first candidate at or after the cursor (wrapping), and the cursor
/// moves past it.
fn round_robin(candidates: u64, cursor: &mut u32) -> usize {
    let index = (candidates.rotate_right(*cursor).trailing_zeros() + *cursor) % 64;
    *cursor = (index + 1) % 64;
    index as usize
}

/// nginx's smooth weighted round robin: every candidate gains its weight,
/// the one now highest is picked and loses the total. Weights 5:1:1 give
/// a a b a c a a, not a a a a a b c.
fn smooth_weighted(weights: Weights<'_>, candidates: u64, current: &mut [i64]) -> usize {
    let mut total = 0i64;
    let mut best: Option<usize> = None;
    for index in bits(candidates) {
        let weight = i64::from(weights.of(index));
        current[index] += weight;
        total += weight;
        if best.is_none_or(|b| current[index] > current[b]) {
            best = Some(index);
        }
    }
    let best = best.unwrap_or(0);
    current[best] -= total;
    best
}

/// The candidates with the lowest `value`.
fn lowest(set: &DestinationSet, candidates: u64, value: impl Fn(usize) -> u64) -> u64 {
    debug_assert!(set.members.len() <= 64);
    let minimum = bits(candidates).map(&value).min().unwrap_or(0);
    bits(candidates)
        .filter(|&i| value(i) == minimum)
        .fold(0, |mask, i| mask | 1 << i)
}

/// Fewest active dialogs per unit of weight (a member of weight 2 takes
/// twice the calls of one of weight 1); ties go round robin.
fn least_calls(weights: Weights<'_>, candidates: u64, cursor: &mut u32) -> usize {
    let calls = |i: usize| u64::from(weights.set.members[i].health.active_dialogs());
    let mut best = (u64::MAX, 1u64);
    let mut tied = 0u64;
    for index in bits(candidates) {
        let (count, weight) = (calls(index), u64::from(weights.of(index)));
        // count / weight against best.0 / best.1, without division.
        let (left, right) = (count * best.1, best.0.saturating_mul(weight));
        if left < right {
            best = (count, weight);
            tied = 1 << index;
        } else if left == right {
            tied |= 1 << index;
        }
    }
    round_robin(tied, cursor)
}

/// The smallest latency average; members without a sample yet go first,
/// so a new or returning backend gets measured. Ties go round robin.
fn lowest_latency(set: &DestinationSet, candidates: u64, cursor: &mut u32) -> usize {
    let latency = |i: usize| set.members[i].health.latency_ewma_us().map_or(0, u64::from);
    round_robin(lowest(set, candidates, latency), cursor)
}

/// Weighted rendezvous hashing (HRW): every member scores the key, the
/// highest score wins. A member's score depends only on the key and the
/// member, so when one goes down only the keys it won move (each to its
/// runner-up), and they move back when it returns; a failover walks the
/// same order. Weighted as in Schindelhauer & Schomaker: score =
/// weight / -ln(u), with u the hash as a fraction in (0, 1).
fn rendezvous(weights: Weights<'_>, candidates: u64, key: &[u8]) -> usize {
    let key_hash = fnv1a(&[key]);
    let members = &weights.set.members;
    let hash = |i: usize| mix(key_hash ^ members[i].seed);
    let mut best = 0usize;
    if weights.all_equal() {
        // -w/ln(u) grows with u for a fixed w: compare the hashes.
        let mut best_score = 0u64;
        for index in bits(candidates) {
            let score = hash(index);
            if score >= best_score {
                (best, best_score) = (index, score);
            }
        }
    } else {
        let mut best_score = -1.0f64;
        for index in bits(candidates) {
            let fraction = ((hash(index) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let score = f64::from(weights.of(index)) / -fraction.ln();
            if score > best_score {
                (best, best_score) = (index, score);
            }
        }
    }
    best
}

/// A member's hash seed, from its URI alone.
pub(super) fn member_seed(uri: &str) -> u64 {
    mix(fnv1a(&[b"sipshard-member", uri.as_bytes()]))
}

/// SplitMix64's finaliser: every input bit moves every output bit, which
/// FNV-1a alone does not do for keys that differ only at the end.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
