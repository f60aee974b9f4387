//! Host patterns and an index that matches a name against all of them in O(number of labels).
//!
//! | pattern           | matches                                  | does not match                    |
//! |-------------------|------------------------------------------|-----------------------------------|
//! | `api.example.com` | `api.example.com` (any case, trailing .) | `x.api.example.com`               |
//! | `*.example.com`   | `a.example.com`, `a.b.example.com`       | `example.com`, `xexample.com`     |
//! | `ec2.*.aws.com`   | `ec2.us-east-1.aws.com`                  | `ec2.aws.com`, `ec2.a.b.aws.com`  |
//! | `*`               | any DNS name                             | IP literals                       |
//!
//! The index is keyed by plain names, so a lookup hashes only the host's own suffixes: exact names by name;
//! `*.suffix` patterns by suffix (`*` is the empty suffix); patterns with an inner `*` by their literal tail after the
//! last `*`, each candidate then compared label by label.

use crate::authority::{check_label, is_numeric_label, Host, Malformed};
use crate::table::{self, Table};
use std::fmt;

/// A validated host pattern, lowercase, without trailing dot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    /// `api.example.com`
    Exact(String),
    /// `*.example.com` (strictly below the suffix); `*` alone has the empty suffix and matches every name.
    Below(String),
    /// `ec2.*.aws.com`: labels where `None` is a one-label wildcard; the last label is always literal.
    Shaped(Vec<Option<String>>),
}

impl HostPattern {
    pub fn parse(raw: &str) -> Result<HostPattern, String> {
        if raw.is_empty() {
            return Err("empty host pattern".into());
        }
        if raw == "*" {
            return Ok(HostPattern::Below(String::new()));
        }
        if !raw.is_ascii() {
            return Err(format!("`{raw}` is not ASCII: write the IDNA A-label (xn--…)"));
        }
        if raw.contains(':') || raw.starts_with('[') {
            return Err(format!(
                "`{raw}`: hosts are names without ports; put ports in `ports` and addresses in `cidrs`"
            ));
        }
        let lower = raw.to_ascii_lowercase();
        let name = lower.strip_suffix('.').unwrap_or(&lower);
        let (below, rest) = match name.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, name),
        };
        let labels: Vec<&str> = rest.split('.').collect();
        let mut inner_wildcard = false;
        for (i, label) in labels.iter().enumerate() {
            if *label == "*" {
                if i + 1 == labels.len() {
                    return Err(format!("`{raw}`: the last label cannot be a wildcard"));
                }
                if i == 0 && below || labels.get(i + 1) == Some(&"*") || (i > 0 && labels[i - 1] == "*") {
                    return Err(format!("`{raw}`: consecutive wildcard labels are ambiguous"));
                }
                inner_wildcard = true;
                continue;
            }
            if label.contains('*') {
                return Err(format!("`{raw}`: `*` must be a whole label (`*.example.com`, `ec2.*.aws.com`)"));
            }
            check_label(label).map_err(|e| format!("`{raw}`: {e}"))?;
        }
        if rest.len() > 253 {
            return Err(format!("`{raw}`: {}", Malformed::NameTooLong));
        }
        if labels.last().is_some_and(|last| is_numeric_label(last)) {
            return Err(match Host::parse(rest) {
                Ok(Host::Ip(_)) => format!("`{raw}` is an IP address: allow addresses with `cidrs`"),
                _ => format!("`{raw}` {}: names cannot end in a number", Malformed::InvalidIpv4),
            });
        }
        // Labels are only copied one by one for the rare pattern that needs them (a policy may hold 100,000 names).
        Ok(match (below, inner_wildcard) {
            (false, false) => HostPattern::Exact(rest.to_string()),
            (true, false) => HostPattern::Below(rest.to_string()),
            (false, true) => HostPattern::Shaped(labels.iter().map(|l| (*l != "*").then(|| l.to_string())).collect()),
            (true, true) => return Err(format!("`{raw}`: a leading `*.` cannot be combined with inner wildcards")),
        })
    }
}

/// Kinds of key, in the first byte of a key's record in [`HostIndex`].
const EXACT: u8 = 0;
const BELOW: u8 = 1;
const SHAPED: u8 = 2;
const KIND: u8 = 0x03;
/// Also in the first byte: the key has more values than its slot's, in `HostIndex::more`.
const MORE: u8 = 0x80;

