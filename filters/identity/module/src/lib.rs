//! The identity stage alone, as a module: `egress_identity.wasm`, root ids `egress-identity` (HTTP) and
//! `egress-identity-tls` (network: refuses TLS passthrough unless tunnels are allowed). Its plugin configuration is
//! the identity configuration; the signing key comes from the VM's environment (`signing.keyEnv`).

use egress_core::identity::IdentityConfig;
use egress_identity::{Identity, ROOT_ID, TLS_ROOT_ID};
use egress_proxy::{config, Layer, Module, Pipeline, Setup};
use std::rc::Rc;

static MODULE: Module =
    Module { name: "egress-identity", http_root_id: Some(ROOT_ID), tls_root_id: Some(TLS_ROOT_ID), build };

fn build(setup: &Setup<'_>) -> Result<Pipeline, String> {
    let json = config::plugin_config()?;
    let identity =
        IdentityConfig::from_json(&json, |var| std::env::var(var).ok()).map_err(|errors| errors.to_string())?;
    let description = identity.summary();
    let stage = Rc::new(Identity::new(setup.host, Rc::new(identity))?);
    let pipeline = Pipeline::new(description);
    Ok(match setup.layer {
        Layer::Http => pipeline.http(stage),
        Layer::Tls => pipeline.tls(stage),
    })
}

#[allow(unsafe_code)] // proxy_wasm::main! exports the module's `_initialize` entry point.
mod entry {
    proxy_wasm::main! {{
        proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
        proxy_wasm::set_root_context(|_| super::MODULE.root());
    }}
}
