//! The address a name resolved to, vetted (SSRF through DNS). A name on the allow-list can resolve to an internal
//! address: an attacker's name under an allowed wildcard, DNS rebinding, a public service that resolves arbitrary
//! IPs. As smokescreen does, the gateway classifies the resolved address and refuses the special-purpose ranges
//! ([`SPECIAL_PURPOSE`]: loopback, private, link-local and cloud metadata, CGNAT, ULA, unspecified, multicast,
//! reserved, and the IPv6 forms that carry an IPv4 address) unless a rule's `cidrs` allow the address for the
//! caller; the deny list's CIDRs are refused whatever any rule says.
//!
//! The filters see a request before Envoy resolves its name, so this is enforced by Envoy after resolution, from a
//! configuration rendered from [`AddressPolicy`] (`egressctl::resolved`); this module is the one statement of what
//! that configuration must decide, and [`AddressPolicy::vet`] is its reference, which the tests hold it to.

use crate::cidr::Cidr;
use crate::config_error::{ConfigError, ConfigErrors};
use crate::policy::PolicyDocument;
use crate::spiffe::{SpiffeId, StringMatch};
use std::net::IpAddr;

/// A special-purpose range and why it is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecialRange {
    pub cidr: &'static str,
    pub what: &'static str,
}

/// Refused after resolution unless a rule's `cidrs` allow them (IANA's IPv4 and IPv6 special-purpose address
/// registries, the ranges that reach something other than the public internet).
pub const SPECIAL_PURPOSE: &[SpecialRange] = &[
    SpecialRange { cidr: "0.0.0.0/8", what: "this network" },
    SpecialRange { cidr: "10.0.0.0/8", what: "private" },
    SpecialRange { cidr: "100.64.0.0/10", what: "shared address space (CGNAT)" },
    SpecialRange { cidr: "127.0.0.0/8", what: "loopback" },
    SpecialRange { cidr: "169.254.0.0/16", what: "link-local (cloud metadata)" },
    SpecialRange { cidr: "172.16.0.0/12", what: "private" },
    SpecialRange { cidr: "192.0.0.0/24", what: "IETF protocol assignments" },
    SpecialRange { cidr: "192.168.0.0/16", what: "private" },
    SpecialRange { cidr: "198.18.0.0/15", what: "benchmarking" },
    SpecialRange { cidr: "224.0.0.0/4", what: "multicast" },
    SpecialRange { cidr: "240.0.0.0/4", what: "reserved and broadcast" },
    SpecialRange { cidr: "::/128", what: "unspecified" },
    SpecialRange { cidr: "::1/128", what: "loopback" },
    SpecialRange { cidr: "::ffff:0:0/96", what: "IPv4-mapped" },
    SpecialRange { cidr: "::/96", what: "IPv4-compatible" },
    SpecialRange { cidr: "64:ff9b::/96", what: "IPv4/IPv6 translation (NAT64)" },
    SpecialRange { cidr: "64:ff9b:1::/48", what: "local IPv4/IPv6 translation" },
    SpecialRange { cidr: "100::/64", what: "discard" },
    SpecialRange { cidr: "2002::/16", what: "6to4 (carries an IPv4 address)" },
    SpecialRange { cidr: "fc00::/7", what: "unique local (fd00:ec2::254: cloud metadata)" },
    SpecialRange { cidr: "fe80::/10", what: "link-local" },
    SpecialRange { cidr: "ff00::/8", what: "multicast" },
];

/// Who an allowance is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Callers {
    Anyone,
    /// Callers whose verified SPIFFE ID matches one of `principals` (Istio form `td/ns/x/sa/y`) and, when given, one
    /// of `namespaces` (both lists must match when both are given, as for the rule's name matching).
    Only {
        principals: Option<Vec<StringMatch>>,
        namespaces: Option<Vec<StringMatch>>,
    },
}

