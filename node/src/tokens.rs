//! Bootstrap tokens on a running cluster (`selfnode token`, and init's
//! `create_join_token`): Secrets of type `bootstrap.kubernetes.io/token`
//! with an expiry; the controller-manager's token cleaner deletes expired
//! ones and its bootstrap signer signs `cluster-info` with each valid one.

use std::time::{Duration, SystemTime};

use anyhow::Context;
use bootstrap::join::{
    BootstrapToken, JoinString, TokenInfo, CLUSTER_INFO, CLUSTER_INFO_NAMESPACE, TOKEN_NAMESPACE,
    TOKEN_SECRET_PREFIX, TOKEN_SECRET_TYPE,
};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, PostParams};

/// The description of the token `init` makes.
pub const INIT_TOKEN_DESCRIPTION: &str = "made by selfnode init";
/// How long the token `init` makes is valid.
pub const INIT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest TTL `token create` accepts: a join token is a credential
/// that adds machines to the cluster; it should not outlive its use.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// A control-plane token's TTL when none is given, and its longest.
pub const CONTROL_PLANE_TTL: Duration = Duration::from_secs(3600);
pub const MAX_CONTROL_PLANE_TTL: Duration = Duration::from_secs(2 * 3600);

/// Label on a token Secret that may make one node only.
pub const SINGLE_USE_LABEL: &str = "selfnode.dev/single-use";

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenKind {
    /// It joins a control-plane node (its host gets the cluster's keys).
    pub control_plane: bool,
    /// It makes one node: the control-plane hosts' approver deletes it once
    /// it approved a node's certificate for it.
    pub single_use: bool,
}

/// `--ttl`, or the default for the kind of token.
pub fn ttl_or_default(ttl: Option<Duration>, control_plane: bool) -> Duration {
    ttl.unwrap_or(if control_plane {
        CONTROL_PLANE_TTL
    } else {
        INIT_TOKEN_TTL
    })
}

/// A token that was made, with the string that joins with it (holds the
/// secret: not `Debug`).
#[derive(Clone, serde::Serialize)]
pub struct Created {
    #[serde(flatten)]
    pub info: TokenInfo,
    /// What `selfnode join` takes (contains the token's secret).
    pub join_string: String,
    /// Whether `cluster-info` carries this token's signature. False only
    /// when the token expired before the bootstrap signer got to it (a
    /// very short `--ttl`): the signer never signs an expired token, so
    /// such a token cannot join.
    pub signed: bool,
}

/// Refuses a TTL of zero or above [`MAX_TTL`] ([`MAX_CONTROL_PLANE_TTL`]
/// for a control-plane token) (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("--ttl {given}: a{} join token must expire, within {max} at most; pass e.g. --ttl {example}", if *control_plane { " control-plane" } else { "" })]
pub struct TtlError {
    pub given: String,
    pub max: String,
    pub control_plane: bool,
    pub example: &'static str,
}

pub fn check_ttl(ttl: Duration, control_plane: bool) -> Result<(), TtlError> {
    let (max, example) = if control_plane {
        (MAX_CONTROL_PLANE_TTL, "1h")
    } else {
        (MAX_TTL, "24h")
    };
    if ttl.is_zero() || ttl > max {
        return Err(TtlError {
            given: humantime::format_duration(ttl).to_string(),
            max: humantime::format_duration(max).to_string(),
            control_plane,
            example,
        });
    }
    Ok(())
}

/// Makes a token valid for `ttl` and its join string.
pub async fn create(
    client: &kube::Client,
    ttl: Duration,
    description: &str,
    kind: TokenKind,
) -> anyhow::Result<Created> {
    let control_plane = kind.control_plane;
    check_ttl(ttl, control_plane)?;
    let token = BootstrapToken::generate();
    let expiration = humantime::format_rfc3339_seconds(SystemTime::now() + ttl).to_string();
    let mut secret = token.secret_object(&expiration, description, control_plane);
    if kind.single_use || control_plane {
        secret
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(SINGLE_USE_LABEL.to_string(), "true".to_string());
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), TOKEN_NAMESPACE);
    api.create(&PostParams::default(), &secret)
        .await
        .context("creating the bootstrap token Secret")?;
    let info = TokenInfo::from_secret(&secret).context("reading back the token made")?;
    let expires = humantime::parse_rfc3339(&expiration).context("reading back the expiry")?;
    let signed = wait_signed(client, token.id(), expires).await? == Signing::Signed;
    let join_string = join_string(client, &token, control_plane).await?;
    Ok(Created {
        info,
        join_string,
        signed,
    })
}

/// How long a new token may wait for the bootstrap signer.
pub const SIGN_WAIT: Duration = Duration::from_secs(180);

/// How a wait for the bootstrap signer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signing {
    Signed,
    /// The token expired first; the signer skips expired tokens, so it
    /// never will be.
    ExpiredUnsigned,
}

