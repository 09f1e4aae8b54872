//! `wake-cost [ROUNDS]`: what waking a sleeping thread costs on this
//! machine, with both threads on one CPU and with one on each of two.
//!
//! Two threads, pinned, bounce one datagram over loopback UDP `ROUNDS`
//! times (default 100,000); each blocks in `recv` between bounces, as a
//! gateway's shard and a SIPp peer do between datagrams. It prints the
//! wall time per round trip and each thread's CPU time per round trip
//! (`getrusage(RUSAGE_THREAD)`). The difference between the two rows is
//! what a wake-up across CPUs adds: on a VM whose idle vCPUs halt, an
//! interrupt to another vCPU and its return from halt, which can cost
//! more CPU than the SIP work a datagram carries.
//!
//! A third row runs the same bounce across the two CPUs while a spinning
//! thread keeps each of them busy, as SIPp and the other shard keep a
//! gateway's cores busy under load: the wake-up then has to interrupt a
//! running vCPU, which halt polling cannot spare.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let rounds: u32 = match std::env::args().nth(1).map(|a| a.parse()) {
        None => 100_000,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("usage: wake-cost [ROUNDS]  (ROUNDS > 0, default 100000)");
            std::process::exit(2);
        }
    };
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let Some(&first) = cores.first() else {
        eprintln!("wake-cost: no CPU this process may use");
        std::process::exit(1);
    };
    println!(
        "{rounds} round trips of one datagram over loopback UDP, Linux {}",
        kernel_release()
    );
    println!(
        "{:<20} {:>22} {:>22} {:>22}",
        "threads on", "wall µs / round trip", "CPU µs / trip, ping", "CPU µs / trip, pong"
    );
    let mut runs = vec![(first, first, false)];
    if let Some(&second) = cores.get(1) {
        runs.push((first, second, false));
        runs.push((first, second, true));
    }
    for (ping, pong, busy) in runs {
        let (wall, ping_cpu, pong_cpu) = match bounce(ping, pong, rounds, busy) {
            Ok(figures) => figures,
            Err(error) => {
                eprintln!("wake-cost: {error}");
                std::process::exit(1);
            }
        };
        let per = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(rounds);
        println!(
            "{:<20} {:>22.2} {:>22.2} {:>22.2}",
            format!(
                "CPU {} + {}{}",
                ping.id,
                pong.id,
                if busy { ", busy" } else { "" }
            ),
            per(wall),
            per(ping_cpu),
            per(pong_cpu)
        );
    }
}

/// Runs the bounce with the pinger on `ping` and the ponger on `pong`:
/// (wall time, pinger's CPU time, ponger's CPU time). With `busy`, a
/// spinning thread runs on each of the two CPUs for the whole bounce.
fn bounce(
    ping: core_affinity::CoreId,
    pong: core_affinity::CoreId,
    rounds: u32,
    busy: bool,
) -> std::io::Result<(Duration, Duration, Duration)> {
    let stop = Arc::new(AtomicBool::new(false));
    let spinners: Vec<_> = if busy { vec![ping, pong] } else { Vec::new() }
        .into_iter()
        .map(|core| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                core_affinity::set_for_current(core);
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let figures = bounce_once(ping, pong, rounds);
    stop.store(true, Ordering::Relaxed);
    for spinner in spinners {
        let _ = spinner.join();
    }
    figures
}

fn bounce_once(
    ping: core_affinity::CoreId,
    pong: core_affinity::CoreId,
    rounds: u32,
) -> std::io::Result<(Duration, Duration, Duration)> {
    let near = UdpSocket::bind("127.0.0.1:0")?;
    let far = UdpSocket::bind("127.0.0.1:0")?;
    near.connect(far.local_addr()?)?;
    far.connect(near.local_addr()?)?;
    let ponger = std::thread::spawn(move || -> std::io::Result<Duration> {
        core_affinity::set_for_current(pong);
        let mut byte = [0u8; 1];
        for _ in 0..rounds {
            far.recv(&mut byte)?;
            far.send(&byte)?;
        }
        Ok(thread_cpu())
    });
    core_affinity::set_for_current(ping);
    let start_cpu = thread_cpu();
    let start = Instant::now();
    let mut byte = [0u8; 1];
    for _ in 0..rounds {
        near.send(&byte)?;
        near.recv(&mut byte)?;
    }
    let wall = start.elapsed();
    let ping_cpu = thread_cpu() - start_cpu;
    let pong_cpu = ponger
        .join()
        .map_err(|_| std::io::Error::other("the ponger panicked"))??;
    Ok((wall, ping_cpu, pong_cpu))
}

/// This thread's user + system time.
fn thread_cpu() -> Duration {
    // SAFETY: getrusage writes a plain C struct; zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage; RUSAGE_THREAD is the caller.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}
