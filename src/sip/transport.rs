//! Transports and peers: what a message came over and where it goes.
//!
//! The core decides the transport of every send (a backend's URI, a Route's
//! `transport` parameter, the connection a request came on); the shell
//! carries it out. A [`Peer`] on a stream transport may carry the shell's
//! [`FlowId`], the connection it came on, so that the core can send back
//! over that connection without knowing what a connection is (RFC 3261
//! §18.2.2: responses go back over the connection the request came on).

use std::fmt;
use std::net::SocketAddr;

/// A SIP transport this gateway speaks (RFC 3261 §18).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Transport {
    #[default]
    Udp,
    Tcp,
    Tls,
    /// SIP over WebSocket (RFC 7118), for clients.
    Ws,
    /// SIP over secure WebSocket (RFC 7118), for clients.
    Wss,
}

impl Transport {
    pub const ALL: [Transport; 5] = [
        Transport::Udp,
        Transport::Tcp,
        Transport::Tls,
        Transport::Ws,
        Transport::Wss,
    ];

    /// As it goes in a Via (`SIP/2.0/TCP`).
    pub fn via_token(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Ws => "WS",
            Transport::Wss => "WSS",
        }
    }

    /// As it goes in a URI's `transport` parameter and in `--listen`.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }

    /// A Via's transport token or a URI's `transport` value, any case.
    /// `None`: one we do not speak (SCTP, ...).
    pub fn parse(token: &[u8]) -> Option<Transport> {
        Transport::ALL
            .into_iter()
            .find(|t| token.eq_ignore_ascii_case(t.name().as_bytes()))
    }

    /// A connection (TCP, TLS, WebSocket): replied to over the connection
    /// a request came on.
    pub fn is_stream(self) -> bool {
        self != Transport::Udp
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The shell's name for one connection: opaque to the core, which only
/// copies it from a request's source to the peer its responses go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowId(pub u64);

/// Where a message came from or goes to: an address, a transport and, on
/// a stream, the connection when one is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    pub addr: SocketAddr,
    pub transport: Transport,
    /// The connection to send over; `None`: the shell finds or opens one
    /// to `addr` (always `None` on UDP).
    pub flow: Option<FlowId>,
}

impl Peer {
    pub fn udp(addr: SocketAddr) -> Peer {
        Peer {
            addr,
            transport: Transport::Udp,
            flow: None,
        }
    }

    /// `addr` over `transport`, on no connection in particular.
    pub fn new(transport: Transport, addr: SocketAddr) -> Peer {
        Peer {
            addr,
            transport,
            flow: None,
        }
    }

    /// The same peer on the connection `flow`.
    pub fn on(self, flow: FlowId) -> Peer {
        Peer {
            flow: Some(flow),
            ..self
        }
    }

    /// Whether `other` is the same address over the same transport,
    /// whatever connection either names.
    pub fn same_hop(&self, other: &Peer) -> bool {
        self.addr == other.addr && self.transport == other.transport
    }
}

impl From<SocketAddr> for Peer {
    fn from(addr: SocketAddr) -> Peer {
        Peer::udp(addr)
    }
}

/// Why `[udp|tcp|tls:]IP:PORT` did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerError {
    /// A prefix before the address that is not `udp`, `tcp` or `tls`.
    Transport(String),
    /// Not `IP:PORT` (IPv6 in brackets).
    Address(String),
}

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerError::Transport(t) => write!(f, "transport {t:?} is not udp, tcp, tls, ws or wss"),
            PeerError::Address(a) => write!(f, "{a:?} is not IP:PORT"),
        }
    }
}

impl std::error::Error for PeerError {}

impl std::str::FromStr for Peer {
    type Err = PeerError;

    /// `[udp|tcp|tls:]IP:PORT`; a bare address is UDP (as `--listen`
    /// takes it).
    fn from_str(text: &str) -> Result<Peer, PeerError> {
        let (transport, address) = match text.split_once(':') {
            Some((prefix, rest)) if prefix.bytes().all(|b| b.is_ascii_alphabetic()) => {
                let transport = Transport::parse(prefix.as_bytes())
                    .ok_or_else(|| PeerError::Transport(prefix.to_string()))?;
                (transport, rest)
            }
            _ => (Transport::Udp, text),
        };
        let addr = address
            .parse()
            .map_err(|_| PeerError::Address(address.to_string()))?;
        Ok(Peer::new(transport, addr))
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.transport, self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_in_any_case_and_round_trip() {
        for t in Transport::ALL {
            assert_eq!(Transport::parse(t.via_token().as_bytes()), Some(t));
            assert_eq!(Transport::parse(t.name().as_bytes()), Some(t));
        }
        assert_eq!(Transport::parse(b"Tcp"), Some(Transport::Tcp));
        assert_eq!(Transport::parse(b"SCTP"), None);
        assert_eq!(Transport::parse(b"wSs"), Some(Transport::Wss));
        assert_eq!(Transport::parse(b""), None);
    }

    #[test]
    fn a_peer_keeps_its_hop_whatever_its_flow() {
        let addr = "192.0.2.1:5060".parse().unwrap();
        let peer = Peer::new(Transport::Tcp, addr);
        let on = peer.on(FlowId(7));
        assert!(peer.same_hop(&on));
        assert_ne!(peer, on);
        assert!(!Peer::udp(addr).same_hop(&peer));
        assert_eq!(on.to_string(), "tcp:192.0.2.1:5060");
        assert!(Transport::Tls.is_stream() && !Transport::Udp.is_stream());
    }

    #[test]
    fn listen_strings_parse() {
        let addr: SocketAddr = "192.0.2.1:5060".parse().unwrap();
        assert_eq!("192.0.2.1:5060".parse(), Ok(Peer::udp(addr)));
        assert_eq!("udp:192.0.2.1:5060".parse(), Ok(Peer::udp(addr)));
        assert_eq!(
            "TCP:192.0.2.1:5060".parse(),
            Ok(Peer::new(Transport::Tcp, addr))
        );
        let v6: SocketAddr = "[2001:db8::1]:5061".parse().unwrap();
        assert_eq!(
            "tls:[2001:db8::1]:5061".parse(),
            Ok(Peer::new(Transport::Tls, v6))
        );
        assert_eq!("[2001:db8::1]:5061".parse(), Ok(Peer::udp(v6)));
        assert_eq!(
            "sctp:192.0.2.1:5060".parse::<Peer>(),
            Err(PeerError::Transport("sctp".into()))
        );
        assert!(matches!(
            "tcp:nowhere:5060".parse::<Peer>(),
            Err(PeerError::Address(_))
        ));
        assert!(matches!(
            "192.0.2.1".parse::<Peer>(),
            Err(PeerError::Address(_))
        ));
    }
}
