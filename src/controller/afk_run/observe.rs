//! Observe: read the run's surroundings (config, budgets, adapters) and what the outside world
//! shows of it — the thread in T3's shell, the commit it pushed, the CI verdict for that commit —
//! into the `RunObservation` the decision table takes.

use std::{sync::Arc, time::Duration};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Api, ResourceExt, runtime::controller::Action};

use super::RunReconcile;
use crate::{
    adapters::t3::{Shell, ThreadShell},
    controller::{Context, Error, status::apply_status},
    crd::{
        AfkConfig, AfkRun, CiStatus, CiVerdict, FixForwardStatus, Phase, RepoEntry, StageName,
        condition::{Conditions, Status, reasons, types},
    },
    policy::{
        ci::{self, CheckRunFact, CiFold, CommitStatusFact, PipelineFact, RolloutFacts, StageReport},
        parse::commit_belongs_to_run,
        run_decision::{
            Budgets, QuestionState, RunObservation, SessionStatus, ThreadObservation, ThreadView, TurnState,
            TurnView,
        },
    },
};

/// What loading a run's surroundings gave: a run to work on, or a status already written that
/// explains why it cannot be worked on now.
pub(super) enum Loaded {
    Ready(Box<RunReconcile>),
    Blocked(Action),
}

/// Read the run's config, budgets and adapters. A missing config or Secret, or an invalid spec,
/// keeps the phase and says why in `Stalled`.
pub(super) async fn load(run: AfkRun, ctx: Arc<Context>, api: Api<AfkRun>) -> Result<Loaded, Error> {
    let run = Arc::new(run);
    let configs: Api<AfkConfig> = Api::namespaced(ctx.client.clone(), &run.namespace().unwrap_or_default());
    let now = Timestamp::now();
    let blocked = async |reason: &'static str, why: String, then: Action| -> Result<Loaded, Error> {
        let current = run.status.clone();
        let mut status = current.clone().unwrap_or_default();
        // A stalled run keeps (or gets) a phase: never an empty PHASE column.
        status.phase.get_or_insert(Phase::Pending);
        status.reason = Some(reason.into());
        status.message = Some(why.clone());
        Conditions::new(&mut status.conditions, run.metadata.generation, &Time(now)).set(
            types::STALLED,
            Status::True,
            reason,
            why,
        );
        apply_status(&api, &run, current.as_ref(), &status).await?;
        Ok(Loaded::Blocked(then))
    };
    let Some(config) = configs.get_opt(&run.spec.config_ref).await? else {
        let why = format!("AfkConfig {:?} not found", run.spec.config_ref);
        return blocked(
            reasons::CONFIG_NOT_FOUND,
            why,
            Action::requeue(Duration::from_secs(60)),
        )
        .await;
    };
    let budgets = match budgets(&config) {
        Ok(b) => b,
        Err(why) => return blocked(reasons::INVALID_SPEC, why, Action::await_change()).await,
    };
    let adapters = match ctx.adapters.for_config(&config).await {
        Ok(a) => a,
        Err(Error::Reference(why)) | Err(Error::Secrets { message: why, .. }) => {
            return blocked(
                reasons::REFERENCE_ERROR,
                why,
                Action::requeue(Duration::from_secs(60)),
            )
            .await;
        }
        Err(e) => return Err(e),
    };
    let entry = repo_entry(&config, &run.spec.repo);
    Ok(Loaded::Ready(Box::new(RunReconcile {
        status: run.status.clone().unwrap_or_default(),
        written: run.status.clone(),
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

/// The allowlist entry of `repo` (an empty one for a run created by hand for another repo).
fn repo_entry(config: &AfkConfig, repo: &str) -> RepoEntry {
    config
        .spec
        .allowlist
        .iter()
        .find(|e| e.repo.eq_ignore_ascii_case(repo))
        .cloned()
        .unwrap_or(RepoEntry {
            repo: repo.to_string(),
            default_branch: None,
            workspace_root: None,
            rollout: None,
            woodpecker_repo_id: None,
        })
}

pub(super) fn budgets(config: &AfkConfig) -> Result<Budgets, String> {
    let b = &config.spec.budgets;
    Ok(Budgets {
        max_attempts: b.fix_forward_max_attempts,
        max_duration: b.fix_forward_max_duration.to_std().map_err(|e| e.to_string())?,
        stall_timeout: b.stall_timeout.to_std().map_err(|e| e.to_string())?,
        pre_escalation_grace: b.pre_escalation_grace.to_std().map_err(|e| e.to_string())?,
        answer_timeout: b.answer_timeout.to_std().map_err(|e| e.to_string())?,
    })
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

/// The id of the thread's latest turn, as observed (a corrective turn records it).
pub(super) fn latest_turn_id(observation: &RunObservation) -> Option<String> {
    match &observation.thread {
        ThreadObservation::Seen(v) => v.latest_turn.as_ref().and_then(|t| t.turn_id.clone()),
        _ => None,
    }
}

impl RunReconcile {
    /// The shell (cached for a second across runs), with T3 refusing the token made typed.
    pub(super) async fn shell(&self) -> Result<Arc<Shell>, Error> {
        self.adapters.shell().await.map_err(Error::from_executor)
    }

    /// The shell as T3 has it now (no cache): for minting ids that must not collide.
    pub(super) async fn fresh_shell(&self) -> Result<Shell, Error> {
        self.adapters.executor.shell().await.map_err(Error::from_executor)
    }

    /// What the thread shows, once the opening turn was sent; a failed poll is `Unknown`, a
    /// refused token ends the reconcile.
    async fn observe_thread(&self) -> Result<ThreadObservation, Error> {
        let sent = self.dispatched();
        Ok(match (self.status.thread_id.clone(), sent) {
            (Some(id), true) => match self.shell().await {
                Ok(shell) => shell.thread(&id).map_or(ThreadObservation::Unknown, |t| {
                    ThreadObservation::Seen(thread_view(t))
                }),
                Err(Error::ExecutorUnauthorized(e)) => return Err(Error::ExecutorUnauthorized(e)),
                Err(e) => {
                    tracing::debug!(error = %e, "shell poll failed");
                    ThreadObservation::Unknown
                }
            },
            (Some(_), false) => ThreadObservation::Unknown,
            (None, _) => ThreadObservation::NotDispatched,
        })
    }

    /// Observe the thread, the commit and its CI (recording a new commit and the CI verdict in
    /// status), and build the decision table's input.
    pub(super) async fn observe(&mut self) -> Result<RunObservation, Error> {
        let thread = self.observe_thread().await?;
        let dispatched_at = self
            .status
            .dispatch
            .as_ref()
            .and_then(|d| d.sent_at.as_ref())
            .map(|t| t.0);
        if dispatched_at.is_some() {
            self.discover_commit().await?;
        }
        if let Some(sha) = self.status.commit.clone() {
            let ci = self.fold_ci(&sha).await?;
            if ci.verdict == CiVerdict::Red {
                let fix_forward = self
                    .status
                    .fix_forward
                    .get_or_insert_with(FixForwardStatus::default);
                fix_forward.first_red_at.get_or_insert(Time(self.now));
            }
            self.status.ci = Some(ci);
        }
        let fix_forward = self.status.fix_forward.clone().unwrap_or_default();
        let last_turn = fix_forward.last_turn.as_ref();
        let last_turn_sent_at = [
            dispatched_at,
            last_turn.and_then(|t| t.sent_at.as_ref()).map(|t| t.0),
        ]
        .into_iter()
        .flatten()
        .max();
        Ok(RunObservation {
            phase: self.phase(),
            cancel_requested: self.run.spec.cancel,
            emergency_stop: self.config.emergency_stop().is_some(),
            suspended: self.config.spec.suspend,
            last_turn_sent_at,
            last_turn_commit: last_turn.and_then(|t| t.commit.clone()),
            previous_turn_id: last_turn.and_then(|t| t.previous_turn_id.clone()),
            question: self.status.question.as_ref().map(|q| QuestionState {
                asked_at: q.asked_at.0,
                answer_ready: self.answer_in_flight(&q.request_id) || self.recorded_answer().is_some(),
            }),
            resumed_at: self
                .status
                .answer
                .as_ref()
                .and_then(|a| a.sent_at.as_ref())
                .map(|t| t.0),
            thread,
            commit: self.status.commit.clone(),
            ci: self.status.ci.as_ref().map(|c| c.verdict),
            fix_forward_attempts: fix_forward.attempts,
            first_red_at: fix_forward.first_red_at.as_ref().map(|t| t.0),
            budgets: self.budgets.clone(),
            now: self.now,
        })
    }

    /// The newest commit on the default branch that belongs to this run.
    async fn discover_commit(&mut self) -> Result<(), Error> {
        let Some(started) = self.status.started_at.as_ref().map(|t| t.0) else {
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
            && self.status.commit.as_deref() != Some(c.sha.as_str())
        {
            self.status.commit = Some(c.sha.clone());
            self.status.commit_url = c.html_url.clone();
            self.status.pushed_at.get_or_insert(self.time());
            self.status.ci = None;
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
}
