//! The editor: writes a forwarded message into a caller-owned buffer in one
//! pass (RFC 3261 §16.6 for requests, §16.7 step 3 for responses).
//!
//! Forwarding is a handful of splices into an otherwise untouched datagram:
//! each change is an [`Edit`] at a byte offset, the edits are sorted, and
//! the output is the datagram copied around them. Bytes no edit covers are
//! copied unchanged, which is what makes the proxy transparent to headers
//! it does not understand.

use std::net::{IpAddr, SocketAddr};

use super::lex::{offset_in, CommaSplit};
use super::out::{BufferFull, Out};
use super::scan::{HeaderSlot, Message, StartLine};
use super::transport::Transport;
use super::uri::Scheme;
use super::via::{Via, MAGIC_COOKIE};
use super::HeaderName;

/// Who we are on the wire: what we write in Via and Record-Route, and what
/// we recognise as ourselves in Route and in a response's top Via.
#[derive(Clone, Debug)]
pub struct LocalAddress {
    host: Box<[u8]>,
    port: u16,
    /// By transport: `Via: SIP/2.0/UDP host:port;branch=z9hG4bK`, ready to
    /// be followed by the branch key.
    via_prefix: [Box<[u8]>; Transport::ALL.len()],
    /// By transport: `Record-Route: <sip:host:port;transport=tcp;lr>\r\n`
    /// (no `transport` for UDP).
    record_route: [Box<[u8]>; Transport::ALL.len()],
    /// Other host:port pairs that also mean us (a public name, a VIP).
    aliases: Vec<(Box<[u8]>, u16)>,
    /// By transport: whether we listen on it.
    streams: [bool; Transport::ALL.len()],
}

impl LocalAddress {
    /// `host` as it goes in Via and Record-Route (an IP literal, IPv6 in
    /// brackets, or a name that resolves to us), and our UDP port.
    /// Streams use the same port until [`LocalAddress::with_stream_port`].
    pub fn new(host: &str, port: u16) -> LocalAddress {
        LocalAddress {
            host: host.as_bytes().into(),
            port,
            via_prefix: Transport::ALL.map(|t| via_prefix(host, t, port)),
            record_route: Transport::ALL.map(|t| record_route(host, t, port)),
            aliases: Vec::new(),
            streams: Transport::ALL.map(|t| t == Transport::Udp),
        }
    }

    /// Where we listen for `transport` (TCP or TLS): the port in our Via
    /// and Record-Route for it, recognised as ours.
    pub fn with_stream_port(mut self, transport: Transport, port: u16) -> LocalAddress {
        let host = String::from_utf8_lossy(&self.host).into_owned();
        self.via_prefix[transport.index()] = via_prefix(&host, transport, port);
        self.record_route[transport.index()] = record_route(&host, transport, port);
        self.streams[transport.index()] = true;
        self.aliases.push((self.host.clone(), port));
        self
    }

    /// Sends requests with `port` in our Via instead of the listen port: a
    /// shard's own socket, so that responses come back to the shard that
    /// holds their transaction. Record-Route keeps the listen port; `port`
    /// is recognised as ours.
    pub fn with_via_port(mut self, port: u16) -> LocalAddress {
        let host = String::from_utf8_lossy(&self.host).into_owned();
        self.via_prefix[Transport::Udp.index()] = via_prefix(&host, Transport::Udp, port);
        self.aliases.push((self.host.clone(), port));
        self
    }

    /// Another name and port that Route values and Vias may use for us.
    pub fn with_alias(mut self, host: &str, port: u16) -> LocalAddress {
        self.aliases.push((host.as_bytes().into(), port));
        self
    }

    /// Whether `host:port` names this proxy. Host names compare without
    /// case (RFC 3261 §19.1.4).
    pub fn is_local(&self, host: &[u8], port: u16) -> bool {
        (port == self.port && host.eq_ignore_ascii_case(&self.host))
            || self
                .aliases
                .iter()
                .any(|(h, p)| *p == port && host.eq_ignore_ascii_case(h))
    }

