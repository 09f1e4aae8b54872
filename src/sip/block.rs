//! Where the newlines and colons are, 64 bytes at a time.
//!
//! Framing needs, for every header line, the `:` after its name and the
//! `\n` that ends it. Asking memchr twice per line costs a call and a setup
//! each time for lines of ~40 bytes; one SSE2 pass over 64 bytes answers
//! both questions for one or two lines at once, and the next position is a
//! `trailing_zeros` away.
//!
//! This is the crate's only `unsafe`: the SSE2 loads, each reading 16 bytes
//! from inside a 64-byte or a 16-byte array. [`host16`] uses the same
//! instructions to find where a host name ends.

use super::lex;

/// Bit `i` is set when byte `i` of the block is `\n` (`newline`) or `:` (`colon`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Masks {
    pub(crate) newline: u64,
    pub(crate) colon: u64,
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub(crate) fn masks(block: &[u8; 64]) -> Masks {
    // SAFETY: SSE2 is part of the x86_64 baseline, so every x86_64 CPU has it.
    unsafe { masks_sse2(block) }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "sse2")]
fn masks_sse2(block: &[u8; 64]) -> Masks {
    use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8};
    let newline = _mm_set1_epi8(b'\n' as i8);
    let colon = _mm_set1_epi8(b':' as i8);
    let mut masks = Masks::default();
    for k in 0..4 {
        // SAFETY: bytes 16k..16k+16 lie inside the 64-byte array; loadu
        // has no alignment requirement.
        let v = unsafe { _mm_loadu_si128(block.as_ptr().add(16 * k).cast()) };
        masks.newline |=
            u64::from(_mm_movemask_epi8(_mm_cmpeq_epi8(v, newline)) as u16) << (16 * k);
        masks.colon |= u64::from(_mm_movemask_epi8(_mm_cmpeq_epi8(v, colon)) as u16) << (16 * k);
    }
    masks
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn masks(block: &[u8; 64]) -> Masks {
    masks_scalar(block)
}

/// The portable definition, and the reference the SSE2 path is tested against.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
pub(crate) fn masks_scalar(block: &[u8; 64]) -> Masks {
    let mut masks = Masks::default();
    for (i, &b) in block.iter().enumerate() {
        masks.newline |= u64::from(b == b'\n') << i;
        masks.colon |= u64::from(b == b':') << i;
    }
    masks
}

