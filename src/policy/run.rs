//! The run decision table (SPEC §3.1): one total function from what was observed of a run to
//! the next action, the phase and a reason. First matching row wins; unknown or missing executor
//! states never trigger an action. Also the fix-forward budget math and the timers.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::crd::{CiVerdict, Phase};

/// How far T3's clock may run behind ours when deciding whether `latestTurn` is the turn we
/// sent (`requestedAt` is stamped by T3 on receipt).
pub const CLOCK_SKEW_TOLERANCE: Duration = Duration::from_secs(30);

/// T3's `latestTurn.state`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TurnState {
    /// Started and not settled (waiting on approval/input is still running).
    Running,
    /// Ended normally.
    Completed,
    /// Failed.
    Error,
    /// Interrupted.
    Interrupted,
    /// A value this operator does not know.
    Other(String),
}

impl TurnState {
    /// Parse T3's spelling; unknown values are kept, never guessed.
    pub fn parse(s: &str) -> Self {
        match s {
            "running" => TurnState::Running,
            "completed" => TurnState::Completed,
            "error" => TurnState::Error,
            "interrupted" => TurnState::Interrupted,
            other => TurnState::Other(other.to_string()),
        }
    }
}

/// T3's `session.status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionStatus {
    /// In the enum, unused by current servers.
    Idle,
    /// A turn start is being processed.
    Starting,
    /// A turn is active.
    Running,
    /// Alive, no active turn.
    Ready,
    /// The provider reported an interruption.
    Interrupted,
    /// The session exited or was stopped.
    Stopped,
    /// Session or turn failure (also: the turn never started).
    Error,
    /// A value this operator does not know.
    Other(String),
}

impl SessionStatus {
    /// Parse T3's spelling; unknown values are kept, never guessed.
    pub fn parse(s: &str) -> Self {
        match s {
            "idle" => SessionStatus::Idle,
            "starting" => SessionStatus::Starting,
            "running" => SessionStatus::Running,
            "ready" => SessionStatus::Ready,
            "interrupted" => SessionStatus::Interrupted,
            "stopped" => SessionStatus::Stopped,
            "error" => SessionStatus::Error,
            other => SessionStatus::Other(other.to_string()),
        }
    }
}

/// `latestTurn` of the thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnView {
    /// Its state.
    pub state: TurnState,
    /// `requestedAt` (T3's receipt time of the turn start).
    pub requested_at: Option<Timestamp>,
    /// `completedAt`.
    pub completed_at: Option<Timestamp>,
}

/// The thread as `/api/orchestration/shell` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadView {
    /// `latestTurn` (null on a fresh thread).
    pub latest_turn: Option<TurnView>,
    /// `session.status` (null before the first turn start is processed).
    pub session: Option<SessionStatus>,
    /// `session.updatedAt`.
    pub session_updated_at: Option<Timestamp>,
    /// `hasPendingApprovals`.
    pub pending_approval: bool,
    /// `hasPendingUserInput`.
    pub pending_user_input: bool,
}

/// What is known of the thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ThreadObservation {
    /// Nothing was dispatched yet.
    NotDispatched,
    /// The executor could not be asked, or the thread is missing: wait.
    Unknown,
    /// The thread's state.
    Seen(ThreadView),
}

/// Limits from `AfkConfig.spec.budgets`, already parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Budgets {
    /// Corrective turns allowed.
    pub max_attempts: u32,
    /// Time allowed since the first red.
    pub max_duration: Duration,
    /// Working time allowed without a push.
    pub stall_timeout: Duration,
    /// Time a finished turn gets for its push to show up.
    pub pre_escalation_grace: Duration,
    /// Spend cap in USD.
    pub max_cost_usd: f64,
}

