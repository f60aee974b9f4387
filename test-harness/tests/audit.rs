//! The audit filter in a real Envoy, last in the chain as Istio's STATS phase puts it: events in the collector on
//! loopback, field by field; no loss under a bounded load; Envoy unaffected while the collector is down or slow.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use egress_harness::collector::{Collector, Mode};
use egress_harness::load::{self, Plan};
use egress_harness::{bootstrap::AUDIT_COLLECTOR_CLUSTER, client, Lab, LabOptions};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

const POLICY: &str = r#"{
  "rules": [
    {"name": "httpbin", "hosts": ["httpbin.org", "*.httpbin.org"]},
    {"name": "sleep-only", "hosts": ["internal.example"], "principals": ["cluster.local/ns/app/sa/sleep"]}
  ],
  "redirects": {"follow": true, "maxHops": 3}
}"#;
const SLEEP: &str = "spiffe://cluster.local/ns/app/sa/sleep";

/// The audit configuration with the collector sink; `extra` adds fields (e.g. tighter queue bounds).
fn audit_config(extra: &str) -> String {
    format!(
        r#"{{"headers": ["user-agent"], "log": false, "collector": {{"cluster": "{AUDIT_COLLECTOR_CLUSTER}",
            "authority": "collector", "flushIntervalMs": 100 {extra}}}}}"#
    )
}

