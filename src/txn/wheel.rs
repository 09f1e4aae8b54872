//! The shard-local timer wheel for the transaction timers (RFC 3261 A, B,
//! C, D, E, F, J, K and the per-try failover timer): O(1) insert and
//! cancel, no allocation after construction, and one deadline for the I/O
//! loop to sleep until.
//!
//! Times are `u64` milliseconds from an epoch the caller picks; the wheel
//! never reads a clock.
//!
//! Eleven levels of 64 slots: a level is one 6-bit digit of the deadline,
//! so together they cover every `u64` and no deadline is clamped (a
//! clamped timer would fire early). A timer sits at the highest digit in
//! which its deadline differs from the wheel's time, in the slot that digit
//! names. When time reaches an upper-level slot, its timers move down
//! (cascade), at most once per level; a timer in the wheel's current
//! 64 ms block never moves. Timers live in a slab sized at construction;
//! every slot is an intrusive ring of slab indices, so cancel unlinks in
//! O(1).

use std::fmt;

/// Bits of the deadline per level: 64 slots, so one `u64` says which are occupied.
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
const SLOT_MASK: u64 = SLOTS as u64 - 1;
/// Enough 6-bit digits for any `u64` deadline (the top level uses 4 bits).
const LEVELS: usize = (u64::BITS as usize).div_ceil(SLOT_BITS as usize);
/// One list per slot, then the due list: timers found due, not yet returned.
const LISTS: usize = LEVELS * SLOTS + 1;
const DUE_LIST: usize = LEVELS * SLOTS;
/// Ends the free list.
const NIL: u32 = u32::MAX;

/// The largest capacity: timers and list sentinels share `u32` indices,
/// and `NIL` is reserved.
pub const CAPACITY_MAX: usize = u32::MAX as usize - LISTS - 1;

/// Names one inserted timer. Once the timer has fired or been cancelled
/// the id matches nothing, even after its slab entry is reused (the entry's
/// generation changes; it wraps only after 2^32 reuses of one entry). An
/// id belongs to the wheel that made it.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug)]
pub struct TimerId {
    index: u32,
    generation: u32,
}

/// The wheel already holds `capacity` timers; the value comes back.
#[derive(Debug, PartialEq, Eq)]
pub struct Full<T>(pub T);

impl<T> fmt::Display for Full<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("timer wheel is full")
    }
}

impl<T: fmt::Debug> std::error::Error for Full<T> {}

/// A slab entry; `value` is `None` while the entry is free.
struct Timer<T> {
    deadline_ms: u64,
    generation: u32,
    value: Option<T>,
}

/// Ring links, by index into `Wheel::links`.
#[derive(Clone, Copy)]
struct Link {
    next: u32,
    prev: u32,
}

/// A hierarchical timing wheel with a fixed capacity.
///
/// The I/O loop drains it with `while let Some(..) = wheel.expire(now)`
/// and then sleeps until [`Wheel::next_deadline`].
pub struct Wheel<T> {
    timers: Vec<Timer<T>>,
    /// `links[i]` for timer `i`, then one sentinel per list at
    /// `capacity + list`. A list is a ring through its sentinel, so a timer
    /// unlinks without knowing its list, and the sentinel left alone names
    /// the list that became empty. A free timer's `next` is the free list.
    links: Vec<Link>,
    /// Bit `s` of `occupied[level]`: that slot's list is not empty.
    occupied: [u64; LEVELS],
    free_head: u32,
    len: u32,
    /// The wheel's time: every timer with `deadline_ms <= now_ms` is on the
    /// due list; every other one is in the slot its deadline names from here.
    now_ms: u64,
    /// Not later than any deadline on the due list while it is not empty.
    due_earliest_ms: u64,
}

