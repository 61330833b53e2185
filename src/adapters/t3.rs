//! The T3 Code orchestration client (contract: `shared/contracts/t3.md`, server v0.0.33+):
//! the unauthenticated environment probe, the cheap `/shell` poll, thread detail for
//! diagnostics, and `/dispatch` for the five commands the loop sends. Ids are minted by the
//! caller and passed in, so a retry re-sends the very same command and T3 answers it from its
//! receipt. The bearer token is read from its source on every request (tokens rotate).

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{AdapterError, AdapterErrorKind, SecretSource, http_client, retry_after, snippet};

/// The questions and commands the loop needs from T3.
#[async_trait]
pub trait Executor: Send + Sync {
    /// `GET /.well-known/t3/environment`: reachability and version (no auth).
    async fn environment(&self) -> Result<Environment, AdapterError>;
    /// `GET /api/auth/session` with the token: whether T3 accepts it, and until when. The
    /// route always answers 200 (`authenticated: false` for a bad, expired or revoked token).
    async fn auth_session(&self) -> Result<AuthSession, AdapterError>;
    /// `GET /api/orchestration/shell`: active projects and threads with their status.
    async fn shell(&self) -> Result<Shell, AdapterError>;
    /// `GET /api/orchestration/threads/:id`: the full thread (for escalation diagnostics).
    async fn thread(&self, thread_id: &str) -> Result<serde_json::Value, AdapterError>;
    /// `POST /api/orchestration/dispatch`: one command; returns T3's event sequence.
    async fn dispatch(&self, command: &Command) -> Result<u64, AdapterError>;
}

/// The environment descriptor.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Environment {
    /// Stable id of the T3 environment.
    #[serde(default)]
    pub environment_id: Option<String>,
    /// Human label.
    #[serde(default)]
    pub label: Option<String>,
    /// Server version, e.g. `0.0.33`.
    #[serde(default)]
    pub server_version: Option<String>,
}

/// What `/api/auth/session` says of the token sent.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AuthSession {
    /// Whether the token is valid now.
    pub authenticated: bool,
    /// Granted scopes (absent for an unauthenticated request).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// When the token expires (RFC 3339), when T3 says.
    #[serde(default)]
    pub expires_at: Option<String>,
}

impl AuthSession {
    /// `expiresAt` parsed; an unparseable value is treated as unknown, never as expired.
    pub fn expires_at(&self) -> Option<jiff::Timestamp> {
        self.expires_at.as_deref().and_then(|t| t.parse().ok())
    }
}

/// `OrchestrationShellSnapshot`: only active projects and threads.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Shell {
    /// Global event sequence of the snapshot.
    #[serde(default)]
    pub snapshot_sequence: u64,
    /// Active projects.
    #[serde(default)]
    pub projects: Vec<ProjectShell>,
    /// Active threads.
    #[serde(default)]
    pub threads: Vec<ThreadShell>,
}

impl Shell {
    /// The active thread with this id.
    pub fn thread(&self, id: &str) -> Option<&ThreadShell> {
        self.threads.iter().find(|t| t.id == id)
    }

    /// The active project whose workspace root is `root` (T3 allows one per root).
    pub fn project_for_root(&self, root: &str) -> Option<&ProjectShell> {
        let norm = |p: &str| p.trim_end_matches('/').to_string();
        self.projects
            .iter()
            .find(|p| norm(&p.workspace_root) == norm(root))
    }
}

/// A project in the shell.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProjectShell {
    /// Project id.
    pub id: String,
    /// Title.
    #[serde(default)]
    pub title: String,
    /// Normalised workspace root.
    #[serde(default)]
    pub workspace_root: String,
}

