//! What each shard publishes for the control thread, and the Prometheus
//! text the admin API serves from it.
//!
//! A shard counts in plain integers on its own thread and, at the end of a
//! loop turn at most every 5 ms (and at least every 250 ms, when idle),
//! stores them into its [`ShardStats`] with relaxed atomic stores: one
//! writer per value, so no read-modify-write and no lock on the packet
//! path. The control thread reads them whenever it is scraped; a value may
//! be a few milliseconds old, never torn.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;

use crate::balance::{Routing, State};
use crate::guard::GuardCounters;
use crate::proxy::Limit;
use crate::sip::Method;

/// Prometheus metric types used here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One value a shard publishes. Stats of one family are next to each
/// other in [`Stat::ALL`], so that the family is written once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    Received,
    Sent,
    HandedOff,
    Turns,
    TimerTurns,
    /// Nanoseconds of work (from wake-up to the end of the turn).
    BusyNs,
    RequestsForwarded,
    ResponsesForwarded,
    Replies,
    RequestsGenerated,
    TransactionsStarted,
    RetransmissionsAbsorbed,
    RetransmissionsSent,
    Cancels,
    Failovers,
    Timeouts,
    TryTimeouts,
    TimerC,
    AckTimeouts,
    Unreachable,
    OverloadRejected,
    UnavailableRejected,
    LoopsDetected,
    /// One per [`crate::proxy::Limit`], in its order.
    LimitDatagramBytes,
    LimitHeaders,
    LimitHeaderLineBytes,
    LimitViaValues,
    LimitTransactions,
    LimitUdpPayload,
    ServerTransactions,
    ClientTransactions,
    Dialogs,
    DroppedHandoffQueueFull,
    DroppedSendFailed,
    DroppedTruncated,
    DroppedMalformed,
    DroppedUnanswerable,
    DroppedResponseNotOurs,
    DroppedResponseForUs,
    DroppedUnresolved,
    DroppedBufferFull,
    DroppedNoBackend,
    Overloaded,
    OverloadEntered,
    ShedRejected,
    ShedDropped,
    ShedInKernel,
    LocalAcksAbsorbed,
}

/// A stat's family name, help, type and its one distinguishing label.
struct Meta {
    family: &'static str,
    help: &'static str,
    kind: Kind,
    label: Option<(&'static str, &'static str)>,
}

impl Stat {
    pub const ALL: [Stat; 48] = [
        Stat::Received,
        Stat::Sent,
        Stat::HandedOff,
        Stat::Turns,
        Stat::TimerTurns,
        Stat::BusyNs,
        Stat::RequestsForwarded,
        Stat::ResponsesForwarded,
        Stat::Replies,
        Stat::RequestsGenerated,
        Stat::TransactionsStarted,
        Stat::RetransmissionsAbsorbed,
        Stat::RetransmissionsSent,
        Stat::Cancels,
        Stat::Failovers,
        Stat::Timeouts,
        Stat::TryTimeouts,
        Stat::TimerC,
        Stat::AckTimeouts,
        Stat::Unreachable,
        Stat::OverloadRejected,
        Stat::UnavailableRejected,
        Stat::LoopsDetected,
        Stat::LimitDatagramBytes,
        Stat::LimitHeaders,
        Stat::LimitHeaderLineBytes,
        Stat::LimitViaValues,
        Stat::LimitTransactions,
        Stat::LimitUdpPayload,
        Stat::ServerTransactions,
        Stat::ClientTransactions,
        Stat::Dialogs,
        Stat::DroppedHandoffQueueFull,
        Stat::DroppedSendFailed,
        Stat::DroppedTruncated,
        Stat::DroppedMalformed,
        Stat::DroppedUnanswerable,
        Stat::DroppedResponseNotOurs,
        Stat::DroppedResponseForUs,
        Stat::DroppedUnresolved,
        Stat::DroppedBufferFull,
        Stat::DroppedNoBackend,
        Stat::Overloaded,
        Stat::OverloadEntered,
        Stat::ShedRejected,
        Stat::ShedDropped,
        Stat::ShedInKernel,
        Stat::LocalAcksAbsorbed,
    ];

