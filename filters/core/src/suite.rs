//! The suite's plugin configuration: one document whose sections configure the stages of the fused filter.
//!
//! ```json
//! {"policy": {…the allow-list and redirects policy…}, "identity": {…}, "audit": {…}}
//! ```
//!
//! A section that is absent turns its stage off (`policy` drives the allow-list and redirects stages). The policy is
//! compiled rule by rule as it streams in, as the allow-list's own configuration is; every problem of every section
//! is reported, with its field path under the section (`policy.rules[3].hosts[0]`, `identity.signing.keyEnv`).

use crate::audit::{AuditConfig, AuditDocument};
use crate::config_error::{ConfigError, ConfigErrors};
use crate::identity::{IdentityConfig, IdentityDocument};
use crate::json::{self, Error, Path, Source};
use crate::policy::Policy;
use std::rc::Rc;

/// The sections, in the order of the stages they configure.
pub const SECTIONS: &[&str] = &["policy", "identity", "audit"];

/// The compiled configuration: a stage for each section present.
#[derive(Debug, Default)]
pub struct SuiteConfig {
    pub policy: Option<Rc<Policy>>,
    pub identity: Option<Rc<IdentityConfig>>,
    pub audit: Option<AuditConfig>,
}

impl SuiteConfig {
    /// Parses and compiles a JSON document; `env` looks up VM environment variables (`identity.signing.keyEnv`).
    pub fn from_json(json: &[u8], env: impl Fn(&str) -> Option<String>) -> Result<SuiteConfig, ConfigErrors> {
        SuiteConfig::from_buf_reader(&mut &*json, env)
    }

