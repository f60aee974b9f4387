//! The redirects stage: glue between the host and `egress_core::redirect`, reading the allow-list's policy.
//!
//! **Vet** (response side): every 3xx with a `Location` that reaches the client is vetted against the same policy
//! and caller as the request, for every method a client may follow it with; a refused one is replaced by a JSON
//! reply, so its `Location` never reaches the client. A response that is not a 3xx costs one header read.
//!
//! **Follow** (request side): Envoy's route `internal_redirect_policy` follows redirects by sending each next hop
//! through the filter chain again, where the allow-list vets it before it leaves. This stage keeps the hop state in a
//! request-long property a client cannot touch (never `x-envoy-original-url`) and, before each hop is sent, refuses
//! non-http(s) schemes, downgrades, loops (508) and hops over the target rule's limit (508), hands the redirect back
//! to the client when the target's rule does not follow, and strips credentials (in any spelling) when a hop leaves
//! the original origin (scheme, host, port). A 3xx that Envoy stopped following at the route's limit becomes a 508.

use egress_core::headers::is_alias;
use egress_core::json::Object;
use egress_core::redirect::{self, FollowedHop, HopState, Target, Vetted};
use egress_core::state::{self, RedirectHop};
use egress_core::{Action, Policy};
use egress_proxy::{self as proxy, Counter, Host, HttpStage, Request, Step};
use proxy_wasm::types::{MapType, Status};
use std::rc::Rc;

