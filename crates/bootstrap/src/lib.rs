//! First node, pivot, tokens, PKI. See ARCHITECTURE.md.
