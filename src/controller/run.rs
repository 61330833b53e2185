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
        t3::{Command, ModelSelection, ThreadShell, TurnMessage},
    },
    crd::{
        AfkConfig, AfkRun, AfkRunStatus, CiStatus, CiVerdict, CommandIntent, DispatchIntent,
        FixForwardStatus, Phase, RUN_FINALIZER, RepoEntry, StageName,
        condition::{Status, set_condition, types},
    },
    metrics,
    policy::{
        ci::{self, CheckRunFact, CiFold, CommitStatusFact, PipelineFact, RolloutFacts, StageReport},
        naming::{derived_id, project_id, workspace_root},
        parse::commit_belongs_to_run,
        render::{self, NotificationKind, RunView},
        run::{
            self as decide, Budgets, RunAction, RunObservation, SessionStatus, ThreadObservation, ThreadView,
            TurnState, TurnView,
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
            Finalizer::Cleanup(run) => cleanup(run, ctx.clone()).await,
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
        max_cost_usd: f64::from(b.max_budget_usd),
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
            let shell = self.adapters.executor.shell().await?;
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
                    create_workspace_root_if_missing: false,
                    default_model_selection: None,
                    created_at: created_at.clone(),
                })
                .await;
            match res {
                Ok(()) => {}
                Err(e) if e.kind == "dispatch_rejected" => {
                    // The id was used before (T3 never reuses ids) or another active project
                    // holds the root: reuse that project, or mint a fresh id, record, retry.
                    let shell = self.adapters.executor.shell().await?;
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
        let text = render::opening_prompt(&render::TaskPrompt {
            preamble: &preamble,
            run_name: self.run.metadata.name.as_deref().unwrap_or_default(),
            repo: &self.run.spec.repo,
            issue: self.run.spec.issue,
            default_branch: &branch,
            workspace_root: &root,
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
        self.save().await?;
        self.event(
            false,
            "Dispatched",
            format!("{}#{} dispatched to T3", self.run.spec.repo, self.run.spec.issue),
        )
        .await;
        // The visible lock, only after the turn started.
        if !self.st.effects.in_progress_label {
            let label = self.config.spec.labels.in_progress.clone();
            self.adapters
                .tracker
                .add_labels(&self.run.spec.repo, self.run.spec.issue, &[label])
                .await?;
            self.st.effects.in_progress_label = true;
            self.save().await?;
        }
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

    /// Terminal effects, each recorded in `status.effects` and performed at most once.
    async fn terminal_effects(&mut self) -> Result<bool, Error> {
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
            // Recorded before sending: a crash after delivery must not ring twice.
            self.st.effects.notification = true;
            self.save().await?;
            if let Some(kind) = NotificationKind::for_phase(phase) {
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
        }
        Ok(true)
    }
}

async fn apply(cached: Arc<AfkRun>, ctx: Arc<Context>, api: Api<AfkRun>) -> Result<Action, Error> {
    // The reflector may lag behind our own last status write; the recorded-intent protocol needs
    // the latest status, so read it fresh.
    let Some(run) = api.get_opt(&cached.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let run = Arc::new(run);
    let ns = run.namespace().unwrap_or_default();
    let configs: Api<AfkConfig> = Api::namespaced(ctx.client.clone(), &ns);
    let current = run.status.clone();
    let now = Timestamp::now();
    let Some(config) = configs.get_opt(&run.spec.config_ref).await? else {
        let mut st = current.clone().unwrap_or_default();
        set_condition(
            &mut st.conditions,
            types::STALLED,
            Status::True,
            "ConfigNotFound",
            format!("AfkConfig {:?} not found", run.spec.config_ref),
            run.metadata.generation,
            &Time(now),
        );
        apply_status(&api, &run, current.as_ref(), &st).await?;
        return Ok(Action::requeue(Duration::from_secs(60)));
    };
    let budgets = match budgets(&config) {
        Ok(b) => b,
        Err(why) => {
            let mut st = current.clone().unwrap_or_default();
            set_condition(
                &mut st.conditions,
                types::STALLED,
                Status::True,
                "InvalidSpec",
                why,
                run.metadata.generation,
                &Time(now),
            );
            apply_status(&api, &run, current.as_ref(), &st).await?;
            return Ok(Action::await_change());
        }
    };
    let adapters = match ctx.adapters.for_config(&config).await {
        Ok(a) => a,
        Err(Error::Reference(why)) => {
            let mut st = current.clone().unwrap_or_default();
            set_condition(
                &mut st.conditions,
                types::STALLED,
                Status::True,
                "ReferenceError",
                why,
                run.metadata.generation,
                &Time(now),
            );
            apply_status(&api, &run, current.as_ref(), &st).await?;
            return Ok(Action::requeue(Duration::from_secs(60)));
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
    let mut w = Work {
        st: current.clone().unwrap_or_default(),
        written: current,
        run: run.clone(),
        api,
        config,
        entry,
        adapters,
        ctx: ctx.clone(),
        now,
        budgets,
    };
    let before = w.st.phase.unwrap_or(Phase::Pending);
    if w.st.phase.is_none() {
        w.st.phase = Some(Phase::Pending);
        w.save().await?;
    }

    if before.is_terminal() {
        w.terminal_effects().await?;
        return Ok(Action::await_change());
    }

    // Finish any recorded intent first (a crash left it half done).
    if let Some(t) = w.st.fix_forward.as_ref().and_then(|f| f.last_turn.as_ref())
        && t.sent_at.is_none()
        && !run.spec.cancel
        && w.config.emergency_stop().is_none()
    {
        w.send_corrective().await?;
    }

    let dispatched_at =
        w.st.dispatch
            .as_ref()
            .and_then(|d| d.sent_at.as_ref())
            .map(|t| t.0);
    let thread = match (&w.st.thread_id, dispatched_at) {
        (Some(id), Some(_)) => match w.adapters.shell().await {
            Ok(shell) => shell.thread(id).map_or(ThreadObservation::Unknown, |t| {
                ThreadObservation::Seen(thread_view(t))
            }),
            Err(e) => {
                tracing::debug!(error = %e, "shell poll failed");
                ThreadObservation::Unknown
            }
        },
        (Some(_), None) => ThreadObservation::Unknown,
        (None, _) => ThreadObservation::NotDispatched,
    };
    if dispatched_at.is_some() {
        w.discover_commit().await?;
    }
    if let Some(sha) = w.st.commit.clone() {
        let ci = w.fold_ci(&sha).await?;
        if ci.verdict == CiVerdict::Red {
            let ff = w.st.fix_forward.get_or_insert_with(FixForwardStatus::default);
            ff.first_red_at.get_or_insert(Time(now));
        }
        w.st.ci = Some(ci);
    }
    let ff = w.st.fix_forward.clone().unwrap_or_default();
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
        phase: w.st.phase.unwrap_or(Phase::Pending),
        cancel_requested: run.spec.cancel,
        emergency_stop: w.config.emergency_stop().is_some(),
        suspended: w.config.spec.suspend,
        last_turn_sent_at: last_turn_sent,
        last_turn_commit: ff.last_turn.as_ref().and_then(|t| t.commit.clone()),
        thread,
        commit: w.st.commit.clone(),
        ci: w.st.ci.as_ref().map(|c| c.verdict),
        fix_forward_attempts: ff.attempts,
        first_red_at: ff.first_red_at.as_ref().map(|t| t.0),
        cost_usd: w.st.cost_usd,
        budgets: w.budgets.clone(),
        now,
    };
    let decision = decide::decide(&obs);
    match decision.action {
        RunAction::Settled => {}
        RunAction::Dispatch => w.dispatch().await?,
        RunAction::Wait => {
            w.st.phase = Some(decision.phase);
            w.st.reason = Some(decision.reason.to_string());
            w.st.message = Some(decision.message.clone());
        }
        RunAction::SendCorrectiveTurn { attempt } => {
            let uid = w.uid();
            let ff = w.st.fix_forward.get_or_insert_with(FixForwardStatus::default);
            ff.attempts = attempt;
            ff.last_turn = Some(CommandIntent {
                command_id: derived_id(&[&uid, "fix", &attempt.to_string()]),
                message_id: Some(derived_id(&[&uid, "message", &attempt.to_string()])),
                commit: w.st.commit.clone(),
                minted_at: Time(now),
                sent_at: None,
            });
            w.st.phase = Some(Phase::FixingForward);
            w.st.reason = Some(decision.reason.to_string());
            w.st.message = Some(decision.message.clone());
            w.save().await?;
            w.send_corrective().await?;
        }
        RunAction::Finish { interrupt } => {
            if interrupt {
                w.interrupt().await?;
            }
            w.finish(decision.phase, decision.reason, decision.message.clone());
        }
    }
    w.save().await?;
    let after = w.st.phase.unwrap_or(Phase::Pending);
    if w.st.dispatch.as_ref().is_some_and(|d| d.sent_at.is_some()) && !after.is_terminal() {
        w.sync_checklist().await?;
    }
    if after != before {
        let escalation = matches!(after, Phase::NeedsHuman | Phase::Frozen | Phase::Failed);
        let kind = match after {
            Phase::NeedsHuman => Some("needs-human"),
            Phase::Frozen => Some("frozen"),
            Phase::Failed => Some("failed"),
            _ => None,
        };
        if let Some(kind) = kind {
            ctx.metrics
                .escalations
                .get_or_create(&metrics::Kind { kind: kind.into() })
                .inc();
        }
        let note = format!(
            "{} → {}: {}",
            before.as_str(),
            after.as_str(),
            w.st.message.clone().unwrap_or_default()
        );
        w.event(
            escalation || after == Phase::Cancelled,
            w.st.reason
                .clone()
                .unwrap_or_else(|| after.as_str().into())
                .as_str(),
            note,
        )
        .await;
        tracing::info!(repo = %run.spec.repo, issue = run.spec.issue, run = %run.name_any(), from = before.as_str(), to = after.as_str(), "phase change");
    }
    if after.is_terminal() {
        w.terminal_effects().await?;
        return Ok(Action::await_change());
    }
    // Jitter spreads runs that were dispatched together.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    Ok(Action::requeue(
        ctx.settings
            .run_requeue
            .mul_f64(0.9 + f64::from(nanos % 200) / 1000.0),
    ))
}

/// Deleting a non-terminal run interrupts its turn, frees the issue and posts a final state.
async fn cleanup(run: Arc<AfkRun>, ctx: Arc<Context>) -> Result<Action, Error> {
    if run.is_terminal() {
        return Ok(Action::await_change());
    }
    let ns = run.namespace().unwrap_or_default();
    let configs: Api<AfkConfig> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(config) = configs.get_opt(&run.spec.config_ref).await? else {
        return Ok(Action::await_change());
    };
    let adapters = match ctx.adapters.for_config(&config).await {
        Ok(a) => a,
        // Without credentials nothing external can be cleaned; do not block the deletion.
        Err(Error::Reference(_)) => return Ok(Action::await_change()),
        Err(e) => return Err(e),
    };
    let st = run.status.clone().unwrap_or_default();
    let uid = run.uid().unwrap_or_default();
    if let (Some(thread), Some(_)) = (
        &st.thread_id,
        st.dispatch.as_ref().and_then(|d| d.sent_at.as_ref()),
    ) {
        let cmd = Command::ThreadTurnInterrupt {
            command_id: derived_id(&[&uid, "thread.turn.interrupt"]),
            thread_id: thread.clone(),
            turn_id: None,
            created_at: Timestamp::now().to_string(),
        };
        match adapters.executor.dispatch(&cmd).await {
            Ok(_) => {}
            Err(e) if e.is_transient() => return Err(e.into()),
            Err(e) => tracing::warn!(error = %e, "interrupt on delete rejected"),
        }
    }
    adapters
        .tracker
        .remove_label(&run.spec.repo, run.spec.issue, &config.spec.labels.in_progress)
        .await?;
    if let Some(id) = st.checklist_comment_id {
        let mut final_status = st.clone();
        final_status.phase = Some(Phase::Cancelled);
        final_status.reason = Some("Deleted".into());
        final_status.message = Some("the AfkRun was deleted".into());
        let b = budgets(&config).unwrap_or(Budgets {
            max_attempts: 0,
            max_duration: Duration::ZERO,
            stall_timeout: Duration::ZERO,
            pre_escalation_grace: Duration::ZERO,
            max_cost_usd: 0.0,
        });
        let view = RunView {
            name: run.metadata.name.as_deref().unwrap_or_default(),
            uid: &uid,
            repo: &run.spec.repo,
            issue: run.spec.issue,
            title: &run.spec.title,
            attempt: run.spec.attempt,
            phase: Phase::Cancelled,
            thread_id: final_status.thread_id.as_deref(),
            thread_url: final_status.thread_url.as_deref(),
            dispatched: true,
            commit: final_status.commit.as_deref(),
            commit_url: final_status.commit_url.as_deref(),
            ci: final_status.ci.as_ref(),
            rollout_watched: false,
            fix_forward_attempts: final_status.fix_forward.as_ref().map_or(0, |f| f.attempts),
            fix_forward_max_attempts: b.max_attempts,
            fix_forward_elapsed: Duration::ZERO,
            fix_forward_max_duration: b.max_duration,
            reason: final_status.reason.as_deref(),
            message: final_status.message.as_deref(),
        };
        adapters
            .tracker
            .update_comment(&run.spec.repo, id, &render::checklist(&view))
            .await?;
    }
    Ok(Action::await_change())
}
