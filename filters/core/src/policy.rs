//! The policy document (what operators write) and its compiled, indexed form (what requests are matched against).
//!
//! Loading never guesses: unknown fields, duplicate names, empty lists, bad patterns, CIDRs and ports are refused, and
//! every problem is reported with its field path (`rules[1].hosts[2]: ...`).

use crate::cidr::{Cidr, CidrIndex};
use crate::hosts::{HostIndex, HostPattern};
use crate::identity::StringMatch;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;

/// `enforce` blocks what the policy denies; `report` lets it through and records `report-deny`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Report,
}

/// The policy as written (YAML for local runs, JSON as a WasmPlugin `pluginConfig`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyDocument {
    #[serde(default)]
    pub mode: Mode,
    pub rules: Vec<RuleDocument>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny: Option<DenyDocument>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirects: Option<RedirectsDocument>,
}

/// How 3xx responses are handled (the redirect filter; the allow-list ignores it).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedirectsDocument {
    /// Follow allowed redirects at the gateway; off by default (then they are only vetted).
    #[serde(default)]
    pub follow: bool,
    #[serde(default = "RedirectsDocument::default_max_hops")]
    pub max_hops: i64,
    /// Status of the reply that replaces a refused redirect.
    #[serde(default = "RedirectsDocument::default_deny_status")]
    pub deny_status: i64,
    /// Hosts the gateway originates TLS for: `https://` Locations to them are rewritten to `http://`, so clients
    /// follow through the gateway (istio#44881), and `http://` to them is no downgrade.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub originate_tls: Vec<String>,
}

impl RedirectsDocument {
    fn default_max_hops() -> i64 {
        5
    }
    fn default_deny_status() -> i64 {
        403
    }
}

impl Default for RedirectsDocument {
    fn default() -> Self {
        RedirectsDocument {
            follow: false,
            max_hops: Self::default_max_hops(),
            deny_status: Self::default_deny_status(),
            originate_tls: Vec::new(),
        }
    }
}

/// A rule's own redirect settings; they apply to redirects whose target this rule allows.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleRedirectsDocument {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_hops: Option<i64>,
    /// Allow an `https` → `http` redirect to this rule's hosts.
    #[serde(default)]
    pub allow_downgrade: bool,
}

/// One allow rule. Absent fields match anything; present fields must all match.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleDocument {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principals: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidrs: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirects: Option<RuleRedirectsDocument>,
}

/// Destinations refused whatever the rules say.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DenyDocument {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub cidrs: Vec<String>,
}

/// One configuration problem, located by its field path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a policy (validation does not stop at the first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("; "))
    }
}

impl std::error::Error for ConfigErrors {}

/// Parses a JSON document into `T`, naming the field path of the first type error.
pub fn from_json_with_path<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<T, ConfigErrors> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        // serde_path_to_error names the document root ".".
        let path = match err.path().to_string() {
            root if root == "." => "(document)".to_string(),
            path => path,
        };
        let message = err.into_inner().to_string();
        ConfigErrors(vec![ConfigError { path, message }])
    })
}

/// A path segment matcher: `/headers` exact, `/status/*` any path under `/status/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PathMatch {
    Exact(String),
    Prefix(String),
}

impl PathMatch {
    fn parse(raw: &str) -> Result<PathMatch, String> {
        if !raw.starts_with('/') {
            return Err(format!("`{raw}`: paths start with `/`"));
        }
        if raw.bytes().any(|b| b <= b' ' || b >= 0x7f || b"?#\\".contains(&b)) {
            return Err(format!("`{raw}`: no query, fragment, backslash, space or control characters"));
        }
        let matcher = match raw.strip_suffix('*') {
            Some(prefix) => PathMatch::Prefix(prefix.to_string()),
            None => PathMatch::Exact(raw.to_string()),
        };
        match &matcher {
            PathMatch::Exact(s) | PathMatch::Prefix(s) if s.contains('*') => {
                Err(format!("`{raw}`: `*` is only allowed at the end (prefix match)"))
            }
            _ => Ok(matcher),
        }
    }

    pub(crate) fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
        }
    }
}

/// A compiled rule: the conditions besides the destination (which the indexes hold).
#[derive(Debug)]
pub(crate) struct Rule {
    pub(crate) name: String,
    pub(crate) ports: Option<Vec<u16>>,
    pub(crate) methods: Option<Vec<String>>,
    pub(crate) paths: Option<Vec<PathMatch>>,
    pub(crate) principals: Option<Vec<StringMatch>>,
    pub(crate) namespaces: Option<Vec<StringMatch>>,
    pub(crate) redirects: RuleRedirects,
}

