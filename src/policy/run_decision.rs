//! The run decision table (SPEC §3.1): one total function from what was observed of a run to
//! the next action, the phase and a reason. First matching row wins; unknown or missing executor
//! states never trigger an action. Also the fix-forward budget math and the timers.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::crd::{CiVerdict, Phase, condition::reasons};

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
    /// T3's turn id (`None` when T3 did not say).
    pub turn_id: Option<String>,
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
    /// How long a human may take to answer the agent.
    pub answer_timeout: Duration,
}

/// A question of the agent recorded in status (`WaitingForHuman`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuestionState {
    /// When the run started waiting.
    pub asked_at: Timestamp,
    /// A human's answer for this very request is recorded and not sent yet.
    pub answer_ready: bool,
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
    /// The turn that was latest when the latest turn was sent: it is never the one we wait for.
    pub previous_turn_id: Option<String>,
    /// The agent's recorded question, while the run waits for a human.
    pub question: Option<QuestionState>,
    /// When the latest answer reached the agent: the stall timer restarts there.
    pub resumed_at: Option<Timestamp>,
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
    /// Read the pending request from the thread, record it as `status.question` and ring
    /// `needs-answer` once.
    AskHuman,
    /// Send the recorded answer (`thread.approval.respond` / `thread.user-input.respond`).
    SendAnswer,
    /// The request is no longer pending in T3 (answered elsewhere): drop the question.
    ForgetQuestion,
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
        let previous = t.turn_id.is_some() && t.turn_id == obs.previous_turn_id;
        !previous
            && t.requested_at
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
                    reasons::AGENT_FINISHED_WITHOUT_PUSH,
                    "the agent's turn completed without a pushed commit",
                    finished_at,
                ));
            }
            TurnState::Error => {
                return Some((reasons::AGENT_TURN_FAILED, "the agent's turn failed", finished_at));
            }
            TurnState::Interrupted => {
                return Some((
                    reasons::AGENT_INTERRUPTED,
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
            reasons::TURN_NEVER_STARTED,
            "the executor could not start the agent's turn",
            view.session_updated_at,
        )),
        Some(SessionStatus::Error) => Some((
            reasons::AGENT_TURN_FAILED,
            "the agent's session failed",
            view.session_updated_at,
        )),
        Some(SessionStatus::Stopped) => Some((
            reasons::SESSION_STOPPED,
            "the agent's session was stopped",
            view.session_updated_at,
        )),
        _ => None,
    }
}

/// Where the latest turn (opening or corrective) stands, as far as the decision needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum TurnProgress {
    /// The executor could not be asked: nothing may be judged on its account.
    Unknown,
    /// The turn runs (or T3 has not shown it yet), since `sent`.
    Running {
        /// When T3 accepted the turn start.
        sent: Timestamp,
    },
    /// The turn ended, but whatever it pushed may not be visible yet (within
    /// `preEscalationGrace`, and nothing new was pushed since it was sent).
    AwaitingPush {
        /// How it ended, for the message.
        message: &'static str,
    },
    /// The turn ended and its outcome is visible: judge it.
    Settled {
        /// CamelCase reason of the ending (for a run that pushed nothing).
        reason: &'static str,
        /// Human detail.
        message: &'static str,
    },
}

/// The latest turn's progress. A turn counts as running until T3 shows it finished; a finished
/// turn counts as awaiting its push for `preEscalationGrace` unless a commit newer than the one it
/// reacted to is already visible.
fn turn_progress(obs: &RunObservation) -> TurnProgress {
    let Some(sent) = obs.last_turn_sent_at else {
        return TurnProgress::Settled {
            reason: reasons::NOT_DISPATCHED,
            message: "nothing was dispatched",
        };
    };
    if !matches!(obs.thread, ThreadObservation::Seen(_)) {
        return TurnProgress::Unknown;
    }
    let Some((reason, message, finished_at)) = finished_turn(obs) else {
        return TurnProgress::Running { sent };
    };
    let pushed_since_sent = obs.commit.is_some() && obs.commit != obs.last_turn_commit;
    let graced = finished_at.is_some_and(|t| elapsed(t, obs.now) >= obs.budgets.pre_escalation_grace);
    if !pushed_since_sent && !graced {
        return TurnProgress::AwaitingPush { message };
    }
    TurnProgress::Settled { reason, message }
}