    /// Like [`SuiteConfig::from_json`], reading the document as it arrives (the module reads its plugin configuration
    /// from the host in chunks, so a large policy is never whole in the VM's memory).
    // `inline`: compiled into the calling module, which `make build` optimises for size; configuring is cold.
    #[inline]
    pub fn from_buf_reader(
        reader: &mut impl std::io::BufRead,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<SuiteConfig, ConfigErrors> {
        let mut policy = None;
        let mut identity: Option<IdentityDocument> = None;
        let mut audit: Option<AuditDocument> = None;
        let source: &mut dyn Source = reader;
        json::read(source, |reader, path| {
            let seen = reader.members(path, "struct SuiteDocument", SECTIONS, true, &mut |reader, section, at| {
                match section {
                    0 => policy = Some(crate::policy::read_and_compile(reader, at, "policy")?),
                    1 => identity = Some(section_document(reader, at)?),
                    _ => audit = Some(section_document(reader, at)?),
                }
                Ok(())
            })?;
            if seen == 0 {
                return Err(<Error as serde::de::Error>::custom(
                    "no stage configured: give `policy`, `identity` or `audit`",
                ));
            }
            Ok(())
        })?;
        let mut problems = Vec::new();
        let mut collect = |result: Result<(), ConfigErrors>| {
            if let Err(ConfigErrors(errors)) = result {
                problems.extend(errors);
            }
        };
        let mut config = SuiteConfig::default();
        if let Some(compiled) = policy {
            collect(compiled.map(|policy| config.policy = Some(Rc::new(policy))));
        }
        if let Some(doc) = identity {
            let compiled = IdentityConfig::compile(&doc, &env).map_err(|e| under("identity", e));
            collect(compiled.map(|identity| config.identity = Some(Rc::new(identity))));
        }
        if let Some(doc) = audit {
            let compiled = AuditConfig::compile(doc).map_err(|e| under("audit", e));
            collect(compiled.map(|audit| config.audit = Some(audit)));
        }
        if !problems.is_empty() {
            return Err(ConfigErrors(problems));
        }
        Ok(config)
    }

    /// What is configured, for the module's log line.
    pub fn describe(&self) -> String {
        let mut stages = Vec::new();
        if let Some(policy) = &self.policy {
            stages.push(format!("policy of {}", policy.summary()));
        }
        if let Some(identity) = &self.identity {
            stages.push(format!("identity ({})", identity.summary()));
        }
        if let Some(audit) = &self.audit {
            stages.push(format!("audit ({})", audit.summary()));
        }
        stages.join(", ")
    }
}

/// A small section read whole, then deserialized with its errors at its path.
fn section_document<T: serde::de::DeserializeOwned>(reader: &mut json::Reader<'_>, at: &Path<'_>) -> Result<T, Error> {
    let value = reader.tree()?;
    json::deserialize_at(value, at).map_err(|errors| reader.record_errors(errors))
}

/// A section's own errors, with the section's name in front of their paths (the section's root is the section).
fn under(section: &str, errors: ConfigErrors) -> ConfigErrors {
    let errors = errors.0.into_iter().map(|ConfigError { path, message }| {
        let path = if path == "(document)" { section.to_string() } else { format!("{section}.{path}") };
        ConfigError { path, message }
    });
    ConfigErrors(errors.collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn errors(json: &str) -> Vec<String> {
        let result = SuiteConfig::from_json(json.as_bytes(), |_| None);
        result.err().map(|e| e.0.iter().map(ToString::to_string).collect()).unwrap_or_default()
    }

    #[test]
    fn each_section_configures_its_stage() {
        let config = SuiteConfig::from_json(
            br#"{"policy":{"rules":[{"name":"a","hosts":["a.example"]}]},"identity":{"onMissing":"anonymous"},"audit":{}}"#,
            |_| None,
        )
        .unwrap();
        assert_eq!(config.policy.unwrap().rule_count(), 1);
        assert!(config.identity.is_some() && config.audit.is_some());
        let policy_only =
            SuiteConfig::from_json(br#"{"policy":{"rules":[{"name":"a","hosts":["a.example"]}]}}"#, |_| None).unwrap();
        assert!(policy_only.identity.is_none() && policy_only.audit.is_none(), "an absent section: stage off");
    }

    #[test]
    fn every_problem_of_every_section_is_reported_under_its_section() {
        let got = errors(
            r#"{"policy":{"rules":[{"name":"a","hosts":["api-*.x"]},{"name":"b"}]},
                "identity":{"signing":{"keyId":"k","keyEnv":"MISSING"}},
                "audit":{"log":false}}"#,
        );
        assert_eq!(
            got,
            [
                "policy.rules[0].hosts[0]: `api-*.x`: `*` must be a whole label (`*.example.com`, `ec2.*.aws.com`)",
                "policy.rules[1]: a rule needs `hosts` or `cidrs`",
                "identity.signing.keyEnv: environment variable `MISSING` is not set in the VM",
                "audit: no sink: enable `log` or configure a `collector`",
            ]
        );
    }

    #[test]
    fn type_errors_and_unknown_sections_name_their_path() {
        assert_eq!(
            errors(r#"{"policy":{"rules":[{"name":"a","hosts":["a.x"],"ports":["80"]}]}}"#)[0],
            r#"policy.rules[0].ports[0]: invalid type: string "80", expected i64"#
        );
        assert!(errors(r#"{"identity":{"onMissing":"maybe"}}"#)[0]
            .starts_with("identity.onMissing: unknown variant `maybe`"));
        assert!(errors(r#"{"audit":{"headers":"x"}}"#)[0].starts_with("audit.headers: invalid type"));
        assert!(errors(r#"{"polcy":{}}"#)[0].starts_with("polcy: unknown field `polcy`, expected one of `policy`"));
        assert_eq!(errors("{}"), ["(document): no stage configured: give `policy`, `identity` or `audit`"]);
        // Every section's type errors at once, each at its path.
        let all = errors(
            r#"{"policy":{"rules":[{"name":"a","ports":["80"]}],"mode":1},
                "identity":{"xfcc":"no","onMissing":"maybe"},"audit":{"log":"x","headers":"y"}}"#,
        );
        for want in [
            "policy.rules[0].ports[0]: invalid type",
            "policy.mode: invalid type",
            "identity.xfcc: invalid type",
            "identity.onMissing: unknown variant `maybe`",
            "audit.log: invalid type",
            "audit.headers: invalid type",
        ] {
            assert!(all.iter().any(|e| e.starts_with(want)), "{want} not in {all:?}");
        }
    }
}
