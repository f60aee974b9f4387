//! Finding audit events in what operators have at hand: the one reader behind `egressctl audit …`, also used by the
//! harness on a real Envoy's log.
//!
//! One input line may be
//! - **NDJSON**: the line is one event, as the collector sink posts it (or re-serialized, e.g. by `jq -c`);
//! - **a log line in any format**: Envoy's default (`[time][thread][info][wasm] [source…:line] wasm log <plugin>
//!   <root id>: egress-audit: {json}`), Istio's (`time\tinfo\tenvoy wasm …\twasm log …: egress-audit:
//!   {json}\tthread=N`), behind `kubectl --timestamps`/`--prefix` or any other prefix; whitespace-separated text may
//!   follow the event (Istio's `thread=N`);
//! - **a JSON log line** whose top-level string members hold such a line (Istio's `logAsJson`: `"msg"`);
//! - **an OTLP/JSON line** as the OpenTelemetry Collector's `file` exporter writes it: one `ExportLogsServiceRequest`
//!   (`{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"stringValue":"…"}}]}]}]}`) holding any number of
//!   records, each body an event or a log line as above (the audit filter's OTLP sink, or a `filelog` receiver
//!   tailing Envoy's log). So one line gives zero or more events.
//!
//! **Where an event starts.** Every event the filters write begins with [`MARKER`], `{"schema":"egress-audit/`: the
//! event's JSON is written `schema` first (`egress_core::audit`'s `ToJson`, like its serde order), compact. The text
//! before it cannot contain the marker: Envoy's prefix is timestamps, levels, source locations and plugin names and
//! root ids (Kubernetes names: no `"`), and the filter's own `egress-audit: `. Inside the event the marker cannot occur
//! either, except at its start: a JSON string holds no unescaped `"`, so a path or header value carrying
//! `{"schema":"egress-audit/` is written `{\"schema\":\"egress-audit/`. Hence the first marker of a line is where its
//! event starts, whatever the plugin is called (Istio's `istio-system.egress-audit`, a name holding `egress-audit: `
//! twice, the suite's `egress-suite` root id) and whatever the request carried. The event is parsed from there with a
//! JSON parser, which finds its end; what follows must be nothing or start with whitespace, and may hold further
//! events (never seen from Envoy, which writes one message per line; refusing `{…}[2026…` catches two lines glued
//! together, which would otherwise lose the second silently). A caveat no reader can lift: Envoy at `debug`/`trace`
//! prints request headers verbatim, so a client could plant a line that looks like an event there; read logs at the
//! filter's level (`info`) or the collector's output.
//!
//! **What is not an event.** A line without the marker that is not a JSON object, or a JSON object that is neither an
//! event, nor an OTLP export holding one, nor a log record holding one, is other log output (Envoy's, pilot-agent's,
//! the filter's own `egress-audit: configured …`, the continuation of a multi-line message): [`Line::Other`],
//! counted, never an error. Log formats are configurable and wrapped by other tools, so no test of "is this an Envoy
//! log line" is exact; the marker is. A line that should hold an event and does not parse — the marker followed by a
//! truncated or malformed event, an event of another schema version, a line starting with `{` that is neither JSON
//! nor holds the marker, an OTLP export whose event body does not parse — is an error naming its line (the caller may
//! skip such lines; an OTLP line is skipped whole).

use egress_core::audit::{AuditEvent, SCHEMA};
use serde_json::Value;
use std::io::BufRead;

/// How every event the filters write begins (see the module docs for why its first occurrence is the event's start).
pub const MARKER: &str = "{\"schema\":\"egress-audit/";

/// What one input line holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// Empty or only whitespace.
    Blank,
    /// Other log output: no event, and nothing that claims to be one.
    Other,
    /// One event or more (an OTLP export may hold many).
    Events(Vec<AuditEvent>),
}

/// One input line (a trailing `\r\n` or `\n` is ignored). `Err` names what is wrong with a line that should hold an
/// event: see the module docs.
pub fn parse_line(line: &str) -> Result<Line, String> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(Line::Blank);
    }
    let events = if line.starts_with(MARKER) || !line.starts_with('{') {
        // NDJSON as the filters write it, or a log line with any prefix.
        events_in(line)?
    } else {
        json_line(line)?
    };
    Ok(if events.is_empty() { Line::Other } else { Line::Events(events) })
}

/// Every event in `text` (a log line, or an OTLP record's body), each starting at the marker; none when it has no
/// marker.
pub fn events_in(text: &str) -> Result<Vec<AuditEvent>, String> {
    let mut events = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(MARKER) {
        let (event, end) = event_at(&rest[start..])?;
        events.push(event);
        rest = &rest[start + end..];
        if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
            let shown: String = rest.chars().take(40).collect();
            return Err(format!("text right after the event: `{shown}`"));
        }
    }
    Ok(events)
}

