//! Byte-level lexing shared by the scanner and the field parsers.
//!
//! Header values are ranges of the datagram that may still hold folded line
//! breaks (`CRLF` followed by SP or HT). RFC 3261 §7.3.1 makes a fold
//! equivalent to one SP, so inside a value every CR, LF, SP and HT is linear
//! white space (LWS). The framing code has already proved that a CR or LF
//! inside a value is part of a fold, which is what lets [`skip_lws`] treat
//! them all alike.

use super::block::{find16, host16, Needle};

/// Character classes, one bit each in [`CLASS`]: one table load answers
/// any of them, where `matches!` over several ranges costs a compare each.
pub(crate) const TOKEN: u8 = 1;
/// `alphanum` `-` `.`: a host name or IPv4 address.
pub(crate) const HOST: u8 = 2;
/// A token, or `:` `[` `]` (a generic parameter value that is a host).
pub(crate) const GEN_VALUE: u8 = 4;
/// SP, HT, CR, LF: inside a value, a fold is LWS too (see the module doc).
pub(crate) const LWS: u8 = 8;
/// `alphanum` `+` `-` `.`: RFC 3986 scheme characters after the first.
pub(crate) const SCHEME: u8 = 16;

/// RFC 3261 `token` characters are alphanum and `-.!%*_+` `` ` `` `'~`.
pub(crate) const CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        let alnum = b.is_ascii_alphanumeric();
        let token = alnum
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        let mut class = 0;
        if token {
            class |= TOKEN | GEN_VALUE;
        }
        if matches!(b, b':' | b'[' | b']') {
            class |= GEN_VALUE;
        }
        if alnum || b == b'-' || b == b'.' {
            class |= HOST;
        }
        if alnum || matches!(b, b'+' | b'-' | b'.') {
            class |= SCHEME;
        }
        if matches!(b, b' ' | b'\t' | b'\r' | b'\n') {
            class |= LWS;
        }
        table[c] = class;
        c += 1;
    }
    table
};

/// Whether `b` is in any of the classes `mask`.
#[inline(always)]
pub(crate) fn is(b: u8, mask: u8) -> bool {
    CLASS[b as usize] & mask != 0
}

#[inline]
pub(crate) fn is_token(b: u8) -> bool {
    is(b, TOKEN)
}

#[inline]
pub(crate) fn is_lws(b: u8) -> bool {
    is(b, LWS)
}

/// Index of the first byte at or after `at` not in the classes `mask`
/// (`s.len()` if none).
#[inline]
pub(crate) fn class_end(s: &[u8], mut at: usize, mask: u8) -> usize {
    while at < s.len() && is(s[at], mask) {
        at += 1;
    }
    at
}

/// [`class_end`] for runs that are usually long (host names, parameter
/// values): four bytes per test while they all belong, one branch where
/// the byte loop takes four.
#[inline]
pub(crate) fn long_class_end(s: &[u8], mut at: usize, mask: u8) -> usize {
    while let Some(&[a, b, c, d]) = s.get(at..at + 4) {
        let all = CLASS[a as usize] & CLASS[b as usize] & CLASS[c as usize] & CLASS[d as usize];
        if all & mask == 0 {
            break;
        }
        at += 4;
    }
    class_end(s, at, mask)
}

/// The end of the run of [`HOST`] characters from `at` (a host name or
/// IPv4 address): 16 bytes per test with [`host16`]. Names are 10 to 30
/// bytes, where [`long_class_end`] spends most of its time on the tail.
/// (Parameter names and values, mostly shorter than 16 bytes, gained
/// nothing from the same SSE2 test of their classes.)
#[inline(always)]
pub(crate) fn host_end(s: &[u8], mut at: usize) -> usize {
    while let Some(chunk) = s.get(at..).and_then(<[u8]>::first_chunk::<16>) {
        // Bit 16 of the complement is set, so the run is at most 16.
        let run = (!host16(chunk)).trailing_zeros();
        at += run as usize;
        if run < 16 {
            return at;
        }
    }
    // Fewer than 16 bytes left: the last 16 of `s` again, without the bits
    // of those before `at`; the bits shifted in past the end are clear, so
    // the run stops at `s.len()` at the latest.
    match s.last_chunk::<16>() {
        Some(last) if at < s.len() => {
            let bits = host16(last) >> (at - (s.len() - 16));
            at + (!bits).trailing_zeros() as usize
        }
        _ => class_end(s, at, HOST),
    }
}

