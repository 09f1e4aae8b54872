//! One generator thread: it starts calls at its share of the rate on its
//! caller sockets, answers whatever reaches its backend sockets, and keeps
//! the call and transaction state of the calls it started.
//!
//! The UAS side is stateless: a To tag derived from the Call-ID means a
//! retransmitted INVITE gets the same answer, so any worker's backend
//! socket can answer any worker's call.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::Write;
use std::net::{SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use hdrhistogram::Histogram;

use crate::net::{self, Receiver, Sender};
use crate::sip::{self, Name};

/// The generator's clock: nanoseconds since the first call, the same on
/// every thread, so a timestamp one thread writes another can read.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// CPU time (user + system) of the calling thread.
fn thread_cpu_ns() -> u64 {
    // SAFETY: clock_gettime writes one timespec we own.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// What a worker's calls do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// INVITE, 100, 180, 200, ACK, BYE, 200.
    Call,
    /// REGISTER, 200.
    Register,
    /// OPTIONS, 200.
    Options,
}

/// The part of a run one worker does.
#[derive(Clone)]
pub struct Plan {
    pub scenario: Scenario,
    pub run: u64,
    pub worker: u64,
    /// Calls per second this worker starts.
    pub rate: f64,
    pub duration_ns: u64,
    /// A call has failed when it is not over this long after its first
    /// request or, once admitted, this long after its admission: a call
    /// admitted on a late retransmission of its INVITE gets the whole time
    /// to finish, as a UA's transaction timers would give it.
    pub call_timeout_ns: u64,
    pub t1_ns: u64,
    pub t2_ns: u64,
    pub target: SocketAddrV4,
    pub user: String,
}

/// Counters the main thread reads for its progress line.
#[derive(Default)]
pub struct Progress {
    pub started: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub datagrams: AtomicU64,
    /// Workers whose own calls are all over; a worker keeps answering on
    /// its backend sockets until every worker is.
    pub done: AtomicUsize,
}

/// What one worker saw in one run.
pub struct Stats {
    pub started: u64,
    pub completed: u64,
    pub failed_timeout: u64,
    pub failed_status: u64,
    /// Calls the target turned away at once: a 503 before any provisional
    /// response (overload control), counted in neither failure above.
    pub rejected: u64,
    /// Failed calls (either kind) that the target had admitted: a
    /// provisional response came back before the failure.
    pub admitted_failed: u64,
    /// Of those, the ones still waiting for the INVITE's final response
    /// (the rest were waiting for the BYE's, or got a failure status).
    pub admitted_no_final: u64,
    pub retransmissions: u64,
    pub received: u64,
    pub sent: u64,
    pub send_errors: u64,
    pub truncated: u64,
    /// Datagrams that matched no call of this run (late answers of an
    /// earlier run, answers after a timeout).
    pub stray: u64,
    /// Requests the backend side answered, by method.
    pub uas_invite: u64,
    pub uas_ack: u64,
    pub uas_bye: u64,
    pub uas_other: u64,
    /// One-way time through the gateway (nanoseconds): INVITEs caller to
    /// backend, and 180/200 backend to caller.
    pub added: Histogram<u64>,
    /// First request sent to its final response (INVITE to 200, REGISTER
    /// to 200), nanoseconds.
    pub setup: Histogram<u64>,
    /// CPU time the worker threads used (user + system), nanoseconds: a
    /// worker near 100% of its run means sipgen, not the target, may be
    /// the limit.
    pub cpu_ns: u64,
}

impl Stats {
    pub fn new() -> Self {
        let histogram =
            || Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid bounds");
        Stats {
            started: 0,
            completed: 0,
            failed_timeout: 0,
            failed_status: 0,
            rejected: 0,
            admitted_failed: 0,
            admitted_no_final: 0,
            retransmissions: 0,
            received: 0,
            sent: 0,
            send_errors: 0,
            truncated: 0,
            stray: 0,
            uas_invite: 0,
            uas_ack: 0,
            uas_bye: 0,
            uas_other: 0,
            added: histogram(),
            setup: histogram(),
            cpu_ns: 0,
        }
    }

    /// Every call that did not complete.
    pub fn failed(&self) -> u64 {
        self.failed_timeout + self.failed_status + self.rejected
    }

    pub fn merge(&mut self, other: &Stats) {
        self.started += other.started;
        self.completed += other.completed;
        self.failed_timeout += other.failed_timeout;
        self.failed_status += other.failed_status;
        self.rejected += other.rejected;
        self.admitted_failed += other.admitted_failed;
        self.admitted_no_final += other.admitted_no_final;
        self.retransmissions += other.retransmissions;
        self.received += other.received;
        self.sent += other.sent;
        self.send_errors += other.send_errors;
        self.truncated += other.truncated;
        self.stray += other.stray;
        self.uas_invite += other.uas_invite;
        self.uas_ack += other.uas_ack;
        self.uas_bye += other.uas_bye;
        self.uas_other += other.uas_other;
        let _ = self.added.add(&other.added);
        let _ = self.setup.add(&other.setup);
        self.cpu_ns += other.cpu_ns;
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Free,
    /// INVITE sent, nothing back yet: Timer A retransmits it.
    Inviting,
    /// A provisional came back; waiting for the final.
    Proceeding,
    /// ACK and BYE sent; Timer E retransmits the BYE.
    Closing,
    /// REGISTER or OPTIONS sent; Timer E retransmits it.
    Asking,
}

struct Call {
    seq: u64,
    state: State,
    started_ns: u64,
    /// The retransmission timer that is current; older heap entries for
    /// this call are stale.
    retransmit_at: u64,
    interval_ns: u64,
    source: usize,
    /// A provisional response came back: the target took the call on.
    admitted: bool,
    /// When the call fails if it is not over; older Timeout entries in the
    /// heap are stale.
    deadline_ns: u64,
    /// The request in progress, kept for retransmission.
    request: Vec<u8>,
    /// The ACK for the 2xx, sent again if the 2xx is.
    ack: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Retransmit,
    Timeout,
}

const SDP: &str = "v=0\r\no=sipgen 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n\
t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

/// The sockets a worker owns; they outlive runs.
pub struct Sockets {
    pub callers: Vec<UdpSocket>,
    pub caller_addrs: Vec<SocketAddrV4>,
    pub backends: Vec<UdpSocket>,
    pub backend_addrs: Vec<SocketAddrV4>,
}

pub struct Worker<'a> {
    plan: Plan,
    sockets: &'a Sockets,
    progress: &'a Progress,
    workers: usize,
    receiver: Receiver,
    senders: Vec<Sender>,
    calls: Vec<Call>,
    mask: u64,
    timers: BinaryHeap<Reverse<(u64, u64, Timer)>>,
    in_flight: u64,
    next_seq: u64,
    stats: Stats,
    /// `sip:uas@<backend>` for each backend socket, built once.
    contacts: Vec<String>,
}

impl<'a> Worker<'a> {
    pub fn new(plan: Plan, sockets: &'a Sockets, progress: &'a Progress, workers: usize) -> Self {
        // A call lives up to two timeouts: one to admission, one after.
        let timeout_s = 2 * plan.call_timeout_ns.div_ceil(1_000_000_000) + 1;
        let slots = ((plan.rate * timeout_s as f64) as u64)
            .max(1024)
            .next_power_of_two();
        let calls = (0..slots)
            .map(|_| Call {
                seq: 0,
                state: State::Free,
                started_ns: 0,
                retransmit_at: 0,
                interval_ns: 0,
                source: 0,
                admitted: false,
                deadline_ns: 0,
                request: Vec::new(),
                ack: Vec::new(),
            })
            .collect();
        let senders = (0..sockets.callers.len() + sockets.backends.len())
            .map(|_| Sender::new())
            .collect();
        Worker {
            plan,
            sockets,
            progress,
            workers,
            receiver: Receiver::new(64),
            senders,
            calls,
            mask: slots - 1,
            timers: BinaryHeap::new(),
            in_flight: 0,
            next_seq: 1,
            stats: Stats::new(),
            contacts: sockets
                .backend_addrs
                .iter()
                .map(|a| format!("sip:uas@{a}"))
                .collect(),
        }
    }

    /// Runs the plan to its end and then until every worker is done.
    pub fn run(mut self) -> Stats {
        let cpu_before = thread_cpu_ns();
        let begin = now_ns();
        let end = begin + self.plan.duration_ns;
        let per_call_ns = 1e9 / self.plan.rate.max(1e-3);
        let mut marked_done = false;
        let mut last_publish = begin;
        let mut published = (0u64, 0u64, 0u64, 0u64);
        loop {
            let now = now_ns();
            let mut busy = self.receive(now);
            // Start what is due, at most 512 a turn so answers are read.
            if now < end {
                let due = ((now - begin) as f64 / per_call_ns) as u64 + 1;
                let to_start = due.saturating_sub(self.stats.started).min(512);
                for _ in 0..to_start {
                    self.start(now);
                }
                busy |= to_start > 0;
            }
            self.expire(now);
            self.flush();

            if now.saturating_sub(last_publish) > 10_000_000 {
                last_publish = now;
                published = self.publish(published);
            }
            if !marked_done && now >= end && self.in_flight == 0 {
                marked_done = true;
                self.progress.done.fetch_add(1, Ordering::AcqRel);
            }
            if marked_done && self.progress.done.load(Ordering::Acquire) >= self.workers {
                break;
            }
            if !busy {
                let next_start = if now < end {
                    begin + ((self.stats.started as f64) * per_call_ns) as u64
                } else {
                    u64::MAX
                };
                let next_timer = self.timers.peek().map_or(u64::MAX, |t| t.0 .0);
                let wake = next_start.min(next_timer).min(now + 1_000_000);
                if wake > now {
                    let sockets: Vec<&UdpSocket> = self
                        .sockets
                        .callers
                        .iter()
                        .chain(&self.sockets.backends)
                        .collect();
                    net::wait(&sockets, wake - now);
                }
            }
        }
        self.publish(published);
        for sender in &self.senders {
            self.stats.sent += sender.sent;
            self.stats.send_errors += sender.errors;
        }
        self.stats.truncated = self.receiver.truncated;
        self.stats.cpu_ns = thread_cpu_ns().saturating_sub(cpu_before);
        self.stats
    }

    fn publish(&self, last: (u64, u64, u64, u64)) -> (u64, u64, u64, u64) {
        let s = &self.stats;
        let now = (s.started, s.completed, s.failed(), s.received);
        let p = self.progress;
        p.started.fetch_add(now.0 - last.0, Ordering::Relaxed);
        p.completed.fetch_add(now.1 - last.1, Ordering::Relaxed);
        p.failed.fetch_add(now.2 - last.2, Ordering::Relaxed);
        p.datagrams.fetch_add(now.3 - last.3, Ordering::Relaxed);
        now
    }

    fn flush(&mut self) {
        let sockets = self.sockets.callers.iter().chain(&self.sockets.backends);
        for (sender, socket) in self.senders.iter_mut().zip(sockets) {
            if !sender.is_empty() {
                sender.flush(socket);
            }
        }
    }

    /// Reads every socket once; true when anything came in.
    fn receive(&mut self, now: u64) -> bool {
        // The batch is taken out of `self` while its datagrams are handled
        // in place, so the handlers can borrow `self` mutably.
        let mut receiver = std::mem::replace(&mut self.receiver, Receiver::new(0));
        let mut any = false;
        let callers = self.sockets.callers.len();
        for index in 0..callers + self.sockets.backends.len() {
            let socket = if index < callers {
                &self.sockets.callers[index]
            } else {
                &self.sockets.backends[index - callers]
            };
            let n = receiver.recv(socket);
            any |= n > 0;
            self.stats.received += n as u64;
            for i in 0..n {
                let Some((datagram, from)) = receiver.get(i) else {
                    continue;
                };
                if index < callers {
                    self.on_response(datagram, now);
                } else {
                    self.on_request(index, datagram, from, now);
                }
            }
        }
        self.receiver = receiver;
        any
    }

    fn slot(&mut self, seq: u64) -> &mut Call {
        let index = (seq & self.mask) as usize;
        &mut self.calls[index]
    }

    fn start(&mut self, now: u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.stats.started += 1;
        let index = (seq & self.mask) as usize;
        if self.calls[index].state != State::Free {
            // The table is sized for rate x timeout, so the old call has
            // outlived its timeout already.
            self.stats.failed_timeout += 1;
            self.stats.admitted_failed += u64::from(self.calls[index].admitted);
            self.in_flight -= 1;
        }
        let source = (seq % self.sockets.callers.len() as u64) as usize;
        let from = self.sockets.caller_addrs[source];
        let plan = &self.plan;
        let call = &mut self.calls[index];
        call.seq = seq;
        call.started_ns = now;
        call.source = source;
        call.admitted = false;
        call.interval_ns = plan.t1_ns;
        call.retransmit_at = now + plan.t1_ns;
        call.request.clear();
        let (run, worker, target, user) = (plan.run, plan.worker, plan.target, &plan.user);
        let out = &mut call.request;
        let _ = match plan.scenario {
            Scenario::Call => {
                call.state = State::Inviting;
                write!(
                    out,
                    "INVITE sip:{user}@{target} SIP/2.0\r\n\
                     Via: SIP/2.0/UDP {from};branch=z9hG4bK-sg{run}.{worker}.{seq}.1;rport\r\n\
                     Max-Forwards: 70\r\n\
                     From: \"sipgen\" <sip:sipgen@{from}>;tag={seq}\r\n\
                     To: <sip:{user}@{target}>\r\n\
                     Call-ID: sg{run}.{worker}.{seq}@sipgen\r\n\
                     CSeq: 1 INVITE\r\n\
                     Contact: <sip:sipgen@{from}>\r\n\
                     User-Agent: sipgen\r\n\
                     Content-Type: application/sdp\r\n"
                )
            }
            Scenario::Register => {
                call.state = State::Asking;
                write!(
                    out,
                    "REGISTER sip:{target} SIP/2.0\r\n\
                     Via: SIP/2.0/UDP {from};branch=z9hG4bK-sg{run}.{worker}.{seq}.1;rport\r\n\
                     Max-Forwards: 70\r\n\
                     From: <sip:{user}{seq}@{target}>;tag={seq}\r\n\
                     To: <sip:{user}{seq}@{target}>\r\n\
                     Call-ID: sg{run}.{worker}.{seq}@sipgen\r\n\
                     CSeq: 1 REGISTER\r\n\
                     Contact: <sip:{user}{seq}@{from}>\r\n\
                     Expires: 3600\r\n"
                )
            }
            Scenario::Options => {
                call.state = State::Asking;
                write!(
                    out,
                    "OPTIONS sip:{user}@{target} SIP/2.0\r\n\
                     Via: SIP/2.0/UDP {from};branch=z9hG4bK-sg{run}.{worker}.{seq}.1;rport\r\n\
                     Max-Forwards: 70\r\n\
                     From: <sip:sipgen@{from}>;tag={seq}\r\n\
                     To: <sip:{user}@{target}>\r\n\
                     Call-ID: sg{run}.{worker}.{seq}@sipgen\r\n\
                     CSeq: 1 OPTIONS\r\n\
                     Accept: application/sdp\r\n"
                )
            }
        };
        sip::write_ts(out, now);
        let body = if plan.scenario == Scenario::Call {
            SDP
        } else {
            ""
        };
        let _ = write!(out, "Content-Length: {}\r\n\r\n{body}", body.len());
        let retransmit_at = call.retransmit_at;
        self.senders[source].push(&self.calls[index].request, target);
        self.timers
            .push(Reverse((retransmit_at, seq, Timer::Retransmit)));
        let deadline = now + self.plan.call_timeout_ns;
        self.calls[index].deadline_ns = deadline;
        self.timers.push(Reverse((deadline, seq, Timer::Timeout)));
        self.in_flight += 1;
    }

    fn finish(&mut self, seq: u64, completed: bool) {
        let call = self.slot(seq);
        call.state = State::Free;
        let admitted = call.admitted;
        self.in_flight -= 1;
        if completed {
            self.stats.completed += 1;
        } else {
            self.stats.failed_status += 1;
            self.stats.admitted_failed += u64::from(admitted);
        }
    }

    /// The first provisional response: the call is admitted, and its
    /// deadline starts again.
    fn admit(&mut self, index: usize, seq: u64, now: u64) {
        let deadline = now + self.plan.call_timeout_ns;
        let call = &mut self.calls[index];
        call.admitted = true;
        call.deadline_ns = deadline;
        self.timers.push(Reverse((deadline, seq, Timer::Timeout)));
    }

    /// A 503 before the call was admitted: turned away, not failed.
    fn reject(&mut self, seq: u64) {
        self.slot(seq).state = State::Free;
        self.in_flight -= 1;
        self.stats.rejected += 1;
    }

    fn on_response(&mut self, datagram: &[u8], now: u64) {
        let Some(answer) = sip::answer(datagram) else {
            self.stats.stray += 1;
            return;
        };
        let Some(key) = sip::parse_call_id(answer.call_id) else {
            self.stats.stray += 1;
            return;
        };
        if key.run != self.plan.run || key.worker != self.plan.worker {
            self.stats.stray += 1;
            return;
        }
        let seq = key.seq;
        let index = (seq & self.mask) as usize;
        if self.calls[index].seq != seq || self.calls[index].state == State::Free {
            self.stats.stray += 1;
            return;
        }
        if let Some(ts) = answer.ts {
            if ts <= now {
                let _ = self.stats.added.record(now - ts);
            }
        }
        let state = self.calls[index].state;
        let status = answer.status;
        let source = self.calls[index].source;
        let target = self.plan.target;
        match (state, answer.cseq_method) {
            (State::Inviting | State::Proceeding, b"INVITE") if status < 200 => {
                let call = &mut self.calls[index];
                call.state = State::Proceeding;
                if !call.admitted {
                    self.admit(index, seq, now);
                }
            }
            (State::Inviting | State::Proceeding, b"INVITE") if status < 300 => {
                let started = self.calls[index].started_ns;
                let _ = self.stats.setup.record(now.saturating_sub(started));
                self.confirm(index, &answer, now);
            }
            (State::Inviting | State::Proceeding, b"INVITE") => {
                // Non-2xx final: ACK it hop by hop (same branch as the
                // INVITE), and the call has failed.
                let from = self.sockets.caller_addrs[source];
                let (run, worker, user) = (self.plan.run, self.plan.worker, &self.plan.user);
                let to = answer.to;
                self.senders[source].build(target, |out| {
                    let _ = write!(
                        out,
                        "ACK sip:{user}@{target} SIP/2.0\r\n\
                         Via: SIP/2.0/UDP {from};branch=z9hG4bK-sg{run}.{worker}.{seq}.1;rport\r\n\
                         Max-Forwards: 70\r\n\
                         From: \"sipgen\" <sip:sipgen@{from}>;tag={seq}\r\n\
                         To: "
                    );
                    out.extend_from_slice(to);
                    let _ = write!(
                        out,
                        "\r\nCall-ID: sg{run}.{worker}.{seq}@sipgen\r\n\
                         CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
                    );
                    true
                });
                if status == 503 && !self.calls[index].admitted {
                    self.reject(seq);
                } else {
                    self.finish(seq, false);
                }
            }
            (State::Closing, b"INVITE") if (200..300).contains(&status) => {
                // The 2xx again: our ACK was lost.
                self.stats.retransmissions += 1;
                self.senders[source].push(&self.calls[index].ack, target);
            }
            (State::Closing, b"BYE") | (State::Asking, b"REGISTER" | b"OPTIONS") => {
                if status >= 200 {
                    if state == State::Asking && status < 300 {
                        let started = self.calls[index].started_ns;
                        let _ = self.stats.setup.record(now.saturating_sub(started));
                    }
                    if state == State::Asking && status == 503 && !self.calls[index].admitted {
                        self.reject(seq);
                    } else {
                        self.finish(seq, status < 300);
                    }
                } else if !self.calls[index].admitted {
                    self.admit(index, seq, now);
                }
            }
            _ => self.stats.stray += 1,
        }
    }

    /// A 2xx to our INVITE: ACK it and hang up at once.
    fn confirm(&mut self, index: usize, answer: &sip::Answer<'_>, now: u64) {
        let plan = &self.plan;
        let (run, worker, target) = (plan.run, plan.worker, plan.target);
        let call = &mut self.calls[index];
        let seq = call.seq;
        let from = self.sockets.caller_addrs[call.source];
        let request_uri = if answer.contact.is_empty() {
            format!("sip:{}@{target}", plan.user).into_bytes()
        } else {
            answer.contact.to_vec()
        };
        // The route set is the Record-Route list reversed (RFC 3261 §12.1.2).
        let write_in_dialog = |out: &mut Vec<u8>, method: &str, cseq: u32, branch: u32| {
            out.clear();
            out.extend_from_slice(method.as_bytes());
            out.push(b' ');
            out.extend_from_slice(&request_uri);
            let _ = write!(
                out,
                " SIP/2.0\r\n\
                 Via: SIP/2.0/UDP {from};branch=z9hG4bK-sg{run}.{worker}.{seq}.{branch};rport\r\n\
                 Max-Forwards: 70\r\n"
            );
            if answer.record_route_count > 0 {
                out.extend_from_slice(b"Route: ");
                for (i, route) in answer.record_routes[..answer.record_route_count]
                    .iter()
                    .rev()
                    .enumerate()
                {
                    if i > 0 {
                        out.extend_from_slice(b", ");
                    }
                    out.extend_from_slice(route);
                }
                out.extend_from_slice(b"\r\n");
            }
            let _ = write!(
                out,
                "From: \"sipgen\" <sip:sipgen@{from}>;tag={seq}\r\nTo: "
            );
            out.extend_from_slice(answer.to);
            let _ = write!(
                out,
                "\r\nCall-ID: sg{run}.{worker}.{seq}@sipgen\r\nCSeq: {cseq} {method}\r\n"
            );
            sip::write_ts(out, now);
            out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        };
        write_in_dialog(&mut call.ack, "ACK", 1, 3);
        write_in_dialog(&mut call.request, "BYE", 2, 2);
        call.state = State::Closing;
        call.interval_ns = plan.t1_ns;
        call.retransmit_at = now + plan.t1_ns;
        let (source, retransmit_at) = (call.source, call.retransmit_at);
        let sender = &mut self.senders[source];
        sender.push(&self.calls[index].ack, target);
        sender.push(&self.calls[index].request, target);
        self.timers
            .push(Reverse((retransmit_at, seq, Timer::Retransmit)));
    }

    /// The backend side: answer a request at once.
    fn on_request(&mut self, socket: usize, datagram: &[u8], from: SocketAddrV4, now: u64) {
        let Some((start, lines)) = sip::split(datagram) else {
            self.stats.stray += 1;
            return;
        };
        if sip::status(start).is_some() {
            self.stats.stray += 1;
            return;
        }
        let mut contact: &[u8] = &[];
        for line in lines {
            match sip::name(line.name) {
                Name::Timestamp => {
                    if let Some(ts) = sip::parse_u64(line.value) {
                        if ts <= now {
                            let _ = self.stats.added.record(now - ts);
                        }
                    }
                }
                Name::Contact => contact = sip::uri(line.value),
                _ => {}
            }
        }
        let contact_uri = &self.contacts[socket - self.sockets.callers.len()];
        let sender = &mut self.senders[socket];
        let method = sip::method(start);
        match method {
            b"INVITE" => {
                self.stats.uas_invite += 1;
                sender.build(from, |out| {
                    sip::response(
                        out,
                        datagram,
                        180,
                        "Ringing",
                        true,
                        Some(contact_uri),
                        now,
                        b"",
                    )
                });
                sender.build(from, |out| {
                    let body = SDP.as_bytes();
                    sip::response(out, datagram, 200, "OK", true, Some(contact_uri), now, body)
                });
            }
            b"ACK" => self.stats.uas_ack += 1,
            _ => {
                if method == b"BYE" {
                    self.stats.uas_bye += 1;
                } else {
                    self.stats.uas_other += 1;
                }
                let contact = (method == b"REGISTER" && !contact.is_empty())
                    .then(|| String::from_utf8_lossy(contact).into_owned());
                sender.build(from, |out| {
                    sip::response(
                        out,
                        datagram,
                        200,
                        "OK",
                        false,
                        contact.as_deref(),
                        now,
                        b"",
                    )
                });
            }
        }
    }

    /// Retransmissions and timeouts that are due.
    fn expire(&mut self, now: u64) {
        while let Some(&Reverse((at, seq, timer))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let index = (seq & self.mask) as usize;
            let call = &mut self.calls[index];
            if call.seq != seq || call.state == State::Free {
                continue;
            }
            match timer {
                Timer::Timeout => {
                    if call.deadline_ns != at {
                        continue;
                    }
                    if call.admitted {
                        self.stats.admitted_failed += 1;
                        self.stats.admitted_no_final += u64::from(call.state == State::Proceeding);
                    }
                    call.state = State::Free;
                    self.in_flight -= 1;
                    self.stats.failed_timeout += 1;
                }
                Timer::Retransmit => {
                    if call.retransmit_at != at || call.state == State::Proceeding {
                        continue;
                    }
                    // Timer A doubles without bound; Timer E stops at T2.
                    call.interval_ns = if call.state == State::Inviting {
                        call.interval_ns * 2
                    } else {
                        (call.interval_ns * 2).min(self.plan.t2_ns)
                    };
                    call.retransmit_at = now + call.interval_ns;
                    sip::restamp(&mut call.request, now);
                    self.stats.retransmissions += 1;
                    let (source, at) = (call.source, call.retransmit_at);
                    self.senders[source].push(&self.calls[index].request, self.plan.target);
                    self.timers.push(Reverse((at, seq, Timer::Retransmit)));
                }
            }
        }
    }
}
