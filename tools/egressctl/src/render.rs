//! `egressctl render`: the Istio resources that deploy the suite on an egress gateway, rendered from the same
//! configuration files `make run` and the tests use, so the policy is written once.
//!
//! The recommended deployment is `suite/`: the fused module, every stage in one filter, one `WasmPlugin` per traffic
//! type (HTTP, TLS passthrough) whose `pluginConfig` has a section per stage. Four variants of the separate filters
//! (seven plugins), one folder each, remain for those who run only some stages (apply one folder only, never two: each
//! would add its own copy of every filter):
//! - `wasmplugins/` — `WasmPlugin`s selecting the gateway pods by label, modules pulled from an OCI registry;
//! - `gateway-api/` — the same attached to a Gateway API `Gateway` by `targetRefs`;
//! - `trafficextensions/` — `TrafficExtension`s, the successor API of Istio 1.30;
//! - `file/` — `WasmPlugin`s whose modules are files on the gateway pod.
//!
//! Beside them: `egress-routing/` and `gateway-api-routing/` ([`crate::routing`]), the routing the policy asks for (a
//! REGISTRY_ONLY mesh sends every allowed host through the gateway), for Istio's egress gateway and for a Gateway API
//! one; and ([`crate::observability`]) `collector/`, the OpenTelemetry Collector the audit stage ships to, and
//! `telemetry/`, Envoy's native access log carrying the suite's records, enabled by a `Telemetry` resource.
//!
//! Every module is pinned by `sha256`: the OCI manifest digest for `oci://` URLs (what Istio's agent compares after
//! a pull) and the module's own digest for `file://` URLs. Both are functions of the built module alone (`make
//! build` builds reproducibly), so the pins of a checkout are the digests of what it builds.

