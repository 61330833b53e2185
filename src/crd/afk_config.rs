//! `AfkConfig`: one per team or cluster. It says which repos may be automated, whom to trust,
//! where the agent executor and CI live, the budgets, and where to ring the doorbell. It ships
//! disarmed: `suspend: true` and an empty allowlist both stop every dispatch.

// clippy reads the repeated `printcolumn(type_ = …)` keys of the derive as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::GoDuration;

/// GitHub owner (1–39 alphanumerics or inner hyphens) `/` repository name (1–100 of
/// alphanumerics, `.`, `_`, `-`).
pub const REPO_PATTERN: &str = r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,37}[A-Za-z0-9])?/[A-Za-z0-9._-]{1,100}$";

/// Specification of the AFK loop for a set of repositories.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "afk.dev",
    version = "v1alpha1",
    kind = "AfkConfig",
    namespaced,
    shortname = "afkc",
    category = "afk",
    status = "AfkConfigStatus",
    derive = "PartialEq",
    cel,
    doc = "AfkConfig arms the AFK loop: which repos may be automated, whom to trust, the agent executor, CI, budgets and notifications. It ships disarmed (suspend: true, empty allowlist).",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Armed, nothing stalled, GitHub and T3 accept their credentials"
    ),
    printcolumn(
        name = "Armed",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Armed\")].status",
        description = "Whether the loop may dispatch"
    ),
    printcolumn(
        name = "In-Flight",
        type_ = "integer",
        json_path = ".status.inFlight",
        description = "Non-terminal AfkRuns"
    ),
    printcolumn(
        name = "Queue",
        type_ = "integer",
        json_path = ".status.queueLength",
        description = "Ready issues not dispatched"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.message",
        description = "The message of the first condition that is not as it should be"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(
        name = "Last-Poll",
        type_ = "date",
        json_path = ".status.lastPollTime",
        priority = 1,
        description = "When GitHub was last polled"
    ),
    printcolumn(
        name = "T3",
        type_ = "string",
        json_path = ".status.executorVersion",
        priority = 1,
        description = "The T3 server version"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AfkConfigSpec {
    /// The kill switch. While true nothing new is dispatched and no fix-forward turn is sent;
    /// runs already in flight are still watched to a verdict. Defaults to true (disarmed).
    #[serde(default = "default_true")]
    pub suspend: bool,

    /// Repositories that may be automated. Empty (the default) means the loop dispatches nothing.
    #[serde(default)]
    #[schemars(length(max = 200))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["repo".into()]))]
    pub allowlist: Vec<RepoEntry>,

    /// Where issues come from.
    pub tracker: TrackerSpec,

    /// Names of the labels the loop reads and writes.
    #[serde(default)]
    pub labels: LabelNames,

    /// Who may arm an issue by labelling it.
    #[serde(default)]
    pub trust: TrustSpec,

    /// How often the tracker is polled (Go duration, at least 10s). Webhooks trigger extra polls.
    #[serde(default = "default_poll_interval")]
    #[x_kube(validation = kube::core::Rule::new("duration(self) >= duration('10s')").message("pollInterval must be at least 10s"))]
    pub poll_interval: GoDuration,

    /// The agent executor that implements issues.
    pub executor: ExecutorSpec,

    /// How a pushed commit is verified.
    #[serde(default)]
    pub ci: CiSpec,

    /// Fix-forward, stall and cost budgets per run.
    #[serde(default)]
    pub budgets: Budgets,

    /// Concurrency limits.
    #[serde(default)]
    pub concurrency: Concurrency,

    /// Where the doorbell rings (done, needs-human, frozen, failed).
    #[serde(default)]
    pub notify: NotifySpec,

    /// How many finished AfkRuns are kept per repo.
    #[serde(default)]
    pub history: History,
}

fn default_true() -> bool {
    true
}

fn default_poll_interval() -> GoDuration {
    GoDuration::new("2m")
}

/// One repository enrolled in the loop.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepoEntry {
    /// The repository as `owner/name`.
    #[schemars(regex(pattern = REPO_PATTERN))]
    pub repo: String,

    /// Branch the agent pushes to and CI watches. Defaults to the repository's default branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub default_branch: Option<String>,

    /// Absolute path of the repository checkout on the executor. Defaults to
    /// `<executor.t3.workspaceBase>/<owner>__<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"), length(max = 4096))]
    pub workspace_root: Option<String>,

    /// The Deployment in this cluster that runs the repository; when set, a run is only green
    /// once the commit is rolled out there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutTarget>,

    /// Woodpecker's numeric id of the repository; when set (and `ci.woodpecker` is configured)
    /// the deploy stage is watched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub woodpecker_repo_id: Option<u64>,
}

/// A Deployment whose rollout proves a commit is live.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutTarget {
    /// Namespace of the Deployment.
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// Name of the Deployment.
    #[schemars(length(min = 1, max = 253))]
    pub deployment: String,
    /// Container whose image must carry the commit. Defaults to every container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub container: Option<String>,
}

