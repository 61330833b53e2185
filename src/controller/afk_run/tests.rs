//! One reconcile step at a time, against the in-process fake API server and the in-memory
//! adapters: the order of status writes and side effects (the intent is on record before each
//! command is sent, the receipt after it), and what a crash between two steps leaves behind.
//! Each side effect in the journal carries the run's stored status at the moment it happened.

use std::sync::Arc;

use afk_testkit::apiserver::FakeApiServer;
use jiff::Timestamp;
use kube::{Api, api::PostParams, runtime::controller::Action};
use serde_json::{Value, json};

use super::{RunReconcile, observe};
use crate::{
    adapters::{
        github::Tracker,
        memory::{Entry, Journal, MemoryGitHub, MemoryNotifier, MemoryT3, NoDeployments, T3Fault},
    },
    agents::Agents,
    controller::{Adapters, Context, Error, Settings},
    crd::{AfkConfig, AfkRun},
    metrics::Metrics,
};

const NS: &str = "afk";
const RUN: &str = "acme-app-7-1";
const REPO: &str = "acme/app";
const ROOT: &str = "/data/acme__app";

struct Harness {
    api: FakeApiServer,
    journal: Arc<Journal>,
    t3: Arc<MemoryT3>,
    github: Arc<MemoryGitHub>,
    ctx: Arc<Context>,
}

fn stored(api: &FakeApiServer) -> Value {
    api.with_store(|s| s.get("afk.dev/v1alpha1", "AfkRun", NS, RUN))
        .map_or(Value::Null, |r| r["status"].clone())
}

impl Harness {
    async fn new() -> Self {
        let api = crate::controller::test_api::with_crds();
        let client = api.client();
        let config: AfkConfig = serde_json::from_value(json!({
            "apiVersion": "afk.dev/v1alpha1", "kind": "AfkConfig",
            "metadata": {"name": "team", "namespace": NS},
            "spec": {
                "suspend": false,
                "allowlist": [{"repo": REPO, "defaultBranch": "main", "workspaceRoot": ROOT}],
                "tracker": {"github": {"tokenSecretRef": {"name": "gh", "key": "token"}}},
                "executor": {"t3": {"url": "http://t3", "tokenSecretRef": {"name": "t3", "key": "token"}, "model": "m"}},
            }
        }))
        .unwrap();
        Api::<AfkConfig>::namespaced(client.clone(), NS)
            .create(&PostParams::default(), &config)
            .await
            .unwrap();
        let run: AfkRun = serde_json::from_value(json!({
            "apiVersion": "afk.dev/v1alpha1", "kind": "AfkRun",
            "metadata": {"name": RUN, "namespace": NS},
            "spec": {"configRef": "team", "repo": REPO, "issue": 7, "attempt": 1, "title": "Fix it",
                     "taskSnapshot": {"title": "Fix it", "body": "please", "sha256": "a".repeat(64)}}
        }))
        .unwrap();
        Api::<AfkRun>::namespaced(client.clone(), NS)
            .create(&PostParams::default(), &run)
            .await
            .unwrap();

        let journal = Journal::new();
        let witness = api.clone();
        journal.witness(move || stored(&witness));
        let github = Arc::new(MemoryGitHub::new(journal.clone()));
        github.add_repo(REPO, "main");
        github.add_issue(REPO, 7, "Fix it", &["ready-for-agent"]);
        let settings = Settings {
            label_resync: std::time::Duration::ZERO,
            ..Settings::default()
        };
        let ctx = Arc::new(Context::new(
            client,
            Arc::new(Agents::embedded().unwrap()),
            Metrics::new(),
            settings,
        ));
        Self {
            journal: journal.clone(),
            t3: Arc::new(MemoryT3::new(journal)),
            github,
            api,
            ctx,
        }
    }

