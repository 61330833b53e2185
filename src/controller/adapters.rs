//! The adapters of one AfkConfig, built from its spec and the Secrets it names, cached across
//! reconciles (the GitHub client's ETag cache and rate-limit view must survive between polls)
//! and rebuilt when an endpoint changes. Secrets are re-read from the API at most every
//! `secret_refresh`, so a rotated token takes effect without a restart.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::Instant,
};

use k8s_openapi::api::core::v1::Secret as KubeSecret;
use kube::{Api, Client, ResourceExt};

use super::{Error, Settings};
use crate::{
    adapters::{
        AdapterError, AdapterErrorKind, Secret, SecretSource,
        github::{GitHubClient, GitHubOptions, Tracker},
        github_app::{GitHubAppToken, HttpTokenExchange, check_private_key},
        notify::{Notifier, NtfyNotifier, SlackNotifier},
        rollout::{KubeRolloutChecker, RolloutChecker},
        t3::{Executor, T3Client},
        woodpecker::{DeployCi, WoodpeckerClient},
    },
    crd::{AfkConfig, SecretKeyRef},
};

/// A secret value the controller refreshes from a Kubernetes Secret.
#[derive(Debug, Default)]
pub struct SharedSecret {
    value: RwLock<Option<Secret>>,
}

impl SharedSecret {
    /// Replace the value.
    pub fn set(&self, value: Secret) {
        *self.value.write().expect("secret lock") = Some(value);
    }
}

impl SecretSource for SharedSecret {
    fn read(&self) -> Result<Secret, AdapterError> {
        self.value
            .read()
            .expect("secret lock")
            .clone()
            .ok_or_else(|| AdapterError::permanent(AdapterErrorKind::SecretUnloaded, "secret not loaded yet"))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Key {
    github: String,
    t3: String,
    woodpecker: Option<String>,
    slack: bool,
    ntfy: Option<(String, String, bool)>,
    secrets: Vec<(String, String)>,
}

/// The adapters of one AfkConfig.
pub struct Adapters {
    key: Key,
    /// The issue tracker.
    pub tracker: Arc<dyn Tracker>,
    /// The agent executor.
    pub executor: Arc<dyn Executor>,
    /// The deploy stage, when configured.
    pub deploy: Option<Arc<dyn DeployCi>>,
    /// Notification channels.
    pub notifiers: Vec<Arc<dyn Notifier>>,
    /// The rollout checker.
    pub rollout: Arc<dyn RolloutChecker>,
    secrets: Vec<(SecretKeyRef, Arc<SharedSecret>)>,
    loaded_at: Mutex<Option<Instant>>,
    shell: tokio::sync::Mutex<Option<(Instant, Arc<crate::adapters::t3::Shell>)>>,
}

/// How long one `/shell` answer serves every run of a config: one poll per second instead of
/// one per run reconcile keeps T3's load flat as runs grow.
const SHELL_TTL: std::time::Duration = std::time::Duration::from_secs(1);

impl Adapters {
    /// Adapters from parts, not from an AfkConfig: tests drive a reconcile with the in-memory
    /// ones (`adapters::memory`).
    pub fn from_parts(
        tracker: Arc<dyn Tracker>,
        executor: Arc<dyn Executor>,
        notifiers: Vec<Arc<dyn Notifier>>,
        rollout: Arc<dyn RolloutChecker>,
    ) -> Self {
        Self {
            key: Key::default(),
            tracker,
            executor,
            deploy: None,
            notifiers,
            rollout,
            secrets: vec![],
            loaded_at: Mutex::new(Some(Instant::now())),
            shell: tokio::sync::Mutex::new(None),
        }
    }

    /// T3's shell, shared by the runs of this config for up to a second.
    pub async fn shell(&self) -> Result<Arc<crate::adapters::t3::Shell>, AdapterError> {
        let mut cached = self.shell.lock().await;
        if let Some((at, shell)) = cached.as_ref()
            && at.elapsed() < SHELL_TTL
        {
            return Ok(shell.clone());
        }
        let shell = Arc::new(self.executor.shell().await?);
        *cached = Some((Instant::now(), shell.clone()));
        Ok(shell)
    }
}

impl std::fmt::Debug for Adapters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adapters")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Adapters per AfkConfig.
pub struct AdapterCache {
    client: Client,
    settings: Settings,
    map: Mutex<HashMap<String, Arc<Adapters>>>,
}

impl std::fmt::Debug for AdapterCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdapterCache")
    }
}

