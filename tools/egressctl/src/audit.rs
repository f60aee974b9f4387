//! `egressctl audit …`: reports over audit events, read by [`egressctl::audit_log`]: NDJSON, Envoy log lines in any
//! format (the event found where it starts, at `{"schema":"egress-audit/`), JSON log lines and OTLP/JSON exports
//! holding such lines. Events are folded into a report one at a time, so a day of logs is never held in memory.
//!
//! Lines without an event (Envoy's other log output) are ignored, with or without `--skip-invalid`, and their number
//! is reported on stderr: a report over the wrong file says so instead of looking like a quiet day. A line that
//! should hold an event but does not parse (a truncated event, another schema version, a `{` line that is not JSON
//! and holds no marker) is an error naming the line, or skipped and counted with `--skip-invalid`.

use crate::{Failure, Verdict};
use clap::Subcommand;
use egress_core::audit::AuditEvent;
use egress_core::hosts::{HostIndex, HostPattern};
use egress_core::policy::RuleDocument;
use egress_core::{Action, Host, Policy, PolicyDocument, RequestLine, SpiffeId};
use egressctl::audit_log::{self, ReadError};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::BufRead;
use std::path::PathBuf;

/// Rows `top-denied` prints unless `--limit` says otherwise.
const DEFAULT_LIMIT: usize = 20;

/// Deny reasons no allow rule can change: the deny list wins over every rule, and malformed requests are refused in
/// every mode.
const UNFIXABLE: [&str; 3] = ["deny_listed", "malformed_authority", "missing_sni"];

/// The reports.
#[derive(Debug, Subcommand)]
pub enum Report {
    /// Denied requests by workload and destination host, most first.
    TopDenied {
        #[command(flatten)]
        input: Input,
        /// Rows to print; 0 for all.
        #[arg(long, value_name = "N", default_value_t = DEFAULT_LIMIT)]
        limit: usize,
    },
    /// Every redirect target, with counts per action and the first reason.
    Redirects {
        #[command(flatten)]
        input: Input,
    },
    /// Report-mode findings (report-deny) by host and reason, with a total.
    WouldDeny {
        #[command(flatten)]
        input: Input,
    },
    /// A policy rule allowing the --allow hosts, with the ports, methods and principals observed in their deny and
    /// report-deny events.
    ///
    /// `*.example.com` matches the names below example.com. The rule is checked before it is printed: it compiles,
    /// and allows every event it covers. Exit 1 when no such event matches.
    Suggest {
        #[command(flatten)]
        input: Input,
        /// A host pattern, as in a policy (repeat for more).
        #[arg(long = "allow", value_name = "HOST", required = true)]
        hosts: Vec<String>,
        /// The rule's name (default `allow-<first host>`).
        #[arg(long)]
        name: Option<String>,
    },
    /// The JSON Schema of the audit event.
    Schema,
}

/// Where a report reads its events.
#[derive(Debug, clap::Args)]
pub struct Input {
    /// Log file; stdin when `-` or absent.
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
    /// Skip (and count) lines that should hold an event but do not parse, instead of failing.
    #[arg(long)]
    skip_invalid: bool,
}

pub fn run(report: Report) -> Result<Verdict, Failure> {
    match report {
        Report::TopDenied { input, limit } => {
            let mut report = TopDenied::default();
            input.read(|event| report.add(event))?;
            Ok(Verdict::Valid(report.render(limit)))
        }
        Report::Redirects { input } => {
            let mut report = Redirects::default();
            input.read(|event| report.add(event))?;
            Ok(Verdict::Valid(report.render()))
        }
        Report::WouldDeny { input } => {
            let mut report = WouldDeny::default();
            input.read(|event| report.add(event))?;
            Ok(Verdict::Valid(report.render()))
        }
        Report::Suggest { input, hosts, name } => {
            let mut suggest = Suggest::new(hosts.iter().map(String::as_str).collect(), name.as_deref())?;
            input.read(|event| suggest.add(event))?;
            suggest.render()
        }
        Report::Schema => schema().map(Verdict::Valid),
    }
}

/// The JSON Schema of `AuditEvent`, pretty-printed: `filters/core/schemas/egress-audit-v1.schema.json`.
pub fn schema() -> Result<String, Failure> {
    let schema = schemars::schema_for!(AuditEvent);
    serde_json::to_string_pretty(&schema).map_err(|e| Failure::Input(format!("schema: {e}")))
}

