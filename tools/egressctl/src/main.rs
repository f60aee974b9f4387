//! `egressctl`: operator tooling that shares the filters' own core, so it decides exactly as they do.

mod audit;

use clap::{Args, Parser, Subcommand};
use egress_core::assertion::{self, Claims};
use egress_core::SpiffeId;
use egressctl::config::{self, Kind};
use egressctl::oci::{self, Image};
use egressctl::render::{self, Release, Source, Sources};
use std::io::{ErrorKind, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

const EXIT_CODES: &str =
    "Exit codes: 0 valid, allowed, done; 1 invalid, refused, nothing matched (the answer is still \
printed); 2 a usage error (the command line); 3 an input that could not be read or an output that could not be \
written. Answers go to stdout, problems and errors to stderr.";

/// Operator tooling for the egress filter suite, on the filters' own engine: it validates and explains exactly as
/// the gateway decides.
#[derive(Debug, Parser)]
#[command(name = "egressctl", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a configuration as its filter does when Envoy configures it, naming the field path of every problem.
    ///
    /// A valid policy is shown with its fingerprint, the one the gateway logs, exports
    /// (egress_allowlist_policy_fingerprint) and records in every decision. Exit 0 when valid, 1 when not (every
    /// problem on stderr, e.g. `rules[2].hosts[0]: …`).
    #[command(subcommand, after_help = EXIT_CODES)]
    Validate(Validate),
    /// Tell what a policy decides for one request and why.
    ///
    /// Shows the destination as the filter normalises it, the caller, and the deciding rule or the reason for a
    /// denial. Exit 0 when the request would proceed, 1 when not; the answer is on stdout either way.
    #[command(after_help = EXIT_CODES)]
    Explain(ExplainArgs),
    /// Write the suite's Istio manifests into a directory (what `make manifests` writes to wasmplugin-manifests).
    ///
    /// The plugins as WasmPlugins by selector, by Gateway API targetRefs, as TrafficExtensions and with file://
    /// modules, each configured from the three files (validated first) and pinned by sha256 to the modules built in
    /// --wasm-dir; the routing the policy asks for, for a REGISTRY_ONLY mesh to send every allowed host and port
    /// through the gateway (egress-routing/ for Istio's egress gateway, gateway-api-routing/ for a Gateway API
    /// Gateway; what Istio cannot route faithfully, such as `*`, a port other than 80 and 443 or an inner wildcard
    /// over a top-level domain, is an error naming its policy field); redirect following, the OpenTelemetry
    /// Collector the audit configuration ships to (collector/), Envoy's native access log of the suite's records
    /// (telemetry/) and the kustomizations.
    #[command(after_help = EXIT_CODES)]
    Render(RenderArgs),
    /// Package a Wasm module as an OCI image, the Wasm image format Istio pulls for a WasmPlugin `url: oci://…`.
    ///
    /// Writes an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/`) and prints the manifest digest,
    /// what a WasmPlugin's `sha256` pins. The same module and tag always give the same bytes. OUT holds this one
    /// image afterwards (an earlier layout there is replaced; any other directory is refused). Push it with
    /// `oras cp --from-oci-layout OUT:TAG REPO:TAG` or `skopeo copy oci:OUT:TAG docker://REPO:TAG`.
    #[command(after_help = EXIT_CODES)]
    Oci(OciArgs),
    /// Check an `x-workload-assertion` header the way an upstream should.
    ///
    /// With the values the upstream received (the identity header, method, authority, path with query), the
    /// shared key and a maximum age. Exit 0 when valid, 1 when not.
    #[command(after_help = EXIT_CODES)]
    VerifyAssertion(VerifyArgs),
    /// Reports over audit events (egress-audit/v1), read from log files as they are.
    ///
    /// Reads FILE, or stdin when FILE is `-` or absent: one JSON event per line; Envoy log lines in any format
    /// (Envoy's, Istio's, behind kubectl's prefixes), the event found where it starts, at
    /// `{"schema":"egress-audit/`; JSON log lines holding such a line in a string (Istio's logAsJson); and OTLP/JSON
    /// lines as the OpenTelemetry Collector's file exporter writes them (any number of events per line, in the
    /// records' bodies). Lines without an event (Envoy's other output) are ignored and counted on stderr. A line
    /// that should hold an event but does not parse (a truncated event, another schema version, a `{` line that is
    /// not JSON and holds no marker) is an error (exit 3) unless --skip-invalid is given, which skips and counts it.
    #[command(subcommand, after_help = EXIT_CODES)]
    Audit(audit::Report),
}

