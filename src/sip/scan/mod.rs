//! The scanner: one datagram in, a [`Message`] view out, nothing copied.
//!
//! Scanning is two passes over bytes already in cache. *Framing* finds the
//! start line, every header field (name and value ranges, folded lines
//! included) and the end of the header section, from the line ends the
//! vector block masks give (`block::LineCursor`). *Validation* then parses exactly the fields a proxy routes on
//! (Request-URI, every Via, Call-ID, CSeq, Max-Forwards, From, To,
//! Content-Length, Proxy-Require) and rejects what RFC 3261 says to reject.
//! Everything else stays an opaque range, to be copied byte for byte.
//!
//! Its parts, in the order a datagram meets them: [`limits`] bound what a
//! datagram may hold, [`frame`] finds the lines, [`start_line`] and
//! [`validate`] check the fields a proxy routes on, and [`message`] is the
//! view the caller reads.

mod frame;
mod known;
mod limits;
mod message;
mod start_line;
mod validate;

pub(crate) use frame::{strip_cr, Frame};
pub use limits::{LimitError, Limits};
pub use message::{Contact, Header, Message};
pub use start_line::StartLine;
pub(crate) use validate::proxy_require_tags;
pub use validate::CSeq;

use super::block::{self, Baseline, Width};
use super::error::ScanError;
use super::header::HeaderName;
use known::Known;
use limits::FORWARD_ROOM_BYTES;
use start_line::is_ack;
use validate::{supports, validate};

/// A byte range of the datagram. `u32` keeps a header slot at 24 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: u32,
    pub(crate) end: u32,
}

impl Span {
    #[inline]
    fn new(start: usize, end: usize) -> Span {
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    #[inline(always)]
    pub(crate) fn of<'m>(&self, buf: &'m [u8]) -> &'m [u8] {
        &buf[self.start as usize..self.end as usize]
    }
}

/// One header field as found by framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HeaderSlot {
    pub(crate) name: HeaderName,
    /// Where the name ends; it starts where `line` does.
    pub(crate) name_end: u32,
    /// The value, trimmed of LWS; folds inside it are kept as written.
    pub(crate) value: Span,
    /// The whole field from the first byte of its name to the end of its
    /// last line, line end included.
    pub(crate) line: Span,
}

impl HeaderSlot {
    /// What fills the slots no framing has written yet.
    const EMPTY: HeaderSlot = HeaderSlot {
        name: HeaderName::Other,
        name_end: 0,
        value: Span { start: 0, end: 0 },
        line: Span { start: 0, end: 0 },
    };
}

/// Scans datagrams into [`Message`] views. Owns the header slot array, so
/// one `Scanner` per shard scans every datagram without allocating.
#[derive(Debug)]
pub struct Scanner {
    limits: Limits,
    /// `headers_max` slots, the first `framed` of them filled by the last
    /// framing: a fixed array, so that the limit check is the bounds check.
    slots: Box<[HeaderSlot]>,
    framed: usize,
    /// Where framing found the headers validation needs.
    known: Known,
    /// Extension option tags this proxy supports in Proxy-Require.
    proxy_require_supported: Vec<Box<[u8]>>,
    /// Reads requests this proxy sent on (see [`Scanner::for_sent`]).
    sent_on: bool,
}

impl Scanner {
    /// A scanner with `limits`, each clamped to its ceiling (see
    /// [`Limits::check`], which reports instead of clamping).
    pub fn new(limits: Limits) -> Scanner {
        let limits = limits.clamped();
        Scanner {
            slots: vec![HeaderSlot::EMPTY; limits.headers_max].into_boxed_slice(),
            framed: 0,
            known: Known::default(),
            limits,
            proxy_require_supported: Vec::new(),
            sent_on: false,
        }
    }

    /// A scanner for requests this proxy has already sent on, read again
    /// to write their CANCEL or ACK (§9.1, §17.1.1.3) or to send them to
    /// the next backend. Its limits leave room for what forwarding adds (a
    /// Via value, a Record-Route, a Max-Forwards, `received` and `rport`),
    /// and it takes Max-Forwards 0 and any Proxy-Require: a request that
    /// came with Max-Forwards 1 went on with 0, and one that passed the
    /// checks on the way in must not fail them on the way back.
    pub fn for_sent(limits: &Limits) -> Scanner {
        let room = Limits {
            datagram_bytes_max: limits.datagram_bytes_max.saturating_add(FORWARD_ROOM_BYTES),
            headers_max: limits.headers_max.saturating_add(3),
            header_line_bytes_max: limits
                .header_line_bytes_max
                .saturating_add(FORWARD_ROOM_BYTES),
            via_values_max: limits.via_values_max.saturating_add(1),
        };
        Scanner {
            sent_on: true,
            ..Scanner::new(room)
        }
    }

