//! The per-core runtime: one pinned thread per shard, each with its own
//! `SO_REUSEPORT` socket on the listen address, its own proxy core, and an
//! inbox other shards hand datagrams to.
//!
//! A datagram belongs to the shard `hash(Call-ID) mod shards`. The kernel
//! spreads datagrams over the sockets by 4-tuple, so the receiving shard
//! finds the Call-ID and, when the call is another shard's, hands the
//! datagram over a bounded queue and rings that shard's doorbell. A call's
//! messages therefore go through one shard, in the order one socket
//! received them. A full queue drops and counts; a shard never blocks.
//!
//! Two loops run the same shard: io_uring (`uring.rs`: multishot receive on
//! provided buffers, sends as one batch of SQEs, one `submit_with_args` per
//! turn) and, where io_uring is missing or forbidden, `recvmmsg`/`sendmmsg`
//! + epoll (`sys.rs`). The choice is made at start-up and logged.

mod gate;
pub mod stats;
mod steer;
mod sys;
mod uring;

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;

use crate::proxy::overload::{Detector, Load, OverloadConfig};
use crate::proxy::shed::{next_pass_share, Buffer};
use hdrhistogram::Histogram;
use socket2::{Domain, Protocol, Socket, Type};

use crate::balance::Routing;
use crate::proxy::{Algorithm, Counters, Outcome, Proxy, Transmit};
use crate::sip::lex::fnv1a;
use crate::sip::{find_call_id, Limits, LocalAddress, Scanner};
use crate::txn::{Millis, TxnConfig};
use stats::{MessageCounts, ShardStats, Stat};
use sys::{Doorbell, Poller, RecvBatch, SendBatch};
use uring::Uring;

/// What the runtime needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub backends: Vec<SocketAddr>,
    pub algorithm: Algorithm,
    pub shards: usize,
    /// CPUs to pin shard `i` to (`cpus[i % len]`); empty means the first
    /// `shards` CPUs the process may use.
    pub cpus: Vec<usize>,
    pub limits: Limits,
    /// Transaction timers, failover policy and the table bound.
    pub txn: TxnConfig,
    /// Slots in each shard's inbox.
    pub handoff_queue_len: usize,
    /// Datagram bytes each shard's inbox may hold.
    pub handoff_queue_bytes: usize,
    pub socket_receive_buffer_bytes: Option<usize>,
    pub socket_send_buffer_bytes: Option<usize>,
    /// Shard `i`'s own port is this plus `i`; `None`: the kernel picks.
    pub shard_port_base: Option<u16>,
    /// Load the eBPF program that steers datagrams to their owner's socket.
    pub steering: bool,
    pub io: Io,
    /// Where the admin HTTP API listens (off when `None`). The control
    /// thread serves it; the shards never see it.
    pub admin: Option<SocketAddr>,
    /// Health probes of the backends (the control thread sends them).
    pub probes: crate::control::probe::ProbeConfig,
    /// Destination sets and rules: what the shards route by. `backends`
    /// and `algorithm` above describe its default set.
    pub routing: Arc<Routing>,
    /// When a shard stops admitting new calls.
    pub overload: OverloadConfig,
    /// Access control (SIP and admin) and flood protection.
    pub guard: crate::guard::GuardConfig,
}

/// The default of [`Config::handoff_queue_bytes`]: 2,048 datagrams of
/// 8 KiB, far above what 8,192 slots of typical (1 KB) datagrams hold.
pub const HANDOFF_QUEUE_BYTES_DEFAULT: usize = 16 << 20;

/// Set when a shard stopped on an error: the process then exits 1.
static SHARD_FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Did a shard stop on an error (and the gateway with it)?
pub fn shard_failed() -> bool {
    SHARD_FAILED.load(Ordering::Acquire)
}

/// A shard's loop, set up and ready to run.
enum Loop {
    Uring(Box<Uring>),
    Epoll(Poller),
}

/// Which receive loop the shards run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Io {
    /// io_uring where the kernel allows it, else epoll.
    Auto,
    /// io_uring or fail to start.
    Uring,
    /// `recvmmsg`/`sendmmsg` + epoll.
    Epoll,
}

/// What one shard hands another.
enum Handoff {
    /// A datagram on its way to the shard that owns its call.
    Datagram {
        source: SocketAddr,
        datagram: Vec<u8>,
        /// When the receiving shard got it, so the owner's latency
        /// includes the time in the queue.
        received_at: Instant,
    },
    /// ICMP said this destination is unreachable. The kernel gives the
    /// error to one socket of the `SO_REUSEPORT` group, not always the
    /// sender's, so the shard that reads it tells the others.
    Unreachable(SocketAddr),
}

/// What every shard shares: the inboxes and doorbells of all shards, and
/// the flags the control thread sets.
struct Shared {
    inboxes: Vec<Inbox>,
    doorbells: Vec<Doorbell>,
    stop: AtomicBool,
    /// Shards past their last receive on the way out: once all are, no
    /// more handoffs can come, and each takes its inbox for the last time.
    stopped: AtomicUsize,
    /// Bumped on SIGUSR1; each shard logs its counters when it sees a new value.
    report: AtomicUsize,
    /// What each shard publishes for the control thread, by shard index.
    stats: Vec<Arc<ShardStats>>,
    /// The routing a reload delivered. A shard takes it when it sees
    /// `routing_generation` move: one atomic load a turn, no lock.
    routing: ArcSwap<Routing>,
    routing_generation: AtomicUsize,
    /// The ban table and epoch of the shards' guards; `None` when the SIP
    /// side has no ACL and flood protection is off.
    guard: Option<gate::GateShared>,
}

/// A shard's inbox: what other shards hand it, bounded in slots and in
/// datagram bytes. Slots alone would let a flood of 64 KiB datagrams hold
/// `slots` × 64 KiB while the owner stalls.
struct Inbox {
    queue: ArrayQueue<Handoff>,
    /// Datagram bytes in the queue, reserved before a push.
    bytes: AtomicUsize,
    bytes_max: usize,
}

