//! `redirect::resolve` (a response's `Location` against the request it answers) and `Policy::vet_redirect`.
//!
//! Input: a selector byte (base scheme, status), then either the `Location` alone (against a fixed base request) or
//! `base authority \n base path \n Location`.
//!
//! Properties: the resolved target is a normal form (its URL resolves to itself, from any base); vetting never
//! panics and judges the target as `evaluate_http` judges the request that follows it; the redirects filter's hop
//! state round-trips through its JSON, written exactly as `serde_json` writes it.
//!
//! Oracle: `url::Url::join` (WHATWG) for every input both accept: the same scheme, host, port, path and query. Our
//! URL is read back through `url::Url::parse` for the comparison, so that `url`'s own spellings (percent-encoding of
//! `"` `<` `>` `` ` `` `{` `}` in paths, default ports dropped, `%2e` read as a dot segment) apply to both sides.
//! Deliberate differences, where only we refuse: anything with a backslash, space, control or non-ASCII byte (to a
//! browser `\` is `/` and tabs vanish); `http:host` and `http:/host` without `//` (parsers read them differently);
//! every authority `Authority::parse` refuses (userinfo, escapes, non-canonical ports …). A trailing dot of the host:
//! we drop it, `url` keeps it. A relative `Location` against a base path that WHATWG and RFC 3986 resolve against
//! differently (`\` in it, a last segment that is a dot segment), or whose path would bring into the target what no
//! `Location` may hold.

use egress_core::decision::{Action, Caller};
use egress_core::redirect::{self, HopState, Target};
use egress_core::Policy;
use egress_core::RequestLine;
use std::sync::OnceLock;

const POLICY: &str = r#"{
  "rules": [
    {"name": "httpbin", "hosts": ["httpbin.org", "*.httpbin.org"]},
    {"name": "legacy", "hosts": ["legacy.example"], "redirects": {"allowDowngrade": true}},
    {"name": "public", "hosts": ["api.example"], "paths": ["/public/*", "/%7euser"]},
    {"name": "get-only", "hosts": ["ro.example"], "methods": ["GET"]},
    {"name": "net", "cidrs": ["10.0.0.0/8", "2001:db8::/32"], "ports": [80, 443, 8080]}
  ],
  "deny": {"hosts": ["*.evil.httpbin.org"], "cidrs": ["169.254.0.0/16"]},
  "redirects": {"originateTls": ["*.httpbin.org", "httpbin.org"]}
}"#;

pub(crate) fn policy() -> &'static Policy {
    static POLICY_CELL: OnceLock<Policy> = OnceLock::new();
    POLICY_CELL.get_or_init(|| Policy::from_json(POLICY.as_bytes()).expect("the fuzz policy compiles"))
}

const STATUSES: [u16; 8] = [301, 302, 303, 307, 308, 300, 304, 399];
const METHODS: [&str; 4] = ["GET", "POST", "HEAD", "PUT"];

pub fn run(data: &[u8]) {
    let (selector, rest) = crate::selector(data);
    let Some(text) = crate::text(rest) else { return };
    let parts: Vec<&str> = text.splitn(3, '\n').collect();
    let (authority, path, location) = match parts[..] {
        [authority, path, location] => (authority, path, location),
        _ => ("httpbin.org", "/a/b/c?x=1", text),
    };
    let scheme = if selector & 1 == 0 { "http" } else { "https" };
    let method = METHODS[usize::from(selector >> 1) % METHODS.len()];
    let status = STATUSES[usize::from(selector >> 3) % STATUSES.len()];
    let base = RequestLine::new(scheme, authority, method, path);

    let resolved = redirect::resolve(&base, location);
    let vetted = policy().vet_redirect(&base, status, location, Caller::ANONYMOUS);
    let _ = vetted.http_body(status);
    let _ = policy().rewrite_for_tls_origination(&vetted);
    let Ok(target) = resolved else {
        assert_eq!(vetted.action, Action::Deny, "an unresolvable Location is refused in every mode");
        return;
    };
    assert_eq!(vetted.target.as_ref(), Some(&target));

    // A normal form: the target's URL resolves to the target, against any base.
    let url = target.url();
    assert_eq!(redirect::resolve(&base, &url).as_ref(), Ok(&target), "{location:?} → {url:?}");
    let elsewhere = RequestLine::new("https", "other.example", method, "/");
    assert_eq!(redirect::resolve(&elsewhere, &url).as_ref(), Ok(&target), "{url:?} from elsewhere");

    // An allowed redirect is one whose follow-up request the allow-list allows.
    if vetted.action == Action::Allow {
        let authority = match target.authority.port {
            Some(port) => format!("{}:{port}", target.authority.host),
            None => target.authority.host.to_string(),
        };
        let (first, other) = redirect::follow_methods(status, method);
        for method in std::iter::once(first).chain(other) {
            let request =
                RequestLine { scheme: &target.scheme, authority: &authority, method, path: Some(&target.path) };
            assert_eq!(
                policy().evaluate_http(&request, Caller::ANONYMOUS).action,
                Action::Allow,
                "{url} with {method}"
            );
        }
    }

    // The hop state the redirects filter keeps between followed hops.
    if let Ok(first) = Target::of_request(&base) {
        let mut state = HopState::start(&base, &first);
        state.record(&RequestLine { path: Some(&target.path), ..base }, &target);
        let json = state.to_json();
        assert_eq!(json, serde_json::to_string(&state).unwrap());
        assert_eq!(HopState::from_json(&json), Some(state));
        against_url(&base, location, &target);
    }
}

fn against_url(base: &RequestLine<'_>, location: &str, ours: &Target) {
    let Ok(base_url) = url::Url::parse(&format!("{}://{}{}", base.scheme, base.authority, base.path_or_empty())) else {
        return;
    };
    // A base path that is not absolute is not a URL's (Envoy passes on none). One that WHATWG reads otherwise than
    // as it was sent (`\` as `/`, a last segment that is a dot segment, and what no Location may hold) is refused
    // for relative Locations, and the rest are compared: WHATWG removes dot segments from the base before resolving,
    // RFC 3986 (and we) from the merged path only, which comes to the same when the last segment is not one.
    if !base.path_or_empty().starts_with('/') {
        return;
    }
    // `url` keeps a segment that looks like a Windows drive letter (`a:`) when `..` follows it, in http URLs too,
    // where the WHATWG standard as browsers implement it pops it (Node's `URL` agrees with us): not compared.
    let drive_letter =
        |s: &str| s.len() == 2 && s.as_bytes()[0].is_ascii_alphabetic() && b":|".contains(&s.as_bytes()[1]);
    if location.split(['/', '?']).any(drive_letter) || base.path_or_empty().split(['/', '?']).any(drive_letter) {
        return;
    }
    let Ok(theirs) = base_url.join(location) else { return };
    let ours_url = url::Url::parse(&ours.url()).unwrap_or_else(|e| panic!("{}: {e}", ours.url()));
    let host = |u: &url::Url| u.host_str().map(|h| h.strip_suffix('.').unwrap_or(h).to_string());
    let view = |u: &url::Url| (u.scheme().to_string(), host(u), u.port_or_known_default(), u.path().to_string());
    assert_eq!(view(&ours_url), view(&theirs), "{location:?} against {base_url}: ours {}, url {theirs}", ours.url());
    assert_eq!(ours_url.query(), theirs.query(), "{location:?} against {base_url}: ours {}, url {theirs}", ours.url());
}
