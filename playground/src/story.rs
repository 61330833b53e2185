//! The demo world, the story's cast and the loop that plays everyone but the operator.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use afk_operator::crd::{self, AfkConfig};
use afk_testkit::{
    apiserver::{FakeApiServer, kubeconfig_text},
    github::{FakeCommit, FakeGitHub},
    notify::FakeNotify,
    t3::FakeT3,
    woodpecker::FakeWoodpecker,
};
use clap::Parser;
use kube::{Api, api::PostParams};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The namespace the operator and its AfkConfig live in (the kubeconfig's default namespace).
pub const NS: &str = "afk-system";
const CONFIG: &str = "demo";
const GH_TOKEN: &str = "ghp_playground";
const T3_TOKEN: &str = "t3_playground";
const WP_TOKEN: &str = "wp_playground";
const NTFY_TOKEN: &str = "tk_playground";
const SHOP: &str = "demo/shop";
const BILLING: &str = "demo/billing";
const SHOP_WOODPECKER_ID: u64 = 1;

/// How long the simulated people and machines take.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// From a turn start to the agent's push (or question).
    pub agent: Duration,
    /// From a push to the check run's conclusion.
    pub ci: Duration,
    /// The Woodpecker deploy pipeline.
    pub deploy: Duration,
    /// The Deployment rollout.
    pub rollout: Duration,
    /// `preEscalationGrace` on the AfkConfig.
    pub grace: &'static str,
    /// The operator's `--config-trigger-window-ms` (how soon a finished run frees its repo).
    pub trigger_window_ms: u64,
}

impl Pace {
    /// Slow enough to follow in `kubectl get afkruns -w`: the story takes about two minutes.
    pub fn normal() -> Self {
        Self {
            agent: Duration::from_secs(10),
            ci: Duration::from_secs(8),
            deploy: Duration::from_secs(5),
            rollout: Duration::from_secs(4),
            grace: "5s",
            trigger_window_ms: 2000,
        }
    }

    /// Ten times faster, for tests.
    pub fn fast() -> Self {
        Self {
            agent: Duration::from_millis(1000),
            ci: Duration::from_millis(800),
            deploy: Duration::from_millis(500),
            rollout: Duration::from_millis(400),
            grace: "1s",
            trigger_window_ms: 200,
        }
    }
}

/// Command-line options.
pub struct Options {
    pub dir: Option<PathBuf>,
    pub api_port: u16,
    pub console_port: u16,
    pub arm: bool,
    pub pace: Pace,
    pub operator_log: String,
    pub exit_when_done: bool,
    pub tick: Duration,
}

/// What the simulated agent does on an issue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Agent {
    /// Pushes a commit whose CI passes.
    Green,
    /// Pushes commits whose CI always fails.
    Red,
    /// Asks a question instead of pushing.
    Asks,
}

struct Cast {
    repo: &'static str,
    issue: u64,
    title: &'static str,
    body: &'static str,
    labeler: &'static str,
    priority: Option<&'static str>,
    agent: Agent,
    lesson: &'static str,
}

const CAST: [Cast; 5] = [
    Cast {
        repo: SHOP,
        issue: 1,
        title: "Add a /healthz endpoint",
        body: "Serve 200 on /healthz so the load balancer can check us.",
        labeler: "alice",
        priority: Some("P1"),
        agent: Agent::Green,
        lesson: "trusted label → agent pushes → CI, deploy, rollout green → Succeeded, issue closed",
    },
    Cast {
        repo: SHOP,
        issue: 2,
        title: "Show the health on the status page",
        body: "Call /healthz from the status page.\n\nBlocked by #1",
        labeler: "alice",
        priority: Some("P2"),
        agent: Agent::Green,
        lesson: "Blocked by #1: waits in status.queue until #1 is closed, then runs",
    },
    Cast {
        repo: SHOP,
        issue: 3,
        title: "Drop the orders table",
        body: "It is slow.",
        labeler: "tricia",
        priority: Some("P0"),
        agent: Agent::Green,
        lesson: "labelled by @tricia (triage only): refused, the reason is in status.queue",
    },
    Cast {
        repo: BILLING,
        issue: 7,
        title: "Round invoice totals to cents",
        body: "Totals show 10.004 €.",
        labeler: "alice",
        priority: Some("P1"),
        agent: Agent::Red,
        lesson: "CI stays red: fixed forward on the same thread until the budget (2) runs out → Frozen, doorbell",
    },
    Cast {
        repo: BILLING,
        issue: 8,
        title: "Format amounts for the German market",
        body: "Amounts should look right for German customers.",
        labeler: "alice",
        priority: Some("P2"),
        agent: Agent::Asks,
        lesson: "the agent asks a question → WaitingForHuman (doorbell); answer it and the same thread goes on",
    },
];

