//! The redirects filter: glue between Envoy and `egress_core::redirect`. Root id: `egress-redirects`; its plugin
//! configuration is the allow-list's policy document.
//!
//! **Vet** (response side): every 3xx with a `Location` that reaches the client is vetted against the same policy
//! and caller as the request, for every method a client may follow it with; a refused one is replaced by a JSON
//! reply, so its `Location` never reaches the client.
//!
//! **Follow** (request side): Envoy's route `internal_redirect_policy` follows redirects by sending each next hop
//! through the filter chain again, where the allow-list vets it before it leaves. This filter keeps the hop state
//! in a request-long property a client cannot touch (never `x-envoy-original-url`) and, before each hop is sent,
//! refuses non-http(s) schemes, downgrades, loops (508) and hops over the target rule's limit (508), hands the
//! redirect back to the client when the target's rule does not follow, and strips credentials (in any spelling)
//! when a hop leaves the original origin (scheme, host, port). A 3xx that Envoy stopped following at the route's
//! limit becomes a 508.

use egress_core::headers::is_alias;
use egress_core::json::Object;
use egress_core::redirect::{self, BaseRequest, FollowedHop, HopState, Target, Vetted};
use egress_core::{state, Action, Policy};
use egress_proxy::{self as proxy, Counter, RequestLine};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action as Next, ContextType, MapType, Status};
use std::rc::Rc;

pub const ROOT_ID: &str = "egress-redirects";
const FILTER: &str = "egress-redirects";

#[allow(unsafe_code)] // proxy_wasm::main! exports the module's `_initialize` entry point.
mod entry {
    proxy_wasm::main! {{
        proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
        proxy_wasm::set_root_context(|_| Box::<super::RedirectsRoot>::default());
    }}
}

#[derive(Clone, Copy)]
struct Metrics {
    allowed: Counter,
    denied: Counter,
    would_deny: Counter,
    rewritten: Counter,
    followed: Counter,
    bounced: Counter,
    loops: Counter,
    hop_limit: Counter,
}

impl Metrics {
    fn define() -> Result<Metrics, String> {
        let counter = |name: &str| Counter::define(&format!("egress_redirects_{name}"));
        Ok(Metrics {
            allowed: counter("allowed")?,
            denied: counter("denied")?,
            would_deny: counter("would_deny")?,
            rewritten: counter("rewritten")?,
            followed: counter("followed")?,
            bounced: counter("bounced")?,
            loops: counter("loops")?,
            hop_limit: counter("hop_limit")?,
        })
    }
}

#[derive(Default)]
struct RedirectsRoot {
    filter: Option<(Rc<Policy>, Metrics)>,
}

impl Context for RedirectsRoot {}

impl RootContext for RedirectsRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        proxy::configure(
            FILTER,
            &mut self.filter,
            |json| {
                let policy = Policy::from_json(json).map_err(|errors| errors.to_string())?;
                // Both must outlive one filter-chain pass to span the hops of a followed redirect.
                proxy::declare_request_property(state::REDIRECTS)?;
                proxy::declare_request_property(state::REDIRECT_HOPS)?;
                Ok(policy)
            },
            Metrics::define,
            |policy| match policy.follow_route_hops() {
                Some(hops) => format!("following redirects up to {hops} hops"),
                None => "following redirects off".to_string(),
            },
        )
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(RedirectsHttp { filter: self.filter.clone(), request: None }))
    }
}

fn base(request: &RequestLine) -> BaseRequest<'_> {
    BaseRequest {
        scheme: &request.scheme,
        authority: &request.authority,
        path: request.path.as_deref().unwrap_or_default(),
        method: &request.method,
    }
}

struct RedirectsHttp {
    filter: Option<(Rc<Policy>, Metrics)>,
    /// What the response side needs of the request, read on the request side even when not following: by the
    /// response, Envoy's router has rewritten the request headers for the upstream (host rewrite), so a relative
    /// Location would resolve against the wrong host.
    request: Option<RequestLine>,
}

impl Context for RedirectsHttp {}

