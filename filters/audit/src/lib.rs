//! The audit stage: one structured JSON event per egress request (HTTP, CONNECT included) and per TLS-passthrough
//! connection, built at the end of the stream from what the request's context holds (in the suite: what the other
//! stages decided, without a host call) or, in a separate filter, what the other filters published to filter state.
//! It works with any of them missing. It observes and never gates: its host calls failing is logged, never a refusal.
//!
//! Sinks: Envoy's log (`egress-audit: {json}`, one line per event) and an HTTP collector: batched NDJSON POSTs via
//! `dispatch_http_call` from the root context, one queue per worker (see `shipper`). A shared queue per process
//! would add a lock-like handoff on every request for no gain here: batches from each worker are already large.

pub mod shipper;

use egress_core::audit::{AuditConfig, EventKind, Observed};
use egress_core::state::{self, DecisionRecord, IdentityRecord, ToJson};
use egress_proxy::{
    self as proxy, Attributes, Connection, Counter, Gauge, Host, HttpStage, Request, RootStage, TlsStage,
};
use proxy_wasm::types::{LogLevel, MapType, Status};
use shipper::{Limits, Shipper};
use std::cell::RefCell;
use std::time::Duration;

/// Root ids of the separate filter.
pub const HTTP_ROOT_ID: &str = "egress-audit";
pub const TLS_ROOT_ID: &str = "egress-audit-tls";
/// The proxy-wasm callbacks this stage needs exported.
pub const CALLBACKS: &[&str] = &["proxy_on_log", "proxy_on_tick", "proxy_on_http_call_response"];
/// The prefix of every audit line in Envoy's log (after Envoy's own `wasm log <plugin>:` prefix), so
/// `kubectl logs … | grep -o '{"schema":"egress-audit/v1".*' | jq` finds the events.
pub const LOG_PREFIX: &str = "egress-audit: ";

#[derive(Clone, Copy)]
struct Metrics {
    events: Counter,
    batches_sent: Counter,
    batch_failures: Counter,
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
    /// The facts of an event as prepared batches; `None` where the host cannot batch them (each is then read as
    /// a property).
    http_facts: Option<Attributes>,
    tls_facts: Option<Attributes>,
}

impl Audit {
    pub fn new(host: &dyn Host, config: AuditConfig) -> Result<Audit, String> {
        let metrics = Metrics::define(host)?;
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
        Ok(Audit { config, metrics, shipper, node, http_facts, tls_facts })
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
        let collector = self.config.collector.as_ref().map(|c| c.cluster.as_str());
        format!("audit log {}, collector {collector:?}", self.config.log)
    }

    fn emit(&self, host: &dyn Host, observed: Observed) {
        let line = self.config.event(observed).to_json();
        self.metrics.events.increment(host);
        if self.config.log {
            host.log(LogLevel::Info, &format!("{LOG_PREFIX}{line}"));
        }
        if let Some(shipper) = &self.shipper {
            // `flush` records the queue-depth gauge on every tick: fresh enough for any scraper, without a host call
            // per event.
            self.metrics.dropped.add(host, shipper.borrow_mut().push(line));
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
        redirected: Option<bool>,
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
            redirects: if redirected == Some(false) { None } else { string(host, &[state::REDIRECTS]) },
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
        if let Some(body) = shipper.next_batch(now) {
            let headers = [
                (":method", "POST"),
                (":path", collector.path.as_str()),
                (":authority", collector.authority.as_str()),
                ("content-type", "application/x-ndjson"),
            ];
            let timeout = Duration::from_millis(u64::from(collector.timeout_ms));
            match host.dispatch_http_call(&collector.cluster, &headers, body.as_bytes(), timeout) {
                Ok(token) => shipper.dispatched(token),
                Err(status) => {
                    host.log(
                        LogLevel::Warn,
                        &format!("egress-audit: cannot dispatch to {}: {status:?}", collector.cluster),
                    );
                    self.metrics.batch_failures.increment(host);
                    self.metrics.dropped.add(host, shipper.dispatch_failed(now));
                }
            }
        }
        self.metrics.queue_depth.record(host, shipper.depth());
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
        let (identity, decision) = (request.identity.take(), request.decision.take());
        let mut observed = self.observe_common(host, request.started_ms, identity, decision, request.redirected);
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
        let mut observed = self.observe_common(host, connection.started_ms, None, decision, None);
        observed.kind = Some(EventKind::Tls);
        observed.random_id = random_id(host);
        observed.source_address = source;
        observed.sni = sni;
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

    fn on_http_call_response(&self, host: &dyn Host, token: u32) {
        let Some(shipper) = &self.shipper else { return };
        // No headers (a timeout or a reset) reads as no status: a failure.
        let status = host.map_value(MapType::HttpCallResponseHeaders, ":status").ok().flatten();
        let ok = status.as_deref().is_some_and(|s| s.starts_with(b"2"));
        let (_, dropped) = shipper.borrow_mut().completed(token, ok, now_ms(host));
        if ok {
            self.metrics.batches_sent.increment(host);
        } else {
            self.metrics.batch_failures.increment(host);
            self.metrics.dropped.add(host, dropped);
        }
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
