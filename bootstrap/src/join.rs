//! What a host needs to join a cluster, and what the cluster gives it:
//! bootstrap tokens (Kubernetes' `bootstrap.kubernetes.io/token` Secrets),
//! the join string that carries a token with the API endpoints and the pin
//! of the cluster CA, and the check of the `cluster-info` ConfigMap a
//! joining host reads before it trusts anything (its detached JWS signature
//! made by the controller-manager's bootstrap signer with the token's
//! secret, then the CA pin), as `kubeadm join` does.
//!
//! Pure: no I/O. `node` fetches, this module decides.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use base64::Engine;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;

/// The group every selfnode bootstrap token authenticates into (besides
/// `system:bootstrappers`): what the node-bootstrap RBAC bindings name.
pub const NODE_TOKEN_GROUP: &str = "system:bootstrappers:selfnode:default-node-token";
/// The extra group of a token made with `--control-plane`.
pub const CONTROL_PLANE_TOKEN_GROUP: &str = "system:bootstrappers:selfnode:control-plane";
/// `type` of a bootstrap token Secret.
pub const TOKEN_SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
/// Namespace of bootstrap token Secrets.
pub const TOKEN_NAMESPACE: &str = "kube-system";
/// Prefix of a bootstrap token Secret's name (`bootstrap-token-<id>`).
pub const TOKEN_SECRET_PREFIX: &str = "bootstrap-token-";
/// The ConfigMap (in `kube-public`) a joining host reads anonymously.
pub const CLUSTER_INFO: &str = "cluster-info";
/// Namespace of [`CLUSTER_INFO`].
pub const CLUSTER_INFO_NAMESPACE: &str = "kube-public";
/// Prefix of the bootstrap signer's signature keys in [`CLUSTER_INFO`].
pub const JWS_KEY_PREFIX: &str = "jws-kubeconfig-";
/// Marker of a control-plane join string.
const CONTROL_PLANE_SUFFIX: &str = "control-plane";

/// Why a token, a join string or `cluster-info` is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JoinError {
    /// A token that is not `[a-z0-9]{6}.[a-z0-9]{16}`.
    #[error("{0:?} is not a bootstrap token: it has the form abcdef.0123456789abcdef (6 and 16 characters a-z, 0-9); 'selfnode token create' makes one")]
    Token(String),
    /// A join string that does not parse; `why` says which part.
    #[error("malformed join string ({why}); it has the form TOKEN@HOST:PORT[,HOST:PORT...]/sha256:HEX[/control-plane], as 'selfnode token create' prints it")]
    JoinString {
        /// Which part is wrong.
        why: String,
    },
    /// `cluster-info` has no signature for this token: the token is
    /// unknown to the cluster, expired or deleted (the bootstrap signer
    /// signs for valid tokens only).
    #[error("the cluster has no valid token {token_id} (unknown, expired or deleted): cluster-info carries no signature for it; make a new one on a control-plane host with 'selfnode token create'")]
    UnknownToken {
        /// The token's public ID.
        token_id: String,
    },
    /// The signature does not match: the token secret is wrong, or
    /// someone between this host and the cluster changed `cluster-info`.
    #[error("cluster-info's signature for token {token_id} does not match its contents: the token's secret is wrong, or the answer was tampered with on the way; nothing from it is trusted")]
    BadSignature {
        /// The token's public ID.
        token_id: String,
    },
    /// `cluster-info` does not hold a usable kubeconfig.
    #[error("cluster-info is unusable: {0}")]
    ClusterInfo(String),
    /// `cluster-info` carries other PEM blocks than its one CA certificate
    /// (or none): whatever sits beside the pinned certificate would be
    /// trusted without a pin.
    #[error("cluster-info must carry exactly one CA certificate and carries {found} PEM blocks: a certificate beside the pinned one would be trusted without being pinned (someone between this host and the cluster who also knows the token could add one); nothing was written. If the cluster's CA is really a bundle, join is not supported for it")]
    CaNotOne {
        /// How many PEM blocks it carries.
        found: usize,
    },
    /// The one certificate of `cluster-info` is not a CA.
    #[error("the certificate in cluster-info is not a CA (its basicConstraints lack CA=true): this may not be your cluster, or the answer was tampered with on the way; nothing was written")]
    NotACa,
    /// The CA `cluster-info` names is not the one the join string pins.
    #[error("the cluster's CA ({found}) is not the one the join string pins ({pinned}): this may not be your cluster (a man in the middle?), or the join string is from another cluster; nothing was written")]
    CaPin {
        /// The pin of the CA served.
        found: String,
        /// The pin the join string carries.
        pinned: String,
    },
}

