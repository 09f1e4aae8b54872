//! Transaction-layer benches: the timer wheel, and the transaction table
//! it drives.
//!
//! Timer wheel:
//!
//! - `insert_cancel_100k`: one shard holding 100,000 armed timers (Timer B,
//!   C and F spread over 180 s); each iteration cancels the oldest and arms
//!   a new one, as when transactions complete and new ones start. The
//!   `_scattered` variant cancels timers in a scrambled order instead, so
//!   each cancel touches a cold part of the 100,000-entry slab.
//! - `insert_expire`: Timer E/F: arm a timer 500 ms out, move time 1 ms on
//!   and drain what is due; at steady state one timer fires per iteration,
//!   after one cascade from level 1 (two when it crossed a 4,096 ms block).
//! - `next_deadline`: what the I/O loop asks every turn, with 100,000 armed
//!   timers and with one timer an hour away (the most levels to look at).
//!
//! Transaction table (`txn::Transactions`), one element = one server
//! transaction with its client transaction, holding what the proxy core
//! stores for a forwarded INVITE (the request as received, the 100 Trying,
//! the request as forwarded: three heap copies, as `proxy` makes them):
//!
//! - `txn/insert_remove/{10k,100k}`: a table holding that many live pairs;
//!   each iteration opens a pair as `proxy` does for a new INVITE (key,
//!   slab entries, key maps, Timers A, B and the per-try timer) and removes
//!   the oldest pair with its keys and timers: steady-state traffic. The
//!   clock moves 1 ms per 100 pairs and never runs (firing is
//!   `timer_expiry`'s).
//! - `txn/lookup_hit/{server,client}` and `txn/lookup_miss/{...}`, 100,000
//!   live pairs: RFC 3261 §17.2.3 and §17.1.3 matching after the scanner.
//!   `server`: a request's top-Via branch, sent-by and method hashed into
//!   the key, the key map, the slab entry. `client`: a response's top-Via
//!   branch, checked to be ours, its 16 hex digits of transaction id read,
//!   the key map, the slab entry. The key function is private to `proxy`
//!   (`Core::server_key`, `our_branch_id`): the bench restates it below.
//!   The probes are spread over the table, so most lookups miss the cache
//!   as a busy shard's do. A miss is what every new request pays first.
//! - `txn/timer_expiry/1k_of_132k`: 100,000 live pairs (without timers)
//!   and, as at 1,000 calls per second, one batch of 1,000 INVITE pairs
//!   answered 2xx every second, each lingering 32 s (client Timer M,
//!   server Timer L, 64·T1, rounded up to the second as `arm_linger`
//!   does; D, J and K take the same path). Each iteration moves the clock
//!   1 s on, completes a batch (untimed) and reaps the one that completed
//!   32 s ago, cold by now, as `Proxy::on_timers` does: the wheel's
//!   cascades, `remove_client`, `remove_server`. One element = one pair
//!   reaped.

use std::collections::VecDeque;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sipshard::balance::{Algorithm, Routing, RoutingSpec};
use sipshard::sip::{
    write_response, Editor, Forward, Limits, LocalAddress, LocalResponse, Scanner, Transport,
    MAGIC_COOKIE,
};
use sipshard::txn::wheel::{TimerId, Wheel};
use sipshard::txn::{
    BranchKey, CancelState, ClientState, ClientTimer, ClientTimers, ClientTxn, Millis, ServerState,
    ServerTimers, ServerTxn, Slot, Target, Timer, Transactions, TxnConfig, LINGER_GRAIN_MS,
};

/// The binary's allocator: the table's copies are allocated as they are
/// in production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const LIVE: usize = 100_000;
const TIMER_C_MS: u64 = 180_000;

/// Deadlines spread over Timer C without a random number crate.
fn spread_ms(i: u64) -> u64 {
    1 + i.wrapping_mul(2_654_435_761) % TIMER_C_MS
}

fn full_wheel() -> (Wheel<u64>, Vec<TimerId>) {
    let mut wheel = Wheel::with_capacity(0, LIVE);
    let ids = (0..LIVE as u64)
        .map(|i| wheel.insert(spread_ms(i), i).unwrap())
        .collect();
    (wheel, ids)
}