fn lab(policy: &str, collector: &Collector, audit: &str) -> Lab {
    let options = LabOptions {
        identity_json: Some(r#"{"onMissing": "anonymous", "tunnels": "allow"}"#.into()),
        redirects: true,
        audit_json: Some(audit.into()),
        collector: Some(collector.addr()),
        ..LabOptions::new(policy)
    };
    Lab::start(&options).expect("start the gateway")
}

/// Events by request path (the path is unique per request in these tests).
fn by_path(events: &[Value]) -> HashMap<String, Value> {
    events.iter().filter_map(|e| Some((e["request"]["path"].as_str()?.to_string(), e.clone()))).collect()
}

#[test]
fn events_describe_each_request_and_redact_what_they_must() {
    let collector = Collector::start().unwrap();
    let lab = lab(POLICY, &collector, &audit_config(""));
    let secret_headers = [("user-agent", "audit-test"), ("authorization", "Bearer secret-token")];
    client::request(lab.http(), "GET", "httpbin.org", "/allowed?token=secret-query", &secret_headers, b"").unwrap();
    client::get(lab.http(), "evil.example", "/denied").unwrap();
    client::get(lab.http(), "httpbin.org", "/redirect-to?url=http%3A%2F%2Feu.httpbin.org%2Fredirected").unwrap();
    let sleep = lab.client_cert(Some(SLEEP)).unwrap();
    lab.mtls_get(&sleep, "internal.example", "/identity").unwrap();
    let _ = client::tls_get(lab.tls(), Some("a.httpbin.org"), lab.pki.ca_pem(), "a.httpbin.org", "/");
    let events = collector.wait_for_events(5, Duration::from_secs(15));
    assert_eq!(events.len(), 5, "one event per request and per connection: {events:#?}");
    for event in &events {
        assert_eq!(event["schema"], "egress-audit/v1");
        assert!(event["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(event["gateway"]["node"], "egress-lab");
    }
    let paths = by_path(&events);

    let allowed = &paths["/allowed"];
    assert_eq!(allowed["kind"], "http");
    assert_eq!(
        allowed["decision"],
        json!({"action": "allow", "reason": "allowed", "rule": "httpbin", "mode": "enforce"})
    );
    assert_eq!(
        (allowed["destination"]["host"].as_str(), allowed["destination"]["port"].as_u64()),
        (Some("httpbin.org"), Some(80))
    );
    assert_eq!(
        (allowed["response"]["code"].as_u64(), allowed["response"]["details"].as_str()),
        (Some(200), Some("via_upstream"))
    );
    assert_eq!(allowed["request"]["headers"], json!({"user-agent": "audit-test"}), "only the configured headers");
    assert_eq!(allowed["upstream"]["cluster"], "echo_http");
    assert!(allowed["id"].as_str().unwrap().len() >= 32, "Envoy's x-request-id");
    let text = Value::Array(events.clone()).to_string();
    assert!(!text.contains("secret"), "no query, no unlisted header: {text}");

    let denied = &paths["/denied"];
    assert_eq!(
        (denied["decision"]["action"].as_str(), denied["decision"]["reason"].as_str()),
        (Some("deny"), Some("host_not_allowed"))
    );
    assert_eq!(
        (denied["response"]["code"].as_u64(), denied["destination"]["host"].as_str()),
        (Some(403), Some("evil.example"))
    );

    let redirected = &paths["/redirected"];
    assert_eq!(redirected["destination"]["host"], "eu.httpbin.org", "the final hop's event carries the chain");
    assert_eq!(redirected["redirects"][0]["location"], "http://eu.httpbin.org/redirected");
    assert_eq!(redirected["redirects"][0]["followed"], true);

    let identity = &paths["/identity"];
    assert_eq!(identity["source"]["principal"], SLEEP);
    assert_eq!(
        (identity["source"]["namespace"].as_str(), identity["source"]["verified"].as_bool()),
        (Some("app"), Some(true))
    );
    assert_eq!(identity["source"]["identitySource"], "mtls");
    assert_eq!(identity["decision"]["rule"], "sleep-only");
    assert_eq!(allowed["source"]["verified"], false);

    let tls = events.iter().find(|e| e["kind"] == "tls").unwrap();
    assert_eq!(
        (tls["destination"]["sni"].as_str(), tls["decision"]["action"].as_str()),
        (Some("a.httpbin.org"), Some("allow"))
    );
    assert!(tls.get("request").is_none(), "TLS passthrough has no HTTP request");
    assert_eq!(tls["tunnel"], true, "nothing inside a passthrough connection was tagged");
    assert_eq!(allowed["tunnel"], false);
}

#[test]
fn report_mode_events_say_what_would_have_been_denied() {
    let collector = Collector::start().unwrap();
    let report = r#"{"mode": "report", "rules": [{"name": "httpbin", "hosts": ["httpbin.org"]}]}"#;
    let gateway = lab(report, &collector, &audit_config(""));
    assert_eq!(client::get(gateway.http(), "evil.example", "/would-deny").unwrap().status, 200);
    let events = collector.wait_for_events(1, Duration::from_secs(10));
    assert_eq!(
        events[0]["decision"],
        json!({"action": "report-deny", "reason": "host_not_allowed", "rule": null, "mode": "report"})
    );
    let with_query = Collector::start().unwrap();
    let gateway =
        lab(report, &with_query, &audit_config("").replace(r#""headers""#, r#""includeQuery": true, "headers""#));
    client::get(gateway.http(), "httpbin.org", "/q?page=2").unwrap();
    assert_eq!(
        with_query.wait_for_events(1, Duration::from_secs(10))[0]["request"]["query"],
        "page=2",
        "only when allowed"
    );
}

fn load_plan(total: usize) -> Plan {
    Plan {
        host: "httpbin.org".into(),
        total,
        concurrency: 32,
        path: |n| format!("/anything/load-{n}"),
        deadline: Duration::from_secs(240),
    }
}

#[test]
fn no_event_is_lost_under_load() {
    const REQUESTS: usize = 20_000;
    let collector = Collector::start().unwrap();
    let lab = lab(POLICY, &collector, &audit_config(""));
    let report = load::run(lab.http(), &load_plan(REQUESTS)).unwrap();
    assert_eq!((report.sent, report.ok(), report.errors), (REQUESTS, REQUESTS, 0), "{:?}", report.statuses);
    let events = collector.wait_for_events(REQUESTS, Duration::from_secs(60));
    let mut seen: HashMap<String, usize> = HashMap::new();
    for event in &events {
        *seen.entry(event["request"]["path"].as_str().unwrap_or("").to_string()).or_default() += 1;
    }
    let missing: Vec<usize> = (0..REQUESTS).filter(|n| seen.get(&format!("/anything/load-{n}")) != Some(&1)).collect();
    assert!(
        missing.is_empty(),
        "{} requests without exactly one event, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(events.len(), REQUESTS, "no duplicates");
    assert_eq!(lab.envoy.stat("wasmcustom.egress_audit_events_dropped"), Some(0));
    assert_eq!(lab.envoy.stat("wasmcustom.egress_audit_events"), Some(REQUESTS as u64));
    drop(lab);
    // The same load through the same chain without the audit filter, for the side-by-side figure (reported, never
    // asserted: tests do not time things).
    let options = LabOptions {
        identity_json: Some(r#"{"onMissing": "anonymous", "tunnels": "allow"}"#.into()),
        redirects: true,
        ..LabOptions::new(POLICY)
    };
    let without = Lab::start(&options).unwrap();
    let baseline = load::run(without.http(), &load_plan(REQUESTS)).unwrap();
    assert_eq!(baseline.ok(), REQUESTS);
    eprintln!(
        "audit load: {REQUESTS} requests at concurrency 32: with audit {:.0} req/s (p50 {:?}, p99 {:?}), without {:.0} req/s \
         (p50 {:?}, p99 {:?}), ratio {:.2}; {} events received in {} batches, dropped 0",
        report.throughput(),
        report.percentile(50.0),
        report.percentile(99.0),
        baseline.throughput(),
        baseline.percentile(50.0),
        baseline.percentile(99.0),
        report.throughput() / baseline.throughput(),
        events.len(),
        collector.batches()
    );
}

#[test]
fn a_collector_that_is_down_or_slow_never_holds_up_traffic_and_shipping_resumes() {
    const QUEUE: usize = 1000;
    const REQUESTS: usize = 3000;
    let collector = Collector::start().unwrap();
    let audit = audit_config(&format!(r#", "queueMaxEvents": {QUEUE}, "batchMaxEvents": 200, "timeoutMs": 300"#));
    let lab = lab(POLICY, &collector, &audit);

    collector.set_mode(Mode::Down);
    let while_down = load::run(lab.http(), &load_plan(REQUESTS)).unwrap();
    assert_eq!(while_down.ok(), REQUESTS, "traffic is served while the collector is down");
    let depth = lab.envoy.stat("wasmcustom.egress_audit_queue_depth").unwrap();
    assert!(depth <= QUEUE as u64, "memory stays bounded: queue depth {depth}");
    let dropped = lab.envoy.stat("wasmcustom.egress_audit_events_dropped").unwrap();
    assert!(dropped >= (REQUESTS - QUEUE) as u64, "drops are counted: {dropped}");
    assert!(lab.envoy.stat("wasmcustom.egress_audit_batch_failures").unwrap() > 0);

    collector.set_mode(Mode::Up);
    let delivered = collector.wait_for_events(REQUESTS - dropped as usize, Duration::from_secs(30));
    assert_eq!(delivered.len() as u64, REQUESTS as u64 - dropped, "everything kept is delivered once back up");
    assert_eq!(lab.envoy.stat("wasmcustom.egress_audit_queue_depth"), Some(0));

    collector.set_mode(Mode::Slow(Duration::from_secs(2)));
    let while_slow = load::run(lab.http(), &Plan { total: 500, ..load_plan(500) }).unwrap();
    assert_eq!(while_slow.ok(), 500, "traffic is served while the collector is slow");
    eprintln!(
        "audit collector down: {REQUESTS} requests p50 {:?} p99 {:?}, dropped {dropped}; slow: p50 {:?} p99 {:?}",
        while_down.percentile(50.0),
        while_down.percentile(99.0),
        while_slow.percentile(50.0),
        while_slow.percentile(99.0)
    );
}
