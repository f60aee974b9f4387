//! The allow-list alone, as a module: `egress_allowlist.wasm`, root ids `egress-allowlist` (HTTP) and
//! `egress-allowlist-tls` (network, SNI). Its plugin configuration is the policy; an invalid one is refused with every
//! problem and its field path (`on_configure` fails, so Envoy refuses the listener).

use egress_allowlist::{AllowList, HTTP_ROOT_ID, TLS_ROOT_ID};
use egress_core::Policy;
use egress_proxy::{config, Layer, Module, Pipeline, Setup};
use std::rc::Rc;

static MODULE: Module =
    Module { name: "egress-allowlist", http_root_id: Some(HTTP_ROOT_ID), tls_root_id: Some(TLS_ROOT_ID), build };

fn build(setup: &Setup<'_>) -> Result<Pipeline, String> {
    // The policy is parsed as it is read from the host, and the HTTP and TLS plugins of one VM share it when their
    // configurations are the same bytes: a large policy costs each worker's VM its compiled form once.
    let policy = config::shared_config(setup.config_size, |config| {
        Policy::from_buf_reader(config).map_err(|errors| errors.to_string())
    })?;
    if setup.layer == Layer::Http {
        egress_allowlist::declare_properties()?;
    }
    let stage = Rc::new(AllowList::new(setup.host, Rc::clone(&policy), setup.layer)?);
    let pipeline = Pipeline::new(policy.summary());
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
