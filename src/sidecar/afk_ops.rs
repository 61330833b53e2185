//! AFK operations (SPEC §4.3): the operator's view of the runs, grouped for a phone screen, and
//! the emergency stop. The sidecar never performs loop side effects itself: the stop is the
//! `afk.dev/emergency-stop` annotation, and the controller acts on it. The view carries no
//! tokens and no command ids.

use axum::{
    Extension, Json,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{SidecarState, auth::Caller, error};
use crate::crd::{AfkConfig, AfkRun, EMERGENCY_STOP_ANNOTATION, Phase};

/// One run, as the operations view shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunView {
    name: String,
    namespace: String,
    repo: String,
    issue: u64,
    title: String,
    phase: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ci: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thread_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    commit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at: Option<String>,
}

fn view(r: &AfkRun) -> RunView {
    let s = r.status.clone().unwrap_or_default();
    RunView {
        name: r.name_any(),
        namespace: r.namespace().unwrap_or_default(),
        repo: r.spec.repo.clone(),
        issue: r.spec.issue,
        title: r.spec.title.clone(),
        phase: r.phase().as_str().into(),
        ci: s.ci.map(|c| format!("{:?}", c.verdict)),
        attempts: s.attempts,
        reason: s.reason,
        message: s.message,
        thread_url: s.thread_url,
        commit: s.commit,
        finished_at: s.finished_at.map(|t| t.0.to_string()),
    }
}

fn configs_api(state: &SidecarState, namespace: Option<&str>) -> Option<Api<AfkConfig>> {
    let c = state.cluster.as_ref()?;
    Some(match namespace.or(c.namespace.as_deref()) {
        Some(ns) => Api::namespaced(c.client.clone(), ns),
        None => Api::all(c.client.clone()),
    })
}

fn no_cluster() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "this sidecar runs without a cluster connection (use `afk-operator run`)",
        "unavailable",
    )
}

/// `GET /api/afk/runs`.
pub async fn runs(State(state): State<SidecarState>) -> Response {
    let Some(c) = state.cluster.as_ref() else {
        return no_cluster();
    };
    let runs_api: Api<AfkRun> = match &c.namespace {
        Some(ns) => Api::namespaced(c.client.clone(), ns),
        None => Api::all(c.client.clone()),
    };
    let (runs, configs) = match (
        runs_api.list(&ListParams::default()).await,
        configs_api(&state, None)
            .expect("cluster")
            .list(&ListParams::default())
            .await,
    ) {
        (Ok(r), Ok(c)) => (r.items, c.items),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "cannot list AFK objects");
            return error(
                StatusCode::BAD_GATEWAY,
                "cannot read AfkRuns/AfkConfigs from the API server",
                "upstream",
            );
        }
    };
    let mut in_progress: Vec<&AfkRun> = runs.iter().filter(|r| !r.is_terminal()).collect();
    in_progress.sort_by_key(|r| (r.spec.repo.clone(), r.spec.issue));
    let finished = |r: &&AfkRun| r.status.as_ref().and_then(|s| s.finished_at.clone()).map(|t| t.0);
    let mut resolved: Vec<&AfkRun> = runs.iter().filter(|r| r.phase() == Phase::Succeeded).collect();
    resolved.sort_by_key(|r| std::cmp::Reverse(finished(r)));
    let mut failed: Vec<&AfkRun> = runs
        .iter()
        .filter(|r| {
            matches!(
                r.phase(),
                Phase::NeedsHuman | Phase::Frozen | Phase::Failed | Phase::Cancelled
            )
        })
        .collect();
    failed.sort_by_key(|r| std::cmp::Reverse(finished(r)));
    let queued: Vec<serde_json::Value> = configs
        .iter()
        .flat_map(|c| {
            let name = c.name_any();
            c.status.iter().flat_map(|s| s.queue.iter()).map(move |q| {
                json!({"config": name, "repo": q.repo, "issue": q.issue, "title": q.title, "priority": q.priority, "reason": q.reason})
            })
        })
        .collect();
    Json(json!({
        "inProgress": in_progress.into_iter().map(view).collect::<Vec<_>>(),
        "queued": queued,
        "recentlyResolved": resolved.into_iter().take(20).map(view).collect::<Vec<_>>(),
        "failedOrBlocked": failed.into_iter().take(50).map(view).collect::<Vec<_>>(),
    }))
    .into_response()
}

