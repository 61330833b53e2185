//! A fake Woodpecker server: `GET /api/repos/{repo_id}/pipelines?page=&perPage=` with bearer
//! auth (401 without), pages of at most 50, newest first, in Woodpecker's pipeline shape.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    extract::{Path, Query, State},
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;

use crate::{Recorded, Served, record, serve};

/// A pipeline: (number, commit, status).
pub type FakePipeline = (u64, String, String);

/// The fake's state.
#[derive(Debug, Default)]
pub struct WpState {
    /// Accepted token.
    pub token: String,
    /// Pipelines per repo id, oldest first.
    pub pipelines: BTreeMap<u64, Vec<FakePipeline>>,
    /// Every request.
    pub requests: Vec<Recorded>,
}

/// A running fake.
#[derive(Debug)]
pub struct FakeWoodpecker {
    /// The server.
    pub served: Served,
    state: Arc<Mutex<WpState>>,
}

impl FakeWoodpecker {
    /// Start with one accepted token.
    pub async fn start(token: &str) -> Self {
        let state = Arc::new(Mutex::new(WpState {
            token: token.into(),
            ..Default::default()
        }));
        let router = Router::new()
            .route("/api/repos/{repo_id}/pipelines", get(list))
            .with_state(state.clone());
        Self {
            served: serve(router).await,
            state,
        }
    }

    /// Base URL.
    pub fn url(&self) -> String {
        self.served.url()
    }

    /// Inspect or change the state.
    pub fn with<R>(&self, f: impl FnOnce(&mut WpState) -> R) -> R {
        f(&mut self.state.lock().expect("wp state"))
    }

    /// Add (or update by number) a pipeline.
    pub fn set_pipeline(&self, repo_id: u64, number: u64, commit: &str, status: &str) {
        self.with(|s| {
            let list = s.pipelines.entry(repo_id).or_default();
            list.retain(|p| p.0 != number);
            list.push((number, commit.into(), status.into()));
            list.sort_by_key(|p| p.0);
        });
    }
}

async fn list(
    State(state): State<Arc<Mutex<WpState>>>,
    Path(repo_id): Path<u64>,
    Query(q): Query<BTreeMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let mut s = state.lock().expect("wp state");
    s.requests.push(record(&method, &uri, &headers, ""));
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != format!("Bearer {}", s.token) {
        return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
    }
    let Some(all) = s.pipelines.get(&repo_id) else {
        return (StatusCode::NOT_FOUND, "Not Found").into_response();
    };
    let page: usize = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1).max(1);
    let per_page: usize = q
        .get("perPage")
        .and_then(|p| p.parse().ok())
        .unwrap_or(50)
        .clamp(1, 50);
    let items: Vec<_> = all
        .iter()
        .rev()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|(n, commit, status)| {
            json!({"id": 1000 + n, "repo_id": repo_id, "number": n, "author": "agent", "parent": 0, "event": "push",
                   "status": status, "errors": null, "created": 1_763_700_000, "updated": 1_763_700_100, "started": 1_763_700_010,
                   "finished": 0, "deploy_to": "", "commit": commit, "branch": "main", "ref": "refs/heads/main",
                   "refspec": "", "title": "", "message": "msg", "timestamp": 1_763_700_000, "sender": "agent",
                   "avatar": "", "forge_url": "", "reviewed_by": "", "reviewed": 0, "workflows": []})
        })
        .collect();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::Value::Array(items).to_string(),
    )
        .into_response()
}
