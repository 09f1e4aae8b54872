//! The one error type of the scanner, and the answer each error asks for.
//!
//! The proxy never decides twice what to do with bad input: a [`ScanError`]
//! says what is wrong, and [`ScanError::answer`] says what goes on the wire
//! (a status code for a request, silence for a response).

use super::addr::AddrError;
use super::header::HeaderName;
use super::uri::UriError;
use super::via::ViaError;

/// What kind of message the scanner was looking at when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartKind {
    Request,
    Response,
    /// The start line itself was unreadable.
    Unknown,
}

/// Why a datagram was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Nothing but CRLF keep-alives, or no bytes at all.
    Empty,
    /// Larger than `Limits::datagram_bytes_max`.
    TooLarge,
    /// No empty line ends the header section.
    Truncated,
    /// The start line is not `Method SP Request-URI SP SIP-Version` nor
    /// `SIP-Version SP Status-Code SP Reason-Phrase`.
    StartLine,
    /// A SIP version other than 2.0 (505 for requests).
    Version,
    /// The status code is not three digits in 100..=699.
    StatusCode,
    RequestUri(UriError),
    /// A Request-URI scheme sipshard does not route (416).
    UnsupportedScheme,
    /// A Request-URI with a `?headers` part (RFC 3261 §19.1.1 forbids it).
    RequestUriHeaders,
    /// A header name with non-token characters, or a line without `:`.
    HeaderName,
    /// A control character in the start line or a header field other than
    /// HTAB, the CRLF that ends a line, or one escaped in a quoted-pair
    /// (RFC 3261 §25.1): a NUL, a lone CR.
    ControlCharacter,
    /// One header field (folded lines included) over the line limit.
    HeaderLineTooLong,
    TooManyHeaders,
    TooManyVia,
    Via(ViaError),
    From(AddrError),
    To(AddrError),
    /// A required header is absent.
    Missing(HeaderName),
    /// A single-valued header appears twice (RFC 4475 multi01, mcl01).
    Duplicate(HeaderName),
    CallId,
    CSeq,
    /// CSeq's method differs from the request's method.
    CSeqMethod,
    /// Max-Forwards is not a number in 0..=255.
    MaxForwards,
    ContentLength,
    /// Content-Length says more octets than the datagram holds.
    BodyTooShort,
    /// Max-Forwards is 0 on a request the proxy must forward (483).
    MaxForwardsZero,
    /// Proxy-Require names an extension the proxy does not support (420).
    ProxyRequire,
}

/// A rejected datagram: what was wrong, and what kind of message it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanError {
    pub fault: Fault,
    pub kind: StartKind,
    /// The request is an ACK, which nothing answers (§17.1.1.3, §17.2.1).
    pub ack: bool,
}

/// What the proxy puts on the wire for a rejected datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Send a response with this code and reason phrase.
    Reply { code: u16, reason: &'static str },
    /// Send nothing: count it and log at debug. Responses and ACKs are
    /// never answered, and a message we cannot read has nobody to answer.
    Drop,
}

impl ScanError {
    /// The answer RFC 3261 asks for.
    pub fn answer(&self) -> Answer {
        if self.kind != StartKind::Request || self.ack {
            return Answer::Drop;
        }
        let (code, reason) = match self.fault {
            // An oversized or empty datagram is more likely an attack or a
            // keep-alive than a peer waiting for an answer; answering would
            // only amplify it.
            Fault::Empty | Fault::TooLarge => return Answer::Drop,
            Fault::Version => (505, "Version Not Supported"),
            Fault::UnsupportedScheme => (416, "Unsupported URI Scheme"),
            Fault::MaxForwardsZero => (483, "Too Many Hops"),
            Fault::ProxyRequire => (420, "Bad Extension"),
            _ => (400, self.fault.reason()),
        };
        Answer::Reply { code, reason }
    }
}

impl Fault {
    /// A reason phrase for a 400 that tells the peer what to fix.
    pub fn reason(&self) -> &'static str {
        match self {
            Fault::Empty => "Bad Request - Empty Message",
            Fault::TooLarge => "Bad Request - Message Too Large",
            Fault::Truncated => "Bad Request - Truncated Header Section",
            Fault::StartLine => "Bad Request - Malformed Request-Line",
            Fault::Version => "Version Not Supported",
            Fault::StatusCode => "Bad Request - Malformed Status-Code",
            Fault::RequestUri(_) => "Bad Request - Malformed Request-URI",
            Fault::UnsupportedScheme => "Unsupported URI Scheme",
            Fault::RequestUriHeaders => "Bad Request - Headers in Request-URI",
            Fault::HeaderName => "Bad Request - Malformed Header Name",
            Fault::ControlCharacter => "Bad Request - Control Character",
            Fault::HeaderLineTooLong => "Bad Request - Header Too Long",
            Fault::TooManyHeaders => "Bad Request - Too Many Headers",
            Fault::TooManyVia => "Bad Request - Too Many Via",
            Fault::Via(_) => "Bad Request - Malformed Via",
            Fault::From(_) => "Bad Request - Malformed From",
            Fault::To(_) => "Bad Request - Malformed To",
            Fault::Missing(h) => match h {
                HeaderName::Via => "Bad Request - Missing Via",
                HeaderName::From => "Bad Request - Missing From",
                HeaderName::To => "Bad Request - Missing To",
                HeaderName::CallId => "Bad Request - Missing Call-ID",
                _ => "Bad Request - Missing CSeq",
            },
            Fault::Duplicate(h) => match h {
                HeaderName::From => "Bad Request - Duplicate From",
                HeaderName::To => "Bad Request - Duplicate To",
                HeaderName::CallId => "Bad Request - Duplicate Call-ID",
                HeaderName::CSeq => "Bad Request - Duplicate CSeq",
                HeaderName::MaxForwards => "Bad Request - Duplicate Max-Forwards",
                _ => "Bad Request - Duplicate Content-Length",
            },
            Fault::CallId => "Bad Request - Malformed Call-ID",
            Fault::CSeq => "Bad Request - Malformed CSeq",
            Fault::CSeqMethod => "Bad Request - CSeq Method Mismatch",
            Fault::MaxForwards => "Bad Request - Malformed Max-Forwards",
            Fault::ContentLength => "Bad Request - Malformed Content-Length",
            Fault::BodyTooShort => "Bad Request - Content-Length Exceeds Message",
            Fault::MaxForwardsZero => "Too Many Hops",
            Fault::ProxyRequire => "Bad Extension",
        }
    }
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.kind {
            StartKind::Request => "request",
            StartKind::Response => "response",
            StartKind::Unknown => "message",
        };
        write!(
            f,
            "rejected {what}: {:?} ({})",
            self.fault,
            self.fault.reason()
        )
    }
}

impl std::error::Error for ScanError {}
