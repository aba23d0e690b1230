//! The plans of `init`, `etcd snapshot restore` and `recover
//! --from-snapshot`: one closed set of [`InitStep`]s and [`plan`], which
//! decides once which of them a sequence runs, skips (and why) and runs
//! side by side.

use crate::sequences::plan::{steps, Action, Builder, Phase, Plan};

steps! {
    /// One step of init, a restore or a recovery from a snapshot.
    pub enum InitStep {
        /// A forced restore over the cluster this host runs: new
        /// connections go to the temporary API server (the running ones
        /// lose their etcd).
        PointLbAtTempApiserver => "point_lb_at_temp_apiserver",
        /// A forced restore: the member's static pod goes (the kubelet
        /// stops it), and the step waits until etcd no longer serves.
        StopEtcdMember => "stop_etcd_member",
        /// A forced restore: the member's data directory is renamed aside
        /// (`<dir>.before-restore-<unix time>`), never deleted.
        MoveEtcdDataAside => "move_etcd_data_aside",
        /// A forced restore: the checkpoint says "restoring, not pivoted",
        /// identity and marker in one write; from here a re-run resumes
        /// the restore.
        BeginRestore => "begin_restore",
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
}

impl Sequence {
    /// The prefix of the progress lines (`[init]`, `[restore]`, `[recover]`).
    pub fn name(self) -> &'static str {
        match self {
            Sequence::Init => "init",
            Sequence::Restore { .. } => "restore",
            Sequence::Recover { .. } => "recover",
        }
    }

    /// The role a host records when this sequence makes its cluster.
    pub fn role(self) -> crate::cluster::ClusterRole {
        use crate::cluster::ClusterRole;
        match self {
            Sequence::Init => ClusterRole::Init,
            Sequence::Restore { .. } => ClusterRole::Restore,
            Sequence::Recover { .. } => ClusterRole::Recover,
        }
    }

    /// Starts from a snapshot: `Some(pki)`, where `pki` says whether the
    /// old cluster's keys are given.
    pub fn from_snapshot(self) -> Option<bool> {
        match self {
            Sequence::Init => None,
            Sequence::Restore { pki } | Sequence::Recover { pki } => Some(pki),
        }
    }
}

/// What the world looked like when the plan was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Observed {
    /// The checkpoint holds the pivot's commit marker.
    pub pivoted: bool,
    /// A forced restore over the cluster this host runs: its etcd is taken
    /// out of the way first (and the pivot is undone by that).
    pub clear_for_restore: bool,
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
pub fn plan(sequence: Sequence, observed: Observed) -> Plan<InitStep> {
    let restore = sequence.from_snapshot().is_some();
    // Clearing a running cluster undoes its pivot before anything else.
    let pivoted = observed.pivoted && !observed.clear_for_restore;
    let clear = (restore && observed.clear_for_restore).then_some(Action::Run);
    let mut b = Builder::default();
    let mut lane = |steps: &[(InitStep, Option<Action>)]| b.lane(steps);
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
        (InitStep::PointLbAtTempApiserver, clear),
        (InitStep::StopEtcdMember, clear),
        (InitStep::MoveEtcdDataAside, clear),
        (InitStep::BeginRestore, clear),
        (InitStep::RecordClusterIdentity, run),
        (InitStep::RestorePki, restore_pki),
        (InitStep::EnsurePki, run),
        (InitStep::EnsureEncryptionConfig, run),
        (InitStep::WriteNodeIdentity, run),
        (InitStep::RestoreEtcdData, only_restore(before_pivot)),
        (InitStep::StartTempEtcd, before_pivot),
    ]);
    let temp_api = lane(&[
        (InitStep::StartTempApiserver, before_pivot),
        (InitStep::WriteLbBackends, before_pivot),
        (InitStep::StartTempControllerManager, before_pivot),
        (InitStep::StartTempScheduler, before_pivot),
        (InitStep::RegisterControlPlaneNode, run),
    ]);
    let etcd_pivot = lane(&[
        (InitStep::AddEtcdLearner, before_pivot),
        (InitStep::StartSelfHostedEtcd, before_pivot),
        (InitStep::PromoteEtcdMember, before_pivot),
    ]);
    let pivot = lane(&[
        (InitStep::AddSelfHostedToLb, only_restore(before_pivot)),
        (InitStep::ApplySelfHostedObjects, objects),
        (InitStep::WaitSelfHostedReady, run),
        (InitStep::CommitPivot, run),
        (InitStep::StopTempPlane, run),
        (InitStep::PointLbAtSelfHosted, run),
        (InitStep::WaitClusterReady, run),
        (InitStep::CreateJoinToken, run),
    ]);
    Plan {
        sequence: sequence.name(),
        phases: vec![
            Phase { lanes: vec![host] },
            Phase {
                lanes: vec![temp_api, etcd_pivot],
            },
            Phase { lanes: vec![pivot] },
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sequences::plan::{Planned, Step as _};
    use InitStep as Step;

    fn names(plan: &Plan<Step>, pred: impl Fn(&Planned<Step>) -> bool) -> Vec<&'static str> {
        plan.steps()
            .filter(|p| pred(p))
            .map(|p| p.step.name())
            .collect()
    }

    #[test]
    fn names_are_unique_and_parse_back() {
        let mut seen = std::collections::BTreeSet::new();
        for step in Step::ALL {
            assert!(seen.insert(step.name()), "duplicate name {step}");
            assert_eq!(step.name().parse::<Step>().unwrap(), *step);
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
                    Step::PointLbAtTempApiserver
                        | Step::StopEtcdMember
                        | Step::MoveEtcdDataAside
                        | Step::BeginRestore
                        | Step::RestorePki
                        | Step::RestoreEtcdData
                        | Step::AddSelfHostedToLb
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
        assert!(phase_of(InitStep::StartTempEtcd) < phase_of(InitStep::AddEtcdLearner));
        assert_eq!(
            phase_of(InitStep::AddEtcdLearner),
            phase_of(InitStep::StartTempApiserver)
        );
        assert!(phase_of(InitStep::PromoteEtcdMember) < phase_of(InitStep::ApplySelfHostedObjects));
        assert!(
            phase_of(InitStep::RegisterControlPlaneNode)
                < phase_of(InitStep::ApplySelfHostedObjects)
        );
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

    #[test]
    fn a_forced_restore_over_a_running_cluster_clears_it_first_and_runs_from_scratch() {
        let p = plan(
            Sequence::Restore { pki: false },
            Observed {
                pivoted: true,
                clear_for_restore: true,
            },
        );
        let order = names(&p, |_| true);
        assert_eq!(
            &order[..5],
            [
                "point_lb_at_temp_apiserver",
                "stop_etcd_member",
                "move_etcd_data_aside",
                "begin_restore",
                "record_cluster_identity"
            ]
        );
        assert_eq!(p.len(), 27);
        assert!(
            p.runs().any(|s| s == Step::StartTempEtcd),
            "the old cluster's pivot does not count: it is undone"
        );
        let init = plan(
            Sequence::Init,
            Observed {
                clear_for_restore: true,
                ..Observed::default()
            },
        );
        assert_eq!(init.len(), 20, "init never clears a cluster");
    }
}
