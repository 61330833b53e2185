//! Process level: the `afk-playground` binary, in accelerated mode, plays its whole story with
//! the real controllers — disarmed until armed by a merge patch (what `kubectl patch` sends),
//! then Succeeded and closed, blocked-then-run, refused with its reason in `status.queue`,
//! Frozen with the doorbell, and the agent's question waiting for a human, answered, and the run
//! going on to Succeeded on the same thread. Every wait is on a
//! condition with a generous deadline (a loaded 2-core machine only makes it slower).

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use afk_operator::crd::{AfkConfig, AfkRun};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::json;

const NS: &str = "afk-system";

struct Playground {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Playground {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Playground {
    fn start(dir: &std::path::Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_afk-playground"))
            .args(["--fast", "--console-port", "0", "--dir"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn afk-playground");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self { child, lines }
    }

    fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    fn position(&self, needle: &str) -> Option<usize> {
        self.lines.lock().unwrap().iter().position(|l| l.contains(needle))
    }

    /// Wait until a printed line contains `needle`.
    async fn wait_line(&mut self, needle: &str, deadline: Duration) -> usize {
        let start = Instant::now();
        loop {
            if let Some(i) = self.position(needle) {
                return i;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "afk-playground exited ({status}) before printing {needle:?}:\n{}",
                    self.output()
                );
            }
            assert!(
                start.elapsed() < deadline,
                "no line {needle:?} within {deadline:?}:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn client(kubeconfig: &std::path::Path) -> kube::Client {
    let kc = Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_playground_story_reaches_its_end_states() {
    let dir = tempfile::tempdir().unwrap();
    let mut pg = Playground::start(dir.path());
    let minutes = |m: u64| Duration::from_secs(60 * m);
    pg.wait_line("waiting for you to arm", minutes(3)).await;
    let out = pg.output();
    assert!(out.contains("kubectl get afkruns -w"), "{out}");
    assert!(out.contains("kubectl describe afkc demo"), "{out}");
    assert!(out.contains("/console/"), "{out}");
    assert!(
        out.contains(r#"kubectl patch afkc demo --type merge -p '{"spec":{"suspend":false}}'"#),
        "{out}"
    );

    let client = client(&dir.path().join("kubeconfig")).await;
    let configs: Api<AfkConfig> = Api::namespaced(client.clone(), NS);
    let runs: Api<AfkRun> = Api::namespaced(client.clone(), NS);

    // Disarmed by default: the operator says so and dispatches nothing.
    pg.wait_line("AfkConfig demo: Armed=False (Suspended)", minutes(2))
        .await;
    assert!(runs.list(&ListParams::default()).await.unwrap().items.is_empty());

    // Arm it as the README says (kubectl patch sends exactly this merge patch).
    configs
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": false}})),
        )
        .await
        .unwrap();
    pg.wait_line("the story is complete", minutes(4)).await;

    // The end states, read from the cluster.
    let phase = |name: &str, runs: &[AfkRun]| {
        runs.iter()
            .find(|r| r.metadata.name.as_deref() == Some(name))
            .and_then(|r| r.status.as_ref())
            .and_then(|s| s.phase)
            .map(|p| p.as_str().to_string())
            .unwrap_or_default()
    };
    let all = runs.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(phase("demo-shop-1-1", &all), "Succeeded");
    assert_eq!(phase("demo-shop-2-1", &all), "Succeeded");
    assert_eq!(phase("demo-billing-7-1", &all), "Frozen");
    assert_eq!(phase("demo-billing-8-1", &all), "WaitingForHuman");
    assert!(
        !all.iter()
            .any(|r| r.spec.repo == "demo/shop" && r.spec.issue == 3),
        "the untrusted label never produced a run"
    );
    let frozen = all
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some("demo-billing-7-1"))
        .unwrap();
    let status = frozen.status.as_ref().unwrap();
    assert_eq!(status.reason.as_deref(), Some("FixForwardBudgetExhausted"));
    let asked = all
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some("demo-billing-8-1"))
        .unwrap();
    let question = asked
        .status
        .as_ref()
        .unwrap()
        .question
        .clone()
        .expect("status.question");
    assert!(
        question.text.contains("How should 1234.5 euros look?"),
        "{question:?}"
    );
    // The bell follows the status write that the story's end waits on: wait for it too.
    pg.wait_line("demo/billing#8 needs an answer", minutes(2)).await;

    // Refused with its reason in status.queue.
    let config = configs.get("demo").await.unwrap();
    let queue = serde_json::to_value(&config.status.as_ref().unwrap().queue).unwrap();
    let refused = queue
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["repo"] == "demo/shop" && q["issue"] == 3)
        .unwrap_or_else(|| panic!("demo/shop#3 is not in status.queue: {queue}"));
    assert!(
        refused["reason"].as_str().unwrap().contains("@tricia"),
        "{refused}"
    );

    // Blocked, then run: #2 waited in the queue while #1 was open, and its run was created
    // only after #1's run had finished and the issue was closed.
    let blocked = pg
        .position("queue: demo/shop#2 not dispatched: Blocked by #1")
        .expect("#2 was reported blocked");
    let closed = pg.position("github: demo/shop#1 closed").expect("#1 closed");
    let second = pg.position("run demo-shop-2-1 (demo/shop#2)").expect("#2 ran");
    assert!(blocked < second && closed < second, "{}", pg.output());
    let shop1 = all
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some("demo-shop-1-1"))
        .unwrap();
    let shop2 = all
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some("demo-shop-2-1"))
        .unwrap();
    let finished = shop1.status.as_ref().unwrap().finished_at.clone().unwrap().0;
    let created = shop2.metadata.creation_timestamp.clone().unwrap().0;
    // creationTimestamp has second precision.
    assert!(
        created.as_second() >= finished.as_second(),
        "{created} < {finished}"
    );