/// Everything the decision reads about one run, at one instant.
#[derive(Clone, Debug, PartialEq)]
pub struct RunObservation {
    /// The phase in status.
    pub phase: Phase,
    /// `spec.cancel`.
    pub cancel_requested: bool,
    /// The owning AfkConfig carries the emergency-stop annotation.
    pub emergency_stop: bool,
    /// The owning AfkConfig is suspended.
    pub suspended: bool,
    /// When the latest turn (opening or corrective) was accepted by T3; `None` before dispatch.
    pub last_turn_sent_at: Option<Timestamp>,
    /// The commit the latest corrective turn reacted to (none after the opening turn).
    pub last_turn_commit: Option<String>,
    /// The thread.
    pub thread: ThreadObservation,
    /// The newest commit belonging to the run.
    pub commit: Option<String>,
    /// The folded CI verdict for `commit`.
    pub ci: Option<CiVerdict>,
    /// Corrective turns sent so far.
    pub fix_forward_attempts: u32,
    /// When CI first went red for this run.
    pub first_red_at: Option<Timestamp>,
    /// Cost reported by the executor.
    pub cost_usd: Option<f64>,
    /// The limits.
    pub budgets: Budgets,
    /// Now.
    pub now: Timestamp,
}

/// What to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunAction {
    /// The run is terminal: only missing terminal effects remain.
    Settled,
    /// Send (or re-send) the opening dispatch.
    Dispatch,
    /// Nothing to do until something changes.
    Wait,
    /// Send corrective turn number `attempt` on the same thread.
    SendCorrectiveTurn {
        /// 1-based attempt number.
        attempt: u32,
    },
    /// End the run in a terminal phase, interrupting the turn first when asked.
    Finish {
        /// Interrupt the thread's turn before finishing.
        interrupt: bool,
    },
}

/// The decision: action, the phase to write, and a CamelCase reason with a human message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunDecision {
    /// What to do.
    pub action: RunAction,
    /// The phase after the action.
    pub phase: Phase,
    /// CamelCase reason.
    pub reason: &'static str,
    /// Human-readable detail.
    pub message: String,
}

fn decision(
    action: RunAction,
    phase: Phase,
    reason: &'static str,
    message: impl Into<String>,
) -> RunDecision {
    RunDecision {
        action,
        phase,
        reason,
        message: message.into(),
    }
}

/// Whether the fix-forward budget is spent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BudgetState {
    /// Budget left.
    Remaining {
        /// Corrective turns left.
        attempts_left: u32,
        /// Time left since the first red.
        time_left: Duration,
    },
    /// Spent because attempts ≥ max.
    AttemptsExhausted,
    /// Spent because the time since the first red ≥ max.
    TimeExhausted,
}

/// Fix-forward budget math with strict bounds: attempts ≥ max or elapsed ≥ max is exhausted.
/// Without a first red the whole duration is left. A first red in the future (clock skew)
/// counts as zero elapsed.
pub fn fix_forward_budget(
    attempts: u32,
    first_red_at: Option<Timestamp>,
    now: Timestamp,
    max_attempts: u32,
    max_duration: Duration,
) -> BudgetState {
    if attempts >= max_attempts {
        return BudgetState::AttemptsExhausted;
    }
    let elapsed = first_red_at.map_or(Duration::ZERO, |t| elapsed(t, now));
    if elapsed >= max_duration {
        return BudgetState::TimeExhausted;
    }
    BudgetState::Remaining {
        attempts_left: max_attempts - attempts,
        time_left: max_duration - elapsed,
    }
}

/// Non-negative time from `from` to `now`.
pub fn elapsed(from: Timestamp, now: Timestamp) -> Duration {
    let d: SignedDuration = now.duration_since(from);
    d.try_into().unwrap_or(Duration::ZERO)
}

