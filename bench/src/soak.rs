//! `make soak` (`egress-bench soak`): a long run of the whole suite in a real Envoy at a steady rate, for what only
//! shows over time: memory that grows, counters that drift away from the traffic, audit events that go missing.
//!
//! For each chain (the fused suite module, `wasmplugin-manifests/suite`; the separate filters,
//! `wasmplugin-manifests/wasmplugins`) one Envoy built as `make bench` builds it (`scenarios`, one worker; nothing
//! pinned) in front of the echo upstream, its audit stage configured as production is (`examples/istio/audit.yaml`:
//! events in Envoy's log and batched OTLP/HTTP protobuf with the default batching, 100 events or 64 KiB, flushed
//! every second, at most 10 000 queued) and shipping to a [`Receiver`] that counts every record. The traffic is paced
//! (`paced::run_mix`, open loop) through a fixed cycle, [`MIX`]: mostly allowed requests, one the gateway
//! redirects and follows, spoofed identity headers, refusals by host, path, deny list and caller.
//!
//! The run is cut into `--samples` segments; after each one, every answer in, a sample: Envoy's RSS (and tcmalloc's
//! figures, from the admin's `/memory`), each Wasm VM's linear memory (its size and its resident pages, read from
//! `/proc/<pid>/smaps`: the `<filter>_vm_memory_bytes` gauges are recorded once, at `on_configure`, so they cannot
//! show growth), the suite's counters and what the receiver got. Counters are taken relative to a baseline read
//! after start-up (whose own requests are not the soak's).
//!
//! Properties, each named in the summary and, when it fails, on stderr and in the exit status:
//! - `envoy-rss`: Envoy's RSS at the end is at most [`MAX_GROWTH_PERCENT`] above its RSS at the end of warm-up;
//! - `vm-memory`: likewise each VM's linear memory, and no VM appears or goes (resident pages are reported beside
//!   it);
//! - `counters`: the allow-list's allowed and denied decisions, the spoofed identity headers removed, the redirects
//!   followed are what the mix implies; the audit stage counted one event per request;
//! - `audit-drops`: no event dropped, no batch rejected, nothing left queued;
//! - `delivery`: the receiver got one record per request, no event id twice;
//! - `responses`: every answer had the status its request must get (the paced generator stops at the first wrong
//!   one, and the run fails with it).
//!
//! Writes, under `<out>/envoy-<version>/`: `<chain>.csv` (the samples), `summary.md` and `memory.png` (Envoy's RSS
//! and each VM's memory over the requests, a row per chain).

use crate::load::Expect;
use crate::paced::{self, Plan, Request};
use crate::scenarios::{self, Scenario, Targets, Upstream};
use crate::{report, HOST};
use egress_harness::bootstrap::{AUDIT_COLLECTOR_CLUSTER, HTTP_LISTENER};
use egress_harness::echo::Echo;
use egress_harness::envoy::{self, Envoy, Launcher};
use egress_harness::pki::{Error, TestPki};
use egress_harness::{istio, load_audit, load_policy, wasm_dir};
use plotters::prelude::*;
use serde_json::Value;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The property's bound: memory at the end at most this much above what it was at the end of warm-up.
const MAX_GROWTH_PERCENT: f64 = 5.0;
/// The default steady rate: a million requests in about 7.6 minutes, below what the separate filters (the slower
/// chain) serve on one worker with the audit log on, on an otherwise idle 2-core machine.
const DEFAULT_RATE: f64 = 2_200.0;
const DEFAULT_REQUESTS: u64 = 1_000_000;
/// How long, after the last request, the audit stage may take to deliver what it holds: a flush interval, a
/// collector timeout and retries, with room to spare.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How often [`watching_queue`] reads the audit queue's depth.
const QUEUE_POLL: Duration = Duration::from_millis(20);
/// Longest body the receiver reads (a batch is at most 1 MiB).
const MAX_BODY: usize = 8 * 1024 * 1024;
/// A Wasm memory is a reservation of this much address space or more (V8 reserves 8 GiB and more for a 32-bit
/// memory, to bounds-check with guard pages), its first part readable and writable: the memory's current size.
const WASM_RESERVATION: u64 = 4 << 30;
const WASM_PAGE: u64 = 64 * 1024;
/// How much of a module's first data segment identifies the module in a VM's memory.
const SEGMENT_PROBE: usize = 64 * 1024;

/// A chain of the manifests, as `make test-integration` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Chain {
    Suite,
    Wasmplugins,
}

impl Chain {
    /// The folder of `wasmplugin-manifests/`.
    fn id(self) -> &'static str {
        match self {
            Chain::Suite => "suite",
            Chain::Wasmplugins => "wasmplugins",
        }
    }

    fn scenario(self) -> Scenario {
        match self {
            Chain::Suite => Scenario::SuiteFused,
            Chain::Wasmplugins => Scenario::SuiteSeparate,
        }
    }
}

/// `make soak`: both chains under paced load with audit shipping; memory flat, counters and deliveries exact.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Requests per chain.
    #[arg(long, value_name = "N", env = "SOAK_REQUESTS", default_value_t = DEFAULT_REQUESTS)]
    requests: u64,
    /// Requests per second, paced (open loop).
    #[arg(long, value_name = "R", env = "SOAK_RATE", default_value_t = DEFAULT_RATE)]
    rate: f64,
    /// Requests before the memory baseline is taken (default: a tenth of --requests).
    #[arg(long, value_name = "N")]
    warmup: Option<u64>,
    /// Segments, each ending with a memory and counter sample.
    #[arg(long, value_name = "N", default_value_t = 100)]
    samples: u64,
    #[arg(long, value_name = "N", default_value_t = 8)]
    connections: usize,
    #[arg(long, value_delimiter = ',', default_value = "suite,wasmplugins")]
    chains: Vec<Chain>,
    /// The Envoy binary (default: $ENVOY_BIN, else as the harness finds it).
    #[arg(long, value_name = "PATH")]
    envoy: Option<PathBuf>,
    /// Results go to DIR/envoy-<version>/ (default: bench/results/soak).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

impl Args {
    /// What clap cannot check alone: the values together.
    fn check(&self) -> Result<(), String> {
        if !(self.rate.is_finite() && self.rate > 0.0) || self.samples == 0 || self.connections == 0 {
            return Err("--rate, --samples and --connections must be positive".into());
        }
        // Each segment opens its connections with one request each before its timed ones.
        if self.requests / self.samples <= self.connections as u64 {
            return Err(format!(
                "{} requests in {} samples leave no more than {} requests per sample: too few for {} connections",
                self.requests,
                self.samples,
                self.requests / self.samples,
                self.connections
            ));
        }
        if self.warmup() >= self.requests {
            return Err("--warmup must be below --requests".into());
        }
        Ok(())
    }

    fn warmup(&self) -> u64 {
        self.warmup.unwrap_or(self.requests / 10)
    }

    fn out(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(|| envoy::workspace_root().join("bench/results/soak"))
    }
}

