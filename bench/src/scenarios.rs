//! The Envoy configurations compared: the harness's gateway (the chain the manifests deploy), with its HTTP filters
//! swapped for none, an empty Wasm filter (the mechanism's floor), the allow-list alone, the whole suite fused into
//! one filter or as four separate filters, the fused suite without its audit stage but with Envoy's native access
//! log carrying the suite's records (the other audit path), Envoy's RBAC filter or a Lua filter enforcing the same
//! host policy, in front of the echo upstream or of a `direct_response` (to isolate the filters' cost).

use egress_harness::bootstrap::AUDIT_COLLECTOR_CLUSTER;
use egress_harness::pki::Error;
use egress_harness::{envoy, gateway_bootstrap_for, wasm_dir, LabOptions};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scenario {
    #[default]
    None,
    Empty,
    AllowList,
    SuiteFused,
    SuiteSeparate,
    /// The fused suite without the audit section, and Envoy's JSON file access log from filter state.
    SuiteAccessLog,
    Rbac,
    Lua,
}

impl Scenario {
    pub const ALL: [Scenario; 8] = [
        Scenario::None,
        Scenario::Empty,
        Scenario::AllowList,
        Scenario::SuiteFused,
        Scenario::SuiteSeparate,
        Scenario::SuiteAccessLog,
        Scenario::Rbac,
        Scenario::Lua,
    ];

    /// The id in `--json` output.
    pub fn id(self) -> &'static str {
        match self {
            Scenario::None => "none",
            Scenario::Empty => "empty",
            Scenario::AllowList => "allowlist",
            Scenario::SuiteFused => "suite-fused",
            Scenario::SuiteSeparate => "suite-separate",
            Scenario::SuiteAccessLog => "suite-accesslog",
            Scenario::Rbac => "rbac",
            Scenario::Lua => "lua",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::None => "no filter",
            Scenario::Empty => "empty Wasm filter",
            Scenario::AllowList => "allow-list alone",
            Scenario::SuiteFused => "suite, fused (1 filter)",
            Scenario::SuiteSeparate => "suite, separate (4 filters)",
            Scenario::SuiteAccessLog => "suite + native access log",
            Scenario::Rbac => "RBAC (native)",
            Scenario::Lua => "Lua",
        }
    }

    /// Whether it runs Wasm (its cost is compared with the empty filter's).
    pub fn is_wasm(self) -> bool {
        matches!(
            self,
            Scenario::Empty
                | Scenario::AllowList
                | Scenario::SuiteFused
                | Scenario::SuiteSeparate
                | Scenario::SuiteAccessLog
        )
    }
}

/// Where allowed requests go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upstream {
    Echo,
    DirectResponse,
}

/// The upstreams and the collector a configuration points at, and where access logs go.
pub struct Targets {
    pub echo_http: SocketAddr,
    pub echo_https: SocketAddr,
    pub collector: SocketAddr,
    /// The benchmark's run directory: the access-log files of [`Scenario::SuiteAccessLog`].
    pub run_dir: PathBuf,
}

/// The audit stage's configuration in the suite: events to the loopback collector only (the log sink would measure
/// Envoy's logger).
pub fn audit_config() -> String {
    json!({"headers": ["user-agent"], "log": false,
           "collector": {"cluster": AUDIT_COLLECTOR_CLUSTER, "authority": "collector", "flushIntervalMs": 200}})
    .to_string()
}

/// Plain-HTTP callers have no certificate: the identity stage strips client identity headers and lets them pass.
pub const IDENTITY: &str = r#"{"onMissing": "anonymous"}"#;

/// The suite's options: every stage, the audit collector on loopback.
pub fn suite_options(policy: &Value, collector: SocketAddr) -> LabOptions {
    LabOptions { audit_json: Some(audit_config()), collector: Some(collector), ..suite_without_audit(policy) }
}

/// The suite's options without the audit stage (its configuration has no audit section): identity, allow-list,
/// redirects.
pub fn suite_without_audit(policy: &Value) -> LabOptions {
    LabOptions { identity_json: Some(IDENTITY.into()), redirects: true, ..LabOptions::new(policy.to_string()) }
}

/// Where [`Scenario::SuiteAccessLog`]'s Envoy in front of `upstream` writes its access log.
pub fn access_log_file(targets: &Targets, upstream: Upstream) -> PathBuf {
    let upstream = match upstream {
        Upstream::Echo => "echo",
        Upstream::DirectResponse => "direct",
    };
    targets.run_dir.join(format!("{}-{upstream}.log", Scenario::SuiteAccessLog.id()))
}

