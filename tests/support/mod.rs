//! Shared end-to-end harness: the fake API server with our CRDs, the contract fakes, an armed
//! AfkConfig pointing at them, and helpers to play the agent (push commits, finish turns) and
//! the cluster (roll a Deployment out).
#![allow(dead_code)]

pub mod argo;
pub mod process;

use std::{sync::Arc, time::Duration};

use afk_operator::{
    agents::Agents,
    controller::{self, Context, Settings},
    crd::{self, AfkConfig, Phase},
    metrics::Metrics,
};
use afk_testkit::{
    apiserver::FakeApiServer,
    github::{FakeCommit, FakeGitHub},
    notify::FakeNotify,
    t3::FakeT3,
};
use kube::{Api, api::PostParams};
use serde_json::{Value, json};

pub const NS: &str = "afk";
pub const GH_TOKEN: &str = "ghp_e2e_token";
pub const T3_TOKEN: &str = "t3_e2e_token";
pub const NTFY_TOKEN: &str = "ntfy_e2e_token";
pub const REPO: &str = "acme/app";

pub struct World {
    pub api: FakeApiServer,
    pub t3: FakeT3,
    pub gh: FakeGitHub,
    pub notify: FakeNotify,
    controllers: Option<tokio::task::JoinHandle<()>>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    pub trigger: tokio::sync::broadcast::Sender<afk_operator::controller::Trigger>,
    /// Controller settings used by the next `start`.
    pub settings: Settings,
}

pub fn agents() -> Arc<Agents> {
    Arc::new(Agents::load_dir(&std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("agents")).unwrap())
}

pub fn fast_settings() -> Settings {
    Settings {
        run_requeue: Duration::from_millis(100),
        github_min_mutation_interval: Duration::ZERO,
        secret_refresh: Duration::from_millis(200),
        max_backoff: Duration::from_millis(400),
        notify_retry: afk_operator::adapters::retry::RetryPolicy {
            attempts: 2,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(10),
        },
        config_trigger_window: Duration::from_millis(200),
        label_resync: Duration::ZERO,
    }
}

pub fn config_json(world_urls: (&str, &str, &str), extra: Value) -> Value {
    let (gh, t3, ntfy) = world_urls;
    let mut spec = json!({
        "suspend": false,
        "allowlist": [{"repo": REPO, "defaultBranch": "main", "rollout": {"namespace": "app", "deployment": "app", "container": "app"}}],
        "tracker": {"github": {"apiUrl": gh, "tokenSecretRef": {"name": "gh", "key": "token"}}},
        "executor": {"t3": {"url": t3, "publicUrl": "https://t3.example.com", "tokenSecretRef": {"name": "t3", "key": "token"}, "model": "claude-sonnet-4-5"}},
        "notify": {"ntfy": {"url": ntfy, "topic": "afk", "tokenSecretRef": {"name": "ntfy", "key": "token"}}},
        "pollInterval": "10s",
        "budgets": {"preEscalationGrace": "1s"}
    });
    merge(&mut spec, extra);
    json!({"apiVersion": "afk.dev/v1alpha1", "kind": "AfkConfig", "metadata": {"name": "team", "namespace": NS}, "spec": spec})
}

pub fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn secret(name: &str, value: &str) -> Value {
    use std::io::Write;
    let mut enc = Vec::new();
    {
        // Base64 by hand keeps the harness dependency-free.
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        for chunk in value.as_bytes().chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            let chars = [
                T[(n >> 18) as usize & 63],
                T[(n >> 12) as usize & 63],
                T[(n >> 6) as usize & 63],
                T[n as usize & 63],
            ];
            let keep = chunk.len() + 1;
            enc.write_all(&chars[..keep]).unwrap();
            for _ in keep..4 {
                enc.write_all(b"=").unwrap();
            }
        }
    }
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS}, "data": {"token": String::from_utf8(enc).unwrap()}})
}

