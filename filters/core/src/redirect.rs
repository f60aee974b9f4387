//! Vetting 3xx redirects against the same policy and caller as the request that received them.
//!
//! A `Location` is resolved against the request URL (absolute, protocol-relative `//host/p`, path-absolute `/p`,
//! or relative `p`, `../p`, `?q`), its authority normalised by [`Authority::parse`] (so userinfo, percent-escapes
//! and the rest are refused exactly as in requests), and the request a client would send to follow it is evaluated
//! like any other. A backslash anywhere is refused: browsers read `/\evil.example` as `//evil.example`.

use crate::authority::{Authority, Host};
use crate::decision::{Action, Caller, Decision, Reason};
use crate::json::{self, Object};
use crate::policy::{Mode, Policy};
use crate::request::RequestLine;
use std::fmt::{self, Write as _};

/// Whether a response with `status` and a `Location` sends clients elsewhere: every 3xx. RFC 9110 §15.4 names five
/// redirects, but clients follow more: curl `-L` any 3xx with a `Location`, Java's `HttpURLConnection` 300 to 305
/// (305 as a proxy to use), Node's follow-redirects any 3xx but 304. A `Location` on any 3xx is vetted like a
/// redirect; a 3xx without one passes.
pub fn is_redirect(status: u16) -> bool {
    (300..=399).contains(&status)
}

/// The statuses Envoy's `internal_redirect_policy` can follow (`redirect_response_codes`): following at the gateway
/// is limited to these; every other 3xx is vetted and handed to the client.
pub const FOLLOWED_STATUSES: [u16; 5] = [301, 302, 303, 307, 308];

/// The request headers that carry credentials: a followed hop to another origin never gets them (as the Fetch
/// standard and curl since CVE-2022-27776 do), in any spelling a server reads as the same name.
pub const CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "proxy-authorization", "cookie"];

/// The methods a client may use to follow `status` after a request with `method`, the second only when clients
/// disagree. 303 turns everything but HEAD into GET (RFC 9110 §15.4.4); 307 and 308 keep the method; on 301, 302 and
/// the 3xx that RFC 9110 does not define clients do either (browsers, curl and Java turn POST into GET on 301/302,
/// Envoy and curl `--post30x` keep it, Java turns every non-307 POST into GET), so a redirect is allowed only when
/// both are.
pub fn follow_methods(status: u16, method: &str) -> (&str, Option<&str>) {
    match status {
        303 if method != "HEAD" => ("GET", None),
        303 | 307 | 308 => (method, None),
        _ if method == "GET" || method == "HEAD" => (method, None),
        _ => (method, Some("GET")),
    }
}

/// A resolved redirect target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub scheme: String,
    pub authority: Authority,
    /// Path and query (no fragment: it never leaves the client).
    pub path: String,
}

impl Target {
    /// `scheme://host[:port]/path?query`, normalised.
    pub fn url(&self) -> String {
        format!("{}://{}{}", self.scheme, self.authority_text(), self.path)
    }

    /// The URL without its query, for logs and audit (queries often carry tokens).
    pub fn url_without_query(&self) -> String {
        format!("{}://{}{}", self.scheme, self.authority_text(), path_of(&self.path))
    }

    /// `scheme://host:port` with the port always written (80 and 443 by default), so `http://a` and `http://a:80` are
    /// one origin and `http://a:8080` or `https://a` another (RFC 6454): credentials never cross from one to another.
    pub fn origin(&self) -> String {
        let port = self.authority.port.unwrap_or(if self.scheme == "https" { 443 } else { 80 });
        format!("{}://{}:{port}", self.scheme, self.authority.host)
    }

    fn authority_text(&self) -> String {
        match self.authority.port {
            Some(port) => format!("{}:{port}", self.authority.host),
            None => self.authority.host.to_string(),
        }
    }
}

impl Target {
    /// The target a request itself names (a followed hop arrives as a request).
    pub fn of_request(request: &RequestLine<'_>) -> Result<Target, LocationError> {
        let scheme = request.scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(LocationError::NonHttpScheme);
        }
        let authority = Authority::parse(request.authority).map_err(|_| LocationError::Malformed)?;
        Ok(Target { scheme, authority, path: request.path_or_empty().to_string() })
    }
}

/// Why a `Location` could not be resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocationError {
    /// `javascript:`, `file:`, `gopher:`, `data:`, `ftp:` …
    NonHttpScheme,
    /// Unparseable, or a trick: backslash, userinfo, escapes or spaces in the authority, `http:host` without `//`.
    Malformed,
}

impl LocationError {
    /// What is wrong with `location`, for a person (the reason a tool shows; the filter only refuses).
    pub fn explain(self, location: &str) -> &'static str {
        if self == LocationError::NonHttpScheme {
            return "only http and https URLs are followed";
        }
        let after_scheme = split_scheme(location).map(|(_, rest)| rest);
        let authority = after_scheme.and_then(|rest| rest.strip_prefix("//")).map(|rest| {
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            rest.get(..end).unwrap_or(rest)
        });
        if location.is_empty() {
            "it is empty"
        } else if location.bytes().any(|b| b <= b' ' || b >= 0x7f) {
            "it has spaces, control or non-ASCII characters (percent-encode them in the path; hosts in IDNA A-labels)"
        } else if location.contains('\\') {
            "it has a backslash, which browsers read as `/` and servers as data"
        } else if after_scheme.is_some() && authority.is_none() {
            "the scheme must be followed by `//` and a host"
        } else if authority.is_some_and(|a| a.contains('@')) {
            "it has userinfo (`user@` before the host): credentials in URLs are refused"
        } else if authority.is_some_and(|a| a.contains('%')) {
            "its host has percent-escapes"
        } else if has_escaped_dot_segment(location) {
            "its path has a dot segment written with percent-escapes (`%2e`), which clients resolve differently"
        } else {
            "its authority is not a host with an optional port"
        }
    }
}

