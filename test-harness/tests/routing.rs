//! The routing `egressctl render` writes from the policy, read as Istio reads it: complete (every host and port the
//! policy allows goes mesh → gateway → destination), no wider than the policy (but for the documented supersets of
//! inner-wildcard patterns), nothing for deny-only hosts or address ranges, valid against the CRD schemas, and the
//! gateway-side EnvoyFilters accepted by a real Envoy in the shape istiod gives the listeners they patch.
//!
//! Routability is worked out here from the rendered documents alone, independently of the renderer: for a name and
//! a port, the most specific ServiceEntry, mesh route, gateway server and gateway route Istio would pick for it, the
//! sidecar-to-gateway DestinationRule, and the destination the gateway resolves. What the policy allows is decided
//! from the policy document with egress-core's own host index. Both routing sets are checked: rendered in memory from
//! a policy with every kind of rule, and as committed (`wasmplugin-manifests/`, from `examples/policy.yaml`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use egress_core::hosts::{HostIndex, HostPattern};
use egress_core::{Policy, PolicyDocument};
use egress_harness::envoy::{workspace_root, Launcher};
use egress_harness::openapi::CrdSchemas;
use egressctl::render::File;
use egressctl::routing::{self, CLASSIC_DIR, GATEWAY_API_DIR, SNI_FORWARD_PROXY_FILE};
use serde::Deserialize;
use serde_json::{json, Value};
use std::fs;
use std::path::Path;

/// Every kind of rule the routing handles, and the ones it declines.
const POLICY: &str = r#"
mode: enforce
rules:
  - name: exact
    hosts: ["httpbin.org", "API.Example.com.", "a.internal.httpbin.org"]
  - name: wildcard
    hosts: ["*.httpbin.org", "*.cdn.example.net"]
  - name: inner-wildcard                 # routed as *.amazonaws.com, the documented superset
    hosts: ["ec2.*.amazonaws.com", "s3.*.amazonaws.com"]
    ports: [443]
  - name: passthrough-only
    hosts: ["secure.example.org", "*.tls.example.org"]
    ports: [443]
  - name: http-only
    hosts: ["plain.example.org"]
    ports: [80]
  - name: scoped                         # methods and paths: HTTP only, a tunnel never matches
    hosts: ["api.github.com"]
    methods: [GET]
    paths: ["/repos/*"]
  - name: by-identity                    # the caller's identity: HTTP only, passthrough shows none
    hosts: ["api.stripe.com"]
    namespaces: [billing]
  - name: ranges                         # address ranges: not routable through a classic gateway
    cidrs: ["203.0.113.0/24", "198.51.100.7/32"]
    ports: [5432]
  - name: mixed
    hosts: ["mixed.example.com"]
    cidrs: ["192.0.2.0/24"]
  - name: follows
    hosts: ["dl.example.com", "*.mirror.example.com"]
    redirects: {follow: true, maxHops: 3}
deny:
  hosts: ["metadata.google.internal", "*.internal.httpbin.org", "blocked.example.com"]
  cidrs: ["169.254.0.0/16"]
redirects:
  originateTls: ["httpbin.org", "*.httpbin.org", "edge.cdn.example.net", "dl.example.com"]
"#;

const HTTP: u16 = 80;
const TLS: u16 = 443;

fn document(yaml: &str) -> PolicyDocument {
    let value: Value = serde_yaml_ng::from_str(yaml).unwrap();
    PolicyDocument::from_json(value.to_string().as_bytes()).unwrap()
}

fn rendered(doc: &PolicyDocument) -> Vec<File> {
    let hops = Policy::compile(doc).unwrap().follow_route_hops();
    routing::files(doc, "# test\n", hops).unwrap()
}

/// The documents of `files` under `dir`, comment-only preambles and kustomizations left out.
fn docs_of(files: &[File], dir: &str) -> Vec<Value> {
    files
        .iter()
        .filter(|f| f.path.starts_with(dir))
        .flat_map(|f| serde_yaml_ng::Deserializer::from_str(&f.text).map(|d| Value::deserialize(d).unwrap()))
        .filter(|d| !d.is_null() && d["kind"] != "Kustomization")
        .collect()
}

/// The committed files of a routing folder, and the top-level ones it works with.
fn committed(dir: &str) -> Vec<File> {
    let root = workspace_root().join("wasmplugin-manifests");
    let mut files = Vec::new();
    for entry in fs::read_dir(root.join(dir)).unwrap() {
        let path = entry.unwrap().path();
        let relative = path.strip_prefix(&root).unwrap().to_path_buf();
        files.push(File { path: relative, text: fs::read_to_string(&path).unwrap() });
    }
    files
}

fn strings(value: &Value) -> Vec<&str> {
    value.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

/// Istio's host matching: exact, or `*.suffix` for any name strictly below the suffix.
fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name.strip_suffix(suffix).is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        None => pattern == "*" || pattern == name,
    }
}

/// The most specific of `patterns` matching `name`, as Envoy picks virtual hosts and server names: exact first, then
/// the longest wildcard.
fn most_specific<'a>(patterns: impl IntoIterator<Item = &'a str>, name: &str) -> Option<&'a str> {
    patterns
        .into_iter()
        .filter(|p| matches(p, name))
        .max_by_key(|p| if p.starts_with("*.") { p.len() } else { usize::MAX })
}