impl Input {
    /// Feeds every event of FILE (or stdin) to `each`.
    fn read(&self, each: impl FnMut(&AuditEvent)) -> Result<(), Failure> {
        let path = self.file.as_deref().filter(|path| path.as_os_str() != "-");
        let (source, reader): (String, Box<dyn BufRead>) = match path {
            None => ("stdin".into(), Box::new(std::io::stdin().lock())),
            Some(path) => {
                let file = std::fs::File::open(path).map_err(|e| Failure::Input(format!("{}: {e}", path.display())))?;
                (path.display().to_string(), Box::new(std::io::BufReader::new(file)))
            }
        };
        let read = audit_log::read_events(reader, &source, self.skip_invalid, each).map_err(|e| match e {
            ReadError::Io(message) => Failure::Input(message),
            ReadError::Invalid(message) => Failure::Input(format!("{message} (--skip-invalid skips such lines)")),
        })?;
        if read.other_lines > 0 {
            let lines = plural(read.other_lines, "line", "lines");
            eprintln!("egressctl: ignored {lines} of {source} without an audit event (other log output)");
        }
        if let Some(first) = read.first_invalid {
            let lines = plural(read.invalid_lines, "invalid line", "invalid lines");
            eprintln!("egressctl: skipped {lines} of {source} (first: line {first})");
        }
        Ok(())
    }
}

fn action(event: &AuditEvent) -> Option<&str> {
    event.decision.as_ref().map(|d| d.action.as_str())
}

fn reason(event: &AuditEvent) -> String {
    event.decision.as_ref().map_or_else(String::new, |d| shown(&d.reason, "(none)"))
}

fn workload(event: &AuditEvent) -> String {
    event.source.principal.clone().unwrap_or_else(|| "anonymous".into())
}

fn host(event: &AuditEvent) -> String {
    shown(event.destination.host.as_deref().unwrap_or_default(), "(unknown)")
}

fn shown(value: &str, placeholder: &str) -> String {
    if value.is_empty() { placeholder } else { value }.to_string()
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Most frequent key; ties go to the first in order.
fn most_frequent(counts: &BTreeMap<String, usize>) -> Option<(&str, usize)> {
    counts.iter().max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0))).map(|(k, &n)| (k.as_str(), n))
}

/// An aligned text table: two spaces between columns, `right` columns right-aligned, no trailing spaces.
fn table(header: &[&str], right: &[bool], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(ToString::to_string).collect();
    let mut lines = Vec::with_capacity(rows.len() + 1);
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .zip(right.iter().chain(std::iter::repeat(&false)))
            .map(|((cell, &width), &right)| if right { format!("{cell:>width$}") } else { format!("{cell:<width$}") })
            .collect();
        lines.push(cells.join("  ").trim_end().to_string());
    }
    lines.join("\n")
}

/// `top-denied`: denied requests by (workload, host).
#[derive(Debug, Default)]
pub struct TopDenied {
    groups: HashMap<(String, String), BTreeMap<String, usize>>,
}

/// One row of `top-denied`.
#[derive(Debug, PartialEq, Eq)]
pub struct DeniedRow {
    pub count: usize,
    pub workload: String,
    pub host: String,
    /// The most frequent reason, and how often it occurred.
    pub top_reason: (String, usize),
}

impl TopDenied {
    pub fn add(&mut self, event: &AuditEvent) {
        if action(event) != Some("deny") {
            return;
        }
        let reasons = self.groups.entry((workload(event), host(event))).or_default();
        *reasons.entry(reason(event)).or_default() += 1;
    }

