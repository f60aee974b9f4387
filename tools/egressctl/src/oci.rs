//! `egressctl oci`: a built filter module as an OCI image layout, in the Wasm image format Istio pulls for a
//! WasmPlugin `url: oci://…`, ready for `oras cp --from-oci-layout` or `skopeo copy oci:…`.
//!
//! The format is the *oci* variant of the Wasm image specification (github.com/solo-io/wasm, `spec/spec.md`), the
//! one with Wasm-specific media types rather than a tarball: a runtime config (`application/vnd.module.wasm.config.
//! v1+json`) and the raw module (`application/vnd.module.wasm.content.layer.v1+wasm`). Istio's fetcher
//! (`pkg/wasm/imagefetcher.go`, `extractOCIArtifactImage`) accepts this variant only with *exactly two layers*, so
//! the config blob is both the manifest's config and the first layer, as `wasme push` (the reference producer)
//! writes it; an image with the module as its only layer fails in Istio with "number of layers must be 2".
//!
//! The output is a function of the module bytes and the tag alone: no timestamps, fixed file names in the
//! annotations, JSON written with a fixed key order. The same module always gives the same manifest digest, which
//! is what a WasmPlugin's `sha256` pins.

use sha2::{Digest, Sha256};
use std::fs;
use std::path::Path;

pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.module.wasm.config.v1+json";
pub const CONTENT_MEDIA_TYPE: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
/// The index annotation that names a tag in an OCI image layout (what `DIR:TAG` resolves).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
const TITLE: &str = "org.opencontainers.image.title";
/// File names the layers carry (`oras pull` writes them out under these names); fixed so that the digest does not
/// depend on where the module was built.
const CONFIG_TITLE: &str = "runtime-config.json";
const MODULE_TITLE: &str = "plugin.wasm";
/// The runtime type of the Wasm image spec for Envoy filters.
const RUNTIME_TYPE: &str = "envoy_proxy";
/// Exports by which a proxy-wasm module declares the host ABI it speaks, e.g. `proxy_abi_version_0_2_1`.
const ABI_EXPORT_PREFIX: &str = "proxy_abi_version_";

/// A tag as the OCI distribution spec allows it: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`. Registries refuse others,
/// so refuse them before anything is written.
pub fn check_tag(tag: &str) -> Result<(), String> {
    let mut chars = tag.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok && tag.len() <= 128 {
        Ok(())
    } else {
        Err(format!("{tag:?} is not a valid image tag ([A-Za-z0-9_][A-Za-z0-9._-]{{0,127}})"))
    }
}

/// The blobs of one Wasm image and the index that tags it.
#[derive(Debug)]
pub struct Image {
    pub config: Vec<u8>,
    pub module: Vec<u8>,
    pub manifest: Vec<u8>,
    pub index: Vec<u8>,
}

impl Image {
    pub fn new(module: Vec<u8>, abi_versions: &[String], tag: &str) -> Image {
        let mut config_fields = vec![("type", string(RUNTIME_TYPE))];
        if !abi_versions.is_empty() {
            config_fields.push(("abiVersions", array(abi_versions.iter().map(|v| string(v)))));
        }
        let config = object(&config_fields).into_bytes();

        let config_descriptor = descriptor(CONFIG_MEDIA_TYPE, &config, &[]);
        let layers = array([
            descriptor(CONFIG_MEDIA_TYPE, &config, &[(TITLE, CONFIG_TITLE)]),
            descriptor(CONTENT_MEDIA_TYPE, &module, &[(TITLE, MODULE_TITLE)]),
        ]);
        // The annotations `wasme push` sets, so registry UIs and tools that know the spec can tell what this is.
        let mut annotations = vec![("module.wasm.runtime/type", string(RUNTIME_TYPE))];
        if !abi_versions.is_empty() {
            annotations.push(("module.wasm.runtime/abi_version", string(&abi_versions.join(","))));
        }
        let manifest = object(&[
            ("schemaVersion", "2".to_string()),
            ("mediaType", string(MANIFEST_MEDIA_TYPE)),
            ("config", config_descriptor),
            ("layers", layers),
            ("annotations", object(&annotations)),
        ])
        .into_bytes();

        let index = object(&[
            ("schemaVersion", "2".to_string()),
            ("mediaType", string(INDEX_MEDIA_TYPE)),
            ("manifests", array([descriptor(MANIFEST_MEDIA_TYPE, &manifest, &[(REF_NAME, tag)])])),
        ])
        .into_bytes();
        Image { config, module, manifest, index }
    }

