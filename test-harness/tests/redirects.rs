//! The redirects filter in a real Envoy, before the allow-list on requests as Istio chains them: 3xx from the echo upstream's
//! `/redirect-to`, `/absolute-redirect/N` and `/loop`, vetted (passed to the client) and followed at the gateway.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use egress_harness::bootstrap::PathNormalization;
use egress_harness::client::{self, Response};
use egress_harness::{Lab, LabOptions};
use serde_json::Value;
use std::time::{Duration, Instant};

const RULES: &str = r#"
  "rules": [
    {"name": "httpbin", "hosts": ["httpbin.org", "*.httpbin.org"]},
    {"name": "manual", "hosts": ["manual.example"], "redirects": {"follow": false}},
    {"name": "docs-net", "cidrs": ["203.0.113.0/24"]}
  ],
  "deny": {"hosts": ["metadata.google.internal"], "cidrs": ["169.254.0.0/16"]}"#;

fn lab(policy: &str) -> Lab {
    let options = LabOptions { redirects: true, ..LabOptions::new(policy) };
    Lab::start(&options).expect("start the gateway")
}

fn vetting_lab() -> Lab {
    lab(&format!("{{{RULES}}}"))
}

fn following_lab() -> Lab {
    lab(&format!(r#"{{{RULES}, "redirects": {{"follow": true, "maxHops": 3}}}}"#))
}

/// GET httpbin.org/redirect-to?url=<location>&status_code=<status>.
fn redirect_to(lab: &Lab, location: &str, status: u16) -> Response {
    let query: String = url_encode(location);
    client::get(lab.http(), "httpbin.org", &format!("/redirect-to?url={query}&status_code={status}")).unwrap()
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[track_caller]
fn assert_refused(response: &Response, status: u16, reason: &str) {
    assert_eq!(response.status, status, "body: {}", response.body_str());
    assert_eq!(response.header("x-egress-denied-reason"), Some(reason), "body: {}", response.body_str());
    assert_eq!(response.header("location"), None, "the Location never reaches the client");
}

/// The final access-log line of the request whose path contains `path_part`, once Envoy has flushed it. (Envoy
/// also logs each followed hop, with `details: internal_redirect`.)
fn logged(lab: &Lab, path_part: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let found =
            lab.access_log().into_iter().rev().find(|l| {
                l["path"].as_str().is_some_and(|p| p.contains(path_part)) && l["details"] != "internal_redirect"
            });
        match found {
            Some(line) => return line,
            None if Instant::now() > deadline => panic!("no access log line for {path_part}: {:?}", lab.access_log()),
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn chain(line: &Value) -> Vec<Value> {
    serde_json::from_str(line["redirects"].as_str().unwrap_or("[]")).unwrap_or_default()
}

#[test]
fn allowed_redirects_pass_and_refused_ones_never_show_their_location() {
    let lab = vetting_lab();
    let allowed = redirect_to(&lab, "http://eu.httpbin.org/get", 302);
    assert_eq!((allowed.status, allowed.header("location")), (302, Some("http://eu.httpbin.org/get")));
    for (location, reason) in [
        ("http://evil.example/steal?token=abc", "host_not_allowed"),
        ("http://metadata.google.internal/computeMetadata/v1/", "deny_listed"),
        ("http://169.254.169.254/latest/meta-data/", "deny_listed"),
        ("http://2852039166/latest/meta-data/", "deny_listed"),
        ("http://10.0.0.1/", "ip_literal_not_allowed"),
        ("javascript:alert(1)", "non_http_scheme"),
        ("file:///etc/passwd", "non_http_scheme"),
        ("gopher://httpbin.org:70/", "non_http_scheme"),
        ("http://httpbin.org@evil.example/", "malformed_location"),
        ("http://evil.example\\@httpbin.org/", "malformed_location"),
        ("/\\evil.example/", "malformed_location"),
        ("http://evil%2eexample/", "malformed_location"),
    ] {
        let refused = redirect_to(&lab, location, 302);
        assert_refused(&refused, 403, reason);
        assert_eq!(refused.json()["error"], "redirect_denied");
        assert!(!refused.body_str().contains("token=abc"), "{location}: {}", refused.body_str());
    }
    assert_eq!(redirect_to(&lab, "http://203.0.113.5/", 307).status, 307, "an IP allowed by CIDR");
    assert_eq!(lab.envoy.stat("wasmcustom.egress_redirects_denied"), Some(12));
}

/// curl `-L`, Java's `HttpURLConnection` and Node's follow-redirects follow statuses RFC 9110 does not call
/// redirects (300, 305 "use proxy", …): a `Location` on any 3xx is vetted.
#[test]
fn a_location_on_any_3xx_is_vetted() {
    let lab = vetting_lab();
    let statuses = [300, 301, 302, 303, 304, 305, 306, 307, 308, 309, 350, 399];
    for status in statuses {
        for (location, reason) in [
            ("http://evil.test/", "host_not_allowed"),
            ("http://169.254.169.254/latest/meta-data/", "deny_listed"),
            ("http://[::ffff:169.254.169.254]/", "deny_listed"),
            ("//evil.test/", "host_not_allowed"),
            ("javascript:alert(1)", "non_http_scheme"),
            ("http://evil.test\\@httpbin.org/", "malformed_location"),
        ] {
            let refused = redirect_to(&lab, location, status);
            assert_refused(&refused, 403, reason);
            assert_eq!(refused.json()["status"], status, "{status} {location}");
        }
        let allowed = redirect_to(&lab, "http://eu.httpbin.org/get", status);
        assert_eq!((allowed.status, allowed.header("location")), (status, Some("http://eu.httpbin.org/get")));
    }
    assert_eq!(lab.envoy.stat("wasmcustom.egress_redirects_denied"), Some(6 * statuses.len() as u64));
    assert_eq!(lab.envoy.stat("wasmcustom.egress_redirects_allowed"), Some(statuses.len() as u64));
}

#[test]
fn a_redirect_after_a_post_is_vetted_for_every_method_a_client_may_follow_with() {
    let lab = lab(
        r#"{"rules": [{"name": "httpbin", "hosts": ["httpbin.org"]}, {"name": "ro", "hosts": ["ro.example"], "methods": ["GET"]}]}"#,
    );
    let post = |status: u16| {
        let path = format!("/redirect-to?url={}&status_code={status}", url_encode("http://ro.example/"));
        client::request(lab.http(), "POST", "httpbin.org", &path, &[], b"x").unwrap()
    };
    // 303 is always followed with GET; 307/308 keep POST; on the others clients do either, so both must pass.
    assert_eq!(post(303).status, 303);
    for status in [300, 301, 302, 305, 307, 308, 399] {
        assert_refused(&post(status), 403, "method_not_allowed");
    }
}

#[test]
fn relative_and_protocol_relative_locations_resolve_against_the_request() {
    let lab = vetting_lab();
    let relative = client::get(lab.http(), "httpbin.org", "/redirect/2").unwrap();
    assert_eq!((relative.status, relative.header("location")), (302, Some("/redirect/1")));
    let same_host = redirect_to(&lab, "//eu.httpbin.org/get", 301);
    assert_eq!((same_host.status, same_host.header("location")), (301, Some("//eu.httpbin.org/get")));
    assert_refused(&redirect_to(&lab, "//evil.example/get", 301), 403, "host_not_allowed");
    let dot_segments = redirect_to(&lab, "../../../elsewhere", 302);
    assert_eq!(dot_segments.status, 302, "dot segments cannot climb out of the host");
}

/// A gateway that does not normalise paths passes on one that browsers and RFC 3986 resolve relative references
/// against differently (`\\` is `/` to browsers; a last dot segment is resolved within the base by browsers, dropped
/// by RFC 3986's merge): a relative `Location` answering it would reach two targets, so it is refused. Under Istio's
/// default normalisation the same request reaches the upstream normalised, and its redirect passes.
#[test]
fn a_relative_location_against_a_path_clients_read_two_ways_is_refused() {
    let redirect = |lab: &Lab, path: &str, location: &str| {
        let query = format!("?url={}&status_code=302", url_encode(location));
        client::get(lab.http(), "httpbin.org", &format!("{path}{query}")).unwrap()
    };
    let policy = format!("{{{RULES}}}");
    let options =
        LabOptions { redirects: true, path_normalization: PathNormalization::None, ..LabOptions::new(&policy) };
    let raw = Lab::start(&options).expect("start the gateway");
    for path in ["/redirect-to/a\\b", "/redirect-to/a/..", "/redirect-to/a/%2E", "/redirect-to/a/.%2e"] {
        for location in ["next", "../next", "?page=2"] {
            assert_refused(&redirect(&raw, path, location), 403, "malformed_location");
        }
        let absolute = redirect(&raw, path, "/next");
        assert_eq!((absolute.status, absolute.header("location")), (302, Some("/next")), "{path}");
    }
    let plain = redirect(&raw, "/redirect-to/a/b", "next");
    assert_eq!((plain.status, plain.header("location")), (302, Some("next")));

    let normalised = vetting_lab();
    let passed = redirect(&normalised, "/redirect-to/a/..", "next");
    assert_eq!((passed.status, passed.header("location")), (302, Some("next")));
}

#[test]
fn a_3xx_without_location_passes_unchanged() {
    let lab = vetting_lab();
    let bare = client::get(lab.http(), "httpbin.org", "/status/302").unwrap();
    assert_eq!((bare.status, bare.header("location")), (302, None));
}

#[test]
fn an_https_to_http_downgrade_is_refused() {
    let lab = vetting_lab();
    let cert = lab.client_cert(Some("spiffe://cluster.local/ns/app/sa/sleep")).unwrap();
    let path = format!("/redirect-to?url={}&status_code=301", url_encode("http://eu.httpbin.org/get"));
    // The mTLS listener serves https: the request went out over TLS, the redirect would leave it.
    let downgrade = lab.mtls_get(&cert, "httpbin.org", &path).unwrap();
    assert_refused(&downgrade, 403, "redirect_downgrade");
    let path = format!("/redirect-to?url={}&status_code=301", url_encode("https://eu.httpbin.org/get"));
    assert_eq!(lab.mtls_get(&cert, "httpbin.org", &path).unwrap().status, 301);
}

#[test]
fn report_mode_lets_refused_redirects_through_and_records_them() {
    let lab = lab(&format!(r#"{{"mode": "report", {RULES}}}"#));
    let response = redirect_to(&lab, "http://evil.example/", 302);
    assert_eq!((response.status, response.header("location")), (302, Some("http://evil.example/")));
    let hops = chain(&logged(&lab, "evil.example"));
    assert_eq!(hops.len(), 1);
    assert_eq!(
        (hops[0]["action"].as_str(), hops[0]["reason"].as_str()),
        (Some("report-deny"), Some("host_not_allowed"))
    );
    assert_eq!(hops[0]["location"], "http://evil.example/");
    assert_eq!(lab.envoy.stat("wasmcustom.egress_redirects_would_deny"), Some(1));
}

#[test]
fn tls_origination_mode_keeps_clients_on_the_gateway_path() {
    let lab = lab(&format!(r#"{{{RULES}, "redirects": {{"originateTls": ["*.httpbin.org", "httpbin.org"]}}}}"#));
    let response = redirect_to(&lab, "https://eu.httpbin.org/get?a=1", 302);
    assert_eq!((response.status, response.header("location")), (302, Some("http://eu.httpbin.org/get?a=1")));
    assert_eq!(lab.envoy.stat("wasmcustom.egress_redirects_rewritten"), Some(1));
}

#[test]
fn the_gateway_follows_allowed_redirects_and_returns_the_final_response() {
    let lab = following_lab();
    let response = redirect_to(&lab, "http://eu.httpbin.org/headers", 302);
    assert_eq!(response.status, 200, "{}", response.body_str());
    assert_eq!(response.json()["host"], "eu.httpbin.org", "the final host answered");
    let upstream: Vec<String> = lab.echo.requests().iter().map(|r| r["host"].as_str().unwrap().to_string()).collect();
    assert_eq!(upstream, ["httpbin.org", "eu.httpbin.org"]);
    let hops = chain(&logged(&lab, "/headers"));
    assert_eq!(hops.len(), 1, "{hops:?}");
    assert_eq!(
        (hops[0]["location"].as_str(), hops[0]["followed"].as_bool()),
        (Some("http://eu.httpbin.org/headers"), Some(true))
    );

    let three = client::get(lab.http(), "a.httpbin.org", "/absolute-redirect/3").unwrap();
    assert_eq!((three.status, three.json()["path"].as_str()), (200, Some("/absolute-redirect/0")));
}

#[test]
fn a_followed_hop_to_a_refused_host_is_never_sent() {
    let lab = following_lab();
    let response = redirect_to(&lab, "http://evil.example/", 302);
    assert_eq!(response.status, 403);
    assert_eq!(response.header("x-egress-denied-reason"), Some("host_not_allowed"));
    let upstream: Vec<String> = lab.echo.requests().iter().map(|r| r["host"].as_str().unwrap().to_string()).collect();
    assert_eq!(upstream, ["httpbin.org"], "evil.example received nothing");
    assert_refused(&redirect_to(&lab, "ftp://eu.httpbin.org/", 302), 403, "non_http_scheme");
}

#[test]
fn loops_and_hop_limits_end_in_508() {
    let lab = following_lab();
    assert_refused(&client::get(lab.http(), "httpbin.org", "/loop").unwrap(), 508, "redirect_loop");
    let too_many = client::get(lab.http(), "httpbin.org", "/absolute-redirect/5").unwrap();
    assert_refused(&too_many, 508, "too_many_redirects");
    assert_eq!(too_many.json()["hops"], 3);
    assert_eq!(lab.envoy.stat("wasmcustom.egress_redirects_loops"), Some(1));
    assert_eq!(lab.envoy.stat("wasmcustom.egress_redirects_hop_limit"), Some(1));
}

#[test]
fn methods_and_bodies_follow_rfc_9110() {
    let lab = following_lab();
    let post = |status: u16| {
        let path = format!("/redirect-to?url={}&status_code={status}", url_encode("http://eu.httpbin.org/anything"));
        client::request(lab.http(), "POST", "httpbin.org", &path, &[("content-type", "text/plain")], b"the body")
            .unwrap()
    };
    let see_other = post(303).json();
    assert_eq!(
        (see_other["method"].as_str(), see_other["body"].as_str()),
        (Some("GET"), Some("")),
        "303: GET, no body"
    );
    for status in [307, 308] {
        let kept = post(status).json();
        assert_eq!((kept["method"].as_str(), kept["body"].as_str()), (Some("POST"), Some("the body")), "{status}");
    }
    // Envoy keeps POST for 301/302 when it follows (RFC 9110 allows either; changing it silently would be worse).
    let found = post(302).json();
    assert_eq!((found["method"].as_str(), found["body"].as_str()), (Some("POST"), Some("the body")));
}

#[test]
fn credentials_never_follow_a_change_of_origin() {
    let lab = following_lab();
    let with_credentials = |location: &str| {
        let path = format!("/redirect-to?url={}", url_encode(location));
        let headers = [
            ("authorization", "Bearer secret-1"),
            ("Cookie", "session=secret-2"),
            ("proxy-authorization", "Basic secret-3"),
            // The same names to a CGI-style server (HTTP_AUTHORIZATION, HTTP_PROXY_AUTHORIZATION).
            ("proxy_authorization", "Basic secret-4"),
            ("Proxy.Authorization", "Basic secret-5"),
        ];
        let response = client::request(lab.http(), "GET", "httpbin.org", &path, &headers, b"").unwrap();
        assert_eq!(response.status, 200, "{location}: {}", response.body_str());
        response.json()
    };
    // Another host, another port, another scheme: another origin (RFC 6454), as curl (CVE-2022-27776) and the
    // Fetch standard decide.
    for location in [
        "http://eu.httpbin.org/headers?token=abc",
        "http://httpbin.org:8081/headers",
        "https://httpbin.org/headers",
        "http://HTTPBIN.org.:8080/headers",
    ] {
        let upstream = with_credentials(location);
        let text = upstream["headers"].to_string();
        assert!(!text.contains("secret"), "{location}: {text}");
        assert!(!text.contains("x-envoy-original-url"), "the previous URL stays at the gateway: {text}");
        assert_ne!(upstream["path"], "/redirect-to", "{location} was followed");
    }
    for location in ["http://httpbin.org/headers", "http://httpbin.org:80/headers", "http://HTTPBIN.ORG./headers"] {
        let same_origin = with_credentials(location)["headers"].to_string();
        for secret in 1..=5 {
            assert!(same_origin.contains(&format!("secret-{secret}")), "{location}: {same_origin}");
        }
    }
}

#[test]
fn a_rule_that_does_not_follow_hands_the_redirect_back_to_the_client() {
    let lab = following_lab();
    let response = redirect_to(&lab, "http://manual.example/download?id=7", 302);
    assert_eq!((response.status, response.header("location")), (302, Some("http://manual.example/download?id=7")));
    assert_eq!(response.header("x-egress-denied-reason"), Some("rule_does_not_follow"));
    assert_eq!(lab.echo.requests().len(), 1, "the gateway did not fetch it");
}

#[test]
fn only_what_envoy_follows_is_followed_and_every_other_3xx_is_vetted_for_the_client() {
    let lab = following_lab();
    for status in [300, 304, 305, 306, 399] {
        let allowed = redirect_to(&lab, "http://eu.httpbin.org/headers", status);
        assert_eq!((allowed.status, allowed.header("location")), (status, Some("http://eu.httpbin.org/headers")));
        assert_refused(&redirect_to(&lab, "http://evil.test/", status), 403, "host_not_allowed");
    }
    let hosts: Vec<String> = lab.echo.requests().iter().map(|r| r["host"].as_str().unwrap().to_string()).collect();
    assert!(hosts.iter().all(|h| h == "httpbin.org"), "no hop was sent: {hosts:?}");
    let hops = chain(&logged(&lab, "status_code=399"));
    assert_eq!(hops.len(), 1, "{hops:?}");
    assert_eq!((hops[0]["status"].as_u64(), hops[0]["followed"].as_bool()), (Some(399), None));
}

#[test]
fn clients_cannot_fake_hop_state() {
    let lab = following_lab();
    let forged: &[(&str, &str)] = &[
        ("x-envoy-original-url", "http://eu.httpbin.org/elsewhere"),
        ("x-envoy-internal", "true"),
        ("x-envoy-internal-redirect-count", "0"),
    ];
    let loop_again = client::request(lab.http(), "GET", "httpbin.org", "/loop", forged, b"").unwrap();
    assert_refused(&loop_again, 508, "redirect_loop");
    let limit = client::request(lab.http(), "GET", "httpbin.org", "/absolute-redirect/5", forged, b"").unwrap();
    assert_refused(&limit, 508, "too_many_redirects");
    let first = client::request(lab.http(), "GET", "evil.example", "/", forged, b"").unwrap();
    assert_eq!(first.header("x-egress-denied-reason"), Some("host_not_allowed"), "a first request is vetted as one");
}
