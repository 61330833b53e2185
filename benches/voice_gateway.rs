//! Benchmark of the voice gateway's latency (not a test; nothing is asserted). Run with
//! `cargo bench --bench voice_gateway` (optionally `-- --sequential 200 --concurrent 50
//! --first-token-ms 40 --chunks 20`), or against the real CLI with
//! `cargo bench --bench voice_gateway -- --real-cli [--runs 30]`.
//!
//! Fake mode: the same fake CLI (this binary re-executed with `CLAUDE_CODE_BENCH_FAKE=1`: it
//! reads the prompt, answers its first token `--first-token-ms` after it started, then prints
//! stream-json text deltas) is timed spawned directly (spawn → first text delta line → result
//! line) and through the real `afk-operator sidecar` process over HTTP without its warm pool
//! (request → first content chunk → `[DONE]`): the difference is what the sidecar adds. Then
//! `--concurrent` streams at once, direct and through the sidecar, check that no text is lost or
//! garbled and where a burst's time goes. RSS is read from `/proc/<pid>/status`.
//! `--compare-url URL` times another OpenAI-compatible relay (started by hand with this binary
//! as its `claude`, see `docs/performance.md`) the same way, interleaved and in the burst.
//!
//! Real-CLI mode: the real `claude` (`.tools/claude`, or `--claude-bin`) against the project's
//! fake Messages API, answering at once: a cold direct spawn (the sidecar's own argv, prompt on
//! stdin) against the sidecar with its warm pool and without it, one request a second (a voice
//! conversation has gaps; the pool refills in them).

