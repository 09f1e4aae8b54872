//! SIP text for tests: the caller's requests (INVITE and any other
//! method, its CANCEL and ACK) and a backend's response to a request, as
//! an RFC 3261 user agent writes them.

use super::lab::LB;
use super::outbox::Sent;
use crate::sip::{Limits, Scanner, StartLine};

/// The caller's INVITE of call `call_id` (see [`request`]).
pub fn invite(call_id: &str) -> String {
    request("INVITE", call_id, 1)
}

/// An initial request from the caller, branch from the Call-ID and method.
pub fn request(method: &str, call_id: &str, cseq: u32) -> String {
    format!(
        "{method} sip:+15551230001@{LB} SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5070;branch=z9hG4bK-{call_id}-{method};rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:+15551230001@{LB}>\r\n\
From: <sip:alice@example.com>;tag=f1\r\n\
Call-ID: {call_id}\r\n\
CSeq: {cseq} {method}\r\n\
Contact: <sip:alice@198.51.100.7:5070>\r\n\
Content-Length: 0\r\n\r\n"
    )
}

/// The caller's CANCEL of `invite(call_id)`: same branch (RFC 3261 §9.1).
pub fn cancel(call_id: &str) -> String {
    let cancel = caller_request(invite(call_id).as_bytes(), b"CANCEL", None);
    String::from_utf8(cancel.expect("our INVITE scans")).expect("our INVITE is text")
}

/// The caller's ACK for a non-2xx final to `invite(call_id)`: same branch,
/// the response's To.
pub fn ack_for(call_id: &str, response: &Sent) -> String {
    let to = response.header("To").expect("a response has a To");
    let ack = caller_request(invite(call_id).as_bytes(), b"ACK", Some(to.as_bytes()));
    String::from_utf8(ack.expect("our INVITE scans")).expect("our INVITE is text")
}

/// The INVITE `invite` turned into its CANCEL or (with the To of the
/// response it acknowledges) its ACK, as its sender writes them: the
/// method in the start line and CSeq changed, all else kept. `None` for
/// what does not scan under the default limits or is not a request.
pub fn caller_request(invite: &[u8], method: &[u8], to: Option<&[u8]>) -> Option<Vec<u8>> {
    let mut scanner = Scanner::new(Limits::default());
    let m = scanner.scan(invite).ok()?;
    let StartLine::Request { method_text, .. } = *m.start_line() else {
        return None;
    };
    let at = |part: &[u8]| part.as_ptr() as usize - invite.as_ptr() as usize;
    let mut splices = vec![
        (at(method_text), method_text.len(), method),
        (at(m.cseq().method_text), m.cseq().method_text.len(), method),
    ];
    if let Some(to) = to {
        splices.push((at(m.to().value), m.to().value.len(), to));
    }
    splices.sort_by_key(|s| s.0);
    let mut out = Vec::with_capacity(invite.len() + 64);
    let mut done = 0;
    for (start, len, with) in splices {
        if start < done {
            return None;
        }
        out.extend_from_slice(&invite[done..start]);
        out.extend_from_slice(with);
        done = start + len;
    }
    out.extend_from_slice(&invite[done..]);
    Some(out)
}

/// What a backend answers to `request`: [`response_head`], no body.
pub fn response(request: &str, code: u16, tag: Option<&str>) -> String {
    let mut out = response_head(request, code, tag);
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

/// The start of a backend's response to `request`: the status line, then
/// the request's Vias, Record-Route, From, To (with `tag` when given and
/// it has none), Call-ID and CSeq copied in their order (RFC 3261
/// §8.2.6.2), each line ending in CRLF. The caller writes the rest of the
/// header fields and the blank line.
pub fn response_head(request: &str, code: u16, tag: Option<&str>) -> String {
    const KEEP: [&str; 5] = ["Via:", "Record-Route:", "From:", "Call-ID:", "CSeq:"];
    let head = request.split("\r\n\r\n").next().unwrap_or_default();
    let mut out = format!("SIP/2.0 {code} {}\r\n", reason(code));
    for line in head.split("\r\n").skip(1) {
        if KEEP.iter().any(|k| line.starts_with(k)) {
            out.push_str(line);
            out.push_str("\r\n");
        } else if line.starts_with("To:") {
            out.push_str(line);
            if let Some(tag) = tag.filter(|_| !line.contains(";tag=")) {
                out.push_str(";tag=");
                out.push_str(tag);
            }
            out.push_str("\r\n");
        }
    }
    out
}

/// The reason phrase the tests' backends write for `code`.
pub fn reason(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        183 => "Session Progress",
        200 => "OK",
        404 => "Not Found",
        486 => "Busy Here",
        487 => "Request Terminated",
        500 => "Server Internal Error",
        503 => "Service Unavailable",
        603 => "Decline",
        _ => "Whatever",
    }
}
