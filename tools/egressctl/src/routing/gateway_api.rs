//! `gateway-api-routing/`: the policy's hosts through a Gateway API egress `Gateway` (class `istio`), in sidecar
//! mode, as Istio's egress walkthrough does it with the Gateway API: mesh routes whose parent is the host's
//! ServiceEntry send it to the gateway's Service; at the gateway, routes whose backend is the host itself
//! (`networking.istio.io/Hostname`, which must name a ServiceEntry host of the route's namespace) send it out.

use super::plan::{Plan, RoutedHost, HTTP_PORT, TLS_PORT};
use super::{
    gateway_hop_rule, kustomization_file, metadata, origination_rule, peer_authentication, seq, service_entry,
    sni_forward_proxy, summary, yaml_file, Doc, GATEWAY_API_DIR, PASSTHROUGH_NOTE, SNI_FORWARD_PROXY_FILE,
};
use crate::render::{follow_redirects_document, map, File, FOLLOW_REDIRECTS_FILE, GATEWAY_API_GATEWAY};
use serde_yaml_ng::Value;

const GATEWAY_API: &str = "gateway.networking.k8s.io/v1";
/// The label Istio's gateway controller puts on the `Gateway`'s pods.
const GATEWAY_POD_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// The `Gateway`'s listeners: the mesh-mTLS HTTP one and the TLS passthrough one.
const HTTP_LISTENER: &str = "https-mesh-mtls";
const TLS_LISTENER: &str = "tls-passthrough";

/// The Service Istio creates for the `Gateway` (`<name>-istio`), which the mesh routes send to.
fn gateway_service_name() -> String {
    format!("{}-istio", GATEWAY_API_GATEWAY.1)
}

fn gateway_service() -> String {
    format!("{}.{}.svc.cluster.local", gateway_service_name(), GATEWAY_API_GATEWAY.0)
}

fn target_refs() -> Value {
    Value::Sequence(vec![map([
        ("group", "gateway.networking.k8s.io".into()),
        ("kind", "Gateway".into()),
        ("name", GATEWAY_API_GATEWAY.1.into()),
    ])])
}