use std::{
    io::{BufRead, Read, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use futures::StreamExt;
use serde_json::json;

/// The value after `name`, if given.
fn arg_str(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The fake CLI: fixed time to first token, then `chunks` deltas 1 ms apart, then the result.
fn fake_cli() {
    let first_ms: u64 = std::env::var("CLAUDE_CODE_BENCH_FIRST_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let chunks: usize = std::env::var("CLAUDE_CODE_BENCH_CHUNKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let started = Instant::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version") {
        println!("2.1.330 (Claude Code)");
        return;
    }
    let mut prompt = String::new();
    let _ = std::io::stdin().read_to_string(&mut prompt);
    if prompt.trim().is_empty() {
        // `claude -p … <prompt>`: the prompt as the positional argument (how other relays call it).
        prompt = positional_prompt(&args).unwrap_or_default();
    }
    // With `--input-format stream-json` (the sidecar's processes) the prompt is one user message.
    if let Ok(message) = serde_json::from_str::<serde_json::Value>(prompt.trim()) {
        prompt = message["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string();
    }
    let mut out = std::io::stdout().lock();
    let sid = "00000000-0000-4000-8000-000000000000";
    let _ = writeln!(
        out,
        "{}",
        json!({"type":"system","subtype":"init","session_id":sid,"model":"sonnet"})
    );
    let _ = out.flush();
    std::thread::sleep(Duration::from_millis(first_ms).saturating_sub(started.elapsed()));
    let tag = prompt.trim();
    let mut text = String::new();
    for i in 0..chunks {
        let delta = format!("[{tag}:{i}]");
        text.push_str(&delta);
        let _ = writeln!(
            out,
            "{}",
            json!({"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":delta}}})
        );
        let _ = out.flush();
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = writeln!(
        out,
        "{}",
        json!({"type":"result","subtype":"success","is_error":false,"result":text,"duration_ms":1,"session_id":sid,"usage":{"input_tokens":3,"output_tokens":chunks}})
    );
    let _ = out.flush();
}

/// The positional argument of a `claude` command line: the last word that is neither a flag nor
/// a flag's value.
fn positional_prompt(args: &[String]) -> Option<String> {
    const TAKES_VALUE: [&str; 10] = [
        "--output-format",
        "--input-format",
        "--model",
        "--session-id",
        "--resume",
        "--agent",
        "--agents",
        "--allowedTools",
        "--max-budget-usd",
        "--settings",
    ];
    let mut found = None;
    let mut skip = false;
    for a in args {
        if skip {
            skip = false;
        } else if TAKES_VALUE.contains(&a.as_str()) {
            skip = true;
        } else if !a.starts_with('-') {
            found = Some(a.clone());
        }
    }
    found
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// One direct run of `command` with `prompt` on stdin: (time to first delta, time to result,
/// first→last delta span) in ms.
fn timed_spawn(mut command: Command, prompt: &str) -> (f64, f64, f64) {
    let start = Instant::now();
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(prompt.as_bytes()).unwrap();
    let reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let (mut first, mut last) = (None, 0.0);
    let mut total = 0.0;
    for line in reader.lines() {
        let line = line.unwrap();
        let t = start.elapsed().as_secs_f64() * 1000.0;
        if line.contains("text_delta") {
            first.get_or_insert(t);
            last = t;
        }
        if line.contains("\"type\":\"result\"") {
            total = t;
        }
    }
    let _ = child.wait();
    let first = first.unwrap_or(f64::NAN);
    (first, total, last - first)
}

/// One direct run of the fake CLI.
fn direct_run(exe: &str, env: &[(&str, String)]) -> (f64, f64, f64) {
    let mut command = Command::new(exe);
    command
        .args(["-p", "--output-format", "stream-json", "--verbose"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    timed_spawn(command, "direct")
}

struct Streamed {
    first: f64,
    total: f64,
    span: f64,
    text: String,
}

async fn sidecar_run(client: &reqwest::Client, url: &str, tag: &str) -> Streamed {
    let start = Instant::now();
    let resp = client
        .post(url)
        .bearer_auth("bench-token")
        .json(&json!({"model": "sonnet", "stream": true, "messages": [{"role": "user", "content": tag}]}))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let mut buffer = String::new();
    let (mut first, mut last, mut total) = (None, 0.0, 0.0);
    let mut text = String::new();
    while let Some(Ok(bytes)) = stream.next().await {
        buffer.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let t = start.elapsed().as_secs_f64() * 1000.0;
            let Some(data) = frame.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                total = t;
                continue;
            }
            let value: serde_json::Value = serde_json::from_str(data).unwrap();
            if let Some(content) = value["choices"][0]["delta"]["content"].as_str() {
                first.get_or_insert(t);
                last = t;
                text.push_str(content);
            }
        }
    }
    let first = first.unwrap_or(f64::NAN);
    Streamed {
        first,
        total,
        span: last - first,
        text,
    }
}

struct Sidecar {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Sidecar {
    fn start(claude_bin: &str, flags: &[&str], env: &[(&str, String)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "bench-token").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_afk-operator"))
            .args([
                "sidecar",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--claude-bin",
                claude_bin,
            ])
            .args(flags)
            .arg("--api-token-file")
            .arg(dir.path().join("token"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--agents-dir")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/agents"))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("AFK_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let sidecar = Self {
            child,
            port,
            _dir: dir,
        };
        for _ in 0..400 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        sidecar
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/chat/completions", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Summed RSS (KiB) of the sidecar's child processes (its warm CLIs) and their descendants.
    fn children_rss_kib(&self) -> u64 {
        descendants(self.pid() as i32)
            .into_iter()
            .map(|pid| rss_kib(pid as u32, "VmRSS:"))
            .sum()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn descendants(root: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(parents.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    found.remove(0);
    found
}

fn row(label: &str, values: &[f64]) {
    let values = sorted(values.to_vec());
    println!(
        "  {label:<34} {:>8.2}  {:>8.2}",
        percentile(&values, 0.5),
        percentile(&values, 0.95)
    );
}

/// Wait until the sidecar's warm pool holds a process that has finished starting (its CLI has
/// been up for `settle`), so a pooled request is measured, not a race with the refill.
fn wait_warm(sidecar: &Sidecar, settle: Duration) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while descendants(sidecar.pid() as i32).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(settle);
}

fn main() {
    if std::env::var("CLAUDE_CODE_BENCH_FAKE").as_deref() == Ok("1") {
        return fake_cli();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if std::env::args().any(|a| a == "--real-cli") {
        return real_cli_mode(&runtime);
    }
    fake_mode(&runtime);
}

fn fake_mode(runtime: &tokio::runtime::Runtime) {
    let sequential = arg("--sequential", 200) as usize;
    let concurrent = arg("--concurrent", 50) as usize;
    let first_ms = arg("--first-token-ms", 40);
    let chunks = arg("--chunks", 20) as usize;
    let exe = std::env::current_exe().unwrap().display().to_string();
    let env = vec![
        ("CLAUDE_CODE_BENCH_FAKE", "1".to_string()),
        ("CLAUDE_CODE_BENCH_FIRST_MS", first_ms.to_string()),
        ("CLAUDE_CODE_BENCH_CHUNKS", chunks.to_string()),
    ];
    let cap = concurrent.max(1).to_string();
    let sidecar = Sidecar::start(
        &exe,
        &[
            "--max-concurrent-turns",
            &cap,
            "--max-queued-turns",
            "64",
            "--chat-pool-size",
            "0",
        ],
        &env,
    );
    let pid = sidecar.pid();
    let url = sidecar.url();
    let client = reqwest::Client::new();
    std::thread::sleep(Duration::from_millis(300));
    let idle_rss = rss_kib(pid, "VmRSS:");
    println!(
        "voice gateway benchmark: fake CLI first token {first_ms} ms after it starts, {chunks} chunks 1 ms apart"
    );
    println!(
        "sidecar idle RSS (no warm CLIs): {:.1} MiB",
        idle_rss as f64 / 1024.0
    );

    // Sequential, interleaved so both paths see the same machine state.
    let (mut d_first, mut d_total, mut d_span) = (Vec::new(), Vec::new(), Vec::new());
    let (mut s_first, mut s_total, mut s_span) = (Vec::new(), Vec::new(), Vec::new());
    let compare = arg_str("--compare-url");
    let (mut o_first, mut o_total) = (Vec::new(), Vec::new());
    for i in 0..sequential + 5 {
        let (f, t, s) = direct_run(&exe, &env);
        let r = runtime.block_on(sidecar_run(&client, &url, &format!("s{i}")));
        let other = compare
            .as_deref()
            .map(|other| runtime.block_on(sidecar_run(&client, other, &format!("o{i}"))));
        if i < 5 {
            continue; // warm-up
        }
        if let Some(other) = other {
            o_first.push(other.first);
            o_total.push(other.total);
        }
        d_first.push(f);
        d_total.push(t);
        d_span.push(s);
        s_first.push(r.first);
        s_total.push(r.total);
        s_span.push(r.span);
    }
    let (d_first, d_total, s_first, s_total) =
        (sorted(d_first), sorted(d_total), sorted(s_first), sorted(s_total));
    let (d_span, s_span) = (sorted(d_span), sorted(s_span));
    println!("\nsequential, no warm pool ({sequential} runs each)   p50 ms    p95 ms");
    row("direct  time to first text", &d_first);
    row("sidecar time to first content", &s_first);
    println!(
        "  {:<34} {:>8.2}  {:>8.2}",
        "added to first content",
        percentile(&s_first, 0.5) - percentile(&d_first, 0.5),
        percentile(&s_first, 0.95) - percentile(&d_first, 0.95)
    );
    if compare.is_some() {
        row("other relay time to first content", &o_first);
        println!(
            "  {:<34} {:>8.2}  {:>8.2}",
            "other relay added to first content",
            percentile(&sorted(o_first.clone()), 0.5) - percentile(&d_first, 0.5),
            percentile(&sorted(o_first.clone()), 0.95) - percentile(&d_first, 0.95)
        );
    }
    row("direct  total", &d_total);
    row("sidecar total ([DONE])", &s_total);
    if compare.is_some() {
        row("other relay total ([DONE])", &o_total);
    }
    println!(
        "  {:<34} {:>8.3}  {:>8.3}",
        "added per chunk (first→last)",
        (percentile(&s_span, 0.5) - percentile(&d_span, 0.5)) / (chunks.max(2) - 1) as f64,
        (percentile(&s_span, 0.95) - percentile(&d_span, 0.95)) / (chunks.max(2) - 1) as f64
    );

    // A burst: the same number of direct spawns at once (the floor), then through the sidecar.
    let direct_burst: Vec<f64> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..concurrent)
            .map(|_| scope.spawn(|| direct_run(&exe, &env).0))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let burst = burst_through(runtime, &client, &url, concurrent, chunks);
    let peak_rss = rss_kib(pid, "VmHWM:");
    println!(
        "\n{concurrent} concurrent streams: {} lost or garbled, wall {:.0} ms     p50 ms    p95 ms",
        burst.bad,
        burst.wall.as_secs_f64() * 1000.0
    );
    row("direct  time to first text", &direct_burst);
    row("sidecar time to first content", &burst.firsts);
    if let Some(other) = &compare {
        let other = burst_through(runtime, &client, other, concurrent, chunks);
        row("other relay time to first content", &other.firsts);
        println!(
            "  other relay: {} lost or garbled, wall {:.0} ms",
            other.bad,
            other.wall.as_secs_f64() * 1000.0
        );
    }
    println!("sidecar peak RSS: {:.1} MiB", peak_rss as f64 / 1024.0);
}

/// What a burst through one relay gave: first-content times, streams whose text was not
/// exactly what their CLI printed, wall time.
struct Burst {
    firsts: Vec<f64>,
    bad: usize,
    wall: Duration,
}

/// `concurrent` streams at once through the relay at `url`, each text checked.
fn burst_through(
    runtime: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    url: &str,
    concurrent: usize,
    chunks: usize,
) -> Burst {
    let started = Instant::now();
    let results = runtime.block_on(async {
        let futures = (0..concurrent).map(|i| {
            let client = client.clone();
            let url = url.to_string();
            async move { (i, sidecar_run(&client, &url, &format!("c{i}")).await) }
        });
        futures::future::join_all(futures).await
    });
    let wall = started.elapsed();
    let mut bad = 0;
    let mut firsts = Vec::new();
    for (i, r) in &results {
        let want: String = (0..chunks).map(|n| format!("[c{i}:{n}]")).collect();
        if r.text != want {
            bad += 1;
        }
        firsts.push(r.first);
    }
    Burst { firsts, bad, wall }
}

fn real_cli_mode(runtime: &tokio::runtime::Runtime) {
    use afk_operator::{
        adapters::claude::{AgentSpec, SessionMode, TurnRequest},
        agents::Agents,
    };
    use afk_testkit::anthropic::{FakeAnthropic, Reply};

    let runs = arg("--runs", 30) as usize;
    let gap = Duration::from_millis(arg("--gap-ms", 1000));
    let claude = std::env::args()
        .skip_while(|a| a != "--claude-bin")
        .nth(1)
        .unwrap_or_else(|| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/.tools/claude/node_modules/.bin/claude"
            )
            .to_string()
        });
    if !std::path::Path::new(&claude).exists() {
        eprintln!("the real claude CLI is not at {claude} (.ci/run installs it; or pass --claude-bin)");
        std::process::exit(2);
    }
    let api_key = "sk-ant-bench";
    let chunks: Vec<String> = (0..20).map(|i| format!("word{i} ")).collect();
    let chunk_refs: Vec<&str> = chunks.iter().map(String::as_str).collect();
    let fake = runtime.block_on(FakeAnthropic::start(api_key, Reply::text(&chunk_refs)));
    let base = fake.served.url();
    let env = vec![
        ("ANTHROPIC_BASE_URL", base.clone()),
        ("ANTHROPIC_API_KEY", api_key.to_string()),
        ("CLAUDE_CODE_MAX_RETRIES", "0".to_string()),
    ];
    let work = tempfile::tempdir().unwrap();
    let agents = Agents::load_dir(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/agents"
    )))
    .unwrap();
    let request = TurnRequest {
        prompt: String::new(),
        model: "sonnet".into(),
        agent: std::sync::Arc::new(AgentSpec::from_agent(agents.get("conversational").unwrap())),
        session: SessionMode::Stateless,
        cwd: work.path().to_path_buf(),
        max_budget_usd: None,
        allowed_tools: vec![],
    };
    let argv = request.args();
    let home = work.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut direct_env = env.clone();
    direct_env.extend([
        ("HOME", home.display().to_string()),
        ("DISABLE_TELEMETRY", "1".to_string()),
        ("DISABLE_AUTOUPDATER", "1".to_string()),
        ("DISABLE_ERROR_REPORTING", "1".to_string()),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".to_string()),
    ]);
    let direct = |prompt: &str| {
        let mut command = Command::new(&claude);
        command
            .args(&argv)
            .current_dir(work.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(direct_env.iter().map(|(k, v)| (*k, v.as_str())));
        timed_spawn(command, prompt)
    };
    // The sidecar passes the key to its CLIs only from a file (never from its own environment).
    let key_file = work.path().join("api-key");
    std::fs::write(&key_file, api_key).unwrap();
    let key_file = key_file.display().to_string();
    let client = reqwest::Client::new();
    let pooled = Sidecar::start(
        &claude,
        &["--max-concurrent-turns", "4", "--claude-api-key-file", &key_file],
        &env,
    );
    let cold = Sidecar::start(
        &claude,
        &[
            "--max-concurrent-turns",
            "4",
            "--chat-pool-size",
            "0",
            "--claude-api-key-file",
            &key_file,
        ],
        &env,
    );
    std::thread::sleep(Duration::from_secs(2));
    let idle_rss = rss_kib(cold.pid(), "VmRSS:");
    wait_warm(&pooled, Duration::from_secs(2));
    let pool_rss = pooled.children_rss_kib();
    println!(
        "voice gateway with the real claude CLI against the fake Messages API (instant answers, 20 chunks)"
    );
    println!(
        "{runs} requests per path, one every {} ms, interleaved\n",
        gap.as_millis()
    );
    let (mut d, mut p, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs + 2 {
        let direct_run = direct(&format!("direct {i}"));
        std::thread::sleep(gap);
        let pooled_run = runtime.block_on(sidecar_run(&client, &pooled.url(), &format!("pooled {i}")));
        std::thread::sleep(gap);
        let cold_run = runtime.block_on(sidecar_run(&client, &cold.url(), &format!("cold {i}")));
        std::thread::sleep(gap);
        if i < 2 {
            continue; // warm-up (file caches)
        }
        d.push(direct_run);
        p.push(pooled_run);
        c.push(cold_run);
    }
    let firsts = |v: &[(f64, f64, f64)]| v.iter().map(|r| r.0).collect::<Vec<_>>();
    let streamed_firsts = |v: &[Streamed]| v.iter().map(|r| r.first).collect::<Vec<_>>();
    println!("  {:<34} {:>8}  {:>8}", "", "p50 ms", "p95 ms");
    row("cold direct spawn: first text", &firsts(&d));
    row("sidecar, warm pool: first content", &streamed_firsts(&p));
    row("sidecar, no pool: first content", &streamed_firsts(&c));
    let d_first = sorted(firsts(&d));
    let p_first = sorted(streamed_firsts(&p));
    let c_first = sorted(streamed_firsts(&c));
    println!(
        "  {:<34} {:>8.2}  {:>8.2}",
        "warm pool vs cold direct",
        percentile(&p_first, 0.5) - percentile(&d_first, 0.5),
        percentile(&p_first, 0.95) - percentile(&d_first, 0.95)
    );
    println!(
        "  {:<34} {:>8.2}  {:>8.2}",
        "no pool vs cold direct (added)",
        percentile(&c_first, 0.5) - percentile(&d_first, 0.5),
        percentile(&c_first, 0.95) - percentile(&d_first, 0.95)
    );
    let span = |v: Vec<f64>| percentile(&sorted(v), 0.5) / 19.0;
    println!(
        "  {:<34} {:>8.3}  (direct {:.3}) ms per chunk, p50",
        "sidecar per chunk (first→last)",
        span(p.iter().map(|r| r.span).collect()),
        span(d.iter().map(|r| r.2).collect())
    );
    println!(
        "\nsidecar idle RSS (no warm CLIs): {:.1} MiB; one warm CLI: {:.1} MiB",
        idle_rss as f64 / 1024.0,
        pool_rss as f64 / 1024.0
    );
}
