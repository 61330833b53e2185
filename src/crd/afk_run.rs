//! `AfkRun`: one attempt at one issue. Its spec is the trusted snapshot taken when the label was
//! verified and is immutable (CEL) except `cancel`; its status is the run's whole memory — the
//! recorded intents that make every external side effect happen at most once across restarts.

// clippy reads the repeated `printcolumn(type_ = …)` keys of the derive as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::afk_config::REPO_PATTERN;

/// Specification of one attempt at one issue.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "afk.dev",
    version = "v1alpha1",
    kind = "AfkRun",
    namespaced,
    shortname = "afkr",
    category = "afk",
    status = "AfkRunStatus",
    derive = "PartialEq",
    cel,
    doc = "AfkRun is one attempt by an agent at one issue: dispatched to T3, watched through CI, deploy and rollout, fixed forward within budget, then closed, frozen or handed to a human.",
    printcolumn(name = "Repo", type_ = "string", json_path = ".spec.repo"),
    printcolumn(name = "Issue", type_ = "integer", json_path = ".spec.issue"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "CI", type_ = "string", json_path = ".status.ci.verdict"),
    printcolumn(
        name = "Attempts",
        type_ = "string",
        json_path = ".status.attempts",
        description = "Fix-forward attempts used / allowed"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "Commit", type_ = "string", json_path = ".status.commit", priority = 1),
    printcolumn(
        name = "Thread",
        type_ = "string",
        json_path = ".status.threadId",
        priority = 1
    ),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.reason", priority = 1),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.message",
        priority = 1,
        description = "What the run waits for, or why it ended"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.priority) == has(oldSelf.priority) && (!has(self.priority) || self.priority == oldSelf.priority)").message("spec.priority is immutable"))]
#[x_kube(validation = kube::core::Rule::new("!oldSelf.cancel || self.cancel").message("spec.cancel cannot be unset once set"))]
pub struct AfkRunSpec {
    /// Name of the AfkConfig (same namespace) this run belongs to.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("spec.configRef is immutable"))]
    pub config_ref: String,

    /// The repository as `owner/name`.
    #[schemars(regex(pattern = REPO_PATTERN))]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("spec.repo is immutable"))]
    pub repo: String,

    /// Issue number.
    #[schemars(range(min = 1))]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("spec.issue is immutable"))]
    pub issue: u64,

    /// Attempt number for this issue, starting at 1 (a human re-applying the ready label asks
    /// for the next attempt).
    #[schemars(range(min = 1, max = 1000))]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("spec.attempt is immutable"))]
    pub attempt: u32,

    /// Priority from the issue's `priority:N` / `PN` label (lower is more urgent); absent when
    /// unlabelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1000))]
    pub priority: Option<u32>,

    /// Issue title at dispatch time (for display).
    #[schemars(length(max = 1024))]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("spec.title is immutable"))]
    pub title: String,

    /// The issue text as it was when the trusted label was verified. The agent gets this, not a
    /// re-read, so an edit after labelling cannot smuggle in new instructions.
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("spec.taskSnapshot is immutable"))]
    pub task_snapshot: TaskSnapshot,

    /// Set to true to stop the run: its turn is interrupted and it ends `Cancelled`. Cannot be unset.
    #[serde(default)]
    pub cancel: bool,
}

/// The trusted issue text.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskSnapshot {
    /// Issue title.
    #[schemars(length(max = 1024))]
    pub title: String,
    /// Issue body (Markdown), at most GitHub's 65536 characters.
    #[serde(default)]
    #[schemars(length(max = 65536))]
    pub body: String,
    /// Lower-case hex SHA-256 of `title + "\n" + body`.
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub sha256: String,
}

/// Where a run is in its life. Terminal phases never change again.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Phase {
    /// Created, nothing sent yet.
    Pending,
    /// Commands to T3 are being sent (intent recorded).
    Dispatching,
    /// The agent is working; no commit pushed yet.
    Working,
    /// The agent waits on a person: an approval or an answer to its question (`status.question`).
    /// Not terminal: the run goes back to `Working` once answered.
    WaitingForHuman,
    /// A commit was pushed; CI, deploy and rollout are being watched.
    Verifying,
    /// CI went red; a corrective turn was sent on the same thread.
    FixingForward,
    /// Green through every configured stage; issue closed.
    Succeeded,
    /// The agent stopped without a commit, asked for input, or stalled.
    NeedsHuman,
    /// The fix-forward or cost budget ran out; the broken state is kept for forensics.
    Frozen,
    /// Cancelled by `spec.cancel`, deletion or the emergency stop.
    Cancelled,
    /// A permanent error (e.g. the executor rejected the dispatch).
    Failed,
}