impl JoinError {
    /// The input is wrong (a retry with the same input cannot help).
    pub fn is_invalid_input(&self) -> bool {
        match self {
            JoinError::Token(_)
            | JoinError::JoinString { .. }
            | JoinError::UnknownToken { .. }
            | JoinError::BadSignature { .. }
            | JoinError::CaNotOne { .. }
            | JoinError::NotACa
            | JoinError::CaPin { .. } => true,
            JoinError::ClusterInfo(_) => false,
        }
    }

    /// Never a conflict with existing state.
    pub fn is_conflict(&self) -> bool {
        false
    }
}

/// A bootstrap token: a public ID and a secret (`<id>.<secret>`). Its
/// `Debug` and `Display` never show the secret; [`BootstrapToken::expose`]
/// does.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    id: String,
    secret: String,
}

const TOKEN_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// Whether `part` has `len` characters from `[a-z0-9]`: a token ID (6) or
/// secret (16).
fn token_part(part: &str, len: usize) -> bool {
    part.len() == len && part.bytes().all(|b| TOKEN_CHARS.contains(&b))
}

/// Whether `id` is a bootstrap token's public ID (`[a-z0-9]{6}`).
pub fn valid_token_id(id: &str) -> bool {
    token_part(id, 6)
}

impl BootstrapToken {
    /// A new random token (`rand`'s thread-local CSPRNG).
    pub fn generate() -> Self {
        use rand::Rng;
        let mut rng = rand::rng();
        let mut pick = |n: usize| -> String {
            (0..n)
                .map(|_| TOKEN_CHARS[rng.random_range(0..TOKEN_CHARS.len())] as char)
                .collect()
        };
        BootstrapToken {
            id: pick(6),
            secret: pick(16),
        }
    }

