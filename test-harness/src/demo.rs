//! The gateway of `make run` (`egress-lab up`): a [`Lab`] on a policy file (and optionally identity and audit
//! configurations) whose DNS zone is made of the policy's hosts, and the requests it suggests trying, each printed
//! with its outcome.
//!
//! An outcome is computed, never written down: the suite's own stages (`egress_suite::pipeline`, the code the
//! modules run) judge the request natively on the recording host, with what Envoy would hand them (the request's
//! headers, the mTLS peer's URI SAN, the SNI and the listener's port); where they let it through, the lab's side
//! answers as it will (the DNS zone, the upstreams' echo and `/redirect-to`, Envoy following redirects the route
//! follows, which the stages then judge as the next hop). `tests/demo.rs` sends every suggestion to a running lab
//! and checks that the printed outcome is what happens, for several policies and identity configurations.

use crate::client;
use crate::pki::Error;
use crate::{load_audit, load_identity, load_policy, Lab, LabOptions};
use egress_core::redirect::FOLLOWED_STATUSES;
use egress_core::state::DecisionRecord;
use egress_core::suite::SuiteConfig;
use egress_core::{Policy, PolicyDocument};
use egress_proxy::fake::FakeHost;
use egress_proxy::pipeline::{reply_internal_error, run_http, run_tls};
use egress_proxy::{Connection, Layer, Pipeline, Request, Step, REASON_HEADER};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// The environment variable the identity configuration's signing key is read from (`signing.keyEnv`), in the lab.
pub use crate::compose::SIGNING_KEY_ENV;

/// The workloads the lab issues client certificates for (`<name>.crt`, `<name>.key` beside the CA).
pub const WORKLOADS: [(&str, &str); 2] =
    [("sleep", "spiffe://cluster.local/ns/app/sa/sleep"), ("billing", "spiffe://cluster.local/ns/billing/sa/api")];

/// The SPIFFE ID of one of [`WORKLOADS`].
fn workload_id(name: &str) -> Option<&'static str> {
    WORKLOADS.iter().find(|(workload, _)| *workload == name).map(|(_, id)| *id)
}

/// What `egress-lab up` is given.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub policy: PathBuf,
    pub identity: Option<PathBuf>,
    pub audit: Option<PathBuf>,
    pub listen: SocketAddr,
}

/// A running lab of `make run`.
pub struct Demo {
    pub lab: Lab,
    pub policy: Policy,
    /// The zone's names, in the order of the policy's rules.
    pub names: Vec<ZoneName>,
    /// The identity stage's signing key id, when it signs.
    pub key_id: Option<String>,
    /// The stages as the gateway runs them (policy and identity: audit decides nothing), for the predictions.
    suite: SuiteConfig,
}

impl Demo {
    /// Starts the lab: Envoy with the suite on the files of `options`, the DNS server and the upstreams, the
    /// workloads' client certificates and a fresh signing key (in Envoy's environment and `signing.key`).
    pub fn start(options: &DemoOptions) -> Result<Demo, Error> {
        let policy_json = load_policy(&options.policy)?;
        let policy = Policy::from_json(policy_json.as_bytes())?;
        // The signing key lives only in Envoy's environment (as a Secret-fed env var would) and in one local file.
        let signing_key = random_hex_key()?;
        let host_env = vec![(SIGNING_KEY_ENV.to_string(), signing_key.clone())];
        let identity_json = options.identity.as_deref().map(|path| load_identity(path, &host_env)).transpose()?;
        let audit_json = options.audit.as_deref().map(load_audit).transpose()?;
        let names = zone_of(&serde_json::from_str(&policy_json)?);
        let lab_options = LabOptions {
            identity_json: identity_json.clone(),
            audit_json,
            host_env: host_env.clone(),
            redirects: true,
            listen: options.listen,
            zone: names.iter().map(|name| (name.entry.clone(), name.host)).collect(),
            ..LabOptions::new(policy_json.clone())
        };
        let judged = LabOptions { identity_json, ..LabOptions::new(policy_json) }.suite_json()?;
        let env = |var: &str| host_env.iter().find(|(key, _)| key == var).map(|(_, value)| value.clone());
        let suite = SuiteConfig::from_json(judged.as_bytes(), env)?;
        let key_id = suite.identity.as_ref().and_then(|identity| Some(identity.signer.as_ref()?.key_id.clone()));
        let lab = Lab::start(&lab_options)?;
        crate::pki::write_private(&lab.files.join("signing.key"), signing_key.as_bytes())?;
        for (name, id) in WORKLOADS {
            lab.pki.write_files(&lab.files, name, &lab.client_cert(Some(id))?)?;
        }
        Ok(Demo { lab, policy, names, key_id, suite })
    }