/// The decision table (SPEC §3.1). Total: every observation maps to exactly one decision, and
/// the rows are tried in the specification's order — first match wins.
pub fn decide(obs: &RunObservation) -> RunDecision {
    use Phase::*;
    if obs.phase.is_terminal() {
        return decision(
            RunAction::Settled,
            obs.phase,
            reasons::TERMINAL,
            "the run is finished",
        );
    }
    let dispatched = obs.last_turn_sent_at.is_some();
    let thread_exists = !matches!(obs.thread, ThreadObservation::NotDispatched);

    // Row 1: cancel or emergency stop.
    if obs.emergency_stop {
        return decision(
            RunAction::Finish {
                interrupt: thread_exists,
            },
            Cancelled,
            reasons::EMERGENCY_STOP,
            "the emergency stop is engaged",
        );
    }
    if obs.cancel_requested {
        return decision(
            RunAction::Finish {
                interrupt: thread_exists,
            },
            Cancelled,
            reasons::CANCELLED,
            "spec.cancel was set",
        );
    }

    // Not dispatched yet: dispatch, unless the loop is suspended (no new dispatch then).
    if !dispatched {
        if obs.suspended {
            return decision(
                RunAction::Wait,
                obs.phase,
                reasons::SUSPENDED,
                "the AfkConfig is suspended; waiting to dispatch until it is armed",
            );
        }
        return decision(
            RunAction::Dispatch,
            Dispatching,
            reasons::DISPATCHING,
            "sending the task to the executor",
        );
    }

    let progress = turn_progress(obs);
    let short = obs.commit.as_deref().map(|c| &c[..c.len().min(7)]);

    // Row 2: pushed and green through every configured stage (a turn still running is
    // interrupted: the work is done).
    if let (Some(short), Some(CiVerdict::Green)) = (short, obs.ci) {
        return decision(
            RunAction::Finish {
                interrupt: matches!(progress, TurnProgress::Running { .. }),
            },
            Succeeded,
            reasons::SUCCEEDED,
            format!("{short} is green and rolled out"),
        );
    }

    // Rows 3–5: the agent waits on an approval or an answer; a human answers (same thread), or
    // nobody does within answerTimeout.
    let pending =
        matches!(&obs.thread, ThreadObservation::Seen(v) if v.pending_approval || v.pending_user_input);
    if let Some(q) = &obs.question {
        if q.answer_ready {
            return decision(
                RunAction::SendAnswer,
                Working,
                reasons::ANSWERED,
                "sending the human's answer to the agent",
            );
        }
        if elapsed(q.asked_at, obs.now) >= obs.budgets.answer_timeout {
            return decision(
                RunAction::Finish { interrupt: true },
                NeedsHuman,
                reasons::AGENT_ASKED_FOR_INPUT,
                "nobody answered the agent within answerTimeout",
            );
        }
        if matches!(obs.thread, ThreadObservation::Seen(_)) && !pending {
            return decision(
                RunAction::ForgetQuestion,
                Working,
                reasons::WORKING,
                "the agent's request was answered in T3; the agent is working",
            );
        }
        return decision(
            RunAction::Wait,
            WaitingForHuman,
            reasons::WAITING_FOR_ANSWER,
            "waiting for a human to answer the agent (status.question)",
        );
    }
    if pending {
        return decision(
            RunAction::AskHuman,
            WaitingForHuman,
            reasons::WAITING_FOR_ANSWER,
            "the agent waits on an approval or an answer",
        );
    }

    // Rows 4–5: a turn is running. Never send a turn into it (T3 steers a running turn) and
    // never judge budgets while it runs: whatever it pushes is judged once it ends.
    let corrective = obs.last_turn_commit.is_some();
    let (waiting_phase, waiting_reason) = match (corrective, short, obs.ci) {
        (true, _, _) => (FixingForward, reasons::FIXING_FORWARD),
        (false, Some(_), _) => (Verifying, reasons::VERIFYING),
        (false, None, _) => (Working, reasons::WORKING),
    };
    match progress {
        TurnProgress::Running { sent } => {
            let since = obs.resumed_at.map_or(sent, |r| r.max(sent));
            if elapsed(since, obs.now) >= obs.budgets.stall_timeout {
                return decision(
                    RunAction::Finish { interrupt: true },
                    NeedsHuman,
                    reasons::STALLED,
                    "the agent's turn ran past the stall timeout",
                );
            }
            let message = match (short, obs.ci) {
                (Some(short), Some(CiVerdict::Red)) => {
                    format!("{short} is red; waiting for the agent's turn to end before judging it")
                }
                (Some(short), _) => format!("waiting for CI on {short} while the agent works"),
                (None, _) if corrective => "the agent is fixing forward".to_string(),
                (None, _) => "the agent is working".to_string(),
            };
            return decision(RunAction::Wait, waiting_phase, waiting_reason, message);
        }
        TurnProgress::AwaitingPush { message } => {
            return decision(
                RunAction::Wait,
                waiting_phase,
                reasons::AWAITING_PUSH,
                format!("{message}; waiting for its push to show up"),
            );
        }
        TurnProgress::Unknown => {
            return decision(
                RunAction::Wait,
                obs.phase,
                reasons::EXECUTOR_UNKNOWN,
                "the executor's view of the thread is not available; waiting",
            );
        }
        TurnProgress::Settled { .. } => {}
    }

    if let Some(commit) = &obs.commit {
        let short = &commit[..commit.len().min(7)];
        return match obs.ci {
            // Rows 6–7.
            Some(CiVerdict::Red) => red(obs, commit),
            // Row 8: pending (green was decided by row 2).
            _ => decision(
                RunAction::Wait,
                Verifying,
                reasons::VERIFYING,
                format!("waiting for CI on {short}"),
            ),
        };
    }

    // Row 9: not pushed and the turn ended (past the grace).
    if let TurnProgress::Settled { reason, message } = progress {
        return decision(
            RunAction::Finish { interrupt: false },
            NeedsHuman,
            reason,
            message,
        );
    }
    decision(RunAction::Wait, Working, reasons::WORKING, "the agent is working")
}