use crate::config::{self, Checked, Kind};
use crate::observability;
use crate::oci::{sha256_hex, Image};
use crate::routing;
use egress_core::{redirect, Policy, PolicyDocument};
use serde_yaml_ng::{Mapping, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The labels Istio's egress gateway pods carry (`istio: egressgateway`), which the selector variants match.
pub(crate) const GATEWAY_LABEL: (&str, &str) = ("istio", "egressgateway");
/// Where Istio's egress gateway runs, and where the selector variants live.
pub(crate) const GATEWAY_NAMESPACE: &str = "istio-system";
/// The Gateway API `Gateway` the `targetRefs` variant attaches to; a WasmPlugin must live in its namespace.
pub const GATEWAY_API_GATEWAY: (&str, &str) = ("istio-egress", "egress-gateway");
/// Where the `file://` variant expects the modules on the gateway pod.
const MODULE_DIR: &str = "/var/local/lib/wasm-filters";
pub const FOLLOW_REDIRECTS_FILE: &str = "follow-redirects-envoyfilter.yaml";

/// The file a module is built as: `egress-allowlist` → `egress_allowlist.wasm`.
pub fn module_file(module: &str) -> String {
    format!("{}.wasm", module.replace('-', "_"))
}

/// One configuration file: where it came from (named in the generated headers) and its content, key order kept.
pub struct Source {
    pub path: String,
    pub value: Value,
}

impl Source {
    pub fn read(path: &Path) -> Result<Source, String> {
        Ok(Source { path: path.display().to_string(), value: config::read_yaml(path)? })
    }
}

/// What the manifests are rendered from.
pub struct Sources {
    /// Read by the allow-list and the redirects filter.
    pub policy: Source,
    pub identity: Source,
    pub audit: Source,
}

/// Where the images are published and the modules they hold.
pub struct Release {
    /// Registry and path prefix of the images, e.g. `ghcr.io/egress-suite` (images `<prefix>/<filter>:<tag>`).
    pub registry: String,
    pub tag: String,
    /// Where the built modules are (`egress_allowlist.wasm`, …).
    pub wasm_dir: PathBuf,
}

/// A rendered file, relative to the manifests folder.
#[derive(Debug, PartialEq, Eq)]
pub struct File {
    pub path: PathBuf,
    pub text: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Layer {
    Http,
    Network,
}

/// One plugin of the suite as the gateway runs it.
struct Plugin {
    /// Resource name and root id (`pluginName`).
    name: &'static str,
    /// The image and module it comes from.
    module: &'static str,
    layer: Layer,
    phase: &'static str,
    /// Order within the phase: higher runs first on requests.
    priority: i64,
    fail_strategy: &'static str,
    config: Kind,
}

/// Chain order on requests: identity (AUTHN) → redirects → allow-list (AUTHZ, by priority) → audit (STATS); on
/// TLS-passthrough connections: audit (AUTHN, 10) → identity (AUTHN, 5) → allow-list (AUTHZ).
const PLUGINS: [Plugin; 7] = [
    Plugin {
        name: "egress-identity",
        module: "egress-identity",
        layer: Layer::Http,
        phase: "AUTHN",
        priority: 10,
        fail_strategy: "FAIL_CLOSE",
        config: Kind::Identity,
    },
    // Refuses TLS-passthrough connections unless the identity configuration allows tunnels: the gateway can tag
    // nothing inside one. After the audit filter (which must see every connection), before the allow-list.
    Plugin {
        name: "egress-identity-tls",
        module: "egress-identity",
        layer: Layer::Network,
        phase: "AUTHN",
        priority: 5,
        fail_strategy: "FAIL_CLOSE",
        config: Kind::Identity,
    },
    Plugin {
        name: "egress-allowlist",
        module: "egress-allowlist",
        layer: Layer::Http,
        phase: "AUTHZ",
        priority: 20,
        fail_strategy: "FAIL_CLOSE",
        config: Kind::Policy,
    },
    Plugin {
        name: "egress-allowlist-tls",
        module: "egress-allowlist",
        layer: Layer::Network,
        phase: "AUTHZ",
        priority: 20,
        fail_strategy: "FAIL_CLOSE",
        config: Kind::Policy,
    },
    Plugin {
        name: "egress-redirects",
        module: "egress-redirects",
        layer: Layer::Http,
        phase: "AUTHZ",
        priority: 30,
        fail_strategy: "FAIL_CLOSE",
        config: Kind::Policy,
    },
    Plugin {
        name: "egress-audit",
        module: "egress-audit",
        layer: Layer::Http,
        phase: "STATS",
        priority: 10,
        fail_strategy: "FAIL_OPEN",
        config: Kind::Audit,
    },
    // First on TLS-passthrough connections: a network filter that closes a connection in `onNewConnection` stops
    // Envoy from creating the filters after it, whose `on_log` then never runs, so an audit filter behind the
    // allow-list would miss every denied connection. It logs at close, when the allow-list has decided.
    Plugin {
        name: "egress-audit-tls",
        module: "egress-audit",
        layer: Layer::Network,
        phase: "AUTHN",
        priority: 10,
        fail_strategy: "FAIL_OPEN",
        config: Kind::Audit,
    },
];

/// The kind of configuration the plugin whose root id (`pluginName`) is `plugin_name` reads, if it is one of the
/// suite's.
pub fn config_kind(plugin_name: &str) -> Option<Kind> {
    PLUGINS.iter().chain(&SUITE_PLUGINS).find(|plugin| plugin.name == plugin_name).map(|plugin| plugin.config)
}

/// The fused module's plugins: first in both chains (phase AUTHN, as the identity stage must be), failing closed
/// because it enforces; its audit stage still never blocks traffic (a failure there is only logged).
const SUITE_PLUGINS: [Plugin; 2] = [
    Plugin {
        name: "egress-suite",
        module: "egress-suite",
        layer: Layer::Http,
        phase: "AUTHN",
        priority: 10,
        fail_strategy: "FAIL_CLOSE",
        config: Kind::Suite,
    },
    Plugin {
        name: "egress-suite-tls",
        module: "egress-suite",
        layer: Layer::Network,
        phase: "AUTHN",
        priority: 10,
        fail_strategy: "FAIL_CLOSE",
        config: Kind::Suite,
    },
];

const SUITE_FILES: [(&str, &str, &str); 1] = [(
    "egress-suite",
    "suite.yaml",
    "The suite module runs every configured stage in one filter and one context per request: one VM crossing per
callback for all of them, and what one stage read or decided (request line, caller, decision, response status) is
handed to the next in memory. pluginConfig has a section per stage (policy: the allow-list and redirects; identity;
audit); an absent section turns its stage off. It publishes the same filter-state records and metrics as the
separate filters. FAIL_CLOSE: it enforces. The audit stage inside it never blocks traffic, but if the whole VM
fails, nothing passes (the separate audit plugin, FAIL_OPEN, is the choice where audit must not take egress down
with it).",
)];

/// The file each module's plugins go to, and why they sit where they do and fail as they do.
const MODULE_FILES: [(&str, &str, &str); 4] = [
    (
        "egress-identity",
        "identity.yaml",
        "The workload identity filter: one module, two plugins. HTTP, phase AUTHN: before the allow-list, which then
judges the caller this filter established; it strips every spelling of the identity headers a client sends and
refuses CONNECT unless the configuration says `tunnels: allow`. NETWORK (TLS passthrough), phase AUTHN after
the audit filter: closes every connection unless `tunnels: allow`, since nothing can be tagged inside one.
FAIL_CLOSE: without it, a client's own x-workload-* headers would reach the upstream.
The signing key reaches the VM from the gateway pod's environment (vmConfig.env valueFrom: HOST), which
../egressgateway-env-patch.yaml feeds from a Secret; there is no default key.",
    ),
    (
        "egress-allowlist",
        "allowlist.yaml",
        "The allow-list: one module, two plugins, the root id (pluginName) selects HTTP (Host, :authority, CONNECT)
or NETWORK (SNI of TLS passthrough, which closes denied connections). FAIL_CLOSE: if the VM cannot run, the
gateway refuses traffic rather than letting it out unvetted.",
    ),
    (
        "egress-redirects",
        "redirects.yaml",
        "The redirects filter: AUTHZ with a higher priority than the allow-list (20), so it runs before it on requests:
a hop of a followed redirect is its to judge and record (the chain is audited as the client's request, refused
hops included) before the allow-list sees it. It reads the allow-list's policy. FAIL_CLOSE: without it, redirects
to unvetted hosts would reach clients and followed hops would lose their loop, hop-limit and credential checks.",
    ),
    (
        "egress-audit",
        "audit.yaml",
        "The audit filter: on HTTP, phase STATS, after every other filter, so it logs what each decided (filter
state); on TLS passthrough, phase AUTHN, first, because Envoy never creates the network filters behind one
that closes a connection (the allow-list's denials would go unlogged). One JSON event per request and per
connection, to the gateway log (`egress-audit: {json}`, seen
at log level wasm:info) and batched to the collector. FAIL_OPEN, deliberately: it records and never gates;
if its VM fails, traffic still passes the allow-list (which fails closed) and Envoy's access log records it.
Choose FAIL_CLOSE where no egress may happen without an audit event.",
    ),
];

struct Variant {
    dir: &'static str,
    /// The module files it renders: the separate filters or the suite.
    modules: &'static [(&'static str, &'static str, &'static str)],
    kind: &'static str,
    attach: Attach,
    location: Location,
    about: &'static str,
}

