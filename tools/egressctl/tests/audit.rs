//! `egressctl audit …` on an NDJSON fixture mixing plain events, Envoy log lines and blank lines. (The reader itself,
//! on lines captured from real Envoys, is tested in `src/audit_log.rs` and `test-harness/tests/audit_log_readers.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use egress_core::audit::{
    AuditEvent, Decision, Destination, EventKind, Gateway, RedirectHop, Request, Response, Source, Upstream, SCHEMA,
};
use egress_core::{Policy, PolicyDocument};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const SLEEP: &str = "spiffe://cluster.local/ns/app/sa/sleep";
const CURL: &str = "spiffe://cluster.local/ns/app/sa/curl";

fn event(action: &str, reason: &str, principal: Option<&str>, host: &str, port: u16, method: &str) -> AuditEvent {
    AuditEvent {
        schema: SCHEMA.into(),
        time: "2026-11-21T11:49:02.007Z".into(),
        id: format!("{host}-{method}"),
        kind: EventKind::Http,
        tunnel: method == "CONNECT",
        gateway: Gateway { node: Some("egress-gateway-0".into()) },
        source: Source {
            principal: principal.map(str::to_string),
            verified: principal.is_some(),
            identity_source: Some(if principal.is_some() { "mtls" } else { "none" }.into()),
            ..Source::default()
        },
        destination: Destination {
            host: Some(host.into()),
            port: Some(port),
            scheme: Some(if port == 80 { "http" } else { "https" }.into()),
            sni: None,
        },
        request: Some(Request { method: method.into(), path: "/v1".into(), ..Request::default() }),
        decision: Some(Decision {
            action: action.into(),
            reason: reason.into(),
            rule: None,
            mode: Some(if action == "report-deny" { "report" } else { "enforce" }.into()),
            policy: None,
            detail: None,
        }),
        redirects: Vec::new(),
        response: Response { code: Some(if action == "deny" { 403 } else { 200 }), ..Response::default() },
        duration_ms: Some(3),
        upstream: Upstream::default(),
    }
}

fn with_redirects(mut event: AuditEvent, hops: &[(&str, &str, &str)]) -> AuditEvent {
    event.redirects = hops
        .iter()
        .map(|(location, action, reason)| RedirectHop {
            status: Some(302),
            location: Some(location.to_string()),
            action: action.to_string(),
            reason: reason.to_string(),
            followed: false,
        })
        .collect();
    event
}

/// A line as the filters log it through Envoy.
fn log_line(event: &AuditEvent) -> String {
    let json = serde_json::to_string(event).unwrap();
    format!("[2026-11-21 11:49:02.007][31][info][wasm] [source/extensions/common/wasm/context.cc:1195] wasm log egress_audit: egress-audit: {json}")
}

fn fixture() -> String {
    let plain = |e: &AuditEvent| serde_json::to_string(e).unwrap();
    let lines = [
        plain(&event("deny", "host_not_allowed", Some(SLEEP), "api.example.com", 443, "GET")),
        log_line(&event("deny", "host_not_allowed", Some(SLEEP), "api.example.com", 443, "POST")),
        String::new(),
        log_line(&event("deny", "host_not_allowed", None, "evil.example.net", 443, "GET")),
        plain(&event("deny", "port_not_allowed", Some(SLEEP), "api.example.com", 8443, "GET")),
        log_line(&event("report-deny", "host_not_allowed", Some(CURL), "x.cdn.example.com", 443, "GET")),
        plain(&event("report-deny", "host_not_allowed", Some(CURL), "y.cdn.example.com", 443, "HEAD")),
        "   ".into(),
        plain(&event("report-deny", "method_not_allowed", None, "api.example.com", 80, "PUT")),
        plain(&event("deny", "deny_listed", Some(SLEEP), "metadata.google.internal", 80, "GET")),
        log_line(&with_redirects(
            event("allow", "allowed", Some(SLEEP), "docs.example.com", 443, "GET"),
            &[
                ("https://login.example.com/sso", "deny", "host_not_allowed"),
                ("http://docs.example.com/", "bounce", "downgrade"),
            ],
        )),
        plain(&with_redirects(
            event("allow", "allowed", Some(CURL), "docs.example.com", 443, "GET"),
            &[("https://login.example.com/sso", "report-deny", "host_not_allowed")],
        )),
        plain(&with_redirects(
            event("allow", "allowed", None, "docs.example.com", 443, "GET"),
            &[("https://docs.example.com/v2", "allow", "allowed")],
        )),
    ];
    lines.join("\n") + "\n"
}

