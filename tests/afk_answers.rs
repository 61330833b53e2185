//! Answering the agent (SPEC §3.1 rows 3–5, §4.3): an agent that asks a question or waits on an
//! approval puts the run in `WaitingForHuman` with `status.question` and one `needs-answer` bell;
//! a human's answer (the `afk.dev/answer` annotation, as the sidecar API and `kubectl annotate`
//! write it) is sent exactly once as T3's respond command and the run carries on in the same
//! thread; no answer within `answerTimeout` hands the run to a human.

mod support;

use afk_operator::crd::{AfkRun, Phase};
use afk_testkit::t3::Fault;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;
use support::*;

const RUN: &str = "acme-app-42-1";

async fn annotate_answer(w: &World, answer: serde_json::Value) {
    let api: Api<AfkRun> = Api::namespaced(w.api.client(), NS);
    api.patch(
        RUN,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"afk.dev/answer": answer.to_string()}}})),
    )
    .await
    .unwrap();
}

fn question(w: &World) -> serde_json::Value {
    w.run_obj(RUN).unwrap()["status"]["question"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_question_is_answered_and_the_run_carries_on_in_the_same_thread() {
    let mut w = World::new().await;
    w.label_issue(42, "Do it", "alice");
    w.apply_config(json!({})).await;
    w.start();
    w.wait_phase(RUN, Phase::Working).await;
    let thread = w.thread_id(RUN);
    let request = w.t3.raise_request(&thread, false);
    w.wait_phase(RUN, Phase::WaitingForHuman).await;
    let q = question(&w);
    assert_eq!(q["kind"], "user-input");
    assert_eq!(q["requestId"], json!(request));
    assert_eq!(q["questions"][0]["id"], "db");
    assert_eq!(q["questions"][0]["options"], json!(["Postgres", "SQLite"]));
    assert!(q["text"].as_str().unwrap().contains("Which database"), "{q}");
    w.wait_bells(&["acme/app#42 needs an answer"]).await;

    // A stale answer (another request id) is ignored with a Warning, never sent.
    annotate_answer(&w, json!({"id": "req-0", "text": "Postgres"})).await;
    w.wait_for("the stale answer removed", |w| {
        w.run_obj(RUN).unwrap()["metadata"]["annotations"]["afk.dev/answer"].is_null()
    })
    .await;
    assert!(w.t3.responses(&thread).is_empty());
    assert_eq!(w.phase(RUN).as_deref(), Some("WaitingForHuman"));

    annotate_answer(&w, json!({"id": request, "text": "Postgres", "by": "alice"})).await;
    w.wait_phase(RUN, Phase::Working).await;
    let responses = w.t3.responses(&thread);
    assert_eq!(responses.len(), 1, "{responses:#?}");
    assert_eq!(responses[0]["type"], "thread.user-input.respond");
    assert_eq!(responses[0]["answers"], json!({"db": "Postgres"}));
    w.wait_for("the annotation removed", |w| {
        w.run_obj(RUN).unwrap()["metadata"]["annotations"]["afk.dev/answer"].is_null()
    })
    .await;
    assert!(question(&w).is_null());
    assert_eq!(w.run_obj(RUN).unwrap()["status"]["answer"]["by"], "alice");

    // The same thread goes on to success.
    let sha = w.push(RUN, 1, "success");
    w.roll_out(&sha);
    w.end_turn(RUN);
    w.wait_phase(RUN, Phase::Succeeded).await;
    assert_eq!(w.t3.applied_of("thread.create").len(), 1);
    assert_eq!(w.t3.responses(&thread).len(), 1, "exactly one respond command");
    w.wait_bells(&["acme/app#42 needs an answer", "acme/app#42 done"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_approval_reaches_the_agent_and_its_ended_turn_needs_a_human() {
    let mut w = World::new().await;
    w.label_issue(42, "Do it", "alice");
    w.apply_config(json!({})).await;
    w.start();
    w.wait_phase(RUN, Phase::Working).await;
    let thread = w.thread_id(RUN);
    let request = w.t3.raise_approval(&thread, "command", "cargo publish");
    w.wait_phase(RUN, Phase::WaitingForHuman).await;
    assert_eq!(question(&w)["kind"], "approval");
    assert_eq!(question(&w)["detail"], "cargo publish");
    // An answer of the wrong shape is refused with a Warning Event and removed.
    annotate_answer(&w, json!({"id": request, "text": "sure"})).await;
    w.wait_for("an InvalidAnswer event", |w| {
        w.events_for("AfkRun", RUN)
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "InvalidAnswer")
    })
    .await;
    annotate_answer(&w, json!({"id": request, "decision": "decline"})).await;
    w.wait_phase(RUN, Phase::Working).await;
    let responses = w.t3.responses(&thread);
    assert_eq!(responses.len(), 1);
    assert_eq!(responses[0]["decision"], "decline");
    // The agent gives up without pushing.
    w.end_turn(RUN);
    w.wait_phase(RUN, Phase::NeedsHuman).await;
    assert_eq!(
        w.run_obj(RUN).unwrap()["status"]["reason"],
        "AgentFinishedWithoutPush"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_within_the_timeout_interrupts_and_needs_a_human() {
    let mut w = World::new().await;
    w.label_issue(42, "Do it", "alice");
    w.apply_config(json!({"budgets": {"answerTimeout": "2s"}})).await;
    w.start();
    w.wait_phase(RUN, Phase::Working).await;
    w.t3.raise_request(&w.thread_id(RUN), false);
    w.wait_phase(RUN, Phase::WaitingForHuman).await;
    w.wait_phase(RUN, Phase::NeedsHuman).await;
    assert_eq!(w.run_obj(RUN).unwrap()["status"]["reason"], "AgentAskedForInput");
    w.wait_for("interrupt", |w| {
        w.t3.applied_of("thread.turn.interrupt").len() == 1
    })
    .await;
    w.wait_bells(&["acme/app#42 needs an answer", "acme/app#42 needs a human"])
        .await;
}

/// A crash between recording the answer and learning that T3 took it (a lost reply, then a
/// restart): the same `commandId` is re-sent and T3 applies it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_to_the_answer_is_sent_once_in_effect() {
    let mut w = World::new().await;
    w.label_issue(42, "Do it", "alice");
    w.apply_config(json!({})).await;
    w.start();
    w.wait_phase(RUN, Phase::Working).await;
    let thread = w.thread_id(RUN);
    let request = w.t3.raise_request(&thread, true);
    w.wait_phase(RUN, Phase::WaitingForHuman).await;
    w.t3.inject(Fault {
        status: 502,
        remaining: 1,
        apply_first: true,
    });
    annotate_answer(&w, json!({"id": request, "decision": "accept"})).await;
    w.wait_for("the respond applied", |w| w.t3.responses(&thread).len() == 1)
        .await;
    w.start(); // kill and restart the controllers
    w.wait_phase(RUN, Phase::Working).await;
    let respond_posts = w.t3.with(|s| {
        s.requests
            .iter()
            .filter(|r| r.body.contains("thread.approval.respond"))
            .count()
    });
    assert!(respond_posts >= 2, "the lost reply was retried ({respond_posts})");
    assert_eq!(w.t3.responses(&thread).len(), 1, "applied once");
}

/// Process level, the way a phone does it: the real binary; the agent asks; the run is
/// `WaitingForHuman` with one bell; the question is read and answered over the sidecar's API
/// (`GET/POST /api/afk/runs/{ns}/{name}[/answer]`, bearer token); exactly one respond command
/// reaches T3; the run carries on in the same thread to `Succeeded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_takes_an_answer_from_the_api_and_carries_on() {
    use support::process::*;
    let w = World::new().await;
    w.label_issue(42, "Do it", "alice");
    let mut served = w.api.serve().await;
    let kubeconfig = served.kubeconfig();
    w.apply_config(json!({})).await;
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), "phone-token\n").unwrap();
    let port = free_port();
    let _op = spawn_operator_with(
        &kubeconfig,
        port,
        &["--api-token-file", token_file.path().to_str().unwrap()],
    );
    w.wait_phase(RUN, Phase::Working).await;
    let thread = w.thread_id(RUN);
    let request = w.t3.raise_request(&thread, false);
    w.wait_phase(RUN, Phase::WaitingForHuman).await;
    w.wait_bells(&["acme/app#42 needs an answer"]).await;
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}/api/afk/runs/{NS}/{RUN}");
    let got: serde_json::Value = http
        .get(&base)
        .bearer_auth("phone-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["phase"], "WaitingForHuman");
    assert_eq!(got["question"]["requestId"], json!(request));
    // Without the token: 401; a wrong shape: 400; nothing recorded.
    let unauth = http
        .post(format!("{base}/answer"))
        .json(&json!({"text": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauth.status(), 401);
    let bad = http
        .post(format!("{base}/answer"))
        .bearer_auth("phone-token")
        .json(&json!({"decision": "accept"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let ok = http
        .post(format!("{base}/answer"))
        .bearer_auth("phone-token")
        .json(&json!({"text": "SQLite"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 202);
    w.wait_phase(RUN, Phase::Working).await;
    let responses = w.t3.responses(&thread);
    assert_eq!(responses.len(), 1);
    assert_eq!(responses[0]["answers"], json!({"db": "SQLite"}));
    // Answering again once the run no longer waits: 409.
    w.wait_for("the question cleared", |w| question(w).is_null())
        .await;
    let late = http
        .post(format!("{base}/answer"))
        .bearer_auth("phone-token")
        .json(&json!({"text": "Postgres"}))
        .send()
        .await
        .unwrap();
    assert_eq!(late.status(), 409);
    let sha = w.push(RUN, 1, "success");
    w.roll_out(&sha);
    w.end_turn(RUN);
    w.wait_phase(RUN, Phase::Succeeded).await;
    assert_eq!(w.t3.responses(&thread).len(), 1);
    assert_eq!(w.t3.applied_of("thread.create").len(), 1);
}

/// Process level: `kill -9` after the answer was recorded and before T3 took it (the respond
/// fails, the binary dies); the restarted binary sends the same command once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_sends_an_answer_recorded_before_a_kill_9_exactly_once() {
    use support::process::*;
    let w = World::new().await;
    w.label_issue(42, "Do it", "alice");
    let mut served = w.api.serve().await;
    let kubeconfig = served.kubeconfig();
    w.apply_config(json!({})).await;
    let mut op = spawn_operator(&kubeconfig, free_port());
    w.wait_phase(RUN, Phase::Working).await;
    let thread = w.thread_id(RUN);
    let request = w.t3.raise_request(&thread, true);
    w.wait_phase(RUN, Phase::WaitingForHuman).await;
    // T3 fails every dispatch for now (nothing applied): the answer stays recorded, unsent.
    w.t3.inject(Fault {
        status: 503,
        remaining: 1_000_000,
        apply_first: false,
    });
    annotate_answer(&w, json!({"id": request, "decision": "accept"})).await;
    w.wait_for("the answer recorded, not sent", |w| {
        let a = &w.run_obj(RUN).unwrap()["status"]["answer"];
        a["commandId"].is_string() && a["sentAt"].is_null()
    })
    .await;
    op.kill();
    w.t3.inject(Fault {
        status: 503,
        remaining: 0,
        apply_first: false,
    });
    let _op = spawn_operator(&served.kubeconfig(), free_port());
    w.wait_phase(RUN, Phase::Working).await;
    let responses = w.t3.responses(&thread);
    assert_eq!(responses.len(), 1, "{responses:#?}");
    assert_eq!(responses[0]["decision"], "accept");
    assert_eq!(
        responses[0]["commandId"],
        w.run_obj(RUN).unwrap()["status"]["answer"]["commandId"]
    );
}