fn insert_cancel(c: &mut Criterion) {
    let (mut wheel, mut ids) = full_wheel();
    let mut oldest = 0;
    let mut i = LIVE as u64;
    c.bench_function("wheel/insert_cancel_100k", |b| {
        b.iter(|| {
            black_box(wheel.cancel(ids[oldest]));
            ids[oldest] = wheel.insert(spread_ms(i), i).unwrap();
            oldest = (oldest + 1) % LIVE;
            i += 1;
        })
    });
}

fn insert_cancel_scattered(c: &mut Criterion) {
    let (mut wheel, mut ids) = full_wheel();
    let mut i = LIVE as u64;
    c.bench_function("wheel/insert_cancel_100k_scattered", |b| {
        b.iter(|| {
            let victim = (i.wrapping_mul(2_654_435_761) % LIVE as u64) as usize;
            black_box(wheel.cancel(ids[victim]));
            ids[victim] = wheel.insert(spread_ms(i), i).unwrap();
            i += 1;
        })
    });
}

fn insert_expire(c: &mut Criterion) {
    let mut wheel = Wheel::with_capacity(0, 1_024);
    let mut now = 0;
    c.bench_function("wheel/insert_expire", |b| {
        b.iter(|| {
            now += 1;
            wheel.insert(now + 500, now).unwrap();
            while let Some(fired) = wheel.expire(now) {
                black_box(fired);
            }
        })
    });
}

fn next_deadline(c: &mut Criterion) {
    let (wheel, _) = full_wheel();
    c.bench_function("wheel/next_deadline_100k", |b| {
        b.iter(|| black_box(&wheel).next_deadline())
    });
    let mut wheel = Wheel::with_capacity(0, 1);
    wheel.insert(3_600_000, 0).unwrap();
    c.bench_function("wheel/next_deadline_one_far", |b| {
        b.iter(|| black_box(&wheel).next_deadline())
    });
}

// ---- the transaction table ----

const INVITE: &[u8] = include_bytes!("messages/invite.sip");
const PROXY_HOST: &str = "203.0.113.5";
const PROXY_PORT: u16 = 5060;
/// Caller branches are this and 16 hex digits of the pair's number.
const CALLER_BRANCH: &[u8] = b"z9hG4bK-524287-1---";
const CALLER_HOST: &[u8] = b"198.51.100.20";
const CALLER_PORT: u16 = 5060;
const SEED: u64 = 0x5eed_5eed_5eed_5eed;
/// Lookup probes, spread over the table and cycled; small enough to stay
/// in cache, so that the table's misses are what is measured.
const PROBES: usize = 4_096;
/// Pairs reaped per `timer_expiry` iteration.
const BATCH: usize = 1_000;

/// FNV-1a over parts, each followed by a zero byte: `sip::lex::fnv1a`,
/// which is not public.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.iter().chain(b"\0") {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

fn hex16(n: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, digit) in out.iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

/// The §17.2.3 key `proxy` gives a request with the magic cookie
/// (`Core::server_key`): the seed, branch, sent-by host and port, method.
fn server_key(seed: &[u8; 8], branch: &[u8], host: &[u8], port: u16, method: &[u8]) -> u64 {
    fnv1a(&[seed, branch, host, &port.to_be_bytes(), method])
}

/// The transaction id in our branch on a response's top Via
/// (`proxy::our_branch_id`): ours only if the Via names us.
fn our_branch_id(local: &LocalAddress, host: &[u8], port: u16, branch: &[u8]) -> Option<u64> {
    if !local.is_local(host, port) {
        return None;
    }
    let key = branch.strip_prefix(MAGIC_COOKIE)?;
    if key.len() != 33 || key[16] != b'.' {
        return None;
    }
    key[..16].iter().try_fold(0u64, |n, &b| {
        let digit = (b as char).to_digit(16)?;
        Some(n << 4 | u64::from(digit))
    })
}

fn caller_branch(n: u64) -> [u8; 35] {
    let mut branch = [0u8; 35];
    branch[..19].copy_from_slice(CALLER_BRANCH);
    branch[19..].copy_from_slice(&hex16(n));
    branch
}