    /// The public ID (6 characters).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `<id>.<secret>`: what authenticates. Only for the join string and
    /// the kubelet's bootstrap kubeconfig.
    pub fn expose(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// The token's Secret: expires at `expiration` (RFC 3339), authenticates
    /// into [`NODE_TOKEN_GROUP`] (and [`CONTROL_PLANE_TOKEN_GROUP`] with
    /// `control_plane`), and lets the bootstrap signer sign `cluster-info`
    /// with it.
    pub fn secret_object(
        &self,
        expiration: &str,
        description: &str,
        control_plane: bool,
    ) -> Secret {
        let mut groups = vec![NODE_TOKEN_GROUP];
        if control_plane {
            groups.push(CONTROL_PLANE_TOKEN_GROUP);
        }
        let data: BTreeMap<String, ByteString> = [
            ("token-id", self.id.clone()),
            ("token-secret", self.secret.clone()),
            ("expiration", expiration.to_string()),
            ("description", description.to_string()),
            ("usage-bootstrap-authentication", "true".into()),
            ("usage-bootstrap-signing", "true".into()),
            ("auth-extra-groups", groups.join(",")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
        .collect();
        Secret {
            metadata: ObjectMeta {
                name: Some(format!("{TOKEN_SECRET_PREFIX}{}", self.id)),
                namespace: Some(TOKEN_NAMESPACE.to_string()),
                ..ObjectMeta::default()
            },
            type_: Some(TOKEN_SECRET_TYPE.to_string()),
            data: Some(data),
            ..Secret::default()
        }
    }
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BootstrapToken({}.<secret>)", self.id)
    }
}

impl FromStr for BootstrapToken {
    type Err = JoinError;

    fn from_str(s: &str) -> Result<Self, JoinError> {
        match s.split_once('.') {
            Some((id, secret)) if token_part(id, 6) && token_part(secret, 16) => {
                Ok(BootstrapToken {
                    id: id.to_string(),
                    secret: secret.to_string(),
                })
            }
            _ => {
                // Never echo a secret back: at most the ID's length of it.
                let shown: String = s
                    .split('.')
                    .next()
                    .unwrap_or_default()
                    .chars()
                    .take(6)
                    .collect();
                Err(JoinError::Token(format!("{shown}…")))
            }
        }
    }
}

/// A token Secret as `selfnode token list` shows it (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenInfo {
    /// The public ID.
    pub id: String,
    /// RFC 3339; `None`: never expires.
    pub expiration: Option<String>,
    /// The token's description.
    pub description: String,
    /// Joins control-plane nodes.
    pub control_plane: bool,
    /// `auth-extra-groups`.
    pub groups: Vec<String>,
}

impl TokenInfo {
    /// Reads a bootstrap token Secret; `None` for any other Secret.
    pub fn from_secret(s: &Secret) -> Option<TokenInfo> {
        if s.type_.as_deref() != Some(TOKEN_SECRET_TYPE) {
            return None;
        }
        let data = s.data.as_ref()?;
        let get = |k: &str| {
            data.get(k)
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        };
        let groups: Vec<String> = get("auth-extra-groups")
            .map(|g| {
                g.split(',')
                    .map(str::trim)
                    .filter(|g| !g.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        Some(TokenInfo {
            id: get("token-id")?,
            expiration: get("expiration"),
            description: get("description").unwrap_or_default(),
            control_plane: groups.iter().any(|g| g == CONTROL_PLANE_TOKEN_GROUP),
            groups,
        })
    }
}

/// Everything a host needs to join, in one string:
/// `TOKEN@HOST:PORT[,HOST:PORT...]/sha256:HEX[/control-plane]`.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinString {
    /// The bootstrap token.
    pub token: BootstrapToken,
    /// API endpoints (`host:port`, IPv6 as `[addr]:port`), at least one.
    pub endpoints: Vec<String>,
    /// `sha256:<hex>` of the cluster CA's public key (`ca_cert_hash`).
    pub ca_hash: String,
    /// Join as a control-plane node.
    pub control_plane: bool,
}

impl fmt::Display for JoinString {
    /// The whole string, secret included: it is what the user copies.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{}/{}",
            self.token.expose(),
            self.endpoints.join(","),
            self.ca_hash
        )?;
        if self.control_plane {
            write!(f, "/{CONTROL_PLANE_SUFFIX}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for JoinString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinString")
            .field("token", &self.token)
            .field("endpoints", &self.endpoints)
            .field("ca_hash", &self.ca_hash)
            .field("control_plane", &self.control_plane)
            .finish()
    }
}

impl FromStr for JoinString {
    type Err = JoinError;

    fn from_str(s: &str) -> Result<Self, JoinError> {
        let bad = |why: &str| JoinError::JoinString { why: why.into() };
        let s = s.trim();
        let (token, rest) = s
            .split_once('@')
            .ok_or_else(|| bad("no '@' after the token"))?;
        let token: BootstrapToken = token.parse()?;
        let mut parts = rest.split('/');
        let endpoints: Vec<String> = parts
            .next()
            .unwrap_or_default()
            .split(',')
            .map(str::to_string)
            .collect();
        for e in &endpoints {
            check_endpoint(e)?;
        }
        let ca_hash = parts
            .next()
            .ok_or_else(|| bad("no /sha256:HEX CA pin after the endpoints"))?
            .to_string();
        let hex = ca_hash
            .strip_prefix("sha256:")
            .ok_or_else(|| bad("the CA pin does not start with sha256:"))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("the CA pin is not 64 hex digits"));
        }
        let control_plane = match parts.next() {
            None => false,
            Some(CONTROL_PLANE_SUFFIX) => true,
            Some(other) => return Err(bad(&format!("unknown suffix {other:?}"))),
        };
        if parts.next().is_some() {
            return Err(bad("text after the last part"));
        }
        Ok(JoinString {
            token,
            endpoints,
            ca_hash: format!("sha256:{}", hex.to_ascii_lowercase()),
            control_plane,
        })
    }
}

