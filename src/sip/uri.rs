//! SIP URIs (RFC 3261 §19.1), parsed only as deep as routing needs.
//!
//! Every field is a slice of the datagram; escapes (`%41`) are left as they
//! are, because a proxy compares and forwards URIs, it does not display them.

use super::lex::{
    any_byte, bytes_below, bytes_equal, class_end, find_byte, host_end, is, is_name, parse_decimal,
    HOST, SCHEME,
};

/// The URI schemes sipshard routes. Anything else in a Request-URI is
/// answered 416 (RFC 3261 §8.2.2.1); in other headers it is carried opaque.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Sip,
    Sips,
    Tel,
    /// A syntactically valid scheme that sipshard does not route.
    Other,
}

/// Why a URI did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UriError {
    /// No `scheme:` prefix, or the scheme has characters RFC 3986 forbids.
    Scheme,
    /// White space or a control character inside the URI.
    IllegalCharacter,
    /// The host part is empty or has characters no hostname or IP may have.
    Host,
    /// The port is not a number in 0..=65535.
    Port,
    /// A `;` with no parameter name after it.
    Parameter,
}

/// A parsed URI. For `sip:`/`sips:` every field is filled; for other
/// schemes only `scheme_name` and `opaque` are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uri<'m> {
    pub scheme: Scheme,
    /// The scheme as written (`SIP`, `sips`, `tel`, ...).
    pub scheme_name: &'m [u8],
    /// Everything after `scheme:`.
    pub opaque: &'m [u8],
    /// The user part, escapes kept; `None` when there is no `@`.
    pub user: Option<&'m [u8]>,
    /// The host: a name, an IPv4 address, or an IPv6 reference with brackets.
    pub host: &'m [u8],
    pub port: Option<u16>,
    /// The raw `;name=value...` parameters, without the first `;`.
    pub params: &'m [u8],
    /// The raw `?...` headers component, without the `?`.
    pub headers: Option<&'m [u8]>,
}

