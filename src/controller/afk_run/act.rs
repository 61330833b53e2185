//! Acting on T3 under ADR 0007: every command goes through [`RunReconcile::exactly_once`] — the
//! intent (with its deterministic ids) is saved before the command is sent and the receipt is
//! saved after T3 accepted it — so a crash at any point repeats the same command, which T3
//! answers from its receipt, or finds it done.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::RunReconcile;
use crate::{
    adapters::{
        AdapterError, AdapterErrorKind,
        t3::{Command, ModelSelection, TurnMessage},
    },
    controller::Error,
    crd::{
        AfkRunStatus, CommandIntent, DispatchIntent, FixForwardStatus, Phase, StageName, StageResult,
        condition::{events, reasons},
    },
    metrics,
    policy::{
        naming::{derived_id, project_id, workspace_root},
        render, run_decision,
    },
};

/// How T3 answered a command whose intent is on record.
pub(super) enum Sent {
    /// Accepted (or answered from its receipt of an earlier send); the receipt is saved.
    Accepted,
    /// Refused for good.
    Refused(AdapterError),
}

/// What a permanent refusal means for a recorded command.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The run cannot go on: no receipt is recorded and the caller ends the run.
    EndsRun,
    /// The command is done with all the same (an interrupt of a thread T3 no longer has, an
    /// answer to a request it forgot): the receipt is recorded.
    Settles,
}

impl RunReconcile {
    /// ADR 0007 as one function. The caller has put the intent on `status` (or a crash left it
    /// there): it is saved before `command` is sent; T3's acceptance is recorded by `receipt` and
    /// saved. A transient failure or a refused token leaves the intent for the next reconcile,
    /// which sends the same ids again.
    pub(super) async fn exactly_once(
        &mut self,
        command: Command,
        refusal: Refusal,
        receipt: impl FnOnce(&mut AfkRunStatus, Time),
    ) -> Result<Sent, Error> {
        self.save().await?;
        let refused = match self.adapters.executor.dispatch(&command).await {
            Ok(_) => None,
            Err(e) if e.is_transient() => return Err(e.into()),
            Err(e) if e.is_unauthorized() => return Err(Error::ExecutorUnauthorized(e)),
            Err(e) => Some(e),
        };
        match refused {
            Some(e) if refusal == Refusal::EndsRun => Ok(Sent::Refused(e)),
            refused => {
                let now = self.time();
                receipt(&mut self.status, now);
                self.save().await?;
                Ok(refused.map_or(Sent::Accepted, Sent::Refused))
            }
        }
    }

    /// The branch the agent pushes to: the allowlist entry's, else the repository's default.
    pub(super) async fn branch(&self) -> Result<String, Error> {
        match &self.entry.default_branch {
            Some(b) => Ok(b.clone()),
            None => Ok(self.adapters.tracker.default_branch(&self.run.spec.repo).await?),
        }
    }

    fn workspace_root(&self) -> String {
        self.entry.workspace_root.clone().unwrap_or_else(|| {
            workspace_root(&self.config.spec.executor.t3.workspace_base, &self.run.spec.repo)
        })
    }

    fn thread_url(&self, thread_id: &str) -> String {
        let t3 = &self.config.spec.executor.t3;
        let public = t3.public_url.clone().unwrap_or_else(|| t3.url.clone());
        t3.thread_url_template
            .replace("{publicUrl}", public.trim_end_matches('/'))
            .replace("{threadId}", thread_id)
    }

