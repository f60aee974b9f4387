//! A global allocator that counts live heap bytes and their peak, for measuring what loading a policy costs
//! (`tests/policy_memory.rs`, `examples/policy_memory.rs`). Only one measurement may run at a time.
#![allow(unsafe_code, reason = "a GlobalAlloc is an unsafe trait; this one forwards to the system allocator unchanged")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Relaxed) + bytes;
    PEAK.fetch_max(live, Relaxed);
}

fn shrank(bytes: usize) {
    LIVE.fetch_sub(bytes, Relaxed);
}

// SAFETY: every call goes to the system allocator with the caller's arguments; the wrapper only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which is the system allocator's.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            // Growing may copy, so the new block is counted before the old one is freed; shrinking is in place.
            if new_size > layout.size() {
                grew(new_size);
                shrank(layout.size());
            } else {
                shrank(layout.size() - new_size);
            }
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What `run` cost the heap: its peak and what it left allocated, in bytes above what was allocated before it.
pub struct Cost {
    pub peak: usize,
    pub retained: usize,
}

pub fn measure<T>(run: impl FnOnce() -> T) -> (Cost, T) {
    let before = LIVE.load(Relaxed);
    PEAK.store(before, Relaxed);
    let value = run();
    let cost = Cost { peak: PEAK.load(Relaxed) - before, retained: LIVE.load(Relaxed).saturating_sub(before) };
    (cost, value)
}

/// `bench/src/scenarios.rs` `generated_policy`: the same JSON text (serde_json sorts the keys).
pub fn generated_policy(rules: usize) -> Vec<u8> {
    let rules: Vec<serde_json::Value> = (0..rules)
        .map(|i| {
            let hosts = [format!("svc{i}.example.com"), format!("*.svc{i}.example.net")];
            serde_json::json!({"name": format!("svc{i}"), "hosts": hosts})
        })
        .collect();
    serde_json::json!({ "rules": rules }).to_string().into_bytes()
}

/// Hands out a JSON text at most 64 KiB at a time, each chunk a fresh buffer, as the allow-list reads its plugin
/// configuration from Envoy. The text itself is the host's memory: it is not counted if moved in before measuring.
pub struct Chunked {
    json: Vec<u8>,
    at: usize,
    chunk: Vec<u8>,
    used: usize,
}

impl Chunked {
    pub fn new(json: Vec<u8>) -> Chunked {
        Chunked { json, at: 0, chunk: Vec::new(), used: 0 }
    }
}

impl std::io::Read for Chunked {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.used == self.chunk.len() {
            let end = self.json.len().min(self.at + 64 * 1024);
            self.chunk = Vec::new();
            self.chunk = self.json[self.at..end].to_vec();
            self.at = end;
            self.used = 0;
        }
        let n = buf.len().min(self.chunk.len() - self.used);
        buf[..n].copy_from_slice(&self.chunk[self.used..self.used + n]);
        self.used += n;
        Ok(n)
    }
}