/// How the latest turn ended, when it has: the reason, the message, and when it finished.
fn finished_turn(obs: &RunObservation) -> Option<(&'static str, &'static str, Option<Timestamp>)> {
    let ThreadObservation::Seen(view) = &obs.thread else {
        return None;
    };
    let sent = obs.last_turn_sent_at?;
    let skew = SignedDuration::try_from(CLOCK_SKEW_TOLERANCE).unwrap_or(SignedDuration::ZERO);
    let ours = |t: &TurnView| {
        t.requested_at
            .is_some_and(|r| r >= sent.checked_sub(skew).unwrap_or(sent))
    };
    let session_busy = matches!(
        view.session,
        Some(SessionStatus::Starting | SessionStatus::Running)
    );
    if let Some(turn) = view.latest_turn.as_ref().filter(|t| ours(t))
        && !session_busy
    {
        let finished_at = turn.completed_at.or(view.session_updated_at);
        match turn.state {
            TurnState::Completed => {
                return Some((
                    "AgentFinishedWithoutPush",
                    "the agent's turn completed without a pushed commit",
                    finished_at,
                ));
            }
            TurnState::Error => return Some(("AgentTurnFailed", "the agent's turn failed", finished_at)),
            TurnState::Interrupted => {
                return Some((
                    "AgentInterrupted",
                    "the agent's turn was interrupted",
                    finished_at,
                ));
            }
            TurnState::Running | TurnState::Other(_) => {}
        }
    }
    let turn_unchanged = view.latest_turn.as_ref().is_none_or(|t| !ours(t));
    match view.session {
        // A turn that never started: the session errors and latestTurn stays as it was.
        Some(SessionStatus::Error) if turn_unchanged => Some((
            "TurnNeverStarted",
            "the executor could not start the agent's turn",
            view.session_updated_at,
        )),
        Some(SessionStatus::Error) => Some((
            "AgentTurnFailed",
            "the agent's session failed",
            view.session_updated_at,
        )),
        Some(SessionStatus::Stopped) => Some((
            "SessionStopped",
            "the agent's session was stopped",
            view.session_updated_at,
        )),
        _ => None,
    }
}

/// The decision table. Total: every observation maps to exactly one decision.
pub fn decide(obs: &RunObservation) -> RunDecision {
    use Phase::*;
    if obs.phase.is_terminal() {
        return decision(RunAction::Settled, obs.phase, "Terminal", "the run is finished");
    }
    let dispatched = obs.last_turn_sent_at.is_some();
    let thread_exists = !matches!(obs.thread, ThreadObservation::NotDispatched);

    // 1. Cancel or emergency stop.
    if obs.emergency_stop {
        return decision(
            RunAction::Finish {
                interrupt: thread_exists,
            },
            Cancelled,
            "EmergencyStop",
            "the emergency stop is engaged",
        );
    }
    if obs.cancel_requested {
        return decision(
            RunAction::Finish {
                interrupt: thread_exists,
            },
            Cancelled,
            "Cancelled",
            "spec.cancel was set",
        );
    }

    // Not dispatched yet: dispatch, unless the loop is suspended (no new dispatch then).
    if !dispatched {
        if obs.suspended {
            return decision(
                RunAction::Wait,
                obs.phase,
                "Suspended",
                "the AfkConfig is suspended; not dispatching",
            );
        }
        return decision(
            RunAction::Dispatch,
            Dispatching,
            "Dispatching",
            "sending the task to the executor",
        );
    }

    if let Some(commit) = &obs.commit {
        let short = &commit[..commit.len().min(7)];
        match obs.ci {
            // 2. Pushed and green through every configured stage.
            Some(CiVerdict::Green) => {
                return decision(
                    RunAction::Finish { interrupt: false },
                    Succeeded,
                    "Succeeded",
                    format!("{short} is green and rolled out"),
                );
            }
            Some(CiVerdict::Red) => return red(obs, commit),
            // 5. Pending.
            Some(CiVerdict::Pending) | None => {
                return decision(
                    RunAction::Wait,
                    Verifying,
                    "Verifying",
                    format!("waiting for CI on {short}"),
                );
            }
        }
    }

    // Not pushed.
    if let ThreadObservation::Seen(view) = &obs.thread
        && (view.pending_approval || view.pending_user_input)
    {
        return decision(
            RunAction::Finish { interrupt: true },
            NeedsHuman,
            "AgentAskedForInput",
            "the agent is waiting for an approval or an answer",
        );
    }
    if let Some((reason, message, finished_at)) = finished_turn(obs) {
        let graced = finished_at.is_some_and(|t| elapsed(t, obs.now) >= obs.budgets.pre_escalation_grace);
        if graced {
            return decision(
                RunAction::Finish { interrupt: false },
                NeedsHuman,
                reason,
                message,
            );
        }
        return decision(
            RunAction::Wait,
            Working,
            "AwaitingPush",
            format!("{message}; waiting for the push to show up"),
        );
    }
    // The stall timer needs a thread we can see: an unreachable executor is waited out.
    if let (Some(sent), ThreadObservation::Seen(_)) = (obs.last_turn_sent_at, &obs.thread)
        && elapsed(sent, obs.now) >= obs.budgets.stall_timeout
    {
        return decision(
            RunAction::Finish { interrupt: true },
            NeedsHuman,
            "Stalled",
            "the agent worked past the stall timeout without pushing",
        );
    }
    if over_cost(obs) {
        return decision(
            RunAction::Finish { interrupt: true },
            Frozen,
            "BudgetExhausted",
            "the run's cost reached maxBudgetUsd",
        );
    }
    decision(RunAction::Wait, Working, "Working", "the agent is working")
}

