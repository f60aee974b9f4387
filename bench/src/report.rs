//! The results: Markdown tables (the fused suite first, ratios before absolute numbers, machine and versions noted),
//! the same figures as JSON, and a PNG.

use crate::calls::Calls;
use crate::paced::Paced;
use crate::scenarios::Scenario;
use egress_harness::pki::Error;
use plotters::prelude::*;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// One figure measured once per round.
#[derive(Clone, Debug, Default)]
pub struct Samples(Vec<f64>);

impl Samples {
    pub fn push(&mut self, value: f64) {
        self.0.push(value);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut values = self.0.clone();
        values.sort_by(f64::total_cmp);
        values
    }

    pub fn median(&self) -> f64 {
        let values = self.sorted();
        match values.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => values[n / 2],
            n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
        }
    }

    /// `median (min–max)`.
    fn show(&self, decimals: usize) -> String {
        let values = self.sorted();
        match (values.first(), values.last()) {
            (Some(min), Some(max)) => format!("{:.decimals$} ({min:.decimals$}–{max:.decimals$})", self.median()),
            _ => "—".into(),
        }
    }

    fn json(&self) -> Value {
        let values = self.sorted();
        json!({"median": finite(self.median()), "min": values.first(), "max": values.last(), "rounds": values})
    }
}

fn finite(value: f64) -> Value {
    if value.is_finite() {
        json!(value)
    } else {
        Value::Null
    }
}

/// Everything measured of one scenario.
#[derive(Debug, Default)]
pub struct Row {
    pub scenario: Scenario,
    /// Requests per second at saturation, per round.
    pub echo: Samples,
    pub direct: Samples,
    /// Envoy's CPU time per request (µs) in the direct_response runs.
    pub cpu_us: Samples,
    /// The paced latency runs, one per round.
    pub latency: Vec<Paced>,
    pub calls: Option<Calls>,
    /// Lines the native access log wrote over the whole run (`suite-accesslog` only), each checked to carry the
    /// suite's decision.
    pub access_log_lines: Option<usize>,
}

impl Row {
    fn latency(&self, pick: fn(&Paced) -> Duration) -> f64 {
        let mut values: Vec<f64> = self.latency.iter().map(|run| micros(pick(run))).collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
    }
}

/// The paced runs' settings.
#[derive(Debug)]
pub struct Latency {
    pub rate: f64,
    pub seconds: u64,
}

/// The allow-list and RBAC at one policy size (requests per second, per round).
#[derive(Debug, Default)]
pub struct Scaling {
    pub rules: usize,
    pub allow_hit: Samples,
    pub allow_miss: Samples,
    pub rbac_hit: Samples,
    pub rbac_miss: Samples,
    /// Why Envoy did not start with the RBAC configuration, if it did not.
    pub rbac_error: Option<String>,
    /// The allow-list VM's linear memory after configuration (bytes).
    pub memory: Option<u64>,
    /// The fused suite VM's, with the same policy.
    pub suite_memory: Option<u64>,
}

pub struct Results {
    pub envoy_version: String,
    pub rounds: usize,
    pub seconds: u32,
    pub quick: bool,
    pub rows: Vec<Row>,
    pub latency: Latency,
    pub scaling: Vec<Scaling>,
    pub modules: Vec<(String, u64)>,
    pub elapsed: Duration,
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// The first line of `/proc/cpuinfo`'s model name, and the number of CPUs.
pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|info| {
        info.lines().find_map(|l| {
            l.strip_prefix("model name").and_then(|v| v.split_once(':')).map(|(_, v)| v.trim().to_string())
        })
    });
    // The machine's processors, not this process's share (the bench pins itself to one).
    let cores = std::fs::read_to_string("/proc/cpuinfo")
        .map_or(0, |info| info.lines().filter(|l| l.starts_with("processor")).count());
    format!("{}, {cores} CPUs", cpu.unwrap_or_else(|| "unknown CPU".into()))
}

fn version_of(program: &str, flag: &str) -> String {
    let output = std::process::Command::new(program).arg(flag).output();
    let text = output.map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)));
    // `wrk debian/4.1.0-3+b2 [epoll] Copyright …` → `wrk debian/4.1.0-3+b2`
    let first_words = |line: &str| line.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    text.ok().and_then(|t| t.lines().next().map(first_words)).unwrap_or_else(|| "?".into())
}

/// One target: what it asks, what was measured, whether it holds.
struct Target {
    what: String,
    measured: String,
    value: f64,
    met: bool,
}

impl Results {
    fn row(&self, scenario: Scenario) -> Option<&Row> {
        self.rows.iter().find(|r| r.scenario == scenario)
    }