impl Phase {
    /// Every phase, in lifecycle order: the one vocabulary that metrics, Argo CD health checks
    /// (`deploy/argocd/health-afkrun.lua`) and docs are checked against.
    pub const ALL: [Phase; 11] = [
        Phase::Pending,
        Phase::Dispatching,
        Phase::Working,
        Phase::WaitingForHuman,
        Phase::Verifying,
        Phase::FixingForward,
        Phase::Succeeded,
        Phase::NeedsHuman,
        Phase::Frozen,
        Phase::Cancelled,
        Phase::Failed,
    ];

    /// Whether the phase is final.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Phase::Succeeded | Phase::NeedsHuman | Phase::Frozen | Phase::Cancelled | Phase::Failed
        )
    }

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Dispatching => "Dispatching",
            Phase::Working => "Working",
            Phase::WaitingForHuman => "WaitingForHuman",
            Phase::Verifying => "Verifying",
            Phase::FixingForward => "FixingForward",
            Phase::Succeeded => "Succeeded",
            Phase::NeedsHuman => "NeedsHuman",
            Phase::Frozen => "Frozen",
            Phase::Cancelled => "Cancelled",
            Phase::Failed => "Failed",
        }
    }
}

/// The folded CI verdict.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum CiVerdict {
    /// Some stage has no decisive result yet.
    Pending,
    /// Every configured stage succeeded.
    Green,
    /// A stage failed.
    Red,
}

/// The verification stages, in order.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StageName {
    /// GitHub check runs and commit statuses.
    Build,
    /// The Woodpecker deploy pipeline.
    Deploy,
    /// The Kubernetes Deployment rollout.
    Rollout,
}

impl StageName {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            StageName::Build => "build",
            StageName::Deploy => "deploy",
            StageName::Rollout => "rollout",
        }
    }
}

/// One stage's result.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum StageResult {
    /// Nothing reported for the commit yet (or not queried because an earlier stage decided).
    None,
    /// Running or queued.
    Pending,
    /// Passed.
    Success,
    /// Failed.
    Failure,
}

/// One stage in the CI summary.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageStatus {
    /// Which stage.
    pub name: StageName,
    /// Its result.
    pub result: StageResult,
    /// Link to the failing or running job, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// The CI summary for the commit under verification.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CiStatus {
    /// The folded verdict.
    pub verdict: CiVerdict,
    /// Per-stage results, in order.
    #[serde(default)]
    pub stages: Vec<StageStatus>,
}

/// The recorded intent of the opening dispatch: every id is minted and written here before the
/// first request, so a crash re-sends the same commands and T3 answers them from its receipts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DispatchIntent {
    /// `commandId` of `project.create`; absent when an active project for the workspace was reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_command_id: Option<String>,
    /// `commandId` of `thread.create`.
    pub thread_command_id: String,
    /// `commandId` of the opening `thread.turn.start`.
    pub turn_command_id: String,
    /// `message.messageId` of the opening turn.
    pub message_id: String,
    /// When the intent was recorded.
    pub minted_at: Time,
    /// When T3 accepted the turn start (the dispatch is complete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<Time>,
}

/// A corrective (or interrupt) command recorded before it is sent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandIntent {
    /// The `commandId` sent to T3.
    pub command_id: String,
    /// The `messageId` of the turn's message (absent for interrupts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The commit the command reacts to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The thread's latest turn id when this turn was recorded: a turn with that id is the one
    /// before, never the answer to this command (turns can follow each other within seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_turn_id: Option<String>,
    /// When the intent was recorded.
    pub minted_at: Time,
    /// When T3 accepted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<Time>,
}

/// Whether the agent waits on an approval or on answers to questions.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum QuestionKind {
    /// A tool call waits for approval (`thread.approval.respond`).
    Approval,
    /// The agent asked questions (`thread.user-input.respond`).
    UserInput,
}