    /// Most first; ties by workload, then host.
    pub fn rows(&self) -> Vec<DeniedRow> {
        let mut rows: Vec<DeniedRow> = self
            .groups
            .iter()
            .map(|((workload, host), reasons)| {
                let (reason, n) = most_frequent(reasons).unwrap_or(("(none)", 0));
                DeniedRow {
                    count: reasons.values().sum(),
                    workload: workload.clone(),
                    host: host.clone(),
                    top_reason: (reason.to_string(), n),
                }
            })
            .collect();
        rows.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| (&a.workload, &a.host).cmp(&(&b.workload, &b.host))));
        rows
    }

    /// At most `limit` rows (0: all), then a line saying how many were left out.
    pub fn render(&self, limit: usize) -> String {
        let rows = self.rows();
        if rows.is_empty() {
            return "no denied requests".into();
        }
        let shown = if limit == 0 { rows.len() } else { limit.min(rows.len()) };
        let cells: Vec<Vec<String>> = rows
            .iter()
            .take(shown)
            .map(|row| {
                let (reason, n) = &row.top_reason;
                let reason = if *n == row.count { reason.clone() } else { format!("{reason} ({n} of {})", row.count) };
                vec![row.count.to_string(), row.workload.clone(), row.host.clone(), reason]
            })
            .collect();
        let mut out = table(&["COUNT", "WORKLOAD", "HOST", "TOP REASON"], &[true], &cells);
        if shown < rows.len() {
            let more = rows.len() - shown;
            out.push_str(&format!("\n… {} (--limit 0 shows all)", plural(more, "more row", "more rows")));
        }
        out
    }
}

/// `redirects`: every redirect target, with counts per action.
#[derive(Debug, Default)]
pub struct Redirects {
    targets: HashMap<String, RedirectCounts>,
}

/// What happened to redirects to one target.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RedirectCounts {
    pub total: usize,
    pub allow: usize,
    pub deny: usize,
    pub report_deny: usize,
    pub bounce: usize,
    /// The reason of the first hop seen to this target.
    pub first_reason: String,
}

impl Redirects {
    pub fn add(&mut self, event: &AuditEvent) {
        for hop in &event.redirects {
            let location = shown(hop.location.as_deref().unwrap_or_default(), "(none)");
            let counts = self.targets.entry(location).or_default();
            if counts.total == 0 {
                counts.first_reason = shown(&hop.reason, "(none)");
            }
            counts.total += 1;
            match hop.action.as_str() {
                "allow" => counts.allow += 1,
                "deny" => counts.deny += 1,
                "report-deny" => counts.report_deny += 1,
                "bounce" => counts.bounce += 1,
                _ => {}
            }
        }
    }

    /// Most first; ties by location.
    pub fn rows(&self) -> Vec<(&str, &RedirectCounts)> {
        let mut rows: Vec<(&str, &RedirectCounts)> = self.targets.iter().map(|(l, c)| (l.as_str(), c)).collect();
        rows.sort_by(|a, b| b.1.total.cmp(&a.1.total).then_with(|| a.0.cmp(b.0)));
        rows
    }

    pub fn render(&self) -> String {
        let rows = self.rows();
        if rows.is_empty() {
            return "no redirects".into();
        }
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|(location, c)| {
                let numbers = [c.total, c.allow, c.deny, c.report_deny, c.bounce].map(|n| n.to_string());
                numbers.into_iter().chain([location.to_string(), c.first_reason.clone()]).collect()
            })
            .collect();
        let header = ["TOTAL", "ALLOW", "DENY", "REPORT-DENY", "BOUNCE", "LOCATION", "FIRST REASON"];
        table(&header, &[true; 5], &cells)
    }
}

/// `would-deny`: report-mode findings by (host, reason).
#[derive(Debug, Default)]
pub struct WouldDeny {
    groups: HashMap<(String, String), usize>,
}

impl WouldDeny {
    pub fn add(&mut self, event: &AuditEvent) {
        if action(event) == Some("report-deny") {
            *self.groups.entry((host(event), reason(event))).or_default() += 1;
        }
    }

    /// `(count, host, reason)`, most first; ties by host, then reason.
    pub fn rows(&self) -> Vec<(usize, &str, &str)> {
        let mut rows: Vec<(usize, &str, &str)> =
            self.groups.iter().map(|((host, reason), &n)| (n, host.as_str(), reason.as_str())).collect();
        rows.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| (a.1, a.2).cmp(&(b.1, b.2))));
        rows
    }

    /// The total line: `N requests would have been denied (M distinct hosts)`.
    pub fn total(&self) -> String {
        let requests: usize = self.groups.values().sum();
        let hosts: BTreeSet<&str> = self.groups.keys().map(|(host, _)| host.as_str()).collect();
        format!(
            "{} would have been denied ({})",
            plural(requests, "request", "requests"),
            plural(hosts.len(), "distinct host", "distinct hosts")
        )
    }

    pub fn render(&self) -> String {
        let rows = self.rows();
        if rows.is_empty() {
            return self.total();
        }
        let cells: Vec<Vec<String>> =
            rows.iter().map(|(n, host, reason)| vec![n.to_string(), host.to_string(), reason.to_string()]).collect();
        format!("{}\n\n{}", table(&["COUNT", "HOST", "REASON"], &[true], &cells), self.total())
    }
}

