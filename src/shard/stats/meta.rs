//! The metadata of every value a shard publishes: its Prometheus family,
//! help text, type and distinguishing label. The control thread's
//! `/metrics` renders from it; a family's stats sit next to each other in
//! [`Stat::ALL`], so that the family is written once.

use crate::proxy::Limit;

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
    /// Connections (TCP): open now, opened, closed by reason.
    ConnectionsOpen,
    ConnectionsAccepted,
    ConnectionsConnected,
    ConnectionsClosedPeer,
    ConnectionsClosedIdle,
    ConnectionsClosedSlow,
    ConnectionsClosedBacklog,
    ConnectionsClosedBudget,
    ConnectionsRefused,
    ConnectionsConnectFailed,
    ConnectionsClosedHandshakeTimeout,
    ConnectionsClosedTls,
    ConnectionsClosedWs,
    TlsHandshakesOk,
    TlsHandshakesFailed,
    WsUpgraded,
    WsRefused,
    StreamFaultNoContentLength,
    StreamFaultBadContentLength,
    StreamFaultHeadersTooLong,
    StreamFaultMessageTooLarge,
    StreamFaultBufferFull,
    StreamPings,
    StreamSendFailed,
    MovedToTcp,
}

impl Stat {
    pub const ALL: [Stat; 73] = [
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
        Stat::ConnectionsOpen,
        Stat::ConnectionsAccepted,
        Stat::ConnectionsConnected,
        Stat::ConnectionsClosedPeer,
        Stat::ConnectionsClosedIdle,
        Stat::ConnectionsClosedSlow,
        Stat::ConnectionsClosedBacklog,
        Stat::ConnectionsClosedBudget,
        Stat::ConnectionsRefused,
        Stat::ConnectionsConnectFailed,
        Stat::ConnectionsClosedHandshakeTimeout,
        Stat::ConnectionsClosedTls,
        Stat::ConnectionsClosedWs,
        Stat::TlsHandshakesOk,
        Stat::TlsHandshakesFailed,
        Stat::WsUpgraded,
        Stat::WsRefused,
        Stat::StreamFaultNoContentLength,
        Stat::StreamFaultBadContentLength,
        Stat::StreamFaultHeadersTooLong,
        Stat::StreamFaultMessageTooLarge,
        Stat::StreamFaultBufferFull,
        Stat::StreamPings,
        Stat::StreamSendFailed,
        Stat::MovedToTcp,
    ];

    /// The stat's family, help, type and label: from the one part of the
    /// table (`PARTS`) that names it.
    pub fn meta(self) -> Meta {
        let (family, help, kind, label) = PARTS
            .iter()
            .find_map(|part| part(self))
            .expect("every stat is in one part of the table (see the tests)");
        Meta {
            family,
            help,
            kind,
            label,
        }
    }
}

/// A stat's family name, help, type and its one distinguishing label.
pub struct Meta {
    pub family: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub label: Option<(&'static str, &'static str)>,
}

/// One row of the table: family, help, type, label.
type Row = (
    &'static str,
    &'static str,
    Kind,
    Option<(&'static str, &'static str)>,
);

/// The table, in parts by kind of stat; each part answers for its own.
const PARTS: [fn(Stat) -> Option<Row>; 8] = [
    loop_row,
    proxy_row,
    timeout_row,
    overload_row,
    table_row,
    dropped_row,
    limit_row,
    stream_row,
];

/// The shard's own loop: datagrams in and out, handoffs, turns, work.
fn loop_row(stat: Stat) -> Option<Row> {
    use Kind::Counter;
    Some(match stat {
        Stat::Received => (
            "datagrams_received_total",
            "Datagrams received.",
            Counter,
            None,
        ),
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
        _ => return None,
    })
}

/// What the proxy core did with requests and responses.
fn proxy_row(stat: Stat) -> Option<Row> {
    use Kind::Counter;
    Some(match stat {
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
        Stat::LoopsDetected => ("loops_detected_total", "Requests answered 482 (Loop Detected).", Counter, None),
        Stat::LocalAcksAbsorbed => (
            "local_acks_absorbed_total",
            "ACKs for the gateway's own final answers (503, 483, ...), absorbed rather than forwarded.",
            Counter,
            None,
        ),
        _ => return None,
    })
}

/// Transactions and tries ended by a timer or an ICMP error.
fn timeout_row(stat: Stat) -> Option<Row> {
    use Kind::Counter;
    Some(match stat {
        Stat::Timeouts => (
            "transaction_timeouts_total",
            "Client transactions ended by Timer B or F.",
            Counter,
            None,
        ),
        Stat::TryTimeouts => (
            "try_timeouts_total",
            "INVITE tries given up by the per-try timer before any response.",
            Counter,
            None,
        ),
        Stat::TimerC => (
            "timer_c_total",
            "Proxied INVITEs ended by Timer C.",
            Counter,
            None,
        ),
        Stat::AckTimeouts => (
            "ack_timeouts_total",
            "Non-2xx finals never ACKed (Timer H).",
            Counter,
            None,
        ),
        Stat::Unreachable => (
            "icmp_unreachable_total",
            "Tries failed by an ICMP unreachable error, or by a refused or broken connection.",
            Counter,
            None,
        ),
        _ => return None,
    })
}

/// Requests turned away: a full table, no member, overload and shedding.
fn overload_row(stat: Stat) -> Option<Row> {
    use Kind::{Counter, Gauge};
    Some(match stat {
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
        _ => return None,
    })
}

/// What the shard's tables hold now (gauges).
fn table_row(stat: Stat) -> Option<Row> {
    use Kind::Gauge;
    Some(match stat {
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
        _ => return None,
    })
}