impl<'m> Uri<'m> {
    pub(crate) const EMPTY: Uri<'static> = Uri {
        scheme: Scheme::Other,
        scheme_name: &[],
        opaque: &[],
        user: None,
        host: &[],
        port: None,
        params: &[],
        headers: None,
    };

    /// Parses `s`, which must already be trimmed of LWS.
    pub fn parse(s: &'m [u8]) -> Result<Uri<'m>, UriError> {
        let mut uri = Uri::EMPTY;
        Self::parse_into(s, &mut uri)?;
        Ok(uri)
    }

    /// [`Uri::parse`] writing into the caller's `out`, for the scanner (see
    /// `NameAddr::parse_into`).
    pub(crate) fn parse_into(s: &'m [u8], out: &mut Uri<'m>) -> Result<(), UriError> {
        let colon = scheme_end(s).ok_or(UriError::Scheme)?;
        let scheme_name = &s[..colon];
        let opaque = &s[colon + 1..];
        let scheme = if is_name(scheme_name, b"sip") {
            Scheme::Sip
        } else if is_name(scheme_name, b"sips") {
            Scheme::Sips
        } else if is_name(scheme_name, b"tel") {
            Scheme::Tel
        } else {
            Scheme::Other
        };
        *out = Uri {
            scheme,
            scheme_name,
            opaque,
            user: None,
            host: &[],
            port: None,
            params: &[],
            headers: None,
        };
        let uri = out;
        match scheme {
            Scheme::Sip | Scheme::Sips => uri.parse_sip_body()?,
            Scheme::Tel | Scheme::Other => {
                if has_illegal_byte(opaque) {
                    return Err(UriError::IllegalCharacter);
                }
            }
        }
        if scheme == Scheme::Tel {
            // tel:+1-201-555-0123;phone-context=... : the number is the
            // "user" for routing by prefix.
            let end = find_byte(opaque, b';').unwrap_or(opaque.len());
            if end == 0 {
                return Err(UriError::Host);
            }
            uri.user = Some(&opaque[..end]);
            uri.params = opaque.get(end + 1..).unwrap_or(&[]);
        }
        Ok(())
    }

    fn parse_sip_body(&mut self) -> Result<(), UriError> {
        let s = self.opaque;
        if has_illegal_byte(s) {
            return Err(UriError::IllegalCharacter);
        }
        // `@` never appears unescaped outside userinfo, so the first one ends it.
        let at_sign = find_byte(s, b'@');
        let hostport_start = match at_sign {
            Some(at) => {
                let userinfo = &s[..at];
                let user_end = find_byte(userinfo, b':').unwrap_or(userinfo.len());
                self.user = Some(&userinfo[..user_end]);
                at + 1
            }
            None => 0,
        };
        let rest = &s[hostport_start..];
        let host_end = if rest.first() == Some(&b'[') {
            memchr::memchr(b']', rest).ok_or(UriError::Host)? + 1
        } else {
            // One pass: host characters, then one of `:` `;` `?` or the end.
            let end = host_end(rest, 0);
            if end == 0 || !matches!(rest.get(end), None | Some(b':' | b';' | b'?')) {
                return Err(UriError::Host);
            }
            end
        };
        let after_host = host_end;
        let host = &rest[..host_end];
        // A name was checked by the pass that found its end.
        if host[0] == b'[' && !is_host(host) {
            return Err(UriError::Host);
        }
        self.host = host;
        let mut i = after_host;
        if rest.get(i) == Some(&b':') {
            let port_end = rest[i + 1..]
                .iter()
                .position(|&b| matches!(b, b';' | b'?'))
                .map_or(rest.len(), |p| p + i + 1);
            let port =
                parse_decimal(&rest[i + 1..port_end], u32::from(u16::MAX)).ok_or(UriError::Port)?;
            self.port = Some(port as u16);
            i = port_end;
        }
        let headers_at = match rest.get(i) {
            Some(b'?') => Some(i),
            Some(_) => find_byte(&rest[i..], b'?').map(|p| p + i),
            None => None,
        };
        let params_end = headers_at.unwrap_or(rest.len());
        if rest.get(i) == Some(&b';') {
            self.params = &rest[i + 1..params_end];
            if has_empty_param_name(self.params) {
                return Err(UriError::Parameter);
            }
        }
        self.headers = headers_at.map(|h| &rest[h + 1..]);
        Ok(())
    }

    /// The value of URI parameter `name` (case-insensitive): `Some(None)` for
    /// a flag such as `lr`, `Some(Some(v))` for `name=v`.
    pub fn param(&self, name: &[u8]) -> Option<Option<&'m [u8]>> {
        Params::new(self.params)
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Whether the URI carries `lr` (RFC 3261 loose routing).
    pub fn lr(&self) -> bool {
        self.param(b"lr").is_some()
    }

    pub fn transport(&self) -> Option<&'m [u8]> {
        self.param(b"transport").flatten()
    }

    pub fn maddr(&self) -> Option<&'m [u8]> {
        self.param(b"maddr").flatten()
    }

    /// The port, or the scheme's default (5060 for sip, 5061 for sips).
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(match self.scheme {
            Scheme::Sips => 5061,
            _ => 5060,
        })
    }
}

/// Iterates `name[=value]` pairs of a `;`-separated parameter list.
pub(crate) struct Params<'m> {
    rest: Option<&'m [u8]>,
}

impl<'m> Params<'m> {
    pub(crate) fn new(s: &'m [u8]) -> Self {
        Params {
            rest: if s.is_empty() { None } else { Some(s) },
        }
    }
}

