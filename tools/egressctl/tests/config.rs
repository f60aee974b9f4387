//! `egressctl validate` and `egressctl explain` on files, as an operator runs them: exit codes and messages.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::PathBuf;
use std::process::Command;

fn file(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("egressctl-config-{}-{name}", std::process::id()));
    fs::write(&path, text).unwrap();
    path
}

fn egressctl(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_egressctl")).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap(), text)
}

const POLICY: &str = "
rules:
  - name: github
    hosts: [api.github.com]
    methods: [GET]
  - name: payments
    hosts: [api.stripe.com]
    namespaces: [billing]
deny:
  cidrs: [169.254.0.0/16]
";

#[test]
fn validate_names_the_field_path_of_every_problem() {
    let good = file("good.yaml", POLICY);
    let (code, text) = egressctl(&["validate", "policy", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("valid policy: 2 rules"), "{text}");

    let bad = file(
        "bad.yaml",
        "rules:\n  - name: a\n    hosts: [ok.example]\n  - name: b\n    hosts: ['a..b']\n    ports: [0]\n",
    );
    let (code, text) = egressctl(&["validate", "policy", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("rules[1].hosts[0]") && text.contains("rules[1].ports[0]"), "{text}");

    let identity = file("identity.yaml", "onMissing: maybe\n");
    let (code, text) = egressctl(&["validate", "identity", identity.to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("onMissing"), "{text}");
    assert_eq!(egressctl(&["validate", "nonsense", good.to_str().unwrap()]).0, 2);
}

#[test]
fn explain_tells_which_rule_decides_and_exits_by_the_decision() {
    let policy = file("explain.yaml", POLICY);
    let policy = policy.to_str().unwrap();
    let (code, text) = egressctl(&["explain", "https://api.github.com/repos/x", "--policy", policy]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("allow: rule `github`"), "{text}");
    let (code, text) = egressctl(&["explain", "https://api.github.com/", "--policy", policy, "--method", "POST"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("method_not_allowed"), "{text}");
    let billing = "spiffe://cluster.local/ns/billing/sa/api";
    let (code, text) = egressctl(&["explain", "https://api.stripe.com/v1", "--policy", policy, "--as", billing]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains(billing), "{text}");
    let (code, text) = egressctl(&["explain", "http://169.254.169.254/", "--policy", policy]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("deny_listed"), "{text}");
    assert_eq!(egressctl(&["explain", "https://x.example/", "--policy", policy, "--as", "not-spiffe"]).0, 2);
}

#[test]
fn explain_answers_on_stdout_either_way_and_says_what_is_wrong_with_a_url() {
    let policy = file("explain-stdout.yaml", POLICY);
    let run = |url: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_egressctl"))
            .args(["explain", url, "--policy"])
            .arg(&policy)
            .output()
            .unwrap();
        (
            output.status.code().unwrap(),
            String::from_utf8(output.stdout).unwrap(),
            String::from_utf8(output.stderr).unwrap(),
        )
    };
    let (code, stdout, stderr) = run("http://169.254.169.254/");
    assert_eq!((code, stderr.as_str()), (1, ""), "a refusal is an answer, not an error");
    assert!(stdout.contains("deny_listed"), "{stdout}");
    let (code, stdout, stderr) = run("http://user@api.github.com/");
    assert_eq!((code, stdout.as_str()), (2, ""));
    assert!(stderr.contains("userinfo (`user@` before the host)"), "{stderr}");
}
