//! Filter-state keys: how the filters of the suite share what they decided (Envoy stores each under `wasm.<key>`,
//! so an access log can print `%FILTER_STATE(wasm.egress.decision:PLAIN)%`). Every key is documented here, once.
//! Values are UTF-8; an absent key means the filter that writes it did not run.
//!
//! Each filter publishes one entry per request, a small JSON record, rather than one entry per field: every entry
//! costs a host call to write, and reading one back costs the reader a re-entry into its VM (Envoy asks the VM to
//! allocate the copy). Records are JSON so that access logs and people can read them as they are.

use serde::{Deserialize, Serialize};

/// The allow-list's decision, a [`DecisionRecord`] — written by the allow-list filter (HTTP and TLS passthrough).
pub const DECISION: &str = "egress.decision";

/// The caller as the identity filter established it, an [`IdentityRecord`]. When present, the allow-list uses it
/// instead of reading the peer certificate itself (so a caller forwarded by a trusted hop is judged as that caller).
pub const IDENTITY: &str = "egress.identity";

/// The redirects of this request, as a JSON array of hops, oldest first:
/// `[{"status":302,"location":"https://host:443/path","action":"allow","reason":"allowed"}]` — `location` is the
/// resolved target without its query (queries often carry tokens), `null` when it could not be resolved; `action`
/// is `allow` | `deny` | `report-deny` | `bounce` (handed back to the client); `reason` a redirect reason code;
/// `followed` is true for hops the gateway sent itself (their 3xx never reach a filter, so `status` is `null`).
/// Written by the redirects filter; lives as long as the downstream request, so it spans every followed hop.
pub const REDIRECTS: &str = "egress.redirects";
/// The redirects filter's own hop state (origin host, previous hop, URL fingerprints), request-long like
/// `egress.redirects`. Internal: read by nobody else.
pub const REDIRECT_HOPS: &str = "egress.redirects.hops";

/// `egress.decision`, e.g.
/// `{"action":"allow","reason":"allowed","rule":"httpbin","destination":"eu.httpbin.org:80","mode":"enforce"}`.
/// Written with `S = &str`, read back with `S = String`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRecord<S> {
    /// `allow` | `deny` | `report-deny`.
    pub action: S,
    /// The machine reason, e.g. `host_not_allowed`, `malformed_authority` (see `Reason::code`).
    pub reason: S,
    /// The deciding rule's name; `null` when no rule was involved.
    pub rule: Option<S>,
    /// The normalised destination `host:port` (IPv6 in brackets); `null` when it could not be parsed.
    pub destination: Option<S>,
    /// `enforce` | `report`: the mode the decision was made in.
    pub mode: S,
}

/// `egress.identity`, e.g. `{"source":"mtls","id":"spiffe://cluster.local/ns/app/sa/sleep"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRecord<S> {
    /// `mtls` (the peer certificate) | `trusted_hop` (the XFCC of a trusted proxy) | `none`.
    pub source: S,
    /// The caller's SPIFFE ID; `null` for an anonymous caller.
    pub id: Option<S>,
}

/// Parses a record another filter published; `None` when absent or unreadable (a reader then acts as if the
/// writer had not run, which the writers' own checks make fail closed).
pub fn parse<T: serde::de::DeserializeOwned>(published: Option<&str>) -> Option<T> {
    published.and_then(|json| serde_json::from_str(json).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn records_round_trip_as_compact_json() {
        let written = DecisionRecord {
            action: "allow",
            reason: "allowed",
            rule: Some("httpbin"),
            destination: Some("[2001:db8::1]:443"),
            mode: "enforce",
        };
        let json = serde_json::to_string(&written).unwrap();
        assert_eq!(
            json,
            r#"{"action":"allow","reason":"allowed","rule":"httpbin","destination":"[2001:db8::1]:443","mode":"enforce"}"#
        );
        let read: DecisionRecord<String> = parse(Some(&json)).unwrap();
        assert_eq!((read.action.as_str(), read.rule.as_deref()), ("allow", Some("httpbin")));

        let anonymous = serde_json::to_string(&IdentityRecord::<&str> { source: "none", id: None }).unwrap();
        assert_eq!(anonymous, r#"{"source":"none","id":null}"#);
        assert_eq!(parse::<IdentityRecord<String>>(Some("not json")), None);
        assert_eq!(parse::<IdentityRecord<String>>(None), None);
    }
}
