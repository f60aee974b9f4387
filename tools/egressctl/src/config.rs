//! Configuration files as the filters see them: read (YAML or JSON), validated with the filters' own engine
//! (`egressctl validate`), and asked what they decide (`egressctl explain`).

use egress_core::audit::AuditConfig;
use egress_core::identity::IdentityConfig;
use egress_core::redirect;
use egress_core::suite::SuiteConfig;
use egress_core::{Action, ConfigErrors, Decision, Policy, RequestLine, SpiffeId};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// What a configuration file configures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Policy,
    Identity,
    Audit,
    /// The fused suite's configuration: a section per stage (`policy`, `identity`, `audit`).
    Suite,
}

/// Reads a YAML (or JSON, a subset of YAML) file, keeping its key order.
pub fn read_yaml(path: &Path) -> Result<serde_yaml_ng::Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// A configuration as the JSON text the filter receives (Istio passes `pluginConfig` on as JSON).
pub fn to_json(value: &serde_yaml_ng::Value) -> Result<String, String> {
    serde_json::to_string(value).map_err(|e| format!("not expressible as JSON: {e}"))
}

/// Reads a configuration file as the JSON text its filter receives; errors name the file.
pub fn read_json(path: &Path) -> Result<String, String> {
    read_yaml(path).and_then(|value| to_json(&value).map_err(|e| format!("{}: {e}", path.display())))
}

/// A configuration the filter of its kind accepts.
#[derive(Debug)]
pub enum Checked {
    Policy(Box<Policy>),
    Identity(IdentityConfig),
    Audit(AuditConfig),
    Suite(Box<SuiteConfig>),
}

/// Checks `json` as the filter of `kind` does in `on_configure`; every problem comes back with its field path.
/// The identity filter's signing key lives in the gateway's environment, not in the file: any variable it names
/// is taken as present here.
pub fn check(kind: Kind, json: &str) -> Result<Checked, Vec<String>> {
    check_located(kind, json).map_err(|errors| errors.0.iter().map(ToString::to_string).collect())
}

/// [`check`], the problems with their field paths apart.
pub fn check_located(kind: Kind, json: &str) -> Result<Checked, ConfigErrors> {
    match kind {
        Kind::Policy => Policy::from_json(json.as_bytes()).map(|p| Checked::Policy(Box::new(p))),
        Kind::Identity => IdentityConfig::from_json(json.as_bytes(), |_| Some("k".repeat(64))).map(Checked::Identity),
        Kind::Audit => AuditConfig::from_json(json.as_bytes()).map(Checked::Audit),
        Kind::Suite => {
            SuiteConfig::from_json(json.as_bytes(), |_| Some("k".repeat(64))).map(|c| Checked::Suite(Box::new(c)))
        }
    }
}

/// Validates the file `path` as the filter of `kind` would. `Ok` summarises it; `Err` lists every problem, one per
/// line, each with the file and field path.
pub fn validate(path: &Path, kind: Kind) -> Result<String, Vec<String>> {
    let shown = path.display();
    let json = read_json(path).map_err(|e| vec![e])?;
    let checked =
        check(kind, &json).map_err(|errors| errors.iter().map(|e| format!("{shown}: {e}")).collect::<Vec<_>>())?;
    Ok(format!("{shown}: {}", checked.summary()))
}

impl Checked {
    /// `valid policy: 5 rules, mode Enforce, fingerprint …`: what `validate` says of a valid configuration.
    pub fn summary(&self) -> String {
        match self {
            Checked::Policy(policy) => {
                let follow = policy.follow_route_hops().map_or("off".to_string(), |hops| format!("up to {hops} hops"));
                format!("valid policy: {}, following redirects {follow}", policy.summary())
            }
            Checked::Identity(config) => format!("valid identity configuration: {}", config.summary()),
            Checked::Suite(config) => format!("valid suite configuration: {}", config.describe()),
            Checked::Audit(config) => format!("valid audit configuration: {}", config.summary()),
        }
    }
}

