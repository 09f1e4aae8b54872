//! Health probes: an OPTIONS request to every member at an interval, and
//! the state each member is in as a result. Sans-I/O like the proxy core:
//! time (milliseconds) and datagrams in; OPTIONS to send, state changes and
//! round-trip times out. The control thread runs it on a socket of its own
//! (`control::Control::start_probes`); it sits here, beside the member
//! states it changes, so that `config` can build a [`ProbeConfig`] without
//! importing the control plane.
//!
//! States (RFC 3261 §11 says OPTIONS asks a server what it can do; any
//! final answer shows that it is alive):
//!
//! ```text
//!   Up ──(failures ≥ threshold)──► Down ──(a success)──► Probing
//!   ▲                                ▲                      │
//!   └──────(successes ≥ threshold)───┼──────────────────────┘
//!                                    └──(a failure)─────────┘
//!   Draining: set by the admin; probes go on but change nothing.
//! ```
//!
//! A failure is a probe left unanswered for `timeout`, or a final answer
//! whose code is not accepted (by default: 500 and above, and 408).

use std::fmt::Write as _;
use std::net::SocketAddr;

use super::State;
use crate::sip::{Limits, Scanner};

/// Milliseconds since an epoch the caller picks (the probe thread's
/// start). `txn::Millis` is the same; balance sits below txn, so it is
/// not imported from there.
pub type Millis = u64;

/// Probe settings (the config's `[probes]` table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    pub enabled: bool,
    pub interval_ms: Millis,
    pub timeout_ms: Millis,
    /// Consecutive failures that take an up member down.
    pub failures: u32,
    /// Consecutive successes that bring a probing member up.
    pub successes: u32,
    /// Final codes that count as alive; empty: every code below 500
    /// except 408.
    pub accepted_codes: Vec<u16>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            // Off unless configured, as Kamailio's dispatcher and OpenSIPS's
            // load_balancer: a backend that does not answer OPTIONS would
            // otherwise be taken down by a gateway upgrade.
            enabled: false,
            interval_ms: 5_000,
            timeout_ms: 2_000,
            failures: 2,
            successes: 2,
            accepted_codes: Vec::new(),
        }
    }
}

impl ProbeConfig {
    fn accepts(&self, code: u16) -> bool {
        match self.accepted_codes.is_empty() {
            true => code < 500 && code != 408,
            false => self.accepted_codes.contains(&code),
        }
    }
}

/// What a probe's outcome did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A member changed state.
    Transition {
        member: usize,
        from: State,
        to: State,
    },
    /// A final answer came back after `rtt_us` (for the latency EWMA).
    RoundTrip { member: usize, rtt_us: u64 },
    /// A probe ended: answered (with its code) or timed out; `alive` when
    /// it counts as a success.
    Probed {
        member: usize,
        result: ProbeResult,
        alive: bool,
    },
}

struct Member {
    address: SocketAddr,
    state: State,
    /// Consecutive failures (while up) or successes (while probing).
    streak: u32,
    /// The outstanding probe: its sequence number and when it left.
    pending: Option<(u32, Millis)>,
    next_probe: Millis,
    /// The result of the last probe, for the admin API.
    last: Option<ProbeResult>,
}

/// The last probe's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeResult {
    Answered(u16),
    TimedOut,
}

/// Where the prober writes an OPTIONS to send.
pub trait SendProbe {
    fn send(&mut self, to: SocketAddr, datagram: &[u8]);
}

pub struct Prober {
    config: ProbeConfig,
    /// Our address, for Via, From and Call-ID.
    local: SocketAddr,
    members: Vec<Member>,
    seq: u32,
    scanner: Scanner,
    /// The From tag: one per run, so that a restarted gateway's probes are
    /// distinct.
    tag: u64,
    out: String,
}

impl Prober {
    /// Probes `addresses` (members, by index) from `local`. The first
    /// probes go out at once, spread over the first interval.
    pub fn new(
        config: ProbeConfig,
        local: SocketAddr,
        addresses: &[SocketAddr],
        now: Millis,
        tag: u64,
    ) -> Prober {
        let n = addresses.len().max(1) as Millis;
        let members = addresses
            .iter()
            .enumerate()
            .map(|(i, &address)| Member {
                address,
                state: State::Up,
                streak: 0,
                pending: None,
                next_probe: now + config.interval_ms * i as Millis / n,
                last: None,
            })
            .collect();
        Prober {
            config,
            local,
            members,
            seq: 0,
            scanner: Scanner::new(Limits::default()),
            tag,
            out: String::with_capacity(512),
        }
    }

