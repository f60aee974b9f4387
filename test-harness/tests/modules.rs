//! The callbacks each module exports. Envoy enters a module for every proxy-wasm callback it exports and skips the
//! others, so `make build` (egress-wasm-build) keeps only the lifecycle exports and the callbacks of the module's
//! stages (each stage crate's `CALLBACKS`). A hook a stage implements but does not list would silently never run; one
//! listed but not implemented costs a VM entry per request for nothing. Both are caught here, before Envoy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use egress_harness::envoy::workspace_root;
use egress_harness::wasm_dir;
use egress_wasm_build::{exports, MODULES};
use std::collections::BTreeSet;
use std::fs;

/// The stage hooks (`egress_proxy::pipeline`) and the exports through which Envoy calls them (proxy-wasm 0.2 ABI).
const HOOKS: &[(&str, &str)] = &[
    ("on_request_headers", "proxy_on_request_headers"),
    ("on_request_trailers", "proxy_on_request_trailers"),
    ("on_response_headers", "proxy_on_response_headers"),
    ("on_log", "proxy_on_log"),
    ("on_new_connection", "proxy_on_new_connection"),
    ("on_tick", "proxy_on_tick"),
    ("on_http_call_response", "proxy_on_http_call_response"),
];

/// The exports of the hooks a stage crate implements (`fn on_…(&self` in its sources).
fn implemented(stage: &str) -> BTreeSet<String> {
    let source = fs::read_to_string(workspace_root().join("filters").join(stage).join("src/lib.rs")).unwrap();
    HOOKS
        .iter()
        .filter(|(hook, _)| source.contains(&format!("    fn {hook}(&self")))
        .map(|(_, export)| export.to_string())
        .collect()
}

fn listed(callbacks: &[&str]) -> BTreeSet<String> {
    callbacks.iter().map(|c| c.to_string()).collect()
}

#[test]
fn each_stage_lists_exactly_the_hooks_it_implements() {
    for (stage, callbacks) in [
        ("allowlist", egress_allowlist::CALLBACKS),
        ("identity", egress_identity::CALLBACKS),
        ("redirects", egress_redirects::CALLBACKS),
        ("audit", egress_audit::CALLBACKS),
    ] {
        assert_eq!(
            listed(callbacks),
            implemented(stage),
            "filters/{stage}: CALLBACKS (left) are not the hooks the stage implements (right)"
        );
    }
}

#[test]
fn built_modules_export_the_lifecycle_and_their_stages_callbacks_only() {
    for module in MODULES {
        let path = wasm_dir().join(module.file);
        let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run `make build`)", path.display()));
        let expected: BTreeSet<String> = module.exports().iter().map(|e| e.to_string()).collect();
        assert_eq!(exports(&bytes), Some(expected), "{}", path.display());
    }
}