pub(super) fn files(plan: &Plan, header: &str, follow_hops: Option<u32>) -> Result<Vec<File>, String> {
    let (namespace, gateway_name) = GATEWAY_API_GATEWAY;
    let selector = (GATEWAY_POD_LABEL, gateway_name);
    let namespace_doc = map([
        ("apiVersion", "v1".into()),
        ("kind", "Namespace".into()),
        ("metadata", map([("name", namespace.into())])),
    ]);
    let mut files = vec![yaml_file(
        GATEWAY_API_DIR,
        "namespace.yaml",
        header,
        "The egress gateway's namespace: the Gateway, its pods and Service (created by istiod), and every resource of \
         this folder.",
        &[Doc::new("", namespace_doc)],
    )?];
    if !plan.hosts.is_empty() {
        files.push(yaml_file(
            GATEWAY_API_DIR,
            "gateway.yaml",
            header,
            "The egress gateway, deployed by istiod for this Gateway (Deployment and Service egress-gateway-istio).",
            &[gateway(plan)],
        )?);
        let entries: Vec<Doc> = plan.hosts.iter().map(|routed| service_entry(routed, namespace)).collect();
        files.push(yaml_file(
            GATEWAY_API_DIR,
            "serviceentries.yaml",
            header,
            "The policy's hosts in the mesh's registry (REGISTRY_ONLY lets nothing else out), exported to every \
             namespace; they are also the parents of the mesh routes and, in this namespace, what the gateway \
             routes' Hostname backends name.",
            &entries,
        )?);
        let mut mesh = Vec::new();
        let mut out = Vec::new();
        for routed in &plan.hosts {
            for port in [HTTP_PORT, TLS_PORT].into_iter().filter(|&p| routed.routes(p)) {
                mesh.push(mesh_route(routed, port));
                out.push(gateway_route(routed, port));
            }
        }
        files.push(yaml_file(
            GATEWAY_API_DIR,
            "mesh-routes.yaml",
            header,
            "Sidecar to egress gateway: for each host and port, a route whose parent is the host's ServiceEntry (the \
             mesh side, GAMMA), sending to the gateway's Service. Routes in the ServiceEntry's own namespace are \
             producer routes: they apply to clients in every namespace.",
            &mesh,
        )?);
        files.push(yaml_file(
            GATEWAY_API_DIR,
            "gateway-routes.yaml",
            header,
            "Egress gateway to the destination: for each host and port, a route on the Gateway's listener whose \
             backend is the host itself (kind Hostname, group networking.istio.io: the ServiceEntry host of this \
             namespace).",
            &out,
        )?);
        let mut rules = vec![gateway_hop_rule(&gateway_service(), namespace, None)];
        rules.extend(
            plan.hosts
                .iter()
                .filter(|h| h.originate_tls && h.routes(HTTP_PORT))
                .map(|routed| origination_rule(routed, namespace, selector)),
        );
        files.push(yaml_file(
            GATEWAY_API_DIR,
            "destinationrules.yaml",
            header,
            "How each hop is encrypted. Istio's gateway pods carry no security.istio.io/tlsMode label, so auto mTLS \
             would send plain text to the gateway: the first rule asks for ISTIO_MUTUAL explicitly. The listener \
             names no hostname, so there is no SNI to match and the rule sets none.",
            &rules,
        )?);
        let wildcards: Vec<&RoutedHost> = plan.hosts.iter().filter(|h| h.is_wildcard() && h.routes(TLS_PORT)).collect();
        if let Some(doc) = sni_forward_proxy(&wildcards, namespace, ("targetRefs", target_refs())) {
            files.push(yaml_file(
                GATEWAY_API_DIR,
                SNI_FORWARD_PROXY_FILE,
                header,
                "What Istio does not generate for DYNAMIC_DNS wildcard hosts on a gateway.",
                &[doc],
            )?);
        }
        if let Some(hops) = follow_hops.filter(|_| plan.hosts.iter().any(|h| h.routes(HTTP_PORT))) {
            let (why, document) = follow_redirects_document(hops, namespace, ("targetRefs", target_refs()));
            files.push(yaml_file(GATEWAY_API_DIR, FOLLOW_REDIRECTS_FILE, header, &why, &[Doc::new("", document)])?);
        }
    }
    files.push(yaml_file(
        GATEWAY_API_DIR,
        "peerauthentication.yaml",
        header,
        "The egress gateway accepts mesh mTLS only.",
        &[peer_authentication(gateway_name, namespace, selector)],
    )?);
    let about = format!(
        "The routing for a Gateway API egress gateway ({namespace}/{gateway_name}, class istio, the Gateway the \
         ../gateway-api/ plugins attach to), rendered from the policy, in sidecar mode. It needs the Gateway API \
         CRDs (v1.5 or later: TLSRoute v1) and a mesh with outboundTrafficPolicy REGISTRY_ONLY. Apply with\n  \
         kubectl apply -k wasmplugin-manifests/{GATEWAY_API_DIR}\n  kubectl apply -k \
         wasmplugin-manifests/gateway-api\n  kubectl apply -k wasmplugin-manifests/collector\n(the plugins, then the \
         collector the audit stage ships to; not the top-level kustomization, which is the classic gateway's). The \
         identity stage's signing key must reach the gateway's pods as in ../egressgateway-env-patch.yaml, on \
         Deployment {}: give it through the Gateway's infrastructure parametersRef, since istiod owns that \
         Deployment.\nEverything lives in {namespace}: the ServiceEntries, the mesh routes (producer routes, for \
         every client namespace) and the sidecar-to-gateway DestinationRule are exported to every namespace; the \
         gateway routes bind only to this namespace's Gateway (allowedRoutes Same); the TLS origination \
         DestinationRules stay in {namespace} and select the gateway's pods. Wildcard hosts are DYNAMIC_DNS \
         ServiceEntries: Istio 1.30 or later. {PASSTHROUGH_NOTE}\n{}",
        gateway_service_name(),
        summary(plan)
    );
    let kustomization = kustomization_file(GATEWAY_API_DIR, header, &about, &files)?;
    files.push(kustomization);
    Ok(files)
}

