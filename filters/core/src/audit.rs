//! The audit event: one per HTTP request (in `on_log`) and one per TLS-passthrough or CONNECT connection, built
//! from plain values the audit filter gathers from Envoy and from what the other filters published.
//! Versioned (`schema: "egress-audit/v1"`); `schemas/egress-audit-v1.schema.json` is generated from these types
//! (`egressctl audit schema`) and a test fails when they drift apart.

use crate::config_error::{ConfigError, ConfigErrors};
use crate::fingerprint::{Fingerprint, Fingerprinter};
use crate::json::from_slice;
use crate::json::Object;
pub use crate::state::RedirectHop;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const SCHEMA: &str = "egress-audit/v1";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// Always `egress-audit/v1` for this shape.
    pub schema: String,
    /// When the request or connection ended: RFC 3339, UTC, milliseconds.
    pub time: String,
    /// The request's `x-request-id` when Envoy has one, else 32 random hex digits.
    pub id: String,
    pub kind: EventKind,
    /// A tunnel: a CONNECT request, or a TLS-passthrough connection. The gateway saw no HTTP inside it, so it set
    /// and stripped no identity headers there: what the upstream reads inside is whatever the caller wrote. Only the
    /// signed assertion, which no caller can forge, proves an identity to such an upstream.
    #[serde(default)]
    pub tunnel: bool,
    pub gateway: Gateway,
    pub source: Source,
    pub destination: Destination,
    /// Absent for TLS passthrough (the gateway sees no HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Request>,
    /// Absent when the allow-list did not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    #[serde(default)]
    pub redirects: Vec<RedirectHop>,
    pub response: Response,
    pub duration_ms: Option<u64>,
    pub upstream: Upstream,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// One HTTP request (CONNECT included).
    Http,
    /// One TLS-passthrough connection.
    Tls,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Gateway {
    /// Envoy's node id (the gateway pod, in Istio).
    pub node: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// The caller's SPIFFE ID.
    pub principal: Option<String>,
    pub namespace: Option<String>,
    pub service_account: Option<String>,
    /// True when the identity comes from a certificate Envoy verified (or a trusted hop's XFCC).
    pub verified: bool,
    /// `mtls` | `trusted_hop` | `none`, when the identity filter ran.
    pub identity_source: Option<String>,
    /// The downstream peer address.
    pub address: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    /// Normalised host (IPv6 in brackets); the raw authority when it could not be normalised.
    pub host: Option<String>,
    pub port: Option<u16>,
    pub scheme: Option<String>,
    pub sni: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub method: String,
    /// The path without its query.
    pub path: String,
    /// Only with `includeQuery: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// `HTTP/1.1`, `HTTP/2` …
    pub protocol: Option<String>,
    /// Only the headers the configuration names.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// `allow` | `deny` | `report-deny`.
    pub action: String,
    pub reason: String,
    pub rule: Option<String>,
    /// `enforce` | `report`.
    pub mode: Option<String>,
    /// The fingerprint of the policy that decided (`egressctl validate` prints it for a policy file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// What the reason concerns, when there is more to say: for `resolved_address_not_allowed`, the range the
    /// resolved address fell in, e.g. `10.0.0.0/8 (private)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Response {
    pub code: Option<u16>,
    /// Envoy's response flags as the bitmask Wasm sees (`response.flags`; 0 = none), e.g. upstream failure bits.
    pub flags: u64,
    /// Envoy's response code details, e.g. `via_upstream`, or a filter's local reply details.
    pub details: Option<String>,
    /// Bytes sent to the client (headers and body). 0 for TLS passthrough: Envoy does not expose connection byte
    /// counts to Wasm.
    pub bytes_sent: u64,
    /// Bytes received from the client (headers and body); 0 for TLS passthrough, as above.
    pub bytes_received: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Upstream {
    pub cluster: Option<String>,
    pub address: Option<String>,
}

/// Everything the audit filter read from Envoy and from filter state, as plain values.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub kind: Option<EventKind>,
    pub time_unix_ms: u64,
    pub request_id: Option<String>,
    /// Fallback id (from the host's randomness) when there is no `x-request-id`.
    pub random_id: [u8; 16],
    pub node: Option<String>,
    /// `egress.identity` (id and source) when the identity filter ran.
    pub identity: Option<String>,
    pub identity_source: Option<String>,
    /// The SPIFFE ID of the verified peer certificate (when it names exactly one), used when the identity filter did
    /// not run.
    pub peer_uri_san: Option<String>,
    pub source_address: Option<String>,
    /// What the allow-list published.
    pub decision: Option<String>,
    pub reason: Option<String>,
    pub rule: Option<String>,
    pub mode: Option<String>,
    /// See [`Decision::policy`].
    pub policy: Option<String>,
    /// See [`Decision::detail`].
    pub decision_detail: Option<String>,
    pub destination: Option<String>,
    pub authority: Option<String>,
    pub scheme: Option<String>,
    pub method: Option<String>,
    /// `:path`, query included: redaction happens here, in [`AuditConfig::event`].
    pub path: Option<String>,
    pub protocol: Option<String>,
    pub sni: Option<String>,
    /// All request headers, lowercase names; only the configured ones are kept.
    pub headers: Vec<(String, String)>,
    /// `egress.redirects` as published (JSON).
    pub redirects: Option<String>,
    pub response_code: Option<u16>,
    pub response_flags: u64,
    pub response_details: Option<String>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub duration_ms: Option<u64>,
    pub upstream_cluster: Option<String>,
    pub upstream_address: Option<String>,
}

