//! `make run`'s suggestions do what it prints: for the example configuration and for configurations that change
//! every outcome (report mode, a policy without httpbin, an identity configuration that refuses anonymous callers
//! and tunnels), each suggested request is sent to the running lab and its status and `x-egress-denied-reason` are
//! the ones the printed outcome names.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use egress_harness::demo::{Demo, DemoOptions};
use egress_harness::envoy::workspace_root;
use std::net::SocketAddr;
use std::path::PathBuf;

fn example(path: &str) -> PathBuf {
    workspace_root().join(path)
}

/// A file in a scratch directory of this test.
fn scratch(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("egress-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts the lab on `policy` (and `identity`), sends every suggestion and compares it with its printed outcome.
/// Returns the outcomes, as printed, for the caller's own assertions.
fn every_outcome_happens(policy: PathBuf, identity: Option<PathBuf>) -> Vec<String> {
    let options = DemoOptions {
        policy,
        identity,
        audit: Some(example("examples/audit.yaml")),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let demo = Demo::start(&options).expect("start the lab");
    let mut printed = Vec::new();
    for try_ in demo.tries().expect("the suggestions") {
        let seen = try_.send(&demo).expect("send the suggestion");
        let predicted = (try_.outcome.status, try_.outcome.reason.clone());
        assert_eq!(seen, predicted, "{}\n  printed: {}", try_.command, try_.outcome);
        printed.push(try_.outcome.to_string());
    }
    printed
}

#[test]
fn the_example_configuration() {
    let printed = every_outcome_happens(example("examples/policy.yaml"), Some(example("examples/identity.yaml")));
    let joined = printed.join("\n");
    for expected in ["200: allowed by rule httpbin", "403: answered by the gateway: host_not_allowed", "deny_listed"] {
        assert!(joined.contains(expected), "{expected:?} in\n{joined}");
    }
    assert!(joined.contains("followed at the gateway"), "{joined}");
}

#[test]
fn report_mode_lets_everything_through_and_says_what_it_would_refuse() {
    let policy = std::fs::read_to_string(example("examples/policy.yaml")).unwrap();
    let report = scratch("report.yaml", &policy.replacen("mode: enforce", "mode: report", 1));
    let printed = every_outcome_happens(report, Some(example("examples/identity.yaml")));
    let joined = printed.join("\n");
    assert!(!joined.contains("answered by the gateway"), "report mode answers nothing itself:\n{joined}");
    assert!(joined.contains("report-deny (deny_listed), let through"), "{joined}");
}

#[test]
fn a_policy_without_httpbin_refuses_the_redirects_before_any_is_made() {
    let policy =
        scratch("github.yaml", "rules:\n  - name: github\n    hosts: [api.github.com]\nredirects:\n  follow: true\n");
    let printed = every_outcome_happens(policy, None);
    assert!(printed.iter().all(|outcome| !outcome.contains("followed")), "{printed:#?}");
}

#[test]
fn an_identity_configuration_that_refuses_anonymous_callers_and_tunnels() {
    let printed = every_outcome_happens(example("examples/policy.yaml"), Some(example("examples/istio/identity.yaml")));
    let joined = printed.join("\n");
    assert!(joined.contains("identity_required"), "{joined}");
    assert!(joined.contains("tunnel_not_allowed"), "{joined}");
}
