//! name-addr / addr-spec values: From, To, Contact, Route, Record-Route
//! (RFC 3261 §20.10, §25.1).

use super::lex::{find_byte, is_lws, is_name, is_token, quoted_string_end, skip_lws};
use super::params::{HeaderParams, Param};
use super::uri::{Uri, UriError};

/// An address with its header parameters, e.g.
/// `"Alice" <sip:alice@example.com>;tag=1928301774`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameAddr<'m> {
    /// The whole value as written.
    pub value: &'m [u8],
    /// The display name, quotes kept when quoted; `None` when absent.
    pub display_name: Option<&'m [u8]>,
    /// The URI text between `<` and `>`, or the bare addr-spec. Only its
    /// scheme is checked by the scan; [`NameAddr::uri`] parses the rest.
    pub uri_text: &'m [u8],
    /// The raw header parameters after the URI (from the first `;`).
    pub params: &'m [u8],
    /// The `tag` parameter (From/To).
    pub tag: Option<&'m [u8]>,
}

/// What is wrong with an address value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrError {
    Empty,
    /// A quoted display name without its closing quote.
    UnterminatedQuote,
    /// An unquoted display name with characters other than tokens and LWS.
    DisplayName,
    /// `<` without `>`, or LWS just inside the brackets.
    AngleBrackets,
    Uri(UriError),
    /// Malformed header parameters after the address.
    Parameter,
}

impl<'m> NameAddr<'m> {
    pub(crate) const EMPTY: NameAddr<'static> = NameAddr {
        value: &[],
        display_name: None,
        uri_text: &[],
        params: &[],
        tag: None,
    };

    /// Parses one address value, already split and trimmed of LWS.
    pub fn parse(value: &'m [u8]) -> Result<NameAddr<'m>, AddrError> {
        let mut addr = NameAddr::EMPTY;
        Self::parse_into(value, &mut addr)?;
        Ok(addr)
    }

    /// [`NameAddr::parse`] writing into the caller's `out`: a returned
    /// `Result` of this size is copied out of its slot right after the
    /// call, with loads wider than the stores that wrote it, which stalls.
    pub(crate) fn parse_into(value: &'m [u8], out: &mut NameAddr<'m>) -> Result<(), AddrError> {
        if value.is_empty() {
            return Err(AddrError::Empty);
        }
        let (display_name, uri_text, after) = split_address(value)?;
        if !super::uri::has_scheme(uri_text) {
            return Err(AddrError::Uri(UriError::Scheme));
        }
        let mut tag = None;
        let params_start = skip_lws(value, after);
        for param in HeaderParams::new(value, after) {
            let Param { name, value: v } = param.map_err(|_| AddrError::Parameter)?;
            if is_name(name, b"tag") {
                tag = Some(v.ok_or(AddrError::Parameter)?);
            }
        }
        *out = NameAddr {
            value,
            display_name,
            uri_text,
            params: &value[params_start..],
            tag,
        };
        Ok(())
    }
}

impl<'m> NameAddr<'m> {
    /// The URI, parsed now: a proxy forwards From and To untouched, so it
    /// pays for their URIs only when routing asks (by From user, say).
    pub fn uri(&self) -> Result<Uri<'m>, UriError> {
        Uri::parse(self.uri_text)
    }
}

/// An address value split into display name, URI text, and the index just
/// after the URI part (where header parameters start).
type Split<'m> = (Option<&'m [u8]>, &'m [u8], usize);

fn split_address(value: &[u8]) -> Result<Split<'_>, AddrError> {
    if value[0] == b'"' {
        let end = quoted_string_end(value, 0).ok_or(AddrError::UnterminatedQuote)?;
        let lt = skip_lws(value, end);
        if value.get(lt) != Some(&b'<') {
            return Err(AddrError::AngleBrackets);
        }
        let (uri, after) = bracketed(value, lt)?;
        return Ok((Some(&value[..end]), uri, after));
    }
    // `<` first: no display name, nothing to search for or check.
    if value[0] == b'<' {
        let (uri, after) = bracketed(value, 0)?;
        return Ok((None, uri, after));
    }
    if let Some(lt) = find_byte(value, b'<') {
        let display = &value[..lt];
        if !display.iter().all(|&b| is_token(b) || is_lws(b)) {
            return Err(AddrError::DisplayName);
        }
        let (uri, after) = bracketed(value, lt)?;
        let display = super::lex::trim_lws(display);
        return Ok(((!display.is_empty()).then_some(display), uri, after));
    }
    // addr-spec: the URI runs to the first `;` or LWS; header parameters follow.
    let end = value
        .iter()
        .position(|&b| b == b';' || is_lws(b))
        .unwrap_or(value.len());
    Ok((None, &value[..end], end))
}

/// The URI inside `<...>` starting at `value[lt] == '<'`.
#[inline(always)]
fn bracketed(value: &[u8], lt: usize) -> Result<(&[u8], usize), AddrError> {
    let gt = find_byte(&value[lt..], b'>').ok_or(AddrError::AngleBrackets)? + lt;
    let uri = &value[lt + 1..gt];
    // RFC 3261 LAQUOT/RAQUOT: no white space inside the brackets.
    match (uri.first(), uri.last()) {
        (Some(&first), Some(&last)) if !is_lws(first) && !is_lws(last) => Ok((uri, gt + 1)),
        _ => Err(AddrError::AngleBrackets),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_display_and_tag() {
        let a = NameAddr::parse(
            b"\"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8",
        )
        .unwrap();
        assert_eq!(a.display_name, Some(&b"\"J Rosenberg \\\\\\\"\""[..]));
        assert_eq!(a.uri().unwrap().user, Some(&b"jdrosen"[..]));
        assert_eq!(a.tag, Some(&b"98asjd8"[..]));
    }

    #[test]
    fn addr_spec_with_params() {
        let a =
            NameAddr::parse(b"sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n").unwrap();
        assert_eq!(a.uri().unwrap().host, b"chair-dnrc.example.com");
        assert_eq!(a.tag, Some(&b"1918181833n"[..]));
        assert_eq!(a.display_name, None);
    }

    #[test]
    fn token_display_without_space() {
        let a = NameAddr::parse(b"caller<sip:caller@example.com>;tag=323").unwrap();
        assert_eq!(a.display_name, Some(&b"caller"[..]));
    }

    #[test]
    fn torture_rejects() {
        assert_eq!(
            NameAddr::parse(b"\"Mr. J. User <sip:j.user@example.com>"),
            Err(AddrError::UnterminatedQuote)
        );
        assert_eq!(
            NameAddr::parse(b"\"Watson, Thomas\" < sip:t.watson@example.org >"),
            Err(AddrError::AngleBrackets)
        );
        assert_eq!(
            NameAddr::parse(b"Bell, Alexander <sip:a.g.bell@example.com>;tag=43"),
            Err(AddrError::DisplayName)
        );
        assert_eq!(NameAddr::parse(b"<sip:a@b>;;"), Err(AddrError::Parameter));
    }

    #[test]
    fn unknown_schemes_are_carried() {
        assert!(NameAddr::parse(b"isbn:2983792873").is_ok());
        assert!(NameAddr::parse(b"<http://www.example.com>;tag=3234233").is_ok());
    }
}
