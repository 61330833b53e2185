//! The controllers: observe → decide (with `policy`) → act (through `adapters`) → write status
//! (server-side apply, one field manager). The AfkConfig controller polls the tracker and creates
//! AfkRuns; the AfkRun controller drives one run through dispatch, verification, fix-forward and
//! its terminal effects. Both are idempotent: every external side effect is preceded by a status
//! write recording the intent, so a crash at any point repeats work harmlessly or skips it.

mod adapters;
mod afk_config;
mod afk_run;
mod leader;
mod start;
mod status;
#[cfg(test)]
mod test_api;
mod triggers;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{Recorder, Reporter},
        reflector::{self, ObjectRef},
        watcher,
    },
};

pub use adapters::{AdapterCache, Adapters, SharedSecret};
pub use leader::{LeaderElection, LeaseSettings};
pub use start::{LEASE_DURATION, LEASE_RENEW_EVERY, Leadership, Readiness, run_until_shutdown};

use crate::{
    adapters::AdapterError,
    agents::Agents,
    crd::{self, AfkConfig, AfkRun},
    metrics::{ErrorLabels, Metrics},
};

/// Parallel AfkRun reconciles. Each is a handful of HTTP calls; 16 keeps a 2-core pod busy
/// without queueing every run of a burst on the same backends.
const RUN_CONCURRENCY: u16 = 16;
/// Parallel AfkConfig polls (each walks all of its repos sequentially).
const CONFIG_CONCURRENCY: u16 = 4;

/// Tunables of the controllers.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How often a non-terminal run is looked at while it waits on something external.
    pub run_requeue: Duration,
    /// Minimum spacing of GitHub mutations.
    pub github_min_mutation_interval: Duration,
    /// How long a loaded secret is trusted before it is read again.
    pub secret_refresh: Duration,
    /// Cap of the per-object error backoff.
    pub max_backoff: Duration,
    /// Bounded retries for notifications.
    pub notify_retry: crate::adapters::retry::RetryPolicy,
    /// At most one AfkRun-triggered poll of an AfkConfig per this window.
    pub config_trigger_window: Duration,
    /// How often a live run re-reads its issue's labels to heal a lost write (also on every
    /// phase change and until the in-progress label is first confirmed).
    pub label_resync: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            run_requeue: Duration::from_secs(15),
            github_min_mutation_interval: Duration::from_secs(1),
            secret_refresh: Duration::from_secs(30),
            max_backoff: Duration::from_secs(300),
            notify_retry: crate::adapters::retry::RetryPolicy::default(),
            config_trigger_window: Duration::from_secs(5),
            label_resync: Duration::from_secs(60),
        }
    }
}

/// Shared by every reconcile.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Metrics,
    /// The agent definitions.
    pub agents: Arc<Agents>,
    /// Tunables.
    pub settings: Settings,
    /// Adapters per AfkConfig.
    pub adapters: AdapterCache,
    backoff: Mutex<HashMap<BackoffKey, u32>>,
    checklist_cache: Mutex<HashMap<String, String>>,
    labels_checked: Mutex<HashMap<String, std::time::Instant>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Context")
    }
}

impl Context {
    /// A context for the controllers.
    pub fn new(client: Client, agents: Arc<Agents>, metrics: Metrics, settings: Settings) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: crd::FIELD_MANAGER.into(),
                instance: None,
            },
        );
        Self {
            adapters: AdapterCache::new(client.clone(), settings.clone()),
            client,
            recorder,
            metrics,
            agents,
            settings,
            backoff: Mutex::new(HashMap::new()),
            checklist_cache: Mutex::new(HashMap::new()),
            labels_checked: Mutex::new(HashMap::new()),
        }
    }

    fn reset_backoff(&self, key: &BackoffKey) {
        self.backoff.lock().expect("backoff").remove(key);
    }

    /// Exponential per-object backoff with jitter: 1 s doubling to `max_backoff`, ±20 %.
    fn next_backoff(&self, key: BackoffKey, hint: Option<Duration>) -> Duration {
        let mut map = self.backoff.lock().expect("backoff");
        let n = map.entry(key).or_insert(0);
        *n = (*n + 1).min(20);
        let base = Duration::from_secs(1)
            .saturating_mul(2u32.saturating_pow(*n - 1))
            .min(self.settings.max_backoff);
        let base = hint.map_or(base, |h| h.max(base).min(self.settings.max_backoff));
        jittered(base, 20)
    }
}