    /// Whether an address (a Route value) names this proxy: a `sip:` or
    /// `sips:` URI whose host and port are ours.
    pub fn is_named_by(&self, address: &super::NameAddr<'_>) -> bool {
        address.uri().is_ok_and(|uri| {
            matches!(uri.scheme, Scheme::Sip | Scheme::Sips)
                && self.is_local(uri.host, uri.port_or_default())
        })
    }

    /// Whether we listen on `transport` (UDP always).
    pub fn serves(&self, transport: Transport) -> bool {
        transport == Transport::Udp || self.streams[transport.index()]
    }

    /// Our Record-Route line for `transport`.
    pub fn record_route_line(&self, transport: Transport) -> &[u8] {
        &self.record_route[transport.index()]
    }
}

fn via_prefix(host: &str, transport: Transport, port: u16) -> Box<[u8]> {
    let token = transport.via_token();
    format!("Via: SIP/2.0/{token} {host}:{port};branch=z9hG4bK")
        .into_bytes()
        .into()
}

fn record_route(host: &str, transport: Transport, port: u16) -> Box<[u8]> {
    match transport {
        Transport::Udp => format!("Record-Route: <sip:{host}:{port};lr>\r\n"),
        t => format!("Record-Route: <sip:{host}:{port};transport={t};lr>\r\n"),
    }
    .into_bytes()
    .into()
}

/// The address a request came from: the packet's source, which RFC 3261
/// §18.2.1 and RFC 3581 write into the sender's Via.
pub type Source = SocketAddr;

/// Why a message could not be forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EditError {
    /// The output buffer is too small; the datagram is dropped and counted.
    BufferFull,
    /// A response whose top Via is not ours: not for us to forward (RFC
    /// 3261 §18.1.2). Drop it.
    ViaNotOurs,
    /// A response whose only Via is ours: it answers a request we made
    /// ourselves (a probe), so it goes to our own transaction layer.
    ViaOnlyOurs,
    /// The request is a response, or the response a request.
    WrongKind,
}

impl From<BufferFull> for EditError {
    fn from(_: BufferFull) -> Self {
        EditError::BufferFull
    }
}

/// What one splice writes.
#[derive(Clone, Copy, Debug)]
enum Insert<'a> {
    Nothing,
    Bytes(&'a [u8]),
    /// Our Via line: the prefix ends with the magic cookie, the branch key
    /// follows.
    OurVia {
        prefix: &'a [u8],
        branch_key: &'a [u8],
    },
    /// `;received=ip`
    Received(IpAddr),
    /// The value of an existing `received`, replaced.
    ReceivedValue(IpAddr),
    /// `=port` after a bare `rport`.
    RportValue(u16),
    /// A decimal number (the decremented Max-Forwards).
    Decimal(u8),
}

/// Replace `datagram[at..delete_to]` with `insert`.
#[derive(Clone, Copy, Debug)]
struct Edit<'a> {
    at: usize,
    delete_to: usize,
    insert: Insert<'a>,
}

/// The most splices one forward makes: Via, Record-Route, received,
/// rport, Max-Forwards, Route.
const EDITS_MAX: usize = 10;

/// An ordered set of splices. Fixed-size: forwarding never allocates.
pub(crate) struct Edits<'a> {
    edits: [Edit<'a>; EDITS_MAX],
    count: usize,
}

impl<'a> Edits<'a> {
    pub(crate) fn new() -> Self {
        let none = Edit {
            at: 0,
            delete_to: 0,
            insert: Insert::Nothing,
        };
        Edits {
            edits: [none; EDITS_MAX],
            count: 0,
        }
    }

    /// Adds a splice, keeping the list sorted by offset; splices at the
    /// same offset keep the order they were added in.
    fn push(&mut self, at: usize, delete_to: usize, insert: Insert<'a>) {
        assert!(self.count < EDITS_MAX, "more splices than a forward makes");
        let mut i = self.count;
        while i > 0 && self.edits[i - 1].at > at {
            self.edits[i] = self.edits[i - 1];
            i -= 1;
        }
        self.edits[i] = Edit {
            at,
            delete_to,
            insert,
        };
        self.count += 1;
    }

