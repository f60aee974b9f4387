//! A compact hash table for the compiled policy's indexes, whose keys live elsewhere (in one byte buffer) so that a
//! large policy costs no heap block per key.
//!
//! Built once, never shrunk, nothing removed: open addressing with linear probing, at most 7/8 full, and one tag byte
//! per slot (0 when empty, else 7 bits of the hash) so that a probe reads the slots' keys only on a likely match. A
//! slot holds a small `Copy` entry (a key offset and a value); equal keys may occupy several slots (a multimap). The
//! caller hashes its keys with [`hash`] and compares them itself, which is what lets the keys stay outside.

use rustc_hash::FxHasher;
use std::hash::Hasher;

/// Hashes a key. Keys come only from the operator's policy, so a fast non-keyed hash is enough (no hash-flooding
/// surface: requests only look up).
pub(crate) fn hash(key: &[u8]) -> u64 {
    let mut hasher = FxHasher::default();
    hasher.write(key);
    hasher.finish()
}

#[derive(Debug)]
pub(crate) struct Table<T> {
    /// Per slot: 0 when empty, else `0x80 | 7 bits of the hash`.
    tags: Box<[u8]>,
    slots: Box<[T]>,
    /// log2 of the number of slots (0 while there are none).
    bits: u32,
    len: usize,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table { tags: Box::default(), slots: Box::default(), bits: 0, len: 0 }
    }
}

/// The first slot to probe and the tag of a hash, for a table of `1 << bits` slots (`bits` ≥ 1).
fn home_and_tag(hash: u64, bits: u32) -> (usize, u8) {
    // Fibonacci hashing: the top bits of the product depend on every bit of the hash.
    let home = hash.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - bits);
    (usize::try_from(home).unwrap_or(0), (hash as u8) | 0x80)
}

impl<T> Table<T> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl<T: Copy + Default> Table<T> {
    /// Every entry whose hash may be `hash` (the tag matches): the caller compares keys.
    pub(crate) fn candidates(&self, hash: u64) -> Candidates<'_, T> {
        let (at, tag) = if self.bits == 0 { (0, 0) } else { home_and_tag(hash, self.bits) };
        Candidates { table: self, at, tag, left: self.tags.len() }
    }

    /// Adds an entry. `rehash` gives the hash of an entry already in the table, for when the table grows.
    pub(crate) fn insert(&mut self, hash: u64, entry: T, rehash: impl Fn(&T) -> u64) {
        if (self.len + 1) * 8 > self.tags.len() * 7 {
            self.grow(rehash);
        }
        self.place(hash, entry);
        self.len += 1;
    }

    fn grow(&mut self, rehash: impl Fn(&T) -> u64) {
        let bits = self.bits.max(2) + 1;
        let size = 1usize << bits;
        let old = std::mem::replace(
            self,
            Table {
                tags: vec![0; size].into_boxed_slice(),
                slots: vec![T::default(); size].into_boxed_slice(),
                bits,
                len: 0,
            },
        );
        self.len = old.len;
        for (tag, entry) in old.tags.iter().zip(old.slots.iter()) {
            if *tag != 0 {
                self.place(rehash(entry), *entry);
            }
        }
    }

    /// Puts `entry` in the first free slot from its home; there is always one (the table is at most 7/8 full).
    fn place(&mut self, hash: u64, entry: T) {
        let (mut at, tag) = home_and_tag(hash, self.bits);
        let mask = self.tags.len().wrapping_sub(1);
        for _ in 0..self.tags.len() {
            if let (Some(slot_tag @ 0), Some(slot)) = (self.tags.get_mut(at), self.slots.get_mut(at)) {
                *slot_tag = tag;
                *slot = entry;
                return;
            }
            at = (at + 1) & mask;
        }
    }
}

/// The entries a probe visits whose tag matches, up to the first empty slot.
pub(crate) struct Candidates<'t, T> {
    table: &'t Table<T>,
    at: usize,
    tag: u8,
    /// Slots not yet visited (a bound, should the table ever be full).
    left: usize,
}

impl<'t, T> Iterator for Candidates<'t, T> {
    type Item = &'t T;

    fn next(&mut self) -> Option<&'t T> {
        while self.left > 0 {
            let tag = *self.table.tags.get(self.at)?;
            if tag == 0 {
                self.left = 0;
                return None;
            }
            let slot = self.at;
            self.at = (self.at + 1) & self.table.tags.len().wrapping_sub(1);
            self.left -= 1;
            if tag == self.tag {
                return self.table.slots.get(slot);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn finds_every_entry_of_a_key_and_survives_growth() {
        let keys: Vec<String> = (0..5000).map(|i| format!("key{}", i % 2500)).collect();
        let mut table: Table<u32> = Table::default();
        for (i, key) in keys.iter().enumerate() {
            table.insert(hash(key.as_bytes()), i as u32, |&j| hash(keys[j as usize].as_bytes()));
        }
        assert_eq!(table.len(), 5000);
        assert!(table.tags.len() * 7 >= table.len() * 8);
        for (i, key) in keys.iter().enumerate().take(2500) {
            let mut found: Vec<u32> =
                table.candidates(hash(key.as_bytes())).copied().filter(|&j| keys[j as usize] == *key).collect();
            found.sort_unstable();
            assert_eq!(found, vec![i as u32, i as u32 + 2500]);
        }
        assert_eq!(table.candidates(hash(b"absent")).filter(|&&j| keys[j as usize] == "absent").count(), 0);
    }

    #[test]
    fn an_empty_table_finds_nothing() {
        let table: Table<u32> = Table::default();
        assert_eq!(table.candidates(hash(b"")).count(), 0);
    }
}
