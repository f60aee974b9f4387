//! The shipped manifests pass Istio's own CRD schemas: every Istio resource under `wasmplugin-manifests/` is what
//! `kubectl apply` would accept, with no field that Kubernetes would silently prune.
//!
//! The schemas come from `$ISTIO_CRDS` or `../shared/reference/istio-crds.gen.yaml`; without either the tests say
//! so and pass, since there is nothing to check against.
//!
//! The Gateway API resources of `gateway-api-routing/` (`gateway.networking.k8s.io`: Gateway, HTTPRoute, TLSRoute)
//! are not Istio CRDs and the reference file does not carry them: they are checked against the Gateway API CRDs
//! when `$GATEWAY_API_CRDS` names them (the standard channel's `gateway.networking.k8s.io_*.yaml`, concatenated),
//! and otherwise against [`gateway_api_shape`], the rules of those CRDs that matter here, written out.

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
            let Some(gateway_api) = std::env::var_os("GATEWAY_API_CRDS").filter(|v| !v.is_empty()) else {
                return Some(schemas);
            };
            // One set of schemas from both files: the Istio CRDs and the Gateway API's.
            let read = |path: &Path| fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let text = format!("{}\n---\n{}", read(&path), read(Path::new(&gateway_api)));
            let schemas = CrdSchemas::parse(&text).expect("the Istio and Gateway API CRDs load");
            eprintln!(
                "with the Gateway API CRDs of {} ({} kinds and versions)",
                gateway_api.to_string_lossy(),
                schemas.len()
            );
            Some(schemas)
        }
        None => {
            eprintln!("SKIPPED: no Istio CRDs (set ISTIO_CRDS or provide ../shared/reference/istio-crds.gen.yaml)");
            None
        }
    }
}

/// The Gateway API's group.
fn is_gateway_api(api_version: &str) -> bool {
    api_version.split_once('/').is_some_and(|(group, _)| group == "gateway.networking.k8s.io")
}

fn dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Unknown fields (which Kubernetes would prune) and missing required ones of the object at `at`.
fn fields(errors: &mut Vec<String>, at: &str, value: &Value, known: &[&str], required: &[&str]) {
    let Some(object) = value.as_object() else {
        errors.push(format!("{at}: not an object"));
        return;
    };
    for key in object.keys().filter(|k| !known.contains(&k.as_str())) {
        errors.push(format!("{at}.{key}: unknown field (not in the schema; Kubernetes would prune it)"));
    }
    for key in required.iter().filter(|k| !object.contains_key(**k)) {
        errors.push(format!("{at}.{key}: required"));
    }
}

/// The items of the list at `at`, which must have `min` to `max` of them (absent: none).
fn items(errors: &mut Vec<String>, at: &str, value: &Value, min: usize, max: usize) -> Vec<Value> {
    let items = value.as_array().cloned().unwrap_or_default();
    if !(min..=max).contains(&items.len()) {
        errors.push(format!("{at}: {} items, allowed {min}-{max}", items.len()));
    }
    items
}

fn port_number(errors: &mut Vec<String>, at: &str, value: &Value) {
    if !value.as_u64().is_some_and(|p| (1..=65535).contains(&p)) {
        errors.push(format!("{at}: {value} is not a port"));
    }
}

