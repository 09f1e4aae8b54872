//! The stateless proxy core: one datagram and its source in, one
//! [`Action`] out (forward these bytes there, answer the sender, or drop).
//!
//! It decides where a message goes (RFC 3261 §16 without transaction
//! state): initial requests to the backend set, in-dialog requests along
//! their Route set or to their Request-URI, responses back along their Via
//! (§18.2.2, RFC 3581). It never touches a socket or a clock; the shard
//! runtime feeds it datagrams and sends what it writes. Transactions
//! (retransmissions, timers, CANCEL, failover) are the next layer up.

use std::net::SocketAddr;

use crate::sip::host_ip;
use crate::sip::lex::{fnv1a, hex16};
use crate::sip::{
    write_rejection, write_response, Answer, EditError, Editor, Fault, Forward, LocalAddress,
    LocalResponse, Message, Method, Scanner, Via, MAGIC_COOKIE,
};

/// How an initial request picks its backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// Each new request to the next backend in turn.
    RoundRobin,
    /// Every request of a call to the same backend: hash of Call-ID.
    CallIdHash,
}

/// What to do with a datagram. Bytes to send are in the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `out[..len]` to `to` (a request to the next hop, or a response
    /// back along its Via).
    Forward { to: SocketAddr, len: usize },
    /// Send `out[..len]`, a response the proxy wrote itself, to `to`.
    Reply { to: SocketAddr, len: usize },
    /// Send nothing; count the reason.
    Drop(DropReason),
}

/// Why a datagram was not sent on. Each has a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A malformed response, keep-alive or oversize datagram.
    Malformed(Fault),
    /// A malformed request whose answer could not be addressed (no Via).
    Unanswerable,
    /// A response whose top Via is not ours.
    ResponseNotOurs,
    /// A response to a request the proxy itself sent.
    ResponseForUs,
    /// The next hop is a host name: name resolution belongs to the shell.
    UnresolvedNextHop,
    /// The output buffer was too small.
    BufferFull,
    /// No backend is configured.
    NoBackend,
}

/// Counters by outcome, read by the shard for its statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub requests_forwarded: u64,
    pub responses_forwarded: u64,
    pub replies: u64,
    pub loops_detected: u64,
    pub dropped_malformed: u64,
    pub dropped_unanswerable: u64,
    pub dropped_response_not_ours: u64,
    pub dropped_response_for_us: u64,
    pub dropped_unresolved: u64,
    pub dropped_buffer_full: u64,
    pub dropped_no_backend: u64,
}

/// The stateless proxy of one shard. Holds its scanner (header slots) and
/// round-robin position; everything else is configuration.
#[derive(Debug)]
pub struct Proxy {
    scanner: Scanner,
    editor: Editor,
    backends: Vec<SocketAddr>,
    algorithm: Algorithm,
    next_backend: usize,
    counters: Counters,
}

