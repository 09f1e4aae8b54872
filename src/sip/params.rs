//! Header parameters: `*( SEMI generic-param )` with the LWS RFC 3261 allows
//! around `;` and `=` (`tag = 98asjd8` is legal).

use super::lex::{quoted_string_end, skip_lws, wide_class_end, GEN_VALUE, TOKEN};

/// One header parameter. `value` keeps its quotes when it was quoted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Param<'m> {
    pub name: &'m [u8],
    pub value: Option<&'m [u8]>,
}

/// Malformed parameter list: an empty name, `name=` without a value, an
/// unterminated quoted value, or junk where `;` was expected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamError;

/// Iterates the parameters of `s` from `at`, which must point at LWS, `;`
/// or the end. Yields `Err` once and then stops on malformed input.
pub(crate) struct HeaderParams<'m> {
    s: &'m [u8],
    at: usize,
    done: bool,
}

impl<'m> HeaderParams<'m> {
    pub(crate) fn new(s: &'m [u8], at: usize) -> Self {
        HeaderParams { s, at, done: false }
    }

    #[inline(always)]
    fn parse_one(&mut self) -> Result<Option<Param<'m>>, ParamError> {
        if let Some(param) = self.parse_plain() {
            return Ok(Some(param));
        }
        let s = self.s;
        let mut i = skip_lws(s, self.at);
        if i == s.len() {
            return Ok(None);
        }
        if s[i] != b';' {
            return Err(ParamError);
        }
        i = skip_lws(s, i + 1);
        let name_end = wide_class_end(s, i, TOKEN);
        if name_end == i {
            return Err(ParamError);
        }
        let name = &s[i..name_end];
        i = skip_lws(s, name_end);
        let mut value = None;
        if s.get(i) == Some(&b'=') {
            i = skip_lws(s, i + 1);
            let value_end = if s.get(i) == Some(&b'"') {
                quoted_string_end(s, i).ok_or(ParamError)?
            } else {
                wide_class_end(s, i, GEN_VALUE)
            };
            if value_end == i {
                return Err(ParamError);
            }
            value = Some(&s[i..value_end]);
            i = value_end;
        } else {
            i = name_end;
        }
        self.at = i;
        Ok(Some(Param { name, value }))
    }

    /// The usual parameter, `;name=value` or `;name` with no LWS anywhere
    /// and an unquoted value, or `None` to let [`HeaderParams::parse_one`]
    /// take it from the same place. It yields exactly what the general
    /// walk would, without its four LWS skips.
    #[inline(always)]
    fn parse_plain(&mut self) -> Option<Param<'m>> {
        let s = self.s;
        if s.get(self.at) != Some(&b';') {
            return None;
        }
        let name_start = self.at + 1;
        // LWS after `;` is no token character: it ends the name at once.
        let name_end = wide_class_end(s, name_start, TOKEN);
        if name_end == name_start {
            return None;
        }
        let name = &s[name_start..name_end];
        match s.get(name_end) {
            None | Some(b';') => {
                self.at = name_end;
                Some(Param { name, value: None })
            }
            Some(b'=') => {
                let value_start = name_end + 1;
                // LWS and `"` are not value characters: a value after LWS,
                // or quoted, leaves this empty and goes the general way.
                let value_end = wide_class_end(s, value_start, GEN_VALUE);
                if value_end == value_start {
                    return None;
                }
                self.at = value_end;
                Some(Param {
                    name,
                    value: Some(&s[value_start..value_end]),
                })
            }
            _ => None,
        }
    }
}

impl<'m> Iterator for HeaderParams<'m> {
    type Item = Result<Param<'m>, ParamError>;

    #[inline(always)]
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.parse_one() {
            Ok(Some(p)) => Some(Ok(p)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Owned = (Vec<u8>, Option<Vec<u8>>);

    fn collect(s: &[u8]) -> Result<Vec<Owned>, ParamError> {
        HeaderParams::new(s, 0)
            .map(|r| r.map(|p| (p.name.to_vec(), p.value.map(<[u8]>::to_vec))))
            .collect()
    }

    #[test]
    fn lws_around_separators() {
        let got = collect(b"  ;\r\n  tag = 98asjd8 ; q=0.33;lr").unwrap();
        assert_eq!(got[0], (b"tag".to_vec(), Some(b"98asjd8".to_vec())));
        assert_eq!(got[1], (b"q".to_vec(), Some(b"0.33".to_vec())));
        assert_eq!(got[2], (b"lr".to_vec(), None));
    }

    #[test]
    fn quoted_values_and_ipv6() {
        let got = collect(b";x=\"a;b\";received=[2001:db8::1]").unwrap();
        assert_eq!(got[0].1.as_deref(), Some(&b"\"a;b\""[..]));
        assert_eq!(got[1].1.as_deref(), Some(&b"[2001:db8::1]"[..]));
    }

    #[test]
    fn malformed() {
        assert!(collect(b";;").is_err());
        assert!(collect(b";a=").is_err());
        assert!(collect(b";a=\"x").is_err());
        assert!(collect(b" junk").is_err());
    }
}