/// A shard's transaction table and the pairs alive in it, oldest first.
struct Table {
    txns: Transactions,
    live: VecDeque<(Slot, Slot)>,
    routing: Arc<Routing>,
    caller: SocketAddr,
    backend: SocketAddr,
    /// What the proxy core keeps of a real INVITE: as received, its 100
    /// Trying, as forwarded.
    request: Vec<u8>,
    trying: Vec<u8>,
    forwarded: Vec<u8>,
    /// The next pair's number (its caller branch).
    next: u64,
    now: Millis,
}

impl Table {
    fn new(capacity: usize) -> Table {
        let caller: SocketAddr = "198.51.100.20:5060".parse().unwrap();
        let backend: SocketAddr = "192.0.2.40:5060".parse().unwrap();
        let routing = Routing::build(
            &RoutingSpec::one_set(Algorithm::RoundRobin, &[backend]),
            None,
        )
        .unwrap();
        let mut scanner = Scanner::new(Limits::default());
        let message = scanner.scan(INVITE).unwrap();
        let mut out = vec![0u8; 65_536];
        let len = write_response(&message, caller, &LocalResponse::TRYING, &mut out).unwrap();
        let trying = out[..len].to_vec();
        let editor = Editor::new(LocalAddress::new(PROXY_HOST, PROXY_PORT));
        let forward = Forward {
            source: caller,
            branch_key: b"0123456789abcdef.0123456789abcdef",
            record_route: true,
            inbound: Transport::Udp,
            outbound: Transport::Udp,
        };
        let len = editor
            .forward_request(&message, &forward, &mut out)
            .unwrap();
        let forwarded = out[..len].to_vec();
        let config = TxnConfig {
            max_transactions: capacity,
            ..TxnConfig::default()
        };
        Table {
            txns: Transactions::new(config, 0, SEED),
            live: VecDeque::with_capacity(capacity),
            routing: Arc::new(routing),
            caller,
            backend,
            request: INVITE.to_vec(),
            trying,
            forwarded,
            next: 0,
            now: 0,
        }
    }

    /// Opens what `proxy` opens for a new INVITE: a server transaction
    /// under its §17.2.3 key, a client transaction under its new id, the
    /// client's Timers A and B and the per-try timer.
    fn open(&mut self) -> (Slot, Slot) {
        let n = self.next;
        self.next += 1;
        let now = self.now;
        let txns = &mut self.txns;
        let timers = txns.config.timers;
        let key = server_key(
            &txns.seed,
            &caller_branch(n),
            CALLER_HOST,
            CALLER_PORT,
            b"INVITE",
        );
        let server = ServerTxn {
            key,
            invite: true,
            state: ServerState::Proceeding,
            request: self.request.clone(),
            source: self.caller.into(),
            reply_to: self.caller.into(),
            response: self.trying.clone(),
            target: Target::Pool {
                routing: self.routing.clone(),
                set: self.routing.default_set(),
                tried: 1,
            },
            sticky: false,
            client: None,
            tries: 1,
            cancelled: false,
            best: None,
            interval_ms: timers.t1_ms,
            timers: ServerTimers::default(),
            started_ms: now,
        };
        let server_slot = txns.servers.insert(server).expect("table sized for it");
        txns.server_keys.insert(key, server_slot);
        txns.next_id = txns.next_id.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let id = txns.next_id;
        let branch_key = BranchKey::new(&hex16(id), &hex16(key));
        let client = ClientTxn {
            key: id,
            server: server_slot,
            invite: true,
            is_cancel: false,
            state: ClientState::Calling,
            to: self.backend.into(),
            backend: Some(0),
            request: self.forwarded.clone(),
            ack: Vec::new(),
            branch_key,
            provisional: false,
            cancel: CancelState::None,
            abandoned: false,
            interval_ms: timers.t1_ms,
            timers: ClientTimers::default(),
            sent_ms: now,
        };
        let client_slot = txns.clients.insert(client).expect("table sized for it");
        txns.client_keys.insert(id, client_slot);
        let a = txns.arm(now, timers.t1_ms, Timer::ClientRetransmit(client_slot));
        let b = txns.arm(now, timers.timeout_ms(), Timer::ClientTimeout(client_slot));
        let t = txns.arm(now, timers.try_ms, Timer::ClientTry(client_slot));
        let client = txns.clients.get_mut(client_slot).unwrap();
        client.timers.replace(ClientTimer::Retransmit, a);
        client.timers.replace(ClientTimer::Timeout, b);
        client.timers.replace(ClientTimer::Try, t);
        txns.servers.get_mut(server_slot).unwrap().client = Some(client_slot);
        self.live.push_back((server_slot, client_slot));
        (server_slot, client_slot)
    }