impl Callers {
    pub fn admit(&self, caller: Option<&SpiffeId>) -> bool {
        let Callers::Only { principals, namespaces } = self else { return true };
        let Some(caller) = caller else { return false };
        let principal = caller.principal();
        principals.as_ref().is_none_or(|p| p.iter().any(|m| m.matches(&principal)))
            && namespaces.as_ref().is_none_or(|n| n.iter().any(|m| m.matches(&caller.namespace)))
    }
}

/// A rule's CIDRs, reachable after resolution by the rule's callers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowance {
    pub rule: String,
    pub cidrs: Vec<Cidr>,
    pub callers: Callers,
}

/// What a policy lets a connection reach once its name is resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressPolicy {
    /// The deny list's CIDRs: refused whatever any rule says.
    pub denied: Vec<Cidr>,
    /// [`SPECIAL_PURPOSE`], refused unless an allowance covers the address for the caller.
    pub special: Vec<(Cidr, &'static str)>,
    pub allowances: Vec<Allowance>,
}

/// Why a resolved address was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The range that refused it, e.g. `10.0.0.0/8`.
    pub range: Cidr,
    /// `deny list`, or the special-purpose range's description.
    pub why: &'static str,
}

/// The machine reason of a refusal, in responses, metrics and audit events.
pub const REASON: &str = "resolved_address_not_allowed";

/// Where the rendered Envoy configuration leaves its verdicts for the filters: RBAC dynamic metadata, under the RBAC
/// filter's namespace, keyed by each filter's shadow-rules prefix (`egressctl::resolved` writes the filters).
pub const HTTP_RBAC: &str = "envoy.filters.http.rbac";
pub const NETWORK_RBAC: &str = "envoy.filters.network.rbac";
/// The enforcing filter's verdict, `allowed` | `denied` (also in report mode, where nothing is enforced).
pub const VERDICT_KEY: &str = "egress_resolved_shadow_engine_result";
/// The range-naming filter's policy that matched the address: `refused <cidr> (<why>)`.
pub const RANGE_KEY: &str = "egress_resolved_range_shadow_effective_policy_id";
/// The shadow-rules prefixes that make those keys.
pub const VERDICT_PREFIX: &str = "egress_resolved_";
pub const RANGE_PREFIX: &str = "egress_resolved_range_";

/// Envoy >= 1.39 also drops what no caller may reach from every DNS answer (the DNS cache's
/// `resolved_address_filter`); a name left without an address is Envoy's 503 with these response code details (or,
/// on a TLS passthrough connection, a connection closed for a DNS failure).
pub const ANSWER_FILTERED_DETAILS: &str = "dns_resolution_failure{address_denied}";
/// What a refusal by the answer filter says of the address: every one of the answer's was refused (which ranges
/// they fell in, Envoy does not say).
pub const ANSWER_FILTERED_DETAIL: &str = "every address of the answer in a refused range";

/// The property path of a metadata key left by the RBAC filters of `namespace` ([`HTTP_RBAC`], [`NETWORK_RBAC`]).
pub fn metadata_path<'a>(namespace: &'a str, key: &'a str) -> [&'a str; 4] {
    ["metadata", "filter_metadata", namespace, key]
}

/// What a `RANGE_KEY` value says, without its wrapping: `10.0.0.0/8 (private)`.
pub fn range_detail(policy_id: &str) -> &str {
    policy_id.strip_prefix("refused ").unwrap_or(policy_id)
}