/// The audit filter's configuration, as written.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditDocument {
    /// Keep the query string of the path (off: queries often carry tokens).
    #[serde(default)]
    pub include_query: bool,
    /// Request headers to record, by name; no other header ever appears.
    #[serde(default)]
    pub headers: Vec<String>,
    /// One Envoy log line per event: `egress-audit: {json}`.
    #[serde(default = "default_true")]
    pub log: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector: Option<CollectorDocument>,
}

fn default_true() -> bool {
    true
}

/// The collector sink: batched POSTs to an Envoy cluster, OTLP/HTTP logs by default.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CollectorDocument {
    /// The Envoy cluster to POST to (Istio: `outbound|<port>||<host>`).
    pub cluster: String,
    /// `:authority` of the POST.
    pub authority: String,
    /// Default `/v1/logs` (OTLP); required with `ndjson`, which has no standard path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default)]
    pub format: Format,
    #[serde(default)]
    pub compression: Compression,
    /// The resource's `service.name` (OTLP).
    #[serde(default = "CollectorDocument::default_service_name")]
    pub service_name: String,
    /// A batch is written and handed to Envoy on the worker, between requests: its size bounds how long a request
    /// can wait behind it, so batches are kept small (at most 1 MiB) and leave often.
    #[serde(default = "CollectorDocument::default_batch_events")]
    pub batch_max_events: u32,
    #[serde(default = "CollectorDocument::default_batch_bytes")]
    pub batch_max_bytes: u32,
    #[serde(default = "CollectorDocument::default_flush_ms")]
    pub flush_interval_ms: u32,
    /// Events held per worker while the collector is slow or down; beyond it the oldest are dropped (counted).
    #[serde(default = "CollectorDocument::default_queue_events")]
    pub queue_max_events: u32,
    #[serde(default = "CollectorDocument::default_timeout_ms")]
    pub timeout_ms: u32,
}

/// The wire format of the collector sink.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// OTLP/HTTP logs, binary protobuf: what every OTLP receiver accepts.
    #[default]
    OtlpProtobuf,
    /// OTLP/HTTP logs, JSON.
    OtlpJson,
    /// One event per line, for plain HTTP log inputs.
    Ndjson,
}

impl Format {
    pub fn encoding(self) -> Encoding {
        match self {
            Format::OtlpProtobuf => Encoding::Protobuf,
            Format::OtlpJson => Encoding::Json,
            Format::Ndjson => Encoding::Ndjson,
        }
    }
}

/// The collector sink's `content-encoding`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    /// gzip at the fastest level: the batch is compressed on the worker, between requests.
    Gzip,
}

impl CollectorDocument {
    fn default_service_name() -> String {
        "egress-gateway".into()
    }
    fn default_batch_events() -> u32 {
        100
    }
    fn default_batch_bytes() -> u32 {
        64 * 1024
    }
    fn default_flush_ms() -> u32 {
        1000
    }
    fn default_queue_events() -> u32 {
        10_000
    }
    fn default_timeout_ms() -> u32 {
        5000
    }
}

