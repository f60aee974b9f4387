//! The real-Envoy world of the egress filter suite: an Envoy launcher, demo upstreams and the DNS server that names
//! them, a test PKI, config rendering and blocking clients. Integration tests and `egress-lab` (behind `make run`)
//! both start a [`Lab`], which routes like the production gateway: by DNS, through Envoy's dynamic forward proxy
//! ([`bootstrap::Routing::Resolved`]).

pub mod bootstrap;
pub mod client;
pub mod collector;
pub mod compose;
pub mod demo;
pub mod dns;
pub mod ecds;
pub mod echo;
pub mod envoy;
pub mod istio;
pub mod load;
pub mod openapi;
pub mod pki;
pub mod rotel;

use bootstrap::{AddressVetting, Gateway, MtlsFiles, PathNormalization, Resolver, Routing};
use dns::{Dns, Zone};
use echo::Echo;
use egress_core::identity::IdentityConfig;
use egress_core::resolved::AddressPolicy;
use egress_core::Policy;
use egressctl::config::{self, Kind};
use envoy::{Envoy, Launcher};
use pki::{CertKey, Error, TestPki};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::{env, fs};

/// Root ids of the allow-list plugins (`filters/allowlist`).
pub const ALLOWLIST_ROOT_ID: &str = "egress-allowlist";
pub const ALLOWLIST_TLS_ROOT_ID: &str = "egress-allowlist-tls";
/// Root id of the redirects plugin (`filters/redirects`).
pub const REDIRECTS_ROOT_ID: &str = "egress-redirects";
/// Root ids of the audit plugins (`filters/audit`).
pub const AUDIT_ROOT_ID: &str = "egress-audit";
pub const AUDIT_TLS_ROOT_ID: &str = "egress-audit-tls";
/// Root ids of the identity plugins (`filters/identity`).
pub const IDENTITY_ROOT_ID: &str = "egress-identity";
pub const IDENTITY_TLS_ROOT_ID: &str = "egress-identity-tls";
/// Root ids of the fused suite (`filters/suite`): every stage in one filter.
pub const SUITE_ROOT_ID: &str = "egress-suite";
pub const SUITE_TLS_ROOT_ID: &str = "egress-suite-tls";

