//! `make bench`: what the suite costs in a real Envoy (one worker), measured side by side in one run against no
//! filter, Envoy's native RBAC and a Lua filter enforcing the same hosts; how that cost grows with the policy; the
//! modules' sizes and memory. Scenarios alternate round by round (A B C … A B C …), so drift on a shared machine
//! touches them all alike; each figure is the median of the rounds, with the min–max beside it.
//!
//! Writes `<out>/results.md` and `<out>/chart.png`.

mod load;
mod report;
mod scenarios;

use egress_harness::collector::Collector;
use egress_harness::echo::Echo;
use egress_harness::envoy::{self, Envoy, Launcher};
use egress_harness::pki::{Error, TestPki};
use egress_harness::{load_policy, wasm_dir};
use load::Expect;
use report::{LatencyRun, Load, Results, Samples, Scaling};
use scenarios::{Filters, Targets, Upstream};
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Policy sizes of the scaling runs.
const SIZES: [usize; 4] = [10, 1_000, 10_000, 100_000];
/// Host and path of the side-by-side runs: allowed by the example policy's wildcard rule, a cheap echo answer.
const HOST: &str = "eu.httpbin.org";
const PATH: &str = "/status/200";
/// The VM memory gauge every filter sets after its configuration (egress-proxy).
const MEMORY_GAUGE: &str = "wasmcustom.egress_allowlist_vm_memory_bytes";

struct Args {
    rounds: usize,
    seconds: u32,
    out: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { rounds: 3, seconds: 5, out: envoy::workspace_root().join("bench/results") };
    let mut rest = std::env::args().skip(1);
    while let Some(flag) = rest.next() {
        let value = rest.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--rounds" => args.rounds = value.parse().map_err(|_| format!("--rounds {value}: not a number"))?,
            "--seconds" => args.seconds = value.parse().map_err(|_| format!("--seconds {value}: not a number"))?,
            "--out" => args.out = PathBuf::from(value),
            _ => return Err(format!("unknown argument {flag} (--rounds N --seconds S --out DIR)")),
        }
    }
    if args.rounds == 0 || args.seconds == 0 {
        return Err("--rounds and --seconds must be at least 1".into());
    }
    Ok(args)
}

