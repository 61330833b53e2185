//! The AfkConfig reconcile (SPEC §2), as named steps: validate → runs and retention →
//! dereference the Secrets → (armed) probe T3 and gather the gate facts from GitHub →
//! `policy::dispatch::decide` → create the AfkRuns it chose (deterministic names, so a repeated
//! create is a no-op) → derive every condition from what was found (`policy::health`), publish
//! the transitions, write status. No tracker I/O while disarmed; anything that stops the poll
//! short is one [`Outcome::Stall`].

mod facts;
mod runs;
mod status;
#[cfg(test)]
mod tests;

use std::{collections::HashMap, sync::Arc, time::Duration};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, PostParams},
    runtime::controller::Action,
};

use super::{Adapters, BackoffKey, Context, Error, jittered, status::apply_status};
use crate::{
    crd::{
        AfkConfig, AfkConfigStatus, AfkRun, Phase, RateLimitStatus,
        condition::{Conditions, Status, reasons, types},
    },
    metrics,
    policy::{
        dispatch::{self, Disarmed},
        health::{self, ConfigFacts, Probe},
    },
};

use facts::{PollCache, Probes};

/// How soon a stalled config looks again: creating a missing Secret does not touch it.
const RECHECK: Duration = Duration::from_secs(30);

/// How far a poll got.
enum Outcome {
    /// Nothing in the way: the adapters are built (probing and gathering happen only when armed).
    Proceed(Arc<Adapters>),
    /// The spec or what it references cannot be acted on: `Stalled=True` with this reason and
    /// message, nothing dispatched, and the reconcile waits for a change (an invalid spec) or
    /// looks again within 30 s (Secrets: creating one does not change the AfkConfig).
    Stall {
        /// CamelCase reason.
        reason: &'static str,
        /// What a human has to fix.
        message: String,
    },
}

/// One poll of one AfkConfig.
struct ConfigPoll {
    config: Arc<AfkConfig>,
    ctx: Arc<Context>,
    configs: Api<AfkConfig>,
    runs: Api<AfkRun>,
    now: Time,
    /// The status as read.
    current: Option<AfkConfigStatus>,
    /// The status being built.
    status: AfkConfigStatus,
}

pub(super) async fn reconcile(config: Arc<AfkConfig>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.time_reconcile("afkconfig");
    let mut poll = ConfigPoll::new(config, ctx);
    let poll_interval = poll.config.spec.poll_interval.to_std();
    let invalid = poll_interval.as_ref().err().map(|e| Outcome::Stall {
        reason: reasons::INVALID_SPEC,
        message: format!("spec.pollInterval: {e}"),
    });
    let disarmed = poll.disarmed();
    poll.announce_polling(invalid.is_none() && disarmed.is_none())
        .await?;
    let runs = poll.runs_and_retention().await?;
    let outcome = match invalid {
        Some(stall) => stall,
        None => poll.dereference().await?,
    };
    let (outcome, probes, ready_issues) = match (outcome, &disarmed) {
        (Outcome::Proceed(adapters), None) => poll.probe_and_gather(&adapters).await,
        (outcome, _) => (outcome, Probes::default(), vec![]),
    };
    // Nothing is created while stalled: the facts are empty.
    let decision = dispatch::decide(&dispatch::DispatchInput {
        spec: &poll.config.spec,
        emergency_stop: poll.config.emergency_stop(),
        issues: &ready_issues,
        runs: &runs::existing(&runs),
        executor_refused: matches!(probes.executor, Probe::Unauthorized(_)),
    });
    poll.create_runs(&decision).await?;
    status::write_queue(&mut poll.status, &poll.config, &runs, &decision);
    let stall = match outcome {
        Outcome::Stall { reason, message } => Some((reason, message)),
        Outcome::Proceed(_) => None,
    };
    let retry_soon = stall.is_some();
    poll.write_status(stall, disarmed, probes).await?;
    poll.ctx.reset_backoff(&BackoffKey::of(poll.config.as_ref()));
    Ok(match poll_interval {
        Err(_) => Action::await_change(),
        // Within 30 s, as promised (ADR 0011): the jitter must not carry it past.
        Ok(d) if retry_soon => Action::requeue(jittered(d.min(RECHECK), 10).min(RECHECK)),
        Ok(d) => Action::requeue(jittered(d, 10)),
    })
}

