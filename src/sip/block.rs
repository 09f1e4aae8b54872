//! Where the newlines are, 64 bytes at a time, and whether a control
//! character is out of place; where a header name's colon is.
//!
//! Framing needs, for every header line, the `:` after its name and the
//! `\n` that ends it. Asking memchr twice per line costs a call and a setup
//! each time for lines of ~40 bytes; one SIMD pass over 64 bytes finds the
//! line ends of one or two lines at once, the next one a `trailing_zeros`
//! away, and one 32-byte compare at the line's start finds its colon.
//!
//! Most of the scanner's `unsafe` is here: the SIMD loads, each reading 16
//! or 32 bytes from inside a 65-, 32- or 16-byte array. [`host16`] uses
//! the same instructions to find where a host name ends. The rest is the
//! entries into the AVX2 builds (`Scanner::scan_avx2`, `Scanner::frame_avx2`,
//! `call_id::find_avx2`), each of which holds an [`Avx2`] token.
//!
//! Which instruction set computes the masks is a type, [`Width`]: framing is
//! compiled once for [`Baseline`] and once for [`Avx2`], so its inner loops
//! test nothing at run time, and the AVX2 code is reached only through an
//! `Avx2` value, which only [`Avx2::detect`] makes, on a CPU that has AVX2.

use super::lex;

/// Bit `i` is set when byte `i` of the block is `\n` (`newline`);
/// `suspect` when the block holds a control character that may
/// be stray (see [`is_stray`]): any but LF and the CR of a CRLF. Bytes
/// from 0x80 (UTF-8) make a block suspect too: one signed compare finds
/// both, and the look at the bytes clears them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Masks {
    pub(crate) newline: u64,
    pub(crate) suspect: bool,
}

/// A block and the byte after it (whether a CR at its end ends a line).
pub(crate) type Window = [u8; 65];

/// The instruction set the block masks and the colon search are computed
/// with. Each implementation is a zero-sized type, so a [`LineCursor`] or a
/// [`find_colon`] generic over it is compiled for one instruction set.
pub(crate) trait Width: Copy {
    /// The masks of `window`.
    fn masks(self, window: &Window) -> Masks;
    /// Bit `i` is set when byte `i` of `chunk` is `:`.
    fn colons(self, chunk: &[u8; 32]) -> u32;
}

/// What every CPU of the target has: SSE2 on x86_64, where it is part of
/// the baseline, and portable code elsewhere.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Baseline;

/// Proof that this CPU has AVX2: zero-sized, and made only by
/// [`Avx2::detect`] (its field is private), so holding one is what lets
/// safe code run the AVX2 masks.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct Avx2(());

impl Avx2 {
    /// An `Avx2` when this CPU has AVX2. Cheap after the first call: std
    /// caches what CPUID said.
    #[inline]
    pub(crate) fn detect() -> Option<Avx2> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return Some(Avx2(()));
        }
        None
    }

    /// [`Avx2::detect`], unless a test asks for the baseline path: what
    /// the scanner's framing takes.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    #[inline(always)]
    pub(crate) fn for_framing() -> Option<Avx2> {
        if sse2_forced() {
            return None;
        }
        Avx2::detect()
    }
}

#[cfg(test)]
thread_local! {
    /// Set by tests that frame with the SSE2 path on a CPU with AVX2.
    pub(crate) static FORCE_SSE2: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(test)]
fn sse2_forced() -> bool {
    FORCE_SSE2.with(std::cell::Cell::get)
}

#[cfg(not(test))]
#[inline(always)]
fn sse2_forced() -> bool {
    false
}

