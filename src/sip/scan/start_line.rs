//! The start line: a request line or a status line.

use crate::sip::error::{Fault, StartKind};
use crate::sip::lex::{any_byte, bytes_equal, find_byte, is_token_str, parse_decimal};
use crate::sip::method::Method;
use crate::sip::uri::Uri;

/// The first line of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartLine<'m> {
    Request {
        method: Method,
        method_text: &'m [u8],
        uri: Uri<'m>,
        uri_text: &'m [u8],
    },
    Response {
        code: u16,
        reason: &'m [u8],
    },
}

impl StartLine<'_> {
    /// What validation parses the start line into.
    pub(super) const EMPTY: StartLine<'static> = StartLine::Response {
        code: 0,
        reason: &[],
    };
}

/// Whether a rejected message is an ACK, told from its start line alone
/// (the method may be what failed to parse around it). Only on the error
/// path: a message that scans knows its method.
pub(super) fn is_ack(kind: StartKind, start_line: &[u8]) -> bool {
    kind == StartKind::Request && start_line.starts_with(b"ACK ")
}

/// Parses the start line into `out`, where the message keeps it (see
/// `NameAddr::parse_into` for why not a returned `Result`).
pub(super) fn parse_start_line<'m>(
    line: &'m [u8],
    kind: StartKind,
    out: &mut StartLine<'m>,
) -> Result<(), Fault> {
    match kind {
        StartKind::Response => {
            *out = parse_status_line(line)?;
            Ok(())
        }
        _ => parse_request_line(line, out),
    }
}

/// `Method SP Request-URI SP SIP-Version`. Trailing white space is
/// tolerated (RFC 4475 trws allows either answer; forwarding is kinder);
/// any other extra white space makes the line malformed (lwsstart, lwsruri).
fn parse_request_line<'m>(line: &'m [u8], out: &mut StartLine<'m>) -> Result<(), Fault> {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b' ' | b'\t') {
        end -= 1;
    }
    let line = &line[..end];
    let first_sp = find_byte(line, b' ').ok_or(Fault::StartLine)?;
    // `SIP/2.0` has no SP: a line that ends with it has its last SP before,
    // and a version that needs no further check.
    let (last_sp, sip_2_0) = if line.len() > 8 && line[line.len() - 8..] == *b" SIP/2.0" {
        (line.len() - 8, true)
    } else {
        (memchr::memrchr(b' ', line).ok_or(Fault::StartLine)?, false)
    };
    if first_sp == last_sp {
        return Err(Fault::StartLine);
    }
    let method_text = &line[..first_sp];
    let uri_text = &line[first_sp + 1..last_sp];
    let version = &line[last_sp + 1..];
    // A method we know is a token by construction; only others are checked.
    let method = Method::from_token(method_text);
    if (method == Method::Other && !is_token_str(method_text)) || uri_text.is_empty() {
        return Err(Fault::StartLine);
    }
    // LWS inside the Request-URI makes the line malformed, whatever else
    // is wrong after it. A URI that parses has none (a scheme is letters,
    // digits and `+-.`, and no scheme's rest may hold a byte up to SP), so
    // the URI is looked at for it only when something fails.
    let has_lws = || {
        any_byte(
            uri_text,
            |w| bytes_equal(w, b' ') | bytes_equal(w, b'\t'),
            |b| b == b' ' || b == b'\t',
        )
    };
    if !sip_2_0 {
        if let Err(fault) = check_version(version) {
            return Err(if has_lws() { Fault::StartLine } else { fault });
        }
    }
    *out = StartLine::Request {
        method,
        method_text,
        uri: Uri::EMPTY,
        uri_text,
    };
    if let StartLine::Request { uri, .. } = out {
        if let Err(fault) = Uri::parse_into(uri_text, uri) {
            return Err(if has_lws() {
                Fault::StartLine
            } else {
                Fault::RequestUri(fault)
            });
        }
    }
    debug_assert!(!has_lws());
    Ok(())
}