#[derive(Debug, Subcommand)]
enum Validate {
    /// An allow-list policy.
    Policy { file: PathBuf },
    /// A workload identity configuration.
    Identity { file: PathBuf },
    /// An audit configuration.
    Audit { file: PathBuf },
    /// The fused suite's configuration: a section per stage (`policy`, `identity`, `audit`).
    Suite { file: PathBuf },
    /// The suite's rendered Istio resources: files or directories of YAML, checked together.
    ///
    /// Each problem is named `<Kind> <namespace>/<name>: spec.pluginConfig.<path>`. Every resource is measured as
    /// etcd stores it: refused over 1.5 MiB (less room for the API server's metadata); over 256 KiB, a note to apply
    /// it server-side. Run it in CI before `kubectl apply`, on every directory you apply.
    Manifests {
        #[arg(required = true, value_name = "FILE|DIR")]
        paths: Vec<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct ExplainArgs {
    /// http(s)://host[:port]/path, or tls://sni:port for a TLS-passthrough connection.
    url: String,
    /// The policy file (YAML or JSON).
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    #[arg(long, default_value = "GET")]
    method: String,
    /// The caller's SPIFFE ID (anonymous without).
    #[arg(long = "as", value_name = "SPIFFE_ID", value_parser = spiffe_id)]
    caller: Option<SpiffeId>,
}

#[derive(Debug, Args)]
struct RenderArgs {
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    #[arg(long, value_name = "FILE")]
    identity: PathBuf,
    #[arg(long, value_name = "FILE")]
    audit: PathBuf,
    /// Where the built modules are (`make build`): the manifests pin their sha256.
    #[arg(long, value_name = "DIR")]
    wasm_dir: PathBuf,
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The images are REGISTRY/<filter>:TAG.
    #[arg(long, default_value = "ghcr.io/egress-suite")]
    registry: String,
    #[arg(long, default_value = "0.1.0", value_parser = image_tag)]
    tag: String,
}

#[derive(Debug, Args)]
struct OciArgs {
    /// The module.
    #[arg(long, value_name = "FILE")]
    wasm: PathBuf,
    /// The OCI image layout to write.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    #[arg(long, value_parser = image_tag)]
    tag: String,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("key").required(true).args(["key_env", "key_file"]))]
struct VerifyArgs {
    /// The `x-workload-assertion` header's value.
    #[arg(long, value_name = "HEADER")]
    assertion: String,
    /// The `x-workload-identity` header's value.
    #[arg(long, value_name = "SPIFFE_ID")]
    identity: String,
    #[arg(long)]
    method: String,
    #[arg(long)]
    authority: String,
    /// The path with its query, as received.
    #[arg(long)]
    path: String,
    /// The id the key is known by (`signing.keyId`).
    #[arg(long, value_name = "ID")]
    key_id: String,
    /// An environment variable holding the key.
    #[arg(long, value_name = "VAR")]
    key_env: Option<String>,
    /// A file holding the key (one trailing newline ignored).
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Seconds an assertion stays valid.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    max_age: u64,
    /// The time to check at, in Unix seconds (default: now).
    #[arg(long, value_name = "UNIX")]
    now: Option<u64>,
}

fn spiffe_id(raw: &str) -> Result<SpiffeId, String> {
    SpiffeId::parse(raw).map_err(|e| e.to_string())
}

fn image_tag(raw: &str) -> Result<String, String> {
    oci::check_tag(raw).map(|()| raw.to_string())
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Validate(what) => validate(what),
        Command::Explain(args) => explain(args),
        Command::Render(args) => render_manifests(args),
        Command::Oci(args) => oci_image(args),
        Command::VerifyAssertion(args) => verify_assertion(args),
        Command::Audit(report) => audit::run(report),
    };
    match result {
        Ok(Verdict::Valid(message)) => print(&message, ExitCode::SUCCESS),
        Ok(Verdict::Invalid(message)) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
        Ok(Verdict::No(message)) => print(&message, ExitCode::FAILURE),
        Err(failure) => {
            let (code, message) = match failure {
                Failure::Usage(message) => (2, message),
                Failure::Input(message) => (3, message),
            };
            eprintln!("egressctl: {message}");
            ExitCode::from(code)
        }
    }
}