/// The Gateway: an HTTPS listener terminating mesh mTLS (ISTIO_MUTUAL) on the HTTP port and a TLS passthrough
/// listener on the TLS port, each only when some host is routed on it. No listener hostname: the routes' hostnames
/// say what is served, and only routes of this namespace may attach.
fn gateway(plan: &Plan) -> Doc {
    let (namespace, name) = GATEWAY_API_GATEWAY;
    let allowed = |kind: &str| {
        map([
            ("namespaces", map([("from", "Same".into())])),
            (
                "kinds",
                Value::Sequence(vec![map([("group", "gateway.networking.k8s.io".into()), ("kind", kind.into())])]),
            ),
        ])
    };
    let mut listeners = Vec::new();
    if plan.hosts.iter().any(|h| h.routes(HTTP_PORT)) {
        listeners.push(map([
            ("name", HTTP_LISTENER.into()),
            ("port", HTTP_PORT.into()),
            ("protocol", "HTTPS".into()),
            (
                "tls",
                map([
                    ("mode", "Terminate".into()),
                    ("options", map([("gateway.istio.io/tls-terminate-mode", "ISTIO_MUTUAL".into())])),
                ]),
            ),
            ("allowedRoutes", allowed("HTTPRoute")),
        ]));
    }
    if plan.hosts.iter().any(|h| h.routes(TLS_PORT)) {
        listeners.push(map([
            ("name", TLS_LISTENER.into()),
            ("port", TLS_PORT.into()),
            ("protocol", "TLS".into()),
            ("tls", map([("mode", "Passthrough".into())])),
            ("allowedRoutes", allowed("TLSRoute")),
        ]));
    }
    let value = map([
        ("apiVersion", GATEWAY_API.into()),
        ("kind", "Gateway".into()),
        (
            "metadata",
            map([
                ("name", name.into()),
                ("namespace", namespace.into()),
                // An egress gateway needs no external address.
                ("annotations", map([("networking.istio.io/service-type", "ClusterIP".into())])),
            ]),
        ),
        ("spec", map([("gatewayClassName", "istio".into()), ("listeners", Value::Sequence(listeners))])),
    ]);
    let why = format!(
        "{HTTP_LISTENER} (port {HTTP_PORT}): HTTPS, Terminate with gateway.istio.io/tls-terminate-mode ISTIO_MUTUAL: \
         the gateway terminates the sidecars' mesh mTLS, so it sees the caller's SPIFFE certificate and the plain \
         HTTP inside. {TLS_LISTENER} (port {TLS_PORT}): the app's own TLS, passed through by SNI. \
         follow-redirects-envoyfilter.yaml, when rendered, merges redirect following into the routes of port \
         {HTTP_PORT}."
    );
    Doc::new(why, value)
}

fn route_kind(port: u16) -> &'static str {
    if port == HTTP_PORT {
        "HTTPRoute"
    } else {
        "TLSRoute"
    }
}

/// Sidecar to gateway for one host and port: parent the host's ServiceEntry (and port), backend the gateway Service.
fn mesh_route(routed: &RoutedHost, port: u16) -> Doc {
    let (namespace, _) = GATEWAY_API_GATEWAY;
    let parent = map([
        ("group", "networking.istio.io".into()),
        ("kind", "ServiceEntry".into()),
        ("name", format!("egress-{}", routed.name).into()),
        ("port", port.into()),
    ]);
    let backend = map([("name", gateway_service_name().into()), ("port", port.into())]);
    let mut spec = vec![("parentRefs", Value::Sequence(vec![parent]))];
    if port == TLS_PORT {
        // A TLSRoute must name its hostnames (the SNI it matches).
        spec.push(("hostnames", seq([routed.host.as_str()])));
    }
    spec.push(("rules", Value::Sequence(vec![map([("backendRefs", Value::Sequence(vec![backend]))])])));
    let value = map([
        ("apiVersion", GATEWAY_API.into()),
        ("kind", route_kind(port).into()),
        ("metadata", metadata(&format!("mesh-{}", routed.name), namespace)),
        ("spec", map(spec)),
    ]);
    let why = format!(
        "{} port {port}: {}",
        routed.host,
        if port == HTTP_PORT { "plain HTTP, to the gateway over mesh mTLS" } else { "the app's TLS, by SNI" }
    );
    Doc::new(why, value)
}

/// Gateway to the destination for one host and port: on the Gateway's listener, backend the host itself.
fn gateway_route(routed: &RoutedHost, port: u16) -> Doc {
    let (namespace, name) = GATEWAY_API_GATEWAY;
    let listener = if port == HTTP_PORT { HTTP_LISTENER } else { TLS_LISTENER };
    let parent = map([("name", name.into()), ("sectionName", listener.into())]);
    let backend = map([
        ("group", "networking.istio.io".into()),
        ("kind", "Hostname".into()),
        ("name", routed.host.as_str().into()),
        ("port", port.into()),
    ]);
    let value = map([
        ("apiVersion", GATEWAY_API.into()),
        ("kind", route_kind(port).into()),
        ("metadata", metadata(&format!("egress-{}", routed.name), namespace)),
        (
            "spec",
            map([
                ("parentRefs", Value::Sequence(vec![parent])),
                ("hostnames", seq([routed.host.as_str()])),
                ("rules", Value::Sequence(vec![map([("backendRefs", Value::Sequence(vec![backend]))])])),
            ]),
        ),
    ]);
    let how = match port {
        HTTP_PORT if routed.originate_tls => "plain HTTP in, TLS originated out (destinationrules.yaml)",
        HTTP_PORT => "plain HTTP",
        _ => "passed through by SNI",
    };
    let mut why = format!("{}\n{} port {port}: {how}.", super::describe(routed), routed.host);
    if routed.is_wildcard() {
        why.push_str(" The backend is the DYNAMIC_DNS wildcard: the gateway resolves the requested name.");
    }
    Doc::new(why, value)
}
