//! The Envoy configurations compared: the harness's gateway (the chain the manifests deploy), with its HTTP filters
//! swapped for none, the allow-list alone, the full suite, Envoy's RBAC filter or a Lua filter enforcing the same
//! host policy, in front of the echo upstream or of a `direct_response` (to isolate the filters' cost).

use egress_harness::bootstrap::AUDIT_COLLECTOR_CLUSTER;
use egress_harness::pki::Error;
use egress_harness::{gateway_bootstrap_for, LabOptions};
use serde_json::{json, Value};
use std::net::SocketAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filters {
    None,
    AllowList,
    Suite,
    Rbac,
    Lua,
}

impl Filters {
    pub const ALL: [Filters; 5] = [Filters::None, Filters::AllowList, Filters::Suite, Filters::Rbac, Filters::Lua];

    pub fn name(self) -> &'static str {
        match self {
            Filters::None => "no filter",
            Filters::AllowList => "allow-list (Wasm)",
            Filters::Suite => "full suite (Wasm)",
            Filters::Rbac => "RBAC (native)",
            Filters::Lua => "Lua",
        }
    }
}

/// Where allowed requests go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upstream {
    Echo,
    DirectResponse,
}

/// The upstreams and the collector a configuration points at.
pub struct Targets {
    pub echo_http: SocketAddr,
    pub echo_https: SocketAddr,
    pub collector: SocketAddr,
}

/// The audit filter's configuration in the suite: events to the loopback collector only (the log sink would
/// measure Envoy's logger).
fn audit_config() -> String {
    json!({"headers": ["user-agent"], "log": false,
           "collector": {"cluster": AUDIT_COLLECTOR_CLUSTER, "authority": "collector", "flushIntervalMs": 200}})
    .to_string()
}

/// Plain-HTTP callers have no certificate: the identity filter strips client identity headers and lets them pass.
const IDENTITY: &str = r#"{"onMissing": "anonymous"}"#;

/// The bootstrap of one scenario. `policy` is the allow-list policy (JSON); RBAC and Lua get its host rules.
pub fn bootstrap(filters: Filters, upstream: Upstream, policy: &Value, targets: &Targets) -> Result<Value, Error> {
    let mut options = LabOptions::new(policy.to_string());
    if filters == Filters::Suite {
        options.identity_json = Some(IDENTITY.into());
        options.redirects = true;
        options.audit_json = Some(audit_config());
        options.collector = Some(targets.collector);
    }
    let mut bootstrap = gateway_bootstrap_for(&options, targets.echo_http, targets.echo_https)?;
    let hcm = &mut bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    let http_filters = hcm["http_filters"].as_array_mut().ok_or("the gateway has no HTTP filters")?;
    let router = http_filters.pop().ok_or("the gateway has no router")?;
    match filters {
        Filters::AllowList | Filters::Suite => {}
        Filters::None => http_filters.clear(),
        Filters::Rbac => *http_filters = rbac_filters(policy),
        Filters::Lua => *http_filters = vec![lua_filter(policy)],
    }
    http_filters.push(router);
    // The benchmark measures the filters, not the access log writer.
    if let Some(map) = hcm.as_object_mut() {
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