/// The masks of `window` for this CPU.
#[cfg(test)]
pub(crate) fn masks(window: &Window) -> Masks {
    match Avx2::detect() {
        Some(avx2) => avx2.masks(window),
        None => Baseline.masks(window),
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
impl Width for Baseline {
    #[inline(always)]
    fn masks(self, window: &Window) -> Masks {
        // SAFETY: SSE2 is part of the x86_64 baseline, so every x86_64 CPU
        // has it.
        unsafe { masks_sse2(window) }
    }

    #[inline(always)]
    fn colons(self, chunk: &[u8; 32]) -> u32 {
        let (low, high) = chunk.split_at(16);
        let half = |h: &[u8]| {
            h.first_chunk::<16>()
                .map_or(0, |h| needle16(h, Needle::Byte(b':')))
        };
        half(low) | half(high) << 16
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
impl Width for Avx2 {
    #[inline(always)]
    fn masks(self, window: &Window) -> Masks {
        // SAFETY: `self` is an `Avx2`, which only `Avx2::detect` makes, and
        // only on a CPU that has AVX2.
        unsafe { masks_avx2(window) }
    }

    #[inline(always)]
    fn colons(self, chunk: &[u8; 32]) -> u32 {
        // SAFETY: as for `masks`: `self` proves that this CPU has AVX2.
        unsafe { colons_avx2(chunk) }
    }
}

/// [`masks_sse2`] 32 bytes at a time: half the instructions per block.
/// Inlined where the caller is compiled for AVX2 too (the scanner's
/// framing is), a call elsewhere.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx2")]
#[inline]
fn masks_avx2(window: &Window) -> Masks {
    use std::arch::x86_64::{
        _mm256_and_si256, _mm256_andnot_si256, _mm256_cmpeq_epi8, _mm256_cmpgt_epi8,
        _mm256_loadu_si256, _mm256_movemask_epi8, _mm256_or_si256, _mm256_set1_epi8,
        _mm256_setzero_si256, _mm256_testz_si256,
    };
    let newline = _mm256_set1_epi8(b'\n' as i8);
    let cr = _mm256_set1_epi8(b'\r' as i8);
    let space = _mm256_set1_epi8(0x20);
    let mut masks = Masks::default();
    let mut suspect = _mm256_setzero_si256();
    for k in 0..2 {
        // SAFETY: bytes 32k..32k+33 lie inside the 65-byte array; loadu
        // has no alignment requirement.
        let (v, next) = unsafe {
            let at = window.as_ptr().add(32 * k);
            (
                _mm256_loadu_si256(at.cast()),
                _mm256_loadu_si256(at.add(1).cast()),
            )
        };
        let is_newline = _mm256_cmpeq_epi8(v, newline);
        masks.newline |= u64::from(_mm256_movemask_epi8(is_newline) as u32) << (32 * k);
        // Signed `v < 0x20`, as in the SSE2 version.
        let control = _mm256_cmpgt_epi8(space, v);
        let crlf = _mm256_and_si256(_mm256_cmpeq_epi8(v, cr), _mm256_cmpeq_epi8(next, newline));
        let allowed = _mm256_or_si256(is_newline, crlf);
        suspect = _mm256_or_si256(suspect, _mm256_andnot_si256(allowed, control));
    }
    masks.suspect = _mm256_testz_si256(suspect, suspect) == 0;
    masks
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "sse2")]
fn masks_sse2(window: &Window) -> Masks {
    use std::arch::x86_64::{
        _mm_and_si128, _mm_andnot_si128, _mm_cmpeq_epi8, _mm_cmplt_epi8, _mm_loadu_si128,
        _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8, _mm_setzero_si128,
    };
    let newline = _mm_set1_epi8(b'\n' as i8);
    let cr = _mm_set1_epi8(b'\r' as i8);
    let space = _mm_set1_epi8(0x20);
    let mut masks = Masks::default();
    let mut suspect = _mm_setzero_si128();
    for k in 0..4 {
        // SAFETY: bytes 16k..16k+17 lie inside the 65-byte array; loadu
        // has no alignment requirement.
        let (v, next) = unsafe {
            let at = window.as_ptr().add(16 * k);
            (
                _mm_loadu_si128(at.cast()),
                _mm_loadu_si128(at.add(1).cast()),
            )
        };
        let is_newline = _mm_cmpeq_epi8(v, newline);
        masks.newline |= u64::from(_mm_movemask_epi8(is_newline) as u16) << (16 * k);
        // Signed `v < 0x20`: 0x00 to 0x1f, and 0x80 up. Not LF, nor CR
        // when LF follows: one OR a chunk, one test a block.
        let control = _mm_cmplt_epi8(v, space);
        let crlf = _mm_and_si128(_mm_cmpeq_epi8(v, cr), _mm_cmpeq_epi8(next, newline));
        let allowed = _mm_or_si128(is_newline, crlf);
        suspect = _mm_or_si128(suspect, _mm_andnot_si128(allowed, control));
    }
    masks.suspect = _mm_movemask_epi8(suspect) != 0;
    masks
}

#[cfg(not(target_arch = "x86_64"))]
impl Width for Baseline {
    #[inline(always)]
    fn masks(self, window: &Window) -> Masks {
        masks_scalar(window)
    }

    #[inline(always)]
    fn colons(self, chunk: &[u8; 32]) -> u32 {
        let mut bits = 0;
        for (i, &b) in chunk.iter().enumerate() {
            bits |= u32::from(b == b':') << i;
        }
        bits
    }
}

/// Never made off x86_64 ([`Avx2::detect`] says `None`); the portable code.
#[cfg(not(target_arch = "x86_64"))]
impl Width for Avx2 {
    #[inline(always)]
    fn masks(self, window: &Window) -> Masks {
        Baseline.masks(window)
    }

    #[inline(always)]
    fn colons(self, chunk: &[u8; 32]) -> u32 {
        Baseline.colons(chunk)
    }
}

/// The portable definition, and the reference the SSE2 path is tested against.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
pub(crate) fn masks_scalar(window: &Window) -> Masks {
    let mut masks = Masks::default();
    for (i, &b) in window[..64].iter().enumerate() {
        masks.newline |= u64::from(b == b'\n') << i;
        let crlf = b == b'\r' && window[i + 1] == b'\n';
        masks.suspect |= (b <= 0x1f || b >= 0x80) && b != b'\n' && !crlf;
    }
    masks
}

/// Whether the control character at `at` is out of place in a start line
/// or a header field: allowed are HTAB, LF, the CR of a CRLF, and any
/// other but CR after a backslash (a quoted-pair, RFC 3261 §25.1, which
/// lets RFC 4475's intmeth carry NUL, BEL and DEL in a quoted display
/// name). A backslash that is itself escaped is not told apart.
pub(crate) fn is_stray(datagram: &[u8], at: usize) -> bool {
    match datagram.get(at) {
        Some(&b) if b <= 0x1f => match b {
            b'\t' | b'\n' => false,
            b'\r' => datagram.get(at + 1) != Some(&b'\n'),
            _ => at == 0 || datagram[at - 1] != b'\\',
        },
        _ => false,
    }
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

/// What [`find16`] looks for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Needle {
    /// This byte.
    Byte(u8),
    /// Either of two bytes.
    Either(u8, u8),
    /// What a URI or a Call-ID may not hold unescaped: a byte up to SP
    /// (controls, SP) or DEL; bytes from 0x80 are allowed.
    Illegal,
}

/// Bit `i` is set when byte `i` of `chunk` is what `needle` looks for;
/// bits 16 and above are clear.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[inline(always)]
pub(crate) fn needle16(chunk: &[u8; 16], needle: Needle) -> u32 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    // SAFETY: SSE2 is part of the x86_64 baseline, so every x86_64 CPU has
    // these instructions; the load reads the 16 bytes of `chunk`, and
    // loadu has no alignment requirement.
    unsafe {
        let v = _mm_loadu_si128(chunk.as_ptr().cast());
        let hit = match needle {
            Needle::Byte(b) => _mm_cmpeq_epi8(v, _mm_set1_epi8(b as i8)),
            Needle::Either(a, b) => _mm_or_si128(
                _mm_cmpeq_epi8(v, _mm_set1_epi8(a as i8)),
                _mm_cmpeq_epi8(v, _mm_set1_epi8(b as i8)),
            ),
            Needle::Illegal => _mm_or_si128(
                // Unsigned `v <= 0x20`: the minimum is `v` itself.
                _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x20)), v),
                _mm_cmpeq_epi8(v, _mm_set1_epi8(0x7f)),
            ),
        };
        _mm_movemask_epi8(hit) as u32 & 0xffff
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
pub(crate) fn needle16(chunk: &[u8; 16], needle: Needle) -> u32 {
    needle16_scalar(chunk, needle)
}

/// The portable definition of [`needle16`], and its reference in tests.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
#[inline]
pub(crate) fn needle16_scalar(chunk: &[u8; 16], needle: Needle) -> u32 {
    let mut bits = 0;
    for (i, &b) in chunk.iter().enumerate() {
        let hit = match needle {
            Needle::Byte(x) => b == x,
            Needle::Either(x, y) => b == x || b == y,
            Needle::Illegal => b <= b' ' || b == 0x7f,
        };
        bits |= u32::from(hit) << i;
    }
    bits
}

/// The index of the first byte of `s` that `needle` matches, 16 bytes per
/// step, or `None`; `s` must be at least 16 bytes long (the last step reads
/// the last 16 bytes again, without the bits of those already looked at).
/// The callers take shorter slices eight bytes at a time.
#[inline(always)]
pub(crate) fn find16(s: &[u8], needle: Needle) -> Option<usize> {
    debug_assert!(s.len() >= 16);
    let mut at = 0;
    while let Some(chunk) = s.get(at..).and_then(<[u8]>::first_chunk::<16>) {
        let hits = needle16(chunk, needle);
        if hits != 0 {
            return Some(at + hits.trailing_zeros() as usize);
        }
        at += 16;
    }
    let last = s.last_chunk::<16>()?;
    if at == s.len() {
        return None;
    }
    let hits = needle16(last, needle) >> (at - (s.len() - 16));
    (hits != 0).then(|| at + hits.trailing_zeros() as usize)
}

/// Hands out the datagram's line ends (`\n`) in order, 64-byte blocks of
/// it at a time, and notes the first stray control character of the
/// blocks it loads.
///
/// Framing wants every line end once, in order: each block's newline bits
/// are popped lowest first (a `trailing_zeros` and a clear), so a line
/// costs no search and no shift, and the next block is loaded only when
/// the bits of this one run out.
pub(crate) struct LineCursor<'d, W: Width> {
    datagram: &'d [u8],
    /// The instruction set of the masks: zero-sized.
    width: W,
    /// Offset of the block whose newlines are in `pending`.
    block: usize,
    /// Bit `i`: byte `block + i` is a `\n` not yet handed out.
    pending: u64,
    /// The first control character (see [`LineCursor::first_stray_control`])
    /// in the blocks loaded so far, or `usize::MAX`.
    stray_control: usize,
    /// Where the message starts: the CRs and LFs of keep-alives before it
    /// are not checked.
    controls_from: usize,
}

