//! The webhook secrets cache: per AfkConfig with `tracker.github.webhookSecretRef`, its enrolled
//! repositories and the secret's value, grouped by distinct secret so a delivery costs one HMAC
//! per secret; plus the bounded set of delivery ids already seen. [`keep_fresh`] fills it from a
//! watch of AfkConfigs and a periodic re-read of the Secrets.

use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use tokio_util::sync::CancellationToken;

use super::{MAX_REMEMBERED_DELIVERIES, mac_matches};
use crate::crd::AfkConfig;

/// One AfkConfig that takes webhooks.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Enrolled {
    pub(super) namespace: String,
    pub(super) name: String,
    /// Enrolled repositories, lower-cased.
    pub(super) repos: Vec<String>,
}

/// The configs sharing one secret value (usually one secret for all).
#[derive(Clone)]
struct Key {
    secret: Arc<[u8]>,
    configs: Vec<Enrolled>,
}

/// What a config's webhook needs: where its secret is and which repositories it enrols. The
/// cache re-reads Secrets when this changes, not when anything else on the config does.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Wanted {
    namespace: String,
    name: String,
    secret_name: String,
    secret_key: String,
    repos: Vec<String>,
}

fn wanted(configs: &[Arc<AfkConfig>]) -> Vec<Wanted> {
    let mut out: Vec<Wanted> = configs
        .iter()
        .filter_map(|c| {
            let r = c.spec.tracker.github.webhook_secret_ref.as_ref()?;
            let mut repos: Vec<String> = c
                .spec
                .allowlist
                .iter()
                .map(|e| e.repo.to_ascii_lowercase())
                .collect();
            repos.sort();
            Some(Wanted {
                namespace: c.namespace().unwrap_or_default(),
                name: c.name_any(),
                secret_name: r.name.clone(),
                secret_key: r.key.clone(),
                repos,
            })
        })
        .collect();
    out.sort();
    out
}

/// Webhook secrets and seen delivery ids, shared by the handler and [`keep_fresh`].
#[derive(Default)]
pub struct WebhookSecrets {
    /// `None` until the first load.
    keys: RwLock<Option<Arc<Vec<Key>>>>,
    loaded: tokio::sync::Notify,
    deliveries: Mutex<Deliveries>,
}

impl std::fmt::Debug for WebhookSecrets {
    // Never the secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = self.keys.read().expect("webhook keys").as_ref().map(|k| k.len());
        f.debug_struct("WebhookSecrets")
            .field("keys", &keys)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Deliveries {
    seen: HashSet<String>,
    order: VecDeque<String>,
}

impl WebhookSecrets {
    /// An empty, not yet loaded cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the first load finished.
    pub fn is_loaded(&self) -> bool {
        self.keys.read().expect("webhook keys").is_some()
    }

    /// Wait for the first load.
    pub async fn wait_loaded(&self) {
        loop {
            let notified = self.loaded.notified();
            if self.is_loaded() {
                return;
            }
            notified.await;
        }
    }

    /// Number of distinct secrets held.
    pub fn distinct_secrets(&self) -> usize {
        self.keys
            .read()
            .expect("webhook keys")
            .as_ref()
            .map_or(0, |k| k.len())
    }

    fn replace(&self, keys: Vec<Key>) {
        *self.keys.write().expect("webhook keys") = Some(Arc::new(keys));
        self.loaded.notify_waiters();
    }

    /// Test and bench helper: hold `secret` for the config `namespace/name` enrolling `repos`.
    pub fn set_for_tests(&self, entries: &[(&str, &str, &[&str], &[u8])]) {
        let mut keys: Vec<Key> = vec![];
        for (namespace, name, repos, secret) in entries {
            let config = Enrolled {
                namespace: (*namespace).to_string(),
                name: (*name).to_string(),
                repos: repos.iter().map(|r| r.to_ascii_lowercase()).collect(),
            };
            match keys.iter_mut().find(|k| &*k.secret == *secret) {
                Some(k) => k.configs.push(config),
                None => keys.push(Key {
                    secret: Arc::from(*secret),
                    configs: vec![config],
                }),
            }
        }
        self.replace(keys);
    }

    /// The configs whose secret signed `body` (`None` before the first load).
    pub(super) fn verify(&self, body: &[u8], sig: &[u8; 32]) -> Option<Vec<Enrolled>> {
        let keys = self.keys.read().expect("webhook keys").clone()?;
        Some(
            keys.iter()
                .filter(|k| mac_matches(&k.secret, body, sig))
                .flat_map(|k| k.configs.iter().cloned())
                .collect(),
        )
    }

    /// Record a delivery id; `false` when it was seen before.
    pub fn first_delivery(&self, id: &str) -> bool {
        let mut d = self.deliveries.lock().expect("deliveries");
        if d.seen.contains(id) {
            return false;
        }
        d.seen.insert(id.to_string());
        d.order.push_back(id.to_string());
        if d.order.len() > MAX_REMEMBERED_DELIVERIES
            && let Some(old) = d.order.pop_front()
        {
            d.seen.remove(&old);
        }
        true
    }

