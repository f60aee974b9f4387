//! `egress-lab up --policy FILE [--listen 127.0.0.1:PORT]`: a local egress gateway (a real Envoy with the suite)
//! that resolves destinations by DNS like the production one, through a DNS server of its own whose zone points the
//! policy's hosts at local demo upstreams, until SIGINT/SIGTERM. Builds nothing: run `make build` first (`make run`
//! does).
//! `egress-lab compose-config [--out FILE]`: the same gateway's bootstrap for `docker-compose.yaml`.

use clap::{Parser, Subcommand};
use egress_harness::compose::{compose_config_yaml, CONFIG_FILE};
use egress_harness::demo::{Demo, DemoOptions, SIGNING_KEY_ENV};
use egress_harness::echo::UPSTREAM_PORTS;
use egress_harness::pki::Error;
use egress_harness::Lab;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// A local egress gateway: a real Envoy with the suite, its own DNS server and demo upstreams.
#[derive(Debug, Parser)]
#[command(name = "egress-lab", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start Envoy with the egress filter suite on the policy, a DNS server and demo upstreams, until interrupted.
    ///
    /// As the production gateway does, Envoy resolves each allowed destination by DNS (its dynamic forward proxy)
    /// and connects to the answer, on the request's port (80 without one; 443 for TLS passthrough). Here it asks
    /// only the lab's DNS server, whose zone maps the host patterns of each rule of the policy to a local upstream
    /// host, 127.X.Y.Z (an inner `*`, as in ec2.*.amazonaws.com, becomes the wildcard after it: *.amazonaws.com).
    /// The upstream hosts answer with what they received, plain HTTP or TLS, on ports 80, 443, 8080, 8081 and 8443.
    /// A name outside the zone does not resolve: 503, `dns_resolution_failure` in the access log. An IP literal is
    /// not resolved and reaches nothing (503): the lab's upstream connections leave from loopback. Resolved
    /// addresses are vetted as in production (docs/policy.md: Resolved addresses); the upstream hosts' loopback
    /// block is open to everyone.
    ///
    /// Listeners: HTTP forward proxy (also CONNECT) on --listen, mTLS two ports above it, TLS passthrough on port
    /// 443 of a loopback address of the lab's own (127.X.Y.254, beside its upstream hosts), so a passthrough
    /// connection is judged and recorded on the port clients dial, as at a production gateway. The redirects stage always runs (before the allow-list on requests, on the
    /// same policy). With --identity, the workload identity stage runs first; a signing key named by its
    /// `signing.keyEnv` is made fresh at start and saved in the run directory. With --audit, the audit stage runs
    /// last. Prints the zone and requests to try, each with the outcome the suite's stages compute for it. Runs
    /// until interrupted (Ctrl-C / SIGTERM), then stops everything it started. Builds nothing: run `make build`
    /// first (`make run` does).
    Up(UpArgs),
    /// Print (or write) the Envoy bootstrap docker-compose.yaml mounts (deploy/compose/envoy.yaml).
    ///
    /// The gateway `up` runs with examples/{policy,identity,audit}.yaml, listening on all interfaces (10000 HTTP,
    /// 8443 TLS passthrough, which the example policy maps to 443; no mTLS), upstream the compose service
    /// httpbin:8080, modules from /etc/envoy/wasm.
    /// The built modules must match the manifests' sha256 pins (`make build`).
    ComposeConfig {
        /// Write here (creating its directory) instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    /// The allow-list policy.
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    /// A workload identity configuration: the identity stage runs first.
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// An audit configuration: the audit stage runs last.
    #[arg(long, value_name = "FILE")]
    audit: Option<PathBuf>,
    /// The HTTP listener (a loopback address).
    #[arg(long, value_name = "ADDRESS", default_value = "127.0.0.1:10000", value_parser = loopback)]
    listen: SocketAddr,
}

fn loopback(raw: &str) -> Result<SocketAddr, String> {
    let address: SocketAddr = raw.parse().map_err(|e| format!("{e}"))?;
    if !address.ip().is_loopback() {
        return Err("the lab listens on loopback only".into());
    }
    Ok(address)
}

fn main() -> ExitCode {
    let outcome = match Cli::parse().command {
        Command::Up(args) => run(&args),
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

fn run(args: &UpArgs) -> Result<(), Error> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
        let parse = |args: &[&str]| Cli::try_parse_from(["egress-lab"].iter().chain(args));
        let Ok(Cli { command: Command::Up(up) }) = parse(&["up", "--policy", "p.yaml"]) else { panic!("up") };
        assert_eq!(up.listen, SocketAddr::from(([127, 0, 0, 1], 10000)));
        assert!(parse(&["up", "--policy", "p.yaml", "--listen", "0.0.0.0:10000"]).is_err(), "loopback only");
        assert!(parse(&["up"]).is_err(), "--policy is required");
    }
}
