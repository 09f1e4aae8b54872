//! The per-core runtime: one pinned thread per shard, each with its own
//! `SO_REUSEPORT` socket on the listen address, its own proxy core, and an
//! inbox other shards hand datagrams to.
//!
//! A datagram belongs to the shard `hash(Call-ID) mod shards`. The
//! steering program (`steer`) puts it on its owner's socket; where the
//! program is not loaded or cannot place it, the kernel spreads datagrams
//! by 4-tuple, so the receiving shard finds the Call-ID and, when the call is another shard's, hands the
//! datagram over a bounded queue and rings that shard's doorbell. A call's
//! messages therefore go through one shard, in the order one socket
//! received them. A full queue drops and counts; a shard never blocks.
//!
//! Two loops run the same shard: io_uring (`uring.rs`: multishot receive on
//! provided buffers, sends as one batch of SQEs, one `submit_with_args` per
//! turn) and, where io_uring is missing or forbidden, `recvmmsg`/`sendmmsg`
//! + epoll (`sys.rs`). The choice is made at start-up and logged.
//!
//! By job: `start` binds the sockets, steers the group (`steer`, eBPF)
//! and spawns the threads; `run` turns a shard's loop; `dispatch` takes a
//! datagram to its owner, through the guard (`gate`), the `inbox` or the
//! proxy core, and batches what the core sends; `overload` measures the
//! load and sheds; `stats` is what a shard publishes for the control
//! thread.

mod dispatch;
mod gate;
mod inbox;
mod overload;
mod run;
mod start;
pub mod stats;
mod steer;
mod streams;
mod sys;
mod uring;

pub use streams::{StreamConfig, StreamCounters, WsConfig};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use arc_swap::{ArcSwap, ArcSwapOption};
use socket2::Socket;

use crate::balance::Routing;
use crate::proxy::overload::{Detector, OverloadConfig};
use crate::proxy::Proxy;
use crate::sip::Limits;
use crate::txn::TxnConfig;
use dispatch::{Output, Wire};
use inbox::Inbox;
use overload::{KernelShed, Overload};
use stats::ShardStats;
use sys::{Doorbell, Poller, RecvBatch};
use uring::Uring;

/// What the runtime needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// The UDP listen address.
    pub listen: SocketAddr,
    /// The TCP listen address, when SIP over TCP is served.
    pub tcp_listen: Option<SocketAddr>,
    /// The TLS listen address, when SIP over TLS is served.
    pub tls_listen: Option<SocketAddr>,
    /// The WebSocket listen addresses (RFC 7118), plain and secure.
    pub ws_listen: Option<SocketAddr>,
    pub wss_listen: Option<SocketAddr>,
    /// What TLS connections start from (listeners, TLS backends); `None`
    /// when neither is configured.
    pub tls: Option<Arc<crate::tls::TlsContext>>,
    /// Connection bounds and timeouts.
    pub streams: StreamConfig,
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
    /// Destination sets and rules: what the shards route by.
    pub routing: Arc<Routing>,
    /// When a shard stops admitting new calls.
    pub overload: OverloadConfig,
    /// The SIP ACL and flood protection.
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
    /// The TLS settings a certificate reload delivered, taken as routing is.
    tls: ArcSwapOption<crate::tls::TlsContext>,
    tls_generation: AtomicUsize,
    /// The ban table and epoch of the shards' guards; `None` when the SIP
    /// side has no ACL and flood protection is off.
    guard: Option<gate::GateShared>,
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

    /// Hands every shard new TLS settings (a certificate reloaded): new
    /// connections use them, established ones keep their sessions.
    pub fn set_tls(&self, tls: Arc<crate::tls::TlsContext>) {
        self.shared.tls.store(Some(tls));
        self.shared.tls_generation.fetch_add(1, Ordering::Release);
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

/// A per-shard key for the transaction hashes, from the standard
/// library's per-process random hasher keys.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    hasher.finish()
}

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
    /// The `Shared::tls_generation` its connections start from.
    tls_generation: usize,
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

impl Shard {
    fn new(
        index: usize,
        (socket, own_socket, streams): (Socket, Socket, streams::Streams),
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
            tls_generation: 0,
            overload: Detector::new(overload),
            overload_window: (Instant::now(), 0),
            max_transactions: max_transactions.max(1),
            kernel_shed: shed_map.map(KernelShed::new),
            output: Output::new(proxy, Wire::new(socket, own_socket, streams), shards, gate),
        }
    }
}
