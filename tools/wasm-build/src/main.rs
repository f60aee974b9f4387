//! `make build`: builds every module (or those named) into `target/wasm32-wasip1/release/<module>.wasm`:
//! cargo (`opt-level z` but egress-core, reproducible paths), `wasm-metadce` (the lifecycle and the stages'
//! callbacks only), `wasm-opt -Oz`. Exits non-zero with the reason on any failure.
//!
//! `--any-wasm-opt` accepts a Binaryen other than the pinned release (for `make run` on another distribution): the
//! modules then work but are not the bytes the manifests pin.

use egress_wasm_build::{exports, Module, EMPTY, MODULES, TARGET, WASM_FEATURES, WASM_OPT_VERSION};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("egress-wasm-build: {why}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut any_wasm_opt = false;
    let mut wanted: Vec<Module> = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--any-wasm-opt" => any_wasm_opt = true,
            "--empty" => wanted.push(EMPTY),
            "-h" | "--help" => {
                println!("egress-wasm-build [--any-wasm-opt] [--empty] [MODULE.wasm …]: build the suite's modules");
                return Ok(());
            }
            file => wanted
                .push(*MODULES.iter().find(|m| m.file == file).ok_or(format!("{file}: not a module of the suite"))?),
        }
    }
    if wanted.is_empty() {
        wanted = MODULES.to_vec();
    }
    check_wasm_opt(any_wasm_opt)?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = workspace.join("target").join(TARGET).join("release");
    cargo_build(&workspace, &wanted)?;
    for module in &wanted {
        trim_and_shrink(&out, module)?;
        let size = std::fs::metadata(out.join(module.file)).map_err(|e| format!("{}: {e}", module.file))?.len();
        println!("  {:<50} {size:>7} bytes", out.join(module.file).display());
    }
    Ok(())
}

fn check_wasm_opt(any: bool) -> Result<(), String> {
    let output = Command::new("wasm-opt")
        .arg("--version")
        .output()
        .map_err(|e| format!("wasm-opt: {e} (install Binaryen: apt-get install binaryen, or `make tools`)"))?;
    let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if version == format!("wasm-opt version {WASM_OPT_VERSION}") {
        return Ok(());
    }
    let why = format!(
        "found `{version}`; the manifests pin modules built with wasm-opt {WASM_OPT_VERSION} (Debian's binaryen)"
    );
    if any {
        eprintln!("egress-wasm-build: warning: {why}: these modules will not match the pins");
        return Ok(());
    }
    Err(format!("{why}; pass --any-wasm-opt to build anyway"))
}

/// `cargo build` of the module crates, at opt-level `z` (egress-core stays at `s`: Cargo.toml), with the Cargo home
/// (the only absolute path a release build embeds: dependency sources in panic locations) mapped to a fixed name, so
/// a checkout's modules are the bytes its manifests pin.
fn cargo_build(workspace: &Path, modules: &[Module]) -> Result<(), String> {
    let cargo_home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|home| Path::new(&home).join(".cargo")))
        .map_err(|_| "neither CARGO_HOME nor HOME is set".to_string())?;
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(workspace).args(["build", "--release", "--target", TARGET]);
    for module in modules {
        command.args(["-p", module.package]);
    }
    command
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "z")
        .env("CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS", format!("--remap-path-prefix={}=/cargo", cargo_home.display()));
    let status = command.status().map_err(|e| format!("cargo: {e}"))?;
    if !status.success() {
        return Err("cargo build failed".into());
    }
    Ok(())
}

/// From cargo's own output (never in place: cargo hard-links the module to its output in deps/, and writing through
/// that link would change the input of the next run) to the module, renamed into place.
fn trim_and_shrink(out: &Path, module: &Module) -> Result<(), String> {
    let built = out.join("deps").join(format!("{}.wasm", module.package.replace('-', "_")));
    let graph: Vec<String> = module
        .exports()
        .iter()
        .map(|export| format!(r#"{{"name": "{export}", "root": true, "export": "{export}"}}"#))
        .collect();
    let graph_file = out.join(format!("{}.exports.json", module.file));
    let kept = out.join(format!("{}.kept", module.file));
    let optimised = out.join(format!("{}.opt", module.file));
    std::fs::write(&graph_file, format!("[{}]", graph.join(",")))
        .map_err(|e| format!("{}: {e}", graph_file.display()))?;
    let metadce = Command::new("wasm-metadce")
        .args(WASM_FEATURES)
        .arg("-f")
        .arg(&graph_file)
        .arg(&built)
        .arg("-o")
        .arg(&kept)
        .output()
        .map_err(|e| format!("wasm-metadce: {e}"))?;
    let _ = std::fs::remove_file(&graph_file);
    if !metadce.status.success() {
        return Err(format!("wasm-metadce {}: {}", built.display(), String::from_utf8_lossy(&metadce.stderr)));
    }
    // metadce silently ignores a name the module does not export: a callback a stage needs but no code implements.
    let exported = exports(&std::fs::read(&kept).map_err(|e| format!("{}: {e}", kept.display()))?)
        .ok_or(format!("{}: not a WebAssembly module", kept.display()))?;
    for callback in module.callbacks() {
        if !exported.contains(callback) {
            return Err(format!("{}: {callback} is needed by its stages but not exported by the code", module.file));
        }
    }
    let shrunk = Command::new("wasm-opt")
        .args(WASM_FEATURES)
        .args(["--merge-similar-functions", "-Oz"])
        .arg(&kept)
        .arg("-o")
        .arg(&optimised)
        .status()
        .map_err(|e| format!("wasm-opt: {e}"))?;
    let _ = std::fs::remove_file(&kept);
    if !shrunk.success() {
        return Err(format!("wasm-opt failed on {}", module.file));
    }
    std::fs::rename(&optimised, out.join(module.file)).map_err(|e| format!("{}: {e}", module.file))
}
