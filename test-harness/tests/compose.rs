#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The docker-compose gateway, as far as it can be checked without a container engine: the committed bootstrap is
//! what the renderer gives; Envoy (the pinned version, which the image runs) accepts it once the container's module
//! directory is mapped to the local build; `docker-compose.yaml` mounts what the bootstrap needs and resolves
//! (`docker-compose config`, when a compose CLI is installed). Whether the containers then run is not tested here.

use egress_core::{Action, Caller, Policy, Reason};
use egress_harness::bootstrap::{ECHO_HTTPS_CLUSTER, ECHO_HTTP_CLUSTER, HTTP_LISTENER, TLS_LISTENER};
use egress_harness::compose::{
    compose_config_yaml, config_path, ADMIN_PORT, CONFIG_FILE, CONTAINER_WASM_DIR, HTTP_PORT, REGENERATE_COMMAND,
    SIGNING_KEY_ENV, TLS_PORT, TLS_PUBLISHED_PORT, UPSTREAM_HOST, UPSTREAM_PORT,
};
use egress_harness::envoy::{run_dir, workspace_root, Launcher, PINNED_VERSION};
use egress_harness::{load_policy, wasm_dir, SUITE_ROOT_ID};
use serde_json::{Map, Value};
use std::fs;
use std::process::{Command, Output};

/// A signing key of the shape `openssl rand -hex 32` gives, for Envoy's environment.
const TEST_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
/// Where `docker-compose.yaml` mounts the bootstrap in the gateway container.
const CONTAINER_CONFIG: &str = "/etc/envoy/envoy.yaml";

fn committed_config() -> String {
    fs::read_to_string(config_path())
        .unwrap_or_else(|e| panic!("{CONFIG_FILE}: {e}; generate it with\n  {REGENERATE_COMMAND}"))
}

/// The committed bootstrap with the local build's modules in place of the container's mount point.
fn config_with_local_modules() -> String {
    committed_config().replace(&format!("{CONTAINER_WASM_DIR}/"), &format!("{}/", wasm_dir().display()))
}

/// Every JSON object in `value`, outermost first.
fn objects(value: &Value) -> Vec<&Map<String, Value>> {
    match value {
        Value::Object(object) => std::iter::once(object).chain(object.values().flat_map(objects)).collect(),
        Value::Array(items) => items.iter().flat_map(objects).collect(),
        _ => Vec::new(),
    }
}

/// The module files the bootstrap's Wasm filters load.
fn module_paths(bootstrap: &Value) -> Vec<String> {
    let filenames = objects(bootstrap).into_iter().filter_map(|object| object.get("vm_config"));
    filenames.map(|vm| vm["code"]["local"]["filename"].as_str().unwrap_or_default().to_string()).collect()
}

fn output_text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[test]
fn committed_config_is_what_the_renderer_gives() {
    let rendered = compose_config_yaml().expect("renders (build the filters first: `make build`)");
    let committed = committed_config();
    if committed != rendered {
        let (old, new) = (committed.lines().count(), rendered.lines().count());
        let line = committed.lines().zip(rendered.lines()).position(|(a, b)| a != b).unwrap_or(old.min(new)) + 1;
        panic!("{CONFIG_FILE} is stale (first difference on line {line}): regenerate it with\n  {REGENERATE_COMMAND}");
    }
}

