//! The file as written: the serde schema of `sipshard.toml`, every value
//! still as the operator wrote it, with its place in the text
//! ([`Spanned`]) so that a problem can name its line. [`super::check`]
//! turns it into the runtime's types.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// The file as written. Unknown keys are errors: a misspelt key silently
/// ignored is a setting the operator believes in and does not have.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// Where SIP arrives: one `[udp|tcp|tls:]IP:PORT` or a list of them;
    /// also what goes in our Via and Record-Route.
    pub listen: Spanned<Listen>,
    /// Shard threads; default: the usable cores.
    pub shards: Option<Spanned<usize>>,
    /// CPUs the shards are pinned to, in order; default: the first ones.
    #[serde(default)]
    pub cpus: Vec<usize>,
    /// Slots in each shard's handoff queue.
    pub handoff_queue_len: Option<Spanned<usize>>,
    /// Datagram bytes each shard's handoff queue may hold.
    pub handoff_queue_bytes: Option<Spanned<usize>>,
    /// `auto` (io_uring where allowed, else epoll), `uring` or `epoll`.
    pub io: Option<Spanned<String>>,
    /// The admin HTTP API's address (`/healthz`, `/metrics`); off if absent.
    pub admin: Option<Spanned<String>>,
    #[serde(default)]
    pub socket: Socket,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub streams: StreamsFile,
    /// Certificates: ours (for `tls:` listeners) and the CAs we trust.
    pub tls: Option<Spanned<TlsFile>>,
    /// SIP over WebSocket: allowed origins and bounds.
    #[serde(default)]
    pub websocket: WebSocketFile,
    #[serde(default)]
    pub transactions: TransactionsFile,
    #[serde(default)]
    pub probes: ProbesFile,
    #[serde(default)]
    pub overload: OverloadFile,
    #[serde(default)]
    pub acl: AclFile,
    #[serde(default)]
    pub flood: FloodFile,
    /// The set for requests no route matches; default `"default"` (the
    /// `[backends]` pool). A top-level key: write it before any table.
    pub default_set: Option<Spanned<String>>,
    /// The backend pool of a one-set gateway: the set named "default".
    pub backends: Option<Backends>,
    /// Named destination sets.
    #[serde(default)]
    pub sets: Vec<SetFile>,
    /// Routing rules, tried in order: the first that matches picks the set.
    #[serde(default)]
    pub routes: Vec<RouteFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Socket {
    pub receive_buffer_bytes: Option<usize>,
    pub send_buffer_bytes: Option<usize>,
    /// Shard `i` sends its requests from, and takes their responses on,
    /// this port plus `i` (default: ports the kernel picks).
    pub shard_port_base: Option<u16>,
    /// Steer each datagram to its shard's socket in the kernel (eBPF);
    /// default true. Without it the shards hand datagrams to each other.
    pub steering: Option<bool>,
}

/// The `[websocket]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketFile {
    /// `Origin` values an upgrade may carry; empty (the default): any.
    #[serde(default)]
    pub origins: Vec<String>,
    pub message_bytes_max: Option<Spanned<usize>>,
    pub frame_bytes_max: Option<Spanned<usize>>,
}

/// The `[tls]` table: PEM files.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// Our certificate chain, leaf first (`--tls-cert`).
    pub cert: Option<std::path::PathBuf>,
    /// Its private key (`--tls-key`).
    pub key: Option<std::path::PathBuf>,
    /// Require client certificates issued by these CAs (mutual TLS).
    pub client_ca: Option<std::path::PathBuf>,
    /// Verify backends' certificates against these CAs; default: the
    /// system's roots.
    pub backend_ca: Option<std::path::PathBuf>,
}

/// `listen = "..."` or `listen = ["...", "..."]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Listen {
    One(String),
    Many(Vec<String>),
}

impl Listen {
    pub fn list(&self) -> Vec<&str> {
        match self {
            Listen::One(one) => vec![one.as_str()],
            Listen::Many(many) => many.iter().map(String::as_str).collect(),
        }
    }
}

/// `[streams]`: connection bounds and timeouts (TCP).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamsFile {
    pub handshake_timeout_ms: Option<Spanned<usize>>,
    pub connections_max: Option<Spanned<usize>>,
    pub connections_per_source_max: Option<Spanned<usize>>,
    pub idle_timeout_s: Option<Spanned<usize>>,
    pub message_timeout_ms: Option<Spanned<usize>>,
    pub connect_timeout_ms: Option<Spanned<usize>>,
    pub send_queue_bytes_max: Option<Spanned<usize>>,
    pub buffered_bytes_max: Option<Spanned<usize>>,
    pub message_bytes_max: Option<Spanned<usize>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub datagram_bytes_max: Option<usize>,
    pub headers_max: Option<usize>,
    pub header_line_bytes_max: Option<usize>,
    pub via_values_max: Option<usize>,
}

