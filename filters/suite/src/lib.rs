//! The suite: every configured stage in one filter, one context per request (the recommended deployment). One VM
//! crossing per callback serves every stage, and what one stage read or decided (the request line, the caller, the
//! decision, the response status) is handed to the next in memory instead of through filter state.
//!
//! Root ids `egress-suite` (HTTP) and `egress-suite-tls` (network, TLS passthrough). The plugin configuration has a
//! section per stage (`egress_core::suite`); an absent section turns its stage off. Chain order: identity,
//! redirects, allow-list, audit on requests (a hop of a followed redirect is the redirects stage's to judge and
//! record before the allow-list sees it); identity, allow-list, audit on passthrough connections. The stages keep
//! their own failure semantics (enforcing stages fail closed, audit only logs); the module as a whole is deployed
//! FAIL_CLOSE, since it enforces. It publishes the same filter-state records and metrics as the separate filters.

use egress_allowlist::AllowList;
use egress_audit::Audit;
use egress_core::suite::SuiteConfig;
use egress_identity::Identity;
use egress_proxy::{config, Host, Layer, Module, Pipeline, Setup};
use egress_redirects::Redirects;
use std::rc::Rc;

pub const HTTP_ROOT_ID: &str = "egress-suite";
pub const TLS_ROOT_ID: &str = "egress-suite-tls";

static MODULE: Module =
    Module { name: "egress-suite", http_root_id: Some(HTTP_ROOT_ID), tls_root_id: Some(TLS_ROOT_ID), build };

/// The stages `config` turns on, in chain order, for `layer`.
pub fn pipeline(host: &dyn Host, config: &SuiteConfig, layer: Layer) -> Result<Pipeline, String> {
    let mut pipeline = Pipeline::new(config.describe());
    if let Some(identity) = &config.identity {
        let stage = Rc::new(Identity::new(host, Rc::clone(identity))?);
        pipeline = match layer {
            Layer::Http => pipeline.http(stage),
            Layer::Tls => pipeline.tls(stage),
        };
    }
    if let Some(policy) = &config.policy {
        let stage = Rc::new(AllowList::new(host, Rc::clone(policy), layer)?);
        pipeline = match layer {
            Layer::Http => pipeline.http(Rc::new(Redirects::new(host, Rc::clone(policy))?)).http(stage),
            Layer::Tls => pipeline.tls(stage),
        };
    }
    if let Some(audit) = &config.audit {
        let stage = Rc::new(Audit::new(host, audit.clone())?);
        pipeline = pipeline.root(stage.clone()).timed();
        pipeline = match layer {
            Layer::Http => pipeline.http(stage),
            Layer::Tls => pipeline.tls(stage),
        };
    }
    Ok(pipeline)
}

fn build(setup: &Setup<'_>) -> Result<Pipeline, String> {
    // Read as it arrives, the policy compiled rule by rule; the HTTP and TLS plugins of one VM share what was built.
    let config = config::shared_config(setup.config_size, |reader| {
        SuiteConfig::from_buf_reader(reader, |var| std::env::var(var).ok()).map_err(|errors| errors.to_string())
    })?;
    if config.policy.is_some() && setup.layer == Layer::Http {
        egress_allowlist::declare_properties()?;
        egress_redirects::declare_properties()?;
    }
    pipeline(setup.host, &config, setup.layer)
}

#[allow(unsafe_code)] // proxy_wasm::main! exports the module's `_initialize` entry point.
mod entry {
    proxy_wasm::main! {{
        proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
        proxy_wasm::set_root_context(|_| super::MODULE.root());
    }}
}