/// What a suggested rule must allow, from one matching event (deduplicated: only what the rule's fields and the
/// self-check look at).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Observation {
    host: String,
    port: Option<u16>,
    scheme: Option<String>,
    /// `None` for TLS passthrough: the gateway saw no HTTP.
    method: Option<String>,
    /// The verified SPIFFE ID; `None` for anonymous or unverified callers (a principals rule would refuse them).
    identity: Option<String>,
}

/// `suggest`: a rule allowing the chosen hosts as they were used in denied and report-deny events.
#[derive(Debug)]
pub struct Suggest {
    hosts: Vec<String>,
    index: HostIndex<usize>,
    name: String,
    /// Per chosen host: how many events it matched.
    matched: Vec<usize>,
    deny: usize,
    report_deny: usize,
    observed: HashSet<Observation>,
    /// Matching events denied for a reason no rule can change, by reason.
    unfixable: BTreeMap<String, usize>,
}

impl Suggest {
    /// `hosts` are `--allow` values (host patterns, as in a policy); `name` the rule's (default `allow-<first host>`).
    pub fn new(hosts: Vec<&str>, name: Option<&str>) -> Result<Suggest, Failure> {
        let mut unique: Vec<String> = Vec::with_capacity(hosts.len());
        let mut index = HostIndex::default();
        for host in hosts {
            if unique.iter().any(|h| h == host) {
                continue;
            }
            let pattern = HostPattern::parse(host).map_err(|e| Failure::Usage(format!("--allow {host}: {e}")))?;
            index.insert(&pattern, unique.len()).map_err(|e| Failure::Usage(format!("--allow {host}: {e}")))?;
            unique.push(host.to_string());
        }
        let Some(first) = unique.first() else {
            return Err(Failure::Usage("audit suggest needs at least one --allow HOST".into()));
        };
        let name = match name {
            Some(name) => name.to_string(),
            None => {
                let base = match first.as_str() {
                    "*" => "all",
                    host => host.strip_prefix("*.").unwrap_or(host),
                };
                format!("allow-{base}").chars().take(128).collect()
            }
        };
        Ok(Suggest {
            matched: vec![0; unique.len()],
            hosts: unique,
            index,
            name,
            deny: 0,
            report_deny: 0,
            observed: HashSet::new(),
            unfixable: BTreeMap::new(),
        })
    }

    pub fn add(&mut self, event: &AuditEvent) {
        let Some(decision) = event.decision.as_ref().filter(|d| d.action == "deny" || d.action == "report-deny") else {
            return;
        };
        // Host patterns match DNS names only, as in the filter; IP literals need `cidrs`.
        let Some(Ok(Host::Name(name))) = event.destination.host.as_deref().map(Host::parse) else { return };
        let mut hits = Vec::new();
        self.index.for_each_match(&name, |i| hits.push(i));
        if hits.is_empty() {
            return;
        }
        for i in hits {
            if let Some(n) = self.matched.get_mut(i) {
                *n += 1;
            }
        }
        if UNFIXABLE.contains(&decision.reason.as_str()) {
            *self.unfixable.entry(decision.reason.clone()).or_default() += 1;
            return;
        }
        if decision.action == "deny" {
            self.deny += 1;
        } else {
            self.report_deny += 1;
        }
        let identity = event.source.principal.clone().filter(|p| event.source.verified && SpiffeId::parse(p).is_ok());
        self.observed.insert(Observation {
            host: name,
            port: event.destination.port,
            scheme: event.destination.scheme.clone(),
            method: event.request.as_ref().map(|r| r.method.to_ascii_uppercase()),
            identity,
        });
    }

    /// The events the rule would allow.
    pub fn covered(&self) -> usize {
        self.deny + self.report_deny
    }

