//! The lab's gateway routes like the production one: by DNS, through Envoy's dynamic forward proxy, against the
//! lab's DNS server (`egress_harness::dns`). Names resolve to upstream hosts of their own, unknown names fail, a
//! changed answer is used from the next refresh on, CONNECT targets and TLS passthrough SNIs are resolved alike, and
//! nothing the gateway is told to reach ever leaves loopback.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use egress_harness::client::{self, Response};
use egress_harness::dns::RecordType;
use egress_harness::echo::CLOSE_HEADER;
use egress_harness::{Lab, LabOptions, EVIL_HOST, ORIGIN_HOST};
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Every name the tests here send, allowed: what happens after the allow-list is the subject.
const POLICY: &str = r#"{"rules": [{"name": "all", "hosts": ["*.example", "*.test", "*.invalid"]}]}"#;

fn lab() -> Lab {
    Lab::start(&LabOptions::new(POLICY)).expect("start the gateway")
}

fn get(lab: &Lab, host: &str, path: &str) -> Response {
    client::get(lab.http(), host, path).expect("HTTP exchange")
}

/// The upstream host and port that answered `response` (the echo's record).
fn answered_by(response: &Response) -> SocketAddr {
    assert_eq!(response.status, 200, "{}", response.body_str());
    response.json()["upstream"].as_str().unwrap().parse().unwrap()
}