    /// The requests to try on this lab, each with its outcome.
    pub fn tries(&self) -> Result<Vec<Try>, Error> {
        let lab = &self.lab;
        let (http, tls, mtls) = (lab.http(), lab.tls(), lab.mtls());
        let ca = lab.files.join("ca.crt");
        let (ca, dir) = (ca.display(), lab.files.display());
        let mut tries = Vec::new();
        for host in ["httpbin.org", "eu.httpbin.org", "www.example.com", "169.254.169.254"] {
            let send = Send::Http { method: "GET", host: host.into(), path: "/headers".into() };
            tries.push((format!("curl -si -x http://{http} http://{host}/headers"), send));
        }
        tries.push((
            format!("curl -si -p -x http://{http} http://httpbin.org/headers    # CONNECT httpbin.org:80, then GET"),
            Send::Connect { authority: "httpbin.org:80".into(), path: "/headers".into() },
        ));
        for target in ["http://eu.httpbin.org/get", "http://169.254.169.254/"] {
            let path = format!("/redirect-to?url={target}");
            tries.push((
                format!("curl -si -x http://{http} 'http://httpbin.org{path}'    # a 302 to {target}"),
                Send::Http { method: "GET", host: "httpbin.org".into(), path },
            ));
        }
        tries.push((
            format!("curl -si --cacert {ca} --connect-to httpbin.org:443:{tls} https://httpbin.org/headers    # TLS passthrough, SNI httpbin.org"),
            Send::Tls { sni: "httpbin.org".into() },
        ));
        let (workload, id) = WORKLOADS[1];
        tries.push((
            format!("curl -si --cacert {ca} --cert {dir}/{workload}.crt --key {dir}/{workload}.key --connect-to egress-gateway:443:{mtls} -H 'Host: api.stripe.com' https://egress-gateway/headers    # as {id}"),
            Send::Mtls { workload, host: "api.stripe.com".into(), path: "/headers".into() },
        ));
        tries.into_iter().map(|(command, send)| Ok(Try { outcome: self.predict(&send)?, command, send })).collect()
    }

    /// What happens to `send` on this lab.
    pub fn predict(&self, send: &Send) -> Result<Outcome, Error> {
        match send {
            Send::Http { method, host, path } => self.predict_http(method, host, Some(path), None),
            Send::Connect { authority, .. } => self.predict_http("CONNECT", authority, None, None),
            Send::Mtls { workload, host, path } => {
                let id = workload_id(workload);
                self.predict_http("GET", host, Some(path), id)
            }
            Send::Tls { sni } => self.predict_tls(sni),
        }
    }

    fn predict_http(
        &self,
        method: &str,
        authority: &str,
        path: Option<&str>,
        peer: Option<&str>,
    ) -> Result<Outcome, Error> {
        let host = FakeHost::new();
        if let Some(id) = peer {
            host.set(&["connection", "uri_san_peer_certificate"], id.as_bytes());
            host.set(&["connection", "mtls"], &[1]);
        }
        let pipeline = egress_suite::pipeline(&host, &self.suite, Layer::Http)?;
        let scheme = if peer.is_some() { "https" } else { "http" };
        let (mut authority, mut path) = (authority.to_string(), path.map(str::to_string));
        let mut followed = Vec::new();
        loop {
            let mut headers = vec![(":authority", authority.as_str()), (":method", method)];
            if let Some(path) = &path {
                headers.extend([(":path", path.as_str()), (":scheme", scheme)]);
            }
            host.set_request(&headers);
            let mut request = Request::new(Some(0));
            if run(&host, &pipeline, &mut request, |s, h, r| s.on_request_headers(h, r)) == Step::Stop {
                return Ok(Outcome::replied(&host, followed));
            }
            let passed = Passed::of(request.decision.as_ref());
            match self.upstream(&authority, path.as_deref()) {
                Upstream::Answers => return Ok(Outcome::answered(200, passed, followed)),
                Upstream::Fails(why) => return Ok(Outcome::failed(why, passed, followed)),
                Upstream::Redirects(status, location) => {
                    let hops = self.policy.follow_route_hops().unwrap_or(0) as usize;
                    let target = location.parse::<Location>().ok();
                    if let Some(target) =
                        target.filter(|_| FOLLOWED_STATUSES.contains(&status) && followed.len() < hops)
                    {
                        // Envoy follows it: the 3xx reaches no filter, the next hop comes through them all.
                        followed.push(format!("{passed}, {status} to {location} followed at the gateway"));
                        (authority, path) = (target.authority, Some(target.path));
                        continue;
                    }
                    host.set_response(&[(":status", &status.to_string()), ("location", &location)]);
                    if run(&host, &pipeline, &mut request, |s, h, r| s.on_response_headers(h, r)) == Step::Stop {
                        return Ok(Outcome::replied(&host, followed));
                    }
                    followed.push(format!("{passed}, its {status} to {location} vetted and passed to the client"));
                    return Ok(Outcome { status: Some(status), reason: None, path: followed });
                }
            }
        }
    }