fn cast_of(repo: &str, issue: u64) -> Option<&'static Cast> {
    CAST.iter().find(|c| c.repo == repo && c.issue == issue)
}

/// Timed things the simulated world does.
#[derive(Debug)]
enum Todo {
    /// The agent acts: push and finish the turn, or (`Asks`, not yet answered) ask.
    AgentActs {
        run: String,
        thread: String,
        turn: usize,
        answered: bool,
    },
    /// CI concludes on a commit.
    CiDone { repo: String, sha: String, green: bool },
    /// Woodpecker finishes the deploy pipeline.
    Deployed { number: u64, sha: String },
    /// The Deployment controller finishes the rollout.
    RolledOut { sha: String },
}

struct Clock(Instant);

impl Clock {
    fn stamp(&self) -> String {
        format!("[{:6.1}s]", self.0.elapsed().as_secs_f64())
    }
}

macro_rules! say {
    ($clock:expr, $($arg:tt)*) => {{
        println!("{} {}", $clock.stamp(), format!($($arg)*));
    }};
}

/// The whole playground: returns on Ctrl-C, or when the story ends with `exit_when_done`.
pub async fn play(o: Options) -> Result<(), String> {
    let clock = Clock(Instant::now());
    let (_tmp, dir) = match &o.dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
            (None, d.canonicalize().map_err(|e| e.to_string())?)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("afk-playground-")
                .tempdir()
                .map_err(|e| e.to_string())?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };

    // The fake cluster, with our CRDs registered.
    let mut api = FakeApiServer::new();
    for c in crd::all() {
        api = api.with_crd(&serde_json::to_value(c).map_err(|e| e.to_string())?);
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", o.api_port))
        .await
        .map_err(|e| format!("cannot bind the fake API server to 127.0.0.1:{}: {e}", o.api_port))?;
    let api_url = format!("http://{}", listener.local_addr().map_err(|e| e.to_string())?);
    let router = api.router();
    tokio::spawn(async move {
        let _ = afk_testkit_serve(listener, router).await;
    });
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        kubeconfig_text(&api_url).replace("namespace: default", &format!("namespace: {NS}")),
    )
    .map_err(|e| e.to_string())?;

    // The outside world.
    let gh = FakeGitHub::start(GH_TOKEN).await;
    let t3 = FakeT3::start(T3_TOKEN).await;
    let wp = FakeWoodpecker::start(WP_TOKEN).await;
    let notify = FakeNotify::start(Some(NTFY_TOKEN)).await;
    seed_github(&gh);
    for repo in [SHOP, BILLING] {
        t3.add_dir(&format!("/data/{}", repo.replace('/', "__")));
    }
    seed_cluster(&api, &notify);
    create_config(&api, &gh, &t3, &wp, &notify, &o).await?;

    // The operator: `afk-operator run`'s own code path, in this process.
    let console_port = pick_port(o.console_port)?;
    let token = hex::encode(&Sha256::digest(format!("{}{:?}", std::process::id(), Instant::now()))[..16]);
    let token_file = dir.join("console-token");
    std::fs::write(&token_file, &token).map_err(|e| e.to_string())?;
    let argv: Vec<String> = [
        "afk-operator",
        "run",
        "--kubeconfig",
        &kubeconfig.to_string_lossy(),
        "--namespace",
        NS,
        "--run-requeue-secs",
        "1",
        "--github-mutation-interval-ms",
        "0",
        "--config-trigger-window-ms",
        &o.pace.trigger_window_ms.to_string(),
        "--listen",
        &format!("127.0.0.1:{console_port}"),
        "--api-token-file",
        &token_file.to_string_lossy(),
        "--log-filter",
        &o.operator_log,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let cli = afk_operator::args::Cli::try_parse_from(&argv).map_err(|e| e.to_string())?;
    let operator = std::thread::Builder::new()
        .name("afk-operator".into())
        .spawn(move || afk_operator::cli::run(cli))
        .map_err(|e| e.to_string())?;

    print_intro(&clock, &kubeconfig, &api_url, console_port, &token, o.arm);
    if o.arm {
        let configs: Api<AfkConfig> = Api::namespaced(api.client(), NS);
        configs
            .patch(
                CONFIG,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({"spec": {"suspend": false}})),
            )
            .await
            .map_err(|e| format!("cannot arm: {e}"))?;
    }

    let mut world = World {
        api,
        gh,
        t3,
        wp,
        notify,
        pace: o.pace,
        clock,
        todo: vec![],
        turns_seen: BTreeMap::new(),
        answers_seen: BTreeMap::new(),
        phases: BTreeMap::new(),
        queue: BTreeMap::new(),
        armed: None,
        doorbells: 0,
        rang: vec![],
        closed: BTreeSet::new(),
        pipeline: 0,
        done: false,
    };
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut tick = tokio::time::interval(o.tick);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = tick.tick() => {}
        }
        if operator.is_finished() {
            return Err("the operator stopped (see its error above)".into());
        }
        world.step();
        if world.done && o.exit_when_done {
            break;
        }
    }
    Ok(())
}

