//! Transactions of one shard (RFC 3261 §17, as a proxy uses them in §16):
//! the server transaction facing the caller ([`ServerTxn`]), the client
//! transactions facing the next hop ([`ClientTxn`]), the timers that drive
//! both, and the bounds on all three.
//!
//! Each transaction is a state machine: an event (a request or its
//! retransmission, a response, a timer, an ACK or CANCEL) moves it and
//! comes back as an action for its user, the proxy core, to carry out
//! (send again, arm or cancel these timers, pass this response upstream,
//! try the next hop). Routing, failover and what goes on the wire are the
//! proxy's. Everything is shard-local: no locks, no clock (time comes in as
//! milliseconds), no sockets, and nothing here knows the proxy.

mod client;
mod server;
mod timers;
pub mod wheel;

use crate::sip::Peer;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

pub use client::{
    BranchKey, CancelState, ClientResponse, ClientState, ClientTimerAction, ClientTxn, Provisional,
};
pub use server::{ServerAck, ServerFinal, ServerState, ServerTimerAction, ServerTxn};
pub use timers::{
    ClientTimer, ClientTimers, ServerTimer, ServerTimers, Timer, TimerKind, TimerTable,
    CLIENT_TIMERS, SERVER_TIMERS,
};
use wheel::{TimerId, Wheel};

/// Milliseconds since an epoch the shell picks (its start).
pub type Millis = u64;

/// The RFC 3261 timer values (§17.1.1.1, table 4) and the proxy's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerConfig {
    /// RTT estimate: the first retransmission interval (Timers A, E, G).
    pub t1_ms: u32,
    /// The longest retransmission interval for non-INVITE requests and
    /// INVITE responses.
    pub t2_ms: u32,
    /// How long the network may hold a message: Timers I and K.
    pub t4_ms: u32,
    /// Timer C: how long a proxied INVITE may stay without a final answer
    /// after its last provisional (§16.6 step 11).
    pub timer_c_ms: u32,
    /// How long an INVITE waits for any response from one backend before
    /// the next is tried, so a dead backend costs this, not Timer B.
    pub try_ms: u32,
    /// Timer D: how long a completed INVITE client transaction absorbs
    /// retransmitted final responses (at least 32 s over UDP).
    pub timer_d_ms: u32,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            t1_ms: 500,
            t2_ms: 4_000,
            t4_ms: 5_000,
            timer_c_ms: 180_000,
            try_ms: 2_000,
            timer_d_ms: 32_000,
        }
    }
}

impl TimerConfig {
    /// Timers B, F, H, J, L and M: 64·T1.
    pub fn timeout_ms(&self) -> u32 {
        self.t1_ms.saturating_mul(64)
    }
}

/// Failover policy and the bounds of the transaction table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnConfig {
    pub timers: TimerConfig,
    /// Final responses after which the next backend is tried (besides a
    /// timeout and an ICMP error).
    pub failover_codes: Vec<u16>,
    /// Whether a failover code still fails over after a provisional
    /// response above 100 (the backend had started ringing).
    pub failover_after_provisional: bool,
    /// Server transactions per shard; past it, new requests get 503.
    pub max_transactions: usize,
    /// The `Retry-After` of that 503, in seconds.
    pub retry_after_s: u32,
    /// RFC 3261 §18.1.1: a request larger than this bound for a backend
    /// over UDP goes over TCP when the backend takes it, else gets 513;
    /// never a datagram the network would fragment.
    pub udp_request_bytes_max: usize,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            timers: TimerConfig::default(),
            failover_codes: vec![500, 502, 503, 504],
            failover_after_provisional: false,
            max_transactions: 65_536,
            retry_after_s: 5,
            udp_request_bytes_max: 1300,
        }
    }
}

/// A slab index with the generation it was taken at, so a timer or a
/// link that outlives its entry finds nothing instead of a stranger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Slot {
    pub index: u32,
    pub generation: u32,
}

/// Which backends a server transaction may still try.
#[derive(Clone, Debug)]
pub enum Target {
    /// A destination set of the routing snapshot the transaction began
    /// with (a reload does not change where its failover goes): bit i of
    /// `tried` set when member i was tried.
    Pool {
        routing: std::sync::Arc<crate::balance::Routing>,
        set: crate::balance::SetId,
        tried: u64,
    },
    /// One address (a Route or Request-URI): no alternatives.
    Fixed(Peer),
}

