//! Workload identities: Istio SPIFFE IDs (`spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`) and the
//! Istio principal syntax that policies use to name them.

use std::fmt;

/// Longest SPIFFE ID accepted (the SPIFFE spec's URI limit).
const MAX_SPIFFE_ID_LEN: usize = 2048;
/// Longest trust domain (SPIFFE spec).
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// A parsed Istio workload identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl SpiffeId {
    /// Strict parse: only `spiffe://td/ns/<ns>/sa/<sa>`, no query, fragment, port, userinfo, escapes, dot or empty
    /// segments. An ID that does not parse is no identity at all.
    pub fn parse(uri: &str) -> Result<SpiffeId, SpiffeError> {
        if uri.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeError::TooLong);
        }
        let rest = uri.strip_prefix("spiffe://").ok_or(SpiffeError::NotSpiffe)?;
        let (trust_domain, path) = rest.split_once('/').ok_or(SpiffeError::NotAWorkload)?;
        if trust_domain.is_empty()
            || trust_domain.len() > MAX_TRUST_DOMAIN_LEN
            || !trust_domain.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        {
            return Err(SpiffeError::InvalidTrustDomain);
        }
        let segments: Vec<&str> = path.split('/').collect();
        for segment in &segments {
            let valid = !segment.is_empty()
                && *segment != "."
                && *segment != ".."
                && segment.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            if !valid {
                return Err(SpiffeError::InvalidPathSegment);
            }
        }
        match segments.as_slice() {
            ["ns", namespace, "sa", service_account] => Ok(SpiffeId {
                trust_domain: trust_domain.to_string(),
                namespace: namespace.to_string(),
                service_account: service_account.to_string(),
            }),
            _ => Err(SpiffeError::NotAWorkload),
        }
    }

    /// The Istio principal form: the ID without `spiffe://`, e.g. `cluster.local/ns/app/sa/sleep`.
    pub fn principal(&self) -> String {
        format!("{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}", self.principal())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpiffeError {
    NotSpiffe,
    TooLong,
    InvalidTrustDomain,
    InvalidPathSegment,
    NotAWorkload,
}

impl SpiffeError {
    pub fn code(self) -> &'static str {
        match self {
            SpiffeError::NotSpiffe => "not_spiffe",
            SpiffeError::TooLong => "spiffe_id_too_long",
            SpiffeError::InvalidTrustDomain => "invalid_trust_domain",
            SpiffeError::InvalidPathSegment => "invalid_path_segment",
            SpiffeError::NotAWorkload => "not_a_workload_id",
        }
    }
}

impl fmt::Display for SpiffeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SpiffeError::NotSpiffe => "URI is not spiffe://",
            SpiffeError::TooLong => "SPIFFE ID longer than 2048 bytes",
            SpiffeError::InvalidTrustDomain => "invalid trust domain",
            SpiffeError::InvalidPathSegment => "empty, dot or escaped path segment",
            SpiffeError::NotAWorkload => "path is not /ns/<namespace>/sa/<service-account>",
        })
    }
}

impl std::error::Error for SpiffeError {}

