//! The allow-list stage: egress only to what the policy allows. HTTP (`:authority` of every request, CONNECT
//! included) and TLS passthrough (the SNI). It publishes its decision to filter state (`egress.decision`) and to the
//! request's context, counts it, and refuses what the policy denies: 403 (400 for what cannot be parsed), or a
//! closed connection. Glue over `egress_core::Policy`; the separate module and the suite both run it.

use egress_core::state::{self, DecisionRecord};
use egress_core::{Action, Decision, HttpRequest, Mode, Policy, Reason};
use egress_proxy::{self as proxy, Connection, Counter, Host, HttpStage, Layer, Request, Step, TlsStage};
use proxy_wasm::types::{LogLevel, Status};
use std::rc::Rc;

/// Root id of the separate HTTP filter.
pub const HTTP_ROOT_ID: &str = "egress-allowlist";
/// Root id of the separate TLS-passthrough (SNI) network filter.
pub const TLS_ROOT_ID: &str = "egress-allowlist-tls";
/// The proxy-wasm callbacks this stage needs exported (a module lists the union of its stages').
pub const CALLBACKS: &[&str] = &["proxy_on_request_headers", "proxy_on_new_connection"];

/// Counters, one per outcome.
#[derive(Clone, Copy)]
struct Metrics {
    allowed: Counter,
    denied: Counter,
    would_deny: Counter,
    malformed: Counter,
}

impl Metrics {
    fn define(host: &dyn Host, prefix: &str) -> Result<Metrics, String> {
        let counter = |name: &str| Counter::define(host, &format!("{prefix}_{name}"));
        Ok(Metrics {
            allowed: counter("allowed")?,
            denied: counter("denied")?,
            would_deny: counter("would_deny")?,
            malformed: counter("malformed")?,
        })
    }

    fn count(&self, host: &dyn Host, decision: &Decision<'_>) {
        let counter = match (decision.action, decision.reason) {
            (_, Reason::MalformedAuthority(_) | Reason::MissingSni) => self.malformed,
            (Action::Allow, _) => self.allowed,
            (Action::Deny, _) => self.denied,
            (Action::ReportDeny, _) => self.would_deny,
        };
        counter.increment(host);
    }
}

/// The allow-list stage over one compiled policy.
pub struct AllowList {
    policy: Rc<Policy>,
    metrics: Metrics,
}

impl AllowList {
    /// The stage for `layer`, its counters defined: `egress_allowlist_*` for HTTP, `egress_allowlist_tls_*` for TLS.
    pub fn new(host: &dyn Host, policy: Rc<Policy>, layer: Layer) -> Result<AllowList, String> {
        let prefix = match layer {
            Layer::Http => "egress_allowlist",
            Layer::Tls => "egress_allowlist_tls",
        };
        Ok(AllowList { policy, metrics: Metrics::define(host, prefix)? })
    }

    /// Counts and publishes a decision: to filter state (for separate filters and access logs) and to the context.
    fn record(&self, host: &dyn Host, decision: &Decision<'_>) -> Result<DecisionRecord<String>, Status> {
        self.metrics.count(host, decision);
        let destination = decision.destination.as_ref().map(ToString::to_string);
        let mode = match self.policy.mode() {
            Mode::Enforce => "enforce",
            Mode::Report => "report",
        };
        let record = DecisionRecord {
            action: decision.action.as_str(),
            reason: decision.reason.code(),
            rule: decision.rule,
            destination: destination.as_deref(),
            mode,
        };
        proxy::publish_record(host, state::DECISION, &record)?;
        Ok(DecisionRecord {
            action: record.action.to_string(),
            reason: record.reason.to_string(),
            rule: record.rule.map(str::to_string),
            destination,
            mode: mode.to_string(),
        })
    }
}

/// Declares `egress.decision` as request-long, so the decision on the client's request outlives the filter-chain pass
/// and a followed redirect's later passes can still read it (the redirects stage keeps it for the audit). From an
/// HTTP root context's configuration only.
pub fn declare_properties() -> Result<(), String> {
    egress_proxy::config::declare_request_property(state::DECISION)
}

impl HttpStage for AllowList {
    fn name(&self) -> &'static str {
        "allowlist"
    }

    fn on_request_headers(&self, host: &dyn Host, request: &mut Request) -> Result<Step, Status> {
        let line = request.facts.line(host)?;
        let decision = Request::with_caller(&request.caller, host, |caller| {
            self.policy.evaluate_http(&HttpRequest {
                authority: &line.authority,
                scheme: if line.scheme.is_empty() { "http" } else { &line.scheme },
                method: &line.method,
                path: line.path.as_deref(),
                caller,
            })
        })?;
        request.decision = Some(self.record(host, &decision)?);
        if decision.action.proceeds() {
            return Ok(Step::Continue);
        }
        Ok(proxy::reply(host, decision.http_status(), decision.reason.code(), &decision.http_body(), &[]))
    }
}

