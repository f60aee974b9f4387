//! Load from the ecosystem's generators: `wrk` (closed loop, saturation throughput) and nghttp2's `h2load` (a fixed
//! rate per connection, every request's latency logged in microseconds: the targets are tens of microseconds, which
//! `hey`'s 0.1 ms CSV cannot resolve). Both are Debian packages (`make bench` installs them).

use egress_harness::pki::Error;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

/// What a request should get: the benchmark refuses to report a throughput of wrong answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// 2xx (allowed).
    Success,
    /// Anything else (denied).
    Refusal,
}

/// Connections kept busy at saturation: enough to keep one Envoy worker at 100 %.
const CONNECTIONS: u32 = 16;

/// Closed-loop throughput (requests per second) of `seconds` of `wrk` with `Host: host`.
pub fn saturate(target: SocketAddr, host: &str, path: &str, seconds: u32, expect: Expect) -> Result<f64, Error> {
    let output = Command::new("wrk")
        .args(["-t1", &format!("-c{CONNECTIONS}"), &format!("-d{seconds}s"), "--timeout", "10s"])
        .args(["-H", &format!("Host: {host}")])
        .arg(format!("http://{target}{path}"))
        .output()
        .map_err(|e| format!("cannot run wrk ({e}): install it (apt-get install wrk, or make bench)"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!("wrk failed: {text}{}", String::from_utf8_lossy(&output.stderr)).into());
    }
    let number = |prefix: &str| {
        text.lines().find_map(|line| line.trim().strip_prefix(prefix).and_then(|v| v.trim().parse::<f64>().ok()))
    };
    let rate = number("Requests/sec:").ok_or_else(|| format!("no Requests/sec in wrk's output: {text}"))?;
    let total = text
        .lines()
        .find_map(|line| line.trim().split_once(" requests in ").and_then(|(n, _)| n.trim().parse::<f64>().ok()))
        .ok_or_else(|| format!("no request count in wrk's output: {text}"))?;
    let refused = number("Non-2xx or 3xx responses:").unwrap_or(0.0);
    let errors = text.lines().any(|line| line.trim().starts_with("Socket errors:"));
    // Not one answer in the whole run: slower than the run itself (RBAC with 100k policies is).
    if total == 0.0 {
        return Ok(0.0);
    }
    let as_expected = match expect {
        Expect::Success => refused == 0.0,
        Expect::Refusal => refused == total,
    };
    if errors || !as_expected {
        return Err(format!("wrong answers for Host {host} (expected {expect:?}): {text}").into());
    }
    Ok(rate)
}

/// Latencies at a fixed rate.
#[derive(Clone, Copy, Debug)]
pub struct Latency {
    pub p50: Duration,
    pub p99: Duration,
    /// The rate achieved (requests per second).
    pub rate: f64,
}

/// Connections sharing a fixed rate: few, so their paced sends rarely land together (a burst is queueing that no
/// filter caused), enough that one slow answer does not stall the whole rate.
pub const RATE_CONNECTIONS: u32 = 4;

/// `seconds` of `h2load` (HTTP/1.1) at `rate` requests per second in all; every request must succeed.
pub fn at_rate(target: SocketAddr, host: &str, path: &str, seconds: u32, rate: f64) -> Result<Latency, Error> {
    let per_connection = (rate / f64::from(RATE_CONNECTIONS)).max(1.0);
    let log = std::env::temp_dir().join(format!("egress-bench-{}-{}.tsv", std::process::id(), target.port()));
    let output = Command::new("h2load")
        .args(["--h1", "-c", &RATE_CONNECTIONS.to_string(), "--rps", &format!("{per_connection:.0}")])
        .args(["-D", &seconds.to_string(), "-H", &format!(":authority: {host}"), "--log-file"])
        .arg(&log)
        .arg(format!("http://{target}{path}"))
        .output()
        .map_err(|e| format!("cannot run h2load ({e}): install it (apt-get install nghttp2-client, or make bench)"))?;
    let lines = std::fs::read_to_string(&log);
    let _ = std::fs::remove_file(&log);
    if !output.status.success() {
        return Err(format!("h2load failed: {}", String::from_utf8_lossy(&output.stderr)).into());
    }
    // One row per request: start (µs since the epoch), status, µs until the end of the response.
    let mut latencies = Vec::new();
    for line in lines.map_err(|e| format!("h2load wrote no log: {e}"))?.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let (Some(status), Some(micros)) = (fields.get(1), fields.get(2)) else { continue };
        if !status.starts_with('2') {
            return Err(format!("h2load: a request to Host {host} got {status}").into());
        }
        latencies.push(Duration::from_micros(micros.parse().map_err(|e| format!("h2load log {line}: {e}"))?));
    }
    if latencies.is_empty() {
        return Err("h2load sent no requests".into());
    }
    latencies.sort();
    let percentile = |p: usize| latencies[(latencies.len() * p).div_ceil(100).saturating_sub(1)];
    Ok(Latency { p50: percentile(50), p99: percentile(99), rate: latencies.len() as f64 / f64::from(seconds) })
}
