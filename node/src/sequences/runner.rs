//! The uniform step runner: one named step at a time, `check` (is the
//! postcondition already true in the real world?) then, if needed, `apply`
//! under a deadline, then `check` again; one progress line per step with its
//! duration, like kubeadm's `[phase]` lines. A record in the checkpoint is a
//! hint only: on resume `check` runs again.
//!
//! The runner is shared by reference: the lanes of a plan's phase run their
//! steps concurrently, each step numbered by its place in the plan.
//!
//! Failpoints for tests: `SELFNODE_FAILPOINT=<step>` makes the process exit
//! with code 99 right after that step ran (applied, or found already done),
//! as a kill would; a skipped step does not fire. Debug builds only.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use super::plan::{Action, Plan, Step};

pub const FAILPOINT_ENV: &str = "SELFNODE_FAILPOINT";
pub const FAILPOINT_EXIT: i32 = 99;

/// Runs the steps of one plan and prints their progress lines. Shared by
/// reference between the lanes of a phase (they run on one task).
pub struct Runner<S> {
    sequence: &'static str,
    /// Each step's number in the plan: the `i` of `(i/n)`.
    numbers: HashMap<S, usize>,
    total: usize,
    started: Instant,
    quiet: bool,
}

/// What one step did, for `-o json` and the benchmark.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepReport {
    /// The step's stable name.
    pub step: &'static str,
    /// The step's number in the plan (1-based).
    pub number: usize,
    /// `done`, `already done` or `skipped`.
    pub outcome: &'static str,
    /// Why a skipped step was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// How long the step took.
    pub seconds: f64,
    /// When it ended, in seconds since the sequence started (steps of
    /// concurrent lanes overlap, so their `seconds` do not add up).
    pub finished_at: f64,
}

