//! The harness of the AfkConfig poll tests: a fake API server with the CRDs, an armed config
//! over two repos and its Secrets, the in-memory GitHub and T3 installed in the adapter cache,
//! and readers of what a human sees (conditions, queue, runs, Events).

use std::{sync::Arc, time::Duration};

use afk_testkit::apiserver::{FakeApiServer, RequestLog};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
    runtime::controller::Action,
};
use serde_json::{Value, json};

use crate::{
    adapters::memory::{Journal, MemoryGitHub, MemoryT3, NoDeployments},
    agents::Agents,
    controller::{Adapters, Context, Error, Settings},
    crd::{AfkConfig, Permission},
    metrics::Metrics,
};

pub(super) const NS: &str = "afk";
pub(super) const CONFIG: &str = "team";
pub(super) const APP: &str = "acme/app";
pub(super) const WEB: &str = "acme/web";
const READY: &str = "ready-for-agent";

pub(super) struct Harness {
    api: FakeApiServer,
    pub(super) github: Arc<MemoryGitHub>,
    pub(super) t3: Arc<MemoryT3>,
    pub(super) ctx: Arc<Context>,
}

impl Harness {
    /// An armed config over `acme/app` and `acme/web`, both its Secrets, backends that accept
    /// their tokens, no issues yet. `alice` may write to both repos, `mallory` only read.
    pub(super) async fn new() -> Self {
        Self::build(|_| {}, &["gh", "t3"]).await
    }

    /// The config of [`Harness::new`] as `edit` leaves it, with only the Secrets named.
    pub(super) async fn build(edit: impl FnOnce(&mut Value), secrets: &[&str]) -> Self {
        let api = crate::controller::test_api::with_crds();
        let client = api.client();
        let mut config = json!({
            "apiVersion": "afk.dev/v1alpha1", "kind": "AfkConfig",
            "metadata": {"name": CONFIG, "namespace": NS},
            "spec": {
                "suspend": false,
                "allowlist": [{"repo": APP}, {"repo": WEB}],
                "tracker": {"github": {"tokenSecretRef": {"name": "gh", "key": "token"}}},
                "executor": {"t3": {"url": "http://t3", "tokenSecretRef": {"name": "t3", "key": "token"}, "model": "m"}},
            }
        });
        edit(&mut config);
        let config = Api::<AfkConfig>::namespaced(client.clone(), NS)
            .create(&PostParams::default(), &serde_json::from_value(config).unwrap())
            .await
            .unwrap();
        let journal = Journal::new();
        let github = Arc::new(MemoryGitHub::new(journal.clone()));
        for repo in [APP, WEB] {
            github.add_repo(repo, "main");
            github.set_permission(repo, "alice", Permission::Write);
            github.set_permission(repo, "mallory", Permission::Read);
        }
        let t3 = Arc::new(MemoryT3::new(journal));
        let ctx = Arc::new(Context::new(
            client,
            Arc::new(Agents::embedded().unwrap()),
            Metrics::new(),
            Settings::default(),
        ));
        let adapters = Adapters::from_parts(github.clone(), t3.clone(), vec![], Arc::new(NoDeployments));
        ctx.adapters.install(&config, adapters).unwrap();
        let h = Self { api, github, t3, ctx };
        for name in secrets {
            h.add_secret(name).await;
        }
        h
    }

