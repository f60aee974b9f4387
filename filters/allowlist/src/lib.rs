//! The allow-list stage: egress only to what the policy allows. HTTP (`:authority` of every request, CONNECT
//! included) and TLS passthrough (the SNI). It publishes its decision to filter state (`egress.decision`) and to the
//! request's context, counts it, and refuses what the policy denies: 403 (400 for what cannot be parsed), or a
//! closed connection. Glue over `egress_core::Policy`; the separate module and the suite both run it.

use egress_core::resolved;
use egress_core::state::{self, DecisionRecord};
use egress_core::{Action, Decision, Mode, Policy, Reason};
use egress_proxy::{self as proxy, Connection, Counter, Gauge, Host, HttpStage, Layer, Request, Step, TlsStage};
use proxy_wasm::types::{LogLevel, MapType, Status};
use std::rc::Rc;

/// Root id of the separate HTTP filter.
pub const HTTP_ROOT_ID: &str = "egress-allowlist";
/// Root id of the separate TLS-passthrough (SNI) network filter.
pub const TLS_ROOT_ID: &str = "egress-allowlist-tls";
/// The proxy-wasm callbacks this stage needs exported (a module lists the union of its stages').
pub const CALLBACKS: &[&str] = &["proxy_on_request_headers", "proxy_on_response_headers", "proxy_on_new_connection"];

/// Counters, one per outcome.
#[derive(Clone, Copy)]
struct Metrics {
    allowed: Counter,
    denied: Counter,
    would_deny: Counter,
    malformed: Counter,
    /// Requests whose name resolved to an address the policy does not allow (refused, or would be in report mode).
    resolved_denied: Counter,
}

