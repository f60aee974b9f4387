//! The egress allow-list as an Envoy proxy-wasm filter: glue between Envoy and `egress-core`.
//!
//! One module, two plugins, chosen by root id (Istio's `WasmPlugin.pluginName`):
//! - `egress-allowlist` — HTTP filter: vets `:authority` of every request, CONNECT included;
//! - `egress-allowlist-tls` — network filter: vets the SNI of TLS passthrough connections.
//!
//! The plugin configuration is the policy (JSON). Invalid policy: `on_configure` fails, so Envoy refuses the
//! listener. Every host call is checked; one that fails denies the request (fail closed) instead of panicking.

use egress_core::{state, Action, Decision, HttpRequest, Policy, Reason, SpiffeId};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
use proxy_wasm::types::{Action as Next, BufferType, ContextType, LogLevel, MapType, MetricType, Status};
use std::rc::Rc;

/// Root id of the HTTP filter.
pub const HTTP_ROOT_ID: &str = "egress-allowlist";
/// Root id of the TLS-passthrough (SNI) network filter.
pub const TLS_ROOT_ID: &str = "egress-allowlist-tls";

/// Reply header carrying the machine reason of a local 403/400.
const REASON_HEADER: &str = "x-egress-denied-reason";

#[allow(unsafe_code)] // proxy_wasm::main! exports the module's `_initialize` entry point.
mod entry {
    proxy_wasm::main! {{
        proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
        proxy_wasm::set_root_context(|_| Box::<super::AllowListRoot>::default());
    }}
}

/// Counters, one per outcome, defined once per VM.
#[derive(Clone, Copy)]
struct Metrics {
    allowed: u32,
    denied: u32,
    would_deny: u32,
    malformed: u32,
}

impl Metrics {
    fn define(prefix: &str) -> Result<Metrics, Status> {
        let counter = |name: &str| hostcalls::define_metric(MetricType::Counter, &format!("{prefix}_{name}"));
        Ok(Metrics {
            allowed: counter("allowed")?,
            denied: counter("denied")?,
            would_deny: counter("would_deny")?,
            malformed: counter("malformed")?,
        })
    }

    fn count(&self, decision: &Decision<'_>) {
        let id = match (decision.action, decision.reason) {
            (_, Reason::MalformedAuthority(_) | Reason::MissingSni) => self.malformed,
            (Action::Allow, _) => self.allowed,
            (Action::Deny, _) => self.denied,
            (Action::ReportDeny, _) => self.would_deny,
        };
        // A metric that cannot be bumped must not change the decision.
        let _ = hostcalls::increment_metric(id, 1);
    }
}

#[derive(Default)]
struct AllowListRoot {
    /// Set by a successful `on_configure`; contexts are only created after that.
    filter: Option<Filter>,
    kind: Option<ContextType>,
}

/// What every request context shares: the compiled policy and the metric ids.
#[derive(Clone)]
struct Filter {
    policy: Rc<Policy>,
    metrics: Metrics,
}

impl Context for AllowListRoot {}

impl RootContext for AllowListRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        match self.configure() {
            Ok(()) => true,
            Err(message) => {
                let _ =
                    hostcalls::log(LogLevel::Error, &format!("egress-allowlist: refusing configuration: {message}"));
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        self.kind
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(AllowListHttp { filter: self.filter.clone() }))
    }

    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(AllowListTls { filter: self.filter.clone() }))
    }
}

