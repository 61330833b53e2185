//! The loop's failure paths, in process against the contract fakes: what a user sees when T3
//! refuses the token, a label write fails, the doorbell's delivery is cut by a crash, T3 rejects
//! the dispatch, GitHub is unavailable while gathering gate facts, or a turn stalls.

mod support;

use afk_operator::crd::Phase;
use afk_testkit::{github::GhFault, t3::Fault};
use serde_json::json;
use support::*;

const RUN: &str = "acme-app-42-1";

fn run_field(w: &World, field: &str) -> serde_json::Value {
    w.run_obj(RUN).unwrap()["status"][field].clone()
}

fn events_with_reason(w: &World, reason: &str) -> Vec<serde_json::Value> {
    w.api
        .with_store(|s| s.list("events.k8s.io/v1", "Event", NS))
        .into_iter()
        .filter(|e| e["reason"] == reason)
        .collect()
}

/// A revoked T3 token mid-run: the run ends `Failed` (ExecutorUnauthorized), the issue is handed
/// back, the `failed` bell rings, and the repo is free again (SPEC §3.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_t3_token_fails_the_run_loudly_and_frees_the_repo() {
    let mut w = World::new().await;
    w.label_issue(42, "Do it", "alice");
    w.apply_config(json!({})).await;
    w.start();
    w.wait_phase(RUN, Phase::Working).await;
    w.t3.revoke_token(T3_TOKEN);
    w.wait_phase(RUN, Phase::Failed).await;
    assert_eq!(run_field(&w, "reason"), "ExecutorUnauthorized");
    let message = run_field(&w, "message").as_str().unwrap().to_string();
    assert!(message.contains("t3 auth session issue"), "{message}");
    w.wait_bells(&["acme/app#42 failed"]).await;
    w.wait_labels(42, &["ready-for-human"]).await;
    assert_eq!(
        events_with_reason(&w, "ExecutorUnauthorized")[0]["type"],
        "Warning"
    );
    w.poll_now().await;
    let repos = w.config_obj()["status"]["repos"].clone();
    assert_eq!(
        repos[0]["holder"],
        json!(null),
        "the repo lock is released: {repos}"
    );
}

/// A token that is already bad when the run is created no longer leaves it `Pending` forever.
/// The config itself dispatches nothing while T3 refuses its token, so the run is made by hand
/// (`kubectl apply`, a trusted act), as one would meet a token revoked between poll and dispatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_t3_token_at_dispatch_fails_instead_of_pending_forever() {
    let mut w = World::new().await;
    w.t3.revoke_token(T3_TOKEN);
    w.label_issue(42, "Do it", "alice");
    w.apply_config(json!({})).await;
    let sha256 = afk_operator::policy::naming::snapshot_sha256("Issue 42", "Do it");
    w.api.with_store(|s| {
        s.seed(json!({
            "apiVersion": "afk.dev/v1alpha1", "kind": "AfkRun",
            "metadata": {"name": RUN, "namespace": NS},
            "spec": {"configRef": "team", "repo": REPO, "issue": 42, "attempt": 1, "title": "Issue 42",
                     "taskSnapshot": {"title": "Issue 42", "body": "Do it", "sha256": sha256}}
        }))
    });
    w.start();
    w.wait_phase(RUN, Phase::Failed).await;
    assert_eq!(run_field(&w, "reason"), "ExecutorUnauthorized");
    assert!(w.t3.applied_of("thread.create").is_empty());
    w.wait_bells(&["acme/app#42 failed"]).await;
    w.wait_labels(42, &["ready-for-human"]).await;
}

/// T3 rejecting the dispatch for a business reason (500 `orchestration_dispatch_failed`) is
/// permanent: `Failed` with its reason, the bell, the issue handed back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_dispatch_fails_with_its_bell() {
    let mut w = World::new().await;
    // The workspace root does not exist on the T3 host and the operator may not create it
    // (prepareWorkspace: false): project.create is a business rejection.
    w.label_issue(42, "Do it", "alice");
    w.apply_config(
        json!({"allowlist": [{"repo": REPO, "defaultBranch": "main", "workspaceRoot": "/nowhere"}], "executor": {"t3": {"prepareWorkspace": false}}}),
    )
    .await;
    w.start();
    w.wait_phase(RUN, Phase::Failed).await;
    assert_eq!(run_field(&w, "reason"), "DispatchRejected");
    w.wait_bells(&["acme/app#42 failed"]).await;
    w.wait_labels(42, &["ready-for-human"]).await;
}

/// A 5xx on the in-progress label write is healed on a later reconcile (labels are
/// level-triggered), not lost for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_label_write_heals() {
    let mut w = World::new().await;
    w.label_issue(42, "Do it", "alice");
    w.gh.with(|s| {
        s.faults.push(GhFault {
            path_prefix: "/repos/acme/app/issues/42/labels".into(),
            status: 502,
            headers: vec![],
            body: String::new(),
            remaining: 2,
        })
    });
    w.apply_config(json!({})).await;
    w.start();
    w.wait_phase(RUN, Phase::Working).await;
    w.wait_for("the in-progress label despite two 502s", |w| {
        w.issue_labels(42).contains(&"agent-in-progress".to_string())
    })
    .await;
    assert_eq!(w.gh.with(|s| s.faults[0].remaining), 0, "the faults were hit");
    // A human removing it by mistake: the next reconcile puts the lock back.
    w.gh.repo(REPO, |r| {
        r.issues
            .get_mut(&42)
            .unwrap()
            .labels
            .retain(|l| l != "agent-in-progress")
    });
    w.wait_for("the label restored", |w| {
        w.issue_labels(42).contains(&"agent-in-progress".to_string())
    })
    .await;
}