/// The event at the start of `json` (which starts with the marker) and the byte length it took.
fn event_at(json: &str) -> Result<(AuditEvent, usize), String> {
    // The version is checked first: an event of another version would otherwise fail on some field, obscurely.
    let version = json.get(MARKER.len()..).and_then(|rest| rest.split('"').next()).unwrap_or_default();
    let schema = format!("egress-audit/{version}");
    if schema != SCHEMA {
        return Err(format!("schema `{schema}`, expected `{SCHEMA}`"));
    }
    let mut stream = serde_json::Deserializer::from_str(json).into_iter::<AuditEvent>();
    match stream.next() {
        Some(Ok(event)) => Ok((event, stream.byte_offset())),
        Some(Err(e)) => Err(format!("not an audit event: {e}")),
        None => Err("not an audit event: nothing after the marker".into()),
    }
}

/// A line starting with `{` but not with the marker: a re-serialized event, an OTLP export, a JSON log line, or
/// another JSON record.
fn json_line(line: &str) -> Result<Vec<AuditEvent>, String> {
    let value: Value = match serde_json::from_str(line) {
        Ok(value) => value,
        // A log format that happens to start with `{` (`{time} … egress-audit: {json}`).
        Err(_) if line.contains(MARKER) => return events_in(line),
        Err(e) => return Err(format!("a line starting with `{{` but not JSON: {e}")),
    };
    let Value::Object(members) = &value else {
        return Err("a line starting with `{` but not a JSON object".into());
    };
    if let Some(schema) = members.get("schema") {
        if schema.as_str() != Some(SCHEMA) {
            return Err(format!(
                "schema `{}`, expected `{SCHEMA}`",
                schema.as_str().map_or(schema.to_string(), str::to_string)
            ));
        }
        return serde_json::from_value(value).map(|e| vec![e]).map_err(|e| format!("not an audit event: {e}"));
    }
    if members.contains_key("resourceLogs") || members.contains_key("resource_logs") {
        return otlp_events(&value);
    }
    let mut events = Vec::new();
    for (key, member) in members {
        if let Some(text) = member.as_str() {
            events.extend(events_in(text).map_err(|e| format!("`{key}`: {e}"))?);
        }
    }
    Ok(events)
}

/// The events in the records of an OTLP/JSON `ExportLogsServiceRequest` (opentelemetry-proto `collector/logs/v1`;
/// field names in the JSON mapping's lowerCamelCase, or the proto names a receiver must also accept). Records whose
/// body is not a string holding an event are other log output.
fn otlp_events(export: &Value) -> Result<Vec<AuditEvent>, String> {
    let mut events = Vec::new();
    for (r, resource) in list(export, "resourceLogs", "resource_logs")?.iter().enumerate() {
        for (s, scope) in list(resource, "scopeLogs", "scope_logs")?.iter().enumerate() {
            for (l, record) in list(scope, "logRecords", "log_records")?.iter().enumerate() {
                let body = record.get("body");
                let Some(text) = body.and_then(|b| b.get("stringValue").or_else(|| b.get("string_value"))) else {
                    continue;
                };
                let found = text
                    .as_str()
                    .map_or(Ok(Vec::new()), events_in)
                    .map_err(|e| format!("resourceLogs[{r}].scopeLogs[{s}].logRecords[{l}].body: {e}"))?;
                events.extend(found);
            }
        }
    }
    Ok(events)
}

/// The repeated field `camel` (or `snake`) of an OTLP message: absent or `null` is empty.
fn list<'a>(message: &'a Value, camel: &str, snake: &str) -> Result<&'a [Value], String> {
    match message.get(camel).or_else(|| message.get(snake)) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(format!("not an OTLP logs export: `{camel}` is not an array")),
    }
}

/// What [`read_events`] went through.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Read {
    /// Events passed on.
    pub events: usize,
    /// Lines of other log output ([`Line::Other`]).
    pub other_lines: usize,
    /// Lines that should have held an event but did not parse, skipped (only with `skip_invalid`).
    pub invalid_lines: usize,
    /// The number of the first of those.
    pub first_invalid: Option<usize>,
}

/// Why [`read_events`] stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// Reading failed: `source: why`.
    Io(String),
    /// A line that should hold an event does not: `source:line: why`.
    Invalid(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(message) | ReadError::Invalid(message) => f.write_str(message),
        }
    }
}