/// Matches DNS names against many patterns; each pattern carries a value (e.g. its rule index).
///
/// Compact, because a policy may list 100,000 rules and every worker's Wasm VM holds a copy: each distinct key is
/// one record in a few large pages of bytes (kind, length, name; for a shaped pattern also its head, e.g. `ec2.*`),
/// and one hash table maps each key to its record and first value; no heap block per key, no list per key. The
/// values of a pattern listed by several rules after the first are in a side table. A lookup hashes each of the host's
/// own suffixes once and probes one table; nothing is allocated.
pub struct HostIndex<V> {
    keys: Keys,
    /// (where the key's record is in `keys`, first value), one per key, hashed by the key's name.
    table: Table<(u32, V)>,
    /// The other values of keys listed more than once: (record, index in `more_values`), hashed by record. A
    /// record says when it has some (`MORE`), so a lookup only looks here when there is something to find. One slot
    /// per key keeps the table's probe sequences short even when many rules list the same host.
    more: Table<(u32, u32)>,
    more_values: Vec<Vec<V>>,
}

/// Key records, in pages of `PAGE` bytes that are filled and never moved: one growing buffer would be copied as it
/// grows, and in a Wasm VM, whose memory never shrinks, those copies would cost as much again as the keys.
#[derive(Default)]
struct Keys {
    pages: Vec<Vec<u8>>,
}

/// log2 of the page size. A record is at most 509 bytes, so a page wastes little at its end.
const PAGE_BITS: u32 = 16;
const PAGE: usize = 1 << PAGE_BITS;

impl Keys {
    /// The bytes from `at` (page number and offset in the page) to the end of its page.
    fn from(&self, at: u32) -> Option<&[u8]> {
        let page = self.pages.get(usize::try_from(at >> PAGE_BITS).ok()?)?;
        page.get(usize::try_from(at & (PAGE as u32 - 1)).ok()?..)
    }

    fn first_byte_mut(&mut self, at: u32) -> Option<&mut u8> {
        let page = self.pages.get_mut(usize::try_from(at >> PAGE_BITS).ok()?)?;
        page.get_mut(usize::try_from(at & (PAGE as u32 - 1)).ok()?)
    }

    fn len(&self) -> usize {
        self.pages.iter().map(Vec::len).sum()
    }

    /// Where a record of `len` bytes goes (starting a page if the last one cannot hold it), and that page.
    fn room(&mut self, len: usize) -> Result<(u32, &mut Vec<u8>), IndexFull> {
        if self.pages.last().is_none_or(|page| page.len() + len > PAGE) {
            // Grown as it fills (up to `PAGE`), so that a small index stays small.
            self.pages.push(Vec::new());
        }
        let page_number = self.pages.len() - 1;
        let page = self.pages.last_mut().ok_or(IndexFull)?;
        if page.capacity() < page.len() + len {
            // Doubling, but never past a page (`Vec`'s own growth would overshoot it).
            let capacity = (page.capacity() * 2).min(PAGE).max(page.len() + len);
            page.reserve_exact(capacity - page.len());
        }
        let at = (page_number as u64) << PAGE_BITS | page.len() as u64;
        let at = u32::try_from(at).map_err(|_| IndexFull)?;
        Ok((at, page))
    }
}

impl<V> Default for HostIndex<V> {
    fn default() -> Self {
        HostIndex { keys: Keys::default(), table: Table::default(), more: Table::default(), more_values: Vec::new() }
    }
}

impl<V> fmt::Debug for HostIndex<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostIndex").field("patterns", &self.table.len()).field("key_bytes", &self.keys.len()).finish()
    }
}

/// The index cannot address more key bytes (4 GiB): far beyond any policy, but refused rather than mis-indexed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexFull;

impl fmt::Display for IndexFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("too many host patterns: the index holds at most 4 GiB of names")
    }
}

/// One key's record: what kind of pattern, the name it is looked up by, (shaped patterns) the labels before it,
/// and whether the key has more values than its slot's.
#[derive(Clone, Copy)]
struct Record<'k> {
    kind: u8,
    name: &'k [u8],
    head: &'k [u8],
    more: bool,
}

impl Record<'_> {
    fn same_key(&self, other: &Record<'_>) -> bool {
        self.kind == other.kind && self.name == other.name && self.head == other.head
    }
}