    // The doorbell rang for the frozen run (and was printed), with the high priority.
    let bell = pg
        .position("DOORBELL (ntfy, priority 4; Slack too): demo/billing#7 frozen")
        .map(|i| pg.lines.lock().unwrap()[i].clone());
    assert!(bell.is_some(), "{}", pg.output());
    pg.wait_line("github: demo/billing#7 handed back", minutes(2))
        .await;

    // Answer the question as `kubectl annotate` does: the same thread goes on, the agent pushes,
    // the run succeeds.
    let answer = format!(r#"{{"id":"{}","text":"1.234,50 €"}}"#, question.request_id);
    runs.patch(
        "demo-billing-8-1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"afk.dev/answer": answer}}})),
    )
    .await
    .unwrap();
    pg.wait_line("agent: demo-billing-8-1 got the answer", minutes(2))
        .await;
    pg.wait_line("run demo-billing-8-1 (demo/billing#8): Succeeded", minutes(2))
        .await;

    // Fixed forward on the same thread: the opening turn and two corrective turns, each
    // followed by a push that was judged; the freeze names the last one.
    let pushes: Vec<String> = pg
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("agent: demo-billing-7-1 pushed"))
        .cloned()
        .collect();
    assert_eq!(pushes.len(), 3, "{}", pg.output());
    let last = pushes[2]
        .split_once(" pushed ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap()
        .to_string();
    assert!(
        status.message.as_deref().unwrap_or_default().contains(&last),
        "frozen on the last push {last}: {:?}",
        status.message
    );
    assert_eq!(status.fix_forward.as_ref().map(|f| f.attempts), Some(2));

    // Events: the runs' and the AfkConfig's, readable through core/v1 as kubectl describe does.
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), NS);
    let deadline = Instant::now() + minutes(2);
    loop {
        let for_config = events
            .list(&ListParams::default().fields("involvedObject.kind=AfkConfig,involvedObject.name=demo"))
            .await
            .unwrap()
            .items;
        let for_frozen = events
            .list(&ListParams::default().fields("involvedObject.name=demo-billing-7-1"))
            .await
            .unwrap()
            .items;
        let frozen_event = for_frozen
            .iter()
            .any(|e| e.reason.as_deref() == Some("FixForwardBudgetExhausted"));
        if !for_config.is_empty() && frozen_event {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Events missing: config {for_config:?}, frozen run {for_frozen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