/// [`long_class_end`] for a class that holds every [`HOST`] character
/// (tokens, parameter values): the run of host characters first, 16 bytes
/// a step ([`host_end`]), then the class byte by byte from where that
/// stops. Branches, tags and most other parameter values are made of
/// letters, digits, `-` and `.` only.
#[inline(always)]
pub(crate) fn wide_class_end(s: &[u8], at: usize, mask: u8) -> usize {
    // Every host character is in each of these classes.
    debug_assert!(mask & (HOST | TOKEN | GEN_VALUE) != 0);
    long_class_end(s, host_end(s, at), mask)
}

/// Index of the first byte at or after `at` that is not LWS.
#[inline]
pub(crate) fn skip_lws(s: &[u8], at: usize) -> usize {
    class_end(s, at, LWS)
}

/// `s` without leading and trailing LWS.
#[inline]
pub(crate) fn trim_lws(s: &[u8]) -> &[u8] {
    let start = skip_lws(s, 0);
    let mut end = s.len();
    while end > start && is_lws(s[end - 1]) {
        end -= 1;
    }
    &s[start..end]
}

/// Index one past the end of the token starting at `at` (== `at` if none).
#[inline]
pub(crate) fn token_end(s: &[u8], at: usize) -> usize {
    class_end(s, at, TOKEN)
}

/// Whether `s` is a non-empty token.
pub(crate) fn is_token_str(s: &[u8]) -> bool {
    // Branch-free: header names are short and almost always valid.
    !s.is_empty() && s.iter().fold(true, |ok, &b| ok & is_token(b))
}

/// Given `s[at] == b'"'`, the index one past the closing quote, honouring
/// quoted-pair escapes. `None` when the string is unterminated.
pub(crate) fn quoted_string_end(s: &[u8], at: usize) -> Option<usize> {
    debug_assert_eq!(s.get(at), Some(&b'"'));
    let mut i = at + 1;
    loop {
        let rest = &s[i..];
        i += if rest.len() >= 16 {
            find16(rest, Needle::Either(b'"', b'\\'))?
        } else {
            find_first(rest, |w| bytes_equal(w, b'"') | bytes_equal(w, b'\\'))?
        };
        if s[i] == b'"' {
            return Some(i + 1);
        }
        // quoted-pair: `\` then any octet but CR and LF.
        if matches!(s.get(i + 1), None | Some(b'\r') | Some(b'\n')) {
            return None;
        }
        i += 2;
    }
}

/// Splits a comma-separated header value (Via, Route, Record-Route, Contact)
/// into its elements, ignoring commas inside quoted strings and `<...>`.
///
/// Each element is trimmed of LWS. Empty elements are yielded as empty
/// slices so that callers can reject them (`Via: a,,b` is malformed).
/// An unterminated quote or `<` makes the rest of the value one element,
/// which the element parser then rejects.
#[derive(Clone)]
pub(crate) struct CommaSplit<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> CommaSplit<'a> {
    pub(crate) fn new(value: &'a [u8]) -> Self {
        CommaSplit { rest: Some(value) }
    }
}

impl<'a> Iterator for CommaSplit<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let s = self.rest?;
        let mut i = 0;
        // memchr3 jumps to the next byte that matters; most values have
        // none of them and cost one call.
        while let Some(found) = memchr::memchr3(b',', b'"', b'<', &s[i..]) {
            i += found;
            match s[i] {
                b'"' => match quoted_string_end(s, i) {
                    Some(end) => i = end,
                    None => break,
                },
                b'<' => match find_byte(&s[i..], b'>') {
                    Some(gt) => i += gt + 1,
                    None => break,
                },
                _ => {
                    self.rest = Some(&s[i + 1..]);
                    return Some(trim_lws(&s[..i]));
                }
            }
        }
        self.rest = None;
        Some(trim_lws(s))
    }
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// In a word of eight bytes, the high bit of each byte equal to `b`. A
/// borrow can mark a byte above one truly marked, never a byte alone, so a
/// test for "any" is exact.
#[inline(always)]
pub(crate) fn bytes_equal(word: u64, b: u8) -> u64 {
    let x = word ^ (LO * u64::from(b));
    x.wrapping_sub(LO) & !x & HI
}

/// The high bit of each byte below `n` (`n` at most 0x80; bytes of 0x80 and
/// above are never marked), with the same borrow caveat.
#[inline(always)]
pub(crate) fn bytes_below(word: u64, n: u8) -> u64 {
    word.wrapping_sub(LO * u64::from(n)) & !word & HI
}