fn over_cost(obs: &RunObservation) -> bool {
    obs.cost_usd.is_some_and(|c| c >= obs.budgets.max_cost_usd)
}

/// Rows 3–4 (and the cost cap) for a pushed commit with a red verdict.
fn red(obs: &RunObservation, commit: &str) -> RunDecision {
    use Phase::*;
    let short = &commit[..commit.len().min(7)];
    // The clock of the time budget starts at the first red seen.
    let first_red = obs.first_red_at.or(Some(obs.now));
    match fix_forward_budget(
        obs.fix_forward_attempts,
        first_red,
        obs.now,
        obs.budgets.max_attempts,
        obs.budgets.max_duration,
    ) {
        BudgetState::AttemptsExhausted => {
            return decision(
                RunAction::Finish { interrupt: false },
                Frozen,
                "FixForwardBudgetExhausted",
                format!(
                    "{short} is red after {} fix-forward attempts",
                    obs.fix_forward_attempts
                ),
            );
        }
        BudgetState::TimeExhausted => {
            return decision(
                RunAction::Finish { interrupt: false },
                Frozen,
                "FixForwardBudgetExhausted",
                format!("{short} is red and the fix-forward time budget is spent"),
            );
        }
        BudgetState::Remaining { .. } => {}
    }
    // Spending more on a corrective turn would pass the cost cap: freeze instead.
    if over_cost(obs) {
        return decision(
            RunAction::Finish { interrupt: false },
            Frozen,
            "BudgetExhausted",
            "the run's cost reached maxBudgetUsd",
        );
    }
    if obs.suspended {
        return decision(
            RunAction::Wait,
            Verifying,
            "Suspended",
            format!("{short} is red; no fix-forward while suspended"),
        );
    }
    // A corrective turn for this very commit is still being worked on (or just finished and its
    // push may not be visible yet): wait for it rather than sending another.
    if obs.last_turn_commit.as_deref() == Some(commit) {
        match finished_turn(obs) {
            None => {
                return decision(
                    RunAction::Wait,
                    FixingForward,
                    "FixingForward",
                    format!("the agent is fixing {short}"),
                );
            }
            Some((_, _, finished_at)) => {
                let graced =
                    finished_at.is_some_and(|t| elapsed(t, obs.now) >= obs.budgets.pre_escalation_grace);
                if !graced {
                    return decision(
                        RunAction::Wait,
                        FixingForward,
                        "AwaitingPush",
                        format!("waiting for a fix of {short} to show up"),
                    );
                }
            }
        }
    }
    let attempt = obs.fix_forward_attempts + 1;
    decision(
        RunAction::SendCorrectiveTurn { attempt },
        FixingForward,
        "FixingForward",
        format!(
            "{short} is red; sending fix-forward attempt {attempt} of {}",
            obs.budgets.max_attempts
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SHA: &str = "abc1234def5678abc1234def5678abc1234def56";

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn budgets() -> Budgets {
        Budgets {
            max_attempts: 5,
            max_duration: Duration::from_secs(3600),
            stall_timeout: Duration::from_secs(3 * 3600),
            pre_escalation_grace: Duration::from_secs(120),
            max_cost_usd: 100.0,
        }
    }

    fn running_view() -> ThreadView {
        ThreadView {
            latest_turn: Some(TurnView {
                state: TurnState::Running,
                requested_at: Some(t(1)),
                completed_at: None,
            }),
            session: Some(SessionStatus::Running),
            session_updated_at: Some(t(1)),
            pending_approval: false,
            pending_user_input: false,
        }
    }

    /// A dispatched run, agent working, at t=600.
    fn working() -> RunObservation {
        RunObservation {
            phase: Phase::Working,
            cancel_requested: false,
            emergency_stop: false,
            suspended: false,
            last_turn_sent_at: Some(t(0)),
            last_turn_commit: None,
            thread: ThreadObservation::Seen(running_view()),
            commit: None,
            ci: None,
            fix_forward_attempts: 0,
            first_red_at: None,
            cost_usd: None,
            budgets: budgets(),
            now: t(600),
        }
    }

    fn pushed(ci: CiVerdict) -> RunObservation {
        RunObservation {
            phase: Phase::Verifying,
            commit: Some(SHA.into()),
            ci: Some(ci),
            ..working()
        }
    }

    fn finished_view(state: TurnState, completed: i64) -> ThreadObservation {
        ThreadObservation::Seen(ThreadView {
            latest_turn: Some(TurnView {
                state,
                requested_at: Some(t(1)),
                completed_at: Some(t(completed)),
            }),
            session: Some(SessionStatus::Ready),
            session_updated_at: Some(t(completed)),
            pending_approval: false,
            pending_user_input: false,
        })
    }

    fn row(obs: &RunObservation) -> (RunAction, Phase, &'static str) {
        let d = decide(obs);
        (d.action, d.phase, d.reason)
    }

    #[test]
    fn terminal_runs_are_settled() {
        for phase in [
            Phase::Succeeded,
            Phase::NeedsHuman,
            Phase::Frozen,
            Phase::Cancelled,
            Phase::Failed,
        ] {
            let obs = RunObservation {
                phase,
                cancel_requested: true,
                ..working()
            };
            assert_eq!(row(&obs).0, RunAction::Settled);
        }
    }

    #[test]
    fn cancel_and_emergency_stop_win() {
        let obs = RunObservation {
            cancel_requested: true,
            ..pushed(CiVerdict::Green)
        };
        assert_eq!(
            row(&obs),
            (
                RunAction::Finish { interrupt: true },
                Phase::Cancelled,
                "Cancelled"
            )
        );
        let obs = RunObservation {
            emergency_stop: true,
            cancel_requested: true,
            ..working()
        };
        assert_eq!(
            row(&obs),
            (
                RunAction::Finish { interrupt: true },
                Phase::Cancelled,
                "EmergencyStop"
            )
        );
        let never = RunObservation {
            cancel_requested: true,
            thread: ThreadObservation::NotDispatched,
            last_turn_sent_at: None,
            phase: Phase::Pending,
            ..working()
        };
        assert_eq!(
            row(&never).0,
            RunAction::Finish { interrupt: false },
            "nothing to interrupt"
        );
    }

    #[test]
    fn pending_runs_dispatch_unless_suspended() {
        let obs = RunObservation {
            phase: Phase::Pending,
            last_turn_sent_at: None,
            thread: ThreadObservation::NotDispatched,
            ..working()
        };
        assert_eq!(
            row(&obs),
            (RunAction::Dispatch, Phase::Dispatching, "Dispatching")
        );
        let obs = RunObservation {
            suspended: true,
            ..obs
        };
        assert_eq!(row(&obs), (RunAction::Wait, Phase::Pending, "Suspended"));
    }

    #[test]
    fn green_succeeds_and_pending_waits() {
        assert_eq!(
            row(&pushed(CiVerdict::Green)),
            (
                RunAction::Finish { interrupt: false },
                Phase::Succeeded,
                "Succeeded"
            )
        );
        assert_eq!(
            row(&pushed(CiVerdict::Pending)),
            (RunAction::Wait, Phase::Verifying, "Verifying")
        );
        let unknown_ci = RunObservation {
            ci: None,
            ..pushed(CiVerdict::Pending)
        };
        assert_eq!(row(&unknown_ci).1, Phase::Verifying);
    }

    #[test]
    fn red_with_budget_sends_a_corrective_turn() {
        let obs = RunObservation {
            first_red_at: Some(t(500)),
            ..pushed(CiVerdict::Red)
        };
        assert_eq!(
            row(&obs),
            (
                RunAction::SendCorrectiveTurn { attempt: 1 },
                Phase::FixingForward,
                "FixingForward"
            )
        );
        let obs = RunObservation {
            fix_forward_attempts: 4,
            ..obs
        };
        assert_eq!(row(&obs).0, RunAction::SendCorrectiveTurn { attempt: 5 });
    }

    #[test]
    fn red_past_the_budget_freezes() {
        let by_attempts = RunObservation {
            fix_forward_attempts: 5,
            first_red_at: Some(t(500)),
            ..pushed(CiVerdict::Red)
        };
        assert_eq!(
            row(&by_attempts),
            (
                RunAction::Finish { interrupt: false },
                Phase::Frozen,
                "FixForwardBudgetExhausted"
            )
        );
        let by_time = RunObservation {
            first_red_at: Some(t(600 - 3600)),
            ..pushed(CiVerdict::Red)
        };
        assert_eq!(
            row(&by_time).1,
            Phase::Frozen,
            "exactly the max duration is exhausted"
        );
        let just_inside = RunObservation {
            first_red_at: Some(t(600 - 3599)),
            ..pushed(CiVerdict::Red)
        };
        assert_eq!(row(&just_inside).1, Phase::FixingForward);
    }

    #[test]
    fn red_while_suspended_waits_and_cost_cap_freezes() {
        let obs = RunObservation {
            suspended: true,
            first_red_at: Some(t(500)),
            ..pushed(CiVerdict::Red)
        };
        assert_eq!(row(&obs), (RunAction::Wait, Phase::Verifying, "Suspended"));
        let obs = RunObservation {
            cost_usd: Some(100.0),
            first_red_at: Some(t(500)),
            ..pushed(CiVerdict::Red)
        };
        assert_eq!(
            row(&obs),
            (
                RunAction::Finish { interrupt: false },
                Phase::Frozen,
                "BudgetExhausted"
            )
        );
    }

    #[test]
    fn no_second_corrective_turn_while_the_first_is_worked_on() {
        let base = RunObservation {
            fix_forward_attempts: 1,
            first_red_at: Some(t(100)),
            last_turn_commit: Some(SHA.into()),
            last_turn_sent_at: Some(t(200)),
            ..pushed(CiVerdict::Red)
        };
        let running = RunObservation {
            thread: ThreadObservation::Seen(ThreadView {
                latest_turn: Some(TurnView {
                    state: TurnState::Running,
                    requested_at: Some(t(201)),
                    completed_at: None,
                }),
                ..running_view()
            }),
            ..base.clone()
        };
        assert_eq!(
            row(&running),
            (RunAction::Wait, Phase::FixingForward, "FixingForward")
        );
        let finished_recently = RunObservation {
            thread: ThreadObservation::Seen(ThreadView {
                latest_turn: Some(TurnView {
                    state: TurnState::Completed,
                    requested_at: Some(t(201)),
                    completed_at: Some(t(550)),
                }),
                session: Some(SessionStatus::Ready),
                ..running_view()
            }),
            ..base.clone()
        };
        assert_eq!(
            row(&finished_recently),
            (RunAction::Wait, Phase::FixingForward, "AwaitingPush")
        );
        let finished_long_ago = RunObservation {
            now: t(700),
            ..finished_recently
        };
        assert_eq!(
            row(&finished_long_ago).0,
            RunAction::SendCorrectiveTurn { attempt: 2 }
        );
    }

    #[test]
    fn agent_asking_for_input_needs_a_human() {
        for (approval, input) in [(true, false), (false, true)] {
            let obs = RunObservation {
                thread: ThreadObservation::Seen(ThreadView {
                    pending_approval: approval,
                    pending_user_input: input,
                    ..running_view()
                }),
                ..working()
            };
            assert_eq!(
                row(&obs),
                (
                    RunAction::Finish { interrupt: true },
                    Phase::NeedsHuman,
                    "AgentAskedForInput"
                )
            );
        }
    }

    #[test]
    fn finished_turn_without_push_waits_for_the_grace_then_needs_a_human() {
        for (state, reason) in [
            (TurnState::Completed, "AgentFinishedWithoutPush"),
            (TurnState::Error, "AgentTurnFailed"),
            (TurnState::Interrupted, "AgentInterrupted"),
        ] {
            let within = RunObservation {
                thread: finished_view(state.clone(), 500),
                ..working()
            };
            assert_eq!(
                row(&within),
                (RunAction::Wait, Phase::Working, "AwaitingPush"),
                "{reason} within grace"
            );
            let after = RunObservation {
                thread: finished_view(state, 480),
                ..working()
            };
            assert_eq!(
                row(&after),
                (RunAction::Finish { interrupt: false }, Phase::NeedsHuman, reason)
            );
        }
    }

    #[test]
    fn a_turn_that_never_started_is_a_failed_turn() {
        let view = ThreadView {
            latest_turn: None,
            session: Some(SessionStatus::Error),
            session_updated_at: Some(t(5)),
            pending_approval: false,
            pending_user_input: false,
        };
        let obs = RunObservation {
            thread: ThreadObservation::Seen(view.clone()),
            ..working()
        };
        assert_eq!(
            row(&obs),
            (
                RunAction::Finish { interrupt: false },
                Phase::NeedsHuman,
                "TurnNeverStarted"
            )
        );
        // An older turn still shown as latest counts as unchanged.
        let old_turn = ThreadView {
            latest_turn: Some(TurnView {
                state: TurnState::Completed,
                requested_at: Some(t(-10_000)),
                completed_at: Some(t(-9_000)),
            }),
            ..view
        };
        let obs = RunObservation {
            thread: ThreadObservation::Seen(old_turn),
            ..working()
        };
        assert_eq!(row(&obs).2, "TurnNeverStarted");
    }

    #[test]
    fn a_finished_turn_that_is_not_ours_does_not_count() {
        let obs = RunObservation {
            thread: ThreadObservation::Seen(ThreadView {
                latest_turn: Some(TurnView {
                    state: TurnState::Completed,
                    requested_at: Some(t(-10_000)),
                    completed_at: Some(t(-9_000)),
                }),
                session: Some(SessionStatus::Starting),
                ..running_view()
            }),
            ..working()
        };
        assert_eq!(row(&obs), (RunAction::Wait, Phase::Working, "Working"));
    }

    #[test]
    fn session_busy_means_not_finished() {
        let obs = RunObservation {
            thread: ThreadObservation::Seen(ThreadView {
                latest_turn: Some(TurnView {
                    state: TurnState::Completed,
                    requested_at: Some(t(1)),
                    completed_at: Some(t(2)),
                }),
                session: Some(SessionStatus::Running),
                ..running_view()
            }),
            ..working()
        };
        assert_eq!(row(&obs).2, "Working");
    }

    #[test]
    fn stalls_are_interrupted() {
        let obs = RunObservation {
            now: t(3 * 3600),
            ..working()
        };
        assert_eq!(
            row(&obs),
            (
                RunAction::Finish { interrupt: true },
                Phase::NeedsHuman,
                "Stalled"
            )
        );
        let unreachable = RunObservation {
            thread: ThreadObservation::Unknown,
            ..obs
        };
        assert_eq!(
            row(&unreachable).0,
            RunAction::Wait,
            "unknown executor state never triggers an action"
        );
    }

    #[test]
    fn cost_cap_freezes_an_unpushed_run() {
        let obs = RunObservation {
            cost_usd: Some(150.0),
            ..working()
        };
        assert_eq!(
            row(&obs),
            (
                RunAction::Finish { interrupt: true },
                Phase::Frozen,
                "BudgetExhausted"
            )
        );
    }

    #[test]
    fn unknown_states_wait() {
        let obs = RunObservation {
            thread: ThreadObservation::Seen(ThreadView {
                latest_turn: Some(TurnView {
                    state: TurnState::parse("recovering"),
                    requested_at: Some(t(1)),
                    completed_at: None,
                }),
                session: Some(SessionStatus::parse("recovering")),
                ..running_view()
            }),
            ..working()
        };
        assert_eq!(row(&obs), (RunAction::Wait, Phase::Working, "Working"));
        assert_eq!(
            row(&RunObservation {
                thread: ThreadObservation::Unknown,
                ..working()
            })
            .0,
            RunAction::Wait
        );
    }

    #[test]
    fn budget_math_bounds() {
        let d = Duration::from_secs(60);
        assert_eq!(
            fix_forward_budget(5, None, t(0), 5, d),
            BudgetState::AttemptsExhausted
        );
        assert_eq!(
            fix_forward_budget(0, Some(t(0)), t(60), 5, d),
            BudgetState::TimeExhausted
        );
        assert_eq!(
            fix_forward_budget(2, Some(t(0)), t(59), 5, d),
            BudgetState::Remaining {
                attempts_left: 3,
                time_left: Duration::from_secs(1)
            }
        );
        assert_eq!(
            fix_forward_budget(0, Some(t(100)), t(0), 5, d),
            BudgetState::Remaining {
                attempts_left: 5,
                time_left: d
            },
            "a first red in the future counts as no time spent"
        );
    }

    fn arb_phase() -> impl Strategy<Value = Phase> {
        prop_oneof![
            Just(Phase::Pending),
            Just(Phase::Dispatching),
            Just(Phase::Working),
            Just(Phase::Verifying),
            Just(Phase::FixingForward),
            Just(Phase::Succeeded),
            Just(Phase::NeedsHuman),
            Just(Phase::Frozen),
            Just(Phase::Cancelled),
            Just(Phase::Failed),
        ]
    }

    fn arb_thread() -> impl Strategy<Value = ThreadObservation> {
        let turn = proptest::option::of(
            (
                0usize..5,
                proptest::option::of(-5000i64..5000),
                proptest::option::of(-5000i64..5000),
            )
                .prop_map(|(s, r, c)| TurnView {
                    state: [
                        TurnState::Running,
                        TurnState::Completed,
                        TurnState::Error,
                        TurnState::Interrupted,
                        TurnState::Other("x".into()),
                    ][s]
                        .clone(),
                    requested_at: r.map(t),
                    completed_at: c.map(t),
                }),
        );
        let session = proptest::option::of((0usize..8).prop_map(|s| {
            [
                "idle",
                "starting",
                "running",
                "ready",
                "interrupted",
                "stopped",
                "error",
                "weird",
            ]
            .map(SessionStatus::parse)[s]
                .clone()
        }));
        prop_oneof![
            Just(ThreadObservation::NotDispatched),
            Just(ThreadObservation::Unknown),
            (
                turn,
                session,
                proptest::option::of(-5000i64..5000),
                any::<bool>(),
                any::<bool>()
            )
                .prop_map(|(latest_turn, session, u, a, i)| {
                    ThreadObservation::Seen(ThreadView {
                        latest_turn,
                        session,
                        session_updated_at: u.map(t),
                        pending_approval: a,
                        pending_user_input: i,
                    })
                }),
        ]
    }

    proptest! {
        /// Total: every observation gets a decision, terminal phases stay put, a finish always
        /// lands in a terminal phase, and a non-finish never does.
        #[test]
        fn the_table_is_total_and_consistent(
            phase in arb_phase(), cancel in any::<bool>(), stop in any::<bool>(), suspended in any::<bool>(),
            sent in proptest::option::of(-20_000i64..1000), thread in arb_thread(),
            commit in proptest::option::of(Just(SHA.to_string())),
            ci in proptest::option::of(prop_oneof![Just(CiVerdict::Pending), Just(CiVerdict::Green), Just(CiVerdict::Red)]),
            attempts in 0u32..8, first_red in proptest::option::of(-10_000i64..1000), cost in proptest::option::of(0f64..200.0),
            now in -1000i64..20_000,
        ) {
            let obs = RunObservation {
                phase, cancel_requested: cancel, emergency_stop: stop, suspended,
                last_turn_sent_at: sent.map(t), last_turn_commit: None, thread, commit, ci,
                fix_forward_attempts: attempts, first_red_at: first_red.map(t), cost_usd: cost,
                budgets: budgets(), now: t(now),
            };
            let d = decide(&obs);
            if phase.is_terminal() {
                prop_assert_eq!(d.action, RunAction::Settled);
                prop_assert_eq!(d.phase, phase);
            } else {
                match d.action {
                    RunAction::Finish { .. } => prop_assert!(d.phase.is_terminal()),
                    RunAction::Settled => prop_assert!(false, "settled for a live run"),
                    RunAction::SendCorrectiveTurn { attempt } => {
                        prop_assert!(attempt <= obs.budgets.max_attempts);
                        prop_assert!(!suspended && !cancel && !stop);
                        prop_assert!(!d.phase.is_terminal());
                    }
                    RunAction::Dispatch => prop_assert!(sent.is_none() && !suspended),
                    RunAction::Wait => prop_assert!(!d.phase.is_terminal()),
                }
                if cancel || stop {
                    prop_assert_eq!(d.phase, Phase::Cancelled);
                }
            }
            prop_assert!(!d.reason.is_empty());
        }
    }
}