/// Where the built `.wasm` files are: `$EGRESS_WASM_DIR`, else the workspace's release output.
pub fn wasm_dir() -> PathBuf {
    env::var_os("EGRESS_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| envoy::workspace_root().join("target/wasm32-wasip1/release"))
}

/// Reads a policy file (YAML or JSON), validates it with the filter's own rules, and returns it as the JSON the
/// plugin receives. Errors name the file and the field path.
pub fn load_policy(path: &Path) -> Result<String, Error> {
    load_checked(path, Kind::Policy)
}

/// Reads an audit filter configuration file (YAML or JSON), validates it as the filter will, returns it as JSON.
pub fn load_audit(path: &Path) -> Result<String, Error> {
    load_checked(path, Kind::Audit)
}

fn load_checked(path: &Path, kind: Kind) -> Result<String, Error> {
    let json = config::read_json(path)?;
    match config::check(kind, &json) {
        Ok(_) => Ok(json),
        Err(problems) => Err(format!("{}: {}", path.display(), problems.join("; ")).into()),
    }
}

/// Reads an identity filter configuration file (YAML or JSON), validates it as the filter will (with `env` as the
/// VM environment, so a missing signing key is an error here too), and returns it as JSON.
pub fn load_identity(path: &Path, env: &[(String, String)]) -> Result<String, Error> {
    let json = config::read_json(path)?;
    let lookup = |var: &str| env.iter().find(|(key, _)| key == var).map(|(_, value)| value.clone());
    IdentityConfig::from_json(json.as_bytes(), lookup).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(json)
}

/// The gateway's own identity on its mTLS listener (XFCC `By=`), as Istio names the egress gateway.
pub const GATEWAY_SPIFFE_ID: &str = "spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account";

/// The manifests a [`Lab`] builds its filter chain from: `$EGRESS_MANIFESTS`, else [`shipped_manifests_dir`].
pub fn manifests_dir() -> PathBuf {
    env::var_os("EGRESS_MANIFESTS").map(PathBuf::from).unwrap_or_else(shipped_manifests_dir)
}

/// The plugins of the recommended deployment the project ships: the fused suite (`wasmplugin-manifests/suite`).
pub fn shipped_manifests_dir() -> PathBuf {
    envoy::workspace_root().join("wasmplugin-manifests/suite")
}

/// The gateway of a [`Lab`] without the mTLS listener: the chain the manifests deploy, with the configurations of
/// `options`, in front of the given upstreams.
fn gateway(options: &LabOptions, echo_http: SocketAddr, echo_https: SocketAddr) -> Result<Gateway, Error> {
    let (mut http_plugins, mut tls_plugins) = (Vec::new(), Vec::new());
    let mut configured = Vec::new();
    let chain = istio::chain(&options.manifests, &wasm_dir())?;
    let fused = chain.iter().any(|plugin| plugin.root_id == SUITE_ROOT_ID);
    for mut plugin in chain {
        let Some(config) = options.config_for(&plugin.root_id)? else { continue };
        plugin.config = config;
        configured.push(plugin.root_id.clone());
        if plugin.network {
            tls_plugins.push(plugin);
        } else {
            http_plugins.push(plugin);
        }
    }
    for root_id in options.configured_root_ids(fused) {
        if !configured.iter().any(|id| id == root_id) {
            let manifests = options.manifests.display();
            return Err(format!("{manifests} deploy no plugin {root_id} for this lab to configure").into());
        }
    }
    let collector = match options.collector {
        Some(address) => Some((collector_cluster(options.audit_json.as_deref())?, address)),
        None => None,
    };
    let follow_redirects = Policy::from_json(options.policy_json.as_bytes()).ok().and_then(|p| p.follow_route_hops());
    let listen = options.listen;
    let next_port = |offset: u16| if listen.port() == 0 { 0 } else { listen.port().saturating_add(offset) };
    Ok(Gateway {
        listen,
        tls_listen: SocketAddr::new(listen.ip(), next_port(1)),
        mtls_port: next_port(2),
        http_plugins,
        tls_plugins,
        mtls: None,
        forward_client_cert: options.identity_json.is_some(),
        // The suite always runs the redirects stage with the policy; separate filters only when deployed.
        follow_redirects: follow_redirects.filter(|_| options.redirects || fused),
        path_normalization: options.path_normalization,
        echo_http,
        echo_https,
        collector,
        access_log: env::temp_dir().join("egress-lab-access.log"),
    })
}

/// The cluster the audit configuration's collector sink posts to.
fn collector_cluster(audit_json: Option<&str>) -> Result<String, Error> {
    let config: serde_json::Value = serde_json::from_str(audit_json.unwrap_or("{}"))?;
    match config["collector"]["cluster"].as_str() {
        Some(cluster) => Ok(cluster.to_string()),
        None => Err("a collector address without an audit configuration whose collector names a cluster".into()),
    }
}

/// A complete bootstrap for `options` that needs no running upstreams or certificates: for `envoy --mode
/// validate`, which loads the Wasm modules and runs their `on_configure`.
pub fn gateway_bootstrap(options: &LabOptions) -> Result<serde_json::Value, Error> {
    let unused = SocketAddr::from(([127, 0, 0, 1], 9));
    Ok(gateway(options, unused, unused)?.render())
}

/// The bootstrap of a gateway with the chain of `options` in front of upstreams that are already running (a
/// benchmark starts its own), every destination routed to them ([`Routing::Fixed`]); no mTLS listener.
pub fn gateway_bootstrap_for(
    options: &LabOptions,
    echo_http: SocketAddr,
    echo_https: SocketAddr,
) -> Result<serde_json::Value, Error> {
    Ok(gateway(options, echo_http, echo_https)?.render())
}

/// The bootstrap of a [`Lab`]'s gateway without the mTLS listener: the chain of `options`, routing by DNS through
/// `resolver` (see [`start_upstreams`] for a world to resolve into).
pub fn gateway_bootstrap_resolved(options: &LabOptions, resolver: &Resolver) -> Result<serde_json::Value, Error> {
    let unused = SocketAddr::from(([127, 0, 0, 1], 9));
    Ok(gateway(options, unused, unused)?.render_with(&Routing::Resolved(resolver.clone())))
}

/// The upstream host of [`test_world`] that answers for the names the tests send and mean to reach.
pub const ORIGIN_HOST: usize = 0;
/// The upstream host of [`test_world`] for the names tests use as "a host an attacker controls" (`evil.example`,
/// `evil.test` and every name below them): a request that got there shows in `lab.echo.requests_to(lab.upstream
/// (EVIL_HOST))`.
pub const EVIL_HOST: usize = 1;

/// A [`Lab`]'s DNS zone unless its options say otherwise: the names the integration tests send (and the example
/// policy's), each → an upstream host. Wildcards stand for every name below (see [`dns`]); the closest entry wins,
/// so `evil.example` is [`EVIL_HOST`]'s although `*.example` is [`ORIGIN_HOST`]'s. Every other name is NXDOMAIN,
/// and a request to it a 503 from the gateway.
pub fn test_world() -> Vec<(String, usize)> {
    let origin = [
        "httpbin.org",
        "*.httpbin.org",
        // RFC 2606's reserved names: api.example, internal.example, a.b.wild.example, …
        "*.example",
        "example.com",
        "*.example.com",
        "*.amazonaws.com",
        "api.github.com",
        "api.stripe.com",
    ];
    let evil = ["evil.example", "*.evil.example", "evil.test", "*.evil.test"];
    let named =
        |names: &[&str], host: usize| names.iter().map(move |name| (name.to_string(), host)).collect::<Vec<_>>();
    [named(&origin, ORIGIN_HOST), named(&evil, EVIL_HOST)].concat()
}

/// The world a gateway that routes by DNS reaches: upstream hosts on a loopback block of their own (as many as the
/// highest index of `zone` needs, at least one), and a DNS server on 127.0.0.1 whose zone maps each name of `zone`
/// to its host.
pub fn start_upstreams(pki: &TestPki, zone: &[(String, usize)]) -> Result<(Echo, Dns), Error> {
    let hosts = zone.iter().map(|(_, host)| host.saturating_add(1)).max().unwrap_or(1);
    let echo = Echo::start_hosts(pki, hosts)?;
    let addresses = echo.hosts();
    let mut names = Zone::new();
    for (name, host) in zone {
        let address = addresses.get(*host).ok_or_else(|| format!("{name}: no upstream host {host}"))?;
        names.set(name, vec![*address])?;
    }
    Ok((echo, Dns::start(names)?))
}

/// How a lab's gateway resolves: through `dns`, the resolved addresses vetted on `options`' policy as the Envoy
/// `launcher` starts can, the upstream hosts (`echo`'s loopback block) open to everyone, as the internet they stand
/// in for is.
pub fn lab_resolver(options: &LabOptions, echo: &Echo, dns: &Dns, launcher: &Launcher) -> Result<Resolver, Error> {
    let document = egress_core::PolicyDocument::from_json(options.policy_json.as_bytes())?;
    let vetting = AddressVetting {
        policy: AddressPolicy::of(&document)?,
        mode: document.mode,
        lab_upstreams: echo.block().into_iter().collect(),
        newer_envoy: launcher.release()? >= (1, 39, 0),
    };
    Ok(Resolver::lab(dns.addr(), Some(vetting)))
}

/// How to start a [`Lab`].
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// The allow-list policy, as JSON.
    pub policy_json: String,
    /// The identity filter's configuration, as JSON; `None` leaves the filter out.
    pub identity_json: Option<String>,
    /// Adds the redirects filter (before the allow-list on requests), reading the same policy; with `redirects.follow` the
    /// route follows redirects.
    pub redirects: bool,
    /// The audit filter's configuration, as JSON; `None` leaves the filter out.
    pub audit_json: Option<String>,
    /// Where the `audit_collector` cluster points (the audit filter's collector sink).
    pub collector: Option<SocketAddr>,
    /// Environment of the Envoy process that the Wasm VMs may read (Istio `vmConfig.env`, `valueFrom: HOST`).
    pub host_env: Vec<(String, String)>,
    /// The plain HTTP listener; the TLS-passthrough and mTLS listeners take the next two ports (or any free port
    /// when this one is 0).
    pub listen: SocketAddr,
    /// The Istio manifests that give the chain: which plugins, in which order, from which (pinned) modules, failing
    /// how (see [`istio`]).
    pub manifests: PathBuf,
    /// The gateway's `meshConfig.pathNormalization` (Istio's default: `BASE`).
    pub path_normalization: PathNormalization,
    /// The lab's DNS zone: names (or `*.suffix` wildcards) → the index of the upstream host that answers for them
    /// ([`Lab::upstream`]); the lab starts as many hosts as the highest index needs. Other names are NXDOMAIN.
    /// Default: [`test_world`]. The zone may change while the lab runs ([`Lab::dns`]).
    pub zone: Vec<(String, usize)>,
    /// How the plugins' configurations reach Envoy: inline in the listeners (the default), or by ECDS as istiod
    /// delivers them, pushed while the lab runs through [`Lab::ecds`].
    pub delivery: ecds::Delivery,
}

