//! The `claude` CLI as a subprocess: the one place the sidecar starts processes for the voice
//! gateway and breakglass sessions. A turn is `claude -p --output-format stream-json --verbose
//! --include-partial-messages` with the prompt on stdin (never in argv, never through a shell),
//! in its own process group, with a curated environment (HOME under the sidecar's state dir,
//! the model API key read from a file). The turn's events arrive on a bounded channel; dropping
//! the [`Turn`] — a client disconnect, a timeout, shutdown — kills the whole process group at
//! once and a reaper task waits for the child, so no CLI, and none of its children, outlive the
//! request. Stdout is parsed line by line by [`stream`]; stderr is kept (capped) for logs only.
//!
//! A process can also be started *waiting*: with `--input-format stream-json` it reads one user
//! message per line and answers each as a turn, printing nothing before the first
//! (`docs/claude-cli-stream-input.md`, captured from the real CLI). The voice gateway uses that to
//! keep processes warm ahead of a request and to keep a conversation's process alive between
//! turns; [`Turn::send`] writes a message, [`Turn::end_input`] closes stdin so the CLI exits after
//! the turn in progress.

pub mod stream;
pub mod sweep;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use futures::StreamExt;
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{
    io::AsyncReadExt,
    io::AsyncWriteExt,
    process::Command,
    sync::{mpsc, watch},
};
use tokio_util::codec::{Decoder, FramedRead};

pub use stream::{CliEvent, Failure, ToolUse, TurnResult, Usage};

use super::SecretSource;

/// Longest stdout line accepted (tool results can be large; anything longer is dropped).
const MAX_LINE_BYTES: usize = 8 * 1024 * 1024;
/// Stderr kept for diagnostics.
const MAX_STDERR_BYTES: usize = 16 * 1024;
/// How long stdout may stay open after the CLI itself exited (a grandchild holding the pipe).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(250);
/// Events buffered between the reader and the consumer.
const EVENT_BUFFER: usize = 256;

/// How a turn relates to a CLI session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionMode {
    /// One-off: `--no-session-persistence`.
    Stateless,
    /// Open a new session with this id: `--session-id`.
    Open(uuid::Uuid),
    /// Continue a session: `--resume`.
    Resume(uuid::Uuid),
}

/// The agent a turn runs as (from `agents/*.md`).
#[derive(Clone, Debug)]
pub struct AgentSpec {
    /// Agent name.
    pub name: String,
    /// One-line description.
    pub description: String,
    /// System prompt (the Markdown body).
    pub prompt: String,
    /// `Some(vec![])` = no tools at all; `None` = the CLI's defaults.
    pub tools: Option<Vec<String>>,
}

impl AgentSpec {
    /// From a loaded agent file.
    pub fn from_agent(agent: &crate::agents::Agent) -> Self {
        Self {
            name: agent.meta.name.clone(),
            description: agent.meta.description.clone(),
            prompt: agent.body.clone(),
            tools: agent.meta.tools.clone(),
        }
    }
}

/// One turn to run.
#[derive(Clone, Debug)]
pub struct TurnRequest {
    /// The prompt (written to stdin).
    pub prompt: String,
    /// `--model`.
    pub model: String,
    /// The agent.
    pub agent: Arc<AgentSpec>,
    /// Session handling.
    pub session: SessionMode,
    /// Working directory (empty; sessions are keyed by it inside the CLI).
    pub cwd: PathBuf,
    /// `--max-budget-usd`, when set.
    pub max_budget_usd: Option<f64>,
    /// `--allowedTools`, when the agent has tools.
    pub allowed_tools: Vec<String>,
}

impl TurnRequest {
    /// The argv of a process started waiting for messages on stdin.
    pub fn waiting_args(&self) -> Vec<String> {
        let mut args = self.args();
        args.extend(["--input-format".to_string(), "stream-json".to_string()]);
        args
    }

