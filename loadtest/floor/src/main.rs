//! udp-floor: the kernel's floor for the gateway's load tests.
//!
//! A UDP relay that does no SIP work: `recvmmsg`, pick a destination from
//! the source address alone, `sendmmsg`. Run under the same load as the
//! gateway, its messages per second per core are what the kernel's UDP path
//! costs by itself, and the gateway's figure is reported as a fraction of
//! it.
//!
//! It serves one caller address: a datagram from a backend goes to the most
//! recent source that is not a backend, anything else to the next backend in
//! turn (see `relay`). On SIGINT or SIGTERM it prints
//! `udp-floor: received=N sent=N dropped=N` on stdout and exits 0.
#![deny(unsafe_code)]

mod relay;

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use clap::Parser;
use sipshard::udp::{self, RecvBatch, SendBatch, Wait, WhenFull, BATCH_MAX};
use socket2::{Domain, Protocol, Socket, Type};

use relay::{Caller, Relay};

/// A slot holds the largest UDP payload, so that no SIP datagram, however
/// large, is cut (the gateway's slots are the same size).
const SLOT_BYTES: usize = 65_536;

/// Set by SIGINT/SIGTERM; every thread checks it between calls.
static STOP: AtomicBool = AtomicBool::new(false);

/// How long a receive waits before the loop looks at `STOP` again.
const RECEIVE_TIMEOUT: Duration = Duration::from_millis(100);

#[derive(Parser, Debug)]
#[command(
    name = "udp-floor",
    version,
    about = "A UDP relay that does no SIP work (recvmmsg -> sendmmsg): the kernel's floor"
)]
struct Cli {
    /// The address to receive on, IP:PORT. The gateway's default.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:5060", value_parser = parse_address)]
    listen: SocketAddr,
    /// A backend, IP:PORT (a `sip:` prefix is accepted, as the gateway
    /// takes it); repeat for each. Default: the gateway's two.
    #[arg(
        long = "backend",
        value_name = "ADDR",
        default_values = ["127.0.0.1:5080", "127.0.0.1:5081"],
        value_parser = parse_address
    )]
    backends: Vec<SocketAddr>,
    /// Pin thread i to CPU N+i. Default: no pinning.
    #[arg(long, value_name = "N")]
    cpu: Option<usize>,
    /// Datagrams per recvmmsg/sendmmsg call, at most 1024.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// SO_RCVBUF to ask for, in bytes (the kernel caps it at net.core.rmem_max).
    #[arg(long, value_name = "BYTES")]
    rcvbuf: Option<usize>,
    /// SO_SNDBUF to ask for, in bytes (the kernel caps it at net.core.wmem_max).
    #[arg(long, value_name = "BYTES")]
    sndbuf: Option<usize>,
    /// Threads, each with its own SO_REUSEPORT socket on the listen address.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// `IP:PORT`, or `sip:IP:PORT` so that a load-test script can hand the floor
/// the gateway's backend arguments unchanged. No names: the floor resolves
/// nothing.
fn parse_address(text: &str) -> Result<SocketAddr, String> {
    let bare = text.strip_prefix("sip:").unwrap_or(text);
    bare.parse().map_err(|_| {
        format!("`{text}` is not an IP:PORT address (e.g. 127.0.0.1:5080 or [::1]:5080)")
    })
}

/// What one thread counted. `received` = `sent` + `dropped`;
/// `kernel_dropped` never reached the relay, so it is in neither.
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    received: u64,
    sent: u64,
    dropped: u64,
    kernel_dropped: u64,
}

