//! The routing sets `egressctl render` writes from the policy: everything `kubectl apply -k` needs for a mesh with
//! `outboundTrafficPolicy: REGISTRY_ONLY` to send the policy's hosts through the egress gateway, where the suite
//! judges them.
//!
//! - `egress-routing/` ([`classic`]): Istio's egress gateway (`istio-system/istio-egressgateway`, pods labelled
//!   `istio: egressgateway`) with Istio's API (ServiceEntry, Gateway, VirtualService, DestinationRule);
//! - `gateway-api-routing/` ([`gateway_api`]): a Gateway API `Gateway` (`istio-egress/egress-gateway`, class
//!   `istio`, the one the `gateway-api/` plugins attach to) in sidecar mode: ServiceEntry parents for the mesh routes,
//!   `Hostname` backends at the gateway.
//!
//! Both come from one [`plan::Plan`]: the hosts and ports the policy allows, at the nearest host Istio can express,
//! with what is not routed and why. Each folder is self-contained (its kustomization lists only its own files) and
//! owned by `render`: a file there that is no longer rendered is stale.
//!
//! Namespaces and exportTo (one scheme for both): every resource lives in the gateway's namespace, so the set is one
//! unit that needs no client namespace to exist. What clients use is exported to every namespace (`*`): the
//! ServiceEntries (a REGISTRY_ONLY sidecar only builds listeners for registered hosts), the mesh routes to the
//! gateway, and the DestinationRule for the sidecar-to-gateway hop (ISTIO_MUTUAL, so the gateway sees the caller's
//! certificate). What only the gateway uses stays in its namespace (`.`) and selects the gateway's pods: the TLS
//! origination DestinationRules. Gateway-bound routes ride in the same VirtualService as the mesh routes; exporting
//! them is harmless (only the named gateway applies them).

mod classic;
mod gateway_api;
pub mod plan;

use crate::render::{comment, kustomization, map, File};
use egress_core::PolicyDocument;
use plan::{Origin, Plan, RoutedHost, HTTP_PORT, ORIGINATED_TLS_PORT, TLS_PORT};
use serde_yaml_ng::Value;
use std::fmt::Write as _;
use std::path::Path;

/// The classic routing set (Istio's egress gateway and Istio's API).
pub const CLASSIC_DIR: &str = "egress-routing";
/// The Gateway API routing set, beside the `gateway-api/` plugins that attach to its `Gateway`.
pub const GATEWAY_API_DIR: &str = "gateway-api-routing";
/// The EnvoyFilter that lets the gateway pass TLS through to `DYNAMIC_DNS` wildcard hosts.
pub const SNI_FORWARD_PROXY_FILE: &str = "sni-dynamic-forward-proxy-envoyfilter.yaml";

/// The passthrough routes and the identity stage: the routing follows the policy, the stage may still refuse.
const PASSTHROUGH_NOTE: &str = "The TLS passthrough routes carry traffic only where the identity stage lets tunnels \
through (identity `tunnels: allow`); with `tunnels: deny`, its default, the gateway closes every passthrough \
connection.";

/// The folders the routing sets own.
pub fn dirs() -> [&'static str; 2] {
    [CLASSIC_DIR, GATEWAY_API_DIR]
}

/// Both routing sets for `policy` (a document its filter accepts), each file starting with `header`.
/// `follow_hops`: the policy's redirect following (the Gateway API set carries its own EnvoyFilter for it; the
/// classic gateway's is `follow-redirects-envoyfilter.yaml` at the top). Errors name the policy field.
pub fn files(policy: &PolicyDocument, header: &str, follow_hops: Option<u32>) -> Result<Vec<File>, String> {
    let plan = plan::plan(policy).map_err(|errors| errors.join("\n"))?;
    let mut files = classic::files(&plan, header)?;
    files.extend(gateway_api::files(&plan, header, follow_hops)?);
    Ok(files)
}

/// One YAML document and the comment placed above it.
struct Doc {
    comment: String,
    value: Value,
}

impl Doc {
    fn new(comment: impl Into<String>, value: Value) -> Doc {
        Doc { comment: comment.into(), value }
    }
}

/// The width comments are wrapped to (the manifests' lines stay under 120 characters with `# `).
const COMMENT_WIDTH: usize = 116;

