//! The audit events in a real Envoy's own log, read back by `egressctl`: through its library
//! (`egressctl::audit_log`, the one reader) and through the `egressctl audit` command, on the lines exactly as this
//! Envoy (`ENVOY_BIN`) and this chain (`EGRESS_MANIFESTS`: the fused suite by default) print them, in Envoy's default
//! log format and in the two formats Istio's pilot-agent starts Envoy with (`--log-format`, text and `logAsJson`).
//!
//! The captured lines are printed (`-- --nocapture`): the reader's unit tests (`tools/egressctl/src/audit_log.rs`) carry
//! some of them verbatim.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use egress_core::audit::{AuditEvent, EventKind};
use egress_harness::bootstrap;
use egress_harness::dns::Dns;
use egress_harness::echo::Echo;
use egress_harness::envoy::{workspace_root, Envoy, Launcher};
use egress_harness::pki::TestPki;
use egress_harness::{
    client, gateway_bootstrap_resolved, istio, lab_resolver, start_upstreams, wasm_dir, Lab, LabOptions,
};
use egressctl::audit_log::{self, Read, MARKER};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const POLICY: &str = r#"{"rules": [{"name": "httpbin", "hosts": ["httpbin.org", "*.httpbin.org"]}]}"#;

/// A request header the audit configuration records, carrying the filter's prefix, the event marker and a whole
/// forged event: written escaped inside the real event, it must not move where the reader finds the event.
const PLANTED: &str = r#"egress-audit: {"schema":"egress-audit/v1","kind":"tls","destination":{"host":"forged"}}"#;

/// Istio's Envoy log formats (pilot-agent, `pkg/envoy/proxy.go`): text, and JSON with `global.logAsJson`.
const ISTIO_TEXT_FORMAT: &str = "%Y-%m-%dT%T.%fZ\t%l\tenvoy %n %g:%#\t%v\tthread=%t";
const ISTIO_JSON_FORMAT: &str =
    r#"{"level":"%l","time":"%Y-%m-%dT%T.%fZ","scope":"envoy %n","msg":"%j","caller":"%g:%#","thread":%t}"#;

/// What the gateway sends: HTTP allowed, HTTP with a redirect, HTTP denied, TLS passthrough allowed and denied.
const EVENTS: usize = 5;

