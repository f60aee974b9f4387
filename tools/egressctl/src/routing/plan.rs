//! What the policy asks the mesh to route through the egress gateway, worked out once for both routing sets.
//!
//! Contract: every (host, port) a rule allows is routed, to the nearest host Istio can express; nothing else is,
//! except the documented supersets. Istio hosts are exact names or a leading `*.` wildcard, so:
//!
//! | policy pattern          | Istio host                 | ServiceEntry resolution |
//! |-------------------------|----------------------------|-------------------------|
//! | `api.example.com`       | `api.example.com`          | `DNS`                   |
//! | `*.example.com`         | `*.example.com`            | `DYNAMIC_DNS`           |
//! | `ec2.*.amazonaws.com`   | `*.amazonaws.com` (superset: the gateway's allow-list enforces the exact pattern) | `DYNAMIC_DNS` |
//! | `a.*.com`, `*`          | refused: the superset would be a whole top-level domain, or every name | |
//!
//! Ports: 80 is plain HTTP from the app (mesh mTLS to the gateway, which may originate TLS), 443 is the app's own TLS,
//! passed through by SNI. Those are the gateway Service's own ports; any other port would need a Service port and a
//! server of its own on the gateway, so a host rule naming one is refused rather than half-routed. A rule without
//! `ports` gets both, except that a rule scoped by methods, paths, principals or namespaces gets no passthrough
//! route: a passthrough connection shows the gateway no request and no caller, so such a rule never allows one.
//!
//! Not routed, and said so in the rendered comments: address ranges (`cidrs`: a gateway routes by name and cannot keep
//! the original destination address) and hosts the deny list covers entirely (deny wins: the allow-list would refuse
//! every name of them). A rule host that a deny pattern only partly overlaps is routed: the filter enforces the deny.
//! Hosts only on the deny list are never routed (only rule hosts and `redirects.originateTls` hosts inside them are).
//!
//! Redirect targets that may be followed are policy hosts (a followed hop must be allowed), so they are routed here
//! like any other. TLS origination (`redirects.originateTls`) marks a routed host when it covers every pattern the
//! host came from; an exact or `*.` origination pattern inside a routed wildcard becomes a routed host of its own (so
//! its names originate while the rest of the wildcard does not); one that Istio cannot separate from a routed host
//! (an inner wildcard covering part of it) is refused.

use egress_core::hosts::HostPattern;
use egress_core::PolicyDocument;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;

/// Plain HTTP from the app; the gateway's mesh-mTLS server.
pub const HTTP_PORT: u16 = 80;
/// The app's own TLS; the gateway's passthrough server.
pub const TLS_PORT: u16 = 443;
/// The upstream port of originated TLS.
pub const ORIGINATED_TLS_PORT: u16 = 443;

/// Why a host is routed: the policy entry it comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// An exact name of a rule.
    Exact,
    /// A rule's `*.` wildcard, as written.
    Wildcard,
    /// The nearest `*.` wildcard above a rule's inner-wildcard pattern (`ec2.*.amazonaws.com` → `*.amazonaws.com`).
    Superset,
    /// A `redirects.originateTls` pattern inside a routed wildcard, routed on its own to originate TLS.
    Origination,
}

/// One policy entry a routed host comes from.
#[derive(Clone, Debug)]
pub struct Source {
    /// Its field path: `rules[1].hosts[0]`, `redirects.originateTls[2]`.
    pub path: String,
    /// The rule's name (none for an origination entry).
    pub rule: Option<String>,
    /// The pattern as written.
    pub written: String,
    pub origin: Origin,
    pattern: HostPattern,
}

/// A host the mesh sends through the gateway.
#[derive(Clone, Debug)]
pub struct RoutedHost {
    /// The Istio host: an exact name or `*.` and a suffix, lowercase.
    pub host: String,
    /// The ports routed, ascending: [`HTTP_PORT`], [`TLS_PORT`] or both.
    pub ports: Vec<u16>,
    /// The gateway originates TLS for the plain HTTP of port 80 (to [`ORIGINATED_TLS_PORT`]).
    pub originate_tls: bool,
    /// The policy entries it is routed for, in policy order.
    pub sources: Vec<Source>,
    /// A DNS-1123 label, unique in the plan, for the resource names of this host.
    pub name: String,
}