    /// Delivery ids remembered now.
    pub fn remembered_deliveries(&self) -> usize {
        self.deliveries.lock().expect("deliveries").order.len()
    }
}

async fn secret_value(api: &Api<Secret>, name: &str, key: &str) -> Result<Option<Vec<u8>>, kube::Error> {
    let Some(s) = api.get_opt(name).await? else {
        return Ok(None);
    };
    let Some(bytes) = s.data.and_then(|mut d| d.remove(key)).map(|b| b.0) else {
        return Ok(None);
    };
    let Ok(text) = String::from_utf8(bytes) else {
        return Ok(None);
    };
    let trimmed = text.trim();
    Ok((!trimmed.is_empty()).then(|| trimmed.as_bytes().to_vec()))
}

/// Read the Secrets `wanted` names and replace the cache. A Secret that cannot be read keeps the
/// value it had (a passing API hiccup must not lock webhooks out); a missing one drops it.
async fn reload(cache: &WebhookSecrets, client: &kube::Client, wanted: &[Wanted]) {
    let previous: BTreeMap<(String, String), Arc<[u8]>> = cache
        .keys
        .read()
        .expect("webhook keys")
        .as_ref()
        .map(|keys| {
            keys.iter()
                .flat_map(|k| {
                    k.configs
                        .iter()
                        .map(|c| ((c.namespace.clone(), c.name.clone()), k.secret.clone()))
                })
                .collect()
        })
        .unwrap_or_default();
    // (namespace, Secret, key) → its value, so a Secret shared by configs is read once.
    type SecretId = (String, String, String);
    let mut read: BTreeMap<SecretId, Option<Arc<[u8]>>> = BTreeMap::new();
    let mut keys: Vec<Key> = vec![];
    for w in wanted {
        let secret_id = (w.namespace.clone(), w.secret_name.clone(), w.secret_key.clone());
        let value = match read.get(&secret_id) {
            Some(v) => v.clone(),
            None => {
                let api: Api<Secret> = Api::namespaced(client.clone(), &w.namespace);
                let v = match secret_value(&api, &w.secret_name, &w.secret_key).await {
                    Ok(v) => v.map(Arc::from),
                    Err(err) => {
                        tracing::warn!(namespace = %w.namespace, config = %w.name, secret = %w.secret_name, error = %err, "cannot read a webhook secret; keeping the last value");
                        previous.get(&(w.namespace.clone(), w.name.clone())).cloned()
                    }
                };
                read.insert(secret_id, v.clone());
                v
            }
        };
        let Some(secret) = value else {
            tracing::warn!(namespace = %w.namespace, config = %w.name, secret = %w.secret_name, "webhook secret missing or empty; deliveries for this config are refused");
            continue;
        };
        let config = Enrolled {
            namespace: w.namespace.clone(),
            name: w.name.clone(),
            repos: w.repos.clone(),
        };
        match keys.iter_mut().find(|k| k.secret == secret) {
            Some(k) => k.configs.push(config),
            None => keys.push(Key {
                secret,
                configs: vec![config],
            }),
        }
    }
    tracing::debug!(
        configs = wanted.len(),
        distinct = keys.len(),
        "webhook secrets loaded"
    );
    cache.replace(keys);
}

/// Keep `cache` current until `shutdown`: watch AfkConfigs (in `namespace`, or all), re-read the
/// Secrets when what webhooks need of a config changed, and every `refresh` regardless.
pub async fn keep_fresh(
    cache: Arc<WebhookSecrets>,
    client: kube::Client,
    namespace: Option<String>,
    refresh: Duration,
    shutdown: CancellationToken,
) {
    let api: Api<AfkConfig> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (reader, writer) = kube::runtime::reflector::store();
    let stream = kube::runtime::reflector(writer, watcher(api, watcher::Config::default().any_semantic()))
        .default_backoff();
    tokio::pin!(stream);
    let mut current: Option<Vec<Wanted>> = None;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + refresh, refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => true,
            event = stream.next() => match event {
                None => return,
                Some(Err(err)) => {
                    tracing::debug!(error = %err, "AfkConfig watch for webhook secrets failed; retrying");
                    continue;
                }
                Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => continue,
                Some(Ok(_)) => false,
            },
        };
        if reader.wait_until_ready().await.is_err() {
            return;
        }
        let now = wanted(&reader.state());
        if forced || current.as_ref() != Some(&now) {
            reload(&cache, &client, &now).await;
            current = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    use super::*;

    #[test]
    fn delivery_ids_are_remembered_within_a_bound() {
        let cache = WebhookSecrets::new();
        assert!(cache.first_delivery("a"));
        assert!(!cache.first_delivery("a"));
        for i in 0..MAX_REMEMBERED_DELIVERIES {
            assert!(cache.first_delivery(&i.to_string()));
        }
        assert_eq!(cache.remembered_deliveries(), MAX_REMEMBERED_DELIVERIES);
        assert!(cache.first_delivery("a"), "the oldest id was forgotten");
    }

    #[test]
    fn configs_sharing_a_secret_are_one_key() {
        let cache = WebhookSecrets::new();
        assert!(!cache.is_loaded());
        cache.set_for_tests(&[
            ("ns", "a", &["o/r"], b"s1"),
            ("ns", "b", &["o/q"], b"s1"),
            ("ns", "c", &["o/r"], b"s2"),
        ]);
        assert_eq!(cache.distinct_secrets(), 2);
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s1").unwrap();
        mac.update(b"body");
        let sig: [u8; 32] = mac.finalize().into_bytes().into();
        let names: Vec<String> = cache
            .verify(b"body", &sig)
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
    }
}
