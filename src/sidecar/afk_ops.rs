//! AFK operations (SPEC §4.3): the operator's view of the runs, grouped for a phone screen, and
//! the emergency stop. The sidecar never performs loop side effects itself: the stop is the
//! `afk.dev/emergency-stop` annotation, and the controller acts on it. The view carries no
//! tokens and no command ids.

use axum::{
    Extension, Json,
    extract::{Path, Query, State},
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
use crate::crd::{ANSWER_ANNOTATION, AfkConfig, AfkRun, EMERGENCY_STOP_ANNOTATION, Phase, QuestionKind};

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
    /// What the agent waits on (`WaitingForHuman`): kind, requestId, text, questions.
    #[serde(skip_serializing_if = "Option::is_none")]
    question: Option<crate::crd::Question>,
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
        question: s.question,
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
    // An empty name (a form field left blank) means "not given", never a config called "".
    if let Some(n) = name.filter(|n| !n.trim().is_empty()) {
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

async fn get_run(
    state: &SidecarState,
    namespace: &str,
    name: &str,
) -> Result<(Api<AfkRun>, AfkRun), Response> {
    let Some(c) = state.cluster.as_ref() else {
        return Err(no_cluster());
    };
    let api: Api<AfkRun> = Api::namespaced(c.client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(Some(run)) => Ok((api, run)),
        Ok(None) => Err(error(
            StatusCode::NOT_FOUND,
            &format!("AfkRun {namespace}/{name} not found"),
            "not_found",
        )),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read AfkRun");
            Err(error(
                StatusCode::BAD_GATEWAY,
                "cannot read the AfkRun",
                "upstream",
            ))
        }
    }
}

/// `GET /api/afk/runs/{namespace}/{name}`: one run, with what its agent waits on.
pub async fn run(
    State(state): State<SidecarState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    match get_run(&state, &namespace, &name).await {
        Ok((_, run)) => Json(view(&run)).into_response(),
        Err(r) => r,
    }
}

/// Body of `POST /api/afk/runs/{namespace}/{name}/answer`: a `decision` for an approval, or
/// `text` (a single question) / `answers` (by question id) for questions.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerRequest {
    decision: Option<String>,
    text: Option<String>,
    answers: Option<serde_json::Map<String, serde_json::Value>>,
}

/// `POST /api/afk/runs/{namespace}/{name}/answer`: record a human's answer on the AfkRun (the
/// `afk.dev/answer` annotation, naming the pending `requestId`); the controller sends it to T3
/// exactly once and removes the annotation. 202: recorded, not yet sent.
pub async fn answer(
    State(state): State<SidecarState>,
    Extension(caller): Extension<Caller>,
    Path((namespace, name)): Path<(String, String)>,
    Json(req): Json<AnswerRequest>,
) -> Response {
    let (api, run) = match get_run(&state, &namespace, &name).await {
        Ok(found) => found,
        Err(r) => return r,
    };
    let Some(question) = run.status.as_ref().and_then(|s| s.question.clone()) else {
        return error(
            StatusCode::CONFLICT,
            "the run is not waiting for an answer",
            "not_waiting",
        );
    };
    let mut body = serde_json::Map::new();
    body.insert("id".into(), json!(question.request_id));
    let invalid = |m: &str| error(StatusCode::BAD_REQUEST, m, "invalid_request");
    match question.kind {
        QuestionKind::Approval => match req.decision.as_deref() {
            Some(d) if crate::adapters::t3::DECISIONS.contains(&d) => {
                body.insert("decision".into(), json!(d));
            }
            _ => {
                return invalid(&format!(
                    "an approval needs `decision`, one of {}",
                    crate::adapters::t3::DECISIONS.join(", ")
                ));
            }
        },
        QuestionKind::UserInput => match (req.answers, req.text) {
            (Some(answers), _) if !answers.is_empty() => {
                let known = |k: &String| question.questions.iter().any(|q| &q.id == k);
                let valid = |v: &serde_json::Value| {
                    v.is_string()
                        || v.as_array()
                            .is_some_and(|l| l.iter().all(serde_json::Value::is_string))
                };
                if !answers.iter().all(|(k, v)| known(k) && valid(v)) {
                    return invalid("`answers` must map the asked question ids to text or lists of labels");
                }
                body.insert("answers".into(), json!(answers));
            }
            (_, Some(text))
                if question.questions.len() == 1 && !text.trim().is_empty() && text.len() <= 16_384 =>
            {
                body.insert("text".into(), json!(text));
            }
            _ => return invalid("give `text` (one question, up to 16 KiB) or `answers` by question id"),
        },
    }
    body.insert("by".into(), json!(caller.0));
    body.insert("at".into(), json!(jiff::Timestamp::now().to_string()));
    let value = serde_json::Value::Object(body).to_string();
    let patch = json!({"metadata": {"annotations": {ANSWER_ANNOTATION: value}}});
    if let Err(e) = api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::warn!(error = %e, "cannot annotate AfkRun");
        return error(
            StatusCode::BAD_GATEWAY,
            "cannot record the answer on the AfkRun",
            "upstream",
        );
    }
    tracing::info!(audit = true, caller = ?caller.0, run = %name, request = %question.request_id, "answer recorded");
    (
        StatusCode::ACCEPTED,
        Json(json!({"run": name, "requestId": question.request_id, "recorded": true})),
    )
        .into_response()
}
