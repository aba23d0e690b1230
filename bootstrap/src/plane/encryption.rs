//! Secrets encryption at rest: the kube-apiserver's EncryptionConfiguration
//! (`apiserver.config.k8s.io/v1`), with a random 32-byte `secretbox` key.
//!
//! secretbox (XSalsa20-Poly1305) is the upstream recommendation among the
//! providers that keep the key in the file (aescbc is weak to padding
//! oracles, aesgcm needs rotation every 200k writes). An `identity` provider
//! follows it, so Secrets written before encryption was on stay readable.
//!
//! The file is treated like a CA: created when absent, kept when usable,
//! never replaced by selfnode (its key decrypts every Secret in etcd).

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::host::{Host, HostError};
use crate::pki::{DIR_MODE, FILE_MODE};

/// File name of the EncryptionConfiguration, under the PKI directory.
pub const ENCRYPTION_CONFIG_FILE: &str = "encryption-config.yaml";
/// Name of the key selfnode generates.
pub const ENCRYPTION_KEY_NAME: &str = "key1";

const API_VERSION: &str = "apiserver.config.k8s.io/v1";
const KIND: &str = "EncryptionConfiguration";

/// What [`ensure_encryption_config`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptionReport {
    /// The EncryptionConfiguration file (`<dir>/encryption-config.yaml`).
    pub path: PathBuf,
    /// True when a new key was generated (no file existed).
    pub created: bool,
    /// The provider that encrypts new writes of Secrets (`secretbox`, ...).
    pub provider: String,
}

