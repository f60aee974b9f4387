//! The host seam of the egress suite and what every module shares over it: the [`Host`] trait (the proxy-wasm calls
//! the stages make) with its Envoy implementation and a recording fake, the per-request context the stages share
//! ([`Request`], [`Connection`]), the runner that makes modules out of stages ([`pipeline`]), and configuration-time
//! glue ([`config`]).
//!
//! Rules of the house: every host call is checked (a panic kills the VM and every later request on that worker
//! fails until reload); values from clients are read as bytes (a Latin-1 byte must not reach a UTF-8 unwrap); a
//! request reads each fact once, and only what the configured policy needs.

pub mod config;
pub mod fake;
pub mod host;
pub mod pipeline;
pub mod request;

pub use host::{Attributes, HeaderMap, Host, WasmHost};
pub use pipeline::{HttpStage, Layer, Module, Pipeline, RootStage, Setup, Step, TlsStage};
pub use request::{verified_peer, with_caller, Connection, Request, RequestFacts};

use egress_core::state::ToJson;
use proxy_wasm::types::{MetricType, Status};

/// Reply header carrying the machine reason of a local 4xx/5xx, for every stage of the suite.
pub const REASON_HEADER: &str = "x-egress-denied-reason";

/// A string property. Invalid UTF-8 becomes U+FFFD, which no host name or SPIFFE ID accepts: it fails closed.
pub fn property_string(host: &dyn Host, path: &[&str]) -> Result<Option<String>, Status> {
    Ok(host.property(path)?.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
}

/// An integer property (Envoy encodes them as 8 little-endian bytes).
pub fn property_u64(host: &dyn Host, path: &[&str]) -> Result<Option<u64>, Status> {
    let value = host.property(path)?;
    Ok(value.and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok()).map(u64::from_le_bytes))
}

/// Publishes a record (JSON) to filter state.
pub fn publish_record(host: &dyn Host, key: &str, record: &impl ToJson) -> Result<(), Status> {
    host.set_property(key, record.to_json().as_bytes())
}

/// A local JSON reply carrying `reason` in [`REASON_HEADER`] and `extra` headers; the request goes no further. If
/// even the reply fails, the stream is reset: never forwarded.
pub fn reply(host: &dyn Host, status: u16, reason: &str, body: &str, extra: &[(&str, &str)]) -> Step {
    let mut headers = vec![("content-type", "application/json"), (REASON_HEADER, reason)];
    headers.extend_from_slice(extra);
    if host.send_reply(status, &headers, body.as_bytes()).is_err() {
        let _ = host.reset_stream();
    }
    Step::Stop
}

/// Milliseconds since the Unix epoch, from the host clock.
pub fn unix_ms(host: &dyn Host) -> Result<u64, Status> {
    let now = host.now()?;
    Ok(now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
}

fn define(host: &dyn Host, kind: MetricType, name: &str) -> Result<u32, String> {
    host.define_metric(kind, name).map_err(|s| format!("metric {name}: {s:?}"))
}

/// A counter metric. Failing to count never changes a decision.
#[derive(Clone, Copy, Debug)]
pub struct Counter(u32);

impl Counter {
    pub fn define(host: &dyn Host, name: &str) -> Result<Counter, String> {
        define(host, MetricType::Counter, name).map(Counter)
    }

    pub fn increment(self, host: &dyn Host) {
        self.add(host, 1);
    }

    /// Adds `count` in one host call.
    pub fn add(self, host: &dyn Host, count: usize) {
        if count > 0 {
            let _ = host.increment_metric(self.0, i64::try_from(count).unwrap_or(i64::MAX));
        }
    }
}

/// A gauge metric.
#[derive(Clone, Copy, Debug)]
pub struct Gauge(u32);

impl Gauge {
    pub fn define(host: &dyn Host, name: &str) -> Result<Gauge, String> {
        define(host, MetricType::Gauge, name).map(Gauge)
    }

    pub fn record(self, host: &dyn Host, value: u64) {
        let _ = host.record_metric(self.0, value);
    }
}
