//! The suite exactly as `wasmplugin-manifests/wasmplugins` deploys it: every plugin, in Istio's order, with its
//! `pluginConfig` (examples/policy.yaml and examples/istio/), the signing key from the gateway's environment and the
//! audit collector on the cluster name the configuration gives. Real traffic through a real Envoy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use egress_core::assertion::{self, Claims};
use egress_harness::collector::Collector;
use egress_harness::{client, manifests_dir, Lab, LabOptions};
use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const KEY: &str = "deployed-chain-signing-key-0123456789abcdef";
const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";
const BILLING: &str = "spiffe://cluster.local/ns/billing/sa/payments";

fn header<'a>(echo: &'a Value, name: &str) -> Option<&'a str> {
    echo["headers"].as_array()?.iter().find(|h| h[0] == name).and_then(|h| h[1].as_str())
}

#[test]
fn the_deployed_chain_identifies_vets_signs_and_audits() {
    let collector = Collector::start().unwrap();
    let mut options =
        LabOptions::deployed(&manifests_dir(), vec![("EGRESS_ASSERTION_KEY".into(), KEY.into())]).unwrap();
    options.collector = Some(collector.addr());
    let lab = Lab::start(&options).expect("the deployed chain starts");
    let sleep = lab.client_cert(Some(SLEEP)).unwrap();

    // An allowed host over ISTIO_MUTUAL: the upstream sees the caller and a signature it can verify.
    let response = lab.mtls_get(&sleep, "httpbin.org", "/headers").unwrap();
    assert_eq!(response.status, 200, "{}", response.body_str());
    let echo = response.json();
    assert_eq!(header(&echo, "x-workload-identity"), Some(SLEEP));
    let claims = Claims { identity: SLEEP, method: "GET", authority: "httpbin.org", path: "/headers" };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let signed = header(&echo, "x-workload-assertion").expect("signed");
    let verified =
        assertion::verify(signed, &claims, |kid| (kid == "egress-2026-1").then_some(KEY.as_bytes()), now, 300);
    assert!(verified.is_ok(), "{verified:?}");

    // The deny list wins over the wildcard rule; namespace-scoped rules see the verified caller.
    assert_eq!(lab.mtls_get(&sleep, "a.internal.httpbin.org", "/").unwrap().status, 403);
    assert_eq!(lab.mtls_get(&sleep, "api.stripe.com", "/v1/charges").unwrap().status, 403);
    let billing = lab.client_cert(Some(BILLING)).unwrap();
    assert_eq!(lab.mtls_get(&billing, "api.stripe.com", "/v1/charges").unwrap().status, 200);

    // Without a workload certificate the identity filter refuses (onMissing: deny), before any rule is read.
    let anonymous = client::get(lab.http(), "httpbin.org", "/headers").unwrap();
    assert_eq!(anonymous.status, 403, "{}", anonymous.body_str());
    assert!(anonymous.body_str().contains("identity_required"), "{}", anonymous.body_str());

    // A redirect to a host off the policy never reaches the client as a 3xx to follow.
    let redirect = lab.mtls_get(&sleep, "httpbin.org", "/redirect-to?url=http%3A%2F%2Fevil.example%2F").unwrap();
    assert_ne!(redirect.status / 100, 3, "{}", redirect.body_str());

    // Tunnels are refused (`tunnels: deny`): inside one the gateway could neither tag nor strip identity headers.
    // TLS passthrough is closed before any SNI is judged, CONNECT answered 403.
    let passthrough = client::tls_get(lab.tls(), Some("eu.httpbin.org"), lab.pki.ca_pem(), "eu.httpbin.org", "/");
    assert!(passthrough.is_err(), "{passthrough:?}");
    let connect = lab.mtls_request(&sleep, "CONNECT", "httpbin.org:443", "httpbin.org:443", &[]).unwrap();
    assert_eq!(connect.status, 403, "{}", connect.body_str());
    assert_eq!(connect.header("x-egress-denied-reason"), Some("tunnel_not_allowed"));

    // Every request and connection above, at the collector named by the deployed audit configuration, each refusal
    // with its reason (the identity filter's own refusals included). The followed redirect is one request.
    let events = collector.wait_for_events(8, Duration::from_secs(20));
    let compact: Vec<String> = events.iter().map(Value::to_string).collect();
    assert_eq!(events.len(), 8, "{compact:#?}");
    let tunnels: Vec<&Value> = events.iter().filter(|e| e["tunnel"] == true).collect();
    assert_eq!(tunnels.len(), 2, "{compact:#?}");
    for tunnel in tunnels {
        assert_eq!(tunnel["decision"]["reason"], "tunnel_not_allowed", "{tunnel}");
    }
    let denied: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e["decision"]["action"] == "deny")
        .map(|e| (e["destination"]["host"].as_str().unwrap(), e["decision"]["reason"].as_str().unwrap()))
        .collect();
    for expected in [
        ("a.internal.httpbin.org", "deny_listed"),
        ("api.stripe.com", "identity_not_allowed"),
        ("httpbin.org", "identity_required"),
        ("httpbin.org", "tunnel_not_allowed"),
        ("eu.httpbin.org", "tunnel_not_allowed"),
    ] {
        assert!(denied.contains(&expected), "{expected:?} in {denied:?}");
    }
    let tls_denied = events.iter().find(|e| e["kind"] == "tls" && e["decision"]["action"] == "deny");
    assert_eq!(tls_denied.unwrap()["destination"]["sni"], "eu.httpbin.org", "a refused connection is audited too");
    assert_eq!(denied.len(), 5, "{compact:#?}");
    // The refused redirect is the client's (allowed) request with its refused hop.
    let redirect = events.iter().find(|e| e["request"]["path"] == "/redirect-to").unwrap();
    assert_eq!(
        (redirect["destination"]["host"].as_str(), redirect["decision"]["action"].as_str()),
        (Some("httpbin.org"), Some("allow"))
    );
    assert_eq!(
        (redirect["redirects"][0]["location"].as_str(), redirect["redirects"][0]["reason"].as_str()),
        (Some("http://evil.example/"), Some("host_not_allowed"))
    );
}