/// The rules of the Gateway API v1 standard CRDs (v1.5 and later) that the rendered Gateway, HTTPRoute and TLSRoute
/// must meet, for when those CRDs are not at hand: the version served, the fields each kind has (an unknown one
/// would be pruned), required fields and lists with their bounds, name and hostname patterns, listener protocols and
/// TLS modes, and the CEL rules the shapes here touch (a Terminate listener needs certificateRefs or options; a
/// TLSRoute has exactly one rule). Errors start with the field path, as the schema validator's do.
fn gateway_api_shape(document: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let kind = document["kind"].as_str().unwrap_or_default();
    if document["apiVersion"] != "gateway.networking.k8s.io/v1" || !["Gateway", "HTTPRoute", "TLSRoute"].contains(&kind)
    {
        return vec![format!("{} {kind}: not a Gateway API v1 kind the routing uses", document["apiVersion"])];
    }
    fields(&mut errors, "", document, &["apiVersion", "kind", "metadata", "spec"], &["metadata", "spec"]);
    let metadata = &document["metadata"];
    fields(&mut errors, "metadata", metadata, &["name", "namespace", "annotations", "labels"], &["name", "namespace"]);
    if !metadata["name"].as_str().is_some_and(|n| n.split('.').all(dns_label)) {
        errors.push("metadata.name: not a DNS-1123 subdomain".into());
    }
    let spec = &document["spec"];
    if kind == "Gateway" {
        let known = ["gatewayClassName", "listeners", "addresses", "infrastructure"];
        fields(&mut errors, "spec", spec, &known, &["gatewayClassName", "listeners"]);
        let mut names = Vec::new();
        for (i, listener) in items(&mut errors, "spec.listeners", &spec["listeners"], 1, 64).iter().enumerate() {
            let at = format!("spec.listeners[{i}]");
            let known = ["name", "hostname", "port", "protocol", "tls", "allowedRoutes"];
            fields(&mut errors, &at, listener, &known, &["name", "port", "protocol"]);
            let name = listener["name"].as_str().unwrap_or_default().to_string();
            if !dns_label(&name) || names.contains(&name) {
                errors.push(format!("{at}.name: `{name}` is not a unique DNS-1123 label"));
            }
            names.push(name);
            port_number(&mut errors, &format!("{at}.port"), &listener["port"]);
            let protocol = listener["protocol"].as_str().unwrap_or_default();
            if !["HTTP", "HTTPS", "TLS", "TCP", "UDP"].contains(&protocol) {
                errors.push(format!("{at}.protocol: {protocol}"));
            }
            let tls = &listener["tls"];
            if ["HTTPS", "TLS"].contains(&protocol) {
                fields(&mut errors, &format!("{at}.tls"), tls, &["mode", "certificateRefs", "options"], &[]);
                match tls["mode"].as_str().unwrap_or("Terminate") {
                    "Terminate" if tls["certificateRefs"].is_null() && tls["options"].is_null() => errors
                        .push(format!("{at}.tls: certificateRefs or options must be specified when mode is Terminate")),
                    "Passthrough" if protocol == "HTTPS" => {
                        errors.push(format!("{at}.tls.mode: an HTTPS listener terminates TLS"))
                    }
                    "Terminate" | "Passthrough" => {}
                    other => errors.push(format!("{at}.tls.mode: {other}")),
                }
            }
            let allowed = &listener["allowedRoutes"];
            if !allowed.is_null() {
                fields(&mut errors, &format!("{at}.allowedRoutes"), allowed, &["namespaces", "kinds"], &[]);
                let from = allowed["namespaces"]["from"].as_str().unwrap_or("Same");
                if !["All", "Same", "Selector"].contains(&from) {
                    errors.push(format!("{at}.allowedRoutes.namespaces.from: {from}"));
                }
                for (k, route) in allowed["kinds"].as_array().into_iter().flatten().enumerate() {
                    fields(
                        &mut errors,
                        &format!("{at}.allowedRoutes.kinds[{k}]"),
                        route,
                        &["group", "kind"],
                        &["kind"],
                    );
                }
            }
        }
        return errors;
    }
    let tls_route = kind == "TLSRoute";
    let required: &[&str] = if tls_route { &["hostnames", "rules"] } else { &[] };
    fields(&mut errors, "spec", spec, &["parentRefs", "hostnames", "rules"], required);
    for (i, parent) in items(&mut errors, "spec.parentRefs", &spec["parentRefs"], 1, 32).iter().enumerate() {
        let at = format!("spec.parentRefs[{i}]");
        fields(&mut errors, &at, parent, &["group", "kind", "namespace", "name", "sectionName", "port"], &["name"]);
        if !parent["port"].is_null() {
            port_number(&mut errors, &format!("{at}.port"), &parent["port"]);
        }
    }
    let hostnames = items(&mut errors, "spec.hostnames", &spec["hostnames"], usize::from(tls_route), 16);
    for (i, name) in hostnames.iter().enumerate() {
        let valid = name
            .as_str()
            .is_some_and(|h| h.len() <= 253 && h.strip_prefix("*.").unwrap_or(h).split('.').all(dns_label));
        if !valid {
            errors.push(format!("spec.hostnames[{i}]: {name} does not match the hostname pattern"));
        }
    }
    let (min, max) = if tls_route { (1, 1) } else { (0, 16) };
    for (i, rule) in items(&mut errors, "spec.rules", &spec["rules"], min, max).iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        fields(&mut errors, &at, rule, &["backendRefs", "matches", "filters", "name", "timeouts"], &[]);
        let backends =
            items(&mut errors, &format!("{at}.backendRefs"), &rule["backendRefs"], usize::from(tls_route), 16);
        for (k, backend) in backends.iter().enumerate() {
            let at = format!("{at}.backendRefs[{k}]");
            fields(&mut errors, &at, backend, &["group", "kind", "name", "namespace", "port", "weight"], &["name"]);
            port_number(&mut errors, &format!("{at}.port"), &backend["port"]);
        }
    }
    errors
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
    let mut gateway_api_shaped = 0;
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
            if is_gateway_api(api_version) && schemas.check(&document).is_err() {
                let errors = gateway_api_shape(&document);
                gateway_api_shaped += 1;
                eprintln!(
                    "{what}: no Gateway API CRD loaded (GATEWAY_API_CRDS): shape-checked, {} errors",
                    errors.len()
                );
                failures.extend(errors.into_iter().map(|error| format!("{what}: {error}")));
                continue;
            }
            if !is_istio(api_version) && !is_gateway_api(api_version) {
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
    if gateway_api_shaped > 0 {
        eprintln!(
            "{gateway_api_shaped} Gateway API resources shape-checked: set GATEWAY_API_CRDS for their CRD schemas"
        );
    }
}