impl RoutedHost {
    pub fn is_wildcard(&self) -> bool {
        self.host.starts_with("*.")
    }

    pub fn routes(&self, port: u16) -> bool {
        self.ports.contains(&port)
    }
}

/// A policy entry that gets no route, and why.
#[derive(Clone, Debug)]
pub struct NotRouted {
    pub path: String,
    pub written: String,
    pub why: String,
}

/// A deny-list host, and the routed hosts whose names it takes away (never routed on its own).
#[derive(Clone, Debug)]
pub struct Denied {
    pub path: String,
    pub written: String,
    /// The routed hosts it overlaps: their routes carry its names to the gateway, whose filter refuses them.
    pub inside: Vec<String>,
}

/// The routing the policy asks for.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// In policy order (rule hosts first, then origination hosts).
    pub hosts: Vec<RoutedHost>,
    pub not_routed: Vec<NotRouted>,
    pub denied: Vec<Denied>,
}

/// Works out the routing of `doc`, a policy its filter accepts. `Err` lists every entry that cannot be routed
/// faithfully, each with its field path.
pub fn plan(doc: &PolicyDocument) -> Result<Plan, Vec<String>> {
    let mut errors = Vec::new();
    let mut plan = Plan::default();
    let mut deny: Vec<(usize, String, HostPattern)> = Vec::new();
    for (k, raw) in doc.deny.iter().flat_map(|deny| deny.hosts.iter().enumerate()) {
        match HostPattern::parse(raw) {
            Ok(pattern) => deny.push((k, raw.clone(), pattern)),
            Err(e) => errors.push(format!("deny.hosts[{k}]: {e}")),
        }
    }
    let denied_by = |pattern: &HostPattern| {
        deny.iter().find(|(_, _, d)| covers(d, pattern)).map(|(k, raw, _)| format!("deny.hosts[{k}] `{raw}`"))
    };

    for (i, rule) in doc.rules.iter().enumerate() {
        for (k, cidr) in rule.cidrs.iter().flatten().enumerate() {
            plan.not_routed.push(NotRouted {
                path: format!("rules[{i}].cidrs[{k}]"),
                written: cidr.clone(),
                why: "an address range: a gateway routes by name (Host, SNI) and cannot keep the original \
                      destination address; use an ambient waypoint or a NetworkPolicy (docs/istio.md, Address ranges)"
                    .into(),
            });
        }
        let Some(hosts) = &rule.hosts else { continue };
        // On a port problem the hosts are still checked, so that every problem is reported at once.
        let (mut ports, ports_valid) = match rule_ports(i, rule.ports.as_deref()) {
            Ok(ports) => (ports, true),
            Err(mut problems) => {
                errors.append(&mut problems);
                (vec![HTTP_PORT], false)
            }
        };
        // A passthrough connection shows the gateway neither a request (method, path) nor a caller (the app's TLS
        // reaches it unwrapped, without a mesh certificate): such a rule can never allow one, so its hosts get no
        // passthrough route.
        let scoped = [
            ("methods", rule.methods.is_some()),
            ("paths", rule.paths.is_some()),
            ("principals", rule.principals.is_some()),
            ("namespaces", rule.namespaces.is_some()),
        ];
        let scoped: Vec<&str> = scoped.iter().filter(|(_, set)| *set).map(|(field, _)| *field).collect();
        if ports_valid && !scoped.is_empty() && ports.contains(&TLS_PORT) {
            ports.retain(|&p| p != TLS_PORT);
            plan.not_routed.push(NotRouted {
                path: format!("rules[{i}]"),
                written: format!("port {TLS_PORT} of rule {}", rule.name),
                why: format!(
                    "TLS passthrough: the rule names {}, which a passthrough connection never shows the gateway (no \
                     request inside the app's TLS, no caller certificate), so it can allow none",
                    scoped.join(" and ")
                ),
            });
        }
        if ports.is_empty() {
            continue;
        }
        for (j, raw) in hosts.iter().enumerate() {
            let path = format!("rules[{i}].hosts[{j}]");
            let pattern = match HostPattern::parse(raw) {
                Ok(pattern) => pattern,
                Err(e) => {
                    errors.push(format!("{path}: {e}"));
                    continue;
                }
            };
            if let Some(by) = denied_by(&pattern) {
                let why = format!("{by} covers every name it matches (deny wins): nothing to route");
                plan.not_routed.push(NotRouted { path, written: raw.clone(), why });
                continue;
            }
            let (host, origin) = match istio_host(raw, &pattern) {
                Ok(found) => found,
                Err(e) => {
                    errors.push(format!("{path}: {e}"));
                    continue;
                }
            };
            if ports_valid {
                let source = Source { path, rule: Some(rule.name.clone()), written: raw.clone(), origin, pattern };
                add(&mut plan.hosts, host, &ports, source);
            }
        }
    }

    let originate = doc.redirects.iter().flat_map(|r| r.originate_tls.iter().enumerate());
    for (k, raw) in originate {
        let path = format!("redirects.originateTls[{k}]");
        let Ok(pattern) = HostPattern::parse(raw) else {
            errors.push(format!("{path}: `{raw}` is not a host pattern"));
            continue;
        };
        if denied_by(&pattern).is_some() {
            continue; // Nothing of it is allowed: whatever route its names take, the allow-list refuses them.
        }
        let mut inside = Vec::new();
        let mut partly = Vec::new();
        for routed in &mut plan.hosts {
            if routed.sources.iter().all(|s| covers(&pattern, &s.pattern)) {
                routed.originate_tls = true;
            } else if routed.sources.iter().any(|s| overlaps(&pattern, &s.pattern)) {
                partly.push(routed.host.clone());
                if let Ok(own) = HostPattern::parse(&routed.host) {
                    if covers(&own, &pattern) {
                        inside.push(routed.ports.clone());
                    }
                }
            }
        }
        if partly.is_empty() {
            continue;
        }
        // The names of `pattern` inside routed wildcards that do not all originate: route them on their own.
        let expressible = matches!(pattern, HostPattern::Exact(_) | HostPattern::Below(_));
        match istio_host(raw, &pattern) {
            Ok((host, _)) if expressible && inside.len() == partly.len() => {
                let ports: BTreeSet<u16> = inside.into_iter().flatten().collect();
                let ports: Vec<u16> = ports.into_iter().collect();
                let source = Source { path, rule: None, written: raw.clone(), origin: Origin::Origination, pattern };
                add(&mut plan.hosts, host.clone(), &ports, source);
                if let Some(routed) = plan.hosts.iter_mut().find(|h| h.host == host) {
                    routed.originate_tls = true;
                }
            }
            Ok(_) | Err(_) => errors.push(format!(
                "{path}: `{raw}` covers part of the routed host(s) {}: Istio originates TLS per routed host, and \
                 cannot route this part on its own; write it as exact names or a `*.` wildcard",
                partly.iter().map(|h| format!("`{h}`")).collect::<Vec<_>>().join(", ")
            )),
        }
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    for (k, written, pattern) in &deny {
        let inside = plan
            .hosts
            .iter()
            .filter(|h| HostPattern::parse(&h.host).is_ok_and(|own| overlaps(&own, pattern)))
            .map(|h| h.host.clone())
            .collect();
        plan.denied.push(Denied { path: format!("deny.hosts[{k}]"), written: written.clone(), inside });
    }
    name_hosts(&mut plan.hosts);
    Ok(plan)
}

/// The ports of a rule with hosts: [`HTTP_PORT`] and [`TLS_PORT`] unless it names some; any other is an error.
fn rule_ports(rule: usize, ports: Option<&[i64]>) -> Result<Vec<u16>, Vec<String>> {
    let Some(ports) = ports else { return Ok(vec![HTTP_PORT, TLS_PORT]) };
    let mut routed = BTreeSet::new();
    let mut errors = Vec::new();
    for (k, &port) in ports.iter().enumerate() {
        match u16::try_from(port) {
            Ok(port @ (HTTP_PORT | TLS_PORT)) => {
                routed.insert(port);
            }
            _ => errors.push(format!(
                "rules[{rule}].ports[{k}]: port {port}: the routing carries HTTP on {HTTP_PORT} and TLS on {TLS_PORT}, \
                 the egress gateway Service's own ports; another port needs a port and a server of its own on the \
                 gateway, which `egressctl render` does not write: route it by hand, or leave it out of the policy \
                 you render"
            )),
        }
    }
    if errors.is_empty() {
        Ok(routed.into_iter().collect())
    } else {
        Err(errors)
    }
}

/// Adds `source` to the routed `host`, creating it in policy order.
fn add(hosts: &mut Vec<RoutedHost>, host: String, ports: &[u16], source: Source) {
    let index = match hosts.iter().position(|h| h.host == host) {
        Some(index) => index,
        None => {
            hosts.push(RoutedHost {
                host,
                ports: Vec::new(),
                originate_tls: false,
                sources: Vec::new(),
                name: String::new(),
            });
            hosts.len() - 1
        }
    };
    if let Some(routed) = hosts.get_mut(index) {
        let merged: BTreeSet<u16> = routed.ports.iter().chain(ports).copied().collect();
        routed.ports = merged.into_iter().collect();
        routed.sources.push(source);
    }
}

/// The nearest host Istio can express for `pattern`, and why it is that one.
fn istio_host(raw: &str, pattern: &HostPattern) -> Result<(String, Origin), String> {
    let (host, origin) = match pattern {
        HostPattern::Exact(name) => (name.clone(), Origin::Exact),
        HostPattern::Below(suffix) if suffix.is_empty() => {
            return Err(format!(
                "`{raw}`: a REGISTRY_ONLY mesh only reaches registered hosts, and Istio refuses a ServiceEntry for \
                 every name (`*`): list the hosts, or send unregistered traffic to the gateway yourself \
                 (outboundTrafficPolicy ALLOW_ANY with egressProxy; not rendered)"
            ))
        }
        HostPattern::Below(suffix) => (format!("*.{suffix}"), Origin::Wildcard),
        HostPattern::Shaped(labels) => {
            let tail: Vec<&str> =
                labels.iter().rev().map_while(|label| label.as_deref()).collect::<Vec<_>>().into_iter().rev().collect();
            let superset = format!("*.{}", tail.join("."));
            if tail.len() < 2 {
                return Err(format!(
                    "`{raw}`: Istio takes only a leading `*.` wildcard, and the nearest one covering this pattern, \
                     `{superset}`, would send every name of a top-level domain to the gateway: list the names, or \
                     write a pattern with at least two labels after its last `*`"
                ));
            }
            (superset, Origin::Superset)
        }
    };
    let name = host.strip_prefix("*.").unwrap_or(&host);
    if let Some(label) = name.split('.').find(|label| !is_dns1123_label(label)) {
        return Err(format!(
            "`{raw}`: Istio hosts are DNS-1123 names (each label a-z, 0-9 and inner `-`), and `{label}` is not one"
        ));
    }
    Ok((host, origin))
}

fn is_dns1123_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

/// Resource names: the host with `*.` spelt `wildcard-` and dots as dashes (`*.httpbin.org` → `wildcard-httpbin-org`),
/// shortened with a digest of the host when long, and made unique the same way (`wildcard.x.com` and `*.x.com` would
/// otherwise collide). Prefixed names stay within a DNS-1123 label (63).
fn name_hosts(hosts: &mut [RoutedHost]) {
    const MAX: usize = 40;
    let mut taken = BTreeSet::new();
    for routed in hosts.iter_mut() {
        let readable = match routed.host.strip_prefix("*.") {
            Some(suffix) => format!("wildcard-{suffix}"),
            None => routed.host.clone(),
        }
        .replace('.', "-");
        let mut name = readable.clone();
        if name.len() > MAX || taken.contains(&name) {
            let digest = Sha256::digest(routed.host.as_bytes());
            let hex: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
            let head = readable.get(..MAX - 9).unwrap_or(&readable).trim_end_matches('-');
            name = format!("{head}-{hex}");
        }
        taken.insert(name.clone());
        routed.name = name;
    }
}

/// Whether `name` (lowercase, no trailing dot) matches `pattern`.
fn matches(pattern: &HostPattern, name: &str) -> bool {
    match pattern {
        HostPattern::Exact(exact) => exact == name,
        HostPattern::Below(suffix) if suffix.is_empty() => true,
        HostPattern::Below(suffix) => {
            name.strip_suffix(suffix.as_str()).is_some_and(|head| head.len() > 1 && head.ends_with('.'))
        }
        HostPattern::Shaped(labels) => {
            let parts: Vec<&str> = name.split('.').collect();
            parts.len() == labels.len()
                && labels.iter().zip(&parts).all(|(label, part)| label.as_deref().is_none_or(|l| l == *part))
        }
    }
}

fn labels(suffix: &str) -> Vec<&str> {
    if suffix.is_empty() {
        Vec::new()
    } else {
        suffix.split('.').collect()
    }
}

/// Whether `shaped` has more labels than `suffix` and its last ones can be `suffix`'s: all literal and equal
/// (`all_literal`) or each a wildcard or equal.
fn tail_fits(shaped: &[Option<String>], suffix: &str, all_literal: bool) -> bool {
    let suffix = labels(suffix);
    shaped.len() > suffix.len()
        && shaped.iter().rev().zip(suffix.iter().rev()).all(|(label, want)| match label {
            Some(label) => label == want,
            None => !all_literal,
        })
}

/// Whether every name `inner` matches is matched by `outer`.
pub(crate) fn covers(outer: &HostPattern, inner: &HostPattern) -> bool {
    match (outer, inner) {
        (_, HostPattern::Exact(name)) => matches(outer, name),
        (HostPattern::Exact(_), _) => false,
        (HostPattern::Below(s), _) if s.is_empty() => true,
        (HostPattern::Below(s), HostPattern::Below(t)) => t == s || t.ends_with(&format!(".{s}")),
        (HostPattern::Below(s), HostPattern::Shaped(labels)) => tail_fits(labels, s, true),
        (HostPattern::Shaped(_), HostPattern::Below(_)) => false,
        (HostPattern::Shaped(a), HostPattern::Shaped(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.is_none() || (b.is_some() && a == b))
        }
    }
}

/// Whether some name matches both patterns.
pub(crate) fn overlaps(a: &HostPattern, b: &HostPattern) -> bool {
    match (a, b) {
        (HostPattern::Exact(name), other) | (other, HostPattern::Exact(name)) => matches(other, name),
        (HostPattern::Below(s), _) | (_, HostPattern::Below(s)) if s.is_empty() => true,
        (HostPattern::Below(s), HostPattern::Below(t)) => {
            s == t || s.ends_with(&format!(".{t}")) || t.ends_with(&format!(".{s}"))
        }
        (HostPattern::Below(s), HostPattern::Shaped(l)) | (HostPattern::Shaped(l), HostPattern::Below(s)) => {
            tail_fits(l, s, false)
        }
        (HostPattern::Shaped(a), HostPattern::Shaped(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.is_none() || b.is_none() || a == b)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(raw: &str) -> HostPattern {
        HostPattern::parse(raw).unwrap()
    }

    fn doc(yaml: &str) -> PolicyDocument {
        let value: serde_json::Value = serde_yaml_ng::from_str(yaml).unwrap();
        PolicyDocument::from_json(value.to_string().as_bytes()).unwrap()
    }

    fn summary(plan: &Plan) -> Vec<String> {
        plan.hosts
            .iter()
            .map(|h| format!("{} {:?}{} {}", h.host, h.ports, if h.originate_tls { " tls" } else { "" }, h.name))
            .collect()
    }

    #[test]
    fn pattern_algebra() {
        assert!(covers(&p("*.x.com"), &p("a.b.x.com")));
        assert!(!covers(&p("*.x.com"), &p("x.com")));
        assert!(covers(&p("*.x.com"), &p("*.a.x.com")));
        assert!(covers(&p("*.x.com"), &p("*.x.com")));
        assert!(!covers(&p("*.a.x.com"), &p("*.x.com")));
        assert!(covers(&p("*.amazonaws.com"), &p("ec2.*.amazonaws.com")));
        assert!(!covers(&p("*.amazonaws.com"), &p("ec2.*.com")));
        assert!(!covers(&p("*.us-east-1.amazonaws.com"), &p("ec2.*.amazonaws.com")));
        assert!(covers(&p("ec2.*.amazonaws.com"), &p("ec2.eu.amazonaws.com")));
        assert!(covers(&p("a.*.c.d"), &p("a.b.c.d")));
        assert!(!covers(&p("a.b.c.d"), &p("a.*.c.d")));
        assert!(covers(&p("*"), &p("ec2.*.amazonaws.com")));
        assert!(!covers(&p("ec2.*.amazonaws.com"), &p("*.amazonaws.com")));

        assert!(overlaps(&p("*.us-east-1.amazonaws.com"), &p("ec2.*.amazonaws.com")));
        assert!(!overlaps(&p("*.x.com"), &p("*.y.com")));
        assert!(overlaps(&p("*.x.com"), &p("*.a.x.com")));
        assert!(!overlaps(&p("a.*.com"), &p("b.*.com")));
        assert!(overlaps(&p("a.*.com"), &p("*.b.com")));
        assert!(!overlaps(&p("a.*.com"), &p("*.a.b.com")), "a.*.com has three labels");
        assert!(overlaps(&p("api.x.com"), &p("*.x.com")));
    }

    #[test]
    fn every_rule_host_is_routed_at_the_nearest_istio_host() {
        let plan = plan(&doc(r#"
            rules:
              - {name: a, hosts: ["httpbin.org", "*.httpbin.org"]}
              - {name: b, hosts: ["ec2.*.amazonaws.com", "s3.*.amazonaws.com"], ports: [443]}
              - {name: c, hosts: ["API.GitHub.com."], ports: [80]}
              - {name: d, hosts: ["api.github.com"], ports: [443], cidrs: ["10.0.0.0/8"]}
              - {name: e, cidrs: ["203.0.113.7/32"]}
              - {name: f, hosts: ["api.stripe.com"], namespaces: [billing]}
              - {name: g, hosts: ["only-tls.example.com"], ports: [443], methods: [GET]}
        "#))
        .unwrap();
        assert_eq!(
            summary(&plan),
            [
                "httpbin.org [80, 443] httpbin-org",
                "*.httpbin.org [80, 443] wildcard-httpbin-org",
                "*.amazonaws.com [443] wildcard-amazonaws-com",
                "api.github.com [80, 443] api-github-com",
                "api.stripe.com [80] api-stripe-com",
            ]
        );
        let superset = &plan.hosts[2];
        assert_eq!(superset.sources.iter().map(|s| s.origin).collect::<Vec<_>>(), [Origin::Superset; 2]);
        let not_routed: Vec<&str> = plan.not_routed.iter().map(|n| n.path.as_str()).collect();
        assert_eq!(not_routed, ["rules[3].cidrs[0]", "rules[4].cidrs[0]", "rules[5]", "rules[6]"]);
        assert!(plan.not_routed[2].why.contains("names namespaces"), "{:?}", plan.not_routed[2]);
        assert!(plan.not_routed[3].why.contains("names methods"), "{:?}", plan.not_routed[3]);
    }

    #[test]
    fn the_deny_list_removes_what_it_covers_and_routes_nothing_of_its_own() {
        let plan = plan(&doc(r#"
            rules:
              - {name: a, hosts: ["*.httpbin.org", "a.internal.httpbin.org", "ec2.*.internal.aws.com", "ok.com"]}
            deny: {hosts: ["*.internal.httpbin.org", "metadata.google.internal", "*.internal.aws.com"]}
        "#))
        .unwrap();
        assert_eq!(summary(&plan), ["*.httpbin.org [80, 443] wildcard-httpbin-org", "ok.com [80, 443] ok-com"]);
        let not_routed: Vec<(&str, &str)> = plan.not_routed.iter().map(|n| (n.path.as_str(), n.why.as_str())).collect();
        assert_eq!(not_routed.len(), 2);
        assert_eq!(not_routed[0].0, "rules[0].hosts[1]");
        assert!(
            not_routed[0].1.starts_with("deny.hosts[0] `*.internal.httpbin.org` covers every name"),
            "{not_routed:?}"
        );
        assert_eq!(not_routed[1].0, "rules[0].hosts[2]");
        let denied: Vec<(&str, Vec<&str>)> =
            plan.denied.iter().map(|d| (d.written.as_str(), d.inside.iter().map(String::as_str).collect())).collect();
        assert_eq!(
            denied,
            [
                ("*.internal.httpbin.org", vec!["*.httpbin.org"]),
                ("metadata.google.internal", vec![]),
                ("*.internal.aws.com", vec![]),
            ]
        );
    }

    #[test]
    fn what_istio_cannot_route_is_refused_with_its_field_path() {
        let errors = plan(&doc(r#"
            rules:
              - {name: a, hosts: ["ok.com", "a.*.com", "*"]}
              - {name: b, hosts: ["db.example.com"], ports: [443, 5432, 8080]}
              - {name: c, hosts: ["my_host.example.com", "-x.example.com"]}
              - {name: d, cidrs: ["10.0.0.0/8"], ports: [5432]}
        "#))
        .unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.split(": ").next().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "rules[0].hosts[1]",
                "rules[0].hosts[2]",
                "rules[1].ports[1]",
                "rules[1].ports[2]",
                "rules[2].hosts[0]",
                "rules[2].hosts[1]"
            ],
            "{errors:#?}"
        );
        assert!(errors[0].contains("`*.com`"), "{}", errors[0]);
        assert!(errors[2].contains("port 5432"), "{}", errors[2]);
        assert!(errors[4].contains("`my_host`"), "{}", errors[4]);
    }

    #[test]
    fn tls_origination_marks_covered_hosts_and_routes_inner_names_on_their_own() {
        let planned = plan(&doc(r#"
            rules:
              - {name: a, hosts: ["httpbin.org", "*.httpbin.org"]}
              - {name: b, hosts: ["*.example.com"], ports: [80]}
              - {name: c, hosts: ["ec2.*.amazonaws.com"]}
            redirects:
              originateTls: ["httpbin.org", "*.httpbin.org", "api.example.com", "ec2.*.amazonaws.com", "elsewhere.net"]
        "#))
        .unwrap();
        assert_eq!(
            summary(&planned),
            [
                "httpbin.org [80, 443] tls httpbin-org",
                "*.httpbin.org [80, 443] tls wildcard-httpbin-org",
                "*.example.com [80] wildcard-example-com",
                "*.amazonaws.com [80, 443] tls wildcard-amazonaws-com",
                "api.example.com [80] tls api-example-com",
            ]
        );
        assert_eq!(planned.hosts[4].sources[0].origin, Origin::Origination);
        assert_eq!(planned.hosts[4].sources[0].path, "redirects.originateTls[2]");

        let errors = plan(&doc(r#"
            rules:
              - {name: a, hosts: ["ec2.*.amazonaws.com", "s3.*.amazonaws.com"]}
            redirects: {originateTls: ["ec2.*.amazonaws.com"]}
        "#))
        .unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("redirects.originateTls[0]: `ec2.*.amazonaws.com` covers part of"), "{errors:?}");
    }

    #[test]
    fn names_are_unique_dns_labels() {
        let long = format!("{}.example.com", "a".repeat(60));
        let plan = plan(&doc(&format!(r#"{{rules: [{{name: a, hosts: ["*.x.com", "wildcard.x.com", "{long}"]}}]}}"#)))
            .unwrap();
        let names: Vec<&str> = plan.hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names[0], "wildcard-x-com");
        assert!(names[1].starts_with("wildcard-x-com-") && names[1].len() == "wildcard-x-com-".len() + 8, "{names:?}");
        assert!(names[2].len() <= 40 && names[2].starts_with("aaaa"), "{names:?}");
        for name in names {
            assert!(is_dns1123_label(name), "{name}");
        }
    }
}
