//! Evaluating a request against a policy: typed decisions with a machine reason and the rule involved.

use crate::authority::{Authority, Host, Malformed};
use crate::json::Object;
use crate::path::{self, Ambiguity};
use crate::policy::{Mode, Policy, Rule};
use crate::request::RequestLine;
use crate::spiffe::SpiffeId;
use serde::Serialize;
use std::borrow::Cow;
use std::fmt;

/// What the filter does with the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Allow,
    Deny,
    /// Report mode: the policy would deny, the request goes through.
    ReportDeny,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::ReportDeny => "report-deny",
        }
    }

    /// Whether the request may proceed.
    pub fn proceeds(self) -> bool {
        self != Action::Deny
    }
}

/// Why. `code()` is the stable form for replies, filter state, metrics and audit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A rule matched every field of the request.
    Allowed,
    /// No rule lists the host.
    HostNotAllowed,
    /// An IP-literal destination outside every rule's `cidrs`.
    IpNotAllowed,
    /// The destination is on the deny list.
    DenyListed,
    PortNotAllowed,
    MethodNotAllowed,
    PathNotAllowed,
    /// The rule names principals or namespaces and the caller has no verified SPIFFE identity that matches.
    IdentityNotAllowed,
    /// A path-scoped rule was tried and servers would read the path differently (see [`crate::path`]).
    AmbiguousPath(Ambiguity),
    /// The authority could not be parsed unambiguously. Refused in every mode.
    MalformedAuthority(Malformed),
    /// TLS passthrough without SNI. Refused in every mode.
    MissingSni,
}

impl Reason {
    pub fn code(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::HostNotAllowed => "host_not_allowed",
            Reason::IpNotAllowed => "ip_literal_not_allowed",
            Reason::DenyListed => "deny_listed",
            Reason::PortNotAllowed => "port_not_allowed",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::PathNotAllowed => "path_not_allowed",
            Reason::IdentityNotAllowed => "identity_not_allowed",
            Reason::AmbiguousPath(_) => "ambiguous_path",
            Reason::MalformedAuthority(_) => "malformed_authority",
            Reason::MissingSni => "missing_sni",
        }
    }

    /// The finer reason of a malformed authority or an ambiguous path.
    pub fn detail(self) -> Option<&'static str> {
        match self {
            Reason::MalformedAuthority(detail) => Some(detail.code()),
            Reason::AmbiguousPath(detail) => Some(detail.code()),
            _ => None,
        }
    }

    /// Malformed input is refused even in report mode: it is never forwarded.
    fn refused_in_every_mode(self) -> bool {
        matches!(self, Reason::MalformedAuthority(_) | Reason::MissingSni)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::MalformedAuthority(detail) => write!(f, "malformed_authority ({detail})"),
            Reason::AmbiguousPath(detail) => write!(f, "ambiguous_path ({detail})"),
            other => f.write_str(other.code()),
        }
    }
}

/// The normalised destination: host and effective port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub host: Host,
    pub port: u16,
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// The outcome of evaluating one request or connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision<'p> {
    pub action: Action,
    pub reason: Reason,
    /// The rule that allowed the request; for a denial, the first rule whose destination matched (if any).
    pub rule: Option<&'p str>,
    /// `None` when the destination could not be parsed.
    pub destination: Option<Destination>,
    /// Index of `rule` in the policy, for per-rule settings.
    pub rule_index: Option<u32>,
}

impl Decision<'_> {
    /// The HTTP status of a local reply: 400 for what could not be parsed, 403 for what the policy denies.
    pub fn http_status(&self) -> u16 {
        match self.reason {
            Reason::MalformedAuthority(_) => 400,
            _ => 403,
        }
    }

    /// The JSON body of a local reply.
    pub fn http_body(&self) -> String {
        // Members in sorted order, as `serde_json::json!` wrote them.
        match self.reason {
            Reason::MalformedAuthority(detail) => Object::new()
                .str("detail", detail.code())
                .str("error", "malformed_request")
                .str("reason", self.reason.code())
                .finish(),
            _ => Object::new()
                .str_if_some("detail", self.reason.detail())
                .str("error", "egress_denied")
                .opt_str("host", self.destination.as_ref().map(|d| d.host.to_string()).as_deref())
                .opt_uint("port", self.destination.as_ref().map(|d| u64::from(d.port)))
                .str("reason", self.reason.code())
                .opt_str("rule", self.rule)
                .finish(),
        }
    }
}