impl ConfigPoll {
    fn new(config: Arc<AfkConfig>, ctx: Arc<Context>) -> Self {
        let ns = config.namespace().unwrap_or_default();
        let current = config.status.clone();
        Self {
            configs: Api::namespaced(ctx.client.clone(), &ns),
            runs: Api::namespaced(ctx.client.clone(), &ns),
            now: Time(Timestamp::now()),
            status: current.clone().unwrap_or_default(),
            current,
            config,
            ctx,
        }
    }

    fn config_label(&self) -> metrics::ConfigLabel {
        metrics::ConfigLabel {
            config: format!(
                "{}/{}",
                self.config.namespace().unwrap_or_default(),
                self.config.name_any()
            ),
        }
    }

    fn conditions(&mut self) -> Conditions<'_> {
        Conditions::new(
            &mut self.status.conditions,
            self.config.metadata.generation,
            &self.now,
        )
    }

    /// Disarmed on purpose (reason, message): no tracker or executor I/O.
    fn disarmed(&self) -> Option<(&'static str, String)> {
        let estop = self.config.emergency_stop();
        dispatch::armed(&self.config.spec, estop).err().map(|d| match d {
            Disarmed::EmergencyStop(why) => (reasons::EMERGENCY_STOP, format!("emergency stop: {why}")),
            Disarmed::Suspended => (reasons::SUSPENDED, "spec.suspend is true".to_string()),
            Disarmed::EmptyAllowlist => (reasons::EMPTY_ALLOWLIST, "spec.allowlist is empty".to_string()),
        })
    }

    /// Say at once that the first poll after a spec change is running (it may take a while).
    async fn announce_polling(&mut self, will_poll: bool) -> Result<(), Error> {
        let generation = self.config.metadata.generation;
        if self.status.observed_generation != generation && will_poll {
            let mut early = self.status.clone();
            Conditions::new(&mut early.conditions, generation, &self.now).set(
                types::RECONCILING,
                Status::True,
                reasons::POLLING,
                "polling after a spec change",
            );
            apply_status(&self.configs, &self.config, self.current.as_ref(), &early).await?;
        }
        self.status.observed_generation = generation;
        Ok(())
    }

    /// The config's runs, after deleting terminal ones past the history limits; the per-phase
    /// gauge.
    async fn runs_and_retention(&self) -> Result<Vec<AfkRun>, Error> {
        let mut runs = runs::runs_of(&self.runs, &self.config.name_any()).await?;
        for victim in runs::retention_victims(&self.config, &runs) {
            match self.runs.delete(&victim, &DeleteParams::background()).await {
                Ok(_) | Err(kube::Error::Api(_)) => {}
                Err(e) => return Err(e.into()),
            }
            runs.retain(|r| r.name_any() != victim);
        }
        let mut by_phase: HashMap<&'static str, i64> = HashMap::new();
        for r in &runs {
            *by_phase.entry(r.phase().as_str()).or_default() += 1;
        }
        for phase in Phase::ALL {
            self.ctx
                .metrics
                .runs
                .get_or_create(&metrics::Phase {
                    phase: phase.as_str().into(),
                })
                .set(by_phase.get(phase.as_str()).copied().unwrap_or(0));
        }
        Ok(runs)
    }

    /// Dereference the Secrets (Kubernetes reads only: done even while disarmed, so a missing
    /// Secret shows before anyone arms the loop).
    async fn dereference(&self) -> Result<Outcome, Error> {
        match self.ctx.adapters.for_config(&self.config).await {
            Ok(adapters) => Ok(Outcome::Proceed(adapters)),
            Err(Error::Secrets { message, unreadable }) => Ok(Outcome::Stall {
                reason: if unreadable {
                    reasons::SECRET_UNREADABLE
                } else {
                    reasons::SECRET_MISSING
                },
                message,
            }),
            Err(Error::Reference(message)) => Ok(Outcome::Stall {
                reason: reasons::CONFIG_ERROR,
                message,
            }),
            Err(e) => Err(e),
        }
    }

    /// Armed and dereferenced: probe T3, gather the gate facts from GitHub (which probes it),
    /// and note the rate limit. GitHub App credentials that GitHub still refuses after a fresh
    /// installation token are a configuration fault (wrong App, key or installation): a stall,
    /// not a blip.
    async fn probe_and_gather(
        &mut self,
        adapters: &Arc<Adapters>,
    ) -> (Outcome, Probes, Vec<dispatch::ReadyIssue>) {
        let (executor, expires_at) =
            facts::probe_executor(adapters.executor.as_ref(), &mut self.status).await;
        let label = self.config_label();
        self.ctx
            .metrics
            .executor_token_expiry
            .get_or_create(&label)
            .set(expires_at.map_or(0, |at| at.as_second()));
        let mut cache = PollCache::default();
        let mut tracker_error = None;
        let mut ready_issues = vec![];
        for entry in &self.config.spec.allowlist {
            match facts::gather(
                adapters.tracker.as_ref(),
                &entry.repo,
                &self.config.spec.labels.ready,
                &mut cache,
            )
            .await
            {
                Ok(mut found) => ready_issues.append(&mut found),
                Err(e) => {
                    tracker_error.get_or_insert((entry.repo.as_str(), e));
                }
            }
        }
        let probes = Probes {
            tracker: facts::tracker_probe(tracker_error),
            executor,
            token_expires_at: expires_at,
        };
        if let Some(rl) = adapters.tracker.rate_limit() {
            self.ctx
                .metrics
                .github_rate_limit_remaining
                .set(rl.remaining as i64);
            self.ctx.metrics.github_rate_limit_limit.set(rl.limit as i64);
            self.status.rate_limit = Some(RateLimitStatus {
                remaining: rl.remaining,
                reset_at: Some(Time(rl.reset)),
            });
        }
        self.status.last_poll_time = Some(self.now.clone());
        let outcome = match (&probes.tracker, &self.config.spec.tracker.github.app) {
            (Probe::Unauthorized(why), Some(app)) => Outcome::Stall {
                reason: reasons::GITHUB_APP_UNAUTHORIZED,
                message: format!(
                    "GitHub refused the App's installation token even after a refresh ({why}); check appId {}, installationId {} and the private key",
                    app.app_id, app.installation_id
                ),
            },
            _ => Outcome::Proceed(adapters.clone()),
        };
        (outcome, probes, ready_issues)
    }

    /// Create the runs the decision chose (a 409 is a retried poll: the run exists).
    async fn create_runs(&self, decision: &dispatch::DispatchDecision) -> Result<(), Error> {
        for new in &decision.create {
            let obj = runs::new_run_object(&self.config, new);
            match self.runs.create(&PostParams::default(), &obj).await {
                Ok(_) => {
                    tracing::info!(repo = %new.repo, issue = new.issue, run = %new.name, "created AfkRun")
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    tracing::debug!(run = %new.name, "AfkRun already exists");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Conditions from what was found; an Event per transition; the status.
    async fn write_status(
        &mut self,
        stall: Option<(&'static str, String)>,
        disarmed: Option<(&'static str, String)>,
        probes: Probes,
    ) -> Result<(), Error> {
        let previous = self.status.conditions.clone();
        let t3 = &self.config.spec.executor.t3;
        let token_hint = format!(
            "`t3 auth session issue --base-dir <T3 base dir> --token-only --ttl 30d` on the T3 host, then update key {:?} of Secret {}/{}",
            t3.token_secret_ref.key,
            self.config.namespace().unwrap_or_default(),
            t3.token_secret_ref.name
        );
        let (invalid, secrets) = match stall {
            Some((reasons::INVALID_SPEC, message)) => (Some((reasons::INVALID_SPEC, message)), None),
            other => (None, other),
        };
        let values = health::conditions(&ConfigFacts {
            invalid,
            secrets,
            disarmed,
            tracker: probes.tracker,
            executor: probes.executor,
            token_expires_at: probes.token_expires_at,
            token_hint,
            reconciling: false,
            now: self.now.0,
        });
        let mut conditions = self.conditions();
        for c in &values {
            let status = match c.status {
                "True" => Status::True,
                "False" => Status::False,
                _ => Status::Unknown,
            };
            conditions.set(c.type_, status, c.reason, c.message.clone());
        }
        self.status.message = health::summary(&values);
        let ready = values
            .iter()
            .any(|c| c.type_ == types::READY && c.status == "True");
        let label = self.config_label();
        self.ctx
            .metrics
            .config_ready
            .get_or_create(&label)
            .set(i64::from(ready));
        apply_status(&self.configs, &self.config, self.current.as_ref(), &self.status).await?;
        status::condition_events(&self.ctx, &self.config, &previous, &values).await;
        Ok(())
    }
}
