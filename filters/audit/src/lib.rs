//! The audit stage: one structured JSON event per egress request (HTTP, CONNECT included) and per TLS-passthrough
//! connection, built at the end of the stream from what the request's context holds (in the suite: what the other
//! stages decided, without a host call) or, in a separate filter, what the other filters published to filter state.
//! It works with any of them missing. It observes and never gates: its host calls failing is logged, never a refusal.
//!
//! Sinks: Envoy's log (`egress-audit: {json}`, one line per event) and a collector: batched OTLP/HTTP logs
//! (protobuf or JSON; `egress_core::otlp`) or NDJSON POSTs via `dispatch_http_call` from the root context, one queue
//! per worker with the OTLP delivery rules (see `shipper`). A shared queue per process would add a lock-like handoff
//! on every request for no gain here: batches from each worker are already large.

pub mod shipper;

use egress_core::audit::Encoding;
use egress_core::audit::{AuditConfig, EventKind, Observed};
use egress_core::otlp;
use egress_core::redirect::HopState;
use egress_core::resolved;
use egress_core::state::{self, DecisionRecord, IdentityRecord, ToJson};
use egress_proxy::{
    self as proxy, Attributes, Connection, Counter, Gauge, Host, HttpStage, Request, RootStage, TlsStage,
};
use proxy_wasm::types::{LogLevel, MapType, Status};
use shipper::{Delivery, Limits, Shipper};
use std::cell::RefCell;
use std::time::Duration;

/// Root ids of the separate filter.
pub const HTTP_ROOT_ID: &str = "egress-audit";
pub const TLS_ROOT_ID: &str = "egress-audit-tls";
/// The proxy-wasm callbacks this stage needs exported.
pub const CALLBACKS: &[&str] = &["proxy_on_log", "proxy_on_tick", "proxy_on_http_call_response"];
/// The prefix of every audit line in Envoy's log (after Envoy's own `wasm log <plugin>:` prefix), so
/// `kubectl logs … | grep -o '{"schema":"egress-audit/v1".*}' | jq` finds the events.
pub const LOG_PREFIX: &str = "egress-audit: ";

#[derive(Clone, Copy)]
struct Metrics {
    events: Counter,
    batches_sent: Counter,
    /// Attempts that failed in a way worth retrying (the batch is sent again).
    batch_failures: Counter,
    /// Batches the collector refused for good (dropped, and counted in `dropped`).
    batches_rejected: Counter,
    dropped: Counter,
    /// Events waiting in this worker's queue.
    queue_depth: Gauge,
}

impl Metrics {
    fn define(host: &dyn Host) -> Result<Metrics, String> {
        let counter = |name: &str| Counter::define(host, &format!("egress_audit_{name}"));
        Ok(Metrics {
            events: counter("events")?,
            batches_sent: counter("batches_sent")?,
            batch_failures: counter("batch_failures")?,
            batches_rejected: counter("batches_rejected")?,
            dropped: counter("events_dropped")?,
            queue_depth: Gauge::define(host, "egress_audit_queue_depth")?,
        })
    }
}

/// What an HTTP event reads of Envoy at the end of the stream, in one batch (the order of the values).
const HTTP_FACTS: &[&[&str]] = &[
    &["source", "address"],
    &["request", "protocol"],
    &["response", "code_details"],
    &["response", "code"],
    &["response", "flags"],
    &["request", "total_size"],
    &["response", "total_size"],
    &["upstream", "address"],
    &["xds", "cluster_name"],
];

/// What a TLS-passthrough event reads, in one batch.
const TLS_FACTS: &[&[&str]] = &[
    &["source", "address"],
    &["connection", "requested_server_name"],
    &["upstream", "address"],
    &["xds", "cluster_name"],
];

/// The audit stage of one plugin's root context: its configuration, its worker's queue, Envoy's node id.
pub struct Audit {
    config: AuditConfig,
    metrics: Metrics,
    shipper: Option<RefCell<Shipper>>,
    /// Envoy's node id: the same for every event, read once.
    node: Option<String>,
    /// Who the collector's batches come from.
    resource: otlp::Resource,
    /// The facts of an event as prepared batches; `None` where the host cannot batch them (each is then read as
    /// a property).
    http_facts: Option<Attributes>,
    tls_facts: Option<Attributes>,
    /// Every batch is written here: one buffer for the life of the worker ([`otlp::batch`]).
    batch_buffer: RefCell<Vec<u8>>,
}

