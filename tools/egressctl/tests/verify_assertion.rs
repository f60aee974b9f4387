//! `egressctl verify-assertion` as an upstream operator runs it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use egress_core::assertion::{sign, Claims};
use std::process::Command;

const KEY: &str = "an-upstream-shared-key-0123456789abcdef";

fn run(assertion: &str, path: &str, extra: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_egressctl"))
        .args(["verify-assertion", "--assertion", assertion, "--identity", "spiffe://cluster.local/ns/app/sa/sleep"])
        .args(["--method", "GET", "--authority", "httpbin.org", "--path", path, "--key-id", "k1"])
        .args(["--key-env", "EGRESSCTL_TEST_KEY"])
        .args(extra)
        .env("EGRESSCTL_TEST_KEY", KEY)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn verifies_what_the_gateway_signed_and_nothing_else() {
    let claims = Claims {
        identity: "spiffe://cluster.local/ns/app/sa/sleep",
        method: "GET",
        authority: "httpbin.org",
        path: "/headers?a=1",
    };
    let header = sign(KEY.as_bytes(), "k1", &claims, 1_000_000, &[9; 16]).unwrap();
    let (code, out) = run(&header, "/headers?a=1", &["--now", "1000010"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("valid: kid=k1 issued_at=1000000"), "{out}");
    let (code, out) = run(&header, "/headers?a=2", &["--now", "1000010"]);
    assert_eq!((code, out.trim()), (1, "invalid: signature does not match the request"));
    let (code, out) = run(&header, "/headers?a=1", &["--now", "1000400"]);
    assert_eq!((code, out.trim()), (1, "invalid: issued too long ago"));
    let (code, out) = run(&header, "/headers?a=1", &["--now", "yesterday"]);
    assert_eq!(code, 2, "{out}");
}
