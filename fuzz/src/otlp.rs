//! `otlp::rejected`, what a collector answered to a delivered batch (`ExportLogsServiceResponse.partialSuccess`), in
//! each encoding.
//!
//! Oracles:
//! - protobuf: `prost`, decoding the same message definition. When `prost` decodes the body, we report what it holds
//!   (records rejected, as the int64's bits, and the message), or nothing when no record was rejected. Deliberate
//!   difference: we are lenient where `prost` refuses (a field of the wrong wire type, a message that is not UTF-8):
//!   then nothing is asserted.
//! - JSON: the same `Deserialize` types run by `serde_json`. Deliberate differences, where only we refuse: floats
//!   anywhere (`1.0` records), a struct written as an array, and unknown members that are not valid JSON on their own
//!   to `serde_json` (it skips them without its recursion limit or surrogate checks).
//! - NDJSON: no response body is read (`None`).

use egress_core::audit::Encoding;
use egress_core::otlp::{self, Rejected};

#[derive(Clone, PartialEq, prost::Message)]
struct ExportLogsServiceResponse {
    #[prost(message, optional, tag = "1")]
    partial_success: Option<ExportLogsPartialSuccess>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ExportLogsPartialSuccess {
    #[prost(int64, tag = "1")]
    rejected_log_records: i64,
    #[prost(string, tag = "2")]
    error_message: String,
}

mod json {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Response {
        #[serde(default)]
        pub partial_success: Option<Partial>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Partial {
        #[serde(default)]
        pub rejected_log_records: Option<Int64>,
        #[serde(default)]
        pub error_message: String,
    }
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    pub enum Int64 {
        Number(u64),
        Text(String),
    }
}

pub fn run(data: &[u8]) {
    let (selector, body) = crate::selector(data);
    match selector % 3 {
        0 => assert_eq!(otlp::rejected(Encoding::Ndjson, body), None),
        1 => {
            let ours = otlp::rejected(Encoding::Protobuf, body);
            if let Ok(response) = <ExportLogsServiceResponse as prost::Message>::decode(body) {
                let want = response
                    .partial_success
                    .map(|p| Rejected { records: p.rejected_log_records as u64, message: p.error_message })
                    .filter(|r| r.records > 0);
                assert_eq!(ours, want, "prost reads {body:?} differently");
            }
        }
        _ => {
            let ours = otlp::rejected(Encoding::Json, body);
            let theirs = serde_json::from_slice::<json::Response>(body).ok().and_then(|response| {
                let partial = response.partial_success?;
                let records = match partial.rejected_log_records? {
                    json::Int64::Number(n) => n,
                    json::Int64::Text(text) => text.parse().ok()?,
                };
                Some(Rejected { records, message: partial.error_message }).filter(|r| r.records > 0)
            });
            if ours != theirs {
                let exempt = ours.is_none()
                    && match serde_json::from_slice::<serde_json::Value>(body) {
                        Err(_) => true,
                        Ok(value) => {
                            crate::has_float(&value)
                                || value.is_array()
                                || value.get("partialSuccess").is_some_and(serde_json::Value::is_array)
                        }
                    };
                assert!(exempt, "{:?}: ours {ours:?}, serde_json {theirs:?}", String::from_utf8_lossy(body));
            }
        }
    }
}