    /// Copies the message (the datagram minus leading keep-alive CRLFs and
    /// octets past Content-Length) into `out` with every splice applied.
    fn apply(&self, message: &Message<'_>, out: &mut Out<'_>) -> Result<(), BufferFull> {
        let bytes = message.as_bytes();
        let start = offset_in(message.datagram, bytes);
        self.apply_range(message.datagram, start, start + bytes.len(), out)
    }

    /// Copies `datagram[start..end]` into `out` with every splice applied;
    /// every splice must lie inside the range.
    pub(crate) fn apply_range(
        &self,
        datagram: &[u8],
        start: usize,
        end: usize,
        out: &mut Out<'_>,
    ) -> Result<(), BufferFull> {
        let message = &datagram[..end];
        let mut copied_to = start;
        for edit in &self.edits[..self.count] {
            debug_assert!(edit.at >= copied_to, "overlapping splices");
            out.put(&message[copied_to..edit.at])?;
            match edit.insert {
                Insert::Nothing => {}
                Insert::Bytes(b) => out.put(b)?,
                Insert::OurVia { prefix, branch_key } => {
                    out.put(prefix)?;
                    out.put(branch_key)?;
                    out.put(b"\r\n")?;
                }
                Insert::Received(ip) => {
                    out.put(b";received=")?;
                    out.put_ip(ip)?;
                }
                Insert::ReceivedValue(ip) => out.put_ip(ip)?,
                Insert::RportValue(port) => {
                    out.put(b"=")?;
                    out.put_decimal(u64::from(port))?;
                }
                Insert::Decimal(n) => out.put_decimal(u64::from(n))?,
            }
            copied_to = edit.delete_to;
        }
        out.put(&message[copied_to..])
    }
}

/// The requests [`Editor::write_hop_request`] makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HopMethod {
    Cancel,
    Ack,
}

/// Writes forwarded requests and responses. Holds only our own address, so
/// one per shard is enough and it is never mutated on the packet path.
#[derive(Clone, Debug)]
pub struct Editor {
    local: LocalAddress,
}

/// Options of one request forward.
#[derive(Clone, Copy, Debug)]
pub struct Forward<'a> {
    /// The packet's source address.
    pub source: Source,
    /// What follows the magic cookie in our Via branch; it must make the
    /// branch unique per client transaction (RFC 3261 §8.1.1.7).
    pub branch_key: &'a [u8],
    /// Whether to insert our Record-Route (dialog-creating requests).
    pub record_route: bool,
    /// What the request came over, and what it leaves over: when they
    /// differ, Record-Route is doubled (RFC 5658 §3.2), so that each side
    /// of the dialog reaches us over its own transport.
    pub inbound: Transport,
    pub outbound: Transport,
}

impl Editor {
    pub fn new(local: LocalAddress) -> Editor {
        Editor { local }
    }

    pub fn local(&self) -> &LocalAddress {
        &self.local
    }

