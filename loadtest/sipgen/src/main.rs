//! sipgen: a SIP load generator that plays the caller and the backends at
//! once, fast enough to find a gateway's ceiling.
//!
//! SIPp tops out at 1,000 to 2,000 calls per second here, below what one
//! gateway shard forwards, so a SIPp run measures SIPp. sipgen keeps its
//! messages small to build, sends and receives in batches (recvmmsg,
//! sendmmsg), answers as a stateless UAS, and still matches every response
//! to its transaction and every call to its dialog, retransmitting as
//! RFC 3261 says when something is lost.
//!
//! ```text
//! sipgen --target 127.0.0.1:5060 --rate 5000 --duration 10
//! sipgen --target 127.0.0.1:5060 --search          # highest rate with 0 failed calls
//! sipgen --target 127.0.0.1:5080 --backend 127.0.0.1:5080   # no gateway: sipgen's own ceiling
//! ```

mod net;
mod sip;
mod worker;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Parser;

use worker::{Plan, Progress, Scenario, Sockets, Stats, Worker};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "A high-rate SIP load generator: caller and backends in one process"
)]
struct Cli {
    /// Where calls go: the gateway (or, to measure sipgen itself, one of
    /// its own backend addresses).
    #[arg(long, default_value = "127.0.0.1:5060")]
    target: SocketAddrV4,
    /// An address to answer on as a backend (UAS); repeat for each. These
    /// are the gateway's backends. Default: 127.0.0.1:5080 and :5081, the
    /// gateway's own default.
    #[arg(long = "backend")]
    backends: Vec<SocketAddrV4>,
    /// Play only the caller (the backends are someone else's).
    #[arg(long)]
    no_backends: bool,
    #[arg(long, value_enum, default_value = "call")]
    scenario: Scenario,
    /// Calls (or REGISTERs, OPTIONS) started per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds of a fixed-rate run, or of each step of a search.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Search for the highest rate with 0 failed calls, starting at
    /// --rate: double while a step passes, then halve the gap.
    #[arg(long)]
    search: bool,
    /// Stop a search when the gap between passing and failing rates is
    /// this fraction of the passing one.
    #[arg(long, default_value_t = 0.05)]
    precision: f64,
    /// Never offer more than this many calls per second.
    #[arg(long, default_value_t = 1_000_000.0)]
    max_rate: f64,
    /// Caller sockets (source addresses: one port each). One means a single
    /// 4-tuple for all calls.
    #[arg(long, default_value_t = 1)]
    sources: usize,
    /// First port of the caller sockets; 0 lets the kernel choose.
    #[arg(long, default_value_t = 0)]
    source_port: u16,
    /// Threads, each with its share of the rate and of the sources.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// CPUs to pin the workers to, e.g. 0 or 0,1; default: not pinned.
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
    /// Seconds after its first request that an unfinished call has failed;
    /// once admitted (a provisional came back), it has as long again from
    /// then.
    #[arg(long, default_value_t = 8.0)]
    call_timeout: f64,
    #[arg(long, default_value_t = 500)]
    t1_ms: u64,
    #[arg(long, default_value_t = 4000)]
    t2_ms: u64,
    /// The user part of the Request-URI.
    #[arg(long, default_value = "service")]
    user: String,
    /// SO_RCVBUF and SO_SNDBUF of every socket.
    #[arg(long, default_value_t = 16 << 20)]
    buffer_bytes: usize,
    /// Seconds to wait between the steps of a search, so the gateway can
    /// settle.
    #[arg(long, default_value_t = 1.0)]
    settle: f64,
    /// Let a run with retransmissions pass, if no call failed.
    #[arg(long)]
    allow_retransmissions: bool,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("sipgen: {message}");
            ExitCode::from(2)
        }
    }
}