/// A crash between sending the doorbell and recording it rings again after the restart (at
/// least once). Before, the bell was marked sent before delivery and was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_the_doorbell_rings_it_after_the_restart() {
    let mut w = World::new().await;
    w.label_issue(42, "Do it", "alice");
    w.apply_config(json!({})).await;
    w.start();
    w.wait_phase(RUN, Phase::Working).await;
    w.notify.with(|s| s.hold = true);
    // The agent ends without pushing: NeedsHuman after the grace, and the bell.
    w.end_turn(RUN);
    w.wait_phase(RUN, Phase::NeedsHuman).await;
    w.wait_for("the bell in flight", |w| {
        w.notify.with(|s| !s.requests.is_empty())
    })
    .await;
    w.stop_controllers();
    w.notify.with(|s| s.hold = false);
    assert!(w.ntfy_titles().is_empty(), "the held delivery never completed");
    assert_eq!(
        w.run_obj(RUN).unwrap()["status"]["effects"]["notification"],
        json!(false)
    );
    w.start();
    w.wait_bells(&["acme/app#42 needs a human"]).await;
    w.wait_for("recorded as delivered", |w| {
        w.run_obj(RUN).unwrap()["status"]["effects"]["notification"] == json!(true)
    })
    .await;
}

/// Transient GitHub errors while gathering gate facts hold the issue back with the reason
/// `github unavailable`, never silently as "no facts" (untrusted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_errors_while_gathering_facts_are_a_queue_reason() {
    let mut w = World::new().await;
    w.label_issue(42, "Do it", "alice");
    w.gh.with(|s| {
        s.faults.push(GhFault {
            path_prefix: "/repos/acme/app/issues/42/events".into(),
            status: 503,
            headers: vec![],
            body: String::new(),
            remaining: 1000,
        })
    });
    w.apply_config(json!({})).await;
    w.start();
    w.wait_for("the queue reason", |w| {
        w.config_obj()["status"]["queue"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("github unavailable"))
    })
    .await;
    assert!(w.run_obj(RUN).is_none());
    w.gh.with(|s| s.faults.clear());
    w.poll_now().await;
    w.wait_phase(RUN, Phase::Working).await;
}

/// A turn that runs past the stall timeout is interrupted and handed to a human.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_turn_is_interrupted_and_handed_back() {
    let mut w = World::new().await;
    w.label_issue(42, "Do it", "alice");
    w.apply_config(json!({"budgets": {"stallTimeout": "2s"}})).await;
    w.start();
    w.wait_phase(RUN, Phase::Working).await;
    w.wait_phase(RUN, Phase::NeedsHuman).await;
    assert_eq!(run_field(&w, "reason"), "Stalled");
    w.wait_for("interrupt", |w| {
        w.t3.applied_of("thread.turn.interrupt").len() == 1
    })
    .await;
    w.wait_bells(&["acme/app#42 needs a human"]).await;
}

/// Red past the fix-forward time budget freezes (judged after the turn ended).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_past_the_time_budget_freezes() {
    let mut w = World::new().await;
    w.label_issue(42, "Do it", "alice");
    w.apply_config(json!({"budgets": {"fixForwardMaxDuration": "1s"}}))
        .await;
    w.start();
    w.wait_phase(RUN, Phase::Working).await;
    w.push(RUN, 1, "failure");
    w.end_turn(RUN);
    // The first red starts the clock and sends attempt 1; its red push after the budget is spent
    // freezes the run once the turn has ended.
    w.wait_for("the corrective turn", |w| {
        w.t3.applied_of("thread.turn.start").len() == 2
    })
    .await;
    w.push(RUN, 2, "failure");
    w.end_turn(RUN);
    w.wait_phase(RUN, Phase::Frozen).await;
    let message = run_field(&w, "message").as_str().unwrap().to_string();
    assert!(message.contains("time budget"), "{message}");
    w.wait_bells(&["acme/app#42 frozen"]).await;
}

/// A transient T3 fault at dispatch is retried with the same ids: one thread, one turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_dispatch_reply_is_retried_once_in_effect() {
    let mut w = World::new().await;
    w.label_issue(42, "Do it", "alice");
    w.t3.inject(Fault {
        status: 502,
        remaining: 2,
        apply_first: true,
    });
    w.apply_config(json!({})).await;
    w.start();
    w.wait_phase(RUN, Phase::Working).await;
    assert_eq!(w.t3.applied_of("thread.create").len(), 1);
    assert_eq!(w.t3.applied_of("thread.turn.start").len(), 1);
}
