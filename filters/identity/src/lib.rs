//! The workload identity filter: glue between Envoy and `egress_core::workload`.
//!
//! One module, two plugins, chosen by root id (Istio's `WasmPlugin.pluginName`):
//! - `egress-identity` — HTTP filter, first in the chain. For every request: remove every client-supplied copy of
//!   the identity headers and of XFCC, in any spelling a server reads as the same name (`x_workload_identity` is
//!   `HTTP_X_WORKLOAD_IDENTITY` to CGI), from the headers and from the trailers; refuse tunnels (CONNECT) unless
//!   `tunnels: allow`; establish the caller from what Envoy verified (the mTLS peer certificate, which must name
//!   exactly one SPIFFE ID, or a trusted hop's XFCC); then either refuse (403) or set the identity headers toward the
//!   upstream, optionally with XFCC and a signed assertion. The allow-list then judges the caller published here.
//! - `egress-identity-tls` — network filter of TLS-passthrough listeners: closes every connection unless
//!   `tunnels: allow`, since the gateway can tag nothing inside one.
//!
//! A refusal is published as the request's `egress.decision` (action `deny`, the refusal's reason), so access logs
//! and the audit event show why.

use egress_core::assertion::Claims;
use egress_core::state::{self, DecisionRecord, IdentityRecord};
use egress_core::workload::{Caller, DenyReason, IdentityConfig, Via, XFCC_HEADER};
use egress_core::xfcc;
use egress_proxy::{self as proxy, Counter, RequestLine};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
use proxy_wasm::types::{Action as Next, ContextType, LogLevel, MapType, Status};
use std::rc::Rc;

/// Root id of the HTTP filter.
pub const ROOT_ID: &str = "egress-identity";
/// Root id of the TLS-passthrough network filter.
pub const TLS_ROOT_ID: &str = "egress-identity-tls";
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
    tunnels_denied: Counter,
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
            tunnels_denied: counter("tunnels_denied")?,
        })
    }
}

type Filter = (Rc<IdentityConfig>, Metrics);

#[derive(Default)]
struct IdentityRoot {
    filter: Option<Filter>,
    kind: Option<ContextType>,
}

impl Context for IdentityRoot {}

impl RootContext for IdentityRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let root_id = proxy::root_id().unwrap_or_default();
        self.kind = match root_id.as_str() {
            ROOT_ID => Some(ContextType::HttpContext),
            TLS_ROOT_ID => Some(ContextType::StreamContext),
            other => {
                let why =
                    format!("root id {other:?}: use `{ROOT_ID}` (HTTP) or `{TLS_ROOT_ID}` (network, TLS passthrough)");
                proxy::log(LogLevel::Error, &format!("{FILTER}: refusing configuration: {why}"));
                return false;
            }
        };
        proxy::configure(
            FILTER,
            &mut self.filter,
            |json| IdentityConfig::from_json(json, |var| std::env::var(var).ok()).map_err(|errors| errors.to_string()),
            Metrics::define,
            |config| {
                let signing = config.signer.as_ref().map_or("off".to_string(), |s| format!("key id {}", s.key_id));
                format!("{root_id}: onMissing {:?}, tunnels {:?}, signing {signing}", config.on_missing, config.tunnels)
            },
        )
    }

    fn get_type(&self) -> Option<ContextType> {
        self.kind
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(IdentityHttp { filter: self.filter.clone() }))
    }

    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(IdentityTls { filter: self.filter.clone() }))
    }
}

struct IdentityHttp {
    filter: Option<Filter>,
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

    /// Trailers reach the upstream too (HTTP/2, chunked HTTP/1.1), and some servers merge them into the headers.
    /// Envoy calls this only for requests that have trailers.
    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Next {
        let Some((config, metrics)) = &self.filter else {
            return proxy::reply_internal_error(FILTER, "not configured");
        };
        let stripped = hostcalls::get_map_bytes(MapType::HttpRequestTrailers).and_then(|trailers| {
            proxy::remove_headers_where(MapType::HttpRequestTrailers, &trailers, |name| config.strips(name))
        });
        match stripped {
            Ok(0) => Next::Continue,
            Ok(_) => {
                metrics.spoofed.increment();
                Next::Continue
            }
            // The headers have gone upstream already: a trailer we cannot vet must not follow them.
            Err(status) => {
                proxy::log(LogLevel::Error, &format!("{FILTER}: cannot strip request trailers: {status:?}"));
                let _ = hostcalls::reset_http_request();
                Next::Pause
            }
        }
    }
}

fn handle(config: &IdentityConfig, metrics: &Metrics) -> Result<Next, Status> {
    // One read of the whole map: the request line, the incoming XFCC and every spelling of our headers. Removing
    // them comes first, whatever happens next.
    let headers = proxy::request_headers()?;
    let request = RequestLine::of(&headers);
    let mut spoofed = false;
    let mut incoming_xfcc: Option<String> = None;
    for (name, value) in &headers {
        if !config.strips(name) {
            continue;
        }
        if name == XFCC_HEADER {
            // Every copy, in order: a trusted hop's XFCC is judged as a whole (`IdentityConfig::resolve`).
            let value = String::from_utf8_lossy(value);
            match &mut incoming_xfcc {
                Some(joined) => {
                    joined.push(',');
                    joined.push_str(&value);
                }
                None => incoming_xfcc = Some(value.into_owned()),
            }
        } else {
            spoofed = true;
        }
    }
    proxy::remove_headers_where(MapType::HttpRequestHeaders, &headers, |name| config.strips(name))?;
    if spoofed {
        metrics.spoofed.increment();
    }

    let peer = proxy::verified_peer()?;
    let caller = config.resolve(&peer, incoming_xfcc.as_deref());
    let (id, source) = match &caller {
        Caller::Verified { id, via } => (Some(id.to_string()), via.as_str()),
        _ => (None, "none"),
    };
    proxy::publish_record(state::IDENTITY, &IdentityRecord { source, id: id.as_deref() })?;

    let refusal = caller.refusal(config.on_missing).or_else(|| {
        let tunnel = request.is_tunnel().then(|| config.tunnel_refusal()).flatten();
        tunnel.inspect(|_| metrics.tunnels_denied.increment())
    });
    if let Some(refusal) = refusal {
        metrics.denied.increment();
        publish_refusal(refusal)?;
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
        proxy::set_request_header(XFCC_HEADER, &xfcc::format_element(by.as_deref(), hash.as_deref(), &id))?;
    }
    if let Some(signer) = &config.signer {
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

/// A refusal as the request's decision, for access logs and the audit event.
fn publish_refusal(refusal: DenyReason) -> Result<(), Status> {
    let record =
        DecisionRecord { action: "deny", reason: refusal.code(), rule: None, destination: None, mode: "enforce" };
    proxy::publish_record(state::DECISION, &record)
}

struct IdentityTls {
    filter: Option<Filter>,
}

impl Context for IdentityTls {}

impl StreamContext for IdentityTls {
    fn on_new_connection(&mut self) -> Next {
        let Some((config, metrics)) = &self.filter else { return proxy::close_connection(FILTER, "not configured") };
        let Some(refusal) = config.tunnel_refusal() else { return Next::Continue };
        metrics.tunnels_denied.increment();
        metrics.denied.increment();
        if let Err(status) = publish_refusal(refusal) {
            return proxy::close_connection(FILTER, &format!("cannot publish the refusal: {status:?}"));
        }
        proxy::log(LogLevel::Info, &format!("{FILTER}: closing TLS-passthrough connection: {}", refusal.code()));
        let _ = hostcalls::close_downstream();
        Next::Pause
    }
}