    /// The CLI's argv (without the program). The prompt is not in it.
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--include-partial-messages",
            "--setting-sources",
            "user",
            "--exclude-dynamic-system-prompt-sections",
            "--strict-mcp-config",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(["--model".to_string(), self.model.clone()]);
        let mut definition = serde_json::json!({
            "description": self.agent.description,
            "prompt": self.agent.prompt,
        });
        if let Some(tools) = &self.agent.tools {
            definition["tools"] = serde_json::json!(tools);
            // `--tools ""` removes every built-in tool, not just the agent's view of them.
            args.extend(["--tools".to_string(), tools.join(",")]);
        }
        let agents = serde_json::json!({ self.agent.name.clone(): definition });
        args.extend(["--agents".to_string(), agents.to_string()]);
        args.extend(["--agent".to_string(), self.agent.name.clone()]);
        match &self.session {
            SessionMode::Stateless => args.push("--no-session-persistence".to_string()),
            SessionMode::Open(id) => args.extend(["--session-id".to_string(), id.to_string()]),
            SessionMode::Resume(id) => args.extend(["--resume".to_string(), id.to_string()]),
        }
        if let Some(budget) = self.max_budget_usd {
            args.extend(["--max-budget-usd".to_string(), budget.to_string()]);
        }
        if !self.allowed_tools.is_empty() {
            args.extend(["--allowedTools".to_string(), self.allowed_tools.join(",")]);
        }
        args
    }
}

/// Why a turn could not start or ended without a result.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CliError {
    /// The program could not be started.
    #[error("cannot start the claude CLI: {0}")]
    Spawn(String),
    /// The CLI exited without a `result` event.
    #[error("the claude CLI exited ({code:?}) without a result")]
    Crashed {
        /// Exit code (`None` when killed by a signal).
        code: Option<i32>,
        /// Captured stderr (for logs only; never sent to clients).
        stderr: String,
    },
    /// The session id is taken (`--session-id` of an existing session).
    #[error("the session id is already in use")]
    SessionInUse,
}

/// A running turn: its events, then its end. Dropping it kills the process group.
#[derive(Debug)]
pub struct Turn {
    events: mpsc::Receiver<TurnItem>,
    group: GroupGuard,
    reaped: Reaped,
    /// Open only for a process started waiting (stream-json input).
    stdin: Option<tokio::process::ChildStdin>,
}

/// Resolves once a turn's process has exited and been reaped and its group killed — the moment
/// its memory is really free, which is when a concurrency slot may be handed on.
#[derive(Clone, Debug)]
pub struct Reaped(watch::Receiver<bool>);

impl Reaped {
    /// A handle for a process that is already gone (tests, fakes that spawn nothing).
    pub fn already() -> Self {
        Self(watch::channel(true).1)
    }

    /// Whether the process is gone already.
    pub fn is_reaped(&self) -> bool {
        *self.0.borrow()
    }

    /// Wait until the process is reaped.
    pub async fn wait(mut self) {
        // A dropped sender (the reaper task ended) counts as reaped too.
        let _ = self.0.wait_for(|reaped| *reaped).await;
    }
}

/// What a running turn yields.
#[derive(Debug)]
pub enum TurnItem {
    /// A parsed event.
    Event(CliEvent),
    /// The process ended; `Err` when it ended without a `result`.
    Ended(Result<(), CliError>),
}

impl Turn {
    /// The next item; `None` after [`TurnItem::Ended`].
    pub async fn next(&mut self) -> Option<TurnItem> {
        self.events.recv().await
    }

    /// Kill the process group now (also done on drop).
    pub fn kill(&self) {
        self.group.kill();
    }

    /// The process group id (for tests and diagnostics).
    pub fn process_group(&self) -> i32 {
        self.group.pgid
    }

    /// A handle that resolves once the process is reaped (it outlives the `Turn`).
    pub fn reaped(&self) -> Reaped {
        self.reaped.clone()
    }

