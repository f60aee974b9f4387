//! The workload identity filter in a real Envoy, in front of the allow-list as Istio chains them: callers present
//! mTLS certificates with SPIFFE URI SANs made at test time; the echo upstream shows what left the gateway.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use egress_core::assertion::{self, Claims, VerifyError};
use egress_harness::client::{self, H2Request, Response};
use egress_harness::{Lab, LabOptions, GATEWAY_SPIFFE_ID};
use serde_json::Value;
use std::time::{SystemTime, UNIX_EPOCH};

const POLICY: &str = r#"{
  "rules": [
    {"name": "open", "hosts": ["httpbin.org"]},
    {"name": "sleep-only", "hosts": ["internal.example"], "principals": ["cluster.local/ns/app/sa/sleep"]},
    {"name": "billing-ns", "hosts": ["api.stripe.com"], "namespaces": ["billing"]}
  ]
}"#;
const SLEEP: &str = "spiffe://cluster.local/ns/app/sa/sleep";
const BILLING: &str = "spiffe://cluster.local/ns/billing/sa/api";
const EDGE: &str = "spiffe://cluster.local/ns/edge/sa/proxy";
const KEY: &str = "test-signing-key-0123456789abcdef-0123";
const KEY_ENV: &str = "EGRESS_ASSERTION_KEY";

fn lab(identity_config: &str) -> Lab {
    let options = LabOptions { host_env: vec![(KEY_ENV.into(), KEY.into())], ..LabOptions::new(POLICY) };
    Lab::start(&options.with_identity(identity_config)).expect("start the gateway")
}

/// The headers the upstream received, lowercase name → values.
fn upstream_headers(response: &Response) -> Vec<(String, String)> {
    assert_eq!(response.status, 200, "body: {}", response.body_str());
    let echo = response.json();
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h[0].as_str().unwrap().into(), h[1].as_str().unwrap().into()))
        .collect()
}

fn values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
}

