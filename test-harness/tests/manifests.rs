//! The shipped Istio manifests: rendered from the example configurations and in sync with them, pinned to the
//! modules this checkout builds, ordered and failing as the suite needs, and loadable by a real Envoy in every
//! variant. (`crds.rs` checks them against Istio's CRD schemas.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use egress_core::Policy;
use egress_harness::envoy::{workspace_root, Launcher};
use egress_harness::istio::{self, DeployedPlugin};
use egress_harness::{gateway_bootstrap, wasm_dir, LabOptions};
use egressctl::config;
use egressctl::render::{self, Release, Source, Sources};
use serde::Deserialize;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};

const MANIFESTS: &str = "wasmplugin-manifests";

/// The sources and release `make manifests` renders from.
fn rendered() -> Vec<render::File> {
    let root = workspace_root();
    // Named as the Makefile names them: the generated headers say where each configuration came from.
    let source = |path: &str| Source { path: path.into(), value: config::read_yaml(&root.join(path)).unwrap() };
    let sources = Sources {
        policy: source("examples/policy.yaml"),
        identity: source("examples/istio/identity.yaml"),
        audit: source("examples/istio/audit.yaml"),
    };
    let makefile = fs::read_to_string(root.join("Makefile")).unwrap();
    let default = |name: &str| {
        let prefix = format!("{name} ?= ");
        makefile.lines().find_map(|l| l.strip_prefix(prefix.as_str())).unwrap().trim().to_string()
    };
    let release = Release { registry: default("REGISTRY"), tag: default("VERSION"), wasm_dir: wasm_dir() };
    render::render(&sources, &release).expect("the example configurations render")
}

fn variant(dir: &str) -> PathBuf {
    workspace_root().join(MANIFESTS).join(dir)
}

fn documents(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text).map(|doc| Value::deserialize(doc).unwrap()).collect()
}

#[test]
fn the_committed_manifests_are_what_the_examples_and_the_built_modules_render() {
    let files = rendered();
    let out = workspace_root().join(MANIFESTS);
    let mut drifted = Vec::new();
    for file in &files {
        let committed = fs::read_to_string(out.join(&file.path)).unwrap_or_default();
        if committed != file.text {
            drifted.push(file.path.display().to_string());
        }
    }
    let stale = render::stale_files(&out, &files).unwrap();
    assert!(
        drifted.is_empty() && stale.is_empty(),
        "wasmplugin-manifests/ is out of sync with examples/ or with the modules this checkout builds \
         (changed: {drifted:?}, no longer rendered: {stale:?}): run `make manifests` and commit the result"
    );
}

