//! The policy document (what operators write) and its compiled, indexed form (what requests are matched against).
//!
//! Loading never guesses: unknown fields, duplicate names, empty lists, bad patterns, CIDRs and ports are refused, and
//! every problem is reported with its field path (`rules[1].hosts[2]: ...`).

use crate::cidr::{Cidr, CidrIndex};
use crate::config_error::{ConfigError, ConfigErrors};
pub use crate::documents::{
    DenyDocument, GatewayPortDocument, Mode, PolicyDocument, RedirectsDocument, RuleDocument, RuleRedirectsDocument,
};
use crate::fingerprint::{Fingerprint, Fingerprinter};
use crate::hosts::{HostIndex, HostPattern};
use crate::spiffe::StringMatch;
use crate::table::{self, Table};
use std::fmt::Write as _;

/// A path pattern: `/headers` exact, `/status/*` any path starting with `/status/`. Patterns are kept in the normal
/// form requests are matched in (see [`crate::path`]), and a pattern no unambiguous request could match is refused.
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
        let (text, prefix) = match raw.strip_suffix('*') {
            Some(text) => (text, true),
            None => (raw, false),
        };
        if text.contains('*') {
            return Err(format!("`{raw}`: `*` is only allowed at the end (prefix match)"));
        }
        let bytes = text.as_bytes();
        let lone_percent = bytes.iter().enumerate().any(|(i, &b)| {
            b == b'%' && !bytes.get(i + 1..i + 3).is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
        });
        if lone_percent {
            return Err(format!("`{raw}`: `%` only as an escape, `%` and two hex digits"));
        }
        let normal = crate::path::normal_form(text).map_err(|ambiguity| {
            format!("`{raw}`: can never match: requests with this path are refused as ambiguous ({ambiguity})")
        })?;
        let normal = normal.into_owned();
        Ok(if prefix { PathMatch::Prefix(normal) } else { PathMatch::Exact(normal) })
    }

    pub(crate) fn matches(&self, normal_path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => normal_path == p,
            PathMatch::Prefix(p) => normal_path.starts_with(p.as_str()),
        }
    }
}

/// A compiled rule: its name and the conditions besides the destination (which the indexes hold). Small, because a
/// policy may have 100,000 rules and every worker's Wasm VM holds it: the name lives in `Policy::names`, and a rule
/// with no other condition (most of them) allocates nothing.
#[derive(Debug)]
pub(crate) struct Rule {
    /// Where the rule's name ends in `Policy::names`; it starts where the previous rule's ends.
    name_end: u32,
    pub(crate) redirects: RuleRedirects,
    pub(crate) conditions: Option<Box<Conditions>>,
}

/// A rule's conditions besides the destination; an absent one matches anything.
#[derive(Debug, Default)]
pub(crate) struct Conditions {
    pub(crate) ports: Option<Box<[u16]>>,
    pub(crate) methods: Option<Box<[Box<str>]>>,
    pub(crate) paths: Option<Box<[PathMatch]>>,
    pub(crate) principals: Option<Box<[StringMatch]>>,
    pub(crate) namespaces: Option<Box<[StringMatch]>>,
}

impl Conditions {
    fn is_empty(&self) -> bool {
        self.ports.is_none()
            && self.methods.is_none()
            && self.paths.is_none()
            && self.principals.is_none()
            && self.namespaces.is_none()
    }
}

/// A rule's redirect overrides, compiled.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RuleRedirects {
    pub(crate) follow: Option<bool>,
    /// 1 to `MAX_REDIRECT_HOPS`.
    pub(crate) max_hops: Option<u8>,
    pub(crate) allow_downgrade: bool,
}

/// The policy's redirect settings, compiled.
#[derive(Debug)]
pub struct Redirects {
    pub follow: bool,
    pub max_hops: u32,
    pub deny_status: u16,
    pub(crate) originate_tls: HostIndex<u32>,
}

/// Most hops a follow may take: each is a full upstream request on the client's time.
pub const MAX_REDIRECT_HOPS: i64 = 20;

/// A validated, indexed policy. Matching cost depends on the request (its labels, the distinct CIDR prefix lengths),
/// not on the number of rules.
#[derive(Debug)]
pub struct Policy {
    pub(crate) mode: Mode,
    pub(crate) rules: Vec<Rule>,
    /// Every rule's name, back to back (one buffer rather than a heap block per rule).
    names: String,
    pub(crate) hosts: HostIndex<u32>,
    pub(crate) cidrs: CidrIndex<u32>,
    // The deny and origination indexes hold a dummy `u32` (0), like the rule indexes: one instantiation of the
    // index code in the modules instead of two.
    pub(crate) deny_hosts: HostIndex<u32>,
    pub(crate) deny_cidrs: CidrIndex<u32>,
    pub(crate) redirects: Redirects,
    /// TLS-passthrough listener ports and the ports clients dial to reach them (`gatewayPorts`).
    pub(crate) gateway_ports: Box<[(u16, u16)]>,
    /// Of the document as read ([`crate::fingerprint`]).
    fingerprint: Fingerprint,
}

