//! The audit filter in a real Envoy, last in the chain as Istio's STATS phase puts it: events in the collector on
//! loopback, field by field; one event per followed redirect chain; no loss under a bounded load through a real
//! OpenTelemetry collector (rotel), in both OTLP encodings; the OTLP delivery rules for every answer a collector can
//! give (refused, throttled, partially accepted, slow, down), with Envoy's traffic unaffected throughout.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use egress_harness::bootstrap::{self, AUDIT_COLLECTOR_CLUSTER};
use egress_harness::collector::{Collector, Mode};
use egress_harness::load::{self, Plan};
use egress_harness::rotel::Rotel;
use egress_harness::{client, Lab, LabOptions};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
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
    audit_config_flushing(100, extra)
}

/// The audit configuration of these tests, a partial batch sent `flush_ms` after its first event.
fn audit_config_flushing(flush_ms: u32, extra: &str) -> String {
    format!(
        r#"{{"headers": ["user-agent"], "log": false, "collector": {{"cluster": "{AUDIT_COLLECTOR_CLUSTER}",
            "authority": "collector", "flushIntervalMs": {flush_ms} {extra}}}}}"#
    )
}

fn lab(policy: &str, collector: &Collector, audit: &str) -> Lab {
    lab_with(policy, collector.addr(), audit)
}

/// A gateway whose audit collector cluster points at `collector`.
fn lab_with(policy: &str, collector: SocketAddr, audit: &str) -> Lab {
    let options = LabOptions {
        identity_json: Some(r#"{"onMissing": "anonymous", "tunnels": "allow"}"#.into()),
        redirects: true,
        audit_json: Some(audit.into()),
        collector: Some(collector),
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
        json!({"action": "allow", "reason": "allowed", "rule": "httpbin", "mode": "enforce",
               "policy": egress_core::Policy::from_json(POLICY.as_bytes()).unwrap().fingerprint().to_string()})
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
    assert_eq!(allowed["upstream"]["cluster"], bootstrap::DFP_CLUSTER, "routed by DNS");
    let origin = lab.upstream(egress_harness::ORIGIN_HOST).unwrap();
    assert_eq!(allowed["upstream"]["address"], format!("{origin}:80"), "to where httpbin.org resolves");
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

    let redirected = &paths["/redirect-to"];
    assert_eq!(redirected["destination"]["host"], "httpbin.org", "a followed chain is the client's request");
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
    assert_eq!(tls["destination"]["port"], 443, "the port clients dial, where the lab's passthrough listener is");
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
        json!({"action": "report-deny", "reason": "host_not_allowed", "rule": null, "mode": "report",
               "policy": egress_core::Policy::from_json(report.as_bytes()).unwrap().fingerprint().to_string()})
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

/// A policy whose redirects are followed, with a deny list for the cloud metadata range.
const FOLLOWING: &str = r#"{
  "rules": [
    {"name": "httpbin", "hosts": ["httpbin.org", "*.httpbin.org"]},
    {"name": "manual", "hosts": ["manual.example"], "redirects": {"follow": false}}
  ],
  "deny": {"cidrs": ["169.254.0.0/16"]},
  "redirects": {"follow": true, "maxHops": 3}
}"#;

/// The event of the request whose query is `query` (these tests record queries to tell requests apart).
fn by_query<'a>(events: &'a [Value], query: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["request"]["query"] == query)
        .unwrap_or_else(|| panic!("no event for {query}: {events:#?}"))
}