/// `egress-bench soak [flags]`: success only if every property held on every chain; exit 2 on a usage error.
pub fn main(args: &Args) -> ExitCode {
    if let Err(usage) = args.check() {
        eprintln!("soak: {usage}");
        return ExitCode::from(2);
    }
    let outcome = run(args);
    match outcome {
        Ok(failed) if failed.is_empty() => ExitCode::SUCCESS,
        Ok(failed) => {
            for failure in failed {
                eprintln!("soak: FAILED {failure}");
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One kind of request of the mix: what it is, the status it must get, and what the chain counts for it.
struct Kind {
    name: &'static str,
    host: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    /// `None`: any 2xx.
    status: Option<u16>,
    /// The allow-list's decisions for one such request: a redirect the gateway follows is decided again at the hop.
    allowed: u64,
    denied: u64,
    /// Requests whose spoofed identity headers the identity stage removed.
    spoofed: u64,
    /// Redirects followed at the gateway.
    followed: u64,
}

/// A spoofed caller identity: the identity stage strips it (no client certificate on plain HTTP) and the caller
/// stays anonymous.
const SPOOFED: &[(&str, &str)] =
    &[("x-workload-identity", "spiffe://cluster.local/ns/billing/sa/payments"), ("x-workload-namespace", "billing")];

const fn allowed(name: &'static str, host: &'static str, path: &'static str) -> Kind {
    Kind { name, host, path, headers: &[], status: None, allowed: 1, denied: 0, spoofed: 0, followed: 0 }
}

const fn denied(name: &'static str, host: &'static str, path: &'static str) -> Kind {
    Kind { name, host, path, headers: &[], status: Some(403), allowed: 0, denied: 1, spoofed: 0, followed: 0 }
}

// The kinds, on `examples/policy.yaml`.
const WILDCARD: Kind = allowed("allowed, *.httpbin.org", HOST, "/status/200");
const EXACT: Kind = allowed("allowed, httpbin.org", "httpbin.org", "/get");
const GITHUB: Kind = allowed("allowed, method and path rule", "api.github.com", "/repos/egress/suite");
/// 302 to `http://eu.httpbin.org/absolute-redirect/0` (a 200), followed by the gateway: vetted by the redirects
/// stage, decided again by the allow-list.
const REDIRECT: Kind =
    Kind { followed: 1, allowed: 2, ..allowed("redirect followed", "eu.httpbin.org", "/absolute-redirect/1") };
const SPOOFED_ALLOWED: Kind =
    Kind { headers: SPOOFED, spoofed: 1, ..allowed("spoofed identity headers, allowed", "httpbin.org", "/headers") };
const UNKNOWN_HOST: Kind = denied("denied, host in no rule", "unknown.example.org", "/");
const GITHUB_PATH: Kind = denied("denied, path outside the rule", "api.github.com", "/gists");
const DENY_LIST: Kind = denied("denied, deny list", "metadata.google.internal", "/computeMetadata/v1/");
/// The payments rule admits the billing namespace only: the spoofed claim to it is stripped first.
const SPOOFED_DENIED: Kind = Kind {
    headers: SPOOFED,
    spoofed: 1,
    ..denied("spoofed identity headers, denied", "api.stripe.com", "/v1/charges")
};

/// The cycle the paced generator repeats: 16 allowed requests in 20, 4 refused.
const MIX: [&Kind; 20] = [
    &WILDCARD,
    &EXACT,
    &GITHUB,
    &WILDCARD,
    &UNKNOWN_HOST,
    &EXACT,
    &WILDCARD,
    &REDIRECT,
    &GITHUB,
    &WILDCARD,
    &GITHUB_PATH,
    &EXACT,
    &SPOOFED_ALLOWED,
    &WILDCARD,
    &GITHUB,
    &DENY_LIST,
    &EXACT,
    &WILDCARD,
    &SPOOFED_DENIED,
    &GITHUB,
];

fn mix() -> Vec<Request> {
    MIX.iter()
        .map(|kind| Request {
            host: kind.host.into(),
            path: kind.path.into(),
            headers: kind.headers.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect(),
            status: kind.status,
        })
        .collect()
}

/// The counters the soak follows: (CSV column, Envoy stat).
const COUNTERS: [(&str, &str); 10] = [
    ("allowed", "wasmcustom.egress_allowlist_allowed"),
    ("denied", "wasmcustom.egress_allowlist_denied"),
    ("spoofed", "wasmcustom.egress_identity_spoofed_headers_removed"),
    ("followed", "wasmcustom.egress_redirects_followed"),
    ("audit_events", "wasmcustom.egress_audit_events"),
    ("audit_batches_sent", "wasmcustom.egress_audit_batches_sent"),
    ("audit_batch_failures", "wasmcustom.egress_audit_batch_failures"),
    ("audit_batches_rejected", "wasmcustom.egress_audit_batches_rejected"),
    ("audit_events_dropped", "wasmcustom.egress_audit_events_dropped"),
    ("audit_queue_depth", "wasmcustom.egress_audit_queue_depth"),
];

fn run(args: &Args) -> Result<Vec<String>, Error> {
    let launcher = match &args.envoy {
        Some(program) => Launcher { program: program.clone(), prefix_args: Vec::new(), env: Vec::new() },
        None => Launcher::find()?,
    };
    let root = envoy::workspace_root();
    let policy: Value = serde_json::from_str(&load_policy(&root.join("examples/policy.yaml"))?)?;
    let audit = audit_config(&root.join("examples/istio/audit.yaml"))?;
    let pki = TestPki::new()?;
    let run_dir = envoy::run_dir()?;
    let mut results: Vec<ChainResult> = Vec::new();
    let mut failed = Vec::new();
    for &chain in &args.chains {
        eprintln!(
            "soak: {}, chain {}: {} requests at {} req/s",
            launcher.program.display(),
            chain.id(),
            args.requests,
            args.rate
        );
        let result = match soak_chain(args, chain, &launcher, &pki, &policy, &audit, &run_dir) {
            Ok(result) => result,
            // A chain that cannot even start (its Envoy, its modules) fails; the other chains still run.
            Err(e) => {
                failed.push(format!("setup ({}): {e}", chain.id()));
                continue;
            }
        };
        eprintln!("soak: Envoy {}, chain {}:", result.version, chain.id());
        for check in &result.checks {
            eprintln!("  {:<12} {}  {}", check.name, if check.ok { "ok    " } else { "FAILED" }, check.detail);
        }
        results.push(result);
    }
    let Some(version) = results.first().map(|r| r.version.clone()) else {
        return Ok(failed);
    };
    let dir = args.out().join(format!("envoy-{version}"));
    std::fs::create_dir_all(&dir)?;
    for result in &results {
        std::fs::write(dir.join(format!("{}.csv", result.chain.id())), result.csv())?;
    }
    let summary = summary(args, &version, &results);
    std::fs::write(dir.join("summary.md"), &summary)?;
    plot(&results, &version, args.warmup(), &dir.join("memory.png"))?;
    println!("{summary}");
    eprintln!("soak: written {}: summary.md, memory.png, <chain>.csv", dir.display());
    let _ = std::fs::remove_dir_all(&run_dir);
    for r in &results {
        for c in r.checks.iter().filter(|c| !c.ok) {
            failed.push(format!("{} (Envoy {version}, {}): {}", c.name, r.chain.id(), c.detail));
        }
    }
    Ok(failed)
}

/// The production audit configuration (`examples/istio/audit.yaml`, what `make manifests` deploys), its collector
/// pointed at the lab's cluster: the receiver stands in for the OpenTelemetry Collector.
fn audit_config(path: &Path) -> Result<String, Error> {
    let mut audit: Value = serde_json::from_str(&load_audit(path)?)?;
    let collector = audit["collector"].as_object_mut().ok_or_else(|| format!("{}: no collector", path.display()))?;
    collector.insert("cluster".into(), AUDIT_COLLECTOR_CLUSTER.into());
    collector.insert("authority".into(), "collector".into());
    Ok(audit.to_string())
}

/// A property and whether it held.
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

/// One Wasm VM's linear memory at a sample: where it starts (its identity over the run), its size, and how much of
/// it is resident.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Memory {
    start: u64,
    bytes: u64,
    resident: u64,
}

/// What one sample saw. Counters and receiver figures are relative to the baseline taken after start-up.
#[derive(Clone, Debug, Default)]
struct Sample {
    /// Requests sent so far, every one answered.
    requests: u64,
    /// Since the first request.
    seconds: f64,
    /// The segment's achieved rate and latency p99 (none for the drain sample).
    rate: f64,
    p99_us: f64,
    /// The deepest the audit stage's queue was seen during the segment ([`watching_queue`]).
    queue_peak: u64,
    /// Taken after the audit stage had delivered what it held, once the load was over.
    drained: bool,
    rss: u64,
    rss_anon: u64,
    heap_allocated: u64,
    heap_size: u64,
    vms: Vec<Memory>,
    counters: BTreeMap<&'static str, u64>,
    received: Tally,
}

impl Sample {
    fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    fn vm(&self, start: u64) -> Option<&Memory> {
        self.vms.iter().find(|vm| vm.start == start)
    }
}

/// One chain's soak.
struct ChainResult {
    chain: Chain,
    /// The release of the Envoy that ran it, `1.40.0`.
    version: String,
    /// The VMs at the baseline, by start address, with their labels (module and ordinal).
    vms: Vec<(u64, String)>,
    samples: Vec<Sample>,
    /// Requests sent of each kind of [`MIX`] (by index).
    sent: Vec<u64>,
    /// Time under load, first request to last answer.
    load: Duration,
    checks: Vec<Check>,
}

fn soak_chain(
    args: &Args,
    chain: Chain,
    launcher: &Launcher,
    pki: &TestPki,
    policy: &Value,
    audit: &str,
    run_dir: &Path,
) -> Result<ChainResult, Error> {
    // A fresh upstream per chain: the echo keeps a record of every request it answers.
    let echo = Echo::start(pki)?;
    let receiver = Receiver::start()?;
    let targets = Targets {
        echo_http: echo.http_addr(),
        echo_https: echo.https_addr(),
        collector: receiver.addr,
        run_dir: run_dir.to_path_buf(),
    };
    let bootstrap = scenarios::bootstrap_with_audit(chain.scenario(), Upstream::Echo, policy, &targets, audit)?;
    // Unlike `make bench`, nothing is pinned: the soak measures memory and counts, not CPU time, and on a shared
    // machine a pinned Envoy gets only what its one core has left.
    let envoy = Envoy::start(launcher, &bootstrap)?;
    crate::warm_up(&envoy, HOST, Expect::Success)?;
    let (major, minor, patch) = envoy.release()?;
    let pid = envoy_process(envoy.pid());
    let modules = chain_modules(chain)?;

    // The baseline: start-up's own requests delivered, then every counter as it stands.
    let startup_events = read_counters(&envoy)?.get("audit_events").copied().unwrap_or(0);
    wait_until(Duration::from_secs(20), || Ok(receiver.tally().records >= startup_events))?;
    let base_counters = read_counters(&envoy)?;
    let base_tally = receiver.tally();
    let vms = label_vms(pid, &wasm_memories(pid)?, &modules)?;
    let sample = |requests: u64, seconds: f64, paced: Option<&paced::Paced>| -> Result<Sample, Error> {
        let (rss, rss_anon) = process_rss(pid)?;
        let (heap_allocated, heap_size) = tcmalloc(&envoy)?;
        let counters = read_counters(&envoy)?
            .into_iter()
            .map(|(name, value)| {
                // A gauge (the queue) is as it is; a counter counts from the baseline.
                let base = if name == "audit_queue_depth" { 0 } else { base_counters.get(name).copied().unwrap_or(0) };
                (name, value.saturating_sub(base))
            })
            .collect();
        Ok(Sample {
            requests,
            seconds,
            rate: paced.map_or(0.0, |p| p.rate),
            p99_us: paced.map_or(0.0, |p| p.p99.as_secs_f64() * 1e6),
            queue_peak: 0,
            drained: paced.is_none(),
            rss,
            rss_anon,
            heap_allocated,
            heap_size,
            vms: wasm_memories(pid)?,
            counters,
            received: receiver.tally().since(&base_tally),
        })
    };

    let mix = mix();
    let mut sent = vec![0u64; MIX.len()];
    let mut samples = vec![sample(0, 0.0, None)?];
    let mut failure = None;
    let started = Instant::now();
    let mut done = 0u64;
    for segment in 1..=args.samples {
        // Segment ends at an exact share of the total, so the last one ends at `args.requests`.
        let end = args.requests * segment / args.samples;
        let timed = end - done - args.connections as u64;
        let plan = Plan {
            target: envoy.listener(HTTP_LISTENER),
            host: HOST.into(),
            path: String::new(),
            rate: args.rate,
            duration: Duration::from_secs_f64(timed as f64 / args.rate),
            connections: args.connections,
            core: None,
        };
        let (paced, queue_peak) = watching_queue(&envoy, || paced::run_mix(&plan, &mix));
        let paced = match paced {
            Ok(paced) => paced,
            Err(e) => {
                // Stops the load; what was measured so far is still written.
                failure = Some(format!("after {done} requests: {e}"));
                break;
            }
        };
        // What the target saw: one opening request per connection, then the timed ones (`run_mix`'s contract).
        for k in 0..args.connections {
            sent[k % MIX.len()] += 1;
        }
        for i in 0..paced.sent {
            sent[i % MIX.len()] += 1;
        }
        done += (args.connections + paced.sent) as u64;
        match sample(done, started.elapsed().as_secs_f64(), Some(&paced)) {
            Ok(sample) => samples.push(Sample { queue_peak, ..sample }),
            Err(e) => {
                // Envoy gone (or its admin): the soak found something; what it measured is still written.
                failure = Some(format!("after {done} requests, no sample: {e}"));
                break;
            }
        }
        if segment % 10 == 0 || segment == args.samples {
            let last = samples.last().map(|s| (s.rss, s.received.records)).unwrap_or_default();
            eprintln!(
                "  {done}/{} requests in {:.0} s (last segment {:.0} req/s), Envoy RSS {:.1} MiB, {} events received",
                args.requests,
                started.elapsed().as_secs_f64(),
                paced.rate,
                mib(last.0),
                last.1
            );
        }
    }
    let load = started.elapsed();
    // Whatever the audit stage still holds leaves within a flush interval (or a timeout and a retry): wait for an
    // empty queue and a record per event counted (and per request sent), or give up and let `delivery` tell.
    let drained = wait_until(DRAIN_TIMEOUT, || {
        let counters = read_counters(&envoy)?;
        let count = |name: &str| counters.get(name).copied().unwrap_or(0);
        let events = count("audit_events").saturating_sub(base_counters.get("audit_events").copied().unwrap_or(0));
        Ok(count("audit_queue_depth") == 0 && receiver.tally().since(&base_tally).records >= events.max(done))
    });
    if let Err(e) = drained {
        eprintln!("  the audit stage did not deliver everything: {e}");
    }
    if failure.is_none() {
        match sample(done, started.elapsed().as_secs_f64(), None) {
            Ok(sample) => samples.push(sample),
            Err(e) => failure = Some(format!("after the last request, no sample: {e}")),
        }
    }
    drop(envoy);
    echo.shutdown();
    drop(receiver);

    let version = format!("{major}.{minor}.{patch}");
    let mut result = ChainResult { chain, version, vms, samples, sent, load, checks: Vec::new() };
    result.checks = result.evaluate(args, failure);
    Ok(result)
}

/// Runs `load` while a thread polls the audit stage's queue-depth gauge every [`QUEUE_POLL`]; returns what `load`
/// returned and the deepest the queue was seen meanwhile. Samples between segments find the queue all but empty; how
/// deep it gets under load is what the audit stage's memory has to hold (the gauge is recorded at each flush, every
/// 50 ms at most).
fn watching_queue<T>(envoy: &Envoy, load: impl FnOnce() -> T) -> (T, u64) {
    let (stop, peak) = (AtomicBool::new(false), AtomicU64::new(0));
    thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                if let Some(depth) = envoy.stat("wasmcustom.egress_audit_queue_depth") {
                    peak.fetch_max(depth, Ordering::Relaxed);
                }
                thread::sleep(QUEUE_POLL);
            }
        });
        let outcome = load();
        stop.store(true, Ordering::Relaxed);
        (outcome, peak.load(Ordering::Relaxed))
    })
}

