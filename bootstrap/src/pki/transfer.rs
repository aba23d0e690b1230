//! Handing a new control-plane host the cluster's keys, once, sealed to
//! that host.
//!
//! The keys never pass through the API in the clear. A host's agent makes a
//! key pair of its own ([`NodeKey`], X25519, its private half 0600 on the
//! host's disk) and publishes the public half on its Node. A control-plane
//! host that has decided the new host may join the control plane (its
//! control-plane join was approved, or `selfnode promote` named it) seals
//! the key files to that public key ([`seal`]: RFC 9180 HPKE base mode,
//! X25519 + HKDF-SHA256 + ChaCha20-Poly1305), and only the host that holds
//! the private half can open it ([`open`]). The sealed bundle is bound to
//! the cluster (its CA pin) and to the node's name, and carries its own
//! expiry: a bundle copied to another cluster, another node or opened late
//! is refused.

use std::path::{Path, PathBuf};

use base64::Engine;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};

type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type Aead = hpke::aead::ChaCha20Poly1305;

/// The format of [`SealedBundle`] (in its HPKE `info`, so another format
/// cannot be opened as this one).
const FORMAT: &[u8] = b"selfnode key bundle v1";

/// A host's key pair for receiving the cluster's keys.
pub struct NodeKey {
    private: <Kem as hpke::Kem>::PrivateKey,
    public: <Kem as hpke::Kem>::PublicKey,
}

/// What a key transfer can fail with.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The key file does not hold an X25519 private key.
    #[error("the node key is not an X25519 private key ({len} bytes)")]
    BadPrivateKey {
        /// Its length.
        len: usize,
    },
    /// A Node's published key is not one.
    #[error("{0:?} is not a node's public key (base64 of 32 bytes)")]
    BadPublicKey(String),
    /// The sealed bundle is not one.
    #[error("the sealed key bundle is malformed: {0}")]
    Malformed(&'static str),
    /// Sealing failed.
    #[error("the key bundle cannot be sealed")]
    Seal,
    /// The bundle is not for this key, cluster or node, or was changed.
    #[error("the key bundle cannot be opened with this host's key: it was sealed to another host, for another cluster or node, or changed on the way")]
    Open,
    /// The bundle names another node.
    #[error("the key bundle is for {wanted}, not for this host ({node})")]
    OtherNode {
        /// The node it is for.
        wanted: String,
        /// This host's node.
        node: String,
    },
    /// The bundle is past its expiry.
    #[error("the key bundle expired at unix time {expires} (now {now}); ask a control-plane host for a new one ('selfnode promote')")]
    Expired {
        /// Its expiry.
        expires: u64,
        /// Now.
        now: u64,
    },
    /// A path in the bundle leaves the PKI directory.
    #[error("the key bundle names a file outside the PKI directory: {0}")]
    BadPath(String),
}

impl NodeKey {
    /// A new key pair.
    pub fn generate() -> NodeKey {
        let (private, public) = Kem::gen_keypair();
        NodeKey { private, public }
    }

    /// The key pair from its private half (as [`NodeKey::private_bytes`]
    /// wrote it).
    pub fn from_private_bytes(bytes: &[u8]) -> Result<NodeKey, TransferError> {
        let private = <Kem as hpke::Kem>::PrivateKey::from_bytes(bytes)
            .map_err(|_| TransferError::BadPrivateKey { len: bytes.len() })?;
        let public = <Kem as hpke::Kem>::sk_to_pk(&private);
        Ok(NodeKey { private, public })
    }

    /// The private half, to keep on the host's disk (0600).
    pub fn private_bytes(&self) -> Vec<u8> {
        self.private.to_bytes().to_vec()
    }

    /// The public half as published on the Node (base64).
    pub fn public_b64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.public.to_bytes())
    }
}

/// The key files for one node: paths relative to the PKI directory, and
/// their contents.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyBundle {
    /// The node it is for.
    pub node: String,
    /// Unix seconds after which it is refused.
    pub expires: u64,
    /// `(path under the PKI directory, contents)`.
    pub files: Vec<(PathBuf, Vec<u8>)>,
}

impl std::fmt::Debug for KeyBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyBundle")
            .field("node", &self.node)
            .field("expires", &self.expires)
            .field(
                "files",
                &self.files.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A [`KeyBundle`] sealed to one node's public key: safe to store in the
/// API (the kube-system Secret its node alone may read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedBundle {
    /// The HPKE encapsulated key, base64.
    pub enc: String,
    /// The ciphertext, base64.
    pub ciphertext: String,
}

/// The additional data both sides bind a bundle to: the cluster (its CA
/// pin, `sha256:<hex>`) and the node.
fn aad(ca_cert_hash: &str, node: &str) -> Vec<u8> {
    [ca_cert_hash.as_bytes(), b"\0", node.as_bytes()].concat()
}