/// The caller's verified SPIFFE identity, as far as rules need it. A filter pays host calls to read it and most
/// requests match no identity-scoped rule, so it can be handed over as a lookup, run only if such a rule is tried
/// (and then once per evaluation). A lookup that fails returns `None`: identity-scoped rules then refuse.
#[derive(Clone, Copy)]
pub enum Caller<'a> {
    Known(Option<&'a SpiffeId>),
    Lookup(&'a dyn Fn() -> Option<SpiffeId>),
}

impl Caller<'_> {
    pub const ANONYMOUS: Caller<'static> = Caller::Known(None);
}

impl<'a> From<Option<&'a SpiffeId>> for Caller<'a> {
    fn from(identity: Option<&'a SpiffeId>) -> Self {
        Caller::Known(identity)
    }
}

impl fmt::Debug for Caller<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Known(identity) => f.debug_tuple("Known").field(identity).finish(),
            Caller::Lookup(_) => f.write_str("Lookup"),
        }
    }
}

/// What rules compare that costs something to find out, found on first use and once per evaluation: the caller's
/// `(principal, namespace)` (a host call), and the path's normal form (see [`crate::path`]).
struct Facts<'a> {
    caller: Caller<'a>,
    resolved: Option<Option<(String, String)>>,
    path: Option<&'a str>,
    normal_path: Option<Result<Cow<'a, str>, Ambiguity>>,
}

impl<'a> Facts<'a> {
    fn new(target: &Target<'a>) -> Facts<'a> {
        Facts { caller: target.caller, resolved: None, path: target.path, normal_path: None }
    }

    /// `(principal, namespace)` of a verified caller.
    fn caller(&mut self) -> Option<&(String, String)> {
        let caller = self.caller;
        let resolve = || match caller {
            Caller::Known(identity) => identity.map(|id| (id.principal(), id.namespace.clone())),
            Caller::Lookup(lookup) => lookup().map(|id| (id.principal(), id.namespace)),
        };
        self.resolved.get_or_insert_with(resolve).as_ref()
    }

    /// The normal form of the request's path, or why it has none; `None` for a request without a path (a tunnel).
    fn normal_path(&mut self) -> Option<Result<&str, Ambiguity>> {
        let path = self.path?;
        let normal = self.normal_path.get_or_insert_with(|| path::normal_form(path::without_query(path)));
        Some(normal.as_ref().map(|p| p.as_ref()).map_err(|a| *a))
    }
}

/// What a rule's conditions are checked against.
struct Target<'a> {
    destination: &'a Destination,
    method: Option<&'a str>,
    path: Option<&'a str>,
    caller: Caller<'a>,
}