/// Names to probe a host pattern with: the name itself, or a name one and two labels below a wildcard, or the inner
/// wildcard filled in.
fn probes(raw: &str) -> Vec<String> {
    match HostPattern::parse(raw).unwrap() {
        HostPattern::Exact(name) => vec![name],
        HostPattern::Below(suffix) => vec![format!("probe.{suffix}"), format!("a.b.{suffix}")],
        HostPattern::Shaped(labels) => {
            vec![labels.iter().map(|l| l.as_deref().unwrap_or("probe")).collect::<Vec<_>>().join(".")]
        }
    }
}

/// A rule with hosts: its patterns (indexed and as written), its ports (`None`: any), and whether it names methods,
/// paths, principals or namespaces.
struct RuleHosts {
    hosts: HostIndex<u32>,
    ports: Option<Vec<u16>>,
    scoped: bool,
    raw: Vec<String>,
}

impl RuleHosts {
    /// Whether the rule can allow something on `port`.
    fn opens(&self, port: u16) -> bool {
        self.ports.as_ref().is_none_or(|ports| ports.contains(&port)) && !(port == TLS && self.scoped)
    }
}

/// What the policy allows, from its document: a name on a port, for some request (any method, path and caller the
/// rule names). A passthrough connection shows the gateway no request and no caller (the app's TLS is not wrapped in
/// mesh mTLS), so on the TLS port only rules without methods, paths, principals and namespaces count.
struct Allowed {
    rules: Vec<RuleHosts>,
    deny: HostIndex<u32>,
    deny_raw: Vec<String>,
    originate: HostIndex<u32>,
}

impl Allowed {
    fn new(doc: &PolicyDocument) -> Allowed {
        let index = |patterns: &[String]| {
            let mut index = HostIndex::default();
            for raw in patterns {
                index.insert(&HostPattern::parse(raw).unwrap(), 0).unwrap();
            }
            index
        };
        let rules = doc
            .rules
            .iter()
            .filter_map(|rule| {
                let hosts = rule.hosts.as_ref()?;
                let ports = rule.ports.as_ref().map(|ports| ports.iter().map(|&p| u16::try_from(p).unwrap()).collect());
                let scoped = rule.methods.is_some()
                    || rule.paths.is_some()
                    || rule.principals.is_some()
                    || rule.namespaces.is_some();
                Some(RuleHosts { hosts: index(hosts), ports, scoped, raw: hosts.clone() })
            })
            .collect();
        let deny_raw = doc.deny.as_ref().map(|d| d.hosts.clone()).unwrap_or_default();
        let originate = index(&doc.redirects.as_ref().map(|r| r.originate_tls.clone()).unwrap_or_default());
        Allowed { rules, deny: index(&deny_raw), deny_raw, originate }
    }

    fn denied(&self, name: &str) -> bool {
        self.deny.matches(name)
    }

    fn allows(&self, name: &str, port: u16) -> bool {
        !self.denied(name) && self.rules.iter().any(|rule| rule.hosts.matches(name) && rule.opens(port))
    }

    /// Whether `name` lies in the documented superset of an inner-wildcard pattern of a rule allowing `port`: below
    /// the pattern's literal labels after its last `*`.
    fn in_superset(&self, name: &str, port: u16) -> bool {
        !self.denied(name)
            && self.rules.iter().any(|rule| {
                rule.opens(port)
                    && rule.raw.iter().any(|raw| {
                        let tail = raw.rsplit_once("*.").map(|(_, tail)| tail).filter(|_| !raw.starts_with("*."));
                        tail.is_some_and(|tail| matches(&format!("*.{tail}"), name))
                    })
            })
    }

    /// The ports the policy allows `raw` (a rule host pattern) on, per rule listing it.
    fn ports_of(&self, raw: &str) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .rules
            .iter()
            .filter(|rule| rule.raw.iter().any(|h| h == raw))
            .flat_map(|rule| [HTTP, TLS].into_iter().filter(|&p| rule.opens(p)))
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }
}