/// The bootstrap of one scenario. `policy` is the allow-list policy (JSON); RBAC and Lua get its host rules.
pub fn bootstrap(scenario: Scenario, upstream: Upstream, policy: &Value, targets: &Targets) -> Result<Value, Error> {
    bootstrap_with_audit(scenario, upstream, policy, targets, &audit_config())
}

/// [`bootstrap`] with `audit` (JSON) as the audit stage's configuration of the suite scenarios, instead of the
/// benchmark's [`audit_config`] (the soak ships with the production configuration's batching).
pub fn bootstrap_with_audit(
    scenario: Scenario,
    upstream: Upstream,
    policy: &Value,
    targets: &Targets,
    audit: &str,
) -> Result<Value, Error> {
    let manifests = envoy::workspace_root().join("wasmplugin-manifests");
    let suite = |chain: &str| LabOptions {
        manifests: manifests.join(chain),
        audit_json: Some(audit.to_string()),
        ..suite_options(policy, targets.collector)
    };
    let options = match scenario {
        Scenario::SuiteFused => suite("suite"),
        Scenario::SuiteSeparate => suite("wasmplugins"),
        Scenario::SuiteAccessLog => LabOptions { manifests: manifests.join("suite"), ..suite_without_audit(policy) },
        _ => LabOptions { manifests: manifests.join("wasmplugins"), ..LabOptions::new(policy.to_string()) },
    };
    let mut bootstrap = gateway_bootstrap_for(&options, targets.echo_http, targets.echo_https)?;
    let hcm = &mut bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    let http_filters = hcm["http_filters"].as_array_mut().ok_or("the gateway has no HTTP filters")?;
    let router = http_filters.pop().ok_or("the gateway has no router")?;
    match scenario {
        Scenario::AllowList | Scenario::SuiteFused | Scenario::SuiteSeparate | Scenario::SuiteAccessLog => {}
        Scenario::None => http_filters.clear(),
        Scenario::Empty => *http_filters = vec![empty_filter()],
        Scenario::Rbac => *http_filters = rbac_filters(policy),
        Scenario::Lua => *http_filters = vec![lua_filter(policy)],
    }
    http_filters.push(router);
    // The benchmark measures the filters, not the access log writer; but for the scenario whose point is the access
    // log (the lab's JSON line: `egressctl::access_log`, what the rendered Istio provider writes), to a file.
    if scenario == Scenario::SuiteAccessLog {
        let file = access_log_file(targets, upstream);
        let loggers = hcm["access_log"].as_array_mut().ok_or("the gateway has no access log")?;
        for logger in loggers.iter_mut() {
            logger["typed_config"]["path"] = Value::from(file.to_string_lossy().into_owned());
        }
    } else if let Some(map) = hcm.as_object_mut() {
        map.remove("access_log");
    }
    if upstream == Upstream::DirectResponse {
        let routes = &mut hcm["route_config"]["virtual_hosts"][0]["routes"];
        let routes = routes.as_array_mut().ok_or("the gateway has no routes")?;
        if let Some(default) = routes.last_mut() {
            *default =
                json!({"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}});
        }
    }
    Ok(bootstrap)
}

/// The empty Wasm filter (`bench/empty`, `egress_empty.wasm`), configured as the suite's filters are.
fn empty_filter() -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "egress-empty",
                "root_id": "egress-empty",
                "vm_config": {
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm_dir().join("egress_empty.wasm")}},
                },
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "{}"},
                "failure_policy": "FAIL_CLOSED",
            },
        },
    })
}

/// One host pattern of the policy as Envoy's string matcher on `:authority` (Envoy's RBAC sees the authority as
/// sent; requests carry no port here).
fn string_match(pattern: &str) -> Value {
    if let Some(suffix) = pattern.strip_prefix('*') {
        json!({"suffix": suffix, "ignore_case": true})
    } else if pattern.contains('*') {
        let regex = pattern.split('*').map(|part| part.replace('.', "\\.")).collect::<Vec<_>>().join("[^.]+");
        json!({"safe_regex": {"regex": format!("(?i)^{regex}$")}})
    } else {
        json!({"exact": pattern, "ignore_case": true})
    }
}

fn hosts(value: &Value) -> impl Iterator<Item = &str> {
    value["hosts"].as_array().into_iter().flatten().filter_map(Value::as_str)
}