impl Inbox {
    fn new(slots: usize, bytes_max: usize) -> Inbox {
        Inbox {
            queue: ArrayQueue::new(slots.max(1)),
            bytes: AtomicUsize::new(0),
            bytes_max,
        }
    }

    /// Queues a handoff, or gives it back when a slot or the bytes for it
    /// are missing. Senders reserve the bytes first, so that two of them
    /// cannot pass the bound together.
    fn push(&self, handoff: Handoff) -> Result<(), Handoff> {
        let len = handoff.bytes();
        if self.bytes.fetch_add(len, Ordering::Relaxed) + len > self.bytes_max {
            self.bytes.fetch_sub(len, Ordering::Relaxed);
            return Err(handoff);
        }
        self.queue.push(handoff).inspect_err(|_| {
            self.bytes.fetch_sub(len, Ordering::Relaxed);
        })
    }

    fn pop(&self) -> Option<Handoff> {
        let handoff = self.queue.pop()?;
        self.bytes.fetch_sub(handoff.bytes(), Ordering::Relaxed);
        Some(handoff)
    }

    /// How full it is, 0.0 to 1.0: the fuller of slots and bytes.
    fn fill(&self) -> f64 {
        let slots = self.queue.len() as f64 / self.queue.capacity() as f64;
        let bytes = self.bytes.load(Ordering::Relaxed) as f64 / self.bytes_max.max(1) as f64;
        slots.max(bytes)
    }
}

impl Handoff {
    /// What it holds against the inbox's byte bound.
    fn bytes(&self) -> usize {
        match self {
            Handoff::Datagram { datagram, .. } => datagram.len(),
            Handoff::Unreachable(_) => 0,
        }
    }
}

/// Counters of one shard, beside the proxy core's own.
#[derive(Clone, Debug, Default)]
struct ShardCounters {
    received: u64,
    /// Turns of the event loop: each one a wake-up.
    turns: u64,
    /// Turns that ran due timers.
    timer_turns: u64,
    handed_off: u64,
    handoff_dropped: u64,
    truncated: u64,
    /// Time spent working, from wake-up to the end of each turn.
    busy_ns: u64,
    /// Datagrams received, by method and status class.
    messages: MessageCounts,
}

/// A handle on the running shards for the control thread: new routing
/// in, routing and counters out.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl Handle {
    /// Every shard's published counters, by shard index.
    pub fn stats(&self) -> Vec<Arc<ShardStats>> {
        self.shared.stats.clone()
    }

    /// Hands every shard a new routing (a reload). New requests use it
    /// from the shard's next turn; transactions under way keep theirs.
    pub fn set_routing(&self, routing: Arc<Routing>) {
        self.shared.routing.store(routing);
        self.shared
            .routing_generation
            .fetch_add(1, Ordering::Release);
        for doorbell in &self.shared.doorbells {
            doorbell.ring();
        }
    }

    /// The routing the shards use now.
    pub fn routing(&self) -> Arc<Routing> {
        self.shared.routing.load_full()
    }

    /// Sources banned for flooding, all shards (0 when flood protection
    /// is off).
    pub fn bans_active(&self) -> usize {
        self.shared.guard.as_ref().map_or(0, |g| g.bans_active())
    }
}

/// The running shards.
pub struct Runtime {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    /// The in-kernel steering program, kept loaded while the shards run,
    /// and the sink socket it sheds into (see `steer`).
    _steering: Option<steer::Steering>,
    _sink: Option<Socket>,
}