impl Audit {
    /// The stage, its metrics defined, and the gauge that says which configuration serves:
    /// `egress_audit_config_fingerprint` (the fingerprint's first 48 bits), set here, at configure time.
    pub fn new(host: &dyn Host, config: AuditConfig) -> Result<Audit, String> {
        let metrics = Metrics::define(host)?;
        Gauge::define(host, "egress_audit_config_fingerprint")?.record(host, config.fingerprint().gauge());
        let node = string(host, &["xds", "node", "id"]);
        let shipper = config.collector.as_ref().map(|collector| {
            let limits = Limits {
                batch_max_events: collector.batch_max_events as usize,
                batch_max_bytes: collector.batch_max_bytes as usize,
                flush_interval_ms: u64::from(collector.flush_interval_ms),
                queue_max_events: collector.queue_max_events as usize,
            };
            RefCell::new(Shipper::new(limits, now_ms(host)))
        });
        let http_facts = host.prepare_attributes(HTTP_FACTS).ok();
        let tls_facts = host.prepare_attributes(TLS_FACTS).ok();
        let resource = otlp::Resource {
            service_name: config.collector.as_ref().map(|c| c.service_name.clone()).unwrap_or_default(),
            instance_id: node.clone(),
        };
        let batch_buffer = RefCell::new(Vec::new());
        Ok(Audit { config, metrics, shipper, node, resource, http_facts, tls_facts, batch_buffer })
    }

    /// The values of `facts` (a batch when it was prepared, else one property read each), in order.
    fn facts(&self, host: &dyn Host, batch: Option<&Attributes>, facts: &[&[&str]]) -> Vec<Option<String>> {
        if let Some(values) = batch.and_then(|batch| host.read_attributes(batch).ok()) {
            return values;
        }
        let text = |bytes: Vec<u8>| match <[u8; 8]>::try_from(bytes.as_slice()) {
            // Envoy hands integer attributes over as 8 little-endian bytes.
            Ok(number) if !bytes.iter().all(u8::is_ascii_graphic) => u64::from_le_bytes(number).to_string(),
            _ => String::from_utf8_lossy(&bytes).into_owned(),
        };
        facts.iter().map(|path| host.property(path).ok().flatten().map(text).filter(|v| !v.is_empty())).collect()
    }

    /// What the log line says was configured.
    pub fn describe(&self) -> String {
        format!("audit {}", self.config.summary())
    }

    fn emit(&self, host: &dyn Host, observed: Observed) {
        let time_unix_ms = observed.time_unix_ms;
        let event = self.config.event(observed);
        let line = event.to_json();
        self.metrics.events.increment(host);
        if self.config.log {
            host.log(LogLevel::Info, &format!("{LOG_PREFIX}{line}"));
        }
        if let (Some(shipper), Some(collector)) = (&self.shipper, &self.config.collector) {
            // Encoded now, once: a batch is then a concatenation. `flush` records the queue-depth gauge on every
            // tick: fresh enough for any scraper, without a host call per event.
            let record = otlp::record(collector.encoding, &event, &line, time_unix_ms);
            self.metrics.dropped.add(host, shipper.borrow_mut().push(record));
        }
    }

    /// What every event reads: time, gateway, caller, what was decided, the redirects. What this stream's context
    /// holds costs nothing; the rest costs a VM re-entry each, so values absent on the common path (the peer
    /// certificate on plain connections, redirects) are probed first.
    fn observe_common(
        &self,
        host: &dyn Host,
        started_ms: Option<u64>,
        identity: Option<IdentityRecord<String>>,
        decision: Option<DecisionRecord<String>>,
    ) -> Observed {
        let now = now_ms(host);
        let identity = identity.or_else(|| state::parse(string(host, &[state::IDENTITY]).as_deref()));
        let decision = decision.or_else(|| state::parse(string(host, &[state::DECISION]).as_deref()));
        let mut observed = Observed {
            time_unix_ms: now,
            duration_ms: started_ms.map(|started| now.saturating_sub(started)),
            node: self.node.clone(),
            // The certificate only names the caller when the identity stage did not run (it publishes what it
            // verified).
            peer_uri_san: if identity.is_none() { peer_identity(host) } else { None },
            ..Observed::default()
        };
        if let Some(identity) = identity {
            observed.identity = identity.id;
            observed.identity_source = Some(identity.source);
        }
        if let Some(decision) = decision {
            observed.decision = Some(decision.action);
            observed.reason = Some(decision.reason);
            observed.rule = decision.rule;
            observed.mode = Some(decision.mode);
            observed.policy = decision.policy;
            observed.destination = decision.destination;
        }
        observed
    }

