//! kstatus-style conditions: the condition types and reasons the controller writes, and a
//! transition-aware `set_condition` that keeps `lastTransitionTime` unless the status flips (so
//! an unchanged reconcile produces an identical status and never re-triggers itself).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types. `Ready`, `Reconciling` and `Stalled` follow kstatus; the rest are domain
/// conditions.
pub mod types {
    /// The object reached its goal (AfkConfig: armed and polling; AfkRun: succeeded).
    pub const READY: &str = "Ready";
    /// The controller is still working towards the goal.
    pub const RECONCILING: &str = "Reconciling";
    /// Progress needs a human (invalid spec, frozen or failed run).
    pub const STALLED: &str = "Stalled";
    /// AfkConfig: the loop may dispatch (not suspended, not stopped, allowlist non-empty).
    pub const ARMED: &str = "Armed";
    /// AfkConfig: the issue tracker answered the last poll.
    pub const TRACKER_REACHABLE: &str = "TrackerReachable";
    /// AfkConfig: the T3 executor answered its environment probe.
    pub const EXECUTOR_REACHABLE: &str = "ExecutorReachable";
    /// AfkConfig: the T3 token expires within a week (True is the warning).
    pub const TOKEN_EXPIRING: &str = "TokenExpiring";
}

/// Machine-readable reasons (CamelCase, as Kubernetes requires).
pub mod reasons {
    /// `spec.suspend` is true.
    pub const SUSPENDED: &str = "Suspended";
    /// `spec.allowlist` is empty.
    pub const EMPTY_ALLOWLIST: &str = "EmptyAllowlist";
    /// The `afk.dev/emergency-stop` annotation is present.
    pub const EMERGENCY_STOP: &str = "EmergencyStop";
    /// The `Armed=False` reasons that mean the loop is disarmed on purpose (the controller copies
    /// them to `Ready=False`). Any other `Ready=False` reason is a fault: Argo CD shows
    /// `Suspended` for these and `Degraded` for the rest (`deploy/argocd/health-afkconfig.lua`).
    pub const DISARMED: [&str; 3] = [SUSPENDED, EMPTY_ALLOWLIST, EMERGENCY_STOP];
    /// Everything needed to dispatch is in place.
    pub const ARMED: &str = "Armed";
    /// The spec cannot be acted on (bad duration, missing reference, …).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The last reconcile completed.
    pub const RECONCILED: &str = "Reconciled";
    /// An external system answered.
    pub const REACHABLE: &str = "Reachable";
    /// An external system did not answer.
    pub const UNREACHABLE: &str = "Unreachable";
    /// An external system refused the credentials.
    pub const UNAUTHORIZED: &str = "Unauthorized";
    /// Armed, and the first authenticated probes have not answered yet (`Ready=Unknown`).
    pub const PROBING: &str = "Probing";
    /// AfkConfig `Ready=True`: armed, and GitHub and T3 accept their credentials.
    pub const READY: &str = "Ready";
    /// `TokenExpiring=True`: the T3 token expires within the warning window.
    pub const TOKEN_EXPIRES_SOON: &str = "TokenExpiresSoon";
    /// `TokenExpiring=False`: the T3 token is good beyond the warning window.
    pub const TOKEN_VALID: &str = "TokenValid";
    /// `TokenExpiring=False`: T3 reported no expiry for the token.
    pub const NO_EXPIRY: &str = "NoExpiry";

    // AfkConfig, `Reconciling` and `Stalled`.
    /// The first poll after a spec change is running.
    pub const POLLING: &str = "Polling";
    /// A referenced Secret does not exist.
    pub const SECRET_MISSING: &str = "SecretMissing";
    /// A referenced Secret exists and the operator may not read it (RBAC).
    pub const SECRET_UNREADABLE: &str = "SecretUnreadable";
    /// The spec references something unusable (a key missing from a Secret, a bad private key).
    pub const CONFIG_ERROR: &str = "ConfigError";
    /// GitHub refuses the App's installation token even after a refresh.
    pub const GITHUB_APP_UNAUTHORIZED: &str = "GitHubAppUnauthorized";
    /// The AfkConfig `Ready=False` reasons that are faults (Argo CD: `Degraded`), as opposed to
    /// [`DISARMED`].
    pub const CONFIG_FAULTS: [&str; 8] = [
        UNAUTHORIZED,
        UNREACHABLE,
        SECRET_MISSING,
        SECRET_UNREADABLE,
        INVALID_SPEC,
        CONFIG_ERROR,
        GITHUB_APP_UNAUTHORIZED,
        ARMED,
    ];