/// The largest object etcd stores: its `--max-request-bytes`, 1.5 MiB by default. The API server refuses to
/// write a larger one.
pub const ETCD_OBJECT_MAX: usize = 1_572_864;
/// What the API server adds to an object before it stores it (uid, timestamps, `managedFields`…), kept free.
pub const API_SERVER_HEADROOM: usize = 8 * 1024;
/// The annotations client-side `kubectl apply` can write: it copies the whole object into one.
pub const CLIENT_SIDE_APPLY_MAX: usize = 262_144;

/// Validates the suite's Istio resources in `paths` (files of YAML documents, or directories of them, as
/// `egressctl render` writes them) before they are applied:
/// - every `WasmPlugin` and `TrafficExtension` of one of the suite's plugins (by `pluginName`) has its
///   `pluginConfig` checked by the code of the filter that will read it, each problem located as
///   `<file>: <Kind> <namespace>/<name>: spec.pluginConfig.<field path>`;
/// - every resource is measured as the API server stores it (compact JSON): one that etcd would refuse
///   ([`ETCD_OBJECT_MAX`], less [`API_SERVER_HEADROOM`]) is a problem; one too large for client-side `kubectl
///   apply` ([`CLIENT_SIDE_APPLY_MAX`]) is named in the output, to be applied server-side.
///
/// `Ok` lists what was checked; `Err` every problem (and is also what paths without any of the suite's plugins
/// give: nothing was checked that could be refused by a gateway).
pub fn validate_manifests(paths: &[&Path]) -> Result<String, Vec<String>> {
    let (mut checked, mut problems) = (Vec::new(), Vec::new());
    let mut plugins = 0;
    for path in paths {
        let files = match manifest_files(path) {
            Ok(files) => files,
            Err(problem) => {
                problems.push(problem);
                continue;
            }
        };
        for file in &files {
            let text = match std::fs::read_to_string(file) {
                Ok(text) => text,
                Err(e) => {
                    problems.push(format!("{}: {e}", file.display()));
                    continue;
                }
            };
            for document in serde_yaml_ng::Deserializer::from_str(&text) {
                let value = match serde_yaml_ng::Value::deserialize(document) {
                    Ok(value) => value,
                    Err(e) => {
                        problems.push(format!("{}: {e}", file.display()));
                        break;
                    }
                };
                if value.is_null() {
                    continue;
                }
                let resource = Resource::of(&value);
                let shown = format!("{}: {} {}/{}", file.display(), resource.kind, resource.namespace, resource.name);
                match check_size(&value) {
                    Ok(None) => {}
                    Ok(Some(note)) => checked.push(format!("{shown}: {note}")),
                    Err(problem) => problems.push(format!("{shown}: {problem}")),
                }
                let Some(plugin) = Plugin::of(&value) else { continue };
                plugins += 1;
                check_plugin(&plugin, &shown, &mut checked, &mut problems);
            }
        }
    }
    if plugins == 0 && problems.is_empty() {
        let shown: Vec<String> = paths.iter().map(|path| path.display().to_string()).collect();
        problems.push(format!("{}: no WasmPlugin or TrafficExtension of the suite to check", shown.join(", ")));
    }
    if problems.is_empty() {
        Ok(checked.join("\n"))
    } else {
        Err(problems)
    }
}