impl HttpContext for RedirectsHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Next {
        let request = match RequestLine::read() {
            Ok(request) => self.request.insert(request),
            Err(status) => return proxy::reply_internal_error(FILTER, &format!("cannot read the request: {status:?}")),
        };
        let Some((policy, metrics)) = &self.filter else {
            return proxy::reply_internal_error(FILTER, "not configured");
        };
        match judge_request(policy, metrics, request) {
            Ok(next) => next,
            Err(status) => proxy::reply_internal_error(FILTER, &format!("cannot judge the hop: {status:?}")),
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Next {
        match self.vet_response() {
            Ok(next) => next,
            Err(status) => proxy::reply_internal_error(FILTER, &format!("cannot vet the response: {status:?}")),
        }
    }
}

/// The request side: the first request starts the hop state; a later one is a hop Envoy is following.
fn judge_request(policy: &Policy, metrics: &Metrics, request: &RequestLine) -> Result<Next, Status> {
    if policy.follow_route_hops().is_none() {
        return Ok(Next::Continue);
    }
    let base = base(request);
    let Some(state) = proxy::property_string(&[state::REDIRECT_HOPS])? else {
        // The first request. One whose authority does not parse is the allow-list's to refuse.
        if let Ok(target) = Target::of_request(&base) {
            save_hop_state(&HopState::start(&base, &target))?;
        }
        return Ok(Next::Continue);
    };
    // Unreadable state is our own bug; refusing is the safe answer.
    let Some(mut state) = HopState::from_json(&state) else {
        return Ok(proxy::reply_internal_error(FILTER, "unreadable hop state"));
    };
    let counted = proxy::property_string(&["filter_state", "num_internal_redirects"])?.and_then(|n| n.parse().ok());
    let hops = counted.unwrap_or(u32::try_from(state.visited.len()).unwrap_or(u32::MAX));
    match proxy::with_caller(|caller| policy.judge_followed_hop(&state, &base, hops, caller))? {
        FollowedHop::Proceed { vetted, strip_credentials } => {
            // Envoy adds the previous hop's URL, query included: it must not reach the next host.
            proxy::remove_request_header("x-envoy-original-url")?;
            if strip_credentials {
                let headers = proxy::request_headers()?;
                let credential = |name: &str| redirect::CREDENTIAL_HEADERS.iter().any(|c| is_alias(name, c));
                proxy::remove_headers_where(MapType::HttpRequestHeaders, &headers, credential)?;
            }
            if let Some(target) = &vetted.target {
                state.record(&base, target);
            }
            save_hop_state(&state)?;
            append_hop(&followed_record(&vetted, vetted.action.as_str()))?;
            metrics.followed.increment();
            Ok(Next::Continue)
        }
        FollowedHop::Bounce { location, vetted } => {
            append_hop(&followed_record(&vetted, "bounce"))?;
            metrics.bounced.increment();
            let body = Object::new().str("reason", "rule_does_not_follow").str("redirect", "not_followed").finish();
            Ok(proxy::reply_with(302, "rule_does_not_follow", &body, &[("location", &location)]))
        }
        FollowedHop::Refuse { status, reason, vetted } => {
            let counter = match reason {
                redirect::LOOP_REASON => metrics.loops,
                redirect::HOP_LIMIT_REASON => metrics.hop_limit,
                _ => metrics.denied,
            };
            counter.increment();
            let record = match &vetted {
                Some(vetted) => followed_record(vetted, "deny"),
                None => record("deny", true, None, reason, None),
            };
            append_hop(&record)?;
            Ok(proxy::reply(status, reason, &refusal_body(reason, u64::from(hops))))
        }
    }
}

fn save_hop_state(state: &HopState) -> Result<(), Status> {
    proxy::publish_record(state::REDIRECT_HOPS, state)
}

/// Appends one hop record (a JSON object) to the request-long chain in filter state, a JSON array only this filter
/// writes; anything else there is replaced.
fn append_hop(record: &str) -> Result<(), Status> {
    let chain = proxy::property_string(&[state::REDIRECTS])?;
    let chain = match chain.as_deref().and_then(|c| c.strip_suffix(']')) {
        Some(head) if head.starts_with("[{") => format!("{head},{record}]"),
        _ => format!("[{record}]"),
    };
    proxy::publish(state::REDIRECTS, &chain)
}

/// One hop of the chain published to filter state (`egress_core::state::REDIRECTS`, read back by the audit filter
/// as `egress_core::audit::RedirectHop`). Members in sorted order, as `serde_json::json!` wrote them.
fn record(action: &str, followed: bool, location: Option<&str>, reason: &str, status: Option<u16>) -> String {
    let object = Object::new().str("action", action);
    let object = if followed { object.bool("followed", true) } else { object };
    object.opt_str("location", location).str("reason", reason).opt_uint("status", status.map(u64::from)).finish()
}

/// The reply when a redirect is refused for the hop count.
fn refusal_body(reason: &str, hops: u64) -> String {
    Object::new().str("error", "redirect_denied").uint("hops", hops).str("reason", reason).finish()
}

fn vetted_reason(vetted: &Vetted<'_>) -> &'static str {
    vetted.reason.map_or("allowed", |r| r.code())
}

/// A hop Envoy followed: its 3xx never reached a filter, so the status is unknown.
fn followed_record(vetted: &Vetted<'_>, action: &str) -> String {
    let location = vetted.target.as_ref().map(|t| t.url_without_query());
    record(action, true, location.as_deref(), vetted_reason(vetted), None)
}

impl RedirectsHttp {
    fn vet_response(&mut self) -> Result<Next, Status> {
        let status = proxy::response_header(":status")?.and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
        if !redirect::is_redirect(status) {
            return Ok(Next::Continue);
        }
        let (Some((policy, metrics)), Some(request)) = (&self.filter, &self.request) else {
            return Ok(proxy::reply_internal_error(FILTER, "not configured"));
        };
        // Envoy hands a 3xx it follows to the filters instead once the route's limit is reached.
        if let Some(route_max) = policy.follow_route_hops().filter(|_| redirect::FOLLOWED_STATUSES.contains(&status)) {
            let hops = proxy::property_string(&["filter_state", "num_internal_redirects"])?
                .and_then(|n| n.parse::<u32>().ok());
            if hops.is_some_and(|hops| hops >= route_max) {
                metrics.hop_limit.increment();
                let reason = redirect::HOP_LIMIT_REASON;
                append_hop(&record("deny", false, None, reason, Some(status)))?;
                let body = refusal_body(reason, hops.map_or(0, u64::from));
                return Ok(proxy::reply(redirect::LOOP_STATUS, reason, &body));
            }
        }
        let locations = proxy::response_header_values("location")?;
        let location = match locations.as_slice() {
            [] => return Ok(Next::Continue), // a 3xx without Location redirects nowhere: pass it unchanged
            [one] => one.as_str(),
            // Two Locations: clients disagree on which wins, so neither is followed.
            _ => "",
        };
        let vetted = proxy::with_caller(|caller| policy.vet_redirect(&base(request), status, location, caller))?;
        append_hop(&hop_record(status, &vetted))?;
        match vetted.action {
            Action::Allow => metrics.allowed.increment(),
            Action::ReportDeny => metrics.would_deny.increment(),
            Action::Deny => {
                metrics.denied.increment();
                let reason = vetted.reason.map_or("redirect_denied", |r| r.code());
                return Ok(proxy::reply(policy.redirects().deny_status, reason, &vetted.http_body(status)));
            }
        }
        if let Some(rewritten) = policy.rewrite_for_tls_origination(&vetted) {
            proxy::set_response_header("location", &rewritten)?;
            metrics.rewritten.increment();
        }
        Ok(Next::Continue)
    }
}

/// One hop of the chain published to filter state (`egress_core::state::REDIRECTS`).
fn hop_record(status: u16, vetted: &Vetted<'_>) -> String {
    let location = vetted.target.as_ref().map(|t| t.url_without_query());
    record(vetted.action.as_str(), false, location.as_deref(), vetted_reason(vetted), Some(status))
}
