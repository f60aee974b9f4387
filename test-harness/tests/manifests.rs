//! The shipped Istio manifests: rendered from the example configurations and in sync with them, pinned to the
//! modules this checkout builds, ordered and failing as the suite needs, and loadable by a real Envoy in every
//! variant. (`crds.rs` checks them against Istio's CRD schemas; `routing.rs` checks that the routing rendered from the
//! policy is complete and no wider than it.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use egress_core::Policy;
use egress_harness::bootstrap::Gateway;
use egress_harness::envoy::{workspace_root, Launcher};
use egress_harness::istio::{self, DeployedPlugin};
use egress_harness::{gateway_bootstrap, wasm_dir, LabOptions};
use egressctl::render::{self, Release, Source, Sources};
use egressctl::{access_log, config, observability, routing};
use serde::Deserialize;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};

const MANIFESTS: &str = "wasmplugin-manifests";

/// The sources and release `make manifests` renders from.
fn rendered() -> Vec<render::File> {
    let root = workspace_root();
    // Named as the Makefile names them: the generated headers say where each configuration came from.
    let source = |path: &str| Source { path: path.into(), value: config::read_yaml(&root.join(path)).unwrap() };
    let sources = Sources {
        policy: source("examples/policy.yaml"),
        identity: source("examples/istio/identity.yaml"),
        audit: source("examples/istio/audit.yaml"),
    };
    let makefile = fs::read_to_string(root.join("Makefile")).unwrap();
    let default = |name: &str| {
        let prefix = format!("{name} ?= ");
        makefile.lines().find_map(|l| l.strip_prefix(prefix.as_str())).unwrap().trim().to_string()
    };
    let release = Release { registry: default("REGISTRY"), tag: default("VERSION"), wasm_dir: wasm_dir() };
    render::render(&sources, &release).expect("the example configurations render")
}

fn variant(dir: &str) -> PathBuf {
    workspace_root().join(MANIFESTS).join(dir)
}

fn documents(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text).map(|doc| Value::deserialize(doc).unwrap()).collect()
}

#[test]
fn the_committed_manifests_are_what_the_examples_and_the_built_modules_render() {
    let files = rendered();
    let out = workspace_root().join(MANIFESTS);
    let mut drifted = Vec::new();
    for file in &files {
        let committed = fs::read_to_string(out.join(&file.path)).unwrap_or_default();
        if committed != file.text {
            drifted.push(file.path.display().to_string());
        }
    }
    let stale = render::stale_files(&out, &files).unwrap();
    assert!(
        drifted.is_empty() && stale.is_empty(),
        "wasmplugin-manifests/ is out of sync with examples/ or with the modules this checkout builds \
         (changed: {drifted:?}, no longer rendered: {stale:?}): run `make manifests` and commit the result"
    );
}