    /// Writes the request as we forward it: our Via on top, Record-Route if
    /// asked, `received`/`rport` on the sender's Via, our Route popped,
    /// Max-Forwards decremented (or added as 70). Returns the length written.
    pub fn forward_request(
        &self,
        message: &Message<'_>,
        forward: &Forward<'_>,
        out: &mut [u8],
    ) -> Result<usize, EditError> {
        if !message.is_request() {
            return Err(EditError::WrongKind);
        }
        let datagram = message.datagram;
        let mut edits = Edits::new();
        let first_via = &message.slots[usize::from(message.top_via_slot)];

        // Record-Route first: when it goes where the Vias start, it must
        // come before our Via, so that the Via rows stay together.
        if forward.record_route {
            let at = message
                .slots
                .iter()
                .find(|s| s.name == HeaderName::RecordRoute)
                .map_or(first_via.line.start, |s| s.line.start) as usize;
            // The callee's side on top: it reads the Route set top down.
            let local = &self.local;
            edits.push(
                at,
                at,
                Insert::Bytes(local.record_route_line(forward.outbound)),
            );
            if forward.inbound != forward.outbound {
                edits.push(
                    at,
                    at,
                    Insert::Bytes(local.record_route_line(forward.inbound)),
                );
            }
        }
        edits.push(
            first_via.line.start as usize,
            first_via.line.start as usize,
            Insert::OurVia {
                prefix: &self.local.via_prefix[forward.outbound.index()],
                branch_key: forward.branch_key,
            },
        );
        received_edits(&mut edits, datagram, message.top_via(), forward.source);
        match message.max_forwards_slot {
            Some(slot) => {
                let value = message.slots[usize::from(slot)].value;
                // Scanning rejected Max-Forwards 0, so this cannot underflow.
                let hops = message.max_forwards().unwrap_or(1).saturating_sub(1);
                edits.push(
                    value.start as usize,
                    value.end as usize,
                    Insert::Decimal(hops),
                );
            }
            None => {
                let at = message.frame.headers_end;
                edits.push(at, at, Insert::Bytes(b"Max-Forwards: 70\r\n"));
            }
        }
        self.pop_our_routes(message, &mut edits);
        let mut writer = Out::new(out);
        edits.apply(message, &mut writer)?;
        Ok(writer.len())
    }

    /// Writes the response as we forward it: our top Via removed, every
    /// other byte unchanged.
    pub fn forward_response(
        &self,
        message: &Message<'_>,
        out: &mut [u8],
    ) -> Result<usize, EditError> {
        if message.is_request() {
            return Err(EditError::WrongKind);
        }
        let via = message.top_via();
        let ours = self.local.is_local(via.host, via.port.unwrap_or(5060))
            && via.branch.is_some_and(|b| b.starts_with(MAGIC_COOKIE));
        if !ours {
            return Err(EditError::ViaNotOurs);
        }
        if message.via_count() < 2 {
            return Err(EditError::ViaOnlyOurs);
        }
        let slot = &message.slots[usize::from(message.top_via_slot)];
        let (from, to) = first_value_span(message.datagram, slot);
        let mut edits = Edits::new();
        edits.push(from, to, Insert::Nothing);
        let mut writer = Out::new(out);
        edits.apply(message, &mut writer)?;
        Ok(writer.len())
    }

    /// Writes a request the proxy makes itself for one client transaction
    /// (RFC 3261 §9.1 CANCEL, §17.1.1.3 ACK for a non-2xx final response):
    /// the forwarded request's Request-URI, Call-ID, From and CSeq number,
    /// the Route set as forwarded (ours popped), and our Via alone with the
    /// branch of the transaction it belongs to, so the next hop matches it.
    /// `to` is the To value: the request's for CANCEL, the response's (with
    /// its tag) for ACK.
    pub fn write_hop_request(
        &self,
        request: &Message<'_>,
        method: HopMethod,
        to: &[u8],
        branch_key: &[u8],
        transport: Transport,
        out: &mut [u8],
    ) -> Result<usize, EditError> {
        let StartLine::Request { uri_text, .. } = request.start_line() else {
            return Err(EditError::WrongKind);
        };
        let name: &[u8] = match method {
            HopMethod::Cancel => b"CANCEL",
            HopMethod::Ack => b"ACK",
        };
        let mut out = Out::new(out);
        out.put(name)?;
        out.put(b" ")?;
        out.put(uri_text)?;
        out.put(b" SIP/2.0\r\n")?;
        out.put(&self.local.via_prefix[transport.index()])?;
        out.put(branch_key)?;
        out.put(b"\r\n")?;
        // §9.1, §17.1.1.3: the Route set of the request as sent, byte for
        // byte (a value this proxy cannot parse is still the next hop's to
        // judge), without our own entry where it leads.
        let datagram = request.datagram;
        // Ours lead the set: one entry, or two where recorded twice.
        let (mut popped, mut popping) = (0, true);
        for slot in request.slots.iter().filter(|s| s.name == HeaderName::Route) {
            let mut value = slot.value.of(datagram);
            while popping && popped < 2 && self.names_us(value) {
                popped += 1;
                value = split_first_value(value).map_or(&[][..], |(_, rest)| rest);
            }
            if value.is_empty() {
                continue;
            }
            popping = false;
            out.put(b"Route: ")?;
            out.put(value)?;
            out.put(b"\r\n")?;
        }
        out.put(b"Max-Forwards: 70\r\nFrom: ")?;
        out.put(request.from().value)?;
        out.put(b"\r\nTo: ")?;
        out.put(to)?;
        out.put(b"\r\nCall-ID: ")?;
        out.put(request.call_id())?;
        out.put(b"\r\nCSeq: ")?;
        out.put_decimal(u64::from(request.cseq().number))?;
        out.put(b" ")?;
        out.put(name)?;
        out.put(b"\r\nContent-Length: 0\r\n\r\n")?;
        Ok(out.len())
    }

