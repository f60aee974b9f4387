//! The results as a Markdown table (ratios first, absolute numbers second, machine and versions noted) and a PNG.

use crate::load::{self, Latency};
use crate::scenarios::{Filters, Upstream};
use egress_harness::pki::Error;
use plotters::prelude::*;
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

    /// `median (min–max)` in requests per second.
    fn show(&self) -> String {
        let values = self.sorted();
        match (values.first(), values.last()) {
            (Some(min), Some(max)) => format!("{:.0} ({min:.0}–{max:.0})", self.median()),
            _ => "—".into(),
        }
    }
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
}

/// Which fixed rate a latency run holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// Half the no-filter maximum (through the echo upstream): the rate the targets name.
    HalfOfNoFilter,
    /// Half the slowest scenario's maximum: below every scenario's knee, so no scenario reports queueing.
    BelowEveryKnee,
}

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::HalfOfNoFilter => "at half load",
            Load::BelowEveryKnee => "below every knee",
        }
    }

    fn rule(self) -> &'static str {
        match self {
            Load::HalfOfNoFilter => "half the no-filter maximum",
            Load::BelowEveryKnee => "half the slowest scenario's maximum",
        }
    }
}

/// Latency of every scenario at one fixed rate, round by round.
pub struct LatencyRun {
    pub load: Load,
    pub rate: f64,
    samples: Vec<(Filters, Vec<Latency>)>,
}

impl LatencyRun {
    pub fn new(load: Load, rate: f64) -> LatencyRun {
        LatencyRun { load, rate, samples: Vec::new() }
    }

    pub fn push(&mut self, filters: Filters, latency: Latency) {
        match self.samples.iter_mut().find(|(f, _)| *f == filters) {
            Some((_, samples)) => samples.push(latency),
            None => self.samples.push((filters, vec![latency])),
        }
    }

    fn p99(&self, filters: Filters) -> Duration {
        let samples = self.samples.iter().find(|(f, _)| *f == filters).map(|(_, s)| s.as_slice()).unwrap_or(&[]);
        median_duration(samples.iter().map(|l| l.p99))
    }

    /// The full suite's p99 over no filter's.
    fn suite_added(&self) -> f64 {
        micros(self.p99(Filters::Suite)) - micros(self.p99(Filters::None))
    }

    fn markdown(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\n## Latency {}: {} ({:.0} req/s, h2load, {} connections, echo upstream)\n",
            self.load.name(),
            self.load.rule(),
            self.rate,
            load::RATE_CONNECTIONS
        );
        let _ = writeln!(out, "| scenario | p99 added vs no filter | p50 | p99 | achieved req/s |");
        let _ = writeln!(out, "|---|---:|---:|---:|---:|");
        let base_p99 = self.p99(Filters::None);
        for (filters, samples) in &self.samples {
            let p50 = median_duration(samples.iter().map(|l| l.p50));
            let p99 = self.p99(*filters);
            let rate = samples.iter().map(|l| l.rate).sum::<f64>() / samples.len().max(1) as f64;
            let _ = writeln!(
                out,
                "| {} | {:+.0} µs | {:.0} µs | {:.0} µs | {rate:.0} |",
                filters.name(),
                micros(p99) - micros(base_p99),
                micros(p50),
                micros(p99)
            );
        }
    }
}

pub struct Results {
    pub envoy_version: String,
    pub rounds: usize,
    pub seconds: u32,
    pub throughput: Vec<(Filters, Upstream, Samples)>,
    pub latencies: Vec<LatencyRun>,
    pub scaling: Vec<Scaling>,
    pub modules: Vec<(String, u64)>,
    pub elapsed: Duration,
}

fn median_duration(values: impl Iterator<Item = Duration>) -> Duration {
    let mut values: Vec<Duration> = values.collect();
    values.sort();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// The first line of `/proc/cpuinfo`'s model name, and the number of CPUs.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|info| {
        info.lines().find_map(|l| {
            l.strip_prefix("model name").and_then(|v| v.split_once(':')).map(|(_, v)| v.trim().to_string())
        })
    });
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    format!("{}, {cores} CPUs", cpu.unwrap_or_else(|| "unknown CPU".into()))
}

fn version_of(program: &str, flag: &str) -> String {
    let output = std::process::Command::new(program).arg(flag).output();
    let text = output.map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)));
    // `wrk debian/4.1.0-3+b2 [epoll] Copyright …` → `wrk debian/4.1.0-3+b2`
    let first_words = |line: &str| line.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    text.ok().and_then(|t| t.lines().next().map(first_words)).unwrap_or_else(|| "?".into())
}

