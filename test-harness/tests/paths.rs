//! Path-scoped rules in a real Envoy, against every spelling of "somewhere else" that common upstream servers read
//! differently (Tomcat/Spring `..;`, double decoding, IIS `%u`, Windows trailing dots, overlong UTF-8, `//`, escaped
//! separators), over HTTP/1.1 and HTTP/2, under each of Istio's `pathNormalization` modes, and as the hops of a
//! followed redirect. Whatever Envoy did to the path first, it either reaches the upstream inside `/public/` or not at
//! all.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use egress_harness::bootstrap::PathNormalization;
use egress_harness::client::{self, H2Request, Response};
use egress_harness::{Lab, LabOptions};

const POLICY: &str = r#"{
  "rules": [
    {"name": "public", "hosts": ["api.example"], "paths": ["/public/*", "/redirect-to"]}
  ],
  "redirects": {"follow": true, "maxHops": 3}
}"#;

/// Raw HTTP/1.1 request targets that name a resource outside `/public/` for some common server.
const WALK_OUTS: &[&[u8]] = &[
    b"/public/%2e%2e;/private/x",
    b"/public/%2E%2E;/private/x",
    b"/public/..;/private/x",
    b"/public/.;/../private",
    b"/public/..;jsessionid=1/private",
    b"/public/%2e%2e/private",
    b"/public/.%2e/private",
    b"/public/%2e./private",
    b"/public/%252e%252e/private",
    b"/public/%25252e%25252e/private",
    b"/public/%%32%65%%32%65/private",
    b"/public/%u002e%u002e/private",
    b"/public/%U002E%U002E/private",
    b"/public/%c0%ae%c0%ae/private",
    b"/public/%e0%80%ae%e0%80%ae/private",
    b"/public/%ef%bc%8e%ef%bc%8e/private",
    b"/public/..%2fprivate",
    b"/public/..%2Fprivate",
    b"/public%2f..%2fprivate",
    b"/public/..%5cprivate",
    b"/public/..\\private",
    b"/public/..%255cprivate",
    b"/public/..%3bprivate/../..",
    b"/public/...",
    b"/public/..%20/private",
    b"/public/..%3f/private",
    b"/public/..%23/private",
    b"/public//../private",
    b"/public/%00/../private",
    b"/public/x#/../../private",
    b"/public/\xc0\xae\xc0\xae/private",
];

fn lab(normalization: PathNormalization) -> Lab {
    let options = LabOptions { path_normalization: normalization, redirects: true, ..LabOptions::new(POLICY) };
    Lab::start(&options).expect("start the gateway")
}

fn raw_get(lab: &Lab, target: &[u8]) -> std::io::Result<Response> {
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(target);
    request.extend_from_slice(b" HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n\r\n");
    client::raw_http1(lab.http(), &request)
}

/// The paths the upstream received, as it received them.
fn upstream_paths(lab: &Lab) -> Vec<String> {
    lab.echo.requests().iter().map(|r| r["path"].as_str().unwrap().to_string()).collect()
}

/// Whether the upstream read a path under `/public/`, or the root `/public` itself, and nothing that leaves it by
/// any server's reading: no dot segment, parameter trick or escape of a separator left in it.
fn stays_public(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    path.starts_with("/public/")
        && !path.contains("/..")
        && !path.contains("/.;")
        && !path.contains("//")
        && !["%2e", "%2f", "%5c", "%3b", "%25", "%u", "%c0", "%e0", "%ef", "\\"].iter().any(|bad| lower.contains(bad))
}

#[test]
fn no_spelling_walks_out_of_a_path_scoped_rule_in_any_istio_mode() {
    for normalization in PathNormalization::ALL {
        let lab = lab(normalization);
        for target in WALK_OUTS {
            let shown = String::from_utf8_lossy(target);
            let outcome = match raw_get(&lab, target) {
                Ok(response) => {
                    let reason = response.header("x-egress-denied-reason").map(str::to_string);
                    format!("{} {reason:?}", response.status)
                }
                Err(error) => format!("closed: {error}"),
            };
            // Refused by the filter (403 ambiguous_path or path_not_allowed), or by Envoy's codec (400, closed);
            // if it went through, Envoy had already made it a path inside `/public/`.
            let refused = outcome.starts_with("403") || outcome.starts_with("400") || outcome.starts_with("closed");
            let reached: Vec<String> = upstream_paths(&lab);
            assert!(
                refused || reached.last().is_some_and(|p| stays_public(p)),
                "{normalization:?} {shown}: {outcome}, upstream read {reached:?}"
            );
        }
        for reached in upstream_paths(&lab) {
            assert!(stays_public(&reached), "{normalization:?}: the upstream read {reached}");
        }
        assert_eq!(raw_get(&lab, b"/public/x").unwrap().status, 200, "{normalization:?}");
        assert_eq!(raw_get(&lab, b"/%70ublic/x").unwrap().status, 200, "{normalization:?}: /public/x to any server");
    }
}

