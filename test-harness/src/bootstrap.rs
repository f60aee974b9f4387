//! Renders the Envoy bootstrap of a local egress gateway: the suite's Wasm plugins in front of demo upstreams.
//!
//! Listeners (all on loopback; port 0 means "any free port", read back from the admin):
//! - `egress_http` — plain HTTP forward proxy: origin-form, absolute-form (`curl -x`) and CONNECT;
//! - `egress_mtls` — the same behind TLS that requires a client certificate from the test CA (the caller's identity);
//! - `egress_tls` — TLS passthrough: vetted by SNI, then proxied as TCP.
//!
//! Every allowed destination routes to the echo upstream, so "external" hosts need no network.
//! [`crate::compose`] adapts the same bootstrap to containers (all interfaces, upstreams by DNS name).

use crate::istio::DeployedPlugin;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;

pub const HTTP_LISTENER: &str = "egress_http";
pub const MTLS_LISTENER: &str = "egress_mtls";
pub const TLS_LISTENER: &str = "egress_tls";
/// A collector cluster name for tests' audit configurations (the deployed one names an Istio cluster).
pub const AUDIT_COLLECTOR_CLUSTER: &str = "audit_collector";
/// The demo upstream clusters: every allowed plain-HTTP destination, and every TLS (passthrough or CONNECT to :443).
pub const ECHO_HTTP_CLUSTER: &str = "echo_http";
pub const ECHO_HTTPS_CLUSTER: &str = "echo_https";

/// Istio's `meshConfig.pathNormalization.normalization`, as istiod writes it into a gateway's HTTP connection
/// manager (`pilot/pkg/networking/core/listener_builder.go`): the path the filters judge and the upstream receives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PathNormalization {
    /// Paths as the client sent them (Envoy's own defaults).
    None,
    /// Istio's default: RFC 3986 normalization (`normalize_path`: dot segments removed, escapes of unreserved
    /// characters decoded, backslashes made slashes).
    #[default]
    Base,
    /// `Base` and adjacent slashes merged.
    MergeSlashes,
    /// `MergeSlashes` and `%2F`/`%5C` decoded to `/` and `\` first (`UNESCAPE_AND_FORWARD`).
    DecodeAndMergeSlashes,
}

impl PathNormalization {
    pub const ALL: [PathNormalization; 4] = [
        PathNormalization::None,
        PathNormalization::Base,
        PathNormalization::MergeSlashes,
        PathNormalization::DecodeAndMergeSlashes,
    ];

    /// `normalize_path`, `merge_slashes` and `path_with_escaped_slashes_action` of the connection manager.
    fn hcm_fields(self) -> (bool, bool, &'static str) {
        match self {
            PathNormalization::None => (false, false, "KEEP_UNCHANGED"),
            PathNormalization::Base => (true, false, "KEEP_UNCHANGED"),
            PathNormalization::MergeSlashes => (true, true, "KEEP_UNCHANGED"),
            PathNormalization::DecodeAndMergeSlashes => (true, true, "UNESCAPE_AND_FORWARD"),
        }
    }
}

/// Where a cluster's single endpoint is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// A fixed address (the harness's own upstreams, on loopback).
    Static(SocketAddr),
    /// A name Envoy resolves and re-resolves (a docker-compose service).
    Dns { host: String, port: u16 },
}

