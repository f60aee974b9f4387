//! The parts of `egressctl` that other tools share: configuration checks with the filters' own engine, the
//! Istio manifests rendered from those configurations (the plugins, and the routing the policy asks for:
//! [`routing`]), the OCI images the manifests pin, and the one definition of the suite's native access-log line
//! (the lab's bootstrap and the rendered Istio providers). The test harness builds its Envoy from the same manifests
//! and checks the same digests, so what is tested is what is deployed; and it reads a real Envoy's log with the
//! audit event reader behind `egressctl audit` ([`audit_log`]).

pub mod access_log;
pub mod audit_log;
pub mod config;
pub mod observability;
pub mod oci;
pub mod render;
pub mod resolved;
pub mod routing;