#[test]
fn the_filter_refuses_what_envoy_passes_on_unchanged() {
    // Envoy's own defaults (Istio `NONE`) pass every spelling to the filter as sent: it alone decides.
    let lab = lab(PathNormalization::None);
    for (target, detail) in [
        (&b"/public/%2e%2e;/private/x"[..], "escaped_separator"),
        (b"/public/..;/private/x", "path_parameter"),
        (b"/public/../private", "dot_segment"),
        (b"/public/%252e%252e/private", "escaped_separator"),
        (b"/public/%u002e%u002e/private", "unicode_escape"),
        (b"/public/%c0%ae%c0%ae/private", "non_ascii"),
        (b"/public//x", "empty_segment"),
        (b"/public/..%20/private", "dot_segment"),
    ] {
        let response = raw_get(&lab, target).unwrap();
        assert_eq!(
            (response.status, response.header("x-egress-denied-reason")),
            (403, Some("ambiguous_path")),
            "{}",
            String::from_utf8_lossy(target)
        );
        assert_eq!(response.json()["detail"], detail, "{}", String::from_utf8_lossy(target));
    }
    assert!(upstream_paths(&lab).is_empty(), "nothing reached the upstream: {:?}", upstream_paths(&lab));
    // Istio's default decodes `%2e` and removes the dot segments it finds, but `..;` is no dot segment to it: the
    // filter sees `/public/..;/private/x` and refuses it.
    let base = lab_with_default();
    let response = raw_get(&base, b"/public/%2e%2e;/private/x").unwrap();
    assert_eq!((response.status, response.json()["detail"].as_str()), (403, Some("path_parameter")));
}

fn lab_with_default() -> Lab {
    lab(PathNormalization::default())
}

#[test]
fn http2_paths_are_judged_the_same() {
    for normalization in [PathNormalization::None, PathNormalization::Base] {
        let lab = lab(normalization);
        for path in ["/public/%2e%2e;/private/x", "/public/..;/private/x", "/public/%252e%252e/private", "/public//x"] {
            let response = client::h2_request(
                lab.http(),
                &H2Request { method: "GET", authority: "api.example", path, ..Default::default() },
            );
            let refused = match &response {
                Ok(response) => response.status == 403 || response.status == 400,
                Err(_) => true,
            };
            let reached = upstream_paths(&lab);
            assert!(
                refused || reached.last().is_some_and(|p| stays_public(p)),
                "{normalization:?} h2 {path}: {response:?}, upstream read {reached:?}"
            );
        }
        let allowed = client::h2_get(lab.http(), "api.example", "/public/x").unwrap();
        assert_eq!(allowed.status, 200, "{normalization:?}");
    }
}

fn url_encode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { char::from(b).to_string() } else { format!("%{b:02X}") }).collect()
}

#[test]
fn redirects_cannot_walk_out_either() {
    for normalization in [PathNormalization::None, PathNormalization::Base] {
        let lab = lab(normalization);
        // Relative Locations are vetted and handed to the client (Envoy follows absolute ones only).
        for location in ["/public/%2e%2e;/private/x", "/public/..;/private/x", "x/..;/..;/private", "/public//x"] {
            let target = format!("/redirect-to?url={}", url_encode(location));
            let response = raw_get(&lab, target.as_bytes()).unwrap();
            assert_eq!(
                (response.status, response.header("x-egress-denied-reason")),
                (403, Some("ambiguous_path")),
                "{normalization:?} {location}: {}",
                response.body_str()
            );
        }
        // Absolute ones are followed at the gateway: each hop is judged as the request Envoy sends.
        for location in ["http://api.example/public/.;/x", "http://api.example/public/%2e%2e;/private/x"] {
            let target = format!("/redirect-to?url={}", url_encode(location));
            let response = raw_get(&lab, target.as_bytes()).unwrap();
            let reached = upstream_paths(&lab);
            let last = reached.last().unwrap();
            assert!(
                response.status == 403 || (last != "/redirect-to" && stays_public(last)),
                "{normalization:?} {location}: {} {}, upstream read {reached:?}",
                response.status,
                response.body_str()
            );
        }
        for reached in upstream_paths(&lab) {
            assert!(
                reached == "/redirect-to" || stays_public(&reached),
                "{normalization:?}: the upstream read {reached}"
            );
        }
    }
}