    fn remove_oldest(&mut self) {
        let (server, client) = self.live.pop_front().expect("a live pair");
        black_box(self.txns.remove_client(client));
        black_box(self.txns.remove_server(server));
    }

    fn filled(live: usize, capacity: usize) -> Table {
        let mut table = Table::new(capacity);
        for _ in 0..live {
            table.open();
        }
        table
    }
}

fn insert_remove(c: &mut Criterion) {
    let mut group = c.benchmark_group("txn/insert_remove");
    group.throughput(Throughput::Elements(1));
    for (name, live) in [("10k", 10_000), ("100k", LIVE)] {
        let mut table = Table::filled(live, live + 1);
        group.bench_function(name, |b| {
            b.iter(|| {
                table.now = table.next / 100;
                table.open();
                table.remove_oldest();
            })
        });
        assert_eq!(table.txns.servers.len(), live);
    }
    group.finish();
}

/// Numbers of `count` live pairs (or, `live == false`, never-opened
/// ones), spread over the table.
fn probe_numbers(table: &Table, count: usize, live: bool) -> Vec<u64> {
    let first = table.next - table.live.len() as u64;
    let span = table.live.len() as u64;
    (0..count as u64)
        .map(|i| {
            let offset = i.wrapping_mul(2_654_435_761) % span;
            match live {
                true => first + offset,
                false => table.next + span + offset,
            }
        })
        .collect()
}

/// §17.2.3: the server transaction of a request with the magic cookie,
/// from its top Via's branch and sent-by and its method.
fn match_request(txns: &Transactions, branch: &[u8]) -> Option<ServerState> {
    let key = server_key(&txns.seed, branch, CALLER_HOST, CALLER_PORT, b"INVITE");
    let slot = txns.server_keys.get(&key)?;
    txns.servers.get(*slot).map(|s| s.state)
}

/// §17.1.3: the client transaction of a response, from the branch on its
/// top Via (ours: the transaction id is in it).
fn match_response(txns: &Transactions, local: &LocalAddress, branch: &[u8]) -> Option<ClientState> {
    let id = our_branch_id(local, PROXY_HOST.as_bytes(), PROXY_PORT, branch)?;
    let slot = txns.client_keys.get(&id)?;
    txns.clients.get(*slot).map(|c| c.state)
}

fn lookup(c: &mut Criterion) {
    let table = Table::filled(LIVE, LIVE);
    let local = LocalAddress::new(PROXY_HOST, PROXY_PORT);
    let first = table.next - table.live.len() as u64;
    // A request's top-Via branch, as the scanner hands it over.
    let requests = |live| -> Vec<[u8; 35]> {
        probe_numbers(&table, PROBES, live)
            .into_iter()
            .map(caller_branch)
            .collect()
    };
    // A response's top-Via branch: the magic cookie and our branch key.
    let responses = |live| -> Vec<Vec<u8>> {
        probe_numbers(&table, PROBES, live)
            .into_iter()
            .map(|n| {
                let key = match table.live.get((n - first) as usize) {
                    Some(&(_, client)) => *table
                        .txns
                        .clients
                        .get(client)
                        .unwrap()
                        .branch_key
                        .as_bytes(),
                    None => {
                        let mut key = [b'.'; 33];
                        key[..16].copy_from_slice(&hex16(n.wrapping_mul(0x9e37_79b9)));
                        key
                    }
                };
                [MAGIC_COOKIE, &key[..]].concat()
            })
            .collect()
    };
    let txns = &table.txns;
    for (group_name, live) in [("txn/lookup_hit", true), ("txn/lookup_miss", false)] {
        let (requests, responses) = (requests(live), responses(live));
        // Every probe finds what it should.
        let found = requests
            .iter()
            .filter(|b| match_request(txns, &b[..]).is_some());
        assert_eq!(found.count(), if live { PROBES } else { 0 });
        let found = responses
            .iter()
            .filter(|b| match_response(txns, &local, b).is_some());
        assert_eq!(found.count(), if live { PROBES } else { 0 });

        let mut group = c.benchmark_group(group_name);
        group.throughput(Throughput::Elements(1));
        let mut i = 0;
        group.bench_function("server", |b| {
            b.iter(|| {
                i = (i + 1) % PROBES;
                match_request(txns, black_box(&requests[i][..]))
            })
        });
        group.bench_function("client", |b| {
            b.iter(|| {
                i = (i + 1) % PROBES;
                match_response(txns, &local, black_box(&responses[i]))
            })
        });
        group.finish();
    }
}