/// Writes the answer to stdout and exits with `code`. A reader that went away (`| head`) is no error; any other
/// write failure is.
fn print(message: &str, code: ExitCode) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{message}").and_then(|()| out.flush()) {
        Ok(()) => code,
        Err(e) if e.kind() == ErrorKind::BrokenPipe => code,
        Err(e) => {
            eprintln!("egressctl: stdout: {e}");
            ExitCode::from(3)
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

/// Why a command gave no answer.
#[derive(Debug)]
enum Failure {
    /// The command line asks for something that cannot be done (exit 2, as clap's own usage errors).
    Usage(String),
    /// An input could not be read or an output not written (exit 3).
    Input(String),
}

fn oci_image(args: OciArgs) -> Result<Verdict, Failure> {
    let wasm = args.wasm.display();
    let module = std::fs::read(&args.wasm).map_err(|e| Failure::Input(format!("{wasm}: {e}")))?;
    let abi_versions = oci::abi_versions(&module).map_err(|e| Failure::Input(format!("{wasm}: {e}")))?;
    let image = Image::new(module, &abi_versions, &args.tag);
    oci::write_layout(&args.out, &image).map_err(Failure::Input)?;
    let abi = if abi_versions.is_empty() { "no proxy_abi_version export".to_string() } else { abi_versions.join(", ") };
    Ok(Verdict::Valid(format!(
        "{}:{} manifest sha256:{} (module {} bytes, {abi})",
        args.out.display(),
        args.tag,
        image.manifest_digest(),
        image.module.len()
    )))
}

fn validate(what: Validate) -> Result<Verdict, Failure> {
    // A file that cannot be read is a failed input (exit 3); one that can is valid or not (exit 0 or 1).
    let readable = |path: &PathBuf| match std::fs::metadata(path) {
        Ok(_) => Ok(()),
        Err(e) => Err(Failure::Input(format!("{}: {e}", path.display()))),
    };
    let (kind, file) = match what {
        Validate::Manifests { paths } => {
            paths.iter().try_for_each(readable)?;
            let paths: Vec<&std::path::Path> = paths.iter().map(PathBuf::as_path).collect();
            return Ok(match config::validate_manifests(&paths) {
                Ok(checked) => Verdict::Valid(checked),
                Err(problems) => Verdict::Invalid(problems.join("\n")),
            });
        }
        Validate::Policy { file } => (Kind::Policy, file),
        Validate::Identity { file } => (Kind::Identity, file),
        Validate::Audit { file } => (Kind::Audit, file),
        Validate::Suite { file } => (Kind::Suite, file),
    };
    readable(&file)?;
    Ok(match config::validate(&file, kind) {
        Ok(summary) => Verdict::Valid(summary),
        Err(problems) => Verdict::Invalid(problems.join("\n")),
    })
}

fn explain(args: ExplainArgs) -> Result<Verdict, Failure> {
    let file = args.policy.display();
    let json = config::read_json(&args.policy).map_err(Failure::Input)?;
    let policy = match config::check(Kind::Policy, &json) {
        Ok(config::Checked::Policy(policy)) => policy,
        Ok(_) => return Err(Failure::Input(format!("{file}: not a policy"))),
        Err(problems) => {
            let problems: Vec<String> = problems.iter().map(|p| format!("{file}: {p}")).collect();
            return Err(Failure::Input(problems.join("\n")));
        }
    };
    let (proceeds, text) =
        config::explain(&policy, &args.url, &args.method, args.caller.as_ref()).map_err(Failure::Usage)?;
    Ok(if proceeds { Verdict::Valid(text) } else { Verdict::No(text) })
}

fn render_manifests(args: RenderArgs) -> Result<Verdict, Failure> {
    let read = |path: &PathBuf| Source::read(path).map_err(Failure::Input);
    let sources = Sources { policy: read(&args.policy)?, identity: read(&args.identity)?, audit: read(&args.audit)? };
    let release =
        Release { registry: args.registry.trim_end_matches('/').to_string(), tag: args.tag, wasm_dir: args.wasm_dir };
    let files = render::render(&sources, &release).map_err(Failure::Input)?;
    render::write(&args.out, &files).map_err(Failure::Input)?;
    Ok(Verdict::Valid(format!("{}: {} files rendered", args.out.display(), files.len())))
}

fn verify_assertion(args: VerifyArgs) -> Result<Verdict, Failure> {
    let key = match (&args.key_env, &args.key_file) {
        (Some(var), _) => {
            std::env::var(var).map_err(|_| Failure::Input(format!("environment variable {var} is not set")))?
        }
        (None, Some(file)) => std::fs::read_to_string(file)
            .map_err(|e| Failure::Input(format!("{}: {e}", file.display())))?
            .trim_end_matches('\n')
            .to_string(),
        (None, None) => return Err(Failure::Usage("give one of --key-env and --key-file".into())),
    };
    let now = args.now.unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()));
    let claims =
        Claims { identity: &args.identity, method: &args.method, authority: &args.authority, path: &args.path };
    let key_for = |kid: &str| (kid == args.key_id).then_some(key.as_bytes());
    Ok(match assertion::verify(&args.assertion, &claims, key_for, now, args.max_age) {
        Ok(v) => Verdict::Valid(format!(
            "valid: kid={} issued_at={} nonce={} identity={}",
            v.kid, v.issued_at, v.nonce, claims.identity
        )),
        Err(error) => Verdict::Invalid(format!("invalid: {error}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
