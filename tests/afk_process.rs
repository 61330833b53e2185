//! Process level: the real `afk-operator run` binary, pointed at the fake API server's kubeconfig
//! and at the T3, GitHub and ntfy fakes through the AfkConfig, takes a trusted issue to
//! `Succeeded` (`/readyz` and `/metrics` answer on its sidecar port), and every failure path a
//! user can meet ends loud and final: a deleted run, a rejected dispatch, a label write lost to
//! a 5xx, a doorbell cut by `kill -9`, GitHub unavailable while gathering gate facts, a stall,
//! the fix-forward attempt and time budgets, and retention.

mod support;

use std::time::Duration;

use afk_operator::crd::Phase;
use afk_testkit::{github::GhFault, t3::Fault};
use serde_json::json;
use support::{process::*, *};

const RUN: &str = "acme-app-42-1";

/// Serve the API, apply the config, start the binary.
async fn boot(w: &World, extra: serde_json::Value) -> (afk_testkit::apiserver::ServedApi, Operator) {
    let mut served = w.api.serve().await;
    let kubeconfig = served.kubeconfig();
    w.apply_config(extra).await;
    let operator = spawn_operator(&kubeconfig, free_port());
    (served, operator)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_takes_an_issue_to_succeeded() {
    let w = World::new().await;
    let mut served = w.api.serve().await;
    let kubeconfig = served.kubeconfig();
    w.label_issue(42, "Do it", "alice");
    w.apply_config(json!({})).await;
    let port = free_port();
    let _operator = spawn_operator(&kubeconfig, port);

    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    w.wait_for("readyz", |_| {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    let mut ready = false;
    for _ in 0..200 {
        if http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "/readyz turned ready after the watches synced");

    w.wait_phase("acme-app-42-1", Phase::Working).await;
    let sha = w.push("acme-app-42-1", 1, "success");
    w.roll_out(&sha);
    w.wait_phase("acme-app-42-1", Phase::Succeeded).await;
    w.wait_for("the doorbell", |w| w.ntfy_titles() == vec!["acme/app#42 done"])
        .await;
    assert_eq!(w.gh.repo(REPO, |r| r.issues[&42].state.clone()), "closed");

    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("afk_dispatches_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("afk_reconcile_duration_seconds_count{controller=\"afkrun\"}"));
    assert!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_freezes_a_run_past_its_budget() {
    let w = World::new().await;
    let mut served = w.api.serve().await;
    let kubeconfig = served.kubeconfig();
    w.label_issue(42, "Do it", "alice");
    w.apply_config(json!({"budgets": {"fixForwardMaxAttempts": 1}}))
        .await;
    let _operator = spawn_operator(&kubeconfig, free_port());
    w.wait_phase(RUN, Phase::Working).await;
    w.push("acme-app-42-1", 1, "failure");
    w.end_turn("acme-app-42-1");
    w.wait_for("the corrective turn", |w| {
        w.t3.applied_of("thread.turn.start").len() == 2
    })
    .await;
    w.push("acme-app-42-1", 2, "failure");
    w.end_turn("acme-app-42-1");
    w.wait_phase("acme-app-42-1", Phase::Frozen).await;
    w.wait_bells(&["acme/app#42 frozen"]).await;
    w.wait_for("ready-for-human", |w| {
        w.issue_labels(42).contains(&"ready-for-human".to_string())
    })
    .await;
}

/// Deleting a working run hands the issue back and it is not dispatched again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_cancels_a_deleted_run_and_does_not_redispatch() {
    let w = World::new().await;
    w.label_issue(42, "Do it", "alice");
    let (_served, _op) = boot(&w, json!({})).await;
    w.wait_phase(RUN, Phase::Working).await;
    w.wait_for("the in-progress label", |w| {
        w.issue_labels(42).contains(&"agent-in-progress".to_string())
    })
    .await;
    let api: kube::Api<afk_operator::crd::AfkRun> = kube::Api::namespaced(w.api.client(), NS);
    api.delete(RUN, &Default::default()).await.unwrap();
    w.wait_for("the run to be gone", |w| w.run_obj(RUN).is_none())
        .await;
    assert_eq!(w.issue_labels(42), vec!["ready-for-human".to_string()]);
    assert_eq!(w.t3.applied_of("thread.turn.interrupt").len(), 1);
    // The next poll of the issue listing (triggered by the deletion) creates nothing.
    let listings = |w: &World| {
        w.gh.with(|s| {
            s.requests
                .iter()
                .filter(|r| r.method == "GET" && r.path.starts_with("/repos/acme/app/issues?"))
                .count()
        })
    };
    let before = listings(&w);
    w.wait_for("another poll", |w| listings(w) > before).await;
    assert!(w.run_obj(RUN).is_none());
    assert_eq!(w.t3.applied_of("thread.create").len(), 1, "one thread");
    assert_eq!(
        w.gh.repo(REPO, |r| r.issues[&42].comments.len()),
        1,
        "one comment"
    );
}

/// T3 rejecting the dispatch (500 `orchestration_dispatch_failed`) ends Failed with its bell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_fails_a_rejected_dispatch_with_its_bell() {
    let w = World::new().await;
    w.label_issue(42, "Do it", "alice");
    let (_served, _op) = boot(
        &w,
        json!({"allowlist": [{"repo": REPO, "defaultBranch": "main", "workspaceRoot": "/nowhere"}], "executor": {"t3": {"prepareWorkspace": false}}}),
    )
    .await;
    w.wait_phase(RUN, Phase::Failed).await;
    assert_eq!(w.run_obj(RUN).unwrap()["status"]["reason"], "DispatchRejected");
    w.wait_bells(&["acme/app#42 failed"]).await;
    w.wait_labels(42, &["ready-for-human"]).await;
}

/// A 5xx on the label write at dispatch heals (labels are level-triggered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_heals_a_label_lost_to_a_5xx() {
    let w = World::new().await;
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
    let (_served, _op) = boot(&w, json!({})).await;
    w.wait_for("the in-progress label", |w| {
        w.issue_labels(42).contains(&"agent-in-progress".to_string())
    })
    .await;
    assert_eq!(w.gh.with(|s| s.faults[0].remaining), 0);
}

/// `kill -9` while the doorbell is on the wire: the restarted binary rings it (at least once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_rings_a_bell_cut_by_kill_9_after_the_restart() {
    let w = World::new().await;
    w.label_issue(42, "Do it", "alice");
    let (mut served, mut op) = boot(&w, json!({})).await;
    w.wait_phase(RUN, Phase::Working).await;
    w.notify.with(|s| s.hold = true);
    w.end_turn(RUN);
    w.wait_phase(RUN, Phase::NeedsHuman).await;
    w.wait_for("the bell on the wire", |w| {
        w.notify.with(|s| !s.requests.is_empty())
    })
    .await;
    op.kill();
    w.notify.with(|s| s.hold = false);
    assert!(w.ntfy_titles().is_empty());
    let _op = spawn_operator(&served.kubeconfig(), free_port());
    w.wait_bells(&["acme/app#42 needs a human"]).await;
}

