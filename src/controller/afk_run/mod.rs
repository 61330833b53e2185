//! The AfkRun reconcile (SPEC §3): dispatch with recorded intent, watch the thread, find the
//! pushed commit, fold CI with only the stages it needs, apply the decision table, fix forward on
//! the same thread, and perform each terminal effect at most once. Every external side effect is
//! preceded by a status write recording it (ids, "attempted" flags), so a crash at any point
//! repeats an idempotent command with the same ids or skips a non-idempotent one.

use std::{sync::Arc, time::Duration};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, Resource, ResourceExt,
    runtime::{
        controller::Action,
        events::{Event, EventType},
        finalizer::{Event as Finalizer, finalizer},
    },
};

use super::{Adapters, Context, Error, status::apply_status};
use crate::{
    adapters::{
        AdapterError,
        notify::Outgoing,
        t3::{self, Command, ModelSelection, Shell, ThreadShell, TurnMessage},
    },
    crd::{
        ANSWER_ANNOTATION, AfkConfig, AfkRun, AfkRunStatus, AnswerIntent, CiStatus, CiVerdict, CommandIntent,
        DispatchIntent, FixForwardStatus, Phase, Question, QuestionItem, QuestionKind, RUN_FINALIZER,
        RepoEntry, StageName,
        condition::{Status, set_condition, types},
    },
    metrics,
    policy::{
        ci::{self, CheckRunFact, CiFold, CommitStatusFact, PipelineFact, RolloutFacts, StageReport},
        naming::{derived_id, project_id, workspace_root},
        parse::commit_belongs_to_run,
        render::{self, NotificationKind, RunView},
        run::{
            self as decide, Budgets, QuestionState, RunAction, RunObservation, SessionStatus,
            ThreadObservation, ThreadView, TurnState, TurnView,
        },
    },
};

/// The reconcile, wrapped in the `afk.dev/cleanup` finalizer.
pub(super) async fn reconcile(run: Arc<AfkRun>, ctx: Arc<Context>) -> Result<Action, Error> {
    use tracing::Instrument;
    let span = tracing::info_span!("reconcile", run = %run.name_any(), repo = %run.spec.repo, issue = run.spec.issue);
    reconcile_inner(run, ctx).instrument(span).await
}

