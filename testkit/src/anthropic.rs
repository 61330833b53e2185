//! A loopback fake of the Anthropic Messages API, enough for the real `claude` CLI
//! (`shared/contracts/claude-cli.md`): `POST /v1/messages` (the CLI adds `?beta=true`) answering
//! the SSE stream `message_start`, `content_block_start`, `content_block_delta` (text),
//! `content_block_stop`, `message_delta` (stop reason, usage), `message_stop` — or a JSON message
//! when `stream` is false. It enforces what the real API checks first: the `x-api-key` (401
//! `authentication_error`), `anthropic-version` (400), a JSON body with `model`, a positive
//! `max_tokens` and non-empty `messages` of `user`/`assistant`/`system` turns (400
//! `invalid_request_error`). Replies are scripted (text in given chunks with given usage, or an
//! error status); every request is recorded so tests can see what the CLI re-sent on `--resume`.

use std::{
    collections::VecDeque,
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::post,
};
use serde_json::{Value, json};

use crate::{Recorded, Served, record, serve};

/// One scripted answer.
#[derive(Clone, Debug)]
pub enum Reply {
    /// A text message streamed in these chunks, reporting this usage.
    Text {
        /// Text deltas in order.
        chunks: Vec<String>,
        /// Reported input tokens.
        input_tokens: u64,
        /// Reported output tokens.
        output_tokens: u64,
        /// Pause before the first delta.
        first_delay: Duration,
    },
    /// An API error: HTTP status, error type, message.
    Error {
        /// HTTP status (e.g. 529 overloaded, 500 api_error).
        status: u16,
        /// Anthropic error type (`overloaded_error`, `api_error`, …).
        kind: String,
    },
}

impl Reply {
    /// A text reply in chunks with small usage.
    pub fn text(chunks: &[&str]) -> Self {
        Self::Text {
            chunks: chunks.iter().map(|s| s.to_string()).collect(),
            input_tokens: 12,
            output_tokens: chunks.len() as u64,
            first_delay: Duration::ZERO,
        }
    }
}

#[derive(Debug)]
struct FakeState {
    api_key: String,
    script: VecDeque<Reply>,
    fallback: Reply,
    requests: Vec<Recorded>,
}

/// The running fake.
#[derive(Debug)]
pub struct FakeAnthropic {
    /// The server.
    pub served: Served,
    state: Arc<Mutex<FakeState>>,
}

impl FakeAnthropic {
    /// Start, accepting `api_key`; unscripted requests get `fallback`.
    pub async fn start(api_key: &str, fallback: Reply) -> Self {
        let state = Arc::new(Mutex::new(FakeState {
            api_key: api_key.to_string(),
            script: VecDeque::new(),
            fallback,
            requests: Vec::new(),
        }));
        let router = Router::new()
            .route("/v1/messages", post(messages))
            .fallback(not_found)
            .with_state(state.clone());
        Self {
            served: serve(router).await,
            state,
        }
    }

    /// Queue replies for the next requests.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().unwrap().script.extend(replies);
    }

    /// Every request, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The bodies of accepted `POST /v1/messages` requests.
    pub fn message_requests(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with("/v1/messages"))
            .map(|r| r.json())
            .collect()
    }
}

fn api_error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"type": "error", "error": {"type": kind, "message": message}}).to_string(),
    )
        .into_response()
}

async fn not_found(
    State(state): State<Arc<Mutex<FakeState>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let rec = record(&method, &uri, &headers, &String::from_utf8_lossy(&body));
    state.lock().unwrap().requests.push(rec);
    api_error(StatusCode::NOT_FOUND, "not_found_error", "Not found")
}

fn validate(headers: &HeaderMap, body: &Bytes, api_key: &str) -> Result<Value, Response> {
    let key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if key.or(bearer) != Some(api_key) {
        return Err(api_error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid x-api-key",
        ));
    }
    if headers.get("anthropic-version").is_none() {
        return Err(api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "anthropic-version: header is required",
        ));
    }
    let body: Value = serde_json::from_slice(body).map_err(|_| {
        api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid JSON body",
        )
    })?;
    let bad = |m: &str| Err(api_error(StatusCode::BAD_REQUEST, "invalid_request_error", m));
    if !body.get("model").is_some_and(Value::is_string) {
        return bad("model: Field required");
    }
    if body
        .get("max_tokens")
        .and_then(Value::as_u64)
        .is_none_or(|n| n == 0)
    {
        return bad("max_tokens: Field required");
    }
    let Some(messages) = body
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
    else {
        return bad("messages: at least one message is required");
    };
    for message in messages {
        match message.get("role").and_then(Value::as_str) {
            // The CLI (2.1.330, with its beta headers) sends mid-conversation `system` turns.
            Some("user" | "assistant" | "system") => {}
            _ => return bad("messages: unexpected role"),
        }
        if message.get("content").is_none() {
            return bad("messages: content is required");
        }
    }
    Ok(body)
}

async fn messages(
    State(state): State<Arc<Mutex<FakeState>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let rec = record(&method, &uri, &headers, &String::from_utf8_lossy(&body));
    let (reply, request) = {
        let mut s = state.lock().unwrap();
        let request = match validate(&headers, &body, &s.api_key) {
            Ok(request) => request,
            Err(resp) => return resp,
        };
        s.requests.push(rec);
        let reply = s.script.pop_front().unwrap_or_else(|| s.fallback.clone());
        (reply, request)
    };
    let model = request["model"].as_str().unwrap_or_default().to_string();
    let (chunks, input_tokens, output_tokens, first_delay) = match reply {
        Reply::Error { status, kind } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return api_error(status, &kind, "scripted failure");
        }
        Reply::Text {
            chunks,
            input_tokens,
            output_tokens,
            first_delay,
        } => (chunks, input_tokens, output_tokens, first_delay),
    };
    let id = format!("msg_fake_{}", uuid_like(&body));
    if request.get("stream").and_then(Value::as_bool) != Some(true) {
        let message = json!({
            "id": id, "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": chunks.concat()}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        });
        return ([(header::CONTENT_TYPE, "application/json")], message.to_string()).into_response();
    }
    let mut events = vec![
        (
            "message_start",
            json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant",
                "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": input_tokens, "output_tokens": 1}}}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
    ];
    for chunk in &chunks {
        events.push((
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": chunk}}),
        ));
    }
    events.push((
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push((
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": output_tokens}}),
    ));
    events.push(("message_stop", json!({"type": "message_stop"})));
    let stream = futures::stream::unfold((events.into_iter(), 0usize), move |(mut events, n)| async move {
        let (name, data) = events.next()?;
        if n == 2 && !first_delay.is_zero() {
            tokio::time::sleep(first_delay).await;
        }
        let frame = Bytes::from(format!("event: {name}\ndata: {data}\n\n"));
        Some((Ok::<_, Infallible>(frame), (events, n + 1)))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

fn uuid_like(body: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(body)[..8])
}
