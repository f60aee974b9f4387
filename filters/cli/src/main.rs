//! `egressctl`: operator tooling that shares the filters' own core, so it decides exactly as they do.

mod audit;

use egress_core::assertion::{self, Claims};
use egress_core::SpiffeId;
use egressctl::config::{self, Kind};
use egressctl::oci::{self, Image};
use egressctl::render::{self, Release, Source, Sources};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

const USAGE: &str = "usage:
  egressctl verify-assertion --assertion HEADER --identity SPIFFE_ID --method METHOD --authority AUTHORITY
                             --path PATH --key-id ID (--key-env VAR | --key-file FILE) [--max-age SECONDS] [--now UNIX]

  egressctl audit top-denied [FILE] [--limit N] [--skip-invalid]
  egressctl audit redirects [FILE] [--skip-invalid]
  egressctl audit would-deny [FILE] [--skip-invalid]
  egressctl audit suggest [FILE] --allow HOST [--allow HOST ...] [--name RULE] [--skip-invalid]
  egressctl audit schema

  egressctl oci --wasm FILE --out DIR --tag TAG

  egressctl validate (policy|identity|audit|suite) FILE
  egressctl validate manifests (FILE|DIR)...
  egressctl explain URL --policy FILE [--method METHOD] [--as SPIFFE_ID]
  egressctl render --policy FILE --identity FILE --audit FILE --wasm-dir DIR --out DIR [--registry PREFIX] [--tag TAG]

verify-assertion checks an `x-workload-assertion` header the way an upstream should: with the values it received
(identity header, method, authority, path with query), the shared key, and a maximum age (default 300 s).
Exit 0 when valid, 1 when not, 2 on a usage error.

audit reads audit events (egress-audit/v1) from FILE, or stdin when FILE is `-` or absent: one JSON event per line;
Envoy log lines in any format (Envoy's, Istio's, behind kubectl's prefixes), the event found where it starts, at
`{\"schema\":\"egress-audit/`; JSON log lines holding such a line in a string (Istio's logAsJson); and OTLP/JSON lines
as the OpenTelemetry Collector's file exporter writes them (any number of events per line, in the records' bodies).
Lines without an event (Envoy's other output) are ignored and counted on stderr. A line that should hold an event
but does not parse (a truncated event, another schema version, a `{` line that is not JSON and holds no marker) is
an error (exit 2) unless --skip-invalid is given, which skips and counts it.
  top-denied   denied requests by workload and destination host, most first (--limit, default 20; 0 for all)
  redirects    every redirect target, with counts per action and the first reason
  would-deny   report-mode findings (report-deny) by host and reason, with a total
  suggest      a policy rule allowing the --allow hosts (`*.example.com` matches names below example.com) with
               the ports, methods and principals observed in their deny and report-deny events; exit 1 when
               no such event matches
  schema       the JSON Schema of the audit event

oci writes the Wasm module FILE as an OCI image layout DIR (`oci-layout`, `index.json`, `blobs/sha256/`) in the
Wasm image format Istio pulls for a WasmPlugin `url: oci://…`, tagged TAG, and prints the manifest digest (what
a WasmPlugin's `sha256` pins). The same module and tag always give the same bytes. DIR holds this one image
afterwards (an earlier layout there is replaced). Push it with `oras cp --from-oci-layout DIR:TAG REPO:TAG`
or `skopeo copy oci:DIR:TAG docker://REPO:TAG`.

validate checks a configuration file (YAML or JSON) exactly as its filter does when Envoy configures it, and
names the field path of every problem (e.g. `rules[2].hosts[0]`); a valid policy is shown with its fingerprint, the
one the gateway logs, exports (egress_allowlist_policy_fingerprint) and records in every decision. `validate
manifests` checks the suite's rendered Istio resources (files or directories of YAML) the same way, each problem
at `<Kind> <namespace>/<name>: spec.pluginConfig.<path>`, and measures every resource as etcd stores it (refused
over 1.5 MiB, less room for the API server's metadata; over 256 KiB, a note to apply it server-side): run it in CI
before `kubectl apply`, on every directory you apply. Exit 0 when valid, 1 when not.

explain tells what the policy decides for one request and why: the destination as the filter normalises it,
the caller, the deciding rule or the reason for a denial. URL is http(s)://host[:port]/path, or tls://sni:port
for a TLS-passthrough connection; --method defaults to GET; --as is the caller's SPIFFE ID (anonymous without).
Exit 0 when the request would proceed, 1 when not.

render writes the Istio manifests of the suite into DIR (wasmplugin-manifests): the plugins as WasmPlugins by
selector, by Gateway API targetRefs, as TrafficExtensions and with file:// modules, each configured from the
three files (validated first), pinned by sha256 to the modules built in --wasm-dir (image --registry/<filter>:
--tag, default ghcr.io/egress-suite and 0.1.0); the routing the policy asks for, for a REGISTRY_ONLY mesh to send
every allowed host and port through the gateway (egress-routing/ for Istio's egress gateway, gateway-api-routing/
for a Gateway API Gateway; what Istio cannot route faithfully, such as `*`, a port other than 80 and 443 or an
inner wildcard over a top-level domain, is an error naming its policy field); redirect following, the
OpenTelemetry Collector the audit configuration ships to (collector/), Envoy's native access log of the suite's
records (telemetry/: a Telemetry and the mesh configuration of its providers) and the kustomizations.";

const DEFAULT_REGISTRY: &str = "ghcr.io/egress-suite";
const DEFAULT_TAG: &str = "0.1.0";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("verify-assertion") => verify_assertion(&args[1..]),
        Some("audit") => audit::run(&args[1..]),
        Some("oci") => oci_image(&args[1..]),
        Some("validate") => validate(&args[1..]),
        Some("explain") => explain(&args[1..]),
        Some("render") => render_manifests(&args[1..]),
        _ => Err(Usage(USAGE.to_string())),
    };
    match result {
        Ok(Verdict::Valid(message)) => print(&message),
        Ok(Verdict::Invalid(message)) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
        Ok(Verdict::No(message)) => match print(&message) {
            code if code == ExitCode::SUCCESS => ExitCode::FAILURE,
            code => code,
        },
        Err(Usage(message)) => {
            eprintln!("{message}");
            ExitCode::from(2)
        }
    }
}

/// Writes the answer to stdout. A reader that went away (`| head`) is no error; any other write failure is.
fn print(message: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{message}").and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("egressctl: stdout: {e}");
            ExitCode::from(2)
        }
    }
}

