//! The sipshard binary: runs the gateway (the default), or inspects SIP
//! messages the way the proxy core sees them (`sipshard inspect`).

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sipshard::balance::Algorithm;
use sipshard::config::{self, AppConfig};
use sipshard::control::{self, Control};
use sipshard::shard::{Io, Runtime};
use sipshard::sip::{Answer, Limits, Message, Peer, Scanner, StartLine};

/// mimalloc: the shards allocate little, but what the control plane and
/// start-up allocate should not contend on one global lock.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sipshard",
    version,
    about = "A SIP load balancer for carriers",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

/// Running the gateway. With no arguments it listens on 127.0.0.1:5060 and
/// balances over two backends on loopback, 127.0.0.1:5080 and :5081. Flags
/// given on the command line override the same settings of `--config`.
#[derive(Args)]
struct RunArgs {
    /// An address SIP arrives on, `[udp|tcp|tls|ws|wss:]IP:PORT` (bare:
    /// UDP); repeat for each transport. UDP is always served: without a udp: listener
    /// it takes the first one's address. Each goes in our Via and
    /// Record-Route, so it must be one peers can reach.
    /// Default: 127.0.0.1:5060 (UDP).
    #[arg(long, value_name = "[udp|tcp|tls|ws|wss:]IP:PORT")]
    listen: Vec<String>,
    /// Our TLS certificate chain (PEM, leaf first), for tls: listeners.
    /// Re-read on SIGHUP.
    #[arg(long, value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM). Re-read on SIGHUP.
    #[arg(long, value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// A backend, as `sip:IP:PORT`, `sip:IP:PORT;transport=tcp|tls` or
    /// `sips:IP:PORT`; repeat for each. Default: the two loopback backends
    /// above.
    #[arg(long = "backend", value_name = "URI")]
    backends: Vec<String>,
    /// Shard threads, one per core. Default: the number of usable cores.
    #[arg(long)]
    shards: Option<usize>,
    /// How an initial request picks its backend. Default: round-robin.
    #[arg(long, value_enum)]
    algorithm: Option<AlgorithmArg>,
    /// Slots in each shard's handoff queue; a full queue drops and counts.
    /// Default: 8192.
    #[arg(long)]
    handoff_queue_len: Option<usize>,
    /// Do not load the eBPF program that steers each datagram to its
    /// shard's socket: shards hand datagrams to each other instead (what
    /// happens anyway where eBPF is not allowed).
    #[arg(long)]
    no_steering: bool,
    /// The receive loop: io_uring where the kernel allows it (auto, the
    /// default), io_uring or nothing (uring), or recvmmsg + epoll (epoll).
    #[arg(long, value_enum)]
    io: Option<IoArg>,
    /// Serve the admin HTTP API (`/healthz`, `/metrics`) on this address,
    /// e.g. 127.0.0.1:9090. Default: off.
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// A TOML configuration file (see examples/sipshard.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check a configuration file, print each problem with its line and a
    /// fix, and exit (0 when it is valid).
    #[arg(long, value_name = "FILE", exclusive = true)]
    check_config: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum IoArg {
    Auto,
    Uring,
    Epoll,
}

impl From<IoArg> for Io {
    fn from(io: IoArg) -> Io {
        match io {
            IoArg::Auto => Io::Auto,
            IoArg::Uring => Io::Uring,
            IoArg::Epoll => Io::Epoll,
        }
    }
}

/// The algorithms `--algorithm` names: the two of `[backends]`.
#[derive(Clone, Copy, ValueEnum)]
enum AlgorithmArg {
    RoundRobin,
    CallIdHash,
}

impl From<AlgorithmArg> for Algorithm {
    fn from(algorithm: AlgorithmArg) -> Algorithm {
        match algorithm {
            AlgorithmArg::RoundRobin => Algorithm::RoundRobin,
            AlgorithmArg::CallIdHash => Algorithm::CallIdHash,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Scan SIP messages (one per file, or stdin with `-`) and print what
    /// the proxy would do with each and the fields it routes on.
    Inspect {
        /// Files holding one datagram each; `-` reads stdin.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Largest datagram accepted, in bytes.
        #[arg(long, default_value_t = Limits::default().datagram_bytes_max)]
        datagram_bytes_max: usize,
        /// Header fields per message.
        #[arg(long, default_value_t = Limits::default().headers_max)]
        headers_max: usize,
        /// Bytes per header field, folded lines included.
        #[arg(long, default_value_t = Limits::default().header_line_bytes_max)]
        header_line_bytes_max: usize,
        /// Via values per message.
        #[arg(long, default_value_t = Limits::default().via_values_max)]
        via_values_max: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Inspect {
            files,
            datagram_bytes_max,
            headers_max,
            header_line_bytes_max,
            via_values_max,
        }) => {
            let limits = Limits {
                datagram_bytes_max,
                headers_max,
                header_line_bytes_max,
                via_values_max,
            };
            if let Err(e) = limits.check() {
                eprintln!("sipshard: {e}");
                return ExitCode::from(2);
            }
            inspect(&files, limits)
        }
        None => run(cli.run),
    }
}

fn run(args: RunArgs) -> ExitCode {
    if let Some(path) = &args.check_config {
        return match load(path) {
            Ok(_) => {
                println!("{}: valid", path.display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_thread_names(true)
        // Colour only for a person at a terminal, not in journald or files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    match configure(&args) {
        Ok(config) => serve(config, args.config),
        Err(code) => code,
    }
}

/// The configuration file's settings, or the defaults without one, with
/// the command line's flags over them.
fn configure(args: &RunArgs) -> Result<AppConfig, ExitCode> {
    let mut config = match &args.config {
        Some(path) => load(path)?,
        None => AppConfig::default(),
    };
    let shard = &mut config.shard;
    if let Some(io) = args.io {
        shard.io = io.into();
    }
    if !args.listen.is_empty() {
        let list: Vec<&str> = args.listen.iter().map(String::as_str).collect();
        let listeners = config::listeners(&list).map_err(|refused| {
            eprintln!("sipshard: --listen: {}; fix: {}", refused.what, refused.fix);
            ExitCode::from(2)
        })?;
        shard.listen = listeners.udp;
        (shard.tcp_listen, shard.tls_listen) = (listeners.tcp, listeners.tls);
        (shard.ws_listen, shard.wss_listen) = (listeners.ws, listeners.wss);
    }
    if let Some(cert) = &args.tls_cert {
        config.tls.cert = Some(cert.clone());
    }
    if let Some(key) = &args.tls_key {
        config.tls.key = Some(key.clone());
    }
    if let Some(shards) = args.shards {
        shard.shards = shards;
    }
    if let Some(len) = args.handoff_queue_len {
        shard.handoff_queue_len = len;
    }
    if args.no_steering {
        shard.steering = false;
    }
    // `--backend` and `--algorithm` replace the file's routing with one set.
    if !args.backends.is_empty() || args.algorithm.is_some() {
        let backends = backend_peers(&args.backends)?;
        let algorithm = args.algorithm.map(Algorithm::from);
        config.route_to(backends, algorithm).map_err(|why| {
            eprintln!("sipshard: --backend: {why}");
            ExitCode::from(2)
        })?;
    }
    if args.admin.is_some() {
        config.admin.address = args.admin;
    }
    let problems = config::transport_problems(&config.shard);
    for why in &problems {
        eprintln!("sipshard: {why}; fix: listen on each transport a backend uses, in its family");
    }
    if !problems.is_empty() {
        return Err(ExitCode::from(2));
    }
    // The file's check built the TLS settings already; build them again
    // only when the command line changed what they depend on.
    let cli_tls = args.tls_cert.is_some() || args.tls_key.is_some();
    if cli_tls || !args.listen.is_empty() || !args.backends.is_empty() || args.config.is_none() {
        config.shard.tls = config::tls_context(&config.shard, &config.tls).map_err(|error| {
            eprintln!("sipshard: tls: {error}; fix: {}", error.fix());
            ExitCode::from(2)
        })?;
    }
    Ok(config)
}

/// The `--backend`s' peers; `None` when there are none.
fn backend_peers(backends: &[String]) -> Result<Option<Vec<Peer>>, ExitCode> {
    if backends.is_empty() {
        return Ok(None);
    }
    let parse = |backend: &String| {
        config::backend_peer(backend).map_err(|why| {
            eprintln!("sipshard: --backend {backend}: {why}");
            ExitCode::from(2)
        })
    };
    backends
        .iter()
        .map(parse)
        .collect::<Result<_, _>>()
        .map(Some)
}

/// Starts the shards, then the probes and the admin API beside them, and
/// waits for signals.
fn serve(config: AppConfig, path: Option<PathBuf>) -> ExitCode {
    let AppConfig {
        shard,
        probes,
        admin,
        tls,
    } = config;
    let (listen, tls_listens) = (shard.listen, shard.tls_listen.is_some());
    let runtime = match Runtime::start(shard) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sipshard: cannot start on {listen}: {error}");
            return ExitCode::from(1);
        }
    };
    let control = Control::new(runtime.handle(), path);
    control.set_tls_files(tls, tls_listens);
    if let Err(error) = control.start_probes(probes, listen.ip()) {
        eprintln!("sipshard: cannot start the health probes: {error}");
        runtime.stop();
        return ExitCode::from(1);
    }
    if let Some(address) = admin.address {
        match control::admin::start(address, control.clone(), admin.acl) {
            Ok(_) => tracing::info!(%address, "admin API is listening"),
            Err(error) => {
                eprintln!("sipshard: cannot serve the admin API on {address}: {error}");
                runtime.stop();
                return ExitCode::from(1);
            }
        }
    }
    wait_for_signals(runtime, &control)
}

/// Reads and checks a configuration file; on failure prints every problem
/// and returns the exit code (2).
fn load(path: &PathBuf) -> Result<AppConfig, ExitCode> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        eprintln!("{}: {e}", path.display());
        ExitCode::from(2)
    })?;
    config::parse(&text).map_err(|problems| {
        for problem in problems {
            eprintln!("{}: {problem}", path.display());
        }
        ExitCode::from(2)
    })
}

