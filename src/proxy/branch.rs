use crate::sip::lex::{hex16, key_hash};
use crate::sip::{LocalAddress, Message, MAGIC_COOKIE};
use crate::txn::BranchKey;

/// Marks the key of a CANCEL we sent apart from the key of the INVITE
/// it cancels: both carry the same branch.
pub(super) const CANCEL_KEY: u64 = 0x9e37_79b9_7f4a_7c15;

/// The client transaction id in our branch on a response's top Via:
/// `z9hG4bK<16 hex id>.<16 hex loop>`.
pub(super) fn our_branch_id(local: &LocalAddress, message: &Message<'_>) -> Option<u64> {
    let via = message.top_via();
    if !local.is_local(via.host, via.port.unwrap_or(5060)) {
        return None;
    }
    BranchKey::parse_id(via.branch?.strip_prefix(MAGIC_COOKIE)?)
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
pub(super) fn branch_key(message: &Message<'_>) -> BranchKey {
    let via = message.top_via();
    let port = via.port.unwrap_or(5060).to_be_bytes();
    let transaction = match via.branch.filter(|_| via.has_magic_cookie()) {
        Some(branch) => key_hash(&[branch, via.host, &port]),
        None => key_hash(&[
            message.request_uri().map_or(&[][..], |u| u.opaque),
            message.to().tag.unwrap_or_default(),
            message.from().tag.unwrap_or_default(),
            message.call_id(),
            &message.cseq().number.to_be_bytes(),
            via.value,
        ]),
    };
    BranchKey::new(&hex16(transaction), &loop_hash(message))
}

pub(super) fn loop_hash(message: &Message<'_>) -> [u8; 16] {
    hex16(key_hash(&[
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
pub(super) fn is_loop(local: &LocalAddress, message: &Message<'_>, loop_part: &[u8]) -> bool {
    message.vias().any(|via| {
        local.is_local(via.host, via.port.unwrap_or(5060))
            && via
                .branch
                .and_then(|b| b.strip_prefix(MAGIC_COOKIE))
                .and_then(|b| b.split_last_chunk::<17>())
                .is_some_and(|(_, tail)| tail[0] == b'.' && tail[1..] == *loop_part)
    })
}
