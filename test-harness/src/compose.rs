//! The gateway of `docker-compose.yaml`: the bootstrap `make run` starts (the same renderer, the same example
//! configurations, the chain the manifests deploy), changed only where containers need it:
//! - listeners on all interfaces: HTTP forward proxy on [`HTTP_PORT`], TLS passthrough on [`TLS_PORT`] (published
//!   as [`TLS_PUBLISHED_PORT`], as Istio's egress gateway Service publishes 443); no mTLS listener, because compose
//!   has no certificates to give it;
//! - the admin on the container's loopback ([`ADMIN_PORT`]), so no other container can reach it;
//! - modules from the mount point [`CONTAINER_WASM_DIR`];
//! - fixed routing ([`bootstrap::Routing::Fixed`]), where `make run` resolves each destination against a zone of its
//!   own: a container network has no DNS server that names the policy's hosts. Both demo upstream clusters are
//!   resolved by DNS to the compose service [`UPSTREAM_HOST`], which speaks plain HTTP only: a TLS connection through
//!   the passthrough listener is vetted by SNI, then reaches a server that cannot complete the handshake;
//! - access logs on Envoy's stdout, i.e. in `docker-compose logs gateway`.
//!
//! [`CONFIG_FILE`] is this bootstrap, committed; `tests/compose.rs` keeps the two in sync.

use crate::bootstrap::{self, Upstream, ECHO_HTTPS_CLUSTER, ECHO_HTTP_CLUSTER};
use crate::envoy::workspace_root;
use crate::pki::Error;
use crate::{gateway, load_audit, load_identity, load_policy, shipped_manifests_dir, LabOptions};
use serde_json::{Map, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The generated bootstrap, relative to the workspace root; `docker-compose.yaml` mounts it.
pub const CONFIG_FILE: &str = "deploy/compose/envoy.yaml";
/// What regenerates [`CONFIG_FILE`], run from the workspace root.
pub const REGENERATE_COMMAND: &str =
    "cargo run -q -p egress-harness --bin egress-lab -- compose-config --out deploy/compose/envoy.yaml";
/// Where `docker-compose.yaml` mounts the built modules (`target/wasm32-wasip1/release`) in the gateway container.
pub const CONTAINER_WASM_DIR: &str = "/etc/envoy/wasm";
/// The demo upstream: the compose service name and the port go-httpbin listens on.
pub const UPSTREAM_HOST: &str = "httpbin";
pub const UPSTREAM_PORT: u16 = 8080;
/// The plain HTTP listener (published as it is by docker-compose).
pub const HTTP_PORT: u16 = 10000;
/// The TLS-passthrough listener: the port Istio's egress gateway binds for 443, which the example policy's
/// `gatewayPorts` maps to 443, so passthrough is judged and recorded as the 443 apps dial.
pub const TLS_PORT: u16 = 8443;
/// Where docker-compose publishes [`TLS_PORT`] on the host's loopback.
pub const TLS_PUBLISHED_PORT: u16 = 10001;
pub const ADMIN_PORT: u16 = 9901;
/// The variable the example identity configuration reads its signing key from; `docker-compose.yaml` passes it to
/// Envoy, whose Wasm VM takes it from the process environment (the manifests' `valueFrom: HOST`).
pub const SIGNING_KEY_ENV: &str = "EGRESS_ASSERTION_KEY";

const FILE_ACCESS_LOG_TYPE: &str = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";

/// The bootstrap of the compose gateway (see the module docs). Fails when the built modules do not match the
/// manifests' pins (`make build`), as the lab does.
pub fn compose_bootstrap() -> Result<Value, Error> {
    let root = workspace_root();
    let example = |name: &str| root.join("examples").join(name);
    // Checking the identity configuration as the filter will needs its signing key to be set. This stand-in never
    // reaches the bootstrap: the container's environment supplies the real key.
    let stand_in_key = vec![(SIGNING_KEY_ENV.to_string(), "0".repeat(64))];
    let options = LabOptions {
        identity_json: Some(load_identity(&example("identity.yaml"), &stand_in_key)?),
        audit_json: Some(load_audit(&example("audit.yaml"))?),
        redirects: true,
        listen: SocketAddr::from(([0, 0, 0, 0], HTTP_PORT)),
        // The shipped manifests rather than `$EGRESS_MANIFESTS`: the committed file must not depend on who renders it.
        manifests: shipped_manifests_dir(),
        ..LabOptions::new(load_policy(&example("policy.yaml"))?)
    };
    let unused = SocketAddr::from(([127, 0, 0, 1], 9));
    let mut gateway = gateway(&options, unused, unused)?;
    gateway.tls_listen = SocketAddr::from(([0, 0, 0, 0], TLS_PORT));
    let mut bootstrap = gateway.render();
    bootstrap["admin"]["address"] = bootstrap::socket(SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT)));
    let clusters = bootstrap["static_resources"]["clusters"].as_array_mut().ok_or("the bootstrap has no clusters")?;
    for cluster in clusters.iter_mut() {
        let name = cluster["name"].as_str().unwrap_or_default().to_string();
        if name != ECHO_HTTP_CLUSTER && name != ECHO_HTTPS_CLUSTER {
            return Err(format!("the compose setup has no upstream for cluster `{name}`").into());
        }
        let upstream = Upstream::Dns { host: UPSTREAM_HOST.to_string(), port: UPSTREAM_PORT };
        *cluster = bootstrap::cluster(&name, &upstream);
    }
    rewrite_objects(&mut bootstrap, &mut |object| {
        if let Some(vm_config) = object.get_mut("vm_config") {
            let filename = &mut vm_config["code"]["local"]["filename"];
            let module = filename.as_str().map(Path::new).and_then(Path::file_name).ok_or("a module without a path")?;
            *filename = Value::from(format!("{CONTAINER_WASM_DIR}/{}", module.to_string_lossy()));
        }
        if object.get("@type").and_then(Value::as_str) == Some(FILE_ACCESS_LOG_TYPE) {
            object.insert("path".to_string(), Value::from("/dev/stdout"));
        }
        Ok(())
    })?;
    Ok(bootstrap)
}

/// [`compose_bootstrap`] as the YAML file [`CONFIG_FILE`] holds, with a header saying where it comes from.
pub fn compose_config_yaml() -> Result<String, Error> {
    let header = format!(
        "# Generated by `{REGENERATE_COMMAND}`\n\
         # from examples/policy.yaml, examples/identity.yaml and examples/audit.yaml with the chain of\n\
         # wasmplugin-manifests/wasmplugins: the gateway of `make run`, adapted to docker-compose.yaml\n\
         # (test-harness/src/compose.rs says how). Do not edit; regenerate.\n"
    );
    Ok(header + &serde_yaml_ng::to_string(&compose_bootstrap()?)?)
}

/// The committed [`CONFIG_FILE`].
pub fn config_path() -> PathBuf {
    workspace_root().join(CONFIG_FILE)
}

/// Calls `rewrite` on every JSON object in `value`, outermost first.
fn rewrite_objects(
    value: &mut Value,
    rewrite: &mut impl FnMut(&mut Map<String, Value>) -> Result<(), Error>,
) -> Result<(), Error> {
    match value {
        Value::Object(object) => {
            rewrite(object)?;
            object.values_mut().try_for_each(|child| rewrite_objects(child, rewrite))
        }
        Value::Array(items) => items.iter_mut().try_for_each(|child| rewrite_objects(child, rewrite)),
        _ => Ok(()),
    }
}
