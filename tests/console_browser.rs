//! The web console in headless Chromium (Debian `chromium` + `playwright-core`, installed by
//! `.ci/run` into `.tools/browser`): load, attach, send, see streamed text, reload and see the
//! replay, survive a network drop, stop a turn, run a power verb with its confirm step — with no
//! duplicate message anywhere. The script is `tests/browser/console.cjs`.
//!
//! Without Chromium or playwright-core the test says so and passes, unless
//! `AFK_REQUIRE_BROWSER=1` (set by `.ci/run`).
//!
//! The second test serves the sidecar with a cluster connection to the in-process fake API
//! server and drives the AFK part of the console at phone size (390×844): the "waiting for you"
//! list (approve, a one-question text answer, a two-question answer), the grouped runs view, and
//! the emergency stop engaged and released on one of two AfkConfigs — then checks the
//! annotations the API server now holds. Its script is embedded below (`AFK_SCRIPT`).

mod sidecar_support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, atomic::AtomicBool};
use std::time::Duration;

use afk_operator::{
    adapters::claude::ClaudeCli,
    agents::Agents,
    args::SidecarArgs,
    crd,
    metrics::Metrics,
    sidecar::{self, Cluster, SidecarState},
};
use afk_testkit::apiserver::FakeApiServer;
use serde_json::{Value, json};
use sidecar_support::{TOKEN, fake_claude};

const MESSAGES_PER_TURN: &str = "40";

fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    let modules = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/.tools/browser/node_modules"
    ));
    let chromium =
        PathBuf::from(std::env::var("AFK_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    let present = modules.join("playwright-core").exists() && chromium.exists();
    if present {
        return Some((modules, chromium));
    }
    assert!(
        std::env::var("AFK_REQUIRE_BROWSER").as_deref() != Ok("1"),
        "the browser test needs {} and {}",
        modules.display(),
        chromium.display()
    );
    eprintln!("SKIPPED: chromium or playwright-core missing");
    None
}

/// A sidecar like `afk-operator run` serves it: the fake `claude`, the ssh shim for power verbs,
/// and a cluster connection to the in-process fake API server (so the console's AFK calls answer
/// 200, as in production, instead of "no cluster").
struct Served {
    base: String,
    dir: tempfile::TempDir,
    _shim: tempfile::TempDir,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Served {
    async fn start(api: &FakeApiServer, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let shim = tempfile::tempdir().unwrap();
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ssh-shim"),
            shim.path().join("ssh"),
        )
        .unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let state_dir = dir.path().join("state");
        let args = SidecarArgs::from_argv([
            "--listen".to_string(),
            "127.0.0.1:0".into(),
            "--api-token-file".into(),
            token_file.display().to_string(),
            "--state-dir".into(),
            state_dir.display().to_string(),
            "--header-read-timeout-secs".into(),
            "1".into(),
            "--pve-ssh-target".into(),
            "pve.lan".into(),
            "--pve-ssh-program".into(),
            shim.path().join("ssh").display().to_string(),
        ])
        .unwrap();
        let agents = Agents::load_dir(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/agents"))).unwrap();
        let mut cli = ClaudeCli::new(fake_claude(), state_dir.join("home"), None).with_env(
            "CLAUDE_CODE_FAKE_RECORD",
            &dir.path().join("record.jsonl").display().to_string(),
        );
        for (k, v) in env {
            cli = cli.with_env(k, v);
        }
        let (trigger, _) = tokio::sync::broadcast::channel(8);
        let cluster = Cluster {
            client: api.client(),
            namespace: Some("afk".into()),
            trigger,
        };
        let state = SidecarState::with_cli(
            &args,
            &agents,
            Arc::new(cli),
            Arc::new(AtomicBool::new(true)),
            Metrics::new(),
            Some(cluster),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(sidecar::serve_on(
            listener,
            state,
            Duration::from_secs(args.header_read_timeout_secs),
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            base,
            dir,
            _shim: shim,
            stop,
            server,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
    }
}

fn fake_api() -> FakeApiServer {
    let mut api = FakeApiServer::new();
    for c in crd::all() {
        api = api.with_crd(&serde_json::to_value(c).unwrap());
    }
    api
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_attaches_streams_replays_and_never_duplicates() {
    let Some((modules, chromium)) = browser_tools() else {
        return;
    };
    let api = fake_api();
    let sc = Served::start(
        &api,
        &[
            ("CLAUDE_CODE_FAKE_MODE", "chatty"),
            ("CLAUDE_CODE_FAKE_MESSAGES", MESSAGES_PER_TURN),
            ("CLAUDE_CODE_FAKE_INTERVAL_MS", "60"),
        ],
    )
    .await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/console.cjs");
    let output = tokio::process::Command::new("node")
        .arg(&script)
        .args([sc.base.as_str(), TOKEN, MESSAGES_PER_TURN])
        .env("NODE_PATH", &modules)
        .env("AFK_CHROMIUM", &chromium)
        .env("AFK_SCREENSHOT", sc.dir.path().join("failure.png"))
        .output()
        .await
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}\n{stderr}");
    assert!(
        output.status.success(),
        "browser test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("CONSOLE TEST PASSED"));
    sc.stop().await;
}

/// Drives the AFK part of the console; `phase` is `answer` (answer the three waiting runs, check
/// the runs view, engage the stop on `other`) or `release` (see `other` stopped, release it).
/// Usage: node afk.cjs <base-url> <token> <phase> <screenshot-path>
const AFK_SCRIPT: &str = r###"
"use strict";
const assert = require("node:assert/strict");
const { chromium } = require("playwright-core");
const [base, token, phase, shot] = process.argv.slice(2);
const item = (run) => '.waiting-item[data-run="afk/' + run + '"]';
const cfg = (name) => '.estop-config[data-config="' + name + '"]';
(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.AFK_CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push("pageerror: " + e.message));
  page.on("console", (m) => { if (m.type() === "error") problems.push("console: " + m.text()); });
  try {
    await page.goto(base + "/console/");
    await page.fill("#token", token);
    await page.click("#save-token");
    if (phase === "answer") {
      await page.waitForFunction(() => document.querySelectorAll(".waiting-item").length === 3);
      assert.equal(await page.isVisible("#waiting-panel"), true, "the waiting list shows");
      const first = await page.evaluate(() => document.querySelector("main > section:not([hidden])").id);
      assert.equal(first, "waiting-panel", "the waiting list is at the top");
      const approve = await page.textContent(item("r-approve"));
      assert.match(approve, /acme\/app#41/);
      assert.match(approve, /Approve command: make deploy/);
      assert.match(await page.textContent(item("r-ask") + " .waited"), /^waiting (4|5) min$/);
      assert.match(await page.textContent(item("r-ask")), /acme\/app#42.*Which database should the service use\?/s);
      await page.waitForFunction(() => /In progress \(3\)/.test(document.getElementById("runs").textContent));
      assert.match(await page.textContent("#runs"), /Queued \(1\)/);
      await page.waitForFunction(() => document.querySelectorAll(".estop-config").length === 2);
      const width = await page.evaluate(() => document.documentElement.scrollWidth);
      assert.ok(width <= 390, "nothing wider than the phone: " + width);
      await page.screenshot({ path: shot, fullPage: true });

      await page.click(item("r-approve") + " button.approve");
      await page.waitForSelector(item("r-approve") + ' .answer-result[data-state="sent"]');
      assert.match(await page.textContent(item("r-approve") + " .answer-result"), /^Sent: approved/);
      assert.equal(await page.$(item("r-approve") + " button.approve"), null, "no second answer");

      await page.click(item("r-ask") + " button.option >> text=Postgres");
      await page.fill(item("r-ask") + " textarea", "use Postgres");
      await page.click(item("r-ask") + " .send-answer");
      await page.waitForSelector(item("r-ask") + ' .answer-result[data-state="sent"]');
      assert.match(await page.textContent(item("r-ask") + " .answer-result"), /Sent: .use Postgres./);

      await page.fill(item("r-multi") + ' textarea[data-qid="region"]', "eu-west");
      await page.fill(item("r-multi") + ' textarea[data-qid="size"]', "small");
      await page.click(item("r-multi") + " .send-answer");
      await page.waitForSelector(item("r-multi") + ' .answer-result[data-state="sent"]');

      // A poll later the runs still wait (no controller here): the confirmations stay.
      await page.click("#refresh-runs");
      await page.waitForFunction(() => /updated/.test(document.getElementById("runs-state").textContent));
      assert.equal(await page.$$eval('.answer-result[data-state="sent"]', (l) => l.length), 3);

      // Engaging without a reason asks for one; then stop `other` only.
      await page.click(cfg("other") + " button.engage");
      assert.match(await page.textContent("#estop-output"), /give a reason/);
      await page.fill("#stop-reason", "INC-7 deploy freeze");
      await page.click(cfg("other") + " button.engage");
      await page.waitForSelector(cfg("other") + '[data-stopped="true"]');
      assert.match(await page.textContent(cfg("other") + " .stop-state"), /STOPPED: INC-7 deploy freeze/);
      assert.equal(await page.getAttribute(cfg("team"), "data-stopped"), "false");
      await page.screenshot({ path: shot.replace(/\.png$/, "-after.png"), fullPage: true });
    } else {
      await page.waitForSelector(cfg("other") + '[data-stopped="true"]');
      assert.equal(await page.getAttribute(cfg("team"), "data-stopped"), "false");
      await page.click(cfg("other") + " button.release");
      await page.waitForSelector(cfg("other") + '[data-stopped="false"]');
      assert.match(await page.textContent("#estop-output"), /other: emergency stop released/);
    }
    assert.deepEqual(problems, [], "no page errors or CSP violations");
    console.log("AFK PHASE " + phase + " PASSED");
  } catch (err) {
    console.error(err);
    console.error("problems:", problems);
    await page.screenshot({ path: shot.replace(/\.png$/, "-failure.png") }).catch(() => {});
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
})();
"###;

fn afk_objects(api: &FakeApiServer) {
    let asked = (jiff::Timestamp::now() - jiff::SignedDuration::from_secs(300)).to_string();
    let config = |name: &str, queue: Value| {
        json!({"apiVersion": "afk.dev/v1alpha1", "kind": "AfkConfig", "metadata": {"name": name, "namespace": "afk"},
            "spec": {"suspend": false, "allowlist": [{"repo": "acme/app"}],
                     "tracker": {"github": {"tokenSecretRef": {"name": "gh", "key": "token"}}},
                     "executor": {"t3": {"url": "http://t3", "tokenSecretRef": {"name": "t3", "key": "token"}, "model": "m"}}},
            "status": {"queue": queue}})
    };
    let run = |name: &str, issue: u64, question: Value| {
        json!({"apiVersion": "afk.dev/v1alpha1", "kind": "AfkRun", "metadata": {"name": name, "namespace": "afk",
                "labels": {"afk.dev/config": "team", "afk.dev/repo": "acme.app"}},
            "spec": {"configRef": "team", "repo": "acme/app", "issue": issue, "attempt": 1, "title": format!("Issue {issue}"),
                     "taskSnapshot": {"title": "t", "body": "", "sha256": "a".repeat(64)}},
            "status": {"phase": "WaitingForHuman", "threadUrl": "https://t3/?thread=x", "question": question}})
    };
    api.with_store(|s| {
        s.seed(config("team", json!([{"repo": "acme/app", "issue": 50, "title": "Later", "reason": "Blocked by #41 (open)"}])));
        s.seed(config("other", json!([])));
        s.seed(run("r-approve", 41, json!({"kind": "approval", "requestId": "req-approve-1",
            "text": "Approve command: make deploy", "requestKind": "command", "detail": "make deploy",
            "askedAt": asked, "notified": true})));
        s.seed(run("r-ask", 42, json!({"kind": "user-input", "requestId": "req-ask-1",
            "text": "Which database should the service use?",
            "questions": [{"id": "db", "header": "Database", "question": "Which database should the service use?",
                           "options": ["Postgres", "SQLite"], "multiSelect": false}],
            "askedAt": asked, "notified": true})));
        s.seed(run("r-multi", 43, json!({"kind": "user-input", "requestId": "req-multi-1",
            "text": "Region? Size?",
            "questions": [{"id": "region", "header": "Region", "question": "Which region?", "options": [], "multiSelect": false},
                          {"id": "size", "header": "Size", "question": "Which instance size?", "options": ["small", "large"], "multiSelect": false}],
            "askedAt": asked, "notified": true})));
    });
}

fn annotation(api: &FakeApiServer, kind: &str, name: &str, key: &str) -> Option<String> {
    let obj = api
        .with_store(|s| s.get("afk.dev/v1alpha1", kind, "afk", name))
        .expect("object");
    obj["metadata"]["annotations"][key].as_str().map(str::to_string)
}

async fn run_afk_phase(modules: &Path, chromium: &Path, base: &str, phase: &str, shot: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("afk.cjs");
    std::fs::write(&script, AFK_SCRIPT).unwrap();
    let output = tokio::process::Command::new("node")
        .arg(&script)
        .args([base, TOKEN, phase, &shot.display().to_string()])
        .env("NODE_PATH", modules)
        .env("AFK_CHROMIUM", chromium)
        .output()
        .await
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}\n{stderr}");
    assert!(
        output.status.success(),
        "browser phase {phase} failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(&format!("AFK PHASE {phase} PASSED")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_answers_waiting_runs_and_stops_one_config_at_phone_size() {
    let Some((modules, chromium)) = browser_tools() else {
        return;
    };
    let api = fake_api();
    afk_objects(&api);
    let sc = Served::start(&api, &[]).await;
    let base = sc.base.clone();
    let shot = std::env::var("AFK_CONSOLE_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| sc.dir.path().join("phone.png"));

    run_afk_phase(&modules, &chromium, &base, "answer", &shot).await;
    assert!(shot.exists(), "the phone-size screenshot was taken");

    let answer = |run: &str| -> Value {
        let raw = annotation(&api, "AfkRun", run, "afk.dev/answer")
            .unwrap_or_else(|| panic!("{run} carries afk.dev/answer"));
        serde_json::from_str(&raw).unwrap()
    };
    let approved = answer("r-approve");
    assert_eq!(approved["id"], "req-approve-1");
    assert_eq!(approved["decision"], "accept");
    assert_eq!(approved["by"], "api-token");
    assert!(
        approved["at"]
            .as_str()
            .is_some_and(|t| t.parse::<jiff::Timestamp>().is_ok())
    );
    let asked = answer("r-ask");
    assert_eq!(asked["id"], "req-ask-1");
    assert_eq!(asked["text"], "use Postgres");
    assert!(asked.get("answers").is_none() && asked.get("decision").is_none());
    let multi = answer("r-multi");
    assert_eq!(multi["id"], "req-multi-1");
    assert_eq!(multi["answers"], json!({"region": "eu-west", "size": "small"}));

    let stop_on = |config: &str| annotation(&api, "AfkConfig", config, "afk.dev/emergency-stop");
    assert_eq!(
        stop_on("other").as_deref(),
        Some("INC-7 deploy freeze (by api-token)")
    );
    assert_eq!(stop_on("team"), None, "only the chosen config is stopped");

    run_afk_phase(&modules, &chromium, &base, "release", &shot).await;
    assert_eq!(stop_on("other"), None, "released");
    assert_eq!(stop_on("team"), None);

    sc.stop().await;
}
