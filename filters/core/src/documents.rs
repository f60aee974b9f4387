//! The policy document read without serde: what the allow-list and redirects modules (and every tool, through
//! [`Policy::from_json`](crate::Policy::from_json) and [`Policy::from_reader`](crate::Policy::from_reader)) parse,
//! straight from the JSON as it streams in ([`stream`] hands each rule over as soon as it is read, so a policy is
//! compiled rule by rule and never whole in memory). The derived `Deserialize` of these types stays the reference
//! (YAML, `json::from_slice`); the tests below hold this reader to it: the same documents, the same errors at
//! the same paths. A field added to a document is a compile error here (the destructuring patterns) until it is
//! read.

use crate::config_error::ConfigErrors;
use crate::json::{self, Error, Path, Reader, Source};
use serde::{Deserialize, Serialize};

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
    /// The gateway's TLS-passthrough listener ports and the ports clients dial to reach them (absent: the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_ports: Option<Vec<GatewayPortDocument>>,
}

/// A TLS-passthrough listener's port and the port clients dial to reach it: the gateway Service's `targetPort` and
/// `port` (Istio's egress gateway maps 443 to 8443). A passthrough connection arriving on `listener` is judged, and
/// recorded, as one to `service`, so rules name the ports apps dial.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayPortDocument {
    pub listener: i64,
    pub service: i64,
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

impl PolicyDocument {
    /// Parses a JSON policy document; errors name their field path (`rules[2].hosts[0]: …`).
    pub fn from_json(mut json: &[u8]) -> Result<PolicyDocument, ConfigErrors> {
        let mut rules = Vec::new();
        let mut doc = stream(&mut json, &mut |rule, _| rules.push(rule))?;
        doc.rules = rules;
        Ok(doc)
    }
}

/// Reads a policy document from `source` as it arrives, handing each rule to `rule` as soon as it is read (so the
/// rules never need to be in memory together); the document comes back without its rules. Every problem comes back
/// (see [`json::read`]): a value in error is recorded and the reading goes on; a syntax error ends it.
pub(crate) fn stream(
    source: &mut dyn Source,
    rule: &mut dyn FnMut(RuleDocument, Whole),
) -> Result<PolicyDocument, ConfigErrors> {
    json::read(source, |reader, path| policy(reader, path, rule))
}

const POLICY: &[&str] = &["mode", "rules", "deny", "redirects", "gatewayPorts"];

pub(crate) fn policy(
    reader: &mut Reader<'_>,
    path: &Path<'_>,
    each: &mut dyn FnMut(RuleDocument, Whole),
) -> Result<PolicyDocument, Error> {
    let mut doc = PolicyDocument::default();
    let PolicyDocument { mode, rules: _, deny, redirects, gateway_ports } = &mut doc;
    let seen = reader.members(path, "struct PolicyDocument", POLICY, true, &mut |reader, field, at| {
        match field {
            0 => *mode = read_mode(reader, at)?,
            1 => reader.elements(at, &mut |reader, at| rule(reader, at).map(|(doc, whole)| each(doc, whole)))?,
            2 => *deny = reader.optional(|reader| read_deny(reader, at))?,
            3 => *redirects = reader.optional(|reader| read_redirects(reader, at))?,
            _ => *gateway_ports = reader.optional(|reader| reader.list(at, read_gateway_port))?,
        }
        Ok(())
    });
    match seen {
        Ok(seen) => json::require(seen, 1, POLICY, path)?,
        // Recorded: the document is refused; what was read is checked all the same (every problem at once).
        Err(error) if error.is_recorded() => {}
        Err(error) => return Err(error),
    }
    Ok(doc)
}

fn read_mode(reader: &mut Reader<'_>, path: &Path<'_>) -> Result<Mode, Error> {
    match reader.variant(path, "enum Mode", &["enforce", "report"])? {
        0 => Ok(Mode::Enforce),
        _ => Ok(Mode::Report),
    }
}

const RULE: &[&str] = &["name", "hosts", "ports", "methods", "paths", "principals", "namespaces", "cidrs", "redirects"];

