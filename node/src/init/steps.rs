//! The uniform step runner: one named step at a time, `check` (is the
//! postcondition already true in the real world?) then, if needed, `apply`
//! under a deadline, then `check` again; one progress line per step with its
//! duration, like kubeadm's `[phase]` lines. A record in the checkpoint is a
//! hint only: on resume `check` runs again.
//!
//! Failpoints for tests: `SELFNODE_FAILPOINT=<step>` makes the process exit
//! with code 99 right after that step is applied, as a kill would.

use std::future::Future;
use std::time::{Duration, Instant};

pub const FAILPOINT_ENV: &str = "SELFNODE_FAILPOINT";
pub const FAILPOINT_EXIT: i32 = 99;

pub struct Runner {
    sequence: &'static str,
    total: usize,
    done: usize,
    started: Instant,
    quiet: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct StepReport {
    pub step: &'static str,
    pub outcome: &'static str,
    pub seconds: f64,
}

impl Runner {
    pub fn new(sequence: &'static str, total: usize, quiet: bool) -> Self {
        Runner {
            sequence,
            total,
            done: 0,
            started: Instant::now(),
            quiet,
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The step's progress line and its report.
    fn finish(&self, name: &'static str, outcome: &'static str, started: Instant) -> StepReport {
        let seconds = started.elapsed().as_secs_f64();
        if !self.quiet {
            eprintln!(
                "[{}] {name} ({}/{}): {outcome}, {seconds:.1}s",
                self.sequence, self.done, self.total
            );
        }
        StepReport {
            step: name,
            outcome,
            seconds,
        }
    }

    /// Runs one step. `check` answers whether the postcondition holds;
    /// `apply` converges. Both must be idempotent.
    pub async fn step<C, CF, A, AF>(
        &mut self,
        name: &'static str,
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
        self.done += 1;
        let t = Instant::now();
        let outcome = if check().await? {
            "already done"
        } else {
            match tokio::time::timeout(deadline, apply()).await {
                Ok(r) => r.map_err(|e| e.context(format!("{} step {name} failed", self.sequence)))?,
                Err(_) => anyhow::bail!(
                    "{} step {name} did not finish within {deadline:?}; see 'selfnode status' and the logs in /var/log/selfnode, then run the command again (it resumes)",
                    self.sequence
                ),
            }
            if !check().await? {
                anyhow::bail!(
                    "{} step {name} ran but its result is not there; run the command again",
                    self.sequence
                );
            }
            failpoint(name);
            "done"
        };
        Ok(self.finish(name, outcome, t))
    }

    /// A step that is idempotent by construction (it compares before it
    /// writes): it always runs and reports whether it changed anything.
    pub async fn converge<A, AF>(
        &mut self,
        name: &'static str,
        apply: A,
    ) -> anyhow::Result<StepReport>
    where
        A: FnOnce() -> AF,
        AF: Future<Output = anyhow::Result<bool>>,
    {
        self.done += 1;
        let t = Instant::now();
        let changed = apply()
            .await
            .map_err(|e| e.context(format!("{} step {name} failed", self.sequence)))?;
        let outcome = if changed { "done" } else { "already done" };
        if changed {
            failpoint(name);
        }
        Ok(self.finish(name, outcome, t))
    }

    /// A step that always runs: a wait for something outside our control.
    /// `apply` bounds itself (see [`until`]).
    pub async fn wait<A, AF>(
        &mut self,
        name: &'static str,
        what: &str,
        apply: A,
    ) -> anyhow::Result<StepReport>
    where
        A: FnOnce() -> AF,
        AF: Future<Output = anyhow::Result<()>>,
    {
        self.done += 1;
        if !self.quiet {
            eprintln!(
                "[{}] {name} ({}/{}): waiting for {what}",
                self.sequence, self.done, self.total
            );
        }
        let t = Instant::now();
        apply()
            .await
            .map_err(|e| e.context(format!("{} step {name} failed", self.sequence)))?;
        failpoint(name);
        Ok(self.finish(name, "done", t))
    }
}

/// Exits the process if the failpoint names `step`.
pub fn failpoint(step: &str) {
    if std::env::var(FAILPOINT_ENV).is_ok_and(|v| v == step) {
        eprintln!("failpoint: exiting after step {step}");
        std::process::exit(FAILPOINT_EXIT);
    }
}

/// Polls `probe` every `every` until it returns `Ok(true)`, at most
/// `deadline`; the timeout error says what was awaited and the last reason.
pub async fn until<F, Fut>(
    what: &str,
    deadline: Duration,
    every: Duration,
    mut probe: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let end = Instant::now() + deadline;
    let mut last = String::from("no answer yet");
    loop {
        match probe().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(err) => last = format!("{err:#}"),
        }
        if Instant::now() >= end {
            anyhow::bail!(
                "timed out after {}s waiting for {what} (last: {last})",
                deadline.as_secs()
            );
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn a_step_applies_only_when_its_check_fails_and_verifies_the_result() {
        let mut run = Runner::new("test", 3, true);
        let state = AtomicU32::new(0);
        let applied = AtomicU32::new(0);
        let check = || async { Ok(state.load(Ordering::SeqCst) == 1) };
        let apply = || async {
            applied.fetch_add(1, Ordering::SeqCst);
            state.store(1, Ordering::SeqCst);
            Ok(())
        };
        assert_eq!(
            run.step("s", Duration::from_secs(1), check, apply)
                .await
                .unwrap()
                .outcome,
            "done"
        );
        let again = run.step("s", Duration::from_secs(1), check, || async {
            unreachable!("already true")
        });
        assert_eq!(again.await.unwrap().outcome, "already done");
        assert_eq!(applied.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_apply_that_does_not_produce_its_result_is_an_error() {
        let mut run = Runner::new("test", 1, true);
        let err = run
            .step(
                "s",
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
        let mut run = Runner::new("test", 1, true);
        let err = run
            .step(
                "slow",
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
