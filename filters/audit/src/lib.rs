//! The audit filter: one structured JSON event per egress request (HTTP, CONNECT included) and per TLS-passthrough
//! connection, built in `on_log` from what Envoy knows and what the other filters published to filter state
//! (it works with any of them missing). Root ids: `egress-audit` (HTTP) and `egress-audit-tls` (network).
//!
//! Sinks: Envoy's log (`egress-audit: {json}`, one line per event) and an HTTP collector: batched NDJSON POSTs via
//! `dispatch_http_call` from the root context, one queue per worker (see `shipper`). A shared queue per process
//! would add a lock-like handoff on every request for no gain here: batches from each worker are already large.

pub mod shipper;

use egress_core::audit::{AuditConfig, EventKind, Observed};
use egress_core::state::{self, DecisionRecord, IdentityRecord};
use egress_proxy::{self as proxy, Counter};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
use proxy_wasm::types::{ContextType, LogLevel, MapType, MetricType, Status};
use shipper::{Limits, Shipper};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

pub const HTTP_ROOT_ID: &str = "egress-audit";
pub const TLS_ROOT_ID: &str = "egress-audit-tls";
const FILTER: &str = "egress-audit";
/// The prefix of every audit line in Envoy's log (after Envoy's own `wasm log <plugin>:` prefix), so
/// `kubectl logs … | grep -o '{"schema":"egress-audit/v1".*' | jq` finds the events.
pub const LOG_PREFIX: &str = "egress-audit: ";

#[allow(unsafe_code)] // proxy_wasm::main! exports the module's `_initialize` entry point.
mod entry {
    proxy_wasm::main! {{
        proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
        proxy_wasm::set_root_context(|_| Box::<super::AuditRoot>::default());
    }}
}

#[derive(Clone, Copy)]
struct Metrics {
    events: Counter,
    batches_sent: Counter,
    batch_failures: Counter,
    dropped: Counter,
    /// A gauge: events waiting in this worker's queue.
    queue_depth: u32,
}

impl Metrics {
    fn define() -> Result<Metrics, String> {
        let counter = |name: &str| Counter::define(&format!("egress_audit_{name}"));
        let queue_depth = hostcalls::define_metric(MetricType::Gauge, "egress_audit_queue_depth")
            .map_err(|s| format!("metric egress_audit_queue_depth: {s:?}"))?;
        Ok(Metrics {
            events: counter("events")?,
            batches_sent: counter("batches_sent")?,
            batch_failures: counter("batch_failures")?,
            dropped: counter("events_dropped")?,
            queue_depth,
        })
    }

    fn record_depth(&self, depth: usize) {
        let _ = hostcalls::record_metric(self.queue_depth, u64::try_from(depth).unwrap_or(u64::MAX));
    }
}

/// What the root shares with every request context of this worker.
#[derive(Clone)]
struct Sinks {
    config: Rc<AuditConfig>,
    metrics: Metrics,
    shipper: Option<Rc<RefCell<Shipper>>>,
    /// Envoy's node id: the same for every event, read once.
    node: Option<Rc<str>>,
}

impl Sinks {
    fn emit(&self, observed: Observed) {
        let event = self.config.event(observed);
        let Ok(line) = serde_json::to_string(&event) else { return };
        self.metrics.events.increment();
        if self.config.log {
            proxy::log(LogLevel::Info, &format!("{LOG_PREFIX}{line}"));
        }
        if let Some(shipper) = &self.shipper {
            // `flush` records the queue-depth gauge on every tick (≤ 200 ms): fresh enough for any scraper, without
            // a host call per event.
            self.metrics.dropped.add(shipper.borrow_mut().push(line));
        }
    }
}

#[derive(Default)]
struct AuditRoot {
    configured: Option<(Rc<AuditConfig>, Metrics)>,
    shipper: Option<Rc<RefCell<Shipper>>>,
    kind: Option<ContextType>,
    node: Option<Rc<str>>,
}

impl Context for AuditRoot {
    fn on_http_call_response(&mut self, token_id: u32, _num_headers: usize, _body_size: usize, _num_trailers: usize) {
        let (Some(shipper), Some((_, metrics))) = (&self.shipper, &self.configured) else { return };
        // No headers (a timeout or a reset) reads as no status: a failure.
        let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status").ok().flatten();
        let ok = status.as_deref().is_some_and(|s| s.starts_with(b"2"));
        let (_, dropped) = shipper.borrow_mut().completed(token_id, ok, now_ms());
        if ok {
            metrics.batches_sent.increment();
        } else {
            metrics.batch_failures.increment();
            metrics.dropped.add(dropped);
        }
        // Keep draining without waiting for the next tick while batches are full.
        self.flush();
    }
}

