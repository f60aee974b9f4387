//! The native audit path in a real Envoy: no audit stage, only Envoy's own access log built from the filter-state
//! records the suite publishes (`egressctl::access_log`, the line the rendered Istio providers write too). Allowed,
//! denied, redirected (followed and refused) requests and a TLS-passthrough connection each leave one line that
//! says what the gateway decided, for whom, and along which redirects; a request Envoy refused before any filter
//! ran leaves one too, without records.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use egress_harness::client::{self, Response};
use egress_harness::envoy::workspace_root;
use egress_harness::{Lab, LabOptions};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const POLICY: &str = r#"{
  "rules": [
    {"name": "httpbin", "hosts": ["httpbin.org", "*.httpbin.org"]},
    {"name": "sleep-only", "hosts": ["internal.example"], "principals": ["cluster.local/ns/app/sa/sleep"]}
  ],
  "deny": {"hosts": ["metadata.google.internal"]},
  "redirects": {"follow": true, "maxHops": 3}
}"#;
/// Anonymous callers pass without identity headers; tunnels are allowed so a TLS-passthrough connection is vetted
/// by the allow-list (and logged) rather than closed by the identity stage.
/// The fingerprint every decision record of `policy` carries.
fn fingerprint(policy: &str) -> String {
    egress_core::Policy::from_json(policy.as_bytes()).unwrap().fingerprint().to_string()
}

const IDENTITY: &str = r#"{"onMissing": "anonymous", "tunnels": "allow"}"#;
const SLEEP: &str = "spiffe://cluster.local/ns/app/sa/sleep";

/// The suite with a policy and an identity section only: no audit stage anywhere in the chain.
fn lab() -> Lab {
    let options = LabOptions { redirects: true, ..LabOptions::new(POLICY) }.with_identity(IDENTITY);
    assert_eq!(options.audit_json, None);
    Lab::start(&options).expect("start the gateway")
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn redirect_to(lab: &Lab, location: &str, status: u16) -> Response {
    let path = format!("/redirect-to?url={}&status_code={status}", url_encode(location));
    client::get(lab.http(), "httpbin.org", &path).unwrap()
}

/// The access log once it holds a final line for each of `wanted` (a substring of the logged path, of the SNI for
/// passthrough, or of Envoy's response code details), with the filter-state records parsed back from their JSON strings. Envoy also logs each hop
/// it followed, with `details: internal_redirect`; those are left out. Envoy flushes its access log on its own
/// schedule (every 10 s by default).
fn logged(lab: &Lab, wanted: &[&str]) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lines: Vec<Value> =
            lab.access_log().into_iter().filter(|l| l["details"] != "internal_redirect").map(parse_records).collect();
        let has = |part: &str| {
            let fields = |l: &Value| [l["path"].clone(), l["sni"].clone(), l["details"].clone()];
            lines.iter().any(|l| fields(l).iter().any(|v| v.as_str().is_some_and(|s| s.contains(part))))
        };
        if wanted.iter().all(|part| has(part)) {
            return lines;
        }
        assert!(Instant::now() < deadline, "no access log line for some of {wanted:?}: {lines:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn parse_records(mut line: Value) -> Value {
    for record in ["decision", "identity", "redirects"] {
        if let Some(parsed) = line[record].as_str().and_then(|text| serde_json::from_str::<Value>(text).ok()) {
            line[record] = parsed;
        }
    }
    line
}

/// The reason a line's request was refused and the host it was refused for: the decision's, or else the last
/// refused redirect hop's.
fn refusal(line: &Value) -> (&str, String) {
    let decision = &line["decision"];
    if decision["action"] == "deny" {
        let host = decision["destination"].as_str().and_then(|d| d.rsplit_once(':')).map(|(host, _)| host);
        return (decision["reason"].as_str().unwrap_or_default(), host.unwrap_or_default().to_string());
    }
    let hops = line["redirects"].as_array().map(Vec::as_slice).unwrap_or_default();
    let refused = hops.iter().rev().find(|hop| hop["action"] == "deny").unwrap_or_else(|| panic!("no refusal: {line}"));
    let location = refused["location"].as_str().unwrap_or_default();
    let host = location.split("://").nth(1).and_then(|rest| rest.split(['/', ':']).next()).unwrap_or_default();
    (refused["reason"].as_str().unwrap_or_default(), host.to_string())
}

fn line<'a>(lines: &'a [Value], path_part: &str) -> &'a Value {
    lines
        .iter()
        .rev()
        .find(|l| l["path"].as_str().is_some_and(|p| p.contains(path_part)))
        .unwrap_or_else(|| panic!("no line for {path_part}: {lines:#?}"))
}