#[test]
fn the_separate_chain_runs_identity_then_allowlist_then_redirects_then_audit_and_fails_as_each_must() {
    let chain = istio::chain(&variant("wasmplugins"), &wasm_dir()).expect("pins match the built modules");
    let layer = |network: bool| -> Vec<(&str, &str)> {
        chain.iter().filter(|p| p.network == network).map(|p| (p.root_id.as_str(), p.failure_policy)).collect()
    };
    assert_eq!(
        layer(false),
        [
            ("egress-identity", "FAIL_CLOSED"),
            ("egress-allowlist", "FAIL_CLOSED"),
            ("egress-redirects", "FAIL_CLOSED"),
            ("egress-audit", "FAIL_OPEN"),
        ]
    );
    // The network audit filter comes first: Envoy creates no network filter behind one that closed the connection.
    // The identity filter refuses tunnels before the allow-list reads the SNI.
    assert_eq!(
        layer(true),
        [
            ("egress-audit-tls", "FAIL_OPEN"),
            ("egress-identity-tls", "FAIL_CLOSED"),
            ("egress-allowlist-tls", "FAIL_CLOSED")
        ]
    );

    let config = |root_id: &str| &chain.iter().find(|p| p.root_id == root_id).unwrap().config;
    let policy: Value =
        serde_yaml_ng::from_str(&fs::read_to_string(workspace_root().join("examples/policy.yaml")).unwrap()).unwrap();
    for root_id in ["egress-allowlist", "egress-allowlist-tls", "egress-redirects"] {
        assert_eq!(serde_json::from_str::<Value>(config(root_id)).unwrap(), policy, "{root_id}: one policy");
    }
    // The signing key comes from the gateway pod, which the env patch feeds from a Secret.
    let identity = chain.iter().find(|p| p.root_id == "egress-identity").unwrap();
    let key_env = serde_json::from_str::<Value>(&identity.config).unwrap()["signing"]["keyEnv"].clone();
    assert_eq!(identity.host_env_keys, [key_env.as_str().unwrap()]);
    let identity_tls = chain.iter().find(|p| p.root_id == "egress-identity-tls").unwrap();
    assert_eq!(
        (&identity_tls.config, &identity_tls.host_env_keys),
        (&identity.config, &identity.host_env_keys),
        "one VM, one configuration"
    );
    let patch = documents(&workspace_root().join(MANIFESTS).join("egressgateway-env-patch.yaml"));
    let pod_env = patch[0]["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(pod_env.contains(key_env.as_str().unwrap()), "the gateway pod provides {key_env}: {pod_env}");
}

#[test]
fn every_variant_deploys_the_same_chain() {
    let summary = |chain: Vec<DeployedPlugin>| -> Vec<String> {
        chain
            .iter()
            .map(|p| {
                let module = p.module.file_name().unwrap().to_string_lossy().to_string();
                format!(
                    "{} {} {} {} {:?} {}",
                    p.root_id, p.network, p.failure_policy, module, p.host_env_keys, p.config
                )
            })
            .collect()
    };
    let reference = summary(istio::chain(&variant("wasmplugins"), &wasm_dir()).unwrap());
    assert_eq!(reference.len(), 7);
    for dir in render::variant_dirs().filter(|dir| *dir != "suite") {
        let chain = istio::chain(&variant(dir), &wasm_dir()).unwrap_or_else(|e| panic!("{dir}: {e}"));
        assert_eq!(summary(chain), reference, "{dir}");
    }
}

/// The recommended deployment: the fused module, first in both chains, failing closed, with a section per stage
/// holding exactly the example configurations, and the signing key from the gateway pod.
#[test]
fn the_suite_is_one_filter_per_traffic_type_configured_from_the_same_files() {
    let chain = istio::chain(&variant("suite"), &wasm_dir()).expect("pins match the built modules");
    let summary: Vec<(&str, bool, &str)> =
        chain.iter().map(|p| (p.root_id.as_str(), p.network, p.failure_policy)).collect();
    assert_eq!(summary, [("egress-suite", false, "FAIL_CLOSED"), ("egress-suite-tls", true, "FAIL_CLOSED")]);
    let yaml = |path: &str| -> Value {
        serde_yaml_ng::from_str(&fs::read_to_string(workspace_root().join(path)).unwrap()).unwrap()
    };
    for plugin in &chain {
        let sections: Value = serde_json::from_str(&plugin.config).unwrap();
        assert_eq!(sections["policy"], yaml("examples/policy.yaml"), "{}", plugin.root_id);
        assert_eq!(sections["identity"], yaml("examples/istio/identity.yaml"), "{}", plugin.root_id);
        assert_eq!(sections["audit"], yaml("examples/istio/audit.yaml"), "{}", plugin.root_id);
        assert_eq!(plugin.host_env_keys, [sections["identity"]["signing"]["keyEnv"].as_str().unwrap()]);
    }
    let top = &documents(&workspace_root().join(MANIFESTS).join("kustomization.yaml"))[0];
    let resources: Vec<&str> = top["resources"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    assert!(
        resources.contains(&"suite") && !resources.contains(&"wasmplugins"),
        "the recommended deployment: {resources:?}"
    );
}

#[test]
fn redirects_are_followed_as_far_as_the_policy_allows() {
    let chain = istio::chain(&variant("wasmplugins"), &wasm_dir()).unwrap();
    let allowlist = chain.iter().find(|p| p.root_id == "egress-allowlist").unwrap();
    let policy = Policy::from_json(allowlist.config.as_bytes()).unwrap();
    let envoy_filter = &documents(&workspace_root().join(MANIFESTS).join(render::FOLLOW_REDIRECTS_FILE))[0];
    let route = &envoy_filter["spec"]["configPatches"][0]["patch"]["value"]["route"];
    let internal_redirects = &route["internal_redirect_policy"];
    assert_eq!(internal_redirects["max_internal_redirects"].as_u64(), policy.follow_route_hops().map(u64::from));
    assert_eq!(internal_redirects["allow_cross_scheme_redirect"], true, "the filter vets schemes itself");
}

#[test]
fn every_kustomization_lists_files_that_exist() {
    let mut checked = 0;
    let mut pending = vec![workspace_root().join(MANIFESTS)];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.file_name().is_some_and(|n| n == "kustomization.yaml") {
                let kustomization = &documents(&path)[0];
                for resource in kustomization["resources"].as_array().unwrap() {
                    let target = dir.join(resource.as_str().unwrap());
                    let exists = target.is_file() || target.join("kustomization.yaml").is_file();
                    assert!(exists, "{}: resource {resource} does not exist", path.display());
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 7, "the top-level, routing and five variant kustomizations: {checked}");
}

/// Envoy itself loads every variant's chain with the deployed configurations: modules, root ids, and each
/// filter's own validation of its pluginConfig (`on_configure`).
#[test]
fn envoy_loads_every_variant_as_deployed() {
    let launcher = Launcher::find().unwrap();
    let key = vec![("EGRESS_ASSERTION_KEY".to_string(), "k".repeat(64))];
    for dir in render::variant_dirs() {
        let mut options = LabOptions::deployed(&variant(dir), key.clone()).unwrap();
        options.collector = Some(([127, 0, 0, 1], 9).into());
        let bootstrap = gateway_bootstrap(&options).unwrap();
        let mut envoy = launcher.clone();
        envoy.env.extend(key.iter().cloned());
        envoy.validate(&bootstrap).unwrap_or_else(|e| panic!("{dir}: Envoy refuses the deployed chain: {e}"));
    }
}
