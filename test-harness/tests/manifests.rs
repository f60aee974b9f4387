//! The shipped WasmPlugin manifests agree with the example policy and with the filter's own validation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use egress_core::workload::IdentityConfig;
use egress_core::Policy;
use egress_harness::envoy::workspace_root;
use egress_harness::{
    policy_json_from_yaml, ALLOWLIST_ROOT_ID, ALLOWLIST_TLS_ROOT_ID, IDENTITY_ROOT_ID, REDIRECTS_ROOT_ID,
};
use serde::Deserialize;
use serde_json::Value;
use std::fs;

fn documents(file: &str) -> Vec<Value> {
    let text = fs::read_to_string(workspace_root().join(file)).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text).map(|doc| Value::deserialize(doc).unwrap()).collect()
}

#[test]
fn allowlist_plugins_carry_the_example_policy_and_fail_closed() {
    let policy: Value =
        serde_yaml_ng::from_str(&fs::read_to_string(workspace_root().join("examples/policy.yaml")).unwrap()).unwrap();
    let plugins = documents("wasmplugin-manifests/allowlist.yaml");
    let mut seen = Vec::new();
    for plugin in &plugins {
        assert_eq!(plugin["kind"], "WasmPlugin");
        let spec = &plugin["spec"];
        let root_id = spec["pluginName"].as_str().unwrap();
        let want_type = match root_id {
            ALLOWLIST_ROOT_ID => "HTTP",
            ALLOWLIST_TLS_ROOT_ID => "NETWORK",
            other => panic!("unknown pluginName {other}"),
        };
        assert_eq!(spec["type"], want_type, "{root_id}");
        assert_eq!(spec["failStrategy"], "FAIL_CLOSE", "{root_id}: an allow-list must fail closed");
        assert_eq!(spec["selector"]["matchLabels"]["istio"], "egressgateway");
        assert_eq!(spec["pluginConfig"], policy, "{root_id}: pluginConfig drifted from examples/policy.yaml");
        policy_json_from_yaml(&spec["pluginConfig"].to_string()).expect("pluginConfig passes the filter's validation");
        seen.push(root_id.to_string());
    }
    seen.sort();
    assert_eq!(seen, [ALLOWLIST_ROOT_ID, ALLOWLIST_TLS_ROOT_ID]);
}

#[test]
fn the_identity_plugin_runs_first_fails_closed_and_takes_its_key_from_the_host() {
    let plugins = documents("wasmplugin-manifests/identity.yaml");
    assert_eq!(plugins.len(), 1);
    let spec = &plugins[0]["spec"];
    assert_eq!(spec["pluginName"], IDENTITY_ROOT_ID);
    assert_eq!((spec["phase"].as_str(), spec["type"].as_str()), (Some("AUTHN"), Some("HTTP")), "before the allow-list");
    assert_eq!(spec["failStrategy"], "FAIL_CLOSE");
    let key_env = spec["pluginConfig"]["signing"]["keyEnv"].as_str().unwrap();
    let env = &spec["vmConfig"]["env"][0];
    assert_eq!((env["name"].as_str(), env["valueFrom"].as_str()), (Some(key_env), Some("HOST")));
    let config = spec["pluginConfig"].to_string();
    let with_key = |var: &str| (var == key_env).then(|| "k".repeat(64));
    let compiled =
        IdentityConfig::from_json(config.as_bytes(), with_key).expect("pluginConfig passes the filter's validation");
    assert!(compiled.signer.is_some());

    let patch = documents("wasmplugin-manifests/egressgateway-env-patch.yaml");
    let container_env = patch[0]["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(container_env.contains(key_env), "the gateway pod provides {key_env}: {container_env}");
}

#[test]
fn the_redirects_plugin_reads_the_same_policy_and_the_route_follows_as_far_as_it_allows() {
    let allowlist = &documents("wasmplugin-manifests/allowlist.yaml")[0]["spec"];
    let redirects = &documents("wasmplugin-manifests/redirects.yaml")[0]["spec"];
    assert_eq!(redirects["pluginName"], REDIRECTS_ROOT_ID);
    assert_eq!(redirects["pluginConfig"], allowlist["pluginConfig"], "one policy, written once");
    assert_eq!((redirects["phase"].as_str(), allowlist["phase"].as_str()), (Some("AUTHZ"), Some("AUTHZ")));
    assert!(redirects["priority"].as_i64() < allowlist["priority"].as_i64(), "the allow-list runs first on requests");
    assert_eq!(redirects["failStrategy"], "FAIL_CLOSE");

    let policy = Policy::from_json(redirects["pluginConfig"].to_string().as_bytes()).unwrap();
    let envoy_filter = &documents("wasmplugin-manifests/follow-redirects-envoyfilter.yaml")[0];
    let internal_redirects =
        &envoy_filter["spec"]["configPatches"][0]["patch"]["value"]["route"]["internal_redirect_policy"];
    assert_eq!(internal_redirects["max_internal_redirects"].as_u64(), policy.follow_route_hops().map(u64::from));
    assert_eq!(internal_redirects["allow_cross_scheme_redirect"], true, "the filter vets schemes itself");
}

#[test]
fn the_audit_plugins_run_last_and_their_configuration_passes_validation() {
    let plugins = documents("wasmplugin-manifests/audit.yaml");
    let names: Vec<&str> = plugins.iter().map(|p| p["spec"]["pluginName"].as_str().unwrap()).collect();
    assert_eq!(names, [egress_harness::AUDIT_ROOT_ID, egress_harness::AUDIT_TLS_ROOT_ID]);
    for plugin in &plugins {
        let spec = &plugin["spec"];
        assert_eq!(spec["phase"], "STATS", "after every filter whose decisions it records");
        assert_eq!(spec["failStrategy"], "FAIL_OPEN", "records, never gates (README explains)");
        egress_core::audit::AuditConfig::from_json(spec["pluginConfig"].to_string().as_bytes())
            .expect("pluginConfig passes the filter's validation");
    }
    assert_eq!(plugins[1]["spec"]["type"], "NETWORK");
}