/// `W`: the instruction set of the masks, a type so that each instance is
/// compiled for one (see [`Width`]).
impl<'d, W: Width> LineCursor<'d, W> {
    /// A cursor over `datagram` whose message starts at `from`: the first
    /// line end it hands out is the first at or after `from`.
    #[inline(always)]
    pub(crate) fn new(datagram: &'d [u8], from: usize, width: W) -> Self {
        let mut cursor = LineCursor {
            datagram,
            width,
            block: from & !63,
            pending: 0,
            stray_control: usize::MAX,
            controls_from: from,
        };
        cursor.pending = cursor.load(cursor.block) & (u64::MAX << (from & 63));
        cursor
    }

    /// The instruction set of the masks, for searches on the same lines.
    #[inline(always)]
    pub(crate) fn width(&self) -> W {
        self.width
    }

    /// Where the first stray control character ([`is_stray`]) lies, from
    /// the message's start on, among the blocks loaded so far
    /// (`usize::MAX`: none). Framing loads every block up to the end of the
    /// header section, so a stray byte there is found: a NUL or a lone CR
    /// that a parser behind us would read as the end of a string or of a
    /// line, where we read on.
    pub(crate) fn first_stray_control(&self) -> usize {
        self.stray_control
    }

    /// The next line end, or `None` past the last.
    #[inline(always)]
    pub(crate) fn next_newline(&mut self) -> Option<usize> {
        if self.pending == 0 {
            self.next_block()?;
        }
        let at = self.block + self.pending.trailing_zeros() as usize;
        self.pending &= self.pending - 1;
        Some(at)
    }