    /// The rule: the chosen hosts, and ports/methods/principals as observed, each omitted (any) when some covered
    /// event lacks it (no port; TLS passthrough, which has no method; no verified identity).
    pub fn rule(&self) -> RuleDocument {
        let all = |get: fn(&Observation) -> Option<String>| -> Option<Vec<String>> {
            let values: Option<BTreeSet<String>> = self.observed.iter().map(get).collect();
            values.map(|v| v.into_iter().collect())
        };
        let ports: Option<BTreeSet<u16>> = self.observed.iter().map(|o| o.port).collect();
        RuleDocument {
            name: self.name.clone(),
            hosts: Some(self.hosts.clone()),
            ports: ports.map(|p| p.into_iter().map(i64::from).collect()),
            methods: all(|o| o.method.clone()),
            principals: all(|o| o.identity.as_deref().and_then(|id| SpiffeId::parse(id).ok()).map(|id| id.principal())),
            ..RuleDocument::default()
        }
    }

    /// The YAML snippet, checked: it compiles, and the compiled rule allows every covered event.
    pub fn render(&self) -> Result<Verdict, Failure> {
        if self.covered() == 0 {
            let mut message = format!("no deny or report-deny events for {}", self.hosts.join(", "));
            if !self.unfixable.is_empty() {
                message.push_str(&format!(" that a rule could allow ({})", self.unfixable_text()));
            }
            return Ok(Verdict::Invalid(message));
        }
        let rule = self.rule();
        let yaml = self.yaml(&rule);
        let doc = PolicyDocument { rules: vec![rule], ..PolicyDocument::default() };
        let policy = Policy::compile(&doc)
            .map_err(|e| Failure::Input(format!("bug: the suggested rule does not compile: {e}\n{yaml}")))?;
        let mut observed: Vec<&Observation> = self.observed.iter().collect();
        observed.sort_by(|a, b| (&a.host, a.port, &a.method).cmp(&(&b.host, b.port, &b.method)));
        for o in observed {
            if let Some(refused) = check(&policy, o) {
                return Err(Failure::Input(format!("bug: the suggested rule does not allow {o:?}: {refused}\n{yaml}")));
            }
        }
        Ok(Verdict::Valid(yaml))
    }

    fn unfixable_text(&self) -> String {
        let parts: Vec<String> = self.unfixable.iter().map(|(reason, n)| format!("{reason}: {n}")).collect();
        format!("{}, which no rule changes", parts.join(", "))
    }

    fn yaml(&self, rule: &RuleDocument) -> String {
        let mut lines = vec![format!(
            "# covers {} ({} deny, {} report-deny)",
            plural(self.covered(), "event", "events"),
            self.deny,
            self.report_deny
        )];
        let unmatched: Vec<&str> =
            self.hosts.iter().zip(&self.matched).filter(|(_, &n)| n == 0).map(|(h, _)| h.as_str()).collect();
        if !unmatched.is_empty() {
            lines.push(format!("# no events for {}", unmatched.join(", ")));
        }
        if !self.unfixable.is_empty() {
            lines.push(format!("# not covered: {}", self.unfixable_text()));
        }
        let omitted = [
            (rule.ports.is_none(), "ports (an event without a port)"),
            (rule.methods.is_none(), "methods (TLS passthrough: no HTTP method)"),
            (rule.principals.is_none(), "principals (anonymous or unverified callers)"),
        ];
        for (_, why) in omitted.iter().filter(|(omitted, _)| *omitted) {
            lines.push(format!("# any {why}"));
        }
        let quoted = |values: &[String]| -> String {
            let items: Vec<String> = values.iter().map(|v| serde_json::Value::from(v.as_str()).to_string()).collect();
            format!("[{}]", items.join(", "))
        };
        lines.push("rules:".into());
        lines.push(format!("  - name: {}", serde_json::Value::from(rule.name.as_str())));
        lines.push(format!("    hosts: {}", quoted(rule.hosts.as_deref().unwrap_or_default())));
        if let Some(ports) = &rule.ports {
            let ports: Vec<String> = ports.iter().map(ToString::to_string).collect();
            lines.push(format!("    ports: [{}]", ports.join(", ")));
        }
        if let Some(methods) = &rule.methods {
            lines.push(format!("    methods: {}", quoted(methods)));
        }
        if let Some(principals) = &rule.principals {
            lines.push(format!("    principals: {}", quoted(principals)));
        }
        lines.join("\n")
    }
}