/// Rows 6–7 for a pushed commit with a red verdict, once no turn runs.
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
        BudgetState::AttemptsExhausted => decision(
            RunAction::Finish { interrupt: false },
            Frozen,
            reasons::FIX_FORWARD_BUDGET_EXHAUSTED,
            format!(
                "{short} is red after {} fix-forward attempts",
                obs.fix_forward_attempts
            ),
        ),
        BudgetState::TimeExhausted => decision(
            RunAction::Finish { interrupt: false },
            Frozen,
            reasons::FIX_FORWARD_BUDGET_EXHAUSTED,
            format!("{short} is red and the fix-forward time budget is spent"),
        ),
        BudgetState::Remaining { .. } if obs.suspended => decision(
            RunAction::Wait,
            Verifying,
            reasons::SUSPENDED,
            format!("{short} is red; no fix-forward while suspended"),
        ),
        BudgetState::Remaining { .. } => {
            let attempt = obs.fix_forward_attempts + 1;
            decision(
                RunAction::SendCorrectiveTurn { attempt },
                FixingForward,
                reasons::FIXING_FORWARD,
                format!(
                    "{short} is red; sending fix-forward attempt {attempt} of {}",
                    obs.budgets.max_attempts
                ),
            )
        }
    }
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
            answer_timeout: Duration::from_secs(24 * 3600),
        }
    }

    fn running_view() -> ThreadView {
        ThreadView {
            latest_turn: Some(TurnView {
                turn_id: None,
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
            previous_turn_id: None,
            question: None,
            resumed_at: None,
            thread: ThreadObservation::Seen(running_view()),
            commit: None,
            ci: None,
            fix_forward_attempts: 0,
            first_red_at: None,
            budgets: budgets(),
            now: t(600),
        }
    }

    /// Pushed, and the opening turn has ended (at t=550, so still within the grace at t=600:
    /// the push is visible, so it is judged at once).
    fn pushed(ci: CiVerdict) -> RunObservation {
        RunObservation {
            phase: Phase::Verifying,
            commit: Some(SHA.into()),
            ci: Some(ci),
            thread: finished_view(TurnState::Completed, 550),
            ..working()
        }
    }

    fn finished_view(state: TurnState, completed: i64) -> ThreadObservation {
        ThreadObservation::Seen(ThreadView {
            latest_turn: Some(TurnView {
                turn_id: None,
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
    fn red_while_suspended_waits() {
        let obs = RunObservation {
            suspended: true,
            first_red_at: Some(t(500)),
            ..pushed(CiVerdict::Red)
        };
        assert_eq!(row(&obs), (RunAction::Wait, Phase::Verifying, "Suspended"));
    }

    #[test]
    fn the_turn_before_is_never_mistaken_for_the_one_just_sent() {
        // Corrective turn sent at t=590; T3 (or a cached shell) still shows the opening turn,
        // completed at t=580 — within the clock-skew tolerance, but it is the turn before.
        let obs = RunObservation {
            fix_forward_attempts: 1,
            first_red_at: Some(t(500)),
            last_turn_commit: Some(SHA.into()),
            last_turn_sent_at: Some(t(590)),
            previous_turn_id: Some("turn-1".into()),
            commit: Some("f00d000".into()),
            thread: ThreadObservation::Seen(ThreadView {
                latest_turn: Some(TurnView {
                    turn_id: Some("turn-1".into()),
                    state: TurnState::Completed,
                    requested_at: Some(t(570)),
                    completed_at: Some(t(580)),
                }),
                session: Some(SessionStatus::Ready),
                ..running_view()
            }),
            ..pushed(CiVerdict::Red)
        };
        assert_eq!(
            row(&obs),
            (RunAction::Wait, Phase::FixingForward, "FixingForward"),
            "no freeze on the strength of the previous turn"
        );
    }

    #[test]
    fn a_running_turn_is_never_judged() {
        // Red with the budget spent, but the agent's (opening) turn still runs: wait for it.
        let obs = RunObservation {
            fix_forward_attempts: 5,
            first_red_at: Some(t(-5000)),
            thread: ThreadObservation::Seen(running_view()),
            ..pushed(CiVerdict::Red)
        };
        assert_eq!(row(&obs), (RunAction::Wait, Phase::Verifying, "Verifying"));
        // Green is decided even while the turn runs, and the turn is interrupted.
        let green = RunObservation {
            thread: ThreadObservation::Seen(running_view()),
            ..pushed(CiVerdict::Green)
        };
        assert_eq!(
            row(&green),
            (
                RunAction::Finish { interrupt: true },
                Phase::Succeeded,
                "Succeeded"
            )
        );
        // T3 not answering: nothing is judged on its account.
        let unknown = RunObservation {
            thread: ThreadObservation::Unknown,
            ..obs
        };
        assert_eq!(row(&unknown).0, RunAction::Wait);
    }

    #[test]
    fn the_last_corrective_turn_is_judged_not_discarded() {
        // Attempt 5 of 5 was sent at t=200 for SHA; it is still running at t=600.
        let base = RunObservation {
            fix_forward_attempts: 5,
            first_red_at: Some(t(100)),
            last_turn_commit: Some(SHA.into()),
            last_turn_sent_at: Some(t(200)),
            thread: ThreadObservation::Seen(ThreadView {
                latest_turn: Some(TurnView {
                    turn_id: None,
                    state: TurnState::Running,
                    requested_at: Some(t(201)),
                    completed_at: None,
                }),
                ..running_view()
            }),
            ..pushed(CiVerdict::Red)
        };
        assert_eq!(
            row(&base),
            (RunAction::Wait, Phase::FixingForward, "FixingForward"),
            "no freeze while the last corrective turn runs"
        );
        // It pushes a fix that goes green: success, not a freeze.
        let fixed = RunObservation {
            commit: Some("f1f1f1f1f1f1f1".into()),
            ci: Some(CiVerdict::Green),
            ..base.clone()
        };
        assert_eq!(row(&fixed).1, Phase::Succeeded);
        // It pushes a fix that is red and the turn ends: now the budget is judged.
        let still_red = RunObservation {
            commit: Some("f1f1f1f1f1f1f1".into()),
            thread: ThreadObservation::Seen(ThreadView {
                latest_turn: Some(TurnView {
                    turn_id: None,
                    state: TurnState::Completed,
                    requested_at: Some(t(201)),
                    completed_at: Some(t(590)),
                }),
                session: Some(SessionStatus::Ready),
                ..running_view()
            }),
            ..base
        };
        assert_eq!(
            row(&still_red),
            (
                RunAction::Finish { interrupt: false },
                Phase::Frozen,
                "FixForwardBudgetExhausted"
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
                    turn_id: None,
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
                    turn_id: None,
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
    fn an_agent_asking_waits_for_a_human_in_the_same_thread() {
        for (approval, input) in [(true, false), (false, true)] {
            let asking = ThreadObservation::Seen(ThreadView {
                pending_approval: approval,
                pending_user_input: input,
                ..running_view()
            });
            let obs = RunObservation {
                thread: asking.clone(),
                ..working()
            };
            assert_eq!(
                row(&obs),
                (RunAction::AskHuman, Phase::WaitingForHuman, "WaitingForAnswer")
            );
            let waiting = RunObservation {
                phase: Phase::WaitingForHuman,
                question: Some(QuestionState {
                    asked_at: t(100),
                    answer_ready: false,
                }),
                ..obs.clone()
            };
            assert_eq!(
                row(&waiting),
                (RunAction::Wait, Phase::WaitingForHuman, "WaitingForAnswer")
            );
            let answered = RunObservation {
                question: Some(QuestionState {
                    asked_at: t(100),
                    answer_ready: true,
                }),
                ..waiting.clone()
            };
            assert_eq!(
                row(&answered),
                (RunAction::SendAnswer, Phase::Working, "Answered")
            );
            let too_late = RunObservation {
                now: t(100 + 24 * 3600),
                ..waiting.clone()
            };
            assert_eq!(
                row(&too_late),
                (
                    RunAction::Finish { interrupt: true },
                    Phase::NeedsHuman,
                    "AgentAskedForInput"
                )
            );
            let elsewhere = RunObservation {
                thread: ThreadObservation::Seen(running_view()),
                ..waiting.clone()
            };
            assert_eq!(row(&elsewhere).0, RunAction::ForgetQuestion);
            let unknown = RunObservation {
                thread: ThreadObservation::Unknown,
                ..waiting
            };
            assert_eq!(row(&unknown).0, RunAction::Wait, "T3 not answering: keep waiting");
        }
    }

    #[test]
    fn the_stall_timer_restarts_when_an_answer_reaches_the_agent() {
        let obs = RunObservation {
            now: t(3 * 3600 + 10),
            resumed_at: Some(t(3 * 3600)),
            ..working()
        };
        assert_eq!(row(&obs), (RunAction::Wait, Phase::Working, "Working"));
        let later = RunObservation {
            now: t(6 * 3600),
            ..obs
        };
        assert_eq!(row(&later).2, "Stalled");
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
                turn_id: None,
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
                    turn_id: None,
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
                    turn_id: None,
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
    fn unknown_states_wait() {
        let obs = RunObservation {
            thread: ThreadObservation::Seen(ThreadView {
                latest_turn: Some(TurnView {
                    turn_id: None,
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
            Just(Phase::WaitingForHuman),
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
                    turn_id: Some(format!("turn-{}", s % 2 + 1)),
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
            attempts in 0u32..8, first_red in proptest::option::of(-10_000i64..1000),
            last_commit in proptest::option::of(prop_oneof![Just(SHA.to_string()), Just("0ther000".to_string())]),
            prev in proptest::option::of(prop_oneof![Just("turn-1".to_string()), Just("turn-2".to_string())]),
            question in proptest::option::of((-100_000i64..1000, any::<bool>())),
            now in -1000i64..20_000,
        ) {
            let obs = RunObservation {
                phase, cancel_requested: cancel, emergency_stop: stop, suspended,
                last_turn_sent_at: sent.map(t), last_turn_commit: last_commit, previous_turn_id: prev,
                question: question.map(|(at, ready)| QuestionState { asked_at: t(at), answer_ready: ready }),
                resumed_at: None, thread, commit, ci,
                fix_forward_attempts: attempts, first_red_at: first_red.map(t),
                budgets: budgets(), now: t(now),
            };
            let d = decide(&obs);
            if phase.is_terminal() {
                prop_assert_eq!(&d.action, &RunAction::Settled);
                prop_assert_eq!(d.phase, phase);
            } else {
                match &d.action {
                    RunAction::Finish { .. } => prop_assert!(d.phase.is_terminal()),
                    RunAction::Settled => prop_assert!(false, "settled for a live run"),
                    RunAction::SendCorrectiveTurn { attempt } => {
                        prop_assert!(*attempt <= obs.budgets.max_attempts);
                        prop_assert!(!suspended && !cancel && !stop);
                        prop_assert!(!d.phase.is_terminal());
                    }
                    RunAction::Dispatch => prop_assert!(sent.is_none() && !suspended),
                    RunAction::Wait => prop_assert!(!d.phase.is_terminal()),
                    RunAction::AskHuman => prop_assert!(d.phase == Phase::WaitingForHuman && obs.question.is_none()),
                    RunAction::SendAnswer => prop_assert!(obs.question.as_ref().is_some_and(|q| q.answer_ready)),
                    RunAction::ForgetQuestion => prop_assert!(obs.question.is_some()),
                }
                if cancel || stop {
                    prop_assert_eq!(d.phase, Phase::Cancelled);
                }
            }
            prop_assert!(!d.reason.is_empty());
            prop_assert!(!d.message.is_empty());
            // A sent turn is always judged after it ends: no corrective turn is sent into a
            // running turn, and no budget freezes a run while a turn runs or its push may still
            // be on its way.
            let judging = matches!(d.action, RunAction::SendCorrectiveTurn { .. })
                || (d.phase == Phase::Frozen && !phase.is_terminal());
            if judging {
                prop_assert!(
                    matches!(turn_progress(&obs), TurnProgress::Settled { .. }),
                    "judged while the turn is {:?}: {:?}", turn_progress(&obs), d
                );
            }
        }
    }
}
