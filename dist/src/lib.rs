//! Bundles and images: reads a selfnode bundle, builds OCI images from its
//! binaries, and imports them (and the bundle's OCI archives) into containerd
//! through its gRPC API. See ARCHITECTURE.md.
//!
//! Errors follow the workspace convention: each module has one
//! `<Thing>Error`; a message says what failed, and the underlying cause is
//! its `source()` (print with `{:#}` through anyhow to get the whole chain).

#![warn(missing_docs)]

pub mod appliance;
pub mod archive;
pub mod bundle;
pub mod containerd;
pub mod cpio;
pub mod elf;
pub mod hostfiles;
pub mod images;
pub mod import;
pub mod layer;
pub mod netfilter;
pub mod oci;
pub mod share;

/// `err` and its sources joined with ": " (what anyhow's `{:#}` prints).
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}