/// A thread in the shell. States stay strings: unknown values must survive to the policy,
/// which treats them as "wait".
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ThreadShell {
    /// Thread id.
    pub id: String,
    /// Owning project.
    #[serde(default)]
    pub project_id: String,
    /// `latestTurn` (null on a fresh thread).
    #[serde(default)]
    pub latest_turn: Option<LatestTurn>,
    /// `session` (null before the first turn start is processed).
    #[serde(default)]
    pub session: Option<Session>,
    /// `hasPendingApprovals`.
    #[serde(default)]
    pub has_pending_approvals: bool,
    /// `hasPendingUserInput`.
    #[serde(default)]
    pub has_pending_user_input: bool,
}

/// `latestTurn`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LatestTurn {
    /// Turn id.
    #[serde(default)]
    pub turn_id: String,
    /// `running`, `completed`, `error`, `interrupted`, or something newer.
    #[serde(default)]
    pub state: String,
    /// T3's receipt time of the turn start.
    #[serde(default)]
    pub requested_at: Option<String>,
    /// When the turn ended.
    #[serde(default)]
    pub completed_at: Option<String>,
}

/// `session`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    /// `starting`, `running`, `ready`, `interrupted`, `stopped`, `error`, or something newer.
    #[serde(default)]
    pub status: String,
    /// Error detail (e.g. why a turn could not start).
    #[serde(default)]
    pub last_error: Option<String>,
    /// Last change.
    #[serde(default)]
    pub updated_at: Option<String>,
}

/// `modelSelection`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ModelSelection {
    /// Provider instance slug, e.g. `claudeAgent`.
    pub instance_id: String,
    /// Model id.
    pub model: String,
}

/// The user message of a turn. `attachments` is always sent (T3 rejects its absence).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TurnMessage {
    /// Client-minted message id.
    pub message_id: String,
    /// Always `user`.
    pub role: &'static str,
    /// The prompt.
    pub text: String,
    /// Always empty: the loop sends no images.
    pub attachments: Vec<serde_json::Value>,
}

/// The commands the loop dispatches, serialised exactly as T3's client schema wants them
/// (discriminator `type`; nullable keys that must be present are always present).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "type")]
pub enum Command {
    /// `project.create`.
    #[serde(rename = "project.create", rename_all = "camelCase")]
    ProjectCreate {
        /// Command id.
        command_id: String,
        /// Project id (never used before).
        project_id: String,
        /// Title.
        title: String,
        /// Existing directory on the T3 host.
        workspace_root: String,
        /// Sent explicitly: the loop never creates workspaces.
        create_workspace_root_if_missing: bool,
        /// Always null (the thread names the model).
        default_model_selection: Option<ModelSelection>,
        /// ISO-8601 (T3 ≥ 0.0.29 overwrites it with its receive time).
        created_at: String,
    },
    /// `thread.create`.
    #[serde(rename = "thread.create", rename_all = "camelCase")]
    ThreadCreate {
        /// Command id.
        command_id: String,
        /// Thread id.
        thread_id: String,
        /// Existing project.
        project_id: String,
        /// Title.
        title: String,
        /// Model.
        model_selection: ModelSelection,
        /// Runtime mode.
        runtime_mode: String,
        /// Interaction mode (`default`).
        interaction_mode: String,
        /// Present and null: HTTP ignores bootstrap, the agent makes its own worktree.
        branch: Option<String>,
        /// Present and null.
        worktree_path: Option<String>,
        /// ISO-8601.
        created_at: String,
    },
    /// `thread.turn.start`.
    #[serde(rename = "thread.turn.start", rename_all = "camelCase")]
    ThreadTurnStart {
        /// Command id.
        command_id: String,
        /// Thread id.
        thread_id: String,
        /// The message.
        message: TurnMessage,
        /// Required on the client form.
        runtime_mode: String,
        /// Required on the client form.
        interaction_mode: String,
        /// ISO-8601.
        created_at: String,
    },
    /// `thread.turn.interrupt`.
    #[serde(rename = "thread.turn.interrupt", rename_all = "camelCase")]
    ThreadTurnInterrupt {
        /// Command id.
        command_id: String,
        /// Thread id.
        thread_id: String,
        /// Optional turn id (marks that turn interrupted at once).
        #[serde(skip_serializing_if = "Option::is_none")]
        turn_id: Option<String>,
        /// ISO-8601.
        created_at: String,
    },
    /// `thread.approval.respond` (contract §5.7).
    #[serde(rename = "thread.approval.respond", rename_all = "camelCase")]
    ThreadApprovalRespond {
        /// Command id.
        command_id: String,
        /// Thread id.
        thread_id: String,
        /// `payload.requestId` of the `approval.requested` activity.
        request_id: String,
        /// `accept`, `acceptForSession`, `decline` or `cancel`.
        decision: String,
        /// ISO-8601.
        created_at: String,
    },
    /// `thread.user-input.respond` (contract §5.8).
    #[serde(rename = "thread.user-input.respond", rename_all = "camelCase")]
    ThreadUserInputRespond {
        /// Command id.
        command_id: String,
        /// Thread id.
        thread_id: String,
        /// `payload.requestId` of the `user-input.requested` activity.
        request_id: String,
        /// Answers keyed by question id: an option label, labels for multi-select, or free text.
        answers: std::collections::BTreeMap<String, serde_json::Value>,
        /// ISO-8601.
        created_at: String,
    },
    /// `thread.session.stop`.
    #[serde(rename = "thread.session.stop", rename_all = "camelCase")]
    ThreadSessionStop {
        /// Command id.
        command_id: String,
        /// Thread id.
        thread_id: String,
        /// ISO-8601.
        created_at: String,
    },
}

