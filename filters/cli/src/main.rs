//! `egressctl`: operator tooling that shares the filters' own core, so it decides exactly as they do.

mod audit;
mod oci;

use egress_core::assertion::{self, Claims};
use std::io::{ErrorKind, Write};
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

verify-assertion checks an `x-workload-assertion` header the way an upstream should: with the values it received
(identity header, method, authority, path with query), the shared key, and a maximum age (default 300 s).
Exit 0 when valid, 1 when not, 2 on a usage error.

audit reads audit events (egress-audit/v1) from FILE, or stdin when FILE is `-` or absent: one JSON event per line,
or Envoy log lines carrying `egress-audit: {json}`. Blank lines are skipped; any other line is an error (exit 2)
unless --skip-invalid is given.
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
or `skopeo copy oci:DIR:TAG docker://REPO:TAG`.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("verify-assertion") => verify_assertion(&args[1..]),
        Some("audit") => audit::run(&args[1..]),
        Some("oci") => oci::run(&args[1..]),
        _ => Err(Usage(USAGE.to_string())),
    };
    match result {
        Ok(Verdict::Valid(message)) => print(&message),
        Ok(Verdict::Invalid(message)) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
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
    Valid(String),
    Invalid(String),
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