/// Completes `BATCH` new INVITE pairs at the table's time as a 2xx does,
/// keeping what `proxy` still holds then (no request or response copies):
/// the client transaction waits out Timer M, the server Timer L.
fn complete_batch(table: &mut Table) {
    let linger_ms = table.txns.config.timers.timeout_ms();
    let now = table.now;
    for _ in 0..BATCH {
        let (server, client) = table.open();
        table.live.pop_back();
        let txns = &mut table.txns;
        let entry = txns.clients.get_mut(client).unwrap();
        entry.state = ClientState::Accepted;
        entry.request = Vec::new();
        txns.linger_client(now, client, linger_ms);
        let entry = txns.servers.get_mut(server).unwrap();
        entry.state = ServerState::Accepted;
        entry.request = Vec::new();
        entry.response = Vec::new();
        txns.linger_server(now, server, linger_ms);
    }
}

/// Runs what is due at the table's time as `Proxy::on_timers` does for
/// wait-state timers; returns how many fired.
fn reap(table: &mut Table) -> usize {
    let mut fired = 0;
    while let Some((_, timer)) = table.txns.wheel.expire(table.now) {
        match timer {
            Timer::ClientLinger(slot) => {
                black_box(table.txns.remove_client(slot));
            }
            Timer::ServerLinger(slot) => {
                black_box(table.txns.remove_server(slot));
            }
            other => panic!("{other:?} fired"),
        }
        fired += 1;
    }
    fired
}

fn timer_expiry(c: &mut Criterion) {
    let linger_s = TxnConfig::default().timers.timeout_ms() as usize / 1_000;
    let mut table = Table::filled(LIVE, LIVE + (linger_s + 1) * BATCH);
    // The clock runs for hours of simulated time here: the live pairs'
    // own timers would fire, so they hold none.
    for &(_, client) in &table.live {
        let mut ids = table
            .txns
            .clients
            .get_mut(client)
            .unwrap()
            .timers
            .take_all();
        table.txns.disarm(&mut ids);
    }
    assert_eq!(table.txns.wheel.len(), 0);
    table.now = 0;
    // One batch completes every second, and lingers 32 s.
    for _ in 0..linger_s {
        table.now += LINGER_GRAIN_MS;
        complete_batch(&mut table);
        assert_eq!(reap(&mut table), 0);
    }
    let mut group = c.benchmark_group("txn");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(BenchmarkId::new("timer_expiry", "1k_of_132k"), |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                table.now += LINGER_GRAIN_MS;
                complete_batch(&mut table);
                let start = Instant::now();
                let fired = reap(&mut table);
                took += start.elapsed();
                assert_eq!(fired, 2 * BATCH);
            }
            took
        })
    });
    group.finish();
    assert_eq!(table.txns.servers.len(), LIVE + linger_s * BATCH);
}

criterion_group!(
    benches,
    insert_cancel,
    insert_cancel_scattered,
    insert_expire,
    next_deadline,
    insert_remove,
    lookup,
    timer_expiry
);
criterion_main!(benches);
