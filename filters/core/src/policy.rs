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
}

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
            policy.rules.push(Rule { name: rule.name.clone(), ports, methods, paths, principals, namespaces });
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