impl AddressPolicy {
    /// The address policy of a policy document; every problem with its field path (a document the allow-list
    /// accepts has none).
    pub fn of(doc: &PolicyDocument) -> Result<AddressPolicy, ConfigErrors> {
        let mut errors = Vec::new();
        let denied =
            doc.deny.as_ref().map_or_else(Vec::new, |deny| parsed(&deny.cidrs, "deny.cidrs", Cidr::parse, &mut errors));
        let mut allowances = Vec::new();
        for (i, rule) in doc.rules.iter().enumerate() {
            let Some(list) = &rule.cidrs else { continue };
            let cidrs = parsed(list, &format!("rules[{i}].cidrs"), Cidr::parse, &mut errors);
            let mut matches =
                |list: &Option<Vec<String>>, field: &str, parse: fn(&str) -> Result<StringMatch, String>| {
                    list.as_ref().map(|list| parsed(list, &format!("rules[{i}].{field}"), parse, &mut errors))
                };
            let principals = matches(&rule.principals, "principals", StringMatch::parse_principal);
            let namespaces = matches(&rule.namespaces, "namespaces", StringMatch::parse);
            let callers = if principals.is_none() && namespaces.is_none() {
                Callers::Anyone
            } else {
                Callers::Only { principals, namespaces }
            };
            allowances.push(Allowance { rule: rule.name.clone(), cidrs, callers });
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let special = SPECIAL_PURPOSE.iter().filter_map(|s| Some((Cidr::parse(s.cidr).ok()?, s.what))).collect();
        Ok(AddressPolicy { denied, special, allowances })
    }

    /// The ranges no caller may reach (the deny list, and the special-purpose ranges outside every allowance): what
    /// a resolver may drop from every answer before anyone connects. `public` is taken out of all of them: ranges
    /// that stand for the public internet whatever the policy says (a lab's upstream hosts on loopback).
    pub fn unreachable(&self, public: &[Cidr]) -> Vec<Cidr> {
        let allowed: Vec<Cidr> =
            self.allowances.iter().flat_map(|a| a.cidrs.iter().copied()).chain(public.iter().copied()).collect();
        let denied = self.denied.iter().flat_map(|range| range.without(public));
        denied.chain(self.special.iter().flat_map(|(range, _)| range.without(&allowed))).collect()
    }

    /// Whether `caller` may reach `address`: the deny list wins; a special-purpose address needs an allowance for
    /// the caller; any other address passes (the name was vetted by the allow-list before it was resolved).
    pub fn vet(&self, address: IpAddr, caller: Option<&SpiffeId>) -> Result<(), Refused> {
        if let Some(range) = self.denied.iter().find(|c| c.contains(address)) {
            return Err(Refused { range: *range, why: "deny list" });
        }
        let Some((range, why)) = self.special.iter().find(|(c, _)| c.contains(address)) else { return Ok(()) };
        let allowed =
            self.allowances.iter().any(|a| a.callers.admit(caller) && a.cidrs.iter().any(|c| c.contains(address)));
        if allowed {
            Ok(())
        } else {
            Err(Refused { range: *range, why })
        }
    }
}

/// Every item of `list` parsed, each failure recorded with its path `at[i]`.
fn parsed<T>(
    list: &[String],
    at: &str,
    parse: impl Fn(&str) -> Result<T, String>,
    errors: &mut Vec<ConfigError>,
) -> Vec<T> {
    let mut out = Vec::with_capacity(list.len());
    for (i, raw) in list.iter().enumerate() {
        match parse(raw) {
            Ok(item) => out.push(item),
            Err(message) => errors.push(ConfigError::new(format!("{at}[{i}]"), message)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn policy(json: &str) -> AddressPolicy {
        let doc: PolicyDocument = crate::json::from_slice(json.as_bytes()).unwrap();
        AddressPolicy::of(&doc).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const POLICY: &str = r#"{
      "rules": [
        {"name": "public", "hosts": ["*.example.com"]},
        {"name": "corp", "hosts": ["internal.corp"], "cidrs": ["10.1.0.0/16"], "namespaces": ["billing"]},
        {"name": "lab", "cidrs": ["192.168.7.0/24", "fd12:3456::/32"]}
      ],
      "deny": {"cidrs": ["10.1.99.0/24", "203.0.113.0/24"]}
    }"#;

    #[test]
    fn special_purpose_addresses_are_refused_in_every_spelling() {
        let p = policy(POLICY);
        for refused in [
            "127.0.0.1",
            "127.255.255.254",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.0.170",
            "198.18.0.1",
            "::",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "fc00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:8.8.8.8",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "100::1",
        ] {
            assert!(p.vet(ip(refused), None).is_err(), "{refused}");
        }
        for public in ["8.8.8.8", "1.1.1.1", "100.128.0.1", "172.32.0.1", "2606:4700::1111", "193.0.0.1"] {
            assert_eq!(p.vet(ip(public), None), Ok(()), "{public}");
        }
        let metadata = p.vet(ip("169.254.169.254"), None).unwrap_err();
        assert_eq!(
            (metadata.range.to_string().as_str(), metadata.why),
            ("169.254.0.0/16", "link-local (cloud metadata)")
        );
    }

    #[test]
    fn a_rules_cidrs_reopen_a_special_range_for_the_rules_callers_only_and_the_deny_list_wins() {
        let p = policy(POLICY);
        let billing = SpiffeId::parse("spiffe://cluster.local/ns/billing/sa/payments").unwrap();
        let web = SpiffeId::parse("spiffe://cluster.local/ns/web/sa/frontend").unwrap();
        assert_eq!(p.vet(ip("10.1.2.3"), Some(&billing)), Ok(()));
        assert!(p.vet(ip("10.1.2.3"), Some(&web)).is_err(), "another namespace");
        assert!(p.vet(ip("10.1.2.3"), None).is_err(), "no identity");
        assert!(p.vet(ip("10.2.0.1"), Some(&billing)).is_err(), "outside the rule's range");
        let denied = p.vet(ip("10.1.99.5"), Some(&billing)).unwrap_err();
        assert_eq!((denied.range.to_string().as_str(), denied.why), ("10.1.99.0/24", "deny list"));
        assert!(p.vet(ip("203.0.113.9"), None).is_err(), "a public address on the deny list");
        assert_eq!(p.vet(ip("192.168.7.9"), None), Ok(()), "a rule without callers: anyone");
        assert_eq!(p.vet(ip("fd12:3456::1"), None), Ok(()));
        assert!(p.vet(ip("fd12:3457::1"), None).is_err());
    }

    #[test]
    fn what_no_caller_may_reach_leaves_every_allowance_reachable() {
        let p = policy(POLICY);
        let lab = [Cidr::parse("127.0.0.2/32").unwrap()];
        let unreachable = p.unreachable(&lab);
        let dropped = |ip: &str| unreachable.iter().any(|c| c.contains(ip.parse().unwrap()));
        for kept in ["10.1.2.3", "192.168.7.1", "127.0.0.2", "8.8.8.8", "fd12:3456::1"] {
            assert!(!dropped(kept), "{kept}");
        }
        for gone in ["10.1.99.1", "10.2.0.1", "127.0.0.1", "169.254.169.254", "203.0.113.5", "fd00:ec2::254"] {
            assert!(dropped(gone), "{gone}");
        }
        // A range declared public is kept even where the deny list covers it.
        let p = policy(r#"{"rules": [{"name": "a", "hosts": ["*"]}], "deny": {"cidrs": ["127.0.0.0/8"]}}"#);
        let unreachable = p.unreachable(&[Cidr::parse("127.16.4.0/24").unwrap()]);
        let dropped = |ip: &str| unreachable.iter().any(|c| c.contains(ip.parse().unwrap()));
        assert!(!dropped("127.16.4.9") && dropped("127.16.5.1") && dropped("127.0.0.1"));
    }

    #[test]
    fn bad_cidrs_are_reported_with_their_path() {
        let doc: PolicyDocument = crate::json::from_slice(
            br#"{"rules": [{"name": "x", "cidrs": ["10.0.0.1/8"]}], "deny": {"cidrs": ["nope"]}}"#,
        )
        .unwrap();
        let errors = AddressPolicy::of(&doc).unwrap_err().to_string();
        assert!(errors.contains("rules[0].cidrs[0]") && errors.contains("deny.cidrs[0]"), "{errors}");
    }
}