    /// Sends the next batch if one is due (only the root dispatches: its callbacks outlive any request) and records
    /// the queue depth.
    fn flush(&self, host: &dyn Host) {
        let (Some(shipper), Some(collector)) = (&self.shipper, &self.config.collector) else { return };
        let mut shipper = shipper.borrow_mut();
        let now = now_ms(host);
        if let Some(records) = shipper.next_batch(now) {
            let mut body = self.batch_buffer.borrow_mut();
            otlp::batch(collector.encoding, &self.resource, records, &mut body);
            let gzipped;
            let body: &[u8] = if collector.gzip {
                gzipped = gzip(&body);
                &gzipped
            } else {
                &body
            };
            let mut headers = vec![
                (":method", "POST"),
                (":path", collector.path.as_str()),
                (":authority", collector.authority.as_str()),
                ("content-type", collector.encoding.content_type()),
            ];
            if collector.gzip {
                headers.push(("content-encoding", "gzip"));
            }
            let timeout = Duration::from_millis(u64::from(collector.timeout_ms));
            match host.dispatch_http_call(&collector.cluster, &headers, body, timeout) {
                Ok(token) => shipper.dispatched(token),
                Err(status) => {
                    host.log(
                        LogLevel::Warn,
                        &format!("egress-audit: cannot dispatch to {}: {status:?}", collector.cluster),
                    );
                    self.metrics.batch_failures.increment(host);
                    self.metrics.dropped.add(host, shipper.dispatch_failed(now).dropped);
                }
            }
        }
        self.metrics.queue_depth.record(host, u64::try_from(shipper.depth()).unwrap_or(u64::MAX));
    }

    /// The collector's answer to a batch, as the shipper's [`Delivery`]: only what it needs is read (the
    /// `Retry-After` of a retryable status, the body of a 2xx that has one, for an OTLP partial success).
    fn delivery(&self, host: &dyn Host, encoding: Encoding, body_size: usize, now: u64) -> (Delivery, Option<u16>) {
        // No headers (a timeout or a reset) reads as no status.
        let status = host.map_value(MapType::HttpCallResponseHeaders, ":status").ok().flatten();
        let status = status.and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u16>().ok());
        let header = |name| host.map_value(MapType::HttpCallResponseHeaders, name).ok().flatten();
        let (mut retry_after, mut rejected) = (None, 0);
        match status {
            Some(429 | 502 | 503 | 504) => retry_after = header("retry-after"),
            Some(200..=299) if body_size > 0 && encoding != Encoding::Ndjson => {
                let body = host.http_call_response_body(body_size).ok().flatten().unwrap_or_default();
                if let Some(partial) = otlp::rejected(encoding, &body) {
                    host.log(
                        LogLevel::Warn,
                        &format!(
                            "egress-audit: the collector rejected {} records: {}",
                            partial.records, partial.message
                        ),
                    );
                    rejected = partial.records;
                }
            }
            _ => {}
        }
        let retry_after = retry_after.as_deref().map(String::from_utf8_lossy);
        (Delivery::of(status, retry_after.as_deref(), rejected, now), status)
    }
}

