//! The callbacks each module exports. Envoy enters a module for every proxy-wasm callback it exports and skips the
//! others, so `make build` keeps only the lifecycle exports and the callbacks a filter lists in its Cargo.toml
//! (`[package.metadata.proxy-wasm] callbacks`). A callback implemented but not listed would silently never run;
//! one listed but not implemented costs a VM entry per request for nothing. Both are caught here, before Envoy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use egress_harness::envoy::workspace_root;
use egress_harness::wasm_dir;
use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

const FILTERS: [&str; 4] = ["allowlist", "identity", "redirects", "audit"];

/// The SDK's trait methods and the exports through which Envoy calls them (proxy-wasm 0.2 ABI).
const CALLBACKS: &[(&str, &str)] = &[
    ("on_http_request_headers", "proxy_on_request_headers"),
    ("on_http_request_body", "proxy_on_request_body"),
    ("on_http_request_trailers", "proxy_on_request_trailers"),
    ("on_http_response_headers", "proxy_on_response_headers"),
    ("on_http_response_body", "proxy_on_response_body"),
    ("on_http_response_trailers", "proxy_on_response_trailers"),
    ("on_log", "proxy_on_log"),
    ("on_done", "proxy_on_done"),
    ("on_tick", "proxy_on_tick"),
    ("on_queue_ready", "proxy_on_queue_ready"),
    ("on_http_call_response", "proxy_on_http_call_response"),
    ("on_grpc_call_response", "proxy_on_grpc_receive"),
    ("on_grpc_stream_message", "proxy_on_grpc_receive"),
    ("on_grpc_stream_initial_metadata", "proxy_on_grpc_receive_initial_metadata"),
    ("on_grpc_stream_trailing_metadata", "proxy_on_grpc_receive_trailing_metadata"),
    ("on_grpc_stream_close", "proxy_on_grpc_close"),
    ("on_new_connection", "proxy_on_new_connection"),
    ("on_downstream_data", "proxy_on_downstream_data"),
    ("on_upstream_data", "proxy_on_upstream_data"),
    ("on_downstream_close", "proxy_on_downstream_connection_close"),
    ("on_upstream_close", "proxy_on_upstream_connection_close"),
    ("on_foreign_function", "proxy_on_foreign_function"),
];

/// The callbacks a filter's Cargo.toml lists, read as the Makefile reads them.
fn listed(filter: &str) -> BTreeSet<String> {
    let manifest = fs::read_to_string(workspace_root().join("filters").join(filter).join("Cargo.toml")).unwrap();
    let line = manifest
        .lines()
        .find_map(|line| line.strip_prefix("callbacks = [")?.strip_suffix(']'))
        .unwrap_or_else(|| panic!("filters/{filter}/Cargo.toml lists no [package.metadata.proxy-wasm] callbacks"));
    line.split(',').map(|name| name.trim().trim_matches('"').to_string()).collect()
}

/// The exports of the callbacks a filter's sources implement (`fn on_…(` in `impl` blocks of the SDK's traits).
fn implemented(filter: &str) -> BTreeSet<String> {
    let mut exports = BTreeSet::new();
    for entry in fs::read_dir(workspace_root().join("filters").join(filter).join("src")).unwrap() {
        let source = fs::read_to_string(entry.unwrap().path()).unwrap();
        for &(method, export) in CALLBACKS {
            if source.contains(&format!("    fn {method}(&mut self")) {
                exports.insert(export.to_string());
            }
        }
    }
    exports
}

/// The Makefile's LIFECYCLE_EXPORTS: kept in every module.
fn lifecycle() -> BTreeSet<String> {
    let makefile = fs::read_to_string(workspace_root().join("Makefile")).unwrap();
    let start = makefile.find("LIFECYCLE_EXPORTS := ").expect("the Makefile defines LIFECYCLE_EXPORTS");
    let value = makefile[start..].split_once(":= ").unwrap().1;
    let mut names = BTreeSet::new();
    for line in value.lines() {
        let (words, continued) = line.strip_suffix('\\').map_or((line, false), |words| (words, true));
        names.extend(words.split_whitespace().map(str::to_string));
        if !continued {
            break;
        }
    }
    names
}

fn leb128(bytes: &[u8], at: &mut usize) -> usize {
    let (mut value, mut shift) = (0usize, 0);
    loop {
        let byte = bytes[*at];
        *at += 1;
        value |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return value;
        }
        shift += 7;
    }
}

/// The names in a module's export section (section id 7: a vector of name, kind, index).
fn exports(module: &Path) -> BTreeSet<String> {
    let bytes = fs::read(module).unwrap_or_else(|e| panic!("{}: {e} (run `make build`)", module.display()));
    assert_eq!(&bytes[..4], b"\0asm", "{} is not a Wasm module", module.display());
    let mut at = 8;
    while at < bytes.len() {
        let id = bytes[at];
        at += 1;
        let size = leb128(&bytes, &mut at);
        let end = at + size;
        if id == 7 {
            let mut names = BTreeSet::new();
            for _ in 0..leb128(&bytes, &mut at) {
                let length = leb128(&bytes, &mut at);
                names.insert(String::from_utf8(bytes[at..at + length].to_vec()).unwrap());
                at += length + 1;
                leb128(&bytes, &mut at);
            }
            return names;
        }
        at = end;
    }
    BTreeSet::new()
}

#[test]
fn each_filter_lists_exactly_the_callbacks_it_implements() {
    for filter in FILTERS {
        assert_eq!(
            listed(filter),
            implemented(filter),
            "filters/{filter}: the callbacks listed in Cargo.toml (left) are not those the code implements (right)"
        );
    }
}

#[test]
fn built_modules_export_the_lifecycle_and_their_listed_callbacks_only() {
    let lifecycle = lifecycle();
    assert!(lifecycle.contains("proxy_on_context_create") && lifecycle.contains("proxy_on_delete"), "{lifecycle:?}");
    for filter in FILTERS {
        let module = wasm_dir().join(format!("egress_{filter}.wasm"));
        let expected: BTreeSet<String> = lifecycle.union(&listed(filter)).cloned().collect();
        assert_eq!(exports(&module), expected, "{}", module.display());
    }
}