/// Bit `i` is set when byte `i` of `chunk` is a [`lex::HOST`] character
/// (alphanum `-` `.`); bits 16 and above are clear. Three range compares
/// per 16 bytes, where the table takes a load and a branch per byte.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[inline(always)]
pub(crate) fn host16(chunk: &[u8; 16]) -> u32 {
    use std::arch::x86_64::{
        _mm_add_epi8, _mm_cmplt_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    // `lo <= b <= hi`, bytes as unsigned: moved so that `lo` lands on
    // i8::MIN, then one signed compare.
    let range = |v, lo: u8, hi: u8| {
        // SAFETY: SSE2 is part of the x86_64 baseline, so every x86_64 CPU
        // has these instructions.
        unsafe {
            let moved = _mm_add_epi8(v, _mm_set1_epi8(0x80u8.wrapping_sub(lo) as i8));
            _mm_cmplt_epi8(moved, _mm_set1_epi8(0x80u8.wrapping_add(hi - lo + 1) as i8))
        }
    };
    // SAFETY: as above; the load reads the 16 bytes of `chunk`, and loadu
    // has no alignment requirement.
    unsafe {
        let v = _mm_loadu_si128(chunk.as_ptr().cast());
        // Letters either case: bit 5 set maps `A`..`Z` onto `a`..`z` and
        // no other byte into that range.
        let letter = range(_mm_or_si128(v, _mm_set1_epi8(0x20)), b'a', b'z');
        let hit = _mm_or_si128(
            _mm_or_si128(letter, range(v, b'0', b'9')),
            range(v, b'-', b'.'),
        );
        _mm_movemask_epi8(hit) as u32 & 0xffff
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
pub(crate) fn host16(chunk: &[u8; 16]) -> u32 {
    host16_scalar(chunk)
}

/// The portable definition of [`host16`], and its reference in tests.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
#[inline]
pub(crate) fn host16_scalar(chunk: &[u8; 16]) -> u32 {
    let mut bits = 0;
    for (i, &b) in chunk.iter().enumerate() {
        bits |= u32::from(lex::is(b, lex::HOST)) << i;
    }
    bits
}

/// Finds the next `\n` or `:` at or after a position, one 64-byte block of
/// the datagram at a time.
pub(crate) struct BlockCursor<'d> {
    datagram: &'d [u8],
    base: usize,
    masks: Masks,
}

impl<'d> BlockCursor<'d> {
    pub(crate) fn new(datagram: &'d [u8]) -> Self {
        BlockCursor {
            datagram,
            // A window no position falls in (`at - base` wraps to at least
            // 64), so the first query loads.
            base: usize::MAX & !63,
            masks: Masks::default(),
        }
    }

    /// Loads the 64-byte-aligned block (relative to the datagram) that holds
    /// `at`, so that every block is loaded once per scan.
    fn load(&mut self, at: usize) {
        let at = at & !63;
        self.base = at;
        self.masks = match self.datagram.get(at..at + 64) {
            Some(full) => masks(full.try_into().unwrap_or(&[0; 64])),
            None => {
                // The tail: zero padding holds neither `\n` nor `:`.
                let mut block = [0u8; 64];
                let tail = &self.datagram[at.min(self.datagram.len())..];
                block[..tail.len()].copy_from_slice(tail);
                masks(&block)
            }
        };
    }

    /// The first `:` and the first `\n` at or after `from`, when both are
    /// in the block already loaded: one look where a header line would
    /// otherwise take two queries.
    #[inline]
    pub(crate) fn colon_and_newline_here(&self, from: usize) -> Option<(usize, usize)> {
        let offset = from.wrapping_sub(self.base);
        if offset >= 64 {
            return None;
        }
        let colon = self.masks.colon >> offset;
        let newline = self.masks.newline >> offset;
        if colon == 0 || newline == 0 {
            return None;
        }
        Some((
            from + colon.trailing_zeros() as usize,
            from + newline.trailing_zeros() as usize,
        ))
    }

    /// The first `\n` at or after `from`, looking no further than `until`.
    #[inline]
    pub(crate) fn newline(&mut self, from: usize, until: usize) -> Option<usize> {
        self.find(from, until, |m| m.newline)
    }

    /// The first `:` at or after `from`, looking no further than `until`.
    #[inline]
    pub(crate) fn colon(&mut self, from: usize, until: usize) -> Option<usize> {
        self.find(from, until, |m| m.colon)
    }

    #[inline]
    fn find(&mut self, from: usize, until: usize, pick: impl Fn(&Masks) -> u64) -> Option<usize> {
        let end = until.min(self.datagram.len());
        let mut at = from;
        while at < end {
            if at.wrapping_sub(self.base) >= 64 {
                self.load(at);
            }
            let offset = at - self.base;
            let hits = pick(&self.masks) & (u64::MAX << offset);
            if hits != 0 {
                let found = self.base + hits.trailing_zeros() as usize;
                return (found < end).then_some(found);
            }
            at = self.base + 64;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host16_matches_table() {
        for first in (0..=255u8).step_by(16) {
            let mut chunk = [0u8; 16];
            for (i, b) in chunk.iter_mut().enumerate() {
                *b = first.wrapping_add(i as u8);
            }
            assert_eq!(host16(&chunk), host16_scalar(&chunk), "{first}");
        }
    }

    #[test]
    fn sse2_matches_scalar() {
        let mut block = [b'a'; 64];
        for (i, b) in block.iter_mut().enumerate() {
            if i % 7 == 0 {
                *b = b'\n';
            } else if i % 5 == 0 {
                *b = b':';
            }
        }
        assert_eq!(masks(&block), masks_scalar(&block));
        assert_eq!(masks_scalar(&block).newline & 1, 1);
    }

    #[test]
    fn cursor_finds_across_blocks_and_tails() {
        let mut data = vec![b'x'; 200];
        data[3] = b':';
        data[70] = b'\n';
        data[150] = b':';
        data[199] = b'\n';
        let mut c = BlockCursor::new(&data);
        assert_eq!(c.colon(0, 200), Some(3));
        assert_eq!(c.newline(0, 200), Some(70));
        assert_eq!(c.colon(4, 200), Some(150));
        assert_eq!(c.newline(71, 200), Some(199));
        assert_eq!(c.newline(0, 50), None);
        assert_eq!(c.colon(151, 200), None);
        assert_eq!(c.newline(200, 300), None);
    }
}
