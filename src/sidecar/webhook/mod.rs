//! `POST /webhooks/github` (SPEC §4.3). Work is done in order of cost, so an unauthenticated
//! delivery costs as little as possible and no API call at all:
//!
//! 1. headers only: a missing or malformed `X-Hub-Signature-256`, or a `Content-Length` over
//!    [`MAX_BODY`], is refused before the body is read;
//! 2. the body is read (bounded) and its HMAC-SHA256 checked, in constant time, against each
//!    distinct webhook secret in the [`WebhookSecrets`] cache — never against the API server;
//! 3. a delivery id (`X-GitHub-Delivery`) seen before is acknowledged and ignored (a bounded
//!    set, recorded only for authentic deliveries so a forger cannot pre-empt real ones);
//! 4. only then is the body parsed: the configs whose secret verified *and* that enrol the
//!    repository are reconciled through the controllers' trigger channel — issue and label
//!    events poll those configs; CI and push events look at their open AfkRuns.
//!
//! The cache holds, per AfkConfig with `tracker.github.webhookSecretRef`, its enrolled
//! repositories and the secret's value. [`keep_fresh`] fills it from a watch of AfkConfigs
//! (re-reading Secrets only when a config's webhook secret reference or allowlist changed — not
//! on every status write) and re-reads the Secrets every `--webhook-secret-refresh-secs`, which
//! is how a rotated secret is picked up (RBAC grants `get` on named Secrets only, so they cannot
//! be watched). `ping` is answered; unrelated events are accepted and ignored. Polling stays the
//! safety net.

use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use axum::{
    Json,
    extract::{Request, State},
    http::{HeaderMap, StatusCode, header},
};
use futures::StreamExt;
use hmac::{Hmac, Mac};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::ListParams,
    runtime::{WatchStreamExt, reflector::ObjectRef, watcher},
};
use serde::Serialize;
use serde_json::Value;
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use super::{SidecarState, error::ApiError};
use crate::{
    controller::Trigger,
    crd::{AfkConfig, AfkRun, CONFIG_LABEL, REPO_LABEL},
    policy::naming,
};

/// Events that can change what the loop should do.
pub const TRIGGERING_EVENTS: [&str; 8] = [
    "issues",
    "label",
    "check_run",
    "check_suite",
    "status",
    "workflow_run",
    "push",
    "issue_dependencies",
];

/// Events about CI or the branch: they concern the repository's open runs.
pub const RUN_EVENTS: [&str; 5] = ["check_run", "check_suite", "status", "workflow_run", "push"];

/// Largest accepted delivery (GitHub caps payloads at 25 MB; ours need far less).
pub const MAX_BODY: usize = 5 * 1024 * 1024;

/// Delivery ids remembered (a GUID each: ~100 bytes with the set's overhead, so ~1 MiB at most).
/// GitHub redelivers within hours; this many covers days of a busy organisation's events.
pub const MAX_REMEMBERED_DELIVERIES: usize = 10_000;

/// The decoded `sha256=<hex>` signature, or `None` when malformed.
pub fn parse_signature(signature: &str) -> Option<[u8; 32]> {
    let hex_sig = signature.strip_prefix("sha256=")?;
    let mut sig = [0u8; 32];
    hex::decode_to_slice(hex_sig.trim(), &mut sig).ok()?;
    Some(sig)
}

/// Whether `signature` (`sha256=<hex>`) is the HMAC of `body` under `secret`, in constant time.
pub fn signature_valid(secret: &[u8], body: &[u8], signature: &str) -> bool {
    parse_signature(signature).is_some_and(|sig| mac_matches(secret, body, &sig))
}

fn mac_matches(secret: &[u8], body: &[u8], sig: &[u8; 32]) -> bool {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(sig).is_ok()
}

