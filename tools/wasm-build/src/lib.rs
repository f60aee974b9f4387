//! The modules of the suite and how `make build` makes them: cargo builds each module crate for `wasm32-wasip1`;
//! Binaryen's `wasm-metadce` keeps only the lifecycle exports and the callbacks the module's stages need (Envoy
//! enters a module for every proxy-wasm callback it exports, and the SDK exports all 26: each one dropped is a VM
//! entry less per request); `wasm-opt -Oz` shrinks the rest. The same table serves the tests
//! (`test-harness/tests/modules.rs`), so what is built and what is checked cannot drift apart.

use std::collections::BTreeSet;

/// One module file.
#[derive(Clone, Copy, Debug)]
pub struct Module {
    /// The cargo package that builds it.
    pub package: &'static str,
    /// The file in the output folder, which the manifests pin and Envoy loads.
    pub file: &'static str,
    /// The stages it runs, by their callback lists.
    pub stages: &'static [&'static [&'static str]],
}

impl Module {
    /// The callbacks it exports besides [`LIFECYCLE_EXPORTS`]: the union of its stages'.
    pub fn callbacks(&self) -> BTreeSet<&'static str> {
        self.stages.iter().flat_map(|stage| stage.iter().copied()).collect()
    }

    /// Everything it exports after `make build`.
    pub fn exports(&self) -> BTreeSet<&'static str> {
        LIFECYCLE_EXPORTS.iter().copied().chain(self.callbacks()).collect()
    }
}

/// The exports every module keeps: memory, its start, the ABI marker and the callbacks of the VM's and root
/// context's lifecycle.
pub const LIFECYCLE_EXPORTS: &[&str] = &[
    "memory",
    "_initialize",
    "proxy_abi_version_0_2_1",
    "proxy_on_memory_allocate",
    "proxy_on_vm_start",
    "proxy_on_configure",
    "proxy_on_context_create",
    "proxy_on_delete",
];

const ALLOWLIST: &[&str] = egress_allowlist::CALLBACKS;
const IDENTITY: &[&str] = egress_identity::CALLBACKS;
const REDIRECTS: &[&str] = egress_redirects::CALLBACKS;
const AUDIT: &[&str] = egress_audit::CALLBACKS;

/// Every module of the suite: each stage alone, and all of them fused.
pub const MODULES: &[Module] = &[
    Module { package: "egress-allowlist-module", file: "egress_allowlist.wasm", stages: &[ALLOWLIST] },
    Module { package: "egress-identity-module", file: "egress_identity.wasm", stages: &[IDENTITY] },
    Module { package: "egress-redirects-module", file: "egress_redirects.wasm", stages: &[REDIRECTS] },
    Module { package: "egress-audit-module", file: "egress_audit.wasm", stages: &[AUDIT] },
    Module { package: "egress-suite", file: "egress_suite.wasm", stages: &[IDENTITY, ALLOWLIST, REDIRECTS, AUDIT] },
];

/// The floor `make bench` measures against: a filter that only continues on request headers.
pub const EMPTY: Module =
    Module { package: "egress-empty", file: "egress_empty.wasm", stages: &[&["proxy_on_request_headers"]] };

/// The target the modules are built for.
pub const TARGET: &str = "wasm32-wasip1";

/// The Binaryen release whose `wasm-opt` writes the bytes the manifests pin (Debian's `binaryen`).
pub const WASM_OPT_VERSION: &str = "108";

/// The WebAssembly features rustc enables for `wasm32-wasip1`; Envoy's V8 supports them all.
pub const WASM_FEATURES: &[&str] = &[
    "--enable-bulk-memory",
    "--enable-sign-ext",
    "--enable-mutable-globals",
    "--enable-nontrapping-float-to-int",
    "--enable-multivalue",
    "--enable-reference-types",
];

/// The names in a module's export section (section 7: a vector of name, kind, index); `None` when the bytes are
/// not a WebAssembly module.
pub fn exports(module: &[u8]) -> Option<BTreeSet<String>> {
    fn leb128(bytes: &[u8], at: &mut usize) -> Option<usize> {
        let (mut value, mut shift) = (0usize, 0u32);
        loop {
            let byte = *bytes.get(*at)?;
            *at += 1;
            value |= usize::from(byte & 0x7f).checked_shl(shift)?;
            if byte & 0x80 == 0 {
                return Some(value);
            }
            shift += 7;
        }
    }
    if module.get(..4)? != b"\0asm" {
        return None;
    }
    let mut at = 8;
    while at < module.len() {
        let id = *module.get(at)?;
        at += 1;
        let size = leb128(module, &mut at)?;
        let end = at.checked_add(size)?;
        if id == 7 {
            let mut names = BTreeSet::new();
            for _ in 0..leb128(module, &mut at)? {
                let length = leb128(module, &mut at)?;
                names.insert(String::from_utf8(module.get(at..at + length)?.to_vec()).ok()?);
                at += length + 1;
                leb128(module, &mut at)?;
            }
            return Some(names);
        }
        at = end;
    }
    Some(BTreeSet::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_suite_exports_what_every_stage_needs_and_each_module_what_its_stage_does() {
        let suite = MODULES.iter().find(|m| m.file == "egress_suite.wasm").map(Module::callbacks).unwrap_or_default();
        for module in MODULES {
            assert!(module.callbacks().is_subset(&suite), "{}", module.file);
        }
        assert_eq!(MODULES.iter().map(|m| m.file).collect::<BTreeSet<_>>().len(), MODULES.len());
    }
}