/// A key in a Secret in the AfkConfig's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// The issue tracker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrackerSpec {
    /// GitHub (github.com or GitHub Enterprise).
    pub github: GithubTracker,
}

/// GitHub access. Exactly one of `tokenSecretRef` and `app` must be set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.tokenSecretRef) != has(self.app)").message("set exactly one of tokenSecretRef or app"))]
pub struct GithubTracker {
    /// REST API base URL.
    #[serde(default = "default_github_api")]
    #[schemars(regex(pattern = r"^https?://"), length(max = 2048))]
    pub api_url: String,
    /// A personal access token (fine-grained: issues and contents read/write, checks read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,
    /// A GitHub App installation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<GithubApp>,
    /// Secret for verifying `X-Hub-Signature-256` on webhooks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret_ref: Option<SecretKeyRef>,
}

fn default_github_api() -> String {
    "https://api.github.com".into()
}

/// A GitHub App installation used instead of a token.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GithubApp {
    /// The App's id.
    #[schemars(range(min = 1))]
    pub app_id: u64,
    /// The installation's id.
    #[schemars(range(min = 1))]
    pub installation_id: u64,
    /// The App's PEM private key.
    pub private_key_secret_ref: SecretKeyRef,
}

/// Label names on the tracker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelNames {
    /// The trigger: a trusted human applies it to hand an issue to the loop.
    #[serde(default = "default_ready_label")]
    #[schemars(length(min = 1, max = 50))]
    pub ready: String,
    /// Applied while an agent works on the issue (the visible mirror of the per-repo lock).
    #[serde(default = "default_in_progress_label")]
    #[schemars(length(min = 1, max = 50))]
    pub in_progress: String,
    /// Applied when the loop gives the issue back to a human.
    #[serde(default = "default_ready_for_human_label")]
    #[schemars(length(min = 1, max = 50))]
    pub ready_for_human: String,
}

fn default_ready_label() -> String {
    "ready-for-agent".into()
}
fn default_in_progress_label() -> String {
    "agent-in-progress".into()
}
fn default_ready_for_human_label() -> String {
    "ready-for-human".into()
}

impl Default for LabelNames {
    fn default() -> Self {
        Self {
            ready: default_ready_label(),
            in_progress: default_in_progress_label(),
            ready_for_human: default_ready_for_human_label(),
        }
    }
}

/// A repository permission level, weakest first.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Not a collaborator.
    None,
    /// Can read.
    Read,
    /// Can apply labels but cannot push.
    Triage,
    /// Can push.
    Write,
    /// Can manage the repository without admin rights.
    Maintain,
    /// Full control.
    Admin,
}

/// The weakest permission a labeler may have.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MinPermission {
    /// write, maintain or admin.
    Write,
    /// maintain or admin.
    Maintain,
    /// admin only.
    Admin,
}

impl MinPermission {
    /// The permission level this minimum stands for.
    pub fn as_permission(self) -> Permission {
        match self {
            MinPermission::Write => Permission::Write,
            MinPermission::Maintain => Permission::Maintain,
            MinPermission::Admin => Permission::Admin,
        }
    }
}

/// Who may trigger the loop.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrustSpec {
    /// The labeler's repository permission must be at least this.
    #[serde(default = "default_min_permission")]
    pub min_permission: MinPermission,
    /// Bot accounts (e.g. `renovate[bot]`) whose labels count; every other non-User actor is untrusted.
    #[serde(default)]
    #[schemars(length(max = 50))]
    pub allowed_bots: Vec<String>,
}

fn default_min_permission() -> MinPermission {
    MinPermission::Write
}

impl Default for TrustSpec {
    fn default() -> Self {
        Self {
            min_permission: default_min_permission(),
            allowed_bots: vec![],
        }
    }
}

/// The agent executor.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutorSpec {
    /// T3 Code, driven over its HTTP orchestration API.
    pub t3: T3Spec,
}

/// T3's runtime modes (`thread.create.runtimeMode`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RuntimeMode {
    /// Every tool call needs approval (an unattended run will end NeedsHuman at the first one).
    #[serde(rename = "approval-required")]
    ApprovalRequired,
    /// File edits are accepted, commands need approval.
    #[serde(rename = "auto-accept-edits")]
    AutoAcceptEdits,
    /// Approvals are reviewed by a model (T3 ≥ 0.0.29).
    #[serde(rename = "auto")]
    Auto,
    /// No approvals.
    #[serde(rename = "full-access")]
    FullAccess,
}

