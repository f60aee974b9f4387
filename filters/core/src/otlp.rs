//! Audit events as OpenTelemetry logs (OTLP/HTTP, `POST /v1/logs`), the door every common log pipeline opens
//! (OpenTelemetry Collector, Fluent Bit `in_opentelemetry`, Vector, Loki, Elasticsearch), in both encodings the
//! protocol defines, and plain NDJSON for HTTP inputs that read lines.
//!
//! One LogRecord per event: the body is the `egress-audit/v1` JSON as a string (so every reader of events keeps
//! working on what a collector stores), `timeUnixNano` the event's time, a severity (WARN for a refusal or a
//! would-be refusal, INFO otherwise) and a few attributes to route and search by, named by the OpenTelemetry
//! semantic conventions where one exists (`server.address`, `http.request.method`, `log.record.uid` …) and
//! `egress.*` otherwise. The resource names the gateway (`service.name`, `service.instance.id`).
//!
//! Records are encoded one by one when the event happens and framed into a request when a batch leaves: the
//! per-event work happens once, and a batch is a concatenation. The source of truth for the wire format is
//! opentelemetry-proto: `opentelemetry/proto/collector/logs/v1/logs_service.proto`, `logs/v1/logs.proto`,
//! `common/v1/common.proto`, `resource/v1/resource.proto` (field numbers below), and its JSON mapping (lowerCamelCase
//! names, 64-bit integers as decimal strings, enums as numbers). The tests decode what is written here with `prost`.

use crate::audit::{AuditEvent, Encoding};
use crate::json::{push_string, Object};

/// The scope every record is emitted under.
pub const SCOPE_NAME: &str = "egress-audit";
const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");

const SEVERITY_INFO: u64 = 9;
const SEVERITY_WARN: u64 = 13;

/// Who emits the records: the resource of every batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resource {
    /// `service.name`.
    pub service_name: String,
    /// `service.instance.id`: Envoy's node id (the gateway pod, in Istio).
    pub instance_id: Option<String>,
}

/// An attribute's value.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Value<'a> {
    Str(&'a str),
    Int(u64),
}

/// The attributes of an event's record, in a fixed order; absent values are left out.
fn attributes(event: &AuditEvent) -> Vec<(&'static str, Value<'_>)> {
    let decision = event.decision.as_ref();
    fn text(s: Option<&str>) -> Option<Value<'_>> {
        s.map(Value::Str)
    }
    let candidates = [
        ("log.record.uid", Some(Value::Str(&event.id))),
        ("server.address", text(event.destination.host.as_deref())),
        ("server.port", event.destination.port.map(|p| Value::Int(u64::from(p)))),
        ("url.scheme", text(event.destination.scheme.as_deref())),
        ("http.request.method", text(event.request.as_ref().map(|r| r.method.as_str()))),
        ("http.response.status_code", event.response.code.map(|c| Value::Int(u64::from(c)))),
        ("egress.decision.action", text(decision.map(|d| d.action.as_str()))),
        ("egress.decision.reason", text(decision.map(|d| d.reason.as_str()))),
        ("egress.decision.rule", text(decision.and_then(|d| d.rule.as_deref()))),
        ("egress.decision.policy", text(decision.and_then(|d| d.policy.as_deref()))),
        ("egress.source.principal", text(event.source.principal.as_deref())),
        ("egress.source.namespace", text(event.source.namespace.as_deref())),
    ];
    candidates.into_iter().filter_map(|(key, value)| Some((key, value?))).collect()
}

/// WARN when the request or any hop of its redirect chain was refused (or would have been, in report mode).
fn severity(event: &AuditEvent) -> (u64, &'static str) {
    let decision = event.decision.iter().map(|d| d.action.as_str());
    let mut actions = decision.chain(event.redirects.iter().map(|hop| hop.action.as_str()));
    if actions.any(|action| action == "deny" || action == "report-deny") {
        (SEVERITY_WARN, "WARN")
    } else {
        (SEVERITY_INFO, "INFO")
    }
}

