//! The shipped manifests pass Istio's own CRD schemas: every Istio resource under `wasmplugin-manifests/` is what
//! `kubectl apply` would accept, with no field that Kubernetes would silently prune.
//!
//! The schemas come from `$ISTIO_CRDS` or `../shared/reference/istio-crds.gen.yaml`; without either the tests say
//! so and pass, since there is nothing to check against.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use egress_harness::envoy::workspace_root;
use egress_harness::openapi::CrdSchemas;
use serde::Deserialize;
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};

fn crds() -> Option<CrdSchemas> {
    match CrdSchemas::find().expect("the Istio CRDs load") {
        Some((path, schemas)) => {
            eprintln!("Istio CRDs: {} ({} kinds and versions)", path.display(), schemas.len());
            Some(schemas)
        }
        None => {
            eprintln!("SKIPPED: no Istio CRDs (set ISTIO_CRDS or provide ../shared/reference/istio-crds.gen.yaml)");
            None
        }
    }
}

/// Every `.yaml`/`.yml` file below `dir`, sorted so the report reads the same on every run.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(yaml_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// An `IstioOperator`: input to `istioctl install` (whose in-cluster operator and CRD are gone since Istio 1.24),
/// never applied with kubectl, so there is no CRD to check it against.
fn is_install_overlay(api_version: &str, kind: &str) -> bool {
    api_version.starts_with("install.istio.io/") && kind == "IstioOperator"
}

/// Istio's API groups: `networking.istio.io`, `extensions.istio.io`, `security.istio.io`, …
fn is_istio(api_version: &str) -> bool {
    api_version.split_once('/').is_some_and(|(group, _)| group == "istio.io" || group.ends_with(".istio.io"))
}

#[test]
fn every_istio_resource_in_the_manifests_passes_the_crd_schemas() {
    let Some(schemas) = crds() else { return };
    let root = workspace_root();
    let mut failures = Vec::new();
    let mut validated = 0;
    for file in yaml_files(&root.join("wasmplugin-manifests")) {
        let shown = file.strip_prefix(&root).unwrap_or(&file).display().to_string();
        let text = fs::read_to_string(&file).unwrap();
        for (index, document) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            let document = Value::deserialize(document).unwrap_or_else(|e| panic!("{shown} document {index}: {e}"));
            if document.is_null() {
                continue; // A comment-only preamble before the first `---`.
            }
            let api_version = document["apiVersion"].as_str().unwrap_or("(no apiVersion)");
            let kind = document["kind"].as_str().unwrap_or("(no kind)");
            let name = document["metadata"]["name"].as_str().unwrap_or("(unnamed)");
            let what = format!("{shown}: {kind} {name} ({api_version})");
            if is_install_overlay(api_version, kind) {
                eprintln!("{what}: an istioctl install overlay, not a cluster resource (manifests.rs checks it)");
                continue;
            }
            if !is_istio(api_version) {
                eprintln!("{what}: not an Istio CRD, not validated");
                continue;
            }
            match schemas.check(&document) {
                Ok(report) => {
                    validated += 1;
                    eprintln!("{what}: valid, {} errors", report.errors.len());
                    for note in &report.not_evaluated {
                        eprintln!("    not evaluated: {note}");
                    }
                    failures.extend(report.errors.iter().map(|error| format!("{what}: {error}")));
                }
                // An Istio group with no schema: a misspelt kind or a version this Istio does not serve.
                Err(error) => failures.push(format!("{what}: {error}")),
            }
        }
    }
    assert!(failures.is_empty(), "manifests the API server would reject or prune:\n  {}", failures.join("\n  "));
    assert!(validated > 0, "no Istio resource found under wasmplugin-manifests/");
}

#[test]
fn a_broken_wasm_plugin_is_reported_with_paths() {
    let Some(schemas) = crds() else { return };
    let plugin = json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": "broken", "namespace": "istio-system"},
        "spec": {
            "url": "oci://ghcr.io/egress-suite/egress-allowlist:0.1.0",
            "failStrategy": "FAIL_SOMETIMES",
            "pluginConfg": {"mode": "enforce"},
            "selector": {"matchLabels": {"istio": "egressgateway"}},
            "targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "egress"}],
        },
    });
    let mut errors = schemas.validate(&plugin).unwrap();
    errors.sort();
    assert_eq!(
        errors,
        [
            "spec.failStrategy: string \"FAIL_SOMETIMES\" is not one of FAIL_CLOSE, FAIL_OPEN, FAIL_RELOAD",
            "spec.pluginConfg: unknown field (not in the schema; Kubernetes would prune it)",
            "spec: only one of targetRefs or selector can be set (set: selector, targetRefs)",
        ]
    );
}

#[test]
fn an_istio_kind_without_a_schema_is_an_error_not_a_pass() {
    let Some(schemas) = crds() else { return };
    let misspelt = json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlug", "spec": {}});
    assert_eq!(
        schemas.validate(&misspelt),
        Err("no schema for apiVersion extensions.istio.io/v1alpha1 kind WasmPlug".into())
    );
}

#[test]
fn a_broken_telemetry_is_reported_with_paths() {
    let Some(schemas) = crds() else { return };
    let telemetry = json!({
        "apiVersion": "telemetry.istio.io/v1",
        "kind": "Telemetry",
        "metadata": {"name": "broken", "namespace": "istio-system"},
        "spec": {
            "selector": {"matchLabels": {"istio": "egressgateway"}},
            "accessLogging": [{"match": {"mode": "GATEWAY"}, "providers": [{"name": ""}], "filters": []}],
        },
    });
    let mut errors = schemas.validate(&telemetry).unwrap();
    errors.sort();
    assert_eq!(
        errors,
        [
            "spec.accessLogging[0].filters: unknown field (not in the schema; Kubernetes would prune it)",
            "spec.accessLogging[0].match.mode: string \"GATEWAY\" is not one of CLIENT_AND_SERVER, CLIENT, SERVER",
            "spec.accessLogging[0].providers[0].name: 0 characters, fewer than minLength 1",
        ]
    );
}