/// One AfkConfig that takes webhooks.
#[derive(Clone, PartialEq, Eq)]
struct Enrolled {
    namespace: String,
    name: String,
    /// Enrolled repositories, lower-cased.
    repos: Vec<String>,
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
    fn verify(&self, body: &[u8], sig: &[u8; 32]) -> Option<Vec<Enrolled>> {
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

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// What an authentic delivery was answered (fields alphabetical in each: the former `json!` order).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Delivered {
    /// `200`: this delivery id was seen before; nothing was done.
    Duplicate {
        /// The delivery id.
        duplicate: String,
    },
    /// `200`: GitHub's `ping`.
    Pong {
        /// Always true.
        ok: bool,
    },
    /// `202`: an event that cannot change what the loop does.
    Ignored {
        /// The event name.
        ignored: String,
    },
    /// `202`: the reconciles it triggered.
    Triggered {
        /// AfkRuns poked (CI and push events).
        runs: Vec<String>,
        /// AfkConfigs polled (issue and label events).
        triggered: Vec<String>,
    },
}

/// The handler.
pub async fn github(
    State(state): State<SidecarState>,
    request: Request,
) -> Result<(StatusCode, Json<Delivered>), ApiError> {
    let (Some(cluster), Some(cache)) = (state.cluster.clone(), state.webhook.clone()) else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this sidecar runs without a cluster connection",
            "unavailable",
        ));
    };
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    // 1. Headers only.
    let event = header(headers, "x-github-event").unwrap_or("").to_string();
    let Some(signature) = header(headers, "x-hub-signature-256") else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing X-Hub-Signature-256",
            "unauthorized",
        ));
    };
    let Some(signature) = parse_signature(signature) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "X-Hub-Signature-256 is not `sha256=<64 hex digits>`",
            "unauthorized",
        ));
    };
    let declared = header(headers, header::CONTENT_LENGTH.as_str()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(ApiError::too_large(MAX_BODY));
    }
    if !cache.is_loaded() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "webhook secrets are still being loaded",
            "unavailable",
        )
        .retry_after(5));
    }
    // 2. The body, bounded, against the cached secrets.
    let body = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ApiError::too_large(MAX_BODY))?;
    let verified = cache.verify(&body, &signature).unwrap_or_default();
    if verified.is_empty() {
        tracing::warn!(event = %event, "webhook with an invalid signature rejected");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "signature does not match any enrolled webhook secret",
            "unauthorized",
        ));
    }
    // 3. Seen before?
    if let Some(delivery) = header(headers, "x-github-delivery").filter(|d| !d.is_empty() && d.len() <= 128)
        && !cache.first_delivery(delivery)
    {
        tracing::info!(event = %event, delivery, "webhook delivery seen before; ignored");
        let duplicate = delivery.to_string();
        return Ok((StatusCode::OK, Json(Delivered::Duplicate { duplicate })));
    }
    // 4. Parse and act.
    let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let repo = payload
        .pointer("/repository/full_name")
        .and_then(Value::as_str)
        .map(str::to_string);
    let enrolled: Vec<Enrolled> = verified
        .into_iter()
        .filter(|c| match &repo {
            Some(r) => c.repos.iter().any(|e| e.eq_ignore_ascii_case(r)),
            None => true,
        })
        .collect();
    if enrolled.is_empty() {
        tracing::warn!(event = %event, repo = repo.as_deref().unwrap_or("-"), "signed webhook for a repository no config with that secret enrols");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "signature does not match any enrolled webhook secret",
            "unauthorized",
        ));
    }
    if event == "ping" {
        return Ok((StatusCode::OK, Json(Delivered::Pong { ok: true })));
    }
    if !TRIGGERING_EVENTS.contains(&event.as_str()) {
        return Ok((StatusCode::ACCEPTED, Json(Delivered::Ignored { ignored: event })));
    }
    let mut triggered = vec![];
    let mut runs_triggered = vec![];
    for c in enrolled {
        // No receiver (a standby replica) is fine: the leader's poll is the safety net.
        if !RUN_EVENTS.contains(&event.as_str()) {
            let r = ObjectRef::<AfkConfig>::new(&c.name).within(&c.namespace);
            let _ = cluster.trigger.send(Trigger::Config(r));
            triggered.push(c.name);
            continue;
        }
        let Some(repo) = &repo else { continue };
        let runs: Api<AfkRun> = Api::namespaced(cluster.client.clone(), &c.namespace);
        let selector = format!(
            "{CONFIG_LABEL}={},{REPO_LABEL}={}",
            c.name,
            naming::repo_label_value(repo)
        );
        let Ok(list) = runs.list(&ListParams::default().labels(&selector)).await else {
            tracing::warn!(config = %c.name, "cannot list AfkRuns for a webhook; the requeue will catch up");
            continue;
        };
        for run in list.items.iter().filter(|r| !r.is_terminal()) {
            let r = ObjectRef::<AfkRun>::new(&run.name_any()).within(&c.namespace);
            let _ = cluster.trigger.send(Trigger::Run(r));
            runs_triggered.push(run.name_any());
        }
    }
    tracing::info!(event = %event, repo = repo.as_deref().unwrap_or("-"), ?triggered, runs = ?runs_triggered, "webhook triggered reconciles");
    let triggered = Delivered::Triggered {
        runs: runs_triggered,
        triggered,
    };
    Ok((StatusCode::ACCEPTED, Json(triggered)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        // GitHub's documented example: secret "It's a Secret to Everybody", payload "Hello, World!".
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(signature_valid(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            sig
        ));
        assert!(
            !signature_valid(b"It's a Secret to Everybody", b"Hello, World?", sig),
            "body changed"
        );
        assert!(!signature_valid(b"other", b"Hello, World!", sig), "wrong secret");
        for bad in ["sha1=abc", "sha256=zz", "", "sha256=757107", &format!("{sig}00")] {
            assert!(
                !signature_valid(b"It's a Secret to Everybody", b"Hello, World!", bad),
                "{bad:?}"
            );
        }
    }

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
