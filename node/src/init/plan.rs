//! Sequences as data: the closed set of [`Step`]s with their stable names,
//! and [`plan`], which decides once, before anything runs, which steps a
//! sequence runs, which it skips (and why), and which run side by side.
//!
//! A plan is a list of [`Phase`]s run one after another; a phase holds one
//! or more lanes run concurrently; a lane is a list of steps run in order.
//! Two steps share a phase only when neither needs the other's result.
//! Join, control-plane join, recover and power-cut recovery are new
//! [`Sequence`]s here, over the same runner (`super::run`).

use serde::Serialize;

/// Declares [`Step`] and its name table in one place, so a step cannot
/// exist without a stable name.
macro_rules! steps {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)+) => {
        /// One named step of a sequence. Names are stable: they are what
        /// failpoints, progress lines, `-o json` and scripts see, so a name
        /// is never changed once released.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        #[serde(into = "&'static str")]
        pub enum Step {
            $($(#[$doc])* $variant,)+
        }

        impl Step {
            /// Every step, in the order a full plan runs them.
            pub const ALL: &'static [Step] = &[$(Step::$variant,)+];

            /// The step's stable name (`verb_noun`).
            pub fn name(self) -> &'static str {
                match self {
                    $(Step::$variant => $name,)+
                }
            }
        }
    };
}

steps! {
    /// The host belongs to this cluster from now on (before etcd starts).
    RecordClusterIdentity => "record_cluster_identity",
    /// Restore: the old cluster's CAs and keys, so `ensure_pki` keeps them.
    RestorePki => "restore_pki",
    EnsurePki => "ensure_pki",
    EnsureEncryptionConfig => "ensure_encryption_config",
    /// The kubelet's node name and IP; the agent restarts it with them.
    WriteNodeIdentity => "write_node_identity",
    /// Restore: the temporary member's data directory from the snapshot.
    RestoreEtcdData => "restore_etcd_data",
    StartTempEtcd => "start_temp_etcd",
    StartTempApiserver => "start_temp_apiserver",
    WriteLbBackends => "write_lb_backends",
    StartTempControllerManager => "start_temp_controller_manager",
    StartTempScheduler => "start_temp_scheduler",
    RegisterControlPlaneNode => "register_control_plane_node",
    AddEtcdLearner => "add_etcd_learner",
    StartSelfHostedEtcd => "start_self_hosted_etcd",
    PromoteEtcdMember => "promote_etcd_member",
    /// Restore: the self-hosted apiservers get traffic once their etcd
    /// member serves the restored data.
    AddSelfHostedToLb => "add_self_hosted_to_lb",
    ApplySelfHostedObjects => "apply_self_hosted_objects",
    WaitSelfHostedReady => "wait_self_hosted_ready",
    /// The point of no return: from here the self-hosted plane is
    /// authoritative on resume.
    CommitPivot => "commit_pivot",
    StopTempPlane => "stop_temp_plane",
    PointLbAtSelfHosted => "point_lb_at_self_hosted",
    WaitClusterReady => "wait_cluster_ready",
    /// A bootstrap token valid for a day, for the join string init prints
    /// (an unexpired one from an earlier run is reused).
    CreateJoinToken => "create_join_token",
    /// Join: `cluster-info` read, its signature and CA pin checked, the
    /// cluster's settings read over TLS verified with that CA. Writes nothing.
    DiscoverCluster => "discover_cluster",
    /// Join: the cluster CA, the kubelet's bootstrap kubeconfig (the token)
    /// and the balancer's API servers; the agent restarts the kubelet.
    WriteBootstrapKubeconfig => "write_bootstrap_kubeconfig",
    /// Join: the kubelet has its client certificate (TLS bootstrap) and its
    /// Node exists.
    WaitNodeRegistered => "wait_node_registered",
    /// Join: the Node is Ready (the pod network runs on it).
    WaitNodeReady => "wait_node_ready",
    /// Control-plane join: the Node gets the control-plane label (and the
    /// taint, unless the cluster allows workloads there), with the token.
    LabelControlPlane => "label_control_plane",
    /// Control-plane join: the agent's etcd member is promoted and the
    /// DaemonSet's kube-apiserver is Ready on this node.
    WaitControlPlane => "wait_control_plane",
}

impl From<Step> for &'static str {
    fn from(s: Step) -> &'static str {
        s.name()
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Step {
    type Err = String;
    fn from_str(s: &str) -> Result<Step, String> {
        Step::ALL
            .iter()
            .copied()
            .find(|step| step.name() == s)
            .ok_or_else(|| format!("no step is named {s:?}"))
    }
}

