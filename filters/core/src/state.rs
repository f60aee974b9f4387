//! Filter-state keys: how the filters of the suite share what they decided (Envoy stores each under `wasm.<key>`,
//! so an access log can print `%FILTER_STATE(wasm.egress.decision:PLAIN)%`). Every key is documented here, once.
//! Values are UTF-8 strings; an absent key means the filter that writes it did not run.

/// `allow` | `deny` | `report-deny` — written by the allow-list filter (HTTP and TLS passthrough).
pub const DECISION: &str = "egress.decision";
/// The machine reason, e.g. `host_not_allowed`, `malformed_authority` (see `Reason::code`).
pub const REASON: &str = "egress.reason";
/// The deciding rule's name; empty when no rule was involved.
pub const RULE: &str = "egress.rule";
/// The normalised destination `host:port` (IPv6 in brackets); empty when it could not be parsed.
pub const DESTINATION: &str = "egress.destination";
/// `enforce` | `report`: the mode the decision was made in.
pub const MODE: &str = "egress.mode";

/// The caller's SPIFFE ID as the identity filter established it; empty for an anonymous caller. Written by the
/// identity filter; when present, the allow-list uses it instead of reading the peer certificate itself (so a
/// caller forwarded by a trusted hop is judged as that caller).
pub const IDENTITY: &str = "egress.identity";
/// `mtls` (the peer certificate) | `trusted_hop` (the XFCC of a trusted proxy) | `none`.
pub const IDENTITY_SOURCE: &str = "egress.identity.source";

/// The redirects of this request, as a JSON array of hops, oldest first:
/// `[{"status":302,"location":"https://host:443/path","action":"allow","reason":"allowed"}]` — `location` is the
/// resolved target without its query (queries often carry tokens), `null` when it could not be resolved; `action`
/// is `allow` | `deny` | `report-deny` | `bounce` (handed back to the client); `reason` a redirect reason code;
/// `followed` is true for hops the gateway sent itself (their 3xx never reaches a filter, so `status` is `null`).
/// Written by the redirects filter; lives as long as the downstream request, so it spans every followed hop.
pub const REDIRECTS: &str = "egress.redirects";
/// The redirects filter's own hop state (origin host, previous hop, URL fingerprints), request-long like
/// `egress.redirects`. Internal: read by nobody else.
pub const REDIRECT_HOPS: &str = "egress.redirects.hops";
