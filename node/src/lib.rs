//! The `selfnode` binary's code as a library: `main.rs` parses the command
//! line and calls [`commands::dispatch`]; tests use the same types (the
//! init plan's [`sequences::init::InitStep`]s, the agent's [`status::AgentStatus`])
//! instead of keeping copies.

pub mod address;
pub mod agent;
pub mod appliance;
pub mod certs;
pub mod checkpoint;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod control;
pub mod cri;
pub mod etcd;
pub mod exit;
pub mod fsutil;
pub mod host;
pub mod keys;
pub mod paths;
pub mod readiness;
pub mod sequences;
pub mod share;
pub mod status;
pub mod tokens;
pub mod wait;