impl Counters {
    fn add(&mut self, other: Counters) {
        self.received += other.received;
        self.sent += other.sent;
        self.dropped += other.dropped;
        self.kernel_dropped += other.kernel_dropped;
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("udp-floor: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Checks the arguments, opens the sockets, relays until a signal, prints
/// the counters. `Ok(false)`: a thread failed after start-up (already
/// reported); `Err`: nothing was started.
fn run(cli: &Cli) -> Result<bool, String> {
    check(cli)?;
    let cpus = cpus(cli)?;
    let sockets = open(cli)?;
    let local = sockets[0]
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(cli.listen);
    for signal in [libc::SIGINT, libc::SIGTERM] {
        on_signal_stop(signal).map_err(|e| format!("cannot handle signal {signal}: {e}"))?;
    }
    announce(cli, local, &sockets[0]);

    let caller = Arc::new(Caller::default());
    let mut handles = Vec::with_capacity(sockets.len());
    for (i, socket) in sockets.into_iter().enumerate() {
        let relay = Relay::new(cli.backends.clone(), Arc::clone(&caller));
        let cpu = cpus.as_ref().map(|c| c[i]);
        let batch = cli.batch;
        let handle = thread::Builder::new()
            .name(format!("floor-{i}"))
            .spawn(move || relay_loop(&socket, relay, batch, cpu));
        match handle {
            Ok(h) => handles.push(h),
            Err(e) => {
                eprintln!("udp-floor: cannot start thread {i}: {e}");
                STOP.store(true, Ordering::Relaxed);
                break;
            }
        }
    }
    let started = handles.len() == cli.threads;

    let mut total = Counters::default();
    let mut ok = started;
    for handle in handles {
        match handle.join() {
            Ok((counters, error)) => {
                total.add(counters);
                if let Some(e) = error {
                    eprintln!("udp-floor: {e}");
                    ok = false;
                }
            }
            Err(_) => {
                eprintln!("udp-floor: a relay thread panicked");
                ok = false;
            }
        }
    }
    // stderr, so that stdout stays the one counter line.
    eprintln!(
        "udp-floor: the kernel dropped {} datagrams on arrival (receive buffer full)",
        total.kernel_dropped
    );
    println!(
        "udp-floor: received={} sent={} dropped={}",
        total.received, total.sent, total.dropped
    );
    Ok(ok)
}

/// Argument checks clap cannot make.
fn check(cli: &Cli) -> Result<(), String> {
    if cli.threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    if !(1..=BATCH_MAX).contains(&cli.batch) {
        return Err(format!("--batch must be 1 to {BATCH_MAX}"));
    }
    for backend in &cli.backends {
        // An IPv6 socket cannot send to an IPv4 address, nor the reverse.
        if backend.is_ipv4() != cli.listen.is_ipv4() {
            return Err(format!(
                "backend {backend} and listen address {} are not the same IP version",
                cli.listen
            ));
        }
        if *backend == cli.listen {
            return Err(format!(
                "backend {backend} is the listen address: the relay would loop"
            ));
        }
    }
    Ok(())
}

/// The CPU of each thread when pinning, checked against the CPUs this
/// process may run on, so that a typo fails at start-up and not silently.
fn cpus(cli: &Cli) -> Result<Option<Vec<usize>>, String> {
    let Some(first) = cli.cpu else {
        return Ok(None);
    };
    let allowed: Vec<usize> = core_affinity::get_core_ids()
        .ok_or("cannot read the CPUs this process may run on")?
        .into_iter()
        .map(|c| c.id)
        .collect();
    let wanted: Vec<usize> = (first..first + cli.threads).collect();
    if let Some(missing) = wanted.iter().find(|c| !allowed.contains(c)) {
        return Err(format!(
            "CPU {missing} is not one this process may run on (allowed: {allowed:?}); \
             --cpu {first} with --threads {} needs CPUs {first} to {}",
            cli.threads,
            first + cli.threads - 1
        ));
    }
    Ok(Some(wanted))
}

/// One socket per thread on the listen address.
///
/// SO_REUSEPORT lets the threads share the address, but it would also let
/// us share it with a gateway left running on the same port, splitting the
/// load between the two without a word. So a plain socket binds first: if
/// anything holds the address, that bind fails and we say so. It is closed
/// before the threads' sockets bind to the address it got (the port it was
/// given when the listen port is 0).
fn open(cli: &Cli) -> Result<Vec<Socket>, String> {
    let domain = Domain::for_address(cli.listen);
    let probe = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    probe
        .bind(&cli.listen.into())
        .map_err(|e| bind_error(cli.listen, &e))?;
    let address = probe
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(cli.listen);
    drop(probe);

    let mut sockets = Vec::with_capacity(cli.threads);
    for _ in 0..cli.threads {
        let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))
            .map_err(|e| format!("cannot open a UDP socket: {e}"))?;
        socket
            .set_reuse_port(true)
            .map_err(|e| format!("cannot set SO_REUSEPORT: {e}"))?;
        if let Some(bytes) = cli.rcvbuf {
            socket
                .set_recv_buffer_size(bytes)
                .map_err(|e| format!("cannot set SO_RCVBUF to {bytes}: {e}"))?;
        }
        if let Some(bytes) = cli.sndbuf {
            socket
                .set_send_buffer_size(bytes)
                .map_err(|e| format!("cannot set SO_SNDBUF to {bytes}: {e}"))?;
        }
        // A blocking receive that still wakes to see STOP.
        socket
            .set_read_timeout(Some(RECEIVE_TIMEOUT))
            .map_err(|e| format!("cannot set SO_RCVTIMEO: {e}"))?;
        socket
            .bind(&address.into())
            .map_err(|e| bind_error(address, &e))?;
        sockets.push(socket);
    }
    Ok(sockets)
}

fn bind_error(address: SocketAddr, error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::AddrInUse => format!(
            "cannot listen on {address}: address in use (is a gateway or another floor running?)"
        ),
        io::ErrorKind::AddrNotAvailable => {
            format!("cannot listen on {address}: no interface has that address")
        }
        _ => format!("cannot listen on {address}: {error}"),
    }
}