/// Waits until the controller-manager's bootstrap signer has signed
/// `cluster-info` for token `id`, which expires at `expires`: a join string
/// is printed only once a host can join with it. Stops waiting when the
/// token expires (`ExpiredUnsigned`; the signer skips expired tokens);
/// errors after [`SIGN_WAIT`] when no signer answers.
pub async fn wait_signed(
    client: &kube::Client,
    id: &str,
    expires: SystemTime,
) -> anyhow::Result<Signing> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), CLUSTER_INFO_NAMESPACE);
    let key = format!("{}{id}", bootstrap::join::JWS_KEY_PREFIX);
    let deadline = std::time::Instant::now() + SIGN_WAIT;
    loop {
        let signed = cms
            .get_opt(CLUSTER_INFO)
            .await?
            .and_then(|cm| cm.data)
            .is_some_and(|d| d.contains_key(&key));
        if signed {
            return Ok(Signing::Signed);
        }
        if SystemTime::now() >= expires {
            return Ok(Signing::ExpiredUnsigned);
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "the controller-manager has not signed {CLUSTER_INFO_NAMESPACE}/{CLUSTER_INFO} for token {id} within {}s (its bootstrapsigner controller does that): is a kube-controller-manager running? ('kubectl -n kube-system get pods -l k8s-app=kube-controller-manager'); the token exists and works once it is signed",
                SIGN_WAIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The join string for `token`: the cluster's API endpoints (the
/// `kubernetes` EndpointSlice: every API server that serves) and the pin of
/// the CA `cluster-info` names.
pub async fn join_string(
    client: &kube::Client,
    token: &BootstrapToken,
    control_plane: bool,
) -> anyhow::Result<String> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), CLUSTER_INFO_NAMESPACE);
    let info = cms
        .get(CLUSTER_INFO)
        .await
        .with_context(|| format!("reading {CLUSTER_INFO_NAMESPACE}/{CLUSTER_INFO}"))?;
    let (server, ca) = bootstrap::join::cluster_info_contents(&info)?;
    let ca_hash = bootstrap::pki::ca_cert_hash(&ca)?;
    let mut endpoints = api_endpoints(client).await.unwrap_or_default();
    if endpoints.is_empty() {
        endpoints.push(
            server
                .trim_start_matches("https://")
                .trim_end_matches('/')
                .to_string(),
        );
    }
    Ok(JoinString {
        token: token.clone(),
        endpoints,
        ca_hash,
        control_plane,
    }
    .to_string())
}

/// `host:port` of every ready endpoint of the `kubernetes` Service.
async fn api_endpoints(client: &kube::Client) -> anyhow::Result<Vec<String>> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let list = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=kubernetes"))
        .await?;
    let mut out = Vec::new();
    for s in list.items {
        let port = s
            .ports
            .iter()
            .flatten()
            .find_map(|p| p.port)
            .unwrap_or(6443);
        for e in s.endpoints.into_iter().flatten() {
            if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for a in e.addresses {
                let host = if a.contains(':') { format!("[{a}]") } else { a };
                out.push(format!("{host}:{port}"));
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Every bootstrap token, soonest to expire first.
pub async fn list(client: &kube::Client) -> anyhow::Result<Vec<TokenInfo>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), TOKEN_NAMESPACE);
    let secrets = api
        .list(&ListParams::default().fields(&format!("type={TOKEN_SECRET_TYPE}")))
        .await
        .context("listing bootstrap token Secrets")?;
    let mut out: Vec<TokenInfo> = secrets
        .items
        .iter()
        .filter_map(TokenInfo::from_secret)
        .collect();
    out.sort_by(|a, b| a.expiration.cmp(&b.expiration).then(a.id.cmp(&b.id)));
    Ok(out)
}

/// The secret-bearing token with this ID, when the cluster holds it.
pub async fn get(client: &kube::Client, id: &str) -> anyhow::Result<Option<BootstrapToken>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), TOKEN_NAMESPACE);
    let Some(s) = api.get_opt(&format!("{TOKEN_SECRET_PREFIX}{id}")).await? else {
        return Ok(None);
    };
    let data = s.data.unwrap_or_default();
    let field = |k: &str| {
        data.get(k)
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
            .unwrap_or_default()
    };
    Ok(format!("{}.{}", field("token-id"), field("token-secret"))
        .parse()
        .ok())
}

/// Deletes the token with this ID (or the token's ID part). Returns
/// whether it existed.
pub async fn delete(client: &kube::Client, id_or_token: &str) -> anyhow::Result<bool> {
    let id = id_or_token.split('.').next().unwrap_or_default();
    if !bootstrap::join::valid_token_id(id) {
        return Err(bootstrap::join::JoinError::Token(id.to_string()).into());
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), TOKEN_NAMESPACE);
    match api
        .delete(&format!("{TOKEN_SECRET_PREFIX}{id}"), &Default::default())
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(e).context("deleting the bootstrap token Secret"),
    }
}

/// Whether `expiration` (RFC 3339) is more than `margin` away.
pub fn valid_for(info: &TokenInfo, margin: Duration) -> bool {
    let Some(exp) = info.expiration.as_deref() else {
        return true;
    };
    humantime::parse_rfc3339(exp).is_ok_and(|t| t > SystemTime::now() + margin)
}

/// Time left until `expiration`, for tables (`23h59m`, `expired`).
pub fn time_left(info: &TokenInfo) -> String {
    let Some(exp) = info.expiration.as_deref() else {
        return "never".into();
    };
    match humantime::parse_rfc3339(exp)
        .ok()
        .and_then(|t| t.duration_since(SystemTime::now()).ok())
    {
        Some(d) => {
            let mins = d.as_secs() / 60;
            format!("{}h{:02}m", mins / 60, mins % 60)
        }
        None => "expired".into(),
    }
}