impl<S: Step> Runner<S> {
    pub fn new(plan: &Plan<S>, quiet: bool) -> Self {
        Runner {
            sequence: plan.sequence,
            numbers: plan.steps().map(|p| (p.step, p.number)).collect(),
            total: plan.len(),
            started: Instant::now(),
            quiet,
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn number(&self, step: S) -> usize {
        self.numbers.get(&step).copied().unwrap_or(0)
    }

    /// One progress line for `step`: `[init] <step> (n/N): <what>`.
    pub fn say(&self, step: S, what: &str) {
        if !self.quiet {
            eprintln!(
                "[{}] {step} ({}/{}): {what}",
                self.sequence,
                self.number(step),
                self.total
            );
        }
    }

    /// The step's progress line and its report; then the failpoint, if
    /// it names this step.
    fn finish(&self, step: S, outcome: &'static str, started: Instant) -> StepReport {
        let seconds = started.elapsed().as_secs_f64();
        self.say(step, &format!("{outcome}, {seconds:.1}s"));
        failpoint(step.name());
        StepReport {
            step: step.name(),
            number: self.number(step),
            outcome,
            reason: None,
            seconds,
            finished_at: self.started.elapsed().as_secs_f64(),
        }
    }

    /// The step's `failed` line, and the context its error gets.
    fn failed(&self, step: S, started: Instant) -> String {
        self.say(
            step,
            &format!("failed, {:.1}s", started.elapsed().as_secs_f64()),
        );
        format!("{} step {step} failed", self.sequence)
    }

    /// A planned step that does not run: its line says why.
    pub fn skip(&self, step: S, why: &'static str) -> StepReport {
        self.say(step, &format!("skipped: {why}"));
        StepReport {
            step: step.name(),
            number: self.number(step),
            outcome: "skipped",
            reason: Some(why),
            seconds: 0.0,
            finished_at: self.started.elapsed().as_secs_f64(),
        }
    }

    /// Runs one step. `check` observes whether the postcondition holds;
    /// `apply` converges. Both must be idempotent.
    pub async fn step<C, CF, A, AF>(
        &self,
        step: S,
        deadline: Duration,
        check: C,
        apply: A,
    ) -> anyhow::Result<StepReport>
    where
        C: Fn() -> CF,
        CF: Future<Output = anyhow::Result<bool>>,
        A: FnOnce() -> AF,
        AF: Future<Output = anyhow::Result<()>>,
    {
        let t = Instant::now();
        let outcome = if check().await.map_err(|e| e.context(self.failed(step, t)))? {
            "already done"
        } else {
            match tokio::time::timeout(deadline, apply()).await {
                Ok(r) => r.map_err(|e| e.context(self.failed(step, t)))?,
                Err(_) => {
                    self.failed(step, t);
                    anyhow::bail!(
                        "{} step {step} did not finish within {deadline:?}; see 'selfnode status' and the logs in /var/log/selfnode, then run the command again (it resumes)",
                        self.sequence
                    )
                }
            }
            if !check().await.map_err(|e| e.context(self.failed(step, t)))? {
                self.failed(step, t);
                anyhow::bail!(
                    "{} step {step} ran but its result is not there; run the command again",
                    self.sequence
                );
            }
            "done"
        };
        Ok(self.finish(step, outcome, t))
    }

    /// A step whose apply observes and converges in one call (it compares
    /// before it writes) and says whether it changed anything.
    pub async fn converge<A, AF>(&self, step: S, apply: A) -> anyhow::Result<StepReport>
    where
        A: FnOnce() -> AF,
        AF: Future<Output = anyhow::Result<bool>>,
    {
        let t = Instant::now();
        let changed = apply().await.map_err(|e| e.context(self.failed(step, t)))?;
        let outcome = if changed { "done" } else { "already done" };
        Ok(self.finish(step, outcome, t))
    }

    /// A step that always runs: a wait for something outside our control.
    /// `apply` bounds itself (see [`until`]).
    pub async fn wait<A, AF>(&self, step: S, what: &str, apply: A) -> anyhow::Result<StepReport>
    where
        A: FnOnce() -> AF,
        AF: Future<Output = anyhow::Result<()>>,
    {
        self.say(step, &format!("waiting for {what}"));
        let t = Instant::now();
        apply().await.map_err(|e| e.context(self.failed(step, t)))?;
        Ok(self.finish(step, "done", t))
    }
}

/// Runs every phase of `plan` in order, the lanes of a phase side by side
/// and the steps of a lane in order: `exec` runs one step, a skipped step
/// gets its line. Returns the reports in plan order; stops at the first
/// failure.
pub async fn run_plan<S, F, Fut>(
    plan: &Plan<S>,
    run: &Runner<S>,
    exec: F,
) -> anyhow::Result<Vec<StepReport>>
where
    S: Step,
    F: Fn(S) -> Fut,
    Fut: Future<Output = anyhow::Result<StepReport>>,
{
    let mut reports = Vec::with_capacity(plan.len());
    for phase in &plan.phases {
        let exec = &exec;
        let lanes = phase.lanes.iter().map(|lane| async move {
            let mut out = Vec::with_capacity(lane.len());
            for planned in lane {
                out.push(match planned.action {
                    Action::Skip(why) => run.skip(planned.step, why),
                    Action::Run => exec(planned.step).await?,
                });
            }
            anyhow::Ok(out)
        });
        for lane in futures::future::try_join_all(lanes).await? {
            reports.extend(lane);
        }
    }
    reports.sort_by_key(|r| r.number);
    Ok(reports)
}

/// Exits the process if the failpoint names `step`.
/// Only debug builds (the tests' binary) honour it; a release build never
/// exits on an environment variable.
pub fn failpoint(step: &str) {
    if cfg!(debug_assertions) && std::env::var(FAILPOINT_ENV).is_ok_and(|v| v == step) {
        eprintln!("failpoint: exiting after step {step}");
        std::process::exit(FAILPOINT_EXIT);
    }
}

#[cfg(test)]
mod tests {
    use super::super::init::plan::{plan, InitStep as Step, Observed, Sequence};
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn runner() -> Runner<Step> {
        Runner::new(&plan(Sequence::Init, Observed::default()), true)
    }

    #[test]
    fn a_step_is_numbered_by_its_place_in_the_plan_and_a_skip_says_why() {
        let run = runner();
        let r = run.skip(Step::StopTempPlane, "because");
        assert_eq!(
            (r.number, r.outcome, r.reason),
            (17, "skipped", Some("because"))
        );
        assert_eq!(run.total, 20);
    }

    #[tokio::test]
    async fn a_step_applies_only_when_its_check_fails_and_verifies_the_result() {
        let run = runner();
        let state = AtomicU32::new(0);
        let applied = AtomicU32::new(0);
        let check = || async { Ok(state.load(Ordering::SeqCst) == 1) };
        let apply = || async {
            applied.fetch_add(1, Ordering::SeqCst);
            state.store(1, Ordering::SeqCst);
            Ok(())
        };
        assert_eq!(
            run.step(Step::EnsurePki, Duration::from_secs(1), check, apply)
                .await
                .unwrap()
                .outcome,
            "done"
        );
        let again = run.step(Step::EnsurePki, Duration::from_secs(1), check, || async {
            unreachable!("already true")
        });
        assert_eq!(again.await.unwrap().outcome, "already done");
        assert_eq!(applied.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_apply_that_does_not_produce_its_result_is_an_error() {
        let run = runner();
        let err = run
            .step(
                Step::EnsurePki,
                Duration::from_secs(1),
                || async { Ok(false) },
                || async { Ok(()) },
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("its result is not there"), "{err}");
    }

    #[tokio::test]
    async fn a_step_past_its_deadline_says_how_to_resume() {
        let run = runner();
        let err = run
            .step(
                Step::EnsurePki,
                Duration::from_millis(50),
                || async { Ok(false) },
                || async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok(())
                },
            )
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("did not finish") && err.to_string().contains("resumes"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn until_reports_what_it_waited_for_and_the_last_reason() {
        use crate::wait::until;
        let err = until(
            "the moon",
            Duration::from_millis(100),
            Duration::from_millis(20),
            || async { anyhow::bail!("still cheese") },
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains("the moon") && err.to_string().contains("still cheese"),
            "{err}"
        );
    }
}
