//! Exit codes: what a failed command tells an init system or a script
//! about retrying.
//!
//! | code | [`Class`] | meaning |
//! |---|---|---|
//! | 2 | [`Class::Invalid`] | the input or configuration is wrong; a retry cannot help |
//! | 3 | [`Class::Conflict`] | existing state is in the way (another agent, a cluster, a data directory) |
//! | 1 | [`Class::Failure`] | anything else; a retry may help |
//!
//! [`exit_code`] walks the error chain and asks [`CLASSIFIERS`], one line
//! per error type, about each cause. The libraries decide the class of each
//! of their variants in exhaustive matches (`is_invalid_input`,
//! `is_conflict`), so a new variant does not compile until someone has
//! decided its class; a new error *type* needs its line in [`CLASSIFIERS`].

use std::error::Error as StdError;

/// What kind of failure an error is, as far as retrying goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The input or configuration is wrong; a retry cannot help.
    Invalid,
    /// Conflicts with existing state; a retry cannot help until that
    /// state is dealt with.
    Conflict,
    /// Anything else; a retry may help.
    Failure,
}

impl Class {
    /// The process exit code: 2 for [`Class::Invalid`], 3 for
    /// [`Class::Conflict`], 1 for [`Class::Failure`].
    pub fn code(self) -> u8 {
        match self {
            Class::Invalid => 2,
            Class::Conflict => 3,
            Class::Failure => 1,
        }
    }

    /// Conflict wins over invalid input, which wins over failure.
    fn from_flags(conflict: bool, invalid: bool) -> Class {
        if conflict {
            Class::Conflict
        } else if invalid {
            Class::Invalid
        } else {
            Class::Failure
        }
    }
}

/// An error that knows its [`Class`].
pub trait Classify {
    /// The class of this error value (of this variant, for an enum).
    fn class(&self) -> Class;
}

/// `Classify` for library errors with `is_invalid_input` only.
macro_rules! classify_by_is_invalid_input {
    ($($ty:ty),+ $(,)?) => {$(
        impl Classify for $ty {
            fn class(&self) -> Class {
                Class::from_flags(false, self.is_invalid_input())
            }
        }
    )+};
}

/// `Classify` for library errors with `is_invalid_input` and `is_conflict`.
macro_rules! classify_by_is_conflict_and_is_invalid_input {
    ($($ty:ty),+ $(,)?) => {$(
        impl Classify for $ty {
            fn class(&self) -> Class {
                Class::from_flags(self.is_conflict(), self.is_invalid_input())
            }
        }
    )+};
}

classify_by_is_invalid_input!(
    etcd_mgr::EtcdError,
    etcd_mgr::snapshot::SnapshotError,
    dist::archive::ArchiveError,
    dist::bundle::BundleError,
    dist::containerd::ContainerdError,
    dist::elf::ElfError,
    dist::hostfiles::HostFilesError,
    dist::images::BuildError,
    dist::import::ImportError,
    dist::layer::LayerError,
    dist::netfilter::NetfilterError,
    dist::oci::OciError,
    dist::appliance::ApplianceError,
    cni::AgentError,
    cni::CniError,
    cni::kernel::KernelError,
    cni::routes::RouteError,
    cni::cleanup::CleanupError,
);

classify_by_is_conflict_and_is_invalid_input!(
    etcd_mgr::restore::RestoreError,
    bootstrap::join::JoinError,
);

classify_by_is_invalid_input!(
    bootstrap::config::ConfigError,
    bootstrap::plane::PlaneSpecError,
    bootstrap::pki::PkiSpecError,
);

impl Classify for crate::appliance::config::ConfigError {
    /// Every configuration error is the user's input.
    fn class(&self) -> Class {
        Class::Invalid
    }
}

