//! The view of a scanned message: every accessor a slice of the datagram.

use super::validate::proxy_require_tags;
use super::{CSeq, Frame, HeaderSlot, Span, StartLine};
use crate::sip::addr::{AddrError, NameAddr};
use crate::sip::header::HeaderName;
use crate::sip::lex::{offset_in, CommaSplit};
use crate::sip::method::Method;
use crate::sip::uri::Uri;
use crate::sip::via::Via;

/// A header field of a scanned message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header<'m> {
    pub name: HeaderName,
    /// The name as written (`v`, `VIA`, `X-Custom`).
    pub name_text: &'m [u8],
    /// The value without surrounding LWS; folded line breaks are kept.
    pub value: &'m [u8],
}

/// A scanned, validated SIP message. Every accessor returns a slice of the
/// datagram.
#[derive(Clone, Copy, Debug)]
pub struct Message<'m> {
    pub(crate) datagram: &'m [u8],
    pub(crate) slots: &'m [HeaderSlot],
    pub(crate) frame: Frame,
    pub(super) start_line: StartLine<'m>,
    pub(super) body: &'m [u8],
    pub(super) top_via: Via<'m>,
    /// Index of the header field that holds the top Via.
    pub(crate) top_via_slot: u16,
    pub(super) via_count: u16,
    pub(super) call_id: &'m [u8],
    pub(super) cseq: CSeq<'m>,
    pub(super) max_forwards: Option<u8>,
    pub(crate) max_forwards_slot: Option<u16>,
    pub(super) from: NameAddr<'m>,
    pub(super) to: NameAddr<'m>,
    pub(super) content_length: Option<u32>,
}

impl<'m> Message<'m> {
    /// The message itself: start line to the end of the body. Octets past
    /// Content-Length in the datagram are not part of it.
    pub fn as_bytes(&self) -> &'m [u8] {
        let end = offset_in(self.datagram, self.body) + self.body.len();
        &self.datagram[self.frame.start_line.start as usize..end]
    }

    /// The whole datagram the message was scanned from.
    pub fn datagram(&self) -> &'m [u8] {
        self.datagram
    }

    pub fn start_line(&self) -> &StartLine<'m> {
        &self.start_line
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start_line, StartLine::Request { .. })
    }

    /// The request's method; `None` for a response.
    pub fn method(&self) -> Option<Method> {
        match self.start_line {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn request_uri(&self) -> Option<&Uri<'m>> {
        match &self.start_line {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// The response's status code; `None` for a request.
    pub fn status_code(&self) -> Option<u16> {
        match self.start_line {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    /// Every header field in order.
    pub fn headers(&self) -> impl Iterator<Item = Header<'m>> + '_ {
        let datagram = self.datagram;
        self.slots.iter().map(move |s| Header {
            name: s.name,
            name_text: Span {
                start: s.line.start,
                end: s.name_end,
            }
            .of(datagram),
            value: s.value.of(datagram),
        })
    }

    /// The values of every header field named `name`, in order.
    pub fn header_values(&self, name: HeaderName) -> impl Iterator<Item = &'m [u8]> + '_ {
        let datagram = self.datagram;
        self.slots
            .iter()
            .filter(move |s| s.name == name)
            .map(move |s| s.value.of(datagram))
    }

    /// The values of the comma-list headers named `name`, split, in order.
    fn list_values(&self, name: HeaderName) -> impl Iterator<Item = &'m [u8]> + '_ {
        self.header_values(name).flat_map(CommaSplit::new)
    }

    /// The first value of header `name`, if any.
    pub fn header(&self, name: HeaderName) -> Option<&'m [u8]> {
        self.header_values(name).next()
    }

    /// The top Via: the one the response to this request will follow.
    pub fn top_via(&self) -> &Via<'m> {
        &self.top_via
    }

    /// Every Via value, top first. All of them were validated by the scan.
    pub fn vias(&self) -> impl Iterator<Item = Via<'m>> + '_ {
        self.list_values(HeaderName::Via)
            .filter_map(|v| Via::parse(v).ok())
    }

    pub fn via_count(&self) -> usize {
        usize::from(self.via_count)
    }

    pub fn call_id(&self) -> &'m [u8] {
        self.call_id
    }

    pub fn cseq(&self) -> &CSeq<'m> {
        &self.cseq
    }

    /// Max-Forwards as received; `None` when absent.
    pub fn max_forwards(&self) -> Option<u8> {
        self.max_forwards
    }

    pub fn from(&self) -> &NameAddr<'m> {
        &self.from
    }

    pub fn to(&self) -> &NameAddr<'m> {
        &self.to
    }

    /// Route values, top first. A malformed value is `Err` so that the
    /// caller decides; Route is only parsed when routing needs it.
    pub fn routes(&self) -> impl Iterator<Item = Result<NameAddr<'m>, AddrError>> + '_ {
        self.list_values(HeaderName::Route).map(NameAddr::parse)
    }

    pub fn record_routes(&self) -> impl Iterator<Item = Result<NameAddr<'m>, AddrError>> + '_ {
        self.list_values(HeaderName::RecordRoute)
            .map(NameAddr::parse)
    }

    /// Contact values; `Contact: *` (REGISTER) is yielded as [`Contact::Star`].
    pub fn contacts(&self) -> impl Iterator<Item = Result<Contact<'m>, AddrError>> + '_ {
        self.list_values(HeaderName::Contact).map(|v| {
            if v == b"*" {
                Ok(Contact::Star)
            } else {
                NameAddr::parse(v).map(Contact::Address)
            }
        })
    }

    pub fn content_length(&self) -> Option<u32> {
        self.content_length
    }

    /// The option tags of every Proxy-Require header.
    pub fn proxy_require(&self) -> impl Iterator<Item = &'m [u8]> + 'm {
        proxy_require_tags(self.datagram, self.slots)
    }

    /// The option tags of every Require header.
    pub fn require(&self) -> impl Iterator<Item = &'m [u8]> + '_ {
        self.list_values(HeaderName::Require)
            .filter(|t| !t.is_empty())
    }

    /// The body, exactly Content-Length octets (or the rest of the datagram).
    pub fn body(&self) -> &'m [u8] {
        self.body
    }
}

/// A Contact value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contact<'m> {
    /// `Contact: *`, valid only in REGISTER to remove every binding.
    Star,
    Address(NameAddr<'m>),
}