/// Evaluates an observation against the suggested policy as the filter would: `None` when allowed, else the reason.
fn check(policy: &Policy, o: &Observation) -> Option<String> {
    let identity = o.identity.as_deref().and_then(|id| SpiffeId::parse(id).ok());
    let decision = match &o.method {
        Some(method) => {
            let authority = o.port.map_or_else(|| o.host.clone(), |port| format!("{}:{port}", o.host));
            let connect = method == "CONNECT";
            if connect && o.port.is_none() {
                return None; // not a request the filter could have judged by host; nothing to check
            }
            policy.evaluate_http(
                &RequestLine {
                    scheme: o.scheme.as_deref().unwrap_or("http"),
                    authority: &authority,
                    method,
                    path: (!connect).then_some("/"),
                },
                identity.as_ref().into(),
            )
        }
        None => policy.evaluate_tls(Some(&o.host), o.port.unwrap_or(443), identity.as_ref().into()),
    };
    (decision.action != Action::Allow).then(|| decision.reason.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use egress_core::audit::Upstream;
    use egress_core::audit::{
        Decision, Destination, EventKind, Gateway, RedirectHop, Request, Response, Source, SCHEMA,
    };

    const SLEEP: &str = "spiffe://cluster.local/ns/app/sa/sleep";
    const CURL: &str = "spiffe://cluster.local/ns/app/sa/curl";

    /// An HTTP event; `principal` verified when given.
    fn event(action: &str, reason: &str, principal: Option<&str>, host: &str, port: u16, method: &str) -> AuditEvent {
        AuditEvent {
            schema: SCHEMA.into(),
            time: "2026-11-21T11:49:02.007Z".into(),
            id: "req".into(),
            kind: EventKind::Http,
            tunnel: method == "CONNECT",
            gateway: Gateway::default(),
            source: Source {
                principal: principal.map(str::to_string),
                verified: principal.is_some(),
                ..Source::default()
            },
            destination: Destination {
                host: Some(host.into()),
                port: Some(port),
                scheme: Some(if port == 80 { "http" } else { "https" }.into()),
                sni: None,
            },
            request: Some(Request { method: method.into(), path: "/".into(), ..Request::default() }),
            decision: Some(Decision {
                action: action.into(),
                reason: reason.into(),
                rule: None,
                mode: None,
                policy: None,
                detail: None,
            }),
            redirects: Vec::new(),
            response: Response::default(),
            duration_ms: None,
            upstream: Upstream::default(),
        }
    }

    fn tls(action: &str, host: &str, port: u16) -> AuditEvent {
        let mut e = event(action, "host_not_allowed", Some(SLEEP), host, port, "GET");
        e.kind = EventKind::Tls;
        e.request = None;
        e
    }

    fn hop(location: &str, action: &str, reason: &str) -> RedirectHop {
        RedirectHop {
            status: Some(302),
            location: Some(location.into()),
            action: action.into(),
            reason: reason.into(),
            followed: false,
        }
    }

    fn suggest(hosts: &[&str], events: &[AuditEvent]) -> Suggest {
        let mut s = Suggest::new(hosts.to_vec(), None).unwrap();
        events.iter().for_each(|e| s.add(e));
        s
    }

    #[test]
    fn a_report_takes_one_file_repeated_allows_and_skip_invalid() {
        use clap::error::ErrorKind;
        use clap::Parser;
        let parse = |a: &[&str]| crate::Cli::try_parse_from(["egressctl", "audit"].iter().chain(a));
        let Ok(crate::Cli { command: crate::Command::Audit(Report::Suggest { input, hosts, name }) }) =
            parse(&["suggest", "--allow", "a", "-", "--allow", "b", "--skip-invalid"])
        else {
            panic!("not parsed as suggest")
        };
        assert_eq!(
            (input.file, hosts, name, input.skip_invalid),
            (Some(PathBuf::from("-")), vec!["a".to_string(), "b".to_string()], None, true)
        );
        let kind = |a: &[&str]| parse(a).map(|_| ()).unwrap_err().kind();
        assert_eq!(kind(&["top-denied", "--limit", "1", "--limit", "2"]), ErrorKind::ArgumentConflict);
        assert_eq!(kind(&["top-denied", "--limit"]), ErrorKind::InvalidValue);
        assert_eq!(kind(&["top-denied", "--limit", "many"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["top-denied", "a", "b"]), ErrorKind::UnknownArgument);
        assert_eq!(kind(&["top-denied", "--allow", "x"]), ErrorKind::UnknownArgument);
        assert_eq!(kind(&["suggest", "-"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(kind(&["frobnicate"]), ErrorKind::InvalidSubcommand);
    }

    #[test]
    fn top_denied_groups_by_workload_and_host() {
        let mut report = TopDenied::default();
        let events = [
            event("deny", "host_not_allowed", Some(SLEEP), "a.com", 443, "GET"),
            event("deny", "port_not_allowed", Some(SLEEP), "a.com", 8443, "GET"),
            event("deny", "host_not_allowed", Some(SLEEP), "a.com", 443, "POST"),
            event("deny", "host_not_allowed", None, "b.com", 443, "GET"),
            event("deny", "host_not_allowed", Some(CURL), "a.com", 443, "GET"),
            event("report-deny", "host_not_allowed", Some(SLEEP), "a.com", 443, "GET"),
            event("allow", "allowed", Some(SLEEP), "a.com", 443, "GET"),
        ];
        events.iter().for_each(|e| report.add(e));
        let rows = report.rows();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[0],
            DeniedRow {
                count: 3,
                workload: SLEEP.into(),
                host: "a.com".into(),
                top_reason: ("host_not_allowed".into(), 2)
            }
        );
        assert_eq!((rows[1].workload.as_str(), rows[2].workload.as_str()), ("anonymous", CURL));
        let want = "\
COUNT  WORKLOAD                                HOST   TOP REASON
    3  spiffe://cluster.local/ns/app/sa/sleep  a.com  host_not_allowed (2 of 3)
    1  anonymous                               b.com  host_not_allowed";
        assert_eq!(report.render(2), format!("{want}\n… 1 more row (--limit 0 shows all)"));
        assert_eq!(report.render(0).lines().count(), 4);
        assert_eq!(TopDenied::default().render(5), "no denied requests");
    }

    #[test]
    fn redirects_count_per_target_and_action() {
        let mut report = Redirects::default();
        let mut first = event("allow", "allowed", None, "a.com", 443, "GET");
        first.redirects =
            vec![hop("https://b.com/x", "deny", "host_not_allowed"), hop("https://c.com/", "allow", "allowed")];
        let mut second = first.clone();
        second.redirects =
            vec![hop("https://b.com/x", "bounce", "downgrade"), hop("https://b.com/x", "report-deny", "x")];
        [first, second].iter().for_each(|e| report.add(e));
        let rows = report.rows();
        assert_eq!(rows[0].0, "https://b.com/x");
        assert_eq!(
            *rows[0].1,
            RedirectCounts {
                total: 3,
                allow: 0,
                deny: 1,
                report_deny: 1,
                bounce: 1,
                first_reason: "host_not_allowed".into()
            }
        );
        assert_eq!(
            report.render().lines().nth(2),
            Some("    1      1     0            0       0  https://c.com/   allowed")
        );
    }

    #[test]
    fn would_deny_groups_report_findings() {
        let mut report = WouldDeny::default();
        for e in [
            event("report-deny", "host_not_allowed", None, "a.com", 443, "GET"),
            event("report-deny", "host_not_allowed", None, "a.com", 443, "GET"),
            event("report-deny", "method_not_allowed", None, "a.com", 443, "PUT"),
            event("report-deny", "host_not_allowed", None, "b.com", 443, "GET"),
            event("deny", "host_not_allowed", None, "c.com", 443, "GET"),
        ] {
            report.add(&e);
        }
        assert_eq!(
            report.rows(),
            vec![
                (2, "a.com", "host_not_allowed"),
                (1, "a.com", "method_not_allowed"),
                (1, "b.com", "host_not_allowed")
            ]
        );
        assert!(report.render().ends_with("\n\n4 requests would have been denied (2 distinct hosts)"));
        assert_eq!(WouldDeny::default().render(), "0 requests would have been denied (0 distinct hosts)");
    }

    #[test]
    fn suggest_collects_ports_methods_and_principals() {
        let s = suggest(
            &["api.example.com", "*.cdn.example.com", "unused.example.com"],
            &[
                event("deny", "host_not_allowed", Some(SLEEP), "api.example.com", 443, "get"),
                event("report-deny", "host_not_allowed", Some(CURL), "x.cdn.example.com", 8443, "POST"),
                event("deny", "host_not_allowed", Some(SLEEP), "api.example.com", 443, "GET"),
                event("deny", "host_not_allowed", Some(SLEEP), "cdn.example.com", 80, "DELETE"), // not below
                event("deny", "deny_listed", Some(SLEEP), "api.example.com", 443, "GET"),
                event("allow", "allowed", Some(SLEEP), "api.example.com", 9999, "PATCH"),
            ],
        );
        assert_eq!(s.covered(), 3);
        let rule = s.rule();
        assert_eq!(rule.name, "allow-api.example.com");
        assert_eq!(rule.ports, Some(vec![443, 8443]));
        assert_eq!(rule.methods, Some(vec!["GET".to_string(), "POST".to_string()]));
        assert_eq!(
            rule.principals,
            Some(vec!["cluster.local/ns/app/sa/curl".to_string(), "cluster.local/ns/app/sa/sleep".to_string()])
        );
        let Ok(Verdict::Valid(yaml)) = s.render() else { panic!("no snippet") };
        assert_eq!(
            yaml,
            r#"# covers 3 events (2 deny, 1 report-deny)
# no events for unused.example.com
# not covered: deny_listed: 1, which no rule changes
rules:
  - name: "allow-api.example.com"
    hosts: ["api.example.com", "*.cdn.example.com", "unused.example.com"]
    ports: [443, 8443]
    methods: ["GET", "POST"]
    principals: ["cluster.local/ns/app/sa/curl", "cluster.local/ns/app/sa/sleep"]"#
        );
    }

    #[test]
    fn suggest_omits_what_some_event_lacks() {
        let mut unverified = event("deny", "host_not_allowed", Some(SLEEP), "a.com", 443, "GET");
        unverified.source.verified = false;
        let s = suggest(&["a.com"], &[unverified, tls("deny", "a.com", 443)]);
        let rule = s.rule();
        assert_eq!((rule.ports, rule.methods, rule.principals), (Some(vec![443]), None, None));
        let Ok(Verdict::Valid(yaml)) = s.render() else { panic!("no snippet") };
        assert!(yaml.contains("# any methods (TLS passthrough") && yaml.contains("# any principals"), "{yaml}");
        let anonymous = suggest(&["*"], &[event("report-deny", "host_not_allowed", None, "z.io", 80, "GET")]);
        assert_eq!(anonymous.rule().name, "allow-all");
        assert_eq!(anonymous.rule().principals, None);
        assert!(matches!(anonymous.render(), Ok(Verdict::Valid(_))));
    }

    #[test]
    fn suggest_without_matches_is_a_failed_check() {
        let s = suggest(&["a.com"], &[event("deny", "deny_listed", None, "a.com", 443, "GET")]);
        let Ok(Verdict::Invalid(message)) = s.render() else { panic!("expected no match") };
        assert_eq!(
            message,
            "no deny or report-deny events for a.com that a rule could allow (deny_listed: 1, which no rule changes)"
        );
        let ip = suggest(&["a.com"], &[event("deny", "ip_literal_not_allowed", None, "10.0.0.1", 443, "GET")]);
        assert!(matches!(ip.render(), Ok(Verdict::Invalid(_))));
        let Err(Failure::Usage(err)) = Suggest::new(vec!["10.0.0.1"], None) else { panic!("an IP address taken") };
        assert!(err.contains("is an IP address"), "{err}");
        assert!(Suggest::new(vec![], None).is_err());
    }

    #[test]
    fn suggest_reports_an_invalid_rule_name() {
        let mut s = Suggest::new(vec!["a.com"], Some("no spaces")).unwrap();
        s.add(&event("deny", "host_not_allowed", None, "a.com", 443, "GET"));
        let Err(Failure::Input(err)) = s.render() else { panic!("an invalid rule name taken") };
        assert!(err.contains("rules[0].name: `no spaces`"), "{err}");
    }

    #[test]
    fn schema_describes_the_event() {
        let schema: serde_json::Value = serde_json::from_str(&schema().unwrap()).unwrap();
        assert_eq!(schema["title"], "AuditEvent");
        assert!(schema["required"].as_array().unwrap().iter().any(|f| f == "destination"));
    }
}
