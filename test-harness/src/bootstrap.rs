//! Renders the Envoy bootstrap of a local egress gateway: the suite's Wasm plugins in front of demo upstreams.
//!
//! Listeners (all on loopback; port 0 means "any free port", read back from the admin):
//! - `egress_http` — plain HTTP forward proxy: origin-form, absolute-form (`curl -x`) and CONNECT;
//! - `egress_mtls` — the same behind TLS that requires a client certificate from the test CA (the caller's identity);
//! - `egress_tls` — TLS passthrough: vetted by SNI, then proxied as TCP.
//!
//! Where an allowed request goes is the [`Routing`]:
//! - [`Routing::Resolved`], the lab's and the integration tests': like the production gateway, Envoy's dynamic
//!   forward proxy resolves the destination's name (the authority of a request, the target of a CONNECT, the SNI of
//!   a passthrough connection) and connects to the answer, on the authority's port (80 without one) or 443 for
//!   passthrough. The lab's DNS server ([`crate::dns`]) maps the "external" names to local upstream hosts;
//! - [`Routing::Fixed`]: every destination to the fixed clusters [`ECHO_HTTP_CLUSTER`] and [`ECHO_HTTPS_CLUSTER`]
//!   (the benchmark, which measures the filters and not DNS; [`crate::compose`], whose containers have one upstream).
//!
//! Resolved routing is one DNS cache ([`dns_cache`]) shared by the HTTP filter `dynamic_forward_proxy` (after the
//! Wasm filters, just before the router: [`Gateway::http_filter_tail`]), the network filter
//! `sni_dynamic_forward_proxy` (after the Wasm network filters, before tcp_proxy) and the two dynamic forward proxy
//! clusters, [`DFP_CLUSTER`] (HTTP and CONNECT) and [`DFP_TLS_CLUSTER`] (passthrough). Checks of the resolved address
//! slot in there: an RBAC filter at the end of the tail, the cache's `resolved_address_filter`, the clusters' pool
//! settings.

use crate::istio::DeployedPlugin;
use egress_core::cidr::Cidr;
use egress_core::resolved::{AddressPolicy, Callers};
use egress_core::Mode;
use serde_json::{json, Value};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub const HTTP_LISTENER: &str = "egress_http";
pub const MTLS_LISTENER: &str = "egress_mtls";
pub const TLS_LISTENER: &str = "egress_tls";
/// A collector cluster name for tests' audit configurations (the deployed one names an Istio cluster).
pub const AUDIT_COLLECTOR_CLUSTER: &str = "audit_collector";
/// The demo upstream clusters of [`Routing::Fixed`]: every allowed plain-HTTP destination, and every TLS
/// (passthrough or CONNECT to :443).
pub const ECHO_HTTP_CLUSTER: &str = "echo_http";
pub const ECHO_HTTPS_CLUSTER: &str = "echo_https";
/// The dynamic forward proxy clusters of [`Routing::Resolved`]: HTTP requests and CONNECT tunnels (the
/// `upstream.cluster` of their audit events and access-log lines), and TLS passthrough connections.
pub const DFP_CLUSTER: &str = "dfp";
pub const DFP_TLS_CLUSTER: &str = "dfp_tls";
/// The one DNS cache of [`Routing::Resolved`] (its stats are `dns_cache.dfp_cache.*`).
pub const DNS_CACHE: &str = "dfp_cache";
/// The upstream port of a TLS-passthrough connection under [`Routing::Resolved`].
pub const TLS_PASSTHROUGH_PORT: u16 = 443;

/// Where the gateway sends an allowed request or connection (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Routing {
    /// To [`Gateway::echo_http`] and [`Gateway::echo_https`], whatever the destination.
    Fixed,
    /// To what the destination's name resolves to.
    Resolved(Resolver),
}

/// How the gateway resolves destinations under [`Routing::Resolved`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolver {
    /// The one DNS server Envoy asks (c-ares, UDP then TCP for truncated answers; not the system resolver).
    pub server: SocketAddr,
    /// How often Envoy resolves a name in its cache again, whatever the TTL (a changed answer takes up to this long
    /// to be used, plus a lookup), and how long it waits before retrying a failed lookup.
    pub refresh: Duration,
    /// The source address of every upstream connection. Bound to 127.0.0.1, a connection to anything off loopback
    /// fails in the kernel (EINVAL) before a packet leaves the machine, whatever a DNS answer, an IP literal or a
    /// test asks for: the lab only ever reaches its own upstream hosts. `None` leaves the source to the kernel, as
    /// in production.
    pub source: Option<Ipv4Addr>,
    /// What the resolved address must satisfy before Envoy connects to it; `None`: nothing (the resolution tests,
    /// which look at routing alone).
    pub vetting: Option<AddressVetting>,
}

