//! `path::normal_form`, the form path-scoped rules match request paths in (and what they refuse as ambiguous).
//!
//! Properties:
//! - the normal form is stable: it is its own normal form (parse → print → parse);
//! - it is origin-form and free of what the normaliser refuses (it passes the same checks again);
//! - escaping an unreserved character (`a` → `%61`, either case) does not change the normal form, unless the escape
//!   lands right after a `%` (where it would complete a new escape: a nested encoding);
//! - the query never matters: `without_query` cuts at the first `?`.

use egress_core::path::{normal_form, without_query, Ambiguity};

pub fn run(data: &[u8]) {
    let (selector, rest) = crate::selector(data);
    let Some(raw) = crate::text(rest) else { return };
    let path = without_query(raw);
    assert!(!path.contains('?'));
    assert!(raw.starts_with(path));
    let normal = normal_form(path);
    if let Ok(normal) = &normal {
        assert!(normal.starts_with('/'), "{path:?} → {normal:?}");
        assert_eq!(normal_form(normal).as_deref(), Ok(normal.as_ref()), "{path:?} → {normal:?}: not stable");
    }
    // One unreserved character escaped, at a position the selector picks.
    let bytes = path.as_bytes();
    if bytes.is_empty() {
        return;
    }
    let at = usize::from(selector) % bytes.len();
    let byte = bytes[at];
    let after_percent = bytes[at.saturating_sub(2)..at].contains(&b'%');
    if (byte.is_ascii_alphanumeric() || b"-._~".contains(&byte)) && !after_percent {
        let escape = if selector & 0x80 == 0 { format!("%{byte:02x}") } else { format!("%{byte:02X}") };
        let escaped = format!("{}{escape}{}", &path[..at], &path[at + 1..]);
        let again = normal_form(&escaped);
        match (&normal, &again) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{path:?} and {escaped:?}"),
            // An escaped `.` is refused on purpose (`%2e`: servers disagree on whether it makes a dot segment).
            (_, Err(Ambiguity::EscapedSeparator)) if byte == b'.' => {}
            (Err(_), Err(_)) => {}
            _ => panic!("{path:?}: {normal:?}, {escaped:?}: {again:?}"),
        }
    }
}