/// A routing set, read as Istio would read it.
trait Routing {
    /// Where `name` on `port` leaves the gateway (the Istio host its gateway route names), or why it does not.
    fn route(&self, name: &str, port: u16) -> Result<String, String>;
    /// The ServiceEntries: (host, ports, their documents).
    fn entries(&self) -> Vec<&Value>;
    /// The EnvoyFilter patch that passes TLS through to the wildcard `host`.
    fn sni_forward_proxy(&self, host: &str) -> Option<&Value>;
    /// The origination DestinationRule of `host`, if any.
    fn origination(&self, host: &str) -> Option<&Value>;
    fn label(&self) -> &'static str;
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// The ServiceEntry Istio picks for `name` on `port` among those exported to every namespace, with its host.
fn service_entry<'a>(entries: &[&'a Value], name: &str, port: u16) -> Result<(&'a Value, String), String> {
    let exported: Vec<&Value> = entries.iter().copied().filter(|e| strings(&e["spec"]["exportTo"]) == ["*"]).collect();
    let hosts: Vec<&str> = exported.iter().flat_map(|e| strings(&e["spec"]["hosts"])).collect();
    let host = most_specific(hosts, name).ok_or(format!("{name}: no ServiceEntry (REGISTRY_ONLY blocks it)"))?;
    let entry = exported.into_iter().find(|e| strings(&e["spec"]["hosts"]).contains(&host)).unwrap();
    let protocol = if port == HTTP { "HTTP" } else { "TLS" };
    let has_port =
        entry["spec"]["ports"].as_array().unwrap().iter().any(|p| p["number"] == port && p["protocol"] == protocol);
    if !has_port {
        return Err(format!("{name}: ServiceEntry {host} has no {protocol} port {port}"));
    }
    let resolution = entry["spec"]["resolution"].as_str().unwrap();
    let expected = if host.starts_with("*.") { "DYNAMIC_DNS" } else { "DNS" };
    assert_eq!(resolution, expected, "{host}: the gateway must resolve the requested name itself");
    assert_eq!(entry["spec"]["location"], "MESH_EXTERNAL", "{host}");
    Ok((entry, host.to_string()))
}

/// The destination `dest` of a gateway route must be a registered host that resolves to the name asked for.
fn check_destination(entries: &[&Value], name: &str, port: u16, dest: &str) -> Result<(), String> {
    if !matches(dest, name) {
        return Err(format!("{name}: the gateway sends it to {dest}, another host"));
    }
    let (_, host) = service_entry(
        entries,
        dest.strip_prefix("*.").map_or(dest.to_string(), |s| format!("probe.{s}")).as_str(),
        port,
    )?;
    if host != dest {
        return Err(format!("{name}: the destination {dest} is not a ServiceEntry host ({host} is)"));
    }
    Ok(())
}

fn sni_patch<'a>(filters: &[&'a Value], host: &str) -> Option<&'a Value> {
    filters
        .iter()
        .flat_map(|f| f["spec"]["configPatches"].as_array().into_iter().flatten())
        .find(|p| p["match"]["listener"]["filterChain"]["sni"] == host)
}

fn origination_rule<'a>(rules: &[&'a Value], host: &str) -> Option<&'a Value> {
    rules.iter().copied().find(|r| r["spec"]["host"] == host && !r["spec"]["workloadSelector"].is_null())
}

struct Classic {
    docs: Vec<Value>,
}

const GATEWAY_SERVICE: &str = "istio-egressgateway.istio-system.svc.cluster.local";
const GATEWAY: &str = "istio-system/istio-egressgateway";