    /// Loads blocks until one has a line end; `None` at the end of the
    /// datagram. Inlined, so that the masks are computed with the
    /// caller's instruction set.
    #[inline(always)]
    fn next_block(&mut self) -> Option<()> {
        while self.pending == 0 {
            let next = self.block + 64;
            if next >= self.datagram.len() {
                return None;
            }
            self.block = next;
            self.pending = self.load(next);
        }
        Some(())
    }

    /// The newline mask of the block at `block` (a multiple of 64), noting
    /// its stray control characters. Blocks are loaded in order, each
    /// once, so the first stray byte noted is the first of the message.
    #[inline(always)]
    fn load(&mut self, block: usize) -> u64 {
        let masks = match self.datagram.get(block..).and_then(<[u8]>::first_chunk) {
            Some(window) => self.width.masks(window),
            None => self.tail_masks(block),
        };
        if masks.suspect {
            self.note_controls(block);
        }
        masks.newline
    }

    /// Finds the first stray control character of the block at `block`,
    /// if none was found before. Out of line: nearly every block has no
    /// control character but LF and the CR before it, which the masks rule
    /// out without looking at bytes.
    #[cold]
    #[inline(never)]
    fn note_controls(&mut self, block: usize) {
        if self.stray_control != usize::MAX {
            return;
        }
        let from = block.max(self.controls_from);
        let end = (block + 64).min(self.datagram.len());
        if let Some(at) = (from..end).find(|&at| is_stray(self.datagram, at)) {
            self.stray_control = at;
        }
    }