impl Runtime {
    /// Binds every shard's socket (so that a bad address fails here, not in
    /// a thread) and starts the shard threads.
    pub fn start(config: Config) -> io::Result<Runtime> {
        let shards = config.shards.max(1);
        let sockets = (0..shards)
            .map(|_| bind(&config, config.listen, true))
            .collect::<io::Result<Vec<_>>>()?;
        // Each shard's own port: our Via names it, so a backend's responses
        // come back to the shard that holds their transaction, not to
        // whichever socket the 4-tuple hash picks.
        let own_sockets = (0..shards)
            .map(|i| {
                let port = match config.shard_port_base {
                    Some(base) => base.checked_add(i as u16).ok_or_else(|| {
                        io::Error::other("shard_port_base + shards is past port 65535")
                    })?,
                    None => 0,
                };
                bind(&config, SocketAddr::new(config.listen.ip(), port), false)
            })
            .collect::<io::Result<Vec<_>>>()?;
        // Steer each datagram to its owner's socket in the kernel; without
        // it (no eBPF here) the shards hand datagrams over, as always.
        // With overload control, the program also sheds new requests into
        // a sink socket of the group while a shard asks it to (one shard
        // then loads it for that alone).
        let shed_wanted = config.overload.enabled && config.overload.shed_in_kernel;
        let (steering, sink) = match sockets.len() {
            _ if !config.steering => (None, None),
            1 if !shed_wanted => (None, None),
            _ => {
                let fds = sockets.iter().map(|s| s.as_raw_fd()).collect::<Vec<_>>();
                let sink = match shed_wanted.then(|| bind_sink(&config)).transpose() {
                    Ok(sink) => sink,
                    Err(error) => {
                        tracing::warn!(%error, "no sink socket: new requests are shed by the shards, not in the kernel");
                        None
                    }
                };
                // A sink left in the group without the program would take
                // its share of datagrams: on failure it is closed here.
                match steer::attach(&fds, sink.as_ref().map(|s| s.as_raw_fd())) {
                    Ok(steering) => (Some(steering), sink),
                    Err(error) => {
                        tracing::warn!(%error, "no in-kernel steering by Call-ID nor shedding (eBPF); shards hand datagrams to their owners");
                        (None, None)
                    }
                }
            }
        };
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
        let shared = Arc::new(Shared {
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
            guard: config
                .guard
                .sip_active()
                .then(|| gate::GateShared::new(config.guard.clone(), random_seed())),
        });
        let use_uring = match config.io {
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
        };
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        // A CPU the operator named but the process may not use would leave
        // its shard unpinned, sharing cores unseen: refuse to start instead.
        if let Some(cpu) = config
            .cpus
            .iter()
            .find(|&&cpu| !cores.iter().any(|c| c.id == cpu))
        {
            let usable = cores.iter().map(|c| c.id.to_string()).collect::<Vec<_>>();
            return Err(io::Error::other(format!(
                "cpus: CPU {cpu} is not one this process may use (usable: {}); \
                 name CPUs from that list, or leave cpus out to use the first ones",
                usable.join(", ")
            )));
        }
        let host = host_text(config.listen);
        let mut local = LocalAddress::new(&host, config.listen.port());
        for &port in &own_ports {
            local = local.with_alias(&host, port);
        }
        let mut threads = Vec::with_capacity(shards);
        // Each shard says which loop it set up before the start-up line is
        // logged: one may fail to get a ring where the probe got one.
        let (loop_tx, loop_rx) = std::sync::mpsc::channel::<(usize, io::Result<bool>)>();
        for (index, (socket, own_socket)) in sockets.into_iter().zip(own_sockets).enumerate() {
            let core = match config.cpus.is_empty() {
                true => cores.get(index % cores.len().max(1)).copied(),
                false => cores
                    .iter()
                    .copied()
                    .find(|c| c.id == config.cpus[index % config.cpus.len()]),
            };
            let proxy = Proxy::with_routing(
                Scanner::new(config.limits.clone()),
                local.clone().with_via_port(own_ports[index]),
                Some(config.routing.clone()),
                config.txn.clone(),
                0,
                random_seed(),
            );
            let shared = shared.clone();
            let overload = config.overload.clone();
            let max_transactions = config.txn.max_transactions;
            let shed_map = shed_map.clone();
            let loop_tx = loop_tx.clone();
            let io = config.io;
            let thread = std::thread::Builder::new()
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
                        socket,
                        own_socket,
                        proxy,
                        shared,
                        (overload, max_transactions, shed_map),
                    );
                    if let Err(error) = shard.run(use_uring, io, loop_tx) {
                        // Its calls cannot go on, and the others should not
                        // go on without it: stop the gateway (cleanly) and
                        // exit non-zero, so a supervisor restarts it.
                        tracing::error!(shard = index, %error, "shard stopped on an I/O error; stopping the gateway");
                        SHARD_FAILED.store(true, Ordering::Release);
                        sys::raise_sigterm();
                    }
                })?;
            threads.push(thread);
        }
        drop(loop_tx);
        let runtime = Runtime {
            shared,
            threads,
            _steering: steering,
            _sink: sink,
        };
        let mut on_uring = 0;
        for _ in 0..shards {
            match loop_rx.recv() {
                Ok((_, Ok(uring))) => on_uring += usize::from(uring),
                Ok((index, Err(error))) => {
                    runtime.stop();
                    return Err(io::Error::new(
                        error.kind(),
                        format!("shard {index} could not start its loop: {error}"),
                    ));
                }
                Err(_) => {
                    runtime.stop();
                    return Err(io::Error::other("a shard stopped while starting"));
                }
            }
        }
        let io = match on_uring {
            0 => "epoll",
            n if n == shards => "io_uring",
            _ => "io_uring on some shards, epoll on the others (see the warnings above)",
        };
        tracing::info!(listen = %config.listen, shards, io, steered, shed_in_kernel, backends = config.backends.len(), ?own_ports, "sipshard is running");
        Ok(runtime)
    }

    /// Every shard's published counters, by shard index.
    pub fn stats(&self) -> Vec<Arc<ShardStats>> {
        self.shared.stats.clone()
    }

    /// What the control thread uses to reach the running shards.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
    }

    /// Asks every shard to log its counters (SIGUSR1).
    pub fn report(&self) {
        self.shared.report.fetch_add(1, Ordering::Relaxed);
        self.ring_all();
    }

    /// Stops receiving, lets each shard flush what it holds, and waits.
    pub fn stop(self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.ring_all();
        for thread in self.threads {
            let _ = thread.join();
        }
    }

    fn ring_all(&self) {
        for doorbell in &self.shared.doorbells {
            doorbell.ring();
        }
    }
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
fn uring_required(error: io::Error) -> io::Error {
    io::Error::new(
        error.kind(),
        format!("io_uring, which --io uring (io = \"uring\") asks for, cannot be set up: {error}"),
    )
}

/// A per-shard key for the transaction hashes, from the standard
/// library's per-process random hasher keys.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    hasher.finish()
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

const TOKEN_SOCKET: u64 = 0;
const TOKEN_DOORBELL: u64 = 1;
const TOKEN_OWN_SOCKET: u64 = 2;

/// How often a busy shard publishes its counters for `/metrics` (an idle
/// one still turns, and publishes, every `IDLE_WAIT`).
const PUBLISH_EVERY: std::time::Duration = std::time::Duration::from_millis(5);

/// How often a shard copies its latency histogram out for `/metrics`.
const LATENCY_OFFER_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a stopping shard waits for the others to pass their last
/// receive (a shard that failed never does).
const STOP_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// How long a shard sleeps with nothing to do before it looks at the stop
/// and report flags again (the doorbell wakes it sooner).
const IDLE_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// The latency histogram's range, in nanoseconds: anything past 10 s is a
/// stall and is clamped to the top.
const LATENCY_NS_MAX: u64 = 10_000_000_000;

struct Shard {
    index: usize,
    shared: Arc<Shared>,
    recv: RecvBatch,
    reported: usize,
    /// When the counters were last published, and the latency histogram
    /// last offered, to the control thread.
    published: Instant,
    latency_offered: Instant,
    /// The `Shared::routing_generation` this shard's proxy routes by.
    routing_generation: usize,
    /// Overload control: the state, and the window its load is measured
    /// over (when it began, and the busy time counted by then).
    overload: Detector,
    overload_window: (Instant, u64),
    /// The bounds the load is a fraction of.
    max_transactions: usize,
    /// In-kernel shedding, when the steering program has a sink.
    kernel_shed: Option<KernelShed>,
    output: Output,
}