impl<T> Wheel<T> {
    /// A wheel at time `now_ms` with room for `capacity` timers, all
    /// allocated (and touched) here so the packet path never allocates.
    ///
    /// # Panics
    /// If `capacity > CAPACITY_MAX`: a configuration error at start-up.
    pub fn with_capacity(now_ms: u64, capacity: usize) -> Self {
        assert!(
            capacity <= CAPACITY_MAX,
            "timer wheel capacity {capacity} is over {CAPACITY_MAX}"
        );
        let timers = (0..capacity)
            .map(|_| Timer {
                deadline_ms: 0,
                generation: 0,
                value: None,
            })
            .collect();
        let mut links = Vec::with_capacity(capacity + LISTS);
        // Free list 0, 1, 2, ... so a fresh wheel fills its slab in order.
        links.extend((1..=capacity).map(|next| Link {
            next: if next < capacity { next as u32 } else { NIL },
            prev: NIL,
        }));
        links.extend((capacity..capacity + LISTS).map(|sentinel| Link {
            next: sentinel as u32,
            prev: sentinel as u32,
        }));
        Wheel {
            timers,
            links,
            occupied: [0; LEVELS],
            free_head: if capacity > 0 { 0 } else { NIL },
            len: 0,
            now_ms,
            due_earliest_ms: now_ms,
        }
    }

    /// Arms a timer. A deadline at or before the wheel's time is due at
    /// the next [`Wheel::expire`], whatever `now_ms` that call gives.
    pub fn insert(&mut self, deadline_ms: u64, value: T) -> Result<TimerId, Full<T>> {
        let index = self.free_head;
        if index == NIL {
            return Err(Full(value));
        }
        self.free_head = self.links[index as usize].next;
        let timer = &mut self.timers[index as usize];
        debug_assert!(timer.value.is_none());
        timer.deadline_ms = deadline_ms;
        timer.value = Some(value);
        let generation = timer.generation;
        self.len += 1;
        self.place(index);
        Ok(TimerId { index, generation })
    }

