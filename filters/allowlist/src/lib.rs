//! The egress allow-list as an Envoy proxy-wasm filter: glue between Envoy and `egress-core`.
//!
//! One module, two plugins, chosen by root id (Istio's `WasmPlugin.pluginName`):
//! - `egress-allowlist` — HTTP filter: vets `:authority` of every request, CONNECT included;
//! - `egress-allowlist-tls` — network filter: vets the SNI of TLS passthrough connections.
//!
//! The plugin configuration is the policy (JSON). Invalid policy: `on_configure` fails, so Envoy refuses the
//! listener. A host call that fails denies the request (fail closed) instead of panicking.

use egress_core::state::{self, DecisionRecord};
use egress_core::{Action, Decision, HttpRequest, Mode, Policy, Reason};
use egress_proxy::{self as proxy, Counter, RequestLine};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
use proxy_wasm::types::{Action as Next, ContextType, LogLevel, Status};
use std::rc::Rc;

/// Root id of the HTTP filter.
pub const HTTP_ROOT_ID: &str = "egress-allowlist";
/// Root id of the TLS-passthrough (SNI) network filter.
pub const TLS_ROOT_ID: &str = "egress-allowlist-tls";

const FILTER: &str = "egress-allowlist";

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
    allowed: Counter,
    denied: Counter,
    would_deny: Counter,
    malformed: Counter,
}

impl Metrics {
    fn define(prefix: &str) -> Result<Metrics, String> {
        let counter = |name: &str| Counter::define(&format!("{prefix}_{name}"));
        Ok(Metrics {
            allowed: counter("allowed")?,
            denied: counter("denied")?,
            would_deny: counter("would_deny")?,
            malformed: counter("malformed")?,
        })
    }

    fn count(&self, decision: &Decision<'_>) {
        let counter = match (decision.action, decision.reason) {
            (_, Reason::MalformedAuthority(_) | Reason::MissingSni) => self.malformed,
            (Action::Allow, _) => self.allowed,
            (Action::Deny, _) => self.denied,
            (Action::ReportDeny, _) => self.would_deny,
        };
        counter.increment();
    }
}

/// The compiled policy and the counters, shared by every request context.
type Filter = (Rc<Policy>, Metrics);

#[derive(Default)]
struct AllowListRoot {
    /// Set by a successful `on_configure`; contexts are only created after that.
    filter: Option<Filter>,
    kind: Option<ContextType>,
}

impl Context for AllowListRoot {}

impl RootContext for AllowListRoot {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let root_id = proxy::root_id().unwrap_or_default();
        let (kind, metric_prefix) = match root_id.as_str() {
            HTTP_ROOT_ID => (ContextType::HttpContext, "egress_allowlist"),
            TLS_ROOT_ID => (ContextType::StreamContext, "egress_allowlist_tls"),
            other => {
                let why = format!("root id {other:?}: use `{HTTP_ROOT_ID}` (HTTP) or `{TLS_ROOT_ID}` (network, SNI)");
                proxy::log(LogLevel::Error, &format!("{FILTER}: refusing configuration: {why}"));
                return false;
            }
        };
        self.kind = Some(kind);
        // The policy is parsed as it is read from the host, and the HTTP and TLS plugins of one VM share it when
        // their configurations are the same: a large policy costs each worker's VM its compiled form once.
        let build = || {
            proxy::shared_config(plugin_configuration_size, |config| {
                Policy::from_buf_reader(config).map_err(|errors| errors.to_string())
            })
        };
        proxy::configure_with(
            FILTER,
            &mut self.filter,
            build,
            || Metrics::define(metric_prefix),
            |policy| format!("{root_id}: {} rules, mode {:?}", policy.rule_count(), policy.mode()),
        )
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

struct AllowListHttp {
    filter: Option<Filter>,
}

impl Context for AllowListHttp {}

impl HttpContext for AllowListHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Next {
        let Some((policy, metrics)) = &self.filter else {
            return proxy::reply_internal_error(FILTER, "not configured");
        };
        let request = match RequestLine::read() {
            Ok(request) => request,
            Err(status) => return proxy::reply_internal_error(FILTER, &format!("cannot read the request: {status:?}")),
        };
        let judged = proxy::with_caller(|caller| {
            policy.evaluate_http(&HttpRequest {
                authority: &request.authority,
                scheme: if request.scheme.is_empty() { "http" } else { &request.scheme },
                method: &request.method,
                path: request.path.as_deref(),
                caller,
            })
        });
        let decision = match judged {
            Ok(decision) => decision,
            Err(status) => {
                return proxy::reply_internal_error(FILTER, &format!("cannot read the caller's identity: {status:?}"))
            }
        };
        metrics.count(&decision);
        if let Err(status) = publish(&decision, policy) {
            return proxy::reply_internal_error(FILTER, &format!("cannot publish the decision: {status:?}"));
        }
        if decision.action.proceeds() {
            Next::Continue
        } else {
            proxy::reply(decision.http_status(), decision.reason.code(), &decision.http_body())
        }
    }
}

struct AllowListTls {
    filter: Option<Filter>,
}

impl Context for AllowListTls {}

impl StreamContext for AllowListTls {
    fn on_new_connection(&mut self) -> Next {
        let Some((policy, metrics)) = &self.filter else { return proxy::close_connection(FILTER, "not configured") };
        let inputs = (|| -> Result<_, Status> {
            let sni = proxy::property_string(&["connection", "requested_server_name"])?;
            // Unknown is 0, which no rule with `ports` allows.
            let port = proxy::property_u64(&["destination", "port"])?.and_then(|p| u16::try_from(p).ok()).unwrap_or(0);
            Ok((sni, port))
        })();
        let (sni, port) = match inputs {
            Ok(inputs) => inputs,
            Err(status) => {
                return proxy::close_connection(FILTER, &format!("cannot read connection properties: {status:?}"))
            }
        };
        let decision = match proxy::with_caller(|caller| policy.evaluate_tls(sni.as_deref(), port, caller)) {
            Ok(decision) => decision,
            Err(status) => {
                return proxy::close_connection(FILTER, &format!("cannot read the caller's identity: {status:?}"))
            }
        };
        metrics.count(&decision);
        if let Err(status) = publish(&decision, policy) {
            return proxy::close_connection(FILTER, &format!("cannot publish the decision: {status:?}"));
        }
        if decision.action.proceeds() {
            return Next::Continue;
        }
        proxy::log(LogLevel::Info, &format!("{FILTER}: closing TLS connection to {sni:?}: {}", decision.reason));
        let _ = hostcalls::close_downstream();
        Next::Pause
    }
}

/// Publishes the decision to filter state for the other filters and access logs, as one record
/// (`egress_core::state::DECISION`).
fn publish(decision: &Decision<'_>, policy: &Policy) -> Result<(), Status> {
    let destination = decision.destination.as_ref().map(ToString::to_string);
    let mode = match policy.mode() {
        Mode::Enforce => "enforce",
        Mode::Report => "report",
    };
    proxy::publish_record(
        state::DECISION,
        &DecisionRecord {
            action: decision.action.as_str(),
            reason: decision.reason.code(),
            rule: decision.rule,
            destination: destination.as_deref(),
            mode,
        },
    )
}