/// A shard's share of new requests shed in the kernel (see `steer`), by
/// the policy of [`crate::proxy::shed`].
struct KernelShed {
    map: Arc<steer::ShedMap>,
    /// The share of new requests that reaches the shard (1.0: no shedding).
    passed: f64,
    /// The core's `admission_checked` and `shed_dropped` at the window's
    /// start.
    checked: u64,
    dropped: u64,
    /// What the program has shed for this shard, as last read.
    shed: u64,
    /// The listen socket's drop count (`SO_MEMINFO`), as last read.
    socket_drops: u32,
}

impl KernelShed {
    /// The share to pass in the next window, from what the core saw and
    /// from the listen socket's buffer.
    fn next_share(&self, overloaded: bool, checked: u64, dropped: u64, buffer: Buffer) -> f64 {
        next_pass_share(
            self.passed,
            overloaded,
            checked - self.checked,
            dropped - self.dropped,
            buffer,
        )
    }
}

/// What a shard's overload control is built from: its thresholds, the
/// transaction bound the table's fill is measured against, and the
/// kernel's shed controls when the steering program has a sink.
type Overload = (OverloadConfig, usize, Option<Arc<steer::ShedMap>>);

/// Everything that turns a datagram into bytes on the wire: the proxy
/// core and the wire it writes to. Apart from the receive batch so that a
/// received datagram can be handled in place.
struct Output {
    proxy: Proxy,
    wire: Wire,
    /// Shards whose inbox got datagrams during this turn.
    to_ring: Vec<bool>,
    /// Access control and flood protection; `None` when off.
    gate: Option<gate::Gate>,
    counters: ShardCounters,
    /// The shard's clock for the proxy core: milliseconds since start.
    epoch: Instant,
    /// When this turn began (read once a turn): the time of its datagrams
    /// and of its timers.
    clock: Instant,
}

/// The socket and the batch of datagrams waiting to go out on it: what
/// the proxy core transmits into.
struct Wire {
    /// The listen socket: requests arrive on it, responses leave from it
    /// (RFC 3581: from where the request came in).
    socket: Socket,
    /// The shard's own socket: the requests we send leave from it, and
    /// their responses come back to it.
    own_socket: Socket,
    send: SendBatch,
    /// When the datagram being handled was received; what it causes is
    /// measured from there.
    received_at: Instant,
    /// Receive times of the datagrams whose output sits in `send`.
    in_flight: Vec<Instant>,
    /// Gateway latency per datagram sent, from the batch that received it
    /// to the `sendmmsg` that sent what it caused.
    latency_ns: Histogram<u64>,
    sent: u64,
    /// Datagrams sent, by method and status class.
    sent_messages: MessageCounts,
    send_failed: u64,
    /// A `sendmmsg` reported an ICMP error: read the error queue.
    icmp_pending: bool,
}

impl Shard {
    fn new(
        index: usize,
        socket: Socket,
        own_socket: Socket,
        proxy: Proxy,
        shared: Arc<Shared>,
        (overload, max_transactions, shed_map): Overload,
    ) -> Shard {
        let shards = shared.inboxes.len();
        let gate = shared.guard.as_ref().map(|g| {
            let mut gate = gate::Gate::new(index, shards, g, random_seed());
            gate.set_routing(&shared.routing.load());
            gate
        });
        Shard {
            index,
            shared,
            recv: RecvBatch::new(),
            reported: 0,
            published: Instant::now(),
            latency_offered: Instant::now(),
            routing_generation: 0,
            overload: Detector::new(overload),
            overload_window: (Instant::now(), 0),
            max_transactions: max_transactions.max(1),
            kernel_shed: shed_map.map(|map| KernelShed {
                map,
                passed: 1.0,
                checked: 0,
                dropped: 0,
                shed: 0,
                socket_drops: 0,
            }),
            output: Output {
                proxy,
                wire: Wire {
                    socket,
                    own_socket,
                    send: SendBatch::new(),
                    received_at: Instant::now(),
                    in_flight: Vec::with_capacity(sys::BATCH),
                    latency_ns: Histogram::new_with_bounds(100, LATENCY_NS_MAX, 3)
                        .expect("constant histogram bounds are valid"),
                    sent: 0,
                    sent_messages: MessageCounts::default(),
                    send_failed: 0,
                    icmp_pending: false,
                },
                to_ring: vec![false; shards],
                gate,
                counters: ShardCounters::default(),
                epoch: Instant::now(),
                clock: Instant::now(),
            },
        }
    }

    /// Sets up the shard's loop, tells `started` which (io_uring: true)
    /// or why none could be, and runs it until the stop. A ring that
    /// fails here, after the start-up probe succeeded, is an error when
    /// io_uring was asked for and a logged fallback to epoll otherwise.
    fn run(
        &mut self,
        use_uring: bool,
        io: Io,
        started: std::sync::mpsc::Sender<(usize, io::Result<bool>)>,
    ) -> io::Result<()> {
        let ready = match use_uring {
            false => self.epoll_poller().map(Loop::Epoll),
            true => match Uring::new(
                self.output.wire.socket.as_raw_fd(),
                self.output.wire.own_socket.as_raw_fd(),
                self.shared.doorbells[self.index].raw(),
            ) {
                Ok(uring) => Ok(Loop::Uring(Box::new(uring))),
                Err(error) if io == Io::Uring => Err(uring_required(error)),
                Err(error) => {
                    tracing::warn!(shard = self.index, %error, "io_uring set-up failed; this shard uses epoll");
                    self.epoll_poller().map(Loop::Epoll)
                }
            },
        };
        let (word, ready) = match ready {
            Ok(ready) => (Ok(matches!(ready, Loop::Uring(_))), Some(ready)),
            Err(error) => (Err(error), None),
        };
        // Sent, and the sender dropped, before the loop runs: start-up
        // waits for every shard's word or for all senders to be gone.
        let _ = started.send((self.index, word));
        drop(started);
        match ready {
            Some(Loop::Uring(uring)) => self.run_uring(*uring),
            Some(Loop::Epoll(poller)) => self.run_epoll(poller),
            None => Ok(()),
        }
    }

