//! The application's configuration ([`AppConfig`]) and the TOML file it
//! is read from. Control plane only: read at start-up (and by
//! `--check-config`, and on reload), never on the packet path.
//!
//! - [`schema`]: the file as written (serde), each value with its place;
//! - `check`: the checks that turn it into the runtime's types, table by
//!   table; `routing`: those of `[backends]`, `[[sets]]` and `[[routes]]`.
//!
//! Every problem is reported with its line and what to write instead, all
//! of them at once where the file parsed. The file and the command line
//! start from one set of defaults, [`AppConfig::default`].

mod check;
mod routing;
pub mod schema;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;

use crate::balance::{Algorithm, ProbeConfig, Routing, RoutingSpec};
use crate::guard::{Acl, GuardConfig};
use crate::proxy::overload::OverloadConfig;
use crate::shard;
use crate::sip::{host_ip, Limits, Peer, Scheme, Transport, Uri};
use crate::tls::{TlsContext, TlsError, TlsFiles};
use crate::txn::TxnConfig;
pub use schema::File;

/// Everything the gateway runs with: what the shards need, and what the
/// control thread needs beside them.
#[derive(Clone, Debug)]
pub struct AppConfig {
    /// What the shards run with. It holds the SIP side of the guard (the
    /// SIP ACL and flood protection) because the shards are what consult
    /// it; the admin ACL is in [`AdminConfig`].
    pub shard: shard::Config,
    /// Health probes of the backends (the control thread sends them).
    pub probes: ProbeConfig,
    pub admin: AdminConfig,
    /// Where the TLS certificates are, read again on SIGHUP.
    pub tls: TlsFiles,
}

/// The admin HTTP API: where it listens and whom it serves. The control
/// thread serves it; the shards never see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdminConfig {
    /// Off when `None`.
    pub address: Option<SocketAddr>,
    /// Peers the admin API serves (`[acl] admin_allow`, `admin_deny`).
    pub acl: Acl,
}

impl Default for AppConfig {
    /// The gateway with no file: on 127.0.0.1:5060, round robin over two
    /// backends on loopback (:5080 and :5081), a shard per usable core,
    /// no probes, no admin API. What a file leaves out is this too.
    fn default() -> AppConfig {
        let backends = [5080, 5081].map(|port| Peer::udp(SocketAddr::from(([127, 0, 0, 1], port))));
        let routing = backends_routing(&backends, Algorithm::RoundRobin, None)
            .expect("two loopback backends make a valid set");
        let shard = shard::Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 5060)),
            tcp_listen: None,
            tls_listen: None,
            ws_listen: None,
            wss_listen: None,
            tls: None,
            streams: shard::StreamConfig::default(),
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpus: Vec::new(),
            limits: Limits::default(),
            txn: TxnConfig::default(),
            handoff_queue_len: 8192,
            handoff_queue_bytes: shard::HANDOFF_QUEUE_BYTES_DEFAULT,
            socket_receive_buffer_bytes: None,
            socket_send_buffer_bytes: None,
            shard_port_base: None,
            steering: true,
            io: shard::Io::Auto,
            routing: Arc::new(routing),
            overload: OverloadConfig::default(),
            guard: GuardConfig::default(),
        };
        AppConfig {
            shard,
            probes: ProbeConfig::default(),
            admin: AdminConfig::default(),
            tls: TlsFiles::default(),
        }
    }
}

impl AppConfig {
    /// Replaces the routing with the one set the command line's
    /// `--backend`s and `--algorithm` describe, "default": `backends`, or
    /// else the members of the default set, balanced by `algorithm`, or
    /// else the default set's algorithm where the command line can name it
    /// (Call-ID hash) and round robin where it cannot.
    pub fn route_to(
        &mut self,
        backends: Option<Vec<Peer>>,
        algorithm: Option<Algorithm>,
    ) -> Result<(), String> {
        let routing = &self.shard.routing;
        let default = routing.set(routing.default_set());
        let backends =
            backends.unwrap_or_else(|| default.members.iter().map(|m| m.peer()).collect());
        let algorithm = algorithm.unwrap_or(match default.algorithm {
            Algorithm::CallIdHash => Algorithm::CallIdHash,
            _ => Algorithm::RoundRobin,
        });
        self.shard.routing = Arc::new(backends_routing(&backends, algorithm, None)?);
        Ok(())
    }
}

