//! CI folding (SPEC §3.5): build → deploy → rollout, first decisive stage wins. The fold is
//! step-wise so the caller queries a stage only when every earlier stage succeeded — a red or
//! pending build means Woodpecker and the Deployment are never asked. Also the pure verdicts of
//! each stage from the facts the adapters gather (check runs, pipelines, Deployment state).

use crate::crd::{CiStatus, CiVerdict, StageName, StageResult, StageStatus};

/// One stage's report: its result and the link worth showing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageReport {
    /// The result.
    pub result: StageResult,
    /// Link to the failing / running job.
    pub url: Option<String>,
}

impl StageReport {
    /// A report without a link.
    pub fn of(result: StageResult) -> Self {
        Self { result, url: None }
    }
}

/// A step-wise fold over the configured stages.
#[derive(Clone, Debug)]
pub struct CiFold {
    stages: Vec<StageName>,
    reports: Vec<StageReport>,
    verdict: Option<CiVerdict>,
}

impl CiFold {
    /// A fold over the configured stages, in SPEC order whatever order they are given in.
    pub fn new(stages: &[StageName]) -> Self {
        let mut stages = stages.to_vec();
        stages.sort();
        stages.dedup();
        let verdict = if stages.is_empty() {
            Some(CiVerdict::Green)
        } else {
            None
        };
        Self {
            stages,
            reports: vec![],
            verdict,
        }
    }

    /// The stage to query next, or `None` when the verdict is known.
    pub fn next_stage(&self) -> Option<StageName> {
        if self.verdict.is_some() {
            None
        } else {
            self.stages.get(self.reports.len()).copied()
        }
    }

    /// Record the report for the stage `next_stage` named. Reports for any other stage are
    /// ignored (the caller asked out of turn).
    pub fn record(&mut self, stage: StageName, report: StageReport) {
        if self.next_stage() != Some(stage) {
            return;
        }
        let result = report.result;
        self.reports.push(report);
        self.verdict = match result {
            StageResult::Failure => Some(CiVerdict::Red),
            StageResult::None | StageResult::Pending => Some(CiVerdict::Pending),
            StageResult::Success if self.reports.len() == self.stages.len() => Some(CiVerdict::Green),
            StageResult::Success => None,
        };
    }

    /// The verdict so far (`Pending` while undecided) and every stage's status; stages never
    /// queried show `None`.
    pub fn finish(&self) -> CiStatus {
        let stages = self
            .stages
            .iter()
            .enumerate()
            .map(|(i, name)| match self.reports.get(i) {
                Some(r) => StageStatus {
                    name: *name,
                    result: r.result,
                    url: r.url.clone(),
                },
                None => StageStatus {
                    name: *name,
                    result: StageResult::None,
                    url: None,
                },
            })
            .collect();
        CiStatus {
            verdict: self.verdict.unwrap_or(CiVerdict::Pending),
            stages,
        }
    }

    /// The first failing stage, if any.
    pub fn failing_stage(&self) -> Option<(StageName, Option<&str>)> {
        self.stages
            .iter()
            .zip(&self.reports)
            .find(|(_, r)| r.result == StageResult::Failure)
            .map(|(n, r)| (*n, r.url.as_deref()))
    }
}

/// Fold with a synchronous query function; `query` is called only for the stages needed.
pub fn fold(stages: &[StageName], mut query: impl FnMut(StageName) -> StageReport) -> CiStatus {
    let mut f = CiFold::new(stages);
    while let Some(stage) = f.next_stage() {
        let report = query(stage);
        f.record(stage, report);
    }
    f.finish()
}

/// A GitHub check run's state, as reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckRunFact {
    /// Check name.
    pub name: String,
    /// `queued`, `in_progress`, `completed`, `waiting`, `requested`, `pending`.
    pub status: String,
    /// For completed runs: `success`, `failure`, `neutral`, `cancelled`, `skipped`,
    /// `timed_out`, `action_required`, `stale`, `startup_failure`.
    pub conclusion: Option<String>,
    /// Link to the run.
    pub url: Option<String>,
}

/// A commit status (the older Statuses API), latest per context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitStatusFact {
    /// Status context.
    pub context: String,
    /// `pending`, `success`, `failure`, `error`.
    pub state: String,
    /// Link.
    pub url: Option<String>,
}

fn check_result(c: &CheckRunFact) -> StageResult {
    if c.status != "completed" {
        return StageResult::Pending;
    }
    match c.conclusion.as_deref() {
        Some("success" | "neutral" | "skipped") => StageResult::Success,
        Some("failure" | "cancelled" | "timed_out" | "action_required" | "stale" | "startup_failure") => {
            StageResult::Failure
        }
        // Unknown conclusions never trigger an action.
        _ => StageResult::Pending,
    }
}