    /// An epoll set of the shard's sockets and doorbell.
    fn epoll_poller(&self) -> io::Result<Poller> {
        let poller = Poller::new()?;
        poller.add(self.output.wire.socket.as_raw_fd(), TOKEN_SOCKET)?;
        poller.add(self.output.wire.own_socket.as_raw_fd(), TOKEN_OWN_SOCKET)?;
        poller.add(self.shared.doorbells[self.index].raw(), TOKEN_DOORBELL)?;
        Ok(poller)
    }

    fn run_epoll(&mut self, mut poller: Poller) -> io::Result<()> {
        while !self.shared.stop.load(Ordering::Relaxed) {
            let mut socket_ready = false;
            let mut own_ready = false;
            let wait = self.output.wait_for(IDLE_WAIT);
            self.output.counters.turns += 1;
            for token in poller.wait(wait.as_millis() as i32)? {
                match token {
                    TOKEN_SOCKET => socket_ready = true,
                    TOKEN_OWN_SOCKET => own_ready = true,
                    _ => self.shared.doorbells[self.index].clear(),
                }
            }
            self.output.tick();
            if socket_ready {
                self.receive(self.output.wire.socket.as_raw_fd())?;
            }
            if own_ready {
                self.receive(self.output.wire.own_socket.as_raw_fd())?;
            }
            self.drain_inbox();
            if std::mem::take(&mut self.recv.icmp_pending)
                | std::mem::take(&mut self.output.wire.icmp_pending)
            {
                self.output.icmp_errors(self.index, &self.shared);
            }
            self.output.timers();
            self.output.flush();
            self.end_turn(Instant::now());
        }
        self.finish();
        Ok(())
    }

    /// The io_uring loop: one `submit_with_args` per turn submits the last
    /// turn's sends and sleeps until a datagram, a doorbell or the idle
    /// timeout.
    fn run_uring(&mut self, mut uring: Uring) -> io::Result<()> {
        let mut ready = Vec::with_capacity(sys::BATCH);
        while !self.shared.stop.load(Ordering::Relaxed) {
            let flushed = uring.wait(self.output.wait_for(IDLE_WAIT), &mut ready)?;
            self.output.counters.turns += 1;
            let icmp = flushed.icmp_pending;
            self.output.ring_sent(flushed);
            self.handle_ready(&mut uring, &ready);
            self.output.ring_owners(&self.shared);
            self.drain_inbox();
            if icmp | std::mem::take(&mut self.output.wire.icmp_pending) {
                self.output.icmp_errors(self.index, &self.shared);
            }
            self.output.timers();
            let done = Instant::now();
            if !self.output.wire.send.is_empty() {
                uring.queue_sends(&self.output.wire.send)?;
                self.output.wire.record_latency(done);
            }
            self.end_turn(done);
        }
        // Stop: the queued sends go out with this last wait, and what it
        // received is handled like any turn's (its answers leave with the
        // flush in `finish`).
        let flushed = uring.wait(std::time::Duration::ZERO, &mut ready)?;
        self.output.ring_sent(flushed);
        self.handle_ready(&mut uring, &ready);
        self.output.ring_owners(&self.shared);
        self.finish();
        Ok(())
    }

    /// Dispatches the datagrams a wait collected and gives their buffers
    /// back to the ring.
    fn handle_ready(&mut self, uring: &mut Uring, ready: &[uring::Ready]) {
        let received_at = self.output.tick();
        for &r in ready {
            self.output.counters.received += 1;
            match uring.datagram(r) {
                Some((source, datagram)) => {
                    self.output
                        .dispatch(self.index, &self.shared, source, datagram, received_at)
                }
                None => self.output.counters.truncated += 1,
            }
        }
        uring.recycle(ready);
    }

