//! Where the suite's records go on Istio, rendered beside the plugins by `egressctl render`:
//!
//! - `collector/`: an OpenTelemetry Collector (namespace `observability`) that receives OTLP over HTTP (4318: the
//!   audit stage's batches, `POST /v1/logs`) and gRPC (4317: Envoy's OpenTelemetry access logger), and writes what
//!   it receives to its own log (`debug` exporter, so `kubectl logs` shows it) and to a file (`file` exporter, an
//!   example of a real sink). The audit configuration's `collector.cluster` names its Service port
//!   ([`audit_cluster`]);
//! - `telemetry/`: the native path, Envoy's access log carrying the suite's filter-state records
//!   ([`crate::access_log`]): a `Telemetry` resource enabling an access-log provider on the egress gateway, and the
//!   mesh configuration that defines the providers (an `istioctl install` overlay and the same as istiod Helm
//!   values; MeshConfig is install-time configuration, not a cluster resource).

use crate::access_log;
use crate::render::{comment, kustomization, map, File, GATEWAY_LABEL, GATEWAY_NAMESPACE};
use serde_yaml_ng::Value;
use std::path::{Path, PathBuf};

pub const COLLECTOR_DIR: &str = "collector";
pub const TELEMETRY_DIR: &str = "telemetry";
/// The collector's Deployment, Service and ConfigMap name, and its namespace.
pub const COLLECTOR_NAME: &str = "otel-collector";
pub const COLLECTOR_NAMESPACE: &str = "observability";
/// OTLP's registered ports: HTTP (the audit stage's batches) and gRPC (Envoy's OpenTelemetry access logger, which
/// speaks gRPC only).
pub const OTLP_HTTP_PORT: u16 = 4318;
pub const OTLP_GRPC_PORT: u16 = 4317;
/// The collector image, pinned (the contrib distribution: it has the `file` exporter).
pub const COLLECTOR_IMAGE: &str = "otel/opentelemetry-collector-contrib:0.162.0";
/// Where the `file` exporter writes, on a volume of the collector pod.
const FILE_EXPORT_DIR: &str = "/var/lib/otelcol";
const HEALTH_PORT: u16 = 13133;
/// The proxy log level that shows the audit stage's log lines (`egress-audit: {json}`, at info) and keeps Envoy's
/// `misc` component at Istio's default.
pub const COMPONENT_LOG_LEVEL: &str = "misc:error,wasm:info";

/// The collector Service's name in the mesh.
pub fn collector_host() -> String {
    format!("{COLLECTOR_NAME}.{COLLECTOR_NAMESPACE}.svc.cluster.local")
}

/// The Envoy cluster Istio makes for the collector's OTLP/HTTP port, which the audit configuration's
/// `collector.cluster` names: `outbound|4318||otel-collector.observability.svc.cluster.local`.
pub fn audit_cluster() -> String {
    format!("outbound|{OTLP_HTTP_PORT}||{}", collector_host())
}

/// The `collector/` and `telemetry/` files, each starting with `generated` (the render header).
pub fn files(generated: &str) -> Result<Vec<File>, String> {
    let mut files = collector(generated)?;
    files.extend(telemetry(generated)?);
    Ok(files)
}

fn yaml(document: &Value) -> Result<String, String> {
    serde_yaml_ng::to_string(document).map_err(|e| e.to_string())
}

/// One YAML file: the header, what it is for, the document.
fn file(dir: &str, name: &str, generated: &str, why: &str, document: &Value) -> Result<File, String> {
    let text = format!("{generated}#\n{}\n---\n{}", comment(why), yaml(document)?);
    Ok(File { path: Path::new(dir).join(name), text })
}

fn metadata(name: &str, namespace: &str) -> Value {
    map([("name", name.into()), ("namespace", namespace.into()), ("labels", map([("app", COLLECTOR_NAME.into())]))])
}

fn collector(generated: &str) -> Result<Vec<File>, String> {
    let about = format!(
        "The OpenTelemetry Collector the suite ships its records to (kubectl apply -k wasmplugin-manifests/collector;
the top-level kustomization includes it). OTLP/HTTP on {OTLP_HTTP_PORT}: the audit stage's batches (POST /v1/logs;
its collector.cluster is {}); OTLP/gRPC on {OTLP_GRPC_PORT}: Envoy's OpenTelemetry access logger (the
{} provider in ../telemetry/). Both land in the collector's own log (debug exporter):
  kubectl logs -n {COLLECTOR_NAMESPACE} deploy/{COLLECTOR_NAME} | grep egress-audit