/// The access-log line of the request to `path`, once Envoy has written it.
fn logged(lab: &Lab, path: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(line) = lab.access_log().into_iter().find(|line| line["path"] == path) {
            return line;
        }
        assert!(Instant::now() < deadline, "no access-log line for {path}: {:?}", lab.access_log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// GET `host` `path` with the echo closing the upstream connection after it, so that Envoy pools none: each request
/// opens a connection to where the name resolves at that moment.
fn get_unpooled(lab: &Lab, host: &str, path: &str) -> Response {
    client::request(lab.http(), "GET", host, path, &[(CLOSE_HEADER, "1")], b"").expect("HTTP exchange")
}

/// Sends [`get_unpooled`] until `done` holds for the response (Envoy re-resolves a cached name every second).
fn until(lab: &Lab, host: &str, path: &str, done: impl Fn(&Response) -> bool) -> Response {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = get_unpooled(lab, host, path);
        if done(&response) || Instant::now() > deadline {
            return response;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn names_reach_the_upstream_host_their_answer_names() {
    let lab = lab();
    let (origin, evil) = (lab.upstream(ORIGIN_HOST).unwrap(), lab.upstream(EVIL_HOST).unwrap());
    assert_ne!(origin, evil);
    assert_eq!(answered_by(&get(&lab, "api.example", "/a")), SocketAddr::new(origin, 80));
    assert_eq!(answered_by(&get(&lab, "evil.example", "/b")), SocketAddr::new(evil, 80));
    assert_eq!(answered_by(&get(&lab, "x.EVIL.test.:8080", "/c")), SocketAddr::new(evil, 8080), "the authority's port");
    assert_eq!(lab.echo.requests_to(evil).len(), 2);
    let line = logged(&lab, "/b");
    assert_eq!(line["upstream_cluster"], egress_harness::bootstrap::DFP_CLUSTER);
    assert_eq!(line["upstream_host"], format!("{evil}:80"));
    let asked: Vec<(String, RecordType)> = lab.dns.queries().into_iter().map(|q| (q.name, q.record)).collect();
    assert!(asked.contains(&("evil.example".to_string(), RecordType::A)), "{asked:?}");
    assert!(asked.iter().all(|(_, record)| *record == RecordType::A), "IPv4 only: {asked:?}");
}

#[test]
fn a_name_dns_does_not_know_is_a_503_until_it_is_added() {
    let lab = lab();
    let unknown = get(&lab, "nowhere.invalid", "/unknown");
    assert_eq!(unknown.status, 503, "{}", unknown.body_str());
    let line = logged(&lab, "/unknown");
    assert!(line["details"].as_str().unwrap().starts_with("dns_resolution_failure"), "{line}");
    assert_eq!(line["flags"], "DF");
    assert!(lab.echo.requests().is_empty());

    let origin = lab.upstream(ORIGIN_HOST).unwrap();
    lab.dns.set("nowhere.invalid", vec![origin]).unwrap();
    // Envoy retries a failed name on its own schedule (`dns_failure_refresh_rate`, a second here).
    let found = until(&lab, "nowhere.invalid", "/found", |r| r.status == 200);
    assert_eq!(answered_by(&found), SocketAddr::new(origin, 80));
}

#[test]
fn a_changed_answer_is_used_from_the_next_refresh_on() {
    let lab = lab();
    let (origin, evil) = (lab.upstream(ORIGIN_HOST).unwrap(), lab.upstream(EVIL_HOST).unwrap());
    lab.dns.set("rebind.example", vec![origin]).unwrap();
    // Unpooled: a pooled upstream connection stays with the address it was opened to, whatever DNS says later.
    assert_eq!(answered_by(&get_unpooled(&lab, "rebind.example", "/before")).ip(), origin);
    lab.dns.set("rebind.example", vec![evil]).unwrap();
    let changed = Instant::now();
    let after = until(&lab, "rebind.example", "/after", |r| r.status == 200 && answered_by(r).ip() == evil);
    assert_eq!(answered_by(&after).ip(), evil, "the new answer within the refresh");
    assert!(changed.elapsed() < Duration::from_secs(5));
    // A new host, added while the lab runs, is a new upstream like the others.
    let third = lab.echo.add_host().unwrap();
    lab.dns.set("rebind.example", vec![third]).unwrap();
    let third_reached = until(&lab, "rebind.example", "/third", |r| r.status == 200 && answered_by(r).ip() == third);
    assert_eq!(answered_by(&third_reached), SocketAddr::new(third, 80));
}

#[test]
fn connect_targets_and_passthrough_snis_are_resolved_too() {
    let lab = lab();
    let evil = lab.upstream(EVIL_HOST).unwrap();
    let ca = lab.pki.ca_pem();

    let (reply, tunnel) = client::connect_tunnel(lab.http(), "evil.example:443").unwrap();
    assert_eq!(reply.status, 200);
    let inside = client::tls_get_over(tunnel.unwrap(), Some("evil.example"), ca, "evil.example", "/tunnel").unwrap();
    assert_eq!(
        (answered_by(&inside), inside.json()["tls"]["sni"].as_str()),
        (SocketAddr::new(evil, 443), Some("evil.example"))
    );
    let (reply, _) = client::connect_tunnel(lab.http(), "nowhere.invalid:443").unwrap();
    assert_eq!(reply.status, 503, "an unknown CONNECT target: {}", reply.body_str());

    let passthrough = client::tls_get(lab.tls(), Some("a.evil.test"), ca, "a.evil.test", "/passthrough").unwrap();
    assert_eq!(answered_by(&passthrough), SocketAddr::new(evil, 443), "port 443 of where the SNI resolves");
    let unknown = client::tls_get(lab.tls(), Some("nowhere.invalid"), ca, "nowhere.invalid", "/");
    assert!(unknown.is_err(), "an unknown SNI: closed");
    let paths: Vec<String> = lab.echo.requests().iter().map(|r| r["path"].as_str().unwrap().to_string()).collect();
    assert_eq!(paths, ["/tunnel", "/passthrough"]);
}

#[test]
fn nothing_off_loopback_is_ever_reached() {
    let lab = lab();
    let origin = lab.upstream(ORIGIN_HOST).unwrap();
    // An answer off loopback: the lab's upstream connections leave from 127.0.0.1, so the kernel refuses to connect
    // (EINVAL) before a packet is sent. The same for an IP literal, which Envoy connects to without DNS.
    let public: IpAddr = "203.0.113.7".parse().unwrap();
    lab.dns.set("public.example", vec![public]).unwrap();
    assert_eq!(get(&lab, "public.example", "/public").status, 503);
    let line = logged(&lab, "/public");
    assert_eq!(line["upstream_host"], "203.0.113.7:80");
    assert!(line["details"].as_str().unwrap().contains("Invalid_argument"), "refused locally: {line}");
    // Several addresses: Envoy tries the next when a connection fails.
    lab.dns.set("mixed.example", vec![public, origin]).unwrap();
    let mixed = get(&lab, "mixed.example", "/mixed");
    assert_eq!(answered_by(&mixed), SocketAddr::new(origin, 80), "{}", mixed.body_str());
}
