//! Process level: the real `afk-operator run` binary, pointed at the fake API server's kubeconfig
//! and at the T3, GitHub and ntfy fakes through the AfkConfig, takes a trusted issue to
//! `Succeeded`; `/readyz` and `/metrics` answer on its sidecar port.

mod support;

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use afk_operator::crd::Phase;
use serde_json::json;
use support::*;

struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_operator(kubeconfig: &std::path::Path, port: u16) -> Operator {
    let child = Command::new(env!("CARGO_BIN_EXE_afk-operator"))
        .args([
            "run",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--namespace",
            NS,
            "--run-requeue-secs",
            "1",
            "--github-mutation-interval-ms",
            "0",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("AFK_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Operator(child)
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
    w.wait_phase("acme-app-42-1", Phase::Working).await;
    w.push("acme-app-42-1", 1, "failure");
    w.end_turn("acme-app-42-1");
    w.wait_for("the corrective turn", |w| {
        w.t3.applied_of("thread.turn.start").len() == 2
    })
    .await;
    w.push("acme-app-42-1", 2, "failure");
    w.end_turn("acme-app-42-1");
    w.wait_phase("acme-app-42-1", Phase::Frozen).await;
    w.wait_for("one frozen message", |w| {
        w.ntfy_titles() == vec!["acme/app#42 frozen"]
    })
    .await;
    w.wait_for("ready-for-human", |w| {
        w.issue_labels(42).contains(&"ready-for-human".to_string())
    })
    .await;
}