impl HttpStage for Audit {
    fn name(&self) -> &'static str {
        "audit"
    }

    fn fails_closed(&self) -> bool {
        false
    }

    fn on_log(&self, host: &dyn Host, request: &mut Request) -> Result<(), Status> {
        let mut facts = self.facts(host, self.http_facts.as_ref(), HTTP_FACTS).into_iter();
        let [source, protocol, details, code, flags, received, sent, upstream, cluster] =
            std::array::from_fn(|_| facts.next().flatten());
        // Envoy logs every hop of a followed redirect; the request's event is the final hop's, which carries the
        // whole chain.
        if details.as_deref() == Some("internal_redirect") {
            return Ok(());
        }
        let (identity, mut decision) = (request.identity.take(), request.decision.take());
        // A redirect chain (read only when the redirects stage may have written one) is audited as the client's
        // request: its destination, path and the allow-list's decision on it, with every hop in `redirects`.
        let redirects = if request.redirected == Some(false) { None } else { string(host, &[state::REDIRECTS]) };
        let chain = redirects.as_ref().and_then(|_| HopState::from_json(&string(host, &[state::REDIRECT_HOPS])?));
        if let Some(first) = chain.as_ref().and_then(|chain| state::parse(chain.decision.as_deref())) {
            decision = Some(first);
        }
        let mut observed = self.observe_common(host, request.started_ms, identity, decision);
        observed.redirects = redirects;
        // A name resolved to a refused address: which range (the allow-list stage of the suite read it already).
        observed.decision_detail = request.refused_address.take().or_else(|| {
            (observed.reason.as_deref() == Some(resolved::REASON))
                .then(|| string(host, &resolved::metadata_path(resolved::HTTP_RBAC, resolved::RANGE_KEY)))
                .flatten()
                .map(|range| resolved::range_detail(&range).to_string())
        });
        observed.source_address = source;
        observed.upstream_address = upstream;
        observed.upstream_cluster = cluster;
        let headers = request.facts.headers(host)?;
        let header = |name: &str| {
            headers.iter().find(|(key, _)| key == name).map(|(_, value)| String::from_utf8_lossy(value).into_owned())
        };
        observed.kind = Some(EventKind::Http);
        observed.request_id = header("x-request-id").filter(|id| !id.is_empty());
        observed.authority = header(":authority");
        observed.scheme = header(":scheme");
        observed.method = header(":method");
        observed.path = header(":path");
        if let Some(chain) = chain {
            let [scheme, authority, path, method] = chain.first;
            (observed.scheme, observed.authority, observed.path, observed.method) =
                (Some(scheme), Some(authority), Some(path), Some(method));
        }
        observed.headers = headers
            .iter()
            .filter(|(name, _)| self.config.headers.iter().any(|wanted| name.eq_ignore_ascii_case(wanted)))
            .map(|(name, value)| (name.to_ascii_lowercase(), String::from_utf8_lossy(value).into_owned()))
            .collect();
        if observed.request_id.is_none() {
            observed.random_id = random_id(host);
        }
        let number = |value: Option<String>| value.and_then(|v| v.parse::<u64>().ok());
        observed.protocol = protocol;
        observed.response_code = number(code).and_then(|c| u16::try_from(c).ok());
        observed.response_flags = number(flags).unwrap_or(0);
        observed.response_details = details;
        observed.bytes_received = number(received).unwrap_or(0);
        observed.bytes_sent = number(sent).unwrap_or(0);
        self.emit(host, observed);
        Ok(())
    }
}

impl TlsStage for Audit {
    fn name(&self) -> &'static str {
        "audit"
    }

    fn fails_closed(&self) -> bool {
        false
    }

    fn on_log(&self, host: &dyn Host, connection: &mut Connection) -> Result<(), Status> {
        let mut facts = self.facts(host, self.tls_facts.as_ref(), TLS_FACTS).into_iter();
        let [source, sni, upstream, cluster] = std::array::from_fn(|_| facts.next().flatten());
        let decision = connection.decision.take();
        let mut observed = self.observe_common(host, connection.started_ms, None, decision);
        observed.kind = Some(EventKind::Tls);
        observed.random_id = random_id(host);
        observed.source_address = source;
        observed.sni = sni;
        // Allowed by name, never connected: Envoy may have refused the address the name resolved to.
        if upstream.is_none() && observed.decision.as_deref() == Some("allow") {
            let metadata = |key| string(host, &resolved::metadata_path(resolved::NETWORK_RBAC, key));
            if metadata(resolved::VERDICT_KEY).as_deref() == Some("denied") {
                observed.decision = Some("deny".into());
                observed.reason = Some(resolved::REASON.into());
                observed.rule = None;
                observed.decision_detail =
                    metadata(resolved::RANGE_KEY).map(|r| resolved::range_detail(&r).to_string());
            }
        }
        observed.upstream_address = upstream;
        observed.upstream_cluster = cluster;
        self.emit(host, observed);
        Ok(())
    }
}