    fn median(&self, scenario: Scenario, pick: fn(&Row) -> &Samples) -> f64 {
        self.row(scenario).map_or(f64::NAN, |row| pick(row).median())
    }

    fn ratio(&self, scenario: Scenario, pick: fn(&Row) -> &Samples) -> f64 {
        self.median(scenario, pick) / self.median(Scenario::None, pick)
    }

    /// Envoy CPU per request added over no filter (µs).
    fn added_cpu(&self, scenario: Scenario) -> f64 {
        self.median(scenario, |r| &r.cpu_us) - self.median(Scenario::None, |r| &r.cpu_us)
    }

    fn latency(&self, scenario: Scenario, pick: fn(&Paced) -> Duration) -> f64 {
        self.row(scenario).map_or(f64::NAN, |row| row.latency(pick))
    }

    fn added_latency(&self, scenario: Scenario, pick: fn(&Paced) -> Duration) -> f64 {
        self.latency(scenario, pick) - self.latency(Scenario::None, pick)
    }

    fn targets(&self) -> Vec<Target> {
        let floor = self.added_cpu(Scenario::Empty);
        let fused = self.added_cpu(Scenario::SuiteFused);
        let allowlist = self.added_cpu(Scenario::AllowList);
        let mut targets = vec![
            Target {
                what: "fused suite: added CPU per request ≤ 5× the empty filter's".into(),
                measured: format!("{:.1}× ({fused:.1} µs vs {floor:.1} µs)", fused / floor),
                value: fused / floor,
                met: fused <= 5.0 * floor,
            },
            Target {
                what: "allow-list alone: added CPU per request ≤ 2× the empty filter's".into(),
                measured: format!("{:.1}× ({allowlist:.1} µs)", allowlist / floor),
                value: allowlist / floor,
                met: allowlist <= 2.0 * floor,
            },
        ];
        // The two audit paths: the fused suite with its Wasm audit stage (events to the loopback collector) against
        // the same suite without it, Envoy's file access log writing the suite's records instead.
        let native = self.added_cpu(Scenario::SuiteAccessLog);
        targets.push(Target {
            what: "native access log instead of the Wasm audit stage: less added CPU per request than the fused suite"
                .into(),
            measured: format!("{native:.1} µs vs {fused:.1} µs ({:+.1} µs)", native - fused),
            value: native - fused,
            met: native < fused,
        });
        for (what, pick, at_least) in [
            ("fused suite ≥ 0.70× no-filter throughput, echo", (|r: &Row| &r.echo) as fn(&Row) -> &Samples, 0.70),
            ("fused suite ≥ 0.45× no-filter throughput, direct_response", |r: &Row| &r.direct, 0.45),
        ] {
            let ratio = self.ratio(Scenario::SuiteFused, pick);
            targets.push(Target {
                what: what.into(),
                measured: format!("{ratio:.2}×"),
                value: ratio,
                met: ratio >= at_least,
            });
        }
        for (what, pick, at_most) in [
            ("fused suite: p50 added ≤ 60 µs (paced)", (|p: &Paced| p.p50) as fn(&Paced) -> Duration, 60.0),
            ("fused suite: p99 added ≤ 150 µs (paced)", |p: &Paced| p.p99, 150.0),
        ] {
            let added = self.added_latency(Scenario::SuiteFused, pick);
            targets.push(Target {
                what: what.into(),
                measured: format!("{added:+.0} µs"),
                value: added,
                met: added <= at_most,
            });
        }
        let largest = self.modules.iter().map(|(_, b)| *b).max().unwrap_or(0);
        let name = self.modules.iter().max_by_key(|(_, b)| *b).map_or("", |(n, _)| n.as_str());
        targets.push(Target {
            what: "no module over 200 KB".into(),
            measured: format!("largest {name} {:.0} KB", largest as f64 / 1000.0),
            value: largest as f64,
            met: largest <= 200_000,
        });
        if let Some(last) = self.scaling.last() {
            for (what, memory) in [("allow-list", last.memory), ("fused suite", last.suite_memory)] {
                if let Some(memory) = memory {
                    targets.push(Target {
                        what: format!("{what}: VM memory at {} rules ≤ 16 MB", last.rules),
                        measured: format!("{:.1} MiB", memory as f64 / 1048576.0),
                        value: memory as f64,
                        met: memory <= 16_000_000,
                    });
                }
            }
        }
        if let Some(s) = self.scaling.iter().find(|s| s.rules == 10_000) {
            let ratio = s.allow_hit.median() / s.rbac_hit.median();
            targets.push(Target {
                what: "10k rules: allow-list beats RBAC (hits)".into(),
                measured: format!("{ratio:.2}× RBAC"),
                value: ratio,
                met: ratio > 1.0 || s.rbac_error.is_some(),
            });
        }
        targets
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# Egress filter suite: benchmark{}\n", if self.quick { " (--quick)" } else { "" });
        let _ = writeln!(
            out,
            "Machine: {}. Envoy {} (`--concurrency 1`, pinned to core 0); load from `{}` and a paced open-loop \
             generator pinned to core 1; echo upstream in-process. {} rounds of {} s per scenario, scenarios \
             alternating within each round; medians, with min–max. Run took {:.0?}. Reproduce: `make bench` \
             (`make bench-quick` for a short run).\n",
            machine(),
            self.envoy_version,
            version_of("wrk", "-v"),
            self.rounds,
            self.seconds,
            self.elapsed
        );
        let _ = writeln!(out, "## Cost per request\n");
        let _ = writeln!(
            out,
            "Envoy CPU per request: utime+stime of the Envoy process over the requests of the direct_response \
             saturation runs; added = over no filter. Latency: paced arrivals at {:.0} req/s (below every scenario's \
             knee), {} s per round, direct_response; host calls and VM entries per request counted against the \
             recording host.\n",
            self.latency.rate, self.latency.seconds
        );
        let _ = writeln!(out, "| scenario | CPU µs/req | added CPU µs | × empty filter | p50 µs | p99 µs | p99.9 µs | p50 added | p99 added | host calls | VM entries |");
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let floor = self.added_cpu(Scenario::Empty);
        for row in self.ordered() {
            let s = row.scenario;
            let calls = row.calls.as_ref();
            let _ = writeln!(
                out,
                "| {} | {} | {:+.1} | {} | {:.0} | {:.0} | {:.0} | {:+.0} | {:+.0} | {} | {} |",
                s.name(),
                row.cpu_us.show(1),
                self.added_cpu(s),
                if s.is_wasm() { format!("{:.1}×", self.added_cpu(s) / floor) } else { "—".into() },
                self.latency(s, |p| p.p50),
                self.latency(s, |p| p.p99),
                self.latency(s, |p| p.p999),
                self.added_latency(s, |p| p.p50),
                self.added_latency(s, |p| p.p99),
                calls.map_or("—".into(), |c| c.host_calls.to_string()),
                calls.map_or("—".into(), |c| c.vm_entries.to_string()),
            );
        }
        let lag: Vec<String> = self
            .ordered()
            .filter_map(|r| {
                let p = r.latency.first()?;
                Some(format!(
                    "{} {} requests at {:.0} req/s, send lag p50/p99 {:.0}/{:.0} µs, {:.1} % late",
                    r.scenario.id(),
                    p.sent,
                    p.rate,
                    micros(p.send_lag_p50),
                    micros(p.send_lag_p99),
                    p.late_share * 100.0
                ))
            })
            .collect();
        let _ = writeln!(out, "\nThe generator's own accuracy (first round): {}.", lag.join("; "));
        if let Some(lines) = self.row(Scenario::SuiteAccessLog).and_then(|r| r.access_log_lines) {
            let _ = writeln!(
                out,
                "\n`{}` is the fused suite without its audit stage, with Envoy's JSON file access log of the suite's \
                 filter-state records (`egressctl::access_log`, the line the rendered Istio provider writes) instead; \
                 `{}` ships audit events from Wasm to a loopback collector and has no access log. The native log \
                 wrote {lines} lines over the run, each carrying the suite's decision.",
                Scenario::SuiteAccessLog.id(),
                Scenario::SuiteFused.id()
            );
        }

        let _ = writeln!(out, "\n## Throughput at saturation (wrk, closed loop, 16 connections)\n");
        let _ = writeln!(
            out,
            "| scenario | vs no filter, echo | vs no filter, direct_response | req/s, echo | req/s, direct_response |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|");
        for row in self.ordered() {
            let s = row.scenario;
            let _ = writeln!(
                out,
                "| {} | {:.2}× | {:.2}× | {} | {} |",
                s.name(),
                self.ratio(s, |r| &r.echo),
                self.ratio(s, |r| &r.direct),
                row.echo.show(0),
                row.direct.show(0)
            );
        }

        let _ = writeln!(out, "\n## Host calls per request, by stage\n");
        let _ = writeln!(out, "| stage | fused suite | separate filters |");
        let _ = writeln!(out, "|---|---:|---:|");
        let by_stage = |scenario| self.row(scenario).and_then(|r| r.calls.as_ref()).map(|c| c.by_stage.clone());
        let (fused, separate) = (by_stage(Scenario::SuiteFused), by_stage(Scenario::SuiteSeparate));
        for (stage, n) in fused.iter().flatten() {
            let other =
                separate.iter().flatten().find(|(s, _)| s == stage).map_or("—".into(), |(_, n)| n.to_string());
            let _ = writeln!(out, "| {stage} | {n} | {other} |");
        }

        let _ = writeln!(out, "\n## Rule scaling (direct_response; hit = a host of the last rule; req/s)\n");
        let _ = writeln!(out, "| rules | allow-list hit vs {} rules | allow-list vs RBAC, hit | allow-list hit | allow-list miss | RBAC hit | RBAC miss | VM memory: allow-list | fused suite |", self.scaling.first().map_or(0, |s| s.rules));
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let first_hit = self.scaling.first().map_or(f64::NAN, |s| s.allow_hit.median());
        let mib = |bytes: Option<u64>| bytes.map_or("—".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0));
        for s in &self.scaling {
            let (rbac_hit, rbac_miss) = match &s.rbac_error {
                Some(_) => ("did not load".to_string(), "—".to_string()),
                None => (s.rbac_hit.show(0), s.rbac_miss.show(0)),
            };
            let _ = writeln!(
                out,
                "| {} | {:.2}× | {:.2}× | {} | {} | {rbac_hit} | {rbac_miss} | {} | {} |",
                s.rules,
                s.allow_hit.median() / first_hit,
                s.allow_hit.median() / s.rbac_hit.median(),
                s.allow_hit.show(0),
                s.allow_miss.show(0),
                mib(s.memory),
                mib(s.suite_memory)
            );
        }