/// The name of rule `index`, from the rules and their names buffer.
fn rule_name<'n>(rules: &[Rule], names: &'n str, index: usize) -> Option<&'n str> {
    let end = rules.get(index)?.name_end;
    let start = match index.checked_sub(1) {
        Some(previous) => rules.get(previous)?.name_end,
        None => 0,
    };
    names.get(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
}

impl Policy {
    /// Parses and compiles a JSON policy (the plugin configuration Envoy hands the filter). Rules are compiled as
    /// they are parsed, so the whole document never exists next to the compiled policy.
    pub fn from_json(json: &[u8]) -> Result<Policy, ConfigErrors> {
        Policy::from_buf_reader(&mut &*json)
    }

    /// Like [`Policy::from_json`], reading the JSON while parsing it: the allow-list reads its plugin configuration
    /// from the host in chunks, so the text of a large policy never sits whole in the VM's memory.
    pub fn from_reader(reader: impl std::io::Read) -> Result<Policy, ConfigErrors> {
        Policy::from_buf_reader(&mut std::io::BufReader::new(reader))
    }

    /// [`Policy::from_reader`] for a reader that buffers itself (no copy into another buffer).
    // `inline`: compiled into the calling filter crate, which `make build` optimises for size (this crate's hot
    // path stays at opt-level "s"); loading a policy is cold.
    #[inline]
    pub fn from_buf_reader(reader: &mut impl std::io::BufRead) -> Result<Policy, ConfigErrors> {
        let source: &mut dyn crate::json::Source = reader;
        crate::json::read(source, |reader, path| read_and_compile(reader, path, ""))?
    }

    /// Validates a document, collecting every error with its path, and builds the indexes.
    // `inline` (both): compiled into the calling filter crate, optimised for size; compiling is cold.
    #[inline]
    pub fn compile(doc: &PolicyDocument) -> Result<Policy, ConfigErrors> {
        Policy::compile_at(doc, "")
    }

    /// Like `compile`, with field paths under `prefix` (for policies embedded in a larger document).
    #[inline]
    pub fn compile_at(doc: &PolicyDocument, prefix: &str) -> Result<Policy, ConfigErrors> {
        let mut compiler = Compiler::new(prefix);
        for rule in &doc.rules {
            compiler.rule(rule, true);
        }
        compiler.finish(doc)
    }