impl<'m> Iterator for Params<'m> {
    type Item = (&'m [u8], Option<&'m [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        let s = self.rest?;
        let end = memchr::memchr(b';', s).unwrap_or(s.len());
        self.rest = s.get(end + 1..).filter(|_| end < s.len());
        let pair = &s[..end];
        Some(match memchr::memchr(b'=', pair) {
            Some(eq) => (&pair[..eq], Some(&pair[eq + 1..])),
            None => (pair, None),
        })
    }
}

/// RFC 3986 scheme: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ), then `:`.
/// Returns the index of the colon.
fn scheme_end(s: &[u8]) -> Option<usize> {
    if !s.first()?.is_ascii_alphabetic() {
        return None;
    }
    let end = class_end(s, 1, SCHEME);
    (s.get(end) == Some(&b':')).then_some(end)
}

/// Whether `s` holds white space or a control character, none of which a
/// URI may carry unescaped.
#[inline]
pub(crate) fn has_illegal_byte(s: &[u8]) -> bool {
    if s.len() >= 16 {
        return super::block::find16(s, super::block::Needle::Illegal).is_some();
    }
    any_byte(
        s,
        |w| bytes_below(w, 0x21) | bytes_equal(w, 0x7f),
        |b| b <= b' ' || b == 0x7f,
    )
}

/// Whether a `;`-separated parameter list (after its first `;`) has a
/// parameter without a name: `;;`, `;=v`, a leading `;` or `=`, or a
/// trailing `;`. It runs on every Request-URI, whose parameters are few:
/// a search for each `;` (none, in most) costs less than a test of every
/// pair of neighbours.
fn has_empty_param_name(params: &[u8]) -> bool {
    let (Some(&first), Some(&last)) = (params.first(), params.last()) else {
        return true;
    };
    if matches!(first, b';' | b'=') || last == b';' {
        return true;
    }
    let mut at = 0;
    while let Some(semi) = params.get(at..).and_then(|rest| find_byte(rest, b';')) {
        // Not the last byte, which is no `;`: a byte follows it.
        let next = at + semi + 1;
        if matches!(params.get(next), Some(b';' | b'=')) {
            return true;
        }
        at = next;
    }
    false
}

/// Whether `s` starts with a well-formed `scheme:`.
pub(crate) fn has_scheme(s: &[u8]) -> bool {
    scheme_end(s).is_some()
}

/// A host as SIP writes it (IPv4, or IPv6 in brackets) as an IP address;
/// `None` for a host name.
pub fn host_ip(host: &[u8]) -> Option<std::net::IpAddr> {
    if let Some(v4) = dotted_quad(host) {
        return Some(v4.into());
    }
    let host = std::str::from_utf8(host).ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.parse().ok()
}

/// An IPv4 address in the one form `Ipv4Addr`'s parser takes (four
/// decimal octets of up to three digits, no leading zero), read by hand:
/// the parser's UTF-8 check and state machine were a visible share of
/// forwarding a request. Anything else is `None` and goes to the parser.
fn dotted_quad(host: &[u8]) -> Option<std::net::Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = host.split(|&b| b == b'.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || (part.len() > 1 && part[0] == b'0') {
            return None;
        }
        *octet = parse_decimal(part, 255)? as u8;
    }
    match parts.next() {
        None => Some(octets.into()),
        Some(_) => None,
    }
}

