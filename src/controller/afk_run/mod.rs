//! The AfkRun reconcile (SPEC §3): dispatch with recorded intent, watch the thread, find the
//! pushed commit, fold CI with only the stages it needs, apply the decision table, fix forward on
//! the same thread, and perform each terminal effect at most once.
//!
//! One reconcile is a pipeline of named steps, one module each:
//! - [`observe`]: read the run fresh, dereference its config, budgets and adapters, and build the
//!   `RunObservation` (thread, commit, CI) the decision table takes;
//! - `policy::run_decision::decide`: the pure decision;
//! - [`act`]: each side effect through [`RunReconcile::exactly_once`], which records the intent,
//!   saves, sends and records the receipt (ADR 0007); [`answer`] the human-answer commands;
//! - [`effects`]: live labels (level-triggered), the checklist, the terminal set and the bells;
//! - [`status`]: conditions, Events and the view the renderings read.

mod act;
mod answer;
mod effects;
mod observe;
mod status;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, ResourceExt,
    runtime::{
        controller::Action,
        finalizer::{Event as Finalizer, finalizer},
    },
};

use super::{Adapters, BackoffKey, Context, Error, jittered, status::apply_status};
use crate::{
    crd::{AfkConfig, AfkRun, AfkRunStatus, Phase, RUN_FINALIZER, RepoEntry, condition::reasons},
    policy::run_decision::{self, Budgets, RunAction},
};

use observe::Loaded;

/// The reconcile, wrapped in the `afk.dev/cleanup` finalizer.
pub(super) async fn reconcile(run: Arc<AfkRun>, ctx: Arc<Context>) -> Result<Action, Error> {
    use tracing::Instrument;
    let span = tracing::info_span!("reconcile", run = %run.name_any(), repo = %run.spec.repo, issue = run.spec.issue);
    reconcile_inner(run, ctx).instrument(span).await
}

