//! The OTLP path through a real OpenTelemetry collector: rotel receives OTLP/HTTP logs (JSON and protobuf) and
//! exports them over OTLP/HTTP to the harness collector, which must read what a real exporter writes (protobuf,
//! gzip) and see every field the sender set. Needs rotel-agent (`make collector-tools`; CI installs it): without it
//! these tests fail rather than skip.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use egress_harness::client;
use egress_harness::collector::proto::any_value::Value as Any;
use egress_harness::collector::proto::{
    AnyValue, ExportLogsServiceRequest, InstrumentationScope, KeyValue, LogRecord, Resource, ResourceLogs, ScopeLogs,
};
use egress_harness::collector::{Collector, Encoding, Record};
use egress_harness::rotel::Rotel;
use prost::Message;
use serde_json::{json, Value};

/// Generous: rotel forwards within milliseconds (1 ms batch timeout), but CI machines are slow and shared.
const FORWARDING_TIMEOUT: Duration = Duration::from_secs(10);

const TIME: u64 = 1_700_000_000_123_456_789;
const OBSERVED: u64 = 1_700_000_000_223_456_789;

/// An audit event as the body of a record (the `egress-audit/v1` JSON, as a string).
fn event(id: &str) -> String {
    json!({"schema": "egress-audit/v1", "id": id, "destination": {"host": "api.example.com", "port": 443}}).to_string()
}

/// The record the harness collector should read for `event(id)` as sent below, whatever the sender's encoding:
/// rotel re-encodes as protobuf.
fn expected(id: &str, method: &str) -> Record {
    Record {
        body: serde_json::from_str(&event(id)).unwrap(),
        body_text: Some(event(id)),
        time_unix_nano: TIME,
        observed_time_unix_nano: OBSERVED,
        severity_number: 13,
        severity_text: "WARN".into(),
        trace_id: "5b8efff798038103d269b633813fc60c".into(),
        span_id: "eee19b7ec3c1b174".into(),
        attributes: BTreeMap::from([
            ("log.record.uid".into(), json!(id)),
            ("server.address".into(), json!("api.example.com")),
            ("http.request.method".into(), json!(method)),
            ("http.response.status_code".into(), json!(403)),
            ("egress.decision.action".into(), json!("deny")),
            ("egress.tunnel".into(), json!(false)),
        ]),
        resource: BTreeMap::from([
            ("service.name".into(), json!("egress-gateway")),
            ("service.instance.id".into(), json!("gw-1")),
        ]),
        scope_name: "egress-audit".into(),
        scope_version: "0.1.0".into(),
        encoding: Encoding::Protobuf,
    }
}

/// `expected(id, method)` in OTLP/JSON, 64-bit integers as decimal strings (rotel refuses numbers for the times).
fn json_request(id: &str, method: &str) -> Vec<u8> {
    let kv = |key: &str, value: Value| json!({"key": key, "value": value});
    json!({"resourceLogs": [{
        "resource": {"attributes": [
            kv("service.name", json!({"stringValue": "egress-gateway"})),
            kv("service.instance.id", json!({"stringValue": "gw-1"})),
        ]},
        "scopeLogs": [{
            "scope": {"name": "egress-audit", "version": "0.1.0"},
            "logRecords": [{
                "timeUnixNano": TIME.to_string(),
                "observedTimeUnixNano": OBSERVED.to_string(),
                "severityNumber": 13,
                "severityText": "WARN",
                "body": {"stringValue": event(id)},
                "attributes": [
                    kv("log.record.uid", json!({"stringValue": id})),
                    kv("server.address", json!({"stringValue": "api.example.com"})),
                    kv("http.request.method", json!({"stringValue": method})),
                    kv("http.response.status_code", json!({"intValue": "403"})),
                    kv("egress.decision.action", json!({"stringValue": "deny"})),
                    kv("egress.tunnel", json!({"boolValue": false})),
                ],
                "traceId": "5b8efff798038103d269b633813fc60c",
                "spanId": "eee19b7ec3c1b174",
            }],
        }],
    }]})
    .to_string()
    .into_bytes()
}