/// Polls `done` every 100 ms until it holds; an error once `timeout` has passed.
fn wait_until(timeout: Duration, mut done: impl FnMut() -> Result<bool, Error>) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    while !done()? {
        if Instant::now() > deadline {
            return Err(format!("not reached in {timeout:?}").into());
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn kib(bytes: u64) -> f64 {
    bytes as f64 / 1024.0
}

fn growth(from: u64, to: u64) -> f64 {
    if from == 0 {
        return if to == 0 { 0.0 } else { f64::INFINITY };
    }
    (to as f64 - from as f64) / from as f64 * 100.0
}

impl ChainResult {
    /// The sample that ends warm-up: the first with at least `warmup` requests sent.
    fn warm(&self, warmup: u64) -> Option<&Sample> {
        self.samples.iter().find(|s| s.requests >= warmup && s.requests > 0)
    }

    fn end(&self) -> Option<&Sample> {
        self.samples.last()
    }

    /// The deepest the audit queue was seen up to the end of warm-up, and after it.
    fn queue_peaks(&self, warmup: u64) -> (u64, u64) {
        let warm = self.warm(warmup).map_or(u64::MAX, |s| s.requests);
        let peak = |after: bool| {
            self.samples.iter().filter(|s| (s.requests > warm) == after).map(|s| s.queue_peak).max().unwrap_or(0)
        };
        (peak(false), peak(true))
    }

    fn requests(&self) -> u64 {
        self.sent.iter().sum()
    }

    /// What the counters must say of the requests sent.
    fn expected(&self) -> Vec<(&'static str, u64)> {
        let total = |pick: fn(&Kind) -> u64| MIX.iter().zip(&self.sent).map(|(kind, n)| pick(kind) * n).sum::<u64>();
        vec![
            ("allowed", total(|k| k.allowed)),
            ("denied", total(|k| k.denied)),
            ("spoofed", total(|k| k.spoofed)),
            ("followed", total(|k| k.followed)),
            ("audit_events", self.requests()),
        ]
    }

    fn evaluate(&self, args: &Args, failure: Option<String>) -> Vec<Check> {
        let mut checks = Vec::new();
        let requests = self.requests();
        checks.push(Check {
            name: "responses",
            ok: failure.is_none() && requests == args.requests,
            detail: failure.unwrap_or_else(|| format!("{requests} requests, each answered as it must be")),
        });
        let (Some(warm), Some(end)) = (self.warm(args.warmup()), self.end()) else {
            checks.push(Check { name: "envoy-rss", ok: false, detail: "no sample after warm-up".into() });
            return checks;
        };
        let rss = growth(warm.rss, end.rss);
        checks.push(Check {
            name: "envoy-rss",
            ok: rss <= MAX_GROWTH_PERCENT,
            detail: format!(
                "{:.1} MiB after warm-up ({} requests), {:.1} MiB at the end: {rss:+.2} %",
                mib(warm.rss),
                warm.requests,
                mib(end.rss)
            ),
        });

        // The property is on each VM's memory, its linear memory (what the `<filter>_vm_memory_bytes` gauges report at
        // configuration); resident pages are reported beside it, not judged: an idle VM touches some 40 KiB, so one
        // more page is +10 %, while a leak of one small allocation per request (16 bytes × 900,000 requests: 14 MiB)
        // grows a VM's linear memory several times over.
        let mut problems = Vec::new();
        for (start, label) in &self.vms {
            let (Some(a), Some(b)) = (warm.vm(*start), end.vm(*start)) else {
                problems.push(format!("{label} is gone"));
                continue;
            };
            let g = growth(a.bytes, b.bytes);
            if g > MAX_GROWTH_PERCENT {
                problems.push(format!("{label} {:.0} → {:.0} KiB ({g:+.2} %)", kib(a.bytes), kib(b.bytes)));
            }
        }
        for vm in end.vms.iter().filter(|vm| !self.vms.iter().any(|(start, _)| *start == vm.start)) {
            problems.push(format!("a VM appeared at {:#x} ({:.0} KiB)", vm.start, kib(vm.bytes)));
        }
        let worst = |pick: fn(&Memory) -> u64| {
            vm_growth(self, warm, end, pick).map_or("—".into(), |(g, label, from, to)| {
                format!("{label} {:.0} → {:.0} KiB ({g:+.2} %)", kib(from), kib(to))
            })
        };
        let (queue_warm, queue_after) = self.queue_peaks(args.warmup());
        let resident = format!(
            "resident pages, largest growth: {}; audit queue deepest: {queue_warm} events during warm-up, \
             {queue_after} after",
            worst(|vm| vm.resident)
        );
        checks.push(Check {
            name: "vm-memory",
            ok: problems.is_empty() && !self.vms.is_empty(),
            detail: if problems.is_empty() {
                format!("{} VMs; linear memory, largest growth: {}; {resident}", self.vms.len(), worst(|vm| vm.bytes))
            } else {
                format!("{}; {resident}", problems.join("; "))
            },
        });

        let mismatches: Vec<String> = self
            .expected()
            .into_iter()
            .filter(|(name, want)| end.counter(name) != *want)
            .map(|(name, want)| format!("{name} {} (expected {want})", end.counter(name)))
            .collect();
        checks.push(Check {
            name: "counters",
            ok: mismatches.is_empty(),
            detail: if mismatches.is_empty() {
                let all = self.expected().iter().map(|(n, v)| format!("{n} {v}")).collect::<Vec<_>>().join(", ");
                format!("as the mix implies: {all}")
            } else {
                mismatches.join("; ")
            },
        });

        let (dropped, rejected, queued) = (
            end.counter("audit_events_dropped"),
            end.counter("audit_batches_rejected"),
            end.counter("audit_queue_depth"),
        );
        checks.push(Check {
            name: "audit-drops",
            ok: dropped == 0 && rejected == 0 && queued == 0,
            detail: format!(
                "{dropped} events dropped, {rejected} batches rejected, {queued} queued at the end; {} batches sent, {} \
                 attempts retried",
                end.counter("audit_batches_sent"),
                end.counter("audit_batch_failures")
            ),
        });

        let got = &end.received;
        checks.push(Check {
            name: "delivery",
            ok: got.records == requests && got.duplicates == 0 && got.without_id == 0 && got.refused == 0,
            detail: format!(
                "{} records for {requests} requests in {} POSTs; {} ids seen twice, {} without id, {} POSTs refused{}",
                got.records,
                got.posts,
                got.duplicates,
                got.without_id,
                got.refused,
                got.problem.as_deref().map(|p| format!(" ({p})")).unwrap_or_default()
            ),
        });
        checks
    }

    fn csv(&self) -> String {
        let mut out = String::from(
            "requests,seconds,rate,latency_p99_us,drained,envoy_rss_bytes,envoy_rss_anon_bytes,tcmalloc_allocated_bytes,\
             tcmalloc_heap_bytes",
        );
        for (_, label) in &self.vms {
            let _ = write!(out, ",vm_{label}_memory_bytes,vm_{label}_resident_bytes");
        }
        for (column, _) in COUNTERS {
            let _ = write!(out, ",{column}");
        }
        out.push_str(
            ",audit_queue_peak,received_records,received_posts,received_duplicate_ids,received_allow,received_deny\n",
        );
        for s in &self.samples {
            let _ = write!(
                out,
                "{},{:.3},{:.1},{:.0},{},{},{},{},{}",
                s.requests, s.seconds, s.rate, s.p99_us, s.drained, s.rss, s.rss_anon, s.heap_allocated, s.heap_size
            );
            for (start, _) in &self.vms {
                match s.vm(*start) {
                    Some(vm) => {
                        let _ = write!(out, ",{},{}", vm.bytes, vm.resident);
                    }
                    None => out.push_str(",,"),
                }
            }
            for (column, _) in COUNTERS {
                let _ = write!(out, ",{}", s.counter(column));
            }
            let action = |name: &str| s.received.actions.get(name).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                ",{},{},{},{},{},{}",
                s.queue_peak,
                s.received.records,
                s.received.posts,
                s.received.duplicates,
                action("allow"),
                action("deny")
            );
        }
        out
    }
}

/// The process to measure: Envoy itself, even when a wrapper (func-e) started it.
fn envoy_process(pid: u32) -> u32 {
    let comm = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let mut queue = vec![pid];
    while let Some(candidate) = queue.pop() {
        if comm(candidate).trim() == "envoy" {
            return candidate;
        }
        let children =
            std::fs::read_to_string(format!("/proc/{candidate}/task/{candidate}/children")).unwrap_or_default();
        queue.extend(children.split_whitespace().filter_map(|child| child.parse::<u32>().ok()));
    }
    pid
}

/// VmRSS and RssAnon of `pid`, in bytes.
fn process_rss(pid: u32) -> Result<(u64, u64), Error> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e} (did Envoy exit?)"))?;
    let field = |name: &str| {
        status.lines().find_map(|line| line.strip_prefix(name)).and_then(|rest| kilobytes(rest.trim_start_matches(':')))
    };
    Ok((field("VmRSS").ok_or_else(|| format!("{path}: no VmRSS"))?, field("RssAnon").unwrap_or(0)))
}

