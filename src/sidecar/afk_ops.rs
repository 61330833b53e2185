//! AFK operations (SPEC §4.3): the operator's view of the runs, grouped for a phone screen, and
//! the emergency stop. The sidecar never performs loop side effects itself: the stop is the
//! `afk.dev/emergency-stop` annotation, and the controller acts on it. The view carries no
//! tokens and no command ids.

use axum::{
    Json,
    extract::{Path, Query},
    http::StatusCode,
};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Cluster, auth::Caller, error::ApiError, extract::InCluster};
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

fn configs_api(cluster: &Cluster, namespace: Option<&str>) -> Api<AfkConfig> {
    match namespace.or(cluster.namespace.as_deref()) {
        Some(ns) => Api::namespaced(cluster.client.clone(), ns),
        None => Api::all(cluster.client.clone()),
    }
}

fn upstream(message: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, message, "upstream")
}

/// One queued issue of an AfkConfig (fields alphabetical: the former `json!` order).
#[derive(Debug, Serialize)]
pub struct QueuedView {
    config: String,
    issue: u64,
    priority: Option<u32>,
    reason: String,
    repo: String,
    title: String,
}

/// Body of `GET /api/afk/runs`: the runs grouped for a phone screen.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunsView {
    failed_or_blocked: Vec<RunView>,
    in_progress: Vec<RunView>,
    queued: Vec<QueuedView>,
    recently_resolved: Vec<RunView>,
}

/// `GET /api/afk/runs`.
pub async fn runs(InCluster(c): InCluster) -> Result<Json<RunsView>, ApiError> {
    let runs_api: Api<AfkRun> = match &c.namespace {
        Some(ns) => Api::namespaced(c.client.clone(), ns),
        None => Api::all(c.client.clone()),
    };
    let (runs, configs) = match (
        runs_api.list(&ListParams::default()).await,
        configs_api(&c, None).list(&ListParams::default()).await,
    ) {
        (Ok(r), Ok(c)) => (r.items, c.items),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "cannot list AFK objects");
            return Err(upstream("cannot read AfkRuns/AfkConfigs from the API server"));
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
    let queued = configs
        .iter()
        .flat_map(|c| {
            let name = c.name_any();
            c.status
                .iter()
                .flat_map(|s| s.queue.iter())
                .map(move |q| QueuedView {
                    config: name.clone(),
                    issue: q.issue,
                    priority: q.priority,
                    reason: q.reason.clone(),
                    repo: q.repo.clone(),
                    title: q.title.clone(),
                })
        })
        .collect();
    Ok(Json(RunsView {
        failed_or_blocked: failed.into_iter().take(50).map(view).collect(),
        in_progress: in_progress.into_iter().map(view).collect(),
        queued,
        recently_resolved: resolved.into_iter().take(20).map(view).collect(),
    }))
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

/// Body of the emergency stop's `POST` and `DELETE`.
#[derive(Debug, Serialize)]
pub struct StopState {
    /// The AfkConfig.
    config: String,
    /// Whether it is stopped now.
    stopped: bool,
}

/// One AfkConfig in `GET /api/afk/emergency-stop` (fields alphabetical: the former `json!` order).
#[derive(Debug, Serialize)]
pub struct ConfigStop {
    config: String,
    namespace: Option<String>,
    reason: Option<String>,
    stopped: bool,
}

/// Body of `GET /api/afk/emergency-stop`.
#[derive(Debug, Serialize)]
pub struct StopStatus {
    configs: Vec<ConfigStop>,
}

async fn resolve_config(api: &Api<AfkConfig>, name: Option<String>) -> Result<String, ApiError> {
    // An empty name (a form field left blank) means "not given", never a config called "".
    if let Some(n) = name.filter(|n| !n.trim().is_empty()) {
        return Ok(n);
    }
    match api.list(&ListParams::default()).await {
        Ok(list) if list.items.len() == 1 => Ok(list.items[0].name_any()),
        Ok(list) => Err(ApiError::bad_request(format!(
            "name the AfkConfig (`config`): {} found",
            list.items.len()
        ))),
        Err(_) => Err(upstream("cannot list AfkConfigs")),
    }
}

async fn set_annotation(api: &Api<AfkConfig>, name: &str, value: Option<&str>) -> Result<(), ApiError> {
    let patch = json!({"metadata": {"annotations": {EMERGENCY_STOP_ANNOTATION: value}}});
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(ApiError::not_found(
            format!("AfkConfig {name:?} not found"),
            "not_found",
        )),
        Err(e) => {
            tracing::warn!(error = %e, "cannot patch AfkConfig");
            Err(upstream("cannot update the AfkConfig"))
        }
    }
}

