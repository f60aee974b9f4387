//! Policy pushes to a running gateway, delivered as Istio delivers a WasmPlugin's configuration: by ECDS
//! ([`egress_harness::ecds`]; see `docs/policy-pushes.md`). A typo in a policy must never take egress down:
//! - a refused push leaves the last good policy serving, and says so (ECDS counters, Envoy's log naming the field);
//! - a good push after a refused one is applied (envoyproxy/envoy#43751: a failed `on_configure` can poison later
//!   pushes of the same plugin);
//! - under continuous traffic, pushes alternating between a small policy and a 100k-rule one fail no request, and
//!   every request is judged by exactly one of the two;
//! - a cold start whose first policy is refused: what Envoy does, and that a good push then brings the gateway up;
//! - what Istio's agent pushes instead of a plugin whose module it cannot fetch (the one place `failStrategy`
//!   decides between refusing and opening everything);
//! - which policy serves, as an operator reads it: the fingerprint and rule-count gauges follow every applied push
//!   and keep the last good policy's values through a refused one; every decision record and audit event names the
//!   policy that decided;
//! - Envoy's own behaviour around a refused push, asserted as such (`envoy_behaviour::*`), so that an Envoy that
//!   changes it fails here and `docs/operations.md` is revisited.
//!
//! Every test runs against the chain of `$EGRESS_MANIFESTS` (the fused suite by default, or the separate filters)
//! on the Envoy of `$ENVOY_BIN`; the HTTP plugin (allow-list or suite) and the TLS-passthrough one are pushed.
//!
//! The two policies tell apart which one judged a request. `switch.example`: policy A allows GET (`a-get`); policy
//! B allows only POST (`b-post`), so a GET is refused with B's rule named in the body. `tls-a.example` passes
//! through under A only, `tls-b.example` under B only. B's distinguishing rules come last, so a policy read only in
//! part would judge neither way.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use egress_core::audit::AuditConfig;
use egress_core::fingerprint::Fingerprint;
use egress_core::Policy;
use egress_harness::client::{self, Response};
use egress_harness::ecds::{rbac_typed_config, Counters, Delivery, Ecds, Outcome};
use egress_harness::{istio, manifests_dir, wasm_dir, Lab, LabOptions};
use egress_harness::{ALLOWLIST_ROOT_ID, ALLOWLIST_TLS_ROOT_ID, SUITE_ROOT_ID, SUITE_TLS_ROOT_ID};
use serde_json::{json, Value};
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use std::{fs, thread};

const SWITCH: &str = "switch.example";
const TLS_A: &str = "tls-a.example";
const TLS_B: &str = "tls-b.example";

const POLICY_A: &str = r#"{"rules": [
  {"name": "a-get", "hosts": ["switch.example"], "methods": ["GET"]},
  {"name": "a-tls", "hosts": ["tls-a.example"]}
]}"#;

/// Policy B after `fillers` rules for other hosts (`h<i>.filler.example`).
fn policy_b(fillers: usize) -> String {
    let mut rules: Vec<Value> = (0..fillers)
        .map(|i| json!({"name": format!("filler-{i}"), "hosts": [format!("h{i}.filler.example")]}))
        .collect();
    rules.push(json!({"name": "b-post", "hosts": [SWITCH], "methods": ["POST"]}));
    rules.push(json!({"name": "b-tls", "hosts": [TLS_B]}));
    json!({"rules": rules}).to_string()
}

/// Refused policies, each different (Envoy skips a push equal to the last one it was handed, refused or not), and
/// each problem with the field path the filter names it by.
const BAD_WILDCARD: &str = r#"{"rules": [
  {"name": "a", "hosts": ["api-*.example.com"]},
  {"name": "a", "hosts": ["b.example"], "ports": [0]}
]}"#;
const BAD_WILDCARD_PROBLEMS: [&str; 3] = [
    "rules[0].hosts[0]: `api-*.example.com`: `*` must be a whole label",
    "rules[1].name: duplicate rule name `a`",
    "rules[1].ports[0]: port 0 is out of range 1-65535",
];
const BAD_FIELD: &str = r#"{"rules": [{"name": "a-get", "hosts": ["switch.example"]}], "modee": "report"}"#;
const BAD_CIDR: &str = r#"{"rules": [{"name": "net", "cidrs": ["10.0.0.0/33"]}]}"#;

/// Which policy judged a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Judge {
    A,
    B,
}

/// The plugins of the chain under test that a policy push goes to, and how their configuration holds a policy.
struct Chain {
    http: &'static str,
    tls: &'static str,
    fused: bool,
}

impl Chain {
    fn under_test() -> Chain {
        let plugins = istio::chain(&manifests_dir(), &wasm_dir()).expect("the chain of the manifests");
        if plugins.iter().any(|plugin| plugin.root_id == SUITE_ROOT_ID) {
            Chain { http: SUITE_ROOT_ID, tls: SUITE_TLS_ROOT_ID, fused: true }
        } else {
            Chain { http: ALLOWLIST_ROOT_ID, tls: ALLOWLIST_TLS_ROOT_ID, fused: false }
        }
    }