and in {FILE_EXPORT_DIR}/egress-logs.jsonl (file exporter, OTLP JSON, one request per line), an example to
replace with a real sink (Loki, Elasticsearch, object storage …).",
        audit_cluster(),
        access_log::OTEL_PROVIDER
    );
    let config = map([
        (
            "receivers",
            map([(
                "otlp",
                map([(
                    "protocols",
                    map([
                        // The collector listens on localhost only unless told otherwise.
                        ("http", map([("endpoint", format!("0.0.0.0:{OTLP_HTTP_PORT}").into())])),
                        ("grpc", map([("endpoint", format!("0.0.0.0:{OTLP_GRPC_PORT}").into())])),
                    ]),
                )]),
            )]),
        ),
        (
            "processors",
            map([
                ("memory_limiter", map([("check_interval", "1s".into()), ("limit_percentage", 80.into())])),
                ("batch", map([])),
            ]),
        ),
        (
            "exporters",
            map([
                // `detailed` prints each record's body (the egress-audit/v1 event) and attributes.
                ("debug", map([("verbosity", "detailed".into())])),
                (
                    "file",
                    map([
                        ("path", format!("{FILE_EXPORT_DIR}/egress-logs.jsonl").into()),
                        ("rotation", map([("max_megabytes", 100.into()), ("max_backups", 3.into())])),
                    ]),
                ),
            ]),
        ),
        ("extensions", map([("health_check", map([("endpoint", format!("0.0.0.0:{HEALTH_PORT}").into())]))])),
        (
            "service",
            map([
                ("extensions", Value::Sequence(vec!["health_check".into()])),
                (
                    "pipelines",
                    map([(
                        "logs",
                        map([
                            ("receivers", Value::Sequence(vec!["otlp".into()])),
                            ("processors", Value::Sequence(vec!["memory_limiter".into(), "batch".into()])),
                            ("exporters", Value::Sequence(vec!["debug".into(), "file".into()])),
                        ]),
                    )]),
                ),
            ]),
        ),
    ]);
    let config_map = map([
        ("apiVersion", "v1".into()),
        ("kind", "ConfigMap".into()),
        ("metadata", metadata(COLLECTOR_NAME, COLLECTOR_NAMESPACE)),
        ("data", map([("config.yaml", yaml(&config)?.into())])),
    ]);
    let labels = || map([("app", COLLECTOR_NAME.into())]);
    let port = |name: &str, port: u16| {
        map([("name", name.into()), ("containerPort", port.into()), ("protocol", "TCP".into())])
    };
    let container = map([
        ("name", COLLECTOR_NAME.into()),
        ("image", COLLECTOR_IMAGE.into()),
        ("args", Value::Sequence(vec!["--config=/etc/otelcol-contrib/config.yaml".into()])),
        (
            "ports",
            Value::Sequence(vec![
                port("otlp-http", OTLP_HTTP_PORT),
                port("otlp-grpc", OTLP_GRPC_PORT),
                port("health", HEALTH_PORT),
            ]),
        ),
        ("readinessProbe", map([("httpGet", map([("path", "/".into()), ("port", HEALTH_PORT.into())]))])),
        (
            "resources",
            map([
                ("requests", map([("cpu", "50m".into()), ("memory", "128Mi".into())])),
                ("limits", map([("memory", "512Mi".into())])),
            ]),
        ),
        (
            "securityContext",
            map([
                ("runAsNonRoot", true.into()),
                ("allowPrivilegeEscalation", false.into()),
                ("readOnlyRootFilesystem", true.into()),
                ("capabilities", map([("drop", Value::Sequence(vec!["ALL".into()]))])),
            ]),
        ),
        (
            "volumeMounts",
            Value::Sequence(vec![
                map([("name", "config".into()), ("mountPath", "/etc/otelcol-contrib".into())]),
                map([("name", "data".into()), ("mountPath", FILE_EXPORT_DIR.into())]),
            ]),
        ),
    ]);
    let deployment = map([
        ("apiVersion", "apps/v1".into()),
        ("kind", "Deployment".into()),
        ("metadata", metadata(COLLECTOR_NAME, COLLECTOR_NAMESPACE)),
        (
            "spec",
            map([
                ("replicas", 1.into()),
                ("selector", map([("matchLabels", labels())])),
                (
                    "template",
                    map([
                        ("metadata", map([("labels", labels())])),
                        (
                            "spec",
                            map([
                                ("containers", Value::Sequence(vec![container])),
                                (
                                    "volumes",
                                    Value::Sequence(vec![
                                        map([
                                            ("name", "config".into()),
                                            ("configMap", map([("name", COLLECTOR_NAME.into())])),
                                        ]),
                                        map([("name", "data".into()), ("emptyDir", map([]))]),
                                    ]),
                                ),
                            ]),
                        ),
                    ]),
                ),
            ]),
        ),
    ]);
    // Port names tell Istio the protocol (http-*, grpc-*), as appProtocol does.
    let service_port = |name: &str, port: u16, protocol: &str| {
        map([
            ("name", name.into()),
            ("port", port.into()),
            ("targetPort", port.into()),
            ("protocol", "TCP".into()),
            ("appProtocol", protocol.into()),
        ])
    };
    let service = map([
        ("apiVersion", "v1".into()),
        ("kind", "Service".into()),
        ("metadata", metadata(COLLECTOR_NAME, COLLECTOR_NAMESPACE)),
        (
            "spec",
            map([
                ("selector", labels()),
                (
                    "ports",
                    Value::Sequence(vec![
                        service_port("http-otlp", OTLP_HTTP_PORT, "http"),
                        service_port("grpc-otlp", OTLP_GRPC_PORT, "grpc"),
                    ]),
                ),
            ]),
        ),
    ]);
    let namespace = map([
        ("apiVersion", "v1".into()),
        ("kind", "Namespace".into()),
        ("metadata", map([("name", COLLECTOR_NAMESPACE.into())])),
    ]);
    let header = format!("{generated}#\n{}\n", comment(&about));
    let files = vec![
        file(COLLECTOR_DIR, "namespace.yaml", generated, "The collector's namespace.", &namespace)?,
        file(
            COLLECTOR_DIR,
            "configmap.yaml",
            generated,
            "The collector's pipeline: OTLP in (HTTP and gRPC), logs out to its own log and to a file.",
            &config_map,
        )?,
        file(
            COLLECTOR_DIR,
            "deployment.yaml",
            generated,
            &format!(
                "One collector replica, image pinned ({COLLECTOR_IMAGE}); the file exporter writes to an emptyDir."
            ),
            &deployment,
        )?,
        file(
            COLLECTOR_DIR,
            "service.yaml",
            generated,
            &format!(
                "The collector's Service. Istio makes the cluster {}
for its OTLP/HTTP port, the one the audit configuration names; the {} provider
sends to its OTLP/gRPC port.",
                audit_cluster(),
                access_log::OTEL_PROVIDER
            ),
            &service,
        )?,
        File {
            path: Path::new(COLLECTOR_DIR).join("kustomization.yaml"),
            text: kustomization(&header, &["namespace.yaml", "configmap.yaml", "deployment.yaml", "service.yaml"])?,
        },
    ];
    Ok(files)
}