    /// A fresh reconcile of the run as stored (as after a restart: nothing cached but the
    /// adapters' own state).
    async fn reconcile(&self) -> RunReconcile {
        let client = self.ctx.client.clone();
        let runs: Api<AfkRun> = Api::namespaced(client.clone(), NS);
        let run = runs.get(RUN).await.unwrap();
        let config = Api::<AfkConfig>::namespaced(client, NS)
            .get("team")
            .await
            .unwrap();
        let notifier = Arc::new(MemoryNotifier::new(self.journal.clone()));
        RunReconcile {
            status: run.status.clone().unwrap_or_default(),
            written: run.status.clone(),
            budgets: observe::budgets(&config).unwrap(),
            entry: config.spec.allowlist[0].clone(),
            run: Arc::new(run),
            api: runs,
            config,
            adapters: Arc::new(Adapters::from_parts(
                self.github.clone(),
                self.t3.clone(),
                vec![notifier],
                Arc::new(NoDeployments),
            )),
            ctx: self.ctx.clone(),
            now: Timestamp::now(),
        }
    }

    async fn step(&self) -> Result<Action, Error> {
        self.reconcile().await.run_step().await
    }

    fn status(&self) -> Value {
        stored(&self.api)
    }

    /// The journal entry of the first effect starting with `prefix`.
    fn entry(&self, prefix: &str) -> Entry {
        self.journal
            .entries()
            .into_iter()
            .find(|e| e.effect.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {:?}", self.journal.effects()))
    }

    fn patch_run(&self, f: impl FnOnce(&mut Value)) {
        self.api.with_store(|s| {
            let mut run = s.get("afk.dev/v1alpha1", "AfkRun", NS, RUN).unwrap();
            f(&mut run);
            s.seed(run);
        });
    }

    /// Dispatch, then the agent pushes a commit whose build fails and ends its turn.
    async fn dispatched_and_red(&self) {
        self.step().await.unwrap();
        let thread = self.status()["threadId"].as_str().unwrap().to_string();
        self.github
            .push_commit(REPO, "abc123", &format!("Fix it\n\nAFK-Run: {RUN}"));
        self.github.check("abc123", "build", "failure");
        self.t3.end_turn(&thread, "completed", Timestamp::now());
    }
}

#[tokio::test]
async fn dispatch_saves_the_intent_before_each_command_and_the_receipt_after() {
    let h = Harness::new().await;
    h.step().await.unwrap();
    assert_eq!(
        h.journal
            .effects()
            .iter()
            .filter(|e| e.starts_with("t3 "))
            .count(),
        3,
        "{:?}",
        h.journal.effects()
    );
    let intent = h.status()["dispatch"].clone();
    for (effect, id) in [
        ("t3 project.create", "projectCommandId"),
        ("t3 thread.create", "threadCommandId"),
        ("t3 thread.turn.start", "turnCommandId"),
    ] {
        let entry = h.entry(effect);
        let then = &entry.witnessed;
        assert_eq!(
            entry.effect,
            format!("{effect} {}", intent[id].as_str().unwrap()),
            "sent with the recorded id"
        );
        assert_eq!(
            then["dispatch"][id], intent[id],
            "{effect}: intent on record first"
        );
        assert!(then["dispatch"]["sentAt"].is_null(), "{effect}: no receipt yet");
        assert_eq!(then["phase"], "Dispatching");
    }
    let now = h.status();
    assert!(now["dispatch"]["sentAt"].is_string(), "receipt saved after");
    assert_eq!(now["phase"], "Working");
}

#[tokio::test]
async fn a_reply_lost_after_the_turn_start_is_repeated_once_from_the_receipt() {
    let h = Harness::new().await;
    h.t3.fault_on("thread.turn.start", T3Fault::ReplyLost);
    assert!(h.step().await.is_err(), "a lost reply is transient");
    assert!(
        h.status()["dispatch"]["sentAt"].is_null(),
        "no receipt without an answer"
    );
    assert_eq!(h.journal.count("t3 thread.turn.start"), 1, "T3 applied it once");
    h.step().await.unwrap();
    assert_eq!(
        h.journal.count("t3 thread.turn.start"),
        1,
        "the repeat is answered from the receipt"
    );
    assert_eq!(h.status()["phase"], "Working");
    assert!(h.status()["dispatch"]["sentAt"].is_string());
}

#[tokio::test]
async fn t3_down_after_the_intent_resends_the_same_ids_after_a_restart() {
    let h = Harness::new().await;
    h.t3.fault_on("thread.create", T3Fault::Down);
    assert!(h.step().await.is_err());
    let intent = h.status()["dispatch"].clone();
    assert!(
        intent["threadCommandId"].is_string(),
        "the intent survives the failure"
    );
    assert_eq!(
        h.journal.effects(),
        ["t3 project.create ".to_string() + intent["projectCommandId"].as_str().unwrap()]
    );
    // A new process reads the intent back and sends exactly the recorded ids.
    h.step().await.unwrap();
    assert_eq!(
        h.status()["dispatch"]["threadCommandId"],
        intent["threadCommandId"]
    );
    assert_eq!(h.journal.count("t3 project.create"), 1);
    assert_eq!(h.journal.count("t3 thread.create"), 1);
    assert_eq!(h.journal.count("t3 thread.turn.start"), 1);
}

#[tokio::test]
async fn a_project_id_taken_elsewhere_records_a_fresh_id_before_the_retry() {
    let h = Harness::new().await;
    // The derived project id exists, on another root: T3 refuses the create.
    h.t3.add_project(&crate::policy::naming::project_id(ROOT, 0), "/data/other");
    let err = h.step().await.unwrap_err();
    assert_eq!(err.category(), "project_retry");
    let retry = h.status()["dispatch"]["projectCommandId"].clone();
    assert!(!retry.as_str().unwrap().is_empty());
    assert_eq!(h.journal.count("t3 "), 0, "the refused create applied nothing");
    h.step().await.unwrap();
    assert_eq!(
        h.entry("t3 project.create").effect,
        format!("t3 project.create {}", retry.as_str().unwrap()),
        "the retry uses the id recorded before it"
    );
    assert_eq!(h.status()["phase"], "Working");
}

#[tokio::test]
async fn a_refused_token_fails_the_run_and_rings_once_after_recording_the_intent() {
    let h = Harness::new().await;
    h.t3.fault_on("project.create", T3Fault::Unauthorized);
    assert!(matches!(h.step().await, Ok(a) if a == Action::await_change()));
    let status = h.status();
    assert_eq!(status["phase"], "Failed");
    assert_eq!(status["reason"], "ExecutorUnauthorized");
    let bell = h.entry("notify ");
    assert!(
        bell.witnessed["effects"]["notificationIntentAt"].is_string(),
        "the bell's intent is on record before it rings"
    );
    assert_ne!(bell.witnessed["effects"]["notification"], true);
    assert_eq!(status["effects"]["notification"], true, "delivery recorded after");
    assert!(h.github.labels(REPO, 7).contains(&"ready-for-human".to_string()));
    // Terminal: another step does nothing external.
    let before = h.journal.effects();
    h.step().await.unwrap();
    assert_eq!(h.journal.effects(), before);
}

#[tokio::test]
async fn the_in_progress_label_follows_the_turn_start_and_heals_when_removed() {
    let h = Harness::new().await;
    h.step().await.unwrap();
    let label = h.entry("github add-label agent-in-progress");
    assert!(
        label.witnessed["dispatch"]["sentAt"].is_string(),
        "the visible lock only after the turn started"
    );
    assert_eq!(h.status()["effects"]["inProgressLabel"], true);
    // A human (or a lost write) removes it: the next step converges it back, once.
    h.github.remove_label(REPO, 7, "agent-in-progress").await.unwrap();
    h.step().await.unwrap();
    assert!(
        h.github
            .labels(REPO, 7)
            .contains(&"agent-in-progress".to_string())
    );
    h.step().await.unwrap();
    assert_eq!(h.journal.count("github add-label agent-in-progress"), 2);
}

#[tokio::test]
async fn a_corrective_turn_is_recorded_before_it_is_sent_and_confirmed_after() {
    let h = Harness::new().await;
    h.dispatched_and_red().await;
    h.step().await.unwrap();
    let status = h.status();
    assert_eq!(status["phase"], "FixingForward", "{status}");
    let turn = &status["fixForward"]["lastTurn"];
    let sent = h.entry(&format!(
        "t3 thread.turn.start {}",
        turn["commandId"].as_str().unwrap()
    ));
    let then = &sent.witnessed["fixForward"];
    assert_eq!(then["lastTurn"]["commandId"], turn["commandId"]);
    assert_eq!(then["attempts"], 1);
    assert!(
        then["lastTurn"]["sentAt"].is_null(),
        "intent on record, no receipt yet"
    );
    assert!(turn["sentAt"].is_string(), "receipt saved after");
    assert_eq!(turn["commit"], "abc123");
}

#[tokio::test]
async fn a_corrective_turn_lost_in_flight_is_resent_first_and_applied_once() {
    let h = Harness::new().await;
    h.dispatched_and_red().await;
    h.t3.fault_on("thread.turn.start", T3Fault::ReplyLost);
    assert!(h.step().await.is_err());
    let turn = h.status()["fixForward"]["lastTurn"].clone();
    assert!(turn["sentAt"].is_null());
    let id = format!("t3 thread.turn.start {}", turn["commandId"].as_str().unwrap());
    assert_eq!(h.journal.count(&id), 1);
    h.step().await.unwrap();
    assert_eq!(
        h.journal.count(&id),
        1,
        "resent from the record, answered from the receipt"
    );
    assert!(h.status()["fixForward"]["lastTurn"]["sentAt"].is_string());
    assert_eq!(
        h.status()["fixForward"]["attempts"],
        1,
        "no second attempt minted"
    );
}

#[tokio::test]
async fn a_cancel_interrupts_after_recording_it_and_does_the_terminal_set_once() {
    let h = Harness::new().await;
    h.step().await.unwrap();
    h.patch_run(|r| r["spec"]["cancel"] = json!(true));
    h.step().await.unwrap();
    let status = h.status();
    assert_eq!(status["phase"], "Cancelled", "{status}");
    let interrupt = h.entry("t3 thread.turn.interrupt");
    assert_eq!(
        interrupt.effect,
        format!(
            "t3 thread.turn.interrupt {}",
            status["interrupt"]["commandId"].as_str().unwrap()
        )
    );
    assert!(interrupt.witnessed["interrupt"]["commandId"].is_string());
    assert_ne!(interrupt.witnessed["effects"]["interrupt"], true);
    assert_eq!(status["effects"]["interrupt"], true);
    for effect in ["labels", "comment", "notification"] {
        assert_eq!(status["effects"][effect], true, "{effect}");
    }
    assert_eq!(h.journal.count("notify "), 0, "a human cancelled: no bell");
    assert!(
        h.github.labels(REPO, 7).contains(&"ready-for-human".to_string()),
        "handed back to a human"
    );
    assert!(h.github.is_open(REPO, 7), "a cancel does not close the issue");
    let before = h.journal.effects();
    h.step().await.unwrap();
    assert_eq!(h.journal.effects(), before, "terminal: nothing more");
}

#[tokio::test]
async fn an_interrupt_lost_in_flight_is_not_sent_twice() {
    let h = Harness::new().await;
    h.step().await.unwrap();
    h.patch_run(|r| r["spec"]["cancel"] = json!(true));
    h.t3.fault_on("thread.turn.interrupt", T3Fault::ReplyLost);
    assert!(h.step().await.is_err());
    assert!(
        h.status()["interrupt"]["commandId"].is_string(),
        "intent on record"
    );
    assert_ne!(h.status()["effects"]["interrupt"], true);
    h.step().await.unwrap();
    assert_eq!(h.journal.count("t3 thread.turn.interrupt"), 1);
    assert_eq!(h.status()["phase"], "Cancelled");
}

/// The answer a human wrote after the reconcile read the annotation (say, a corrected one after
/// an `InvalidAnswer` Event) survives the removal of the one it read; the one it read does not.
#[tokio::test]
async fn removing_the_answer_read_never_deletes_a_newer_one() {
    let h = Harness::new().await;
    let annotate = |value: &str| {
        let value = value.to_string();
        h.patch_run(move |r| r["metadata"]["annotations"] = json!({"afk.dev/answer": value}));
    };
    let stored_answer = || {
        h.api
            .with_store(|s| s.get("afk.dev/v1alpha1", "AfkRun", NS, RUN))
            .unwrap()["metadata"]["annotations"]["afk.dev/answer"]
            .clone()
    };
    annotate(r#"{"id":"req-1","text":"sure"}"#);
    let read_before = h.reconcile().await;
    annotate(r#"{"id":"req-1","decision":"decline"}"#);
    read_before.remove_answer_annotation().await.unwrap();
    assert_eq!(
        stored_answer(),
        r#"{"id":"req-1","decision":"decline"}"#,
        "the newer answer stays"
    );
    h.reconcile().await.remove_answer_annotation().await.unwrap();
    assert_eq!(stored_answer(), Value::Null, "the answer read is removed");
}