/// `"  1234 kB"` in bytes.
fn kilobytes(text: &str) -> Option<u64> {
    text.trim().strip_suffix("kB")?.trim().parse::<u64>().ok().map(|kb| kb * 1024)
}

/// tcmalloc's bytes in use by Envoy and its heap (admin `/memory`; values are decimal strings).
fn tcmalloc(envoy: &Envoy) -> Result<(u64, u64), Error> {
    let memory: Value = serde_json::from_str(&envoy.admin_get("/memory")?)?;
    let field = |name: &str| memory[name].as_str().and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok((field("allocated"), field("heap_size")))
}

/// Every counter of [`COUNTERS`] as it stands (0 for one not defined yet).
fn read_counters(envoy: &Envoy) -> Result<BTreeMap<&'static str, u64>, Error> {
    let stats = envoy.admin_get("/stats?filter=^wasmcustom.egress_")?;
    let values: BTreeMap<&str, u64> = stats
        .lines()
        .filter_map(|line| line.split_once(": "))
        .filter_map(|(name, value)| Some((name, value.trim().parse().ok()?)))
        .collect();
    Ok(COUNTERS.iter().map(|(column, stat)| (*column, values.get(stat).copied().unwrap_or(0))).collect())
}

/// The Wasm memories of process `pid`, from its memory map: V8 reserves address space for each (see
/// [`WASM_RESERVATION`]) and makes its first part accessible as the memory grows, so a memory is an anonymous
/// read-write mapping directly followed by the inaccessible rest of its reservation.
fn wasm_memories(pid: u32) -> Result<Vec<Memory>, Error> {
    let path = format!("/proc/{pid}/smaps");
    let smaps = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let mut maps: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        if let Some(mapping) = Mapping::parse(line) {
            maps.push(mapping);
        } else if let (Some(last), Some(rss)) = (maps.last_mut(), line.strip_prefix("Rss:")) {
            last.rss = kilobytes(rss).unwrap_or(0);
        }
    }
    Ok(maps
        .windows(2)
        .filter_map(|pair| match pair {
            [memory, rest]
                if memory.perms.starts_with("rw")
                    && rest.perms == "---p"
                    && memory.anonymous
                    && rest.anonymous
                    && memory.end == rest.start
                    && rest.end - memory.start >= WASM_RESERVATION
                    && memory.start % WASM_PAGE == 0
                    && (memory.end - memory.start) % WASM_PAGE == 0 =>
            {
                Some(Memory { start: memory.start, bytes: memory.end - memory.start, resident: memory.rss })
            }
            _ => None,
        })
        .collect())
}