/// A rule's redirect overrides, compiled.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RuleRedirects {
    pub(crate) follow: Option<bool>,
    pub(crate) max_hops: Option<u32>,
    pub(crate) allow_downgrade: bool,
}

/// The policy's redirect settings, compiled.
#[derive(Debug)]
pub struct Redirects {
    pub follow: bool,
    pub max_hops: u32,
    pub deny_status: u16,
    pub(crate) originate_tls: HostIndex<()>,
}

/// Most hops a follow may take: each is a full upstream request on the client's time.
pub const MAX_REDIRECT_HOPS: i64 = 20;

/// A validated, indexed policy. Matching cost depends on the request (its labels, the distinct CIDR prefix lengths),
/// not on the number of rules.
#[derive(Debug)]
pub struct Policy {
    pub(crate) mode: Mode,
    pub(crate) rules: Vec<Rule>,
    pub(crate) hosts: HostIndex<u32>,
    pub(crate) cidrs: CidrIndex<u32>,
    pub(crate) deny_hosts: HostIndex<()>,
    pub(crate) deny_cidrs: CidrIndex<()>,
    pub(crate) redirects: Redirects,
}

impl Policy {
    /// Parses and compiles a JSON policy (the plugin configuration Envoy hands the filter).
    pub fn from_json(json: &[u8]) -> Result<Policy, ConfigErrors> {
        Policy::compile(&from_json_with_path::<PolicyDocument>(json)?)
    }

    /// Validates a document, collecting every error with its path, and builds the indexes.
    pub fn compile(doc: &PolicyDocument) -> Result<Policy, ConfigErrors> {
        Policy::compile_at(doc, "")
    }

    /// Like `compile`, with field paths under `prefix` (for policies embedded in a larger document).
    pub fn compile_at(doc: &PolicyDocument, prefix: &str) -> Result<Policy, ConfigErrors> {
        let mut errors = Errors { prefix, found: Vec::new() };
        let mut policy = Policy {
            mode: doc.mode,
            rules: Vec::with_capacity(doc.rules.len()),
            hosts: HostIndex::default(),
            cidrs: CidrIndex::default(),
            deny_hosts: HostIndex::default(),
            deny_cidrs: CidrIndex::default(),
            redirects: Redirects { follow: false, max_hops: 5, deny_status: 403, originate_tls: HostIndex::default() },
        };
        let mut names = HashSet::with_capacity(doc.rules.len());
        for (i, rule) in doc.rules.iter().enumerate() {
            let at = format!("rules[{i}]");
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            check_rule_name(&rule.name).unwrap_or_else(|e| errors.add(format!("{at}.name"), e));
            if !names.insert(rule.name.as_str()) {
                errors.add(format!("{at}.name"), format!("duplicate rule name `{}`", rule.name));
            }
            if rule.hosts.is_none() && rule.cidrs.is_none() {
                errors.add(at.clone(), "a rule needs `hosts` or `cidrs`".into());
            }
            for pattern in errors.each(&at, "hosts", &rule.hosts, |raw| HostPattern::parse(raw)) {
                policy.hosts.insert(&pattern, index);
            }
            for cidr in errors.each(&at, "cidrs", &rule.cidrs, |raw| Cidr::parse(raw)) {
                policy.cidrs.insert(cidr, index);
            }
            let ports = errors.list(&at, "ports", &rule.ports, |&port| {
                u16::try_from(port)
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| format!("port {port} is out of range 1-65535"))
            });
            let methods = errors.list(&at, "methods", &rule.methods, |raw| {
                let valid = !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-' || b == b'_');
                valid.then(|| raw.to_ascii_uppercase()).ok_or_else(|| format!("`{raw}` is not an HTTP method"))
            });
            let paths = errors.list(&at, "paths", &rule.paths, |raw| PathMatch::parse(raw));
            let principals = errors.list(&at, "principals", &rule.principals, |raw| {
                if raw.starts_with("spiffe://") {
                    return Err(format!("`{raw}`: write principals without `spiffe://`, as Istio does"));
                }
                StringMatch::parse(raw)
            });
            let namespaces = errors.list(&at, "namespaces", &rule.namespaces, |raw| StringMatch::parse(raw));
            let redirects = rule.redirects.as_ref().map_or_else(RuleRedirects::default, |r| RuleRedirects {
                follow: r.follow,
                max_hops: r.max_hops.and_then(|hops| errors.max_hops(&format!("{at}.redirects.maxHops"), hops)),
                allow_downgrade: r.allow_downgrade,
            });
            policy.rules.push(Rule {
                name: rule.name.clone(),
                ports,
                methods,
                paths,
                principals,
                namespaces,
                redirects,
            });
        }
        if let Some(deny) = &doc.deny {
            let hosts = Some(deny.hosts.clone()).filter(|h| !h.is_empty());
            for pattern in errors.each("deny", "hosts", &hosts, |raw| HostPattern::parse(raw)) {
                policy.deny_hosts.insert(&pattern, ());
            }
            let cidrs = Some(deny.cidrs.clone()).filter(|c| !c.is_empty());
            for cidr in errors.each("deny", "cidrs", &cidrs, |raw| Cidr::parse(raw)) {
                policy.deny_cidrs.insert(cidr, ());
            }
        }
        if let Some(redirects) = &doc.redirects {
            policy.redirects.follow = redirects.follow;
            policy.redirects.max_hops = errors.max_hops("redirects.maxHops", redirects.max_hops).unwrap_or(0);
            match u16::try_from(redirects.deny_status) {
                Ok(status @ 400..=599) => policy.redirects.deny_status = status,
                _ => errors.add(
                    "redirects.denyStatus".into(),
                    format!("{} is not a 4xx or 5xx status", redirects.deny_status),
                ),
            }
            let hosts = Some(redirects.originate_tls.clone()).filter(|h| !h.is_empty());
            for pattern in errors.each("redirects", "originateTls", &hosts, |raw| HostPattern::parse(raw)) {
                policy.redirects.originate_tls.insert(&pattern, ());
            }
        }
        if errors.found.is_empty() {
            Ok(policy)
        } else {
            Err(ConfigErrors(errors.found))
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    pub fn redirects(&self) -> &Redirects {
        &self.redirects
    }

    /// Whether to follow a redirect whose target `rule_index` allowed, and how many hops at most: the rule's own
    /// settings, else the policy's.
    pub fn follow_settings(&self, rule_index: Option<u32>) -> (bool, u32) {
        let own = rule_index.and_then(|i| self.rules.get(i as usize)).map(|rule| rule.redirects).unwrap_or_default();
        (own.follow.unwrap_or(self.redirects.follow), own.max_hops.unwrap_or(self.redirects.max_hops))
    }

    pub(crate) fn rule_allows_downgrade(&self, rule_index: u32) -> bool {
        self.rules.get(rule_index as usize).is_some_and(|rule| rule.redirects.allow_downgrade)
    }
}

/// Rule names appear in reply headers, metrics and audit events, so they are kept to a safe, readable alphabet.
fn check_rule_name(name: &str) -> Result<(), String> {
    let valid =
        (1..=128).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(format!("`{name}`: 1-128 characters from A-Z a-z 0-9 - _ . : /"))
    }
}