enum Attach {
    Selector,
    TargetRefs,
}

enum Location {
    Oci,
    File,
}

const VARIANT_SPECS: [Variant; 5] = [
    Variant {
        dir: "suite",
        modules: &SUITE_FILES,
        kind: "WasmPlugin",
        attach: Attach::Selector,
        location: Location::Oci,
        about: "The recommended deployment: the whole suite as one filter (identity, allow-list, redirects, audit in one pass
per request), one WasmPlugin for HTTP and one for TLS passthrough, for Istio's egress gateway (pods labelled istio:
egressgateway); the module from an OCI image pinned by manifest digest. Push the image with `make oci`.",
    },
    Variant {
        dir: "wasmplugins",
        modules: &MODULE_FILES,
        kind: "WasmPlugin",
        attach: Attach::Selector,
        location: Location::Oci,
        about: "WasmPlugins for Istio's egress gateway (pods labelled istio: egressgateway), modules from OCI images
pinned by manifest digest (sha256). Push the images with `make oci` and the command in docs/istio.md.",
    },
    Variant {
        dir: "gateway-api",
        modules: &MODULE_FILES,
        kind: "WasmPlugin",
        attach: Attach::TargetRefs,
        location: Location::Oci,
        about:
            "WasmPlugins attached by targetRefs to a Gateway API egress gateway (Gateway istio-egress/egress-gateway,
gatewayClassName istio); a WasmPlugin must live in its Gateway's namespace. Modules as in ../wasmplugins.",
    },
    Variant {
        dir: "trafficextensions",
        modules: &MODULE_FILES,
        kind: "TrafficExtension",
        attach: Attach::Selector,
        location: Location::Oci,
        about: "TrafficExtensions (Istio 1.30+, the successor of WasmPlugin) for Istio's egress gateway. Same plugins,
order, failure strategies and pinned images as ../wasmplugins.",
    },
    Variant {
        dir: "file",
        modules: &MODULE_FILES,
        kind: "WasmPlugin",
        attach: Attach::Selector,
        location: Location::File,
        about: "WasmPlugins loading the modules from files on the gateway pod (mounted at /var/local/lib/wasm-filters,
e.g. from an image volume), for clusters that pull no Wasm images. sha256 is each module's own digest.",
    },
];