/// The start-up line on stderr: what we listen on, where we relay to, and
/// the buffer sizes the kernel granted, as it reports them: it doubles what
/// is asked for its bookkeeping and caps it at net.core.{r,w}mem_max
/// without a word, so the asked figure alone could mislead.
fn announce(cli: &Cli, local: SocketAddr, socket: &Socket) {
    let backends: Vec<String> = cli.backends.iter().map(|b| b.to_string()).collect();
    let size = |r: io::Result<usize>| r.map_or_else(|_| "?".to_string(), |b| b.to_string());
    let pinning = match cli.cpu {
        Some(first) => format!(", CPUs {first}..={}", first + cli.threads - 1),
        None => String::new(),
    };
    eprintln!(
        "udp-floor: listening on {local} ({} thread{}{pinning}, batch {}, rcvbuf {} B, sndbuf {} B granted), \
         backends {}; one caller address",
        cli.threads,
        if cli.threads == 1 { "" } else { "s" },
        cli.batch,
        size(socket.recv_buffer_size()),
        size(socket.send_buffer_size()),
        backends.join(", "),
    );
}

/// One thread: receive a batch, route each datagram, send the batch, until
/// STOP. Returns its counters and the error that ended it, if any.
fn relay_loop(
    socket: &Socket,
    relay: Relay,
    batch_size: usize,
    cpu: Option<usize>,
) -> (Counters, Option<String>) {
    let (mut counters, error) = relay_batches(socket, relay, batch_size, cpu);
    // Datagrams the kernel dropped on arrival (receive buffer full), which
    // a receive never sees: past the floor's rate the load is lost there.
    match udp::meminfo(socket.as_raw_fd()) {
        Ok(info) => counters.kernel_dropped = u64::from(info.drops),
        Err(e) => eprintln!("udp-floor: cannot read the socket's drop count: {e}"),
    }
    (counters, error)
}

fn relay_batches(
    socket: &Socket,
    mut relay: Relay,
    batch_size: usize,
    cpu: Option<usize>,
) -> (Counters, Option<String>) {
    let mut counters = Counters::default();
    if let Some(id) = cpu {
        if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
            STOP.store(true, Ordering::Relaxed);
            return (counters, Some(format!("cannot pin a thread to CPU {id}")));
        }
    }
    // Allocated after pinning, so the pages are first touched on that CPU.
    // Sending points at the receive slots: a datagram's bytes are never
    // copied in user space.
    let mut received = RecvBatch::new(batch_size, SLOT_BYTES);
    let mut send = SendBatch::new(batch_size);
    let fd = socket.as_raw_fd();
    while !STOP.load(Ordering::Relaxed) {
        // Blocks for the first datagram only (until RECEIVE_TIMEOUT), then
        // takes whatever else is queued, up to the batch size.
        let count = match received.recv(fd, Wait::ForOne) {
            Ok(n) => n,
            Err(e) => match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => continue,
                _ => {
                    STOP.store(true, Ordering::Relaxed);
                    return (counters, Some(format!("recvmmsg failed: {e}")));
                }
            },
        };
        counters.received += count as u64;
        let mut queue = send.queue();
        for i in 0..count {
            // A truncated datagram, or one from a family we do not relay,
            // has no source here and is dropped.
            let routed = received
                .datagram(i)
                .and_then(|(source, bytes)| Some((relay.destination(source)?, bytes)));
            match routed {
                Some((destination, bytes)) => {
                    let queued = queue.push(destination, bytes);
                    debug_assert!(queued, "as many send slots as receive slots");
                }
                None => counters.dropped += 1,
            }
        }
        // Never waits, as the gateway never does: a full send buffer drops
        // the rest of the batch, which would fail the same way.
        let sent = queue.flush(fd, WhenFull::DropRest);
        counters.sent += sent.sent;
        counters.dropped += sent.failed;
    }
    (counters, None)
}

/// Makes `signal` set STOP. A plain handler storing to an atomic is
/// async-signal-safe. No SA_RESTART, so a receive blocked in the thread
/// the signal lands on returns at once; the others see STOP within
/// RECEIVE_TIMEOUT.
#[allow(unsafe_code)]
fn on_signal_stop(signal: libc::c_int) -> io::Result<()> {
    extern "C" fn handler(_: libc::c_int) {
        STOP.store(true, Ordering::Relaxed);
    }
    // SAFETY: sigaction is a plain C struct; zero is a valid value, and the
    // fields that matter are set below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handler as extern "C" fn(libc::c_int) as libc::sighandler_t;
    action.sa_flags = 0;
    // SAFETY: `action` is a valid sigaction whose handler only stores to an
    // atomic; sigemptyset only writes the mask it is given.
    let result = unsafe {
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(signal, &action, std::ptr::null_mut())
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