/// Collects errors while compiling, with paths relative to `prefix`.
struct Errors<'a> {
    prefix: &'a str,
    found: Vec<ConfigError>,
}

impl Errors<'_> {
    fn add(&mut self, path: String, message: String) {
        let path = if self.prefix.is_empty() { path } else { format!("{}.{path}", self.prefix) };
        self.found.push(ConfigError { path, message });
    }

    /// Checks each entry of an optional list, recording errors by index; an explicitly empty list is an error
    /// (omit the field to mean "any"). Returns the entries that parsed.
    fn each<T, U>(
        &mut self,
        at: &str,
        field: &str,
        list: &Option<Vec<T>>,
        parse: impl Fn(&T) -> Result<U, String>,
    ) -> Vec<U> {
        let Some(list) = list else { return Vec::new() };
        if list.is_empty() {
            self.add(format!("{at}.{field}"), "empty list; omit the field to allow any".into());
        }
        let mut parsed = Vec::with_capacity(list.len());
        for (i, raw) in list.iter().enumerate() {
            match parse(raw) {
                Ok(value) => parsed.push(value),
                Err(message) => self.add(format!("{at}.{field}[{i}]"), message),
            }
        }
        parsed
    }

    fn max_hops(&mut self, path: &str, hops: i64) -> Option<u32> {
        match u32::try_from(hops) {
            Ok(hops) if (1..=MAX_REDIRECT_HOPS).contains(&i64::from(hops)) => Some(hops),
            _ => {
                self.add(path.to_string(), format!("{hops} hops: allowed 1-{MAX_REDIRECT_HOPS}"));
                None
            }
        }
    }

    /// Like `each`, keeping the parsed values as the rule's condition (`None` when the field is absent).
    fn list<T, U>(
        &mut self,
        at: &str,
        field: &str,
        list: &Option<Vec<T>>,
        parse: impl Fn(&T) -> Result<U, String>,
    ) -> Option<Vec<U>> {
        list.as_ref()?;
        Some(self.each(at, field, list, parse))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn errors(json: &str) -> Vec<String> {
        match Policy::from_json(json.as_bytes()) {
            Ok(_) => Vec::new(),
            Err(ConfigErrors(errs)) => errs.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn accepts_the_reference_policy() {
        let json = r#"{
          "mode": "enforce",
          "rules": [{
            "name": "httpbin",
            "hosts": ["httpbin.org", "*.httpbin.org", "ec2.*.amazonaws.com", "*"],
            "ports": [80, 443], "methods": ["GET", "HEAD"], "paths": ["/status/*", "/headers"],
            "principals": ["cluster.local/ns/app/sa/sleep", "cluster.local/ns/app/sa/*"],
            "namespaces": ["app"], "cidrs": ["203.0.113.0/24"]
          }],
          "deny": {"hosts": ["metadata.google.internal"], "cidrs": ["169.254.0.0/16"]}
        }"#;
        let policy = Policy::from_json(json.as_bytes()).unwrap();
        assert_eq!(policy.rule_count(), 1);
        assert_eq!(policy.mode(), Mode::Enforce);
    }

    #[test]
    fn type_errors_name_the_field_path() {
        assert_eq!(errors(r#"{"rules":[{"name":"a","hosts":["x.com"],"portz":[1]}]}"#).len(), 1);
        assert!(errors(r#"{"rules":[{"name":"a","hosts":["x.com"],"portz":[1]}]}"#)[0]
            .starts_with("rules[0].portz: unknown field `portz`"));
        assert!(errors(r#"{"rules":[{"name":"a","hosts":["x.com", 7]}]}"#)[0]
            .starts_with("rules[0].hosts[1]: invalid type"));
        assert!(errors(r#"{"rules":[],"mode":"audit"}"#)[0].starts_with("mode: unknown variant `audit`"));
        assert!(errors(r#"{"rulez":[]}"#)[0].contains("unknown field `rulez`"));
        assert!(errors(r#"{}"#)[0].contains("missing field `rules`"));
        assert!(errors(r#"{"rules":[{"name":"a","hosts":["x.com"],"ports":["80"]}]}"#)[0]
            .starts_with("rules[0].ports[0]: invalid type"));
    }

    #[test]
    fn semantic_errors_name_every_field_path() {
        let got = errors(
            r#"{"rules":[
              {"name":"ok","hosts":["a.com"]},
              {"name":"bad","hosts":["a.com","api-*.x.com",""],"ports":[0,70000,443],"cidrs":["10.0.0.1/8"],
               "methods":["GET","G ET"],"paths":["status"],"principals":["spiffe://td/ns/a/sa/b"],"namespaces":["a*b"]},
              {"name":"ok","hosts":[]},
              {"name":"no destination"}
            ],"deny":{"hosts":["*.*.x"],"cidrs":["300.0.0.0/8"]}}"#,
        );
        let want = [
            "rules[1].hosts[1]: `api-*.x.com`: `*` must be a whole label",
            "rules[1].hosts[2]: empty host pattern",
            "rules[1].cidrs[0]: `10.0.0.1/8` has host bits set; did you mean 10.0.0.0/8?",
            "rules[1].ports[0]: port 0 is out of range 1-65535",
            "rules[1].ports[1]: port 70000 is out of range 1-65535",
            "rules[1].methods[1]: `G ET` is not an HTTP method",
            "rules[1].paths[0]: `status`: paths start with `/`",
            "rules[1].principals[0]: `spiffe://td/ns/a/sa/b`: write principals without `spiffe://`, as Istio does",
            "rules[1].namespaces[0]: `a*b`: a single `*` at the start or the end is the only wildcard",
            "rules[2].name: duplicate rule name `ok`",
            "rules[2].hosts: empty list; omit the field to allow any",
            "rules[3].name: `no destination`: 1-128 characters from A-Z a-z 0-9 - _ . : /",
            "rules[3]: a rule needs `hosts` or `cidrs`",
            "deny.hosts[0]: `*.*.x`: consecutive wildcard labels are ambiguous",
        ];
        for w in want {
            assert!(got.iter().any(|g| g.starts_with(w)), "missing {w:?} in {got:#?}");
        }
        assert!(got.iter().any(|g| g.starts_with("deny.cidrs[0]: `300.0.0.0/8` is not an IP address")), "{got:#?}");
        assert_eq!(got.len(), want.len() + 1, "{got:#?}");
    }

    #[test]
    fn embedded_policies_report_paths_under_their_prefix() {
        let doc: PolicyDocument = serde_json::from_str(r#"{"rules":[{"name":"a","hosts":["a.*"]}]}"#).unwrap();
        let err = Policy::compile_at(&doc, "policy").unwrap_err();
        assert_eq!(err.to_string(), "policy.rules[0].hosts[0]: `a.*`: the last label cannot be a wildcard");
    }
}