/// How a batch is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// OTLP/HTTP, binary protobuf (what every OTLP receiver must accept).
    Protobuf,
    /// OTLP/HTTP, the protobuf JSON mapping.
    Json,
    /// One event per line, for plain HTTP log inputs.
    Ndjson,
}

impl Encoding {
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
            Encoding::Ndjson => "application/x-ndjson",
        }
    }
}

/// The collector sink, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collector {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub encoding: Encoding,
    pub gzip: bool,
    pub service_name: String,
    pub batch_max_events: u32,
    pub batch_max_bytes: u32,
    pub flush_interval_ms: u32,
    pub queue_max_events: u32,
    pub timeout_ms: u32,
}

/// The compiled configuration.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    pub include_query: bool,
    pub headers: Vec<String>,
    pub log: bool,
    pub collector: Option<Collector>,
    /// Of the configuration as compiled ([`crate::fingerprint`]).
    fingerprint: Fingerprint,
}

/// The compiled values (header names lowercased, defaults filled in), in field order.
fn fingerprint(include_query: bool, headers: &[String], log: bool, collector: Option<&Collector>) -> Fingerprint {
    let mut fingerprint = Fingerprinter::new("audit");
    fingerprint.value("includeQuery", include_query);
    fingerprint.list("headers", Some(headers));
    fingerprint.value("log", log);
    match collector {
        None => fingerprint.text("collector", "-"),
        Some(Collector {
            cluster,
            authority,
            path,
            encoding,
            gzip,
            service_name,
            batch_max_events,
            batch_max_bytes,
            flush_interval_ms,
            queue_max_events,
            timeout_ms,
        }) => {
            fingerprint.text("collector.cluster", cluster);
            fingerprint.text("collector.authority", authority);
            fingerprint.text("collector.path", path);
            fingerprint.value("collector.format", format_args!("{encoding:?}"));
            fingerprint.value("collector.gzip", gzip);
            fingerprint.text("collector.serviceName", service_name);
            fingerprint.value("collector.batchMaxEvents", batch_max_events);
            fingerprint.value("collector.batchMaxBytes", batch_max_bytes);
            fingerprint.value("collector.flushIntervalMs", flush_interval_ms);
            fingerprint.value("collector.queueMaxEvents", queue_max_events);
            fingerprint.value("collector.timeoutMs", timeout_ms);
        }
    }
    fingerprint.finish()
}

impl AuditConfig {
    // `inline`: compiled, with the deserializer it instantiates, into the calling filter crate, which `make build`
    // optimises for size (this crate's hot path stays at opt-level "s"); parsing a configuration is cold.
    #[inline]
    pub fn from_json(json: &[u8]) -> Result<AuditConfig, ConfigErrors> {
        AuditConfig::compile(from_slice(json)?)
    }