impl TlsStage for AllowList {
    fn name(&self) -> &'static str {
        "allowlist"
    }

    fn on_new_connection(&self, host: &dyn Host, connection: &mut Connection) -> Result<Step, Status> {
        let sni = proxy::property_string(host, &["connection", "requested_server_name"])?;
        // Unknown is 0, which no rule with `ports` allows.
        let port =
            proxy::property_u64(host, &["destination", "port"])?.and_then(|p| u16::try_from(p).ok()).unwrap_or(0);
        let decision = proxy::with_caller(host, |caller| self.policy.evaluate_tls(sni.as_deref(), port, caller))?;
        connection.decision = Some(self.record(host, &decision)?);
        if decision.action.proceeds() {
            return Ok(Step::Continue);
        }
        host.log(LogLevel::Info, &format!("egress-allowlist: closing TLS connection to {sni:?}: {}", decision.reason));
        let _ = host.close_downstream();
        Ok(Step::Stop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use egress_proxy::fake::FakeHost;

    fn stage(host: &FakeHost, policy: &str, layer: Layer) -> AllowList {
        AllowList::new(host, Rc::new(Policy::from_json(policy.as_bytes()).unwrap()), layer).unwrap()
    }

    const POLICY: &str = r#"{"rules":[{"name":"httpbin","hosts":["httpbin.org"]},
        {"name":"sleep","hosts":["internal.example"],"principals":["cluster.local/ns/app/sa/sleep"]}]}"#;

    fn get(authority: &str) -> FakeHost {
        FakeHost::new().with_request(&[
            (":authority", authority),
            (":method", "GET"),
            (":path", "/"),
            (":scheme", "http"),
        ])
    }

    #[test]
    fn an_allowed_request_costs_one_map_read_one_count_and_one_record() {
        let host = get("httpbin.org");
        let allowlist = stage(&host, POLICY, Layer::Http);
        host.clear_calls();
        let mut request = Request::default();
        assert_eq!(allowlist.on_request_headers(&host, &mut request), Ok(Step::Continue));
        assert_eq!(
            host.calls(),
            ["map(request_headers)", "increment_metric(egress_allowlist_allowed)", "set_property(egress.decision)"]
        );
        assert_eq!(request.decision.unwrap().rule.as_deref(), Some("httpbin"));
        assert_eq!(
            host.published(state::DECISION).unwrap(),
            r#"{"action":"allow","reason":"allowed","rule":"httpbin","destination":"httpbin.org:80","mode":"enforce"}"#
        );
    }

    #[test]
    fn a_denied_request_is_answered_here() {
        let host = get("evil.example");
        let allowlist = stage(&host, POLICY, Layer::Http);
        assert_eq!(allowlist.on_request_headers(&host, &mut Request::default()), Ok(Step::Stop));
        let (status, reason, body) = host.reply().unwrap();
        assert_eq!((status, reason.as_deref()), (403, Some("host_not_allowed")));
        assert!(body.contains(r#""host":"evil.example""#), "{body}");
        assert_eq!(host.metric("egress_allowlist_denied"), Some(1));
    }

    #[test]
    fn the_caller_is_read_only_for_identity_scoped_rules_and_not_at_all_when_the_suite_knows_it() {
        let host = get("internal.example");
        let allowlist = stage(&host, POLICY, Layer::Http);
        host.clear_calls();
        // A separate filter: the identity filter's record, read because the rule names principals.
        host.set(&[state::IDENTITY], br#"{"source":"mtls","id":"spiffe://cluster.local/ns/app/sa/sleep"}"#);
        assert_eq!(allowlist.on_request_headers(&host, &mut Request::default()), Ok(Step::Continue));
        assert!(host.calls().contains(&"property(egress.identity)".to_string()), "{:?}", host.calls());
        // The suite: the identity stage ran in this pass, nothing is read.
        host.clear_calls();
        let sleep = egress_core::SpiffeId::parse("spiffe://cluster.local/ns/app/sa/sleep").unwrap();
        let mut request = Request { caller: Some(Some(sleep)), ..Request::default() };
        assert_eq!(allowlist.on_request_headers(&host, &mut request), Ok(Step::Continue));
        assert!(!host.calls().iter().any(|c| c.starts_with("property(")), "{:?}", host.calls());
        // No identity rule tried: nothing read either.
        let plain = get("httpbin.org");
        let allowlist = stage(&plain, POLICY, Layer::Http);
        plain.clear_calls();
        allowlist.on_request_headers(&plain, &mut Request::default()).unwrap();
        assert!(!plain.calls().iter().any(|c| c.starts_with("property(")), "{:?}", plain.calls());
    }

    #[test]
    fn tls_passthrough_is_judged_by_sni_and_closed_when_denied() {
        let host = FakeHost::new()
            .with_property(&["connection", "requested_server_name"], b"evil.example")
            .with_property(&["destination", "port"], &443u64.to_le_bytes());
        let allowlist = stage(&host, POLICY, Layer::Tls);
        let mut connection = Connection::default();
        assert_eq!(allowlist.on_new_connection(&host, &mut connection), Ok(Step::Stop));
        assert!(host.state().closed);
        assert_eq!(host.metric("egress_allowlist_tls_denied"), Some(1));
        assert_eq!(connection.decision.unwrap().reason, "host_not_allowed");
    }

    #[test]
    fn a_failing_host_call_is_an_error_for_the_runner_to_fail_closed() {
        let host = get("httpbin.org").failing("map(");
        let allowlist = stage(&host, POLICY, Layer::Http);
        assert_eq!(allowlist.on_request_headers(&host, &mut Request::default()), Err(Status::InternalFailure));
        assert!(host.reply().is_none(), "the runner answers 500 (pipeline tests), not the stage");
    }
}