    fn predict_tls(&self, sni: &str) -> Result<Outcome, Error> {
        let host = FakeHost::new()
            .with_property(&["connection", "requested_server_name"], sni.as_bytes())
            .with_property(&["destination", "port"], &u64::from(self.lab.tls().port()).to_le_bytes());
        let pipeline = egress_suite::pipeline(&host, &self.suite, Layer::Tls)?;
        let mut connection = Connection::new(Some(0));
        let step = run_tls(&host, "egress-suite-tls", &pipeline.tls, &mut connection);
        let decision = connection.decision.as_ref();
        let reason = decision.map(|d| d.reason.as_str());
        if step == Step::Stop {
            // A closed connection carries no reason: it is in the gateway's log and the audit event.
            let why = format!("closed by the gateway ({})", reason.unwrap_or("refused"));
            return Ok(Outcome { status: None, reason: None, path: vec![why] });
        }
        let passed = Passed::of(decision);
        Ok(match self.upstream(&format!("{sni}:443"), Some("/")) {
            Upstream::Answers | Upstream::Redirects(..) => Outcome::answered(200, passed, Vec::new()),
            Upstream::Fails(why) => {
                Outcome { status: None, reason: None, path: vec![format!("{passed}, then closed: {why}")] }
            }
        })
    }

    /// What the lab's side does with a request that left the gateway for `authority` (`host[:port]`).
    fn upstream(&self, authority: &str, path: Option<&str>) -> Upstream {
        let name =
            authority.rsplit_once(':').filter(|(_, port)| port.parse::<u16>().is_ok()).map_or(authority, |(h, _)| h);
        let name = name.trim_start_matches('[').trim_end_matches(']');
        if name.parse::<IpAddr>().is_ok() {
            return Upstream::Fails("an IP literal outside the lab: nothing answers (503)".into());
        }
        if self.lab.dns.zone().lookup(&name.to_ascii_lowercase()).is_none() {
            return Upstream::Fails(format!("{name} is not in the lab's zone (503, dns_resolution_failure)"));
        }
        let Some(query) = path.and_then(|path| path.strip_prefix("/redirect-to?")) else { return Upstream::Answers };
        let target =
            form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == "url").map(|(_, url)| url.into_owned());
        target.map_or(Upstream::Answers, |location| Upstream::Redirects(302, location))
    }
}

fn run(
    host: &FakeHost,
    pipeline: &Pipeline,
    request: &mut Request,
    hook: impl Fn(
        &dyn egress_proxy::HttpStage,
        &dyn egress_proxy::Host,
        &mut Request,
    ) -> Result<Step, proxy_wasm::types::Status>,
) -> Step {
    run_http(host, "egress-suite", &pipeline.http, request, hook, |h, why| reply_internal_error(h, why))
}

/// What the lab's side does with a request the gateway let through.
enum Upstream {
    /// An upstream host answers (200, with what it received).
    Answers,
    /// It answers with a redirect: status, Location.
    Redirects(u16, String),
    /// Nothing answers: why (Envoy's 503).
    Fails(String),
}

/// An absolute `http(s)://authority/path` Location, as Envoy follows it.
struct Location {
    authority: String,
    path: String,
}

impl std::str::FromStr for Location {
    type Err = ();
    fn from_str(location: &str) -> Result<Location, ()> {
        let rest = location.strip_prefix("http://").or_else(|| location.strip_prefix("https://")).ok_or(())?;
        let (authority, path) = rest.find('/').map_or((rest, "/"), |slash| rest.split_at(slash));
        Ok(Location { authority: authority.to_string(), path: path.to_string() })
    }
}

/// The decision of a request the gateway let through.
struct Passed {
    action: String,
    reason: String,
    rule: Option<String>,
}

impl Passed {
    /// Of the stages' decision; none was made when no stage decides (no policy section).
    fn of(decision: Option<&DecisionRecord<String>>) -> Passed {
        match decision {
            Some(d) => Passed { action: d.action.clone(), reason: d.reason.clone(), rule: d.rule.clone() },
            None => Passed { action: "allow".into(), reason: "allowed".into(), rule: None },
        }
    }
}

impl fmt::Display for Passed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.rule, self.action.as_str()) {
            (Some(rule), "allow") => write!(f, "allowed by rule {rule}"),
            (_, "allow") => write!(f, "allowed"),
            (_, action) => write!(f, "{action} ({}), let through", self.reason),
        }
    }
}

/// What a client sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The final status; `None`: the connection was closed (TLS passthrough).
    pub status: Option<u16>,
    /// The gateway's `x-egress-denied-reason`, when it answered itself.
    pub reason: Option<String>,
    /// What happened on the way, in order.
    pub path: Vec<String>,
}