/// `expected(id, method)` as a binary `ExportLogsServiceRequest`.
fn protobuf_request(id: &str, method: &str) -> Vec<u8> {
    let string = |key: &str, value: &str| KeyValue::new(key, Any::StringValue(value.into()));
    let record = LogRecord {
        time_unix_nano: TIME,
        observed_time_unix_nano: OBSERVED,
        severity_number: 13,
        severity_text: "WARN".into(),
        body: Some(AnyValue { value: Some(Any::StringValue(event(id))) }),
        attributes: vec![
            string("log.record.uid", id),
            string("server.address", "api.example.com"),
            string("http.request.method", method),
            KeyValue::new("http.response.status_code", Any::IntValue(403)),
            string("egress.decision.action", "deny"),
            KeyValue::new("egress.tunnel", Any::BoolValue(false)),
        ],
        trace_id: vec![0x5b, 0x8e, 0xff, 0xf7, 0x98, 0x03, 0x81, 0x03, 0xd2, 0x69, 0xb6, 0x33, 0x81, 0x3f, 0xc6, 0x0c],
        span_id: vec![0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x74],
    };
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![string("service.name", "egress-gateway"), string("service.instance.id", "gw-1")],
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "egress-audit".into(),
                    version: "0.1.0".into(),
                    attributes: vec![],
                }),
                log_records: vec![record],
            }],
        }],
    }
    .encode_to_vec()
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(body).unwrap();
    encoder.finish().unwrap()
}

fn post(rotel: &Rotel, headers: &[(&str, &str)], body: &[u8]) -> client::Response {
    client::request(rotel.addr(), "POST", "localhost", "/v1/logs", headers, body).unwrap()
}

/// Waits for the `count`th record and says how long it took.
fn forwarded(collector: &Collector, count: usize, rotel: &Rotel) -> Vec<Record> {
    let started = Instant::now();
    let records = collector.wait_for_records(count, FORWARDING_TIMEOUT);
    assert_eq!(records.len(), count, "rotel forwarded {} of {count} records; its log:\n{}", records.len(), rotel.log());
    eprintln!("record {count} forwarded {:?} after rotel answered", started.elapsed());
    records
}

#[test]
fn rotel_forwards_json_and_protobuf_records_unchanged() {
    let collector = Collector::start().unwrap();
    let rotel = Rotel::start(collector.addr()).unwrap();

    let json = post(&rotel, &[("content-type", "application/json")], &json_request("e1", "GET"));
    assert_eq!((json.status, json.header("content-type")), (200, Some("application/json")), "{}", json.body_str());
    assert_eq!(forwarded(&collector, 1, &rotel), [expected("e1", "GET")]);

    let protobuf = post(&rotel, &[("content-type", "application/x-protobuf")], &protobuf_request("e2", "POST"));
    assert_eq!((protobuf.status, protobuf.header("content-type")), (200, Some("application/x-protobuf")));
    assert_eq!(forwarded(&collector, 2, &rotel)[1], expected("e2", "POST"));

    let gzipped = [("content-type", "application/x-protobuf"), ("content-encoding", "gzip")];
    assert_eq!(post(&rotel, &gzipped, &gzip(&protobuf_request("e3", "PUT"))).status, 200);
    let gzipped_json = [("content-type", "application/json"), ("content-encoding", "gzip")];
    assert_eq!(post(&rotel, &gzipped_json, &gzip(&json_request("e4", "DELETE"))).status, 200);
    let records = forwarded(&collector, 4, &rotel);
    assert_eq!(records[2..], [expected("e3", "PUT"), expected("e4", "DELETE")]);

    let ids: Vec<Value> = collector.events().iter().map(|event| event["id"].clone()).collect();
    assert_eq!(ids, [json!("e1"), json!("e2"), json!("e3"), json!("e4")]);
}

#[test]
fn rotel_refuses_ndjson_and_non_otlp_json_and_forwards_nothing() {
    let collector = Collector::start().unwrap();
    let rotel = Rotel::start(collector.addr()).unwrap();

    let lines = format!("{}\n{}\n", event("e1"), event("e2"));
    let ndjson = post(&rotel, &[("content-type", "application/x-ndjson")], lines.as_bytes());
    assert_eq!(ndjson.status, 400, "{}", ndjson.body_str());
    // Stricter than the proto3 JSON mapping, which also allows numbers for 64-bit integers: a sender must write the
    // times as strings.
    let numeric_time =
        String::from_utf8(json_request("e3", "GET")).unwrap().replace(&format!("\"{TIME}\""), &TIME.to_string());
    assert!(numeric_time.contains(&format!("\"timeUnixNano\":{TIME}")), "{numeric_time}");
    assert_eq!(post(&rotel, &[("content-type", "application/json")], numeric_time.as_bytes()).status, 400);
    // A parameter on the media type is not understood either.
    let charset = [("content-type", "application/json; charset=utf-8")];
    assert_eq!(post(&rotel, &charset, &json_request("e4", "GET")).status, 400);

    // A record sent last and forwarded shows that rotel is working, so nothing else is on its way.
    assert_eq!(post(&rotel, &[("content-type", "application/json")], &json_request("e5", "GET")).status, 200);
    assert_eq!(forwarded(&collector, 1, &rotel), [expected("e5", "GET")]);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(collector.records().len(), 1);
}
