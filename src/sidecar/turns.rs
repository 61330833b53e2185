//! Driving one CLI turn for an HTTP client: admission (a semaphore plus a bounded queue, so a
//! burst gets a fast 429 instead of a pile of processes), the turn's steps as the gateway sees
//! them (text, done, failed — with the failure classified once into an honest HTTP status), the
//! per-turn deadline and the shutdown signal, and the SSE response body with its keepalive.
//! Shared by the voice gateway and breakglass sessions. Admission and slots are in
//! [`super::admission`] (re-exported here).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

pub use super::admission::{Limiter, Refusal, Slot, release_when_reaped};
use crate::adapters::claude::{CliError, CliEvent, Failure, Reaped, Turn, TurnItem, TurnResult, Usage};

/// How long a finished turn's process may take to exit on its own (session files) before the
/// group is killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// Why a turn failed, classified once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TurnFailure {
    /// The model API failed (its status, when known).
    Api(Option<u16>),
    /// The per-turn budget ran out.
    Budget,
    /// `--resume` of a session the CLI does not know.
    UnknownSession,
    /// `--session-id` of a session the CLI already has.
    SessionInUse,
    /// Another error result from the CLI (its subtype).
    Execution(String),
    /// The CLI exited without a result.
    Crashed,
    /// The CLI could not be started.
    Spawn,
    /// The per-turn deadline passed.
    Timeout,
    /// The sidecar is shutting down.
    Shutdown,
    /// The turn was cancelled by a client.
    Cancelled,
}

impl TurnFailure {
    /// The HTTP status that tells the client the truth.
    pub fn status(&self) -> StatusCode {
        match self {
            // Not retried by OpenAI clients (they retry 408/409/429/5xx): more money will not help.
            Self::Budget => StatusCode::PAYMENT_REQUIRED,
            Self::Api(Some(429 | 529 | 503)) | Self::Spawn | Self::Shutdown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Api(_) | Self::Execution(_) | Self::Crashed | Self::UnknownSession | Self::SessionInUse => {
                StatusCode::BAD_GATEWAY
            }
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Cancelled => StatusCode::CONFLICT,
        }
    }

    /// A static code (error `code` field and metric label).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Api(_) => "upstream_error",
            Self::Budget => "budget_exceeded",
            Self::UnknownSession => "unknown_session",
            Self::SessionInUse => "session_in_use",
            Self::Execution(_) => "cli_error",
            Self::Crashed => "cli_crashed",
            Self::Spawn => "cli_unavailable",
            Self::Timeout => "timeout",
            Self::Shutdown => "shutting_down",
            Self::Cancelled => "cancelled",
        }
    }

    /// The OpenAI error `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Budget => "insufficient_quota",
            _ => "server_error",
        }
    }

    /// A message for the client: no stderr, no paths.
    pub fn message(&self) -> String {
        match self {
            Self::Api(Some(status)) => format!("the model API answered {status}"),
            Self::Api(None) => "the model API failed".into(),
            Self::Budget => "the turn exceeded its cost budget".into(),
            Self::UnknownSession => "the session is not known to the CLI".into(),
            Self::SessionInUse => "the session id is already in use".into(),
            Self::Execution(subtype) => format!("the agent failed ({subtype})"),
            Self::Crashed => "the agent process ended without an answer".into(),
            Self::Spawn => "the agent could not be started".into(),
            Self::Timeout => "the turn took too long and was stopped".into(),
            Self::Shutdown => "the server is shutting down".into(),
            Self::Cancelled => "the turn was cancelled".into(),
        }
    }

    fn from_result(result: &TurnResult, failure: Failure) -> Self {
        match failure {
            Failure::Api => Self::Api(result.api_error_status),
            Failure::Budget => Self::Budget,
            Failure::UnknownSession => Self::UnknownSession,
            Failure::Execution => Self::Execution(result.subtype.clone()),
        }
    }

    /// From a start error.
    pub fn from_start(err: &CliError) -> Self {
        match err {
            CliError::Spawn(_) => Self::Spawn,
            CliError::SessionInUse => Self::SessionInUse,
            CliError::Crashed { .. } => Self::Crashed,
        }
    }
}