/// Resolves `location` against `base`.
pub fn resolve(base: &RequestLine<'_>, location: &str) -> Result<Target, LocationError> {
    if location.is_empty() || location.bytes().any(not_in_a_location) {
        return Err(LocationError::Malformed);
    }
    let location = location.split('#').next().unwrap_or(location);
    let (scheme, rest) = match split_scheme(location) {
        Some((scheme, rest)) => {
            let scheme = scheme.to_ascii_lowercase();
            if scheme != "http" && scheme != "https" {
                return Err(LocationError::NonHttpScheme);
            }
            // `http:host` and `http:/host` are read differently by different parsers.
            let rest = rest.strip_prefix("//").ok_or(LocationError::Malformed)?;
            (scheme, Some(rest))
        }
        None => (base.scheme.to_ascii_lowercase(), location.strip_prefix("//")),
    };
    let (authority, path) = match rest {
        Some(rest) => {
            let end = rest.find(['/', '?']).unwrap_or(rest.len());
            let path = match &rest[end..] {
                "" => "/".to_string(),
                p if p.starts_with('?') => format!("/{p}"),
                p => p.to_string(),
            };
            (&rest[..end], path)
        }
        // A relative Location takes the base's path as Envoy passed it on. One that clients resolve against in two
        // ways would reach two targets, so it reaches none.
        None if !location.starts_with('/') && base_resolves_two_ways(base.path_or_empty()) => {
            return Err(LocationError::Malformed)
        }
        None => (base.authority, merge(base.path_or_empty(), location)),
    };
    // What a relative Location took from the base may be what no Location may hold (a space or control byte; `#`, a
    // fragment): the target would not be one we could send on or vet again, so it is refused like such a Location.
    if path.bytes().any(|b| not_in_a_location(b) || b == b'#') {
        return Err(LocationError::Malformed);
    }
    // `.%2e` is `..` to a browser (WHATWG) and an ordinary segment to RFC 3986 and curl: the same Location would
    // reach two targets, so it reaches none. Checked on the merged path: a relative Location takes the base's
    // directory as it is, and a target must be its own normal form.
    if has_escaped_dot_segment(&path) {
        return Err(LocationError::Malformed);
    }
    let authority = Authority::parse(authority).map_err(|_| LocationError::Malformed)?;
    Ok(Target { scheme, authority, path: remove_dot_segments_keep_query(&path) })
}

/// A byte no `Location` may hold: a space, control or non-ASCII byte (which parsers strip, escape or stop at) or `\`
/// (which browsers read as `/`).
fn not_in_a_location(byte: u8) -> bool {
    byte <= b' ' || byte >= 0x7f || byte == b'\\'
}

/// Whether the path of `reference` (up to its query) has a segment that is `.` or `..` with a dot written as `%2e`
/// (in either case): what the WHATWG URL standard reads as a dot segment and RFC 3986 does not.
fn has_escaped_dot_segment(reference: &str) -> bool {
    path_of(reference).split('/').any(|segment| segment.contains('%') && is_dot_segment(segment))
}

/// Whether relative references against a request path resolve differently to different clients: WHATWG (browsers)
/// reads `\` as `/` and a last segment that is a dot segment (plain or escaped) as one within the base, where
/// RFC 3986 (curl, and the gateway when it follows) takes `\` as it is and drops the last segment when it merges.
/// Browsers never send such a path; Envoy passes one on unless it normalises paths.
fn base_resolves_two_ways(base_path: &str) -> bool {
    let path = path_of(base_path);
    path.contains('\\') || path.rsplit('/').next().is_some_and(is_dot_segment)
}

/// `.` or `..`, any dot possibly written as `%2e` (in either case).
fn is_dot_segment(segment: &str) -> bool {
    let segment = segment.to_ascii_lowercase();
    matches!(segment.as_str(), "." | ".." | "%2e" | ".%2e" | "%2e." | "%2e%2e")
}

/// A reference's path, up to its query.
fn path_of(reference: &str) -> &str {
    reference.split('?').next().unwrap_or(reference)
}

/// `scheme:` prefix per RFC 3986 §3.1.
fn split_scheme(location: &str) -> Option<(&str, &str)> {
    let colon = location.find(':')?;
    let scheme = &location[..colon];
    let valid = scheme.bytes().next()?.is_ascii_alphabetic()
        && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && !location[..colon].contains(['/', '?']);
    valid.then(|| (scheme, &location[colon + 1..]))
}

/// RFC 3986 §5.2: a path-absolute, query-only or relative reference against the base path.
fn merge(base_path: &str, reference: &str) -> String {
    let base_path_only = path_of(base_path);
    if reference.is_empty() {
        // A fragment alone (`#top`, cut before): the base itself, its query included (§5.2.2).
        base_path.to_string()
    } else if reference.starts_with('/') {
        reference.to_string()
    } else if reference.starts_with('?') {
        format!("{base_path_only}{reference}")
    } else {
        let directory = base_path_only.rfind('/').map_or("/", |i| &base_path_only[..=i]);
        format!("{directory}{reference}")
    }
}

/// RFC 3986 §5.2.4 on the path part; the query is kept as is.
fn remove_dot_segments_keep_query(path_and_query: &str) -> String {
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    let mut output: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *segment {
            "." | ".." => {
                if *segment == ".." {
                    output.pop();
                }
                if last {
                    output.push("");
                }
            }
            other => output.push(other),
        }
    }
    let mut resolved = format!("/{}", output.join("/"));
    if let Some(query) = query {
        resolved.push('?');
        resolved.push_str(query);
    }
    resolved
}

/// Why a redirect was refused (or would be, in report mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedirectReason {
    /// The target's request is denied by the policy (the inner reason says why).
    Policy(Reason),
    NonHttpScheme,
    /// `https` → `http`, and no rule allows it for that target.
    Downgrade,
    MalformedLocation,
}

impl RedirectReason {
    pub fn code(self) -> &'static str {
        match self {
            RedirectReason::Policy(reason) => reason.code(),
            RedirectReason::NonHttpScheme => "non_http_scheme",
            RedirectReason::Downgrade => "redirect_downgrade",
            RedirectReason::MalformedLocation => "malformed_location",
        }
    }
}

impl fmt::Display for RedirectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// The verdict on one redirect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vetted<'p> {
    pub action: Action,
    /// `None` when allowed.
    pub reason: Option<RedirectReason>,
    pub target: Option<Target>,
    /// The allow-list's decision on the follow-up request, when there was one to evaluate.
    pub decision: Option<Decision<'p>>,
}