fn encoded(url: &str) -> String {
    url.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// `GET httpbin.org/redirect-to?url=<location>&n=<n>`: the echo upstream answers 302 to `location`.
fn redirect_through(lab: &Lab, location: &str, n: usize) -> u16 {
    let path = format!("/redirect-to?url={}&n={n}", encoded(location));
    client::get(lab.http(), "httpbin.org", &path).unwrap().status
}

#[test]
fn a_followed_chain_is_one_event_for_the_clients_request_with_every_hop_refused_ones_included() {
    let collector = Collector::start().unwrap();
    let audit = audit_config("").replace(r#""headers""#, r#""includeQuery": true, "headers""#);
    let lab = lab(FOLLOWING, &collector, &audit);
    assert_eq!(redirect_through(&lab, "http://eu.httpbin.org/final", 1), 200);
    assert_eq!(redirect_through(&lab, "http://169.254.169.254/latest/meta-data/", 2), 403);
    assert_eq!(redirect_through(&lab, "http://evil.example/steal", 3), 403);
    assert_eq!(redirect_through(&lab, "ftp://eu.httpbin.org/file", 4), 403);
    assert_eq!(redirect_through(&lab, "http://manual.example/download", 5), 302);
    let two_hops = client::get(lab.http(), "a.httpbin.org", "/absolute-redirect/2?n=6").unwrap();
    assert_eq!(two_hops.status, 200);
    let events = collector.wait_for_events(6, Duration::from_secs(15));
    assert_eq!(events.len(), 6, "one event per client request, not per hop: {events:#?}");
    let query = |location: &str, n: usize| format!("url={}&n={n}", encoded(location));

    for event in &events {
        if event["request"]["query"] == "n=6" {
            continue;
        }
        assert_eq!(
            (event["destination"]["host"].as_str(), event["request"]["path"].as_str()),
            (Some("httpbin.org"), Some("/redirect-to")),
            "the client's request, whichever hop ended it: {event:#}"
        );
        assert_eq!(event["decision"]["action"], "allow", "the client's request was allowed: {event:#}");
        assert_eq!(event["redirects"].as_array().map(Vec::len), Some(1), "{event:#}");
    }
    let hop = |location: &str, n: usize| by_query(&events, &query(location, n))["redirects"][0].clone();
    assert_eq!(
        hop("http://eu.httpbin.org/final", 1),
        json!({"status": null, "location": "http://eu.httpbin.org/final", "action": "allow", "reason": "allowed", "followed": true})
    );
    let metadata = by_query(&events, &query("http://169.254.169.254/latest/meta-data/", 2));
    assert_eq!(
        metadata["redirects"][0],
        json!({"status": null, "location": "http://169.254.169.254/latest/meta-data/", "action": "deny", "reason": "deny_listed", "followed": false})
    );
    assert_eq!(metadata["response"]["code"], 403);
    let evil = hop("http://evil.example/steal", 3);
    assert_eq!(
        (evil["action"].as_str(), evil["reason"].as_str(), evil["followed"].as_bool()),
        (Some("deny"), Some("host_not_allowed"), Some(false))
    );
    let ftp = hop("ftp://eu.httpbin.org/file", 4);
    assert_eq!(
        (ftp["action"].as_str(), ftp["reason"].as_str(), ftp["followed"].as_bool()),
        (Some("deny"), Some("non_http_scheme"), Some(false)),
        "{ftp}"
    );
    let bounced = hop("http://manual.example/download", 5);
    assert_eq!((bounced["action"].as_str(), bounced["followed"].as_bool()), (Some("bounce"), Some(false)));

    let two = by_query(&events, "n=6");
    assert_eq!(
        (two["destination"]["host"].as_str(), two["request"]["path"].as_str()),
        (Some("a.httpbin.org"), Some("/absolute-redirect/2"))
    );
    let locations: Vec<&str> =
        two["redirects"].as_array().unwrap().iter().map(|h| h["location"].as_str().unwrap()).collect();
    assert_eq!(locations, ["http://a.httpbin.org/absolute-redirect/1", "http://a.httpbin.org/absolute-redirect/0"]);

    let upstream: Vec<String> = lab.echo.requests().iter().map(|r| r["host"].as_str().unwrap().to_string()).collect();
    assert!(
        !upstream.iter().any(|h| h.contains("169.254") || h.contains("evil")),
        "no refused hop was sent: {upstream:?}"
    );
    assert!(lab.envoy.stat("wasmcustom.egress_redirects_denied") >= Some(2), "refused followed hops are counted");
    assert_eq!(lab.envoy.stat("wasmcustom.egress_redirects_bounced"), Some(1));
}

#[test]
fn report_mode_follows_what_it_would_refuse_and_says_so() {
    let collector = Collector::start().unwrap();
    let report = FOLLOWING.replacen('{', r#"{"mode": "report","#, 1);
    let audit = audit_config("").replace(r#""headers""#, r#""includeQuery": true, "headers""#);
    let lab = lab(&report, &collector, &audit);
    assert_eq!(redirect_through(&lab, "http://evil.example/steal", 1), 200, "report mode refuses nothing");
    let events = collector.wait_for_events(1, Duration::from_secs(10));
    let event = by_query(&events, &format!("url={}&n=1", encoded("http://evil.example/steal")));
    assert_eq!(event["destination"]["host"], "httpbin.org");
    assert_eq!(
        (event["redirects"][0]["action"].as_str(), event["redirects"][0]["followed"].as_bool()),
        (Some("report-deny"), Some(true)),
        "{event:#}"
    );
    assert_eq!(lab.envoy.stat("wasmcustom.egress_redirects_would_deny"), Some(1));
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

/// The two OTLP encodings the collector sink speaks (with gzip on one of them).
const ENCODINGS: [&str; 2] = ["otlp-protobuf", "otlp-json"];

fn encoding_config(format: &str) -> String {
    let compression = if format == "otlp-json" { "gzip" } else { "none" };
    format!(r#", "format": "{format}", "compression": "{compression}""#)
}

#[test]
fn no_event_is_lost_under_load_through_a_real_otlp_collector() {
    const REQUESTS: usize = 20_000;
    for format in ENCODINGS {
        // The gateway ships to rotel (a real OpenTelemetry collector), which forwards what it accepted to the
        // harness collector, where the records are counted.
        let collector = Collector::start().unwrap();
        let rotel = Rotel::start(collector.addr()).unwrap();
        let lab = lab_with(POLICY, rotel.addr(), &audit_config(&encoding_config(format)));
        let report = load::run(lab.http(), &load_plan(REQUESTS)).unwrap();
        assert_eq!((report.sent, report.ok(), report.errors), (REQUESTS, REQUESTS, 0), "{:?}", report.statuses);
        let records = collector.wait_for_records(REQUESTS, Duration::from_secs(60));
        let mut paths: HashMap<String, usize> = HashMap::new();
        let mut ids = HashSet::new();
        for record in &records {
            let event = &record.body;
            *paths.entry(event["request"]["path"].as_str().unwrap_or("").to_string()).or_default() += 1;
            let id = event["id"].as_str().unwrap_or_default();
            assert_eq!(record.attributes["log.record.uid"], id, "{format}: the record names its event");
            assert!(ids.insert(id.to_string()), "{format}: event id {id} twice");
        }
        let missing: Vec<usize> =
            (0..REQUESTS).filter(|n| paths.get(&format!("/anything/load-{n}")) != Some(&1)).collect();
        assert!(
            missing.is_empty(),
            "{format}: {} requests without exactly one record, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        assert_eq!(records.len(), REQUESTS, "{format}: no duplicates");
        let first = &records[0];
        assert_eq!(first.resource["service.instance.id"], "egress-lab");
        assert_eq!(first.scope_name, "egress-audit");
        assert!(first.time_unix_nano > 0 && first.body_text.is_some(), "{format}: a timed record, a string body");
        assert_eq!(lab.envoy.stat("wasmcustom.egress_audit_events_dropped"), Some(0), "{format}");
        assert_eq!(lab.envoy.stat("wasmcustom.egress_audit_batches_rejected"), Some(0), "{format}");
        assert_eq!(lab.envoy.stat("wasmcustom.egress_audit_events"), Some(REQUESTS as u64), "{format}");
        eprintln!(
            "audit load ({format} via rotel): {REQUESTS} requests at concurrency 32, {:.0} req/s (p50 {:?}, p99 \
             {:?}); {} records delivered, 0 dropped, {} gateway batches",
            report.throughput(),
            report.percentile(50.0),
            report.percentile(99.0),
            records.len(),
            lab.envoy.stat("wasmcustom.egress_audit_batches_sent").unwrap_or(0)
        );
    }
}

#[test]
fn a_collector_that_is_down_never_holds_up_traffic_and_shipping_resumes() {
    const QUEUE: usize = 1000;
    const REQUESTS: usize = 3000;
    for format in ENCODINGS {
        let collector = Collector::start().unwrap();
        let mut rotel = Rotel::start(collector.addr()).unwrap();
        let audit = audit_config(&format!(
            r#"{}, "queueMaxEvents": {QUEUE}, "batchMaxEvents": 200, "timeoutMs": 300"#,
            encoding_config(format)
        ));
        let lab = lab_with(POLICY, rotel.addr(), &audit);
        rotel.stop();
        let while_down = load::run(lab.http(), &load_plan(REQUESTS)).unwrap();
        assert_eq!(while_down.ok(), REQUESTS, "{format}: traffic is served while the collector is down");
        let depth = lab.envoy.stat("wasmcustom.egress_audit_queue_depth").unwrap();
        assert!(depth <= QUEUE as u64, "{format}: memory stays bounded: queue depth {depth}");
        let dropped = lab.envoy.stat("wasmcustom.egress_audit_events_dropped").unwrap();
        assert!(dropped >= (REQUESTS - QUEUE) as u64, "{format}: drops are counted: {dropped}");
        assert!(lab.envoy.stat("wasmcustom.egress_audit_batch_failures").unwrap() > 0, "{format}: retried");

        rotel.restart().unwrap();
        let kept = REQUESTS - dropped as usize;
        let delivered = collector.wait_for_records(kept, Duration::from_secs(60));
        assert_eq!(delivered.len(), kept, "{format}: everything kept is delivered once the collector is back");
        assert_eq!(lab.envoy.stat("wasmcustom.egress_audit_batches_rejected"), Some(0), "{format}");
        eprintln!(
            "audit collector down ({format}): {REQUESTS} requests p50 {:?} p99 {:?}; {dropped} dropped and counted, \
             {kept} delivered after the restart",
            while_down.percentile(50.0),
            while_down.percentile(99.0),
        );
    }
}

/// A gateway shipping to the harness's own collector, which injects the answers rotel cannot give. A batch is 10
/// events and no partial batch is sent for a minute, so each [`send`] of 10 is exactly one batch however slowly a
/// loaded machine serves its requests (retries are timed apart from the flush interval).
fn faulty(extra: &str) -> (Collector, Lab) {
    let collector = Collector::start().unwrap();
    let config = audit_config_flushing(60_000, &format!(r#", "batchMaxEvents": 10 {extra}"#));
    let lab = lab(POLICY, &collector, &config);
    (collector, lab)
}

fn send(lab: &Lab, from: usize, count: usize) {
    for n in from..from + count {
        assert_eq!(client::get(lab.http(), "httpbin.org", &format!("/anything/{n}")).unwrap().status, 200);
    }
}

fn stat(lab: &Lab, name: &str) -> u64 {
    lab.envoy.stat(&format!("wasmcustom.egress_audit_{name}")).unwrap_or(0)
}

/// Waits until `stat` reaches `at_least` (the counters move when the collector answers, after the requests).
fn wait_for_stat(lab: &Lab, name: &str, at_least: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let value = stat(lab, name);
        if value >= at_least || std::time::Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_refused_batch_is_dropped_counted_and_never_blocks_the_queue() {
    let (collector, lab) = faulty("");
    collector.set_mode(Mode::Failing(400));
    send(&lab, 0, 10);
    assert_eq!(wait_for_stat(&lab, "batches_rejected", 1), 1);
    assert_eq!(stat(&lab, "events_dropped"), 10, "the refused events are counted");
    assert_eq!(stat(&lab, "batch_failures"), 0, "a 400 is not retried");
    collector.set_mode(Mode::Up);
    send(&lab, 10, 10);
    let delivered = collector.wait_for_events(10, Duration::from_secs(15));
    let paths: Vec<&str> = delivered.iter().map(|e| e["request"]["path"].as_str().unwrap()).collect();
    assert_eq!(paths.len(), 10, "the queue behind the refused batch moves on: {paths:?}");
    assert!(paths.iter().all(|p| p["/anything/".len()..].parse::<usize>().unwrap() >= 10), "{paths:?}");
    assert_eq!(collector.requests(), 2, "the refused batch was sent once");
}

#[test]
fn a_throttled_batch_waits_as_long_as_the_collector_asks_and_is_then_delivered() {
    let (collector, lab) = faulty("");
    collector.set_mode(Mode::RetryAfter(429, "3600"));
    send(&lab, 0, 10);
    assert_eq!(wait_for_stat(&lab, "batch_failures", 1), 1);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(collector.requests(), 1, "no retry before the hour the collector asked for");
    assert_eq!(stat(&lab, "events_dropped"), 0, "a throttled batch is kept");
    drop(lab);

    let (collector, lab) = faulty("");
    collector.set_mode(Mode::RetryAfter(503, "1"));
    send(&lab, 0, 10);
    assert_eq!(wait_for_stat(&lab, "batch_failures", 1), 1);
    collector.set_mode(Mode::Up);
    let delivered = collector.wait_for_events(10, Duration::from_secs(15));
    assert_eq!(delivered.len(), 10, "delivered once the collector takes it");
    assert_eq!((stat(&lab, "events_dropped"), stat(&lab, "batches_rejected")), (0, 0));
}

#[test]
fn records_a_collector_rejects_in_a_partial_success_are_counted_as_dropped() {
    for format in ENCODINGS {
        let (collector, lab) = faulty(&encoding_config(format));
        collector.set_mode(Mode::PartialSuccess(3));
        send(&lab, 0, 10);
        assert_eq!(collector.wait_for_events(10, Duration::from_secs(15)).len(), 10, "{format}");
        // Each batch (one here: see `faulty`) is sent once, never retried, and the 3 records it rejects are counted
        // as dropped.
        let batches = u64::try_from(collector.requests()).unwrap();
        assert_eq!(wait_for_stat(&lab, "batches_sent", batches), batches, "{format}: each batch sent once");
        assert_eq!(wait_for_stat(&lab, "events_dropped", 3 * batches), 3 * batches, "{format}");
        assert_eq!(stat(&lab, "batch_failures"), 0, "{format}: a partial success is no failure");
    }
}

#[test]
fn a_slow_collector_never_holds_up_traffic() {
    let (collector, lab) = faulty(r#", "timeoutMs": 300"#);
    collector.set_mode(Mode::Slow(Duration::from_secs(2)));
    let while_slow = load::run(lab.http(), &Plan { total: 500, ..load_plan(500) }).unwrap();
    assert_eq!(while_slow.ok(), 500, "traffic is served while the collector is slow");
    assert!(wait_for_stat(&lab, "batch_failures", 1) >= 1, "a batch that times out is retried");
    collector.set_mode(Mode::Up);
    // At least once: every event arrives, a timed-out batch perhaps twice, so count distinct ids.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (delivered, distinct) = loop {
        let delivered = collector.events();
        let distinct: HashSet<String> = delivered.iter().filter_map(|e| Some(e["id"].as_str()?.to_string())).collect();
        if distinct.len() >= 500 || std::time::Instant::now() > deadline {
            break (delivered, distinct);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(distinct.len(), 500, "every event arrives once the collector is fast again");
    eprintln!(
        "audit collector slow: 500 requests p50 {:?} p99 {:?}; {} records for 500 events",
        while_slow.percentile(50.0),
        while_slow.percentile(99.0),
        delivered.len()
    );
}