#[test]
fn the_separate_chain_runs_identity_then_redirects_then_allowlist_then_audit_and_fails_as_each_must() {
    let chain = istio::chain(&variant("wasmplugins"), &wasm_dir()).expect("pins match the built modules");
    let layer = |network: bool| -> Vec<(&str, &str)> {
        chain.iter().filter(|p| p.network == network).map(|p| (p.root_id.as_str(), p.failure_policy)).collect()
    };
    assert_eq!(
        layer(false),
        [
            ("egress-identity", "FAIL_CLOSED"),
            // A followed redirect's hop is the redirects filter's to judge and record before the allow-list sees it.
            ("egress-redirects", "FAIL_CLOSED"),
            ("egress-allowlist", "FAIL_CLOSED"),
            ("egress-audit", "FAIL_OPEN"),
        ]
    );
    // The network audit filter comes first: Envoy creates no network filter behind one that closed the connection.
    // The identity filter refuses tunnels before the allow-list reads the SNI.
    assert_eq!(
        layer(true),
        [
            ("egress-audit-tls", "FAIL_OPEN"),
            ("egress-identity-tls", "FAIL_CLOSED"),
            ("egress-allowlist-tls", "FAIL_CLOSED")
        ]
    );

    let config = |root_id: &str| &chain.iter().find(|p| p.root_id == root_id).unwrap().config;
    let policy: Value =
        serde_yaml_ng::from_str(&fs::read_to_string(workspace_root().join("examples/policy.yaml")).unwrap()).unwrap();
    for root_id in ["egress-allowlist", "egress-allowlist-tls", "egress-redirects"] {
        assert_eq!(serde_json::from_str::<Value>(config(root_id)).unwrap(), policy, "{root_id}: one policy");
    }
    // The signing key comes from the gateway pod, which the env patch feeds from a Secret.
    let identity = chain.iter().find(|p| p.root_id == "egress-identity").unwrap();
    let key_env = serde_json::from_str::<Value>(&identity.config).unwrap()["signing"]["keyEnv"].clone();
    assert_eq!(identity.host_env_keys, [key_env.as_str().unwrap()]);
    let identity_tls = chain.iter().find(|p| p.root_id == "egress-identity-tls").unwrap();
    assert_eq!(
        (&identity_tls.config, &identity_tls.host_env_keys),
        (&identity.config, &identity.host_env_keys),
        "one VM, one configuration"
    );
    let patch = documents(&workspace_root().join(MANIFESTS).join("egressgateway-env-patch.yaml"));
    let pod_env = patch[0]["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(pod_env.contains(key_env.as_str().unwrap()), "the gateway pod provides {key_env}: {pod_env}");
}

#[test]
fn every_variant_deploys_the_same_chain() {
    let summary = |chain: Vec<DeployedPlugin>| -> Vec<String> {
        chain
            .iter()
            .map(|p| {
                let module = p.module.file_name().unwrap().to_string_lossy().to_string();
                format!(
                    "{} {} {} {} {:?} {}",
                    p.root_id, p.network, p.failure_policy, module, p.host_env_keys, p.config
                )
            })
            .collect()
    };
    let reference = summary(istio::chain(&variant("wasmplugins"), &wasm_dir()).unwrap());
    assert_eq!(reference.len(), 7);
    for dir in render::variant_dirs().filter(|dir| *dir != "suite") {
        let chain = istio::chain(&variant(dir), &wasm_dir()).unwrap_or_else(|e| panic!("{dir}: {e}"));
        assert_eq!(summary(chain), reference, "{dir}");
    }
}

/// The recommended deployment: the fused module, first in both chains, failing closed, with a section per stage
/// holding exactly the example configurations, and the signing key from the gateway pod.
#[test]
fn the_suite_is_one_filter_per_traffic_type_configured_from_the_same_files() {
    let chain = istio::chain(&variant("suite"), &wasm_dir()).expect("pins match the built modules");
    let summary: Vec<(&str, bool, &str)> =
        chain.iter().map(|p| (p.root_id.as_str(), p.network, p.failure_policy)).collect();
    assert_eq!(summary, [("egress-suite", false, "FAIL_CLOSED"), ("egress-suite-tls", true, "FAIL_CLOSED")]);
    let yaml = |path: &str| -> Value {
        serde_yaml_ng::from_str(&fs::read_to_string(workspace_root().join(path)).unwrap()).unwrap()
    };
    for plugin in &chain {
        let sections: Value = serde_json::from_str(&plugin.config).unwrap();
        assert_eq!(sections["policy"], yaml("examples/policy.yaml"), "{}", plugin.root_id);
        assert_eq!(sections["identity"], yaml("examples/istio/identity.yaml"), "{}", plugin.root_id);
        assert_eq!(sections["audit"], yaml("examples/istio/audit.yaml"), "{}", plugin.root_id);
        assert_eq!(plugin.host_env_keys, [sections["identity"]["signing"]["keyEnv"].as_str().unwrap()]);
    }
    let top = &documents(&workspace_root().join(MANIFESTS).join("kustomization.yaml"))[0];
    let resources: Vec<&str> = top["resources"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    assert!(
        resources.contains(&"suite") && !resources.contains(&"wasmplugins"),
        "the recommended deployment: {resources:?}"
    );
}

#[test]
fn redirects_are_followed_as_far_as_the_policy_allows() {
    let chain = istio::chain(&variant("wasmplugins"), &wasm_dir()).unwrap();
    let allowlist = chain.iter().find(|p| p.root_id == "egress-allowlist").unwrap();
    let policy = Policy::from_json(allowlist.config.as_bytes()).unwrap();
    let envoy_filter = &documents(&workspace_root().join(MANIFESTS).join(render::FOLLOW_REDIRECTS_FILE))[0];
    let patch = &envoy_filter["spec"]["configPatches"][0];
    let internal_redirects = &patch["patch"]["value"]["route"]["internal_redirect_policy"];
    assert_eq!(internal_redirects["max_internal_redirects"].as_u64(), policy.follow_route_hops().map(u64::from));
    assert_eq!(internal_redirects["allow_cross_scheme_redirect"], true, "the filter vets schemes itself");

    // It merges into route configurations that exist: the gateway's port-80 server, where every policy host is
    // routed over mesh mTLS (`https.80.…`, which Istio's EnvoyFilter matching reads as port 80).
    let port = &patch["match"]["routeConfiguration"]["portNumber"];
    assert_eq!((&patch["applyTo"], &patch["match"]["context"]), (&Value::from("HTTP_ROUTE"), &Value::from("GATEWAY")));
    assert_eq!(envoy_filter["spec"]["workloadSelector"]["labels"], serde_json::json!({"istio": "egressgateway"}));
    let gateway = documents_in(routing::CLASSIC_DIR).into_iter().find(|(_, d)| d["kind"] == "Gateway").unwrap().1;
    let server = gateway["spec"]["servers"].as_array().unwrap().iter().find(|s| s["port"]["number"] == *port).unwrap();
    assert_eq!(
        (&server["port"]["protocol"], &server["tls"]["mode"]),
        (&Value::from("HTTPS"), &Value::from("ISTIO_MUTUAL"))
    );
    // The Gateway API set carries the same following for its own Gateway.
    let own = documents_in(routing::GATEWAY_API_DIR)
        .into_iter()
        .find(|(file, _)| file == render::FOLLOW_REDIRECTS_FILE)
        .expect("the Gateway API routing follows redirects too")
        .1;
    assert_eq!(own["spec"]["configPatches"], envoy_filter["spec"]["configPatches"], "the same patch");
    assert_eq!(own["spec"]["targetRefs"][0]["name"], render::GATEWAY_API_GATEWAY.1);
}

/// `render` writes every folder and file its kustomizations list: `kubectl apply -k` on its output alone works.
#[test]
fn every_kustomization_render_writes_lists_what_it_writes() {
    let files = rendered();
    let written = |path: &Path| files.iter().any(|f| f.path == path || f.path == path.join("kustomization.yaml"));
    let mut checked = 0;
    for file in files.iter().filter(|f| f.path.file_name().is_some_and(|n| n == "kustomization.yaml")) {
        let kustomization: Value = serde_yaml_ng::from_str(&file.text).unwrap();
        let dir = file.path.parent().unwrap();
        for resource in kustomization["resources"].as_array().unwrap() {
            let target = dir.join(resource.as_str().unwrap());
            assert!(written(&target), "{}: {} is not rendered", file.path.display(), target.display());
        }
        checked += 1;
    }
    assert!(
        checked >= 10,
        "the top-level, two routing, five variant, collector and telemetry kustomizations: {checked}"
    );
}

#[test]
fn every_kustomization_lists_files_that_exist() {
    let mut checked = 0;
    let mut pending = vec![workspace_root().join(MANIFESTS)];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.file_name().is_some_and(|n| n == "kustomization.yaml") {
                let kustomization = &documents(&path)[0];
                for resource in kustomization["resources"].as_array().unwrap() {
                    let target = dir.join(resource.as_str().unwrap());
                    let exists = target.is_file() || target.join("kustomization.yaml").is_file();
                    assert!(exists, "{}: resource {resource} does not exist", path.display());
                }
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 10,
        "the top-level, two routing, five variant, collector and telemetry kustomizations: {checked}"
    );
}

/// Envoy itself loads every variant's chain with the deployed configurations: modules, root ids, and each
/// filter's own validation of its pluginConfig (`on_configure`).
#[test]
fn envoy_loads_every_variant_as_deployed() {
    let launcher = Launcher::find().unwrap();
    let key = vec![("EGRESS_ASSERTION_KEY".to_string(), "k".repeat(64))];
    for dir in render::variant_dirs() {
        let mut options = LabOptions::deployed(&variant(dir), key.clone()).unwrap();
        options.collector = Some(([127, 0, 0, 1], 9).into());
        let bootstrap = gateway_bootstrap(&options).unwrap();
        let mut envoy = launcher.clone();
        envoy.env.extend(key.iter().cloned());
        envoy.validate(&bootstrap).unwrap_or_else(|e| panic!("{dir}: Envoy refuses the deployed chain: {e}"));
    }
}

/// Every document of every YAML file in `dir`, by file name (comment-only preambles left out).
fn documents_in(dir: &str) -> Vec<(String, Value)> {
    let mut found = Vec::new();
    let mut files: Vec<PathBuf> = fs::read_dir(variant(dir)).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        found.extend(documents(&file).into_iter().filter(|d| !d.is_null()).map(|d| (name.clone(), d)));
    }
    found
}

fn object<'a>(documents: &'a [(String, Value)], kind: &str) -> &'a Value {
    let mut of_kind = documents.iter().filter(|(_, d)| d["kind"] == kind);
    let (_, found) = of_kind.next().unwrap_or_else(|| panic!("no {kind}"));
    assert!(of_kind.next().is_none(), "one {kind}");
    found
}

