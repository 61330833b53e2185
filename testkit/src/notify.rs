//! Fakes of a Slack incoming webhook and an ntfy server that check request shapes: Slack needs
//! a JSON body with a `text` (400 `invalid_payload` otherwise); ntfy needs a valid `Priority`
//! (1–5) and, for a protected topic, the bearer token. Both can be told to fail the next
//! requests (e.g. 429 with `Retry-After`, or 503).

use std::sync::{Arc, Mutex};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::post,
};

use crate::{Recorded, Served, record, serve};

/// State shared by both fakes.
#[derive(Debug, Default)]
pub struct NotifyState {
    /// Required ntfy token, if the topic is protected.
    pub ntfy_token: Option<String>,
    /// Statuses to answer the next requests with, in order.
    pub fail_next: Vec<u16>,
    /// While true, ntfy publications are held unanswered (a delivery in flight); once it turns
    /// false they are answered 503 and not recorded, like a delivery the sender never completed.
    pub hold: bool,
    /// Every request.
    pub requests: Vec<Recorded>,
    /// Accepted Slack payloads.
    pub slack: Vec<serde_json::Value>,
    /// Accepted ntfy publications (topic, request).
    pub ntfy: Vec<(String, Recorded)>,
}

/// A running Slack + ntfy fake (Slack at `/services/T/B/X`, ntfy at `/{topic}`).
#[derive(Debug)]
pub struct FakeNotify {
    /// The server.
    pub served: Served,
    state: Arc<Mutex<NotifyState>>,
}

impl FakeNotify {
    /// Start.
    pub async fn start(ntfy_token: Option<&str>) -> Self {
        let state = Arc::new(Mutex::new(NotifyState {
            ntfy_token: ntfy_token.map(str::to_string),
            ..Default::default()
        }));
        let router = Router::new()
            .route("/services/{a}/{b}/{c}", post(slack))
            .route("/{topic}", post(ntfy))
            .with_state(state.clone());
        Self {
            served: serve(router).await,
            state,
        }
    }

    /// The Slack webhook URL (a credential in real life).
    pub fn slack_url(&self) -> String {
        format!("{}/services/T000/B000/secretpart", self.served.url())
    }

    /// The ntfy base URL.
    pub fn ntfy_url(&self) -> String {
        self.served.url()
    }

    /// Inspect or change the state.
    pub fn with<R>(&self, f: impl FnOnce(&mut NotifyState) -> R) -> R {
        f(&mut self.state.lock().expect("notify state"))
    }
}

fn injected(s: &mut NotifyState) -> Option<Response> {
    if s.fail_next.is_empty() {
        return None;
    }
    let status = s.fail_next.remove(0);
    let mut resp = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
        "fault",
    )
        .into_response();
    if status == 429 {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, "0".parse().expect("header"));
    }
    Some(resp)
}

async fn slack(
    State(state): State<Arc<Mutex<NotifyState>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let text = String::from_utf8_lossy(&body).to_string();
    let mut s = state.lock().expect("notify state");
    s.requests.push(record(&method, &uri, &headers, &text));
    if let Some(r) = injected(&mut s) {
        return r;
    }
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v)
            if v.get("text")
                .and_then(|t| t.as_str())
                .is_some_and(|t| !t.is_empty()) =>
        {
            s.slack.push(v);
            (StatusCode::OK, "ok").into_response()
        }
        _ => (StatusCode::BAD_REQUEST, "invalid_payload").into_response(),
    }
}

async fn ntfy(
    State(state): State<Arc<Mutex<NotifyState>>>,
    Path(topic): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let text = String::from_utf8_lossy(&body).to_string();
    let rec = record(&method, &uri, &headers, &text);
    let held = {
        let mut s = state.lock().expect("notify state");
        s.requests.push(rec.clone());
        s.hold
    };
    if held {
        while state.lock().expect("notify state").hold {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        return (StatusCode::SERVICE_UNAVAILABLE, "held").into_response();
    }
    let mut s = state.lock().expect("notify state");
    if let Some(r) = injected(&mut s) {
        return r;
    }
    if let Some(token) = &s.ntfy_token
        && rec.header("authorization") != Some(format!("Bearer {token}").as_str())
    {
        return (
            StatusCode::FORBIDDEN,
            r#"{"code":40301,"http":403,"error":"forbidden"}"#,
        )
            .into_response();
    }
    if let Some(p) = rec.header("priority")
        && !matches!(
            p,
            "1" | "2" | "3" | "4" | "5" | "min" | "low" | "default" | "high" | "max" | "urgent"
        )
    {
        return (
            StatusCode::BAD_REQUEST,
            r#"{"code":40007,"http":400,"error":"invalid priority"}"#,
        )
            .into_response();
    }
    s.ntfy.push((topic.clone(), rec));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"id":"x","time":1,"event":"message","topic":"{topic}"}}"#),
    )
        .into_response()
}
