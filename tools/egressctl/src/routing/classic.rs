//! `egress-routing/`: the policy's hosts through Istio's egress gateway, with Istio's API. The classic walkthrough's
//! shapes (mesh → gateway → destination), one VirtualService per host (Istio refuses `*.example.com` and
//! `api.example.com` in one VirtualService), generated from the policy instead of written for httpbin.

use super::plan::{Plan, RoutedHost, HTTP_PORT, TLS_PORT};
use super::{
    gateway_hop_rule, kustomization_file, labels, metadata, origination_rule, peer_authentication, port, seq,
    service_entry, sni_forward_proxy, summary, yaml_file, Doc, CLASSIC_DIR, PASSTHROUGH_NOTE, SNI_FORWARD_PROXY_FILE,
};
use crate::render::{map, File, GATEWAY_LABEL, GATEWAY_NAMESPACE};
use serde_yaml_ng::Value;

/// The Istio `Gateway` of the egress gateway, in [`GATEWAY_NAMESPACE`].
pub const GATEWAY_NAME: &str = "istio-egressgateway";

/// The egress gateway's Service, which sidecars route to.
pub fn gateway_service() -> String {
    format!("{GATEWAY_NAME}.{GATEWAY_NAMESPACE}.svc.cluster.local")
}

/// How routes name the gateway: `istio-system/istio-egressgateway`.
fn gateway_ref() -> String {
    format!("{GATEWAY_NAMESPACE}/{GATEWAY_NAME}")
}

pub(super) fn files(plan: &Plan, header: &str) -> Result<Vec<File>, String> {
    let namespace = GATEWAY_NAMESPACE;
    let mut files = Vec::new();
    if !plan.hosts.is_empty() {
        let entries: Vec<Doc> = plan.hosts.iter().map(|routed| service_entry(routed, namespace)).collect();
        files.push(yaml_file(
            CLASSIC_DIR,
            "serviceentries.yaml",
            header,
            "The policy's hosts in the mesh's registry: with REGISTRY_ONLY these entries are the only way out, and the \
             VirtualServices send all of it to the egress gateway. One entry per host, exported to every namespace.",
            &entries,
        )?);
        files.push(yaml_file(CLASSIC_DIR, "gateway.yaml", header, GATEWAY_ABOUT, &[gateway(plan)])?);
        let routes: Vec<Doc> = plan.hosts.iter().map(virtual_service).collect();
        files.push(yaml_file(
            CLASSIC_DIR,
            "virtualservices.yaml",
            header,
            "Two hops for each host: sidecar to egress gateway (gateway `mesh`), then gateway to the destination \
             (istio-system/istio-egressgateway). Routing the sidecars to the gateway is what makes the gateway, and \
             the suite on it, the only way out. One VirtualService per host: Istio refuses a wildcard and a name \
             under it in one VirtualService (duplicate hosts). Exported to every namespace for the mesh routes; the \
             gateway-bound routes apply only to the named gateway.",
            &routes,
        )?);
        let mut rules = vec![gateway_hop_rule(&gateway_service(), namespace, Some(&gateway_service()))];
        rules.extend(
            plan.hosts
                .iter()
                .filter(|h| h.originate_tls && h.routes(HTTP_PORT))
                .map(|routed| origination_rule(routed, namespace, GATEWAY_LABEL)),
        );
        files.push(yaml_file(
            CLASSIC_DIR,
            "destinationrules.yaml",
            header,
            "How each hop is encrypted: mesh mTLS from the sidecar to the gateway, then the app's own TLS, or TLS the \
             gateway originates for the hosts of redirects.originateTls.",
            &rules,
        )?);
        let wildcards: Vec<&RoutedHost> = plan.hosts.iter().filter(|h| h.is_wildcard() && h.routes(TLS_PORT)).collect();
        let attach = ("workloadSelector", map([("labels", labels(GATEWAY_LABEL))]));
        if let Some(doc) = sni_forward_proxy(&wildcards, namespace, attach) {
            files.push(yaml_file(
                CLASSIC_DIR,
                SNI_FORWARD_PROXY_FILE,
                header,
                "What Istio does not generate for DYNAMIC_DNS wildcard hosts on a gateway.",
                &[doc],
            )?);
        }
    }
    files.push(yaml_file(
        CLASSIC_DIR,
        "peerauthentication.yaml",
        header,
        "The egress gateway accepts mesh mTLS only.",
        &[peer_authentication(GATEWAY_NAME, namespace, GATEWAY_LABEL)],
    )?);
    let about = format!(
        "The routing for Istio's egress gateway (istio-system/istio-egressgateway, pods labelled istio: egressgateway), \
         rendered from the policy: the classic \"Egress Gateways with TLS Origination\" walkthrough for every host the \
         policy allows. Apply with\n  kubectl apply -k wasmplugin-manifests/{CLASSIC_DIR}\n(the top-level \
         kustomization includes it). The premise is a mesh that reaches registered hosts only, so that these \
         ServiceEntries are the only way out and the gateway the only path; that is an install option, not a \
         resource:\n  istioctl install --set profile=demo --set meshConfig.outboundTrafficPolicy.mode=REGISTRY_ONLY\n\
         (demo deploys the egress gateway; other profiles add --set \"components.egressGateways[0].name=\
         istio-egressgateway\" --set \"components.egressGateways[0].enabled=true\").\nEverything lives in \
         istio-system: the ServiceEntries, VirtualServices and the sidecar-to-gateway DestinationRule are exported to \
         every namespace (clients anywhere use them), the TLS origination DestinationRules stay in istio-system and \
         select the gateway's pods. Wildcard hosts are DYNAMIC_DNS ServiceEntries: Istio 1.30 or later. {PASSTHROUGH_NOTE}\n{}",
        summary(plan)
    );
    let kustomization = kustomization_file(CLASSIC_DIR, header, &about, &files)?;
    files.push(kustomization);
    Ok(files)
}