/// A fixed-capacity store with reusable slots; full is an answer, not a
/// reallocation.
#[derive(Debug)]
pub struct Slab<T> {
    entries: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Slab<T> {
    /// Every entry is written here, at start-up, so that the kernel
    /// backs the whole table with memory now: a busy shard then takes no
    /// page faults (and zeroes no pages) as its table fills, and its RSS
    /// is flat from the first call.
    pub fn with_capacity(capacity: usize) -> Slab<T> {
        let capacity = capacity.min(u32::MAX as usize);
        let mut entries = Vec::with_capacity(capacity);
        entries.resize_with(capacity, || (0, None));
        // Lowest index on top: a quiet shard keeps to the front of the
        // table, where its cache lines are warm.
        let free = (0..capacity as u32).rev().collect();
        Slab {
            entries,
            free,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_full(&self) -> bool {
        self.free.is_empty()
    }

    pub fn insert(&mut self, value: T) -> Option<Slot> {
        // The free list holds every index not in use (`with_capacity`).
        let index = self.free.pop()?;
        let entry = &mut self.entries[index as usize];
        entry.0 = entry.0.wrapping_add(1);
        entry.1 = Some(value);
        self.len += 1;
        Some(Slot {
            index,
            generation: entry.0,
        })
    }

    pub fn get(&self, slot: Slot) -> Option<&T> {
        match self.entries.get(slot.index as usize) {
            Some((generation, Some(value))) if *generation == slot.generation => Some(value),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, slot: Slot) -> Option<&mut T> {
        match self.entries.get_mut(slot.index as usize) {
            Some((generation, Some(value))) if *generation == slot.generation => Some(value),
            _ => None,
        }
    }

    pub fn remove(&mut self, slot: Slot) -> Option<T> {
        let entry = self.entries.get_mut(slot.index as usize)?;
        if entry.0 != slot.generation {
            return None;
        }
        let value = entry.1.take()?;
        self.free.push(slot.index);
        self.len -= 1;
        Some(value)
    }

    /// Live entries with their slots (the rare path: ICMP errors).
    pub fn iter(&self) -> impl Iterator<Item = (Slot, &T)> {
        self.entries.iter().enumerate().filter_map(|(i, (g, v))| {
            v.as_ref().map(|v| {
                (
                    Slot {
                        index: i as u32,
                        generation: *g,
                    },
                    v,
                )
            })
        })
    }
}

/// The keys are already keyed hashes: hashing them again buys nothing.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub type KeyMap = HashMap<u64, Slot, BuildHasherDefault<KeyHasher>>;

/// Every transaction of one shard and their timers.
pub struct Transactions {
    pub config: TxnConfig,
    pub servers: Slab<ServerTxn>,
    pub clients: Slab<ClientTxn>,
    pub server_keys: KeyMap,
    pub client_keys: KeyMap,
    pub wheel: Wheel<Timer>,
    /// Mixed into every key, so that a sender cannot aim requests at one
    /// hash bucket.
    pub seed: [u8; 8],
    /// Counts client transactions made, so each branch is new.
    pub next_id: u64,
}

impl std::fmt::Debug for Transactions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transactions")
            .field("servers", &self.servers.len())
            .field("clients", &self.clients.len())
            .field("timers", &self.wheel.len())
            .finish()
    }
}

/// The grain wait-state timers are rounded up to.
pub const LINGER_GRAIN_MS: u64 = 1_000;

/// Client transactions per server transaction, on average over a full
/// table: a try, now and then a CANCEL or a failover's second try.
const CLIENTS_PER_SERVER: usize = 2;

impl Transactions {
    pub fn new(config: TxnConfig, now: Millis, seed: u64) -> Transactions {
        let servers = config.max_transactions.max(1);
        let clients = servers.saturating_mul(CLIENTS_PER_SERVER);
        let timers = servers
            .saturating_mul(SERVER_TIMERS)
            .saturating_add(clients.saturating_mul(CLIENT_TIMERS));
        Transactions {
            config,
            servers: Slab::with_capacity(servers),
            clients: Slab::with_capacity(clients),
            server_keys: KeyMap::with_capacity_and_hasher(servers, Default::default()),
            client_keys: KeyMap::with_capacity_and_hasher(clients, Default::default()),
            wheel: Wheel::with_capacity(now, timers),
            seed: seed.to_le_bytes(),
            next_id: seed.rotate_left(17),
        }
    }

    /// Arms `timer` at `now + after_ms`; `None` only if the wheel is full,
    /// which its sizing rules out.
    pub fn arm(&mut self, now: Millis, after_ms: u32, timer: Timer) -> Option<TimerId> {
        self.wheel
            .insert(deadline(now, after_ms, false), timer)
            .ok()
    }

    /// Arms a wait-state timer (D, I, J, K, L, M) on the linger grain.
    pub fn arm_linger(&mut self, now: Millis, after_ms: u32, timer: Timer) -> Option<TimerId> {
        self.wheel.insert(deadline(now, after_ms, true), timer).ok()
    }

    /// Arms timer `kind` of client transaction `slot` after `after_ms`
    /// (a wait state's on the linger grain), cancelling the one it
    /// replaces in its entry.
    #[inline]
    pub fn arm_client(&mut self, now: Millis, slot: Slot, kind: ClientTimer, after_ms: u32) {
        let Some(client) = self.clients.get_mut(slot) else {
            return;
        };
        let at = deadline(now, after_ms, kind == ClientTimer::Linger);
        arm_in(&mut self.wheel, &mut client.timers, kind, at, kind.of(slot));
    }

    /// The same for a server transaction.
    #[inline]
    pub fn arm_server(&mut self, now: Millis, slot: Slot, kind: ServerTimer, after_ms: u32) {
        let Some(server) = self.servers.get_mut(slot) else {
            return;
        };
        let at = deadline(now, after_ms, kind == ServerTimer::Linger);
        arm_in(&mut self.wheel, &mut server.timers, kind, at, kind.of(slot));
    }

    /// Puts a client transaction in its wait state (D, K or M): every
    /// timer it held stops, and the one that lets it go is armed.
    pub fn linger_client(&mut self, now: Millis, slot: Slot, after_ms: u32) {
        let Some(client) = self.clients.get_mut(slot) else {
            return;
        };
        for id in client.timers.take_all().into_iter().flatten() {
            self.wheel.cancel(id);
        }
        let kind = ClientTimer::Linger;
        let at = deadline(now, after_ms, true);
        arm_in(&mut self.wheel, &mut client.timers, kind, at, kind.of(slot));
    }

    /// The same for a server transaction (Timer I).
    pub fn linger_server(&mut self, now: Millis, slot: Slot, after_ms: u32) {
        let Some(server) = self.servers.get_mut(slot) else {
            return;
        };
        for id in server.timers.take_all().into_iter().flatten() {
            self.wheel.cancel(id);
        }
        let kind = ServerTimer::Linger;
        let at = deadline(now, after_ms, true);
        arm_in(&mut self.wheel, &mut server.timers, kind, at, kind.of(slot));
    }

    pub fn disarm(&mut self, ids: &mut [Option<TimerId>]) {
        for id in ids.iter_mut() {
            if let Some(id) = id.take() {
                self.wheel.cancel(id);
            }
        }
    }

    /// Removes a server transaction, its key and its timers.
    pub fn remove_server(&mut self, slot: Slot) -> Option<ServerTxn> {
        let mut server = self.servers.remove(slot)?;
        if self.server_keys.get(&server.key) == Some(&slot) {
            self.server_keys.remove(&server.key);
        }
        self.disarm(&mut server.timers.take_all());
        Some(server)
    }

    /// Removes a client transaction, its key and its timers.
    pub fn remove_client(&mut self, slot: Slot) -> Option<ClientTxn> {
        let mut client = self.clients.remove(slot)?;
        if self.client_keys.get(&client.key) == Some(&slot) {
            self.client_keys.remove(&client.key);
        }
        self.disarm(&mut client.timers.take_all());
        Some(client)
    }
}

/// When a timer armed at `now` for `after_ms` falls due. A wait-state
/// timer (`linger`: D, I, J, K, L, M) only lets go of a transaction, so it
/// may fire late: its deadline is rounded up to the next
/// `LINGER_GRAIN_MS`, so that at high call rates thousands of them end in
/// one loop turn a second instead of waking the loop every millisecond.
#[inline]
fn deadline(now: Millis, after_ms: u32, linger: bool) -> Millis {
    let deadline = now.saturating_add(u64::from(after_ms));
    match linger {
        true => deadline
            .div_ceil(LINGER_GRAIN_MS)
            .saturating_mul(LINGER_GRAIN_MS),
        false => deadline,
    }
}

/// Cancels what `table` held for `kind` and arms `timer` in its place.
#[inline]
fn arm_in<K: TimerKind, const N: usize>(
    wheel: &mut Wheel<Timer>,
    table: &mut TimerTable<K, N>,
    kind: K,
    at: Millis,
    timer: Timer,
) {
    if let Some(old) = table.take(kind) {
        wheel.cancel(old);
    }
    table.replace(kind, wheel.insert(at, timer).ok());
}

#[cfg(test)]
mod slab_tests {
    use super::*;

    #[test]
    fn slab_reuses_slots_with_new_generations() {
        let mut slab = Slab::with_capacity(2);
        let a = slab.insert("a").unwrap();
        let b = slab.insert("b").unwrap();
        assert!(slab.insert("c").is_none(), "capacity is the bound");
        assert_eq!(slab.remove(a), Some("a"));
        assert_eq!(slab.remove(a), None, "a stale slot removes nothing");
        let c = slab.insert("c").unwrap();
        assert_eq!(c.index, a.index);
        assert_ne!(c.generation, a.generation);
        assert_eq!(slab.get(a), None);
        assert_eq!(slab.get(c), Some(&"c"));
        assert_eq!(slab.get(b), Some(&"b"));
        assert_eq!(slab.iter().count(), 2);
    }
}

#[cfg(test)]
mod table_tests {
    use super::*;

    fn client(server: Slot) -> ClientTxn {
        ClientTxn {
            key: 11,
            server,
            invite: true,
            is_cancel: false,
            state: ClientState::Calling,
            to: Peer::udp("192.0.2.40:5060".parse().unwrap()),
            backend: None,
            request: Vec::new(),
            ack: Vec::new(),
            branch_key: BranchKey::new(b"000000000000000b", b"0000000000000000"),
            provisional: false,
            cancel: CancelState::None,
            abandoned: false,
            interval_ms: 500,
            timers: ClientTimers::default(),
            sent_ms: 0,
        }
    }

    /// Every timer due by `now`, in the order the wheel gives them.
    fn due(txns: &mut Transactions, now: Millis) -> Vec<(Millis, Timer)> {
        std::iter::from_fn(|| txns.wheel.expire(now).map(|(_, timer)| (now, timer))).collect()
    }

    #[test]
    fn arming_a_kind_replaces_its_entry_and_lingering_stops_the_rest() {
        let config = TxnConfig {
            max_transactions: 4,
            ..TxnConfig::default()
        };
        let mut txns = Transactions::new(config, 0, 1);
        let server = Slot {
            index: 0,
            generation: 1,
        };
        let slot = txns.clients.insert(client(server)).unwrap();
        txns.arm_client(10, slot, ClientTimer::Retransmit, 500);
        txns.arm_client(10, slot, ClientTimer::Timeout, 32_000);
        txns.arm_client(10, slot, ClientTimer::Try, 2_000);
        assert_eq!(txns.wheel.len(), 3);
        txns.arm_client(10, slot, ClientTimer::C, 180_000);
        assert_eq!(
            txns.wheel.len(),
            3,
            "Timer C took the per-try timer's entry"
        );
        assert_eq!(
            due(&mut txns, 2_010),
            [(2_010, Timer::ClientRetransmit(slot))]
        );
        txns.linger_client(2_010, slot, 32_000);
        assert_eq!(txns.wheel.len(), 1, "only the wait is left");
        assert_eq!(due(&mut txns, 34_999), [], "34 010 rounds up to the grain");
        assert_eq!(
            due(&mut txns, 35_000),
            [(35_000, Timer::ClientLinger(slot))]
        );
        txns.linger_client(35_000, slot, 5_000);
        assert!(txns.remove_client(slot).is_some());
        assert_eq!(txns.wheel.len(), 0, "removal stops its timers");
        txns.arm_client(0, slot, ClientTimer::Retransmit, 500);
        assert_eq!(txns.wheel.len(), 0, "a stale slot arms nothing");
    }
}