/// Host calls one request costs each stage of a pipeline: `(stage, hook, calls)` for the request headers, the
/// response headers and the log, run against a recording host that serves `request` and `response` (and `properties`).
/// What `make bench` reports beside its timings, and what the unit tests hold the stages to.
pub fn count_host_calls(
    pipeline: &Pipeline,
    request: &[(&str, &str)],
    response: &[(&str, &str)],
    properties: &[(&[&str], &[u8])],
) -> Vec<(&'static str, &'static str, usize)> {
    use egress_proxy::fake::FakeHost;
    use egress_proxy::{HttpStage, Request, Step};
    let mut host = FakeHost::new().with_request(request).with_response(response);
    for (path, value) in properties {
        host = host.with_property(path, value);
    }
    let mut counts = Vec::new();
    let mut context = Request::new(Some(0));
    type Hook = fn(&dyn HttpStage, &dyn Host, &mut Request) -> Result<Step, proxy_wasm::types::Status>;
    let hooks: [(&str, Hook); 3] = [
        ("request", |stage, host, request| stage.on_request_headers(host, request)),
        ("response", |stage, host, request| stage.on_response_headers(host, request)),
        ("log", |stage, host, request| stage.on_log(host, request).map(|()| Step::Continue)),
    ];
    for (hook_name, hook) in hooks {
        for stage in &pipeline.http {
            host.clear_calls();
            let _ = hook(stage.as_ref(), &host, &mut context);
            counts.push((stage.name(), hook_name, host.calls().len()));
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use egress_proxy::fake::FakeHost;
    use egress_proxy::pipeline::run_http;
    use egress_proxy::{Request, Step};

    const CONFIG: &str = r#"{
      "policy": {"rules": [{"name": "httpbin", "hosts": ["httpbin.org"]},
                           {"name": "sleep", "hosts": ["internal.example"], "principals": ["cluster.local/ns/app/sa/sleep"]}]},
      "identity": {"onMissing": "anonymous"},
      "audit": {"log": true}
    }"#;

    fn suite(host: &FakeHost, json: &str) -> Pipeline {
        let config = SuiteConfig::from_json(json.as_bytes(), |_| None).unwrap();
        pipeline(host, &config, Layer::Http).unwrap()
    }

    fn get(authority: &str) -> FakeHost {
        FakeHost::new()
            .with_request(&[
                (":authority", authority),
                (":method", "GET"),
                (":path", "/"),
                (":scheme", "http"),
                ("x-request-id", "r1"),
            ])
            .with_response(&[(":status", "200")])
    }

    fn headers(host: &FakeHost, pipeline: &Pipeline, request: &mut Request) -> Step {
        run_http(
            host,
            "egress-suite",
            &pipeline.http,
            request,
            |s, h, r| s.on_request_headers(h, r),
            |h, why| egress_proxy::pipeline::reply_internal_error(h, why),
        )
    }

    #[test]
    fn the_stages_run_in_chain_order_and_share_one_read_of_the_request() {
        let host = get("httpbin.org");
        let pipeline = suite(&host, CONFIG);
        let names: Vec<&str> = pipeline.http.iter().map(|s| s.name()).collect();
        assert_eq!(names, ["identity", "redirects", "allowlist", "audit"]);
        host.clear_calls();
        let mut request = Request::new(Some(0));
        assert_eq!(headers(&host, &pipeline, &mut request), Step::Continue);
        let calls = host.calls();
        assert_eq!(calls.iter().filter(|c| c.starts_with("map(")).count(), 1, "{calls:?}");
        assert!(!calls.contains(&"property(egress.identity)".to_string()), "handed over in memory: {calls:?}");
        // The records still reach filter state, for access logs and separate filters.
        assert!(host.published("egress.identity").is_some() && host.published("egress.decision").is_some());
    }

    #[test]
    fn the_audit_event_reads_no_request_fact_again() {
        let host = get("httpbin.org");
        let pipeline = suite(&host, CONFIG);
        let counts = count_host_calls(
            &pipeline,
            &[(":authority", "httpbin.org"), (":method", "GET"), (":path", "/")],
            &[(":status", "200")],
            &[],
        );
        let calls = |stage: &str, hook: &str| counts.iter().find(|(s, h, _)| *s == stage && *h == hook).unwrap().2;
        assert_eq!(calls("redirects", "request"), 0, "the request line is in the context");
        assert_eq!(calls("redirects", "response"), 1, "a response that is no 3xx: its status");
        assert_eq!(calls("allowlist", "request"), 2, "a count and a record: {counts:?}");
        assert_eq!(calls("allowlist", "response") + calls("identity", "response") + calls("audit", "request"), 0);
        let host = get("httpbin.org");
        let pipeline = suite(&host, CONFIG);
        let mut request = Request::new(Some(0));
        headers(&host, &pipeline, &mut request);
        run_http(&host, "s", &pipeline.http, &mut request, |s, h, r| s.on_response_headers(h, r), |_, _| {});
        host.set(&["response", "code"], b"200");
        host.clear_calls();
        for stage in &pipeline.http {
            stage.on_log(&host, &mut request).unwrap();
        }
        let calls = host.calls();
        assert!(!calls.contains(&"map(request_headers)".to_string()), "{calls:?}");
        assert_eq!(calls.iter().filter(|c| c.starts_with("property(")).count(), 0, "from the context: {calls:?}");
        assert_eq!(calls.iter().filter(|c| c.starts_with("read_attributes(")).count(), 1, "one batch: {calls:?}");
        let event = host.logs().into_iter().find(|l| l.starts_with("egress-audit: ")).unwrap();
        let event: serde_json::Value = serde_json::from_str(event.trim_start_matches("egress-audit: ")).unwrap();
        assert_eq!(
            (event["decision"]["rule"].as_str(), event["response"]["code"].as_u64()),
            (Some("httpbin"), Some(200))
        );
        assert_eq!(event["source"]["identitySource"], "none");
    }

    #[test]
    fn each_stage_keeps_its_failure_semantics() {
        // An enforcing stage whose host call fails ends the request with a 500.
        let host = get("httpbin.org").failing("property(connection.peer_certificate)");
        let fused = suite(&host, CONFIG);
        assert_eq!(headers(&host, &fused, &mut Request::new(Some(0))), Step::Stop);
        assert_eq!(host.reply().unwrap().0, 500);
        assert!(host.published("egress.decision").is_none(), "the allow-list never ran: nothing was let through");
        // The audit stage's failure is logged; the request is not affected.
        let host = get("httpbin.org").failing("map(request_headers)");
        let config = SuiteConfig::from_json(br#"{"audit": {"log": true}}"#, |_| None).unwrap();
        let audit_only = pipeline(&host, &config, Layer::Http).unwrap();
        let mut request = Request::new(Some(0));
        assert_eq!(headers(&host, &audit_only, &mut request), Step::Continue);
        assert!(audit_only.http[0].on_log(&host, &mut request).is_err());
        assert!(!audit_only.http[0].fails_closed());
        assert!(host.reply().is_none());
    }

    #[test]
    fn a_denied_request_stops_before_the_later_stages_and_is_still_audited() {
        let host = get("evil.example");
        let pipeline = suite(&host, CONFIG);
        let mut request = Request::new(Some(0));
        assert_eq!(headers(&host, &pipeline, &mut request), Step::Stop);
        assert_eq!(host.reply().unwrap().1.as_deref(), Some("host_not_allowed"));
        for stage in &pipeline.http {
            stage.on_log(&host, &mut request).unwrap();
        }
        let event = host.logs().into_iter().find(|l| l.starts_with("egress-audit: ")).unwrap();
        assert!(event.contains(r#""reason":"host_not_allowed""#), "{event}");
    }

    #[test]
    fn tls_passthrough_runs_identity_allowlist_and_audit() {
        let host = FakeHost::new()
            .with_property(&["connection", "requested_server_name"], b"httpbin.org")
            .with_property(&["destination", "port"], &443u64.to_le_bytes());
        let config = SuiteConfig::from_json(
            CONFIG.replace(r#""onMissing": "anonymous""#, r#""tunnels": "allow""#).as_bytes(),
            |_| None,
        )
        .unwrap();
        let tls = pipeline(&host, &config, Layer::Tls).unwrap();
        let names: Vec<&str> = tls.tls.iter().map(|s| s.name()).collect();
        assert_eq!(names, ["identity", "allowlist", "audit"]);
        let mut connection = egress_proxy::Connection::new(Some(0));
        assert_eq!(egress_proxy::pipeline::run_tls(&host, "s", &tls.tls, &mut connection), Step::Continue);
        for stage in &tls.tls {
            stage.on_log(&host, &mut connection).unwrap();
        }
        let event = host.logs().into_iter().find(|l| l.starts_with("egress-audit: ")).unwrap();
        assert!(event.contains(r#""tunnel":true"#) && event.contains(r#""sni":"httpbin.org""#), "{event}");
    }
}