    /// The name of rule `index`.
    pub(crate) fn rule_name(&self, index: usize) -> Option<&str> {
        rule_name(&self.rules, &self.names, index)
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Which policy this is ([`crate::fingerprint`]): the same for the same document however it is written.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// `12 rules, mode Enforce, fingerprint 9f2c04e1b7a3d580`: what a module logs when it is configured with this
    /// policy and `egressctl validate` prints for its file.
    pub fn summary(&self) -> String {
        format!("{} rules, mode {:?}, fingerprint {}", self.rule_count(), self.mode(), self.fingerprint())
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
        (own.follow.unwrap_or(self.redirects.follow), own.max_hops.map_or(self.redirects.max_hops, u32::from))
    }

    pub(crate) fn rule_allows_downgrade(&self, rule_index: u32) -> bool {
        self.rules.get(rule_index as usize).is_some_and(|rule| rule.redirects.allow_downgrade)
    }
}

/// Reads the policy document at `path` (the root, or a section of a larger one), compiling each rule as soon as it
/// is read (so a large policy is never whole in memory); compile errors are under `prefix`. The outer error is the
/// reading's (syntax, type; the compile problems of the rules read whole are then recorded with it); the inner one
/// lists every compile problem of a document read without error.
#[inline]
pub(crate) fn read_and_compile(
    reader: &mut crate::json::Reader<'_>,
    path: &crate::json::Path<'_>,
    prefix: &str,
) -> Result<Result<Policy, ConfigErrors>, crate::json::Error> {
    let mut compiler = Compiler::new(prefix);
    let doc = match crate::documents::policy(reader, path, &mut |rule, whole| compiler.rule(&rule, whole)) {
        Ok(doc) => doc,
        Err(error) => {
            // What the rules read so far showed joins the document's own errors: every problem at once.
            reader.record(compiler.errors.found);
            return Err(error);
        }
    };
    let compiled = compiler.finish(&doc);
    if !reader.has_errors() {
        return Ok(compiled);
    }
    if let Err(ConfigErrors(problems)) = compiled {
        reader.record(problems);
    }
    Err(crate::json::Error::recorded())
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

/// Compiles a policy one rule at a time, so that a large policy need not exist twice in memory (as a document and
/// compiled): `Policy::from_json` hands it each rule as soon as it is parsed, then drops the rule's document.
/// Errors come in document order: rules, then `deny`, then `redirects`.
struct Compiler<'p> {
    errors: Errors<'p>,
    policy: Policy,
    fingerprint: Fingerprinter,
    /// Rule indexes by name, for the duplicate check (the names themselves are in `policy.names`).
    names: Table<u32>,
    /// The path of the rule being compiled (`rules[7]`), one buffer for all.
    at: String,
}

// `inline` (new, rule, finish): compiled into the calling filter crate, which `make build` optimises for size (this
// crate's hot path stays at opt-level "s"); compiling is cold.
impl<'p> Compiler<'p> {
    #[inline]
    fn new(prefix: &'p str) -> Self {
        Compiler {
            errors: Errors { prefix, found: Vec::new() },
            policy: Policy {
                mode: Mode::default(),
                rules: Vec::new(),
                names: String::new(),
                hosts: HostIndex::default(),
                cidrs: CidrIndex::default(),
                deny_hosts: HostIndex::default(),
                deny_cidrs: CidrIndex::default(),
                redirects: Redirects {
                    follow: false,
                    max_hops: 5,
                    deny_status: 403,
                    originate_tls: HostIndex::default(),
                },
                gateway_ports: Box::default(),
                fingerprint: Fingerprint::default(),
            },
            fingerprint: Fingerprinter::new("policy"),
            names: Table::default(),
            at: String::new(),
        }
    }

    /// Compiles `rule`; one not read `whole` (some of its values in error, absent here) is checked value by value
    /// only: what it lacks may be what was in error.
    #[inline]
    fn rule(&mut self, rule: &RuleDocument, whole: crate::documents::Whole) {
        fingerprint_rule(&mut self.fingerprint, rule);
        let Compiler { errors, policy, names, at, fingerprint: _ } = self;
        let i = policy.rules.len();
        at.clear();
        let _ = write!(at, "rules[{i}]");
        let at = at.as_str();
        let index = u32::try_from(i).unwrap_or(u32::MAX);
        if whole || !rule.name.is_empty() {
            check_rule_name(&rule.name).unwrap_or_else(|e| errors.add(format!("{at}.name"), e));
        }
        let hash = table::hash(rule.name.as_bytes());
        let (rules, all_names) = (&policy.rules, policy.names.as_str());
        let name_of = |j: u32| usize::try_from(j).ok().and_then(|j| rule_name(rules, all_names, j));
        if names.candidates(hash).any(|&j| name_of(j) == Some(rule.name.as_str())) {
            errors.add(format!("{at}.name"), format!("duplicate rule name `{}`", rule.name));
        } else {
            names.insert(hash, index, |&j| table::hash(name_of(j).unwrap_or_default().as_bytes()));
        }
        policy.names.push_str(&rule.name);
        let name_end = u32::try_from(policy.names.len()).unwrap_or_else(|_| {
            errors.add(format!("{at}.name"), "too many rule names: at most 4 GiB in all".into());
            u32::MAX
        });
        if whole && rule.hosts.is_none() && rule.cidrs.is_none() {
            errors.add(at.to_string(), "a rule needs `hosts` or `cidrs`".into());
        }
        for pattern in errors.each(at, "hosts", &rule.hosts, |raw| HostPattern::parse(raw)) {
            if let Err(full) = policy.hosts.insert(&pattern, index) {
                errors.add(format!("{at}.hosts"), full.to_string());
            }
        }
        for cidr in errors.each(at, "cidrs", &rule.cidrs, |raw| Cidr::parse(raw)) {
            policy.cidrs.insert(cidr, index);
        }
        let ports = errors.list(at, "ports", &rule.ports, |&port| check_port(port));
        let methods = errors.list(at, "methods", &rule.methods, |raw| {
            let valid = !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-' || b == b'_');
            valid.then(|| raw.to_ascii_uppercase().into()).ok_or_else(|| format!("`{raw}` is not an HTTP method"))
        });
        let paths = errors.list(at, "paths", &rule.paths, |raw| PathMatch::parse(raw));
        let principals = errors.list(at, "principals", &rule.principals, |raw| StringMatch::parse_principal(raw));
        let namespaces = errors.list(at, "namespaces", &rule.namespaces, |raw| StringMatch::parse(raw));
        let redirects = rule.redirects.as_ref().map_or_else(RuleRedirects::default, |r| RuleRedirects {
            follow: r.follow,
            max_hops: r
                .max_hops
                .and_then(|hops| errors.max_hops(&format!("{at}.redirects.maxHops"), hops))
                .and_then(|hops| u8::try_from(hops).ok()),
            allow_downgrade: r.allow_downgrade,
        });
        let conditions = Conditions { ports, methods, paths, principals, namespaces };
        let conditions = (!conditions.is_empty()).then(|| Box::new(conditions));
        policy.rules.push(Rule { name_end, redirects, conditions });
    }