impl World {
    /// Fakes up, secrets and the Deployment seeded, the issue labelled by a trusted user.
    pub async fn new() -> Self {
        let mut api = FakeApiServer::new();
        for c in crd::all() {
            api = api.with_crd(&serde_json::to_value(c).unwrap());
        }
        let t3 = FakeT3::start(T3_TOKEN).await;
        t3.add_dir("/data/acme__app");
        let gh = FakeGitHub::start(GH_TOKEN).await;
        gh.add_repo(REPO, "main");
        gh.repo(REPO, |r| {
            r.roles.insert("alice".into(), "write".into());
            r.roles.insert("tri".into(), "triage".into());
        });
        let notify = FakeNotify::start(Some(NTFY_TOKEN)).await;
        api.with_store(|s| {
            s.seed(secret("gh", GH_TOKEN));
            s.seed(secret("t3", T3_TOKEN));
            s.seed(secret("ntfy", NTFY_TOKEN));
            s.seed(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app", "namespace": "app"},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "app"}},
                         "template": {"metadata": {"labels": {"app": "app"}}, "spec": {"containers": [{"name": "app", "image": "ghcr.io/acme/app:old0000"}]}}}}));
        });
        let (trigger, _) = tokio::sync::broadcast::channel(16);
        Self {
            settings: fast_settings(),
            api,
            t3,
            gh,
            notify,
            controllers: None,
            stop: None,
            trigger,
        }
    }

    pub fn urls(&self) -> (String, String, String) {
        (self.gh.url(), self.t3.url(), self.notify.ntfy_url())
    }

    pub async fn apply_config(&self, extra: Value) {
        let (gh, t3, ntfy) = self.urls();
        let obj: AfkConfig = serde_json::from_value(config_json((&gh, &t3, &ntfy), extra)).unwrap();
        let api: Api<AfkConfig> = Api::namespaced(self.api.client(), NS);
        api.create(&PostParams::default(), &obj).await.unwrap();
    }

    pub fn label_issue(&self, number: u64, body: &str, labeler: &str) {
        self.gh.add_labeled_issue(
            REPO,
            number,
            &format!("Issue {number}"),
            body,
            "ready-for-agent",
            labeler,
            &jiff::Timestamp::now().to_string(),
        );
    }

    /// A trusted human re-applies the ready label to an existing issue (a new `labeled` event;
    /// the issue's other labels and comments stay).
    pub fn relabel(&self, number: u64, labeler: &str) {
        self.gh.repo(REPO, |r| {
            let issue = r.issues.get_mut(&number).unwrap();
            if !issue.labels.iter().any(|l| l == "ready-for-agent") {
                issue.labels.push("ready-for-agent".into());
            }
            issue.events.push(afk_testkit::github::FakeEvent {
                event: "labeled".into(),
                label: Some("ready-for-agent".into()),
                actor: labeler.into(),
                actor_type: "User".into(),
                created_at: jiff::Timestamp::now().to_string(),
            });
        });
    }

    /// Ask for a poll of the AfkConfig and wait until one finished (its `lastPollTime` moved).
    pub async fn poll_now(&self) {
        let polled = |w: &World| w.config_obj()["status"]["lastPollTime"].clone();
        let before = polled(self);
        for _ in 0..240 {
            let _ = self.trigger.send(afk_operator::controller::Trigger::Config(
                kube::runtime::reflector::ObjectRef::new("team").within(NS),
            ));
            for _ in 0..10 {
                if polled(self) != before {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        panic!("no poll finished within 60 s");
    }

    /// Start (or restart) the controllers in process with a fresh context.
    pub fn start(&mut self) {
        self.stop_controllers();
        let ctx = Arc::new(Context::new(
            self.api.client(),
            agents(),
            Metrics::new(),
            self.settings.clone(),
        ));
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let trigger = self.trigger.subscribe();
        self.controllers = Some(tokio::spawn(async move {
            controller::run(ctx, Some(NS.into()), ready, trigger, async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            })
            .await;
        }));
        self.stop = Some(stop_tx);
    }

    /// Kill the controllers at once (no graceful drain), as a crash would.
    pub fn stop_controllers(&mut self) {
        if let Some(h) = self.controllers.take() {
            h.abort();
        }
        self.stop = None;
    }

    pub fn run_obj(&self, name: &str) -> Option<Value> {
        self.api
            .with_store(|s| s.get("afk.dev/v1alpha1", "AfkRun", NS, name))
    }

    pub fn config_obj(&self) -> Value {
        self.api
            .with_store(|s| s.get("afk.dev/v1alpha1", "AfkConfig", NS, "team"))
            .unwrap()
    }

    /// `(status, reason, message)` of an AfkConfig condition.
    pub fn config_condition(&self, type_: &str) -> Option<(String, String, String)> {
        let status = self.config_obj()["status"].clone();
        status["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_)
            .map(|c| {
                (
                    c["status"].as_str().unwrap_or_default().to_string(),
                    c["reason"].as_str().unwrap_or_default().to_string(),
                    c["message"].as_str().unwrap_or_default().to_string(),
                )
            })
    }

    /// Events about `kind/name`, as `(type, reason, note)`.
    pub fn events_for(&self, kind: &str, name: &str) -> Vec<(String, String, String)> {
        self.api
            .with_store(|s| s.list("events.k8s.io/v1", "Event", NS))
            .into_iter()
            .filter(|e| e["regarding"]["kind"] == kind && e["regarding"]["name"] == name)
            .map(|e| {
                (
                    e["type"].as_str().unwrap_or_default().to_string(),
                    e["reason"].as_str().unwrap_or_default().to_string(),
                    e["note"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// Replace a Secret's value (as `kubectl create secret … --dry-run -o yaml | apply` would).
    pub fn set_secret(&self, name: &str, value: &str) {
        let s = secret(name, value);
        self.api.with_store(|st| {
            st.modify("v1", "Secret", NS, name, |o| o["data"] = s["data"].clone());
        });
    }

    pub fn phase(&self, name: &str) -> Option<String> {
        self.run_obj(name)
            .and_then(|r| r["status"]["phase"].as_str().map(str::to_string))
    }

    pub async fn wait_for<F: FnMut(&World) -> bool>(&self, what: &str, mut f: F) {
        // 60 s: only a failing test waits this long, and the whole suite (real CLI, Chromium)
        // shares two cores with these controllers.
        for _ in 0..2400 {
            if f(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "timed out waiting for {what}; runs: {:#?}; config status: {:#}",
            self.api
                .with_store(|s| s.list("afk.dev/v1alpha1", "AfkRun", NS))
                .iter()
                .map(|r| r["status"].clone())
                .collect::<Vec<_>>(),
            self.config_obj()["status"]
        );
    }

    pub async fn wait_phase(&self, run: &str, phase: Phase) {
        self.wait_for(&format!("{run} to be {}", phase.as_str()), |w| {
            w.phase(run).as_deref() == Some(phase.as_str())
        })
        .await;
    }

    /// The agent pushes a commit carrying the run's trailer; returns its SHA.
    pub fn push(&self, run: &str, n: u32, checks: &str) -> String {
        let sha = format!("{n:07x}{}", "d".repeat(33));
        let message = format!("Fix the thing (try {n})\n\nCloses #42\nAFK-Run: {run}");
        self.gh.repo(REPO, |r| {
            r.commits.insert(
                0,
                FakeCommit {
                    sha: sha.clone(),
                    message,
                    date: jiff::Timestamp::now().to_string(),
                },
            );
            let conclusion = if checks == "success" { "success" } else { "failure" };
            r.check_runs.insert(
                sha.clone(),
                vec![("test".into(), "completed".into(), Some(conclusion.into()))],
            );
        });
        sha
    }

    /// Deploy `sha` and finish the rollout, as the Deployment controller would.
    pub fn roll_out(&self, sha: &str) {
        self.api.with_store(|s| {
            s.modify("apps/v1", "Deployment", "app", "app", |d| {
                d["spec"]["template"]["spec"]["containers"][0]["image"] =
                    json!(format!("ghcr.io/acme/app:{}", &sha[..7]));
                let g = d["metadata"]["generation"].as_i64().unwrap_or(1);
                d["metadata"]["generation"] = json!(g + 1);
            });
            s.mark_deployment_rolled_out("app", "app");
        });
    }

    /// Wait until exactly these doorbell titles have rung, in order.
    pub async fn wait_bells(&self, titles: &[&str]) {
        self.wait_for(&format!("the bells {titles:?}"), |w| w.ntfy_titles() == titles)
            .await;
    }

    /// Wait until issue `n` carries exactly these labels.
    pub async fn wait_labels(&self, n: u64, labels: &[&str]) {
        self.wait_for(&format!("issue #{n} labelled {labels:?}"), |w| {
            w.issue_labels(n) == labels
        })
        .await;
    }

    /// The agent ends its current turn normally (as T3 shows it: turn completed, session ready).
    pub fn end_turn(&self, run: &str) {
        self.t3.finish_turn(&self.thread_id(run), "completed", "ready");
    }

    /// How many times the operator has asked T3 for the shell (each run reconcile asks once).
    pub fn shell_polls(&self) -> usize {
        self.t3.with(|s| {
            s.requests
                .iter()
                .filter(|r| r.path.starts_with("/api/orchestration/shell"))
                .count()
        })
    }

    /// Wait until the operator has looked at the thread `n` more times (reconciles happened).
    pub async fn wait_reconciles(&self, n: usize) {
        let start = self.shell_polls();
        self.wait_for(&format!("{n} more shell polls"), |w| w.shell_polls() >= start + n)
            .await;
    }

    pub fn thread_id(&self, run: &str) -> String {
        self.run_obj(run).unwrap()["status"]["threadId"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn issue_labels(&self, n: u64) -> Vec<String> {
        self.gh.repo(REPO, |r| r.issues[&n].labels.clone())
    }

    pub fn ntfy_titles(&self) -> Vec<String> {
        self.notify.with(|s| {
            s.ntfy
                .iter()
                .map(|(_, r)| r.header("title").unwrap_or_default().to_string())
                .collect()
        })
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop_controllers();
    }
}
