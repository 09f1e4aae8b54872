//! The Prometheus text the admin API serves from what each shard
//! publishes ([`ShardStats`], kept by `shard::stats`) and from the
//! routing's backends.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use hdrhistogram::Histogram;

use crate::balance::{Routing, State};
use crate::guard::GuardCounters;
use crate::shard::stats::{Kind, ShardStats, Stat};
use crate::sip::Method;

/// The upper bounds of the latency histogram's buckets, in seconds.
const LATENCY_BUCKETS_S: [f64; 19] = [
    10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

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
    use crate::proxy::Limit;
    use crate::shard::stats::{classify, MessageCounts};

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