/// The file `path`, or the `.yaml`/`.yml` files of the directory `path`, sorted.
fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|file| file.extension().is_some_and(|ext| ext == "yaml" || ext == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Whether the API server can store `resource` (as compact JSON, what it writes to etcd): `Err` when etcd would
/// refuse it, a note when client-side `kubectl apply` would.
fn check_size(resource: &serde_yaml_ng::Value) -> Result<Option<String>, String> {
    let size = to_json(resource)?.len();
    let limit = ETCD_OBJECT_MAX - API_SERVER_HEADROOM;
    if size > limit {
        return Err(format!(
            "{size} bytes as JSON: etcd refuses objects over {ETCD_OBJECT_MAX} bytes (its --max-request-bytes), \
             and the API server adds metadata: keep it under {limit} (a smaller policy: wildcards, not lists of names)"
        ));
    }
    Ok((size > CLIENT_SIDE_APPLY_MAX).then(|| {
        format!(
            "{size} bytes as JSON: apply it with `kubectl apply --server-side` (client-side apply copies it into an \
             annotation, and annotations hold at most {CLIENT_SIDE_APPLY_MAX} bytes)"
        )
    }))
}

/// Checks one plugin's configuration with the code of the filter that will read it.
fn check_plugin(plugin: &Plugin<'_>, shown: &str, checked: &mut Vec<String>, problems: &mut Vec<String>) {
    let Some(kind) = crate::render::config_kind(&plugin.plugin_name) else {
        problems.push(format!("{shown}: pluginName `{}` is none of the suite's root ids", plugin.plugin_name));
        return;
    };
    let json = match plugin.config.map(to_json).transpose() {
        Ok(json) => json.unwrap_or_default(),
        Err(e) => {
            problems.push(format!("{shown}: {}: {e}", plugin.config_at));
            return;
        }
    };
    match check_located(kind, &json) {
        Ok(valid) => checked.push(format!("{shown}: {}", valid.summary())),
        Err(errors) => problems.extend(errors.0.iter().map(|error| {
            let at = match error.path.as_str() {
                "(document)" => plugin.config_at.to_string(),
                path if path.starts_with('[') => format!("{}{path}", plugin.config_at),
                path => format!("{}.{path}", plugin.config_at),
            };
            format!("{shown}: {at}: {}", error.message)
        })),
    }
}

/// Any Kubernetes resource, by what names it.
struct Resource {
    kind: String,
    namespace: String,
    name: String,
}

impl Resource {
    fn of(resource: &serde_yaml_ng::Value) -> Resource {
        let text =
            |value: Option<&serde_yaml_ng::Value>| value.and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let metadata = resource.get("metadata");
        Resource {
            kind: text(resource.get("kind")),
            namespace: text(metadata.and_then(|m| m.get("namespace"))),
            name: text(metadata.and_then(|m| m.get("name"))),
        }
    }
}

/// One of the resources that carry a plugin configuration.
struct Plugin<'v> {
    plugin_name: String,
    /// Where its configuration is: `spec.pluginConfig` (WasmPlugin) or `spec.wasm.pluginConfig` (TrafficExtension).
    config_at: &'static str,
    config: Option<&'v serde_yaml_ng::Value>,
}