/// `SIP-Version SP Status-Code SP Reason-Phrase`.
fn parse_status_line(line: &[u8]) -> Result<StartLine<'_>, Fault> {
    let sp = find_byte(line, b' ').ok_or(Fault::StartLine)?;
    check_version(&line[..sp])?;
    let rest = &line[sp + 1..];
    let code_text = &rest[..rest.len().min(3)];
    if code_text.len() != 3 || rest.get(3).is_some_and(|&b| b != b' ') {
        return Err(Fault::StatusCode);
    }
    let code = parse_decimal(code_text, 699)
        .filter(|&c| c >= 100)
        .ok_or(Fault::StatusCode)? as u16;
    let reason = rest.get(4..).unwrap_or(&[]);
    if reason.iter().any(|&b| b < 0x20 && b != b'\t') {
        return Err(Fault::StartLine);
    }
    Ok(StartLine::Response { code, reason })
}

/// `SIP/2.0` passes; another well-formed version is `Version` (505);
/// anything else is a malformed start line.
fn check_version(version: &[u8]) -> Result<(), Fault> {
    // Nearly every peer writes it in capitals: one 7-byte compare.
    if version == b"SIP/2.0" || version.eq_ignore_ascii_case(b"SIP/2.0") {
        return Ok(());
    }
    let well_formed = version.len() > 4
        && version[..4].eq_ignore_ascii_case(b"SIP/")
        && version[4..].split(|&b| b == b'.').count() == 2
        && version[4..]
            .split(|&b| b == b'.')
            .all(|n| !n.is_empty() && n.iter().all(u8::is_ascii_digit));
    Err(if well_formed {
        Fault::Version
    } else {
        Fault::StartLine
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::error::Answer;
    use crate::sip::scan::tests::{scan, INVITE};
    use crate::sip::scan::{Limits, Scanner};

    #[test]
    fn status_line() {
        let ok = b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let mut scanner = Scanner::new(Limits::default());
        let m = scanner.scan(ok).unwrap();
        assert_eq!(m.status_code(), Some(180));
        assert!(
            matches!(m.start_line(), StartLine::Response { reason, .. } if *reason == b"Ringing")
        );
        let bad = std::str::from_utf8(ok).unwrap().replace("180", "1800");
        let err = Scanner::new(Limits::default())
            .scan(bad.as_bytes())
            .unwrap_err();
        assert_eq!(err.fault, Fault::StatusCode);
        assert_eq!(err.answer(), crate::sip::Answer::Drop);
    }

    #[test]
    fn version_505_versus_garbage_400() {
        assert_eq!(check_version(b"SIP/7.0"), Err(Fault::Version));
        assert_eq!(check_version(b"sip/2.0"), Ok(()));
        assert_eq!(check_version(b"HTTP/1.1x"), Err(Fault::StartLine));
        assert_eq!(check_version(b"SIP/2.0.1"), Err(Fault::StartLine));
    }

    /// An ACK is never answered (§17): whether it fails in validation or
    /// in framing, its error asks for silence where an INVITE's asks for
    /// a response.
    #[test]
    fn a_rejected_ack_asks_for_silence() {
        let invite = std::str::from_utf8(INVITE).unwrap();
        let ack = invite
            .replacen("INVITE sip:", "ACK sip:", 1)
            .replace("314159 INVITE", "314159 ACK");
        for (text, fault) in [
            (
                ack.replace("Max-Forwards: 70", "Max-Forwards: 0"),
                Fault::MaxForwardsZero,
            ),
            (
                ack[..ack.find("\r\n\r\n").unwrap() + 2].to_string(),
                Fault::Truncated,
            ),
        ] {
            let err = scan(text.as_bytes()).unwrap_err();
            assert_eq!(
                (err.fault, err.ack, err.answer()),
                (fault, true, Answer::Drop)
            );
        }
        let err = scan(
            invite
                .replace("Max-Forwards: 70", "Max-Forwards: 0")
                .as_bytes(),
        )
        .unwrap_err();
        assert!(!err.ack);
        assert!(matches!(err.answer(), Answer::Reply { code: 483, .. }));
    }
}
