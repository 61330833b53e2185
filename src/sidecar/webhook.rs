//! `POST /webhooks/github` (SPEC §4.3): verify `X-Hub-Signature-256` (HMAC-SHA256, constant time)
//! against the webhook secret of each AfkConfig that enrols the event's repository (from its
//! `tracker.github.webhookSecretRef`), then reconcile at once through the controllers' trigger
//! channel: issue and label events poll those configs; CI and push events look at their open
//! AfkRuns for the repository. Unsigned, badly signed or altered requests are 401; `ping` is
//! answered; unrelated events are accepted and ignored. Polling stays the safety net.

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use hmac::{Hmac, Mac};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt, api::ListParams, runtime::reflector::ObjectRef};
use serde_json::{Value, json};
use sha2::Sha256;

use super::{SidecarState, error};
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

/// Whether `signature` (`sha256=<hex>`) is the HMAC of `body` under `secret`, in constant time.
pub fn signature_valid(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Some(hex_sig) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

async fn secret_value(api: &Api<Secret>, name: &str, key: &str) -> Option<Vec<u8>> {
    let s = api.get_opt(name).await.ok()??;
    let bytes = s.data?.get(key)?.0.clone();
    let text = String::from_utf8(bytes).ok()?;
    let trimmed = text.trim();
    (!trimmed.is_empty()).then(|| trimmed.as_bytes().to_vec())
}

/// The handler.
pub async fn github(State(state): State<SidecarState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(cluster) = state.cluster.clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this sidecar runs without a cluster connection",
            "unavailable",
        );
    };
    let event = headers
        .get("x-github-event")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let Some(signature) = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
    else {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing X-Hub-Signature-256",
            "unauthorized",
        );
    };
    // The body is parsed before verification only to find whose secret to check it against.
    let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let repo = payload
        .pointer("/repository/full_name")
        .and_then(Value::as_str)
        .map(str::to_string);
    let configs: Api<AfkConfig> = match &cluster.namespace {
        Some(ns) => Api::namespaced(cluster.client.clone(), ns),
        None => Api::all(cluster.client.clone()),
    };
    let Ok(list) = configs.list(&ListParams::default()).await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "cannot read AfkConfigs",
            "unavailable",
        );
    };
    let mut verified = vec![];
    for c in &list.items {
        let enrolled = match &repo {
            Some(r) => c.spec.allowlist.iter().any(|e| e.repo.eq_ignore_ascii_case(r)),
            None => true,
        };
        let Some(secret_ref) = c
            .spec
            .tracker
            .github
            .webhook_secret_ref
            .as_ref()
            .filter(|_| enrolled)
        else {
            continue;
        };
        let secrets: Api<Secret> =
            Api::namespaced(cluster.client.clone(), &c.namespace().unwrap_or_default());
        if let Some(secret) = secret_value(&secrets, &secret_ref.name, &secret_ref.key).await
            && signature_valid(&secret, &body, &signature)
        {
            verified.push(c);
        }
    }
    if verified.is_empty() {
        tracing::warn!(event = %event, repo = repo.as_deref().unwrap_or("-"), "webhook with an invalid signature rejected");
        return error(
            StatusCode::UNAUTHORIZED,
            "signature does not match any enrolled webhook secret",
            "unauthorized",
        );
    }
    if event == "ping" {
        return (StatusCode::OK, Json(json!({"ok": true}))).into_response();
    }
    if !TRIGGERING_EVENTS.contains(&event.as_str()) {
        return (StatusCode::ACCEPTED, Json(json!({"ignored": event}))).into_response();
    }
    let mut triggered = vec![];
    let mut runs_triggered = vec![];
    for c in verified {
        let namespace = c.namespace().unwrap_or_default();
        // No receiver (a standby replica) is fine: the leader's poll is the safety net.
        if !RUN_EVENTS.contains(&event.as_str()) {
            let r = ObjectRef::<AfkConfig>::new(&c.name_any()).within(&namespace);
            let _ = cluster.trigger.send(Trigger::Config(r));
            triggered.push(c.name_any());
            continue;
        }
        let Some(repo) = &repo else { continue };
        let runs: Api<AfkRun> = Api::namespaced(cluster.client.clone(), &namespace);
        let selector = format!(
            "{CONFIG_LABEL}={},{REPO_LABEL}={}",
            c.name_any(),
            naming::repo_label_value(repo)
        );
        let Ok(list) = runs.list(&ListParams::default().labels(&selector)).await else {
            tracing::warn!(config = %c.name_any(), "cannot list AfkRuns for a webhook; the requeue will catch up");
            continue;
        };
        for run in list.items.iter().filter(|r| !r.is_terminal()) {
            let r = ObjectRef::<AfkRun>::new(&run.name_any()).within(&namespace);
            let _ = cluster.trigger.send(Trigger::Run(r));
            runs_triggered.push(run.name_any());
        }
    }
    tracing::info!(event = %event, repo = repo.as_deref().unwrap_or("-"), ?triggered, runs = ?runs_triggered, "webhook triggered reconciles");
    (
        StatusCode::ACCEPTED,
        Json(json!({"triggered": triggered, "runs": runs_triggered})),
    )
        .into_response()
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
        assert!(!signature_valid(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            "sha1=abc"
        ));
        assert!(!signature_valid(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            "sha256=zz"
        ));
        assert!(!signature_valid(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            ""
        ));
    }
}
