//! The redirects stage alone, as a module: `egress_redirects.wasm`, root id `egress-redirects` (HTTP). Its plugin
//! configuration is the allow-list's policy document: one policy, written once.

use egress_core::Policy;
use egress_proxy::{config, Module, Pipeline, Setup};
use egress_redirects::{Redirects, ROOT_ID};
use std::rc::Rc;

static MODULE: Module = Module { name: "egress-redirects", http_root_id: Some(ROOT_ID), tls_root_id: None, build };

fn build(setup: &Setup<'_>) -> Result<Pipeline, String> {
    let policy = Policy::from_json(&config::plugin_config()?).map_err(|errors| errors.to_string())?;
    egress_redirects::declare_properties()?;
    let description = match policy.follow_route_hops() {
        Some(hops) => format!("policy of {}, following redirects up to {hops} hops", policy.summary()),
        None => format!("policy of {}, following redirects off", policy.summary()),
    };
    let stage = Redirects::new(setup.host, Rc::new(policy))?;
    Ok(Pipeline::new(description).http(Rc::new(stage)))
}

#[allow(unsafe_code)] // proxy_wasm::main! exports the module's `_initialize` entry point.
mod entry {
    proxy_wasm::main! {{
        proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
        proxy_wasm::set_root_context(|_| super::MODULE.root());
    }}
}
