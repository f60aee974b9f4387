//! `egress_core::json` (the reader every configuration and filter-state record goes through) against `serde_json`:
//! the same bytes deserialized into `serde_json::Value` through our reader's serde `Deserializer`
//! (`json::from_slice`) and through `serde_json::from_slice`.
//!
//! Oracle: the same acceptance and the same values for every input, and the same syntax error at the same line and
//! column (nesting deeper than 127 levels included). Deliberate difference: configurations hold integers only, so our
//! reader refuses every number with a fraction or an exponent, outside the 64-bit range, or `-0` (all floats to
//! serde_json) as a `floating point`; and never converts one, so a float too large for an `f64`, a syntax error to
//! `serde_json` (`number out of range`), is a float like any other to us (refused as one, or a later syntax error
//! is reported first, the tree being read whole before any value is judged). A float is refused wherever it stands,
//! also in a member that a repeated key replaces (`serde_json::Value` keeps the last).

use serde_json::Value;

pub fn run(data: &[u8]) {
    let ours = egress_core::json::from_slice::<Value>(data);
    let theirs = serde_json::from_slice::<Value>(data);
    match (ours, theirs) {
        (Ok(ours), Ok(theirs)) => assert_eq!(ours, theirs, "different values"),
        (Err(ours), Ok(theirs)) => {
            // A float in a member a repeated key replaced is gone from `theirs`, not from the document.
            assert!(crate::has_float_anywhere(data), "refused what serde_json reads ({theirs:?}): {ours}");
            assert!(ours.to_string().contains("floating point"), "not refused for its float: {ours}");
        }
        (Ok(ours), Err(theirs)) => panic!("accepted what serde_json refuses ({theirs}): {ours:?}"),
        (Err(ours), Err(theirs)) => {
            if theirs.to_string().starts_with("number out of range") {
                // A float too large for an f64 is a syntax error to serde_json; to us a float like any other
                // (never converted), refused as one, unless a syntax error after it comes first (the tree is read
                // whole before any value is judged).
                let ours = ours.to_string();
                assert!(
                    ours.contains("floating point") || ours.contains(" at line "),
                    "{ours} where serde_json says {theirs}"
                );
            } else if theirs.is_syntax() || theirs.is_eof() {
                assert_eq!(ours.to_string(), format!("(document): {theirs}"), "syntax errors placed differently");
            }
        }
    }
}
