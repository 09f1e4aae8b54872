//! The checks that turn the file as written ([`File`]) into the
//! application's configuration ([`AppConfig`]): each value in its range,
//! each address parsed, every problem reported with its place. What the
//! file leaves out comes from [`AppConfig::default`], which the command
//! line starts from too.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::routing::{networks, routing};
use super::schema::{
    AclFile, File, FloodFile, LimitsFile, Listen, OverloadFile, ProbesFile, StreamsFile, TlsFile,
    TransactionsFile, WebSocketFile,
};
use super::{AdminConfig, AppConfig, Listeners, Problems, Refused};
use crate::balance::{ProbeConfig, Routing};
use crate::guard::{self, Acl, FloodConfig, GuardConfig};
use crate::proxy::overload::OverloadConfig;
use crate::shard;
use crate::sip::{self, Limits, StreamLimits};
use crate::tls::TlsFiles;
use crate::txn::{TimerConfig, TxnConfig};

/// The whole file, table by table in the order problems are reported;
/// `None` when any problem was found.
pub(super) fn app(
    file: File,
    previous: Option<&Routing>,
    problems: &mut Problems,
) -> Option<AppConfig> {
    let d = AppConfig::default();
    let listen = listen(&file.listen, problems);
    let shards = sized(
        problems,
        file.shards.as_ref(),
        "shards",
        1..=1024,
        d.shard.shards,
        "use 1..=1024, usually one per core",
    );
    let handoff_queue_len = sized(
        problems,
        file.handoff_queue_len.as_ref(),
        "handoff_queue_len",
        1..=1 << 20,
        d.shard.handoff_queue_len,
        "use 1..=1048576 (default 8192)",
    );
    let handoff_queue_bytes = sized(
        problems,
        file.handoff_queue_bytes.as_ref(),
        "handoff_queue_bytes",
        1 << 16..=1 << 30,
        d.shard.handoff_queue_bytes,
        "use 65536..=1073741824, room for at least one 64 KiB datagram (default 16777216)",
    );
    let routing = routing(&file, previous, problems);
    let io = io(file.io.as_ref(), d.shard.io, problems);
    let limits = limits(&file.limits, &d.shard.limits, problems);
    let mut streams = streams(&file.streams, &d.shard.streams, problems);
    streams.websocket = websocket(&file.websocket, problems);
    let txn = transactions(&file.transactions, &d.shard.txn, problems);
    let probes = probes(&file.probes, &d.probes, problems);
    let overload = overload(&file.overload, &d.shard.overload, problems);
    let (guard, admin_acl) = guard(&file.acl, &file.flood, &d.shard.guard.flood, problems);
    let admin = admin_address(file.admin.as_ref(), problems);
    let (listen, routing) = (listen?, routing?);
    let socket = &file.socket;
    let mut shard = shard::Config {
        listen: listen.udp,
        tcp_listen: listen.tcp,
        tls_listen: listen.tls,
        ws_listen: listen.ws,
        wss_listen: listen.wss,
        tls: None,
        streams,
        shards,
        cpus: file.cpus,
        limits,
        txn,
        handoff_queue_len,
        handoff_queue_bytes,
        socket_receive_buffer_bytes: socket.receive_buffer_bytes,
        socket_send_buffer_bytes: socket.send_buffer_bytes,
        shard_port_base: socket.shard_port_base,
        steering: socket.steering.unwrap_or(d.shard.steering),
        io,
        routing: Arc::new(routing),
        overload,
        guard,
    };
    for why in super::transport_problems(&shard) {
        problems.add(
            file.listen.span(),
            why,
            "listen on each transport a backend uses, in its address family",
        );
    }
    let tls = tls_files(file.tls.as_ref());
    if problems.is_empty() {
        match super::tls_context(&shard, &tls) {
            Ok(context) => shard.tls = context,
            Err(error) => {
                let span = file.tls.as_ref().map_or(file.listen.span(), |t| t.span());
                problems.add(span, format!("tls: {error}"), error.fix());
            }
        }
    }
    let admin = AdminConfig {
        address: admin,
        acl: admin_acl,
    };
    problems.is_empty().then_some(AppConfig {
        shard,
        probes,
        admin,
        tls,
    })
}