impl RootStage for Audit {
    fn tick_period(&self) -> Option<Duration> {
        let collector = self.config.collector.as_ref()?;
        // Often enough that a batch leaves as soon as it is full, so each stays small.
        Some(Duration::from_millis(u64::from(collector.flush_interval_ms).clamp(10, 50)))
    }

    fn on_tick(&self, host: &dyn Host) {
        self.flush(host);
    }

    fn on_http_call_response(&self, host: &dyn Host, token: u32, body_size: usize) {
        let (Some(shipper), Some(collector)) = (&self.shipper, &self.config.collector) else { return };
        let now = now_ms(host);
        let (delivery, status) = self.delivery(host, collector.encoding, body_size, now);
        let completed = shipper.borrow_mut().completed(token, delivery, now);
        if completed.delivered > 0 {
            self.metrics.batches_sent.increment(host);
        }
        if completed.retried {
            self.metrics.batch_failures.increment(host);
        }
        if completed.refused {
            self.metrics.batches_rejected.increment(host);
            let status = status.map_or("no status".into(), |s| s.to_string());
            host.log(
                LogLevel::Warn,
                &format!(
                    "egress-audit: {} refused a batch of {} events ({status}); dropped, not retried",
                    collector.cluster, completed.dropped
                ),
            );
        }
        self.metrics.dropped.add(host, completed.dropped);
        // Keep draining without waiting for the next tick while batches are full.
        self.flush(host);
    }
}

/// The peer certificate's SPIFFE ID, when it names exactly one.
fn peer_identity(host: &dyn Host) -> Option<String> {
    let identity = proxy::verified_peer(host).ok()?.identity().ok()??;
    Some(identity.to_string())
}

/// The event id when Envoy gave the request none (TLS connections never have one).
fn random_id(host: &dyn Host) -> [u8; 16] {
    let mut id = [0u8; 16];
    // Without randomness the id is zeros, which still marks the event as id-less rather than failing it.
    let _ = host.random(&mut id);
    id
}

/// A property that is absent, or unreadable at this point of the stream, is simply not in the event.
fn string(host: &dyn Host, path: &[&str]) -> Option<String> {
    proxy::property_string(host, path).ok().flatten().filter(|s| !s.is_empty())
}

fn now_ms(host: &dyn Host) -> u64 {
    proxy::unix_ms(host).unwrap_or(0)
}