    // AfkRun `status.reason` the controller writes (the decision table adds its own).
    /// The AfkConfig a run names does not exist.
    pub const CONFIG_NOT_FOUND: &str = "ConfigNotFound";
    /// The AfkConfig's Secrets cannot be dereferenced.
    pub const REFERENCE_ERROR: &str = "ReferenceError";
    /// T3 rejected the dispatch for good.
    pub const DISPATCH_REJECTED: &str = "DispatchRejected";
    /// T3 rejected a corrective turn for good.
    pub const FIX_FORWARD_REJECTED: &str = "FixForwardRejected";
    /// T3 refused the token.
    pub const EXECUTOR_UNAUTHORIZED: &str = "ExecutorUnauthorized";
    /// The agent waits on an approval or an answer.
    pub const WAITING_FOR_ANSWER: &str = "WaitingForAnswer";
    /// A human's answer was sent to the agent.
    pub const ANSWERED: &str = "Answered";
    /// The AfkRun was deleted by a human (a cancel).
    pub const DELETED: &str = "Deleted";
    // AfkRun `status.reason` from the decision table (`policy::run_decision`). A run that is
    // simply in a phase has the phase's name as its reason.
    /// Waiting to be dispatched.
    pub const PENDING: &str = "Pending";
    /// The task is being sent to the executor.
    pub const DISPATCHING: &str = "Dispatching";
    /// The agent is working.
    pub const WORKING: &str = "Working";
    /// CI is being followed for the pushed commit.
    pub const VERIFYING: &str = "Verifying";
    /// A corrective turn is running.
    pub const FIXING_FORWARD: &str = "FixingForward";
    /// The commit is green.
    pub const SUCCEEDED: &str = "Succeeded";
    /// A human cancelled the run.
    pub const CANCELLED: &str = "Cancelled";
    /// The run is already terminal; nothing to decide.
    pub const TERMINAL: &str = "Terminal";
    /// The run was never dispatched.
    pub const NOT_DISPATCHED: &str = "NotDispatched";
    /// The agent waits on an approval or a question.
    pub const AGENT_ASKED_FOR_INPUT: &str = "AgentAskedForInput";
    /// The agent's turn ended without a commit for the run.
    pub const AGENT_FINISHED_WITHOUT_PUSH: &str = "AgentFinishedWithoutPush";
    /// The agent's turn ended in an error.
    pub const AGENT_TURN_FAILED: &str = "AgentTurnFailed";
    /// The agent's turn was interrupted.
    pub const AGENT_INTERRUPTED: &str = "AgentInterrupted";
    /// The turn never started.
    pub const TURN_NEVER_STARTED: &str = "TurnNeverStarted";
    /// The executor's session stopped.
    pub const SESSION_STOPPED: &str = "SessionStopped";
    /// Nothing moved for longer than the stall timeout (also `Armed=False` while stalled).
    pub const STALLED: &str = "Stalled";
    /// The turn ended; waiting for the push to show up.
    pub const AWAITING_PUSH: &str = "AwaitingPush";
    /// The executor does not show the thread (yet).
    pub const EXECUTOR_UNKNOWN: &str = "ExecutorUnknown";
    /// The fix-forward attempts or time are spent.
    pub const FIX_FORWARD_BUDGET_EXHAUSTED: &str = "FixForwardBudgetExhausted";

    /// Every AfkRun reason (Argo CD shows each with its phase).
    pub const RUN: [&str; 30] = [
        CONFIG_NOT_FOUND,
        INVALID_SPEC,
        REFERENCE_ERROR,
        DISPATCH_REJECTED,
        FIX_FORWARD_REJECTED,
        EXECUTOR_UNAUTHORIZED,
        WAITING_FOR_ANSWER,
        ANSWERED,
        DELETED,
        SUSPENDED,
        EMERGENCY_STOP,
        PENDING,
        DISPATCHING,
        WORKING,
        VERIFYING,
        FIXING_FORWARD,
        SUCCEEDED,
        CANCELLED,
        TERMINAL,
        NOT_DISPATCHED,
        AGENT_ASKED_FOR_INPUT,
        AGENT_FINISHED_WITHOUT_PUSH,
        AGENT_TURN_FAILED,
        AGENT_INTERRUPTED,
        TURN_NEVER_STARTED,
        SESSION_STOPPED,
        STALLED,
        AWAITING_PUSH,
        EXECUTOR_UNKNOWN,
        FIX_FORWARD_BUDGET_EXHAUSTED,
    ];
}