/// The folders `render` owns entirely: a file there that it no longer renders is stale.
pub fn variant_dirs() -> impl Iterator<Item = &'static str> {
    VARIANT_SPECS.iter().map(|variant| variant.dir)
}

/// Renders every manifest. Each configuration is checked with its filter's own validation first: nothing is
/// rendered from a file the filter would refuse.
pub fn render(sources: &Sources, release: &Release) -> Result<Vec<File>, String> {
    let mut policy = None;
    let mut configs = Vec::new();
    for (kind, source) in
        [(Kind::Policy, &sources.policy), (Kind::Identity, &sources.identity), (Kind::Audit, &sources.audit)]
    {
        let json = config::to_json(&source.value).map_err(|e| format!("{}: {e}", source.path))?;
        match config::check(kind, &json) {
            Ok(Checked::Policy(compiled)) => policy = Some(compiled),
            Ok(_) => {}
            Err(errors) => {
                return Err(errors.iter().map(|e| format!("{}: {e}", source.path)).collect::<Vec<_>>().join("\n"))
            }
        }
        configs.push((kind, source.value.clone()));
    }
    // The suite's configuration: the three files as its sections, checked as the suite module checks it.
    let suite = map([
        ("policy", sources.policy.value.clone()),
        ("identity", sources.identity.value.clone()),
        ("audit", sources.audit.value.clone()),
    ]);
    let json = config::to_json(&suite)?;
    config::check(Kind::Suite, &json).map_err(|errors| errors.join("\n"))?;
    configs.push((Kind::Suite, suite));
    let config_of = |kind: Kind| configs.iter().find(|(k, _)| *k == kind).map(|(_, value)| value);
    let key_env = sources.identity.value.get("signing").and_then(|s| s.get("keyEnv")).and_then(Value::as_str);

    let mut modules = Vec::new();
    for (module, _, _) in MODULE_FILES.iter().chain(&SUITE_FILES) {
        let path = release.wasm_dir.join(module_file(module));
        let bytes =
            std::fs::read(&path).map_err(|e| format!("{}: {e} (build the filters: make build)", path.display()))?;
        let module_digest = sha256_hex(&bytes);
        let image = Image::of_module(bytes, &release.tag).map_err(|e| format!("{}: {e}", path.display()))?;
        modules.push((module, image.manifest_digest(), module_digest));
    }

    let generated = format!(
        "# Generated by `egressctl render` (make manifests) from {}, {} and {}.\n# Edit those and re-render; do not edit this file.\n",
        sources.policy.path, sources.identity.path, sources.audit.path
    );
    let mut files = Vec::new();
    for variant in &VARIANT_SPECS {
        let mut names = Vec::new();
        for &(module, file_name, why) in variant.modules {
            let mut text = format!("{generated}#\n{}\n#\n{}\n", comment(variant.about), comment(why));
            for plugin in PLUGINS.iter().chain(&SUITE_PLUGINS).filter(|p| p.module == module) {
                let source = config_of(plugin.config).ok_or("internal: a plugin without configuration")?;
                let (_, image_digest, module_digest) =
                    modules.iter().find(|(m, _, _)| **m == module).ok_or("internal: a plugin without module")?;
                let (url, sha256) = match variant.location {
                    Location::Oci => (format!("oci://{}/{module}:{}", release.registry, release.tag), image_digest),
                    Location::File => (format!("file://{MODULE_DIR}/{}", module_file(module)), module_digest),
                };
                let key_env = key_env.filter(|_| matches!(plugin.config, Kind::Identity | Kind::Suite));
                let document = resource(variant, plugin, &url, sha256, key_env, source);
                let yaml = serde_yaml_ng::to_string(&document).map_err(|e| format!("{}: {e}", plugin.name))?;
                text.push_str("---\n");
                text.push_str(&yaml);
            }
            files.push(File { path: Path::new(variant.dir).join(file_name), text });
            names.push(file_name);
        }
        files.push(File {
            path: Path::new(variant.dir).join("kustomization.yaml"),
            text: kustomization(&generated, &names)?,
        });
    }
    let policy = policy.ok_or("internal: no policy")?;
    files.extend(follow_redirects(&generated, &policy)?);
    // The routing depends on the policy alone; its header says so.
    let policy_json = config::to_json(&sources.policy.value)?;
    let document =
        PolicyDocument::from_json(policy_json.as_bytes()).map_err(|e| format!("{}: {e}", sources.policy.path))?;
    let routing_header = format!(
        "# Generated by `egressctl render` (make manifests) from {}.\n# Edit it and re-render; do not edit this file.\n",
        sources.policy.path
    );
    let routed = routing::files(&document, &routing_header, policy.follow_route_hops()).map_err(|errors| {
        errors.lines().map(|e| format!("{}: {e}", sources.policy.path)).collect::<Vec<_>>().join("\n")
    })?;
    files.extend(routed);
    files.extend(observability::files(&generated)?);
    let mut top = vec![routing::CLASSIC_DIR, "suite", observability::COLLECTOR_DIR];
    if policy.follow_route_hops().is_some() {
        top.push(FOLLOW_REDIRECTS_FILE);
    }
    let about = "# Everything the suite needs on Istio's egress gateway (istio-system/istio-egressgateway), one folder per concern,\n\
                 # each with its own kustomization: `kubectl apply -k wasmplugin-manifests` applies\n\
                 # - egress-routing/: the routing rendered from the policy (ServiceEntries, Gateway, VirtualServices,\n\
                 #   DestinationRules), which sends the policy's hosts from every sidecar through the gateway;\n\
                 # - suite/: the fused suite (for separate filters, swap in one of wasmplugins/, trafficextensions/ or file/);\n\
                 # - collector/: the OpenTelemetry Collector the audit stage ships to;\n\
                 # - follow-redirects-envoyfilter.yaml: redirect following, when the policy asks for it.\n\
                 # For a Gateway API egress gateway (Gateway istio-egress/egress-gateway), the pair is gateway-api-routing/\n\
                 # (the same routing with Gateway API routes, redirect following included) and gateway-api/ (the plugins\n\
                 # attached to that Gateway), with collector/: apply those three instead of this file (see\n\
                 # gateway-api-routing/kustomization.yaml). The native access-log path (telemetry/) needs install-time mesh\n\
                 # configuration first: see its kustomization.\n";
    files.push(File {
        path: PathBuf::from("kustomization.yaml"),
        text: kustomization(&format!("{generated}#\n{about}"), &top)?,
    });
    Ok(files)
}