/// `period` spread by up to ±`percent` % (the clock's sub-second nanos as the randomness), so
/// objects that woke together do not stay in step.
fn jittered(period: Duration, percent: u32) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let low = 1.0 - f64::from(percent) / 100.0;
    period.mul_f64(low + f64::from(nanos % (percent * 20).max(1)) / 1000.0)
}

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or could not be reached.
    #[error("kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    /// An external system failed.
    #[error("{0}")]
    Adapter(#[source] AdapterError),
    /// A referenced object (config, secret) is missing or unusable.
    #[error("{0}")]
    Reference(String),
    /// Referenced Secrets are missing or unreadable; the message names every one of them.
    #[error("{message}")]
    Secrets {
        /// One message naming every problem.
        message: String,
        /// At least one Secret exists but the operator may not read it (RBAC).
        unreadable: bool,
    },
    /// T3 refused the token (401/403) on a call a run needed: permanent for that run.
    #[error("the executor refused the token: {0}")]
    ExecutorUnauthorized(#[source] AdapterError),
    /// The finalizer helper failed (boxed: it contains this type).
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// A static category for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Error::Kube(_) => "kube",
            Error::Adapter(e) => e.kind,
            Error::Reference(_) => "reference",
            Error::Secrets { .. } => "secrets",
            Error::ExecutorUnauthorized(_) => "executor_unauthorized",
            Error::Finalizer(_) => "finalizer",
        }
    }

    /// Failures a healthy loop meets in normal operation (conflicts, blips, limits, its own
    /// retries): logged quietly.
    fn is_expected(&self) -> bool {
        match self {
            Error::Kube(kube::Error::Api(s)) => s.code == 409,
            Error::Adapter(e) => e.error_kind().is_expected(),
            _ => false,
        }
    }

    fn retry_hint(&self) -> Option<Duration> {
        match self {
            Error::Adapter(e) => e.retry_after,
            _ => None,
        }
    }
}

impl Error {
    /// T3 refusing the token becomes the typed, run-ending error; everything else stays an
    /// adapter error (transient ones are retried).
    pub(crate) fn from_executor(e: AdapterError) -> Self {
        if e.is_unauthorized() {
            Error::ExecutorUnauthorized(e)
        } else {
            Error::Adapter(e)
        }
    }
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error::Kube(e)
    }
}

impl From<AdapterError> for Error {
    fn from(e: AdapterError) -> Self {
        Error::Adapter(e)
    }
}

/// A kind this crate reconciles, with the name its metrics and backoff keys use.
pub(crate) trait Reconciled: Resource<DynamicType = ()> {
    /// The `controller` metric label (`afkconfig`, `afkrun`).
    const CONTROLLER: &'static str;
}

impl Reconciled for AfkConfig {
    const CONTROLLER: &'static str = "afkconfig";
}

impl Reconciled for AfkRun {
    const CONTROLLER: &'static str = "afkrun";
}

/// The key of one object's error backoff: the error policy grows it, a clean reconcile resets
/// it, and both build it here.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct BackoffKey {
    controller: &'static str,
    namespace: String,
    name: String,
}

impl BackoffKey {
    /// The key of `obj`.
    pub(crate) fn of<K: Reconciled>(obj: &K) -> Self {
        Self {
            controller: K::CONTROLLER,
            namespace: obj.namespace().unwrap_or_default(),
            name: obj.name_any(),
        }
    }
}

impl std::fmt::Display for BackoffKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

fn error_policy<K: Reconciled>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    let controller = K::CONTROLLER;
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            controller: controller.into(),
            category: err.category().into(),
        })
        .inc();
    let key = BackoffKey::of(obj.as_ref());
    let object = key.to_string();
    let delay = ctx.next_backoff(key, err.retry_hint());
    if err.is_expected() {
        tracing::debug!(controller, %object, error = %err, ?delay, "retrying");
    } else {
        tracing::warn!(controller, %object, error = %err, ?delay, "reconcile failed; retrying");
    }
    Action::requeue(delay)
}

/// A hash of what a human changes on an AfkConfig: the spec (via generation) and annotations.
fn spec_or_annotations(config: &AfkConfig) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    config.metadata.generation.hash(&mut h);
    config.metadata.annotations.hash(&mut h);
    Some(h.finish())
}

