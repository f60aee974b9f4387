//! `egressctl oci` writes an OCI image layout that Istio's Wasm fetcher accepts, and the same one every time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const TAG: &str = "0.1.0";

/// A small module with the export a proxy-wasm module declares its ABI by, and some padding.
fn fake_module() -> Vec<u8> {
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    let name = b"proxy_abi_version_0_2_1";
    let mut exports = vec![1, name.len() as u8];
    exports.extend(name);
    exports.extend([0, 0]); // a function, index 0
    module.extend([7, exports.len() as u8]);
    module.extend(exports);
    let mut custom = vec![4];
    custom.extend(b"note");
    custom.extend((0..100u8).map(|i| i.wrapping_mul(37)));
    module.extend([0, custom.len() as u8]); // a custom section
    module.extend(custom);
    module
}

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("egressctl-oci-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn egressctl_oci(wasm: &Path, out: &Path, tag: &str) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_egressctl"))
        .arg("oci")
        .arg("--wasm")
        .arg(wasm)
        .arg("--out")
        .arg(out)
        .args(["--tag", tag])
        .output()
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Every file under `dir`, by relative path, with its bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let relative = path.strip_prefix(dir).unwrap().to_string_lossy().replace('\\', "/");
                files.insert(relative, fs::read(&path).unwrap());
            }
        }
    }
    files
}

/// The blob a descriptor points at, after checking that its digest and size are those of the bytes.
fn blob(layout: &Path, descriptor: &Value) -> Vec<u8> {
    let digest = descriptor["digest"].as_str().unwrap();
    let hex = digest.strip_prefix("sha256:").unwrap_or_else(|| panic!("{digest}: not a sha256 digest"));
    let bytes = fs::read(layout.join("blobs/sha256").join(hex)).unwrap_or_else(|e| panic!("blob {digest}: {e}"));
    assert_eq!(sha256_hex(&bytes), hex, "blob {digest}: content does not match its digest");
    assert_eq!(descriptor["size"].as_u64(), Some(bytes.len() as u64), "blob {digest}: size");
    bytes
}

