//! The sipshard binary. Today it inspects SIP messages the way the proxy
//! core sees them; the shard runtime that forwards live traffic sits on the
//! same core.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sipshard::sip::{Answer, Limits, Message, Scanner, StartLine};

/// mimalloc: the shards allocate little, but what the control plane and
/// start-up allocate should not contend on one global lock.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sipshard",
    version,
    about = "A transaction-stateful SIP load balancer for carriers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    match Cli::parse().command {
        Command::Inspect {
            files,
            datagram_bytes_max,
            headers_max,
            header_line_bytes_max,
            via_values_max,
        } => {
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
    }
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