/// The most characters T3 lets a provider turn carry.
pub const MAX_TURN_TEXT: usize = 120_000;
const RUNTIME_MODES: [&str; 4] = ["approval-required", "auto-accept-edits", "auto", "full-access"];
const INTERACTION_MODES: [&str; 2] = ["default", "plan"];
/// The decisions `thread.approval.respond` accepts.
pub const DECISIONS: [&str; 4] = ["accept", "acceptForSession", "decline", "cancel"];

/// What the agent waits on, read from the thread's activities (contract §7.3): the newest
/// request with an opening activity and no closing one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingRequest {
    /// `payload.requestId`.
    pub request_id: String,
    /// When it was opened (the activity's `createdAt`), if T3 said.
    pub created_at: Option<String>,
    /// What is asked.
    pub ask: Ask,
}

/// An approval or a set of questions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ask {
    /// `approval.requested`: `requestKind` (`command`, `file-read`, `file-change`) and detail.
    Approval {
        /// `requestKind`.
        request_kind: String,
        /// `detail` (e.g. the command), when given.
        detail: Option<String>,
    },
    /// `user-input.requested`.
    UserInput {
        /// The questions.
        questions: Vec<AskedQuestion>,
    },
}

/// One question of a `user-input.requested` activity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AskedQuestion {
    /// The id answers are keyed by.
    pub id: String,
    /// Short header.
    pub header: String,
    /// The question.
    pub question: String,
    /// Option labels.
    pub options: Vec<String>,
    /// Several options may be chosen.
    pub multi_select: bool,
}