    /// The way out, after the last receive: wait (at most `STOP_WAIT`)
    /// until every shard is past its own, so that nothing can be handed to
    /// this one after its inbox is taken for the last time; then send what
    /// it holds.
    fn finish(&mut self) {
        let shards = self.shared.inboxes.len();
        self.shared.stopped.fetch_add(1, Ordering::AcqRel);
        let deadline = Instant::now() + STOP_WAIT;
        while self.shared.stopped.load(Ordering::Acquire) < shards && Instant::now() < deadline {
            self.drain_inbox();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        self.drain_inbox();
        self.output.flush();
        self.log_counters();
    }

    /// Counts the turn's work, publishes the counters, and logs them if
    /// SIGUSR1 asked.
    fn end_turn(&mut self, done: Instant) {
        let generation = self.shared.routing_generation.load(Ordering::Acquire);
        if generation != self.routing_generation {
            self.routing_generation = generation;
            let routing = self.shared.routing.load_full();
            if let Some(gate) = &mut self.output.gate {
                gate.set_routing(&routing);
            }
            self.output.proxy.set_routing(routing);
        }
        let c = &mut self.output.counters;
        c.busy_ns += done.saturating_duration_since(self.output.clock).as_nanos() as u64;
        self.check_overload(done);
        if done.saturating_duration_since(self.published) >= PUBLISH_EVERY {
            self.published = done;
            self.publish(done);
        }
        self.report_if_asked();
    }

    /// Once a window: how busy the loop was, how full the transaction
    /// table and the inbox are; tells the proxy when overload starts or
    /// ends.
    fn check_overload(&mut self, done: Instant) {
        let (started, busy_then) = self.overload_window;
        let elapsed = done.saturating_duration_since(started);
        let window_ms = self.overload.config().window_ms;
        if elapsed.as_millis() < u128::from(window_ms) {
            return;
        }
        let busy_ns = self.output.counters.busy_ns;
        self.overload_window = (done, busy_ns);
        if elapsed.as_millis() > 10 * u128::from(window_ms) {
            // A stale window (start-up, a long idle wait): nothing was
            // overloading the shard.
            if let Some(admit) = self.overload.idle() {
                let reject_per_s = self.overload.config().reject_per_s;
                let now = self.output.now();
                self.output.proxy.set_admission(admit, reject_per_s, now);
                tracing::info!(shard = self.index, "no longer overloaded (idle)");
            }
            self.update_kernel_shed(None);
            return;
        }
        let inbox = &self.shared.inboxes[self.index];
        // The queue: the fuller of the inbox (handoffs from other shards)
        // and the two sockets' receive buffers (what the kernel holds for
        // us, and drops past).
        let wire = &self.output.wire;
        let [listen, own] = [wire.socket.as_raw_fd(), wire.own_socket.as_raw_fd()]
            .map(|fd| sys::receive_queue(fd).unwrap_or((0.0, 0)));
        let load = Load {
            busy: (busy_ns - busy_then) as f64 / elapsed.as_nanos().max(1) as f64,
            transactions: self.output.proxy.transactions().0 as f64 / self.max_transactions as f64,
            queue: inbox.fill().max(listen.0).max(own.0),
        };
        let was_overloaded = self.overload.overloaded();
        if let Some(admit) = self.overload.observe(load) {
            let reject_per_s = self.overload.config().reject_per_s;
            let now = self.output.now();
            self.output.proxy.set_admission(admit, reject_per_s, now);
            let overloaded = self.overload.overloaded();
            if overloaded == was_overloaded {
                tracing::debug!(
                    shard = self.index,
                    admit,
                    busy = load.busy,
                    transactions = load.transactions,
                    queue = load.queue,
                    "overload: share of new calls admitted"
                );
            } else if overloaded {
                tracing::warn!(
                    shard = self.index,
                    busy = format!("{:.2}", load.busy),
                    transactions = format!("{:.2}", load.transactions),
                    queue = format!("{:.2}", load.queue),
                    "overloaded: some new INVITEs and REGISTERs get 503 until the load falls"
                );
            } else {
                tracing::info!(shard = self.index, "no longer overloaded");
            }
        }
        self.update_kernel_shed(Some(listen));
    }

    /// Gives the kernel the next window's share of new requests to shed
    /// for this shard (see [`KernelShed`]) and reads what it has shed.
    /// `listen`: the listen socket's fill and drop count (`SO_MEMINFO`)
    /// at the end of the window, or `None` for a stale (idle) one.
    fn update_kernel_shed(&mut self, listen: Option<(f64, u32)>) {
        let Some(kernel) = &mut self.kernel_shed else {
            return;
        };
        let window = listen.map(|(fill, drops)| {
            let dropped = std::mem::replace(&mut kernel.socket_drops, drops) != drops;
            (fill, dropped)
        });
        let buffer = Buffer::at_window_end(window, self.overload.config().queue_high);
        let counters = self.output.proxy.counters();
        let (checked, dropped) = (counters.admission_checked, counters.shed_dropped);
        let passed = kernel.next_share(self.overload.overloaded(), checked, dropped, buffer);
        (kernel.checked, kernel.dropped) = (checked, dropped);
        let index = self.index as u32;
        if passed != kernel.passed {
            match kernel.map.set(index, 1.0 - passed) {
                Ok(()) => kernel.passed = passed,
                Err(error) => {
                    tracing::debug!(shard = self.index, %error, "could not set the in-kernel shed share")
                }
            }
        }
        if let Ok(shed) = kernel.map.shed(index) {
            kernel.shed = shed;
        }
    }

    /// Stores this shard's counters where the control thread reads them
    /// (relaxed stores, one writer each); the latency histogram about once
    /// a second.
    fn publish(&mut self, now: Instant) {
        let stats = &self.shared.stats[self.index];
        let c = &self.output.counters;
        let w = &self.output.wire;
        let p: &Counters = self.output.proxy.counters();
        let (servers, clients) = self.output.proxy.transactions();
        for (stat, value) in [
            (Stat::Received, c.received),
            (Stat::Sent, w.sent),
            (Stat::HandedOff, c.handed_off),
            (Stat::Turns, c.turns),
            (Stat::TimerTurns, c.timer_turns),
            (Stat::BusyNs, c.busy_ns),
            (Stat::RequestsForwarded, p.requests_forwarded),
            (Stat::ResponsesForwarded, p.responses_forwarded),
            (Stat::Replies, p.replies),
            (Stat::RequestsGenerated, p.requests_sent),
            (Stat::TransactionsStarted, p.transactions_started),
            (Stat::RetransmissionsAbsorbed, p.retransmissions_absorbed),
            (Stat::RetransmissionsSent, p.retransmissions_sent),
            (Stat::Cancels, p.cancels),
            (Stat::Failovers, p.failovers),
            (Stat::Timeouts, p.timeouts),
            (Stat::TryTimeouts, p.try_timeouts),
            (Stat::TimerC, p.timer_c_fired),
            (Stat::AckTimeouts, p.ack_timeouts),
            (Stat::Unreachable, p.unreachable),
            (Stat::OverloadRejected, p.overload_rejected),
            (Stat::UnavailableRejected, p.unavailable_rejected),
            (Stat::LoopsDetected, p.loops_detected),
            (Stat::ServerTransactions, servers as u64),
            (Stat::ClientTransactions, clients as u64),
            (Stat::Dialogs, self.output.proxy.dialogs() as u64),
            (Stat::DroppedHandoffQueueFull, c.handoff_dropped),
            (Stat::DroppedSendFailed, w.send_failed),
            (Stat::DroppedTruncated, c.truncated),
            (Stat::DroppedMalformed, p.dropped_malformed),
            (Stat::DroppedUnanswerable, p.dropped_unanswerable),
            (Stat::DroppedResponseNotOurs, p.dropped_response_not_ours),
            (Stat::DroppedResponseForUs, p.dropped_response_for_us),
            (Stat::DroppedUnresolved, p.dropped_unresolved),
            (Stat::DroppedBufferFull, p.dropped_buffer_full),
            (Stat::DroppedNoBackend, p.dropped_no_backend),
            (Stat::Overloaded, u64::from(self.overload.overloaded())),
            (Stat::OverloadEntered, self.overload.entered),
            (Stat::ShedRejected, p.shed_rejected),
            (Stat::ShedDropped, p.shed_dropped),
            (
                Stat::ShedInKernel,
                self.kernel_shed.as_ref().map_or(0, |k| k.shed),
            ),
            (Stat::LocalAcksAbsorbed, p.local_acks_absorbed),
        ] {
            stats.set(stat, value);
        }
        for limit in crate::proxy::Limit::ALL {
            stats.set(Stat::of_limit(limit), p.limits.get(limit));
        }
        stats.set_messages(&c.messages, &w.sent_messages);
        if let Some(gate) = &mut self.output.gate {
            gate.publish(stats, now);
        }
        if now.saturating_duration_since(self.latency_offered) >= LATENCY_OFFER_EVERY {
            self.latency_offered = now;
            stats.offer_latency(&w.latency_ns);
            stats.offer_rtt(self.output.proxy.transaction_rtt());
            stats.offer_duration(self.output.proxy.transaction_duration());
        }
    }

    fn report_if_asked(&mut self) {
        let report = self.shared.report.load(Ordering::Relaxed);
        if report != self.reported {
            self.reported = report;
            self.log_counters();
        }
    }

    /// Reads a socket dry, batch by batch.
    fn receive(&mut self, fd: std::os::fd::RawFd) -> io::Result<()> {
        loop {
            let count = self.recv.recv(fd)?;
            let received_at = self.output.tick();
            for i in 0..count {
                self.output.counters.received += 1;
                let Some((source, datagram)) = self.recv.datagram(i) else {
                    self.output.counters.truncated += 1;
                    continue;
                };
                self.output
                    .dispatch(self.index, &self.shared, source, datagram, received_at);
            }
            self.output.ring_owners(&self.shared);
            if count < sys::BATCH {
                return Ok(());
            }
        }
    }

    fn drain_inbox(&mut self) {
        while let Some(handoff) = self.shared.inboxes[self.index].pop() {
            match handoff {
                Handoff::Datagram {
                    source,
                    datagram,
                    received_at,
                } => self.output.handle(source, &datagram, received_at),
                Handoff::Unreachable(to) => self.output.unreachable(to),
            }
        }
    }

    fn log_counters(&self) {
        let c = &self.output.counters;
        let p: &Counters = self.output.proxy.counters();
        tracing::info!(
            shard = self.index,
            received = c.received,
            turns = c.turns,
            timer_turns = c.timer_turns,
            sent = self.output.wire.sent,
            handed_off = c.handed_off,
            requests_forwarded = p.requests_forwarded,
            responses_forwarded = p.responses_forwarded,
            replies = p.replies,
            dropped_handoff_queue_full = c.handoff_dropped,
            dropped_send_failed = self.output.wire.send_failed,
            dropped_truncated = c.truncated,
            dropped_malformed = p.dropped_malformed,
            dropped_unanswerable = p.dropped_unanswerable,
            dropped_response_not_ours = p.dropped_response_not_ours,
            dropped_response_for_us = p.dropped_response_for_us,
            dropped_unresolved = p.dropped_unresolved,
            dropped_buffer_full = p.dropped_buffer_full,
            dropped_no_backend = p.dropped_no_backend,
            loops_detected = p.loops_detected,
            "shard counters"
        );
        let (servers, clients) = self.output.proxy.transactions();
        tracing::info!(
            shard = self.index,
            server_transactions = servers,
            client_transactions = clients,
            transactions_started = p.transactions_started,
            requests_sent = p.requests_sent,
            retransmissions_absorbed = p.retransmissions_absorbed,
            retransmissions_sent = p.retransmissions_sent,
            cancels = p.cancels,
            failovers = p.failovers,
            timeouts = p.timeouts,
            try_timeouts = p.try_timeouts,
            timer_c_fired = p.timer_c_fired,
            ack_timeouts = p.ack_timeouts,
            unreachable = p.unreachable,
            overload_rejected = p.overload_rejected,
            "shard transactions"
        );
        if let Some(gate) = &self.output.gate {
            gate.log_counters();
        }
        let h = &self.output.wire.latency_ns;
        if !h.is_empty() {
            let us = |ns: u64| ns as f64 / 1000.0;
            tracing::info!(
                shard = self.index,
                datagrams = h.len(),
                p50_us = us(h.value_at_quantile(0.50)),
                p90_us = us(h.value_at_quantile(0.90)),
                p99_us = us(h.value_at_quantile(0.99)),
                max_us = us(h.max()),
                "shard latency, receive to send"
            );
        }
    }
}

impl Output {
    /// Counts a received datagram by method or status class, and handles
    /// it here when this shard owns its call, else hands it to the owner's
    /// inbox and marks the owner to be rung. The guard screens it first,
    /// before any scanning (ACL, bans).
    fn dispatch(
        &mut self,
        index: usize,
        shared: &Shared,
        source: SocketAddr,
        datagram: &[u8],
        received_at: Instant,
    ) {
        if let Some(gate) = &mut self.gate {
            if !gate.screen(self.clock, source) {
                return;
            }
        }
        self.counters.messages.count(stats::classify(datagram));
        let shards = shared.inboxes.len() as u64;
        // One shard owns every call: no Call-ID to look for.
        let owner = match shards {
            1 => index,
            _ => find_call_id(datagram).map_or(index, |id| (fnv1a(&[id]) % shards) as usize),
        };
        if owner == index {
            self.handle(source, datagram, received_at);
            return;
        }
        let handoff = Handoff::Datagram {
            source,
            datagram: datagram.to_vec(),
            received_at,
        };
        match shared.inboxes[owner].push(handoff) {
            Ok(()) => {
                self.counters.handed_off += 1;
                self.to_ring[owner] = true;
            }
            Err(_) => self.counters.handoff_dropped += 1,
        }
    }

