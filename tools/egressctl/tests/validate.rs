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
    // Together with a set of plugins, the other resources are measured and pass.
    let routing = root.join("wasmplugin-manifests/egress-routing");
    let suite = root.join("wasmplugin-manifests/suite");
    let (code, stdout, stderr) =
        egressctl(&["validate", "manifests", suite.to_str().unwrap(), routing.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("WasmPlugin istio-system/egress-suite: valid suite configuration"), "{stdout}");
    let (code, _, _) = egressctl(&["validate", "manifests"]);
    assert_eq!(code, 2);
}

/// A WasmPlugin of the allow-list with `rules` host rules, as YAML.
fn allowlist_of(rules: usize) -> String {
    let mut yaml = String::from(
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: egress-allowlist, namespace: \
         istio-system}\nspec:\n  pluginName: egress-allowlist\n  pluginConfig:\n    rules:\n",
    );
    for i in 0..rules {
        yaml.push_str(&format!("    - {{name: filler-{i:05}, hosts: [h{i:05}.filler.example]}}\n"));
    }
    yaml
}

#[test]
fn every_resource_is_measured_as_etcd_stores_it() {
    // 61 bytes of compact JSON a rule: 5,000 rules need server-side apply, 26,000 fit etcd, 27,000 do not (with
    // the API server's metadata).
    let dir = scratch("sizes", &[("small.yaml", &allowlist_of(3)), ("large.yaml", &allowlist_of(5_000))]);
    let (code, stdout, stderr) = egressctl(&["validate", "manifests", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let large = format!("{}: WasmPlugin istio-system/egress-allowlist: ", dir.join("large.yaml").display());
    let note = stdout.lines().find(|line| line.starts_with(&large) && line.contains("bytes as JSON")).expect(&stdout);
    assert!(note.contains("kubectl apply --server-side"), "{note}");
    assert!(!stdout.lines().any(|line| line.contains("small.yaml") && line.contains("bytes as JSON")), "{stdout}");

    let dir = scratch("too-large", &[("fits.yaml", &allowlist_of(25_500)), ("refused.yaml", &allowlist_of(27_000))]);
    let (code, stdout, stderr) = egressctl(&["validate", "manifests", dir.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}");
    let refused = format!("{}: WasmPlugin istio-system/egress-allowlist: ", dir.join("refused.yaml").display());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with(&refused) && stderr.contains("etcd refuses objects over 1572864 bytes"), "{stderr}");

    // Any resource, not only the plugins: the rendered Gateway is the first to outgrow etcd. Paths are checked
    // together, so the routing set goes with the plugins.
    let hosts: Vec<String> = (0..60_000).map(|i| format!("istio-system/h{i:05}.filler.example")).collect();
    let gateway = format!("kind: Gateway\nmetadata: {{name: istio-egressgateway, namespace: istio-system}}\nspec:\n  servers:\n  - hosts: {hosts:?}\n");
    let routing = scratch("routing", &[("gateway.yaml", &gateway)]);
    let plugins = scratch("plugins", &[("small.yaml", &allowlist_of(3))]);
    let (code, _, stderr) = egressctl(&["validate", "manifests", plugins.to_str().unwrap(), routing.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("Gateway istio-system/istio-egressgateway: ") && stderr.contains("etcd refuses"),
        "{stderr}"
    );
    let (code, _, stderr) = egressctl(&["validate", "manifests", routing.to_str().unwrap()]);
    assert_eq!(code, 1, "a Gateway alone, too large");
    assert!(stderr.contains("etcd refuses"), "{stderr}");
}
