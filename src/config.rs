//! The TOML configuration file: what it holds, and the checks that turn
//! it into a runtime [`shard::Config`] and a [`Routing`]. Control plane
//! only: read at start-up (and by `--check-config`), never on the packet
//! path.
//!
//! Every problem is reported with its line and what to write instead, all
//! of them at once where the file parsed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use crate::balance::{
    self, Cidr, MemberSpec, ProbeConfig, Routing, RoutingError, RoutingSpec, RuleSpec, SetSpec,
};
use crate::proxy::overload::OverloadConfig;
use crate::proxy::Algorithm;
use std::sync::Arc;

use crate::guard::{self, Acl, FloodConfig, GuardConfig};
use crate::shard;
use crate::sip::{host_ip, Limits, Uri};
use crate::txn::{Millis, TimerConfig, TxnConfig};

/// The file as written. Unknown keys are errors: a misspelt key silently
/// ignored is a setting the operator believes in and does not have.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// The UDP address SIP arrives on; also what goes in our Via and
    /// Record-Route.
    pub listen: Spanned<String>,
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

/// Parses and checks a configuration file's text.
pub fn parse(text: &str) -> Result<shard::Config, Vec<Problem>> {
    parse_with_routing(text, None).map(|(config, _)| config)
}

/// Parses and checks a configuration file's text, with its destination
/// sets and routes. Backends that `previous` (the running snapshot) also
/// has keep their health; see [`Routing::build`].
pub fn parse_with_routing(
    text: &str,
    previous: Option<&Routing>,
) -> Result<(shard::Config, Arc<Routing>), Vec<Problem>> {
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let file: File = toml::from_str(text).map_err(|e| {
        vec![Problem {
            line: e.span().map_or(0, |s| line_of(s.start)),
            what: e.message().to_string(),
            fix: "see examples/sipshard.toml for every key and its form".to_string(),
        }]
    })?;
    let mut problems = Vec::new();
    let mut problem = |span: std::ops::Range<usize>, what: String, fix: &str| {
        problems.push(Problem {
            line: if span.is_empty() {
                0
            } else {
                line_of(span.start)
            },
            what,
            fix: fix.to_string(),
        })
    };

    let listen = match file.listen.get_ref().parse::<SocketAddr>() {
        Ok(address) if !address.ip().is_unspecified() => Some(address),
        Ok(_) => {
            problem(
                file.listen.span(),
                format!("listen = {:?} is a wildcard address", file.listen.get_ref()),
                "give the address peers reach us on, e.g. \"192.0.2.10:5060\": it goes in our Via and Record-Route",
            );
            None
        }
        Err(_) => {
            problem(
                file.listen.span(),
                format!("listen = {:?} is not IP:PORT", file.listen.get_ref()),
                "write it as \"127.0.0.1:5060\"",
            );
            None
        }
    };
    let shards = match &file.shards {
        Some(s) if *s.get_ref() == 0 || *s.get_ref() > 1024 => {
            problem(
                s.span(),
                format!("shards = {} is out of range", s.get_ref()),
                "use 1..=1024, usually one per core",
            );
            1
        }
        Some(s) => *s.get_ref(),
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let handoff_queue_len = match &file.handoff_queue_len {
        Some(q) if *q.get_ref() == 0 || *q.get_ref() > 1 << 20 => {
            problem(
                q.span(),
                format!("handoff_queue_len = {} is out of range", q.get_ref()),
                "use 1..=1048576 (default 8192)",
            );
            1
        }
        Some(q) => *q.get_ref(),
        None => 8192,
    };
    let handoff_queue_bytes = match &file.handoff_queue_bytes {
        Some(b) if !(1 << 16..=1 << 30).contains(b.get_ref()) => {
            problem(
                b.span(),
                format!("handoff_queue_bytes = {} is out of range", b.get_ref()),
                "use 65536..=1073741824, room for at least one 64 KiB datagram (default 16777216)",
            );
            shard::HANDOFF_QUEUE_BYTES_DEFAULT
        }
        Some(b) => *b.get_ref(),
        None => shard::HANDOFF_QUEUE_BYTES_DEFAULT,
    };
    let routing = routing(&file, previous, &mut problem);
    let io = match file.io.as_ref().map(|i| (i.get_ref().as_str(), i.span())) {
        None | Some(("auto", _)) => shard::Io::Auto,
        Some(("uring", _)) => shard::Io::Uring,
        Some(("epoll", _)) => shard::Io::Epoll,
        Some((other, span)) => {
            problem(
                span,
                format!("io = {other:?} is not known"),
                "use \"auto\", \"uring\" or \"epoll\"",
            );
            shard::Io::Auto
        }
    };
    let defaults = Limits::default();
    let limits = Limits {
        datagram_bytes_max: file
            .limits
            .datagram_bytes_max
            .unwrap_or(defaults.datagram_bytes_max),
        headers_max: file.limits.headers_max.unwrap_or(defaults.headers_max),
        header_line_bytes_max: file
            .limits
            .header_line_bytes_max
            .unwrap_or(defaults.header_line_bytes_max),
        via_values_max: file
            .limits
            .via_values_max
            .unwrap_or(defaults.via_values_max),
    };
    if let Err(e) = limits.check() {
        problem(
            0..0,
            format!("[limits] {e}"),
            "set it within the range given",
        );
    }
    let txn = transactions(&file.transactions, &mut problem);
    let probes = probes(&file.probes, &mut problem);
    let overload = overload(&file.overload, &mut problem);
    let guard = guard(&file.acl, &file.flood, &mut problem);
    let admin = match &file.admin {
        None => None,
        Some(admin) => match admin.get_ref().parse::<SocketAddr>() {
            Ok(address) => Some(address),
            Err(_) => {
                problem(
                    admin.span(),
                    format!("admin = {:?} is not an IP:port address", admin.get_ref()),
                    "write it as IP:PORT, e.g. admin = \"127.0.0.1:9090\"",
                );
                None
            }
        },
    };
    match (listen, routing, problems.is_empty()) {
        (Some(listen), Some(routing), true) => {
            let routing = Arc::new(routing);
            // The default set, for the start-up log and `--backend`'s
            // precedence: the shards route by `routing`.
            let default = routing.set(routing.default_set());
            let config = shard::Config {
                listen,
                backends: default.members.iter().map(|m| m.address).collect(),
                algorithm: match default.algorithm {
                    balance::Algorithm::CallIdHash => Algorithm::CallIdHash,
                    _ => Algorithm::RoundRobin,
                },
                shards,
                cpus: file.cpus,
                limits,
                txn,
                handoff_queue_len,
                handoff_queue_bytes,
                socket_receive_buffer_bytes: file.socket.receive_buffer_bytes,
                socket_send_buffer_bytes: file.socket.send_buffer_bytes,
                shard_port_base: file.socket.shard_port_base,
                steering: file.socket.steering.unwrap_or(true),
                io,
                admin,
                probes,
                routing: routing.clone(),
                overload,
                guard,
            };
            Ok((config, routing))
        }
        _ => Err(problems),
    }
}

/// The routing of the command line's `--backend`s: one set, "default",
/// with every member at weight 1. `previous` carries health over, as a
/// reload does.
pub fn backends_routing(
    backends: &[SocketAddr],
    algorithm: balance::Algorithm,
    previous: Option<&Routing>,
) -> Result<Routing, String> {
    let spec = balance::RoutingSpec::one_set(algorithm, backends);
    Routing::build(&spec, previous).map_err(|errors| {
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// Where each part of the routing spec was written, to give a
/// [`RoutingError`] its line.
#[derive(Default)]
struct Places {
    sets: Vec<SetPlaces>,
    rules: Vec<RulePlaces>,
    default_set: Range<usize>,
}

#[derive(Default)]
struct SetPlaces {
    /// The `[backends]` table, whose form differs from `[[sets]]`.
    from_backends: bool,
    name: Range<usize>,
    members: Range<usize>,
    uris: Vec<Range<usize>>,
    weights: Vec<Range<usize>>,
}

#[derive(Default)]
struct RulePlaces {
    set: Range<usize>,
    methods: Range<usize>,
    user_prefix: Range<usize>,
    domain: Range<usize>,
    source: Range<usize>,
}

/// `[backends]`, `[[sets]]`, `[[routes]]` and `default_set`, checked field
/// by field here and as a whole by [`Routing::build`].
fn routing(
    file: &File,
    previous: Option<&Routing>,
    problem: &mut impl FnMut(Range<usize>, String, &str),
) -> Option<Routing> {
    let mut spec = RoutingSpec::default();
    let mut places = Places::default();
    if let Some(backends) = &file.backends {
        let (set, set_places) = backends_set(backends, problem);
        spec.sets.push(set);
        places.sets.push(set_places);
    }
    for set in &file.sets {
        let (set, set_places) = set_spec(set, problem);
        spec.sets.push(set);
        places.sets.push(set_places);
    }
    for route in &file.routes {
        let (rule, rule_places) = rule_spec(route, problem);
        spec.rules.push(rule);
        places.rules.push(rule_places);
    }
    spec.default_set = file
        .default_set
        .as_ref()
        .map_or("default".to_string(), |d| d.get_ref().clone());
    places.default_set = file.default_set.as_ref().map_or(0..0, |d| d.span());
    match Routing::build(&spec, previous) {
        Ok(routing) => Some(routing),
        Err(errors) => {
            for error in errors {
                routing_problem(&error, &places, problem);
            }
            None
        }
    }
}

fn routing_problem(
    error: &RoutingError,
    places: &Places,
    problem: &mut impl FnMut(Range<usize>, String, &str),
) {
    let set = |i: usize| places.sets.get(i);
    let rule = |i: usize, field: fn(&RulePlaces) -> &Range<usize>| {
        places.rules.get(i).map_or(0..0, |r| field(r).clone())
    };
    let span = match *error {
        RoutingError::NoSets
        | RoutingError::TooManySets { .. }
        | RoutingError::TooManyRules { .. } => 0..0,
        RoutingError::DuplicateSet { set: i, .. } => set(i).map_or(0..0, |s| s.name.clone()),
        RoutingError::EmptySet { set: i, .. } => match set(i) {
            Some(s) if s.from_backends => {
                return problem(
                    0..0,
                    "backends.members is empty".to_string(),
                    "list at least one backend, e.g. members = [\"sip:127.0.0.1:5080\"]",
                )
            }
            s => s.map_or(0..0, |s| s.members.clone()),
        },
        RoutingError::TooManyMembers { set: i, .. } => set(i).map_or(0..0, |s| s.members.clone()),
        RoutingError::DuplicateMember { set: i, member, .. } => set(i)
            .and_then(|s| s.uris.get(member).cloned())
            .unwrap_or(0..0),
        RoutingError::WeightOutOfRange { set: i, member, .. } => set(i)
            .and_then(|s| s.weights.get(member).cloned())
            .unwrap_or(0..0),
        RoutingError::UnknownSet { rule: i, .. } => rule(i, |r| &r.set),
        RoutingError::UnknownDefaultSet { .. } => places.default_set.clone(),
        RoutingError::EmptyMethods { rule: i } | RoutingError::BadMethod { rule: i, .. } => {
            rule(i, |r| &r.methods)
        }
        RoutingError::EmptyUserPrefix { rule: i } => rule(i, |r| &r.user_prefix),
        RoutingError::EmptyDomain { rule: i } => rule(i, |r| &r.domain),
        RoutingError::EmptySource { rule: i } => rule(i, |r| &r.source),
    };
    problem(span, error.to_string(), &error.fix());
}

/// `[backends]`: the set "default", round robin or Call-ID hash as before.
fn backends_set(
    backends: &Backends,
    problem: &mut impl FnMut(Range<usize>, String, &str),
) -> (SetSpec, SetPlaces) {
    let algorithm = match backends.algorithm.get_ref().as_str() {
        "round-robin" => balance::Algorithm::RoundRobin,
        "call-id-hash" => balance::Algorithm::CallIdHash,
        other => {
            problem(
                backends.algorithm.span(),
                format!("algorithm = {other:?} is not known"),
                "use \"round-robin\" or \"call-id-hash\" (or a [[sets]] table for the others)",
            );
            balance::Algorithm::RoundRobin
        }
    };
    let mut places = SetPlaces {
        from_backends: true,
        ..SetPlaces::default()
    };
    let members = backends
        .members
        .iter()
        .map(|uri| {
            places.uris.push(uri.span());
            places.weights.push(uri.span());
            MemberSpec::new(uri.get_ref().clone(), member_address(uri, problem))
        })
        .collect();
    let set = SetSpec {
        name: "default".to_string(),
        algorithm,
        members,
    };
    (set, places)
}

/// A member's address; a placeholder after reporting one that is not
/// `sip:IP:PORT`, so the rest of the set is still checked.
fn member_address(
    uri: &Spanned<String>,
    problem: &mut impl FnMut(Range<usize>, String, &str),
) -> SocketAddr {
    backend_address(uri.get_ref()).unwrap_or_else(|why| {
        problem(
            uri.span(),
            format!("backend {:?}: {why}", uri.get_ref()),
            "write it as \"sip:10.0.0.1:5060\"",
        );
        SocketAddr::from(([0, 0, 0, 0], 0))
    })
}

fn set_spec(
    set: &SetFile,
    problem: &mut impl FnMut(Range<usize>, String, &str),
) -> (SetSpec, SetPlaces) {
    let algorithm = match &set.algorithm {
        None => balance::Algorithm::RoundRobin,
        Some(name) => balance::Algorithm::from_name(name.get_ref()).unwrap_or_else(|| {
            problem(
                name.span(),
                format!("algorithm = {:?} is not known", name.get_ref()),
                &format!("use one of {}", balance::Algorithm::NAMES.join(", ")),
            );
            balance::Algorithm::RoundRobin
        }),
    };
    let mut places = SetPlaces {
        from_backends: false,
        name: set.name.span(),
        members: set.members.span(),
        ..SetPlaces::default()
    };
    let members = set
        .members
        .get_ref()
        .iter()
        .map(|member| {
            places.uris.push(member.uri.span());
            places.weights.push(
                member
                    .weight
                    .as_ref()
                    .map_or(member.uri.span(), |w| w.span()),
            );
            MemberSpec {
                weight: member.weight.as_ref().map_or(1, |w| *w.get_ref()),
                priority: member.priority.unwrap_or(0),
                attrs: member.attrs.clone(),
                ..MemberSpec::new(
                    member.uri.get_ref().clone(),
                    member_address(&member.uri, problem),
                )
            }
        })
        .collect();
    let set = SetSpec {
        name: set.name.get_ref().clone(),
        algorithm,
        members,
    };
    (set, places)
}

fn rule_spec(
    route: &RouteFile,
    problem: &mut impl FnMut(Range<usize>, String, &str),
) -> (RuleSpec, RulePlaces) {
    let span = |field: Option<Range<usize>>| field.unwrap_or(route.set.span());
    let places = RulePlaces {
        set: route.set.span(),
        methods: span(route.methods.as_ref().map(|m| m.span())),
        user_prefix: span(route.user_prefix.as_ref().map(|p| p.span())),
        domain: span(route.domain.as_ref().map(|d| d.span())),
        source: span(route.source.as_ref().map(|s| s.span())),
    };
    let source = route.source.as_ref().map(|list| {
        let parsed = networks(list, "source", problem);
        (parsed, list.get_ref().len())
    });
    let rule = RuleSpec {
        methods: route.methods.as_ref().map(|m| m.get_ref().clone()),
        user_prefix: route.user_prefix.as_ref().map(|p| p.get_ref().clone()),
        domain: route.domain.as_ref().map(|d| d.get_ref().clone()),
        // A list whose every entry was bad is reported already, not again
        // as an empty one.
        source: source.and_then(|(parsed, written)| {
            (parsed.len() == written || !parsed.is_empty()).then_some(parsed)
        }),
        set: route.set.get_ref().clone(),
    };
    (rule, places)
}

/// A list of networks; each one that does not parse is a problem on its
/// own line (`key` names the list) and is left out.
fn networks(
    list: &Spanned<Vec<Spanned<String>>>,
    key: &str,
    problem: &mut impl FnMut(Range<usize>, String, &str),
) -> Vec<Cidr> {
    list.get_ref()
        .iter()
        .filter_map(|network| match network.get_ref().parse::<Cidr>() {
            Ok(cidr) => Some(cidr),
            Err(why) => {
                problem(
                    network.span(),
                    format!("{key} {:?}: {why}", network.get_ref()),
                    "write a network as \"10.0.0.0/8\" or \"2001:db8::/32\", or one address",
                );
                None
            }
        })
        .collect()
}

/// The `[acl]` and `[flood]` tables.
fn guard(
    acl: &AclFile,
    flood: &FloodFile,
    problem: &mut impl FnMut(Range<usize>, String, &str),
) -> GuardConfig {
    let mut list = |list: &Option<Spanned<Vec<Spanned<String>>>>, key: &str| match list {
        None => (Vec::new(), 0..0),
        Some(l) => (networks(l, &format!("acl.{key}"), &mut *problem), l.span()),
    };
    let sides = [
        (
            list(&acl.sip_allow, "sip_allow"),
            list(&acl.sip_deny, "sip_deny"),
        ),
        (
            list(&acl.admin_allow, "admin_allow"),
            list(&acl.admin_deny, "admin_deny"),
        ),
    ];
    let [sip, admin] = sides.map(|((allow, allow_span), (deny, deny_span))| {
        Acl::new(&allow, &deny).unwrap_or_else(|e| {
            let span = if allow.len() > guard::NETWORKS_MAX {
                allow_span
            } else {
                deny_span
            };
            problem(
                span,
                format!("the list holds {e}"),
                "merge networks into wider ones, or filter in a firewall in front",
            );
            Acl::default()
        })
    });
    let defaults = FloodConfig::default();
    let mut value = |v: &Option<Spanned<u32>>, name: &str, range, default| {
        ranged(&mut *problem, v, &format!("flood.{name}"), range, default)
    };
    let flood = FloodConfig {
        enabled: flood.enabled.unwrap_or(defaults.enabled),
        requests_per_second: value(
            &flood.requests_per_second,
            "requests_per_second",
            1..=10_000_000,
            defaults.requests_per_second,
        ),
        burst: value(&flood.burst, "burst", 1..=10_000_000, defaults.burst),
        ban_s: value(&flood.ban_s, "ban_s", 1..=guard::BAN_S_MAX, defaults.ban_s),
        sources_max: value(
            &flood.sources_max,
            "sources_max",
            guard::flood::SOURCES_MIN..=guard::flood::SOURCES_MAX,
            defaults.sources_max,
        ),
    };
    GuardConfig { sip, admin, flood }
}

/// A number that must lie in `range`: out of it is a problem (with the
/// range and the default as the fix) and the default is used.
fn ranged(
    problem: &mut impl FnMut(std::ops::Range<usize>, String, &str),
    value: &Option<Spanned<u32>>,
    name: &str,
    range: std::ops::RangeInclusive<u32>,
    default: u32,
) -> u32 {
    match value {
        Some(v) if !range.contains(v.get_ref()) => {
            problem(
                v.span(),
                format!("{name} = {} is out of range", v.get_ref()),
                &format!(
                    "use {}..={} (default {default})",
                    range.start(),
                    range.end()
                ),
            );
            default
        }
        Some(v) => *v.get_ref(),
        None => default,
    }
}

/// The `[overload]` table: each value in its range, each low mark under
/// its high mark.
fn overload(
    file: &OverloadFile,
    problem: &mut impl FnMut(std::ops::Range<usize>, String, &str),
) -> OverloadConfig {
    let d = OverloadConfig::default();
    let pct = |f: f64| (f * 100.0).round() as u32;
    let mut value = |v: &Option<Spanned<u32>>, name: &str, range, default| {
        ranged(
            &mut *problem,
            v,
            &format!("overload.{name}"),
            range,
            default,
        )
    };
    let window_ms = value(
        &file.window_ms,
        "window_ms",
        10..=10_000,
        d.window_ms as u32,
    );
    let reject_per_s = value(
        &file.reject_per_s,
        "reject_per_s",
        0..=1_000_000,
        d.reject_per_s,
    );
    let mut pair = |high: &Option<Spanned<u32>>, low: &Option<Spanned<u32>>, name: &str, dh, dl| {
        let h = value(high, &format!("{name}_high_pct"), 1..=100, pct(dh));
        let l = value(low, &format!("{name}_low_pct"), 0..=100, pct(dl));
        (h, l)
    };
    let busy = pair(
        &file.busy_high_pct,
        &file.busy_low_pct,
        "busy",
        d.busy_high,
        d.busy_low,
    );
    let transactions = pair(
        &file.transactions_high_pct,
        &file.transactions_low_pct,
        "transactions",
        d.transactions_high,
        d.transactions_low,
    );
    let queue = pair(
        &file.queue_high_pct,
        &file.queue_low_pct,
        "queue",
        d.queue_high,
        d.queue_low,
    );
    for ((high, low), name, span) in [
        (busy, "busy", file.busy_low_pct.as_ref()),
        (
            transactions,
            "transactions",
            file.transactions_low_pct.as_ref(),
        ),
        (queue, "queue", file.queue_low_pct.as_ref()),
    ] {
        if low >= high {
            problem(
                span.map_or(0..0, |s| s.span()),
                format!("overload.{name}_low_pct = {low} is not below {name}_high_pct = {high}"),
                "the low mark (where overload ends) must be under the high mark (where it starts)",
            );
        }
    }
    let fraction = |p: u32| f64::from(p) / 100.0;
    OverloadConfig {
        enabled: file.enabled.unwrap_or(d.enabled),
        window_ms: u64::from(window_ms),
        busy_high: fraction(busy.0),
        busy_low: fraction(busy.1),
        transactions_high: fraction(transactions.0),
        transactions_low: fraction(transactions.1),
        queue_high: fraction(queue.0),
        queue_low: fraction(queue.1),
        reject_per_s,
        shed_in_kernel: file.shed_in_kernel.unwrap_or(d.shed_in_kernel),
    }
}

/// The `[probes]` table, each value checked against its range.
fn probes(
    file: &ProbesFile,
    problem: &mut impl FnMut(std::ops::Range<usize>, String, &str),
) -> ProbeConfig {
    let defaults = ProbeConfig::default();
    let mut value = |v: &Option<Spanned<u32>>, name: &str, range, default| {
        ranged(&mut *problem, v, &format!("probes.{name}"), range, default)
    };
    let interval_ms = value(
        &file.interval_ms,
        "interval_ms",
        100..=3_600_000,
        defaults.interval_ms as u32,
    );
    let timeout_ms = value(
        &file.timeout_ms,
        "timeout_ms",
        10..=60_000,
        defaults.timeout_ms as u32,
    );
    let failures = value(&file.failures, "failures", 1..=100, defaults.failures);
    let successes = value(&file.successes, "successes", 1..=100, defaults.successes);
    if timeout_ms >= interval_ms {
        if let Some(t) = &file.timeout_ms {
            problem(
                t.span(),
                format!("probes.timeout_ms = {timeout_ms} is not shorter than interval_ms = {interval_ms}"),
                "a probe must time out before the next one is due: make timeout_ms smaller",
            );
        }
    }
    let accepted_codes = match &file.accepted_codes {
        Some(codes) if codes.get_ref().iter().any(|c| !(200..=699).contains(c)) => {
            problem(
                codes.span(),
                format!(
                    "probes.accepted_codes = {:?} holds a code that is not final",
                    codes.get_ref()
                ),
                "list final codes 200..=699, or leave it out (any code below 500 but 408)",
            );
            Vec::new()
        }
        Some(codes) => codes.get_ref().clone(),
        None => Vec::new(),
    };
    ProbeConfig {
        enabled: file.enabled.unwrap_or(false),
        interval_ms: Millis::from(interval_ms),
        timeout_ms: Millis::from(timeout_ms),
        failures,
        successes,
        accepted_codes,
    }
}

/// The `[transactions]` table, each value checked against its range.
fn transactions(
    file: &TransactionsFile,
    problem: &mut impl FnMut(std::ops::Range<usize>, String, &str),
) -> TxnConfig {
    let defaults = TxnConfig::default();
    let mut ms = |value: &Option<Spanned<u32>>, name: &str, range, default| {
        ranged(&mut *problem, value, name, range, default)
    };
    let t = defaults.timers;
    let timers = TimerConfig {
        t1_ms: ms(&file.t1_ms, "t1_ms", 10..=10_000, t.t1_ms),
        t2_ms: ms(&file.t2_ms, "t2_ms", 10..=60_000, t.t2_ms),
        t4_ms: ms(&file.t4_ms, "t4_ms", 10..=60_000, t.t4_ms),
        timer_c_ms: ms(
            &file.timer_c_ms,
            "timer_c_ms",
            1_000..=3_600_000,
            t.timer_c_ms,
        ),
        timer_d_ms: ms(&file.timer_d_ms, "timer_d_ms", 0..=300_000, t.timer_d_ms),
        try_ms: ms(&file.try_ms, "try_ms", 10..=300_000, t.try_ms),
    };
    let retry_after_s = ms(
        &file.retry_after_s,
        "retry_after_s",
        1..=3600,
        defaults.retry_after_s,
    );
    let failover_codes = match &file.failover_codes {
        Some(codes)
            if codes
                .get_ref()
                .iter()
                .any(|c| !(300..=699).contains(c) || (600..=699).contains(c)) =>
        {
            problem(
                codes.span(),
                format!("failover_codes = {:?} holds a code that cannot fail over", codes.get_ref()),
                "list final codes 300..=599 (a 2xx or 6xx never fails over); default [500, 502, 503, 504]",
            );
            defaults.failover_codes.clone()
        }
        Some(codes) => codes.get_ref().clone(),
        None => defaults.failover_codes.clone(),
    };
    let max_transactions = match &file.max_per_shard {
        Some(m) if *m.get_ref() == 0 || *m.get_ref() > 1 << 24 => {
            problem(
                m.span(),
                format!("max_per_shard = {} is out of range", m.get_ref()),
                "use 1..=16777216 (default 65536)",
            );
            defaults.max_transactions
        }
        Some(m) => *m.get_ref(),
        None => defaults.max_transactions,
    };
    TxnConfig {
        timers,
        failover_codes,
        failover_after_provisional: file
            .failover_after_provisional
            .unwrap_or(defaults.failover_after_provisional),
        max_transactions,
        retry_after_s,
    }
}

/// `sip:IP:PORT` (or `IP:PORT`) as a socket address. Host names need a
/// resolver, which the gateway does not have yet.
pub fn backend_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(address);
    }
    let uri = Uri::parse(text.as_bytes()).map_err(|e| format!("not a SIP URI ({e:?})"))?;
    let ip = host_ip(uri.host).ok_or_else(|| {
        format!(
            "the host {:?} is not an IP address (names are not resolved yet)",
            String::from_utf8_lossy(uri.host)
        )
    })?;
    Ok(SocketAddr::new(ip, uri.port_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../examples/sipshard.toml");

    #[test]
    fn the_shipped_example_is_valid() {
        let config = parse(EXAMPLE).unwrap();
        assert_eq!(config.listen, "127.0.0.1:5060".parse().unwrap());
        assert_eq!(config.backends.len(), 2);
        assert_eq!(config.shards, 2);
        assert!(config.guard.flood.enabled, "turned on as an example");
        assert_eq!(
            config.guard.flood,
            FloodConfig {
                enabled: true,
                ..FloodConfig::default()
            },
            "with the default thresholds"
        );
        assert!(config.guard.admin.permits("::1".parse().unwrap()));
        assert!(!config.guard.admin.permits("192.0.2.1".parse().unwrap()));
        assert!(config.guard.sip.is_empty());
    }

    #[test]
    fn every_problem_has_its_line_and_a_fix() {
        let text = "listen = \"0.0.0.0:5060\"\nshards = 0\n[backends]\nalgorithm = \"random\"\nmembers = [\"sip:pbx.example.com\", \"sip:10.0.0.1:5080\"]\n";
        let problems = parse(text).unwrap_err();
        let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![1, 2, 4, 5], "{problems:#?}");
        assert!(problems.iter().all(|p| !p.fix.is_empty()));
        assert!(problems[3].to_string().contains("not an IP address"));
    }

    #[test]
    fn the_admin_address_is_checked_with_its_line() {
        let backends = "[backends]\nmembers = [\"sip:10.0.0.1\"]\n";
        let config = parse(&format!(
            "listen = \"127.0.0.1:5060\"\nadmin = \"127.0.0.1:9090\"\n{backends}"
        ))
        .unwrap();
        assert_eq!(config.admin, Some("127.0.0.1:9090".parse().unwrap()));
        let config = parse(&format!("listen = \"127.0.0.1:5060\"\n{backends}")).unwrap();
        assert_eq!(config.admin, None, "off unless asked for");
        let problems = parse(&format!(
            "listen = \"127.0.0.1:5060\"\nadmin = \"localhost\"\n{backends}"
        ))
        .unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].line, 2);
        assert!(problems[0].what.contains("admin"), "{problems:?}");
    }

    #[test]
    fn the_handoff_queue_has_a_byte_bound_that_fits_a_datagram() {
        let backends = "[backends]\nmembers = [\"sip:10.0.0.1\"]\n";
        let listen = "listen = \"127.0.0.1:5060\"\n";
        let config = parse(&format!("{listen}{backends}")).unwrap();
        assert_eq!(
            config.handoff_queue_bytes,
            shard::HANDOFF_QUEUE_BYTES_DEFAULT
        );
        let config = parse(&format!("{listen}handoff_queue_bytes = 65536\n{backends}")).unwrap();
        assert_eq!(config.handoff_queue_bytes, 65536);
        let problems =
            parse(&format!("{listen}handoff_queue_bytes = 65535\n{backends}")).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].line, 2);
        assert!(problems[0].fix.contains("64 KiB"), "{problems:?}");
    }

    #[test]
    fn syntax_and_unknown_keys_are_reported_with_their_line() {
        let problems = parse(
            "listen = \"127.0.0.1:5060\"\nshardz = 2\n[backends]\nmembers = [\"sip:10.0.0.1\"]\n",
        )
        .unwrap_err();
        assert_eq!(problems[0].line, 2, "{problems:?}");
        assert!(problems[0].what.contains("shardz"), "{problems:?}");
        let problems = parse("listen = \n").unwrap_err();
        assert_eq!(problems[0].line, 1);
    }

    #[test]
    fn transaction_values_are_checked_with_their_line() {
        let config = parse(EXAMPLE).unwrap();
        assert_eq!(
            config.txn,
            TxnConfig::default(),
            "the example spells out the defaults"
        );
        let text = "listen = \"127.0.0.1:5060\"\n[transactions]\nt1_ms = 0\nfailover_codes = [200]\ntry_ms = 700\n[backends]\nmembers = [\"sip:127.0.0.1:5080\"]\n";
        let problems = parse(text).unwrap_err();
        let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![3, 4], "{problems:#?}");
        let good = text.replace("t1_ms = 0\nfailover_codes = [200]\n", "");
        assert_eq!(parse(&good).unwrap().txn.timers.try_ms, 700);
    }

    #[test]
    fn overload_values_are_checked_with_their_line() {
        let config = parse(EXAMPLE).unwrap();
        assert_eq!(config.overload, OverloadConfig::default());
        let text = "listen = \"127.0.0.1:5060\"\n[overload]\nqueue_high_pct = 20\nqueue_low_pct = 30\nshed_in_kernel = false\n[backends]\nmembers = [\"sip:127.0.0.1:5080\"]\n";
        let problems = parse(text).unwrap_err();
        let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![4], "{problems:#?}");
        let good = parse(&text.replace("queue_low_pct = 30", "queue_low_pct = 10")).unwrap();
        assert!(!good.overload.shed_in_kernel);
        assert_eq!(good.overload.queue_high, 0.2);
    }

    #[test]
    fn the_example_routes_register_to_its_own_set() {
        let (config, routing) = parse_with_routing(EXAMPLE, None).unwrap();
        assert_eq!(routing.sets().len(), 2);
        let source = "192.0.2.1".parse().unwrap();
        let register =
            routing.set(routing.pick_set(b"REGISTER", Some(b"alice"), b"example.com", source));
        assert_eq!(&*register.name, "registrar");
        assert_eq!(register.algorithm, balance::Algorithm::RuriUserHash);
        assert_eq!(
            register.members[1].attrs.get("zone").map(String::as_str),
            Some("b")
        );
        let invite =
            routing.set(routing.pick_set(b"INVITE", Some(b"alice"), b"example.com", source));
        assert_eq!(&*invite.name, "default");
        let addresses: Vec<SocketAddr> = invite.members.iter().map(|m| m.address).collect();
        assert_eq!(
            addresses, config.backends,
            "[backends] is the set \"default\""
        );
    }

    #[test]
    fn set_and_route_problems_have_their_line_and_a_fix() {
        let text = r#"listen = "127.0.0.1:5060"
default_set = "main"
[[sets]]
name = "a"
algorithm = "fastest"
members = [
  { uri = "sip:10.0.0.1:5060", weight = 20000 },
  { uri = "sip:10.0.0.1:5060" },
  { uri = "sip:pbx.example.com" },
]
[[sets]]
name = "a"
members = []
[[routes]]
methods = ["INVITE"]
source = ["10.0.0.1/8", "2001:db8::/32"]
set = "b"
[[routes]]
domain = ""
set = "a"
"#;
        let problems = parse(text).unwrap_err();
        let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
        // Field by field first, then the sets and routes as a whole.
        assert_eq!(lines, [5, 9, 16, 7, 8, 12, 13, 17, 19, 2], "{problems:#?}");
        assert!(problems.iter().all(|p| !p.fix.is_empty()));
        assert!(problems[0].fix.contains("least-calls"), "{}", problems[0]);
        assert!(problems[2].what.contains("10.0.0.0/8"), "{}", problems[2]);
        assert!(
            problems[3].what.contains("weight = 20000"),
            "{}",
            problems[3]
        );
        assert!(problems[7].what.contains("set \"b\""), "{}", problems[7]);
    }

    #[test]
    fn a_set_holds_at_most_64_members() {
        let members: Vec<String> = (0..65)
            .map(|i| format!("  {{ uri = \"sip:10.0.0.1:{}\" }},\n", 5000 + i))
            .collect();
        let text = format!(
            "listen = \"127.0.0.1:5060\"\n[[sets]]\nname = \"default\"\nmembers = [\n{}]\n",
            members.concat()
        );
        let problems = parse(&text).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert_eq!(problems[0].line, 4);
        assert!(problems[0].what.contains("65 members"), "{}", problems[0]);
        let fits = text.replace("  { uri = \"sip:10.0.0.1:5064\" },\n", "");
        assert_eq!(parse(&fits).unwrap().backends.len(), 64);
    }

    #[test]
    fn sets_without_backends_and_the_default_set() {
        let text = "listen = \"127.0.0.1:5060\"\ndefault_set = \"pbx\"\n[[sets]]\nname = \"pbx\"\nalgorithm = \"call-id-hash\"\nmembers = [{ uri = \"sip:10.0.0.1\" }, { uri = \"sip:10.0.0.2\", weight = 0 }]\n";
        let config = parse(text).unwrap();
        assert_eq!(config.backends.len(), 2);
        assert_eq!(config.algorithm, Algorithm::CallIdHash);
        let problems = parse("listen = \"127.0.0.1:5060\"\n").unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].line, 0);
        assert!(problems[0].fix.contains("[[sets]]"), "{}", problems[0]);
        // [backends] is the set "default": a second one is a duplicate.
        let twice = "listen = \"127.0.0.1:5060\"\n[backends]\nmembers = [\"sip:10.0.0.1\"]\n[[sets]]\nname = \"default\"\nmembers = [{ uri = \"sip:10.0.0.2\" }]\n";
        let problems = parse(twice).unwrap_err();
        assert_eq!(
            problems.iter().map(|p| p.line).collect::<Vec<_>>(),
            [5],
            "{problems:#?}"
        );
        assert!(problems[0].fix.contains("[backends]"), "{}", problems[0]);
        let empty = "listen = \"127.0.0.1:5060\"\n[backends]\nmembers = []\n";
        let problems = parse(empty).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert_eq!(problems[0].what, "backends.members is empty");
    }

    #[test]
    fn a_reload_keeps_the_state_of_the_backends_it_keeps() {
        let (_, running) = parse_with_routing(EXAMPLE, None).unwrap();
        let kept = running.backend("sip:127.0.0.1:5081").unwrap();
        kept.set_state(balance::State::Draining);
        let edited = EXAMPLE.replace(
            "members = [\"sip:127.0.0.1:5080\", \"sip:127.0.0.1:5081\"]",
            "members = [\"sip:127.0.0.1:5081\"]",
        );
        assert_ne!(edited, EXAMPLE);
        let (_, reloaded) = parse_with_routing(&edited, Some(&*running)).unwrap();
        let default = reloaded.set(reloaded.default_set());
        assert_eq!(default.members.len(), 1);
        assert_eq!(default.members[0].health.state(), balance::State::Draining);
    }

    #[test]
    fn acl_and_flood_are_read_with_their_defaults() {
        let base = "listen = \"127.0.0.1:5060\"\n[backends]\nmembers = [\"sip:10.0.0.1\"]\n";
        let config = parse(base).unwrap();
        assert_eq!(config.guard, GuardConfig::default());
        assert!(!config.guard.sip_active(), "nothing to check unless asked");
        let text = format!(
            "{base}[acl]\nsip_allow = [\"10.0.0.0/8\", \"2001:db8::/32\"]\nsip_deny = [\"10.1.2.3/32\"]\n\
             admin_allow = [\"127.0.0.1\"]\n[flood]\nenabled = true\nrequests_per_second = 50\n\
             burst = 100\nban_s = 2\nsources_max = 1024\n"
        );
        let guard = parse(&text).unwrap().guard;
        assert!(guard.sip.permits("10.9.9.9".parse().unwrap()));
        assert!(!guard.sip.permits("10.1.2.3".parse().unwrap()));
        assert!(guard.sip.permits("2001:db8::7".parse().unwrap()));
        assert!(!guard.sip.permits("192.0.2.1".parse().unwrap()));
        assert!(guard.admin.permits("127.0.0.1".parse().unwrap()));
        assert!(!guard.admin.permits("127.0.0.2".parse().unwrap()));
        assert_eq!(
            guard.flood,
            FloodConfig {
                enabled: true,
                requests_per_second: 50,
                burst: 100,
                ban_s: 2,
                sources_max: 1024,
            }
        );
    }

    #[test]
    fn acl_and_flood_problems_have_their_line_and_a_fix() {
        let text = "listen = \"127.0.0.1:5060\"\n[backends]\nmembers = [\"sip:10.0.0.1\"]\n\
                    [acl]\nsip_allow = [\"10.0.0.0/8\",\n  \"10.0.0.1/8\"]\nadmin_deny = [\"localhost\"]\n\
                    [flood]\nban_s = 0\nrequests_per_second = 0\nsources_max = 4\n";
        let problems = parse(text).unwrap_err();
        let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [6, 7, 10, 9, 11], "{problems:#?}");
        assert!(problems.iter().all(|p| !p.fix.is_empty()));
        assert!(
            problems[0].what.contains("acl.sip_allow \"10.0.0.1/8\"")
                && problems[0].what.contains("10.0.0.0/8"),
            "{}",
            problems[0]
        );
        assert!(
            problems[1].what.contains("acl.admin_deny"),
            "{}",
            problems[1]
        );
        assert!(
            problems[3].what.contains("flood.ban_s = 0"),
            "{}",
            problems[3]
        );
        assert!(problems[3].fix.contains("1..=86400"), "{}", problems[3]);
        let too_many: Vec<String> = (0..=guard::NETWORKS_MAX)
            .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
            .collect();
        let text = format!(
            "listen = \"127.0.0.1:5060\"\n[backends]\nmembers = [\"sip:10.0.0.1\"]\n[acl]\nsip_deny = [{}]\n",
            too_many.join(", ")
        );
        let problems = parse(&text).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert_eq!(problems[0].line, 5);
        assert!(
            problems[0].what.contains("1025 networks"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn backend_forms() {
        assert_eq!(
            backend_address("sip:10.0.0.1"),
            Ok("10.0.0.1:5060".parse().unwrap())
        );
        assert_eq!(
            backend_address("sip:[2001:db8::1]:5070"),
            Ok("[2001:db8::1]:5070".parse().unwrap())
        );
        assert_eq!(
            backend_address("10.0.0.2:5080"),
            Ok("10.0.0.2:5080".parse().unwrap())
        );
        assert!(backend_address("sip:pbx.example.com").is_err());
    }
}
