//! The AFK loop end to end, in process: the real controllers against the fake API server and
//! the contract fakes of T3, GitHub and ntfy.

mod support;

use afk_operator::crd::Phase;
use serde_json::json;
use support::*;

const RUN: &str = "acme-app-42-1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_issue_goes_all_the_way_to_succeeded() {
    let mut w = World::new().await;
    w.label_issue(42, "Retry webhooks.\n\nBlocked by #40", "alice");
    w.gh.add_labeled_issue(
        REPO,
        40,
        "done already",
        "",
        "other",
        "alice",
        "2026-01-01T00:00:00Z",
    );
    w.gh.repo(REPO, |r| r.issues.get_mut(&40).unwrap().state = "closed".into());
    w.apply_config(json!({})).await;
    w.start();

    w.wait_for("the turn to start", |w| {
        !w.t3.applied_of("thread.turn.start").is_empty()
    })
    .await;
    let thread = w.t3.applied_of("thread.create")[0].clone();
    assert_eq!(thread["branch"], json!(null));
    assert_eq!(thread["worktreePath"], json!(null));
    let prompt = w.t3.applied_of("thread.turn.start")[0]["message"]["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(prompt.contains("You are working alone"), "preamble first");
    assert!(prompt.contains("AFK-Run: acme-app-42-1") && prompt.contains("untrusted-issue"));
    w.wait_for("the in-progress label", |w| {
        w.issue_labels(42).contains(&"agent-in-progress".to_string())
    })
    .await;
    w.wait_phase(RUN, Phase::Working).await;

    let sha = w.push(RUN, 1, "success");
    w.wait_phase(RUN, Phase::Verifying).await;
    w.roll_out(&sha);
    w.t3.finish_turn(&w.thread_id(RUN), "completed", "ready");
    w.wait_phase(RUN, Phase::Succeeded).await;
    w.wait_for("terminal effects", |w| {
        w.run_obj(RUN).unwrap()["status"]["effects"]["notification"] == json!(true)
    })
    .await;
    w.wait_for("the doorbell", |w| !w.ntfy_titles().is_empty()).await;

    let run = w.run_obj(RUN).unwrap();
    assert_eq!(run["status"]["commit"], json!(sha));
    assert_eq!(run["status"]["ci"]["verdict"], "Green");
    assert_eq!(run["status"]["attempts"], "0/5");
    assert_eq!(
        run["status"]["threadUrl"],
        json!(format!("https://t3.example.com/?thread={}", w.thread_id(RUN)))
    );
    let (state, closes, comments) = w.gh.repo(REPO, |r| {
        let i = &r.issues[&42];
        (i.state.clone(), i.closes, i.comments.clone())
    });
    assert_eq!((state.as_str(), closes), ("closed", 1));
    assert_eq!(comments.len(), 1, "one checklist comment, edited in place");
    assert!(comments[0].1.contains("- [x] Done"), "{}", comments[0].1);
    let labels = w.issue_labels(42);
    assert!(
        !labels.contains(&"agent-in-progress".to_string())
            && !labels.contains(&"ready-for-agent".to_string()),
        "{labels:?}"
    );
    assert_eq!(w.ntfy_titles(), vec!["acme/app#42 done"]);
    let starts = w.t3.applied_of("thread.turn.start");
    assert_eq!(
        starts.len(),
        1,
        "{:#?}",
        starts
            .iter()
            .map(|s| (
                s["commandId"].clone(),
                s["message"]["text"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(80)
                    .collect::<String>()
            ))
            .collect::<Vec<_>>()
    );
    let events = w.api.with_store(|s| s.list("events.k8s.io/v1", "Event", NS));
    assert!(
        events.iter().any(|e| e["reason"] == "Succeeded"),
        "an Event on the phase change"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_ci_is_fixed_forward_then_green() {
    let mut w = World::new().await;
    w.label_issue(42, "Do it", "alice");
    w.apply_config(json!({})).await;
    w.start();
    w.wait_phase(RUN, Phase::Working).await;
    w.push(RUN, 1, "failure");
    // The red commit is judged once the agent's turn ends, never sent into it as a steer.
    w.wait_reconciles(3).await;
    assert_eq!(w.t3.applied_of("thread.turn.start").len(), 1);
    w.end_turn(RUN);
    w.wait_for("corrective turn 1", |w| {
        w.t3.applied_of("thread.turn.start").len() == 2
    })
    .await;
    w.wait_phase(RUN, Phase::FixingForward).await;
    let fix = w.t3.applied_of("thread.turn.start")[1]["message"]["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(fix.starts_with("Fix-forward attempt 1 of 5"), "{fix}");
    w.push(RUN, 2, "failure");
    w.end_turn(RUN);
    w.wait_for("corrective turn 2", |w| {
        w.t3.applied_of("thread.turn.start").len() == 3
    })
    .await;
    let sha = w.push(RUN, 3, "success");
    w.roll_out(&sha);
    w.wait_phase(RUN, Phase::Succeeded).await;
    let run = w.run_obj(RUN).unwrap();
    assert_eq!(run["status"]["fixForward"]["attempts"], 2);
    assert_eq!(run["status"]["attempts"], "2/5");
    assert_eq!(
        w.t3.applied_of("thread.create").len(),
        1,
        "fixes go to the same thread"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_past_the_budget_freezes_and_rings_once() {
    let mut w = World::new().await;
    w.label_issue(42, "Do it", "alice");
    w.apply_config(json!({"budgets": {"fixForwardMaxAttempts": 1}}))
        .await;
    w.start();
    w.wait_phase(RUN, Phase::Working).await;
    w.push(RUN, 1, "failure");
    w.end_turn(RUN);
    w.wait_for("corrective turn", |w| {
        w.t3.applied_of("thread.turn.start").len() == 2
    })
    .await;
    w.push(RUN, 2, "failure");
    // The last attempt's push is judged only once its turn ends: no freeze while it runs.
    w.wait_reconciles(3).await;
    assert_eq!(w.phase(RUN).as_deref(), Some("FixingForward"));
    w.end_turn(RUN);
    w.wait_phase(RUN, Phase::Frozen).await;
    w.wait_for("notification", |w| !w.ntfy_titles().is_empty()).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let runs: Vec<String> = w
        .api
        .with_store(|s| s.list("afk.dev/v1alpha1", "AfkRun", NS))
        .iter()
        .map(|r| format!("{} {}", r["metadata"]["name"], r["status"]["phase"]))
        .collect();
    let bodies: Vec<String> = w
        .notify
        .with(|s| s.ntfy.iter().map(|(_, r)| r.body.clone()).collect());
    assert_eq!(
        w.ntfy_titles(),
        vec!["acme/app#42 frozen"],
        "runs {runs:?} bodies {bodies:#?}"
    );
    let labels = w.issue_labels(42);
    assert!(
        labels.contains(&"ready-for-human".to_string()) && !labels.contains(&"ready-for-agent".to_string()),
        "{labels:?}"
    );
    assert_eq!(
        w.gh.repo(REPO, |r| r.issues[&42].state.clone()),
        "open",
        "a frozen issue stays open"
    );
    let run = w.run_obj(RUN).unwrap();
    assert_eq!(run["status"]["reason"], "FixForwardBudgetExhausted");
    assert_eq!(
        run["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Stalled")
            .unwrap()["status"],
        "True"
    );
}

/// The last fix-forward attempt is sent and then judged: its green fix succeeds (before the
/// reorder of SPEC §3.1 the run froze a second after sending it and the fix was never judged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_fix_forward_attempt_is_judged_not_thrown_away() {
    let mut w = World::new().await;
    w.label_issue(42, "Do it", "alice");
    w.apply_config(json!({"budgets": {"fixForwardMaxAttempts": 1}}))
        .await;
    w.start();
    w.wait_phase(RUN, Phase::Working).await;
    w.push(RUN, 1, "failure");
    w.end_turn(RUN);
    w.wait_for("the last corrective turn", |w| {
        w.t3.applied_of("thread.turn.start").len() == 2
    })
    .await;
    w.wait_reconciles(3).await;
    assert_eq!(w.phase(RUN).as_deref(), Some("FixingForward"));
    assert!(w.t3.applied_of("thread.turn.interrupt").is_empty());
    let sha = w.push(RUN, 2, "success");
    w.roll_out(&sha);
    w.wait_phase(RUN, Phase::Succeeded).await;
    assert_eq!(
        w.t3.applied_of("thread.turn.interrupt").len(),
        1,
        "the still-running turn is interrupted once the work is green"
    );
    w.wait_for("the done bell", |w| w.ntfy_titles() == vec!["acme/app#42 done"])
        .await;
    assert!(!w.issue_labels(42).contains(&"ready-for-human".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_blocked_and_busy_issues_wait_with_reasons() {
    let mut w = World::new().await;
    w.label_issue(42, "Do it", "alice");
    w.label_issue(43, "Blocked by #99", "alice");
    w.gh.add_labeled_issue(REPO, 99, "blocker", "", "other", "alice", "2026-01-01T00:00:00Z");
    w.label_issue(44, "Sneaky", "tri");
    w.label_issue(45, "Waits its turn", "alice");
    w.apply_config(json!({})).await;
    w.start();
    w.wait_phase(RUN, Phase::Working).await;
    w.wait_for("queue reasons", |w| {
        w.config_obj()["status"]["queueLength"] == json!(3)
    })
    .await;
    let queue = w.config_obj()["status"]["queue"].clone();
    let reason = |n: u64| {
        queue
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["issue"] == n)
            .unwrap()["reason"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(reason(43), "Blocked by #99 (open)");
    assert_eq!(reason(44), "labeled by @tri (triage permission)");
    assert_eq!(reason(45), "repo busy: afkrun acme-app-42-1");
    let repos = w.config_obj()["status"]["repos"].clone();
    assert_eq!(repos[0]["holder"], RUN);
    assert_eq!(repos[0]["waiting"], json!([43, 44, 45]));
    assert_eq!(w.config_obj()["status"]["inFlight"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_loop_makes_no_github_requests() {
    let mut w = World::new().await;
    w.label_issue(42, "Do it", "alice");
    w.apply_config(json!({"suspend": true})).await;
    w.start();
    w.wait_for("Armed=False", |w| {
        w.config_obj()["status"]["conditions"]
            .as_array()
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Armed" && c["status"] == "False" && c["reason"] == "Suspended")
            })
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(w.gh.with(|s| s.requests.len()), 0, "no tracker I/O at all");
    assert!(w.t3.with(|s| s.requests.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emergency_stop_interrupts_and_cancels() {
    let mut w = World::new().await;
    w.label_issue(42, "Do it", "alice");
    w.apply_config(json!({})).await;
    w.start();
    w.wait_phase(RUN, Phase::Working).await;
    w.api.with_store(|s| {
        s.modify("afk.dev/v1alpha1", "AfkConfig", NS, "team", |c| {
            c["metadata"]["annotations"] = json!({"afk.dev/emergency-stop": "prod is on fire"});
        })
    });
    w.wait_phase(RUN, Phase::Cancelled).await;
    assert_eq!(w.run_obj(RUN).unwrap()["status"]["reason"], "EmergencyStop");
    w.wait_for("interrupt", |w| {
        w.t3.applied_of("thread.turn.interrupt").len() == 1
    })
    .await;
    w.wait_for("Armed=False EmergencyStop", |w| {
        w.config_obj()["status"]["conditions"]
            .as_array()
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Armed" && c["reason"] == "EmergencyStop")
            })
    })
    .await;
    w.wait_for("ready-for-human", |w| {
        w.issue_labels(42).contains(&"ready-for-human".to_string())
    })
    .await;
}

/// SPEC §1.2: deleting a live run is a human cancel. The turn is interrupted and the Cancelled
/// effects are done before the finalizer is released, so the issue is not dispatched again
/// until a trusted human re-applies the ready label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_working_run_cancels_it_and_hands_the_issue_back() {
    let mut w = World::new().await;
    w.label_issue(42, "Do it", "alice");
    w.apply_config(json!({})).await;
    w.start();
    w.wait_phase(RUN, Phase::Working).await;
    w.wait_for("the in-progress label", |w| {
        w.issue_labels(42).contains(&"agent-in-progress".to_string())
    })
    .await;
    let api: kube::Api<afk_operator::crd::AfkRun> = kube::Api::namespaced(w.api.client(), NS);
    let deleted_uid = w.run_obj(RUN).unwrap()["metadata"]["uid"].clone();
    api.delete(RUN, &Default::default()).await.unwrap();
    w.wait_for("the run to be gone", |w| w.run_obj(RUN).is_none())
        .await;
    assert_eq!(w.t3.applied_of("thread.turn.interrupt").len(), 1);
    assert_eq!(w.issue_labels(42), vec!["ready-for-human".to_string()]);
    let comments = w.gh.repo(REPO, |r| r.issues[&42].comments.clone());
    assert_eq!(comments.len(), 1, "one checklist comment");
    assert!(
        comments[0].1.contains("**Cancelled** — Deleted"),
        "{}",
        comments[0].1
    );
    assert!(w.ntfy_titles().is_empty(), "a human's cancel rings no bell");

    // Two full polls later, nothing was dispatched again.
    w.poll_now().await;
    w.poll_now().await;
    assert!(w.run_obj(RUN).is_none(), "no new AfkRun without the ready label");
    assert_eq!(w.t3.applied_of("thread.create").len(), 1, "one thread");

    // A trusted human asks again: a new run (a new object, a new thread).
    w.relabel(42, "alice");
    w.poll_now().await;
    w.wait_phase(RUN, Phase::Working).await;
    assert_ne!(w.run_obj(RUN).unwrap()["metadata"]["uid"], deleted_uid);
    w.wait_for("a second thread", |w| w.t3.applied_of("thread.create").len() == 2)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_cancel_cancels() {
    let mut w = World::new().await;
    w.label_issue(42, "Do it", "alice");
    w.apply_config(json!({})).await;
    w.start();
    w.wait_phase(RUN, Phase::Working).await;
    let api: kube::Api<afk_operator::crd::AfkRun> = kube::Api::namespaced(w.api.client(), NS);
    api.patch(
        RUN,
        &Default::default(),
        &kube::api::Patch::Merge(json!({"spec": {"cancel": true}})),
    )
    .await
    .unwrap();
    w.wait_phase(RUN, Phase::Cancelled).await;
    w.wait_for("interrupt", |w| {
        w.t3.applied_of("thread.turn.interrupt").len() == 1
    })
    .await;
    assert!(
        w.ntfy_titles().is_empty(),
        "a cancel a human asked for rings no bell"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_polls_at_once_instead_of_waiting_for_the_interval() {
    let mut w = World::new().await;
    w.apply_config(json!({"pollInterval": "10m"})).await;
    w.start();
    w.wait_for("the first poll", |w| {
        w.config_obj()["status"]["lastPollTime"].is_string()
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    w.label_issue(42, "Do it", "alice");
    // What the GitHub webhook handler does for a `labeled` event.
    w.trigger
        .send(afk_operator::controller::Trigger::Config(
            kube::runtime::reflector::ObjectRef::new("team").within(NS),
        ))
        .unwrap();
    let started = std::time::Instant::now();
    w.wait_for("the run from the triggered poll", |w| w.run_obj(RUN).is_some())
        .await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "well before the 10-minute poll"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ci_trigger_advances_a_run_at_once_instead_of_waiting_for_the_requeue() {
    let mut w = World::new().await;
    w.settings.run_requeue = std::time::Duration::from_secs(600);
    w.label_issue(42, "Do it", "alice");
    w.apply_config(json!({"pollInterval": "10m"})).await;
    w.start();
    w.wait_phase(RUN, Phase::Working).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    w.push(RUN, 1, "success");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        w.run_obj(RUN).unwrap()["status"]["phase"],
        "Working",
        "without a trigger the run waits for its 10-minute requeue"
    );
    // What the GitHub webhook handler does for a `check_run` / `push` event.
    w.trigger
        .send(afk_operator::controller::Trigger::Run(
            kube::runtime::reflector::ObjectRef::new(RUN).within(NS),
        ))
        .unwrap();
    let started = std::time::Instant::now();
    w.wait_phase(RUN, Phase::Verifying).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}