impl Outcome {
    fn replied(host: &FakeHost, mut path: Vec<String>) -> Outcome {
        let (status, reason) = host.reply().map_or((500, None), |(status, reason, _)| (status, reason));
        path.push(format!("answered by the gateway: {}", reason.as_deref().unwrap_or("")));
        Outcome { status: Some(status), reason, path }
    }

    fn answered(status: u16, passed: Passed, mut path: Vec<String>) -> Outcome {
        path.push(format!("{passed}, answered by the upstream"));
        Outcome { status: Some(status), reason: None, path }
    }

    fn failed(why: String, passed: Passed, mut path: Vec<String>) -> Outcome {
        path.push(format!("{passed}, then {why}"));
        Outcome { status: Some(503), reason: None, path }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => write!(f, "{status}")?,
            None => write!(f, "no answer")?,
        }
        write!(f, ": {}", self.path.join("; "))
    }
}

/// A request to try.
#[derive(Clone, Debug)]
pub enum Send {
    /// Through the HTTP forward-proxy listener.
    Http { method: &'static str, host: String, path: String },
    /// `CONNECT authority`, then a GET of `path` inside the tunnel.
    Connect { authority: String, path: String },
    /// A TLS connection with SNI `sni` to the passthrough listener, then `GET /headers`.
    Tls { sni: String },
    /// A GET through the mTLS listener with the client certificate of `workload`.
    Mtls { workload: &'static str, host: String, path: String },
}

/// A suggested request: the command to run, what it sends, what happens.
#[derive(Clone, Debug)]
pub struct Try {
    pub command: String,
    pub send: Send,
    pub outcome: Outcome,
}

impl Try {
    /// Sends it to the lab: the status a client sees (`None`: the connection closed without an answer) and the
    /// gateway's `x-egress-denied-reason`.
    pub fn send(&self, demo: &Demo) -> Result<(Option<u16>, Option<String>), Error> {
        let lab = &demo.lab;
        let seen =
            |response: client::Response| (Some(response.status), response.header(REASON_HEADER).map(str::to_string));
        Ok(match &self.send {
            Send::Http { method, host, path } => seen(client::request(lab.http(), method, host, path, &[], &[])?),
            Send::Connect { authority, path } => match client::connect_tunnel(lab.http(), authority)? {
                (_, Some(mut stream)) => {
                    let host = authority.rsplit_once(':').map_or(authority.as_str(), |(host, _)| host);
                    seen(client::exchange(&mut stream, &client::build_request("GET", host, path, &[], &[]))?)
                }
                (response, None) => seen(response),
            },
            Send::Tls { sni } => match client::tls_get(lab.tls(), Some(sni), lab.pki.ca_pem(), sni, "/headers") {
                Ok(response) => seen(response),
                Err(_) => (None, None),
            },
            Send::Mtls { workload, host, path } => {
                let id = workload_id(workload);
                seen(lab.mtls_get(&lab.client_cert(id)?, host, path)?)
            }
        })
    }
}

/// One name of the lab's zone, and where it comes from.
#[derive(Clone, Debug)]
pub struct ZoneName {
    /// The zone entry: a host pattern of the policy, or the wildcard standing for one with an inner `*`.
    pub entry: String,
    /// The pattern of the policy it stands for.
    pub pattern: String,
    pub rule: String,
    /// The upstream host that answers for it: one per rule with hosts.
    pub host: usize,
}

/// The zone of the lab: every host pattern of the policy's rules, each rule's on an upstream host of its own (so the
/// echo's `upstream` tells the rules apart). DNS wildcards stand only for leading labels, so a pattern with an inner
/// `*` (`ec2.*.amazonaws.com`) becomes the wildcard on what follows its last `*` (`*.amazonaws.com`); the policy
/// still decides which of those names pass. Deny-list hosts are not added: they never reach DNS.
pub fn zone_of(policy: &PolicyDocument) -> Vec<ZoneName> {
    let rules = policy.rules.iter().filter_map(|rule| Some((rule.name.as_str(), rule.hosts.as_deref()?)));
    let mut names = Vec::new();
    for (host, (rule, patterns)) in rules.enumerate() {
        for pattern in patterns {
            let entry = match pattern.rfind("*.") {
                Some(star) if star > 0 => format!("*.{}", pattern.get(star + 2..).unwrap_or_default()),
                _ => pattern.clone(),
            };
            names.push(ZoneName { entry, pattern: pattern.clone(), rule: rule.to_string(), host });
        }
    }
    names
}

/// 32 random bytes from the OS, hex-encoded: a fresh HMAC key for each lab.
fn random_hex_key() -> Result<String, Error> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