/// One event, encoded as one record of `encoding` (for NDJSON: the line itself). `json` is the event as written by
/// its `ToJson`; `time_unix_ms` the event's time.
pub fn record(encoding: Encoding, event: &AuditEvent, json: &str, time_unix_ms: u64) -> Vec<u8> {
    let nanos = time_unix_ms.saturating_mul(1_000_000);
    let (severity_number, severity_text) = severity(event);
    match encoding {
        Encoding::Ndjson => json.as_bytes().to_vec(),
        Encoding::Protobuf => {
            // LogRecord: time_unix_nano = 1 (fixed64), severity_number = 2, severity_text = 3, body = 5 (AnyValue),
            // attributes = 6 (KeyValue), observed_time_unix_nano = 11 (fixed64).
            let mut out = Proto::with_capacity(json.len() + 256);
            out.fixed64(1, nanos);
            out.varint_field(2, severity_number);
            out.string(3, severity_text);
            out.message(5, |body| body.string(1, json));
            for (key, value) in attributes(event) {
                out.message(6, |kv| key_value(kv, key, value));
            }
            out.fixed64(11, nanos);
            out.0
        }
        Encoding::Json => {
            let nanos = nanos.to_string();
            Object::with_capacity(json.len() + 512)
                .str("timeUnixNano", &nanos)
                .str("observedTimeUnixNano", &nanos)
                .uint("severityNumber", severity_number)
                .str("severityText", severity_text)
                .object("body", |body| body.str("stringValue", json))
                .array("attributes", attributes(event), |out, (key, value)| json_key_value(out, key, value))
                .finish()
                .into_bytes()
        }
    }
}

/// The request body for `records` (each as [`record`] wrote it, all of one encoding), written into `out` (cleared
/// first). The caller keeps `out` from batch to batch: a batch is the largest allocation of the audit stage, and
/// writing every one into the same buffer keeps the worker's Wasm heap from fragmenting (and growing) under them.
pub fn batch(encoding: Encoding, resource: &Resource, records: &[Vec<u8>], out: &mut Vec<u8>) {
    out.clear();
    let payload: usize = records.iter().map(|r| r.len() + 6).sum();
    out.reserve(payload + 256);
    match encoding {
        Encoding::Ndjson => {
            for record in records {
                out.extend_from_slice(record);
                out.push(b'\n');
            }
        }
        Encoding::Protobuf => {
            // ExportLogsServiceRequest { resource_logs = 1: ResourceLogs { resource = 1, scope_logs = 2: ScopeLogs
            // { scope = 1, log_records = 2 } } }. Records are already encoded: only their frames are written here,
            // each length computed before its message is, so the body is written once, front to back.
            let mut scope = Proto::with_capacity(64);
            scope.string(1, SCOPE_NAME);
            scope.string(2, SCOPE_VERSION);
            let mut resource_message = Proto::with_capacity(128);
            for (key, value) in resource_attributes(resource) {
                resource_message.message(1, |kv| key_value(kv, key, value));
            }
            let scope_logs = framed(scope.0.len()) + records.iter().map(|r| framed(r.len())).sum::<usize>();
            let resource_logs = framed(resource_message.0.len()) + framed(scope_logs);
            let mut request = Proto(std::mem::take(out));
            request.head(1, resource_logs);
            request.bytes(1, &resource_message.0);
            request.head(2, scope_logs);
            request.bytes(1, &scope.0);
            for record in records {
                request.bytes(2, record);
            }
            *out = request.0;
        }
        Encoding::Json => {
            let mut head = String::with_capacity(256);
            head.push_str("{\"resourceLogs\":[{\"resource\":{\"attributes\":[");
            for (i, (key, value)) in resource_attributes(resource).into_iter().enumerate() {
                if i > 0 {
                    head.push(',');
                }
                json_key_value(&mut head, key, value);
            }
            head.push_str("]},\"scopeLogs\":[{\"scope\":");
            head.push_str(&Object::new().str("name", SCOPE_NAME).str("version", SCOPE_VERSION).finish());
            head.push_str(",\"logRecords\":[");
            out.extend_from_slice(head.as_bytes());
            for (i, record) in records.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(record);
            }
            out.extend_from_slice(b"]}]}]}");
        }
    }
}

/// The size of a length-delimited field of `len` bytes with a one-byte key (fields 1 to 15).
fn framed(len: usize) -> usize {
    let mut varint = 1;
    while len >> (7 * varint) != 0 {
        varint += 1;
    }
    1 + varint + len
}

fn resource_attributes(resource: &Resource) -> Vec<(&'static str, Value<'_>)> {
    let mut out = vec![("service.name", Value::Str(&resource.service_name))];
    out.extend(resource.instance_id.as_deref().map(|id| ("service.instance.id", Value::Str(id))));
    out
}