fn secret_refs(config: &AfkConfig) -> Result<Vec<(&'static str, SecretKeyRef)>, Error> {
    let spec = &config.spec;
    let mut refs = vec![];
    match (&spec.tracker.github.token_secret_ref, &spec.tracker.github.app) {
        (Some(r), _) => refs.push(("github", r.clone())),
        (None, Some(app)) => refs.push(("github_app_key", app.private_key_secret_ref.clone())),
        (None, None) => {
            return Err(Error::Reference(
                "tracker.github needs tokenSecretRef or app".into(),
            ));
        }
    }
    refs.push(("t3", spec.executor.t3.token_secret_ref.clone()));
    if let Some(w) = &spec.ci.woodpecker {
        refs.push(("woodpecker", w.token_secret_ref.clone()));
    }
    if let Some(s) = &spec.notify.slack {
        refs.push(("slack", s.webhook_secret_ref.clone()));
    }
    if let Some(n) = spec.notify.ntfy.as_ref().and_then(|n| n.token_secret_ref.clone()) {
        refs.push(("ntfy", n));
    }
    Ok(refs)
}

impl AdapterCache {
    /// An empty cache.
    pub fn new(client: Client, settings: Settings) -> Self {
        Self {
            client,
            settings,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Serve `config` with `adapters` (tests: the in-memory ones, [`Adapters::from_parts`])
    /// instead of clients built from its spec. The Secrets it names are still read from the API
    /// on every refresh, so a missing one stalls the config as it would with real clients; a
    /// later change of endpoint or Secret reference builds real clients again.
    pub fn install(&self, config: &AfkConfig, adapters: Adapters) -> Result<(), Error> {
        let refs = secret_refs(config)?;
        let installed = Adapters {
            key: cache_key(config, &refs),
            secrets: refs
                .into_iter()
                .map(|(_, r)| (r, Arc::new(SharedSecret::default())))
                .collect(),
            loaded_at: Mutex::new(None),
            ..adapters
        };
        self.map
            .lock()
            .expect("adapter cache")
            .insert(config_id(config), Arc::new(installed));
        Ok(())
    }

    /// The adapters for `config`, built or refreshed as needed.
    pub async fn for_config(&self, config: &AfkConfig) -> Result<Arc<Adapters>, Error> {
        let refs = secret_refs(config)?;
        let key = cache_key(config, &refs);
        let id = config_id(config);
        let existing = self.map.lock().expect("adapter cache").get(&id).cloned();
        let adapters = match existing {
            Some(a) if a.key == key => a,
            _ => {
                let built = Arc::new(self.build(config, key, &refs));
                self.map.lock().expect("adapter cache").insert(id, built.clone());
                built
            }
        };
        let stale = adapters
            .loaded_at
            .lock()
            .expect("loaded")
            .is_none_or(|t| t.elapsed() >= self.settings.secret_refresh);
        if stale {
            let ns = config.namespace().unwrap_or_default();
            let api: Api<KubeSecret> = Api::namespaced(self.client.clone(), &ns);
            // Every Secret is read and every problem reported at once, not one per poll.
            let mut problems = vec![];
            let mut unreadable = false;
            let app_key = refs.iter().find(|(n, _)| *n == "github_app_key").map(|(_, r)| r);
            for (r, shared) in &adapters.secrets {
                match read_secret(&api, r).await {
                    // A key that cannot sign is a Secret to fix, not a GitHub outage.
                    Ok(value) if app_key == Some(r) && check_private_key(&value).is_err() => {
                        problems.push(format!(
                            "Secret {:?} key {:?} is not an RSA private key in PEM form (the App's .pem file)",
                            r.name, r.key
                        ));
                    }
                    Ok(value) => shared.set(value),
                    Err(SecretError::Problem(p)) => problems.push(p),
                    Err(SecretError::Forbidden(p)) => {
                        unreadable = true;
                        problems.push(p);
                    }
                    Err(SecretError::Kube(e)) => return Err(Error::Kube(e)),
                }
            }
            if !problems.is_empty() {
                problems.dedup();
                return Err(Error::Secrets {
                    message: problems.join("; "),
                    unreadable,
                });
            }
            *adapters.loaded_at.lock().expect("loaded") = Some(Instant::now());
        }
        Ok(adapters)
    }

    fn build(&self, config: &AfkConfig, key: Key, refs: &[(&'static str, SecretKeyRef)]) -> Adapters {
        let spec = &config.spec;
        let mut secrets = vec![];
        let mut shared = |name: &str| -> Option<Arc<SharedSecret>> {
            let (_, r) = refs.iter().find(|(n, _)| *n == name)?;
            let s = Arc::new(SharedSecret::default());
            secrets.push((r.clone(), s.clone()));
            Some(s)
        };
        let options = GitHubOptions {
            min_mutation_interval: self.settings.github_min_mutation_interval,
            ..GitHubOptions::default()
        };
        let api_url = &spec.tracker.github.api_url;
        // A token wins over an App, as in `secret_refs`.
        let client = match (&spec.tracker.github.token_secret_ref, &spec.tracker.github.app) {
            (None, Some(app)) => {
                let key = shared("github_app_key").expect("checked by secret_refs");
                let app = Arc::new(GitHubAppToken::new(
                    app.app_id,
                    app.installation_id,
                    key,
                    Arc::new(HttpTokenExchange::new(api_url)),
                ));
                GitHubClient::new(api_url, app.clone(), options).with_token_mint(app)
            }
            _ => GitHubClient::new(
                api_url,
                shared("github").expect("checked by secret_refs"),
                options,
            ),
        };
        let t3_token = shared("t3").expect("always present");
        let tracker: Arc<dyn Tracker> = Arc::new(client);
        let executor: Arc<dyn Executor> = Arc::new(T3Client::new(&spec.executor.t3.url, t3_token));
        let deploy: Option<Arc<dyn DeployCi>> = spec.ci.woodpecker.as_ref().and_then(|w| {
            let token = shared("woodpecker")?;
            Some(Arc::new(WoodpeckerClient::new(&w.url, token, 3)) as Arc<dyn DeployCi>)
        });
        let mut notifiers: Vec<Arc<dyn Notifier>> = vec![];
        if spec.notify.slack.is_some()
            && let Some(url) = shared("slack")
        {
            notifiers.push(Arc::new(SlackNotifier::new(url, self.settings.notify_retry)));
        }
        if let Some(n) = &spec.notify.ntfy {
            let token = shared("ntfy").map(|t| t as Arc<dyn SecretSource>);
            notifiers.push(Arc::new(NtfyNotifier::new(
                &n.url,
                &n.topic,
                token,
                self.settings.notify_retry,
            )));
        }
        Adapters {
            key,
            tracker,
            executor,
            deploy,
            notifiers,
            rollout: Arc::new(KubeRolloutChecker::new(self.client.clone())),
            secrets,
            loaded_at: Mutex::new(None),
            shell: tokio::sync::Mutex::new(None),
        }
    }
}

/// What the cached adapters of a config were built from: a change rebuilds them.
fn cache_key(config: &AfkConfig, refs: &[(&'static str, SecretKeyRef)]) -> Key {
    let spec = &config.spec;
    let github = &spec.tracker.github;
    Key {
        github: match (&github.token_secret_ref, &github.app) {
            (None, Some(app)) => format!(
                "{} app {} installation {}",
                github.api_url, app.app_id, app.installation_id
            ),
            _ => github.api_url.clone(),
        },
        t3: spec.executor.t3.url.clone(),
        woodpecker: spec.ci.woodpecker.as_ref().map(|w| w.url.clone()),
        slack: spec.notify.slack.is_some(),
        ntfy: spec
            .notify
            .ntfy
            .as_ref()
            .map(|n| (n.url.clone(), n.topic.clone(), n.token_secret_ref.is_some())),
        secrets: refs
            .iter()
            .map(|(_, r)| (r.name.clone(), r.key.clone()))
            .collect(),
    }
}

fn config_id(config: &AfkConfig) -> String {
    format!("{}/{}", config.namespace().unwrap_or_default(), config.name_any())
}

enum SecretError {
    /// Missing, without the key, empty or not UTF-8.
    Problem(String),
    /// The operator's RBAC does not allow reading it.
    Forbidden(String),
    /// The API server could not be asked.
    Kube(kube::Error),
}

async fn read_secret(api: &Api<KubeSecret>, r: &SecretKeyRef) -> Result<Secret, SecretError> {
    let secret = match api.get_opt(&r.name).await {
        Ok(Some(s)) => s,
        Ok(None) => return Err(SecretError::Problem(format!("Secret {:?} not found", r.name))),
        Err(kube::Error::Api(e)) if e.code == 403 => {
            return Err(SecretError::Forbidden(format!(
                "Secret {:?} not readable: add it to the chart's `secretNames`",
                r.name
            )));
        }
        Err(e) => return Err(SecretError::Kube(e)),
    };
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|b| b.0.clone())
        .ok_or_else(|| SecretError::Problem(format!("Secret {:?} has no key {:?}", r.name, r.key)))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| SecretError::Problem(format!("Secret {:?} key {:?} is not UTF-8", r.name, r.key)))?;
    let value = text.trim();
    if value.is_empty() {
        return Err(SecretError::Problem(format!(
            "Secret {:?} key {:?} is empty",
            r.name, r.key
        )));
    }
    Ok(Secret::new(value))
}
