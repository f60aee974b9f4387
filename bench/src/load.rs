//! Saturation load from `wrk` (closed loop: the throughput a scenario can serve), pinned to its own core so that it
//! never competes with the Envoy it measures. A Debian package (`make bench` installs it).

use egress_harness::pki::Error;
use std::net::SocketAddr;
use std::process::Command;

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

/// A saturation run: requests per second, and how many were answered.
#[derive(Clone, Copy, Debug)]
pub struct Saturation {
    pub rate: f64,
    pub requests: u64,
}

/// `seconds` of `wrk` with `Host: host`, on `core` when given (`taskset`).
pub fn saturate(
    target: SocketAddr,
    host: &str,
    path: &str,
    seconds: u32,
    expect: Expect,
    core: Option<usize>,
) -> Result<Saturation, Error> {
    let mut command = match core {
        Some(core) => {
            let mut taskset = Command::new("taskset");
            taskset.args(["-c", &core.to_string(), "wrk"]);
            taskset
        }
        None => Command::new("wrk"),
    };
    let output = command
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
        .find_map(|line| line.trim().split_once(" requests in ").and_then(|(n, _)| n.trim().parse::<u64>().ok()))
        .ok_or_else(|| format!("no request count in wrk's output: {text}"))?;
    let refused = number("Non-2xx or 3xx responses:").unwrap_or(0.0);
    let errors = text.lines().any(|line| line.trim().starts_with("Socket errors:"));
    // Not one answer in the whole run: slower than the run itself (RBAC with 100k policies is).
    if total == 0 {
        return Ok(Saturation { rate: 0.0, requests: 0 });
    }
    let as_expected = match expect {
        Expect::Success => refused == 0.0,
        Expect::Refusal => refused == total as f64,
    };
    if errors || !as_expected {
        return Err(format!("wrong answers for Host {host} (expected {expect:?}): {text}").into());
    }
    Ok(Saturation { rate, requests: total })
}