/// Opens every worker's sockets.
fn open(cli: &Cli) -> Result<Vec<Sockets>, String> {
    if cli.workers == 0 || cli.sources < cli.workers {
        return Err(format!(
            "--sources ({}) must be at least --workers ({}), and --workers at least 1",
            cli.sources, cli.workers
        ));
    }
    let backends: Vec<SocketAddrV4> = if cli.no_backends {
        Vec::new()
    } else if cli.backends.is_empty() {
        vec![
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, 5080),
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, 5081),
        ]
    } else {
        cli.backends.clone()
    };
    let mut all = Vec::new();
    for w in 0..cli.workers {
        let mut sockets = Sockets {
            callers: Vec::new(),
            caller_addrs: Vec::new(),
            backends: Vec::new(),
            backend_addrs: Vec::new(),
        };
        for s in (w..cli.sources).step_by(cli.workers) {
            let port = if cli.source_port == 0 {
                0
            } else {
                cli.source_port
                    .checked_add(s as u16)
                    .ok_or("--source-port + --sources passes 65535")?
            };
            let ip = *cli.target.ip();
            let ip = if ip.is_unspecified() {
                Ipv4Addr::LOCALHOST
            } else {
                ip
            };
            let socket = net::bind(SocketAddrV4::new(ip, port), false, cli.buffer_bytes)
                .map_err(|e| format!("caller socket on {ip}:{port}: {e}"))?;
            let addr = match socket.local_addr() {
                Ok(std::net::SocketAddr::V4(v4)) => v4,
                _ => return Err("caller socket has no IPv4 address".into()),
            };
            sockets.callers.push(socket);
            sockets.caller_addrs.push(addr);
        }
        for &backend in &backends {
            // Every worker listens on every backend address (SO_REUSEPORT):
            // the kernel spreads the gateway's flows over them.
            let socket = net::bind(backend, true, cli.buffer_bytes).map_err(|e| {
                format!("backend socket on {backend}: {e} (is something else listening there?)")
            })?;
            sockets.backends.push(socket);
            sockets.backend_addrs.push(backend);
        }
        all.push(sockets);
    }
    Ok(all)
}

