//! Envoy's side of resolved-address vetting ([`egress_core::resolved`]): the filters see a request before its name
//! is resolved, so Envoy enforces the address policy after resolution, before the upstream connection, with RBAC
//! filters matching the resolved address (`envoy.rbac.matchers.upstream_ip_port`), placed after the dynamic forward
//! proxy filter that resolves the name and saves the address (`save_upstream_address`), just before the router (HTTP,
//! CONNECT and each hop of a followed redirect) or `tcp_proxy` (TLS passthrough). This is the one definition of that
//! configuration: the lab's bootstrap (`egress-harness`) and the rendered Istio `EnvoyFilter` (`egressctl render`)
//! both take it from here.
//!
//! Two RBAC filters, in this order:
//! 1. **ranges** (shadow only, `DENY`, a policy per refused range, named after it): enforces nothing; it leaves the
//!    range an address falls in as `<prefix>shadow_effective_policy_id` in the RBAC filter's dynamic metadata, which
//!    the suite reads to say why a request was refused (response header, metrics, audit event).
//! 2. **enforce** (`ALLOW`): a request passes when its resolved address is present and outside every refused range
//!    (`public`), or inside a rule's `cidrs` for the rule's callers (`rule:<name>`, callers matched on the
//!    downstream mTLS peer's SPIFFE ID, as Istio's AuthorizationPolicy renders principals). No address (the proxy
//!    did not resolve: a bug or a misconfiguration) matches nothing: refused. In report mode the same policies are
//!    shadow rules: nothing is refused, the verdict is left as `<prefix>shadow_engine_result`.
//!
//! Envoy checks the first address of a DNS answer, the one it connects to; should that connection fail, Envoy < 1.39
//! may fall back to another address of the answer unchecked (docs/policy.md, Resolved addresses: the limit, and the
//! cache filter of newer Envoys that closes it).

use egress_core::cidr::Cidr;
use egress_core::resolved::{AddressPolicy, Callers};
use egress_core::spiffe::StringMatch;
use egress_core::Mode;
use serde_json::{json, Value};
use std::net::{Ipv4Addr, Ipv6Addr};

use egress_core::resolved::{RANGE_PREFIX as RANGES_PREFIX, VERDICT_PREFIX as ENFORCE_PREFIX};
/// The name of a `ranges` policy: `refused <cidr> (<why>)`.
pub fn range_policy(range: &Cidr, why: &str) -> String {
    format!("refused {range} ({why})")
}

fn ip_matcher(cidr: &Cidr) -> Value {
    let (address, prefix_len) = cidr.parts();
    json!({"matcher": {
        "name": "envoy.rbac.matchers.upstream_ip_port",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.rbac.matchers.upstream_ip_port.v3.UpstreamIpPortMatcher",
            "upstream_ip": {"address_prefix": address.to_string(), "prefix_len": prefix_len},
        },
    }})
}

fn any_of(cidrs: &[Cidr]) -> Value {
    json!({"or_rules": {"rules": cidrs.iter().map(ip_matcher).collect::<Vec<_>>()}})
}

/// A permission that holds when the resolved address is in `cidrs` and outside `excluded` (RBAC refuses an empty
/// `or_rules`, so no exclusion is no rule).
fn within_except(cidrs: &[Cidr], excluded: &[Cidr]) -> Value {
    let mut rules = vec![any_of(cidrs)];
    if !excluded.is_empty() {
        rules.push(json!({"not_rule": any_of(excluded)}));
    }
    json!({"and_rules": {"rules": rules}})
}

/// Every IPv4 and every IPv6 address: "a resolved address is present" (no saved address matches neither).
fn any_address() -> [Cidr; 2] {
    [Cidr::from_parts(Ipv4Addr::UNSPECIFIED.into(), 0), Cidr::from_parts(Ipv6Addr::UNSPECIFIED.into(), 0)]
}

/// An Istio string match on the `td/ns/x/sa/y` principal, as an RBAC match on the peer's SPIFFE URI.
fn principal_match(principal: &StringMatch) -> Value {
    let matcher = match principal {
        StringMatch::Any => json!({"safe_regex": {"regex": "spiffe://.+"}}),
        StringMatch::Exact(s) => json!({"exact": format!("spiffe://{s}")}),
        StringMatch::Prefix(s) => json!({"prefix": format!("spiffe://{s}")}),
        StringMatch::Suffix(s) => json!({"suffix": s}),
    };
    json!({"authenticated": {"principal_name": matcher}})
}