fn strings(reader: &mut Reader<'_>, path: &Path<'_>) -> Result<Vec<String>, Error> {
    reader.list(path, Reader::string)
}

fn optional_strings(reader: &mut Reader<'_>, path: &Path<'_>) -> Result<Option<Vec<String>>, Error> {
    reader.optional(|reader| strings(reader, path))
}

/// Whether a rule was read without error. A rule with errors in some of its values is handed over all the same,
/// without those values, so that the rest of it is checked too; the document is refused in any case.
pub(crate) type Whole = bool;

fn rule(reader: &mut Reader<'_>, path: &Path<'_>) -> Result<(RuleDocument, Whole), Error> {
    let mut doc = RuleDocument::default();
    let RuleDocument { name, hosts, ports, methods, paths, principals, namespaces, cidrs, redirects } = &mut doc;
    let seen = reader.members(path, "struct RuleDocument", RULE, true, &mut |reader, field, at| {
        match field {
            0 => *name = reader.string(at)?,
            1 => *hosts = optional_strings(reader, at)?,
            2 => *ports = reader.optional(|reader| reader.list(at, Reader::int))?,
            3 => *methods = optional_strings(reader, at)?,
            4 => *paths = optional_strings(reader, at)?,
            5 => *principals = optional_strings(reader, at)?,
            6 => *namespaces = optional_strings(reader, at)?,
            7 => *cidrs = optional_strings(reader, at)?,
            _ => *redirects = reader.optional(|reader| read_rule_redirects(reader, at))?,
        }
        Ok(())
    });
    match seen {
        Ok(seen) => json::require(seen, 0, RULE, path).map(|()| (doc, true)),
        Err(error) if error.is_recorded() => Ok((doc, false)),
        Err(error) => Err(error),
    }
}

const RULE_REDIRECTS: &[&str] = &["follow", "maxHops", "allowDowngrade"];

fn read_rule_redirects(reader: &mut Reader<'_>, path: &Path<'_>) -> Result<RuleRedirectsDocument, Error> {
    let mut doc = RuleRedirectsDocument::default();
    let RuleRedirectsDocument { follow, max_hops, allow_downgrade } = &mut doc;
    reader.members(path, "struct RuleRedirectsDocument", RULE_REDIRECTS, true, &mut |reader, field, at| {
        match field {
            0 => *follow = reader.optional(|reader| reader.boolean(at))?,
            1 => *max_hops = reader.optional(|reader| reader.int(at))?,
            _ => *allow_downgrade = reader.boolean(at)?,
        }
        Ok(())
    })?;
    Ok(doc)
}

const REDIRECTS: &[&str] = &["follow", "maxHops", "denyStatus", "originateTls"];

fn read_redirects(reader: &mut Reader<'_>, path: &Path<'_>) -> Result<RedirectsDocument, Error> {
    let mut doc = RedirectsDocument::default();
    let RedirectsDocument { follow, max_hops, deny_status, originate_tls } = &mut doc;
    reader.members(path, "struct RedirectsDocument", REDIRECTS, true, &mut |reader, field, at| {
        match field {
            0 => *follow = reader.boolean(at)?,
            1 => *max_hops = reader.int(at)?,
            2 => *deny_status = reader.int(at)?,
            _ => *originate_tls = strings(reader, at)?,
        }
        Ok(())
    })?;
    Ok(doc)
}

const GATEWAY_PORT: &[&str] = &["listener", "service"];

fn read_gateway_port(reader: &mut Reader<'_>, path: &Path<'_>) -> Result<GatewayPortDocument, Error> {
    let mut doc = GatewayPortDocument::default();
    let GatewayPortDocument { listener, service } = &mut doc;
    let seen = reader.members(path, "struct GatewayPortDocument", GATEWAY_PORT, true, &mut |reader, field, at| {
        match field {
            0 => *listener = reader.int(at)?,
            _ => *service = reader.int(at)?,
        }
        Ok(())
    })?;
    json::require(seen, 0, GATEWAY_PORT, path)?;
    json::require(seen, 1, GATEWAY_PORT, path)?;
    Ok(doc)
}