/// One plugin as a `WasmPlugin` or `TrafficExtension` of `variant`.
fn resource(
    variant: &Variant,
    plugin: &Plugin,
    url: &str,
    sha256: &str,
    key_env: Option<&str>,
    plugin_config: &Value,
) -> Value {
    let (namespace, attach) = match variant.attach {
        Attach::Selector => {
            (GATEWAY_NAMESPACE, ("selector", map([("matchLabels", map([(GATEWAY_LABEL.0, GATEWAY_LABEL.1.into())]))])))
        }
        Attach::TargetRefs => (
            GATEWAY_API_GATEWAY.0,
            (
                "targetRefs",
                Value::Sequence(vec![map([
                    ("group", "gateway.networking.k8s.io".into()),
                    ("kind", "Gateway".into()),
                    ("name", GATEWAY_API_GATEWAY.1.into()),
                ])]),
            ),
        ),
    };
    // A gateway's listeners are CLIENT traffic to Istio (workloadModeForListenerClass): a plugin matching SERVER
    // would never be applied to a gateway.
    let matching = ("match", Value::Sequence(vec![map([("mode", "CLIENT".into())])]));
    let mut wasm = vec![("url", Value::from(url)), ("sha256", sha256.into())];
    if let Location::Oci = variant.location {
        wasm.push(("imagePullPolicy", "IfNotPresent".into()));
    }
    wasm.push(("pluginName", plugin.name.into()));
    wasm.push(("type", if plugin.layer == Layer::Http { "HTTP" } else { "NETWORK" }.into()));
    wasm.push(("failStrategy", plugin.fail_strategy.into()));
    if let Some(name) = key_env {
        let env = map([("name", name.into()), ("valueFrom", "HOST".into())]);
        wasm.push(("vmConfig", map([("env", Value::Sequence(vec![env]))])));
    }
    wasm.push(("pluginConfig", plugin_config.clone()));
    let placement = [("phase", Value::from(plugin.phase)), ("priority", plugin.priority.into())];

    let spec = if variant.kind == "TrafficExtension" {
        let mut spec = vec![attach, matching];
        spec.extend(placement);
        spec.push(("wasm", map(wasm)));
        spec
    } else {
        let mut spec = vec![attach, matching];
        spec.extend(placement);
        spec.extend(wasm);
        spec
    };
    map([
        ("apiVersion", "extensions.istio.io/v1alpha1".into()),
        ("kind", variant.kind.into()),
        ("metadata", map([("name", plugin.name.into()), ("namespace", namespace.into())])),
        ("spec", map(spec)),
    ])
}