/// One mapping of /proc/<pid>/smaps: `start-end perms offset dev inode [path]`, and its `Rss:`.
struct Mapping {
    start: u64,
    end: u64,
    perms: String,
    anonymous: bool,
    rss: u64,
}

impl Mapping {
    fn parse(line: &str) -> Option<Mapping> {
        let mut fields = line.split_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let (start, end) = (u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?);
        let perms = fields.next()?.to_string();
        let path = fields.nth(3).unwrap_or("");
        Some(Mapping { start, end, perms, anonymous: path.is_empty() || path.starts_with("[anon"), rss: 0 })
    }
}

/// A module of the chain and what identifies it in a VM's memory: its first data segment, placed at `offset`
/// when the VM is instantiated and never written after (read-only data comes first).
struct ModuleImage {
    name: String,
    offset: u64,
    bytes: Vec<u8>,
}

/// The modules the chain's manifests deploy (each runs in VMs of its own), from the built `.wasm` files.
fn chain_modules(chain: Chain) -> Result<Vec<ModuleImage>, Error> {
    let manifests = envoy::workspace_root().join("wasmplugin-manifests").join(chain.id());
    let mut files: Vec<PathBuf> = istio::chain(&manifests, &wasm_dir())?.into_iter().map(|p| p.module).collect();
    files.sort();
    files.dedup();
    let mut modules = Vec::new();
    for file in files {
        let wasm = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let (offset, mut bytes) =
            data_segment(&wasm).ok_or_else(|| format!("{}: no active data segment", file.display()))?;
        bytes.truncate(SEGMENT_PROBE);
        let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let name = stem.trim_start_matches("egress_").trim_end_matches("_module").to_string();
        modules.push(ModuleImage { name, offset, bytes });
    }
    Ok(modules)
}

/// Labels each memory `<module>#<n>`: the module whose data segment it holds, n counting that module's VMs from
/// the one with the most resident memory (Envoy runs a module in a VM per thread, the main thread's included, and
/// keeps the base VM it clones them from: after start-up's requests, the worker's VM is the one that has touched
/// the most).
fn label_vms(pid: u32, memories: &[Memory], modules: &[ModuleImage]) -> Result<Vec<(u64, String)>, Error> {
    let mut mem = File::open(format!("/proc/{pid}/mem")).map_err(|e| format!("/proc/{pid}/mem: {e}"))?;
    let mut labels = Vec::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut memories = memories.to_vec();
    memories.sort_by_key(|memory| (std::cmp::Reverse(memory.resident), memory.start));
    for memory in &memories {
        let mut best: Option<(f64, &str)> = None;
        for module in modules {
            let end = module.offset + module.bytes.len() as u64;
            if end > memory.bytes {
                continue;
            }
            let mut found = vec![0u8; module.bytes.len()];
            mem.seek(SeekFrom::Start(memory.start + module.offset))?;
            if mem.read_exact(&mut found).is_err() {
                continue;
            }
            let same = found.iter().zip(&module.bytes).filter(|(a, b)| a == b).count();
            let share = same as f64 / module.bytes.len().max(1) as f64;
            if best.is_none_or(|(b, _)| share > b) {
                best = Some((share, &module.name));
            }
        }
        let name = match best {
            Some((share, name)) if share >= 0.9 => name.to_string(),
            _ => "unknown".to_string(),
        };
        let n = counts.entry(name.clone()).or_default();
        *n += 1;
        labels.push((memory.start, format!("{name}#{n}")));
    }
    labels.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(labels)
}

/// The first active data segment of a Wasm module with a constant offset: `(offset, bytes)`.
fn data_segment(wasm: &[u8]) -> Option<(u64, Vec<u8>)> {
    let mut rest = wasm.strip_prefix(b"\0asm\x01\0\0\0")?;
    while let Some((&id, after)) = rest.split_first() {
        rest = after;
        let size = usize::try_from(leb(&mut rest)?).ok()?;
        let (section, after) = rest.split_at_checked(size)?;
        rest = after;
        // The data section.
        if id != 11 {
            continue;
        }
        let mut section = section;
        for _ in 0..leb(&mut section)? {
            let offset = match leb(&mut section)? {
                0 => Some(const_offset(&mut section)?),
                1 => None,
                2 => {
                    leb(&mut section)?;
                    Some(const_offset(&mut section)?)
                }
                _ => return None,
            };
            let len = usize::try_from(leb(&mut section)?).ok()?;
            let (bytes, after) = section.split_at_checked(len)?;
            section = after;
            if let Some(offset) = offset.filter(|_| !bytes.is_empty()) {
                return Some((offset, bytes.to_vec()));
            }
        }
    }
    None
}

/// An offset expression `i32.const N; end`.
fn const_offset(bytes: &mut &[u8]) -> Option<u64> {
    let (&opcode, rest) = bytes.split_first()?;
    *bytes = rest;
    if opcode != 0x41 {
        return None;
    }
    let mut value: i64 = 0;
    let mut shift = 0;
    loop {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= i64::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            if shift < 64 && byte & 0x40 != 0 {
                value |= -1 << shift;
            }
            break;
        }
        if shift >= 63 {
            return None;
        }
    }
    let (&end, rest) = bytes.split_first()?;
    *bytes = rest;
    (end == 0x0b).then_some(u64::try_from(value).ok()?)
}

/// An unsigned LEB128 number.
fn leb(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// What the receiver got.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Tally {
    /// POSTs answered 200.
    posts: u64,
    records: u64,
    /// Records whose `log.record.uid` had been seen before.
    duplicates: u64,
    without_id: u64,
    /// Records by `egress.decision.action`.
    actions: BTreeMap<String, u64>,
    /// POSTs refused (not OTLP protobuf, or not decodable), and the first reason.
    refused: u64,
    problem: Option<String>,
}

impl Tally {
    /// What arrived after `base`.
    fn since(&self, base: &Tally) -> Tally {
        Tally {
            posts: self.posts - base.posts.min(self.posts),
            records: self.records - base.records.min(self.records),
            duplicates: self.duplicates - base.duplicates.min(self.duplicates),
            without_id: self.without_id - base.without_id.min(self.without_id),
            actions: self
                .actions
                .iter()
                .map(|(name, n)| (name.clone(), n - base.actions.get(name).copied().unwrap_or(0).min(*n)))
                .collect(),
            refused: self.refused - base.refused.min(self.refused),
            problem: self.problem.clone(),
        }
    }
}