    /// Start a turn on a waiting process: one user message on its stdin. Fails when the
    /// process was not started waiting, its input was ended, or it is gone (EPIPE).
    pub async fn send(&mut self, text: &str) -> Result<(), CliError> {
        let gone = |detail: String| CliError::Crashed {
            code: None,
            stderr: detail,
        };
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| gone("the process does not take messages".into()))?;
        let line = stream::user_message_line(text);
        stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| gone(format!("writing the message: {e}")))?;
        stdin
            .flush()
            .await
            .map_err(|e| gone(format!("writing the message: {e}")))
    }

    /// Close stdin: the CLI finishes the turn in progress (if any), then exits on its own.
    pub fn end_input(&mut self) {
        self.stdin = None;
    }

    /// Whether the process is still running.
    pub fn is_alive(&self) -> bool {
        !self.reaped.is_reaped()
    }
}

/// Kills the process group when dropped.
#[derive(Debug)]
struct GroupGuard {
    pgid: i32,
}

impl GroupGuard {
    fn kill(&self) {
        if self.pgid > 0 {
            // ESRCH (already gone) is the normal case after a clean exit.
            let _ = nix::sys::signal::killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts CLI turns. The real implementation is [`ClaudeCli`]; tests point it at the real CLI
/// (against a loopback Messages API) or at a fake script with the same stream-json output.
#[async_trait::async_trait]
pub trait AgentCli: Send + Sync + std::fmt::Debug {
    /// Start a turn: `request.prompt` on stdin, then end of input.
    async fn start(&self, request: &TurnRequest) -> Result<Turn, CliError>;

    /// Start a process that waits for messages ([`Turn::send`]); `request.prompt` is not used.
    async fn start_waiting(&self, request: &TurnRequest) -> Result<Turn, CliError>;

    /// Changes whenever something read at spawn outside the request changes (the API key file):
    /// a process started under another generation must not serve a request.
    fn generation(&self) -> u64 {
        0
    }
}

/// The `claude` program and the environment it runs in.
#[derive(Debug)]
pub struct ClaudeCli {
    program: PathBuf,
    home: PathBuf,
    api_key: Option<Box<dyn SecretSource>>,
    passthrough_env: BTreeMap<String, String>,
}

/// Variables copied from the sidecar's environment to the CLI's (everything else is cleared).
const PASSTHROUGH_PREFIXES: &[&str] = &[
    "ANTHROPIC_BASE_URL",
    "CLAUDE_CODE_",
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "NO_PROXY",
];

impl ClaudeCli {
    /// A CLI at `program` (looked up on PATH when it has no slash) with HOME at `home`.
    pub fn new(program: PathBuf, home: PathBuf, api_key: Option<Box<dyn SecretSource>>) -> Self {
        // Whatever a turn leaves behind, setsid or not, is re-parented to us and swept.
        sweep::become_subreaper();
        let passthrough_env = std::env::vars()
            .filter(|(k, _)| {
                PASSTHROUGH_PREFIXES.iter().any(|p| k.starts_with(p)) || k == "PATH" || k == "LANG"
            })
            .collect();
        Self {
            program,
            home,
            api_key,
            passthrough_env,
        }
    }

    /// Add or replace one environment variable of the CLI (tests, `ANTHROPIC_BASE_URL`).
    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.passthrough_env.insert(key.to_string(), value.to_string());
        self
    }

    fn command(&self, args: Vec<String>, request: &TurnRequest) -> Result<Command, CliError> {
        let mut command = Command::new(&self.program);
        command
            .args(args)
            .current_dir(&request.cwd)
            .env_clear()
            .envs(&self.passthrough_env)
            .env("HOME", &self.home)
            .env("DISABLE_TELEMETRY", "1")
            .env("DISABLE_AUTOUPDATER", "1")
            .env("DISABLE_ERROR_REPORTING", "1")
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if !self.passthrough_env.contains_key("CLAUDE_CODE_MAX_RETRIES") {
            // The CLI retries a failing API up to 10 times with backoff; a voice turn cannot wait.
            command.env("CLAUDE_CODE_MAX_RETRIES", "2");
        }
        if let Some(source) = &self.api_key {
            let key = source.read().map_err(|e| CliError::Spawn(e.message))?;
            command.env("ANTHROPIC_API_KEY", key.expose().trim());
        }
        Ok(command)
    }
}

#[async_trait::async_trait]
impl AgentCli for ClaudeCli {
    async fn start(&self, request: &TurnRequest) -> Result<Turn, CliError> {
        self.spawn(request, Some(request.prompt.clone()))
    }

    async fn start_waiting(&self, request: &TurnRequest) -> Result<Turn, CliError> {
        self.spawn(request, None)
    }

    fn generation(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let Some(source) = &self.api_key else {
            return 0;
        };
        // Only ever compared in memory; an unreadable key is its own generation (and its spawn
        // fails with the reason).
        match source.read() {
            Ok(key) => {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                key.expose().trim().hash(&mut hasher);
                hasher.finish() | 1
            }
            Err(_) => u64::MAX - 1,
        }
    }
}

impl ClaudeCli {
    /// Spawn the CLI: with `prompt`, written to stdin and then closed; without, stdin stays
    /// open for stream-json messages.
    fn spawn(&self, request: &TurnRequest, prompt: Option<String>) -> Result<Turn, CliError> {
        ensure_dir(&request.cwd)?;
        ensure_dir(&self.home)?;
        let args = match prompt {
            Some(_) => request.args(),
            None => request.waiting_args(),
        };
        // Marks the CLI and, by inheritance, its descendants (found again by the sweep).
        let turn_id = uuid::Uuid::new_v4().to_string();
        let mut child = self
            .command(args, request)?
            .env(sweep::TURN_ENV, &turn_id)
            .spawn()
            .map_err(|e| CliError::Spawn(format!("{}: {e}", self.program.display())))?;
        let pgid = child.id().map(|id| id as i32).unwrap_or(0);
        let group = GroupGuard { pgid };
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let (reaped_tx, reaped_rx) = watch::channel(false);
        let mut stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        if let Some(prompt) = prompt {
            let stdin = stdin.take();
            tokio::spawn(async move {
                if let Some(mut stdin) = stdin {
                    // A CLI that dies before reading stdin is reported by its exit, not here.
                    let _ = stdin.write_all(prompt.as_bytes()).await;
                    let _ = stdin.shutdown().await;
                }
            });
        }
        let stderr_task = tokio::spawn(async move {
            let mut kept = Vec::new();
            if let Some(mut stderr) = stderr {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stderr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let room = MAX_STDERR_BYTES.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
            String::from_utf8_lossy(&kept).into_owned()
        });
        tokio::spawn(async move {
            pump(child, pgid, &turn_id, stdout, stderr_task, tx).await;
            let _ = reaped_tx.send(true);
        });
        Ok(Turn {
            events: rx,
            group,
            reaped: Reaped(reaped_rx),
            stdin,
        })
    }
}

/// Read stdout to the end (or until the consumer goes away), then reap the child and report.
async fn pump(
    mut child: tokio::process::Child,
    pgid: i32,
    turn_id: &str,
    stdout: Option<tokio::process::ChildStdout>,
    stderr_task: tokio::task::JoinHandle<String>,
    tx: mpsc::Sender<TurnItem>,
) {
    let guard = GroupGuard { pgid };
    let mut saw_result = false;
    let mut consumer_gone = false;
    let mut exit_status = None;
    if let Some(stdout) = stdout {
        let mut lines = FramedRead::new(stdout, LossyLines::new(MAX_LINE_BYTES));
        loop {
            let next = if exit_status.is_some() {
                // The CLI exited; whatever still holds the pipe gets a short grace, then the group dies.
                match tokio::time::timeout(DRAIN_AFTER_EXIT, lines.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                }
            } else {
                tokio::select! {
                    next = lines.next() => next,
                    status = child.wait() => { exit_status = status.ok(); continue; }
                }
            };
            let line = match next {
                None | Some(Err(_)) => break,
                Some(Ok(line)) => line,
            };
            if let Some(event) = stream::parse_line(&line) {
                saw_result |= matches!(event, CliEvent::Result(_));
                if tx.send(TurnItem::Event(event)).await.is_err() {
                    consumer_gone = true;
                    break;
                }
            }
        }
    }
    // Nothing of the turn may outlive it: kill whatever is left in the group and whatever left
    // the group (setsid), then reap. The turn counts as reaped only after the sweep. While the
    // CLI lives, its descendants are found through it, so look before killing it; once it has
    // exited they are ours already (subreaper) and the look after the kill finds them all.
    let strays = if exit_status.is_none() {
        sweep::strays(pgid, turn_id).await
    } else {
        Vec::new()
    };
    guard.kill();
    let status = match exit_status {
        Some(status) => Some(status),
        None => child.wait().await.ok(),
    };
    let strays = {
        // Marked processes that escaped while the CLI was being killed (re-parented to us now).
        let mut all = strays;
        all.extend(sweep::strays(pgid, turn_id).await);
        all.sort_unstable();
        all.dedup();
        all
    };
    sweep::kill_and_reap(strays).await;
    let stderr = stderr_task.await.unwrap_or_default();
    if consumer_gone {
        return;
    }
    let ended = if saw_result {
        Ok(())
    } else if stderr.contains("is already in use") {
        Err(CliError::SessionInUse)
    } else {
        let code = status.and_then(|s| s.code());
        tracing::warn!(?code, stderr = %stderr.trim(), "claude CLI exited without a result");
        Err(CliError::Crashed { code, stderr })
    };
    let _ = tx.send(TurnItem::Ended(ended)).await;
}

/// Newline-delimited lines that never end the stream over one bad line: a line longer than
/// `max` bytes is skipped whole (up to its newline, without buffering it), and invalid UTF-8 is
/// replaced (U+FFFD) rather than refused. Only an I/O error ends decoding.
#[derive(Debug)]
pub struct LossyLines {
    max: usize,
    /// Inside an over-long line: drop bytes until its newline.
    discarding: bool,
    /// How far the buffer was already searched for a newline.
    searched: usize,
    /// Lines skipped for length (for diagnostics).
    pub skipped: usize,
}

impl LossyLines {
    /// Lines of at most `max` bytes (without the newline).
    pub fn new(max: usize) -> Self {
        Self {
            max,
            discarding: false,
            searched: 0,
            skipped: 0,
        }
    }
}

impl Decoder for LossyLines {
    type Item = String;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut tokio_util::bytes::BytesMut) -> Result<Option<String>, std::io::Error> {
        loop {
            let newline = buf[self.searched..].iter().position(|b| *b == b'\n');
            let Some(offset) = newline else {
                self.searched = buf.len();
                if self.discarding || buf.len() > self.max {
                    if !self.discarding {
                        self.skipped += 1;
                        tracing::warn!(max = self.max, "claude CLI output line over the limit skipped");
                    }
                    self.discarding = true;
                    buf.clear();
                    self.searched = 0;
                }
                return Ok(None);
            };
            let end = self.searched + offset;
            let line = buf.split_to(end + 1);
            self.searched = 0;
            if std::mem::take(&mut self.discarding) {
                continue;
            }
            if end > self.max {
                self.skipped += 1;
                tracing::warn!(max = self.max, "claude CLI output line over the limit skipped");
                continue;
            }
            let line = &line[..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            return Ok(Some(String::from_utf8_lossy(line).into_owned()));
        }
    }

    fn decode_eof(
        &mut self,
        buf: &mut tokio_util::bytes::BytesMut,
    ) -> Result<Option<String>, std::io::Error> {
        if let Some(line) = self.decode(buf)? {
            return Ok(Some(line));
        }
        if buf.is_empty() || std::mem::take(&mut self.discarding) {
            buf.clear();
            return Ok(None);
        }
        let rest = buf.split_to(buf.len());
        self.searched = 0;
        Ok(Some(String::from_utf8_lossy(&rest).into_owned()))
    }
}

fn ensure_dir(path: &Path) -> Result<(), CliError> {
    std::fs::create_dir_all(path).map_err(|e| CliError::Spawn(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(session: SessionMode, tools: Option<Vec<String>>) -> TurnRequest {
        TurnRequest {
            prompt: "secret prompt".into(),
            model: "sonnet".into(),
            agent: Arc::new(AgentSpec {
                name: "conversational".into(),
                description: "voice".into(),
                prompt: "be brief".into(),
                tools,
            }),
            session,
            cwd: PathBuf::from("/tmp"),
            max_budget_usd: None,
            allowed_tools: vec![],
        }
    }

    #[test]
    fn argv_has_lean_flags_and_never_the_prompt_or_skip_permissions() {
        let args = request(SessionMode::Stateless, Some(vec![])).args();
        for flag in [
            "-p",
            "--verbose",
            "--include-partial-messages",
            "--exclude-dynamic-system-prompt-sections",
            "--no-session-persistence",
        ] {
            assert!(args.iter().any(|a| a == flag), "{flag} missing from {args:?}");
        }
        let pos = args.iter().position(|a| a == "--tools").unwrap();
        assert_eq!(args[pos + 1], "", "no tools at all");
        assert!(!args.iter().any(|a| a.contains("secret prompt")));
        assert!(!args.iter().any(|a| a.contains("dangerously")));
        let pos = args.iter().position(|a| a == "--agents").unwrap();
        let agents: serde_json::Value = serde_json::from_str(&args[pos + 1]).unwrap();
        assert_eq!(agents["conversational"]["prompt"], "be brief");
        assert_eq!(agents["conversational"]["tools"], serde_json::json!([]));
    }

    async fn decode_all(input: &[u8], max: usize) -> Vec<String> {
        let mut lines = FramedRead::with_capacity(input, LossyLines::new(max), 7);
        let mut out = vec![];
        while let Some(line) = lines.next().await {
            out.push(line.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn lossy_lines_skip_long_lines_and_tolerate_bad_utf8() {
        let long = "x".repeat(50);
        let input = format!("one\n{long}\ntwo\r\n{long}{long}\nthree");
        assert_eq!(decode_all(input.as_bytes(), 20).await, ["one", "two", "three"]);
        let bad = b"ok\n\xff\xfe{\"a\":1}\nend\n";
        assert_eq!(
            decode_all(bad, 20).await,
            ["ok", "\u{fffd}\u{fffd}{\"a\":1}", "end"]
        );
        // An over-long unterminated tail is dropped, not returned.
        assert_eq!(decode_all(format!("a\n{long}").as_bytes(), 20).await, ["a"]);
        assert!(decode_all(b"", 20).await.is_empty());
    }

    #[test]
    fn session_modes_map_to_their_flags() {
        let id = uuid::Uuid::new_v4();
        let open = request(SessionMode::Open(id), None).args();
        let resume = request(SessionMode::Resume(id), None).args();
        assert!(
            open.windows(2)
                .any(|w| w[0] == "--session-id" && w[1] == id.to_string())
        );
        assert!(
            resume
                .windows(2)
                .any(|w| w[0] == "--resume" && w[1] == id.to_string())
        );
        assert!(
            !open.iter().any(|a| a == "--tools"),
            "default tools when the agent names none"
        );
    }
}