/// The record at `at` (records are written by `HostIndex::insert`, so they always parse).
fn record(keys: &Keys, at: u32) -> Option<Record<'_>> {
    let rest = keys.from(at)?;
    let (&first, rest) = rest.split_first()?;
    let kind = first & KIND;
    let (name, rest) = length_prefixed(rest)?;
    let head = if kind == SHAPED { length_prefixed(rest)?.0 } else { &[] };
    Some(Record { kind, name, head, more: first & MORE != 0 })
}

fn length_prefixed(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&len, rest) = bytes.split_first()?;
    let len = usize::from(len);
    Some((rest.get(..len)?, rest.get(len..)?))
}

/// The hash of a record's place, to find its other values.
fn record_hash(at: u32) -> u64 {
    table::hash(&at.to_le_bytes())
}

/// The name a record is looked up by (empty for a record that does not parse, which `insert` never writes).
fn record_name(keys: &Keys, at: u32) -> &[u8] {
    record(keys, at).map_or(&[], |r| r.name)
}

impl<V: Copy + Default> HostIndex<V> {
    pub fn insert(&mut self, pattern: &HostPattern, value: V) -> Result<(), IndexFull> {
        let shaped;
        let wanted = match pattern {
            HostPattern::Exact(name) => Record { kind: EXACT, name: name.as_bytes(), head: &[], more: false },
            HostPattern::Below(suffix) => Record { kind: BELOW, name: suffix.as_bytes(), head: &[], more: false },
            HostPattern::Shaped(labels) => {
                // Looked up by the literal tail after the last wildcard; the head is compared label by label.
                let last_wildcard = labels.iter().rposition(Option::is_none).unwrap_or(0);
                let (head, tail) = labels.split_at((last_wildcard + 1).min(labels.len()));
                let head: Vec<&str> = head.iter().map(|l| l.as_deref().unwrap_or("*")).collect();
                let tail: Vec<&str> = tail.iter().flatten().map(String::as_str).collect();
                shaped = (tail.join("."), head.join("."));
                Record { kind: SHAPED, name: shaped.0.as_bytes(), head: shaped.1.as_bytes(), more: false }
            }
        };
        let hash = table::hash(wanted.name);
        let existing = self
            .table
            .candidates(hash)
            .map(|&(at, _)| at)
            .find(|&at| record(&self.keys, at).is_some_and(|r| r.same_key(&wanted)));
        if let Some(at) = existing {
            match self.more_values_of(at) {
                Some(i) => self.more_values.get_mut(i).into_iter().for_each(|values| values.push(value)),
                None => {
                    let i = u32::try_from(self.more_values.len()).map_err(|_| IndexFull)?;
                    self.more_values.push(vec![value]);
                    self.more.insert(record_hash(at), (at, i), |&(at, _)| record_hash(at));
                    if let Some(first) = self.keys.first_byte_mut(at) {
                        *first |= MORE;
                    }
                }
            }
            return Ok(());
        }
        let at = self.append(&wanted)?;
        let keys = &self.keys;
        self.table.insert(hash, (at, value), |&(at, _)| table::hash(record_name(keys, at)));
        Ok(())
    }

    /// Writes a record; names and heads are at most 253 bytes (`HostPattern::parse`), so a length fits a byte.
    fn append(&mut self, record: &Record<'_>) -> Result<u32, IndexFull> {
        let name_len = u8::try_from(record.name.len()).map_err(|_| IndexFull)?;
        let head_len = u8::try_from(record.head.len()).map_err(|_| IndexFull)?;
        let (at, page) = self.keys.room(3 + record.name.len() + record.head.len())?;
        page.push(record.kind);
        page.push(name_len);
        page.extend_from_slice(record.name);
        if record.kind == SHAPED {
            page.push(head_len);
            page.extend_from_slice(record.head);
        }
        Ok(at)
    }

    /// Where the other values of the record at `at` are in `more_values`, if it has any.
    fn more_values_of(&self, at: u32) -> Option<usize> {
        let &(_, i) = self.more.candidates(record_hash(at)).find(|&&(record, _)| record == at)?;
        usize::try_from(i).ok()
    }

