//! Filter-state keys: how the filters of the suite share what they decided (Envoy stores each under `wasm.<key>`,
//! so an access log can print `%FILTER_STATE(wasm.egress.decision:PLAIN)%`). Every key is documented here, once.
//! Values are UTF-8; an absent key means the filter that writes it did not run.
//!
//! Each filter publishes one entry per request, a small JSON record, rather than one entry per field: every entry
//! costs a host call to write, and reading one back costs the reader a re-entry into its VM (Envoy asks the VM to
//! allocate the copy). Records are JSON so that access logs and people can read them as they are.

use crate::json::{self, Object};
use serde::{Deserialize, Serialize};

/// The allow-list's decision, a [`DecisionRecord`] — written by the allow-list filter (HTTP and TLS passthrough).
pub const DECISION: &str = "egress.decision";

/// The caller as the identity filter established it, an [`IdentityRecord`]. When present, the allow-list uses it
/// instead of reading the peer certificate itself (so a caller forwarded by a trusted hop is judged as that caller).
pub const IDENTITY: &str = "egress.identity";

/// The redirects of this request, as a JSON array of [`RedirectHop`]s, oldest first:
/// `[{"action":"allow","location":"https://host:443/path","reason":"allowed","status":302}]` — `location` is the
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
    /// The fingerprint of the policy that decided ([`crate::fingerprint`]); `null` when no policy was involved (a
    /// refusal of the identity stage).
    #[serde(default)]
    pub policy: Option<S>,
}

/// `egress.identity`, e.g. `{"source":"mtls","id":"spiffe://cluster.local/ns/app/sa/sleep"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRecord<S> {
    /// `mtls` (the peer certificate) | `trusted_hop` (the XFCC of a trusted proxy) | `none`.
    pub source: S,
    /// The caller's SPIFFE ID; `null` for an anonymous caller.
    pub id: Option<S>,
}

// Written by the redirects stage (`ToJson`, `append_hop`) into the `egress.redirects` chain, read back by the audit
// stage (`RedirectHop::list_from_json`) into its event; the doc comment below is the JSON Schema's description.
/// One redirect of the request: a 3xx the gateway vetted, or a hop it followed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RedirectHop {
    /// `null` for hops the gateway followed (their 3xx never reaches a filter).
    pub status: Option<u16>,
    /// The target without its query.
    pub location: Option<String>,
    /// `allow` | `deny` | `report-deny` | `bounce`.
    pub action: String,
    pub reason: String,
    #[serde(default)]
    pub followed: bool,
}

/// A record as the JSON it is published as, written without serde (the modules link no serializer); a test holds
/// each to what its `Serialize` writes.
pub trait ToJson {
    fn to_json(&self) -> String;
}

/// A record read back from its JSON, without serde's derived visitors; a test holds each to its `Deserialize`.
pub trait FromJson: Sized {
    fn from_json(json: &str) -> Option<Self>;
}

/// Parses a record another filter published; `None` when absent or unreadable (a reader then acts as if the
/// writer had not run, which the writers' own checks make fail closed).
pub fn parse<T: FromJson>(published: Option<&str>) -> Option<T> {
    published.and_then(T::from_json)
}

impl<S: AsRef<str>> ToJson for DecisionRecord<S> {
    fn to_json(&self) -> String {
        Object::new()
            .str("action", self.action.as_ref())
            .str("reason", self.reason.as_ref())
            .opt_str("rule", self.rule.as_ref().map(AsRef::as_ref))
            .opt_str("destination", self.destination.as_ref().map(AsRef::as_ref))
            .str("mode", self.mode.as_ref())
            .opt_str("policy", self.policy.as_ref().map(AsRef::as_ref))
            .finish()
    }
}

impl<S: AsRef<str>> ToJson for IdentityRecord<S> {
    fn to_json(&self) -> String {
        Object::new().str("source", self.source.as_ref()).opt_str("id", self.id.as_ref().map(AsRef::as_ref)).finish()
    }
}

/// Members in sorted order (as `serde_json::json!` wrote them), `followed` only when true.
impl ToJson for RedirectHop {
    fn to_json(&self) -> String {
        let RedirectHop { status, location, action, reason, followed } = self;
        let object = Object::new().str("action", action);
        let object = if *followed { object.bool("followed", true) } else { object };
        object
            .opt_str("location", location.as_deref())
            .str("reason", reason)
            .opt_uint("status", status.map(u64::from))
            .finish()
    }
}