/// Event reasons the controllers publish (besides condition and run reasons).
pub mod events {
    /// The opening turn started.
    pub const DISPATCHED: &str = "Dispatched";
    /// A corrective turn was sent.
    pub const FIXING_FORWARD: &str = "FixingForward";
    /// A notification channel failed after its bounded retries.
    pub const NOTIFICATION_FAILED: &str = "NotificationFailed";
    /// The `afk.dev/answer` annotation was stale or malformed.
    pub const INVALID_ANSWER: &str = "InvalidAnswer";
    /// T3 rejected an answer for good.
    pub const ANSWER_REJECTED: &str = "AnswerRejected";
}

/// The three condition statuses Kubernetes allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// Not known yet.
    Unknown,
}

impl Status {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }

    /// `True` for `true`, `False` otherwise.
    pub fn from_bool(b: bool) -> Self {
        if b { Status::True } else { Status::False }
    }
}

/// Upsert a condition by type. `lastTransitionTime` moves to `now` only when the status value
/// changes (or the condition is new); reason, message and observedGeneration are always updated.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: Status,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: &Time,
) {
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            if existing.status != status.as_str() {
                existing.last_transition_time = now.clone();
                existing.status = status.as_str().to_string();
            }
            existing.reason = reason.to_string();
            existing.message = message;
            existing.observed_generation = observed_generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_string(),
            status: status.as_str().to_string(),
            reason: reason.to_string(),
            message,
            observed_generation,
            last_transition_time: now.clone(),
        }),
    }
}

/// The conditions of one object as one reconcile writes them: the generation it observed and
/// the time it runs at are fixed, so each write names only what differs.
pub struct Conditions<'a> {
    list: &'a mut Vec<Condition>,
    observed_generation: Option<i64>,
    now: Time,
}

impl<'a> Conditions<'a> {
    /// The conditions in `list`, written for `observed_generation` at `now`.
    pub fn new(list: &'a mut Vec<Condition>, observed_generation: Option<i64>, now: &Time) -> Self {
        Self {
            list,
            observed_generation,
            now: now.clone(),
        }
    }

    /// Upsert one condition (see [`set_condition`]).
    pub fn set(&mut self, type_: &str, status: Status, reason: &str, message: impl Into<String>) {
        set_condition(
            self.list,
            type_,
            status,
            reason,
            message,
            self.observed_generation,
            &self.now,
        );
    }
}

/// The status of a condition type, if present.
pub fn condition_status<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a str> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn new_condition_gets_now() {
        let mut c = vec![];
        set_condition(
            &mut c,
            types::READY,
            Status::True,
            reasons::RECONCILED,
            "ok",
            Some(1),
            &t(10),
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, t(10));
        assert_eq!(c[0].status, "True");
    }

    #[test]
    fn same_status_keeps_transition_time_but_updates_message() {
        let mut c = vec![];
        set_condition(
            &mut c,
            types::READY,
            Status::True,
            reasons::RECONCILED,
            "a",
            Some(1),
            &t(10),
        );
        set_condition(
            &mut c,
            types::READY,
            Status::True,
            reasons::RECONCILED,
            "b",
            Some(2),
            &t(20),
        );
        assert_eq!(c[0].last_transition_time, t(10));
        assert_eq!(c[0].message, "b");
        assert_eq!(c[0].observed_generation, Some(2));
    }

    #[test]
    fn flipped_status_moves_transition_time() {
        let mut c = vec![];
        set_condition(
            &mut c,
            types::ARMED,
            Status::True,
            reasons::ARMED,
            "",
            None,
            &t(10),
        );
        set_condition(
            &mut c,
            types::ARMED,
            Status::False,
            reasons::SUSPENDED,
            "",
            None,
            &t(30),
        );
        assert_eq!(c[0].last_transition_time, t(30));
        assert_eq!(condition_status(&c, types::ARMED), Some("False"));
        assert_eq!(condition_status(&c, types::READY), None);
    }
}