    /// The rest of the document (its rules were compiled already); the policy if nothing was wrong anywhere.
    #[inline]
    fn finish(self, doc: &PolicyDocument) -> Result<Policy, ConfigErrors> {
        let PolicyDocument { mode, rules: _, deny, redirects, gateway_ports } = doc;
        let (mode, deny, redirects) = (*mode, deny.as_ref(), redirects.as_ref());
        let Compiler { mut errors, mut policy, names, at: _, mut fingerprint } = self;
        drop(names);
        fingerprint_document(&mut fingerprint, mode, deny, redirects, gateway_ports.as_deref());
        policy.fingerprint = fingerprint.finish();
        policy.mode = mode;
        if let Some(deny) = deny {
            let hosts = Some(deny.hosts.clone()).filter(|h| !h.is_empty());
            for pattern in errors.each("deny", "hosts", &hosts, |raw| HostPattern::parse(raw)) {
                if let Err(full) = policy.deny_hosts.insert(&pattern, 0) {
                    errors.add("deny.hosts".into(), full.to_string());
                }
            }
            let cidrs = Some(deny.cidrs.clone()).filter(|c| !c.is_empty());
            for cidr in errors.each("deny", "cidrs", &cidrs, |raw| Cidr::parse(raw)) {
                policy.deny_cidrs.insert(cidr, 0);
            }
        }
        if let Some(redirects) = redirects {
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
                if let Err(full) = policy.redirects.originate_tls.insert(&pattern, 0) {
                    errors.add("redirects.originateTls".into(), full.to_string());
                }
            }
        }
        policy.gateway_ports =
            gateway_ports.as_deref().map(|ports| gateway_ports_of(&mut errors, ports)).unwrap_or_default();
        if !errors.found.is_empty() {
            return Err(ConfigErrors(errors.found));
        }
        // Rules were added one by one: give back what the buffers grew beyond their final size.
        policy.rules.shrink_to_fit();
        policy.names.shrink_to_fit();
        policy.hosts.shrink_to_fit();
        policy.deny_hosts.shrink_to_fit();
        policy.redirects.originate_tls.shrink_to_fit();
        Ok(policy)
    }
}

/// A TCP port as a policy writes it (rules' `ports`, `gatewayPorts`): 1-65535.
fn check_port(port: i64) -> Result<u16, String> {
    u16::try_from(port).ok().filter(|&p| p != 0).ok_or_else(|| format!("port {port} is out of range 1-65535"))
}

/// `gatewayPorts`, checked: ports in range, each listener once, the list not empty.
fn gateway_ports_of(errors: &mut Errors<'_>, ports: &[GatewayPortDocument]) -> Box<[(u16, u16)]> {
    if ports.is_empty() {
        errors
            .add("gatewayPorts".into(), "empty list; omit the field when clients dial the listeners' own ports".into());
    }
    let mut mapped: Vec<(u16, u16)> = Vec::with_capacity(ports.len());
    for (i, entry) in ports.iter().enumerate() {
        let mut port = |field: &str, value: i64| {
            check_port(value).map_err(|message| errors.add(format!("gatewayPorts[{i}].{field}"), message)).ok()
        };
        let (Some(listener), Some(service)) = (port("listener", entry.listener), port("service", entry.service)) else {
            continue;
        };
        if mapped.iter().any(|&(seen, _)| seen == listener) {
            errors.add(format!("gatewayPorts[{i}].listener"), format!("listener port {listener} is given twice"));
        }
        mapped.push((listener, service));
    }
    mapped.into_boxed_slice()
}