impl LabOptions {
    pub fn new(policy_json: impl Into<String>) -> LabOptions {
        LabOptions {
            policy_json: policy_json.into(),
            identity_json: None,
            redirects: false,
            audit_json: None,
            collector: None,
            host_env: Vec::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            manifests: manifests_dir(),
            path_normalization: PathNormalization::default(),
            zone: test_world(),
            delivery: ecds::Delivery::Inline,
        }
    }

    /// Exactly what the manifests deploy: every plugin with its `pluginConfig`, and `host_env` for the variables
    /// the VMs take from the gateway's environment.
    pub fn deployed(manifests: &Path, host_env: Vec<(String, String)>) -> Result<LabOptions, Error> {
        let chain = istio::chain(manifests, &wasm_dir())?;
        let config = |root_id: &str| chain.iter().find(|p| p.root_id == root_id).map(|p| p.config.clone());
        if let Some(suite) = config(SUITE_ROOT_ID) {
            let sections: serde_json::Value = serde_json::from_str(&suite)?;
            let section = |name: &str| Some(&sections[name]).filter(|v| !v.is_null()).map(ToString::to_string);
            return Ok(LabOptions {
                identity_json: section("identity"),
                redirects: true,
                audit_json: section("audit"),
                host_env,
                manifests: manifests.to_path_buf(),
                ..LabOptions::new(section("policy").ok_or("the suite's pluginConfig has no policy")?)
            });
        }
        let policy_json = config(ALLOWLIST_ROOT_ID).ok_or("the manifests deploy no allow-list")?;
        Ok(LabOptions {
            identity_json: config(IDENTITY_ROOT_ID),
            redirects: config(REDIRECTS_ROOT_ID).is_some(),
            audit_json: config(AUDIT_ROOT_ID),
            host_env,
            manifests: manifests.to_path_buf(),
            ..LabOptions::new(policy_json)
        })
    }