/// `data` as a gzip member (RFC 1952): a fixed header, deflate at the fastest level (the batch is compressed on the
/// worker), CRC-32 and size.
fn gzip(data: &[u8]) -> Vec<u8> {
    const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let deflated = miniz_oxide::deflate::compress_to_vec(data, 1);
    let mut out = Vec::with_capacity(HEADER.len() + deflated.len() + 8);
    out.extend_from_slice(&HEADER);
    out.extend_from_slice(&deflated);
    out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    // ISIZE: the input's length modulo 2^32.
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use egress_proxy::fake::FakeHost;
    use std::io::Read;

    #[test]
    fn gzip_members_decode_with_flate2() {
        for data in [&b""[..], b"x", &[7u8; 100_000], "événement\n".repeat(999).as_bytes()] {
            let mut decoded = Vec::new();
            flate2::read::GzDecoder::new(gzip(data).as_slice()).read_to_end(&mut decoded).unwrap();
            assert_eq!(decoded, data);
        }
    }

    fn advance(host: &FakeHost, seconds: u64) {
        let now = host.now().unwrap();
        host.state().now = Some(now + Duration::from_secs(seconds));
    }

    fn audit(host: &FakeHost, collector: &str) -> Audit {
        let config = format!(r#"{{"log": false, "collector": {collector}}}"#);
        Audit::new(host, AuditConfig::from_json(config.as_bytes()).unwrap()).unwrap()
    }

    fn log_one(audit: &Audit, host: &FakeHost) {
        let mut request = Request::new(Some(0));
        HttpStage::on_log(audit, host, &mut request).unwrap();
    }

    #[test]
    fn the_serving_configuration_is_a_gauge() {
        let host = FakeHost::new();
        let stage = audit(&host, r#"{"cluster":"otel","authority":"collector"}"#);
        let fingerprint = stage.config.fingerprint();
        assert_eq!(host.metric("egress_audit_config_fingerprint"), i64::try_from(fingerprint.gauge()).ok());
        assert!(stage.describe().ends_with(&format!("fingerprint {fingerprint}")), "{}", stage.describe());
    }

    #[test]
    fn batches_leave_as_otlp_protobuf_by_default_and_as_configured_otherwise() {
        let host = FakeHost::new().with_request(&[(":authority", "httpbin.org"), (":method", "GET"), (":path", "/")]);
        let otlp = audit(&host, r#"{"cluster": "c", "authority": "a", "batchMaxEvents": 1}"#);
        log_one(&otlp, &host);
        otlp.on_tick(&host);
        let json = audit(&host, r#"{"cluster": "c", "authority": "a", "format": "otlp-json", "compression": "gzip"}"#);
        log_one(&json, &host);
        advance(&host, 10);
        json.on_tick(&host);
        let dispatched = host.state().dispatched.clone();
        assert_eq!(dispatched.len(), 2, "{dispatched:?}");
        let header = |i: usize, name: &str| {
            dispatched[i].1.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap_or_default()
        };
        assert_eq!(
            (header(0, ":path"), header(0, "content-type")),
            ("/v1/logs".into(), "application/x-protobuf".into())
        );
        assert_eq!(header(0, "content-encoding"), "");
        assert_eq!(
            (header(1, "content-type"), header(1, "content-encoding")),
            ("application/json".into(), "gzip".into())
        );
        let mut body = Vec::new();
        flate2::read::GzDecoder::new(dispatched[1].2.as_slice()).read_to_end(&mut body).unwrap();
        let request: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let record = &request["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0];
        assert!(record["body"]["stringValue"].as_str().unwrap().starts_with(r#"{"schema":"egress-audit/v1""#));
    }

    /// Sends one batch of one event and answers it with `status` and `headers`, `body`.
    fn answered(status: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> FakeHost {
        let host = FakeHost::new().with_request(&[(":authority", "httpbin.org"), (":method", "GET"), (":path", "/")]);
        let stage = audit(&host, r#"{"cluster": "c", "authority": "a", "batchMaxEvents": 1}"#);
        log_one(&stage, &host);
        stage.on_tick(&host);
        {
            let mut state = host.state();
            state.http_call_response_headers = [(":status", status)]
                .iter()
                .chain(headers)
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect();
            state.http_call_response_body = body.map(<[u8]>::to_vec);
        }
        stage.on_http_call_response(&host, 1, body.map_or(0, <[u8]>::len));
        // Anything left is retried on the next tick, after the backoff.
        advance(&host, 3600);
        stage.on_tick(&host);
        host
    }

    #[test]
    fn the_collectors_answer_decides_between_delivered_retried_and_dropped() {
        let ok = answered("200", &[], None);
        assert_eq!(
            (ok.metric("egress_audit_batches_sent"), ok.metric("egress_audit_events_dropped")),
            (Some(1), Some(0))
        );
        let throttled = answered("429", &[("retry-after", "1")], None);
        assert_eq!(throttled.metric("egress_audit_batch_failures"), Some(1));
        assert_eq!(throttled.state().dispatched.len(), 2, "sent again");
        assert!(throttled.calls().contains(&"map_value(http_call_response_headers:retry-after)".to_string()));
        let refused = answered("400", &[], Some(b"bad request"));
        assert_eq!(refused.metric("egress_audit_batches_rejected"), Some(1));
        assert_eq!(refused.metric("egress_audit_events_dropped"), Some(1));
        assert_eq!(refused.state().dispatched.len(), 1, "never sent again");
        assert!(refused.logs().iter().any(|l| l.contains("refused a batch of 1 events (400)")));
        // ExportLogsServiceResponse { partial_success { rejected_log_records: 1 } }.
        let partial = answered("200", &[], Some(&[0x0a, 0x02, 0x08, 0x01]));
        assert_eq!(partial.metric("egress_audit_events_dropped"), Some(1));
        let reset = answered("", &[], None);
        assert_eq!(reset.metric("egress_audit_batch_failures"), Some(1), "no status: retried");
    }
}