impl Classify for crate::control::lock::LockError {
    /// Another agent holds the lock: a conflict with what runs.
    fn class(&self) -> Class {
        use crate::control::lock::LockError;
        match self {
            LockError::Held { .. } => Class::Conflict,
            LockError::Open { .. } | LockError::Lock { .. } => Class::Failure,
        }
    }
}

impl Classify for crate::checkpoint::CheckpointError {
    /// Held by another command: a conflict with what runs; the rest fail.
    fn class(&self) -> Class {
        use crate::checkpoint::CheckpointError;
        match self {
            CheckpointError::Locked { .. } => Class::Conflict,
            CheckpointError::Damaged { .. }
            | CheckpointError::Open { .. }
            | CheckpointError::Index { .. }
            | CheckpointError::Io { .. }
            | CheckpointError::Version { .. }
            | CheckpointError::Corrupt { .. } => Class::Failure,
        }
    }
}

impl Classify for crate::sequences::init::InitConflict {
    fn class(&self) -> Class {
        Class::Conflict
    }
}

impl Classify for crate::sequences::init::RestoreConflict {
    fn class(&self) -> Class {
        Class::Conflict
    }
}

impl Classify for crate::sequences::recover::force_new::ForceNewRefused {
    fn class(&self) -> Class {
        Class::Conflict
    }
}

impl Classify for crate::sequences::others::OthersServe {
    fn class(&self) -> Class {
        Class::Conflict
    }
}

impl Classify for crate::sequences::recover::RecoverRefused {
    fn class(&self) -> Class {
        Class::Conflict
    }
}

impl Classify for crate::cluster::NotControlPlaneHost {
    fn class(&self) -> Class {
        Class::Conflict
    }
}

impl Classify for crate::sequences::join::NodeNameTaken {
    fn class(&self) -> Class {
        Class::Conflict
    }
}

impl Classify for crate::sequences::join::JoinConflict {
    fn class(&self) -> Class {
        Class::Conflict
    }
}

impl Classify for crate::sequences::join::NotAControlPlaneToken {
    fn class(&self) -> Class {
        Class::Invalid
    }
}

impl Classify for crate::sequences::upgrade::UpgradeRefused {
    fn class(&self) -> Class {
        match self.refusal {
            crate::sequences::upgrade::Refusal::Input => Class::Invalid,
            crate::sequences::upgrade::Refusal::State => Class::Conflict,
        }
    }
}

impl Classify for crate::tokens::TtlError {
    fn class(&self) -> Class {
        Class::Invalid
    }
}

impl Classify for crate::sequences::init::RestoreInputError {
    fn class(&self) -> Class {
        Class::Invalid
    }
}

/// Asks one cause of an error chain for its class: `None` if the cause is
/// not of the type this entry knows.
pub type Classifier = fn(&(dyn StdError + 'static)) -> Option<Class>;

/// The [`Classifier`] for error type `E`.
fn by<E: Classify + StdError + 'static>(cause: &(dyn StdError + 'static)) -> Option<Class> {
    cause.downcast_ref::<E>().map(Classify::class)
}