        let _ = writeln!(out, "\n## Module sizes (`make build`)\n");
        for (name, bytes) in &self.modules {
            let _ = writeln!(out, "- `{name}`: {bytes} bytes ({:.0} KB)", *bytes as f64 / 1000.0);
        }

        let _ = writeln!(out, "\n## Targets\n");
        let _ = writeln!(out, "| target | measured | |");
        let _ = writeln!(out, "|---|---:|---|");
        for target in self.targets() {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                target.what,
                target.measured,
                if target.met { "met" } else { "**missed**" }
            );
        }
        out
    }

    /// The rows, fused suite first (the recommended deployment), then the rest in their usual order.
    fn ordered(&self) -> impl Iterator<Item = &Row> {
        let first = self.rows.iter().filter(|r| r.scenario == Scenario::SuiteFused);
        first.chain(self.rows.iter().filter(|r| r.scenario != Scenario::SuiteFused))
    }

    /// Every figure of the tables, by scenario id.
    pub fn json(&self) -> Value {
        let scenarios: Vec<Value> = self
            .rows
            .iter()
            .map(|row| {
                let s = row.scenario;
                let latency = |pick: fn(&Paced) -> Duration| finite(self.latency(s, pick));
                json!({
                    "id": s.id(),
                    "name": s.name(),
                    "throughput": {"echo": row.echo.json(), "direct_response": row.direct.json()},
                    "vs_no_filter": {"echo": finite(self.ratio(s, |r| &r.echo)), "direct_response": finite(self.ratio(s, |r| &r.direct))},
                    "cpu_us_per_request": row.cpu_us.json(),
                    "added_cpu_us_per_request": finite(self.added_cpu(s)),
                    "latency_us": {
                        "p50": latency(|p| p.p50), "p99": latency(|p| p.p99), "p999": latency(|p| p.p999),
                        "p50_added": finite(self.added_latency(s, |p| p.p50)),
                        "p99_added": finite(self.added_latency(s, |p| p.p99)),
                        "p999_added": finite(self.added_latency(s, |p| p.p999)),
                        "send_lag_p99": row.latency.first().map(|p| micros(p.send_lag_p99)),
                    },
                    "host_calls_per_request": row.calls.as_ref().map(|c| c.host_calls),
                    "vm_entries_per_request": row.calls.as_ref().map(|c| c.vm_entries),
                    "host_calls_by_stage": row.calls.as_ref().map(|c| c.by_stage.iter().map(|(s, n)| json!({"stage": s, "calls": n})).collect::<Vec<_>>()),
                    "access_log_lines": row.access_log_lines,
                })
            })
            .collect();
        let scaling: Vec<Value> = self
            .scaling
            .iter()
            .map(|s| {
                json!({"rules": s.rules, "allowlist_hit": s.allow_hit.json(), "allowlist_miss": s.allow_miss.json(),
                       "rbac_hit": s.rbac_hit.json(), "rbac_miss": s.rbac_miss.json(), "rbac_error": s.rbac_error,
                       "allowlist_vm_memory_bytes": s.memory, "suite_vm_memory_bytes": s.suite_memory})
            })
            .collect();
        let targets: Vec<Value> = self
            .targets()
            .into_iter()
            .map(|t| json!({"target": t.what, "measured": t.measured, "value": finite(t.value), "met": t.met}))
            .collect();
        json!({
            "machine": machine(),
            "envoy": self.envoy_version,
            "quick": self.quick,
            "rounds": self.rounds,
            "seconds": self.seconds,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "latency": {"rate": self.latency.rate, "seconds": self.latency.seconds, "upstream": "direct_response"},
            "scenarios": scenarios,
            "scaling": scaling,
            "modules": self.modules.iter().map(|(n, b)| json!({"file": n, "bytes": b})).collect::<Vec<_>>(),
            "targets": targets,
        })
    }
}

