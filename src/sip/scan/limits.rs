//! Bounds on what one datagram may hold, checked by configuration and
//! clamped by the scanner.

/// Bounds on what one datagram may hold. Each guards memory or CPU against
/// a hostile peer; all are configurable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest datagram accepted. UDP cannot carry more than 64 KiB.
    pub datagram_bytes_max: usize,
    /// Header fields per message; the scanner's slot array has this size.
    pub headers_max: usize,
    /// Bytes in one header field, folded continuation lines included.
    pub header_line_bytes_max: usize,
    /// Via values per request; each costs a parse on every request. The
    /// default is 64, not 32: RFC 4475's longreq, a legal message every
    /// element must process, carries 34. A response may carry one more:
    /// ours, on top of those of the request it answers.
    pub via_values_max: usize,
}

impl Limits {
    /// Largest `datagram_bytes_max`: offsets into a datagram are `u32`, and
    /// nothing SIP carries in one message needs more than this.
    pub const DATAGRAM_BYTES_CEILING: usize = 16 * 1024 * 1024;
    /// Largest `headers_max` and `via_values_max`: header positions are `u16`.
    pub const COUNT_CEILING: usize = u16::MAX as usize;

    /// Checks every limit against its ceiling and against the others.
    /// Configuration code calls this so a bad value is reported, not clamped.
    pub fn check(&self) -> Result<(), LimitError> {
        let check = |name, value: usize, max: usize| {
            if value == 0 || value > max {
                Err(LimitError { name, value, max })
            } else {
                Ok(())
            }
        };
        check(
            "datagram_bytes_max",
            self.datagram_bytes_max,
            Self::DATAGRAM_BYTES_CEILING,
        )?;
        check("headers_max", self.headers_max, Self::COUNT_CEILING)?;
        check(
            "header_line_bytes_max",
            self.header_line_bytes_max,
            self.datagram_bytes_max,
        )?;
        check("via_values_max", self.via_values_max, Self::COUNT_CEILING)
    }

    /// Every limit brought within its ceiling (at least 1).
    pub(super) fn clamped(&self) -> Limits {
        let datagram_bytes_max = self
            .datagram_bytes_max
            .clamp(1, Self::DATAGRAM_BYTES_CEILING);
        Limits {
            datagram_bytes_max,
            headers_max: self.headers_max.clamp(1, Self::COUNT_CEILING),
            header_line_bytes_max: self.header_line_bytes_max.clamp(1, datagram_bytes_max),
            via_values_max: self.via_values_max.clamp(1, Self::COUNT_CEILING),
        }
    }
}

/// A limit outside what the scanner can honour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitError {
    pub name: &'static str,
    pub value: usize,
    pub max: usize,
}

impl std::fmt::Display for LimitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} = {} is out of range: use 1..={}",
            self.name, self.value, self.max
        )
    }
}

impl std::error::Error for LimitError {}

/// Bytes forwarding may add to a request or to its longest header line:
/// our Via and Record-Route (each well under 200 bytes), a Max-Forwards,
/// and `received` with an IPv6 address and `rport` on the top Via.
pub(super) const FORWARD_ROOM_BYTES: usize = 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            datagram_bytes_max: 64 * 1024,
            headers_max: 128,
            header_line_bytes_max: 8 * 1024,
            via_values_max: 64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::scan::tests::INVITE;
    use crate::sip::scan::Scanner;
    use crate::sip::Fault;

    #[test]
    fn limits_are_checked_and_clamped() {
        assert_eq!(Limits::default().check(), Ok(()));
        let huge = Limits {
            headers_max: usize::MAX,
            header_line_bytes_max: usize::MAX,
            ..Limits::default()
        };
        assert_eq!(huge.check().unwrap_err().name, "headers_max");
        let mut scanner = Scanner::new(huge);
        assert_eq!(scanner.limits().headers_max, Limits::COUNT_CEILING);
        assert!(scanner.scan(INVITE).is_ok());
        let zero = Limits {
            via_values_max: 0,
            ..Limits::default()
        };
        assert_eq!(
            zero.check().unwrap_err().to_string(),
            "via_values_max = 0 is out of range: use 1..=65535"
        );
    }

    #[test]
    fn limits_are_enforced() {
        let limits = Limits {
            headers_max: 5,
            ..Limits::default()
        };
        let err = Scanner::new(limits).scan(INVITE).unwrap_err();
        assert_eq!(err.fault, Fault::TooManyHeaders);
        let limits = Limits {
            datagram_bytes_max: 100,
            ..Limits::default()
        };
        assert_eq!(
            Scanner::new(limits).scan(INVITE).unwrap_err().fault,
            Fault::TooLarge
        );
        let limits = Limits {
            header_line_bytes_max: 40,
            ..Limits::default()
        };
        assert_eq!(
            Scanner::new(limits).scan(INVITE).unwrap_err().fault,
            Fault::HeaderLineTooLong
        );
        let limits = Limits {
            via_values_max: 1,
            ..Limits::default()
        };
        let two_vias = std::str::from_utf8(INVITE)
            .unwrap()
            .replace("rport\r\n", "rport, SIP/2.0/UDP h2\r\n");
        assert_eq!(
            Scanner::new(limits)
                .scan(two_vias.as_bytes())
                .unwrap_err()
                .fault,
            Fault::TooManyVia
        );
    }
}
