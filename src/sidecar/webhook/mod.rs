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

mod secrets;

use axum::{
    Json,
    extract::{Request, State},
    http::{HeaderMap, StatusCode, header},
};
use hmac::{Hmac, Mac};
use kube::{Api, ResourceExt, api::ListParams, runtime::reflector::ObjectRef};
use serde::Serialize;
use serde_json::Value;
use sha2::Sha256;

use self::secrets::Enrolled;
pub use self::secrets::{WebhookSecrets, keep_fresh};
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

/// Whether `sig` is the HMAC-SHA256 of `body` under `secret` (constant time).
fn mac_matches(secret: &[u8], body: &[u8], sig: &[u8; 32]) -> bool {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(sig).is_ok()
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
}
