//! Effects on the issue and the people: the live label set (level-triggered: derived from the
//! phase and converged until confirmed), the checklist comment, the terminal set (labels, close,
//! final checklist, the bell — each recorded in `status.effects` once done) and the bells.

use kube::runtime::controller::Action;

use super::RunReconcile;
use crate::{
    adapters::{AdapterError, notify::Outgoing},
    controller::Error,
    crd::{
        Phase,
        condition::{events, reasons},
    },
    policy::render::{self, NotificationKind},
};

impl RunReconcile {
    /// What a live, dispatched run keeps in step after each reconcile: the question's bell, the
    /// labels and the checklist.
    pub(super) async fn live_effects(&mut self, phase_changed: bool) -> Result<(), Error> {
        if self.status.question.as_ref().is_some_and(|q| !q.notified) {
            self.ring_question().await?;
        }
        if self.dispatched() {
            self.converge_live_labels(phase_changed).await?;
            self.sync_checklist().await?;
        }
        Ok(())
    }

    /// Keep the checklist comment in step with the status (created once, then edited).
    pub(super) async fn sync_checklist(&mut self) -> Result<(), Error> {
        let body = render::checklist(&self.view());
        let uid = self.uid();
        if self.ctx.checklist_cache.lock().expect("cache").get(&uid) == Some(&body) {
            return Ok(());
        }
        let tracker = self.adapters.tracker.clone();
        let (repo, issue) = (self.run.spec.repo.clone(), self.run.spec.issue);
        match self.status.checklist_comment_id {
            Some(id) => tracker.update_comment(&repo, id, &body).await?,
            None => {
                let marker = render::checklist_marker(self.run.metadata.uid.as_deref().unwrap_or_default());
                let id = match tracker.find_comment(&repo, issue, &marker).await? {
                    Some(id) => {
                        tracker.update_comment(&repo, id, &body).await?;
                        id
                    }
                    None => tracker.create_comment(&repo, issue, &body).await?,
                };
                self.status.checklist_comment_id = Some(id);
                self.save().await?;
            }
        }
        self.ctx.checklist_cache.lock().expect("cache").insert(uid, body);
        Ok(())
    }

    /// The label set a live, dispatched run implies: the in-progress label present (the visible
    /// repo lock) and no stale `ready-for-human` from an earlier attempt. Level-triggered: it is
    /// derived and converged until confirmed, on every phase change and every `label_resync`,
    /// so a label write lost to a 5xx or a crash heals (SPEC §3.2). Reading the labels is a
    /// conditional GET (a 304 costs no rate limit); the resync period keeps a busy loop from
    /// paying a counted GET after each of its own writes.
    pub(super) async fn converge_live_labels(&mut self, phase_changed: bool) -> Result<(), Error> {
        let uid = self.uid();
        let recent = self
            .ctx
            .labels_checked
            .lock()
            .expect("labels")
            .get(&uid)
            .is_some_and(|t| t.elapsed() < self.ctx.settings.label_resync);
        if recent && !phase_changed && self.status.effects.in_progress_label {
            return Ok(());
        }
        let (repo, issue) = (self.run.spec.repo.clone(), self.run.spec.issue);
        let labels = self.config.spec.labels.clone();
        let tracker = self.adapters.tracker.clone();
        let current = tracker.issue_labels(&repo, issue).await?;
        let has = |name: &str| current.iter().any(|l| l.eq_ignore_ascii_case(name));
        if !has(&labels.in_progress) {
            tracker
                .add_labels(&repo, issue, std::slice::from_ref(&labels.in_progress))
                .await?;
        }
        if has(&labels.ready_for_human) {
            tracker
                .remove_label(&repo, issue, &labels.ready_for_human)
                .await?;
        }
        self.ctx
            .labels_checked
            .lock()
            .expect("labels")
            .insert(uid, std::time::Instant::now());
        if !self.status.effects.in_progress_label {
            self.status.effects.in_progress_label = true;
            self.save().await?;
        }
        Ok(())
    }

