//! The filter-state records read back by hand (`state::parse` for `DecisionRecord` and `IdentityRecord`,
//! `HopState::from_json`, `RedirectHop::list_from_json`) against their derived `Deserialize` run by `serde_json`,
//! which the readers promise to match (their unit tests hold them together on a handful of inputs).
//!
//! Oracle: the same record (or none) for every input. Deliberate differences, where only ours refuses:
//! - a struct written as a JSON array (`serde_json`'s derived visitors take one; no filter writes one);
//! - an unknown member that is not valid JSON to `serde_json` itself as a whole document (`serde_json` skips unknown
//!   members without its recursion limit or surrogate checks; ours reads every value strictly).
//!
//! Then each record read is written back (`ToJson`, the filters' hand-written writer), byte for byte what `serde_json`
//! writes, and read again to the same record.

use egress_core::audit::RedirectHop;
use egress_core::redirect::HopState;
use egress_core::state::{self, DecisionRecord, IdentityRecord, ToJson};
use serde_json::Value;
use std::fmt::Debug;

pub fn run(data: &[u8]) {
    let (selector, rest) = crate::selector(data);
    let Some(json) = crate::text(rest) else { return };
    match selector % 4 {
        0 => check(json, |j| state::parse::<DecisionRecord<String>>(Some(j)), false, |r| r.to_json()),
        1 => check(json, |j| state::parse::<IdentityRecord<String>>(Some(j)), false, |r| r.to_json()),
        2 => check(json, HopState::from_json, false, HopState::to_json),
        // The chain is written by `AuditEvent`'s writer (the `audit_log` target checks it); here `serde_json`'s.
        _ => check(json, RedirectHop::list_from_json, true, |hops| serde_json::to_string(hops).unwrap()),
    }
}

fn check<T>(json: &str, read: impl Fn(&str) -> Option<T>, list: bool, write: impl Fn(&T) -> String)
where
    T: PartialEq + Debug + serde::de::DeserializeOwned + serde::Serialize,
{
    let ours = read(json);
    let theirs = serde_json::from_str::<T>(json).ok();
    if ours != theirs {
        let exempt = match (&ours, &theirs, serde_json::from_str::<Value>(json)) {
            (None, Some(_), Err(_)) => true,
            (None, Some(_), Ok(Value::Array(items))) => !list || items.iter().any(Value::is_array),
            _ => false,
        };
        assert!(exempt, "{json:?}: ours {ours:?}, serde_json {theirs:?}");
    }
    if let Some(record) = &ours {
        let written = write(record);
        assert_eq!(written, serde_json::to_string(record).unwrap(), "written unlike serde_json");
        assert_eq!(read(&written).as_ref(), Some(record), "not read back as written");
    }
}