impl Policy {
    /// Evaluates an HTTP request (including CONNECT, whose authority must carry a port).
    pub fn evaluate_http(&self, request: &RequestLine<'_>, caller: Caller<'_>) -> Decision<'_> {
        let authority = match Authority::parse(request.authority) {
            Ok(authority) => authority,
            Err(malformed) => return self.refuse(Reason::MalformedAuthority(malformed)),
        };
        let port = match (authority.port, request.method, request.scheme) {
            (Some(port), _, _) => port,
            (None, "CONNECT", _) => return self.refuse(Reason::MalformedAuthority(Malformed::InvalidPort)),
            (None, _, "https") => 443,
            (None, _, _) => 80,
        };
        let destination = Destination { host: authority.host, port };
        let path = if request.is_tunnel() { None } else { request.path };
        let target = Target { destination: &destination, method: Some(request.method), path, caller };
        let (reason, rule) = self.judge(&target);
        self.decide(reason, rule, Some(destination))
    }

    /// Evaluates a TLS passthrough connection by its SNI and the port it arrived on: the listener's, judged as the
    /// port clients dial to reach it when `gatewayPorts` maps it.
    pub fn evaluate_tls(&self, sni: Option<&str>, port: u16, caller: Caller<'_>) -> Decision<'_> {
        let port =
            self.gateway_ports.iter().find(|&&(listener, _)| listener == port).map_or(port, |&(_, service)| service);
        let Some(sni) = sni.filter(|s| !s.is_empty()) else { return self.refuse(Reason::MissingSni) };
        let host = match Host::parse(sni) {
            Ok(host) => host,
            Err(malformed) => return self.refuse(Reason::MalformedAuthority(malformed)),
        };
        let destination = Destination { host, port };
        let target = Target { destination: &destination, method: None, path: None, caller };
        let (reason, rule) = self.judge(&target);
        self.decide(reason, rule, Some(destination))
    }

    fn refuse(&self, reason: Reason) -> Decision<'_> {
        self.decide(reason, None, None)
    }

    fn decide(&self, reason: Reason, rule: Option<u32>, destination: Option<Destination>) -> Decision<'_> {
        let action = match (reason, self.mode) {
            (Reason::Allowed, _) => Action::Allow,
            (reason, Mode::Report) if !reason.refused_in_every_mode() => Action::ReportDeny,
            _ => Action::Deny,
        };
        let name = rule.and_then(|i| self.rule_name(i as usize));
        Decision { action, reason, rule: name, destination, rule_index: rule }
    }

    /// The deny list first, then the first rule (in policy order) whose every condition holds; when none holds,
    /// the first candidate rule (in policy order) and why it refused.
    ///
    /// The index hands candidates over in its own order, possibly repeated: each goes into place in a sorted list
    /// as it arrives (a handful per request), so no slice sort is linked into the modules. Rules are then tried in
    /// policy order, so the caller is looked up only when an identity-scoped rule is actually tried.
    fn judge(&self, target: &Target<'_>) -> (Reason, Option<u32>) {
        let mut candidates: Vec<u32> = Vec::new();
        let mut add = |rule: u32| {
            if let Err(at) = candidates.binary_search(&rule) {
                candidates.insert(at, rule);
            }
        };
        match &target.destination.host {
            Host::Name(name) => {
                if self.deny_hosts.matches(name) {
                    return (Reason::DenyListed, None);
                }
                self.hosts.for_each_match(name, &mut add);
            }
            Host::Ip(ip) => {
                if self.deny_cidrs.contains(*ip) {
                    return (Reason::DenyListed, None);
                }
                self.cidrs.for_each_match(*ip, &mut add);
            }
        }
        let Some(&first) = candidates.first() else {
            let reason = if target.destination.host.is_ip() { Reason::IpNotAllowed } else { Reason::HostNotAllowed };
            return (reason, None);
        };
        let mut facts = Facts::new(target);
        let mut first_failure = None;
        for &index in &candidates {
            let Some(rule) = self.rules.get(index as usize) else { continue };
            match rule_failure(rule, target, &mut facts) {
                None => return (Reason::Allowed, Some(index)),
                Some(reason) => {
                    first_failure.get_or_insert(reason);
                }
            }
        }
        (first_failure.unwrap_or(Reason::HostNotAllowed), Some(first))
    }
}