/// `host:port` with a port in 1..=65535; IPv6 in brackets.
fn check_endpoint(e: &str) -> Result<(), JoinError> {
    let bad = |why: String| JoinError::JoinString { why };
    let (host, port) = e
        .rsplit_once(':')
        .ok_or_else(|| bad(format!("endpoint {e:?} has no :port")))?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(bad(format!("endpoint {e:?}: {port:?} is not a port"))),
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.is_empty() {
        return Err(bad(format!("endpoint {e:?} has no host")));
    }
    if bare.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(bad(format!(
            "endpoint {e:?}: an IPv6 address goes in brackets"
        )));
    }
    Ok(())
}

/// The `cluster-info` ConfigMap: a kubeconfig naming the cluster's API
/// endpoint and CA, without credentials. The bootstrap signer adds one
/// signature per signing token beside it.
pub fn cluster_info(server: &str, ca_pem: &[u8]) -> ConfigMap {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    certificate-authority-data: {ca}\n    server: {server}\ncontexts: []\nusers: []\npreferences: {{}}\n"
    );
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(CLUSTER_INFO.to_string()),
            namespace: Some(CLUSTER_INFO_NAMESPACE.to_string()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([("kubeconfig".to_string(), kubeconfig)])),
        ..ConfigMap::default()
    }
}

/// What a verified `cluster-info` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    /// The API server URL it names.
    pub server: String,
    /// The cluster CA (PEM), verified against the pin.
    pub ca_pem: Vec<u8>,
}

/// Checks `cluster-info` as a joining host must before trusting it: the
/// bootstrap signer's detached JWS (HS256 with the token's secret) over the
/// kubeconfig, then that its CA data is exactly one certificate and a CA,
/// then that certificate against the join string's pin. What is trusted
/// is exactly what is pinned: a second certificate is refused, not ignored
/// (kubeadm trusts every one of them and pins any).
///
/// Errors: [`JoinError::UnknownToken`] (no signature for this token),
/// [`JoinError::BadSignature`], [`JoinError::ClusterInfo`],
/// [`JoinError::CaNotOne`], [`JoinError::NotACa`], [`JoinError::CaPin`].
pub fn verify_cluster_info(cm: &ConfigMap, join: &JoinString) -> Result<ClusterInfo, JoinError> {
    let data = cm.data.clone().unwrap_or_default();
    let kubeconfig = data
        .get("kubeconfig")
        .ok_or_else(|| JoinError::ClusterInfo("no kubeconfig key".into()))?;
    let id = join.token.id();
    let jws =
        data.get(&format!("{JWS_KEY_PREFIX}{id}"))
            .ok_or_else(|| JoinError::UnknownToken {
                token_id: id.to_string(),
            })?;
    if !detached_jws_valid(jws, kubeconfig.as_bytes(), &join.token.secret) {
        return Err(JoinError::BadSignature {
            token_id: id.to_string(),
        });
    }
    let (server, ca_pem) = parse_kubeconfig(kubeconfig)?;
    the_one_ca(&ca_pem)?;
    let found = crate::pki::ca_cert_hash(&ca_pem)
        .map_err(|e| JoinError::ClusterInfo(format!("its CA certificate: {e}")))?;
    if found != join.ca_hash {
        return Err(JoinError::CaPin {
            found,
            pinned: join.ca_hash.clone(),
        });
    }
    Ok(ClusterInfo { server, ca_pem })
}

/// A kubelet's bootstrap kubeconfig: `server`, the cluster CA, and the
/// token as credential (the kubelet trades it for a client certificate).
pub fn bootstrap_kubeconfig(server: &str, ca_pem: &[u8], token: &BootstrapToken) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let token = token.expose();
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: cluster\n  cluster:\n    certificate-authority-data: {ca}\n    server: {server}\ncontexts:\n- name: tls-bootstrap\n  context:\n    cluster: cluster\n    user: tls-bootstrap\ncurrent-context: tls-bootstrap\nusers:\n- name: tls-bootstrap\n  user:\n    token: {token}\n"
    )
}

