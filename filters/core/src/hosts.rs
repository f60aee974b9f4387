//! Host patterns and an index that matches a name against all of them in O(number of labels).
//!
//! | pattern           | matches                                  | does not match                    |
//! |-------------------|------------------------------------------|-----------------------------------|
//! | `api.example.com` | `api.example.com` (any case, trailing .) | `x.api.example.com`               |
//! | `*.example.com`   | `a.example.com`, `a.b.example.com`       | `example.com`, `xexample.com`     |
//! | `ec2.*.aws.com`   | `ec2.us-east-1.aws.com`                  | `ec2.aws.com`, `ec2.a.b.aws.com`  |
//! | `*`               | any DNS name                             | IP literals                       |
//!
//! The index holds three hash maps keyed by plain names, so a lookup hashes only the host's own suffixes:
//! exact names; `*.suffix` patterns by suffix (`*` is the empty suffix); patterns with an inner `*` by their literal
//! tail after the last `*`, each candidate then compared label by label.

use crate::authority::{check_label, is_numeric_label, Host, Malformed};
use rustc_hash::FxHashMap;

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
        let mut shaped = Vec::with_capacity(labels.len());
        for (i, label) in labels.iter().enumerate() {
            if *label == "*" {
                if i + 1 == labels.len() {
                    return Err(format!("`{raw}`: the last label cannot be a wildcard"));
                }
                if i == 0 && below || labels.get(i + 1) == Some(&"*") || (i > 0 && labels[i - 1] == "*") {
                    return Err(format!("`{raw}`: consecutive wildcard labels are ambiguous"));
                }
                shaped.push(None);
                continue;
            }
            if label.contains('*') {
                return Err(format!("`{raw}`: `*` must be a whole label (`*.example.com`, `ec2.*.aws.com`)"));
            }
            check_label(label).map_err(|e| format!("`{raw}`: {e}"))?;
            shaped.push(Some(label.to_string()));
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
        Ok(match (below, shaped.iter().all(Option::is_some)) {
            (false, true) => HostPattern::Exact(rest.to_string()),
            (true, true) => HostPattern::Below(rest.to_string()),
            (false, false) => HostPattern::Shaped(shaped),
            (true, false) => return Err(format!("`{raw}`: a leading `*.` cannot be combined with inner wildcards")),
        })
    }
}

/// The labels of a shaped pattern up to and including its last wildcard (`None`), e.g. `ec2.*` of `ec2.*.aws.com`.
type ShapedHead = Box<[Option<Box<str>>]>;

/// Matches DNS names against many patterns; each pattern carries a value (e.g. its rule index).
#[derive(Debug)]
pub struct HostIndex<V> {
    exact: FxHashMap<Box<str>, Vec<V>>,
    below: FxHashMap<Box<str>, Vec<V>>,
    shaped: FxHashMap<Box<str>, Vec<(ShapedHead, V)>>,
}

impl<V> Default for HostIndex<V> {
    fn default() -> Self {
        HostIndex { exact: FxHashMap::default(), below: FxHashMap::default(), shaped: FxHashMap::default() }
    }
}

impl<V: Copy> HostIndex<V> {
    pub fn insert(&mut self, pattern: &HostPattern, value: V) {
        match pattern {
            HostPattern::Exact(name) => self.exact.entry(name.as_str().into()).or_default().push(value),
            HostPattern::Below(suffix) => self.below.entry(suffix.as_str().into()).or_default().push(value),
            HostPattern::Shaped(labels) => {
                let last_wildcard = labels.iter().rposition(Option::is_none).unwrap_or(0);
                let tail: Vec<&str> = labels[last_wildcard + 1..].iter().flatten().map(String::as_str).collect();
                let head = labels[..=last_wildcard].iter().map(|l| l.as_deref().map(Box::from)).collect();
                self.shaped.entry(tail.join(".").into()).or_default().push((head, value));
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.below.is_empty() && self.shaped.is_empty()
    }

    /// Calls `found` for the value of every pattern that matches `name` (a normalised DNS name).
    pub fn for_each_match(&self, name: &str, mut found: impl FnMut(V)) {
        if let Some(values) = self.exact.get(name) {
            values.iter().copied().for_each(&mut found);
        }
        if let Some(values) = self.below.get("") {
            values.iter().copied().for_each(&mut found);
        }
        // Every proper suffix starts after a dot: `a.b.c` has `b.c` and `c`.
        for (dot, _) in name.match_indices('.') {
            let (head, suffix) = (&name[..dot], &name[dot + 1..]);
            if let Some(values) = self.below.get(suffix) {
                values.iter().copied().for_each(&mut found);
            }
            if let Some(candidates) = self.shaped.get(suffix) {
                for (pattern, value) in candidates {
                    if labels_match(pattern, head) {
                        found(*value);
                    }
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

fn labels_match(pattern: &[Option<Box<str>>], head: &str) -> bool {
    let mut labels = head.split('.');
    pattern.iter().all(|want| match (want, labels.next()) {
        (None, Some(_)) => true,
        (Some(want), Some(got)) => **want == *got,
        (_, None) => false,
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
            index.insert(&HostPattern::parse(p).unwrap(), i);
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