/// The `[websocket]` table.
fn websocket(file: &WebSocketFile, problems: &mut Problems) -> shard::WsConfig {
    let d = shard::WsConfig::default();
    let mut size = |v: &Option<Spanned<usize>>, name: &str, default| {
        sized(
            &mut *problems,
            v.as_ref(),
            &format!("websocket.{name}"),
            1024..=1 << 20,
            default,
            "use 1024..=1048576 (default 65536)",
        )
    };
    shard::WsConfig {
        origins: file.origins.clone().into(),
        message_bytes_max: size(
            &file.message_bytes_max,
            "message_bytes_max",
            d.message_bytes_max,
        ),
        frame_bytes_max: size(&file.frame_bytes_max, "frame_bytes_max", d.frame_bytes_max),
    }
}

/// The `[tls]` table's files, as written.
fn tls_files(file: Option<&Spanned<TlsFile>>) -> TlsFiles {
    let Some(file) = file.map(Spanned::get_ref) else {
        return TlsFiles::default();
    };
    TlsFiles {
        cert: file.cert.clone(),
        key: file.key.clone(),
        client_ca: file.client_ca.clone(),
        backend_ca: file.backend_ca.clone(),
    }
}

/// `listen`: the addresses peers reach us on, since they go in our Via
/// and Record-Route: the UDP one, and the TCP and TLS ones when served.
fn listen(listen: &Spanned<Listen>, problems: &mut Problems) -> Option<Listeners> {
    let list = listen.get_ref().list();
    match super::listeners(&list) {
        Ok(listeners) => Some(listeners),
        Err(Refused { what, fix }) => {
            problems.add(listen.span(), format!("listen: {what}"), &fix);
            None
        }
    }
}

/// The `[streams]` table.
fn streams(
    file: &StreamsFile,
    d: &shard::StreamConfig,
    problems: &mut Problems,
) -> shard::StreamConfig {
    let mut size = |v: &Option<Spanned<usize>>, name: &str, range, default, fix: &str| {
        sized(
            &mut *problems,
            v.as_ref(),
            &format!("streams.{name}"),
            range,
            default,
            fix,
        )
    };
    let secs = |d: Duration| d.as_secs() as usize;
    let ms = |d: Duration| d.as_millis() as usize;
    let message_bytes_max = size(
        &file.message_bytes_max,
        "message_bytes_max",
        1024..=1 << 20,
        d.framing.message_bytes_max,
        "use 1024..=1048576 (default 65536)",
    );
    let buffered_bytes_max = size(
        &file.buffered_bytes_max,
        "buffered_bytes_max",
        1 << 20..=1 << 40,
        d.buffered_bytes_max,
        "use 1048576..=1099511627776 (default 268435456)",
    );
    shard::StreamConfig {
        buffered_bytes_max,
        connections_max: size(
            &file.connections_max,
            "connections_max",
            1..=1 << 22,
            d.connections_max,
            "use 1..=4194304 (default 32768)",
        ),
        connections_per_source_max: size(
            &file.connections_per_source_max,
            "connections_per_source_max",
            1..=1 << 22,
            d.connections_per_source_max,
            "use 1..=4194304 (default 4096)",
        ),
        idle_timeout: Duration::from_secs(size(
            &file.idle_timeout_s,
            "idle_timeout_s",
            1..=86_400,
            secs(d.idle_timeout),
            "use 1..=86400 (default 180)",
        ) as u64),
        message_timeout: Duration::from_millis(size(
            &file.message_timeout_ms,
            "message_timeout_ms",
            100..=600_000,
            ms(d.message_timeout),
            "use 100..=600000 (default 10000)",
        ) as u64),
        handshake_timeout: Duration::from_millis(size(
            &file.handshake_timeout_ms,
            "handshake_timeout_ms",
            100..=600_000,
            ms(d.handshake_timeout),
            "use 100..=600000 (default 5000)",
        ) as u64),
        connect_timeout: Duration::from_millis(size(
            &file.connect_timeout_ms,
            "connect_timeout_ms",
            100..=600_000,
            ms(d.connect_timeout),
            "use 100..=600000 (default 3000)",
        ) as u64),
        send_queue_bytes_max: size(
            &file.send_queue_bytes_max,
            "send_queue_bytes_max",
            1 << 16..=1 << 30,
            d.send_queue_bytes_max,
            "use 65536..=1073741824 (default 1048576)",
        ),
        websocket: shard::WsConfig::default(),
        framing: StreamLimits {
            message_bytes_max,
            buffer_bytes_max: 2 * message_bytes_max,
        },
    }
}