/// The fixture (or `text`) in its own temp file, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("egressctl-audit-{}-{name}.ndjson", std::process::id()));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `egressctl audit <args>`, feeding `stdin`; returns the exit code, stdout and stderr.
fn audit(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_egressctl"))
        .arg("audit")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The command may exit before reading (usage errors): a broken pipe here is fine.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let output = child.wait_with_output().unwrap();
    let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).unwrap();
    (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
}

#[test]
fn top_denied_counts_denials_by_workload_and_host() {
    let file = TempFile::new("top-denied", &fixture());
    let (code, out, err) = audit(&["top-denied", file.path()], "");
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(
        out,
        "\
COUNT  WORKLOAD                                HOST                      TOP REASON
    3  spiffe://cluster.local/ns/app/sa/sleep  api.example.com           host_not_allowed (2 of 3)
    1  anonymous                               evil.example.net          host_not_allowed
    1  spiffe://cluster.local/ns/app/sa/sleep  metadata.google.internal  deny_listed
"
    );
    // stdin, `-` or absent; --limit cuts the table and says so.
    let (code, out, _) = audit(&["top-denied", "-", "--limit", "1"], &fixture());
    assert_eq!(code, 0);
    assert!(out.ends_with("host_not_allowed (2 of 3)\n… 2 more rows (--limit 0 shows all)\n"), "{out}");
    let (code, same, _) = audit(&["top-denied", "--limit", "1"], &fixture());
    assert_eq!((code, same), (0, out));
    let (code, _, err) = audit(&["top-denied", "--limit", "many"], "");
    assert!(code == 2 && err.starts_with("error: invalid value 'many' for '--limit <N>'"), "{err}");
    let (code, out, _) = audit(&["top-denied"], "");
    assert_eq!((code, out.as_str()), (0, "no denied requests\n"));
}

#[test]
fn redirects_list_every_target_with_counts_per_action() {
    let file = TempFile::new("redirects", &fixture());
    let (code, out, err) = audit(&["redirects", file.path()], "");
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(
        out,
        "\
TOTAL  ALLOW  DENY  REPORT-DENY  BOUNCE  LOCATION                       FIRST REASON
    2      0     1            1       0  https://login.example.com/sso  host_not_allowed
    1      0     0            0       1  http://docs.example.com/       downgrade
    1      1     0            0       0  https://docs.example.com/v2    allowed
"
    );
}

#[test]
fn would_deny_summarises_report_mode_findings() {
    let file = TempFile::new("would-deny", &fixture());
    let (code, out, err) = audit(&["would-deny", file.path()], "");
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(
        out,
        "\
COUNT  HOST               REASON
    1  api.example.com    method_not_allowed
    1  x.cdn.example.com  host_not_allowed
    1  y.cdn.example.com  host_not_allowed

3 requests would have been denied (3 distinct hosts)
"
    );
}

#[test]
fn suggest_prints_a_rule_that_compiles_and_covers_the_hosts() {
    let file = TempFile::new("suggest", &fixture());
    let args = ["suggest", file.path(), "--allow", "api.example.com", "--allow", "*.cdn.example.com"];
    let (code, out, err) = audit(&[&args[..], &["--allow", "metadata.google.internal"]].concat(), "");
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(
        out,
        r#"# covers 6 events (3 deny, 3 report-deny)
# not covered: deny_listed: 1, which no rule changes
# any principals (anonymous or unverified callers)
rules:
  - name: "allow-api.example.com"
    hosts: ["api.example.com", "*.cdn.example.com", "metadata.google.internal"]
    ports: [80, 443, 8443]
    methods: ["GET", "HEAD", "POST", "PUT"]
"#
    );
    let doc: PolicyDocument = serde_yaml_ng::from_str(&out).unwrap();
    Policy::compile(&doc).unwrap();

    // Only identified callers: principals in Istio's form (no `spiffe://`).
    let (code, out, _) = audit(&["suggest", file.path(), "--allow", "*.cdn.example.com", "--name", "cdn"], "");
    assert_eq!(code, 0, "{out}");
    let doc: PolicyDocument = serde_yaml_ng::from_str(&out).unwrap();
    let rule = &doc.rules[0];
    assert_eq!((rule.name.as_str(), rule.hosts.clone().unwrap()), ("cdn", vec!["*.cdn.example.com".to_string()]));
    assert_eq!(rule.principals, Some(vec!["cluster.local/ns/app/sa/curl".to_string()]));
    assert_eq!((rule.ports.clone(), rule.methods.clone()), (Some(vec![443]), Some(vec!["GET".into(), "HEAD".into()])));
    assert!(out.starts_with("# covers 2 events (0 deny, 2 report-deny)\n"), "{out}");

    let (code, out, err) = audit(&["suggest", file.path(), "--allow", "nothing.example.org"], "");
    assert_eq!((code, out.as_str(), err.trim()), (1, "", "no deny or report-deny events for nothing.example.org"));
    let (code, _, err) = audit(&["suggest", file.path()], "");
    assert!(code == 2 && err.contains("required arguments were not provided:\n  --allow <HOST>"), "{err}");
    let (code, _, err) = audit(&["suggest", file.path(), "--allow", "api.*"], "");
    assert_eq!((code, err.trim()), (2, "egressctl: --allow api.*: `api.*`: the last label cannot be a wildcard"));
}