/// The first condition of `rule` that the target fails, or `None` when the rule matches. `facts` are found by the
/// first rule that needs them and reused by the next.
fn rule_failure(rule: &Rule, target: &Target<'_>, facts: &mut Facts<'_>) -> Option<Reason> {
    let rule = rule.conditions.as_deref()?;
    if let Some(ports) = &rule.ports {
        if !ports.contains(&target.destination.port) {
            return Some(Reason::PortNotAllowed);
        }
    }
    if let Some(methods) = &rule.methods {
        if !target.method.is_some_and(|m| methods.iter().any(|allowed| **allowed == *m)) {
            return Some(Reason::MethodNotAllowed);
        }
    }
    if let Some(paths) = &rule.paths {
        match facts.normal_path() {
            None => return Some(Reason::PathNotAllowed),
            Some(Err(ambiguity)) => return Some(Reason::AmbiguousPath(ambiguity)),
            Some(Ok(path)) if !paths.iter().any(|p| p.matches(path)) => return Some(Reason::PathNotAllowed),
            Some(Ok(_)) => {}
        }
    }
    if rule.principals.is_some() || rule.namespaces.is_some() {
        let Some((principal, namespace)) = facts.caller() else { return Some(Reason::IdentityNotAllowed) };
        if let Some(principals) = &rule.principals {
            if !principals.iter().any(|p| p.matches(principal)) {
                return Some(Reason::IdentityNotAllowed);
            }
        }
        if let Some(namespaces) = &rule.namespaces {
            if !namespaces.iter().any(|n| n.matches(namespace)) {
                return Some(Reason::IdentityNotAllowed);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn policy(json: &str) -> Policy {
        Policy::from_json(json.as_bytes()).unwrap()
    }

    fn get<'p>(policy: &'p Policy, authority: &str, path: &str) -> Decision<'p> {
        policy.evaluate_http(
            &RequestLine { scheme: "http", authority, method: "GET", path: Some(path) },
            Caller::ANONYMOUS,
        )
    }

    fn reason(decision: &Decision<'_>) -> &'static str {
        decision.reason.code()
    }

    const REFERENCE: &str = r#"{
      "rules": [
        {"name": "httpbin", "hosts": ["httpbin.org", "*.httpbin.org"], "ports": [80, 443],
         "methods": ["GET", "HEAD"], "paths": ["/status/*", "/headers"]},
        {"name": "aws", "hosts": ["ec2.*.amazonaws.com"]},
        {"name": "docs", "cidrs": ["203.0.113.0/24", "2001:db8::/32"]},
        {"name": "sleep-only", "hosts": ["internal.example"], "principals": ["cluster.local/ns/app/sa/sleep"]},
        {"name": "app-ns", "hosts": ["ns.example"], "namespaces": ["app"]}
      ],
      "deny": {"hosts": ["metadata.google.internal", "*.evil.httpbin.org"], "cidrs": ["169.254.0.0/16", "203.0.113.66/32"]}
    }"#;

    #[test]
    fn large_policies_keep_every_rule_and_name() {
        let rules: Vec<String> = (0..5000)
            .map(|i| match i % 3 {
                0 => format!(r#"{{"name":"r{i}","hosts":["h{i}.example.com","shared.example.com"]}}"#),
                1 => format!(r#"{{"name":"r{i}","hosts":["*.z{i}.example.net"],"ports":[443]}}"#),
                _ => format!(r#"{{"name":"r{i}","hosts":["ec2.*.r{i}.aws.com"]}}"#),
            })
            .collect();
        let policy = Policy::from_json(format!(r#"{{"rules":[{}]}}"#, rules.join(",")).as_bytes()).unwrap();
        assert_eq!(policy.rule_count(), 5000);
        let rule = |host: &str| {
            let request = RequestLine { scheme: "https", authority: host, method: "GET", path: None };
            policy.evaluate_http(&request, Caller::ANONYMOUS).rule.map(str::to_string)
        };
        assert_eq!(rule("h3999.example.com").as_deref(), Some("r3999"));
        assert_eq!(rule("shared.example.com").as_deref(), Some("r0"));
        assert_eq!(rule("a.b.z4000.example.net").as_deref(), Some("r4000"));
        assert_eq!(rule("ec2.x.r4997.aws.com").as_deref(), Some("r4997"));
        assert_eq!(rule("ec2.x.r4998.aws.com"), None);
        assert_eq!(rule("h3998.example.com"), None);
        for i in [0, 1, 4999] {
            assert_eq!(policy.rule_name(i), Some(format!("r{i}").as_str()));
        }

        let duplicate = format!(r#"{{"rules":[{},{{"name":"r4321","cidrs":["10.0.0.0/8"]}}]}}"#, rules.join(","));
        let err = Policy::from_json(duplicate.as_bytes()).unwrap_err();
        assert_eq!(err.to_string(), "rules[5000].name: duplicate rule name `r4321`");
    }

    #[test]
    fn allows_what_a_rule_matches_fully() {
        let p = policy(REFERENCE);
        let d = get(&p, "HTTPBIN.org.", "/headers");
        assert_eq!((d.action, d.reason, d.rule), (Action::Allow, Reason::Allowed, Some("httpbin")));
        assert_eq!(d.destination.unwrap().to_string(), "httpbin.org:80");
        assert_eq!(get(&p, "a.b.httpbin.org:443", "/status/418").action, Action::Allow);
        assert_eq!(get(&p, "ec2.us-east-1.amazonaws.com:8443", "/x").rule, Some("aws"));
        assert_eq!(get(&p, "203.0.113.7", "/").rule, Some("docs"));
        assert_eq!(get(&p, "3405803783", "/").rule, Some("docs"), "decimal spelling of 203.0.113.7");
        assert_eq!(get(&p, "[::ffff:203.0.113.7]", "/").rule, Some("docs"), "v4-mapped");
        assert_eq!(get(&p, "[2001:db8::5]:443", "/").rule, Some("docs"));
    }

    #[test]
    fn denies_with_the_precise_reason() {
        let p = policy(REFERENCE);
        assert_eq!(reason(&get(&p, "httpbin.org:8080", "/headers")), "port_not_allowed");
        assert_eq!(reason(&get(&p, "httpbin.org", "/anything")), "path_not_allowed");
        assert_eq!(reason(&get(&p, "httpbin.org", "/status/../admin")), "ambiguous_path");
        assert_eq!(reason(&get(&p, "httpbin.org", "/status/%2e%2e/admin")), "ambiguous_path");
        assert_eq!(reason(&get(&p, "httpbin.org", "/status%2F..%2Fadmin")), "ambiguous_path");
        for escaped in ["/status/%2E", "/status/a%5cb", "/status/a%5Cb", "/status/%2fx", "/status/x%2F"] {
            assert_eq!(reason(&get(&p, "httpbin.org", escaped)), "ambiguous_path", "{escaped}");
        }
        for plain in ["/status/%25", "/status/%2", "/status/%20x", "/status/2f"] {
            assert_eq!(reason(&get(&p, "httpbin.org", plain)), "allowed", "{plain}");
        }
        assert_eq!(reason(&get(&p, "httpbin.org", "/headers?x=/status/")), "allowed", "the query is not the path");
        assert_eq!(reason(&get(&p, "example.com", "/")), "host_not_allowed");
        assert_eq!(reason(&get(&p, "ec2.aws.amazonaws.com.evil", "/")), "host_not_allowed");
        assert_eq!(reason(&get(&p, "10.0.0.1", "/")), "ip_literal_not_allowed");
        assert_eq!(reason(&get(&p, "0x7f.1", "/")), "ip_literal_not_allowed");
        assert_eq!(reason(&get(&p, "[::1]", "/")), "ip_literal_not_allowed");
        assert_eq!(get(&p, "httpbin.org:8080", "/headers").rule, Some("httpbin"), "the rule that came closest");
        let post = p.evaluate_http(
            &RequestLine { scheme: "http", authority: "httpbin.org", method: "POST", path: Some("/headers") },
            Caller::ANONYMOUS,
        );
        assert_eq!(reason(&post), "method_not_allowed");
    }

    /// A path-scoped rule cannot be walked out of by any spelling a common server reads as another path; see
    /// `crate::path` for the classes and their own tests.
    #[test]
    fn path_scoped_rules_refuse_what_servers_read_differently() {
        let p = policy(r#"{"rules":[{"name":"public","hosts":["api.example"],"paths":["/public/*","/status"]}]}"#);
        let bypasses = [
            "/public/%2e%2e;/private/x",
            "/public/..;/private/x",
            "/public/.;/private",
            "/public/../private",
            "/public/%2E%2E/private",
            "/public/.%2e/private",
            "/public/%252e%252e/private",
            "/public/%u002e%u002e/private",
            "/public/%c0%ae%c0%ae/private",
            "/public/%e0%80%ae%e0%80%ae/private",
            "/public/%ef%bc%8e%ef%bc%8e/private",
            "/public/..%5cprivate",
            "/public/..%2fprivate",
            "/public%2f..%2fprivate",
            "/public/..\\private",
            "/public//../private",
            "/public/...",
            "/public/..%20/private",
            "/public/..%3f/private",
            "/public/%00/../private",
            "/public/x#/../../private",
            "/public/x%3b/../private",
        ];
        for path in bypasses {
            let d = get(&p, "api.example", path);
            assert_eq!(d.reason.code(), "ambiguous_path", "{path}: {d:?}");
            assert_eq!(d.action, Action::Deny, "{path}");
            assert!(d.http_body().contains(r#""detail":"#), "{path}: {}", d.http_body());
        }
        for allowed in ["/public/x", "/public/x?next=/../private", "/%70ublic/x", "/public/a;v=1/b", "/st%61tus"] {
            assert_eq!(get(&p, "api.example", allowed).reason, Reason::Allowed, "{allowed}");
        }
        assert_eq!(reason(&get(&p, "api.example", "/private")), "path_not_allowed");
        assert_eq!(reason(&get(&p, "api.example", "/public")), "path_not_allowed", "the prefix is `/public/`");
        // A rule without paths does not care how the path is spelt.
        let any = policy(r#"{"rules":[{"name":"any","hosts":["api.example"]}]}"#);
        assert_eq!(get(&any, "api.example", "/public/..;/private").reason, Reason::Allowed);
        // The first rule refuses the path, a later one allows the host without paths: the later one decides.
        let both = policy(
            r#"{"rules":[{"name":"p","hosts":["api.example"],"paths":["/public/*"]},{"name":"all","hosts":["*.example"]}]}"#,
        );
        assert_eq!(get(&both, "api.example", "/public/..;/x").rule, Some("all"));
    }

    #[test]
    fn the_deny_list_wins() {
        let p = policy(REFERENCE);
        assert_eq!(reason(&get(&p, "x.evil.httpbin.org", "/headers")), "deny_listed");
        assert_eq!(reason(&get(&p, "metadata.google.internal", "/")), "deny_listed");
        assert_eq!(reason(&get(&p, "203.0.113.66", "/")), "deny_listed", "inside an allowed CIDR");
        assert_eq!(reason(&get(&p, "169.254.169.254", "/")), "deny_listed");
        assert_eq!(reason(&get(&p, "2852039166", "/")), "deny_listed", "decimal 169.254.169.254");
        assert_eq!(reason(&get(&p, "[::ffff:169.254.169.254]", "/")), "deny_listed");
        let all =
            policy(r#"{"rules":[{"name":"all","hosts":["*"],"cidrs":["0.0.0.0/0"]}],"deny":{"hosts":["*.internal"]}}"#);
        assert_eq!(reason(&get(&all, "a.internal", "/")), "deny_listed");
        assert_eq!(reason(&get(&all, "internal", "/")), "allowed", "`*.internal` is below, never the apex");
    }

    #[test]
    fn identity_scoped_rules_need_a_matching_verified_identity() {
        let p = policy(REFERENCE);
        let sleep = SpiffeId::parse("spiffe://cluster.local/ns/app/sa/sleep").unwrap();
        let other = SpiffeId::parse("spiffe://cluster.local/ns/web/sa/sleep").unwrap();
        let eval = |host: &str, id: Option<&SpiffeId>| {
            p.evaluate_http(
                &RequestLine { scheme: "https", authority: host, method: "GET", path: Some("/") },
                id.into(),
            )
            .reason
        };
        assert_eq!(eval("internal.example", Some(&sleep)), Reason::Allowed);
        assert_eq!(eval("internal.example", Some(&other)), Reason::IdentityNotAllowed);
        assert_eq!(eval("internal.example", None), Reason::IdentityNotAllowed);
        assert_eq!(eval("ns.example", Some(&sleep)), Reason::Allowed);
        assert_eq!(eval("ns.example", Some(&other)), Reason::IdentityNotAllowed);
        assert_eq!(eval("ns.example", None), Reason::IdentityNotAllowed);
    }

    #[test]
    fn the_caller_is_looked_up_only_for_identity_scoped_rules_and_once() {
        let p = policy(
            r#"{"rules":[{"name":"open","hosts":["open.example"]},
                         {"name":"web-x","hosts":["x.example"],"principals":["cluster.local/ns/web/sa/x"]},
                         {"name":"app-ns","hosts":["*.example"],"namespaces":["app"]}]}"#,
        );
        let sleep = SpiffeId::parse("spiffe://cluster.local/ns/app/sa/sleep").unwrap();
        let lookups = std::cell::Cell::new(0);
        let lookup = || {
            lookups.set(lookups.get() + 1);
            Some(sleep.clone())
        };
        let failing = || None;
        let eval = |host: &str, lookup: &dyn Fn() -> Option<SpiffeId>| {
            let caller = Caller::Lookup(lookup);
            let request = RequestLine { scheme: "https", authority: host, method: "GET", path: Some("/") };
            p.evaluate_http(&request, caller).rule
        };
        assert_eq!(eval("open.example", &lookup), Some("open"));
        assert_eq!(lookups.get(), 0, "the first rule that lists the host needs no identity");
        assert_eq!(eval("x.example", &lookup), Some("app-ns"));
        assert_eq!(lookups.get(), 1, "two identity-scoped rules tried, one lookup");
        let refused = p.evaluate_http(
            &RequestLine { scheme: "https", authority: "x.example", method: "GET", path: Some("/") },
            Caller::Lookup(&failing),
        );
        assert_eq!(refused.reason, Reason::IdentityNotAllowed, "a failed lookup is no identity");
    }

    #[test]
    fn a_later_rule_can_allow_what_an_earlier_one_does_not() {
        let p = policy(
            r#"{"rules":[{"name":"get-only","hosts":["a.com"],"methods":["GET"]},{"name":"any-post","hosts":["*.com"],"methods":["POST"]}]}"#,
        );
        let post = p.evaluate_http(
            &RequestLine { scheme: "http", authority: "a.com", method: "POST", path: Some("/") },
            Caller::ANONYMOUS,
        );
        assert_eq!((post.action, post.rule), (Action::Allow, Some("any-post")));
    }

    #[test]
    fn connect_needs_a_port_and_ignores_paths() {
        let p = policy(
            r#"{"rules":[{"name":"tls","hosts":["httpbin.org"],"ports":[443]},{"name":"p","hosts":["p.org"],"paths":["/x"]}]}"#,
        );
        let connect = |authority| {
            p.evaluate_http(
                &RequestLine { scheme: "http", authority, method: "CONNECT", path: None },
                Caller::ANONYMOUS,
            )
        };
        assert_eq!(connect("httpbin.org:443").action, Action::Allow);
        assert_eq!(connect("httpbin.org:80").reason, Reason::PortNotAllowed);
        assert_eq!(connect("httpbin.org").reason, Reason::MalformedAuthority(Malformed::InvalidPort));
        assert_eq!(connect("p.org:443").reason, Reason::PathNotAllowed, "a path rule cannot vouch for a tunnel");
    }

    #[test]
    fn report_mode_lets_denials_through_but_never_malformed_input() {
        let p = policy(r#"{"mode":"report","rules":[{"name":"a","hosts":["a.com"]}]}"#);
        let d = get(&p, "b.com", "/");
        assert_eq!((d.action, d.reason), (Action::ReportDeny, Reason::HostNotAllowed));
        assert!(d.action.proceeds());
        let bad = get(&p, "u@a.com", "/");
        assert_eq!(bad.action, Action::Deny);
        assert_eq!(bad.http_status(), 400);
        assert_eq!(p.evaluate_tls(None, 443, Caller::ANONYMOUS).action, Action::Deny);
    }

    /// Behind a Service that maps 443 to a listener on 8443 (Istio's egress gateway), passthrough is judged and
    /// recorded on the port clients dial; a listener the policy does not map is judged on its own port.
    #[test]
    fn tls_passthrough_is_judged_on_the_port_gateway_ports_maps_its_listener_to() {
        let p = policy(
            r#"{"rules":[{"name":"tls","hosts":["*.httpbin.org"],"ports":[443]},{"name":"alt","hosts":["alt.org"],"ports":[9443]}],
                "gatewayPorts":[{"listener":8443,"service":443},{"listener":443,"service":9443}]}"#,
        );
        let tls = |sni, port| p.evaluate_tls(Some(sni), port, Caller::ANONYMOUS);
        let allowed = tls("www.httpbin.org", 8443);
        assert_eq!((allowed.action, allowed.rule), (Action::Allow, Some("tls")));
        assert_eq!(allowed.destination.map(|d| d.port), Some(443), "recorded as the port clients dial");
        assert_eq!(tls("www.httpbin.org", 443).reason, Reason::PortNotAllowed, "443 is a listener for 9443 here");
        assert_eq!(tls("alt.org", 443).rule, Some("alt"));
        assert_eq!(tls("alt.org", 10443).reason, Reason::PortNotAllowed, "an unmapped listener is its own port");
        // HTTP names its port in its authority: no mapping.
        let http = p.evaluate_http(&RequestLine::new("https", "www.httpbin.org:8443", "GET", "/"), Caller::ANONYMOUS);
        assert_eq!(http.reason, Reason::PortNotAllowed);
    }

    #[test]
    fn tls_passthrough_vets_the_sni() {
        let p = policy(
            r#"{"rules":[{"name":"tls","hosts":["*.httpbin.org"],"ports":[443]},{"name":"m","hosts":["m.org"],"methods":["GET"]}]}"#,
        );
        assert_eq!(p.evaluate_tls(Some("www.httpbin.org"), 443, Caller::ANONYMOUS).action, Action::Allow);
        assert_eq!(p.evaluate_tls(Some("httpbin.org"), 443, Caller::ANONYMOUS).reason, Reason::HostNotAllowed);
        assert_eq!(p.evaluate_tls(Some("www.httpbin.org"), 8443, Caller::ANONYMOUS).reason, Reason::PortNotAllowed);
        assert_eq!(p.evaluate_tls(Some(""), 443, Caller::ANONYMOUS).reason, Reason::MissingSni);
        assert_eq!(
            p.evaluate_tls(Some("m.org"), 443, Caller::ANONYMOUS).reason,
            Reason::MethodNotAllowed,
            "no method to check"
        );
        assert_eq!(
            p.evaluate_tls(Some("a@b.org"), 443, Caller::ANONYMOUS).reason,
            Reason::MalformedAuthority(Malformed::Userinfo)
        );
    }

    #[test]
    fn the_first_rule_in_policy_order_decides_whatever_order_the_index_finds_them_in() {
        // api.example.com reaches rule 2 (twice) and 3 through exact names, 0 through `*`, 1 and 2 through the
        // suffix: the index hands them over as 2, 3, 0, 1, 2.
        let p = policy(
            r#"{"rules":[
              {"name":"r0","hosts":["*"],"ports":[8443]},
              {"name":"r1","hosts":["*.example.com"],"methods":["POST"]},
              {"name":"r2","hosts":["api.example.com","*.example.com"]},
              {"name":"r3","hosts":["api.example.com"]}
            ]}"#,
        );
        let request = |method, authority| {
            let d =
                p.evaluate_http(&RequestLine { scheme: "http", authority, method, path: Some("/") }, Caller::ANONYMOUS);
            (d.reason, d.rule)
        };
        assert_eq!(request("GET", "api.example.com"), (Reason::Allowed, Some("r2")));
        assert_eq!(request("POST", "api.example.com"), (Reason::Allowed, Some("r1")));
        assert_eq!(request("GET", "api.example.com:8443"), (Reason::Allowed, Some("r0")));
        assert_eq!(request("GET", "x.other.org"), (Reason::PortNotAllowed, Some("r0")));
        // None allows: the first candidate in policy order names the rule and the reason.
        let refuse = |rules: &str| {
            let p = policy(&format!(r#"{{"rules":{rules}}}"#));
            let d = get(&p, "x.a.com", "/");
            (d.reason, d.rule.map(str::to_string))
        };
        let method_first =
            r#"[{"name":"m","hosts":["*.a.com"],"methods":["POST"]},{"name":"p","hosts":["x.a.com"],"ports":[1]}]"#;
        assert_eq!(refuse(method_first), (Reason::MethodNotAllowed, Some("m".into())));
        let port_first =
            r#"[{"name":"p","hosts":["x.a.com"],"ports":[1]},{"name":"m","hosts":["*.a.com"],"methods":["POST"]}]"#;
        assert_eq!(refuse(port_first), (Reason::PortNotAllowed, Some("p".into())));
        assert_eq!(refuse(r#"[{"name":"o","hosts":["other.com"]}]"#), (Reason::HostNotAllowed, None));
    }

    #[test]
    fn reply_bodies() {
        let p = policy(REFERENCE);
        // Byte for byte what `serde_json::json!` wrote before the modules stopped linking it.
        assert_eq!(
            get(&p, "example.com", "/").http_body(),
            serde_json::json!({"error":"egress_denied","host":"example.com","port":80,"reason":"host_not_allowed","rule":null})
                .to_string()
        );
        let ruled = get(&p, "httpbin.org", "/nope");
        assert_eq!(
            ruled.http_body(),
            serde_json::json!({"error":"egress_denied","host":"httpbin.org","port":80,"reason":ruled.reason.code(),"rule":ruled.rule})
                .to_string()
        );
        assert!(ruled.rule.is_some(), "{ruled:?}");
        let malformed = get(&p, "a\\b.com", "/");
        assert_eq!(malformed.http_status(), 400);
        assert_eq!(
            malformed.http_body(),
            serde_json::json!({"error":"malformed_request","reason":"malformed_authority","detail":"backslash"})
                .to_string()
        );
    }
}
