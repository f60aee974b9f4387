//! `egressctl::audit_log::parse_line` and `read_events`, the reader behind `egressctl audit` (operator input: log
//! lines in any format, holding whatever clients put in their requests).
//!
//! Input: a selector byte, then text.
//! - Selector even: the text is a log (one or more lines). Properties: reading never panics; a line reads the same
//!   with surrounding whitespace and `\r\n`; `read_events` over the text counts, line by line, what `parse_line`
//!   finds; every event read is written back by the filters' own writer (`ToJson`) exactly as `serde_json` writes
//!   it, and reads back from that JSON alone as the same one event.
//! - Selector odd: an event is built from `\0`-separated fields of the text (host, path, a header, a redirect
//!   Location, a log prefix …), written by the filters' writer and put on a log line behind the prefix (which holds no
//!   marker: Envoy's and Istio's prefixes cannot, see the reader's docs) and before Istio's `\tthread=N`, bare, and in
//!   Istio's `logAsJson` and an OTLP/JSON export. Each line must read as exactly that event, whatever the fields
//!   hold (planted markers, escapes, a fake event): the reader's marker rule.

use egress_core::audit::{
    AuditEvent, Decision, Destination, EventKind, Gateway, RedirectHop, Request, Response, Source, Upstream, SCHEMA,
};
use egress_core::state::ToJson;
use egressctl::audit_log::{parse_line, read_events, Line, MARKER};

pub fn run(data: &[u8]) {
    let (selector, rest) = crate::selector(data);
    let Some(text) = crate::text(rest) else { return };
    if selector & 1 == 0 {
        read_log(text);
    } else {
        planted(selector, text);
    }
}

fn read_log(text: &str) {
    let mut found = Vec::new();
    let (mut events, mut other) = (0, 0);
    let mut first_invalid = None;
    for (number, line) in text.split_inclusive('\n').enumerate() {
        let parsed = parse_line(line);
        assert_eq!(parse_line(&format!(" \t{}\r\n", line.trim())), parsed, "{line:?}: whitespace matters");
        match &parsed {
            Ok(Line::Events(read)) => {
                assert!(!read.is_empty());
                events += read.len();
                for event in read {
                    check_written_back(event);
                }
                found.extend(read.iter().cloned());
            }
            Ok(Line::Other) => other += 1,
            Ok(Line::Blank) => assert!(line.trim().is_empty()),
            Err(_) => {
                first_invalid.get_or_insert(number + 1);
            }
        }
    }
    let mut seen = Vec::new();
    let read = read_events(text.as_bytes(), "fuzz", true, |event| seen.push(event.clone()))
        .unwrap_or_else(|e| panic!("skipping invalid lines, reading fails: {e}"));
    assert_eq!((read.events, read.other_lines, read.first_invalid), (events, other, first_invalid));
    assert_eq!(seen, found);
}

/// An event read is written back as `serde_json` writes it, and reads back from that JSON.
fn check_written_back(event: &AuditEvent) {
    assert_eq!(event.schema, SCHEMA);
    let json = event.to_json();
    assert_eq!(json, serde_json::to_string(event).unwrap(), "the writer and serde_json differ");
    assert!(json.starts_with(MARKER));
    assert_eq!(json.matches(MARKER).count(), 1, "a marker written unescaped: {json}");
    assert_eq!(parse_line(&json), Ok(Line::Events(vec![event.clone()])), "{json}");
}

fn planted(selector: u8, text: &str) {
    let fields: Vec<&str> = text.split('\0').collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or_default();
    let optional = |i: usize| fields.get(i).map(|f| f.to_string());
    let prefix = field(0);
    if prefix.contains(MARKER) || prefix.contains('\n') {
        return;
    }
    let mut request = Request {
        method: field(1).to_string(),
        path: field(2).to_string(),
        query: optional(3),
        protocol: Some("HTTP/1.1".into()),
        ..Request::default()
    };
    if !field(4).is_empty() {
        request.headers.insert(field(4).to_ascii_lowercase(), field(5).to_string());
    }
    let http = selector & 2 == 0;
    let event = AuditEvent {
        schema: SCHEMA.into(),
        time: "2026-11-25T10:00:00.123Z".into(),
        id: field(6).to_string(),
        kind: if http { EventKind::Http } else { EventKind::Tls },
        tunnel: selector & 4 != 0,
        gateway: Gateway { node: optional(7) },
        source: Source { principal: optional(8), verified: selector & 8 != 0, ..Source::default() },
        destination: Destination {
            host: optional(9),
            port: Some(u16::from(selector)),
            scheme: http.then(|| "http".into()),
            sni: optional(10),
        },
        request: http.then_some(request),
        decision: Some(Decision {
            action: "deny".into(),
            reason: field(11).to_string(),
            rule: optional(12),
            mode: Some("enforce".into()),
            detail: optional(13),
            ..Decision::default()
        }),
        redirects: fields
            .get(14)
            .map(|location| RedirectHop {
                status: Some(302),
                location: Some(location.to_string()),
                action: "deny".into(),
                reason: "host_not_allowed".into(),
                followed: selector & 16 != 0,
            })
            .into_iter()
            .collect(),
        response: Response { code: Some(403), flags: u64::from(selector) << 40, ..Response::default() },
        duration_ms: Some(u64::MAX),
        upstream: Upstream { cluster: optional(15), address: None },
    };
    let json = event.to_json();
    assert_eq!(json, serde_json::to_string(&event).unwrap(), "the writer and serde_json differ");
    assert_eq!(json.matches(MARKER).count(), 1, "a marker written unescaped: {json}");
    let want = Ok(Line::Events(vec![event]));
    let envoy = format!("{prefix}{json}");
    assert_eq!(parse_line(&envoy), want, "{envoy}");
    let istio = format!("2026-11-25T10:00:00.123456Z\tinfo\tenvoy wasm\twasm log p r: {prefix}{json}\tthread=20\r\n");
    assert_eq!(parse_line(&istio), want, "{istio}");
    assert_eq!(parse_line(&json), want, "{json}");
    let log_as_json = serde_json::json!({"level": "info", "msg": format!("wasm log p r: {prefix}{json}")}).to_string();
    assert_eq!(parse_line(&log_as_json), want, "{log_as_json}");
    let otlp = serde_json::json!({"resourceLogs": [{"scopeLogs": [{"logRecords": [
        {"body": {"stringValue": "other output"}},
        {"body": {"stringValue": envoy}},
    ]}]}]})
    .to_string();
    assert_eq!(parse_line(&otlp), want, "{otlp}");
}
