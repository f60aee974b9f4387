//! The workload identity filter's logic: who the caller is (from the mTLS peer certificate Envoy verified, or from
//! the XFCC of a trusted proxy hop), which headers carry that upstream, and when to refuse.

use crate::assertion;
use crate::identity::{SpiffeId, StringMatch};
use crate::policy::{ConfigError, ConfigErrors};
use crate::xfcc;
use serde::{Deserialize, Serialize};

/// The header Envoy and XFCC-aware upstreams use; always removed from client requests.
pub const XFCC_HEADER: &str = "x-forwarded-client-cert";

/// The identity filter's plugin configuration, as written.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityDocument {
    #[serde(default)]
    pub headers: HeaderNames,
    /// Also send an XFCC element `By=<gateway>;Hash=<peer cert sha256>;URI=<caller>`.
    #[serde(default)]
    pub xfcc: bool,
    #[serde(default)]
    pub on_missing: OnMissing,
    /// Principals (Istio syntax) of proxies in front of this gateway whose XFCC names the real caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_hops: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<SigningDocument>,
}

/// Names of the headers set toward the upstream (and stripped from every client request).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HeaderNames {
    pub identity: String,
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
    pub assertion: String,
}

impl Default for HeaderNames {
    fn default() -> Self {
        HeaderNames {
            identity: "x-workload-identity".into(),
            trust_domain: "x-workload-trust-domain".into(),
            namespace: "x-workload-namespace".into(),
            service_account: "x-workload-service-account".into(),
            assertion: "x-workload-assertion".into(),
        }
    }
}

impl HeaderNames {
    fn all(&self) -> [(&'static str, &str); 5] {
        [
            ("identity", &self.identity),
            ("trustDomain", &self.trust_domain),
            ("namespace", &self.namespace),
            ("serviceAccount", &self.service_account),
            ("assertion", &self.assertion),
        ]
    }
}

/// What to do with a caller that has no verified identity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMissing {
    /// 403 `identity_required`.
    #[default]
    Deny,
    /// Let it through with the identity headers removed and none set.
    Anonymous,
}

/// The HMAC key for the signed assertion: from the VM environment (`keyEnv`, e.g. Istio `vmConfig.env` fed by a
/// Secret) or inline (`key`). Exactly one. No key, no signing: there is never a default key.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SigningDocument {
    pub key_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Header name override; defaults to `headers.assertion`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
}

/// The compiled configuration.
#[derive(Debug)]
pub struct IdentityConfig {
    pub headers: HeaderNames,
    pub xfcc: bool,
    pub on_missing: OnMissing,
    trusted_hops: Option<Vec<StringMatch>>,
    pub signer: Option<Signer>,
}

/// A configured signing key.
#[derive(Debug)]
pub struct Signer {
    pub key_id: String,
    key: Vec<u8>,
}

impl Signer {
    /// The assertion header value for `claims`, issued at `issued_at` with `nonce`.
    pub fn sign(&self, claims: &assertion::Claims<'_>, issued_at: u64, nonce: &[u8; 16]) -> Result<String, String> {
        assertion::sign(&self.key, &self.key_id, claims, issued_at, nonce)
    }
}

impl IdentityConfig {
    /// Parses JSON; `env` looks up VM environment variables (for `signing.keyEnv`).
    pub fn from_json(json: &[u8], env: impl Fn(&str) -> Option<String>) -> Result<IdentityConfig, ConfigErrors> {
        let document: IdentityDocument = crate::policy::from_json_with_path(json)?;
        IdentityConfig::compile(&document, env)
    }

