//! The egress policy engine, free of any proxy host: the allow-list, redirect, identity and audit filters are thin
//! glue over this crate, and everything security-relevant is tested here, natively and on wasm32.
//!
//! Inputs are plain values (an authority string, a method, a path, a peer certificate's URI SAN); outputs are typed
//! [`Decision`]s with a machine [`Reason`] and the rule involved.

pub mod assertion;
pub mod audit;
pub mod authority;
pub mod certificate;
pub mod cidr;
pub mod config_error;
pub mod decision;
pub mod documents;
pub mod fingerprint;
pub mod headers;
pub mod hosts;
pub mod identity;
pub mod json;
pub mod otlp;
pub mod path;
pub mod policy;
pub mod redirect;
pub mod request;
pub mod resolved;
pub mod spiffe;
pub mod state;
pub mod suite;
mod table;
pub mod xfcc;

pub use authority::{Authority, Host, Malformed};
pub use config_error::{ConfigError, ConfigErrors};
pub use decision::{Action, Caller, Decision, Destination, Reason};
pub use documents::{Mode, PolicyDocument};
pub use policy::Policy;
pub use request::RequestLine;
pub use spiffe::{SpiffeError, SpiffeId};