/// Root id of the separate filter.
pub const ROOT_ID: &str = "egress-redirects";
/// The proxy-wasm callbacks this stage needs exported.
pub const CALLBACKS: &[&str] = &["proxy_on_request_headers", "proxy_on_response_headers"];

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
    fn define(host: &dyn Host) -> Result<Metrics, String> {
        let counter = |name: &str| Counter::define(host, &format!("egress_redirects_{name}"));
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

/// The redirects stage over the policy.
pub struct Redirects {
    policy: Rc<Policy>,
    metrics: Metrics,
}

impl Redirects {
    /// The stage, its counters defined. Its two request-long properties must be declared from the root context
    /// ([`declare_properties`]).
    pub fn new(host: &dyn Host, policy: Rc<Policy>) -> Result<Redirects, String> {
        Ok(Redirects { policy, metrics: Metrics::define(host)? })
    }

    /// The request side when following: the first request starts the hop state; a later one is a hop Envoy is
    /// following.
    fn judge_hop(&self, host: &dyn Host, request: &mut Request) -> Result<Step, Status> {
        let (policy, metrics) = (&*self.policy, &self.metrics);
        let Some(state) = proxy::property_string(host, &[state::REDIRECT_HOPS])? else {
            // The first request. One whose authority does not parse is the allow-list's to refuse.
            request.redirected = Some(false);
            let line = request.facts.line(host)?;
            if let Ok(target) = Target::of_request(&line) {
                proxy::publish_record(host, state::REDIRECT_HOPS, &HopState::start(&line, &target))?;
            }
            return Ok(Step::Continue);
        };
        request.redirected = Some(true);
        // Unreadable state is our own bug; refusing is the safe answer.
        let Some(mut state) = HopState::from_json(&state) else {
            egress_proxy::pipeline::reply_internal_error(host, "egress-redirects: unreadable hop state");
            return Ok(Step::Stop);
        };
        // The first followed hop keeps the allow-list's decision on the client's request (request-long, so still
        // there) before this pass's allow-list replaces it: the chain is audited as the client's request.
        let kept_decision = state.decision.is_none() && {
            state.decision = proxy::property_string(host, &[state::DECISION])?;
            state.decision.is_some()
        };
        let counted =
            proxy::property_string(host, &["filter_state", "num_internal_redirects"])?.and_then(|n| n.parse().ok());
        let hops = counted.unwrap_or(u32::try_from(state.visited.len()).unwrap_or(u32::MAX));
        let line = request.facts.line(host)?;
        let judged = Request::with_caller(&request.caller, host, |caller| {
            policy.judge_followed_hop(&state, &line, hops, caller)
        })?;
        // The hop goes into the chain (and the kept decision into the state) before any reply is sent.
        let keep = |host: &dyn Host, request: &mut Request, state: &HopState, record: &RedirectHop| {
            if kept_decision {
                proxy::publish_record(host, state::REDIRECT_HOPS, state)?;
            }
            append_hop(host, request, record)
        };
        match judged {
            FollowedHop::Proceed { vetted, strip_credentials } => {
                if let Some(target) = &vetted.target {
                    state.record(&line, target);
                }
                // Envoy adds the previous hop's URL, query included: it must not reach the next host.
                host.remove_map_value(MapType::HttpRequestHeaders, "x-envoy-original-url")?;
                if strip_credentials {
                    let credential = |name: &str| redirect::CREDENTIAL_HEADERS.iter().any(|c| is_alias(name, c));
                    request.facts.remove_headers_where(host, credential)?;
                }
                proxy::publish_record(host, state::REDIRECT_HOPS, &state)?;
                append_hop(host, request, &followed_record(&vetted, vetted.action.as_str(), true))?;
                metrics.followed.increment(host);
                if vetted.action == Action::ReportDeny {
                    metrics.would_deny.increment(host);
                }
                Ok(Step::Continue)
            }
            FollowedHop::Bounce { location, vetted } => {
                keep(host, request, &state, &followed_record(&vetted, "bounce", false))?;
                metrics.bounced.increment(host);
                let body = Object::new().str("reason", "rule_does_not_follow").str("redirect", "not_followed").finish();
                Ok(proxy::reply(host, 302, "rule_does_not_follow", &body, &[("location", &location)]))
            }
            FollowedHop::Refuse { status, reason, vetted } => {
                let counter = match reason {
                    redirect::LOOP_REASON => metrics.loops,
                    redirect::HOP_LIMIT_REASON => metrics.hop_limit,
                    _ => metrics.denied,
                };
                counter.increment(host);
                // Refused before it was sent: the gateway did not follow it.
                let record = match &vetted {
                    Some(vetted) => followed_record(vetted, "deny", false),
                    None => record("deny", false, None, reason, None),
                };
                keep(host, request, &state, &record)?;
                Ok(proxy::reply(host, status, reason, &refusal_body(reason, u64::from(hops)), &[]))
            }
        }
    }
}

/// Declares the stage's request-long properties (they must outlive one filter-chain pass to span the hops of a
/// followed redirect). From a root context's configuration only.
pub fn declare_properties() -> Result<(), String> {
    egress_proxy::config::declare_request_property(state::REDIRECTS)?;
    egress_proxy::config::declare_request_property(state::REDIRECT_HOPS)
}

impl HttpStage for Redirects {
    fn name(&self) -> &'static str {
        "redirects"
    }

    fn on_request_headers(&self, host: &dyn Host, request: &mut Request) -> Result<Step, Status> {
        if self.policy.follow_route_hops().is_none() {
            // Read now even when not following: by the response, Envoy's router has rewritten the request headers
            // for the upstream (host rewrite), and a relative Location resolves against the request as sent. In the
            // suite the earlier stages have read it already.
            request.facts.line(host)?;
            request.redirected = Some(false);
            return Ok(Step::Continue);
        }
        self.judge_hop(host, request)
    }

    fn on_response_headers(&self, host: &dyn Host, request: &mut Request) -> Result<Step, Status> {
        let status = request.response_status(host)?;
        if !redirect::is_redirect(status) {
            return Ok(Step::Continue);
        }
        let (policy, metrics) = (&*self.policy, &self.metrics);
        // Envoy hands a 3xx it follows to the filters instead once the route's limit is reached.
        if let Some(route_max) = policy.follow_route_hops().filter(|_| redirect::FOLLOWED_STATUSES.contains(&status)) {
            let hops = proxy::property_string(host, &["filter_state", "num_internal_redirects"])?
                .and_then(|n| n.parse::<u32>().ok());
            if hops.is_some_and(|hops| hops >= route_max) {
                metrics.hop_limit.increment(host);
                let reason = redirect::HOP_LIMIT_REASON;
                append_hop(host, request, &record("deny", false, None, reason, Some(status)))?;
                let body = refusal_body(reason, hops.map_or(0, u64::from));
                return Ok(proxy::reply(host, redirect::LOOP_STATUS, reason, &body, &[]));
            }
        }
        let headers = host.map(MapType::HttpResponseHeaders)?;
        let mut locations = headers.iter().filter(|(name, _)| name == "location");
        let location = match (locations.next(), locations.next()) {
            (None, _) => return Ok(Step::Continue), // a 3xx without Location redirects nowhere: pass it unchanged
            (Some((_, one)), None) => String::from_utf8_lossy(one).into_owned(),
            // Two Locations: clients disagree on which wins, so neither is followed.
            (Some(_), Some(_)) => String::new(),
        };
        let line = request.facts.line(host)?;
        let vetted = Request::with_caller(&request.caller, host, |caller| {
            policy.vet_redirect(&line, status, &location, caller)
        })?;
        append_hop(host, request, &hop_record(status, &vetted))?;
        match vetted.action {
            Action::Allow => metrics.allowed.increment(host),
            Action::ReportDeny => metrics.would_deny.increment(host),
            Action::Deny => {
                metrics.denied.increment(host);
                let reason = vetted.reason.map_or("redirect_denied", |r| r.code());
                return Ok(proxy::reply(host, policy.redirects().deny_status, reason, &vetted.http_body(status), &[]));
            }
        }
        if let Some(rewritten) = policy.rewrite_for_tls_origination(&vetted) {
            host.set_map_value(MapType::HttpResponseHeaders, "location", &rewritten)?;
            metrics.rewritten.increment(host);
        }
        Ok(Step::Continue)
    }
}

/// Appends one hop to the request-long chain in filter state ([`state::append_hop`]).
fn append_hop(host: &dyn Host, request: &mut Request, hop: &RedirectHop) -> Result<(), Status> {
    request.redirected = Some(true);
    let chain = proxy::property_string(host, &[state::REDIRECTS])?;
    host.set_property(state::REDIRECTS, state::append_hop(chain.as_deref(), hop).as_bytes())
}