/// The pending request of a thread detail (`GET /api/orchestration/threads/:id`), if any.
/// Unknown activity kinds are ignored; a malformed request activity is skipped, never guessed.
pub fn pending_request(detail: &serde_json::Value) -> Option<PendingRequest> {
    let activities = detail
        .pointer("/thread/activities")
        .and_then(serde_json::Value::as_array)?;
    let str_at = |v: &serde_json::Value, p: &str| {
        v.pointer(p)
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
    };
    let mut open: Vec<PendingRequest> = vec![];
    for a in activities {
        let kind = a
            .get("kind")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        let Some(request_id) = str_at(a, "/payload/requestId") else {
            continue;
        };
        match kind {
            "approval.requested" => open.push(PendingRequest {
                request_id,
                created_at: str_at(a, "/createdAt"),
                ask: Ask::Approval {
                    request_kind: str_at(a, "/payload/requestKind").unwrap_or_default(),
                    detail: str_at(a, "/payload/detail"),
                },
            }),
            "user-input.requested" => {
                let questions = a
                    .pointer("/payload/questions")
                    .and_then(serde_json::Value::as_array)
                    .map(|qs| {
                        qs.iter()
                            .filter_map(|q| {
                                Some(AskedQuestion {
                                    id: str_at(q, "/id")?,
                                    header: str_at(q, "/header").unwrap_or_default(),
                                    question: str_at(q, "/question").unwrap_or_default(),
                                    options: q
                                        .get("options")
                                        .and_then(serde_json::Value::as_array)
                                        .map(|os| os.iter().filter_map(|o| str_at(o, "/label")).collect())
                                        .unwrap_or_default(),
                                    multi_select: q
                                        .get("multiSelect")
                                        .and_then(serde_json::Value::as_bool)
                                        .unwrap_or(false),
                                })
                            })
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
                if !questions.is_empty() {
                    open.push(PendingRequest {
                        request_id,
                        created_at: str_at(a, "/createdAt"),
                        ask: Ask::UserInput { questions },
                    });
                }
            }
            "approval.resolved"
            | "provider.approval.respond.failed"
            | "user-input.resolved"
            | "provider.user-input.respond.failed" => open.retain(|r| r.request_id != request_id),
            _ => {}
        }
    }
    open.pop()
}

impl Command {
    /// The command's `type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Command::ProjectCreate { .. } => "project.create",
            Command::ThreadCreate { .. } => "thread.create",
            Command::ThreadTurnStart { .. } => "thread.turn.start",
            Command::ThreadTurnInterrupt { .. } => "thread.turn.interrupt",
            Command::ThreadApprovalRespond { .. } => "thread.approval.respond",
            Command::ThreadUserInputRespond { .. } => "thread.user-input.respond",
            Command::ThreadSessionStop { .. } => "thread.session.stop",
        }
    }

    /// The command id.
    pub fn command_id(&self) -> &str {
        match self {
            Command::ProjectCreate { command_id, .. }
            | Command::ThreadCreate { command_id, .. }
            | Command::ThreadTurnStart { command_id, .. }
            | Command::ThreadTurnInterrupt { command_id, .. }
            | Command::ThreadApprovalRespond { command_id, .. }
            | Command::ThreadUserInputRespond { command_id, .. }
            | Command::ThreadSessionStop { command_id, .. } => command_id,
        }
    }

    /// Check what T3's schema would reject, before sending: a defect here is ours, so it is a
    /// permanent error and nothing goes on the wire.
    pub fn validate(&self) -> Result<(), AdapterError> {
        let bad = |why: String| {
            Err(AdapterError::permanent(
                AdapterErrorKind::InvalidCommand,
                format!("{}: {why}", self.type_name()),
            ))
        };
        let non_empty = |name: &str, v: &str| {
            if v.trim().is_empty() {
                Some(format!("{name} is empty"))
            } else {
                None
            }
        };
        let mut problems: Vec<Option<String>> = vec![non_empty("commandId", self.command_id())];
        match self {
            Command::ProjectCreate {
                project_id,
                title,
                workspace_root,
                created_at,
                ..
            } => {
                problems.push(non_empty("projectId", project_id));
                problems.push(non_empty("title", title));
                problems.push(non_empty("workspaceRoot", workspace_root));
                problems.push(non_empty("createdAt", created_at));
            }
            Command::ThreadCreate {
                thread_id,
                project_id,
                title,
                model_selection,
                runtime_mode,
                interaction_mode,
                created_at,
                ..
            } => {
                problems.push(non_empty("threadId", thread_id));
                problems.push(non_empty("projectId", project_id));
                problems.push(non_empty("title", title));
                problems.push(non_empty("modelSelection.model", &model_selection.model));
                problems.push(check_instance_id(&model_selection.instance_id));
                problems.push(check_mode("runtimeMode", runtime_mode, &RUNTIME_MODES));
                problems.push(check_mode(
                    "interactionMode",
                    interaction_mode,
                    &INTERACTION_MODES,
                ));
                problems.push(non_empty("createdAt", created_at));
            }
            Command::ThreadTurnStart {
                thread_id,
                message,
                runtime_mode,
                interaction_mode,
                created_at,
                ..
            } => {
                problems.push(non_empty("threadId", thread_id));
                problems.push(non_empty("message.messageId", &message.message_id));
                problems.push(non_empty("message.text", &message.text));
                if message.text.chars().count() > MAX_TURN_TEXT {
                    problems.push(Some(format!(
                        "message.text is longer than {MAX_TURN_TEXT} characters"
                    )));
                }
                problems.push(check_mode("runtimeMode", runtime_mode, &RUNTIME_MODES));
                problems.push(check_mode(
                    "interactionMode",
                    interaction_mode,
                    &INTERACTION_MODES,
                ));
                problems.push(non_empty("createdAt", created_at));
            }
            Command::ThreadApprovalRespond {
                thread_id,
                request_id,
                decision,
                created_at,
                ..
            } => {
                problems.push(non_empty("threadId", thread_id));
                problems.push(non_empty("requestId", request_id));
                problems.push(check_mode("decision", decision, &DECISIONS));
                problems.push(non_empty("createdAt", created_at));
            }
            Command::ThreadUserInputRespond {
                thread_id,
                request_id,
                answers,
                created_at,
                ..
            } => {
                problems.push(non_empty("threadId", thread_id));
                problems.push(non_empty("requestId", request_id));
                if answers.is_empty() {
                    problems.push(Some("answers is empty".into()));
                }
                problems.push(non_empty("createdAt", created_at));
            }
            Command::ThreadTurnInterrupt {
                thread_id,
                created_at,
                ..
            }
            | Command::ThreadSessionStop {
                thread_id,
                created_at,
                ..
            } => {
                problems.push(non_empty("threadId", thread_id));
                problems.push(non_empty("createdAt", created_at));
            }
        }
        match problems.into_iter().flatten().collect::<Vec<_>>() {
            p if p.is_empty() => Ok(()),
            p => bad(p.join(", ")),
        }
    }
}