#[derive(Default)]
struct Received {
    tally: Tally,
    /// A 64-bit hash of every event id: a million of them in tens of MB, and a false duplicate is a one in 10^7
    /// chance at that count.
    ids: HashSet<u64>,
}

/// The soak's collector: an OTLP/HTTP logs receiver (HTTP/1.1, protobuf, as the audit stage ships by default) that
/// counts records and keeps only what counting needs. The harness's `Collector` keeps every record (gigabytes at a
/// million events, and it can only hand them all back, not count them) or, in `Mode::Discard`, counts POSTs and
/// bytes but no records. A thread per connection (Envoy opens a few); dropping it stops accepting.
struct Receiver {
    addr: SocketAddr,
    received: Arc<Mutex<Received>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Receiver {
    fn start() -> Result<Receiver, Error> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Mutex::new(Received::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, stopping) = (Arc::clone(&received), Arc::clone(&stop));
        let accept = thread::Builder::new().name("soak-receiver".into()).spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let shared = Arc::clone(&shared);
                // A connection that fails is Envoy's to retry; the tally shows what arrived.
                let _ = thread::Builder::new().name("soak-receiver-conn".into()).spawn(move || {
                    let _ = serve(stream, &shared);
                });
            }
        })?;
        Ok(Receiver { addr, received, stop, accept: Some(accept) })
    }

    fn tally(&self) -> Tally {
        self.received.lock().unwrap_or_else(PoisonError::into_inner).tally.clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// Serves one connection: each request read whole, counted, answered; returns when the peer closes.
fn serve(stream: TcpStream, received: &Mutex<Received>) -> Result<(), Error> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let Ok(request_line) = paced::read_line(&mut reader) else {
            return Ok(());
        };
        if request_line.is_empty() {
            continue;
        }
        let (mut length, mut chunked, mut protobuf) = (0usize, false, false);
        loop {
            let line = paced::read_line(&mut reader)?;
            if line.is_empty() {
                break;
            }
            let Some((name, value)) = line.split_once(':') else { continue };
            let value = value.trim().to_ascii_lowercase();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().map_err(|_| format!("content-length {value}"))?,
                "transfer-encoding" => chunked = value.contains("chunked"),
                "content-type" => protobuf = value.split(';').next() == Some("application/x-protobuf"),
                _ => {}
            }
        }
        let body = if chunked { read_chunked(&mut reader)? } else { read_exact(&mut reader, length)? };
        let status = if !request_line.starts_with("POST ") {
            "405 Method Not Allowed"
        } else {
            let outcome = if protobuf { records(&body) } else { Err("not application/x-protobuf".to_string()) };
            let mut received = received.lock().unwrap_or_else(PoisonError::into_inner);
            match outcome {
                Ok(records) => {
                    received.tally.posts += 1;
                    for record in records {
                        received.tally.records += 1;
                        *received.tally.actions.entry(record.action.unwrap_or("none").to_string()).or_default() += 1;
                        match record.id {
                            Some(id) if !received.ids.insert(id) => received.tally.duplicates += 1,
                            Some(_) => {}
                            None => received.tally.without_id += 1,
                        }
                    }
                    "200 OK"
                }
                Err(problem) => {
                    received.tally.refused += 1;
                    received.tally.problem.get_or_insert(problem);
                    "400 Bad Request"
                }
            }
        };
        // An empty body is an empty ExportLogsServiceResponse: everything accepted.
        let response =
            format!("HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n");
        writer.write_all(response.as_bytes())?;
    }
}

fn read_exact(reader: &mut impl BufRead, length: usize) -> Result<Vec<u8>, Error> {
    if length > MAX_BODY {
        return Err(format!("a body of {length} bytes").into());
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(body)
}

fn read_chunked(reader: &mut impl BufRead) -> Result<Vec<u8>, Error> {
    let mut body = Vec::new();
    loop {
        let line = paced::read_line(reader)?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| format!("bad chunk size line {line:?}"))?;
        if size == 0 {
            while !paced::read_line(reader)?.is_empty() {}
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            return Err("a body over the limit".into());
        }
        body.extend(read_exact(reader, size)?);
        paced::read_line(reader)?;
    }
}

/// What the receiver keeps of a record.
struct Seen<'a> {
    /// A hash of `log.record.uid`.
    id: Option<u64>,
    /// `egress.decision.action`.
    action: Option<&'a str>,
}

/// The records of an `ExportLogsServiceRequest`: `resource_logs` (1) → `scope_logs` (2) → `log_records` (2), each
/// record's attributes (6) being `KeyValue { key = 1, value = 2: AnyValue { string_value = 1 } }`
/// (opentelemetry-proto, `collector/logs/v1/logs_service.proto`, `logs/v1/logs.proto`, `common/v1/common.proto`).
fn records(body: &[u8]) -> Result<Vec<Seen<'_>>, String> {
    let mut seen = Vec::new();
    for resource_logs in messages(body, 1)? {
        for scope_logs in messages(resource_logs, 2)? {
            for record in messages(scope_logs, 2)? {
                let mut this = Seen { id: None, action: None };
                for attribute in messages(record, 6)? {
                    let key = messages(attribute, 1)?.into_iter().next().unwrap_or_default();
                    let value = messages(attribute, 2)?.into_iter().next().unwrap_or_default();
                    let text = messages(value, 1)?.into_iter().next().unwrap_or_default();
                    match key {
                        b"log.record.uid" => {
                            let mut hasher = DefaultHasher::new();
                            text.hash(&mut hasher);
                            this.id = Some(hasher.finish());
                        }
                        b"egress.decision.action" => this.action = std::str::from_utf8(text).ok(),
                        _ => {}
                    }
                }
                seen.push(this);
            }
        }
    }
    Ok(seen)
}

/// The length-delimited fields numbered `number` of a protobuf message, in order; the others skipped.
fn messages(mut bytes: &[u8], number: u64) -> Result<Vec<&[u8]>, String> {
    let mut found = Vec::new();
    while !bytes.is_empty() {
        let key = leb(&mut bytes).ok_or("a truncated field key")?;
        let skip = match key & 7 {
            0 => {
                leb(&mut bytes).ok_or("a truncated varint")?;
                0
            }
            1 => 8,
            5 => 4,
            2 => {
                let len = usize::try_from(leb(&mut bytes).ok_or("a truncated length")?).map_err(|e| e.to_string())?;
                let (value, rest) = bytes.split_at_checked(len).ok_or("a field longer than its message")?;
                if key >> 3 == number {
                    found.push(value);
                }
                bytes = rest;
                0
            }
            wire => return Err(format!("wire type {wire}")),
        };
        bytes = bytes.get(skip..).ok_or("a truncated fixed-size field")?;
    }
    Ok(found)
}