/// KeyValue { key = 1, value = 2: AnyValue { string_value = 1 | int_value = 3 } }.
fn key_value(out: &mut Proto, key: &str, value: Value<'_>) {
    out.string(1, key);
    out.message(2, |any| match value {
        Value::Str(s) => any.string(1, s),
        Value::Int(n) => any.varint_field(3, n),
    });
}

fn json_key_value(out: &mut String, key: &str, value: Value<'_>) {
    out.push_str("{\"key\":");
    push_string(out, key);
    match value {
        Value::Str(s) => {
            out.push_str(",\"value\":{\"stringValue\":");
            push_string(out, s);
        }
        // int64 travels as a decimal string in the JSON mapping.
        Value::Int(n) => {
            out.push_str(",\"value\":{\"intValue\":\"");
            out.push_str(&n.to_string());
            out.push('"');
        }
    }
    out.push_str("}}");
}

/// What a collector answered to a delivered batch: records it refused (`partialSuccess`), if any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rejected {
    pub records: u64,
    pub message: String,
}

/// Reads an `ExportLogsServiceResponse` (in the batch's encoding) for its `partialSuccess`. `None` when the body is
/// empty, carries no rejection, or is not such a response (then nothing is known to be rejected: the collector said
/// 2xx, which accepts the batch).
pub fn rejected(encoding: Encoding, body: &[u8]) -> Option<Rejected> {
    let rejected = match encoding {
        Encoding::Ndjson => return None,
        Encoding::Json => rejected_json(body)?,
        // ExportLogsServiceResponse { partial_success = 1: { rejected_log_records = 1 (int64), error_message = 2 } }
        Encoding::Protobuf => {
            // A message field that occurs more than once is one message, merged (protobuf's rule): each occurrence
            // of `partial_success` is read over the previous ones, the last value of a field winning.
            let mut rejected = Rejected::default();
            for (number, field) in fields(body)? {
                let (1, Field::Bytes(partial)) = (number, field) else { continue };
                for (number, field) in fields(partial)? {
                    match (number, field) {
                        (1, Field::Varint(n)) => rejected.records = n,
                        (2, Field::Bytes(text)) => rejected.message = String::from_utf8_lossy(text).into_owned(),
                        _ => {}
                    }
                }
            }
            rejected
        }
    };
    Some(rejected).filter(|r| r.records > 0)
}

fn rejected_json(body: &[u8]) -> Option<Rejected> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Response {
        #[serde(default)]
        partial_success: Option<Partial>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Partial {
        #[serde(default)]
        rejected_log_records: Option<Int64>,
        #[serde(default)]
        error_message: String,
    }
    /// The JSON mapping writes int64 as a string; readers accept a number too.
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Int64 {
        Number(u64),
        Text(String),
    }
    let response: Response = crate::json::from_slice(body).ok()?;
    let partial = response.partial_success?;
    let records = match partial.rejected_log_records? {
        Int64::Number(n) => n,
        Int64::Text(text) => text.parse().ok()?,
    };
    Some(Rejected { records, message: partial.error_message })
}

/// A protobuf field as read by [`fields`].
#[derive(Debug, PartialEq)]
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The fields of one message, in order; `None` when the bytes are not a well-formed message.
fn fields(mut bytes: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let key = read_varint(&mut bytes)?;
        let field = match key & 7 {
            0 => Field::Varint(read_varint(&mut bytes)?),
            1 => {
                bytes = bytes.get(8..)?;
                Field::Fixed
            }
            2 => {
                let len = usize::try_from(read_varint(&mut bytes)?).ok()?;
                let (value, rest) = (bytes.get(..len)?, bytes.get(len..)?);
                bytes = rest;
                Field::Bytes(value)
            }
            5 => {
                bytes = bytes.get(4..)?;
                Field::Fixed
            }
            _ => return None,
        };
        out.push((key >> 3, field));
    }
    Some(out)
}