    /// The plugin configuration that carries `policy`: the policy itself, or the suite's `policy` section.
    fn config(&self, policy: &str) -> String {
        self.config_of(&LabOptions::new(policy))
    }

    /// The plugin configuration that carries the policy of `options`: the policy itself, or the suite's sections
    /// (so a push to the suite keeps the audit section those options give it).
    fn config_of(&self, options: &LabOptions) -> String {
        if self.fused {
            options.suite_json().expect("a suite configuration")
        } else {
            options.policy_json.clone()
        }
    }

    /// A problem of a policy as the plugin names it: the suite prefixes the path with its section.
    fn problem(&self, problem: &str) -> String {
        if self.fused {
            format!("policy.{problem}")
        } else {
            problem.to_string()
        }
    }
}

/// A lab with policy A delivered by ECDS; `first` replaces the first push of some plugins (by root id).
fn lab(manifests: Option<&Path>, first: Vec<(String, String)>) -> Lab {
    let mut options = LabOptions { delivery: Delivery::Ecds { first, lds: false }, ..LabOptions::new(POLICY_A) };
    if let Some(manifests) = manifests {
        options.manifests = manifests.to_path_buf();
    }
    Lab::start(&options).expect("start the gateway")
}

/// The gauges that say which policy an allow-list serves, as Envoy's admin `/stats` names them (Prometheus: without
/// `wasmcustom.`). One worker here (the harness starts Envoy with `--concurrency 1`): the gauges are set by each VM
/// when it is configured, so on a gateway with several workers they show the last VM configured.
const HTTP_FINGERPRINT: &str = "wasmcustom.egress_allowlist_policy_fingerprint";
const HTTP_RULES: &str = "wasmcustom.egress_allowlist_policy_rules";
const TLS_FINGERPRINT: &str = "wasmcustom.egress_allowlist_tls_policy_fingerprint";
const TLS_RULES: &str = "wasmcustom.egress_allowlist_tls_policy_rules";

/// The fingerprint of `policy`, as `egressctl validate policy` prints it and the module computes it.
fn fingerprint(policy: &str) -> Fingerprint {
    Policy::from_json(policy.as_bytes()).expect("a valid policy").fingerprint()
}

/// What the gauges say serves, HTTP or TLS: `(fingerprint gauge, rules gauge)`; `None` for a gauge no VM set.
fn served(lab: &Lab, tls: bool) -> (Option<u64>, Option<u64>) {
    let (fingerprint, rules) = if tls { (TLS_FINGERPRINT, TLS_RULES) } else { (HTTP_FINGERPRINT, HTTP_RULES) };
    (lab.envoy.stat(fingerprint), lab.envoy.stat(rules))
}

/// What the gauges say when `policy` serves.
fn serving(policy: &str) -> (Option<u64>, Option<u64>) {
    let rules = Policy::from_json(policy.as_bytes()).expect("a valid policy").rule_count();
    (Some(fingerprint(policy).gauge()), Some(rules as u64))
}