const GATEWAY_ABOUT: &str = "The egress gateway's two ways out, for the policy's hosts. Port 80, HTTPS with \
ISTIO_MUTUAL: sidecars reach the gateway over Istio mTLS, so it terminates a connection carrying the caller's SPIFFE \
certificate (the identity stage and the allow-list's principal and namespace rules need it) and reads the plain HTTP \
request inside; it then sends it on as HTTP, or inside TLS it originates. The port stays 80, the port the app called; \
the protocol is what travels on it. Port 443, TLS PASSTHROUGH: the app's own TLS, routed by SNI alone; the gateway \
never sees a request or a caller certificate there, so the SNI allow-list is the only check. Hosts are written \
istio-system/<host>: only VirtualServices of istio-system (these) can bind to them.";

/// The egress `Gateway`: a mesh-mTLS server on the HTTP port, a passthrough server on the TLS port, each listing the
/// hosts routed on it.
fn gateway(plan: &Plan) -> Doc {
    let hosts_on = |port: u16| -> Vec<String> {
        plan.hosts.iter().filter(|h| h.routes(port)).map(|h| format!("{GATEWAY_NAMESPACE}/{}", h.host)).collect()
    };
    let mut servers = Vec::new();
    let http = hosts_on(HTTP_PORT);
    if !http.is_empty() {
        // The SNI the sidecars present (gateway_hop_rule): a host of this server, so its filter chain is chosen.
        let mut hosts = vec![format!("{GATEWAY_NAMESPACE}/{}", gateway_service())];
        hosts.extend(http);
        servers.push(map([
            (
                "port",
                map([("number", HTTP_PORT.into()), ("name", "https-mesh-mtls".into()), ("protocol", "HTTPS".into())]),
            ),
            ("hosts", seq(hosts.iter().map(String::as_str))),
            ("tls", map([("mode", "ISTIO_MUTUAL".into())])),
        ]));
    }
    let tls = hosts_on(TLS_PORT);
    if !tls.is_empty() {
        servers.push(map([
            (
                "port",
                map([("number", TLS_PORT.into()), ("name", "tls-passthrough".into()), ("protocol", "TLS".into())]),
            ),
            ("hosts", seq(tls.iter().map(String::as_str))),
            ("tls", map([("mode", "PASSTHROUGH".into())])),
        ]));
    }
    let value = map([
        ("apiVersion", "networking.istio.io/v1".into()),
        ("kind", "Gateway".into()),
        ("metadata", metadata(GATEWAY_NAME, GATEWAY_NAMESPACE)),
        ("spec", map([("selector", labels(GATEWAY_LABEL)), ("servers", Value::Sequence(servers))])),
    ]);
    let why = format!(
        "The HTTP server also lists {}: the SNI of every sidecar's mTLS to the gateway (destinationrules.yaml), which \
         selects this server whatever host the app asked for; no VirtualService binds to it. \
         ../follow-redirects-envoyfilter.yaml merges redirect following into this server's routes (port 80).",
        gateway_service()
    );
    Doc::new(why, value)
}

