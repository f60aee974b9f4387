//! The suite's filter chain as Istio builds it from the manifests, for an Envoy run by the harness: what is tested
//! is what is deployed.
//!
//! The translation follows istiod (`pilot/pkg/model/extensions.go`, `wasmplugin.go`): plugins that select the
//! egress gateway (`istio: egressgateway`, or Gateway API `Gateway` `egress-gateway`) and whose `match` covers a
//! gateway's (CLIENT) traffic, ordered by phase (AUTHN, AUTHZ, STATS, then unspecified) and, within a phase, by
//! descending priority; `pluginName` → root id; `pluginConfig` → the JSON configuration; `failStrategy` → Envoy's
//! `failure_policy`; `type` → HTTP or network filter; `vmConfig.env` → the VM's environment.
//!
//! Modules come from the local build, the way Istio's agent would fetch them, and must match the manifest's
//! `sha256` pin: for `oci://` the manifest digest of the image `make oci` builds from the module, for `file://`
//! and `http(s)://` the module's own digest (Istio checks `file://` pins not at all; the harness is stricter).

use crate::pki::Error;
use egressctl::oci::{sha256_hex, Image};
use serde::Deserialize;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};

/// The labels of the gateway the harness plays, as Istio's egress gateway pods carry them.
const GATEWAY_LABELS: [(&str, &str); 2] = [("istio", "egressgateway"), ("app", "istio-egressgateway")];

/// One plugin of the chain, as Envoy runs it.
#[derive(Clone, Debug)]
pub struct DeployedPlugin {
    /// `<namespace>.<name>` of the resource (Envoy's plugin name).
    pub name: String,
    pub root_id: String,
    pub module: PathBuf,
    /// `pluginConfig` as JSON.
    pub config: String,
    /// Envoy `failure_policy`: FAIL_CLOSED, FAIL_OPEN or FAIL_RELOAD.
    pub failure_policy: &'static str,
    /// A network (L4) filter rather than an HTTP filter.
    pub network: bool,
    /// Variables the VM reads from the Envoy process (`valueFrom: HOST`).
    pub host_env_keys: Vec<String>,
    /// Variables set for the VM (`valueFrom: INLINE`).
    pub env: Vec<(String, String)>,
    phase_rank: u8,
    priority: i64,
}

/// The plugins of every `WasmPlugin` and `TrafficExtension` in the YAML files of `dir` that apply to the egress
/// gateway, in chain order, with modules from `wasm_dir` checked against their pins.
pub fn chain(dir: &Path, wasm_dir: &Path) -> Result<Vec<DeployedPlugin>, Error> {
    let mut plugins = Vec::new();
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml"))
        .collect();
    files.sort();
    for file in files {
        let text = fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let document = Value::deserialize(document).map_err(|e| format!("{}: {e}", file.display()))?;
            let plugin = plugin(&document, wasm_dir).map_err(|e| format!("{}: {e}", file.display()))?;
            plugins.extend(plugin);
        }
    }
    // Istio breaks priority ties by creation time, then name; a manifest set has no creation times.
    plugins.sort_by(|a, b| (a.phase_rank, -a.priority, &a.name).cmp(&(b.phase_rank, -b.priority, &b.name)));
    Ok(plugins)
}

/// The plugin `document` adds to the gateway's chain: `None` for other kinds and for plugins that do not apply to
/// the gateway.
fn plugin(document: &Value, wasm_dir: &Path) -> Result<Option<DeployedPlugin>, Error> {
    let kind = document["kind"].as_str().unwrap_or_default();
    let spec = &document["spec"];
    let wasm = match kind {
        "WasmPlugin" => spec,
        "TrafficExtension" => &spec["wasm"],
        _ => return Ok(None),
    };
    let name = format!(
        "{}.{}",
        document["metadata"]["namespace"].as_str().unwrap_or("default"),
        document["metadata"]["name"].as_str().unwrap_or_default()
    );
    if !selects_the_gateway(spec) || !matches_gateway_traffic(&spec["match"]) {
        return Ok(None);
    }
    let text = |value: &Value, field: &str| -> Result<String, Error> {
        value[field].as_str().map(str::to_string).ok_or_else(|| format!("{name}: `{field}` is missing").into())
    };
    let root_id = text(wasm, "pluginName")?;
    let module =
        module_for(&text(wasm, "url")?, &text(wasm, "sha256")?, wasm_dir).map_err(|e| format!("{name}: {e}"))?;
    let failure_policy = match wasm["failStrategy"].as_str() {
        // Istio's default is FAIL_CLOSE.
        None | Some("FAIL_CLOSE") => "FAIL_CLOSED",
        Some("FAIL_OPEN") => "FAIL_OPEN",
        Some("FAIL_RELOAD") => "FAIL_RELOAD",
        Some(other) => return Err(format!("{name}: unknown failStrategy {other}").into()),
    };
    let network = match wasm["type"].as_str() {
        None | Some("HTTP") | Some("UNSPECIFIED_PLUGIN_TYPE") => false,
        Some("NETWORK") => true,
        Some(other) => return Err(format!("{name}: unknown type {other}").into()),
    };
    let phase_rank = match spec["phase"].as_str() {
        Some("AUTHN") => 0,
        Some("AUTHZ") => 1,
        Some("STATS") => 2,
        None | Some("UNSPECIFIED_PHASE") | Some("UNSPECIFIED") => 3,
        Some(other) => return Err(format!("{name}: unknown phase {other}").into()),
    };
    let mut host_env_keys = Vec::new();
    let mut env = Vec::new();
    for variable in wasm["vmConfig"]["env"].as_array().into_iter().flatten() {
        let key = text(variable, "name")?;
        match variable["valueFrom"].as_str() {
            Some("HOST") => host_env_keys.push(key),
            None | Some("INLINE") => env.push((key, variable["value"].as_str().unwrap_or_default().to_string())),
            Some(other) => return Err(format!("{name}: unknown valueFrom {other}").into()),
        }
    }
    // Istio hands the plugin its pluginConfig as JSON (a protobuf Struct printed by protojson).
    let config = if wasm["pluginConfig"].is_null() { String::new() } else { wasm["pluginConfig"].to_string() };
    Ok(Some(DeployedPlugin {
        name,
        root_id,
        module,
        config,
        failure_policy,
        network,
        host_env_keys,
        env,
        phase_rank,
        priority: spec["priority"].as_i64().unwrap_or(0),
    }))
}