    /// Validates a document, collecting every problem with its path.
    #[inline]
    pub fn compile(doc: AuditDocument) -> Result<AuditConfig, ConfigErrors> {
        let mut errors = Vec::new();
        let mut error = |path: String, message: String| errors.push(ConfigError::new(path, message));
        let mut headers = Vec::with_capacity(doc.headers.len());
        for (i, name) in doc.headers.iter().enumerate() {
            let lower = name.to_ascii_lowercase();
            if lower.is_empty() || !lower.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                error(format!("headers[{i}]"), format!("`{name}` is not a header name"));
            }
            headers.push(lower);
        }
        let mut collector = None;
        if let Some(c) = doc.collector {
            if c.cluster.is_empty() {
                error("collector.cluster".into(), "empty".into());
            }
            if c.authority.is_empty() || c.authority.bytes().any(|b| b <= b' ' || b == 0x7f) {
                error("collector.authority".into(), format!("`{}` is not an authority", c.authority));
            }
            let path = match (&c.path, c.format) {
                (Some(path), _) => path.clone(),
                (None, Format::Ndjson) => {
                    error("collector.path".into(), "required with format `ndjson` (it has no standard path)".into());
                    String::new()
                }
                (None, _) => "/v1/logs".into(),
            };
            if c.path.is_some() && (!path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f)) {
                error("collector.path".into(), format!("`{path}`: a path starts with `/` and has no spaces"));
            }
            if c.service_name.is_empty() {
                error("collector.serviceName".into(), "empty".into());
            }
            let ranges = [
                ("batchMaxEvents", c.batch_max_events, 1, 10_000),
                ("batchMaxBytes", c.batch_max_bytes, 1024, 1024 * 1024),
                ("flushIntervalMs", c.flush_interval_ms, 10, 60_000),
                ("queueMaxEvents", c.queue_max_events, 1, 1_000_000),
                ("timeoutMs", c.timeout_ms, 10, 60_000),
            ];
            for (field, value, min, max) in ranges {
                if !(min..=max).contains(&value) {
                    error(format!("collector.{field}"), format!("{value} is outside {min}-{max}"));
                }
            }
            if c.queue_max_events < c.batch_max_events {
                error("collector.queueMaxEvents".into(), "smaller than batchMaxEvents".into());
            }
            collector = Some(Collector {
                encoding: c.format.encoding(),
                gzip: c.compression == Compression::Gzip,
                path,
                cluster: c.cluster,
                authority: c.authority,
                service_name: c.service_name,
                batch_max_events: c.batch_max_events,
                batch_max_bytes: c.batch_max_bytes,
                flush_interval_ms: c.flush_interval_ms,
                queue_max_events: c.queue_max_events,
                timeout_ms: c.timeout_ms,
            });
        }
        if !doc.log && collector.is_none() {
            error("(document)".into(), "no sink: enable `log` or configure a `collector`".into());
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let fingerprint = fingerprint(doc.include_query, &headers, doc.log, collector.as_ref());
        Ok(AuditConfig { include_query: doc.include_query, headers, log: doc.log, collector, fingerprint })
    }

    /// Which audit configuration this is ([`crate::fingerprint`]).
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// `log true, collector Protobuf to outbound|4318||collector, fingerprint 9f2c04e1b7a3d580`: what a module logs
    /// when configured.
    pub fn summary(&self) -> String {
        let collector =
            self.collector.as_ref().map_or("none".to_string(), |c| format!("{:?} to {}", c.encoding, c.cluster));
        format!("log {}, collector {collector}, fingerprint {}", self.log, self.fingerprint)
    }

    /// Builds the event, applying redaction: the query only when configured, only the named headers. The observed
    /// values move into the event (it runs once per request).
    pub fn event(&self, observed: Observed) -> AuditEvent {
        let (host, port) = destination(&observed);
        let Observed {
            kind,
            time_unix_ms,
            request_id,
            random_id,
            node,
            identity,
            identity_source,
            peer_uri_san,
            source_address,
            decision,
            reason,
            rule,
            mode,
            policy,
            decision_detail,
            destination: _,
            authority: _,
            scheme,
            method,
            path,
            protocol,
            sni,
            headers,
            redirects,
            response_code,
            response_flags,
            response_details,
            bytes_sent,
            bytes_received,
            duration_ms,
            upstream_cluster,
            upstream_address,
        } = observed;
        let (principal, verified) = match &identity_source {
            Some(source) => (identity.filter(|id| !id.is_empty()), source != "none"),
            None => {
                let peer = peer_uri_san.filter(|uri| crate::SpiffeId::parse(uri).is_ok());
                let verified = peer.is_some();
                (peer, verified)
            }
        };
        let parsed = principal.as_deref().and_then(|p| crate::SpiffeId::parse(p).ok());
        let request = method.map(|method| {
            let full = path.unwrap_or_default();
            let (path, query) = match full.split_once('?') {
                Some((path, query)) => (path.to_string(), Some(query.to_string())),
                None => (full, None),
            };
            Request {
                method,
                path,
                query: query.filter(|_| self.include_query),
                protocol,
                headers: headers.into_iter().filter(|(name, _)| self.headers.contains(name)).collect(),
            }
        });
        let decision = decision.map(|action| Decision {
            action,
            reason: reason.unwrap_or_default(),
            rule: rule.filter(|r| !r.is_empty()),
            mode,
            policy,
            detail: decision_detail,
        });
        let redirects = redirects.as_deref().and_then(RedirectHop::list_from_json).unwrap_or_default();
        let kind = kind.unwrap_or(EventKind::Http);
        let tunnel = kind == EventKind::Tls || request.as_ref().is_some_and(|r| r.method == "CONNECT");
        AuditEvent {
            schema: SCHEMA.to_string(),
            time: rfc3339_millis(time_unix_ms),
            id: request_id.filter(|id| !id.is_empty()).unwrap_or_else(|| hex(&random_id)),
            kind,
            tunnel,
            gateway: Gateway { node },
            source: Source {
                principal: parsed.as_ref().map(ToString::to_string),
                namespace: parsed.as_ref().map(|id| id.namespace.clone()),
                service_account: parsed.as_ref().map(|id| id.service_account.clone()),
                verified: verified && parsed.is_some(),
                identity_source,
                address: source_address,
            },
            destination: Destination { host, port, scheme, sni: sni.filter(|s| !s.is_empty()) },
            request,
            decision,
            redirects,
            response: Response {
                code: response_code.filter(|&c| c != 0),
                flags: response_flags,
                details: response_details.filter(|d| !d.is_empty()),
                bytes_sent,
                bytes_received,
            },
            duration_ms,
            upstream: Upstream { cluster: upstream_cluster, address: upstream_address },
        }
    }
}

