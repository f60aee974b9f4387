//! A real OpenTelemetry collector for the tests: rotel (github.com/streamfold/rotel, the Rust OpenTelemetry
//! collector), as PyPI ships it (`rotel==0.0.1a15`, a wheel holding the `rotel-agent` binary), installed into
//! `.venv/rotel` by `make collector-tools`.
//!
//! [`Rotel::start`] runs it in the foreground with an OTLP/HTTP receiver on loopback and an OTLP/HTTP exporter
//! forwarding everything to a harness [`Collector`](crate::collector::Collector), so that a test can send the audit
//! filter's batches through a real OTLP implementation and read back what it made of them.
//!
//! What rotel-agent 0.0.1a15 does, as observed (check again when bumping the pin):
//!
//! - Receiver: `POST /v1/logs` with `content-type: application/json` or `application/x-protobuf` (exactly: a
//!   parameter such as `; charset=utf-8` gets a 400), `content-encoding: gzip` or none; an unknown content-encoding
//!   is not refused but read as identity (so the body fails to decode: 400). Any other content-type, NDJSON
//!   included, gets a 400 with an empty body; other paths and methods a 404. A POST without `content-type` makes
//!   the handler panic and drop the connection (the process lives on). Success is a 200 in the request's encoding
//!   (`{"partialSuccess":null}` for JSON).
//! - OTLP/JSON strictness: `timeUnixNano`/`observedTimeUnixNano` must be decimal strings (a JSON number gets a 400,
//!   although the proto3 JSON mapping allows it), `intValue` may be a string or a number, enum names
//!   (`"SEVERITY_NUMBER_INFO"`) get a 400.
//! - Exporter (`--exporter otlp --otlp-exporter-protocol http`): `POST <endpoint>/v1/logs`, binary protobuf,
//!   gzip (its default compression), from `Rotel Rust/<version> hyper/<version>`; resource, scope (name and version),
//!   record fields, body and attributes arrive unchanged. Records reach the collector 2-5 ms after the receiver
//!   answered with a 1 ms batch timeout (about 200 ms with the default). An export answered 429, 500 or 503 is
//!   retried after a jittered backoff (3-6 s for the first retry; `Retry-After` is not honoured), one answered 400 is
//!   dropped.
//! - `--batch-timeout 0ms` is accepted but nothing is ever exported; 1 ms is the shortest that works. An HTTP
//!   receiver on port 0 panics at startup, so a free port is chosen here (and another one if it was taken).
//! - Internal telemetry is off unless `--enable-internal-telemetry`; nothing leaves loopback.

