//! Via values (RFC 3261 §20.42, §18.2.1; RFC 3581 rport).

use super::lex::{
    host_end, is_lws, is_name, is_token, leading_decimal, parse_decimal, skip_lws, token_end,
};
use super::params::HeaderParams;
use super::uri::is_host;

/// RFC 3261 §8.1.1.7: a branch that starts with this was made by an RFC 3261
/// element and is unique on its own; without it, RFC 2543 matching applies.
pub const MAGIC_COOKIE: &[u8] = b"z9hG4bK";

/// One Via value, every field a slice of the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Via<'m> {
    /// The whole value, from `SIP` to the end of its last parameter.
    pub value: &'m [u8],
    /// `UDP`, `TCP`, `TLS`, `SCTP`, `WS`, ... as written.
    pub transport: &'m [u8],
    pub host: &'m [u8],
    pub port: Option<u16>,
    pub branch: Option<&'m [u8]>,
    pub received: Option<&'m [u8]>,
    /// RFC 3581: `None` without the parameter, `Some(None)` for a bare
    /// `rport` (the client asks us to fill it in), `Some(Some(p))` once filled.
    pub rport: Option<Option<u16>>,
    /// The `rport` parameter name itself, so the editor can write `=port`
    /// right after it.
    pub rport_name: Option<&'m [u8]>,
    pub maddr: Option<&'m [u8]>,
    pub ttl: Option<u8>,
}

/// What is wrong with a Via value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViaError {
    /// The value is empty (`Via: a,,b`).
    Empty,
    /// Not `SIP / 2.0 / transport`.
    Protocol,
    /// The sent-by host or port is malformed.
    SentBy,
    /// A malformed parameter, or a known one (`ttl`, `rport`) out of range.
    Parameter,
}

impl<'m> Via<'m> {
    pub(crate) const EMPTY: Via<'static> = Via {
        value: &[],
        transport: &[],
        host: &[],
        port: None,
        branch: None,
        received: None,
        rport: None,
        rport_name: None,
        maddr: None,
        ttl: None,
    };

    /// Parses one Via value, already split from its neighbours and trimmed.
    pub fn parse(value: &'m [u8]) -> Result<Via<'m>, ViaError> {
        let mut via = Via::EMPTY;
        Self::parse_into(value, &mut via)?;
        Ok(via)
    }

    /// [`Via::parse`] writing into the caller's `out`, for the scanner (see
    /// `NameAddr::parse_into`).
    pub(crate) fn parse_into(value: &'m [u8], out: &mut Via<'m>) -> Result<(), ViaError> {
        if value.is_empty() {
            return Err(ViaError::Empty);
        }
        // Nearly every Via is written `SIP/2.0/`; the LWS-tolerant walk is
        // for the rest (RFC 4475 wsinv).
        let i = if value.starts_with(b"SIP/2.0/") {
            8
        } else {
            let mut i = expect_token(value, 0, Some(b"SIP"))?;
            i = expect_slash(value, i)?;
            i = expect_token(value, i, Some(b"2.0"))?;
            expect_slash(value, i)?
        };
        // A three-letter transport and one SP (`UDP `, `TCP `, `TLS `) is
        // told by a few byte tests; anything else takes the walks.
        let (transport_start, transport_end, host_start) = match value.get(i..i + 5) {
            Some(&[a, b, c, b' ', h])
                if is_token(a) && is_token(b) && is_token(c) && !is_lws(h) =>
            {
                (i, i + 3, i + 4)
            }
            _ => {
                let transport_start = skip_lws(value, i);
                let transport_end = token_end(value, transport_start);
                if transport_end == transport_start {
                    return Err(ViaError::Protocol);
                }
                let host_start = skip_lws(value, transport_end);
                if host_start == transport_end {
                    return Err(ViaError::Protocol);
                }
                (transport_start, transport_end, host_start)
            }
        };
        let transport = &value[transport_start..transport_end];
        let (host, port, after) = parse_sent_by(value, host_start)?;
        *out = Via {
            value,
            transport,
            host,
            port,
            branch: None,
            received: None,
            rport: None,
            rport_name: None,
            maddr: None,
            ttl: None,
        };
        out.parse_params(after)
    }

    /// Reads the parameters the proxy uses (branch, received, rport,
    /// maddr, ttl) from the parameters of `self.value` that start at
    /// `after`; the others are checked for syntax only.
    #[inline(always)]
    fn parse_params(&mut self, after: usize) -> Result<(), ViaError> {
        let via = self;
        for param in HeaderParams::new(via.value, after) {
            let param = param.map_err(|_| ViaError::Parameter)?;
            let name = param.name;
            if is_name(name, b"branch") {
                via.branch = Some(param.value.ok_or(ViaError::Parameter)?);
            } else if is_name(name, b"received") {
                via.received = Some(param.value.ok_or(ViaError::Parameter)?);
            } else if is_name(name, b"rport") {
                let port = match param.value {
                    None => None,
                    Some(v) => Some(
                        parse_decimal(v, u32::from(u16::MAX)).ok_or(ViaError::Parameter)? as u16,
                    ),
                };
                via.rport = Some(port);
                via.rport_name = Some(name);
            } else if is_name(name, b"maddr") {
                via.maddr = Some(param.value.ok_or(ViaError::Parameter)?);
            } else if is_name(name, b"ttl") {
                let v = param.value.ok_or(ViaError::Parameter)?;
                via.ttl = Some(parse_decimal(v, 255).ok_or(ViaError::Parameter)? as u8);
            }
        }
        Ok(())
    }

    /// Whether the branch carries the RFC 3261 magic cookie.
    pub fn has_magic_cookie(&self) -> bool {
        self.branch.is_some_and(|b| b.starts_with(MAGIC_COOKIE))
    }
}