/// One host's VirtualService: for each routed port, the mesh route to the gateway and the gateway's route out.
fn virtual_service(routed: &RoutedHost) -> Doc {
    let gateway = gateway_ref();
    let destination =
        |host: &str, number: u16| map([("destination", map([("host", host.into()), ("port", port(number))]))]);
    let matching = |gateway: &str, number: u16, sni: bool| {
        let mut entries = vec![("gateways", seq([gateway])), ("port", Value::from(number))];
        if sni {
            entries.push(("sniHosts", seq([routed.host.as_str()])));
        }
        Value::Sequence(vec![map(entries)])
    };
    let mut spec = vec![
        ("hosts", seq([routed.host.as_str()])),
        ("exportTo", seq(["*"])),
        ("gateways", seq(["mesh", gateway.as_str()])),
    ];
    if routed.routes(HTTP_PORT) {
        let out = format!("egress-gateway-to-{}", routed.name);
        spec.push((
            "http",
            Value::Sequence(vec![
                map([
                    ("name", "mesh-to-egress-gateway".into()),
                    ("match", matching("mesh", HTTP_PORT, false)),
                    ("route", Value::Sequence(vec![destination(&gateway_service(), HTTP_PORT)])),
                ]),
                map([
                    ("name", out.into()),
                    ("match", matching(&gateway, HTTP_PORT, false)),
                    ("route", Value::Sequence(vec![destination(&routed.host, HTTP_PORT)])),
                ]),
            ]),
        ));
    }
    if routed.routes(TLS_PORT) {
        spec.push((
            "tls",
            Value::Sequence(vec![
                map([
                    ("match", matching("mesh", TLS_PORT, true)),
                    ("route", Value::Sequence(vec![destination(&gateway_service(), TLS_PORT)])),
                ]),
                map([
                    ("match", matching(&gateway, TLS_PORT, true)),
                    ("route", Value::Sequence(vec![destination(&routed.host, TLS_PORT)])),
                ]),
            ]),
        ));
    }
    let value = map([
        ("apiVersion", "networking.istio.io/v1".into()),
        ("kind", "VirtualService".into()),
        ("metadata", metadata(&format!("egress-{}", routed.name), GATEWAY_NAMESPACE)),
        ("spec", map(spec)),
    ]);
    let mut why = super::describe(routed);
    if routed.routes(HTTP_PORT) {
        why.push_str(&format!(
            "\nHTTP: mesh mTLS to the gateway on {HTTP_PORT}, then {} to the destination.",
            if routed.originate_tls { "TLS the gateway originates" } else { "plain HTTP" }
        ));
    }
    if routed.routes(TLS_PORT) {
        why.push_str(&format!("\nTLS: passed through on {TLS_PORT} at both hops, routed by SNI."));
    }
    Doc::new(why, value)
}
