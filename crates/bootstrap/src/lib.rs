//! First node, pivot, tokens, PKI. See ARCHITECTURE.md.
//!
//! - [`host`]: the port through which this crate touches the machine
//!   (`node` implements it; tests use `host::fake::MemHost`, also exported to
//!   other crates with the `fake` feature).
//! - [`pki`]: certificates, keys and kubeconfigs in kubeadm's layout.

pub mod host;
pub mod pki;
