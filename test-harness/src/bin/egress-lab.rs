//! `egress-lab up --policy FILE [--listen 127.0.0.1:PORT]`: a local egress gateway (a real Envoy with the suite)
//! that resolves destinations by DNS like the production one, through a DNS server of its own whose zone points the
//! policy's hosts at local demo upstreams, until SIGINT/SIGTERM. Builds nothing: run `make build` first (`make run`
//! does).
//! `egress-lab compose-config [--out FILE]`: the same gateway's bootstrap for `docker-compose.yaml`.

use egress_harness::compose::{compose_config_yaml, CONFIG_FILE};
use egress_harness::demo::{Demo, DemoOptions, SIGNING_KEY_ENV};
use egress_harness::echo::UPSTREAM_PORTS;
use egress_harness::pki::Error;
use egress_harness::Lab;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: egress-lab up --policy FILE [--identity FILE] [--audit FILE] [--listen 127.0.0.1:10000]
       egress-lab compose-config [--out FILE]

up: starts Envoy with the egress filter suite on the policy, a DNS server and demo upstreams. As the production
gateway does, Envoy resolves each allowed destination by DNS (its dynamic forward proxy) and connects to the answer,
on the request's port (80 without one; 443 for TLS passthrough). Here it asks only the lab's DNS server (127.0.0.1),
whose zone maps the host patterns of each rule of the policy to a local upstream host, 127.X.Y.Z (an inner `*`, as in
ec2.*.amazonaws.com, becomes the wildcard after it: *.amazonaws.com). The upstream hosts answer with what they
received, plain HTTP or TLS, on ports 80, 443, 8080, 8081 and 8443. A name outside the zone does not resolve:
503, `dns_resolution_failure` in the access log. An IP literal is not resolved and reaches nothing: the lab's upstream
connections leave from 127.0.0.1, so anything off loopback fails (503). Resolved addresses are vetted as in
production (docs/policy.md: Resolved addresses): a name answered with a private, loopback or metadata address is
refused with `x-egress-denied-reason: resolved_address_not_allowed`; the upstream hosts' loopback block is open to
everyone.
`up` prints the zone.
Listeners: HTTP forward proxy (also CONNECT) on --listen, TLS passthrough on the next port, mTLS on the one after.
The redirects filter always runs (before the allow-list on requests, on the same policy). With --identity, the workload
identity filter runs first; a signing key named by its `signing.keyEnv` is made
fresh at start and saved beside the lab's certificates. With --audit, the audit filter runs last.
Runs until interrupted (Ctrl-C / SIGTERM), then stops everything it started.

compose-config: prints (or writes to FILE) the Envoy bootstrap docker-compose.yaml mounts (deploy/compose/envoy.yaml):
the gateway `up` runs with examples/{policy,identity,audit}.yaml, listening on all interfaces (10000 HTTP,
10001 TLS passthrough; no mTLS), upstream the compose service httpbin:8080, modules from /etc/envoy/wasm.
The built modules must match the manifests' sha256 pins (`make build`).";

enum Command {
    Up(Args),
    ComposeConfig { out: Option<PathBuf> },
}

struct Args {
    policy: PathBuf,
    identity: Option<PathBuf>,
    audit: Option<PathBuf>,
    listen: SocketAddr,
}

fn parse_args() -> Result<Command, String> {
    let mut args = std::env::args().skip(1);
    let command = args.next();
    // Every option takes a value.
    let mut options = Vec::new();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value\n\n{USAGE}"))?;
        options.push((flag, value));
    }
    match command.as_deref() {
        Some("up") => parse_up(options).map(Command::Up),
        Some("compose-config") => match options.as_slice() {
            [] => Ok(Command::ComposeConfig { out: None }),
            [(flag, out)] if flag == "--out" => Ok(Command::ComposeConfig { out: Some(PathBuf::from(out)) }),
            [(flag, _), ..] => Err(format!("unknown argument {flag}\n\n{USAGE}")),
        },
        _ => Err(USAGE.into()),
    }
}

fn parse_up(options: Vec<(String, String)>) -> Result<Args, String> {
    let (mut policy, mut identity, mut audit, mut listen) =
        (None, None, None, SocketAddr::from(([127, 0, 0, 1], 10000)));
    for (flag, value) in options {
        match flag.as_str() {
            "--policy" => policy = Some(PathBuf::from(value)),
            "--identity" => identity = Some(PathBuf::from(value)),
            "--audit" => audit = Some(PathBuf::from(value)),
            "--listen" => listen = value.parse().map_err(|e| format!("--listen {value}: {e}"))?,
            _ => return Err(format!("unknown argument {flag}\n\n{USAGE}")),
        }
    }
    if !listen.ip().is_loopback() {
        return Err(format!("--listen {listen}: the lab listens on loopback only"));
    }
    Ok(Args { policy: policy.ok_or_else(|| format!("--policy is required\n\n{USAGE}"))?, identity, audit, listen })
}