    pub(super) async fn add_secret(&self, name: &str) {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": NS}, "data": {"token": "c2VjcmV0"},
        }))
        .unwrap();
        Api::<Secret>::namespaced(self.ctx.client.clone(), NS)
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }

    /// An open issue carrying the ready label, which `by` (a User) applied just now.
    pub(super) fn ready(&self, repo: &str, number: u64, title: &str, by: &str) {
        self.github.add_issue(repo, number, title, &[READY]);
        let now = Timestamp::now();
        self.github.label_event(repo, number, READY, by, "User", now);
    }

    /// One poll of the config as stored (as after a restart: nothing cached but the adapters).
    pub(super) async fn reconcile(&self) -> Result<Action, Error> {
        self.reconcile_as(|_| {}).await
    }

    /// One poll of the config as stored, edited as the controller would be handed it.
    pub(super) async fn reconcile_as(&self, edit: impl FnOnce(&mut AfkConfig)) -> Result<Action, Error> {
        let configs = Api::<AfkConfig>::namespaced(self.ctx.client.clone(), NS);
        let mut config = configs.get(CONFIG).await.unwrap();
        edit(&mut config);
        super::super::reconcile(Arc::new(config), self.ctx.clone()).await
    }

    /// A merge patch of the config, as `kubectl patch` (or `kubectl annotate`) sends it.
    pub(super) async fn patch_config(&self, patch: Value) {
        Api::<AfkConfig>::namespaced(self.ctx.client.clone(), NS)
            .patch(CONFIG, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    pub(super) fn status(&self) -> Value {
        self.api
            .with_store(|s| s.get("afk.dev/v1alpha1", "AfkConfig", NS, CONFIG))
            .map_or(Value::Null, |c| c["status"].clone())
    }

    pub(super) fn condition(&self, type_: &str) -> Value {
        let status = self.status();
        let conditions = status["conditions"].as_array().cloned().unwrap_or_default();
        conditions
            .into_iter()
            .find(|c| c["type"] == type_)
            .unwrap_or(Value::Null)
    }

    #[track_caller]
    pub(super) fn assert_condition(&self, type_: &str, status: &str, reason: &str) {
        let c = self.condition(type_);
        let found = (c["status"].as_str(), c["reason"].as_str());
        assert_eq!(found, (Some(status), Some(reason)), "{type_}: {c}");
    }

    pub(super) fn message(&self, type_: &str) -> String {
        let c = self.condition(type_);
        c["message"].as_str().unwrap_or_default().to_string()
    }

    pub(super) fn run(&self, name: &str) -> Value {
        let run = self
            .api
            .with_store(|s| s.get("afk.dev/v1alpha1", "AfkRun", NS, name));
        run.unwrap_or(Value::Null)
    }

    /// The AfkRuns in the namespace, by name.
    pub(super) fn run_names(&self) -> Vec<String> {
        let runs = self.api.with_store(|s| s.list("afk.dev/v1alpha1", "AfkRun", NS));
        let mut names: Vec<String> = runs
            .iter()
            .map(|r| r["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    }

    /// How many requests to the API server `matches`.
    pub(super) fn sent(&self, matches: impl Fn(&RequestLog) -> bool) -> usize {
        self.api
            .with_store(|s| s.log.iter().filter(|r| matches(r)).count())
    }

    /// How many times an Event was published (a repeat folded into a series included).
    pub(super) fn publishes(&self) -> usize {
        self.sent(|r| r.path.contains("/events") && matches!(r.method.as_str(), "POST" | "PATCH"))
    }

    /// The Events on record (what `kubectl describe` lists), oldest first, as `type reason: note`.
    pub(super) fn events(&self) -> Vec<String> {
        let mut events = self.api.with_store(|s| s.list("events.k8s.io/v1", "Event", NS));
        events.sort_by_key(|e| {
            e["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|v| v.parse::<u64>().ok())
        });
        let text = |e: &Value, k: &str| e[k].as_str().unwrap_or_default().to_string();
        events
            .iter()
            .map(|e| format!("{} {}: {}", text(e, "type"), text(e, "reason"), text(e, "note")))
            .collect()
    }

    /// `status.queue` as `repo#issue: reason`.
    pub(super) fn queue(&self) -> Vec<String> {
        let status = self.status();
        let entries = status["queue"].as_array().cloned().unwrap_or_default();
        let text = |q: &Value| q.as_str().unwrap_or_default().to_string();
        entries
            .iter()
            .map(|q| format!("{}#{}: {}", text(&q["repo"]), q["issue"], text(&q["reason"])))
            .collect()
    }

    #[track_caller]
    pub(super) fn assert_asked_nothing(&self) {
        assert_eq!(self.github.requests(), Vec::<&str>::new(), "GitHub was asked");
        assert_eq!(self.t3.requests(), Vec::<&str>::new(), "T3 was asked");
    }
}

/// When the poll asked to run again (kube's `Action` keeps it private; its `Debug` shows it).
pub(super) fn requeue_after(action: &Action) -> Option<Duration> {
    let text = format!("{action:?}");
    let inner = text
        .strip_prefix("Action { requeue_after: Some(")?
        .strip_suffix(") }")?;
    let (number, scale) = [("ns", 1e-9), ("µs", 1e-6), ("ms", 1e-3), ("s", 1.0)]
        .into_iter()
        .find_map(|(unit, scale)| inner.strip_suffix(unit).map(|n| (n, scale)))?;
    Some(Duration::from_secs_f64(number.parse::<f64>().ok()? * scale))
}