/// Seals `bundle` to the node whose public key is `node_public_b64`, for the
/// cluster whose CA pin is `ca_cert_hash`.
pub fn seal(
    bundle: &KeyBundle,
    node_public_b64: &str,
    ca_cert_hash: &str,
) -> Result<SealedBundle, TransferError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let bad = || TransferError::BadPublicKey(node_public_b64.to_string());
    let raw = b64.decode(node_public_b64.trim()).map_err(|_| bad())?;
    let public = <Kem as hpke::Kem>::PublicKey::from_bytes(&raw).map_err(|_| bad())?;
    let plain = serde_json::to_vec(bundle).map_err(|_| TransferError::Seal)?;
    let (enc, ciphertext) = hpke::single_shot_seal::<Aead, Kdf, Kem>(
        &OpModeS::Base,
        &public,
        FORMAT,
        &plain,
        &aad(ca_cert_hash, &bundle.node),
    )
    .map_err(|_| TransferError::Seal)?;
    Ok(SealedBundle {
        enc: b64.encode(enc.to_bytes()),
        ciphertext: b64.encode(ciphertext),
    })
}

/// Opens a bundle sealed to `key` for `node` of the cluster `ca_cert_hash`,
/// refusing one that is for another node or past its expiry (`now`, unix
/// seconds), or whose paths leave the PKI directory.
pub fn open(
    sealed: &SealedBundle,
    key: &NodeKey,
    node: &str,
    ca_cert_hash: &str,
    now: u64,
) -> Result<KeyBundle, TransferError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let enc = b64
        .decode(&sealed.enc)
        .map_err(|_| TransferError::Malformed("enc is not base64"))?;
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&enc)
        .map_err(|_| TransferError::Malformed("enc is not an X25519 encapsulated key"))?;
    let ciphertext = b64
        .decode(&sealed.ciphertext)
        .map_err(|_| TransferError::Malformed("ciphertext is not base64"))?;
    let plain = hpke::single_shot_open::<Aead, Kdf, Kem>(
        &OpModeR::Base,
        &key.private,
        &enc,
        FORMAT,
        &ciphertext,
        &aad(ca_cert_hash, node),
    )
    .map_err(|_| TransferError::Open)?;
    let bundle: KeyBundle =
        serde_json::from_slice(&plain).map_err(|_| TransferError::Malformed("not a key bundle"))?;
    if bundle.node != node {
        return Err(TransferError::OtherNode {
            wanted: bundle.node,
            node: node.to_string(),
        });
    }
    if now > bundle.expires {
        return Err(TransferError::Expired {
            expires: bundle.expires,
            now,
        });
    }
    for (p, _) in &bundle.files {
        if p.is_absolute()
            || p.components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(TransferError::BadPath(p.display().to_string()));
        }
    }
    Ok(bundle)
}

impl KeyBundle {
    /// Where each file goes under `pki_dir`.
    pub fn targets<'a>(&'a self, pki_dir: &'a Path) -> impl Iterator<Item = (PathBuf, &'a [u8])> {
        self.files
            .iter()
            .map(move |(rel, bytes)| (pki_dir.join(rel), bytes.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "sha256:00ff";

    fn bundle(node: &str, expires: u64) -> KeyBundle {
        KeyBundle {
            node: node.into(),
            expires,
            files: vec![
                ("ca.key".into(), b"-----BEGIN PRIVATE KEY-----".to_vec()),
                ("etcd/ca.key".into(), b"etcd".to_vec()),
            ],
        }
    }

    #[test]
    fn only_the_node_that_made_the_key_opens_its_bundle_before_it_expires() {
        let cp2 = NodeKey::generate();
        let kept = NodeKey::from_private_bytes(&cp2.private_bytes()).unwrap();
        assert_eq!(kept.public_b64(), cp2.public_b64(), "the key survives disk");
        let sealed = seal(&bundle("cp2", 100), &cp2.public_b64(), PIN).unwrap();
        let text = serde_json::to_string(&sealed).unwrap();
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        let opened = open(&sealed, &kept, "cp2", PIN, 99).unwrap();
        assert_eq!(opened, bundle("cp2", 100));
        assert_eq!(
            opened
                .targets(Path::new("/p"))
                .map(|(p, _)| p)
                .collect::<Vec<_>>(),
            [PathBuf::from("/p/ca.key"), PathBuf::from("/p/etcd/ca.key")]
        );

        let other = NodeKey::generate();
        assert!(matches!(
            open(&sealed, &other, "cp2", PIN, 99),
            Err(TransferError::Open)
        ));
        assert!(
            matches!(
                open(&sealed, &kept, "cp3", PIN, 99),
                Err(TransferError::Open)
            ),
            "bound to the node's name"
        );
        assert!(
            matches!(
                open(&sealed, &kept, "cp2", "sha256:11", 99),
                Err(TransferError::Open)
            ),
            "bound to the cluster"
        );
        assert!(matches!(
            open(&sealed, &kept, "cp2", PIN, 101),
            Err(TransferError::Expired { .. })
        ));
        let mut changed = sealed.clone();
        changed.ciphertext = base64::engine::general_purpose::STANDARD.encode(b"tampered");
        assert!(open(&changed, &kept, "cp2", PIN, 99).is_err());
    }

    #[test]
    fn a_path_that_leaves_the_pki_directory_is_refused() {
        let key = NodeKey::generate();
        let mut b = bundle("cp2", 100);
        b.files.push(("../../etc/shadow".into(), b"x".to_vec()));
        let sealed = seal(&b, &key.public_b64(), PIN).unwrap();
        assert!(matches!(
            open(&sealed, &key, "cp2", PIN, 1),
            Err(TransferError::BadPath(_))
        ));
        assert!(seal(&b, "not base64!", PIN).is_err());
    }
}