/// Which sequence a plan is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sequence {
    /// `selfnode init`: the first node of a new cluster.
    Init,
    /// `selfnode etcd snapshot restore`: init's sequence started from a
    /// snapshot; `pki` when `--pki DIR` gives the old cluster's keys.
    Restore { pki: bool },
    /// `selfnode recover --from-snapshot`: the restore's plan on a host
    /// whose control plane is gone, with the settings it recorded.
    Recover { pki: bool },
    /// `selfnode join`: a host joins a running cluster as a node.
    Join,
}

impl Sequence {
    /// The prefix of the progress lines (`[init]`, `[restore]`, `[recover]`).
    pub fn name(self) -> &'static str {
        match self {
            Sequence::Init => "init",
            Sequence::Restore { .. } => "restore",
            Sequence::Recover { .. } => "recover",
            Sequence::Join => "join",
        }
    }

    /// The role a host records when this sequence makes its cluster.
    pub fn role(self) -> crate::cluster::ClusterRole {
        use crate::cluster::ClusterRole;
        match self {
            Sequence::Init => ClusterRole::Init,
            Sequence::Restore { .. } => ClusterRole::Restore,
            Sequence::Recover { .. } => ClusterRole::Recover,
            Sequence::Join => ClusterRole::Join,
        }
    }

    /// Starts from a snapshot: `Some(pki)`, where `pki` says whether the
    /// old cluster's keys are given.
    pub fn from_snapshot(self) -> Option<bool> {
        match self {
            Sequence::Init | Sequence::Join => None,
            Sequence::Restore { pki } | Sequence::Recover { pki } => Some(pki),
        }
    }
}

/// What the world looked like when the plan was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Observed {
    /// The checkpoint holds the pivot's commit marker.
    pub pivoted: bool,
    /// Join: the host recorded this cluster and its kubelet has its own
    /// credentials (the token is no longer needed).
    pub joined: bool,
    /// Join: as a control-plane node.
    pub control_plane: bool,
}

/// Whether a planned step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Check, apply if needed, check again.
    Run,
    /// Not run; the reason is printed in its progress line.
    Skip(&'static str),
}

/// One step in a plan with its number (1-based, in plan order: what the
/// `(i/n)` of its progress line shows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    pub step: Step,
    pub number: usize,
    pub action: Action,
}

/// Steps run concurrently with the other lanes of their phase; in order
/// within the lane.
pub type Lane = Vec<Planned>;

/// Lanes that run side by side; the next phase starts when all are done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phase {
    pub lanes: Vec<Lane>,
}

/// The steps a sequence takes on this host, decided before the first one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub sequence: Sequence,
    pub phases: Vec<Phase>,
}

impl Plan {
    /// Every planned step (skipped ones included), in plan order.
    pub fn steps(&self) -> impl Iterator<Item = &Planned> {
        let mut all: Vec<&Planned> = self
            .phases
            .iter()
            .flat_map(|p| p.lanes.iter().flatten())
            .collect();
        all.sort_by_key(|p| p.number);
        all.into_iter()
    }

    /// How many steps the plan has: the `n` of `(i/n)`.
    pub fn len(&self) -> usize {
        self.phases
            .iter()
            .flat_map(|p| &p.lanes)
            .map(Vec::len)
            .sum()
    }

    /// Whether the plan has no step (never, for the sequences there are).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The steps this plan runs (not skipped), in plan order.
    pub fn runs(&self) -> impl Iterator<Item = Step> + '_ {
        self.steps()
            .filter(|p| p.action == Action::Run)
            .map(|p| p.step)
    }
}

const PIVOTED: &str =
    "the pivot is committed: the self-hosted control plane is authoritative, the temporary one is gone";
const PIVOTED_OBJECTS: &str =
    "the pivot is committed: the objects belong to the cluster now (a re-run must not undo an upgrade made with kubectl)";
const NO_PKI: &str = "no --pki given: the host's own PKI is used";

