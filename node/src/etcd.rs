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

/// This host's etcd static pod as `spec` renders it (its image, flags and
/// paths), for the member on record: what an upgrade moves a member to.
/// With its data directory etcd takes its membership from there; the
/// initial flags only name this member as it is. Whether the file changed.
pub fn write_member_manifest(
    paths: &HostPaths,
    spec: &bootstrap::plane::PlaneSpec,
    member: &crate::checkpoint::EtcdMemberIdentity,
) -> anyhow::Result<bool> {
    use anyhow::Context;
    let initial = bootstrap::plane::EtcdInitial {
        members: vec![(member.name.clone(), member.peer_urls.join(","))],
        state: bootstrap::plane::InitialClusterState::Existing,
    };
    let pod = bootstrap::objects::etcd_static_pod_yaml(spec, &initial)?;
    let written = crate::fsutil::write_atomic(&paths.etcd_manifest(), pod.as_bytes(), 0o600)
        .with_context(|| format!("writing {}", paths.etcd_manifest().display()))?;
    Ok(written != crate::fsutil::Written::Unchanged)
}

/// The member reached at `client_urls` (another host's), with this host's
/// health-check client certificate.
pub fn member_config(paths: &HostPaths, client_urls: &[String]) -> etcd_mgr::EtcdConfig {
    etcd_mgr::EtcdConfig {
        endpoints: client_urls.to_vec(),
        ..config(paths)
    }
}