    /// Rings the doorbell of every shard handed datagrams since the last call.
    fn ring_owners(&mut self, shared: &Shared) {
        for (owner, ring) in self.to_ring.iter_mut().enumerate() {
            if std::mem::take(ring) {
                shared.doorbells[owner].ring();
            }
        }
    }

    /// The ring reports the last batch sent: count it, reuse the batch.
    fn ring_sent(&mut self, flushed: sys::Flushed) {
        let wire = &mut self.wire;
        wire.sent += flushed.sent;
        wire.send_failed += flushed.failed;
        if !wire.in_flight.is_empty() {
            wire.record_latency(Instant::now());
        }
        wire.send.clear();
    }

    /// Reads the clock for this turn.
    fn tick(&mut self) -> Instant {
        self.clock = Instant::now();
        self.clock
    }

    /// The proxy core's time: milliseconds since the shard started, as of
    /// this turn's [`Output::tick`].
    fn now(&self) -> Millis {
        self.clock.saturating_duration_since(self.epoch).as_millis() as Millis
    }

    /// Reads the ICMP errors the socket queued; every shard (this one
    /// and, through their inboxes, the others) fails over each try still
    /// waiting on a destination they name.
    fn icmp_errors(&mut self, index: usize, shared: &Shared) {
        let mut unreachable = Vec::new();
        sys::read_icmp_errors(self.wire.socket.as_raw_fd(), &mut unreachable);
        sys::read_icmp_errors(self.wire.own_socket.as_raw_fd(), &mut unreachable);
        for to in unreachable {
            tracing::debug!(%to, "ICMP: destination unreachable");
            self.unreachable(to);
            for (other, inbox) in shared.inboxes.iter().enumerate() {
                if other != index && inbox.push(Handoff::Unreachable(to)).is_ok() {
                    self.to_ring[other] = true;
                }
            }
        }
        self.ring_owners(shared);
    }

