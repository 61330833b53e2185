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