/// A hostname, IPv4 address or bracketed IPv6 reference, by character class.
pub(crate) fn is_host(h: &[u8]) -> bool {
    match h {
        [] => false,
        [b'[', inner @ .., b']'] => {
            !inner.is_empty()
                && inner
                    .iter()
                    .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        }
        _ => h.iter().all(|&b| is(b, HOST)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-read dotted quad takes exactly what `Ipv4Addr`'s parser
    /// takes, on every string over a small alphabet up to 16 bytes long
    /// (sampled) and on edge cases.
    #[test]
    fn dotted_quad_as_the_parser() {
        for case in [
            "0.0.0.0",
            "255.255.255.255",
            "256.1.1.1",
            "1.2.3",
            "1.2.3.4.",
            "01.2.3.4",
            "1..2.3",
            "1.2.3.04",
            "1.2.3.4 ",
            "",
            "1.2.3.1000",
            "00.1.1.1",
            "9.99.199.249",
        ] {
            let want = case.parse::<std::net::Ipv4Addr>().ok();
            assert_eq!(dotted_quad(case.as_bytes()), want, "{case:?}");
        }
        let alphabet = b"0125689.x";
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..200_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 17) as usize;
            let text: Vec<u8> = (0..len)
                .map(|i| alphabet[((seed >> (4 + 3 * i)) % 9) as usize])
                .collect();
            let want = std::str::from_utf8(&text)
                .unwrap()
                .parse::<std::net::Ipv4Addr>()
                .ok();
            assert_eq!(dotted_quad(&text), want, "{}", text.escape_ascii());
        }
    }

    #[test]
    fn sip_uri_fields() {
        let u = Uri::parse(b"sip:alice:pw@Example.COM:5070;lr;transport=udp;maddr=10.0.0.1?x=y")
            .unwrap();
        assert_eq!(u.scheme, Scheme::Sip);
        assert_eq!(u.user, Some(&b"alice"[..]));
        assert_eq!(u.host, b"Example.COM");
        assert_eq!(u.port, Some(5070));
        assert!(u.lr());
        assert_eq!(u.transport(), Some(&b"udp"[..]));
        assert_eq!(u.maddr(), Some(&b"10.0.0.1"[..]));
        assert_eq!(u.headers, Some(&b"x=y"[..]));
    }

    #[test]
    fn ipv6_host_and_default_port() {
        let u = Uri::parse(b"sips:[2001:db8::1];lr").unwrap();
        assert_eq!(u.host, b"[2001:db8::1]");
        assert_eq!(u.port, None);
        assert_eq!(u.port_or_default(), 5061);
        assert!(u.lr());
    }

    #[test]
    fn user_may_hold_question_marks_and_semicolons() {
        let u = Uri::parse(b"sip:user;par=u%40example.net@example.com").unwrap();
        assert_eq!(u.user, Some(&b"user;par=u%40example.net"[..]));
        assert_eq!(u.host, b"example.com");
        assert_eq!(u.headers, None);
    }

    #[test]
    fn rejects() {
        assert_eq!(Uri::parse(b"<sip:a@b>"), Err(UriError::Scheme));
        assert_eq!(Uri::parse(b"sip:a@b c"), Err(UriError::IllegalCharacter));
        assert_eq!(Uri::parse(b"sip:a@"), Err(UriError::Host));
        assert_eq!(Uri::parse(b"sip:a@b:99999"), Err(UriError::Port));
        assert_eq!(Uri::parse(b"sip:a@b;;lr"), Err(UriError::Parameter));
        assert_eq!(Uri::parse(b"soap.beep://x").unwrap().scheme, Scheme::Other);
    }

    #[test]
    fn empty_parameter_names() {
        for bad in [&b""[..], b";", b"lr;", b"=x", b"a;;b", b"a;=b"] {
            assert!(
                has_empty_param_name(bad),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        for good in [&b"lr"[..], b"a=b;c", b"user=phone;lr", b"a=b=c"] {
            assert!(
                !has_empty_param_name(good),
                "{}",
                String::from_utf8_lossy(good)
            );
        }
        assert_eq!(Uri::parse(b"sip:a@b;lr;").unwrap_err(), UriError::Parameter);
        assert_eq!(Uri::parse(b"sip:a@b c"), Err(UriError::IllegalCharacter));
        assert_eq!(Uri::parse(b"sip:a@b_c"), Err(UriError::Host));
    }

    #[test]
    fn empty_parameter_names_match_the_pairwise_definition() {
        fn pairwise(p: &[u8]) -> bool {
            p.is_empty()
                || matches!(p[0], b';' | b'=')
                || p[p.len() - 1] == b';'
                || p.windows(2)
                    .any(|w| w[0] == b';' && matches!(w[1], b';' | b'='))
        }
        let alphabet = [b';', b'=', b'a', b'?'];
        let mut seed = 7u64;
        for _ in 0..50_000 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let len = (seed >> 58) as usize % 40;
            let p: Vec<u8> = (0..len)
                .map(|k| alphabet[(seed.rotate_left(3 * k as u32) % 7) as usize % 4])
                .collect();
            assert_eq!(has_empty_param_name(&p), pairwise(&p), "{p:?}");
        }
    }

    #[test]
    fn illegal_bytes_by_word_match_the_definition() {
        for len in 0..40 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut s = vec![b'a'; len];
                    s[at] = b;
                    let want = b <= b' ' || b == 0x7f;
                    assert_eq!(has_illegal_byte(&s), want, "{s:?}");
                }
            }
        }
        assert!(!has_illegal_byte(b"\x80\xff\x21~\x7e\xa0\x81\x80\xfe"));
    }

    #[test]
    fn tel_user() {
        let u = Uri::parse(b"tel:+15551234;phone-context=example.com").unwrap();
        assert_eq!(u.scheme, Scheme::Tel);
        assert_eq!(u.user, Some(&b"+15551234"[..]));
    }
}
