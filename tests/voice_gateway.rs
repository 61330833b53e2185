//! The voice gateway over real HTTP, with the fake `claude` script for what the real CLI cannot
//! be made to do on cue (hang, crash mid-stream, a grandchild holding stdout, API and budget
//! errors). The real CLI is exercised in `voice_real_cli.rs`.

mod sidecar_support;

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use sidecar_support::{Sidecar, TOKEN, fake_claude, group_members, sse_events, wait_group_gone};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn chat(text: &str, stream: bool, include_usage: bool) -> Value {
    json!({
        "model": "sonnet",
        "stream": stream,
        "stream_options": {"include_usage": include_usage},
        "temperature": 0.3,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}],
    })
}

fn chunks(body: &str) -> Vec<Value> {
    sse_events(body)
        .into_iter()
        .filter(|(_, d)| d != "[DONE]")
        .map(|(_, d)| serde_json::from_str(&d).unwrap())
        .collect()
}

fn text_of(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

#[tokio::test]
async fn streams_role_with_first_text_then_deltas_finish_usage_and_done() {
    let sc = Sidecar::start(&fake_claude(), &[], &[]).await;
    let resp = sc
        .post("/v1/chat/completions", chat("hello there friend", true, true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let body = resp.text().await.unwrap();
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    let chunks = chunks(&body);
    let first = &chunks[0];
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert!(
        !first["choices"][0]["delta"]["content"]
            .as_str()
            .unwrap()
            .is_empty(),
        "no empty early chunk"
    );
    assert!(chunks[1..].iter().all(|c| {
        c["choices"]
            .as_array()
            .unwrap()
            .iter()
            .all(|ch| ch["delta"].get("role").is_none())
    }));
    let expected = "You said: Be brief.\n\nUser: hello there friend";
    assert_eq!(text_of(&chunks), expected);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        usage["usage"]["total_tokens"].as_u64().unwrap(),
        usage["usage"]["prompt_tokens"].as_u64().unwrap()
            + usage["usage"]["completion_tokens"].as_u64().unwrap()
    );
    let ids: std::collections::HashSet<_> = chunks
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 1, "one id per completion");

    // How the CLI was run: prompt on stdin only, no tools, no permission bypass, empty temp cwd.
    let runs = sc.wait_runs(1).await;
    let argv: Vec<&str> = runs[0]["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(runs[0]["stdin"], "Be brief.\n\nUser: hello there friend");
    assert!(!argv.iter().any(|a| a.contains("hello there friend")));
    assert!(!argv.iter().any(|a| a.contains("dangerously")));
    assert!(argv.windows(2).any(|w| w == ["--tools", ""]));
    assert!(argv.windows(2).any(|w| w == ["--agent", "conversational"]));
    assert!(argv.contains(&"--no-session-persistence"));
    let cwd = std::path::PathBuf::from(runs[0]["cwd"].as_str().unwrap());
    assert!(cwd.starts_with(sc.dir.path()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!cwd.exists(), "the per-turn directory is removed");
}

#[tokio::test]
async fn without_include_usage_there_is_no_usage_chunk() {
    let sc = Sidecar::start(&fake_claude(), &[], &[]).await;
    let body = sc
        .post("/v1/chat/completions", chat("hi", true, false))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let chunks = chunks(&body);
    assert!(chunks.iter().all(|c| c.get("usage").is_none_or(Value::is_null)));
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn non_streaming_returns_one_completion_with_usage() {
    let sc = Sidecar::start(&fake_claude(), &[], &[]).await;
    let resp = sc
        .post("/v1/chat/completions", chat("hi", false, false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "You said: Be brief.\n\nUser: hi"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert!(body["usage"]["total_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn bad_requests_get_openai_errors_and_spawn_nothing() {
    let sc = Sidecar::start(&fake_claude(), &[], &["--models", "claude-sonnet-4-5"]).await;
    let cases = [
        (
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}),
            "model",
        ),
        (
            json!({"model": "sonnet", "tools": [{"type": "function", "function": {"name": "f"}}], "messages": [{"role": "user", "content": "x"}]}),
            "tools",
        ),
        (json!({"model": "sonnet", "messages": []}), "messages"),
    ];
    for (body, param) in cases {
        let resp = sc
            .post("/v1/chat/completions", body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{body}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["type"], "invalid_request_error");
        assert_eq!(err["error"]["param"], param);
        assert!(err["error"]["message"].as_str().unwrap().len() > 10);
    }
    let resp = sc
        .post("/v1/chat/completions", json!({"model": "nope"}))
        .send()
        .await
        .unwrap();
    let err: Value = resp.json().await.unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sonnet, opus, haiku, claude-sonnet-4-5")
    );
    let resp = Sidecar::client()
        .post(format!("{}/v1/chat/completions", sc.base))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["type"],
        "invalid_request_error"
    );
    let resp = Sidecar::client()
        .post(format!("{}/v1/chat/completions", sc.base))
        .json(&chat("x", false, false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = Sidecar::client()
        .get(format!("{}/v1/models", sc.base))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let big = "x".repeat(300 * 1024);
    let resp = sc
        .post("/v1/chat/completions", chat(&big, false, false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert!(sc.runs().is_empty(), "nothing was spawned");
}

#[tokio::test]
async fn models_lists_aliases_and_configured_ids() {
    let sc = Sidecar::start(
        &fake_claude(),
        &[],
        &["--models", "claude-sonnet-4-5,claude-opus-4-1"],
    )
    .await;
    let body: Value = sc.get_json("/v1/models").await;
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["sonnet", "opus", "haiku", "claude-sonnet-4-5", "claude-opus-4-1"]
    );
    assert_eq!(body["object"], "list");
}

#[tokio::test]
async fn upstream_errors_become_honest_statuses() {
    for (mode, status, code) in [
        ("api-error", 503, "upstream_error"),
        ("budget", 402, "budget_exceeded"),
        ("crash-early", 502, "cli_crashed"),
    ] {
        let program = if mode == "crash-early" {
            std::path::PathBuf::from("/bin/false")
        } else {
            fake_claude()
        };
        let sc = Sidecar::start(&program, &[("CLAUDE_CODE_FAKE_MODE", mode)], &[]).await;
        for stream in [false, true] {
            let resp = sc
                .post("/v1/chat/completions", chat("hi", stream, false))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), status, "{mode} stream={stream}");
            let err: Value = resp.json().await.unwrap();
            assert_eq!(err["error"]["code"], code, "{mode}");
        }
        let metrics = sc.state.metrics.render();
        assert!(
            metrics.contains(&format!("afk_cli_failures_total{{kind=\"{code}\"}} 2")),
            "{metrics}"
        );
    }
}

#[tokio::test]
async fn a_crash_mid_stream_is_an_error_event_and_no_done() {
    let sc = Sidecar::start(&fake_claude(), &[("CLAUDE_CODE_FAKE_MODE", "crash")], &[]).await;
    let resp = sc
        .post("/v1/chat/completions", chat("one two three four", true, true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    assert!(!body.contains("[DONE]"), "{body}");
    let chunks = chunks(&body);
    assert_eq!(text_of(&chunks), "You said: ");
    let last = chunks.last().unwrap();
    assert_eq!(last["error"]["code"], "cli_crashed");
    assert_eq!(last["error"]["type"], "server_error");
}

#[tokio::test]
async fn a_grandchild_holding_stdout_does_not_hold_the_response() {
    let sc = Sidecar::start(&fake_claude(), &[("CLAUDE_CODE_FAKE_MODE", "grandchild")], &[]).await;
    let started = std::time::Instant::now();
    let body: Value = sc
        .post_json("/v1/chat/completions", chat("hi", false, false))
        .await;
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "You said: Be brief.\n\nUser: hi"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let pgid = sc.wait_runs(1).await[0]["pgid"].as_i64().unwrap();
    wait_group_gone(pgid, Duration::from_secs(7))
        .await
        .expect("the grandchild is killed");
}

#[tokio::test]
async fn disconnect_mid_stream_kills_the_whole_process_group_within_two_seconds() {
    let sc = Sidecar::start(&fake_claude(), &[("CLAUDE_CODE_FAKE_MODE", "stall")], &[]).await;
    let resp = sc
        .post("/v1/chat/completions", chat("one two three", true, false))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("\"role\":\"assistant\""));
    let pgid = sc.wait_runs(1).await[0]["pgid"].as_i64().unwrap();
    // The CLI and its `sleep` grandchild are both alive while the stream is open.
    for _ in 0..100 {
        if group_members(pgid).len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(group_members(pgid).len() >= 2, "CLI and grandchild running");
    assert!(sc.state.metrics.render().contains("afk_chat_active_streams 1"));
    drop(stream);
    let took = wait_group_gone(pgid, Duration::from_secs(2))
        .await
        .expect("process group gone within 2 s");
    eprintln!("process group gone {took:?} after the disconnect");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(sc.state.metrics.render().contains("afk_chat_active_streams 0"));
}

#[tokio::test]
async fn disconnect_before_the_first_token_kills_the_cli_too() {
    let sc = Sidecar::start(
        &fake_claude(),
        &[("CLAUDE_CODE_FAKE_MODE", "grandchild-hang")],
        &[],
    )
    .await;
    // The warm process is up: the client's patience measures the turn, not Python's start-up.
    sc.wait_started(1).await;
    let request = sc
        .post("/v1/chat/completions", chat("hi", true, false))
        .timeout(Duration::from_millis(800));
    let pending = tokio::spawn(async move { request.send().await });
    let pgid = sc.wait_runs(1).await[0]["pgid"].as_i64().unwrap();
    assert!(pending.await.unwrap().is_err(), "the client gave up");
    wait_group_gone(pgid, Duration::from_secs(2))
        .await
        .expect("process group gone within 2 s");
}

#[tokio::test]
async fn a_turn_past_its_deadline_is_a_504_and_is_killed() {
    let sc = Sidecar::start(
        &fake_claude(),
        &[("CLAUDE_CODE_FAKE_MODE", "hang")],
        &["--turn-timeout-secs", "1"],
    )
    .await;
    sc.wait_started(1).await;
    let resp = sc
        .post("/v1/chat/completions", chat("hi", true, false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["code"], "timeout");
    let pgid = sc.wait_runs(1).await[0]["pgid"].as_i64().unwrap();
    wait_group_gone(pgid, Duration::from_secs(2)).await.unwrap();
}

#[tokio::test]
async fn a_full_queue_is_a_429_with_retry_after() {
    let sc = Sidecar::start(
        &fake_claude(),
        &[("CLAUDE_CODE_FAKE_MODE", "hang")],
        &[
            "--max-concurrent-turns",
            "1",
            "--max-queued-turns",
            "1",
            "--turn-timeout-secs",
            "5",
        ],
    )
    .await;
    let first = tokio::spawn(sc.post("/v1/chat/completions", chat("a", false, false)).send());
    sc.wait_runs(1).await;
    let second = tokio::spawn(sc.post("/v1/chat/completions", chat("b", false, false)).send());
    // Wait until the second request is queued, then the third finds the queue full.
    let voice = sc.state.voice.clone().unwrap();
    for _ in 0..200 {
        if voice.queued() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let third = sc
        .post("/v1/chat/completions", chat("c", false, false))
        .send()
        .await
        .unwrap();
    assert_eq!(third.status(), 429);
    let retry_after: u64 = third.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    assert_eq!(
        third.json::<Value>().await.unwrap()["error"]["type"],
        "rate_limit_error"
    );
    first.abort();
    second.abort();
}

#[tokio::test]
async fn conversational_opens_then_resumes_and_recovers_lost_sessions() {
    let sc = Sidecar::start(&fake_claude(), &[], &[]).await;
    let id = "3b241101-e2bb-4255-8caf-4136c566a962";
    let one: Value = sc
        .post_json(
            "/v1/conversational",
            json!({"session_id": id, "message": "first"}),
        )
        .await;
    assert_eq!(one, json!({"session_id": id, "reply": "You said: first"}));
    let two: Value = sc
        .post_json(
            "/v1/conversational",
            json!({"session_id": id, "message": "second", "model": "haiku"}),
        )
        .await;
    assert_eq!(
        two["reply"], "You said: second (turn 2)",
        "the CLI saw the earlier turn"
    );
    let runs = sc.runs();
    let flag = |run: &Value, f: &str| {
        run["argv"]
            .as_array()
            .unwrap()
            .iter()
            .position(|a| a == f)
            .map(|i| run["argv"][i + 1].clone())
    };
    assert_eq!(flag(&runs[0], "--session-id"), Some(json!(id)));
    assert_eq!(flag(&runs[1], "--resume"), Some(json!(id)));
    assert_eq!(flag(&runs[1], "--model"), Some(json!("haiku")));
    assert_eq!(
        runs[0]["cwd"], runs[1]["cwd"],
        "one stable directory for stored sessions"
    );

    // The CLI lost its store: the resume fails and is retried once as a new session.
    std::fs::remove_dir_all(sc.dir.path().join("state/home/.fake-claude")).unwrap();
    let three: Value = sc
        .post_json(
            "/v1/conversational",
            json!({"session_id": id, "message": "third"}),
        )
        .await;
    assert_eq!(three["reply"], "You said: third");
    let runs = sc.runs();
    assert_eq!(flag(&runs[2], "--resume"), Some(json!(id)));
    assert_eq!(flag(&runs[3], "--session-id"), Some(json!(id)));
}

#[tokio::test]
async fn conversational_after_a_restart_resumes_the_stored_session() {
    let sc = Sidecar::start(&fake_claude(), &[], &[]).await;
    let id = "6a1e2d3c-0000-4000-8000-000000000001";
    sc.post(
        "/v1/conversational",
        json!({"session_id": id, "message": "first"}),
    )
    .send()
    .await
    .unwrap();
    // A second gateway over the same state dir does not know the session, the CLI does.
    let voice = sc.state.voice.clone().unwrap();
    voice.forget_sessions();
    let two: Value = sc
        .post_json(
            "/v1/conversational",
            json!({"session_id": id, "message": "again"}),
        )
        .await;
    assert_eq!(two["reply"], "You said: again (turn 2)");
}

#[tokio::test]
async fn conversational_streams_deltas_and_rejects_bad_input() {
    let sc = Sidecar::start(&fake_claude(), &[], &[]).await;
    let id = "6a1e2d3c-0000-4000-8000-000000000002";
    let body = sc
        .post(
            "/v1/conversational",
            json!({"session_id": id, "message": "hello you", "stream": true}),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events = sse_events(&body);
    let deltas: String = events
        .iter()
        .filter(|(e, _)| e == "delta")
        .map(|(_, d)| {
            serde_json::from_str::<Value>(d).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(deltas, "You said: hello you");
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "done");
    assert_eq!(
        serde_json::from_str::<Value>(data).unwrap()["reply"],
        "You said: hello you"
    );
    for bad in [
        json!({"session_id": "not-a-uuid", "message": "x"}),
        json!({"session_id": id, "message": "  "}),
        json!({"session_id": id, "message": "x", "model": "gpt-4"}),
        json!({"session_id": id}),
        json!({"session_id": id, "message": "x", "surprise": 1}),
    ] {
        let resp = sc.post("/v1/conversational", bad.clone()).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
    }
}

#[tokio::test]
async fn a_second_turn_in_a_busy_session_is_a_409() {
    let sc = Sidecar::start(
        &fake_claude(),
        &[("CLAUDE_CODE_FAKE_MODE", "hang")],
        &["--turn-timeout-secs", "5"],
    )
    .await;
    let id = "6a1e2d3c-0000-4000-8000-000000000003";
    let first = tokio::spawn(
        sc.post("/v1/conversational", json!({"session_id": id, "message": "a"}))
            .send(),
    );
    sc.wait_runs(1).await;
    let resp = sc
        .post("/v1/conversational", json!({"session_id": id, "message": "b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    first.abort();
}

#[tokio::test]
async fn shutdown_ends_open_streams_promptly() {
    let mut sc = Sidecar::start(&fake_claude(), &[("CLAUDE_CODE_FAKE_MODE", "stall")], &[]).await;
    let resp = sc
        .post("/v1/chat/completions", chat("one two three", true, false))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap();
    let started = std::time::Instant::now();
    sc.shutdown();
    let mut rest = Vec::new();
    while let Some(Ok(bytes)) = stream.next().await {
        rest.extend_from_slice(&bytes);
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stream ended in {:?}",
        started.elapsed()
    );
    assert!(String::from_utf8_lossy(&rest).contains("shutting_down"));
    sc.server.take().unwrap().await.unwrap().unwrap();
    let pgid = sc.runs()[0]["pgid"].as_i64().unwrap();
    wait_group_gone(pgid, Duration::from_secs(2)).await.unwrap();
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let sc = Sidecar::start(&fake_claude(), &[], &[]).await;
    let mut socket = tokio::net::TcpStream::connect(sc.addr).await.unwrap();
    socket
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server closed the connection");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    // A complete request on a fresh connection still works.
    let ok = Sidecar::client()
        .get(format!("{}/healthz", sc.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn requests_and_time_to_first_token_are_measured() {
    let sc = Sidecar::start(&fake_claude(), &[], &[]).await;
    sc.post("/v1/chat/completions", chat("hi", false, false))
        .send()
        .await
        .unwrap();
    sc.post("/v1/chat/completions", json!({"model": "x"}))
        .send()
        .await
        .unwrap();
    let metrics = sc.state.metrics.render();
    for needle in [
        "afk_sidecar_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 1",
        "afk_sidecar_requests_total{route=\"/v1/chat/completions\",status=\"400\"} 1",
        "afk_chat_time_to_first_token_seconds_count 1",
    ] {
        assert!(metrics.contains(needle), "{needle} missing:\n{metrics}");
    }
}

#[tokio::test]
async fn a_slow_first_token_holds_the_status_until_text_arrives() {
    let sc = Sidecar::start(
        &fake_claude(),
        &[
            ("CLAUDE_CODE_FAKE_MODE", "slow"),
            ("CLAUDE_CODE_FAKE_DELAY_MS", "700"),
        ],
        &[],
    )
    .await;
    let started = std::time::Instant::now();
    let resp = sc
        .post("/v1/chat/completions", chat("patience", true, false))
        .send()
        .await
        .unwrap();
    let headers_after = started.elapsed();
    assert_eq!(resp.status(), 200);
    assert!(
        headers_after >= Duration::from_millis(650),
        "no early empty 200: {headers_after:?}"
    );
    let body = resp.text().await.unwrap();
    let chunks = chunks(&body);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(text_of(&chunks), "You said: Be brief.\n\nUser: patience");
    let metrics = sc.state.metrics.render();
    let le = metrics
        .lines()
        .find(|l| l.starts_with("afk_chat_time_to_first_token_seconds_bucket{le=\"0.5\"}"))
        .unwrap();
    assert!(le.ends_with(" 0"), "the first token took longer than 0.5 s: {le}");
}

/// Whether `pid` is a live (non-zombie) process.
fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

#[tokio::test]
async fn lingering_clis_never_exceed_the_concurrency_limit() {
    // Each CLI answers at once, then lives on for 600 ms (as the real one does writing session
    // files). The slot must stay taken until the process is reaped, not until the answer.
    let sc = Sidecar::start(
        &fake_claude(),
        &[
            ("CLAUDE_CODE_FAKE_MODE", "linger"),
            ("CLAUDE_CODE_FAKE_LINGER_MS", "600"),
        ],
        &["--max-concurrent-turns", "2", "--max-queued-turns", "16"],
    )
    .await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        let record = sc.record.clone();
        tokio::spawn(async move {
            let mut most = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let pids: Vec<i64> = std::fs::read_to_string(&record)
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok()?["pid"].as_i64())
                    .collect();
                most = most.max(pids.into_iter().filter(|p| alive(*p)).count());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            most
        })
    };
    let requests: Vec<_> = (0..6)
        .map(|i| {
            let req = sc.post("/v1/chat/completions", chat(&format!("n{i}"), i % 2 == 0, false));
            tokio::spawn(async move { req.send().await.unwrap().text().await.unwrap() })
        })
        .collect();
    for r in requests {
        let body = r.await.unwrap();
        assert!(
            body.contains("You said") || body.contains("data: [DONE]"),
            "every request is answered: {body}"
        );
    }
    // The last ones are still lingering: wait for them to go, then stop sampling.
    for run in sc.wait_runs(6).await {
        let pid = run["pid"].as_i64().unwrap();
        let start = std::time::Instant::now();
        while alive(pid) {
            assert!(start.elapsed() < Duration::from_secs(10), "pid {pid} never ended");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let most = sampler.await.unwrap();
    assert!(
        most <= 2,
        "{most} CLIs alive at once with --max-concurrent-turns 2"
    );
    assert!(most >= 1, "the sampler saw the CLIs");
}

#[tokio::test]
async fn an_over_long_or_non_utf8_output_line_is_skipped_not_fatal() {
    let sc = Sidecar::start(&fake_claude(), &[("CLAUDE_CODE_FAKE_MODE", "noisy")], &[]).await;
    let resp = sc
        .post("/v1/chat/completions", chat("still here", false, false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "You said: Be brief.\n\nUser: still here"
    );
}

/// Read until the server closes `socket` (EOF or reset); how long it took, or `None` after `limit`.
async fn closed_within(mut socket: tokio::net::TcpStream, limit: Duration) -> Option<Duration> {
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

#[tokio::test]
async fn silent_idle_and_http2_connections_are_closed_while_requests_are_served() {
    // The support sidecar's header-read timeout is 1 s.
    let sc = Sidecar::start(&fake_claude(), &[], &[]).await;
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(tokio::net::TcpStream::connect(sc.addr).await.unwrap());
    }
    let mut preface = tokio::net::TcpStream::connect(sc.addr).await.unwrap();
    preface
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // A keep-alive connection that served one request, then goes quiet.
    let mut idle = tokio::net::TcpStream::connect(sc.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    // Meanwhile a real request is served at once.
    let ok = Sidecar::client()
        .get(format!("{}/healthz", sc.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let limit = Duration::from_secs(6);
    let waits = futures::future::join_all(
        silent
            .into_iter()
            .chain([preface, idle])
            .map(|s| closed_within(s, limit)),
    )
    .await;
    let open = waits.iter().filter(|w| w.is_none()).count();
    assert_eq!(open, 0, "{open} of 202 connections still open after {limit:?}");
}

#[tokio::test]
async fn unknown_routes_methods_and_oversize_bodies_answer_in_the_one_error_shape() {
    let sc = Sidecar::start(&fake_claude(), &[], &[]).await;
    let check = |what: &'static str, status: u16, code: &'static str| {
        move |resp: reqwest::Response| async move {
            assert_eq!(resp.status(), status, "{what}");
            assert!(
                resp.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("application/json"),
                "{what}"
            );
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"]["code"], code, "{what}: {body}");
            for field in ["message", "type"] {
                assert!(body["error"][field].is_string(), "{what}: {body}");
            }
            assert!(body["error"].get("param").is_some(), "{what}: {body}");
        }
    };
    check("unknown path", 404, "not_found")(sc.get("/nope").send().await.unwrap()).await;
    check("unknown /v1 path", 404, "not_found")(sc.get("/v1/nope").send().await.unwrap()).await;
    check("wrong method", 405, "method_not_allowed")(
        Sidecar::client()
            .delete(format!("{}/v1/chat/completions", sc.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let big = "x".repeat(300 * 1024);
    check("oversize chat", 413, "invalid_request")(
        sc.post(
            "/v1/chat/completions",
            json!({"model": "sonnet", "messages": [{"role": "user", "content": big}]}),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    check("oversize power verb", 413, "payload_too_large")(
        Sidecar::client()
            .post(format!("{}/api/breakglass/pve/status", sc.base))
            .bearer_auth(TOKEN)
            .body(vec![b' '; 100 * 1024])
            .send()
            .await
            .unwrap(),
    )
    .await;
    check("malformed JSON", 400, "invalid_request")(
        Sidecar::client()
            .post(format!("{}/v1/chat/completions", sc.base))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body("{")
            .send()
            .await
            .unwrap(),
    )
    .await;
}

#[tokio::test]
async fn a_setsid_grandchild_dies_with_its_turn() {
    // The CLI starts a `sleep` in a session of its own (out of the turn's process group, so a
    // group kill misses it), then answers and exits. The sweep must still kill and reap it.
    let sc = Sidecar::start(&fake_claude(), &[("CLAUDE_CODE_FAKE_MODE", "setsid")], &[]).await;
    let escaped_file = format!("{}.escaped", sc.record.display());
    for stream in [false, true] {
        let before = std::fs::read_to_string(&escaped_file)
            .unwrap_or_default()
            .lines()
            .count();
        let body = sc
            .post("/v1/chat/completions", chat("run away", stream, false))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.contains("said"), "{body}");
        let escaped: Vec<i64> = std::fs::read_to_string(&escaped_file)
            .unwrap()
            .lines()
            .skip(before)
            .map(|l| l.trim().parse().unwrap())
            .collect();
        assert_eq!(escaped.len(), 1, "the fake started one escapee");
        let pid = escaped[0];
        let started = std::time::Instant::now();
        // Gone means no /proc entry at all: killed and reaped (no zombie left to us).
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "setsid grandchild {pid} outlived its turn (stream={stream}): alive={}",
                alive(pid)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
