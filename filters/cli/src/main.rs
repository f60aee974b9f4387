//! `egressctl`: operator tooling that shares the filters' own core, so it decides exactly as they do.

use egress_core::assertion::{self, Claims};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

const USAGE: &str = "usage:
  egressctl verify-assertion --assertion HEADER --identity SPIFFE_ID --method METHOD --authority AUTHORITY
                             --path PATH --key-id ID (--key-env VAR | --key-file FILE) [--max-age SECONDS] [--now UNIX]

verify-assertion checks an `x-workload-assertion` header the way an upstream should: with the values it received
(identity header, method, authority, path with query), the shared key, and a maximum age (default 300 s).
Exit 0 when valid, 1 when not, 2 on a usage error.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("verify-assertion") => verify_assertion(&args[1..]),
        _ => Err(Usage(USAGE.to_string())),
    };
    match result {
        Ok(Verdict::Valid(message)) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
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

/// The answer to a check: exit 0 or 1.
enum Verdict {
    Valid(String),
    Invalid(String),
}

/// A usage or input error (exit 2).
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