/// A hop of the chain.
fn record(action: &str, followed: bool, location: Option<String>, reason: &str, status: Option<u16>) -> RedirectHop {
    RedirectHop { status, location, action: action.into(), reason: reason.into(), followed }
}

/// The reply when a redirect is refused for the hop count.
fn refusal_body(reason: &str, hops: u64) -> String {
    Object::new().str("error", "redirect_denied").uint("hops", hops).str("reason", reason).finish()
}

fn vetted_reason(vetted: &Vetted<'_>) -> &'static str {
    vetted.reason.map_or("allowed", |r| r.code())
}

/// A hop Envoy was following (sent when `followed`, else refused or handed back): its 3xx never reached a filter,
/// so the status is unknown.
fn followed_record(vetted: &Vetted<'_>, action: &str, followed: bool) -> RedirectHop {
    let location = vetted.target.as_ref().map(|t| t.url_without_query());
    record(action, followed, location, vetted_reason(vetted), None)
}

/// One vetted 3xx of the chain.
fn hop_record(status: u16, vetted: &Vetted<'_>) -> RedirectHop {
    let location = vetted.target.as_ref().map(|t| t.url_without_query());
    record(vetted.action.as_str(), false, location, vetted_reason(vetted), Some(status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use egress_proxy::fake::FakeHost;

    const POLICY: &str = r#"{"rules":[{"name":"httpbin","hosts":["httpbin.org","*.httpbin.org"]}]}"#;

    fn stage(host: &FakeHost, policy: &str) -> Redirects {
        Redirects::new(host, Rc::new(Policy::from_json(policy.as_bytes()).unwrap())).unwrap()
    }

    fn exchange(status: &str, location: Option<&str>) -> FakeHost {
        let mut response = vec![(":status", status)];
        response.extend(location.map(|l| ("location", l)));
        FakeHost::new()
            .with_request(&[(":authority", "httpbin.org"), (":method", "GET"), (":path", "/a"), (":scheme", "http")])
            .with_response(&response)
    }

    #[test]
    fn a_response_that_is_no_3xx_costs_one_header_read() {
        let host = exchange("200", None);
        let redirects = stage(&host, POLICY);
        let mut request = Request::default();
        redirects.on_request_headers(&host, &mut request).unwrap();
        host.clear_calls();
        assert_eq!(redirects.on_response_headers(&host, &mut request), Ok(Step::Continue));
        assert_eq!(host.calls(), ["map_value(response_headers::status)"]);
        assert_eq!(request.redirected, Some(false), "the audit need not read a chain");
    }

    #[test]
    fn any_3xx_location_is_vetted_and_a_refused_one_never_reaches_the_client() {
        for status in ["300", "302", "305", "399"] {
            let host = exchange(status, Some("http://evil.example/steal"));
            let redirects = stage(&host, POLICY);
            let mut request = Request::default();
            assert_eq!(redirects.on_response_headers(&host, &mut request), Ok(Step::Stop), "{status}");
            let (code, reason, body) = host.reply().unwrap();
            assert_eq!((code, reason.as_deref()), (403, Some("host_not_allowed")));
            assert!(!body.contains("steal"), "{body}");
            assert!(host.published(state::REDIRECTS).unwrap().contains("host_not_allowed"));
        }
        let host = exchange("302", Some("http://eu.httpbin.org/"));
        let redirects = stage(&host, POLICY);
        assert_eq!(redirects.on_response_headers(&host, &mut Request::default()), Ok(Step::Continue));
        assert_eq!(host.metric("egress_redirects_allowed"), Some(1));
    }

    #[test]
    fn a_followed_hop_to_another_origin_loses_every_spelling_of_its_credentials() {
        let policy =
            r#"{"rules":[{"name":"httpbin","hosts":["httpbin.org","*.httpbin.org"]}],"redirects":{"follow":true}}"#;
        let first = FakeHost::new().with_request(&[
            (":authority", "httpbin.org"),
            (":method", "GET"),
            (":path", "/"),
            (":scheme", "http"),
        ]);
        let redirects = stage(&first, policy);
        redirects.on_request_headers(&first, &mut Request::default()).unwrap();
        let state = first.published(state::REDIRECT_HOPS).unwrap();
        let hop = FakeHost::new()
            .with_request(&[
                (":authority", "eu.httpbin.org"),
                (":method", "GET"),
                (":path", "/next"),
                (":scheme", "http"),
                ("authorization", "secret"),
                ("proxy_authorization", "secret"),
                ("cookie", "secret"),
                ("x-envoy-original-url", "http://httpbin.org/"),
            ])
            .with_property(&[state::REDIRECT_HOPS], state.as_bytes());
        let redirects = stage(&hop, policy);
        assert_eq!(redirects.on_request_headers(&hop, &mut Request::default()), Ok(Step::Continue));
        for gone in ["authorization", "proxy_authorization", "cookie", "x-envoy-original-url"] {
            assert!(hop.request_header(gone).is_empty(), "{gone}");
        }
        assert_eq!(hop.metric("egress_redirects_followed"), Some(1));
    }
}