#[test]
fn config_is_the_lab_gateway_adapted_to_containers() {
    let bootstrap: Value = serde_yaml_ng::from_str(&committed_config()).unwrap();
    let listeners: Vec<(&str, &str, u64)> = bootstrap["static_resources"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|listener| {
            let address = &listener["address"]["socket_address"];
            let name = listener["name"].as_str().unwrap();
            (name, address["address"].as_str().unwrap(), address["port_value"].as_u64().unwrap())
        })
        .collect();
    let http_port = u64::from(HTTP_PORT);
    // No mTLS listener: compose has no certificates for it.
    assert_eq!(listeners, [(HTTP_LISTENER, "0.0.0.0", http_port), (TLS_LISTENER, "0.0.0.0", TLS_PORT.into())]);
    let admin = &bootstrap["admin"]["address"]["socket_address"];
    assert_eq!((admin["address"].as_str(), admin["port_value"].as_u64()), (Some("127.0.0.1"), Some(ADMIN_PORT.into())));

    let clusters = bootstrap["static_resources"]["clusters"].as_array().unwrap();
    let names: Vec<&str> = clusters.iter().map(|cluster| cluster["name"].as_str().unwrap()).collect();
    assert_eq!(names, [ECHO_HTTP_CLUSTER, ECHO_HTTPS_CLUSTER]);
    for cluster in clusters {
        let endpoint = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"];
        assert_eq!(cluster["type"], "STRICT_DNS", "{cluster}");
        assert_eq!(endpoint["socket_address"]["address"], UPSTREAM_HOST, "{cluster}");
        assert_eq!(endpoint["socket_address"]["port_value"], UPSTREAM_PORT, "{cluster}");
    }

    let modules = module_paths(&bootstrap);
    assert_eq!(modules.len(), 2, "the suite, for HTTP and for TLS passthrough: {modules:?}");
    for module in &modules {
        let file = module.strip_prefix(&format!("{CONTAINER_WASM_DIR}/")).unwrap_or_else(|| panic!("{module}"));
        assert!(wasm_dir().join(file).is_file(), "{module} is no module of the local build (`make build`)");
    }

    let access_logs: Vec<&Value> = objects(&bootstrap)
        .into_iter()
        .filter(|object| object.get("@type").and_then(Value::as_str).is_some_and(|t| t.ends_with(".FileAccessLog")))
        .filter_map(|object| object.get("path"))
        .collect();
    assert_eq!(access_logs, [&Value::from("/dev/stdout"), &Value::from("/dev/stdout")]);

    // The key comes from the container's environment only; the file holds no key.
    let identity = objects(&bootstrap)
        .into_iter()
        .find(|object| object.get("root_id").and_then(Value::as_str) == Some(SUITE_ROOT_ID))
        .expect("the suite, whose identity stage signs");
    let environment = &identity["vm_config"]["environment_variables"];
    assert_eq!(environment["host_env_keys"], serde_json::json!([SIGNING_KEY_ENV]));
    assert_eq!(environment["key_values"], serde_json::json!({}));
}

#[test]
fn envoy_accepts_config_with_local_modules() {
    let bootstrap: Value = serde_yaml_ng::from_str(&config_with_local_modules()).unwrap();
    let mut launcher = Launcher::find().expect("an Envoy");
    launcher.env.push((SIGNING_KEY_ENV.to_string(), TEST_KEY.to_string()));
    launcher.validate(&bootstrap).unwrap_or_else(|log| panic!("Envoy refuses {CONFIG_FILE}:\n{log}"));
}