/// Builds the plan of `sequence` for a host in state `observed`.
///
/// Order and concurrency, for init (restore adds its steps where marked):
/// 1. record_cluster_identity, [restore_pki], ensure_pki,
///    ensure_encryption_config, write_node_identity, [restore_etcd_data],
///    start_temp_etcd: one lane.
/// 2. Two lanes once the temporary etcd serves: the temporary API
///    (start_temp_apiserver, write_lb_backends,
///    start_temp_controller_manager, start_temp_scheduler,
///    register_control_plane_node), and etcd's pivot (add_etcd_learner,
///    start_self_hosted_etcd, promote_etcd_member), which needs only the
///    temporary etcd and the kubelet (a static pod), not the API.
/// 3. [add_self_hosted_to_lb], apply_self_hosted_objects (the self-hosted
///    apiservers need their promoted member), wait_self_hosted_ready,
///    commit_pivot, stop_temp_plane, point_lb_at_self_hosted,
///    wait_cluster_ready: one lane.
///
/// After the pivot, the temporary plane's steps, etcd's pivot and the
/// objects are skipped; the checks that follow it run again.
pub fn plan(sequence: Sequence, observed: Observed) -> Plan {
    if sequence == Sequence::Join {
        return join_plan(observed.joined, observed.control_plane);
    }
    let restore = sequence.from_snapshot().is_some();
    let pivoted = observed.pivoted;
    let mut number = 0;
    let mut lane = |steps: &[(Step, Option<Action>)]| -> Lane {
        steps
            .iter()
            .filter_map(|(step, action)| {
                let action = (*action)?;
                number += 1;
                Some(Planned {
                    step: *step,
                    number,
                    action,
                })
            })
            .collect()
    };
    // `None`: not part of this sequence at all.
    let run = Some(Action::Run);
    let before_pivot = Some(if pivoted {
        Action::Skip(PIVOTED)
    } else {
        Action::Run
    });
    let only_restore = |action: Option<Action>| if restore { action } else { None };
    let restore_pki = match sequence.from_snapshot() {
        Some(true) => run,
        Some(false) => Some(Action::Skip(NO_PKI)),
        None => None,
    };
    let objects = Some(if pivoted {
        Action::Skip(PIVOTED_OBJECTS)
    } else {
        Action::Run
    });

    let host = lane(&[
        (Step::RecordClusterIdentity, run),
        (Step::RestorePki, restore_pki),
        (Step::EnsurePki, run),
        (Step::EnsureEncryptionConfig, run),
        (Step::WriteNodeIdentity, run),
        (Step::RestoreEtcdData, only_restore(before_pivot)),
        (Step::StartTempEtcd, before_pivot),
    ]);
    let temp_api = lane(&[
        (Step::StartTempApiserver, before_pivot),
        (Step::WriteLbBackends, before_pivot),
        (Step::StartTempControllerManager, before_pivot),
        (Step::StartTempScheduler, before_pivot),
        (Step::RegisterControlPlaneNode, run),
    ]);
    let etcd_pivot = lane(&[
        (Step::AddEtcdLearner, before_pivot),
        (Step::StartSelfHostedEtcd, before_pivot),
        (Step::PromoteEtcdMember, before_pivot),
    ]);
    let pivot = lane(&[
        (Step::AddSelfHostedToLb, only_restore(before_pivot)),
        (Step::ApplySelfHostedObjects, objects),
        (Step::WaitSelfHostedReady, run),
        (Step::CommitPivot, run),
        (Step::StopTempPlane, run),
        (Step::PointLbAtSelfHosted, run),
        (Step::WaitClusterReady, run),
        (Step::CreateJoinToken, run),
    ]);
    Plan {
        sequence,
        phases: vec![
            Phase { lanes: vec![host] },
            Phase {
                lanes: vec![temp_api, etcd_pivot],
            },
            Phase { lanes: vec![pivot] },
        ],
    }
}

/// Why a joined host's run skips the steps that need the token.
const JOINED: &str = "the host has joined: its kubelet has its own credentials";