/// Resolved-address vetting (`egress_core::resolved`, rendered by `egressctl::resolved`): RBAC filters on the
/// address the dynamic forward proxy saved, after the resolving filter and right before the router (HTTP, CONNECT,
/// each followed redirect hop) or `tcp_proxy` (TLS passthrough).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressVetting {
    pub policy: AddressPolicy,
    pub mode: Mode,
    /// The lab's upstream hosts: loopback addresses standing in for the internet, reachable by everyone (loopback is
    /// a refused range otherwise).
    pub lab_upstreams: Vec<Cidr>,
    /// Envoy >= 1.39: drop what no caller may reach from every DNS answer (the cache's `resolved_address_filter`),
    /// which closes the fallback to an unchecked address of the answer, and open a passthrough connection's upstream
    /// only once the RBAC filter has judged it (`tcp_proxy` `upstream_connect_mode: ON_DOWNSTREAM_DATA`).
    pub newer_envoy: bool,
}

impl AddressVetting {
    /// Whether some range is open to some callers only: then a pooled upstream connection opened for one caller must
    /// never carry another's request (the pool is per name, not per verdict), so each downstream connection gets
    /// its own pool.
    fn caller_bound(&self) -> bool {
        self.policy.allowances.iter().any(|allowance| allowance.callers != Callers::Anyone)
    }
}

impl Resolver {
    /// The lab's resolver: `server`, names refreshed every second, upstream connections from 127.0.0.1, resolved
    /// addresses vetted as `vetting` says.
    pub fn lab(server: SocketAddr, vetting: Option<AddressVetting>) -> Resolver {
        Resolver { server, refresh: Duration::from_secs(1), source: Some(Ipv4Addr::LOCALHOST), vetting }
    }
}

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
    /// Address of the plain HTTP listener; the mTLS listener uses the same IP.
    pub listen: SocketAddr,
    /// Address of the TLS-passthrough listener (port 0: any free port).
    pub tls_listen: SocketAddr,
    /// Port of the mTLS listener (0: any free port).
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
    /// The upstreams of [`Routing::Fixed`] (unused by [`Routing::Resolved`]).
    pub echo_http: SocketAddr,
    pub echo_https: SocketAddr,
    /// The audit collector: the cluster name the audit filter posts to, and where it points.
    pub collector: Option<(String, SocketAddr)>,
    /// Where Envoy writes its JSON access log.
    pub access_log: PathBuf,
}

impl Gateway {
    /// The bootstrap with [`Routing::Fixed`].
    pub fn render(&self) -> Value {
        self.render_with(&Routing::Fixed)
    }

    /// The bootstrap with `routing`.
    pub fn render_with(&self, routing: &Routing) -> Value {
        self.render_with_wasm(routing, &wasm_filter)
    }

    /// The bootstrap with `routing`, each Wasm plugin rendered by `wasm` into the filter that stands in its
    /// listeners' chains: [`wasm_filter`] inline, or a reference to a discovered configuration
    /// ([`crate::ecds`]).
    pub fn render_with_wasm(&self, routing: &Routing, wasm: &dyn Fn(&DeployedPlugin) -> Value) -> Value {
        let mut listeners = vec![self.http_listener(HTTP_LISTENER, self.listen, None, routing, wasm)];
        if let Some(mtls) = &self.mtls {
            let address = SocketAddr::new(self.listen.ip(), self.mtls_port);
            listeners.push(self.http_listener(MTLS_LISTENER, address, Some(downstream_mtls(mtls)), routing, wasm));
        }
        listeners.push(self.tls_listener(routing, wasm));
        json!({
            // In Istio the node id names the gateway pod; audit events carry it.
            "node": {"id": "egress-lab", "cluster": "egress-gateway"},
            "admin": {"address": socket(SocketAddr::new(self.listen.ip(), 0))},
            "static_resources": {
                "listeners": listeners,
                "clusters": self.clusters(routing),
            },
        })
    }

    fn clusters(&self, routing: &Routing) -> Vec<Value> {
        let mut clusters = match routing {
            Routing::Fixed => {
                let mut echo_http = cluster(ECHO_HTTP_CLUSTER, &Upstream::Static(self.echo_http));
                echo_http["typed_extension_protocol_options"] = upstream_http_options(false);
                vec![echo_http, cluster(ECHO_HTTPS_CLUSTER, &Upstream::Static(self.echo_https))]
            }
            Routing::Resolved(resolver) => {
                let mut dfp = forward_proxy_cluster(DFP_CLUSTER, resolver);
                dfp["typed_extension_protocol_options"] = upstream_http_options(true);
                vec![dfp, forward_proxy_cluster(DFP_TLS_CLUSTER, resolver)]
            }
        };
        clusters.extend(self.collector.iter().map(|(name, address)| cluster(name, &Upstream::Static(*address))));
        clusters
    }