impl RuntimeMode {
    /// The wire spelling T3 expects.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeMode::ApprovalRequired => "approval-required",
            RuntimeMode::AutoAcceptEdits => "auto-accept-edits",
            RuntimeMode::Auto => "auto",
            RuntimeMode::FullAccess => "full-access",
        }
    }
}

/// Connection to a T3 Code server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct T3Spec {
    /// Base URL the operator calls, e.g. `http://t3.t3.svc:3773`.
    #[schemars(regex(pattern = r"^https?://"), length(max = 2048))]
    pub url: String,
    /// Bearer token with `orchestration:read` and `orchestration:operate`.
    pub token_secret_ref: SecretKeyRef,
    /// Base URL humans open (deep links in comments and notifications). Defaults to `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"), length(max = 2048))]
    pub public_url: Option<String>,
    /// Deep-link template; `{publicUrl}` and `{threadId}` are replaced.
    #[serde(default = "default_thread_url_template")]
    #[schemars(length(min = 1, max = 2048))]
    pub thread_url_template: String,
    /// Provider instance slug that runs the agent.
    #[serde(default = "default_instance_id")]
    #[schemars(regex(pattern = r"^[a-zA-Z][a-zA-Z0-9_-]*$"), length(max = 64))]
    pub instance_id: String,
    /// Model the agent runs, e.g. `claude-sonnet-4-5`.
    #[schemars(length(min = 1, max = 200))]
    pub model: String,
    /// Runtime mode of created threads. Unattended runs want `full-access`.
    #[serde(default = "default_runtime_mode")]
    pub runtime_mode: RuntimeMode,
    /// Directory on the executor under which repos are checked out as `<owner>__<name>`.
    #[serde(default = "default_workspace_base")]
    #[schemars(regex(pattern = r"^/"), length(max = 4096))]
    pub workspace_base: String,
    /// Let T3 create a missing workspace root (`createWorkspaceRootIfMissing: true`); the opening
    /// prompt then tells the agent to clone the repository into an empty workspace, or to fetch
    /// and branch from the up-to-date default branch otherwise — no hand-made checkout is needed
    /// on the T3 host (it needs git credentials for the agent).
    #[serde(default = "default_true")]
    pub prepare_workspace: bool,
}

fn default_thread_url_template() -> String {
    "{publicUrl}/?thread={threadId}".into()
}
fn default_instance_id() -> String {
    "claudeAgent".into()
}
fn default_runtime_mode() -> RuntimeMode {
    RuntimeMode::FullAccess
}
fn default_workspace_base() -> String {
    "/data".into()
}

/// How a pushed commit is verified.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct CiSpec {
    /// The build stage: GitHub check runs and commit statuses.
    #[serde(default)]
    pub github_checks: GithubChecks,
    /// The deploy stage: a Woodpecker server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub woodpecker: Option<WoodpeckerSpec>,
}

/// GitHub checks as the build stage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GithubChecks {
    /// Whether the build stage is watched.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Only these check-run or status names count; empty means all of them.
    #[serde(default)]
    #[schemars(length(max = 100))]
    pub required_checks: Vec<String>,
}

impl Default for GithubChecks {
    fn default() -> Self {
        Self {
            enabled: true,
            required_checks: vec![],
        }
    }
}

/// A Woodpecker CI server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WoodpeckerSpec {
    /// Base URL, e.g. `https://ci.example.com`.
    #[schemars(regex(pattern = r"^https?://"), length(max = 2048))]
    pub url: String,
    /// API token.
    pub token_secret_ref: SecretKeyRef,
}

/// Budgets per run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Budgets {
    /// Corrective turns allowed after a red CI before the run freezes.
    #[serde(default = "default_fix_forward_attempts")]
    #[schemars(range(min = 1, max = 50))]
    pub fix_forward_max_attempts: u32,
    /// Time allowed since the first red CI before the run freezes (Go duration).
    #[serde(default = "default_fix_forward_duration")]
    pub fix_forward_max_duration: GoDuration,
    /// A turn working longer than this without a pushed commit is interrupted (Go duration).
    #[serde(default = "default_stall_timeout")]
    pub stall_timeout: GoDuration,
    /// How long a finished turn without a pushed commit is given for the push to show up
    /// before the run is handed to a human (Go duration).
    #[serde(default = "default_pre_escalation_grace")]
    pub pre_escalation_grace: GoDuration,
    /// How long a run waits for a human to answer its agent (`WaitingForHuman`) before the
    /// turn is interrupted and the run handed to a human (Go duration).
    #[serde(default = "default_answer_timeout")]
    pub answer_timeout: GoDuration,
}

fn default_answer_timeout() -> GoDuration {
    GoDuration::new("24h")
}

