//! The workload identity stage: glue between the host and `egress_core::identity`. First in the chain.
//!
//! HTTP, for every request: remove every client-supplied copy of the identity headers and of XFCC, in any spelling a
//! server reads as the same name (`x_workload_identity` is `HTTP_X_WORKLOAD_IDENTITY` to CGI), from the headers and
//! from the trailers; refuse tunnels (CONNECT) unless `tunnels: allow`; establish the caller from what Envoy verified
//! (the mTLS peer certificate, which must name exactly one SPIFFE ID, or a trusted hop's XFCC); then either refuse
//! (403) or set the identity headers toward the upstream, optionally with XFCC and a signed assertion. The caller is
//! handed to the later stages (the allow-list judges it) and published as `egress.identity`.
//!
//! TLS passthrough: every connection is closed unless `tunnels: allow`, since nothing can be tagged inside one.
//!
//! A refusal is published as the request's `egress.decision` (action `deny`, the refusal's reason), so access logs
//! and the audit event show why.

use egress_core::assertion::Claims;
use egress_core::identity::{Caller, DenyReason, IdentityConfig, Via, XFCC_HEADER};
use egress_core::state::{self, DecisionRecord, IdentityRecord};
use egress_core::xfcc;
use egress_proxy::{self as proxy, Connection, Counter, Gauge, Host, HttpStage, Request, Step, TlsStage};
use proxy_wasm::types::{LogLevel, MapType, Status};
use std::rc::Rc;

/// Root id of the separate HTTP filter.
pub const ROOT_ID: &str = "egress-identity";
/// Root id of the separate TLS-passthrough network filter.
pub const TLS_ROOT_ID: &str = "egress-identity-tls";
/// The proxy-wasm callbacks this stage needs exported.
pub const CALLBACKS: &[&str] = &["proxy_on_request_headers", "proxy_on_request_trailers", "proxy_on_new_connection"];

#[derive(Clone, Copy)]
struct Metrics {
    verified: Counter,
    via_trusted_hop: Counter,
    anonymous: Counter,
    denied: Counter,
    spoofed: Counter,
    signed: Counter,
    tunnels_denied: Counter,
}

impl Metrics {
    fn define(host: &dyn Host) -> Result<Metrics, String> {
        let counter = |name: &str| Counter::define(host, &format!("egress_identity_{name}"));
        Ok(Metrics {
            verified: counter("verified")?,
            via_trusted_hop: counter("via_trusted_hop")?,
            anonymous: counter("anonymous")?,
            denied: counter("denied")?,
            spoofed: counter("spoofed_headers_removed")?,
            signed: counter("signed")?,
            tunnels_denied: counter("tunnels_denied")?,
        })
    }
}

/// The identity stage over one configuration.
pub struct Identity {
    config: Rc<IdentityConfig>,
    metrics: Metrics,
}

impl Identity {
    /// The stage, its counters defined, and the gauge that says which configuration serves:
    /// `egress_identity_config_fingerprint` (the fingerprint's first 48 bits), set here, at configure time.
    pub fn new(host: &dyn Host, config: Rc<IdentityConfig>) -> Result<Identity, String> {
        Gauge::define(host, "egress_identity_config_fingerprint")?.record(host, config.fingerprint().gauge());
        Ok(Identity { config, metrics: Metrics::define(host)? })
    }

    /// A refusal, counted and published as the request's (or connection's) decision.
    fn refuse(&self, host: &dyn Host, refusal: DenyReason) -> Result<DecisionRecord<String>, Status> {
        self.metrics.denied.increment(host);
        if refusal == DenyReason::TunnelNotAllowed {
            self.metrics.tunnels_denied.increment(host);
        }
        let record = DecisionRecord {
            action: "deny",
            reason: refusal.code(),
            rule: None,
            destination: None,
            mode: "enforce",
            policy: None,
        };
        proxy::publish_record(host, state::DECISION, &record)?;
        Ok(DecisionRecord {
            action: record.action.to_string(),
            reason: record.reason.to_string(),
            rule: None,
            destination: None,
            mode: record.mode.to_string(),
            policy: None,
        })
    }
}