const DENY: &[&str] = &["hosts", "cidrs"];

fn read_deny(reader: &mut Reader<'_>, path: &Path<'_>) -> Result<DenyDocument, Error> {
    let mut doc = DenyDocument::default();
    let DenyDocument { hosts, cidrs } = &mut doc;
    reader.members(path, "struct DenyDocument", DENY, true, &mut |reader, field, at| {
        match field {
            0 => *hosts = strings(reader, at)?,
            _ => *cidrs = strings(reader, at)?,
        }
        Ok(())
    })?;
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// The hand-written reader and the derived `Deserialize` (through the path-tracking deserializer) agree.
    fn same(json: &str) -> String {
        let by_hand = PolicyDocument::from_json(json.as_bytes()).map(|doc| format!("{doc:?}"));
        let by_serde = json::from_slice::<PolicyDocument>(json.as_bytes()).map(|doc| format!("{doc:?}"));
        assert_eq!(by_hand, by_serde, "{json}");
        match by_hand {
            Ok(doc) => doc,
            Err(errors) => errors.to_string(),
        }
    }

    #[test]
    fn reads_what_serde_reads() {
        same(r#"{"rules":[]}"#);
        same(
            r#"{"mode":"report","rules":[
              {"name":"a","hosts":["x.com","*.y.com"],"ports":[80,443,-1,9223372036854775807],"methods":["GET"],
               "paths":["/p"],"principals":["td/ns/a/sa/b"],"namespaces":["a"],"cidrs":["10.0.0.0/8"],
               "redirects":{"follow":true,"maxHops":3,"allowDowngrade":true}},
              {"name":"b","hosts":null,"ports":null,"methods":null,"paths":null,"principals":null,"namespaces":null,
               "cidrs":null,"redirects":null},
              {"name":"c","redirects":{"follow":null,"maxHops":null}},
              {"name":"d","redirects":{}}
            ],
            "deny":{"hosts":["h"],"cidrs":["1.2.3.4/32"]},
            "redirects":{"follow":true,"maxHops":7,"denyStatus":451,"originateTls":["o.com"]},
            "gatewayPorts":[{"listener":8443,"service":443},{"service":-1,"listener":0}]}"#,
        );
        same(r#"{"rules":[],"gatewayPorts":null}"#);
        same(r#"{"rules":[],"deny":{},"redirects":{}}"#);
        same(r#"{"rules":[],"deny":null,"redirects":null}"#);
    }

    #[test]
    fn refuses_what_serde_refuses_with_the_same_error() {
        let cases = [
            (r#"{}"#, "(document): missing field `rules`"),
            (r#"[]"#, "(document): invalid type: sequence, expected struct PolicyDocument"),
            (r#"{"rules":null}"#, "rules: invalid type: null, expected a sequence"),
            (r#"{"rulez":[]}"#, "rulez: unknown field `rulez`, expected one of `mode`, `rules`, `deny`, `redirects`, `gatewayPorts`"),
            (r#"{"rules":[],"gatewayPorts":{}}"#, "gatewayPorts: invalid type: map, expected a sequence"),
            (r#"{"rules":[],"gatewayPorts":[{"listener":8443}]}"#, "gatewayPorts[0]: missing field `service`"),
            (r#"{"rules":[],"gatewayPorts":[{"service":443}]}"#, "gatewayPorts[0]: missing field `listener`"),
            (r#"{"rules":[],"gatewayPorts":[{"listener":"8443","service":443}]}"#, r#"gatewayPorts[0].listener: invalid type: string "8443", expected i64"#),
            (r#"{"rules":[],"gatewayPorts":[{"listener":1,"service":2,"port":3}]}"#, "gatewayPorts[0].port: unknown field `port`, expected `listener` or `service`"),
            (r#"{"rules":[],"rules":[]}"#, "(document): duplicate field `rules`"),
            (r#"{"rules":[],"mode":"audit"}"#, "mode: unknown variant `audit`, expected `enforce` or `report`"),
            (r#"{"rules":[],"mode":1}"#, "mode: invalid type: integer `1`, expected enum Mode"),
            (r#"{"rules":[],"mode":null}"#, "mode: invalid type: null, expected enum Mode"),
            (r#"{"rules":[7]}"#, "rules[0]: invalid type: integer `7`, expected struct RuleDocument"),
            (r#"{"rules":[{}]}"#, "rules[0]: missing field `name`"),
            (r#"{"rules":[{"name":"a","portz":[1]}]}"#, "rules[0].portz: unknown field `portz`, expected one of `name`, `hosts`, `ports`, `methods`, `paths`, `principals`, `namespaces`, `cidrs`, `redirects`"),
            (r#"{"rules":[{"name":"a","name":"b"}]}"#, "rules[0]: duplicate field `name`"),
            (r#"{"rules":[{"name":1}]}"#, "rules[0].name: invalid type: integer `1`, expected a string"),
            (r#"{"rules":[{"name":"a","hosts":["x.com",7]}]}"#, "rules[0].hosts[1]: invalid type: integer `7`, expected a string"),
            (r#"{"rules":[{"name":"a","hosts":"x.com"}]}"#, r#"rules[0].hosts: invalid type: string "x.com", expected a sequence"#),
            (r#"{"rules":[{"name":"a","ports":["80"]}]}"#, r#"rules[0].ports[0]: invalid type: string "80", expected i64"#),
            (r#"{"rules":[{"name":"a","ports":[1.5]}]}"#, "rules[0].ports[0]: invalid type: floating point `1.5`, expected i64"),
            (r#"{"rules":[{"name":"a","ports":[9223372036854775808]}]}"#, "rules[0].ports[0]: invalid value: integer `9223372036854775808`, expected i64"),
            (r#"{"rules":[{"name":"a","redirects":[]}]}"#, "rules[0].redirects: invalid type: sequence, expected struct RuleRedirectsDocument"),
            (r#"{"rules":[{"name":"a","redirects":{"x":1}}]}"#, "rules[0].redirects.x: unknown field `x`, expected one of `follow`, `maxHops`, `allowDowngrade`"),
            (r#"{"rules":[{"name":"a","redirects":{"follow":"yes"}}]}"#, r#"rules[0].redirects.follow: invalid type: string "yes", expected a boolean"#),
            (r#"{"rules":[{"name":"a","redirects":{"allowDowngrade":null}}]}"#, "rules[0].redirects.allowDowngrade: invalid type: null, expected a boolean"),
            (r#"{"rules":[{"name":"a","redirects":{"maxHops":"3"}}]}"#, r#"rules[0].redirects.maxHops: invalid type: string "3", expected i64"#),
            (r#"{"rules":[],"deny":{"host":[]}}"#, "deny.host: unknown field `host`, expected `hosts` or `cidrs`"),
            (r#"{"rules":[],"deny":{"hosts":null}}"#, "deny.hosts: invalid type: null, expected a sequence"),
            (r#"{"rules":[],"deny":{"cidrs":[{}]}}"#, "deny.cidrs[0]: invalid type: map, expected a string"),
            (r#"{"rules":[],"deny":true}"#, "deny: invalid type: boolean `true`, expected struct DenyDocument"),
            (r#"{"rules":[],"redirects":{"follow":1}}"#, "redirects.follow: invalid type: integer `1`, expected a boolean"),
            (r#"{"rules":[],"redirects":{"maxHops":-1,"denyStatus":"x"}}"#, r#"redirects.denyStatus: invalid type: string "x", expected i64"#),
            (r#"{"rules":[],"redirects":{"originateTls":[1]}}"#, "redirects.originateTls[0]: invalid type: integer `1`, expected a string"),
            (r#"{"rules":[],"redirects":{"originate":[]}}"#, "redirects.originate: unknown field `originate`, expected one of `follow`, `maxHops`, `denyStatus`, `originateTls`"),
            (r#"{"rules":[]"#, "(document): EOF while parsing an object at line 1 column 11"),
        ];
        for (json, want) in cases {
            assert_eq!(same(json), want, "{json}");
        }
    }
}