/// Whether the resource attaches to the gateway the harness plays: by labels, by Gateway API `targetRefs`, or to
/// every workload of its namespace when it has neither.
fn selects_the_gateway(spec: &Value) -> bool {
    if let Some(refs) = spec["targetRefs"].as_array() {
        return refs
            .iter()
            .any(|target| target["kind"] == "Gateway" && target["name"] == egressctl::render::GATEWAY_API_GATEWAY.1);
    }
    match spec["selector"]["matchLabels"].as_object() {
        None => true,
        Some(labels) => {
            labels.iter().all(|(key, value)| GATEWAY_LABELS.iter().any(|(k, v)| k == key && value.as_str() == Some(v)))
        }
    }
}

/// Istio counts a gateway's listeners as CLIENT traffic: a selector for SERVER only never applies to a gateway.
/// (Port selectors name the gateway pod's ports, which the harness's listeners do not share; they are not modelled.)
fn matches_gateway_traffic(selectors: &Value) -> bool {
    match selectors.as_array() {
        None => true,
        Some(selectors) if selectors.is_empty() => true,
        Some(selectors) => selectors.iter().any(|selector| {
            matches!(selector["mode"].as_str(), None | Some("UNDEFINED") | Some("CLIENT") | Some("CLIENT_AND_SERVER"))
        }),
    }
}

/// The local module for `url`, checked against `sha256` as Istio's agent checks what it fetched.
/// `EGRESS_UNPINNED_MODULES=warn` lets a module that does not match its manifest's pin run, with a warning (`make
/// run` sets it: its build accepts any wasm-opt). Tests and CI leave it unset: a mismatch is an error.
pub const UNPINNED: &str = "EGRESS_UNPINNED_MODULES";

fn module_for(url: &str, sha256: &str, wasm_dir: &Path) -> Result<PathBuf, Error> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("oci", url));
    let (path, expected) = match scheme {
        "oci" => {
            let (repository, tag) = rest.rsplit_once(':').ok_or("an oci:// URL without a tag")?;
            let image = repository.rsplit('/').next().unwrap_or(repository);
            let path = wasm_dir.join(egressctl::render::module_file(image));
            let module = read_module(&path)?;
            (path, Image::of_module(module, tag)?.manifest_digest())
        }
        "file" | "http" | "https" => {
            let file = rest.rsplit('/').next().unwrap_or(rest);
            let path = wasm_dir.join(file);
            let digest = sha256_hex(&read_module(&path)?);
            (path, digest)
        }
        other => return Err(format!("unsupported URL scheme {other}").into()),
    };
    if sha256 != expected && std::env::var(UNPINNED).is_ok_and(|value| value == "warn") {
        // A local gateway built with another Binaryen (`make run`): the pins are the shipped images', not this one's.
        eprintln!(
            "warning: {url} is pinned to sha256 {sha256}; running the module at {} ({expected}) all the same",
            path.display()
        );
        return Ok(path);
    }
    if sha256 != expected {
        return Err(format!(
            "{url} is pinned to sha256 {sha256}, but the module built at {} gives {expected}: \
             re-render the manifests (`make manifests`) after changing a filter, and build with `make build` \
             (reproducible builds)",
            path.display()
        )
        .into());
    }
    Ok(path)
}

fn read_module(path: &Path) -> Result<Vec<u8>, Error> {
    fs::read(path).map_err(|e| format!("{}: {e} (build the filters first: `make build`)", path.display()).into())
}