fn check_mode(name: &str, value: &str, allowed: &[&str]) -> Option<String> {
    (!allowed.contains(&value)).then(|| format!("{name} {value:?} is not one of {allowed:?}"))
}

fn check_instance_id(id: &str) -> Option<String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.starts_with(|c: char| c.is_ascii_alphabetic())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    (!ok).then(|| format!("modelSelection.instanceId {id:?} is not a valid slug"))
}

/// The real client over HTTP.
#[derive(Clone, Debug)]
pub struct T3Client {
    base: String,
    token: Arc<dyn SecretSource>,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct DispatchReply {
    sequence: u64,
}

#[derive(Deserialize, Default)]
struct TaggedError {
    #[serde(default, rename = "_tag")]
    tag: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

impl T3Client {
    /// A client for the T3 server at `base_url`.
    pub fn new(base_url: &str, token: Arc<dyn SecretSource>) -> Self {
        Self {
            base: base_url.trim_end_matches('/').to_string(),
            token,
            http: http_client(Duration::from_secs(30)),
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        auth: bool,
    ) -> Result<T, AdapterError> {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if auth {
            req = req.bearer_auth(self.token.read()?.expose());
        }
        let target = format!("t3 GET {}", path.split('?').next().unwrap_or(path));
        let resp = req
            .send()
            .await
            .map_err(|e| AdapterError::from_transport(&target, &e))?;
        let status = resp.status().as_u16();
        tracing::debug!(request = %target, status, "t3 request");
        let after = retry_after(resp.headers());
        let body = resp
            .text()
            .await
            .map_err(|e| AdapterError::from_transport(&target, &e))?;
        if (200..300).contains(&status) {
            return serde_json::from_str(&body).map_err(|e| {
                AdapterError::permanent(
                    AdapterErrorKind::Decode,
                    format!("{target}: unexpected response shape: {e}"),
                )
                .with_status(status)
            });
        }
        Err(classify(&target, status, &body, after))
    }
}

/// Classify a non-2xx answer from T3 (SPEC §3.2).
pub fn classify(target: &str, status: u16, body: &str, after: Option<Duration>) -> AdapterError {
    let tagged: TaggedError = serde_json::from_str(body).unwrap_or_default();
    let detail = tagged
        .reason
        .clone()
        .or(tagged.tag.clone())
        .unwrap_or_else(|| snippet(body));
    let err = match status {
        400 if body.trim().is_empty() => AdapterError::permanent(
            AdapterErrorKind::SchemaRejected,
            format!("{target}: T3 rejected the command schema (empty 400)"),
        ),
        400 => AdapterError::permanent(AdapterErrorKind::InvalidRequest, format!("{target}: {detail}")),
        401 | 403 => AdapterError::permanent(
            AdapterErrorKind::Auth,
            format!("{target}: not authorized ({detail})"),
        ),
        404 => AdapterError::permanent(
            AdapterErrorKind::NotFound,
            format!("{target}: not found ({detail})"),
        ),
        415 => AdapterError::permanent(
            AdapterErrorKind::UnsupportedMediaType,
            format!("{target}: {detail}"),
        ),
        429 => AdapterError::transient(AdapterErrorKind::RateLimited, format!("{target}: rate limited")),
        500 if tagged.reason.as_deref() == Some("orchestration_dispatch_failed") => AdapterError::permanent(
            AdapterErrorKind::DispatchRejected,
            format!("{target}: T3 rejected the command (orchestration_dispatch_failed)"),
        ),
        500..=599 => AdapterError::transient(
            AdapterErrorKind::ServerError,
            format!("{target}: server error ({detail})"),
        ),
        _ => AdapterError::permanent(
            AdapterErrorKind::UnexpectedStatus,
            format!("{target}: unexpected status ({detail})"),
        ),
    };
    err.with_status(status).with_retry_after(after)
}

#[async_trait]
impl Executor for T3Client {
    async fn environment(&self) -> Result<Environment, AdapterError> {
        self.get_json("/.well-known/t3/environment", false).await
    }