async fn reconcile_inner(run: Arc<AfkRun>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.time_reconcile("afkrun");
    let api: Api<AfkRun> = Api::namespaced(ctx.client.clone(), &run.namespace().unwrap_or_default());
    let key = BackoffKey::of(run.as_ref());
    let result = finalizer(&api, RUN_FINALIZER, run, |event| async {
        match event {
            Finalizer::Apply(run) => apply(run, ctx.clone(), api.clone()).await,
            Finalizer::Cleanup(run) => cleanup(run, ctx.clone(), api.clone()).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    if result.is_ok() {
        ctx.reset_backoff(&key);
    }
    result
}

/// Everything one reconcile of one run works with; `save` writes status when it changed.
pub(super) struct RunReconcile {
    run: Arc<AfkRun>,
    api: Api<AfkRun>,
    config: AfkConfig,
    entry: RepoEntry,
    adapters: Arc<Adapters>,
    ctx: Arc<Context>,
    /// The status being built (written by `save`).
    status: AfkRunStatus,
    /// The status last written (or read), so an unchanged status is not written again.
    written: Option<AfkRunStatus>,
    now: Timestamp,
    budgets: Budgets,
}

impl RunReconcile {
    fn uid(&self) -> String {
        self.run.uid().unwrap_or_else(|| self.run.name_any())
    }

    fn time(&self) -> Time {
        Time(self.now)
    }

    fn phase(&self) -> Phase {
        self.status.phase.unwrap_or(Phase::Pending)
    }

    fn dispatched(&self) -> bool {
        self.status.dispatch.as_ref().is_some_and(|d| d.sent_at.is_some())
    }

    /// Write the status (with its derived fields and conditions) when it changed.
    async fn save(&mut self) -> Result<(), Error> {
        self.status.observed_generation = self.run.metadata.generation;
        let attempts = self.status.fix_forward.as_ref().map_or(0, |f| f.attempts);
        self.status.attempts = Some(format!("{attempts}/{}", self.budgets.max_attempts));
        self.set_conditions();
        apply_status(&self.api, &self.run, self.written.as_ref(), &self.status).await?;
        self.written = Some(self.status.clone());
        Ok(())
    }

    /// One reconcile of a live run, as the pipeline: finish a half-sent intent → observe →
    /// decide → act → write status → effects → requeue.
    async fn step(&mut self) -> Result<Action, Error> {
        let before = self.phase();
        self.settle_phase().await?;
        if before.is_terminal() {
            self.terminal_effects().await?;
            return Ok(Action::await_change());
        }
        self.resume_corrective().await?;
        let observation = self.observe().await?;
        let decision = run_decision::decide(&observation);
        self.act(decision, observe::latest_turn_id(&observation)).await?;
        self.save().await?;
        let after = self.phase();
        self.record_transition(before, after).await;
        if after.is_terminal() {
            self.terminal_effects().await?;
            return Ok(Action::await_change());
        }
        self.live_effects(after != before).await?;
        Ok(Action::requeue(jittered(self.ctx.settings.run_requeue, 10)))
    }

    /// Carry out the decision's action.
    async fn act(
        &mut self,
        decision: run_decision::RunDecision,
        latest_turn_id: Option<String>,
    ) -> Result<(), Error> {
        match decision.action {
            RunAction::Settled => Ok(()),
            RunAction::Dispatch => self.dispatch().await,
            RunAction::Wait => {
                self.set_phase(decision.phase, decision.reason, decision.message);
                Ok(())
            }
            RunAction::AskHuman => self.ask_human(decision.message).await,
            RunAction::SendAnswer => self.send_answer().await,
            RunAction::ForgetQuestion => {
                self.status.question = None;
                self.set_phase(decision.phase, decision.reason, decision.message);
                Ok(())
            }
            RunAction::SendCorrectiveTurn { attempt } => {
                self.start_corrective(attempt, latest_turn_id, decision.reason, decision.message)
                    .await
            }
            RunAction::Finish { interrupt } => {
                if interrupt {
                    self.interrupt().await?;
                }
                self.finish(decision.phase, decision.reason, decision.message);
                Ok(())
            }
        }
    }
}

async fn apply(cached: Arc<AfkRun>, ctx: Arc<Context>, api: Api<AfkRun>) -> Result<Action, Error> {
    // The reflector may lag behind our own last status write; the recorded-intent protocol needs
    // the latest status, so read it fresh.
    let Some(run) = api.get_opt(&cached.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let mut reconcile = match observe::load(run, ctx, api).await? {
        Loaded::Ready(r) => r,
        Loaded::Blocked(action) => return Ok(action),
    };
    reconcile.run_step().await
}

impl RunReconcile {
    /// `step`, with T3 refusing the token turned into the run ending `Failed`.
    async fn run_step(&mut self) -> Result<Action, Error> {
        match self.step().await {
            Err(Error::ExecutorUnauthorized(e)) => self.fail_unauthorized(e).await,
            other => other,
        }
    }
}

/// Deleting a non-terminal run is a human cancel (SPEC §1.2): the turn is interrupted and the
/// `Cancelled` terminal effects — ready and in-progress labels removed, `ready-for-human` added,
/// final checklist — are done before the finalizer is released, so the AfkConfig loop does not
/// dispatch the issue again until a trusted human re-applies the ready label. The cancel is
/// recorded in status first (reason `Deleted`), so a crash part-way finishes the same effects
/// after a restart. Deleting a run that was already terminal does nothing external.
async fn cleanup(cached: Arc<AfkRun>, ctx: Arc<Context>, api: Api<AfkRun>) -> Result<Action, Error> {
    let Some(run) = api.get_opt(&cached.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let cancelled_by_delete = run.status.as_ref().and_then(|s| s.reason.as_deref()) == Some(reasons::DELETED);
    if run.is_terminal() && !cancelled_by_delete {
        return Ok(Action::await_change());
    }
    let mut reconcile = match observe::load(run, ctx, api).await? {
        Loaded::Ready(r) => r,
        // Without its config or credentials nothing external can be cleaned; do not hold the
        // deletion hostage (a namespace being deleted must finish).
        Loaded::Blocked(_) => {
            tracing::warn!("deleted run's config or Secrets are unavailable; nothing external was cleaned");
            return Ok(Action::await_change());
        }
    };
    reconcile.cancel_on_delete().await
}

impl RunReconcile {
    async fn cancel_on_delete(&mut self) -> Result<Action, Error> {
        let before = self.phase();
        if !before.is_terminal() {
            if self.dispatched() {
                match self.interrupt().await {
                    Ok(()) => {}
                    // A refused token cannot interrupt; the cancel still happens on our side.
                    Err(Error::ExecutorUnauthorized(e)) => {
                        tracing::warn!(error = %e, "interrupt on delete refused")
                    }
                    Err(e) => return Err(e),
                }
            }
            self.finish(
                Phase::Cancelled,
                reasons::DELETED,
                "the AfkRun was deleted by a human",
            );
            self.save().await?;
            self.record_transition(before, Phase::Cancelled).await;
        }
        self.terminal_effects().await?;
        Ok(Action::await_change())
    }
}