#[test]
fn the_upstream_sees_each_callers_verified_identity() {
    let lab = lab(r#"{"onMissing": "anonymous"}"#);
    for (id, namespace, account) in [(SLEEP, "app", "sleep"), (BILLING, "billing", "api")] {
        let cert = lab.client_cert(Some(id)).unwrap();
        let headers = upstream_headers(&lab.mtls_get(&cert, "httpbin.org", "/headers").unwrap());
        assert_eq!(values(&headers, "x-workload-identity"), [id]);
        assert_eq!(values(&headers, "x-workload-trust-domain"), ["cluster.local"]);
        assert_eq!(values(&headers, "x-workload-namespace"), [namespace]);
        assert_eq!(values(&headers, "x-workload-service-account"), [account]);
        assert!(values(&headers, "x-workload-assertion").is_empty(), "no key configured: no signature");
    }
    assert_eq!(lab.envoy.stat("wasmcustom.egress_identity_verified"), Some(2));
}

#[test]
fn client_supplied_identity_headers_never_reach_the_upstream() {
    let lab = lab(r#"{"onMissing": "anonymous", "signing": {"keyId": "k1", "keyEnv": "EGRESS_ASSERTION_KEY"}}"#);
    let spoofs: &[(&str, &str)] = &[
        ("X-Workload-Identity", "spiffe://cluster.local/ns/kube-system/sa/admin"),
        ("x-workload-identity", "spiffe://cluster.local/ns/kube-system/sa/admin2"),
        ("X-WORKLOAD-NAMESPACE", "kube-system"),
        ("x-workload-trust-domain", "evil.example"),
        ("X-Workload-Service-Account", "admin"),
        ("x-workload-assertion", "v1;kid=k1;ts=1;nonce=00000000000000000000000000000000;sig=00"),
        ("X-Forwarded-Client-Cert", "URI=spiffe://cluster.local/ns/kube-system/sa/admin"),
    ];
    // With an identity: only the gateway's values arrive.
    let cert = lab.client_cert(Some(SLEEP)).unwrap();
    let headers = upstream_headers(&lab.mtls_request(&cert, "GET", "httpbin.org", "/headers", spoofs).unwrap());
    assert_eq!(values(&headers, "x-workload-identity"), [SLEEP]);
    assert_eq!(values(&headers, "x-workload-namespace"), ["app"]);
    assert_eq!(values(&headers, "x-workload-trust-domain"), ["cluster.local"]);
    assert_eq!(values(&headers, "x-workload-service-account"), ["sleep"]);
    assert_eq!(values(&headers, "x-workload-assertion").len(), 1);
    assert!(values(&headers, "x-forwarded-client-cert").is_empty(), "xfcc is off: the client's copy is removed");
    // Without an identity (anonymous allowed): every copy removed, nothing set.
    let plain = client::request(lab.http(), "GET", "httpbin.org", "/headers", spoofs, b"").unwrap();
    let headers = upstream_headers(&plain);
    let leaked: Vec<_> =
        headers.iter().filter(|(n, _)| n.starts_with("x-workload-") || n == "x-forwarded-client-cert").collect();
    assert!(leaked.is_empty(), "spoofed headers reached the upstream: {leaked:?}");
    assert_eq!(lab.envoy.stat("wasmcustom.egress_identity_spoofed_headers_removed"), Some(2));
    assert_eq!(lab.envoy.stat("wasmcustom.egress_identity_anonymous"), Some(1));
}

#[test]
fn callers_without_a_verified_identity_get_the_configured_behaviour() {
    let deny = lab("{}");
    let refused = client::get(deny.http(), "httpbin.org", "/headers").unwrap();
    assert_eq!(refused.status, 403);
    assert_eq!(refused.header("x-egress-denied-reason"), Some("identity_required"));
    assert_eq!(refused.json(), serde_json::json!({"error": "identity_denied", "reason": "identity_required"}));
    assert!(deny.echo.requests().is_empty());

    let anonymous = lab(r#"{"onMissing": "anonymous"}"#);
    let headers = upstream_headers(&client::get(anonymous.http(), "httpbin.org", "/headers").unwrap());
    assert!(values(&headers, "x-workload-identity").is_empty());
}

#[test]
fn a_certificate_that_is_not_an_istio_workload_is_denied() {
    let lab = lab(r#"{"onMissing": "anonymous"}"#);
    for uri in [Some("https://workload.example/app"), Some("spiffe://cluster.local/app/sleep"), None] {
        let cert = lab.client_cert(uri).unwrap();
        let response = lab.mtls_get(&cert, "httpbin.org", "/").unwrap();
        if uri.is_some() {
            assert_eq!(response.status, 403, "{uri:?}");
            assert_eq!(response.header("x-egress-denied-reason"), Some("invalid_peer_identity"));
        } else {
            // A verified certificate without a URI SAN names no workload: anonymous, as configured.
            let headers = upstream_headers(&response);
            assert!(values(&headers, "x-workload-identity").is_empty());
        }
    }
    assert!(lab.echo.requests().iter().all(|r| !r["headers"].to_string().contains("x-workload-identity")));
}

#[test]
fn the_signed_assertion_verifies_only_for_the_exact_request_and_key() {
    let lab = lab(r#"{"signing": {"keyId": "k1", "keyEnv": "EGRESS_ASSERTION_KEY"}}"#);
    let cert = lab.client_cert(Some(SLEEP)).unwrap();
    let response = lab.mtls_get(&cert, "httpbin.org", "/headers?page=2").unwrap();
    let echo = response.json();
    let headers = upstream_headers(&response);
    let header = values(&headers, "x-workload-assertion")[0].to_string();
    // The verifier works from what the upstream received.
    let path = format!("{}?{}", echo["path"].as_str().unwrap(), echo["query"].as_str().unwrap());
    let received = Claims {
        identity: values(&headers, "x-workload-identity")[0],
        method: "GET",
        authority: "httpbin.org",
        path: &path,
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let key = |kid: &str| (kid == "k1").then_some(KEY.as_bytes());

    let verified = assertion::verify(&header, &received, key, now, 300).expect("verifies with the right key");
    assert!(verified.issued_at.abs_diff(now) < 30);
    let wrong_key = |_: &str| Some(&b"some-other-key-0123456789abcdef-0123"[..]);
    assert_eq!(assertion::verify(&header, &received, wrong_key, now, 300), Err(VerifyError::BadSignature));
    let changed_path = Claims { path: "/admin", ..received };
    assert_eq!(assertion::verify(&header, &changed_path, key, now, 300), Err(VerifyError::BadSignature));
    assert_eq!(assertion::verify(&header, &received, key, now + 301, 300), Err(VerifyError::Expired), "replayed later");

    // Two requests never share a nonce.
    let again = upstream_headers(&lab.mtls_get(&cert, "httpbin.org", "/headers?page=2").unwrap());
    let nonce = |h: &str| h.split(';').find_map(|f| f.strip_prefix("nonce=")).unwrap().to_string();
    assert_ne!(nonce(&header), nonce(values(&again, "x-workload-assertion")[0]));
}

#[test]
fn an_invalid_signing_configuration_is_refused() {
    let launcher = egress_harness::envoy::Launcher::find().unwrap();
    let options =
        LabOptions::new(POLICY).with_identity(r#"{"signing": {"keyId": "k1", "keyEnv": "NOT_SET_ANYWHERE"}}"#);
    let error = launcher.validate(&egress_harness::gateway_bootstrap(&options).unwrap()).unwrap_err();
    assert!(error.contains("signing.keyEnv: environment variable `NOT_SET_ANYWHERE` is not set in the VM"), "{error}");
}

#[test]
fn xfcc_names_the_gateway_the_peer_certificate_and_the_caller() {
    let lab = lab(r#"{"xfcc": true}"#);
    let cert = lab.client_cert(Some(SLEEP)).unwrap();
    let headers = upstream_headers(&lab.mtls_get(&cert, "httpbin.org", "/").unwrap());
    let xfcc = values(&headers, "x-forwarded-client-cert");
    assert_eq!(xfcc.len(), 1, "{headers:?}");
    let element = &egress_core::xfcc::parse(xfcc[0]).unwrap()[0];
    assert_eq!(element.by.as_deref(), Some(GATEWAY_SPIFFE_ID));
    assert_eq!(element.uri.as_deref(), Some(SLEEP));
    assert_eq!(element.hash.as_deref().map(str::len), Some(64), "sha256 of the caller's certificate, hex");
}

#[test]
fn a_trusted_hop_may_name_the_caller_others_may_not() {
    let lab = lab(r#"{"trustedHops": ["cluster.local/ns/edge/sa/*"]}"#);
    let forwarded: &[(&str, &str)] = &[("x-forwarded-client-cert", &format!("By={EDGE};URI={BILLING}"))];
    let edge = lab.client_cert(Some(EDGE)).unwrap();
    let headers = upstream_headers(&lab.mtls_request(&edge, "GET", "api.stripe.com", "/", forwarded).unwrap());
    assert_eq!(values(&headers, "x-workload-identity"), [BILLING], "judged and labelled as the forwarded caller");
    assert!(values(&headers, "x-forwarded-client-cert").is_empty(), "consumed, not passed on");

    let sleep = lab.client_cert(Some(SLEEP)).unwrap();
    let response = lab.mtls_request(&sleep, "GET", "api.stripe.com", "/", forwarded).unwrap();
    assert_eq!(response.status, 403, "an untrusted peer's XFCC is ignored: it is judged as itself");
    assert_eq!(response.header("x-egress-denied-reason"), Some("identity_not_allowed"));

    let garbage: &[(&str, &str)] = &[("x-forwarded-client-cert", "URI=\"unterminated")];
    let response = lab.mtls_request(&edge, "GET", "httpbin.org", "/", garbage).unwrap();
    assert_eq!(response.header("x-egress-denied-reason"), Some("invalid_xfcc"));
    assert_eq!(lab.envoy.stat("wasmcustom.egress_identity_via_trusted_hop"), Some(1));
}

#[test]
fn identity_scoped_rules_judge_the_identity_the_filter_established() {
    let lab = lab(r#"{"onMissing": "anonymous"}"#);
    let denied_reason = |response: Response| response.header("x-egress-denied-reason").map(str::to_string);
    let sleep = lab.client_cert(Some(SLEEP)).unwrap();
    let billing = lab.client_cert(Some(BILLING)).unwrap();
    assert_eq!(lab.mtls_get(&sleep, "internal.example", "/").unwrap().status, 200, "workload A may");
    assert_eq!(
        denied_reason(lab.mtls_get(&billing, "internal.example", "/").unwrap()).as_deref(),
        Some("identity_not_allowed")
    );
    assert_eq!(
        denied_reason(client::get(lab.http(), "internal.example", "/").unwrap()).as_deref(),
        Some("identity_not_allowed")
    );
    assert_eq!(lab.mtls_get(&billing, "api.stripe.com", "/").unwrap().status, 200, "by namespace");
    assert_eq!(
        denied_reason(lab.mtls_get(&sleep, "api.stripe.com", "/").unwrap()).as_deref(),
        Some("identity_not_allowed")
    );
    let upstream: Vec<Value> = lab.echo.requests();
    assert_eq!(upstream.len(), 2, "only the allowed requests left the gateway");
}

/// Every request header name a server folds into one of ours: CGI, WSGI, PHP and Rack read `x_workload_identity`
/// (and, in some servers, `x.workload.identity`) as `HTTP_X_WORKLOAD_IDENTITY`.
const ALIASES: &[(&str, &str)] = &[
    ("x_workload_identity", "spiffe://cluster.local/ns/kube-system/sa/forged-1"),
    ("X_Workload_Identity", "spiffe://cluster.local/ns/kube-system/sa/forged-2"),
    ("x-workload_identity", "spiffe://cluster.local/ns/kube-system/sa/forged-3"),
    ("x.workload.identity", "spiffe://cluster.local/ns/kube-system/sa/forged-4"),
    ("x~workload~identity", "spiffe://cluster.local/ns/kube-system/sa/forged-5"),
    ("x_workload_namespace", "forged-namespace"),
    ("X-Workload_Trust_Domain", "forged.example"),
    ("x_workload_service_account", "forged-account"),
    ("x_workload_assertion", "v1;kid=k1;ts=1;nonce=00000000000000000000000000000000;sig=forged"),
    ("x_forwarded_client_cert", "URI=spiffe://cluster.local/ns/kube-system/sa/forged-6"),
    ("X-Forwarded_Client-Cert", "URI=spiffe://cluster.local/ns/kube-system/sa/forged-7"),
];

/// Headers (or trailers) the upstream received that a server would read as one of the suite's headers, and any
/// value a client forged.
fn aliased<'a>(received: &'a [(String, String)], gateway_set: &[&str]) -> Vec<&'a (String, String)> {
    let ours = [
        "x-workload-identity",
        "x-workload-trust-domain",
        "x-workload-namespace",
        "x-workload-service-account",
        "x-workload-assertion",
        "x-forwarded-client-cert",
    ];
    received
        .iter()
        .filter(|(name, value)| {
            let alias =
                ours.iter().any(|o| egress_core::headers::is_alias(name, o)) && !gateway_set.contains(&name.as_str());
            alias || value.contains("forged")
        })
        .collect()
}

fn pairs(values: &Value) -> Vec<(String, String)> {
    values
        .as_array()
        .map(|list| list.iter().map(|h| (h[0].as_str().unwrap().into(), h[1].as_str().unwrap().into())).collect())
        .unwrap_or_default()
}

#[test]
fn identity_headers_cannot_be_aliased_over_http1_or_http2() {
    let lab = lab(r#"{"onMissing": "anonymous", "signing": {"keyId": "k1", "keyEnv": "EGRESS_ASSERTION_KEY"}}"#);
    // HTTP/1.1, with an identity: only the gateway's own headers arrive.
    let cert = lab.client_cert(Some(SLEEP)).unwrap();
    let headers = upstream_headers(&lab.mtls_request(&cert, "GET", "httpbin.org", "/headers", ALIASES).unwrap());
    let gateway_set = [
        "x-workload-identity",
        "x-workload-trust-domain",
        "x-workload-namespace",
        "x-workload-service-account",
        "x-workload-assertion",
    ];
    assert!(aliased(&headers, &gateway_set).is_empty(), "{:?}", aliased(&headers, &gateway_set));
    assert_eq!(values(&headers, "x-workload-identity"), [SLEEP]);
    // HTTP/1.1 and HTTP/2 without an identity: nothing of ours arrives.
    let plain = upstream_headers(&client::request(lab.http(), "GET", "httpbin.org", "/headers", ALIASES, b"").unwrap());
    assert!(aliased(&plain, &[]).is_empty(), "{:?}", aliased(&plain, &[]));
    let lowercase: Vec<(String, &str)> = ALIASES.iter().map(|(n, v)| (n.to_ascii_lowercase(), *v)).collect();
    let h2_headers: Vec<(&str, &str)> = lowercase.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    let request = H2Request {
        method: "GET",
        authority: "httpbin.org",
        path: "/headers",
        headers: &h2_headers,
        ..Default::default()
    };
    let h2 = upstream_headers(&client::h2_request(lab.http(), &request).unwrap());
    assert!(aliased(&h2, &[]).is_empty(), "{:?}", aliased(&h2, &[]));
    assert_eq!(lab.envoy.stat("wasmcustom.egress_identity_spoofed_headers_removed"), Some(3));
}

#[test]
fn identity_headers_cannot_ride_in_trailers() {
    let lab = lab(r#"{"onMissing": "anonymous"}"#);
    let forged = [
        ("x-workload-identity", "spiffe://cluster.local/ns/kube-system/sa/forged"),
        ("x_workload_namespace", "forged"),
        ("x-trace", "kept"),
    ];
    // HTTP/2: trailers in a HEADERS frame after the body.
    let request = H2Request {
        method: "POST",
        authority: "httpbin.org",
        path: "/anything",
        body: b"data",
        trailers: &forged,
        ..Default::default()
    };
    let echo = client::h2_request(lab.http(), &request).unwrap().json();
    let trailers = pairs(&echo["trailers"]);
    assert_eq!(trailers, [("x-trace".to_string(), "kept".to_string())], "trailers reach the upstream, ours do not");
    // HTTP/1.1: a chunked body's trailer section.
    let chunked = b"POST /anything HTTP/1.1\r\nHost: httpbin.org\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
4\r\ndata\r\n0\r\nX-Workload-Identity: spiffe://cluster.local/ns/kube-system/sa/forged\r\nx.workload.namespace: forged\r\nx-trace: kept\r\n\r\n";
    let echo = client::raw_http1(lab.http(), chunked).unwrap().json();
    assert_eq!(echo["body"], "data");
    let trailers = pairs(&echo["trailers"]);
    assert_eq!(trailers, [("x-trace".to_string(), "kept".to_string())], "{echo}");
    assert!(!lab.echo.requests().iter().any(|r| r.to_string().contains("forged")));
}

#[test]
fn tunnels_are_refused_by_default_and_untagged_when_allowed() {
    let lab = lab(r#"{"onMissing": "anonymous"}"#);
    let (refused, tunnel) = client::connect_tunnel(lab.http(), "httpbin.org:80").unwrap();
    assert_eq!((refused.status, refused.header("x-egress-denied-reason")), (403, Some("tunnel_not_allowed")));
    assert!(tunnel.is_none());
    let cert = lab.client_cert(Some(SLEEP)).unwrap();
    let connect = lab.mtls_request(&cert, "CONNECT", "httpbin.org:443", "httpbin.org:443", &[]).unwrap();
    assert_eq!(connect.header("x-egress-denied-reason"), Some("tunnel_not_allowed"), "whoever the caller");
    let passthrough = client::tls_get(lab.tls(), Some("httpbin.org"), lab.pki.ca_pem(), "httpbin.org", "/");
    assert!(passthrough.is_err(), "TLS passthrough is closed: {passthrough:?}");
    assert!(lab.echo.requests().is_empty(), "nothing left the gateway");
    assert_eq!(lab.envoy.stat("wasmcustom.egress_identity_tunnels_denied"), Some(3));
    // Each refusal is its request's (or connection's) decision in the access log.
    let refused_in_log = || {
        let lines = lab.access_log();
        lines.iter().filter(|l| l["decision"].as_str().is_some_and(|d| d.contains("tunnel_not_allowed"))).count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while refused_in_log() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(refused_in_log(), 3, "{:?}", lab.access_log());

    // `tunnels: allow`: through, and what the caller writes inside reaches the upstream as written.
    let allowing = lab_allowing_tunnels();
    let (response, tunnel) = client::connect_tunnel(allowing.http(), "httpbin.org:80").unwrap();
    assert_eq!(response.status, 200);
    let forged = [("x-workload-identity", "spiffe://cluster.local/ns/billing/sa/api")];
    let inside =
        client::exchange(&mut tunnel.unwrap(), &client::build_request("GET", "httpbin.org", "/headers", &forged, b""))
            .unwrap();
    assert_eq!(
        values(&upstream_headers(&inside), "x-workload-identity"),
        ["spiffe://cluster.local/ns/billing/sa/api"],
        "untagged: only a signed assertion proves anything here"
    );
    let passthrough = client::tls_get(allowing.tls(), Some("httpbin.org"), allowing.pki.ca_pem(), "httpbin.org", "/");
    assert_eq!(passthrough.unwrap().status, 200);
}

fn lab_allowing_tunnels() -> Lab {
    lab(r#"{"onMissing": "anonymous", "tunnels": "allow"}"#)
}

/// X.509-SVID §2: an SVID has exactly one URI SAN, and validators must refuse one with more. Envoy shows Wasm the
/// whole certificate from 1.38 on; before, only the first URI SAN (the documented limit).
#[test]
fn a_certificate_with_more_than_one_uri_san_names_no_one() {
    let lab = lab(r#"{"onMissing": "anonymous"}"#);
    let whole_certificate = lab.envoy.release().unwrap() >= (1, 38, 0);
    for uris in [[SLEEP, BILLING], [BILLING, SLEEP], [SLEEP, SLEEP], [SLEEP, "https://example.com/other"]] {
        let cert = lab.pki.issue_client_with_uris(&uris).unwrap();
        let response = lab.mtls_get(&cert, "internal.example", "/").unwrap();
        if whole_certificate {
            assert_eq!(
                (response.status, response.header("x-egress-denied-reason")),
                (403, Some("multiple_uri_sans")),
                "{uris:?}"
            );
        } else {
            let first_is_sleep = uris[0] == SLEEP;
            assert_eq!(response.status == 200, first_is_sleep, "Envoy < 1.38: judged as the first URI SAN, {uris:?}");
        }
    }
    let three = lab.pki.issue_client_with_uris(&[SLEEP, BILLING, EDGE]).unwrap();
    let response = lab.mtls_get(&three, "httpbin.org", "/").unwrap();
    if whole_certificate {
        assert_eq!(response.header("x-egress-denied-reason"), Some("multiple_uri_sans"));
    }
    let one = lab.pki.issue_client_with_uris(&[SLEEP]).unwrap();
    assert_eq!(lab.mtls_get(&one, "internal.example", "/").unwrap().status, 200);

    // The allow-list alone (no identity filter) reads the certificate itself: such a caller has no identity.
    let allowlist_only = Lab::start(&LabOptions::new(POLICY)).unwrap();
    let two = allowlist_only.pki.issue_client_with_uris(&[SLEEP, BILLING]).unwrap();
    let response = allowlist_only.mtls_get(&two, "internal.example", "/").unwrap();
    if whole_certificate {
        assert_eq!(response.header("x-egress-denied-reason"), Some("identity_not_allowed"));
    }
}