    /// Mint the dispatch intent (deterministic ids) unless a crash left one on record.
    async fn record_dispatch_intent(&mut self, root: &str) -> Result<(), Error> {
        if self.status.dispatch.is_some() {
            return Ok(());
        }
        let uid = self.uid();
        let shell = self.fresh_shell().await?;
        let (project, project_command) = match shell.project_for_root(root) {
            Some(p) => (p.id.clone(), None),
            None => (project_id(root, 0), Some(derived_id(&[&uid, "project.create"]))),
        };
        let thread_id = derived_id(&[&uid, "thread"]);
        self.status.thread_url = Some(self.thread_url(&thread_id));
        self.status.project_id = Some(project);
        self.status.thread_id = Some(thread_id);
        self.status.dispatch = Some(DispatchIntent {
            project_command_id: project_command,
            thread_command_id: derived_id(&[&uid, "thread.create"]),
            turn_command_id: derived_id(&[&uid, "thread.turn.start"]),
            message_id: derived_id(&[&uid, "message", "0"]),
            minted_at: self.time(),
            sent_at: None,
        });
        self.status.started_at.get_or_insert(self.time());
        self.set_phase(
            Phase::Dispatching,
            reasons::DISPATCHING,
            "sending the task to the executor",
        );
        Ok(())
    }

    /// The recorded-intent dispatch (SPEC §3.2): one intent, then `project.create` (when the
    /// root has no project), `thread.create` and `thread.turn.start`, the last one's receipt
    /// marking the intent sent. Returns Ok when the turn start was accepted or the run ended
    /// `Failed`.
    pub(super) async fn dispatch(&mut self) -> Result<(), Error> {
        let root = self.workspace_root();
        self.record_dispatch_intent(&root).await?;
        let intent = self.status.dispatch.clone().expect("recorded above");
        let thread_id = self.status.thread_id.clone().unwrap_or_default();
        let t3 = self.config.spec.executor.t3.clone();
        let created_at = self.now.to_string();

        if let Some(command_id) = &intent.project_command_id {
            let command = Command::ProjectCreate {
                command_id: command_id.clone(),
                project_id: self.status.project_id.clone().unwrap_or_default(),
                title: self.run.spec.repo.clone(),
                workspace_root: root.clone(),
                create_workspace_root_if_missing: t3.prepare_workspace,
                default_model_selection: None,
                created_at: created_at.clone(),
            };
            match self.exactly_once(command, Refusal::EndsRun, |_, _| {}).await? {
                Sent::Accepted => {}
                Sent::Refused(e) if e.error_kind() == AdapterErrorKind::DispatchRejected => {
                    return self.retry_project(&root).await;
                }
                Sent::Refused(e) => return self.dispatch_failed(e).await,
            }
        }
        let title: String = format!(
            "{}#{}: {}",
            self.run.spec.repo, self.run.spec.issue, self.run.spec.title
        )
        .chars()
        .take(120)
        .collect();
        let thread_create = Command::ThreadCreate {
            command_id: intent.thread_command_id.clone(),
            thread_id: thread_id.clone(),
            project_id: self.status.project_id.clone().unwrap_or_default(),
            title,
            model_selection: ModelSelection {
                instance_id: t3.instance_id.clone(),
                model: t3.model.clone(),
            },
            runtime_mode: t3.runtime_mode.as_str().into(),
            interaction_mode: "default".into(),
            branch: None,
            worktree_path: None,
            created_at: created_at.clone(),
        };
        if let Sent::Refused(e) = self
            .exactly_once(thread_create, Refusal::EndsRun, |_, _| {})
            .await?
        {
            return self.dispatch_failed(e).await;
        }
        let turn_start = Command::ThreadTurnStart {
            command_id: intent.turn_command_id.clone(),
            thread_id,
            message: TurnMessage {
                message_id: intent.message_id.clone(),
                role: "user",
                text: self.opening_prompt(&root).await?,
                attachments: vec![],
            },
            runtime_mode: t3.runtime_mode.as_str().into(),
            interaction_mode: "default".into(),
            created_at,
        };
        let sent = self
            .exactly_once(turn_start, Refusal::EndsRun, |status, now| {
                if let Some(intent) = status.dispatch.as_mut() {
                    intent.sent_at = Some(now);
                }
                status.phase = Some(Phase::Working);
                status.reason = Some(reasons::WORKING.into());
                status.message = Some("the agent is working".into());
            })
            .await?;
        if let Sent::Refused(e) = sent {
            return self.dispatch_failed(e).await;
        }
        self.dispatch_metrics("ok");
        if let Some(created) = &self.run.metadata.creation_timestamp {
            self.ctx
                .metrics
                .dispatch_latency
                .observe(run_decision::elapsed(created.0, self.now).as_secs_f64());
        }
        self.event(
            false,
            events::DISPATCHED,
            format!("{}#{} dispatched to T3", self.run.spec.repo, self.run.spec.issue),
        )
        .await;
        // The visible lock (the in-progress label) follows in `converge_live_labels`, only
        // now that the turn started.
        Ok(())
    }