impl RootContext for AuditRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let root_id = proxy::root_id().unwrap_or_default();
        self.kind = match root_id.as_str() {
            HTTP_ROOT_ID => Some(ContextType::HttpContext),
            TLS_ROOT_ID => Some(ContextType::StreamContext),
            other => {
                let why = format!("root id {other:?}: use `{HTTP_ROOT_ID}` (HTTP) or `{TLS_ROOT_ID}` (network)");
                proxy::log(LogLevel::Error, &format!("{FILTER}: refusing configuration: {why}"));
                return false;
            }
        };
        let configured = proxy::configure(
            FILTER,
            &mut self.configured,
            |json| AuditConfig::from_json(json).map_err(|errors| errors.to_string()),
            Metrics::define,
            |config| format!("log {}, collector {:?}", config.log, config.collector.as_ref().map(|c| &c.cluster)),
        );
        self.node = string(&["xds", "node", "id"]).map(Rc::from);
        let collector = self.configured.as_ref().and_then(|(config, _)| config.collector.clone());
        if let (true, Some(collector)) = (configured, collector) {
            let limits = Limits {
                batch_max_events: collector.batch_max_events as usize,
                batch_max_bytes: collector.batch_max_bytes as usize,
                flush_interval_ms: u64::from(collector.flush_interval_ms),
                queue_max_events: collector.queue_max_events as usize,
            };
            // A reconfiguration keeps what is queued; the limits are the new ones from now on.
            self.shipper = Some(Rc::new(RefCell::new(Shipper::new(limits, now_ms()))));
            let tick = Duration::from_millis(u64::from(collector.flush_interval_ms).clamp(10, 200));
            if hostcalls::set_tick_period(tick).is_err() {
                proxy::log(LogLevel::Error, &format!("{FILTER}: cannot start the flush timer"));
                return false;
            }
        }
        configured
    }

    fn on_tick(&mut self) {
        self.flush();
    }

    fn get_type(&self) -> Option<ContextType> {
        self.kind
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(AuditHttp { sinks: self.sinks(), started_ms: now_ms() }))
    }

    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(AuditTls { sinks: self.sinks(), started_ms: now_ms() }))
    }
}

impl AuditRoot {
    fn sinks(&self) -> Option<Sinks> {
        let (config, metrics) = self.configured.as_ref()?;
        Some(Sinks {
            config: Rc::clone(config),
            metrics: *metrics,
            shipper: self.shipper.clone(),
            node: self.node.clone(),
        })
    }

    /// Sends the next batch if one is due (only the root dispatches: its callbacks outlive any request) and records
    /// the queue depth.
    fn flush(&self) {
        let (Some(shipper), Some((config, metrics))) = (&self.shipper, &self.configured) else { return };
        let Some(collector) = &config.collector else { return };
        let mut shipper = shipper.borrow_mut();
        let now = now_ms();
        if let Some(body) = shipper.next_batch(now) {
            let headers = vec![
                (":method", "POST"),
                (":path", collector.path.as_str()),
                (":authority", collector.authority.as_str()),
                ("content-type", "application/x-ndjson"),
            ];
            let timeout = Duration::from_millis(u64::from(collector.timeout_ms));
            match hostcalls::dispatch_http_call(&collector.cluster, headers, Some(body.as_bytes()), vec![], timeout) {
                Ok(token) => shipper.dispatched(token),
                Err(status) => {
                    let why = format!("{FILTER}: cannot dispatch to {}: {status:?}", collector.cluster);
                    proxy::log(LogLevel::Warn, &why);
                    metrics.batch_failures.increment();
                    metrics.dropped.add(shipper.dispatch_failed(now));
                }
            }
        }
        metrics.record_depth(shipper.depth());
    }
}

struct AuditHttp {
    sinks: Option<Sinks>,
    started_ms: u64,
}

impl Context for AuditHttp {}