/// `text` wrapped at spaces to [`COMMENT_WIDTH`], as YAML comment lines. A line's leading spaces are kept, and its
/// continuation lines are indented two more (lists read as lists).
fn wrapped(text: &str) -> String {
    let mut lines = Vec::new();
    for line in text.lines() {
        let body = line.trim_start_matches(' ');
        let indent = &line[..line.len() - body.len()];
        let follow = if indent.is_empty() { String::new() } else { format!("{indent}  ") };
        let mut current = indent.to_string();
        for word in body.split(' ').filter(|w| !w.is_empty()) {
            let fresh = current.trim().is_empty();
            if !fresh && current.len() + 1 + word.len() > COMMENT_WIDTH {
                lines.push(std::mem::replace(&mut current, follow.clone()));
            }
            if !current.trim().is_empty() {
                current.push(' ');
            }
            current.push_str(word);
        }
        lines.push(current);
    }
    comment(&lines.join("\n"))
}

/// A multi-document file: the render header, what the file is for, then each document with its own comment.
fn yaml_file(dir: &str, name: &str, header: &str, about: &str, docs: &[Doc]) -> Result<File, String> {
    let mut text = format!("{header}#\n{}\n", wrapped(about));
    for doc in docs {
        text.push_str("---\n");
        if !doc.comment.is_empty() {
            text.push_str(&wrapped(&doc.comment));
            text.push('\n');
        }
        text.push_str(&serde_yaml_ng::to_string(&doc.value).map_err(|e| format!("{dir}/{name}: {e}"))?);
    }
    Ok(File { path: Path::new(dir).join(name), text })
}

/// The kustomization of a routing folder: `about` on top, then the files it applies.
fn kustomization_file(dir: &str, header: &str, about: &str, files: &[File]) -> Result<File, String> {
    let names: Vec<String> =
        files.iter().filter_map(|f| f.path.file_name().map(|n| n.to_string_lossy().into_owned())).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let text = kustomization(&format!("{header}#\n{}\n", wrapped(about)), &names)?;
    Ok(File { path: Path::new(dir).join("kustomization.yaml"), text })
}

fn seq<'a>(items: impl IntoIterator<Item = &'a str>) -> Value {
    Value::Sequence(items.into_iter().map(Value::from).collect())
}

fn labels(label: (&str, &str)) -> Value {
    map([(label.0, label.1.into())])
}

fn metadata(name: &str, namespace: &str) -> Value {
    map([("name", name.into()), ("namespace", namespace.into())])
}

fn port(number: u16) -> Value {
    map([("number", number.into())])
}