/// The shape check catches what the Gateway API CRDs would refuse in the shapes the routing renders.
#[test]
fn a_broken_gateway_api_route_is_reported_with_paths() {
    let route = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "TLSRoute",
        "metadata": {"name": "mesh-x", "namespace": "istio-egress"},
        "spec": {
            "parentRefs": [{"kind": "ServiceEntry", "group": "networking.istio.io", "name": "x", "port": 0}],
            "rules": [{"backendRefs": []}, {"backendRefs": [{"name": "gw", "port": 443, "weigth": 1}]}],
        },
    });
    let mut errors = gateway_api_shape(&route);
    errors.sort();
    assert_eq!(
        errors,
        [
            "spec.hostnames: 0 items, allowed 1-16",
            "spec.hostnames: required",
            "spec.parentRefs[0].port: 0 is not a port",
            "spec.rules: 2 items, allowed 1-1",
            "spec.rules[0].backendRefs: 0 items, allowed 1-16",
            "spec.rules[1].backendRefs[0].weigth: unknown field (not in the schema; Kubernetes would prune it)",
        ]
    );
    let gateway = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "egress-gateway", "namespace": "istio-egress"},
        "spec": {"gatewayClassName": "istio", "listeners": [
            {"name": "mtls", "port": 80, "protocol": "HTTPS", "tls": {"mode": "Terminate"}},
            {"name": "mtls", "port": 443, "protocol": "TLS", "tls": {"mode": "Passthrough"}},
        ]},
    });
    assert_eq!(
        gateway_api_shape(&gateway),
        [
            "spec.listeners[0].tls: certificateRefs or options must be specified when mode is Terminate",
            "spec.listeners[1].name: `mtls` is not a unique DNS-1123 label",
        ]
    );
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