/// The container gives Envoy the YAML file itself (`Launcher::validate` writes JSON), and the signing key only if
/// `EGRESS_ASSERTION_KEY` reaches the container: without it, the identity filter must refuse to start.
#[test]
fn envoy_reads_the_yaml_and_needs_the_signing_key() {
    let launcher = Launcher::find().expect("an Envoy");
    let dir = run_dir().unwrap();
    let config = dir.join("envoy.yaml");
    fs::write(&config, config_with_local_modules()).unwrap();
    let validate = |key: Option<&str>| {
        let mut command = Command::new(&launcher.program);
        command.args(&launcher.prefix_args).envs(launcher.env.iter().map(|(name, value)| (name, value)));
        command.args(["--mode", "validate", "--use-dynamic-base-id", "-c"]).arg(&config);
        match key {
            Some(key) => command.env(SIGNING_KEY_ENV, key),
            None => command.env_remove(SIGNING_KEY_ENV),
        };
        command.output().unwrap_or_else(|e| panic!("cannot run {}: {e}", launcher.program.display()))
    };

    let with_key = validate(Some(TEST_KEY));
    assert!(with_key.status.success(), "Envoy refuses {CONFIG_FILE} as YAML:\n{}", output_text(&with_key));
    let without_key = validate(None);
    let log = output_text(&without_key);
    assert!(!without_key.status.success() && log.contains(SIGNING_KEY_ENV), "accepted without the key:\n{log}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn compose_file_runs_the_pinned_envoy_on_the_committed_config() {
    let root = workspace_root();
    let compose: Value = serde_yaml_ng::from_str(&fs::read_to_string(root.join("docker-compose.yaml")).unwrap())
        .expect("docker-compose.yaml is YAML");
    let gateway = &compose["services"]["gateway"];
    let image = format!("envoyproxy/envoy:v{}", PINNED_VERSION.trim());
    assert_eq!(gateway["image"], image.as_str(), "the Envoy of test-harness/envoy-version");
    let command: Vec<&str> = gateway["command"].as_array().unwrap().iter().map(|arg| arg.as_str().unwrap()).collect();
    assert_eq!(command[..3], ["envoy", "-c", CONTAINER_CONFIG]);

    let volumes: Vec<Vec<&str>> =
        gateway["volumes"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().split(':').collect()).collect();
    let config_source = format!("./{CONFIG_FILE}");
    let wasm_source = "./target/wasm32-wasip1/release";
    assert_eq!(volumes, [[config_source.as_str(), CONTAINER_CONFIG, "ro"], [wasm_source, CONTAINER_WASM_DIR, "ro"]]);
    assert!(root.join(CONFIG_FILE).is_file(), "{CONFIG_FILE} is committed");
    // The modules are build outputs: every one the bootstrap loads must be where the mount takes them from.
    let bootstrap: Value = serde_yaml_ng::from_str(&committed_config()).unwrap();
    for module in module_paths(&bootstrap) {
        let file = module.strip_prefix(&format!("{CONTAINER_WASM_DIR}/")).unwrap_or_else(|| panic!("{module}"));
        let local = root.join(wasm_source).join(file);
        assert!(local.is_file(), "{} is missing: `make build`", local.display());
    }

    let key = gateway["environment"][SIGNING_KEY_ENV].as_str().unwrap_or_default();
    assert!(key.starts_with(&format!("${{{SIGNING_KEY_ENV}:?")), "the key is required, never defaulted: {key}");
    let ports: Vec<&str> = gateway["ports"].as_array().unwrap().iter().map(|port| port.as_str().unwrap()).collect();
    assert_eq!(
        ports,
        [format!("127.0.0.1:{HTTP_PORT}:{HTTP_PORT}"), format!("127.0.0.1:{TLS_PUBLISHED_PORT}:{TLS_PORT}")]
    );
    let upstream = compose["services"][UPSTREAM_HOST]["image"].as_str().unwrap_or_default();
    assert!(upstream.starts_with("mccutchen/go-httpbin:v"), "the demo upstream serves HTTP on {UPSTREAM_PORT}");
}

/// The passthrough listener is the one the example policy's `gatewayPorts` maps to 443: a connection through it is
/// judged, and recorded, as one to the 443 apps dial (a rule with `ports: [443]` lets it through).
#[test]
fn tls_passthrough_is_judged_as_443() {
    let policy = load_policy(&workspace_root().join("examples/policy.yaml")).unwrap();
    let policy = Policy::from_json(policy.as_bytes()).unwrap();
    let decision = policy.evaluate_tls(Some("ec2.eu-west-1.amazonaws.com"), TLS_PORT, Caller::ANONYMOUS);
    assert_eq!((decision.action, decision.rule), (Action::Allow, Some("aws-ec2")));
    assert_eq!(decision.destination.map(|d| d.port), Some(443));
    let unmapped = policy.evaluate_tls(Some("ec2.eu-west-1.amazonaws.com"), TLS_PUBLISHED_PORT, Caller::ANONYMOUS);
    assert_eq!(unmapped.reason, Reason::PortNotAllowed, "the published port is not what the gateway sees");
}

/// The compose CLI's own reading of the file: interpolation, the schema, the required key.
#[test]
fn docker_compose_accepts_the_file() {
    let installed = [["docker-compose", "version"].as_slice(), &["docker", "compose", "version"]]
        .into_iter()
        .find(|cli| Command::new(cli[0]).args(&cli[1..]).output().is_ok_and(|output| output.status.success()));
    let Some(cli) = installed else {
        println!("SKIPPED: no docker-compose (apt-get install docker-compose)");
        return;
    };
    let cli = &cli[..cli.len() - 1];
    let config = |key: Option<&str>| {
        let mut command = Command::new(cli[0]);
        command.args(&cli[1..]).args(["-f", "docker-compose.yaml", "config"]).current_dir(workspace_root());
        match key {
            Some(key) => command.env(SIGNING_KEY_ENV, key),
            None => command.env_remove(SIGNING_KEY_ENV),
        };
        command.output().unwrap()
    };

    let resolved = config(Some(TEST_KEY));
    let text = output_text(&resolved);
    assert!(resolved.status.success(), "{} config fails:\n{text}", cli.join(" "));
    assert!(text.contains(&format!("envoyproxy/envoy:v{}", PINNED_VERSION.trim())), "{text}");
    let without_key = config(None);
    let text = output_text(&without_key);
    assert!(!without_key.status.success() && text.contains(SIGNING_KEY_ENV), "resolves without the key:\n{text}");
}
