//! The workload identity filter's logic: who the caller is (from the mTLS peer certificate Envoy verified, or from
//! the XFCC of a trusted proxy hop), which headers carry that upstream, which a client may never send in any
//! spelling, whether callers may open tunnels the gateway cannot tag, and when to refuse.

use crate::assertion;
use crate::config_error::{ConfigError, ConfigErrors};
use crate::fingerprint::{Fingerprint, Fingerprinter};
use crate::headers;
use crate::spiffe::{SpiffeId, StringMatch};
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
    /// Whether callers may open tunnels (CONNECT, TLS passthrough), inside which the gateway can neither set nor
    /// strip identity headers.
    #[serde(default)]
    pub tunnels: Tunnels,
}

/// Tunnels (HTTP CONNECT, TLS passthrough) carry bytes the gateway cannot read: a caller can write any identity
/// header inside one, and the upstream receives it from the gateway's address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tunnels {
    /// Refuse them (403 `tunnel_not_allowed`; a passthrough connection is closed): every request that leaves carries
    /// the gateway's identity headers and nothing a client wrote in their place.
    #[default]
    Deny,
    /// Let them through, untagged (the audit event says `tunnel: true`). Upstreams reachable through a tunnel must
    /// then verify the signed assertion, never the bare identity headers.
    Allow,
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
    pub tunnels: Tunnels,
    /// Of the document as read ([`crate::fingerprint`]).
    fingerprint: Fingerprint,
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
        let document: IdentityDocument = crate::json::from_slice(json)?;
        IdentityConfig::compile(&document, env)
    }

    pub fn compile(
        doc: &IdentityDocument,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<IdentityConfig, ConfigErrors> {
        let mut errors = Vec::new();
        let mut error = |path: String, message: String| errors.push(ConfigError::new(path, message));
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
                .filter_map(|(i, raw)| {
                    StringMatch::parse_principal(raw).map_err(|e| error(format!("trustedHops[{i}]"), e)).ok()
                })
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
        Ok(IdentityConfig {
            headers,
            xfcc: doc.xfcc,
            on_missing: doc.on_missing,
            trusted_hops,
            signer,
            tunnels: doc.tunnels,
            fingerprint: fingerprint(doc),
        })
    }

    /// Which identity configuration this is ([`crate::fingerprint`]).
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// `onMissing Anonymous, tunnels Deny, signing key id k1, fingerprint 9f2c04e1b7a3d580`: what a module logs when
    /// configured.
    pub fn summary(&self) -> String {
        let signing = self.signer.as_ref().map_or("off".to_string(), |s| format!("key id {}", s.key_id));
        let (on_missing, tunnels, fingerprint) = (self.on_missing, self.tunnels, self.fingerprint);
        format!("onMissing {on_missing:?}, tunnels {tunnels:?}, signing {signing}, fingerprint {fingerprint}")
    }

    /// Every header a client must never be able to set: ours, and XFCC.
    pub fn stripped_headers(&self) -> [&str; 6] {
        let h = &self.headers;
        [&h.identity, &h.trust_domain, &h.namespace, &h.service_account, &h.assertion, XFCC_HEADER]
    }

    /// Whether a request header (or trailer) called `name` must be removed: it is one of [`Self::stripped_headers`]
    /// in any spelling a server reads as the same name ([`headers::is_alias`]).
    pub fn strips(&self, name: &str) -> bool {
        self.stripped_headers().iter().any(|ours| headers::is_alias(name, ours))
    }

    /// Who the caller is. `peer` is what Envoy verified of the TLS peer; `xfcc` is the incoming XFCC header (all
    /// values, joined), used only when the peer is a trusted hop.
    pub fn resolve(&self, peer: &Peer, xfcc: Option<&str>) -> Caller {
        let peer_id = match peer.identity() {
            Ok(Some(id)) => id,
            Ok(None) => return Caller::Anonymous,
            Err(reason) => return Caller::Invalid(reason),
        };
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

    /// The refusal of a tunnel (CONNECT, TLS passthrough), if tunnels are not allowed.
    pub fn tunnel_refusal(&self) -> Option<DenyReason> {
        (self.tunnels == Tunnels::Deny).then_some(DenyReason::TunnelNotAllowed)
    }
}

/// The document's values, in field order, with defaults filled in. Of the signing key only where it comes from: the
/// key itself never goes into a value that is logged and exported (its `keyId` names it).
fn fingerprint(doc: &IdentityDocument) -> Fingerprint {
    let IdentityDocument { headers, xfcc, on_missing, trusted_hops, signing, tunnels } = doc;
    let mut fingerprint = Fingerprinter::new("identity");
    for (field, name) in headers.all() {
        fingerprint.text(field, name);
    }
    fingerprint.value("xfcc", xfcc);
    fingerprint.value("onMissing", format_args!("{on_missing:?}"));
    fingerprint.list("trustedHops", trusted_hops.as_deref());
    match signing {
        None => fingerprint.text("signing", "-"),
        Some(SigningDocument { key_id, key_env, key, header }) => {
            fingerprint.text("signing.keyId", key_id);
            fingerprint.list("signing.keyEnv", key_env.as_ref().map(std::slice::from_ref));
            fingerprint.value("signing.key", key.is_some());
            fingerprint.list("signing.header", header.as_ref().map(std::slice::from_ref));
        }
    }
    fingerprint.value("tunnels", format_args!("{tunnels:?}"));
    fingerprint.finish()
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

/// What Envoy verified about the downstream TLS peer's certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Peer {
    /// No client certificate (plain text, or TLS without one).
    #[default]
    None,
    /// A client certificate Envoy verified, with every URI SAN (Envoy 1.38 and later show the whole certificate).
    Certificate(Vec<String>),
    /// A verified client certificate of which Envoy shows only the first URI SAN (before 1.38).
    FirstUriSan(String),
    /// A verified certificate whose SANs could not be read ([`crate::certificate`]).
    Unreadable,
}

impl Peer {
    /// The peer's workload identity: `None` for no certificate or one without a URI SAN, a refusal when the
    /// certificate does not name exactly one Istio SPIFFE ID (X.509-SVID §2: one URI SAN per SVID).
    pub fn identity(&self) -> Result<Option<SpiffeId>, DenyReason> {
        let uri = match self {
            Peer::None => return Ok(None),
            Peer::Unreadable => return Err(DenyReason::UnreadablePeerCertificate),
            Peer::Certificate(uris) => match uris.as_slice() {
                [] => return Ok(None),
                [uri] => uri,
                _ => return Err(DenyReason::MultipleUriSans),
            },
            Peer::FirstUriSan(uri) => uri,
        };
        SpiffeId::parse(uri).map(Some).map_err(|_| DenyReason::InvalidPeerIdentity)
    }
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
    /// The peer certificate has more than one URI SAN (X.509-SVID §2: an SVID has exactly one).
    MultipleUriSans,
    /// The peer certificate's SANs could not be read.
    UnreadablePeerCertificate,
    /// A CONNECT request, or a TLS-passthrough connection, and `tunnels: deny`.
    TunnelNotAllowed,
}

impl DenyReason {
    pub fn code(self) -> &'static str {
        match self {
            DenyReason::IdentityRequired => "identity_required",
            DenyReason::InvalidPeerIdentity => "invalid_peer_identity",
            DenyReason::InvalidXfcc => "invalid_xfcc",
            DenyReason::MultipleUriSans => "multiple_uri_sans",
            DenyReason::UnreadablePeerCertificate => "unreadable_peer_certificate",
            DenyReason::TunnelNotAllowed => "tunnel_not_allowed",
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

    fn mtls(uri: &str) -> Peer {
        Peer::Certificate(vec![uri.to_string()])
    }

    const SLEEP: &str = "spiffe://cluster.local/ns/app/sa/sleep";

    #[test]
    fn the_fingerprint_ignores_form_and_defaults_and_follows_every_value_but_the_key() {
        let base = config(r#"{"onMissing":"anonymous","signing":{"keyId":"k1","keyEnv":"EGRESS_KEY"}}"#).fingerprint();
        let same = [
            r#"{ "signing": {"keyEnv": "EGRESS_KEY", "keyId": "k1"}, "onMissing": "anonymous" }"#,
            r#"{"onMissing":"anonymous","tunnels":"deny","xfcc":false,"signing":{"keyId":"k1","keyEnv":"EGRESS_KEY"},
                "headers":{"identity":"x-workload-identity"}}"#,
        ];
        for json in same {
            assert_eq!(config(json).fingerprint(), base, "{json}");
        }
        let changed = [
            r#"{"onMissing":"deny","signing":{"keyId":"k1","keyEnv":"EGRESS_KEY"}}"#,
            r#"{"onMissing":"anonymous","signing":{"keyId":"k2","keyEnv":"EGRESS_KEY"}}"#,
            r#"{"onMissing":"anonymous","signing":{"keyId":"k1","keyEnv":"EGRESS_KEY","header":"x-assert"}}"#,
            r#"{"onMissing":"anonymous","signing":{"keyId":"k1","key":"0123456789abcdef0123456789abcdef"}}"#,
            r#"{"onMissing":"anonymous"}"#,
            r#"{"onMissing":"anonymous","signing":{"keyId":"k1","keyEnv":"EGRESS_KEY"},"xfcc":true}"#,
            r#"{"onMissing":"anonymous","signing":{"keyId":"k1","keyEnv":"EGRESS_KEY"},"tunnels":"allow"}"#,
            r#"{"onMissing":"anonymous","signing":{"keyId":"k1","keyEnv":"EGRESS_KEY"},"trustedHops":["a/b"]}"#,
            r#"{"onMissing":"anonymous","signing":{"keyId":"k1","keyEnv":"EGRESS_KEY"},"headers":{"namespace":"x-ns"}}"#,
        ];
        let mut seen = vec![base];
        for json in changed {
            let fingerprint = config(json).fingerprint();
            assert!(!seen.contains(&fingerprint), "{json}");
            seen.push(fingerprint);
        }
        // The key is never hashed: two inline keys under one key id are one fingerprint (the key id names the key).
        let inline = |key: &str| {
            config(&format!(r#"{{"onMissing":"anonymous","signing":{{"keyId":"k1","key":"{key}"}}}}"#)).fingerprint()
        };
        assert_eq!(inline(KEY), inline(&KEY.repeat(2)));
        assert!(config("{}").summary().ends_with(&format!("fingerprint {}", config("{}").fingerprint())));
    }

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
        let Caller::Verified { id, via } = c.resolve(&mtls(SLEEP), None) else { panic!() };
        assert_eq!((id.to_string().as_str(), via), (SLEEP, Via::Mtls));
        let Caller::Verified { id, .. } = c.resolve(&Peer::FirstUriSan(SLEEP.into()), None) else { panic!() };
        assert_eq!(id.to_string(), SLEEP, "Envoy before 1.38 shows the first URI SAN only");
        assert_eq!(c.resolve(&Peer::None, None), Caller::Anonymous);
        assert_eq!(c.resolve(&Peer::Certificate(vec![]), None), Caller::Anonymous, "a certificate naming no workload");
        assert_eq!(c.resolve(&mtls("https://workload"), None), Caller::Invalid(DenyReason::InvalidPeerIdentity));
        assert_eq!(c.resolve(&Peer::Unreadable, None), Caller::Invalid(DenyReason::UnreadablePeerCertificate));
    }

    #[test]
    fn one_spiffe_id_per_certificate() {
        let c = config("{}");
        let billing = "spiffe://cluster.local/ns/billing/sa/api";
        for uris in [[billing, SLEEP], [SLEEP, billing], [SLEEP, SLEEP], [SLEEP, "https://other"]] {
            let peer = Peer::Certificate(uris.map(String::from).to_vec());
            assert_eq!(c.resolve(&peer, None), Caller::Invalid(DenyReason::MultipleUriSans), "{uris:?}");
            assert_eq!(peer.identity(), Err(DenyReason::MultipleUriSans));
        }
        let trusted = config(r#"{"trustedHops": ["cluster.local/ns/edge/sa/*"]}"#);
        let edge = Peer::Certificate(vec!["spiffe://cluster.local/ns/edge/sa/proxy".into(), billing.into()]);
        let xfcc = format!("URI={SLEEP}");
        assert_eq!(
            trusted.resolve(&edge, Some(&xfcc)),
            Caller::Invalid(DenyReason::MultipleUriSans),
            "a hop is trusted only on an unambiguous certificate"
        );
    }

    #[test]
    fn xfcc_counts_only_from_a_trusted_hop() {
        let c = config(r#"{"trustedHops": ["cluster.local/ns/edge/sa/*"]}"#);
        let xfcc = "By=spiffe://cluster.local/ns/edge/sa/proxy;URI=spiffe://cluster.local/ns/app/sa/forged,URI=spiffe://cluster.local/ns/app/sa/real";
        let edge = mtls("spiffe://cluster.local/ns/edge/sa/proxy");
        let Caller::Verified { id, via } = c.resolve(&edge, Some(xfcc)) else { panic!() };
        assert_eq!((id.service_account.as_str(), via), ("real", Via::TrustedHop), "the last hop's element");
        let Caller::Verified { id, via } = c.resolve(&mtls(SLEEP), Some(xfcc)) else { panic!() };
        assert_eq!((id.to_string().as_str(), via), (SLEEP, Via::Mtls), "an untrusted peer's XFCC is ignored");
        assert_eq!(c.resolve(&edge, Some("URI=https://x")), Caller::Invalid(DenyReason::InvalidXfcc));
        assert_eq!(c.resolve(&edge, Some("URI=\"unterminated")), Caller::Invalid(DenyReason::InvalidXfcc));
        assert_eq!(
            c.resolve(&edge, Some(&format!("URI={SLEEP};URI=spiffe://cluster.local/ns/billing/sa/api"))),
            Caller::Invalid(DenyReason::InvalidXfcc),
            "an element naming two callers"
        );
        let Caller::Verified { via, .. } = c.resolve(&edge, None) else { panic!() };
        assert_eq!(via, Via::Mtls, "a trusted hop without XFCC is itself the caller");
    }

    #[test]
    fn our_headers_are_stripped_in_every_spelling_servers_fold_together() {
        let c = config(r#"{"headers": {"identity": "x-caller"}}"#);
        for name in [
            "x-caller",
            "X-Caller",
            "x_caller",
            "X_CALLER",
            "x.caller",
            "x~caller",
            "x-workload-namespace",
            "x_workload_namespace",
            "X-Workload_Trust-Domain",
            "x-workload-service_account",
            "x_workload_assertion",
            "x-forwarded-client-cert",
            "x_forwarded_client_cert",
            "X-Forwarded_Client-Cert",
        ] {
            assert!(c.strips(name), "{name}");
        }
        for name in
            ["x-workload-identity", "x-callers", "xcaller", "x-calle", "x--caller", "-x-caller", "authorization"]
        {
            assert!(!c.strips(name), "{name}");
        }
    }

    #[test]
    fn tunnels_are_refused_unless_allowed() {
        assert_eq!(config("{}").tunnel_refusal(), Some(DenyReason::TunnelNotAllowed), "the default");
        assert_eq!(config(r#"{"tunnels": "deny"}"#).tunnel_refusal(), Some(DenyReason::TunnelNotAllowed));
        assert_eq!(config(r#"{"tunnels": "allow"}"#).tunnel_refusal(), None);
        assert!(errors(r#"{"tunnels": "sometimes"}"#)[0].starts_with("tunnels: unknown variant `sometimes`"));
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

    /// One type error does not hide the others: every member in error is reported, nested ones included, and a
    /// member in error is not then reported missing.
    #[test]
    fn every_type_error_is_reported() {
        let json = r#"{"xfcc": "yes", "headers": {"identity": 1, "namespace": ["x"]}, "onMissing": "allow",
                       "trustedHops": "spiffe://x", "signing": {"keyId": 7}, "tunnels": true, "extra": 1}"#;
        assert_eq!(
            errors(json),
            [
                r#"xfcc: invalid type: string "yes", expected a boolean"#,
                "headers.identity: invalid type: integer `1`, expected a string",
                "headers.namespace: invalid type: sequence, expected a string",
                "onMissing: unknown variant `allow`, expected `deny` or `anonymous`",
                r#"trustedHops: invalid type: string "spiffe://x", expected a sequence"#,
                "signing.keyId: invalid type: integer `7`, expected a string",
                "tunnels: invalid type: boolean `true`, expected enum Tunnels",
                "extra: unknown field `extra`, expected one of `headers`, `xfcc`, `onMissing`, `trustedHops`, `signing`, `tunnels`",
            ]
        );
        // A repeated key in error is set aside with its repetition: what the visitor never read is not judged (the
        // policy fuzz target's finding: the second value's own error was reported, where the policy's reader
        // refuses it as a duplicate).
        let repeated = errors(r#"{"signing": "k", "signing": {"keyId": 1, "x": 2}, "xfcc": 1}"#);
        assert_eq!(
            repeated,
            [
                r#"signing: invalid type: string "k", expected struct SigningDocument"#,
                "xfcc: invalid type: integer `1`, expected a boolean"
            ]
        );
        // A key spelled like a path is its own member: set aside alone, and its error reported once.
        assert_eq!(
            errors(r#"{"headers": {"identity": 3}, "headers.identity": 1, "signing[0]": 2, "xfcc": 2}"#),
            [
                "headers.identity: invalid type: integer `3`, expected a string",
                "headers.identity: unknown field `headers.identity`, expected one of `headers`, `xfcc`, `onMissing`, `trustedHops`, `signing`, `tunnels`",
                "signing[0]: unknown field `signing[0]`, expected one of `headers`, `xfcc`, `onMissing`, `trustedHops`, `signing`, `tunnels`",
                "xfcc: invalid type: integer `2`, expected a boolean",
            ]
        );
        // A required member in error is reported once, as what it is, not as missing.
        assert_eq!(errors(r#"{"signing": {"keyId": null}}"#), ["signing.keyId: invalid type: null, expected a string"]);
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
            // A SPIFFE URI could never match: hops are principals, compared without the scheme.
            (r#"{"trustedHops": ["spiffe://x"]}"#, "trustedHops[0]: `spiffe://x`: write principals without"),
            (r#"{"onMissing": "allow"}"#, "onMissing: unknown variant `allow`"),
            (r#"{"header": {}}"#, "header: unknown field `header`"),
        ];
        for (json, want) in cases {
            let got = errors(json);
            assert!(got.iter().any(|e| e.starts_with(want)), "{json}: want {want:?}, got {got:?}");
        }
    }
}