    /// Pops the Route entries that name us at the top of the set: one, or
    /// two where we recorded the route twice (RFC 5658), in one field
    /// (`Route: <us>, <us>, ...`) or in two.
    fn pop_our_routes<'a>(&self, message: &Message<'a>, edits: &mut Edits<'a>) {
        let datagram = message.datagram;
        let mut routes = message.slots.iter().filter(|s| s.name == HeaderName::Route);
        let Some(first) = routes.next() else {
            return;
        };
        let whole = (first.line.start as usize, first.line.end as usize);
        let value = first.value.of(datagram);
        if !self.names_us(value) {
            return;
        }
        let alone = split_first_value(value).is_none();
        let (from, to) = match split_first_value(value) {
            None => whole,
            Some((head, rest)) if !self.names_us(rest) => {
                (offset_in(datagram, head), offset_in(datagram, rest))
            }
            Some((head, rest)) => match split_first_value(rest) {
                Some((_, after)) => (offset_in(datagram, head), offset_in(datagram, after)),
                None => whole,
            },
        };
        edits.push(from, to, Insert::Nothing);
        if let Some(next) = routes.next().filter(|_| alone) {
            if self.names_us(next.value.of(datagram)) {
                let (from, to) = first_value_span(datagram, next);
                edits.push(from, to, Insert::Nothing);
            }
        }
    }

    /// Whether the first value of a Route header field names us.
    fn names_us(&self, route_value: &[u8]) -> bool {
        CommaSplit::new(route_value)
            .next()
            .and_then(|first| super::NameAddr::parse(first).ok())
            .is_some_and(|address| self.local.is_named_by(&address))
    }
}

/// RFC 3261 §18.2.1 and RFC 3581 §4: the sender's Via gets `received` when
/// its sent-by is not the packet's source address, or when it asks for
/// `rport`; a bare `rport` gets the source port.
pub(crate) fn received_edits<'a>(
    edits: &mut Edits<'a>,
    datagram: &[u8],
    via: &Via<'_>,
    source: Source,
) {
    let sent_by_is_source = super::uri::host_ip(via.host) == Some(source.ip());
    let wants_rport = via.rport == Some(None);
    if let Some(name) = via.rport_name.filter(|_| wants_rport) {
        let at = offset_in(datagram, name) + name.len();
        edits.push(at, at, Insert::RportValue(source.port()));
    }
    match via.received {
        // A `received` the client wrote itself (or a stale one) would send
        // the response elsewhere: it always becomes the packet's source.
        Some(value) => {
            let at = offset_in(datagram, value);
            edits.push(at, at + value.len(), Insert::ReceivedValue(source.ip()));
        }
        None if sent_by_is_source && !wants_rport => {}
        None => {
            let at = offset_in(datagram, via.value) + via.value.len();
            edits.push(at, at, Insert::Received(source.ip()));
        }
    }
}

/// The byte range that removes the first value of a comma-list header
/// field: the whole field when it has one value, else the value and its
/// comma up to the next value.
fn first_value_span(datagram: &[u8], slot: &HeaderSlot) -> (usize, usize) {
    match split_first_value(slot.value.of(datagram)) {
        Some((first, rest)) => (offset_in(datagram, first), offset_in(datagram, rest)),
        None => (slot.line.start as usize, slot.line.end as usize),
    }
}