impl Vetted<'_> {
    /// The JSON body of the reply that replaces a refused redirect. The `Location` itself is never echoed.
    pub fn http_body(&self, status: u16) -> String {
        // Members in sorted order, as `serde_json::json!` wrote them.
        Object::new()
            .str("error", "redirect_denied")
            .opt_str("host", self.target.as_ref().map(|t| t.authority.host.to_string()).as_deref())
            .opt_str("reason", self.reason.map(RedirectReason::code))
            .uint("status", u64::from(status))
            .finish()
    }
}

impl Policy {
    /// Vets a redirect (`status`, `location`) received for `base`, for the same caller, for every method a client
    /// may follow it with ([`follow_methods`]).
    pub fn vet_redirect(&self, base: &RequestLine<'_>, status: u16, location: &str, caller: Caller<'_>) -> Vetted<'_> {
        let refuse = |reason, target, decision| self.refused(reason, target, decision);
        let target = match resolve(base, location) {
            Ok(target) => target,
            Err(LocationError::NonHttpScheme) => return refuse(RedirectReason::NonHttpScheme, None, None),
            Err(LocationError::Malformed) => return refuse(RedirectReason::MalformedLocation, None, None),
        };
        let (method, other) = follow_methods(status, base.method);
        if let Some(other) = other {
            let vetted = self.vet_target(base, target.clone(), other, caller);
            if vetted.action != Action::Allow {
                return vetted;
            }
        }
        self.vet_target(base, target, method, caller)
    }

    /// Vets a resolved target reached from `base` with `method`: the policy, then the scheme change.
    pub fn vet_target(&self, base: &RequestLine<'_>, target: Target, method: &str, caller: Caller<'_>) -> Vetted<'_> {
        let refuse = |reason, target, decision| self.refused(reason, target, decision);
        let authority = match target.authority.port {
            Some(port) => format!("{}:{port}", target.authority.host),
            None => target.authority.host.to_string(),
        };
        let decision = self.evaluate_http(
            &RequestLine { scheme: &target.scheme, authority: &authority, method, path: Some(&target.path) },
            caller,
        );
        if decision.action != Action::Allow {
            return refuse(RedirectReason::Policy(decision.reason), Some(target), Some(decision));
        }
        let downgrade = target.scheme == "http"
            && self.effective_scheme(base) == "https"
            && !self.originates_tls(&target.authority.host)
            && !decision.rule_index.is_some_and(|rule| self.rule_allows_downgrade(rule));
        if downgrade {
            return refuse(RedirectReason::Downgrade, Some(target), Some(decision));
        }
        Vetted { action: Action::Allow, reason: None, target: Some(target), decision: Some(decision) }
    }

    /// The `max_internal_redirects` of the gateway route: the most hops any rule (or the policy) may follow, or
    /// `None` when nothing is followed. The filter enforces each rule's own limit on every hop.
    pub fn follow_route_hops(&self) -> Option<u32> {
        let policy = self.redirects.follow.then_some(self.redirects.max_hops);
        let rules = self
            .rules
            .iter()
            .filter(|r| r.redirects.follow.unwrap_or(self.redirects.follow))
            .map(|r| r.redirects.max_hops.map_or(self.redirects.max_hops, u32::from));
        policy.into_iter().chain(rules).max()
    }

    /// A refused redirect: denied, or recorded in report mode (a malformed `Location` is refused in every mode).
    fn refused<'p>(
        &'p self,
        reason: RedirectReason,
        target: Option<Target>,
        decision: Option<Decision<'p>>,
    ) -> Vetted<'p> {
        let action = match (self.mode, reason) {
            (_, RedirectReason::MalformedLocation) => Action::Deny,
            (Mode::Report, _) => Action::ReportDeny,
            (Mode::Enforce, _) => Action::Deny,
        };
        Vetted { action, reason: Some(reason), target, decision }
    }

    /// The scheme the request really went out with: `https` when the gateway originates TLS for its host.
    fn effective_scheme<'a>(&self, base: &RequestLine<'a>) -> &'a str {
        match Authority::parse(base.authority) {
            Ok(authority) if self.originates_tls(&authority.host) => "https",
            _ => base.scheme,
        }
    }

    /// Whether the gateway originates TLS for `host` (`redirects.originateTls`).
    pub fn originates_tls(&self, host: &Host) -> bool {
        match host {
            Host::Name(name) => self.redirects.originate_tls.matches(name),
            Host::Ip(_) => false,
        }
    }

    /// TLS-origination mode (istio#44881): an allowed `https://host/…` Location for a host the gateway originates
    /// TLS for, rewritten to `http://host/…`, so the client follows it through the gateway's origination path.
    pub fn rewrite_for_tls_origination(&self, vetted: &Vetted<'_>) -> Option<String> {
        let target = vetted.target.as_ref().filter(|_| vetted.action == Action::Allow)?;
        if target.scheme != "https" || !self.originates_tls(&target.authority.host) {
            return None;
        }
        // The client-facing port for an originated host is the plain one: drop an explicit :443.
        let host = target.authority.host.to_string();
        let port = target.authority.port.filter(|&p| p != 443).map(|p| format!(":{p}")).unwrap_or_default();
        Some(format!("http://{host}{port}{}", target.path))
    }
}

/// What the redirects filter remembers across the hops of one followed request (kept in a filter-state property
/// that lives as long as the downstream request, so a client cannot set or reset it).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HopState {
    /// Origin of the first request, [`Target::origin`]: credentials never follow a redirect to another origin.
    pub origin: String,
    /// The client's request: scheme, authority, path, method. A followed chain is audited as this request.
    pub first: [String; 4],
    /// The allow-list's decision on the client's request (`egress.decision` as it was published), kept from the
    /// first followed hop on: each later pass of the chain publishes only its own.
    pub decision: Option<String>,
    /// The previous hop's request: scheme, authority, path, method.
    pub last: [String; 4],
    /// Fingerprints of every URL requested so far (not the URLs: queries may hold tokens).
    pub visited: Vec<u64>,
}

impl HopState {
    /// The state after the first request.
    pub fn start(request: &RequestLine<'_>, target: &Target) -> HopState {
        let mut state = HopState { origin: target.origin(), ..HopState::default() };
        state.record(request, target);
        state.first = state.last.clone();
        state
    }