/// `admin`: the admin API's address, off when absent.
fn admin_address(admin: Option<&Spanned<String>>, problems: &mut Problems) -> Option<SocketAddr> {
    let admin = admin?;
    match admin.get_ref().parse::<SocketAddr>() {
        Ok(address) => Some(address),
        Err(_) => {
            problems.add(
                admin.span(),
                format!("admin = {:?} is not an IP:port address", admin.get_ref()),
                "write it as IP:PORT, e.g. admin = \"127.0.0.1:9090\"",
            );
            None
        }
    }
}

/// A count or size that must lie in `range`: out of it is a problem with
/// `fix`, and the default is used.
fn sized(
    problems: &mut Problems,
    value: Option<&Spanned<usize>>,
    name: &str,
    range: RangeInclusive<usize>,
    default: usize,
    fix: &str,
) -> usize {
    match value {
        Some(v) if !range.contains(v.get_ref()) => {
            problems.add(
                v.span(),
                format!("{name} = {} is out of range", v.get_ref()),
                fix,
            );
            default
        }
        Some(v) => *v.get_ref(),
        None => default,
    }
}

/// `io`: which receive loop the shards run.
fn io(io: Option<&Spanned<String>>, default: shard::Io, problems: &mut Problems) -> shard::Io {
    match io.map(|i| (i.get_ref().as_str(), i.span())) {
        None => default,
        Some(("auto", _)) => shard::Io::Auto,
        Some(("uring", _)) => shard::Io::Uring,
        Some(("epoll", _)) => shard::Io::Epoll,
        Some((other, span)) => {
            problems.add(
                span,
                format!("io = {other:?} is not known"),
                "use \"auto\", \"uring\" or \"epoll\"",
            );
            default
        }
    }
}

/// The `[limits]` table, checked as a whole by [`Limits::check`].
fn limits(file: &LimitsFile, defaults: &Limits, problems: &mut Problems) -> Limits {
    let limits = Limits {
        datagram_bytes_max: file
            .datagram_bytes_max
            .unwrap_or(defaults.datagram_bytes_max),
        headers_max: file.headers_max.unwrap_or(defaults.headers_max),
        header_line_bytes_max: file
            .header_line_bytes_max
            .unwrap_or(defaults.header_line_bytes_max),
        via_values_max: file.via_values_max.unwrap_or(defaults.via_values_max),
    };
    if let Err(e) = limits.check() {
        problems.add(
            0..0,
            format!("[limits] {e}"),
            "set it within the range given",
        );
    }
    limits
}

/// The `[acl]` and `[flood]` tables: the shards' guard, and the admin
/// API's ACL.
fn guard(
    acl: &AclFile,
    flood: &FloodFile,
    defaults: &FloodConfig,
    problems: &mut Problems,
) -> (GuardConfig, Acl) {
    let mut list = |list: &Option<Spanned<Vec<Spanned<String>>>>, key: &str| match list {
        None => (Vec::new(), 0..0),
        Some(l) => (networks(l, &format!("acl.{key}"), &mut *problems), l.span()),
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
            problems.add(
                span,
                format!("the list holds {e}"),
                "merge networks into wider ones, or filter in a firewall in front",
            );
            Acl::default()
        })
    });
    let mut value = |v: &Option<Spanned<u32>>, name: &str, range, default| {
        ranged(&mut *problems, v, &format!("flood.{name}"), range, default)
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
    (GuardConfig { sip, flood }, admin)
}

