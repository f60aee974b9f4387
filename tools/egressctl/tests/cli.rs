//! The command line itself: help and version on stdout with exit 0 for every command, and one exit code per kind
//! of outcome (0 yes, 1 no, 2 usage, 3 input), each error on stderr.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn egressctl(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_egressctl")).args(args).output().unwrap();
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
    (output.status.code().unwrap_or(-1), text(output.stdout), text(output.stderr))
}

/// Every command and subcommand, as typed.
const COMMANDS: &[&[&str]] = &[
    &[],
    &["validate"],
    &["validate", "policy"],
    &["validate", "identity"],
    &["validate", "audit"],
    &["validate", "suite"],
    &["validate", "manifests"],
    &["explain"],
    &["render"],
    &["oci"],
    &["verify-assertion"],
    &["audit"],
    &["audit", "top-denied"],
    &["audit", "redirects"],
    &["audit", "would-deny"],
    &["audit", "suggest"],
    &["audit", "schema"],
];

#[test]
fn every_command_has_help_on_stdout_and_exits_0() {
    for command in COMMANDS {
        for flag in ["--help", "-h"] {
            let args = [command, &[flag][..]].concat();
            let (code, out, err) = egressctl(&args);
            assert_eq!((code, err.as_str()), (0, ""), "{args:?}");
            assert!(out.contains("Usage: egressctl"), "{args:?}: {out}");
        }
    }
    let (code, out, _) = egressctl(&["help", "audit", "suggest"]);
    assert!(code == 0 && out.contains("Usage: egressctl audit suggest"), "{out}");
    // The long help says what the exit codes mean.
    let (_, out, _) = egressctl(&["explain", "--help"]);
    assert!(out.contains("Exit codes: 0 valid, allowed, done; 1 invalid, refused"), "{out}");
}

#[test]
fn version_is_on_stdout() {
    let (code, out, err) = egressctl(&["--version"]);
    assert_eq!((code, out, err), (0, format!("egressctl {}\n", env!("CARGO_PKG_VERSION")), String::new()));
}

#[test]
fn each_kind_of_outcome_has_its_exit_code() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let policy = root.join("examples/policy.yaml");
    let policy = policy.to_str().unwrap();

    // 0 and 1: an answer, on stdout.
    let (code, out, _) = egressctl(&["explain", "https://httpbin.org/get", "--policy", policy]);
    assert!(code == 0 && out.contains("allow"), "{out}");
    let (code, out, _) = egressctl(&["explain", "https://unknown.example.org/", "--policy", policy]);
    assert!(code == 1 && out.contains("host_not_allowed"), "{out}");

    // 2: the command line, as clap and as egressctl judge it.
    for args in [
        &["frobnicate"][..],
        &["explain", "https://httpbin.org/"],
        &["explain", "https://httpbin.org/", "--policy", policy, "--as", "not-spiffe"],
        &["explain", "https://httpbin.org/", "--policy", policy, "--policy", policy],
        &["explain", "ftp://httpbin.org/", "--policy", policy],
        &["validate", "manifests"],
        &["verify-assertion", "--assertion", "a", "--identity", "i", "--method", "GET", "--authority", "a"],
        &["audit", "top-denied", "--limit", "-1"],
    ] {
        let (code, out, err) = egressctl(args);
        assert_eq!((code, out.as_str()), (2, ""), "{args:?}: {err}");
        assert!(!err.is_empty(), "{args:?}");
    }

    // 3: an input that cannot be read.
    let missing = "/nonexistent/policy.yaml";
    for args in [
        &["explain", "https://httpbin.org/", "--policy", missing][..],
        &["validate", "policy", missing],
        &["validate", "manifests", missing],
        &["audit", "redirects", missing],
        &["oci", "--wasm", missing, "--out", "/nonexistent/out", "--tag", "1.0"],
    ] {
        let (code, out, err) = egressctl(args);
        assert_eq!((code, out.as_str()), (3, ""), "{args:?}: {err}");
        assert!(err.starts_with(&format!("egressctl: {missing}: ")), "{args:?}: {err}");
    }
}
