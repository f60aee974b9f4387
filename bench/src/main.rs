//! `make bench`: what the suite costs in a real Envoy (one worker, pinned to core 0; every load generator on core 1),
//! measured side by side in one run against no filter, an empty Wasm filter (the mechanism's floor), Envoy's native
//! RBAC and a Lua filter enforcing the same hosts; how that cost grows with the policy; the modules' sizes and memory.
//! Scenarios alternate round by round (A B C … A B C …), so drift on a shared machine touches them all alike; each
//! figure is the median of the rounds, with the min–max beside it.
//!
//! Per scenario: throughput at saturation (wrk) in front of the echo upstream and of a `direct_response`; Envoy's CPU
//! time per request (utime + stime over the requests a direct_response run answered); latency p50/p99/p99.9 with
//! truly paced arrivals (an open-loop generator, `paced`) at one rate below every scenario's knee; host calls and VM
//! entries per request (counted against the recording host, `calls`).
//!
//! Writes `<out>/results.md`, `<out>/chart.png` and, with `--json FILE`, every figure as JSON. `--quick` runs every
//! scenario briefly (under 3 minutes) for a quick look.

mod calls;
mod cpu;
mod load;
mod paced;
mod report;
mod scenarios;
mod soak;

use clap::{Parser, Subcommand};
use egress_harness::collector::{Collector, Mode};
use egress_harness::echo::Echo;
use egress_harness::envoy::{self, Envoy, Launcher};
use egress_harness::pki::{Error, TestPki};
use egress_harness::{load_policy, wasm_dir};
use load::Expect;
use report::{Latency, Results, Row, Scaling};
use scenarios::{Scenario, Targets, Upstream};
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Host and path of the side-by-side runs: allowed by the example policy's wildcard rule, a cheap answer.
const HOST: &str = "eu.httpbin.org";
const PATH: &str = "/status/200";
/// Envoy runs here; the load generators on the other core.
const ENVOY_CORE: usize = 0;
const LOAD_CORE: usize = 1;

/// What the suite costs in a real Envoy, side by side with no filter, an empty Wasm filter, RBAC and Lua.
#[derive(Debug, Parser)]
#[command(name = "egress-bench", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(flatten)]
    bench: Args,
    #[command(subcommand)]
    soak: Option<Soak>,
}

#[derive(Debug, Subcommand)]
enum Soak {
    /// The soak test (`make soak`): both chains under paced load with audit shipping; memory flat, counters and
    /// audit deliveries exact.
    Soak(soak::Args),
}

#[derive(Debug, clap::Args)]
struct Args {
    /// Every scenario briefly (under 3 minutes): one round of one second.
    #[arg(long)]
    quick: bool,
    /// Rounds; each figure is the median over them.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Seconds per run of a round.
    #[arg(long, value_name = "S", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    seconds: u32,
    /// Where results.md and chart.png go (default: bench/results).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Every figure as JSON, here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

impl Args {
    /// Policy sizes of the scaling runs.
    fn sizes(&self) -> &'static [usize] {
        if self.quick {
            &[10, 10_000]
        } else {
            &[10, 1_000, 10_000, 100_000]
        }
    }

    fn rounds(&self) -> usize {
        if self.quick {
            1
        } else {
            self.rounds as usize
        }
    }

    fn seconds(&self) -> u32 {
        if self.quick {
            1
        } else {
            self.seconds
        }
    }

    fn out(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(|| envoy::workspace_root().join("bench/results"))
    }