    /// Disarms a timer and gives its value back; `None` if it has already
    /// fired or been cancelled.
    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        self.get(id)?;
        self.unlink(id.index);
        self.release(id.index)
    }

    /// The value of a timer still armed (or due and not yet returned).
    pub fn get(&self, id: TimerId) -> Option<&T> {
        let timer = self.timers.get(id.index as usize)?;
        if timer.generation != id.generation {
            return None;
        }
        timer.value.as_ref()
    }

    /// When to call [`Wheel::expire`] next: never later than the earliest
    /// deadline. It is exact when the earliest timer is in the wheel's
    /// current 64 ms block (`now_ms / 64`); otherwise it is the start of
    /// the upper-level slot holding it, where `expire` cascades and may
    /// return nothing: at most one early wake-up per level, so a timer
    /// 2 ms away across a block boundary costs one, an hour-long one three.
    /// After `expire` has returned `None`, a result at or before that
    /// `now_ms` means a timer is already due (inserted with a past
    /// deadline). O(levels): the I/O loop calls it every turn.
    pub fn next_deadline(&self) -> Option<u64> {
        if !self.list_is_empty(DUE_LIST) {
            return Some(self.due_earliest_ms);
        }
        self.earliest_slot().map(|(_, _, start_ms)| start_ms)
    }

    /// Pops one timer with `deadline_ms <= now_ms`; `None` when no more are
    /// due. Call it until `None`: a due timer comes out before that, and so
    /// does one inserted meanwhile with a deadline already past.
    ///
    /// Order: due timers come out in deadline order, except that timers
    /// inserted with a deadline already past come first, in the order they
    /// were inserted. Equal deadlines come out in no set order.
    ///
    /// A `now_ms` earlier than one seen before is read as that one: the
    /// wheel's time never goes back.
    pub fn expire(&mut self, now_ms: u64) -> Option<(TimerId, T)> {
        let now_ms = now_ms.max(self.now_ms);
        loop {
            if let Some(index) = self.pop_due() {
                let generation = self.timers[index as usize].generation;
                let value = self.release(index);
                debug_assert!(value.is_some(), "a timer on a list holds a value");
                return value.map(|value| (TimerId { index, generation }, value));
            }
            match self.earliest_slot() {
                Some((level, slot, start_ms)) if start_ms <= now_ms => {
                    self.now_ms = start_ms;
                    self.cascade(level, slot);
                }
                _ => {
                    self.now_ms = now_ms;
                    return None;
                }
            }
        }
    }

    /// Timers armed, including due ones not yet returned.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most timers the wheel holds; `insert` returns `Full` beyond it.
    pub fn capacity(&self) -> usize {
        self.timers.len()
    }

    /// Puts a timer on the due list, or in the slot its deadline names from
    /// the wheel's time.
    fn place(&mut self, index: u32) {
        let deadline_ms = self.timers[index as usize].deadline_ms;
        if deadline_ms <= self.now_ms {
            if self.list_is_empty(DUE_LIST) || deadline_ms < self.due_earliest_ms {
                self.due_earliest_ms = deadline_ms;
            }
            self.push_back(DUE_LIST, index);
        } else {
            let level = level_for(self.now_ms, deadline_ms);
            let slot = slot_for(deadline_ms, level);
            self.occupied[level] |= 1 << slot;
            self.push_back(level * SLOTS + slot, index);
        }
    }

    /// The first occupied slot in time: the lowest occupied level holds
    /// the earliest timers, since a higher level's slots all start after
    /// the lower level's span from the wheel's time.
    fn earliest_slot(&self) -> Option<(usize, usize, u64)> {
        let level = self.occupied.iter().position(|&bits| bits != 0)?;
        let slot = self.occupied[level].trailing_zeros() as usize;
        Some((level, slot, slot_start_ms(self.now_ms, level, slot)))
    }

    /// The wheel's time has reached the start of this slot: its timers are
    /// due now or move to a lower level.
    fn cascade(&mut self, level: usize, slot: usize) {
        let list = level * SLOTS + slot;
        self.occupied[level] &= !(1 << slot);
        let sentinel = self.sentinel(list);
        let Link {
            next: first,
            prev: last,
        } = self.links[sentinel as usize];
        debug_assert_ne!(first, sentinel, "an occupied slot has a timer");
        self.links[sentinel as usize] = Link {
            next: sentinel,
            prev: sentinel,
        };
        if level == 0 {
            // Every deadline here is `now_ms`: the whole ring joins the due
            // list at once (empty, since `expire` only advances when it is).
            debug_assert!(self.list_is_empty(DUE_LIST));
            self.due_earliest_ms = self.now_ms;
            let due = self.sentinel(DUE_LIST);
            let tail = self.links[due as usize].prev;
            self.links[tail as usize].next = first;
            self.links[first as usize].prev = tail;
            self.links[last as usize].next = due;
            self.links[due as usize].prev = last;
            return;
        }
        let mut index = first;
        loop {
            let next = self.links[index as usize].next;
            self.place(index);
            if index == last {
                break;
            }
            index = next;
        }
    }

    fn pop_due(&mut self) -> Option<u32> {
        let sentinel = self.sentinel(DUE_LIST);
        let first = self.links[sentinel as usize].next;
        if first == sentinel {
            return None;
        }
        self.unlink(first);
        Some(first)
    }

    /// Frees a timer that is on no list; its id goes stale.
    fn release(&mut self, index: u32) -> Option<T> {
        let timer = &mut self.timers[index as usize];
        timer.generation = timer.generation.wrapping_add(1);
        let value = timer.value.take();
        self.links[index as usize].next = self.free_head;
        self.free_head = index;
        self.len -= 1;
        value
    }

    fn sentinel(&self, list: usize) -> u32 {
        (self.timers.len() + list) as u32
    }

    fn list_is_empty(&self, list: usize) -> bool {
        let sentinel = self.sentinel(list);
        self.links[sentinel as usize].next == sentinel
    }

    fn push_back(&mut self, list: usize, index: u32) {
        let sentinel = self.sentinel(list);
        let tail = self.links[sentinel as usize].prev;
        self.links[index as usize] = Link {
            next: sentinel,
            prev: tail,
        };
        self.links[tail as usize].next = index;
        self.links[sentinel as usize].prev = index;
    }

    /// Takes a timer out of whichever list holds it, and clears its slot's
    /// bit if that list is now empty.
    fn unlink(&mut self, index: u32) {
        let Link { next, prev } = self.links[index as usize];
        self.links[prev as usize].next = next;
        self.links[next as usize].prev = prev;
        if next == prev {
            // Only a sentinel is its own neighbour on both sides.
            let list = (next as usize).checked_sub(self.timers.len());
            debug_assert!(list.is_some(), "a lone neighbour is a sentinel");
            if let Some(list) = list.filter(|&list| list < DUE_LIST) {
                self.occupied[list / SLOTS] &= !(1 << (list % SLOTS));
            }
        }
    }
}