/// Parses and checks a configuration file's text.
pub fn parse(text: &str) -> Result<AppConfig, Vec<Problem>> {
    parse_with_routing(text, None)
}

/// Parses and checks a configuration file's text. Backends that
/// `previous` (the running routing, on a reload) also has keep their
/// health; see [`Routing::build`].
pub fn parse_with_routing(
    text: &str,
    previous: Option<&Routing>,
) -> Result<AppConfig, Vec<Problem>> {
    let mut problems = Problems::new(text);
    let file: File = toml::from_str(text).map_err(|e| {
        vec![Problem {
            line: e.span().map_or(0, |s| problems.line_of(s.start)),
            what: e.message().to_string(),
            fix: "see examples/sipshard.toml for every key and its form".to_string(),
        }]
    })?;
    check::app(file, previous, &mut problems).ok_or(problems.list)
}

/// The routing of the command line's `--backend`s: one set, "default",
/// with every member at weight 1. `previous` carries health over, as a
/// reload does.
fn backends_routing(
    backends: &[Peer],
    algorithm: Algorithm,
    previous: Option<&Routing>,
) -> Result<Routing, String> {
    let spec = RoutingSpec::one_set(algorithm, backends);
    Routing::build(&spec, previous).map_err(|errors| {
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// `sip:IP:PORT` (or `IP:PORT`, UDP) as a peer: its transport from the
/// URI as SIP reads it (`transport=tcp|tls`, `sips:` for TLS; RFC 3263
/// §4.1). Host names need a resolver, which the gateway does not have yet.
pub fn backend_peer(text: &str) -> Result<Peer, String> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(Peer::udp(address));
    }
    let uri = Uri::parse(text.as_bytes()).map_err(|e| format!("not a SIP URI ({e:?})"))?;
    let transport = uri_transport(&uri)?;
    let ip = host_ip(uri.host).ok_or_else(|| {
        format!(
            "the host {:?} is not an IP address (names are not resolved yet)",
            String::from_utf8_lossy(uri.host)
        )
    })?;
    Ok(Peer::new(
        transport,
        SocketAddr::new(ip, uri.port_or_default()),
    ))
}

/// A listen list that cannot work, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub what: String,
    pub fix: String,
}

/// Where SIP arrives, by transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listeners {
    /// The first listener's address when none is UDP: the shards always
    /// serve UDP (RFC 3261 §18).
    pub udp: SocketAddr,
    pub tcp: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    /// SIP over WebSocket (RFC 7118), plain and over TLS.
    pub ws: Option<SocketAddr>,
    pub wss: Option<SocketAddr>,
}

/// `--listen` and `listen =`: `[udp|tcp|tls:]IP:PORT` each, at most one a
/// transport, all of one address family.
pub fn listeners(list: &[&str]) -> Result<Listeners, Refused> {
    let refuse = |what: String, fix: &str| Refused {
        what,
        fix: fix.to_string(),
    };
    let mut by_transport = [None; Transport::ALL.len()];
    for text in list {
        let peer: Peer = text.parse().map_err(|e| {
            refuse(
                format!("{text:?}: {e}"),
                "write [udp|tcp|tls:]IP:PORT, e.g. \"tcp:192.0.2.10:5060\"",
            )
        })?;
        if peer.addr.ip().is_unspecified() {
            return Err(refuse(
                format!("{text:?} is a wildcard address"),
                "give the address peers reach us on, e.g. \"192.0.2.10:5060\": it goes in our Via and Record-Route",
            ));
        }
        let slot = &mut by_transport[peer.transport.index()];
        if slot.is_some() {
            return Err(refuse(
                format!("{text:?}: a second {} listener", peer.transport),
                "give one address per transport",
            ));
        }
        *slot = Some(peer.addr);
    }
    let first = list
        .first()
        .and_then(|t| t.parse::<Peer>().ok())
        .map(|p| p.addr);
    let udp = by_transport[0]
        .or(first)
        .ok_or_else(|| refuse("no address".into(), "give at least one"))?;
    let [_, tcp, tls, ws, wss] = by_transport;
    if [tcp, tls, ws, wss]
        .iter()
        .flatten()
        .any(|a| a.is_ipv4() != udp.is_ipv4())
    {
        return Err(refuse(
            "the listeners are of two address families".into(),
            "listen on one family, IPv4 or IPv6",
        ));
    }
    Ok(Listeners {
        udp,
        tcp,
        tls,
        ws,
        wss,
    })
}