/// An Istio string match on the namespace, as a regex on the peer's SPIFFE URI (`spiffe://<td>/ns/<ns>/sa/<sa>`).
fn namespace_match(namespace: &StringMatch) -> Value {
    let escaped = |s: &str| {
        s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_string() } else { format!("\\{c}") }).collect::<String>()
    };
    let ns = match namespace {
        StringMatch::Any => "[^/]+".to_string(),
        StringMatch::Exact(s) => escaped(s),
        StringMatch::Prefix(s) => format!("{}[^/]*", escaped(s)),
        StringMatch::Suffix(s) => format!("[^/]*{}", escaped(s)),
    };
    json!({"authenticated": {"principal_name": {"safe_regex": {"regex": format!("spiffe://[^/]+/ns/{ns}/sa/[^/]+")}}}})
}

fn callers(callers: &Callers) -> Value {
    match callers {
        Callers::Anyone => json!({"any": true}),
        Callers::Only { principals, namespaces } => {
            let mut all = Vec::new();
            if let Some(principals) = principals {
                all.push(json!({"or_ids": {"ids": principals.iter().map(principal_match).collect::<Vec<_>>()}}));
            }
            if let Some(namespaces) = namespaces {
                all.push(json!({"or_ids": {"ids": namespaces.iter().map(namespace_match).collect::<Vec<_>>()}}));
            }
            json!({"and_ids": {"ids": all}})
        }
    }
}

/// Everything refused unless allowed: the deny list and the special-purpose ranges.
fn refused(policy: &AddressPolicy) -> Vec<(Cidr, &'static str)> {
    policy.denied.iter().map(|c| (*c, "deny list")).chain(policy.special.iter().copied()).collect()
}

/// The enforcing RBAC policies (`ALLOW`): see the module documentation. `lab_upstreams` are open to everyone
/// whatever the policy says of their range (its deny list included): a lab's stand-ins for the public internet,
/// which live on loopback addresses.
fn enforce_policies(policy: &AddressPolicy, lab_upstreams: &[Cidr]) -> Value {
    let refused: Vec<Cidr> = refused(policy).into_iter().map(|(c, _)| c).collect();
    let mut policies = serde_json::Map::new();
    let public = within_except(&any_address(), &refused);
    policies.insert("public".into(), json!({"permissions": [public], "principals": [{"any": true}]}));
    for allowance in &policy.allowances {
        let permission = within_except(&allowance.cidrs, &policy.denied);
        policies.insert(
            format!("rule:{}", allowance.rule),
            json!({"permissions": [permission], "principals": [callers(&allowance.callers)]}),
        );
    }
    if !lab_upstreams.is_empty() {
        policies.insert(
            "lab-upstreams".into(),
            json!({"permissions": [any_of(lab_upstreams)], "principals": [{"any": true}]}),
        );
    }
    json!({"action": "ALLOW", "policies": policies})
}

/// The range-naming policies (`DENY`, shadow only): one per refused range.
fn range_policies(policy: &AddressPolicy) -> Value {
    let policies: serde_json::Map<String, Value> = refused(policy)
        .into_iter()
        .map(|(range, why)| {
            (range_policy(&range, why), json!({"permissions": [ip_matcher(&range)], "principals": [{"any": true}]}))
        })
        .collect();
    json!({"action": "DENY", "policies": policies})
}

/// The two HTTP filters (`envoy.filters.http.rbac`), to follow the dynamic forward proxy filter (with
/// `save_upstream_address: true`) and precede the router.
pub fn http_filters(policy: &AddressPolicy, mode: Mode, lab_upstreams: &[Cidr]) -> Vec<Value> {
    let rbac = json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"});
    filter_pair(&rbac, None, policy, mode, lab_upstreams)
}

/// The two network filters (`envoy.filters.network.rbac`) for TLS passthrough, to follow the SNI dynamic forward
/// proxy filter (with `save_upstream_address: true`) and precede `tcp_proxy`.
pub fn network_filters(policy: &AddressPolicy, mode: Mode, lab_upstreams: &[Cidr]) -> Vec<Value> {
    let rbac = json!({"@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"});
    filter_pair(&rbac, Some(("egress_resolved_range", "egress_resolved")), policy, mode, lab_upstreams)
}