/// Reads `reader` line by line (one line in memory at a time, so any size), calling `each` for every event. A line
/// that should hold an event but does not parse stops the reading, or with `skip_invalid` is skipped and counted;
/// other log output is counted.
pub fn read_events(
    mut reader: impl BufRead,
    source: &str,
    skip_invalid: bool,
    mut each: impl FnMut(&AuditEvent),
) -> Result<Read, ReadError> {
    let mut read = Read::default();
    let mut buffer = Vec::new();
    for number in 1.. {
        buffer.clear();
        if reader.read_until(b'\n', &mut buffer).map_err(|e| ReadError::Io(format!("{source}: {e}")))? == 0 {
            break;
        }
        match parse_line(&String::from_utf8_lossy(&buffer)) {
            Ok(Line::Blank) => {}
            Ok(Line::Other) => read.other_lines += 1,
            Ok(Line::Events(events)) => {
                events.iter().for_each(&mut each);
                read.events += events.len();
            }
            Err(_) if skip_invalid => {
                read.invalid_lines += 1;
                read.first_invalid.get_or_insert(number);
            }
            Err(message) => return Err(ReadError::Invalid(format!("{source}:{number}: {message}"))),
        }
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use egress_core::audit::{Decision, Destination, EventKind, Gateway, Request, Response, Source, Upstream};
    use egress_core::state::ToJson;

    /// An HTTP event with `path`, written by the filters' own writer (what reaches Envoy's log).
    fn event(host: &str, path: &str, action: &str) -> AuditEvent {
        AuditEvent {
            schema: SCHEMA.into(),
            time: "2026-11-25T10:00:00.123Z".into(),
            id: "0d1f5c3e-6a8b-4c2d-9e7f-1a2b3c4d5e6f".into(),
            kind: EventKind::Http,
            tunnel: false,
            gateway: Gateway { node: Some("egress-gateway-0".into()) },
            source: Source::default(),
            destination: Destination {
                host: Some(host.into()),
                port: Some(80),
                scheme: Some("http".into()),
                sni: None,
            },
            request: Some(Request { method: "GET".into(), path: path.into(), ..Request::default() }),
            decision: Some(Decision {
                action: action.into(),
                reason: "x".into(),
                rule: None,
                mode: None,
                policy: None,
                detail: None,
            }),
            redirects: Vec::new(),
            response: Response::default(),
            duration_ms: Some(1),
            upstream: Upstream::default(),
        }
    }

    fn one(line: &str) -> AuditEvent {
        match parse_line(line) {
            Ok(Line::Events(mut events)) if events.len() == 1 => events.remove(0),
            other => panic!("expected one event from {line}: {other:?}"),
        }
    }

    fn hosts(line: &str) -> Vec<String> {
        match parse_line(line) {
            Ok(Line::Events(events)) => events.iter().map(|e| e.destination.host.clone().unwrap()).collect(),
            other => panic!("expected events from {line}: {other:?}"),
        }
    }

    #[test]
    fn the_marker_is_how_the_writer_starts_every_event() {
        let json = event("a.com", "/", "allow").to_json();
        assert!(json.starts_with(MARKER), "{json}");
        assert_eq!(serde_json::to_string(&event("a.com", "/", "allow")).unwrap(), json, "serde's order too");
    }

    #[test]
    fn plugin_names_holding_the_prefix_and_paths_holding_the_marker_do_not_move_the_start() {
        // A path (and a header) carrying the filter's prefix, a fake event start and a whole fake event.
        let planted = r#"/egress-audit: {"schema":"egress-audit/v1","kind":"tls"} {\"schema\""#;
        let mut planted_event = event("evil.example", planted, "deny");
        planted_event.request.as_mut().unwrap().headers.insert(
            "user-agent".into(),
            r#"egress-audit: {"schema":"egress-audit/v1","destination":{"host":"forged"}}"#.into(),
        );
        let json = planted_event.to_json();
        assert_eq!(json.matches(MARKER).count(), 1, "written escaped: {json}");
        for prefix in [
            "[2026-11-25 10:00:00.123][12][info][wasm] [source/extensions/common/wasm/context.cc:1192] wasm log \
             istio-system.egress-audit egress-audit: egress-audit: ",
            // A plugin called after the filter, twice over.
            "[2026-11-25 10:00:00.123][12][info][wasm] [source/extensions/common/wasm/context.cc:1192] wasm log \
             egress-audit: egress-audit: egress-audit: egress-audit: ",
            "2026-11-25T10:00:00.123456Z\tinfo\tenvoy wasm external/envoy/source/extensions/common/wasm/context.cc:1192\t\
             wasm log istio-system.egress-audit egress-audit: egress-audit: ",
            "2026-11-25T10:00:00.123456789Z [pod/egress-gateway-0/istio-proxy] ",
            "",
        ] {
            let parsed = one(&format!("{prefix}{json}"));
            assert_eq!(parsed, planted_event, "{prefix}");
            assert_eq!(parsed.request.unwrap().path, planted);
        }
    }

    #[test]
    fn istio_suffixes_crlf_and_blank_lines() {
        let json = event("a.com", "/", "allow").to_json();
        let istio = format!("2026-11-25T10:00:00.123456Z\tinfo\tenvoy wasm x.cc:1192\twasm log p r: egress-audit: {json}\tthread=20\r\n");
        assert_eq!(hosts(&istio), ["a.com"]);
        assert_eq!(hosts(&format!("{json}\r\n")), ["a.com"]);
        // A log format that starts with `{` without being JSON.
        assert_eq!(hosts(&format!("{{2026-11-25}} egress-audit: {json}")), ["a.com"]);
        assert_eq!(parse_line("  \r\n"), Ok(Line::Blank));
        assert_eq!(parse_line(""), Ok(Line::Blank));
        // Two events on one line, separated by whitespace: both. Glued to another line's text: an error, not a loss.
        let other = event("b.com", "/", "deny").to_json();
        assert_eq!(hosts(&format!("x: {json} y: {other}")), ["a.com", "b.com"]);
        let glued = format!("x: {json}[2026-11-25 10:00:00.124][12][info][wasm] x: {other}");
        assert_eq!(
            parse_line(&glued).unwrap_err(),
            "text right after the event: `[2026-11-25 10:00:00.124][12][info][wasm`"
        );
    }

    #[test]
    fn other_log_output_is_not_an_event() {
        for line in [
            "[2026-11-25 10:00:00.001][1][info][main] [source/server/server.cc:430] initializing epoch 0",
            "[2026-11-25 10:00:01.000][12][warning][wasm] [source/extensions/common/wasm/context.cc:1195] wasm log \
             istio-system.egress-audit egress-audit: egress-audit: cannot dispatch to audit_collector: BadArgument",
            "2026-11-25T10:00:00.123456Z\tinfo\txdsproxy\tconnected to upstream XDS server: istiod.istio-system.svc:15012",
            "  envoy.filters.http: envoy.bandwidth_limit, envoy.buffer",
            "not an event",
            r#"{"level":"info","time":"2026-11-25T10:00:00.123456Z","scope":"envoy main","msg":"starting workers","thread":1}"#,
            r#"{"resourceLogs":[{"resource":{},"scopeLogs":[{"scope":{},"logRecords":[{"body":{"stringValue":"hello"}},{"body":{"intValue":"3"}},{}]}]}]}"#,
        ] {
            assert_eq!(parse_line(line), Ok(Line::Other), "{line}");
        }
    }

    #[test]
    fn lines_that_should_hold_an_event_and_do_not_are_errors() {
        let json = event("a.com", "/", "allow").to_json();
        let truncated =
            format!("[2026-11-25 10:00:00.123][12][info][wasm] wasm log p r: egress-audit: {}", &json[..60]);
        assert!(parse_line(&truncated).unwrap_err().starts_with("not an audit event: EOF while parsing"));
        let v2 = json.replace(SCHEMA, "egress-audit/v2");
        assert_eq!(
            parse_line(&format!("x: {v2}")).unwrap_err(),
            "schema `egress-audit/v2`, expected `egress-audit/v1`"
        );
        assert_eq!(parse_line(&v2).unwrap_err(), "schema `egress-audit/v2`, expected `egress-audit/v1`");
        assert!(parse_line(r#"{"schema":"egress-audit/v1"}"#).unwrap_err().contains("missing field"));
        assert_eq!(parse_line(r#"{"schema": 1}"#).unwrap_err(), "schema `1`, expected `egress-audit/v1`");
        assert!(parse_line("{not json").unwrap_err().starts_with("a line starting with `{` but not JSON"));
    }

    #[test]
    fn reserialized_ndjson_and_json_log_lines() {
        let original = event("a.com", "/x", "deny");
        let pretty_spaced = serde_json::to_value(&original).unwrap();
        // `jq -cS`: keys sorted, so `schema` is not first.
        let sorted: std::collections::BTreeMap<String, Value> = serde_json::from_value(pretty_spaced).unwrap();
        let sorted = serde_json::to_string(&sorted).unwrap();
        assert!(!sorted.starts_with(MARKER));
        assert_eq!(one(&sorted), original);
        // Istio's `logAsJson`: the whole Envoy message, JSON-escaped, in `msg`.
        let message = format!("wasm log istio-system.egress-audit egress-audit: egress-audit: {}", original.to_json());
        let line = serde_json::json!({"level": "info", "time": "2026-11-25T10:00:00.123456Z", "scope": "envoy wasm",
            "msg": message, "caller": "external/envoy/source/extensions/common/wasm/context.cc:1192", "thread": 20});
        assert_eq!(one(&line.to_string()), original);
    }

    /// An OTLP/JSON line as the Collector's `file` exporter writes it: one export request, its records' bodies
    /// given.
    fn otlp_line(bodies: &[&str]) -> String {
        let records: Vec<Value> = bodies
            .iter()
            .map(|body| {
                serde_json::json!({"timeUnixNano": "1795600800123000000", "observedTimeUnixNano": "1795600800123000000",
                    "severityNumber": 9, "severityText": "INFO", "body": {"stringValue": body},
                    "attributes": [{"key": "log.record.uid", "value": {"stringValue": "0d1f"}}], "traceId": "", "spanId": ""})
            })
            .collect();
        serde_json::json!({"resourceLogs": [{"resource": {"attributes": [{"key": "service.name",
            "value": {"stringValue": "egress-gateway"}}]}, "scopeLogs": [{"scope": {"name": "egress-audit",
            "version": "0.1.0"}, "logRecords": records}], "schemaUrl": ""}]})
        .to_string()
    }

    #[test]
    fn otlp_lines_hold_any_number_of_events() {
        let a = event("a.com", "/", "allow").to_json();
        let b = event("b.com", r#"/{"schema":"egress-audit/v1"}"#, "deny").to_json();
        let envoy_line = format!("[2026-11-25 10:00:00.123][12][info][wasm] wasm log p r: egress-audit: {b}");
        let line = otlp_line(&[&a, "some other log record", &envoy_line, &a]);
        assert!(!line.contains(MARKER), "escaped in the JSON string: {line}");
        assert_eq!(hosts(&line), ["a.com", "b.com", "a.com"]);
        // Proto field names, as a receiver must also accept them.
        let snake = line.replace("resourceLogs", "resource_logs").replace("scopeLogs", "scope_logs");
        let snake = snake.replace("logRecords", "log_records").replace("stringValue", "string_value");
        assert_eq!(hosts(&snake), ["a.com", "b.com", "a.com"]);
        let broken = otlp_line(&[&a, &b[..80]]);
        let err = parse_line(&broken).unwrap_err();
        assert!(err.starts_with("resourceLogs[0].scopeLogs[0].logRecords[1].body: not an audit event: EOF"), "{err}");
        assert!(parse_line(r#"{"resourceLogs": 3}"#).unwrap_err().starts_with("not an OTLP logs export"));
    }

    #[test]
    fn read_events_counts_what_it_skips_and_names_bad_lines() {
        let a = event("a.com", "/", "allow").to_json();
        let text = format!(
            "[2026-11-25 10:00:00.001][1][info][main] starting workers\n{a}\r\n\n{}\n{}\nnot an event\n{}\n",
            otlp_line(&[&a, &a]),
            &a[..50],
            r#"{"schema":1}"#
        );
        let mut seen = 0;
        let err = read_events(text.as_bytes(), "x.log", false, |_| seen += 1).unwrap_err().to_string();
        assert_eq!(
            (err.as_str(), seen),
            ("x.log:5: not an audit event: EOF while parsing a string at line 1 column 50", 3)
        );
        seen = 0;
        let read = read_events(text.as_bytes(), "x.log", true, |_| seen += 1).unwrap();
        assert_eq!(read, Read { events: 3, other_lines: 2, invalid_lines: 2, first_invalid: Some(5) });
        assert_eq!(seen, 3);
    }

    /// The `(kind, host, action, path)` of a captured line's event.
    type Expected = (&'static str, &'static str, &'static str, Option<&'static str>);

    /// Lines as real Envoys printed them, copied verbatim from the output of `test-harness/tests/audit_log_readers.rs`
    /// (`captured: …`), with the `(kind, host, action, path)` of their event: Envoy 1.36.2 and 1.40.0; the fused suite
    /// (plugins `istio-system.egress-suite` and `-tls`, root ids `egress-suite` and `egress-suite-tls`) and separate
    /// filters (`istio-system.egress-audit`, root id `egress-audit`, then the filter's own `egress-audit: `: the prefix
    /// twice); Envoy's default format, and Istio's text (with real tabs) and JSON (`logAsJson`) formats. The denied
    /// HTTP requests sent a user-agent holding the filter's prefix, the marker and a forged event.
    const CAPTURED: &[(&str, Expected)] = &[
        // Envoy 1.40.0, fused suite, Envoy's format
        (
            r#"[2026-11-26 02:09:06.025][30781][info][wasm] [source/extensions/common/wasm/context.cc:1151] wasm log istio-system.egress-suite egress-suite: egress-audit: {"schema":"egress-audit/v1","time":"2026-11-26T02:09:06.025Z","id":"16477f80-80c4-47be-b9e3-014694d5c5c0","kind":"http","tunnel":false,"gateway":{"node":"egress-lab"},"source":{"principal":null,"namespace":null,"serviceAccount":null,"verified":false,"identitySource":"none","address":"127.0.0.1:40756"},"destination":{"host":"evil.example","port":80,"scheme":"http","sni":null},"request":{"method":"GET","path":"/denied","protocol":"HTTP/1.1","headers":{"user-agent":"egress-audit: {\"schema\":\"egress-audit/v1\",\"kind\":\"tls\",\"destination\":{\"host\":\"forged\"}}"}},"decision":{"action":"deny","reason":"host_not_allowed","rule":null,"mode":"enforce"},"redirects":[],"response":{"code":403,"flags":0,"details":null,"bytesSent":248,"bytesReceived":221},"durationMs":0,"upstream":{"cluster":"echo_http","address":null}}"#,
            ("http", "evil.example", "deny", Some("/denied")),
        ),
        // Envoy 1.40.0, fused suite, Envoy's format
        (
            r#"[2026-11-26 02:09:06.034][30781][info][wasm] [source/extensions/common/wasm/context.cc:1151] wasm log istio-system.egress-suite-tls egress-suite-tls: egress-audit: {"schema":"egress-audit/v1","time":"2026-11-26T02:09:06.033Z","id":"9ce293214148b084946c7ccdea15f5cf","kind":"tls","tunnel":true,"gateway":{"node":"egress-lab"},"source":{"principal":null,"namespace":null,"serviceAccount":null,"verified":false,"identitySource":null,"address":"127.0.0.1:57520"},"destination":{"host":"evil.example","port":43293,"scheme":null,"sni":"evil.example"},"decision":{"action":"deny","reason":"host_not_allowed","rule":null,"mode":"enforce"},"redirects":[],"response":{"code":null,"flags":0,"details":null,"bytesSent":0,"bytesReceived":0},"durationMs":0,"upstream":{"cluster":null,"address":null}}"#,
            ("tls", "evil.example", "deny", None),
        ),
        // Envoy 1.36.2, separate filters, Envoy's format
        (
            r#"[2026-11-26 02:10:15.072][3673][info][wasm] [source/extensions/common/wasm/context.cc:1149] wasm log istio-system.egress-audit egress-audit: egress-audit: {"schema":"egress-audit/v1","time":"2026-11-26T02:10:15.072Z","id":"92b8d6fb-8d0c-4005-9f0d-2d0f6c1fafb1","kind":"http","tunnel":false,"gateway":{"node":"egress-lab"},"source":{"principal":null,"namespace":null,"serviceAccount":null,"verified":false,"identitySource":"none","address":"127.0.0.1:51026"},"destination":{"host":"httpbin.org","port":80,"scheme":"http","sni":null},"request":{"method":"GET","path":"/redirect-to","protocol":"HTTP/1.1"},"decision":{"action":"allow","reason":"allowed","rule":"httpbin","mode":"enforce"},"redirects":[{"status":302,"location":"http://eu.httpbin.org/next","action":"allow","reason":"allowed","followed":false}],"response":{"code":302,"flags":0,"details":"via_upstream","bytesSent":525,"bytesReceived":202},"durationMs":1,"upstream":{"cluster":"echo_http","address":"127.0.0.1:45871"}}"#,
            ("http", "httpbin.org", "allow", Some("/redirect-to")),
        ),
        // Envoy 1.36.2, separate filters, Envoy's format
        (
            r#"[2026-11-26 02:10:15.083][3673][info][wasm] [source/extensions/common/wasm/context.cc:1149] wasm log istio-system.egress-audit-tls egress-audit-tls: egress-audit: {"schema":"egress-audit/v1","time":"2026-11-26T02:10:15.083Z","id":"99e2fbca538ef9673436a3e4f43f364f","kind":"tls","tunnel":true,"gateway":{"node":"egress-lab"},"source":{"principal":null,"namespace":null,"serviceAccount":null,"verified":false,"identitySource":null,"address":"127.0.0.1:50194"},"destination":{"host":"a.httpbin.org","port":34911,"scheme":null,"sni":"a.httpbin.org"},"decision":{"action":"allow","reason":"allowed","rule":"httpbin","mode":"enforce"},"redirects":[],"response":{"code":null,"flags":0,"details":null,"bytesSent":0,"bytesReceived":0},"durationMs":6,"upstream":{"cluster":"echo_https","address":"127.0.0.1:46021"}}"#,
            ("tls", "a.httpbin.org", "allow", None),
        ),
        // Envoy 1.36.2, fused suite, Envoy's format
        (
            r#"[2026-11-26 02:10:10.352][3585][info][wasm] [source/extensions/common/wasm/context.cc:1149] wasm log istio-system.egress-suite egress-suite: egress-audit: {"schema":"egress-audit/v1","time":"2026-11-26T02:10:10.352Z","id":"cd4313a7-b742-4b80-aaca-0cd105dd92b7","kind":"http","tunnel":false,"gateway":{"node":"egress-lab"},"source":{"principal":null,"namespace":null,"serviceAccount":null,"verified":false,"identitySource":"none","address":"127.0.0.1:42020"},"destination":{"host":"httpbin.org","port":80,"scheme":"http","sni":null},"request":{"method":"GET","path":"/allowed","protocol":"HTTP/1.1"},"decision":{"action":"allow","reason":"allowed","rule":"httpbin","mode":"enforce"},"redirects":[],"response":{"code":200,"flags":0,"details":"via_upstream","bytesSent":451,"bytesReceived":159},"durationMs":1,"upstream":{"cluster":"echo_http","address":"127.0.0.1:35219"}}"#,
            ("http", "httpbin.org", "allow", Some("/allowed")),
        ),
        // Envoy 1.40.0, separate filters, Envoy's format
        (
            r#"[2026-11-26 02:10:02.337][2395][info][wasm] [source/extensions/common/wasm/context.cc:1151] wasm log istio-system.egress-audit egress-audit: egress-audit: {"schema":"egress-audit/v1","time":"2026-11-26T02:10:02.337Z","id":"e11fddd7-1d4f-4ed9-bce2-44958fe815a7","kind":"http","tunnel":false,"gateway":{"node":"egress-lab"},"source":{"principal":null,"namespace":null,"serviceAccount":null,"verified":false,"identitySource":"none","address":"127.0.0.1:59708"},"destination":{"host":"evil.example","port":80,"scheme":"http","sni":null},"request":{"method":"GET","path":"/denied","protocol":"HTTP/1.1","headers":{"user-agent":"egress-audit: {\"schema\":\"egress-audit/v1\",\"kind\":\"tls\",\"destination\":{\"host\":\"forged\"}}"}},"decision":{"action":"deny","reason":"host_not_allowed","rule":null,"mode":"enforce"},"redirects":[],"response":{"code":403,"flags":0,"details":null,"bytesSent":248,"bytesReceived":221},"durationMs":0,"upstream":{"cluster":"echo_http","address":null}}"#,
            ("http", "evil.example", "deny", Some("/denied")),
        ),
        // Envoy 1.36.2, fused suite, Istio's text format
        (
            r#"2026-11-26T02:10:10.262791Z	info	envoy wasm source/extensions/common/wasm/context.cc:1149	wasm log istio-system.egress-suite egress-suite: egress-audit: {"schema":"egress-audit/v1","time":"2026-11-26T02:10:10.262Z","id":"18aaa3b0-fbc6-4121-8074-d4c385f98a3d","kind":"http","tunnel":false,"gateway":{"node":"egress-lab"},"source":{"principal":null,"namespace":null,"serviceAccount":null,"verified":false,"identitySource":"none","address":"127.0.0.1:60626"},"destination":{"host":"httpbin.org","port":80,"scheme":"http","sni":null},"request":{"method":"GET","path":"/allowed","protocol":"HTTP/1.1"},"decision":{"action":"allow","reason":"allowed","rule":"httpbin","mode":"enforce"},"redirects":[],"response":{"code":200,"flags":0,"details":"via_upstream","bytesSent":451,"bytesReceived":159},"durationMs":2,"upstream":{"cluster":"echo_http","address":"127.0.0.1:38477"}}	thread=3579"#,
            ("http", "httpbin.org", "allow", Some("/allowed")),
        ),
        // Envoy 1.40.0, separate filters, Istio's text format
        (
            r#"2026-11-26T02:10:02.387507Z	info	envoy wasm source/extensions/common/wasm/context.cc:1151	wasm log istio-system.egress-audit-tls egress-audit-tls: egress-audit: {"schema":"egress-audit/v1","time":"2026-11-26T02:10:02.387Z","id":"1a5aab5bef17dc7e5d928dd726fc6e87","kind":"tls","tunnel":true,"gateway":{"node":"egress-lab"},"source":{"principal":null,"namespace":null,"serviceAccount":null,"verified":false,"identitySource":null,"address":"127.0.0.1:56876"},"destination":{"host":"evil.example","port":44051,"scheme":null,"sni":"evil.example"},"decision":{"action":"deny","reason":"host_not_allowed","rule":null,"mode":"enforce"},"redirects":[],"response":{"code":null,"flags":0,"details":null,"bytesSent":0,"bytesReceived":0},"durationMs":0,"upstream":{"cluster":null,"address":null}}	thread=2400"#,
            ("tls", "evil.example", "deny", None),
        ),
        // Envoy 1.36.2, separate filters, Istio's JSON format
        (
            r#"{"level":"info","time":"2026-11-26T02:10:17.232213Z","scope":"envoy wasm","msg":"wasm log istio-system.egress-audit egress-audit: egress-audit: {\"schema\":\"egress-audit/v1\",\"time\":\"2026-11-26T02:10:17.232Z\",\"id\":\"e0f54f62-7ae6-4275-9c76-d20dd7e22aba\",\"kind\":\"http\",\"tunnel\":false,\"gateway\":{\"node\":\"egress-lab\"},\"source\":{\"principal\":null,\"namespace\":null,\"serviceAccount\":null,\"verified\":false,\"identitySource\":\"none\",\"address\":\"127.0.0.1:37972\"},\"destination\":{\"host\":\"evil.example\",\"port\":80,\"scheme\":\"http\",\"sni\":null},\"request\":{\"method\":\"GET\",\"path\":\"/denied\",\"protocol\":\"HTTP/1.1\",\"headers\":{\"user-agent\":\"egress-audit: {\\\"schema\\\":\\\"egress-audit/v1\\\",\\\"kind\\\":\\\"tls\\\",\\\"destination\\\":{\\\"host\\\":\\\"forged\\\"}}\"}},\"decision\":{\"action\":\"deny\",\"reason\":\"host_not_allowed\",\"rule\":null,\"mode\":\"enforce\"},\"redirects\":[],\"response\":{\"code\":403,\"flags\":0,\"details\":null,\"bytesSent\":248,\"bytesReceived\":221},\"durationMs\":0,\"upstream\":{\"cluster\":\"echo_http\",\"address\":null}}","caller":"source/extensions/common/wasm/context.cc:1149","thread":3702}"#,
            ("http", "evil.example", "deny", Some("/denied")),
        ),
        // Envoy 1.40.0, fused suite, Istio's JSON format
        (
            r#"{"level":"info","time":"2026-11-26T02:09:27.130109Z","scope":"envoy wasm","msg":"wasm log istio-system.egress-suite-tls egress-suite-tls: egress-audit: {\"schema\":\"egress-audit/v1\",\"time\":\"2026-11-26T02:09:27.130Z\",\"id\":\"48e3c2ee6f55152d04357ab81e3cd92e\",\"kind\":\"tls\",\"tunnel\":true,\"gateway\":{\"node\":\"egress-lab\"},\"source\":{\"principal\":null,\"namespace\":null,\"serviceAccount\":null,\"verified\":false,\"identitySource\":null,\"address\":\"127.0.0.1:42746\"},\"destination\":{\"host\":\"evil.example\",\"port\":42329,\"scheme\":null,\"sni\":\"evil.example\"},\"decision\":{\"action\":\"deny\",\"reason\":\"host_not_allowed\",\"rule\":null,\"mode\":\"enforce\"},\"redirects\":[],\"response\":{\"code\":null,\"flags\":0,\"details\":null,\"bytesSent\":0,\"bytesReceived\":0},\"durationMs\":1,\"upstream\":{\"cluster\":null,\"address\":null}}","caller":"source/extensions/common/wasm/context.cc:1151","thread":31921}"#,
            ("tls", "evil.example", "deny", None),
        ),
    ];

    /// Other output of the same Envoy 1.36.2 runs (separate filters), in the three formats: no event, though the
    /// audit filter's configuration line carries `egress-audit: ` twice and the allow-list's line a `"`.
    const CAPTURED_OTHER: &[&str] = &[
        r#"[2026-11-26 02:10:27.290][3835][info][main] [source/server/server.cc:467] initializing epoch 0 (base id=18986031, hot restart version=11.104)"#,
        r#"[2026-11-26 02:10:29.882][3835][info][wasm] [source/extensions/common/wasm/context.cc:1149] wasm log egress-audit: egress-audit: configured egress-audit; audit log true, collector None"#,
        r#"[2026-11-26 02:10:29.933][3835][info][wasm] [source/extensions/common/wasm/context.cc:1149] wasm log egress-audit-tls: egress-audit: configured egress-audit-tls; audit log true, collector None"#,
        r#"[2026-11-26 02:10:30.021][3874][info][wasm] [source/extensions/common/wasm/context.cc:1149] wasm log istio-system.egress-allowlist-tls egress-allowlist-tls: egress-allowlist: closing TLS connection to Some("evil.example"): host_not_allowed"#,
        r#"2026-11-26T02:10:27.360865Z	info	envoy main source/server/server.cc:467	initializing epoch 0 (base id=208582845, hot restart version=11.104)	thread=3836"#,
        r#"2026-11-26T02:10:30.013240Z	info	envoy wasm source/extensions/common/wasm/context.cc:1149	wasm log egress-audit: egress-audit: configured egress-audit; audit log true, collector None	thread=3836"#,
        r#"{"level":"info","time":"2026-11-26T02:10:44.944228Z","scope":"envoy main","msg":"initializing epoch 0 (base id=192333780, hot restart version=11.104)","caller":"source/server/server.cc:467","thread":5049}"#,
        r#"{"level":"info","time":"2026-11-26T02:10:45.907718Z","scope":"envoy wasm","msg":"wasm log egress-audit: egress-audit: configured egress-audit; audit log true, collector None","caller":"source/extensions/common/wasm/context.cc:1149","thread":5049}"#,
    ];

    #[test]
    fn lines_captured_from_real_envoys() {
        for (line, (kind, host, action, path)) in CAPTURED {
            let event = one(line);
            let read = (
                if event.kind == EventKind::Http { "http" } else { "tls" },
                event.destination.host.as_deref(),
                event.decision.as_ref().map(|d| d.action.as_str()),
                event.request.as_ref().map(|r| r.path.as_str()),
            );
            assert_eq!(read, (*kind, Some(*host), Some(*action), *path), "{line}");
            if let Some(request) = event.request.as_ref().filter(|_| *host == "evil.example") {
                let planted = request.headers.get("user-agent").map(String::as_str).unwrap_or_default();
                assert!(planted.starts_with(r#"egress-audit: {"schema":"egress-audit/v1","kind":"tls""#), "{line}");
            }
        }
        for line in CAPTURED_OTHER {
            assert_eq!(parse_line(line), Ok(Line::Other), "{line}");
        }
        // All of them as one log with CRLF line endings.
        let lines = CAPTURED.iter().map(|(line, _)| *line).chain(CAPTURED_OTHER.iter().copied());
        let log: String = lines.map(|line| format!("{line}\r\n")).collect();
        let mut hosts_read = Vec::new();
        let read =
            read_events(log.as_bytes(), "captured", false, |e| hosts_read.push(e.destination.host.clone())).unwrap();
        let want =
            Read { events: CAPTURED.len(), other_lines: CAPTURED_OTHER.len(), invalid_lines: 0, first_invalid: None };
        assert_eq!(read, want);
        let hosts_sent: Vec<Option<String>> =
            CAPTURED.iter().map(|(_, (_, host, _, _))| Some(host.to_string())).collect();
        assert_eq!(hosts_read, hosts_sent);
        // As OTLP records: an Envoy line (a `filelog` receiver's body), the bare event (the OTLP sink's), other output.
        let (line, (_, host, _, _)) = CAPTURED[2];
        let bare = &line[line.find(MARKER).unwrap()..];
        let otlp = otlp_line(&[line, bare, CAPTURED_OTHER[1], CAPTURED[3].0]);
        assert_eq!(hosts(&otlp), [host, host, CAPTURED[3].1 .1]);
        // Cut short, as a line-splitting log pipeline might.
        let truncated = &CAPTURED[0].0[..400];
        assert!(parse_line(truncated).unwrap_err().starts_with("not an audit event: EOF while parsing"), "{truncated}");
    }
}