/// Reads a TrueType font for the chart's text: DejaVu Sans (Debian's fonts-dejavu-core), or `$BENCH_FONT`.
pub(crate) fn font() -> Result<&'static [u8], Error> {
    let path = std::env::var("BENCH_FONT").unwrap_or_else(|_| "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf".into());
    let bytes = std::fs::read(&path)
        .map_err(|e| format!("{path}: {e} (apt-get install fonts-dejavu-core, or set BENCH_FONT)"))?;
    Ok(Box::leak(bytes.into_boxed_slice()))
}

/// Horizontal bars, one or two per scenario.
fn bars(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    caption: &str,
    label: &str,
    rows: &[(String, f64, Option<f64>)],
) -> Result<(), Error> {
    let max = rows.iter().flat_map(|(_, a, b)| [*a, b.unwrap_or(0.0)]).filter(|v| v.is_finite()).fold(0.0, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(190)
        .build_cartesian_2d(0.0..(max * 1.1).max(1e-9), 0.0..rows.len() as f64)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(rows.len() * 2 + 1)
        .y_label_formatter(&|y| {
            let index = y.floor() as usize;
            if (y - y.floor() - 0.5).abs() < 0.26 {
                rows.get(index).map(|r| r.0.clone()).unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_desc(label)
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (_, first, second)) in rows.iter().enumerate() {
        let y = i as f64;
        let first = if first.is_finite() { first.max(0.0) } else { 0.0 };
        match second {
            Some(second) => {
                let second = if second.is_finite() { second.max(0.0) } else { 0.0 };
                chart
                    .draw_series([
                        Rectangle::new([(0.0, y + 0.52), (first, y + 0.9)], BLUE.mix(0.7).filled()),
                        Rectangle::new([(0.0, y + 0.1), (second, y + 0.48)], RGBColor(230, 126, 34).mix(0.8).filled()),
                    ])
                    .map_err(|e| e.to_string())?;
            }
            None => {
                chart
                    .draw_series([Rectangle::new([(0.0, y + 0.2), (first, y + 0.8)], BLUE.mix(0.7).filled())])
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}

/// Three panels: throughput relative to no filter (echo and direct_response), Envoy CPU added per request, and
/// latency added at p50 and p99 (paced).
pub fn chart(results: &Results, path: &Path) -> Result<(), Error> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, font()?).map_err(|_| "cannot load the font")?;
    let root = BitMapBackend::new(path, (1800, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let panels = root.split_evenly((1, 3));
    let rows: Vec<&Row> = results.ordered().collect::<Vec<_>>().into_iter().rev().collect();
    let name = |row: &Row| row.scenario.name().to_string();
    let throughput: Vec<_> = rows
        .iter()
        .map(|r| (name(r), results.ratio(r.scenario, |x| &x.echo), Some(results.ratio(r.scenario, |x| &x.direct))))
        .collect();
    let cpu: Vec<_> = rows.iter().map(|r| (name(r), results.added_cpu(r.scenario), None)).collect();
    let latency: Vec<_> = rows
        .iter()
        .map(|r| {
            let p50 = results.added_latency(r.scenario, |p| p.p50);
            (name(r), p50, Some(results.added_latency(r.scenario, |p| p.p99)))
        })
        .collect();
    if let [first, second, third] = panels.as_slice() {
        bars(first, "Throughput vs no filter (higher is better)", "blue: echo, orange: direct_response", &throughput)?;
        bars(second, "Envoy CPU added per request (µs)", "µs over no filter (direct_response)", &cpu)?;
        bars(third, "Latency added, paced (µs)", "blue: p50, orange: p99, over no filter", &latency)?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
