//! The audit stage alone, as a module: `egress_audit.wasm`, root ids `egress-audit` (HTTP) and `egress-audit-tls`
//! (network). Its plugin configuration is the audit configuration.

use egress_audit::{Audit, HTTP_ROOT_ID, TLS_ROOT_ID};
use egress_core::audit::AuditConfig;
use egress_proxy::{config, Layer, Module, Pipeline, Setup};
use std::rc::Rc;

static MODULE: Module =
    Module { name: "egress-audit", http_root_id: Some(HTTP_ROOT_ID), tls_root_id: Some(TLS_ROOT_ID), build };

fn build(setup: &Setup<'_>) -> Result<Pipeline, String> {
    let audit = AuditConfig::from_json(&config::plugin_config()?).map_err(|errors| errors.to_string())?;
    let stage = Rc::new(Audit::new(setup.host, audit)?);
    let pipeline = Pipeline::new(stage.describe()).root(stage.clone()).timed();
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