/// The encryption configuration cannot be used as it is.
#[derive(Debug, thiserror::Error)]
pub enum EncryptionConfigError {
    /// Reading or writing the file failed.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The file exists but does not parse or does not encrypt Secrets.
    #[error("encryption configuration {} cannot be used: {reason}; selfnode never replaces it by itself because its key decrypts every Secret stored in etcd: restore it from a backup, or, if this cluster never stored a Secret with it, move it away and run again", path.display())]
    Unusable {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The new configuration could not be rendered as YAML.
    #[error("failed to render the encryption configuration")]
    Render {
        /// The YAML serializer's error.
        #[source]
        source: serde_saphyr::SerializeError,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct EncryptionConfiguration {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    #[serde(default)]
    resources: Vec<ResourceConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ResourceConfig {
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    providers: Vec<Provider>,
}

/// One provider: exactly one field is set. Unknown providers and fields are
/// ignored when reading (the apiserver validates the file; we only need to
/// know that new Secrets get encrypted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Provider {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secretbox: Option<KeyProvider>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aescbc: Option<KeyProvider>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aesgcm: Option<KeyProvider>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kms: Option<Kms>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    identity: Option<Empty>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct KeyProvider {
    #[serde(default)]
    keys: Vec<Key>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Key {
    name: String,
    secret: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Kms {
    #[serde(default)]
    name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Empty {}

/// Makes sure `<dir>/encryption-config.yaml` exists (mode 0600, `dir` 0700)
/// and encrypts Secrets: creates it with a fresh key from `rng` when absent,
/// keeps it when usable (a user may have rotated keys or switched to KMS),
/// refuses when unusable. Idempotent.
///
/// Returns what was done; errors with [`EncryptionConfigError::Unusable`] for
/// a file that is there but cannot be used.
pub fn ensure_encryption_config<R: rand::CryptoRng + ?Sized>(
    host: &dyn Host,
    dir: &Path,
    rng: &mut R,
) -> Result<EncryptionReport, EncryptionConfigError> {
    let path = dir.join(ENCRYPTION_CONFIG_FILE);
    if let Some(bytes) = host.read_file(&path)? {
        let provider = check(&path, &bytes)?;
        host.ensure_dir(dir, DIR_MODE)?;
        // Same bytes: only a wrong mode is corrected.
        host.write_file(&path, &bytes, FILE_MODE)?;
        tracing::debug!(path = %path.display(), "encryption configuration reused");
        return Ok(EncryptionReport {
            path,
            created: false,
            provider,
        });
    }
    let mut key = [0u8; 32];
    rng.fill_bytes(&mut key);
    let yaml = render(&key)?;
    host.ensure_dir(dir, DIR_MODE)?;
    host.write_file(&path, yaml.as_bytes(), FILE_MODE)?;
    tracing::info!(path = %path.display(), "encryption configuration written with a new key");
    Ok(EncryptionReport {
        path,
        created: true,
        provider: "secretbox".to_string(),
    })
}

fn render(key: &[u8; 32]) -> Result<String, EncryptionConfigError> {
    let config = EncryptionConfiguration {
        api_version: API_VERSION.to_string(),
        kind: KIND.to_string(),
        resources: vec![ResourceConfig {
            resources: vec!["secrets".to_string()],
            providers: vec![
                Provider {
                    secretbox: Some(KeyProvider {
                        keys: vec![Key {
                            name: ENCRYPTION_KEY_NAME.to_string(),
                            secret: B64.encode(key),
                        }],
                    }),
                    ..Provider::default()
                },
                Provider {
                    identity: Some(Empty {}),
                    ..Provider::default()
                },
            ],
        }],
    };
    let mut options = serde_saphyr::SerializerOptions::default();
    options.prefer_block_scalars = false;
    serde_saphyr::to_string_with_options(&config, options)
        .map_err(|source| EncryptionConfigError::Render { source })
}

/// The provider that encrypts Secrets in the file at `path` (`bytes`), or
/// [`EncryptionConfigError::Unusable`] saying why it does not do that.
/// Messages never quote the file: it holds keys.
fn check(path: &Path, bytes: &[u8]) -> Result<String, EncryptionConfigError> {
    let unusable = |reason: String| EncryptionConfigError::Unusable {
        path: path.to_path_buf(),
        reason,
    };
    let text =
        std::str::from_utf8(bytes).map_err(|_| unusable("it is not UTF-8 text".to_string()))?;
    let config: EncryptionConfiguration =
        serde_saphyr::from_str(text).map_err(|_| unusable(format!("it is not a YAML {KIND}")))?;
    if config.kind != KIND || config.api_version != API_VERSION {
        return Err(unusable(format!("it is not a {API_VERSION} {KIND}")));
    }
    // The apiserver uses the first entry that matches a resource.
    let entry = config
        .resources
        .iter()
        .find(|r| {
            r.resources
                .iter()
                .any(|res| matches!(res.as_str(), "secrets" | "*." | "*.*"))
        })
        .ok_or_else(|| {
            unusable(
                "it has no entry for secrets, so Secrets would be stored unencrypted".to_string(),
            )
        })?;
    let first = entry
        .providers
        .first()
        .ok_or_else(|| unusable("its entry for secrets has no providers".to_string()))?;
    let keyed =
        |name: &str, p: &KeyProvider, sizes: &[usize]| -> Result<String, EncryptionConfigError> {
            let key = p
                .keys
                .first()
                .ok_or_else(|| unusable(format!("its {name} provider has no keys")))?;
            let len = B64
                .decode(key.secret.trim())
                .map_err(|_| {
                    unusable(format!(
                        "key {:?} of its {name} provider is not base64",
                        key.name
                    ))
                })?
                .len();
            if sizes.contains(&len) {
                Ok(name.to_string())
            } else {
                Err(unusable(format!(
                    "key {:?} of its {name} provider is {len} bytes long, not {sizes:?}",
                    key.name
                )))
            }
        };
    match first {
        Provider {
            secretbox: Some(p), ..
        } => keyed("secretbox", p, &[32]),
        Provider { aesgcm: Some(p), .. } => keyed("aesgcm", p, &[16, 24, 32]),
        Provider { aescbc: Some(p), .. } => keyed("aescbc", p, &[16, 24, 32]),
        Provider { kms: Some(_), .. } => Ok("kms".to_string()),
        Provider {
            identity: Some(_), ..
        } => Err(unusable("its first provider for secrets is identity, so new Secrets would be stored unencrypted".to_string())),
        _ => Err(unusable("its first provider for secrets is not one selfnode knows (secretbox, aesgcm, aescbc, kms)".to_string())),
    }
}

#[cfg(test)]
pub(crate) fn render_for_test(key: &[u8; 32]) -> String {
    render(key).expect("rendering a fixed configuration cannot fail")
}
