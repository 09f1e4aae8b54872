//! Start-up: bind every shard's sockets, steer the listen group in the
//! kernel, and spawn the shard threads; a bad address or a loop that
//! cannot be set up fails here, not in a thread.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use core_affinity::CoreId;
use socket2::{Domain, Protocol, Socket, Type};

use super::inbox::Inbox;
use super::streams::Streams;
use super::sys::{self, Doorbell};
use super::uring::Uring;
use super::{gate, random_seed, steer, Config, Io, Runtime, Shard, Shared, SHARD_FAILED};
use crate::proxy::Proxy;
use crate::sip::{LocalAddress, Scanner, Transport};

/// What each shard's thread says when its loop is set up: io_uring
/// (true), epoll (false), or why neither could be.
pub(super) type LoopWord = (usize, io::Result<bool>);

impl Runtime {
    /// Binds every shard's socket (so that a bad address fails here, not in
    /// a thread) and starts the shard threads.
    pub fn start(config: Config) -> io::Result<Runtime> {
        let shards = config.shards.max(1);
        let sockets = (0..shards)
            .map(|_| bind(&config, config.listen, true))
            .collect::<io::Result<Vec<_>>>()?;
        let own_sockets = bind_own(&config, shards)?;
        let listen: Vec<(Transport, SocketAddr)> = [
            (Transport::Tcp, config.tcp_listen),
            (Transport::Tls, config.tls_listen),
            (Transport::Ws, config.ws_listen),
            (Transport::Wss, config.wss_listen),
        ]
        .into_iter()
        .filter_map(|(t, a)| Some((t, a?)))
        .collect();
        if !listen.is_empty() {
            let fds = sys::raise_fd_limit()?;
            let wanted = (config.streams.connections_max * shards) as u64;
            if fds < wanted {
                tracing::warn!(fds, wanted, "the open-file limit is below streams.connections_max × shards: connections past it are refused");
            }
        }
        let streams = (0..shards)
            .map(|i| {
                let streams = config.streams.clone();
                let tls = config.tls.as_ref().map(|t| t.for_shard());
                Streams::new(i, streams, &listen, config.listen.ip(), tls)
            })
            .collect::<io::Result<Vec<_>>>()?;
        let (steering, sink) = steer(&config, &sockets);
        let steered = steering.is_some();
        let shed_map = steering.as_ref().and_then(steer::Steering::shed_map);
        let shed_in_kernel = shed_map.is_some();
        let own_ports = own_sockets
            .iter()
            .map(|s| {
                s.local_addr()?
                    .as_socket()
                    .map(|a| a.port())
                    .ok_or_else(|| io::Error::other("a shard socket without an address"))
            })
            .collect::<io::Result<Vec<u16>>>()?;
        let shared = Arc::new(Shared::new(&config, shards)?);
        let spawn = Spawn {
            config: &config,
            use_uring: choose_uring(config.io)?,
            cores: usable_cores(&config.cpus)?,
            local: local_address(config.listen, &listen, &own_ports),
            own_ports: &own_ports,
            shed_map,
        };
        // Each shard says which loop it set up before the start-up line is
        // logged: one may fail to get a ring where the probe got one.
        let (loop_tx, loop_rx) = channel::<LoopWord>();
        let mut threads = Vec::with_capacity(shards);
        let per_shard = sockets.into_iter().zip(own_sockets).zip(streams);
        for (index, ((socket, own), streams)) in per_shard.enumerate() {
            let io = (socket, own, streams);
            threads.push(spawn.shard(index, io, &shared, loop_tx.clone())?);
        }
        drop(loop_tx);
        let runtime = Runtime {
            shared,
            threads,
            _steering: steering,
            _sink: sink,
        };
        let io = match loops_started(&loop_rx, shards) {
            Ok(io) => io,
            Err(error) => {
                runtime.stop();
                return Err(error);
            }
        };
        let default_set = config.routing.set(config.routing.default_set());
        let backends = default_set.members.len();
        let tcp = config.tcp_listen.map(|a| a.to_string()).unwrap_or_default();
        let tls = config.tls_listen.map(|a| a.to_string()).unwrap_or_default();
        let ws = config.ws_listen.map(|a| a.to_string()).unwrap_or_default();
        let wss = config.wss_listen.map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(listen = %config.listen, tcp, tls, ws, wss, shards, io, steered, shed_in_kernel, backends, ?own_ports, "sipshard is running");
        Ok(runtime)
    }
}

