//! A sidecar on loopback with a chosen `claude` program (the fake script or the real CLI), a
//! token file and a private state dir; plus process-table helpers for "nothing left running".
#![allow(dead_code)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use afk_operator::{
    adapters::claude::ClaudeCli,
    agents::Agents,
    args::SidecarArgs,
    metrics::Metrics,
    sidecar::{self, SidecarState},
};
use serde_json::Value;

pub const TOKEN: &str = "test-token-0123456789";

pub fn fake_claude() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-claude")
}

pub struct Sidecar {
    pub addr: SocketAddr,
    pub base: String,
    pub dir: tempfile::TempDir,
    pub state: SidecarState,
    pub record: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Sidecar {
    /// Start a sidecar running `program` with the extra CLI environment `env` and extra flags.
    pub async fn start(program: &Path, env: &[(&str, &str)], flags: &[&str]) -> Self {
        Self::start_with_key(program, None, env, flags).await
    }

    /// Like [`Sidecar::start`], with the model API key read from `api_key_file` at each spawn.
    pub async fn start_with_key(
        program: &Path,
        api_key_file: Option<&Path>,
        env: &[(&str, &str)],
        flags: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let record = dir.path().join("record.jsonl");
        let state_dir = dir.path().join("state");
        let mut argv: Vec<String> = vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--api-token-file".into(),
            token_file.display().to_string(),
            "--state-dir".into(),
            state_dir.display().to_string(),
            "--header-read-timeout-secs".into(),
            "1".into(),
        ];
        argv.extend(flags.iter().map(|s| s.to_string()));
        let args = SidecarArgs::from_argv(argv).unwrap();
        let agents = Agents::load_dir(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/agents"))).unwrap();
        let api_key = api_key_file.map(|path| {
            Box::new(afk_operator::adapters::FileSecret::new(path.to_path_buf()))
                as Box<dyn afk_operator::adapters::SecretSource>
        });
        let mut cli = ClaudeCli::new(program.to_path_buf(), state_dir.join("home"), api_key)
            .with_env("CLAUDE_CODE_FAKE_RECORD", &record.display().to_string())
            .with_env(
                "CLAUDE_CODE_FAKE_STARTED",
                &dir.path().join("started").display().to_string(),
            );
        for (k, v) in env {
            cli = cli.with_env(k, v);
        }
        let state = SidecarState::with_cli(
            &args,
            &agents,
            Arc::new(cli),
            Arc::new(AtomicBool::new(true)),
            Metrics::new(),
            None,
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(sidecar::serve_on(
            listener,
            state.clone(),
            Duration::from_secs(args.header_read_timeout_secs),
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            base: format!("http://{addr}"),
            dir,
            state,
            record,
            stop: Some(stop),
            server: Some(server),
        }
    }

    pub fn client() -> reqwest::Client {
        reqwest::Client::new()
    }

    pub fn post(&self, path: &str, body: Value) -> reqwest::RequestBuilder {
        Self::client()
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .json(&body)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        Self::client()
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
    }

    /// POST JSON, answer parsed as JSON (whatever the status).
    pub async fn post_json(&self, path: &str, body: Value) -> Value {
        self.post(path, body).send().await.unwrap().json().await.unwrap()
    }

    /// GET, answer parsed as JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        self.get(path).send().await.unwrap().json().await.unwrap()
    }

    /// What the fake CLI recorded, one object per run.
    pub fn runs(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Wait until the fake CLI recorded `n` runs.
    pub async fn wait_runs(&self, n: usize) -> Vec<Value> {
        for _ in 0..200 {
            let runs = self.runs();
            if runs.len() >= n {
                return runs;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the CLI was not started {n} times: {:?}", self.runs());
    }

    /// Pids of the fake CLI processes started so far, in order (each writes its pid as it starts).
    pub fn started_pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.path().join("started"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Voice turns served by a `warm`, `live` or `cold` process so far (from `/metrics`).
    pub async fn turn_starts(&self, kind: &str) -> u64 {
        let metrics = self.get("/metrics").send().await.unwrap().text().await.unwrap();
        let needle = format!("afk_voice_turn_starts_total{{kind=\"{kind}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&needle))
            .map_or(0, |v| v.trim().parse().unwrap())
    }

    /// Wait until `n` fake CLI processes have started (a warm one is up before a request whose
    /// deadline should measure the turn, not the interpreter's start-up on a loaded machine).
    pub async fn wait_started(&self, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.started_pids().len() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{n} CLI processes did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Ask the server to stop (streams end, connections drain).
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Pids of live (non-zombie) processes in process group `pgid`.
pub fn group_members(pgid: i64) -> Vec<i64> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i64>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp …; comm may contain spaces, so split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" {
            pids.push(pid);
        }
    }
    pids
}

/// Wait up to `limit` for process group `pgid` to be empty; the time it took.
pub async fn wait_group_gone(pgid: i64, limit: Duration) -> Result<Duration, Vec<i64>> {
    let start = std::time::Instant::now();
    loop {
        let members = group_members(pgid);
        if members.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            return Err(members);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Parse an SSE body into `(event, data)` pairs (comments skipped).
pub fn sse_events(body: &str) -> Vec<(String, String)> {
    let mut events = Vec::new();
    for block in body.split("\n\n") {
        let mut event = "message".to_string();
        let mut data = Vec::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event: ") {
                event = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push(v);
            }
        }
        if !data.is_empty() {
            events.push((event, data.join("\n")));
        }
    }
    events
}

/// One SSE event as read off the wire.
#[derive(Clone, Debug, PartialEq)]
pub struct SseEvent {
    pub id: Option<u64>,
    pub event: String,
    pub data: Value,
}

/// Reads SSE events one at a time from a streaming response (comments skipped).
pub struct SseReader {
    stream: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<axum::body::Bytes>> + Send>>,
    buffer: String,
}

impl SseReader {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            stream: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    /// The next event; `None` when the stream ended.
    pub async fn next(&mut self) -> Option<SseEvent> {
        use futures::StreamExt;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    id: None,
                    event: "message".into(),
                    data: Value::Null,
                };
                let mut seen_data = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        event.id = v.parse().ok();
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event.event = v.to_string();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        event.data = serde_json::from_str(v).unwrap_or(Value::String(v.to_string()));
                        seen_data = true;
                    }
                }
                if seen_data {
                    return Some(event);
                }
                continue;
            }
            match self.stream.next().await {
                Some(Ok(bytes)) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }
}