fn expect_token(s: &[u8], at: usize, want: Option<&[u8]>) -> Result<usize, ViaError> {
    let start = skip_lws(s, at);
    let end = token_end(s, start);
    if end == start {
        return Err(ViaError::Protocol);
    }
    if let Some(want) = want {
        if !s[start..end].eq_ignore_ascii_case(want) {
            return Err(ViaError::Protocol);
        }
    }
    Ok(end)
}

fn expect_slash(s: &[u8], at: usize) -> Result<usize, ViaError> {
    let i = skip_lws(s, at);
    if s.get(i) != Some(&b'/') {
        return Err(ViaError::Protocol);
    }
    Ok(i + 1)
}

/// `host [ COLON port ]` starting at `at`; returns the index after it.
fn parse_sent_by(s: &[u8], at: usize) -> Result<(&[u8], Option<u16>, usize), ViaError> {
    let host_end = if s.get(at) == Some(&b'[') {
        let end = memchr::memchr(b']', &s[at..]).ok_or(ViaError::SentBy)? + at + 1;
        if !is_host(&s[at..end]) {
            return Err(ViaError::SentBy);
        }
        end
    } else {
        // The pass that finds the end of a name is its check.
        let end = host_end(s, at);
        if end == at {
            return Err(ViaError::SentBy);
        }
        end
    };
    let host = &s[at..host_end];
    let colon = skip_lws(s, host_end);
    if s.get(colon) != Some(&b':') {
        return Ok((host, None, host_end));
    }
    let port_start = skip_lws(s, colon + 1);
    // The digits found and their value in one pass.
    let (port, port_end) =
        leading_decimal(s, port_start, u32::from(u16::MAX)).ok_or(ViaError::SentBy)?;
    if port_end == port_start {
        return Err(ViaError::SentBy);
    }
    Ok((host, Some(port as u16), port_end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sent_by_port_bounds() {
        let port = |v: &[u8]| Via::parse(v).map(|via| via.port);
        assert_eq!(port(b"SIP/2.0/UDP h:65535"), Ok(Some(65535)));
        assert_eq!(port(b"SIP/2.0/UDP h : 0080;rport"), Ok(Some(80)));
        assert_eq!(port(b"SIP/2.0/UDP h:65536"), Err(ViaError::SentBy));
        assert_eq!(
            port(b"SIP/2.0/UDP h:99999999999999999999"),
            Err(ViaError::SentBy)
        );
        assert_eq!(port(b"SIP/2.0/UDP h:"), Err(ViaError::SentBy));
        assert_eq!(port(b"SIP/2.0/UDP h:;rport"), Err(ViaError::SentBy));
        assert_eq!(port(b"SIP/2.0/UDP h"), Ok(None));
    }

    #[test]
    fn plain() {
        let v = Via::parse(b"SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bK776asdhds;rport").unwrap();
        assert_eq!(v.transport, b"UDP");
        assert_eq!(v.host, b"10.0.0.1");
        assert_eq!(v.port, Some(5062));
        assert_eq!(v.branch, Some(&b"z9hG4bK776asdhds"[..]));
        assert_eq!(v.rport, Some(None));
        assert!(v.has_magic_cookie());
    }

    #[test]
    fn folded_and_spaced() {
        let v = Via::parse(b"SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw").unwrap();
        assert_eq!(v.transport, b"UDP");
        assert_eq!(v.host, b"192.0.2.2");
        assert_eq!(v.branch, Some(&b"390skdjuw"[..]));
        assert!(!v.has_magic_cookie());
        let v = Via::parse(b"SIP  /    2.0   / UDP  192.168.255.111   ; branch=\r\n z9hG4bK30239")
            .unwrap();
        assert_eq!(v.branch, Some(&b"z9hG4bK30239"[..]));
    }

    #[test]
    fn fields() {
        let v = Via::parse(
            b"SIP/2.0/TCP [2001:db8::9]:5070;received=192.0.2.9;rport=1234;maddr=224.2.0.1;ttl=16",
        )
        .unwrap();
        assert_eq!(v.host, b"[2001:db8::9]");
        assert_eq!(v.port, Some(5070));
        assert_eq!(v.received, Some(&b"192.0.2.9"[..]));
        assert_eq!(v.rport, Some(Some(1234)));
        assert_eq!(v.maddr, Some(&b"224.2.0.1"[..]));
        assert_eq!(v.ttl, Some(16));
    }

    #[test]
    fn malformed() {
        assert_eq!(
            Via::parse(b"SIP/2.0/UDP 192.0.2.15;;"),
            Err(ViaError::Parameter)
        );
        assert_eq!(Via::parse(b"SIP/3.0/UDP h"), Err(ViaError::Protocol));
        assert_eq!(Via::parse(b"SIP/2.0/UDP"), Err(ViaError::Protocol));
        assert_eq!(Via::parse(b"SIP/2.0/UDP h:99999"), Err(ViaError::SentBy));
        assert_eq!(
            Via::parse(b"SIP/2.0/UDP h;ttl=300"),
            Err(ViaError::Parameter)
        );
        assert_eq!(Via::parse(b""), Err(ViaError::Empty));
    }
}