/// The collector's Kubernetes objects have the shape the API server wants and point at each other: selectors
/// match the pod's labels, every Service port reaches a container port, the pipeline's receivers listen on them.
#[test]
fn the_collector_manifests_are_well_formed_and_wired_together() {
    use egressctl::observability::{COLLECTOR_NAME, COLLECTOR_NAMESPACE, OTLP_GRPC_PORT, OTLP_HTTP_PORT};
    let documents = documents_in(observability::COLLECTOR_DIR);
    for (file, document) in &documents {
        let (api_version, kind) = (document["apiVersion"].as_str(), document["kind"].as_str().unwrap_or_default());
        let expected = match kind {
            "Namespace" | "ConfigMap" | "Service" => "v1",
            "Deployment" => "apps/v1",
            "Kustomization" => "kustomize.config.k8s.io/v1beta1",
            other => panic!("{file}: unexpected kind {other}"),
        };
        assert_eq!(api_version, Some(expected), "{file}");
        if kind == "Kustomization" {
            continue;
        }
        let name = document["metadata"]["name"].as_str();
        if kind == "Namespace" {
            assert_eq!(name, Some(COLLECTOR_NAMESPACE), "{file}");
        } else {
            assert_eq!(
                (name, document["metadata"]["namespace"].as_str()),
                (Some(COLLECTOR_NAME), Some(COLLECTOR_NAMESPACE))
            );
        }
    }
    let mut kustomized: Vec<&str> = object(&documents, "Kustomization")["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let mut files: Vec<&str> =
        documents.iter().filter(|(_, d)| d["kind"] != "Kustomization").map(|(f, _)| f.as_str()).collect();
    files.dedup();
    kustomized.sort_unstable();
    assert_eq!(kustomized, files, "the kustomization applies every object");

    let deployment = object(&documents, "Deployment");
    let pod = &deployment["spec"]["template"];
    let pod_labels = pod["metadata"]["labels"].as_object().unwrap();
    let matches = |selector: &Value| {
        let selector = selector.as_object().unwrap();
        !selector.is_empty() && selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
    };
    assert!(matches(&deployment["spec"]["selector"]["matchLabels"]), "the Deployment selects its own pods");
    let containers = pod["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    let image = container["image"].as_str().unwrap();
    let tag = image.strip_prefix("otel/opentelemetry-collector-contrib:").expect("the contrib collector");
    assert!(tag.split('.').all(|part| part.parse::<u32>().is_ok()), "pinned to a release: {image}");
    let container_ports: Vec<(&str, u64)> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["containerPort"].as_u64().unwrap()))
        .collect();

    let service = object(&documents, "Service");
    assert!(matches(&service["spec"]["selector"]), "the Service selects the collector's pods");
    let mut service_ports = Vec::new();
    for port in service["spec"]["ports"].as_array().unwrap() {
        let target = &port["targetPort"];
        let reached = container_ports.iter().any(|(name, number)| target == *name || target.as_u64() == Some(*number));
        assert!(reached, "Service port {port} reaches no container port of {container_ports:?}");
        // Istio reads the protocol from the port name's prefix or appProtocol; both must agree.
        let name = port["name"].as_str().unwrap();
        let protocol = port["appProtocol"].as_str().unwrap();
        assert!(name.starts_with(&format!("{protocol}-")), "{name} vs appProtocol {protocol}");
        service_ports.push((port["port"].as_u64().unwrap(), protocol));
    }
    assert_eq!(service_ports, [(u64::from(OTLP_HTTP_PORT), "http"), (u64::from(OTLP_GRPC_PORT), "grpc")]);

    // The pipeline: the collector reads its configuration from the mounted ConfigMap, receives OTLP on the ports
    // the Service exposes, and exports logs to its own log (debug) and a file.
    let config_map = object(&documents, "ConfigMap");
    let volume = pod["spec"]["volumes"].as_array().unwrap().iter().find(|v| !v["configMap"].is_null()).unwrap();
    assert_eq!(volume["configMap"]["name"], config_map["metadata"]["name"]);
    let mount = container["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == volume["name"]).unwrap();
    let config_path = format!("{}/config.yaml", mount["mountPath"].as_str().unwrap());
    assert!(container["args"].as_array().unwrap().iter().any(|a| *a == format!("--config={config_path}")));
    let config: Value = serde_yaml_ng::from_str(config_map["data"]["config.yaml"].as_str().unwrap()).unwrap();
    let protocols = &config["receivers"]["otlp"]["protocols"];
    for (protocol, port) in [("http", OTLP_HTTP_PORT), ("grpc", OTLP_GRPC_PORT)] {
        assert_eq!(protocols[protocol]["endpoint"], format!("0.0.0.0:{port}"), "all interfaces, not localhost");
    }
    let logs = &config["service"]["pipelines"]["logs"];
    assert_eq!(logs["receivers"], serde_json::json!(["otlp"]));
    for exporter in logs["exporters"].as_array().unwrap() {
        assert!(!config["exporters"][exporter.as_str().unwrap()].is_null(), "{exporter} is configured");
    }
    assert!(logs["exporters"].as_array().unwrap().iter().any(|e| e == "debug"), "kubectl logs shows the records");
    let file = config["exporters"]["file"]["path"].as_str().unwrap();
    let data = container["volumeMounts"].as_array().unwrap().iter().any(|m| {
        let dir = m["mountPath"].as_str().unwrap();
        file.starts_with(&format!("{dir}/")) && m["name"] != volume["name"]
    });
    assert!(data, "the file exporter writes to a writable volume, the root filesystem is read-only");
}

/// `outbound|<port>||<service>.<namespace>.svc.cluster.local`, as Istio names a Service port's cluster.
fn service_port_of(cluster: &str) -> (String, String, u64) {
    let parts: Vec<&str> = cluster.split('|').collect();
    let [direction, port, subset, host] = parts.as_slice() else { panic!("not an Istio cluster name: {cluster}") };
    assert_eq!((*direction, *subset), ("outbound", ""), "{cluster}");
    let service = host.strip_suffix(".svc.cluster.local").unwrap_or_else(|| panic!("not a Service: {cluster}"));
    let (name, namespace) = service.split_once('.').unwrap();
    (name.to_string(), namespace.to_string(), port.parse().unwrap())
}

/// The port of the rendered collector's Service `name.namespace` numbered `port`, if there is one.
fn collector_port(name: &str, namespace: &str, port: u64) -> Option<Value> {
    let documents = documents_in(observability::COLLECTOR_DIR);
    let service = object(&documents, "Service");
    let ports = service["spec"]["ports"].as_array().unwrap();
    let ours = service["metadata"]["name"] == name && service["metadata"]["namespace"] == namespace;
    ports.iter().find(|p| ours && p["port"] == port).cloned()
}

/// The walkthrough's audit configuration ships to the collector the manifests deploy: its cluster names the
/// Service's OTLP/HTTP port, on the path that receiver serves.
#[test]
fn the_istio_audit_configuration_ships_to_the_rendered_collector() {
    let audit: Value =
        serde_yaml_ng::from_str(&fs::read_to_string(workspace_root().join("examples/istio/audit.yaml")).unwrap())
            .unwrap();
    let collector = &audit["collector"];
    let cluster = collector["cluster"].as_str().expect("examples/istio/audit.yaml: collector.cluster");
    assert_eq!(cluster, observability::audit_cluster());
    let (name, namespace, port) = service_port_of(cluster);
    let port = collector_port(&name, &namespace, port)
        .unwrap_or_else(|| panic!("collector.cluster {cluster}: no such port of the rendered collector's Service"));
    assert_eq!(port["appProtocol"], "http", "OTLP/HTTP");
    // The OTLP/HTTP receiver serves logs at /v1/logs (the audit configuration's default).
    assert!(matches!(collector["path"].as_str(), None | Some("/v1/logs")), "collector.path: {}", collector["path"]);
}

/// The native path: the Telemetry enables providers the mesh configuration defines; both forms of the mesh
/// configuration define the same providers; their fields are the lab's access-log line (the one definition,
/// `egressctl::access_log`); the OpenTelemetry provider sends to the collector's gRPC port.
#[test]
fn the_telemetry_names_providers_the_mesh_configuration_defines_with_the_labs_format() {
    let documents = documents_in(observability::TELEMETRY_DIR);
    let kustomized = &object(&documents, "Kustomization")["resources"];
    assert_eq!(*kustomized, serde_json::json!(["telemetry.yaml"]), "only cluster resources are applied");
    let telemetry = object(&documents, "Telemetry");
    assert_eq!(telemetry["spec"]["selector"]["matchLabels"], serde_json::json!({"istio": "egressgateway"}));
    assert_eq!(telemetry["metadata"]["namespace"], "istio-system", "the gateway's namespace");
    let operator = object(&documents, "IstioOperator");
    assert_eq!(operator["apiVersion"], "install.istio.io/v1alpha1");
    let providers = &operator["spec"]["meshConfig"]["extensionProviders"];
    let (_, helm_values) = documents.iter().find(|(file, _)| file == "istiod-values.yaml").unwrap();
    assert_eq!(&helm_values["meshConfig"]["extensionProviders"], providers, "istioctl and Helm: the same providers");
    let provider = |name: &str| providers.as_array().unwrap().iter().find(|p| p["name"] == name).cloned();

    let enabled: Vec<&Value> = telemetry["spec"]["accessLogging"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|logging| logging["providers"].as_array().unwrap())
        .collect();
    assert!(!enabled.is_empty());
    for reference in enabled {
        let name = reference["name"].as_str().unwrap();
        assert!(provider(name).is_some(), "the Telemetry enables {name}, which the mesh configuration lacks");
    }

    // The lab's line: what the harness's bootstrap writes, but for the lab's `listener` field.
    let gateway = Gateway {
        listen: ([127, 0, 0, 1], 0).into(),
        tls_listen: ([127, 0, 0, 1], 0).into(),
        mtls_port: 0,
        http_plugins: Vec::new(),
        tls_plugins: Vec::new(),
        mtls: None,
        forward_client_cert: false,
        follow_redirects: None,
        path_normalization: Default::default(),
        echo_http: ([127, 0, 0, 1], 9).into(),
        echo_https: ([127, 0, 0, 1], 9).into(),
        collector: None,
        access_log: PathBuf::from("/dev/null"),
    };
    let bootstrap = gateway.render();
    let hcm = &bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    let mut lab = hcm["access_log"][0]["typed_config"]["log_format"]["json_format"].clone();
    assert_eq!(lab.as_object_mut().unwrap().remove("listener"), Some(Value::from("egress_http")));
    let definition: serde_json::Map<String, Value> =
        access_log::fields().into_iter().map(|(name, operator)| (name.into(), operator.into())).collect();
    assert_eq!(lab, Value::Object(definition), "the lab writes the one definition");
    for state in ["decision", "identity", "redirects"] {
        assert_eq!(lab[state], format!("%FILTER_STATE(wasm.egress.{state}:PLAIN)%"));
    }

    let file = provider(access_log::FILE_PROVIDER).unwrap();
    assert_eq!(file["envoyFileAccessLog"]["logFormat"]["labels"], lab, "Istio's JSON access log is the lab's");
    assert_eq!(file["envoyFileAccessLog"]["path"], "/dev/stdout", "kubectl logs shows it");
    let otel = &provider(access_log::OTEL_PROVIDER).unwrap()["envoyOtelAls"];
    assert_eq!(otel["logFormat"]["labels"], lab, "the OpenTelemetry records' attributes are the lab's fields");
    let (name, namespace) =
        otel["service"].as_str().unwrap().strip_suffix(".svc.cluster.local").unwrap().split_once('.').unwrap();
    let port = collector_port(name, namespace, otel["port"].as_u64().unwrap())
        .unwrap_or_else(|| panic!("{otel}: no such port of the rendered collector's Service"));
    assert_eq!(port["appProtocol"], "grpc", "Envoy's OpenTelemetry access logger speaks OTLP/gRPC");

    // What makes the gateway's log show the audit stage's lines.
    assert_eq!(operator["spec"]["values"]["global"]["proxy"]["componentLogLevel"], observability::COMPONENT_LOG_LEVEL);
    assert!(observability::COMPONENT_LOG_LEVEL.split(',').any(|level| level == "wasm:info"));
}