    /// How long each paced latency run lasts.
    fn latency_run(&self) -> Duration {
        Duration::from_secs(if self.quick { 2 } else { u64::from(self.seconds()) + 1 })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Soak::Soak(args)) = &cli.soak {
        return soak::main(args);
    }
    match run(&cli.bench) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("egress-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Waits until `envoy` answers `host` as expected: a worker configures its Wasm VMs after Envoy reports ready, and a
/// large policy takes a while to compile; that is start-up, not per-request cost.
fn warm_up(envoy: &Envoy, host: &str, expect: Expect) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let response = egress_harness::client::get(envoy.listener("egress_http"), host, PATH);
        let status = response.as_ref().map_or(0, |r| r.status);
        if (status == 200) == (expect == Expect::Success) && status != 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("Envoy does not answer Host {host} as expected ({expect:?}): {response:?}").into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An Envoy for `bootstrap`, pinned to [`ENVOY_CORE`], answering as expected.
fn start(launcher: &Launcher, bootstrap: &Value, host: &str, expect: Expect) -> Result<Envoy, Error> {
    let envoy = Envoy::start(launcher, bootstrap)?;
    cpu::pin(envoy.pid(), ENVOY_CORE)?;
    warm_up(&envoy, host, expect)?;
    Ok(envoy)
}

/// One scenario's Envoys and what was measured of them.
struct Measured {
    echo: Envoy,
    direct: Envoy,
    row: Row,
}

fn run(args: &Args) -> Result<(), Error> {
    let started = Instant::now();
    // Everything but Envoy (the upstream, the collector, the generators) runs on the load core; Envoys inherit this
    // affinity when they start and are moved to their own core by `start`.
    cpu::pin_current_thread(LOAD_CORE)?;
    let pki = TestPki::new()?;
    let echo = Echo::start(&pki)?;
    // The audit stage's batches are answered and counted, never decoded: the collector shares the load core with
    // the paced generator, whose send times must not wait behind a batch being parsed.
    let collector = Collector::start()?;
    collector.set_mode(Mode::Discard);
    // The run directory: the native access log's files (`suite-accesslog`), removed at the end.
    let run_dir = envoy::run_dir()?;
    let targets = Targets {
        echo_http: echo.http_addr(),
        echo_https: echo.https_addr(),
        collector: collector.addr(),
        run_dir: run_dir.clone(),
    };
    let launcher = Launcher::find()?;
    let policy_path = envoy::workspace_root().join("examples/policy.yaml");
    let policy: Value = serde_json::from_str(&load_policy(&policy_path)?)?;
    let saturate = |envoy: &Envoy, host: &str, expect: Expect| {
        load::saturate(envoy.listener("egress_http"), host, PATH, args.seconds(), expect, Some(LOAD_CORE))
    };

    // Side by side: every scenario runs at once, idle but for the one under load.
    let mut measured = Vec::new();
    for scenario in Scenario::ALL {
        let bootstrap = |upstream| scenarios::bootstrap(scenario, upstream, &policy, &targets);
        let echo = start(&launcher, &bootstrap(Upstream::Echo)?, HOST, Expect::Success)?;
        let direct = start(&launcher, &bootstrap(Upstream::DirectResponse)?, HOST, Expect::Success)?;
        let calls = calls::per_request(scenario, &policy, HOST, PATH)?;
        measured.push(Measured { echo, direct, row: Row { scenario, calls, ..Row::default() } });
    }
    for round in 1..=args.rounds() {
        eprintln!("throughput and CPU, round {round}/{}", args.rounds());
        for m in &mut measured {
            m.row.echo.push(saturate(&m.echo, HOST, Expect::Success)?.rate);
            let mut rate = 0.0;
            let cpu = cpu::per_request(m.direct.pid(), || {
                let direct = saturate(&m.direct, HOST, Expect::Success)?;
                rate = direct.rate;
                Ok(direct.requests)
            })?;
            m.row.direct.push(rate);
            m.row.cpu_us.push(cpu.as_secs_f64() * 1e6);
        }
    }
    // One rate for every scenario, below the slowest one's knee (a third of its saturation), so each request meets
    // an idle worker and no scenario reports queueing.
    let slowest = measured.iter().map(|m| m.row.direct.median()).fold(f64::INFINITY, f64::min);
    let rate = (slowest / 3.0).clamp(100.0, 2_000.0).round();
    for round in 1..=args.rounds() {
        eprintln!("paced latency at {rate} req/s, round {round}/{}", args.rounds());
        for m in &mut measured {
            let plan = paced::Plan {
                target: m.direct.listener("egress_http"),
                host: HOST.into(),
                path: PATH.into(),
                rate,
                duration: args.latency_run(),
                connections: 4,
                core: Some(LOAD_CORE),
            };
            m.row.latency.push(paced::run(&plan)?);
        }
    }
    // Stopping an Envoy flushes its access log: the native path logged every request it answered.
    let mut rows: Vec<Row> = measured.into_iter().map(|m| m.row).collect();
    for row in rows.iter_mut().filter(|r| r.scenario == Scenario::SuiteAccessLog) {
        row.access_log_lines = Some(access_log_lines(&targets)?);
    }

    // Rule scaling: the allow-list and RBAC at each size, hits and misses, in front of a direct response; the VM
    // memory of the allow-list alone and of the fused suite.
    let mut scaling = Vec::new();
    for &rules in args.sizes() {
        let policy = scenarios::generated_policy(rules);
        let hit = scenarios::generated_hit(rules);
        let bootstrap = |scenario| scenarios::bootstrap(scenario, Upstream::DirectResponse, &policy, &targets);
        let allowlist = start(&launcher, &bootstrap(Scenario::AllowList)?, &hit, Expect::Success)?;
        let memory = allowlist.stat("wasmcustom.egress_allowlist_vm_memory_bytes");
        let suite = start(&launcher, &bootstrap(Scenario::SuiteFused)?, &hit, Expect::Success)?;
        let suite_memory = suite.stat("wasmcustom.egress_suite_vm_memory_bytes");
        drop(suite);
        let loading = Instant::now();
        let rbac = start(&launcher, &bootstrap(Scenario::Rbac)?, &hit, Expect::Success).map_err(|e| e.to_string());
        eprintln!(
            "{rules} rules: RBAC {} in {:.1?}",
            if rbac.is_ok() { "loaded" } else { "failed" },
            loading.elapsed()
        );
        scaling.push((rules, allowlist, rbac, Scaling { rules, memory, suite_memory, ..Scaling::default() }));
    }
    for round in 1..=args.rounds() {
        eprintln!("scaling round {round}/{}", args.rounds());
        for (rules, allowlist, rbac, result) in &mut scaling {
            let hit = scenarios::generated_hit(*rules);
            let miss = scenarios::GENERATED_MISS;
            let measure = |envoy: &Envoy, what: &str, host: &str, expect: Expect| {
                saturate(envoy, host, expect).map(|s| s.rate).map_err(|e| format!("{what} at {rules} rules: {e}"))
            };
            result.allow_hit.push(measure(allowlist, "allow-list", &hit, Expect::Success)?);
            result.allow_miss.push(measure(allowlist, "allow-list", miss, Expect::Refusal)?);
            if let Ok(rbac) = rbac {
                result.rbac_hit.push(measure(rbac, "RBAC", &hit, Expect::Success)?);
                result.rbac_miss.push(measure(rbac, "RBAC", miss, Expect::Refusal)?);
            }
        }
    }
    let scaling = scaling
        .into_iter()
        .map(|(_, _, rbac, mut result)| {
            result.rbac_error = rbac.err();
            result
        })
        .collect();

    // The modules `make build` ships and the floor beside them (not cargo's intermediate files in the same folder).
    let mut modules = Vec::new();
    for module in egress_wasm_build::MODULES.iter().chain([&egress_wasm_build::EMPTY]) {
        let path = wasm_dir().join(module.file);
        let size = std::fs::metadata(&path).map_err(|e| format!("{}: {e} (run make build)", path.display()))?.len();
        modules.push((module.file.to_string(), size));
    }

    let results = Results {
        envoy_version: envoy::version(),
        rounds: args.rounds(),
        seconds: args.seconds(),
        quick: args.quick,
        rows,
        latency: Latency { rate, seconds: args.latency_run().as_secs() },
        scaling,
        modules,
        elapsed: started.elapsed(),
    };
    let out = args.out();
    std::fs::create_dir_all(&out)?;
    let markdown = results.markdown();
    std::fs::write(out.join("results.md"), &markdown)?;
    report::chart(&results, &out.join("chart.png"))?;
    if let Some(json) = &args.json {
        std::fs::write(json, serde_json::to_string_pretty(&results.json())?)?;
    }
    println!("{markdown}");
    eprintln!("written: {} and chart.png", out.join("results.md").display());
    collector.shutdown();
    echo.shutdown();
    let _ = std::fs::remove_dir_all(&run_dir);
    Ok(())
}

/// The lines `suite-accesslog`'s Envoys wrote, checked to carry the suite's decision for the benchmark's request
/// (the filter-state record, as the Istio provider would print it).
fn access_log_lines(targets: &Targets) -> Result<usize, Error> {
    let mut lines = 0;
    for upstream in [Upstream::Echo, Upstream::DirectResponse] {
        let path = scenarios::access_log_file(targets, upstream);
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        for line in text.lines() {
            let line: Value = serde_json::from_str(line).map_err(|e| format!("{}: {e}: {line}", path.display()))?;
            let decision: Value = serde_json::from_str(line["decision"].as_str().unwrap_or("null"))?;
            if (line["authority"].as_str(), decision["action"].as_str()) != (Some(HOST), Some("allow")) {
                return Err(
                    format!("{}: a line without the suite's decision for {HOST}: {line}", path.display()).into()
                );
            }
            lines += 1;
        }
    }
    if lines == 0 {
        return Err("suite-accesslog: the access log is empty".into());
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
        let quick = Cli::try_parse_from(["egress-bench", "--quick", "--rounds", "5"]).unwrap().bench;
        assert_eq!((quick.rounds(), quick.seconds()), (1, 1), "--quick wins");
        let soak = Cli::try_parse_from(["egress-bench", "soak", "--chains", "suite", "--requests", "20000"]).unwrap();
        assert!(matches!(soak.soak, Some(Soak::Soak(_))));
        assert!(Cli::try_parse_from(["egress-bench", "--quick", "soak"]).is_err(), "bench flags are not soak's");
    }
}