fn mark(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**missed**"
    }
}

impl Results {
    fn throughput(&self, filters: Filters, upstream: Upstream) -> Option<&Samples> {
        self.throughput.iter().find(|(f, u, _)| *f == filters && *u == upstream).map(|(_, _, s)| s)
    }

    fn ratio(&self, filters: Filters, upstream: Upstream) -> f64 {
        let base = self.throughput(Filters::None, upstream).map_or(f64::NAN, Samples::median);
        self.throughput(filters, upstream).map_or(f64::NAN, Samples::median) / base
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# Egress filter suite: benchmark\n");
        let _ = writeln!(
            out,
            "Machine: {}. Envoy {} (`--concurrency 1`: one worker), load from `{}` and `h2load` on the same machine, \
             echo upstream in-process. {} rounds of {} s per scenario, scenarios alternating within each round; \
             medians, with min–max. Run took {:.0?}. Reproduce: `make bench`.\n",
            machine(),
            self.envoy_version,
            version_of("wrk", "-v"),
            self.rounds,
            self.seconds,
            self.elapsed
        );

        let _ = writeln!(out, "## Throughput at saturation (wrk, closed loop, 16 connections)\n");
        let _ = writeln!(out, "| scenario | vs no filter, echo upstream | vs no filter, direct_response | req/s, echo | req/s, direct_response |");
        let _ = writeln!(out, "|---|---:|---:|---:|---:|");
        for filters in Filters::ALL {
            let show = |u| self.throughput(filters, u).map_or("—".into(), Samples::show);
            let _ = writeln!(
                out,
                "| {} | {:.2}× | {:.2}× | {} | {} |",
                filters.name(),
                self.ratio(filters, Upstream::Echo),
                self.ratio(filters, Upstream::DirectResponse),
                show(Upstream::Echo),
                show(Upstream::DirectResponse)
            );
        }

        for run in &self.latencies {
            run.markdown(&mut out);
        }

        let _ = writeln!(out, "\n## Rule scaling (direct_response; hit = a host of the last rule; req/s)\n");
        let _ = writeln!(out, "| rules | allow-list hit vs 10 rules | allow-list vs RBAC, hit | allow-list hit | allow-list miss | RBAC hit | RBAC miss | allow-list VM memory |");
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|");
        let first_hit = self.scaling.first().map_or(f64::NAN, |s| s.allow_hit.median());
        for s in &self.scaling {
            let (rbac_hit, rbac_miss) = match &s.rbac_error {
                Some(_) => ("did not load".to_string(), "—".to_string()),
                None => (s.rbac_hit.show(), s.rbac_miss.show()),
            };
            let memory = s.memory.map_or("—".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0));
            let _ = writeln!(
                out,
                "| {} | {:.2}× | {:.2}× | {} | {} | {rbac_hit} | {rbac_miss} | {memory} |",
                s.rules,
                s.allow_hit.median() / first_hit,
                s.allow_hit.median() / s.rbac_hit.median(),
                s.allow_hit.show(),
                s.allow_miss.show()
            );
        }

        let _ = writeln!(out, "\n## Module sizes (`make build`)\n");
        for (name, bytes) in &self.modules {
            let _ = writeln!(out, "- `{name}`: {bytes} bytes ({:.0} KB)", *bytes as f64 / 1000.0);
        }