/// The control thread: SIGUSR1 logs every shard's counters, SIGHUP reloads
/// the configuration file's routing; SIGTERM or SIGINT stops receiving,
/// flushes what the shards hold, and exits 0.
fn wait_for_signals(runtime: Runtime, control: &Control) -> ExitCode {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGUSR1, SIGHUP])
    {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("sipshard: cannot install signal handlers: {error}");
            runtime.stop();
            return ExitCode::from(1);
        }
    };
    for signal in signals.forever() {
        if signal == SIGUSR1 {
            runtime.report();
            continue;
        }
        if signal == SIGHUP {
            match control.reload() {
                Ok(backends) => tracing::info!(backends, "configuration reloaded (SIGHUP)"),
                Err(error) => {
                    tracing::warn!(%error, "reload refused; the running configuration stays")
                }
            }
            match control.reload_tls() {
                Ok(true) => tracing::info!("TLS certificates reloaded (SIGHUP)"),
                Ok(false) => {}
                Err(error) => tracing::warn!(
                    %error,
                    fix = error.fix(),
                    "TLS certificates not reloaded; the running ones stay"
                ),
            }
            continue;
        }
        tracing::info!(signal, "stopping");
        break;
    }
    runtime.stop();
    if sipshard::shard::shard_failed() {
        tracing::error!("stopped because a shard failed");
        return ExitCode::from(1);
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Exit status: 0 when every message would be forwarded, 1 when any is
/// rejected, 2 when a file cannot be read.
fn inspect(files: &[PathBuf], limits: Limits) -> ExitCode {
    let mut scanner = Scanner::new(limits);
    let mut status = ExitCode::SUCCESS;
    for file in files {
        let datagram = match read(file) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                return ExitCode::from(2);
            }
        };
        print!("{}: ", file.display());
        match scanner.scan(&datagram) {
            Ok(message) => describe(&message),
            Err(error) => {
                status = ExitCode::from(1);
                match error.answer() {
                    Answer::Reply { code, reason } => {
                        println!("reject: answer {code} {reason} ({:?})", error.fault)
                    }
                    Answer::Drop => println!("reject: drop ({error})"),
                }
            }
        }
    }
    status
}