/// Server certificate and CA for the mTLS listener, as files.
#[derive(Clone, Debug)]
pub struct MtlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a local gateway is made of.
#[derive(Clone, Debug)]
pub struct Gateway {
    /// Address of the plain HTTP listener; the TLS and mTLS listeners use the same IP.
    pub listen: SocketAddr,
    /// Ports of the TLS-passthrough and mTLS listeners (0: any free port).
    pub tls_port: u16,
    pub mtls_port: u16,
    /// HTTP filters, in chain order.
    pub http_plugins: Vec<DeployedPlugin>,
    /// Network filters of the TLS-passthrough listener, in chain order.
    pub tls_plugins: Vec<DeployedPlugin>,
    pub mtls: Option<MtlsFiles>,
    /// HCM `forward_client_cert_details: FORWARD_ONLY` instead of Envoy's default SANITIZE, so the identity filter
    /// sees a trusted hop's XFCC (it strips every client copy itself). Istio: `gatewayTopology.forwardClientCertDetails`.
    pub forward_client_cert: bool,
    /// Follow redirects at the gateway (Envoy `internal_redirect_policy`) up to this many hops.
    pub follow_redirects: Option<u32>,
    /// What the HTTP connection manager does to paths before any filter sees them.
    pub path_normalization: PathNormalization,
    pub echo_http: SocketAddr,
    pub echo_https: SocketAddr,
    /// The audit collector: the cluster name the audit filter posts to, and where it points.
    pub collector: Option<(String, SocketAddr)>,
    /// Where Envoy writes its JSON access log.
    pub access_log: PathBuf,
}

impl Gateway {
    pub fn render(&self) -> Value {
        let mut listeners = vec![self.http_listener(HTTP_LISTENER, self.listen, None)];
        if let Some(mtls) = &self.mtls {
            let address = SocketAddr::new(self.listen.ip(), self.mtls_port);
            listeners.push(self.http_listener(MTLS_LISTENER, address, Some(downstream_mtls(mtls))));
        }
        listeners.push(self.tls_listener());
        json!({
            // In Istio the node id names the gateway pod; audit events carry it.
            "node": {"id": "egress-lab", "cluster": "egress-gateway"},
            "admin": {"address": socket(SocketAddr::new(self.listen.ip(), 0))},
            "static_resources": {
                "listeners": listeners,
                "clusters": self.clusters(),
            },
        })
    }

    fn clusters(&self) -> Vec<Value> {
        let mut echo_http = cluster(ECHO_HTTP_CLUSTER, &Upstream::Static(self.echo_http));
        // Request trailers reach the echo upstream over HTTP/1.1 too (see the listener's `enable_trailers`).
        echo_http["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http_protocol_options": {"enable_trailers": true}},
            },
        });
        let mut clusters = vec![echo_http, cluster(ECHO_HTTPS_CLUSTER, &Upstream::Static(self.echo_https))];
        clusters.extend(self.collector.iter().map(|(name, address)| cluster(name, &Upstream::Static(*address))));
        clusters
    }

    fn http_listener(&self, name: &str, address: SocketAddr, transport_socket: Option<Value>) -> Value {
        let mut filters: Vec<Value> = self.http_plugins.iter().map(wasm_filter).collect();
        filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }));
        let connect_route = |cluster: &str, authority_suffix: Option<&str>| {
            let mut matcher = json!({"connect_matcher": {}});
            if let Some(suffix) = authority_suffix {
                matcher["headers"] = json!([{"name": ":authority", "string_match": {"suffix": suffix}}]);
            }
            json!({"match": matcher, "route": {"cluster": cluster, "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]}})
        };
        let (normalize_path, merge_slashes, escaped_slashes) = self.path_normalization.hcm_fields();
        let hcm = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": name,
            "codec_type": "AUTO",
            "normalize_path": normalize_path,
            "merge_slashes": merge_slashes,
            "path_with_escaped_slashes_action": escaped_slashes,
            // HTTP/1.1 trailers are read and passed on (HTTP/2 ones always are), so the tests see what a filter lets
            // through in them.
            "http_protocol_options": {"enable_trailers": true},
            "upgrade_configs": [{"upgrade_type": "CONNECT"}],
            "http2_protocol_options": {"allow_connect": true},
            "forward_client_cert_details": if self.forward_client_cert { "FORWARD_ONLY" } else { "SANITIZE" },
            "access_log": [self.access_log(name)],
            "route_config": {
                "name": "egress",
                "virtual_hosts": [{
                    "name": "egress",
                    "domains": ["*"],
                    "routes": [
                        connect_route(ECHO_HTTPS_CLUSTER, Some(":443")),
                        connect_route(ECHO_HTTP_CLUSTER, None),
                        {"match": {"prefix": "/"}, "route": self.default_route()},
                    ],
                }],
            },
            "http_filters": filters,
        });
        let mut chain =
            json!({"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]});
        if let Some(transport_socket) = transport_socket {
            chain["transport_socket"] = transport_socket;
        }
        json!({"name": name, "address": socket(address), "filter_chains": [chain]})
    }

    /// Every allowed host goes to the echo; followed redirects come back through the whole filter chain.
    fn default_route(&self) -> Value {
        let mut route = json!({"cluster": ECHO_HTTP_CLUSTER, "timeout": "30s"});
        if let Some(hops) = self.follow_redirects {
            route["internal_redirect_policy"] = json!({
                "redirect_response_codes": egress_core::redirect::FOLLOWED_STATUSES,
                "max_internal_redirects": hops,
                // The redirects filter vets the scheme of every hop itself (Envoy would even follow ftp://).
                "allow_cross_scheme_redirect": true,
            });
        }
        route
    }

    fn tls_listener(&self) -> Value {
        let mut filters: Vec<Value> = self.tls_plugins.iter().map(wasm_filter).collect();
        filters.push(json!({
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": TLS_LISTENER,
                "cluster": ECHO_HTTPS_CLUSTER,
                "access_log": [self.access_log(TLS_LISTENER)],
            },
        }));
        json!({
            "name": TLS_LISTENER,
            "address": socket(SocketAddr::new(self.listen.ip(), self.tls_port)),
            "listener_filters": [{
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"},
            }],
            "filter_chains": [{"filters": filters}],
        })
    }

    /// One JSON line per request or connection, with what the filters published to filter state: the suite's one
    /// access-log definition (`egressctl::access_log`, also the rendered Istio providers' `logFormat.labels`), and
    /// the listener it came through.
    fn access_log(&self, listener: &str) -> Value {
        let mut format = serde_json::Map::new();
        format.insert("listener".into(), Value::from(listener));
        for (field, operator) in egressctl::access_log::fields() {
            format.insert(field.into(), Value::from(operator));
        }
        json!({
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": self.access_log,
                "log_format": {"json_format": format},
            },
        })
    }
}