    /// Gives back what the last page of keys does not use, once every pattern is in.
    pub fn shrink_to_fit(&mut self) {
        if let Some(page) = self.keys.pages.last_mut() {
            page.shrink_to_fit();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.table.len() == 0
    }

    /// Calls `found` for the value of every pattern that matches `name` (a normalised DNS name).
    pub fn for_each_match(&self, name: &str, mut found: impl FnMut(V)) {
        if self.is_empty() {
            return;
        }
        self.each_key(name, |record, value| {
            if record.kind == EXACT {
                found(value);
            }
        });
        // `*`: the empty suffix.
        self.each_key("", |record, value| {
            if record.kind == BELOW {
                found(value);
            }
        });
        // Every proper suffix starts after a dot: `a.b.c` has `b.c` and `c`.
        for (dot, _) in name.match_indices('.') {
            let (head, suffix) = (&name[..dot], &name[dot + 1..]);
            self.each_key(suffix, |record, value| match record.kind {
                BELOW => found(value),
                SHAPED if labels_match(record.head, head) => found(value),
                _ => {}
            });
        }
    }

    /// Calls `found` for every record named `name`, with each of its values.
    fn each_key(&self, name: &str, mut found: impl FnMut(Record<'_>, V)) {
        for &(at, value) in self.table.candidates(table::hash(name.as_bytes())) {
            let Some(record) = record(&self.keys, at).filter(|r| r.name == name.as_bytes()) else { continue };
            found(record, value);
            if record.more {
                let values = self.more_values_of(at).and_then(|i| self.more_values.get(i));
                for &value in values.into_iter().flatten() {
                    found(record, value);
                }
            }
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        let mut hit = false;
        self.for_each_match(name, |_| hit = true);
        hit
    }
}

/// Whether `head` (the labels of a host before a shaped pattern's tail) has the pattern's labels, `*` matching any
/// one label.
fn labels_match(pattern: &[u8], head: &str) -> bool {
    let mut labels = head.as_bytes().split(|&b| b == b'.');
    pattern.split(|&b| b == b'.').all(|want| match labels.next() {
        Some(got) => want == b"*" || want == got,
        None => false,
    }) && labels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn index(patterns: &[&str]) -> HostIndex<usize> {
        let mut index = HostIndex::default();
        for (i, p) in patterns.iter().enumerate() {
            index.insert(&HostPattern::parse(p).unwrap(), i).unwrap();
        }
        index
    }

    fn matches(pattern: &str, host: &str) -> bool {
        // Hosts go through the same normalisation as requests.
        let Ok(Host::Name(name)) = Host::parse(host) else { return false };
        index(&[pattern]).matches(&name)
    }

    #[test]
    fn wildcard_table() {
        let table: &[(&str, &[&str], &[&str])] = &[
            (
                "api.example.com",
                &["api.example.com", "API.Example.COM."],
                &["x.api.example.com", "example.com", "api.example.co"],
            ),
            (
                "*.example.com",
                &["a.example.com", "a.b.example.com", "A.B.C.Example.com."],
                &["example.com", "xexample.com", "example.com.evil"],
            ),
            (
                "ec2.*.aws.com",
                &["ec2.us-east-1.aws.com", "EC2.x.AWS.com"],
                &["ec2.aws.com", "ec2.a.b.aws.com", "x.ec2.a.aws.com", "ec2.a.aws.co"],
            ),
            ("a.*.b.*.c.com", &["a.1.b.2.c.com"], &["a.1.b.c.com", "a.1.x.2.c.com"]),
            ("*", &["a", "a.b.c.example"], &["127.0.0.1", "2130706433", "[::1]"]),
            ("*.com", &["x.com", "a.b.com"], &["com", "x.org"]),
        ];
        for (pattern, yes, no) in table {
            for host in *yes {
                assert!(matches(pattern, host), "{pattern} should match {host}");
            }
            for host in *no {
                assert!(!matches(pattern, host), "{pattern} should not match {host}");
            }
        }
    }

    #[test]
    fn rejected_patterns_say_why() {
        let cases = [
            ("", "empty host pattern"),
            ("api-*.example.com", "`*` must be a whole label"),
            ("*api.example.com", "`*` must be a whole label"),
            ("*.*.x", "consecutive wildcard labels"),
            ("a.*.*.x", "consecutive wildcard labels"),
            ("a.*", "last label cannot be a wildcard"),
            ("*.", "last label cannot be a wildcard"),
            ("*.a.*.com", "leading `*.` cannot be combined"),
            ("a..com", "empty label"),
            ("a.com:443", "put ports in `ports`"),
            ("10.0.0.1", "is an IP address"),
            ("2130706433", "is an IP address"),
            ("[::1]", "addresses in `cidrs`"),
            ("bücher.de", "IDNA A-label"),
            ("a b.com", "not allowed in a host name"),
            ("1.2.3.4.5", "ends in a number"),
        ];
        for (pattern, want) in cases {
            let err = HostPattern::parse(pattern).unwrap_err();
            assert!(err.contains(want), "{pattern:?}: {err}");
        }
    }

    #[test]
    fn patterns_are_normalised() {
        assert_eq!(HostPattern::parse("API.Example.com.").unwrap(), HostPattern::Exact("api.example.com".into()));
        assert_eq!(HostPattern::parse("*.Example.com").unwrap(), HostPattern::Below("example.com".into()));
    }

    #[test]
    fn patterns_sharing_a_key_keep_every_value() {
        let idx = index(&["a.com", "a.com", "*.a.com", "x.*.a.com", "y.*.a.com", "x.*.a.com", "*.a.com"]);
        let hits = |host: &str| {
            let mut hits = Vec::new();
            idx.for_each_match(host, |v| hits.push(v));
            hits.sort();
            hits
        };
        assert_eq!(hits("a.com"), vec![0, 1]);
        assert_eq!(hits("b.a.com"), vec![2, 6]);
        assert_eq!(hits("x.q.a.com"), vec![2, 3, 5, 6]);
        assert_eq!(hits("y.q.a.com"), vec![2, 4, 6]);
        assert_eq!(hits("z.x.q.a.com"), vec![2, 6]);
        assert_eq!(hits("com"), Vec::<usize>::new());
        // One record per distinct key: kind, length, `a.com` for the exact and the `*.` patterns; then the length
        // and head (`x.*`, `y.*`) for each shaped one.
        assert_eq!(idx.keys.len(), 7 + 7 + 11 + 11);
    }

    #[test]
    fn a_host_listed_by_many_rules_takes_one_slot() {
        let mut patterns = vec!["shared.example.com"; 3000];
        patterns.extend(["*.shared.example.com", "other.example.com"]);
        let idx = index(&patterns);
        assert_eq!(idx.table.len(), 3);
        let mut hits = Vec::new();
        idx.for_each_match("shared.example.com", |v| hits.push(v));
        hits.sort();
        assert_eq!(hits, (0..3000).collect::<Vec<_>>());
        hits.clear();
        idx.for_each_match("a.shared.example.com", |v| hits.push(v));
        assert_eq!(hits, vec![3000]);
        assert!(idx.matches("other.example.com"));
    }

    #[test]
    fn a_large_index_spans_pages_and_finds_every_pattern() {
        let patterns: Vec<String> = (0..30_000)
            .map(|i| match i % 3 {
                0 => format!("host{i}.example.com"),
                1 => format!("*.zone{i}.example.net"),
                _ => format!("ec2.*.region{i}.amazonaws.com"),
            })
            .collect();
        let idx = index(&patterns.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(idx.keys.pages.len() > 1);
        for i in 0..30_000 {
            let (yes, no) = match i % 3 {
                0 => (format!("host{i}.example.com"), format!("x.host{i}.example.com")),
                1 => (format!("a.zone{i}.example.net"), format!("zone{i}.example.net")),
                _ => (format!("ec2.eu.region{i}.amazonaws.com"), format!("ec3.eu.region{i}.amazonaws.com")),
            };
            let mut hits = Vec::new();
            idx.for_each_match(&yes, |v| hits.push(v));
            assert_eq!(hits, vec![i], "{yes}");
            assert!(!idx.matches(&no), "{no}");
        }
    }

    #[test]
    fn index_reports_every_matching_pattern() {
        let idx = index(&["a.example.com", "*.example.com", "*", "a.*.com", "other.org"]);
        let mut hits = Vec::new();
        idx.for_each_match("a.example.com", |v| hits.push(v));
        hits.sort();
        assert_eq!(hits, vec![0, 1, 2, 3]);
        hits.clear();
        idx.for_each_match("a.x.com", |v| hits.push(v));
        hits.sort();
        assert_eq!(hits, vec![2, 3]);
        assert!(!index(&["other.org"]).matches("a.example.com"));
    }
}