fn status_result(s: &CommitStatusFact) -> StageResult {
    match s.state.as_str() {
        "success" => StageResult::Success,
        "failure" | "error" => StageResult::Failure,
        _ => StageResult::Pending,
    }
}

/// The build stage from check runs and commit statuses. With `required` names only those count
/// and each must be present; without, every reported check counts and none reported means
/// `None` (nothing ran yet). Any failure wins, then any pending.
pub fn build_stage(
    checks: &[CheckRunFact],
    statuses: &[CommitStatusFact],
    required: &[String],
) -> StageReport {
    let mut results: Vec<(StageResult, Option<&str>)> = vec![];
    let wanted = |name: &str| required.is_empty() || required.iter().any(|r| r == name);
    for c in checks.iter().filter(|c| wanted(&c.name)) {
        results.push((check_result(c), c.url.as_deref()));
    }
    for s in statuses.iter().filter(|s| wanted(&s.context)) {
        results.push((status_result(s), s.url.as_deref()));
    }
    let missing_required = required
        .iter()
        .any(|r| !checks.iter().any(|c| &c.name == r) && !statuses.iter().any(|s| &s.context == r));
    combine(&results, missing_required)
}

fn combine(results: &[(StageResult, Option<&str>)], missing: bool) -> StageReport {
    if let Some((_, url)) = results.iter().find(|(r, _)| *r == StageResult::Failure) {
        return StageReport {
            result: StageResult::Failure,
            url: url.map(str::to_string),
        };
    }
    if let Some((_, url)) = results.iter().find(|(r, _)| *r == StageResult::Pending) {
        return StageReport {
            result: StageResult::Pending,
            url: url.map(str::to_string),
        };
    }
    if results.is_empty() {
        return StageReport::of(StageResult::None);
    }
    if missing {
        return StageReport::of(StageResult::Pending);
    }
    StageReport {
        result: StageResult::Success,
        url: results.first().and_then(|(_, u)| u.map(str::to_string)),
    }
}

/// A Woodpecker pipeline for the commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelineFact {
    /// Woodpecker status: `success`, `failure`, `error`, `killed`, `declined`, `pending`,
    /// `running`, `blocked`, `skipped`, …
    pub status: String,
    /// Link.
    pub url: Option<String>,
}

/// The deploy stage from the commit's pipelines: any failure wins, then any pending; none
/// reported means `None`.
pub fn deploy_stage(pipelines: &[PipelineFact]) -> StageReport {
    let results: Vec<(StageResult, Option<&str>)> = pipelines
        .iter()
        .map(|p| {
            let r = match p.status.as_str() {
                "success" | "skipped" => StageResult::Success,
                "failure" | "error" | "killed" | "declined" => StageResult::Failure,
                _ => StageResult::Pending,
            };
            (r, p.url.as_deref())
        })
        .collect();
    combine(&results, false)
}

/// What the rollout checker saw of the Deployment.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RolloutFacts {
    /// The Deployment exists.
    pub exists: bool,
    /// Its pod template carries the commit (image tag or `afk.dev/commit` annotation).
    pub template_has_commit: bool,
    /// `metadata.generation`.
    pub generation: i64,
    /// `status.observedGeneration`.
    pub observed_generation: i64,
    /// `spec.replicas` (default 1).
    pub replicas: i32,
    /// `status.updatedReplicas`.
    pub updated_replicas: i32,
    /// `status.availableReplicas`.
    pub available_replicas: i32,
    /// `status.replicas` (old and new pods).
    pub total_replicas: i32,
    /// The `Progressing` condition has reason `ProgressDeadlineExceeded`.
    pub progress_deadline_exceeded: bool,
    /// A pod of the new template is in CrashLoopBackOff (or similar waiting failure).
    pub crash_looping: bool,
}

/// The rollout stage (SPEC §3.5).
pub fn rollout_stage(f: &RolloutFacts) -> StageReport {
    if !f.exists || !f.template_has_commit {
        // Not deployed yet (the deploy stage may still be applying it).
        return StageReport::of(StageResult::None);
    }
    if f.progress_deadline_exceeded || f.crash_looping {
        return StageReport::of(StageResult::Failure);
    }
    let complete = f.observed_generation >= f.generation
        && f.updated_replicas >= f.replicas
        && f.available_replicas >= f.replicas
        && f.total_replicas <= f.updated_replicas;
    StageReport::of(if complete {
        StageResult::Success
    } else {
        StageResult::Pending
    })
}