fn summary(args: &Args, version: &str, results: &[ChainResult]) -> String {
    let mut out = format!("# Soak: Envoy {version}\n\n");
    let _ = writeln!(
        out,
        "Machine: {}, shared. Envoy {version} (`--concurrency 1`); paced open-loop load, echo upstream and the \
         counting OTLP receiver in the soak's process, nothing pinned. {} requests per chain at {} req/s \
         ({} keep-alive connections, reopened at each of {} samples); warm-up: the first {} requests. Audit: \
         `examples/istio/audit.yaml` (log on, OTLP/HTTP protobuf, batches of 100 events or 64 KiB, flushed every \
         second). Reproduce: `make soak` (`SOAK_REQUESTS`, `SOAK_RATE`, `ENVOY_VERSION`); details in docs/soak.md.\n",
        report::machine(),
        args.requests,
        args.rate,
        args.connections,
        args.samples,
        args.warmup()
    );
    out.push_str(
        "| chain | requests | rate (req/s) | duration | Envoy RSS after warm-up → end | VMs, largest growth: memory / resident | \
         counters | events received / sent | result |\n|---|---:|---:|---:|---|---|---|---:|---|\n",
    );
    for r in results {
        let name = r.chain.scenario().name();
        let (warm, end) = (r.warm(args.warmup()), r.end());
        let rss = match (warm, end) {
            (Some(w), Some(e)) => format!("{:.1} → {:.1} MiB ({:+.2} %)", mib(w.rss), mib(e.rss), growth(w.rss, e.rss)),
            _ => "—".into(),
        };
        let vm = |pick: fn(&Memory) -> u64| match (warm, end) {
            (Some(w), Some(e)) => {
                vm_growth(r, w, e, pick).map_or("—".into(), |(g, label, ..)| format!("{g:+.2} % ({label})"))
            }
            _ => "—".into(),
        };
        let vm = format!("{} / {}", vm(|m| m.bytes), vm(|m| m.resident));
        let check = |name: &str| r.checks.iter().find(|c| c.name == name).is_some_and(|c| c.ok);
        let failed: Vec<&str> = r.checks.iter().filter(|c| !c.ok).map(|c| c.name).collect();
        let _ = writeln!(
            out,
            "| {name} | {} | {:.0} | {:.0} s | {rss} | {vm} | {} | {} / {} | {} |",
            r.requests(),
            r.requests() as f64 / r.load.as_secs_f64().max(1e-9),
            r.load.as_secs_f64(),
            if check("counters") { "consistent" } else { "**inconsistent**" },
            end.map_or(0, |e| e.received.records),
            r.requests(),
            if failed.is_empty() { "pass".to_string() } else { format!("**FAILED**: {}", failed.join(", ")) }
        );
    }
    out.push_str(
        "\nRate: requests over the time from the first request to the last answer, gaps between samples included.",
    );
    for r in results {
        let segments: Vec<&Sample> = r.samples.iter().filter(|s| s.rate > 0.0).collect();
        let held = segments.iter().filter(|s| s.rate >= 0.95 * args.rate).count();
        let mut p99: Vec<f64> = segments.iter().map(|s| s.p99_us).collect();
        p99.sort_by(f64::total_cmp);
        let median_p99 = p99.get(p99.len() / 2).copied().unwrap_or(0.0);
        let _ = write!(
            out,
            " {}: the rate held (≥ 95 % of {} req/s) in {held} of {} segments; latency p99 of a segment, median \
             {:.1} ms (from each request's due time: seconds mean the generator ran behind, Envoy saturated).",
            r.chain.id(),
            args.rate,
            segments.len(),
            median_p99 / 1000.0
        );
    }
    out.push('\n');

    out.push_str("\n## Traffic\n\nA cycle of 20 requests, repeated; what each kind must get:\n\n");
    out.push_str("| request | per 20 | answer | allow-list |\n|---|---:|---|---|\n");
    let mut kinds: Vec<&Kind> = Vec::new();
    for kind in MIX {
        if !kinds.iter().any(|k| std::ptr::eq(*k, kind)) {
            kinds.push(kind);
        }
    }
    for kind in kinds {
        let count = MIX.iter().filter(|k| std::ptr::eq(**k, kind)).count();
        let headers = if kind.headers.is_empty() { String::new() } else { " + spoofed identity headers".into() };
        let _ = writeln!(
            out,
            "| {}: `GET {}{}`{headers} | {count} | {} | {} allowed, {} denied |",
            kind.name,
            kind.host,
            kind.path,
            kind.status.map_or("2xx".to_string(), |s| s.to_string()),
            kind.allowed,
            kind.denied
        );
    }

    for r in results {
        let _ = writeln!(out, "\n## {}\n", r.chain.scenario().name());
        out.push_str("| property | result | measured |\n|---|---|---|\n");
        for c in &r.checks {
            let _ = writeln!(out, "| `{}` | {} | {} |", c.name, if c.ok { "pass" } else { "**FAILED**" }, c.detail);
        }
        let (Some(warm), Some(end)) = (r.warm(args.warmup()), r.end()) else { continue };
        let _ = writeln!(
            out,
            "\nMemory after warm-up ({} requests) and at the end (tcmalloc: bytes in use / heap):\n",
            warm.requests
        );
        out.push_str("| what | after warm-up | end | growth |\n|---|---:|---:|---:|\n");
        let row = |out: &mut String, what: &str, from: u64, to: u64| {
            let _ =
                writeln!(out, "| {what} | {:.0} KiB | {:.0} KiB | {:+.2} % |", kib(from), kib(to), growth(from, to));
        };
        row(&mut out, "Envoy RSS", warm.rss, end.rss);
        row(&mut out, "Envoy RSS, anonymous", warm.rss_anon, end.rss_anon);
        row(&mut out, "tcmalloc in use", warm.heap_allocated, end.heap_allocated);
        row(&mut out, "tcmalloc heap", warm.heap_size, end.heap_size);
        for (start, label) in &r.vms {
            if let (Some(a), Some(b)) = (warm.vm(*start), end.vm(*start)) {
                row(&mut out, &format!("VM {label}: linear memory"), a.bytes, b.bytes);
                row(&mut out, &format!("VM {label}: resident"), a.resident, b.resident);
            }
        }
        let (queue_warm, queue_after) = r.queue_peaks(args.warmup());
        let _ = writeln!(
            out,
            "\nThe audit queue, deepest seen (polled every {} ms): {queue_warm} events up to the end of warm-up, \
             {queue_after} after.",
            QUEUE_POLL.as_millis()
        );
        out.push_str("\n| counter | at the end | expected |\n|---|---:|---:|\n");
        let expected = r.expected();
        for (column, stat) in COUNTERS {
            let want = expected.iter().find(|(n, _)| *n == column).map_or("—".to_string(), |(_, v)| v.to_string());
            let _ = writeln!(out, "| `{stat}` | {} | {want} |", end.counter(column));
        }
        let _ = writeln!(
            out,
            "| records received (allow / deny) | {} ({} / {}) | {} |",
            end.received.records,
            end.received.actions.get("allow").copied().unwrap_or(0),
            end.received.actions.get("deny").copied().unwrap_or(0),
            r.requests()
        );
    }
    out.push_str(&format!(
        "\nFigures: `{}.csv` (every sample), `memory.png` (Envoy RSS and each VM's memory over the requests).\n",
        results.iter().map(|r| r.chain.id()).collect::<Vec<_>>().join(".csv`, `")
    ));
    out
}

/// The largest growth from `warm` to `end` of any VM's figure `pick`: the growth, the VM, the figures.
fn vm_growth(
    r: &ChainResult,
    warm: &Sample,
    end: &Sample,
    pick: fn(&Memory) -> u64,
) -> Option<(f64, String, u64, u64)> {
    let mut worst: Option<(f64, String, u64, u64)> = None;
    for (start, label) in &r.vms {
        let (Some(a), Some(b)) = (warm.vm(*start), end.vm(*start)) else { continue };
        let g = growth(pick(a), pick(b));
        if worst.as_ref().is_none_or(|(w, ..)| g > *w) {
            worst = Some((g, label.clone(), pick(a), pick(b)));
        }
    }
    worst
}

/// The end of warm-up: a vertical line at `x`, in the legend.
fn warm_up_line(chart: &mut Chart<'_>, x: f64, y_max: f64) -> Result<(), Error> {
    let style = BLACK.mix(0.6).stroke_width(2);
    chart
        .draw_series(LineSeries::new([(x, 0.0), (x, y_max)], style))
        .map_err(|e| e.to_string())?
        .label("end of warm-up")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    Ok(())
}

/// A chart of the plot, its axes drawn: requests (thousands) against `y_desc`.
type Chart<'a> = ChartContext<
    'a,
    BitMapBackend<'a>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

fn panel<'a>(
    area: &DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>,
    caption: &str,
    y_desc: &str,
    x_max: f64,
    y_max: f64,
) -> Result<Chart<'a>, Error> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| e.to_string())?;
    chart.configure_mesh().x_desc("requests (thousands)").y_desc(y_desc).draw().map_err(|e| e.to_string())?;
    Ok(chart)
}

