//! The pod network. See ARCHITECTURE.md.