/// What cannot work between the listeners and the backends: a backend over
/// TCP or TLS with no listener of its transport (its in-dialog requests
/// come back that way to our Record-Route), a backend of another address
/// family than ours.
pub fn transport_problems(shard: &shard::Config) -> Vec<String> {
    let mut problems = Vec::new();
    for set in shard.routing.sets() {
        for member in set.members.iter() {
            let listener = match member.transport {
                Transport::Udp => Some(shard.listen),
                Transport::Tcp => shard.tcp_listen,
                Transport::Tls => shard.tls_listen,
                Transport::Ws | Transport::Wss => {
                    problems.push(format!(
                        "backend {} is over WebSocket, which sipshard takes from clients only; use udp, tcp or tls",
                        member.uri
                    ));
                    continue;
                }
            };
            if listener.is_none() {
                let t = member.transport;
                problems.push(format!(
                    "backend {} is over {} but nothing listens on {}; add {}:IP:PORT to listen",
                    member.uri,
                    t.via_token(),
                    t.via_token(),
                    t.name()
                ));
            }
            if member.address.is_ipv4() != shard.listen.is_ipv4() {
                problems.push(format!(
                    "backend {} is not in the listen address's family ({})",
                    member.uri, shard.listen
                ));
            }
        }
    }
    problems
}

/// The TLS settings the shards need: built from `files` when a `tls:`
/// listener or a TLS backend needs them, else `None`. A listener needs a
/// certificate and its key; backends' certificates are always verified.
pub fn tls_context(
    shard: &shard::Config,
    files: &TlsFiles,
) -> Result<Option<Arc<TlsContext>>, TlsError> {
    let backends = shard.routing.sets().iter().any(|set| {
        set.members
            .iter()
            .any(|member| member.transport == Transport::Tls)
    });
    let listens = shard.tls_listen.is_some() || shard.wss_listen.is_some();
    if !listens && !backends {
        return Ok(None);
    }
    TlsContext::load(files, listens).map(|c| Some(Arc::new(c)))
}

/// Whether a backend's URI says `transport=udp`: UDP alone, never TCP.
pub fn names_udp(text: &str) -> bool {
    Uri::parse(text.as_bytes())
        .ok()
        .and_then(|u| u.transport())
        .is_some_and(|t| t.eq_ignore_ascii_case(b"udp"))
}

/// A URI's transport: its `transport` parameter, else TLS for `sips:`
/// and UDP for `sip:`. `sips:` over anything but TLS is refused (RFC 3261
/// §26.2.2: sips means TLS on every hop).
fn uri_transport(uri: &Uri<'_>) -> Result<Transport, String> {
    let sips = uri.scheme == Scheme::Sips;
    let transport = match uri.transport() {
        None if sips => Transport::Tls,
        None => Transport::Udp,
        Some(token) => Transport::parse(token).ok_or_else(|| {
            format!(
                "transport={} is not one sipshard speaks (udp, tcp, tls)",
                String::from_utf8_lossy(token)
            )
        })?,
    };
    if sips && transport != Transport::Tls {
        return Err(format!(
            "a sips: URI with transport={transport}: sips needs TLS"
        ));
    }
    Ok(transport)
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, 0 when the problem has no place in the file.
    pub line: usize,
    pub what: String,
    pub fix: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line > 0 {
            write!(f, "line {}: {}; fix: {}", self.line, self.what, self.fix)
        } else {
            write!(f, "{}; fix: {}", self.what, self.fix)
        }
    }
}

/// The problems found so far in `text`, in the order they were found.
struct Problems<'t> {
    text: &'t str,
    list: Vec<Problem>,
}

impl<'t> Problems<'t> {
    fn new(text: &'t str) -> Problems<'t> {
        Problems {
            text,
            list: Vec::new(),
        }
    }

    /// A problem written at `span` of the text; an empty span has no line.
    fn add(&mut self, span: Range<usize>, what: String, fix: &str) {
        let line = match span.is_empty() {
            true => 0,
            false => self.line_of(span.start),
        };
        self.list.push(Problem {
            line,
            what,
            fix: fix.to_string(),
        });
    }

    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}