/// Host and port: as the allow-list normalised them, else from the authority or SNI (normalised when possible).
fn destination(observed: &Observed) -> (Option<String>, Option<u16>) {
    let published = observed.destination.as_deref().filter(|d| !d.is_empty());
    let split = |hostport: &str| match hostport.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') || host.starts_with('[') => {
            (Some(host.to_string()), port.parse().ok())
        }
        _ => (Some(hostport.to_string()), None),
    };
    if let Some(hostport) = published {
        return split(hostport);
    }
    let raw = observed.authority.as_deref().or(observed.sni.as_deref());
    match raw.map(crate::Authority::parse) {
        Some(Ok(authority)) => (Some(authority.host.to_string()), authority.port),
        Some(Err(_)) => (raw.map(str::to_string), None),
        None => (None, None),
    }
}

impl crate::state::ToJson for AuditEvent {
    /// The event as `serde_json` writes its `Serialize` (a test holds them together), without linking a serializer
    /// into the modules: one pass into one string.
    fn to_json(&self) -> String {
        let AuditEvent {
            schema,
            time,
            id,
            kind,
            tunnel,
            gateway,
            source,
            destination,
            request,
            decision,
            redirects,
            response,
            duration_ms,
            upstream,
        } = self;
        let kind = match kind {
            EventKind::Http => "http",
            EventKind::Tls => "tls",
        };
        let mut event = Object::with_capacity(1024)
            .str("schema", schema)
            .str("time", time)
            .str("id", id)
            .str("kind", kind)
            .bool("tunnel", *tunnel)
            .object("gateway", |o| o.opt_str("node", gateway.node.as_deref()))
            .object("source", |o| {
                o.opt_str("principal", source.principal.as_deref())
                    .opt_str("namespace", source.namespace.as_deref())
                    .opt_str("serviceAccount", source.service_account.as_deref())
                    .bool("verified", source.verified)
                    .opt_str("identitySource", source.identity_source.as_deref())
                    .opt_str("address", source.address.as_deref())
            })
            .object("destination", |o| {
                o.opt_str("host", destination.host.as_deref())
                    .opt_uint("port", destination.port.map(u64::from))
                    .opt_str("scheme", destination.scheme.as_deref())
                    .opt_str("sni", destination.sni.as_deref())
            });
        if let Some(request) = request {
            event = event.object("request", |o| {
                let o = o.str("method", &request.method).str("path", &request.path);
                let o = o.str_if_some("query", request.query.as_deref());
                let o = o.opt_str("protocol", request.protocol.as_deref());
                if request.headers.is_empty() {
                    return o;
                }
                o.object("headers", |headers| request.headers.iter().fold(headers, |h, (k, v)| h.str(k, v)))
            });
        }
        if let Some(decision) = decision {
            event = event.object("decision", |o| {
                o.str("action", &decision.action)
                    .str("reason", &decision.reason)
                    .opt_str("rule", decision.rule.as_deref())
                    .opt_str("mode", decision.mode.as_deref())
                    .str_if_some("policy", decision.policy.as_deref())
                    .str_if_some("detail", decision.detail.as_deref())
            });
        }
        event
            .array("redirects", redirects, |out, hop| hop.write(out))
            .object("response", |o| {
                o.opt_uint("code", response.code.map(u64::from))
                    .uint("flags", response.flags)
                    .opt_str("details", response.details.as_deref())
                    .uint("bytesSent", response.bytes_sent)
                    .uint("bytesReceived", response.bytes_received)
            })
            .opt_uint("durationMs", *duration_ms)
            .object("upstream", |o| {
                o.opt_str("cluster", upstream.cluster.as_deref()).opt_str("address", upstream.address.as_deref())
            })
            .finish()
    }
}