/// Every error type [`exit_code`] recognises, one line each. To add a
/// type: implement [`Classify`] for it (for a library error with
/// `is_invalid_input`, add it to the macro calls above), then add
/// `by::<Type>,` here. A type missing from this table counts as a
/// [`Class::Failure`] wherever it appears in a chain.
pub const CLASSIFIERS: &[Classifier] = &[
    by::<etcd_mgr::EtcdError>,
    by::<etcd_mgr::snapshot::SnapshotError>,
    by::<etcd_mgr::restore::RestoreError>,
    by::<dist::archive::ArchiveError>,
    by::<dist::bundle::BundleError>,
    by::<dist::containerd::ContainerdError>,
    by::<dist::elf::ElfError>,
    by::<dist::hostfiles::HostFilesError>,
    by::<dist::images::BuildError>,
    by::<dist::import::ImportError>,
    by::<dist::layer::LayerError>,
    by::<dist::netfilter::NetfilterError>,
    by::<dist::oci::OciError>,
    by::<dist::appliance::ApplianceError>,
    by::<crate::appliance::config::ConfigError>,
    by::<cni::AgentError>,
    by::<cni::CniError>,
    by::<cni::kernel::KernelError>,
    by::<cni::routes::RouteError>,
    by::<cni::cleanup::CleanupError>,
    by::<bootstrap::config::ConfigError>,
    by::<bootstrap::plane::PlaneSpecError>,
    by::<bootstrap::pki::PkiSpecError>,
    by::<crate::control::lock::LockError>,
    by::<crate::checkpoint::CheckpointError>,
    by::<crate::sequences::init::InitConflict>,
    by::<crate::sequences::init::RestoreConflict>,
    by::<crate::sequences::others::OthersServe>,
    by::<crate::sequences::recover::force_new::ForceNewRefused>,
    by::<crate::sequences::init::RestoreInputError>,
    by::<crate::sequences::recover::RecoverRefused>,
    by::<crate::sequences::upgrade::UpgradeRefused>,
    by::<crate::cluster::NotControlPlaneHost>,
    by::<bootstrap::join::JoinError>,
    by::<crate::tokens::TtlError>,
    by::<crate::sequences::join::JoinConflict>,
    by::<crate::sequences::join::NotAControlPlaneToken>,
    by::<crate::sequences::join::NodeNameTaken>,
];