    /// The image of a built module, tagged `tag`; refuses what is not a core Wasm module.
    pub fn of_module(module: Vec<u8>, tag: &str) -> Result<Image, String> {
        check_tag(tag)?;
        let abi_versions = abi_versions(&module)?;
        Ok(Image::new(module, &abi_versions, tag))
    }

    /// The manifest's digest (hex): the image's identity in a registry and the value of a WasmPlugin's `sha256`.
    pub fn manifest_digest(&self) -> String {
        sha256_hex(&self.manifest)
    }

    fn blobs(&self) -> [&[u8]; 3] {
        [&self.config, &self.module, &self.manifest]
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// An OCI content descriptor for `blob`.
fn descriptor(media_type: &str, blob: &[u8], annotations: &[(&str, &str)]) -> String {
    let mut fields = vec![
        ("mediaType", string(media_type)),
        ("digest", string(&format!("sha256:{}", sha256_hex(blob)))),
        ("size", blob.len().to_string()),
    ];
    if !annotations.is_empty() {
        let annotations: Vec<(&str, String)> = annotations.iter().map(|(key, value)| (*key, string(value))).collect();
        fields.push(("annotations", object(&annotations)));
    }
    object(&fields)
}

// Compact JSON with keys in the order written: serde_json's own map order depends on a crate feature that any
// dependency may switch on, and the digests must not change with it.

fn string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

fn object(fields: &[(&str, String)]) -> String {
    let members: Vec<String> = fields.iter().map(|(key, value)| format!("{}:{value}", string(key))).collect();
    format!("{{{}}}", members.join(","))
}

fn array(items: impl IntoIterator<Item = String>) -> String {
    format!("[{}]", items.into_iter().collect::<Vec<_>>().join(","))
}

/// Writes `image` as the OCI image layout `dir`: `oci-layout`, `index.json`, `blobs/sha256/<digest>`. The layout
/// holds this image only: blobs of an earlier run are removed, so the directory is the same, byte for byte, for
/// the same module and tag. A directory that is neither empty nor a layout is left alone.
pub fn write_layout(dir: &Path, image: &Image) -> Result<(), String> {
    let shown = dir.display();
    if dir.exists() {
        let mut entries = fs::read_dir(dir).map_err(|e| format!("{shown}: {e}"))?;
        if entries.next().is_some() && !dir.join("oci-layout").is_file() {
            return Err(format!("{shown} exists and is not an OCI image layout: refusing to write into it"));
        }
    }
    let blob_dir = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blob_dir).map_err(|e| format!("{}: {e}", blob_dir.display()))?;
    let write = |path: &Path, bytes: &[u8]| fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()));

    let mut keep = Vec::new();
    for blob in image.blobs() {
        let digest = sha256_hex(blob);
        write(&blob_dir.join(&digest), blob)?;
        keep.push(digest);
    }
    for entry in fs::read_dir(&blob_dir).map_err(|e| format!("{}: {e}", blob_dir.display()))? {
        let path = entry.map_err(|e| format!("{}: {e}", blob_dir.display()))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let is_blob = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
        if is_blob && !keep.iter().any(|digest| digest == name) {
            fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    write(&dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    // Last: until the index names the manifest, the layout holds no (half-written) image.
    write(&dir.join("index.json"), &image.index)
}

/// The `proxy_abi_version_*` exports of a Wasm core module, sorted. Reading the export section also makes sure the
/// file is a module at all: pushing anything else would only fail later, in every gateway that pulls it.
pub fn abi_versions(module: &[u8]) -> Result<Vec<String>, String> {
    let mut reader = Reader { bytes: module, at: 0 };
    if reader.take(4)? != b"\0asm" {
        return Err("not a WebAssembly module (no \\0asm magic)".into());
    }
    match reader.take(4)? {
        [1, 0, 0, 0] => {}
        // Layer 1: the component model, which proxy-wasm hosts do not load.
        [_, _, 1, 0] => return Err("a WebAssembly component, not a core module: proxy-wasm loads core modules".into()),
        other => return Err(format!("unsupported WebAssembly binary version {other:?}")),
    }
    let mut versions = Vec::new();
    while !reader.done() {
        let id = reader.byte()?;
        let size = reader.leb_u32()? as usize;
        let section = reader.take(size)?;
        const EXPORT_SECTION: u8 = 7;
        if id != EXPORT_SECTION {
            continue;
        }
        let mut exports = Reader { bytes: section, at: 0 };
        for _ in 0..exports.leb_u32()? {
            let name_len = exports.leb_u32()? as usize;
            let name = std::str::from_utf8(exports.take(name_len)?).map_err(|_| "an export name is not UTF-8")?;
            let _kind = exports.byte()?;
            let _index = exports.leb_u32()?;
            if name.starts_with(ABI_EXPORT_PREFIX) {
                versions.push(name.to_string());
            }
        }
    }
    versions.sort();
    versions.dedup();
    Ok(versions)
}

/// A cursor over Wasm binary data; every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }

    fn take(&mut self, count: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(count).filter(|end| *end <= self.bytes.len());
        let end = end.ok_or_else(|| format!("truncated WebAssembly module (at byte {})", self.at))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    /// An unsigned LEB128 number of at most 32 bits, as the binary format encodes sizes and counts.
    fn leb_u32(&mut self) -> Result<u32, String> {
        let mut value: u32 = 0;
        for shift in (0..35).step_by(7) {
            let byte = self.byte()?;
            value |= u32::from(byte & 0x7f).checked_shl(shift).unwrap_or(0);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!("malformed WebAssembly module (over-long number before byte {})", self.at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_follow_the_distribution_spec() {
        for tag in ["0.1.0", "latest", "_x", "v1.2.3-rc.1", &"a".repeat(128)] {
            assert!(check_tag(tag).is_ok(), "{tag}");
        }
        for tag in ["", ".x", "-x", "a/b", "a:b", "ä", &"a".repeat(129)] {
            assert!(check_tag(tag).is_err(), "{tag}");
        }
    }

    #[test]
    fn reads_the_abi_exports_of_a_module() {
        let mut module = b"\0asm\x01\0\0\0".to_vec();
        let mut exports = vec![2];
        for name in ["proxy_abi_version_0_2_1", "proxy_on_memory_allocate"] {
            exports.push(name.len() as u8);
            exports.extend(name.as_bytes());
            exports.extend([0, 0]);
        }
        module.extend([7, exports.len() as u8]);
        module.extend(&exports);
        assert_eq!(abi_versions(&module), Ok(vec!["proxy_abi_version_0_2_1".to_string()]));
        assert_eq!(abi_versions(b"\0asm\x01\0\0\0"), Ok(Vec::new()));
        assert!(abi_versions(&module[..module.len() - 3]).unwrap_err().contains("truncated"));
        assert!(abi_versions(b"\0asm\x0d\0\x01\0").unwrap_err().contains("component"));
        assert!(abi_versions(b"PK\x03\x04....").unwrap_err().contains("not a WebAssembly module"));
    }

    #[test]
    fn leb128() {
        let read = |bytes: &[u8]| Reader { bytes, at: 0 }.leb_u32();
        assert_eq!(read(&[0x00]), Ok(0));
        assert_eq!(read(&[0xe5, 0x8e, 0x26]), Ok(624_485));
        assert_eq!(read(&[0xff, 0xff, 0xff, 0xff, 0x0f]), Ok(u32::MAX));
        assert!(read(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01]).is_err());
    }
}