/// The answer to a check: exit 0 or 1.
#[derive(Debug)]
enum Verdict {
    /// On stdout.
    Valid(String),
    /// Problems, on stderr.
    Invalid(String),
    /// A negative answer (a request `explain` says is refused): on stdout like a positive one, exit 1.
    No(String),
}

/// A usage or input error (exit 2).
#[derive(Debug)]
struct Usage(String);

/// `--name value` pairs; every flag must be known and given once.
fn flags<'a>(args: &'a [String], known: &[&str]) -> Result<Vec<(&'a str, &'a str)>, Usage> {
    let mut found: Vec<(&str, &str)> = Vec::new();
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let name = flag
            .strip_prefix("--")
            .filter(|n| known.contains(n))
            .ok_or_else(|| Usage(format!("unknown argument {flag}\n\n{USAGE}")))?;
        let value = rest.next().ok_or_else(|| Usage(format!("--{name} needs a value")))?;
        if found.iter().any(|(n, _)| *n == name) {
            return Err(Usage(format!("--{name} given twice")));
        }
        found.push((name, value));
    }
    Ok(found)
}

fn oci_image(args: &[String]) -> Result<Verdict, Usage> {
    let given = flags(args, &["wasm", "out", "tag"])?;
    let get = |name: &str| given.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    let need = |name: &str| get(name).ok_or_else(|| Usage(format!("--{name} is required\n\n{USAGE}")));
    let (wasm, out, tag) = (need("wasm")?, need("out")?, need("tag")?);
    oci::check_tag(tag).map_err(|e| Usage(format!("--tag {e}")))?;
    let module = std::fs::read(wasm).map_err(|e| Usage(format!("{wasm}: {e}")))?;
    let abi_versions = oci::abi_versions(&module).map_err(|e| Usage(format!("{wasm}: {e}")))?;
    let image = Image::new(module, &abi_versions, tag);
    oci::write_layout(Path::new(out), &image).map_err(Usage)?;
    let abi = if abi_versions.is_empty() { "no proxy_abi_version export".to_string() } else { abi_versions.join(", ") };
    Ok(Verdict::Valid(format!(
        "{out}:{tag} manifest sha256:{} (module {} bytes, {abi})",
        image.manifest_digest(),
        image.module.len()
    )))
}

fn validate(args: &[String]) -> Result<Verdict, Usage> {
    if let Some(("manifests", paths)) = args.split_first().map(|(kind, paths)| (kind.as_str(), paths)) {
        if paths.is_empty() {
            return Err(Usage(format!("validate manifests needs a file or directory\n\n{USAGE}")));
        }
        let paths: Vec<&Path> = paths.iter().map(Path::new).collect();
        return Ok(match config::validate_manifests(&paths) {
            Ok(checked) => Verdict::Valid(checked),
            Err(problems) => Verdict::Invalid(problems.join("\n")),
        });
    }
    let [kind, file] = args else { return Err(Usage(format!("validate needs a kind and a file\n\n{USAGE}"))) };
    let kind =
        Kind::parse(kind).ok_or_else(|| Usage(format!("`{kind}`: the kind is policy, identity, audit or suite")))?;
    Ok(match config::validate(Path::new(file), kind) {
        Ok(summary) => Verdict::Valid(summary),
        Err(problems) => Verdict::Invalid(problems.join("\n")),
    })
}