    pub fn compile(
        doc: &IdentityDocument,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<IdentityConfig, ConfigErrors> {
        let mut errors = Vec::new();
        let mut error = |path: String, message: String| errors.push(ConfigError { path, message });
        let mut seen: Vec<&str> = Vec::new();
        for (field, name) in doc.headers.all() {
            if let Err(message) = check_header_name(name) {
                error(format!("headers.{field}"), message);
            } else if seen.contains(&name) {
                error(format!("headers.{field}"), format!("`{name}` is used twice"));
            }
            seen.push(name);
        }
        let trusted_hops = doc.trusted_hops.as_ref().map(|hops| {
            if hops.is_empty() {
                error("trustedHops".into(), "empty list; omit the field to trust no hop".into());
            }
            let parsed: Vec<StringMatch> = hops
                .iter()
                .enumerate()
                .filter_map(|(i, raw)| StringMatch::parse(raw).map_err(|e| error(format!("trustedHops[{i}]"), e)).ok())
                .collect();
            parsed
        });
        let mut headers = doc.headers.clone();
        let signer = doc.signing.as_ref().and_then(|signing| {
            if let Err(message) = assertion::check_key_id(&signing.key_id) {
                error("signing.keyId".into(), message);
            }
            if let Some(header) = &signing.header {
                match check_header_name(header) {
                    Ok(()) if seen.contains(&header.as_str()) && *header != headers.assertion => {
                        error("signing.header".into(), format!("`{header}` is already used by another header"))
                    }
                    Ok(()) => headers.assertion = header.clone(),
                    Err(message) => error("signing.header".into(), message),
                }
            }
            let key = match (&signing.key_env, &signing.key) {
                (Some(var), None) => match env(var).filter(|v| !v.is_empty()) {
                    Some(key) => key,
                    None => {
                        error("signing.keyEnv".into(), format!("environment variable `{var}` is not set in the VM"));
                        return None;
                    }
                },
                (None, Some(key)) => key.clone(),
                _ => {
                    error("signing".into(), "set exactly one of `keyEnv` and `key`".into());
                    return None;
                }
            };
            if let Err(message) = assertion::check_key(key.as_bytes()) {
                error("signing".into(), message);
            }
            Some(Signer { key_id: signing.key_id.clone(), key: key.into_bytes() })
        });
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(IdentityConfig { headers, xfcc: doc.xfcc, on_missing: doc.on_missing, trusted_hops, signer })
    }

    /// Every header a client must never be able to set: ours, and XFCC.
    pub fn stripped_headers(&self) -> [&str; 6] {
        let h = &self.headers;
        [&h.identity, &h.trust_domain, &h.namespace, &h.service_account, &h.assertion, XFCC_HEADER]
    }

    /// Who the caller is. `peer` is what Envoy verified of the TLS peer; `xfcc` is the incoming XFCC header (all
    /// values, joined), used only when the peer is a trusted hop.
    pub fn resolve(&self, peer: Peer<'_>, xfcc: Option<&str>) -> Caller {
        let peer_id = match (peer.mtls, peer.uri_san) {
            (true, Some(uri)) => match SpiffeId::parse(uri) {
                Ok(id) => Some(id),
                Err(_) => return Caller::Invalid(DenyReason::InvalidPeerIdentity),
            },
            _ => None,
        };
        let Some(peer_id) = peer_id else { return Caller::Anonymous };
        let trusted = self.trusted_hops.as_ref().is_some_and(|hops| {
            let principal = peer_id.principal();
            hops.iter().any(|hop| hop.matches(&principal))
        });
        match (trusted, xfcc) {
            (true, Some(header)) => match forwarded_caller(header) {
                Some(id) => Caller::Verified { id, via: Via::TrustedHop },
                None => Caller::Invalid(DenyReason::InvalidXfcc),
            },
            _ => Caller::Verified { id: peer_id, via: Via::Mtls },
        }
    }
}

/// The caller a trusted hop forwarded: the URI of the last XFCC element (the one that hop appended).
fn forwarded_caller(header: &str) -> Option<SpiffeId> {
    let elements = xfcc::parse(header).ok()?;
    SpiffeId::parse(elements.last()?.uri.as_deref()?).ok()
}

/// Header names: lowercase tokens, never a pseudo-header or one that changes how the request is framed or routed.
fn check_header_name(name: &str) -> Result<(), String> {
    const RESERVED: [&str; 9] = [
        "host",
        "connection",
        "content-length",
        "transfer-encoding",
        "te",
        "upgrade",
        "keep-alive",
        "proxy-connection",
        XFCC_HEADER,
    ];
    let token = !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !token {
        Err(format!("`{name}`: header names are lowercase letters, digits and `-`"))
    } else if RESERVED.contains(&name) {
        Err(format!("`{name}` is reserved"))
    } else {
        Ok(())
    }
}

/// What Envoy verified about the downstream TLS peer.
#[derive(Clone, Copy, Debug, Default)]
pub struct Peer<'a> {
    /// The connection is TLS with a client certificate Envoy verified.
    pub mtls: bool,
    /// The certificate's (first) URI SAN.
    pub uri_san: Option<&'a str>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    Verified { id: SpiffeId, via: Via },
    Anonymous,
    Invalid(DenyReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Mtls,
    TrustedHop,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Mtls => "mtls",
            Via::TrustedHop => "trusted_hop",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// No verified identity and `onMissing: deny`.
    IdentityRequired,
    /// The peer certificate's URI SAN is not an Istio SPIFFE ID.
    InvalidPeerIdentity,
    /// A trusted hop sent an XFCC without a valid caller.
    InvalidXfcc,
}

impl DenyReason {
    pub fn code(self) -> &'static str {
        match self {
            DenyReason::IdentityRequired => "identity_required",
            DenyReason::InvalidPeerIdentity => "invalid_peer_identity",
            DenyReason::InvalidXfcc => "invalid_xfcc",
        }
    }

