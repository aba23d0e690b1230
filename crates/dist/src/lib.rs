//! Bundles and images. See ARCHITECTURE.md.
