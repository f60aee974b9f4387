//! Peak heap while loading a generated policy, natively: what `on_configure` costs the allow-list's Wasm VM, whose
//! linear memory only grows, so that its high-water mark is what a policy costs each worker.
//!
//! `cargo run --release -p egress-core --example policy_memory [RULES…]` (default 10 1000 10000 100000). The policy
//! is the benchmark's (`bench/src/scenarios.rs`, `generated_policy`). Columns:
//! - `from_json peak`: `Policy::from_json` on the whole JSON, the JSON buffer included;
//! - `streamed peak`: `Policy::from_reader` reading the JSON 64 KiB at a time, as the allow-list reads its plugin
//!   configuration from Envoy (so only a chunk of the text is ever in the VM);
//! - `retained`: the compiled policy once loading is over.
//!
//! A reallocation that grows is counted as a copy (old and new block both alive), so peaks are upper bounds of live
//! bytes; an allocator's fragmentation comes on top. Pointers are 8 bytes here and 4 in wasm32.
#![allow(clippy::expect_used, reason = "a measurement binary: a broken setup should stop it loudly")]

#[path = "../tests/common/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{generated_policy, measure, Chunked};
use egress_core::Policy;

fn size(bytes: usize) -> String {
    match bytes {
        0..1_048_576 => format!("{:.1} KiB", bytes as f64 / 1024.0),
        _ => format!("{:.2} MiB", bytes as f64 / 1_048_576.0),
    }
}

fn main() {
    let mut sizes: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("a number of rules")).collect();
    if sizes.is_empty() {
        sizes = vec![10, 1_000, 10_000, 100_000];
    }
    println!("| rules | JSON | from_json peak (JSON included) | streamed peak | retained |");
    println!("|---:|---:|---:|---:|---:|");
    for rules in sizes {
        let json = generated_policy(rules);
        let json_len = json.len();
        // The whole JSON in the VM, as `plugin_config()` hands it over, then parsed and compiled.
        let (whole, policy) = measure(|| Policy::from_json(&json.clone()).expect("generated policy is valid"));
        drop(policy);
        let mut reader = Chunked::new(json);
        let (streamed, policy) = measure(|| Policy::from_reader(&mut reader).expect("generated policy is valid"));
        assert_eq!(policy.rule_count(), rules);
        println!(
            "| {rules} | {} | {} | {} | {} |",
            size(json_len),
            size(whole.peak),
            size(streamed.peak),
            size(streamed.retained)
        );
    }
}
