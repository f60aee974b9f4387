//! The fuzz targets as plain tests, what CI runs (`make fuzz-smoke`): every committed input of
//! `corpus/<target>/` (seeds from the unit tests, inputs the fuzzer found, regressions) through the target's `run`,
//! then a deterministic batch of inputs mutated from them (a small, seeded mutator: no libFuzzer, no sanitizer, a
//! few seconds in all). A failure names the input and prints it, to be replayed with
//! `cargo fuzz run <target> <file>`.

use egress_fuzz::TARGETS;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Mutated inputs per target; `FUZZ_SMOKE_INPUTS` overrides (e.g. for a longer local run).
const GENERATED: usize = 3000;

/// Tokens the mutator splices in: the syntax every target's parsers care about.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"\\",
    b":",
    b",",
    b"null",
    b"true",
    b"-0",
    b"1e3",
    b"0.5",
    b"\\u0000",
    b"\\ud800",
    b"%",
    b"%2e",
    b"%2F",
    b"%25",
    b"/",
    b"//",
    b"/../",
    b"/./",
    b";",
    b"?",
    b"#",
    b"@",
    b"::",
    b"[::1]",
    b"::ffff:",
    b"0x",
    b"127.0.0.1",
    b"10.0.0.0/8",
    b"/32",
    b"/128",
    b":443",
    b":0",
    b"\t",
    b"\r\n",
    b"\n",
    b"\0",
    b" ",
    b"\xc3\xa9",
    b"\xef\xbc\x8e",
    b"\xff",
    b"http://",
    b"https://",
    b"spiffe://",
    b"URI=",
    b"By=",
    b";Hash=",
    b"egress-audit: ",
    b"{\"schema\":\"egress-audit/v1\"",
    b"\"rules\":[",
    b"\"name\":\"a\"",
    b"\"hosts\":[\"*.a\"]",
    b"\"policy\":",
    b"resourceLogs",
    b"v1.",
    b"*",
    b"xn--",
];

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    let mut inputs: Vec<(PathBuf, Vec<u8>)> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.is_file())
            .map(|path| {
                let bytes = std::fs::read(&path).unwrap();
                (path, bytes)
            })
            .collect(),
        Err(e) => panic!("{}: {e}", dir.display()),
    };
    inputs.sort();
    inputs
}

/// Runs `input`, naming it and printing it when the target panics.
fn replay(target: &str, run: fn(&[u8]), name: &str, input: &[u8]) {
    if let Err(panic) = panic::catch_unwind(AssertUnwindSafe(|| run(input))) {
        let shown = String::from_utf8_lossy(input);
        let why = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(a panic)");
        panic!("{target}: {name} fails: {why}\ninput ({} bytes): {shown:?}\nbytes: {input:?}", input.len());
    }
}

/// xorshift64*: deterministic, so a failure is the same on every run and machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// One to four mutations of `input`: byte changes, deletions, duplications, tokens, and splices of `other`.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(7) {
            0 if at < out.len() => out[at] = rng.next() as u8,
            1 if at < out.len() => out[at] ^= 1 << rng.below(8),
            2 if at < out.len() => {
                let end = (at + 1 + rng.below(8)).min(out.len());
                out.drain(at..end);
            }
            3 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                out.splice(at..at, token.iter().copied());
            }
            4 if !other.is_empty() => {
                let start = rng.below(other.len());
                let end = (start + 1 + rng.below(32)).min(other.len());
                out.splice(at..at, other[start..end].iter().copied());
            }
            5 if at < out.len() => {
                let end = (at + 1 + rng.below(16)).min(out.len());
                let copy = out[at..end].to_vec();
                out.splice(at..at, copy);
            }
            _ if !out.is_empty() => {
                // The selector byte most targets read first.
                out[0] = rng.next() as u8;
            }
            _ => out.push(rng.next() as u8),
        }
    }
    out.truncate(4096);
    out
}

fn smoke(target: &str) {
    let run = TARGETS.iter().find(|(name, _)| *name == target).map(|(_, run)| *run).unwrap();
    let inputs = corpus(target);
    assert!(!inputs.is_empty(), "no corpus for {target}");
    for (path, input) in &inputs {
        replay(target, run, &path.display().to_string(), input);
    }
    let count = std::env::var("FUZZ_SMOKE_INPUTS").ok().and_then(|n| n.parse().ok()).unwrap_or(GENERATED);
    let seed = target.bytes().fold(0x9e37_79b9_7f4a_7c15u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let mut rng = Rng(seed);
    for i in 0..count {
        let base = &inputs[rng.below(inputs.len())].1;
        let other = &inputs[rng.below(inputs.len())].1;
        let input = mutate(&mut rng, base, other);
        replay(target, run, &format!("generated input {i}"), &input);
    }
}

#[test]
fn every_target_has_a_test_here() {
    let names: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
    let here = include_str!("corpus.rs");
    for name in names {
        assert!(here.contains(&format!("fn {name}() {{\n    smoke(")), "no test for {name}");
        let wrapper = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz_targets").join(format!("{name}.rs"));
        assert!(wrapper.is_file(), "no fuzz_targets/{name}.rs");
    }
}

#[test]
fn assertion() {
    smoke("assertion");
}

#[test]
fn audit_log() {
    smoke("audit_log");
}

#[test]
fn authority() {
    smoke("authority");
}

#[test]
fn certificate() {
    smoke("certificate");
}

#[test]
fn cidr() {
    smoke("cidr");
}

#[test]
fn decision() {
    smoke("decision");
}

#[test]
fn json() {
    smoke("json");
}

#[test]
fn otlp() {
    smoke("otlp");
}

#[test]
fn path() {
    smoke("path");
}

#[test]
fn policy() {
    smoke("policy");
}

#[test]
fn records() {
    smoke("records");
}

#[test]
fn redirect() {
    smoke("redirect");
}

#[test]
fn xfcc() {
    smoke("xfcc");
}