    /// `project.create` was refused: the id was used before (T3 never reuses ids) or another
    /// active project holds the root. Reuse that project, or mint a fresh id; record; retry.
    async fn retry_project(&mut self, root: &str) -> Result<(), Error> {
        let shell = self.fresh_shell().await?;
        let uid = self.uid();
        let intent = self.status.dispatch.as_mut().expect("recorded");
        match shell.project_for_root(root) {
            Some(p) => {
                self.status.project_id = Some(p.id.clone());
                intent.project_command_id = None;
            }
            None => {
                self.status.project_id = Some(derived_id(&["project", root, &uid]));
                intent.project_command_id = Some(derived_id(&[&uid, "project.create", "retry"]));
            }
        }
        self.save().await?;
        Err(Error::Adapter(AdapterError::transient(
            AdapterErrorKind::ProjectRetry,
            "retrying project.create with a fresh id",
        )))
    }

    async fn opening_prompt(&self, root: &str) -> Result<String, Error> {
        let preamble = self
            .ctx
            .agents
            .issue_implementer()
            .map(|a| a.body.clone())
            .unwrap_or_default();
        let branch = self.branch().await?;
        let snapshot = &self.run.spec.task_snapshot;
        let clone_url = render::clone_url(&self.config.spec.tracker.github.api_url, &self.run.spec.repo);
        Ok(render::opening_prompt(&render::TaskPrompt {
            preamble: &preamble,
            run_name: self.run.metadata.name.as_deref().unwrap_or_default(),
            repo: &self.run.spec.repo,
            issue: self.run.spec.issue,
            default_branch: &branch,
            workspace_root: root,
            clone_url: self
                .config
                .spec
                .executor
                .t3
                .prepare_workspace
                .then_some(clone_url.as_str()),
            title: &snapshot.title,
            body: &snapshot.body,
            sha256: &snapshot.sha256,
        }))
    }

    fn dispatch_metrics(&self, result: &str) {
        self.ctx
            .metrics
            .dispatches
            .get_or_create(&metrics::Result_ {
                result: result.into(),
            })
            .inc();
    }

    async fn dispatch_failed(&mut self, e: AdapterError) -> Result<(), Error> {
        self.dispatch_metrics("permanent");
        self.finish(
            Phase::Failed,
            reasons::DISPATCH_REJECTED,
            format!("the executor rejected the dispatch: {e}"),
        );
        self.save().await
    }

    /// Send the interrupt (recorded first; T3 answers a repeat from its receipt).
    pub(super) async fn interrupt(&mut self) -> Result<(), Error> {
        let Some(thread_id) = self.status.thread_id.clone() else {
            return Ok(());
        };
        if self.status.effects.interrupt {
            return Ok(());
        }
        let uid = self.uid();
        let now = self.time();
        let intent = self.status.interrupt.get_or_insert_with(|| CommandIntent {
            command_id: derived_id(&[&uid, "thread.turn.interrupt"]),
            message_id: None,
            commit: None,
            previous_turn_id: None,
            minted_at: now,
            sent_at: None,
        });
        let command = Command::ThreadTurnInterrupt {
            command_id: intent.command_id.clone(),
            thread_id,
            turn_id: None,
            created_at: self.now.to_string(),
        };
        let sent = self
            .exactly_once(command, Refusal::Settles, |status, now| {
                if let Some(i) = status.interrupt.as_mut() {
                    i.sent_at = Some(now);
                }
                status.effects.interrupt = true;
            })
            .await?;
        if let Sent::Refused(e) = sent {
            // A thread T3 no longer has cannot be interrupted; nothing more to do.
            tracing::warn!(error = %e, "interrupt rejected");
        }
        Ok(())
    }