impl HttpContext for AuditHttp {
    fn on_log(&mut self) {
        let Some(sinks) = &self.sinks else { return };
        // Envoy logs every hop of a followed redirect; the request's event is the final hop's, which carries the
        // whole chain.
        let details = string(&["response", "code_details"]);
        if details.as_deref() == Some("internal_redirect") {
            return;
        }
        match observe_http(sinks, self.started_ms, details) {
            Ok(observed) => sinks.emit(observed),
            Err(status) => proxy::log(LogLevel::Error, &format!("{FILTER}: cannot read the request: {status:?}")),
        }
    }
}

struct AuditTls {
    sinks: Option<Sinks>,
    started_ms: u64,
}

impl Context for AuditTls {}

impl StreamContext for AuditTls {
    fn on_log(&mut self) {
        let Some(sinks) = &self.sinks else { return };
        let mut observed = observe_common(sinks, self.started_ms);
        observed.kind = Some(EventKind::Tls);
        observed.random_id = random_id();
        observed.sni = string(&["connection", "requested_server_name"]);
        sinks.emit(observed);
    }
}

/// The peer certificate's SPIFFE ID, when it names exactly one.
fn peer_identity() -> Option<String> {
    let identity = proxy::verified_peer().ok()?.identity().ok()??;
    Some(identity.to_string())
}

/// What every event reads: time, gateway, caller, what the other filters published, the upstream. Each value read
/// costs a VM re-entry, so the other filters publish one record each and values absent on the common path (the
/// peer certificate on plain connections, redirects) are probed first.
fn observe_common(sinks: &Sinks, started_ms: u64) -> Observed {
    let now = now_ms();
    let identity: Option<IdentityRecord<String>> = state::parse(string(&[state::IDENTITY]).as_deref());
    let decision: Option<DecisionRecord<String>> = state::parse(string(&[state::DECISION]).as_deref());
    let mut observed = Observed {
        time_unix_ms: now,
        duration_ms: Some(now.saturating_sub(started_ms)),
        node: sinks.node.as_deref().map(str::to_string),
        // The certificate only names the caller when the identity filter did not run (it publishes what it
        // verified): two reads saved per request in the full suite.
        peer_uri_san: if identity.is_none() { peer_identity() } else { None },
        source_address: string(&["source", "address"]),
        redirects: string(&[state::REDIRECTS]),
        upstream_cluster: string(&["xds", "cluster_name"]),
        upstream_address: string(&["upstream", "address"]),
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

fn observe_http(sinks: &Sinks, started_ms: u64, details: Option<String>) -> Result<Observed, Status> {
    let mut observed = observe_common(sinks, started_ms);
    let headers = hostcalls::get_map_bytes(MapType::HttpRequestHeaders)?;
    let header = |name: &str| {
        headers.iter().find(|(key, _)| key == name).map(|(_, value)| String::from_utf8_lossy(value).into_owned())
    };
    observed.kind = Some(EventKind::Http);
    observed.request_id = header("x-request-id").filter(|id| !id.is_empty());
    if observed.request_id.is_none() {
        observed.random_id = random_id();
    }
    observed.authority = header(":authority");
    observed.scheme = header(":scheme");
    observed.method = header(":method");
    observed.path = header(":path");
    observed.headers = headers
        .iter()
        .filter(|(name, _)| sinks.config.headers.iter().any(|wanted| name.eq_ignore_ascii_case(wanted)))
        .map(|(name, value)| (name.to_ascii_lowercase(), String::from_utf8_lossy(value).into_owned()))
        .collect();
    observed.protocol = string(&["request", "protocol"]);
    observed.sni = string(&["connection", "requested_server_name"]);
    observed.response_code = number(&["response", "code"]).and_then(|c| u16::try_from(c).ok());
    observed.response_flags = number(&["response", "flags"]).unwrap_or(0);
    observed.response_details = details;
    observed.bytes_received = number(&["request", "total_size"]).unwrap_or(0);
    observed.bytes_sent = number(&["response", "total_size"]).unwrap_or(0);
    Ok(observed)
}

/// The event id when Envoy gave the request none (TLS connections never have one).
fn random_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    // Without randomness the id is zeros, which still marks the event as id-less rather than failing it.
    let _ = getrandom::fill(&mut id);
    id
}

/// A property that is absent, or unreadable at this point of the stream, is simply not in the event.
fn string(path: &[&str]) -> Option<String> {
    proxy::property_string(path).ok().flatten().filter(|s| !s.is_empty())
}

fn number(path: &[&str]) -> Option<u64> {
    proxy::property_u64(path).ok().flatten()
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|now| now.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