    /// The configuration this lab gives the plugin with `root_id`; `None` leaves it out of the chain. The allow-list
    /// and the redirects filter read one policy document; the suite gets every configuration as its sections.
    fn config_for(&self, root_id: &str) -> Result<Option<String>, Error> {
        Ok(match root_id {
            IDENTITY_ROOT_ID | IDENTITY_TLS_ROOT_ID => self.identity_json.clone(),
            ALLOWLIST_ROOT_ID | ALLOWLIST_TLS_ROOT_ID => Some(self.policy_json.clone()),
            REDIRECTS_ROOT_ID => self.redirects.then(|| self.policy_json.clone()),
            AUDIT_ROOT_ID | AUDIT_TLS_ROOT_ID => self.audit_json.clone(),
            SUITE_ROOT_ID | SUITE_TLS_ROOT_ID => Some(self.suite_json()?),
            other => return Err(format!("the manifests deploy a plugin this lab cannot configure: {other}").into()),
        })
    }

    /// The fused suite's configuration: each configuration as its section (`egress_core::suite`).
    pub fn suite_json(&self) -> Result<String, Error> {
        let mut sections = serde_json::Map::new();
        sections.insert("policy".into(), serde_json::from_str(&self.policy_json)?);
        for (name, json) in [("identity", &self.identity_json), ("audit", &self.audit_json)] {
            if let Some(json) = json {
                sections.insert(name.into(), serde_json::from_str(json)?);
            }
        }
        Ok(serde_json::Value::Object(sections).to_string())
    }

    /// Root ids of the plugins these options configure, which the manifests must deploy.
    fn configured_root_ids(&self, fused: bool) -> Vec<&'static str> {
        if fused {
            return vec![SUITE_ROOT_ID, SUITE_TLS_ROOT_ID];
        }
        let mut ids = vec![ALLOWLIST_ROOT_ID, ALLOWLIST_TLS_ROOT_ID];
        if self.identity_json.is_some() {
            ids.extend([IDENTITY_ROOT_ID, IDENTITY_TLS_ROOT_ID]);
        }
        ids.extend(self.redirects.then_some(REDIRECTS_ROOT_ID));
        if self.audit_json.is_some() {
            ids.extend([AUDIT_ROOT_ID, AUDIT_TLS_ROOT_ID]);
        }
        ids
    }

    /// Adds the identity filter with `config` (JSON) in front of the allow-list.
    pub fn with_identity(mut self, config: impl Into<String>) -> LabOptions {
        self.identity_json = Some(config.into());
        self
    }
}