/// The EnvoyFilter that makes the classic gateway's routes follow redirects, when the policy follows any.
fn follow_redirects(generated: &str, policy: &Policy) -> Result<Option<File>, String> {
    let Some(hops) = policy.follow_route_hops() else { return Ok(None) };
    let selector = ("workloadSelector", map([("labels", map([(GATEWAY_LABEL.0, GATEWAY_LABEL.1.into())]))]));
    let (why, document) = follow_redirects_document(hops, GATEWAY_NAMESPACE, selector);
    let yaml = serde_yaml_ng::to_string(&document).map_err(|e| e.to_string())?;
    let text = format!("{generated}#\n{}\n---\n{yaml}", comment(&why));
    Ok(Some(File { path: PathBuf::from(FOLLOW_REDIRECTS_FILE), text }))
}

/// The redirect-following EnvoyFilter for a gateway in `namespace`, attached by `attach` (its `workloadSelector` or
/// `targetRefs`), with `hops` the policy's largest `maxHops`; and what it is for. It merges into the routes of the
/// gateway's port-80 server, which both routing sets render (`crate::routing`).
pub(crate) fn follow_redirects_document(hops: u32, namespace: &str, attach: (&str, Value)) -> (String, Value) {
    let why = "Following redirects at the gateway (policy `redirects.follow`): Istio's VirtualService has no field for Envoy's
route-level internal_redirect_policy, so this EnvoyFilter merges it into the egress gateway's HTTP routes.
- portNumber: the Gateway server port whose routes follow (80: the port TLS origination uses).
- max_internal_redirects: the policy's largest maxHops; the redirects filter enforces each rule's own limit,
  loops, schemes and downgrades on every hop before it is sent.
- allow_cross_scheme_redirect: true, because the filter vets schemes itself (Envoy alone would follow ftp://).
- every redirect target needs its own route on the gateway (a ServiceEntry and a gateway route), as any egress
  host does; the routing rendered from the policy has one for every policy host, so every hop the policy allows.
  A target without one is not followed and the vetted 3xx goes back to the client.
- Envoy 1.36.0-1.36.2 truncate request bodies above the buffer limit when a route has a retry_policy (Istio
  always sets one) and follows a 307/308 (envoyproxy/envoy#44114, fixed by envoyproxy/envoy#44154 in 1.40.0;
  a later 1.36 patch has the fix only if its release notes name it).";
    let codes = Value::Sequence(redirect::FOLLOWED_STATUSES.into_iter().map(Value::from).collect());
    let policy = map([
        ("redirect_response_codes", codes),
        ("max_internal_redirects", hops.into()),
        ("allow_cross_scheme_redirect", true.into()),
    ]);
    let patch = map([
        ("applyTo", "HTTP_ROUTE".into()),
        ("match", map([("context", "GATEWAY".into()), ("routeConfiguration", map([("portNumber", 80.into())]))])),
        (
            "patch",
            map([
                ("operation", "MERGE".into()),
                ("value", map([("route", map([("internal_redirect_policy", policy)]))])),
            ]),
        ),
    ]);
    let document = map([
        ("apiVersion", "networking.istio.io/v1alpha3".into()),
        ("kind", "EnvoyFilter".into()),
        ("metadata", map([("name", "egress-follow-redirects".into()), ("namespace", namespace.into())])),
        ("spec", map([attach, ("configPatches", Value::Sequence(vec![patch]))])),
    ]);
    (why.to_string(), document)
}

pub(crate) fn kustomization(header: &str, resources: &[&str]) -> Result<String, String> {
    let document = map([
        ("apiVersion", "kustomize.config.k8s.io/v1beta1".into()),
        ("kind", "Kustomization".into()),
        ("resources", Value::Sequence(resources.iter().map(|r| Value::from(*r)).collect())),
    ]);
    let yaml = serde_yaml_ng::to_string(&document).map_err(|e| e.to_string())?;
    Ok(format!("{header}{yaml}"))
}

/// `text` as YAML comment lines.
pub(crate) fn comment(text: &str) -> String {
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        let _ = write!(out, "{}# {line}", if i == 0 { "" } else { "\n" });
    }
    out
}