    /// The masks of the last block, padded with bytes that are neither
    /// `\n` nor control characters; none past the end.
    #[inline(never)]
    fn tail_masks(&self, block: usize) -> Masks {
        let mut window = [b'x'; 65];
        let tail = self.datagram.get(block..).unwrap_or_default();
        if tail.is_empty() {
            return Masks::default();
        }
        let tail = &tail[..tail.len().min(65)];
        window[..tail.len()].copy_from_slice(tail);
        self.width.masks(&window)
    }
}

/// The first `:` in `datagram[from..to]`. A header name is short, so its
/// colon is nearly always in the 32 bytes from the line's start: one
/// compare of those, where a search would set up for the whole line.
///
/// Returns `usize::MAX` when there is none, or a position at or after `to`:
/// the caller compares with `to` anyway.
#[inline(always)]
pub(crate) fn find_colon<W: Width>(datagram: &[u8], from: usize, to: usize, width: W) -> usize {
    if let Some(chunk) = datagram.get(from..).and_then(<[u8]>::first_chunk::<32>) {
        let hits = width.colons(chunk);
        if hits != 0 {
            return from + hits.trailing_zeros() as usize;
        }
        if to <= from + 32 {
            return usize::MAX;
        }
    }
    find_colon_far(datagram, from, to)
}

/// [`find_colon`] for a name that does not end in 32 bytes, or a line
/// near the end of the datagram.
#[cold]
#[inline(never)]
fn find_colon_far(datagram: &[u8], from: usize, to: usize) -> usize {
    datagram
        .get(from..to)
        .and_then(|s| memchr::memchr(b':', s))
        .map_or(usize::MAX, |at| from + at)
}