#[test]
fn writes_the_oci_variant_of_the_wasm_image_spec() {
    let dir = scratch("layout");
    let wasm = dir.join("egress_allowlist.wasm");
    let module = fake_module();
    fs::write(&wasm, &module).unwrap();
    let layout = dir.join("layout");
    let (code, stdout, stderr) = egressctl_oci(&wasm, &layout, TAG);
    assert_eq!(code, 0, "{stderr}");

    let files = tree(&layout);
    assert_eq!(files["oci-layout"], br#"{"imageLayoutVersion":"1.0.0"}"#);
    assert!(files.contains_key("index.json"));
    let blob_names: Vec<&String> = files.keys().filter(|name| name.starts_with("blobs/sha256/")).collect();
    assert_eq!(blob_names.len(), 3, "config, module and manifest: {blob_names:?}");
    for name in &blob_names {
        assert_eq!(sha256_hex(&files[*name]), name["blobs/sha256/".len()..], "{name}: content does not match its name");
    }
    assert_eq!(files.len(), 5, "{:?}", files.keys());

    let index: Value = serde_json::from_slice(&files["index.json"]).unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], "application/vnd.oci.image.index.v1+json");
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifests[0]["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(manifests[0]["annotations"]["org.opencontainers.image.ref.name"], TAG);

    let manifest_bytes = blob(&layout, &manifests[0]);
    let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(manifest["config"]["mediaType"], "application/vnd.module.wasm.config.v1+json");
    let config: Value = serde_json::from_slice(&blob(&layout, &manifest["config"])).unwrap();
    assert_eq!(config, serde_json::json!({"type": "envoy_proxy", "abiVersions": ["proxy_abi_version_0_2_1"]}));

    // Istio (pkg/wasm/imagefetcher.go, extractOCIArtifactImage) takes this variant only with exactly two layers and
    // loads the one of the content media type as the raw module.
    let layers = manifest["layers"].as_array().unwrap();
    let media_types: Vec<&str> = layers.iter().map(|layer| layer["mediaType"].as_str().unwrap()).collect();
    assert_eq!(
        media_types,
        ["application/vnd.module.wasm.config.v1+json", "application/vnd.module.wasm.content.layer.v1+wasm"]
    );
    assert_eq!(layers[0]["digest"], manifest["config"]["digest"], "the config layer is the manifest's config");
    assert_eq!(blob(&layout, &layers[1]), module, "the content layer is the module, byte for byte");
    assert_eq!(layers[1]["annotations"]["org.opencontainers.image.title"], "plugin.wasm");
    assert_eq!(manifest["annotations"]["module.wasm.runtime/type"], "envoy_proxy");
    let text = String::from_utf8(manifest_bytes.clone()).unwrap();
    assert!(!text.contains("created"), "no timestamps: {text}");

    let manifest_digest = sha256_hex(&manifest_bytes);
    assert_eq!(
        stdout.trim(),
        format!(
            "{}:{TAG} manifest sha256:{manifest_digest} (module {} bytes, proxy_abi_version_0_2_1)",
            layout.display(),
            module.len()
        )
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_same_module_and_tag_give_the_same_bytes() {
    let dir = scratch("reproducible");
    let wasm = dir.join("module.wasm");
    fs::write(&wasm, fake_module()).unwrap();
    let (first, second) = (dir.join("first"), dir.join("second"));
    assert_eq!(egressctl_oci(&wasm, &first, TAG).0, 0);
    assert_eq!(egressctl_oci(&wasm, &second, TAG).0, 0);
    let built = tree(&first);
    assert_eq!(built, tree(&second), "two runs, two directories");

    // A rebuild into an existing layout replaces it: after a different module and back, nothing is left over.
    let other = dir.join("other.wasm");
    let mut changed = fake_module();
    changed.extend([0, 1, 0]); // one more custom section (id 0, size 1, empty name): still a valid module
    fs::write(&other, &changed).unwrap();
    let (code, _, stderr) = egressctl_oci(&other, &first, "0.2.0");
    assert_eq!(code, 0, "{stderr}");
    assert_ne!(tree(&first), built);
    assert_eq!(egressctl_oci(&wasm, &first, TAG).0, 0);
    assert_eq!(tree(&first), built, "rebuilt in place");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn refuses_what_it_cannot_package_and_where_it_must_not_write() {
    let dir = scratch("refusals");
    let wasm = dir.join("module.wasm");
    fs::write(&wasm, fake_module()).unwrap();

    let not_wasm = dir.join("policy.yaml");
    fs::write(&not_wasm, "mode: enforce\n").unwrap();
    let (code, _, stderr) = egressctl_oci(&not_wasm, &dir.join("out"), TAG);
    assert_eq!(code, 3, "an input that is not a module");
    assert!(stderr.contains("policy.yaml: not a WebAssembly module"), "{stderr}");

    let (code, _, stderr) = egressctl_oci(&wasm, &dir.join("out"), "1.0/latest");
    assert_eq!(code, 2, "a usage error");
    assert!(stderr.contains("not a valid image tag"), "{stderr}");
    assert!(!dir.join("out").exists(), "nothing written on a usage error");

    // A directory with other things in it is not taken over.
    let busy = dir.join("busy");
    fs::create_dir_all(&busy).unwrap();
    fs::write(busy.join("notes.txt"), "mine").unwrap();
    let (code, _, stderr) = egressctl_oci(&wasm, &busy, TAG);
    assert_eq!(code, 3, "an output that cannot be written");
    assert!(stderr.contains("is not an OCI image layout: refusing to write into it"), "{stderr}");
    assert_eq!(tree(&busy).len(), 1);

    let output = Command::new(env!("CARGO_BIN_EXE_egressctl")).args(["oci", "--wasm", "x.wasm"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("required arguments were not provided:\n  --out <DIR>"));
    fs::remove_dir_all(&dir).unwrap();
}