    fn meta(self) -> Meta {
        use Kind::{Counter, Gauge};
        let (family, help, kind, label) = match self {
            Stat::Received => ("datagrams_received_total", "Datagrams received.", Counter, None),
            Stat::Sent => ("datagrams_sent_total", "Datagrams sent.", Counter, None),
            Stat::HandedOff => (
                "handoffs_total",
                "Datagrams handed to the shard that owns their Call-ID.",
                Counter,
                None,
            ),
            Stat::Turns => (
                "loop_iterations_total",
                "Turns of the shard's event loop (each one a wake-up).",
                Counter,
                None,
            ),
            Stat::TimerTurns => (
                "timer_iterations_total",
                "Loop turns that ran due transaction timers.",
                Counter,
                None,
            ),
            Stat::BusyNs => (
                "busy_seconds_total",
                "Time the shard spent working, from wake-up to the end of each turn.",
                Counter,
                None,
            ),
            Stat::RequestsForwarded => ("requests_forwarded_total", "Requests forwarded.", Counter, None),
            Stat::ResponsesForwarded => ("responses_forwarded_total", "Responses forwarded.", Counter, None),
            Stat::Replies => (
                "local_replies_total",
                "Requests the gateway answered itself instead of forwarding them (rejections; 200 to CANCEL).",
                Counter,
                None,
            ),
            Stat::RequestsGenerated => (
                "requests_generated_total",
                "Requests the gateway wrote itself (CANCEL, ACK for a non-2xx).",
                Counter,
                None,
            ),
            Stat::TransactionsStarted => ("transactions_started_total", "Server transactions started.", Counter, None),
            Stat::RetransmissionsAbsorbed => (
                "retransmissions_absorbed_total",
                "Retransmitted requests absorbed by their server transaction.",
                Counter,
                None,
            ),
            Stat::RetransmissionsSent => (
                "retransmissions_sent_total",
                "Retransmissions sent by transaction timers (A, E, G).",
                Counter,
                None,
            ),
            Stat::Cancels => ("cancels_total", "CANCELs received for a pending INVITE.", Counter, None),
            Stat::Failovers => ("failovers_total", "Requests moved to the next backend.", Counter, None),
            Stat::Timeouts => ("transaction_timeouts_total", "Client transactions ended by Timer B or F.", Counter, None),
            Stat::TryTimeouts => (
                "try_timeouts_total",
                "INVITE tries given up by the per-try timer before any response.",
                Counter,
                None,
            ),
            Stat::TimerC => ("timer_c_total", "Proxied INVITEs ended by Timer C.", Counter, None),
            Stat::AckTimeouts => ("ack_timeouts_total", "Non-2xx finals never ACKed (Timer H).", Counter, None),
            Stat::Unreachable => (
                "icmp_unreachable_total",
                "Tries failed by an ICMP unreachable error.",
                Counter,
                None,
            ),
            Stat::OverloadRejected => (
                "overload_rejected_total",
                "New requests answered 503 because the transaction table was full.",
                Counter,
                None,
            ),
            Stat::UnavailableRejected => (
                "unavailable_rejected_total",
                "New requests answered 503 because no member of their set could take them.",
                Counter,
                None,
            ),
            Stat::Overloaded => (
                "overloaded",
                "1 while the shard sheds new INVITEs and REGISTERs (busy, table or queue past its high mark).",
                Gauge,
                None,
            ),
            Stat::OverloadEntered => ("overload_entered_total", "Times the shard became overloaded.", Counter, None),
            Stat::ShedRejected => (
                "shed_total",
                "New INVITEs and REGISTERs turned away while overloaded.",
                Counter,
                Some(("action", "503")),
            ),
            Stat::ShedDropped => (
                "shed_total",
                "New INVITEs and REGISTERs turned away while overloaded.",
                Counter,
                Some(("action", "dropped")),
            ),
            Stat::ShedInKernel => (
                "shed_total",
                "New INVITEs and REGISTERs turned away while overloaded.",
                Counter,
                Some(("action", "kernel")),
            ),
            Stat::LocalAcksAbsorbed => (
                "local_acks_absorbed_total",
                "ACKs for the gateway's own final answers (503, 483, ...), absorbed rather than forwarded.",
                Counter,
                None,
            ),
            Stat::LoopsDetected => ("loops_detected_total", "Requests answered 482 (Loop Detected).", Counter, None),
            Stat::LimitDatagramBytes => limit(Limit::DatagramBytes),
            Stat::LimitHeaders => limit(Limit::Headers),
            Stat::LimitHeaderLineBytes => limit(Limit::HeaderLineBytes),
            Stat::LimitViaValues => limit(Limit::ViaValues),
            Stat::LimitTransactions => limit(Limit::Transactions),
            Stat::LimitUdpPayload => limit(Limit::UdpPayload),
            Stat::ServerTransactions => (
                "transactions_active",
                "Transactions in the shard's table.",
                Gauge,
                Some(("kind", "server")),
            ),
            Stat::ClientTransactions => (
                "transactions_active",
                "Transactions in the shard's table.",
                Gauge,
                Some(("kind", "client")),
            ),
            Stat::Dialogs => (
                "dialogs_active",
                "Dialogs set up through a pool member and not yet ended by a BYE.",
                Gauge,
                None,
            ),
            Stat::DroppedHandoffQueueFull => drop("handoff_queue_full"),
            Stat::DroppedSendFailed => drop("send_failed"),
            Stat::DroppedTruncated => drop("truncated"),
            Stat::DroppedMalformed => drop("malformed"),
            Stat::DroppedUnanswerable => drop("unanswerable"),
            Stat::DroppedResponseNotOurs => drop("response_not_ours"),
            Stat::DroppedResponseForUs => drop("response_for_us"),
            Stat::DroppedUnresolved => drop("unresolved"),
            Stat::DroppedBufferFull => drop("buffer_full"),
            Stat::DroppedNoBackend => drop("no_backend"),
        };
        Meta {
            family,
            help,
            kind,
            label,
        }
    }
}