impl AllowListRoot {
    fn configure(&mut self) -> Result<(), String> {
        let root_id = property_string(&["plugin_root_id"]).map_err(|s| format!("cannot read root id: {s:?}"))?;
        let (kind, metric_prefix) = match root_id.as_deref() {
            Some(HTTP_ROOT_ID) => (ContextType::HttpContext, "egress_allowlist"),
            Some(TLS_ROOT_ID) => (ContextType::StreamContext, "egress_allowlist_tls"),
            other => {
                return Err(format!(
                    "root id {other:?}: use `{HTTP_ROOT_ID}` (HTTP filter) or `{TLS_ROOT_ID}` (network filter, SNI)"
                ))
            }
        };
        let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .map_err(|s| format!("cannot read plugin configuration: {s:?}"))?
            .ok_or("no plugin configuration: the policy is required")?;
        let policy = Policy::from_json(&config).map_err(|errors| errors.to_string())?;
        let metrics = match self.filter.as_ref() {
            // Metrics are per VM; a reconfiguration keeps the ids defined the first time.
            Some(previous) => previous.metrics,
            None => Metrics::define(metric_prefix).map_err(|s| format!("cannot define metrics: {s:?}"))?,
        };
        let _ = hostcalls::log(
            LogLevel::Info,
            &format!("egress-allowlist: {root_id:?} loaded {} rules, mode {:?}", policy.rule_count(), policy.mode()),
        );
        self.filter = Some(Filter { policy: Rc::new(policy), metrics });
        self.kind = Some(kind);
        Ok(())
    }
}

struct AllowListHttp {
    filter: Option<Filter>,
}

impl Context for AllowListHttp {}

impl HttpContext for AllowListHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Next {
        let Some(filter) = &self.filter else { return reply_internal_error("filter not configured") };
        let request = match RequestHeaders::read() {
            Ok(request) => request,
            Err(status) => return reply_internal_error(&format!("cannot read request headers: {status:?}")),
        };
        let identity = match peer_identity() {
            Ok(identity) => identity,
            Err(status) => return reply_internal_error(&format!("cannot read peer identity: {status:?}")),
        };
        let decision = filter.policy.evaluate_http(&HttpRequest {
            authority: request.authority.as_deref().unwrap_or(""),
            scheme: request.scheme.as_deref().unwrap_or("http"),
            method: request.method.as_deref().unwrap_or(""),
            path: request.path.as_deref(),
            identity: identity.as_ref(),
        });
        filter.metrics.count(&decision);
        if let Err(status) = publish(&decision, &filter.policy) {
            return reply_internal_error(&format!("cannot publish decision: {status:?}"));
        }
        if decision.action.proceeds() {
            return Next::Continue;
        }
        let status = decision.http_status();
        let sent = hostcalls::send_http_response(
            u32::from(status),
            vec![("content-type", "application/json"), (REASON_HEADER, decision.reason.code())],
            Some(decision.http_body().as_bytes()),
        );
        if sent.is_err() {
            // Could not reply: drop the stream rather than let the request through.
            let _ = hostcalls::reset_http_request();
        }
        Next::Pause
    }
}

/// The pseudo-headers the decision needs (Envoy has already mapped HTTP/1 `Host` and absolute-form targets to
/// `:authority`).
struct RequestHeaders {
    authority: Option<String>,
    scheme: Option<String>,
    method: Option<String>,
    path: Option<String>,
}

