//! Typed kubeconfig files (the subset `selfnode` writes and reads), rendered
//! as YAML with serde-saphyr. Field names are client-go's (`clientcmd/api/v1`).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// A kubeconfig (`apiVersion: v1, kind: Config`). Unknown fields are ignored on read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kubeconfig {
    /// `apiVersion`: `v1`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// `kind`: `Config` ([`Kubeconfig::from_yaml`] refuses anything else).
    pub kind: String,
    /// `clusters`: API servers by name.
    #[serde(default)]
    pub clusters: Vec<NamedCluster>,
    /// `contexts`: (cluster, user) pairs by name.
    #[serde(default)]
    pub contexts: Vec<NamedContext>,
    /// `current-context`: the name of the context in use.
    #[serde(rename = "current-context", default)]
    pub current_context: String,
    /// `users`: client credentials by name.
    #[serde(default)]
    pub users: Vec<NamedUser>,
}

/// An entry of `clusters`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedCluster {
    /// The name contexts refer to it by.
    pub name: String,
    /// The API server.
    pub cluster: Cluster,
}

/// An API server and the CA to trust for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// `https://host[:port]` of the API server.
    pub server: String,
    /// Base64 of the PEM CA bundle.
    #[serde(
        rename = "certificate-authority-data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub certificate_authority_data: Option<String>,
}

/// An entry of `contexts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedContext {
    /// The name `current-context` refers to it by (`<user>@<cluster>` when
    /// selfnode writes it).
    pub name: String,
    /// The cluster and user it pairs.
    pub context: Context,
}

/// A cluster, a user, and optionally a default namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    /// Name of an entry of `clusters`.
    pub cluster: String,
    /// Name of an entry of `users`.
    pub user: String,
    /// Default namespace; `None` means `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// An entry of `users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedUser {
    /// The name contexts refer to it by (the certificate's CN when selfnode
    /// writes it).
    pub name: String,
    /// The credentials.
    pub user: AuthInfo,
}

/// Client credentials: an embedded certificate and key, or a bearer token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthInfo {
    /// Base64 of the PEM client certificate.
    #[serde(
        rename = "client-certificate-data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_certificate_data: Option<String>,
    /// Base64 of the PEM client key.
    #[serde(
        rename = "client-key-data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_key_data: Option<String>,
    /// Bearer token, in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl Kubeconfig {
    /// One cluster, one user with an embedded client certificate, one context
    /// `<user>@<cluster>` selected (kubeadm's `CreateWithCerts`).
    pub fn with_client_cert(
        cluster_name: &str,
        server: &str,
        ca_pem: &[u8],
        user: &str,
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Self {
        Self::new(
            cluster_name,
            server,
            ca_pem,
            user,
            AuthInfo {
                client_certificate_data: Some(B64.encode(cert_pem)),
                client_key_data: Some(B64.encode(key_pem)),
                token: None,
            },
        )
    }

    fn new(cluster_name: &str, server: &str, ca_pem: &[u8], user: &str, auth: AuthInfo) -> Self {
        let context = format!("{user}@{cluster_name}");
        Kubeconfig {
            api_version: "v1".to_string(),
            kind: "Config".to_string(),
            clusters: vec![NamedCluster {
                name: cluster_name.to_string(),
                cluster: Cluster {
                    server: server.to_string(),
                    certificate_authority_data: Some(B64.encode(ca_pem)),
                },
            }],
            contexts: vec![NamedContext {
                name: context.clone(),
                context: Context {
                    cluster: cluster_name.to_string(),
                    user: user.to_string(),
                    namespace: None,
                },
            }],
            current_context: context,
            users: vec![NamedUser {
                name: user.to_string(),
                user: auth,
            }],
        }
    }

    /// Renders the YAML document the way kubectl writes one: plain scalars,
    /// each base64 blob on one line.
    ///
    /// Errors with [`KubeconfigError::Render`].
    pub fn to_yaml(&self) -> Result<String, KubeconfigError> {
        let mut options = serde_saphyr::SerializerOptions::default();
        options.prefer_block_scalars = false;
        serde_saphyr::to_string_with_options(self, options)
            .map_err(|source| KubeconfigError::Render { source })
    }

    /// Parses a kubeconfig. The parser's message is deliberately dropped:
    /// it may quote the input, and kubeconfigs carry private keys.
    ///
    /// Errors with [`KubeconfigError::Parse`].
    pub fn from_yaml(bytes: &[u8]) -> Result<Self, KubeconfigError> {
        let text = std::str::from_utf8(bytes).map_err(|_| KubeconfigError::Parse)?;
        let kc: Kubeconfig = serde_saphyr::from_str(text).map_err(|_| KubeconfigError::Parse)?;
        if kc.kind != "Config" {
            return Err(KubeconfigError::Parse);
        }
        Ok(kc)
    }

    /// The cluster and user the current context selects.
    pub fn current(&self) -> Option<(&NamedCluster, &NamedUser)> {
        let ctx = self
            .contexts
            .iter()
            .find(|c| c.name == self.current_context)?;
        let cluster = self
            .clusters
            .iter()
            .find(|c| c.name == ctx.context.cluster)?;
        let user = self.users.iter().find(|u| u.name == ctx.context.user)?;
        Some((cluster, user))
    }
}