/// Overload control: when a shard sheds new INVITEs and REGISTERs.
/// Percentages, so the file holds whole numbers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverloadFile {
    pub enabled: Option<bool>,
    pub window_ms: Option<Spanned<u32>>,
    pub busy_high_pct: Option<Spanned<u32>>,
    pub busy_low_pct: Option<Spanned<u32>>,
    pub transactions_high_pct: Option<Spanned<u32>>,
    pub transactions_low_pct: Option<Spanned<u32>>,
    pub queue_high_pct: Option<Spanned<u32>>,
    pub queue_low_pct: Option<Spanned<u32>>,
    pub reject_per_s: Option<Spanned<u32>>,
    pub shed_in_kernel: Option<bool>,
}

/// Health probes: OPTIONS to every backend (off unless `enabled`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbesFile {
    pub enabled: Option<bool>,
    pub interval_ms: Option<Spanned<u32>>,
    pub timeout_ms: Option<Spanned<u32>>,
    pub failures: Option<Spanned<u32>>,
    pub successes: Option<Spanned<u32>>,
    pub accepted_codes: Option<Spanned<Vec<u16>>>,
}

/// Who may send SIP to us and reach the admin API: networks as
/// `"10.0.0.0/8"`, `"2001:db8::/32"` or one address. Deny wins; an empty
/// allow list allows all.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclFile {
    pub sip_allow: Option<Spanned<Vec<Spanned<String>>>>,
    pub sip_deny: Option<Spanned<Vec<Spanned<String>>>>,
    pub admin_allow: Option<Spanned<Vec<Spanned<String>>>>,
    pub admin_deny: Option<Spanned<Vec<Spanned<String>>>>,
}

/// Flood protection: per-source request rates and bans (off unless
/// `enabled`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FloodFile {
    pub enabled: Option<bool>,
    pub requests_per_second: Option<Spanned<u32>>,
    pub burst: Option<Spanned<u32>>,
    pub ban_s: Option<Spanned<u32>>,
    pub sources_max: Option<Spanned<u32>>,
}

/// Transaction timers (RFC 3261 table 4), failover and the table bound.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransactionsFile {
    pub t1_ms: Option<Spanned<u32>>,
    pub t2_ms: Option<Spanned<u32>>,
    pub t4_ms: Option<Spanned<u32>>,
    pub timer_c_ms: Option<Spanned<u32>>,
    pub timer_d_ms: Option<Spanned<u32>>,
    pub try_ms: Option<Spanned<u32>>,
    pub failover_codes: Option<Spanned<Vec<u16>>>,
    pub failover_after_provisional: Option<bool>,
    pub max_per_shard: Option<Spanned<usize>>,
    pub retry_after_s: Option<Spanned<u32>>,
    /// Requests larger than this go to a UDP backend over TCP, or get 513.
    pub udp_request_bytes_max: Option<Spanned<usize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backends {
    /// `round-robin` or `call-id-hash`.
    #[serde(default = "default_algorithm")]
    pub algorithm: Spanned<String>,
    /// `sip:IP:PORT` URIs.
    pub members: Vec<Spanned<String>>,
}

/// A `[[sets]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetFile {
    pub name: Spanned<String>,
    /// One of [`balance::Algorithm::NAMES`]; default `round-robin`.
    pub algorithm: Option<Spanned<String>>,
    pub members: Spanned<Vec<MemberFile>>,
}

/// One member of a set: `{ uri = "sip:10.0.0.1:5060", weight = 2 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberFile {
    pub uri: Spanned<String>,
    /// Share of new calls, 0..=10000; default 1; 0 takes no new calls.
    pub weight: Option<Spanned<u32>>,
    /// Lower is preferred (the `priority` algorithm); default 0.
    pub priority: Option<u32>,
    /// Free attributes, for the operator's use.
    #[serde(default)]
    pub attrs: BTreeMap<String, String>,
}

/// A `[[routes]]` table: every condition given must hold.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// Request methods, exactly as on the wire.
    pub methods: Option<Spanned<Vec<String>>>,
    /// The Request-URI user starts with this.
    pub user_prefix: Option<Spanned<String>>,
    /// The Request-URI host is this (any case).
    pub domain: Option<Spanned<String>>,
    /// The datagram came from one of these networks.
    pub source: Option<Spanned<Vec<Spanned<String>>>>,
    pub set: Spanned<String>,
}

fn default_algorithm() -> Spanned<String> {
    Spanned::new(0..0, "round-robin".to_string())
}