/// How a successful turn ended.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Finished {
    /// Token counts.
    pub usage: Usage,
    /// The model's stop reason.
    pub stop_reason: Option<String>,
    /// The CLI's `result` text.
    pub result: Option<String>,
    /// Wall time inside the CLI.
    pub duration_ms: u64,
}

/// One step of a turn, as a client-facing handler consumes it.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// The CLI started (session id, model).
    Started {
        /// CLI session id.
        session_id: String,
        /// Model.
        model: String,
    },
    /// Reply text, in order.
    Text(String),
    /// A tool call (breakglass only).
    Tool {
        /// Tool name.
        name: String,
        /// Tool input.
        input: serde_json::Value,
    },
    /// The turn succeeded.
    Finished(Finished),
    /// The turn failed.
    Failed(TurnFailure),
}

/// Turns CLI events into [`Step`]s under a deadline and the shutdown signal.
#[derive(Debug)]
pub struct Driver {
    turn: Option<Turn>,
    reaped: Reaped,
    deadline: Instant,
    shutdown: CancellationToken,
    whole_messages: bool,
    saw_text: bool,
    pending: std::collections::VecDeque<Step>,
    done: bool,
    /// Keep the process after a successful result (a live conversation) instead of letting it exit.
    keep_alive: bool,
    /// The process kept after a successful result, for [`Driver::into_live`].
    kept: Option<Turn>,
}

impl Driver {
    /// Drive `turn` until `deadline`; text comes from the streamed deltas.
    pub fn new(turn: Turn, deadline: Instant, shutdown: CancellationToken) -> Self {
        Self {
            reaped: turn.reaped(),
            turn: Some(turn),
            deadline,
            shutdown,
            whole_messages: false,
            saw_text: false,
            pending: std::collections::VecDeque::new(),
            done: false,
            keep_alive: false,
            kept: None,
        }
    }

    /// Keep the process once the turn succeeds ([`Driver::into_live`]): it waits for the next
    /// message instead of being let go.
    pub fn keep_alive(mut self) -> Self {
        self.keep_alive = true;
        self
    }

    /// The still-running process of a turn that finished successfully with
    /// [`Driver::keep_alive`]; `None` otherwise (a failed turn's process is already killed).
    pub fn into_live(mut self) -> Option<Turn> {
        self.kept.take().filter(Turn::is_alive)
    }

    /// Resolves once the turn's process is reaped.
    pub fn reaped(&self) -> Reaped {
        self.reaped.clone()
    }

    /// Take text from whole assistant messages (one step per text block) instead of deltas.
    pub fn whole_messages(mut self) -> Self {
        self.whole_messages = true;
        self
    }

