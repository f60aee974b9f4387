//! The parts of `egressctl` that other tools share: configuration checks with the filters' own engine, the
//! Istio manifests rendered from those configurations, and the OCI images the manifests pin. The test harness
//! builds its Envoy from the same manifests and checks the same digests, so what is tested is what is deployed.

pub mod config;
pub mod oci;
pub mod render;
