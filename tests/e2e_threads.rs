//! The shard threads as the kernel sees them, read from `/proc` while the
//! real binary runs: one per shard, named `shard-i`, each pinned to a CPU
//! of its own, under the kernel's default scheduling policy.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::Running;

/// `SCHED_OTHER` as `/proc/<tid>/stat` reports it. (`SCHED_BATCH`, which
/// keeps a woken shard from preempting the task on its core, saved CPU
/// where SIPp shares the cores but lost calls beside CPU hogs.)
const SCHED_OTHER: u32 = 0;

#[derive(Debug)]
struct Thread {
    name: String,
    policy: u32,
    cpus: String,
}

/// The process's threads whose name starts with `shard-`, sorted by name.
fn shard_threads(pid: u32) -> Vec<Thread> {
    let mut threads = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return threads;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let read = |file: &str| std::fs::read_to_string(path.join(file)).unwrap_or_default();
        let name = read("comm").trim().to_string();
        if !name.starts_with("shard-") {
            continue;
        }
        // Fields after the name's closing parenthesis start at field 3
        // (state); the policy is field 41.
        let stat = read("stat");
        let policy = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(41 - 3))
            .and_then(|p| p.parse().ok())
            .unwrap_or(u32::MAX);
        let cpus = read("status")
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap_or_default()
            .trim()
            .to_string();
        threads.push(Thread { name, policy, cpus });
    }
    threads.sort_by(|a, b| a.name.cmp(&b.name));
    threads
}

/// Starts the gateway with two shards and waits until both shard threads
/// are pinned to one CPU each; returns what `/proc` says of them then (or
/// at the 15 s deadline, for the assertion to show).
fn shards_once_pinned(listen: &str) -> Vec<Thread> {
    let gateway = Running(
        Command::new(env!("CARGO_BIN_EXE_sipshard"))
            .args(["--listen", listen, "--shards", "2"])
            .args(["--backend", "sip:127.0.0.1:22080"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the sipshard binary"),
    );
    let started = Instant::now();
    loop {
        let threads = shard_threads(gateway.0.id());
        let settled = threads.len() == 2 && threads.iter().all(|t| t.cpus.parse::<usize>().is_ok());
        if settled || started.elapsed() > Duration::from_secs(15) {
            return threads;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn one_thread_per_shard_each_pinned_to_a_cpu_of_its_own() {
    let threads = shards_once_pinned("127.0.0.1:22060");
    let names: Vec<&str> = threads.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["shard-0", "shard-1"], "{threads:?}");
    for thread in &threads {
        assert_eq!(thread.policy, SCHED_OTHER, "{threads:?}");
        assert!(
            thread.cpus.parse::<usize>().is_ok(),
            "each shard is pinned to one CPU: {threads:?}"
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores >= 2 {
        assert_ne!(
            threads[0].cpus, threads[1].cpus,
            "one core each: {threads:?}"
        );
    }
}

#[test]
fn a_cpu_the_process_may_not_use_stops_the_start_with_its_number() {
    let dir = support::tempdir("cpus");
    let config = dir.join("sipshard.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:22260\"\nshards = 2\ncpus = [0, 4095]\n\
         [backends]\nmembers = [\"sip:127.0.0.1:22080\"]\n",
    )
    .expect("a config file");
    let output = Command::new(env!("CARGO_BIN_EXE_sipshard"))
        .arg("--config")
        .arg(&config)
        .output()
        .expect("the sipshard binary");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("CPU 4095"), "{stderr}");
}