    /// Records a hop as the new "previous request".
    pub fn record(&mut self, request: &RequestLine<'_>, target: &Target) {
        self.last = [request.scheme, request.authority, request.path_or_empty(), request.method].map(str::to_string);
        self.visited.push(fingerprint(&target.url()));
    }

    /// The state as JSON, exactly as its `Serialize` writes it (a test holds them together), without instantiating
    /// a serializer in the Wasm module.
    pub fn to_json(&self) -> String {
        Object::new()
            .str("origin", &self.origin)
            .array("first", &self.first, |out, part| crate::json::push_string(out, part))
            .opt_str("decision", self.decision.as_deref())
            .array("last", &self.last, |out, part| crate::json::push_string(out, part))
            .array("visited", &self.visited, |out, fingerprint| {
                let _ = write!(out, "{fingerprint}");
            })
            .finish()
    }

    /// Reads what [`HopState::to_json`] wrote (by hand, as its `Deserialize` would: a test holds them together).
    // `inline`: compiled into the redirects filter crate, which `make build` optimises for size.
    #[inline]
    pub fn from_json(json: &str) -> Option<HopState> {
        const FIELDS: &[&str] = &["origin", "first", "decision", "last", "visited"];
        const REQUIRED: [usize; 4] = [0, 1, 3, 4];
        let request_line = |reader: &mut json::Reader<'_>, at: &json::Path<'_>| {
            let parts = reader.list(at, json::Reader::string)?;
            let len = parts.len();
            <[String; 4]>::try_from(parts).map_err(|_| serde::de::Error::invalid_length(len, &"an array of length 4"))
        };
        let read = |reader: &mut json::Reader<'_>, path: &json::Path<'_>| {
            let mut state = HopState::default();
            let HopState { origin, first, decision, last, visited } = &mut state;
            let seen = reader.members(path, "struct HopState", FIELDS, false, &mut |reader, field, at| {
                match field {
                    0 => *origin = reader.string(at)?,
                    1 => *first = request_line(reader, at)?,
                    2 => *decision = reader.optional(|reader| reader.string(at))?,
                    3 => *last = request_line(reader, at)?,
                    _ => *visited = reader.list(at, json::Reader::uint)?,
                }
                Ok(())
            })?;
            REQUIRED.iter().try_for_each(|&field| json::require(seen, field, FIELDS, path))?;
            Ok(state)
        };
        json::read(&mut json.as_bytes(), read).ok()
    }

    fn last_request(&self) -> RequestLine<'_> {
        let [scheme, authority, path, method] = &self.last;
        RequestLine::new(scheme, authority, method, path)
    }

    /// The client's request, which a followed chain is audited as.
    pub fn first_request(&self) -> RequestLine<'_> {
        let [scheme, authority, path, method] = &self.first;
        RequestLine::new(scheme, authority, method, path)
    }
}

