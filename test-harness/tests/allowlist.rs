//! The allow-list filter in a real Envoy: start the gateway, send traffic through it, look at what the upstream
//! received, what the client got back, and what the access log and metrics say.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use egress_harness::client::{self, Response};
use egress_harness::envoy::Launcher;
use egress_harness::{Lab, LabOptions};
use serde_json::Value;
use std::time::{Duration, Instant};

const POLICY: &str = r#"{
  "rules": [
    {"name": "httpbin", "hosts": ["httpbin.org", "*.httpbin.org"]},
    {"name": "wild", "hosts": ["*.wild.example"]},
    {"name": "aws", "hosts": ["ec2.*.amazonaws.com"], "ports": [80, 443]},
    {"name": "status-only", "hosts": ["api.example.com"], "methods": ["GET"], "paths": ["/status/*"]},
    {"name": "docs-net", "cidrs": ["203.0.113.0/24"]},
    {"name": "sleep-only", "hosts": ["internal.example"], "principals": ["cluster.local/ns/app/sa/sleep"]},
    {"name": "app-namespace", "hosts": ["ns.example"], "namespaces": ["app"]}
  ],
  "deny": {"hosts": ["metadata.google.internal", "*.blocked.httpbin.org"], "cidrs": ["169.254.0.0/16"]}
}"#;

fn lab() -> Lab {
    lab_with(POLICY)
}

fn lab_with(policy: &str) -> Lab {
    Lab::start(&LabOptions::new(policy)).expect("start the gateway")
}

fn get(lab: &Lab, host: &str, path: &str) -> Response {
    client::get(lab.http(), host, path).expect("HTTP exchange")
}

/// Asserts a 403 from the filter with `reason`.
#[track_caller]
fn assert_denied(response: &Response, reason: &str) {
    assert_eq!(response.status, 403, "body: {}", response.body_str());
    assert_eq!(response.header("x-egress-denied-reason"), Some(reason), "body: {}", response.body_str());
    let body = response.json();
    assert_eq!(body["error"], "egress_denied");
    assert_eq!(body["reason"], reason);
}

/// Asserts the echo upstream answered and saw `host`.
#[track_caller]
fn assert_reached_upstream(response: &Response, host: &str) {
    assert_eq!(response.status, 200, "body: {}", response.body_str());
    assert_eq!(response.json()["host"], host);
}