/// A request from outside (the GitHub webhook) to reconcile one object now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Poll this AfkConfig (an issue or label changed).
    Config(ObjectRef<AfkConfig>),
    /// Look at this AfkRun (its CI or branch changed).
    Run(ObjectRef<AfkRun>),
}

/// Run both controllers until `shutdown` resolves; `ready` turns true once both watches have
/// synced. [`run_until_shutdown`] is the process's way in (leader election included).
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    ready: impl Into<Readiness>,
    trigger: tokio::sync::broadcast::Receiver<Trigger>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let ready = ready.into();
    let client = ctx.client.clone();
    let (configs, runs): (Api<AfkConfig>, Api<AfkRun>) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let stop_token = tokio_util::sync::CancellationToken::new();
    let stop = || stop_token.clone().cancelled_owned();

    // Status writes (lastPollTime) must not re-trigger a poll: only spec (generation) and
    // annotation (emergency stop) changes do. Runs and webhooks trigger through their own paths.
    let (config_reader, config_writer) = reflector::store();
    let config_changes = watcher(configs.clone(), watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(config_writer)
        .applied_objects()
        .predicate_filter(spec_or_annotations, Default::default());
    let config_controller = Controller::for_stream(config_changes, config_reader)
        .reconcile_on(triggers::gate_changes(
            runs.clone(),
            ctx.settings.config_trigger_window,
        ))
        .reconcile_on(triggers::from_channel(trigger.resubscribe(), |t| match t {
            Trigger::Config(r) => Some(r),
            Trigger::Run(_) => None,
        }))
        .with_config(kube::runtime::controller::Config::default().concurrency(CONFIG_CONCURRENCY))
        .graceful_shutdown_on(stop());
    let config_store = config_controller.store();

    // Bounded concurrency: a burst of requeues (runs dispatched together wake together) queues
    // in the controller instead of piling onto T3, GitHub and the API server at once.
    let run_controller = Controller::new(runs.clone(), watcher::Config::default().any_semantic())
        .with_config(kube::runtime::controller::Config::default().concurrency(RUN_CONCURRENCY));
    let run_store = run_controller.store();
    let run_controller = run_controller
        .reconcile_on(triggers::from_channel(trigger, |t| match t {
            Trigger::Run(r) => Some(r),
            Trigger::Config(_) => None,
        }))
        .watches(configs, watcher::Config::default().any_semantic(), {
            let run_store = run_store.clone();
            move |config: AfkConfig| {
                let ns = config.namespace();
                let name = config.name_any();
                run_store
                    .state()
                    .into_iter()
                    .filter(|r| r.namespace() == ns && r.spec.config_ref == name && !r.is_terminal())
                    .map(|r| ObjectRef::from_obj(r.as_ref()))
                    .collect::<Vec<_>>()
            }
        })
        .graceful_shutdown_on(stop());

    let readiness = {
        let (cs, rs) = (config_store.clone(), run_store.clone());
        async move {
            // Re-ask periodically: a waiter racing the controller's own waiter on the same store
            // was observed to miss the wake-up; a fresh call returns at once once it is ready.
            let mut config_ready = Box::pin(cs.wait_until_ready());
            while tokio::time::timeout(Duration::from_millis(200), config_ready.as_mut())
                .await
                .is_err()
            {}
            let mut run_ready = Box::pin(rs.wait_until_ready());
            while tokio::time::timeout(Duration::from_millis(200), run_ready.as_mut())
                .await
                .is_err()
            {}
            ready.set(true);
            tracing::info!("watches synced; ready");
        }
    };

    let configs_fut = config_controller
        .run(afk_config::reconcile, error_policy::<AfkConfig>, ctx.clone())
        .for_each(|_| async {});
    let runs_fut = run_controller
        .run(afk_run::reconcile, error_policy::<AfkRun>, ctx.clone())
        .for_each(|_| async {});
    let on_shutdown = stop_token.clone();
    let forward = tokio::spawn(async move {
        shutdown.await;
        on_shutdown.cancel();
    });
    let readiness = tokio::spawn(readiness);
    tokio::join!(configs_fut, runs_fut);
    readiness.abort();
    forward.abort();
}