/// The providers of the mesh configuration: Envoy's file access log on the gateway's stdout, and the same fields
/// over OpenTelemetry to the collector.
pub fn extension_providers() -> Value {
    let labels = || map(access_log::fields().into_iter().map(|(name, operator)| (name, Value::from(operator))));
    Value::Sequence(vec![
        map([
            ("name", access_log::FILE_PROVIDER.into()),
            ("envoyFileAccessLog", map([("path", "/dev/stdout".into()), ("logFormat", map([("labels", labels())]))])),
        ]),
        map([
            ("name", access_log::OTEL_PROVIDER.into()),
            (
                "envoyOtelAls",
                map([
                    ("service", collector_host().into()),
                    ("port", OTLP_GRPC_PORT.into()),
                    ("logName", access_log::OTEL_LOG_NAME.into()),
                    ("logFormat", map([("text", access_log::otel_body().into()), ("labels", labels())])),
                ]),
            ),
        ]),
    ])
}

fn telemetry(generated: &str) -> Result<Vec<File>, String> {
    let about = format!(
        "The native path: Envoy's own access log on the egress gateway, one JSON line per request and per TLS-passthrough
connection with the suite's filter-state records (decision, identity, redirects) beside Envoy's view of the
request, for teams that want the decision in every access-log line without the audit stage and its shipper.
1. Define the providers at install: istioctl install … -f wasmplugin-manifests/telemetry/istio-operator.yaml
   (Helm: helm upgrade istiod istio/istiod -n istio-system --reuse-values -f …/telemetry/istiod-values.yaml).
2. kubectl apply -k wasmplugin-manifests/telemetry: the Telemetry (telemetry.yaml) turns the {} provider on
   for the gateway.
3. kubectl logs -n istio-system deploy/istio-egressgateway | grep '\"decision\"'
The fields are egressctl's one access-log definition (tools/egressctl/src/access_log.rs), the ones `make run` writes.",
        access_log::FILE_PROVIDER
    );
    let telemetry = map([
        ("apiVersion", "telemetry.istio.io/v1".into()),
        ("kind", "Telemetry".into()),
        ("metadata", map([("name", access_log::FILE_PROVIDER.into()), ("namespace", GATEWAY_NAMESPACE.into())])),
        (
            "spec",
            map([
                ("selector", map([("matchLabels", map([(GATEWAY_LABEL.0, GATEWAY_LABEL.1.into())]))])),
                (
                    "accessLogging",
                    Value::Sequence(vec![map([(
                        "providers",
                        Value::Sequence(vec![map([("name", access_log::FILE_PROVIDER.into())])]),
                    )])]),
                ),
            ]),
        ),
    ]);
    let operator = map([
        ("apiVersion", "install.istio.io/v1alpha1".into()),
        ("kind", "IstioOperator".into()),
        (
            "spec",
            map([
                ("meshConfig", map([("extensionProviders", extension_providers())])),
                (
                    "values",
                    map([("global", map([("proxy", map([("componentLogLevel", COMPONENT_LOG_LEVEL.into())]))]))]),
                ),
            ]),
        ),
    ]);
    let values = map([("meshConfig", map([("extensionProviders", extension_providers())]))]);
    let header = format!("{generated}#\n{}\n", comment(&about));
    Ok(vec![
        file(
            TELEMETRY_DIR,
            "telemetry.yaml",
            generated,
            &format!(
                "Turns the {} provider on for the egress gateway's proxies (a Telemetry with a selector applies to the
workloads of its own namespace). To send the same lines to the collector instead, or as well, name {} here
(its service and port: ../collector/). Istio ignores a provider the mesh configuration does not define: install
istio-operator.yaml (or istiod-values.yaml) first.",
                access_log::FILE_PROVIDER,
                access_log::OTEL_PROVIDER
            ),
            &telemetry,
        )?,
        file(
            TELEMETRY_DIR,
            "istio-operator.yaml",
            generated,
            &format!(
                "An istioctl install overlay (not a cluster resource: not in the kustomization). Pass it with -f next to
your other settings; its lists replace, not extend, the same lists in earlier files.
- meshConfig.extensionProviders: {} (envoyFileAccessLog, JSON lines on the proxy's stdout) and {}
  (envoyOtelAls, the same fields as OpenTelemetry log attributes, OTLP/gRPC to the collector);
- values.global.proxy.componentLogLevel: {COMPONENT_LOG_LEVEL}, so the gateway's log shows the audit stage's
  `egress-audit: {{json}}` lines (Istio's default, misc:error at level warning, hides info). The egress
  gateway istioctl installs is not injected: its Deployment takes this value as --proxyComponentLogLevel, and
  a pod annotation sidecar.istio.io/componentLogLevel would be ignored there (it applies to injected gateways:
  the istio/gateway Helm chart, injectionTemplate: gateway, Gateway API deployments). The value is the
  default of every proxy installed or injected afterwards.",
                access_log::FILE_PROVIDER,
                access_log::OTEL_PROVIDER
            ),
            &operator,
        )?,
        file(
            TELEMETRY_DIR,
            "istiod-values.yaml",
            generated,
            &format!(
                "The same providers as Helm values of the istiod chart (not a cluster resource: not in the kustomization).
For a gateway deployed by the istio/gateway chart, show the audit stage's log lines with its value
podAnnotations: {{sidecar.istio.io/componentLogLevel: \"{COMPONENT_LOG_LEVEL}\"}}."
            ),
            &values,
        )?,
        File { path: PathBuf::from(TELEMETRY_DIR).join("kustomization.yaml"), text: kustomization(&header, &["telemetry.yaml"])? },
    ])
}