/// `selfnode join`, one lane: discover (writes nothing), then the host
/// records its cluster before it writes anything else, then the kubelet's
/// TLS bootstrap. Every step checks first, so a re-run resumes; once the
/// host has joined, a re-run needs no valid token (it may have expired)
/// and only waits.
///
/// A control-plane join adds label_control_plane after the registration
/// (the label brings the apiserver DaemonSet's pod and, through the agent,
/// an etcd member) and wait_control_plane at the end.
fn join_plan(joined: bool, control_plane: bool) -> Plan {
    let before = if joined {
        Action::Skip(JOINED)
    } else {
        Action::Run
    };
    let mut steps = vec![
        (Step::DiscoverCluster, before),
        (Step::RecordClusterIdentity, before),
        (Step::WriteNodeIdentity, before),
        (Step::WriteBootstrapKubeconfig, before),
        (Step::WaitNodeRegistered, Action::Run),
    ];
    if control_plane {
        steps.push((Step::LabelControlPlane, Action::Run));
    }
    steps.push((Step::WaitNodeReady, Action::Run));
    if control_plane {
        steps.push((Step::WaitControlPlane, Action::Run));
    }
    let lane = steps
        .iter()
        .enumerate()
        .map(|(i, (step, action))| Planned {
            step: *step,
            number: i + 1,
            action: *action,
        })
        .collect();
    Plan {
        sequence: Sequence::Join,
        phases: vec![Phase { lanes: vec![lane] }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(plan: &Plan, pred: impl Fn(&Planned) -> bool) -> Vec<&'static str> {
        plan.steps()
            .filter(|p| pred(p))
            .map(|p| p.step.name())
            .collect()
    }

    #[test]
    fn join_discovers_then_records_the_cluster_before_it_writes_anything() {
        let p = plan(Sequence::Join, Observed::default());
        assert_eq!(
            names(&p, |s| s.action == Action::Run),
            [
                "discover_cluster",
                "record_cluster_identity",
                "write_node_identity",
                "write_bootstrap_kubeconfig",
                "wait_node_registered",
                "wait_node_ready",
            ]
        );
        assert_eq!(p.sequence.name(), "join");
        let joined = plan(
            Sequence::Join,
            Observed {
                joined: true,
                ..Observed::default()
            },
        );
        assert_eq!(
            names(&joined, |s| s.action == Action::Run),
            ["wait_node_registered", "wait_node_ready"]
        );
    }

    #[test]
    fn a_control_plane_join_labels_after_registering_and_waits_for_its_member() {
        let cp = Observed {
            control_plane: true,
            ..Observed::default()
        };
        let p = plan(Sequence::Join, cp);
        assert_eq!(
            names(&p, |s| s.action == Action::Run),
            [
                "discover_cluster",
                "record_cluster_identity",
                "write_node_identity",
                "write_bootstrap_kubeconfig",
                "wait_node_registered",
                "label_control_plane",
                "wait_node_ready",
                "wait_control_plane",
            ]
        );
        let numbers: Vec<usize> = p.steps().map(|s| s.number).collect();
        assert_eq!(numbers, (1..=8).collect::<Vec<_>>());
        let rerun = plan(Sequence::Join, Observed { joined: true, ..cp });
        assert_eq!(
            names(&rerun, |s| s.action == Action::Run),
            [
                "wait_node_registered",
                "label_control_plane",
                "wait_node_ready",
                "wait_control_plane"
            ]
        );
    }

    #[test]
    fn names_are_unique_and_parse_back() {
        let mut seen = std::collections::BTreeSet::new();
        for step in Step::ALL {
            assert!(seen.insert(step.name()), "duplicate name {step}");
            assert_eq!(step.name().parse::<Step>(), Ok(*step));
        }
        assert!("no_such_step".parse::<Step>().is_err());
    }

    #[test]
    fn released_names_do_not_change() {
        // These names are in failpoints, scripts and earlier output.
        let released = [
            "record_cluster_identity",
            "restore_pki",
            "ensure_pki",
            "ensure_encryption_config",
            "write_node_identity",
            "restore_etcd_data",
            "start_temp_etcd",
            "start_temp_apiserver",
            "write_lb_backends",
            "start_temp_controller_manager",
            "start_temp_scheduler",
            "register_control_plane_node",
            "add_etcd_learner",
            "start_self_hosted_etcd",
            "promote_etcd_member",
            "apply_self_hosted_objects",
            "wait_self_hosted_ready",
            "commit_pivot",
            "stop_temp_plane",
            "point_lb_at_self_hosted",
            "wait_cluster_ready",
        ];
        for name in released {
            assert!(name.parse::<Step>().is_ok(), "{name} is gone");
        }
    }

    #[test]
    fn init_runs_every_step_but_the_restore_ones_numbered_in_order() {
        let p = plan(Sequence::Init, Observed::default());
        assert_eq!(p.len(), 20);
        let numbers: Vec<usize> = p.steps().map(|s| s.number).collect();
        assert_eq!(numbers, (1..=20).collect::<Vec<_>>());
        assert!(p.steps().all(|s| s.action == Action::Run));
        let expected: Vec<&str> = Step::ALL
            .iter()
            .filter(|s| {
                !matches!(
                    s,
                    Step::RestorePki
                        | Step::RestoreEtcdData
                        | Step::AddSelfHostedToLb
                        | Step::DiscoverCluster
                        | Step::WriteBootstrapKubeconfig
                        | Step::WaitNodeRegistered
                        | Step::WaitNodeReady
                        | Step::LabelControlPlane
                        | Step::WaitControlPlane
                )
            })
            .map(|s| s.name())
            .collect();
        assert_eq!(names(&p, |_| true), expected);
    }

    #[test]
    fn init_after_the_pivot_skips_the_temporary_plane_etcd_pivot_and_objects_and_says_why() {
        let p = plan(
            Sequence::Init,
            Observed {
                pivoted: true,
                ..Observed::default()
            },
        );
        assert_eq!(
            p.len(),
            20,
            "the count is the plan's, skipped steps included"
        );
        assert_eq!(
            names(&p, |s| s.action == Action::Run),
            [
                "record_cluster_identity",
                "ensure_pki",
                "ensure_encryption_config",
                "write_node_identity",
                "register_control_plane_node",
                "wait_self_hosted_ready",
                "commit_pivot",
                "stop_temp_plane",
                "point_lb_at_self_hosted",
                "wait_cluster_ready",
                "create_join_token",
            ]
        );
        for s in p.steps() {
            if let Action::Skip(why) = s.action {
                assert!(why.contains("pivot is committed"), "{}: {why}", s.step);
            }
        }
    }

    #[test]
    fn restore_adds_its_steps_and_skips_restore_pki_without_pki() {
        let with = plan(Sequence::Restore { pki: true }, Observed::default());
        assert_eq!(with.len(), 23);
        assert!(with.steps().all(|s| s.action == Action::Run));
        let without = plan(Sequence::Restore { pki: false }, Observed::default());
        assert_eq!(without.len(), 23);
        assert_eq!(
            without
                .steps()
                .find(|s| s.step == Step::RestorePki)
                .map(|s| s.action),
            Some(Action::Skip(NO_PKI))
        );
        let order = names(&with, |_| true);
        let at = |n: &str| order.iter().position(|x| *x == n).unwrap();
        assert!(at("restore_pki") < at("ensure_pki"));
        assert!(at("restore_etcd_data") < at("start_temp_etcd"));
        assert!(at("promote_etcd_member") < at("add_self_hosted_to_lb"));
        assert!(at("add_self_hosted_to_lb") < at("apply_self_hosted_objects"));
    }

    #[test]
    fn a_resumed_restore_after_the_pivot_does_not_touch_etcd_data() {
        let p = plan(
            Sequence::Restore { pki: true },
            Observed {
                pivoted: true,
                ..Observed::default()
            },
        );
        let skipped = names(&p, |s| matches!(s.action, Action::Skip(_)));
        for step in [
            "restore_etcd_data",
            "start_temp_etcd",
            "add_etcd_learner",
            "add_self_hosted_to_lb",
            "apply_self_hosted_objects",
        ] {
            assert!(skipped.contains(&step), "{step} runs after the pivot");
        }
        assert!(p.runs().any(|s| s == Step::RestorePki));
    }

    #[test]
    fn only_independent_steps_share_a_phase() {
        let p = plan(Sequence::Init, Observed::default());
        let phase_of = |step: Step| {
            p.phases
                .iter()
                .position(|ph| ph.lanes.iter().flatten().any(|s| s.step == step))
                .unwrap()
        };
        // etcd's pivot needs the temporary etcd and runs beside the
        // temporary API; the objects need the promoted member and the API.
        assert!(phase_of(Step::StartTempEtcd) < phase_of(Step::AddEtcdLearner));
        assert_eq!(
            phase_of(Step::AddEtcdLearner),
            phase_of(Step::StartTempApiserver)
        );
        assert!(phase_of(Step::PromoteEtcdMember) < phase_of(Step::ApplySelfHostedObjects));
        assert!(phase_of(Step::RegisterControlPlaneNode) < phase_of(Step::ApplySelfHostedObjects));
        for ph in &p.phases {
            let lanes: Vec<Vec<Step>> = ph
                .lanes
                .iter()
                .map(|l| l.iter().map(|s| s.step).collect())
                .collect();
            if lanes.len() > 1 {
                assert_eq!(
                    lanes,
                    [
                        vec![
                            Step::StartTempApiserver,
                            Step::WriteLbBackends,
                            Step::StartTempControllerManager,
                            Step::StartTempScheduler,
                            Step::RegisterControlPlaneNode
                        ],
                        vec![
                            Step::AddEtcdLearner,
                            Step::StartSelfHostedEtcd,
                            Step::PromoteEtcdMember
                        ]
                    ]
                );
            }
        }
    }
}