    /// Record the corrective turn of `attempt` and send it.
    pub(super) async fn start_corrective(
        &mut self,
        attempt: u32,
        previous_turn_id: Option<String>,
        reason: &str,
        message: String,
    ) -> Result<(), Error> {
        let uid = self.uid();
        let intent = CommandIntent {
            command_id: derived_id(&[&uid, "fix", &attempt.to_string()]),
            message_id: Some(derived_id(&[&uid, "message", &attempt.to_string()])),
            commit: self.status.commit.clone(),
            previous_turn_id,
            minted_at: self.time(),
            sent_at: None,
        };
        let fix_forward = self
            .status
            .fix_forward
            .get_or_insert_with(FixForwardStatus::default);
        fix_forward.attempts = attempt;
        fix_forward.last_turn = Some(intent);
        self.set_phase(Phase::FixingForward, reason, message);
        self.send_corrective().await
    }

    /// A corrective turn recorded and not confirmed sent (a crash left it half done) is sent
    /// again first, unless the run is being stopped.
    pub(super) async fn resume_corrective(&mut self) -> Result<(), Error> {
        let unsent = self
            .status
            .fix_forward
            .as_ref()
            .and_then(|f| f.last_turn.as_ref())
            .is_some_and(|t| t.sent_at.is_none());
        if unsent && !self.run.spec.cancel && self.config.emergency_stop().is_none() {
            self.send_corrective().await?;
        }
        Ok(())
    }

    /// Send (or re-send) the corrective turn recorded in `fixForward.lastTurn`.
    async fn send_corrective(&mut self) -> Result<(), Error> {
        let fix_forward = self.status.fix_forward.clone().unwrap_or_default();
        let Some(turn) = fix_forward.last_turn.clone() else {
            return Ok(());
        };
        let Some(thread_id) = self.status.thread_id.clone() else {
            return Ok(());
        };
        let (stage, url) = self
            .status
            .ci
            .as_ref()
            .and_then(|c| c.stages.iter().find(|s| s.result == StageResult::Failure))
            .map(|s| (s.name, s.url.clone()))
            .unwrap_or((StageName::Build, None));
        let branch = self.branch().await?;
        let text = render::corrective_prompt(&render::CorrectivePrompt {
            run_name: self.run.metadata.name.as_deref().unwrap_or_default(),
            repo: &self.run.spec.repo,
            issue: self.run.spec.issue,
            default_branch: &branch,
            commit: turn.commit.as_deref().unwrap_or_default(),
            stage,
            failing_url: url.as_deref(),
            attempt: fix_forward.attempts,
            max_attempts: self.budgets.max_attempts,
            time_left: self
                .budgets
                .max_duration
                .saturating_sub(self.fix_forward_elapsed()),
        });
        let t3 = &self.config.spec.executor.t3;
        let command = Command::ThreadTurnStart {
            command_id: turn.command_id.clone(),
            thread_id,
            message: TurnMessage {
                message_id: turn.message_id.clone().unwrap_or_default(),
                role: "user",
                text,
                attachments: vec![],
            },
            runtime_mode: t3.runtime_mode.as_str().into(),
            interaction_mode: "default".into(),
            created_at: self.now.to_string(),
        };
        let sent = self
            .exactly_once(command, Refusal::EndsRun, |status, now| {
                if let Some(t) = status.fix_forward.as_mut().and_then(|f| f.last_turn.as_mut()) {
                    t.sent_at = Some(now);
                }
            })
            .await?;
        if let Sent::Refused(e) = sent {
            self.finish(
                Phase::Failed,
                reasons::FIX_FORWARD_REJECTED,
                format!("the executor rejected the corrective turn: {e}"),
            );
            return self.save().await;
        }
        self.ctx.metrics.fix_forwards.inc();
        self.event(
            false,
            events::FIXING_FORWARD,
            format!(
                "corrective turn {} sent for {}",
                fix_forward.attempts,
                turn.commit.as_deref().unwrap_or("?")
            ),
        )
        .await;
        Ok(())
    }
}
