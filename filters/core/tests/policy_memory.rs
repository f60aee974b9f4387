//! What loading a large policy costs the heap (a Wasm VM's linear memory only grows, so its peak is what a policy
//! costs each worker). A guard against regressions; `examples/policy_memory.rs` prints the figures.
#![cfg(not(target_arch = "wasm32"))]

#[path = "common/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{generated_policy, measure, Chunked};
use egress_core::Policy;

#[test]
fn a_generated_policy_of_10k_rules_loads_in_little_memory() {
    const MIB: usize = 1024 * 1024;
    let json = generated_policy(10_000);
    let json_len = json.len();
    let (whole, policy) = measure(|| Policy::from_json(&json.clone()).map(|p| p.rule_count()));
    assert_eq!(policy, Ok(10_000));
    let mut reader = Chunked::new(json);
    let (streamed, policy) = measure(|| Policy::from_reader(&mut reader).unwrap());
    assert_eq!(policy.rule_count(), 10_000);
    // Measured (64-bit): 0.92 MiB retained, 1.24 MiB peak streamed, the JSON + 1.2 MiB whole; before the compact
    // index and the rule-by-rule load, 3.5 MiB retained and a 9.4 MiB peak.
    assert!(streamed.retained < 5 * MIB / 4, "retained {} bytes", streamed.retained);
    assert!(streamed.peak < 7 * MIB / 4, "streamed peak {} bytes", streamed.peak);
    assert!(whole.peak < json_len + 7 * MIB / 4, "from_json peak {} bytes", whole.peak);
}
