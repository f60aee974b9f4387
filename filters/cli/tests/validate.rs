//! `egressctl validate`: configuration files and the rendered Istio resources, checked by the filters' own code, with
//! the exit codes a CI pipeline keys on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

fn egressctl(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_egressctl")).args(args).output().unwrap();
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
    (output.status.code().unwrap(), text(output.stdout), text(output.stderr))
}

fn scratch(name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("egressctl-validate-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (file, text) in files {
        std::fs::write(dir.join(file), text).unwrap();
    }
    dir
}

const BROKEN: &str = r#"
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: egress-allowlist, namespace: istio-system}
spec:
  pluginName: egress-allowlist
  pluginConfig:
    rules:
    - name: a
      hosts: ["x*.example.com"]
      ports: ["80"]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: unrelated}
data: {a: b}
---
apiVersion: extensions.istio.io/v1alpha1
kind: TrafficExtension
metadata: {name: egress-identity, namespace: istio-system}
spec:
  wasm:
    pluginName: egress-identity
    pluginConfig: {trustedHops: ["spiffe://cluster.local/ns/edge/sa/proxy"]}
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: egress-suite, namespace: istio-system}
spec:
  pluginName: egress-suite
"#;

#[test]
fn rendered_manifests_are_checked_by_the_filters_code_with_resource_and_field_paths() {
    let dir = scratch("broken", &[("plugins.yaml", BROKEN)]);
    let (code, stdout, stderr) = egressctl(&["validate", "manifests", dir.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let file = dir.join("plugins.yaml");
    let file = file.display();
    for want in [
        format!("{file}: WasmPlugin istio-system/egress-allowlist: spec.pluginConfig.rules[0].ports[0]: invalid type"),
        format!(
            "{file}: WasmPlugin istio-system/egress-allowlist: spec.pluginConfig.rules[0].hosts[0]: `x*.example.com`"
        ),
        format!("{file}: TrafficExtension istio-system/egress-identity: spec.wasm.pluginConfig.trustedHops[0]:"),
        format!("{file}: WasmPlugin istio-system/egress-suite: spec.pluginConfig: the document is empty"),
    ] {
        assert!(stderr.lines().any(|line| line.starts_with(&want)), "missing {want:?} in\n{stderr}");
    }
    assert_eq!(stderr.lines().count(), 4, "{stderr}");
}

#[test]
fn the_committed_manifests_are_valid_and_show_the_policys_fingerprint() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let (_, policy, _) = egressctl(&["validate", "policy", root.join("examples/policy.yaml").to_str().unwrap()]);
    let fingerprint = policy.split("fingerprint ").nth(1).and_then(|rest| rest.get(..16)).expect("a fingerprint");
    for set in
        ["wasmplugin-manifests/wasmplugins", "wasmplugin-manifests/suite", "wasmplugin-manifests/trafficextensions"]
    {
        let (code, stdout, stderr) = egressctl(&["validate", "manifests", root.join(set).to_str().unwrap()]);
        assert_eq!(code, 0, "{set}: {stderr}");
        assert!(stdout.contains(&format!("fingerprint {fingerprint}")), "{set}: {stdout}");
    }
    let dir = scratch("none", &[("other.yaml", "kind: ConfigMap\nmetadata: {name: x}\n")]);
    let (code, _, stderr) = egressctl(&["validate", "manifests", dir.to_str().unwrap()]);
    assert_eq!(code, 1, "nothing checked is no pass: {stderr}");
    let (code, _, _) = egressctl(&["validate", "manifests"]);
    assert_eq!(code, 2);
}