/// A Wasm filter as istiod writes it for a WasmPlugin (`pilot/pkg/model/extensions.go`): no VM id, so plugins of
/// the same module and VM environment share one VM, as they do on an Istio gateway.
fn wasm_filter(plugin: &DeployedPlugin) -> Value {
    let (name, kind) =
        if plugin.network { ("envoy.filters.network.wasm", "network") } else { ("envoy.filters.http.wasm", "http") };
    let key_values: serde_json::Map<String, Value> =
        plugin.env.iter().map(|(key, value)| (key.clone(), Value::from(value.as_str()))).collect();
    json!({
        "name": name,
        "typed_config": {
            "@type": format!("type.googleapis.com/envoy.extensions.filters.{kind}.wasm.v3.Wasm"),
            "config": {
                "name": plugin.name,
                "root_id": plugin.root_id,
                "vm_config": {
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": plugin.module}},
                    "environment_variables": {"host_env_keys": plugin.host_env_keys, "key_values": key_values},
                },
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": plugin.config},
                "failure_policy": plugin.failure_policy,
            },
        },
    })
}

fn downstream_mtls(files: &MtlsFiles) -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": {
                "tls_certificates": [{"certificate_chain": {"filename": files.cert}, "private_key": {"filename": files.key}}],
                "validation_context": {"trusted_ca": {"filename": files.ca}},
            },
        },
    })
}

/// A cluster of one endpoint, `upstream`.
pub fn cluster(name: &str, upstream: &Upstream) -> Value {
    let (kind, address) = match upstream {
        Upstream::Static(address) => ("STATIC", socket(*address)),
        Upstream::Dns { host, port } => {
            ("STRICT_DNS", json!({"socket_address": {"address": host, "port_value": port}}))
        }
    };
    json!({
        "name": name,
        "type": kind,
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    })
}

pub fn socket(address: SocketAddr) -> Value {
    json!({"socket_address": {"address": address.ip().to_string(), "port_value": address.port()}})
}