/// The end of warm-up, if it is in the chart, and the legend.
fn finish(chart: &mut Chart<'_>, warm_x: Option<f64>, y_max: f64) -> Result<(), Error> {
    if let Some(w) = warm_x {
        warm_up_line(chart, w, y_max)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// A line of the plot: its legend, its colour, its value in a sample.
type Series = (&'static str, RGBColor, fn(&Sample) -> u64);

/// A row per chain: Envoy's RSS (and tcmalloc's heap) over the requests; each VM's linear memory (solid) and
/// resident pages (light) over the requests. A grey line marks the end of warm-up.
fn plot(results: &[ChainResult], version: &str, warmup: u64, path: &Path) -> Result<(), Error> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, report::font()?)
        .map_err(|_| "cannot load the font")?;
    let rows = results.len().max(1);
    let root = BitMapBackend::new(path, (1700, 480 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let areas = root.split_evenly((rows, 2));
    for (r, panels) in results.iter().zip(areas.chunks(2)) {
        let [left, right] = panels else { continue };
        let load: Vec<&Sample> = r.samples.iter().filter(|s| s.requests > 0).collect();
        let x = |s: &Sample| s.requests as f64 / 1000.0;
        let x_max = load.iter().map(|s| x(s)).fold(1.0, f64::max);
        let warm_x = r.warm(warmup).map(x);
        let name = r.chain.scenario().name();

        let envoy_series: [Series; 2] =
            [("Envoy RSS", BLUE, |s| s.rss), ("tcmalloc heap", RGBColor(230, 126, 34), |s| s.heap_size)];
        let y_max = load.iter().map(|s| mib(s.rss.max(s.heap_size))).fold(1.0, f64::max) * 1.2;
        let mut chart = panel(left, &format!("Envoy {version}, {name}: memory (MiB)"), "MiB", x_max, y_max)?;
        for (label, color, pick) in envoy_series {
            chart
                .draw_series(LineSeries::new(load.iter().map(|s| (x(s), mib(pick(s)))), color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        finish(&mut chart, warm_x, y_max)?;

        let y_max = load.iter().flat_map(|s| s.vms.iter().map(|vm| kib(vm.bytes))).fold(1.0, f64::max) * 1.2;
        let caption = format!("{name}: Wasm VMs, linear memory (solid) and resident (light), KiB");
        let mut chart = panel(right, &caption, "KiB", x_max, y_max)?;
        // In colour the VM of each module that serves the requests (`#1`, the worker's), with its resident pages;
        // the others (the main thread's copy, the base VM) in grey, memory only: they stay as configured.
        let mut colours = 0;
        let mut others = false;
        for (start, label) in &r.vms {
            let points = |pick: fn(&Memory) -> u64| {
                load.iter().filter_map(|s| s.vm(*start).map(|vm| (x(s), kib(pick(vm))))).collect::<Vec<_>>()
            };
            if !label.ends_with("#1") {
                let grey = RGBColor(170, 170, 170);
                let series =
                    chart.draw_series(LineSeries::new(points(|vm| vm.bytes), grey)).map_err(|e| e.to_string())?;
                if !others {
                    others = true;
                    series
                        .label("the other VMs (main thread, base)")
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey));
                }
                continue;
            }
            let color = Palette99::pick(colours).to_rgba();
            colours += 1;
            chart
                .draw_series(LineSeries::new(points(|vm| vm.bytes), color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            chart.draw_series(LineSeries::new(points(|vm| vm.resident), color.mix(0.4))).map_err(|e| e.to_string())?;
        }
        finish(&mut chart, warm_x, y_max)?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(out: &mut Vec<u8>, mut value: u64) {
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }

    fn field(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
        varint(out, number << 3 | 2);
        varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }

    fn attribute(key: &str, value: &str) -> Vec<u8> {
        let (mut kv, mut any) = (Vec::new(), Vec::new());
        field(&mut any, 1, value.as_bytes());
        field(&mut kv, 1, key.as_bytes());
        field(&mut kv, 2, &any);
        kv
    }

    /// An export of `records`, each `(uid, action)`, with the fixed-size and varint fields a real record has.
    fn export(records: &[(&str, &str)]) -> Vec<u8> {
        let mut scope_logs = Vec::new();
        field(&mut scope_logs, 1, b"\x0a\x0cegress-audit");
        for (uid, action) in records {
            let mut record = vec![0x09, 1, 2, 3, 4, 5, 6, 7, 8, 0x10, 9];
            field(&mut record, 6, &attribute("log.record.uid", uid));
            field(&mut record, 6, &attribute("egress.decision.action", action));
            field(&mut scope_logs, 2, &record);
        }
        let mut resource_logs = Vec::new();
        field(&mut resource_logs, 1, &attribute("service.name", "x"));
        field(&mut resource_logs, 2, &scope_logs);
        let mut request = Vec::new();
        field(&mut request, 1, &resource_logs);
        request
    }

    #[test]
    fn counts_the_records_of_an_export_with_their_ids_and_decisions() {
        let body = export(&[("a", "allow"), ("b", "deny")]);
        let seen = records(&body).unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen.iter().map(|s| s.action).collect::<Vec<_>>(), [Some("allow"), Some("deny")]);
        assert!(seen[0].id.is_some() && seen[0].id != seen[1].id);
        assert!(records(&export(&[])).unwrap().is_empty());
        assert!(records(&[0x0a, 0x05, 0x01]).is_err(), "a field longer than its message");
    }

    #[test]
    fn the_receiver_counts_what_the_audit_stage_ships() {
        let receiver = Receiver::start().unwrap();
        let body = export(&[("a", "allow"), ("b", "deny"), ("a", "allow")]);
        let mut stream = TcpStream::connect(receiver.addr).unwrap();
        for _ in 0..2 {
            let head = format!(
                "POST /v1/logs HTTP/1.1\r\nhost: collector\r\ncontent-type: application/x-protobuf\r\n\
                 content-length: {}\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(&body).unwrap();
        }
        stream
            .write_all(b"POST /v1/logs HTTP/1.1\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
            .unwrap();
        let mut reader = BufReader::new(stream);
        let mut statuses = Vec::new();
        for _ in 0..3 {
            statuses.push(paced::read_line(&mut reader).unwrap());
            while !paced::read_line(&mut reader).unwrap().is_empty() {}
        }
        assert_eq!(statuses, ["HTTP/1.1 200 OK", "HTTP/1.1 200 OK", "HTTP/1.1 400 Bad Request"]);
        let tally = receiver.tally();
        assert_eq!((tally.posts, tally.records, tally.duplicates, tally.refused), (2, 6, 4, 1));
        assert_eq!(tally.actions.get("allow"), Some(&4));
    }

    #[test]
    fn finds_the_first_active_data_segment_of_a_module() {
        // A type section to skip, then a data section: a passive segment, an active one at 1048576 (i32.const
        // 1048576 is 0x41 0x80 0x80 0xc0 0x00), "abc".
        let mut wasm = b"\0asm\x01\0\0\0".to_vec();
        wasm.extend([1, 1, 0]);
        let data = [2, 1, 2, b'x', b'y', 0, 0x41, 0x80, 0x80, 0xc0, 0x00, 0x0b, 3, b'a', b'b', b'c'];
        wasm.extend([11, data.len() as u8]);
        wasm.extend(data);
        assert_eq!(data_segment(&wasm), Some((1_048_576, b"abc".to_vec())));
        assert_eq!(data_segment(b"\0asm\x01\0\0\0"), None);
        assert_eq!(data_segment(b"not wasm"), None);
    }

    #[test]
    fn a_wasm_memory_is_a_read_write_mapping_before_the_rest_of_its_reservation() {
        let line = "7fd990670000-7fd990790000 rw-p 00000000 00:00 0 ";
        let mapping = Mapping::parse(line).unwrap();
        assert_eq!(
            (mapping.start, mapping.end, mapping.perms.as_str(), mapping.anonymous),
            (0x7fd990670000, 0x7fd990790000, "rw-p", true)
        );
        assert!(Mapping::parse("Rss:                 108 kB").is_none());
        assert_eq!(kilobytes("   108 kB"), Some(108 * 1024));
        // This process has no Wasm memory.
        assert!(wasm_memories(std::process::id()).unwrap().is_empty());
    }

    #[test]
    fn the_mix_implies_its_counters() {
        let result = ChainResult {
            chain: Chain::Suite,
            version: String::new(),
            vms: Vec::new(),
            samples: Vec::new(),
            sent: vec![1; MIX.len()],
            load: Duration::ZERO,
            checks: Vec::new(),
        };
        let expected: BTreeMap<_, _> = result.expected().into_iter().collect();
        // 16 allowed requests, one of them followed to a second allowed hop; 4 denied; 2 spoofed.
        assert_eq!(expected["allowed"], 17);
        assert_eq!(expected["denied"], 4);
        assert_eq!(expected["spoofed"], 2);
        assert_eq!(expected["followed"], 1);
        assert_eq!(expected["audit_events"], 20);
        assert_eq!(mix().iter().filter(|r| r.status.is_none()).count(), 16);
    }
}