impl HttpStage for Identity {
    fn name(&self) -> &'static str {
        "identity"
    }

    fn on_request_headers(&self, host: &dyn Host, request: &mut Request) -> Result<Step, Status> {
        let config = &*self.config;
        // What the client sent of ours goes first, whatever happens next. The XFCC copies are kept, in order: a
        // trusted hop's XFCC is judged as a whole (`IdentityConfig::resolve`).
        let headers = request.facts.headers(host)?;
        let mut spoofed = false;
        let mut incoming_xfcc: Option<String> = None;
        for (name, value) in headers.iter().filter(|(name, _)| config.strips(name)) {
            if name != XFCC_HEADER {
                spoofed = true;
                continue;
            }
            let value = String::from_utf8_lossy(value);
            match &mut incoming_xfcc {
                Some(joined) => {
                    joined.push(',');
                    joined.push_str(&value);
                }
                None => incoming_xfcc = Some(value.into_owned()),
            }
        }
        if spoofed || incoming_xfcc.is_some() {
            request.facts.remove_headers_where(host, |name| config.strips(name))?;
        }
        if spoofed {
            self.metrics.spoofed.increment(host);
        }

        let peer = proxy::verified_peer(host)?;
        let caller = config.resolve(&peer, incoming_xfcc.as_deref());
        let (id, source) = match &caller {
            Caller::Verified { id, via } => (Some(id.to_string()), via.as_str()),
            _ => (None, "none"),
        };
        proxy::publish_record(host, state::IDENTITY, &IdentityRecord { source, id: id.as_deref() })?;
        request.identity = Some(IdentityRecord { source: source.to_string(), id: id.clone() });

        let tunnel = request.facts.line(host)?.is_tunnel();
        let refusal = caller.refusal(config.on_missing).or_else(|| tunnel.then(|| config.tunnel_refusal()).flatten());
        if let Some(refusal) = refusal {
            request.decision = Some(self.refuse(host, refusal)?);
            return Ok(proxy::reply(host, 403, refusal.code(), &refusal.http_body(), &[]));
        }
        let (Caller::Verified { id: spiffe, via }, Some(id)) = (caller, id) else {
            request.caller = Some(None);
            self.metrics.anonymous.increment(host);
            return Ok(Step::Continue);
        };
        self.metrics.verified.increment(host);
        if via == Via::TrustedHop {
            self.metrics.via_trusted_hop.increment(host);
        }
        let names = &config.headers;
        request.facts.set_header(host, &names.identity, &id)?;
        request.facts.set_header(host, &names.trust_domain, &spiffe.trust_domain)?;
        request.facts.set_header(host, &names.namespace, &spiffe.namespace)?;
        request.facts.set_header(host, &names.service_account, &spiffe.service_account)?;
        if config.xfcc {
            let by = proxy::property_string(host, &["connection", "uri_san_local_certificate"])?;
            // The certificate hash describes the direct peer, so it is only true of a caller that is that peer.
            let hash = match via {
                Via::Mtls => proxy::property_string(host, &["connection", "sha256_peer_certificate_digest"])?,
                Via::TrustedHop => None,
            };
            request.facts.set_header(host, XFCC_HEADER, &xfcc::format_element(by.as_deref(), hash.as_deref(), &id))?;
        }
        if let Some(signer) = &config.signer {
            let line = request.facts.line(host)?;
            let claims =
                Claims { identity: &id, method: line.method, authority: line.authority, path: line.path_or_empty() };
            let issued_at = proxy::unix_ms(host)? / 1000;
            let mut nonce = [0u8; 16];
            let signed = host
                .random(&mut nonce)
                .map_err(|e| format!("no randomness for the nonce: {e}"))
                .and_then(|()| signer.sign(&claims, issued_at, &nonce));
            match signed {
                Ok(assertion) => {
                    request.facts.set_header(host, &names.assertion, &assertion)?;
                    self.metrics.signed.increment(host);
                }
                // An upstream that expects a signature must not get an unsigned request that looks vouched for.
                Err(why) => {
                    egress_proxy::pipeline::reply_internal_error(host, &format!("egress-identity: {why}"));
                    return Ok(Step::Stop);
                }
            }
        }
        request.caller = Some(Some(spiffe));
        Ok(Step::Continue)
    }

    /// Trailers reach the upstream too (HTTP/2, chunked HTTP/1.1), and some servers merge them into the headers.
    /// Envoy calls this only for requests that have trailers.
    fn on_request_trailers(&self, host: &dyn Host, _request: &mut Request) -> Result<Step, Status> {
        let trailers = host.map(MapType::HttpRequestTrailers)?;
        let mut names: Vec<&str> =
            trailers.iter().map(|(name, _)| name.as_str()).filter(|name| self.config.strips(name)).collect();
        names.sort_unstable();
        names.dedup();
        for name in &names {
            host.remove_map_value(MapType::HttpRequestTrailers, name)?;
        }
        if !names.is_empty() {
            self.metrics.spoofed.increment(host);
        }
        Ok(Step::Continue)
    }
}

