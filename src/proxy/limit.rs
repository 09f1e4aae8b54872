//! The bounds a peer can run into, one counter each: the scanner's
//! [`Limits`](crate::sip::Limits), the transaction table, and the largest
//! datagram UDP can carry out. An operator sees which one a peer hits
//! (`sipshard_limit_exceeded_total{limit=...}`) without reading logs.

use crate::sip::Fault;

/// A limit a message or a request ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `datagram_bytes_max`: the datagram is dropped (answering it would
    /// only amplify it).
    DatagramBytes,
    /// `headers_max`: 400 Too Many Headers.
    Headers,
    /// `header_line_bytes_max`: 400 Header Too Long.
    HeaderLineBytes,
    /// `via_values_max`: 400 Too Many Via.
    ViaValues,
    /// `max_per_shard` (and the client table, twice that): 503 with
    /// Retry-After.
    Transactions,
    /// The request would not fit in one UDP datagram once forwarded (our
    /// Via and Record-Route added): 513 Message Too Large.
    UdpPayload,
}

impl Limit {
    pub const COUNT: usize = 6;
    pub const ALL: [Limit; Limit::COUNT] = [
        Limit::DatagramBytes,
        Limit::Headers,
        Limit::HeaderLineBytes,
        Limit::ViaValues,
        Limit::Transactions,
        Limit::UdpPayload,
    ];

    /// The `limit` label of its counter.
    pub fn name(self) -> &'static str {
        match self {
            Limit::DatagramBytes => "datagram_bytes",
            Limit::Headers => "headers",
            Limit::HeaderLineBytes => "header_line_bytes",
            Limit::ViaValues => "via_values",
            Limit::Transactions => "transactions",
            Limit::UdpPayload => "udp_payload",
        }
    }

    /// The limit a scanner fault reports, if it is one.
    pub fn of(fault: Fault) -> Option<Limit> {
        match fault {
            Fault::TooLarge => Some(Limit::DatagramBytes),
            Fault::TooManyHeaders => Some(Limit::Headers),
            Fault::HeaderLineTooLong => Some(Limit::HeaderLineBytes),
            Fault::TooManyVia => Some(Limit::ViaValues),
            _ => None,
        }
    }
}

/// Times each [`Limit`] was hit, indexed by `Limit as usize`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitCounts(pub [u64; Limit::COUNT]);

impl LimitCounts {
    pub fn hit(&mut self, limit: Limit) {
        self.0[limit as usize] += 1;
    }

    pub fn get(&self, limit: Limit) -> u64 {
        self.0[limit as usize]
    }
}