fn explain(args: &[String]) -> Result<Verdict, Usage> {
    let Some((url, rest)) = args.split_first().filter(|(url, _)| !url.starts_with("--")) else {
        return Err(Usage(format!("explain needs a URL first\n\n{USAGE}")));
    };
    let given = flags(rest, &["policy", "method", "as"])?;
    let get = |name: &str| given.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    let file = get("policy").ok_or_else(|| Usage(format!("--policy is required\n\n{USAGE}")))?;
    let json = config::read_json(Path::new(file)).map_err(Usage)?;
    let policy = match config::check(Kind::Policy, &json) {
        Ok(config::Checked::Policy(policy)) => policy,
        Ok(_) => return Err(Usage("internal: not a policy".into())),
        Err(problems) => {
            return Err(Usage(problems.iter().map(|p| format!("{file}: {p}")).collect::<Vec<_>>().join("\n")))
        }
    };
    let identity =
        get("as").map(|raw| SpiffeId::parse(raw).map_err(|e| Usage(format!("--as {raw}: {e}")))).transpose()?;
    let (proceeds, text) =
        config::explain(&policy, url, get("method").unwrap_or("GET"), identity.as_ref()).map_err(Usage)?;
    Ok(if proceeds { Verdict::Valid(text) } else { Verdict::No(text) })
}

fn render_manifests(args: &[String]) -> Result<Verdict, Usage> {
    let given = flags(args, &["policy", "identity", "audit", "wasm-dir", "out", "registry", "tag"])?;
    let get = |name: &str| given.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    let need = |name: &str| get(name).ok_or_else(|| Usage(format!("--{name} is required\n\n{USAGE}")));
    let sources = Sources {
        policy: Source::read(need("policy")?).map_err(Usage)?,
        identity: Source::read(need("identity")?).map_err(Usage)?,
        audit: Source::read(need("audit")?).map_err(Usage)?,
    };
    let release = Release {
        registry: get("registry").unwrap_or(DEFAULT_REGISTRY).trim_end_matches('/').to_string(),
        tag: get("tag").unwrap_or(DEFAULT_TAG).to_string(),
        wasm_dir: PathBuf::from(need("wasm-dir")?),
    };
    let out = PathBuf::from(need("out")?);
    let files = render::render(&sources, &release).map_err(Usage)?;
    render::write(&out, &files).map_err(Usage)?;
    Ok(Verdict::Valid(format!("{}: {} files rendered", out.display(), files.len())))
}

fn verify_assertion(args: &[String]) -> Result<Verdict, Usage> {
    let known =
        ["assertion", "identity", "method", "authority", "path", "key-id", "key-env", "key-file", "max-age", "now"];
    let given = flags(args, &known)?;
    let get = |name: &str| given.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    let need = |name: &str| get(name).ok_or_else(|| Usage(format!("--{name} is required\n\n{USAGE}")));
    let key = match (get("key-env"), get("key-file")) {
        (Some(var), None) => std::env::var(var).map_err(|_| Usage(format!("environment variable {var} is not set")))?,
        (None, Some(file)) => {
            std::fs::read_to_string(file).map_err(|e| Usage(format!("{file}: {e}")))?.trim_end_matches('\n').to_string()
        }
        _ => return Err(Usage("give exactly one of --key-env and --key-file".into())),
    };
    let number = |name: &str, default: u64| match get(name) {
        Some(v) => v.parse::<u64>().map_err(|_| Usage(format!("--{name} {v}: not a number of seconds"))),
        None => Ok(default),
    };
    let now = number("now", SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))?;
    let max_age = number("max-age", 300)?;
    let key_id = need("key-id")?;
    let claims = Claims {
        identity: need("identity")?,
        method: need("method")?,
        authority: need("authority")?,
        path: need("path")?,
    };
    let key_for = |kid: &str| (kid == key_id).then_some(key.as_bytes());
    Ok(match assertion::verify(need("assertion")?, &claims, key_for, now, max_age) {
        Ok(v) => Verdict::Valid(format!(
            "valid: kid={} issued_at={} nonce={} identity={}",
            v.kid, v.issued_at, v.nonce, claims.identity
        )),
        Err(error) => Verdict::Invalid(format!("invalid: {error}")),
    })
}