/// Whether a pod template carries the commit: an image tag containing the short (7) or full SHA,
/// or the `afk.dev/commit` annotation equal to it (either length).
pub fn template_carries_commit(images: &[&str], commit_annotation: Option<&str>, sha: &str) -> bool {
    let sha = sha.to_ascii_lowercase();
    if sha.len() < 7 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
        return false;
    }
    let short = &sha[..7];
    if let Some(a) = commit_annotation {
        let a = a.trim().to_ascii_lowercase();
        if a.len() >= 7 && (sha.starts_with(&a) || a == sha) {
            return true;
        }
    }
    images.iter().any(|image| {
        // The tag is after the last ':' that follows the last '/' (a registry port is not a tag);
        // a digest (`@sha256:…`) is not a tag.
        let without_digest = image.split('@').next().unwrap_or("");
        let last_segment = without_digest.rsplit('/').next().unwrap_or("");
        last_segment
            .split_once(':')
            .is_some_and(|(_, tag)| tag.to_ascii_lowercase().contains(short))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use StageResult::*;
    use proptest::prelude::*;

    const ALL: [StageName; 3] = [StageName::Build, StageName::Deploy, StageName::Rollout];

    fn fold_results(results: [StageResult; 3]) -> (CiStatus, Vec<StageName>) {
        let mut asked = vec![];
        let status = fold(&ALL, |s| {
            asked.push(s);
            StageReport::of(results[s as usize])
        });
        (status, asked)
    }

    #[test]
    fn first_decisive_stage_wins_and_later_stages_are_not_queried() {
        let (s, asked) = fold_results([Failure, Success, Success]);
        assert_eq!((s.verdict, asked.len()), (CiVerdict::Red, 1));
        assert_eq!(s.stages[1].result, None, "deploy not queried");
        let (s, asked) = fold_results([Pending, Failure, Failure]);
        assert_eq!((s.verdict, asked.len()), (CiVerdict::Pending, 1));
        let (s, asked) = fold_results([None, Success, Success]);
        assert_eq!((s.verdict, asked.len()), (CiVerdict::Pending, 1));
        let (s, asked) = fold_results([Success, Failure, Success]);
        assert_eq!(
            (s.verdict, asked),
            (CiVerdict::Red, vec![StageName::Build, StageName::Deploy])
        );
        let (s, asked) = fold_results([Success, Success, Pending]);
        assert_eq!((s.verdict, asked.len()), (CiVerdict::Pending, 3));
        let (s, _) = fold_results([Success, Success, Success]);
        assert_eq!(s.verdict, CiVerdict::Green);
    }

    #[test]
    fn only_configured_stages_count() {
        let status = fold(&[StageName::Rollout, StageName::Build], |s| {
            assert_ne!(s, StageName::Deploy);
            StageReport::of(Success)
        });
        assert_eq!(status.verdict, CiVerdict::Green);
        assert_eq!(
            status.stages.iter().map(|s| s.name).collect::<Vec<_>>(),
            vec![StageName::Build, StageName::Rollout]
        );
        assert_eq!(fold(&[], |_| unreachable!()).verdict, CiVerdict::Green);
    }

    #[test]
    fn out_of_turn_reports_are_ignored() {
        let mut f = CiFold::new(&ALL);
        f.record(StageName::Rollout, StageReport::of(Failure));
        assert_eq!(f.next_stage(), Some(StageName::Build));
        f.record(
            StageName::Build,
            StageReport {
                result: Failure,
                url: Some("u".into()),
            },
        );
        assert_eq!(f.failing_stage(), Some((StageName::Build, Some("u"))));
        assert_eq!(f.next_stage(), Option::None);
    }

    fn check(name: &str, status: &str, conclusion: Option<&str>) -> CheckRunFact {
        CheckRunFact {
            name: name.into(),
            status: status.into(),
            conclusion: conclusion.map(Into::into),
            url: Some(format!("https://ci/{name}")),
        }
    }

    #[test]
    fn build_stage_rows() {
        assert_eq!(build_stage(&[], &[], &[]).result, None);
        assert_eq!(
            build_stage(&[check("t", "completed", Some("success"))], &[], &[]).result,
            Success
        );
        assert_eq!(
            build_stage(&[check("t", "in_progress", Option::None)], &[], &[]).result,
            Pending
        );
        let red = build_stage(
            &[
                check("a", "in_progress", Option::None),
                check("b", "completed", Some("timed_out")),
            ],
            &[],
            &[],
        );
        assert_eq!((red.result, red.url.as_deref()), (Failure, Some("https://ci/b")));
        assert_eq!(
            build_stage(&[check("t", "completed", Some("brand_new"))], &[], &[]).result,
            Pending,
            "unknown waits"
        );
        let status = CommitStatusFact {
            context: "legacy".into(),
            state: "error".into(),
            url: Option::None,
        };
        assert_eq!(
            build_stage(&[check("t", "completed", Some("success"))], &[status], &[]).result,
            Failure
        );
    }

    #[test]
    fn required_checks_filter_and_must_exist() {
        let required = vec!["test".to_string()];
        let checks = [
            check("lint", "completed", Some("failure")),
            check("test", "completed", Some("success")),
        ];
        assert_eq!(
            build_stage(&checks, &[], &required).result,
            Success,
            "lint is not required"
        );
        assert_eq!(
            build_stage(&checks[..1], &[], &required).result,
            None,
            "required check not reported yet"
        );
        let two = vec!["test".to_string(), "e2e".to_string()];
        assert_eq!(build_stage(&checks, &[], &two).result, Pending, "e2e missing");
    }

    #[test]
    fn deploy_stage_rows() {
        let p = |s: &str| PipelineFact {
            status: s.into(),
            url: Option::None,
        };
        assert_eq!(deploy_stage(&[]).result, None);
        assert_eq!(deploy_stage(&[p("success")]).result, Success);
        assert_eq!(deploy_stage(&[p("success"), p("running")]).result, Pending);
        assert_eq!(deploy_stage(&[p("killed"), p("running")]).result, Failure);
        assert_eq!(deploy_stage(&[p("mystery")]).result, Pending);
    }

    #[test]
    fn rollout_stage_rows() {
        let done = RolloutFacts {
            exists: true,
            template_has_commit: true,
            generation: 3,
            observed_generation: 3,
            replicas: 2,
            updated_replicas: 2,
            available_replicas: 2,
            total_replicas: 2,
            ..Default::default()
        };
        assert_eq!(rollout_stage(&done).result, Success);
        assert_eq!(
            rollout_stage(&RolloutFacts {
                observed_generation: 2,
                ..done.clone()
            })
            .result,
            Pending
        );
        assert_eq!(
            rollout_stage(&RolloutFacts {
                available_replicas: 1,
                ..done.clone()
            })
            .result,
            Pending
        );
        assert_eq!(
            rollout_stage(&RolloutFacts {
                total_replicas: 3,
                ..done.clone()
            })
            .result,
            Pending,
            "old pods remain"
        );
        assert_eq!(
            rollout_stage(&RolloutFacts {
                progress_deadline_exceeded: true,
                ..done.clone()
            })
            .result,
            Failure
        );
        assert_eq!(
            rollout_stage(&RolloutFacts {
                crash_looping: true,
                available_replicas: 0,
                ..done.clone()
            })
            .result,
            Failure
        );
        assert_eq!(
            rollout_stage(&RolloutFacts {
                template_has_commit: false,
                ..done.clone()
            })
            .result,
            None
        );
        assert_eq!(rollout_stage(&RolloutFacts::default()).result, None);
    }

    #[test]
    fn commit_in_template() {
        let sha = "abc1234def5678abc1234def5678abc1234def56";
        assert!(template_carries_commit(
            &["ghcr.io/acme/app:abc1234"],
            Option::None,
            sha
        ));
        assert!(template_carries_commit(
            &["ghcr.io/acme/app:main-abc1234def5678abc1234def5678abc1234def56"],
            Option::None,
            sha
        ));
        assert!(template_carries_commit(
            &["registry:5000/app:sha-abc1234"],
            Option::None,
            sha
        ));
        assert!(
            !template_carries_commit(&["registry:5000/abc1234/app:latest"], Option::None, sha),
            "path, not tag"
        );
        assert!(
            !template_carries_commit(&["app@sha256:abc1234"], Option::None, sha),
            "digest, not tag"
        );
        assert!(template_carries_commit(&["app:latest"], Some("ABC1234DEF"), sha));
        assert!(
            !template_carries_commit(&["app:latest"], Some("abc12"), sha),
            "too short to mean anything"
        );
        assert!(!template_carries_commit(
            &["app:abc1234"],
            Option::None,
            "nothex!"
        ));
    }

    proptest! {
        #[test]
        fn verdict_matches_first_decisive(results in proptest::array::uniform3(0u8..4)) {
            let map = |r: u8| [None, Pending, Success, Failure][r as usize];
            let rs = [map(results[0]), map(results[1]), map(results[2])];
            let (status, asked) = fold_results(rs);
            let first = rs.iter().position(|r| *r != Success);
            let expected = match first.map(|i| rs[i]) {
                Option::None => CiVerdict::Green,
                Some(Failure) => CiVerdict::Red,
                Some(_) => CiVerdict::Pending,
            };
            prop_assert_eq!(status.verdict, expected);
            prop_assert_eq!(asked.len(), first.map_or(3, |i| i + 1));
        }
    }
}