fn main() -> ExitCode {
    match parse_args().map_err(Error::from).and_then(|args| run(&args)) {
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
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let response = egress_harness::client::get(envoy.listener("egress_http"), host, PATH);
        let status = response.as_ref().map_or(0, |r| r.status);
        if (status == 200) == (expect == Expect::Success) && status != 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("Envoy does not answer Host {host} as expected ({expect:?}): {response:?}").into());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn run(args: &Args) -> Result<(), Error> {
    let started = Instant::now();
    let pki = TestPki::new()?;
    let echo = Echo::start(&pki)?;
    let collector = Collector::start()?;
    let targets = Targets { echo_http: echo.http_addr(), echo_https: echo.https_addr(), collector: collector.addr() };
    let launcher = Launcher::find()?;
    let policy_path = envoy::workspace_root().join("examples/policy.yaml");
    let policy: Value = serde_json::from_str(&load_policy(&policy_path)?)?;

    // Side by side: every scenario runs at once, idle but for the one under load.
    let mut side_by_side = Vec::new();
    for upstream in [Upstream::Echo, Upstream::DirectResponse] {
        for filters in Filters::ALL {
            let bootstrap = scenarios::bootstrap(filters, upstream, &policy, &targets)?;
            let envoy = Envoy::start(&launcher, &bootstrap)?;
            warm_up(&envoy, HOST, Expect::Success)?;
            side_by_side.push((filters, upstream, envoy, Samples::default()));
        }
    }
    for round in 1..=args.rounds {
        eprintln!("throughput round {round}/{}", args.rounds);
        for (_, _, envoy, samples) in &mut side_by_side {
            let rate = load::saturate(envoy.listener("egress_http"), HOST, PATH, args.seconds, Expect::Success)?;
            samples.push(rate);
        }
    }
    let echo_medians: Vec<(Filters, f64)> =
        side_by_side.iter().filter(|(_, u, _, _)| *u == Upstream::Echo).map(|(f, _, _, s)| (*f, s.median())).collect();
    let no_filter_echo =
        echo_medians.iter().find(|(f, _)| *f == Filters::None).map(|(_, m)| *m).ok_or("no baseline")?;
    let slowest_echo = echo_medians.iter().map(|(_, m)| *m).fold(f64::INFINITY, f64::min);
    // The targets measure latency at half the no-filter maximum; a scenario slower than twice that is past its own
    // knee there and reports queueing, so latency is also measured at half the slowest scenario's maximum.
    let mut latencies = vec![
        LatencyRun::new(Load::HalfOfNoFilter, (no_filter_echo / 2.0).round()),
        LatencyRun::new(Load::BelowEveryKnee, (slowest_echo / 2.0).round()),
    ];
    for round in 1..=args.rounds {
        for run in &mut latencies {
            eprintln!("latency round {round}/{} at {} req/s", args.rounds, run.rate);
            for (filters, upstream, envoy, _) in &side_by_side {
                if *upstream == Upstream::Echo {
                    let latency = load::at_rate(envoy.listener("egress_http"), HOST, PATH, args.seconds, run.rate)?;
                    run.push(*filters, latency);
                }
            }
        }
    }
    let throughput = side_by_side.iter().map(|(f, u, _, s)| (*f, *u, s.clone())).collect();
    drop(side_by_side);

    // Rule scaling: the allow-list and RBAC at each size, hits and misses, in front of a direct response.
    let mut scaling = Vec::new();
    for rules in SIZES {
        let policy = scenarios::generated_policy(rules);
        let allowlist = scenarios::bootstrap(Filters::AllowList, Upstream::DirectResponse, &policy, &targets)?;
        let allowlist = Envoy::start(&launcher, &allowlist)?;
        let hit = scenarios::generated_hit(rules);
        warm_up(&allowlist, &hit, Expect::Success)?;
        let memory = allowlist.stat(MEMORY_GAUGE);
        let rbac = scenarios::bootstrap(Filters::Rbac, Upstream::DirectResponse, &policy, &targets)?;
        let loading = Instant::now();
        let rbac = Envoy::start(&launcher, &rbac)
            .and_then(|envoy| warm_up(&envoy, &hit, Expect::Success).map(|()| envoy))
            .map_err(|e| e.to_string());
        eprintln!(
            "{rules} rules: RBAC {} in {:.1?}",
            if rbac.is_ok() { "loaded" } else { "failed" },
            loading.elapsed()
        );
        scaling.push((rules, allowlist, rbac, Scaling { rules, memory, ..Scaling::default() }));
    }
    for round in 1..=args.rounds {
        eprintln!("scaling round {round}/{}", args.rounds);
        for (rules, allowlist, rbac, result) in &mut scaling {
            let hit = scenarios::generated_hit(*rules);
            let miss = scenarios::GENERATED_MISS;
            let measure = |envoy: &Envoy, what: &str, host: &str, expect: Expect| {
                load::saturate(envoy.listener("egress_http"), host, PATH, args.seconds, expect)
                    .map_err(|e| format!("{what} at {rules} rules: {e}"))
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

    let mut modules = Vec::new();
    for entry in std::fs::read_dir(wasm_dir())? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "wasm") {
            let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            modules.push((name, std::fs::metadata(&path)?.len()));
        }
    }
    modules.sort();

    let results = Results {
        envoy_version: envoy::version(),
        rounds: args.rounds,
        seconds: args.seconds,
        throughput,
        latencies,
        scaling,
        modules,
        elapsed: started.elapsed(),
    };
    std::fs::create_dir_all(&args.out)?;
    let markdown = results.markdown();
    std::fs::write(args.out.join("results.md"), &markdown)?;
    report::chart(&results, &args.out.join("chart.png"))?;
    println!("{markdown}");
    eprintln!("written: {} and chart.png", args.out.join("results.md").display());
    collector.shutdown();
    Ok(())
}