/// One run at `rate` for `duration` seconds, with a progress line.
fn run_once(cli: &Cli, sockets: &[Sockets], run: u64, rate: f64) -> (Stats, f64) {
    let progress = Progress::default();
    let workers = sockets.len();
    let begin = worker::now_ns();
    let mut total = Stats::new();
    std::thread::scope(|scope| {
        let handles: Vec<_> = sockets
            .iter()
            .enumerate()
            .map(|(w, sockets)| {
                let plan = Plan {
                    scenario: cli.scenario,
                    run,
                    worker: w as u64,
                    rate: rate / workers as f64,
                    duration_ns: (cli.duration * 1e9) as u64,
                    call_timeout_ns: (cli.call_timeout * 1e9) as u64,
                    t1_ns: cli.t1_ms * 1_000_000,
                    t2_ns: cli.t2_ms * 1_000_000,
                    target: cli.target,
                    user: cli.user.clone(),
                };
                let progress = &progress;
                let cpu = (!cli.cpus.is_empty()).then(|| cli.cpus[w % cli.cpus.len()]);
                std::thread::Builder::new()
                    .name(format!("sipgen-{w}"))
                    .spawn_scoped(scope, move || {
                        if let Some(cpu) = cpu {
                            core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
                        }
                        Worker::new(plan, sockets, progress, workers).run()
                    })
                    .expect("spawn a worker thread")
            })
            .collect();
        let mut last = (begin, 0u64);
        while progress.done.load(Ordering::Acquire) < workers {
            std::thread::sleep(Duration::from_millis(100));
            let now = worker::now_ns();
            if now - last.0 < 1_000_000_000 || cli.quiet {
                continue;
            }
            let datagrams = progress.datagrams.load(Ordering::Relaxed);
            let started = progress.started.load(Ordering::Relaxed);
            let completed = progress.completed.load(Ordering::Relaxed);
            let failed = progress.failed.load(Ordering::Relaxed);
            eprintln!(
                "  {:>5.1}s  offered {rate:>8.0}/s  started {started:>9}  completed {completed:>9}  failed {failed:>6}  in flight {:>6}  datagrams in {:>8.0}/s",
                (now - begin) as f64 / 1e9,
                started.saturating_sub(completed + failed),
                (datagrams - last.1) as f64 * 1e9 / (now - last.0) as f64,
            );
            last = (now, datagrams);
        }
        for handle in handles {
            match handle.join() {
                Ok(stats) => total.merge(&stats),
                Err(_) => eprintln!("sipgen: a worker panicked"),
            }
        }
    });
    let elapsed = (worker::now_ns() - begin) as f64 / 1e9;
    (total, elapsed)
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

/// Did a run pass: nothing failed, everything finished, and sipgen kept up
/// with the rate it offered?
/// Unless --allow-retransmissions, a run that needed a retransmission
/// (a datagram lost, or an answer later than T1) did not pass either: past
/// that point the target's queues are full and its latency is T1.
fn passed(cli: &Cli, stats: &Stats, rate: f64) -> bool {
    let expected = rate * cli.duration;
    stats.failed() == 0
        && stats.completed == stats.started
        && stats.started as f64 >= 0.98 * expected
        && (cli.allow_retransmissions || stats.retransmissions == 0)
}

fn report(cli: &Cli, rate: f64, stats: &Stats, elapsed: f64) {
    let verdict = if passed(cli, stats, rate) {
        "pass"
    } else {
        "FAIL"
    };
    println!(
        "rate {rate:>9.0}/s  {verdict}  started {}  completed {}  failed {} (timeout {}, status {}, rejected {}; admitted and failed {}, {} of them with no final answer)  retransmissions {}  \
         datagrams {:.0}/s  sipgen CPU {:.0}%  added p50 {:.0} us p99 {:.0} us  setup p50 {:.0} us p99 {:.0} us  stray {}  send errors {}",
        stats.started,
        stats.completed,
        stats.failed(),
        stats.failed_timeout,
        stats.failed_status,
        stats.rejected,
        stats.admitted_failed,
        stats.admitted_no_final,
        stats.retransmissions,
        (stats.received + stats.sent) as f64 / elapsed.max(1e-9),
        stats.cpu_ns as f64 / 1e7 / elapsed.max(1e-9) / cli.workers as f64,
        us(stats.added.value_at_quantile(0.5)),
        us(stats.added.value_at_quantile(0.99)),
        us(stats.setup.value_at_quantile(0.5)),
        us(stats.setup.value_at_quantile(0.99)),
        stats.stray,
        stats.send_errors,
    );
}

/// The line scripts read.
fn result_line(label: &str, rate: f64, stats: &Stats, cli: &Cli) {
    println!(
        "RESULT {label} rate={rate:.0} cps={:.0} started={} completed={} failed={} rejected={} admitted_failed={} retransmissions={} \
         msgs_per_s={:.0} gen_cpu_pct={:.0} added_p50_us={:.1} added_p99_us={:.1} setup_p50_us={:.1} setup_p99_us={:.1}",
        stats.completed as f64 / cli.duration,
        stats.started,
        stats.completed,
        stats.failed(),
        stats.rejected,
        stats.admitted_failed,
        stats.retransmissions,
        (stats.received + stats.sent) as f64 / cli.duration,
        stats.cpu_ns as f64 / 1e7 / cli.duration / cli.workers as f64,
        us(stats.added.value_at_quantile(0.5)),
        us(stats.added.value_at_quantile(0.99)),
        us(stats.setup.value_at_quantile(0.5)),
        us(stats.setup.value_at_quantile(0.99)),
    );
}

fn run(cli: &Cli) -> Result<bool, String> {
    if !(cli.rate > 0.0 && cli.duration > 0.0 && cli.call_timeout > 0.0) {
        return Err("--rate, --duration and --call-timeout must be above 0".into());
    }
    let sockets = open(cli)?;
    let base_run = u64::from(std::process::id()) * 1000;
    if !cli.search {
        let (stats, elapsed) = run_once(cli, &sockets, base_run, cli.rate);
        report(cli, cli.rate, &stats, elapsed);
        result_line("fixed", cli.rate, &stats, cli);
        return Ok(passed(cli, &stats, cli.rate));
    }
    // Search: double until a step fails, then bisect.
    let mut good: Option<(f64, Stats)> = None;
    let mut bad: Option<f64> = None;
    let mut rate = cli.rate.min(cli.max_rate);
    for step in 1..=30u64 {
        let (stats, elapsed) = run_once(cli, &sockets, base_run + step, rate);
        report(cli, rate, &stats, elapsed);
        let kept_up = stats.started as f64 >= 0.98 * rate * cli.duration;
        if passed(cli, &stats, rate) {
            good = Some((rate, stats));
        } else {
            if !kept_up && stats.failed() == 0 {
                println!("sipgen could not start calls at {rate:.0}/s: the generator, not the target, is the limit here");
            }
            bad = Some(rate);
        }
        let low = good.as_ref().map_or(0.0, |g| g.0);
        rate = match bad {
            None if low >= cli.max_rate => break,
            None => (low * 2.0).min(cli.max_rate),
            Some(high) if low > 0.0 && (high - low) <= cli.precision * low => break,
            Some(high) => (low + high) / 2.0,
        };
        if low == 0.0 && rate < 1.0 {
            break;
        }
        std::thread::sleep(Duration::from_secs_f64(cli.settle));
    }
    match good {
        Some((rate, stats)) => {
            println!("highest rate with 0 failed calls: {rate:.0}/s");
            result_line("max", rate, &stats, cli);
            Ok(true)
        }
        None => {
            println!("no rate passed");
            Ok(false)
        }
    }
}