/// The access log is flushed by Envoy on its own schedule: wait for `count` lines. The allow-list's filter-state
/// record (`%FILTER_STATE(wasm.egress.decision:PLAIN)%`, a JSON string in the line) comes back parsed.
fn access_log(lab: &Lab, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut lines = lab.access_log();
        if lines.len() >= count || Instant::now() > deadline {
            for line in &mut lines {
                if let Some(record) = line["decision"].as_str().and_then(|r| serde_json::from_str(r).ok()) {
                    line["decision"] = record;
                }
            }
            return lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn allowed_hosts_reach_the_upstream_and_others_get_a_403_with_the_reason() {
    let lab = lab();
    assert_reached_upstream(&get(&lab, "httpbin.org", "/headers"), "httpbin.org");
    assert_reached_upstream(&get(&lab, "HTTPBIN.org.", "/headers"), "HTTPBIN.org.");

    let denied = get(&lab, "example.com", "/headers");
    assert_denied(&denied, "host_not_allowed");
    assert_eq!(denied.json()["host"], "example.com");
    assert_eq!(denied.json()["port"], 80);

    let upstream_saw: Vec<String> =
        lab.echo.requests().iter().map(|r| r["host"].as_str().unwrap().to_string()).collect();
    assert_eq!(upstream_saw, ["httpbin.org", "HTTPBIN.org."], "the denied request never left the gateway");

    assert_eq!(lab.envoy.stat("wasmcustom.egress_allowlist_allowed"), Some(2));
    assert_eq!(lab.envoy.stat("wasmcustom.egress_allowlist_denied"), Some(1));

    let log = access_log(&lab, 3);
    let denied_line = log.iter().find(|l| l["authority"] == "example.com").expect("access log line");
    assert_eq!(
        denied_line["decision"],
        serde_json::json!({"action": "deny", "reason": "host_not_allowed", "rule": null,
                           "destination": "example.com:80", "mode": "enforce",
                           "policy": egress_core::Policy::from_json(POLICY.as_bytes()).unwrap().fingerprint().to_string()})
    );
    let allowed_line = log.iter().find(|l| l["authority"] == "httpbin.org").expect("access log line");
    let decision = &allowed_line["decision"];
    assert_eq!((decision["action"].as_str(), decision["rule"].as_str()), (Some("allow"), Some("httpbin")));
}

#[test]
fn wildcards_cover_any_depth_below_but_never_the_apex_and_inner_stars_exactly_one_label() {
    let lab = lab();
    for host in ["a.wild.example", "a.b.c.wild.example", "A.Wild.Example:8080"] {
        assert_reached_upstream(&get(&lab, host, "/"), host);
    }
    for host in ["wild.example", "xwild.example", "wild.example.evil"] {
        assert_denied(&get(&lab, host, "/"), "host_not_allowed");
    }
    assert_reached_upstream(&get(&lab, "ec2.us-east-1.amazonaws.com", "/"), "ec2.us-east-1.amazonaws.com");
    for host in ["ec2.amazonaws.com", "ec2.a.b.amazonaws.com", "x.ec2.a.amazonaws.com"] {
        assert_denied(&get(&lab, host, "/"), "host_not_allowed");
    }
}

#[test]
fn the_deny_list_wins_over_every_rule_in_every_spelling() {
    let lab = lab();
    for host in ["x.blocked.httpbin.org", "metadata.google.internal", "Metadata.Google.Internal."] {
        assert_denied(&get(&lab, host, "/"), "deny_listed");
    }
    for address in [
        "169.254.169.254",
        "2852039166",
        "0xa9.0xfe.0xa9.0xfe",
        "0251.0376.0251.0376",
        "169.254.43518",
        "[::ffff:169.254.169.254]",
    ] {
        assert_denied(&get(&lab, address, "/latest/meta-data/"), "deny_listed");
    }
    assert!(lab.echo.requests().is_empty());
}

#[test]
fn ip_literals_are_allowed_only_by_cidrs() {
    let lab = lab();
    // Both spellings of 203.0.113.9 pass the allow-list by the docs-net CIDR. Then Envoy routes as in production: it
    // connects to a dotted literal as is, without DNS (203.0.113.9 is no host of the lab, and the lab's upstream
    // connections come from 127.0.0.1, so the kernel refuses it before a packet leaves), and it takes the decimal
    // form for a name, which DNS does not know: the allow-list decides on an address that Envoy never uses.
    let (dotted, decimal) = (get(&lab, "203.0.113.9", "/"), get(&lab, "3405803785", "/"));
    for response in [&dotted, &decimal] {
        assert_eq!(
            (response.status, response.header("x-egress-denied-reason")),
            (503, None),
            "{}",
            response.body_str()
        );
    }
    let log = access_log(&lab, 2);
    let line = |authority: &str| log.iter().find(|l| l["authority"] == authority).expect("access log line").clone();
    for authority in ["203.0.113.9", "3405803785"] {
        let decision = &line(authority)["decision"];
        assert_eq!((decision["action"].as_str(), decision["rule"].as_str()), (Some("allow"), Some("docs-net")));
    }
    let dotted = line("203.0.113.9");
    assert_eq!((dotted["upstream_host"].as_str(), dotted["flags"].as_str()), (Some("203.0.113.9:80"), Some("UF")));
    let decimal = line("3405803785");
    let details = decimal["details"].as_str().unwrap_or_default();
    assert!(details.starts_with("dns_resolution_failure"), "{details}");
    // Envoy asks again on every refresh while the failed name stays in its cache; never for the dotted literal.
    let asked: Vec<String> = lab.dns.queries().into_iter().map(|query| query.name).collect();
    assert!(!asked.is_empty() && asked.iter().all(|name| name == "3405803785"), "{asked:?}");
    assert!(lab.echo.requests().is_empty());
    for address in ["10.0.0.1", "127.1", "0x7f.1", "2130706433", "[::1]", "[::ffff:127.0.0.1]:8080"] {
        assert_denied(&get(&lab, address, "/"), "ip_literal_not_allowed");
    }
}

#[test]
fn ports_methods_and_paths_narrow_a_rule() {
    let lab = lab();
    assert_reached_upstream(&get(&lab, "api.example.com", "/status/200"), "api.example.com");
    assert_denied(&get(&lab, "api.example.com", "/headers"), "path_not_allowed");
    assert_denied(&get(&lab, "api.example.com", "/status/../headers"), "path_not_allowed");
    let post = client::request(lab.http(), "POST", "api.example.com", "/status/200", &[], b"x").unwrap();
    assert_denied(&post, "method_not_allowed");
    assert_eq!(post.json()["rule"], "status-only");
    assert_reached_upstream(&get(&lab, "ec2.x.amazonaws.com:443", "/"), "ec2.x.amazonaws.com:443");
    assert_denied(&get(&lab, "ec2.x.amazonaws.com:8080", "/"), "port_not_allowed");
}

#[test]
fn report_mode_lets_denied_requests_through_and_records_them() {
    let lab = lab_with(r#"{"mode": "report", "rules": [{"name": "httpbin", "hosts": ["httpbin.org"]}]}"#);
    assert_reached_upstream(&get(&lab, "example.com", "/"), "example.com");
    assert_reached_upstream(&get(&lab, "httpbin.org", "/"), "httpbin.org");
    // What cannot be parsed is never forwarded, whatever the mode.
    let malformed =
        client::raw_http1(lab.http(), b"GET / HTTP/1.1\r\nHost: a%2ecom\r\nConnection: close\r\n\r\n").unwrap();
    assert_eq!(malformed.status, 400);
    assert_eq!(lab.envoy.stat("wasmcustom.egress_allowlist_would_deny"), Some(1));
    assert_eq!(lab.envoy.stat("wasmcustom.egress_allowlist_allowed"), Some(1));
    assert_eq!(lab.envoy.stat("wasmcustom.egress_allowlist_malformed"), Some(1));
    let log = access_log(&lab, 3);
    let line = log.iter().find(|l| l["authority"] == "example.com").expect("access log line");
    let decision = &line["decision"];
    assert_eq!(
        (decision["action"].as_str(), decision["reason"].as_str()),
        (Some("report-deny"), Some("host_not_allowed"))
    );
}

#[test]
fn absolute_form_requests_are_vetted_by_their_target() {
    let lab = lab();
    let allowed = client::raw_http1(
        lab.http(),
        b"GET http://httpbin.org/headers HTTP/1.1\r\nHost: httpbin.org\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_reached_upstream(&allowed, "httpbin.org");
    let denied = client::raw_http1(
        lab.http(),
        b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_denied(&denied, "host_not_allowed");
}

#[test]
fn connect_tunnels_are_vetted_by_their_target() {
    let lab = lab();
    let (reply, tunnel) = client::connect_tunnel(lab.http(), "httpbin.org:80").unwrap();
    assert_eq!(reply.status, 200);
    let mut tunnel = tunnel.unwrap();
    let inside =
        client::exchange(&mut tunnel, b"GET /headers HTTP/1.1\r\nHost: httpbin.org\r\nConnection: close\r\n\r\n")
            .unwrap();
    assert_reached_upstream(&inside, "httpbin.org");

    // TLS end to end through the tunnel: the gateway sees only the CONNECT target.
    let (reply, tunnel) = client::connect_tunnel(lab.http(), "a.wild.example:443").unwrap();
    assert_eq!(reply.status, 200);
    let tls =
        client::tls_get_over(tunnel.unwrap(), Some("a.wild.example"), lab.pki.ca_pem(), "a.wild.example", "/headers")
            .unwrap();
    assert_eq!(tls.json()["tls"]["sni"], "a.wild.example");

    let (reply, tunnel) = client::connect_tunnel(lab.http(), "example.com:443").unwrap();
    assert_denied(&reply, "host_not_allowed");
    assert!(tunnel.is_none());
    let (reply, _) = client::connect_tunnel(lab.http(), "ec2.x.amazonaws.com:22").unwrap();
    assert_denied(&reply, "port_not_allowed");
    let (reply, _) = client::connect_tunnel(lab.http(), "169.254.169.254:80").unwrap();
    assert_denied(&reply, "deny_listed");
}

#[test]
fn http2_requests_are_vetted_like_http1() {
    let lab = lab();
    let allowed = client::h2_get(lab.http(), "a.wild.example", "/headers").unwrap();
    assert_eq!(allowed.status, 200);
    assert_eq!(allowed.json()["host"], "a.wild.example");
    let denied = client::h2_get(lab.http(), "example.com", "/headers").unwrap();
    assert_denied(&denied, "host_not_allowed");
    let deny_listed = client::h2_get(lab.http(), "[::ffff:169.254.169.254]", "/").unwrap();
    assert_denied(&deny_listed, "deny_listed");
}

/// The lab's passthrough listener is on port 443, as a gateway's Service is: a rule's `ports` is judged against the
/// port clients dial, and the access log records it.
#[test]
fn tls_passthrough_is_judged_on_the_port_clients_dial() {
    let lab = lab_with(
        r#"{"rules":[{"name":"on-443","hosts":["a.wild.example"],"ports":[443]},
                     {"name":"on-8443","hosts":["b.wild.example"],"ports":[8443]}]}"#,
    );
    assert_eq!(lab.tls().port(), 443);
    let ca = lab.pki.ca_pem();
    let allowed = client::tls_get(lab.tls(), Some("a.wild.example"), ca, "a.wild.example", "/headers").unwrap();
    assert_eq!(allowed.json()["tls"]["sni"], "a.wild.example");
    assert!(client::tls_get(lab.tls(), Some("b.wild.example"), ca, "b.wild.example", "/").is_err(), "not on 8443");
    let log = access_log(&lab, 2);
    let decisions: Vec<(&str, &str)> = log
        .iter()
        .map(|l| (l["decision"]["reason"].as_str().unwrap_or(""), l["decision"]["rule"].as_str().unwrap_or("")))
        .collect();
    assert!(decisions.contains(&("allowed", "on-443")), "{decisions:?}");
    assert!(decisions.contains(&("port_not_allowed", "on-8443")), "{decisions:?}");

    // Behind a Service mapping another port to this listener (`gatewayPorts`), passthrough is judged and recorded
    // as to that port: here the listener's 443 stands for 8443.
    let mapped = lab_with(
        r#"{"rules":[{"name":"on-443","hosts":["a.wild.example"],"ports":[443]},
                     {"name":"on-8443","hosts":["b.wild.example"],"ports":[8443]}],
            "gatewayPorts":[{"listener":443,"service":8443}]}"#,
    );
    let ca = mapped.pki.ca_pem();
    let allowed = client::tls_get(mapped.tls(), Some("b.wild.example"), ca, "b.wild.example", "/headers").unwrap();
    assert_eq!(allowed.json()["tls"]["sni"], "b.wild.example");
    assert!(client::tls_get(mapped.tls(), Some("a.wild.example"), ca, "a.wild.example", "/").is_err(), "not 443");
    let log = access_log(&mapped, 2);
    let decisions: Vec<(&str, &str, &str)> = log
        .iter()
        .map(|l| {
            let decision = &l["decision"];
            let text = |field: &str| decision[field].as_str().unwrap_or("");
            (text("reason"), text("rule"), text("destination"))
        })
        .collect();
    assert!(decisions.contains(&("allowed", "on-8443", "b.wild.example:8443")), "{decisions:?}");
    assert!(decisions.contains(&("port_not_allowed", "on-443", "a.wild.example:8443")), "{decisions:?}");
}

#[test]
fn tls_passthrough_is_vetted_by_sni_and_closed_without_one() {
    let lab = lab();
    let ca = lab.pki.ca_pem();
    let allowed = client::tls_get(lab.tls(), Some("a.wild.example"), ca, "a.wild.example", "/headers").unwrap();
    assert_eq!(allowed.json()["tls"]["sni"], "a.wild.example", "end-to-end TLS with the upstream");
    assert!(client::tls_get(lab.tls(), Some("example.com"), ca, "example.com", "/").is_err(), "denied SNI: closed");
    assert!(client::tls_get(lab.tls(), None, ca, "a.wild.example", "/").is_err(), "no SNI: closed");
    assert_eq!(lab.envoy.stat("wasmcustom.egress_allowlist_tls_allowed"), Some(1));
    assert_eq!(lab.envoy.stat("wasmcustom.egress_allowlist_tls_denied"), Some(1));
    assert_eq!(lab.envoy.stat("wasmcustom.egress_allowlist_tls_malformed"), Some(1));
    let log = access_log(&lab, 3);
    let tls_lines: Vec<(&str, &str)> = log
        .iter()
        .filter(|l| l["listener"] == "egress_tls")
        .map(|l| (l["decision"]["action"].as_str().unwrap_or(""), l["decision"]["reason"].as_str().unwrap_or("")))
        .collect();
    for want in [("allow", "allowed"), ("deny", "host_not_allowed"), ("deny", "missing_sni")] {
        assert!(tls_lines.contains(&want), "{want:?} in {tls_lines:?}");
    }
}

#[test]
fn identity_scoped_rules_follow_the_callers_verified_certificate() {
    let lab = lab();
    let sleep = lab.client_cert(Some("spiffe://cluster.local/ns/app/sa/sleep")).unwrap();
    let other_app = lab.client_cert(Some("spiffe://cluster.local/ns/app/sa/other")).unwrap();
    let web = lab.client_cert(Some("spiffe://cluster.local/ns/web/sa/sleep")).unwrap();
    let no_spiffe = lab.client_cert(None).unwrap();

    assert_reached_upstream(&lab.mtls_get(&sleep, "internal.example", "/").unwrap(), "internal.example");
    assert_denied(&lab.mtls_get(&other_app, "internal.example", "/").unwrap(), "identity_not_allowed");
    assert_denied(&lab.mtls_get(&no_spiffe, "internal.example", "/").unwrap(), "identity_not_allowed");
    assert_denied(&get(&lab, "internal.example", "/"), "identity_not_allowed");

    assert_reached_upstream(&lab.mtls_get(&other_app, "ns.example", "/").unwrap(), "ns.example");
    assert_denied(&lab.mtls_get(&web, "ns.example", "/").unwrap(), "identity_not_allowed");
    assert_denied(&get(&lab, "ns.example", "/"), "identity_not_allowed");
}

#[test]
fn a_non_utf8_host_is_refused_and_the_filter_keeps_serving() {
    let lab = lab();
    let latin1 =
        client::raw_http1(lab.http(), b"GET / HTTP/1.1\r\nHost: b\xfccher.de\r\nConnection: close\r\n\r\n").unwrap();
    assert_eq!(latin1.status, 400, "{}", latin1.body_str());
    assert_reached_upstream(&get(&lab, "httpbin.org", "/"), "httpbin.org");
}

#[test]
fn envoy_refuses_an_invalid_policy_naming_the_field() {
    let launcher = Launcher::find().unwrap();
    let bad = r#"{"rules": [{"name": "a", "hosts": ["ok.example", "api-*.example.com"]}, {"name": "a", "hosts": ["b"], "ports": [0]}]}"#;
    let error = launcher.validate(&egress_harness::gateway_bootstrap(&LabOptions::new(bad)).unwrap()).unwrap_err();
    for want in [
        "rules[0].hosts[1]: `api-*.example.com`: `*` must be a whole label",
        "rules[1].name: duplicate rule name `a`",
        "rules[1].ports[0]: port 0 is out of range 1-65535",
    ] {
        assert!(error.contains(want), "missing {want:?} in Envoy's output:\n{error}");
    }
    let unknown_field = launcher
        .validate(&egress_harness::gateway_bootstrap(&LabOptions::new(r#"{"rules": [], "modee": "report"}"#)).unwrap())
        .unwrap_err();
    assert!(unknown_field.contains("modee: unknown field `modee`"), "{unknown_field}");
    launcher
        .validate(&egress_harness::gateway_bootstrap(&LabOptions::new(POLICY)).unwrap())
        .expect("the valid policy passes validation");

    let refused = Lab::start(&LabOptions::new(bad));
    assert!(refused.is_err(), "Envoy must not start serving with an invalid policy");
}

/// Who refused a malformed request: Envoy's HTTP codec before any filter ran, or the allow-list filter.
#[derive(Debug, PartialEq)]
enum RefusedBy {
    Envoy,
    Filter(&'static str),
}

fn refused_by(response: &Response) -> RefusedBy {
    assert_eq!(response.status, 400, "body: {}", response.body_str());
    match response.header("x-egress-denied-reason") {
        None => RefusedBy::Envoy,
        Some(reason) => {
            assert_eq!(reason, "malformed_authority");
            let detail = response.json()["detail"].as_str().unwrap().to_string();
            RefusedBy::Filter(Box::leak(detail.into_boxed_str()))
        }
    }
}

#[test]
fn malformed_authorities_are_refused_by_envoy_or_by_the_filter_and_never_forwarded() {
    let lab = lab();
    let label64 = format!("{}.httpbin.org", "a".repeat(64));
    let name300 = format!("{}httpbin.org", "abcdefghi.".repeat(29));
    let cases: Vec<(Vec<u8>, RefusedBy)> = vec![
        // Envoy's codec refuses these itself (response code details http.invalid_authority, http1.invalid_characters,
        // missing_host_header): the filter never sees them. Core refuses them too (unit tests), should Envoy change.
        (host_header(b"httpbin.org\\evil.com"), RefusedBy::Envoy),
        (host_header(b"httpbin .org"), RefusedBy::Envoy),
        (host_header(b"httpbin\t.org"), RefusedBy::Envoy),
        (host_header(b"httpbin\x01.org"), RefusedBy::Envoy),
        (host_header("bücher.de".as_bytes()), RefusedBy::Envoy),
        (host_header(b"httpbin.org/evil"), RefusedBy::Envoy),
        (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(), RefusedBy::Envoy),
        // Envoy passes these on; the filter refuses them.
        (host_header(b"user@httpbin.org"), RefusedBy::Filter("userinfo")),
        (host_header(b"user:pw@httpbin.org"), RefusedBy::Filter("userinfo")),
        (host_header(b"httpbin%2eorg"), RefusedBy::Filter("percent_escape")),
        (host_header(b"httpbin.org,evil.com"), RefusedBy::Filter("invalid_character")),
        (host_header(b""), RefusedBy::Filter("empty_host")),
        (host_header(b"httpbin.org.."), RefusedBy::Filter("empty_label")),
        (host_header(label64.as_bytes()), RefusedBy::Filter("label_too_long")),
        (host_header(name300.as_bytes()), RefusedBy::Filter("name_too_long")),
        (host_header(b"::1"), RefusedBy::Filter("unbracketed_ipv6")),
        (host_header(b"[fe80::1%25eth0]"), RefusedBy::Filter("percent_escape")),
        (host_header(b"1.2.3.4.5"), RefusedBy::Filter("invalid_ipv4")),
        // Two Host headers: Envoy joins them into one value with a comma, which no host contains.
        (
            b"GET / HTTP/1.1\r\nHost: httpbin.org\r\nHost: evil.com\r\nConnection: close\r\n\r\n".to_vec(),
            RefusedBy::Filter("invalid_character"),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: httpbin.org\r\nHost: httpbin.org\r\nConnection: close\r\n\r\n".to_vec(),
            RefusedBy::Filter("invalid_character"),
        ),
        // CONNECT needs host:port; Envoy refuses a CONNECT without a port itself.
        (b"CONNECT httpbin.org HTTP/1.1\r\nHost: httpbin.org\r\n\r\n".to_vec(), RefusedBy::Envoy),
    ];
    for port in ["0", "65536", "99999", "", "080", "+80"] {
        let request = host_header(format!("httpbin.org:{port}").as_bytes());
        let got = refused_by(&client::raw_http1(lab.http(), &request).unwrap());
        assert_eq!(got, RefusedBy::Filter("invalid_port"), "port {port:?}");
    }
    for (request, want) in cases {
        let response = client::raw_http1(lab.http(), &request).unwrap();
        assert_eq!(refused_by(&response), want, "{}", String::from_utf8_lossy(&request).escape_debug());
    }
    // HTTP/2: Envoy resets streams whose :authority has userinfo, spaces or controls (the test client cannot even
    // send a `%`); the rest reaches the filter.
    for (authority, detail) in [
        ("httpbin.org,evil.com", "invalid_character"),
        ("httpbin.org:0", "invalid_port"),
        ("httpbin.org..", "empty_label"),
    ] {
        let response = client::h2_get(lab.http(), authority, "/").unwrap();
        assert_eq!(refused_by(&response), RefusedBy::Filter(detail), "h2 :authority {authority}");
    }
    assert!(client::h2_get(lab.http(), "user@httpbin.org", "/").is_err(), "Envoy resets the stream");
    assert!(lab.echo.requests().is_empty(), "nothing malformed reached the upstream: {:?}", lab.echo.requests());
}

#[test]
fn an_absolute_form_target_replaces_a_disagreeing_host_before_the_filter_decides() {
    // RFC 9112 §3.2.2: with an absolute-form target the Host header is ignored. Envoy rewrites `:authority` to the
    // target and drops the Host it received, so the decision and the upstream both use the same authority.
    let lab = lab();
    let smuggle = b"GET http://example.com/ HTTP/1.1\r\nHost: httpbin.org\r\nConnection: close\r\n\r\n";
    assert_denied(&client::raw_http1(lab.http(), smuggle).unwrap(), "host_not_allowed");
    let reverse = b"GET http://httpbin.org/headers HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n";
    let response = client::raw_http1(lab.http(), reverse).unwrap();
    assert_reached_upstream(&response, "httpbin.org");
    let headers = response.json()["headers"].to_string();
    assert!(!headers.contains("example.com"), "the disagreeing Host never reaches the upstream: {headers}");
    // Envoy's URL parser drops userinfo from an absolute-form target: what is decided is what is routed.
    let userinfo = b"GET http://httpbin.org@example.com/ HTTP/1.1\r\nHost: httpbin.org\r\nConnection: close\r\n\r\n";
    assert_denied(&client::raw_http1(lab.http(), userinfo).unwrap(), "host_not_allowed");
    let userinfo = b"GET http://example.com@httpbin.org/ HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n";
    assert_reached_upstream(&client::raw_http1(lab.http(), userinfo).unwrap(), "httpbin.org");
}

fn host_header(host: &[u8]) -> Vec<u8> {
    [b"GET / HTTP/1.1\r\nHost: ".as_slice(), host, b"\r\nConnection: close\r\n\r\n"].concat()
}