/// Whether `marks` flags any of the bytes of `s`, eight at a time: byte
/// folds over the ~45-byte values a scan checks spend most of their time on
/// the tail after the vector loop, one byte at a time. `s` shorter than
/// eight goes byte by byte through `byte`.
#[inline(always)]
pub(crate) fn any_byte(s: &[u8], marks: impl Fn(u64) -> u64, byte: impl Fn(u8) -> bool) -> bool {
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[at..at + 8]);
        u64::from_le_bytes(w)
    };
    if s.len() < 8 {
        return s.iter().any(|&b| byte(b));
    }
    let mut at = 0;
    while at + 8 <= s.len() {
        if marks(word(at)) != 0 {
            return true;
        }
        at += 8;
    }
    // The last eight bytes again, overlapping some already checked.
    at != s.len() && marks(word(s.len() - 8)) != 0
}

/// The index of the first byte of `s` that `marks` flags, eight bytes per
/// step: one branch per word where a byte loop takes one per byte, and
/// mispredicts where it stops. Only the lowest mark of a word is used, so
/// the borrow caveat of [`bytes_equal`] does not apply.
#[inline(always)]
pub(crate) fn find_first(s: &[u8], marks: impl Fn(u64) -> u64) -> Option<usize> {
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[at..at + 8]);
        u64::from_le_bytes(w)
    };
    if s.len() < 8 {
        // A byte alone in a word: its own mark is exact.
        return s.iter().position(|&b| marks(u64::from(b)) & 0x80 != 0);
    }
    let mut at = 0;
    while at + 8 <= s.len() {
        let m = marks(word(at));
        if m != 0 {
            return Some(at + (m.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    if at == s.len() {
        return None;
    }
    // The tail: the last eight bytes, without the marks of those already
    // checked (none of which matched, so no borrow comes up from them).
    let seen = 8 - (s.len() - at);
    let m = marks(word(s.len() - 8)) >> (8 * seen);
    (m != 0).then(|| at + (m.trailing_zeros() / 8) as usize)
}

/// The index of the first `b` in `s`: [`find16`] or, under 16 bytes,
/// [`find_first`], inline, for the short slices a scan searches, where a
/// call into memchr costs more than the search.
#[inline(always)]
pub(crate) fn find_byte(s: &[u8], b: u8) -> Option<usize> {
    if s.len() >= 16 {
        find16(s, Needle::Byte(b))
    } else {
        find_first(s, |w| bytes_equal(w, b))
    }
}

/// `a == b` inline for the short strings a scan compares (method names):
/// two overlapping four-byte loads each up to eight bytes, where `==` calls
/// memcmp.
#[inline(always)]
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let load4 = |s: &[u8], at: usize| {
        let mut w = [0u8; 4];
        w.copy_from_slice(&s[at..at + 4]);
        u32::from_le_bytes(w)
    };
    match n {
        0 => true,
        // Bytes 0, n/2 and n-1 are every byte of a string of one to three.
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..=8 => load4(a, 0) == load4(b, 0) && load4(a, n - 4) == load4(b, n - 4),
        _ => a == b,
    }
}

/// Whether `name` is `lower` in any case, `lower` being one to eight
/// lowercase letters (parameter names, URI schemes): the name read as one
/// word, bit 5 set in each byte, one compare, where `eq_ignore_ascii_case`
/// folds byte by byte. Exact for any bytes: only a letter, of either case,
/// becomes a lowercase letter with bit 5 set.
#[inline(always)]
pub(crate) fn is_name(name: &[u8], lower: &[u8]) -> bool {
    debug_assert!((1..=8).contains(&lower.len()));
    debug_assert!(lower.iter().all(u8::is_ascii_lowercase));
    let n = lower.len();
    if name.len() != n || n == 0 || n > 8 {
        return false;
    }
    let fold = 0x2020_2020_2020_2020u64 >> (8 * (8 - n));
    short_word(name) | fold == short_word(lower)
}

/// The one to eight bytes of `s` as a little-endian word, by two
/// overlapping loads (the bytes they share OR to themselves).
#[inline(always)]
fn short_word(s: &[u8]) -> u64 {
    let n = s.len();
    let load4 = |at: usize| {
        let mut w = [0u8; 4];
        w.copy_from_slice(&s[at..at + 4]);
        u64::from(u32::from_le_bytes(w))
    };
    match n {
        0 => 0,
        1..=3 => {
            u64::from(s[0])
                | u64::from(s[n / 2]) << (8 * (n / 2))
                | u64::from(s[n - 1]) << (8 * (n - 1))
        }
        _ => load4(0) | load4(n - 4) << (8 * (n - 4)),
    }
}

/// Parses an unsigned decimal number that must fit `max`. Leading zeros are
/// allowed (`Max-Forwards: 0068`); an empty string, a sign or an overflow
/// is `None`. `max` is a `u32`, so the `u64` value cannot overflow before
/// it is caught: no checked arithmetic, which cost a multiply-overflow
/// test per digit of Content-Length.
#[inline(always)]
pub(crate) fn parse_decimal(s: &[u8], max: u32) -> Option<u32> {
    if s.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(b - b'0');
        if n > u64::from(max) {
            return None;
        }
    }
    Some(n as u32)
}

/// The value of the run of digits at `from` and where it ends, in one
/// pass (`(0, from)` when there is none); `None` when the value passes
/// `max`, however many digits are left. `max` is a `u32`, so the value
/// cannot overflow before it is caught: no checked arithmetic, which
/// [`parse_decimal`] needs for its `u64` bound.
#[inline(always)]
pub(crate) fn leading_decimal(s: &[u8], from: usize, max: u32) -> Option<(u32, usize)> {
    let mut end = from;
    let mut n: u64 = 0;
    while let Some(digit) = s.get(end).map(|b| b.wrapping_sub(b'0')) {
        if digit > 9 {
            break;
        }
        n = n * 10 + u64::from(digit);
        if n > u64::from(max) {
            return None;
        }
        end += 1;
    }
    Some((n as u32, end))
}

/// Byte offset of `inner` within `outer`. `inner` must be a sub-slice of
/// `outer`; this is how parsed fields (slices) become edit positions.
#[inline]
pub(crate) fn offset_in(outer: &[u8], inner: &[u8]) -> usize {
    let offset = (inner.as_ptr() as usize).wrapping_sub(outer.as_ptr() as usize);
    debug_assert!(
        offset + inner.len() <= outer.len(),
        "slice is not inside the buffer"
    );
    offset
}

/// Writes the decimal digits of `n` into `out`, returning how many.
pub(crate) fn write_decimal(out: &mut [u8; 20], mut n: u64) -> &[u8] {
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &out[i..]
}

/// A hash of several byte strings for the proxy's own table keys
/// (transactions, dialogs, loop detection), eight bytes a step: FNV-1a's
/// byte-at-a-time loop was a seventh of a call's CPU. Each part's length
/// goes into its last word, so ("ab","c") and ("a","bc") differ. Not for
/// values another program must compute the same way (shard ownership,
/// rendezvous hashing): those stay on [`fnv1a`].
pub(crate) fn key_hash(parts: &[&[u8]]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut hash: u64 = 0x243f_6a88_85a3_08d3;
    for part in parts {
        let mut words = part.chunks_exact(8);
        for word in &mut words {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(word);
            hash = (hash ^ u64::from_le_bytes(bytes))
                .wrapping_mul(K)
                .rotate_left(31);
        }
        let rest = words.remainder();
        let mut bytes = [0u8; 8];
        bytes[..rest.len()].copy_from_slice(rest);
        let last = u64::from_le_bytes(bytes) ^ ((part.len() as u64) << 56);
        hash = (hash ^ last).wrapping_mul(K).rotate_left(31);
    }
    // MurmurHash3's finaliser: every input bit reaches every output bit.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// FNV-1a over several byte strings, each followed by a NUL so that
/// ("ab","c") and ("a","bc") differ. Used for values that must be the same
/// every time the same request is seen (stateless To tags, branch keys),
/// not for anything an attacker can exploit by colliding.
pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.iter().chain(b"\0") {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// `n` as 16 lowercase hex digits: a token that fits a tag or a branch.
pub(crate) fn hex16(n: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, digit) in out.iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comma_split_respects_quotes_and_angles() {
        let v = b"\"a, b\" <sip:x@y;p=1,2>;q=1 , <sip:z@w>,,";
        let parts: Vec<&[u8]> = CommaSplit::new(v).collect();
        assert_eq!(
            parts,
            vec![
                &b"\"a, b\" <sip:x@y;p=1,2>;q=1"[..],
                &b"<sip:z@w>"[..],
                &b""[..],
                &b""[..]
            ]
        );
    }

    #[test]
    fn words_match_bytes() {
        let alphabet = [
            0u8, 1, 8, 9, 0x1f, 0x20, 0x21, b'a', 0x7e, 0x7f, 0x80, 0x81, 0xfe, 0xff,
        ];
        for len in 0..20 {
            for at in 0..len {
                for &b in &alphabet {
                    for &fill in &alphabet {
                        let mut s = vec![fill; len];
                        s[at] = b;
                        for n in [0x21u8, 0x80] {
                            let want = s.iter().any(|&c| c < n);
                            assert_eq!(any_byte(&s, |w| bytes_below(w, n), |c| c < n), want);
                        }
                        let want = s.contains(&0x7f);
                        assert_eq!(any_byte(&s, |w| bytes_equal(w, 0x7f), |c| c == 0x7f), want);
                    }
                }
            }
        }
    }

    /// The next random string of up to 63 bytes (the seed steps once): `fill`
    /// with, about one byte in `one_in`, a byte of `alphabet`.
    fn sprinkled(seed: &mut u64, fill: u8, alphabet: &[u8], one_in: u64) -> Vec<u8> {
        *seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let mut s = vec![fill; (*seed >> 58) as usize];
        for (k, b) in s.iter_mut().enumerate() {
            let r = seed.rotate_left(5 * k as u32);
            if r.is_multiple_of(one_in) {
                *b = alphabet[((r >> 8) % alphabet.len() as u64) as usize];
            }
        }
        s
    }

    #[test]
    fn wide_class_end_matches_byte_loop() {
        let alphabet = [
            b'a', b'Z', b'0', b'-', b'.', b'!', b'%', b':', b'[', b']', b';', b' ', b'"', b'=',
            b'~', 0, 0x80,
        ];
        let mut seed = 9u64;
        for _ in 0..20_000 {
            let s = sprinkled(&mut seed, b'b', &alphabet, 4);
            for at in 0..=s.len() + 1 {
                for mask in [TOKEN, GEN_VALUE] {
                    assert_eq!(
                        wide_class_end(&s, at, mask),
                        class_end(&s, at, mask),
                        "{s:?} {at}"
                    );
                }
            }
        }
    }

    #[test]
    fn host_end_matches_byte_loop() {
        let alphabet = [
            b'a', b'Z', b'z', b'0', b'9', b'-', b'.', b'!', b':', b'[', b';', b' ', b'@', b'`',
            b'{', b'/', 0, 0x80, 0xc1, 0xe1,
        ];
        let mut seed = 7u64;
        for _ in 0..20_000 {
            // Mostly host characters, so runs cross the 16-byte steps.
            let s = sprinkled(&mut seed, b'a', &alphabet, 5);
            for at in 0..=s.len() + 1 {
                let want = class_end(&s, at, HOST);
                assert_eq!(host_end(&s, at), want, "{s:?} {at}");
            }
        }
    }

    #[test]
    fn find_byte_matches_position() {
        for len in 0..40 {
            for at in 0..=len {
                for fill in [b'a', b'@' ^ 0x80, 0, 0x3f, 0x41] {
                    let mut s = vec![fill; len];
                    if at < len {
                        s[at] = b'@';
                    }
                    if at + 3 < len {
                        s[at + 3] = b'@';
                    }
                    let want = s.iter().position(|&b| b == b'@');
                    assert_eq!(find_byte(&s, b'@'), want, "{s:?}");
                }
            }
        }
    }

    /// The word search agrees with the byte-by-byte definition.
    #[test]
    fn quoted_string_by_words() {
        fn by_bytes(s: &[u8], at: usize) -> Option<usize> {
            let mut i = at + 1;
            while i < s.len() {
                match s[i] {
                    b'"' => return Some(i + 1),
                    b'\\' if matches!(s.get(i + 1), None | Some(b'\r' | b'\n')) => return None,
                    b'\\' => i += 2,
                    _ => i += 1,
                }
            }
            None
        }
        let alphabet = [b'a', b'"', b'\\', b'\r', b'\n', 0, 0xff, b' '];
        let mut seed = 1u64;
        for _ in 0..20_000 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let len = 1 + (seed >> 59) as usize;
            let mut s = vec![b'"'];
            for k in 0..len {
                s.push(alphabet[((seed >> (3 * (k % 19))) & 7) as usize]);
            }
            assert_eq!(quoted_string_end(&s, 0), by_bytes(&s, 0), "{s:?}");
        }
    }

    #[test]
    fn quoted_string_escapes() {
        assert_eq!(quoted_string_end(b"\"a\\\"b\" c", 0), Some(6));
        assert_eq!(quoted_string_end(b"\"abc", 0), None);
        assert_eq!(quoted_string_end(b"\"ab\\", 0), None);
    }

    #[test]
    fn same_bytes_is_equality() {
        let words: [&[u8]; 12] = [
            b"",
            b"A",
            b"B",
            b"AB",
            b"AC",
            b"ACK",
            b"ACX",
            b"INFO",
            b"INVITE",
            b"INVITF",
            b"XNVITE",
            b"SUBSCRIBE",
        ];
        for a in words {
            for b in words {
                assert_eq!(same_bytes(a, b), a == b, "{a:?} {b:?}");
            }
        }
        for n in 0..12 {
            for at in 0..n {
                let a = vec![b'x'; n];
                let mut b = a.clone();
                b[at] = b'y';
                assert!(!same_bytes(&a, &b) && same_bytes(&a, &a.clone()));
            }
        }
    }

    #[test]
    fn is_name_is_ascii_case_insensitive_equality() {
        let names: [&[u8]; 6] = [b"tag", b"branch", b"received", b"rport", b"ttl", b"s"];
        let mut seed = 3u64;
        for lower in names {
            for _ in 0..5_000 {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let len = lower.len() + (seed >> 62) as usize % 2;
                let mut name: Vec<u8> = lower.iter().copied().chain([b'x']).take(len).collect();
                // Change a byte now and then, to any value.
                let at = (seed >> 20) as usize % len;
                if seed & 3 == 0 {
                    name[at] = (seed >> 40) as u8;
                } else if seed & 3 == 1 {
                    name[at] = name[at].to_ascii_uppercase();
                }
                assert_eq!(
                    is_name(&name, lower),
                    name.eq_ignore_ascii_case(lower),
                    "{name:?} {lower:?}"
                );
            }
            for b in 0..=255u8 {
                let mut name = lower.to_vec();
                name[0] = b;
                assert_eq!(is_name(&name, lower), name.eq_ignore_ascii_case(lower));
            }
        }
    }

    #[test]
    fn decimal_bounds() {
        assert_eq!(parse_decimal(b"0068", 255), Some(68));
        assert_eq!(parse_decimal(b"300", 255), None);
        assert_eq!(parse_decimal(b"-1", 255), None);
        assert_eq!(parse_decimal(b"", 255), None);
        assert_eq!(parse_decimal(b"99999999999999999999999", u32::MAX), None);
        assert_eq!(parse_decimal(b"4294967295", u32::MAX), Some(u32::MAX));
        assert_eq!(parse_decimal(b"4294967296", u32::MAX), None);
        assert_eq!(leading_decimal(b"12 INVITE", 0, 100), Some((12, 2)));
        assert_eq!(leading_decimal(b":5060;x", 1, 65535), Some((5060, 5)));
        assert_eq!(leading_decimal(b"x", 0, 9), Some((0, 0)));
        assert_eq!(leading_decimal(b"65536", 0, 65535), None);
        assert_eq!(
            leading_decimal(b"99999999999999999999999", 0, u32::MAX),
            None
        );
        assert_eq!(
            leading_decimal(b"4294967295", 0, u32::MAX),
            Some((u32::MAX, 10))
        );
    }

    #[test]
    fn hashing_is_stable_and_separates_parts() {
        assert_eq!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"ab", b"c"]));
        assert_eq!(key_hash(&[b"ab", b"c"]), key_hash(&[b"ab", b"c"]));
        assert_ne!(key_hash(&[b"ab", b"c"]), key_hash(&[b"a", b"bc"]));
        assert_ne!(key_hash(&[b"12345678", b""]), key_hash(&[b"1234567", b"8"]));
        assert_ne!(key_hash(&[b"z9hG4bK-1"]), key_hash(&[b"z9hG4bK-2"]));
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
        assert_eq!(&hex16(0x0123_4567_89ab_cdef), b"0123456789abcdef");
    }

    #[test]
    fn decimal_writer() {
        let mut buf = [0u8; 20];
        assert_eq!(write_decimal(&mut buf, 0), b"0");
        assert_eq!(write_decimal(&mut buf, 65535), b"65535");
        assert_eq!(write_decimal(&mut buf, u64::MAX), b"18446744073709551615");
    }
}