/// The policy's host rules as Istio would write them from AuthorizationPolicies: a DENY RBAC filter for the deny
/// list, then an ALLOW filter with one policy per rule (Envoy evaluates policies in turn).
fn rbac_filters(policy: &Value) -> Vec<Value> {
    let authority = |pattern: &str| json!({"header": {"name": ":authority", "string_match": string_match(pattern)}});
    let rbac_policy = |patterns: Vec<&str>| {
        json!({"permissions": [{"or_rules": {"rules": patterns.into_iter().map(authority).collect::<Vec<_>>()}}],
               "principals": [{"any": true}]})
    };
    let rbac = |action: &str, policies: serde_json::Map<String, Value>| {
        json!({"name": "envoy.filters.http.rbac", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": action, "policies": policies}}})
    };
    let mut filters = Vec::new();
    let deny: Vec<&str> = hosts(&policy["deny"]).collect();
    if !deny.is_empty() {
        filters.push(rbac("DENY", [("deny".to_string(), rbac_policy(deny))].into_iter().collect()));
    }
    let mut allow = serde_json::Map::new();
    for (i, rule) in policy["rules"].as_array().into_iter().flatten().enumerate() {
        let patterns: Vec<&str> = hosts(rule).collect();
        if !patterns.is_empty() {
            allow.insert(format!("{i}-{}", rule["name"].as_str().unwrap_or("rule")), rbac_policy(patterns));
        }
    }
    filters.push(rbac("ALLOW", allow));
    filters
}

/// The same host check in Lua, written as well as Lua allows: exact names and `*.suffix` in hash tables (suffixes
/// looked up at each label boundary), inner wildcards as anchored patterns, the deny list first.
fn lua_filter(policy: &Value) -> Value {
    let mut tables = String::new();
    for (name, hosts) in [
        ("allow", policy["rules"].as_array().into_iter().flatten().flat_map(hosts).collect::<Vec<_>>()),
        ("deny", hosts(&policy["deny"]).collect()),
    ] {
        let (mut exact, mut suffix, mut patterns) = (Vec::new(), Vec::new(), Vec::new());
        for pattern in hosts {
            let pattern = pattern.to_ascii_lowercase();
            if let Some(rest) = pattern.strip_prefix('*') {
                suffix.push(format!("[{rest:?}]=true"));
            } else if pattern.contains('*') {
                let lua = pattern
                    .split('*')
                    .map(|p| p.replace('.', "%.").replace('-', "%-"))
                    .collect::<Vec<_>>()
                    .join("[^.]+");
                patterns.push(format!("{:?}", format!("^{lua}$")));
            } else {
                exact.push(format!("[{pattern:?}]=true"));
            }
        }
        tables.push_str(&format!(
            "local {name}_exact = {{{}}}\nlocal {name}_suffix = {{{}}}\nlocal {name}_patterns = {{{}}}\n",
            exact.join(","),
            suffix.join(","),
            patterns.join(",")
        ));
    }
    let code = format!(
        r#"{tables}
local function matches(host, exact, suffix, patterns)
  if exact[host] then return true end
  local from = 1
  while true do
    local dot = string.find(host, ".", from, true)
    if not dot then break end
    if suffix[string.sub(host, dot)] then return true end
    from = dot + 1
  end
  for _, pattern in ipairs(patterns) do
    if string.find(host, pattern) then return true end
  end
  return false
end

function envoy_on_request(handle)
  local host = string.lower(handle:headers():get(":authority") or "")
  host = string.gsub(host, ":%d+$", "")
  if matches(host, deny_exact, deny_suffix, deny_patterns) or not matches(host, allow_exact, allow_suffix, allow_patterns) then
    handle:respond({{[":status"] = "403"}}, "egress denied")
  end
end
"#
    );
    json!({"name": "envoy.filters.http.lua", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "default_source_code": {"inline_string": code}}})
}

/// A generated policy of `rules` rules, each allowing one exact name and the names below another:
/// `svc<i>.example.com` and `*.svc<i>.example.net`.
pub fn generated_policy(rules: usize) -> Value {
    let rules: Vec<Value> = (0..rules)
        .map(|i| json!({"name": format!("svc{i}"), "hosts": [format!("svc{i}.example.com"), format!("*.svc{i}.example.net")]}))
        .collect();
    json!({"rules": rules})
}

/// A host the last generated rule allows (the worst case for a filter that tries rules in turn), and one no rule
/// allows.
pub fn generated_hit(rules: usize) -> String {
    format!("api.svc{}.example.net", rules.saturating_sub(1))
}

pub const GENERATED_MISS: &str = "unknown.example.org";