impl RedirectHop {
    /// The chain the redirects stage publishes (`egress.redirects`), read as its `Deserialize` reads it (a test holds
    /// them together): `None` when it is not such a chain.
    // `inline`: compiled into the calling module, optimised for size; read once per redirected request.
    #[inline]
    pub fn list_from_json(json: &str) -> Option<Vec<RedirectHop>> {
        const FIELDS: &[&str] = &["status", "location", "action", "reason", "followed"];
        let hop = |reader: &mut crate::json::Reader<'_>, path: &crate::json::Path<'_>| {
            let mut hop = RedirectHop::default();
            let RedirectHop { status, location, action, reason, followed } = &mut hop;
            let seen = reader.members(path, "struct RedirectHop", FIELDS, false, &mut |reader, field, at| {
                match field {
                    0 => {
                        *status = reader
                            .optional(|reader| reader.uint(at))?
                            .map(|n| {
                                u16::try_from(n).map_err(|_| {
                                    <crate::json::Error as serde::de::Error>::invalid_value(
                                        serde::de::Unexpected::Unsigned(n),
                                        &"u16",
                                    )
                                })
                            })
                            .transpose()?
                    }
                    1 => *location = reader.optional(|reader| reader.string(at))?,
                    2 => *action = reader.string(at)?,
                    3 => *reason = reader.string(at)?,
                    _ => *followed = reader.boolean(at)?,
                }
                Ok(())
            })?;
            for field in [2, 3] {
                crate::json::require(seen, field, FIELDS, path)?;
            }
            Ok(hop)
        };
        crate::json::read(&mut json.as_bytes(), |reader, path| reader.list(path, hop)).ok()
    }
}

/// The [`REDIRECTS`] chain `chain` (as published so far; anything but a chain is replaced) with `hop` appended.
pub fn append_hop(chain: Option<&str>, hop: &RedirectHop) -> String {
    let hop = hop.to_json();
    match chain.and_then(|c| c.strip_suffix(']')) {
        Some(head) if head.starts_with("[{") => format!("{head},{hop}]"),
        _ => format!("[{hop}]"),
    }
}

impl ToJson for crate::redirect::HopState {
    fn to_json(&self) -> String {
        crate::redirect::HopState::to_json(self)
    }
}

const DECISION_FIELDS: &[&str] = &["action", "reason", "rule", "destination", "mode", "policy"];

impl FromJson for DecisionRecord<String> {
    fn from_json(json: &str) -> Option<Self> {
        json::read(&mut json.as_bytes(), |reader, path| {
            let (mut action, mut reason, mut rule, mut destination, mut mode, mut policy) = Default::default();
            let seen =
                reader.members(path, "struct DecisionRecord", DECISION_FIELDS, false, &mut |reader, field, at| {
                    match field {
                        0 => action = reader.string(at)?,
                        1 => reason = reader.string(at)?,
                        2 => rule = reader.optional(|reader| reader.string(at))?,
                        3 => destination = reader.optional(|reader| reader.string(at))?,
                        4 => mode = reader.string(at)?,
                        _ => policy = reader.optional(|reader| reader.string(at))?,
                    }
                    Ok(())
                })?;
            // A missing `Option` is `None`, as serde reads it.
            for field in [0, 1, 4] {
                json::require(seen, field, DECISION_FIELDS, path)?;
            }
            Ok(DecisionRecord { action, reason, rule, destination, mode, policy })
        })
        .ok()
    }
}

const IDENTITY_FIELDS: &[&str] = &["source", "id"];

impl FromJson for IdentityRecord<String> {
    fn from_json(json: &str) -> Option<Self> {
        json::read(&mut json.as_bytes(), |reader, path| {
            let (mut source, mut id) = Default::default();
            let seen =
                reader.members(path, "struct IdentityRecord", IDENTITY_FIELDS, false, &mut |reader, field, at| {
                    match field {
                        0 => source = reader.string(at)?,
                        _ => id = reader.optional(|reader| reader.string(at))?,
                    }
                    Ok(())
                })?;
            json::require(seen, 0, IDENTITY_FIELDS, path)?;
            Ok(IdentityRecord { source, id })
        })
        .ok()
    }
}