/// A comma-separated header value's first value and what follows it from
/// the next value that is not empty; `None` when nothing does, so that the
/// whole field goes and no `Route: ` is left with no value behind.
fn split_first_value(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut values = CommaSplit::new(value);
    let first = values.next().filter(|first| !first.is_empty())?;
    let next = values.find(|v| !v.is_empty())?;
    Some((first, value.get(offset_in(value, next)..)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::{Limits, Scanner};

    const INVITE: &str = "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
Route: <sip:10.0.0.1:5060;lr>, <sip:core.example.com;lr>\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Content-Length: 0\r\n\
\r\n";

    fn editor() -> Editor {
        Editor::new(LocalAddress::new("10.0.0.1", 5060))
    }

    fn forward(msg: &str, source: &str, record_route: bool) -> String {
        let mut scanner = Scanner::new(Limits::default());
        let m = scanner.scan(msg.as_bytes()).unwrap();
        let mut out = [0u8; 4096];
        let f = Forward {
            source: source.parse().unwrap(),
            branch_key: b"abc",
            record_route,
            inbound: Transport::Udp,
            outbound: Transport::Udp,
        };
        let n = editor().forward_request(&m, &f, &mut out).unwrap();
        String::from_utf8(out[..n].to_vec()).unwrap()
    }

    #[test]
    fn request_forward() {
        let got = forward(INVITE, "192.0.2.7:6000", true);
        // Record-Route goes before the Vias, which stay together.
        let want = "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Record-Route: <sip:10.0.0.1:5060;lr>\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;rport=6000;received=192.0.2.7\r\n\
Max-Forwards: 69\r\n\
Route: <sip:core.example.com;lr>\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Content-Length: 0\r\n\
\r\n";
        assert_eq!(got, want);
    }

    #[test]
    fn no_received_when_sent_by_is_source_and_single_route_line_removed() {
        let msg = INVITE
            .replace(
                "pc33.atlanta.example.com;branch=z9hG4bK776asdhds;rport",
                "192.0.2.7:6000;branch=z9hG4bK1",
            )
            .replace(
                "Route: <sip:10.0.0.1:5060;lr>, <sip:core.example.com;lr>\r\n",
                "Route: <sip:10.0.0.1;lr>\r\n",
            )
            .replace("Max-Forwards: 70\r\n", "");
        let got = forward(&msg, "192.0.2.7:6000", false);
        assert!(
            got.contains("Via: SIP/2.0/UDP 192.0.2.7:6000;branch=z9hG4bK1\r\n"),
            "{got}"
        );
        assert!(!got.contains("Route:"), "{got}");
        assert!(
            got.ends_with("Content-Length: 0\r\nMax-Forwards: 70\r\n\r\n"),
            "{got}"
        );
        assert!(!got.contains("Record-Route"));
    }

    /// Our Route popped from a list with empty elements: what is left
    /// starts at the next real value, and a list of ours alone (plus
    /// commas) goes whole, never leaving `Route: ` with no value.
    #[test]
    fn popping_our_route_skips_empty_list_elements() {
        let ours = "Route: <sip:10.0.0.1:5060;lr>, <sip:core.example.com;lr>\r\n";
        let got = forward(
            &INVITE.replace(
                ours,
                "Route: <sip:10.0.0.1:5060;lr>, , <sip:core.example.com;lr>\r\n",
            ),
            "192.0.2.7:6000",
            false,
        );
        assert!(
            got.contains("\r\nRoute: <sip:core.example.com;lr>\r\n"),
            "{got}"
        );
        let got = forward(
            &INVITE.replace(ours, "Route: <sip:10.0.0.1:5060;lr>, \r\n"),
            "192.0.2.7:6000",
            false,
        );
        assert!(!got.contains("Route:"), "{got}");
    }

    /// A CANCEL (or ACK) carries the Route set of the request it goes
    /// with (§9.1): a value this proxy cannot parse is copied too, where it
    /// used to be left out.
    #[test]
    fn a_hop_request_keeps_every_route_but_ours() {
        let sent = INVITE.replace(
            "Route: <sip:10.0.0.1:5060;lr>, <sip:core.example.com;lr>\r\n",
            "Route: <sip:10.0.0.1:5060;lr>, <sip:core.example.com;lr>\r\nRoute: <sip:edge.example.com;lr\r\n",
        );
        let mut scanner = Scanner::new(Limits::default());
        let m = scanner.scan(sent.as_bytes()).unwrap();
        let mut out = [0u8; 4096];
        let n = editor()
            .write_hop_request(
                &m,
                HopMethod::Cancel,
                b"Bob <sip:bob@biloxi.example.com>",
                b"k",
                Transport::Udp,
                &mut out,
            )
            .unwrap();
        let got = std::str::from_utf8(&out[..n]).unwrap();
        assert!(
            got.contains(
                "\r\nRoute: <sip:core.example.com;lr>\r\nRoute: <sip:edge.example.com;lr\r\n"
            ),
            "{got}"
        );
        assert!(!got.contains("10.0.0.1:5060;lr"), "{got}");
    }

    #[test]
    fn foreign_route_is_kept_and_old_received_replaced() {
        let msg = INVITE
            .replace("<sip:10.0.0.1:5060;lr>, ", "")
            .replace(";rport", ";received=1.2.3.4");
        let got = forward(&msg, "[2001:db8::5]:7000", false);
        assert!(got.contains("Route: <sip:core.example.com;lr>\r\n"));
        assert!(
            got.contains(";branch=z9hG4bK776asdhds;received=[2001:db8::5]\r\n"),
            "{got}"
        );
    }

    #[test]
    fn response_forward_strips_our_via() {
        let resp = "SIP/2.0 180 Ringing\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc, SIP/2.0/UDP 192.0.2.7:6000;branch=z9hG4bK1\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\nEXTRA";
        let mut scanner = Scanner::new(Limits::default());
        let m = scanner.scan(resp.as_bytes()).unwrap();
        let mut out = [0u8; 1024];
        let n = editor().forward_response(&m, &mut out).unwrap();
        let got = std::str::from_utf8(&out[..n]).unwrap();
        assert!(
            got.contains("\r\nVia: SIP/2.0/UDP 192.0.2.7:6000;branch=z9hG4bK1\r\n"),
            "{got}"
        );
        assert!(!got.contains("EXTRA"));

        let split = resp.replace(", SIP/2.0/UDP 192", "\r\nVia: SIP/2.0/UDP 192");
        let m = scanner.scan(split.as_bytes()).unwrap();
        let n = editor().forward_response(&m, &mut out).unwrap();
        let got = std::str::from_utf8(&out[..n]).unwrap();
        assert!(
            got.starts_with(
                "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 192.0.2.7:6000;branch=z9hG4bK1\r\nFrom"
            ),
            "{got}"
        );
    }

    #[test]
    fn response_not_ours_is_refused() {
        let resp = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.9.9.9;branch=z9hG4bKabc\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n\r\n";
        let mut scanner = Scanner::new(Limits::default());
        let m = scanner.scan(resp.as_bytes()).unwrap();
        let mut out = [0u8; 1024];
        assert_eq!(
            editor().forward_response(&m, &mut out),
            Err(EditError::ViaNotOurs)
        );
        let only = resp.replace("10.9.9.9", "10.0.0.1:5060");
        let m = scanner.scan(only.as_bytes()).unwrap();
        assert_eq!(
            editor().forward_response(&m, &mut out),
            Err(EditError::ViaOnlyOurs)
        );
    }

    #[test]
    fn small_buffer_is_an_error() {
        let mut scanner = Scanner::new(Limits::default());
        let m = scanner.scan(INVITE.as_bytes()).unwrap();
        let mut out = [0u8; 64];
        let f = Forward {
            source: "192.0.2.7:6000".parse().unwrap(),
            branch_key: b"k",
            record_route: true,
            inbound: Transport::Udp,
            outbound: Transport::Udp,
        };
        assert_eq!(
            editor().forward_request(&m, &f, &mut out),
            Err(EditError::BufferFull)
        );
    }
}