/// One question the agent asked.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuestionItem {
    /// The id an answer is keyed by.
    pub id: String,
    /// Short header.
    #[serde(default)]
    pub header: String,
    /// The question.
    pub question: String,
    /// The offered option labels (free text is accepted too).
    #[serde(default)]
    pub options: Vec<String>,
    /// Several options may be chosen.
    #[serde(default)]
    pub multi_select: bool,
}

/// What the agent waits on (read from the thread's `approval.requested` /
/// `user-input.requested` activity).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Question {
    /// Approval or user input.
    pub kind: QuestionKind,
    /// T3's `requestId`; an answer must name it (a stale answer is ignored).
    pub request_id: String,
    /// One human-readable line: the approval's kind and detail, or the questions.
    pub text: String,
    /// For approvals: `command`, `file-read` or `file-change`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_kind: Option<String>,
    /// For approvals: what is to be approved (e.g. the command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For user input: the questions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub questions: Vec<QuestionItem>,
    /// When the run started waiting.
    pub asked_at: Time,
    /// The `needs-answer` doorbell was delivered (or gave up) for this question.
    #[serde(default)]
    pub notified: bool,
}

/// An answer on its way to the agent: recorded, then sent with a deterministic `commandId`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnswerIntent {
    /// The request it answers.
    pub request_id: String,
    /// The respond command's id (derived from the run and the request).
    pub command_id: String,
    /// Who answered (from the annotation), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// When it was recorded.
    pub minted_at: Time,
    /// When T3 accepted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<Time>,
}

/// Fix-forward bookkeeping.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct FixForwardStatus {
    /// Corrective turns sent so far.
    #[serde(default)]
    pub attempts: u32,
    /// When CI first went red for this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_red_at: Option<Time>,
    /// The latest corrective turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_turn: Option<CommandIntent>,
}

/// Which terminal side effects are done; a reconcile performs only the missing ones.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Effects {
    /// The in-progress label was added after the turn started.
    #[serde(default)]
    pub in_progress_label: bool,
    /// Terminal relabel done (in-progress and ready removed, ready-for-human added when due).
    #[serde(default)]
    pub labels: bool,
    /// The issue was closed (or found closed by the commit).
    #[serde(default)]
    pub close: bool,
    /// The final checklist state was written.
    #[serde(default)]
    pub comment: bool,
    /// When the terminal notification was about to be sent (the recorded intent): a run whose
    /// intent is set but not `notification` rings again after a crash (at least once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification_intent_at: Option<Time>,
    /// The terminal notification was delivered (or gave up after bounded retries, with a
    /// Warning Event).
    #[serde(default)]
    pub notification: bool,
    /// The turn was interrupted.
    #[serde(default)]
    pub interrupt: bool,
}

/// Observed state of a run. Written only by the controller.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AfkRunStatus {
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where the run is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// T3 project id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    /// T3 thread id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    /// Deep link to the thread for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_url: Option<String>,
    /// The recorded dispatch intent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatch: Option<DispatchIntent>,
    /// The recorded interrupt, when the turn was or is being interrupted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupt: Option<CommandIntent>,
    /// What the agent waits on while the run is `WaitingForHuman`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question: Option<Question>,
    /// The latest answer sent to the agent (recorded before it is sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<AnswerIntent>,
    /// The commit under verification (full SHA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Link to the commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_url: Option<String>,
    /// CI summary for `commit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci: Option<CiStatus>,
    /// Fix-forward bookkeeping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix_forward: Option<FixForwardStatus>,
    /// Fix-forward attempts used / allowed, e.g. `2/5` (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<String>,
    /// When the dispatch was first attempted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the first commit for the run was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed_at: Option<Time>,
    /// When the run reached its terminal phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// CamelCase reason for the current phase, e.g. `AgentAskedForInput`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Id of the checklist comment on the issue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checklist_comment_id: Option<u64>,
    /// Terminal side effects already performed.
    #[serde(default)]
    pub effects: Effects,
    /// Ready, Reconciling, Stalled.
    #[serde(default)]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

impl AfkRun {
    /// The current phase; a run without status is `Pending`.
    pub fn phase(&self) -> Phase {
        self.status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or(Phase::Pending)
    }

    /// Whether the run has reached a terminal phase.
    pub fn is_terminal(&self) -> bool {
        self.phase().is_terminal()
    }
}