    async fn auth_session(&self) -> Result<AuthSession, AdapterError> {
        self.get_json("/api/auth/session", true).await
    }

    async fn shell(&self) -> Result<Shell, AdapterError> {
        self.get_json("/api/orchestration/shell", true).await
    }

    async fn thread(&self, thread_id: &str) -> Result<serde_json::Value, AdapterError> {
        let id: String =
            percent_encoding::utf8_percent_encode(thread_id, percent_encoding::NON_ALPHANUMERIC).collect();
        let v: serde_json::Value = self
            .get_json(&format!("/api/orchestration/threads/{id}"), true)
            .await?;
        Ok(v)
    }

    async fn dispatch(&self, command: &Command) -> Result<u64, AdapterError> {
        command.validate()?;
        let target = format!("t3 dispatch {}", command.type_name());
        let token = self.token.read()?;
        let resp = self
            .http
            .post(format!("{}/api/orchestration/dispatch", self.base))
            .bearer_auth(token.expose())
            .json(command)
            .send()
            .await
            .map_err(|e| AdapterError::from_transport(&target, &e))?;
        let status = resp.status().as_u16();
        tracing::debug!(
            command = command.type_name(),
            command_id = command.command_id(),
            status,
            "t3 dispatch"
        );
        let after = retry_after(resp.headers());
        let body = resp
            .text()
            .await
            .map_err(|e| AdapterError::from_transport(&target, &e))?;
        if status == 200 {
            let reply: DispatchReply = serde_json::from_str(&body).map_err(|e| {
                AdapterError::permanent(
                    AdapterErrorKind::Decode,
                    format!("{target}: unexpected reply: {e}"),
                )
                .with_status(status)
            })?;
            return Ok(reply.sequence);
        }
        Err(classify(&target, status, &body, after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(text: &str) -> Command {
        Command::ThreadTurnStart {
            command_id: "c".into(),
            thread_id: "t".into(),
            message: TurnMessage {
                message_id: "m".into(),
                role: "user",
                text: text.into(),
                attachments: vec![],
            },
            runtime_mode: "full-access".into(),
            interaction_mode: "default".into(),
            created_at: "2026-11-21T10:00:00Z".into(),
        }
    }

    #[test]
    fn commands_serialise_to_the_client_schema() {
        let v = serde_json::to_value(turn("hi")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "thread.turn.start", "commandId": "c", "threadId": "t",
                "message": {"messageId": "m", "role": "user", "text": "hi", "attachments": []},
                "runtimeMode": "full-access", "interactionMode": "default", "createdAt": "2026-11-21T10:00:00Z"})
        );
        let create = Command::ThreadCreate {
            command_id: "c".into(),
            thread_id: "t".into(),
            project_id: "p".into(),
            title: "x".into(),
            model_selection: ModelSelection {
                instance_id: "claudeAgent".into(),
                model: "m".into(),
            },
            runtime_mode: "full-access".into(),
            interaction_mode: "default".into(),
            branch: None,
            worktree_path: None,
            created_at: "now".into(),
        };
        let v = serde_json::to_value(&create).unwrap();
        assert_eq!(v["branch"], serde_json::Value::Null, "key present, null");
        assert!(v.as_object().unwrap().contains_key("worktreePath"));
        let interrupt = Command::ThreadTurnInterrupt {
            command_id: "c".into(),
            thread_id: "t".into(),
            turn_id: None,
            created_at: "x".into(),
        };
        assert!(
            !serde_json::to_value(&interrupt)
                .unwrap()
                .as_object()
                .unwrap()
                .contains_key("turnId")
        );
    }

    #[test]
    fn validation_catches_what_t3_would_reject() {
        assert!(turn("hi").validate().is_ok());
        assert_eq!(turn("  ").validate().unwrap_err().kind, "invalid_command");
        assert!(turn(&"x".repeat(MAX_TURN_TEXT + 1)).validate().is_err());
        let Command::ThreadTurnStart {
            command_id,
            thread_id,
            message,
            interaction_mode,
            created_at,
            ..
        } = turn("hi")
        else {
            unreachable!()
        };
        let bad_mode = Command::ThreadTurnStart {
            command_id,
            thread_id,
            message,
            runtime_mode: "yolo".into(),
            interaction_mode,
            created_at,
        };
        assert!(bad_mode.validate().unwrap_err().message.contains("runtimeMode"));
    }

    #[test]
    fn classification_follows_the_spec() {
        let c = |status, body: &str| classify("t3", status, body, None);
        assert_eq!(
            (c(400, "").kind, c(400, "").is_transient()),
            ("schema_rejected", false)
        );
        assert_eq!(c(400, r#"{"_tag":"EnvironmentRequestInvalidError","code":"invalid_request","reason":"invalid_command"}"#).kind, "invalid_request");
        assert_eq!(
            c(
                401,
                r#"{"_tag":"EnvironmentAuthInvalidError","reason":"missing_credential"}"#
            )
            .kind,
            "auth"
        );
        assert_eq!(c(403, r#"{"_tag":"EnvironmentScopeRequiredError"}"#).kind, "auth");
        let business = c(
            500,
            r#"{"_tag":"EnvironmentInternalError","code":"internal_error","reason":"orchestration_dispatch_failed"}"#,
        );
        assert_eq!(
            (business.kind, business.is_transient()),
            ("dispatch_rejected", false)
        );
        for status in [429, 502, 503, 504] {
            assert!(c(status, "").is_transient(), "{status}");
        }
        assert!(
            c(500, "").is_transient(),
            "a plain 500 is a fault, not a business rejection"
        );
    }
}