impl RequestHeaders {
    fn read() -> Result<RequestHeaders, Status> {
        // Bytes, not `get_map_value`: that one unwraps UTF-8 and a client-sent Latin-1 byte would kill the VM.
        // Lossy text is safe here because core refuses every non-ASCII authority.
        let header = |name| {
            let value = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)?;
            Ok::<_, Status>(value.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok(RequestHeaders {
            authority: header(":authority")?,
            scheme: header(":scheme")?,
            method: header(":method")?,
            path: header(":path")?,
        })
    }
}

/// Local reply when the filter itself cannot work: the request is refused, never forwarded unvetted.
fn reply_internal_error(why: &str) -> Next {
    let _ = hostcalls::log(LogLevel::Error, &format!("egress-allowlist: {why}"));
    let body = r#"{"error":"egress_filter_error","reason":"internal_error"}"#;
    let headers = vec![("content-type", "application/json"), (REASON_HEADER, "internal_error")];
    if hostcalls::send_http_response(500, headers, Some(body.as_bytes())).is_err() {
        let _ = hostcalls::reset_http_request();
    }
    Next::Pause
}

struct AllowListTls {
    filter: Option<Filter>,
}

impl Context for AllowListTls {}

impl StreamContext for AllowListTls {
    fn on_new_connection(&mut self) -> Next {
        let Some(filter) = &self.filter else { return close_connection("filter not configured") };
        let (sni, port, identity) = match connection_inputs() {
            Ok(inputs) => inputs,
            Err(status) => return close_connection(&format!("cannot read connection properties: {status:?}")),
        };
        let decision = filter.policy.evaluate_tls(sni.as_deref(), port, identity.as_ref());
        filter.metrics.count(&decision);
        if let Err(status) = publish(&decision, &filter.policy) {
            return close_connection(&format!("cannot publish decision: {status:?}"));
        }
        if decision.action.proceeds() {
            Next::Continue
        } else {
            let _ = hostcalls::log(
                LogLevel::Info,
                &format!("egress-allowlist: closing TLS connection to {:?}: {}", sni, decision.reason),
            );
            close_connection_quietly()
        }
    }
}

/// SNI, the port the connection arrived on, and the caller's identity.
fn connection_inputs() -> Result<(Option<String>, u16, Option<SpiffeId>), Status> {
    let sni = property_string(&["connection", "requested_server_name"])?;
    Ok((sni, destination_port()?, peer_identity()?))
}

fn close_connection(why: &str) -> Next {
    let _ = hostcalls::log(LogLevel::Error, &format!("egress-allowlist: {why}"));
    close_connection_quietly()
}

fn close_connection_quietly() -> Next {
    let _ = hostcalls::close_downstream();
    Next::Pause
}

/// Publishes the decision to filter state for the other filters and access logs (keys: `egress_core::state`).
fn publish(decision: &Decision<'_>, policy: &Policy) -> Result<(), Status> {
    let destination = decision.destination.as_ref().map(ToString::to_string).unwrap_or_default();
    let mode = match policy.mode() {
        egress_core::Mode::Enforce => "enforce",
        egress_core::Mode::Report => "report",
    };
    for (key, value) in [
        (state::DECISION, decision.action.as_str()),
        (state::REASON, decision.reason.code()),
        (state::RULE, decision.rule.unwrap_or("")),
        (state::DESTINATION, destination.as_str()),
        (state::MODE, mode),
    ] {
        hostcalls::set_property(vec![key], Some(value.as_bytes()))?;
    }
    Ok(())
}

/// The caller's SPIFFE identity, only from a TLS peer certificate Envoy verified. A URI SAN that is not a valid Istio
/// SPIFFE ID counts as no identity, so identity-scoped rules never match it.
fn peer_identity() -> Result<Option<SpiffeId>, Status> {
    if !property_bool(&["connection", "mtls"])? {
        return Ok(None);
    }
    let uri = property_string(&["connection", "uri_san_peer_certificate"])?;
    Ok(uri.and_then(|uri| SpiffeId::parse(&uri).ok()))
}

/// A string property. Invalid UTF-8 becomes U+FFFD, which no host name or SPIFFE ID accepts: it fails closed.
fn property_string(path: &[&str]) -> Result<Option<String>, Status> {
    let value = hostcalls::get_property(path.to_vec())?;
    Ok(value.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
}

fn property_bool(path: &[&str]) -> Result<bool, Status> {
    Ok(hostcalls::get_property(path.to_vec())?.is_some_and(|bytes| bytes.first().is_some_and(|&b| b != 0)))
}

/// `destination.port`: the port the connection arrived on (Envoy encodes integers as 8 little-endian bytes).
/// Unknown is 0, which no rule with `ports` allows.
fn destination_port() -> Result<u16, Status> {
    let value = hostcalls::get_property(vec!["destination", "port"])?;
    let port = value.and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok()).map(u64::from_le_bytes);
    Ok(port.and_then(|p| u16::try_from(p).ok()).unwrap_or(0))
}