/// The trust roots of a client of the cluster: the DER of the one CA
/// certificate in `pem_bytes` (the pinned CA, as [`verify_cluster_info`]
/// accepts it), never more.
///
/// Errors: [`JoinError::ClusterInfo`] when it is not PEM or not a
/// certificate, [`JoinError::CaNotOne`], [`JoinError::NotACa`].
pub fn certs_der(pem_bytes: &[u8]) -> Result<Vec<Vec<u8>>, JoinError> {
    Ok(vec![the_one_ca(pem_bytes)?])
}

/// The DER of the one certificate in `ca_pem`, which must be the only PEM
/// block there and a CA (basicConstraints CA=true).
fn the_one_ca(ca_pem: &[u8]) -> Result<Vec<u8>, JoinError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let mut blocks = pem::parse_many(ca_pem)
        .map_err(|e| JoinError::ClusterInfo(format!("its CA is not PEM: {e}")))?;
    if blocks.len() != 1 {
        return Err(JoinError::CaNotOne {
            found: blocks.len(),
        });
    }
    let block = blocks.remove(0);
    if block.tag() != "CERTIFICATE" {
        return Err(JoinError::ClusterInfo(format!(
            "its CA data is a {} PEM block, not a certificate",
            block.tag()
        )));
    }
    let der = block.into_contents();
    let (_, cert) = X509Certificate::from_der(&der)
        .map_err(|_| JoinError::ClusterInfo("its CA certificate is not X.509".into()))?;
    if !cert.is_ca() {
        return Err(JoinError::NotACa);
    }
    Ok(der)
}

/// The server and CA (PEM) `cluster-info` names, unverified: what the
/// cluster side reads to print join strings.
///
/// Errors: [`JoinError::ClusterInfo`].
pub fn cluster_info_contents(cm: &ConfigMap) -> Result<(String, Vec<u8>), JoinError> {
    let kubeconfig = cm
        .data
        .as_ref()
        .and_then(|d| d.get("kubeconfig"))
        .ok_or_else(|| JoinError::ClusterInfo("no kubeconfig key".into()))?;
    parse_kubeconfig(kubeconfig)
}

/// A detached compact JWS (`header..signature`) with HS256 over `payload`.
fn detached_jws_valid(jws: &str, payload: &[u8], key: &str) -> bool {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = jws.split('.');
    let (Some(header), Some(""), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Ok(header_json) = b64.decode(header) else {
        return false;
    };
    let alg_ok = serde_json::from_slice::<serde_json::Value>(&header_json)
        .is_ok_and(|h| h["alg"] == "HS256");
    let Ok(sig) = b64.decode(sig) else {
        return false;
    };
    let signing_input = format!("{header}.{}", b64.encode(payload));
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes());
    alg_ok && ring::hmac::verify(&k, signing_input.as_bytes(), &sig).is_ok()
}

