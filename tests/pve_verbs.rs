//! VM power verbs with an ssh shim: hostile verb strings spawn nothing; allowed verbs reach ssh
//! as one argv element after `--` and the target, in batch mode; mutating verbs need a
//! confirmation; output is capped; a hung ssh is killed at the timeout; and, through the real
//! binary, `ssh` is found on PATH.

mod sidecar_support;

use std::{path::Path, time::Duration};

use serde_json::{Value, json};
use sidecar_support::{Sidecar, TOKEN, fake_claude};

fn shim_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ssh-shim"),
        dir.path().join("ssh"),
    )
    .unwrap();
    dir
}

fn calls(dir: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(dir.join("calls.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn sidecar(shim: &Path, extra: &[&str]) -> Sidecar {
    let program = shim.join("ssh").display().to_string();
    let mut flags = vec![
        "--pve-ssh-target",
        "power@pve.lan",
        "--pve-ssh-program",
        program.as_str(),
    ];
    flags.extend_from_slice(extra);
    Sidecar::start(&fake_claude(), &[], &flags).await
}

#[tokio::test]
async fn hostile_verbs_are_400_and_spawn_nothing() {
    let shim = shim_dir();
    let sc = sidecar(shim.path(), &[]).await;
    for hostile in [
        "status%3B%20reboot",
        "STATUS",
        "..%2Fstart",
        "%2E%2E%2Fstart",
        "status%20",
        "%20status",
        "status%0Areboot",
        "%24(reboot)",
        "-oProxyCommand=reboot",
        "stat",
        "reboot",
        "status%26%26reboot",
    ] {
        let resp = sc
            .post(
                &format!("/api/breakglass/pve/{hostile}"),
                json!({"confirm": true}),
            )
            .send()
            .await
            .unwrap();
        assert!(
            resp.status() == 400 || resp.status() == 404,
            "{hostile}: {}",
            resp.status()
        );
        if resp.status() == 400 {
            assert_eq!(
                resp.json::<Value>().await.unwrap()["error"]["code"],
                "unknown_verb"
            );
        }
    }
    // Paths that do not even reach the handler.
    for path in [
        "/api/breakglass/pve/",
        "/api/breakglass/pve/../start",
        "/api/breakglass/pve/status/x",
    ] {
        let resp = sc.post(path, json!({"confirm": true})).send().await.unwrap();
        assert!(resp.status().is_client_error(), "{path}");
    }
    assert!(
        calls(shim.path()).is_empty(),
        "nothing was spawned: {:?}",
        calls(shim.path())
    );
}

#[tokio::test]
async fn verbs_are_listed_and_the_allowed_verb_is_one_argv_element() {
    let shim = shim_dir();
    let sc = sidecar(shim.path(), &[]).await;
    let listed: Value = sc.get_json("/api/breakglass/pve/verbs").await;
    assert_eq!(
        listed["verbs"],
        json!(["status", "forensics", "reset", "stop", "start", "cycle"])
    );
    assert_eq!(listed["mutating"], json!(["reset", "stop", "start", "cycle"]));
    assert_eq!(listed["configured"], true);

    let resp = sc
        .post("/api/breakglass/pve/status", json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["ok"], true);
    assert_eq!(body["stdout"], "vm 100: status ok\n");
    let argv = &calls(shim.path())[0];
    assert_eq!(&argv[argv.len() - 3..], ["--", "power@pve.lan", "status"]);
    assert!(argv.windows(2).any(|w| w == ["-o", "BatchMode=yes"]));
    assert!(argv.iter().any(|a| a.starts_with("ConnectTimeout=")));
}

#[tokio::test]
async fn mutating_verbs_need_confirmation() {
    let shim = shim_dir();
    let sc = sidecar(shim.path(), &[]).await;
    for body in [json!({}), json!({"confirm": false})] {
        let resp = sc.post("/api/breakglass/pve/cycle", body).send().await.unwrap();
        assert_eq!(resp.status(), 400);
        assert_eq!(
            resp.json::<Value>().await.unwrap()["error"]["code"],
            "confirmation_required"
        );
    }
    let resp = sc
        .post("/api/breakglass/pve/cycle", json!({"confirm": "yes"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(calls(shim.path()).is_empty());
    let resp = sc
        .post("/api/breakglass/pve/cycle", json!({"confirm": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(calls(shim.path()).len(), 1);
    let anonymous = Sidecar::client()
        .post(format!("{}/api/breakglass/pve/status", sc.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(calls(shim.path()).len(), 1);
}

#[tokio::test]
async fn output_is_capped_unreachable_is_502_and_a_hang_is_killed() {
    let shim = shim_dir();
    let sc = sidecar(shim.path(), &["--pve-timeout-secs", "1"]).await;
    let body: Value = sc.post_json("/api/breakglass/pve/forensics", json!({})).await;
    assert_eq!(body["stdout"].as_str().unwrap().len(), 64 * 1024);
    assert_eq!(body["truncated"], true);

    std::fs::write(shim.path().join("unreachable"), "").unwrap();
    let resp = sc
        .post("/api/breakglass/pve/status", json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    std::fs::remove_file(shim.path().join("unreachable")).unwrap();

    std::fs::write(shim.path().join("hang"), "").unwrap();
    let started = std::time::Instant::now();
    let resp = sc
        .post("/api/breakglass/pve/status", json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn unconfigured_verbs_answer_503() {
    let sc = Sidecar::start(&fake_claude(), &[], &[]).await;
    let resp = sc
        .post("/api/breakglass/pve/status", json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let listed: Value = sc.get_json("/api/breakglass/pve/verbs").await;
    assert_eq!(listed["configured"], false);
}

#[tokio::test]
async fn a_burst_of_verbs_is_refused_beyond_the_limit() {
    let shim = shim_dir();
    std::fs::write(shim.path().join("hang"), "").unwrap();
    let sc = sidecar(
        shim.path(),
        &["--pve-timeout-secs", "2", "--pve-max-concurrent", "2"],
    )
    .await;
    let calls_now = |dir: &Path| calls(dir).len();
    let mut running = Vec::new();
    for _ in 0..2 {
        running.push(tokio::spawn(
            sc.post("/api/breakglass/pve/status", json!({})).send(),
        ));
    }
    let start = std::time::Instant::now();
    while calls_now(shim.path()) < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the two verbs never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..5 {
        let resp = sc
            .post("/api/breakglass/pve/status", json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 429);
        assert!(resp.headers().contains_key("retry-after"));
    }
    assert_eq!(calls_now(shim.path()), 2, "refused calls spawn nothing");
    for r in running {
        assert_eq!(r.await.unwrap().unwrap().status(), 504);
    }
}

#[tokio::test]
async fn the_binary_finds_ssh_on_path_and_audits_every_call_in_plain_uncoloured_lines() {
    let shim = shim_dir();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = format!(
        "{}:{}",
        shim.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_afk-operator"))
        .args([
            "sidecar",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--pve-ssh-target",
            "pve.lan",
            "--trust-proxy-header",
        ])
        .arg("--api-token-file")
        .arg(dir.path().join("token"))
        .arg("--agents-dir")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/agents"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("PATH", path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/api/breakglass/pve/start");
    let mut resp = None;
    for _ in 0..100 {
        if let Ok(r) = client
            .post(&url)
            .bearer_auth(TOKEN)
            .json(&json!({"confirm": true}))
            .send()
            .await
        {
            resp = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resp = resp.expect("sidecar up");
    assert_eq!(resp.status(), 200);
    let argv = &calls(shim.path())[0];
    assert_eq!(&argv[argv.len() - 3..], ["--", "pve.lan", "start"]);
    // Refused calls are audited too; a proxy-supplied name cannot forge audit fields.
    let forger = "mallory result=ran verb=status";
    for (verb, body, status) in [
        ("reset", json!({}), 400),
        ("reboot", json!({}), 400),
        ("stop", json!({"confirm": "yes"}), 400),
    ] {
        let resp = client
            .post(format!("http://127.0.0.1:{port}/api/breakglass/pve/{verb}"))
            .bearer_auth(TOKEN)
            .header("x-authentik-username", forger)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{verb}");
    }
    child.kill().await.unwrap();
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert!(
        !stderr.contains('\u{1b}'),
        "no ANSI colour codes when not on a terminal:\n{stderr}"
    );
    let audit: Vec<&str> = stderr.lines().filter(|l| l.contains("power verb")).collect();
    assert_eq!(audit.len(), 4, "one record per call:\n{stderr}");
    assert!(
        audit[0].contains("result=\"ran\"") || audit[0].contains("result=ran"),
        "{}",
        audit[0]
    );
    for line in &audit[1..] {
        assert!(
            line.contains("result=\"refused\"") || line.contains("result=refused"),
            "{line}"
        );
        assert!(
            line.contains(r#"caller="mallory result=ran verb=status""#),
            "the name is one quoted field: {line}"
        );
    }
    assert!(audit[1].contains("confirmation_required") && audit[2].contains("unknown_verb"));
}