impl Metrics {
    fn define(host: &dyn Host, prefix: &str) -> Result<Metrics, String> {
        let counter = |name: &str| Counter::define(host, &format!("{prefix}_{name}"));
        Ok(Metrics {
            allowed: counter("allowed")?,
            denied: counter("denied")?,
            would_deny: counter("would_deny")?,
            malformed: counter("malformed")?,
            resolved_denied: counter("resolved_address_denied")?,
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
    /// The policy's fingerprint as every decision record carries it (formatted once).
    fingerprint: String,
    metrics: Metrics,
}

impl AllowList {
    /// The stage for `layer`, its counters defined: `egress_allowlist_*` for HTTP, `egress_allowlist_tls_*` for TLS;
    /// and the gauges that say which policy serves: `<prefix>_policy_fingerprint` (the fingerprint's first 48 bits)
    /// and `<prefix>_policy_rules`, set here, at configure time.
    pub fn new(host: &dyn Host, policy: Rc<Policy>, layer: Layer) -> Result<AllowList, String> {
        let prefix = match layer {
            Layer::Http => "egress_allowlist",
            Layer::Tls => "egress_allowlist_tls",
        };
        let gauge = |name: &str| Gauge::define(host, &format!("{prefix}_{name}"));
        gauge("policy_fingerprint")?.record(host, policy.fingerprint().gauge());
        gauge("policy_rules")?.record(host, u64::try_from(policy.rule_count()).unwrap_or(u64::MAX));
        let fingerprint = policy.fingerprint().to_string();
        Ok(AllowList { policy, fingerprint, metrics: Metrics::define(host, prefix)? })
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
            policy: Some(&self.fingerprint),
        };
        proxy::publish_record(host, state::DECISION, &record)?;
        Ok(DecisionRecord {
            action: record.action.to_string(),
            reason: record.reason.to_string(),
            rule: record.rule.map(str::to_string),
            destination,
            mode: mode.to_string(),
            policy: Some(self.fingerprint.clone()),
        })
    }
}

/// Declares `egress.decision` as request-long, so the decision on the client's request outlives the filter-chain pass
/// and a followed redirect's later passes can still read it (the redirects stage keeps it for the audit). From an
/// HTTP root context's configuration only.
pub fn declare_properties() -> Result<(), String> {
    egress_proxy::config::declare_request_property(state::DECISION)
}

impl AllowList {
    /// Envoy's verdict on the address the request's name resolved to (`egress_core::resolved`), when it refused it
    /// (or, in report mode, would have): the refused range, e.g. `10.0.0.0/8 (private)`. Read only where it can be
    /// that: in enforce mode a refusal is Envoy's 403 (the RBAC filters) or 503 (an answer left without addresses
    /// by the DNS cache's filter), so other answers cost one header read (shared with the other stages); in report
    /// mode every response is checked.
    fn refused_address(&self, host: &dyn Host, request: &mut Request) -> Result<Option<String>, Status> {
        if self.policy.mode() == Mode::Enforce {
            match request.response_status(host)? {
                403 => {}
                503 => {
                    let details = proxy::property_string(host, &["response", "code_details"])?;
                    let filtered = details.as_deref() == Some(resolved::ANSWER_FILTERED_DETAILS);
                    return Ok(filtered.then(|| resolved::ANSWER_FILTERED_DETAIL.to_string()));
                }
                _ => return Ok(None),
            }
        }
        let verdict =
            proxy::property_string(host, &resolved::metadata_path(resolved::HTTP_RBAC, resolved::VERDICT_KEY))?;
        if verdict.as_deref() != Some("denied") {
            return Ok(None);
        }
        let range = proxy::property_string(host, &resolved::metadata_path(resolved::HTTP_RBAC, resolved::RANGE_KEY))?;
        Ok(Some(range.as_deref().map_or("", resolved::range_detail).to_string()))
    }
}

impl HttpStage for AllowList {
    fn name(&self) -> &'static str {
        "allowlist"
    }

    /// A request the policy allowed by name can still have resolved to an address it does not allow: Envoy refused
    /// it after resolution (or, in report mode, noted it). The decision becomes that refusal, for the client (the
    /// reason header), the counters, filter state and the audit.
    fn on_response_headers(&self, host: &dyn Host, request: &mut Request) -> Result<Step, Status> {
        let Some(range) = self.refused_address(host, request)? else { return Ok(Step::Continue) };
        self.metrics.resolved_denied.increment(host);
        let action = match self.policy.mode() {
            Mode::Enforce => {
                host.set_map_value(MapType::HttpResponseHeaders, proxy::REASON_HEADER, resolved::REASON)?;
                Action::Deny
            }
            Mode::Report => Action::ReportDeny,
        };
        let previous = request
            .decision
            .take()
            .or_else(|| state::parse(proxy::property_string(host, &[state::DECISION]).ok().flatten().as_deref()));
        let record = DecisionRecord {
            action: action.as_str().to_string(),
            reason: resolved::REASON.to_string(),
            rule: None,
            destination: previous.and_then(|p| p.destination),
            mode: match self.policy.mode() {
                Mode::Enforce => "enforce",
                Mode::Report => "report",
            }
            .to_string(),
            policy: Some(self.fingerprint.clone()),
        };
        proxy::publish_record(host, state::DECISION, &record)?;
        request.decision = Some(record);
        request.refused_address = Some(range);
        Ok(Step::Continue)
    }

    fn on_request_headers(&self, host: &dyn Host, request: &mut Request) -> Result<Step, Status> {
        let line = request.facts.line(host)?;
        let decision = Request::with_caller(&request.caller, host, |caller| self.policy.evaluate_http(&line, caller))?;
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
        let fingerprint = Policy::from_json(POLICY.as_bytes()).unwrap().fingerprint();
        assert_eq!(
            host.published(state::DECISION).unwrap(),
            format!(
                r#"{{"action":"allow","reason":"allowed","rule":"httpbin","destination":"httpbin.org:80","mode":"enforce","policy":"{fingerprint}"}}"#
            )
        );
        // Which policy serves, from the metrics alone.
        assert_eq!(host.metric("egress_allowlist_policy_fingerprint"), i64::try_from(fingerprint.gauge()).ok());
        assert_eq!(host.metric("egress_allowlist_policy_rules"), Some(2));
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

    /// The metadata Envoy's RBAC filters leave when the name resolved to a refused address.
    fn refused_by_envoy(host: FakeHost) -> FakeHost {
        let path = |key| resolved::metadata_path(resolved::HTTP_RBAC, key);
        host.with_property(&path(resolved::VERDICT_KEY), b"denied")
            .with_property(&path(resolved::RANGE_KEY), b"refused 10.0.0.0/8 (private)")
    }

    #[test]
    fn a_resolved_address_envoy_refused_becomes_the_decision_and_other_responses_cost_one_header_read() {
        let host = refused_by_envoy(get("httpbin.org").with_response(&[(":status", "403")]));
        let allowlist = stage(&host, POLICY, Layer::Http);
        let mut request = Request::default();
        allowlist.on_request_headers(&host, &mut request).unwrap();
        assert_eq!(allowlist.on_response_headers(&host, &mut request), Ok(Step::Continue));
        assert_eq!(host.response_header("x-egress-denied-reason").as_deref(), Some(resolved::REASON));
        let decision = request.decision.unwrap();
        assert_eq!((decision.action.as_str(), decision.reason.as_str()), ("deny", resolved::REASON));
        assert_eq!(decision.destination.as_deref(), Some("httpbin.org:80"), "the request's destination stays");
        assert_eq!(request.refused_address.as_deref(), Some("10.0.0.0/8 (private)"));
        assert!(host.published(state::DECISION).unwrap().contains(resolved::REASON));
        assert_eq!(host.metric("egress_allowlist_resolved_address_denied"), Some(1));

        let ok = refused_by_envoy(get("httpbin.org").with_response(&[(":status", "200")]));
        let allowlist = stage(&ok, POLICY, Layer::Http);
        ok.clear_calls();
        allowlist.on_response_headers(&ok, &mut Request::default()).unwrap();
        assert_eq!(ok.calls(), ["map_value(response_headers::status)"], "enforce mode: a refusal is a 403");
    }

    #[test]
    fn an_answer_envoy_left_without_addresses_is_a_refusal_and_other_503s_are_not() {
        let filtered = get("httpbin.org")
            .with_response(&[(":status", "503")])
            .with_property(&["response", "code_details"], resolved::ANSWER_FILTERED_DETAILS.as_bytes());
        let allowlist = stage(&filtered, POLICY, Layer::Http);
        let mut request = Request::default();
        allowlist.on_request_headers(&filtered, &mut request).unwrap();
        allowlist.on_response_headers(&filtered, &mut request).unwrap();
        assert_eq!(filtered.response_header("x-egress-denied-reason").as_deref(), Some(resolved::REASON));
        assert_eq!(request.decision.unwrap().reason, resolved::REASON);
        assert_eq!(request.refused_address.as_deref(), Some(resolved::ANSWER_FILTERED_DETAIL));

        let unreachable = get("httpbin.org").with_response(&[(":status", "503")]).with_property(
            &["response", "code_details"],
            b"upstream_reset_before_response_started{connection_failure}",
        );
        let allowlist = stage(&unreachable, POLICY, Layer::Http);
        let mut request = Request::default();
        allowlist.on_request_headers(&unreachable, &mut request).unwrap();
        allowlist.on_response_headers(&unreachable, &mut request).unwrap();
        assert_eq!(unreachable.response_header("x-egress-denied-reason"), None);
        assert_eq!(request.decision.unwrap().action, "allow");
        assert_eq!(unreachable.metric("egress_allowlist_resolved_address_denied"), Some(0));
    }

    #[test]
    fn report_mode_records_what_envoy_would_have_refused() {
        let host = refused_by_envoy(get("httpbin.org").with_response(&[(":status", "200")]));
        let report = r#"{"mode": "report", "rules": [{"name": "httpbin", "hosts": ["httpbin.org"]}]}"#;
        let allowlist = stage(&host, report, Layer::Http);
        let mut request = Request::default();
        allowlist.on_response_headers(&host, &mut request).unwrap();
        assert_eq!(request.decision.unwrap().action, "report-deny");
        assert!(host.response_header("x-egress-denied-reason").is_none(), "nothing was refused");
    }

    #[test]
    fn a_failing_host_call_is_an_error_for_the_runner_to_fail_closed() {
        let host = get("httpbin.org").failing("map(");
        let allowlist = stage(&host, POLICY, Layer::Http);
        assert_eq!(allowlist.on_request_headers(&host, &mut Request::default()), Err(Status::InternalFailure));
        assert!(host.reply().is_none(), "the runner answers 500 (pipeline tests), not the stage");
    }
}
