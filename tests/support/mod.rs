//! What the end-to-end tests share. Each test binary uses a part of it.
#![allow(dead_code)]

pub mod tls;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// A child process killed when the test ends, pass or fail.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads a SIPp process's screen (its piped stdout) to the end and waits
/// for it: the screen, and whether SIPp exited 0.
pub fn sipp_screen(sipp: &mut Child) -> (String, bool) {
    let mut screen = String::new();
    sipp.stdout
        .take()
        .expect("piped stdout")
        .read_to_string(&mut screen)
        .expect("SIPp's screen");
    let ok = sipp.wait().expect("sipp ends").success();
    (screen, ok)
}

/// A bundled SIPp scenario.
pub fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("loadtest/scenarios")
        .join(name)
}

/// A directory of this test process for SIPp's files.
pub fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sipshard-e2e-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

/// A count from SIPp's summary screen (`label`'s cumulative column).
pub fn screen_count<T: FromStr>(screen: &str, label: &str) -> T {
    screen
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .and_then(|l| l.split('|').nth(2))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no '{label}' in SIPp's output:\n{screen}"))
}

/// Waits until `address` accepts TCP connections: the gateway's admin API
/// (start-up includes loading the eBPF program, slower on a busy machine).
pub fn wait_for_listener(address: &str) {
    let started = Instant::now();
    while TcpStream::connect(address).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the gateway did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A plain HTTP/1.1 request to `address`; returns the status and the body.
pub fn http(address: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let stream = TcpStream::connect(address).expect("the admin API listens");
    http_on(stream, address, method, path, body)
}

/// One HTTP/1.1 request on a connected `stream` (to `address`): status and
/// body. For callers that connect from a source address of their own.
pub fn http_on(
    mut stream: TcpStream,
    address: &str,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("the request is written");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("a response");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Every sample of the admin API's `/metrics`, summed over the shards:
/// name plus the labels other than `shard` (`name{a=x,b=y}`), to value. A
/// histogram gives its count as `name+Inf`.
pub fn scrape(admin: &str) -> HashMap<String, f64> {
    let (status, body) = http(admin, "GET", "/metrics", "");
    assert_eq!(status, 200, "{body}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let mut sums = HashMap::new();
    for sample in scrape.samples {
        let mut labels: Vec<String> = sample
            .labels
            .iter()
            .filter(|(k, _)| k.as_str() != "shard")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        labels.sort();
        let key = match labels.is_empty() {
            true => sample.metric.clone(),
            false => format!("{}{{{}}}", sample.metric, labels.join(",")),
        };
        let value = match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            // A histogram's buckets are cumulative; its +Inf bucket is its count.
            prometheus_parse::Value::Histogram(buckets) => {
                let counts: Vec<f64> = buckets.iter().map(|b| b.count).collect();
                assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
                let total = buckets
                    .iter()
                    .find(|b| b.less_than.is_infinite())
                    .map_or(0.0, |b| b.count);
                *sums.entry(format!("{key}+Inf")).or_insert(0.0) += total;
                continue;
            }
            prometheus_parse::Value::Summary(_) => continue,
        };
        *sums.entry(key).or_insert(0.0) += value;
    }
    sums
}

/// One value of a [`scrape`]; a missing key fails the test.
pub fn value(sums: &HashMap<String, f64>, key: &str) -> u64 {
    *sums
        .get(key)
        .unwrap_or_else(|| panic!("no {key} in /metrics: {sums:?}")) as u64
}

/// A small deterministic generator (a 64-bit LCG), so that every run of a
/// hostile test sends the same "random" bytes and cuts.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}