/// GitHub failing while the gate facts are gathered: the issue waits with `github unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_queues_an_issue_as_github_unavailable() {
    let w = World::new().await;
    w.label_issue(42, "Do it", "alice");
    w.gh.with(|s| {
        s.faults.push(GhFault {
            path_prefix: "/repos/acme/app/collaborators".into(),
            status: 502,
            headers: vec![],
            body: String::new(),
            remaining: 100_000,
        })
    });
    let (_served, _op) = boot(&w, json!({})).await;
    w.wait_for("the queue reason", |w| {
        w.config_obj()["status"]["queue"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("github unavailable"))
    })
    .await;
    assert!(w.run_obj(RUN).is_none());
}

/// A turn past the stall timeout is interrupted and handed to a human.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_hands_a_stalled_run_to_a_human() {
    let w = World::new().await;
    w.label_issue(42, "Do it", "alice");
    let (_served, _op) = boot(&w, json!({"budgets": {"stallTimeout": "2s"}})).await;
    w.wait_phase(RUN, Phase::NeedsHuman).await;
    assert_eq!(w.run_obj(RUN).unwrap()["status"]["reason"], "Stalled");
    w.wait_for("interrupt", |w| {
        w.t3.applied_of("thread.turn.interrupt").len() == 1
    })
    .await;
    w.wait_bells(&["acme/app#42 needs a human"]).await;
}

/// Red past the fix-forward time budget freezes once the corrective turn has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_freezes_past_the_time_budget() {
    let w = World::new().await;
    w.label_issue(42, "Do it", "alice");
    let (_served, _op) = boot(&w, json!({"budgets": {"fixForwardMaxDuration": "1s"}})).await;
    w.wait_phase(RUN, Phase::Working).await;
    w.push(RUN, 1, "failure");
    w.end_turn(RUN);
    w.wait_for("the corrective turn", |w| {
        w.t3.applied_of("thread.turn.start").len() == 2
    })
    .await;
    w.push(RUN, 2, "failure");
    w.end_turn(RUN);
    w.wait_phase(RUN, Phase::Frozen).await;
    w.wait_bells(&["acme/app#42 frozen"]).await;
}

/// Retention: past `history.failedToKeep`, the oldest terminal runs of a repo are deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_deletes_the_oldest_terminal_runs() {
    let w = World::new().await;
    let (_served, _op) = boot(&w, json!({"history": {"failedToKeep": 1}})).await;
    let api: kube::Api<afk_operator::crd::AfkRun> = kube::Api::namespaced(w.api.client(), NS);
    // Two runs by hand (a trusted act), cancelled at once: both end Cancelled.
    for (issue, name) in [(7, "acme-app-7-1"), (8, "acme-app-8-1")] {
        w.label_issue(issue, "x", "alice");
        let run: afk_operator::crd::AfkRun = serde_json::from_value(json!({
            "apiVersion": "afk.dev/v1alpha1", "kind": "AfkRun",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"configRef": "team", "repo": REPO, "issue": issue, "attempt": 1, "title": "x", "cancel": true,
                     "taskSnapshot": {"title": "x", "body": "x", "sha256": "a".repeat(64)}}
        }))
        .unwrap();
        api.create(&Default::default(), &run).await.unwrap();
        w.wait_phase(name, Phase::Cancelled).await;
    }
    w.wait_for("the older run pruned", |w| {
        w.run_obj("acme-app-7-1").is_none() && w.run_obj("acme-app-8-1").is_some()
    })
    .await;
}

/// A lost reply at dispatch is retried with the same ids: one thread, one turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_retries_a_lost_dispatch_reply_once_in_effect() {
    let w = World::new().await;
    w.label_issue(42, "Do it", "alice");
    w.t3.inject(Fault {
        status: 502,
        remaining: 2,
        apply_first: true,
    });
    let (_served, _op) = boot(&w, json!({})).await;
    w.wait_phase(RUN, Phase::Working).await;
    assert_eq!(w.t3.applied_of("thread.create").len(), 1);
    assert_eq!(w.t3.applied_of("thread.turn.start").len(), 1);
}