#[test]
fn other_log_output_is_ignored_and_counted() {
    let other = [
        "[2026-11-21 11:49:03.000][31][info][main] [source/server/server.cc:1007] starting workers",
        "[2026-11-21 11:49:03.001][31][info][wasm] [source/extensions/common/wasm/context.cc:1149] wasm log \
         egress-audit: egress-audit: configured egress-audit; audit log true, collector None",
    ];
    let text = format!("{}\n{}{}\n", other[0], fixture(), other[1]);
    let file = TempFile::new("other", &text);
    let (code, out, err) = audit(&["would-deny", file.path()], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("3 requests would have been denied (3 distinct hosts)\n"), "{out}");
    let want = format!("egressctl: ignored 2 lines of {} without an audit event (other log output)", file.path());
    assert_eq!(err.trim(), want);
}

#[test]
fn invalid_lines_are_errors_unless_skipped() {
    let truncated = &log_line(&event("deny", "host_not_allowed", None, "cut.example", 443, "GET"))[..250];
    let text = fixture() + truncated + "\n";
    let file = TempFile::new("invalid", &text);
    let line = text.lines().count();
    for command in ["top-denied", "redirects", "would-deny"] {
        let (code, out, err) = audit(&[command, file.path()], "");
        assert_eq!((code, out.as_str()), (3, ""), "{command}");
        let want = format!("egressctl: {}:{line}: not an audit event: EOF while parsing", file.path());
        assert!(
            err.starts_with(&want) && err.trim_end().ends_with("(--skip-invalid skips such lines)"),
            "{command}: {err}"
        );
    }
    let (code, out, err) = audit(&["would-deny", "--skip-invalid", file.path()], "");
    assert_eq!(code, 0);
    assert!(out.ends_with("3 requests would have been denied (3 distinct hosts)\n"), "{out}");
    assert_eq!(err.trim(), format!("egressctl: skipped 1 invalid line of {} (first: line {line})", file.path()));
    let (code, _, err) = audit(&["redirects", "-"], "{\"schema\": \"egress-audit/v1\"}\n");
    assert!(code == 3 && err.starts_with("egressctl: stdin:1: not an audit event: missing field"), "{err}");
    let (code, _, err) = audit(&["redirects", "/nonexistent/events.ndjson"], "");
    assert!(code == 3 && err.starts_with("egressctl: /nonexistent/events.ndjson: "), "{err}");
    let (code, _, err) = audit(&["frobnicate"], "");
    assert!(code == 2 && err.starts_with("error: unrecognized subcommand 'frobnicate'"), "{err}");
}

#[test]
fn schema_is_valid_json_describing_the_event() {
    let (code, out, _) = audit(&["schema"], "");
    assert_eq!(code, 0);
    let schema: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(schema["title"], "AuditEvent");
    let properties = schema["properties"].as_object().unwrap();
    let event = serde_json::to_value(event("deny", "host_not_allowed", None, "a.com", 443, "GET")).unwrap();
    for field in event.as_object().unwrap().keys() {
        assert!(properties.contains_key(field), "{field} is not in the schema");
    }
}

#[test]
fn committed_schema_matches_the_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../filters/core/schemas/egress-audit-v1.schema.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let (code, generated, err) = audit(&["schema"], "");
    assert_eq!(code, 0, "{err}");
    assert!(
        generated == committed,
        "{} differs from the schema generated from egress_core::audit::AuditEvent; regenerate it with\n  \
         cargo run -q -p egressctl -- audit schema > filters/core/schemas/egress-audit-v1.schema.json",
        path.display()
    );
}