/// The ranges filter and the enforcing filter, on the RBAC config `base` (its `@type`), with the network filter's
/// required stat prefixes when given.
fn filter_pair(
    base: &Value,
    stat_prefixes: Option<(&str, &str)>,
    policy: &AddressPolicy,
    mode: Mode,
    lab_upstreams: &[Cidr],
) -> Vec<Value> {
    let filter = |name: &str, stat_prefix: Option<&str>, config: Value| {
        let mut typed = base.clone();
        if let (Value::Object(typed), Value::Object(config)) = (&mut typed, config) {
            typed.extend(config);
            if let Some(prefix) = stat_prefix {
                typed.insert("stat_prefix".into(), prefix.into());
            }
        }
        json!({"name": name, "typed_config": typed})
    };
    let enforce = enforce_policies(policy, lab_upstreams);
    let enforce = match mode {
        Mode::Enforce => json!({"rules": enforce, "shadow_rules": enforce, "shadow_rules_stat_prefix": ENFORCE_PREFIX}),
        Mode::Report => json!({"shadow_rules": enforce, "shadow_rules_stat_prefix": ENFORCE_PREFIX}),
    };
    let ranges = json!({"shadow_rules": range_policies(policy), "shadow_rules_stat_prefix": RANGES_PREFIX});
    vec![
        filter("egress.resolved_address.ranges", stat_prefixes.map(|(ranges, _)| ranges), ranges),
        filter("egress.resolved_address", stat_prefixes.map(|(_, enforce)| enforce), enforce),
    ]
}

/// The DNS cache's `resolved_address_filter` (Envoy >= 1.39): the ranges no caller may reach, dropped from every
/// answer before anyone connects. It closes the gap the RBAC filters leave (they check the answer's first address;
/// a failed connection may fall back to another) for every range no rule allows; a range a rule allows for some
/// callers stays in the cache and is left to the RBAC filters.
pub fn cache_address_filter(policy: &AddressPolicy, lab_upstreams: &[Cidr]) -> Value {
    let ranges: Vec<Value> = policy
        .unreachable(lab_upstreams)
        .iter()
        .map(|cidr| {
            let (address, prefix_len) = cidr.parts();
            json!({"address_prefix": address.to_string(), "prefix_len": prefix_len})
        })
        .collect();
    json!({"ranges": ranges})
}

#[cfg(test)]
mod tests {
    use super::*;
    use egress_core::PolicyDocument;

    #[test]
    fn every_refused_range_is_named_and_the_rules_callers_are_rendered_as_istio_does() {
        let doc: PolicyDocument = serde_json::from_str(
            r#"{"rules": [{"name": "corp", "cidrs": ["10.1.0.0/16"], "namespaces": ["billing"],
                           "principals": ["cluster.local/ns/billing/sa/*"]}],
                "deny": {"cidrs": ["10.1.99.0/24"]}}"#,
        )
        .unwrap();
        let policy = AddressPolicy::of(&doc).unwrap();
        let filters = http_filters(&policy, Mode::Enforce, &[]);
        let ranges = &filters[0]["typed_config"]["shadow_rules"]["policies"];
        assert!(ranges.get("refused 10.1.99.0/24 (deny list)").is_some());
        assert!(ranges.get("refused 169.254.0.0/16 (link-local (cloud metadata))").is_some());
        let enforce = &filters[1]["typed_config"];
        assert_eq!(enforce["rules"]["action"], "ALLOW");
        let corp = &enforce["rules"]["policies"]["rule:corp"]["principals"][0]["and_ids"]["ids"];
        assert_eq!(
            corp[0]["or_ids"]["ids"][0]["authenticated"]["principal_name"]["prefix"],
            "spiffe://cluster.local/ns/billing/sa/"
        );
        assert_eq!(
            corp[1]["or_ids"]["ids"][0]["authenticated"]["principal_name"]["safe_regex"]["regex"],
            "spiffe://[^/]+/ns/billing/sa/[^/]+"
        );
        let report = http_filters(&policy, Mode::Report, &[]);
        assert!(report[1]["typed_config"].get("rules").is_none(), "report mode refuses nothing");
    }
}