impl<'v> Plugin<'v> {
    fn of(resource: &'v serde_yaml_ng::Value) -> Option<Plugin<'v>> {
        let (wasm, config_at) = match resource.get("kind")?.as_str()? {
            "WasmPlugin" => (resource.get("spec")?, "spec.pluginConfig"),
            "TrafficExtension" => (resource.get("spec")?.get("wasm")?, "spec.wasm.pluginConfig"),
            _ => return None,
        };
        Some(Plugin {
            plugin_name: wasm.get("pluginName").and_then(|v| v.as_str()).unwrap_or_default().to_string(),
            config_at,
            config: wasm.get("pluginConfig").filter(|config| !config.is_null()),
        })
    }
}

/// Explains what the policy decides for one request: `http(s)://authority/path` as `method`, or `tls://sni:port`
/// for a TLS-passthrough connection, optionally as the caller `identity`.
pub fn explain(
    policy: &Policy,
    target: &str,
    method: &str,
    identity: Option<&SpiffeId>,
) -> Result<(bool, String), String> {
    if let Some(sni) = target.strip_prefix("tls://") {
        let (host, port) = sni.rsplit_once(':').ok_or("tls:// targets are tls://<sni>:<port>")?;
        let port = port.parse::<u16>().map_err(|_| format!("`{port}` is not a port"))?;
        let decision = policy.evaluate_tls(Some(host), port, identity.into());
        return Ok(describe(&format!("TLS passthrough, SNI {host}, port {port}"), &decision, identity));
    }
    if !target.contains("://") {
        return Err(format!("`{target}`: give an absolute URL, e.g. https://{target}"));
    }
    // The URL is parsed exactly as a redirect's Location would be; the base is never used for an absolute URL.
    let base = RequestLine::new("http", "explain.invalid", method, "/");
    let url = redirect::resolve(&base, target).map_err(|e| format!("`{target}`: {}", e.explain(target)))?;
    let authority = match url.authority.port {
        Some(port) => format!("{}:{port}", url.authority.host),
        None => url.authority.host.to_string(),
    };
    let request = RequestLine { scheme: &url.scheme, authority: &authority, method, path: Some(&url.path) };
    let decision = policy.evaluate_http(&request, identity.into());
    Ok(describe(&format!("{method} {}", url.url()), &decision, identity))
}

fn describe(what: &str, decision: &Decision<'_>, identity: Option<&SpiffeId>) -> (bool, String) {
    let caller = identity.map_or("anonymous (no verified SPIFFE identity)".to_string(), ToString::to_string);
    let destination = decision.destination.as_ref().map_or("(unparseable)".to_string(), ToString::to_string);
    let verdict = match (decision.action, decision.rule) {
        (Action::Allow, Some(rule)) => format!("allow: rule `{rule}` matches every field"),
        (action, Some(rule)) => format!("{}: {} (closest rule: `{rule}`)", action.as_str(), decision.reason),
        (action, None) => format!("{}: {}", action.as_str(), decision.reason),
    };
    let text = format!("{what}\n  caller       {caller}\n  destination  {destination}\n  decision     {verdict}");
    (decision.action.proceeds(), text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::from_json(
            br#"{"rules":[
              {"name":"github","hosts":["api.github.com"],"methods":["GET"]},
              {"name":"pay","hosts":["api.stripe.com"],"namespaces":["billing"]},
              {"name":"tls","hosts":["*.example.com"],"ports":[443]}
            ],"deny":{"cidrs":["169.254.0.0/16"]}}"#,
        )
        .unwrap()
    }

    #[test]
    fn explains_allow_and_deny_with_the_rule_and_reason() {
        let p = policy();
        let (ok, text) = explain(&p, "https://api.github.com/repos/x?y=1", "GET", None).unwrap();
        assert!(ok, "{text}");
        assert!(text.contains("GET https://api.github.com/repos/x?y=1"), "{text}");
        assert!(text.contains("destination  api.github.com:443") && text.contains("allow: rule `github`"), "{text}");
        let (ok, text) = explain(&p, "https://api.github.com/", "POST", None).unwrap();
        assert!(!ok && text.contains("deny: method_not_allowed (closest rule: `github`)"), "{text}");
        let (ok, text) = explain(&p, "http://169.254.169.254/latest", "GET", None).unwrap();
        assert!(!ok && text.contains("deny: deny_listed"), "{text}");
        let billing = SpiffeId::parse("spiffe://cluster.local/ns/billing/sa/api").unwrap();
        assert!(explain(&p, "https://api.stripe.com/v1", "GET", Some(&billing)).unwrap().0);
        let (ok, text) = explain(&p, "https://api.stripe.com/v1", "GET", None).unwrap();
        assert!(!ok && text.contains("identity_not_allowed") && text.contains("anonymous"), "{text}");
        let (ok, text) = explain(&p, "tls://a.example.com:443", "GET", None).unwrap();
        assert!(ok && text.starts_with("TLS passthrough, SNI a.example.com, port 443"), "{text}");
        assert!(explain(&p, "ftp://x/", "GET", None).is_err());
        assert!(explain(&p, "api.github.com/x", "GET", None).is_err());
    }
}
