//! CPU time of a process (Envoy) and CPU pinning, for a per-request cost that does not depend on how the requests
//! were spread in time: the CPU a process burnt during a load run, divided by the requests that run completed.
//!
//! How a caller measures: pin Envoy to one core ([`pin`]) and the load generator to another, then
//! [`per_request`]`(envoy_pid, || run_load())`. The figure is everything that process did meanwhile (listener, HTTP
//! codec, router, upstream connection, filters, stats flushes), so a filter's own cost is the difference from the
//! no-filter scenario run the same way. Resolution is one clock tick (10 ms at the usual 100 Hz): a run must burn
//! much more than that, e.g. 5 s at a few thousand requests per second.
//!
//! Linux only (/proc, `taskset` from util-linux, `getconf`); the workspace denies `unsafe`, hence no libc calls.

use egress_harness::pki::Error;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// Clock ticks per second, the unit of /proc/<pid>/stat's times: `getconf CLK_TCK`, asked once; 100 (what Linux
/// reports on every mainstream architecture) if getconf is missing or says something unusable.
fn ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .filter(|output| output.status.success())
            .and_then(|output| String::from_utf8_lossy(&output.stdout).trim().parse::<u64>().ok())
            .filter(|&ticks| ticks > 0)
            .unwrap_or(100)
    })
}

/// User plus system CPU time of every thread of process `pid` so far (not its waited-for children).
pub fn cpu_time(pid: u32) -> Result<Duration, Error> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let ticks = user_plus_system_ticks(&stat).ok_or_else(|| format!("{path}: unexpected format: {stat}"))?;
    Ok(ticks_to_duration(ticks, ticks_per_second()))
}

/// utime + stime (fields 14 and 15 of proc(5)'s stat line). Field 2, the command name in parentheses, may itself
/// hold spaces and parentheses, so fields are counted from after its last ')': the first one there is field 3.
fn user_plus_system_ticks(stat: &str) -> Option<u64> {
    let (_, after_command) = stat.rsplit_once(')')?;
    let mut fields = after_command.split_whitespace().skip(14 - 3);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    user.checked_add(system)
}

fn ticks_to_duration(ticks: u64, per_second: u64) -> Duration {
    let nanos = u128::from(ticks) * 1_000_000_000 / u128::from(per_second.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Pins every thread of process `pid` to CPU `core` (`taskset -a -cp`). Threads it starts later inherit the
/// affinity of the thread that starts them, so pin Envoy once it runs, before the load.
pub fn pin(pid: u32, core: usize) -> Result<(), Error> {
    taskset(&["-a", "-cp", &core.to_string(), &pid.to_string()])
}

/// Pins the calling thread alone to CPU `core` (`taskset -cp` on its thread id). Its later threads inherit it.
pub fn pin_current_thread(core: usize) -> Result<(), Error> {
    // /proc/thread-self links to "<pid>/task/<tid>": the kernel's id of this thread, without gettid(2).
    let link = std::fs::read_link("/proc/thread-self").map_err(|e| format!("cannot read /proc/thread-self: {e}"))?;
    let thread_id = link
        .file_name()
        .and_then(|name| name.to_str())
        .filter(|name| name.parse::<u32>().is_ok())
        .ok_or_else(|| format!("/proc/thread-self links to {}: no thread id", link.display()))?;
    taskset(&["-cp", &core.to_string(), thread_id])
}

fn taskset(args: &[&str]) -> Result<(), Error> {
    let output = Command::new("taskset")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run taskset ({e}): install util-linux"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!("taskset {} failed: {}", args.join(" "), stderr.trim()).into());
    }
    Ok(())
}

/// CPU time process `pid` spends per request while `load` runs; `load` returns how many requests it completed.
/// Fails if it completed none (there is nothing to divide by).
pub fn per_request(pid: u32, load: impl FnOnce() -> Result<u64, Error>) -> Result<Duration, Error> {
    let before = cpu_time(pid)?;
    let requests = load()?;
    let after = cpu_time(pid)?;
    if requests == 0 {
        return Err(format!("no request completed: cannot tell process {pid}'s CPU time per request").into());
    }
    let spent = after.saturating_sub(before);
    let nanos = spent.as_nanos() / u128::from(requests);
    Ok(Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Burns CPU on the calling thread for `how_long` of wall time.
    fn busy(how_long: Duration) -> u64 {
        let start = Instant::now();
        let mut sum = 0u64;
        while start.elapsed() < how_long {
            for i in 0..10_000u64 {
                sum = std::hint::black_box(sum.wrapping_add(i * i));
            }
        }
        sum
    }

    #[test]
    fn cpu_time_of_this_process_grows_while_it_computes() {
        let pid = std::process::id();
        busy(Duration::from_millis(30));
        let before = cpu_time(pid).unwrap();
        assert!(before > Duration::ZERO);
        busy(Duration::from_millis(100));
        let after = cpu_time(pid).unwrap();
        assert!(after > before, "{after:?} after a busy loop, {before:?} before");
    }

    #[test]
    fn per_request_divides_the_cpu_time_spent_by_the_requests() {
        let cost = per_request(std::process::id(), || {
            busy(Duration::from_millis(100));
            Ok(1_000)
        })
        .unwrap();
        // This thread alone burnt about 100 ms (other tests run alongside): about 100 µs per "request".
        assert!(cost >= Duration::from_micros(20), "{cost:?}");
        assert!(per_request(std::process::id(), || Ok(0)).is_err());
    }

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 1 1 1";
        assert_eq!(user_plus_system_ticks(stat), Some(300));
        assert_eq!(user_plus_system_ticks("42 (short) S 1"), None);
        assert_eq!(ticks_to_duration(250, 100), Duration::from_millis(2_500));
    }

    #[test]
    fn a_pinned_thread_runs_on_that_core_only() {
        let allowed = |status: &str| {
            status.lines().find_map(|line| line.strip_prefix("Cpus_allowed_list:")).map(|v| v.trim().to_string())
        };
        let process = std::fs::read_to_string("/proc/self/status").unwrap();
        // The first core this process may use (a container may not allow core 0).
        let core: usize =
            allowed(&process).unwrap().split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap();
        let pinned = std::thread::spawn(move || {
            pin_current_thread(core).unwrap();
            allowed(&std::fs::read_to_string("/proc/thread-self/status").unwrap()).unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(pinned, core.to_string());
    }
}