fn options() -> LabOptions {
    LabOptions {
        identity_json: Some(r#"{"onMissing": "anonymous", "tunnels": "allow"}"#.into()),
        redirects: true,
        audit_json: Some(r#"{"log": true, "headers": ["user-agent"]}"#.into()),
        ..LabOptions::new(POLICY)
    }
}

/// The traffic of every test: one event each (see [`EVENTS`]).
fn send_traffic(http: SocketAddr, tls: SocketAddr, ca_pem: &str) {
    assert_eq!(client::get(http, "httpbin.org", "/allowed").unwrap().status, 200);
    let redirect = client::get(http, "httpbin.org", "/redirect-to?url=http%3A%2F%2Feu.httpbin.org%2Fnext").unwrap();
    assert_eq!((redirect.status, redirect.header("location")), (302, Some("http://eu.httpbin.org/next")));
    let denied = client::request(http, "GET", "evil.example", "/denied", &[("user-agent", PLANTED)], b"").unwrap();
    assert_eq!(denied.status, 403);
    assert_eq!(client::tls_get(tls, Some("a.httpbin.org"), ca_pem, "a.httpbin.org", "/tls").unwrap().status, 200);
    assert!(client::tls_get(tls, Some("evil.example"), ca_pem, "evil.example", "/").is_err(), "closed at the SNI");
}

/// Reads `log` (re-read until every event is there: Envoy logs a connection's event when it closes) with the
/// library, as `egressctl audit` does without `--skip-invalid`.
fn read_until_complete(log: impl Fn() -> String) -> (Vec<AuditEvent>, Read, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = log();
        let mut events = Vec::new();
        let read = audit_log::read_events(text.as_bytes(), "envoy.log", false, |e| events.push(e.clone()))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        if events.len() >= EVENTS || Instant::now() > deadline {
            return (events, read, text);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The events of [`send_traffic`], field by field.
fn check_events(events: &[AuditEvent], read: &Read, log: &str) {
    assert_eq!(events.len(), EVENTS, "one event per request and per connection:\n{log}");
    assert_eq!((read.events, read.invalid_lines), (EVENTS, 0));
    assert!(read.other_lines > 0, "Envoy's own log output, not events");
    let find = |kind: EventKind, host: &str, path: Option<&str>| {
        events
            .iter()
            .find(|e| {
                e.kind == kind
                    && e.destination.host.as_deref() == Some(host)
                    && e.request.as_ref().map(|r| r.path.as_str()) == path
            })
            .unwrap_or_else(|| panic!("no {kind:?} event for {host} {path:?}: {events:#?}"))
    };
    let decision = |e: &AuditEvent| e.decision.as_ref().map(|d| (d.action.clone(), d.reason.clone()));
    let allow = Some(("allow".to_string(), "allowed".to_string()));
    let denied = Some(("deny".to_string(), "host_not_allowed".to_string()));

    let allowed = find(EventKind::Http, "httpbin.org", Some("/allowed"));
    assert_eq!((decision(allowed), allowed.response.code), (allow.clone(), Some(200)));
    let redirected = find(EventKind::Http, "httpbin.org", Some("/redirect-to"));
    assert_eq!((decision(redirected), redirected.response.code), (allow.clone(), Some(302)));
    let hops: Vec<(Option<&str>, &str)> =
        redirected.redirects.iter().map(|h| (h.location.as_deref(), h.action.as_str())).collect();
    assert_eq!(hops, [(Some("http://eu.httpbin.org/next"), "allow")]);
    let refused = find(EventKind::Http, "evil.example", Some("/denied"));
    assert_eq!((decision(refused), refused.response.code), (denied.clone(), Some(403)));
    assert_eq!(refused.request.as_ref().unwrap().headers.get("user-agent").map(String::as_str), Some(PLANTED));
    let tls = find(EventKind::Tls, "a.httpbin.org", None);
    assert_eq!((decision(tls), tls.destination.sni.as_deref()), (allow, Some("a.httpbin.org")));
    let tls_refused = find(EventKind::Tls, "evil.example", None);
    assert_eq!(decision(tls_refused), denied);
}

/// The lines holding an event, printed for the reader's fixtures.
fn event_lines(log: &str) -> Vec<&str> {
    let lines: Vec<&str> = log.lines().filter(|line| line.contains(MARKER)).collect();
    for line in &lines {
        eprintln!("captured: {line}");
    }
    assert_eq!(lines.len(), EVENTS, "one line per event, the marker once in each");
    for line in &lines {
        assert_eq!(line.matches(MARKER).count(), 1, "the planted marker is escaped: {line}");
    }
    lines
}

/// `wasm log <plugin> <root id>: egress-audit: ` for each audit plugin of the chain: what precedes every event in
/// Envoy's message.
fn message_prefixes(options: &LabOptions) -> Vec<String> {
    let chain = istio::chain(&options.manifests, &wasm_dir()).unwrap();
    let audits =
        chain.iter().filter(|p| p.root_id.starts_with("egress-audit") || p.root_id.starts_with("egress-suite"));
    audits.map(|p| format!("wasm log {} {}: egress-audit: ", p.name, p.root_id)).collect()
}

/// `egressctl audit <args> FILE`, as an operator runs it (`cargo run -p egressctl`, as the harness's own hints say):
/// exit code, stdout, stderr.
fn egressctl(args: &[&str], file: &Path) -> (i32, String, String) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(workspace_root())
        .args(["run", "-q", "-p", "egressctl", "--", "audit"])
        .args(args)
        .arg(file)
        .output()
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
}

/// The command's reports over the log file: the two denials (HTTP and TLS) and the one redirect.
fn check_egressctl(file: &Path) {
    let ignored = "egressctl: ignored ";
    let (code, out, err) = egressctl(&["top-denied"], file);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "\
COUNT  WORKLOAD   HOST          TOP REASON
    2  anonymous  evil.example  host_not_allowed
"
    );
    assert!(err.starts_with(ignored) && err.ends_with("without an audit event (other log output)\n"), "{err}");
    assert_eq!(err.lines().count(), 1, "nothing skipped as invalid: {err}");
    let (code, out, err) = egressctl(&["redirects"], file);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "\
TOTAL  ALLOW  DENY  REPORT-DENY  BOUNCE  LOCATION                    FIRST REASON
    1      1     0            0       0  http://eu.httpbin.org/next  allowed
"
    );
}

#[test]
fn envoy_log_lines_read_by_the_library_and_by_egressctl() {
    let options = options();
    let lab = Lab::start(&options).unwrap();
    send_traffic(lab.http(), lab.tls(), lab.pki.ca_pem());
    let (events, read, log) = read_until_complete(|| lab.envoy.log());
    check_events(&events, &read, &log);
    let prefixes = message_prefixes(&options);
    for line in event_lines(&log) {
        // `[2026-11-25 10:00:00.123][12][info][wasm] [source/extensions/common/wasm/context.cc:1192] wasm log …`
        let (before, _) = line.split_once(MARKER).unwrap();
        assert!(line.starts_with('[') && before.contains("][info][wasm] [source/extensions/common/wasm/"), "{line}");
        assert!(prefixes.iter().any(|p| before.ends_with(p.as_str())), "{line}: none of {prefixes:?}");
        assert!(line.ends_with('}'), "nothing after the event: {line}");
    }
    check_egressctl(&lab.envoy.dir().join("envoy.log"));
}

/// An Envoy started as Istio's pilot-agent starts it (`--log-format`), routing by DNS to its own upstreams.
struct IstioGateway {
    // Field order is drop order: Envoy stops before its upstreams.
    envoy: Envoy,
    _echo: Echo,
    _dns: Dns,
    pki: TestPki,
}

impl IstioGateway {
    fn start(options: &LabOptions, log_format: &str) -> IstioGateway {
        let pki = TestPki::new().unwrap();
        let (echo, dns) = start_upstreams(&pki, &options.zone).unwrap();
        let mut launcher = Launcher::find().unwrap();
        launcher.prefix_args.extend(["--log-format".to_string(), log_format.to_string()]);
        let resolver = lab_resolver(options, &echo, &dns, &launcher).unwrap();
        let bootstrap = gateway_bootstrap_resolved(options, &resolver).unwrap();
        let envoy = Envoy::start(&launcher, &bootstrap).unwrap();
        IstioGateway { envoy, _echo: echo, _dns: dns, pki }
    }

    fn run(&self) -> String {
        let (http, tls) = (self.envoy.listener(bootstrap::HTTP_LISTENER), self.envoy.listener(bootstrap::TLS_LISTENER));
        send_traffic(http, tls, self.pki.ca_pem());
        let (events, read, log) = read_until_complete(|| self.envoy.log());
        check_events(&events, &read, &log);
        check_egressctl(&self.envoy.dir().join("envoy.log"));
        log
    }
}

#[test]
fn istio_log_formats_read_the_same() {
    let options = options();
    let prefixes = message_prefixes(&options);

    let text = IstioGateway::start(&options, ISTIO_TEXT_FORMAT);
    let log = text.run();
    for line in event_lines(&log) {
        // `2026-11-25T10:00:00.123456Z\tinfo\tenvoy wasm …context.cc:1192\twasm log …: egress-audit: {json}\tthread=N`
        let (before, after) = line.split_once(MARKER).unwrap();
        assert!(before.contains("\tinfo\tenvoy wasm "), "{line}");
        assert!(prefixes.iter().any(|p| before.ends_with(p.as_str())), "{line}: none of {prefixes:?}");
        let thread = after.rsplit_once("}\tthread=").map(|(_, n)| n);
        assert!(thread.is_some_and(|n| n.parse::<u32>().is_ok()), "the thread follows the event: {line}");
    }
    drop(text);

    let json = IstioGateway::start(&options, ISTIO_JSON_FORMAT);
    let log = json.run();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(r#"{\"schema\":\"egress-audit/"#)).collect();
    for line in &lines {
        eprintln!("captured: {line}");
        // The whole message JSON-escaped in `msg`: no raw marker, so the reader goes through the JSON.
        assert!(!line.contains(MARKER), "{line}");
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        let msg = record["msg"].as_str().unwrap();
        assert!(prefixes.iter().any(|p| msg.starts_with(p.as_str())), "{line}: none of {prefixes:?}");
    }
    assert_eq!(lines.len(), EVENTS);
}