fn drop(
    reason: &'static str,
) -> (
    &'static str,
    &'static str,
    Kind,
    Option<(&'static str, &'static str)>,
) {
    (
        "dropped_total",
        "Datagrams dropped, by reason.",
        Kind::Counter,
        Some(("reason", reason)),
    )
}

/// Every limit in one family, so that one query sees a peer hitting any
/// of them.
fn limit(
    limit: Limit,
) -> (
    &'static str,
    &'static str,
    Kind,
    Option<(&'static str, &'static str)>,
) {
    (
        "limit_exceeded_total",
        "Messages or requests past a limit, by limit (the answer each gets is in the README's Limits).",
        Kind::Counter,
        Some(("limit", limit.name())),
    )
}

impl Stat {
    /// The stat that publishes `limit`'s counter.
    pub fn of_limit(limit: Limit) -> Stat {
        match limit {
            Limit::DatagramBytes => Stat::LimitDatagramBytes,
            Limit::Headers => Stat::LimitHeaders,
            Limit::HeaderLineBytes => Stat::LimitHeaderLineBytes,
            Limit::ViaValues => Stat::LimitViaValues,
            Limit::Transactions => Stat::LimitTransactions,
            Limit::UdpPayload => Stat::LimitUdpPayload,
        }
    }
}

/// Status classes 1xx to 6xx.
pub const CLASSES: usize = 6;
const METHODS: usize = Method::ALL.len();

/// The upper bounds of the latency histogram's buckets, in seconds.
const LATENCY_BUCKETS_S: [f64; 19] = [
    10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// What one datagram is, for the by-method and by-class counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniffed {
    Request(Method),
    /// The status class, 1 to 6.
    Response(u8),
    /// Neither: garbage, or cut short.
    Unknown,
}

/// Classifies a datagram by its first bytes only (the full scan is the
/// proxy core's): a response by its class digit, a request by its method.
pub fn classify(datagram: &[u8]) -> Sniffed {
    if let Some(rest) = datagram.strip_prefix(b"SIP/2.0 ") {
        return match rest.first() {
            Some(&digit @ b'1'..=b'6') => Sniffed::Response(digit - b'0'),
            _ => Sniffed::Unknown,
        };
    }
    let head = &datagram[..datagram.len().min(12)];
    match memchr::memchr(b' ', head) {
        Some(end) if end > 0 => Sniffed::Request(Method::from_token(&head[..end])),
        _ => Sniffed::Unknown,
    }
}