/// [`Width::colons`] with AVX2: one compare of the 32 bytes.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx2")]
#[inline]
fn colons_avx2(chunk: &[u8; 32]) -> u32 {
    use std::arch::x86_64::{
        _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_movemask_epi8, _mm256_set1_epi8,
    };
    // SAFETY: the load reads the 32 bytes of `chunk`; loadu has no
    // alignment requirement.
    let v = unsafe { _mm256_loadu_si256(chunk.as_ptr().cast()) };
    _mm256_movemask_epi8(_mm256_cmpeq_epi8(v, _mm256_set1_epi8(b':' as i8))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has_avx2() -> bool {
        Avx2::detect().is_some()
    }

    #[test]
    fn needle16_matches_scalar() {
        let needles = [
            Needle::Byte(b'>'),
            Needle::Byte(0),
            Needle::Byte(0xff),
            Needle::Either(b'"', b'\\'),
            Needle::Illegal,
        ];
        for first in 0..=255u8 {
            let chunk: [u8; 16] = std::array::from_fn(|i| first.wrapping_add(i as u8));
            for needle in needles {
                assert_eq!(
                    needle16(&chunk, needle),
                    needle16_scalar(&chunk, needle),
                    "{first} {needle:?}"
                );
            }
        }
    }

    #[test]
    fn find16_matches_position() {
        let alphabet = [
            b'a', b'>', b'"', b'\\', b' ', 0x7f, 0x80, 0, b'!', 0x21, 0xff,
        ];
        let mut seed = 5u64;
        for _ in 0..50_000 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let len = 16 + (seed >> 58) as usize;
            let mut s = vec![b'a'; len];
            for (k, b) in s.iter_mut().enumerate() {
                let r = seed.rotate_left(7 * k as u32);
                if r.is_multiple_of(11) {
                    *b = alphabet[((r >> 8) % alphabet.len() as u64) as usize];
                }
            }
            for needle in [
                Needle::Byte(b'>'),
                Needle::Either(b'"', b'\\'),
                Needle::Illegal,
            ] {
                let want = s.iter().position(|&b| match needle {
                    Needle::Byte(x) => b == x,
                    Needle::Either(x, y) => b == x || b == y,
                    Needle::Illegal => b <= b' ' || b == 0x7f,
                });
                assert_eq!(find16(&s, needle), want, "{s:?} {needle:?}");
            }
        }
    }

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

    /// The SSE2 and (where the CPU has it) the AVX2 masks of `window`,
    /// each checked against the scalar definition.
    fn check_paths(window: &Window, what: &str) -> Masks {
        let want = masks_scalar(window);
        assert_eq!(Baseline.masks(window), want, "SSE2 {what}");
        if let Some(avx2) = Avx2::detect() {
            assert_eq!(avx2.masks(window), want, "AVX2 {what}");
        }
        want
    }

    #[test]
    fn vector_paths_match_scalar_on_random_windows() {
        let alphabet = [
            b'a', b'\n', b'\r', b':', 0, b'\t', 0x1f, 0x20, 0x7f, 0x80, 0xff, b'\\',
        ];
        let mut seed = 11u64;
        for round in 0..20_000 {
            let mut window = [0u8; 65];
            for b in window.iter_mut() {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                *b = if round % 2 == 0 {
                    alphabet[(seed >> 59) as usize % alphabet.len()]
                } else {
                    (seed >> 56) as u8
                };
            }
            check_paths(&window, &format!("{window:?}"));
        }
    }

    #[test]
    fn sse2_matches_scalar() {
        let mut window = [b'a'; 65];
        for (i, b) in window.iter_mut().enumerate() {
            if i % 7 == 0 {
                *b = b'\n';
            } else if i % 5 == 0 {
                *b = b':';
            }
        }
        check_paths(&window, "sevens and fives");
        assert_eq!(masks(&window), masks_scalar(&window));
        assert_eq!(masks_scalar(&window).newline & 1, 1);
        assert!(!masks_scalar(&window).suspect);
        // Every byte value at every position, a CR before an LF at every
        // position (the last one's LF beyond the block), and a lone CR.
        for first in 0..=255u8 {
            let window: Window = std::array::from_fn(|i| first.wrapping_add(i as u8));
            check_paths(&window, &format!("{first}"));
        }
        for at in 0..64 {
            let mut window = [b'a'; 65];
            window[at] = b'\r';
            window[at + 1] = b'\n';
            assert!(!check_paths(&window, &format!("{at}")).suspect, "{at}");
            window[at + 1] = b'b';
            assert!(check_paths(&window, &format!("{at}")).suspect, "{at}");
            window[at] = b'\t';
            assert!(check_paths(&window, &format!("{at}")).suspect, "{at}");
        }
        let mut window = [b'a'; 65];
        window[64] = 0;
        assert!(
            !check_paths(&window, "NUL after").suspect,
            "the byte after the block is not its own"
        );
    }

    /// Every line end a cursor hands out from `from` on, and the first
    /// stray control character it noted.
    fn line_ends(data: &[u8], from: usize, avx2: bool) -> (Vec<usize>, usize) {
        fn run<W: Width>(data: &[u8], from: usize, width: W) -> (Vec<usize>, usize) {
            let mut c = LineCursor::new(data, from, width);
            let ends: Vec<usize> = std::iter::from_fn(|| c.next_newline()).collect();
            assert_eq!(c.next_newline(), None);
            (ends, c.first_stray_control())
        }
        match Avx2::detect().filter(|_| avx2) {
            Some(avx2) => run(data, from, avx2),
            None => run(data, from, Baseline),
        }
    }

    /// A control character is stray unless it is HTAB, LF, the CR of a
    /// CRLF (across blocks too), or escaped; keep-alive bytes before the
    /// message are not checked, nor is the padding of the last block.
    #[test]
    fn stray_controls_are_found_in_loaded_blocks() {
        let first = |data: &[u8], from: usize| {
            let mut stray = Vec::new();
            for avx2 in [false, has_avx2()] {
                stray.push(line_ends(data, from, avx2).1);
            }
            assert_eq!(stray[0], stray[1], "SSE2 and AVX2");
            stray[0]
        };
        assert_eq!(first(b"a\tb\r\nc\n", 0), usize::MAX);
        assert_eq!(first(b"a\\\x00b\\\x07\n", 0), usize::MAX);
        assert_eq!(first(b"ab\x00\n", 0), 2);
        assert_eq!(first(b"a\rb\n", 0), 1);
        assert_eq!(first(b"\r\rab\x01\n", 2), 4);
        assert_eq!(first(b"\r\rab\n", 2), usize::MAX);
        assert_eq!(first(b"a\\\r\n", 0), usize::MAX);
        assert_eq!(first(b"a\\\rb\n", 0), 2, "a CR cannot be escaped");
        let mut long = vec![b'x'; 200];
        long[63] = b'\r';
        long[64] = b'\n';
        long[199] = b'\n';
        assert_eq!(first(&long, 0), usize::MAX, "a CRLF across blocks");
        long[64] = b'y';
        assert_eq!(first(&long, 0), 63);
        long[64] = b'\n';
        long[150] = 0;
        assert_eq!(first(&long, 0), 150);
        assert_eq!(first(&long[..150], 0), usize::MAX);
    }

    #[test]
    fn cursor_hands_out_every_line_end_in_order() {
        let mut seed = 17u64;
        for round in 0..5_000 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let len = 1 + (seed >> 55) as usize;
            let data: Vec<u8> = (0..len)
                .map(|k| {
                    let r = seed.rotate_left(k as u32 % 64) ^ (k as u64).wrapping_mul(0x9e37);
                    if r.is_multiple_of(7) {
                        b'\n'
                    } else {
                        b'a'
                    }
                })
                .collect();
            let from = round % len;
            let want: Vec<usize> = (from..len).filter(|&i| data[i] == b'\n').collect();
            for avx2 in [false, has_avx2()] {
                assert_eq!(line_ends(&data, from, avx2).0, want, "{from} {data:?}");
            }
        }
    }

    #[test]
    fn colon_is_found_near_and_far() {
        let mut data = vec![b'x'; 200];
        data[3] = b':';
        data[70] = b':';
        data[150] = b':';
        for avx2 in [false, has_avx2()] {
            let find_colon = |d: &[u8], from, to, avx2| {
                let at = match Avx2::detect().filter(|_| avx2) {
                    Some(avx2) => super::find_colon(d, from, to, avx2),
                    None => super::find_colon(d, from, to, Baseline),
                };
                (at < to).then_some(at)
            };
            assert_eq!(find_colon(&data, 0, 200, avx2), Some(3));
            assert_eq!(find_colon(&data, 0, 3, avx2), None);
            assert_eq!(find_colon(&data, 0, 4, avx2), Some(3));
            assert_eq!(find_colon(&data, 4, 200, avx2), Some(70), "past 32 bytes");
            assert_eq!(find_colon(&data, 4, 70, avx2), None);
            assert_eq!(find_colon(&data, 4, 36, avx2), None);
            assert_eq!(find_colon(&data, 71, 200, avx2), Some(150));
            assert_eq!(find_colon(&data, 151, 200, avx2), None, "near the end");
            assert_eq!(find_colon(&data, 140, 200, avx2), Some(150));
            assert_eq!(find_colon(&data, 199, 200, avx2), None);
        }
    }
}
