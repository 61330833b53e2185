//! Benchmark of the voice gateway's added latency (not a test; nothing is asserted). Run with
//! `cargo bench --bench voice_gateway` (optionally `-- --sequential 200 --concurrent 50
//! --first-token-ms 40 --chunks 20`).
//!
//! The same fake CLI (this binary re-executed with `CLAUDE_CODE_BENCH_FAKE=1`: it reads the
//! prompt, waits a fixed time, then prints stream-json text deltas) is timed two ways: spawned
//! directly (spawn → first text delta line → result line) and through the real `afk-operator
//! sidecar` process over HTTP (request → first content chunk → `[DONE]`). The difference is what
//! the sidecar adds. Then 50 streams at once check that no text is lost or garbled. RSS is read
//! from the sidecar process's `/proc/<pid>/status`.

use std::{
    io::{BufRead, Read, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use futures::StreamExt;
use serde_json::json;

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
    let mut prompt = String::new();
    let _ = std::io::stdin().read_to_string(&mut prompt);
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
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

/// One direct run: (time to first delta, time to result, first→last delta span) in ms.
fn direct_run(exe: &str, env: &[(&str, String)]) -> (f64, f64, f64) {
    let start = Instant::now();
    let mut child = Command::new(exe)
        .args(["-p", "--output-format", "stream-json", "--verbose"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"direct").unwrap();
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
        if line.contains("\"result\"") {
            total = t;
        }
    }
    let _ = child.wait();
    let first = first.unwrap_or(f64::NAN);
    (first, total, last - first)
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

fn main() {
    if std::env::var("CLAUDE_CODE_BENCH_FAKE").as_deref() == Ok("1") {
        return fake_cli();
    }
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

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "bench-token").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut sidecar = Command::new(env!("CARGO_BIN_EXE_afk-operator"))
        .args([
            "sidecar",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--claude-bin",
            &exe,
        ])
        .args([
            "--max-concurrent-turns",
            &concurrent.max(1).to_string(),
            "--max-queued-turns",
            "64",
        ])
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
    let pid = sidecar.id();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let client = reqwest::Client::new();
    runtime.block_on(async {
        for _ in 0..200 {
            if client
                .get(format!("http://127.0.0.1:{port}/healthz"))
                .send()
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let idle_rss = rss_kib(pid, "VmRSS:");
    println!("voice gateway benchmark: fake CLI first token at {first_ms} ms, {chunks} chunks 1 ms apart");
    println!("sidecar idle RSS: {:.1} MiB", idle_rss as f64 / 1024.0);

    // Sequential, interleaved so both paths see the same machine state.
    let (mut d_first, mut d_total, mut d_span) = (Vec::new(), Vec::new(), Vec::new());
    let (mut s_first, mut s_total, mut s_span) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..sequential + 5 {
        let (f, t, s) = direct_run(&exe, &env);
        let r = runtime.block_on(sidecar_run(&client, &url, &format!("s{i}")));
        if i < 5 {
            continue; // warm-up
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
    println!("\nsequential ({sequential} runs each)           p50 ms    p95 ms");
    println!(
        "  direct  time to first text      {:>8.2}  {:>8.2}",
        percentile(&d_first, 0.5),
        percentile(&d_first, 0.95)
    );
    println!(
        "  sidecar time to first content   {:>8.2}  {:>8.2}",
        percentile(&s_first, 0.5),
        percentile(&s_first, 0.95)
    );
    println!(
        "  added to first content          {:>8.2}  {:>8.2}",
        percentile(&s_first, 0.5) - percentile(&d_first, 0.5),
        percentile(&s_first, 0.95) - percentile(&d_first, 0.95)
    );
    println!(
        "  direct  total                   {:>8.2}  {:>8.2}",
        percentile(&d_total, 0.5),
        percentile(&d_total, 0.95)
    );
    println!(
        "  sidecar total ([DONE])          {:>8.2}  {:>8.2}",
        percentile(&s_total, 0.5),
        percentile(&s_total, 0.95)
    );
    println!(
        "  added per chunk (first→last)    {:>8.3}  {:>8.3}",
        (percentile(&s_span, 0.5) - percentile(&d_span, 0.5)) / (chunks.max(2) - 1) as f64,
        (percentile(&s_span, 0.95) - percentile(&d_span, 0.95)) / (chunks.max(2) - 1) as f64
    );

    // Concurrent: every stream must carry exactly its own text.
    let started = Instant::now();
    let results = runtime.block_on(async {
        let futures = (0..concurrent).map(|i| {
            let client = client.clone();
            let url = url.clone();
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
    let firsts = sorted(firsts);
    let peak_rss = rss_kib(pid, "VmHWM:");
    println!(
        "\n{concurrent} concurrent streams: {bad} lost or garbled, wall {:.0} ms",
        wall.as_secs_f64() * 1000.0
    );
    println!(
        "  time to first content           {:>8.2}  {:>8.2}  (p50 / p95 ms; includes {concurrent} CLI spawns on 2 cores)",
        percentile(&firsts, 0.5),
        percentile(&firsts, 0.95)
    );
    println!("sidecar peak RSS: {:.1} MiB", peak_rss as f64 / 1024.0);
    let _ = sidecar.kill();
    let _ = sidecar.wait();
}