    /// The next step; after `Finished` or `Failed` the turn is over (and further calls fail).
    pub async fn next(&mut self) -> Step {
        loop {
            if let Some(step) = self.pending.pop_front() {
                return match step {
                    Step::Finished(finished) => self.finish(finished),
                    other => other,
                };
            }
            if self.done {
                return Step::Failed(TurnFailure::Crashed);
            }
            let Some(turn) = self.turn.as_mut() else {
                return self.fail(TurnFailure::Crashed);
            };
            let item = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return self.fail(TurnFailure::Shutdown),
                () = tokio::time::sleep_until(self.deadline) => return self.fail(TurnFailure::Timeout),
                item = turn.next() => item,
            };
            match item {
                Some(TurnItem::Event(CliEvent::Init { session_id, model })) => {
                    return Step::Started { session_id, model };
                }
                Some(TurnItem::Event(CliEvent::TextDelta(text))) => {
                    if !self.whole_messages {
                        self.saw_text = true;
                        return Step::Text(text);
                    }
                }
                Some(TurnItem::Event(CliEvent::Assistant { texts, tools, error })) => {
                    // Synthetic error messages are reported by the result that follows.
                    if error.is_some() {
                        continue;
                    }
                    if self.whole_messages {
                        for text in texts.into_iter().filter(|t| !t.is_empty()) {
                            self.saw_text = true;
                            self.pending.push_back(Step::Text(text));
                        }
                    }
                    for tool in tools {
                        self.pending.push_back(Step::Tool {
                            name: tool.name,
                            input: tool.input,
                        });
                    }
                }
                Some(TurnItem::Event(CliEvent::Result(result))) => {
                    if let Some(failure) = result.failure() {
                        return self.fail(TurnFailure::from_result(&result, failure));
                    }
                    let finished = Finished {
                        usage: result.usage,
                        stop_reason: result.stop_reason.clone(),
                        result: result.result.clone(),
                        duration_ms: result.duration_ms,
                    };
                    // No text seen (e.g. a reply without partial messages): the result carries it.
                    if !self.saw_text
                        && let Some(text) = result.result.as_ref().filter(|t| !t.is_empty())
                    {
                        self.saw_text = true;
                        self.pending.push_back(Step::Text(text.clone()));
                    }
                    self.pending.push_back(Step::Finished(finished));
                }
                Some(TurnItem::Ended(Err(err))) => return self.fail(TurnFailure::from_start(&err)),
                Some(TurnItem::Ended(Ok(()))) | None => return self.fail(TurnFailure::Crashed),
            }
        }
    }

    fn finish(&mut self, finished: Finished) -> Step {
        self.done = true;
        if self.keep_alive {
            self.kept = self.turn.take();
        } else if let Some(turn) = self.turn.take() {
            // Let the CLI exit on its own (it may still be writing the session), bounded.
            tokio::spawn(async move {
                let mut turn = turn;
                let _ =
                    tokio::time::timeout(EXIT_GRACE, async { while turn.next().await.is_some() {} }).await;
            });
        }
        Step::Finished(finished)
    }

    fn fail(&mut self, failure: TurnFailure) -> Step {
        self.done = true;
        // Dropping the turn kills the process group.
        self.turn = None;
        Step::Failed(failure)
    }

    /// Kill the turn now.
    pub fn kill(&mut self) {
        self.turn = None;
        self.done = true;
    }
}

/// An empty per-turn working directory, removed when dropped.
#[derive(Debug)]
pub struct Workdir {
    path: PathBuf,
}

impl Workdir {
    /// A fresh directory under `parent`.
    pub fn new(parent: &Path) -> std::io::Result<Self> {
        let path = parent.join(uuid::Uuid::new_v4().to_string());
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A streaming `text/event-stream` response fed by `frames` (already framed SSE text).
pub fn sse_response(frames: mpsc::Receiver<Bytes>) -> Response {
    let body = Body::from_stream(futures::stream::unfold(frames, |mut rx| async move {
        rx.recv()
            .await
            .map(|frame| (Ok::<_, std::convert::Infallible>(frame), rx))
    }));
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Reverse proxies (nginx) must not buffer a stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// A keepalive timer whose first tick is one `period` from now (SPEC §4: 15 s by default).
pub fn keepalive_timer(period: Duration) -> tokio::time::Interval {
    tokio::time::interval_at(Instant::now() + period, period)
}

/// The next step of a streamed turn, sending keepalive comments while it is quiet. `None` when
/// the client went away (the caller then drops the driver, which kills the process group).
pub async fn next_streamed(
    driver: &mut Driver,
    tx: &mpsc::Sender<Bytes>,
    keepalive: &mut tokio::time::Interval,
) -> Option<Step> {
    loop {
        tokio::select! {
            () = tx.closed() => return None,
            _ = keepalive.tick() => {
                if tx.send(keepalive_frame()).await.is_err() {
                    return None;
                }
            }
            step = driver.next() => return Some(step),
        }
    }
}

/// The keepalive comment frame.
pub fn keepalive_frame() -> Bytes {
    Bytes::from_static(b": keepalive\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_honest_statuses() {
        assert_eq!(TurnFailure::Budget.status(), 402);
        assert_eq!(TurnFailure::Api(Some(529)).status(), 503);
        assert_eq!(TurnFailure::Api(Some(500)).status(), 502);
        assert_eq!(TurnFailure::Timeout.status(), 504);
        assert_eq!(TurnFailure::Crashed.status(), 502);
        assert_eq!(TurnFailure::Spawn.status(), 503);
        for failure in [
            TurnFailure::Crashed,
            TurnFailure::Execution("error_max_turns".into()),
        ] {
            assert!(
                !failure.message().contains('/'),
                "no paths in {}",
                failure.message()
            );
        }
    }
}