fn default_fix_forward_attempts() -> u32 {
    5
}
fn default_fix_forward_duration() -> GoDuration {
    GoDuration::new("60m")
}
fn default_stall_timeout() -> GoDuration {
    GoDuration::new("3h")
}
fn default_pre_escalation_grace() -> GoDuration {
    GoDuration::new("2m")
}

impl Default for Budgets {
    fn default() -> Self {
        Self {
            fix_forward_max_attempts: default_fix_forward_attempts(),
            fix_forward_max_duration: default_fix_forward_duration(),
            stall_timeout: default_stall_timeout(),
            pre_escalation_grace: default_pre_escalation_grace(),
            answer_timeout: default_answer_timeout(),
        }
    }
}

/// Concurrency limits. Within one repo runs are always serial.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Concurrency {
    /// Non-terminal AfkRuns allowed at once across all repos.
    #[serde(default = "default_max_in_flight")]
    #[schemars(range(min = 1, max = 100))]
    pub max_in_flight: u32,
}

fn default_max_in_flight() -> u32 {
    4
}

impl Default for Concurrency {
    fn default() -> Self {
        Self {
            max_in_flight: default_max_in_flight(),
        }
    }
}

/// Notification channels. `done` is sent at low priority; `needs-human`, `frozen` and `failed` at high.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct NotifySpec {
    /// A Slack incoming webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<SlackSpec>,
    /// An ntfy topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ntfy: Option<NtfySpec>,
}

/// Slack incoming webhook.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlackSpec {
    /// Secret holding the webhook URL (the URL is the credential).
    pub webhook_secret_ref: SecretKeyRef,
}

/// An ntfy server and topic.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NtfySpec {
    /// Server base URL, e.g. `https://ntfy.sh`.
    #[schemars(regex(pattern = r"^https?://"), length(max = 2048))]
    pub url: String,
    /// Topic name.
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
    pub topic: String,
    /// Access token, if the topic is protected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,
}

/// Retention of finished AfkRuns, per repo.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct History {
    /// Newest `Succeeded` runs kept.
    #[serde(default = "default_succeeded_to_keep")]
    #[schemars(range(max = 1000))]
    pub succeeded_to_keep: u32,
    /// Newest runs kept that ended in any other terminal phase.
    #[serde(default = "default_failed_to_keep")]
    #[schemars(range(max = 1000))]
    pub failed_to_keep: u32,
}

fn default_succeeded_to_keep() -> u32 {
    20
}
fn default_failed_to_keep() -> u32 {
    50
}

impl Default for History {
    fn default() -> Self {
        Self {
            succeeded_to_keep: default_succeeded_to_keep(),
            failed_to_keep: default_failed_to_keep(),
        }
    }
}

/// Observed state of the loop. Written only by the controller.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AfkConfigStatus {
    /// The message of the first condition that is not as it should be (what is in the way);
    /// absent when all is well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling, Stalled, Armed, TrackerReachable, ExecutorReachable.
    #[serde(default)]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// When the tracker was last polled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_poll_time: Option<Time>,
    /// Non-terminal AfkRuns.
    #[serde(default)]
    pub in_flight: u32,
    /// Number of entries in `queue`.
    #[serde(default)]
    pub queue_length: u32,
    /// Per enrolled repo: the run holding its lock and the ready issues waiting.
    #[serde(default)]
    pub repos: Vec<RepoLockStatus>,
    /// Every ready issue that was not dispatched at the last poll, with the reason.
    #[serde(default)]
    pub queue: Vec<QueueEntry>,
    /// The tracker's rate limit as of the last response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitStatus>,
    /// The executor's reported server version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor_version: Option<String>,
}

/// The per-repo lock.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepoLockStatus {
    /// The repository (`owner/name`).
    pub repo: String,
    /// Name of the non-terminal AfkRun holding the repo, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// Ready issue numbers waiting for the repo.
    #[serde(default)]
    pub waiting: Vec<u64>,
}

/// A ready issue that was not dispatched.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueEntry {
    /// The repository (`owner/name`).
    pub repo: String,
    /// Issue number.
    pub issue: u64,
    /// Issue title.
    pub title: String,
    /// Priority from a `priority:N` / `PN` label; absent when unlabelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// Why it was not dispatched, e.g. `Blocked by #3 (open)`.
    pub reason: String,
}

/// Tracker rate-limit snapshot.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitStatus {
    /// Requests left in the window.
    pub remaining: u64,
    /// When the window resets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_at: Option<Time>,
}

impl AfkConfig {
    /// The emergency-stop reason, if the annotation is present.
    pub fn emergency_stop(&self) -> Option<&str> {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(super::EMERGENCY_STOP_ANNOTATION))
            .map(String::as_str)
    }
}