impl Routing for Classic {
    fn label(&self) -> &'static str {
        "classic"
    }

    fn entries(&self) -> Vec<&Value> {
        of_kind(&self.docs, "ServiceEntry")
    }

    fn sni_forward_proxy(&self, host: &str) -> Option<&Value> {
        let filters: Vec<&Value> = of_kind(&self.docs, "EnvoyFilter")
            .into_iter()
            .filter(|f| f["spec"]["workloadSelector"]["labels"] == json!({"istio": "egressgateway"}))
            .collect();
        sni_patch(&filters, host)
    }

    fn origination(&self, host: &str) -> Option<&Value> {
        origination_rule(&of_kind(&self.docs, "DestinationRule"), host)
    }

    fn route(&self, name: &str, port: u16) -> Result<String, String> {
        let entries = self.entries();
        service_entry(&entries, name, port)?;
        let services = of_kind(&self.docs, "VirtualService");
        let bound = |gateway: &str, exported: bool| -> Vec<&Value> {
            services
                .iter()
                .copied()
                .filter(|s| strings(&s["spec"]["gateways"]).contains(&gateway))
                .filter(|s| !exported || strings(&s["spec"]["exportTo"]) == ["*"])
                .collect()
        };
        // The VirtualService Istio picks for the name on a gateway, and its route for the port.
        let pick = |gateway: &str, exported: bool| -> Result<(&Value, String), String> {
            let candidates = bound(gateway, exported);
            let hosts: Vec<&str> = candidates.iter().flat_map(|s| strings(&s["spec"]["hosts"])).collect();
            let host = most_specific(hosts, name).ok_or(format!("{name}: no VirtualService for {gateway}"))?;
            let service = candidates.into_iter().find(|s| strings(&s["spec"]["hosts"]).contains(&host)).unwrap();
            let (field, sni) = if port == HTTP { ("http", false) } else { ("tls", true) };
            let route = service["spec"][field]
                .as_array()
                .into_iter()
                .flatten()
                .find(|route| {
                    route["match"].as_array().unwrap().iter().any(|m| {
                        strings(&m["gateways"]) == [gateway]
                            && m["port"] == port
                            && (!sni || strings(&m["sniHosts"]).iter().any(|h| matches(h, name)))
                    })
                })
                .ok_or(format!("{name}: VirtualService {host} has no {field} route on {gateway} port {port}"))?;
            let destinations = route["route"].as_array().unwrap();
            assert_eq!(destinations.len(), 1, "{route}");
            let destination = &destinations[0]["destination"];
            if destination["port"]["number"] != port {
                return Err(format!("{name}: {gateway} route to port {}", destination["port"]["number"]));
            }
            Ok((destination, host.to_string()))
        };
        // Sidecar → gateway.
        let (to_gateway, _) = pick("mesh", true)?;
        if to_gateway["host"] != GATEWAY_SERVICE || !to_gateway["subset"].is_null() {
            return Err(format!("{name}: the mesh route goes to {to_gateway}, not the egress gateway"));
        }
        let hop = of_kind(&self.docs, "DestinationRule")
            .into_iter()
            .find(|r| r["spec"]["host"] == GATEWAY_SERVICE && strings(&r["spec"]["exportTo"]) == ["*"])
            .ok_or("no DestinationRule for the sidecar-to-gateway hop")?;
        let setting = hop["spec"]["trafficPolicy"]["portLevelSettings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["port"]["number"] == port)
            .ok_or(format!("the gateway hop has no settings for port {port}"))?;
        let expected_mode = if port == HTTP { "ISTIO_MUTUAL" } else { "DISABLE" };
        assert_eq!(setting["tls"]["mode"], expected_mode, "port {port}: {setting}");
        // The gateway's server for the port accepts the name (and, over mesh mTLS, the SNI the sidecar presents).
        let gateway = of_kind(&self.docs, "Gateway")
            .into_iter()
            .find(|g| g["metadata"]["namespace"] == "istio-system" && g["metadata"]["name"] == "istio-egressgateway")
            .ok_or("no Gateway istio-system/istio-egressgateway")?;
        assert_eq!(gateway["spec"]["selector"], json!({"istio": "egressgateway"}));
        let (protocol, mode) = if port == HTTP { ("HTTPS", "ISTIO_MUTUAL") } else { ("TLS", "PASSTHROUGH") };
        let server = gateway["spec"]["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["port"]["number"] == port)
            .ok_or(format!("{name}: the Gateway has no server on port {port}"))?;
        assert_eq!((server["port"]["protocol"].as_str(), server["tls"]["mode"].as_str()), (Some(protocol), Some(mode)));
        let server_hosts: Vec<&str> =
            strings(&server["hosts"]).into_iter().filter_map(|h| h.strip_prefix("istio-system/")).collect();
        if most_specific(server_hosts.iter().copied(), name).is_none() {
            return Err(format!("{name}: the Gateway's port-{port} server does not accept it"));
        }
        if port == HTTP {
            let sni = setting["tls"]["sni"].as_str().expect("the gateway hop names the server by SNI");
            assert!(most_specific(server_hosts.iter().copied(), sni).is_some(), "SNI {sni} selects no server");
        }
        // Gateway → destination.
        let (out, _) = pick(GATEWAY, false)?;
        let destination = out["host"].as_str().unwrap().to_string();
        check_destination(&entries, name, port, &destination)?;
        Ok(destination)
    }
}

struct GatewayApi {
    docs: Vec<Value>,
}

const GATEWAY_API_NAMESPACE: &str = "istio-egress";
const GATEWAY_API_SERVICE: &str = "egress-gateway-istio";

impl Routing for GatewayApi {
    fn label(&self) -> &'static str {
        "Gateway API"
    }

    fn entries(&self) -> Vec<&Value> {
        of_kind(&self.docs, "ServiceEntry")
    }

    fn sni_forward_proxy(&self, host: &str) -> Option<&Value> {
        let target = json!([{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "egress-gateway"}]);
        let filters: Vec<&Value> =
            of_kind(&self.docs, "EnvoyFilter").into_iter().filter(|f| f["spec"]["targetRefs"] == target).collect();
        sni_patch(&filters, host)
    }

    fn origination(&self, host: &str) -> Option<&Value> {
        origination_rule(&of_kind(&self.docs, "DestinationRule"), host)
    }

    fn route(&self, name: &str, port: u16) -> Result<String, String> {
        let entries = self.entries();
        let (entry, _) = service_entry(&entries, name, port)?;
        assert_eq!(entry["metadata"]["namespace"], GATEWAY_API_NAMESPACE);
        let kind = if port == HTTP { "HTTPRoute" } else { "TLSRoute" };
        let routes = of_kind(&self.docs, kind);
        let hostnames_match = |route: &Value| {
            route["spec"]["hostnames"].is_null()
                || strings(&route["spec"]["hostnames"]).iter().any(|h| matches(h, name))
        };
        // Sidecar → gateway: a producer route of the ServiceEntry (same namespace), to the gateway's Service.
        let mesh = routes
            .iter()
            .find(|r| {
                r["metadata"]["namespace"] == entry["metadata"]["namespace"]
                    && r["spec"]["parentRefs"].as_array().unwrap().iter().any(|p| {
                        p["group"] == "networking.istio.io"
                            && p["kind"] == "ServiceEntry"
                            && p["name"] == entry["metadata"]["name"]
                            && p["port"] == port
                    })
                    && hostnames_match(r)
            })
            .ok_or(format!("{name}: no mesh {kind} on ServiceEntry {} port {port}", entry["metadata"]["name"]))?;
        let backend = &mesh["spec"]["rules"][0]["backendRefs"][0];
        if backend["name"] != GATEWAY_API_SERVICE || backend["port"] != port || !backend["kind"].is_null() {
            return Err(format!("{name}: the mesh route goes to {backend}"));
        }
        let hop = of_kind(&self.docs, "DestinationRule")
            .into_iter()
            .find(|r| {
                r["spec"]["host"] == format!("{GATEWAY_API_SERVICE}.{GATEWAY_API_NAMESPACE}.svc.cluster.local")
                    && strings(&r["spec"]["exportTo"]) == ["*"]
            })
            .ok_or("no DestinationRule for the sidecar-to-gateway hop")?;
        let setting = hop["spec"]["trafficPolicy"]["portLevelSettings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["port"]["number"] == port)
            .ok_or(format!("the gateway hop has no settings for port {port}"))?;
        assert_eq!(setting["tls"]["mode"], if port == HTTP { "ISTIO_MUTUAL" } else { "DISABLE" });
        // The Gateway's listener for the port.
        let gateway = of_kind(&self.docs, "Gateway")
            .into_iter()
            .find(|g| g["metadata"]["name"] == "egress-gateway" && g["metadata"]["namespace"] == GATEWAY_API_NAMESPACE)
            .ok_or("no Gateway istio-egress/egress-gateway")?;
        assert_eq!(gateway["spec"]["gatewayClassName"], "istio");
        let listener = gateway["spec"]["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["port"] == port)
            .ok_or(format!("{name}: the Gateway has no listener on port {port}"))?;
        let expected = if port == HTTP {
            json!({"mode": "Terminate", "options": {"gateway.istio.io/tls-terminate-mode": "ISTIO_MUTUAL"}})
        } else {
            json!({"mode": "Passthrough"})
        };
        assert_eq!(
            (&listener["protocol"], &listener["tls"]),
            (&json!(if port == HTTP { "HTTPS" } else { "TLS" }), &expected)
        );
        assert!(listener["hostname"].is_null(), "routes say what is served");
        assert!(listener["allowedRoutes"]["kinds"].as_array().unwrap().iter().any(|k| k["kind"] == kind));
        // Gateway → destination: the most specific route hostname on that listener, to a Hostname backend.
        let on_listener: Vec<&Value> = routes
            .iter()
            .copied()
            .filter(|r| {
                r["metadata"]["namespace"] == GATEWAY_API_NAMESPACE
                    && r["spec"]["parentRefs"].as_array().unwrap().iter().any(|p| {
                        p["name"] == "egress-gateway" && p["sectionName"] == listener["name"] && p["kind"].is_null()
                    })
            })
            .collect();
        let hostnames: Vec<&str> = on_listener.iter().flat_map(|r| strings(&r["spec"]["hostnames"])).collect();
        let host = most_specific(hostnames, name).ok_or(format!("{name}: no gateway {kind} for it"))?;
        let out = on_listener.into_iter().find(|r| strings(&r["spec"]["hostnames"]).contains(&host)).unwrap();
        let backend = &out["spec"]["rules"][0]["backendRefs"][0];
        assert_eq!(
            (&backend["group"], &backend["kind"], &backend["port"]),
            (&json!("networking.istio.io"), &json!("Hostname"), &json!(port))
        );
        let destination = backend["name"].as_str().unwrap().to_string();
        check_destination(&entries, name, port, &destination)?;
        Ok(destination)
    }
}

/// Every check of this file on one routing set rendered from `doc`.
fn check_routing(routing: &dyn Routing, doc: &PolicyDocument) {
    let label = routing.label();
    let allowed = Allowed::new(doc);
    let mut failures = Vec::new();

    // Complete: every name a rule allows, on every port it allows, goes through the gateway.
    for rule in &doc.rules {
        for raw in rule.hosts.iter().flatten() {
            for name in probes(raw) {
                for port in allowed.ports_of(raw) {
                    if allowed.denied(&name) {
                        continue;
                    }
                    if let Err(e) = routing.route(&name, port) {
                        failures.push(format!("{label}: rule {} host {raw}: {e}", rule.name));
                    }
                }
            }
        }
    }

    // No wider than the policy: whatever is routable is allowed, or in a documented superset.
    let mut routed_hosts = Vec::new();
    for entry in routing.entries() {
        let spec = &entry["spec"];
        assert!(spec["addresses"].is_null() && spec["endpoints"].is_null(), "{label}: no address is routed: {entry}");
        for host in strings(&spec["hosts"]) {
            routed_hosts.push(host.to_string());
            for port in
                spec["ports"].as_array().unwrap().iter().map(|p| u16::try_from(p["number"].as_u64().unwrap()).unwrap())
            {
                let probes = if host.starts_with("*.") { probes(host) } else { vec![host.to_string()] };
                for name in probes {
                    // Every registered port is captured by a route to the gateway: none lets sidecars out directly.
                    match routing.route(&name, port) {
                        Err(e) => {
                            failures.push(format!("{label}: {host} port {port} is registered but not routed: {e}"))
                        }
                        Ok(_) if allowed.allows(&name, port) || allowed.in_superset(&name, port) => {}
                        Ok(_) => {
                            failures.push(format!("{label}: {name} port {port} is routable, the policy allows it not"))
                        }
                    }
                }
            }
        }
    }

    // Deny wins: no routed host lies wholly in a deny pattern, and a deny-only name is not routable at all.
    for host in &routed_hosts {
        let covered = match HostPattern::parse(host).unwrap() {
            HostPattern::Exact(name) => allowed.denied(&name),
            HostPattern::Below(t) => allowed.deny_raw.iter().any(|raw| match HostPattern::parse(raw).unwrap() {
                HostPattern::Below(s) => s.is_empty() || t == s || t.ends_with(&format!(".{s}")),
                _ => false,
            }),
            HostPattern::Shaped(_) => panic!("{label}: Istio has no inner wildcards: {host}"),
        };
        assert!(!covered, "{label}: {host} is routed, but the deny list covers it");
    }
    for raw in &allowed.deny_raw {
        for name in probes(raw) {
            let inside_an_allowed_pattern = allowed.rules.iter().any(|rule| rule.hosts.matches(&name));
            for port in [HTTP, TLS] {
                let route = routing.route(&name, port);
                if !inside_an_allowed_pattern && route.is_ok() {
                    failures.push(format!("{label}: the deny-only {name} is routable on {port}"));
                }
                // A denied name inside an allowed wildcard rides the wildcard's route; the filter refuses it.
                if let Ok(destination) = route {
                    assert!(destination.starts_with("*."), "{label}: {name} has a route of its own: {destination}");
                }
            }
        }
    }

    // TLS origination: exactly for the names redirects.originateTls lists, at the gateway only.
    let originate = doc.redirects.iter().flat_map(|r| r.originate_tls.iter());
    let hosts: Vec<&String> = doc.rules.iter().flat_map(|r| r.hosts.iter().flatten()).chain(originate).collect();
    for raw in hosts {
        {
            for name in probes(raw).into_iter().filter(|n| allowed.allows(n, HTTP) || allowed.in_superset(n, HTTP)) {
                let Ok(destination) = routing.route(&name, HTTP) else { continue };
                let originates = allowed.originate.matches(&name);
                match (originates, routing.origination(&destination)) {
                    (true, Some(rule)) => {
                        assert_eq!(strings(&rule["spec"]["exportTo"]), ["."], "{label}: {destination}");
                        let tls = &rule["spec"]["trafficPolicy"]["portLevelSettings"][0];
                        assert_eq!((&tls["port"]["number"], &tls["tls"]["mode"]), (&json!(HTTP), &json!("SIMPLE")));
                        if !destination.starts_with("*.") {
                            assert_eq!(tls["tls"]["sni"], destination.as_str(), "{label}");
                            assert_eq!(strings(&tls["tls"]["subjectAltNames"]), [destination.as_str()], "{label}");
                            let (entry, _) = service_entry(&routing.entries(), &name, HTTP).unwrap();
                            let http = entry["spec"]["ports"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .find(|p| p["number"] == HTTP)
                                .unwrap();
                            assert_eq!(http["targetPort"], 443, "{label}: {destination} leaves on 443");
                        }
                    }
                    (false, None) => {}
                    (true, None) => {
                        failures.push(format!("{label}: {name} should leave in TLS the gateway originates"))
                    }
                    (false, Some(_)) => {
                        failures.push(format!("{label}: {name} leaves in TLS the policy never asked for"))
                    }
                }
            }
        }
    }

    // TLS passthrough to a DYNAMIC_DNS wildcard needs the SNI forward proxy, in istiod's DNS cache.
    for host in routed_hosts.iter().filter(|h| h.starts_with("*.")) {
        let passes = routing.route(&format!("probe.{}", &host[2..]), TLS).is_ok_and(|d| d == *host);
        match (passes, routing.sni_forward_proxy(host)) {
            (true, Some(patch)) => {
                assert_eq!(patch["applyTo"], "NETWORK_FILTER");
                assert_eq!(patch["match"]["context"], "GATEWAY");
                assert_eq!(
                    patch["match"]["listener"]["filterChain"]["filter"]["name"],
                    "envoy.filters.network.tcp_proxy"
                );
                assert_eq!(patch["patch"]["operation"], "INSERT_BEFORE");
                let config = &patch["patch"]["value"]["typed_config"];
                assert_eq!(
                    config["dns_cache_config"],
                    json!({"name": format!("{host}_dfp_dns_cache"), "dns_lookup_family": "V4_ONLY"})
                );
                assert_eq!(config["port_value"], 443);
            }
            (false, None) => {}
            (true, None) => {
                failures.push(format!("{label}: TLS to {host} passes through without the SNI forward proxy"))
            }
            (false, Some(_)) => failures.push(format!("{label}: an SNI forward proxy for {host}, which passes no TLS")),
        }
    }

    assert!(failures.is_empty(), "{} problems:\n  {}", failures.len(), failures.join("\n  "));
}

/// The Istio CRDs, and the Gateway API's when `$GATEWAY_API_CRDS` names them.
fn schemas() -> Option<CrdSchemas> {
    let (path, schemas) = CrdSchemas::find().unwrap()?;
    let Some(gateway_api) = std::env::var_os("GATEWAY_API_CRDS").filter(|v| !v.is_empty()) else {
        return Some(schemas);
    };
    let text = format!("{}\n---\n{}", fs::read_to_string(&path).unwrap(), fs::read_to_string(&gateway_api).unwrap());
    Some(CrdSchemas::parse(&text).unwrap())
}

fn validate(files: &[File]) {
    let Some(schemas) = schemas() else {
        eprintln!("SKIPPED: no Istio CRDs (set ISTIO_CRDS or provide ../shared/reference/istio-crds.gen.yaml)");
        return;
    };
    let mut failures = Vec::new();
    for dir in routing::dirs() {
        for document in docs_of(files, dir) {
            let api_version = document["apiVersion"].as_str().unwrap();
            let what = format!("{dir}: {} {}", document["kind"], document["metadata"]["name"]);
            match schemas.validate(&document) {
                Ok(errors) => failures.extend(errors.into_iter().map(|e| format!("{what}: {e}"))),
                // Not in the reference file: crds.rs shape-checks the committed Gateway API resources.
                Err(_) if api_version.starts_with("gateway.networking.k8s.io/") || api_version == "v1" => {}
                Err(e) => failures.push(format!("{what}: {e}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_kind_of_rule_is_routed_through_the_gateway_and_nothing_more() {
    let doc = document(POLICY);
    let files = rendered(&doc);
    check_routing(&Classic { docs: docs_of(&files, CLASSIC_DIR) }, &doc);
    check_routing(&GatewayApi { docs: docs_of(&files, GATEWAY_API_DIR) }, &doc);
    validate(&files);

    // The documented supersets and what is not routed are said where operators read them.
    let kustomization =
        &files.iter().find(|f| f.path == Path::new(CLASSIC_DIR).join("kustomization.yaml")).unwrap().text;
    let flat = kustomization.replace("\n#     ", " ").replace("\n#   ", " ").replace("\n# ", " ");
    for said in [
        "*.amazonaws.com: 443 (TLS passthrough); rules[2].hosts[0] `ec2.*.amazonaws.com` of rule inner-wildcard, \
         rules[2].hosts[1] `s3.*.amazonaws.com` of rule inner-wildcard",
        "rules[7].cidrs[0] `203.0.113.0/24`: an address range",
        "rules[7].cidrs[1] `198.51.100.7/32`: an address range",
        "rules[8].cidrs[0] `192.0.2.0/24`: an address range",
        "rules[0].hosts[2] `a.internal.httpbin.org`: deny.hosts[1] `*.internal.httpbin.org` covers every name",
        "rules[5] `port 443 of rule scoped`: TLS passthrough: the rule names methods and paths",
        "rules[6] `port 443 of rule by-identity`: TLS passthrough: the rule names namespaces",
        "deny.hosts[0] `metadata.google.internal`: not routed",
        "edge.cdn.example.net: 80 (TLS originated), 443 (TLS passthrough); redirects.originateTls[2] (TLS origination)",
    ] {
        assert!(flat.contains(said), "{said:?} in\n{kustomization}");
    }
}

#[test]
fn the_committed_routing_is_the_example_policys_and_complete() {
    let yaml = fs::read_to_string(workspace_root().join("examples/policy.yaml")).unwrap();
    let doc = document(&yaml);
    check_routing(&Classic { docs: docs_of(&committed(CLASSIC_DIR), CLASSIC_DIR) }, &doc);
    check_routing(&GatewayApi { docs: docs_of(&committed(GATEWAY_API_DIR), GATEWAY_API_DIR) }, &doc);
    // The byte-for-byte comparison with a fresh render is manifests.rs's; here, that the folders are all there is.
    let mut files = committed(CLASSIC_DIR);
    files.extend(committed(GATEWAY_API_DIR));
    validate(&files);
}

/// Redirect following merges into routes that exist: the gateway's port-80 route configuration (`https.80.…`), which
/// carries every host a followed hop may go to (a followed hop must be allowed, so it is a routed policy host).
#[test]
fn followed_redirects_stay_on_routes_that_exist() {
    let doc = document(POLICY);
    let files = rendered(&doc);
    let classic = docs_of(&files, CLASSIC_DIR);
    let gateway = of_kind(&classic, "Gateway")[0];
    let http_server =
        gateway["spec"]["servers"].as_array().unwrap().iter().find(|s| s["tls"]["mode"] == "ISTIO_MUTUAL").unwrap();
    // The classic gateway's EnvoyFilter is the top-level follow-redirects-envoyfilter.yaml (manifests.rs holds it to
    // the policy); it matches routeConfiguration.portNumber 80.
    let top =
        fs::read_to_string(workspace_root().join("wasmplugin-manifests/follow-redirects-envoyfilter.yaml")).unwrap();
    let top: Value = serde_yaml_ng::from_str(top.split("\n---\n").nth(1).unwrap()).unwrap();
    let port = &top["spec"]["configPatches"][0]["match"]["routeConfiguration"]["portNumber"];
    assert_eq!(http_server["port"]["number"], *port, "the EnvoyFilter merges into the HTTP server's routes");
    let gateway_api = docs_of(&files, GATEWAY_API_DIR);
    let follow = of_kind(&gateway_api, "EnvoyFilter")
        .into_iter()
        .find(|f| f["metadata"]["name"] == "egress-follow-redirects")
        .expect("the Gateway API set carries its own redirect following");
    assert_eq!(follow["spec"]["targetRefs"][0]["name"], "egress-gateway");
    let listener = of_kind(&gateway_api, "Gateway")[0]["spec"]["listeners"][0].clone();
    assert_eq!(follow["spec"]["configPatches"][0]["match"]["routeConfiguration"]["portNumber"], listener["port"]);
    assert_eq!(
        follow["spec"]["configPatches"][0]["patch"]["value"]["route"]["internal_redirect_policy"]
            ["max_internal_redirects"],
        3
    );
    // Every host a followed hop may reach is routed on the HTTP port, in both sets.
    let allowed = Allowed::new(&doc);
    let classic = Classic { docs: classic };
    let gateway_api = GatewayApi { docs: gateway_api };
    for rule in &doc.rules {
        for raw in rule.hosts.iter().flatten() {
            for name in probes(raw).into_iter().filter(|n| allowed.allows(n, HTTP)) {
                classic.route(&name, HTTP).unwrap();
                gateway_api.route(&name, HTTP).unwrap();
            }
        }
    }
}

/// The SNI forward proxy EnvoyFilter's patch, spliced into the filter chain istiod builds for a passthrough route to
/// a DYNAMIC_DNS wildcard at a gateway (tcp_proxy to the dynamic forward proxy cluster `outbound|443||<host>`, DNS
/// cache `<host>_dfp_dns_cache`, V4_ONLY on an IPv4 gateway; pilot/pkg/networking/core/cluster_builder.go
/// buildDFPCluster), is a configuration Envoy accepts. Envoy refuses two DNS caches of one name with different
/// settings, so a patch whose cache disagrees with istiod's cluster is refused too (checked with one).
#[test]
fn envoy_accepts_the_sni_forward_proxy_where_istiod_puts_it() {
    let files = rendered(&document(POLICY));
    let launcher = Launcher::find().unwrap();
    for dir in routing::dirs() {
        let file = files.iter().find(|f| f.path == Path::new(dir).join(SNI_FORWARD_PROXY_FILE)).unwrap();
        let filter = docs_of(std::slice::from_ref(file), dir).remove(0);
        let patches = filter["spec"]["configPatches"].as_array().unwrap().clone();
        assert!(!patches.is_empty());
        let bootstrap = |patches: &[Value]| {
            let mut chains = Vec::new();
            let mut clusters = Vec::new();
            for patch in patches {
                let host = patch["match"]["listener"]["filterChain"]["sni"].as_str().unwrap();
                let cluster = format!("outbound|443||{host}");
                chains.push(json!({
                    "filter_chain_match": {"server_names": [host]},
                    "filters": [
                        patch["patch"]["value"],
                        {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                            "stat_prefix": cluster, "cluster": cluster}},
                    ],
                }));
                clusters.push(json!({
                    "name": cluster,
                    "connect_timeout": "10s",
                    "lb_policy": "CLUSTER_PROVIDED",
                    "cluster_type": {"name": "envoy.clusters.dynamic_forward_proxy", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig",
                        "dns_cache_config": {"name": format!("{host}_dfp_dns_cache"), "dns_lookup_family": "V4_ONLY"}}},
                }));
            }
            json!({
                "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
                "static_resources": {
                    "listeners": [{
                        "name": "0.0.0.0_8443",
                        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                        "listener_filters": [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
                        "filter_chains": chains,
                    }],
                    "clusters": clusters,
                },
            })
        };
        launcher
            .validate(&bootstrap(&patches))
            .unwrap_or_else(|e| panic!("{dir}: Envoy refuses the patched chain: {e}"));
        let mut disagreeing = patches.clone();
        disagreeing[0]["patch"]["value"]["typed_config"]["dns_cache_config"]["dns_lookup_family"] = json!("ALL");
        let refused = launcher.validate(&bootstrap(&disagreeing)).expect_err("a cache unlike istiod's is refused");
        assert!(refused.contains("with different settings"), "{dir}: {refused}");
    }
}

/// Everything not expressible is refused before anything is written, naming the policy field.
#[test]
fn what_istio_cannot_route_fails_the_render_with_its_field_path() {
    for (policy, field) in [
        (r#"{rules: [{name: a, hosts: ["a.*.com"]}]}"#, "rules[0].hosts[0]: `a.*.com`"),
        (r#"{rules: [{name: a, hosts: ["*"]}]}"#, "rules[0].hosts[0]: `*`"),
        (r#"{rules: [{name: a, hosts: ["db.example.com"], ports: [443, 5432]}]}"#, "rules[0].ports[1]: port 5432"),
        (r#"{rules: [{name: a, hosts: ["my_host.example.com"]}]}"#, "rules[0].hosts[0]: `my_host.example.com`"),
        (
            r#"{rules: [{name: a, hosts: ["ec2.*.aws.com", "s3.*.aws.com"]}], redirects: {originateTls: ["ec2.*.aws.com"]}}"#,
            "redirects.originateTls[0]: `ec2.*.aws.com` covers part of",
        ),
    ] {
        let error = routing::files(&document(policy), "", None).unwrap_err();
        assert!(error.starts_with(field), "{policy}: {error}");
    }
}