/// The class of one cause, if [`CLASSIFIERS`] knows its type.
pub fn classify(cause: &(dyn StdError + 'static)) -> Option<Class> {
    CLASSIFIERS.iter().find_map(|by_type| by_type(cause))
}

/// The exit code for `err`: the code of the first cause in `err.chain()`
/// (outermost first) that classifies as [`Class::Invalid`] (2) or
/// [`Class::Conflict`] (3); 1 if there is none.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    err.chain()
        .find_map(|cause| match classify(cause) {
            Some(class @ (Class::Invalid | Class::Conflict)) => Some(class.code()),
            Some(Class::Failure) | None => None,
        })
        .unwrap_or(Class::Failure.code())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use anyhow::Context;

    use super::*;

    fn last_voting_member() -> etcd_mgr::EtcdError {
        etcd_mgr::EtcdError::LastVotingMember {
            id: "8e9e05c52164694d".into(),
            name: "cp-1".into(),
        }
    }

    #[test]
    fn codes() {
        assert_eq!(Class::Invalid.code(), 2);
        assert_eq!(Class::Conflict.code(), 3);
        assert_eq!(Class::Failure.code(), 1);
    }

    #[test]
    fn invalid_input_under_context_exits_2() {
        let err = anyhow::Error::new(last_voting_member())
            .context("cannot remove etcd member cp-1")
            .context("etcd remove");
        assert_eq!(exit_code(&err), 2);

        let err: anyhow::Result<()> = Err(last_voting_member()).context("etcd remove");
        assert_eq!(exit_code(&err.unwrap_err()), 2);
    }

    #[test]
    fn a_plain_message_exits_1() {
        assert_eq!(exit_code(&anyhow::anyhow!("something broke")), 1);
        let io = std::io::Error::other("disk on fire");
        assert_eq!(exit_code(&anyhow::Error::new(io).context("writing")), 1);
    }

    #[test]
    fn a_known_failure_exits_1() {
        let err = anyhow::Error::new(etcd_mgr::EtcdError::Timeout {
            op: "status",
            endpoint: "https://127.0.0.1:2379".into(),
            timeout: Duration::from_secs(5),
        })
        .context("etcd members");
        assert_eq!(exit_code(&err), 1);
    }

    #[test]
    fn a_conflict_exits_3() {
        let err = anyhow::Error::new(etcd_mgr::restore::RestoreError::DataDirNotEmpty {
            path: PathBuf::from("/var/lib/etcd"),
        })
        .context("step restore_etcd_data");
        assert_eq!(exit_code(&err), 3);
    }

    #[test]
    fn a_cause_behind_a_transparent_variant_is_found() {
        // #[error(transparent)] forwards source(), so the inner
        // SnapshotError is not itself in the chain: the outer error's
        // class must come from its variant's delegation.
        let err = anyhow::Error::new(etcd_mgr::restore::RestoreError::Snapshot(
            etcd_mgr::snapshot::SnapshotError::TooShort {
                path: PathBuf::from("/backup/etcd.db"),
                bytes: 0,
            },
        ));
        assert_eq!(exit_code(&err), 2);

        let err = anyhow::Error::new(dist::import::ImportError::Build(
            dist::images::BuildError::HostTools {
                image: "registry.k8s.io/kube-proxy:v1.37.2".into(),
                source: dist::netfilter::NetfilterError::NoSelection {
                    path: PathBuf::from("/usr/sbin/iptables"),
                },
            },
        ))
        .context("images import");
        assert_eq!(exit_code(&err), 2);
    }

    #[test]
    fn a_wrapper_variant_takes_its_sources_class() {
        // ImportError::Layer is a failure unless its source says otherwise;
        // here the layer spec is wrong, so the import is invalid input.
        let err = anyhow::Error::new(dist::import::ImportError::Layer {
            image: "localhost/selfnode:0.1.0".into(),
            digest: dist::oci::Digest::of(b""),
            source: dist::layer::LayerError::DuplicatePath {
                path: "/usr/local/bin/selfnode".into(),
            },
        });
        assert_eq!(exit_code(&err), 2);
    }

    #[test]
    fn every_library_error_type_is_in_the_table() {
        let samples: Vec<Box<dyn StdError + 'static>> = vec![
            Box::new(etcd_mgr::EtcdError::NoSuchMember {
                target: "cp-9".into(),
            }),
            Box::new(etcd_mgr::snapshot::SnapshotError::Corrupt { why: "x".into() }),
            Box::new(etcd_mgr::restore::RestoreError::InvalidTarget { why: "x".into() }),
            Box::new(dist::archive::ArchiveError::Empty {
                archive: PathBuf::from("a.tar"),
            }),
            Box::new(dist::bundle::BundleError::NoBundle {
                path: PathBuf::from("/nope"),
            }),
            Box::new(dist::containerd::ContainerdError::InvalidNamespace {
                namespace: "a/b".into(),
            }),
            Box::new(dist::elf::ElfError::NotElf),
            Box::new(dist::hostfiles::HostFilesError::NotRegular {
                path: PathBuf::from("/usr/sbin"),
            }),
            Box::new(dist::images::BuildError::NoLayers { image: "x".into() }),
            Box::new(dist::import::ImportError::Worker { reason: "x".into() }),
            Box::new(dist::layer::LayerError::DuplicatePath { path: "/x".into() }),
            Box::new(dist::netfilter::NetfilterError::NoSelection {
                path: PathBuf::from("/usr/sbin/iptables"),
            }),
            Box::new(dist::oci::OciError::InvalidDigest { value: "x".into() }),
            Box::new(cni::AgentError::NoNodeName),
            Box::new(cni::CniError::RelativeConfDir {
                path: PathBuf::from("net.d"),
            }),
            Box::new(cni::kernel::KernelError::LoadModule {
                module: "br_netfilter".into(),
                reason: "x".into(),
            }),
            Box::new(cni::routes::RouteError::InvalidRoute {
                route: "x".into(),
                reason: "x".into(),
            }),
            Box::new(cni::cleanup::CleanupError::Bridge {
                bridge: "cni0".into(),
                reason: "x".into(),
            }),
            Box::new(bootstrap::config::ConfigError::ClusterDomain(
                "Lab.Internal".into(),
            )),
            Box::new(bootstrap::plane::PlaneSpecError::ZeroPort { field: "apiserver" }),
            Box::new(bootstrap::pki::PkiSpecError::NoAdvertiseAddress),
            Box::new(crate::control::lock::LockError::Held {
                pid: "1".into(),
                path: PathBuf::from("/run/selfnode/agent.lock"),
            }),
            Box::new(crate::checkpoint::CheckpointError::Locked {
                path: PathBuf::from("/var/lib/selfnode/checkpoint"),
            }),
            Box::new(crate::sequences::init::InitConflict {
                existing: "a".into(),
                node: "n".into(),
                role: crate::cluster::ClusterRole::Init,
                uid: "u".into(),
            }),
            Box::new(crate::sequences::init::RestoreConflict {
                existing: "a".into(),
                node: "n".into(),
                pki_dir: PathBuf::from("/etc/kubernetes/pki"),
            }),
            Box::new(crate::sequences::init::RestoreInputError::NoPki {
                missing: PathBuf::from("ca.key"),
                pki_dir: PathBuf::from("/etc/kubernetes/pki"),
            }),
            Box::new(crate::sequences::recover::RecoverRefused::Healthy),
            Box::new(crate::sequences::upgrade::UpgradeRefused {
                reason: "version: x".into(),
                refusal: crate::sequences::upgrade::Refusal::Input,
            }),
            Box::new(crate::sequences::others::OthersServe {
                command: "etcd snapshot restore",
                others: Default::default(),
            }),
            Box::new(
                crate::sequences::recover::force_new::ForceNewRefused::NoMember {
                    manifest: PathBuf::from("/etc/kubernetes/manifests/etcd.yaml"),
                },
            ),
            Box::new(crate::cluster::NotControlPlaneHost::NotPivoted),
            Box::new(bootstrap::join::JoinError::Token("x".into())),
            Box::new(crate::tokens::TtlError {
                given: "0s".into(),
                max: "30days".into(),
                control_plane: false,
                example: "24h",
            }),
            Box::new(crate::sequences::join::NodeNameTaken { node: "n".into() }),
            Box::new(crate::sequences::join::JoinConflict {
                cluster: "a".into(),
                node: "n".into(),
                role: crate::cluster::ClusterRole::Init,
            }),
            Box::new(crate::sequences::join::NotAControlPlaneToken {
                token_id: "abcdef".into(),
            }),
            Box::new(dist::appliance::ApplianceError::Kernel {
                path: PathBuf::from("/boot/vmlinuz"),
                why: "is not a Linux bzImage".into(),
            }),
            Box::new(crate::appliance::config::ConfigError {
                field: "role".into(),
                source_name: "node.yaml".into(),
                value: "master".into(),
                why: "must be init, join or control-plane-join".into(),
            }),
        ];
        // One sample per line of CLASSIFIERS: a type added there needs its
        // sample here, so that a missing line is caught.
        assert_eq!(
            samples.len(),
            CLASSIFIERS.len(),
            "one sample per table line"
        );
        for sample in &samples {
            assert!(
                classify(sample.as_ref()).is_some(),
                "not in CLASSIFIERS: {sample:?}"
            );
        }
        let classes: Vec<Class> = samples
            .iter()
            .filter_map(|s| classify(s.as_ref()))
            .collect();
        use Class::{Conflict, Failure, Invalid};
        assert_eq!(
            classes,
            [
                Invalid, Failure, Invalid, Invalid, Invalid, Invalid, Invalid, Invalid, Invalid,
                Failure, Invalid, Invalid, Invalid, Invalid, Invalid, Failure, Invalid, Failure,
                Invalid, Invalid, Invalid, Conflict, Conflict, Conflict, Conflict, Invalid,
                Conflict, Invalid, Conflict, Conflict, Conflict, Invalid, Invalid, Conflict,
                Conflict, Invalid, Invalid, Invalid,
            ]
        );
    }
}