        let _ = writeln!(out, "\n## Targets\n");
        let _ = writeln!(out, "| target | measured | |");
        let _ = writeln!(out, "|---|---:|---|");
        let allow = self.ratio(Filters::AllowList, Upstream::Echo);
        let suite = self.ratio(Filters::Suite, Upstream::Echo);
        let _ =
            writeln!(out, "| allow-list ≥ 0.92× no-filter throughput (echo) | {allow:.2}× | {} |", mark(allow >= 0.92));
        let _ = writeln!(out, "| full suite ≥ 0.85× (echo) | {suite:.2}× | {} |", mark(suite >= 0.85));
        if let Some(s) = self.scaling.iter().find(|s| s.rules == 10_000) {
            let ratio = s.allow_hit.median() / s.rbac_hit.median();
            let _ = writeln!(
                out,
                "| 10k rules: allow-list beats RBAC (hit) | {ratio:.2}× RBAC | {} |",
                mark(ratio > 1.0 || s.rbac_error.is_some())
            );
        }
        if let (Some(first), Some(last)) = (self.scaling.first(), self.scaling.last()) {
            let cost = 1.0 - last.allow_hit.median() / first.allow_hit.median();
            let _ = writeln!(
                out,
                "| {} → {} rules costs ≤ 5 % | {:.1} % | {} |",
                first.rules,
                last.rules,
                cost * 100.0,
                mark(cost <= 0.05)
            );
            if let Some(memory) = last.memory {
                let mib = memory as f64 / 1048576.0;
                let _ = writeln!(
                    out,
                    "| VM memory at {} rules ≤ 16 MB | {mib:.1} MiB | {} |",
                    last.rules,
                    mark(memory <= 16_000_000)
                );
            }
        }
        for run in &self.latencies {
            let (added, at) = (run.suite_added(), run.load.name());
            let _ = writeln!(out, "| p99 added ≤ 50 µs {at} (full suite) | {added:+.0} µs | {} |", mark(added <= 50.0));
        }
        let largest = self.modules.iter().map(|(_, b)| *b).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "| each .wasm ≤ 200 KB | largest {:.0} KB | {} |",
            largest as f64 / 1000.0,
            mark(largest <= 200_000)
        );
        out
    }
}

/// Reads a TrueType font for the chart's text: DejaVu Sans (Debian's fonts-dejavu-core), or `$BENCH_FONT`.
fn font() -> Result<&'static [u8], Error> {
    let path = std::env::var("BENCH_FONT").unwrap_or_else(|_| "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf".into());
    let bytes = std::fs::read(&path)
        .map_err(|e| format!("{path}: {e} (apt-get install fonts-dejavu-core, or set BENCH_FONT)"))?;
    Ok(Box::leak(bytes.into_boxed_slice()))
}

/// Two panels: throughput relative to no filter per scenario (echo and direct_response), and requests per second
/// against the number of rules for the allow-list and RBAC.
pub fn chart(results: &Results, path: &Path) -> Result<(), Error> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, font()?).map_err(|_| "cannot load the font")?;
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(760);

    let rows: Vec<(String, f64, f64)> = Filters::ALL
        .iter()
        .map(|f| (f.name().to_string(), results.ratio(*f, Upstream::Echo), results.ratio(*f, Upstream::DirectResponse)))
        .collect();
    let mut bars = ChartBuilder::on(&left)
        .caption("Throughput vs no filter (higher is better)", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(170)
        .build_cartesian_2d(0.0..1.1f64, 0.0..rows.len() as f64)
        .map_err(|e| e.to_string())?;
    bars.configure_mesh()
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
        .x_desc("ratio to no filter (blue: echo upstream, orange: direct_response)")
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (_, echo, direct)) in rows.iter().enumerate() {
        let y = i as f64;
        bars.draw_series([
            Rectangle::new([(0.0, y + 0.52), (*echo, y + 0.9)], BLUE.mix(0.7).filled()),
            Rectangle::new([(0.0, y + 0.1), (*direct, y + 0.48)], RGBColor(230, 126, 34).mix(0.8).filled()),
        ])
        .map_err(|e| e.to_string())?;
    }

    let max_rate = results
        .scaling
        .iter()
        .flat_map(|s| [s.allow_hit.median(), s.rbac_hit.median()])
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max);
    let mut lines = ChartBuilder::on(&right)
        .caption("Rule scaling, hits (req/s)", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((10f64..100_000f64).log_scale(), 0.0..max_rate * 1.15)
        .map_err(|e| e.to_string())?;
    lines.configure_mesh().x_desc("rules").draw().map_err(|e| e.to_string())?;
    let series = |pick: fn(&Scaling) -> &Samples| -> Vec<(f64, f64)> {
        results.scaling.iter().map(|s| (s.rules as f64, pick(s).median())).filter(|(_, v)| v.is_finite()).collect()
    };
    lines
        .draw_series(LineSeries::new(series(|s| &s.allow_hit), BLUE.stroke_width(3)))
        .map_err(|e| e.to_string())?
        .label("allow-list (Wasm)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE.stroke_width(3)));
    lines
        .draw_series(LineSeries::new(series(|s| &s.rbac_hit), RED.stroke_width(3)))
        .map_err(|e| e.to_string())?
        .label("RBAC (native)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED.stroke_width(3)));
    lines
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerLeft)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
