//! The lab: one proxy core on the virtual clock, fed SIP text, with an
//! outbox of what it sent: the proxy at [`LB`], the caller at [`CALLER`]
//! (documentation ranges, RFC 5737), backends at [`BACKEND_A`] to
//! [`BACKEND_C`] (private addresses, as a carrier's pool behind it).

use std::sync::Arc;

use super::clock;
pub use super::message::{ack_for, cancel, invite, request};
use super::outbox::Outbox;
pub use super::outbox::Sent;
use crate::balance::{Algorithm, Routing, RoutingSpec, MEMBERS_MAX};
use crate::proxy::{Outcome, Proxy};
use crate::sip::{Limits, LocalAddress, Peer, Scanner, Transport};
use crate::txn::{Millis, TxnConfig};

pub const LB: &str = "192.0.2.250";
pub const LB_PORT: u16 = 5060;
pub const BACKEND_A: &str = "10.0.0.1:5080";
pub const BACKEND_B: &str = "10.0.0.2:5080";
pub const BACKEND_C: &str = "10.0.0.3:5080";
pub const CALLER: &str = "198.51.100.7:5070";

/// How to build a proxy core for a test, a fuzz target or a bench: the
/// scanner's limits, our address, one destination set ("default")
/// of `backends` balanced by `algorithm`, the transaction config and the
/// seed of its branch hashes; started at time 0. [`Setup::default`] is
/// the lab's: [`LB`], backends A and B, round robin.
#[derive(Clone, Debug)]
pub struct Setup {
    pub limits: Limits,
    pub host: &'static str,
    pub port: u16,
    pub backends: Vec<Peer>,
    pub algorithm: Algorithm,
    pub txn: TxnConfig,
    pub seed: u64,
    /// Our TCP port, when the proxy is to listen on TCP too.
    pub tcp_port: Option<u16>,
    /// Our TLS port, when the proxy is to listen on TLS too.
    pub tls_port: Option<u16>,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            limits: Limits::default(),
            host: LB,
            port: LB_PORT,
            backends: addresses(&[BACKEND_A, BACKEND_B]),
            algorithm: Algorithm::RoundRobin,
            txn: TxnConfig::default(),
            seed: 42,
            tcp_port: None,
            tls_port: None,
        }
    }
}

impl Setup {
    /// The proxy core, routing as the command line's `--backend`s do
    /// (`RoutingSpec::one_set`); no routing at all without backends.
    pub fn proxy(&self) -> Proxy {
        let backends = &self.backends[..self.backends.len().min(MEMBERS_MAX)];
        let spec = RoutingSpec::one_set(self.algorithm, backends);
        let routing = Routing::build(&spec, None).ok().map(Arc::new);
        let mut local = LocalAddress::new(self.host, self.port);
        if let Some(port) = self.tcp_port {
            local = local.with_stream_port(Transport::Tcp, port);
        }
        if let Some(port) = self.tls_port {
            local = local.with_stream_port(Transport::Tls, port);
        }
        Proxy::with_routing(
            Scanner::new(self.limits.clone()),
            local,
            routing,
            self.txn.clone(),
            0,
            self.seed,
        )
    }
}

/// Peers from their text (`[tcp:]IP:PORT`); panics on a typo in a test.
pub fn addresses(text: &[&str]) -> Vec<Peer> {
    text.iter()
        .map(|a| a.parse().expect("a socket address"))
        .collect()
}

pub struct Lab {
    pub proxy: Proxy,
    pub now: Millis,
    pub outbox: Outbox,
}

impl Lab {
    /// Backends A and B.
    pub fn new(algorithm: Algorithm) -> Lab {
        Lab::with(algorithm, TxnConfig::default(), &[BACKEND_A, BACKEND_B])
    }

    pub fn with(algorithm: Algorithm, config: TxnConfig, backends: &[&str]) -> Lab {
        let setup = Setup {
            backends: addresses(backends),
            algorithm,
            txn: config,
            ..Setup::default()
        };
        Lab {
            proxy: setup.proxy(),
            now: 0,
            outbox: Outbox::default(),
        }
    }

    /// Hands the proxy one datagram from `from` (`[tcp:]IP:PORT`).
    pub fn recv(&mut self, from: &str, text: &str) -> Outcome {
        let from = from.parse().expect("a socket address");
        self.recv_from(from, text)
    }

    /// Hands the proxy one message from `from` (a stream's, on its flow).
    pub fn recv_from(&mut self, from: Peer, text: &str) -> Outcome {
        self.proxy
            .handle(self.now, from, text.as_bytes(), &mut self.outbox)
    }

    /// Moves the clock on by `ms`, running every timer due on the way at
    /// its deadline (as a loop waking for each deadline would).
    pub fn advance(&mut self, ms: Millis) {
        let end = self.now + ms;
        while let Some(at) = clock::step_toward(&mut self.now, end, self.proxy.next_deadline()) {
            self.proxy.on_timers(at, &mut self.outbox);
        }
    }

    /// What was sent since the last call.
    pub fn take(&mut self) -> Vec<Sent> {
        self.outbox.take()
    }

    /// The one datagram sent since the last call.
    pub fn one(&mut self) -> Sent {
        let mut sent = self.take();
        assert_eq!(sent.len(), 1, "expected one datagram: {sent:#?}");
        sent.remove(0)
    }
}