/// Plain per-shard counts of messages by method and class, kept on the
/// shard's thread and published with the rest.
#[derive(Clone, Debug, Default)]
pub struct MessageCounts {
    pub requests: [u64; METHODS],
    pub responses: [u64; CLASSES],
}

impl MessageCounts {
    pub fn count(&mut self, kind: Sniffed) {
        match kind {
            Sniffed::Request(method) => self.requests[method as usize] += 1,
            Sniffed::Response(class) => {
                if let Some(n) = self.responses.get_mut(usize::from(class).wrapping_sub(1)) {
                    *n += 1;
                }
            }
            Sniffed::Unknown => {}
        }
    }
}

struct PublishedCounts {
    requests: [AtomicU64; METHODS],
    responses: [AtomicU64; CLASSES],
}

impl PublishedCounts {
    fn new() -> PublishedCounts {
        PublishedCounts {
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            responses: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn store(&self, counts: &MessageCounts) {
        for (to, from) in self.requests.iter().zip(&counts.requests) {
            to.store(*from, Ordering::Relaxed);
        }
        for (to, from) in self.responses.iter().zip(&counts.responses) {
            to.store(*from, Ordering::Relaxed);
        }
    }
}

/// One shard's published values.
pub struct ShardStats {
    values: [AtomicU64; Stat::ALL.len()],
    received: PublishedCounts,
    sent: PublishedCounts,
    /// The shard's receive-to-send latency (ns) and its backends' round
    /// trips (µs), copied in about once a second (the shard only ever
    /// `try_lock`s them).
    latency_ns: Mutex<Option<Histogram<u64>>>,
    rtt_us: Mutex<Option<Histogram<u64>>>,
    duration_us: Mutex<Option<Histogram<u64>>>,
    /// The shard's guard counts, by [`GuardCounters`] field (see
    /// [`render_guard`]).
    guard: [AtomicU64; GUARD_VALUES],
}

impl Default for ShardStats {
    fn default() -> Self {
        ShardStats {
            values: std::array::from_fn(|_| AtomicU64::new(0)),
            received: PublishedCounts::new(),
            sent: PublishedCounts::new(),
            latency_ns: Mutex::new(None),
            rtt_us: Mutex::new(None),
            duration_us: Mutex::new(None),
            guard: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl ShardStats {
    pub fn set(&self, stat: Stat, value: u64) {
        self.values[stat as usize].store(value, Ordering::Relaxed);
    }

    pub fn get(&self, stat: Stat) -> u64 {
        self.values[stat as usize].load(Ordering::Relaxed)
    }

    pub fn set_messages(&self, received: &MessageCounts, sent: &MessageCounts) {
        self.received.store(received);
        self.sent.store(sent);
    }

    /// Copies the shard's latency histogram in, unless the control thread
    /// holds the lock right now (then the next second's copy will do).
    pub fn offer_latency(&self, histogram: &Histogram<u64>) {
        offer(&self.latency_ns, histogram);
    }

    /// As [`ShardStats::offer_latency`], for the backends' round trips.
    pub fn offer_rtt(&self, histogram: &Histogram<u64>) {
        offer(&self.rtt_us, histogram);
    }

    /// As [`ShardStats::offer_latency`], for server transactions' durations.
    pub fn offer_duration(&self, histogram: &Histogram<u64>) {
        offer(&self.duration_us, histogram);
    }

    /// Stores the shard's guard counts (relaxed, one writer).
    pub fn set_guard(&self, counters: &GuardCounters) {
        for (to, from) in self.guard.iter().zip(guard_values(counters)) {
            to.store(from, Ordering::Relaxed);
        }
    }

    pub fn guard(&self) -> GuardCounters {
        let [acl_denied, banned, bans_started, sources, evictions] =
            std::array::from_fn(|i| self.guard[i].load(Ordering::Relaxed));
        GuardCounters {
            acl_denied,
            banned,
            bans_started,
            sources,
            evictions,
        }
    }
}

const GUARD_VALUES: usize = 5;

fn guard_values(c: &GuardCounters) -> [u64; GUARD_VALUES] {
    [
        c.acl_denied,
        c.banned,
        c.bans_started,
        c.sources,
        c.evictions,
    ]
}

/// The guard's families: access control and flood protection, per shard;
/// the bans in force (shared by all shards) and the admin API's refusals.
pub fn render_guard(
    out: &mut String,
    shards: &[&ShardStats],
    bans_active: usize,
    admin_denied: u64,
) {
    header(
        out,
        "guard_dropped_total",
        "Datagrams dropped before the proxy core, by reason: acl_denied (the SIP ACL refused the source), banned (the source is banned for flooding).",
        Kind::Counter,
    );
    for (shard, stats) in shards.iter().enumerate() {
        let c = stats.guard();
        for (reason, n) in [("acl_denied", c.acl_denied), ("banned", c.banned)] {
            let _ = writeln!(
                out,
                "sipshard_guard_dropped_total{{shard=\"{shard}\",reason=\"{reason}\"}} {n}"
            );
        }
    }
    type Pick = fn(&GuardCounters) -> u64;
    let families: [(&str, &str, Kind, Pick); 3] = [
        (
            "flood_bans_total",
            "Sources banned for sending requests over their rate (bans this shard started).",
            Kind::Counter,
            |c| c.bans_started,
        ),
        (
            "flood_sources",
            "Sources in the shard's table of request rates.",
            Kind::Gauge,
            |c| c.sources,
        ),
        (
            "flood_evictions_total",
            "Sources that lost their place in a full table of request rates to another.",
            Kind::Counter,
            |c| c.evictions,
        ),
    ];
    for (family, help, kind, pick) in families {
        header(out, family, help, kind);
        for (shard, stats) in shards.iter().enumerate() {
            let _ = writeln!(
                out,
                "sipshard_{family}{{shard=\"{shard}\"}} {}",
                pick(&stats.guard())
            );
        }
    }
    header(
        out,
        "flood_bans_active",
        "Sources banned for flooding now, all shards.",
        Kind::Gauge,
    );
    let _ = writeln!(out, "sipshard_flood_bans_active {bans_active}");
    header(
        out,
        "admin_denied_total",
        "Admin API requests refused with 403 by the admin ACL.",
        Kind::Counter,
    );
    let _ = writeln!(out, "sipshard_admin_denied_total {admin_denied}");
}

fn offer(slot: &Mutex<Option<Histogram<u64>>>, histogram: &Histogram<u64>) {
    if let Ok(mut shared) = slot.try_lock() {
        match shared.as_mut() {
            Some(copy) => {
                copy.reset();
                // Same bounds, so adding cannot fail; if it did, the copy
                // would just be empty until the next offer.
                let _ = copy.add(histogram);
            }
            None => *shared = Some(histogram.clone()),
        }
    }
}

/// The Prometheus text format (version 0.0.4) of every shard's stats.
pub fn render(shards: &[&ShardStats]) -> String {
    let mut out = String::with_capacity(16 * 1024);
    render_stats(&mut out, shards);
    render_messages(&mut out, shards);
    latency(&mut out, shards);
    out
}

/// Every [`Stat`], family by family, per shard.
fn render_stats(out: &mut String, shards: &[&ShardStats]) {
    let mut family = "";
    for stat in Stat::ALL {
        let meta = stat.meta();
        if meta.family != family {
            family = meta.family;
            header(out, family, meta.help, meta.kind);
        }
        for (shard, stats) in shards.iter().enumerate() {
            let value = stats.get(stat);
            let _ = write!(out, "sipshard_{family}{{shard=\"{shard}\"");
            if let Some((name, label)) = meta.label {
                let _ = write!(out, ",{name}=\"{label}\"");
            }
            match stat {
                Stat::BusyNs => {
                    let _ = writeln!(out, "}} {}", value as f64 / 1e9);
                }
                _ => {
                    let _ = writeln!(out, "}} {value}");
                }
            }
        }
    }
}

/// Requests by method and responses by class, received and sent, per
/// shard.
fn render_messages(out: &mut String, shards: &[&ShardStats]) {
    for (family, help, pick) in [
        (
            "requests_received_total",
            "Requests received, by method.",
            Pick::ReceivedRequests,
        ),
        (
            "requests_sent_total",
            "Requests sent (forwarded or generated), by method.",
            Pick::SentRequests,
        ),
        (
            "responses_received_total",
            "Responses received, by status class.",
            Pick::ReceivedResponses,
        ),
        (
            "responses_sent_total",
            "Responses sent (forwarded or generated), by status class.",
            Pick::SentResponses,
        ),
    ] {
        header(out, family, help, Kind::Counter);
        for (shard, stats) in shards.iter().enumerate() {
            let (counts, requests) = match pick {
                Pick::ReceivedRequests => (&stats.received, true),
                Pick::SentRequests => (&stats.sent, true),
                Pick::ReceivedResponses => (&stats.received, false),
                Pick::SentResponses => (&stats.sent, false),
            };
            if requests {
                for (method, n) in Method::ALL.iter().zip(&counts.requests) {
                    let _ = writeln!(
                        out,
                        "sipshard_{family}{{shard=\"{shard}\",method=\"{}\"}} {}",
                        method.name(),
                        n.load(Ordering::Relaxed)
                    );
                }
            } else {
                for (class, n) in counts.responses.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "sipshard_{family}{{shard=\"{shard}\",class=\"{}xx\"}} {}",
                        class + 1,
                        n.load(Ordering::Relaxed)
                    );
                }
            }
        }
    }
}

/// Each backend's state, active calls and latency, and the state
/// changes so far (`transitions[state as usize]`: changes into it).
pub fn render_backends(
    out: &mut String,
    routing: &Routing,
    transitions: &[u64; 4],
    probes: &BTreeMap<String, [u64; 3]>,
) {
    probes_family(out, probes);
    backend_states(out, routing);
    backend_load(out, routing);
    transitions_family(out, transitions);
}

/// Probes that ended, by backend and result.
fn probes_family(out: &mut String, probes: &BTreeMap<String, [u64; 3]>) {
    header(
        out,
        "probes_total",
        "Health probes (OPTIONS) that ended, by backend and result.",
        Kind::Counter,
    );
    for (uri, counts) in probes {
        for (result, n) in ["alive", "failed", "timeout"].iter().zip(counts) {
            let _ = writeln!(
                out,
                "sipshard_probes_total{{backend=\"{uri}\",result=\"{result}\"}} {n}"
            );
        }
    }
}

/// Whether each backend is up, and which state it is in.
fn backend_states(out: &mut String, routing: &Routing) {
    header(
        out,
        "backend_up",
        "1 when the backend takes new calls (state up).",
        Kind::Gauge,
    );
    for (uri, health) in routing.backends() {
        let up = u8::from(health.state() == State::Up);
        let _ = writeln!(out, "sipshard_backend_up{{backend=\"{uri}\"}} {up}");
    }
    header(
        out,
        "backend_state",
        "The backend's state: 1 for the state it is in (up, probing, down, draining).",
        Kind::Gauge,
    );
    for (uri, health) in routing.backends() {
        for state in [State::Up, State::Probing, State::Down, State::Draining] {
            let _ = writeln!(
                out,
                "sipshard_backend_state{{backend=\"{uri}\",state=\"{}\"}} {}",
                super::state_name(state),
                u8::from(health.state() == state)
            );
        }
    }
}

/// Each backend's active calls and latency.
fn backend_load(out: &mut String, routing: &Routing) {
    header(
        out,
        "backend_active_calls",
        "Dialogs in progress on the backend, all shards.",
        Kind::Gauge,
    );
    for (uri, health) in routing.backends() {
        let _ = writeln!(
            out,
            "sipshard_backend_active_calls{{backend=\"{uri}\"}} {}",
            health.active_dialogs()
        );
    }
    header(
        out,
        "backend_latency_seconds",
        "The EWMA of probe and transaction round trips to the backend.",
        Kind::Gauge,
    );
    for (uri, health) in routing.backends() {
        if let Some(us) = health.latency_ewma_us() {
            let _ = writeln!(
                out,
                "sipshard_backend_latency_seconds{{backend=\"{uri}\"}} {}",
                f64::from(us) / 1e6
            );
        }
    }
}

/// Backend state changes so far, by the state entered.
fn transitions_family(out: &mut String, transitions: &[u64; 4]) {
    header(
        out,
        "backend_transitions_total",
        "Backend state changes (by probes or the admin API), by the state entered.",
        Kind::Counter,
    );
    for state in [State::Up, State::Probing, State::Down, State::Draining] {
        let _ = writeln!(
            out,
            "sipshard_backend_transitions_total{{to=\"{}\"}} {}",
            super::state_name(state),
            transitions[state as usize]
        );
    }
}

#[derive(Clone, Copy)]
enum Pick {
    ReceivedRequests,
    SentRequests,
    ReceivedResponses,
    SentResponses,
}

fn header(out: &mut String, family: &str, help: &str, kind: Kind) {
    let kind = match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
    };
    let _ = writeln!(out, "# HELP sipshard_{family} {help}");
    let _ = writeln!(out, "# TYPE sipshard_{family} {kind}");
}

fn latency(out: &mut String, shards: &[&ShardStats]) {
    histogram(
        out,
        shards,
        "forward_latency_seconds",
        "Time from receiving a datagram to sending what it caused (the gateway's added latency).",
        |s| &s.latency_ns,
        1e-9,
    );
    histogram(
        out,
        shards,
        "transaction_rtt_seconds",
        "Round trips to the backends: each try's request to its first answer (millisecond resolution).",
        |s| &s.rtt_us,
        1e-6,
    );
    histogram(
        out,
        shards,
        "transaction_duration_seconds",
        "Server transactions, from the request to the final response sent (millisecond resolution).",
        |s| &s.duration_us,
        1e-6,
    );
}

/// One histogram family from each shard's copy; `unit` turns its values
/// into seconds.
fn histogram(
    out: &mut String,
    shards: &[&ShardStats],
    family: &str,
    help: &str,
    pick: impl Fn(&ShardStats) -> &Mutex<Option<Histogram<u64>>>,
    unit: f64,
) {
    header(out, family, help, Kind::Histogram);
    for (shard, stats) in shards.iter().enumerate() {
        let Ok(guard) = pick(stats).lock() else {
            continue;
        };
        let (count, sum_s, buckets) = match guard.as_ref() {
            Some(h) => (
                h.len(),
                h.mean() * h.len() as f64 * unit,
                LATENCY_BUCKETS_S.map(|le| h.count_between(0, (le / unit) as u64)),
            ),
            None => (0, 0.0, [0; LATENCY_BUCKETS_S.len()]),
        };
        for (le, n) in LATENCY_BUCKETS_S.iter().zip(buckets) {
            let _ = writeln!(
                out,
                "sipshard_{family}_bucket{{shard=\"{shard}\",le=\"{le}\"}} {}",
                n.min(count)
            );
        }
        let _ = writeln!(
            out,
            "sipshard_{family}_bucket{{shard=\"{shard}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(out, "sipshard_{family}_sum{{shard=\"{shard}\"}} {sum_s}");
        let _ = writeln!(out, "sipshard_{family}_count{{shard=\"{shard}\"}} {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_reads_the_class_digit_and_the_method() {
        assert_eq!(classify(b"SIP/2.0 180 Ringing\r\n"), Sniffed::Response(1));
        assert_eq!(classify(b"SIP/2.0 503 Busy\r\n"), Sniffed::Response(5));
        assert_eq!(classify(b"SIP/2.0 703 No\r\n"), Sniffed::Unknown);
        assert_eq!(
            classify(b"INVITE sip:a@b SIP/2.0\r\n"),
            Sniffed::Request(Method::Invite)
        );
        assert_eq!(
            classify(b"REGISTER sip:b SIP/2.0\r\n"),
            Sniffed::Request(Method::Register)
        );
        assert_eq!(
            classify(b"FOO sip:b SIP/2.0\r\n"),
            Sniffed::Request(Method::Other)
        );
        assert_eq!(classify(b""), Sniffed::Unknown);
        assert_eq!(classify(b" INVITE"), Sniffed::Unknown);
        assert_eq!(classify(b"\x00\x01\x02"), Sniffed::Unknown);
    }

    #[test]
    fn render_writes_each_family_once_with_every_shard() {
        let a = ShardStats::default();
        let b = ShardStats::default();
        a.set(Stat::Received, 7);
        b.set(Stat::Received, 5);
        a.set(Stat::DroppedMalformed, 2);
        a.set(Stat::BusyNs, 1_500_000_000);
        a.set(Stat::of_limit(Limit::Headers), 3);
        let mut counts = MessageCounts::default();
        counts.count(classify(b"INVITE sip:x SIP/2.0\r\n"));
        counts.count(classify(b"SIP/2.0 200 OK\r\n"));
        a.set_messages(&counts, &MessageCounts::default());
        let text = render(&[&a, &b]);
        assert_eq!(
            text.matches("# TYPE sipshard_dropped_total counter")
                .count(),
            1
        );
        assert!(text.contains("sipshard_datagrams_received_total{shard=\"0\"} 7\n"));
        assert!(text.contains("sipshard_datagrams_received_total{shard=\"1\"} 5\n"));
        assert!(text.contains("sipshard_dropped_total{shard=\"0\",reason=\"malformed\"} 2\n"));
        assert!(text.contains("sipshard_busy_seconds_total{shard=\"0\"} 1.5\n"));
        assert!(text.contains("sipshard_limit_exceeded_total{shard=\"0\",limit=\"headers\"} 3\n"));
        assert!(
            text.contains("sipshard_limit_exceeded_total{shard=\"1\",limit=\"udp_payload\"} 0\n")
        );
        assert_eq!(
            text.matches("# TYPE sipshard_limit_exceeded_total counter")
                .count(),
            1
        );
        assert!(
            text.contains("sipshard_requests_received_total{shard=\"0\",method=\"INVITE\"} 1\n")
        );
        assert!(text.contains("sipshard_responses_received_total{shard=\"0\",class=\"2xx\"} 1\n"));
        assert!(text.contains("# TYPE sipshard_forward_latency_seconds histogram\n"));
    }

    #[test]
    fn guard_families_have_every_shard_and_the_shared_values() {
        let a = ShardStats::default();
        let b = ShardStats::default();
        a.set_guard(&GuardCounters {
            acl_denied: 3,
            banned: 40,
            bans_started: 1,
            sources: 7,
            evictions: 2,
        });
        let mut text = String::new();
        render_guard(&mut text, &[&a, &b], 5, 9);
        for line in [
            "sipshard_guard_dropped_total{shard=\"0\",reason=\"acl_denied\"} 3\n",
            "sipshard_guard_dropped_total{shard=\"0\",reason=\"banned\"} 40\n",
            "sipshard_guard_dropped_total{shard=\"1\",reason=\"banned\"} 0\n",
            "sipshard_flood_bans_total{shard=\"0\"} 1\n",
            "sipshard_flood_sources{shard=\"0\"} 7\n",
            "sipshard_flood_evictions_total{shard=\"0\"} 2\n",
            "sipshard_flood_bans_active 5\n",
            "sipshard_admin_denied_total 9\n",
            "# TYPE sipshard_flood_sources gauge\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert_eq!(text.matches("# HELP").count(), 6);
    }

    #[test]
    fn latency_buckets_are_cumulative() {
        let stats = ShardStats::default();
        let mut h = Histogram::<u64>::new_with_bounds(100, 60_000_000_000, 3).unwrap();
        h.record(20_000).unwrap(); // 20 µs
        h.record(2_000_000).unwrap(); // 2 ms
        stats.offer_latency(&h);
        let text = render(&[&stats]);
        assert!(text.contains("le=\"0.00001\"} 0\n"), "{text}");
        assert!(text.contains("le=\"0.000025\"} 1\n"), "{text}");
        assert!(text.contains("le=\"0.0025\"} 2\n"), "{text}");
        assert!(text.contains("le=\"+Inf\"} 2\n"), "{text}");
        assert!(text.contains("sipshard_forward_latency_seconds_count{shard=\"0\"} 2\n"));
    }
}
