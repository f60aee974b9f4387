#![allow(clippy::expect_used, reason = "a benchmark binary: a broken setup should stop it loudly")]
//! Matcher cost as the policy grows: ns per decision for hits and misses at 10, 1k, 100k and 1M rules.
//! A plain bench binary (`make bench`), so it prints one table and needs no extra dependency. Figures are medians
//! of several rounds; compare the columns within one run, on one machine.

use egress_core::policy::{PolicyDocument, RuleDocument};
use egress_core::{Caller, Policy, RequestLine};
use std::hint::black_box;
use std::time::Instant;

const SIZES: [usize; 4] = [10, 1_000, 100_000, 1_000_000];
const LOOKUPS: usize = 200_000;
const ROUNDS: usize = 5;

/// A realistic mix: 80 % exact names, 15 % `*.suffix`, 5 % inner wildcards, spread over many domains.
fn policy(rules: usize) -> PolicyDocument {
    let rules = (0..rules)
        .map(|i| {
            let host = match i % 20 {
                0..=15 => format!("api{i}.svc{}.example{}.com", i % 997, i % 13),
                16..=18 => format!("*.zone{i}.example{}.net", i % 13),
                _ => format!("ec2.*.region{i}.amazonaws.com"),
            };
            RuleDocument { name: format!("r{i}"), hosts: Some(vec![host]), ..RuleDocument::default() }
        })
        .collect();
    PolicyDocument { rules, ..PolicyDocument::default() }
}

/// Hosts that match some rule (every kind of pattern), and hosts of similar shape that match none.
fn hosts(rules: usize) -> (Vec<String>, Vec<String>) {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as usize % rules
    };
    let mut hits = Vec::new();
    let mut misses = Vec::new();
    for _ in 0..1024 {
        let i = next();
        hits.push(match i % 20 {
            0..=15 => format!("api{i}.svc{}.example{}.com", i % 997, i % 13),
            16..=18 => format!("a.b.zone{i}.example{}.net", i % 13),
            _ => format!("ec2.eu-west-1.region{i}.amazonaws.com"),
        });
        misses.push(format!("api{i}.svc{}.other{}.com", i % 997, i % 13));
    }
    (hits, misses)
}

fn ns_per_lookup(policy: &Policy, hosts: &[String], want_allow: bool) -> f64 {
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for i in 0..LOOKUPS {
                let host = &hosts[i % hosts.len()];
                let request = RequestLine { scheme: "https", authority: host, method: "GET", path: Some("/") };
                let decision = policy.evaluate_http(black_box(&request), Caller::ANONYMOUS);
                assert_eq!(decision.action.proceeds(), want_allow, "{host}");
                black_box(decision);
            }
            start.elapsed().as_nanos() as f64 / LOOKUPS as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}

fn main() {
    println!("| rules | compile | hit ns/decision | miss ns/decision | hit vs 10 rules |");
    println!("|---:|---:|---:|---:|---:|");
    let mut baseline = None;
    for size in SIZES {
        let document = policy(size);
        let start = Instant::now();
        let compiled = Policy::compile(&document).expect("generated policy is valid");
        let compile = start.elapsed();
        let (hits, misses) = hosts(size);
        let hit = ns_per_lookup(&compiled, &hits, true);
        let miss = ns_per_lookup(&compiled, &misses, false);
        let base = *baseline.get_or_insert(hit);
        println!("| {size} | {compile:.1?} | {hit:.0} | {miss:.0} | {:.2}x |", hit / base);
    }
}