fn main() -> ExitCode {
    let command = match parse_args() {
        Ok(command) => command,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let outcome = match &command {
        Command::Up(args) => run(args),
        Command::ComposeConfig { out } => compose_config(out.as_deref()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("egress-lab: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the compose gateway's bootstrap, or writes it to `out` (creating its directory).
fn compose_config(out: Option<&Path>) -> Result<(), Error> {
    let yaml = compose_config_yaml()?;
    let Some(out) = out else {
        print!("{yaml}");
        return Ok(());
    };
    if let Some(dir) = out.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(out, yaml).map_err(|e| format!("{}: {e}", out.display()))?;
    eprintln!("egress-lab: wrote {} (docker-compose.yaml mounts {CONFIG_FILE})", out.display());
    Ok(())
}

fn run(args: &Args) -> Result<(), Error> {
    let options = DemoOptions {
        policy: args.policy.clone(),
        identity: args.identity.clone(),
        audit: args.audit.clone(),
        listen: args.listen,
    };
    let mut demo = Demo::start(&options)?;
    let lab = &demo.lab;
    println!(
        "egress-lab ready: http={} (forward proxy, CONNECT) tls={} (TLS passthrough by SNI) mtls={} (client certificate required) admin={} dns={} policy={} (fingerprint {})",
        lab.http(),
        lab.tls(),
        lab.mtls(),
        lab.envoy.admin(),
        lab.dns.addr(),
        args.policy.display(),
        demo.policy.fingerprint(),
    );
    println!(
        "Run directory: {} (envoy.json, envoy.log, access.log, certificates and keys; removed when the lab stops, kept with EGRESS_KEEP_RUNS=1)",
        lab.files.display()
    );
    print_zone(&demo);
    print_tries(&demo)?;
    wait_for_shutdown(&mut demo.lab)?;
    println!("egress-lab: stopping");
    Ok(())
}

fn print_zone(demo: &Demo) {
    let lab = &demo.lab;
    println!(
        "\nDNS zone of the gateway (dns={}; other names: NXDOMAIN, so a 503 `dns_resolution_failure`):",
        lab.dns.addr()
    );
    for name in &demo.names {
        let upstream = lab.upstream(name.host).map(|ip| ip.to_string()).unwrap_or_default();
        let stands_for = if name.entry == name.pattern { String::new() } else { format!(", for {}", name.pattern) };
        println!("  {:<28} -> {upstream}    # rule {}{stands_for}", name.entry, name.rule);
    }
    println!(
        "Each upstream host answers with what it received (`upstream` says which host), on ports {UPSTREAM_PORTS:?}."
    );
}

/// The suggested requests, each with the outcome the suite's stages compute for it on this lab.
fn print_tries(demo: &Demo) -> Result<(), Error> {
    let lab = &demo.lab;
    println!("\nTry (each outcome computed by the suite's stages on this policy and identity configuration):");
    for try_ in demo.tries()? {
        println!("  {}\n      => {}", try_.command, try_.outcome);
    }
    println!("  curl -s http://{}/stats?filter=wasmcustom    # decisions counted", lab.envoy.admin());
    if let Some(key_id) = &demo.key_id {
        println!(
            "\nSigned identity assertions: key in {dir}/signing.key; an upstream checks one with\n  cargo run -q -p egressctl -- verify-assertion --key-file {dir}/signing.key --key-id {key_id} --assertion '<x-workload-assertion>' --identity <x-workload-identity> --method GET --authority api.stripe.com --path /headers\nEnvoy reads the key from its environment: to run {dir}/envoy.json yourself (lab stopped, EGRESS_KEEP_RUNS=1), {SIGNING_KEY_ENV}=$(cat {dir}/signing.key) envoy -c {dir}/envoy.json",
            dir = lab.files.display()
        );
    }
    println!(
        "\nAudit events (with --audit): cargo run -q -p egressctl -- audit top-denied {log}    # or redirects, would-deny\n  \
         grep -o '{{\"schema\":\"egress-audit/v1\".*}}' {log} | jq    # the events themselves",
        log = lab.envoy.dir().join("envoy.log").display()
    );
    println!("\nCtrl-C stops the gateway.");
    Ok(())
}

/// Blocks until SIGINT or SIGTERM; fails if Envoy dies first.
fn wait_for_shutdown(lab: &mut Lab) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut watchdog = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = terminate.recv() => return Ok(()),
                _ = watchdog.tick() => {
                    if !lab.envoy.is_running() {
                        return Err(format!("Envoy exited:\n{}", lab.envoy.log()).into());
                    }
                }
            }
        }
    })
}
