//! `Policy::evaluate_http` and `Policy::evaluate_tls` on a fixed policy (hosts, wildcards, CIDRs, ports, methods,
//! path-scoped rules, a deny list), with the authority, path and method from the input.
//!
//! Properties: a decision never depends on the spelling of what it normalises. The request with its authority in
//! normal form (`Authority::parse`, printed) and its path in normal form (`path::normal_form`, query kept) gets the
//! very same decision: no spelling is allowed where its normal form is denied, or the other way round. A TLS
//! connection is judged by its SNI as a CONNECT to that host and port is (the policy has no method-scoped rule that
//! a CONNECT could match). Every local reply body is JSON.

use egress_core::decision::Caller;
use egress_core::path;
use egress_core::RequestLine;
use egress_core::{Action, Authority};

const METHODS: [&str; 5] = ["GET", "POST", "HEAD", "CONNECT", "DELETE"];

pub fn run(data: &[u8]) {
    let (selector, rest) = crate::selector(data);
    let Some(text) = crate::text(rest) else { return };
    let (authority, path) = text.split_once('\n').unwrap_or((text, "/"));
    let scheme = if selector & 1 == 0 { "http" } else { "https" };
    let method = METHODS[usize::from(selector >> 1) % METHODS.len()];
    let policy = crate::redirect::policy();
    let evaluate = |authority: &str, path: &str| {
        policy.evaluate_http(&RequestLine { scheme, authority, method, path: Some(path) }, Caller::ANONYMOUS)
    };
    let decision = evaluate(authority, path);
    let body = decision.http_body();
    assert!(serde_json::from_str::<serde_json::Value>(&body).is_ok(), "{body}");
    assert_eq!(decision.action == Action::Allow, decision.destination.is_some() && decision.reason.code() == "allowed");

    if let Ok(parsed) = Authority::parse(authority) {
        let normal = match parsed.port {
            Some(port) => format!("{}:{port}", parsed.host),
            None => parsed.host.to_string(),
        };
        assert_eq!(evaluate(&normal, path), decision, "{authority:?} and its normal form {normal:?}, path {path:?}");
        if method == "CONNECT" {
            if let Some(port) = parsed.port {
                let tls = policy.evaluate_tls(Some(&parsed.host.to_string()), port, Caller::ANONYMOUS);
                assert_eq!(tls, decision, "TLS to {normal}");
            }
        }
    }
    if method != "CONNECT" {
        let (path_only, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        assert_eq!(path::without_query(path), path_only);
        if let Ok(normal) = path::normal_form(path_only) {
            let normal = match query {
                Some(query) => format!("{normal}?{query}"),
                None => normal.into_owned(),
            };
            assert_eq!(evaluate(authority, &normal), decision, "path {path:?} and its normal form {normal:?}");
        }
    }
}
