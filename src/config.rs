//! The TOML configuration file: what it holds, and the checks that turn
//! it into a runtime [`shard::Config`]. Control plane
//! only: read at start-up (and by `--check-config`), never on the packet
//! path.
//!
//! Every problem is reported with its line and what to write instead, all
//! of them at once where the file parsed.

use std::net::SocketAddr;

use serde::Deserialize;
use toml::Spanned;

use crate::proxy::Algorithm;
use crate::shard;
use crate::sip::{host_ip, Limits, Uri};
use crate::txn::{TimerConfig, TxnConfig};

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
    /// The backend pool.
    pub backends: Backends,
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
    let algorithm = match file.backends.algorithm.get_ref().as_str() {
        "round-robin" => Algorithm::RoundRobin,
        "call-id-hash" => Algorithm::CallIdHash,
        other => {
            problem(
                file.backends.algorithm.span(),
                format!("algorithm = {other:?} is not known"),
                "use \"round-robin\" or \"call-id-hash\"",
            );
            Algorithm::RoundRobin
        }
    };
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
    let mut backends = Vec::new();
    for member in &file.backends.members {
        match backend_address(member.get_ref()) {
            Ok(address) => backends.push(address),
            Err(why) => problem(
                member.span(),
                format!("backend {:?}: {why}", member.get_ref()),
                "write it as \"sip:10.0.0.1:5060\"",
            ),
        }
    }
    if file.backends.members.is_empty() {
        problem(
            0..0,
            "backends.members is empty".to_string(),
            "list at least one backend, e.g. members = [\"sip:127.0.0.1:5080\"]",
        );
    }
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
    match (listen, problems.is_empty()) {
        (Some(listen), true) => Ok(shard::Config {
            listen,
            backends,
            algorithm,
            shards,
            cpus: file.cpus,
            limits,
            txn,
            handoff_queue_len,
            socket_receive_buffer_bytes: file.socket.receive_buffer_bytes,
            socket_send_buffer_bytes: file.socket.send_buffer_bytes,
            shard_port_base: file.socket.shard_port_base,
            steering: file.socket.steering.unwrap_or(true),
            io,
            admin,
        }),
        _ => Err(problems),
    }
}

/// The `[transactions]` table, each value checked against its range.
fn transactions(
    file: &TransactionsFile,
    problem: &mut impl FnMut(std::ops::Range<usize>, String, &str),
) -> TxnConfig {
    let defaults = TxnConfig::default();
    let mut ms = |value: &Option<Spanned<u32>>,
                  name: &str,
                  range: std::ops::RangeInclusive<u32>,
                  default: u32| match value {
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