async fn afk_testkit_serve(listener: tokio::net::TcpListener, router: axum::Router) -> std::io::Result<()> {
    axum::serve(listener, router).await
}

fn pick_port(wanted: u16) -> Result<u16, String> {
    let l = std::net::TcpListener::bind(("127.0.0.1", wanted))
        .or_else(|_| std::net::TcpListener::bind(("127.0.0.1", 0)))
        .map_err(|e| format!("no free port on 127.0.0.1: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

fn print_intro(clock: &Clock, kubeconfig: &Path, api_url: &str, console_port: u16, token: &str, armed: bool) {
    let k = kubeconfig.display();
    println!(
        "\
afk-playground: the real afk-operator against a fake cluster ({api_url}), a simulated GitHub
(repos demo/shop and demo/billing), a simulated T3 Code agent, CI (GitHub checks + Woodpecker)
and a Deployment rollout. Nothing here reaches the internet.

The story (one AfkConfig `demo` in namespace {NS}):"
    );
    for c in &CAST {
        println!("  {}#{:<2} {:<42} {}", c.repo, c.issue, c.title, c.lesson);
    }
    println!(
        "
Watch it, in another terminal:
  export KUBECONFIG={k}
  kubectl get afkruns -w                       # the runs' phases, live (add -o wide for commit, reason)
  kubectl describe afkc demo                   # conditions, status.queue (why an issue waits), Events
  kubectl get afk                              # both kinds at once
Console: http://127.0.0.1:{console_port}/console/  (paste the token {token})
"
    );
    if armed {
        say!(clock, "--arm given: the AfkConfig is armed at once");
    } else {
        println!(
            "Everything ships disarmed: `demo` has spec.suspend: true and nothing moves until you arm it:
  KUBECONFIG={k} kubectl patch afkc demo --type merge -p '{{\"spec\":{{\"suspend\":false}}}}'
"
        );
        say!(clock, "waiting for you to arm `demo` (Ctrl-C to stop)");
    }
}

fn seed_github(gh: &FakeGitHub) {
    let labelled_at = jiff::Timestamp::now().to_string();
    for repo in [SHOP, BILLING] {
        gh.add_repo(repo, "main");
        gh.repo(repo, |r| {
            r.roles.insert("alice".into(), "write".into());
            r.roles.insert("tricia".into(), "triage".into());
            r.commits.push(FakeCommit {
                sha: sha(&format!("{repo} initial")),
                message: "Initial commit".into(),
                date: "2026-01-01T00:00:00Z".into(),
            });
        });
    }
    for c in &CAST {
        gh.add_labeled_issue(
            c.repo,
            c.issue,
            c.title,
            c.body,
            "ready-for-agent",
            c.labeler,
            &labelled_at,
        );
        if let Some(p) = c.priority {
            gh.repo(c.repo, |r| {
                if let Some(i) = r.issues.get_mut(&c.issue) {
                    i.labels.push(p.into());
                }
            });
        }
    }
}

fn b64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in s.as_bytes().chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn seed_cluster(api: &FakeApiServer, notify: &FakeNotify) {
    let secret = |name: &str, key: &str, value: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS},
               "type": "Opaque", "data": {key: b64(value)}})
    };
    api.with_store(|s| {
        for ns in [NS, "shop"] {
            s.seed(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}, "status": {"phase": "Active"}}));
        }
        s.seed(secret("afk-github", "token", GH_TOKEN));
        s.seed(secret("afk-t3", "token", T3_TOKEN));
        s.seed(secret("afk-woodpecker", "token", WP_TOKEN));
        s.seed(secret("afk-ntfy", "token", NTFY_TOKEN));
        s.seed(secret("afk-slack", "url", &notify.slack_url()));
        s.seed(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "shop", "namespace": "shop"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "shop"}},
                     "template": {"metadata": {"labels": {"app": "shop"}},
                                  "spec": {"containers": [{"name": "shop", "image": format!("registry.local/demo/shop:{}", &sha(&format!("{SHOP} initial"))[..7])}]}}}}));
        s.mark_deployment_rolled_out("shop", "shop");
    });
}

