//! `discover_cluster`: what a joining host learns before it writes
//! anything. `cluster-info` is read anonymously (TLS not verified yet:
//! nothing is trusted from it until checked), its signature checked for the
//! join string's token and its CA against the string's pin; then the
//! cluster's settings are read with the token over TLS verified with that
//! CA.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::Context;
use bootstrap::join::{ClusterInfo, JoinString, CLUSTER_INFO, CLUSTER_INFO_NAMESPACE};
use bootstrap::objects::{ClusterSettings, CLUSTER_SETTINGS};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;

use super::{Found, Join, JoinStep, NodeNameTaken, NotAControlPlaneToken, Runner};
use crate::sequences::runner::StepReport;

/// The DNS name in every API server certificate (kubeadm's too).
const API_SERVER_NAME: &str = "kubernetes";

/// How long an unsigned token is waited for: the bootstrap signer signs a
/// new token within moments; a token it never signs is unknown.
const SIGNATURE_WAIT: Duration = Duration::from_secs(10);

pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn discover_cluster(run: &Runner, join: &Join<'_>) -> anyhow::Result<StepReport> {
    run.wait(
        JoinStep::DiscoverCluster,
        "the cluster's signed cluster-info",
        || async {
            let js = &join.ctx.join;
            let endpoints = resolve(&js.endpoints)?;
            let started = std::time::Instant::now();
            let (info, via) = loop {
                match fetch_cluster_info(&endpoints).await {
                    Ok((cm, via)) => match bootstrap::join::verify_cluster_info(&cm, js) {
                        Ok(info) => break (info, via),
                        Err(bootstrap::join::JoinError::UnknownToken { .. })
                            if started.elapsed() < SIGNATURE_WAIT =>
                        {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        Err(e) => return Err(e.into()),
                    },
                    Err(e) => return Err(e),
                }
            };
            let settings = read_settings(via, &info, js).await?;
            check_node_name_free(via, &info, js, &join.ctx.node_name).await?;
            if join.ctx.control_plane {
                check_control_plane_token(via, &info, js).await?;
            }
            let node_ip = match join.ctx.advertise_address {
                Some(ip) => ip,
                None => local_address_towards(via)?,
            };
            join.found
                .set(Found {
                    info,
                    settings,
                    endpoints,
                    node_ip,
                })
                .map_err(|_| anyhow::anyhow!("discover_cluster ran twice"))?;
            Ok(())
        },
    )
    .await
}

fn resolve(endpoints: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for e in endpoints {
        let addrs = e
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve the API endpoint {e}"))?;
        out.extend(addrs);
    }
    Ok(out)
}

/// `cluster-info` from the first endpoint that answers, with TLS not
/// verified (nothing in it is trusted before `verify_cluster_info`).
async fn fetch_cluster_info(endpoints: &[SocketAddr]) -> anyhow::Result<(ConfigMap, SocketAddr)> {
    let mut errors = Vec::new();
    for addr in endpoints {
        let mut config = kube::Config::new(format!("https://{addr}").parse()?);
        config.accept_invalid_certs = true;
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        config.read_timeout = Some(CONNECT_TIMEOUT);
        let client = kube::Client::try_from(config)?;
        let cms: Api<ConfigMap> = Api::namespaced(client, CLUSTER_INFO_NAMESPACE);
        match cms.get(CLUSTER_INFO).await {
            Ok(cm) => return Ok((cm, *addr)),
            Err(e) => errors.push(format!("{addr}: {e}")),
        }
    }
    anyhow::bail!(
        "cannot read {CLUSTER_INFO_NAMESPACE}/{CLUSTER_INFO} from any API endpoint of the join string ({}); check that this host reaches the cluster's API servers and that the join string is current",
        errors.join("; ")
    )
}

/// The cluster's settings, read with the token over TLS verified against
/// the pinned CA: proof that the endpoint holds the CA-signed key.
async fn read_settings(
    via: SocketAddr,
    info: &ClusterInfo,
    js: &JoinString,
) -> anyhow::Result<ClusterSettings> {
    let client = token_client(&format!("https://{via}"), info, js)?;
    let cms: Api<ConfigMap> = Api::namespaced(client, "kube-system");
    let cm = cms.get(CLUSTER_SETTINGS).await.with_context(|| {
        format!("reading kube-system/{CLUSTER_SETTINGS} from {via} with the token (TLS verified with the cluster CA)")
    })?;
    Ok(ClusterSettings::from_config_map(&cm)?)
}

/// Whether the token carries the control-plane group (a SelfSubjectReview
/// says what the API server authenticated it as): refused before anything
/// is written otherwise.
/// Refuses a node name the cluster has already (a token makes new nodes
/// only: the control-plane hosts' approver refuses its certificate too),
/// before anything is written. Asked with the token, which may get (not
/// list) Nodes; a cluster that does not let it answer is not refused here.
async fn check_node_name_free(
    via: SocketAddr,
    info: &ClusterInfo,
    js: &JoinString,
    node: &str,
) -> anyhow::Result<()> {
    let client = token_client(&format!("https://{via}"), info, js)?;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client);
    match nodes.get_opt(node).await {
        Ok(Some(_)) => Err(NodeNameTaken {
            node: node.to_string(),
        }
        .into()),
        Ok(None) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 403 => {
            tracing::debug!(%node, "the cluster does not let the token read Nodes: the name is checked at approval");
            Ok(())
        }
        Err(e) => Err(e).context("asking the cluster whether the node name is taken"),
    }
}

async fn check_control_plane_token(
    via: SocketAddr,
    info: &ClusterInfo,
    js: &JoinString,
) -> anyhow::Result<()> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let client = token_client(&format!("https://{via}"), info, js)?;
    let reviews: Api<SelfSubjectReview> = Api::all(client);
    let review = reviews
        .create(
            &kube::api::PostParams::default(),
            &SelfSubjectReview::default(),
        )
        .await
        .context("asking the API server what the token is (SelfSubjectReview)")?;
    let groups = review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.groups)
        .unwrap_or_default();
    if groups
        .iter()
        .any(|g| g == bootstrap::join::CONTROL_PLANE_TOKEN_GROUP)
    {
        Ok(())
    } else {
        Err(NotAControlPlaneToken {
            token_id: js.token.id().to_string(),
        }
        .into())
    }
}

fn token_client(server: &str, info: &ClusterInfo, js: &JoinString) -> anyhow::Result<kube::Client> {
    let mut config = kube::Config::new(server.parse()?);
    config.root_cert = Some(bootstrap::join::certs_der(&info.ca_pem)?);
    // The name every API server's certificate carries: they share the
    // DaemonSet's one certificate, which names the first control-plane
    // node's address but not the others' (a join string lists them all).
    config.tls_server_name = Some(API_SERVER_NAME.to_string());
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.auth_info.token = Some(js.token.expose().into());
    Ok(kube::Client::try_from(config)?)
}

/// The host's address on the route to `peer` (what the kernel would use as
/// source): a connected UDP socket sends nothing.
fn local_address_towards(peer: SocketAddr) -> anyhow::Result<IpAddr> {
    let bind: SocketAddr = if peer.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let sock = std::net::UdpSocket::bind(bind)?;
    sock.connect(peer)
        .with_context(|| format!("no route from this host to {peer}"))?;
    Ok(sock.local_addr()?.ip())
}
