//! The real-Envoy world of the egress filter suite: an Envoy launcher, demo upstreams, a test PKI, config rendering
//! and blocking clients. Integration tests and `egress-lab` (behind `make run`) both start a [`Lab`].

pub mod bootstrap;
pub mod client;
pub mod echo;
pub mod envoy;
pub mod pki;

use bootstrap::{Gateway, MtlsFiles, Plugin};
use echo::Echo;
use egress_core::policy::from_json_with_path;
use egress_core::{Policy, PolicyDocument};
use envoy::{Envoy, Launcher};
use pki::{CertKey, Error, TestPki};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::{env, fs};

/// Root ids of the allow-list plugins (`filters/allowlist`).
pub const ALLOWLIST_ROOT_ID: &str = "egress-allowlist";
pub const ALLOWLIST_TLS_ROOT_ID: &str = "egress-allowlist-tls";

/// Where the built `.wasm` files are: `$EGRESS_WASM_DIR`, else the workspace's release output.
pub fn wasm_dir() -> PathBuf {
    env::var_os("EGRESS_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| envoy::workspace_root().join("target/wasm32-wasip1/release"))
}

/// The path of a built filter module, e.g. `wasm_module("egress_allowlist")`.
pub fn wasm_module(name: &str) -> Result<PathBuf, Error> {
    let path = wasm_dir().join(format!("{name}.wasm"));
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("{} is missing: build the filters first (`make build`)", path.display()).into())
    }
}

/// Reads a policy file (YAML or JSON), validates it with the filter's own rules, and returns it as the JSON the
/// plugin receives. Errors name the file and the field path.
pub fn load_policy(path: &Path) -> Result<String, Error> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    policy_json_from_yaml(&text).map_err(|e| format!("{}: {e}", path.display()).into())
}

/// YAML (a superset of JSON) → validated policy JSON.
pub fn policy_json_from_yaml(text: &str) -> Result<String, Error> {
    let value: serde_json::Value = serde_yaml_ng::from_str(text)?;
    let json = value.to_string();
    let document: PolicyDocument = from_json_with_path(json.as_bytes())?;
    Policy::compile(&document)?;
    Ok(json)
}

/// The gateway of a [`Lab`] without the mTLS listener: the suite on `policy_json`, in front of the given upstreams.
fn gateway(
    policy_json: &str,
    listen: SocketAddr,
    echo_http: SocketAddr,
    echo_https: SocketAddr,
) -> Result<Gateway, Error> {
    let allowlist = wasm_module("egress_allowlist")?;
    let plugin = |root_id: &str| Plugin {
        root_id: root_id.to_string(),
        wasm: allowlist.clone(),
        config: policy_json.to_string(),
        fail_closed: true,
    };
    let next_port = |offset: u16| if listen.port() == 0 { 0 } else { listen.port().saturating_add(offset) };
    Ok(Gateway {
        listen,
        tls_port: next_port(1),
        mtls_port: next_port(2),
        http_plugins: vec![plugin(ALLOWLIST_ROOT_ID)],
        tls_plugins: vec![plugin(ALLOWLIST_TLS_ROOT_ID)],
        mtls: None,
        echo_http,
        echo_https,
        access_log: env::temp_dir().join("egress-lab-access.log"),
    })
}

/// A complete bootstrap for `policy_json` that needs no running upstreams or certificates: for `envoy --mode
/// validate`, which loads the Wasm modules and runs their `on_configure`.
pub fn gateway_bootstrap(policy_json: &str) -> Result<serde_json::Value, Error> {
    let unused = SocketAddr::from(([127, 0, 0, 1], 9));
    Ok(gateway(policy_json, SocketAddr::from(([127, 0, 0, 1], 0)), unused, unused)?.render())
}

/// How to start a [`Lab`].
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// The allow-list policy, as JSON.
    pub policy_json: String,
    /// The plain HTTP listener; the TLS-passthrough and mTLS listeners take the next two ports (or any free port
    /// when this one is 0).
    pub listen: SocketAddr,
}

impl LabOptions {
    pub fn new(policy_json: impl Into<String>) -> LabOptions {
        LabOptions { policy_json: policy_json.into(), listen: SocketAddr::from(([127, 0, 0, 1], 0)) }
    }
}

/// A running local egress gateway: Envoy with the suite, the echo upstreams, and the PKI their TLS comes from.
pub struct Lab {
    // Field order is drop order: Envoy stops before its upstreams.
    pub envoy: Envoy,
    pub echo: Echo,
    pub pki: TestPki,
    /// Certificates and keys written for Envoy and for curl.
    pub files: PathBuf,
}

impl Lab {
    pub fn start(options: &LabOptions) -> Result<Lab, Error> {
        let pki = TestPki::new()?;
        let echo = Echo::start(&pki)?;
        let files = envoy::run_dir()?;
        let ca = pki.write_ca(&files)?;
        let (cert, key) = pki.write_files(&files, "gateway", &pki.issue_server(&["egress-gateway", "localhost"])?)?;
        let mut gateway = gateway(&options.policy_json, options.listen, echo.http_addr(), echo.https_addr())?;
        gateway.mtls = Some(MtlsFiles { ca, cert, key });
        gateway.access_log = files.join("access.log");
        let envoy = Envoy::start(&Launcher::find()?, &gateway.render())?;
        Ok(Lab { envoy, echo, pki, files })
    }

    /// One HTTP/1.1 GET through the mTLS listener, presenting `cert` as the caller's certificate.
    pub fn mtls_get(&self, cert: &CertKey, host: &str, path: &str) -> Result<client::Response, Error> {
        let config = std::sync::Arc::new(self.pki.client_config(Some(cert))?);
        let request = client::build_request("GET", host, path, &[], &[]);
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