async fn reconcile_inner(run: Arc<AfkRun>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.time_reconcile("afkrun");
    let ns = run.namespace().unwrap_or_default();
    let api: Api<AfkRun> = Api::namespaced(ctx.client.clone(), &ns);
    let key = format!("afkrun:{ns}/{}", run.name_any());
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

fn ts(s: Option<&str>) -> Option<Timestamp> {
    s.and_then(|s| s.parse().ok())
}

fn thread_view(t: &ThreadShell) -> ThreadView {
    ThreadView {
        latest_turn: t.latest_turn.as_ref().map(|lt| TurnView {
            turn_id: Some(lt.turn_id.clone()).filter(|id| !id.is_empty()),
            state: TurnState::parse(&lt.state),
            requested_at: ts(lt.requested_at.as_deref()),
            completed_at: ts(lt.completed_at.as_deref()),
        }),
        session: t.session.as_ref().map(|s| SessionStatus::parse(&s.status)),
        session_updated_at: t.session.as_ref().and_then(|s| ts(s.updated_at.as_deref())),
        pending_approval: t.has_pending_approvals,
        pending_user_input: t.has_pending_user_input,
    }
}

fn budgets(config: &AfkConfig) -> Result<Budgets, String> {
    let b = &config.spec.budgets;
    Ok(Budgets {
        max_attempts: b.fix_forward_max_attempts,
        max_duration: b.fix_forward_max_duration.to_std().map_err(|e| e.to_string())?,
        stall_timeout: b.stall_timeout.to_std().map_err(|e| e.to_string())?,
        pre_escalation_grace: b.pre_escalation_grace.to_std().map_err(|e| e.to_string())?,
        answer_timeout: b.answer_timeout.to_std().map_err(|e| e.to_string())?,
    })
}

/// Everything one reconcile of one run works with; `save` writes status when it changed.
struct Work {
    run: Arc<AfkRun>,
    api: Api<AfkRun>,
    config: AfkConfig,
    entry: RepoEntry,
    adapters: Arc<Adapters>,
    ctx: Arc<Context>,
    st: AfkRunStatus,
    written: Option<AfkRunStatus>,
    now: Timestamp,
    budgets: Budgets,
}

impl Work {
    fn uid(&self) -> String {
        self.run.uid().unwrap_or_else(|| self.run.name_any())
    }

    fn time(&self) -> Time {
        Time(self.now)
    }

    async fn save(&mut self) -> Result<(), Error> {
        self.st.observed_generation = self.run.metadata.generation;
        let ff = self.st.fix_forward.as_ref().map_or(0, |f| f.attempts);
        self.st.attempts = Some(format!("{ff}/{}", self.budgets.max_attempts));
        self.set_conditions();
        apply_status(&self.api, &self.run, self.written.as_ref(), &self.st).await?;
        self.written = Some(self.st.clone());
        Ok(())
    }

    fn set_conditions(&mut self) {
        let phase = self.st.phase.unwrap_or(Phase::Pending);
        let generation = self.run.metadata.generation;
        let now = self.time();
        let reason = self
            .st
            .reason
            .clone()
            .unwrap_or_else(|| phase.as_str().to_string());
        let message = self.st.message.clone().unwrap_or_default();
        let c = &mut self.st.conditions;
        let (ready, reconciling, stalled) = match phase {
            Phase::Succeeded => (Status::True, Status::False, Status::False),
            Phase::Cancelled => (Status::False, Status::False, Status::False),
            Phase::NeedsHuman | Phase::Frozen | Phase::Failed => (Status::False, Status::False, Status::True),
            _ => (Status::False, Status::True, Status::False),
        };
        set_condition(c, types::READY, ready, &reason, message.clone(), generation, &now);
        set_condition(
            c,
            types::RECONCILING,
            reconciling,
            &reason,
            message.clone(),
            generation,
            &now,
        );
        set_condition(c, types::STALLED, stalled, &reason, message, generation, &now);
    }

    /// The branch the agent pushes to: the allowlist entry's, else the repository's default.
    async fn branch(&self) -> Result<String, Error> {
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

    fn view(&self) -> RunView<'_> {
        let ff = self.st.fix_forward.clone().unwrap_or_default();
        let elapsed = ff
            .first_red_at
            .as_ref()
            .map_or(Duration::ZERO, |t| decide::elapsed(t.0, self.now));
        RunView {
            name: self.run.metadata.name.as_deref().unwrap_or_default(),
            uid: self.run.metadata.uid.as_deref().unwrap_or_default(),
            repo: &self.run.spec.repo,
            issue: self.run.spec.issue,
            title: &self.run.spec.title,
            attempt: self.run.spec.attempt,
            phase: self.st.phase.unwrap_or(Phase::Pending),
            thread_id: self.st.thread_id.as_deref(),
            thread_url: self.st.thread_url.as_deref(),
            dispatched: self.st.dispatch.as_ref().is_some_and(|d| d.sent_at.is_some()),
            commit: self.st.commit.as_deref(),
            commit_url: self.st.commit_url.as_deref(),
            ci: self.st.ci.as_ref(),
            rollout_watched: self.entry.rollout.is_some(),
            fix_forward_attempts: ff.attempts,
            fix_forward_max_attempts: self.budgets.max_attempts,
            fix_forward_elapsed: elapsed,
            fix_forward_max_duration: self.budgets.max_duration,
            reason: self.st.reason.as_deref(),
            message: self.st.message.as_deref(),
        }
    }

    async fn event(&self, warning: bool, reason: &str, note: String) {
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
    fn finish(&mut self, phase: Phase, reason: &str, message: impl Into<String>) {
        self.st.phase = Some(phase);
        self.st.reason = Some(reason.to_string());
        self.st.message = Some(message.into());
        self.st.finished_at.get_or_insert(self.time());
    }

    async fn t3(&self, command: Command) -> Result<(), AdapterError> {
        self.adapters.executor.dispatch(&command).await.map(|_| ())
    }

    /// Keep the checklist comment in step with the status (created once, then edited).
    async fn sync_checklist(&mut self) -> Result<(), Error> {
        let body = render::checklist(&self.view());
        let uid = self.uid();
        if self.ctx.checklist_cache.lock().expect("cache").get(&uid) == Some(&body) {
            return Ok(());
        }
        let tracker = self.adapters.tracker.clone();
        let (repo, issue) = (self.run.spec.repo.clone(), self.run.spec.issue);
        match self.st.checklist_comment_id {
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
                self.st.checklist_comment_id = Some(id);
                self.save().await?;
            }
        }
        self.ctx.checklist_cache.lock().expect("cache").insert(uid, body);
        Ok(())
    }

    /// The recorded-intent dispatch (SPEC §3.2). Returns Ok when the turn start was accepted or
    /// the run ended `Failed`.
    async fn dispatch(&mut self) -> Result<(), Error> {
        let uid = self.uid();
        let root = self.workspace_root();
        if self.st.dispatch.is_none() {
            let shell = self.adapters.executor.shell().await.map_err(executor_error)?;
            let (project, project_cmd) = match shell.project_for_root(&root) {
                Some(p) => (p.id.clone(), None),
                None => (project_id(&root, 0), Some(derived_id(&[&uid, "project.create"]))),
            };
            let thread_id = derived_id(&[&uid, "thread"]);
            self.st.thread_url = Some(self.thread_url(&thread_id));
            self.st.project_id = Some(project);
            self.st.thread_id = Some(thread_id);
            self.st.dispatch = Some(DispatchIntent {
                project_command_id: project_cmd,
                thread_command_id: derived_id(&[&uid, "thread.create"]),
                turn_command_id: derived_id(&[&uid, "thread.turn.start"]),
                message_id: derived_id(&[&uid, "message", "0"]),
                minted_at: self.time(),
                sent_at: None,
            });
            self.st.started_at.get_or_insert(self.time());
            self.st.phase = Some(Phase::Dispatching);
            self.st.reason = Some("Dispatching".into());
            self.st.message = Some("sending the task to the executor".into());
            // The intent is on the record before anything is sent.
            self.save().await?;
        }
        let d = self.st.dispatch.clone().expect("recorded above");
        let project = self.st.project_id.clone().unwrap_or_default();
        let thread_id = self.st.thread_id.clone().unwrap_or_default();
        let t3 = self.config.spec.executor.t3.clone();
        let created_at = self.now.to_string();

        if let Some(cmd) = &d.project_command_id {
            let title = self.run.spec.repo.clone();
            let res = self
                .t3(Command::ProjectCreate {
                    command_id: cmd.clone(),
                    project_id: project.clone(),
                    title,
                    workspace_root: root.clone(),
                    create_workspace_root_if_missing: t3.prepare_workspace,
                    default_model_selection: None,
                    created_at: created_at.clone(),
                })
                .await;
            match res {
                Ok(()) => {}
                Err(e) if e.kind == "dispatch_rejected" => {
                    // The id was used before (T3 never reuses ids) or another active project
                    // holds the root: reuse that project, or mint a fresh id, record, retry.
                    let shell = self.adapters.executor.shell().await.map_err(executor_error)?;
                    let intent = self.st.dispatch.as_mut().expect("recorded");
                    match shell.project_for_root(&root) {
                        Some(p) => {
                            self.st.project_id = Some(p.id.clone());
                            intent.project_command_id = None;
                        }
                        None => {
                            self.st.project_id = Some(derived_id(&["project", &root, &uid]));
                            intent.project_command_id = Some(derived_id(&[&uid, "project.create", "retry"]));
                        }
                    }
                    self.save().await?;
                    return Err(Error::Adapter(AdapterError::transient(
                        "project_retry",
                        "retrying project.create with a fresh id",
                    )));
                }
                Err(e) if e.is_transient() => return Err(e.into()),
                Err(e) if e.is_unauthorized() => return Err(Error::ExecutorUnauthorized(e)),
                Err(e) => return self.dispatch_failed(e).await,
            }
        }
        let selection = ModelSelection {
            instance_id: t3.instance_id.clone(),
            model: t3.model.clone(),
        };
        let title: String = format!(
            "{}#{}: {}",
            self.run.spec.repo, self.run.spec.issue, self.run.spec.title
        )
        .chars()
        .take(120)
        .collect();
        match self
            .t3(Command::ThreadCreate {
                command_id: d.thread_command_id.clone(),
                thread_id: thread_id.clone(),
                project_id: self.st.project_id.clone().unwrap_or(project),
                title,
                model_selection: selection,
                runtime_mode: t3.runtime_mode.as_str().into(),
                interaction_mode: "default".into(),
                branch: None,
                worktree_path: None,
                created_at: created_at.clone(),
            })
            .await
        {
            Ok(()) => {}
            Err(e) if e.is_transient() => return Err(e.into()),
            Err(e) if e.is_unauthorized() => return Err(Error::ExecutorUnauthorized(e)),
            Err(e) => return self.dispatch_failed(e).await,
        }
        let preamble = self
            .ctx
            .agents
            .issue_implementer()
            .map(|a| a.body.clone())
            .unwrap_or_default();
        let branch = self.branch().await?;
        let snapshot = &self.run.spec.task_snapshot;
        let clone_url = render::clone_url(&self.config.spec.tracker.github.api_url, &self.run.spec.repo);
        let text = render::opening_prompt(&render::TaskPrompt {
            preamble: &preamble,
            run_name: self.run.metadata.name.as_deref().unwrap_or_default(),
            repo: &self.run.spec.repo,
            issue: self.run.spec.issue,
            default_branch: &branch,
            workspace_root: &root,
            clone_url: t3.prepare_workspace.then_some(clone_url.as_str()),
            title: &snapshot.title,
            body: &snapshot.body,
            sha256: &snapshot.sha256,
        });
        match self
            .t3(Command::ThreadTurnStart {
                command_id: d.turn_command_id.clone(),
                thread_id,
                message: TurnMessage {
                    message_id: d.message_id.clone(),
                    role: "user",
                    text,
                    attachments: vec![],
                },
                runtime_mode: t3.runtime_mode.as_str().into(),
                interaction_mode: "default".into(),
                created_at,
            })
            .await
        {
            Ok(()) => {}
            Err(e) if e.is_transient() => return Err(e.into()),
            Err(e) if e.is_unauthorized() => return Err(Error::ExecutorUnauthorized(e)),
            Err(e) => return self.dispatch_failed(e).await,
        }
        if let Some(intent) = self.st.dispatch.as_mut() {
            intent.sent_at = Some(Time(self.now));
        }
        self.st.phase = Some(Phase::Working);
        self.st.reason = Some("Working".into());
        self.st.message = Some("the agent is working".into());
        self.ctx
            .metrics
            .dispatches
            .get_or_create(&metrics::Result_ { result: "ok".into() })
            .inc();
        if let Some(created) = &self.run.metadata.creation_timestamp {
            self.ctx
                .metrics
                .dispatch_latency
                .observe(decide::elapsed(created.0, self.now).as_secs_f64());
        }
        self.save().await?;
        self.event(
            false,
            "Dispatched",
            format!("{}#{} dispatched to T3", self.run.spec.repo, self.run.spec.issue),
        )
        .await;
        // The visible lock (the in-progress label) follows in `converge_live_labels`, only
        // now that the turn started.
        Ok(())
    }

    async fn dispatch_failed(&mut self, e: AdapterError) -> Result<(), Error> {
        self.ctx
            .metrics
            .dispatches
            .get_or_create(&metrics::Result_ {
                result: "permanent".into(),
            })
            .inc();
        self.finish(
            Phase::Failed,
            "DispatchRejected",
            format!("the executor rejected the dispatch: {e}"),
        );
        self.save().await
    }

    /// Send the interrupt (recorded first; T3 answers a repeat from its receipt).
    async fn interrupt(&mut self) -> Result<(), Error> {
        let Some(thread_id) = self.st.thread_id.clone() else {
            return Ok(());
        };
        if self.st.effects.interrupt {
            return Ok(());
        }
        if self.st.interrupt.is_none() {
            self.st.interrupt = Some(CommandIntent {
                command_id: derived_id(&[&self.uid(), "thread.turn.interrupt"]),
                message_id: None,
                commit: None,
                previous_turn_id: None,
                minted_at: self.time(),
                sent_at: None,
            });
            self.save().await?;
        }
        let cmd = self.st.interrupt.as_ref().expect("recorded").command_id.clone();
        match self
            .t3(Command::ThreadTurnInterrupt {
                command_id: cmd,
                thread_id,
                turn_id: None,
                created_at: self.now.to_string(),
            })
            .await
        {
            Ok(()) => {}
            Err(e) if e.is_transient() => return Err(e.into()),
            // Not interrupted: the agent may still be running, which the run must say.
            Err(e) if e.is_unauthorized() => return Err(Error::ExecutorUnauthorized(e)),
            // A thread T3 no longer has cannot be interrupted; nothing more to do.
            Err(e) => tracing::warn!(error = %e, "interrupt rejected"),
        }
        if let Some(i) = self.st.interrupt.as_mut() {
            i.sent_at = Some(Time(self.now));
        }
        self.st.effects.interrupt = true;
        self.save().await
    }

    /// Send (or re-send) the corrective turn recorded in `fixForward.lastTurn`.
    async fn send_corrective(&mut self) -> Result<(), Error> {
        let ff = self.st.fix_forward.clone().unwrap_or_default();
        let Some(turn) = ff.last_turn.clone() else {
            return Ok(());
        };
        let Some(thread_id) = self.st.thread_id.clone() else {
            return Ok(());
        };
        let (stage, url) = self
            .st
            .ci
            .as_ref()
            .and_then(|c| {
                c.stages
                    .iter()
                    .find(|s| s.result == crate::crd::StageResult::Failure)
            })
            .map(|s| (s.name, s.url.clone()))
            .unwrap_or((StageName::Build, None));
        let branch = self.branch().await?;
        let elapsed = ff
            .first_red_at
            .as_ref()
            .map_or(Duration::ZERO, |t| decide::elapsed(t.0, self.now));
        let text = render::corrective_prompt(&render::CorrectivePrompt {
            run_name: self.run.metadata.name.as_deref().unwrap_or_default(),
            repo: &self.run.spec.repo,
            issue: self.run.spec.issue,
            default_branch: &branch,
            commit: turn.commit.as_deref().unwrap_or_default(),
            stage,
            failing_url: url.as_deref(),
            attempt: ff.attempts,
            max_attempts: self.budgets.max_attempts,
            time_left: self.budgets.max_duration.saturating_sub(elapsed),
        });
        let t3 = &self.config.spec.executor.t3;
        let res = self
            .t3(Command::ThreadTurnStart {
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
            })
            .await;
        match res {
            Ok(()) => {}
            Err(e) if e.is_transient() => return Err(e.into()),
            Err(e) if e.is_unauthorized() => return Err(Error::ExecutorUnauthorized(e)),
            Err(e) => {
                self.finish(
                    Phase::Failed,
                    "FixForwardRejected",
                    format!("the executor rejected the corrective turn: {e}"),
                );
                return self.save().await;
            }
        }
        if let Some(t) = self.st.fix_forward.as_mut().and_then(|f| f.last_turn.as_mut()) {
            t.sent_at = Some(Time(self.now));
        }
        self.ctx.metrics.fix_forwards.inc();
        self.save().await?;
        self.event(
            false,
            "FixingForward",
            format!(
                "corrective turn {} sent for {}",
                ff.attempts,
                turn.commit.as_deref().unwrap_or("?")
            ),
        )
        .await;
        Ok(())
    }

    /// The newest commit on the default branch that belongs to this run.
    async fn discover_commit(&mut self) -> Result<(), Error> {
        let Some(started) = self.st.started_at.as_ref().map(|t| t.0) else {
            return Ok(());
        };
        let branch = self.branch().await?;
        // A little slack for clock skew between us and GitHub.
        let since = started
            .checked_sub(jiff::SignedDuration::from_secs(300))
            .unwrap_or(started);
        let commits = self
            .adapters
            .tracker
            .commits_since(&self.run.spec.repo, &branch, since)
            .await?;
        let name = self.run.metadata.name.clone().unwrap_or_default();
        if let Some(c) = commits
            .iter()
            .find(|c| commit_belongs_to_run(&c.message, &self.run.spec.repo, self.run.spec.issue, &name))
            && self.st.commit.as_deref() != Some(c.sha.as_str())
        {
            self.st.commit = Some(c.sha.clone());
            self.st.commit_url = c.html_url.clone();
            self.st.pushed_at.get_or_insert(self.time());
            self.st.ci = None;
        }
        Ok(())
    }

    /// Fold CI for the commit, querying only the stages needed.
    async fn fold_ci(&mut self, sha: &str) -> Result<CiStatus, Error> {
        let mut stages = vec![];
        if self.config.spec.ci.github_checks.enabled {
            stages.push(StageName::Build);
        }
        if self.adapters.deploy.is_some() && self.entry.woodpecker_repo_id.is_some() {
            stages.push(StageName::Deploy);
        }
        if self.entry.rollout.is_some() {
            stages.push(StageName::Rollout);
        }
        let mut fold = CiFold::new(&stages);
        while let Some(stage) = fold.next_stage() {
            let report = match stage {
                StageName::Build => {
                    let repo = &self.run.spec.repo;
                    let checks = self.adapters.tracker.check_runs(repo, sha).await?;
                    let statuses = self.adapters.tracker.commit_statuses(repo, sha).await?;
                    let checks: Vec<CheckRunFact> = checks
                        .into_iter()
                        .map(|c| CheckRunFact {
                            name: c.name,
                            status: c.status,
                            conclusion: c.conclusion,
                            url: c.html_url,
                        })
                        .collect();
                    let statuses: Vec<CommitStatusFact> = statuses
                        .into_iter()
                        .map(|s| CommitStatusFact {
                            context: s.context,
                            state: s.state,
                            url: s.target_url,
                        })
                        .collect();
                    ci::build_stage(
                        &checks,
                        &statuses,
                        &self.config.spec.ci.github_checks.required_checks,
                    )
                }
                StageName::Deploy => {
                    let (Some(deploy), Some(id)) =
                        (self.adapters.deploy.clone(), self.entry.woodpecker_repo_id)
                    else {
                        break;
                    };
                    let pipelines = deploy.pipelines_for_commit(id, sha).await?;
                    ci::deploy_stage(
                        &pipelines
                            .into_iter()
                            .map(|p| PipelineFact {
                                status: p.status,
                                url: Some(p.url),
                            })
                            .collect::<Vec<_>>(),
                    )
                }
                StageName::Rollout => {
                    let Some(target) = self.entry.rollout.clone() else {
                        break;
                    };
                    let d = self
                        .adapters
                        .rollout
                        .deployment_state(&target.namespace, &target.deployment, target.container.as_deref())
                        .await?;
                    let images: Vec<&str> = d.images.iter().map(String::as_str).collect();
                    let facts = RolloutFacts {
                        exists: d.exists,
                        template_has_commit: ci::template_carries_commit(
                            &images,
                            d.commit_annotation.as_deref(),
                            sha,
                        ),
                        generation: d.generation,
                        observed_generation: d.observed_generation,
                        replicas: d.replicas,
                        updated_replicas: d.updated_replicas,
                        available_replicas: d.available_replicas,
                        total_replicas: d.total_replicas,
                        progress_deadline_exceeded: d.progress_deadline_exceeded,
                        crash_looping: d
                            .failing_pod_images
                            .iter()
                            .any(|i| ci::template_carries_commit(&[i.as_str()], None, sha)),
                    };
                    let mut r = ci::rollout_stage(&facts);
                    if r.url.is_none() {
                        r.url = Some(format!("deployment/{}/{}", target.namespace, target.deployment));
                    }
                    r
                }
            };
            fold.record(
                stage,
                StageReport {
                    result: report.result,
                    url: report.url,
                },
            );
        }
        Ok(fold.finish())
    }

    /// The label set a live, dispatched run implies: the in-progress label present (the visible
    /// repo lock) and no stale `ready-for-human` from an earlier attempt. Level-triggered: it is
    /// derived and converged until confirmed, on every phase change and every `label_resync`,
    /// so a label write lost to a 5xx or a crash heals (SPEC §3.2). Reading the labels is a
    /// conditional GET (a 304 costs no rate limit); the resync period keeps a busy loop from
    /// paying a counted GET after each of its own writes.
    async fn converge_live_labels(&mut self, phase_changed: bool) -> Result<(), Error> {
        let uid = self.uid();
        let recent = self
            .ctx
            .labels_checked
            .lock()
            .expect("labels")
            .get(&uid)
            .is_some_and(|t| t.elapsed() < self.ctx.settings.label_resync);
        if recent && !phase_changed && self.st.effects.in_progress_label {
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
        if !self.st.effects.in_progress_label {
            self.st.effects.in_progress_label = true;
            self.save().await?;
        }
        Ok(())
    }

    /// Terminal effects, each recorded in `status.effects` once done; a reconcile performs only
    /// the missing ones, so a failure part-way is finished later, never half-applied for good.
    async fn terminal_effects(&mut self) -> Result<(), Error> {
        let phase = self.st.phase.unwrap_or(Phase::Failed);
        let (repo, issue) = (self.run.spec.repo.clone(), self.run.spec.issue);
        let tracker = self.adapters.tracker.clone();
        let labels = self.config.spec.labels.clone();
        if !self.st.effects.labels {
            tracker.remove_label(&repo, issue, &labels.in_progress).await?;
            tracker.remove_label(&repo, issue, &labels.ready).await?;
            if phase != Phase::Succeeded {
                tracker
                    .add_labels(&repo, issue, std::slice::from_ref(&labels.ready_for_human))
                    .await?;
            }
            self.st.effects.labels = true;
            self.save().await?;
        }
        if phase == Phase::Succeeded && !self.st.effects.close {
            // The commit's `Closes #N` may have closed it already.
            if tracker.issue_state(&repo, issue).await? == "open" {
                tracker.close_issue(&repo, issue).await?;
            }
            self.st.effects.close = true;
            self.save().await?;
        }
        if !self.st.effects.comment {
            self.sync_checklist().await?;
            self.st.effects.comment = true;
            self.save().await?;
        }
        if !self.st.effects.notification {
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
                    "NotificationFailed",
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
            self.st.effects.notification = true;
            return self.save().await;
        };
        if self.st.effects.notification_intent_at.is_none() {
            self.st.effects.notification_intent_at = Some(self.time());
            self.save().await?;
        }
        self.deliver(kind).await;
        self.st.effects.notification = true;
        self.save().await
    }

    /// The Event, the log line and the escalation metric of a phase change.
    async fn record_transition(&self, before: Phase, after: Phase) {
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
            self.st.message.clone().unwrap_or_default()
        );
        let reason = self.st.reason.clone().unwrap_or_else(|| after.as_str().into());
        self.event(escalation || after == Phase::Cancelled, &reason, note)
            .await;
        tracing::info!(from = before.as_str(), to = after.as_str(), reason = %reason, "phase change");
    }

    /// T3 refused the token: the run cannot make progress and must not hold its repo. It ends
    /// `Failed` (reason `ExecutorUnauthorized`) with its terminal effects and the `failed` bell.
    async fn fail_unauthorized(&mut self, e: AdapterError) -> Result<Action, Error> {
        let before = self.st.phase.unwrap_or(Phase::Pending);
        if !before.is_terminal() {
            self.finish(
                Phase::Failed,
                "ExecutorUnauthorized",
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

    /// The shell (cached for a second across runs), with T3 refusing the token made typed.
    async fn shell(&self) -> Result<Arc<Shell>, Error> {
        self.adapters.shell().await.map_err(executor_error)
    }

    /// A recorded answer whose respond command is not confirmed sent yet (a crash between
    /// recording and sending): it is re-sent with the same `commandId`.
    fn answer_in_flight(&self, request_id: &str) -> bool {
        self.st
            .answer
            .as_ref()
            .is_some_and(|a| a.request_id == request_id && a.sent_at.is_none())
    }

    /// The human's answer from the `afk.dev/answer` annotation, when it answers the recorded
    /// question: `Ok(Some)` to send, `Err(why)` when it is stale or malformed (it is then removed
    /// with a Warning Event), `Ok(None)` when there is none.
    fn recorded_answer(&self) -> Option<Result<Respond, String>> {
        let raw = self.run.annotations().get(ANSWER_ANNOTATION)?;
        let question = self.st.question.as_ref()?;
        Some(parse_answer(question, raw))
    }

    /// Record what the agent waits on (read from the thread's activities) and wait for a human.
    async fn ask_human(&mut self, message: String) -> Result<(), Error> {
        let Some(thread_id) = self.st.thread_id.clone() else {
            return Ok(());
        };
        let detail = self
            .adapters
            .executor
            .thread(&thread_id)
            .await
            .map_err(executor_error)?;
        let Some(pending) = t3::pending_request(&detail) else {
            // The flags say pending but the activities do not (yet): look again next time.
            return Ok(());
        };
        if self
            .st
            .answer
            .as_ref()
            .is_some_and(|a| a.request_id == pending.request_id)
        {
            // Already answered; T3 has not caught up.
            return Ok(());
        }
        let question = question_from(&pending, self.time());
        self.st.message = Some(
            format!("{message}: {}", question.text)
                .chars()
                .take(1024)
                .collect(),
        );
        self.st.question = Some(question);
        self.st.phase = Some(Phase::WaitingForHuman);
        self.st.reason = Some("WaitingForAnswer".into());
        self.save().await
    }

    /// The `needs-answer` bell for the recorded question, at least once (the question is on
    /// record before it rings; `notified` marks delivery).
    async fn ring_question(&mut self) -> Result<(), Error> {
        self.deliver(NotificationKind::NeedsAnswer).await;
        if let Some(q) = self.st.question.as_mut() {
            q.notified = true;
        }
        self.save().await
    }

    /// Send the human's answer exactly once: record the intent (deterministic `commandId`),
    /// send, record the receipt, then drop the question and the annotation.
    async fn send_answer(&mut self) -> Result<(), Error> {
        let Some(question) = self.st.question.clone() else {
            return Ok(());
        };
        let Some(thread_id) = self.st.thread_id.clone() else {
            return Ok(());
        };
        let respond = match (
            self.answer_in_flight(&question.request_id),
            self.recorded_answer(),
        ) {
            (_, Some(Ok(r))) => r,
            // Recorded, not confirmed sent, and the annotation was removed by hand: nothing left
            // to send; wait for a new answer.
            (true, _) => {
                tracing::warn!("answer recorded but its annotation is gone; waiting for a new answer");
                self.st.answer = None;
                return self.save().await;
            }
            (false, Some(Err(why))) => {
                self.event(true, "InvalidAnswer", why).await;
                self.remove_answer_annotation().await?;
                return Ok(());
            }
            (false, None) => return Ok(()),
        };
        if !self.answer_in_flight(&question.request_id) {
            self.st.answer = Some(AnswerIntent {
                request_id: question.request_id.clone(),
                command_id: derived_id(&[&self.uid(), "answer", &question.request_id]),
                by: respond.by.clone(),
                minted_at: self.time(),
                sent_at: None,
            });
            self.save().await?;
        }
        let command_id = self.st.answer.as_ref().expect("recorded").command_id.clone();
        let created_at = self.now.to_string();
        let command = match respond.body {
            RespondBody::Decision(decision) => Command::ThreadApprovalRespond {
                command_id,
                thread_id,
                request_id: question.request_id.clone(),
                decision,
                created_at,
            },
            RespondBody::Answers(answers) => Command::ThreadUserInputRespond {
                command_id,
                thread_id,
                request_id: question.request_id.clone(),
                answers,
                created_at,
            },
        };
        match self.adapters.executor.dispatch(&command).await {
            Ok(_) => {}
            Err(e) if e.is_transient() => return Err(e.into()),
            Err(e) if e.is_unauthorized() => return Err(Error::ExecutorUnauthorized(e)),
            Err(e) => {
                // T3 rejected it for good (a request it no longer knows): say so and wait for
                // the thread to show what it waits on now.
                self.event(true, "AnswerRejected", format!("T3 rejected the answer: {e}"))
                    .await;
            }
        }
        let now = self.time();
        if let Some(a) = self.st.answer.as_mut() {
            a.sent_at = Some(now);
        }
        self.st.question = None;
        self.st.phase = Some(Phase::Working);
        self.st.reason = Some("Answered".into());
        self.st.message = Some(format!(
            "{} answered; the agent is working",
            respond.by.as_deref().unwrap_or("a human")
        ));
        self.save().await?;
        self.event(
            false,
            "Answered",
            format!("answer to {} sent to the agent", question.request_id),
        )
        .await;
        self.remove_answer_annotation().await
    }

    /// Remove `afk.dev/answer` (a metadata patch; the answer is in status by now).
    async fn remove_answer_annotation(&self) -> Result<(), Error> {
        if !self.run.annotations().contains_key(ANSWER_ANNOTATION) {
            return Ok(());
        }
        let patch = serde_json::json!({"metadata": {"annotations": {ANSWER_ANNOTATION: null}}});
        self.api
            .patch(
                &self.run.name_any(),
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await?;
        Ok(())
    }

    /// One reconcile of a live run: finish a half-sent intent, observe, decide, act, write
    /// status, converge labels and the checklist.
    async fn step(&mut self) -> Result<Action, Error> {
        let run = self.run.clone();
        let before = self.st.phase.unwrap_or(Phase::Pending);
        if self.st.phase.is_none() {
            self.st.phase = Some(Phase::Pending);
            self.st.reason = Some("Pending".into());
            self.st.message = Some("waiting to be dispatched".into());
            self.save().await?;
        }
        if before.is_terminal() {
            self.terminal_effects().await?;
            return Ok(Action::await_change());
        }

        // Finish any recorded intent first (a crash left it half done).
        if let Some(t) = self.st.fix_forward.as_ref().and_then(|f| f.last_turn.as_ref())
            && t.sent_at.is_none()
            && !run.spec.cancel
            && self.config.emergency_stop().is_none()
        {
            self.send_corrective().await?;
        }

        let now = self.now;
        let dispatched_at = self
            .st
            .dispatch
            .as_ref()
            .and_then(|d| d.sent_at.as_ref())
            .map(|t| t.0);
        let thread = match (self.st.thread_id.clone(), dispatched_at) {
            (Some(id), Some(_)) => match self.shell().await {
                Ok(shell) => shell.thread(&id).map_or(ThreadObservation::Unknown, |t| {
                    ThreadObservation::Seen(thread_view(t))
                }),
                Err(Error::ExecutorUnauthorized(e)) => return Err(Error::ExecutorUnauthorized(e)),
                Err(e) => {
                    tracing::debug!(error = %e, "shell poll failed");
                    ThreadObservation::Unknown
                }
            },
            (Some(_), None) => ThreadObservation::Unknown,
            (None, _) => ThreadObservation::NotDispatched,
        };
        if dispatched_at.is_some() {
            self.discover_commit().await?;
        }
        if let Some(sha) = self.st.commit.clone() {
            let ci = self.fold_ci(&sha).await?;
            if ci.verdict == CiVerdict::Red {
                let ff = self.st.fix_forward.get_or_insert_with(FixForwardStatus::default);
                ff.first_red_at.get_or_insert(Time(now));
            }
            self.st.ci = Some(ci);
        }
        let ff = self.st.fix_forward.clone().unwrap_or_default();
        let last_turn_sent = [
            dispatched_at,
            ff.last_turn
                .as_ref()
                .and_then(|t| t.sent_at.as_ref())
                .map(|t| t.0),
        ]
        .into_iter()
        .flatten()
        .max();
        let obs = RunObservation {
            phase: self.st.phase.unwrap_or(Phase::Pending),
            cancel_requested: run.spec.cancel,
            emergency_stop: self.config.emergency_stop().is_some(),
            suspended: self.config.spec.suspend,
            last_turn_sent_at: last_turn_sent,
            last_turn_commit: ff.last_turn.as_ref().and_then(|t| t.commit.clone()),
            previous_turn_id: ff.last_turn.as_ref().and_then(|t| t.previous_turn_id.clone()),
            question: self.st.question.as_ref().map(|q| QuestionState {
                asked_at: q.asked_at.0,
                answer_ready: self.answer_in_flight(&q.request_id) || self.recorded_answer().is_some(),
            }),
            resumed_at: self
                .st
                .answer
                .as_ref()
                .and_then(|a| a.sent_at.as_ref())
                .map(|t| t.0),
            thread,
            commit: self.st.commit.clone(),
            ci: self.st.ci.as_ref().map(|c| c.verdict),
            fix_forward_attempts: ff.attempts,
            first_red_at: ff.first_red_at.as_ref().map(|t| t.0),
            budgets: self.budgets.clone(),
            now,
        };
        let latest_turn_id = match &obs.thread {
            ThreadObservation::Seen(v) => v.latest_turn.as_ref().and_then(|t| t.turn_id.clone()),
            _ => None,
        };
        let decision = decide::decide(&obs);
        match decision.action {
            RunAction::Settled => {}
            RunAction::Dispatch => self.dispatch().await?,
            RunAction::Wait => {
                self.st.phase = Some(decision.phase);
                self.st.reason = Some(decision.reason.to_string());
                self.st.message = Some(decision.message.clone());
            }
            RunAction::AskHuman => self.ask_human(decision.message.clone()).await?,
            RunAction::SendAnswer => self.send_answer().await?,
            RunAction::ForgetQuestion => {
                self.st.question = None;
                self.st.phase = Some(decision.phase);
                self.st.reason = Some(decision.reason.to_string());
                self.st.message = Some(decision.message.clone());
            }
            RunAction::SendCorrectiveTurn { attempt } => {
                let uid = self.uid();
                let ff = self.st.fix_forward.get_or_insert_with(FixForwardStatus::default);
                ff.attempts = attempt;
                ff.last_turn = Some(CommandIntent {
                    command_id: derived_id(&[&uid, "fix", &attempt.to_string()]),
                    message_id: Some(derived_id(&[&uid, "message", &attempt.to_string()])),
                    commit: self.st.commit.clone(),
                    previous_turn_id: latest_turn_id,
                    minted_at: Time(now),
                    sent_at: None,
                });
                self.st.phase = Some(Phase::FixingForward);
                self.st.reason = Some(decision.reason.to_string());
                self.st.message = Some(decision.message.clone());
                self.save().await?;
                self.send_corrective().await?;
            }
            RunAction::Finish { interrupt } => {
                if interrupt {
                    self.interrupt().await?;
                }
                self.finish(decision.phase, decision.reason, decision.message.clone());
            }
        }
        self.save().await?;
        let after = self.st.phase.unwrap_or(Phase::Pending);
        self.record_transition(before, after).await;
        if after.is_terminal() {
            self.terminal_effects().await?;
            return Ok(Action::await_change());
        }
        if self.st.question.as_ref().is_some_and(|q| !q.notified) {
            self.ring_question().await?;
        }
        if self.st.dispatch.as_ref().is_some_and(|d| d.sent_at.is_some()) {
            self.converge_live_labels(after != before).await?;
            self.sync_checklist().await?;
        }
        // Jitter spreads runs that were dispatched together.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        Ok(Action::requeue(
            self.ctx
                .settings
                .run_requeue
                .mul_f64(0.9 + f64::from(nanos % 200) / 1000.0),
        ))
    }
}

/// What to send for an answer.
#[derive(Clone, Debug, PartialEq)]
struct Respond {
    body: RespondBody,
    by: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
enum RespondBody {
    /// `thread.approval.respond` decision.
    Decision(String),
    /// `thread.user-input.respond` answers by question id.
    Answers(std::collections::BTreeMap<String, serde_json::Value>),
}

/// Read an `afk.dev/answer` annotation against the recorded question (SPEC §4.3): `id` must be
/// the question's `requestId`; approvals take a `decision`; questions take `answers` (by
/// question id) or, for a single question, `text`.
fn parse_answer(question: &Question, raw: &str) -> Result<Respond, String> {
    let v: serde_json::Value =
        serde_json::from_str(raw).map_err(|e| format!("afk.dev/answer is not JSON: {e}"))?;
    let id = v
        .get("id")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    if id != question.request_id {
        return Err(format!(
            "afk.dev/answer names request {id:?}, but the agent waits on {:?}: ignored as stale",
            question.request_id
        ));
    }
    let by = v
        .get("by")
        .and_then(serde_json::Value::as_str)
        .map(str::to_string);
    let body = match question.kind {
        QuestionKind::Approval => {
            let decision = v
                .get("decision")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default();
            if !t3::DECISIONS.contains(&decision) {
                return Err(format!(
                    "an approval needs `decision`, one of {}",
                    t3::DECISIONS.join(", ")
                ));
            }
            RespondBody::Decision(decision.to_string())
        }
        QuestionKind::UserInput => {
            let valid = |a: &serde_json::Value| {
                a.is_string()
                    || a.as_array()
                        .is_some_and(|l| l.iter().all(serde_json::Value::is_string))
            };
            match (
                v.get("answers").and_then(serde_json::Value::as_object),
                v.get("text").and_then(serde_json::Value::as_str),
            ) {
                (Some(answers), _) => {
                    let known = |k: &String| question.questions.iter().any(|q| &q.id == k);
                    if answers.is_empty() || !answers.iter().all(|(k, a)| known(k) && valid(a)) {
                        return Err(
                            "`answers` must map the asked question ids to text or lists of labels".into(),
                        );
                    }
                    RespondBody::Answers(answers.clone().into_iter().collect())
                }
                (None, Some(text)) if question.questions.len() == 1 && !text.trim().is_empty() => {
                    RespondBody::Answers([(question.questions[0].id.clone(), serde_json::json!(text))].into())
                }
                (None, Some(_)) => {
                    return Err("several questions were asked: give `answers` by question id".into());
                }
                (None, None) => return Err("an answer needs `text` or `answers`".into()),
            }
        }
    };
    Ok(Respond { body, by })
}

/// The status form of a pending request, with one human-readable line.
fn question_from(pending: &t3::PendingRequest, now: Time) -> Question {
    match &pending.ask {
        t3::Ask::Approval { request_kind, detail } => Question {
            kind: QuestionKind::Approval,
            request_id: pending.request_id.clone(),
            text: format!(
                "approve {request_kind}{}",
                detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default()
            )
            .chars()
            .take(1024)
            .collect(),
            request_kind: Some(request_kind.clone()),
            detail: detail.clone(),
            questions: vec![],
            asked_at: now,
            notified: false,
        },
        t3::Ask::UserInput { questions } => Question {
            kind: QuestionKind::UserInput,
            request_id: pending.request_id.clone(),
            text: questions
                .iter()
                .map(|q| {
                    if q.options.is_empty() {
                        q.question.clone()
                    } else {
                        format!("{} ({})", q.question, q.options.join(" / "))
                    }
                })
                .collect::<Vec<_>>()
                .join("; ")
                .chars()
                .take(1024)
                .collect(),
            request_kind: None,
            detail: None,
            questions: questions
                .iter()
                .map(|q| QuestionItem {
                    id: q.id.clone(),
                    header: q.header.clone(),
                    question: q.question.clone(),
                    options: q.options.clone(),
                    multi_select: q.multi_select,
                })
                .collect(),
            asked_at: now,
            notified: false,
        },
    }
}

/// T3 refusing the token becomes the typed, run-ending error; everything else stays an adapter
/// error (transient ones are retried).
fn executor_error(e: AdapterError) -> Error {
    if e.is_unauthorized() {
        Error::ExecutorUnauthorized(e)
    } else {
        Error::Adapter(e)
    }
}

/// What loading a run's surroundings gave: a run to work on, or a status already written that
/// explains why it cannot be worked on now.
enum Loaded {
    Ready(Box<Work>),
    Blocked(Action),
}

/// Read the run fresh and dereference its config, budgets and adapters. A missing config or
/// Secret, or an invalid spec, keeps the phase and says why in `Stalled`.
async fn load(run: AfkRun, ctx: Arc<Context>, api: Api<AfkRun>) -> Result<Loaded, Error> {
    let run = Arc::new(run);
    let ns = run.namespace().unwrap_or_default();
    let configs: Api<AfkConfig> = Api::namespaced(ctx.client.clone(), &ns);
    let current = run.status.clone();
    let now = Timestamp::now();
    let stalled = |reason: &'static str, why: String| {
        let mut st = current.clone().unwrap_or_default();
        // A stalled run keeps (or gets) a phase: never an empty PHASE column.
        st.phase.get_or_insert(Phase::Pending);
        st.reason = Some(reason.into());
        st.message = Some(why.clone());
        set_condition(
            &mut st.conditions,
            types::STALLED,
            Status::True,
            reason,
            why,
            run.metadata.generation,
            &Time(now),
        );
        st
    };
    let Some(config) = configs.get_opt(&run.spec.config_ref).await? else {
        let st = stalled(
            "ConfigNotFound",
            format!("AfkConfig {:?} not found", run.spec.config_ref),
        );
        apply_status(&api, &run, current.as_ref(), &st).await?;
        return Ok(Loaded::Blocked(Action::requeue(Duration::from_secs(60))));
    };
    let budgets = match budgets(&config) {
        Ok(b) => b,
        Err(why) => {
            let st = stalled("InvalidSpec", why);
            apply_status(&api, &run, current.as_ref(), &st).await?;
            return Ok(Loaded::Blocked(Action::await_change()));
        }
    };
    let adapters = match ctx.adapters.for_config(&config).await {
        Ok(a) => a,
        Err(Error::Reference(why)) | Err(Error::Secrets { message: why, .. }) => {
            let st = stalled("ReferenceError", why);
            apply_status(&api, &run, current.as_ref(), &st).await?;
            return Ok(Loaded::Blocked(Action::requeue(Duration::from_secs(60))));
        }
        Err(e) => return Err(e),
    };
    let entry = config
        .spec
        .allowlist
        .iter()
        .find(|e| e.repo.eq_ignore_ascii_case(&run.spec.repo))
        .cloned()
        .unwrap_or(RepoEntry {
            repo: run.spec.repo.clone(),
            default_branch: None,
            workspace_root: None,
            rollout: None,
            woodpecker_repo_id: None,
        });
    Ok(Loaded::Ready(Box::new(Work {
        st: current.clone().unwrap_or_default(),
        written: current,
        run,
        api,
        config,
        entry,
        adapters,
        ctx,
        now,
        budgets,
    })))
}

async fn apply(cached: Arc<AfkRun>, ctx: Arc<Context>, api: Api<AfkRun>) -> Result<Action, Error> {
    // The reflector may lag behind our own last status write; the recorded-intent protocol needs
    // the latest status, so read it fresh.
    let Some(run) = api.get_opt(&cached.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let mut w = match load(run, ctx, api).await? {
        Loaded::Ready(w) => w,
        Loaded::Blocked(action) => return Ok(action),
    };
    match w.step().await {
        Err(Error::ExecutorUnauthorized(e)) => w.fail_unauthorized(e).await,
        other => other,
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
    let cancelled_by_delete = run.status.as_ref().and_then(|s| s.reason.as_deref()) == Some(DELETED);
    if run.is_terminal() && !cancelled_by_delete {
        return Ok(Action::await_change());
    }
    let mut w = match load(run, ctx, api).await {
        Ok(Loaded::Ready(w)) => w,
        // Without its config or credentials nothing external can be cleaned; do not hold the
        // deletion hostage (a namespace being deleted must finish).
        Ok(Loaded::Blocked(_)) => {
            tracing::warn!("deleted run's config or Secrets are unavailable; nothing external was cleaned");
            return Ok(Action::await_change());
        }
        Err(e) => return Err(e),
    };
    let before = w.st.phase.unwrap_or(Phase::Pending);
    if !before.is_terminal() {
        let dispatched = w.st.dispatch.as_ref().is_some_and(|d| d.sent_at.is_some());
        if dispatched {
            match w.interrupt().await {
                Ok(()) => {}
                // A refused token cannot interrupt; the cancel still happens on our side.
                Err(Error::ExecutorUnauthorized(e)) => {
                    tracing::warn!(error = %e, "interrupt on delete refused")
                }
                Err(e) => return Err(e),
            }
        }
        w.finish(Phase::Cancelled, DELETED, "the AfkRun was deleted by a human");
        w.save().await?;
        w.record_transition(before, Phase::Cancelled).await;
    }
    w.terminal_effects().await?;
    Ok(Action::await_change())
}

/// The reason of a run cancelled by deleting it.
const DELETED: &str = "Deleted";