/// A rule's values, in field order, into the policy's fingerprint.
fn fingerprint_rule(fingerprint: &mut Fingerprinter, rule: &RuleDocument) {
    let RuleDocument { name, hosts, ports, methods, paths, principals, namespaces, cidrs, redirects } = rule;
    fingerprint.text("rule", name);
    fingerprint.list("hosts", hosts.as_deref());
    let ports: Option<Vec<String>> = ports.as_ref().map(|ports| ports.iter().map(i64::to_string).collect());
    fingerprint.list("ports", ports.as_deref());
    fingerprint.list("methods", methods.as_deref());
    fingerprint.list("paths", paths.as_deref());
    fingerprint.list("principals", principals.as_deref());
    fingerprint.list("namespaces", namespaces.as_deref());
    fingerprint.list("cidrs", cidrs.as_deref());
    let RuleRedirectsDocument { follow, max_hops, allow_downgrade } = redirects.clone().unwrap_or_default();
    fingerprint.value("redirects.follow", format_args!("{follow:?}"));
    fingerprint.value("redirects.maxHops", format_args!("{max_hops:?}"));
    fingerprint.value("redirects.allowDowngrade", allow_downgrade);
}

/// The document's values besides its rules (defaults as if written out) into the policy's fingerprint.
fn fingerprint_document(
    fingerprint: &mut Fingerprinter,
    mode: Mode,
    deny: Option<&DenyDocument>,
    redirects: Option<&RedirectsDocument>,
    gateway_ports: Option<&[GatewayPortDocument]>,
) {
    fingerprint.value("mode", format_args!("{mode:?}"));
    let DenyDocument { hosts, cidrs } = deny.cloned().unwrap_or_default();
    fingerprint.list("deny.hosts", Some(&hosts));
    fingerprint.list("deny.cidrs", Some(&cidrs));
    let RedirectsDocument { follow, max_hops, deny_status, originate_tls } = redirects.cloned().unwrap_or_default();
    fingerprint.value("redirects.follow", follow);
    fingerprint.value("redirects.maxHops", max_hops);
    fingerprint.value("redirects.denyStatus", deny_status);
    fingerprint.list("redirects.originateTls", Some(&originate_tls));
    // Only when given: a policy without it keeps the fingerprint it had before the field existed.
    if let Some(ports) = gateway_ports {
        let ports: Vec<String> = ports.iter().map(|p| format!("{}:{}", p.listener, p.service)).collect();
        fingerprint.list("gatewayPorts", Some(&ports));
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
        self.found.push(ConfigError::new(path, message));
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
            // Omitting a condition allows any value; a rule's destinations cannot be omitted both.
            let message = match field {
                "hosts" | "cidrs" => {
                    "empty list, which matches nothing; omit the field (a rule needs `hosts` or `cidrs`)"
                }
                _ => "empty list, which matches nothing; omit the field to allow any",
            };
            self.entry(at, field, None, message.into());
        }
        let mut parsed = Vec::with_capacity(list.len());
        for (i, raw) in list.iter().enumerate() {
            match parse(raw) {
                Ok(value) => parsed.push(value),
                Err(message) => self.entry(at, field, Some(i), message),
            }
        }
        parsed
    }

    /// An error at `at.field`, or at its entry `at.field[i]`. Not generic: one copy of the formatting for every
    /// instantiation of `each`.
    #[inline(never)]
    fn entry(&mut self, at: &str, field: &str, index: Option<usize>, message: String) {
        let path = match index {
            Some(i) => format!("{at}.{field}[{i}]"),
            None => format!("{at}.{field}"),
        };
        self.add(path, message);
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
    ) -> Option<Box<[U]>> {
        list.as_ref()?;
        Some(self.each(at, field, list, parse).into_boxed_slice())
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
    fn gateway_ports_are_checked_and_fingerprinted_only_when_given() {
        let got = errors(
            r#"{"rules":[],"gatewayPorts":[{"listener":0,"service":443},{"listener":8443,"service":70000},
                {"listener":8443,"service":443},{"listener":8443,"service":444}]}"#,
        );
        assert_eq!(
            got,
            [
                "gatewayPorts[0].listener: port 0 is out of range 1-65535",
                "gatewayPorts[1].service: port 70000 is out of range 1-65535",
                "gatewayPorts[3].listener: listener port 8443 is given twice",
            ]
        );
        assert_eq!(
            errors(r#"{"rules":[],"gatewayPorts":[]}"#)[0],
            "gatewayPorts: empty list; omit the field when clients dial the listeners' own ports"
        );
        let fingerprint = |json: &str| Policy::from_json(json.as_bytes()).unwrap().fingerprint();
        let plain = fingerprint(r#"{"rules":[]}"#);
        assert_eq!(fingerprint(r#"{"rules":[],"gatewayPorts":null}"#), plain);
        let mapped = fingerprint(r#"{"rules":[],"gatewayPorts":[{"listener":8443,"service":443}]}"#);
        assert_ne!(mapped, plain);
        assert_ne!(fingerprint(r#"{"rules":[],"gatewayPorts":[{"listener":8443,"service":444}]}"#), mapped);
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
            "rules[2].hosts: empty list, which matches nothing; omit the field (a rule needs `hosts` or `cidrs`)",
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
    fn path_patterns_are_kept_in_normal_form_and_never_unmatchable() {
        let got = errors(
            r#"{"rules":[{"name":"p","hosts":["a.com"],"paths":["/a/../b","/a//*","/a/%2e/*","/a;x/..;/b","/a/%zz","/a/%c3%a9","/ok/*"]}]}"#,
        );
        let want = [
            "rules[0].paths[0]: `/a/../b`: can never match: requests with this path are refused as ambiguous (dot_segment)",
            "rules[0].paths[1]: `/a//*`: can never match: requests with this path are refused as ambiguous (empty_segment)",
            "rules[0].paths[2]: `/a/%2e/*`: can never match: requests with this path are refused as ambiguous (escaped_separator)",
            "rules[0].paths[3]: `/a;x/..;/b`: can never match: requests with this path are refused as ambiguous (path_parameter)",
            "rules[0].paths[4]: `/a/%zz`: `%` only as an escape, `%` and two hex digits",
            "rules[0].paths[5]: `/a/%c3%a9`: can never match: requests with this path are refused as ambiguous (non_ascii)",
        ];
        assert_eq!(got, want);
        let p = Policy::from_json(br#"{"rules":[{"name":"p","hosts":["a.com"],"paths":["/%7eusers/*","/a%3a"]}]}"#)
            .unwrap();
        let rule = p.rules[0].conditions.as_ref().unwrap();
        assert_eq!(
            rule.paths.as_deref(),
            Some(&[PathMatch::Prefix("/~users/".into()), PathMatch::Exact("/a%3A".into())][..])
        );
    }

    /// One value of the wrong type hides nothing: the reading goes past it, the rest of its rule is checked (but
    /// not for what the value in error may have held), and every other problem of the document comes back too.
    #[test]
    fn a_type_error_does_not_hide_the_documents_other_problems() {
        let json = r#"{"rules": [
            {"name": "a", "hosts": ["api.example.com"], "ports": ["80"]},
            {"name": "b", "hosts": ["x*.example.com"], "portz": [1]},
            {"name": "c", "hosts": [7], "methods": ["G ET"]},
            {"name": "d", "hosts": []},
            {"name": "e", "hosts": ["a.com"], "ports": [80, "443", true, 0]},
            {"name": 5, "cidrs": ["10.0.0.1/8"]},
            {"name": "a", "hosts": ["b.com"], "principals": ["spiffe://td/ns/a/sa/b"]}
          ],
          "mode": "strict",
          "deny": {"cidrs": ["300.0.0.0/8"]}}"#;
        let errors: Vec<String> =
            Policy::from_json(json.as_bytes()).unwrap_err().0.iter().map(|e| e.to_string()).collect();
        let expected = [
            "rules[0].ports[0]: invalid type: string \"80\", expected i64",
            "rules[1].portz: unknown field `portz`",
            "rules[2].hosts[0]: invalid type: integer `7`, expected a string",
            "rules[4].ports[1]: invalid type: string \"443\", expected i64",
            "rules[4].ports[2]: invalid type: boolean `true`, expected i64",
            "rules[5].name: invalid type: integer `5`, expected a string",
            "mode: unknown variant `strict`",
            "rules[1].hosts[0]: `x*.example.com`: `*` must be a whole label",
            "rules[2].methods[0]: `G ET` is not an HTTP method",
            "rules[3].hosts: empty list, which matches nothing; omit the field (a rule needs `hosts` or `cidrs`)",
            "rules[5].cidrs[0]: `10.0.0.1/8` has host bits set",
            "rules[6].name: duplicate rule name `a`",
            "rules[6].principals[0]: `spiffe://td/ns/a/sa/b`: write principals without `spiffe://`",
            "deny.cidrs[0]: `300.0.0.0/8` is not an IP address or CIDR",
        ];
        for want in expected {
            assert!(errors.iter().any(|e| e.starts_with(want)), "missing {want:?} in {errors:#?}");
        }
        // rules[4].ports[3] (0) is not checked: a list with errors is left out of its rule whole.
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
        // What a value in error may have held is not held against its rule: `c` has no "needs hosts" error.
        assert!(!errors.iter().any(|e| e.starts_with("rules[2]: ")), "{errors:#?}");
        // Syntax ends the reading, after what came before it.
        let broken = Policy::from_json(br#"{"rules": [{"name": "a", "ports": ["80"]}, {"name": "b" "#).unwrap_err();
        let broken: Vec<String> = broken.0.iter().map(ToString::to_string).collect();
        assert_eq!(broken.len(), 2, "{broken:?}");
        assert!(broken[0].starts_with("rules[0].ports[0]") && broken[1].starts_with("(document): EOF"), "{broken:?}");
    }

    #[test]
    fn the_fingerprint_is_the_documents_whatever_its_form_and_changes_with_any_value() {
        let fingerprint = |json: &str| Policy::from_json(json.as_bytes()).unwrap().fingerprint();
        let base = fingerprint(r#"{"rules":[{"name":"a","hosts":["a.com"],"ports":[443]}]}"#);
        // Formatting, key order and defaults written out change nothing; compiling a parsed document neither.
        let same = [
            r#"{ "rules" : [ { "ports": [443], "hosts": ["a.com"], "name": "a" } ] }"#,
            r#"{"mode":"enforce","rules":[{"name":"a","hosts":["a.com"],"ports":[443],"cidrs":null}],
                "deny":{"hosts":[],"cidrs":[]},"redirects":{"follow":false,"maxHops":5,"denyStatus":403}}"#,
        ];
        for json in same {
            assert_eq!(fingerprint(json), base, "{json}");
        }
        let doc: PolicyDocument = crate::json::from_slice(same[0].as_bytes()).unwrap();
        assert_eq!(Policy::compile(&doc).unwrap().fingerprint(), base);
        // Any value that can change a decision changes it.
        let different = [
            r#"{"rules":[{"name":"a","hosts":["a.com"],"ports":[80]}]}"#,
            r#"{"rules":[{"name":"b","hosts":["a.com"],"ports":[443]}]}"#,
            r#"{"rules":[{"name":"a","hosts":["a.com","b.com"],"ports":[443]}]}"#,
            r#"{"rules":[{"name":"a","hosts":["a.com"]}]}"#,
            r#"{"mode":"report","rules":[{"name":"a","hosts":["a.com"],"ports":[443]}]}"#,
            r#"{"rules":[{"name":"a","hosts":["a.com"],"ports":[443]}],"deny":{"cidrs":["10.0.0.0/8"]}}"#,
            r#"{"rules":[{"name":"a","hosts":["a.com"],"ports":[443]}],"redirects":{"follow":true}}"#,
            r#"{"rules":[{"name":"a","hosts":["a.com"],"ports":[443],"redirects":{"allowDowngrade":true}}]}"#,
            r#"{"rules":[{"name":"a","hosts":["a.com"],"ports":[443]},{"name":"z","hosts":["z.com"]}]}"#,
        ];
        for json in different {
            assert_ne!(fingerprint(json), base, "{json}");
        }
    }

    #[test]
    fn long_values_are_cut_in_messages_and_an_empty_document_says_so() {
        let host = "h".repeat(10 << 20);
        let json = format!(r#"{{"rules": [{{"name": "a", "hosts": ["{host}*"], "ports": ["{host}"]}}], "{host}": 1}}"#);
        let errors = Policy::from_json(json.as_bytes()).unwrap_err();
        assert_eq!(errors.0.len(), 3, "{errors}");
        for error in &errors.0 {
            let line = error.to_string();
            assert!(line.len() < 400, "{}", line.get(..400).unwrap_or_default());
            assert!(line.contains("… (1048576"), "{line}");
        }
        for empty in ["", "  \n", "null"] {
            let error = Policy::from_json(empty.as_bytes()).unwrap_err().to_string();
            assert!(error.starts_with("(document): the document is empty"), "{empty:?}: {error}");
        }
    }

    /// `from_json` and `from_reader` compile rules while parsing; they must say exactly what parsing the whole
    /// document and then compiling it says, errors and their order included.
    #[test]
    fn loading_rule_by_rule_reports_what_compiling_the_document_does() {
        let cases = [
            r#"{"rules":[{"name":"a","hosts":["x.com"],"portz":[1]}]}"#,
            r#"{"rules":[{"name":"a","hosts":["x.com", 7]}]}"#,
            r#"{"rules":[],"mode":"audit"}"#,
            r#"{"rulez":[]}"#,
            r#"{}"#,
            r#"[]"#,
            r#"7"#,
            r#"{"rules":{}}"#,
            r#"{"rules":[],"rules":[]}"#,
            r#"{"rules":[{"name":"a","hosts":["a.com"]}"#,
            // Semantic errors, then a type error: all of them (the reference, which stops at the type error, only
            // that one).
            r#"{"rules":[{"name":"bad name","hosts":["a.*"]},{"name":"b","hosts":["x.com"]},{"hosts":[1]}]}"#,
            // `deny` and `redirects` before `rules`: errors still come rules first.
            r#"{"deny":{"hosts":["*.*.x"]},"redirects":{"maxHops":0,"originateTls":["a..b"]},
                "rules":[{"name":"a","hosts":[""]},{"name":"a","cidrs":["10.0.0.1/8"]},{"name":"a","hosts":["b.c"]}]}"#,
            r#"{"rules":[{"name":"a","hosts":["a.com"],"redirects":{"maxHops":30}},{"name":"b","hosts":["b.com"],
                "ports":[0],"methods":[],"paths":["x"],"principals":["spiffe://a"],"namespaces":["*a*"]}]}"#,
            // A struct written as a sequence: refused (the modules' JSON reader takes structs as objects only).
            r#"["report", [{"name":"a","hosts":["a.com"]}]]"#,
            r#"["report"]"#,
            r#"{"rules":[{"name":"a","hosts":["a.com"]}]} trailing"#,
            r#"{"mode":"report","rules":[{"name":"a","hosts":["a.com","*.a.com","x.*.a.com"],"cidrs":["10.0.0.0/8"],
                "ports":[443],"methods":["get"],"paths":["/x/*"],"principals":["td/ns/a/sa/*"],"namespaces":["a"],
                "redirects":{"follow":true,"maxHops":3,"allowDowngrade":true}}],
                "deny":{"hosts":["b.a.com"],"cidrs":["10.1.0.0/16"]},
                "redirects":{"follow":true,"originateTls":["a.com"]}}"#,
        ];
        for json in cases {
            let compiled =
                crate::json::from_slice::<PolicyDocument>(json.as_bytes()).and_then(|doc| Policy::compile(&doc));
            let streamed = Policy::from_json(json.as_bytes());
            let summary = |p: Result<Policy, ConfigErrors>| p.map(|p| (p.rule_count(), p.mode()));
            let (compiled, streamed) = (summary(compiled), summary(streamed));
            match (&compiled, &streamed) {
                // The reference stops at the document's first type error; the stream reports that one and every
                // other problem.
                (Err(reference), Err(all)) => {
                    assert!(reference.0.iter().all(|error| all.0.contains(error)), "{json}: {all:?}");
                }
                _ => assert_eq!(streamed, compiled, "{json}"),
            }
            assert_eq!(summary(Policy::from_reader(json.as_bytes())), streamed, "{json}");
            // However the text arrives: a byte at a time, or in chunks that split tokens.
            for capacity in [1, 3, 7] {
                let chunked =
                    Policy::from_buf_reader(&mut std::io::BufReader::with_capacity(capacity, json.as_bytes()));
                assert_eq!(summary(chunked), streamed, "{json} in chunks of {capacity}");
            }
        }
    }

    #[test]
    fn a_streamed_policy_reads_text_split_anywhere() {
        // Multi-byte characters and escapes split across chunks; a syntax error located on its line.
        let json = r#"{"rules":[{"name":"a","hosts":["x.com"],"principals":["td/ns/\u00e9t\u00e9/sa/café"]}]}"#;
        for capacity in [1, 2, 3, 64] {
            let mut reader = std::io::BufReader::with_capacity(capacity, json.as_bytes());
            let mut principals = Vec::new();
            crate::documents::stream(&mut reader, &mut |rule, _| {
                principals.extend(rule.principals.unwrap_or_default())
            })
            .unwrap();
            assert_eq!(principals, ["td/ns/\u{e9}t\u{e9}/sa/caf\u{e9}"], "chunks of {capacity}");
        }
        let broken = "{\"rules\":[\n  {\"name\":\"a\",\"hosts\":[\"x.com\"]}\n  {\"name\":\"b\"}]}";
        for capacity in [1, 5, 64] {
            let mut reader = std::io::BufReader::with_capacity(capacity, broken.as_bytes());
            let err = Policy::from_buf_reader(&mut reader).unwrap_err();
            assert_eq!(err.to_string(), "(document): expected `,` or `]` at line 3 column 3", "chunks of {capacity}");
        }
    }

    #[test]
    fn embedded_policies_report_paths_under_their_prefix() {
        let doc: PolicyDocument = serde_json::from_str(r#"{"rules":[{"name":"a","hosts":["a.*"]}]}"#).unwrap();
        let err = Policy::compile_at(&doc, "policy").unwrap_err();
        assert_eq!(err.to_string(), "policy.rules[0].hosts[0]: `a.*`: the last label cannot be a wildcard");
    }
}
