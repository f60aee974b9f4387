//! Load from the ecosystem's generators: `wrk` (closed loop, saturation throughput) and `hey` (a fixed rate per
//! connection, every latency in CSV). Both are Debian packages (`make bench` installs them).

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

/// `seconds` of `hey` at `rate` requests per second in all, spread over a few connections; every request must
/// succeed.
pub fn at_rate(target: SocketAddr, host: &str, path: &str, seconds: u32, rate: f64) -> Result<Latency, Error> {
    let connections = 8u32;
    let per_connection = (rate / f64::from(connections)).max(1.0);
    let output = Command::new("hey")
        .args(["-z", &format!("{seconds}s"), "-c", &connections.to_string(), "-q", &format!("{per_connection:.0}")])
        .args(["-host", host, "-o", "csv"])
        .arg(format!("http://{target}{path}"))
        .output()
        .map_err(|e| format!("cannot run hey ({e}): install it (apt-get install hey, or make bench)"))?;
    if !output.status.success() {
        return Err(format!("hey failed: {}", String::from_utf8_lossy(&output.stderr)).into());
    }
    // CSV: response-time (seconds), DNS+dialup, DNS, request-write, response-delay, response-read, status-code, offset.
    let mut latencies = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        let (Some(seconds), Some(status)) = (fields.first(), fields.get(6)) else { continue };
        if !status.starts_with('2') {
            return Err(format!("hey: a request to Host {host} got {status}").into());
        }
        latencies.push(Duration::from_secs_f64(seconds.parse::<f64>().map_err(|e| format!("hey csv {line}: {e}"))?));
    }
    if latencies.is_empty() {
        return Err("hey sent no requests".into());
    }
    latencies.sort();
    let percentile = |p: usize| latencies[(latencies.len() * p).div_ceil(100).saturating_sub(1)];
    Ok(Latency { p50: percentile(50), p99: percentile(99), rate: latencies.len() as f64 / f64::from(seconds) })
}