    pub fn state(&self, member: usize) -> Option<State> {
        self.members.get(member).map(|m| m.state)
    }

    pub fn last_result(&self, member: usize) -> Option<ProbeResult> {
        self.members.get(member).and_then(|m| m.last)
    }

    /// The admin sets a state: draining, or up or down by hand. Probes then
    /// move it on from there, except from draining.
    pub fn set_state(&mut self, member: usize, state: State) -> Option<Event> {
        let m = self.members.get_mut(member)?;
        let from = m.state;
        m.state = state;
        m.streak = 0;
        (from != state).then_some(Event::Transition {
            member,
            from,
            to: state,
        })
    }

    /// When [`Prober::on_time`] next has something to do.
    pub fn next_deadline(&self) -> Option<Millis> {
        if !self.config.enabled {
            return None;
        }
        self.members
            .iter()
            .map(|m| match m.pending {
                Some((_, sent)) => (sent + self.config.timeout_ms).min(m.next_probe),
                None => m.next_probe,
            })
            .min()
    }

    /// Times out unanswered probes and sends the probes that are due.
    pub fn on_time(&mut self, now: Millis, tx: &mut impl SendProbe, events: &mut Vec<Event>) {
        if !self.config.enabled {
            return;
        }
        for i in 0..self.members.len() {
            if let Some((_, sent)) = self.members[i].pending {
                if now >= sent + self.config.timeout_ms {
                    self.members[i].pending = None;
                    self.members[i].last = Some(ProbeResult::TimedOut);
                    events.push(Event::Probed {
                        member: i,
                        result: ProbeResult::TimedOut,
                        alive: false,
                    });
                    self.outcome(i, false, events);
                }
            }
            if now >= self.members[i].next_probe && self.members[i].pending.is_none() {
                self.seq = self.seq.wrapping_add(1);
                let seq = self.seq;
                let member = &mut self.members[i];
                member.pending = Some((seq, now));
                member.next_probe = now + self.config.interval_ms;
                let to = member.address;
                write_options(&mut self.out, self.local, to, i, seq, self.tag);
                tx.send(to, self.out.as_bytes());
            }
        }
    }

    /// Takes a datagram that arrived on the probe socket: a response to
    /// one of our probes counts, anything else is ignored.
    pub fn on_datagram(&mut self, now: Millis, datagram: &[u8], events: &mut Vec<Event>) {
        let Ok(message) = self.scanner.scan(datagram) else {
            return;
        };
        let Some(code) = message.status_code() else {
            return;
        };
        if code < 200 {
            return;
        }
        let Some((member, seq)) = parse_call_id(message.call_id(), self.tag) else {
            return;
        };
        let Some(m) = self.members.get_mut(member) else {
            return;
        };
        let Some((pending, sent)) = m.pending else {
            return;
        };
        if pending != seq {
            return;
        }
        m.pending = None;
        m.last = Some(ProbeResult::Answered(code));
        let alive = self.config.accepts(code);
        events.push(Event::Probed {
            member,
            result: ProbeResult::Answered(code),
            alive,
        });
        events.push(Event::RoundTrip {
            member,
            rtt_us: now.saturating_sub(sent) * 1000,
        });
        self.outcome(member, alive, events);
    }

    fn outcome(&mut self, member: usize, alive: bool, events: &mut Vec<Event>) {
        let config = &self.config;
        let m = &mut self.members[member];
        let from = m.state;
        let to = match (from, alive) {
            (State::Draining, _) => from,
            (State::Up, true) => {
                m.streak = 0;
                from
            }
            (State::Up, false) => {
                m.streak += 1;
                match m.streak >= config.failures {
                    true => State::Down,
                    false => from,
                }
            }
            (State::Down, true) => State::Probing,
            (State::Down, false) => from,
            (State::Probing, true) => {
                m.streak += 1;
                match m.streak >= config.successes {
                    true => State::Up,
                    false => from,
                }
            }
            (State::Probing, false) => State::Down,
        };
        if to != from {
            m.state = to;
            // A member coming back has had one success already.
            m.streak = u32::from(to == State::Probing);
            if to == State::Probing && m.streak >= config.successes {
                m.state = State::Up;
                m.streak = 0;
            }
            events.push(Event::Transition {
                member,
                from,
                to: m.state,
            });
        }
    }
}