    /// The HTTP filters after the Wasm plugins, the router last: under [`Routing::Resolved`] the dynamic forward
    /// proxy filter first, which resolves the destination (pausing the request until the DNS cache has it) and
    /// answers 503 when it cannot. After the Wasm filters so that a refused destination is never looked up; right
    /// before the router so that a check of the resolved address (RBAC `upstream_ip_port` on its
    /// `save_upstream_address`) goes between the two, with no filter that pauses between check and connect.
    pub fn http_filter_tail(&self, routing: &Routing) -> Vec<Value> {
        let router = json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        });
        match routing {
            Routing::Fixed => vec![router],
            Routing::Resolved(resolver) => {
                let mut tail = vec![json!({
                    "name": "envoy.filters.http.dynamic_forward_proxy",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig",
                        "dns_cache_config": dns_cache(resolver),
                        "save_upstream_address": resolver.vetting.is_some(),
                    },
                })];
                if let Some(vetting) = &resolver.vetting {
                    tail.extend(egressctl::resolved::http_filters(
                        &vetting.policy,
                        vetting.mode,
                        &vetting.lab_upstreams,
                    ));
                }
                tail.push(router);
                tail
            }
        }
    }

    fn http_listener(
        &self,
        name: &str,
        address: SocketAddr,
        transport_socket: Option<Value>,
        routing: &Routing,
        wasm: &dyn Fn(&DeployedPlugin) -> Value,
    ) -> Value {
        let mut filters: Vec<Value> = self.http_plugins.iter().map(wasm).collect();
        filters.extend(self.http_filter_tail(routing));
        let connect_route = |cluster: &str, authority_suffix: Option<&str>| {
            let mut matcher = json!({"connect_matcher": {}});
            if let Some(suffix) = authority_suffix {
                matcher["headers"] = json!([{"name": ":authority", "string_match": {"suffix": suffix}}]);
            }
            json!({"match": matcher, "route": {"cluster": cluster, "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]}})
        };
        let mut routes = match routing {
            Routing::Fixed => {
                vec![connect_route(ECHO_HTTPS_CLUSTER, Some(":443")), connect_route(ECHO_HTTP_CLUSTER, None)]
            }
            // The DFP filter resolves a CONNECT's target (`host:port`) like any authority; the cluster connects to it.
            Routing::Resolved(_) => vec![connect_route(DFP_CLUSTER, None)],
        };
        routes.push(json!({"match": {"prefix": "/"}, "route": self.default_route(routing)}));
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
                    "routes": routes,
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

    /// Every allowed request goes to the echo, or where its authority resolves to; followed redirects come back
    /// through the whole filter chain (the DFP filter resolving each hop's authority again).
    fn default_route(&self, routing: &Routing) -> Value {
        let cluster = match routing {
            Routing::Fixed => ECHO_HTTP_CLUSTER,
            Routing::Resolved(_) => DFP_CLUSTER,
        };
        let mut route = json!({"cluster": cluster, "timeout": "30s"});
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

    fn tls_listener(&self, routing: &Routing, wasm: &dyn Fn(&DeployedPlugin) -> Value) -> Value {
        let mut filters: Vec<Value> = self.tls_plugins.iter().map(wasm).collect();
        let cluster = match routing {
            Routing::Fixed => ECHO_HTTPS_CLUSTER,
            Routing::Resolved(resolver) => {
                // After the Wasm network filters (a refused SNI is never looked up): resolves the SNI, and the
                // cluster connects to the answer on port 443.
                filters.push(json!({
                    "name": "envoy.filters.network.sni_dynamic_forward_proxy",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.sni_dynamic_forward_proxy.v3.FilterConfig",
                        "dns_cache_config": dns_cache(resolver),
                        "port_value": TLS_PASSTHROUGH_PORT,
                        "save_upstream_address": resolver.vetting.is_some(),
                    },
                }));
                if let Some(vetting) = &resolver.vetting {
                    filters.extend(egressctl::resolved::network_filters(
                        &vetting.policy,
                        vetting.mode,
                        &vetting.lab_upstreams,
                    ));
                }
                DFP_TLS_CLUSTER
            }
        };
        let mut tcp_proxy = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": TLS_LISTENER,
            "cluster": cluster,
            "access_log": [self.access_log(TLS_LISTENER)],
        });
        if let Routing::Resolved(Resolver { vetting: Some(AddressVetting { newer_envoy: true, .. }), .. }) = routing {
            // The network RBAC filter judges on the connection's first bytes; by default tcp_proxy has connected
            // upstream by then (sending nothing). This waits for those bytes, so a refused address is never dialled.
            tcp_proxy["upstream_connect_mode"] = json!("ON_DOWNSTREAM_DATA");
            // What it may read from the client before the upstream is up: a ClientHello (post-quantum key shares
            // included) and more, never a limit a handshake meets.
            tcp_proxy["max_early_data_bytes"] = json!(65536);
        }
        filters.push(json!({"name": "envoy.filters.network.tcp_proxy", "typed_config": tcp_proxy}));
        json!({
            "name": TLS_LISTENER,
            "address": socket(self.tls_listen),
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
pub fn wasm_filter(plugin: &DeployedPlugin) -> Value {
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

/// The DNS cache of [`Routing::Resolved`]. Every user of it (the HTTP and SNI filters, both clusters) carries this
/// same block: Envoy shares one cache by name and refuses two different configurations under one name.
/// - c-ares asks `resolver.server` only (`use_resolvers_as_fallback: false`: never the system's resolvers), and
///   names as given (`no_default_search_domain`: no search domain appended, so `evil` is not `evil.<host domain>`);
/// - IPv4 only, as the lab's upstream hosts are;
/// - every cached name is resolved again every `refresh` (`dns_min_refresh_rate` too: below it, Envoy uses 5 s),
///   and a failed lookup retried after as long;
/// - with [`AddressVetting::newer_envoy`], what no caller may reach is dropped from every answer.
///
/// An IP-literal destination is not resolved: Envoy connects to it as is.
pub fn dns_cache(resolver: &Resolver) -> Value {
    let refresh = duration(resolver.refresh);
    let mut cache = json!({
        "name": DNS_CACHE,
        "dns_lookup_family": "V4_ONLY",
        "dns_refresh_rate": refresh,
        "dns_min_refresh_rate": refresh,
        "dns_failure_refresh_rate": {"base_interval": refresh, "max_interval": refresh},
        "typed_dns_resolver_config": {
            "name": "envoy.network.dns_resolver.cares",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig",
                "resolvers": [socket(resolver.server)],
                "use_resolvers_as_fallback": false,
                "dns_resolver_options": {"no_default_search_domain": true},
            },
        },
    });
    if let Some(vetting) = resolver.vetting.as_ref().filter(|v| v.newer_envoy && v.mode == Mode::Enforce) {
        cache["resolved_address_filter"] =
            egressctl::resolved::cache_address_filter(&vetting.policy, &vetting.lab_upstreams);
    }
    cache
}

/// A dynamic forward proxy cluster on the DNS cache: its hosts are the names the filters resolved.
fn forward_proxy_cluster(name: &str, resolver: &Resolver) -> Value {
    let mut cluster = json!({
        "name": name,
        "connect_timeout": "2s",
        "lb_policy": "CLUSTER_PROVIDED",
        "cluster_type": {
            "name": "envoy.clusters.dynamic_forward_proxy",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig",
                "dns_cache_config": dns_cache(resolver),
            },
        },
    });
    if let Some(source) = resolver.source {
        cluster["upstream_bind_config"] = json!({"source_address": {"address": source.to_string(), "port_value": 0}});
    }
    if resolver.vetting.as_ref().is_some_and(AddressVetting::caller_bound) {
        cluster["connection_pool_per_downstream_connection"] = json!(true);
    }
    cluster
}

/// The HTTP protocol options of the plain-HTTP upstream cluster: HTTP/1.1 with request trailers passed on (see the
/// listener's `enable_trailers`). A dynamic forward proxy cluster with protocol options must also set `auto_sni`
/// and `auto_san_validation` (Envoy refuses it otherwise); they only act on TLS upstream connections, which the
/// gateway does not originate.
fn upstream_http_options(dynamic_forward_proxy: bool) -> Value {
    let mut options = json!({
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http_protocol_options": {"enable_trailers": true}},
    });
    if dynamic_forward_proxy {
        options["upstream_http_protocol_options"] = json!({"auto_sni": true, "auto_san_validation": true});
    }
    json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": options})
}

/// A protobuf JSON duration ("1.500s").
fn duration(duration: Duration) -> String {
    format!("{}.{:03}s", duration.as_secs(), duration.subsec_millis())
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