/// A number that must lie in `range`: out of it is a problem (with the
/// range and the default as the fix) and the default is used.
fn ranged(
    problems: &mut Problems,
    value: &Option<Spanned<u32>>,
    name: &str,
    range: std::ops::RangeInclusive<u32>,
    default: u32,
) -> u32 {
    match value {
        Some(v) if !range.contains(v.get_ref()) => {
            problems.add(
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
fn overload(file: &OverloadFile, d: &OverloadConfig, problems: &mut Problems) -> OverloadConfig {
    let pct = |f: f64| (f * 100.0).round() as u32;
    let mut value = |v: &Option<Spanned<u32>>, name: &str, range, default| {
        ranged(
            &mut *problems,
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
    low_marks_under_high(file, [busy, transactions, queue], problems);
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

/// Each `[overload]` pair's low mark (where overload ends) under its high
/// mark (where it starts); `marks` are the (high, low) percentages of
/// busy, transactions and queue, in that order.
fn low_marks_under_high(file: &OverloadFile, marks: [(u32, u32); 3], problems: &mut Problems) {
    let lows = [
        ("busy", file.busy_low_pct.as_ref()),
        ("transactions", file.transactions_low_pct.as_ref()),
        ("queue", file.queue_low_pct.as_ref()),
    ];
    for ((high, low), (name, span)) in marks.into_iter().zip(lows) {
        if low >= high {
            problems.add(
                span.map_or(0..0, |s| s.span()),
                format!("overload.{name}_low_pct = {low} is not below {name}_high_pct = {high}"),
                "the low mark (where overload ends) must be under the high mark (where it starts)",
            );
        }
    }
}

/// The `[probes]` table, each value checked against its range.
fn probes(file: &ProbesFile, defaults: &ProbeConfig, problems: &mut Problems) -> ProbeConfig {
    let mut value = |v: &Option<Spanned<u32>>, name: &str, range, default| {
        ranged(&mut *problems, v, &format!("probes.{name}"), range, default)
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
            problems.add(
                t.span(),
                format!("probes.timeout_ms = {timeout_ms} is not shorter than interval_ms = {interval_ms}"),
                "a probe must time out before the next one is due: make timeout_ms smaller",
            );
        }
    }
    let accepted_codes = match &file.accepted_codes {
        Some(codes) if codes.get_ref().iter().any(|c| !(200..=699).contains(c)) => {
            problems.add(
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
        None => defaults.accepted_codes.clone(),
    };
    ProbeConfig {
        enabled: file.enabled.unwrap_or(defaults.enabled),
        interval_ms: u64::from(interval_ms),
        timeout_ms: u64::from(timeout_ms),
        failures,
        successes,
        accepted_codes,
    }
}

/// The `[transactions]` table, each value checked against its range.
fn transactions(
    file: &TransactionsFile,
    defaults: &TxnConfig,
    problems: &mut Problems,
) -> TxnConfig {
    let mut ms = |value: &Option<Spanned<u32>>, name: &str, range, default| {
        ranged(&mut *problems, value, name, range, default)
    };
    let t = &defaults.timers;
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
            problems.add(
                codes.span(),
                format!("failover_codes = {:?} holds a code that cannot fail over", codes.get_ref()),
                "list final codes 300..=599 (a 2xx or 6xx never fails over); default [500, 502, 503, 504]",
            );
            defaults.failover_codes.clone()
        }
        Some(codes) => codes.get_ref().clone(),
        None => defaults.failover_codes.clone(),
    };
    let max_transactions = sized(
        problems,
        file.max_per_shard.as_ref(),
        "max_per_shard",
        1..=1 << 24,
        defaults.max_transactions,
        "use 1..=16777216 (default 65536)",
    );
    let udp_request_bytes_max = sized(
        problems,
        file.udp_request_bytes_max.as_ref(),
        "udp_request_bytes_max",
        512..=sip::UDP_PAYLOAD_MAX,
        defaults.udp_request_bytes_max,
        "use 512..=65507 (default 1300, RFC 3261 §18.1.1)",
    );
    TxnConfig {
        udp_request_bytes_max,
        timers,
        failover_codes,
        failover_after_provisional: file
            .failover_after_provisional
            .unwrap_or(defaults.failover_after_provisional),
        max_transactions,
        retry_after_s,
    }
}
