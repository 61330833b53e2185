//! Status and what people see of it: the kstatus conditions derived from the phase, the phase
//! transitions (an Event, a log line, the escalation metric), and the view the checklist and the
//! notifications render.

use std::time::Duration;

use kube::{
    Resource,
    runtime::events::{Event, EventType},
};

use super::RunReconcile;
use crate::{
    controller::Error,
    crd::{
        Phase,
        condition::{Conditions, Status, reasons, types},
    },
    metrics,
    policy::{
        render::{NotificationKind, RunView},
        run_decision,
    },
};

impl RunReconcile {
    /// Set the phase with its reason and message.
    pub(super) fn set_phase(&mut self, phase: Phase, reason: &str, message: impl Into<String>) {
        self.status.phase = Some(phase);
        self.status.reason = Some(reason.to_string());
        self.status.message = Some(message.into());
    }

    /// A new run gets its first phase on record.
    pub(super) async fn settle_phase(&mut self) -> Result<(), Error> {
        if self.status.phase.is_none() {
            self.set_phase(Phase::Pending, reasons::PENDING, "waiting to be dispatched");
            self.save().await?;
        }
        Ok(())
    }

    /// `Ready`, `Reconciling` and `Stalled` from the phase, with its reason and message.
    pub(super) fn set_conditions(&mut self) {
        let phase = self.phase();
        let generation = self.run.metadata.generation;
        let now = self.time();
        let reason = self
            .status
            .reason
            .clone()
            .unwrap_or_else(|| phase.as_str().to_string());
        let message = self.status.message.clone().unwrap_or_default();
        let (ready, reconciling, stalled) = match phase {
            Phase::Succeeded => (Status::True, Status::False, Status::False),
            Phase::Cancelled => (Status::False, Status::False, Status::False),
            Phase::NeedsHuman | Phase::Frozen | Phase::Failed => (Status::False, Status::False, Status::True),
            _ => (Status::False, Status::True, Status::False),
        };
        let mut conditions = Conditions::new(&mut self.status.conditions, generation, &now);
        conditions.set(types::READY, ready, &reason, message.clone());
        conditions.set(types::RECONCILING, reconciling, &reason, message.clone());
        conditions.set(types::STALLED, stalled, &reason, message);
    }

    /// How long the fix-forward clock has run (from the first red verdict).
    pub(super) fn fix_forward_elapsed(&self) -> Duration {
        self.status
            .fix_forward
            .as_ref()
            .and_then(|f| f.first_red_at.as_ref())
            .map_or(Duration::ZERO, |t| run_decision::elapsed(t.0, self.now))
    }

    pub(super) fn view(&self) -> RunView<'_> {
        let attempts = self.status.fix_forward.as_ref().map_or(0, |f| f.attempts);
        RunView {
            name: self.run.metadata.name.as_deref().unwrap_or_default(),
            uid: self.run.metadata.uid.as_deref().unwrap_or_default(),
            repo: &self.run.spec.repo,
            issue: self.run.spec.issue,
            title: &self.run.spec.title,
            attempt: self.run.spec.attempt,
            phase: self.status.phase.unwrap_or(Phase::Pending),
            thread_id: self.status.thread_id.as_deref(),
            thread_url: self.status.thread_url.as_deref(),
            dispatched: self.dispatched(),
            commit: self.status.commit.as_deref(),
            commit_url: self.status.commit_url.as_deref(),
            ci: self.status.ci.as_ref(),
            rollout_watched: self.entry.rollout.is_some(),
            fix_forward_attempts: attempts,
            fix_forward_max_attempts: self.budgets.max_attempts,
            fix_forward_elapsed: self.fix_forward_elapsed(),
            fix_forward_max_duration: self.budgets.max_duration,
            reason: self.status.reason.as_deref(),
            message: self.status.message.as_deref(),
        }
    }

    pub(super) async fn event(&self, warning: bool, reason: &str, note: String) {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.chars().take(128).collect(),
            note: Some(note.chars().take(1024).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.ctx.recorder.publish(&ev, &self.run.object_ref(&())).await {
            tracing::debug!(error = %e, "could not publish event");
        }
    }

    /// End the run in a terminal phase (status only; effects follow).
    pub(super) fn finish(&mut self, phase: Phase, reason: &str, message: impl Into<String>) {
        self.set_phase(phase, reason, message);
        self.status.finished_at.get_or_insert(self.time());
    }

    /// The Event, the log line and the escalation metric of a phase change.
    pub(super) async fn record_transition(&self, before: Phase, after: Phase) {
        if after == before {
            return;
        }
        let escalation = matches!(after, Phase::NeedsHuman | Phase::Frozen | Phase::Failed);
        if let Some(kind) = NotificationKind::for_phase(after).filter(|_| escalation) {
            self.ctx
                .metrics
                .escalations
                .get_or_create(&metrics::Kind {
                    kind: kind.as_str().into(),
                })
                .inc();
        }
        let note = format!(
            "{} → {}: {}",
            before.as_str(),
            after.as_str(),
            self.status.message.clone().unwrap_or_default()
        );
        let reason = self
            .status
            .reason
            .clone()
            .unwrap_or_else(|| after.as_str().into());
        self.event(escalation || after == Phase::Cancelled, &reason, note)
            .await;
        tracing::info!(from = before.as_str(), to = after.as_str(), reason = %reason, "phase change");
    }
}
