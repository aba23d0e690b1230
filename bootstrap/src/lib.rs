//! First node, pivot, tokens, PKI. See ARCHITECTURE.md.
//!
//! - [`host`]: the port through which this crate touches the machine
//!   (`node` implements it; tests use `host::fake::MemHost`, also exported to
//!   other crates with the `fake` feature).
//! - [`config`]: `init` settings from flags and a config file, validated.
//! - [`pki`]: certificates, keys and kubeconfigs in kubeadm's layout.
//! - [`plane`]: the control plane's spec, the temporary control plane as
//!   host processes, secrets encryption at rest.
//! - [`objects`]: the self-hosted control plane as typed Kubernetes objects
//!   and their server-side apply.

#![warn(missing_docs)]

pub mod config;
pub mod host;
pub mod join;
pub mod objects;
pub mod pki;
pub mod plane;