use std::fs::{self, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use std::{env, thread};

use crate::envoy::{run_dir, workspace_root};
use crate::pki::Error;

/// The rotel release `make collector-tools` installs; the behaviour noted above is this version's.
pub const PINNED_VERSION: &str = "0.0.1a15";

/// How long rotel-agent may take to listen. It normally does within milliseconds.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// How often a start is retried when the chosen port was taken before rotel-agent could bind it.
const PORT_ATTEMPTS: usize = 5;

/// A running rotel-agent. Dropping it kills it.
#[derive(Debug)]
pub struct Rotel {
    child: Child,
    receiver: SocketAddr,
    forward_to: SocketAddr,
    /// The run directory: the log (stdout and stderr).
    dir: PathBuf,
}

/// Why a start did not get to a listening receiver.
enum Startup {
    /// Another process bound the port first; worth another port.
    PortTaken,
    Failed(Error),
}

impl Rotel {
    /// The rotel-agent binary: `$ROTEL_BIN`, else the one `make collector-tools` installs in
    /// `<workspace>/.venv/rotel/lib/python3.*/site-packages/rotel/rotel-agent`.
    pub fn binary() -> Result<PathBuf, Error> {
        if let Some(path) = env::var_os("ROTEL_BIN") {
            let path = PathBuf::from(path);
            return if path.is_file() {
                Ok(path)
            } else {
                Err(format!("ROTEL_BIN={}: no such file", path.display()).into())
            };
        }
        let lib = workspace_root().join(".venv/rotel/lib");
        let mut found: Vec<PathBuf> = fs::read_dir(&lib)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().starts_with("python3"))
            .map(|entry| entry.path().join("site-packages/rotel/rotel-agent"))
            .filter(|path| path.is_file())
            .collect();
        // Should a venv hold several Pythons, the newest (by name) wins.
        found.sort();
        found.pop().ok_or_else(|| {
            format!(
                "rotel-agent not found under {}/python3*/site-packages/rotel: run `make collector-tools` (installs \
                 rotel=={PINNED_VERSION}) or set ROTEL_BIN",
                lib.display()
            )
            .into()
        })
    }

    /// Starts rotel-agent with its OTLP/HTTP receiver on a free loopback port, exporting every log record over
    /// OTLP/HTTP (protobuf, gzip) to `forward_to` (`http://<forward_to>/v1/logs`). Returns once the receiver accepts
    /// connections; fails with the tail of rotel's log if it exits first or is not listening within 15 s.
    pub fn start(forward_to: SocketAddr) -> Result<Rotel, Error> {
        let binary = Rotel::binary()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            // A port that was free a moment ago; rotel-agent cannot be given port 0 (see the module notes).
            let receiver = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?;
            let dir = run_dir()?;
            let child = spawn(&binary, receiver, forward_to, &dir)?;
            let mut rotel = Rotel { child, receiver, forward_to, dir };
            match rotel.wait_listening() {
                Ok(()) => return Ok(rotel),
                Err(Startup::PortTaken) if attempt < PORT_ATTEMPTS => continue,
                Err(Startup::PortTaken) => {
                    return Err(format!("rotel-agent: every port tried was taken:\n{}", rotel.log_tail(20)).into())
                }
                Err(Startup::Failed(err)) => return Err(err),
            }
        }
    }

    /// Stops rotel-agent, as when the collector goes down: connections to its receiver are refused until
    /// [`Rotel::restart`].
    pub fn stop(&mut self) {
        kill_group(&mut self.child);
    }

    /// Starts rotel-agent again on the same receiver address (Envoy's cluster points at it).
    pub fn restart(&mut self) -> Result<(), Error> {
        self.stop();
        self.child = spawn(&Rotel::binary()?, self.receiver, self.forward_to, &self.dir)?;
        self.wait_listening().map_err(|startup| match startup {
            Startup::PortTaken => format!("rotel-agent: {} was taken while it was down", self.receiver).into(),
            Startup::Failed(err) => err,
        })
    }

    /// The OTLP/HTTP receiver: POST `/v1/logs` here.
    pub fn addr(&self) -> SocketAddr {
        self.receiver
    }

    /// The process id of rotel-agent.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// rotel-agent's log (stdout and stderr) so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("rotel.log")).unwrap_or_default()
    }

    fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits until this rotel-agent itself listens on the receiver port (not some other process that took the port
    /// first, which a connect alone could not tell) and a connection is accepted.
    fn wait_listening(&mut self) -> Result<(), Startup> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => {
                    let log = self.log();
                    if log.contains("Address already in use") {
                        return Err(Startup::PortTaken);
                    }
                    let message = format!("rotel-agent exited ({status}) before it listened:\n{}", self.log_tail(40));
                    return Err(Startup::Failed(message.into()));
                }
                Err(err) => return Err(Startup::Failed(err.into())),
            }
            if owns_listener(self.child.id(), self.receiver.port()) != Some(false)
                && TcpStream::connect_timeout(&self.receiver, Duration::from_secs(1)).is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let message = format!(
                    "rotel-agent not listening on {} after {READY_TIMEOUT:?}:\n{}",
                    self.receiver,
                    self.log_tail(40)
                );
                return Err(Startup::Failed(message.into()));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Starts rotel-agent in its own process group, its output appended to `<dir>/rotel.log`.
fn spawn(binary: &Path, receiver: SocketAddr, forward_to: SocketAddr, dir: &Path) -> Result<Child, Error> {
    let log = OpenOptions::new().create(true).append(true).open(dir.join("rotel.log"))?;
    let mut command = Command::new(binary);
    command.args(arguments(receiver, forward_to, dir)).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    // Every option also reads a ROTEL_* variable: none from the test's environment may change the setup.
    for (name, _) in env::vars_os() {
        if name.to_string_lossy().starts_with("ROTEL_") {
            command.env_remove(name);
        }
    }
    // Plain text in the log, which errors quote.
    command.env("NO_COLOR", "1");
    // Its own process group, so that nothing it might start outlives it.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    Ok(command.spawn().map_err(|e| format!("cannot start {}: {e}", binary.display()))?)
}

