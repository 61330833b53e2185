//! The real `afk-operator run` binary as a child process against the fake API server's
//! kubeconfig, plus what a user would run against it (`kubectl get` tables).

use std::{
    path::Path,
    process::{Child, Command, Stdio},
};

use serde_json::Value;

use super::NS;

/// The operator process; killed with SIGKILL (a crash, not a drain) when dropped.
pub struct Operator(pub Child);

impl Operator {
    /// `kill -9`, as a node failure or an OOM kill would.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Start the binary with short requeues (the production defaults only change timing).
pub fn spawn_operator(kubeconfig: &Path, port: u16) -> Operator {
    spawn_operator_with(kubeconfig, port, &[])
}

/// The same, with extra flags (e.g. `--api-token-file`).
pub fn spawn_operator_with(kubeconfig: &Path, port: u16, extra: &[&str]) -> Operator {
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
            "--config-trigger-window-ms",
            "200",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(extra)
        .env("AFK_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Operator(child)
}

/// What `kubectl get <plural>` shows: the API server's Table, as `{column name: cell}` per row.
pub async fn table(api_url: &str, plural: &str) -> Vec<serde_json::Map<String, Value>> {
    let t: Value = reqwest::Client::new()
        .get(format!(
            "{api_url}/apis/afk.dev/v1alpha1/namespaces/{NS}/{plural}"
        ))
        .header(
            "accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<String> = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    t["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            names
                .iter()
                .cloned()
                .zip(r["cells"].as_array().unwrap().iter().cloned())
                .collect()
        })
        .collect()
}
