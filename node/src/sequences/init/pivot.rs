//! The pivot: the self-hosted control plane as API objects, and the commit
//! marker after which it is authoritative.

use std::time::Duration;

use super::Runner;
use super::{InitStep, Seq};
use crate::host::NodeHost;
use crate::sequences::runner::StepReport;

/// `apply_self_hosted_objects`: server-side apply of every object. The
/// apply is its own observation: the API server says per object whether
/// it changed, so the step is "already done" when nothing did. The plan
/// skips it after the pivot: then the objects belong to the cluster, and a
/// re-run must not undo an upgrade made with kubectl.
pub(super) async fn apply_self_hosted_objects(
    run: &Runner,
    seq: &Seq<'_>,
) -> anyhow::Result<StepReport> {
    run.converge(InitStep::ApplySelfHostedObjects, || async {
        let files = bootstrap::objects::PlaneFiles::read(&NodeHost, &seq.spec)?;
        let objects = bootstrap::objects::self_hosted_objects(&seq.spec, &files)?;
        let applied = bootstrap::objects::apply_all(
            seq.client().await?,
            &objects,
            bootstrap::objects::FIELD_MANAGER,
        )
        .await?;
        Ok(applied
            .iter()
            .any(|a| a.outcome != bootstrap::objects::ApplyOutcome::Unchanged))
    })
    .await
}

/// `commit_pivot`: the marker in the checkpoint, with the settings the
/// self-hosted objects were made with (what `selfnode recover` renders
/// from). Before it the temporary plane is authoritative on resume, after
/// it the self-hosted one.
pub(super) async fn commit_pivot(run: &Runner, seq: &Seq<'_>) -> anyhow::Result<StepReport> {
    run.step(
        InitStep::CommitPivot,
        Duration::from_secs(10),
        || async { Ok(seq.checkpoint()?.pivot_committed()?) },
        || async { Ok(seq.checkpoint()?.commit_pivot(&seq.ctx.settings)?) },
    )
    .await
}