/// SIGKILL at once: on SIGTERM rotel-agent waits up to 3 s for its exporter to give up on unsent records, a flush no
/// test wants.
fn kill_group(child: &mut Child) {
    let group = format!("-{}", child.id());
    let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
    let _ = child.kill();
    let _ = child.wait();
}

/// rotel-agent's command line: foreground (no `--daemon`), OTLP/HTTP receiver on `receiver`, gRPC receiver on any
/// free loopback port (it cannot be turned off, and its default 4317 would clash between parallel tests), one OTLP
/// exporter over HTTP to `forward_to`.
fn arguments(receiver: SocketAddr, forward_to: SocketAddr, dir: &Path) -> Vec<String> {
    let mut arguments: Vec<String> = vec![
        "start".into(),
        "--otlp-http-endpoint".into(),
        receiver.to_string(),
        "--otlp-grpc-endpoint".into(),
        "127.0.0.1:0".into(),
        "--exporter".into(),
        "otlp".into(),
        // The exporter appends the signal's path: records arrive as POST /v1/logs.
        "--otlp-exporter-endpoint".into(),
        format!("http://{forward_to}"),
        "--otlp-exporter-protocol".into(),
        "http".into(),
        // rotel's default, spelled out: the harness collector sees what a real pipeline would.
        "--otlp-exporter-compression".into(),
        "gzip".into(),
        // The shortest that exports at all (0ms never does): records follow within milliseconds.
        "--batch-timeout".into(),
        "1ms".into(),
    ];
    // Only a daemon writes these; pointed at the run directory so that nothing lands in the shared /tmp defaults
    // (/tmp/rotel-agent.pid, /tmp/rotel-agent.log) should that change.
    for (option, file) in [("--pid-file", "rotel.pid"), ("--log-file", "rotel-daemon.log")] {
        arguments.push(option.into());
        arguments.push(dir.join(file).display().to_string());
    }
    arguments
}

/// Whether process `pid` holds a socket listening on 127.0.0.1:`port` (Linux `/proc`); `None` where that cannot be
/// read, and the caller relies on connecting alone.
fn owns_listener(pid: u32, port: u16) -> Option<bool> {
    let inodes: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .filter_map(|fd| fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(target.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let table = fs::read_to_string(format!("/proc/{pid}/net/tcp")).ok()?;
    // `sl local_address rem_address st … inode`: 127.0.0.1 is 0100007F (little-endian), 0A is LISTEN.
    let local = format!("0100007F:{port:04X}");
    Some(table.lines().skip(1).any(|line| {
        let columns: Vec<&str> = line.split_whitespace().collect();
        columns.get(1) == Some(&local.as_str())
            && columns.get(3) == Some(&"0A")
            && columns.get(9).is_some_and(|inode| inodes.iter().any(|own| own == inode))
    }))
}

impl Drop for Rotel {
    fn drop(&mut self) {
        kill_group(&mut self.child);
        if !thread::panicking() && env::var_os("EGRESS_KEEP_RUNS").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_forwards_over_otlp_http_to_the_collector() {
        let receiver = SocketAddr::from(([127, 0, 0, 1], 4000));
        let forward_to = SocketAddr::from(([127, 0, 0, 1], 5000));
        let arguments = arguments(receiver, forward_to, Path::new("/run/x")).join(" ");
        assert!(arguments.starts_with("start --otlp-http-endpoint 127.0.0.1:4000 "), "{arguments}");
        assert!(arguments.contains("--otlp-exporter-endpoint http://127.0.0.1:5000 --otlp-exporter-protocol http"));
        assert!(!arguments.contains("--daemon") && !arguments.contains("--enable-internal-telemetry"));
        assert!(arguments.ends_with("--pid-file /run/x/rotel.pid --log-file /run/x/rotel-daemon.log"), "{arguments}");
    }

    #[test]
    fn owns_listener_tells_this_process_s_listeners_from_others() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(owns_listener(std::process::id(), port), Some(true));
        drop(listener);
        assert_eq!(owns_listener(std::process::id(), port), Some(false));
    }
}