    /// Terminal effects, each recorded in `status.effects` once done; a reconcile performs only
    /// the missing ones, so a failure part-way is finished later, never half-applied for good.
    pub(super) async fn terminal_effects(&mut self) -> Result<(), Error> {
        let phase = self.status.phase.unwrap_or(Phase::Failed);
        let (repo, issue) = (self.run.spec.repo.clone(), self.run.spec.issue);
        let tracker = self.adapters.tracker.clone();
        let labels = self.config.spec.labels.clone();
        if !self.status.effects.labels {
            tracker.remove_label(&repo, issue, &labels.in_progress).await?;
            tracker.remove_label(&repo, issue, &labels.ready).await?;
            if phase != Phase::Succeeded {
                tracker
                    .add_labels(&repo, issue, std::slice::from_ref(&labels.ready_for_human))
                    .await?;
            }
            self.status.effects.labels = true;
            self.save().await?;
        }
        if phase == Phase::Succeeded && !self.status.effects.close {
            // The commit's `Closes #N` may have closed it already.
            if tracker.issue_state(&repo, issue).await? == "open" {
                tracker.close_issue(&repo, issue).await?;
            }
            self.status.effects.close = true;
            self.save().await?;
        }
        if !self.status.effects.comment {
            self.sync_checklist().await?;
            self.status.effects.comment = true;
            self.save().await?;
        }
        if !self.status.effects.notification {
            self.ring(phase).await?;
        }
        Ok(())
    }

    /// Render the notification of `kind` for this run and send it on every channel; a channel
    /// that still fails after its bounded retries is a Warning Event (the caller records delivery).
    async fn deliver(&self, kind: NotificationKind) {
        let n = render::notification(kind, &self.view());
        let msg = Outgoing {
            title: n.title.clone(),
            body: n.body.clone(),
            ntfy_priority: n.ntfy_priority,
            tags: n.tags.iter().map(|t| t.to_string()).collect(),
            click: n.click.clone(),
            slack: render::slack_payload(&n),
        };
        for notifier in self.adapters.notifiers.clone() {
            if let Err(e) = notifier.deliver(&msg).await {
                self.event(
                    true,
                    events::NOTIFICATION_FAILED,
                    format!("{} delivery failed: {e}", notifier.channel()),
                )
                .await;
            }
        }
    }

    /// The doorbell, at least once (SPEC §3.7): the intent is recorded, then delivered, then
    /// marked delivered — a crash in between rings again after the restart. A delivery that
    /// still fails after the notifier's bounded retries is a Warning Event, never a blocked run.
    async fn ring(&mut self, phase: Phase) -> Result<(), Error> {
        let Some(kind) = NotificationKind::for_phase(phase) else {
            self.status.effects.notification = true;
            return self.save().await;
        };
        if self.status.effects.notification_intent_at.is_none() {
            self.status.effects.notification_intent_at = Some(self.time());
            self.save().await?;
        }
        self.deliver(kind).await;
        self.status.effects.notification = true;
        self.save().await
    }

    /// T3 refused the token: the run cannot make progress and must not hold its repo. It ends
    /// `Failed` (reason `ExecutorUnauthorized`) with its terminal effects and the `failed` bell.
    pub(super) async fn fail_unauthorized(&mut self, e: AdapterError) -> Result<Action, Error> {
        let before = self.status.phase.unwrap_or(Phase::Pending);
        if !before.is_terminal() {
            self.finish(
                Phase::Failed,
                reasons::EXECUTOR_UNAUTHORIZED,
                format!(
                    "T3 refused the token ({e}); mint a new one with `t3 auth session issue --token-only` and update the Secret {:?}",
                    self.config.spec.executor.t3.token_secret_ref.name
                ),
            );
            self.save().await?;
            self.record_transition(before, Phase::Failed).await;
        }
        self.terminal_effects().await?;
        Ok(Action::await_change())
    }

    /// The `needs-answer` bell for the recorded question, at least once (the question is on
    /// record before it rings; `notified` marks delivery).
    pub(super) async fn ring_question(&mut self) -> Result<(), Error> {
        self.deliver(NotificationKind::NeedsAnswer).await;
        if let Some(q) = self.status.question.as_mut() {
            q.notified = true;
        }
        self.save().await
    }
}
