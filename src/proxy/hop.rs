use super::branch::{branch_key, is_loop};
use super::outcome::{Action, DropReason};
use crate::balance::{MemberHealth, Routing, Selection, Selector, SetId};
use crate::sip::{
    host_ip, write_response, EditError, Editor, Forward, LocalResponse, Message, Method, Peer,
    Scheme, StartLine, Transport, Via,
};
use crate::txn::{ServerTxn, Slot, Target};
use std::net::SocketAddr;
use std::sync::Arc;

pub(super) fn route_request(
    editor: &Editor,
    routing: Option<&Routing>,
    selector: &mut Selector,
    message: &Message<'_>,
    source: Peer,
    out: &mut [u8],
) -> Action {
    let key = branch_key(message);
    if is_loop(editor.local(), message, key.loop_part()) {
        return match write_response(message, source.addr, &LocalResponse::LOOP_DETECTED, out) {
            Ok(len) => Action::Reply {
                to: reply_address(message.top_via(), source),
                len,
            },
            Err(_) => Action::Drop(DropReason::BufferFull),
        };
    }
    let method = message.method().unwrap_or(Method::Other);
    let in_dialog = message.to().tag.is_some();
    let destination = match next_hop(editor, message) {
        Hop::Uri(target) => match target {
            Some(addr) => addr,
            None => return Action::Drop(DropReason::UnresolvedNextHop),
        },
        Hop::Backend => {
            let Some(routing) = routing else {
                return Action::Drop(DropReason::NoBackend);
            };
            // Without transaction state, a CANCEL or ACK must reach the
            // backend its INVITE reached: only the Call-ID hash promises that.
            let set = pick_set(routing, message, source);
            match selector.select_by_call_id(routing, set, message.call_id()) {
                Selection::Member(index) => routing.set(set).members[index].peer(),
                Selection::AllDown | Selection::Exhausted => {
                    return Action::Drop(DropReason::NoBackend)
                }
            }
        }
    };
    let forward = Forward {
        source: source.addr,
        branch_key: key.as_bytes(),
        record_route: !in_dialog && method.creates_dialog(),
        inbound: source.transport,
        outbound: destination.transport,
    };
    match editor.forward_request(message, &forward, out) {
        Ok(len) => Action::Forward {
            to: destination,
            len,
        },
        Err(_) => Action::Drop(DropReason::BufferFull),
    }
}

/// The health of the pool member a try went to.
pub(super) fn member_health(
    servers: &crate::txn::Slab<ServerTxn>,
    server: Slot,
    backend: Option<usize>,
) -> Option<&Arc<MemberHealth>> {
    match &servers.get(server)?.target {
        Target::Pool { routing, set, .. } => Some(&routing.set(*set).members.get(backend?)?.health),
        Target::Fixed(_) => None,
    }
}

/// The destination set a new request goes to, by the routing rules.
pub(super) fn pick_set(routing: &Routing, message: &Message<'_>, source: Peer) -> SetId {
    routing.pick_set(
        method_token(message),
        message.request_uri().and_then(|u| u.user),
        message.request_uri().map_or(&[][..], |u| u.host),
        source.addr.ip(),
    )
}

/// A request's method as written (extension methods too).
pub(super) fn method_token<'m>(message: &Message<'m>) -> &'m [u8] {
    match message.start_line() {
        StartLine::Request { method_text, .. } => method_text,
        StartLine::Response { .. } => &[],
    }
}

/// Where a request goes after our Route is popped.
pub(super) enum Hop {
    /// A URI's address and transport (`None` when its host is a name or
    /// its transport one we do not speak).
    Uri(Option<Peer>),
    /// The backend set.
    Backend,
}

/// RFC 3261 §16.4 and §16.5 as a load balancer applies them: a request that
/// carries our Route is loose-routed (to the next Route, else to its
/// Request-URI); any other request is for the pool behind us. A second
/// Route of ours right below the first is ours too (RFC 5658 doubling).
pub(super) fn next_hop(editor: &Editor, message: &Message<'_>) -> Hop {
    let ours = |route: &crate::sip::NameAddr<'_>| editor.local().is_named_by(route);
    let mut routes = message.routes().peekable();
    match routes.next() {
        Some(Ok(top)) if ours(&top) => {}
        _ => return Hop::Backend,
    }
    if routes.peek().is_some_and(|r| r.as_ref().is_ok_and(ours)) {
        routes.next();
    }
    match routes.next() {
        Some(Ok(next)) => Hop::Uri(next.uri().ok().and_then(|u| uri_peer(&u))),
        Some(Err(_)) => Hop::Uri(None),
        None => Hop::Uri(message.request_uri().and_then(uri_peer)),
    }
}

/// A URI's address when its host is an IP literal (maddr wins), over the
/// transport it names: `transport=`, else TLS for `sips:`, else UDP.
pub(super) fn uri_peer(uri: &crate::sip::Uri<'_>) -> Option<Peer> {
    let host = uri.maddr().unwrap_or(uri.host);
    let addr = SocketAddr::new(host_ip(host)?, uri.port_or_default());
    let transport = match uri.transport() {
        Some(token) => Transport::parse(token)?,
        None if uri.scheme == Scheme::Sips => Transport::Tls,
        None => Transport::Udp,
    };
    Some(Peer::new(transport, addr))
}

/// Where a response to a request goes (RFC 3261 §18.2.2 with §18.2.1,
/// RFC 3581 §4). Over a stream: back over its connection. Over UDP: the
/// packet's source address, since that is what `received` holds; its
/// source port when the client asked with `rport`, else the sent-by port.
pub fn reply_address(via: &Via<'_>, source: Peer) -> Peer {
    if via.rport.is_some() || source.transport.is_stream() {
        return source;
    }
    Peer::udp(SocketAddr::new(source.addr.ip(), via.port.unwrap_or(5060)))
}

/// Where a response we forward with no transaction goes: the Via below
/// ours, as the previous hop's server transport filled it in (`received`,
/// `rport`), else its sent-by when that is an IP address; over the Via's
/// transport (the shell finds that peer's connection, or opens one).
pub fn response_address(via: &Via<'_>) -> Option<Peer> {
    let ip = match via.received {
        Some(received) => host_ip(received)?,
        None => host_ip(via.host)?,
    };
    let port = match via.rport {
        Some(Some(port)) => port,
        _ => via.port.unwrap_or(5060),
    };
    let transport = Transport::parse(via.transport)?;
    Some(Peer::new(transport, SocketAddr::new(ip, port)))
}

pub(super) fn route_response(editor: &Editor, message: &Message<'_>, out: &mut [u8]) -> Action {
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