impl Shared {
    fn new(config: &Config, shards: usize) -> io::Result<Shared> {
        Ok(Shared {
            inboxes: (0..shards)
                .map(|_| Inbox::new(config.handoff_queue_len, config.handoff_queue_bytes))
                .collect(),
            doorbells: (0..shards)
                .map(|_| Doorbell::new())
                .collect::<io::Result<_>>()?,
            stop: AtomicBool::new(false),
            stopped: AtomicUsize::new(0),
            report: AtomicUsize::new(0),
            stats: (0..shards).map(|_| Arc::default()).collect(),
            routing: ArcSwap::new(config.routing.clone()),
            routing_generation: AtomicUsize::new(0),
            tls: arc_swap::ArcSwapOption::empty(),
            tls_generation: AtomicUsize::new(0),
            guard: config
                .guard
                .sip_active()
                .then(|| gate::GateShared::new(config.guard.clone(), random_seed())),
        })
    }
}

/// Each shard's own port: our Via names it, so a backend's responses
/// come back to the shard that holds their transaction, not to whichever
/// socket the 4-tuple hash picks.
fn bind_own(config: &Config, shards: usize) -> io::Result<Vec<Socket>> {
    (0..shards)
        .map(|i| {
            let port = match config.shard_port_base {
                Some(base) => base.checked_add(i as u16).ok_or_else(|| {
                    io::Error::other("shard_port_base + shards is past port 65535")
                })?,
                None => 0,
            };
            bind(config, SocketAddr::new(config.listen.ip(), port), false)
        })
        .collect()
}

/// Steers each datagram to its owner's socket in the kernel; without it
/// (no eBPF here) the shards hand datagrams over, as always. With
/// overload control, the program also sheds new requests into a sink
/// socket of the group while a shard asks it to (one shard then loads it
/// for that alone). Failures are logged, never fatal.
fn steer(config: &Config, sockets: &[Socket]) -> (Option<steer::Steering>, Option<Socket>) {
    let shed_wanted = config.overload.enabled && config.overload.shed_in_kernel;
    match sockets.len() {
        _ if !config.steering => return (None, None),
        1 if !shed_wanted => return (None, None),
        _ => {}
    }
    let fds = sockets.iter().map(|s| s.as_raw_fd()).collect::<Vec<_>>();
    let sink = match shed_wanted.then(|| bind_sink(config)).transpose() {
        Ok(sink) => sink,
        Err(error) => {
            tracing::warn!(%error, "no sink socket: new requests are shed by the shards, not in the kernel");
            None
        }
    };
    // A sink left in the group without the program would take its share
    // of datagrams: on failure it is closed here.
    match steer::attach(&fds, sink.as_ref().map(|s| s.as_raw_fd())) {
        Ok(steering) => (Some(steering), sink),
        Err(error) => {
            tracing::warn!(%error, "no in-kernel steering by Call-ID nor shedding (eBPF); shards hand datagrams to their owners");
            (None, None)
        }
    }
}

/// Whether the shards run io_uring: probed once here, so that a kernel
/// without it fails (`Io::Uring`) or falls back (`Io::Auto`) before any
/// shard starts.
fn choose_uring(io: Io) -> io::Result<bool> {
    Ok(match io {
        Io::Epoll => false,
        Io::Uring => {
            probe_uring().map_err(uring_required)?;
            true
        }
        Io::Auto => match probe_uring() {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, "io_uring is not available (old kernel, seccomp or kernel.io_uring_disabled); using epoll");
                false
            }
        },
    })
}

/// The CPUs the process may use. A CPU the operator named but the
/// process may not use would leave its shard unpinned, sharing cores
/// unseen: refuse to start instead.
fn usable_cores(cpus: &[usize]) -> io::Result<Vec<CoreId>> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    if let Some(cpu) = cpus.iter().find(|&&cpu| !cores.iter().any(|c| c.id == cpu)) {
        let usable = cores.iter().map(|c| c.id.to_string()).collect::<Vec<_>>();
        return Err(io::Error::other(format!(
            "cpus: CPU {cpu} is not one this process may use (usable: {}); \
             name CPUs from that list, or leave cpus out to use the first ones",
            usable.join(", ")
        )));
    }
    Ok(cores)
}

/// The listen addresses and every shard's own port, as our own.
fn local_address(
    listen: SocketAddr,
    streams: &[(Transport, SocketAddr)],
    own_ports: &[u16],
) -> LocalAddress {
    let host = host_text(listen);
    let mut local = LocalAddress::new(&host, listen.port());
    for &(transport, addr) in streams {
        local = local.with_stream_port(transport, addr.port());
    }
    for &port in own_ports {
        local = local.with_alias(&host, port);
    }
    local
}

/// What every shard thread is started from, besides its own sockets.
struct Spawn<'a> {
    config: &'a Config,
    use_uring: bool,
    cores: Vec<CoreId>,
    local: LocalAddress,
    own_ports: &'a [u16],
    shed_map: Option<Arc<steer::ShedMap>>,
}

