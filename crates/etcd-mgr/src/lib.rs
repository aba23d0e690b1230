//! etcd lifecycle. See ARCHITECTURE.md.