fn read_varint(bytes: &mut &[u8]) -> Option<u64> {
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

/// A protobuf message being written.
struct Proto(Vec<u8>);

impl Proto {
    fn with_capacity(bytes: usize) -> Proto {
        Proto(Vec::with_capacity(bytes))
    }

    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.0.push((value as u8) | 0x80);
            value >>= 7;
        }
        self.0.push(value as u8);
    }

    fn key(&mut self, field: u64, wire_type: u64) {
        self.varint(field << 3 | wire_type);
    }

    fn varint_field(&mut self, field: u64, value: u64) {
        self.key(field, 0);
        self.varint(value);
    }

    fn fixed64(&mut self, field: u64, value: u64) {
        self.key(field, 1);
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    fn bytes(&mut self, field: u64, value: &[u8]) {
        self.head(field, value.len());
        self.0.extend_from_slice(value);
    }

    /// The key and length of a length-delimited field whose `len` bytes follow.
    fn head(&mut self, field: u64, len: usize) {
        self.key(field, 2);
        self.varint(len as u64);
    }

    fn string(&mut self, field: u64, value: &str) {
        self.bytes(field, value.as_bytes());
    }

    /// A nested message: written in place, its length prefix inserted once its size is known.
    fn message(&mut self, field: u64, write: impl FnOnce(&mut Proto)) {
        let mut inner = Proto(Vec::new());
        write(&mut inner);
        self.bytes(field, &inner.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Decision, Destination, EventKind, RedirectHop, Request, Response};
    use crate::state::ToJson;
    use prost::Message;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// The messages of opentelemetry-proto this module writes, as `prost` derives them from the `.proto` files:
    /// the reference the hand-written encoder is held to.
    mod reference {
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct ExportLogsServiceRequest {
            #[prost(message, repeated, tag = "1")]
            pub resource_logs: Vec<ResourceLogs>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct ResourceLogs {
            #[prost(message, optional, tag = "1")]
            pub resource: Option<Resource>,
            #[prost(message, repeated, tag = "2")]
            pub scope_logs: Vec<ScopeLogs>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct Resource {
            #[prost(message, repeated, tag = "1")]
            pub attributes: Vec<KeyValue>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct ScopeLogs {
            #[prost(message, optional, tag = "1")]
            pub scope: Option<InstrumentationScope>,
            #[prost(message, repeated, tag = "2")]
            pub log_records: Vec<LogRecord>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct InstrumentationScope {
            #[prost(string, tag = "1")]
            pub name: String,
            #[prost(string, tag = "2")]
            pub version: String,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct LogRecord {
            #[prost(fixed64, tag = "1")]
            pub time_unix_nano: u64,
            #[prost(fixed64, tag = "11")]
            pub observed_time_unix_nano: u64,
            #[prost(int32, tag = "2")]
            pub severity_number: i32,
            #[prost(string, tag = "3")]
            pub severity_text: String,
            #[prost(message, optional, tag = "5")]
            pub body: Option<AnyValue>,
            #[prost(message, repeated, tag = "6")]
            pub attributes: Vec<KeyValue>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct KeyValue {
            #[prost(string, tag = "1")]
            pub key: String,
            #[prost(message, optional, tag = "2")]
            pub value: Option<AnyValue>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct AnyValue {
            #[prost(oneof = "Any", tags = "1, 2, 3")]
            pub value: Option<Any>,
        }
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Any {
            #[prost(string, tag = "1")]
            String(String),
            #[prost(bool, tag = "2")]
            Bool(bool),
            #[prost(int64, tag = "3")]
            Int(i64),
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct ExportLogsServiceResponse {
            #[prost(message, optional, tag = "1")]
            pub partial_success: Option<PartialSuccess>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct PartialSuccess {
            #[prost(int64, tag = "1")]
            pub rejected_log_records: i64,
            #[prost(string, tag = "2")]
            pub error_message: String,
        }
    }

    fn event(action: &str, hops: &[&str]) -> AuditEvent {
        AuditEvent {
            schema: crate::audit::SCHEMA.into(),
            time: "2026-11-25T10:00:00.123Z".into(),
            id: "req-1".into(),
            kind: EventKind::Http,
            tunnel: false,
            gateway: Default::default(),
            source: crate::audit::Source {
                principal: Some("spiffe://cluster.local/ns/app/sa/sleep".into()),
                namespace: Some("app".into()),
                ..Default::default()
            },
            destination: Destination {
                host: Some("httpbin.org".into()),
                port: Some(443),
                scheme: Some("https".into()),
                sni: None,
            },
            request: Some(Request { method: "GET".into(), path: "/a \"quoted\"\n".into(), ..Default::default() }),
            decision: Some(Decision {
                action: action.into(),
                reason: "allowed".into(),
                rule: None,
                mode: None,
                policy: None,
                detail: None,
            }),
            redirects: hops
                .iter()
                .map(|action| RedirectHop { action: (*action).into(), reason: "x".into(), ..Default::default() })
                .collect(),
            response: Response { code: Some(200), ..Default::default() },
            duration_ms: Some(3),
            upstream: Default::default(),
        }
    }

    const TIME_MS: u64 = 1_795_000_000_123;

    /// The batch body for `records`, written into a buffer that held a larger batch before (as the audit stage's
    /// does): nothing of the earlier one may remain.
    fn body_of(encoding: Encoding, records: &[Vec<u8>]) -> Vec<u8> {
        let mut out = vec![0xAB; 70_000];
        batch(encoding, &resource(), records, &mut out);
        let written = out.clone();
        batch(encoding, &resource(), records, &mut out);
        assert_eq!(out, written, "the same records, the same body");
        out
    }

    fn resource() -> Resource {
        Resource { service_name: "egress-gateway".into(), instance_id: Some("router~pod".into()) }
    }

    fn attributes_of(record: &reference::LogRecord) -> Vec<(String, reference::Any)> {
        record.attributes.iter().map(|kv| (kv.key.clone(), kv.value.clone().unwrap().value.unwrap())).collect()
    }

    #[test]
    fn protobuf_batches_decode_with_the_reference_messages() {
        let events = [event("allow", &[]), event("deny", &[]), event("allow", &["deny"])];
        let records: Vec<Vec<u8>> =
            events.iter().map(|e| record(Encoding::Protobuf, e, &e.to_json(), TIME_MS)).collect();
        let body = body_of(Encoding::Protobuf, &records);
        let request = reference::ExportLogsServiceRequest::decode(body.as_slice()).unwrap();
        let resource_logs = &request.resource_logs[0];
        let resource: Vec<(String, reference::Any)> = resource_logs
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone().unwrap().value.unwrap()))
            .collect();
        assert_eq!(
            resource,
            [
                ("service.name".into(), reference::Any::String("egress-gateway".into())),
                ("service.instance.id".into(), reference::Any::String("router~pod".into())),
            ]
        );
        let scope_logs = &resource_logs.scope_logs[0];
        assert_eq!(scope_logs.scope.as_ref().unwrap().name, "egress-audit");
        assert_eq!(scope_logs.log_records.len(), 3);
        let first = &scope_logs.log_records[0];
        assert_eq!(first.time_unix_nano, TIME_MS * 1_000_000);
        assert_eq!(first.observed_time_unix_nano, TIME_MS * 1_000_000);
        assert_eq!((first.severity_number, first.severity_text.as_str()), (9, "INFO"));
        let body = match first.body.clone().unwrap().value.unwrap() {
            reference::Any::String(body) => body,
            other => panic!("{other:?}"),
        };
        assert_eq!(serde_json::from_str::<AuditEvent>(&body).unwrap(), events[0], "the body is the event");
        let attributes = attributes_of(first);
        let string = |s: &str| reference::Any::String(s.into());
        assert_eq!(
            attributes,
            [
                ("log.record.uid".into(), string("req-1")),
                ("server.address".into(), string("httpbin.org")),
                ("server.port".into(), reference::Any::Int(443)),
                ("url.scheme".into(), string("https")),
                ("http.request.method".into(), string("GET")),
                ("http.response.status_code".into(), reference::Any::Int(200)),
                ("egress.decision.action".into(), string("allow")),
                ("egress.decision.reason".into(), string("allowed")),
                ("egress.source.principal".into(), string("spiffe://cluster.local/ns/app/sa/sleep")),
                ("egress.source.namespace".into(), string("app")),
            ]
        );
        let severities: Vec<&str> = scope_logs.log_records.iter().map(|r| r.severity_text.as_str()).collect();
        assert_eq!(severities, ["INFO", "WARN", "WARN"], "a refusal, or a refused hop, is a warning");
    }

    #[test]
    fn json_batches_follow_the_protobuf_json_mapping() {
        let events = [event("allow", &[]), event("report-deny", &[])];
        let records: Vec<Vec<u8>> = events.iter().map(|e| record(Encoding::Json, e, &e.to_json(), TIME_MS)).collect();
        let body = body_of(Encoding::Json, &records);
        let request: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let resource_logs = &request["resourceLogs"][0];
        assert_eq!(
            resource_logs["resource"]["attributes"][0],
            serde_json::json!({"key": "service.name", "value": {"stringValue": "egress-gateway"}})
        );
        assert_eq!(resource_logs["scopeLogs"][0]["scope"]["name"], "egress-audit");
        let records = resource_logs["scopeLogs"][0]["logRecords"].as_array().unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0]["timeUnixNano"], (TIME_MS * 1_000_000).to_string(), "int64 as a string");
        assert_eq!(records[1]["severityNumber"], 13);
        let body = records[0]["body"]["stringValue"].as_str().unwrap();
        assert_eq!(serde_json::from_str::<AuditEvent>(body).unwrap(), events[0]);
        assert_eq!(
            records[0]["attributes"][2],
            serde_json::json!({"key": "server.port", "value": {"intValue": "443"}})
        );
    }

    #[test]
    fn ndjson_batches_are_lines() {
        let events = [event("allow", &[]), event("deny", &[])];
        let records: Vec<Vec<u8>> = events.iter().map(|e| record(Encoding::Ndjson, e, &e.to_json(), TIME_MS)).collect();
        let body = String::from_utf8(body_of(Encoding::Ndjson, &records)).unwrap();
        let lines: Vec<AuditEvent> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines, events);
        assert!(body.ends_with('\n'));
    }

    #[test]
    fn partial_success_is_read_in_both_encodings() {
        let response = reference::ExportLogsServiceResponse {
            partial_success: Some(reference::PartialSuccess {
                rejected_log_records: 3,
                error_message: "too old".into(),
            }),
        };
        let expected = Some(Rejected { records: 3, message: "too old".into() });
        assert_eq!(rejected(Encoding::Protobuf, &response.encode_to_vec()), expected);
        let json = br#"{"partialSuccess":{"rejectedLogRecords":"3","errorMessage":"too old"}}"#;
        assert_eq!(rejected(Encoding::Json, json), expected);
        let number = br#"{"partialSuccess":{"rejectedLogRecords":3,"errorMessage":"too old"},"extra":1}"#;
        assert_eq!(rejected(Encoding::Json, number), expected);
        for nothing in
            [&b""[..], b"{}", br#"{"partialSuccess":{}}"#, br#"{"partialSuccess":{"rejectedLogRecords":"0"}}"#]
        {
            assert_eq!(rejected(Encoding::Json, nothing), None, "{}", String::from_utf8_lossy(nothing));
        }
        assert_eq!(rejected(Encoding::Protobuf, b""), None, "an empty response accepts everything");
        assert_eq!(rejected(Encoding::Protobuf, &[0x0a, 0x05, 0x08]), None, "truncated: not a response");
        assert_eq!(rejected(Encoding::Protobuf, &[0xff; 12]), None, "an over-long varint");
    }

    /// Found by fuzzing against prost (`fuzz/`, target `otlp`): a `partial_success` that occurs twice was read from
    /// its first occurrence only, where protobuf merges them (the later values win).
    #[test]
    fn a_repeated_partial_success_is_merged_as_protobuf_merges_it() {
        let twice = [0x0a, 0x04, 0x08, 0x01, 0x12, 0x00, 0x0a, 0x04, 0x08, 0x00, 0x12, 0x00];
        assert_eq!(
            reference::ExportLogsServiceResponse::decode(&twice[..])
                .unwrap()
                .partial_success
                .unwrap()
                .rejected_log_records,
            0
        );
        assert_eq!(rejected(Encoding::Protobuf, &twice), None, "0 records rejected in the end");
        let first = reference::PartialSuccess { rejected_log_records: 3, error_message: "too old".into() };
        let second = reference::PartialSuccess { rejected_log_records: 5, error_message: String::new() };
        let mut body = reference::ExportLogsServiceResponse { partial_success: Some(first) }.encode_to_vec();
        body.extend(reference::ExportLogsServiceResponse { partial_success: Some(second) }.encode_to_vec());
        let merged = reference::ExportLogsServiceResponse::decode(&body[..]).unwrap().partial_success.unwrap();
        let want = Rejected { records: merged.rejected_log_records as u64, message: merged.error_message };
        assert_eq!(want, Rejected { records: 5, message: "too old".into() }, "an absent field keeps its value");
        assert_eq!(rejected(Encoding::Protobuf, &body), Some(want));
    }
}