async fn create_config(
    api: &FakeApiServer,
    gh: &FakeGitHub,
    t3: &FakeT3,
    wp: &FakeWoodpecker,
    notify: &FakeNotify,
    o: &Options,
) -> Result<(), String> {
    let config = json!({
        "apiVersion": "afk.dev/v1alpha1", "kind": "AfkConfig",
        "metadata": {"name": CONFIG, "namespace": NS},
        "spec": {
            "suspend": true,
            "allowlist": [
                {"repo": SHOP, "defaultBranch": "main", "woodpeckerRepoId": SHOP_WOODPECKER_ID,
                 "rollout": {"namespace": "shop", "deployment": "shop", "container": "shop"}},
                {"repo": BILLING, "defaultBranch": "main"}
            ],
            "tracker": {"github": {"apiUrl": gh.url(), "tokenSecretRef": {"name": "afk-github", "key": "token"}}},
            "executor": {"t3": {"url": t3.url(), "publicUrl": t3.url(), "model": "claude-sonnet-4-5",
                                "tokenSecretRef": {"name": "afk-t3", "key": "token"}}},
            "ci": {"githubChecks": {"enabled": true},
                   "woodpecker": {"url": wp.url(), "tokenSecretRef": {"name": "afk-woodpecker", "key": "token"}}},
            "pollInterval": "10s",
            "budgets": {"fixForwardMaxAttempts": 2, "preEscalationGrace": o.pace.grace},
            "notify": {"ntfy": {"url": notify.ntfy_url(), "topic": "afk-doorbell", "tokenSecretRef": {"name": "afk-ntfy", "key": "token"}},
                       "slack": {"webhookSecretRef": {"name": "afk-slack", "key": "url"}}}
        }
    });
    let obj: AfkConfig = serde_json::from_value(config).map_err(|e| format!("demo AfkConfig: {e}"))?;
    Api::<AfkConfig>::namespaced(api.client(), NS)
        .create(&PostParams::default(), &obj)
        .await
        .map_err(|e| format!("cannot create the demo AfkConfig: {e}"))?;
    Ok(())
}

fn sha(seed: &str) -> String {
    hex::encode(Sha256::digest(seed.as_bytes()))[..40].to_string()
}