    /// The JSON body of the 403.
    pub fn http_body(self) -> String {
        crate::json::Object::new().str("error", "identity_denied").str("reason", self.code()).finish()
    }
}

impl Caller {
    /// The refusal, if this caller may not proceed under `on_missing`.
    pub fn refusal(&self, on_missing: OnMissing) -> Option<DenyReason> {
        match (self, on_missing) {
            (Caller::Invalid(reason), _) => Some(*reason),
            (Caller::Anonymous, OnMissing::Deny) => Some(DenyReason::IdentityRequired),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    fn config(json: &str) -> IdentityConfig {
        IdentityConfig::from_json(json.as_bytes(), |var| (var == "EGRESS_KEY").then(|| KEY.to_string())).unwrap()
    }

    fn errors(json: &str) -> Vec<String> {
        let result = IdentityConfig::from_json(json.as_bytes(), |_| None);
        result.err().map(|e| e.0.iter().map(ToString::to_string).collect()).unwrap_or_default()
    }

    fn mtls(uri: &str) -> Peer<'_> {
        Peer { mtls: true, uri_san: Some(uri) }
    }

    const SLEEP: &str = "spiffe://cluster.local/ns/app/sa/sleep";

    #[test]
    fn defaults() {
        let c = config("{}");
        assert_eq!(c.headers, HeaderNames::default());
        assert_eq!(c.on_missing, OnMissing::Deny);
        assert!(c.signer.is_none(), "no key, no signing");
        assert!(c.stripped_headers().contains(&"x-forwarded-client-cert"));
    }

    #[test]
    fn resolves_the_mtls_peer() {
        let c = config("{}");
        let Caller::Verified { id, via } = c.resolve(mtls(SLEEP), None) else { panic!() };
        assert_eq!((id.to_string().as_str(), via), (SLEEP, Via::Mtls));
        assert_eq!(c.resolve(Peer { mtls: false, uri_san: Some(SLEEP) }, None), Caller::Anonymous, "unverified");
        assert_eq!(c.resolve(Peer::default(), None), Caller::Anonymous);
        assert_eq!(c.resolve(mtls("https://workload"), None), Caller::Invalid(DenyReason::InvalidPeerIdentity));
    }

    #[test]
    fn xfcc_counts_only_from_a_trusted_hop() {
        let c = config(r#"{"trustedHops": ["cluster.local/ns/edge/sa/*"]}"#);
        let xfcc = "By=spiffe://cluster.local/ns/edge/sa/proxy;URI=spiffe://cluster.local/ns/app/sa/forged,URI=spiffe://cluster.local/ns/app/sa/real";
        let edge = mtls("spiffe://cluster.local/ns/edge/sa/proxy");
        let Caller::Verified { id, via } = c.resolve(edge, Some(xfcc)) else { panic!() };
        assert_eq!((id.service_account.as_str(), via), ("real", Via::TrustedHop), "the last hop's element");
        let Caller::Verified { id, via } = c.resolve(mtls(SLEEP), Some(xfcc)) else { panic!() };
        assert_eq!((id.to_string().as_str(), via), (SLEEP, Via::Mtls), "an untrusted peer's XFCC is ignored");
        assert_eq!(c.resolve(edge, Some("URI=https://x")), Caller::Invalid(DenyReason::InvalidXfcc));
        assert_eq!(c.resolve(edge, Some("URI=\"unterminated")), Caller::Invalid(DenyReason::InvalidXfcc));
        let Caller::Verified { via, .. } = c.resolve(edge, None) else { panic!() };
        assert_eq!(via, Via::Mtls, "a trusted hop without XFCC is itself the caller");
    }

    #[test]
    fn refusals_follow_on_missing() {
        assert_eq!(Caller::Anonymous.refusal(OnMissing::Deny), Some(DenyReason::IdentityRequired));
        assert_eq!(Caller::Anonymous.refusal(OnMissing::Anonymous), None);
        assert_eq!(
            Caller::Invalid(DenyReason::InvalidXfcc).refusal(OnMissing::Anonymous),
            Some(DenyReason::InvalidXfcc)
        );
    }

    #[test]
    fn signing_key_from_env_or_inline_never_a_default() {
        let c = config(r#"{"signing": {"keyId": "k1", "keyEnv": "EGRESS_KEY"}}"#);
        let signer = c.signer.unwrap();
        let claims = assertion::Claims { identity: SLEEP, method: "GET", authority: "a.com", path: "/" };
        let header = signer.sign(&claims, 100, &[1; 16]).unwrap();
        let key = KEY.as_bytes();
        assert!(assertion::verify(&header, &claims, |kid| (kid == "k1").then_some(key), 100, 60).is_ok());
        assert!(config(&format!(r#"{{"signing": {{"keyId": "k1", "key": "{KEY}"}}}}"#)).signer.is_some());
    }

    #[test]
    fn config_errors_name_the_field() {
        let cases = [
            (
                r#"{"signing": {"keyId": "k1", "keyEnv": "MISSING"}}"#,
                "signing.keyEnv: environment variable `MISSING` is not set in the VM",
            ),
            (r#"{"signing": {"keyId": "k1"}}"#, "signing: set exactly one of `keyEnv` and `key`"),
            (
                r#"{"signing": {"keyId": "k1", "key": "short"}}"#,
                "signing: signing key is 5 bytes; at least 32 are required",
            ),
            (
                r#"{"signing": {"keyId": "k 1", "key": "0123456789abcdef0123456789abcdef"}}"#,
                "signing.keyId: key id `k 1`",
            ),
            (r#"{"headers": {"identity": "X-Upper"}}"#, "headers.identity: `X-Upper`: header names are lowercase"),
            (
                r#"{"headers": {"namespace": "x-workload-identity"}}"#,
                "headers.namespace: `x-workload-identity` is used twice",
            ),
            (r#"{"headers": {"identity": "host"}}"#, "headers.identity: `host` is reserved"),
            (r#"{"trustedHops": []}"#, "trustedHops: empty list"),
            (r#"{"trustedHops": ["a*b"]}"#, "trustedHops[0]: `a*b`"),
            (r#"{"onMissing": "allow"}"#, "onMissing: unknown variant `allow`"),
            (r#"{"header": {}}"#, "header: unknown field `header`"),
        ];
        for (json, want) in cases {
            let got = errors(json);
            assert!(got.iter().any(|e| e.starts_with(want)), "{json}: want {want:?}, got {got:?}");
        }
    }
}