/// Where a routed host comes from, for the comments: `rules[0].hosts[1] (rule httpbin)`, and for a superset the
/// pattern it stands for.
fn sources(routed: &RoutedHost) -> String {
    routed
        .sources
        .iter()
        .map(|s| {
            let rule = s.rule.as_ref().map(|r| format!(" of rule {r}")).unwrap_or_default();
            match s.origin {
                Origin::Exact | Origin::Wildcard => format!("{}{rule}", s.path),
                Origin::Superset => format!("{} `{}`{rule}", s.path, s.written),
                Origin::Origination => format!("{} (TLS origination)", s.path),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a routed host is, in a sentence or two.
fn describe(routed: &RoutedHost) -> String {
    let mut text = format!("{}: for {}.", routed.host, sources(routed));
    if routed.sources.iter().any(|s| s.origin == Origin::Superset) {
        let written: Vec<String> = routed
            .sources
            .iter()
            .filter(|s| s.origin == Origin::Superset)
            .map(|s| format!("`{}`", s.written))
            .collect();
        let _ = write!(
            text,
            "\nA superset: Istio takes only a leading `*.`, so sidecars send every {} name to the gateway, whose \
             allow-list admits only {}.",
            routed.host,
            written.join(", ")
        );
    }
    text
}

/// The ServiceEntry of a routed host: what puts it in a REGISTRY_ONLY mesh's registry, on the routed ports only
/// (a registered port no route sends to the gateway would let sidecars out directly).
fn service_entry(routed: &RoutedHost, namespace: &str) -> Doc {
    let mut ports = Vec::new();
    if routed.routes(HTTP_PORT) {
        let mut http = vec![("number", Value::from(HTTP_PORT)), ("name", "http".into()), ("protocol", "HTTP".into())];
        if routed.originate_tls && !routed.is_wildcard() {
            http.push(("targetPort", ORIGINATED_TLS_PORT.into()));
        }
        ports.push(map(http));
    }
    if routed.routes(TLS_PORT) {
        // TLS, not HTTPS: DYNAMIC_DNS takes only HTTP, TLS, GRPC and HTTP2; for the app's own TLS both mean
        // "route by SNI".
        ports.push(map([("number", TLS_PORT.into()), ("name", "tls".into()), ("protocol", "TLS".into())]));
    }
    let resolution = if routed.is_wildcard() { "DYNAMIC_DNS" } else { "DNS" };
    let mut why = describe(routed);
    if routed.is_wildcard() {
        why.push_str(
            "\nDYNAMIC_DNS: the gateway resolves each requested name itself, from the Host header (HTTP) or the SNI \
             (TLS, with the EnvoyFilter beside this file).",
        );
    } else {
        why.push_str("\nDNS: the gateway resolves the name itself.");
    }
    if routed.routes(HTTP_PORT) {
        if routed.originate_tls && !routed.is_wildcard() {
            why.push_str(&format!(
                " Port {HTTP_PORT}: the app's plain HTTP; the gateway sends it to {ORIGINATED_TLS_PORT} (targetPort) \
                 inside the TLS it originates (destinationrules.yaml); sidecars never use this port's endpoint, their \
                 route ends at the gateway."
            ));
        } else if routed.originate_tls {
            why.push_str(&format!(
                " Port {HTTP_PORT}: the app's plain HTTP; the gateway originates TLS to {ORIGINATED_TLS_PORT} \
                 (destinationrules.yaml)."
            ));
        } else {
            why.push_str(&format!(" Port {HTTP_PORT}: plain HTTP."));
        }
    }
    if routed.routes(TLS_PORT) {
        why.push_str(&format!(" Port {TLS_PORT}: the app's own TLS, passed through by SNI."));
    }
    let value = map([
        ("apiVersion", "networking.istio.io/v1".into()),
        ("kind", "ServiceEntry".into()),
        ("metadata", metadata(&format!("egress-{}", routed.name), namespace)),
        (
            "spec",
            map([
                ("hosts", seq([routed.host.as_str()])),
                ("exportTo", seq(["*"])),
                ("location", "MESH_EXTERNAL".into()),
                ("ports", Value::Sequence(ports)),
                ("resolution", resolution.into()),
            ]),
        ),
    ]);
    Doc::new(why, value)
}

/// The DestinationRule of the sidecar-to-gateway hop: mesh mTLS on the HTTP port (the gateway sees the caller's
/// certificate), the app's TLS untouched on the passthrough port. `sni`, when given, picks the gateway server.
fn gateway_hop_rule(gateway_service: &str, namespace: &str, sni: Option<&str>) -> Doc {
    let mut mtls = vec![("mode", Value::from("ISTIO_MUTUAL"))];
    if let Some(sni) = sni {
        mtls.push(("sni", sni.into()));
    }
    let value = map([
        ("apiVersion", "networking.istio.io/v1".into()),
        ("kind", "DestinationRule".into()),
        ("metadata", metadata("egress-gateway-mtls", namespace)),
        (
            "spec",
            map([
                ("host", gateway_service.into()),
                ("exportTo", seq(["*"])),
                (
                    "trafficPolicy",
                    map([(
                        "portLevelSettings",
                        Value::Sequence(vec![
                            map([("port", port(HTTP_PORT)), ("tls", map(mtls))]),
                            map([("port", port(TLS_PORT)), ("tls", map([("mode", "DISABLE".into())]))]),
                        ]),
                    )]),
                ),
            ]),
        ),
    ]);
    let why = format!(
        "Sidecar to gateway, for every client namespace (exportTo *; a client finds a DestinationRule in its own \
         namespace, the service's, or the root namespace).\nPort {HTTP_PORT}: ISTIO_MUTUAL, so the gateway terminates \
         a connection carrying the caller's SPIFFE certificate (the identity stage and identity-scoped rules need \
         it) and reads the plain HTTP inside.{}\nPort {TLS_PORT}: DISABLE: the app's own TLS must reach the \
         passthrough listener as sent; wrapped in mesh mTLS its SNI would be the mesh's and no passthrough route \
         would match.",
        match sni {
            Some(sni) => format!(
                " The gateway picks its ISTIO_MUTUAL server by SNI, so sni names a host of that server ({sni}, listed \
                 there for this), whatever name the app requested."
            ),
            None => String::new(),
        }
    );
    Doc::new(why, value)
}

/// The DestinationRule that makes the gateway originate TLS for a routed host's plain HTTP: applied only at the
/// gateway (exported nowhere else, selecting its pods).
fn origination_rule(routed: &RoutedHost, namespace: &str, selector: (&str, &str)) -> Doc {
    let mut tls = vec![("mode", Value::from("SIMPLE"))];
    if !routed.is_wildcard() {
        tls.push(("sni", routed.host.as_str().into()));
        tls.push(("subjectAltNames", seq([routed.host.as_str()])));
    }
    let value = map([
        ("apiVersion", "networking.istio.io/v1".into()),
        ("kind", "DestinationRule".into()),
        ("metadata", metadata(&format!("originate-tls-{}", routed.name), namespace)),
        (
            "spec",
            map([
                ("host", routed.host.as_str().into()),
                ("exportTo", seq(["."])),
                ("workloadSelector", map([("matchLabels", labels(selector))])),
                (
                    "trafficPolicy",
                    map([(
                        "portLevelSettings",
                        Value::Sequence(vec![map([("port", port(HTTP_PORT)), ("tls", map(tls))])]),
                    )]),
                ),
            ]),
        ),
    ]);
    let how = if routed.is_wildcard() {
        format!(
            "The dynamic forward proxy cluster takes the name from the Host header and, being TLS, port \
             {ORIGINATED_TLS_PORT}; no sni: istiod sets auto_sni and auto_san_validation, so each name is its own SNI \
             and must be in its certificate."
        )
    } else {
        format!(
            "The ServiceEntry's targetPort sends it to {ORIGINATED_TLS_PORT}; sni and subjectAltNames: the certificate \
             must name {} (without subjectAltNames Istio would accept any publicly trusted certificate).",
            routed.host
        )
    };
    let why = format!(
        "TLS origination for {} (redirects.originateTls): the app's plain HTTP on port {HTTP_PORT} leaves the gateway \
         inside TLS, verified against the system CAs. {how} Only at the gateway: exportTo . and the gateway's pods; on \
         the port, not a subset, because Gateway API routes and dynamic forward proxy clusters have no subsets, and the \
         passthrough route to port {TLS_PORT} must keep the app's TLS unwrapped.",
        routed.host
    );
    Doc::new(why, value)
}

/// The EnvoyFilter that lets the gateway pass TLS through to the `DYNAMIC_DNS` wildcard hosts: istiod builds their
/// dynamic forward proxy clusters on gateways too, but adds the SNI filter that feeds them only on sidecars. `attach`
/// is the `workloadSelector` or `targetRefs` entry naming the gateway.
fn sni_forward_proxy(hosts: &[&RoutedHost], namespace: &str, attach: (&str, Value)) -> Option<Doc> {
    if hosts.is_empty() {
        return None;
    }
    let patches = hosts
        .iter()
        .map(|routed| {
            map([
                ("applyTo", "NETWORK_FILTER".into()),
                (
                    "match",
                    map([
                        ("context", "GATEWAY".into()),
                        (
                            "listener",
                            map([(
                                "filterChain",
                                map([
                                    ("sni", routed.host.as_str().into()),
                                    ("filter", map([("name", "envoy.filters.network.tcp_proxy".into())])),
                                ]),
                            )]),
                        ),
                    ]),
                ),
                (
                    "patch",
                    map([
                        ("operation", "INSERT_BEFORE".into()),
                        (
                            "value",
                            map([
                                ("name", "envoy.filters.network.sni_dynamic_forward_proxy".into()),
                                (
                                    "typed_config",
                                    map([
                                        (
                                            "@type",
                                            "type.googleapis.com/envoy.extensions.filters.network.sni_dynamic_forward_proxy.v3.FilterConfig"
                                                .into(),
                                        ),
                                        ("port_value", TLS_PORT.into()),
                                        (
                                            "dns_cache_config",
                                            map([
                                                ("name", format!("{}_dfp_dns_cache", routed.host).into()),
                                                ("dns_lookup_family", "V4_ONLY".into()),
                                            ]),
                                        ),
                                    ]),
                                ),
                            ]),
                        ),
                    ]),
                ),
            ])
        })
        .collect();
    let value = map([
        ("apiVersion", "networking.istio.io/v1alpha3".into()),
        ("kind", "EnvoyFilter".into()),
        ("metadata", metadata("egress-sni-dynamic-forward-proxy", namespace)),
        ("spec", map([attach, ("configPatches", Value::Sequence(patches))])),
    ]);
    let names: Vec<&str> = hosts.iter().map(|h| h.host.as_str()).collect();
    let why = format!(
        "TLS passthrough to the DYNAMIC_DNS wildcard hosts ({}). istiod builds their dynamic forward proxy clusters \
         (outbound|{TLS_PORT}||<host>) on gateways as on sidecars, but adds the filter that tells such a cluster which \
         name to resolve, envoy.filters.network.sni_dynamic_forward_proxy, only on sidecars: at the gateway the \
         connection would have no host. This inserts it into each host's passthrough filter chain (matched by its \
         SNI), right before tcp_proxy, so after the suite's network plugins: a connection is judged before any DNS \
         lookup. The DNS cache name and lookup family must equal those of istiod's cluster (<host>_dfp_dns_cache; \
         V4_ONLY, what istiod picks for an IPv4 gateway; use ALL or V6_ONLY where istiod does, on dual-stack or IPv6 \
         gateways), or Envoy refuses the listener.\nNot officially supported on egress gateways (istio/istio#61831): \
         after applying, check istioctl proxy-config cluster <gateway pod> --fqdn '<host>' (type \
         envoy.clusters.dynamic_forward_proxy) and istioctl proxy-config listener <gateway pod> --port 8443 -o json \
         (the filter before tcp_proxy). Plain HTTP to these hosts needs no filter: since Envoy 1.34 the cluster \
         resolves the Host header's name itself.",
        names.join(", ")
    );
    Some(Doc::new(why, value))
}

/// "Only mesh workloads reach the gateway": STRICT mTLS for the gateway's pods.
fn peer_authentication(name: &str, namespace: &str, selector: (&str, &str)) -> Doc {
    let value = map([
        ("apiVersion", "security.istio.io/v1".into()),
        ("kind", "PeerAuthentication".into()),
        ("metadata", metadata(name, namespace)),
        (
            "spec",
            map([("selector", map([("matchLabels", labels(selector))])), ("mtls", map([("mode", "STRICT".into())]))]),
        ),
    ]);
    let why = "Only mesh workloads, with a mesh certificate, should reach the egress gateway: the caller's identity the
identity stage asserts comes from that certificate. The gateway's own listeners take their TLS from its servers
(listeners), though: on the HTTP port it is ISTIO_MUTUAL there that demands the certificate (Istio documents
PeerAuthentication for connections to sidecars), so keep both. The passthrough port cannot demand one (the app's
TLS arrives unwrapped); limit who reaches it with a NetworkPolicy.";
    Doc::new(why, value)
}

/// The routed hosts and what is not routed, for a kustomization's comment.
fn summary(plan: &Plan) -> String {
    let mut text = String::from("Routed (host: ports, from):");
    if plan.hosts.is_empty() {
        text.push_str("\n  nothing: the policy names no host this routing can carry");
    }
    for routed in &plan.hosts {
        let ports: Vec<String> = routed
            .ports
            .iter()
            .map(|&p| match p {
                HTTP_PORT if routed.originate_tls => format!("{p} (TLS originated)"),
                HTTP_PORT => format!("{p} (HTTP)"),
                _ => format!("{p} (TLS passthrough)"),
            })
            .collect();
        let _ = write!(text, "\n  {}: {}; {}", routed.host, ports.join(", "), sources(routed));
    }
    if plan.hosts.iter().any(|h| h.sources.iter().any(|s| s.origin == Origin::Superset)) {
        text.push_str(
            "\nSupersets: a pattern with an inner wildcard (ec2.*.amazonaws.com) is routed as the nearest leading \
             wildcard (*.amazonaws.com), which Istio can express; sidecars then send every name of it to the gateway, \
             and the gateway's allow-list is where the exact pattern is enforced.",
        );
    }
    if !plan.not_routed.is_empty() {
        text.push_str("\nNot routed:");
        for entry in &plan.not_routed {
            let _ = write!(text, "\n  {} `{}`: {}", entry.path, entry.written, entry.why);
        }
    }
    if !plan.denied.is_empty() {
        text.push_str(
            "\nDeny list (deny wins: no denied host is routed on its own; the gateway's filter refuses its names):",
        );
        for denied in &plan.denied {
            let _ = write!(text, "\n  {} `{}`: ", denied.path, denied.written);
            if denied.inside.is_empty() {
                text.push_str("not routed");
            } else {
                let inside: Vec<&str> = denied.inside.iter().map(String::as_str).collect();
                let _ = write!(
                    text,
                    "its names ride the route of {} to the gateway, which refuses them",
                    inside.join(", ")
                );
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value as Json;

    fn policy(yaml: &str) -> PolicyDocument {
        let value: Json = serde_yaml_ng::from_str(yaml).unwrap();
        PolicyDocument::from_json(value.to_string().as_bytes()).unwrap()
    }

    /// Every document of every rendered file under `dir`, as JSON.
    fn documents(files: &[File], dir: &str) -> Vec<Json> {
        files
            .iter()
            .filter(|f| f.path.starts_with(dir))
            .flat_map(|f| {
                f.text.split("\n---\n").map(|d| serde_yaml_ng::from_str::<Json>(d).unwrap()).collect::<Vec<_>>()
            })
            .filter(|d| !d.is_null() && d["kind"] != "Kustomization")
            .collect()
    }

    fn of_kind<'a>(docs: &'a [Json], kind: &str) -> Vec<&'a Json> {
        docs.iter().filter(|d| d["kind"] == kind).collect()
    }

    fn strings(value: &Json) -> Vec<&str> {
        value.as_array().map(|a| a.iter().filter_map(Json::as_str).collect()).unwrap_or_default()
    }

    const POLICY: &str = r#"
        rules:
          - {name: httpbin, hosts: ["httpbin.org", "*.httpbin.org"]}
          - {name: ec2, hosts: ["ec2.*.amazonaws.com"], ports: [443]}
          - {name: api, hosts: ["api.example.com"], ports: [80]}
          - {name: net, cidrs: ["203.0.113.0/24"]}
        deny: {hosts: ["*.internal.httpbin.org", "metadata.google.internal"]}
        redirects: {follow: true, originateTls: ["httpbin.org", "*.httpbin.org"]}
    "#;

    /// What Istio's admission webhook checks (pkg/config/validation ValidateServiceEntry, ValidateVirtualService) and
    /// the CRD schemas cannot: DYNAMIC_DNS entries are wildcards only, without addresses or endpoints, with HTTP or
    /// TLS ports and MESH_EXTERNAL; DNS entries without endpoints are exact names; a VirtualService has one host, its
    /// SNI hosts are among its hosts and its matches name its own gateways.
    #[test]
    fn the_rendered_resources_pass_istios_webhook_rules() {
        let files = files(&policy(POLICY), "# header\n", Some(5)).unwrap();
        for dir in dirs() {
            let docs = documents(&files, dir);
            let entries = of_kind(&docs, "ServiceEntry");
            assert_eq!(entries.len(), 4, "{dir}");
            for entry in entries {
                let spec = &entry["spec"];
                let hosts = strings(&spec["hosts"]);
                assert_eq!(hosts.len(), 1);
                assert_eq!(spec["location"], "MESH_EXTERNAL");
                assert!(spec.get("addresses").is_none() && spec.get("endpoints").is_none());
                match spec["resolution"].as_str().unwrap() {
                    "DYNAMIC_DNS" => {
                        assert!(hosts[0].starts_with("*."), "{entry}");
                        for port in spec["ports"].as_array().unwrap() {
                            assert!(["HTTP", "TLS"].contains(&port["protocol"].as_str().unwrap()), "{entry}");
                            assert!(
                                port.get("targetPort").is_none(),
                                "the forward proxy takes the port from the request"
                            );
                        }
                    }
                    "DNS" => assert!(!hosts[0].contains('*'), "{entry}"),
                    other => panic!("resolution {other}"),
                }
            }
        }
        let docs = documents(&files, CLASSIC_DIR);
        for service in of_kind(&docs, "VirtualService") {
            let spec = &service["spec"];
            let hosts = strings(&spec["hosts"]);
            assert_eq!(hosts.len(), 1, "one host per VirtualService: {service}");
            let gateways = strings(&spec["gateways"]);
            for route in spec["http"].as_array().into_iter().chain(spec["tls"].as_array()).flatten() {
                for matching in route["match"].as_array().unwrap() {
                    assert!(strings(&matching["gateways"]).iter().all(|g| gateways.contains(g)), "{route}");
                    assert!(strings(&matching["sniHosts"]).iter().all(|h| hosts.contains(h)), "{route}");
                }
            }
        }
    }

    #[test]
    fn tls_origination_is_rendered_for_the_gateway_only() {
        let files = files(&policy(POLICY), "# header\n", None).unwrap();
        for dir in dirs() {
            let docs = documents(&files, dir);
            let origination: Vec<&Json> = of_kind(&docs, "DestinationRule")
                .into_iter()
                .filter(|d| d["metadata"]["name"].as_str().unwrap().starts_with("originate-tls-"))
                .collect();
            let hosts: Vec<&str> = origination.iter().map(|d| d["spec"]["host"].as_str().unwrap()).collect();
            assert_eq!(hosts, ["httpbin.org", "*.httpbin.org"], "{dir}");
            for rule in &origination {
                assert_eq!(strings(&rule["spec"]["exportTo"]), ["."], "{dir}: the gateway's namespace only");
                assert!(rule["spec"]["workloadSelector"]["matchLabels"].is_object(), "{dir}: the gateway's pods");
                let settings = &rule["spec"]["trafficPolicy"]["portLevelSettings"];
                assert_eq!(settings[0]["port"]["number"], 80);
                assert_eq!(settings[0]["tls"]["mode"], "SIMPLE");
            }
            let exact = &origination[0]["spec"]["trafficPolicy"]["portLevelSettings"][0]["tls"];
            assert_eq!(
                (exact["sni"].as_str(), strings(&exact["subjectAltNames"])),
                (Some("httpbin.org"), vec!["httpbin.org"])
            );
            let wildcard = &origination[1]["spec"]["trafficPolicy"]["portLevelSettings"][0]["tls"];
            assert!(wildcard.get("sni").is_none(), "auto SNI from the Host header: {wildcard}");
            let entry =
                of_kind(&docs, "ServiceEntry").into_iter().find(|e| e["spec"]["hosts"][0] == "httpbin.org").unwrap();
            assert_eq!(entry["spec"]["ports"][0]["targetPort"], 443, "{dir}: port 80 leaves on 443");
        }
    }

    #[test]
    fn not_routed_entries_and_supersets_are_said_in_the_kustomizations() {
        let files = files(&policy(POLICY), "# header\n", None).unwrap();
        for dir in dirs() {
            let kustomization = files.iter().find(|f| f.path == Path::new(dir).join("kustomization.yaml")).unwrap();
            for said in [
                "rules[3].cidrs[0] `203.0.113.0/24`: an address range",
                "*.amazonaws.com: 443 (TLS passthrough); rules[1].hosts[0] `ec2.*.amazonaws.com` of rule ec2",
                "deny.hosts[1] `metadata.google.internal`: not routed",
                "deny.hosts[0] `*.internal.httpbin.org`: its names ride the route of *.httpbin.org",
                "httpbin.org: 80 (TLS originated), 443 (TLS passthrough)",
            ] {
                let text = kustomization.text.replace("\n#   ", " ").replace("\n#     ", " ").replace("\n# ", " ");
                assert!(text.contains(said), "{dir}: {said:?} in\n{}", kustomization.text);
            }
            assert!(kustomization.text.lines().all(|l| l.len() <= 120), "{}", kustomization.text);
        }
    }

    #[test]
    fn what_cannot_be_routed_fails_the_render_with_its_field_path() {
        let error =
            files(&policy(r#"{rules: [{name: a, hosts: ["ok.com", "a.*.com"]}, {name: b, hosts: ["*"]}]}"#), "", None)
                .unwrap_err();
        let lines: Vec<&str> = error.lines().collect();
        assert_eq!(lines.len(), 2, "{error}");
        assert!(
            lines[0].starts_with("rules[0].hosts[1]: `a.*.com`: Istio takes only a leading `*.` wildcard"),
            "{error}"
        );
        assert!(lines[1].starts_with("rules[1].hosts[0]: `*`: "), "{error}");
    }

    #[test]
    fn comments_wrap_and_keep_list_indentation() {
        let long = format!("{} {}", "word ".repeat(30).trim(), "tail");
        let text = wrapped(&format!("{long}\n  item {long}"));
        assert!(text.lines().all(|l| l.len() <= COMMENT_WIDTH + 2 && l.starts_with("# ")), "{text}");
        assert!(text.lines().any(|l| l.starts_with("#     word")), "continuation of an indented line: {text}");
    }
}