impl FromJson for crate::redirect::HopState {
    fn from_json(json: &str) -> Option<Self> {
        crate::redirect::HopState::from_json(json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn the_redirect_chain_is_written_and_read_back_hop_by_hop() {
        let sent = RedirectHop {
            status: Some(302),
            location: Some("http://a.example:80/x".into()),
            action: "allow".into(),
            reason: "allowed".into(),
            followed: false,
        };
        let refused = RedirectHop {
            status: None,
            location: None,
            action: "deny".into(),
            reason: "deny_listed".into(),
            followed: true,
        };
        let chain = append_hop(None, &sent);
        assert_eq!(chain, r#"[{"action":"allow","location":"http://a.example:80/x","reason":"allowed","status":302}]"#);
        let chain = append_hop(Some(&chain), &refused);
        assert_eq!(RedirectHop::list_from_json(&chain), Some(vec![sent.clone(), refused]));
        assert_eq!(append_hop(Some("not a chain"), &sent), append_hop(None, &sent), "anything else is replaced");
    }

    #[test]
    fn records_round_trip_as_compact_json() {
        let written = DecisionRecord {
            action: "allow",
            reason: "allowed",
            rule: Some("httpbin"),
            destination: Some("[2001:db8::1]:443"),
            mode: "enforce",
            policy: Some("9f2c04e1b7a3d580"),
        };
        let json = written.to_json();
        assert_eq!(
            json,
            r#"{"action":"allow","reason":"allowed","rule":"httpbin","destination":"[2001:db8::1]:443","mode":"enforce","policy":"9f2c04e1b7a3d580"}"#
        );
        assert_eq!(json, serde_json::to_string(&written).unwrap());
        let read: DecisionRecord<String> = parse(Some(&json)).unwrap();
        assert_eq!((read.action.as_str(), read.rule.as_deref()), ("allow", Some("httpbin")));

        let anonymous = IdentityRecord::<&str> { source: "none", id: None };
        assert_eq!(anonymous.to_json(), r#"{"source":"none","id":null}"#);
        assert_eq!(anonymous.to_json(), serde_json::to_string(&anonymous).unwrap());
        let tricky = IdentityRecord { source: "mtls", id: Some("spiffe://td/ns/\"q\\/sa/\u{1}\u{e9}") };
        assert_eq!(tricky.to_json(), serde_json::to_string(&tricky).unwrap());
        assert_eq!(parse::<IdentityRecord<String>>(Some("not json")), None);
        assert_eq!(parse::<IdentityRecord<String>>(None), None);
    }

    /// The hand-written readers read what the derived `Deserialize` reads, and refuse what it refuses.
    #[test]
    fn records_are_read_as_serde_reads_them() {
        let decisions = [
            r#"{"action":"deny","reason":"host_not_allowed","rule":null,"destination":"a.com:80","mode":"report"}"#,
            r#"{"action":"allow","reason":"allowed","mode":"enforce"}"#,
            r#"{"mode":"enforce","reason":"allowed","action":"allow","rule":"r","extra":[1,{"x":null}]}"#,
            r#"{"action":"allow","reason":"allowed"}"#,
            r#"{"action":"allow","action":"deny","reason":"allowed","mode":"enforce"}"#,
            r#"{"action":1,"reason":"allowed","mode":"enforce"}"#,
            r#"{"action":"allow","reason":"allowed","mode":"enforce","rule":7}"#,
            r#"{"action":"allow","reason":"allowed","mode":"enforce"} x"#,
            r#"["allow","allowed",null,null,"enforce"]"#,
            "",
        ];
        for json in decisions {
            let want = serde_json::from_str::<DecisionRecord<String>>(json).ok();
            // serde_json takes a struct written as an array; the modules never write one.
            let want = want.filter(|_| !json.starts_with('['));
            assert_eq!(parse::<DecisionRecord<String>>(Some(json)), want, "{json}");
        }
        let identities = [
            r#"{"source":"mtls","id":"spiffe://td/ns/a/sa/b"}"#,
            r#"{"source":"none","id":null}"#,
            r#"{"source":"none"}"#,
            r#"{"id":"x"}"#,
            r#"{"source":"none","id":false}"#,
            r#"{"source":"trusted_hop","id":"\u0073piffe://td/ns/a/sa/b","new":1}"#,
        ];
        for json in identities {
            let want = serde_json::from_str::<IdentityRecord<String>>(json).ok();
            assert_eq!(parse::<IdentityRecord<String>>(Some(json)), want, "{json}");
        }
    }
}
