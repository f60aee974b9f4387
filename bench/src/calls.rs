//! Host calls and VM entries per request of each Wasm scenario, counted deterministically: each stage runs against
//! the recording host (`egress_proxy::fake`) on the request the benchmark sends, in the same contexts as in Envoy (the
//! fused suite: one context for every stage; separate filters: a context each).

use crate::scenarios::{audit_config, Scenario, IDENTITY};
use egress_allowlist::AllowList;
use egress_audit::Audit;
use egress_core::audit::AuditConfig;
use egress_core::identity::IdentityConfig;
use egress_core::suite::SuiteConfig;
use egress_core::Policy;
use egress_harness::pki::Error;
use egress_identity::Identity;
use egress_proxy::fake::FakeHost;
use egress_proxy::{HttpStage, Layer, Pipeline};
use egress_redirects::Redirects;
use serde_json::Value;
use std::rc::Rc;

/// What one request costs a scenario besides Envoy's own work.
#[derive(Clone, Debug, Default)]
pub struct Calls {
    pub host_calls: usize,
    /// Callbacks Envoy makes into a VM for the request (one per filter and hook).
    pub vm_entries: usize,
    /// Host calls by stage, in chain order.
    pub by_stage: Vec<(&'static str, usize)>,
}

/// The calls of `scenario` for `GET path` to `host`, answered 200; `None` for scenarios without Wasm stages.
pub fn per_request(scenario: Scenario, policy: &Value, host: &str, path: &str) -> Result<Option<Calls>, Error> {
    let request =
        [(":authority", host), (":method", "GET"), (":path", path), (":scheme", "http"), ("user-agent", "wrk")];
    let response = [(":status", "200")];
    let count = |pipeline: &Pipeline| egress_suite::count_host_calls(pipeline, &request, &response, &[]);
    let fake = FakeHost::new();
    let document = policy;
    let policy = Rc::new(Policy::from_json(document.to_string().as_bytes()).map_err(|e| e.to_string())?);
    let stages: Vec<(Vec<Rc<dyn HttpStage>>, usize)> = match scenario {
        Scenario::Empty => return Ok(Some(Calls { vm_entries: 1, ..Calls::default() })),
        Scenario::AllowList => vec![(vec![Rc::new(AllowList::new(&fake, policy, Layer::Http)?)], 1)],
        Scenario::SuiteFused | Scenario::SuiteAccessLog => {
            let mut sections = serde_json::Map::new();
            sections.insert("policy".into(), document.clone());
            sections.insert("identity".into(), serde_json::from_str(IDENTITY)?);
            if scenario == Scenario::SuiteFused {
                sections.insert("audit".into(), serde_json::from_str(&audit_config())?);
            }
            let config = SuiteConfig::from_json(Value::Object(sections).to_string().as_bytes(), |_| None)
                .map_err(|e| e.to_string())?;
            // One filter: request headers, response headers, log (the module exports `on_log` with or without
            // the audit stage, so Envoy enters it either way).
            vec![(egress_suite::pipeline(&fake, &config, Layer::Http)?.http, 3)]
        }
        Scenario::SuiteSeparate => {
            let identity = IdentityConfig::from_json(IDENTITY.as_bytes(), |_| None).map_err(|e| e.to_string())?;
            let audit = AuditConfig::from_json(audit_config().as_bytes()).map_err(|e| e.to_string())?;
            // Four filters: identity, allow-list (request), redirects (request, response), audit (log).
            vec![
                (vec![Rc::new(Identity::new(&fake, Rc::new(identity))?) as Rc<dyn HttpStage>], 1),
                (vec![Rc::new(AllowList::new(&fake, Rc::clone(&policy), Layer::Http)?)], 1),
                (vec![Rc::new(Redirects::new(&fake, Rc::clone(&policy))?)], 2),
                (vec![Rc::new(Audit::new(&fake, audit)?)], 1),
            ]
        }
        Scenario::None | Scenario::Rbac | Scenario::Lua => return Ok(None),
    };
    let mut calls = Calls::default();
    for (filter, entries) in stages {
        let pipeline = Pipeline { http: filter, ..Pipeline::default() };
        calls.vm_entries += entries;
        for (stage, _, n) in count(&pipeline) {
            calls.host_calls += n;
            match calls.by_stage.iter_mut().find(|(s, _)| *s == stage) {
                Some((_, total)) => *total += n,
                None => calls.by_stage.push((stage, n)),
            }
        }
    }
    Ok(Some(calls))
}