/// FNV-1a: a stable, dependency-free fingerprint; collisions only make a loop stop early.
fn fingerprint(url: &str) -> u64 {
    url.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

/// The verdict on a hop Envoy is about to send while following a redirect.
#[derive(Debug)]
pub enum FollowedHop<'p> {
    /// Send it; strip credentials when it leaves the original origin (scheme, host, port).
    Proceed { vetted: Vetted<'p>, strip_credentials: bool },
    /// Refuse with `status` (508 for loops and hop limits, `redirects.denyStatus` otherwise).
    Refuse { status: u16, reason: &'static str, vetted: Option<Vetted<'p>> },
    /// The target's rule does not follow: hand the redirect back to the client (302 to this URL).
    Bounce { location: String, vetted: Vetted<'p> },
}

pub const LOOP_REASON: &str = "redirect_loop";
pub const HOP_LIMIT_REASON: &str = "too_many_redirects";
/// `508 Loop Detected`, for loops and hop limits.
pub const LOOP_STATUS: u16 = 508;

impl Policy {
    /// Judges `current`, the `hops`-th request Envoy sends while following redirects from the request in `state`.
    pub fn judge_followed_hop(
        &self,
        state: &HopState,
        current: &RequestLine<'_>,
        hops: u32,
        caller: Caller<'_>,
    ) -> FollowedHop<'_> {
        let deny_status = self.redirects.deny_status;
        let target = match Target::of_request(current) {
            Ok(target) => target,
            Err(LocationError::NonHttpScheme) => {
                let vetted = self.refused(RedirectReason::NonHttpScheme, None, None);
                return FollowedHop::Refuse { status: deny_status, reason: "non_http_scheme", vetted: Some(vetted) };
            }
            Err(LocationError::Malformed) => {
                let vetted = self.refused(RedirectReason::MalformedLocation, None, None);
                return FollowedHop::Refuse { status: deny_status, reason: "malformed_location", vetted: Some(vetted) };
            }
        };
        if state.visited.contains(&fingerprint(&target.url())) {
            return FollowedHop::Refuse { status: LOOP_STATUS, reason: LOOP_REASON, vetted: None };
        }
        let strip_credentials = target.origin() != state.origin;
        let url = target.url();
        let vetted = self.vet_target(&state.last_request(), target, current.method, caller);
        if vetted.action == Action::Deny {
            let reason = vetted.reason.map_or("redirect_denied", RedirectReason::code);
            return FollowedHop::Refuse { status: deny_status, reason, vetted: Some(vetted) };
        }
        let (follow, max_hops) = self.follow_settings(vetted.decision.as_ref().and_then(|d| d.rule_index));
        if hops > max_hops {
            return FollowedHop::Refuse { status: LOOP_STATUS, reason: HOP_LIMIT_REASON, vetted: Some(vetted) };
        }
        if !follow {
            return FollowedHop::Bounce { location: url, vetted };
        }
        FollowedHop::Proceed { vetted, strip_credentials }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const BASE: RequestLine<'static> = RequestLine::new("http", "httpbin.org", "GET", "/a/b/c?x=1");

    fn url(location: &str) -> Result<String, LocationError> {
        resolve(&BASE, location).map(|t| t.url())
    }

    #[test]
    fn a_refused_location_is_explained_by_what_is_wrong_with_it() {
        let base = RequestLine::new("http", "a.example", "GET", "/");
        let cases = [
            ("http://user@httpbin.org/", "userinfo"),
            ("http://user:pass@httpbin.org/", "userinfo"),
            ("http://a b.example/", "spaces"),
            ("http://a.example\\@evil.example/", "backslash"),
            ("http:httpbin.org/", "`//`"),
            ("http://ev%69l.example/", "percent-escapes"),
            ("javascript:alert(1)", "only http and https"),
            ("", "empty"),
        ];
        for (location, why) in cases {
            let error = resolve(&base, location).expect_err(location);
            assert!(error.explain(location).contains(why), "{location}: {}", error.explain(location));
        }
    }

    #[test]
    fn resolves_every_reference_form() {
        assert_eq!(url("http://Other.Example/p?q=1#frag"), Ok("http://other.example/p?q=1".into()));
        assert_eq!(url("HTTPS://other.example:8443"), Ok("https://other.example:8443/".into()));
        assert_eq!(url("https://other.example?q"), Ok("https://other.example/?q".into()));
        assert_eq!(url("//other.example/p"), Ok("http://other.example/p".into()));
        assert_eq!(url("/p/q"), Ok("http://httpbin.org/p/q".into()));
        assert_eq!(url("d"), Ok("http://httpbin.org/a/b/d".into()));
        assert_eq!(url("../d"), Ok("http://httpbin.org/a/d".into()));
        assert_eq!(url("../../../../d"), Ok("http://httpbin.org/d".into()));
        assert_eq!(url("./"), Ok("http://httpbin.org/a/b/".into()));
        assert_eq!(url("?y=2"), Ok("http://httpbin.org/a/b/c?y=2".into()));
        assert_eq!(url("/a/./b/../c"), Ok("http://httpbin.org/a/c".into()));
        assert_eq!(url("http://[::1]:8080/x"), Ok("http://[::1]:8080/x".into()));
        assert_eq!(url("http://2130706433/"), Ok("http://127.0.0.1/".into()));
    }

    /// Found by fuzzing against the `url` crate (`fuzz/`, target `redirect`): a `Location` of a fragment alone was
    /// resolved as an empty relative path (the base's directory, `/a/b/`), where RFC 3986 and WHATWG keep the base's
    /// path and query.
    #[test]
    fn a_fragment_alone_is_the_base_itself() {
        assert_eq!(url("#c"), Ok("http://httpbin.org/a/b/c?x=1".into()));
        assert_eq!(url("#"), Ok("http://httpbin.org/a/b/c?x=1".into()));
        let base = RequestLine { path: Some("/public/a/../b"), ..BASE };
        assert_eq!(resolve(&base, "#x").map(|t| t.url()), Ok("http://httpbin.org/public/b".into()));
        assert_eq!(url("?#c"), Ok("http://httpbin.org/a/b/c?".into()), "an empty query is a query");
    }

    #[test]
    fn refuses_schemes_and_tricks() {
        for location in
            ["javascript:alert(1)", "file:///etc/passwd", "gopher://x/", "data:text/html,x", "ftp://x/", "mailto:a@b"]
        {
            assert_eq!(url(location), Err(LocationError::NonHttpScheme), "{location}");
        }
        let tricks = [
            "http://user@evil.example/",
            "http://httpbin.org@evil.example/",
            "http://evil.example\\@httpbin.org/",
            "/\\evil.example/",
            "\\\\evil.example/",
            "http://evil%2eexample/",
            "http://evil .example/",
            "http:evil.example",
            "http:/evil.example",
            "http:///path",
            "",
            "http://a.example/\u{1}",
            // Browsers drop tabs and newlines inside a URL: `ht\ttp://evil` is `http://evil` to them.
            "ht\ttp://evil.example/",
            "http://evil.\texample/",
            "/\t/evil.example/",
            " http://evil.example/",
            "http://evil.example/\u{7f}",
            "http://\u{ff45}vil.example/",
            "http:/\\evil.example/",
            "https:\\\\evil.example/",
        ];
        for location in tricks {
            assert_eq!(url(location), Err(LocationError::Malformed), "{location:?}");
        }
    }

    #[test]
    fn every_3xx_redirects_and_envoy_follows_five() {
        assert!((300..=399).all(is_redirect));
        assert!(![200, 201, 299, 400, 404, 0, 1000].into_iter().any(is_redirect));
        assert!(FOLLOWED_STATUSES.into_iter().all(is_redirect));
    }

    #[test]
    fn follow_methods_cover_what_clients_do() {
        assert_eq!(follow_methods(303, "POST"), ("GET", None));
        assert_eq!(follow_methods(303, "HEAD"), ("HEAD", None));
        assert_eq!(follow_methods(307, "POST"), ("POST", None));
        assert_eq!(follow_methods(308, "PUT"), ("PUT", None));
        for status in [300, 301, 302, 304, 305, 306, 309, 399] {
            assert_eq!(follow_methods(status, "POST"), ("POST", Some("GET")), "{status}");
            assert_eq!(follow_methods(status, "GET"), ("GET", None), "{status}");
            assert_eq!(follow_methods(status, "HEAD"), ("HEAD", None), "{status}");
        }
    }

    #[test]
    fn a_location_on_any_3xx_is_vetted() {
        let p = policy(POLICY);
        for status in [300, 301, 302, 303, 304, 305, 306, 307, 308, 309, 350, 399] {
            assert_eq!(code(&vet(&p, BASE, status, "http://evil.test/")), "host_not_allowed", "{status}");
            assert_eq!(code(&vet(&p, BASE, status, "http://eu.httpbin.org/get")), "allowed", "{status}");
            assert_eq!(code(&vet(&p, BASE, status, "http://169.254.169.254/")), "deny_listed", "{status}");
        }
    }

    fn policy(json: &str) -> Policy {
        Policy::from_json(json.as_bytes()).unwrap()
    }

    const POLICY: &str = r#"{
      "rules": [
        {"name": "httpbin", "hosts": ["httpbin.org", "*.httpbin.org"]},
        {"name": "legacy", "hosts": ["legacy.example"], "redirects": {"allowDowngrade": true}},
        {"name": "sleep-only", "hosts": ["internal.example"], "principals": ["cluster.local/ns/app/sa/sleep"]},
        {"name": "get-only", "hosts": ["ro.example"], "methods": ["GET"]}
      ],
      "deny": {"hosts": ["*.evil.httpbin.org"], "cidrs": ["169.254.0.0/16"]},
      "redirects": {"originateTls": ["*.httpbin.org", "httpbin.org"]}
    }"#;

    fn vet<'p>(p: &'p Policy, base: RequestLine<'_>, status: u16, location: &str) -> Vetted<'p> {
        p.vet_redirect(&base, status, location, Caller::ANONYMOUS)
    }

    fn code(v: &Vetted<'_>) -> &'static str {
        v.reason.map_or("allowed", RedirectReason::code)
    }

    #[test]
    fn vets_the_target_like_a_request() {
        let p = policy(POLICY);
        assert_eq!(code(&vet(&p, BASE, 302, "http://eu.httpbin.org/get")), "allowed");
        assert_eq!(code(&vet(&p, BASE, 302, "/relative")), "allowed");
        assert_eq!(code(&vet(&p, BASE, 302, "http://example.com/")), "host_not_allowed");
        assert_eq!(code(&vet(&p, BASE, 302, "http://x.evil.httpbin.org/")), "deny_listed");
        assert_eq!(code(&vet(&p, BASE, 302, "http://169.254.169.254/latest")), "deny_listed");
        assert_eq!(code(&vet(&p, BASE, 302, "http://10.0.0.1/")), "ip_literal_not_allowed");
        assert_eq!(code(&vet(&p, BASE, 302, "javascript:alert(1)")), "non_http_scheme");
        assert_eq!(code(&vet(&p, BASE, 302, "http://user@httpbin.org/")), "malformed_location");
        assert_eq!(code(&vet(&p, BASE, 302, "https://internal.example/")), "identity_not_allowed");
        let sleep = crate::SpiffeId::parse("spiffe://cluster.local/ns/app/sa/sleep").unwrap();
        assert_eq!(p.vet_redirect(&BASE, 302, "https://internal.example/", Some(&sleep).into()).action, Action::Allow);
        // httpbin.org is reached over TLS the gateway originates: a plain-http target is a real downgrade.
        assert_eq!(code(&vet(&p, BASE, 302, "http://internal.example/")), "identity_not_allowed", "policy first");
        assert_eq!(
            p.vet_redirect(&BASE, 302, "http://internal.example/", Some(&sleep).into()).reason,
            Some(RedirectReason::Downgrade)
        );
    }

    #[test]
    fn a_dot_segment_written_with_escapes_is_refused_wherever_it_stands() {
        // Browsers (WHATWG) read `.%2e` as `..`, RFC 3986 and curl as a name: the same Location would reach two
        // targets. Found by the redirect fuzz target against `url`: a `.%2E` removed by the `..` after it left a
        // clean-looking path that a browser resolves elsewhere.
        let refused = [
            "/./,/a\"/b^/./.+a\"/b/.%2E/../c",
            "/x/.%2e/y",
            "/x/%2E./y",
            "/x/%2e%2E/../y",
            "a/%2e/b",
            "%2e%2e/x",
            "http://httpbin.org/p/.%2E?q",
            "//httpbin.org/%2e/x",
        ];
        for location in refused {
            assert_eq!(resolve(&BASE, location), Err(LocationError::Malformed), "{location}");
            assert!(LocationError::Malformed.explain(location).contains("%2e"), "{location}");
        }
        for fine in ["/x/%2ex/y", "/x/a%2e/y", "/x?q=/%2e%2e/", "/x/%252e%252e/y"] {
            assert!(resolve(&BASE, fine).is_ok(), "{fine}");
        }
        // A relative Location against a base path that has one (Envoy passes it on): the target would carry it, and
        // its own URL could not be followed. Found by the same target once the Location alone was checked.
        let base = RequestLine { path: Some("/publicUb/%2e./!//b/me"), ..BASE };
        for relative in [".&/b", "x", "?q", ""] {
            assert_eq!(resolve(&base, relative), Err(LocationError::Malformed), "{relative:?}");
        }
        assert!(resolve(&base, "/x").is_ok(), "an absolute path does not take the base's");
    }

    /// A base path Envoy passed on may be one clients resolve relative references against in two ways, or hold what
    /// no `Location` may: a relative `Location` against it is refused where it would take that into the target, or
    /// reach two targets; an absolute one (or one with an absolute path) does not depend on it.
    #[test]
    fn a_relative_location_against_a_base_path_clients_read_two_ways_is_refused() {
        let refused = Err(LocationError::Malformed);
        let ways = ["x", "./x", "../x", "?q", "#", "#top"];
        // `\` anywhere in the path (a `/` to browsers), a last segment that is a dot segment (resolved within the base
        // by browsers, dropped by RFC 3986's merge), and what no Location may hold in the base's directory.
        let two_ways = [
            "/a\\b/c",
            "/a/b\\",
            "/a\\?q",
            "/a/b/..",
            "/a/b/.",
            "/a/b/%2E%2e",
            "/a/b/.%2e",
            "/a/b/%2e",
            "/a/..?q=1",
            "/a b/c",
            "/a\tb/c",
            "/caf\u{e9}/x",
            "/a#/b",
            "/a\x7f/b",
        ];
        for path in two_ways {
            let base = RequestLine { path: Some(path), ..BASE };
            for relative in ways {
                assert_eq!(resolve(&base, relative), refused, "{relative:?} against {path:?}");
            }
            assert_eq!(resolve(&base, "/x").map(|t| t.url()), Ok("http://httpbin.org/x".into()), "{path:?}");
            assert_eq!(resolve(&base, "//a.example").map(|t| t.url()), Ok("http://a.example/".into()));
            assert_eq!(resolve(&base, "https://a.example/y").map(|t| t.url()), Ok("https://a.example/y".into()));
        }
        // Read one way: dot segments before the last, a dot in a name, `\` only in the query, escapes of those bytes.
        // What no Location may hold is refused only where the target would take it.
        let cases = [
            ("/a/../b/c", "x", Some("/b/x")),
            ("/a/./b/..c", "x", Some("/a/b/x")),
            ("/a/b.", "x", Some("/a/x")),
            ("/a/b?q\\", "?r", Some("/a/b?r")),
            ("/a/b?q\\", "#top", None),
            ("/a/b?q#f", "x", Some("/a/x")),
            ("/a/b?q#f", "#", None),
            ("/a/b c", "x", Some("/a/x")),
            ("/a/b c", "?q", None),
            ("/a%5Cb/c%20d/e?x=%23&y=~!$'()*+,;=:@", "f", Some("/a%5Cb/c%20d/f")),
            ("/a%5Cb/c%20d/e?x=%23&y=~!$'()*+,;=:@", "#top", Some("/a%5Cb/c%20d/e?x=%23&y=~!$'()*+,;=:@")),
        ];
        for (path, relative, want) in cases {
            let got = resolve(&RequestLine { path: Some(path), ..BASE }, relative).map(|t| t.path);
            assert_eq!(got.as_deref().ok(), want, "{relative:?} against {path:?}: {got:?}");
        }
    }

    #[test]
    fn locations_cannot_walk_out_of_a_path_scoped_rule() {
        let p = policy(r#"{"rules":[{"name":"public","hosts":["api.example"],"paths":["/public/*"]}]}"#);
        let base = RequestLine::new("https", "api.example", "GET", "/public/a");
        for location in [
            "/public/%2e%2e;/private/x",
            "/public/..;/private/x",
            "https://api.example/public/.;/x",
            "//api.example/public/%252e%252e/private",
            "/public/%c0%ae%c0%ae/private",
            "/public//x",
            "x/..;/..;/private",
        ] {
            assert_eq!(code(&vet(&p, base, 302, location)), "ambiguous_path", "{location}");
        }
        // Dot segments of a Location are resolved first, as every client does: what they reach is what is vetted.
        assert_eq!(code(&vet(&p, base, 302, "/public/../private")), "path_not_allowed");
        assert_eq!(code(&vet(&p, base, 302, "b/../c")), "allowed");
        let state = HopState::start(&base, &Target::of_request(&base).unwrap());
        let hop = |path| {
            let current = RequestLine { path: Some(path), ..base };
            match p.judge_followed_hop(&state, &current, 1, Caller::ANONYMOUS) {
                FollowedHop::Refuse { reason, .. } => reason,
                other => panic!("{path}: {other:?}"),
            }
        };
        assert_eq!(hop("/public/..;/private/x"), "ambiguous_path", "a followed hop, as Envoy sends it");
        assert_eq!(hop("/public/%2e%2e;/private/x"), "ambiguous_path");
    }

    #[test]
    fn the_follow_method_is_what_gets_vetted() {
        let p = policy(POLICY);
        let post = RequestLine { method: "POST", authority: "plain.httpbin.example", ..BASE };
        assert_eq!(code(&vet(&p, post, 303, "http://ro.example/")), "allowed", "303 follows with GET");
        assert_eq!(code(&vet(&p, post, 307, "http://ro.example/")), "method_not_allowed", "307 keeps POST");
        for status in [300, 301, 302, 305, 306, 399] {
            // Some clients keep POST, others turn it into GET: both must be allowed.
            assert_eq!(code(&vet(&p, post, status, "http://ro.example/")), "method_not_allowed", "{status}");
        }
        let get = RequestLine { method: "GET", ..post };
        assert_eq!(code(&vet(&p, get, 302, "http://ro.example/")), "allowed");
    }

    #[test]
    fn downgrades_need_a_rule_that_allows_them() {
        let p = policy(POLICY);
        let https = RequestLine { scheme: "https", authority: "api.other.example", ..BASE };
        // The rule that allows the target (the first that matches, as everywhere) governs its redirect settings.
        let all = policy(
            r#"{"rules":[{"name":"legacy","hosts":["legacy.example"],"redirects":{"allowDowngrade":true}},{"name":"all","hosts":["*"]}]}"#,
        );
        assert_eq!(code(&vet(&all, https, 301, "http://www.other.example/")), "redirect_downgrade");
        assert_eq!(code(&vet(&all, https, 301, "https://www.other.example/")), "allowed");
        assert_eq!(code(&vet(&all, https, 301, "http://legacy.example/")), "allowed", "rule allows it");
        // For a host the gateway originates TLS for, the client-side http is not a downgrade.
        assert_eq!(code(&vet(&p, BASE, 301, "http://eu.httpbin.org/")), "allowed");
        let originated = RequestLine { scheme: "http", authority: "httpbin.org", ..BASE };
        let legacy_all =
            policy(r#"{"rules":[{"name":"all","hosts":["*"]}],"redirects":{"originateTls":["httpbin.org"]}}"#);
        assert_eq!(
            code(&vet(&legacy_all, originated, 301, "http://plain.example/")),
            "redirect_downgrade",
            "the request really went out over https"
        );
    }

    #[test]
    fn report_mode_records_but_never_passes_malformed_locations() {
        let p = policy(r#"{"mode":"report","rules":[{"name":"a","hosts":["a.example"]}]}"#);
        let base = RequestLine { authority: "a.example", ..BASE };
        assert_eq!(vet(&p, base, 302, "http://b.example/").action, Action::ReportDeny);
        assert_eq!(vet(&p, base, 302, "gopher://b.example/").action, Action::ReportDeny);
        assert_eq!(vet(&p, base, 302, "http://u@b.example/").action, Action::Deny);
    }

    #[test]
    fn tls_origination_rewrites_allowed_https_locations() {
        let p = policy(POLICY);
        let rewrite = |location: &str| p.rewrite_for_tls_origination(&vet(&p, BASE, 302, location));
        assert_eq!(rewrite("https://eu.httpbin.org/get?a=1"), Some("http://eu.httpbin.org/get?a=1".into()));
        assert_eq!(rewrite("https://httpbin.org:443/x"), Some("http://httpbin.org/x".into()));
        assert_eq!(rewrite("https://httpbin.org:8443/x"), Some("http://httpbin.org:8443/x".into()));
        assert_eq!(rewrite("http://eu.httpbin.org/"), None, "already plain");
        assert_eq!(rewrite("https://x.evil.httpbin.org/"), None, "refused redirects are never rewritten");
    }

    #[test]
    fn the_route_follows_as_far_as_the_most_generous_rule() {
        assert_eq!(policy(POLICY).follow_route_hops(), None);
        let p = policy(
            r#"{"rules":[{"name":"a","hosts":["a.example"],"redirects":{"maxHops":9}},{"name":"b","hosts":["b.example"]}],"redirects":{"follow":true,"maxHops":2}}"#,
        );
        assert_eq!(p.follow_route_hops(), Some(9));
        let only_rule = policy(r#"{"rules":[{"name":"a","hosts":["a.example"],"redirects":{"follow":true}}]}"#);
        assert_eq!(only_rule.follow_route_hops(), Some(5));
        assert_eq!(only_rule.follow_settings(Some(0)), (true, 5));
        assert_eq!(only_rule.follow_settings(None), (false, 5));
    }

    fn hop(p: &Policy, state: &HopState, scheme: &str, authority: &str, path: &str, hops: u32) -> String {
        let current = RequestLine::new(scheme, authority, "GET", path);
        match p.judge_followed_hop(state, &current, hops, Caller::ANONYMOUS) {
            FollowedHop::Proceed { strip_credentials, .. } => format!("proceed strip={strip_credentials}"),
            FollowedHop::Refuse { status, reason, .. } => format!("{status} {reason}"),
            FollowedHop::Bounce { location, .. } => format!("bounce {location}"),
        }
    }

    #[test]
    fn followed_hops_are_judged_before_they_are_sent() {
        let p = policy(
            r#"{
          "rules": [
            {"name": "short", "hosts": ["short.example"], "redirects": {"maxHops": 1}},
            {"name": "manual", "hosts": ["manual.example"], "redirects": {"follow": false}},
            {"name": "all", "hosts": ["*"]}
          ],
          "redirects": {"follow": true, "maxHops": 3}
        }"#,
        );
        let first = RequestLine::new("https", "a.example", "GET", "/start?token=x");
        let mut state = HopState::start(&first, &Target::of_request(&first).unwrap());
        assert_eq!(hop(&p, &state, "https", "b.example", "/next", 1), "proceed strip=true");
        assert_eq!(
            hop(&p, &state, "https", "a.example", "/other", 1),
            "proceed strip=false",
            "same host keeps credentials"
        );
        assert_eq!(hop(&p, &state, "https", "a.example:443", "/other", 1), "proceed strip=false", "the default port");
        assert_eq!(hop(&p, &state, "https", "a.example:8443", "/other", 1), "proceed strip=true", "another port");
        assert_eq!(hop(&p, &state, "https", "a.example.", "/other", 1), "proceed strip=false", "one name");
        assert_eq!(hop(&p, &state, "https", "A.Example", "/start?token=x", 1), "508 redirect_loop");
        assert_eq!(hop(&p, &state, "ftp", "b.example", "/", 1), "403 non_http_scheme");
        assert_eq!(hop(&p, &state, "http", "b.example", "/", 1), "403 redirect_downgrade");
        assert_eq!(hop(&p, &state, "https", "b.example", "/", 4), "508 too_many_redirects");
        assert_eq!(hop(&p, &state, "https", "short.example", "/", 2), "508 too_many_redirects", "the rule's own limit");
        assert_eq!(hop(&p, &state, "https", "manual.example", "/p?q=1", 1), "bounce https://manual.example/p?q=1");
        let next = RequestLine::new("https", "b.example", "GET", "/next");
        state.record(&next, &Target::of_request(&next).unwrap());
        assert_eq!(hop(&p, &state, "https", "b.example", "/next", 2), "508 redirect_loop");
        assert_eq!(hop(&p, &state, "https", "c.example", "/", 2), "proceed strip=true");
        // The state travels between hops as JSON: written without serde, exactly as serde writes it.
        assert_eq!(state.first_request(), first, "the client's request, whatever was followed since");
        state.last[2] = "/p?q=\"\\\u{1}é".into();
        assert_eq!(state.to_json(), serde_json::to_string(&state).unwrap());
        assert_eq!(HopState::from_json(&state.to_json()), Some(state.clone()));
        state.decision = Some(r#"{"action":"allow"}"#.into());
        assert_eq!(state.to_json(), serde_json::to_string(&state).unwrap());
        assert_eq!(HopState::from_json(&state.to_json()), Some(state));
        assert_eq!(HopState::default().to_json(), serde_json::to_string(&HopState::default()).unwrap());
        assert_eq!(HopState::from_json("{}"), None);
        for bad in [
            r#"{"origin":"a","first":["a","b","c","d"],"last":["a","b","c"],"visited":[]}"#,
            r#"{"origin":"a","first":["a","b","c","d"],"last":["a","b","c","d","e"],"visited":[]}"#,
            r#"{"origin":"a","first":["a","b","c","d"],"last":["a","b","c","d"],"visited":[-1]}"#,
            r#"{"origin":"a","first":["a","b","c","d"],"last":["a","b","c","d"]}"#,
            r#"{"origin":"a","last":["a","b","c","d"],"visited":[]}"#,
            r#"{"origin":"a","first":["a","b","c","d"],"decision":1,"last":["a","b","c","d"],"visited":[]}"#,
            r#"{"origin":"a","origin":"b","first":["a","b","c","d"],"last":["a","b","c","d"],"visited":[]}"#,
        ] {
            assert_eq!(HopState::from_json(bad), None, "{bad}");
            assert!(serde_json::from_str::<HopState>(bad).is_err(), "{bad}");
        }
        for fine in [
            r#"{"origin":"a","first":["a","b","c","d"],"last":["a","b","c","d"],"visited":[1],"new":true}"#,
            r#"{"origin":"a","first":["a","b","c","d"],"decision":null,"last":["a","b","c","d"],"visited":[1]}"#,
            r#"{"origin":"a","first":["a","b","c","d"],"decision":"x","last":["a","b","c","d"],"visited":[1]}"#,
        ] {
            let parsed = HopState::from_json(fine);
            assert!(parsed.is_some(), "{fine}");
            assert_eq!(parsed, serde_json::from_str::<HopState>(fine).ok());
        }
    }

    #[test]
    fn refusal_bodies_never_echo_the_location() {
        let p = policy(POLICY);
        let v = vet(&p, BASE, 302, "http://example.com/secret?token=abc");
        let body = v.http_body(302);
        assert!(!body.contains("secret") && !body.contains("token"), "{body}");
        assert_eq!(
            body,
            serde_json::json!({"error":"redirect_denied","reason":"host_not_allowed","status":302,"host":"example.com"})
                .to_string()
        );
        let unparsed = vet(&p, BASE, 302, "gopher://x/").http_body(301);
        assert_eq!(unparsed, r#"{"error":"redirect_denied","host":null,"reason":"non_http_scheme","status":301}"#);
    }
}