impl Proxy {
    pub fn new(
        scanner: Scanner,
        local: LocalAddress,
        backends: Vec<SocketAddr>,
        algorithm: Algorithm,
    ) -> Proxy {
        Proxy {
            scanner,
            editor: Editor::new(local),
            backends,
            algorithm,
            next_backend: 0,
            counters: Counters::default(),
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Handles one datagram from `source`, writing what is to be sent into
    /// `out`.
    pub fn handle(&mut self, source: SocketAddr, datagram: &[u8], out: &mut [u8]) -> Action {
        let action = match self.scanner.scan(datagram) {
            Ok(message) if message.is_request() => {
                let action = route_request(
                    &self.editor,
                    &self.backends,
                    self.algorithm,
                    &mut self.next_backend,
                    &message,
                    source,
                    out,
                );
                match action {
                    Action::Forward { .. } => self.counters.requests_forwarded += 1,
                    Action::Reply { .. } => self.counters.loops_detected += 1,
                    Action::Drop(_) => {}
                }
                action
            }
            Ok(message) => {
                let action = route_response(&self.editor, &message, out);
                if let Action::Forward { .. } = action {
                    self.counters.responses_forwarded += 1;
                }
                action
            }
            Err(error) => match error.answer() {
                Answer::Drop => Action::Drop(DropReason::Malformed(error.fault)),
                // A malformed request's Via cannot be trusted: the answer
                // goes back to where the packet came from.
                Answer::Reply { .. } => {
                    match write_rejection(&mut self.scanner, datagram, &error, source, out) {
                        Ok(len) => Action::Reply { to: source, len },
                        Err(_) => Action::Drop(DropReason::Unanswerable),
                    }
                }
            },
        };
        self.count(&action);
        action
    }

    fn count(&mut self, action: &Action) {
        let c = &mut self.counters;
        match action {
            Action::Forward { .. } => {}
            Action::Reply { .. } => c.replies += 1,
            Action::Drop(reason) => {
                *match reason {
                    DropReason::Malformed(_) => &mut c.dropped_malformed,
                    DropReason::Unanswerable => &mut c.dropped_unanswerable,
                    DropReason::ResponseNotOurs => &mut c.dropped_response_not_ours,
                    DropReason::ResponseForUs => &mut c.dropped_response_for_us,
                    DropReason::UnresolvedNextHop => &mut c.dropped_unresolved,
                    DropReason::BufferFull => &mut c.dropped_buffer_full,
                    DropReason::NoBackend => &mut c.dropped_no_backend,
                } += 1;
            }
        }
    }
}

/// The branch key of our Via for this request: `<transaction>.<loop>`, 16
/// hex digits each (RFC 3261 §16.6 step 8).
///
/// The transaction half is the same for every retransmission and for the
/// CANCEL and non-2xx ACK of an INVITE (§16.11), because it hashes the
/// client's own transaction id (for RFC 2543 clients, without the magic
/// cookie, the fields §17.2.3 matches on instead). The loop half hashes
/// what a request keeps when it comes back to us unchanged (Request-URI,
/// tags, Call-ID, CSeq number), so [`is_loop`] can tell a loop from a
/// spiral.
fn branch_key(message: &Message<'_>) -> [u8; 33] {
    let via = message.top_via();
    let port = via.port.unwrap_or(5060).to_be_bytes();
    let transaction = match via.branch.filter(|_| via.has_magic_cookie()) {
        Some(branch) => fnv1a(&[branch, via.host, &port]),
        None => fnv1a(&[
            message.request_uri().map_or(&[][..], |u| u.opaque),
            message.to().tag.unwrap_or_default(),
            message.from().tag.unwrap_or_default(),
            message.call_id(),
            &message.cseq().number.to_be_bytes(),
            via.value,
        ]),
    };
    let mut key = [b'.'; 33];
    key[..16].copy_from_slice(&hex16(transaction));
    key[17..].copy_from_slice(&loop_hash(message));
    key
}

fn loop_hash(message: &Message<'_>) -> [u8; 16] {
    hex16(fnv1a(&[
        message.request_uri().map_or(&[][..], |u| u.opaque),
        message.to().tag.unwrap_or_default(),
        message.from().tag.unwrap_or_default(),
        message.call_id(),
        &message.cseq().number.to_be_bytes(),
    ]))
}

/// RFC 3261 §16.3 step 4: a Via of ours whose branch ends with this
/// request's loop hash means the request came back unchanged: a loop. Our
/// Via with another loop hash is a spiral (the Request-URI changed).
fn is_loop(local: &LocalAddress, message: &Message<'_>, loop_part: &[u8]) -> bool {
    message.vias().any(|via| {
        local.is_local(via.host, via.port.unwrap_or(5060))
            && via
                .branch
                .and_then(|b| b.strip_prefix(MAGIC_COOKIE))
                .and_then(|b| b.split_last_chunk::<17>())
                .is_some_and(|(_, tail)| tail[0] == b'.' && tail[1..] == *loop_part)
    })
}

fn route_request(
    editor: &Editor,
    backends: &[SocketAddr],
    algorithm: Algorithm,
    next_backend: &mut usize,
    message: &Message<'_>,
    source: SocketAddr,
    out: &mut [u8],
) -> Action {
    let key = branch_key(message);
    if is_loop(editor.local(), message, &key[17..]) {
        return reply(message, source, &LocalResponse::LOOP_DETECTED, out);
    }
    let method = message.method().unwrap_or(Method::Other);
    let in_dialog = message.to().tag.is_some();
    let destination = match next_hop(editor, message) {
        Hop::Uri(target) => match target {
            Some(addr) => addr,
            None => return Action::Drop(DropReason::UnresolvedNextHop),
        },
        Hop::Backend => {
            if backends.is_empty() {
                return Action::Drop(DropReason::NoBackend);
            }
            // Without transaction state, a CANCEL or ACK must reach the
            // backend its INVITE reached: only the Call-ID hash promises that.
            let sticky = in_dialog || matches!(method, Method::Ack | Method::Cancel);
            let index = if sticky || algorithm == Algorithm::CallIdHash {
                (fnv1a(&[message.call_id()]) % backends.len() as u64) as usize
            } else {
                *next_backend = (*next_backend + 1) % backends.len();
                *next_backend
            };
            backends[index]
        }
    };
    let forward = Forward {
        source,
        branch_key: &key,
        record_route: !in_dialog && method.creates_dialog(),
    };
    match editor.forward_request(message, &forward, out) {
        Ok(len) => Action::Forward {
            to: destination,
            len,
        },
        Err(_) => Action::Drop(DropReason::BufferFull),
    }
}

/// Where a request goes after our Route is popped.
enum Hop {
    /// A URI's address (`None` when its host is a name).
    Uri(Option<SocketAddr>),
    /// The backend set.
    Backend,
}

/// RFC 3261 §16.4 and §16.5 as a load balancer applies them: a request that
/// carries our Route is loose-routed (to the next Route, else to its
/// Request-URI); any other request is for the pool behind us.
fn next_hop(editor: &Editor, message: &Message<'_>) -> Hop {
    let mut routes = message.routes();
    let ours = match routes.next() {
        Some(Ok(top)) => editor.local().is_named_by(&top),
        _ => false,
    };
    if !ours {
        return Hop::Backend;
    }
    match routes.next() {
        Some(Ok(next)) => Hop::Uri(next.uri().ok().and_then(|u| uri_address(&u))),
        Some(Err(_)) => Hop::Uri(None),
        None => Hop::Uri(message.request_uri().and_then(uri_address)),
    }
}

/// A URI's socket address when its host is an IP literal (maddr wins).
fn uri_address(uri: &crate::sip::Uri<'_>) -> Option<SocketAddr> {
    let host = uri.maddr().unwrap_or(uri.host);
    Some(SocketAddr::new(host_ip(host)?, uri.port_or_default()))
}

fn reply(
    message: &Message<'_>,
    source: SocketAddr,
    response: &LocalResponse<'_>,
    out: &mut [u8],
) -> Action {
    match write_response(message, source, response, out) {
        Ok(len) => Action::Reply {
            to: reply_address(message.top_via(), source),
            len,
        },
        Err(_) => Action::Drop(DropReason::BufferFull),
    }
}

/// Where a response to a request received over UDP goes (RFC 3261 §18.2.2
/// with §18.2.1, RFC 3581 §4): the packet's source address, since that is
/// what `received` holds; its source port when the client asked with
/// `rport`, else the sent-by port.
pub fn reply_address(via: &Via<'_>, source: SocketAddr) -> SocketAddr {
    if via.rport.is_some() {
        return source;
    }
    SocketAddr::new(source.ip(), via.port.unwrap_or(5060))
}

/// Where a response we forward goes: the Via below ours, as the previous
/// hop's server transport filled it in (`received`, `rport`), else its
/// sent-by when that is an IP address.
pub fn response_address(via: &Via<'_>) -> Option<SocketAddr> {
    let ip = match via.received {
        Some(received) => host_ip(received)?,
        None => host_ip(via.host)?,
    };
    let port = match via.rport {
        Some(Some(port)) => port,
        _ => via.port.unwrap_or(5060),
    };
    Some(SocketAddr::new(ip, port))
}

fn route_response(editor: &Editor, message: &Message<'_>, out: &mut [u8]) -> Action {
    match editor.forward_response(message, out) {
        Ok(len) => match message.vias().nth(1).as_ref().and_then(response_address) {
            Some(to) => Action::Forward { to, len },
            None => Action::Drop(DropReason::UnresolvedNextHop),
        },
        Err(EditError::ViaNotOurs) => Action::Drop(DropReason::ResponseNotOurs),
        Err(EditError::ViaOnlyOurs) => Action::Drop(DropReason::ResponseForUs),
        Err(EditError::BufferFull | EditError::WrongKind) => Action::Drop(DropReason::BufferFull),
    }
}

#[cfg(test)]
mod tests;