    fn unreachable(&mut self, to: SocketAddr) {
        let now = self.now();
        self.wire.received_at = self.clock;
        self.proxy.on_unreachable(now, to, &mut self.wire);
    }

    /// Runs the proxy core's due timers (retransmissions, timeouts).
    fn timers(&mut self) {
        let now = self.now();
        if self.proxy.next_deadline().is_some_and(|d| d <= now) {
            self.counters.timer_turns += 1;
            self.wire.received_at = self.clock;
            self.proxy.on_timers(now, &mut self.wire);
        }
    }

    /// How long the loop may sleep: until the next timer, at most `idle`.
    fn wait_for(&self, idle: std::time::Duration) -> std::time::Duration {
        match self.proxy.next_deadline() {
            Some(deadline) => {
                // A fresh reading: the turn's own is as old as its work.
                let now = self.epoch.elapsed().as_millis() as Millis;
                let ms = deadline.saturating_sub(now);
                idle.min(std::time::Duration::from_millis(ms))
            }
            None => idle,
        }
    }

    /// Runs one datagram through the proxy core; what it sends is queued.
    /// The guard meters requests here, on the owner shard, so that a
    /// source's requests spread over the shards by Call-ID whether the
    /// kernel steered them or a shard handed them over.
    fn handle(&mut self, source: SocketAddr, datagram: &[u8], received_at: Instant) {
        if let Some(gate) = &mut self.gate {
            if !gate.meter(self.clock, source, datagram) {
                return;
            }
        }
        self.wire.received_at = received_at;
        let now = self.now();
        let outcome = self.proxy.handle(now, source, datagram, &mut self.wire);
        if let Outcome::Dropped(reason) = outcome {
            if !matches!(
                reason,
                crate::proxy::DropReason::Malformed(crate::sip::Fault::Empty)
            ) {
                tracing::debug!(%source, ?reason, "dropped a datagram");
            }
        }
    }

    fn flush(&mut self) {
        self.wire.flush();
    }
}

impl Wire {
    fn record_latency(&mut self, now: Instant) {
        for received_at in self.in_flight.drain(..) {
            let ns = (now - received_at)
                .as_nanos()
                .min(u128::from(LATENCY_NS_MAX)) as u64;
            self.latency_ns.saturating_record(ns);
        }
    }

    fn flush(&mut self) {
        if self.send.is_empty() {
            return;
        }
        let flushed = self
            .send
            .flush(self.socket.as_raw_fd(), self.own_socket.as_raw_fd());
        self.icmp_pending |= flushed.icmp_pending;
        self.sent += flushed.sent;
        self.send_failed += flushed.failed;
        self.record_latency(Instant::now());
    }
}

impl Transmit for Wire {
    fn buffer(&mut self) -> &mut [u8] {
        if !self.send.has_room() {
            self.flush();
        }
        self.send.space()
    }

    /// Requests leave from the shard's own socket, responses from the
    /// listen socket; the proxy core writes whole messages, so the first
    /// bytes tell which.
    fn send(&mut self, to: SocketAddr, len: usize) {
        let message = self.send.space();
        let response = message.starts_with(b"SIP/2.0 ");
        self.sent_messages
            .count(stats::classify(&message[..len.min(message.len())]));
        self.send.push(to, len, !response);
        self.in_flight.push(self.received_at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(len: usize) -> Handoff {
        Handoff::Datagram {
            source: "192.0.2.1:5060".parse().unwrap(),
            datagram: vec![b'x'; len],
            received_at: Instant::now(),
        }
    }

    #[test]
    fn the_inbox_holds_no_more_bytes_than_its_bound() {
        let inbox = Inbox::new(8, 100_000);
        assert!(inbox.push(datagram(60_000)).is_ok());
        // A second 60 KB datagram would pass the bound; a slot is free.
        assert!(inbox.push(datagram(60_000)).is_err());
        assert!(inbox.push(datagram(40_000)).is_ok(), "exactly the bound");
        assert!(inbox.push(datagram(1)).is_err());
        assert!((inbox.fill() - 1.0).abs() < 1e-9);
        // ICMP news takes a slot, no bytes: it still gets in.
        assert!(inbox
            .push(Handoff::Unreachable("192.0.2.2:5060".parse().unwrap()))
            .is_ok());
        // What is taken out frees its bytes, and nothing is left counted.
        while inbox.pop().is_some() {}
        assert_eq!(inbox.bytes.load(Ordering::Relaxed), 0);
        assert!(inbox.push(datagram(100_000)).is_ok());
    }

    #[test]
    fn a_full_inbox_gives_the_bytes_back() {
        let inbox = Inbox::new(1, 100_000);
        assert!(inbox.push(datagram(10)).is_ok());
        assert!(inbox.push(datagram(10)).is_err(), "no slot");
        assert_eq!(inbox.bytes.load(Ordering::Relaxed), 10);
        assert!((inbox.fill() - 1.0).abs() < 1e-9, "slots full");
    }
}