struct World {
    api: FakeApiServer,
    gh: FakeGitHub,
    t3: FakeT3,
    wp: FakeWoodpecker,
    notify: FakeNotify,
    pace: Pace,
    clock: Clock,
    todo: Vec<(Instant, Todo)>,
    /// Turn starts already answered, per thread.
    turns_seen: BTreeMap<String, usize>,
    /// Human answers (respond commands) already acted on, per thread.
    answers_seen: BTreeMap<String, usize>,
    phases: BTreeMap<String, String>,
    queue: BTreeMap<String, String>,
    armed: Option<String>,
    doorbells: usize,
    rang: Vec<String>,
    closed: BTreeSet<(String, u64)>,
    pipeline: u64,
    done: bool,
}

impl World {
    fn later(&mut self, after: Duration, t: Todo) {
        self.todo.push((Instant::now() + after, t));
    }

    fn step(&mut self) {
        let config = self
            .api
            .with_store(|s| s.get("afk.dev/v1alpha1", "AfkConfig", NS, CONFIG));
        let runs = self.api.with_store(|s| s.list("afk.dev/v1alpha1", "AfkRun", NS));
        // GitHub first: a run that a closed issue unblocked is then printed after the close.
        self.report_github();
        if let Some(c) = &config {
            self.report_config(c);
        }
        for r in &runs {
            self.report_run(r);
            self.play_agent(r);
        }
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.todo)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.todo = later;
        for (_, t) in due {
            self.act(t);
        }
        self.report_github();
        self.report_doorbell();
        self.check_done(config.as_ref(), &runs);
    }

    fn report_config(&mut self, c: &Value) {
        let armed = c["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|k| k["type"] == "Armed")
            .map(|k| {
                format!(
                    "{} ({})",
                    k["status"].as_str().unwrap_or("?"),
                    k["reason"].as_str().unwrap_or("")
                )
            });
        if armed.is_some() && armed != self.armed {
            say!(
                self.clock,
                "AfkConfig demo: Armed={}",
                armed.clone().unwrap_or_default()
            );
            self.armed = armed;
        }
        for q in c["status"]["queue"].as_array().into_iter().flatten() {
            let key = format!("{}#{}", q["repo"].as_str().unwrap_or("?"), q["issue"]);
            let reason = q["reason"].as_str().unwrap_or("").to_string();
            if self.queue.get(&key) != Some(&reason) {
                say!(self.clock, "queue: {key} not dispatched: {reason}");
                self.queue.insert(key, reason);
            }
        }
    }

    fn report_run(&mut self, r: &Value) {
        let name = r["metadata"]["name"].as_str().unwrap_or("?").to_string();
        let phase = r["status"]["phase"].as_str().unwrap_or("").to_string();
        if phase.is_empty() || self.phases.get(&name) == Some(&phase) {
            return;
        }
        let mut line = format!(
            "run {name} ({}#{}): {phase}",
            r["spec"]["repo"].as_str().unwrap_or("?"),
            r["spec"]["issue"]
        );
        if let Some(reason) = r["status"]["reason"].as_str() {
            line.push_str(&format!(" — {reason}"));
        }
        if let Some(m) = r["status"]["message"].as_str() {
            line.push_str(&format!(": {m}"));
        }
        say!(self.clock, "{line}");
        if phase == "WaitingForHuman"
            && let Some(id) = r["status"]["question"]["requestId"].as_str()
        {
            say!(
                self.clock,
                "answer it from the console, or: kubectl annotate afkrun {name} afk.dev/answer='{{\"id\":\"{id}\",\"text\":\"1.234,50 €\"}}'"
            );
        }
        self.phases.insert(name, phase);
    }

    /// The agent answers each turn start on its thread once.
    fn play_agent(&mut self, r: &Value) {
        let Some(thread) = r["status"]["threadId"].as_str() else {
            return;
        };
        let run = r["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let starts = self
            .t3
            .applied_of("thread.turn.start")
            .iter()
            .filter(|c| c["threadId"] == thread)
            .count();
        let seen = self.turns_seen.get(thread).copied().unwrap_or(0);
        if starts > seen {
            self.turns_seen.insert(thread.to_string(), starts);
            let what = if starts == 1 {
                "the task"
            } else {
                "a corrective turn"
            };
            say!(
                self.clock,
                "agent: {run} got {what} (turn {starts}) on thread {thread}; working"
            );
            self.later(
                self.pace.agent,
                Todo::AgentActs {
                    run: run.clone(),
                    thread: thread.to_string(),
                    turn: starts,
                    answered: false,
                },
            );
        }
        let answers = self.t3.responses(thread).len();
        if answers > self.answers_seen.get(thread).copied().unwrap_or(0) {
            self.answers_seen.insert(thread.to_string(), answers);
            say!(
                self.clock,
                "agent: {run} got the answer on thread {thread}; working on"
            );
            self.later(
                self.pace.agent,
                Todo::AgentActs {
                    run,
                    thread: thread.to_string(),
                    turn: starts,
                    answered: true,
                },
            );
        }
    }

    fn run_spec(&self, run: &str) -> Option<(String, u64)> {
        let r = self
            .api
            .with_store(|s| s.get("afk.dev/v1alpha1", "AfkRun", NS, run))?;
        Some((
            r["spec"]["repo"].as_str()?.to_string(),
            r["spec"]["issue"].as_u64()?,
        ))
    }

    fn act(&mut self, t: Todo) {
        match t {
            Todo::AgentActs {
                run,
                thread,
                turn,
                answered,
            } => {
                let Some((repo, issue)) = self.run_spec(&run) else {
                    return;
                };
                let agent = cast_of(&repo, issue).map_or(Agent::Green, |c| c.agent);
                if agent == Agent::Asks && !answered {
                    let id = self.t3.raise_question(
                        &thread,
                        json!([{"id": "format", "header": "Format", "question": "How should 1234.5 euros look?",
                                "options": [{"label": "1.234,50 €", "description": "German convention"},
                                            {"label": "€1,234.50", "description": "as today"}],
                                "multiSelect": false}]),
                    );
                    say!(
                        self.clock,
                        "agent: {run} asks \"How should 1234.5 euros look?\" ({id}) and waits"
                    );
                    return;
                }
                let agent = if answered { Agent::Green } else { agent };
                let sha = sha(&format!("{run} turn {turn}"));
                let message = format!(
                    "{} (try {turn})\n\nCloses #{issue}\nAFK-Run: {run}",
                    cast_of(&repo, issue).map_or("Change", |c| c.title)
                );
                self.gh.repo(&repo, |r| {
                    r.commits.insert(
                        0,
                        FakeCommit {
                            sha: sha.clone(),
                            message,
                            date: jiff::Timestamp::now().to_string(),
                        },
                    );
                    r.check_runs
                        .insert(sha.clone(), vec![("test".into(), "in_progress".into(), None)]);
                });
                self.t3.finish_turn(&thread, "completed", "ready");
                say!(
                    self.clock,
                    "agent: {run} pushed {} to {repo} main (AFK-Run trailer) and finished its turn",
                    &sha[..7]
                );
                self.later(
                    self.pace.ci,
                    Todo::CiDone {
                        repo,
                        sha,
                        green: agent == Agent::Green,
                    },
                );
            }
            Todo::CiDone { repo, sha, green } => {
                let conclusion = if green { "success" } else { "failure" };
                self.gh.repo(&repo, |r| {
                    r.check_runs.insert(
                        sha.clone(),
                        vec![("test".into(), "completed".into(), Some(conclusion.into()))],
                    );
                });
                say!(self.clock, "ci: {repo} {} check `test`: {conclusion}", &sha[..7]);
                if green && repo == SHOP {
                    self.pipeline += 1;
                    let n = self.pipeline;
                    self.wp.set_pipeline(SHOP_WOODPECKER_ID, n, &sha, "running");
                    say!(
                        self.clock,
                        "woodpecker: deploy pipeline #{n} for {} running",
                        &sha[..7]
                    );
                    self.later(self.pace.deploy, Todo::Deployed { number: n, sha });
                }
            }
            Todo::Deployed { number, sha } => {
                self.wp.set_pipeline(SHOP_WOODPECKER_ID, number, &sha, "success");
                let image = format!("registry.local/demo/shop:{}", &sha[..7]);
                self.api.with_store(|s| {
                    s.modify("apps/v1", "Deployment", "shop", "shop", |d| {
                        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!(image);
                        let g = d["metadata"]["generation"].as_i64().unwrap_or(1);
                        d["metadata"]["generation"] = json!(g + 1);
                        d["status"]["updatedReplicas"] = json!(0);
                    });
                });
                say!(
                    self.clock,
                    "woodpecker: pipeline #{number} success; Deployment shop/shop rolling out {image}"
                );
                self.later(self.pace.rollout, Todo::RolledOut { sha });
            }
            Todo::RolledOut { sha } => {
                self.api
                    .with_store(|s| s.mark_deployment_rolled_out("shop", "shop"));
                say!(
                    self.clock,
                    "cluster: Deployment shop/shop rolled out {}",
                    &sha[..7]
                );
            }
        }
    }

    fn report_github(&mut self) {
        for c in &CAST {
            let (state, labels) = self.gh.repo(c.repo, |r| {
                r.issues
                    .get(&c.issue)
                    .map(|i| (i.state.clone(), i.labels.clone()))
                    .unwrap_or_default()
            });
            let key = (c.repo.to_string(), c.issue);
            if state == "closed" && self.closed.insert(key.clone()) {
                say!(self.clock, "github: {}#{} closed", c.repo, c.issue);
            }
            let human = (format!("{}+human", c.repo), c.issue);
            if labels.iter().any(|l| l == "ready-for-human") && self.closed.insert(human) {
                say!(
                    self.clock,
                    "github: {}#{} handed back, labelled ready-for-human",
                    c.repo,
                    c.issue
                );
            }
        }
    }

    fn report_doorbell(&mut self) {
        let rings: Vec<(String, String, String)> = self.notify.with(|s| {
            s.ntfy
                .iter()
                .map(|(_, r)| {
                    (
                        r.header("title").unwrap_or_default().to_string(),
                        r.header("priority").unwrap_or_default().to_string(),
                        r.body.clone(),
                    )
                })
                .collect()
        });
        for (title, priority, body) in rings.iter().skip(self.doorbells) {
            say!(
                self.clock,
                "DOORBELL (ntfy, priority {priority}; Slack too): {title} — {}",
                body.replace('\n', " ")
            );
            self.rang.push(title.clone());
        }
        self.doorbells = rings.len();
    }

    fn check_done(&mut self, config: Option<&Value>, runs: &[Value]) {
        if self.done {
            return;
        }
        let phase = |repo: &str, issue: u64| {
            runs.iter()
                .filter(|r| r["spec"]["repo"] == repo && r["spec"]["issue"] == issue)
                .find_map(|r| r["status"]["phase"].as_str().map(str::to_string))
                .unwrap_or_default()
        };
        let refused = config.is_some_and(|c| {
            c["status"]["queue"].as_array().into_iter().flatten().any(|q| {
                q["repo"] == SHOP
                    && q["issue"] == 3
                    && q["reason"].as_str().is_some_and(|r| r.contains("tricia"))
            })
        });
        let ends = [
            phase(SHOP, 1) == "Succeeded",
            phase(SHOP, 2) == "Succeeded",
            phase(BILLING, 7) == "Frozen",
            matches!(phase(BILLING, 8).as_str(), "WaitingForHuman" | "Succeeded"),
            refused,
            self.rang.iter().any(|t| t.contains("frozen")),
        ];
        if ends.iter().all(|e| *e) {
            self.done = true;
            say!(
                self.clock,
                "the story is complete: {SHOP}#1 and #2 Succeeded (#2 waited for #1), #3 refused, \
                 {BILLING}#7 Frozen after 2 fix-forward attempts, #8 {}. \
                 The fake cluster keeps serving: poke at it with kubectl; Ctrl-C to stop.",
                if phase(BILLING, 8) == "Succeeded" {
                    "answered and Succeeded"
                } else {
                    "WaitingForHuman: answer it and watch it finish"
                }
            );
        }
    }
}