impl TlsStage for Identity {
    fn name(&self) -> &'static str {
        "identity"
    }

    fn on_new_connection(&self, host: &dyn Host, connection: &mut Connection) -> Result<Step, Status> {
        let Some(refusal) = self.config.tunnel_refusal() else { return Ok(Step::Continue) };
        connection.decision = Some(self.refuse(host, refusal)?);
        host.log(LogLevel::Info, &format!("egress-identity: closing TLS-passthrough connection: {}", refusal.code()));
        let _ = host.close_downstream();
        Ok(Step::Stop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use egress_proxy::fake::FakeHost;

    const SLEEP: &str = "spiffe://cluster.local/ns/app/sa/sleep";
    const KEY: &str = "0123456789abcdef0123456789abcdef";

    fn stage(host: &FakeHost, json: &str) -> Identity {
        let config = IdentityConfig::from_json(json.as_bytes(), |_| Some(KEY.to_string())).unwrap();
        Identity::new(host, Rc::new(config)).unwrap()
    }

    fn request(extra: &[(&str, &str)]) -> FakeHost {
        let mut headers =
            vec![(":authority", "httpbin.org"), (":method", "GET"), (":path", "/headers"), (":scheme", "http")];
        headers.extend_from_slice(extra);
        FakeHost::new().with_request(&headers)
    }

    fn mtls(host: FakeHost, uri: &str) -> FakeHost {
        host.with_property(&["connection", "uri_san_peer_certificate"], uri.as_bytes())
            .with_property(&["connection", "mtls"], &[1])
    }

    #[test]
    fn the_serving_configuration_is_a_gauge() {
        let host = FakeHost::new();
        let json = r#"{"onMissing":"anonymous"}"#;
        stage(&host, json);
        let fingerprint = IdentityConfig::from_json(json.as_bytes(), |_| None).unwrap().fingerprint();
        assert_eq!(host.metric("egress_identity_config_fingerprint"), i64::try_from(fingerprint.gauge()).ok());
    }

    #[test]
    fn an_honest_anonymous_request_costs_one_map_read_and_two_absent_probes() {
        let host = request(&[("user-agent", "curl")]);
        let identity = stage(&host, r#"{"onMissing": "anonymous"}"#);
        host.clear_calls();
        let mut req = Request::default();
        assert_eq!(identity.on_request_headers(&host, &mut req), Ok(Step::Continue));
        assert_eq!(
            host.calls(),
            [
                "map(request_headers)",
                "property(connection.peer_certificate)",
                "property(connection.uri_san_peer_certificate)",
                "set_property(egress.identity)",
                "increment_metric(egress_identity_anonymous)"
            ]
        );
        assert_eq!(req.caller, Some(None), "the later stages know: no caller, nothing to read");
    }

    #[test]
    fn every_spelling_of_our_headers_is_removed_and_the_callers_set() {
        let host = mtls(
            request(&[
                ("x_workload_identity", "forged"),
                ("X-Workload_Namespace", "forged"),
                ("x.forwarded.client.cert", "forged"),
                ("x-workload-assertion", "forged"),
            ]),
            SLEEP,
        );
        let identity = stage(&host, r#"{"signing": {"keyId": "k1", "key": "0123456789abcdef0123456789abcdef"}}"#);
        let mut req = Request::default();
        assert_eq!(identity.on_request_headers(&host, &mut req), Ok(Step::Continue));
        for forged in ["x_workload_identity", "x-workload_namespace", "x.forwarded.client.cert"] {
            assert!(host.request_header(forged).is_empty(), "{forged}");
        }
        assert_eq!(host.request_header("x-workload-identity"), [SLEEP]);
        assert_eq!(host.request_header("x-workload-namespace"), ["app"]);
        assert_eq!(host.request_header("x-workload-assertion").len(), 1);
        assert_ne!(host.request_header("x-workload-assertion"), ["forged"]);
        assert_eq!(host.metric("egress_identity_spoofed_headers_removed"), Some(1));
        assert_eq!(req.caller.unwrap().unwrap().to_string(), SLEEP);
        // The context's header map follows the changes (the audit stage reads it).
        assert_eq!(req.facts.header(&host, "x-workload-identity").unwrap().as_deref(), Some(SLEEP));
    }

    #[test]
    fn tunnels_are_refused_unless_allowed_and_the_refusal_is_the_decision() {
        let connect = || FakeHost::new().with_request(&[(":authority", "httpbin.org:443"), (":method", "CONNECT")]);
        let host = connect();
        let identity = stage(&host, r#"{"onMissing": "anonymous"}"#);
        let mut req = Request::default();
        assert_eq!(identity.on_request_headers(&host, &mut req), Ok(Step::Stop));
        assert_eq!(host.reply().unwrap().1.as_deref(), Some("tunnel_not_allowed"));
        assert_eq!(req.decision.unwrap().reason, "tunnel_not_allowed");
        assert!(host.published(state::DECISION).unwrap().contains("tunnel_not_allowed"));
        assert_eq!(host.metric("egress_identity_tunnels_denied"), Some(1));

        let host = connect();
        let allowing = stage(&host, r#"{"onMissing": "anonymous", "tunnels": "allow"}"#);
        assert_eq!(allowing.on_request_headers(&host, &mut Request::default()), Ok(Step::Continue));

        let tls = FakeHost::new();
        assert_eq!(stage(&tls, "{}").on_new_connection(&tls, &mut Connection::default()), Ok(Step::Stop));
        assert!(tls.state().closed);
        let tls = FakeHost::new();
        let allowing = stage(&tls, r#"{"tunnels": "allow"}"#);
        tls.clear_calls();
        assert_eq!(allowing.on_new_connection(&tls, &mut Connection::default()), Ok(Step::Continue));
        assert!(tls.calls().is_empty(), "a passthrough connection costs nothing when tunnels are allowed");
    }

    #[test]
    fn trailers_lose_every_spelling_of_our_headers() {
        let host = request(&[]).with_request_trailers(&[("x_workload_identity", "forged"), ("x-trace", "kept")]);
        let identity = stage(&host, "{}");
        assert_eq!(identity.on_request_trailers(&host, &mut Request::default()), Ok(Step::Continue));
        assert_eq!(host.request_trailer_names(), ["x-trace"]);
    }

    #[test]
    fn an_unreadable_peer_certificate_fails_closed() {
        let host = request(&[]);
        let identity = stage(&host, r#"{"onMissing": "anonymous"}"#);
        let pem = "-----BEGIN CERTIFICATE-----\nnot read here\n-----END CERTIFICATE-----\n";
        host.set(&["connection", "peer_certificate"], pem.as_bytes());
        assert_eq!(identity.on_request_headers(&host, &mut Request::default()), Ok(Step::Stop));
        assert_eq!(host.reply().unwrap().1.as_deref(), Some("unreadable_peer_certificate"), "fails closed");
    }
}
