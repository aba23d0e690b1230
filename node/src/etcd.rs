//! How this host reaches its etcd members: over mTLS on loopback with the
//! health-check client certificate. Used by the agent (scheduled
//! snapshots), the `etcd` and `status` commands, and the sequences.

use std::time::Duration;

use bootstrap::pki::names;

use crate::paths::HostPaths;

/// This host's self-hosted etcd member (client port 2379).
pub fn config(paths: &HostPaths) -> etcd_mgr::EtcdConfig {
    config_at(paths, bootstrap::plane::PlanePorts::default().etcd_client)
}

/// The etcd member listening on loopback `port` (the self-hosted member,
/// or the temporary one while `init` runs).
pub fn config_at(paths: &HostPaths, port: u16) -> etcd_mgr::EtcdConfig {
    let pki = paths.pki_dir();
    etcd_mgr::EtcdConfig {
        endpoints: vec![format!("https://127.0.0.1:{port}")],
        ca_file: pki.join(format!("{}.crt", names::ETCD_CA)),
        cert_file: pki.join(format!("{}.crt", names::ETCD_HEALTHCHECK_CLIENT)),
        key_file: pki.join(format!("{}.key", names::ETCD_HEALTHCHECK_CLIENT)),
        timeout: Duration::from_secs(5),
    }
}

/// This host's member and every other host's the balancer knows of (its
/// list of API servers: each control-plane host runs a member beside its
/// API server), each given `timeout`: how to reach the cluster's etcd when
/// this host's member is down or gone (a reset leaving, a restore asking
/// who else serves, a quorum loss).
pub fn cluster_config(paths: &HostPaths, timeout: Duration) -> etcd_mgr::EtcdConfig {
    let mut cfg = config(paths);
    cfg.timeout = timeout;
    let port = bootstrap::plane::PlanePorts::default().etcd_client;
    let others: std::collections::BTreeSet<std::net::IpAddr> =
        crate::control::ApiBackends::read(paths)
            .map(|b| b.addrs)
            .unwrap_or_default()
            .iter()
            .map(|a| a.ip())
            .filter(|ip| !ip.is_loopback())
            .collect();
    cfg.endpoints.extend(
        others
            .iter()
            .map(|ip| format!("https://{}", std::net::SocketAddr::new(*ip, port))),
    );
    cfg
}