/// Our probes' Call-ID: `probe.<tag>.<member>.<seq>`.
fn parse_call_id(call_id: &[u8], tag: u64) -> Option<(usize, u32)> {
    let text = std::str::from_utf8(call_id).ok()?;
    let text = text.split('@').next()?;
    let mut parts = text.split('.');
    if parts.next()? != "probe" || parts.next()? != format!("{tag:x}") {
        return None;
    }
    let member = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((member, seq))
}

fn write_options(
    out: &mut String,
    local: SocketAddr,
    to: SocketAddr,
    member: usize,
    seq: u32,
    tag: u64,
) {
    out.clear();
    let _ = write!(
        out,
        "OPTIONS sip:{to} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK{tag:x}.{member}.{seq};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:sipshard@{local}>;tag={tag:x}\r\n\
         To: <sip:{to}>\r\n\
         Call-ID: probe.{tag:x}.{member}.{seq}@{ip}\r\n\
         CSeq: {seq} OPTIONS\r\n\
         User-Agent: sipshard health probe\r\n\
         Content-Length: 0\r\n\r\n",
        ip = local.ip(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Sent(Vec<(SocketAddr, Vec<u8>)>);

    impl SendProbe for Sent {
        fn send(&mut self, to: SocketAddr, datagram: &[u8]) {
            self.0.push((to, datagram.to_vec()));
        }
    }

    const LOCAL: &str = "127.0.0.1:5999";

    fn prober(members: usize) -> Prober {
        let addresses: Vec<SocketAddr> = (0..members)
            .map(|i| format!("127.0.0.1:{}", 5080 + i).parse().unwrap())
            .collect();
        let config = ProbeConfig {
            enabled: true,
            ..ProbeConfig::default()
        };
        Prober::new(config, LOCAL.parse().unwrap(), &addresses, 0, 0xabc)
    }

    /// The answer a backend gives to a probe, built from the probe itself.
    fn answer(probe: &[u8], code: u16) -> Vec<u8> {
        let text = std::str::from_utf8(probe).unwrap();
        let mut out = format!("SIP/2.0 {code} Whatever\r\n");
        for line in text.lines() {
            for name in ["Via:", "From:", "To:", "Call-ID:", "CSeq:"] {
                if line.starts_with(name) {
                    out.push_str(line);
                    if name == "To:" {
                        out.push_str(";tag=b");
                    }
                    out.push_str("\r\n");
                }
            }
        }
        out.push_str("Content-Length: 0\r\n\r\n");
        out.into_bytes()
    }

    #[test]
    fn a_probe_is_a_valid_options_request() {
        let mut p = prober(1);
        let mut sent = Sent::default();
        p.on_time(0, &mut sent, &mut Vec::new());
        assert_eq!(sent.0.len(), 1);
        let mut scanner = Scanner::new(Limits::default());
        let message = scanner.scan(&sent.0[0].1).unwrap();
        assert_eq!(message.cseq().method, crate::sip::Method::Options);
        assert_eq!(parse_call_id(message.call_id(), 0xabc), Some((0, 1)));
        assert_eq!(sent.0[0].0, "127.0.0.1:5080".parse().unwrap());
    }

    #[test]
    fn probes_go_out_each_interval_spread_over_members() {
        let mut p = prober(2);
        let mut sent = Sent::default();
        let mut events = Vec::new();
        p.on_time(0, &mut sent, &mut events);
        assert_eq!(sent.0.len(), 1, "member 1 is due half an interval later");
        assert_eq!(p.next_deadline(), Some(2_000), "member 0's timeout");
        let first = sent.0[0].1.clone();
        p.on_datagram(10, &answer(&first, 200), &mut events);
        assert_eq!(
            events,
            vec![
                Event::Probed {
                    member: 0,
                    result: ProbeResult::Answered(200),
                    alive: true
                },
                Event::RoundTrip {
                    member: 0,
                    rtt_us: 10_000
                }
            ]
        );
        assert_eq!(p.next_deadline(), Some(2_500));
        p.on_time(2_500, &mut sent, &mut events);
        assert_eq!(sent.0.len(), 2);
        assert_eq!(sent.0[1].0, "127.0.0.1:5081".parse().unwrap());
    }

    #[test]
    fn two_timeouts_take_a_member_down_and_two_answers_bring_it_back() {
        let mut p = prober(1);
        let mut sent = Sent::default();
        let mut events = Vec::new();
        p.on_time(0, &mut sent, &mut events);
        p.on_time(2_000, &mut sent, &mut events);
        assert_eq!(p.state(0), Some(State::Up), "one failure is not enough");
        assert_eq!(p.last_result(0), Some(ProbeResult::TimedOut));
        p.on_time(5_000, &mut sent, &mut events);
        p.on_time(7_000, &mut sent, &mut events);
        assert_eq!(p.state(0), Some(State::Down));
        let transitions: Vec<&Event> = events
            .iter()
            .filter(|e| matches!(e, Event::Transition { .. }))
            .collect();
        assert_eq!(
            transitions,
            vec![&Event::Transition {
                member: 0,
                from: State::Up,
                to: State::Down
            }]
        );
        assert_eq!(
            events.len(),
            3,
            "two timeouts and the transition: {events:?}"
        );
        events.clear();
        p.on_time(10_000, &mut sent, &mut events);
        let probe = sent.0.last().unwrap().1.clone();
        p.on_datagram(10_001, &answer(&probe, 200), &mut events);
        assert_eq!(p.state(0), Some(State::Probing));
        p.on_time(15_000, &mut sent, &mut events);
        let probe = sent.0.last().unwrap().1.clone();
        p.on_datagram(15_001, &answer(&probe, 404), &mut events);
        assert_eq!(p.state(0), Some(State::Up), "404 is alive");
    }

    #[test]
    fn a_failure_while_probing_goes_back_down() {
        let mut p = prober(1);
        p.set_state(0, State::Down);
        let mut sent = Sent::default();
        let mut events = Vec::new();
        p.on_time(0, &mut sent, &mut events);
        let probe = sent.0.last().unwrap().1.clone();
        p.on_datagram(1, &answer(&probe, 200), &mut events);
        assert_eq!(p.state(0), Some(State::Probing));
        p.on_time(5_000, &mut sent, &mut events);
        let probe = sent.0.last().unwrap().1.clone();
        p.on_datagram(5_001, &answer(&probe, 503), &mut events);
        assert_eq!(p.state(0), Some(State::Down), "503 is not alive");
    }

    #[test]
    fn codes_408_and_5xx_fail_unless_configured() {
        let config = ProbeConfig::default();
        assert!(config.accepts(200) && config.accepts(404) && config.accepts(486));
        assert!(!config.accepts(408) && !config.accepts(500) && !config.accepts(603));
        let config = ProbeConfig {
            accepted_codes: vec![200],
            ..ProbeConfig::default()
        };
        assert!(config.accepts(200) && !config.accepts(404));
    }

    #[test]
    fn draining_stays_draining_whatever_the_probes_say() {
        let mut p = prober(1);
        p.set_state(0, State::Draining);
        let mut sent = Sent::default();
        let mut events = Vec::new();
        for t in [0, 2_000, 5_000, 7_000, 10_000, 12_000] {
            p.on_time(t, &mut sent, &mut events);
        }
        assert_eq!(p.state(0), Some(State::Draining));
        assert!(
            events.iter().all(|e| matches!(e, Event::Probed { .. })),
            "{events:?}"
        );
    }

    #[test]
    fn stale_late_and_foreign_answers_are_ignored() {
        let mut p = prober(1);
        let mut sent = Sent::default();
        let mut events = Vec::new();
        p.on_time(0, &mut sent, &mut events);
        let probe = sent.0[0].1.clone();
        p.on_time(2_000, &mut sent, &mut events); // timed out
        events.clear();
        p.on_datagram(2_100, &answer(&probe, 200), &mut events);
        assert!(
            events.is_empty(),
            "a late answer to a timed-out probe counts for nothing"
        );
        let foreign = String::from_utf8(answer(&probe, 200))
            .unwrap()
            .replace("probe.abc", "probe.abd");
        p.on_datagram(2_100, foreign.as_bytes(), &mut events);
        p.on_datagram(2_100, b"garbage", &mut events);
        p.on_datagram(2_100, &probe, &mut events);
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn disabled_probes_send_nothing() {
        let mut p = Prober::new(
            ProbeConfig {
                enabled: false,
                ..ProbeConfig::default()
            },
            LOCAL.parse().unwrap(),
            &["127.0.0.1:5080".parse().unwrap()],
            0,
            1,
        );
        let mut sent = Sent::default();
        p.on_time(0, &mut sent, &mut Vec::new());
        assert!(sent.0.is_empty());
        assert_eq!(p.next_deadline(), None);
    }
}