/// `POST /api/afk/emergency-stop`: set the annotation.
pub async fn stop(
    InCluster(c): InCluster,
    caller: Caller,
    Json(req): Json<StopRequest>,
) -> Result<Json<StopState>, ApiError> {
    let api = configs_api(&c, req.namespace.as_deref());
    let reason = req.reason.trim();
    if reason.is_empty() || reason.len() > 1024 {
        return Err(ApiError::bad_request("`reason` must be 1 to 1024 characters"));
    }
    let name = resolve_config(&api, req.config).await?;
    set_annotation(&api, &name, Some(&format!("{reason} (by {})", caller.0))).await?;
    tracing::warn!(audit = true, caller = ?caller.0, config = %name, reason, "emergency stop engaged");
    Ok(Json(StopState {
        config: name,
        stopped: true,
    }))
}

/// `DELETE /api/afk/emergency-stop`: remove the annotation.
pub async fn release(
    InCluster(c): InCluster,
    caller: Caller,
    Query(target): Query<StopTarget>,
) -> Result<Json<StopState>, ApiError> {
    let api = configs_api(&c, target.namespace.as_deref());
    let name = resolve_config(&api, target.config).await?;
    set_annotation(&api, &name, None).await?;
    tracing::warn!(audit = true, caller = ?caller.0, config = %name, "emergency stop released");
    Ok(Json(StopState {
        config: name,
        stopped: false,
    }))
}

/// `GET /api/afk/emergency-stop`: which configs are stopped, and why.
pub async fn status(InCluster(c): InCluster) -> Result<Json<StopStatus>, ApiError> {
    let list = configs_api(&c, None)
        .list(&ListParams::default())
        .await
        .map_err(|_| upstream("cannot list AfkConfigs"))?;
    let configs = list
        .items
        .iter()
        .map(|c| ConfigStop {
            config: c.name_any(),
            namespace: c.namespace(),
            reason: c.emergency_stop().map(str::to_string),
            stopped: c.emergency_stop().is_some(),
        })
        .collect();
    Ok(Json(StopStatus { configs }))
}

async fn get_run(cluster: &Cluster, namespace: &str, name: &str) -> Result<(Api<AfkRun>, AfkRun), ApiError> {
    let api: Api<AfkRun> = Api::namespaced(cluster.client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(Some(run)) => Ok((api, run)),
        Ok(None) => Err(ApiError::not_found(
            format!("AfkRun {namespace}/{name} not found"),
            "not_found",
        )),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read AfkRun");
            Err(upstream("cannot read the AfkRun"))
        }
    }
}

/// `GET /api/afk/runs/{namespace}/{name}`: one run, with what its agent waits on.
pub async fn run(
    InCluster(c): InCluster,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<RunView>, ApiError> {
    let (_, run) = get_run(&c, &namespace, &name).await?;
    Ok(Json(view(&run)))
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
    InCluster(c): InCluster,
    caller: Caller,
    Path((namespace, name)): Path<(String, String)>,
    Json(req): Json<AnswerRequest>,
) -> Result<(StatusCode, Json<AnswerRecorded>), ApiError> {
    let (api, run) = get_run(&c, &namespace, &name).await?;
    let Some(question) = run.status.as_ref().and_then(|s| s.question.clone()) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the run is not waiting for an answer",
            "not_waiting",
        ));
    };
    let mut body = serde_json::Map::new();
    body.insert("id".into(), json!(question.request_id));
    match question.kind {
        QuestionKind::Approval => match req.decision.as_deref() {
            Some(d) if crate::adapters::t3::DECISIONS.contains(&d) => {
                body.insert("decision".into(), json!(d));
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "an approval needs `decision`, one of {}",
                    crate::adapters::t3::DECISIONS.join(", ")
                )));
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
                    return Err(ApiError::bad_request(
                        "`answers` must map the asked question ids to text or lists of labels",
                    ));
                }
                body.insert("answers".into(), json!(answers));
            }
            (_, Some(text))
                if question.questions.len() == 1 && !text.trim().is_empty() && text.len() <= 16_384 =>
            {
                body.insert("text".into(), json!(text));
            }
            _ => {
                return Err(ApiError::bad_request(
                    "give `text` (one question, up to 16 KiB) or `answers` by question id",
                ));
            }
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
        return Err(upstream("cannot record the answer on the AfkRun"));
    }
    tracing::info!(audit = true, caller = ?caller.0, run = %name, request = %question.request_id, "answer recorded");
    let recorded = AnswerRecorded {
        recorded: true,
        request_id: question.request_id,
        run: name,
    };
    Ok((StatusCode::ACCEPTED, Json(recorded)))
}

/// `202` body of the answer route (fields alphabetical: the former `json!` order).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AnswerRecorded {
    recorded: bool,
    request_id: String,
    run: String,
}