#[test]
fn envoys_own_access_log_carries_decision_identity_and_redirects_without_the_audit_stage() {
    let lab = lab();
    let ca = lab.pki.ca_pem();
    let sleep = lab.client_cert(Some(SLEEP)).unwrap();

    let allowed = lab.mtls_get(&sleep, "internal.example", "/headers?scoped=1").unwrap();
    assert_eq!(allowed.status, 200, "{}", allowed.body_str());
    let denied = client::get(lab.http(), "example.com", "/headers?denied=1").unwrap();
    assert_eq!((denied.status, denied.header("x-egress-denied-reason")), (403, Some("host_not_allowed")));
    let followed = redirect_to(&lab, "http://eu.httpbin.org/headers?followed=1", 302);
    assert_eq!((followed.status, followed.json()["host"].as_str()), (200, Some("eu.httpbin.org")));
    // Envoy follows a 302 itself; the allow-list refuses the hop before it leaves.
    let hop_denied = redirect_to(&lab, "http://evil.example/hop-denied", 302);
    assert_eq!((hop_denied.status, hop_denied.header("x-egress-denied-reason")), (403, Some("host_not_allowed")));
    // Envoy hands a 300 to the filters: the redirects stage vets it and refuses it.
    let vetted = redirect_to(&lab, "http://evil.example/vetted-refused", 300);
    assert_eq!((vetted.status, vetted.header("location")), (403, None));
    let passthrough = client::tls_get(lab.tls(), Some("api.httpbin.org"), ca, "api.httpbin.org", "/headers").unwrap();
    assert_eq!(passthrough.json()["tls"]["sni"], "api.httpbin.org");
    // Refused by Envoy's codec before any filter ran (a backslash in Host): the audit stage never sees it, the access
    // log does.
    let request = b"GET /codec-refused HTTP/1.1\r\nHost: bad\\host\r\nConnection: close\r\n\r\n";
    assert_eq!(client::raw_http1(lab.http(), request).unwrap().status, 400);

    let wanted = [
        "scoped=1",
        "denied=1",
        "followed=1",
        "/hop-denied",
        "vetted-refused",
        "api.httpbin.org",
        "http.invalid_authority",
    ];
    let lines = logged(&lab, &wanted);

    // Allowed by an identity-scoped rule: the decision names the rule, the identity record the verified caller,
    // and Envoy's own view of the certificate agrees.
    let allowed = line(&lines, "scoped=1");
    assert_eq!(
        allowed["decision"],
        json!({"action": "allow", "reason": "allowed", "rule": "sleep-only",
               "destination": "internal.example:443", "mode": "enforce", "policy": fingerprint(POLICY)})
    );
    assert_eq!(allowed["identity"], json!({"source": "mtls", "id": SLEEP}));
    assert_eq!((allowed["source_principal"].as_str(), allowed["code"].as_u64()), (Some(SLEEP), Some(200)));
    assert_eq!(allowed["listener"], "egress_mtls");

    // Denied: the reason, and an anonymous caller.
    let denied = line(&lines, "denied=1");
    assert_eq!(
        denied["decision"],
        json!({"action": "deny", "reason": "host_not_allowed", "rule": null,
               "destination": "example.com:80", "mode": "enforce", "policy": fingerprint(POLICY)})
    );
    assert_eq!(denied["identity"], json!({"source": "none", "id": null}));
    assert_eq!((denied["code"].as_u64(), denied["authority"].as_str()), (Some(403), Some("example.com")));
    assert_eq!(denied["redirects"], Value::Null, "no redirect: the record is absent");

    // Followed at the gateway: one line for the whole request, with the hop it followed.
    let followed = line(&lines, "followed=1");
    assert_eq!(followed["code"].as_u64(), Some(200));
    assert_eq!(followed["decision"]["action"], "allow");
    let hops = followed["redirects"].as_array().unwrap_or_else(|| panic!("a redirect chain: {followed}"));
    assert_eq!(hops.len(), 1, "{hops:?}");
    assert_eq!(
        (hops[0]["location"].as_str(), hops[0]["action"].as_str(), hops[0]["followed"].as_bool()),
        (Some("http://eu.httpbin.org/headers"), Some("allow"), Some(true)),
        "the location without its query"
    );

    // A followed hop refused before it left: the hop's line (Envoy logged the first leg as `internal_redirect`)
    // carries the refusal, as the hop's decision or as the refused hop of the chain.
    let hop_denied = line(&lines, "/hop-denied");
    assert_eq!((hop_denied["code"].as_u64(), hop_denied["authority"].as_str()), (Some(403), Some("evil.example")));
    assert_eq!(refusal(hop_denied), ("host_not_allowed", "evil.example".to_string()), "{hop_denied}");

    // A redirect Envoy does not follow (300), refused by the redirects stage: its verdict in the chain, while the
    // request itself was allowed.
    let vetted = line(&lines, "vetted-refused");
    assert_eq!((vetted["code"].as_u64(), vetted["decision"]["action"].as_str()), (Some(403), Some("allow")));
    let hops = vetted["redirects"].as_array().unwrap_or_else(|| panic!("a redirect chain: {vetted}"));
    assert_eq!(hops.len(), 1, "{hops:?}");
    assert_eq!(
        (hops[0]["status"].as_u64(), hops[0]["location"].as_str(), hops[0]["action"].as_str()),
        (Some(300), Some("http://evil.example/vetted-refused"), Some("deny"))
    );
    assert_eq!(hops[0]["reason"], "host_not_allowed");
    assert_ne!(hops[0]["followed"], true, "handed back, not followed");

    // Refused before the filters: Envoy's reason, and no record from any stage.
    let codec = lines.iter().find(|l| l["details"] == "http.invalid_authority").unwrap();
    assert_eq!((codec["code"].as_u64(), codec["flags"].as_str()), (Some(400), Some("DPE")), "{codec}");
    assert_eq!((&codec["decision"], &codec["identity"]), (&Value::Null, &Value::Null), "{codec}");

    // TLS passthrough: the decision on the SNI, on the passthrough listener's line.
    let tls = lines.iter().find(|l| l["sni"] == "api.httpbin.org").unwrap();
    assert_eq!((tls["listener"].as_str(), tls["decision"]["rule"].as_str()), (Some("egress_tls"), Some("httpbin")));

    // Every line has every field of the one definition, and Envoy filled in what it knows.
    let mut fields: Vec<&str> = egressctl::access_log::fields().iter().map(|(name, _)| *name).collect();
    fields.push("listener");
    fields.sort_unstable();
    for line in &lines {
        let mut keys: Vec<&str> = line.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, fields, "{line}");
        assert!(line["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{line}");
        assert!(line["source_address"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{line}");
    }

    // And nothing came from an audit stage: no counters, no `egress-audit:` lines in Envoy's log.
    assert_eq!(lab.envoy.stat("wasmcustom.egress_audit_events"), None);
    assert!(!lab.envoy.log().contains("egress-audit:"), "the audit stage is off");
}

/// The Istio providers `egressctl render` writes carry exactly the lab's line: the same labels for the file access
/// log and for the OpenTelemetry one (whose labels become the log record's attributes).
#[test]
fn the_rendered_istio_providers_write_the_lines_this_test_reads() {
    let path = workspace_root().join("wasmplugin-manifests/telemetry/istio-operator.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let documents: Vec<Value> =
        serde_yaml_ng::Deserializer::from_str(&text).map(|d| Value::deserialize(d).unwrap()).collect();
    let providers = &documents[0]["spec"]["meshConfig"]["extensionProviders"];
    let expected: serde_json::Map<String, Value> =
        egressctl::access_log::fields().into_iter().map(|(name, operator)| (name.into(), operator.into())).collect();
    for (name, kind) in [
        (egressctl::access_log::FILE_PROVIDER, "envoyFileAccessLog"),
        (egressctl::access_log::OTEL_PROVIDER, "envoyOtelAls"),
    ] {
        let provider = providers.as_array().unwrap().iter().find(|p| p["name"] == name).unwrap();
        assert_eq!(provider[kind]["logFormat"]["labels"], Value::Object(expected.clone()), "{name}");
    }
}