/// Istio's string match for principals and namespaces: exact, `prefix*`, `*suffix`, or `*` (any, but present).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StringMatch {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl StringMatch {
    pub fn parse(raw: &str) -> Result<StringMatch, String> {
        let parsed = match (raw.strip_prefix('*'), raw.strip_suffix('*')) {
            _ if raw == "*" => StringMatch::Any,
            (Some(suffix), None) => StringMatch::Suffix(suffix.to_string()),
            (None, Some(prefix)) => StringMatch::Prefix(prefix.to_string()),
            (None, None) => StringMatch::Exact(raw.to_string()),
            (Some(_), Some(_)) => return Err(format!("`{raw}`: `*` may stand at the start or the end, not both")),
        };
        let text = match &parsed {
            StringMatch::Any => "",
            StringMatch::Exact(s) | StringMatch::Prefix(s) | StringMatch::Suffix(s) => s,
        };
        if raw.is_empty() || text.contains('*') {
            return Err(format!("`{raw}`: a single `*` at the start or the end is the only wildcard"));
        }
        if text.bytes().any(|b| b <= b' ' || b >= 0x7f) {
            return Err(format!("`{raw}`: spaces, control and non-ASCII characters are not allowed"));
        }
        Ok(parsed)
    }

    /// A principal in Istio's form, `<trust domain>/ns/<namespace>/sa/<account>` with [`StringMatch::parse`]'s
    /// wildcards. A SPIFFE URI is refused: it could never match, principals being compared without the scheme.
    pub fn parse_principal(raw: &str) -> Result<StringMatch, String> {
        if raw.starts_with("spiffe://") {
            return Err(format!("`{raw}`: write principals without `spiffe://`, as Istio does"));
        }
        StringMatch::parse(raw)
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Any => true,
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(s) => value.starts_with(s.as_str()),
            StringMatch::Suffix(s) => value.ends_with(s.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn parses_istio_workload_ids() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/app/sa/sleep").unwrap();
        assert_eq!(
            (id.trust_domain.as_str(), id.namespace.as_str(), id.service_account.as_str()),
            ("cluster.local", "app", "sleep")
        );
        assert_eq!(id.principal(), "cluster.local/ns/app/sa/sleep");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/app/sa/sleep");
    }

    #[test]
    fn refuses_everything_else() {
        let cases = [
            ("https://cluster.local/ns/app/sa/sleep", SpiffeError::NotSpiffe),
            ("SPIFFE://cluster.local/ns/app/sa/sleep", SpiffeError::NotSpiffe),
            ("spiffe://", SpiffeError::NotAWorkload),
            ("spiffe://cluster.local", SpiffeError::NotAWorkload),
            ("spiffe:///ns/app/sa/sleep", SpiffeError::InvalidTrustDomain),
            ("spiffe://Cluster.Local/ns/app/sa/sleep", SpiffeError::InvalidTrustDomain),
            ("spiffe://user@td/ns/app/sa/sleep", SpiffeError::InvalidTrustDomain),
            ("spiffe://td:443/ns/app/sa/sleep", SpiffeError::InvalidTrustDomain),
            ("spiffe://td/ns/app/sa/sleep/extra", SpiffeError::NotAWorkload),
            ("spiffe://td/ns/app/sa", SpiffeError::NotAWorkload),
            ("spiffe://td/ns//sa/sleep", SpiffeError::InvalidPathSegment),
            ("spiffe://td/ns/app/sa/sleep/", SpiffeError::InvalidPathSegment),
            ("spiffe://td/ns/../sa/sleep", SpiffeError::InvalidPathSegment),
            ("spiffe://td/ns/a%2Fb/sa/sleep", SpiffeError::InvalidPathSegment),
            ("spiffe://td/ns/app/sa/sleep?x=1", SpiffeError::InvalidPathSegment),
            ("spiffe://td/ns/app/sa/sleep#f", SpiffeError::InvalidPathSegment),
            ("spiffe://td/sa/sleep/ns/app", SpiffeError::NotAWorkload),
        ];
        for (uri, want) in cases {
            assert_eq!(SpiffeId::parse(uri), Err(want), "{uri}");
        }
        let long = format!("spiffe://td/ns/{}/sa/x", "a".repeat(2040));
        assert_eq!(SpiffeId::parse(&long), Err(SpiffeError::TooLong));
    }

    #[test]
    fn principal_syntax() {
        assert!(StringMatch::parse("cluster.local/ns/app/sa/sleep").unwrap().matches("cluster.local/ns/app/sa/sleep"));
        assert!(!StringMatch::parse("cluster.local/ns/app/sa/sleep")
            .unwrap()
            .matches("cluster.local/ns/app/sa/sleepy"));
        let prefix = StringMatch::parse("cluster.local/ns/app/sa/*").unwrap();
        assert!(prefix.matches("cluster.local/ns/app/sa/x"));
        assert!(!prefix.matches("cluster.local/ns/other/sa/x"));
        assert!(StringMatch::parse("*/sa/sleep").unwrap().matches("td/ns/x/sa/sleep"));
        assert!(StringMatch::parse("*").unwrap().matches("anything"));
        for bad in ["", "**", "*a*", "a*b", "a b"] {
            assert!(StringMatch::parse(bad).is_err(), "{bad}");
        }
    }
}