/// Decodes one of the `*-data` fields (base64 of PEM); `None` when the field
/// is absent or not valid base64.
pub fn decode_data(field: Option<&str>) -> Option<Vec<u8>> {
    B64.decode(field?.trim()).ok()
}

/// A kubeconfig that cannot be rendered or read.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    /// [`Kubeconfig::to_yaml`] failed.
    #[error("failed to render kubeconfig as yaml")]
    Render {
        /// The YAML serializer's error.
        #[source]
        source: serde_saphyr::SerializeError,
    },
    /// [`Kubeconfig::from_yaml`] got bytes that are not UTF-8 YAML of a
    /// kubeconfig, or whose `kind` is not `Config`.
    #[error("not a valid kubeconfig (yaml does not parse, or kind is not Config)")]
    Parse,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_client_go_field_names_and_round_trips() {
        let kc = Kubeconfig::with_client_cert(
            "kubernetes",
            "https://127.0.0.1:6443",
            b"CA",
            "system:node:n1",
            b"CERT",
            b"KEY",
        );
        let yaml = kc.to_yaml().unwrap();
        for want in [
            "apiVersion: v1",
            "kind: Config",
            "server: https://127.0.0.1:6443",
            "certificate-authority-data: Q0E=",
            "client-certificate-data: Q0VSVA==",
            "client-key-data: S0VZ",
            "current-context: system:node:n1@kubernetes",
        ] {
            assert!(yaml.contains(want), "missing {want:?} in:\n{yaml}");
        }
        assert_eq!(Kubeconfig::from_yaml(yaml.as_bytes()).unwrap(), kc);

        // Long base64 blobs stay plain one-line scalars, as kubectl writes them.
        let long = vec![b'x'; 3000];
        let big =
            Kubeconfig::with_client_cert("k", "https://127.0.0.1:6443", &long, "u", &long, &long);
        let big_yaml = big.to_yaml().unwrap();
        let line = big_yaml
            .lines()
            .find(|l| l.trim_start().starts_with("client-key-data:"))
            .unwrap();
        assert_eq!(
            line.trim_start(),
            format!("client-key-data: {}", B64.encode(&long))
        );
        assert_eq!(Kubeconfig::from_yaml(big_yaml.as_bytes()).unwrap(), big);
        let (cluster, user) = kc.current().unwrap();
        assert_eq!(cluster.name, "kubernetes");
        assert_eq!(
            decode_data(user.user.client_key_data.as_deref()),
            Some(b"KEY".to_vec())
        );
    }

    #[test]
    fn reads_a_kubectl_style_file_and_rejects_junk() {
        let text = "apiVersion: v1\nkind: Config\npreferences: {}\nclusters:\n- cluster:\n    server: https://10.0.0.1:6443\n  name: c\ncontexts:\n- context:\n    cluster: c\n    user: u\n  name: u@c\ncurrent-context: u@c\nusers:\n- name: u\n  user:\n    token: abc\n";
        let kc = Kubeconfig::from_yaml(text.as_bytes()).unwrap();
        let (c, u) = kc.current().unwrap();
        assert_eq!(c.cluster.server, "https://10.0.0.1:6443");
        assert_eq!(u.user.token.as_deref(), Some("abc"));
        assert!(matches!(
            Kubeconfig::from_yaml(b"\xff\xfe"),
            Err(KubeconfigError::Parse)
        ));
        assert!(matches!(
            Kubeconfig::from_yaml(b"kind: Pod\napiVersion: v1\n"),
            Err(KubeconfigError::Parse)
        ));
    }
}