/// Datagrams dropped, one label per reason.
fn dropped_row(stat: Stat) -> Option<Row> {
    Some(match stat {
        Stat::DroppedHandoffQueueFull => dropped("handoff_queue_full"),
        Stat::DroppedSendFailed => dropped("send_failed"),
        Stat::DroppedTruncated => dropped("truncated"),
        Stat::DroppedMalformed => dropped("malformed"),
        Stat::DroppedUnanswerable => dropped("unanswerable"),
        Stat::DroppedResponseNotOurs => dropped("response_not_ours"),
        Stat::DroppedResponseForUs => dropped("response_for_us"),
        Stat::DroppedUnresolved => dropped("unresolved"),
        Stat::DroppedBufferFull => dropped("buffer_full"),
        Stat::DroppedNoBackend => dropped("no_backend"),
        _ => return None,
    })
}

/// Limits exceeded, one label per limit.
fn limit_row(stat: Stat) -> Option<Row> {
    Some(match stat {
        Stat::LimitDatagramBytes => limit(Limit::DatagramBytes),
        Stat::LimitHeaders => limit(Limit::Headers),
        Stat::LimitHeaderLineBytes => limit(Limit::HeaderLineBytes),
        Stat::LimitViaValues => limit(Limit::ViaValues),
        Stat::LimitTransactions => limit(Limit::Transactions),
        Stat::LimitUdpPayload => limit(Limit::UdpPayload),
        _ => return None,
    })
}
/// Connections: open, opened, closed by reason; framing faults; pings.
fn stream_row(stat: Stat) -> Option<Row> {
    use Kind::{Counter, Gauge};
    let opened = |how| {
        (
            "connections_opened_total",
            "Connections opened, by how: accepted from peers or connected to them.",
            Counter,
            Some(("how", how)),
        )
    };
    let closed = |reason| {
        ("connections_closed_total", "Connections closed, by reason (peer: closed or reset by it; refused: past a connection bound at accept).", Counter, Some(("reason", reason)))
    };
    let handshakes = |result| {
        (
            "tls_handshakes_total",
            "TLS handshakes, by result (failed: untrusted or missing certificate, no common version or cipher).",
            Counter,
            Some(("result", result)),
        )
    };
    let upgrades = |result| {
        (
            "ws_upgrades_total",
            "WebSocket upgrades, by result (refused: no sip subprotocol, an origin not allowed, not an upgrade).",
            Counter,
            Some(("result", result)),
        )
    };
    let fault = |f: crate::sip::StreamFault| {
        (
            "stream_faults_total",
            "Connections closed because their byte stream could not be framed, by fault.",
            Counter,
            Some(("fault", f.name())),
        )
    };
    use crate::sip::StreamFault as F;
    Some(match stat {
        Stat::ConnectionsOpen => (
            "connections_open",
            "Connections open now (TCP and TLS).",
            Gauge,
            None,
        ),
        Stat::ConnectionsAccepted => opened("accepted"),
        Stat::ConnectionsConnected => opened("connected"),
        Stat::ConnectionsClosedPeer => closed("peer"),
        Stat::ConnectionsClosedIdle => closed("idle"),
        Stat::ConnectionsClosedSlow => closed("slow_message"),
        Stat::ConnectionsClosedBacklog => closed("send_backlog"),
        Stat::ConnectionsClosedBudget => closed("buffer_budget"),
        Stat::ConnectionsRefused => closed("refused"),
        Stat::ConnectionsConnectFailed => closed("connect_failed"),
        Stat::ConnectionsClosedHandshakeTimeout => closed("handshake_timeout"),
        Stat::ConnectionsClosedTls => closed("tls_error"),
        Stat::TlsHandshakesOk => handshakes("ok"),
        Stat::TlsHandshakesFailed => handshakes("failed"),
        Stat::WsUpgraded => upgrades("ok"),
        Stat::WsRefused => upgrades("refused"),
        Stat::ConnectionsClosedWs => closed("ws_error"),
        Stat::StreamFaultNoContentLength => fault(F::NoContentLength),
        Stat::StreamFaultBadContentLength => fault(F::BadContentLength),
        Stat::StreamFaultHeadersTooLong => fault(F::HeadersTooLong),
        Stat::StreamFaultMessageTooLarge => fault(F::MessageTooLarge),
        Stat::StreamFaultBufferFull => fault(F::BufferFull),
        Stat::StreamPings => (
            "stream_pings_total",
            "Keep-alive pings (double CRLF) answered with a pong.",
            Counter,
            None,
        ),
        Stat::MovedToTcp => ("requests_moved_to_tcp_total", "Requests too large for a datagram (udp_request_bytes_max) sent to their UDP backend over TCP instead (RFC 3261 §18.1.1).", Counter, None),
        Stat::StreamSendFailed => (
            "stream_send_failed_total",
            "Messages for a connection that was gone and could not be opened again.",
            Counter,
            None,
        ),
        _ => return None,
    })
}

fn dropped(reason: &'static str) -> Row {
    (
        "dropped_total",
        "Datagrams dropped, by reason.",
        Kind::Counter,
        Some(("reason", reason)),
    )
}

/// Every limit in one family, so that one query sees a peer hitting any
/// of them.
fn limit(limit: Limit) -> Row {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stat_is_in_exactly_one_part_of_the_table() {
        for stat in Stat::ALL {
            let parts = PARTS.iter().filter(|part| part(stat).is_some()).count();
            assert_eq!(parts, 1, "{stat:?}");
        }
    }

    #[test]
    fn a_family_is_one_run_of_stats() {
        let mut seen: Vec<&str> = Vec::new();
        for stat in Stat::ALL {
            let family = stat.meta().family;
            if seen.last() != Some(&family) {
                assert!(!seen.contains(&family), "{family} is split");
                seen.push(family);
            }
        }
    }
}
