//! Configuration files as the filters see them: read (YAML or JSON), validated with the filters' own engine
//! (`egressctl validate`), and asked what they decide (`egressctl explain`).

use egress_core::audit::AuditConfig;
use egress_core::redirect::{self, BaseRequest};
use egress_core::suite::SuiteConfig;
use egress_core::workload::IdentityConfig;
use egress_core::{Action, Decision, HttpRequest, Policy, PolicyDocument, SpiffeId};
use std::path::Path;

/// What a configuration file configures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Policy,
    Identity,
    Audit,
    /// The fused suite's configuration: a section per stage (`policy`, `identity`, `audit`).
    Suite,
}

impl Kind {
    pub fn parse(raw: &str) -> Option<Kind> {
        match raw {
            "policy" => Some(Kind::Policy),
            "identity" => Some(Kind::Identity),
            "audit" => Some(Kind::Audit),
            "suite" => Some(Kind::Suite),
            _ => None,
        }
    }
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
    let messages = |errors: egress_core::ConfigErrors| errors.0.iter().map(ToString::to_string).collect::<Vec<_>>();
    match kind {
        Kind::Policy => {
            let document = PolicyDocument::from_json(json.as_bytes()).map_err(messages)?;
            Policy::compile(&document).map(|p| Checked::Policy(Box::new(p))).map_err(messages)
        }
        Kind::Identity => IdentityConfig::from_json(json.as_bytes(), |_| Some("k".repeat(64)))
            .map(Checked::Identity)
            .map_err(messages),
        Kind::Audit => AuditConfig::from_json(json.as_bytes()).map(Checked::Audit).map_err(messages),
        Kind::Suite => SuiteConfig::from_json(json.as_bytes(), |_| Some("k".repeat(64)))
            .map(|c| Checked::Suite(Box::new(c)))
            .map_err(messages),
    }
}

/// Validates the file `path` as the filter of `kind` would. `Ok` summarises it; `Err` lists every problem, one per
/// line, each with the file and field path.
pub fn validate(path: &Path, kind: Kind) -> Result<String, Vec<String>> {
    let shown = path.display();
    let json = read_json(path).map_err(|e| vec![e])?;
    let checked =
        check(kind, &json).map_err(|errors| errors.iter().map(|e| format!("{shown}: {e}")).collect::<Vec<_>>())?;
    Ok(match checked {
        Checked::Policy(policy) => {
            let follow = policy.follow_route_hops().map_or("off".to_string(), |hops| format!("up to {hops} hops"));
            format!(
                "{shown}: valid policy: {} rules, mode {:?}, following redirects {follow}",
                policy.rule_count(),
                policy.mode()
            )
        }
        Checked::Identity(config) => {
            format!("{shown}: valid identity configuration (onMissing {:?})", config.on_missing)
        }
        Checked::Suite(config) => format!("{shown}: valid suite configuration: {}", config.describe()),
        Checked::Audit(config) => {
            format!("{shown}: valid audit configuration (collector: {})", config.collector.is_some())
        }
    })
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
    let base = BaseRequest { scheme: "http", authority: "explain.invalid", path: "/", method };
    let url = redirect::resolve(&base, target).map_err(|e| format!("`{target}` is not an http(s) URL ({e:?})"))?;
    let authority = match url.authority.port {
        Some(port) => format!("{}:{port}", url.authority.host),
        None => url.authority.host.to_string(),
    };
    let request = HttpRequest {
        authority: &authority,
        scheme: &url.scheme,
        method,
        path: Some(&url.path),
        caller: identity.into(),
    };
    let decision = policy.evaluate_http(&request);
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