fn read(file: &PathBuf) -> std::io::Result<Vec<u8>> {
    if file.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf)?;
        Ok(buf)
    } else {
        std::fs::read(file)
    }
}

fn describe(m: &Message<'_>) {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match m.start_line() {
        StartLine::Request {
            method_text,
            uri_text,
            ..
        } => {
            println!("request {} {}: forward", text(method_text), text(uri_text));
        }
        StartLine::Response { code, reason } => println!("response {code} {}", text(reason)),
    }
    let via = m.top_via();
    println!(
        "  top Via: {} {}{} branch={}  ({} Via values)",
        text(via.transport),
        text(via.host),
        via.port.map(|p| format!(":{p}")).unwrap_or_default(),
        via.branch
            .map(text)
            .unwrap_or_else(|| "(none: RFC 2543 matching)".into()),
        m.via_count()
    );
    println!("  Call-ID: {}", text(m.call_id()));
    println!("  CSeq: {} {}", m.cseq().number, text(m.cseq().method_text));
    println!(
        "  From tag: {}  To tag: {}",
        m.from().tag.map(text).unwrap_or_else(|| "-".into()),
        m.to().tag.map(text).unwrap_or_else(|| "-".into())
    );
    match m.max_forwards() {
        Some(hops) => println!("  Max-Forwards: {hops}"),
        None => println!("  Max-Forwards: absent (70 is added when forwarding)"),
    }
    println!("  body: {} bytes", m.body().len());
}