/// The level of a deadline later than `now_ms`: the highest 6-bit digit in
/// which the two differ.
fn level_for(now_ms: u64, deadline_ms: u64) -> usize {
    let differ = (now_ms ^ deadline_ms) | SLOT_MASK;
    let highest_bit = u64::BITS - 1 - differ.leading_zeros();
    (highest_bit / SLOT_BITS) as usize
}

/// The deadline's digit at `level`.
fn slot_for(deadline_ms: u64, level: usize) -> usize {
    ((deadline_ms >> (level as u32 * SLOT_BITS)) & SLOT_MASK) as usize
}

/// The first millisecond of a slot: the digits above `level` are the
/// wheel's time, the digit at `level` is `slot`, the rest are zero.
fn slot_start_ms(now_ms: u64, level: usize, slot: usize) -> u64 {
    let level_shift = level as u32 * SLOT_BITS;
    let above = u64::MAX.checked_shl(level_shift + SLOT_BITS).unwrap_or(0);
    (now_ms & above) | ((slot as u64) << level_shift)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::sample::Index;

    use super::*;

    /// One deadline on each side of every level boundary the transaction
    /// timers reach, up to an hour-long Timer C.
    const DELAYS_MS: [u64; 8] = [1, 63, 64, 65, 4_095, 4_096, 180_000, 3_600_000];
    /// Start times: aligned, mid-slot on every level, and near the end of u64.
    const STARTS_MS: [u64; 3] = [0, 1_234_567_891, u64::MAX - 4_000_000];

    fn drain(wheel: &mut Wheel<u64>, now_ms: u64) -> Vec<u64> {
        std::iter::from_fn(|| wheel.expire(now_ms))
            .map(|(_, value)| value)
            .collect()
    }

    #[test]
    fn fires_at_the_deadline_not_a_millisecond_before() {
        for start in STARTS_MS {
            for delay in DELAYS_MS {
                let deadline = start + delay;
                let mut wheel = Wheel::with_capacity(start, 4);
                wheel.insert(deadline, delay).unwrap();
                assert_eq!(
                    drain(&mut wheel, deadline - 1),
                    [0u64; 0],
                    "{start} + {delay}"
                );
                assert_eq!(drain(&mut wheel, deadline), [delay], "{start} + {delay}");
                assert!(wheel.is_empty());
            }
        }
    }

    #[test]
    fn fires_at_the_deadline_when_time_moves_by_one_millisecond() {
        for start in STARTS_MS {
            for delay in DELAYS_MS.into_iter().filter(|&delay| delay <= 180_000) {
                let deadline = start + delay;
                let mut wheel = Wheel::with_capacity(start, 4);
                wheel.insert(deadline, delay).unwrap();
                for now in start..deadline {
                    assert_eq!(wheel.expire(now), None, "{start} + {delay} at {now}");
                }
                assert_eq!(drain(&mut wheel, deadline), [delay]);
            }
        }
    }

    #[test]
    fn woken_by_next_deadline_fires_on_time() {
        // The I/O loop's way: sleep until next_deadline, expire, repeat.
        for start in STARTS_MS {
            for delay in DELAYS_MS {
                let deadline = start + delay;
                let mut wheel = Wheel::with_capacity(start, 4);
                wheel.insert(deadline, delay).unwrap();
                let mut wake_ups = 0;
                loop {
                    let next = wheel.next_deadline().unwrap();
                    assert!(next <= deadline, "{start} + {delay}: woken at {next}");
                    wake_ups += 1;
                    let fired = drain(&mut wheel, next);
                    if next == deadline {
                        assert_eq!(fired, [delay]);
                        break;
                    }
                    assert_eq!(fired, [0u64; 0]);
                }
                // One early wake-up per level above the lowest, at most.
                let levels = level_for(start, deadline) + 1;
                assert!(wake_ups <= levels, "{start} + {delay}: {wake_ups} wake-ups");
                assert_eq!(wheel.next_deadline(), None);
            }
        }
    }

    #[test]
    fn cancel_before_firing() {
        let mut wheel = Wheel::with_capacity(0, 4);
        let first = wheel.insert(100, 1).unwrap();
        let second = wheel.insert(100, 2).unwrap();
        let far = wheel.insert(5_000, 3).unwrap();
        assert_eq!(wheel.get(first), Some(&1));
        assert_eq!(wheel.cancel(first), Some(1));
        assert_eq!(wheel.get(first), None);
        assert_eq!(wheel.cancel(far), Some(3));
        assert_eq!(wheel.len(), 1);
        assert_eq!(drain(&mut wheel, 10_000), [2]);
        assert_eq!(wheel.cancel(second), None);
        assert_eq!(wheel.next_deadline(), None);
    }

    #[test]
    fn stale_ids_match_nothing_after_their_entry_is_reused() {
        let mut wheel = Wheel::with_capacity(0, 1);
        let cancelled = wheel.insert(10, 1).unwrap();
        assert_eq!(wheel.cancel(cancelled), Some(1));
        let fired = wheel.insert(10, 2).unwrap();
        assert_eq!(fired.index, cancelled.index);
        assert_eq!(wheel.cancel(cancelled), None);
        assert_eq!(wheel.expire(10), Some((fired, 2)));
        let live = wheel.insert(20, 3).unwrap();
        assert_eq!(live.index, fired.index);
        for stale in [cancelled, fired] {
            assert_eq!(wheel.get(stale), None);
            assert_eq!(wheel.cancel(stale), None);
        }
        // An id this wheel never made.
        let foreign = TimerId {
            index: 7,
            generation: 0,
        };
        assert_eq!(wheel.cancel(foreign), None);
        assert_eq!(wheel.get(live), Some(&3));
        assert_eq!(wheel.len(), 1);
    }

    #[test]
    fn full_at_capacity_then_reuse_after_cancel_and_fire() {
        let mut wheel = Wheel::with_capacity(0, 3);
        let ids: Vec<_> = (0..3).map(|v| wheel.insert(50 + v, v).unwrap()).collect();
        assert_eq!(wheel.insert(60, 9), Err(Full(9)));
        assert_eq!(wheel.len(), 3);
        assert_eq!(wheel.cancel(ids[1]), Some(1));
        wheel.insert(60, 9).unwrap();
        assert_eq!(wheel.insert(61, 10), Err(Full(10)));
        assert_eq!(drain(&mut wheel, 100), [0, 2, 9]);
        for v in 0..3 {
            wheel.insert(200, v).unwrap();
        }
        assert_eq!(wheel.insert(200, 3), Err(Full(3)));
    }

    #[test]
    fn zero_capacity_is_always_full() {
        let mut wheel = Wheel::with_capacity(0, 0);
        assert_eq!(wheel.insert(1, 1), Err(Full(1)));
        assert_eq!(wheel.next_deadline(), None);
        assert_eq!(wheel.expire(u64::MAX), None);
        assert_eq!(wheel.capacity(), 0);
    }

    #[test]
    fn next_deadline_is_never_later_than_the_earliest() {
        let deadlines = [5_000, 70, 180_000, 64, 3_600_000, 4_096, 1, 64];
        let mut wheel = Wheel::with_capacity(0, 16);
        for deadline in deadlines {
            wheel.insert(deadline, deadline).unwrap();
        }
        let mut left = deadlines.to_vec();
        left.sort();
        let mut now = 0;
        while let Some(next) = wheel.next_deadline() {
            assert!(next <= left[0], "{next} is after {}", left[0]);
            assert!(next > now, "nothing is due, yet {next} is not after {now}");
            now = next;
            let fired = drain(&mut wheel, now);
            assert_eq!(fired, left[..fired.len()]);
            left.drain(..fired.len());
        }
        assert_eq!(left, [0u64; 0]);
    }

    #[test]
    fn a_ten_hour_jump_fires_everything_due_in_deadline_order() {
        const HOUR_MS: u64 = 3_600_000;
        let mut wheel = Wheel::with_capacity(0, 2_000);
        let deadlines: Vec<u64> = (0..2_000)
            .map(|i| i * 7_919_003 % (11 * HOUR_MS) + 1)
            .collect();
        for &deadline in &deadlines {
            wheel.insert(deadline, deadline).unwrap();
        }
        let mut expected: Vec<u64> = deadlines
            .iter()
            .copied()
            .filter(|&d| d <= 10 * HOUR_MS)
            .collect();
        expected.sort();
        assert_eq!(drain(&mut wheel, 10 * HOUR_MS), expected);
        assert_eq!(wheel.len(), deadlines.len() - expected.len());
        assert_eq!(
            drain(&mut wheel, 11 * HOUR_MS).len(),
            wheel.capacity() - expected.len()
        );
        assert!(wheel.is_empty());
    }

    #[test]
    fn time_going_backwards_is_no_advance() {
        let mut wheel = Wheel::with_capacity(1_000, 4);
        wheel.insert(1_001, 1).unwrap();
        assert_eq!(drain(&mut wheel, 500), [0u64; 0]);
        assert_eq!(wheel.next_deadline(), Some(1_001));
        // Before the wheel's time: due at the next expire, whatever its now.
        wheel.insert(800, 2).unwrap();
        assert_eq!(wheel.next_deadline(), Some(800));
        assert_eq!(drain(&mut wheel, 0), [2]);
        assert_eq!(drain(&mut wheel, 1_000), [0u64; 0]);
        assert_eq!(drain(&mut wheel, 1_001), [1]);
    }

    #[test]
    fn the_end_of_time() {
        let mut wheel = Wheel::with_capacity(0, 4);
        wheel.insert(u64::MAX, 1).unwrap();
        wheel.insert(u64::MAX - 1, 2).unwrap();
        assert_eq!(drain(&mut wheel, u64::MAX - 2), [0u64; 0]);
        assert_eq!(drain(&mut wheel, u64::MAX - 1), [2]);
        assert_eq!(drain(&mut wheel, u64::MAX), [1]);
        wheel.insert(u64::MAX, 3).unwrap();
        assert_eq!(wheel.next_deadline(), Some(u64::MAX));
        assert_eq!(drain(&mut wheel, u64::MAX), [3]);
    }

    #[test]
    fn past_deadlines_come_first_in_insertion_order() {
        let mut wheel = Wheel::with_capacity(100, 8);
        for deadline in [150, 90, 20, 120, 100] {
            wheel.insert(deadline, deadline).unwrap();
        }
        assert_eq!(wheel.next_deadline(), Some(20));
        assert_eq!(drain(&mut wheel, 200), [90, 20, 100, 120, 150]);
    }

    /// A time relative to the model's time.
    #[derive(Clone, Copy, Debug)]
    enum Offset {
        Ahead(u64),
        Behind(u64),
    }

    impl Offset {
        fn from(self, now_ms: u64) -> u64 {
            match self {
                Offset::Ahead(ms) => now_ms.saturating_add(ms),
                Offset::Behind(ms) => now_ms.saturating_sub(ms),
            }
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(Offset),
        /// Any id ever issued: armed, fired or cancelled.
        Cancel(Index),
        Advance(Offset),
    }

    /// Offsets on every level, bunched near the boundaries that matter.
    fn ahead(weight_end_of_time: u32) -> impl Strategy<Value = u64> {
        prop_oneof![
            40 => 0..=130u64,
            20 => 0..=8_300u64,
            10 => 0..=270_000u64,
            5 => 0..=17_000_000u64,
            3 => 0..=(1u64 << 40),
            weight_end_of_time => Just(u64::MAX),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => ahead(3).prop_map(|ms| Op::Insert(Offset::Ahead(ms))),
            1 => (0..=2_000u64).prop_map(|ms| Op::Insert(Offset::Behind(ms))),
            3 => any::<Index>().prop_map(Op::Cancel),
            4 => ahead(1).prop_map(|ms| Op::Advance(Offset::Ahead(ms))),
            1 => (0..=2_000u64).prop_map(|ms| Op::Advance(Offset::Behind(ms))),
        ]
    }

    /// Runs `ops` on a wheel and on a model (armed timers by deadline) and
    /// checks after each that they agree.
    fn against_model(start_ms: u64, capacity: usize, ops: &[Op]) -> Result<(), TestCaseError> {
        let mut wheel = Wheel::with_capacity(start_ms, capacity);
        // The model: the latest time given, armed timers by (deadline, value),
        // every id issued (a timer's value is its place here), and the
        // timers inserted already due since the last expire.
        let mut now_ms = start_ms;
        let mut armed: BTreeMap<(u64, u64), TimerId> = BTreeMap::new();
        let mut issued: Vec<(TimerId, u64)> = Vec::new();
        let mut late: Vec<u64> = Vec::new();
        for op in ops {
            match *op {
                Op::Insert(offset) => {
                    let deadline = offset.from(now_ms);
                    let value = issued.len() as u64;
                    match wheel.insert(deadline, value) {
                        Ok(id) => {
                            prop_assert!(armed.len() < capacity);
                            armed.insert((deadline, value), id);
                            issued.push((id, deadline));
                            if deadline <= now_ms {
                                late.push(value);
                            }
                        }
                        Err(Full(back)) => {
                            prop_assert_eq!(back, value);
                            prop_assert_eq!(armed.len(), capacity);
                        }
                    }
                }
                Op::Cancel(pick) => {
                    if issued.is_empty() {
                        continue;
                    }
                    let value = pick.index(issued.len());
                    let (id, deadline) = issued[value];
                    let value = value as u64;
                    let expected = armed.remove(&(deadline, value)).map(|_| value);
                    prop_assert_eq!(wheel.get(id).copied(), expected);
                    prop_assert_eq!(wheel.cancel(id), expected);
                    late.retain(|&v| v != value);
                }
                Op::Advance(offset) => {
                    let given = offset.from(now_ms);
                    now_ms = now_ms.max(given);
                    let mut fired = Vec::new();
                    while let Some((id, value)) = wheel.expire(given) {
                        prop_assert!(fired.len() < capacity, "expire never stops");
                        let (issued_id, deadline) = issued[value as usize];
                        prop_assert_eq!(id, issued_id);
                        prop_assert!(deadline <= now_ms, "early: {} at {}", deadline, now_ms);
                        fired.push((deadline, value));
                    }
                    let due: Vec<(u64, u64)> = armed
                        .range(..=(now_ms, u64::MAX))
                        .map(|(&key, _)| key)
                        .collect();
                    for key in &due {
                        armed.remove(key);
                    }
                    // Late inserts first, in insertion order, then by deadline.
                    let (first, rest) = fired.split_at(late.len().min(fired.len()));
                    let first: Vec<u64> = first.iter().map(|&(_, value)| value).collect();
                    prop_assert_eq!(first, std::mem::take(&mut late));
                    prop_assert!(
                        rest.windows(2).all(|pair| pair[0].0 <= pair[1].0),
                        "out of order: {:?}",
                        rest
                    );
                    fired.sort();
                    prop_assert_eq!(fired, due);
                }
            }
            prop_assert_eq!(wheel.len(), armed.len());
            match (
                wheel.next_deadline(),
                armed.keys().map(|&(deadline, _)| deadline).min(),
            ) {
                (None, None) => {}
                (Some(next), Some(earliest)) => {
                    prop_assert!(
                        next <= earliest,
                        "next {} after earliest {}",
                        next,
                        earliest
                    );
                    if earliest > now_ms {
                        prop_assert!(
                            next > now_ms,
                            "next {} not after {} with nothing due",
                            next,
                            now_ms
                        );
                    }
                }
                (next, earliest) => {
                    prop_assert!(false, "next {:?}, earliest {:?}", next, earliest);
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn agrees_with_a_sorted_map(
            start_ms in prop_oneof![Just(0u64), 0..=u64::MAX / 2, u64::MAX - 50_000_000..=u64::MAX],
            capacity in 1..=48usize,
            ops in vec(op(), 0..300),
        ) {
            against_model(start_ms, capacity, &ops)?;
        }
    }
}