/// A running local egress gateway: Envoy with the suite, the echo upstream hosts, the DNS server that names them, and
/// the PKI their TLS comes from.
pub struct Lab {
    // Field order is drop order: Envoy stops before its upstreams.
    pub envoy: Envoy,
    /// Every upstream host; its records say which host got each request (`upstream`).
    pub echo: Echo,
    /// The DNS server the gateway resolves through, serving [`LabOptions::zone`]: [`Dns::set`] changes an answer
    /// (Envoy uses it from its next refresh, within [`Resolver::lab`]'s second).
    pub dns: Dns,
    pub pki: TestPki,
    /// The run directory: Envoy's configuration and log, the access log, the certificates and keys written for Envoy
    /// and for curl (mode 700; keys 600).
    pub files: PathBuf,
    /// The plugins' ECDS resources, with [`ecds::Delivery::Ecds`] (under `files`).
    pub ecds: Option<ecds::Ecds>,
}

impl Lab {
    /// Starts the upstreams, the DNS server and Envoy, in one run directory ([`Lab::files`]): removed when the lab
    /// stops, or fails to start.
    pub fn start(options: &LabOptions) -> Result<Lab, Error> {
        let files = envoy::run_dir()?;
        Lab::start_in(options, files.clone()).inspect_err(|_| envoy::remove_run_dir(&files))
    }

    fn start_in(options: &LabOptions, files: PathBuf) -> Result<Lab, Error> {
        let pki = TestPki::new()?;
        let (echo, dns) = start_upstreams(&pki, &options.zone)?;
        let ca = pki.write_ca(&files)?;
        let gateway_cert = pki.issue_server_with_uri(&["egress-gateway", "localhost"], GATEWAY_SPIFFE_ID)?;
        let (cert, key) = pki.write_files(&files, "gateway", &gateway_cert)?;
        let mut gateway = gateway(options, echo.http_addr(), echo.https_addr())?;
        gateway.mtls = Some(MtlsFiles { ca, cert, key });
        // TLS passthrough on port 443, as clients dial it: the port the allow-list judges and audit events record.
        if let Some(address) = echo.gateway_address() {
            gateway.tls_listen = SocketAddr::new(address, 443);
        }
        gateway.access_log = files.join("access.log");
        let mut launcher = Launcher::find()?;
        launcher.env.extend(options.host_env.iter().cloned());
        let resolver = lab_resolver(options, &echo, &dns, &launcher)?;
        let routing = Routing::Resolved(resolver);
        let ecds = match &options.delivery {
            ecds::Delivery::Inline => None,
            ecds::Delivery::Ecds { first, lds } => {
                Some(ecds::Ecds::create(&files.join("ecds"), &gateway, first, *lds)?)
            }
        };
        let bootstrap = match &ecds {
            Some(ecds) => ecds.render(&gateway, &routing)?,
            None => gateway.render_with(&routing),
        };
        let envoy = Envoy::start_in(&launcher, &bootstrap, files.clone())?;
        Ok(Lab { envoy, echo, dns, pki, files, ecds })
    }

    /// The address of upstream host `index` (see [`LabOptions::zone`]); more with `lab.echo.add_host()`.
    pub fn upstream(&self, index: usize) -> Option<IpAddr> {
        self.echo.hosts().get(index).copied()
    }

    /// One HTTP/1.1 GET through the mTLS listener, presenting `cert` as the caller's certificate.
    pub fn mtls_get(&self, cert: &CertKey, host: &str, path: &str) -> Result<client::Response, Error> {
        self.mtls_request(cert, "GET", host, path, &[])
    }

    /// One HTTP/1.1 request through the mTLS listener with extra headers, presenting `cert`.
    pub fn mtls_request(
        &self,
        cert: &CertKey,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<client::Response, Error> {
        let config = std::sync::Arc::new(self.pki.client_config(Some(cert))?);
        let request = client::build_request(method, host, path, headers, &[]);
        let stream = std::net::TcpStream::connect(self.mtls())?;
        client::tls_exchange(stream, config, "egress-gateway".try_into()?, &request)
    }

    /// The plain HTTP (and CONNECT) listener.
    pub fn http(&self) -> SocketAddr {
        self.envoy.listener(bootstrap::HTTP_LISTENER)
    }

    /// The mTLS listener (client certificate required).
    pub fn mtls(&self) -> SocketAddr {
        self.envoy.listener(bootstrap::MTLS_LISTENER)
    }

    /// The TLS-passthrough listener.
    pub fn tls(&self) -> SocketAddr {
        self.envoy.listener(bootstrap::TLS_LISTENER)
    }

    /// A client certificate from the test CA, with `spiffe_id` as URI SAN when given.
    pub fn client_cert(&self, spiffe_id: Option<&str>) -> Result<CertKey, Error> {
        self.pki.issue_client(spiffe_id)
    }

    /// The access log lines written so far, parsed.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        let text = fs::read_to_string(self.files.join("access.log")).unwrap_or_default();
        text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.files);
        }
    }
}