/// The server and CA of the first cluster in a kubeconfig.
fn parse_kubeconfig(text: &str) -> Result<(String, Vec<u8>), JoinError> {
    #[derive(serde::Deserialize)]
    struct Kc {
        clusters: Vec<Named>,
    }
    #[derive(serde::Deserialize)]
    struct Named {
        cluster: Cluster,
    }
    #[derive(serde::Deserialize)]
    struct Cluster {
        server: String,
        #[serde(rename = "certificate-authority-data")]
        ca: String,
    }
    let kc: Kc = serde_saphyr::from_str(text)
        .map_err(|e| JoinError::ClusterInfo(format!("its kubeconfig does not parse: {e}")))?;
    let c = kc
        .clusters
        .into_iter()
        .next()
        .ok_or_else(|| JoinError::ClusterInfo("its kubeconfig names no cluster".into()))?
        .cluster;
    let ca = base64::engine::general_purpose::STANDARD
        .decode(c.ca.trim())
        .map_err(|e| JoinError::ClusterInfo(format!("its CA is not base64: {e}")))?;
    Ok((c.server, ca))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> BootstrapToken {
        "abcdef.0123456789abcdef".parse().unwrap()
    }

    /// Signs as the bootstrap signer does (HS256, kid = token ID, detached).
    fn sign(payload: &[u8], t: &BootstrapToken) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(format!(r#"{{"alg":"HS256","kid":"{}"}}"#, t.id()));
        let input = format!("{header}.{}", b64.encode(payload));
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, t.secret.as_bytes());
        let sig = ring::hmac::sign(&k, input.as_bytes());
        format!("{header}..{}", b64.encode(sig.as_ref()))
    }

    fn ca() -> (Vec<u8>, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem().into_bytes();
        let hash = crate::pki::ca_cert_hash(&pem).unwrap();
        (pem, hash)
    }

    /// A leaf certificate (no basicConstraints CA=true) and its pin.
    fn leaf() -> (Vec<u8>, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["kubernetes".to_string()]).unwrap();
        let pem = params.self_signed(&key).unwrap().pem().into_bytes();
        let hash = crate::pki::ca_cert_hash(&pem).unwrap();
        (pem, hash)
    }

    /// `cluster-info` for `ca_pem`, signed with [`token`].
    fn signed_cluster_info(ca_pem: &[u8]) -> ConfigMap {
        let mut cm = cluster_info("https://10.0.0.1:6443", ca_pem);
        let kc = cm.data.as_ref().unwrap()["kubeconfig"].clone();
        cm.data.as_mut().unwrap().insert(
            "jws-kubeconfig-abcdef".into(),
            sign(kc.as_bytes(), &token()),
        );
        cm
    }

    fn join(hash: &str) -> JoinString {
        format!("abcdef.0123456789abcdef@10.0.0.1:6443/{hash}")
            .parse()
            .unwrap()
    }

    #[test]
    fn tokens_parse_and_never_show_their_secret() {
        let t = BootstrapToken::generate();
        assert_eq!(t.expose().parse::<BootstrapToken>().unwrap(), t);
        assert!(!format!("{t:?}").contains(&t.secret));
        for bad in [
            "abcdef",
            "abcdefqwertyuiopasdfgh",
            "abcde.qwertyuiopasdfgh",
            "ABCDEF.qwertyuiopasdfgh",
            "abcdef.qwertyuiopasdfg!",
        ] {
            let err = bad.parse::<BootstrapToken>().unwrap_err();
            assert!(!err.to_string().contains("qwerty"), "{err}");
        }
    }

    #[test]
    fn join_strings_round_trip_and_bad_ones_say_which_part() {
        let hash = format!("sha256:{}", "ab".repeat(32));
        let s =
            format!("abcdef.0123456789abcdef@10.0.0.1:6443,[fd00::1]:6443/{hash}/control-plane");
        let j: JoinString = s.parse().unwrap();
        assert_eq!(j.endpoints, ["10.0.0.1:6443", "[fd00::1]:6443"]);
        assert!(j.control_plane);
        assert_eq!(j.to_string(), s);
        for (bad, why) in [
            ("abcdef.0123456789abcdef", "no '@'"),
            ("abcdef.0123456789abcdef@10.0.0.1/x", "no :port"),
            ("abcdef.0123456789abcdef@10.0.0.1:6443", "no /sha256"),
            ("abcdef.0123456789abcdef@10.0.0.1:6443/md5:00", "sha256:"),
            ("abcdef.0123456789abcdef@10.0.0.1:6443/sha256:00", "64 hex"),
            ("abcdef.0123456789abcdef@fd00::1:6443/sha256:00", "brackets"),
        ] {
            let err = bad.parse::<JoinString>().unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn cluster_info_is_trusted_only_with_a_valid_signature_and_the_pinned_ca() {
        let (pem, hash) = ca();
        let mut cm = cluster_info("https://10.0.0.1:6443", &pem);
        let kc = cm.data.as_ref().unwrap()["kubeconfig"].clone();
        // Unsigned: the cluster does not know this token.
        assert!(matches!(
            verify_cluster_info(&cm, &join(&hash)),
            Err(JoinError::UnknownToken { .. })
        ));
        cm.data.as_mut().unwrap().insert(
            "jws-kubeconfig-abcdef".into(),
            sign(kc.as_bytes(), &token()),
        );
        let info = verify_cluster_info(&cm, &join(&hash)).unwrap();
        assert_eq!(info.server, "https://10.0.0.1:6443");
        assert_eq!(info.ca_pem, pem);
        // Another CA pinned: refused.
        let (_, other) = ca();
        assert!(matches!(
            verify_cluster_info(&cm, &join(&other)),
            Err(JoinError::CaPin { .. })
        ));
        // Contents changed after signing: refused.
        let mut tampered = cm.clone();
        tampered
            .data
            .as_mut()
            .unwrap()
            .insert("kubeconfig".into(), kc.replace("10.0.0.1", "10.6.6.6"));
        assert!(matches!(
            verify_cluster_info(&tampered, &join(&hash)),
            Err(JoinError::BadSignature { .. })
        ));
        // The right ID with a wrong secret: refused.
        let wrong: JoinString = format!("abcdef.aaaaaaaaaaaaaaaa@10.0.0.1:6443/{hash}")
            .parse()
            .unwrap();
        assert!(matches!(
            verify_cluster_info(&cm, &wrong),
            Err(JoinError::BadSignature { .. })
        ));
    }

    #[test]
    fn a_cluster_info_with_a_second_certificate_is_refused_even_with_the_first_pinned() {
        let (pem, hash) = ca();
        let (other, other_hash) = ca();
        for bundle in [
            [pem.clone(), other.clone()].concat(),
            [other, pem.clone()].concat(),
        ] {
            let cm = signed_cluster_info(&bundle);
            for pin in [&hash, &other_hash] {
                let err = verify_cluster_info(&cm, &join(pin)).unwrap_err();
                assert_eq!(err, JoinError::CaNotOne { found: 2 });
                assert!(err.is_invalid_input());
                let msg = err.to_string();
                assert!(
                    msg.contains("exactly one CA certificate")
                        && msg.contains("nothing was written"),
                    "{msg}"
                );
            }
            assert_eq!(
                certs_der(&bundle).unwrap_err(),
                JoinError::CaNotOne { found: 2 }
            );
        }
        // Anything else beside the certificate is refused as well.
        let with_key = [
            pem.as_slice(),
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ]
        .concat();
        assert_eq!(
            verify_cluster_info(&signed_cluster_info(&with_key), &join(&hash)).unwrap_err(),
            JoinError::CaNotOne { found: 2 }
        );
        // The one pinned CA is what a client trusts, exactly.
        let der = certs_der(&pem).unwrap();
        assert_eq!(der, [pem::parse(&pem).unwrap().into_contents()]);
    }

    #[test]
    fn a_cluster_info_whose_one_certificate_is_not_a_ca_is_refused() {
        let (pem, hash) = leaf();
        let err = verify_cluster_info(&signed_cluster_info(&pem), &join(&hash)).unwrap_err();
        assert_eq!(err, JoinError::NotACa);
        assert!(err.is_invalid_input());
        assert!(err.to_string().contains("CA=true"), "{err}");
        assert_eq!(certs_der(&pem).unwrap_err(), JoinError::NotACa);
        // No certificate at all.
        let err = certs_der(b"not pem").unwrap_err();
        assert_eq!(err, JoinError::CaNotOne { found: 0 });
    }

    #[test]
    fn the_bootstrap_kubeconfig_names_the_server_the_ca_and_the_token() {
        let kc = bootstrap_kubeconfig("https://127.0.0.1:7445", b"CA", &token());
        let v: serde_json::Value = serde_saphyr::from_str(&kc).unwrap();
        assert_eq!(
            v["clusters"][0]["cluster"]["server"],
            "https://127.0.0.1:7445"
        );
        assert_eq!(
            v["clusters"][0]["cluster"]["certificate-authority-data"],
            "Q0E="
        );
        assert_eq!(v["users"][0]["user"]["token"], "abcdef.0123456789abcdef");
        assert_eq!(v["current-context"], "tls-bootstrap");
    }

    #[test]
    fn a_token_secret_reads_back_as_its_info() {
        let t = token();
        let s = t.secret_object("2026-12-01T00:00:00Z", "for rack 2", true);
        assert_eq!(s.metadata.name.as_deref(), Some("bootstrap-token-abcdef"));
        let info = TokenInfo::from_secret(&s).unwrap();
        assert_eq!(info.id, "abcdef");
        assert!(info.control_plane);
        assert_eq!(info.expiration.as_deref(), Some("2026-12-01T00:00:00Z"));
        assert_eq!(info.groups, [NODE_TOKEN_GROUP, CONTROL_PLANE_TOKEN_GROUP]);
    }
}