impl RedirectHop {
    /// Appends the hop as `serde_json` writes it.
    fn write(&self, out: &mut String) {
        let hop = Object::with_capacity(0)
            .opt_uint("status", self.status.map(u64::from))
            .opt_str("location", self.location.as_deref())
            .str("action", &self.action)
            .str("reason", &self.reason)
            .bool("followed", self.followed);
        out.push_str(&hop.finish());
    }
}

/// `2026-11-21T12:00:00.123Z` from Unix milliseconds (proleptic Gregorian, UTC).
pub fn rfc3339_millis(unix_ms: u64) -> String {
    let (secs, millis) = (unix_ms / 1000, unix_ms % 1000);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (hour, minute, second) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Howard Hinnant's civil_from_days.
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn timestamps_are_rfc3339_utc_millis() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339_millis(1_795_261_742_007), "2026-11-21T11:49:02.007Z");
    }

    fn config(json: &str) -> AuditConfig {
        AuditConfig::from_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn the_fingerprint_is_of_the_compiled_values_and_follows_each_of_them() {
        let collector = r#""cluster":"otel","authority":"collector:4318""#;
        let base = config(&format!(r#"{{"headers":["User-Agent"],"collector":{{{collector}}}}}"#)).fingerprint();
        let same = [
            format!(r#"{{"collector":{{{collector},"path":"/v1/logs"}},"headers":["user-agent"],"log":true}}"#),
            format!(
                r#"{{"headers":["user-agent"],"collector":{{{collector},"format":"otlp-protobuf","batchMaxEvents":100}}}}"#
            ),
        ];
        for json in &same {
            assert_eq!(config(json).fingerprint(), base, "{json}");
        }
        let changed = [
            format!(r#"{{"headers":["user-agent"],"includeQuery":true,"collector":{{{collector}}}}}"#),
            format!(r#"{{"headers":["user-agent","x-b3"],"collector":{{{collector}}}}}"#),
            format!(r#"{{"headers":["user-agent"],"log":false,"collector":{{{collector}}}}}"#),
            r#"{"headers":["user-agent"]}"#.to_string(),
            format!(r#"{{"headers":["user-agent"],"collector":{{{collector},"format":"otlp-json"}}}}"#),
            format!(r#"{{"headers":["user-agent"],"collector":{{{collector},"compression":"gzip"}}}}"#),
            format!(r#"{{"headers":["user-agent"],"collector":{{{collector},"path":"/logs"}}}}"#),
            format!(r#"{{"headers":["user-agent"],"collector":{{{collector},"serviceName":"gw"}}}}"#),
            format!(r#"{{"headers":["user-agent"],"collector":{{{collector},"batchMaxEvents":10}}}}"#),
            format!(r#"{{"headers":["user-agent"],"collector":{{{collector},"batchMaxBytes":2048}}}}"#),
            format!(r#"{{"headers":["user-agent"],"collector":{{{collector},"flushIntervalMs":100}}}}"#),
            format!(r#"{{"headers":["user-agent"],"collector":{{{collector},"queueMaxEvents":500}}}}"#),
            format!(r#"{{"headers":["user-agent"],"collector":{{{collector},"timeoutMs":100}}}}"#),
            r#"{"headers":["user-agent"],"collector":{"cluster":"otel2","authority":"collector:4318"}}"#.to_string(),
            r#"{"headers":["user-agent"],"collector":{"cluster":"otel","authority":"other:4318"}}"#.to_string(),
        ];
        let mut seen = vec![base];
        for json in &changed {
            let fingerprint = config(json).fingerprint();
            assert!(!seen.contains(&fingerprint), "{json}");
            seen.push(fingerprint);
        }
    }

    fn observed() -> Observed {
        Observed {
            kind: Some(EventKind::Http),
            time_unix_ms: 1_795_261_742_007,
            request_id: Some("req-1".into()),
            identity: Some("spiffe://cluster.local/ns/app/sa/sleep".into()),
            identity_source: Some("mtls".into()),
            decision: Some("deny".into()),
            reason: Some("host_not_allowed".into()),
            rule: Some(String::new()),
            mode: Some("enforce".into()),
            destination: Some("example.com:443".into()),
            authority: Some("Example.com".into()),
            scheme: Some("https".into()),
            method: Some("GET".into()),
            path: Some("/a?token=secret".into()),
            headers: vec![("user-agent".into(), "curl".into()), ("authorization".into(), "Bearer secret".into())],
            redirects: Some(
                r#"[{"status":302,"location":"http://b.example/","action":"deny","reason":"host_not_allowed"}]"#.into(),
            ),
            response_code: Some(403),
            response_details: Some("egress_denied".into()),
            ..Observed::default()
        }
    }

    #[test]
    fn builds_the_event_and_redacts() {
        let event = config(r#"{"headers": ["User-Agent"]}"#).event(observed());
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["schema"], "egress-audit/v1");
        assert_eq!(json["time"], "2026-11-21T11:49:02.007Z");
        assert_eq!(json["id"], "req-1");
        assert_eq!(json["source"]["principal"], "spiffe://cluster.local/ns/app/sa/sleep");
        assert_eq!(
            (json["source"]["namespace"].as_str(), json["source"]["verified"].as_bool()),
            (Some("app"), Some(true))
        );
        assert_eq!(
            (json["destination"]["host"].as_str(), json["destination"]["port"].as_u64()),
            (Some("example.com"), Some(443))
        );
        assert_eq!(json["request"]["path"], "/a");
        assert!(json["request"].get("query").is_none(), "queries are redacted by default");
        assert_eq!(json["request"]["headers"], serde_json::json!({"user-agent": "curl"}));
        assert!(!json.to_string().contains("secret"), "{json}");
        assert_eq!(
            json["decision"],
            serde_json::json!({"action":"deny","reason":"host_not_allowed","rule":null,"mode":"enforce"})
        );
        assert_eq!(json["redirects"][0]["location"], "http://b.example/");
        assert_eq!((json["response"]["code"].as_u64(), json["response"]["flags"].as_u64()), (Some(403), Some(0)));
        let with_query = config(r#"{"includeQuery": true}"#).event(observed());
        assert_eq!(with_query.request.unwrap().query.as_deref(), Some("token=secret"));
    }

    /// The hand-written writer and chain reader say exactly what serde's derives say, for every shape of event.
    #[test]
    fn the_event_is_written_and_the_chain_read_as_serde_does() {
        use crate::state::ToJson;
        let full = config(r#"{"headers": ["user-agent", "authorization"], "includeQuery": true}"#).event(observed());
        let bare = config("{}").event(Observed { random_id: [7; 16], ..Observed::default() });
        let tls = config("{}").event(Observed {
            kind: Some(EventKind::Tls),
            sni: Some("a.example".into()),
            source_address: Some("10.0.0.1:4000".into()),
            ..Observed::default()
        });
        let mut quoted = full.clone();
        quoted.request.as_mut().unwrap().path = "/a\"b\\c\u{1}é".into();
        quoted.redirects.push(RedirectHop {
            status: None,
            location: None,
            action: "deny".into(),
            reason: "x".into(),
            followed: true,
        });
        for event in [full, bare, tls, quoted] {
            assert_eq!(event.to_json(), serde_json::to_string(&event).unwrap());
        }
        for chain in [
            "[]",
            r#"[{"status":302,"location":"http://b.example/","action":"deny","reason":"host_not_allowed"}]"#,
            r#"[{"status":null,"location":null,"action":"allow","reason":"allowed","followed":true},{"action":"bounce","reason":"r","extra":1}]"#,
            r#"[{"status":70000,"action":"a","reason":"r"}]"#,
            r#"[{"action":"a"}]"#,
            r#"{"action":"a","reason":"r"}"#,
            "[1]",
            "",
        ] {
            let serde = serde_json::from_str::<Vec<RedirectHop>>(chain).ok();
            assert_eq!(RedirectHop::list_from_json(chain), serde, "{chain}");
        }
    }

    #[test]
    fn tunnels_are_marked() {
        let audit = config("{}");
        assert!(!audit.event(observed()).tunnel);
        let connect = Observed { method: Some("CONNECT".into()), path: None, ..observed() };
        assert!(audit.event(connect).tunnel, "CONNECT");
        let passthrough = Observed { kind: Some(EventKind::Tls), method: None, path: None, ..observed() };
        assert!(audit.event(passthrough).tunnel, "TLS passthrough");
    }

    #[test]
    fn works_without_the_other_filters() {
        let bare = Observed {
            authority: Some("HTTPBIN.org:8080".into()),
            method: Some("GET".into()),
            path: Some("/".into()),
            peer_uri_san: Some("spiffe://td/ns/a/sa/b".into()),
            random_id: [0xab; 16],
            ..Observed::default()
        };
        let event = config("{}").event(bare);
        assert_eq!((event.destination.host.as_deref(), event.destination.port), (Some("httpbin.org"), Some(8080)));
        assert_eq!(event.id, "ab".repeat(16));
        assert_eq!(event.decision, None);
        assert_eq!((event.source.principal.as_deref(), event.source.verified), (Some("spiffe://td/ns/a/sa/b"), true));
        assert_eq!(event.source.identity_source, None);
    }

    /// One type error does not hide the others, in the collector's settings too.
    #[test]
    fn every_type_error_is_reported() {
        let json = r#"{"headers": "user-agent", "log": "yes", "includeQuery": 1,
                       "collector": {"cluster": 5, "authority": "a", "batchMaxEvents": "100", "format": "otlp"}}"#;
        let text = AuditConfig::from_json(json.as_bytes()).unwrap_err().to_string();
        for want in [
            r#"headers: invalid type: string "user-agent", expected a sequence"#,
            r#"log: invalid type: string "yes", expected a boolean"#,
            "includeQuery: invalid type: integer `1`, expected a boolean",
            "collector.cluster: invalid type: integer `5`, expected a string",
            r#"collector.batchMaxEvents: invalid type: string "100""#,
            "collector.format: unknown variant `otlp`",
        ] {
            assert!(text.contains(want), "{want} not in {text}");
        }
        assert!(!text.contains("missing field"), "{text}");
    }

    #[test]
    fn config_errors_name_the_field() {
        let errors = |json: &str| AuditConfig::from_json(json.as_bytes()).unwrap_err().to_string();
        assert!(errors(r#"{"headers": ["a b"]}"#).contains("headers[0]: `a b` is not a header name"));
        assert!(errors(r#"{"log": false}"#).contains("no sink"));
        let bad = r#"{"collector": {"cluster": "c", "authority": "a", "path": "x", "batchMaxEvents": 0}}"#;
        let text = errors(bad);
        assert!(
            text.contains("collector.path: `x`") && text.contains("collector.batchMaxEvents: 0 is outside"),
            "{text}"
        );
        assert!(errors(r#"{"collectr": {}}"#).contains("unknown field `collectr`"));
        let ndjson =
            errors(r#"{"collector": {"cluster": "c", "authority": "a", "format": "ndjson", "serviceName": ""}}"#);
        assert!(ndjson.contains("collector.path: required with format `ndjson`"), "{ndjson}");
        assert!(ndjson.contains("collector.serviceName: empty"), "{ndjson}");
        let format = errors(r#"{"collector": {"cluster": "c", "authority": "a", "format": "otlp"}}"#);
        assert!(format.contains("collector.format") && format.contains("otlp-protobuf"), "{format}");
        let compression = errors(r#"{"collector": {"cluster": "c", "authority": "a", "compression": "zstd"}}"#);
        assert!(compression.contains("collector.compression"), "{compression}");
    }

    #[test]
    fn the_collector_speaks_otlp_protobuf_unless_told_otherwise() {
        let collector = |json: &str| {
            let config = format!(r#"{{"collector": {{"cluster": "c", "authority": "a"{json}}}}}"#);
            AuditConfig::from_json(config.as_bytes()).unwrap().collector.unwrap()
        };
        let default = collector("");
        assert_eq!((default.encoding, default.path.as_str(), default.gzip), (Encoding::Protobuf, "/v1/logs", false));
        assert_eq!(default.service_name, "egress-gateway");
        let json = collector(r#", "format": "otlp-json", "compression": "gzip", "path": "/otlp/v1/logs""#);
        assert_eq!((json.encoding, json.path.as_str(), json.gzip), (Encoding::Json, "/otlp/v1/logs", true));
        let lines = collector(r#", "format": "ndjson", "path": "/v1/events""#);
        assert_eq!((lines.encoding, lines.path.as_str()), (Encoding::Ndjson, "/v1/events"));
    }
}
