//! Header names: long and compact forms, case-insensitive.

/// Case-insensitive equality of a header name (token characters only, as
/// framing guarantees) with a canonical name (letters and `-`).
///
/// OR-ing 0x20 lowercases letters and leaves `-` as it is; no other token
/// character becomes a letter or `-` that way, so the comparison is exact.
/// It folds without an early exit so the compiler can vectorise it: this
/// runs for every header of every message.
#[inline]
fn eq_token_ignore_case(name: &[u8], canonical: &[u8]) -> bool {
    name.len() == canonical.len()
        && name
            .iter()
            .zip(canonical)
            .fold(0u8, |diff, (&n, &c)| diff | ((n | 0x20) ^ (c | 0x20)))
            == 0
}

/// The headers sipshard knows by name. Compact forms (RFC 3261 §7.3.3 and
/// the extensions registered with IANA) map to the same value as the long
/// form, so the rest of the code never sees `v` or `i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum HeaderName {
    /// `a`, RFC 3841.
    AcceptContact,
    /// `u`, RFC 6665.
    AllowEvents,
    /// `i`
    CallId,
    /// `m`
    Contact,
    /// `e`
    ContentEncoding,
    /// `l`
    ContentLength,
    /// `c`
    ContentType,
    CSeq,
    /// `o`, RFC 6665.
    Event,
    /// `f`
    From,
    /// `y`, RFC 8224.
    Identity,
    /// `n`, RFC 4474 (obsolete, still seen).
    IdentityInfo,
    MaxForwards,
    ProxyRequire,
    RecordRoute,
    /// `b`, RFC 3892.
    ReferredBy,
    /// `r`, RFC 3515.
    ReferTo,
    /// `j`, RFC 3841.
    RejectContact,
    /// `d`, RFC 3841.
    RequestDisposition,
    Require,
    Route,
    /// `x`, RFC 4028.
    SessionExpires,
    /// `s`
    Subject,
    /// `k`
    Supported,
    /// `t`
    To,
    Unsupported,
    /// `v`
    Via,
    /// Any other header; its name is in the datagram.
    Other,
}

impl HeaderName {
    /// Recognises a header name, long or compact, in any letter case.
    #[inline]
    pub fn classify(name: &[u8]) -> HeaderName {
        use HeaderName::*;
        if name.len() == 1 {
            return match name[0] | 0x20 {
                b'a' => AcceptContact,
                b'b' => ReferredBy,
                b'c' => ContentType,
                b'd' => RequestDisposition,
                b'e' => ContentEncoding,
                b'f' => From,
                b'i' => CallId,
                b'j' => RejectContact,
                b'k' => Supported,
                b'l' => ContentLength,
                b'm' => Contact,
                b'n' => IdentityInfo,
                b'o' => Event,
                b'r' => ReferTo,
                b's' => Subject,
                b't' => To,
                b'u' => AllowEvents,
                b'v' => Via,
                b'x' => SessionExpires,
                b'y' => Identity,
                _ => Other,
            };
        }
        // Dispatch on length first so that each name costs one comparison.
        let candidates: &[(&[u8], HeaderName)] = match name.len() {
            2 => &[(b"To", To)],
            3 => &[(b"Via", Via)],
            4 => &[(b"From", From), (b"CSeq", CSeq)],
            5 => &[(b"Route", Route), (b"Event", Event)],
            7 => &[
                (b"Call-ID", CallId),
                (b"Contact", Contact),
                (b"Require", Require),
                (b"Subject", Subject),
            ],
            8 => &[(b"Identity", Identity), (b"Refer-To", ReferTo)],
            9 => &[(b"Supported", Supported)],
            11 => &[(b"Referred-By", ReferredBy), (b"Unsupported", Unsupported)],
            12 => &[
                (b"Max-Forwards", MaxForwards),
                (b"Record-Route", RecordRoute),
                (b"Content-Type", ContentType),
                (b"Allow-Events", AllowEvents),
            ],
            13 => &[
                (b"Proxy-Require", ProxyRequire),
                (b"Identity-Info", IdentityInfo),
            ],
            14 => &[
                (b"Content-Length", ContentLength),
                (b"Accept-Contact", AcceptContact),
                (b"Reject-Contact", RejectContact),
            ],
            15 => &[(b"Session-Expires", SessionExpires)],
            16 => &[(b"Content-Encoding", ContentEncoding)],
            19 => &[(b"Request-Disposition", RequestDisposition)],
            _ => &[],
        };
        for (long, header) in candidates {
            if eq_token_ignore_case(name, long) {
                return *header;
            }
        }
        Other
    }

    /// Whether RFC 3261 allows this header at most once in a message; a
    /// second copy makes the message ambiguous and it is rejected.
    pub(crate) fn is_single(self) -> bool {
        matches!(
            self,
            HeaderName::CallId
                | HeaderName::CSeq
                | HeaderName::From
                | HeaderName::To
                | HeaderName::MaxForwards
                | HeaderName::ContentLength
        )
    }
}

#[cfg(test)]
mod tests {
    use super::HeaderName::{self, *};

    #[test]
    fn long_and_compact_forms() {
        let cases: &[(&[u8], HeaderName)] = &[
            (b"via", Via),
            (b"V", Via),
            (b"cAlL-iD", CallId),
            (b"i", CallId),
            (b"MaX-fOrWaRdS", MaxForwards),
            (b"l", ContentLength),
            (b"content-length", ContentLength),
            (b"m", Contact),
            (b"e", ContentEncoding),
            (b"c", ContentType),
            (b"f", From),
            (b"s", Subject),
            (b"k", Supported),
            (b"t", To),
            (b"o", Event),
            (b"u", AllowEvents),
            (b"r", ReferTo),
            (b"b", ReferredBy),
            (b"x", SessionExpires),
            (b"a", AcceptContact),
            (b"j", RejectContact),
            (b"d", RequestDisposition),
            (b"y", Identity),
            (b"n", IdentityInfo),
            (b"record-route", RecordRoute),
            (b"PROXY-REQUIRE", ProxyRequire),
            (b"C%6Fntact", Other),
            (b"q", Other),
            (b"Vias", Other),
            (b"Max_Forwards", Other),
            (b"Call-I\x04", Other),
        ];
        for (name, want) in cases {
            assert_eq!(
                HeaderName::classify(name),
                *want,
                "{}",
                String::from_utf8_lossy(name)
            );
        }
    }
}
