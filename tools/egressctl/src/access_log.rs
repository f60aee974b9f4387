//! The suite's native audit path: Envoy's own access log, one JSON line per request or connection, carrying the
//! filter-state records the stages publish ([`egress_core::state`]) beside what Envoy knows of the request.
//!
//! This is the one definition of that line. The lab's bootstrap (`egress-harness`, and with it `make run`, the
//! docker-compose gateway and `make bench`) writes it with a file access log's `json_format`; `egressctl render`
//! writes the same fields as the `logFormat.labels` of the Istio access-log providers (`envoyFileAccessLog`, and
//! `envoyOtelAls`, whose labels become the OpenTelemetry log record's attributes). Tests hold the rendered providers
//! to this list and run the lab's line through a real Envoy, so the two cannot drift.

use egress_core::state;

/// The name of the `envoyFileAccessLog` provider the rendered mesh configuration defines (JSON lines on the
/// gateway's stdout) and the rendered `Telemetry` enables.
pub const FILE_PROVIDER: &str = "egress-access-log";
/// The name of the `envoyOtelAls` provider: the same fields, as attributes of OpenTelemetry log records sent over
/// OTLP/gRPC to the collector.
pub const OTEL_PROVIDER: &str = "egress-otel-als";
/// The OpenTelemetry access log's name (`log_name`, a resource attribute of every record) and the first word of
/// each record's body, so a collector's output can be searched for it.
pub const OTEL_LOG_NAME: &str = "egress-access";

/// `%FILTER_STATE(wasm.<key>:PLAIN)%`: a record another filter published, as the JSON text it was written as (Envoy
/// stores a Wasm filter's `set_property` under `wasm.<key>`). Absent when the stage that writes it did not run.
pub fn filter_state(key: &str) -> String {
    format!("%FILTER_STATE(wasm.{key}:PLAIN)%")
}

/// The fields of one access-log line, in the order people read them: `(name, Envoy command operator)`.
///
/// - `time`: when the request (or connection) started; `duration_ms`: until the last byte was sent;
/// - the request as Envoy forwarded it: `method`, `authority`, `path` (query included: unlike the Wasm audit
///   stage's `includeQuery: false`, Envoy's log does not redact it), `sni` (TLS passthrough);
/// - the reply: `code`, `details` (Envoy's response code details: `via_upstream`, or who answered locally),
///   `flags` (Envoy's response flags, e.g. `UF` for an upstream connection failure), `bytes_received`,
///   `bytes_sent`;
/// - the caller as the TLS handshake showed it: `source_address`, `source_principal` (the peer certificate's
///   URI SAN, the SPIFFE ID of an Istio mTLS caller);
/// - `upstream_cluster`, `upstream_host`; `request_id` (`x-request-id`, what the audit stage's event id is);
/// - the suite's filter-state records, each a JSON string: `decision` (`egress.decision`), `identity`
///   (`egress.identity`, the caller the identity stage established, which may be a trusted hop's forwarded
///   caller rather than `source_principal`), `redirects` (`egress.redirects`, the vetted and followed hops).
pub fn fields() -> Vec<(&'static str, String)> {
    let operator = |text: &str| text.to_string();
    vec![
        ("time", operator("%START_TIME%")),
        ("method", operator("%REQ(:METHOD)%")),
        ("authority", operator("%REQ(:AUTHORITY)%")),
        ("path", operator("%REQ(:PATH)%")),
        ("sni", operator("%REQUESTED_SERVER_NAME%")),
        ("code", operator("%RESPONSE_CODE%")),
        ("details", operator("%RESPONSE_CODE_DETAILS%")),
        ("flags", operator("%RESPONSE_FLAGS%")),
        ("duration_ms", operator("%DURATION%")),
        ("bytes_received", operator("%BYTES_RECEIVED%")),
        ("bytes_sent", operator("%BYTES_SENT%")),
        ("source_address", operator("%DOWNSTREAM_REMOTE_ADDRESS%")),
        ("source_principal", operator("%DOWNSTREAM_PEER_URI_SAN%")),
        ("upstream_cluster", operator("%UPSTREAM_CLUSTER%")),
        ("upstream_host", operator("%UPSTREAM_HOST%")),
        ("request_id", operator("%REQ(X-REQUEST-ID)%")),
        ("decision", filter_state(state::DECISION)),
        ("identity", filter_state(state::IDENTITY)),
        ("redirects", filter_state(state::REDIRECTS)),
    ]
}

/// The body of each OpenTelemetry access-log record: the log's name and the request line, for people reading a
/// collector's output; every field is in the record's attributes.
pub fn otel_body() -> String {
    format!("{OTEL_LOG_NAME} %RESPONSE_CODE% %REQ(:METHOD)% %REQ(:AUTHORITY)% %REQUESTED_SERVER_NAME%")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn every_field_is_named_once_and_the_records_are_the_published_keys() {
        let fields = fields();
        let mut names: Vec<&str> = fields.iter().map(|(name, _)| *name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), fields.len(), "a field named twice");
        let operator = |name: &str| fields.iter().find(|(n, _)| *n == name).map(|(_, o)| o.as_str());
        assert_eq!(operator("decision"), Some("%FILTER_STATE(wasm.egress.decision:PLAIN)%"));
        assert_eq!(operator("identity"), Some("%FILTER_STATE(wasm.egress.identity:PLAIN)%"));
        assert_eq!(operator("redirects"), Some("%FILTER_STATE(wasm.egress.redirects:PLAIN)%"));
        for (name, operator) in &fields {
            assert!(operator.starts_with('%') && operator.ends_with('%'), "{name}: one command operator");
        }
    }
}
