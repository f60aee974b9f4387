//! The workload identity filter: glue between Envoy and `egress_core::workload`.
//!
//! For every request: remove every client-supplied copy of the identity headers and of XFCC (any case, any count),
//! establish the caller from what Envoy verified (the mTLS peer certificate, or a trusted hop's XFCC), then either
//! refuse (403) or set the identity headers toward the upstream, optionally with XFCC and a signed assertion.
//! Root id: `egress-identity`. It runs before the allow-list, which then judges the caller this filter published.

use egress_core::assertion::Claims;
use egress_core::state::{self, IdentityRecord};
use egress_core::workload::{Caller, IdentityConfig, Peer, Via, XFCC_HEADER};
use egress_core::xfcc;
use egress_proxy::{self as proxy, Counter, RequestLine};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action as Next, ContextType, MapType, Status};
use std::rc::Rc;

pub const ROOT_ID: &str = "egress-identity";
const FILTER: &str = "egress-identity";

#[allow(unsafe_code)] // proxy_wasm::main! exports the module's `_initialize` entry point.
mod entry {
    proxy_wasm::main! {{
        proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
        proxy_wasm::set_root_context(|_| Box::<super::IdentityRoot>::default());
    }}
}

#[derive(Clone, Copy)]
struct Metrics {
    verified: Counter,
    via_trusted_hop: Counter,
    anonymous: Counter,
    denied: Counter,
    spoofed: Counter,
    signed: Counter,
}

impl Metrics {
    fn define() -> Result<Metrics, String> {
        let counter = |name: &str| Counter::define(&format!("egress_identity_{name}"));
        Ok(Metrics {
            verified: counter("verified")?,
            via_trusted_hop: counter("via_trusted_hop")?,
            anonymous: counter("anonymous")?,
            denied: counter("denied")?,
            spoofed: counter("spoofed_headers_removed")?,
            signed: counter("signed")?,
        })
    }
}

#[derive(Default)]
struct IdentityRoot {
    filter: Option<(Rc<IdentityConfig>, Metrics)>,
}

impl Context for IdentityRoot {}

impl RootContext for IdentityRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        proxy::configure(
            FILTER,
            &mut self.filter,
            |json| IdentityConfig::from_json(json, |var| std::env::var(var).ok()).map_err(|errors| errors.to_string()),
            Metrics::define,
            |config| {
                let signing = config.signer.as_ref().map_or("off".to_string(), |s| format!("key id {}", s.key_id));
                format!("onMissing {:?}, signing {signing}", config.on_missing)
            },
        )
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(IdentityHttp { filter: self.filter.clone() }))
    }
}

struct IdentityHttp {
    filter: Option<(Rc<IdentityConfig>, Metrics)>,
}

impl Context for IdentityHttp {}

impl HttpContext for IdentityHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Next {
        let Some((config, metrics)) = &self.filter else {
            return proxy::reply_internal_error(FILTER, "not configured");
        };
        match handle(config, metrics) {
            Ok(next) => next,
            Err(status) => proxy::reply_internal_error(FILTER, &format!("host call failed: {status:?}")),
        }
    }
}

fn handle(config: &IdentityConfig, metrics: &Metrics) -> Result<Next, Status> {
    // What the client sent of ours is removed, every copy. Probing name by name finds nothing on an honest request,
    // which costs no VM re-entry (reading the whole map would, on every request).
    let mut spoofed = false;
    let mut incoming_xfcc = None;
    for name in config.stripped_headers() {
        if hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)?.is_none() {
            continue;
        }
        if name == XFCC_HEADER {
            // Every copy: a trusted hop's XFCC is judged as a whole (`IdentityConfig::resolve`).
            let headers = hostcalls::get_map_bytes(MapType::HttpRequestHeaders)?;
            let values: Vec<_> = headers
                .iter()
                .filter(|(key, _)| key.eq_ignore_ascii_case(XFCC_HEADER))
                .map(|(_, value)| String::from_utf8_lossy(value))
                .collect();
            incoming_xfcc = Some(values.join(","));
        } else {
            spoofed = true;
        }
        proxy::remove_request_header(name)?;
    }
    if spoofed {
        metrics.spoofed.increment();
    }

    let uri_san = proxy::verified_peer_uri_san()?;
    let caller =
        config.resolve(Peer { mtls: uri_san.is_some(), uri_san: uri_san.as_deref() }, incoming_xfcc.as_deref());
    let (id, source) = match &caller {
        Caller::Verified { id, via } => (Some(id.to_string()), via.as_str()),
        _ => (None, "none"),
    };
    proxy::publish_record(state::IDENTITY, &IdentityRecord { source, id: id.as_deref() })?;

    if let Some(refusal) = caller.refusal(config.on_missing) {
        metrics.denied.increment();
        return Ok(proxy::reply(403, refusal.code(), &refusal.http_body()));
    }
    let (Caller::Verified { id: spiffe, via }, Some(id)) = (caller, id) else {
        metrics.anonymous.increment();
        return Ok(Next::Continue);
    };
    metrics.verified.increment();
    if via == Via::TrustedHop {
        metrics.via_trusted_hop.increment();
    }
    let names = &config.headers;
    proxy::set_request_header(&names.identity, &id)?;
    proxy::set_request_header(&names.trust_domain, &spiffe.trust_domain)?;
    proxy::set_request_header(&names.namespace, &spiffe.namespace)?;
    proxy::set_request_header(&names.service_account, &spiffe.service_account)?;
    if config.xfcc {
        let by = proxy::property_string(&["connection", "uri_san_local_certificate"])?;
        // The certificate hash describes the direct peer, so it is only true of a caller that is that peer.
        let hash = match via {
            Via::Mtls => proxy::property_string(&["connection", "sha256_peer_certificate_digest"])?,
            Via::TrustedHop => None,
        };
        proxy::set_request_header(
            egress_core::workload::XFCC_HEADER,
            &xfcc::format_element(by.as_deref(), hash.as_deref(), &id),
        )?;
    }
    if let Some(signer) = &config.signer {
        let request = RequestLine::read()?;
        let path = request.path.as_deref().unwrap_or_default();
        let claims = Claims { identity: &id, method: &request.method, authority: &request.authority, path };
        let issued_at = proxy::unix_now()?;
        let mut nonce = [0u8; 16];
        let signed = getrandom::fill(&mut nonce)
            .map_err(|e| format!("no randomness for the nonce: {e}"))
            .and_then(|()| signer.sign(&claims, issued_at, &nonce));
        match signed {
            Ok(assertion) => {
                proxy::set_request_header(&names.assertion, &assertion)?;
                metrics.signed.increment();
            }
            // An upstream that expects a signature must not get an unsigned request that looks vouched for.
            Err(why) => return Ok(proxy::reply_internal_error(FILTER, &why)),
        }
    }
    Ok(Next::Continue)
}
