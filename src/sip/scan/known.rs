//! Where framing found the headers validation needs.

use super::HeaderSlot;
use crate::sip::header::HeaderName;

/// Where the headers are, noted by framing as it pushes each slot (a few
/// instructions, no branch), so that validation does not walk the slots
/// again to find Call-ID, CSeq, From, To and the rest.
///
/// Only the last slot of each name is kept: a name in [`SINGLE`] that is
/// not repeated has one, and the top Via is found by validation's walk
/// from the first slot (it is nearly always that slot). Where a repeat is,
/// only a malformed message needs to know, so a walk finds it then.
#[derive(Clone, Copy, Debug)]
pub(super) struct Known {
    /// Bit `n` set when a header named `HeaderName` `n` was framed.
    pub(super) seen: u32,
    /// Bit `n` set when more than one was.
    pub(super) repeated: u32,
    /// Slot of the last header of each name; valid only where `seen` has
    /// the name's bit.
    pub(super) last: [u16; NAMES],
}

/// `HeaderName` values, `Other` the last of them.
const NAMES: usize = HeaderName::Other as usize + 1;
const _: () = assert!(NAMES <= 32);

/// The names that may appear once: bit `n` for `HeaderName` `n`.
const SINGLE: u32 = {
    let names = [
        HeaderName::CallId,
        HeaderName::CSeq,
        HeaderName::From,
        HeaderName::To,
        HeaderName::MaxForwards,
        HeaderName::ContentLength,
    ];
    let mut bits = 0;
    let mut i = 0;
    while i < names.len() {
        bits |= 1 << names[i] as u32;
        i += 1;
    }
    bits
};

impl Default for Known {
    fn default() -> Self {
        Known {
            seen: 0,
            repeated: 0,
            last: [0; NAMES],
        }
    }
}

impl Known {
    #[inline(always)]
    pub(super) fn note(
        &mut self,
        seen: &mut u32,
        repeated: &mut u32,
        name: HeaderName,
        index: u16,
    ) {
        let n = name as usize % NAMES;
        let bit = 1u32 << n;
        *repeated |= *seen & bit;
        *seen |= bit;
        self.last[n] = index;
    }

    /// The slot of the last header named `name`, if any: for a name in
    /// [`SINGLE`], the only one once [`Known::first_repeat`] found none.
    #[inline(always)]
    pub(super) fn last(&self, name: HeaderName) -> Option<u16> {
        let n = name as usize % NAMES;
        (self.seen & 1 << n != 0).then_some(self.last[n])
    }

    /// The first slot that repeats a name in [`SINGLE`] (`usize::MAX`:
    /// none): validation reports it where a walk of every header in order
    /// would, after the Via headers before it.
    #[inline(always)]
    pub(super) fn first_repeat(&self, slots: &[HeaderSlot]) -> usize {
        if self.repeated & SINGLE == 0 {
            return usize::MAX;
        }
        first_repeat(slots)
    }
}

/// [`Known::first_repeat`] for a message that has one: out of line, as
/// only a malformed message gets here.
#[cold]
#[inline(never)]
fn first_repeat(slots: &[HeaderSlot]) -> usize {
    let mut seen = 0u32;
    for (index, slot) in slots.iter().enumerate() {
        let bit = 1u32 << (slot.name as usize % NAMES);
        debug_assert_eq!(bit & SINGLE != 0, slot.name.is_single());
        if seen & bit & SINGLE != 0 {
            return index;
        }
        seen |= bit;
    }
    usize::MAX
}