/// Polls `find` until it gives something, for up to 15 s (access logs and Envoy's log are written asynchronously).
fn eventually<T>(find: impl Fn() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let found = find();
        if found.is_some() || Instant::now() > deadline {
            return found;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The `policy` of the access-log decision record of the request to `path`, once the line is written.
fn logged_policy(lab: &Lab, path: &str) -> Option<String> {
    eventually(|| {
        let line = lab.access_log().into_iter().find(|line| line["path"] == path)?;
        let decision: Value = serde_json::from_str(line["decision"].as_str()?).ok()?;
        Some(decision["policy"].as_str()?.to_string())
    })
}

/// The audit events in Envoy's log (audit configuration `{"log": true}`: one line per event, `… egress-audit:
/// {"schema":"egress-audit/v1",…}`).
fn audit_events(lab: &Lab) -> Vec<Value> {
    lab.envoy
        .log()
        .lines()
        .filter_map(|line| {
            let event = &line[line.find(r#"{"schema":"egress-audit/"#)?..];
            serde_json::Deserializer::from_str(event).into_iter::<Value>().next()?.ok()
        })
        .collect()
}

/// The `decision.policy` of the audit event of the request to `path`, once it is logged.
fn audited_policy(lab: &Lab, path: &str) -> Option<String> {
    eventually(|| {
        let event = audit_events(lab).into_iter().find(|event| event["request"]["path"] == path)?;
        Some(event["decision"]["policy"].as_str()?.to_string())
    })
}

/// Sends a GET of `switch.example` at `path` and asserts that its access-log decision record and its audit event
/// both name `policy` by its fingerprint.
#[track_caller]
fn assert_recorded_as(lab: &Lab, path: &str, policy: &str) {
    let response = client::get(lab.http(), SWITCH, path).expect("HTTP exchange");
    assert!(matches!(response.status, 200 | 403), "{} {}", response.status, response.body_str());
    let expected = Some(fingerprint(policy).to_string());
    assert_eq!(logged_policy(lab, path), expected, "the access-log decision record of {path}");
    assert_eq!(audited_policy(lab, path), expected, "the audit event of {path}");
}

fn ecds(lab: &Lab) -> &Ecds {
    lab.ecds.as_ref().expect("the lab delivers by ECDS")
}

#[track_caller]
fn push(lab: &Lab, root_id: &str, config: &str) -> Outcome {
    ecds(lab).push(&lab.envoy, root_id, config).expect("a verdict on the push")
}

fn counters(lab: &Lab, root_id: &str) -> Counters {
    ecds(lab).counters(&lab.envoy, root_id).expect("ECDS counters")
}

/// Which policy judged `response` to a GET of `switch.example`, if it is one of the two answers they give.
fn judged_by(response: &Response) -> Option<Judge> {
    let body: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    match response.status {
        200 if body["host"] == SWITCH => Some(Judge::A),
        403 if body["reason"] == "method_not_allowed" && body["rule"] == "b-post" => Some(Judge::B),
        _ => None,
    }
}

#[track_caller]
fn assert_http_judged_by(lab: &Lab, judge: Judge) {
    let response = client::get(lab.http(), SWITCH, "/").expect("HTTP exchange");
    assert_eq!(judged_by(&response), Some(judge), "{} {}", response.status, response.body_str());
}

/// Whether a TLS-passthrough connection with `sni` reaches the upstream (the filter closes refused ones).
fn tls_passes(lab: &Lab, sni: &str) -> bool {
    client::tls_get(lab.tls(), Some(sni), lab.pki.ca_pem(), sni, "/").is_ok_and(|response| response.status == 200)
}

#[track_caller]
fn assert_tls_judged_by(lab: &Lab, judge: Judge) {
    assert_eq!((tls_passes(lab, TLS_A), tls_passes(lab, TLS_B)), (judge == Judge::A, judge == Judge::B));
}

/// Envoy's log once it holds every one of `needles` (it is written asynchronously).
fn log_with(lab: &Lab, needles: &[String]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = lab.envoy.log();
        if needles.iter().all(|needle| log.contains(needle.as_str())) || Instant::now() > deadline {
            return log;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_refused_push_leaves_the_last_good_policy_serving_and_says_why() {
    let chain = Chain::under_test();
    let lab = lab(None, Vec::new());
    assert_http_judged_by(&lab, Judge::A);
    assert_tls_judged_by(&lab, Judge::A);

    let before = counters(&lab, chain.http);
    assert_eq!(push(&lab, chain.http, &chain.config(BAD_WILDCARD)), Outcome::Rejected);
    let after = counters(&lab, chain.http);
    assert_eq!((after.failed, after.refused, after.accepted), (before.failed + 1, before.refused + 1, before.accepted));
    let stat = ecds(&lab).stat_name(chain.http, "config_fail").unwrap();
    assert_eq!(lab.envoy.stat(&stat), Some(1), "{stat}");
    assert_http_judged_by(&lab, Judge::A);
    let post = client::request(lab.http(), "POST", SWITCH, "/", &[], b"").unwrap();
    assert_eq!((post.status, post.json()["rule"].as_str()), (403, Some("a-get")), "A still refuses a POST");

    // The rejection in the log: every problem with its field path (the plugin's own line, from the throwaway VM
    // Envoy runs `on_configure` on first), then Envoy's line for the refused resource.
    let plugin = ecds(&lab).plugin(chain.http).unwrap().name.clone();
    let mut needles: Vec<String> = BAD_WILDCARD_PROBLEMS.iter().map(|problem| chain.problem(problem)).collect();
    needles.push(format!("Filesystem config update rejected: Unable to create Wasm plugin {plugin}"));
    let log = log_with(&lab, &needles);
    for needle in &needles {
        assert!(log.contains(needle.as_str()), "missing {needle:?} in Envoy's log:\n{log}");
    }

    // The TLS plugin likewise, on its own resource.
    assert_eq!(push(&lab, chain.tls, &chain.config(BAD_WILDCARD)), Outcome::Rejected);
    assert_eq!(counters(&lab, chain.tls).failed, 1);
    assert_tls_judged_by(&lab, Judge::A);

    // Envoy remembers the refused configuration as the last one it was handed: the same push again is skipped as
    // unchanged, counted only as a successful update (no `config_fail`, no new rejection in the log). A control
    // plane re-sending it (istiod on reconnect) sees it acknowledged; only the first refusal is visible.
    let before = counters(&lab, chain.http);
    let plugin = ecds(&lab).plugin(chain.http).unwrap().clone();
    let typed = egress_harness::ecds::wasm_typed_config(&plugin, &chain.config(BAD_WILDCARD));
    ecds(&lab).post(chain.http, typed).unwrap();
    let after = ecds(&lab)
        .await_counters(&lab.envoy, chain.http, |now| now.accepted > before.accepted || now.refused > before.refused)
        .unwrap();
    assert_eq!(
        (after.accepted, after.refused, after.failed),
        (before.accepted + 1, before.refused, before.failed),
        "{before:?} -> {after:?}"
    );
    assert_http_judged_by(&lab, Judge::A);
}

#[test]
fn a_good_push_after_a_refused_one_is_applied() {
    let chain = Chain::under_test();
    let lab = lab(None, Vec::new());
    let small_b = policy_b(0);

    // envoyproxy/envoy#43751: a plugin whose `on_configure` failed on a worker marks the VM it was cloned from as
    // failed, and every later configuration of a plugin on that VM is refused. Here Envoy refuses the bad policy
    // on a throwaway clone (the "configuration canary") before any worker sees it, so nothing is poisoned: the
    // next good push to the same plugin, and to the other plugin of the same module (the HTTP and TLS plugins
    // share one VM), is applied.
    assert_eq!(push(&lab, chain.http, &chain.config(BAD_WILDCARD)), Outcome::Rejected);
    assert_eq!(push(&lab, chain.tls, &chain.config(&small_b)), Outcome::Applied);
    assert_tls_judged_by(&lab, Judge::B);
    assert_eq!(push(&lab, chain.http, &chain.config(&small_b)), Outcome::Applied);
    assert_http_judged_by(&lab, Judge::B);

    // Again, from a good policy that is not the first, with other mistakes, on both plugins.
    assert_eq!(push(&lab, chain.tls, &chain.config(BAD_FIELD)), Outcome::Rejected);
    assert_eq!(push(&lab, chain.http, &chain.config(BAD_FIELD)), Outcome::Rejected);
    assert_eq!(push(&lab, chain.http, &chain.config(BAD_CIDR)), Outcome::Rejected);
    assert_http_judged_by(&lab, Judge::B);
    assert_tls_judged_by(&lab, Judge::B);

    // Reverting to the policy that serves is applied too (Envoy compares a push with the refused one it was last
    // handed, not with the one in use), as is going back to the very first policy.
    assert_eq!(push(&lab, chain.http, &chain.config(&small_b)), Outcome::Applied);
    assert_http_judged_by(&lab, Judge::B);
    assert_eq!(push(&lab, chain.http, &chain.config(POLICY_A)), Outcome::Applied);
    assert_eq!(push(&lab, chain.tls, &chain.config(POLICY_A)), Outcome::Applied);
    assert_http_judged_by(&lab, Judge::A);
    assert_tls_judged_by(&lab, Judge::A);
}

/// The audit stage logs its events to Envoy's log (no collector needed).
const AUDIT_LOG: &str = r#"{"log": true}"#;

#[test]
fn the_fingerprint_gauges_and_every_record_name_the_policy_that_serves_and_a_refused_push_changes_none() {
    let chain = Chain::under_test();
    let audited = |policy: &str| LabOptions { audit_json: Some(AUDIT_LOG.into()), ..LabOptions::new(policy) };
    let options = LabOptions { delivery: Delivery::Ecds { first: Vec::new(), lds: false }, ..audited(POLICY_A) };
    let lab = Lab::start(&options).expect("start the gateway");
    assert_eq!(served(&lab, false), serving(POLICY_A));
    assert_eq!(served(&lab, true), serving(POLICY_A));
    assert_recorded_as(&lab, "/first", POLICY_A);
    // The audit configuration serves by its own fingerprint.
    let audit = AuditConfig::from_json(AUDIT_LOG.as_bytes()).expect("a valid audit configuration").fingerprint();
    assert_eq!(lab.envoy.stat("wasmcustom.egress_audit_config_fingerprint"), Some(audit.gauge()));

    // A good push: once it is applied the HTTP gauges name it (each VM sets them as it compiles the policy), the
    // TLS ones stay with their own plugin's policy; the module logs the fingerprint it configured.
    let b = policy_b(3);
    assert_eq!(push(&lab, chain.http, &chain.config_of(&audited(&b))), Outcome::Applied);
    assert_eq!(served(&lab, false), serving(&b));
    assert_eq!(served(&lab, true), serving(POLICY_A));
    assert_recorded_as(&lab, "/after-b", &b);
    let configured = format!("fingerprint {}", fingerprint(&b));
    let log = log_with(&lab, std::slice::from_ref(&configured));
    assert!(log.contains(&configured), "the module logs the fingerprint it was configured with:\n{log}");
    assert_eq!(push(&lab, chain.tls, &chain.config_of(&audited(&b))), Outcome::Applied);
    assert_eq!(served(&lab, true), serving(&b));

    // A refused push changes nothing an operator reads: the gauges, the records, the policy that judges.
    assert_eq!(push(&lab, chain.http, &chain.config_of(&audited(BAD_WILDCARD))), Outcome::Rejected);
    assert_eq!(push(&lab, chain.tls, &chain.config_of(&audited(BAD_CIDR))), Outcome::Rejected);
    assert_eq!(served(&lab, false), serving(&b));
    assert_eq!(served(&lab, true), serving(&b));
    assert_recorded_as(&lab, "/after-refusal", &b);
    assert_http_judged_by(&lab, Judge::B);
    assert_tls_judged_by(&lab, Judge::B);

    // The TLS-passthrough records name the policy too.
    let tls_lines = || lab.access_log().into_iter().filter(|line| line["sni"] == TLS_B).collect::<Vec<_>>();
    let tls_line = eventually(|| tls_lines().last().cloned()).expect("an access-log line for the TLS connection");
    let decision: Value = serde_json::from_str(tls_line["decision"].as_str().unwrap_or("null")).unwrap();
    assert_eq!(decision["policy"].as_str(), Some(fingerprint(&b).to_string().as_str()), "{tls_line}");
}

/// Requests of one client loop, sorted by the policy that judged them; anything else is a failure, described.
#[derive(Default)]
struct Tally {
    judged: [AtomicUsize; 2],
    failures: Mutex<Vec<String>>,
    /// The longest exchange since the last [`Tally::take_slowest`]: a measurement for `docs/operations.md` (the
    /// pause while a worker compiles a policy), printed, never asserted.
    slowest: Mutex<Duration>,
}

impl Tally {
    fn count(&self, judge: Judge) -> usize {
        self.judged[judge as usize].load(Ordering::SeqCst)
    }

    fn take_slowest(&self) -> Duration {
        std::mem::take(&mut *self.slowest.lock().unwrap())
    }

    fn record(&self, outcome: io::Result<Response>, took: Duration) {
        {
            let mut slowest = self.slowest.lock().unwrap();
            *slowest = (*slowest).max(took);
        }
        match outcome.as_ref().map(judged_by) {
            Ok(Some(judge)) => {
                self.judged[judge as usize].fetch_add(1, Ordering::SeqCst);
            }
            Ok(None) => {
                let response = outcome.as_ref().unwrap();
                let failure = format!("{} {}", response.status, response.body_str());
                self.failures.lock().unwrap().push(failure);
            }
            Err(error) => self.failures.lock().unwrap().push(format!("transport: {error}")),
        }
    }
}

/// One GET of `switch.example` on a kept-alive connection, reconnecting when the gateway says it closes.
fn keep_alive_get(stream: &mut Option<TcpStream>, gateway: SocketAddr) -> io::Result<Response> {
    if stream.is_none() {
        let fresh = TcpStream::connect(gateway)?;
        fresh.set_read_timeout(Some(client::TIMEOUT))?;
        *stream = Some(fresh);
    }
    let connection = stream.as_mut().ok_or_else(|| io::Error::other("no connection"))?;
    let response = client::exchange(connection, format!("GET / HTTP/1.1\r\nHost: {SWITCH}\r\n\r\n").as_bytes());
    if response.as_ref().map_or(true, |r| r.header("connection") == Some("close")) {
        *stream = None;
    }
    response
}

#[test]
fn pushes_under_load_fail_no_request_and_each_request_is_judged_by_one_whole_policy() {
    let chain = Chain::under_test();
    let lab = lab(None, Vec::new());
    let big_b = chain.config(&policy_b(100_000));
    let small_a = chain.config(POLICY_A);
    let gateway = lab.http();
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());

    // Two clients, paced to a few hundred requests a second in all: one opens a connection per request, one keeps
    // its connection (a new filter configuration applies to new requests on existing connections too).
    let clients: Vec<thread::JoinHandle<()>> = (0..2)
        .map(|client_index| {
            let (stop, tally) = (Arc::clone(&stop), Arc::clone(&tally));
            thread::spawn(move || {
                let mut kept = None;
                while !stop.load(Ordering::SeqCst) {
                    let started = Instant::now();
                    let outcome = if client_index == 0 {
                        client::get(gateway, SWITCH, "/")
                    } else {
                        keep_alive_get(&mut kept, gateway)
                    };
                    tally.record(outcome, started.elapsed());
                    thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();

    // Pushes alternate B (100k rules) and A. After each is applied, the next waits for requests judged by it:
    // every push lands while requests flow, and both policies are seen judging. The gauges name each policy as
    // soon as it is applied, the 100k one with every one of its rules.
    const JUDGED_BETWEEN_PUSHES: usize = 20;
    let (big_policy, small_policy) = (policy_b(100_000), POLICY_A.to_string());
    let mut measured = Vec::new();
    while tally.count(Judge::A) < JUDGED_BETWEEN_PUSHES {
        thread::sleep(Duration::from_millis(10));
    }
    measured.push(format!("before any push: slowest request {:?}", tally.take_slowest()));
    let pushes = [(&big_b, &big_policy, Judge::B), (&small_a, &small_policy, Judge::A)];
    for (config, policy, judge) in pushes.into_iter().cycle().take(4) {
        tally.take_slowest();
        let started = Instant::now();
        assert_eq!(push(&lab, chain.http, config), Outcome::Applied);
        let applied_in = started.elapsed();
        assert_eq!(served(&lab, false), serving(policy));
        let enough = tally.count(judge) + JUDGED_BETWEEN_PUSHES;
        let deadline = Instant::now() + Duration::from_secs(30);
        while tally.count(judge) < enough && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert!(tally.count(judge) >= enough, "too few requests judged by {judge:?} after its push");
        let (rules, bytes) = (served(&lab, false).1.unwrap_or(0), config.len());
        let slowest = tally.take_slowest();
        measured.push(format!(
            "push of {rules} rules ({bytes} bytes): applied in {applied_in:?}, slowest request {slowest:?}"
        ));
    }
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().unwrap();
    }

    let failures = tally.failures.lock().unwrap();
    let (by_a, by_b) = (tally.count(Judge::A), tally.count(Judge::B));
    assert!(failures.is_empty(), "{} of {} requests failed: {:?}", failures.len(), by_a + by_b, &failures[..]);
    // What the filter recorded agrees: every decision is A's allow by `a-get` or B's refusal by `b-post`.
    let decisions = access_log_decisions(&lab, by_a + by_b);
    assert_eq!(decisions.len(), by_a + by_b, "one access-log line per request");
    for decision in &decisions {
        let verdict = (decision["action"].as_str(), decision["rule"].as_str(), decision["reason"].as_str());
        assert!(
            matches!(
                verdict,
                (Some("allow"), Some("a-get"), _) | (Some("deny"), Some("b-post"), Some("method_not_allowed"))
            ),
            "{decision}"
        );
    }
    println!("{by_a} requests judged by A, {by_b} by B, over 4 pushes");
    for line in measured {
        println!("{line}");
    }
}

/// The filter's decisions on the `switch.example` lines of the access log, once it holds `count` of them.
fn access_log_decisions(lab: &Lab, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let decisions: Vec<Value> = lab
            .access_log()
            .iter()
            .filter(|line| line["authority"] == SWITCH)
            .map(|line| line["decision"].as_str().and_then(|d| serde_json::from_str(d).ok()).unwrap_or(Value::Null))
            .collect();
        if decisions.len() >= count || Instant::now() > deadline {
            return decisions;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A copy of the manifests of the chain under test with every plugin's `failStrategy` set to `strategy`.
fn manifests_with_fail_strategy(strategy: &str) -> PathBuf {
    let copy = std::env::temp_dir().join(format!("egress-pushes-{}-{strategy}", std::process::id()));
    fs::create_dir_all(&copy).unwrap();
    for entry in fs::read_dir(manifests_dir()).unwrap() {
        let path = entry.unwrap().path();
        let text = fs::read_to_string(&path).unwrap();
        let text = text.replace("failStrategy: FAIL_CLOSE", &format!("failStrategy: {strategy}"));
        let text = text.replace("failStrategy: FAIL_OPEN", &format!("failStrategy: {strategy}"));
        fs::write(copy.join(path.file_name().unwrap()), text).unwrap();
    }
    copy
}

/// Envoy receives a refused policy as the plugins' first configuration. The refusal ends the listeners' wait for
/// it (istiod's `initial_fetch_timeout: 0s` waits for an answer, not for a good one): Envoy is ready and listens,
/// and the filters have no configuration. Whatever the `failStrategy`, which only applies to a filter that has
/// one: every HTTP request gets a 500 (`NFCF`, no filter configuration found) and every TLS-passthrough connection
/// is closed. Egress is shut, not open, until a good push, which is then applied.
fn cold_start_with_a_refused_policy(fail_strategy: &str) {
    let chain = Chain::under_test();
    let manifests = manifests_with_fail_strategy(fail_strategy);
    let bad = chain.config(BAD_WILDCARD);
    let first = vec![(chain.http.to_string(), bad.clone()), (chain.tls.to_string(), bad)];
    let lab = lab(Some(&manifests), first);
    let expected_policy = if fail_strategy == "FAIL_OPEN" { "FAIL_OPEN" } else { "FAIL_CLOSED" };
    assert_eq!(ecds(&lab).plugin(chain.http).unwrap().failure_policy, expected_policy);
    assert_eq!((counters(&lab, chain.http).failed, counters(&lab, chain.tls).failed), (1, 1));

    let refused = client::get(lab.http(), SWITCH, "/").expect("an answer from the gateway");
    assert_eq!((refused.status, refused.body.len()), (500, 0), "{}", refused.body_str());
    let deadline = Instant::now() + Duration::from_secs(15);
    let flags = loop {
        let log = lab.access_log();
        let line = log.iter().find(|line| line["authority"] == SWITCH).cloned();
        if line.is_some() || Instant::now() > deadline {
            break line.map(|line| line["flags"].clone());
        }
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(flags, Some(json!("NFCF")), "no filter configuration found");
    assert!(!tls_passes(&lab, TLS_A), "a passthrough connection without the filter's configuration is closed");
    assert!(lab.echo.requests().is_empty(), "nothing reached an upstream");
    // No policy was ever configured: no VM set the gauges, so Envoy has none (an absent series, not a value).
    assert_eq!((served(&lab, false), served(&lab, true)), ((None, None), (None, None)));

    assert_eq!(push(&lab, chain.http, &chain.config(POLICY_A)), Outcome::Applied);
    assert_eq!(push(&lab, chain.tls, &chain.config(POLICY_A)), Outcome::Applied);
    assert_http_judged_by(&lab, Judge::A);
    assert_tls_judged_by(&lab, Judge::A);
    assert_eq!((served(&lab, false), served(&lab, true)), (serving(POLICY_A), serving(POLICY_A)));
    let healed = client::get(lab.http(), SWITCH, "/healed").unwrap();
    assert_eq!(healed.status, 200);
    assert_eq!(logged_policy(&lab, "/healed"), Some(fingerprint(POLICY_A).to_string()));

    // From here on a refused push is refused as with FAIL_CLOSE: the failure policy plays no part in it.
    assert_eq!(push(&lab, chain.http, &chain.config(BAD_FIELD)), Outcome::Rejected);
    assert_http_judged_by(&lab, Judge::A);
    assert_eq!(served(&lab, false), serving(POLICY_A));
    drop(lab);
    let _ = fs::remove_dir_all(manifests);
}

#[test]
fn a_cold_start_with_a_refused_policy_shuts_egress_until_a_good_push_fail_close() {
    cold_start_with_a_refused_policy("FAIL_CLOSE");
}

#[test]
fn a_cold_start_with_a_refused_policy_shuts_egress_until_a_good_push_fail_open() {
    cold_start_with_a_refused_policy("FAIL_OPEN");
}

/// When Istio's agent cannot fetch a plugin's module, it pushes an RBAC filter in its place (`pkg/wasm/
/// convert.go`): deny-all for FAIL_CLOSE, allow-all for FAIL_OPEN. The resource accepts both types, as istiod
/// lists them. Deny-all refuses every request and connection; allow-all lets everything out, the policy gone. A
/// later push of the plugin replaces either.
#[test]
fn istios_fallback_for_an_unfetchable_module_shuts_or_opens_egress_until_the_plugin_returns() {
    let chain = Chain::under_test();
    let lab = lab(None, Vec::new());
    let push_rbac = |root_id: &str, network: bool, allow: bool| {
        ecds(&lab).push_typed(&lab.envoy, root_id, rbac_typed_config(network, allow)).expect("a verdict")
    };

    assert_eq!(push_rbac(chain.http, false, false), Outcome::Applied);
    assert_eq!(push_rbac(chain.tls, true, false), Outcome::Applied);
    let denied = client::get(lab.http(), SWITCH, "/").unwrap();
    assert_eq!((denied.status, denied.body_str().as_ref()), (403, "RBAC: access denied"));
    assert!(!tls_passes(&lab, TLS_A));

    assert_eq!(push_rbac(chain.http, false, true), Outcome::Applied);
    assert_eq!(push_rbac(chain.tls, true, true), Outcome::Applied);
    for host in [SWITCH, "evil.example"] {
        let post = client::request(lab.http(), "POST", host, "/", &[], b"").unwrap();
        assert_eq!((post.status, post.json()["host"].as_str()), (200, Some(host)), "the policy is gone");
    }
    assert!(tls_passes(&lab, TLS_A) && tls_passes(&lab, TLS_B));

    assert_eq!(push(&lab, chain.http, &chain.config(POLICY_A)), Outcome::Applied);
    assert_eq!(push(&lab, chain.tls, &chain.config(POLICY_A)), Outcome::Applied);
    assert_http_judged_by(&lab, Judge::A);
    assert_tls_judged_by(&lab, Judge::A);
    let evil = client::get(lab.http(), "evil.example", "/").unwrap();
    assert_eq!(evil.status, 403);
}

/// Envoy's behaviour around a refused ECDS configuration, as found on 1.36.2 and 1.40.0 (`docs/operations.md`,
/// "Envoy's traps"). It is Envoy's, not the filters': each test states one behaviour operators must know, and fails
/// when an Envoy no longer behaves so, which is the signal to revisit that page (and how [`Ecds::push_typed`] reads
/// a verdict) for the new Envoy. The cold-start drills above (`a_cold_start_with_a_refused_policy_*`) are of the
/// same kind: egress shut (500 `NFCF`), never open, until a good push.
mod envoy_behaviour {
    use super::*;
    use egress_harness::bootstrap::HTTP_LISTENER;
    use egress_harness::ecds::{wasm_typed_config, Dumped};

    /// Envoy counts `config_reload` for a refused configuration (as it releases what it built for it), shows the
    /// refused configuration in `/config_dump` while the previous one serves, and acknowledges the same refused
    /// bytes sent again without a word (`update_success` only: no `config_fail`, no log line).
    #[test]
    fn counts_config_reload_for_a_refused_push_dumps_it_as_current_and_takes_it_resent_silently() {
        let chain = Chain::under_test();
        let lab = lab(None, Vec::new());
        let ecds = ecds(&lab);
        let serving_a = ecds.dumped(&lab.envoy, chain.http).unwrap();
        assert_eq!(serving_a.plugin_config, Some(chain.config(POLICY_A)));

        let bad = chain.config(BAD_WILDCARD);
        let before = counters(&lab, chain.http);
        let accepted_version = version_text(&lab, chain.http);
        assert_eq!(push(&lab, chain.http, &bad), Outcome::Rejected);
        let after = counters(&lab, chain.http);
        assert_eq!(
            (after.reloaded - before.reloaded, after.failed - before.failed),
            (1, 1),
            "config_reload counts the refused configuration too: {before:?} -> {after:?}"
        );
        let refused = Dumped { version: ecds.version().to_string(), plugin_config: Some(bad.clone()) };
        assert_eq!(ecds.dumped(&lab.envoy, chain.http).unwrap(), refused, "the config dump shows the refused one");
        assert_eq!(version_text(&lab, chain.http), accepted_version, "version_text: the last update acknowledged");
        assert_http_judged_by(&lab, Judge::A);
        assert_eq!(served(&lab, false), serving(POLICY_A), "while A serves");

        let name = &ecds.plugin(chain.http).unwrap().name;
        let rejection = format!("Filesystem config update rejected: Unable to create Wasm plugin {name}");
        let log = log_with(&lab, std::slice::from_ref(&rejection));
        assert_eq!(log.matches(rejection.as_str()).count(), 1, "{log}");

        // The same bytes again, as a control plane resends them on reconnect.
        let before = counters(&lab, chain.http);
        let plugin = ecds.plugin(chain.http).unwrap().clone();
        ecds.post(chain.http, wasm_typed_config(&plugin, &bad)).unwrap();
        let after = ecds
            .await_counters(&lab.envoy, chain.http, |now| {
                now.accepted > before.accepted || now.refused > before.refused
            })
            .unwrap();
        assert_eq!(after, Counters { accepted: before.accepted + 1, ..before }, "acknowledged, nothing else");
        // The subscription's `version_text` moves to the resent version; the config dump keeps the first refusal's.
        assert_eq!(version_text(&lab, chain.http), ecds.version().to_string());
        assert_eq!(ecds.dumped(&lab.envoy, chain.http).unwrap(), refused, "the dump still shows the first refusal");
        assert_http_judged_by(&lab, Judge::A);
        assert_eq!(served(&lab, false), serving(POLICY_A));
        assert_eq!(lab.envoy.log().matches(rejection.as_str()).count(), 1, "no second rejection logged");
    }

    /// The `version_text` of the plugin's ECDS subscription (a text stat: the `version_info` of the last update it
    /// acknowledged).
    fn version_text(lab: &Lab, root_id: &str) -> String {
        let name = ecds(lab).stat_name(root_id, "version_text").unwrap();
        let stats = lab.envoy.admin_get(&format!("/stats?filter=^{name}$")).unwrap();
        let value = stats.lines().find_map(|line| line.strip_prefix(name.as_str())?.strip_prefix(": "));
        value.unwrap_or_default().trim().trim_matches('"').to_string()
    }

    /// `listeners` with the HTTP listener's connection manager renamed `server_name` (the `server` header of its
    /// responses): a change of that listener's filter chain, as istiod makes when a Gateway or Telemetry changes.
    fn with_server_name(listeners: &[Value], server_name: &str) -> Vec<Value> {
        let mut changed = listeners.to_vec();
        let listener = changed.iter_mut().find(|listener| listener["name"] == HTTP_LISTENER).expect("the listener");
        listener["filter_chains"][0]["filters"][0]["typed_config"]["server_name"] = Value::from(server_name);
        changed
    }

    /// While the last configuration Envoy was handed for a plugin is a refused one, a change of a listener that
    /// carries the plugin is refused: Envoy builds the changed listener's filters from that last configuration
    /// (`applyLastOrDefaultConfig`), which fails again, and refuses the listener. The listener in use keeps serving
    /// with the last good policy; a good push lifts the block.
    #[test]
    fn refuses_a_listener_change_while_a_refused_configuration_is_the_last_it_was_handed() {
        let chain = Chain::under_test();
        let options =
            LabOptions { delivery: Delivery::Ecds { first: Vec::new(), lds: true }, ..LabOptions::new(POLICY_A) };
        let lab = Lab::start(&options).expect("start the gateway");
        let ecds = ecds(&lab);
        let server = || client::get(lab.http(), SWITCH, "/").unwrap().header("server").map(str::to_string);
        assert_http_judged_by(&lab, Judge::A);
        let listeners = ecds.listeners().unwrap();

        // The control: with the serving configuration the last one handed, a listener change is applied.
        assert_eq!(
            ecds.push_listeners(&lab.envoy, &with_server_name(&listeners, "egress-1")).unwrap(),
            Outcome::Applied
        );
        assert_eq!(server().as_deref(), Some("egress-1"));

        assert_eq!(push(&lab, chain.http, &chain.config(BAD_WILDCARD)), Outcome::Rejected);
        let change = with_server_name(&listeners, "egress-2");
        assert_eq!(ecds.push_listeners(&lab.envoy, &change).unwrap(), Outcome::Rejected);
        let name = &ecds.plugin(chain.http).unwrap().name;
        let refusal = format!("Error adding/updating listener(s) {HTTP_LISTENER}: Unable to create Wasm plugin {name}");
        let log = log_with(&lab, std::slice::from_ref(&refusal));
        assert!(log.contains(&refusal), "{log}");
        assert_eq!(server().as_deref(), Some("egress-1"), "the listener in use keeps serving");
        assert_http_judged_by(&lab, Judge::A);

        // A good push, then the same listener change is applied.
        assert_eq!(push(&lab, chain.http, &chain.config(&policy_b(0))), Outcome::Applied);
        assert_eq!(ecds.push_listeners(&lab.envoy, &change).unwrap(), Outcome::Applied);
        assert_eq!(server().as_deref(), Some("egress-2"));
        assert_http_judged_by(&lab, Judge::B);
    }
}