/// Body of `POST /api/afk/emergency-stop`.
#[derive(Debug, Deserialize)]
pub struct StopRequest {
    /// The AfkConfig; may be omitted when the namespace has exactly one.
    config: Option<String>,
    /// Namespace of the config (defaults to the operator's).
    namespace: Option<String>,
    /// Why (shown in conditions and events).
    reason: String,
}

/// Query of `DELETE /api/afk/emergency-stop`.
#[derive(Debug, Deserialize)]
pub struct StopTarget {
    config: Option<String>,
    namespace: Option<String>,
}

async fn resolve_config(api: &Api<AfkConfig>, name: Option<String>) -> Result<String, Response> {
    if let Some(n) = name {
        return Ok(n);
    }
    match api.list(&ListParams::default()).await {
        Ok(list) if list.items.len() == 1 => Ok(list.items[0].name_any()),
        Ok(list) => Err(error(
            StatusCode::BAD_REQUEST,
            &format!("name the AfkConfig (`config`): {} found", list.items.len()),
            "invalid_request",
        )),
        Err(_) => Err(error(
            StatusCode::BAD_GATEWAY,
            "cannot list AfkConfigs",
            "upstream",
        )),
    }
}

async fn set_annotation(api: &Api<AfkConfig>, name: &str, value: Option<&str>) -> Result<(), Response> {
    let patch = json!({"metadata": {"annotations": {EMERGENCY_STOP_ANNOTATION: value}}});
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(error(
            StatusCode::NOT_FOUND,
            &format!("AfkConfig {name:?} not found"),
            "not_found",
        )),
        Err(e) => {
            tracing::warn!(error = %e, "cannot patch AfkConfig");
            Err(error(
                StatusCode::BAD_GATEWAY,
                "cannot update the AfkConfig",
                "upstream",
            ))
        }
    }
}

/// `POST /api/afk/emergency-stop`: set the annotation.
pub async fn stop(
    State(state): State<SidecarState>,
    Extension(caller): Extension<Caller>,
    Json(req): Json<StopRequest>,
) -> Response {
    let Some(api) = configs_api(&state, req.namespace.as_deref()) else {
        return no_cluster();
    };
    let reason = req.reason.trim();
    if reason.is_empty() || reason.len() > 1024 {
        return error(
            StatusCode::BAD_REQUEST,
            "`reason` must be 1 to 1024 characters",
            "invalid_request",
        );
    }
    let name = match resolve_config(&api, req.config).await {
        Ok(n) => n,
        Err(r) => return r,
    };
    if let Err(r) = set_annotation(&api, &name, Some(&format!("{reason} (by {})", caller.0))).await {
        return r;
    }
    tracing::warn!(audit = true, caller = ?caller.0, config = %name, reason, "emergency stop engaged");
    (StatusCode::OK, Json(json!({"config": name, "stopped": true}))).into_response()
}

/// `DELETE /api/afk/emergency-stop`: remove the annotation.
pub async fn release(
    State(state): State<SidecarState>,
    Extension(caller): Extension<Caller>,
    Query(target): Query<StopTarget>,
) -> Response {
    let Some(api) = configs_api(&state, target.namespace.as_deref()) else {
        return no_cluster();
    };
    let name = match resolve_config(&api, target.config).await {
        Ok(n) => n,
        Err(r) => return r,
    };
    if let Err(r) = set_annotation(&api, &name, None).await {
        return r;
    }
    tracing::warn!(audit = true, caller = ?caller.0, config = %name, "emergency stop released");
    (StatusCode::OK, Json(json!({"config": name, "stopped": false}))).into_response()
}

/// `GET /api/afk/emergency-stop`: which configs are stopped, and why.
pub async fn status(State(state): State<SidecarState>) -> Response {
    let Some(api) = configs_api(&state, None) else {
        return no_cluster();
    };
    match api.list(&ListParams::default()).await {
        Ok(list) => Json(json!({"configs": list.items.iter().map(|c| json!({
            "config": c.name_any(), "namespace": c.namespace(), "stopped": c.emergency_stop().is_some(), "reason": c.emergency_stop()
        })).collect::<Vec<_>>()}))
        .into_response(),
        Err(_) => error(StatusCode::BAD_GATEWAY, "cannot list AfkConfigs", "upstream"),
    }
}