    /// Declares the option tags this proxy supports; any other tag in a
    /// request's Proxy-Require is answered 420. None by default.
    pub fn with_proxy_require_supported<I, T>(mut self, tags: I) -> Scanner
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        self.proxy_require_supported = tags.into_iter().map(|t| t.as_ref().into()).collect();
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Scans and validates one datagram.
    pub fn scan<'m>(&'m mut self, datagram: &'m [u8]) -> Result<Message<'m>, ScanError> {
        #[cfg(target_arch = "x86_64")]
        if let Some(avx2) = block::Avx2::for_framing() {
            return self.scan_avx2(datagram, avx2);
        }
        self.scan_sse2(datagram)
    }

    /// [`Scanner::scan`] with the SSE2 masks. Out of line: inlined, it gave
    /// `scan` its stack frame and register saves, paid on the AVX2 path too.
    #[inline(never)]
    fn scan_sse2<'m>(&'m mut self, datagram: &'m [u8]) -> Result<Message<'m>, ScanError> {
        self.scan_with(datagram, Baseline)
    }

    /// [`Scanner::scan`] compiled for AVX2, so that the block masks inline
    /// into framing instead of costing a call and a trip through memory
    /// per block.
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    fn scan_avx2<'m>(
        &'m mut self,
        datagram: &'m [u8],
        avx2: block::Avx2,
    ) -> Result<Message<'m>, ScanError> {
        #[target_feature(enable = "avx2")]
        fn scan<'m>(
            scanner: &'m mut Scanner,
            datagram: &'m [u8],
            avx2: block::Avx2,
        ) -> Result<Message<'m>, ScanError> {
            scanner.scan_with(datagram, avx2)
        }
        // SAFETY: `avx2` is an `Avx2`, which only `Avx2::detect` makes, and
        // only on a CPU that has AVX2.
        unsafe { scan(self, datagram, avx2) }
    }

    #[inline(always)]
    fn scan_with<'m, W: Width>(
        &'m mut self,
        datagram: &'m [u8],
        width: W,
    ) -> Result<Message<'m>, ScanError> {
        let frame = self.frame_with(datagram, width)?;
        let (kind, start_line) = (frame.kind, frame.start_line);
        validate(
            datagram,
            self.slots.get(..self.framed).unwrap_or_default(),
            &self.known,
            frame,
            &self.limits,
            &self.proxy_require_supported,
            self.sent_on,
        )
        .map_err(|fault| ScanError {
            fault,
            kind,
            ack: is_ack(kind, start_line.of(datagram)),
        })
    }

    /// Whether `tag` is one of the Proxy-Require tags we support.
    pub(crate) fn supports(&self, tag: &[u8]) -> bool {
        supports(&self.proxy_require_supported, tag)
    }

    pub(crate) fn slots(&self) -> &[HeaderSlot] {
        self.slots.get(..self.framed).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::error::Fault;
    use crate::sip::Method;

    pub(super) const INVITE: &[u8] = b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Route: <sip:lb.example.com;lr>, <sip:core.example.com;lr>\r\n\
Contact: <sip:alice@pc33.atlanta.example.com>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\
\r\n\
v=0\r\n";

    pub(super) fn scan(bytes: &[u8]) -> Result<(), ScanError> {
        Scanner::new(Limits::default()).scan(bytes).map(|_| ())
    }

    pub(super) fn fault(bytes: &[u8]) -> Fault {
        scan(bytes).unwrap_err().fault
    }

    #[test]
    fn request_fields() {
        let mut scanner = Scanner::new(Limits::default());
        let m = scanner.scan(INVITE).unwrap();
        assert_eq!(m.method(), Some(Method::Invite));
        assert_eq!(m.request_uri().unwrap().host, b"biloxi.example.com");
        assert_eq!(m.top_via().branch, Some(&b"z9hG4bK776asdhds"[..]));
        assert_eq!(m.call_id(), b"a84b4c76e66710@pc33.atlanta.example.com");
        assert_eq!(m.cseq().number, 314159);
        assert_eq!(m.max_forwards(), Some(70));
        assert_eq!(m.from().tag, Some(&b"1928301774"[..]));
        assert_eq!(m.to().tag, None);
        let routes: Vec<_> = m.routes().map(|r| r.unwrap().uri().unwrap().host).collect();
        assert_eq!(routes, vec![&b"lb.example.com"[..], b"core.example.com"]);
        assert_eq!(m.body(), b"v=0\r");
        assert_eq!(m.content_length(), Some(4));
        assert_eq!(m.headers().count(), 10);
        assert_eq!(m.contacts().count(), 1);
    }
}