impl Spawn<'_> {
    /// Shard `index`'s CPU: `cpus[index % len]`, or the `index`th usable
    /// one when the config names none.
    fn core(&self, index: usize) -> Option<CoreId> {
        let (config, cores) = (self.config, &self.cores);
        match config.cpus.is_empty() {
            true => cores.get(index % cores.len().max(1)).copied(),
            false => cores
                .iter()
                .copied()
                .find(|c| c.id == config.cpus[index % config.cpus.len()]),
        }
    }

    /// Starts shard `index`'s thread on its listen and own sockets: it
    /// pins itself, sets up its loop, tells `started`, and runs.
    fn shard(
        &self,
        index: usize,
        io: (Socket, Socket, Streams),
        shared: &Arc<Shared>,
        started: Sender<LoopWord>,
    ) -> io::Result<JoinHandle<()>> {
        let config = self.config;
        let core = self.core(index);
        let proxy = Proxy::with_routing(
            Scanner::new(config.limits.clone()),
            self.local.clone().with_via_port(self.own_ports[index]),
            Some(config.routing.clone()),
            config.txn.clone(),
            0,
            random_seed(),
        );
        let shared = shared.clone();
        let overload = config.overload.clone();
        let max_transactions = config.txn.max_transactions;
        let shed_map = self.shed_map.clone();
        let (use_uring, io_choice) = (self.use_uring, config.io);
        std::thread::Builder::new()
            .name(format!("shard-{index}"))
            .spawn(move || {
                if let Some(core) = core {
                    if !core_affinity::set_for_current(core) {
                        tracing::warn!(
                            shard = index,
                            core = core.id,
                            "could not pin the shard to its CPU"
                        );
                    }
                }
                let mut shard = Shard::new(
                    index,
                    io,
                    proxy,
                    shared,
                    (overload, max_transactions, shed_map),
                );
                if let Err(error) = shard.run(use_uring, io_choice, started) {
                    // Its calls cannot go on, and the others should not
                    // go on without it: stop the gateway (cleanly) and
                    // exit non-zero, so a supervisor restarts it.
                    tracing::error!(shard = index, %error, "shard stopped on an I/O error; stopping the gateway");
                    SHARD_FAILED.store(true, Ordering::Release);
                    sys::raise_sigterm();
                }
            })
    }
}

/// Waits for every shard's word on its loop; names the loops for the
/// start-up line, or says which shard could not start.
fn loops_started(loops: &Receiver<LoopWord>, shards: usize) -> io::Result<&'static str> {
    let mut on_uring = 0;
    for _ in 0..shards {
        match loops.recv() {
            Ok((_, Ok(uring))) => on_uring += usize::from(uring),
            Ok((index, Err(error))) => {
                return Err(io::Error::new(
                    error.kind(),
                    format!("shard {index} could not start its loop: {error}"),
                ));
            }
            Err(_) => return Err(io::Error::other("a shard stopped while starting")),
        }
    }
    Ok(match on_uring {
        0 => "epoll",
        n if n == shards => "io_uring",
        _ => "io_uring on some shards, epoll on the others (see the warnings above)",
    })
}

/// Sets up, on a throwaway socket, everything a shard's io_uring loop
/// needs (the ring, the provided-buffer ring, multishot receive), so that
/// a kernel that lacks any of it is found before the shards start.
fn probe_uring() -> io::Result<()> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    let doorbell = Doorbell::new()?;
    let own = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    own.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    Uring::new(socket.as_raw_fd(), own.as_raw_fd(), doorbell.raw()).map(drop)
}

/// An io_uring set-up error where the operator asked for io_uring alone:
/// named as such, since the kernel's own error (EPERM, ENOSYS) does not
/// say what was being set up.
pub(super) fn uring_required(error: io::Error) -> io::Error {
    io::Error::new(
        error.kind(),
        format!("io_uring, which --io uring (io = \"uring\") asks for, cannot be set up: {error}"),
    )
}

fn host_text(address: SocketAddr) -> String {
    match address {
        SocketAddr::V4(v4) => v4.ip().to_string(),
        SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
    }
}

/// Binds a UDP socket: the listen address shared through SO_REUSEPORT
/// (`reuse_port`), or a shard's own port on the listen IP.
fn bind(config: &Config, address: SocketAddr, reuse_port: bool) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    socket.set_reuse_port(reuse_port)?;
    socket.set_nonblocking(true)?;
    if let Some(bytes) = config.socket_receive_buffer_bytes {
        socket.set_recv_buffer_size(bytes)?;
    }
    if let Some(bytes) = config.socket_send_buffer_bytes {
        socket.set_send_buffer_size(bytes)?;
    }
    socket.bind(&address.into())?;
    sys::enable_icmp_errors(socket.as_raw_fd(), address.is_ipv6())?;
    Ok(socket)
}

/// The in-kernel shedding's sink: a socket of the listen group that
/// refuses every datagram the steering program gives it.
fn bind_sink(config: &Config) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(config.listen),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    socket.set_reuse_port(true)?;
    sys::refuse_all_datagrams(socket.as_raw_fd())?;
    socket.bind(&config.listen.into())?;
    Ok(socket)
}