/// A YAML mapping with its keys in the order given (the order people read manifests in).
pub(crate) fn map<'a>(entries: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
    let mut mapping = Mapping::new();
    for (key, value) in entries {
        mapping.insert(key.into(), value);
    }
    Value::Mapping(mapping)
}

/// Writes `files` under `out` and removes the YAML files of the folders it owns that were not rendered (a plugin
/// dropped from the suite must not stay deployed by a leftover file).
pub fn write(out: &Path, files: &[File]) -> Result<(), String> {
    for file in files {
        let path = out.join(&file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&path, &file.text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    for stale in stale_files(out, files)? {
        std::fs::remove_file(&stale).map_err(|e| format!("{}: {e}", stale.display()))?;
    }
    Ok(())
}

/// YAML files in the folders `render` owns under `out` (the variants, the routing sets, the collector, the telemetry)
/// that `files` does not contain.
pub fn stale_files(out: &Path, files: &[File]) -> Result<Vec<PathBuf>, String> {
    let mut stale = Vec::new();
    for dir in variant_dirs().chain([observability::COLLECTOR_DIR, observability::TELEMETRY_DIR]).chain(routing::dirs())
    {
        let Ok(entries) = std::fs::read_dir(out.join(dir)) else { continue };
        for entry in entries {
            let path = entry.map_err(|e| format!("{}: {e}", out.join(dir).display()))?.path();
            let relative = Path::new(dir).join(path.file_name().unwrap_or_default());
            let is_yaml = path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml");
            if is_yaml && !files.iter().any(|file| file.path == relative) {
                stale.push(path);
            }
        }
    }
    Ok(stale)
}
